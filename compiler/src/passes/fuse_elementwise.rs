//! Chains of pointwise ops (`Scale`, `Act`, `Add`, `Mul`, broadcasting operands included)
//! become one `Elementwise` op, one loop instead of one pass over memory per op. A link is
//! folded when its value has the chain's full shape and no other reader; ops left alone by
//! the earlier passes are the only candidates, and a lone pointwise op stays as it is.

use super::{only_read_by, replace_uses};
use crate::graph::{EwStep, Graph, Op};
use petgraph::graph::NodeIndex;

/// A pointwise op as a chain over its operands: (steps, operands), the chain value first.
fn as_chain(g: &Graph, n: NodeIndex) -> Option<(Vec<EwStep>, Vec<NodeIndex>)> {
    let ops = g.operands(n);
    let steps = match &g.g[n].op {
        Op::Scale { factor } => vec![EwStep::Scale(*factor)],
        Op::Act(a) => vec![EwStep::Act(*a)],
        Op::Add => vec![EwStep::Add(1)],
        Op::Mul => vec![EwStep::Mul(1)],
        Op::Elementwise(steps) => steps.clone(),
        _ => return None,
    };
    Some((steps, ops))
}

pub fn run(g: &mut Graph) -> usize {
    let mut fused = 0;
    for n in g.topo_order() {
        let Some((steps, ops)) = as_chain(g, n) else {
            continue;
        };
        // Which operand carries the chain: the first, or the second of a commuting binary
        // op of full shape (float add and multiply commute exactly).
        let binary = matches!(g.g[n].op, Op::Add | Op::Mul);
        let candidates: &[usize] = if binary { &[0, 1] } else { &[0] };
        for &c in candidates {
            let p = ops[c];
            if g.g[p].ty != g.g[n].ty || !only_read_by(g, p, n) {
                continue;
            }
            let Some((mut chain, mut operands)) = as_chain(g, p) else {
                continue;
            };
            // The producer's operands, then this op's others, renumbered after them.
            let base = operands.len();
            let others: Vec<NodeIndex> =
                (0..ops.len()).filter(|&i| i != c).map(|i| ops[i]).collect();
            for s in &steps {
                chain.push(match *s {
                    EwStep::Add(_) if binary => EwStep::Add(base),
                    EwStep::Mul(_) if binary => EwStep::Mul(base),
                    EwStep::Add(i) => EwStep::Add(i - 1 + base),
                    EwStep::Mul(i) => EwStep::Mul(i - 1 + base),
                    s => s,
                });
            }
            operands.extend(others);
            let label = g.g[n].label.clone();
            let y = g
                .add(Op::Elementwise(chain), &operands, &label)
                .expect("as the parts");
            replace_uses(g, n, y);
            fused += 1;
            break;
        }
    }
    fused
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;
    use crate::graph::{Activation, Dim, TensorType};

    #[test]
    fn a_chain_becomes_one_loop() {
        let mut g = Graph::new("t");
        let x = g.add_input("x", bt(4));
        let pos = g.add_input("pos", TensorType::f32(&[Dim::Seq, Dim::Const(4)]));
        let gate = g.add_input("gate", bt(4));
        let a = g.add(Op::Scale { factor: 0.5 }, &[x], "s").unwrap();
        let a = g.add(Op::Add, &[a, pos], "add").unwrap();
        let a = g.add(Op::Act(Activation::Relu), &[a], "act").unwrap();
        let a = g.add(Op::Mul, &[gate, a], "mul").unwrap();
        g.add_output("y", a);
        assert_eq!(run(&mut g), 3);
        let g = super::super::sweep(&g, 0);
        g.verify().unwrap();
        assert_eq!(ops(&g), ["elementwise[scale 0.5, add $1, relu, mul $2]"]);
    }

    #[test]
    fn a_value_read_twice_ends_the_chain() {
        let mut g = Graph::new("t");
        let x = g.add_input("x", bt(4));
        let a = g.add(Op::Scale { factor: 2.0 }, &[x], "s").unwrap();
        let b = g.add(Op::Act(Activation::Tanh), &[a], "t").unwrap();
        g.add_output("a", a);
        g.add_output("b", b);
        assert_eq!(run(&mut g), 0);
    }
}
