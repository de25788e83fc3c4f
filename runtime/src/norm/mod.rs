//! Row normalisations for the generated code (`RuntimeFns::norm`): LayerNorm, T5's RMS norm
//! (each optionally fused with the residual add before it) and L2 normalisation. The
//! generated kernel fills a [`NormCall`] on its stack; the runtime picks the ISA (AVX-512,
//! AVX2+FMA, portable: `CRANFORMER_ISA` as for the matmuls) and the threads on the machine
//! that runs. The semantics are the interpreter's (`interp::kernels::layer_norm`, ..).
//!
//! Each row is computed by one thread, by the same code whatever the thread count. The row
//! sums (Σx, Σ(x - mean), Σ(x - mean)², Σx²) use 16 partial sums, lane j taking the
//! elements j, j+16, .., reduced by a fixed tree (8, 4, 2, 1 apart), then the last C mod 16
//! elements one by one: one AVX-512 vector, two AVX2 ones or four portable ones hold the same
//! 16 sums. Every other step is elementwise, with a multiply and an add rather than a fused
//! multiply-add (the portable path has no FMA), so every ISA rounds every element the same
//! way: results are identical across thread counts and ISAs.
//!
//! LayerNorm keeps the mean as an f32 pair `hi + lo` (hi = Σx / C, lo = Σ(x - hi) / C, where
//! each x - hi is exact when x is near the mean): rows whose values nearly coincide, with a
//! tiny eps, are ill-conditioned, and a single f32 mean loses up to half an ulp of x there;
//! the pair matches the interpreter's f64 statistics. Σ(x - mean)² = Σ(x - hi)² - C·lo².

#[cfg(test)]
mod tests;

use crate::gemm::{Isa, ISA_AUTO};
use crate::simd::{self, Simd};
use crate::threads;

/// Which normalisation a [`NormCall`] computes; `as u32` is its code in [`NormCall::kind`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum NormKind {
    /// `(x - mean) / sqrt(var + eps) · gamma + beta`.
    Layer = 1,
    /// T5LayerNorm: `x / sqrt(mean(x²) + eps) · gamma`.
    Rms = 2,
    /// `x / max(‖x‖₂, 1e-12)` (sentence-transformers' Normalize); no gamma, no eps.
    L2 = 3,
}

impl NormKind {
    pub fn code(self) -> u32 {
        self as u32
    }

    fn from_code(code: u32) -> Option<NormKind> {
        [NormKind::Layer, NormKind::Rms, NormKind::L2]
            .into_iter()
            .find(|k| k.code() == code)
    }

    /// The graph op a call of this kind computes, `added` when it adds a tensor first: the
    /// generated kernel's name and the report's row (`add_layer_norm`, `rms_norm`, ...).
    pub fn op_name(self, added: bool) -> &'static str {
        match (self, added) {
            (NormKind::Layer, false) => "layer_norm",
            (NormKind::Layer, true) => "add_layer_norm",
            (NormKind::Rms, false) => "rms_norm",
            (NormKind::Rms, true) => "add_rms_norm",
            (NormKind::L2, false) => "l2_normalize",
            (NormKind::L2, true) => "add_l2_normalize",
        }
    }
}

/// One normalisation call from generated code (`RuntimeFns::norm`). Generated code fills it
/// on its stack at the offsets [`crate::abi::norm_call`] reads from this definition. Shapes:
/// R `rows`, C `channels`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NormCall {
    /// `[R, C]`.
    pub x: *const f32,
    /// `[rows_b, C]` added to x before the norm, row r of x taking row r mod rows_b (a
    /// residual, or a broadcast bias); the sum is rounded to f32 first, as an add then a norm
    /// would. Or null.
    pub add: *const f32,
    /// `[C]`; null for [`NormKind::L2`].
    pub gamma: *const f32,
    /// `[C]` for [`NormKind::Layer`], null otherwise.
    pub beta: *const f32,
    /// `[R, C]`; may be `x` itself (each row is read before it is written), aliases no other
    /// input.
    pub out: *mut f32,
    pub rows: usize,
    /// Rows of `add`; ignored when `add` is null.
    pub rows_b: usize,
    pub channels: usize,
    pub eps: f32,
    /// A [`NormKind`] as `u32`.
    pub kind: u32,
    /// An [`Isa`] as `u32`, or [`ISA_AUTO`] (a family the CPU lacks falls back to auto).
    pub isa: u32,
    /// Threads at most, 0 = the pool's default (results do not depend on it).
    pub threads: u32,
}

// SAFETY: a NormCall is plain data; its pointers are only dereferenced inside `norm`, whose
// callers guarantee them valid for the call. Tasks read x, add, gamma and beta, which nobody
// else writes during the call, and each writes its own rows of `out`.
unsafe impl Send for NormCall {}
// SAFETY: as for Send.
unsafe impl Sync for NormCall {}

/// Why a call is refused (a compiler bug when it comes from generated code).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NormError {
    /// `kind` is no [`NormKind`] code.
    #[error("norm: unknown kind {0}")]
    Kind(u32),
    /// Rows to normalise, a row to add to each, but no rows to add.
    #[error("norm: {rows} rows plus a tensor of 0 rows")]
    NoAddRows { rows: usize },
    /// A pointer the kind reads is null.
    #[error("norm: {kind:?} without {operand}")]
    Missing {
        kind: NormKind,
        operand: &'static str,
    },
}

impl NormCall {
    /// The ISA this call runs with.
    pub fn resolved_isa(&self) -> Isa {
        if self.isa == ISA_AUTO {
            crate::gemm::detected()
        } else {
            Isa::from_code(self.isa)
        }
    }

    fn check(&self) -> Result<NormKind, NormError> {
        let kind = NormKind::from_code(self.kind).ok_or(NormError::Kind(self.kind))?;
        if self.rows == 0 || self.channels == 0 {
            return Ok(kind);
        }
        if !self.add.is_null() && self.rows_b == 0 {
            return Err(NormError::NoAddRows { rows: self.rows });
        }
        let missing = |operand| Err(NormError::Missing { kind, operand });
        if self.x.is_null() {
            return missing("x");
        }
        if self.out.is_null() {
            return missing("out");
        }
        if kind != NormKind::L2 && self.gamma.is_null() {
            return missing("gamma");
        }
        if kind == NormKind::Layer && self.beta.is_null() {
            return missing("beta");
        }
        Ok(kind)
    }
}

/// Elements per task at least: a few microseconds of work, against about one to wake a
/// spinning worker.
const GRAIN: usize = 16 * 1024;

/// At most this many tasks per call: enough to balance any core count this targets.
const MAX_TASKS: usize = 64;

/// Rows per task for `rows` rows of `c`: depends on the shape only.
fn rows_per_task(rows: usize, c: usize) -> usize {
    GRAIN
        .div_ceil(c.max(1))
        .max(rows.div_ceil(MAX_TASKS))
        .max(1)
}

type RowsFn = unsafe fn(&NormCall, NormKind, usize, usize);

/// Runs the call on the ISA and threads it names (0: chosen here).
///
/// # Safety
/// The pointers are valid for the shapes the call gives (see [`NormCall`]).
pub unsafe fn norm(c: &NormCall) -> Result<(), NormError> {
    // SAFETY: as the caller promised.
    unsafe { norm_ran(c) }.map(|_| ())
}

/// [`norm`], returning the ISA and threads it ran with.
///
/// # Safety
/// As [`norm`].
unsafe fn norm_ran(c: &NormCall) -> Result<(Isa, usize), NormError> {
    let kind = c.check()?;
    let isa = c.resolved_isa();
    if c.rows == 0 || c.channels == 0 {
        return Ok((isa, 1));
    }
    let f: RowsFn = match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => rows_avx512,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => rows_avx2,
        _ => rows_portable,
    };
    let per = rows_per_task(c.rows, c.channels);
    let tasks = c.rows.div_ceil(per);
    let threads = threads::for_call(c.threads, tasks);
    threads::parallel_for_on(threads, tasks, &|i| {
        let r0 = i * per;
        // SAFETY: as the caller promised; tasks write disjoint rows.
        unsafe { f(c, kind, r0, (r0 + per).min(c.rows)) }
    });
    Ok((isa, threads))
}

/// C entry point for generated code (`RuntimeFns::norm`).
///
/// # Safety
/// `call` points at a valid [`NormCall`] whose pointers are valid for its shapes.
pub unsafe extern "C" fn cranformer_norm(call: *const NormCall) {
    // SAFETY: as the caller promised.
    let c = unsafe { &*call };
    // Generated code cannot unwind: a panic is recorded for the host instead.
    threads::catch_for_generated_code(|| {
        // The graph op's name, for the report.
        let name = NormKind::from_code(c.kind).map_or("norm", |k| k.op_name(!c.add.is_null()));
        // SAFETY: as the caller promised.
        let ran = crate::gemm::profile::kernel(name, || unsafe { norm_ran(c) });
        if let Err(e) = ran {
            panic!("compiler bug: {e}");
        }
    });
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn rows_avx512(c: &NormCall, kind: NormKind, r0: usize, r1: usize) {
    // SAFETY: chosen only when the CPU has AVX-512F; the rest as `norm`'s caller promised.
    unsafe { rows::<simd::Avx512>(c, kind, r0, r1) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn rows_avx2(c: &NormCall, kind: NormKind, r0: usize, r1: usize) {
    // SAFETY: chosen only when the CPU has AVX2 and FMA; the rest as `norm`'s caller
    // promised.
    unsafe { rows::<simd::Avx2>(c, kind, r0, r1) }
}

unsafe fn rows_portable(c: &NormCall, kind: NormKind, r0: usize, r1: usize) {
    // SAFETY: as `norm`'s caller promised.
    unsafe { rows::<simd::Portable>(c, kind, r0, r1) }
}

/// Rows `r0..r1` of the call.
///
/// # Safety
/// As `norm`'s caller promised, `r1 <= rows`.
#[inline(always)]
unsafe fn rows<S: Simd>(c: &NormCall, kind: NormKind, r0: usize, r1: usize) {
    let n = c.channels;
    for r in r0..r1 {
        // SAFETY: as the caller promised: row r of x and out, row r mod rows_b of add.
        unsafe {
            let x = c.x.add(r * n);
            let out = c.out.add(r * n);
            let b = if c.add.is_null() {
                std::ptr::null()
            } else {
                c.add.add(r % c.rows_b * n)
            };
            match (kind, b.is_null()) {
                (NormKind::Layer, true) => layer_row::<S, false>(x, b, out, c),
                (NormKind::Layer, false) => layer_row::<S, true>(x, b, out, c),
                (NormKind::Rms, true) => rms_row::<S, false, false>(x, b, out, c),
                (NormKind::Rms, false) => rms_row::<S, true, false>(x, b, out, c),
                (NormKind::L2, true) => rms_row::<S, false, true>(x, b, out, c),
                (NormKind::L2, false) => rms_row::<S, true, true>(x, b, out, c),
            }
        }
    }
}

/// Partial sums per 16-lane group: `16 / S::W` vectors (at most 4, the portable path's).
const LANES: usize = 16;

/// The sum of the 16 lanes held by `acc[..16 / S::W]`, by the fixed tree (see the module
/// doc).
///
/// # Safety
/// The CPU runs `S`.
#[inline(always)]
unsafe fn sum16<S: Simd>(acc: &[S::V; 4]) -> f32 {
    let mut l = [0f32; LANES];
    for (u, a) in acc.iter().take(LANES / S::W).enumerate() {
        // SAFETY: u·W + W <= 16.
        unsafe { S::store(l.as_mut_ptr().add(u * S::W), *a) };
    }
    let mut half = LANES / 2;
    while half > 0 {
        for i in 0..half {
            l[i] += l[i + half];
        }
        half /= 2;
    }
    l[0]
}

/// The row `v = x (+ b)`, stored to `out` when `ADD`, and `Σ v` or, when `SQ`, `Σ v²`.
///
/// # Safety
/// `x`, `out` (and `b` when `ADD`) are valid for `c.channels` f32.
#[inline(always)]
unsafe fn first_pass<S: Simd, const ADD: bool, const SQ: bool>(
    x: *const f32,
    b: *const f32,
    out: *mut f32,
    c: &NormCall,
) -> f32 {
    let n = c.channels;
    let n16 = n / LANES * LANES;
    // SAFETY: as the caller promised; every index is below n.
    unsafe {
        let mut acc = [S::splat(0.0); 4];
        let mut i = 0;
        while i < n16 {
            for (u, a) in acc.iter_mut().take(LANES / S::W).enumerate() {
                let p = i + u * S::W;
                let mut v = S::load(x.add(p));
                if ADD {
                    v = S::add(v, S::load(b.add(p)));
                    S::store(out.add(p), v);
                }
                *a = S::add(*a, if SQ { S::mul(v, v) } else { v });
            }
            i += LANES;
        }
        let mut s = sum16::<S>(&acc);
        for j in n16..n {
            let mut v = *x.add(j);
            if ADD {
                v += *b.add(j);
                *out.add(j) = v;
            }
            s += if SQ { v * v } else { v };
        }
        s
    }
}

/// One LayerNorm row (see the module doc for the statistics).
///
/// # Safety
/// As [`first_pass`], `gamma` and `beta` valid for `c.channels` f32.
#[inline(always)]
unsafe fn layer_row<S: Simd, const ADD: bool>(
    x: *const f32,
    b: *const f32,
    out: *mut f32,
    c: &NormCall,
) {
    let n = c.channels;
    let n16 = n / LANES * LANES;
    let inv_n = 1.0 / n as f32;
    // SAFETY: as the caller promised; every index is below n.
    unsafe {
        let s = first_pass::<S, ADD, false>(x, b, out, c);
        // With the add, the row to normalise is in out.
        let x = if ADD { out as *const f32 } else { x };
        let hi = s * inv_n;
        let hv = S::splat(hi);
        // Σ(x - hi) and Σ(x - hi)².
        let (mut a1, mut a2) = ([S::splat(0.0); 4], [S::splat(0.0); 4]);
        let mut i = 0;
        while i < n16 {
            for u in 0..LANES / S::W {
                let d = S::sub(S::load(x.add(i + u * S::W)), hv);
                a1[u] = S::add(a1[u], d);
                a2[u] = S::add(a2[u], S::mul(d, d));
            }
            i += LANES;
        }
        let (mut sd, mut sq) = (sum16::<S>(&a1), sum16::<S>(&a2));
        for j in n16..n {
            let d = *x.add(j) - hi;
            sd += d;
            sq += d * d;
        }
        let lo = sd * inv_n;
        let var = (sq - sd * lo).max(0.0) * inv_n;
        let inv = 1.0 / (var + c.eps).sqrt();
        // out = ((x - hi) - lo) · inv · gamma + beta, as the interpreter rounds it.
        let (lv, iv) = (S::splat(lo), S::splat(inv));
        let nw = n / S::W * S::W;
        let mut i = 0;
        while i < nw {
            let d = S::sub(S::sub(S::load(x.add(i)), hv), lv);
            let y = S::mul(S::mul(d, iv), S::load(c.gamma.add(i)));
            S::store(out.add(i), S::add(y, S::load(c.beta.add(i))));
            i += S::W;
        }
        for j in nw..n {
            let d = (*x.add(j) - hi) - lo;
            *out.add(j) = d * inv * *c.gamma.add(j) + *c.beta.add(j);
        }
    }
}

/// One RMS norm row, or with `L2` one L2 normalisation row.
///
/// # Safety
/// As [`first_pass`], `gamma` valid for `c.channels` f32 unless `L2`.
#[inline(always)]
unsafe fn rms_row<S: Simd, const ADD: bool, const L2: bool>(
    x: *const f32,
    b: *const f32,
    out: *mut f32,
    c: &NormCall,
) {
    let n = c.channels;
    let nw = n / S::W * S::W;
    // SAFETY: as the caller promised; every index is below n.
    unsafe {
        let ss = first_pass::<S, ADD, true>(x, b, out, c);
        let x = if ADD { out as *const f32 } else { x };
        if L2 {
            // x / max(‖x‖, 1e-12), divided as the interpreter does.
            let nrm = ss.sqrt().max(1e-12);
            let nv = S::splat(nrm);
            let mut i = 0;
            while i < nw {
                S::store(out.add(i), S::div(S::load(x.add(i)), nv));
                i += S::W;
            }
            for j in nw..n {
                *out.add(j) = *x.add(j) / nrm;
            }
            return;
        }
        let inv = 1.0 / (ss * (1.0 / n as f32) + c.eps).sqrt();
        let iv = S::splat(inv);
        let mut i = 0;
        while i < nw {
            let y = S::mul(S::mul(S::load(x.add(i)), iv), S::load(c.gamma.add(i)));
            S::store(out.add(i), y);
            i += S::W;
        }
        for j in nw..n {
            *out.add(j) = *x.add(j) * inv * *c.gamma.add(j);
        }
    }
}
