//! Text and Graphviz renderings of a graph, for `cranformer graph` and golden tests.

use super::{Graph, Op};
use std::fmt::{self, Write};

impl fmt::Display for Graph {
    /// One line per node in topological order: `%id = op(operands) : type  # label`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ins: Vec<String> = self
            .inputs
            .iter()
            .map(|(n, i)| format!("{n}: {}", self.g[*i].ty))
            .collect();
        writeln!(f, "graph {}({}) {{", self.name, ins.join(", "))?;
        for n in self.topo_order() {
            let node = &self.g[n];
            let args: Vec<String> = self
                .operands(n)
                .iter()
                .map(|o| format!("%{}", o.index()))
                .collect();
            let head = match &node.op {
                Op::Input { .. } | Op::Weight { .. } => node.op.to_string(),
                op => format!("{op}({})", args.join(", ")),
            };
            let label = match &node.op {
                Op::Input { .. } | Op::Weight { .. } => String::new(),
                _ => format!("  # {}", node.label),
            };
            writeln!(f, "  %{} = {head} : {}{label}", n.index(), node.ty)?;
        }
        for (name, n) in &self.outputs {
            writeln!(f, "  output {name} = %{}", n.index())?;
        }
        writeln!(f, "}}")
    }
}

impl Graph {
    /// Graphviz DOT: weights as grey boxes, inputs and outputs as ellipses.
    pub fn to_dot(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "digraph \"{}\" {{\n  rankdir=TB;\n  node [fontname=\"monospace\", fontsize=10];",
            self.name
        );
        for n in self.g.node_indices() {
            let node = &self.g[n];
            let (shape, style) = match node.op {
                Op::Input { .. } => ("ellipse", ""),
                Op::Weight { .. } => ("box", ", style=filled, fillcolor=\"#e8e8e8\""),
                _ => ("box", ", style=rounded"),
            };
            let text = format!("{}\\n{}\\n{}", node.op, node.label, node.ty).replace('"', "\\\"");
            let _ = writeln!(
                s,
                "  n{} [shape={shape}, label=\"{text}\"{style}];",
                n.index()
            );
        }
        for e in self.g.edge_indices() {
            let (a, b) = self.g.edge_endpoints(e).unwrap();
            let _ = writeln!(
                s,
                "  n{} -> n{} [label=\"{}\"];",
                a.index(),
                b.index(),
                self.g[e]
            );
        }
        for (name, n) in &self.outputs {
            let _ = writeln!(
                s,
                "  \"out_{name}\" [shape=ellipse, label=\"{name}\"];\n  n{} -> \"out_{name}\";",
                n.index()
            );
        }
        s.push_str("}\n");
        s
    }
}
