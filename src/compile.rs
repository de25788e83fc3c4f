//! `cranformer compile`: a model directory in, a standalone executable out.
//!
//! The executable's runtime is a static library built with `cranformer` (see build.rs) and
//! carried inside it, so compiling needs only the system C toolchain, never the source tree.

use anyhow::{Context, Result};
use clap::Args;
use cranformer_compiler::aot::{self, ExeOptions, Progress, WeightsMode};
use cranformer_compiler::codegen::{LowerOptions, WeightFormat};
use cranformer_compiler::Model;
use cranformer_runtime::cli::Common;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Instant;

/// The runtime of compiled executables (`libcranformer_exe.a`).
static RUNTIME_LIB: &[u8] = include_bytes!(env!("CRANFORMER_EXE_LIB"));
/// The system libraries it needs, as rustc reported them.
const NATIVE_LIBS: &str = env!("CRANFORMER_EXE_NATIVE_LIBS");

#[derive(Args)]
pub struct CompileArgs {
    pub model_dir: PathBuf,
    /// The executable to write.
    #[arg(short, long)]
    pub output: PathBuf,
    /// embed: the weights go into the executable; external: it records the safetensors path.
    #[arg(long, value_enum, default_value_t = WeightsArg::Embed)]
    pub weights: WeightsArg,
    /// After compiling, print the tiling report: per kernel FLOPs, bytes, intensity, bound,
    /// chosen tiling, predicted and measured time (one run on --seq random tokens).
    #[arg(long)]
    pub report: bool,
    /// Tokens of the report's run.
    #[arg(long, default_value_t = 128, requires = "report")]
    pub seq: usize,
    /// Draw the report's roofline into this SVG file (implies --report).
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    /// Also write the Cranelift IR of every entry, annotated with the graph node each part
    /// comes from, to BIN.clif.
    #[arg(long, value_enum)]
    pub emit: Option<EmitArg>,
}

/// `--weights`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WeightsArg {
    Embed,
    External,
}

/// `--emit`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EmitArg {
    Clif,
}

pub fn run(args: &CompileArgs, common: &Common, out: &mut dyn Write) -> Result<()> {
    let started = Instant::now();
    let mut progress = Bar::new(std::io::stderr().is_terminal());
    progress.stage("loading the model", 0);
    let model = Model::load(&args.model_dir)?;
    let work = tempfile::Builder::new()
        .prefix("cranformer-compile")
        .tempdir()
        .context("creating a temporary directory")?;
    let lib = work.path().join("libcranformer_exe.a");
    std::fs::write(&lib, RUNTIME_LIB).with_context(|| format!("writing {}", lib.display()))?;
    let libs: Vec<String> = NATIVE_LIBS.split_whitespace().map(String::from).collect();
    let weights = match args.weights {
        WeightsArg::Embed => WeightsMode::Embed,
        WeightsArg::External => WeightsMode::External,
    };
    // Linking into a temporary name first: a failed link never leaves half an executable
    // where the old one was.
    let tmp_out = work.path().join("model.exe");
    let lower = LowerOptions {
        weight_format: common.weight_format().map_err(anyhow::Error::msg)?,
    };
    let opts = ExeOptions {
        output: &tmp_out,
        weights,
        runtime_lib: &lib,
        native_libs: &libs,
        work_dir: work.path(),
        lower,
    };
    aot::write_executable(&model, &opts, &mut progress)?;
    progress.stage("writing the executable", 0);
    if std::fs::rename(&tmp_out, &args.output).is_err() {
        // Another file system: copy instead.
        std::fs::copy(&tmp_out, &args.output)
            .with_context(|| format!("writing {}", args.output.display()))?;
    }
    progress.finish();
    let size = std::fs::metadata(&args.output)
        .map(|m| m.len())
        .unwrap_or(0);
    if common.verbose {
        eprintln!(
            "compiled {} in {:.1?}",
            args.model_dir.display(),
            started.elapsed()
        );
    }
    writeln!(
        out,
        "wrote {} ({:.1} MB, {} ({}), weights {}{}; tasks: {})",
        args.output.display(),
        size as f64 / 1e6,
        model.info.architecture(),
        model.info.model_type(),
        if weights == WeightsMode::Embed {
            "embedded".to_string()
        } else {
            format!("read from {}", model.dir.display())
        },
        match lower.weight_format {
            WeightFormat::F32 => String::new(),
            f => format!(", matmul weights {}", f.name()),
        },
        model.info.tasks().join(", ")
    )?;
    if args.emit == Some(EmitArg::Clif) {
        let path = PathBuf::from(format!("{}.clif", args.output.display()));
        let mut text = String::new();
        for (name, g) in model.optimized(None)? {
            text.push_str(&format!(";; entry point {name}\n"));
            text.push_str(&cranformer_compiler::codegen::emit_clif_with(&g, lower)?);
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        writeln!(out, "wrote {}", path.display())?;
    }
    if args.report || args.svg.is_some() {
        crate::bench::compile_report(&args.model_dir, args.seq, args.svg.as_deref(), out)?;
    }
    Ok(())
}

/// Progress on stderr: a bar redrawn in place on a terminal, one line per stage otherwise.
struct Bar {
    tty: bool,
    stage: String,
    total: usize,
    started: Instant,
    stage_started: Instant,
    drawn: bool,
}

impl Bar {
    fn new(tty: bool) -> Bar {
        Bar {
            tty,
            stage: String::new(),
            total: 0,
            started: Instant::now(),
            stage_started: Instant::now(),
            drawn: false,
        }
    }

    fn end_line(&mut self) {
        if self.tty && self.drawn {
            eprintln!();
            self.drawn = false;
        }
    }

    fn finish(&mut self) {
        self.end_line();
        if !self.tty {
            eprintln!("compile: done in {:.1?}", self.started.elapsed());
        }
    }
}

impl Progress for Bar {
    fn stage(&mut self, name: &str, total: usize) {
        self.end_line();
        self.stage = name.to_string();
        self.total = total;
        self.stage_started = Instant::now();
        if self.tty {
            eprint!("\r\x1b[K{name}...");
            self.drawn = true;
        } else {
            eprintln!("compile: {name}");
        }
    }

    fn step(&mut self, done: usize, what: &str) {
        if self.tty {
            const WIDTH: usize = 30;
            let filled = (done * WIDTH).checked_div(self.total).unwrap_or(WIDTH);
            eprint!(
                "\r\x1b[K{:<20} [{}{}] {done}/{} {what} ({:.1?})",
                self.stage,
                "#".repeat(filled),
                "-".repeat(WIDTH - filled),
                self.total,
                self.stage_started.elapsed()
            );
            let _ = std::io::stderr().flush();
            self.drawn = true;
        } else {
            eprintln!("compile: {} {done}/{} {what}", self.stage, self.total);
        }
    }
}
