//! What the kernels' unit tests share: deterministic inputs and the ISAs to run.

use crate::gemm::Isa;

/// A small deterministic generator (xorshift), values in [-1, 1).
pub(crate) struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    pub fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.next()).collect()
    }
}

/// Every kernel family this CPU runs, best first ([`crate::gemm::runnable`]).
pub(crate) fn isas() -> Vec<Isa> {
    crate::gemm::runnable()
}

/// The largest `|got - want|` and where it is (a NaN counts as infinite).
pub(crate) fn worst_abs_diff(got: &[f32], want: &[f32]) -> (f32, usize) {
    let (mut worst, mut at) = (0f32, 0);
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        let err = (a - b).abs();
        if err > worst || err.is_nan() {
            (worst, at) = (if err.is_nan() { f32::INFINITY } else { err }, i);
        }
    }
    (worst, at)
}
