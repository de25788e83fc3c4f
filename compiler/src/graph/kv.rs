//! Which KV-cache concatenations append in place: a property of the graph that the code
//! generator acts on (`codegen::memory`) and the cost model counts (`cost`).

use super::{Graph, Op};
use petgraph::graph::NodeIndex;

/// The KV-cache concatenations whose past can be a cache appended in place: a `ConcatSeq`
/// whose first operand is a graph input read by nothing else, read itself only as the keys
/// or values of attentions whose keys and values are both such concatenations (attention
/// then reads both with the cache's row stride). Anything else reading the past or the
/// concatenation would assume `[B, P, C]` / `[B, P+T, C]` tensors of their own.
pub fn in_place_appends(graph: &Graph) -> std::collections::HashSet<NodeIndex> {
    use petgraph::Direction::Outgoing;
    let g = &graph.g;
    let mut set: std::collections::HashSet<NodeIndex> = g
        .node_indices()
        .filter(|&c| {
            if !matches!(g[c].op, Op::ConcatSeq) {
                return false;
            }
            let past = graph.operands(c)[0];
            let only_reader = g.neighbors_directed(past, Outgoing).all(|u| u == c)
                && graph.operands(c)[1] != past;
            let attended = read_only_by_attention(graph, c, |slot| slot == 1 || slot == 2);
            matches!(g[past].op, Op::Input { .. })
                && !graph.outputs.iter().any(|(_, o)| *o == past)
                && only_reader
                && attended
        })
        .collect();
    loop {
        let drop: Vec<NodeIndex> = set
            .iter()
            .copied()
            .filter(|&c| {
                g.neighbors_directed(c, Outgoing).any(|u| {
                    let ops = graph.operands(u);
                    !(set.contains(&ops[1]) && set.contains(&ops[2]))
                })
            })
            .collect();
        if drop.is_empty() {
            return set;
        }
        for c in drop {
            set.remove(&c);
        }
    }
}

/// Whether every reader of `n` is an attention that takes it only in operand slots `slot`
/// accepts (q 0, k 1, v 2): what lets attention read it where it lies.
pub fn read_only_by_attention(graph: &Graph, n: NodeIndex, slot: impl Fn(usize) -> bool) -> bool {
    let g = &graph.g;
    g.neighbors_directed(n, petgraph::Direction::Outgoing)
        .all(|u| {
            matches!(g[u].op, Op::Attention { .. })
                && graph
                    .operands(u)
                    .iter()
                    .enumerate()
                    .all(|(i, &o)| o != n || slot(i))
        })
}
