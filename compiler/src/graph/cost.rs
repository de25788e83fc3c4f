//! What a graph costs for one call: floating-point operations and bytes moved, per node and
//! in total, for given values of the symbolic dims. It reads the graph and changes nothing.
//!
//! The counts describe the work the model asks for, not what a kernel happens to do: a
//! matmul is 2·M·N·K, a causal attention counts only the keys each query sees, and a gather
//! reads only the rows it picks. Bytes are what each op must read and write at least once
//! (its operands and its result); weights are counted apart from activations because the
//! roofline treats them differently (read once per call, never written, often from DRAM).
//! Data movement ops (gather, slice, concat, token picks) cost bytes and no FLOPs.

use super::{Dims, EwStep, Graph, Op, TensorType};
use cranformer_runtime::gemm::WeightFormat;
use petgraph::graph::NodeIndex;
use std::ops::{Add, AddAssign};

/// FLOPs and bytes of a node, a graph or a sequence of calls.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cost {
    /// Floating-point operations (a fused multiply-add counts as two).
    pub flops: u64,
    /// Bytes of checkpoint tensors read.
    pub weight_bytes: u64,
    /// Bytes of inputs and intermediate values read.
    pub act_read_bytes: u64,
    /// Bytes of intermediate values and outputs written.
    pub act_write_bytes: u64,
}

impl Cost {
    /// Every byte moved.
    pub fn bytes(&self) -> u64 {
        self.weight_bytes + self.act_read_bytes + self.act_write_bytes
    }

    /// FLOPs per byte moved: the x-axis of a roofline plot.
    pub fn intensity(&self) -> f64 {
        self.flops as f64 / self.bytes().max(1) as f64
    }
}

impl Add for Cost {
    type Output = Cost;
    fn add(self, o: Cost) -> Cost {
        Cost {
            flops: self.flops + o.flops,
            weight_bytes: self.weight_bytes + o.weight_bytes,
            act_read_bytes: self.act_read_bytes + o.act_read_bytes,
            act_write_bytes: self.act_write_bytes + o.act_write_bytes,
        }
    }
}

impl AddAssign for Cost {
    fn add_assign(&mut self, o: Cost) {
        *self = *self + o;
    }
}

impl std::iter::Sum for Cost {
    fn sum<I: Iterator<Item = Cost>>(iter: I) -> Cost {
        iter.fold(Cost::default(), Add::add)
    }
}

/// Nominal FLOPs per element of the pointwise formulas, each transcendental (exp, erf, tanh)
/// counted as one: these ops are memory-bound, so the figure matters far less than the bytes.
mod per_element {
    use crate::graph::Activation;

    pub fn activation(a: Activation) -> u64 {
        match a {
            Activation::Relu => 1,
            Activation::Tanh => 1,
            // x * 0.5 * (1 + erf(x / sqrt 2))
            Activation::Gelu => 5,
            // 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x³)))
            Activation::GeluTanh => 9,
            // x / (1 + exp(-x))
            Activation::Silu => 4,
            // x / (1 + exp(-1.702 x))
            Activation::QuickGelu => 5,
        }
    }

    /// Mean, centre, square, sum, scale by 1/σ, gain and bias.
    pub const LAYER_NORM: u64 = 8;
    /// Square, sum, scale by 1/rms, gain.
    pub const RMS_NORM: u64 = 4;
    /// Max, subtract, exp, sum, divide.
    pub const SOFTMAX: u64 = 5;
    /// Square, sum, divide.
    pub const L2_NORMALIZE: u64 = 3;
    /// Per (query, key) pair: the relative distance, its log-spaced bucket and the lookup.
    pub const REL_POS_BUCKET: u64 = 8;
}

fn numel(t: &TensorType, d: &Dims) -> u64 {
    t.concrete(d).iter().product::<usize>() as u64
}

fn bytes(t: &TensorType, d: &Dims) -> u64 {
    t.bytes(d) as u64
}

/// The KV-cache concatenations of a graph that append in place ([`super::in_place_appends`]),
/// found at the first one asked about and kept for the rest of a walk over the graph.
struct InPlace<'a> {
    g: &'a Graph,
    set: std::cell::OnceCell<std::collections::HashSet<NodeIndex>>,
}

impl<'a> InPlace<'a> {
    fn new(g: &'a Graph) -> Self {
        InPlace {
            g,
            set: std::cell::OnceCell::new(),
        }
    }

    fn contains(&self, n: NodeIndex) -> bool {
        self.set
            .get_or_init(|| super::in_place_appends(self.g))
            .contains(&n)
    }
}

/// The cost of node `n` in one call with dims `d`. Inputs and weights themselves cost
/// nothing: their bytes are charged to the ops that read them.
pub fn node_cost(g: &Graph, n: NodeIndex, d: &Dims) -> Cost {
    cost(g, n, d, &InPlace::new(g))
}

/// [`node_cost`] within a walk that shares `in_place`.
fn cost(g: &Graph, n: NodeIndex, d: &Dims, in_place: &InPlace) -> Cost {
    let node = g.node(n);
    let operands = g.operands(n);
    let ty = |i: usize| &g.node(operands[i]).ty;
    let is_weight = |i: usize| matches!(g.node(operands[i]).op, Op::Weight { .. });
    let out = &node.ty;
    let out_numel = numel(out, d);
    // Every operand read whole, and the result written: right for most ops.
    let whole = |flops: u64| {
        let mut c = Cost {
            flops,
            act_write_bytes: bytes(out, d),
            ..Cost::default()
        };
        for i in 0..operands.len() {
            if is_weight(i) {
                c.weight_bytes += bytes(ty(i), d);
            } else {
                c.act_read_bytes += bytes(ty(i), d);
            }
        }
        c
    };
    match &node.op {
        Op::Input { .. } | Op::Weight { .. } => Cost::default(),
        Op::Gather => {
            // Only the picked rows of the table are read.
            let ids = ty(1);
            let rows = bytes(out, d);
            Cost {
                flops: 0,
                weight_bytes: if is_weight(0) { rows } else { 0 },
                act_read_bytes: bytes(ids, d) + if is_weight(0) { 0 } else { rows },
                act_write_bytes: rows,
            }
        }
        Op::Positions => whole(0),
        Op::Linear { .. } => {
            let k = ty(0).last().map_or(1, |k| k.eval(d)) as u64;
            let n_out = out.last().map_or(1, |n| n.eval(d)) as u64;
            let m = out_numel / n_out.max(1);
            let bias = if operands.len() > 2 { m * n_out } else { 0 };
            whole(2 * m * n_out * k + bias)
        }
        Op::Add | Op::Mul | Op::Scale { .. } => whole(out_numel),
        Op::Act(a) => whole(out_numel * per_element::activation(*a)),
        Op::LayerNorm { .. } => whole(out_numel * per_element::LAYER_NORM),
        Op::RmsNorm { .. } => whole(out_numel * per_element::RMS_NORM),
        Op::L2Normalize => whole(out_numel * per_element::L2_NORMALIZE),
        Op::Attention {
            heads,
            head_dim,
            causal,
            biased,
            ..
        } => {
            let q = ty(0).concrete(d);
            let keys = ty(1).concrete(d)[1] as u64;
            let (b, t) = (q[0] as u64, q[1] as u64);
            // (query, key) pairs a head computes: with `causal`, query i (absolute position
            // S - T + i) sees S - T + i + 1 keys.
            let pairs = if *causal {
                let past = keys.saturating_sub(t);
                t * past + t * (t + 1) / 2
            } else {
                t * keys
            };
            let scores = b * *heads as u64 * pairs;
            let per_score =
                // q·k and p·v, the scale, the softmax, and the bias when there is one.
                4 * *head_dim as u64 + 1 + per_element::SOFTMAX + *biased as u64;
            whole(scores * per_score)
        }
        Op::RelPosBias { keys, .. } => {
            // One bucket per (query, key) pair, shared by the heads; the table is tiny.
            let pairs = d.seq as u64 * keys.eval(d) as u64;
            whole(pairs * per_element::REL_POS_BUCKET)
        }
        Op::SliceLast { .. } | Op::LastToken | Op::FirstToken => {
            // Only the part that is kept is read.
            let moved = bytes(out, d);
            Cost {
                flops: 0,
                weight_bytes: if is_weight(0) { moved } else { 0 },
                act_read_bytes: if is_weight(0) { 0 } else { moved },
                act_write_bytes: moved,
            }
        }
        Op::ConcatSeq if in_place.contains(n) => {
            // Appended where the cache lies: only the new rows move.
            let new = bytes(ty(1), d);
            Cost {
                act_read_bytes: new,
                act_write_bytes: new,
                ..Cost::default()
            }
        }
        Op::ConcatSeq => whole(0),
        Op::MeanPool => {
            let x = numel(ty(0), d);
            whole(x + out_numel)
        }
        Op::MaxPool => whole(numel(ty(0), d)),
        // Fused ops: the FLOPs of their parts, the bytes of one kernel.
        Op::FusedLinear { act, residual, .. } => {
            let k = ty(0).last().map_or(1, |k| k.eval(d)) as u64;
            let n_out = out.last().map_or(1, |n| n.eval(d)) as u64;
            let m = out_numel / n_out.max(1);
            let bias = operands.len() > 2 + *residual as usize;
            let epilogue = bias as u64 + act.map_or(0, per_element::activation) + *residual as u64;
            whole(2 * m * n_out * k + epilogue * out_numel)
        }
        Op::AddLayerNorm { .. } => whole(out_numel * (1 + per_element::LAYER_NORM)),
        Op::AddRmsNorm { .. } => whole(out_numel * (1 + per_element::RMS_NORM)),
        Op::GatedAct(a) => whole(out_numel * (1 + per_element::activation(*a))),
        Op::Elementwise(steps) => {
            let per: u64 = steps
                .iter()
                .map(|s| match s {
                    EwStep::Act(a) => per_element::activation(*a),
                    _ => 1,
                })
                .sum();
            whole(out_numel * per)
        }
    }
}

/// [`node_cost`] with the matmul weights stored as `format` (its bytes per weight over K
/// padded as it packs them, and int8's scale and column sum per column): what a run with
/// `--dtype` moves. Other weights (embeddings, norms, biases) stay f32.
pub fn node_cost_as(g: &Graph, n: NodeIndex, d: &Dims, format: WeightFormat) -> Cost {
    cost_as(g, n, d, format, &InPlace::new(g))
}

/// [`node_cost_as`] within a walk that shares `in_place`.
fn cost_as(g: &Graph, n: NodeIndex, d: &Dims, format: WeightFormat, in_place: &InPlace) -> Cost {
    let mut c = cost(g, n, d, in_place);
    if format == WeightFormat::F32 {
        return c;
    }
    let operands = g.operands(n);
    let is_matmul = matches!(g.node(n).op, Op::Linear { .. } | Op::FusedLinear { .. });
    if is_matmul && matches!(g.node(operands[1]).op, Op::Weight { .. }) {
        let k = g.node(operands[0]).ty.last().map_or(1, |k| k.eval(d));
        let stored = bytes(&g.node(operands[1]).ty, d);
        let cols = stored / 4 / k.max(1) as u64;
        let narrow = format.stored_bytes(k, cols as usize) as u64;
        c.weight_bytes = c.weight_bytes - stored + narrow;
    }
    c
}

/// The cost of one call of `g` with dims `d`, its matmul weights stored as `format`.
pub fn graph_cost_as(g: &Graph, d: &Dims, format: WeightFormat) -> Cost {
    let in_place = InPlace::new(g);
    g.topo_order()
        .into_iter()
        .filter(|&n| !matches!(g.node(n).op, Op::Input { .. } | Op::Weight { .. }))
        .map(|n| cost_as(g, n, d, format, &in_place))
        .sum()
}

/// Every node's cost in topological order (inputs and weights left out): the per-kernel rows
/// of a roofline report.
pub fn node_costs(g: &Graph, d: &Dims) -> Vec<(NodeIndex, Cost)> {
    let in_place = InPlace::new(g);
    g.topo_order()
        .into_iter()
        .filter(|&n| !matches!(g.node(n).op, Op::Input { .. } | Op::Weight { .. }))
        .map(|n| (n, cost(g, n, d, &in_place)))
        .collect()
}

/// The cost of one call of `g` with dims `d`.
pub fn graph_cost(g: &Graph, d: &Dims) -> Cost {
    node_costs(g, d).into_iter().map(|(_, c)| c).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::{Activation, Dim, Node, WeightLayout};

    fn weight(g: &mut Graph, key: &str, shape: &[usize]) -> NodeIndex {
        let shape: Vec<Dim> = shape.iter().map(|&s| Dim::Const(s)).collect();
        g.g.add_node(Node {
            op: Op::Weight { key: key.into() },
            ty: TensorType::f32(&shape),
            label: key.into(),
        })
    }

    fn dims(batch: usize, seq: usize, past: usize) -> Dims {
        Dims {
            batch,
            seq,
            past,
            enc_seq: 0,
        }
    }

    #[test]
    fn linear_with_bias_then_gelu() {
        // x [B, T, 4] · w [3, 4]ᵀ + b [3], then gelu; B = 2, T = 5 so M = 10.
        let mut g = Graph::new("f");
        let x = g.add_input("x", TensorType::f32(&[Dim::Batch, Dim::Seq, Dim::Const(4)]));
        let w = weight(&mut g, "w", &[3, 4]);
        let b = weight(&mut g, "b", &[3]);
        let y = g
            .add(
                Op::Linear {
                    layout: WeightLayout::OutIn,
                },
                &[x, w, b],
                "fc",
            )
            .unwrap();
        let z = g.add(Op::Act(Activation::Gelu), &[y], "act").unwrap();
        g.add_output("z", z);
        let d = dims(2, 5, 0);

        let lin = node_cost(&g, y, &d);
        assert_eq!(lin.flops, 2 * 10 * 3 * 4 + 10 * 3);
        assert_eq!(lin.weight_bytes, (12 + 3) * 4);
        // Stored narrow: the 3x4 matrix (K = 4) in 1 byte each plus 8 per column for int8, 2
        // for bf16 (K padded to pairs: 4 already is); the bias stays f32.
        let i8 = node_cost_as(&g, y, &d, WeightFormat::I8);
        assert_eq!(i8.weight_bytes, 12 + 8 * 3 + 3 * 4);
        let bf16 = node_cost_as(&g, y, &d, WeightFormat::Bf16);
        assert_eq!(bf16.weight_bytes, 12 * 2 + 3 * 4);
        assert_eq!(i8.flops, lin.flops);
        assert_eq!(lin.act_read_bytes, 10 * 4 * 4);
        assert_eq!(lin.act_write_bytes, 10 * 3 * 4);

        let act = node_cost(&g, z, &d);
        assert_eq!(act.flops, 30 * 5);
        assert_eq!(act.act_read_bytes, 30 * 4);
        assert_eq!(act.weight_bytes, 0);

        let total = graph_cost(&g, &d);
        assert_eq!(total, lin + act);
        assert_eq!(node_costs(&g, &d).len(), 2);
    }

    #[test]
    fn conv1d_layout_counts_the_same() {
        let mut g = Graph::new("f");
        let x = g.add_input("x", TensorType::f32(&[Dim::Seq, Dim::Const(8)]));
        let w = weight(&mut g, "w", &[8, 2]);
        let y = g
            .add(
                Op::Linear {
                    layout: WeightLayout::InOut,
                },
                &[x, w],
                "fc",
            )
            .unwrap();
        let c = node_cost(&g, y, &dims(1, 3, 0));
        assert_eq!(c.flops, 2 * 3 * 2 * 8);
        assert_eq!(c.weight_bytes, 16 * 4);
    }

    fn attention_graph(causal: bool, masked: bool) -> (Graph, NodeIndex) {
        // H = 2 heads of D = 3; q [B, T, 6], k and v [B, P+T, 6].
        let mut g = Graph::new("attn");
        let c = Dim::Const(6);
        let q = g.add_input("q", TensorType::f32(&[Dim::Batch, Dim::Seq, c]));
        let k = g.add_input("k", TensorType::f32(&[Dim::Batch, Dim::Total, c]));
        let v = g.add_input("v", TensorType::f32(&[Dim::Batch, Dim::Total, c]));
        let mut ops = vec![q, k, v];
        if masked {
            ops.push(g.add_input("mask", TensorType::i64(&[Dim::Batch, Dim::Total])));
        }
        let a = g
            .add(
                Op::Attention {
                    heads: 2,
                    head_dim: 3,
                    scale: 0.5,
                    causal,
                    masked,
                    biased: false,
                },
                &ops,
                "attn",
            )
            .unwrap();
        g.add_output("y", a);
        (g, a)
    }

    #[test]
    fn attention_counts_both_matmuls_and_the_softmax() {
        let (g, a) = attention_graph(false, true);
        // B = 1, T = 4 queries, S = 4 keys: 16 pairs per head, 32 in all.
        let c = node_cost(&g, a, &dims(1, 4, 0));
        let per_pair = 2 * 3 + 2 * 3 + 1 + 5;
        assert_eq!(c.flops, 32 * per_pair);
        // q, k, v [1, 4, 6] f32 and the mask [1, 4] i64 read; [1, 4, 6] written.
        assert_eq!(c.act_read_bytes, 3 * 24 * 4 + 4 * 8);
        assert_eq!(c.act_write_bytes, 24 * 4);
    }

    #[test]
    fn causal_attention_counts_only_visible_keys() {
        let (g, a) = attention_graph(true, false);
        let per_pair = 4 * 3 + 1 + 5;
        // Prefill of 4 tokens: queries see 1, 2, 3, 4 keys; 2 heads, batch 2.
        let c = node_cost(&g, a, &dims(2, 4, 0));
        assert_eq!(c.flops, 2 * 2 * 10 * per_pair);
        // One decode step after 7 cached tokens: the query sees all 8 keys.
        let c = node_cost(&g, a, &dims(1, 1, 7));
        assert_eq!(c.flops, 2 * 8 * per_pair);
        // Two new tokens after 3 cached: 4 + 5 keys.
        let c = node_cost(&g, a, &dims(1, 2, 3));
        assert_eq!(c.flops, 2 * 9 * per_pair);
    }

    #[test]
    fn gather_and_slices_read_only_what_they_keep() {
        // A [100, 4] table gathered by 3 ids, then a norm and the last column pair.
        let mut g = Graph::new("embed");
        let ids = g.add_input("ids", TensorType::i64(&[Dim::Seq]));
        let table = weight(&mut g, "wte", &[100, 4]);
        let gamma = weight(&mut g, "ln.weight", &[4]);
        let beta = weight(&mut g, "ln.bias", &[4]);
        let x = g.add(Op::Gather, &[table, ids], "wte").unwrap();
        let n = g
            .add(Op::LayerNorm { eps: 1e-5 }, &[x, gamma, beta], "ln")
            .unwrap();
        let s = g
            .add(Op::SliceLast { start: 2, len: 2 }, &[n], "slice")
            .unwrap();
        g.add_output("y", s);
        let d = dims(1, 3, 0);

        let gather = node_cost(&g, x, &d);
        assert_eq!(gather.flops, 0);
        assert_eq!(gather.weight_bytes, 3 * 4 * 4);
        assert_eq!(gather.act_read_bytes, 3 * 8);

        let norm = node_cost(&g, n, &d);
        assert_eq!(norm.flops, 12 * 8);
        assert_eq!(norm.weight_bytes, 2 * 4 * 4);

        let slice = node_cost(&g, s, &d);
        assert_eq!(slice.flops, 0);
        assert_eq!(slice.act_read_bytes, 6 * 4);
        assert_eq!(slice.act_write_bytes, 6 * 4);

        let total = graph_cost(&g, &d);
        assert_eq!(total.flops, 96);
        assert_eq!(total.weight_bytes, 48 + 32);
        assert!(total.intensity() > 0.0);
    }

    /// One head of D = 4 over a KV cache: `present = concat(past, new)` for K and V, read by
    /// a causal attention, the presents returned; with `past_out`, the past K is returned too.
    fn kv_graph(past_out: bool) -> (Graph, NodeIndex, NodeIndex) {
        let mut g = Graph::new("kv");
        let c = Dim::Const(4);
        let row = |t: Dim| TensorType::f32(&[Dim::Batch, t, c]);
        let q = g.add_input("q", row(Dim::Seq));
        let (pk, pv) = (
            g.add_input("past_k", row(Dim::Past)),
            g.add_input("past_v", row(Dim::Past)),
        );
        let (k, v) = (
            g.add_input("k", row(Dim::Seq)),
            g.add_input("v", row(Dim::Seq)),
        );
        let ck = g.add(Op::ConcatSeq, &[pk, k], "present_k").unwrap();
        let cv = g.add(Op::ConcatSeq, &[pv, v], "present_v").unwrap();
        let attention = Op::Attention {
            heads: 1,
            head_dim: 4,
            scale: 0.5,
            causal: true,
            masked: false,
            biased: false,
        };
        let a = g.add(attention, &[q, ck, cv], "attn").unwrap();
        g.add_output("y", a);
        g.add_output("present_k", ck);
        g.add_output("present_v", cv);
        if past_out {
            g.add_output("past_k", pk);
        }
        (g, ck, cv)
    }

    #[test]
    fn a_kv_cache_appended_in_place_moves_only_the_new_rows() {
        // Batch 2, 3 new rows after 5 cached, 4 floats a row.
        let d = dims(2, 3, 5);
        let (g, ck, cv) = kv_graph(false);
        for n in [ck, cv] {
            let c = node_cost(&g, n, &d);
            assert_eq!(
                (c.act_read_bytes, c.act_write_bytes),
                (2 * 3 * 16, 2 * 3 * 16)
            );
        }
        // With the past K returned as well, the present K is a tensor of its own: past and new
        // rows read, all of it written (and so V, which attention reads with K's row stride).
        let (g, ck, cv) = kv_graph(true);
        for n in [ck, cv] {
            let c = node_cost(&g, n, &d);
            assert_eq!(c.act_read_bytes, 2 * (5 + 3) * 16);
            assert_eq!(c.act_write_bytes, 2 * 8 * 16);
        }
    }

    #[test]
    fn zero_length_calls_cost_nothing_but_fixed_bytes() {
        let (g, _) = attention_graph(true, true);
        let c = graph_cost(&g, &dims(1, 0, 0));
        assert_eq!(c.flops, 0);
    }
}
