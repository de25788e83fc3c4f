//! Graph-to-graph optimisations, run between the frontends and code generation. The
//! interpreter never sees their output: it runs the frontend graphs and is the oracle the
//! optimised, compiled graphs are tested against.
//!
//! [`optimize`] is the pipeline, written out once. Each pass is one file that rewrites
//! matches by adding new nodes and pointing users at them; the nodes left without users are
//! swept after the pass, which also renumbers the graph so dumps stay in model order.

mod fuse_add_norm;
mod fuse_elementwise;
mod fuse_epilogue;
mod fuse_qkv;

use crate::frontend::WeightTable;
use crate::graph::{Graph, GraphError, Node, Op};
use cranformer_runtime::native::WeightSource;
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::EdgeRef;
use petgraph::Direction;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// The passes in pipeline order, as `cranformer graph --after` names them.
pub const PASSES: [&str; 4] = [
    "fuse_qkv",
    "fuse_add_norm",
    "fuse_epilogue",
    "fuse_elementwise",
];

/// A pass rewrites the graph in place and returns how many rewrites it made.
type Pass = fn(&mut Graph) -> usize;

/// Errors running the pipeline. `Verify` and `Weight` are compiler bugs.
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    /// `--after` names no pass.
    #[error("there is no pass {name:?} (passes in order: {}, or all)", PASSES.join(", "))]
    Unknown { name: String },
    /// A pass left a graph that does not type-check (compiler bug).
    #[error("compiler bug: after pass {pass}: {source}")]
    Verify {
        pass: &'static str,
        source: GraphError,
    },
    /// A pass made a weight the host cannot build from the checkpoint (compiler bug).
    #[error("compiler bug: after pass {pass}: weight {key} reads keys the checkpoint lacks")]
    Weight { pass: &'static str, key: String },
}

/// `graph` through every pass in order, stopping after the one named `stop_after` (`None` or
/// "all": the whole pipeline). The graph is verified after each pass in debug builds (and so
/// in tests), including that every weight it names can be built from `weights`.
pub fn optimize(
    graph: &Graph,
    weights: &WeightTable,
    stop_after: Option<&str>,
) -> Result<Graph, PassError> {
    let stop_after = stop_after.filter(|&s| s != "all");
    if let Some(name) = stop_after {
        if !PASSES.contains(&name) {
            return Err(PassError::Unknown { name: name.into() });
        }
    }
    // Order matters: Q/K/V (and T5's wi_0/wi_1) become one matmul first, so the epilogue
    // pass sees the gated activation over its halves; residual adds go into a following
    // norm before the matmul epilogue may take them, since where a norm reads the sum alone
    // both cost the same and the norm's kernel needs no runtime support.
    let pipeline: [(&'static str, Pass); 4] = [
        ("fuse_qkv", fuse_qkv::run),
        ("fuse_add_norm", fuse_add_norm::run),
        ("fuse_epilogue", fuse_epilogue::run),
        ("fuse_elementwise", fuse_elementwise::run),
    ];
    debug_assert_eq!(pipeline.map(|p| p.0), PASSES);
    let mut g = graph.clone();
    for (name, pass) in pipeline {
        let fresh_from = g.g.node_count();
        if pass(&mut g) > 0 {
            g = sweep(&g, fresh_from);
        }
        if cfg!(debug_assertions) {
            check(&g, weights, name)?;
        }
        if stop_after == Some(name) {
            break;
        }
    }
    Ok(g)
}

fn check(g: &Graph, weights: &WeightTable, pass: &'static str) -> Result<(), PassError> {
    g.verify()
        .map_err(|source| PassError::Verify { pass, source })?;
    for n in g.g.node_indices() {
        if let Op::Weight { key } = &g.g[n].op {
            // Frontend-built graphs in tests may name weights they never loaded.
            let src = WeightSource::parse(key);
            if matches!(src, WeightSource::Concat(_))
                && src.keys().iter().any(|k| !weights.contains_key(*k))
            {
                return Err(PassError::Weight {
                    pass,
                    key: key.clone(),
                });
            }
        }
    }
    Ok(())
}

/// The users of `n` with the slot each reads it in; a user reading it twice appears twice.
pub(crate) fn users(g: &Graph, n: NodeIndex) -> Vec<(NodeIndex, usize)> {
    let mut u: Vec<_> =
        g.g.edges_directed(n, Direction::Outgoing)
            .map(|e| (e.target(), *e.weight()))
            .collect();
    u.sort_unstable();
    u
}

pub(crate) fn is_output(g: &Graph, n: NodeIndex) -> bool {
    g.outputs.iter().any(|&(_, o)| o == n)
}

/// Whether `user` is the only reader of `n` (once) and `n` is no graph output: then `n` can
/// be folded into `user` without anything else losing its value.
pub(crate) fn only_read_by(g: &Graph, n: NodeIndex, user: NodeIndex) -> bool {
    users(g, n).iter().map(|u| u.0).eq([user]) && !is_output(g, n)
}

/// Points every user of `old` (and every output naming it) at `new`.
pub(crate) fn replace_uses(g: &mut Graph, old: NodeIndex, new: NodeIndex) {
    for (user, slot) in users(g, old) {
        let e =
            g.g.edges_connecting(old, user)
                .find(|e| *e.weight() == slot)
                .map(|e| e.id())
                .expect("listed above");
        g.g.remove_edge(e);
        g.g.add_edge(new, user, slot);
    }
    for out in &mut g.outputs {
        if out.1 == old {
            out.1 = new;
        }
    }
}

/// A new weight node (derived weights are spelled as keys: see [`WeightSource`]).
pub(crate) fn add_weight(g: &mut Graph, key: String, ty: crate::graph::TensorType) -> NodeIndex {
    g.g.add_node(Node {
        op: Op::Weight { key: key.clone() },
        ty,
        label: key,
    })
}

/// The graph without the nodes no output depends on (inputs stay: they are the signature),
/// renumbered in topological order. Nodes from `fresh_from` on were added by the pass: each
/// is placed just before its first user, so a fused op prints where the ops it replaces did.
fn sweep(g: &Graph, fresh_from: usize) -> Graph {
    let n = g.g.node_count();
    let mut live = vec![false; n];
    let mut stack: Vec<NodeIndex> = g.outputs.iter().map(|o| o.1).collect();
    stack.extend(g.inputs.iter().map(|i| i.1));
    while let Some(x) = stack.pop() {
        if !std::mem::replace(&mut live[x.index()], true) {
            stack.extend(g.operands(x));
        }
    }
    // Position keys: an old node at its index (spaced out), a new one just before its first
    // live user; computed users first.
    let order = g.topo_order();
    let mut key = vec![0u64; n];
    for &x in order.iter().rev() {
        key[x.index()] = if x.index() < fresh_from {
            (x.index() as u64 + 1) << 16
        } else {
            users(g, x)
                .iter()
                .filter(|u| live[u.0.index()])
                .map(|u| key[u.0.index()] - 1)
                .min()
                .unwrap_or(((x.index() as u64) + 1) << 16)
        };
    }
    // Kahn's algorithm over the live nodes, smallest key first.
    let mut pending: Vec<usize> = (0..n)
        .map(|i| g.operands(NodeIndex::new(i)).len())
        .collect();
    let mut ready: BinaryHeap<Reverse<(u64, usize)>> = (0..n)
        .filter(|&i| live[i] && pending[i] == 0)
        .map(|i| Reverse((key[i], i)))
        .collect();
    let mut out = Graph {
        name: g.name.clone(),
        g: DiGraph::new(),
        inputs: vec![],
        outputs: vec![],
    };
    let mut map = vec![None; n];
    while let Some(Reverse((_, i))) = ready.pop() {
        let x = NodeIndex::new(i);
        let y = out.g.add_node(g.g[x].clone());
        map[i] = Some(y);
        for (slot, o) in g.operands(x).into_iter().enumerate() {
            out.g
                .add_edge(map[o.index()].expect("operands first"), y, slot);
        }
        for (u, _) in users(g, x) {
            let ui = u.index();
            pending[ui] -= 1;
            if pending[ui] == 0 && live[ui] {
                ready.push(Reverse((key[ui], ui)));
            }
        }
    }
    out.inputs = g
        .inputs
        .iter()
        .map(|(name, i)| (name.clone(), map[i.index()].expect("inputs are kept")))
        .collect();
    out.outputs = g
        .outputs
        .iter()
        .map(|(name, o)| (name.clone(), map[o.index()].expect("outputs are live")))
        .collect();
    out
}

#[cfg(test)]
pub(crate) mod testing {
    use crate::graph::{Dim, Graph, Node, Op, TensorType};
    use petgraph::graph::NodeIndex;

    pub fn weight(g: &mut Graph, key: &str, shape: &[usize]) -> NodeIndex {
        g.g.add_node(Node {
            op: Op::Weight { key: key.into() },
            ty: TensorType::f32(&shape.iter().map(|&d| Dim::Const(d)).collect::<Vec<_>>()),
            label: key.into(),
        })
    }

    pub fn bt(c: usize) -> TensorType {
        TensorType::f32(&[Dim::Batch, Dim::Seq, Dim::Const(c)])
    }

    /// The ops of `g` in print order, without inputs and weights.
    pub fn ops(g: &Graph) -> Vec<String> {
        g.topo_order()
            .into_iter()
            .filter(|&n| !matches!(g.g[n].op, Op::Input { .. } | Op::Weight { .. }))
            .map(|n| g.g[n].op.to_string())
            .collect()
    }
}
