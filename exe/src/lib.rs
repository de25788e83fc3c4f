//! The runtime of a compiled model executable, built as a static library that `cranformer
//! compile` links with the model's object and generated glue. The glue's `main` calls
//! [`cranformer_exe_main`] with a table of the entry functions and embedded data; this parses
//! the same task command line as `cranformer` (without MODEL_DIR) and runs it.

use anyhow::{bail, Context, Result};
use clap::{CommandFactory, FromArgMatches, Parser};
use cranformer_runtime::cli::{report_error, Common, EngineKind, ServeArgs, Task};
use cranformer_runtime::compiled::{NativeEngine, Program, PROGRAM_VERSION};
use cranformer_runtime::glue::RawProgram;
use cranformer_runtime::tasks::{self, Session};
use cranformer_runtime::tokenize::Tokenizer;
use cranformer_runtime::weights::Weights;
use cranformer_runtime::Engine;
use std::collections::BTreeMap;
use std::ffi::{c_char, c_int, CStr, OsString};
use std::io::Write;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

/// The model's tasks, and `serve`.
#[derive(clap::Subcommand)]
enum Command {
    #[command(flatten)]
    Task(Task),
    /// Serve the model over HTTP (OpenAI, Hugging Face TEI and KServe v2 routes), batching
    /// concurrent requests.
    Serve(ServeArgs),
}

#[derive(Parser)]
#[command(version, disable_help_subcommand = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    common: Common,
    /// Read the weights from this safetensors file or model directory instead of the ones
    /// the executable was compiled with.
    #[arg(long, global = true, value_name = "PATH")]
    weights: Option<PathBuf>,
}

/// The executable's `main`, called by the generated glue.
///
/// # Safety
/// `argv` must hold `argc` C strings and `program` must be the glue's table.
#[no_mangle]
pub unsafe extern "C" fn cranformer_exe_main(
    argc: c_int,
    argv: *const *const c_char,
    program: *const RawProgram,
) -> c_int {
    // SAFETY: `argv` holds `argc` C strings, as the caller promised (the C runtime's `main`
    // arguments, passed through by the glue).
    let args: Vec<OsString> = (0..argc.max(0) as usize)
        .map(|i| OsString::from_vec(unsafe { CStr::from_ptr(*argv.add(i)) }.to_bytes().to_vec()))
        .collect();
    // SAFETY: `program` is the glue's static table, as the caller promised.
    let raw = unsafe { &*program };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let result = run(args, raw, &mut out);
    match result.and_then(|()| Ok(out.flush()?)) {
        Ok(()) => 0,
        Err(e) => report_error(&e, &mut out),
    }
}

fn run(args: Vec<OsString>, raw: &RawProgram, out: &mut dyn Write) -> Result<()> {
    let started = std::time::Instant::now();
    if raw.version != PROGRAM_VERSION as u64 {
        bail!(
            "this executable's tables are version {}, its runtime reads version {PROGRAM_VERSION} (a cranformer bug)",
            raw.version
        );
    }
    // SAFETY: the glue's blobs live in the executable's read-only data.
    let program = Program::decode(unsafe { raw.program.bytes() })
        .context("reading the embedded program description (a cranformer bug)")?;
    cranformer_runtime::cpu_features::check(&program.cpu_features).map_err(anyhow::Error::msg)?;
    let name = args
        .first()
        .and_then(|a| Path::new(a).file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let cli = parse(&program, &name, args);
    let common = &cli.common;
    // The precision is compiled in: a different --dtype would silently not be what runs.
    let compiled = program.weight_format();
    if let Some(d) = common.dtype_given().map_err(anyhow::Error::msg)? {
        if d != compiled {
            bail!(
                "--dtype {}: this executable was compiled with {} matmul weights (recompile \
                 with `cranformer compile MODEL_DIR -o BIN --dtype {}`)",
                d.name(),
                compiled.name(),
                d.name()
            );
        }
    }
    let task_name = match &cli.command {
        Command::Task(t) => t.name(),
        Command::Serve(_) => "serve",
    };
    let kind = common.engine().map_err(anyhow::Error::msg)?;
    if !matches!(kind, EngineKind::Jit | EngineKind::Aot) {
        bail!(
            "--engine {:?}: a compiled executable runs its compiled code only (run `cranformer {} MODEL_DIR --engine interp` for the interpreter)",
            kind.name(),
            task_name
        );
    }
    if let Some(n) = common.threads {
        cranformer_runtime::threads::set_threads(n);
    }
    // SAFETY: as above.
    let tokenizer =
        Tokenizer::from_json_bytes(unsafe { raw.tokenizer.bytes() }, program.tokenizer_kind)?;
    if let Command::Task(task) = &cli.command {
        if tasks::run_without_weights(task, &tokenizer, out)? {
            return Ok(());
        }
    }
    // Send: `serve` hands the engine to its engine thread.
    let engine: Box<dyn Engine + Send> = {
        let weights = open_weights(&program, raw, cli.weights.as_deref())?;
        let (tensors, prepared) = if program.embedded && cli.weights.is_none() {
            (BTreeMap::new(), program.load_prepared(&weights)?)
        } else {
            (program.load_weights(&weights)?, BTreeMap::new())
        };
        let mut entries = vec![];
        for meta in &program.entries {
            // SAFETY: the glue's entry table holds n_entries entries with C-string names.
            let table = unsafe { raw.entries() };
            let func = table
                .iter()
                // SAFETY: every name in the table is a NUL-terminated string literal of the glue.
                .find(|e| unsafe { e.name() }.to_bytes() == meta.name.as_bytes())
                .with_context(|| {
                    format!("entry {} is not linked in (a cranformer bug)", meta.name)
                })?
                .func();
            entries.push((meta.clone(), func));
        }
        // SAFETY: each function is the entry generated for its metadata, linked into this
        // executable.
        let engine = unsafe { NativeEngine::new("aot", entries, &tensors, prepared)? };
        if common.verbose {
            eprintln!(
                "loaded {} (compiled from {}) with weights from {} in {:.1?}",
                program.info.architecture(),
                program.source,
                weights.source(),
                started.elapsed()
            );
        }
        Box::new(engine)
    };
    let task = match cli.command {
        Command::Task(task) => task,
        Command::Serve(args) => {
            // The weights are mapped and laid out above; the server runs its warm-up call on
            // the engine thread before it reports ready.
            return cranformer_serve::run(
                &args,
                cranformer_serve::ServedModel {
                    info: program.info.clone(),
                    tokenizer,
                    engine: Box::new(move || Ok(engine as Box<dyn Engine>)),
                },
            );
        }
    };
    let mut session = Session {
        info: program.info.clone(),
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

/// The command line, with `--help` listing only the tasks this model supports.
fn parse(program: &Program, name: &str, args: Vec<OsString>) -> Cli {
    let tasks = program.info.tasks();
    let mut cmd = Cli::command()
        .name(&*Box::leak(name.to_string().into_boxed_str()))
        .about(format!(
            "{} ({}) compiled by cranformer: runs {}",
            program.info.architecture(),
            program.info.model_type(),
            tasks.join(", ")
        ))
        // Only compiled code is in here: the flag is accepted for scripts written for
        // cranformer, but not offered.
        .mut_arg("engine", |a| a.hide(true));
    let names: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .collect();
    for sub in names {
        if sub != "serve" && !tasks.contains(&sub.as_str()) {
            cmd = cmd.mut_subcommand(sub, |s| s.hide(true));
        }
    }
    let matches = cmd.get_matches_from(args);
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

fn open_weights(program: &Program, raw: &RawProgram, given: Option<&Path>) -> Result<Weights> {
    if let Some(path) = given {
        let w = if path.is_dir() {
            Weights::open(path)
        } else {
            Weights::open_files(&[path.to_path_buf()])
        };
        return w.with_context(|| format!("--weights {}", path.display()));
    }
    if !program.external.is_empty() {
        const HOW: &str = "this executable was compiled with --weights external: restore the \
                           file or pass --weights PATH (a safetensors file or model directory)";
        if let Some(missing) = program.external.iter().find(|f| !f.is_file()) {
            bail!("the weights file {} is missing ({HOW})", missing.display());
        }
        return Weights::open_files(&program.external).context(HOW);
    }
    // SAFETY: the glue's shard table holds n_shards blobs of its read-only data.
    match unsafe { raw.shards() } {
        [one] => Ok(Weights::from_static(
            // SAFETY: as above.
            unsafe { one.bytes() },
            "<embedded weights>",
        )?),
        _ => bail!("this executable carries no weights: pass --weights PATH"),
    }
}
