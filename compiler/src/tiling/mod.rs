//! Roofline model and tile choice for every matmul: `roofline` describes a machine (peak
//! FLOP/s per vector width and thread count, bandwidth of each memory level), `choose`
//! enumerates the candidate tilings of one `[M, K] · [K, N]` product, predicts each one's time
//! from the bytes it moves at each level and picks the fastest, with a sentence saying why.
//!
//! Both live in the runtime, which makes the decision for each matmul on the machine that
//! runs (`cranformer_runtime::gemm::plan::resolve`): the generated code passes only the shape
//! and epilogue. The compiler re-exports them for its reports (`report`), which print the
//! tiling each call actually ran with when they have a run to show.

pub mod choose;
pub mod report;
pub mod roofline;

pub use choose::{choose, choose_problem, Candidate, Choice, Kernel, Problem};
pub use roofline::MachineProfile;

/// Rows assumed for a matmul outside decode when the caller gives none: a 128-token sequence.
pub const DEFAULT_M_HINT: usize = 128;
