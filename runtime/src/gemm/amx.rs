//! AMX tiles (Sapphire Rapids and later), 32 rows × 32 columns per call in four 16×16
//! accumulator tiles, two tiles of A (rows 0-15 and 16-31) and two of B (a panel's two
//! halves, columns 0-15 and 16-31; its k groups are 128 bytes apart):
//! - `amx_mmm_i8_32x32`: AMX-INT8 `tdpbusd`, u8 activations (the quantized rows, `lda`
//!   apart) × the i8 panels of the VNNI kernel, 64 k per step into i32 sums. A K block's last
//!   `kc % 64` go through the VNNI kernel onto the stored tiles: the sums are integers, so the
//!   result is the VNNI kernel's bits whatever the split.
//! - `amx_mmm_bf16_32x32`: AMX-BF16 `tdpbf16ps`, bf16 activation rows (pairs, row-major:
//!   `AForm::Bf16Rows`) × the bf16 panels, f32 sums, 32 k per step; a K block's last
//!   `kc % 32` runs with the tiles reconfigured to its width.
//!
//! The kernel is written once over [`Tiles`]: [`Hw`] issues the instructions, [`Emu`] computes
//! what they compute (the tests run the kernel's addressing and configuration on any CPU
//! through it). A process may use the tiles only once Linux grants it the tile data state
//! (`arch_prctl(ARCH_REQ_XCOMP_PERM)`); [`usable`] asks once, and then checks the hardware
//! kernel against the VNNI one on a small product before the kernel is ever chosen.

#![cfg(target_arch = "x86_64")]

use super::qgemm::QTile;
use super::{Init, PACK_NR};

/// Rows and columns per call.
pub const MR: usize = 32;
pub const NR: usize = 32;
/// k per `tdpbusd` (64 bytes of a tile row).
const KSTEP: usize = 64;

/// The tile operations the kernel uses; tiles 0-3 are C (rows 0-15 / 16-31 × columns 0-15 /
/// 16-31), 4-5 A (rows 0-15 / 16-31), 6-7 B (columns 0-15 / 16-31).
pub(crate) trait Tiles {
    /// Loads the configuration (64 bytes, palette 1); the tiles' contents become zero.
    unsafe fn config(cfg: &[u8; 64]);
    unsafe fn zero<const T: u8>();
    unsafe fn load<const T: u8>(base: *const u8, stride: usize);
    unsafe fn store<const T: u8>(base: *mut u8, stride: usize);
    /// `C[T] += A[TA] · B[TB]` (u8 × i8 in groups of 4, i32 sums).
    unsafe fn dpbusd<const T: u8, const TA: u8, const TB: u8>();
    /// `C[T] += A[TA] · B[TB]` (bf16 pairs, f32 sums).
    unsafe fn dpbf16ps<const T: u8, const TA: u8, const TB: u8>();
    unsafe fn release();
}

/// The configuration for `r0` rows in the first 16 and `r1` in the second, with A's rows
/// `a_bytes` wide and B `b_rows` (k groups) deep.
fn config_for(r0: usize, r1: usize, a_bytes: usize, b_rows: usize) -> [u8; 64] {
    let mut cfg = [0u8; 64];
    cfg[0] = 1;
    let mut set = |t: usize, rows: usize, bytes: usize| {
        cfg[16 + 2 * t..18 + 2 * t].copy_from_slice(&(bytes as u16).to_le_bytes());
        cfg[48 + t] = rows as u8;
    };
    set(0, r0, 64);
    set(1, r0, 64);
    set(4, r0, a_bytes);
    if r1 > 0 {
        set(2, r1, 64);
        set(3, r1, 64);
        set(5, r1, a_bytes);
    }
    set(6, b_rows, 64);
    set(7, b_rows, 64);
    cfg
}

/// Full 64-byte steps.
fn config(r0: usize, r1: usize) -> [u8; 64] {
    config_for(r0, r1, 64, 16)
}

/// Loads (`load`) or stores C's tiles at `c` (f32 or i32, `ldc` apart).
#[inline(always)]
unsafe fn c_tiles<O: Tiles>(c: *mut f32, ldc: usize, r1: usize, load: bool) {
    let (c8, cs) = (c.cast::<u8>(), ldc * 4);
    let lower = c8.add(16 * cs);
    if load {
        O::load::<0>(c8, cs);
        O::load::<1>(c8.add(64), cs);
        if r1 > 0 {
            O::load::<2>(lower, cs);
            O::load::<3>(lower.add(64), cs);
        }
    } else {
        O::store::<0>(c8, cs);
        O::store::<1>(c8.add(64), cs);
        if r1 > 0 {
            O::store::<2>(lower, cs);
            O::store::<3>(lower.add(64), cs);
        }
    }
}

/// The bf16 kernel: `t.a` holds `rows` rows of `kc / 2` bf16 pairs (4 bytes each), row-major.
///
/// # Safety
/// As the other bf16 tile kernels; `O`'s tiles usable on this thread.
pub(crate) unsafe fn bf16_with<O: Tiles>(t: &QTile, c: *mut f32, ldc: usize, init: Init) {
    t.fetch.all();
    let (r0, r1) = (t.rows.min(16), t.rows.saturating_sub(16));
    let lda = t.kc / 2 * 4;
    // 16 pairs a step; the rest (under 16 pairs) with narrower tiles.
    let main = t.kc / 32 * 32;
    let tail = (t.kc - main) / 2;
    if let Init::Bias(bias) = init {
        // No broadcast load into a tile: C starts as the bias row repeated, in memory.
        for r in 0..t.rows {
            std::ptr::copy_nonoverlapping(bias, c.add(r * ldc), NR);
        }
    }
    let mut first = true;
    for (from, to, pairs) in [(0, main, 16), (main, t.kc, tail)] {
        if from == to {
            continue;
        }
        O::config(&config_for(r0, r1, pairs * 4, pairs));
        if first && matches!(init, Init::Zero) {
            O::zero::<0>();
            O::zero::<1>();
            if r1 > 0 {
                O::zero::<2>();
                O::zero::<3>();
            }
        } else {
            c_tiles::<O>(c, ldc, r1, true);
        }
        first = false;
        for kk in (from..to).step_by(32) {
            let b = t.b.add(kk / 2 * 4 * PACK_NR);
            O::load::<6>(b, 4 * PACK_NR);
            O::load::<7>(b.add(64), 4 * PACK_NR);
            O::load::<4>(t.a.add(kk * 2), lda);
            O::dpbf16ps::<0, 4, 6>();
            O::dpbf16ps::<1, 4, 7>();
            if r1 > 0 {
                O::load::<5>(t.a.add(16 * lda + kk * 2), lda);
                O::dpbf16ps::<2, 5, 6>();
                O::dpbf16ps::<3, 5, 7>();
            }
        }
        c_tiles::<O>(c, ldc, r1, false);
    }
    O::release();
}

/// The kernel: a full-width tile of up to 32 rows (i32 sums into `c`, as every int8 kernel).
///
/// # Safety
/// As the other int8 tile kernels; `O`'s tiles usable on this thread.
pub(crate) unsafe fn tile_with<O: Tiles>(t: &QTile, c: *mut f32, ldc: usize, init: Init) {
    let main = t.kc / KSTEP * KSTEP;
    if main == 0 {
        return vnni(t, c, ldc, init);
    }
    t.fetch.all();
    let (r0, r1) = (t.rows.min(16), t.rows.saturating_sub(16));
    O::config(&config(r0, r1));
    match init {
        Init::Load => c_tiles::<O>(c, ldc, r1, true),
        // int8 kernels start from zero (the bias comes with the dequantization).
        _ => {
            O::zero::<0>();
            O::zero::<1>();
            if r1 > 0 {
                O::zero::<2>();
                O::zero::<3>();
            }
        }
    }
    for kk in (0..main).step_by(KSTEP) {
        let b = t.b.add(kk / 4 * 4 * PACK_NR);
        O::load::<6>(b, 4 * PACK_NR);
        O::load::<7>(b.add(64), 4 * PACK_NR);
        O::load::<4>(t.a.add(kk), t.lda);
        O::dpbusd::<0, 4, 6>();
        O::dpbusd::<1, 4, 7>();
        if r1 > 0 {
            O::load::<5>(t.a.add(16 * t.lda + kk), t.lda);
            O::dpbusd::<2, 5, 6>();
            O::dpbusd::<3, 5, 7>();
        }
    }
    c_tiles::<O>(c, ldc, r1, false);
    O::release();
    if main < t.kc {
        let rest = QTile {
            kc: t.kc - main,
            a: t.a.add(main),
            b: t.b.add(main / 4 * 4 * PACK_NR),
            fetch: super::Fetch::NONE,
            ..*t
        };
        vnni(&rest, c, ldc, Init::Load);
    }
}

/// `t` through the VNNI kernel, 12 rows (its tile) at a time.
unsafe fn vnni(t: &QTile, c: *mut f32, ldc: usize, init: Init) {
    for r in (0..t.rows).step_by(12) {
        let part = QTile {
            a: t.a.add(r * t.lda),
            rows: (t.rows - r).min(12),
            ..*t
        };
        super::avx512_q::vnni_i8(&part, c.add(r * ldc), ldc, init);
    }
}

/// The kernels on the hardware's tiles.
pub(super) unsafe fn i8(t: &QTile, c: *mut f32, ldc: usize, init: Init) {
    tile_with::<Hw>(t, c, ldc, init)
}

pub(super) unsafe fn bf16(t: &QTile, c: *mut f32, ldc: usize, init: Init) {
    bf16_with::<Hw>(t, c, ldc, init)
}

/// Whether this process can run the hardware int8 kernel: the CPU has AMX-TILE and
/// AMX-INT8, the OS enabled their state (XCR0) and granted it to this process, and the
/// kernel gives the VNNI kernel's sums on a test product. Asked once.
pub fn usable() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(|| {
        // SAFETY: cpuid and xgetbv are checked for before use; the self-check runs only
        // once the state is granted.
        unsafe {
            granted(25)
                && std::is_x86_feature_detected!("avx512vnni")
                && std::is_x86_feature_detected!("avx512bw")
                && self_check("int8", i8_agrees_with_vnni)
        }
    })
}

/// The same for the bf16 kernel (AMX-BF16), checked against an f64 product of the same
/// bf16 values.
pub fn usable_bf16() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    // SAFETY: as for `usable`.
    *OK.get_or_init(|| unsafe { granted(22) && self_check("bf16", bf16_agrees_with_f64) })
}

/// Runs `check`; false (with a note on stderr) unless it passes.
fn self_check(what: &str, check: unsafe fn() -> bool) -> bool {
    // SAFETY: called only once the tile state is granted.
    let ok = unsafe { check() };
    if !ok {
        eprintln!(
            "cranformer: the AMX {what} kernel disagreed with its check on this CPU; {what} \
             runs on the AVX-512 kernels"
        );
    }
    ok
}

/// CPUID AMX-TILE and the feature bit `bit` of leaf 7's EDX (25 AMX-INT8, 22 AMX-BF16),
/// XCR0, and `arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`.
unsafe fn granted(bit: u32) -> bool {
    use std::arch::x86_64::{__cpuid, __cpuid_count};
    if __cpuid(0).eax < 7 {
        return false;
    }
    let leaf7 = __cpuid_count(7, 0);
    let (tile, feature) = (leaf7.edx >> 24 & 1 == 1, leaf7.edx >> bit & 1 == 1);
    // OSXSAVE: xgetbv exists.
    if !(tile && feature) || __cpuid(1).ecx >> 27 & 1 == 0 {
        return false;
    }
    let (lo, _hi): (u32, u32);
    std::arch::asm!("xgetbv", in("ecx") 0, out("eax") lo, out("edx") _hi, options(nomem, nostack));
    // XTILECFG (17) and XTILEDATA (18).
    if lo >> 17 & 3 != 3 {
        return false;
    }
    static PERM: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PERM.get_or_init(|| request_tile_state())
}

#[cfg(target_os = "linux")]
unsafe fn request_tile_state() -> bool {
    const SYS_ARCH_PRCTL: i64 = 158;
    const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
    const XFEATURE_XTILEDATA: i64 = 18;
    let ret: i64;
    std::arch::asm!(
        "syscall",
        inlateout("rax") SYS_ARCH_PRCTL => ret,
        in("rdi") ARCH_REQ_XCOMP_PERM,
        in("rsi") XFEATURE_XTILEDATA,
        lateout("rcx") _,
        lateout("r11") _,
        options(nostack)
    );
    ret == 0
}

#[cfg(not(target_os = "linux"))]
unsafe fn request_tile_state() -> bool {
    false
}

/// A product with a K tail and partial rows through the hardware kernel and the VNNI
/// kernel: equal i32 sums.
unsafe fn i8_agrees_with_vnni() -> bool {
    let (rows, kc) = (29, 200);
    let a: Vec<u8> = (0..rows * kc).map(|i| (i * 37 % 251) as u8).collect();
    let b: Vec<u8> = (0..kc / 4 * 4 * PACK_NR)
        .map(|i| (i * 91 % 255) as u8)
        .collect();
    let run = |f: unsafe fn(&QTile, *mut f32, usize, Init)| {
        let mut c = vec![0f32; MR * NR];
        let t = QTile {
            kc,
            a: a.as_ptr(),
            lda: kc,
            b: b.as_ptr(),
            rows,
            cols: NR,
            init: Init::Zero,
            bias_cols_valid: NR,
            fetch: super::Fetch::NONE,
        };
        // SAFETY: a holds rows × kc bytes, b kc/4 groups of a 32-column panel, c 32 × 32.
        unsafe { f(&t, c.as_mut_ptr(), NR, Init::Zero) };
        c.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
    };
    run(i8) == run(super::avx512_q::vnni_i8)
}

/// A product with a K tail, partial rows and a bias through the hardware kernel, against f64
/// sums of the same bf16 values: within f32 rounding of the terms' size.
unsafe fn bf16_agrees_with_f64() -> bool {
    let (rows, kc) = (29, 202);
    let bf = |x: u16| f32::from_bits((x as u32) << 16) as f64;
    // Small bf16 values of both signs: sign, exponent 120-127, 7 mantissa bits.
    let val = |i: usize| {
        ((i * 7919 % 2) as u16) << 15 | (120 + (i * 13 % 8) as u16) << 7 | (i * 31 % 128) as u16
    };
    let a: Vec<u16> = (0..rows * kc).map(val).collect();
    let b: Vec<u16> = (0..kc / 2 * 2 * PACK_NR).map(|i| val(i + 5)).collect();
    let bias: Vec<f32> = (0..NR).map(|j| j as f32 * 0.25 - 4.0).collect();
    let mut c = vec![0f32; MR * NR];
    let t = QTile {
        kc,
        a: a.as_ptr().cast(),
        lda: 0,
        b: b.as_ptr().cast(),
        rows,
        cols: NR,
        init: Init::Bias(bias.as_ptr()),
        bias_cols_valid: NR,
        fetch: super::Fetch::NONE,
    };
    bf16(&t, c.as_mut_ptr(), NR, Init::Bias(bias.as_ptr()));
    (0..rows).all(|r| {
        (0..NR).all(|j| {
            let (mut want, mut size) = (bias[j] as f64, bias[j].abs() as f64);
            for k in 0..kc {
                // A: row r's pairs; B: k group k / 2, column j, lane k % 2.
                let p = bf(a[r * kc + k]) * bf(b[k / 2 * 2 * PACK_NR + 2 * j + k % 2]);
                want += p;
                size += p.abs();
            }
            (c[r * NR + j] as f64 - want).abs() <= 1e-5 * size
        })
    })
}

/// The instructions.
pub(crate) struct Hw;

macro_rules! per_tile {
    ($t:expr, $($n:literal)*; $body:ident) => {
        match $t {
            $($n => $body!($n),)*
            _ => unreachable!("tiles 0-7"),
        }
    };
}

/// The kernels' four products `C[T] += A[TA] · B[TB]` with the instruction `$op`.
macro_rules! products {
    ($op:literal, $tiles:expr) => {
        match $tiles {
            (0, 4, 6) => {
                std::arch::asm!(concat!($op, " tmm0, tmm4, tmm6"), options(nomem, nostack))
            }
            (1, 4, 7) => {
                std::arch::asm!(concat!($op, " tmm1, tmm4, tmm7"), options(nomem, nostack))
            }
            (2, 5, 6) => {
                std::arch::asm!(concat!($op, " tmm2, tmm5, tmm6"), options(nomem, nostack))
            }
            (3, 5, 7) => {
                std::arch::asm!(concat!($op, " tmm3, tmm5, tmm7"), options(nomem, nostack))
            }
            _ => unreachable!("the kernels' four products"),
        }
    };
}

impl Tiles for Hw {
    #[inline(always)]
    unsafe fn config(cfg: &[u8; 64]) {
        std::arch::asm!("ldtilecfg [{}]", in(reg) cfg.as_ptr(), options(nostack, readonly));
    }
    #[inline(always)]
    unsafe fn zero<const T: u8>() {
        macro_rules! z {
            ($n:literal) => {
                std::arch::asm!(concat!("tilezero tmm", $n), options(nomem, nostack))
            };
        }
        per_tile!(T, 0 1 2 3 4 5 6 7; z)
    }
    #[inline(always)]
    unsafe fn load<const T: u8>(base: *const u8, stride: usize) {
        macro_rules! l {
            ($n:literal) => {
                std::arch::asm!(
                    concat!("tileloadd tmm", $n, ", [{b} + {s}*1]"),
                    b = in(reg) base,
                    s = in(reg) stride,
                    options(nostack, readonly)
                )
            };
        }
        per_tile!(T, 0 1 2 3 4 5 6 7; l)
    }
    #[inline(always)]
    unsafe fn store<const T: u8>(base: *mut u8, stride: usize) {
        macro_rules! s {
            ($n:literal) => {
                std::arch::asm!(
                    concat!("tilestored [{b} + {s}*1], tmm", $n),
                    b = in(reg) base,
                    s = in(reg) stride,
                    options(nostack)
                )
            };
        }
        per_tile!(T, 0 1 2 3 4 5 6 7; s)
    }
    #[inline(always)]
    unsafe fn dpbusd<const T: u8, const TA: u8, const TB: u8>() {
        products!("tdpbusd", (T, TA, TB))
    }
    #[inline(always)]
    unsafe fn dpbf16ps<const T: u8, const TA: u8, const TB: u8>() {
        products!("tdpbf16ps", (T, TA, TB))
    }
    #[inline(always)]
    unsafe fn release() {
        std::arch::asm!("tilerelease", options(nomem, nostack));
    }
}

/// What the instructions compute, per thread, for the tests: eight tiles of up to 16 rows ×
/// 64 bytes and the configured shape of each.
#[cfg(test)]
pub(crate) struct Emu;

#[cfg(test)]
struct EmuState {
    data: [[u8; 1024]; 8],
    rows: [usize; 8],
    bytes: [usize; 8],
}

#[cfg(test)]
thread_local! {
    static EMU: std::cell::RefCell<EmuState> = const {
        std::cell::RefCell::new(EmuState { data: [[0; 1024]; 8], rows: [0; 8], bytes: [0; 8] })
    };
}

#[cfg(test)]
impl Tiles for Emu {
    unsafe fn config(cfg: &[u8; 64]) {
        assert_eq!(cfg[0], 1, "palette 1");
        EMU.with_borrow_mut(|e| {
            for t in 0..8 {
                e.bytes[t] = u16::from_le_bytes([cfg[16 + 2 * t], cfg[17 + 2 * t]]) as usize;
                e.rows[t] = cfg[48 + t] as usize;
                assert!(e.rows[t] <= 16 && e.bytes[t] <= 64, "tile {t} too large");
                e.data[t] = [0; 1024];
            }
        })
    }
    unsafe fn zero<const T: u8>() {
        EMU.with_borrow_mut(|e| {
            assert!(e.rows[T as usize] > 0, "tile {T} not configured");
            e.data[T as usize] = [0; 1024];
        })
    }
    unsafe fn load<const T: u8>(base: *const u8, stride: usize) {
        EMU.with_borrow_mut(|e| {
            let t = T as usize;
            assert!(e.rows[t] > 0, "tile {t} not configured");
            e.data[t] = [0; 1024];
            for r in 0..e.rows[t] {
                // SAFETY: the kernel's caller made `rows` rows of `bytes` readable.
                let src = unsafe { std::slice::from_raw_parts(base.add(r * stride), e.bytes[t]) };
                e.data[t][r * 64..r * 64 + e.bytes[t]].copy_from_slice(src);
            }
        })
    }
    unsafe fn store<const T: u8>(base: *mut u8, stride: usize) {
        EMU.with_borrow(|e| {
            let t = T as usize;
            assert!(e.rows[t] > 0, "tile {t} not configured");
            for r in 0..e.rows[t] {
                let src = &e.data[t][r * 64..r * 64 + e.bytes[t]];
                // SAFETY: as for load, writable.
                unsafe {
                    std::ptr::copy_nonoverlapping(src.as_ptr(), base.add(r * stride), src.len())
                };
            }
        })
    }
    unsafe fn dpbusd<const T: u8, const TA: u8, const TB: u8>() {
        EMU.with_borrow_mut(|e| {
            let (c, a, b) = (T as usize, TA as usize, TB as usize);
            // The instruction's shape rules: C is M × N i32, A M × K bytes, B K/4 × N·4.
            assert_eq!(e.rows[c], e.rows[a], "C and A rows");
            assert_eq!(e.bytes[a] / 4, e.rows[b], "A's k groups and B's rows");
            assert_eq!(e.bytes[c], e.bytes[b], "C and B columns");
            for m in 0..e.rows[c] {
                for n in 0..e.bytes[c] / 4 {
                    let mut sum =
                        i32::from_le_bytes(e.data[c][m * 64 + 4 * n..][..4].try_into().unwrap());
                    for g in 0..e.rows[b] {
                        for i in 0..4 {
                            let x = e.data[a][m * 64 + 4 * g + i] as i32;
                            let w = e.data[b][g * 64 + 4 * n + i] as i8 as i32;
                            sum = sum.wrapping_add(x * w);
                        }
                    }
                    e.data[c][m * 64 + 4 * n..][..4].copy_from_slice(&sum.to_le_bytes());
                }
            }
        })
    }
    unsafe fn dpbf16ps<const T: u8, const TA: u8, const TB: u8>() {
        EMU.with_borrow_mut(|e| {
            let (c, a, b) = (T as usize, TA as usize, TB as usize);
            assert_eq!(e.rows[c], e.rows[a], "C and A rows");
            assert_eq!(e.bytes[a] / 4, e.rows[b], "A's k pairs and B's rows");
            assert_eq!(e.bytes[c], e.bytes[b], "C and B columns");
            let bf = |d: &[u8; 1024], at: usize| {
                f32::from_bits((u16::from_le_bytes([d[at], d[at + 1]]) as u32) << 16)
            };
            for m in 0..e.rows[c] {
                for n in 0..e.bytes[c] / 4 {
                    let at = m * 64 + 4 * n;
                    let mut sum = f32::from_le_bytes(e.data[c][at..at + 4].try_into().unwrap());
                    for g in 0..e.rows[b] {
                        for i in 0..2 {
                            let x = bf(&e.data[a], m * 64 + 4 * g + 2 * i);
                            let w = bf(&e.data[b], g * 64 + 4 * n + 2 * i);
                            sum += x * w;
                        }
                    }
                    e.data[c][at..at + 4].copy_from_slice(&sum.to_le_bytes());
                }
            }
        })
    }
    unsafe fn release() {
        EMU.with_borrow_mut(|e| {
            e.rows = [0; 8];
            e.bytes = [0; 8];
        })
    }
}

/// The kernels on emulated tiles (tests).
#[cfg(test)]
pub(super) unsafe fn i8_emulated(t: &QTile, c: *mut f32, ldc: usize, init: Init) {
    tile_with::<Emu>(t, c, ldc, init)
}

#[cfg(test)]
pub(super) unsafe fn bf16_emulated(t: &QTile, c: *mut f32, ldc: usize, init: Init) {
    bf16_with::<Emu>(t, c, ldc, init)
}
