//! Host tensors passed between the task front end and an engine: dense, row-major, owned.

use crate::shape::DType;
use std::fmt;

/// Element storage of a [`Tensor`]. Token ids and masks are `I64`, as in Hugging Face.
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

/// A dense row-major tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: TensorData,
}

impl Tensor {
    pub fn f32(shape: Vec<usize>, data: Vec<f32>) -> Tensor {
        assert_eq!(
            shape.iter().product::<usize>(),
            data.len(),
            "tensor shape {shape:?}"
        );
        Tensor {
            shape,
            data: TensorData::F32(data),
        }
    }

    pub fn i64(shape: Vec<usize>, data: Vec<i64>) -> Tensor {
        assert_eq!(
            shape.iter().product::<usize>(),
            data.len(),
            "tensor shape {shape:?}"
        );
        Tensor {
            shape,
            data: TensorData::I64(data),
        }
    }

    /// A `[rows.len(), width]` i64 tensor from equal-length rows.
    pub fn i64_rows(rows: &[Vec<i64>]) -> Tensor {
        let width = rows.first().map_or(0, Vec::len);
        Tensor::i64(vec![rows.len(), width], rows.concat())
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.data {
            TensorData::F32(v) => Some(v),
            TensorData::I64(_) => None,
        }
    }

    pub fn as_i64(&self) -> Option<&[i64]> {
        match &self.data {
            TensorData::I64(v) => Some(v),
            TensorData::F32(_) => None,
        }
    }

    pub fn dtype(&self) -> DType {
        match self.data {
            TensorData::F32(_) => DType::F32,
            TensorData::I64(_) => DType::I64,
        }
    }

    pub fn dtype_name(&self) -> &'static str {
        self.dtype().name()
    }
}

impl fmt::Display for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{:?}", self.dtype_name(), self.shape)
    }
}
