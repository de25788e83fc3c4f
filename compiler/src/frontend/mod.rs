//! Frontends: one file per architecture turns config.json and a checkpoint into entry-point
//! graphs. Every weight is resolved and checked against the config here, before anything runs.

pub mod bert;
pub mod gpt2;
pub mod t5;

use crate::graph::{Activation, Dim, Graph, GraphError, Op, TensorType, WeightLayout};
use cranformer_runtime::weights::{F32Buffer, Weights, WeightsError};
use petgraph::graph::NodeIndex;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

/// Errors turning a model directory into graphs.
#[derive(Debug, thiserror::Error)]
pub enum FrontendError {
    /// A weight is missing, mis-shaped, or of an unsupported dtype.
    #[error(transparent)]
    Weights(#[from] WeightsError),
    /// The config asks for something cranformer does not support, or contradicts itself.
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    /// The graph did not type-check: always a compiler bug.
    #[error("compiler bug: {0}")]
    Graph(#[from] GraphError),
}

/// The weights every entry point of one model refers to, by resolved key.
pub type WeightTable = BTreeMap<String, F32Buffer>;

/// Builds one entry-point graph, loading and checking each weight the first time it is used.
pub struct Builder<'a> {
    pub graph: Graph,
    weights: &'a Weights,
    table: &'a mut WeightTable,
    nodes: HashMap<String, NodeIndex>,
}

impl<'a> Builder<'a> {
    pub fn new(name: &str, weights: &'a Weights, table: &'a mut WeightTable) -> Builder<'a> {
        Builder {
            graph: Graph::new(name),
            weights,
            table,
            nodes: HashMap::new(),
        }
    }

    pub fn finish(self) -> Graph {
        self.graph
    }

    pub fn input(&mut self, name: &str, ty: TensorType) -> NodeIndex {
        self.graph.add_input(name, ty)
    }

    pub fn output(&mut self, name: &str, n: NodeIndex) {
        self.graph.add_output(name, n)
    }

    pub fn has(&self, key: &str) -> bool {
        self.weights.contains(key)
    }

    /// The weight `key`, which must have `shape`.
    pub fn weight(&mut self, key: &str, shape: &[usize]) -> Result<NodeIndex, FrontendError> {
        if let Some(&n) = self.nodes.get(key) {
            return Ok(n);
        }
        if !self.table.contains_key(key) {
            let data = self.weights.get(key, shape)?;
            self.table.insert(key.to_string(), data);
        }
        let ty = TensorType::f32(&shape.iter().map(|&d| Dim::Const(d)).collect::<Vec<_>>());
        let n = self.graph.g.add_node(crate::graph::Node {
            op: Op::Weight { key: key.into() },
            ty,
            label: key.into(),
        });
        self.nodes.insert(key.into(), n);
        Ok(n)
    }

    pub fn op(
        &mut self,
        op: Op,
        operands: &[NodeIndex],
        label: &str,
    ) -> Result<NodeIndex, FrontendError> {
        Ok(self.graph.add(op, operands, label)?)
    }

    /// `{prefix}.weight` (and `{prefix}.bias` when `bias`) applied to `x`.
    pub fn linear(
        &mut self,
        x: NodeIndex,
        prefix: &str,
        k: usize,
        n: usize,
        layout: WeightLayout,
        bias: bool,
    ) -> Result<NodeIndex, FrontendError> {
        let shape = match layout {
            WeightLayout::OutIn => [n, k],
            WeightLayout::InOut => [k, n],
        };
        let w = self.weight(&format!("{prefix}.weight"), &shape)?;
        let mut operands = vec![x, w];
        if bias {
            operands.push(self.weight(&format!("{prefix}.bias"), &[n])?);
        }
        self.op(Op::Linear { layout }, &operands, prefix)
    }

    pub fn add(
        &mut self,
        a: NodeIndex,
        b: NodeIndex,
        label: &str,
    ) -> Result<NodeIndex, FrontendError> {
        self.op(Op::Add, &[a, b], label)
    }

    pub fn act(
        &mut self,
        x: NodeIndex,
        a: Activation,
        label: &str,
    ) -> Result<NodeIndex, FrontendError> {
        self.op(Op::Act(a), &[x], label)
    }
}

/// The activation named `name` in `path`'s field `field`, or a config error listing the supported ones.
pub fn activation(
    name: &str,
    path: &std::path::Path,
    field: &str,
) -> Result<Activation, FrontendError> {
    Activation::from_hf(name).ok_or_else(|| FrontendError::Config {
        path: path.to_path_buf(),
        message: format!(
            "{field} {name:?} is not supported (supported: {})",
            Activation::SUPPORTED
        ),
    })
}

/// Fails when the checkpoint holds layer `count` (keys under `{layers}{count}.`) although the
/// config's `field` says there are `count` layers: running only the first ones would give a
/// silently wrong model. Too few layers in the checkpoint show up as a missing key instead.
pub fn check_layer_count(
    weights: &Weights,
    layers: &str,
    count: usize,
    path: &std::path::Path,
    field: &str,
) -> Result<(), FrontendError> {
    let extra = format!("{layers}{count}.");
    match weights.keys().into_iter().find(|k| k.starts_with(&extra)) {
        Some(key) => Err(FrontendError::Config {
            path: path.to_path_buf(),
            message: format!(
                "{field} is {count}, but {} has more layers (\"{key}\"): the config and the \
                 weights disagree",
                weights.source()
            ),
        }),
        None => Ok(()),
    }
}

/// Which of `candidates` prefixes the checkpoint uses, judged by `probe` (a key every such
/// checkpoint has); a missing probe key is reported under its first spelling.
pub fn detect_prefix<'p>(
    weights: &Weights,
    candidates: &[&'p str],
    probe: &str,
) -> Result<&'p str, FrontendError> {
    for p in candidates {
        if weights.contains(&format!("{p}{probe}")) {
            return Ok(p);
        }
    }
    // Let the weight store phrase the error: it names the file and suggests near keys.
    let key = format!("{}{probe}", candidates[0]);
    weights.get(&key, &[])?;
    Err(FrontendError::Config {
        path: weights.source().into(),
        message: format!("cannot find {key}"),
    })
}
