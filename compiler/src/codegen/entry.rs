//! One entry function per graph: assigns every value a slot of the host's value table
//! (inputs, prepared weights, buffers), then calls one kernel per node in topological order
//! with sizes computed from the run-time dims. Each kernel family's file says how its nodes
//! are called (its `call`: a kernel and a list of [`Arg`]s); this file only dispatches and
//! resolves the arguments.

use super::{attention, elementwise, matmul, memory, norm, CodegenError, Imports, Lowering};
use crate::graph::{DType, Dim, Graph, Op, TensorType};
use cranelift_codegen::ir::{condcodes::IntCC, types::I64, InstBuilder, SourceLoc, Value};
use cranelift_module::{FuncId, Linkage, Module};
use cranformer_runtime::abi;
use cranformer_runtime::native::{EntryMeta, Slot, TensorSig, WeightPrep};
use petgraph::graph::NodeIndex;
use std::collections::{HashMap, HashSet};

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
    /// KV-cache concatenations that can append in place ([`memory::in_place_appends`]).
    in_place: HashSet<NodeIndex>,
    /// Slices attention reads in place ([`memory::slices_read_in_place`]): no buffer, no call.
    views: HashMap<NodeIndex, memory::SliceView>,
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
            appends: vec![],
        },
        value: HashMap::new(),
        weight_slots: HashMap::new(),
        in_place: memory::in_place_appends(graph),
        views: memory::slices_read_in_place(graph),
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
            _ if p.views.contains_key(&n) => continue,
            _ => {}
        }
        p.value.insert(n, Slot::Buffer(p.meta.buffers.len()));
        p.meta.buffers.push(sig(&node.label, &node.ty));
    }
    // Live ranges in kernel-call steps (one step per node with a call, in this order): a
    // buffer lives from its node's step to its last reader's, outputs to the end. A slice
    // read in place reads its source when its attentions run.
    let steps: HashMap<NodeIndex, u32> = graph
        .topo_order()
        .into_iter()
        .filter(|&n| !matches!(graph.g[n].op, Op::Input { .. } | Op::Weight { .. }))
        .filter(|n| !p.views.contains_key(n))
        .enumerate()
        .map(|(i, n)| (n, i as u32))
        .collect();
    let readers = |n: NodeIndex| graph.g.neighbors_directed(n, petgraph::Direction::Outgoing);
    p.meta.live = vec![(0, 0); p.meta.buffers.len()];
    for (&n, &step) in &steps {
        if let Some(&Slot::Buffer(b)) = p.value.get(&n) {
            let last = readers(n)
                .flat_map(|u| match p.views.contains_key(&u) {
                    true => readers(u).collect::<Vec<_>>(),
                    false => vec![u],
                })
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
    let mut appends: Vec<(usize, usize)> = p
        .in_place
        .iter()
        .filter_map(|&c| match (p.value[&graph.operands(c)[0]], p.value[&c]) {
            (Slot::Input(i), Slot::Buffer(b)) => Some((i, b)),
            _ => None,
        })
        .collect();
    appends.sort_unstable();
    p.meta.appends = appends;
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
    // Kernels first (each is defined once, by its family's file), recording each node's call.
    let mut calls: Vec<(NodeIndex, Call)> = vec![];
    for n in graph.topo_order() {
        let at = At::new(graph, n, &p.in_place, &p.views);
        let call = match &graph.g[n].op {
            Op::Input { .. } | Op::Weight { .. } => continue,
            _ if p.views.contains_key(&n) => continue,
            Op::Linear { .. } | Op::FusedLinear { .. } => matmul::call(l, &at)?,
            Op::Attention { .. } | Op::RelPosBias { .. } => attention::call(l, &at)?,
            Op::LayerNorm { .. }
            | Op::RmsNorm { .. }
            | Op::AddLayerNorm { .. }
            | Op::AddRmsNorm { .. }
            | Op::L2Normalize => norm::call(l, &at)?,
            Op::Act(_)
            | Op::GatedAct(_)
            | Op::Elementwise(_)
            | Op::Add
            | Op::Mul
            | Op::Scale { .. } => elementwise::call(l, &at)?,
            Op::Gather
            | Op::Positions
            | Op::SliceLast { .. }
            | Op::ConcatSeq
            | Op::LastToken
            | Op::FirstToken
            | Op::MeanPool
            | Op::MaxPool => memory::call(l, &at)?,
        };
        calls.push((n, call));
    }

    // Resolve slots now that every weight slot is known: the value table holds inputs,
    // then weights, then buffers.
    for (_, c) in &calls {
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
        .map(|(node, c)| {
            let args = c
                .args
                .iter()
                .map(|a| match a {
                    Arg::Val(o) => ArgVal::Slot(slot_index(p.value[o])),
                    Arg::ValAt(o, floats) => {
                        ArgVal::SlotAt(slot_index(p.value[o]), 4 * *floats as i64)
                    }
                    Arg::Weight(k, prep) => {
                        ArgVal::Slot(n_in + p.weight_slots[&(k.clone(), *prep)] as i64)
                    }
                    Arg::Dim(d) => ArgVal::Dims(vec![*d]),
                    Arg::KvRows(d) => ArgVal::KvRows(*d),
                    Arg::Rows(o) => {
                        let s = &graph.g[*o].ty.shape;
                        ArgVal::Dims(s[..s.len().saturating_sub(1)].to_vec())
                    }
                    Arg::Numel(o) => ArgVal::Dims(graph.g[*o].ty.shape.clone()),
                    Arg::Null => ArgVal::Null,
                    Arg::Sgemm => ArgVal::Sgemm,
                    Arg::ParallelFor => ArgVal::ParallelFor,
                    Arg::Rt(f) => ArgVal::Rt(*f),
                    Arg::Ctx(f) => ArgVal::Ctx(*f),
                })
                .collect();
            let code = c.fails.map(|m| {
                errors.push(m);
                errors.len() as i64
            });
            (node, c.kernel, args, code)
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
            let [batch, seq, past, enc_seq, kv_cap] = [
                abi::ctx::BATCH,
                abi::ctx::SEQ,
                abi::ctx::PAST,
                abi::ctx::ENC_SEQ,
                abi::ctx::KV_CAP,
            ]
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
                        ArgVal::SlotAt(s, bytes) => {
                            let base = k.ld(I64, values, *s as i32 * abi::VALUE_SLOT);
                            k.addi(base, *bytes)
                        }
                        ArgVal::Dims(ds) => {
                            let mut acc = k.i(1);
                            for &d in ds {
                                let v = dim(k, d);
                                acc = k.mul(acc, v);
                            }
                            acc
                        }
                        ArgVal::KvRows(d) => {
                            let v = dim(k, *d);
                            let set = k.b.ins().icmp_imm_s(IntCC::NotEqual, kv_cap, 0);
                            k.b.ins().select(set, kv_cap, v)
                        }
                        ArgVal::Null => k.i(0),
                        ArgVal::Sgemm => sgemm,
                        ArgVal::ParallelFor => k.ld_field(rt, abi::rt::PARALLEL_FOR),
                        ArgVal::Rt(f) => k.ld_field(rt, *f),
                        ArgVal::Ctx(f) => k.ld_field(ctx, *f),
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

/// One argument of a kernel call, as the kernel families describe it.
pub(super) enum Arg {
    /// The slot of a computed value or input.
    Val(NodeIndex),
    /// The slot of a computed value or input, plus this many floats.
    ValAt(NodeIndex, usize),
    /// The slot of a weight laid out as the kernel reads it.
    Weight(String, WeightPrep),
    Dim(Dim),
    /// Rows per batch row of a KV-cache tensor appended in place: the cache's capacity when
    /// the host passed one (`CtxDims::kv_cap`), else the dim of the tensor's own shape.
    KvRows(Dim),
    /// The product of a node's dims except the last (rows of a `[.., C]` tensor).
    Rows(NodeIndex),
    Numel(NodeIndex),
    Null,
    /// The runtime's wide matmul (`RuntimeFns::gemm`), or null.
    Sgemm,
    /// The runtime's thread pool (`RuntimeFns::parallel_for`).
    ParallelFor,
    /// Another runtime service, a field of `RuntimeFns` (`abi::rt::QGEMM`, ...).
    Rt(abi::Field),
    /// A field of the call's `EntryCtx` (`abi::ctx::KV_LENS`).
    Ctx(abi::Field),
}

/// How one node is computed: a kernel and its arguments, returned by each kernel family's
/// `call`.
pub(super) struct Call {
    pub kernel: FuncId,
    pub args: Vec<Arg>,
    /// Error message when the kernel returns non-zero.
    pub fails: Option<String>,
}

impl Call {
    pub fn new(kernel: FuncId, args: Vec<Arg>) -> Call {
        Call {
            kernel,
            args,
            fails: None,
        }
    }
}

/// The node being lowered, for the kernel families' `call`s.
pub(super) struct At<'g> {
    pub graph: &'g Graph,
    pub n: NodeIndex,
    pub ops: Vec<NodeIndex>,
    in_place: &'g HashSet<NodeIndex>,
    views: &'g HashMap<NodeIndex, memory::SliceView>,
}

impl<'g> At<'g> {
    fn new(
        graph: &'g Graph,
        n: NodeIndex,
        in_place: &'g HashSet<NodeIndex>,
        views: &'g HashMap<NodeIndex, memory::SliceView>,
    ) -> At<'g> {
        At {
            graph,
            n,
            ops: graph.operands(n),
            in_place,
            views,
        }
    }

    /// Operand `i` when it is a slice read where it lies ([`memory::slices_read_in_place`]).
    pub fn view(&self, i: usize) -> Option<memory::SliceView> {
        self.views.get(&self.ops[i]).copied()
    }

    /// Whether node `o` is a KV-cache concatenation appended in place when the host passes a
    /// cache (its batch rows then lie `Arg::KvRows` rows apart).
    pub fn appends_in_place(&self, o: NodeIndex) -> bool {
        self.in_place.contains(&o)
    }

    pub fn node(&self) -> &'g crate::graph::Node {
        &self.graph.g[self.n]
    }

    /// Operand `i`: its slot, or a weight's as the kernel reads it laid out by `prep`.
    pub fn operand(&self, i: usize, prep: WeightPrep) -> Arg {
        let o = self.ops[i];
        match &self.graph.g[o].op {
            Op::Weight { key } => Arg::Weight(key.clone(), prep),
            _ => Arg::Val(o),
        }
    }

    /// Operand `i` as it is.
    pub fn v(&self, i: usize) -> Arg {
        self.operand(i, WeightPrep::AsIs)
    }

    /// The node's own output.
    pub fn out(&self) -> Arg {
        Arg::Val(self.n)
    }

    /// The symbolic shape of operand `i`.
    pub fn shape(&self, i: usize) -> &'g [Dim] {
        &self.graph.g[self.ops[i]].ty.shape
    }

    /// Channels (the constant last dim) of operand `i`.
    pub fn channels_of(&self, i: usize) -> usize {
        last(self.graph, self.ops[i])
    }

    /// Channels of the node's output.
    pub fn channels(&self) -> usize {
        last(self.graph, self.n)
    }
}

fn last(graph: &Graph, o: NodeIndex) -> usize {
    match graph.g[o].ty.last() {
        Some(Dim::Const(c)) => c,
        other => panic!("graph verified: channels are constant, got {other:?}"),
    }
}

enum ArgVal {
    Slot(i64),
    /// A slot's pointer plus this many bytes.
    SlotAt(i64, i64),
    Dims(Vec<Dim>),
    KvRows(Dim),
    Null,
    Sgemm,
    ParallelFor,
    Rt(abi::Field),
    Ctx(abi::Field),
}
