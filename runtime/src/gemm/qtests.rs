//! Tests of the narrow-weight kernels: `kernel_tests!` generates, for every kernel declared in
//! [`KERNELS`], its tests against a plain reference (a kernel this CPU lacks passes with a
//! note on stderr), and `every_kernel_has_generated_tests` checks none was left out.
//!
//! Named tolerances, relative to `Σ_k |a_k·w_k|` (the size of the terms, so that cancelling
//! sums are judged fairly):
//! - int8 is exact: the i32 sums and the shared dequantization give the reference's bits,
//!   and the error against the f32 matmul stays within the quantization steps' bound;
//! - bf16 / f16 widening kernels: [`F32_SUM_TOLERANCE`] against the widened weights;
//! - `vdpbf16ps` also rounds activations to bf16: [`BF16_DOT_TOLERANCE`].

use super::qgemm::{cranformer_qgemm, AForm};
use super::quant::QuantRows;
use super::*;

/// f32 accumulation of up to ~1000 terms against an f64 sum.
const F32_SUM_TOLERANCE: f64 = 1e-5;
/// Activations rounded to bf16 (8 significant bits: relative error ≤ 2^-8), plus f32 sums.
const BF16_DOT_TOLERANCE: f64 = BF16_ROUNDING + F32_SUM_TOLERANCE;
/// Rounding to nearest: bf16 keeps 8 significant bits, f16 11 (for normal values).
const BF16_ROUNDING: f64 = 1.0 / 256.0;
const F16_ROUNDING: f64 = 1.0 / 2048.0;

fn lcg(seed: &mut u64) -> f32 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    ((*seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
}

fn kernel(name: &str) -> &'static QKernel {
    #[cfg(target_arch = "x86_64")]
    let extra = super::qgemm::TEST_KERNELS;
    #[cfg(not(target_arch = "x86_64"))]
    let extra: &[QKernel] = &[];
    KERNELS
        .iter()
        .chain(extra)
        .find(|k| k.name == name)
        .unwrap_or_else(|| panic!("no kernel named {name}"))
}

const SHAPES: &[(usize, usize, usize)] = &[
    (1, 1, 1),
    (1, 33, 7),
    (5, 17, 3),
    (2, 100, 33),
    (13, 40, 200),
    (25, 65, 300),
    (7, 96, 385),
    (150, 70, 64),
    (3, 5, 1030),
    // Wide enough for the decode GEMV's groups of panels, with a partial panel after them.
    (1, 300, 77),
    (4, 200, 130),
];

struct Case {
    m: usize,
    n: usize,
    k: usize,
    a: Vec<f32>,
    /// As the checkpoint stores it (`[N, K]`, or `[K, N]` if `in_out`).
    w: Vec<f32>,
    in_out: bool,
    bias: Option<Vec<f32>>,
}

impl Case {
    fn new(seed: &mut u64, (m, n, k): (usize, usize, usize), in_out: bool, bias: bool) -> Case {
        Case {
            m,
            n,
            k,
            a: (0..m * k).map(|_| 2.0 * lcg(seed)).collect(),
            w: (0..n * k).map(|_| lcg(seed)).collect(),
            in_out,
            bias: bias.then(|| (0..n).map(|_| lcg(seed)).collect()),
        }
    }

    fn pack(&self, format: WeightFormat) -> PackedWeight {
        PackedWeight::pack(&self.w, self.k, self.n, self.in_out, format).unwrap()
    }

    /// `[K, N]` f32 weights.
    fn w_kn(&self) -> Vec<f32> {
        let (k, n) = (self.k, self.n);
        (0..k * n)
            .map(|i| {
                let (kk, j) = (i / n, i % n);
                if self.in_out {
                    self.w[i]
                } else {
                    self.w[j * k + kk]
                }
            })
            .collect()
    }

    /// The call of this case's A (`m × k`) with `w` and `bias` into `c` (`m × n`).
    fn call(&self, w: &PackedWeight, bias: *const f32, c: &mut [f32]) -> QGemmCall {
        assert_eq!(c.len(), self.m * self.n);
        QGemmCall::new(
            self.m,
            self.a.as_ptr(),
            self.k,
            w,
            bias,
            c.as_mut_ptr(),
            self.n,
        )
    }

    /// Runs `kern` with `isa`-independent explicit blocking.
    fn run(&self, kern: &QKernel, w: &PackedWeight, bl: Blocking) -> Vec<f32> {
        let mut c = vec![f32::NAN; self.m * self.n];
        let bias = self.bias.as_ref().map_or(std::ptr::null(), |b| b.as_ptr());
        let g = self.call(w, bias, &mut c);
        // SAFETY: every pointer of the call is live and sized for m, n, k; the kernel is one this CPU has.
        unsafe { qgemm(&g, kern, bl) };
        c
    }

    /// `(Σ a·w + bias, Σ |a·w|)` per output, in f64, for `[K, N]` weights `w`.
    fn reference(&self, w: &[f32]) -> Vec<(f64, f64)> {
        let (m, n, k) = (self.m, self.n, self.k);
        let mut out = Vec::with_capacity(m * n);
        for i in 0..m {
            for j in 0..n {
                let (mut s, mut mag) = (0f64, 0f64);
                for kk in 0..k {
                    let p = self.a[i * k + kk] as f64 * w[kk * n + j] as f64;
                    s += p;
                    mag += p.abs();
                }
                let b = self.bias.as_ref().map_or(0.0, |b| b[j] as f64);
                out.push((s + b, mag + b.abs()));
            }
        }
        out
    }

    /// The int8 result as the kernels must compute it: the same row quantization, exact
    /// integer sums, the same dequantization.
    fn int8_reference(&self, w: &PackedWeight) -> Vec<f32> {
        let (m, n, k) = (self.m, self.n, self.k);
        let mut qa = QuantRows::new();
        // SAFETY: `a` holds m rows of k floats, as the call says.
        unsafe { qa.quantize(self.a.as_ptr(), k, m, k, false, 256) };
        let qw = w.quantized();
        let mut out = Vec::with_capacity(m * n);
        for i in 0..m {
            for j in 0..n {
                let acc: i32 = (0..k)
                    .map(|kk| qa.q[i * qa.kp + kk] as i32 * qw[kk * n + j] as i32)
                    .sum();
                let d = acc - qa.zero[i] * w.col_sums()[j];
                let mut y = d as f32 * (qa.scale[i] * w.scales()[j]);
                if let Some(b) = &self.bias {
                    y += b[j];
                }
                out.push(y);
            }
        }
        out
    }

    fn what(&self) -> String {
        format!(
            "m{} n{} k{} in_out {} bias {}",
            self.m,
            self.n,
            self.k,
            self.in_out,
            self.bias.is_some()
        )
    }
}

fn blockings(kern: &QKernel) -> [Blocking; 4] {
    [
        kern.blocking(),
        kern.blocking_for(1),
        // Several K blocks and M blocks; 6 is rounded up to the format's k group.
        Blocking { kc: 8, mc: kern.mr },
        Blocking {
            kc: 6,
            mc: 2 * kern.mr + 1,
        },
    ]
}

/// The kernel against its reference on odd shapes, both weight layouts, with and without
/// bias, with several blockings.
fn matches_reference(name: &str) {
    let kern = kernel(name);
    if !kern.available() {
        eprintln!("{name}: this CPU lacks it, skipped");
        return;
    }
    let mut seed = 1;
    for &shape in SHAPES {
        for in_out in [false, true] {
            for bias in [false, true] {
                let case = Case::new(&mut seed, shape, in_out, bias);
                let w = case.pack(kern.format);
                let want_i8 = (kern.format == WeightFormat::I8).then(|| case.int8_reference(&w));
                let want = case.reference(&w.unpack());
                let tol = if matches!(kern.a_form, AForm::Bf16Pairs | AForm::Bf16Rows) {
                    BF16_DOT_TOLERANCE
                } else {
                    F32_SUM_TOLERANCE
                };
                for bl in blockings(kern) {
                    let got = case.run(kern, &w, bl);
                    for (i, &y) in got.iter().enumerate() {
                        let at = (i / case.n, i % case.n);
                        if let Some(want) = &want_i8 {
                            assert_eq!(
                                y.to_bits(),
                                want[i].to_bits(),
                                "{name} {} {bl:?} at {at:?}: got {y}, want {} exactly",
                                case.what(),
                                want[i]
                            );
                        } else {
                            let (r, mag) = want[i];
                            assert!(
                                (y as f64 - r).abs() <= tol * mag + 1e-30,
                                "{name} {} {bl:?} at {at:?}: got {y}, want {r} (tolerance {tol} × {mag})",
                                case.what()
                            );
                        }
                    }
                }
            }
        }
    }
}

/// Act then residual, fused, against the same kernel's plain result put through the
/// epilogue afterwards: the same bits (the epilogue's accuracy is tested in `tests.rs`).
fn applies_every_epilogue(name: &str) {
    let kern = kernel(name);
    if !kern.available() {
        eprintln!("{name}: this CPU lacks it, skipped");
        return;
    }
    let mut seed = 7;
    let case = Case::new(&mut seed, (29, 75, 130), false, true);
    let res: Vec<f32> = (0..case.m * case.n).map(|_| lcg(&mut seed)).collect();
    let w = case.pack(kern.format);
    for bl in blockings(kern) {
        let plain = case.run(kern, &w, bl);
        for code in 0..=6 {
            let act = Act::from_code(code).unwrap();
            for with_res in [false, true] {
                let mut want = plain.clone();
                let rp = if with_res {
                    res.as_ptr()
                } else {
                    std::ptr::null()
                };
                // SAFETY: the tile and the residual are live and sized m x n with stride n.
                unsafe { epilogue::apply(act, want.as_mut_ptr(), case.n, case.m, case.n, rp) };
                let mut got = vec![f32::NAN; case.m * case.n];
                let bias = case.bias.as_ref().unwrap();
                let mut g = case.call(&w, bias.as_ptr(), &mut got);
                g.act = code;
                g.residual = rp;
                // SAFETY: every pointer of the call is live and sized for m, n, k; the kernel is one this CPU has.
                unsafe { qgemm(&g, kern, bl) };
                for (i, (x, y)) in got.iter().zip(&want).enumerate() {
                    assert_eq!(
                        x.to_bits(),
                        y.to_bits(),
                        "{name} {act:?} residual {with_res} {bl:?} at [{}, {}]: got {x}, want {y}",
                        i / case.n,
                        i % case.n
                    );
                }
            }
        }
    }
}

/// One thread or two: the same bits.
fn thread_count_does_not_change_results(name: &str) {
    let kern = kernel(name);
    if !kern.available() {
        eprintln!("{name}: this CPU lacks it, skipped");
        return;
    }
    let mut seed = 9;
    // A prefill's tiles, and a decode step's GEMV (with a partial panel group at the end).
    for shape in [(37, 200, 300), (1, 1000, 300), (3, 1000, 97)] {
        let case = Case::new(&mut seed, shape, false, true);
        let w = case.pack(kern.format);
        let run = |threads: u32| {
            let mut c = vec![0f32; case.m * case.n];
            let bias = case.bias.as_ref().unwrap();
            let mut g = case.call(&w, bias.as_ptr(), &mut c);
            g.threads = threads;
            // SAFETY: every pointer of the call is live and sized for m, n, k; the kernel is one this CPU has.
            unsafe { qgemm(&g, kern, kern.blocking_for(case.m)) };
            c
        };
        crate::threads::set_threads(2);
        let (one, two) = (run(1), run(2));
        crate::threads::set_threads(0);
        assert_eq!(one, two, "{name} {}", case.what());
    }
}

/// The decode GEMV against the tile path it replaces: the same bits, for 1..=8 rows (in chunks
/// of [`super::qgemv::ROWS`] above it), odd N and K, every blocking,
/// with bias, activation and residual; and on 1 and 2 threads.
fn gemv_matches_tiles(name: &str) {
    let kern = kernel(name);
    if !kern.available() {
        eprintln!("{name}: this CPU lacks it, skipped");
        return;
    }
    if kern.gemv.is_none() {
        eprintln!("{name}: no GEMV, its decode runs the tiles");
        return;
    }
    let tiles = kern.tiles_only();
    let mut seed = 11;
    for m in 1..=8 {
        for (n, k) in [(128, 5), (131, 33), (300, 77), (97, 130), (520, 259)] {
            let case = Case::new(&mut seed, (m, n, k), m % 2 == 0, true);
            let w = case.pack(kern.format);
            let res: Vec<f32> = (0..m * n).map(|_| lcg(&mut seed)).collect();
            for (act, with_res) in [(0, false), (2, true)] {
                for bl in blockings(kern) {
                    for threads in [1, 2] {
                        let run = |kern: &QKernel| {
                            let mut c = vec![f32::NAN; m * n];
                            let bias = case.bias.as_ref().unwrap();
                            let mut g = QGemmCall::new(
                                m,
                                case.a.as_ptr(),
                                k,
                                &w,
                                bias.as_ptr(),
                                c.as_mut_ptr(),
                                n,
                            );
                            g.act = act;
                            g.threads = threads;
                            if with_res {
                                g.residual = res.as_ptr();
                            }
                            crate::threads::set_threads(2);
                            // SAFETY: every pointer of the call is live and sized for m, n,
                            // k; the kernel is one this CPU has.
                            unsafe { qgemm(&g, kern, bl) };
                            crate::threads::set_threads(0);
                            c
                        };
                        let (got, want) = (run(kern), run(&tiles));
                        for (i, (x, y)) in got.iter().zip(&want).enumerate() {
                            assert_eq!(
                                x.to_bits(),
                                y.to_bits(),
                                "{name} {} act {act} residual {with_res} {bl:?} threads {threads} \
                                 at [{}, {}]: GEMV {x}, tiles {y}",
                                case.what(),
                                i / n,
                                i % n
                            );
                        }
                    }
                }
            }
        }
    }
}

macro_rules! kernel_tests {
    ($($name:ident)*) => {
        $(
            mod $name {
                #[test]
                fn matches_reference() {
                    super::matches_reference(stringify!($name));
                }
                #[test]
                fn applies_every_epilogue() {
                    super::applies_every_epilogue(stringify!($name));
                }
                #[test]
                fn gemv_matches_tiles() {
                    super::gemv_matches_tiles(stringify!($name));
                }
                #[test]
                fn thread_count_does_not_change_results() {
                    super::thread_count_does_not_change_results(stringify!($name));
                }
            }
        )*
        const TESTED: &[&str] = &[$(stringify!($name)),*];
    };
}

kernel_tests!(
    amx_mmm_i8_32x32
    amx_emulated_mmm_i8_32x32
    amx_mmm_bf16_32x32
    amx_emulated_mmm_bf16_32x32
    avx512vnni_mmm_i8_12x32
    avx512bw_mmm_i8_6x32
    avxvnni_mmm_i8_6x16
    avx2_mmm_i8_6x8
    portable_mmm_i8_4x8
    avx512bf16_mmm_bf16_12x32
    avx512_mmm_bf16_12x32
    avx2_mmm_bf16_6x16
    portable_mmm_bf16_4x8
    avx512_mmm_f16_12x32
    avx2_mmm_f16_6x16
    portable_mmm_f16_4x8
);

#[test]
fn every_kernel_has_generated_tests() {
    for k in KERNELS {
        assert!(
            TESTED.contains(&k.name),
            "{} has no kernel_tests! entry",
            k.name
        );
    }
}

/// Packing rounds each weight to nearest: the widened weights stay within the format's
/// rounding of the originals, and int8 within half a step of its column's scale.
#[test]
fn packing_rounds_within_the_format() {
    let mut seed = 3;
    let case = Case::new(&mut seed, (1, 45, 37), false, false);
    let orig = case.w_kn();
    for format in [
        WeightFormat::Bf16,
        WeightFormat::F16,
        WeightFormat::I8,
        WeightFormat::F32,
    ] {
        let w = case.pack(format);
        let got = w.unpack();
        for (i, (&x, &y)) in got.iter().zip(&orig).enumerate() {
            let err = (x - y).abs() as f64;
            let bound = match format {
                WeightFormat::F32 => 0.0,
                WeightFormat::Bf16 => BF16_ROUNDING * y.abs() as f64,
                WeightFormat::F16 => F16_ROUNDING * y.abs() as f64 + 1e-7,
                WeightFormat::I8 => 0.5 * w.scales()[i % case.n] as f64 * (1.0 + 1e-6),
            };
            assert!(
                err <= bound,
                "{format:?} [{}, {}]: {x} for {y}",
                i / case.n,
                i % case.n
            );
        }
    }
}

/// int8 against the f32 matmul: within the bound the quantization steps give,
/// `Σ (sa/2)|w| + |a|(sw/2) + sa·sw/4` per output, plus f32 rounding.
#[test]
fn int8_error_is_within_quantization_steps() {
    let mut seed = 11;
    let kern = QKernel::best(WeightFormat::I8, Isa::Avx512);
    for &shape in SHAPES {
        let case = Case::new(&mut seed, shape, false, true);
        let w = case.pack(WeightFormat::I8);
        let got = case.run(kern, &w, kern.blocking());
        let want = case.reference(&case.w_kn());
        let mut qa = QuantRows::new();
        // SAFETY: `a` holds m rows of k floats, as the call says.
        unsafe { qa.quantize(case.a.as_ptr(), case.k, case.m, case.k, false, 256) };
        let wkn = case.w_kn();
        for (i, &y) in got.iter().enumerate() {
            let (r, j) = (i / case.n, i % case.n);
            let (sa, sw) = (qa.scale[r] as f64, w.scales()[j] as f64);
            let bound: f64 = (0..case.k)
                .map(|kk| {
                    let (a, wv) = (case.a[r * case.k + kk] as f64, wkn[kk * case.n + j] as f64);
                    sa / 2.0 * wv.abs() + a.abs() * sw / 2.0 + sa * sw / 4.0
                })
                .sum();
            let err = (y as f64 - want[i].0).abs();
            assert!(
                err <= bound * (1.0 + 1e-4) + 1e-5 * want[i].1,
                "{} at [{r}, {j}]: got {y}, f32 {} (error {err}, bound {bound})",
                case.what(),
                want[i].0
            );
        }
    }
}

/// A NaN or infinity in a row gives NaN outputs for that row, not a silent zero.
#[test]
fn int8_propagates_non_finite_activations() {
    let mut seed = 13;
    let mut case = Case::new(&mut seed, (3, 40, 20), false, false);
    case.a[case.k + 5] = f32::NAN;
    case.a[2 * case.k + 1] = f32::INFINITY;
    let w = case.pack(WeightFormat::I8);
    for kern in KERNELS
        .iter()
        .filter(|k| k.format == WeightFormat::I8 && k.available())
    {
        let got = case.run(kern, &w, kern.blocking());
        assert!(got[..case.n].iter().all(|y| y.is_finite()), "{}", kern.name);
        assert!(got[case.n..].iter().all(|y| y.is_nan()), "{}", kern.name);
    }
}

/// The family a call asks for picks that family's kernel (or a narrower one), and the C
/// entry resolves it and runs.
#[test]
fn isa_codes_pick_kernels_of_that_family() {
    let mut seed = 17;
    let case = Case::new(&mut seed, (9, 70, 50), false, true);
    for format in [WeightFormat::I8, WeightFormat::Bf16, WeightFormat::F16] {
        let w = case.pack(format);
        let mut first = None;
        for isa in [Isa::Avx512, Isa::Avx2, Isa::Portable] {
            let kern = QKernel::best(format, isa);
            assert!(
                kern.isa >= isa && kern.format == format,
                "{format:?} {isa:?}: {kern:?}"
            );
            let mut c = vec![f32::NAN; case.m * case.n];
            let bias = case.bias.as_ref().unwrap();
            let mut g = case.call(&w, bias.as_ptr(), &mut c);
            g.isa = isa.code();
            assert_eq!(g.resolved().0.isa, Isa::from_code(isa.code()).max(kern.isa));
            // SAFETY: every pointer of the call is live and sized for m, n, k; the kernel is one this CPU has.
            unsafe { cranformer_qgemm(&g) };
            assert!(c.iter().all(|y| y.is_finite()), "{format:?} {isa:?}");
            if format == WeightFormat::I8 {
                // Every int8 kernel gives the same bits.
                assert_eq!(*first.get_or_insert_with(|| c.clone()), c, "{isa:?}");
            }
        }
    }
}

/// Weights int8 cannot represent are refused with the reason, not packed wrong.
#[test]
fn packing_refuses_what_int8_cannot_hold() {
    use super::quant::{PackError, MAX_I8_K};
    let w = vec![0.5f32; 6];
    assert_eq!(
        PackedWeight::pack(&w, 2, 4, false, WeightFormat::I8).unwrap_err(),
        PackError::Size { k: 2, n: 4, len: 6 }
    );
    let mut w = vec![0.5f32; 6];
    w[4] = f32::NAN;
    // [N=3, K=2]: element 4 is column 2.
    let err = PackedWeight::pack(&w, 2, 3, false, WeightFormat::I8).unwrap_err();
    assert!(
        matches!(err, PackError::NonFinite { col: 2, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("column 2"), "{err}");
    // The other formats keep the NaN, as f32 does.
    let bf = PackedWeight::pack(&w, 2, 3, false, WeightFormat::Bf16).unwrap();
    // Unpacked as [K, N]: k 0, column 2.
    assert!(bf.unpack()[2].is_nan());
    let k = MAX_I8_K + 1;
    assert_eq!(
        PackedWeight::pack(&vec![0.0; k], k, 1, false, WeightFormat::I8).unwrap_err(),
        PackError::KTooLarge { k }
    );
    // A finite weight past f16's 65504 (bf16's 3.39e38) would round to infinity: refused,
    // naming the value and the way out. Up to the largest value, and infinities the
    // checkpoint itself holds, pack as they are (as f32 keeps them).
    let mut w = vec![0.5f32; 6];
    w[5] = 7e4;
    let err = PackedWeight::pack(&w, 2, 3, false, WeightFormat::F16).unwrap_err();
    assert!(
        matches!(
            err,
            PackError::OutOfRange {
                format: "f16",
                col: 2,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("70000") && err.to_string().contains("bf16"),
        "{err}"
    );
    w[5] = f32::MAX;
    let err = PackedWeight::pack(&w, 2, 3, false, WeightFormat::Bf16).unwrap_err();
    assert!(
        matches!(
            err,
            PackError::OutOfRange {
                format: "bf16",
                col: 2,
                ..
            }
        ),
        "{err:?}"
    );
    w[5] = 65504.0;
    assert_eq!(
        PackedWeight::pack(&w, 2, 3, false, WeightFormat::F16)
            .unwrap()
            .unpack()[5],
        65504.0
    );
    w[5] = f32::INFINITY;
    for format in [WeightFormat::F16, WeightFormat::Bf16] {
        let p = PackedWeight::pack(&w, 2, 3, false, format).unwrap();
        assert_eq!(p.unpack()[5], f32::INFINITY, "{format:?}");
    }
}

/// The word form (what prepared-weight tables and executables store) runs as the packed
/// weight does, bit for bit.
#[test]
fn word_form_runs_like_the_packed_weight() {
    use super::quant::WordLayout;
    let mut seed = 19;
    let case = Case::new(&mut seed, (6, 45, 37), true, true);
    for format in [WeightFormat::I8, WeightFormat::Bf16, WeightFormat::F16] {
        let w = case.pack(format);
        let words = w.to_words();
        assert_eq!(
            words.len(),
            WordLayout::of(case.k, case.n, format).len,
            "{format:?}"
        );
        let kern = QKernel::best(format, Isa::Avx512);
        let want = case.run(kern, &w, kern.blocking());
        let mut got = vec![f32::NAN; case.m * case.n];
        let bias = case.bias.as_ref().unwrap();
        // SAFETY: the packed weight and the buffers outlive the call made from them.
        let g = unsafe {
            QGemmCall::from_words(
                case.m,
                case.a.as_ptr(),
                case.k,
                words.as_ptr(),
                (case.k, case.n, format),
                bias.as_ptr(),
                got.as_mut_ptr(),
                case.n,
            )
        };
        // SAFETY: every pointer of the call is live and sized for m, n, k; the kernel is one this CPU has.
        unsafe { qgemm(&g, kern, kern.blocking()) };
        assert_eq!(got, want, "{format:?}");
    }
}

/// `WeightPrep::Quantized` prepares the word form with the length it announces, and a
/// weight int8 cannot hold is an error naming why.
#[test]
fn weight_prep_quantized_matches_its_length() {
    use crate::native::WeightPrep;
    use crate::weights::F32Buffer;
    let mut seed = 23;
    let case = Case::new(&mut seed, (1, 70, 33), false, false);
    let raw = F32Buffer::from_vec(case.w.clone());
    for format in [WeightFormat::I8, WeightFormat::Bf16, WeightFormat::F16] {
        let prep = WeightPrep::Quantized {
            k: case.k,
            n: case.n,
            in_out: false,
            format,
        };
        let data = prep.apply(&raw).unwrap();
        assert_eq!(data.len(), prep.prepared_len(raw.len()), "{format:?}");
        let words = case.pack(format).to_words();
        assert!(data
            .iter()
            .zip(&words)
            .all(|(x, y)| x.to_bits() == y.to_bits()));
    }
    let mut bad = case.w.clone();
    bad[5] = f32::INFINITY;
    let prep = WeightPrep::Quantized {
        k: case.k,
        n: case.n,
        in_out: false,
        format: WeightFormat::I8,
    };
    let err = prep.apply(&F32Buffer::from_vec(bad)).unwrap_err();
    assert!(err.to_string().contains("column 0"), "{err}");
}

/// Packing a BF16 or F16 checkpoint tensor from its stored bits gives the same packed weight
/// as packing its f32 widening, in every format and both layouts, without widening the
/// tensor; a format equal to the stored type keeps the stored bits (NaN payloads included).
#[test]
fn packing_from_stored_half_bits_equals_packing_their_widening() {
    use crate::native::{WeightPrep, WeightSource};
    use crate::weights::{F32Buffer, Half, Stored};
    let mut seed = 29;
    let (k, n) = (37, 45);
    let raw: Vec<f32> = (0..k * n).map(|_| lcg(&mut seed) * 3.0).collect();
    for half in [Half::Bf16, Half::F16] {
        let mut bits: Vec<u16> = raw
            .iter()
            .map(|&x| match half {
                Half::Bf16 => half::bf16::from_f32(x).to_bits(),
                Half::F16 => half::f16::from_f32(x).to_bits(),
            })
            .collect();
        // A signalling-NaN payload a conversion through f32 might not keep; int8 refuses it.
        let mut with_nan = bits.clone();
        with_nan[7] = match half {
            Half::Bf16 => 0x7f81,
            Half::F16 => 0x7c01,
        };
        let bytes = |b: &[u16]| b.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let stored = F32Buffer::from_half_bytes(half, bytes(&bits)).unwrap();
        let widened: Vec<f32> = (0..bits.len()).map(|i| stored.stored().f32_at(i)).collect();
        for in_out in [false, true] {
            for format in [
                WeightFormat::I8,
                WeightFormat::Bf16,
                WeightFormat::F16,
                WeightFormat::F32,
            ] {
                let want = PackedWeight::pack(&widened, k, n, in_out, format).unwrap();
                let got = PackedWeight::pack_stored(stored.stored(), k, n, in_out, format);
                assert_eq!(
                    got.unwrap(),
                    want,
                    "{half:?} -> {format:?}, in_out {in_out}"
                );
                let prep = WeightPrep::Quantized {
                    k,
                    n,
                    in_out,
                    format,
                };
                let a = prep.apply(&stored).unwrap();
                let b = prep.apply(&F32Buffer::from_vec(widened.clone())).unwrap();
                assert!(a
                    .iter()
                    .zip(&b[..])
                    .all(|(x, y)| x.to_bits() == y.to_bits()));
            }
        }
        assert!(!stored.is_widened(), "{half:?} was widened to pack it");
        // The stored type packs to exactly its bits.
        let same = match half {
            Half::Bf16 => WeightFormat::Bf16,
            Half::F16 => WeightFormat::F16,
        };
        let src = F32Buffer::from_half_bytes(half, bytes(&with_nan)).unwrap();
        let p = PackedWeight::pack_stored(src.stored(), k, n, true, same).unwrap();
        let packed: Vec<u16> = p
            .data()
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        let mut sorted_in = with_nan.clone();
        let mut sorted_out: Vec<u16> = packed.clone();
        sorted_in.sort_unstable();
        sorted_out.sort_unstable();
        sorted_out.retain(|&x| x != 0);
        sorted_in.retain(|&x| x != 0);
        assert_eq!(
            sorted_out, sorted_in,
            "{half:?}: packed bits are not the stored ones"
        );
        // Concatenated parts (a fused QKV) stay in their stored type.
        bits.truncate(2 * k);
        let part = F32Buffer::from_half_bytes(half, bytes(&bits)).unwrap();
        let lookup = |key: &str| (key != "missing").then(|| part.clone());
        let cat = WeightSource::parse("concat(a,b)").resolve(&lookup).unwrap();
        assert_eq!(cat.half(), Some(half));
        assert_eq!(cat.len(), 4 * k);
        let Stored::F32(_) = F32Buffer::from_vec(vec![]).stored() else {
            panic!("f32 data is stored as f32")
        };
        assert_eq!(&cat[..2 * k], &part[..]);
        assert!(WeightSource::parse("concat(a,missing)")
            .resolve(&lookup)
            .is_none());
    }
}

#[test]
fn bf16_packing_rounds_as_the_half_crate_does() {
    // Every 65 537th bit pattern (all exponents, signs and many mantissas), the rounding
    // ties, and the specials.
    let mut bits: Vec<u32> = (0..=u32::MAX / 65_537).map(|i| i * 65_537).collect();
    for hi in [
        0x3F80u32, 0x3F81, 0x7F7F, 0xFF7F, 0x0000, 0x0001, 0x7F80, 0xFF80, 0x7FC0,
    ] {
        for lo in [0x0000, 0x0001, 0x7FFF, 0x8000, 0x8001, 0xFFFF] {
            bits.push(hi << 16 | lo);
        }
    }
    bits.extend([f32::NAN.to_bits(), 0x7F80_0001, 0xFFFF_FFFF, 0x7FFF_FFFF]);
    for b in bits {
        let x = f32::from_bits(b);
        assert_eq!(
            super::qgemm::bf16_bits(x),
            half::bf16::from_f32(x).to_bits() as u32,
            "{b:#010x}"
        );
    }
}
