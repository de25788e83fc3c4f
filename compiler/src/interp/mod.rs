//! The reference interpreter: runs a graph op by op in f32, one plain kernel per op.
//!
//! It is the oracle the generated code is tested against and the baseline every benchmark
//! is measured against, so it favours being obviously right; values are freed after their
//! last use so that large models fit.

pub mod kernels;

use crate::graph::{Dims, EwStep, Graph, Op, WeightLayout};
use crate::Model;
use cranformer_runtime::weights::F32Buffer;
use cranformer_runtime::{Engine, EngineError, Outputs, Tensor, TensorData};
use kernels::AttnShape;
use petgraph::graph::NodeIndex;
use petgraph::Direction;
use std::sync::Arc;

/// A value during interpretation: computed, or a view of a weight.
enum Value {
    F32(Vec<f32>),
    I64(Vec<i64>),
    Weight(F32Buffer),
}

impl Value {
    fn f32(&self) -> &[f32] {
        match self {
            Value::F32(v) => v,
            Value::Weight(w) => w,
            Value::I64(_) => panic!("graph verified: f32 operand expected"),
        }
    }
    fn i64(&self) -> &[i64] {
        match self {
            Value::I64(v) => v,
            _ => panic!("graph verified: i64 operand expected"),
        }
    }
}

/// Runs a [`Model`]'s entry points with the reference kernels.
pub struct Interpreter {
    model: Arc<Model>,
}

impl Interpreter {
    pub fn new(model: Arc<Model>) -> Interpreter {
        Interpreter { model }
    }

    /// Runs `graph` on named inputs.
    pub fn run_graph(
        &self,
        graph: &Graph,
        inputs: &[(&str, &Tensor)],
    ) -> Result<Outputs, EngineError> {
        let dims = graph
            .bind_dims(inputs)
            .map_err(|e| EngineError::Input(e.to_string()))?;

        let order = graph.topo_order();
        // Remaining uses of each value: by other nodes, and once more if it is an output.
        let mut uses: Vec<usize> = graph
            .g
            .node_indices()
            .map(|n| graph.g.edges_directed(n, Direction::Outgoing).count())
            .collect();
        for (_, n) in &graph.outputs {
            uses[n.index()] += 1;
        }
        let mut values: Vec<Option<Value>> = (0..graph.g.node_count()).map(|_| None).collect();
        for &n in &order {
            let operands = graph.operands(n);
            let v = {
                let args: Vec<&Value> = operands
                    .iter()
                    .map(|o| values[o.index()].as_ref().expect("topological order"))
                    .collect();
                self.eval(graph, n, &args, &dims, inputs)?
            };
            values[n.index()] = Some(v);
            for o in operands {
                uses[o.index()] -= 1;
                if uses[o.index()] == 0 {
                    values[o.index()] = None;
                }
            }
        }
        let mut out = Outputs::new();
        for (name, n) in &graph.outputs {
            let shape = graph.g[*n].ty.concrete(&dims);
            let t = match values[n.index()].as_ref().expect("outputs are kept") {
                Value::F32(v) => Tensor::f32(shape, v.clone()),
                Value::Weight(w) => Tensor::f32(shape, w.to_vec()),
                Value::I64(v) => Tensor::i64(shape, v.clone()),
            };
            out.insert(name.clone(), t);
        }
        Ok(out)
    }

    fn eval(
        &self,
        graph: &Graph,
        n: NodeIndex,
        args: &[&Value],
        dims: &Dims,
        inputs: &[(&str, &Tensor)],
    ) -> Result<Value, EngineError> {
        let node = &graph.g[n];
        let out_shape = node.ty.concrete(dims);
        let numel: usize = out_shape.iter().product();
        let last = |i: usize| -> usize {
            *graph.g[graph.operands(n)[i]]
                .ty
                .concrete(dims)
                .last()
                .unwrap_or(&1)
        };
        Ok(match &node.op {
            Op::Input { name } => {
                let t = inputs
                    .iter()
                    .find(|(k, _)| k == name)
                    .expect("bound above")
                    .1;
                match t.data() {
                    TensorData::F32(v) => Value::F32(v.clone()),
                    TensorData::I64(v) => Value::I64(v.clone()),
                }
            }
            // The model hands out weights as f32 only; a graph declaring an i8 / bf16 / f16
            // weight needs a dequantising op first, which the interpreter does not have yet.
            Op::Weight { key } if node.ty.dtype != crate::graph::DType::F32 => {
                return Err(internal(format!(
                    "weight {key} is {}; the interpreter computes with f32 weights only",
                    node.ty
                )))
            }
            Op::Weight { key } => Value::Weight(
                self.model
                    .weight(key)
                    .ok_or_else(|| internal(format!("weight {key} not loaded")))?,
            ),
            Op::Gather => {
                let (table, ids) = (args[0].f32(), args[1].i64());
                let c = last(0);
                let rows = table.len() / c.max(1);
                let mut out = Vec::with_capacity(numel);
                for &id in ids {
                    if id < 0 || id as usize >= rows {
                        return Err(EngineError::Input(format!(
                            "{}: index {id} is out of range (the table has {rows} rows)",
                            node.label
                        )));
                    }
                    out.extend_from_slice(&table[id as usize * c..][..c]);
                }
                Value::F32(out)
            }
            Op::Positions => Value::I64(
                (dims.past..dims.past + dims.seq)
                    .map(|p| p as i64)
                    .collect(),
            ),
            Op::Linear { layout } => {
                let (x, w) = (args[0].f32(), args[1].f32());
                let bias = args.get(2).map(|b| b.f32());
                let k = last(0);
                let nn = *out_shape.last().unwrap();
                let mut out = vec![0f32; numel];
                match layout {
                    WeightLayout::OutIn => kernels::linear_out_in(x, w, bias, k, nn, &mut out),
                    WeightLayout::InOut => kernels::linear_in_out(x, w, bias, k, nn, &mut out),
                }
                Value::F32(out)
            }
            Op::FusedLinear {
                layout,
                act,
                residual,
            } => {
                // The unfused ops one after the other: linear, activation, residual add.
                let r = *residual as usize;
                let (x, w) = (args[0].f32(), args[1].f32());
                let bias = (args.len() - r == 3).then(|| args[2].f32());
                let k = last(0);
                let nn = *out_shape.last().unwrap();
                let mut out = vec![0f32; numel];
                match layout {
                    WeightLayout::OutIn => kernels::linear_out_in(x, w, bias, k, nn, &mut out),
                    WeightLayout::InOut => kernels::linear_in_out(x, w, bias, k, nn, &mut out),
                }
                if let Some(a) = act {
                    kernels::activation(*a, &mut out);
                }
                if *residual {
                    let res = args[args.len() - 1].f32();
                    out.iter_mut().zip(res).for_each(|(y, r)| *y += r);
                }
                Value::F32(out)
            }
            Op::AddLayerNorm { eps } | Op::AddRmsNorm { eps } => {
                let mut out = args[0].f32().to_vec();
                kernels::add_broadcast(&mut out, args[1].f32());
                if matches!(node.op, Op::AddLayerNorm { .. }) {
                    kernels::layer_norm(&mut out, args[2].f32(), args[3].f32(), *eps);
                } else {
                    kernels::rms_norm(&mut out, args[2].f32(), *eps);
                }
                Value::F32(out)
            }
            Op::GatedAct(a) => {
                let f = *out_shape.last().unwrap();
                let mut out = Vec::with_capacity(numel);
                for row in args[0].f32().chunks_exact(2 * f) {
                    let mut g = row[..f].to_vec();
                    kernels::activation(*a, &mut g);
                    out.extend(g.iter().zip(&row[f..]).map(|(g, l)| g * l));
                }
                Value::F32(out)
            }
            Op::Elementwise(steps) => {
                let mut out = args[0].f32().to_vec();
                for s in steps {
                    match *s {
                        EwStep::Scale(f) => out.iter_mut().for_each(|x| *x *= f),
                        EwStep::Act(a) => kernels::activation(a, &mut out),
                        EwStep::Add(i) => kernels::add_broadcast(&mut out, args[i].f32()),
                        EwStep::Mul(i) => {
                            let b = args[i].f32();
                            for chunk in out.chunks_exact_mut(b.len().max(1)) {
                                chunk.iter_mut().zip(b).for_each(|(x, y)| *x *= y);
                            }
                        }
                    }
                }
                Value::F32(out)
            }
            Op::Add | Op::Mul => {
                let (a, b) = (args[0].f32(), args[1].f32());
                let mut out = a.to_vec();
                if !b.is_empty() {
                    for chunk in out.chunks_exact_mut(b.len()) {
                        if matches!(node.op, Op::Add) {
                            chunk.iter_mut().zip(b).for_each(|(x, y)| *x += y);
                        } else {
                            chunk.iter_mut().zip(b).for_each(|(x, y)| *x *= y);
                        }
                    }
                }
                Value::F32(out)
            }
            Op::Scale { factor } => Value::F32(args[0].f32().iter().map(|x| x * factor).collect()),
            Op::Act(a) => {
                let mut out = args[0].f32().to_vec();
                kernels::activation(*a, &mut out);
                Value::F32(out)
            }
            Op::LayerNorm { eps } => {
                let mut out = args[0].f32().to_vec();
                kernels::layer_norm(&mut out, args[1].f32(), args[2].f32(), *eps);
                Value::F32(out)
            }
            Op::RmsNorm { eps } => {
                let mut out = args[0].f32().to_vec();
                kernels::rms_norm(&mut out, args[1].f32(), *eps);
                Value::F32(out)
            }
            Op::Attention {
                heads,
                head_dim,
                scale,
                causal,
                masked,
                biased,
            } => {
                let kshape = graph.g[graph.operands(n)[1]].ty.concrete(dims);
                let sh = AttnShape {
                    b: out_shape[0],
                    t: out_shape[1],
                    s: kshape[1],
                    h: *heads,
                    d: *head_dim,
                };
                let mask = masked.then(|| args[3].i64());
                let bias = biased.then(|| args[3 + *masked as usize].f32());
                let mut out = vec![0f32; numel];
                kernels::attention(
                    args[0].f32(),
                    args[1].f32(),
                    args[2].f32(),
                    mask,
                    bias,
                    &sh,
                    *scale,
                    *causal,
                    &mut out,
                );
                Value::F32(out)
            }
            Op::RelPosBias {
                buckets,
                max_distance,
                bidirectional,
                ..
            } => {
                let (h, t, s) = (out_shape[0], out_shape[1], out_shape[2]);
                Value::F32(kernels::rel_pos_bias(
                    args[0].f32(),
                    h,
                    t,
                    s,
                    dims.past,
                    *bidirectional,
                    *buckets,
                    *max_distance,
                ))
            }
            Op::SliceLast { start, len } => {
                let width = last(0);
                let x = args[0].f32();
                let mut out = Vec::with_capacity(numel);
                for row in x.chunks_exact(width) {
                    out.extend_from_slice(&row[*start..start + len]);
                }
                Value::F32(out)
            }
            Op::ConcatSeq => {
                let (p, nw) = (args[0].f32(), args[1].f32());
                let (b, c) = (out_shape[0], out_shape[2]);
                let (pl, nl) = (dims.past * c, dims.seq * c);
                let mut out = Vec::with_capacity(numel);
                for bi in 0..b {
                    out.extend_from_slice(&p[bi * pl..(bi + 1) * pl]);
                    out.extend_from_slice(&nw[bi * nl..(bi + 1) * nl]);
                }
                Value::F32(out)
            }
            Op::LastToken | Op::FirstToken => {
                let x = args[0].f32();
                let (b, c) = (out_shape[0], *out_shape.last().unwrap());
                let t = dims.seq;
                if t == 0 {
                    return Err(EngineError::Input("the sequence is empty".into()));
                }
                let pos = if matches!(node.op, Op::LastToken) {
                    t - 1
                } else {
                    0
                };
                let mut out = Vec::with_capacity(numel);
                for bi in 0..b {
                    out.extend_from_slice(&x[(bi * t + pos) * c..][..c]);
                }
                Value::F32(out)
            }
            Op::MeanPool | Op::MaxPool => {
                let (x, m) = (args[0].f32(), args[1].i64());
                let (b, c) = (out_shape[0], out_shape[1]);
                let t = dims.seq;
                let mut out = vec![0f32; numel];
                for bi in 0..b {
                    let o = &mut out[bi * c..(bi + 1) * c];
                    if matches!(node.op, Op::MeanPool) {
                        let mut count = 0f32;
                        for ti in (0..t).filter(|&ti| m[bi * t + ti] != 0) {
                            o.iter_mut()
                                .zip(&x[(bi * t + ti) * c..][..c])
                                .for_each(|(a, v)| *a += v);
                            count += 1.0;
                        }
                        // sentence-transformers clamps the count at 1e-9.
                        let inv = 1.0 / count.max(1e-9);
                        o.iter_mut().for_each(|a| *a *= inv);
                    } else {
                        // Padded positions count as -1e9, as in sentence-transformers.
                        o.fill(f32::NEG_INFINITY);
                        for ti in 0..t {
                            let row = &x[(bi * t + ti) * c..][..c];
                            let keep = m[bi * t + ti] != 0;
                            o.iter_mut()
                                .zip(row)
                                .for_each(|(a, &v)| *a = a.max(if keep { v } else { -1e9 }));
                        }
                    }
                }
                Value::F32(out)
            }
            Op::L2Normalize => {
                let c = *out_shape.last().unwrap();
                let mut out = args[0].f32().to_vec();
                for row in out.chunks_exact_mut(c) {
                    let norm = row
                        .iter()
                        .map(|&v| (v as f64) * (v as f64))
                        .sum::<f64>()
                        .sqrt()
                        .max(1e-12);
                    row.iter_mut().for_each(|v| *v = (*v as f64 / norm) as f32);
                }
                Value::F32(out)
            }
        })
    }
}

fn internal(message: String) -> EngineError {
    EngineError::Internal {
        engine: "interp".into(),
        message,
    }
}

impl Engine for Interpreter {
    fn name(&self) -> &str {
        "interp"
    }

    fn run(&mut self, entry: &str, inputs: &[(&str, &Tensor)]) -> Result<Outputs, EngineError> {
        let graph = self
            .model
            .entries
            .get(entry)
            .ok_or_else(|| EngineError::NoEntry {
                entry: entry.into(),
                available: self.model.entry_names(),
            })?;
        self.run_graph(graph, inputs)
    }
}
