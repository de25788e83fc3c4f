//! A model ready to run or compile: its config, what it offers, its entry-point graphs and the
//! weights they refer to.

use crate::frontend::{self, FrontendError, WeightTable};
use crate::graph::Graph;
use cranformer_runtime::config::{ConfigError, ModelConfig};
use cranformer_runtime::model_info::ModelInfo;
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
    /// Entry points by name (`encode`, `step`, ...).
    pub entries: BTreeMap<String, Graph>,
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

    pub fn entry_names(&self) -> String {
        self.entries.keys().cloned().collect::<Vec<_>>().join(", ")
    }
}
