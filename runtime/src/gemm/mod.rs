//! Single-precision matrix multiply for the generated code: `C = act(A·B + bias) + residual`,
//! with B (the weights) packed once into column panels and A (the activations) packed per
//! cache block. The generated code describes each call in a [`GemmCall`], including the
//! tiling the compiler's cost model chose (`compiler/src/tiling`).
//!
//! Cranelift emits 128-bit vectors only, a quarter of this machine's 512-bit FMA peak, so
//! the matmuls call these micro-kernels, written with `std::arch` and chosen by the CPU's
//! features at run time (as IREE's generated code calls its ukernels). Loop nest (BLIS
//! order): threads split the column panels; for each K block of `kc`, A's rows are packed
//! into slivers of MR rows; each packed B sliver (`kc × NR`, kept in L1) is multiplied with
//! every A sliver (streamed from L2). The K blocking never depends on the thread count, so
//! every element sums its products in the same order: results are identical for any
//! number of threads. The epilogue (activation, residual) runs on each tile right after its
//! last K block, while the tile is in L1.
//!
//! Narrow weights (int8, bf16, f16) have the same loop nest in `qgemm.rs`, their formats and
//! packing in `quant.rs`, and their kernels beside the f32 ones (`avx512_q.rs`, `avx2_q.rs`,
//! `portable_q.rs`).

mod avx2;
mod avx2_q;
mod avx512;
mod avx512_q;
pub mod epilogue;
mod portable;
mod portable_q;
pub mod profile;
pub mod qgemm;
pub mod quant;

pub use epilogue::Act;
pub use qgemm::{qgemm, QGemmCall, QKernel, KERNELS};
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
    pub fn detect() -> Isa {
        let forced = std::env::var("CRANFORMER_ISA").ok();
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
    let panels = n.div_ceil(nr);
    let mut out = vec![0f32; panels * k * nr];
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
    out
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

    /// The ISA, blocking and thread count this call runs with once the zeros ("auto") are
    /// resolved.
    pub fn resolved(&self) -> (Isa, Blocking, usize) {
        let isa = Isa::from_code(self.isa);
        let def = Blocking::default_for(isa);
        let bl = Blocking {
            kc: if self.kc == 0 {
                def.kc
            } else {
                self.kc as usize
            },
            mc: if self.mc == 0 {
                def.mc
            } else {
                self.mc as usize
            },
        };
        let pool = threads::threads();
        let panels = self.n.div_ceil(PACK_NR).max(1);
        let t = match self.threads {
            // Too little work is not worth waking threads (~5 µs).
            0 => pool.min((self.m * self.n * self.k / 200_000).max(1)),
            t => (t as usize).min(pool),
        };
        (isa, bl, t.min(panels).max(1))
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
    let panels = g.n.div_ceil(PACK_NR);
    // Contiguous ranges of panels, one per thread: each thread packs A for itself, which
    // costs M·K against its M·K·N/threads of multiply-adds.
    let tasks = tasks.clamp(1, panels);
    let per = panels.div_ceil(tasks);
    threads::parallel_for(tasks, &|t| {
        let (p0, p1) = (t * per, ((t + 1) * per).min(panels));
        if p0 < p1 {
            block(g, isa, blocking, act, p0, p1);
        }
    });
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

thread_local! {
    static PACKED_A: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Column panels `p0..p1` of C.
///
/// # Safety
/// As [`sgemm`], and `p0..p1` within the panels of N.
unsafe fn block(g: &GemmCall, isa: Isa, bl: Blocking, act: Act, p0: usize, p1: usize) {
    let (mr, nr) = (isa.mr(), isa.nr());
    let kc_max = bl.kc.max(1);
    let mc_max = (bl.mc / mr).max(1) * mr;
    PACKED_A.with(|buf| {
        let mut buf = buf.borrow_mut();
        buf.resize(mc_max * kc_max, 0.0);
        let mut pc = 0;
        while pc < g.k {
            let kc = kc_max.min(g.k - pc);
            let mut ic = 0;
            while ic < g.m {
                let mc = mc_max.min(g.m - ic);
                pack_a(g, ic, mc, pc, kc, mr, &mut buf);
                // Each tile-wide column strip of the panels, its kc × nr B sliver in L1.
                for strip in p0 * (PACK_NR / nr)..p1 * (PACK_NR / nr) {
                    let col = strip * nr;
                    if col >= g.n {
                        break;
                    }
                    let (p, sub) = (col / PACK_NR, col % PACK_NR);
                    let bptr = g.b.add(p * g.k * PACK_NR + pc * PACK_NR + sub);
                    let mut ir = 0;
                    while ir < mc {
                        let init = if pc > 0 {
                            Init::Load
                        } else if g.bias.is_null() {
                            Init::Zero
                        } else {
                            Init::Bias(g.bias.add(col))
                        };
                        let tile = Tile {
                            kc,
                            a: buf.as_ptr().add(ir * kc),
                            b: bptr,
                            c: g.c.add((ic + ir) * g.ldc + col),
                            ldc: g.ldc,
                            rows: mr.min(mc - ir),
                            cols: nr.min(g.n - col),
                            init,
                            bias_cols_valid: g.n - col,
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
                        ir += mr;
                    }
                }
                ic += mc;
            }
            pc += kc;
        }
    });
}

/// Packs rows `ic..ic+mc`, columns `pc..pc+kc` of A into slivers of `mr` rows: sliver s is
/// `[kc][rows]` with `rows = min(mr, mc - s*mr)`, so a micro-kernel reads A sequentially.
///
/// # Safety
/// A valid for `g`'s sizes, and the block within M × K.
unsafe fn pack_a(
    g: &GemmCall,
    ic: usize,
    mc: usize,
    pc: usize,
    kc: usize,
    mr: usize,
    buf: &mut [f32],
) {
    let mut s = 0;
    while s < mc {
        let rows = mr.min(mc - s);
        let dst = &mut buf[s * kc..(s + rows) * kc];
        for r in 0..rows {
            let src = std::slice::from_raw_parts(g.a.add((ic + s + r) * g.lda + pc), kc);
            for (kk, &v) in src.iter().enumerate() {
                dst[kk * rows + r] = v;
            }
        }
        s += mr;
    }
}

/// One register tile: `rows × cols` of C from a packed A sliver and a B sliver.
pub(crate) struct Tile {
    pub kc: usize,
    /// `[kc][rows]`.
    pub a: *const f32,
    /// `[kc]` rows of the tile's columns, [`PACK_NR`] floats apart.
    pub b: *const f32,
    pub c: *mut f32,
    pub ldc: usize,
    pub rows: usize,
    pub cols: usize,
    pub init: Init,
    /// Bias entries that exist from this tile's first column (the bias is not padded).
    pub bias_cols_valid: usize,
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

/// [`Isa::detect`], once.
pub fn detected() -> Isa {
    static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
    *ISA.get_or_init(Isa::detect)
}

#[cfg(test)]
mod qtests;
#[cfg(test)]
mod tests;
