//! Matrix multiply with narrow weights, `C = act(A·dequant(B) + bias) + residual`: the same
//! loop nest as the f32 [`super::sgemm`] (threads split column panels, K blocks independent
//! of the thread count, epilogue on each tile after its last K block), with weights packed
//! by [`PackedWeight`].
//!
//! - int8: A is quantized per row (asymmetric u8, see [`QuantRows`]) once per call, before the
//!   threads start; the kernels accumulate exact i32 dot products, kept in C's memory between
//!   K blocks, and the last block dequantizes the tile in place,
//!   `y = (sa_i·sw_j)·(acc_ij - z_i·Σ_k w_kj) + bias_j`, before the f32 epilogue. Integer
//!   sums are exact, so every int8 kernel, blocking and thread count gives the same bits.
//! - bf16 / f16: f32 accumulation like the f32 kernels (bias in the accumulators), weights
//!   widened in registers. `vdpbf16ps` (AVX512-BF16) also rounds the activations to bf16
//!   (the operand format), which the widening kernels do not: see `BF16_DOT_TOLERANCE`.
//!
//! Kernels are declared once in [`KERNELS`], best first; tests run every one this CPU has.

use super::epilogue::{self, Act};
use super::quant::{PackedWeight, QuantRows, WeightFormat, WordLayout};
use super::{Blocking, Init, Isa, PACK_NR};
use crate::threads;

use super::portable_q;
pub use super::qgemv::MAX_ROWS as GEMV_ROWS;
use super::qgemv::{self, QGemv};
#[cfg(target_arch = "x86_64")]
use super::{amx, avx2_q, avx2_qgemv, avx512_q, avx512_qgemv};

/// One register tile of a narrow-weight kernel.
pub(crate) struct QTile {
    /// K of this block, padded to the format's group (4 for int8, 2 for bf16).
    pub kc: usize,
    /// int8: the quantized rows (u8, or i16 for widening kernels) at the block's first k,
    /// `lda` elements apart. bf16/f16: the packed A sliver, `[kc][rows]` f32 or, for
    /// `vdpbf16ps`, `[kc/2][rows]` bf16 pairs.
    pub a: *const u8,
    pub lda: usize,
    /// The weight panel at the block's first k and the tile's first column.
    pub b: *const u8,
    pub rows: usize,
    pub cols: usize,
    pub init: Init,
    pub bias_cols_valid: usize,
    /// Lines of a later weight sliver to hint towards L2 during the call: the VNNI kernel
    /// spreads them over its K loop, the others hint them all first.
    pub fetch: super::Fetch,
}

/// A micro-kernel: full-width tile of `rows` rows into `c` (stride `ldc`); int8 kernels
/// write i32 bits and only see `Init::Zero` or `Init::Load`.
type KernelFn = unsafe fn(&QTile, *mut f32, usize, Init);

/// What a kernel wants of A.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AForm {
    /// Quantized rows as u8.
    U8,
    /// Quantized rows widened to i16 (for `vpmaddwd`).
    I16,
    /// f32 slivers `[kc][rows]`.
    F32,
    /// bf16 pair slivers `[kc/2][rows]` (u32 each).
    Bf16Pairs,
    /// bf16 pairs row by row, `[rows][kc/2]` (AMX tiles).
    Bf16Rows,
}

/// A narrow-weight micro-kernel, named by ISA, op, dtype and tile as tract names them.
pub struct QKernel {
    pub name: &'static str,
    pub format: WeightFormat,
    /// The family it belongs to: `CRANFORMER_ISA` and [`QGemmCall::isa`] select among them.
    pub isa: Isa,
    pub mr: usize,
    pub nr: usize,
    available: fn() -> bool,
    pub(crate) a_form: AForm,
    tile: KernelFn,
    /// The decode GEMV of the same ISA and dtype ([`super::qgemv`]), if there is one.
    pub(crate) gemv: Option<QGemv>,
    /// See [`QKernel::macs_per_lane`]: [`lane_macs`] of its A form and ISA, but for the AMX
    /// tiles.
    macs_per_lane: u32,
}

impl std::fmt::Debug for QKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

impl QKernel {
    /// Whether this CPU runs it.
    pub fn available(&self) -> bool {
        (self.available)()
    }

    /// Whether it has a decode GEMV (runs matmuls of up to [`GEMV_ROWS`] rows).
    pub fn has_gemv(&self) -> bool {
        self.gemv.is_some()
    }

    /// The best kernel for `format` within `isa`'s family (or a narrower one).
    pub fn best(format: WeightFormat, isa: Isa) -> &'static QKernel {
        KERNELS
            .iter()
            .find(|k| k.format == format && k.isa >= isa && k.available())
            .expect("every format has a portable kernel")
    }

    /// The same kernel with its decode GEMV turned off, every panel through the tiles (for
    /// the tests and benchmarks that compare the two).
    pub fn tiles_only(&self) -> QKernel {
        QKernel {
            gemv: None,
            ..*self
        }
    }

    /// Multiply-adds per 32-bit lane per instruction, against an f32 FMA's one; the roofline
    /// scales the measured f32 compute roof by it.
    pub fn macs_per_lane(&self) -> u32 {
        self.macs_per_lane
    }

    /// Default cache blocking for `m` rows: a `kc × 32` weight sliver of about 16 KiB stays
    /// in L1 while A's rows stream past it; with at most [`DECODE_ROWS`] rows (decode steps)
    /// there is nothing to reuse it for, so K is not blocked and each tile is written once.
    pub fn blocking_for(&self, m: usize) -> Blocking {
        let bl = self.blocking();
        if m <= DECODE_ROWS {
            Blocking {
                kc: usize::MAX / 2,
                ..bl
            }
        } else {
            bl
        }
    }

    /// Default cache blocking: a `kc × 32` weight sliver of about 16 KiB stays in L1.
    pub fn blocking(&self) -> Blocking {
        match self.format {
            WeightFormat::I8 => Blocking { kc: 512, mc: 144 },
            _ => Blocking {
                kc: 256,
                mc: Blocking::default_for(self.isa).mc,
            },
        }
    }
}

/// Multiply-adds per 32-bit lane per instruction of a vector kernel whose A is in `a_form`,
/// against an f32 FMA's one: `vpdpbusd` (u8 x i8, 4), `vpmaddwd` (i16 pairs, 2), `vdpbf16ps`
/// (bf16 pairs, 2); kernels that widen to f32 and FMA do 1, and so does the portable (scalar)
/// int8 kernel. The AMX tiles state their own.
const fn lane_macs(a_form: AForm, isa: Isa) -> u32 {
    match (a_form, isa) {
        (AForm::U8, Isa::Avx512 | Isa::Avx2) => 4,
        (AForm::I16 | AForm::Bf16Pairs, _) => 2,
        // Row-major bf16 pairs feed only the AMX tiles, which state their own.
        (AForm::U8 | AForm::F32 | AForm::Bf16Rows, _) => 1,
    }
}

#[cfg(target_arch = "x86_64")]
/// AMX-INT8: 1024 u8 x i8 multiply-adds a cycle a core, 32 times the 2 x 16 lanes of f32 FMA.
const AMX_I8_MACS: u32 = 32;
#[cfg(target_arch = "x86_64")]
/// AMX-BF16: 512 bf16 pair multiply-adds a cycle, 16 times f32 FMA's 32.
const AMX_BF16_MACS: u32 = 16;

/// Up to this many rows a matmul is a decode step's (memory-bound: each weight is used by
/// few rows), and runs without K blocking.
pub const DECODE_ROWS: usize = 4;

macro_rules! feature {
    ($($f:tt),*) => {{
        #[cfg(target_arch = "x86_64")]
        fn f() -> bool {
            true $(&& std::is_x86_feature_detected!($f))*
        }
        #[cfg(not(target_arch = "x86_64"))]
        fn f() -> bool {
            false
        }
        f
    }};
}

macro_rules! kernel {
    (@gemv) => {
        None
    };
    (@gemv $gemv:expr) => {
        Some($gemv)
    };
    ($name:literal, $format:ident, $isa:ident, $mr:expr, $nr:expr, $a:ident, $tile:path,
     [$($f:tt),*] $(, $gemv:expr)?) => {
        QKernel {
            name: $name,
            format: WeightFormat::$format,
            isa: Isa::$isa,
            mr: $mr,
            nr: $nr,
            available: feature!($($f),*),
            a_form: AForm::$a,
            tile: $tile,
            gemv: kernel!(@gemv $($gemv)?),
            macs_per_lane: lane_macs(AForm::$a, Isa::$isa),
        }
    };
}

/// Every narrow-weight kernel, best first within each format.
#[cfg(target_arch = "x86_64")]
pub static KERNELS: &[QKernel] = &[
    // AMX tiles where the CPU has them and the OS grants them (`amx::usable`); the decode
    // GEMV stays VNNI's.
    QKernel {
        name: "amx_mmm_i8_32x32",
        format: WeightFormat::I8,
        isa: Isa::Avx512,
        mr: amx::MR,
        nr: amx::NR,
        available: amx::usable,
        a_form: AForm::U8,
        tile: amx::i8,
        gemv: Some(QGemv::new(
            PACK_NR,
            avx512_qgemv::PANELS,
            avx512_qgemv::vnni_i8,
        )),
        macs_per_lane: AMX_I8_MACS,
    },
    kernel!(
        "avx512vnni_mmm_i8_12x32",
        I8,
        Avx512,
        12,
        32,
        U8,
        avx512_q::vnni_i8,
        ["avx512f", "avx512bw", "avx512vnni"],
        QGemv::new(PACK_NR, avx512_qgemv::PANELS, avx512_qgemv::vnni_i8)
    ),
    kernel!(
        "avx512bw_mmm_i8_6x32",
        I8,
        Avx512,
        6,
        32,
        I16,
        avx512_q::bw_i8,
        ["avx512f", "avx512bw"],
        QGemv::new(PACK_NR, avx512_qgemv::BW_PANELS, avx512_qgemv::bw_i8)
    ),
    kernel!(
        "avxvnni_mmm_i8_6x16",
        I8,
        Avx2,
        6,
        16,
        U8,
        avx2_q::vnni_i8,
        ["avx2", "fma", "avxvnni"],
        QGemv::new(16, avx2_qgemv::PANELS, avx2_qgemv::vnni_i8)
    ),
    kernel!(
        "avx2_mmm_i8_6x8",
        I8,
        Avx2,
        6,
        8,
        I16,
        avx2_q::i8,
        ["avx2", "fma"],
        QGemv::new(8, avx2_qgemv::PANELS, avx2_qgemv::i8)
    ),
    kernel!(
        "portable_mmm_i8_4x8",
        I8,
        Portable,
        4,
        8,
        U8,
        portable_q::i8,
        []
    ),
    QKernel {
        name: "amx_mmm_bf16_32x32",
        format: WeightFormat::Bf16,
        isa: Isa::Avx512,
        mr: amx::MR,
        nr: amx::NR,
        available: amx::usable_bf16,
        a_form: AForm::Bf16Rows,
        tile: amx::bf16,
        // No GEMV: a decode step runs on the tiles too. f32 sums in another order than
        // AVX512-BF16's would make a row's bits depend on how many rows it came with.
        gemv: None,
        macs_per_lane: AMX_BF16_MACS,
    },
    kernel!(
        "avx512bf16_mmm_bf16_12x32",
        Bf16,
        Avx512,
        12,
        32,
        Bf16Pairs,
        avx512_q::bf16_dot,
        ["avx512f", "avx512bf16"],
        QGemv::new(PACK_NR, avx512_qgemv::PANELS, avx512_qgemv::bf16_dot)
    ),
    kernel!(
        "avx512_mmm_bf16_12x32",
        Bf16,
        Avx512,
        12,
        32,
        F32,
        avx512_q::bf16,
        ["avx512f"],
        QGemv::new(PACK_NR, avx512_qgemv::PANELS, avx512_qgemv::bf16)
    ),
    kernel!(
        "avx2_mmm_bf16_6x16",
        Bf16,
        Avx2,
        6,
        16,
        F32,
        avx2_q::bf16,
        ["avx2", "fma"],
        QGemv::new(16, avx2_qgemv::PANELS, avx2_qgemv::bf16)
    ),
    kernel!(
        "portable_mmm_bf16_4x8",
        Bf16,
        Portable,
        4,
        8,
        F32,
        portable_q::bf16,
        []
    ),
    kernel!(
        "avx512_mmm_f16_12x32",
        F16,
        Avx512,
        12,
        32,
        F32,
        avx512_q::f16,
        ["avx512f"],
        QGemv::new(PACK_NR, avx512_qgemv::PANELS, avx512_qgemv::f16)
    ),
    kernel!(
        "avx2_mmm_f16_6x16",
        F16,
        Avx2,
        6,
        16,
        F32,
        avx2_q::f16,
        ["avx2", "fma", "f16c"],
        QGemv::new(16, avx2_qgemv::PANELS, avx2_qgemv::f16)
    ),
    kernel!(
        "portable_mmm_f16_4x8",
        F16,
        Portable,
        4,
        8,
        F32,
        portable_q::f16,
        []
    ),
];

#[cfg(not(target_arch = "x86_64"))]
pub static KERNELS: &[QKernel] = &[
    kernel!(
        "portable_mmm_i8_4x8",
        I8,
        Portable,
        4,
        8,
        U8,
        portable_q::i8,
        []
    ),
    kernel!(
        "portable_mmm_bf16_4x8",
        Bf16,
        Portable,
        4,
        8,
        F32,
        portable_q::bf16,
        []
    ),
    kernel!(
        "portable_mmm_f16_4x8",
        F16,
        Portable,
        4,
        8,
        F32,
        portable_q::f16,
        []
    ),
];

/// Kernels only the tests run: the AMX kernel on emulated tiles (its addressing, tile shapes
/// and K tail checked on any CPU with VNNI, which runs the tail).
#[cfg(all(test, target_arch = "x86_64"))]
pub(crate) static TEST_KERNELS: &[QKernel] = &[
    QKernel {
        name: "amx_emulated_mmm_i8_32x32",
        format: WeightFormat::I8,
        isa: Isa::Avx512,
        mr: amx::MR,
        nr: amx::NR,
        // VNNI runs K's tail.
        available: feature!("avx512f", "avx512bw", "avx512vnni"),
        a_form: AForm::U8,
        tile: amx::i8_emulated,
        gemv: Some(QGemv::new(
            PACK_NR,
            avx512_qgemv::PANELS,
            avx512_qgemv::vnni_i8,
        )),
        macs_per_lane: AMX_I8_MACS,
    },
    QKernel {
        name: "amx_emulated_mmm_bf16_32x32",
        format: WeightFormat::Bf16,
        isa: Isa::Avx512,
        mr: amx::MR,
        nr: amx::NR,
        // Needs nothing: the tiles are emulated and K's tail runs on them too.
        available: feature!(),
        a_form: AForm::Bf16Rows,
        tile: amx::bf16_emulated,
        gemv: None,
        macs_per_lane: AMX_BF16_MACS,
    },
];

/// One narrow-weight matmul: `c = act(a·dequant(b) + bias) + residual`, like
/// [`super::GemmCall`] with the weight's format and its int8 side tables. The layout is the
/// ABI generated code will fill: twelve 8-byte fields, then six u32 (120 bytes on 64-bit
/// targets; codegen reads the offsets from [`crate::abi::qgemm_call`]).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct QGemmCall {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    /// `[M, K]`, row stride `lda`.
    pub a: *const f32,
    pub lda: usize,
    /// Panels as [`PackedWeight::data`].
    pub b: *const u8,
    /// int8: per-column scales, [`PackedWeight::scales`]; null otherwise.
    pub scales: *const f32,
    /// int8: per-column sums, [`PackedWeight::col_sums`]; null otherwise.
    pub col_sums: *const i32,
    /// `[N]` or null.
    pub bias: *const f32,
    /// `[M, N]`, row stride `ldc`.
    pub c: *mut f32,
    pub ldc: usize,
    /// `[M, N]` with stride `ldc`, added after the activation; or null.
    pub residual: *const f32,
    /// [`WeightFormat`] code: 0 f32, 1 bf16, 2 f16, 3 int8.
    pub format: u32,
    /// [`Act`] code.
    pub act: u32,
    /// K per block, 0 = the kernel's default.
    pub kc: u32,
    /// Rows of A per block, 0 = the kernel's default.
    pub mc: u32,
    /// 0 auto, 1 avx512, 2 avx2, 3 portable, as [`super::GemmCall::isa`].
    pub isa: u32,
    /// Threads to split N over, 0 = the pool's default.
    pub threads: u32,
}

#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<QGemmCall>() == 120);

// SAFETY: as for `GemmCall`: plain data whose pointers are dereferenced only inside `qgemm`/
// `cranformer_qgemm`, whose callers guarantee them valid for the call; the threads of one
// call read A, B, the side tables, bias and residual and write disjoint column ranges of C.
unsafe impl Send for QGemmCall {}
// SAFETY: as for Send.
unsafe impl Sync for QGemmCall {}

impl WeightFormat {
    /// [`QGemmCall::format`]'s code.
    pub fn code(self) -> u32 {
        match self {
            WeightFormat::F32 => 0,
            WeightFormat::Bf16 => 1,
            WeightFormat::F16 => 2,
            WeightFormat::I8 => 3,
        }
    }

    pub fn from_code(code: u32) -> Option<WeightFormat> {
        Some(match code {
            0 => WeightFormat::F32,
            1 => WeightFormat::Bf16,
            2 => WeightFormat::F16,
            3 => WeightFormat::I8,
            _ => return None,
        })
    }
}

impl QGemmCall {
    /// `c = a·w + bias` with automatic tiling; `w` must outlive the call's use.
    pub fn new(
        m: usize,
        a: *const f32,
        lda: usize,
        w: &PackedWeight,
        bias: *const f32,
        c: *mut f32,
        ldc: usize,
    ) -> QGemmCall {
        let ptr_or_null = |empty: bool, p: *const u8| if empty { std::ptr::null() } else { p };
        QGemmCall {
            m,
            n: w.n(),
            k: w.k(),
            a,
            lda,
            b: w.data().as_ptr(),
            scales: ptr_or_null(w.scales().is_empty(), w.scales().as_ptr().cast()).cast(),
            col_sums: ptr_or_null(w.col_sums().is_empty(), w.col_sums().as_ptr().cast()).cast(),
            bias,
            c,
            ldc,
            residual: std::ptr::null(),
            format: w.format().code(),
            act: 0,
            kc: 0,
            mc: 0,
            isa: 0,
            threads: 0,
        }
    }

    /// `c = a·w + bias` for a weight in its word form ([`PackedWeight::to_words`]), as a
    /// prepared-weight table holds it.
    ///
    /// # Safety
    /// `words` must be [`WordLayout::of`]`(k, n, format).len` words packed for that shape.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn from_words(
        m: usize,
        a: *const f32,
        lda: usize,
        words: *const f32,
        (k, n, format): (usize, usize, WeightFormat),
        bias: *const f32,
        c: *mut f32,
        ldc: usize,
    ) -> QGemmCall {
        let l = WordLayout::of(k, n, format);
        let i8 = format == WeightFormat::I8;
        QGemmCall {
            m,
            n,
            k,
            a,
            lda,
            b: words.cast(),
            scales: if i8 {
                words.add(l.scales)
            } else {
                std::ptr::null()
            },
            col_sums: if i8 {
                words.add(l.col_sums).cast()
            } else {
                std::ptr::null()
            },
            bias,
            c,
            ldc,
            residual: std::ptr::null(),
            format: format.code(),
            act: 0,
            kc: 0,
            mc: 0,
            isa: 0,
            threads: 0,
        }
    }

    /// The kernel, blocking and thread count once the zeros ("auto") are resolved.
    pub fn resolved(&self) -> (&'static QKernel, Blocking, usize) {
        let format = WeightFormat::from_code(self.format).unwrap_or(WeightFormat::F32);
        let kernel = QKernel::best(format, Isa::from_code(self.isa));
        let def = kernel.blocking_for(self.m);
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
            0 => pool.min((self.m * self.n * self.k / 200_000).max(1)),
            t => (t as usize).min(pool),
        };
        (kernel, bl, t.min(panels).max(1))
    }
}

thread_local! {
    static QUANT_A: std::cell::RefCell<QuantRows> = const { std::cell::RefCell::new(QuantRows::new()) };
    static PACKED_A: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
    static SHARED_A: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
    /// A sliver's rows as bf16 pairs, before [`pack_a`] transposes them.
    static ROW_PAIRS: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
    static GEMV_A: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `C = act(A·dequant(B) + bias) + residual` with `kernel` (which must run on this CPU and
/// match the call's format) and `blocking`, on the call's thread count.
///
/// # Safety
/// The pointers must be valid for the sizes given; B, scales and column sums as a
/// [`PackedWeight`] of the call's format, K and N.
pub unsafe fn qgemm(g: &QGemmCall, kernel: &QKernel, blocking: Blocking) {
    assert!(
        kernel.available() && kernel.format.code() == g.format,
        "{} cannot run a matmul of format code {}",
        kernel.name,
        g.format
    );
    let (_, _, tasks) = g.resolved();
    run(g, kernel, blocking, tasks)
}

/// C entry point for generated code: runs `*call` with each 0 field resolved automatically.
/// An f32 call is not for this entry (it has [`super::cranformer_gemm`]) and does nothing.
///
/// # Safety
/// As [`qgemm`]; `call` points at a valid [`QGemmCall`].
#[no_mangle]
pub unsafe extern "C" fn cranformer_qgemm(call: *const QGemmCall) {
    // SAFETY: the caller passes a valid call.
    let g = unsafe { &*call };
    if g.format == WeightFormat::F32.code() {
        return;
    }
    // Generated code cannot unwind: a panic is recorded for the host instead.
    crate::threads::catch_for_generated_code(|| {
        let (kernel, bl, tasks) = g.resolved();
        // SAFETY: the caller promised pointers valid for the call's sizes.
        unsafe {
            if super::profile::enabled() {
                let t = std::time::Instant::now();
                run(g, kernel, bl, tasks);
                super::profile::record_q(g, kernel, bl, tasks, t.elapsed());
            } else {
                run(g, kernel, bl, tasks);
            }
        }
    });
}

unsafe fn run(g: &QGemmCall, kernel: &QKernel, bl: Blocking, tasks: usize) {
    if g.m == 0 || g.n == 0 {
        return;
    }
    let act = Act::from_code(g.act).unwrap_or(Act::None);
    if g.k == 0 {
        for i in 0..g.m {
            for j in 0..g.n {
                *g.c.add(i * g.ldc + j) = if g.bias.is_null() {
                    0.0
                } else {
                    *g.bias.add(j)
                };
            }
        }
        epilogue::apply(act, g.c, g.ldc, g.m, g.n, g.residual);
        return;
    }
    let panels = g.n.div_ceil(PACK_NR);
    let tasks = tasks.clamp(1, panels);
    // A decode step's rows go to the GEMV in groups of panels (`qgemv`): one range of panels
    // per thread, each packing its few rows of A itself. Everything else runs as `sgemm`
    // does: A made ready once for all threads (int8: quantized rows the tiles read in place;
    // bf16, f16: packed slivers, see `SharedA`), then panels in chunks handed to whichever
    // thread asks next. Before, every thread packed all of A for its own range: BERT-base's
    // bf16 matmuls of 768 columns ran at 39 % of the roof against 60 % for the wider ones.
    let gemv = kernel.gemv.is_some() && g.m <= qgemv::MAX_ROWS;
    let split = if gemv {
        super::Chunks::uniform(panels, panels.div_ceil(tasks))
    } else {
        super::chunks(panels, tasks, g.m, 0)
    };
    let go = |a: ReadyA| {
        split.run(tasks, &|p0, p1, then| {
            block(g, kernel, bl, act, a, p0, p1, then)
        })
    };
    if kernel.format == WeightFormat::I8 {
        // Quantized once, here; the workers only read it.
        QUANT_A.with(|qa| {
            let mut qa = qa.borrow_mut();
            qa.quantize(g.a, g.lda, g.m, g.k, kernel.a_form == AForm::I16, 256);
            go(ReadyA::Quantized(&qa));
        })
    } else if gemv {
        go(ReadyA::PerBlock)
    } else {
        SHARED_A.with(|buf| {
            let mut buf = buf.borrow_mut();
            let shared = SharedA::pack(g, kernel, bl, tasks, &mut buf);
            go(ReadyA::Shared(shared));
        })
    }
}

/// What the tiles read A from.
#[derive(Clone, Copy)]
enum ReadyA<'a> {
    /// int8: rows quantized once ([`QuantRows`]).
    Quantized(&'a QuantRows),
    /// bf16, f16: all of A packed once ([`SharedA`]).
    Shared(SharedA),
    /// Packed by each thread per K and M block into its own buffer (a decode step's few rows).
    PerBlock,
}

/// All of A packed for a packing format's kernel, shared by every thread: K block by K block
/// (`kc_max` apart but the last), within a block row by row `kc` words each, in slivers of
/// `mr` rows as [`pack_a`] lays out an M block, so an M block starting at row `ic` is the
/// block's words from `ic · kc` on.
#[derive(Clone, Copy)]
struct SharedA {
    words: *const u32,
    kc_max: usize,
    m_pad: usize,
}

// SAFETY: written while packing (each task its own sliver), only read afterwards.
unsafe impl Send for SharedA {}
// SAFETY: as for Send.
unsafe impl Sync for SharedA {}

impl SharedA {
    /// Packs all of `g`'s A into `buf` (grown as needed), its slivers split over `tasks`
    /// threads.
    ///
    /// # Safety
    /// As [`qgemm`], with `kernel` of a packing format (not int8).
    unsafe fn pack(
        g: &QGemmCall,
        kernel: &QKernel,
        bl: Blocking,
        tasks: usize,
        buf: &mut Vec<u32>,
    ) -> SharedA {
        let mr = kernel.mr;
        let (_, kp, kc_max) = k_blocking(kernel.format, g.k, bl);
        let m_pad = g.m.next_multiple_of(mr);
        let kblocks = kp.div_ceil(kc_max);
        let need = kblocks * m_pad * kc_max;
        if buf.len() < need {
            buf.resize(need, 0);
        }
        let words = buf.as_mut_ptr();
        let at = SharedA {
            words,
            kc_max,
            m_pad,
        };
        let slivers = m_pad / mr;
        let pack = |i: usize| {
            let (pc, s) = (i / slivers * kc_max, i % slivers);
            let kc = kc_max.min(kp - pc);
            let rows = mr.min(g.m - s * mr);
            // SAFETY: sliver s of K block pc: `rows · kc` words of the buffer sized above,
            // written by this task alone.
            let dst =
                std::slice::from_raw_parts_mut(at.block(pc, kc, s * mr).cast_mut(), rows * kc);
            pack_a(g, s * mr, rows, pc, kc, mr, kernel.a_form, dst);
        };
        threads::parallel_for_on(
            super::pack_threads(g.m, g.k, tasks),
            kblocks * slivers,
            &pack,
        );
        at
    }

    /// The packed rows from `row` on (a multiple of `mr`) of the K block at `pc`, `kc` long.
    fn block(&self, pc: usize, kc: usize, row: usize) -> *const u32 {
        self.words
            .wrapping_add(pc / self.kc_max * self.m_pad * self.kc_max + row * kc)
    }
}

/// `(k per group, K padded to groups, K block)` of a call in `format` with blocking `bl`: the
/// one K blocking that [`SharedA`] packs and [`block`] reads.
fn k_blocking(format: WeightFormat, k: usize, bl: Blocking) -> (usize, usize, usize) {
    let group = format.padded_k(1);
    let kp = format.padded_k(k);
    (group, kp, bl.kc.clamp(1, kp).next_multiple_of(group))
}

/// Column panels `p0..p1` of C; `then`, the first panel of the chunk this thread runs next,
/// if it knows (see [`super::Ahead::next`]).
#[allow(clippy::too_many_arguments)]
unsafe fn block(
    g: &QGemmCall,
    kernel: &QKernel,
    bl: Blocking,
    act: Act,
    ready: ReadyA,
    p0: usize,
    p1: usize,
    then: Option<usize>,
) {
    let qa = match ready {
        ReadyA::Quantized(q) => Some(q),
        ReadyA::Shared(_) | ReadyA::PerBlock => None,
    };
    let per_block = matches!(ready, ReadyA::PerBlock);
    let (mr, nr) = (kernel.mr, kernel.nr);
    let format = kernel.format;
    let (group, kp, kc_max) = k_blocking(format, g.k, bl);
    let mc_max = (bl.mc / mr).max(1) * mr;
    // Bytes from one k (group) of a panel to the next, and from one column to the next.
    let (group_bytes, col_bytes) = match format {
        WeightFormat::I8 => (4 * PACK_NR, 4),
        WeightFormat::Bf16 => (4 * PACK_NR, 4),
        WeightFormat::F16 => (2 * PACK_NR, 2),
        WeightFormat::F32 => unreachable!("f32 runs in sgemm"),
    };
    let layout = PanelLayout {
        panel_bytes: kp / group * group_bytes,
        group,
        group_bytes,
        col_bytes,
    };
    // The chunk's end column: no claim on C reaches past it.
    let end = (p1 * PACK_NR).min(g.n);
    PACKED_A.with(|buf| {
        let mut buf = buf.borrow_mut();
        // Grown, never shrunk: a resize up after a smaller call would clear the whole
        // buffer (for a decode step, up to mc_max·K words each call instead of K).
        let need = mc_max.min(g.m.next_multiple_of(mr)) * kc_max;
        if per_block && buf.len() < need {
            buf.resize(need, 0);
        }
        let mut pc = 0;
        while pc < kp {
            let kc = kc_max.min(kp - pc);
            let last = pc + kc == kp;
            let mut ic = 0;
            while ic < g.m {
                let mc = mc_max.min(g.m - ic);
                let tiles = super::RowTiles::uniform(mc, mr);
                if per_block {
                    pack_a(g, ic, mc, pc, kc, mr, kernel.a_form, &mut buf);
                }
                // A decode step's few rows read several whole panels at once (`qgemv`).
                let first = match &kernel.gemv {
                    Some(gemv) if ic == 0 && mc == g.m && g.m <= qgemv::MAX_ROWS => {
                        // Each GEMV call takes up to ROWS rows: `chunk` bytes from one
                        // such chunk of A to the next.
                        let (a, lda, chunk) = match qa {
                            Some(q) if kernel.a_form == AForm::I16 => {
                                (q.q16.as_ptr().add(pc).cast(), q.kp, 2 * q.kp * qgemv::ROWS)
                            }
                            Some(q) => (q.q.as_ptr().add(pc), q.kp, q.kp * qgemv::ROWS),
                            None if g.m <= qgemv::ROWS => (buf.as_ptr().cast(), 0, 0),
                            None => {
                                // The tiles' slivers hold mr rows; the GEMV's hold ROWS.
                                GEMV_A.with(|ga| {
                                    let mut ga = ga.borrow_mut();
                                    if ga.len() < g.m * kc {
                                        ga.resize(g.m * kc, 0);
                                    }
                                    pack_a(g, 0, g.m, pc, kc, qgemv::ROWS, kernel.a_form, &mut ga);
                                    (ga.as_ptr().cast(), 0, 4 * kc * qgemv::ROWS)
                                })
                            }
                        };
                        let at = qgemv::At {
                            a,
                            lda,
                            chunk,
                            pc,
                            kc,
                            last,
                        };
                        gemv.panels(g, &layout, act, qa, at, p0, p1)
                    }
                    _ => p0,
                };
                for strip in first * (PACK_NR / nr)..p1 * (PACK_NR / nr) {
                    let col = strip * nr;
                    if col >= g.n {
                        break;
                    }
                    let (p, sub) = (col / PACK_NR, col % PACK_NR);
                    let b = g.b.add(layout.offset(p, pc, sub));
                    let mut ahead = super::Ahead::new(
                        super::Ahead::next(p, p1, first, then, g.n, pc, kc, kp, ic, mc, g.m, mr)
                            .map(|(np, npc)| g.b.add(layout.offset(np, npc, 0))),
                        kc / group * group_bytes,
                        (PACK_NR / nr, sub / nr),
                        tiles.count(),
                    );
                    let mut ir = 0;
                    while ir < mc {
                        let next = super::NextTile::after(ic, ir, tiles, col, nr, end);
                        let fetch = ahead.take().claim(g.c, g.ldc, next);
                        let rows = tiles.rows(ir);
                        let (a, lda) = match ready {
                            ReadyA::Quantized(q) if kernel.a_form == AForm::I16 => {
                                (q.q16.as_ptr().add((ic + ir) * q.kp + pc).cast(), q.kp)
                            }
                            ReadyA::Quantized(q) => (q.q.as_ptr().add((ic + ir) * q.kp + pc), q.kp),
                            ReadyA::Shared(sa) => (sa.block(pc, kc, ic + ir).cast(), 0),
                            ReadyA::PerBlock => (buf.as_ptr().add(ir * kc).cast(), 0),
                        };
                        let init = if pc > 0 {
                            Init::Load
                        } else if g.bias.is_null() || qa.is_some() {
                            Init::Zero
                        } else {
                            Init::Bias(g.bias.add(col))
                        };
                        let tile = QTile {
                            kc,
                            a,
                            lda,
                            b,
                            rows,
                            cols: nr.min(g.n - col),
                            init,
                            bias_cols_valid: g.n - col,
                            fetch,
                        };
                        let c = g.c.add((ic + ir) * g.ldc + col);
                        with_full_tile(kernel, &tile, c, g.ldc);
                        if last {
                            if let Some(q) = qa {
                                dequantize(g, q, ic + ir, col, rows, tile.cols);
                            }
                            let res = if g.residual.is_null() {
                                g.residual
                            } else {
                                g.residual.add((ic + ir) * g.ldc + col)
                            };
                            epilogue::apply(act, c, g.ldc, rows, tile.cols, res);
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

/// Where a format's panels keep each weight, in bytes from B.
pub(super) struct PanelLayout {
    pub panel_bytes: usize,
    /// k per group (4 for int8, 2 for bf16, 1 for f16).
    pub group: usize,
    /// From one k group of a panel to the next.
    pub group_bytes: usize,
    /// From one column to the next within a group.
    pub col_bytes: usize,
}

impl PanelLayout {
    /// Panel `p`, k `pc` (a multiple of the group), column `sub` of the panel.
    pub fn offset(&self, p: usize, pc: usize, sub: usize) -> usize {
        p * self.panel_bytes + pc / self.group * self.group_bytes + sub * self.col_bytes
    }
}

/// Turns a finished int8 tile (i32 sums in C's memory) into f32 with the bias:
/// `(sa_i·sw_j)·(acc - z_i·Σw_j) + bias_j`. One body for every int8 kernel (and GEMV),
/// compiled for the widest vectors the CPU has: the same operations (no fused multiply-add)
/// in any lane width, so every path rounds the same way.
pub(super) unsafe fn dequantize(
    g: &QGemmCall,
    q: &QuantRows,
    row0: usize,
    col0: usize,
    rows: usize,
    cols: usize,
) {
    #[cfg(target_arch = "x86_64")]
    match super::detected() {
        // SAFETY: `detected()` picks a family only where its features are present.
        super::Isa::Avx512 => return dequantize_avx512(g, q, row0, col0, rows, cols),
        super::Isa::Avx2 => return dequantize_avx2(g, q, row0, col0, rows, cols),
        super::Isa::Portable => {}
    }
    dequantize_body(g, q, row0, col0, rows, cols)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dequantize_avx512(
    g: &QGemmCall,
    q: &QuantRows,
    r0: usize,
    c0: usize,
    m: usize,
    n: usize,
) {
    dequantize_body(g, q, r0, c0, m, n)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dequantize_avx2(g: &QGemmCall, q: &QuantRows, r0: usize, c0: usize, m: usize, n: usize) {
    dequantize_body(g, q, r0, c0, m, n)
}

#[inline(always)]
unsafe fn dequantize_body(
    g: &QGemmCall,
    q: &QuantRows,
    row0: usize,
    col0: usize,
    rows: usize,
    cols: usize,
) {
    let sw = std::slice::from_raw_parts(g.scales.add(col0), cols);
    let sums = std::slice::from_raw_parts(g.col_sums.add(col0), cols);
    for r in 0..rows {
        let (sa, z) = (q.scale[row0 + r], q.zero[row0 + r]);
        // The tile's i32 sums are read and overwritten in place as f32, element by element,
        // through one pointer.
        let c = g.c.add((row0 + r) * g.ldc + col0);
        let acc = c as *const i32;
        // Exact in i32: |acc|, |z·Σw| <= 255·127·K, below 2^31 for K < 66 000.
        let value =
            |j: usize| (*acc.add(j)).wrapping_sub(z.wrapping_mul(sums[j])) as f32 * (sa * sw[j]);
        if g.bias.is_null() {
            for j in 0..cols {
                *c.add(j) = value(j);
            }
        } else {
            let bias = std::slice::from_raw_parts(g.bias.add(col0), cols);
            // An index loop: LLVM vectorises it (with a runtime check that C and the bias do
            // not overlap); iterating `bias` instead left it scalar, 4x slower (11 % of an int8
            // BERT-base forward's samples against 3 %).
            #[allow(clippy::needless_range_loop)]
            for j in 0..cols {
                *c.add(j) = value(j) + bias[j];
            }
        }
    }
}

/// Packs rows `ic..ic+mc`, columns `pc..pc+kc` of A (zero past K) into slivers of `mr` rows
/// in the kernel's form: sliver s starts at `s*kc` u32 (f32 bits or a bf16 pair each).
/// Whole vectors at a time: a row is converted in one straight loop and the sliver
/// transposed 4 × 4 words through [`super::pack_sliver`]; element by element (a bf16
/// conversion and a strided store each) packing took 17 % of a bf16 BERT-base forward's
/// samples against 45 % for the tiles (AMD EPYC).
#[allow(clippy::too_many_arguments)]
unsafe fn pack_a(
    g: &QGemmCall,
    ic: usize,
    mc: usize,
    pc: usize,
    kc: usize,
    mr: usize,
    form: AForm,
    buf: &mut [u32],
) {
    let real = g.k.saturating_sub(pc).min(kc);
    let pairs = kc / 2;
    let mut s = 0;
    ROW_PAIRS.with(|tmp| {
        let mut tmp = tmp.borrow_mut();
        while s < mc {
            let rows = mr.min(mc - s);
            let dst = &mut buf[s * kc..(s + rows) * kc];
            let src =
                |r: usize| std::slice::from_raw_parts(g.a.add((ic + s + r) * g.lda + pc), real);
            match form {
                AForm::F32 => {
                    let a = g.a.add((ic + s) * g.lda + pc);
                    super::pack_sliver(dst.as_mut_ptr().cast(), a, g.lda, rows, real);
                    dst[real * rows..kc * rows].fill(0);
                }
                AForm::Bf16Pairs => {
                    if tmp.len() < rows * pairs {
                        tmp.resize(rows * pairs, 0);
                    }
                    for r in 0..rows {
                        bf16_pairs(src(r), &mut tmp[r * pairs..(r + 1) * pairs]);
                    }
                    // Pairs are 32-bit words: the f32 transpose moves them bit for bit.
                    super::pack_sliver(
                        dst.as_mut_ptr().cast(),
                        tmp.as_ptr().cast(),
                        pairs,
                        rows,
                        pairs,
                    );
                }
                AForm::Bf16Rows => {
                    for r in 0..rows {
                        bf16_pairs(src(r), &mut dst[r * pairs..(r + 1) * pairs]);
                    }
                }
                AForm::U8 | AForm::I16 => unreachable!("int8 reads quantized rows"),
            }
            s += mr;
        }
    })
}

/// `out[p]` = the bf16 pair (`x[2p]` low, `x[2p+1]` high) of `x` zero-padded to
/// `2 · out.len()`.
fn bf16_pairs(x: &[f32], out: &mut [u32]) {
    let whole = (x.len() / 2).min(out.len());
    for (o, p) in out[..whole].iter_mut().zip(x.chunks_exact(2)) {
        *o = bf16_bits(p[0]) | bf16_bits(p[1]) << 16;
    }
    for (i, o) in out.iter_mut().enumerate().skip(whole) {
        let at = |k: usize| x.get(k).copied().unwrap_or(0.0);
        *o = bf16_bits(at(2 * i)) | bf16_bits(at(2 * i + 1)) << 16;
    }
}

/// `half::bf16::from_f32(x).to_bits()` (a test holds them equal), branch-free so a loop of it vectorises: round to
/// nearest even, and a NaN stays a quiet NaN with the high half of its payload.
#[inline(always)]
pub(super) fn bf16_bits(x: f32) -> u32 {
    let b = x.to_bits();
    let rounded = b.wrapping_add(0x7FFF + ((b >> 16) & 1)) >> 16;
    let nan = (b >> 16) | 0x40;
    if x.is_nan() {
        nan
    } else {
        rounded
    }
}

/// Runs `kernel` on a tile that may be partial: a partial tile goes through a scratch tile of
/// `nr` columns so kernels only ever load and store whole vectors.
unsafe fn with_full_tile(kernel: &QKernel, t: &QTile, c: *mut f32, ldc: usize) {
    let nr = kernel.nr;
    let bias_full = t.bias_cols_valid >= nr;
    if t.cols == nr && (bias_full || !matches!(t.init, Init::Bias(_))) {
        return (kernel.tile)(t, c, ldc, t.init);
    }
    // Up to 32 rows (AMX) of up to 32 columns.
    let mut scratch = [0f32; 32 * 32];
    let mut padded = [0f32; 32];
    let init = match t.init {
        Init::Load => {
            for r in 0..t.rows {
                std::ptr::copy_nonoverlapping(
                    c.add(r * ldc),
                    scratch.as_mut_ptr().add(r * nr),
                    t.cols,
                );
            }
            Init::Load
        }
        Init::Bias(b) => {
            std::ptr::copy_nonoverlapping(b, padded.as_mut_ptr(), t.bias_cols_valid.min(nr));
            Init::Bias(padded.as_ptr())
        }
        Init::Zero => Init::Zero,
    };
    (kernel.tile)(t, scratch.as_mut_ptr(), nr, init);
    for r in 0..t.rows {
        std::ptr::copy_nonoverlapping(scratch.as_ptr().add(r * nr), c.add(r * ldc), t.cols);
    }
}
