//! Hand-run timing checks of the generated kernels (not timed tests: `#[ignore]`d):
//! `cargo test --test jit_bench -- --ignored --nocapture`. Each prints FLOPs, time and
//! GFLOP/s for the JIT and the interpreter on one thread.

mod common;

use cranformer_compiler::graph::{Dim, Graph, Op, TensorType, WeightLayout};
use cranformer_compiler::{interp::Interpreter, jit::JitEngine, Model};
use cranformer_runtime::weights::F32Buffer;
use cranformer_runtime::{Engine, Tensor};
use std::sync::Arc;
use std::time::Instant;

/// A model holding only `graph` and `weights` (config and info borrowed from a fixture).
fn model_of(graph: Graph, weights: Vec<(&str, Vec<f32>)>) -> Arc<Model> {
    let mut m = Model::load(&common::fixture_dir("bert-tiny")).unwrap();
    m.entries = [(graph.name.clone(), graph)].into_iter().collect();
    m.weights = weights
        .into_iter()
        .map(|(k, v)| (k.to_string(), F32Buffer::from_vec(v)))
        .collect();
    Arc::new(m)
}

fn pseudo(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2654435761).max(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s % 2000) as f32 / 1000.0 - 1.0
        })
        .collect()
}

fn time_linear(name: &str, m: usize, k: usize, n: usize, layout: WeightLayout) {
    let mut g = Graph::new("f");
    let x = g.add_input("x", TensorType::f32(&[Dim::Batch, Dim::Seq, Dim::Const(k)]));
    let wshape = match layout {
        WeightLayout::OutIn => [n, k],
        WeightLayout::InOut => [k, n],
    };
    let w = g.g.add_node(cranformer_compiler::graph::Node {
        op: Op::Weight { key: "w".into() },
        ty: TensorType::f32(&[Dim::Const(wshape[0]), Dim::Const(wshape[1])]),
        label: "w".into(),
    });
    let b = g.g.add_node(cranformer_compiler::graph::Node {
        op: Op::Weight { key: "b".into() },
        ty: TensorType::f32(&[Dim::Const(n)]),
        label: "b".into(),
    });
    let y = g.add(Op::Linear { layout }, &[x, w, b], "ffn").unwrap();
    g.add_output("y", y);
    let model = model_of(g, vec![("w", pseudo(k * n, 1)), ("b", pseudo(n, 2))]);
    let mut jit = JitEngine::new(model.clone()).unwrap();
    let mut interp = Interpreter::new(model);
    let xt = Tensor::f32(vec![1, m, k], pseudo(m * k, 3));
    let flops = 2.0 * (m * k * n) as f64;
    for (label, e) in [
        ("jit", &mut jit as &mut dyn Engine),
        ("interp", &mut interp),
    ] {
        e.run("f", &[("x", &xt)]).unwrap();
        let runs = if label == "jit" { 20 } else { 3 };
        let mut best = f64::MAX;
        for _ in 0..runs {
            let t = Instant::now();
            e.run("f", &[("x", &xt)]).unwrap();
            best = best.min(t.elapsed().as_secs_f64());
        }
        println!(
            "{name} {label:>6}: M={m} K={k} N={n} {:.2} GFLOP, min {:.3} ms, {:.1} GFLOP/s",
            flops / 1e9,
            best * 1e3,
            flops / best / 1e9
        );
    }
}

#[test]
#[ignore]
fn bert_base_s128_ffn() {
    time_linear(
        "bert_base_s128_ffn (Linear [N,K])",
        128,
        768,
        3072,
        WeightLayout::OutIn,
    );
    time_linear(
        "gpt2_s128_mlp_c_fc (Conv1D [K,N])",
        128,
        768,
        3072,
        WeightLayout::InOut,
    );
    time_linear(
        "bert_base_s128_ffn_out",
        128,
        3072,
        768,
        WeightLayout::OutIn,
    );
    time_linear("gpt2_decode_step_c_fc", 1, 768, 3072, WeightLayout::InOut);
}

/// A BERT-base encoder (12 layers, C 768, H 12, F 3072) with random weights, batch 1,
/// seq 128: the whole forward pass, JIT against the interpreter.
#[test]
#[ignore]
fn bert_base_s128_forward() {
    let (layers, c, h, f, t) = (12, 768, 12, 3072, 128);
    let mut g = Graph::new("f");
    let mut weights: Vec<(String, Vec<f32>)> = vec![];
    let w = |g: &mut Graph,
             weights: &mut Vec<(String, Vec<f32>)>,
             key: String,
             shape: &[usize],
             scale: f32| {
        let data: Vec<f32> = pseudo(shape.iter().product(), weights.len() as u32 + 10)
            .into_iter()
            .map(|v| v * scale)
            .collect();
        weights.push((key.clone(), data));
        g.g.add_node(cranformer_compiler::graph::Node {
            op: Op::Weight { key: key.clone() },
            ty: TensorType::f32(&shape.iter().map(|&d| Dim::Const(d)).collect::<Vec<_>>()),
            label: key,
        })
    };
    let x0 = g.add_input("x", TensorType::f32(&[Dim::Batch, Dim::Seq, Dim::Const(c)]));
    let mask = g.add_input("attention_mask", TensorType::i64(&[Dim::Batch, Dim::Seq]));
    let mut x = x0;
    for l in 0..layers {
        let p = format!("layer.{l}");
        let lin =
            |g: &mut Graph, ws: &mut Vec<(String, Vec<f32>)>, x, name: &str, k: usize, n: usize| {
                let wt = w(g, ws, format!("{p}.{name}.weight"), &[n, k], 0.03);
                let b = w(g, ws, format!("{p}.{name}.bias"), &[n], 0.01);
                g.add(
                    Op::Linear {
                        layout: WeightLayout::OutIn,
                    },
                    &[x, wt, b],
                    &format!("{p}.{name}"),
                )
                .unwrap()
            };
        let q = lin(&mut g, &mut weights, x, "query", c, c);
        let k = lin(&mut g, &mut weights, x, "key", c, c);
        let v = lin(&mut g, &mut weights, x, "value", c, c);
        let attn = Op::Attention {
            heads: h,
            head_dim: c / h,
            scale: 1.0 / ((c / h) as f32).sqrt(),
            causal: false,
            masked: true,
            biased: false,
        };
        let a = g
            .add(attn, &[q, k, v, mask], &format!("{p}.attention"))
            .unwrap();
        let a = lin(&mut g, &mut weights, a, "attention.output.dense", c, c);
        let a = g.add(Op::Add, &[a, x], &format!("{p}.residual1")).unwrap();
        let g1 = w(&mut g, &mut weights, format!("{p}.ln1.weight"), &[c], 1.0);
        let b1 = w(&mut g, &mut weights, format!("{p}.ln1.bias"), &[c], 0.1);
        let a = g
            .add(
                Op::LayerNorm { eps: 1e-12 },
                &[a, g1, b1],
                &format!("{p}.ln1"),
            )
            .unwrap();
        let m = lin(&mut g, &mut weights, a, "intermediate.dense", c, f);
        let m = g
            .add(
                Op::Act(cranformer_compiler::graph::Activation::Gelu),
                &[m],
                &format!("{p}.gelu"),
            )
            .unwrap();
        let m = lin(&mut g, &mut weights, m, "output.dense", f, c);
        let m = g.add(Op::Add, &[m, a], &format!("{p}.residual2")).unwrap();
        let g2 = w(&mut g, &mut weights, format!("{p}.ln2.weight"), &[c], 1.0);
        let b2 = w(&mut g, &mut weights, format!("{p}.ln2.bias"), &[c], 0.1);
        x = g
            .add(
                Op::LayerNorm { eps: 1e-12 },
                &[m, g2, b2],
                &format!("{p}.ln2"),
            )
            .unwrap();
    }
    g.add_output("last_hidden_state", x);
    let model = model_of(
        g,
        weights
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect(),
    );
    let mut jit = JitEngine::new(model.clone()).unwrap();
    println!(
        "jit compile time {:?}, weight packing {:?}",
        jit.compile_time(),
        jit.prepare_time()
    );
    let mut interp = Interpreter::new(model);
    let xt = Tensor::f32(vec![1, t, c], pseudo(t * c, 3));
    let mt = Tensor::i64(vec![1, t], vec![1; t]);
    let inputs = [("x", &xt), ("attention_mask", &mt)];
    // Linear FLOPs only (attention adds about 4%).
    let flops = (layers * 2 * t * (4 * c * c + 2 * c * f)) as f64;
    let mut ms = vec![];
    for (label, e) in [
        ("jit", &mut jit as &mut dyn Engine),
        ("interp", &mut interp),
    ] {
        e.run("f", &inputs).unwrap();
        let mut best = f64::MAX;
        for _ in 0..3 {
            let t0 = Instant::now();
            e.run("f", &inputs).unwrap();
            best = best.min(t0.elapsed().as_secs_f64());
        }
        ms.push(best * 1e3);
        println!(
            "bert_base_s128_forward {label:>6}: min {:.1} ms, {:.1} GFLOP/s (matmul FLOPs)",
            best * 1e3,
            flops / best / 1e9
        );
    }
    println!("speed-up over the interpreter: {:.1}x", ms[1] / ms[0]);
}
