//! A norm of a sum becomes one op: `LayerNorm(a + b)` -> `AddLayerNorm(a, b)` and
//! `RmsNorm(a + b)` -> `AddRmsNorm(a, b)`, one pass over the rows instead of two. Only where
//! nothing else reads the sum (BERT's post-LN blocks and embeddings, T5's last block before
//! its final norm): a pre-LN residual stream (GPT-2, T5) keeps the sum for the next block,
//! and an op has one output, so those adds are left to the matmul epilogue.

use super::{only_read_by, replace_uses};
use crate::graph::{Graph, Op};

pub fn run(g: &mut Graph) -> usize {
    let mut fused = 0;
    for n in g.topo_order() {
        let fused_op = match g.g[n].op {
            Op::LayerNorm { eps } => Op::AddLayerNorm { eps },
            Op::RmsNorm { eps } => Op::AddRmsNorm { eps },
            _ => continue,
        };
        let ops = g.operands(n);
        let sum = ops[0];
        if g.g[sum].op != Op::Add || !only_read_by(g, sum, n) {
            continue;
        }
        let mut operands = g.operands(sum);
        operands.extend_from_slice(&ops[1..]);
        let label = g.g[n].label.clone();
        let y = g.add(fused_op, &operands, &label).expect("as the parts");
        replace_uses(g, n, y);
        fused += 1;
    }
    fused
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    #[test]
    fn only_a_sum_nothing_else_reads() {
        let mut g = Graph::new("t");
        let a = g.add_input("a", bt(4));
        let b = g.add_input("b", bt(4));
        let gamma = weight(&mut g, "g", &[4]);
        let beta = weight(&mut g, "b", &[4]);
        let s = g.add(Op::Add, &[a, b], "s").unwrap();
        let y = g
            .add(Op::LayerNorm { eps: 1e-5 }, &[s, gamma, beta], "ln")
            .unwrap();
        let s2 = g.add(Op::Add, &[y, b], "s2").unwrap();
        let z = g
            .add(Op::RmsNorm { eps: 1e-6 }, &[s2, gamma], "rms")
            .unwrap();
        g.add_output("y", z);
        g.add_output("s2", s2);
        assert_eq!(run(&mut g), 1);
        let g = super::super::sweep(&g, 0);
        assert_eq!(
            ops(&g),
            ["add_layer_norm eps=1e-5", "add", "rms_norm eps=1e-6"]
        );
    }
}
