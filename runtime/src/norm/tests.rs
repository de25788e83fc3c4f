//! The kernel against a plain f64 reference (the interpreter's loops) on odd channel counts
//! and repeated added rows, for every ISA this CPU runs; 1 against 2 threads and every ISA
//! against the others bit for bit.

use super::*;

use crate::testing::{isas, worst_abs_diff, Rng};

#[derive(Clone, Copy, Debug)]
struct Case {
    kind: NormKind,
    rows: usize,
    c: usize,
    /// Rows of the added tensor, or None for a plain norm.
    rows_b: Option<usize>,
    eps: f32,
    /// Values around this offset: large offsets with small spreads are ill-conditioned.
    offset: f32,
    spread: f32,
}

struct Data {
    x: Vec<f32>,
    b: Vec<f32>,
    gamma: Vec<f32>,
    beta: Vec<f32>,
}

impl Case {
    fn data(&self) -> Data {
        let mut r = Rng(self.rows as u64 * 7919 + self.c as u64 * 31 + 1);
        let x = r
            .vec(self.rows * self.c)
            .iter()
            .map(|v| self.offset + self.spread * v)
            .collect();
        let b = r
            .vec(self.rows_b.unwrap_or(0) * self.c)
            .iter()
            .map(|v| self.spread * v)
            .collect();
        let gamma = r.vec(self.c).iter().map(|v| 1.0 + 0.5 * v).collect();
        let beta = r.vec(self.c);
        Data { x, b, gamma, beta }
    }

    fn call(&self, d: &Data, out: &mut [f32], isa: Isa, threads: u32) -> NormCall {
        NormCall {
            x: d.x.as_ptr(),
            add: match self.rows_b {
                Some(_) => d.b.as_ptr(),
                None => std::ptr::null(),
            },
            gamma: match self.kind {
                NormKind::L2 => std::ptr::null(),
                _ => d.gamma.as_ptr(),
            },
            beta: match self.kind {
                NormKind::Layer => d.beta.as_ptr(),
                _ => std::ptr::null(),
            },
            out: out.as_mut_ptr(),
            rows: self.rows,
            rows_b: self.rows_b.unwrap_or(0),
            channels: self.c,
            eps: self.eps,
            kind: self.kind.code(),
            isa: isa as u32,
            threads,
        }
    }

    /// The interpreter's loops: the add rounded to f32, statistics in f64.
    fn reference(&self, d: &Data) -> Vec<f32> {
        let c = self.c;
        let mut out = d.x.clone();
        if let Some(rb) = self.rows_b {
            for (r, row) in out.chunks_exact_mut(c).enumerate() {
                let b = &d.b[r % rb * c..][..c];
                row.iter_mut().zip(b).for_each(|(x, y)| *x += y);
            }
        }
        for row in out.chunks_exact_mut(c) {
            let v: Vec<f64> = row.iter().map(|&x| x as f64).collect();
            match self.kind {
                NormKind::Layer => {
                    let mean = v.iter().sum::<f64>() / c as f64;
                    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / c as f64;
                    let inv = 1.0 / (var + self.eps as f64).sqrt();
                    for (j, o) in row.iter_mut().enumerate() {
                        *o = ((v[j] - mean) * inv) as f32 * d.gamma[j] + d.beta[j];
                    }
                }
                NormKind::Rms => {
                    let ms = v.iter().map(|x| x * x).sum::<f64>() / c as f64;
                    let inv = 1.0 / (ms + self.eps as f64).sqrt();
                    for (j, o) in row.iter_mut().enumerate() {
                        *o = (v[j] * inv) as f32 * d.gamma[j];
                    }
                }
                NormKind::L2 => {
                    let nrm = v.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
                    for (j, o) in row.iter_mut().enumerate() {
                        *o = (v[j] / nrm) as f32;
                    }
                }
            }
        }
        out
    }
}

fn run(case: Case, d: &Data, isa: Isa, threads: u32) -> Vec<f32> {
    let mut out = vec![f32::NAN; case.rows * case.c];
    let call = case.call(d, &mut out, isa, threads);
    // SAFETY: the buffers hold the shapes the call names.
    unsafe { norm(&call) }.expect("a valid call");
    out
}

/// Worst |kernel - reference| over the outputs must stay within `tol`; 1 and 2 threads and
/// every ISA give the same bits.
fn check(case: Case, tol: f32) {
    let d = case.data();
    let want = case.reference(&d);
    let mut first: Option<(Isa, Vec<f32>)> = None;
    for isa in isas() {
        let one = run(case, &d, isa, 1);
        let (worst, at) = worst_abs_diff(&one, &want);
        assert!(
            worst <= tol,
            "{isa:?} {case:?}: worst |diff| {worst:e} at {at}: kernel {} reference {}",
            one[at],
            want[at]
        );
        let two = run(case, &d, isa, 2);
        assert!(
            one.iter()
                .zip(&two)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{isa:?} {case:?}: 1 and 2 threads differ"
        );
        match &first {
            None => first = Some((isa, one)),
            Some((i0, o0)) => {
                let diff = o0
                    .iter()
                    .zip(&one)
                    .position(|(a, b)| a.to_bits() != b.to_bits());
                assert!(
                    diff.is_none(),
                    "{case:?}: {i0:?} and {isa:?} differ at {diff:?}"
                );
            }
        }
    }
}

/// Outputs are of order 1 to 4 (gamma in [0.5, 1.5), beta in [-1, 1)), where an f32 ulp is
/// at most 4.8e-7: a few ulps. (This CPU, every ISA: 9.5e-7 worst.)
const TOL: f32 = 4e-6;

/// Channel counts below, at and around the 16-lane groups, and real hidden sizes.
const CHANNELS: [usize; 9] = [1, 3, 8, 16, 20, 33, 100, 384, 768];

fn case(kind: NormKind, rows: usize, c: usize, rows_b: Option<usize>) -> Case {
    Case {
        kind,
        rows,
        c,
        rows_b,
        eps: 1e-5,
        offset: 0.0,
        spread: 2.0,
    }
}

#[test]
fn layer_norm_plain_and_added() {
    for c in CHANNELS {
        // 70 rows of 768 make several tasks; a row of b per row of x, one row repeated,
        // and a few repeated (positions over a batch).
        for rows_b in [None, Some(70), Some(1), Some(7)] {
            check(case(NormKind::Layer, 70, c, rows_b), TOL);
        }
    }
}

#[test]
fn rms_norm_plain_and_added() {
    for c in CHANNELS {
        for rows_b in [None, Some(70), Some(1), Some(7)] {
            check(
                Case {
                    eps: 1e-6,
                    ..case(NormKind::Rms, 70, c, rows_b)
                },
                TOL,
            );
        }
    }
}

#[test]
fn l2_normalize() {
    for c in CHANNELS {
        for rows_b in [None, Some(3)] {
            // Outputs below 1.
            check(case(NormKind::L2, 9, c, rows_b), TOL / 4.0);
        }
    }
    // A zero row divides by 1e-12, not by 0.
    let z = Case {
        spread: 0.0,
        ..case(NormKind::L2, 2, 20, None)
    };
    check(z, 0.0);
}

#[test]
fn layer_norm_nearly_constant_rows() {
    // Values 1000 ± 0.01 with a tiny eps: the mean must be exact to well below an ulp of x
    // (see the module doc), or the outputs, of order 1, are off by whole percents.
    for c in [20, 33, 384, 768] {
        check(
            Case {
                eps: 1e-12,
                offset: 1000.0,
                spread: 0.01,
                ..case(NormKind::Layer, 5, c, None)
            },
            TOL,
        );
    }
}

#[test]
fn many_rows_and_one() {
    for (rows, c) in [(1, 768), (2, 5), (512, 384), (1000, 33)] {
        check(case(NormKind::Layer, rows, c, Some(rows)), TOL);
        check(case(NormKind::Rms, rows, c, Some(1)), TOL);
    }
}

#[test]
fn refuses_bad_calls() {
    let c = case(NormKind::Layer, 4, 8, Some(1));
    let d = c.data();
    let mut out = vec![0f32; 4 * 8];
    let call = c.call(&d, &mut out, Isa::Portable, 1);
    let bad = [
        (NormCall { kind: 9, ..call }, NormError::Kind(9)),
        (
            NormCall { rows_b: 0, ..call },
            NormError::NoAddRows { rows: 4 },
        ),
        (
            NormCall {
                beta: std::ptr::null(),
                ..call
            },
            NormError::Missing {
                kind: NormKind::Layer,
                operand: "beta",
            },
        ),
        (
            NormCall {
                kind: NormKind::Rms.code(),
                gamma: std::ptr::null(),
                ..call
            },
            NormError::Missing {
                kind: NormKind::Rms,
                operand: "gamma",
            },
        ),
    ];
    for (call, want) in bad {
        // SAFETY: refused before any pointer is read.
        assert_eq!(unsafe { norm(&call) }.unwrap_err(), want);
    }
}

/// While recording, the entry point generated code calls records the call as the graph op it
/// computes, with the ISA and threads it ran with: what `bench --report` shows.
#[test]
fn the_entry_point_records_what_ran() {
    let _one = crate::gemm::profile::TEST_LOCK
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let case = Case {
        kind: NormKind::Layer,
        rows: 128,
        c: 768,
        rows_b: Some(128),
        eps: 1e-5,
        offset: 0.0,
        spread: 1.0,
    };
    let d = case.data();
    for &isa in &isas() {
        for (kind, add, name) in [
            (NormKind::Layer, true, "add_layer_norm"),
            (NormKind::Rms, false, "rms_norm"),
        ] {
            let mut out = vec![0f32; case.rows * case.c];
            let case = Case {
                kind,
                rows_b: add.then_some(case.rows),
                ..case
            };
            let call = case.call(&d, &mut out, isa, 2);
            crate::gemm::profile::start();
            // SAFETY: the pointers are valid for the call's shapes.
            unsafe { cranformer_norm(&call) };
            let got = crate::gemm::profile::stop().kernels;
            // What the call resolves to: an ISA held back by CRANFORMER_ISA falls back.
            let want = (name, call.resolved_isa(), 2.min(crate::threads::threads()));
            assert!(
                got.iter()
                    .any(|k| (k.kernel, k.isa, k.threads) == want && k.seconds > 0.0),
                "want {want:?}, recorded {got:?}"
            );
        }
    }
}
