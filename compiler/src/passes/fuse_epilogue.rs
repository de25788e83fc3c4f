//! What follows a matmul goes into its epilogue: `Act(Linear)` -> `FusedLinear { act }`,
//! then `Linear + r` (either operand order, `r` of the same shape) -> `FusedLinear
//! { residual }`, i.e. act(x·w + bias) + r; and T5's gated feed-forward, `act(y[.., :F]) *
//! y[.., F:]` over the fused `wi_0`/`wi_1` matmul, -> `GatedAct(y)`. Only where the folded
//! value has no other reader; an activation after a residual add, broadcast adds and norms
//! are left alone.

use super::{only_read_by, replace_uses};
use crate::graph::{Activation, Dim, Graph, Op, WeightLayout};
use petgraph::graph::NodeIndex;

/// (layout, act, residual) of a plain or fused linear.
fn linear(op: &Op) -> Option<(WeightLayout, Option<Activation>, bool)> {
    match *op {
        Op::Linear { layout } => Some((layout, None, false)),
        Op::FusedLinear {
            layout,
            act,
            residual,
        } => Some((layout, act, residual)),
        _ => None,
    }
}

pub fn run(g: &mut Graph) -> usize {
    let mut fused = 0;
    for n in g.topo_order() {
        let done = match g.g[n].op.clone() {
            Op::Act(a) => activation(g, n, a),
            Op::Add => residual(g, n),
            Op::Mul => gated(g, n),
            _ => false,
        };
        fused += done as usize;
    }
    fused
}

fn rewrite(g: &mut Graph, old: NodeIndex, op: Op, operands: &[NodeIndex]) {
    let label = g.g[old].label.clone();
    let y = g.add(op, operands, &label).expect("as the parts");
    replace_uses(g, old, y);
}

fn activation(g: &mut Graph, n: NodeIndex, a: Activation) -> bool {
    let l = g.operands(n)[0];
    match linear(&g.g[l].op) {
        Some((layout, None, false)) if only_read_by(g, l, n) => {
            let op = Op::FusedLinear {
                layout,
                act: Some(a),
                residual: false,
            };
            let operands = g.operands(l);
            rewrite(g, n, op, &operands);
            true
        }
        _ => false,
    }
}

fn residual(g: &mut Graph, n: NodeIndex) -> bool {
    let ops = g.operands(n);
    for (l, r) in [(ops[0], ops[1]), (ops[1], ops[0])] {
        // Float addition commutes, so `r + linear` is the same sum.
        let Some((layout, act, false)) = linear(&g.g[l].op) else {
            continue;
        };
        if l == r || g.g[r].ty != g.g[n].ty || !only_read_by(g, l, n) {
            continue;
        }
        let mut operands = g.operands(l);
        operands.push(r);
        let op = Op::FusedLinear {
            layout,
            act,
            residual: true,
        };
        rewrite(g, n, op, &operands);
        return true;
    }
    false
}

/// `Mul(Act(SliceLast[0..F](y)), SliceLast[F..2F](y))`, either operand order.
fn gated(g: &mut Graph, n: NodeIndex) -> bool {
    let ops = g.operands(n);
    for (a, lin) in [(ops[0], ops[1]), (ops[1], ops[0])] {
        let Op::Act(act) = g.g[a].op else { continue };
        let gate = g.operands(a)[0];
        let (Op::SliceLast { start: 0, len: f }, Op::SliceLast { start, len }) =
            (&g.g[gate].op, &g.g[lin].op)
        else {
            continue;
        };
        let (f, start, len) = (*f, *start, *len);
        let y = g.operands(gate)[0];
        let whole = g.g[y].ty.last() == Some(Dim::Const(2 * f));
        if !whole
            || (start, len) != (f, f)
            || g.operands(lin)[0] != y
            || !only_read_by(g, a, n)
            || !only_read_by(g, gate, a)
            || !only_read_by(g, lin, n)
        {
            continue;
        }
        rewrite(g, n, Op::GatedAct(act), &[y]);
        return true;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    #[test]
    fn bias_activation_and_residual_go_into_the_matmul() {
        let mut g = Graph::new("t");
        let x = g.add_input("x", bt(4));
        let w1 = weight(&mut g, "w1", &[8, 4]);
        let b1 = weight(&mut g, "b1", &[8]);
        let w2 = weight(&mut g, "w2", &[4, 8]);
        let lin = Op::Linear {
            layout: WeightLayout::OutIn,
        };
        let h = g.add(lin.clone(), &[x, w1, b1], "fc1").unwrap();
        let h = g.add(Op::Act(Activation::Gelu), &[h], "act").unwrap();
        let o = g.add(lin, &[h, w2], "fc2").unwrap();
        let y = g.add(Op::Add, &[x, o], "res").unwrap();
        g.add_output("y", y);
        assert_eq!(run(&mut g), 2);
        let g = super::super::sweep(&g, 0);
        g.verify().unwrap();
        assert_eq!(ops(&g), ["linear act=gelu", "linear +residual"]);
    }

    #[test]
    fn gated_gelu_over_the_fused_halves() {
        let mut g = Graph::new("t");
        let y = g.add_input("y", bt(6));
        let a = g
            .add(Op::SliceLast { start: 0, len: 3 }, &[y], "wi_0")
            .unwrap();
        let b = g
            .add(Op::SliceLast { start: 3, len: 3 }, &[y], "wi_1")
            .unwrap();
        let a = g.add(Op::Act(Activation::GeluTanh), &[a], "act").unwrap();
        let m = g.add(Op::Mul, &[a, b], "gate").unwrap();
        g.add_output("m", m);
        assert_eq!(run(&mut g), 1);
        let g = super::super::sweep(&g, 0);
        assert_eq!(ops(&g), ["gated_gelutanh"]);
    }
}
