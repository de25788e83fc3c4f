//! Single-precision matrix multiply for the generated code: `C = act(A·B + bias) + residual`,
//! with B (the weights) packed once into column panels and A (the activations) read where it
//! is. The generated code describes each call in a [`GemmCall`] (shape, operands,
//! epilogue); the runtime resolves its ISA, blocking and threads on the machine that runs
//! ([`plan::resolve`], the roofline cost model on the host's profile), so a compiled model
//! moved to another machine tiles and threads for that one.
//!
//! Cranelift emits 128-bit vectors only, a quarter of this machine's 512-bit FMA peak, so
//! the matmuls call these micro-kernels, written with `std::arch` and chosen by the CPU's
//! features at run time (as IREE's generated code calls its ukernels). Loop nest (BLIS
//! order): the column panels go out in chunks, several per thread, to whichever thread asks
//! next; within a chunk, for each K block of `kc` and block of `mc` rows, each packed B
//! sliver (`kc × NR`, kept in L1) is multiplied with every `MR`-row tile of A's block (in
//! L2). The kernels broadcast A's elements from its rows as they are, `lda` apart: packing A
//! into slivers first (as BLIS does) read and wrote all of it once more per call, and the
//! kernels ran no faster on the packed slivers (BERT-base seq 128 on 2 threads 0.97-0.99x the
//! time without packing, seq 512 0.92x; AMD EPYC Zen 5, AVX-512 and AVX2). A single row
//! (decode) reads several whole panels at once instead (`gemv`). The K blocking never depends
//! on the thread count (see [`plan::resolve_on`]), so every element sums its products in the
//! same order: results are identical for any number of threads. The epilogue (activation, residual) runs on each tile right after its
//! last K block, while the tile is in L1.
//!
//! Narrow weights (int8, bf16, f16) have the same loop nest in `qgemm.rs`, their formats and
//! packing in `quant.rs`, and their kernels beside the f32 ones (`avx512_q.rs`, `avx2_q.rs`,
//! `portable_q.rs`).

#[cfg(target_arch = "x86_64")]
mod amx;
mod avx2;
mod avx2_q;
mod avx2_qgemv;
mod avx512;
mod avx512_q;
mod avx512_qgemv;
pub mod epilogue;
mod gemv;
pub mod plan;
mod portable;
mod portable_q;
pub mod profile;
pub mod qgemm;
mod qgemv;
pub mod quant;
mod vnni;
mod widen_gemv;

pub use epilogue::Act;
pub use qgemm::{qgemm, QGemmCall, QKernel, GEMV_ROWS, KERNELS};
pub use quant::{PackedWeight, WeightFormat};

use crate::threads;

/// Which micro-kernel family runs; `as u32` is its [`GemmCall::isa`] code. Ordered best
/// first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u32)]
pub enum Isa {
    /// 12×32 tile: 24 zmm accumulators.
    Avx512 = 1,
    /// 6×16 tile: 12 ymm accumulators.
    Avx2 = 2,
    /// 4×8 tile in plain Rust: any CPU.
    Portable = 3,
}

/// [`GemmCall::isa`] when the call leaves the family to the runtime.
pub const ISA_AUTO: u32 = 0;

impl Isa {
    /// The best family this CPU runs (`CRANFORMER_ISA=avx2|portable` picks a lesser one).
    /// An empty `CRANFORMER_ISA` means unset; an unknown value is reported on stderr and
    /// ignored (it used to select the portable path without a word).
    pub fn detect() -> Isa {
        let forced = std::env::var("CRANFORMER_ISA")
            .ok()
            .filter(|v| !v.is_empty());
        if let Some(v) = forced.as_deref() {
            if !["avx512", "avx2", "portable"].contains(&v) {
                eprintln!(
                    "cranformer: CRANFORMER_ISA={v:?} is not one of avx512, avx2, portable; using the CPU's best"
                );
                return Isa::detect_with(None);
            }
        }
        Isa::detect_with(forced)
    }

    fn detect_with(forced: Option<String>) -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            let want = |name: &str| forced.as_deref().is_none_or(|f| f == name);
            if want("avx512") && is_x86_feature_detected!("avx512f") {
                return Isa::Avx512;
            }
            if (want("avx2") || forced.as_deref() == Some("avx512"))
                && is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
            {
                return Isa::Avx2;
            }
        }
        let _ = forced;
        Isa::Portable
    }

    /// Rows of the register tile.
    pub fn mr(self) -> usize {
        match self {
            Isa::Avx512 => avx512::MR,
            Isa::Avx2 => avx2::MR,
            Isa::Portable => portable::MR,
        }
    }

    /// Columns of the register tile, and of a packed weight panel.
    pub fn nr(self) -> usize {
        match self {
            Isa::Avx512 => avx512::NR,
            Isa::Avx2 => avx2::NR,
            Isa::Portable => portable::NR,
        }
    }

    /// Vector width in bits (the portable kernel: what SSE or NEON give it).
    pub fn bits(self) -> u32 {
        match self {
            Isa::Avx512 => 512,
            Isa::Avx2 => 256,
            Isa::Portable => 128,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512 => "avx512",
            Isa::Avx2 => "avx2",
            Isa::Portable => "portable",
        }
    }

    /// [`GemmCall::isa`]'s code.
    pub const fn code(self) -> u32 {
        self as u32
    }

    /// The family a [`GemmCall::isa`] code asks for, if this CPU runs it; else the detected one.
    pub fn from_code(code: u32) -> Isa {
        let best = detected();
        let Some(&want) = [Isa::Avx512, Isa::Avx2, Isa::Portable]
            .iter()
            .find(|i| i.code() == code)
        else {
            return best;
        };
        // Families are ordered best first: anything at or below the detected one runs.
        if want >= best {
            want
        } else {
            best
        }
    }
}

/// Columns per packed weight panel: the widest tile (AVX-512's 32). Narrower kernels walk
/// a panel's sub-panels, so one packing serves every ISA, and weights packed at compile
/// time run on any CPU.
pub const PACK_NR: usize = 32;

/// Cache blocking of one matmul.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Blocking {
    /// K per block: a `kc × NR` weight sliver stays in L1 while A slivers stream past it.
    pub kc: usize,
    /// Rows of A packed per block (kept in L2).
    pub mc: usize,
}

impl Blocking {
    /// The default for `isa`, sized for 32-48 KiB L1 and 1 MiB L2 caches.
    pub fn default_for(isa: Isa) -> Blocking {
        match isa {
            Isa::Avx512 => Blocking { kc: 192, mc: 144 },
            Isa::Avx2 => Blocking { kc: 256, mc: 144 },
            Isa::Portable => Blocking { kc: 256, mc: 64 },
        }
    }
}

/// Packs a weight into panels of `nr` columns: panel p holds, for each k, columns
/// `nr*p..nr*p+nr` of the `[K, N]` matrix, zero past N. `in_out` says the checkpoint stores
/// `[K, N]` (GPT-2's Conv1D); otherwise `[N, K]` (nn.Linear).
pub fn pack_b(w: &[f32], k: usize, n: usize, in_out: bool, nr: usize) -> Vec<f32> {
    let mut out = vec![0f32; n.div_ceil(nr) * k * nr];
    pack_b_into(w, k, n, in_out, nr, &mut out);
    out
}

/// [`pack_b`] into `out`, which holds `n.div_ceil(nr) * k * nr` zeros (the columns past N are
/// left as they are).
pub fn pack_b_into(w: &[f32], k: usize, n: usize, in_out: bool, nr: usize, out: &mut [f32]) {
    let panels = n.div_ceil(nr);
    assert_eq!(out.len(), panels * k * nr, "packed B's length");
    for p in 0..panels {
        let cols = nr.min(n - p * nr);
        let dst = &mut out[p * k * nr..(p + 1) * k * nr];
        if in_out {
            for kk in 0..k {
                let src = &w[kk * n + p * nr..][..cols];
                dst[kk * nr..kk * nr + cols].copy_from_slice(src);
            }
        } else {
            for j in 0..cols {
                let src = &w[(p * nr + j) * k..][..k];
                for (kk, &v) in src.iter().enumerate() {
                    dst[kk * nr + j] = v;
                }
            }
        }
    }
}

/// How a micro-kernel starts its accumulators.
#[derive(Clone, Copy)]
pub(crate) enum Init {
    Zero,
    /// The bias of the tile's columns (`NR` floats, zero-padded).
    Bias(*const f32),
    /// C's current values (a later K block).
    Load,
}

/// One matmul call from generated code (`RuntimeFns::gemm`): `c = act(a·b + bias) +
/// residual`. Generated code fills it on its stack at the offsets [`crate::abi::gemm_call`]
/// reads from this definition; the tiling fields (`kc`, `mc`, `isa`, `threads`) are hints a
/// zero leaves to the runtime ([`GemmCall::resolved`]).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct GemmCall {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    /// `[M, K]`, row stride `lda`.
    pub a: *const f32,
    pub lda: usize,
    /// Packed by [`pack_b`] into panels of [`PACK_NR`] columns.
    pub b: *const f32,
    /// `[N]` or null.
    pub bias: *const f32,
    /// `[M, N]`, row stride `ldc`.
    pub c: *mut f32,
    pub ldc: usize,
    /// `[M, N]` with stride `ldc`, added after the activation; or null. May alias nothing
    /// but itself (not `c`).
    pub residual: *const f32,
    /// An [`Act`] as `u32`.
    pub act: u32,
    /// K per block, 0 = the ISA's default.
    pub kc: u32,
    /// Rows of A per block, 0 = the ISA's default.
    pub mc: u32,
    /// An [`Isa`] as `u32`, or [`ISA_AUTO`] (a family the CPU lacks falls back to auto).
    pub isa: u32,
    /// Threads to split N over, 0 = the pool's default (never more than the pool has).
    pub threads: u32,
}

// SAFETY: a GemmCall is plain data; its pointers are only dereferenced inside `sgemm`/
// `cranformer_gemm`, whose callers guarantee them valid for the call. The threads of one call
// read A, B, bias and residual, which nobody writes during the call, and write disjoint column
// ranges of C (one range of panels per task), so sharing the call between them is race-free.
unsafe impl Send for GemmCall {}
// SAFETY: as for Send.
unsafe impl Sync for GemmCall {}

impl GemmCall {
    /// A plain `c = a·b + bias` with automatic tiling.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        m: usize,
        n: usize,
        k: usize,
        a: *const f32,
        lda: usize,
        b: *const f32,
        bias: *const f32,
        c: *mut f32,
        ldc: usize,
    ) -> GemmCall {
        GemmCall {
            m,
            n,
            k,
            a,
            lda,
            b,
            bias,
            c,
            ldc,
            residual: std::ptr::null(),
            act: Act::None as u32,
            kc: 0,
            mc: 0,
            isa: ISA_AUTO,
            threads: 0,
        }
    }

    /// The ISA, blocking and thread count this call runs with: each field left 0 ("auto", as
    /// generated code leaves them all) comes from the cost model on this host
    /// ([`plan::resolve`]); a non-zero one (tests, benchmarks) is taken as given.
    pub fn resolved(&self) -> (Isa, Blocking, usize) {
        let auto = (self.isa == 0 || self.kc == 0 || self.mc == 0 || self.threads == 0)
            .then(|| plan::resolve(self.m, self.n, self.k, !self.residual.is_null()));
        let isa = match (self.isa, auto.and_then(|c| c.kernel.isa())) {
            (0, Some(isa)) => isa,
            (code, _) => Isa::from_code(code),
        };
        // A plan's blocking is sized for its own ISA's tile; it does not carry over to a
        // family the call forces.
        let plan = auto.filter(|c| c.kernel.isa() == Some(isa));
        let def = Blocking::default_for(isa);
        let pick = |given: u32, planned: Option<u32>, default: usize| match (given, planned) {
            (0, Some(p)) if p > 0 => p as usize,
            (0, _) => default,
            (g, _) => g as usize,
        };
        let bl = Blocking {
            kc: pick(self.kc, plan.map(|c| c.kc), def.kc),
            mc: pick(self.mc, plan.map(|c| c.mc), def.mc),
        };
        let pool = threads::threads();
        let panels = self.n.div_ceil(PACK_NR).max(1);
        let t = match (self.threads, auto) {
            (0, Some(c)) => c.threads as usize,
            (0, None) => pool,
            (t, _) => t as usize,
        };
        (isa, bl, t.min(pool).min(panels).max(1))
    }
}

/// Kept for callers of the first interface: a call without epilogue.
pub type Sgemm = GemmCall;

/// `C = act(A·B + bias) + residual` with `isa`'s kernels and `blocking`, on the call's
/// thread count (see [`GemmCall::resolved`]; `isa` and `blocking` override the call's).
///
/// # Safety
/// The pointers must be valid for the sizes given; B must be packed with [`PACK_NR`]; the
/// CPU must have `isa` (at or below [`detected`]: [`Isa::from_code`] only returns such).
pub unsafe fn sgemm(g: &GemmCall, isa: Isa, blocking: Blocking) {
    let (_, _, tasks) = g.resolved();
    run(g, isa, blocking, tasks)
}

/// Runs `g` with everything resolved.
///
/// # Safety
/// As [`sgemm`]. Each task writes only its own panels' columns of C.
unsafe fn run(g: &GemmCall, isa: Isa, blocking: Blocking, tasks: usize) {
    if g.m == 0 || g.n == 0 {
        return;
    }
    let act = Act::from_code(g.act).unwrap_or(Act::None);
    if g.k == 0 {
        // No K block to finish the tiles: C is the bias, then the epilogue.
        for i in 0..g.m {
            for j in 0..g.n {
                *g.c.add(i * g.ldc + j) = if g.bias.is_null() {
                    0.0
                } else {
                    *g.bias.add(j)
                };
            }
        }
        let res = g.residual;
        epilogue::apply(act, g.c, g.ldc, g.m, g.n, res);
        return;
    }
    let threads = tasks.max(1);
    // Panels are handed out in chunks, several per thread: each thread takes its own share of
    // them first (`threads::share_start`), then helps with the others', so a thread that
    // starts late (woken from sleep, or preempted by another process) takes fewer chunks
    // instead of leaving its whole share to the others' wait.
    let panels = g.n.div_ceil(PACK_NR);
    let split = chunks(panels, threads, g.m, gemv_group(isa));
    split.run(threads, &|p0, p1, then| {
        block(g, isa, blocking, act, p0, p1, then)
    });
}

/// Work of A's packing (M·K) from which it is split over the threads: below it, waking them
/// costs more than packing on one.
const PARALLEL_PACK_MIN: usize = 32 * 1024;

/// Threads to pack an `m × k` A on, of the call's `threads` (the narrow formats' kernels
/// that read A packed).
pub(super) fn pack_threads(m: usize, k: usize, threads: usize) -> usize {
    if m * k >= PARALLEL_PACK_MIN {
        threads
    } else {
        1
    }
}

/// Chunks of panels per thread ([`run`]).
const CHUNKS_PER_THREAD: usize = 4;

/// Panels the decode GEMV of `isa` reads together (`gemv`), 0 where it has none.
pub fn gemv_group(isa: Isa) -> usize {
    match isa {
        Isa::Avx512 => gemv::AVX512_PANELS,
        Isa::Avx2 => gemv::AVX2_PANELS,
        Isa::Portable => 0,
    }
}

/// How [`run`] cuts a matmul's panels into the tasks it hands out ([`chunks`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunks {
    /// Tasks.
    pub count: usize,
    /// Panels per task; the last of a share (or of all) may have fewer, or none.
    pub per: usize,
    /// Threads whose shares of the panels are cut apart (each share `count / shares` tasks),
    /// or 1: one run of tasks over all the panels, cut into shares by task.
    shares: usize,
    panels: usize,
}

impl Chunks {
    /// `panels` in one run of tasks of `per` panels each (the last may have fewer).
    pub fn uniform(panels: usize, per: usize) -> Chunks {
        let per = per.max(1);
        Chunks {
            count: panels.div_ceil(per).max(1),
            per,
            shares: 1,
            panels,
        }
    }

    /// Task `c`'s panels, `p0..p1` (empty for a share's spare task).
    pub fn range(self, c: usize) -> (usize, usize) {
        let (from, to, i) = if self.shares <= 1 {
            (0, self.panels, c)
        } else {
            let tasks = self.count / self.shares;
            let s = c / tasks;
            (
                crate::threads::share_start(s, self.shares, self.panels),
                crate::threads::share_start(s + 1, self.shares, self.panels),
                c % tasks,
            )
        };
        (
            (from + i * self.per).min(to),
            (from + (i + 1) * self.per).min(to),
        )
    }

    /// `f(p0, p1, then)` for every task with panels, on up to `threads` threads of the pool
    /// (each its own share of the tasks first, then the others'); `then` is the first panel of
    /// the task the same thread runs next in its share, if any (for fetching it ahead).
    pub fn run(self, threads: usize, f: &(dyn Fn(usize, usize, Option<usize>) + Sync)) {
        crate::threads::parallel_for_on(threads, self.count, &|t| {
            let (p0, p1) = self.range(t);
            let then = crate::threads::next_in_share(t)
                .map(|t| self.range(t))
                .filter(|(a, b)| a < b)
                .map(|(a, _)| a);
            if p0 < p1 {
                f(p0, p1, then);
            }
        });
    }

    /// The most panels one of `threads` threads does when each runs its own share of the
    /// tasks ([`crate::threads::share_start`]).
    pub fn busiest(self, threads: usize) -> usize {
        if self.shares > 1 {
            self.panels.div_ceil(self.shares)
        } else {
            (self.count.div_ceil(threads.max(1)) * self.per).min(self.panels)
        }
    }
}

/// How [`run`] cuts `panels` for `threads`. Up to [`CHUNKS_PER_THREAD`] tasks per thread; a
/// decode row on an ISA with a GEMV (`group` panels read together, [`gemv_group`]) as one
/// share of the panels per thread, each share in tasks of one group (its last task takes what
/// is left of it).
///
/// A decode row streams its weights from DRAM, and two threads rarely get equal shares of
/// the bandwidth: with one range of panels per thread, the first to finish waited on the other
/// for 2-6 % of a decode step's GEMV time (GPT-2 124M's 49 matrices, AMD EPYC Zen 5, 2
/// threads). Tasks of one group let it take the rest of the other's share instead. A task
/// must not be cut below a group: a 768-wide GEMV in 8 chunks of 3 panels ran one panel at a
/// time (4 a group), and the whole decode step on 2 threads was slower. The shares are cut
/// apart so that they stay even: in tasks of one group over all the panels, T5-small's 16
/// panels of 512 columns went 9 + 7 on AVX2 (groups of 3), and the cost model then ran those
/// GEMVs on one thread, 1.1-1.2x slower than on two.
pub fn chunks(panels: usize, threads: usize, m: usize, group: usize) -> Chunks {
    if threads <= 1 || panels <= 1 {
        return Chunks::uniform(panels, panels);
    }
    if m == 1 && group > 1 {
        let shares = threads.min(panels);
        let tasks = panels.div_ceil(shares).div_ceil(group);
        return Chunks {
            count: shares * tasks,
            per: group,
            shares,
            panels,
        };
    }
    let chunks = panels.min(threads * CHUNKS_PER_THREAD);
    Chunks::uniform(panels, panels.div_ceil(chunks))
}

/// `dst [kc][rows] = src [rows][kc]` (rows `lda` apart): a sliver of A transposed for the
/// bf16 and f16 micro-kernels (`qgemm`). Four rows × four K at a time through SSE registers
/// (every x86-64 has them), so both sides move whole vectors: element by element, the writes
/// `rows` floats apart made packing 7 % of all samples of a MiniLM batch (32 × 16 tokens, AMD
/// EPYC).
///
/// # Safety
/// `src` valid for `rows` rows of `kc` floats `lda` apart, `dst` for `rows * kc` floats.
pub(super) unsafe fn pack_sliver(
    dst: *mut f32,
    src: *const f32,
    lda: usize,
    rows: usize,
    kc: usize,
) {
    transpose(dst, rows, src, lda, rows, kc)
}

/// `dst[k][r] = src[r][k]` for `r < rows`, `k < kc`: source rows `lda` apart, destination
/// rows `ldd` apart ([`pack_sliver`] with `ldd = rows`; attention's query and output blocks).
///
/// # Safety
/// `src` valid for `rows` rows of `kc` floats `lda` apart, `dst` for `kc` rows of `rows`
/// floats `ldd` apart, `ldd >= rows`.
pub(crate) unsafe fn transpose(
    dst: *mut f32,
    ldd: usize,
    src: *const f32,
    lda: usize,
    rows: usize,
    kc: usize,
) {
    let row = |r: usize| src.add(r * lda);
    let mut kk = 0;
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        while kk + 4 <= kc {
            let at = |j: usize, r: usize| dst.add((kk + j) * ldd + r);
            let mut r = 0;
            while r + 4 <= rows {
                let x0 = _mm_loadu_ps(row(r).add(kk));
                let x1 = _mm_loadu_ps(row(r + 1).add(kk));
                let x2 = _mm_loadu_ps(row(r + 2).add(kk));
                let x3 = _mm_loadu_ps(row(r + 3).add(kk));
                // (a0 b0 a1 b1), (a2 b2 a3 b3), (c0 d0 c1 d1), (c2 d2 c3 d3)
                let (ab01, ab23) = (_mm_unpacklo_ps(x0, x1), _mm_unpackhi_ps(x0, x1));
                let (cd01, cd23) = (_mm_unpacklo_ps(x2, x3), _mm_unpackhi_ps(x2, x3));
                _mm_storeu_ps(at(0, r), _mm_movelh_ps(ab01, cd01));
                _mm_storeu_ps(at(1, r), _mm_movehl_ps(cd01, ab01));
                _mm_storeu_ps(at(2, r), _mm_movelh_ps(ab23, cd23));
                _mm_storeu_ps(at(3, r), _mm_movehl_ps(cd23, ab23));
                r += 4;
            }
            if r + 2 <= rows {
                let x0 = _mm_loadu_ps(row(r).add(kk));
                let x1 = _mm_loadu_ps(row(r + 1).add(kk));
                let (ab01, ab23) = (_mm_unpacklo_ps(x0, x1), _mm_unpackhi_ps(x0, x1));
                _mm_storel_pd(at(0, r).cast(), _mm_castps_pd(ab01));
                _mm_storeh_pd(at(1, r).cast(), _mm_castps_pd(ab01));
                _mm_storel_pd(at(2, r).cast(), _mm_castps_pd(ab23));
                _mm_storeh_pd(at(3, r).cast(), _mm_castps_pd(ab23));
                r += 2;
            }
            if r < rows {
                for j in 0..4 {
                    *at(j, r) = *row(r).add(kk + j);
                }
            }
            kk += 4;
        }
    }
    for k in kk..kc {
        for r in 0..rows {
            *dst.add(k * ldd + r) = *row(r).add(k);
        }
    }
}

/// C entry point for generated code (`RuntimeFns::gemm`): runs `*call` with the tiling it
/// names, each 0 field resolved automatically.
///
/// # Safety
/// As [`sgemm`]; `call` points at a valid [`GemmCall`].
#[no_mangle]
pub unsafe extern "C" fn cranformer_gemm(call: *const GemmCall) {
    // SAFETY: the caller passes a valid call (see above).
    let g = unsafe { &*call };
    // Generated code cannot unwind: a panic is recorded for the host instead.
    threads::catch_for_generated_code(|| {
        let (isa, bl, tasks) = g.resolved();
        // SAFETY: the caller promised pointers valid for the call's sizes.
        unsafe {
            if profile::enabled() {
                let t = std::time::Instant::now();
                run(g, isa, bl, tasks);
                profile::record(g, isa, bl, tasks, t.elapsed());
            } else {
                run(g, isa, bl, tasks);
            }
        }
    });
}

/// Column panels `p0..p1` of C; `then`, the first panel of the chunk this thread runs next,
/// if it knows.
///
/// # Safety
/// As [`sgemm`], `p0..p1` within the panels of N.
unsafe fn block(
    g: &GemmCall,
    isa: Isa,
    bl: Blocking,
    act: Act,
    p0: usize,
    p1: usize,
    then: Option<usize>,
) {
    let (mr, nr) = (isa.mr(), isa.nr());
    let kc_max = bl.kc.max(1);
    let mc_max = (bl.mc / mr).max(1) * mr;
    // The chunk's end column: no claim on C reaches past it.
    let end = (p1 * PACK_NR).min(g.n);
    let mut pc = 0;
    while pc < g.k {
        let kc = kc_max.min(g.k - pc);
        let mut ic = 0;
        while ic < g.m {
            let mc = mc_max.min(g.m - ic);
            let tiles = RowTiles::balanced(mc, mr);
            // A decode step's single row reads several whole panels at once (`gemv`).
            let first = if g.m == 1 {
                gemv_panels(g, isa, act, g.a.add(pc), pc, kc, p0, p1)
            } else {
                p0
            };
            // Each tile-wide column strip of the panels, its kc × nr B sliver in L1, meets
            // the mc rows of A (in L2).
            for strip in first * (PACK_NR / nr)..p1 * (PACK_NR / nr) {
                let col = strip * nr;
                if col >= g.n {
                    break;
                }
                let (p, sub) = (col / PACK_NR, col % PACK_NR);
                let bptr = g.b.add(p * g.k * PACK_NR + pc * PACK_NR + sub);
                let mut ahead = Ahead::new(
                    Ahead::next(p, p1, first, then, g.n, pc, kc, g.k, ic, mc, g.m, mr)
                        .map(|(np, npc)| g.b.add(np * g.k * PACK_NR + npc * PACK_NR).cast()),
                    kc * PACK_NR * 4,
                    (PACK_NR / nr, sub / nr),
                    tiles.count(),
                );
                let mut ir = 0;
                while ir < mc {
                    let rows = tiles.rows(ir);
                    let next = NextTile::after(ic, ir, tiles, col, nr, end);
                    let fetch = ahead.take().claim(g.c, g.ldc, next);
                    let init = if pc > 0 {
                        Init::Load
                    } else if g.bias.is_null() {
                        Init::Zero
                    } else {
                        Init::Bias(g.bias.add(col))
                    };
                    let tile = Tile {
                        kc,
                        a: g.a.add((ic + ir) * g.lda + pc),
                        lda: g.lda,
                        b: bptr,
                        c: g.c.add((ic + ir) * g.ldc + col),
                        ldc: g.ldc,
                        rows,
                        cols: nr.min(g.n - col),
                        init,
                        bias_cols_valid: g.n - col,
                        fetch,
                    };
                    micro(isa, &tile);
                    if pc + kc == g.k {
                        let res = if g.residual.is_null() {
                            g.residual
                        } else {
                            g.residual.add((ic + ir) * g.ldc + col)
                        };
                        epilogue::apply(act, tile.c, g.ldc, tile.rows, tile.cols, res);
                    }
                    ir += rows;
                }
            }
            ic += mc;
        }
        pc += kc;
    }
}

/// Fetching the B sliver after the current one towards L2, a share per tile call, while the
/// current one runs from L1: a new panel is a new stream to the hardware prefetchers, and the
/// first tile on it otherwise waits for L3 or DRAM. Used by the f32 and narrow tile loops.
pub(super) struct Ahead {
    base: Option<*const u8>,
    lines: usize,
    share: usize,
    call: usize,
}

impl Ahead {
    /// Whether an M block of `mc` rows in tiles of `mr` fetches the next B sliver ahead: four
    /// row tiles or more (see [`Ahead::next`]). The tile picker counts that sliver in L2.
    pub fn pays(mc: usize, mr: usize) -> bool {
        mc >= 4 * mr
    }

    /// The sliver after panel `p`'s at K offset `pc` (`kc` long) in a loop over panels
    /// `first..p1` of N columns, K of `k`, rows `ic..ic+mc` of `m` in tiles of `mr`: the next
    /// panel's, else the first panel's in the next K block, else after the last K block the
    /// first sliver of panel `then` (the thread's next chunk; in BERT-base's matmuls on 2
    /// threads the first sliver of each chunk, 96 KiB from DRAM without it, was 2-4 % of
    /// their time, AMD EPYC Zen 5); `None` where fetching ahead does not pay.
    ///
    /// Only where a sliver meets four or more tiles of rows ([`Ahead::pays`]): with a few rows
    /// (batched decode) the product is bound by streaming B, and fetching ahead competes with
    /// the stream (GPT-2 decode with 8 rows ran 15-30 % slower with it; BERT-base seq 128 ran
    /// 0.85x the time without it, AMD EPYC AVX-512).
    #[allow(clippy::too_many_arguments)]
    pub fn next(
        p: usize,
        p1: usize,
        first: usize,
        then: Option<usize>,
        n: usize,
        pc: usize,
        kc: usize,
        k: usize,
        ic: usize,
        mc: usize,
        m: usize,
        mr: usize,
    ) -> Option<(usize, usize)> {
        if !Ahead::pays(mc, mr) {
            None
        } else if p + 1 < p1 && (p + 1) * PACK_NR < n {
            Some((p + 1, pc))
        } else if ic + mc < m {
            None
        } else if pc + kc < k {
            Some((first, pc + kc))
        } else {
            then.filter(|&np| np * PACK_NR < n).map(|np| (np, 0))
        }
    }

    /// `bytes` of the sliver at `base`, spread over `strips.0` strips of a panel (this one
    /// `strips.1`) of `tiles` tile calls each.
    pub fn new(
        base: Option<*const u8>,
        bytes: usize,
        strips: (usize, usize),
        tiles: usize,
    ) -> Ahead {
        let lines = bytes / 64;
        Ahead {
            base,
            lines,
            share: lines.div_ceil(strips.0 * tiles),
            call: strips.1 * tiles,
        }
    }

    /// This tile call's share of lines, to hint towards L2 before or during the call.
    #[inline(always)]
    pub fn take(&mut self) -> Fetch {
        let Some(base) = self.base else {
            return Fetch::NONE;
        };
        let (from, to) = (
            (self.call * self.share).min(self.lines),
            ((self.call + 1) * self.share).min(self.lines),
        );
        self.call += 1;
        Fetch {
            base: base.wrapping_add(from * 64),
            lines: to - from,
            ..Fetch::NONE
        }
    }
}

/// Cache lines to hint towards L2 (`lines` of 64 bytes from `base`), and the lines of the
/// next tile's C to claim for writing ([`Fetch::claim`]), for a kernel to spread over its K
/// loop: issued in one burst before a tile, the hints stall the core while the miss buffers
/// are full (most of the tile loop's own time in `perf`, AMD EPYC; claiming C in a burst before
/// each tile made BERT-base 2 % slower), while one every few K steps overlaps them with the
/// FMAs.
#[derive(Clone, Copy)]
pub(crate) struct Fetch {
    pub base: *const u8,
    pub lines: usize,
    /// The first line of the next tile's first row of C, `out_ld` bytes from one row to the
    /// next, `out_per_row` lines a row, `out_lines` in all (0: nothing to claim).
    out: *const u8,
    out_ld: usize,
    out_per_row: usize,
    out_lines: usize,
}

impl Fetch {
    pub const NONE: Fetch = Fetch {
        base: std::ptr::null(),
        lines: 0,
        out: std::ptr::null(),
        out_ld: 0,
        out_per_row: 0,
        out_lines: 0,
    };

    /// These hints and a claim on the lines of C (rows `ldc` floats apart) that the next tile
    /// call writes, where there is one.
    ///
    /// A store to a line that is not in this core's cache in a writable state first fetches
    /// it and takes it from every other core's cache, and the tile's 24 stores at its end
    /// wait for that. The activation arena reuses lines that the other threads have read (a
    /// matmul's A, read by every thread) or written, and on a host where a line takes
    /// 370-420 ns to go between the vCPUs and back (AMD EPYC Zen 5 KVM guest, 2 vCPUs)
    /// BERT-base seq 128 on 2 threads took 0.96x the time with the claims (25 rounds
    /// alternating with the binary without them); where it took 100-140 ns, 1.00x (35 rounds).
    ///
    /// `prefetchw` is only issued on a CPU that reports it (cpuid `PRFCHW`), nothing
    /// elsewhere.
    #[inline(always)]
    pub fn claim(self, c: *const f32, ldc: usize, next: Option<NextTile>) -> Fetch {
        let Some(NextTile {
            row,
            col,
            rows,
            cols,
        }) = next.filter(|_| claims_lines())
        else {
            return self;
        };
        let c = c.wrapping_add(row * ldc + col);
        let (bytes, ld) = (cols * 4, ldc * 4);
        // Rows that do not start on a line reach into one more line than whole rows do.
        let aligned = (c as usize).is_multiple_of(64) && ld.is_multiple_of(64);
        let per_row = bytes.div_ceil(64) + usize::from(!aligned);
        Fetch {
            out: c.cast(),
            out_ld: ld,
            out_per_row: per_row,
            out_lines: rows * per_row,
            ..self
        }
    }

    /// Hint steps in all: the B lines and the C lines, side by side.
    #[inline(always)]
    fn steps(self) -> usize {
        self.lines.max(self.out_lines)
    }

    /// K steps between two hints in a loop of `kc` steps.
    #[inline(always)]
    pub fn every(self, kc: usize) -> usize {
        kc.checked_div(self.steps())
            .map_or(usize::MAX, |e| e.max(1))
    }

    /// Hints line `i` of B and of C, where they have one.
    #[inline(always)]
    pub fn line(self, i: usize) {
        self.b_line(i);
        self.c_line(i);
    }

    /// Hints line `i` of B towards L2, where it has one (nothing off x86-64).
    #[inline(always)]
    fn b_line(self, i: usize) {
        #[cfg(target_arch = "x86_64")]
        if i < self.lines {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
            // SAFETY: a prefetch hint never faults; the address stays within the weights.
            unsafe { _mm_prefetch::<_MM_HINT_T1>(self.base.wrapping_add(i * 64).cast()) };
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = i;
    }

    /// Claims line `i` of the next tile's C, where it has one (nothing off x86-64).
    #[inline(always)]
    fn c_line(self, i: usize) {
        #[cfg(target_arch = "x86_64")]
        if i < self.out_lines {
            let row = self.out.wrapping_add(i / self.out_per_row * self.out_ld);
            let line = (row as usize & !63) + i % self.out_per_row * 64;
            // SAFETY: a prefetch hint never faults and changes no data; `claim` is only set
            // where the CPU has the instruction.
            unsafe {
                std::arch::asm!(
                    "prefetchw [{line}]",
                    line = in(reg) line,
                    options(nostack, readonly, preserves_flags)
                )
            };
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = i;
    }

    /// Hints lines `from..` (what a kernel's K loop did not get to).
    #[inline(always)]
    pub fn rest(self, from: usize) {
        for i in from..self.steps() {
            self.line(i);
        }
    }

    /// The B lines in one burst, for kernels that do not spread them over their loop; no
    /// claims on C, which in a burst made the f32 tiles slower (see [`Fetch`]).
    #[inline(always)]
    pub fn all(self) {
        for i in 0..self.lines {
            self.b_line(i);
        }
    }
}

/// Rows a tile kernel fills every FMA pipe with: two accumulators a row (AVX2 and AVX-512),
/// and an FMA's latency of 4 cycles on 2 pipes wants 8 chains side by side.
const FULL_PIPE_ROWS: usize = 4;

/// The heights of the row tiles of an M block of `mc` rows, in tiles of at most `mr`.
///
/// `balanced` (the f32 tiles, which read A where it is): where the last tile would be shorter
/// than [`FULL_PIPE_ROWS`], it and the tile before it share their rows (BERT's 128 rows on the
/// AVX2 6-row tile: 20 × 6 + 4 + 4 instead of 21 × 6 + 2). A 2-row tile keeps 4 FMA chains
/// going, half of what the pipes take, and took the time of a 4-row one: m = 128 ran at 0.98x
/// the GFLOP/s of m = 126 or 132 (BERT-base's FFN matmul, 2 threads, AMD EPYC Zen 5 held to
/// AVX2). Every element still sums its products in the same order.
///
/// `uniform` (the narrow formats, whose A is packed in slivers of `mr` rows): `mr` each, the
/// last what is left.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RowTiles {
    mc: usize,
    mr: usize,
    /// Where the two shared tiles start (`mc` where none are).
    pair: usize,
}

impl RowTiles {
    pub fn balanced(mc: usize, mr: usize) -> RowTiles {
        let (q, s) = (mc / mr, mc % mr);
        let pair = if q >= 1 && s > 0 && s < FULL_PIPE_ROWS {
            (q - 1) * mr
        } else {
            mc
        };
        RowTiles { mc, mr, pair }
    }

    pub fn uniform(mc: usize, mr: usize) -> RowTiles {
        RowTiles { mc, mr, pair: mc }
    }

    /// Rows of the tile that starts at row `ir` of the block.
    #[inline]
    pub fn rows(self, ir: usize) -> usize {
        if ir == self.pair {
            (self.mc - ir).div_ceil(2)
        } else {
            self.mr.min(self.mc - ir)
        }
    }

    /// Tiles in the block.
    pub fn count(self) -> usize {
        self.mc.div_ceil(self.mr)
    }
}

/// Where the next tile of a thread's tile loop lies in C ([`Fetch::claim`]).
#[derive(Clone, Copy)]
pub(crate) struct NextTile {
    row: usize,
    col: usize,
    rows: usize,
    cols: usize,
}

impl NextTile {
    /// The tile after the one at rows `ic + ir..` and column `col` of a loop that takes an M
    /// block from `ic` in `tiles`, strip by strip (`nr` columns) up to column `end`: the next
    /// rows of the strip, else the first rows of the next strip, else none (the next K block,
    /// M block or chunk starts elsewhere, maybe in another thread's columns).
    pub fn after(
        ic: usize,
        ir: usize,
        tiles: RowTiles,
        col: usize,
        nr: usize,
        end: usize,
    ) -> Option<NextTile> {
        let below = ir + tiles.rows(ir);
        if below < tiles.mc {
            Some(NextTile {
                row: ic + below,
                col,
                rows: tiles.rows(below),
                cols: nr.min(end - col),
            })
        } else if col + nr < end {
            Some(NextTile {
                row: ic,
                col: col + nr,
                rows: tiles.rows(0),
                cols: nr.min(end - col - nr),
            })
        } else {
            None
        }
    }
}

/// Whether this CPU has `prefetchw` (cpuid leaf 0x8000_0001, ECX bit 8: `PRFCHW`), asked once.
#[inline(always)]
fn claims_lines() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(prfchw)
}

fn prfchw() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::__cpuid;
        // The extended leaf is read only where the CPU reports it.
        __cpuid(0x8000_0000).eax >= 0x8000_0001 && __cpuid(0x8000_0001).ecx >> 8 & 1 == 1
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Runs `$step` (one K step of a tile kernel) `$kc` times, hinting one line of `$fetch` every
/// [`Fetch::every`] steps and the rest at the end. A macro, so the step's intrinsics stay
/// inside the kernel's target-feature function. With `unroll4`, the steps run four to a loop
/// iteration (see the AVX2 kernel for why).
macro_rules! spread_fetch {
    ($fetch:expr, $kc:expr, $step:block) => {
        $crate::gemm::spread_fetch!($fetch, $kc, |steps| for _ in 0..steps $step)
    };
    ($fetch:expr, $kc:expr, unroll4, $step:block) => {
        $crate::gemm::spread_fetch!($fetch, $kc, |steps| {
            let mut s = steps;
            while s >= 4 {
                $step
                $step
                $step
                $step
                s -= 4;
            }
            for _ in 0..s $step
        })
    };
    ($fetch:expr, $kc:expr, |$steps:ident| $run:expr) => {{
        let fetch: $crate::gemm::Fetch = $fetch;
        let (every, mut left, mut line) = (fetch.every($kc), $kc, 0);
        while left > 0 {
            if line < fetch.lines {
                fetch.line(line);
                line += 1;
            }
            let $steps = every.min(left);
            $run;
            left -= $steps;
        }
        fetch.rest(line);
    }};
}
pub(crate) use spread_fetch;

/// Runs whole panels `p0..` of a one-row product in groups through the GEMV kernels, as far
/// as whole groups of full panels go; returns the first panel left to the tile path.
///
/// # Safety
/// As [`sgemm`] with `g.m == 1`; `a` is A's row from the K block's start `pc`, and
/// `p0..p1` within the panels of N.
#[allow(clippy::too_many_arguments)]
unsafe fn gemv_panels(
    g: &GemmCall,
    isa: Isa,
    act: Act,
    a: *const f32,
    pc: usize,
    kc: usize,
    p0: usize,
    p1: usize,
) -> usize {
    let group = gemv_group(isa);
    if group == 0 {
        return p0;
    }
    let mut p = p0;
    while p + group <= p1 && (p + group) * PACK_NR <= g.n {
        let col = p * PACK_NR;
        let init = if pc > 0 {
            Init::Load
        } else if g.bias.is_null() {
            Init::Zero
        } else {
            Init::Bias(g.bias.add(col))
        };
        let b = g.b.add(p * g.k * PACK_NR + pc * PACK_NR);
        let c = g.c.add(col);
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                gemv::avx512::<{ gemv::AVX512_PANELS }>(kc, a, b, g.k * PACK_NR, c, init)
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => gemv::avx2::<{ gemv::AVX2_PANELS }>(kc, a, b, g.k * PACK_NR, c, init),
            _ => return p,
        }
        if pc + kc == g.k {
            let res = if g.residual.is_null() {
                g.residual
            } else {
                g.residual.add(col)
            };
            epilogue::apply(act, c, g.ldc, 1, group * PACK_NR, res);
        }
        p += group;
    }
    p
}

/// One register tile: `rows × cols` of C from `rows` rows of A and a B sliver.
pub(crate) struct Tile {
    pub kc: usize,
    /// `[rows][kc]`, rows `lda` apart.
    pub a: *const f32,
    pub lda: usize,
    /// `[kc]` rows of the tile's columns, [`PACK_NR`] floats apart.
    pub b: *const f32,
    pub c: *mut f32,
    pub ldc: usize,
    pub rows: usize,
    pub cols: usize,
    pub init: Init,
    /// Bias entries that exist from this tile's first column (the bias is not padded).
    pub bias_cols_valid: usize,
    /// Lines of a later B sliver to hint towards L2 during the call.
    pub fetch: Fetch,
}

/// # Safety
/// The tile's pointers valid for its rows, columns and K (see [`Tile`]); `isa` one the CPU
/// has (callers pass [`Isa::from_code`]'s choice, which falls back to what was detected).
unsafe fn micro(isa: Isa, t: &Tile) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => avx512::tile(t),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => avx2::tile(t),
        _ => portable::tile(t),
    }
}

/// Runs a full-width tile kernel on a tile that may be partial: a partial tile goes through
/// a scratch tile of `NR` columns so kernels only ever load and store whole vectors.
pub(crate) unsafe fn with_full_tile<const NR: usize>(
    t: &Tile,
    kernel: impl Fn(&Tile, *mut f32, usize, Init),
) {
    let bias_full = t.bias_cols_valid >= NR;
    if t.cols == NR && (bias_full || !matches!(t.init, Init::Bias(_))) {
        kernel(t, t.c, t.ldc, t.init);
        return;
    }
    let mut scratch = [0f32; 12 * 32];
    let init = match t.init {
        Init::Load => {
            for r in 0..t.rows {
                std::ptr::copy_nonoverlapping(
                    t.c.add(r * t.ldc),
                    scratch.as_mut_ptr().add(r * NR),
                    t.cols,
                );
            }
            Init::Load
        }
        Init::Bias(b) => {
            let mut padded = [0f32; 32];
            std::ptr::copy_nonoverlapping(b, padded.as_mut_ptr(), t.bias_cols_valid.min(NR));
            kernel(t, scratch.as_mut_ptr(), NR, Init::Bias(padded.as_ptr()));
            for r in 0..t.rows {
                std::ptr::copy_nonoverlapping(
                    scratch.as_ptr().add(r * NR),
                    t.c.add(r * t.ldc),
                    t.cols,
                );
            }
            return;
        }
        Init::Zero => Init::Zero,
    };
    kernel(t, scratch.as_mut_ptr(), NR, init);
    for r in 0..t.rows {
        std::ptr::copy_nonoverlapping(scratch.as_ptr().add(r * NR), t.c.add(r * t.ldc), t.cols);
    }
}

/// The best family the CPU runs, whatever `CRANFORMER_ISA` says.
pub fn detect_hardware() -> Isa {
    Isa::detect_with(None)
}

/// Every kernel family this CPU runs, best first (the narrower ones run on any CPU that has a
/// wider one), whatever `CRANFORMER_ISA` says: what tests and benchmarks compare.
pub fn runnable() -> Vec<Isa> {
    let best = detect_hardware();
    [Isa::Avx512, Isa::Avx2, Isa::Portable]
        .into_iter()
        .filter(|&i| i >= best)
        .collect()
}

/// [`Isa::detect`], once.
pub fn detected() -> Isa {
    static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
    *ISA.get_or_init(Isa::detect)
}

#[cfg(test)]
mod qtests;
#[cfg(test)]
mod tests;
