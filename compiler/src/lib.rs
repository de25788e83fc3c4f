//! cranformer's compiler: frontends that turn Hugging Face model directories into dataflow
//! graphs, the passes over them, and the reference interpreter that runs them.

pub mod aot;
pub mod codegen;
pub mod frontend;
pub mod graph;
pub mod interp;
pub mod jit;
pub mod model;
pub mod passes;
pub mod tiling;

pub use model::{LoadError, Model};
