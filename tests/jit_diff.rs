//! Differential tests: the JIT against the interpreter on random shapes (odd sizes, 1-token
//! and long sequences, padded batches, masks with left padding, holes and all-zero rows, a KV
//! cache), one lowered op at a time and for small random transformer blocks; plus the
//! accuracy of the vectorised exp / tanh / erf.

mod common;

use cranformer_compiler::graph::{Activation, Dim, Graph, Node, Op, TensorType, WeightLayout};
use cranformer_compiler::{interp::Interpreter, jit::JitEngine, Model};
use cranformer_runtime::weights::F32Buffer;
use cranformer_runtime::{Engine, Tensor, TensorData};
use petgraph::graph::NodeIndex;
use proptest::prelude::*;
use std::sync::Arc;

const ABS: f32 = 2e-5;
const REL: f32 = 2e-4;

/// A graph under construction with its random weights.
struct G {
    g: Graph,
    weights: Vec<(String, Vec<f32>)>,
    seed: u64,
}

impl G {
    fn new(seed: u64) -> G {
        G {
            g: Graph::new("f"),
            weights: vec![],
            seed,
        }
    }
    fn rand(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                self.seed ^= self.seed << 13;
                self.seed ^= self.seed >> 7;
                self.seed ^= self.seed << 17;
                ((self.seed >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
            })
            .collect()
    }
    fn weight(&mut self, key: &str, shape: &[usize], scale: f32) -> NodeIndex {
        let data = self.rand(shape.iter().product(), scale);
        self.weights.push((key.into(), data));
        self.g.g.add_node(Node {
            op: Op::Weight { key: key.into() },
            ty: TensorType::f32(&shape.iter().map(|&d| Dim::Const(d)).collect::<Vec<_>>()),
            label: key.into(),
        })
    }
    fn op(&mut self, op: Op, operands: &[NodeIndex]) -> NodeIndex {
        let label = format!("n{}", self.g.g.node_count());
        self.g.add(op, operands, &label).unwrap()
    }

    /// Runs the graph on both engines and compares every output.
    fn check(self, inputs: &[(&str, Tensor)]) {
        self.check_threads(inputs, &[0]);
    }

    /// [`G::check`], the JIT run once per thread count of `threads` (0: the pool's default),
    /// each run's outputs equal to the first's.
    fn check_threads(self, inputs: &[(&str, Tensor)], threads: &[usize]) {
        let mut m = Model::load(&common::fixture_dir("bert-tiny")).unwrap();
        m.entries = [(self.g.name.clone(), self.g)].into_iter().collect();
        m.weights = self
            .weights
            .into_iter()
            .map(|(k, v)| (k, F32Buffer::from_vec(v)))
            .collect();
        let m = Arc::new(m);
        let mut jit = JitEngine::new(m.clone()).unwrap();
        let mut interp = Interpreter::new(m);
        let args: Vec<(&str, &Tensor)> = inputs.iter().map(|(n, t)| (*n, t)).collect();
        let want = interp.run("f", &args).unwrap();
        let got = jit.run("f", &args).unwrap();
        for &t in threads {
            cranformer_runtime::threads::set_threads(t);
            let again = jit.run("f", &args).unwrap();
            cranformer_runtime::threads::set_threads(0);
            for (name, g) in &got {
                assert!(
                    again[name] == *g,
                    "{name}: {t} threads differ from the default"
                );
            }
        }
        for (name, w) in &want {
            let g = &got[name];
            assert_eq!(w.shape(), g.shape(), "{name}: shape");
            match (w.data(), g.data()) {
                (TensorData::F32(wv), TensorData::F32(gv)) => {
                    common::check_close(name, wv, w.shape(), gv, ABS, REL, |_| true)
                }
                (TensorData::I64(wv), TensorData::I64(gv)) => assert_eq!(wv, gv, "{name}"),
                _ => panic!("{name}: dtype"),
            }
        }
    }
}

fn bt(c: usize) -> TensorType {
    TensorType::f32(&[Dim::Batch, Dim::Seq, Dim::Const(c)])
}

fn randt(g: &mut G, shape: Vec<usize>, scale: f32) -> Tensor {
    let n = shape.iter().product();
    Tensor::f32(shape, g.rand(n, scale))
}

/// A `[B, T]` mask: each row keeps a random-length prefix of at least one position.
fn padding_mask(g: &mut G, b: usize, t: usize) -> Tensor {
    let lens = g.rand(b, 1.0);
    let mut v = vec![];
    for (i, l) in lens.iter().enumerate() {
        let keep = if i == 0 {
            t
        } else {
            1 + ((l.abs() * t as f32) as usize).min(t - 1)
        };
        v.extend((0..t).map(|j| (j < keep) as i64));
    }
    Tensor::i64(vec![b, t], v)
}

/// A `[B, T]` attention mask as Hugging Face takes them, by `kind`: 0 right padding (as
/// [`padding_mask`]), 1 left padding, 2 random holes, 3 right padding and an all-zero last row.
fn attention_mask(g: &mut G, b: usize, t: usize, kind: usize) -> Tensor {
    let mut m = padding_mask(g, b, t).as_i64().unwrap().to_vec();
    for bi in 1..b {
        let row = &mut m[bi * t..][..t];
        match kind {
            1 => row.reverse(),
            2 => {
                let r = g.rand(t, 1.0);
                row.iter_mut()
                    .zip(r)
                    .for_each(|(x, r)| *x = (r > -0.3) as i64);
            }
            3 if bi == b - 1 => row.fill(0),
            _ => {}
        }
    }
    Tensor::i64(vec![b, t], m)
}

fn shapes() -> impl Strategy<Value = (usize, usize, u64)> {
    // Batch, tokens (mostly short, sometimes 1 or past 100), seed.
    (
        1usize..4,
        prop_oneof![Just(1usize), 2usize..20, 100usize..140],
        any::<u64>(),
    )
}

proptest! {
    // PROPTEST_CASES=N for a longer run.
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(24)
    ))]

    #[test]
    fn linear((b, t, seed) in shapes(), k in 1usize..70, n in 1usize..45, in_out: bool, bias: bool) {
        let mut g = G::new(seed | 1);
        let x = g.g.add_input("x", bt(k));
        let layout = if in_out { WeightLayout::InOut } else { WeightLayout::OutIn };
        let w = g.weight("w", &if in_out { [k, n] } else { [n, k] }, 1.0);
        let mut ops = vec![x, w];
        if bias {
            ops.push(g.weight("b", &[n], 1.0));
        }
        let y = g.op(Op::Linear { layout }, &ops);
        g.g.add_output("y", y);
        let xt = randt(&mut g, vec![b, t, k], 1.0);
        g.check(&[("x", xt)]);
    }

    #[test]
    fn elementwise((b, t, seed) in shapes(), c in 1usize..40, act in 0usize..6, per_pos: bool, scale in -3f32..3.0) {
        let mut g = G::new(seed | 1);
        let x = g.g.add_input("x", bt(c));
        let a = [Activation::Gelu, Activation::GeluTanh, Activation::Relu, Activation::Tanh,
                 Activation::Silu, Activation::QuickGelu][act];
        let y = g.op(Op::Act(a), &[x]);
        let w = g.weight("w", &[c], 1.0);
        let s = g.op(Op::Add, &[y, w]);
        let s = g.op(Op::Mul, &[s, x]);
        let s = g.op(Op::Scale { factor: scale }, &[s]);
        let s = if per_pos {
            // [T, C] broadcast over the batch, as GPT-2's position embeddings.
            let wpe = g.weight("wpe", &[150, c], 1.0);
            let pos = g.op(Op::Positions, &[]);
            let pe = g.op(Op::Gather, &[wpe, pos]);
            g.op(Op::Add, &[s, pe])
        } else {
            s
        };
        g.g.add_output("y", s);
        let xt = randt(&mut g, vec![b, t, c], 6.0);
        g.check(&[("x", xt)]);
    }

    #[test]
    fn norms((b, t, seed) in shapes(), c in 1usize..70) {
        let mut g = G::new(seed | 1);
        let x = g.g.add_input("x", bt(c));
        let gamma = g.weight("g", &[c], 1.0);
        let beta = g.weight("b", &[c], 1.0);
        let ln = g.op(Op::LayerNorm { eps: 1e-5 }, &[x, gamma, beta]);
        let rms = g.op(Op::RmsNorm { eps: 1e-6 }, &[x, gamma]);
        let l2 = g.op(Op::L2Normalize, &[x]);
        g.g.add_output("ln", ln);
        g.g.add_output("rms", rms);
        g.g.add_output("l2", l2);
        let xt = randt(&mut g, vec![b, t, c], 3.0);
        g.check(&[("x", xt)]);
    }

    #[test]
    fn data_movement((b, t, seed) in shapes(), c in 1usize..20, start in 0usize..10, len in 1usize..10, past in 0usize..5) {
        let mut g = G::new(seed | 1);
        let ids = g.g.add_input("ids", TensorType::i64(&[Dim::Batch, Dim::Seq]));
        let mask = g.g.add_input("mask", TensorType::i64(&[Dim::Batch, Dim::Seq]));
        let pk = g.g.add_input("past", TensorType::f32(&[Dim::Batch, Dim::Past, Dim::Const(len)]));
        let table = g.weight("table", &[37, start + len + c], 1.0);
        let x = g.op(Op::Gather, &[table, ids]);
        let s = g.op(Op::SliceLast { start, len }, &[x]);
        let cat = g.op(Op::ConcatSeq, &[pk, s]);
        let first = g.op(Op::FirstToken, &[x]);
        let last = g.op(Op::LastToken, &[x]);
        let mean = g.op(Op::MeanPool, &[x, mask]);
        let max = g.op(Op::MaxPool, &[x, mask]);
        for (n, v) in [("cat", cat), ("first", first), ("last", last), ("mean", mean), ("max", max)] {
            g.g.add_output(n, v);
        }
        let idv: Vec<i64> = g.rand(b * t, 1.0).iter().map(|r| ((r.abs() * 36.0) as i64).min(36)).collect();
        let mk = padding_mask(&mut g, b, t);
        let pt = randt(&mut g, vec![b, past, len], 1.0);
        g.check(&[("ids", Tensor::i64(vec![b, t], idv)), ("mask", mk), ("past", pt)]);
    }

    #[test]
    fn attention((b, t, seed) in shapes(), h in 1usize..4, d in 1usize..18, past in 0usize..7,
                 causal: bool, masked: bool, biased: bool, bidirectional: bool, mask_kind in 0usize..4) {
        let mut g = G::new(seed | 1);
        let c = h * d;
        let q = g.g.add_input("q", bt(c));
        let k = g.g.add_input("k", bt(c));
        let v = g.g.add_input("v", bt(c));
        let pk = g.g.add_input("pk", TensorType::f32(&[Dim::Batch, Dim::Past, Dim::Const(c)]));
        let pv = g.g.add_input("pv", TensorType::f32(&[Dim::Batch, Dim::Past, Dim::Const(c)]));
        let mask = g.g.add_input("mask", TensorType::i64(&[Dim::Batch, Dim::Total]));
        let kk = g.op(Op::ConcatSeq, &[pk, k]);
        let vv = g.op(Op::ConcatSeq, &[pv, v]);
        let mut ops = vec![q, kk, vv];
        if masked {
            ops.push(mask);
        }
        if biased {
            let table = g.weight("rel", &[32, h], 1.0);
            let bias = g.op(Op::RelPosBias { buckets: 32, max_distance: 20, bidirectional, keys: Dim::Total }, &[table]);
            g.g.add_output("bias", bias);
            ops.push(bias);
        }
        let y = g.op(Op::Attention { heads: h, head_dim: d, scale: 1.0 / (d as f32).sqrt(), causal, masked, biased }, &ops);
        g.g.add_output("y", y);
        let qt = randt(&mut g, vec![b, t, c], 2.0);
        let kt = randt(&mut g, vec![b, t, c], 2.0);
        let vt = randt(&mut g, vec![b, t, c], 1.0);
        let pkt = randt(&mut g, vec![b, past, c], 2.0);
        let pvt = randt(&mut g, vec![b, past, c], 1.0);
        let mk = attention_mask(&mut g, b, past + t, mask_kind);
        g.check(&[("q", qt), ("k", kt), ("v", vt), ("pk", pkt), ("pv", pvt), ("mask", mk)]);
    }

    /// A small random pre-norm transformer block over embeddings, with a masked mean pool.
    #[test]
    fn random_block((b, t, seed) in shapes(), h in 1usize..4, d in 1usize..12, f in 1usize..50, act in 0usize..3) {
        let mut g = G::new(seed | 1);
        let c = h * d;
        let ids = g.g.add_input("ids", TensorType::i64(&[Dim::Batch, Dim::Seq]));
        let mask = g.g.add_input("mask", TensorType::i64(&[Dim::Batch, Dim::Seq]));
        let wte = g.weight("wte", &[50, c], 1.0);
        let wpe = g.weight("wpe", &[150, c], 0.1);
        let x = g.op(Op::Gather, &[wte, ids]);
        let pos = g.op(Op::Positions, &[]);
        let pe = g.op(Op::Gather, &[wpe, pos]);
        let x = g.op(Op::Add, &[x, pe]);
        let lg = g.weight("ln.g", &[c], 1.0);
        let lb = g.weight("ln.b", &[c], 0.1);
        let a = g.op(Op::LayerNorm { eps: 1e-12 }, &[x, lg, lb]);
        let wqkv = g.weight("qkv.w", &[c, 3 * c], 0.5);
        let bqkv = g.weight("qkv.b", &[3 * c], 0.1);
        let qkv = g.op(Op::Linear { layout: WeightLayout::InOut }, &[a, wqkv, bqkv]);
        let q = g.op(Op::SliceLast { start: 0, len: c }, &[qkv]);
        let k = g.op(Op::SliceLast { start: c, len: c }, &[qkv]);
        let v = g.op(Op::SliceLast { start: 2 * c, len: c }, &[qkv]);
        let y = g.op(Op::Attention { heads: h, head_dim: d, scale: 1.0 / (d as f32).sqrt(), causal: false, masked: true, biased: false }, &[q, k, v, mask]);
        let x = g.op(Op::Add, &[x, y]);
        let w1 = g.weight("fc1.w", &[f, c], 0.5);
        let b1 = g.weight("fc1.b", &[f], 0.1);
        let m = g.op(Op::Linear { layout: WeightLayout::OutIn }, &[x, w1, b1]);
        let m = g.op(Op::Act([Activation::Gelu, Activation::GeluTanh, Activation::Relu][act]), &[m]);
        let w2 = g.weight("fc2.w", &[c, f], 0.5);
        let m = g.op(Op::Linear { layout: WeightLayout::OutIn }, &[m, w2]);
        let x = g.op(Op::Add, &[x, m]);
        let rg = g.weight("rms.g", &[c], 1.0);
        let x = g.op(Op::RmsNorm { eps: 1e-6 }, &[x, rg]);
        let pooled = g.op(Op::MeanPool, &[x, mask]);
        let e = g.op(Op::L2Normalize, &[pooled]);
        g.g.add_output("hidden", x);
        g.g.add_output("embedding", e);
        let idv: Vec<i64> = g.rand(b * t, 1.0).iter().map(|r| ((r.abs() * 49.0) as i64).min(49)).collect();
        let mk = padding_mask(&mut g, b, t);
        g.check(&[("ids", Tensor::i64(vec![b, t], idv)), ("mask", mk)]);
    }
}

/// An out-of-range id is reported as an input error naming the node, as by the interpreter.
#[test]
fn gather_out_of_range() {
    let mut g = G::new(7);
    let ids =
        g.g.add_input("ids", TensorType::i64(&[Dim::Batch, Dim::Seq]));
    let table = g.weight("table", &[5, 3], 1.0);
    let x = g.op(Op::Gather, &[table, ids]);
    g.g.add_output("x", x);
    let label = g.g.node(x).label.clone();
    let mut m = Model::load(&common::fixture_dir("bert-tiny")).unwrap();
    m.entries = [(g.g.name.clone(), g.g)].into_iter().collect();
    m.weights = g
        .weights
        .into_iter()
        .map(|(k, v)| (k, F32Buffer::from_vec(v)))
        .collect();
    let mut jit = JitEngine::new(Arc::new(m)).unwrap();
    for bad in [5i64, -1] {
        let t = Tensor::i64(vec![1, 2], vec![0, bad]);
        let err = jit.run("f", &[("ids", &t)]).unwrap_err().to_string();
        assert!(
            err.contains(&label) && err.contains("out of range"),
            "{err}"
        );
    }
}

/// The polynomials' errors against f64, over dense sweeps (the bounds documented in
/// `codegen::math`).
#[test]
fn math_accuracy() {
    let xs: Vec<f32> = (-200_000..=200_000).map(|i| i as f32 * 1e-4).collect();
    let n = xs.len();
    let mut worst = vec![];
    for (a, f, bound) in [
        (
            Activation::Tanh,
            (|x: f64| x.tanh()) as fn(f64) -> f64,
            3e-7f64,
        ),
        (
            Activation::Gelu,
            |x: f64| 0.5 * x * (1.0 + libm_erf(x / 2f64.sqrt())),
            3e-7,
        ),
        (Activation::Silu, |x: f64| x / (1.0 + (-x).exp()), 3e-7),
    ] {
        let mut g = G::new(1);
        let x = g.g.add_input("x", TensorType::f32(&[Dim::Seq]));
        let y = g.op(Op::Act(a), &[x]);
        g.g.add_output("y", y);
        let mut m = Model::load(&common::fixture_dir("bert-tiny")).unwrap();
        m.entries = [(g.g.name.clone(), g.g)].into_iter().collect();
        let mut jit = JitEngine::new(Arc::new(m)).unwrap();
        let out = jit
            .run("f", &[("x", &Tensor::f32(vec![n], xs.clone()))])
            .unwrap();
        let got = out["y"].as_f32().unwrap();
        // Relative to max(1, |x|): GELU and SiLU grow like x.
        let (mut err, mut at) = (0f64, 0f32);
        for (&x, &y) in xs.iter().zip(got) {
            let e = (y as f64 - f(x as f64)).abs() / (x.abs() as f64).max(1.0);
            if e > err {
                (err, at) = (e, x);
            }
        }
        println!("{a:?}: max error {err:e} (relative to max(1, |x|)) at x = {at}");
        worst.push((a, err, bound));
    }
    for (a, err, bound) in worst {
        assert!(
            err <= bound,
            "{a:?}: max error {err:e} above the documented {bound:e}"
        );
    }
}

/// erf in f64: its Taylor series below 4 (terms stay under 1e7, so about 1e-9 absolute),
/// ±1 above (erfc(4) = 1.5e-8).
fn libm_erf(x: f64) -> f64 {
    if x.abs() >= 4.0 {
        return x.signum();
    }
    let (mut term, mut sum) = (x, x);
    for n in 1..100 {
        term *= -x * x / n as f64;
        sum += term / (2 * n + 1) as f64;
    }
    sum * 2.0 / std::f64::consts::PI.sqrt()
}

// The fused ops the passes make (`cranformer_compiler::passes`), each built directly and
// checked against the interpreter's plain version of it.

use cranformer_compiler::graph::EwStep;

const ACTS: [Activation; 6] = [
    Activation::Gelu,
    Activation::GeluTanh,
    Activation::Relu,
    Activation::Tanh,
    Activation::Silu,
    Activation::QuickGelu,
];

/// A matmul wide enough that its panels are cut into several tasks, a short last one and a
/// partial last panel (the portable path, CI's `CRANFORMER_ISA=portable` pass, cuts 101 panels
/// of K = 64 into 3 tasks; the runtime's matmul into its chunks), on 1, 2 and 3 threads.
#[test]
fn wide_fused_linear_on_several_threads() {
    let (k, n) = (64, 32 * 100 + 13);
    let mut g = G::new(0x5eed);
    let x = g.g.add_input("x", bt(k));
    let w = g.weight("w", &[n, k], 1.0);
    let b = g.weight("b", &[n], 1.0);
    let r = g.g.add_input("r", bt(n));
    let layout = WeightLayout::OutIn;
    let act = Some(Activation::Gelu);
    let y = g.op(
        Op::FusedLinear {
            layout,
            act,
            residual: true,
        },
        &[x, w, b, r],
    );
    g.g.add_output("y", y);
    let xt = randt(&mut g, vec![2, 7, k], 1.0);
    let rt = randt(&mut g, vec![2, 7, n], 1.0);
    g.check_threads(&[("x", xt), ("r", rt)], &[1, 2, 3]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(24)
    ))]

    #[test]
    fn fused_linear((b, t, seed) in shapes(), k in 1usize..70, n in 1usize..45, in_out: bool,
                    bias: bool, act in proptest::option::of(0usize..6), residual: bool) {
        let mut g = G::new(seed | 1);
        let x = g.g.add_input("x", bt(k));
        let layout = if in_out { WeightLayout::InOut } else { WeightLayout::OutIn };
        let w = g.weight("w", &if in_out { [k, n] } else { [n, k] }, 1.0);
        let mut ops = vec![x, w];
        if bias {
            ops.push(g.weight("b", &[n], 1.0));
        }
        if residual {
            ops.push(g.g.add_input("r", bt(n)));
        }
        let y = g.op(Op::FusedLinear { layout, act: act.map(|a| ACTS[a]), residual }, &ops);
        g.g.add_output("y", y);
        let xt = randt(&mut g, vec![b, t, k], 1.0);
        let rt = randt(&mut g, vec![b, t, n], 1.0);
        if residual {
            g.check(&[("x", xt), ("r", rt)]);
        } else {
            g.check(&[("x", xt)]);
        }
    }

    #[test]
    fn add_norm((b, t, seed) in shapes(), c in 1usize..70, rms: bool, rows_b in 0usize..3) {
        let mut g = G::new(seed | 1);
        let a = g.g.add_input("a", bt(c));
        // b: [B, T, C], [T, C] (positions) or [C].
        let (bty, bshape) = match rows_b {
            0 => (bt(c), vec![b, t, c]),
            1 => (TensorType::f32(&[Dim::Seq, Dim::Const(c)]), vec![t, c]),
            _ => (TensorType::f32(&[Dim::Const(c)]), vec![c]),
        };
        let bn = g.g.add_input("b", bty);
        let gamma = g.weight("g", &[c], 1.0);
        let y = if rms {
            g.op(Op::AddRmsNorm { eps: 1e-6 }, &[a, bn, gamma])
        } else {
            let beta = g.weight("beta", &[c], 0.5);
            g.op(Op::AddLayerNorm { eps: 1e-5 }, &[a, bn, gamma, beta])
        };
        g.g.add_output("y", y);
        let at = randt(&mut g, vec![b, t, c], 2.0);
        let btn = randt(&mut g, bshape, 2.0);
        g.check(&[("a", at), ("b", btn)]);
    }

    #[test]
    fn gated_act((b, t, seed) in shapes(), f in 1usize..40, act in 0usize..6) {
        let mut g = G::new(seed | 1);
        let x = g.g.add_input("x", bt(2 * f));
        let y = g.op(Op::GatedAct(ACTS[act]), &[x]);
        g.g.add_output("y", y);
        let xt = randt(&mut g, vec![b, t, 2 * f], 3.0);
        g.check(&[("x", xt)]);
    }

    #[test]
    fn elementwise_chain((b, t, seed) in shapes(), c in 1usize..40,
                         kinds in proptest::collection::vec(0usize..4, 1..6), act in 0usize..6) {
        let mut g = G::new(seed | 1);
        let x = g.g.add_input("x", bt(c));
        // Operands: full [B, T, C], rows [T, C], a [C] vector and a scalar.
        let full = g.g.add_input("full", bt(c));
        let rows = g.g.add_input("rows", TensorType::f32(&[Dim::Seq, Dim::Const(c)]));
        let vec_ = g.weight("vec", &[c], 1.0);
        let scalar = g.weight("scalar", &[], 1.0);
        let steps: Vec<EwStep> = kinds
            .iter()
            .enumerate()
            .map(|(i, &kind)| match kind {
                0 => EwStep::Scale(0.5 + i as f32),
                1 => EwStep::Act(ACTS[(act + i) % 6]),
                2 => EwStep::Add(1 + i % 4),
                _ => EwStep::Mul(1 + (i + 1) % 4),
            })
            .collect();
        let y = g.op(Op::Elementwise(steps), &[x, full, rows, vec_, scalar]);
        g.g.add_output("y", y);
        let xt = randt(&mut g, vec![b, t, c], 2.0);
        let ft = randt(&mut g, vec![b, t, c], 2.0);
        let rt = randt(&mut g, vec![t, c], 2.0);
        g.check(&[("x", xt), ("full", ft), ("rows", rt)]);
    }

    /// A BERT-style post-LN block and a T5-style gated, pre-normed one in the same graph: the
    /// passes fuse Q/K/V, the add+norms, the epilogues and the gate before the JIT runs it.
    #[test]
    fn random_block_through_the_passes((b, t, seed) in shapes(), h in 1usize..4, d in 1usize..9,
                                       f in 1usize..40, act in 0usize..6) {
        let mut g = G::new(seed | 1);
        let c = h * d;
        let x = g.g.add_input("x", bt(c));
        let mask = g.g.add_input("mask", TensorType::i64(&[Dim::Batch, Dim::Seq]));
        let lin = Op::Linear { layout: WeightLayout::OutIn };
        let mut qkv = vec![];
        for p in ["q", "k", "v"] {
            let w = g.weight(&format!("{p}.w"), &[c, c], 0.5);
            let bb = g.weight(&format!("{p}.b"), &[c], 0.1);
            qkv.push(g.op(lin.clone(), &[x, w, bb]));
        }
        let attn = Op::Attention { heads: h, head_dim: d, scale: 1.0 / (d as f32).sqrt(),
                                   causal: false, masked: true, biased: false };
        let y = g.op(attn, &[qkv[0], qkv[1], qkv[2], mask]);
        let wo = g.weight("o.w", &[c, c], 0.5);
        let bo = g.weight("o.b", &[c], 0.1);
        let y = g.op(lin.clone(), &[y, wo, bo]);
        let y = g.op(Op::Add, &[y, x]);
        let lg = g.weight("ln.g", &[c], 1.0);
        let lb = g.weight("ln.b", &[c], 0.1);
        let x1 = g.op(Op::LayerNorm { eps: 1e-12 }, &[y, lg, lb]);
        // Gated feed-forward with a pre-norm and the residual kept for later.
        let rg = g.weight("rms.g", &[c], 1.0);
        let hn = g.op(Op::RmsNorm { eps: 1e-6 }, &[x1, rg]);
        let w0 = g.weight("wi_0", &[f, c], 0.5);
        let w1 = g.weight("wi_1", &[f, c], 0.5);
        let a0 = g.op(lin.clone(), &[hn, w0]);
        let a0 = g.op(Op::Act(ACTS[act]), &[a0]);
        let a1 = g.op(lin.clone(), &[hn, w1]);
        let m = g.op(Op::Mul, &[a0, a1]);
        let w2 = g.weight("wo", &[c, f], 0.5);
        let m = g.op(lin, &[m, w2]);
        let x2 = g.op(Op::Add, &[x1, m]);
        let s = g.op(Op::Scale { factor: 0.5 }, &[x2]);
        let s = g.op(Op::Act(Activation::Tanh), &[s]);
        g.g.add_output("hidden", x2);
        g.g.add_output("squashed", s);
        let xt = randt(&mut g, vec![b, t, c], 1.0);
        let mk = padding_mask(&mut g, b, t);
        g.check(&[("x", xt), ("mask", mk)]);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(8)
    ))]

    /// Activations and norms big enough to be split into tasks on the thread pool
    /// (`codegen::parallel`), with counts that are not multiples of a task.
    #[test]
    fn row_parallel(b in 1usize..3, t in 200usize..300, c in 170usize..230, act in 0usize..6, seed in any::<u64>()) {
        let mut g = G::new(seed | 1);
        let x = g.g.add_input("x", bt(c));
        let a = [Activation::Gelu, Activation::GeluTanh, Activation::Relu, Activation::Tanh,
                 Activation::Silu, Activation::QuickGelu][act];
        let y = g.op(Op::Act(a), &[x]);
        let gamma = g.weight("g", &[c], 1.0);
        let beta = g.weight("b", &[c], 1.0);
        let ln = g.op(Op::LayerNorm { eps: 1e-5 }, &[x, gamma, beta]);
        let rms = g.op(Op::RmsNorm { eps: 1e-6 }, &[x, gamma]);
        g.g.add_output("y", y);
        g.g.add_output("ln", ln);
        g.g.add_output("rms", rms);
        let xt = randt(&mut g, vec![b, t, c], 4.0);
        g.check(&[("x", xt)]);
    }

    /// An embedding tied to an `nn.Linear` head is gathered from the head's packed panels.
    #[test]
    fn tied_gather((b, t, seed) in shapes(), v in 1usize..100, c in 1usize..40) {
        let mut g = G::new(seed | 1);
        let ids = g.g.add_input("ids", TensorType::i64(&[Dim::Batch, Dim::Seq]));
        let wte = g.weight("wte", &[v, c], 1.0);
        let x = g.op(Op::Gather, &[wte, ids]);
        let logits = g.op(Op::Linear { layout: WeightLayout::OutIn }, &[x, wte]);
        g.g.add_output("x", x);
        g.g.add_output("logits", logits);
        let idv: Vec<i64> = g.rand(b * t, 1.0).iter().map(|r| ((r.abs() * v as f32) as i64).min(v as i64 - 1)).collect();
        g.check(&[("ids", Tensor::i64(vec![b, t], idv))]);
    }
}

/// The generated code of every fixture calls nothing by name: the runtime's services come
/// through `RuntimeFns` pointers, so an undefined symbol in the object would be a call
/// Cranelift inserted for an instruction the ISA lacks (libm's `fmaf` per lane for `fma`
/// without FMA, 33x slower). Checked for the ISA this run holds the generated code to (CI runs
/// this file again under `CRANFORMER_ISA=avx2` and `portable`: x86-64-v3 and v2).
#[test]
fn generated_objects_call_no_library_function() {
    use cranformer_compiler::aot;
    use object::{Object, ObjectSymbol};
    for fixture in ["bert-tiny", "gpt2-tiny", "t5-tiny", "t5v11-tiny"] {
        let model = Model::load(&common::fixture_dir(fixture)).unwrap();
        let code = aot::emit_object(&model, Default::default(), &mut aot::Quiet).unwrap();
        let file = object::File::parse(&*code.bytes).unwrap();
        let undefined: Vec<String> = file
            .symbols()
            .filter(|s| s.is_undefined() && !s.name().unwrap_or("").is_empty())
            .map(|s| s.name().unwrap_or("?").to_string())
            .collect();
        assert!(
            undefined.is_empty(),
            "{fixture}: the generated object calls {undefined:?}"
        );
        assert!(
            file.symbols().any(|s| s.is_definition()),
            "{fixture}: no symbol defined: nothing was read"
        );
    }
}
