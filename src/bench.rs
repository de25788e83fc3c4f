//! `cranformer bench`: engines side by side on one model, interleaved, in one process.

use anyhow::{bail, Result};
use clap::Args;
use cranformer_runtime::cli::Common;
use std::io::Write;
use std::path::PathBuf;

#[derive(Args)]
pub struct BenchArgs {
    /// Model directory (or use --preset).
    pub model_dir: Option<PathBuf>,
}

pub fn run(_args: &BenchArgs, _common: &Common, _out: &mut dyn Write) -> Result<()> {
    bail!("bench is not implemented yet")
}
