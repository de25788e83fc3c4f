//! One entry function per graph: assigns every value a slot of the host's value table
//! (inputs, prepared weights, buffers), then calls one kernel per node in topological order
//! with sizes computed from the run-time dims.

use super::{
    attention, elementwise, matmul, memory, norm, parallel, CodegenError, Imports, Lowering,
};
use crate::graph::{DType, Dim, Graph, Op, TensorType};
use cranelift_codegen::ir::{condcodes::IntCC, types::I64, InstBuilder, SourceLoc, Value};
use cranelift_module::{FuncId, Linkage, Module};
use cranformer_runtime::abi;
use cranformer_runtime::native::{EntryMeta, Slot, TensorSig, WeightPrep};
use petgraph::graph::NodeIndex;
use std::collections::HashMap;

pub fn entry_symbol(graph: &str) -> String {
    format!("cranformer_entry_{graph}")
}

fn sig(name: &str, ty: &TensorType) -> TensorSig {
    TensorSig {
        name: name.into(),
        ty: ty.clone(),
    }
}

/// The slots of one graph's values.
struct Plan {
    meta: EntryMeta,
    /// Buffer (or input) holding each computed node and each input node.
    value: HashMap<NodeIndex, Slot>,
    weight_slots: HashMap<(String, WeightPrep), usize>,
}

impl Plan {
    fn weight(&mut self, key: &str, prep: WeightPrep) -> usize {
        let k = (key.to_string(), prep);
        if let Some(&s) = self.weight_slots.get(&k) {
            return s;
        }
        let s = self.meta.weights.len();
        self.meta.weights.push(k.clone());
        self.weight_slots.insert(k, s);
        s
    }
}

fn plan(graph: &Graph) -> Plan {
    let mut p = Plan {
        meta: EntryMeta {
            name: graph.name.clone(),
            symbol: entry_symbol(&graph.name),
            inputs: vec![],
            weights: vec![],
            buffers: vec![],
            outputs: vec![],
            errors: vec![],
            needs_tokens: false,
            live: vec![],
        },
        value: HashMap::new(),
        weight_slots: HashMap::new(),
    };
    for (i, (name, n)) in graph.inputs.iter().enumerate() {
        p.meta.inputs.push(sig(name, &graph.g[*n].ty));
        p.value.insert(*n, Slot::Input(i));
    }
    for n in graph.topo_order() {
        let node = &graph.g[n];
        match &node.op {
            Op::Input { .. } | Op::Weight { .. } => continue,
            Op::LastToken | Op::FirstToken => p.meta.needs_tokens = true,
            _ => {}
        }
        p.value.insert(n, Slot::Buffer(p.meta.buffers.len()));
        p.meta.buffers.push(sig(&node.label, &node.ty));
    }
    // Live ranges in kernel-call steps (one step per computed node, in this order): a
    // buffer lives from its node's step to its last reader's, outputs to the end.
    let steps: HashMap<NodeIndex, u32> = graph
        .topo_order()
        .into_iter()
        .filter(|&n| !matches!(graph.g[n].op, Op::Input { .. } | Op::Weight { .. }))
        .enumerate()
        .map(|(i, n)| (n, i as u32))
        .collect();
    p.meta.live = vec![(0, 0); p.meta.buffers.len()];
    for (&n, &step) in &steps {
        if let Some(&Slot::Buffer(b)) = p.value.get(&n) {
            let last = graph
                .g
                .neighbors_directed(n, petgraph::Direction::Outgoing)
                .map(|u| steps[&u])
                .max()
                .unwrap_or(step);
            p.meta.live[b] = (step, last);
        }
    }
    let end = steps.len() as u32;
    for (name, n) in &graph.outputs {
        if let Some(&Slot::Buffer(b)) = p.value.get(n) {
            p.meta.live[b].1 = end;
        }
        let slot = *p
            .value
            .get(n)
            .expect("outputs are computed values or inputs, never bare weights");
        p.meta.outputs.push((name.clone(), slot));
    }
    p
}

/// Lowers `graph` into an exported entry function, returning its id and metadata.
pub fn lower_entry<M: Module>(
    l: &mut Lowering<'_, M>,
    graph: &Graph,
) -> Result<(FuncId, EntryMeta), CodegenError> {
    for n in graph.g.node_indices() {
        let node = &graph.g[n];
        if !matches!(node.ty.dtype, DType::F32 | DType::I64) {
            return Err(CodegenError::DType {
                graph: graph.name.clone(),
                value: node.label.clone(),
                ty: node.ty.to_string(),
            });
        }
    }
    let mut p = plan(graph);
    // Kernels first (each is defined once), recording each node's call.
    enum Arg {
        Val(NodeIndex),
        Weight(String, WeightPrep),
        Dim(Dim),
        /// The product of a node's dims except the last (rows of a `[.., C]` tensor).
        Rows(NodeIndex),
        Numel(NodeIndex),
        Null,
        /// The runtime's wide matmul (`EntryCtx::rt->gemm`), or null.
        Sgemm,
        /// The runtime's thread pool (`EntryCtx::rt->parallel_for`).
        ParallelFor,
    }
    struct Call {
        node: NodeIndex,
        kernel: FuncId,
        args: Vec<Arg>,
        /// Error message when the kernel returns non-zero.
        fails: Option<String>,
    }
    let mut calls: Vec<Call> = vec![];
    let operand = |graph: &Graph, o: NodeIndex, prep: WeightPrep| -> Arg {
        match &graph.g[o].op {
            Op::Weight { key } => Arg::Weight(key.clone(), prep),
            _ => Arg::Val(o),
        }
    };
    let last = |graph: &Graph, o: NodeIndex| -> usize {
        match graph.g[o].ty.last() {
            Some(Dim::Const(c)) => c,
            other => panic!("graph verified: channels are constant, got {other:?}"),
        }
    };
    for n in graph.topo_order() {
        let node = &graph.g[n];
        let ops = graph.operands(n);
        let v = |i: usize| operand(graph, ops[i], WeightPrep::AsIs);
        let (kernel, args, fails) = match &node.op {
            Op::Input { .. } | Op::Weight { .. } => continue,
            Op::Gather => {
                let rows = match graph.g[ops[0]].ty.shape[0] {
                    Dim::Const(r) => r,
                    _ => unreachable!("tables are weights"),
                };
                let c = last(graph, ops[0]);
                // A table that is also a tied head's `nn.Linear` weight is read from the
                // head's packed panels, so only that copy of it is prepared.
                let tied = matches!(graph.g[ops[0]].op, Op::Weight { .. })
                    && graph
                        .g
                        .neighbors_directed(ops[0], petgraph::Direction::Outgoing)
                        .any(|u| {
                            matches!(
                                graph.g[u].op,
                                Op::Linear {
                                    layout: crate::graph::WeightLayout::OutIn
                                } | Op::FusedLinear {
                                    layout: crate::graph::WeightLayout::OutIn,
                                    ..
                                }
                            ) && graph.operands(u)[1] == ops[0]
                        });
                let (k, table) = if tied {
                    let prep = WeightPrep::Panels {
                        k: c,
                        n: rows,
                        in_out: false,
                    };
                    (
                        memory::gather_panels(l, c, rows)?,
                        operand(graph, ops[0], prep),
                    )
                } else {
                    (memory::gather(l, c, rows)?, v(0))
                };
                let msg = format!(
                    "{}: an index is out of range (the table has {rows} rows)",
                    node.label
                );
                (
                    k,
                    vec![table, v(1), Arg::Val(n), Arg::Numel(ops[1])],
                    Some(msg),
                )
            }
            Op::Positions => (
                memory::positions(l)?,
                vec![Arg::Val(n), Arg::Dim(Dim::Past), Arg::Dim(Dim::Seq)],
                None,
            ),
            Op::Linear { .. } | Op::FusedLinear { .. } => {
                let (layout, act, residual) = match node.op {
                    Op::FusedLinear {
                        layout,
                        act,
                        residual,
                    } => (layout, act, residual),
                    Op::Linear { layout } => (layout, None, false),
                    _ => unreachable!(),
                };
                let k = last(graph, ops[0]);
                let nn = last(graph, n);
                let prep = WeightPrep::Panels {
                    k,
                    n: nn,
                    in_out: layout == crate::graph::WeightLayout::InOut,
                };
                let bias = ops.len() == 3 + residual as usize;
                let tiling = l.tiling(k, nn);
                let kern = matmul::linear(l, k, nn, bias, act, residual, &tiling)?;
                let b = if bias {
                    operand(graph, ops[2], WeightPrep::PadPanel { n: nn })
                } else {
                    Arg::Null
                };
                let res = if residual {
                    v(ops.len() - 1)
                } else {
                    Arg::Null
                };
                (
                    kern,
                    vec![
                        v(0),
                        operand(graph, ops[1], prep),
                        b,
                        Arg::Val(n),
                        Arg::Rows(ops[0]),
                        Arg::Sgemm,
                        res,
                    ],
                    None,
                )
            }
            Op::AddLayerNorm { eps } => (
                norm::add_layer_norm(l, last(graph, n), *eps)?,
                vec![
                    v(0),
                    v(1),
                    v(2),
                    v(3),
                    Arg::Val(n),
                    Arg::Rows(n),
                    Arg::Rows(ops[1]),
                ],
                None,
            ),
            Op::AddRmsNorm { eps } => (
                norm::add_rms_norm(l, last(graph, n), *eps)?,
                vec![
                    v(0),
                    v(1),
                    v(2),
                    Arg::Val(n),
                    Arg::Rows(n),
                    Arg::Rows(ops[1]),
                ],
                None,
            ),
            Op::GatedAct(a) => (
                elementwise::gated(l, *a, last(graph, n))?,
                vec![v(0), Arg::Val(n), Arg::Rows(n)],
                None,
            ),
            Op::Elementwise(steps) => {
                // Each extra operand: a scalar, or rows of the last axis repeated over x's.
                let scalar: Vec<bool> = ops[1..]
                    .iter()
                    .map(|&o| graph.g[o].ty.shape.is_empty())
                    .collect();
                let mut args = vec![v(0), Arg::Val(n), Arg::Rows(n)];
                for (i, &o) in ops.iter().enumerate().skip(1) {
                    args.push(v(i));
                    args.push(Arg::Rows(o));
                }
                (
                    elementwise::chain(l, steps, last(graph, n), &scalar)?,
                    args,
                    None,
                )
            }
            Op::Add | Op::Mul => (
                elementwise::binary(l, matches!(node.op, Op::Add))?,
                vec![
                    v(0),
                    v(1),
                    Arg::Val(n),
                    Arg::Numel(ops[0]),
                    Arg::Numel(ops[1]),
                ],
                None,
            ),
            Op::Scale { factor } => (
                elementwise::scale(l, *factor)?,
                vec![v(0), Arg::Val(n), Arg::Numel(n)],
                None,
            ),
            // Row-wise kernels run on the thread pool (`parallel::split`) when big enough.
            Op::Act(a) => {
                let inner = elementwise::activation(l, *a)?;
                let name = format!("cf_act_{a:?}_parallel")
                    .to_lowercase()
                    .replace(|c: char| !c.is_ascii_alphanumeric() && c != '_', "");
                (
                    parallel::split(l, &name, inner, &[4, 4], 1 << 14, 16)?,
                    vec![v(0), Arg::Val(n), Arg::Numel(n), Arg::ParallelFor],
                    None,
                )
            }
            Op::LayerNorm { eps } => {
                let c = last(graph, n);
                let inner = norm::layer_norm(l, c, *eps)?;
                let name = format!("cf_layer_norm_c{c}_e{:08x}_parallel", eps.to_bits());
                let row = 4 * c as i64;
                (
                    parallel::split(l, &name, inner, &[row, 0, 0, row], 16, 1)?,
                    vec![
                        v(0),
                        v(1),
                        v(2),
                        Arg::Val(n),
                        Arg::Rows(n),
                        Arg::ParallelFor,
                    ],
                    None,
                )
            }
            Op::RmsNorm { eps } => {
                let c = last(graph, n);
                let inner = norm::rms_norm(l, c, *eps)?;
                let name = format!("cf_rms_norm_c{c}_e{:08x}_parallel", eps.to_bits());
                let row = 4 * c as i64;
                (
                    parallel::split(l, &name, inner, &[row, 0, row], 16, 1)?,
                    vec![v(0), v(1), Arg::Val(n), Arg::Rows(n), Arg::ParallelFor],
                    None,
                )
            }
            Op::Attention {
                heads,
                head_dim,
                scale,
                causal,
                masked,
                biased,
            } => {
                let a = attention::Attn {
                    heads: *heads,
                    head_dim: *head_dim,
                    scale: *scale,
                    causal: *causal,
                    masked: *masked,
                    biased: *biased,
                };
                let q = &graph.g[ops[0]].ty.shape;
                let s = graph.g[ops[1]].ty.shape[1];
                let mask = if *masked { v(3) } else { Arg::Null };
                let bias = if *biased {
                    v(3 + *masked as usize)
                } else {
                    Arg::Null
                };
                (
                    attention::attention(l, &a)?,
                    vec![
                        v(0),
                        v(1),
                        v(2),
                        mask,
                        bias,
                        Arg::Val(n),
                        Arg::ParallelFor,
                        Arg::Dim(q[0]),
                        Arg::Dim(q[1]),
                        Arg::Dim(s),
                    ],
                    None,
                )
            }
            Op::RelPosBias {
                buckets,
                max_distance,
                bidirectional,
                keys,
            } => {
                let heads = last(graph, ops[0]);
                (
                    attention::rel_pos_bias(l, heads, *buckets, *max_distance, *bidirectional)?,
                    vec![
                        v(0),
                        Arg::Val(n),
                        Arg::Dim(Dim::Seq),
                        Arg::Dim(*keys),
                        Arg::Dim(Dim::Past),
                    ],
                    None,
                )
            }
            Op::SliceLast { start, len } => (
                memory::slice_last(l, last(graph, ops[0]), *start, *len)?,
                vec![v(0), Arg::Val(n), Arg::Rows(n)],
                None,
            ),
            Op::ConcatSeq => {
                let sh = &graph.g[ops[0]].ty.shape;
                (
                    memory::concat_seq(l, last(graph, n))?,
                    vec![
                        v(0),
                        v(1),
                        Arg::Val(n),
                        Arg::Dim(sh[0]),
                        Arg::Dim(Dim::Past),
                        Arg::Dim(Dim::Seq),
                    ],
                    None,
                )
            }
            Op::LastToken | Op::FirstToken => {
                let sh = &graph.g[ops[0]].ty.shape;
                (
                    memory::pick_token(l, last(graph, n), matches!(node.op, Op::LastToken))?,
                    vec![v(0), Arg::Val(n), Arg::Dim(sh[0]), Arg::Dim(sh[1])],
                    None,
                )
            }
            Op::MeanPool | Op::MaxPool => {
                let sh = &graph.g[ops[0]].ty.shape;
                (
                    memory::pool(l, last(graph, n), matches!(node.op, Op::MeanPool))?,
                    vec![v(0), v(1), Arg::Val(n), Arg::Dim(sh[0]), Arg::Dim(sh[1])],
                    None,
                )
            }
            Op::L2Normalize => (
                norm::l2_normalize(l, last(graph, n))?,
                vec![v(0), Arg::Val(n), Arg::Rows(n)],
                None,
            ),
        };
        calls.push(Call {
            node: n,
            kernel,
            args,
            fails,
        });
    }

    // Resolve slots now that every weight slot is known: the value table holds inputs,
    // then weights, then buffers.
    for c in &calls {
        for a in &c.args {
            if let Arg::Weight(key, prep) = a {
                p.weight(key, *prep);
            }
        }
    }
    let n_in = p.meta.inputs.len() as i64;
    let n_w = p.meta.weights.len() as i64;
    let slot_index = |s: Slot| -> i64 {
        match s {
            Slot::Input(i) => i as i64,
            Slot::Buffer(b) => n_in + n_w + b as i64,
        }
    };
    let mut errors = vec![];
    let resolved: Vec<(NodeIndex, FuncId, Vec<ArgVal>, Option<i64>)> = calls
        .into_iter()
        .map(|c| {
            let args = c
                .args
                .iter()
                .map(|a| match a {
                    Arg::Val(o) => ArgVal::Slot(slot_index(p.value[o])),
                    Arg::Weight(k, prep) => {
                        ArgVal::Slot(n_in + p.weight_slots[&(k.clone(), *prep)] as i64)
                    }
                    Arg::Dim(d) => ArgVal::Dims(vec![*d]),
                    Arg::Rows(o) => {
                        let s = &graph.g[*o].ty.shape;
                        ArgVal::Dims(s[..s.len().saturating_sub(1)].to_vec())
                    }
                    Arg::Numel(o) => ArgVal::Dims(graph.g[*o].ty.shape.clone()),
                    Arg::Null => ArgVal::Null,
                    Arg::Sgemm => ArgVal::Sgemm,
                    Arg::ParallelFor => ArgVal::ParallelFor,
                })
                .collect();
            let code = c.fails.map(|m| {
                errors.push(m);
                errors.len() as i64
            });
            (c.node, c.kernel, args, code)
        })
        .collect();
    p.meta.errors = errors;

    // Each distinct kernel is imported once; `callee[i]` is call i's import.
    let mut funcs: Vec<FuncId> = vec![];
    let callee: Vec<usize> = resolved
        .iter()
        .map(|r| match funcs.iter().position(|&f| f == r.1) {
            Some(i) => i,
            None => {
                funcs.push(r.1);
                funcs.len() - 1
            }
        })
        .collect();
    let imports = Imports {
        funcs,
        data: vec![],
    };
    let labels: HashMap<u32, String> = resolved
        .iter()
        .map(|(n, ..)| {
            let node = &graph.g[*n];
            let ops: Vec<String> = graph
                .operands(*n)
                .iter()
                .map(|o| format!("%{}", o.index()))
                .collect();
            (
                n.index() as u32,
                format!(
                    "%{} = {}({}) : {}  # {}",
                    n.index(),
                    node.op,
                    ops.join(", "),
                    node.ty,
                    node.label
                ),
            )
        })
        .collect();
    let note = move |loc: u32| labels.get(&loc).cloned().unwrap_or_default();
    let id = l.define(
        &p.meta.symbol.clone(),
        1,
        true,
        imports,
        false,
        Linkage::Export,
        Some(&note),
        |k, params, refs| {
            let ctx = params[0];
            let values = k.ld_field(ctx, abi::ctx::VALUES);
            let [batch, seq, past, enc_seq] =
                [abi::ctx::BATCH, abi::ctx::SEQ, abi::ctx::PAST, abi::ctx::ENC_SEQ]
                    .map(|f| k.ld_field(ctx, f));
            let rt = k.ld_field(ctx, abi::ctx::RT);
            let sgemm = k.ld_field(rt, abi::rt::GEMM);
            let dim = |k: &mut super::ir::Kb, d: Dim| -> Value {
                match d {
                    Dim::Const(c) => k.i(c as i64),
                    Dim::Batch => batch,
                    Dim::Seq => seq,
                    Dim::Past => past,
                    Dim::Total => k.add(past, seq),
                    Dim::EncSeq => enc_seq,
                }
            };
            for (i, (n, _, args, code)) in resolved.iter().enumerate() {
                k.b.set_srcloc(SourceLoc::new(n.index() as u32));
                let vals: Vec<Value> = args
                    .iter()
                    .map(|a| match a {
                        ArgVal::Slot(s) => k.ld(I64, values, *s as i32 * abi::VALUE_SLOT),
                        ArgVal::Dims(ds) => {
                            let mut acc = k.i(1);
                            for &d in ds {
                                let v = dim(k, d);
                                acc = k.mul(acc, v);
                            }
                            acc
                        }
                        ArgVal::Null => k.i(0),
                        ArgVal::Sgemm => sgemm,
                        ArgVal::ParallelFor => k.ld_field(rt, abi::rt::PARALLEL_FOR),
                    })
                    .collect();
                let call = k.b.ins().call(refs.funcs[callee[i]], &vals);
                if let Some(code) = code {
                    let r = k.b.inst_results(call)[0];
                    let bad = k.b.ins().icmp_imm_s(IntCC::NotEqual, r, 0);
                    let code = *code;
                    k.when(bad, |k| {
                        let c = k.i(code);
                        k.b.ins().return_(&[c]);
                        // Unreachable continuation block for the `when` join.
                        let dead = k.b.create_block();
                        k.b.switch_to_block(dead);
                    });
                }
            }
            k.b.set_srcloc(SourceLoc::default());
            let z = k.i(0);
            k.b.ins().return_(&[z]);
        },
    )?;
    Ok((id, p.meta))
}

enum ArgVal {
    Slot(i64),
    Dims(Vec<Dim>),
    Null,
    Sgemm,
    ParallelFor,
}
