//! Sibling projections become one matmul: `nn.Linear`s (`[N, K]` weights) reading the same
//! input, all with a bias or all without, turn into one Linear over their weights stacked
//! row-wise (a derived `concat(..)` weight the host builds at load) and a `SliceLast` per
//! original output. That is BERT's and T5's Q, K and V, T5's cross-attention K and V
//! (`cross_kv`), and T5 v1.1's `wi_0` / `wi_1`. GPT-2's `c_attn` is fused in the checkpoint
//! already; `Conv1D` weights (`[K, N]`) and linears whose weight is computed are left alone.

use super::{add_weight, replace_uses, users};
use crate::graph::{Dim, Graph, Op, TensorType, WeightLayout};
use cranformer_runtime::native::WeightSource;
use petgraph::graph::NodeIndex;

/// A fusable projection: the linear, its weight key, bias key and output width.
struct Proj {
    node: NodeIndex,
    w: String,
    b: Option<String>,
    n: usize,
}

fn proj(g: &Graph, node: NodeIndex) -> Option<Proj> {
    if g.g[node].op
        != (Op::Linear {
            layout: WeightLayout::OutIn,
        })
    {
        return None;
    }
    let ops = g.operands(node);
    let key = |o: NodeIndex| match &g.g[o].op {
        // A derived weight is not concatenated again: its parts would be named twice over.
        Op::Weight { key } if matches!(WeightSource::parse(key), WeightSource::Key(_)) => {
            Some(key.clone())
        }
        _ => None,
    };
    let n = match g.g[ops[1]].ty.shape[0] {
        Dim::Const(n) => n,
        _ => return None,
    };
    Some(Proj {
        node,
        w: key(ops[1])?,
        b: match ops.get(2) {
            Some(&b) => Some(key(b)?),
            None => None,
        },
        n,
    })
}

pub fn run(g: &mut Graph) -> usize {
    let mut fused = 0;
    for x in g.topo_order() {
        // Linears reading x as their input, in model order, split by whether they have a bias.
        let all: Vec<Proj> = users(g, x)
            .into_iter()
            .filter(|&(_, slot)| slot == 0)
            .filter_map(|(u, _)| proj(g, u))
            .collect();
        for biased in [false, true] {
            let group: Vec<&Proj> = all.iter().filter(|p| p.b.is_some() == biased).collect();
            if group.len() < 2 {
                continue;
            }
            fuse(g, x, &group);
            fused += 1;
        }
    }
    fused
}

fn fuse(g: &mut Graph, x: NodeIndex, group: &[&Proj]) {
    let k = g.g[g.operands(group[0].node)[1]].ty.shape[1];
    let total: usize = group.iter().map(|p| p.n).sum();
    let wkeys: Vec<&str> = group.iter().map(|p| p.w.as_str()).collect();
    let w = add_weight(
        g,
        WeightSource::concat_key(&wkeys),
        TensorType::f32(&[Dim::Const(total), k]),
    );
    let mut operands = vec![x, w];
    if group[0].b.is_some() {
        let bkeys: Vec<&str> = group.iter().map(|p| p.b.as_deref().unwrap()).collect();
        operands.push(add_weight(
            g,
            WeightSource::concat_key(&bkeys),
            TensorType::f32(&[Dim::Const(total)]),
        ));
    }
    let label = fused_label(group.iter().map(|p| g.g[p.node].label.as_str()));
    let y = g
        .add(
            Op::Linear {
                layout: WeightLayout::OutIn,
            },
            &operands,
            &label,
        )
        .expect("the parts type-checked");
    let mut start = 0;
    for p in group {
        let label = g.g[p.node].label.clone();
        let s = g
            .add(Op::SliceLast { start, len: p.n }, &[y], &label)
            .expect("in range");
        replace_uses(g, p.node, s);
        start += p.n;
    }
}

/// `a.b.query`, `a.b.key`, `a.b.value` -> `a.b.{query,key,value}`: the longest common
/// prefix ending at a dot, then the rest of each.
fn fused_label<'a>(labels: impl Iterator<Item = &'a str>) -> String {
    let labels: Vec<&str> = labels.collect();
    let mut common = labels[0];
    for l in &labels[1..] {
        let same = common
            .bytes()
            .zip(l.bytes())
            .take_while(|(a, b)| a == b)
            .count();
        common = &common[..same];
    }
    let common = common.rfind('.').map_or("", |i| &common[..=i]);
    let tails: Vec<&str> = labels.iter().map(|l| &l[common.len()..]).collect();
    format!("{common}{{{}}}", tails.join(","))
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    #[test]
    fn three_projections_become_one_matmul_and_slices() {
        let mut g = Graph::new("t");
        let x = g.add_input("x", bt(4));
        let mut outs = vec![];
        for p in ["q", "k", "v"] {
            let w = weight(&mut g, &format!("{p}.weight"), &[4, 4]);
            let b = weight(&mut g, &format!("{p}.bias"), &[4]);
            let lin = Op::Linear {
                layout: WeightLayout::OutIn,
            };
            outs.push(g.add(lin, &[x, w, b], p).unwrap());
        }
        for (i, o) in outs.into_iter().enumerate() {
            g.add_output(&format!("y{i}"), o);
        }
        assert_eq!(run(&mut g), 1);
        let g = super::super::sweep(&g, 0);
        g.verify().unwrap();
        assert_eq!(
            ops(&g),
            [
                "linear",
                "slice_last 0..4",
                "slice_last 4..8",
                "slice_last 8..12"
            ]
        );
        let text = g.to_string();
        assert!(text.contains("weight concat(q.weight,k.weight,v.weight) : f32[12, 4]"));
        assert!(text.contains("# {q,k,v}"), "{text}");
    }
}
