//! The tiled attention kernel (online softmax over key tiles, tasks on the thread pool)
//! against the interpreter on sequences longer than a key tile, including keys whose scores
//! rise tile after tile (every tile rescales what was accumulated), causal attention over a
//! long cache, padding and additive bias; masks as Hugging Face takes them (left padding, holes
//! in the middle, a row with every key masked, which gets the mean of V); and the same bits for
//! one thread and for two.

mod common;

use cranformer_compiler::graph::{Dim, Graph, Node, Op, TensorType};
use cranformer_compiler::{interp::Interpreter, jit::JitEngine, Model};
use cranformer_runtime::weights::F32Buffer;
use cranformer_runtime::{Engine, Tensor};
use std::sync::Arc;

const ABS: f32 = 2e-5;
const REL: f32 = 2e-4;

/// One attention problem: q `[B, T, H*D]`, k and v `[B, P+T, H*D]`, mask `[B, P+T]`.
struct Case {
    b: usize,
    t: usize,
    past: usize,
    h: usize,
    d: usize,
    causal: bool,
    masked: bool,
    biased: bool,
    /// Keys aligned with the queries and growing with position, so each tile's max is
    /// above the last.
    rising: bool,
    mask: Mask,
}

/// Which keys of rows 1.. the mask hides (row 0 always sees every key).
#[derive(Clone, Copy, Debug)]
enum Mask {
    /// A random-length tail (right padding).
    Tail,
    /// A random-length head (left padding).
    Head,
    /// Random runs in the middle, first and last key kept.
    Holes,
    /// Every key of the last row.
    LastRowAll,
}

/// A `[B, S]` mask of kind `kind`.
fn make_mask(kind: Mask, b: usize, s: usize, rng: &mut Rng) -> Vec<i64> {
    let mut mask = vec![];
    for bi in 0..b {
        let cut = 1 + (rng.next().abs() * (s - 1) as f32) as usize;
        let row: Vec<i64> = (0..s)
            .map(|j| {
                let keep = match kind {
                    _ if bi == 0 => true,
                    Mask::Tail => j < cut,
                    Mask::Head => j >= s - cut,
                    // Runs of 1..=7 hidden keys between kept ones.
                    Mask::Holes => j == 0 || j == s - 1 || (j / 7 + j % 5) % 3 != 0,
                    Mask::LastRowAll => bi + 1 < b,
                };
                keep as i64
            })
            .collect();
        mask.extend(row);
    }
    mask
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.next() * scale).collect()
    }
}

fn model(c: &Case, rng: &mut Rng) -> Arc<Model> {
    let (h, d) = (c.h, c.d);
    let hd = h * d;
    let mut g = Graph::new("f");
    let bt = |n| TensorType::f32(&[Dim::Batch, Dim::Seq, Dim::Const(n)]);
    let bs = |n| TensorType::f32(&[Dim::Batch, Dim::Total, Dim::Const(n)]);
    let q = g.add_input("q", bt(hd));
    let k = g.add_input("k", bs(hd));
    let v = g.add_input("v", bs(hd));
    let mask = g.add_input("mask", TensorType::i64(&[Dim::Batch, Dim::Total]));
    let mut ops = vec![q, k, v];
    if c.masked {
        ops.push(mask);
    }
    let mut weights = vec![];
    if c.biased {
        let table = g.g.add_node(Node {
            op: Op::Weight { key: "rel".into() },
            ty: TensorType::f32(&[Dim::Const(32), Dim::Const(h)]),
            label: "rel".into(),
        });
        weights.push(("rel".to_string(), F32Buffer::from_vec(rng.vec(32 * h, 2.0))));
        let bias = g
            .add(
                Op::RelPosBias {
                    buckets: 32,
                    max_distance: 100,
                    bidirectional: !c.causal,
                    keys: Dim::Total,
                },
                &[table],
                "bias",
            )
            .unwrap();
        ops.push(bias);
    }
    let op = Op::Attention {
        heads: h,
        head_dim: d,
        scale: 1.0 / (d as f32).sqrt(),
        causal: c.causal,
        masked: c.masked,
        biased: c.biased,
    };
    let y = g.add(op, &ops, "attn").unwrap();
    g.add_output("y", y);
    let mut m = Model::load(&common::fixture_dir("bert-tiny")).unwrap();
    m.entries = [("f".to_string(), g)].into_iter().collect();
    m.weights = weights.into_iter().collect();
    Arc::new(m)
}

fn inputs(c: &Case, rng: &mut Rng) -> Vec<(&'static str, Tensor)> {
    let (b, s, hd) = (c.b, c.past + c.t, c.h * c.d);
    let q = rng.vec(b * c.t * hd, 1.0);
    let mut k = rng.vec(b * s * hd, 1.0);
    if c.rising {
        // k_j = (j / S) · 8 · q_last + noise: scores grow with j for the last queries.
        for bi in 0..b {
            let ql = &q[(bi * c.t + c.t - 1) * hd..][..hd];
            for j in 0..s {
                for (e, &qv) in ql.iter().enumerate() {
                    k[(bi * s + j) * hd + e] =
                        0.1 * k[(bi * s + j) * hd + e] + 8.0 * qv * j as f32 / s as f32;
                }
            }
        }
    }
    let v = rng.vec(b * s * hd, 1.0);
    let mask = make_mask(c.mask, b, s, rng);
    vec![
        ("q", Tensor::f32(vec![b, c.t, hd], q)),
        ("k", Tensor::f32(vec![b, s, hd], k)),
        ("v", Tensor::f32(vec![b, s, hd], v)),
        ("mask", Tensor::i64(vec![b, s], mask)),
    ]
}

fn cases() -> Vec<Case> {
    let base = Case {
        b: 1,
        t: 1,
        past: 0,
        h: 2,
        d: 16,
        causal: false,
        masked: false,
        biased: false,
        rising: false,
        mask: Mask::Tail,
    };
    vec![
        // A decode step over a long cache (GPT-2's shape, fewer heads).
        Case {
            past: 700,
            h: 3,
            d: 64,
            causal: true,
            masked: true,
            ..base
        },
        Case {
            past: 300,
            causal: true,
            rising: true,
            ..base
        },
        // BERT-like: many query blocks, padded rows, an odd head size.
        Case {
            b: 3,
            t: 150,
            d: 13,
            masked: true,
            ..base
        },
        Case {
            b: 2,
            t: 70,
            past: 130,
            causal: true,
            masked: true,
            rising: true,
            ..base
        },
        // T5-like: additive bias, head size not a multiple of 4 nor of the accumulator group.
        Case {
            t: 140,
            h: 3,
            d: 37,
            masked: true,
            biased: true,
            ..base
        },
        // Masks as Hugging Face takes them, over several key tiles and query blocks.
        Case {
            b: 3,
            t: 150,
            d: 13,
            masked: true,
            mask: Mask::Head,
            ..base
        },
        Case {
            b: 2,
            t: 140,
            h: 3,
            d: 37,
            masked: true,
            biased: true,
            mask: Mask::Holes,
            ..base
        },
        Case {
            b: 3,
            t: 130,
            masked: true,
            mask: Mask::LastRowAll,
            ..base
        },
        // GPT-2 left-padded: the first queries see only masked keys (the causal fallback).
        Case {
            b: 2,
            t: 90,
            past: 10,
            causal: true,
            masked: true,
            mask: Mask::Head,
            ..base
        },
        Case {
            b: 2,
            t: 1,
            past: 100,
            causal: true,
            masked: true,
            mask: Mask::LastRowAll,
            ..base
        },
    ]
}

/// Hugging Face adds float32's minimum to masked scores: where every key is masked, all
/// scores are equal and the softmax uniform, so the output is the mean of V over the keys
/// the query may see (every key; under `causal`, those up to the query itself).
#[test]
fn all_masked_rows_get_the_mean_of_v() {
    let every =
        |c: &&Case| matches!(c.mask, Mask::LastRowAll) || c.causal && matches!(c.mask, Mask::Head);
    for c in cases().iter().filter(every) {
        let mut rng = Rng(0x51ed);
        let m = model(c, &mut rng);
        let ins = inputs(c, &mut rng);
        let args: Vec<(&str, &Tensor)> = ins.iter().map(|(n, t)| (*n, t)).collect();
        let (b, t, s, hd) = (c.b, c.t, c.past + c.t, c.h * c.d);
        let mask = ins[3].1.as_i64().unwrap();
        let v = ins[2].1.as_f32().unwrap();
        let want = Interpreter::new(m.clone()).run("f", &args).unwrap();
        let got = JitEngine::new(m).unwrap().run("f", &args).unwrap();
        let mut checked = 0;
        for bi in 0..b {
            for ti in 0..t {
                let reach = if c.causal { s - t + ti + 1 } else { s };
                if mask[bi * s..][..reach].iter().any(|&x| x != 0) {
                    continue;
                }
                let mut mean = vec![0f32; hd];
                for j in 0..reach {
                    for (e, x) in mean.iter_mut().enumerate() {
                        *x += v[(bi * s + j) * hd + e];
                    }
                }
                mean.iter_mut().for_each(|x| *x /= reach as f32);
                let at = (bi * t + ti) * hd;
                for (engine, out) in [("interp", &want), ("jit", &got)] {
                    let row = &out["y"].as_f32().unwrap()[at..][..hd];
                    common::check_close(
                        &format!("{engine}: row {bi} query {ti} (all keys masked) vs mean of V"),
                        &mean,
                        &[hd],
                        row,
                        ABS,
                        REL,
                        |_| true,
                    );
                }
                checked += 1;
            }
        }
        assert!(checked > 0, "{:?}: no query has every key masked", c.mask);
    }
}

#[test]
fn tiled_attention_matches_the_interpreter() {
    for (i, c) in cases().iter().enumerate() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ i as u64);
        let m = model(c, &mut rng);
        let ins = inputs(c, &mut rng);
        let args: Vec<(&str, &Tensor)> = ins.iter().map(|(n, t)| (*n, t)).collect();
        let want = Interpreter::new(m.clone()).run("f", &args).unwrap();
        let got = JitEngine::new(m).unwrap().run("f", &args).unwrap();
        let (w, g) = (&want["y"], &got["y"]);
        assert_eq!(w.shape(), g.shape());
        let big = w.as_f32().unwrap().iter().fold(0f32, |m, x| m.max(x.abs()));
        assert!(
            big > 0.05,
            "case {i}: the reference output is all but zero ({big})"
        );
        common::check_close(
            &format!(
                "case {i}: b {} t {} past {} h {} d {}",
                c.b, c.t, c.past, c.h, c.d
            ),
            w.as_f32().unwrap(),
            w.shape(),
            g.as_f32().unwrap(),
            ABS,
            REL,
            |_| true,
        );
    }
}

#[test]
fn one_thread_and_two_give_the_same_bits() {
    // The only test in this file that sets the thread count; the other one is indifferent.
    let c = &cases()[3];
    let mut rng = Rng(7);
    let m = model(c, &mut rng);
    let ins = inputs(c, &mut rng);
    let args: Vec<(&str, &Tensor)> = ins.iter().map(|(n, t)| (*n, t)).collect();
    let mut jit = JitEngine::new(m).unwrap();
    cranformer_runtime::threads::set_threads(2);
    let two = jit.run("f", &args).unwrap();
    cranformer_runtime::threads::set_threads(1);
    let one = jit.run("f", &args).unwrap();
    cranformer_runtime::threads::set_threads(0);
    assert_eq!(two["y"].as_f32().unwrap(), one["y"].as_f32().unwrap());
}
