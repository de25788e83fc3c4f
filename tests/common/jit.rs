//! Helpers for the JIT tests: run an entry on the interpreter and the JIT side by side and
//! compare every output. Included with `#[path]` (tests/common/mod.rs is owned elsewhere).
#![allow(dead_code)]

use cranformer_compiler::{interp::Interpreter, jit::JitEngine, Model};
use cranformer_runtime::{Engine, Outputs, Tensor, TensorData};
use std::path::Path;
use std::sync::Arc;

pub struct Pair {
    pub interp: Interpreter,
    pub jit: JitEngine,
    pub model: Arc<Model>,
}

impl Pair {
    pub fn load(dir: &Path) -> Pair {
        let model = Arc::new(Model::load(dir).unwrap());
        Pair::of(model)
    }

    pub fn of(model: Arc<Model>) -> Pair {
        let jit = JitEngine::new(model.clone()).unwrap();
        eprintln!("jit compile time: {:?}", jit.compile_time());
        Pair {
            interp: Interpreter::new(model.clone()),
            jit,
            model,
        }
    }

    /// Runs `entry` on both engines; every output of the JIT must be within
    /// `abs + rel * max|interp|` of the interpreter's. Returns the JIT's outputs.
    pub fn run(&mut self, entry: &str, inputs: &[(&str, &Tensor)], abs: f32, rel: f32) -> Outputs {
        let want = self.interp.run(entry, inputs).unwrap();
        let got = self.jit.run(entry, inputs).unwrap();
        assert_eq!(
            want.keys().collect::<Vec<_>>(),
            got.keys().collect::<Vec<_>>(),
            "{entry}: output names"
        );
        for (name, w) in &want {
            let g = &got[name];
            assert_eq!(w.shape(), g.shape(), "{entry}.{name}: shape");
            match (w.data(), g.data()) {
                (TensorData::F32(wv), TensorData::F32(gv)) => super::check_close(
                    &format!("jit vs interp {entry}.{name}"),
                    wv,
                    w.shape(),
                    gv,
                    abs,
                    rel,
                    |_| true,
                ),
                (TensorData::I64(wv), TensorData::I64(gv)) => {
                    assert_eq!(wv, gv, "{entry}.{name}")
                }
                _ => panic!("{entry}.{name}: dtype differs"),
            }
        }
        got
    }
}

/// `(name, tensor)` pairs as the `Engine::run` argument.
pub fn args(v: &[(String, Tensor)]) -> Vec<(&str, &Tensor)> {
    v.iter().map(|(n, t)| (n.as_str(), t)).collect()
}

/// Row `b`, position `t` of a `[B, T, V]` tensor.
pub fn row(t: &Tensor, b: usize, pos: usize) -> Vec<f32> {
    let (tt, v) = (t.shape()[1], t.shape()[2]);
    t.as_f32().unwrap()[(b * tt + pos) * v..][..v].to_vec()
}

pub fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}
