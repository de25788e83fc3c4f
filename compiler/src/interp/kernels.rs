//! Plain f32 kernels of the reference interpreter: single-threaded, no intrinsics, written
//! so that the inner loops stream through contiguous memory and the optimiser can vectorise
//! them. Accuracy over speed where they conflict: norms and softmax sums accumulate in f64.

use crate::graph::Activation;

/// Dot product with eight independent partial sums (keeps the adds pipelined and
/// vectorisable; the summation order is fixed, so results are deterministic).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut tail = 0f32;
    for (x, y) in ar.iter().zip(br) {
        tail += x * y;
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// `out [M, N] = x [M, K] · w [N, K]ᵀ + bias`. Each weight row is read once and dotted with
/// every row of x, which stays in cache.
pub fn linear_out_in(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    k: usize,
    n: usize,
    out: &mut [f32],
) {
    let m = x.len() / k.max(1);
    for j in 0..n {
        let wr = &w[j * k..(j + 1) * k];
        let b = bias.map_or(0.0, |b| b[j]);
        for i in 0..m {
            out[i * n + j] = dot(&x[i * k..(i + 1) * k], wr) + b;
        }
    }
}

/// `out [M, N] = x [M, K] · w [K, N] + bias` (GPT-2's Conv1D layout): rows of w are
/// accumulated into each output row, both contiguous.
pub fn linear_in_out(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    k: usize,
    n: usize,
    out: &mut [f32],
) {
    let m = x.len() / k.max(1);
    for i in 0..m {
        let o = &mut out[i * n..(i + 1) * n];
        match bias {
            Some(b) => o.copy_from_slice(b),
            None => o.fill(0.0),
        }
        for (kk, &a) in x[i * k..(i + 1) * k].iter().enumerate() {
            let wr = &w[kk * n..(kk + 1) * n];
            for (oj, wj) in o.iter_mut().zip(wr) {
                *oj += a * wj;
            }
        }
    }
}

pub fn activation(a: Activation, x: &mut [f32]) {
    match a {
        Activation::Gelu => {
            for v in x {
                let f = *v as f64;
                *v = (0.5 * f * (1.0 + libm::erf(f * std::f64::consts::FRAC_1_SQRT_2))) as f32;
            }
        }
        Activation::GeluTanh => {
            let c = (2.0 / std::f64::consts::PI).sqrt();
            for v in x {
                let f = *v as f64;
                *v = (0.5 * f * (1.0 + (c * (f + 0.044715 * f * f * f)).tanh())) as f32;
            }
        }
        // relu(NaN) is NaN, as in PyTorch (`max(0.0)` would give 0).
        Activation::Relu => x
            .iter_mut()
            .for_each(|v| *v = if *v <= 0.0 { 0.0 } else { *v }),
        Activation::Tanh => x.iter_mut().for_each(|v| *v = v.tanh()),
        Activation::Silu => x.iter_mut().for_each(|v| *v = *v / (1.0 + (-*v).exp())),
        Activation::QuickGelu => x
            .iter_mut()
            .for_each(|v| *v = *v / (1.0 + (-1.702 * *v).exp())),
    }
}

/// LayerNorm over rows of `c` elements.
pub fn layer_norm(x: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) {
    let c = gamma.len();
    for row in x.chunks_exact_mut(c) {
        let mean = row.iter().map(|&v| v as f64).sum::<f64>() / c as f64;
        let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / c as f64;
        let inv = 1.0 / (var + eps as f64).sqrt();
        for ((v, g), b) in row.iter_mut().zip(gamma).zip(beta) {
            *v = ((*v as f64 - mean) * inv) as f32 * g + b;
        }
    }
}

/// T5LayerNorm: x / sqrt(mean(x²) + eps) * gamma.
pub fn rms_norm(x: &mut [f32], gamma: &[f32], eps: f32) {
    let c = gamma.len();
    for row in x.chunks_exact_mut(c) {
        let ms = row.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() / c as f64;
        let inv = 1.0 / (ms + eps as f64).sqrt();
        for (v, g) in row.iter_mut().zip(gamma) {
            *v = (*v as f64 * inv) as f32 * g;
        }
    }
}

/// Shapes of one attention call: B batch, T queries, S keys, H heads, D head size.
pub struct AttnShape {
    pub b: usize,
    pub t: usize,
    pub s: usize,
    pub h: usize,
    pub d: usize,
}

/// Softmax attention per batch row and head. Masked keys (mask 0, or after the query under
/// `causal`) get no weight, which is what adding float32's minimum to their scores gives in
/// Hugging Face. A query whose keys are all masked gets what that gives there too: equal
/// scores, a uniform softmax, so the mean of V over the keys it may see.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    mask: Option<&[i64]>,
    bias: Option<&[f32]>,
    sh: &AttnShape,
    scale: f32,
    causal: bool,
    out: &mut [f32],
) {
    let AttnShape { b, t, s, h, d } = *sh;
    let c = h * d;
    let mut scores = vec![0f32; s];
    for bi in 0..b {
        for hi in 0..h {
            for ti in 0..t {
                let qrow = &q[(bi * t + ti) * c + hi * d..][..d];
                // Absolute position of this query: keys before it are the cache.
                let visible = if causal { (s - t + ti + 1).min(s) } else { s };
                let mut max = f32::NEG_INFINITY;
                for (j, sc) in scores.iter_mut().enumerate().take(visible) {
                    if mask.is_some_and(|m| m[bi * s + j] == 0) {
                        *sc = f32::NEG_INFINITY;
                        continue;
                    }
                    let mut x = dot(qrow, &k[(bi * s + j) * c + hi * d..][..d]) * scale;
                    if let Some(bias) = bias {
                        x += bias[(hi * t + ti) * s + j];
                    }
                    *sc = x;
                    max = max.max(x);
                }
                let o = &mut out[(bi * t + ti) * c + hi * d..][..d];
                o.fill(0.0);
                if max == f32::NEG_INFINITY {
                    // Summed in key order, then scaled: the JIT does the same, bit for bit.
                    for j in 0..visible {
                        for (oo, vv) in o.iter_mut().zip(&v[(bi * s + j) * c + hi * d..][..d]) {
                            *oo += vv;
                        }
                    }
                    let inv = 1.0 / visible as f32;
                    o.iter_mut().for_each(|x| *x *= inv);
                    continue;
                }
                let mut sum = 0f64;
                for sc in scores.iter_mut().take(visible) {
                    *sc = (*sc - max).exp();
                    sum += *sc as f64;
                }
                let inv = (1.0 / sum) as f32;
                for (j, &p) in scores.iter().enumerate().take(visible) {
                    if p == 0.0 {
                        continue;
                    }
                    let w = p * inv;
                    for (oo, vv) in o.iter_mut().zip(&v[(bi * s + j) * c + hi * d..][..d]) {
                        *oo += w * vv;
                    }
                }
            }
        }
    }
}

/// T5's `_relative_position_bucket`, with its float32 logarithm.
pub fn relative_bucket(
    relative: i64,
    bidirectional: bool,
    buckets: usize,
    max_distance: usize,
) -> usize {
    let mut nb = buckets as i64;
    let mut bucket = 0i64;
    let mut rp = relative;
    if bidirectional {
        nb /= 2;
        if rp > 0 {
            bucket += nb;
        }
        rp = rp.abs();
    } else {
        rp = -rp.min(0);
    }
    let max_exact = nb / 2;
    if rp < max_exact {
        bucket += rp;
    } else {
        let ratio = (rp as f32 / max_exact as f32).ln()
            / (max_distance as f64 / max_exact as f64).ln() as f32;
        let large = max_exact + (ratio * (nb - max_exact) as f32) as i64;
        bucket += large.min(nb - 1);
    }
    bucket as usize
}

/// `[H, T, S]` bias: query i at absolute position `past + i`, key j at j.
#[allow(clippy::too_many_arguments)]
pub fn rel_pos_bias(
    table: &[f32],
    heads: usize,
    t: usize,
    s: usize,
    past: usize,
    bidirectional: bool,
    buckets: usize,
    max_distance: usize,
) -> Vec<f32> {
    let mut out = vec![0f32; heads * t * s];
    for i in 0..t {
        for j in 0..s {
            let rel = j as i64 - (past + i) as i64;
            let bk = relative_bucket(rel, bidirectional, buckets, max_distance);
            for h in 0..heads {
                out[(h * t + i) * s + j] = table[bk * heads + h];
            }
        }
    }
    out
}

/// `a += b` with `b` repeated over `a` (its shape a suffix of `a`'s).
pub fn add_broadcast(a: &mut [f32], b: &[f32]) {
    if b.is_empty() {
        return;
    }
    for chunk in a.chunks_exact_mut(b.len()) {
        chunk.iter_mut().zip(b).for_each(|(x, y)| *x += y);
    }
}
