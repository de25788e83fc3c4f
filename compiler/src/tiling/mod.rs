//! Roofline model and tile choice for every matmul: `roofline` describes a machine (peak
//! FLOP/s per vector width and thread count, bandwidth of each memory level), `choose`
//! enumerates the candidate tilings of one `[M, K] · [K, N]` product, predicts each one's time
//! from the bytes it moves at each level and picks the fastest, with a sentence saying why.
//! The choice reaches the runtime through `GemmCall` (`codegen/matmul.rs`).

pub mod choose;
pub mod report;
pub mod roofline;

pub use choose::{choose, choose_problem, Candidate, Choice, Kernel, Problem};
pub use roofline::MachineProfile;

/// The tilings one compiled matmul carries: M is a run-time value (B·T), so the generated
/// code picks `small` when `M <= small_m` (decode steps) and `large` otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tiling {
    pub small_m: usize,
    pub small: Choice,
    pub large: Choice,
}

impl Tiling {
    /// Everything left to the runtime (kc, mc, isa and threads 0).
    pub const AUTO: Tiling = Tiling {
        small_m: 0,
        small: Choice::AUTO,
        large: Choice::AUTO,
    };

    /// The tilings of a `[M, kdim] · [kdim, n]` matmul on `profile`: `large` for `m_hint`
    /// rows, `small` for one row.
    pub fn plan(profile: &MachineProfile, kdim: usize, n: usize, m_hint: usize) -> Tiling {
        let small = choose(profile, 1, n, kdim).choice;
        let large = choose(profile, m_hint.max(2), n, kdim).choice;
        Tiling {
            small_m: SMALL_M,
            small,
            large,
        }
    }
}

/// Rows up to which a matmul runs its decode tiling.
pub const SMALL_M: usize = 4;

/// Rows assumed for a matmul outside decode when the caller gives none: a 128-token sequence.
pub const DEFAULT_M_HINT: usize = 128;
