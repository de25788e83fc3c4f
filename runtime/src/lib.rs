//! cranformer's runtime: everything a compiled model needs besides its generated code.
//!
//! Linked into the `cranformer` command and into every compiled model executable, so it
//! depends on no part of the compiler.

pub mod abi;
pub mod attention;
pub mod cli;
pub mod compiled;
pub mod config;
pub mod cpu_features;
pub mod engine;
pub mod expf;
pub mod gemm;
pub mod glue;
pub mod kv_cache;
pub mod machine;
pub mod model_info;
pub mod native;
pub mod norm;
pub mod pages;
pub mod sampling;
pub mod shape;
mod simd;
pub mod tasks;
pub mod tensor;
pub mod threads;
pub mod tokenize;
pub mod weights;

pub use config::ModelConfig;
pub use engine::{Engine, EngineError, Outputs};
pub use model_info::ModelInfo;
pub use tensor::{Tensor, TensorData, TensorError};

#[cfg(test)]
mod testing;
