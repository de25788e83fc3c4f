//! `cranformer bench`: engines side by side on one model, interleaved, in one process.
//!
//! Each engine is built once (build time reported apart), warmed up, then the timed runs go
//! round-robin engine by engine, so that noise from the machine falls on all of them alike.
//! FLOPs come from the graphs (`graph::cost`) for the exact calls a run makes, so GFLOP/s
//! is the same work divided by each engine's time.
//!
//! Workloads (B `--batch`, T `--seq`, N `--prompt-tokens`, M `--new-tokens`; random ids):
//! - forward, BERT: one `encode` of [B, T] tokens.
//! - forward, GPT-2: one `forward` of [B, T] tokens (logits at every position, no cache).
//! - forward, T5: `encode` of [B, T] tokens, `cross_kv`, then one `decode` of T decoder tokens.
//! - generate, GPT-2: prefill = one `step` over the N prompt tokens; then M `step`s of one
//!   token each, feeding back the greedy pick; `ms_per_new_token` = time of those M steps / M;
//!   `decode_weight_mb_per_token` = the weight bytes one such step reads (in the run's
//!   `--dtype`), `decode_weight_gbs` = those of the M steps over their time; with `--dram`,
//!   each timed run's against DRAM's read right before and after it (`report::DramShare`).
//! - generate, T5: prefill = `encode` of N tokens and `cross_kv`; then M `step`s from the
//!   decoder start token, as above. End-of-sequence picks do not stop a run: every run does
//!   the same work.

mod report;
mod workload;

use crate::presets;
use anyhow::{bail, Context, Result};
use clap::Args;
use cranformer_compiler::aot::SharedObjectEngine;
use cranformer_compiler::codegen::{LowerOptions, WeightFormat};
use cranformer_compiler::graph::{graph_cost, graph_cost_as, node_costs, Cost, Op};
use cranformer_compiler::interp::Interpreter;
use cranformer_compiler::jit::JitEngine;
use cranformer_compiler::Model;
use cranformer_runtime::cli::{Common, EngineKind};
use cranformer_runtime::{Engine, ModelInfo};
use report::{tiling_report, Report, Sample};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use workload::{random_ids, Trace, Work};

fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("expected a whole number: {e}")),
    }
}

#[derive(Args)]
#[command(
    after_help = "Engines: --engine takes a comma-separated list (interp, jit, aot); \
                        without it bench runs interp,jit. Timed runs go round-robin across \
                        the engines after the warm-up."
)]
pub struct BenchArgs {
    /// Model directory (or use --preset).
    #[arg(required_unless_present = "preset")]
    pub model_dir: Option<PathBuf>,
    /// A standard size with random weights instead of a directory: bert-base, bert-large, gpt2,
    /// gpt2-medium, gpt2-large, gpt2-xl, t5-small, t5-base.
    #[arg(long, conflicts_with = "model_dir")]
    pub preset: Option<String>,
    /// Only with --preset: write the preset as a model directory (config.json and random
    /// weights in model.safetensors) to DIR and exit, e.g. to `serve` it after adding a
    /// tokenizer.
    #[arg(long, requires = "preset", value_name = "DIR")]
    pub save: Option<PathBuf>,
    /// Only with --preset: this many layers (in each T5 stack) instead of the standard count.
    #[arg(long, requires = "preset", value_parser = at_least_one)]
    pub layers: Option<usize>,
    /// forward: one pass over --seq tokens; generate: prefill --prompt-tokens, then
    /// --new-tokens single-token steps (GPT-2, T5).
    #[arg(long, value_enum, default_value_t = Task::Forward)]
    pub task: Task,
    /// Tokens per sequence for --task forward (T5: encoder and decoder tokens each).
    #[arg(long, default_value_t = 128, value_parser = at_least_one)]
    pub seq: usize,
    /// Sequences per call.
    #[arg(long, default_value_t = 1, value_parser = at_least_one)]
    pub batch: usize,
    /// Prompt length for --task generate.
    #[arg(long, default_value_t = 32, value_parser = at_least_one)]
    pub prompt_tokens: usize,
    /// Decode steps for --task generate.
    #[arg(long, default_value_t = 32, value_parser = at_least_one)]
    pub new_tokens: usize,
    /// Timed runs per engine.
    #[arg(long, default_value_t = 5, value_parser = at_least_one)]
    pub runs: usize,
    /// Untimed runs per engine before the timed ones.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Seed of the random token ids (and of a preset's weights).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// One JSON object per line per engine: engine, task, median_ms, min_ms, runs, gflops
    /// (and ms_per_new_token for generate), plus details.
    #[arg(long)]
    pub json: bool,
    /// Print the tiling report: per kernel FLOPs, bytes, bound, chosen tiling, predicted and
    /// measured time (matmuls timed inside one extra JIT run), share of the roof.
    #[arg(long)]
    pub report: bool,
    /// With --task generate: measure DRAM's read bandwidth on the run's threads (as `roofline`
    /// does) right before and after every timed run of a compiled engine, and report each
    /// decode's weight stream against the higher of its two reads (`decode_dram_share`).
    #[arg(long)]
    pub dram: bool,
    /// Draw the report's roofline into this SVG file (implies --report).
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
}

/// The engines `--engine` lists; without it bench compares the interpreter and the JIT
/// (the tasks' default, jit alone, would compare nothing).
fn engines(common: &Common) -> Vec<EngineKind> {
    common
        .engine
        .as_ref()
        .map_or(vec![EngineKind::Interp, EngineKind::Jit], |l| l.0.clone())
}

/// How long building an engine took.
struct Build {
    total: Duration,
    /// Code generation, when the engine generates code.
    compile: Option<Duration>,
    /// Linking and loading a shared object (aot).
    link: Option<Duration>,
    /// Laying out weights for the kernels.
    prepare: Option<Duration>,
}

fn build_engine(
    kind: EngineKind,
    dtype: WeightFormat,
    model: Arc<Model>,
) -> Result<(Box<dyn Engine>, Build)> {
    let start = Instant::now();
    let mut link = None;
    let options = LowerOptions {
        weight_format: dtype,
    };
    let (engine, compile, prepare): (Box<dyn Engine>, _, _) = match kind {
        EngineKind::Interp => (Box::new(Interpreter::new(model)), None, None),
        EngineKind::Jit => {
            let e =
                JitEngine::with_options(model, None, options).context("JIT compilation failed")?;
            let (c, p) = (e.compile_time(), e.prepare_time());
            (Box::new(e), Some(c), Some(p))
        }
        EngineKind::Aot => {
            let e = SharedObjectEngine::with_options(model, options)
                .context("building the shared object for --engine aot failed")?;
            let (c, l, p) = (e.compile_time(), e.link_time(), e.prepare_time());
            link = Some(l);
            (Box::new(e), Some(c), Some(p))
        }
    };
    let build = Build {
        total: start.elapsed(),
        compile,
        link,
        prepare,
    };
    Ok((engine, build))
}

/// `--task`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Task {
    Forward,
    Generate,
}

impl Task {
    fn name(self) -> &'static str {
        match self {
            Task::Forward => "forward",
            Task::Generate => "generate",
        }
    }
}

pub fn run(args: &BenchArgs, common: &Common, out: &mut dyn Write) -> Result<()> {
    if let (Some(dir), Some(preset)) = (&args.save, &args.preset) {
        presets::save(preset, args.layers, args.seed, dir)?;
        writeln!(out, "wrote preset {preset} to {}", dir.display())?;
        return Ok(());
    }
    // Every engine with every --dtype, except the interpreter (the f32 reference) with a
    // narrow one.
    let dtypes = common.weight_formats();
    let mut runs = vec![];
    for kind in engines(common) {
        for &d in &dtypes {
            if Common::check_engine_dtype(kind, d).is_ok() {
                runs.push((kind, d));
            } else if common.verbose {
                eprintln!("bench: interp runs f32 only; not with --dtype {}", d.name());
            }
        }
    }
    if runs.is_empty() {
        let d = dtypes[0];
        Common::check_engine_dtype(EngineKind::Interp, d).map_err(anyhow::Error::msg)?;
    }
    run_engines(args, runs, common.verbose, out)
}

/// The tiling report of `cranformer compile --report`: one JIT run of the model's main
/// entry on `seq` random tokens with every matmul timed, no comparison.
pub fn compile_report(
    model_dir: &std::path::Path,
    seq: usize,
    svg: Option<&std::path::Path>,
    out: &mut dyn Write,
) -> Result<()> {
    #[derive(clap::Parser)]
    struct Wrap {
        #[command(flatten)]
        bench: BenchArgs,
    }
    let mut argv: Vec<std::ffi::OsString> =
        vec!["bench".into(), model_dir.into(), "--report".into()];
    for a in ["--runs", "1", "--warmup", "0", "--seq"] {
        argv.push(a.into());
    }
    argv.push(seq.to_string().into());
    if let Some(svg) = svg {
        argv.push("--svg".into());
        argv.push(svg.into());
    }
    let args = <Wrap as clap::Parser>::try_parse_from(argv)?.bench;
    run_engines(
        &args,
        vec![(EngineKind::Jit, WeightFormat::F32)],
        false,
        out,
    )
}

/// A sample's name: the engine's, with the weight format when it is not f32 (`jit:int8`).
fn sample_name(kind: EngineKind, dtype: WeightFormat) -> String {
    match dtype {
        WeightFormat::F32 => kind.name().to_string(),
        d => format!("{}:{}", kind.name(), d.name()),
    }
}

fn run_engines(
    args: &BenchArgs,
    engines: Vec<(EngineKind, WeightFormat)>,
    verbose: bool,
    out: &mut dyn Write,
) -> Result<()> {
    let task = args.task;
    if args.dram && task != Task::Generate {
        bail!("--dram sets decode steps against DRAM's read: it needs --task generate");
    }
    // The runtime's matmuls use this many threads (main applied --threads); the
    // interpreter always runs on one.
    let threads = cranformer_runtime::threads::threads();

    let load_start = Instant::now();
    let (model, model_name) = match (&args.preset, &args.model_dir) {
        (Some(p), _) => (presets::load(p, args.layers, args.seed)?, p.clone()),
        (None, Some(dir)) => {
            let name = dir
                .file_name()
                .map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into());
            (Model::load(dir)?, name)
        }
        (None, None) => bail!("give a MODEL_DIR or --preset NAME"),
    };
    let load_time = load_start.elapsed();
    let model = Arc::new(model);
    let info = model.info.clone();

    let max = info.max_positions();
    let (positions, what) = match (task, &info) {
        (Task::Forward, _) => (args.seq, "--seq"),
        (Task::Generate, ModelInfo::Gpt2 { .. }) => (
            args.prompt_tokens + args.new_tokens,
            "--prompt-tokens + --new-tokens",
        ),
        (Task::Generate, _) => (
            args.prompt_tokens.max(args.new_tokens),
            "--prompt-tokens and --new-tokens",
        ),
    };
    if positions > max {
        bail!("{what} is {positions}, more than the model's {max} positions");
    }
    if task == Task::Generate && matches!(info, ModelInfo::Bert { .. }) {
        bail!("BERT models do not generate: use --task forward");
    }

    let mut rng = presets::Rng::new(args.seed ^ 0x1d5);
    let vocab = info.vocab_size();
    let len = if task == Task::Forward {
        args.seq
    } else {
        args.prompt_tokens
    };
    let work = Work {
        model: model.clone(),
        task,
        batch: args.batch,
        seq: args.seq,
        new_tokens: args.new_tokens,
        ids: random_ids(&mut rng, args.batch, len, vocab),
        decoder_ids: random_ids(&mut rng, args.batch, args.seq, vocab),
    };

    let mut built: Vec<(Box<dyn Engine>, Sample)> = vec![];
    for &(kind, dtype) in &engines {
        let name = sample_name(kind, dtype);
        let (engine, build) = build_engine(kind, dtype, model.clone())
            .with_context(|| format!("building engine {name}"))?;
        if verbose {
            eprintln!("{name}: built in {:.1?}", build.total);
        }
        built.push((
            engine,
            Sample {
                name,
                engine: kind,
                dtype,
                build,
                totals: vec![],
                decodes: vec![],
                dram: vec![],
                result: None,
            },
        ));
    }

    // The first run made records the calls; their cost is the same for every run.
    let mut trace: Trace = vec![];
    for w in 0..args.warmup {
        for (e, s) in &mut built {
            let t = if trace.is_empty() {
                Some(&mut trace)
            } else {
                None
            };
            work.run(e.as_mut(), t)
                .with_context(|| format!("warm-up run of engine {}", s.name))?;
            if verbose {
                eprintln!("{}: warm-up {} done", s.name, w + 1);
            }
        }
    }
    let compiled = built.iter().any(|(_, s)| s.engine != EngineKind::Interp);
    if args.dram && !compiled {
        eprintln!("bench: --dram sets compiled engines' decode runs against DRAM; the interpreter's are not");
    }
    // The reader's buffers are allocated (and written) once, before the timed runs.
    let dram = (args.dram && compiled).then(|| crate::roofline::DramRead::new(threads));
    for r in 0..args.runs {
        for (e, s) in &mut built {
            let t = if trace.is_empty() {
                Some(&mut trace)
            } else {
                None
            };
            let read = dram.as_ref().filter(|_| s.engine != EngineKind::Interp);
            let before = read.map(|d| d.gbs());
            let times = work
                .run(e.as_mut(), t)
                .with_context(|| format!("run {} of engine {}", r + 1, s.name))?;
            if let (Some(d), Some(before), Some(decode)) = (read, before, times.decode) {
                s.dram.push((decode, before, d.gbs()));
            }
            if verbose {
                eprintln!("{}: run {} took {:.1?}", s.name, r + 1, times.total);
            }
            s.totals.push(times.total);
            s.decodes.extend(times.decode);
            // Every run computes the same (same inputs, deterministic kernels): keep one.
            if s.result.is_none() {
                s.result = Some((times.last, times.tokens));
            }
        }
    }

    let cost_of = |decode_only: bool| -> Cost {
        trace
            .iter()
            .filter(|(_, _, d)| !decode_only || *d)
            .map(|(entry, dims, _)| graph_cost(&model.entries[entry], dims))
            .sum()
    };
    let cost = cost_of(false);
    let decode_cost = cost_of(true);
    // Matmul FLOPs apart: the figure the matmul kernels' speed is judged by.
    let matmul_flops: u64 = trace
        .iter()
        .flat_map(|(entry, dims, _)| {
            let g = &model.entries[entry];
            node_costs(g, dims)
                .into_iter()
                .filter(move |(n, _)| matches!(g.node(*n).op, Op::Linear { .. }))
                .map(|(_, c)| c.flops)
        })
        .sum();

    let mut narrow: Vec<WeightFormat> = engines
        .iter()
        .map(|(_, f)| *f)
        .filter(|f| *f != WeightFormat::F32)
        .collect();
    narrow.sort();
    narrow.dedup();
    let bytes_as = |f: WeightFormat, decode_only: bool| -> u64 {
        trace
            .iter()
            .filter(|(_, _, d)| !decode_only || *d)
            .map(|(entry, dims, _)| graph_cost_as(&model.entries[entry], dims, f).weight_bytes)
            .sum()
    };
    let narrow_weight_bytes = narrow.iter().map(|&f| (f, bytes_as(f, false))).collect();
    let decode_weight_bytes = std::iter::once(WeightFormat::F32)
        .chain(narrow.iter().copied())
        .map(|f| (f, bytes_as(f, true)))
        .collect();
    let report = Report {
        narrow_weight_bytes,
        decode_weight_bytes,
        model: model_name,
        architecture: info.architecture().to_string(),
        task: args.task,
        args,
        threads,
        load: load_time,
        cost,
        decode_cost,
        matmul_flops,
    };
    // The tiling report: one more run of the compiled engine with every matmul timed.
    let mut tiling_rows = None;
    if args.report || args.svg.is_some() {
        let jit = built
            .iter_mut()
            .find(|(_, s)| s.name != "interp")
            .context("--report needs a compiled engine (jit)")?;
        cranformer_runtime::gemm::profile::start();
        let run = work.run(jit.0.as_mut(), None);
        let recorded = cranformer_runtime::gemm::profile::stop();
        run.context("the profiled run")?;
        tiling_rows = Some(tiling_report(&model, &trace, &recorded, jit.1.dtype)?);
    }
    let samples: Vec<Sample> = built.into_iter().map(|(_, s)| s).collect();
    if args.json {
        report.json(&samples, out)?;
    } else {
        report.table(&samples, out)?;
    }
    if let Some((rows, profile)) = tiling_rows {
        writeln!(out)?;
        write!(
            out,
            "{}",
            cranformer_compiler::tiling::report::table(
                &rows,
                &profile,
                "each matmul, attention and norm timed inside its runtime call during one extra run, with the isa (kc/mc) and threads it ran with; Cranelift kernels: prediction only"
            )
        )?;
        writeln!(
            out,
            "activation memory (one arena per entry, buffers reused by liveness):"
        )?;
        for (entry, (planned, unshared)) in cranformer_runtime::native::arena_stats() {
            writeln!(
                out,
                "  {entry:<10} peak {:>9.2} MB planned, {:>9.2} MB without reuse ({:.1}x less)",
                planned as f64 / 1e6,
                unshared as f64 / 1e6,
                unshared as f64 / planned.max(1) as f64
            )?;
        }
        if let Some(path) = &args.svg {
            std::fs::write(
                path,
                cranformer_compiler::tiling::report::svg(&rows, &profile),
            )
            .with_context(|| format!("writing {}", path.display()))?;
            writeln!(out, "roofline drawn in {}", path.display())?;
        }
    }
    Ok(())
}
