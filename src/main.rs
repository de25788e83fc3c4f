//! `cranformer`: compile and run transformer models from Hugging Face model directories.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
mod bench;
mod compile;
mod presets;
mod roofline;

use cranformer_compiler::codegen::{self, LowerOptions, WeightFormat};
use cranformer_compiler::interp::Interpreter;
use cranformer_compiler::jit::JitEngine;
use cranformer_compiler::Model;
use cranformer_runtime::cli::{
    ClassifyArgs, Common, EmbedArgs, EngineKind, FillMaskArgs, ForwardArgs, GenerateArgs,
    RerankArgs, ServeArgs, Task, TokenizeArgs,
};
use cranformer_runtime::tasks::{self, Session};
use cranformer_runtime::tokenize::Tokenizer;
use cranformer_runtime::{Engine, ModelConfig};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "cranformer",
    version,
    about = "Compile and run BERT, GPT-2 and T5 models from Hugging Face model directories"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    common: Common,
}

#[derive(Subcommand)]
enum Command {
    /// Print the token ids and tokens of a text.
    Tokenize {
        model_dir: PathBuf,
        #[command(flatten)]
        args: TokenizeArgs,
    },
    /// Run the model on token ids from a JSON file and write its output tensors (safetensors).
    Forward {
        model_dir: PathBuf,
        #[command(flatten)]
        args: ForwardArgs,
    },
    /// Sentence embeddings (BERT).
    Embed {
        model_dir: PathBuf,
        #[command(flatten)]
        args: EmbedArgs,
    },
    /// Predict the masked token (BERT with a masked-LM head).
    FillMask {
        model_dir: PathBuf,
        #[command(flatten)]
        args: FillMaskArgs,
    },
    /// Classify texts or sentence pairs (BERT with a sequence-classification or
    /// next-sentence head).
    Classify {
        model_dir: PathBuf,
        #[command(flatten)]
        args: ClassifyArgs,
    },
    /// Rank documents by relevance to a query (cross-encoder: BERT classifier with one label).
    Rerank {
        model_dir: PathBuf,
        #[command(flatten)]
        args: RerankArgs,
    },
    /// Generate text (GPT-2, T5).
    Generate {
        model_dir: PathBuf,
        #[command(flatten)]
        args: GenerateArgs,
    },
    /// Serve the model over HTTP (OpenAI, Hugging Face TEI and KServe v2 routes), batching
    /// concurrent requests.
    Serve {
        model_dir: PathBuf,
        #[command(flatten)]
        args: ServeArgs,
    },
    /// Print the model's dataflow graphs (text, Graphviz DOT, or the Cranelift IR they lower to).
    Graph {
        model_dir: PathBuf,
        /// Graphviz DOT instead of text (same as --emit dot).
        #[arg(long)]
        dot: bool,
        /// What to print: graph (default), dot, or clif (Cranelift IR, annotated with graph nodes).
        #[arg(long, value_enum)]
        emit: Option<Emit>,
        /// Only this entry point (e.g. encode, step).
        #[arg(long)]
        entry: Option<String>,
        /// The graph after this pass (fuse_qkv, fuse_add_norm, fuse_epilogue, fuse_elementwise,
        /// or all: what the JIT and compiled executables run); without it, the graph as the
        /// frontend built it, which the interpreter runs. --emit clif defaults to all.
        #[arg(long, value_name = "PASS")]
        after: Option<String>,
    },
    /// Compile a model into a standalone executable.
    Compile(compile::CompileArgs),
    /// Benchmark engines side by side on a model or a standard size with random weights.
    Bench(bench::BenchArgs),
    /// Measure this machine's FMA peaks and memory bandwidths (cached; --refresh remeasures).
    Roofline(roofline::RooflineArgs),
}

/// The engine named by `--engine`, its matmul weights in `dtype` (the interpreter, the f32
/// reference, refuses anything else).
pub fn engine_for(
    kind: EngineKind,
    dtype: WeightFormat,
    model: Arc<Model>,
    verbose: bool,
) -> Result<Box<dyn Engine>> {
    Common::check_engine_dtype(kind, dtype).map_err(anyhow::Error::msg)?;
    Ok(match kind {
        EngineKind::Interp => Box::new(Interpreter::new(model)),
        EngineKind::Jit => {
            let options = LowerOptions {
                weight_format: dtype,
            };
            let e =
                JitEngine::with_options(model, None, options).context("JIT compilation failed")?;
            if verbose {
                eprintln!(
                    "jit: compiled in {:.1?}, weights laid out in {:.1?} ({} matmul weights)",
                    e.compile_time(),
                    e.prepare_time(),
                    dtype.name()
                );
            }
            Box::new(e)
        }
        EngineKind::Aot => bail!(
            "--engine aot runs in compiled executables (`cranformer compile`) and in `cranformer \
             bench`; the tasks here run jit or interp"
        ),
    })
}

fn run_task(dir: &Path, task: Task, common: &Common, out: &mut dyn Write) -> Result<()> {
    let started = std::time::Instant::now();
    let config = ModelConfig::load(dir)?;
    let tokenizer = Tokenizer::from_model_dir(dir, config.tokenizer_kind())?;
    if tasks::run_without_weights(&task, &tokenizer, out)? {
        return Ok(());
    }
    let kind = common.engine().map_err(anyhow::Error::msg)?;
    let dtype = common.weight_format().map_err(anyhow::Error::msg)?;
    Common::check_engine_dtype(kind, dtype).map_err(anyhow::Error::msg)?;
    let model = Arc::new(Model::load(dir)?);
    let info = model.info.clone();
    let engine = engine_for(kind, dtype, model, common.verbose)?;
    if common.verbose {
        eprintln!(
            "loaded {} ({}) with engine {} in {:.1?}",
            dir.display(),
            info.architecture(),
            engine.name(),
            started.elapsed()
        );
    }
    let mut session = Session {
        info,
        tokenizer,
        engine,
    };
    let t = std::time::Instant::now();
    session.run(&task, out)?;
    if common.verbose {
        eprintln!("{} took {:.1?}", task.name(), t.elapsed());
    }
    Ok(())
}

/// `serve`: the model is loaded here; its engine is compiled on the server's engine thread.
fn serve(dir: &Path, args: &ServeArgs, common: &Common) -> Result<()> {
    let config = ModelConfig::load(dir)?;
    let tokenizer = Tokenizer::from_model_dir(dir, config.tokenizer_kind())?;
    let model = Arc::new(Model::load(dir)?);
    let info = model.info.clone();
    let (kind, verbose) = (common.engine().map_err(anyhow::Error::msg)?, common.verbose);
    let dtype = common.weight_format().map_err(anyhow::Error::msg)?;
    Common::check_engine_dtype(kind, dtype).map_err(anyhow::Error::msg)?;
    cranformer_serve::run(
        args,
        cranformer_serve::ServedModel {
            info,
            tokenizer,
            engine: Box::new(move || engine_for(kind, dtype, model, verbose)),
        },
    )
}

/// What `graph --emit` prints.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Emit {
    Graph,
    Dot,
    Clif,
}

fn graph(
    dir: &Path,
    options: LowerOptions,
    emit: Emit,
    entry: Option<&str>,
    after: Option<&str>,
    out: &mut dyn Write,
) -> Result<()> {
    let model = Model::load(dir)?;
    if let Some(e) = entry {
        if !model.entries.contains_key(e) {
            bail!(
                "this model has no entry point {e:?} (it has {})",
                model.entry_names()
            );
        }
    }
    // Code is only ever generated for optimised graphs.
    let after = after.or((emit == Emit::Clif).then_some("all"));
    let graphs = match after {
        Some(pass) => model.optimized(Some(pass))?,
        None => model.entries.clone(),
    };
    for (name, g) in &graphs {
        if entry.is_some_and(|e| e != name) {
            continue;
        }
        match emit {
            Emit::Dot => write!(out, "{}", g.to_dot())?,
            Emit::Clif => write!(out, "{}", codegen::emit_clif_with(g, options)?)?,
            Emit::Graph => writeln!(out, "{g}")?,
        }
    }
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    // bench compares several; everything else runs one.
    if !matches!(cli.command, Command::Bench(_)) {
        if let Err(e) = cli.common.weight_format() {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
    if let Some(n) = cli.common.threads {
        cranformer_runtime::threads::set_threads(n);
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let result = match cli.command {
        Command::Tokenize { model_dir, args } => {
            run_task(&model_dir, Task::Tokenize(args), &cli.common, &mut out)
        }
        Command::Forward { model_dir, args } => {
            run_task(&model_dir, Task::Forward(args), &cli.common, &mut out)
        }
        Command::Embed { model_dir, args } => {
            run_task(&model_dir, Task::Embed(args), &cli.common, &mut out)
        }
        Command::FillMask { model_dir, args } => {
            run_task(&model_dir, Task::FillMask(args), &cli.common, &mut out)
        }
        Command::Classify { model_dir, args } => {
            run_task(&model_dir, Task::Classify(args), &cli.common, &mut out)
        }
        Command::Rerank { model_dir, args } => {
            run_task(&model_dir, Task::Rerank(args), &cli.common, &mut out)
        }
        Command::Generate { model_dir, args } => {
            run_task(&model_dir, Task::Generate(args), &cli.common, &mut out)
        }
        Command::Serve { model_dir, args } => serve(&model_dir, &args, &cli.common),
        Command::Graph {
            model_dir,
            dot,
            emit,
            entry,
            after,
        } => {
            let emit = emit.unwrap_or(if dot { Emit::Dot } else { Emit::Graph });
            let options = LowerOptions {
                weight_format: cli.common.weight_format().unwrap_or(WeightFormat::F32),
            };
            graph(
                &model_dir,
                options,
                emit,
                entry.as_deref(),
                after.as_deref(),
                &mut out,
            )
        }
        Command::Compile(args) => compile::run(&args, &cli.common, &mut out),
        Command::Bench(args) => bench::run(&args, &cli.common, &mut out),
        Command::Roofline(args) => roofline::run(&args, &mut out),
    };
    if let Err(e) = result {
        std::process::exit(cranformer_runtime::cli::report_error(&e, &mut out));
    }
}
