//! The ahead-of-time driver: lowers every entry point of a model into one relocatable object
//! (cranelift-object) with the same lowering as the JIT, then links it with the system C
//! toolchain, either into a standalone executable (with generated glue and the runtime's
//! static library) or into a shared object loaded in-process ([`SharedObjectEngine`]).
//!
//! The glue is a C file and an assembly file. The assembly embeds blobs with `.incbin` so the
//! weights stream from disk into the object without passing through this process; the C file
//! holds the table the runtime's `cranformer_exe_main` reads (`exe/src/lib.rs` mirrors it).

use crate::codegen::{self, CodegenError, LowerOptions, Lowering};
use crate::Model;
use cranelift_object::{ObjectBuilder, ObjectModule};
use cranformer_runtime::compiled::{prepared_key, NativeEngine, Program, PROGRAM_VERSION};
use cranformer_runtime::native::{EntryFn, EntryMeta};
use cranformer_runtime::tokenize::{TokenizeError, Tokenizer};
use cranformer_runtime::weights::{Weights, WeightsError};
use cranformer_runtime::{Engine, EngineError, Outputs, Tensor};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Errors compiling a model ahead of time.
#[derive(Debug, thiserror::Error)]
pub enum AotError {
    /// Lowering failed (see [`CodegenError`] for which variants are compiler bugs).
    #[error(transparent)]
    Codegen(#[from] CodegenError),
    /// Writing the object file failed (compiler bug).
    #[error("compiler bug: writing the object file: {0}")]
    Object(String),
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The system C compiler is missing or failed (toolchain problem, or a compiler bug when
    /// the generated glue does not compile).
    #[error("{what} failed: `{command}`{}", if stderr.is_empty() { String::new() } else { format!(":\n{stderr}") })]
    Toolchain {
        what: String,
        command: String,
        stderr: String,
    },
    /// The linked shared object could not be loaded or lacks an entry (compiler bug).
    #[error("loading the compiled shared object {}: {message}", path.display())]
    Load { path: PathBuf, message: String },
    /// Reading the weights to embed failed (names the file and what is wrong).
    #[error(transparent)]
    Weights(#[from] WeightsError),
    /// Reading the tokenizer to embed failed.
    #[error(transparent)]
    Tokenizer(#[from] TokenizeError),
    /// A weight the entries read is not in the checkpoint the model was loaded from: the
    /// checkpoint changed since, or a compiler bug.
    #[error("tensor \"{key}\" is no longer in the weights of {}: was the checkpoint replaced while compiling?", dir.display())]
    WeightVanished { key: String, dir: PathBuf },
    /// A weight the entries read was not loaded with the model (compiler bug).
    #[error("compiler bug: entry points read tensor \"{key}\", which the model did not load")]
    WeightNotLoaded { key: String },
    /// A weight cannot be laid out as the kernels read it (names the prepared tensor).
    #[error("weight \"{key}\" cannot be laid out for the kernels: {source}")]
    Prepare {
        key: String,
        source: cranformer_runtime::gemm::quant::PackError,
    },
    /// Loading the compiled entry points into an engine failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> AotError + '_ {
    move |source| AotError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Reports the stages of a compilation (the `compile` command draws them).
pub trait Progress {
    /// A new stage starts; `total` is its number of steps (0 when it has none).
    fn stage(&mut self, name: &str, total: usize);
    /// `done` of the current stage's steps are done; `what` names the last one.
    fn step(&mut self, done: usize, what: &str);
}

/// Progress that goes nowhere.
pub struct Quiet;

impl Progress for Quiet {
    fn stage(&mut self, _: &str, _: usize) {}
    fn step(&mut self, _: usize, _: &str) {}
}

/// A model's entry points as a relocatable object, and what the host needs to call them.
pub struct ObjectCode {
    pub bytes: Vec<u8>,
    pub entries: Vec<EntryMeta>,
}

/// Lowers every entry of `model` into one position-independent object in which each entry
/// function (`cranformer_entry_<name>`) is an exported symbol and every kernel is local.
pub fn emit_object(
    model: &Model,
    options: LowerOptions,
    progress: &mut dyn Progress,
) -> Result<ObjectCode, AotError> {
    let isa = codegen::native_isa("speed", true, codegen::Features::Executable)?;
    let builder = ObjectBuilder::new(
        isa,
        "cranformer_model",
        cranelift_module::default_libcall_names(),
    )
    .map_err(|e| AotError::Object(e.to_string()))?;
    let mut module = ObjectModule::new(builder);
    let mut entries = vec![];
    let optimized = model.optimized(None).map_err(CodegenError::from)?;
    progress.stage("lowering", optimized.len());
    {
        let mut l = Lowering::with_options(&mut module, options)?;
        for (i, (name, graph)) in optimized.iter().enumerate() {
            for (_, meta) in codegen::lower_all(&mut l, &[graph])? {
                entries.push(meta);
            }
            progress.step(i + 1, name);
        }
    }
    progress.stage("writing the object", 0);
    let bytes = module
        .finish()
        .emit()
        .map_err(|e| AotError::Object(e.to_string()))?;
    Ok(ObjectCode { bytes, entries })
}

/// Runs the system C compiler (`$CC`, else `cc`) with `args`.
pub fn cc(what: &str, args: &[&std::ffi::OsStr]) -> Result<(), AotError> {
    let program = std::env::var_os("CC").unwrap_or_else(|| "cc".into());
    let command = std::iter::once(program.as_os_str())
        .chain(args.iter().copied())
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    let out = Command::new(&program)
        .args(args)
        .output()
        .map_err(|e| AotError::Toolchain {
            what: what.into(),
            command: command.clone(),
            stderr: format!(
                "{e} (a C compiler is needed to link compiled models: install gcc or clang, or set CC)"
            ),
        })?;
    if !out.status.success() {
        return Err(AotError::Toolchain {
            what: what.into(),
            command,
            stderr: String::from_utf8_lossy(&out.stderr).trim_end().to_string(),
        });
    }
    Ok(())
}

/// Where an executable finds its weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightsMode {
    /// The safetensors bytes are part of the executable (mapped with it, read in place).
    Embed,
    /// The executable records the safetensors path(s) and maps them at start-up.
    External,
}

/// What [`write_executable`] needs besides the model.
pub struct ExeOptions<'a> {
    pub output: &'a Path,
    pub weights: WeightsMode,
    /// The runtime's static library (`libcranformer_exe.a`), which defines
    /// `cranformer_exe_main`.
    pub runtime_lib: &'a Path,
    /// Native libraries the runtime needs (`-lgcc_s -lpthread ...`).
    pub native_libs: &'a [String],
    /// Scratch space for the object, the glue and the prepared weights.
    pub work_dir: &'a Path,
    /// How the code is lowered: `weight_format` decides how the matmul weights are stored
    /// (embedded already packed, int8 at about a quarter of f32's bytes).
    pub lower: LowerOptions,
}

/// Compiles `model` into a standalone executable.
pub fn write_executable(
    model: &Model,
    opts: &ExeOptions,
    progress: &mut dyn Progress,
) -> Result<(), AotError> {
    let code = emit_object(model, opts.lower, progress)?;
    let dir = opts.work_dir;
    let object = dir.join("model.o");
    std::fs::write(&object, &code.bytes).map_err(io(&object))?;

    let weights = Weights::open(&model.dir)?;
    let files = weight_files(&weights);
    let mut shapes = vec![];
    for key in model.weights.keys() {
        let info = weights.info(key).ok_or_else(|| AotError::WeightVanished {
            key: key.clone(),
            dir: model.dir.clone(),
        })?;
        shapes.push((key.clone(), info.shape.clone()));
    }
    let kind = model.config.tokenizer_kind();
    let tokenizer = Tokenizer::from_model_dir(&model.dir, kind).and_then(|t| t.to_json())?;
    let external = match opts.weights {
        WeightsMode::Embed => vec![],
        WeightsMode::External => files
            .iter()
            .map(|f| std::fs::canonicalize(f).map_err(io(f)))
            .collect::<Result<_, _>>()?,
    };
    let program = Program {
        version: PROGRAM_VERSION,
        source: model.dir.display().to_string(),
        info: model.info.clone(),
        tokenizer_kind: kind,
        entries: code.entries.clone(),
        weights: shapes,
        external,
        embedded: opts.weights == WeightsMode::Embed,
        cpu_features: cranformer_runtime::cpu_features::for_executables()
            .into_iter()
            .map(|(_, name)| name.to_string())
            .collect(),
    };
    let program_json = dir.join("program.json");
    let json = serde_json::to_vec(&program).expect("a program serialises");
    std::fs::write(&program_json, json).map_err(io(&program_json))?;
    let tokenizer_json = dir.join("tokenizer.json");
    std::fs::write(&tokenizer_json, tokenizer).map_err(io(&tokenizer_json))?;

    let embedded = match opts.weights {
        WeightsMode::External => None,
        WeightsMode::Embed => {
            progress.stage("laying out weights", 0);
            let prepared = dir.join("prepared.safetensors");
            write_prepared(model, &code.entries, &prepared)?;
            Some(prepared)
        }
    };

    let blobs_s = dir.join("blobs.s");
    let blobs = blobs_asm(&program_json, &tokenizer_json, embedded.as_deref());
    std::fs::write(&blobs_s, blobs).map_err(io(&blobs_s))?;
    let glue_c = dir.join("glue.c");
    std::fs::write(&glue_c, glue_c_source(&code.entries, embedded.is_some()))
        .map_err(io(&glue_c))?;

    progress.stage(
        if embedded.is_some() {
            "embedding weights"
        } else {
            "embedding the tokenizer"
        },
        0,
    );
    let blobs_o = dir.join("blobs.o");
    cc(
        "assembling the embedded data",
        &[
            "-c".as_ref(),
            blobs_s.as_os_str(),
            "-o".as_ref(),
            blobs_o.as_os_str(),
        ],
    )?;
    progress.stage("linking", 0);
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "-O2".as_ref(),
        "-o".as_ref(),
        opts.output.as_os_str(),
        glue_c.as_os_str(),
        blobs_o.as_os_str(),
        object.as_os_str(),
        opts.runtime_lib.as_os_str(),
        // The runtime library holds all of std and the tokenizer; keep what main reaches.
        "-Wl,--gc-sections".as_ref(),
        "-Wl,--as-needed".as_ref(),
        "-s".as_ref(),
    ];
    args.extend(opts.native_libs.iter().map(std::ffi::OsStr::new));
    cc("linking the executable", &args)?;
    Ok(())
}

/// The distinct files the checkpoint's tensors come from, in a stable order.
fn weight_files(weights: &Weights) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = weights
        .keys()
        .iter()
        .filter_map(|k| weights.info(k).map(|i| i.file.clone()))
        .collect();
    files.sort();
    files.dedup();
    files
}

/// Writes every weight the entries read, laid out as each entry's kernels read it (packed
/// matmul panels, padded biases), as F32 tensors named by [`prepared_key`] in one safetensors
/// file: the executable then uses them in place. The header is padded so the data starts at a
/// multiple of 64 bytes, which the embedding section's alignment preserves.
fn write_prepared(model: &Model, entries: &[EntryMeta], out: &Path) -> Result<(), AotError> {
    use std::io::Write;
    let mut items = BTreeMap::new();
    for e in entries {
        for (key, prep) in &e.weights {
            // Derived weights (a fused projection's `concat(..)`) are built here and embedded
            // laid out, like any other.
            let raw = model
                .weight(key)
                .ok_or_else(|| AotError::WeightNotLoaded { key: key.clone() })?;
            let len = prep.prepared_len(raw.len());
            items.insert(prepared_key(key, *prep), (raw, *prep, len));
        }
    }
    let mut header = serde_json::Map::new();
    let mut offset = 0;
    for (name, (_, _, len)) in &items {
        let end = offset + 4 * len;
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F32", "shape": [len], "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let mut text = serde_json::Value::Object(header).to_string();
    while !(8 + text.len()).is_multiple_of(64) {
        text.push(' ');
    }
    let file = std::fs::File::create(out).map_err(io(out))?;
    let mut w = std::io::BufWriter::new(file);
    w.write_all(&(text.len() as u64).to_le_bytes())
        .and_then(|()| w.write_all(text.as_bytes()))
        .map_err(io(out))?;
    // Safetensors is little-endian, as are the hosts Cranelift targets here.
    const _: () = assert!(cfg!(target_endian = "little"));
    for (name, (raw, prep, len)) in &items {
        let data = prep.apply(raw).map_err(|source| AotError::Prepare {
            key: name.clone(),
            source,
        })?;
        assert_eq!(data.len(), *len, "prepared length");
        // SAFETY: any f32 slice is readable as bytes.
        let bytes =
            unsafe { std::slice::from_raw_parts(data.as_ptr().cast::<u8>(), 4 * data.len()) };
        w.write_all(bytes).map_err(io(out))?;
    }
    w.flush().map_err(io(out))
}

/// A gas string literal for `path`: quotes, backslashes and every byte outside printable
/// ASCII as octal escapes, so any path survives.
fn gas_string(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut s = String::from("\"");
    for &b in path.as_os_str().as_bytes() {
        if b.is_ascii_graphic() && b != b'"' && b != b'\\' || b == b' ' {
            s.push(b as char);
        } else {
            let _ = write!(s, "\\{b:03o}");
        }
    }
    s.push('"');
    s
}

/// The assembly that embeds the program description, the tokenizer and the weights, each
/// between a start and an end symbol. The weights get a 64-byte aligned read-only section of
/// their own: the safetensors data offsets are then aligned as in a page-aligned mapping,
/// so F32 tensors are read in place.
fn blobs_asm(program: &Path, tokenizer: &Path, weights: Option<&Path>) -> String {
    let mut s =
        String::from("# Generated by cranformer compile: the data a compiled model carries.\n");
    let mut blob = |name: &str, section: &str, align: usize, path: &Path| {
        let _ = write!(
            s,
            "\t.section {section},\"a\",@progbits\n\t.balign {align}\n\t.globl {name}\n\t.hidden {name}\n{name}:\n\t.incbin {}\n\t.globl {name}_end\n\t.hidden {name}_end\n{name}_end:\n",
            gas_string(path)
        );
    };
    blob("cf_program_json", ".rodata.cranformer_program", 8, program);
    blob(
        "cf_tokenizer_json",
        ".rodata.cranformer_tokenizer",
        8,
        tokenizer,
    );
    if let Some(w) = weights {
        blob("cf_weights", ".rodata.cranformer_weights", 64, w);
    }
    s.push_str("\t.section .note.GNU-stack,\"\",@progbits\n");
    s
}

/// The C glue: the entry table and `main`, which hands the table to the runtime.
fn glue_c_source(entries: &[EntryMeta], weights: bool) -> String {
    let mut s = String::from(
        "/* Generated by cranformer compile; the structs are the runtime's (runtime/src/glue.rs). */\n",
    );
    s.push_str(&cranformer_runtime::glue::c_declarations());
    s.push_str(
        "extern const uint8_t cf_program_json[], cf_program_json_end[];\n\
         extern const uint8_t cf_tokenizer_json[], cf_tokenizer_json_end[];\n",
    );
    if weights {
        s.push_str("extern const uint8_t cf_weights[], cf_weights_end[];\n");
        s.push_str("static const struct cf_blob shards[] = {{cf_weights, cf_weights_end}};\n");
    }
    for e in entries {
        let _ = writeln!(s, "int64_t {}(const void *ctx);", e.symbol);
    }
    s.push_str("static const struct cf_entry entries[] = {\n");
    for e in entries {
        // Entry names come from the frontends: identifiers, no escaping needed.
        assert!(e
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_'));
        let _ = writeln!(s, "  {{\"{}\", {}}},", e.name, e.symbol);
    }
    let _ = write!(
        s,
        "}};\nstatic const struct cf_program program = {{\n  {PROGRAM_VERSION},\n  \
         {{cf_program_json, cf_program_json_end}},\n  {{cf_tokenizer_json, cf_tokenizer_json_end}},\n  \
         {}, entries,\n  {}, {}\n}};\n\
         int main(int argc, char **argv) {{ return cranformer_exe_main(argc, argv, &program); }}\n",
        entries.len(),
        usize::from(weights),
        if weights { "shards" } else { "0" },
    );
    s
}

/// The model's code linked ahead of time into a shared object and loaded into this process:
/// what a compiled executable runs, for benchmarks (`cranformer bench --engine aot`).
pub struct SharedObjectEngine {
    engine: NativeEngine,
    compile_time: Duration,
    link_time: Duration,
    prepare_time: Duration,
    // Declared last: the code must outlive the entries that point into it.
    _library: libloading::Library,
    _model: Arc<Model>,
}

impl SharedObjectEngine {
    /// Lowers `model` into an object, links it with `cc -shared` in a temporary directory and
    /// loads it.
    pub fn new(model: Arc<Model>) -> Result<SharedObjectEngine, AotError> {
        SharedObjectEngine::with_options(model, LowerOptions::default())
    }

    /// [`SharedObjectEngine::new`] lowered with `options` (e.g. a narrow weight format).
    pub fn with_options(
        model: Arc<Model>,
        options: LowerOptions,
    ) -> Result<SharedObjectEngine, AotError> {
        let start = Instant::now();
        let code = emit_object(&model, options, &mut Quiet)?;
        let compile_time = start.elapsed();
        let start = Instant::now();
        let dir = tempfile::Builder::new()
            .prefix("cranformer-aot")
            .tempdir()
            .map_err(io(&std::env::temp_dir()))?;
        let object = dir.path().join("model.o");
        let library = dir.path().join("model.so");
        std::fs::write(&object, &code.bytes).map_err(io(&object))?;
        cc(
            "linking the shared object",
            &[
                "-shared".as_ref(),
                "-o".as_ref(),
                library.as_os_str(),
                object.as_os_str(),
            ],
        )?;
        let load_err = |message: String| AotError::Load {
            path: library.clone(),
            message,
        };
        // SAFETY: the library is the object written above: it has no initialisers.
        let lib =
            unsafe { libloading::Library::new(&library) }.map_err(|e| load_err(e.to_string()))?;
        let mut entries = vec![];
        for meta in code.entries {
            // SAFETY: the symbol is the entry function generated for `meta`, with the
            // `EntryFn` signature; the library outlives the engine's entries.
            let func: EntryFn = unsafe {
                *lib.get::<EntryFn>(meta.symbol.as_bytes())
                    .map_err(|e| load_err(e.to_string()))?
            };
            entries.push((meta, func));
        }
        let link_time = start.elapsed();
        let start = Instant::now();
        // SAFETY: as above.
        let engine =
            unsafe { NativeEngine::new("aot", entries, &model.weights, Default::default()) }?;
        Ok(SharedObjectEngine {
            engine,
            compile_time,
            link_time,
            prepare_time: start.elapsed(),
            _library: lib,
            _model: model,
        })
    }

    /// Time spent generating code (lowering, Cranelift, writing the object).
    pub fn compile_time(&self) -> Duration {
        self.compile_time
    }

    /// Time spent linking and loading the shared object.
    pub fn link_time(&self) -> Duration {
        self.link_time
    }

    /// Time spent laying out weights for the kernels (packing matmul panels).
    pub fn prepare_time(&self) -> Duration {
        self.prepare_time
    }
}

impl Engine for SharedObjectEngine {
    fn name(&self) -> &str {
        "aot"
    }

    fn run(&mut self, entry: &str, inputs: &[(&str, &Tensor)]) -> Result<Outputs, EngineError> {
        self.engine.run(entry, inputs)
    }

    fn run_cached(
        &mut self,
        entry: &str,
        inputs: &[(&str, &Tensor)],
        cache: &mut cranformer_runtime::kv_cache::KvCache,
    ) -> Result<Outputs, EngineError> {
        self.engine.run_cached(entry, inputs, cache)
    }
}
