//! The tile picker lives in the runtime (`cranformer_runtime::gemm::plan`), which resolves
//! every matmul's tiling when it runs; the compiler uses the same model for the predictions
//! of `--report`.

pub use cranformer_runtime::gemm::plan::*;
