//! Runs compiled entry points: the ABI between generated code and the host, and the executor
//! that binds dims, plans memory, prepares weights and calls an entry function. Shared by the
//! JIT engine and by compiled executables, so it knows nothing of Cranelift.
//!
//! ABI of an entry function, `extern "C" fn(*const EntryCtx) -> i64`:
//! - `ctx.values` is a table of pointers, one per value slot: first the graph inputs (in
//!   [`EntryMeta::inputs`] order), then the prepared weights ([`EntryMeta::weights`] order),
//!   then the intermediate buffers ([`EntryMeta::buffers`] order). The host fills it.
//! - `ctx.dims` holds B, T, P and S (encoder tokens) as i64; every size inside the generated
//!   code is computed from them, so one compiled entry serves every batch and length.
//! - Generated code finds every field through the offsets in [`crate::abi`].
//! - The result is 0, or the code of an error in [`EntryMeta::errors`] (index + 1).
//!
//! Outputs are intermediate buffers (or inputs) that the host copies out after the call.

use crate::kv_cache::KvCache;
use crate::shape::{DType, Dims, TensorType};
use crate::weights::F32Buffer;
use crate::{EngineError, Outputs, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Name, element type and shape of an input or buffer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorSig {
    pub name: String,
    pub ty: TensorType,
}

impl TensorSig {
    pub fn bytes(&self, d: &Dims) -> usize {
        self.ty.bytes(d)
    }

    /// [`TensorSig::bytes`], or `None` if the size overflows (for sizes an executable's
    /// description claims).
    pub fn checked_bytes(&self, d: &Dims) -> Option<usize> {
        self.ty.checked_bytes(d)
    }
}

/// How a checkpoint tensor is laid out before the generated code reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum WeightPrep {
    AsIs,
    /// A matmul weight into column panels of [`PANEL`] columns ([`crate::gemm::pack_b`]):
    /// panel p holds, for each k, columns `PANEL*p..PANEL*p+PANEL` of the `[K, N]` matrix,
    /// zero-padded past N. `in_out` says whether the checkpoint stores `[K, N]` (Conv1D) or
    /// `[N, K]` (Linear).
    Panels {
        k: usize,
        n: usize,
        in_out: bool,
    },
    /// A bias zero-padded to a multiple of [`PANEL`] so micro-kernels load whole vectors.
    PadPanel {
        n: usize,
    },
    /// A matmul weight in a narrow format (int8, bf16, f16), packed by
    /// [`crate::gemm::PackedWeight`] and held in its word form
    /// ([`crate::gemm::quant::WordLayout`]) for [`crate::gemm::qgemm::cranformer_qgemm`]: what
    /// the compiler lays every matmul weight out as when it lowers with a non-f32
    /// `--dtype`; f32 weights keep [`WeightPrep::Panels`].
    Quantized {
        k: usize,
        n: usize,
        in_out: bool,
        format: crate::gemm::WeightFormat,
    },
}

/// Columns per packed weight panel: the runtime's widest micro-kernel tile. The generated
/// f32x4 kernel and the narrower runtime kernels read sub-panels of it, so one layout, made
/// at load or at compile time, serves every CPU.
pub const PANEL: usize = crate::gemm::PACK_NR;

impl WeightPrep {
    /// The fewest checkpoint values the preparation reads (`None`: any number, or overflow).
    pub fn source_len(self) -> Option<usize> {
        match self {
            WeightPrep::AsIs => None,
            WeightPrep::Panels { k, n, .. } | WeightPrep::Quantized { k, n, .. } => {
                k.checked_mul(n)
            }
            WeightPrep::PadPanel { n } => Some(n),
        }
    }

    /// [`WeightPrep::prepared_len`] of a kernel layout (`Panels`, `PadPanel`, `Quantized`),
    /// or `None` if it overflows (or is `AsIs`, whose length is the checkpoint's), for the
    /// sizes an executable's description claims.
    pub fn checked_panel_len(self) -> Option<usize> {
        match self {
            WeightPrep::Panels { k, n, .. } => n.checked_next_multiple_of(PANEL)?.checked_mul(k),
            WeightPrep::PadPanel { n } => n.checked_next_multiple_of(PANEL),
            WeightPrep::Quantized { k, n, format, .. } => {
                crate::gemm::quant::WordLayout::checked_of(k, n, format).map(|l| l.len)
            }
            WeightPrep::AsIs => None,
        }
    }

    /// The prepared tensor from the checkpoint's data, which must hold at least
    /// [`WeightPrep::source_len`] values (only int8 can refuse a weight: see
    /// [`crate::gemm::quant::PackError`]).
    pub fn apply(self, w: &F32Buffer) -> Result<F32Buffer, crate::gemm::quant::PackError> {
        Ok(match self {
            WeightPrep::AsIs => {
                // Kernels read it as f32: widen a narrow checkpoint tensor now, not mid-run.
                let _ = &w[..];
                w.clone()
            }
            WeightPrep::Panels { k, n, in_out } => {
                // Packed straight into its pages: no copy of 440 MB for BERT-base.
                F32Buffer::in_huge_pages(n.div_ceil(PANEL) * k * PANEL, |out| {
                    crate::gemm::pack_b_into(w, k, n, in_out, PANEL, out)
                })
            }
            WeightPrep::PadPanel { n } => {
                let mut out = w[..n].to_vec();
                out.resize(n.div_ceil(PANEL) * PANEL, 0.0);
                F32Buffer::from_vec(out)
            }
            WeightPrep::Quantized {
                k,
                n,
                in_out,
                format,
            } => {
                // Packed from the stored elements: a BF16/F16 checkpoint is never widened to
                // a whole f32 copy for a narrow format.
                let packed =
                    crate::gemm::PackedWeight::pack_stored(w.stored(), k, n, in_out, format)?;
                F32Buffer::in_huge_pages(packed.words(), |out| packed.write_words(out))
            }
        })
    }

    /// Length in 4-byte words of the prepared tensor made from `raw_len` values.
    pub fn prepared_len(self, raw_len: usize) -> usize {
        match self {
            WeightPrep::AsIs => raw_len,
            WeightPrep::Panels { k, n, .. } => n.div_ceil(PANEL) * k * PANEL,
            WeightPrep::PadPanel { n } => n.div_ceil(PANEL) * PANEL,
            WeightPrep::Quantized { k, n, format, .. } => {
                crate::gemm::quant::WordLayout::of(k, n, format).len
            }
        }
    }
}

/// Where a weight slot's tensor comes from: a checkpoint tensor, or one the host derives from
/// several at load time. Derived sources are spelled as keys (`concat(a,b,c)`), so every
/// table keyed by weight name carries them, and a compiled executable with external weights
/// rebuilds them from the original safetensors keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WeightSource<'k> {
    Key(&'k str),
    /// The tensors stacked along their first axis, i.e. their row-major data end to end: a
    /// fused projection's weight `[N1+N2+.., K]` from `[Ni, K]` parts, or its bias.
    Concat(Vec<&'k str>),
}

impl<'k> WeightSource<'k> {
    /// Reads a weight key; checkpoint keys never contain a comma or start with `concat(`.
    pub fn parse(key: &'k str) -> WeightSource<'k> {
        match key
            .strip_prefix("concat(")
            .and_then(|rest| rest.strip_suffix(')'))
        {
            Some(list) => WeightSource::Concat(list.split(',').collect()),
            None => WeightSource::Key(key),
        }
    }

    /// The key of the concatenation of `parts`.
    pub fn concat_key(parts: &[&str]) -> String {
        format!("concat({})", parts.join(","))
    }

    /// The checkpoint keys it reads.
    pub fn keys(&self) -> Vec<&'k str> {
        match self {
            WeightSource::Key(k) => vec![k],
            WeightSource::Concat(parts) => parts.clone(),
        }
    }

    /// The tensor, built from the checkpoint's; `None` if a part is missing.
    pub fn resolve(&self, checkpoint: &dyn Fn(&str) -> Option<F32Buffer>) -> Option<F32Buffer> {
        match self {
            WeightSource::Key(k) => checkpoint(k),
            WeightSource::Concat(parts) => {
                let parts: Vec<F32Buffer> =
                    parts.iter().map(|p| checkpoint(p)).collect::<Option<_>>()?;
                // Parts stored in one 2-byte type stay in it (a fused QKV of a BF16
                // checkpoint packs to bf16 without a widened copy); mixed ones widen.
                let half = parts.first().and_then(F32Buffer::half);
                if half.is_some() && parts.iter().all(|p| p.half() == half) {
                    let mut bytes = Vec::with_capacity(parts.iter().map(|p| 2 * p.len()).sum());
                    for p in &parts {
                        match p.stored() {
                            crate::weights::Stored::F16(b) | crate::weights::Stored::Bf16(b) => {
                                bytes.extend_from_slice(b)
                            }
                            crate::weights::Stored::F32(_) => unreachable!("checked half()"),
                        }
                    }
                    return F32Buffer::from_half_bytes(half?, bytes);
                }
                let mut data = vec![];
                for p in &parts {
                    data.extend_from_slice(p);
                }
                Some(F32Buffer::from_vec(data))
            }
        }
    }
}

/// Where an output's data is after the call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Slot {
    Input(usize),
    Buffer(usize),
}

/// Everything the host needs to call one compiled entry point.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EntryMeta {
    pub name: String,
    /// The name of the generated function (`cranformer_entry_<name>`).
    pub symbol: String,
    pub inputs: Vec<TensorSig>,
    /// Source key ([`WeightSource`]) and preparation of each weight slot.
    pub weights: Vec<(String, WeightPrep)>,
    pub buffers: Vec<TensorSig>,
    pub outputs: Vec<(String, Slot)>,
    /// Messages for the generated code's error codes (code = index + 1).
    pub errors: Vec<String>,
    /// Whether the entry reads a first or last token, so needs T >= 1.
    pub needs_tokens: bool,
    /// Live range of each buffer in kernel-call steps, both ends inclusive: written at the
    /// first, last read at the second. Buffers whose ranges are disjoint may share memory.
    pub live: Vec<(u32, u32)>,
    /// KV-cache appends the code can do in place, as (input, buffer): the buffer is the
    /// `[B, P+T, C]` concatenation of the `past_*` input and the new rows, and nothing but
    /// attention reads either. Called over a cache ([`NativeEntry::run_cached`]), both slots
    /// point at the cache's `[B, capacity, C]` storage (`CtxDims::kv_cap` rows per batch row),
    /// so the code writes only the new rows and attention reads the cache where it lies.
    #[serde(default)]
    pub appends: Vec<(usize, usize)>,
}

impl EntryMeta {
    /// Checks that everything the host indexes by this metadata is in range: one live range
    /// per buffer, output slots that exist, weight layouts and constant sizes that do not
    /// overflow.
    pub fn check(&self) -> Result<(), String> {
        if self.live.len() != self.buffers.len() {
            return Err(format!(
                "{} live ranges for {} buffers",
                self.live.len(),
                self.buffers.len()
            ));
        }
        if let Some((b, (first, last))) = self.live.iter().enumerate().find(|(_, r)| r.0 > r.1) {
            return Err(format!("buffer {b} is live from step {first} to {last}"));
        }
        for &(i, b) in &self.appends {
            if i >= self.inputs.len() || b >= self.buffers.len() {
                return Err(format!(
                    "append of input {i} into buffer {b}, which does not exist"
                ));
            }
        }
        for (name, slot) in &self.outputs {
            let ok = match *slot {
                Slot::Input(i) => i < self.inputs.len(),
                Slot::Buffer(i) => i < self.buffers.len(),
            };
            if !ok {
                return Err(format!(
                    "output {name} is in {slot:?}, which does not exist"
                ));
            }
        }
        for (key, prep) in &self.weights {
            let overflows = match prep {
                WeightPrep::AsIs => false,
                _ => prep.source_len().is_none() || prep.checked_panel_len().is_none(),
            };
            if overflows {
                return Err(format!("weight {key}: layout {prep:?} overflows"));
            }
        }
        // With every symbolic dim at 1, a size must fit; larger dims are checked per call.
        let ones = Dims {
            batch: 1,
            seq: 1,
            past: 0,
            enc_seq: 1,
        };
        for sig in self.inputs.iter().chain(&self.buffers) {
            if sig
                .checked_bytes(&ones)
                .is_none_or(|b| b > isize::MAX as usize)
            {
                return Err(format!("{} has an overflowing size {}", sig.name, sig.ty));
            }
        }
        Ok(())
    }
}

/// What the generated entry function receives. Generated code reaches every field through
/// [`crate::abi::ctx`].
#[repr(C)]
pub struct EntryCtx {
    pub values: *const *mut u8,
    pub dims: CtxDims,
    /// Runtime services the generated code calls.
    pub rt: *const RuntimeFns,
}

/// The call's dims as generated code reads them: every size it computes comes from these.
#[repr(C)]
pub struct CtxDims {
    /// B.
    pub batch: i64,
    /// T.
    pub seq: i64,
    /// P.
    pub past: i64,
    /// S.
    pub enc_seq: i64,
    /// Positions per batch row of the KV-cache storage the host passed for in-place appends
    /// ([`EntryMeta::appends`]), or 0: then `past_*` inputs are `[B, P, C]` and their
    /// concatenations `[B, P+T, C]` buffers of their own.
    pub kv_cap: i64,
    /// With `kv_cap`: per batch row, the positions cached in that row (`[B]`, each at most
    /// P), the new rows being written after them; or null: P in every row. A row shorter than
    /// P leaves stale positions between its own and P, which the key mask must hide.
    pub kv_lens: *const i64,
}

pub use crate::gemm::GemmCall;

/// `c = act(a·b + bias) + residual` on packed panels with the tiling the call names (see
/// [`crate::gemm::cranformer_gemm`]).
pub type GemmFn = unsafe extern "C" fn(*const GemmCall);

/// Function pointers into the runtime, passed to generated code through [`EntryCtx`] rather
/// than linked by name, so the same code works JIT-compiled, in an executable, and in a
/// shared object loaded by a process that exports no symbols.
#[repr(C)]
pub struct RuntimeFns {
    /// The wide matmul, or null where only the generated f32x4 kernel should run
    /// (CPUs without AVX2, or `CRANFORMER_ISA=portable`).
    pub gemm: Option<GemmFn>,
    /// Runs `task(ctx, i)` for every `i < n` on the runtime's thread pool
    /// ([`crate::threads::cranformer_parallel_for`]); never null. Generated kernels hand it a
    /// per-task function and a pointer to their arguments (see `codegen::attention`).
    pub parallel_for: ParallelForFn,
    /// The narrow-weight matmul (int8, bf16, f16: [`crate::gemm::qgemm::cranformer_qgemm`]);
    /// never null: every format has a portable kernel, and the runtime picks the best one
    /// this CPU (and `CRANFORMER_ISA`) allows.
    pub qgemm: QGemmFn,
    /// Embedding rows from a prepared matmul weight's columns
    /// ([`crate::gemm::quant::cranformer_gather_columns`]): a tied head's only copy; never
    /// null.
    pub gather_columns: GatherColumnsFn,
    /// Scaled dot-product attention ([`crate::attention::cranformer_attention`]); never
    /// null: every ISA has a kernel.
    pub attention: AttentionFn,
    /// LayerNorm, RMS norm and L2 normalisation of rows, each optionally after an add
    /// ([`crate::norm::cranformer_norm`]); never null: every ISA has a kernel.
    pub norm: NormFn,
}

/// `parallel_for(task, ctx, n)`.
pub type ParallelForFn = unsafe extern "C" fn(crate::threads::TaskFn, *const u8, usize);

/// `qgemm(&call)`.
pub type QGemmFn = unsafe extern "C" fn(*const crate::gemm::QGemmCall);

/// `attention(&call)`.
pub type AttentionFn = unsafe extern "C" fn(*const crate::attention::AttnCall);

/// `norm(&call)`.
pub type NormFn = unsafe extern "C" fn(*const crate::norm::NormCall);

/// `gather_columns(words, k, n, format code, ids, count, out) -> 0 or 1 (an id out of range)`.
pub type GatherColumnsFn =
    unsafe extern "C" fn(*const f32, usize, usize, usize, *const i64, usize, *mut f32) -> i64;

/// The runtime services for this CPU.
pub fn runtime_fns() -> &'static RuntimeFns {
    static WIDE: RuntimeFns = RuntimeFns {
        gemm: Some(crate::gemm::cranformer_gemm),
        parallel_for: crate::threads::cranformer_parallel_for,
        qgemm: crate::gemm::qgemm::cranformer_qgemm,
        gather_columns: crate::gemm::quant::cranformer_gather_columns,
        attention: crate::attention::cranformer_attention,
        norm: crate::norm::cranformer_norm,
    };
    static NARROW: RuntimeFns = RuntimeFns {
        gemm: None,
        parallel_for: crate::threads::cranformer_parallel_for,
        qgemm: crate::gemm::qgemm::cranformer_qgemm,
        gather_columns: crate::gemm::quant::cranformer_gather_columns,
        attention: crate::attention::cranformer_attention,
        norm: crate::norm::cranformer_norm,
    };
    match crate::gemm::detected() {
        crate::gemm::Isa::Portable => &NARROW,
        _ => &WIDE,
    }
}

pub type EntryFn = unsafe extern "C" fn(*const EntryCtx) -> i64;

/// Buffers are 64-byte aligned (a cache line; enough for any vector load).
const ALIGN: usize = 64;

#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Line([u8; ALIGN]);

/// A weight an entry point reads cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum WeightLoadError {
    /// It is not among the tensors the entry was given (names the checkpoint key, or the
    /// missing part of a derived `concat(..)` weight).
    #[error("entry point {entry} reads tensor \"{key}\", which is not among the loaded weights")]
    Missing { entry: String, key: String },
    /// A value of the entry has a weight storage type (i8, bf16, f16) that never crosses the
    /// entry ABI until kernels compute with it: refused rather than handed out as f32.
    #[error("entry point {entry}: value {value} is {ty}: compiled entry points take and produce only f32 and i64")]
    DType {
        entry: String,
        value: String,
        ty: String,
    },
    /// It cannot be laid out as the kernels read it.
    #[error("entry point {entry}: weight \"{key}\" cannot be laid out for the kernels: {source}")]
    Prepare {
        entry: String,
        key: String,
        source: crate::gemm::quant::PackError,
    },
    /// The checkpoint tensor does not fit the layout the entry reads it in (a corrupt
    /// executable description or checkpoint).
    #[error("entry point {entry}: weight \"{key}\": {reason}")]
    Layout {
        entry: String,
        key: String,
        reason: String,
    },
}

/// One callable entry point with its prepared weights and a reusable arena.
pub struct NativeEntry {
    pub meta: EntryMeta,
    func: EntryFn,
    weights: Vec<F32Buffer>,
    arena: Vec<Line>,
    /// The last memory plan: each buffer's size (0 if it lives elsewhere), its offsets and
    /// the arena's size. Decode steps with sizes that do not change with P reuse it.
    plan: Option<(Vec<usize>, Vec<usize>, usize)>,
}

impl NativeEntry {
    /// `checkpoint` looks a checkpoint tensor up by key.
    ///
    /// # Safety
    /// `func` must be the entry function generated for `meta`, valid while this lives.
    pub unsafe fn new(
        meta: EntryMeta,
        func: EntryFn,
        checkpoint: &dyn Fn(&str) -> Option<F32Buffer>,
        prepared: &mut BTreeMap<(String, WeightPrep), F32Buffer>,
    ) -> Result<NativeEntry, WeightLoadError> {
        // Weight storage types (i8, bf16, f16) never cross the entry ABI until kernels
        // compute with them: refuse rather than hand out their bytes as f32.
        for sig in meta.inputs.iter().chain(&meta.buffers) {
            if !matches!(sig.ty.dtype, DType::F32 | DType::I64) {
                return Err(WeightLoadError::DType {
                    entry: meta.name.clone(),
                    value: sig.name.clone(),
                    ty: sig.ty.to_string(),
                });
            }
        }
        let mut weights = vec![];
        for (key, prep) in &meta.weights {
            let k = (key.clone(), *prep);
            if !prepared.contains_key(&k) {
                let source = WeightSource::parse(key);
                let raw = source
                    .resolve(checkpoint)
                    .ok_or_else(|| WeightLoadError::Missing {
                        entry: meta.name.clone(),
                        key: source
                            .keys()
                            .into_iter()
                            .find(|k| checkpoint(k).is_none())
                            .unwrap_or(key)
                            .to_string(),
                    })?;
                match prep.source_len() {
                    Some(need) if raw.len() < need => {
                        return Err(WeightLoadError::Layout {
                            entry: meta.name.clone(),
                            key: key.clone(),
                            reason: format!(
                                "it has {} values, but {prep:?} reads {need}",
                                raw.len()
                            ),
                        })
                    }
                    None if *prep != WeightPrep::AsIs => {
                        return Err(WeightLoadError::Layout {
                            entry: meta.name.clone(),
                            key: key.clone(),
                            reason: format!("{prep:?} overflows"),
                        })
                    }
                    _ => {}
                }
                let data = prep
                    .apply(&raw)
                    .map_err(|source| WeightLoadError::Prepare {
                        entry: meta.name.clone(),
                        key: key.clone(),
                        source,
                    })?;
                prepared.insert(k.clone(), data);
            }
            weights.push(prepared[&k].clone());
        }
        // Every call of this entry streams these through the caches: the matmul tilings the
        // runtime resolves see where the weights live (L3 or DRAM).
        let bytes: usize = weights.iter().map(|w| 4 * w.len()).sum();
        crate::gemm::plan::note_weights_in_flight(bytes as u64);
        Ok(NativeEntry {
            meta,
            func,
            weights,
            arena: vec![],
            plan: None,
        })
    }

    /// Binds the dims from the inputs' shapes, checking them against the signature.
    pub fn bind(&self, inputs: &[(&str, &Tensor)]) -> Result<Dims, EngineError> {
        bind(&self.meta, inputs)
    }

    pub fn run(&mut self, inputs: &[(&str, &Tensor)]) -> Result<Outputs, EngineError> {
        let dims = self.bind(inputs)?;
        self.call(inputs, dims, None)
    }

    /// [`crate::Engine::run_cached`]: `cache` stands for the `past_*` inputs. When every one
    /// of them is appended in place ([`EntryMeta::appends`]), the code writes the new rows into
    /// the cache and reads it where it lies; otherwise the cache is copied in and the new rows
    /// of `present_*` copied back.
    pub fn run_cached(
        &mut self,
        inputs: &[(&str, &Tensor)],
        cache: &mut KvCache,
    ) -> Result<Outputs, EngineError> {
        let cached: Vec<usize> = (0..self.meta.inputs.len())
            .filter(|&i| cache.input_slot(&self.meta.inputs[i].name).is_some())
            .collect();
        let in_place = !cached.is_empty()
            && cached.len() == 2 * cache.layers()
            && cached
                .iter()
                .all(|i| self.meta.appends.iter().any(|(a, _)| a == i));
        if !in_place {
            return cache.run_copied(inputs, |all| self.run(all));
        }
        cache.check_ragged(inputs)?;
        let sigs: Vec<(&str, &TensorType)> = self
            .meta
            .inputs
            .iter()
            .map(|s| (s.name.as_str(), &s.ty))
            .collect();
        let shape = crate::shape::CacheShape {
            batch: cache.batch(),
            past: cache.len(),
            width: cache.width(),
        };
        let dims = crate::shape::bind_cached(
            &self.meta.name,
            &sigs,
            inputs,
            &|n| cache.input_slot(n).is_some(),
            shape,
        )
        .map_err(|e| EngineError::Input(e.to_string()))?;
        if cache.is_ragged() && dims.seq != 1 {
            // Causal attention places the T queries at P..P+T, past a shorter row's own.
            return Err(EngineError::Input(format!(
                "the KV cache's rows hold different lengths: a call takes one token per row, not {}",
                dims.seq
            )));
        }
        cache.reserve(dims.seq);
        let out = self.call(inputs, dims, Some(&mut *cache))?;
        cache.commit(dims.seq);
        Ok(out)
    }

    /// Calls the entry with `dims` bound from `inputs` (and `cache`, which then holds the
    /// `past_*` inputs and room for T more positions).
    fn call(
        &mut self,
        inputs: &[(&str, &Tensor)],
        dims: Dims,
        mut cache: Option<&mut KvCache>,
    ) -> Result<Outputs, EngineError> {
        if self.meta.needs_tokens && dims.seq == 0 {
            return Err(EngineError::Input("the sequence is empty".into()));
        }
        let n_in = self.meta.inputs.len();
        let mut values: Vec<*mut u8> =
            Vec::with_capacity(n_in + self.weights.len() + self.meta.buffers.len());
        for sig in &self.meta.inputs {
            if let Some(c) = cache.as_deref_mut() {
                if let Some((kind, l)) = c.input_slot(&sig.name) {
                    values.push(c.storage_mut(kind, l).as_mut_ptr() as *mut u8);
                    continue;
                }
            }
            let t = inputs
                .iter()
                .find(|(n, _)| *n == sig.name)
                .expect("bound")
                .1;
            values.push(match t.data() {
                TensorData::F32(v) => v.as_ptr() as *mut u8,
                TensorData::I64(v) => v.as_ptr() as *mut u8,
            });
        }
        for w in &self.weights {
            values.push(w.as_ptr() as *mut u8);
        }
        // Appended in place: the concatenation's buffer is the cache itself.
        let skip: Vec<usize> = match cache {
            Some(_) => self.meta.appends.iter().map(|&(_, b)| b).collect(),
            None => vec![],
        };
        let overflow = || {
            EngineError::Input(format!(
                "the buffers of entry point {} for {dims:?} overflow the address space",
                self.meta.name
            ))
        };
        let sizes = buffer_sizes(&self.meta, &dims, &skip).ok_or_else(overflow)?;
        let (offsets, total) = match &self.plan {
            Some((s, offsets, total)) if *s == sizes => (offsets.clone(), *total),
            _ => {
                let (offsets, total) = place(&self.meta, &sizes).ok_or_else(overflow)?;
                self.plan = Some((sizes.clone(), offsets.clone(), total));
                (offsets, total)
            }
        };
        record_arena(&self.meta, &sizes, total);
        let lines = total / ALIGN + 1;
        if self.arena.len() < lines {
            // Geometric: a decode loop whose buffers grow with P reallocates O(log P) times.
            self.arena = vec![Line([0; ALIGN]); lines.max(self.arena.len() * 3 / 2)];
        }
        if cfg!(debug_assertions) {
            // NaN in every byte the plan uses: a kernel reading what no kernel wrote shows.
            // SAFETY: `total` bytes are within the arena.
            unsafe { std::ptr::write_bytes(self.arena.as_mut_ptr() as *mut u8, 0xff, total) };
        }
        let base = self.arena.as_mut_ptr() as *mut u8;
        for &o in &offsets {
            // SAFETY: every offset is within the arena allocated above.
            values.push(unsafe { base.add(o) });
        }
        let (kv_cap, kv_lens) = match cache {
            Some(ref c) => {
                for &(i, b) in &self.meta.appends {
                    values[n_in + self.weights.len() + b] = values[i];
                }
                let lens = if c.is_ragged() {
                    c.row_lens().as_ptr()
                } else {
                    std::ptr::null()
                };
                (c.capacity() as i64, lens)
            }
            None => (0, std::ptr::null()),
        };
        let ctx = EntryCtx {
            values: values.as_ptr(),
            dims: CtxDims {
                batch: dims.batch as i64,
                seq: dims.seq as i64,
                past: dims.past as i64,
                enc_seq: dims.enc_seq as i64,
                kv_cap,
                kv_lens,
            },
            rt: runtime_fns(),
        };
        // Nothing stale may be blamed on this call.
        let _ = crate::threads::take_panic();
        // SAFETY: the table holds a live pointer of the right size for every slot the entry
        // reads or writes: inputs have the shapes `bind` checked against the signature (a
        // `Tensor`'s data always holds its shape's element count), weights were prepared for
        // this entry's metadata, and the arena covers the plan for these dims. With a cache,
        // each appended `past_*` input and its concatenation point at that layer's storage,
        // `[B, kv_cap, C]` with kv_cap >= P + T (`run_cached` reserved T), which the code
        // indexes with kv_cap rows per batch row; `bind_cached` checked B and C against it.
        // `kv_lens`, when not null, is the cache's B row lengths, each at most P, so each
        // row's T new rows (after its own) stay within kv_cap too.
        let code = unsafe { (self.func)(&ctx) };
        if let Some(message) = crate::threads::take_panic() {
            return Err(EngineError::Panic {
                entry: self.meta.name.clone(),
                message,
            });
        }
        if code != 0 {
            let msg = self
                .meta
                .errors
                .get(code as usize - 1)
                .cloned()
                .unwrap_or_else(|| format!("unknown error code {code}"));
            return Err(EngineError::Input(msg));
        }
        let mut out = Outputs::new();
        for (name, slot) in &self.meta.outputs {
            let (sig, ptr) = match *slot {
                // The cache holds them.
                Slot::Buffer(i) if skip.contains(&i) => continue,
                Slot::Input(i)
                    if self.meta.appends.iter().any(|&(a, _)| a == i) && !skip.is_empty() =>
                {
                    continue
                }
                Slot::Input(i) => (&self.meta.inputs[i], values[i] as *const u8),
                Slot::Buffer(i) => (
                    &self.meta.buffers[i],
                    values[self.meta.inputs.len() + self.weights.len() + i] as *const u8,
                ),
            };
            // Every size fits: the memory plan computed them all.
            let shape: Vec<usize> = sig
                .ty
                .shape
                .iter()
                .map(|d| d.try_eval(&dims).unwrap_or(0))
                .collect();
            let n: usize = shape.iter().product();
            // SAFETY: the slot holds n elements of the signature's type; `new` admitted
            // only signatures of the types matched here.
            let t = unsafe {
                match sig.ty.dtype {
                    DType::F32 => Tensor::f32(
                        shape,
                        std::slice::from_raw_parts(ptr as *const f32, n).to_vec(),
                    ),
                    DType::I64 => Tensor::i64(
                        shape,
                        std::slice::from_raw_parts(ptr as *const i64, n).to_vec(),
                    ),
                    other => unreachable!("NativeEntry::new rejects {other} values"),
                }
            };
            out.insert(name.clone(), t);
        }
        Ok(out)
    }
}

/// Offsets of every buffer in one arena for this call's dims, and the arena's size: each
/// buffer goes at the lowest 64-byte-aligned offset free of every buffer whose live range
/// meets its own (first fit in order of definition). A kernel's output never shares memory
/// with its operands: their ranges meet at that kernel's step.
/// Largest activation arena each entry point has needed in this process: (bytes as planned
/// by liveness, bytes if every buffer had its own memory). For the reports.
pub fn arena_stats() -> BTreeMap<String, (usize, usize)> {
    ARENA_STATS.lock().map(|m| m.clone()).unwrap_or_default()
}

static ARENA_STATS: std::sync::Mutex<BTreeMap<String, (usize, usize)>> =
    std::sync::Mutex::new(BTreeMap::new());

fn record_arena(meta: &EntryMeta, sizes: &[usize], planned: usize) {
    let unshared: usize = sizes.iter().fold(0, |a, &b| a.saturating_add(b));
    if let Ok(mut m) = ARENA_STATS.lock() {
        let e = match m.get_mut(&meta.name) {
            Some(e) => e,
            None => m.entry(meta.name.clone()).or_default(),
        };
        *e = (e.0.max(planned), e.1.max(unshared));
    }
}

/// Offsets of the buffers in one arena (buffers whose live ranges are disjoint share bytes),
/// and the arena's size; `None` if a size overflows, or the metadata gives no live range for
/// some buffer.
pub fn plan_memory(meta: &EntryMeta, dims: &Dims) -> Option<(Vec<usize>, usize)> {
    place(meta, &buffer_sizes(meta, dims, &[])?)
}

/// Each buffer's bytes for `dims`, rounded up to whole lines; 0 for those in `skip`. `None`
/// if a size overflows.
fn buffer_sizes(meta: &EntryMeta, dims: &Dims, skip: &[usize]) -> Option<Vec<usize>> {
    (0..meta.buffers.len())
        .map(|b| match skip.contains(&b) {
            true => Some(0),
            false => meta.buffers[b]
                .checked_bytes(dims)?
                .checked_next_multiple_of(ALIGN),
        })
        .collect()
}

/// First-fit placement of buffers of `sizes` (see [`plan_memory`]); buffers of size 0 get
/// offset 0 and no memory.
fn place(meta: &EntryMeta, sizes: &[usize]) -> Option<(Vec<usize>, usize)> {
    let n = meta.buffers.len();
    if meta.live.len() != n || sizes.len() != n {
        return None;
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&b| meta.live[b]);
    let mut offsets = vec![0usize; n];
    // (start, end, buffer) of the buffers placed so far.
    let mut placed: Vec<(usize, usize, usize)> = Vec::with_capacity(n);
    let mut total = 0;
    for b in order {
        let size = sizes[b];
        if size == 0 {
            continue;
        }
        let (first, last) = meta.live[b];
        let mut clash: Vec<(usize, usize)> = placed
            .iter()
            .filter(|&&(_, _, o)| meta.live[o].0 <= last && first <= meta.live[o].1)
            .map(|&(s, e, _)| (s, e))
            .collect();
        clash.sort_unstable();
        let mut at: usize = 0;
        for (s, e) in clash {
            if at.saturating_add(size) <= s {
                break;
            }
            at = at.max(e);
        }
        let end = at.checked_add(size)?;
        offsets[b] = at;
        placed.push((at, end, b));
        total = total.max(end);
    }
    // The arena is allocated in whole lines, one more than total / ALIGN.
    total.checked_add(ALIGN)?;
    Some((offsets, total))
}

/// The dims of a call of `meta` with `given`, checked against its inputs' signatures
/// ([`crate::shape::bind`]).
pub fn bind(meta: &EntryMeta, given: &[(&str, &Tensor)]) -> Result<Dims, EngineError> {
    let sigs: Vec<(&str, &TensorType)> = meta
        .inputs
        .iter()
        .map(|s| (s.name.as_str(), &s.ty))
        .collect();
    crate::shape::bind(&meta.name, &sigs, given).map_err(|e| EngineError::Input(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    static FAIL: AtomicBool = AtomicBool::new(false);

    /// Stands in for generated code whose kernel calls a runtime service that panics.
    unsafe extern "C" fn entry(_: *const EntryCtx) -> i64 {
        crate::threads::catch_for_generated_code(|| {
            if FAIL.load(Ordering::Relaxed) {
                panic!("index 9 out of range");
            }
        });
        0
    }

    fn meta(weights: &[&str]) -> EntryMeta {
        EntryMeta {
            name: "encode".into(),
            symbol: "cranformer_entry_encode".into(),
            inputs: vec![],
            weights: weights
                .iter()
                .map(|k| (k.to_string(), WeightPrep::AsIs))
                .collect(),
            buffers: vec![],
            outputs: vec![],
            errors: vec![],
            needs_tokens: false,
            live: vec![],
            appends: vec![],
        }
    }

    #[test]
    fn a_missing_weight_names_the_tensor() {
        let have = |k: &str| (k == "a.weight").then(|| F32Buffer::from_vec(vec![1.0]));
        let concat = WeightSource::concat_key(&["a.weight", "b.weight"]);
        for key in ["b.weight", concat.as_str()] {
            // SAFETY: the entry is never run.
            let err = unsafe { NativeEntry::new(meta(&[key]), entry, &have, &mut BTreeMap::new()) }
                .err()
                .expect("a missing weight is an error");
            assert_eq!(
                err.to_string(),
                "entry point encode reads tensor \"b.weight\", which is not among the loaded weights"
            );
        }
    }

    #[test]
    fn a_panic_under_an_entry_becomes_an_error_and_the_entry_runs_again() {
        let meta = meta(&[]);
        // SAFETY: `entry` touches no slot, as the empty metadata says.
        let mut e =
            unsafe { NativeEntry::new(meta, entry, &|_| None, &mut BTreeMap::new()) }.unwrap();
        FAIL.store(true, Ordering::Relaxed);
        let err = e.run(&[]).unwrap_err();
        assert!(matches!(err, EngineError::Panic { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            "entry point encode failed: the runtime panicked: index 9 out of range (a cranformer bug)"
        );
        FAIL.store(false, Ordering::Relaxed);
        assert!(e.run(&[]).unwrap().is_empty());
    }
}
