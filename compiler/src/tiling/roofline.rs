//! The machine profile lives in the runtime (`cranformer_runtime::machine`), which resolves
//! every matmul's tiling on the machine that runs; the compiler reads it for its reports.

pub use cranformer_runtime::machine::*;
