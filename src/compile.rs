//! `cranformer compile`: a model directory in, a standalone executable out.

use anyhow::{bail, Result};
use clap::Args;
use cranformer_runtime::cli::Common;
use std::io::Write;
use std::path::PathBuf;

#[derive(Args)]
pub struct CompileArgs {
    pub model_dir: PathBuf,
    /// The executable to write.
    #[arg(short, long)]
    pub output: PathBuf,
    /// embed: the weights go into the executable; external: it records the safetensors path.
    #[arg(long, default_value = "embed", value_parser = ["embed", "external"])]
    pub weights: String,
}

pub fn run(_args: &CompileArgs, _common: &Common, _out: &mut dyn Write) -> Result<()> {
    bail!("compile is not implemented yet")
}
