//! Weight formats narrower than f32 and their packing: int8 (symmetric, one scale per output
//! column), bf16 and f16 (2 bytes, widened in the kernel). Like [`super::pack_b`], every format
//! packs a `[K, N]` weight into panels of [`PACK_NR`] columns, so one packing, made at load or
//! at compile time, serves every ISA's kernels (they walk sub-panels), and threads split N by
//! whole panels. Also the run-time quantization of the activations for int8 (per row).
//!
//! Panel layouts (panel p holds columns `32p..32p+32`, zero past N; K is padded with zeros):
//! - int8: `[K/4][32][4]` i8: for each group of 4 k, each column's 4 weights side by side,
//!   the operand layout of `vpdpbusd` (16 columns × 4 k per zmm). Kernels without VNNI
//!   sign-extend the same bytes to i16 and use `vpmaddwd` (see `avx2_i8.rs`).
//! - bf16: `[K/2][32][2]` u16: pairs of k per column, the operand layout of `vdpbf16ps`. A pair
//!   is one u32 whose low half is k0 and high half k1, so the widening kernels get both as
//!   f32 with one shift and one mask (bf16 is the high half of an f32).
//! - f16: `[K][32]` u16, like f32's panels: `vcvtph2ps` widens 8 or 16 consecutive columns.

use super::PACK_NR;
use crate::weights::Stored;
use half::{bf16, f16};

/// How a matmul's weights are stored (`--dtype`).
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
pub enum WeightFormat {
    F32,
    Bf16,
    F16,
    /// Symmetric int8 with one f32 scale per output column; activations quantized per row.
    #[value(name = "int8")]
    #[serde(rename = "int8")]
    I8,
}

/// Where a packed weight's parts are in its 4-byte-word form ([`PackedWeight::to_words`]),
/// in words: panels first (bytes padded to a word), then int8's scales and column sums.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WordLayout {
    pub scales: usize,
    pub col_sums: usize,
    pub len: usize,
}

impl WordLayout {
    pub fn of(k: usize, n: usize, format: WeightFormat) -> WordLayout {
        WordLayout::checked_of(k, n, format).expect("the weight's size overflows")
    }

    /// [`WordLayout::of`], or `None` if a size overflows (for the shapes an executable's
    /// description claims).
    pub fn checked_of(k: usize, n: usize, format: WeightFormat) -> Option<WordLayout> {
        let cols = n.checked_next_multiple_of(PACK_NR)?;
        let data_bytes = cols
            .checked_mul(k.checked_next_multiple_of(format.padded_k(1))?)?
            .checked_mul(format.bytes_per_weight())?;
        let scales = data_bytes.div_ceil(4);
        let side = if format == WeightFormat::I8 { cols } else { 0 };
        Some(WordLayout {
            scales,
            col_sums: scales.checked_add(side)?,
            len: scales.checked_add(side.checked_mul(2)?)?,
        })
    }
}

impl WeightFormat {
    /// The element type one stored weight has in the graph's type system
    /// ([`crate::shape::DType`]): f32, bf16, f16 or i8. The names differ only for int8
    /// (`--dtype int8` quantizes; `i8` is the element).
    pub const fn dtype(self) -> crate::shape::DType {
        match self {
            WeightFormat::F32 => crate::shape::DType::F32,
            WeightFormat::Bf16 => crate::shape::DType::BF16,
            WeightFormat::F16 => crate::shape::DType::F16,
            WeightFormat::I8 => crate::shape::DType::I8,
        }
    }

    /// The weight format storing elements of `dtype`, if any (not i64).
    pub const fn of_dtype(dtype: crate::shape::DType) -> Option<WeightFormat> {
        Some(match dtype {
            crate::shape::DType::F32 => WeightFormat::F32,
            crate::shape::DType::BF16 => WeightFormat::Bf16,
            crate::shape::DType::F16 => WeightFormat::F16,
            crate::shape::DType::I8 => WeightFormat::I8,
            crate::shape::DType::I64 => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            WeightFormat::F32 => "f32",
            WeightFormat::Bf16 => "bf16",
            WeightFormat::F16 => "f16",
            WeightFormat::I8 => "int8",
        }
    }

    /// Bytes per stored weight (the scales and column sums of int8 add 8 bytes per column).
    pub fn bytes_per_weight(self) -> usize {
        match self {
            WeightFormat::F32 => 4,
            WeightFormat::Bf16 | WeightFormat::F16 => 2,
            WeightFormat::I8 => 1,
        }
    }

    /// Bytes of a `k × n` weight stored in this format: K padded as its panels hold it, and
    /// int8's scale and column sum (4 bytes each) per column. What the roofline counts.
    pub fn stored_bytes(self, k: usize, n: usize) -> usize {
        let side = if self == WeightFormat::I8 { 8 } else { 0 };
        self.padded_k(k) * n * self.bytes_per_weight() + side * n
    }

    /// K rounded up to what the format's panels hold (k groups of 4 for int8, pairs for bf16).
    pub fn padded_k(self, k: usize) -> usize {
        match self {
            WeightFormat::I8 => k.next_multiple_of(4),
            WeightFormat::Bf16 => k.next_multiple_of(2),
            WeightFormat::F32 | WeightFormat::F16 => k,
        }
    }
}

/// Why a weight cannot be packed.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PackError {
    /// The data is not `k × n` floats (a caller bug: shapes are checked when weights load).
    #[error("a {k}x{n} weight needs {} values, got {len}", k * n)]
    Size { k: usize, n: usize, len: usize },
    /// int8's i32 sums are exact only up to this K (255·127·K < 2^31).
    #[error("int8 weights need K <= {MAX_I8_K}, this one has K = {k}")]
    KTooLarge { k: usize },
    /// A NaN or infinite weight has no int8 scale; f32 would propagate it, int8 would hide it.
    #[error("int8 cannot quantize output column {col}: it holds {value}")]
    NonFinite { col: usize, value: f32 },
    /// A finite weight past the format's largest value (f16's 65504) would round to infinity
    /// and turn every output it touches into inf or NaN.
    #[error(
        "{format} cannot hold output column {col}'s weight {value}: its largest value is {max} \
         (use --dtype bf16, which has f32's range, or f32)"
    )]
    OutOfRange {
        format: &'static str,
        col: usize,
        value: f32,
        max: f32,
    },
}

/// The largest K whose int8 dot products fit in i32 (`255·127·K < 2^31`).
pub const MAX_I8_K: usize = 66_000;

/// A weight matrix packed for [`super::qgemm`]: `[K, N]` in panels of [`PACK_NR`] columns.
#[derive(Clone, Debug, PartialEq)]
pub struct PackedWeight {
    format: WeightFormat,
    k: usize,
    n: usize,
    /// The panels, `n.div_ceil(32) * padded_k * 32` elements of the format's width.
    data: Vec<u8>,
    /// int8 only: per column, `max|w| / 127` (zero-padded to whole panels).
    scales: Vec<f32>,
    /// int8 only: per column, the sum of its quantized weights, for the activations' zero
    /// point (`Σ (q - z)·w = Σ q·w - z·Σ w`).
    col_sums: Vec<i32>,
}

impl PackedWeight {
    /// Packs `w` (`[N, K]` as nn.Linear stores it, or `[K, N]` if `in_out`, as GPT-2's
    /// Conv1D) into `format`'s panels, quantizing or rounding to nearest.
    ///
    pub fn pack(
        w: &[f32],
        k: usize,
        n: usize,
        in_out: bool,
        format: WeightFormat,
    ) -> Result<Self, PackError> {
        PackedWeight::pack_stored(Stored::F32(w), k, n, in_out, format)
    }

    /// [`PackedWeight::pack`] from a checkpoint's elements as stored, without an f32 copy of
    /// the matrix: an F16 (BF16) tensor packed as f16 (bf16) keeps its stored bits, anything
    /// else is converted element by element exactly as its f32 widening would be.
    pub fn pack_stored(
        w: Stored<'_>,
        k: usize,
        n: usize,
        in_out: bool,
        format: WeightFormat,
    ) -> Result<Self, PackError> {
        if w.len() != k * n {
            return Err(PackError::Size { k, n, len: w.len() });
        }
        if format == WeightFormat::I8 && k > MAX_I8_K {
            return Err(PackError::KTooLarge { k });
        }
        let idx = |kk: usize, j: usize| if in_out { kk * n + j } else { j * k + kk };
        let at = |kk: usize, j: usize| w.f32_at(idx(kk, j));
        // f16 / bf16 bits that came out infinite from a finite weight (past the format's
        // largest value, `max`): refused, not packed.
        let overflowed = |infinite: bool, kk: usize, j: usize, format: &'static str, max: f32| {
            (infinite && at(kk, j).is_finite()).then(|| PackError::OutOfRange {
                format,
                col: j,
                value: at(kk, j),
                max,
            })
        };
        let panels = n.div_ceil(PACK_NR);
        let kp = format.padded_k(k);
        let mut out = PackedWeight {
            format,
            k,
            n,
            data: Vec::new(),
            scales: Vec::new(),
            col_sums: Vec::new(),
        };
        match format {
            WeightFormat::F32 => {
                let widened;
                let w = match w {
                    Stored::F32(w) => w,
                    _ => {
                        widened = (0..w.len()).map(|i| w.f32_at(i)).collect::<Vec<_>>();
                        &widened[..]
                    }
                };
                let v = super::pack_b(w, k, n, in_out, PACK_NR);
                out.data = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            }
            WeightFormat::F16 => {
                let mut v = vec![0u16; panels * kp * PACK_NR];
                for j in 0..n {
                    let (p, c) = (j / PACK_NR, j % PACK_NR);
                    for kk in 0..k {
                        let bits = w.f16_bits_at(idx(kk, j));
                        let inf = half::f16::from_bits(bits).is_infinite();
                        if let Some(e) = overflowed(inf, kk, j, "f16", half::f16::MAX.to_f32()) {
                            return Err(e);
                        }
                        v[(p * kp + kk) * PACK_NR + c] = bits;
                    }
                }
                out.data = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            }
            WeightFormat::Bf16 => {
                let mut v = vec![0u16; panels * kp * PACK_NR];
                for j in 0..n {
                    let (p, c) = (j / PACK_NR, j % PACK_NR);
                    for kk in 0..k {
                        let i = ((p * kp + kk / 2 * 2) * PACK_NR) + c * 2 + kk % 2;
                        let bits = w.bf16_bits_at(idx(kk, j));
                        let inf = half::bf16::from_bits(bits).is_infinite();
                        if let Some(e) = overflowed(inf, kk, j, "bf16", half::bf16::MAX.to_f32()) {
                            return Err(e);
                        }
                        v[i] = bits;
                    }
                }
                out.data = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            }
            WeightFormat::I8 => {
                out.data = vec![0u8; panels * kp * PACK_NR];
                out.scales = vec![0.0; panels * PACK_NR];
                out.col_sums = vec![0; panels * PACK_NR];
                // A panel's columns widened once into `[col][k]` (read row by row when the
                // stored matrix is `[in, out]`, so both layouts read memory in order).
                let mut cols = vec![0f32; PACK_NR * k];
                for p in 0..panels {
                    let width = PACK_NR.min(n - p * PACK_NR);
                    for kk in 0..k {
                        for c in 0..width {
                            cols[c * k + kk] = at(kk, p * PACK_NR + c);
                        }
                    }
                    for c in 0..width {
                        let j = p * PACK_NR + c;
                        let col = &cols[c * k..(c + 1) * k];
                        if let Some(&value) = col.iter().find(|v| !v.is_finite()) {
                            return Err(PackError::NonFinite { col: j, value });
                        }
                        let amax = col.iter().fold(0f32, |m, v| m.max(v.abs()));
                        // An all-zero column keeps scale 0 and quantizes to zeros.
                        let scale = amax / 127.0;
                        let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
                        let mut sum = 0i32;
                        for (kk, &x) in col.iter().enumerate() {
                            let q = round_i8(x * inv);
                            sum += q as i32;
                            out.data[(p * kp + kk / 4 * 4) * PACK_NR + c * 4 + kk % 4] = q as u8;
                        }
                        out.scales[j] = scale;
                        out.col_sums[j] = sum;
                    }
                }
            }
        }
        Ok(out)
    }

    pub fn format(&self) -> WeightFormat {
        self.format
    }

    pub fn k(&self) -> usize {
        self.k
    }

    pub fn n(&self) -> usize {
        self.n
    }

    /// The panels' bytes.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// Bytes a matmul streams to read this weight once (panels, scales, column sums).
    pub fn stream_bytes(&self) -> usize {
        self.data.len() + 4 * self.scales.len() + 4 * self.col_sums.len()
    }

    /// int8: per-column scales (empty for other formats).
    pub fn scales(&self) -> &[f32] {
        &self.scales
    }

    /// int8: per-column sums of the quantized weights (empty for other formats).
    pub fn col_sums(&self) -> &[i32] {
        &self.col_sums
    }

    /// The packed weight as 4-byte words ([`WordLayout`]), the unit of the prepared-weight
    /// tables and of the F32 tensors an executable embeds: no arithmetic touches them, so
    /// the bits survive.
    pub fn to_words(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.words()];
        self.write_words(&mut out);
        out
    }

    /// Length of [`PackedWeight::to_words`].
    pub fn words(&self) -> usize {
        WordLayout::of(self.k, self.n, self.format).len
    }

    /// [`PackedWeight::to_words`] into `out`, [`PackedWeight::words`] long.
    pub fn write_words(&self, out: &mut [f32]) {
        assert_eq!(out.len(), self.words(), "word form's length");
        let words = self
            .data
            .chunks(4)
            .map(|c| {
                let mut b = [0u8; 4];
                b[..c.len()].copy_from_slice(c);
                f32::from_le_bytes(b)
            })
            .chain(self.scales.iter().copied())
            .chain(self.col_sums.iter().map(|&s| f32::from_bits(s as u32)));
        for (o, w) in out.iter_mut().zip(words) {
            *o = w;
        }
    }

    /// int8: the quantized weights `[K, N]` row-major (empty for other formats).
    pub fn quantized(&self) -> Vec<i8> {
        if self.format != WeightFormat::I8 {
            return Vec::new();
        }
        let (k, n, kp) = (self.k, self.n, self.format.padded_k(self.k));
        let mut out = vec![0i8; k * n];
        for j in 0..n {
            let (p, c) = (j / PACK_NR, j % PACK_NR);
            for kk in 0..k {
                out[kk * n + j] = self.data[(p * kp + kk / 4 * 4) * PACK_NR + c * 4 + kk % 4] as i8;
            }
        }
        out
    }

    /// The weight as the kernels see it, `[K, N]` row-major f32: dequantized or widened.
    /// The test references multiply by this, so they check the kernels, not the rounding.
    pub fn unpack(&self) -> Vec<f32> {
        let (k, n, kp) = (self.k, self.n, self.format.padded_k(self.k));
        let mut out = vec![0f32; k * n];
        let u16_at = |i: usize| u16::from_le_bytes([self.data[2 * i], self.data[2 * i + 1]]);
        for j in 0..n {
            let (p, c) = (j / PACK_NR, j % PACK_NR);
            for kk in 0..k {
                out[kk * n + j] = match self.format {
                    WeightFormat::F32 => {
                        let i = 4 * ((p * k + kk) * PACK_NR + c);
                        f32::from_le_bytes(self.data[i..i + 4].try_into().unwrap())
                    }
                    WeightFormat::F16 => {
                        f16::from_bits(u16_at((p * kp + kk) * PACK_NR + c)).to_f32()
                    }
                    WeightFormat::Bf16 => {
                        let i = (p * kp + kk / 2 * 2) * PACK_NR + c * 2 + kk % 2;
                        bf16::from_bits(u16_at(i)).to_f32()
                    }
                    WeightFormat::I8 => {
                        let q = self.data[(p * kp + kk / 4 * 4) * PACK_NR + c * 4 + kk % 4] as i8;
                        q as f32 * self.scales[j]
                    }
                };
            }
        }
        out
    }
}

/// `x.round().clamp(-127.0, 127.0) as i8` for finite `x` (half away from zero), without the
/// libm call `round` compiles to: a truncation and an exact compare.
fn round_i8(x: f32) -> i8 {
    let a = x.abs().min(127.0);
    let t = a as i32;
    let r = if a - t as f32 >= 0.5 { t + 1 } else { t }.min(127);
    (if x < 0.0 { -r } else { r }) as i8
}

/// Activation rows quantized to u8 for the int8 kernels, asymmetric per row:
/// `a ≈ scale·(q - zero)`, q in 0..=255, with 0.0 exactly representable.
///
/// Why asymmetric u8: `vpdpbusd` multiplies u8 by i8, so signed activations would need an
/// offset of 128 and the same column-sum correction anyway; with a per-row zero point the
/// correction is free and the full 256 levels cover each row's [min, max]. That matters for
/// the FFN's second matmul, whose inputs (after GELU) lie in [-0.17, max]: a symmetric scheme
/// would spend half its levels on negatives that never occur.
pub struct QuantRows {
    /// `[M][kp]`, K padded with zeros (the padded weights are zero too).
    pub q: Vec<u8>,
    /// The same values as i16, for the kernels that widen (`vpmaddwd`); empty otherwise.
    pub q16: Vec<i16>,
    pub kp: usize,
    pub scale: Vec<f32>,
    pub zero: Vec<i32>,
}

impl QuantRows {
    pub const fn new() -> QuantRows {
        QuantRows {
            q: Vec::new(),
            q16: Vec::new(),
            kp: 0,
            scale: Vec::new(),
            zero: Vec::new(),
        }
    }

    /// Quantizes `m` rows of `k` floats (row stride `lda`) from `a`, with `levels - 1` as the
    /// largest code (255 for u8; lower only to measure narrower activations).
    ///
    /// # Safety
    /// `a` must be valid for `m` rows of `k` floats at stride `lda`.
    pub unsafe fn quantize(
        &mut self,
        a: *const f32,
        lda: usize,
        m: usize,
        k: usize,
        widen: bool,
        levels: u32,
    ) {
        let kp = k.next_multiple_of(4);
        self.kp = kp;
        // Grown, never cleared: every row's kp codes (padding included) are written below, so
        // zeroing them first (a memset of M·kp bytes on one thread per call, about 1 % of an
        // int8 BERT-base forward) bought nothing.
        fn grow<T: Copy + Default>(v: &mut Vec<T>, n: usize) {
            if v.len() < n {
                v.resize(n, T::default());
            }
        }
        grow(&mut self.q, m * kp);
        grow(&mut self.scale, m);
        grow(&mut self.zero, m);
        if widen {
            grow(&mut self.q16, m * kp);
        } else {
            self.q16.clear();
        }
        let top = (levels - 1) as f32;
        let isa = super::detected();
        let out = Rows {
            a,
            q: self.q.as_mut_ptr(),
            q16: if widen {
                self.q16.as_mut_ptr()
            } else {
                std::ptr::null_mut()
            },
            scale: self.scale.as_mut_ptr(),
            zero: self.zero.as_mut_ptr(),
        };
        let quantize_rows = |chunk: usize| {
            // The whole struct (a closure would capture its raw pointers one by one).
            let out = &out;
            for i in chunk * QUANT_ROWS..((chunk + 1) * QUANT_ROWS).min(m) {
                // SAFETY: the caller promised `a` valid for m rows of k floats at stride lda;
                // `out` points into buffers of m rows (of kp bytes / words), and each chunk
                // writes only its own rows.
                unsafe {
                    let row = std::slice::from_raw_parts(out.a.add(i * lda), k);
                    let (lo, hi, finite) = codes::range(isa, row);
                    // A NaN or infinity poisons the row's outputs, as it would in f32.
                    let scale = if finite { (hi - lo) / top } else { f32::NAN };
                    let (zero, inv) = if scale > 0.0 {
                        (codes::round(-lo / scale, top), 1.0 / scale)
                    } else {
                        (0.0, 0.0)
                    };
                    let q = std::slice::from_raw_parts_mut(out.q.add(i * kp), kp);
                    codes::encode(isa, row, inv, zero, top, &mut q[..k]);
                    // K's padding multiplies zero weights; it is zero all the same.
                    q[k..].fill(0);
                    *out.scale.add(i) = scale;
                    *out.zero.add(i) = zero as i32;
                    if !out.q16.is_null() {
                        for (j, &x) in q.iter().enumerate() {
                            *out.q16.add(i * kp + j) = x as i16;
                        }
                    }
                }
            }
        };
        let chunks = m.div_ceil(QUANT_ROWS);
        let threads = if m * k >= PARALLEL_QUANT_MIN {
            usize::MAX
        } else {
            1
        };
        crate::threads::parallel_for_on(threads, chunks, &quantize_rows);
    }
}

/// Rows of A per task of [`QuantRows::quantize`].
const QUANT_ROWS: usize = 8;

/// Elements of A from which [`QuantRows::quantize`] splits its rows over the threads: it ran
/// on the calling thread alone while the others waited, about 2 % of an int8 BERT-base
/// forward on 2 threads (AMD EPYC).
const PARALLEL_QUANT_MIN: usize = 32 * 1024;

/// What [`QuantRows::quantize`]'s tasks read and where they write.
struct Rows {
    a: *const f32,
    q: *mut u8,
    q16: *mut i16,
    scale: *mut f32,
    zero: *mut i32,
}

// SAFETY: tasks read `a` and write disjoint rows through the other pointers while `quantize`
// holds the buffers borrowed mutably.
unsafe impl Sync for Rows {}

/// The two passes of [`QuantRows::quantize`] over a row, in vector lanes where the CPU has
/// them. Every path gives the same bytes: min and max are exact in any order, and codes round
/// half away from zero (as `f32::round`) through a truncation and an exact compare, not
/// through the libm call `round` compiles to.
mod codes {
    use super::super::Isa;

    /// `(min(0, row), max(0, row), all finite)`.
    pub fn range(isa: Isa, row: &[f32]) -> (f32, f32, bool) {
        #[cfg(target_arch = "x86_64")]
        match isa {
            // SAFETY: `detected()` picks a family only where its features are present.
            Isa::Avx512 => return unsafe { range_avx512(row) },
            Isa::Avx2 => return unsafe { range_avx2(row) },
            Isa::Portable => {}
        }
        let _ = isa;
        range_portable(row)
    }

    fn range_portable(row: &[f32]) -> (f32, f32, bool) {
        row.iter().fold((0f32, 0f32, true), |(lo, hi, f), &x| {
            (lo.min(x), hi.max(x), f && x.is_finite())
        })
    }

    /// `x` rounded half away from zero and clamped to `0..=top` (NaN gives 0), exactly as
    /// `x.round().clamp(0.0, top)` for `top < 2^23`.
    pub fn round(x: f32, top: f32) -> f32 {
        let c = x.clamp(0.0, top);
        if c.is_nan() {
            return 0.0;
        }
        let t = c as u32 as f32;
        if c - t >= 0.5 {
            t + 1.0
        } else {
            t
        }
    }

    /// `dst[j] = round(row[j] · inv + zero)`.
    pub fn encode(isa: Isa, row: &[f32], inv: f32, zero: f32, top: f32, dst: &mut [u8]) {
        debug_assert_eq!(row.len(), dst.len());
        #[cfg(target_arch = "x86_64")]
        match isa {
            // SAFETY: as in `range`.
            Isa::Avx512 => return unsafe { encode_avx512(row, inv, zero, top, dst) },
            Isa::Avx2 => return unsafe { encode_avx2(row, inv, zero, top, dst) },
            Isa::Portable => {}
        }
        let _ = isa;
        encode_portable(row, inv, zero, top, dst)
    }

    fn encode_portable(row: &[f32], inv: f32, zero: f32, top: f32, dst: &mut [u8]) {
        for (d, &x) in dst.iter_mut().zip(row) {
            *d = round(x * inv + zero, top) as u8;
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn range_avx512(row: &[f32]) -> (f32, f32, bool) {
        use std::arch::x86_64::*;
        let (mut lo, mut hi) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        // x·0 is 0 for finite x and NaN otherwise; the sum is NaN iff some x is not finite.
        let mut bad = _mm512_setzero_ps();
        let body = row.len() / 16 * 16;
        for j in (0..body).step_by(16) {
            let x = _mm512_loadu_ps(row.as_ptr().add(j));
            // NaN lanes keep the running value (the second operand), as `f32::min` does.
            lo = _mm512_min_ps(x, lo);
            hi = _mm512_max_ps(x, hi);
            bad = _mm512_add_ps(bad, _mm512_mul_ps(x, _mm512_setzero_ps()));
        }
        let (tl, th, tf) = range_portable(&row[body..]);
        let lo = _mm512_reduce_min_ps(lo).min(tl);
        let hi = _mm512_reduce_max_ps(hi).max(th);
        (lo, hi, tf && !_mm512_reduce_add_ps(bad).is_nan())
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn range_avx2(row: &[f32]) -> (f32, f32, bool) {
        use std::arch::x86_64::*;
        let (mut lo, mut hi) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut bad = _mm256_setzero_ps();
        let body = row.len() / 8 * 8;
        for j in (0..body).step_by(8) {
            let x = _mm256_loadu_ps(row.as_ptr().add(j));
            lo = _mm256_min_ps(x, lo);
            hi = _mm256_max_ps(x, hi);
            bad = _mm256_add_ps(bad, _mm256_mul_ps(x, _mm256_setzero_ps()));
        }
        let (mut l, mut h, mut f) = range_portable(&row[body..]);
        let mut lanes = [[0f32; 8]; 3];
        _mm256_storeu_ps(lanes[0].as_mut_ptr(), lo);
        _mm256_storeu_ps(lanes[1].as_mut_ptr(), hi);
        _mm256_storeu_ps(lanes[2].as_mut_ptr(), bad);
        for ((&lo, &hi), &bad) in lanes[0].iter().zip(&lanes[1]).zip(&lanes[2]) {
            l = l.min(lo);
            h = h.max(hi);
            f &= !bad.is_nan();
        }
        (l, h, f)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn encode_avx512(row: &[f32], inv: f32, zero: f32, top: f32, dst: &mut [u8]) {
        use std::arch::x86_64::*;
        let (vinv, vzero, vtop) = (
            _mm512_set1_ps(inv),
            _mm512_set1_ps(zero),
            _mm512_set1_ps(top),
        );
        let (half, one) = (_mm512_set1_ps(0.5), _mm512_set1_ps(1.0));
        let body = row.len() / 16 * 16;
        for j in (0..body).step_by(16) {
            // Multiply, then add: two roundings, as the scalar `x * inv + zero`.
            let x = _mm512_add_ps(
                _mm512_mul_ps(_mm512_loadu_ps(row.as_ptr().add(j)), vinv),
                vzero,
            );
            // max(x, 0) is 0 for a NaN x (the second operand), then min with top.
            let c = _mm512_min_ps(_mm512_max_ps(x, _mm512_setzero_ps()), vtop);
            let t = _mm512_roundscale_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(c);
            let up = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(_mm512_sub_ps(c, t), half);
            let r = _mm512_mask_add_ps(t, up, t, one);
            _mm_storeu_si128(
                dst.as_mut_ptr().add(j).cast(),
                _mm512_cvtepi32_epi8(_mm512_cvttps_epi32(r)),
            );
        }
        encode_portable(&row[body..], inv, zero, top, &mut dst[body..]);
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn encode_avx2(row: &[f32], inv: f32, zero: f32, top: f32, dst: &mut [u8]) {
        use std::arch::x86_64::*;
        let (vinv, vzero, vtop) = (
            _mm256_set1_ps(inv),
            _mm256_set1_ps(zero),
            _mm256_set1_ps(top),
        );
        let (half, one) = (_mm256_set1_ps(0.5), _mm256_set1_ps(1.0));
        let body = row.len() / 8 * 8;
        for j in (0..body).step_by(8) {
            let x = _mm256_add_ps(
                _mm256_mul_ps(_mm256_loadu_ps(row.as_ptr().add(j)), vinv),
                vzero,
            );
            let c = _mm256_min_ps(_mm256_max_ps(x, _mm256_setzero_ps()), vtop);
            let t = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(c);
            let up = _mm256_cmp_ps::<_CMP_GE_OQ>(_mm256_sub_ps(c, t), half);
            let r = _mm256_add_ps(t, _mm256_and_ps(up, one));
            let i = _mm256_cvttps_epi32(r);
            // 8 i32 in 0..=255 to 8 bytes: pack to i16 then u8 within each 128-bit half.
            let w = _mm_packus_epi32(_mm256_castsi256_si128(i), _mm256_extracti128_si256::<1>(i));
            let b = _mm_packus_epi16(w, w);
            _mm_storel_epi64(dst.as_mut_ptr().add(j).cast(), b);
        }
        encode_portable(&row[body..], inv, zero, top, &mut dst[body..]);
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        use crate::testing::isas;

        /// Rows with exact halves, values past both ends, a NaN and an infinity, and lengths
        /// that leave vector tails.
        fn rows() -> Vec<Vec<f32>> {
            let mut out = Vec::new();
            for len in [1, 7, 8, 15, 16, 17, 33, 768, 770] {
                let mut r: Vec<f32> = (0..len)
                    .map(|i| ((i * 37 % 101) as f32 - 40.0) * 0.173)
                    .collect();
                out.push(r.clone());
                r[len / 2] = f32::NAN;
                out.push(r.clone());
                r[len / 2] = f32::INFINITY;
                out.push(r);
            }
            out.push(vec![0.0; 19]);
            out.push(vec![-3.0; 21]);
            out.push((0..40).map(|i| i as f32 * 0.5 - 4.0).collect());
            out
        }

        #[test]
        fn every_path_gives_the_scalar_bytes() {
            for row in rows() {
                let want_range = range_portable(&row);
                for (inv, zero, top) in [
                    (1.0, 0.0, 255.0),
                    (2.0, 4.0, 255.0),
                    (0.37, 100.0, 127.0),
                    (1.0, 128.0, 255.0),
                ] {
                    let want: Vec<u8> = row
                        .iter()
                        .map(|&x| (x * inv + zero).round().clamp(0.0, top) as u8)
                        .collect();
                    for isa in isas() {
                        let got_range = range(isa, &row);
                        assert_eq!(
                            got_range.2,
                            want_range.2,
                            "{isa:?} finiteness, len {}",
                            row.len()
                        );
                        if want_range.2 {
                            assert_eq!(
                                (got_range.0, got_range.1),
                                (want_range.0, want_range.1),
                                "{isa:?}"
                            );
                        }
                        let mut got = vec![9u8; row.len()];
                        encode(isa, &row, inv, zero, top, &mut got);
                        assert_eq!(
                            got,
                            want,
                            "{isa:?}, len {}, inv {inv}, zero {zero}",
                            row.len()
                        );
                    }
                }
            }
        }

        #[test]
        fn weight_rounding_matches_round_then_clamp() {
            for i in -70_000..70_000 {
                let x = i as f32 * 0.00625 - 0.003;
                for y in [x, i as f32 * 0.5, i as f32 * 0.5 + 0.25] {
                    let want = y.round().clamp(-127.0, 127.0) as i8;
                    assert_eq!(super::super::round_i8(y), want, "{y}");
                }
            }
        }

        #[test]
        fn round_is_half_away_from_zero_then_clamped() {
            for x in [
                -1.0f32,
                -0.5,
                -0.49,
                0.0,
                0.49999997,
                0.5,
                1.5,
                2.5,
                254.5,
                255.4,
                300.0,
                f32::NAN,
            ] {
                let want = if x.is_nan() {
                    0.0
                } else {
                    x.round().clamp(0.0, 255.0)
                };
                assert_eq!(round(x, 255.0), want, "{x}");
            }
        }
    }
}

impl Default for QuantRows {
    fn default() -> Self {
        QuantRows::new()
    }
}

/// Rows of the `[N, K]` matrix (an embedding table) whose transpose `[K, N]` a prepared
/// weight holds in its word form ([`PackedWeight::to_words`]; f32 as [`super::pack_b`]'s
/// panels): row j is column j of the packed matrix, dequantized or widened exactly as the
/// kernels see it ([`PackedWeight::unpack`]). A tied LM head's quantized panels thus serve its
/// embedding gathers too, and the model keeps one copy of the matrix. Returns false (writing
/// nothing more) at the first id outside `0..n`.
///
/// # Safety
/// `words` must hold a weight of that shape and format; `out` must have room for
/// `ids.len()` rows of `k` floats.
pub unsafe fn gather_columns(
    words: *const f32,
    (k, n, format): (usize, usize, WeightFormat),
    ids: &[i64],
    out: *mut f32,
) -> bool {
    let kp = format.padded_k(k);
    let bytes = words.cast::<u8>();
    let layout = WordLayout::of(k, n, format);
    for (i, &id) in ids.iter().enumerate() {
        let Some(j) = usize::try_from(id).ok().filter(|&j| j < n) else {
            return false;
        };
        let (p, c) = (j / PACK_NR, j % PACK_NR);
        let row = std::slice::from_raw_parts_mut(out.add(i * k), k);
        match format {
            WeightFormat::F32 => {
                let panel = words.add(p * k * PACK_NR + c);
                for (kk, y) in row.iter_mut().enumerate() {
                    *y = *panel.add(kk * PACK_NR);
                }
            }
            WeightFormat::F16 => {
                let panel = bytes.add(2 * (p * kp * PACK_NR + c));
                for (kk, y) in row.iter_mut().enumerate() {
                    let at = panel.add(2 * kk * PACK_NR);
                    *y = f16::from_bits(u16::from_le_bytes([*at, *at.add(1)])).to_f32();
                }
            }
            WeightFormat::Bf16 => {
                // Pairs of k side by side per column: `[K/2][32][2]`.
                let panel = bytes.add(2 * (p * kp * PACK_NR + 2 * c));
                for (kk, y) in row.iter_mut().enumerate() {
                    let at = panel.add(2 * (kk / 2 * 2 * PACK_NR + kk % 2));
                    *y = bf16::from_bits(u16::from_le_bytes([*at, *at.add(1)])).to_f32();
                }
            }
            WeightFormat::I8 => {
                // Groups of 4 k side by side per column: `[K/4][32][4]`; one scale per column.
                let panel = bytes.add(p * kp * PACK_NR + 4 * c);
                let scale = *words.add(layout.scales + j);
                for (kk, y) in row.iter_mut().enumerate() {
                    let q = *panel.add(kk / 4 * 4 * PACK_NR + kk % 4) as i8;
                    *y = q as f32 * scale;
                }
            }
        }
    }
    true
}

/// C entry point for generated code: [`gather_columns`] with the format's
/// [`WeightFormat::code`]; 0 on success, 1 when an id is out of range or the format code is
/// unknown (the generated caller reports it with the node's name).
///
/// # Safety
/// As [`gather_columns`]; `ids` valid for `count` values.
#[no_mangle]
pub unsafe extern "C" fn cranformer_gather_columns(
    words: *const f32,
    k: usize,
    n: usize,
    format: usize,
    ids: *const i64,
    count: usize,
    out: *mut f32,
) -> i64 {
    let Some(format) = u32::try_from(format).ok().and_then(WeightFormat::from_code) else {
        return 1;
    };
    let ids = if count == 0 {
        &[][..]
    } else {
        std::slice::from_raw_parts(ids, count)
    };
    let mut ok = false;
    // SAFETY: the caller passes a weight of this shape and room for the rows.
    crate::threads::catch_for_generated_code(|| unsafe {
        ok = gather_columns(words, (k, n, format), ids, out);
    });
    i64::from(!ok)
}

#[cfg(test)]
mod dtype_tests {
    use super::*;

    #[test]
    fn formats_and_graph_dtypes_agree() {
        for f in [
            WeightFormat::F32,
            WeightFormat::Bf16,
            WeightFormat::F16,
            WeightFormat::I8,
        ] {
            assert_eq!(WeightFormat::of_dtype(f.dtype()), Some(f));
            assert_eq!(f.dtype().size(), f.bytes_per_weight());
        }
        assert_eq!(WeightFormat::of_dtype(crate::shape::DType::I64), None);
    }
}
