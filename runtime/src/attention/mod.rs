//! Scaled dot-product attention for the generated code (`RuntimeFns::attention`): padding
//! mask, causal mask, additive bias (T5), keys and values read in place from a KV cache.
//! The generated kernel fills an [`AttnCall`] on its stack; the runtime picks the ISA
//! (AVX-512, AVX2+FMA, portable: `CRANFORMER_ISA` as for the matmuls) and the threads on the
//! machine that runs, as for `gemm`.
//!
//! Work is split into tasks of one (batch row, head, block of [`block_rows`] queries). A block
//! of many queries keeps its queries in the vector lanes (the "lane" path): Q's block is
//! transposed once into `Qᵀ [D, QB]`, then for each tile of [`KT`] keys
//! - the scores `Sᵀ [KT, QB] = K_tile · Qᵀ` and the update `Oᵀ [D, QB] += V_tileᵀ · P` are both
//!   register-blocked products of a broadcast scalar (a K or V element) with two vectors of
//!   lanes, the matmul's 12×32 tile shape ([`tile`]), with no horizontal sums;
//! - the softmax is online (Milakov & Gimelshein; FlashAttention): per lane, a running max
//!   `m` and sum `l` of exp(score - m), the accumulated `Oᵀ` and `l` rescaled by
//!   exp(m_old - m_new) when a tile raises the max, `Oᵀ / l` at the end.
//!
//! A block of a few queries (a decode step, T = 1) takes the "row" path instead: per query,
//! dot products with vectors along D, and `out += p_j · v_j` with vectors along D.
//!
//! Masked keys get score -inf, whose exp is exactly 0. A query whose keys are all masked gets
//! the mean of V over the keys it may see (all of them, or up to itself under `causal`):
//! Hugging Face adds float32's minimum to masked scores, which then are all equal, so its
//! softmax is uniform there. Keys after a batch row's last unmasked one (right padding) are
//! never scored.
//!
//! Every score and output element sums its terms in an order fixed by the shape and the ISA
//! alone (lanes never mix, tiles and blocks do not depend on the thread count), so results do
//! not depend on the number of threads.

// `m[u]`, `l[u]`, `corr[u]`: each quantity is two vectors of query lanes, indexed together.
#![allow(clippy::needless_range_loop)]

#[cfg(test)]
mod tests;

use crate::gemm::{Isa, ISA_AUTO};
use crate::simd::{self, Simd};
use crate::threads;
use std::cell::RefCell;

/// Keys per score tile: `Sᵀ` is `KT × QB` f32 (16 KB with AVX-512), beside `Qᵀ` and `Oᵀ`
/// (8 KB each at D = 64), within a 32 KB L1 with the streamed K and V rows.
pub const KT: usize = 128;

/// One attention call from generated code (`RuntimeFns::attention`). Generated code fills
/// it on its stack at the offsets [`crate::abi::attn_call`] reads from this definition.
/// Shapes: B `batch`, T `seq`, S `keys`, H `heads`, D `head_dim`, C = H·D.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct AttnCall {
    /// `[B, T, C]` whose rows lie `q_ld` floats apart.
    pub q: *const f32,
    /// `[B, kv_rows, C]` whose rows lie `kv_ld` floats apart, of which the first S rows of
    /// each batch row are read.
    pub k: *const f32,
    /// As `k`.
    pub v: *const f32,
    /// `[B, S]`, 0 = masked, anything else attends; or null.
    pub mask: *const i64,
    /// `[H, T, S]` added to the scaled scores; or null.
    pub bias: *const f32,
    /// `[B, T, C]`; aliases none of the inputs.
    pub out: *mut f32,
    pub batch: usize,
    pub seq: usize,
    pub keys: usize,
    /// Rows from one batch row of `k` / `v` to the next: S, or a KV cache's capacity when
    /// the cache is read where it lies.
    pub kv_rows: usize,
    /// Floats from one row of `q` to the next: C, or 0 meaning C. More reads q where it lies
    /// inside a wider tensor, as Q's columns of a fused `[B, T, 3C]` QKV projection.
    pub q_ld: usize,
    /// As `q_ld`, for the rows of `k` and of `v`.
    pub kv_ld: usize,
    pub heads: usize,
    pub head_dim: usize,
    /// Multiplies q·k before the bias is added.
    pub scale: f32,
    /// 1: query i, at absolute position S - T + i, sees keys `0..=S-T+i`; 0: all keys.
    pub causal: u32,
    /// An [`Isa`] as `u32`, or [`ISA_AUTO`] (a family the CPU lacks falls back to auto).
    pub isa: u32,
    /// Threads at most, 0 = the pool's default (results do not depend on it).
    pub threads: u32,
}

// SAFETY: an AttnCall is plain data; its pointers are only dereferenced inside `attention`,
// whose callers guarantee them valid for the call. Tasks read q, k, v, mask and bias, which
// nobody writes during the call, and write disjoint rows × head slices of `out`.
unsafe impl Send for AttnCall {}
// SAFETY: as for Send.
unsafe impl Sync for AttnCall {}

/// Lanes per vector of an ISA's kernel.
fn width(isa: Isa) -> usize {
    match isa {
        Isa::Avx512 if cfg!(target_arch = "x86_64") => 16,
        Isa::Avx2 if cfg!(target_arch = "x86_64") => 8,
        _ => 4,
    }
}

/// Queries per task: two vectors of lanes.
pub fn block_rows(isa: Isa) -> usize {
    2 * width(isa)
}

impl AttnCall {
    /// The ISA this call runs with.
    pub fn resolved_isa(&self) -> Isa {
        if self.isa == ISA_AUTO {
            crate::gemm::detected()
        } else {
            Isa::from_code(self.isa)
        }
    }

    /// Keys 0..reach are query ti's, mask aside.
    fn reach(&self, ti: usize) -> usize {
        if self.causal != 0 {
            (self.keys + ti + 1).saturating_sub(self.seq).min(self.keys)
        } else {
            self.keys
        }
    }

    /// Keys after batch row b's last unmasked one are never scored (their weight is exactly
    /// 0 anyway); a row with none left takes the all-masked fallback. Returns how many keys
    /// are kept and whether any of those is masked.
    ///
    /// # Safety
    /// `mask` is null or valid for `[B, S]`.
    unsafe fn kept(&self, b: usize) -> (usize, bool) {
        if self.mask.is_null() {
            return (self.keys, false);
        }
        // SAFETY: as the caller promised.
        let m = unsafe { std::slice::from_raw_parts(self.mask.add(b * self.keys), self.keys) };
        let kept = m.iter().rposition(|&x| x != 0).map_or(0, |p| p + 1);
        (kept, m[..kept].contains(&0))
    }

    /// Whether key j of batch row b is masked.
    ///
    /// # Safety
    /// As [`AttnCall::kept`], `j < S`.
    #[inline(always)]
    unsafe fn masked(&self, b: usize, j: usize) -> bool {
        // SAFETY: as the caller promised.
        !self.mask.is_null() && unsafe { *self.mask.add(b * self.keys + j) } == 0
    }
}

/// What each task needs: the call and its place.
struct Task<'c> {
    c: &'c AttnCall,
    b: usize,
    h: usize,
    t0: usize,
    rows: usize,
    kept: usize,
    /// Whether a key below `kept` is masked.
    holes: bool,
}

impl Task<'_> {
    /// Row stride of out: C.
    fn cc(&self) -> usize {
        self.c.heads * self.c.head_dim
    }
    /// Row stride of q.
    fn q_ld(&self) -> usize {
        self.c.q_ld()
    }
    /// Row stride of k and v.
    fn kv_ld(&self) -> usize {
        self.c.kv_ld()
    }
    /// Head h's slice of query row ti.
    fn qrow(&self, ti: usize) -> usize {
        (self.b * self.c.seq + ti) * self.q_ld() + self.h * self.c.head_dim
    }
    /// Head h's slice of output row ti.
    fn orow(&self, ti: usize) -> usize {
        (self.b * self.c.seq + ti) * self.cc() + self.h * self.c.head_dim
    }
    /// Head h's slice of key or value row 0 of batch row b.
    fn kv0(&self) -> usize {
        self.b * self.c.kv_rows * self.kv_ld() + self.h * self.c.head_dim
    }
}

/// Why a call is refused (a compiler bug when it comes from generated code).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AttnError {
    /// K and V batch rows overlap: `kv_rows` < S.
    #[error("attention: kv_rows {kv_rows} is smaller than the {keys} keys")]
    KvRows { kv_rows: usize, keys: usize },
    /// A row stride shorter than a row (C = heads · head_dim): rows would overlap.
    #[error("attention: {input} row stride {ld} is shorter than its {c} channels")]
    Stride {
        input: &'static str,
        ld: usize,
        c: usize,
    },
    /// Causal attention with more queries than keys has queries before the first key.
    #[error("attention: causal with {seq} queries but only {keys} keys")]
    Causal { seq: usize, keys: usize },
}

impl AttnCall {
    /// Floats from one row of q to the next (`q_ld`, 0 meaning C).
    pub fn q_ld(&self) -> usize {
        match self.q_ld {
            0 => self.heads * self.head_dim,
            ld => ld,
        }
    }

    /// Floats from one row of k (or v) to the next (`kv_ld`, 0 meaning C).
    pub fn kv_ld(&self) -> usize {
        match self.kv_ld {
            0 => self.heads * self.head_dim,
            ld => ld,
        }
    }

    fn check(&self) -> Result<(), AttnError> {
        let c = self.heads * self.head_dim;
        for (input, ld) in [("q", self.q_ld()), ("k/v", self.kv_ld())] {
            if ld < c {
                return Err(AttnError::Stride { input, ld, c });
            }
        }
        if self.batch > 1 && self.kv_rows < self.keys {
            return Err(AttnError::KvRows {
                kv_rows: self.kv_rows,
                keys: self.keys,
            });
        }
        if self.causal != 0 && self.seq > self.keys {
            return Err(AttnError::Causal {
                seq: self.seq,
                keys: self.keys,
            });
        }
        Ok(())
    }
}

thread_local! {
    /// Per-thread `Qᵀ`, `Oᵀ`, `Sᵀ` (lane path) or the score row (row path).
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

type TaskFn = unsafe fn(&AttnCall, usize, &mut [f32]);

/// Runs the call on the ISA and threads it names (0: chosen here).
///
/// # Safety
/// The pointers are valid for the shapes the call gives (see [`AttnCall`]).
pub unsafe fn attention(c: &AttnCall) -> Result<(), AttnError> {
    // SAFETY: as the caller promised.
    unsafe { attention_ran(c) }.map(|_| ())
}

/// [`attention`], returning the ISA and threads it ran with.
///
/// # Safety
/// As [`attention`].
unsafe fn attention_ran(c: &AttnCall) -> Result<(Isa, usize), AttnError> {
    c.check()?;
    let isa = c.resolved_isa();
    if c.batch == 0 || c.seq == 0 || c.heads == 0 || c.head_dim == 0 {
        return Ok((isa, 1));
    }
    let f: TaskFn = match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => task_avx512,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => task_avx2,
        _ => task_portable,
    };
    let qb = block_rows(isa);
    let tasks = c.batch * c.heads * c.seq.div_ceil(qb);
    let need = 2 * c.head_dim * qb + KT * qb + c.head_dim.next_multiple_of(qb);
    let threads = threads::for_call(c.threads, tasks);
    threads::parallel_for_on(threads, tasks, &|i| {
        SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            if s.len() < need {
                s.resize(need, 0.0);
            }
            // SAFETY: as the caller promised; `s` holds what a task needs.
            unsafe { f(c, i, &mut s) }
        })
    });
    Ok((isa, threads))
}

/// C entry point for generated code (`RuntimeFns::attention`).
///
/// # Safety
/// `call` points at a valid [`AttnCall`] whose pointers are valid for its shapes.
pub unsafe extern "C" fn cranformer_attention(call: *const AttnCall) {
    // SAFETY: as the caller promised.
    let c = unsafe { &*call };
    // Generated code cannot unwind: a panic is recorded for the host instead.
    threads::catch_for_generated_code(|| {
        // SAFETY: as the caller promised.
        let ran = crate::gemm::profile::kernel("attention", || unsafe { attention_ran(c) });
        if let Err(e) = ran {
            panic!("compiler bug: {e}");
        }
    });
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn task_avx512(c: &AttnCall, i: usize, scratch: &mut [f32]) {
    // SAFETY: chosen only when the CPU has AVX-512F; the rest as `attention`'s caller promised.
    unsafe { task::<simd::Avx512>(c, i, scratch) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn task_avx2(c: &AttnCall, i: usize, scratch: &mut [f32]) {
    // SAFETY: chosen only when the CPU has AVX2 and FMA; the rest as `attention`'s caller
    // promised.
    unsafe { task::<simd::Avx2>(c, i, scratch) }
}

unsafe fn task_portable(c: &AttnCall, i: usize, scratch: &mut [f32]) {
    // SAFETY: as `attention`'s caller promised.
    unsafe { task::<simd::Portable>(c, i, scratch) }
}

/// Task i: queries `QB·blk..` of head h, batch row b, with `i = (b·H + h)·blocks + blk`.
#[inline(always)]
unsafe fn task<S: Simd>(c: &AttnCall, i: usize, scratch: &mut [f32]) {
    let qb = 2 * S::W;
    let blocks = c.seq.div_ceil(qb);
    let (blk, bh) = (i % blocks, i / blocks);
    let t0 = blk * qb;
    // SAFETY: as `attention`'s caller promised.
    let (kept, holes) = unsafe { c.kept(bh / c.heads) };
    let t = Task {
        c,
        b: bh / c.heads,
        h: bh % c.heads,
        t0,
        rows: qb.min(c.seq - t0),
        kept,
        holes,
    };
    // SAFETY: as `attention`'s caller promised; scratch sized by `attention`.
    unsafe {
        if t.rows * 4 <= qb {
            rows_path::<S>(&t, scratch)
        } else {
            lanes_path::<S>(&t, scratch)
        }
    }
}

/// The scaled, biased, masked score of key j for query ti from its dot product.
///
/// # Safety
/// As `attention`'s caller promised, `j < S`, `ti < T`.
#[inline(always)]
unsafe fn score(t: &Task, x: f32, ti: usize, j: usize) -> f32 {
    let c = t.c;
    // SAFETY: as the caller promised.
    unsafe {
        if c.masked(t.b, j) {
            return f32::NEG_INFINITY;
        }
        let x = x * c.scale;
        if c.bias.is_null() {
            x
        } else {
            x + *c.bias.add((t.h * c.seq + ti) * c.keys + j)
        }
    }
}

/// The all-masked fallback: `out = (Σ_{j < reach} v_j) · (1 / reach)`, summed in key order
/// as the interpreter does.
///
/// # Safety
/// As `attention`'s caller promised, `orow` is head h's slice of an output row.
unsafe fn mean_of_values(t: &Task, reach: usize, orow: *mut f32) {
    let (d, ld) = (t.c.head_dim, t.kv_ld());
    // SAFETY: as the caller promised.
    unsafe {
        let o = std::slice::from_raw_parts_mut(orow, d);
        o.fill(0.0);
        let v0 = t.c.v.add(t.kv0());
        for j in 0..reach {
            let v = std::slice::from_raw_parts(v0.add(j * ld), d);
            o.iter_mut().zip(v).for_each(|(o, v)| *o += v);
        }
        if reach > 0 {
            let inv = 1.0 / reach as f32;
            o.iter_mut().for_each(|x| *x *= inv);
        }
    }
}

/// `c[r, :] (+)= Σ_kk a(r, kk) · b[kk, :]` for `r < rows` (≤ `S::MR`), with `a(r, kk)` at
/// `a + r·a_rs + kk·a_ks` and `b`, `c` rows of two vectors (QB lanes) each. With `SCALED`
/// (the scores), each sum is multiplied by `scale` as it is stored, and `max` takes the
/// stored rows' maximum per lane: the same products as a pass over `c` after it, without the
/// pass (BERT-base's attention 0.95x the time on 1 thread, AMD EPYC Zen 5, AVX-512).
///
/// # Safety
/// Every address read or written is valid.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<S: Simd, const SCALED: bool>(
    rows: usize,
    kdim: usize,
    a: *const f32,
    a_rs: usize,
    a_ks: usize,
    b: *const f32,
    c: *mut f32,
    accumulate: bool,
    scale: S::V,
    max: &mut [S::V; 2],
) {
    // One instantiation per row count keeps every accumulator in a register.
    macro_rules! rows {
        ($($r:literal)*) => {
            match rows {
                $($r if $r <= S::MR => {
                    // SAFETY: as the caller promised.
                    unsafe {
                        micro::<S, $r, SCALED>(kdim, a, a_rs, a_ks, b, c, accumulate, scale, max)
                    }
                })*
                _ => unreachable!("tile rows are 1..=MR"),
            }
        };
    }
    rows!(1 2 3 4 5 6 7 8 9 10 11 12)
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn micro<S: Simd, const R: usize, const SCALED: bool>(
    kdim: usize,
    a: *const f32,
    a_rs: usize,
    a_ks: usize,
    b: *const f32,
    c: *mut f32,
    accumulate: bool,
    scale: S::V,
    max: &mut [S::V; 2],
) {
    let ld = 2 * S::W;
    // SAFETY: as `tile`'s caller promised.
    unsafe {
        let mut acc = [[S::splat(0.0); 2]; R];
        if accumulate {
            for (r, row) in acc.iter_mut().enumerate() {
                *row = [S::load(c.add(r * ld)), S::load(c.add(r * ld + S::W))];
            }
        }
        let (mut pa, mut pb) = (a, b);
        for _ in 0..kdim {
            let (b0, b1) = (S::load(pb), S::load(pb.add(S::W)));
            for (r, row) in acc.iter_mut().enumerate() {
                let av = S::splat(*pa.add(r * a_rs));
                row[0] = S::fma(av, b0, row[0]);
                row[1] = S::fma(av, b1, row[1]);
            }
            pa = pa.add(a_ks);
            pb = pb.add(ld);
        }
        for (r, row) in acc.iter().enumerate() {
            let row = if SCALED {
                let row = [S::mul(row[0], scale), S::mul(row[1], scale)];
                max[0] = S::max(max[0], row[0]);
                max[1] = S::max(max[1], row[1]);
                row
            } else {
                *row
            };
            S::store(c.add(r * ld), row[0]);
            S::store(c.add(r * ld + S::W), row[1]);
        }
    }
}

/// Rows under which a [`tile`] (two vectors a row) holds too few independent FMA chains to
/// cover the FMA latency on two pipes (4 cycles × 2: 8 accumulators).
const MIN_TILE_ROWS: usize = 4;

/// Rows of the next tile of a loop over `left` more rows in tiles of up to `mr`: `mr`, except
/// where the last tile would have fewer than [`MIN_TILE_ROWS`]; then the last two share their
/// rows. BERT's 128 keys in AVX2's 6-row tiles end 4 + 4 instead of 6 + 2.
fn tile_rows(left: usize, mr: usize) -> usize {
    if mr > MIN_TILE_ROWS && left > mr && left - mr < MIN_TILE_ROWS {
        left.div_ceil(2)
    } else {
        left.min(mr)
    }
}

/// Queries in the lanes: see the module doc.
///
/// # Safety
/// As `attention`'s caller promised; `scratch` holds `2·D·QB + KT·QB` f32.
#[inline(always)]
unsafe fn lanes_path<S: Simd>(t: &Task, scratch: &mut [f32]) {
    let c = t.c;
    let (qb, w, d, kld) = (2 * S::W, S::W, c.head_dim, t.kv_ld());
    let (qt, rest) = scratch.split_at_mut(d * qb);
    let (ot, rest) = rest.split_at_mut(d * qb);
    let st = &mut rest[..KT * qb];
    // Qᵀ [D, QB]; the lanes past the block's rows stay 0 and are never stored. Moved by the
    // matmul's 4 x 4 transposes: element by element, the compiler's AVX-512 code scattered
    // each row into the lanes (`vscatterqps`, slow on AMD: with the gathers of the store at
    // the end, a fifth of the kernel's samples in BERT-base, AMD EPYC Zen 5).
    if t.rows < qb {
        qt.fill(0.0);
    }
    // SAFETY: rows t0..t0 + rows < T, each D floats q_ld apart; Qᵀ holds D rows of QB.
    unsafe {
        crate::gemm::transpose(
            qt.as_mut_ptr(),
            qb,
            c.q.add(t.qrow(t.t0)),
            t.q_ld(),
            t.rows,
            d,
        )
    };
    ot.fill(0.0);
    let (qt, ot, st) = (qt.as_ptr(), ot.as_mut_ptr(), st.as_mut_ptr());
    // SAFETY: as the caller promised; every index below is within the scratch or the shapes.
    unsafe {
        let kv0 = t.kv0();
        let (k0, v0) = (c.k.add(kv0), c.v.add(kv0));
        let neg = S::splat(f32::NEG_INFINITY);
        let mut m = [neg; 2];
        let mut l = [S::splat(0.0); 2];
        // The block's last query sees the most keys.
        let visible = c.reach(t.t0 + t.rows - 1).min(t.kept);
        let scale = S::splat(c.scale);
        let mut j0 = 0;
        while j0 < visible {
            let n = KT.min(visible - j0);
            // Sᵀ = K_tile · Qᵀ, scaled, and the tile's max per lane.
            let mut mt = [neg; 2];
            let mut j = 0;
            while j < n {
                let r = tile_rows(n - j, S::MR);
                tile::<S, true>(
                    r,
                    d,
                    k0.add((j0 + j) * kld),
                    kld,
                    1,
                    qt,
                    st.add(j * qb),
                    false,
                    scale,
                    &mut mt,
                );
                j += r;
            }
            // Bias and masks, where the call has any: then the max again, over what they leave.
            if !c.bias.is_null() || c.causal != 0 || t.holes {
                mt = [neg; 2];
                for j in 0..n {
                    let row = st.add(j * qb);
                    let ja = j0 + j;
                    if c.masked(t.b, ja) {
                        for u in 0..2 {
                            S::store(row.add(u * w), neg);
                        }
                        continue;
                    }
                    if !c.bias.is_null() {
                        let bias = c.bias.add((t.h * c.seq + t.t0) * c.keys + ja);
                        for lane in 0..t.rows {
                            *row.add(lane) += *bias.add(lane * c.keys);
                        }
                    }
                    if c.causal != 0 {
                        // Lane i sees keys up to S - T + t0 + i.
                        let hidden = (ja + c.seq).saturating_sub(c.keys + t.t0).min(qb);
                        for lane in 0..hidden {
                            *row.add(lane) = f32::NEG_INFINITY;
                        }
                    }
                    for u in 0..2 {
                        mt[u] = S::max(mt[u], S::load(row.add(u * w)));
                    }
                }
            }
            // A higher max rescales what was accumulated. Lanes with no visible key yet
            // keep m = -inf and subtract 0 instead, so exp sees -inf (giving 0), never NaN.
            let mut safe = [neg; 2];
            let mut corr = [neg; 2];
            for u in 0..2 {
                let new = S::max(m[u], mt[u]);
                safe[u] = S::zero_below(new, S::splat(f32::MIN), new);
                corr[u] = S::exp(S::sub(m[u], safe[u]));
                l[u] = S::mul(l[u], corr[u]);
                m[u] = new;
            }
            for e in 0..d {
                let row = ot.add(e * qb);
                for u in 0..2 {
                    S::store(row.add(u * w), S::mul(S::load(row.add(u * w)), corr[u]));
                }
            }
            // P = exp(Sᵀ - m) in place, summed per lane in key order.
            for j in 0..n {
                let row = st.add(j * qb);
                for u in 0..2 {
                    // At most 0 (the max is this tile's or higher) or -inf: no clamps.
                    let p = S::exp_unclamped(S::sub(S::load(row.add(u * w)), safe[u]));
                    S::store(row.add(u * w), p);
                    l[u] = S::add(l[u], p);
                }
            }
            // Oᵀ += V_tileᵀ · P.
            let mut e = 0;
            while e < d {
                let r = S::MR.min(d - e);
                let mut unused = [neg; 2];
                tile::<S, false>(
                    r,
                    n,
                    v0.add(j0 * kld + e),
                    1,
                    kld,
                    st,
                    ot.add(e * qb),
                    true,
                    scale,
                    &mut unused,
                );
                e += r;
            }
            j0 += n;
        }
        // out = Oᵀ / l, or the all-masked fallback (l = 0 only when no key was unmasked: the
        // max contributes exp(0) = 1 otherwise).
        let lsum = st;
        for u in 0..2 {
            S::store(lsum.add(u * w), l[u]);
        }
        // O [QB, D] transposed back by 4 x 4 blocks after the sums in Sᵀ's scratch where it
        // fits, then each row scaled along D (the same products as element by element).
        let o = st.add(qb);
        if qb * d <= KT * qb - qb && (0..t.rows).all(|lane| *lsum.add(lane) > 0.0) {
            crate::gemm::transpose(o, d, ot, qb, d, t.rows);
            for lane in 0..t.rows {
                let orow = c.out.add(t.orow(t.t0 + lane));
                let inv = 1.0 / *lsum.add(lane);
                let iv = S::splat(inv);
                let src = o.add(lane * d);
                let dw = d / w * w;
                let mut e = 0;
                while e < dw {
                    S::store(orow.add(e), S::mul(S::load(src.add(e)), iv));
                    e += w;
                }
                for e in dw..d {
                    *orow.add(e) = *src.add(e) * inv;
                }
            }
            return;
        }
        for lane in 0..t.rows {
            let ti = t.t0 + lane;
            let orow = c.out.add(t.orow(ti));
            let lv = *lsum.add(lane);
            if lv > 0.0 {
                let inv = 1.0 / lv;
                for e in 0..d {
                    *orow.add(e) = *ot.add(e * qb + lane) * inv;
                }
            } else {
                mean_of_values(t, c.reach(ti), orow);
            }
        }
    }
}

/// `[q·k_0, .., q·k_3]` over D, vectors along D then a scalar tail; one accumulator per key,
/// so a key's dot product does not depend on its neighbours.
///
/// # Safety
/// `q` and each key are valid for `d` f32.
#[inline(always)]
unsafe fn dot4<S: Simd>(q: *const f32, keys: [*const f32; 4], d: usize) -> [f32; 4] {
    let dv = d / S::W * S::W;
    // SAFETY: as the caller promised.
    unsafe {
        let mut acc = [S::splat(0.0); 4];
        let mut e = 0;
        while e < dv {
            let x = S::load(q.add(e));
            for u in 0..4 {
                acc[u] = S::fma(x, S::load(keys[u].add(e)), acc[u]);
            }
            e += S::W;
        }
        let mut out = [0.0; 4];
        for u in 0..4 {
            let mut s = S::hsum(acc[u]);
            for e in dv..d {
                s += *q.add(e) * *keys[u].add(e);
            }
            out[u] = s;
        }
        out
    }
}

/// `o[.. G·W] += Σ_j p_j · v_j[.. G·W]` with G vectors of `o` held in registers while the
/// value rows stream past; keys with p_j = 0 (masked) are skipped.
///
/// # Safety
/// `o` valid for G·W f32, `p` for n, `v` for n rows `ldv` apart of G·W f32.
#[inline(always)]
unsafe fn axpy<S: Simd, const G: usize>(
    o: *mut f32,
    p: *const f32,
    v: *const f32,
    ldv: usize,
    n: usize,
) {
    // SAFETY: as the caller promised.
    unsafe {
        let mut acc = [S::splat(0.0); G];
        for (u, a) in acc.iter_mut().enumerate() {
            *a = S::load(o.add(u * S::W));
        }
        for j in 0..n {
            let pj = *p.add(j);
            if pj == 0.0 {
                continue;
            }
            let (wv, vr) = (S::splat(pj), v.add(j * ldv));
            for (u, a) in acc.iter_mut().enumerate() {
                *a = S::fma(wv, S::load(vr.add(u * S::W)), *a);
            }
        }
        for (u, a) in acc.iter().enumerate() {
            S::store(o.add(u * S::W), *a);
        }
    }
}

/// Exp of one f32 through the vector polynomial.
#[inline(always)]
unsafe fn exp1<S: Simd>(x: f32) -> f32 {
    let mut lanes = [0f32; 16];
    // SAFETY: `lanes` holds a vector of up to 16 lanes.
    unsafe {
        S::store(lanes.as_mut_ptr(), S::exp(S::splat(x)));
    }
    lanes[0]
}

/// One query at a time: see the module doc.
///
/// # Safety
/// As the caller of `attention` promised; `scratch` holds `KT + D` (rounded up) f32.
#[inline(always)]
unsafe fn rows_path<S: Simd>(t: &Task, scratch: &mut [f32]) {
    const G: usize = 8;
    let c = t.c;
    let (w, d, kld) = (S::W, c.head_dim, t.kv_ld());
    let dv = d / w * w;
    let sc = scratch.as_mut_ptr();
    // SAFETY: as the caller promised; indices are within the scratch or the shapes.
    unsafe {
        let kv0 = t.kv0();
        let (k0, v0) = (c.k.add(kv0), c.v.add(kv0));
        for ti in t.t0..t.t0 + t.rows {
            let q = c.q.add(t.qrow(ti));
            let o = c.out.add(t.orow(ti));
            let reach = c.reach(ti);
            let visible = reach.min(t.kept);
            std::slice::from_raw_parts_mut(o, d).fill(0.0);
            let (mut m, mut l) = (f32::NEG_INFINITY, 0f32);
            let mut j0 = 0;
            while j0 < visible {
                let n = KT.min(visible - j0);
                let mut mt = f32::NEG_INFINITY;
                // Four keys at a time; the last group repeats its last key.
                for j in (0..n).step_by(4) {
                    let keys = [0, 1, 2, 3].map(|u| k0.add((j0 + (j + u).min(n - 1)) * kld));
                    let x = dot4::<S>(q, keys, d);
                    for (u, &x) in x.iter().enumerate().take(n - j) {
                        let s = score(t, x, ti, j0 + j + u);
                        *sc.add(j + u) = s;
                        mt = mt.max(s);
                    }
                }
                if mt == f32::NEG_INFINITY {
                    j0 += n;
                    continue;
                }
                let new = m.max(mt);
                if new > m {
                    // From m = -inf: by 0, of 0.
                    let corr = exp1::<S>(m - new);
                    std::slice::from_raw_parts_mut(o, d)
                        .iter_mut()
                        .for_each(|x| *x *= corr);
                    l *= corr;
                    m = new;
                }
                // p = exp(score - m) in place over whole vectors (the padding is -inf: 0).
                let nv = n.next_multiple_of(w);
                for j in n..nv {
                    *sc.add(j) = f32::NEG_INFINITY;
                }
                let (mv, mut acc) = (S::splat(m), S::splat(0.0));
                for j in (0..nv).step_by(w) {
                    let p = S::exp(S::sub(S::load(sc.add(j)), mv));
                    S::store(sc.add(j), p);
                    acc = S::add(acc, p);
                }
                l += S::hsum(acc);
                // out += p_j · v_j, G vectors of out at a time, then the scalar tail.
                let vt = v0.add(j0 * kld);
                let mut e = 0;
                while e < dv {
                    let g = G.min((dv - e) / w);
                    macro_rules! groups {
                        ($($g:literal)*) => {
                            match g {
                                $($g => axpy::<S, $g>(o.add(e), sc, vt.add(e), kld, n),)*
                                _ => unreachable!("1..=G vectors"),
                            }
                        };
                    }
                    groups!(1 2 3 4 5 6 7 8);
                    e += g * w;
                }
                for e in dv..d {
                    let mut x = *o.add(e);
                    for j in 0..n {
                        x += *sc.add(j) * *vt.add(j * kld + e);
                    }
                    *o.add(e) = x;
                }
                j0 += n;
            }
            if l > 0.0 {
                let inv = 1.0 / l;
                std::slice::from_raw_parts_mut(o, d)
                    .iter_mut()
                    .for_each(|x| *x *= inv);
            } else {
                mean_of_values(t, reach, o);
            }
        }
    }
}
