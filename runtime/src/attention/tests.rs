//! The kernel against a plain scalar reference (the interpreter's loop, f64 sums) on odd
//! shapes, for every ISA this CPU runs, and 1 against 2 threads bit for bit.

use super::*;

use crate::testing::{isas, worst_abs_diff, Rng};

#[derive(Clone, Copy, Debug)]
struct Case {
    b: usize,
    t: usize,
    s: usize,
    h: usize,
    d: usize,
    kv_rows: usize,
    causal: bool,
    masked: bool,
    biased: bool,
}

struct Data {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    mask: Vec<i64>,
    bias: Vec<f32>,
}

impl Case {
    fn data(&self, seed: u64) -> Data {
        let mut r = Rng(seed * 2654435761 + 1);
        let c = self.h * self.d;
        let q = r.vec(self.b * self.t * c);
        // Larger scores than unit vectors give, so the softmax is far from uniform.
        let k = r
            .vec(self.b * self.kv_rows * c)
            .iter()
            .map(|x| 3.0 * x)
            .collect();
        let v = r.vec(self.b * self.kv_rows * c);
        // Batch row 0 attends everywhere but key 1; row 1 has all keys masked; row 2 is
        // right-padded; the rest random.
        let mask = (0..self.b * self.s)
            .map(|i| {
                let (bi, j) = (i / self.s, i % self.s);
                match bi {
                    0 => (j != 1) as i64,
                    1 => 0,
                    2 => (j < self.s / 2) as i64,
                    _ => (r.next() > -0.5) as i64,
                }
            })
            .collect();
        let bias = r.vec(self.h * self.t * self.s);
        Data {
            q,
            k,
            v,
            mask,
            bias,
        }
    }

    fn call(&self, x: &Data, out: &mut [f32], isa: Isa, threads: u32) -> AttnCall {
        AttnCall {
            q: x.q.as_ptr(),
            k: x.k.as_ptr(),
            v: x.v.as_ptr(),
            mask: if self.masked {
                x.mask.as_ptr()
            } else {
                std::ptr::null()
            },
            bias: if self.biased {
                x.bias.as_ptr()
            } else {
                std::ptr::null()
            },
            out: out.as_mut_ptr(),
            batch: self.b,
            seq: self.t,
            keys: self.s,
            kv_rows: self.kv_rows,
            q_ld: 0,
            kv_ld: 0,
            heads: self.h,
            head_dim: self.d,
            scale: 1.0 / (self.d as f32).sqrt(),
            causal: self.causal as u32,
            isa: isa as u32,
            threads,
        }
    }

    /// The interpreter's loop (`interp::kernels::attention`) with kv_rows, in f64.
    fn reference(&self, x: &Data) -> Vec<f32> {
        let Case { b, t, s, h, d, .. } = *self;
        let c = h * d;
        let scale = 1.0 / (d as f32).sqrt();
        let mut out = vec![0f32; b * t * c];
        for bi in 0..b {
            for hi in 0..h {
                for ti in 0..t {
                    let q = &x.q[(bi * t + ti) * c + hi * d..][..d];
                    let visible = if self.causal {
                        (s - t + ti + 1).min(s)
                    } else {
                        s
                    };
                    let krow = |j: usize| (bi * self.kv_rows + j) * c + hi * d;
                    let mut sc = vec![f64::NEG_INFINITY; visible];
                    for (j, sc) in sc.iter_mut().enumerate() {
                        if self.masked && x.mask[bi * s + j] == 0 {
                            continue;
                        }
                        let dot: f64 = (0..d).map(|e| q[e] as f64 * x.k[krow(j) + e] as f64).sum();
                        let mut y = dot * scale as f64;
                        if self.biased {
                            y += x.bias[(hi * t + ti) * s + j] as f64;
                        }
                        *sc = y;
                    }
                    let o = &mut out[(bi * t + ti) * c + hi * d..][..d];
                    let max = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let p: Vec<f64> = if max == f64::NEG_INFINITY {
                        vec![1.0 / visible as f64; visible]
                    } else {
                        let e: Vec<f64> = sc.iter().map(|x| (x - max).exp()).collect();
                        let sum: f64 = e.iter().sum();
                        e.iter().map(|x| x / sum).collect()
                    };
                    for (e, o) in o.iter_mut().enumerate() {
                        *o = (0..visible)
                            .map(|j| p[j] * x.v[krow(j) + e] as f64)
                            .sum::<f64>() as f32;
                    }
                }
            }
        }
        out
    }
}

fn run(case: Case, x: &Data, isa: Isa, threads: u32) -> Vec<f32> {
    let mut out = vec![f32::NAN; case.b * case.t * case.h * case.d];
    let call = case.call(x, &mut out, isa, threads);
    // SAFETY: the buffers hold the shapes the call names.
    unsafe { attention(&call) }.expect("a valid call");
    out
}

fn check(case: Case) {
    let x = case.data(case.t as u64 * 31 + case.s as u64);
    let want = case.reference(&x);
    for isa in isas() {
        let one = run(case, &x, isa, 1);
        let (worst, at) = worst_abs_diff(&one, &want);
        assert!(
            worst <= 2e-5,
            "{isa:?} {case:?}: worst |diff| {worst:e} at {at}: kernel {} reference {}",
            one[at],
            want[at]
        );
        let two = run(case, &x, isa, 2);
        assert!(
            one.iter()
                .zip(&two)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{isa:?} {case:?}: 1 and 2 threads differ"
        );
    }
}

fn case(b: usize, t: usize, s: usize, h: usize, d: usize) -> Case {
    Case {
        b,
        t,
        s,
        h,
        d,
        kv_rows: s,
        causal: false,
        masked: false,
        biased: false,
    }
}

#[test]
fn plain_shapes() {
    for (t, s, d) in [
        (1, 1, 1),
        (5, 7, 3),
        (33, 33, 64),
        (70, 130, 17),
        (128, 128, 64),
    ] {
        check(case(2, t, s, 3, d));
    }
}

#[test]
fn masks_with_all_masked_and_padded_rows() {
    for (t, s, d) in [(3, 9, 20), (40, 40, 64), (64, 300, 24)] {
        check(Case {
            masked: true,
            ..case(4, t, s, 2, d)
        });
    }
}

#[test]
fn causal_with_fewer_queries_than_keys() {
    for (t, s, d) in [(1, 1030, 64), (3, 20, 7), (37, 37, 33), (50, 200, 64)] {
        check(Case {
            causal: true,
            ..case(2, t, s, 2, d)
        });
        check(Case {
            causal: true,
            masked: true,
            ..case(3, t, s, 2, d)
        });
    }
}

#[test]
fn bias_as_t5() {
    for (t, s, d) in [(1, 9, 64), (19, 19, 64), (40, 141, 31)] {
        check(Case {
            biased: true,
            masked: true,
            ..case(3, t, s, 2, d)
        });
        check(Case {
            biased: true,
            causal: true,
            ..case(1, t, s, 2, d)
        });
    }
}

#[test]
fn kv_cache_rows_apart() {
    for (t, s, d) in [(1, 17, 64), (4, 40, 16), (40, 150, 65)] {
        check(Case {
            kv_rows: s + 13,
            causal: true,
            masked: true,
            ..case(3, t, s, 2, d)
        });
    }
}

/// `rows` rows of `c` floats from `x`, each placed at column `at` of a row of `ld` floats
/// whose other columns are NaN (a read outside the row's own columns shows in the output).
fn spread(x: &[f32], c: usize, ld: usize, at: usize, into: &mut Vec<f32>) {
    let rows = x.len() / c;
    if into.is_empty() {
        into.resize(rows * ld, f32::NAN);
    }
    for (r, row) in x.chunks(c).enumerate() {
        into[r * ld + at..][..c].copy_from_slice(row);
    }
}

/// The same call reading q, k and v with row strides `q_ld` and `kv_ld` from wider buffers
/// (each at the last columns of its own), or all three from one buffer when `fused` allows
/// (a `[B, T, 3C]` QKV projection: T = kv_rows, both strides 3C or more).
fn run_strided(case: Case, x: &Data, isa: Isa, threads: u32, lds: (usize, usize)) -> Vec<f32> {
    let c = case.h * case.d;
    let (q_ld, kv_ld) = lds;
    let fused = q_ld == kv_ld && case.t == case.kv_rows && kv_ld >= 3 * c;
    let (mut qb, mut kb, mut vb) = (vec![], vec![], vec![]);
    let (q, k, v) = if fused {
        spread(&x.q, c, q_ld, 0, &mut qb);
        spread(&x.k, c, q_ld, c, &mut qb);
        spread(&x.v, c, q_ld, 2 * c, &mut qb);
        // SAFETY: columns C and 2C of a row of 3C or more.
        unsafe { (qb.as_ptr(), qb.as_ptr().add(c), qb.as_ptr().add(2 * c)) }
    } else {
        spread(&x.q, c, q_ld, q_ld - c, &mut qb);
        spread(&x.k, c, kv_ld, kv_ld - c, &mut kb);
        spread(&x.v, c, kv_ld, kv_ld - c, &mut vb);
        // SAFETY: the last C columns of the first row.
        unsafe {
            (
                qb.as_ptr().add(q_ld - c),
                kb.as_ptr().add(kv_ld - c),
                vb.as_ptr().add(kv_ld - c),
            )
        }
    };
    let mut out = vec![f32::NAN; case.b * case.t * c];
    let call = AttnCall {
        q,
        k,
        v,
        q_ld,
        kv_ld,
        ..case.call(x, &mut out, isa, threads)
    };
    // SAFETY: the buffers hold the shapes and strides the call names.
    unsafe { attention(&call) }.expect("a valid call");
    out
}

#[test]
fn strided_rows_read_in_place_as_packed_copies() {
    for (base, lds) in [
        // Q, K and V of one fused [B, T, 3C] projection, as BERT's and GPT-2's.
        (case(2, 33, 33, 3, 17), (3 * 51, 3 * 51)),
        (case(1, 1, 1, 1, 1), (3, 3)),
        (case(3, 40, 40, 2, 64), (3 * 128, 3 * 128)),
        // Only q strided (GPT-2's q beside a KV cache's keys), or only k and v.
        (case(2, 5, 7, 3, 3), (9 + 4, 0)),
        (case(2, 70, 130, 2, 33), (0, 2 * 66 + 1)),
        // A few queries (the row path) against many keys.
        (case(3, 1, 300, 2, 65), (3 * 130, 2 * 130)),
        (case(2, 3, 20, 4, 7), (5 * 28, 3 * 28)),
    ] {
        for (causal, masked, kv_extra) in [(false, false, 0), (true, true, 0), (true, true, 11)] {
            let case = Case {
                causal,
                masked,
                biased: masked && !causal,
                kv_rows: base.s + kv_extra,
                ..base
            };
            let x = case.data(case.t as u64 * 7 + case.d as u64);
            let c = case.h * case.d;
            let lds = (
                if lds.0 == 0 { c } else { lds.0 },
                if lds.1 == 0 { c } else { lds.1 },
            );
            for isa in isas() {
                let packed = run(case, &x, isa, 1);
                for threads in [1, 2] {
                    let strided = run_strided(case, &x, isa, threads, lds);
                    let same = packed
                        .iter()
                        .zip(&strided)
                        .position(|(a, b)| a.to_bits() != b.to_bits());
                    if let Some(i) = same {
                        panic!(
                            "{isa:?} {case:?} strides {lds:?}, {threads} threads: element {i} \
                             packed {} strided {}",
                            packed[i], strided[i]
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn refuses_bad_calls() {
    let c = Case {
        kv_rows: 3,
        ..case(2, 4, 5, 1, 8)
    };
    let x = c.data(1);
    let mut out = vec![0f32; 2 * 4 * 8];
    let call = c.call(&x, &mut out, Isa::Portable, 1);
    // SAFETY: refused before any pointer is read.
    let err = unsafe { attention(&call) }.unwrap_err();
    assert_eq!(
        err,
        AttnError::KvRows {
            kv_rows: 3,
            keys: 5
        }
    );
    let c = case(2, 4, 5, 1, 8);
    let x = c.data(1);
    for (q_ld, kv_ld, input, ld) in [(7, 0, "q", 7), (0, 5, "k/v", 5)] {
        let call = AttnCall {
            q_ld,
            kv_ld,
            ..c.call(&x, &mut out, Isa::Portable, 1)
        };
        // SAFETY: refused before any pointer is read.
        let err = unsafe { attention(&call) }.unwrap_err();
        assert_eq!(err, AttnError::Stride { input, ld, c: 8 });
    }
}

/// While recording, the entry point generated code calls records the call with the ISA and
/// threads it ran with: what `bench --report` shows.
#[test]
fn the_entry_point_records_what_ran() {
    let _one = crate::gemm::profile::TEST_LOCK
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let c = case(2, 16, 16, 4, 8);
    let x = c.data(3);
    let mut out = vec![0f32; c.b * c.t * c.h * c.d];
    for &isa in &isas() {
        let call = c.call(&x, &mut out, isa, 2);
        crate::gemm::profile::start();
        // SAFETY: the pointers are valid for the call's shapes.
        unsafe { cranformer_attention(&call) };
        let got = crate::gemm::profile::stop().kernels;
        // What the call resolves to: an ISA held back by CRANFORMER_ISA falls back.
        let want = (
            "attention",
            call.resolved_isa(),
            2.min(crate::threads::threads()),
        );
        assert!(
            got.iter()
                .any(|k| (k.kernel, k.isa, k.threads) == want && k.seconds > 0.0),
            "want {want:?}, recorded {got:?}"
        );
    }
}
