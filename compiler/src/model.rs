//! A model ready to run or compile: its config, what it offers, its entry-point graphs and the
//! weights they refer to.

use crate::frontend::{self, FrontendError, WeightTable};
use crate::graph::Graph;
use crate::passes::{self, PassError};
use cranformer_runtime::config::{ConfigError, ModelConfig};
use cranformer_runtime::model_info::ModelInfo;
use cranformer_runtime::native::WeightSource;
use cranformer_runtime::weights::F32Buffer;
use cranformer_runtime::weights::Weights;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Errors loading a model directory.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Frontend(#[from] FrontendError),
    #[error(transparent)]
    Weights(#[from] cranformer_runtime::weights::WeightsError),
}

pub struct Model {
    pub dir: PathBuf,
    pub config: ModelConfig,
    pub info: ModelInfo,
    /// Entry points by name (`encode`, `step`, ...), as the frontends built them. The
    /// interpreter, the oracle, runs these; the compiled engines run them through the pass
    /// pipeline first ([`Model::optimized`]).
    pub entries: BTreeMap<String, Graph>,
    /// Checkpoint tensors by key; derived weights (`concat(..)`) are built on demand by
    /// [`Model::weight`].
    pub weights: WeightTable,
}

impl Model {
    /// Reads config.json, opens the weights and builds every entry point, checking every
    /// tensor the graphs use against the config.
    pub fn load(dir: &Path) -> Result<Model, LoadError> {
        let config = ModelConfig::load(dir)?;
        let weights = Weights::open(dir)?;
        Model::from_parts(dir, config, &weights)
    }

    pub fn from_parts(
        dir: &Path,
        config: ModelConfig,
        weights: &Weights,
    ) -> Result<Model, LoadError> {
        let mut table = WeightTable::new();
        let (info, graphs) = match &config {
            ModelConfig::Bert(c) => frontend::bert::build(c, dir, weights, &mut table)?,
            ModelConfig::Gpt2(c) => frontend::gpt2::build(c, dir, weights, &mut table)?,
            ModelConfig::T5(c) => frontend::t5::build(c, dir, weights, &mut table)?,
        };
        let entries = graphs.into_iter().map(|g| (g.name.clone(), g)).collect();
        Ok(Model {
            dir: dir.to_path_buf(),
            config,
            info,
            entries,
            weights: table,
        })
    }

    /// The weight `key`: a checkpoint tensor, or one derived from several by a pass
    /// ([`WeightSource`]).
    pub fn weight(&self, key: &str) -> Option<F32Buffer> {
        WeightSource::parse(key).resolve(&|k| self.weights.get(k).cloned())
    }

    /// Every entry point through the pass pipeline, up to and including `stop_after`
    /// (all of it when `None`): what the JIT and AOT engines compile.
    pub fn optimized(
        &self,
        stop_after: Option<&str>,
    ) -> Result<BTreeMap<String, Graph>, PassError> {
        self.entries
            .iter()
            .map(|(name, g)| {
                Ok((
                    name.clone(),
                    passes::optimize(g, &self.weights, stop_after)?,
                ))
            })
            .collect()
    }

    pub fn entry_names(&self) -> String {
        self.entries.keys().cloned().collect::<Vec<_>>().join(", ")
    }
}
