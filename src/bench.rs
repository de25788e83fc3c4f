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
//!   token each, feeding back the greedy pick; `ms_per_new_token` = time of those M steps / M.
//! - generate, T5: prefill = `encode` of N tokens and `cross_kv`; then M `step`s from the
//!   decoder start token, as above. End-of-sequence picks do not stop a run: every run does
//!   the same work.

use crate::presets;
use anyhow::{bail, Context, Result};
use clap::Args;
use cranformer_compiler::aot::SharedObjectEngine;
use cranformer_compiler::graph::{graph_cost, node_costs, Cost, Dims, Op};
use cranformer_compiler::interp::Interpreter;
use cranformer_compiler::jit::JitEngine;
use cranformer_compiler::Model;
use cranformer_runtime::cli::Common;
use cranformer_runtime::kv_cache::KvCache;
use cranformer_runtime::{Engine, ModelInfo, Outputs, Tensor};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    /// Only with --preset: this many layers (in each T5 stack) instead of the standard count.
    #[arg(long, requires = "preset", value_parser = at_least_one)]
    pub layers: Option<usize>,
    /// forward: one pass over --seq tokens; generate: prefill --prompt-tokens, then
    /// --new-tokens single-token steps (GPT-2, T5).
    #[arg(long, default_value = "forward", value_parser = ["forward", "generate"])]
    pub task: String,
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
    /// Draw the report's roofline into this SVG file (implies --report).
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
}

/// `--engine` is global with default "jit" for the tasks; bench compares engines, so without
/// an explicit `--engine` it runs the interpreter and the JIT.
fn engine_names(common: &Common) -> Result<Vec<String>> {
    let explicit = std::env::args_os().any(|a| {
        let a = a.to_string_lossy();
        a == "--engine" || a.starts_with("--engine=")
    });
    let list = if explicit {
        common.engine.as_str()
    } else {
        "interp,jit"
    };
    let mut names: Vec<String> = vec![];
    for n in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        if !names.iter().any(|x| x == n) {
            names.push(n.to_string());
        }
    }
    if names.is_empty() {
        bail!("--engine {list:?} names no engine (expected a list such as interp,jit,aot)");
    }
    // Checked before any engine is built: a typo should not cost a compile first.
    for n in &names {
        match n.as_str() {
            "interp" | "jit" | "aot" => {}
            other => bail!("unknown --engine {other:?} (available: interp, jit, aot)"),
        }
    }
    Ok(names)
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

fn build_engine(name: &str, model: Arc<Model>) -> Result<(Box<dyn Engine>, Build)> {
    let start = Instant::now();
    let mut link = None;
    let (engine, compile, prepare): (Box<dyn Engine>, _, _) = match name {
        "interp" => (Box::new(Interpreter::new(model)), None, None),
        "jit" => {
            let e = JitEngine::new(model).context("JIT compilation failed")?;
            let (c, p) = (e.compile_time(), e.prepare_time());
            (Box::new(e), Some(c), Some(p))
        }
        "aot" => {
            let e = SharedObjectEngine::new(model)
                .context("building the shared object for --engine aot failed")?;
            let (c, l, p) = (e.compile_time(), e.link_time(), e.prepare_time());
            link = Some(l);
            (Box::new(e), Some(c), Some(p))
        }
        other => bail!("unknown --engine {other:?} (available: interp, jit, aot)"),
    };
    let build = Build {
        total: start.elapsed(),
        compile,
        link,
        prepare,
    };
    Ok((engine, build))
}

#[derive(Clone, Copy, PartialEq)]
enum Task {
    Forward,
    Generate,
}

/// One benchmark workload: the model, the task's sizes and its random token ids.
struct Work {
    model: Arc<Model>,
    task: Task,
    batch: usize,
    seq: usize,
    prompt: usize,
    new_tokens: usize,
    /// [B, T] for forward (T5: the encoder's), [B, N] for generate.
    ids: Tensor,
    /// [B, T] decoder ids (T5 forward only).
    decoder_ids: Tensor,
}

/// Calls of one run with their bound dims, and whether each belongs to the decode phase.
type Trace = Vec<(String, Dims, bool)>;

/// Times of one run.
struct Times {
    total: Duration,
    /// The M single-token steps (generate only).
    decode: Option<Duration>,
}

fn random_ids(rng: &mut presets::Rng, batch: usize, len: usize, vocab: usize) -> Tensor {
    let ids = (0..batch * len).map(|_| rng.below(vocab) as i64).collect();
    Tensor::i64(vec![batch, len], ids)
}

fn ones(batch: usize, len: usize) -> Tensor {
    Tensor::i64(vec![batch, len], vec![1; batch * len])
}

/// The greedy pick of each row of step logits [B, 1, V].
fn argmax_rows(logits: &Tensor, batch: usize) -> Result<Vec<i64>> {
    let v = logits.as_f32().context("step logits are not f32")?;
    let width = v.len() / batch.max(1);
    Ok(v.chunks_exact(width.max(1))
        .map(|row| {
            let mut best = 0;
            for (i, &x) in row.iter().enumerate() {
                if x > row[best] {
                    best = i;
                }
            }
            best as i64
        })
        .collect())
}

impl Work {
    /// Runs `entry`, recording its dims in `trace` (bound from the same input shapes the
    /// engine sees) when one is given.
    fn call(
        &self,
        engine: &mut dyn Engine,
        entry: &str,
        inputs: &[(&str, &Tensor)],
        trace: &mut Option<&mut Trace>,
        decode: bool,
    ) -> Result<Outputs> {
        if let Some(t) = trace.as_deref_mut() {
            let graph = &self.model.entries[entry];
            t.push((entry.to_string(), graph.bind_dims(inputs)?, decode));
        }
        Ok(engine.run(entry, inputs)?)
    }

    fn run(&self, engine: &mut dyn Engine, mut trace: Option<&mut Trace>) -> Result<Times> {
        let b = self.batch;
        let start = Instant::now();
        let mut decode = None;
        match (self.task, &self.model.info) {
            (Task::Forward, ModelInfo::Bert { .. }) => {
                let types = Tensor::i64(vec![b, self.seq], vec![0; b * self.seq]);
                let mask = ones(b, self.seq);
                let inputs = [
                    ("input_ids", &self.ids),
                    ("token_type_ids", &types),
                    ("attention_mask", &mask),
                ];
                self.call(engine, "encode", &inputs, &mut trace, false)?;
            }
            (
                Task::Forward,
                ModelInfo::Gpt2 {
                    layers,
                    hidden_size,
                    ..
                },
            ) => {
                let cache = KvCache::new(*layers, b, *hidden_size);
                let mask = ones(b, self.seq);
                let mut inputs: Vec<(String, &Tensor)> = vec![
                    ("input_ids".into(), &self.ids),
                    ("attention_mask".into(), &mask),
                ];
                inputs.extend(cache.inputs());
                let named: Vec<(&str, &Tensor)> =
                    inputs.iter().map(|(n, t)| (n.as_str(), *t)).collect();
                self.call(engine, "forward", &named, &mut trace, false)?;
            }
            (
                Task::Forward,
                ModelInfo::T5 {
                    decoder_layers,
                    kv_width,
                    ..
                },
            ) => {
                let mask = ones(b, self.seq);
                let cross = self.t5_prefill(engine, &mask, &mut trace)?;
                let cache = KvCache::new(*decoder_layers, b, *kv_width);
                let mut inputs: Vec<(String, &Tensor)> = vec![
                    ("decoder_input_ids".into(), &self.decoder_ids),
                    ("encoder_attention_mask".into(), &mask),
                ];
                inputs.extend(cache.inputs());
                inputs.extend(cross.iter().map(|(k, v)| (k.clone(), v)));
                let named: Vec<(&str, &Tensor)> =
                    inputs.iter().map(|(n, t)| (n.as_str(), *t)).collect();
                self.call(engine, "decode", &named, &mut trace, false)?;
            }
            (
                Task::Generate,
                ModelInfo::Gpt2 {
                    layers,
                    hidden_size,
                    ..
                },
            ) => {
                let mut cache = KvCache::new(*layers, b, *hidden_size);
                let mut next = self.ids.clone();
                let mut decode_start = None;
                for i in 0..=self.new_tokens {
                    if i == 1 {
                        decode_start = Some(Instant::now());
                    }
                    let total = cache.len() + next.shape[1];
                    let mask = ones(b, total);
                    let mut inputs: Vec<(String, &Tensor)> = vec![
                        ("input_ids".into(), &next),
                        ("attention_mask".into(), &mask),
                    ];
                    inputs.extend(cache.inputs());
                    let named: Vec<(&str, &Tensor)> =
                        inputs.iter().map(|(n, t)| (n.as_str(), *t)).collect();
                    let mut o = self.call(engine, "step", &named, &mut trace, i > 0)?;
                    let logits = o
                        .remove("logits")
                        .context("this GPT-2 has no LM head, so it cannot generate")?;
                    cache.update(&mut o)?;
                    next = Tensor::i64(vec![b, 1], argmax_rows(&logits, b)?);
                }
                decode = decode_start.map(|t| t.elapsed());
            }
            (
                Task::Generate,
                ModelInfo::T5 {
                    decoder_layers,
                    kv_width,
                    decoder_start_token_id,
                    ..
                },
            ) => {
                let mask = ones(b, self.prompt);
                let cross = self.t5_prefill(engine, &mask, &mut trace)?;
                let decode_start = Instant::now();
                let mut cache = KvCache::new(*decoder_layers, b, *kv_width);
                let mut next = Tensor::i64(vec![b, 1], vec![*decoder_start_token_id; b]);
                for _ in 0..self.new_tokens {
                    let mut inputs: Vec<(String, &Tensor)> = vec![
                        ("decoder_input_ids".into(), &next),
                        ("encoder_attention_mask".into(), &mask),
                    ];
                    inputs.extend(cache.inputs());
                    inputs.extend(cross.iter().map(|(k, v)| (k.clone(), v)));
                    let named: Vec<(&str, &Tensor)> =
                        inputs.iter().map(|(n, t)| (n.as_str(), *t)).collect();
                    let mut o = self.call(engine, "step", &named, &mut trace, true)?;
                    let logits = o.remove("logits").context("step returned no logits")?;
                    cache.update(&mut o)?;
                    next = Tensor::i64(vec![b, 1], argmax_rows(&logits, b)?);
                }
                decode = Some(decode_start.elapsed());
            }
            (Task::Generate, ModelInfo::Bert { .. }) => {
                bail!("BERT models do not generate: use --task forward")
            }
        }
        Ok(Times {
            total: start.elapsed(),
            decode,
        })
    }

    /// T5's encoder over `self.ids`, then the decoder's cross-attention keys and values.
    fn t5_prefill(
        &self,
        engine: &mut dyn Engine,
        mask: &Tensor,
        trace: &mut Option<&mut Trace>,
    ) -> Result<Outputs> {
        let inputs = [("input_ids", &self.ids), ("attention_mask", mask)];
        let mut enc = self.call(engine, "encode", &inputs, trace, false)?;
        let hidden = enc
            .remove("encoder_last_hidden_state")
            .context("encode returned no encoder_last_hidden_state")?;
        self.call(
            engine,
            "cross_kv",
            &[("encoder_hidden_states", &hidden)],
            trace,
            false,
        )
    }
}

/// Timings of one engine over the timed runs.
struct Sample {
    name: String,
    build: Build,
    totals: Vec<Duration>,
    decodes: Vec<Duration>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(v: &[Duration]) -> Duration {
    let mut s = v.to_vec();
    s.sort_unstable();
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2
    }
}

pub fn run(args: &BenchArgs, common: &Common, out: &mut dyn Write) -> Result<()> {
    run_engines(args, engine_names(common)?, common.verbose, out)
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
    run_engines(&args, vec!["jit".into()], false, out)
}

fn run_engines(
    args: &BenchArgs,
    engines: Vec<String>,
    verbose: bool,
    out: &mut dyn Write,
) -> Result<()> {
    let task = match args.task.as_str() {
        "generate" => Task::Generate,
        _ => Task::Forward,
    };
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
        prompt: args.prompt_tokens,
        new_tokens: args.new_tokens,
        ids: random_ids(&mut rng, args.batch, len, vocab),
        decoder_ids: random_ids(&mut rng, args.batch, args.seq, vocab),
    };

    let mut built: Vec<(Box<dyn Engine>, Sample)> = vec![];
    for name in &engines {
        let (engine, build) =
            build_engine(name, model.clone()).with_context(|| format!("building engine {name}"))?;
        if verbose {
            eprintln!("{name}: built in {:.1?}", build.total);
        }
        built.push((
            engine,
            Sample {
                name: name.clone(),
                build,
                totals: vec![],
                decodes: vec![],
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
    for r in 0..args.runs {
        for (e, s) in &mut built {
            let t = if trace.is_empty() {
                Some(&mut trace)
            } else {
                None
            };
            let times = work
                .run(e.as_mut(), t)
                .with_context(|| format!("run {} of engine {}", r + 1, s.name))?;
            if verbose {
                eprintln!("{}: run {} took {:.1?}", s.name, r + 1, times.total);
            }
            s.totals.push(times.total);
            s.decodes.extend(times.decode);
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

    let report = Report {
        model: model_name,
        architecture: info.architecture().to_string(),
        task: args.task.clone(),
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
        let timings = cranformer_runtime::gemm::profile::stop();
        run.context("the profiled run")?;
        tiling_rows = Some(tiling_report(&model, &trace, &timings)?);
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
                "each matmul timed inside the runtime call (GemmCall) during one extra run, with the isa/kc/mc/threads it ran with; other kernels: prediction only"
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

/// The report rows of every call in `trace` (graphs as the JIT compiled them): each matmul
/// as the runtime ran it (its recorded ISA, blocking, threads and time; see
/// `tiling::report::ran`), the other kernels with their predictions. Without recorded
/// matmuls (no runtime matmul on this CPU: the generated kernel ran), the graph's matmul rows
/// stay, with the generated kernel the host profile picks.
fn tiling_report(
    model: &Model,
    trace: &Trace,
    timings: &[cranformer_runtime::gemm::profile::Timing],
) -> Result<(
    Vec<cranformer_compiler::tiling::report::Row>,
    cranformer_compiler::tiling::MachineProfile,
)> {
    use cranformer_compiler::tiling::{report, MachineProfile};
    let profile = MachineProfile::host();
    let optimized = model.optimized(None)?;
    let weights: u64 = trace
        .first()
        .map(|(e, d, _)| graph_cost(&optimized[e], d).weight_bytes)
        .unwrap_or(0);
    let mut rows = vec![];
    for (entry, dims, _) in trace {
        report::merge(
            &mut rows,
            report::rows(&optimized[entry], dims, &profile, weights),
        );
    }
    if !timings.is_empty() {
        rows.retain(|r| r.matmul.is_none());
        rows.extend(report::ran(timings, &profile, weights));
    }
    Ok((rows, profile))
}

struct Report<'a> {
    model: String,
    architecture: String,
    task: String,
    args: &'a BenchArgs,
    threads: usize,
    load: Duration,
    cost: Cost,
    decode_cost: Cost,
    matmul_flops: u64,
}

impl Report<'_> {
    fn generate(&self) -> bool {
        self.task == "generate"
    }

    fn interp_median(&self, samples: &[Sample]) -> Option<Duration> {
        samples
            .iter()
            .find(|s| s.name == "interp")
            .map(|s| median(&s.totals))
    }

    /// Threads an engine ran on: the interpreter always one, compiled code the runtime's.
    fn engine_threads(&self, s: &Sample) -> usize {
        if s.name == "interp" {
            1
        } else {
            self.threads
        }
    }

    fn gflops(cost: &Cost, d: Duration) -> f64 {
        cost.flops as f64 / d.as_secs_f64().max(1e-12) / 1e9
    }

    fn json(&self, samples: &[Sample], out: &mut dyn Write) -> Result<()> {
        let a = self.args;
        let interp = self.interp_median(samples);
        for s in samples {
            let med = median(&s.totals);
            let mut o = serde_json::json!({
                "engine": s.name,
                "task": self.task,
                "median_ms": ms(med),
                "min_ms": ms(*s.totals.iter().min().expect("at least one run")),
                "runs": s.totals.len(),
                "gflops": Self::gflops(&self.cost, med),
                "model": self.model,
                "architecture": self.architecture,
                "batch": a.batch,
                "threads": self.engine_threads(s),
                "warmup": a.warmup,
                "flops": self.cost.flops,
                "matmul_flops": self.matmul_flops,
                "weight_bytes": self.cost.weight_bytes,
                "activation_bytes": self.cost.act_read_bytes + self.cost.act_write_bytes,
                "build_ms": ms(s.build.total),
                "load_ms": ms(self.load),
            });
            let m = o.as_object_mut().expect("built as an object");
            if let Some(c) = s.build.compile {
                m.insert("compile_ms".into(), ms(c).into());
            }
            if let Some(p) = s.build.prepare {
                m.insert("prepare_ms".into(), ms(p).into());
            }
            if let Some(l) = s.build.link {
                m.insert("link_ms".into(), ms(l).into());
            }
            if let Some(i) = interp {
                m.insert(
                    "ratio_to_interp".into(),
                    (i.as_secs_f64() / med.as_secs_f64().max(1e-12)).into(),
                );
            }
            if self.generate() {
                let dec = median(&s.decodes);
                m.insert("prompt_tokens".into(), a.prompt_tokens.into());
                m.insert("new_tokens".into(), a.new_tokens.into());
                m.insert(
                    "ms_per_new_token".into(),
                    (ms(dec) / a.new_tokens as f64).into(),
                );
                m.insert(
                    "decode_gflops".into(),
                    Self::gflops(&self.decode_cost, dec).into(),
                );
            } else {
                m.insert("seq".into(), a.seq.into());
            }
            writeln!(out, "{o}")?;
        }
        Ok(())
    }

    fn table(&self, samples: &[Sample], out: &mut dyn Write) -> Result<()> {
        let a = self.args;
        let shape = if self.generate() {
            format!(
                "generate, batch {}, {} prompt + {} new tokens",
                a.batch, a.prompt_tokens, a.new_tokens
            )
        } else {
            format!("forward, batch {}, seq {}", a.batch, a.seq)
        };
        writeln!(
            out,
            "{} ({}): {shape}; compiled engines on {} thread{} (interp on 1); {} run{} per engine after {} warm-up, interleaved",
            self.model,
            self.architecture,
            self.threads,
            if self.threads == 1 { "" } else { "s" },
            a.runs,
            if a.runs == 1 { "" } else { "s" },
            a.warmup
        )?;
        writeln!(
            out,
            "work per run: {:.3} GFLOP ({:.1}% in matmuls), {:.1} MB of weights and {:.1} MB of \
             activations moved; model ready in {:.0} ms",
            self.cost.flops as f64 / 1e9,
            100.0 * self.matmul_flops as f64 / self.cost.flops.max(1) as f64,
            self.cost.weight_bytes as f64 / 1e6,
            (self.cost.act_read_bytes + self.cost.act_write_bytes) as f64 / 1e6,
            ms(self.load)
        )?;
        let interp = self.interp_median(samples);
        let mut header = format!(
            "{:<8} {:>7} {:>10} {:>11} {:>11} {:>9}",
            "engine", "threads", "build ms", "median ms", "min ms", "GFLOP/s"
        );
        if self.generate() {
            header += &format!(" {:>11} {:>14}", "ms/token", "decode GFLOP/s");
        }
        if interp.is_some() {
            header += &format!(" {:>10}", "vs interp");
        }
        writeln!(out, "{header}")?;
        for s in samples {
            let med = median(&s.totals);
            let min = *s.totals.iter().min().expect("at least one run");
            let mut line = format!(
                "{:<8} {:>7} {:>10.1} {:>11.2} {:>11.2} {:>9.2}",
                s.name,
                self.engine_threads(s),
                ms(s.build.total),
                ms(med),
                ms(min),
                Self::gflops(&self.cost, med)
            );
            if self.generate() {
                let dec = median(&s.decodes);
                line += &format!(
                    " {:>11.2} {:>14.2}",
                    ms(dec) / a.new_tokens as f64,
                    Self::gflops(&self.decode_cost, dec)
                );
            }
            if let Some(i) = interp {
                line += &format!(" {:>9.2}x", i.as_secs_f64() / med.as_secs_f64());
            }
            writeln!(out, "{line}")?;
        }
        for s in samples {
            if let (Some(c), Some(p)) = (s.build.compile, s.build.prepare) {
                let link = s
                    .build
                    .link
                    .map(|l| format!(", linked and loaded in {:.1} ms", ms(l)))
                    .unwrap_or_default();
                writeln!(
                    out,
                    "{}: code generated in {:.1} ms{link}, weights laid out in {:.1} ms",
                    s.name,
                    ms(c),
                    ms(p)
                )?;
            }
        }
        Ok(())
    }
}
