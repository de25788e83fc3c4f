//! Single-precision matrix multiply for the generated code: `C = A·B (+ bias)`, with B (the
//! weights) packed once into column panels and A (the activations) packed per cache block.
//!
//! Cranelift emits 128-bit vectors only, a quarter of this machine's 512-bit FMA peak, so
//! the matmuls call these micro-kernels, written with `std::arch` and chosen by the CPU's
//! features at run time (as IREE's generated code calls its ukernels). Loop nest (BLIS
//! order): threads split the column panels; for each K block of `kc`, A's rows are packed
//! into slivers of MR rows; each packed B sliver (`kc × NR`, kept in L1) is multiplied with
//! every A sliver (streamed from L2). The K blocking never depends on the thread count, so
//! every element sums its products in the same order: results are identical for any
//! number of threads.

mod avx2;
mod avx512;
mod portable;

use crate::threads;

/// Which micro-kernel family runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Isa {
    /// 12×32 tile: 24 zmm accumulators.
    Avx512,
    /// 6×16 tile: 12 ymm accumulators.
    Avx2,
    /// 4×8 tile in plain Rust: any CPU.
    Portable,
}

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

/// One matmul's operands. Pointers are raw because the generated code calls in.
#[derive(Clone, Copy, Debug)]
pub struct Sgemm {
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
}

unsafe impl Send for Sgemm {}
unsafe impl Sync for Sgemm {}

/// `C = A·B + bias` with `isa`'s kernels, on up to `threads::threads()` threads.
///
/// # Safety
/// The pointers must be valid for the sizes given; B must be packed with [`PACK_NR`].
pub unsafe fn sgemm(g: &Sgemm, isa: Isa, blocking: Blocking) {
    if g.m == 0 || g.n == 0 {
        return;
    }
    let panels = g.n.div_ceil(PACK_NR);
    // Contiguous ranges of panels, one per thread: each thread packs A for itself, which
    // costs M·K against its M·K·N/threads of multiply-adds.
    let tasks = threads::threads().min(panels).min(
        // Too little work is not worth waking threads (~5 µs).
        (g.m * g.n * g.k / 200_000).max(1),
    );
    let per = panels.div_ceil(tasks);
    threads::parallel_for(tasks, &|t| {
        let (p0, p1) = (t * per, ((t + 1) * per).min(panels));
        if p0 < p1 {
            block(g, isa, blocking, p0, p1);
        }
    });
}

thread_local! {
    static PACKED_A: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Column panels `p0..p1` of C.
unsafe fn block(g: &Sgemm, isa: Isa, bl: Blocking, p0: usize, p1: usize) {
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
unsafe fn pack_a(
    g: &Sgemm,
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

/// C entry point for generated code: `c = a·b + bias` with this CPU's kernels and default
/// blocking. `b` must be packed by [`pack_b`] with [`PACK_NR`].
///
/// # Safety
/// As [`sgemm`].
#[no_mangle]
pub unsafe extern "C" fn cranformer_sgemm(
    m: usize,
    n: usize,
    k: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    bias: *const f32,
    c: *mut f32,
    ldc: usize,
) {
    let isa = detected();
    sgemm(
        &Sgemm {
            m,
            n,
            k,
            a,
            lda,
            b,
            bias,
            c,
            ldc,
        },
        isa,
        Blocking::default_for(isa),
    );
}

/// [`Isa::detect`], once.
pub fn detected() -> Isa {
    static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
    *ISA.get_or_init(Isa::detect)
}

#[cfg(test)]
mod tests;
