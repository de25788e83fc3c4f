//! Cranelift lowering of a graph, shared by the JIT (cranelift-jit) and the ahead-of-time
//! driver (cranelift-object): both hand a `cranelift_module::Module` to [`Lowering`].
//!
//! Each op becomes a call to a kernel function specialised on the op's constants (channel
//! counts, heads, eps) and deduplicated across the whole model; batch and sequence sizes are
//! run-time arguments. Each graph becomes one exported entry function
//! (`cranformer_entry_<name>`) whose ABI and memory plan are described in
//! `cranformer_runtime::native`: it loads the value table and dims from its context, computes
//! every size from the dims and calls the kernels in topological order.
//!
//! One file per kernel family: `matmul`, `elementwise` (with `math`'s polynomials), `norm`,
//! `attention`, `memory` (gathers, copies, pooling); `entry` writes the entry functions.

mod attention;
mod elementwise;
mod entry;
pub mod ir;
pub mod math;
mod matmul;
mod memory;
mod norm;
mod parallel;

use cranelift_codegen::ir::{types::I64, AbiParam, Function, InstBuilder, UserFuncName};
use cranelift_codegen::isa::{OwnedTargetIsa, TargetIsa};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_codegen::{control::ControlPlane, Context};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_module::{DataId, FuncId, Linkage, Module, ModuleError, ModuleReloc};
use std::collections::HashMap;

pub use cranformer_runtime::gemm::WeightFormat;
pub use entry::entry_symbol;
use ir::Kb;
pub use memory::{slices_read_in_place, SliceView};

/// Errors lowering a graph. Every variant but `DType` is a compiler bug or an unsupported host.
#[derive(Debug, thiserror::Error)]
pub enum CodegenError {
    /// Cranelift does not support this machine (compiler environment problem).
    #[error("cannot generate code for this machine: {0}")]
    Host(String),
    /// A generated function failed Cranelift's verifier (compiler bug).
    #[error("compiler bug: function {function} does not verify:\n{errors}")]
    Verifier { function: String, errors: String },
    /// Declaring, defining or finalising a function failed (compiler bug).
    #[error("compiler bug: {0}")]
    Module(Box<ModuleError>),
    /// Cranelift could not compile a function (compiler bug).
    #[error("compiler bug: compiling {function}: {message}")]
    Compile { function: String, message: String },
    /// A value has an element type the generated kernels do not compute with yet (i8, bf16,
    /// f16 weights): the graph needs a dequantising pass first.
    #[error("cannot compile {graph}: value {value} is {ty}; generated code computes with f32 and i64 only")]
    DType {
        graph: String,
        value: String,
        ty: String,
    },
    /// Preparing the compiled entries to run failed (a weight they read is missing).
    #[error("preparing the compiled code: {0}")]
    Prepare(cranformer_runtime::EngineError),
    /// The pass pipeline failed before lowering (see [`crate::passes::PassError`]).
    #[error(transparent)]
    Pass(#[from] crate::passes::PassError),
    /// An entry point reads a weight the model did not load (names the tensor).
    #[error(transparent)]
    Weight(#[from] cranformer_runtime::native::WeightLoadError),
}

impl From<ModuleError> for CodegenError {
    fn from(e: ModuleError) -> Self {
        CodegenError::Module(Box::new(e))
    }
}

/// Which x86-64 features Cranelift may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Features {
    /// Every feature of the CPU compiling (AVX-512 included): the JIT runs where it compiles.
    /// Unless `CRANFORMER_ISA` holds the runtime below the CPU's best: then as
    /// [`Features::Executable`] (`cranformer_runtime::cpu_features::jit_takes_every_host_feature`).
    Host,
    /// Those of [`cranformer_runtime::cpu_features::EXECUTABLE_FEATURES`] the CPU compiling
    /// has (x86-64-v3 at most; v2 on the portable path: `cpu_features::for_executables`): an
    /// executable is copied to other machines.
    Executable,
}

/// The host's ISA with `features` at `opt_level`; `pic` for object files linked into
/// position-independent executables (the JIT does not need it).
pub fn native_isa(
    opt_level: &str,
    pic: bool,
    features: Features,
) -> Result<OwnedTargetIsa, CodegenError> {
    let every = features == Features::Host
        && cranformer_runtime::cpu_features::jit_takes_every_host_feature();
    let mut isa =
        cranelift_native::builder_with_options(every).map_err(|e| CodegenError::Host(e.into()))?;
    if !every {
        for (setting, _) in cranformer_runtime::cpu_features::for_executables() {
            isa.enable(setting)
                .map_err(|e| CodegenError::Host(format!("{setting}: {e}")))?;
        }
    }
    isa.finish(settings::Flags::new(shared_flags(opt_level, pic)?))
        .map_err(|e| CodegenError::Host(e.to_string()))
}

/// `isa` (its target and feature flags) at `opt_level` "none": the matmul micro-kernels' ISA
/// for a module compiled for `isa`.
fn unoptimized(isa: &dyn TargetIsa) -> Result<OwnedTargetIsa, CodegenError> {
    let mut builder = cranelift_codegen::isa::lookup(isa.triple().clone())
        .map_err(|e| CodegenError::Host(e.to_string()))?;
    for flag in isa.isa_flags() {
        builder
            .set(flag.name, &flag.value_string())
            .map_err(|e| CodegenError::Host(format!("{}: {e}", flag.name)))?;
    }
    builder
        .finish(settings::Flags::new(shared_flags(
            "none",
            isa.flags().is_pic(),
        )?))
        .map_err(|e| CodegenError::Host(e.to_string()))
}

fn shared_flags(opt_level: &str, pic: bool) -> Result<settings::Builder, CodegenError> {
    let mut flags = settings::builder();
    let set = |f: &mut settings::Builder, k: &str, v: &str| {
        f.set(k, v)
            .map_err(|e| CodegenError::Host(format!("{k}={v}: {e}")))
    };
    set(&mut flags, "opt_level", opt_level)?;
    set(
        &mut flags,
        "enable_verifier",
        if cfg!(debug_assertions) {
            "true"
        } else {
            "false"
        },
    )?;
    set(&mut flags, "is_pic", if pic { "true" } else { "false" })?;
    set(&mut flags, "use_colocated_libcalls", "false")?;
    Ok(flags)
}

/// Which module-level items a kernel body refers to.
#[derive(Default, Clone)]
pub struct Imports {
    pub funcs: Vec<FuncId>,
    pub data: Vec<DataId>,
}

/// Choices the lowering makes for the whole model, shared by the JIT and AOT drivers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LowerOptions {
    /// How every matmul weight is stored (`--dtype`): f32 panels for the f32 kernels, or a
    /// narrow format (int8, bf16, f16) packed for the runtime's `qgemm`. Attention scores,
    /// softmax and norms compute in f32 whatever this says; so do embedding gathers, which
    /// read a tied head's narrow panels and widen them.
    pub weight_format: WeightFormat,
}

impl Default for LowerOptions {
    fn default() -> Self {
        LowerOptions {
            weight_format: WeightFormat::F32,
        }
    }
}

/// Emits kernels and entry functions into a module.
pub struct Lowering<'m, M: Module> {
    pub module: &'m mut M,
    kernels: HashMap<String, FuncId>,
    fctx: FunctionBuilderContext,
    /// Compiles the matmul micro-kernels: at `opt_level` "none" Cranelift keeps the FMAs in
    /// the order written; at "speed" it sinks them and spills (issue 3: 55 vs 30 GFLOP/s).
    micro_isa: OwnedTargetIsa,
    /// When set, every function's IR is appended here as text (`--emit clif`).
    pub clif: Option<String>,
    pub options: LowerOptions,
}

impl<'m, M: Module> Lowering<'m, M> {
    pub fn new(module: &'m mut M) -> Result<Self, CodegenError> {
        Lowering::with_options(module, LowerOptions::default())
    }

    pub fn with_options(module: &'m mut M, options: LowerOptions) -> Result<Self, CodegenError> {
        let micro_isa = unoptimized(module.isa())?;
        Ok(Lowering {
            module,
            kernels: HashMap::new(),
            fctx: FunctionBuilderContext::new(),
            micro_isa,
            clif: None,
            options,
        })
    }

    /// The kernel named `name` taking `params` i64s (and returning one when `ret`), built by
    /// `body` on first use.
    pub fn kernel(
        &mut self,
        name: &str,
        params: usize,
        ret: bool,
        imports: Imports,
        body: impl FnOnce(&mut Kb, &[cranelift_codegen::ir::Value], &Refs),
    ) -> Result<FuncId, CodegenError> {
        self.define(
            name,
            params,
            ret,
            imports,
            false,
            Linkage::Local,
            None,
            body,
        )
    }

    /// Like [`Self::kernel`], compiled with `opt_level` "none" (see `micro_isa`).
    pub fn micro_kernel(
        &mut self,
        name: &str,
        params: usize,
        body: impl FnOnce(&mut Kb, &[cranelift_codegen::ir::Value], &Refs),
    ) -> Result<FuncId, CodegenError> {
        let imports = Imports::default();
        self.define(
            name,
            params,
            false,
            imports,
            true,
            Linkage::Local,
            None,
            body,
        )
    }

    pub fn signature(&self, params: usize, ret: bool) -> cranelift_codegen::ir::Signature {
        let mut sig = self.module.make_signature();
        sig.params.extend((0..params).map(|_| AbiParam::new(I64)));
        if ret {
            sig.returns.push(AbiParam::new(I64));
        }
        sig
    }

    #[allow(clippy::too_many_arguments)]
    fn define(
        &mut self,
        name: &str,
        params: usize,
        ret: bool,
        imports: Imports,
        micro: bool,
        linkage: Linkage,
        annotate: Option<&dyn Fn(u32) -> String>,
        body: impl FnOnce(&mut Kb, &[cranelift_codegen::ir::Value], &Refs),
    ) -> Result<FuncId, CodegenError> {
        if let Some(&id) = self.kernels.get(name) {
            return Ok(id);
        }
        let sig = self.signature(params, ret);
        let id = self.module.declare_function(name, linkage, &sig)?;
        let mut func = Function::with_name_signature(UserFuncName::user(0, id.as_u32()), sig);
        let refs = Refs {
            funcs: imports
                .funcs
                .iter()
                .map(|&f| self.module.declare_func_in_func(f, &mut func))
                .collect(),
            data: imports
                .data
                .iter()
                .map(|&d| self.module.declare_data_in_func(d, &mut func))
                .collect(),
        };
        let frontend_config = self.module.target_config();
        let native_fma = if micro {
            self.micro_isa.has_native_fma()
        } else {
            self.module.isa().has_native_fma()
        };
        {
            let mut b = FunctionBuilder::new(&mut func, &mut self.fctx);
            let entry = b.create_block();
            b.append_block_params_for_function_params(entry);
            b.switch_to_block(entry);
            let args = b.block_params(entry).to_vec();
            let mut k = Kb { b, native_fma };
            body(&mut k, &args, &refs);
            // Functions without a result fall off the end of `body`; the others return.
            if !ret {
                k.b.ins().return_(&[]);
            }
            k.b.seal_all_blocks();
            k.b.finalize(frontend_config);
        }
        let isa: &dyn TargetIsa = if micro {
            &*self.micro_isa
        } else {
            self.module.isa()
        };
        if cfg!(debug_assertions) {
            cranelift_codegen::verify_function(&func, isa).map_err(|e| CodegenError::Verifier {
                function: name.into(),
                errors: cranelift_codegen::print_errors::pretty_verifier_error(&func, None, e),
            })?;
        }
        if let Some(text) = &mut self.clif {
            text.push_str(&format!("; {name}\n"));
            for f in &imports.funcs {
                if let Some((callee, _)) = self.kernels.iter().find(|(_, id)| *id == f) {
                    text.push_str(&format!(";   calls u0:{} = {callee}\n", f.as_u32()));
                }
            }
            match annotate {
                Some(a) => text.push_str(&annotated(&func, a)),
                None => text.push_str(&func.display().to_string()),
            }
            text.push('\n');
        }
        let mut ctx = Context::for_function(func);
        if micro {
            ctx.compile(&*self.micro_isa, &mut ControlPlane::default())
                .map_err(|e| CodegenError::Compile {
                    function: name.into(),
                    message: format!("{:?}", e.inner),
                })?;
            let compiled = ctx.compiled_code().expect("compiled above");
            let align = (compiled.buffer.alignment as u64).max(16);
            let bytes = compiled.code_buffer().to_vec();
            let relocs: Vec<ModuleReloc> = compiled
                .buffer
                .relocs()
                .iter()
                .map(|r| ModuleReloc::from_mach_reloc(r, &ctx.func, id))
                .collect();
            self.module
                .define_function_bytes(id, align, &bytes, &relocs)?;
        } else {
            self.module.define_function(id, &mut ctx)?;
        }
        self.kernels.insert(name.into(), id);
        Ok(id)
    }
}

/// Module items imported into the function being built, in [`Imports`] order.
pub struct Refs {
    pub funcs: Vec<cranelift_codegen::ir::FuncRef>,
    pub data: Vec<cranelift_codegen::ir::GlobalValue>,
}

/// The function's text with a `;` comment line naming the graph node wherever the source
/// location (set to the node's index by the entry writer) changes.
fn annotated(func: &Function, note: &dyn Fn(u32) -> String) -> String {
    use cranelift_codegen::write::{decorate_function, FuncWriter, PlainWriter};
    struct W<'a> {
        note: &'a dyn Fn(u32) -> String,
        last: Option<u32>,
    }
    impl FuncWriter for W<'_> {
        fn write_block_header(
            &mut self,
            w: &mut dyn std::fmt::Write,
            func: &Function,
            block: cranelift_codegen::ir::Block,
            indent: usize,
        ) -> std::fmt::Result {
            PlainWriter.write_block_header(w, func, block, indent)
        }
        fn write_instruction(
            &mut self,
            w: &mut dyn std::fmt::Write,
            func: &Function,
            aliases: &cranelift_codegen::entity::SecondaryMap<
                cranelift_codegen::ir::Value,
                Vec<cranelift_codegen::ir::Value>,
            >,
            inst: cranelift_codegen::ir::Inst,
            indent: usize,
        ) -> std::fmt::Result {
            let loc = func.srcloc(inst);
            if !loc.is_default() && self.last != Some(loc.bits()) {
                self.last = Some(loc.bits());
                writeln!(w, "{:indent$}; {}", "", (self.note)(loc.bits()))?;
            }
            PlainWriter.write_instruction(w, func, aliases, inst, indent)
        }
    }
    let mut s = String::new();
    let _ = decorate_function(&mut W { note, last: None }, &mut s, func);
    s
}

/// Lowers every graph of `graphs` into `module`, returning each entry's metadata.
pub fn lower_all<M: Module>(
    lowering: &mut Lowering<'_, M>,
    graphs: &[&crate::graph::Graph],
) -> Result<Vec<(FuncId, cranformer_runtime::native::EntryMeta)>, CodegenError> {
    graphs
        .iter()
        .map(|g| entry::lower_entry(lowering, g))
        .collect()
}

/// The Cranelift IR of `graph`'s entry function and every kernel it calls, with comments
/// naming the graph node each call comes from (`--emit clif`).
pub fn emit_clif(graph: &crate::graph::Graph) -> Result<String, CodegenError> {
    emit_clif_with(graph, LowerOptions::default())
}

/// [`emit_clif`] lowered with `options` (e.g. a narrow weight format).
pub fn emit_clif_with(
    graph: &crate::graph::Graph,
    options: LowerOptions,
) -> Result<String, CodegenError> {
    let isa = native_isa("speed", false, Features::Host)?;
    let builder =
        cranelift_jit::JITBuilder::with_isa(isa, cranelift_module::default_libcall_names());
    let mut module = cranelift_jit::JITModule::new(builder);
    let text = {
        let mut l = Lowering::with_options(&mut module, options)?;
        l.clif = Some(String::new());
        entry::lower_entry(&mut l, graph).map(|_| l.clif.take().unwrap_or_default())
    };
    // SAFETY: nothing was finalised; no pointer into the module exists.
    unsafe { module.free_memory() };
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enabled(isa: &dyn TargetIsa) -> Vec<&'static str> {
        isa.isa_flags()
            .into_iter()
            .filter(|f| f.as_bool() == Some(true))
            .map(|f| f.name)
            .collect()
    }

    /// An object file of two kernels `out = a·b + c` over f32x4 (one at `opt_level` speed,
    /// one a micro-kernel), through [`Kb::fma`] or, with `raw`, Cranelift's `fma` itself,
    /// compiled for x86-64 with the portable path's features (whatever this CPU has) and,
    /// with `fma`, AVX and FMA.
    fn fma_object(fma: bool, raw: bool) -> Vec<u8> {
        use cranformer_runtime::cpu_features::{EXECUTABLE_FEATURES, PORTABLE_FEATURES};
        let mut b = cranelift_codegen::isa::lookup_by_name("x86_64-unknown-linux-gnu").unwrap();
        let wide = if fma { &["avx", "fma"][..] } else { &[] };
        for (setting, name) in EXECUTABLE_FEATURES {
            if PORTABLE_FEATURES.contains(&name) || wide.contains(&name) {
                b.enable(setting).unwrap();
            }
        }
        let isa = b
            .finish(settings::Flags::new(shared_flags("speed", true).unwrap()))
            .unwrap();
        let builder = cranelift_object::ObjectBuilder::new(
            isa,
            "fma",
            cranelift_module::default_libcall_names(),
        )
        .unwrap();
        let mut module = cranelift_object::ObjectModule::new(builder);
        let mut l = Lowering::new(&mut module).unwrap();
        let body = |k: &mut Kb, p: &[cranelift_codegen::ir::Value]| {
            let (a, b, c) = (k.ldv(p[0], 0), k.ldv(p[1], 0), k.ldv(p[2], 0));
            let y = if raw {
                k.b.ins().fma(a, b, c)
            } else {
                k.fma(a, b, c)
            };
            k.st(y, p[2], 0);
        };
        l.kernel("t", 3, false, Imports::default(), |k, p, _| body(k, p))
            .unwrap();
        l.micro_kernel("m", 3, |k, p, _| body(k, p)).unwrap();
        module.finish().emit().unwrap()
    }

    fn calls_fmaf(object: &[u8]) -> bool {
        object.windows(5).any(|w| w == b"fmaf\0")
    }

    #[test]
    fn without_fma_a_multiply_add_is_two_instructions_not_a_libm_call() {
        // Cranelift's own `fma` on an ISA without FMA calls libm per lane (the control: the
        // check sees that call), `Kb::fma` does not; with FMA neither does.
        assert!(calls_fmaf(&fma_object(false, true)));
        assert!(!calls_fmaf(&fma_object(false, false)));
        assert!(!calls_fmaf(&fma_object(true, false)));
    }

    #[test]
    fn executables_use_at_most_x86_64_v3_and_only_what_this_cpu_has() {
        let isa = native_isa("speed", true, Features::Executable).unwrap();
        let allowed: Vec<&str> = cranformer_runtime::cpu_features::for_executables()
            .iter()
            .map(|(setting, _)| *setting)
            .collect();
        let on = enabled(&*isa);
        for flag in &on {
            assert!(allowed.contains(flag), "{flag} enabled for an executable");
        }
        for flag in &allowed {
            assert!(on.contains(flag), "{flag} this CPU has is not used");
        }
        // The micro-kernels' ISA (opt_level none) keeps exactly these features.
        assert_eq!(enabled(&*unoptimized(&*isa).unwrap()), on);
        assert_eq!(
            unoptimized(&*isa).unwrap().flags().opt_level(),
            settings::OptLevel::None
        );
    }
}
