//! The dataflow graph every stage works on: frontends build it, passes rewrite it, the
//! interpreter runs it and code generation lowers it.
//!
//! A node is one op with one typed output; an edge carries that output to a consumer, its
//! weight being the consumer's input slot. Shapes are symbolic in the batch and sequence
//! dims so one graph serves every input size.

mod cost;
mod infer;
mod kv;
mod op;
mod print;

pub use cost::{graph_cost, graph_cost_as, node_cost, node_cost_as, node_costs, Cost};
pub use kv::{in_place_appends, read_only_by_attention};
// Shapes and element types are the runtime's, shared with generated code and its host.
pub use cranformer_runtime::shape::{DType, Dim, Dims, Shape, TensorType};
pub use op::{Activation, EwStep, Op, WeightLayout};

use cranformer_runtime::Tensor;

use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::EdgeRef;
use petgraph::Direction;

/// One op and the type of its output.
#[derive(Clone, Debug)]
pub struct Node {
    pub op: Op,
    pub ty: TensorType,
    /// Where the node comes from in the model, e.g. `h.3.attn.c_attn`: shown in dumps and errors.
    pub label: String,
}

/// Errors building or checking a graph. Apart from `Input` (a caller's tensors do not fit the
/// entry point), every variant means the compiler built something inconsistent: a bug.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    /// An op was given inputs whose types it cannot take (compiler bug).
    #[error("graph {graph}: node {label} ({op}): {message}")]
    Type {
        graph: String,
        label: String,
        op: String,
        message: String,
    },
    /// The caller's input tensors do not match the entry point's signature.
    #[error("input {name}: {message}")]
    Input { name: String, message: String },
}

/// A dataflow graph with named inputs and outputs: one entry point of a model.
#[derive(Clone, Debug)]
pub struct Graph {
    pub name: String,
    pub g: DiGraph<Node, usize>,
    pub inputs: Vec<(String, NodeIndex)>,
    pub outputs: Vec<(String, NodeIndex)>,
}

impl Graph {
    pub fn new(name: &str) -> Graph {
        Graph {
            name: name.into(),
            g: DiGraph::new(),
            inputs: vec![],
            outputs: vec![],
        }
    }

    /// The node's operands in slot order.
    pub fn operands(&self, n: NodeIndex) -> Vec<NodeIndex> {
        let mut edges: Vec<(usize, NodeIndex)> = self
            .g
            .edges_directed(n, Direction::Incoming)
            .map(|e| (*e.weight(), e.source()))
            .collect();
        edges.sort_unstable();
        edges.into_iter().map(|(_, s)| s).collect()
    }

    pub fn node(&self, n: NodeIndex) -> &Node {
        &self.g[n]
    }

    /// Adds a graph input.
    pub fn add_input(&mut self, name: &str, ty: TensorType) -> NodeIndex {
        let n = self.g.add_node(Node {
            op: Op::Input { name: name.into() },
            ty,
            label: name.into(),
        });
        self.inputs.push((name.into(), n));
        n
    }

    /// Adds an op over `operands`, inferring and checking its output type.
    pub fn add(
        &mut self,
        op: Op,
        operands: &[NodeIndex],
        label: &str,
    ) -> Result<NodeIndex, GraphError> {
        let types: Vec<&TensorType> = operands.iter().map(|&o| &self.g[o].ty).collect();
        let ty = infer::infer(&op, &types).map_err(|message| GraphError::Type {
            graph: self.name.clone(),
            label: label.into(),
            op: op.to_string(),
            message,
        })?;
        let n = self.g.add_node(Node {
            op,
            ty,
            label: label.into(),
        });
        for (slot, &o) in operands.iter().enumerate() {
            self.g.add_edge(o, n, slot);
        }
        Ok(n)
    }

    pub fn add_output(&mut self, name: &str, n: NodeIndex) {
        self.outputs.push((name.into(), n));
    }

    pub fn input_type(&self, name: &str) -> Option<&TensorType> {
        self.inputs
            .iter()
            .find(|(n, _)| n == name)
            .map(|&(_, i)| &self.g[i].ty)
    }

    /// Nodes in an order where every operand comes before its users; among ready nodes the
    /// oldest goes first, so the order follows construction and dumps read like the model.
    pub fn topo_order(&self) -> Vec<NodeIndex> {
        use std::cmp::Reverse;
        let mut pending: Vec<usize> = self
            .g
            .node_indices()
            .map(|n| self.g.edges_directed(n, Direction::Incoming).count())
            .collect();
        let mut ready: std::collections::BinaryHeap<Reverse<usize>> = pending
            .iter()
            .enumerate()
            .filter(|(_, &p)| p == 0)
            .map(|(i, _)| Reverse(i))
            .collect();
        let mut order = Vec::with_capacity(pending.len());
        while let Some(Reverse(i)) = ready.pop() {
            let n = NodeIndex::new(i);
            order.push(n);
            for e in self.g.edges_directed(n, Direction::Outgoing) {
                let t = e.target().index();
                pending[t] -= 1;
                if pending[t] == 0 {
                    ready.push(Reverse(t));
                }
            }
        }
        assert_eq!(
            order.len(),
            self.g.node_count(),
            "graph {}: a dataflow graph has no cycles",
            self.name
        );
        order
    }

    /// Re-infers every node's type from its operands: the verifier run after each pass.
    pub fn verify(&self) -> Result<(), GraphError> {
        for n in self.topo_order() {
            let node = &self.g[n];
            let ops = self.operands(n);
            let types: Vec<&TensorType> = ops.iter().map(|&o| &self.g[o].ty).collect();
            if matches!(node.op, Op::Input { .. } | Op::Weight { .. }) {
                continue;
            }
            let ty = infer::infer(&node.op, &types).map_err(|message| GraphError::Type {
                graph: self.name.clone(),
                label: node.label.clone(),
                op: node.op.to_string(),
                message,
            })?;
            if ty != node.ty {
                return Err(GraphError::Type {
                    graph: self.name.clone(),
                    label: node.label.clone(),
                    op: node.op.to_string(),
                    message: format!("recorded type {} but operands give {}", node.ty, ty),
                });
            }
        }
        Ok(())
    }

    /// Binds the symbolic dims from the shapes of the caller's inputs, checking every one.
    pub fn bind_dims(&self, given: &[(&str, &Tensor)]) -> Result<Dims, GraphError> {
        let sigs: Vec<(&str, &TensorType)> = self
            .inputs
            .iter()
            .map(|(n, node)| (n.as_str(), &self.g[*node].ty))
            .collect();
        cranformer_runtime::shape::bind(&self.name, &sigs, given).map_err(|e| GraphError::Input {
            name: e.input,
            message: e.message,
        })
    }
}
