//! Host tensors passed between the task front end and an engine: dense, row-major, owned.
//!
//! A [`Tensor`]'s shape always describes its buffer exactly: the fields are private and every
//! constructor checks that the data holds the product of the dims. Engines hand the buffers to
//! generated code after checking only the shape, so this is what keeps safe code from passing
//! a short buffer.

use crate::shape::DType;
use std::fmt;

/// Element storage of a [`Tensor`]. Token ids and masks are `I64`, as in Hugging Face.
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

impl TensorData {
    pub fn len(&self) -> usize {
        match self {
            TensorData::F32(v) => v.len(),
            TensorData::I64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Data that does not fit the shape it came with.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TensorError {
    /// The shape's element count and the data's length differ.
    #[error("a tensor of shape {shape:?} holds {expected} elements, but {got} were given")]
    Length {
        shape: Vec<usize>,
        expected: usize,
        got: usize,
    },
    /// The dims multiply to more elements than memory can address.
    #[error("tensor shape {shape:?} has more elements than fit in memory")]
    Overflow { shape: Vec<usize> },
}

/// A dense row-major tensor whose data holds exactly as many elements as its shape says.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    data: TensorData,
}

impl Tensor {
    /// A tensor from any data; fails unless the data has exactly the shape's element count.
    pub fn new(shape: Vec<usize>, data: TensorData) -> Result<Tensor, TensorError> {
        let expected = shape
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .ok_or_else(|| TensorError::Overflow {
                shape: shape.clone(),
            })?;
        if data.len() != expected {
            return Err(TensorError::Length {
                got: data.len(),
                shape,
                expected,
            });
        }
        Ok(Tensor { shape, data })
    }

    pub fn try_f32(shape: Vec<usize>, data: Vec<f32>) -> Result<Tensor, TensorError> {
        Tensor::new(shape, TensorData::F32(data))
    }

    pub fn try_i64(shape: Vec<usize>, data: Vec<i64>) -> Result<Tensor, TensorError> {
        Tensor::new(shape, TensorData::I64(data))
    }

    /// For data built from the shape by the caller, so that a mismatch is a bug.
    ///
    /// # Panics
    /// If `data.len()` is not the shape's element count.
    #[track_caller]
    pub fn f32(shape: Vec<usize>, data: Vec<f32>) -> Tensor {
        Tensor::try_f32(shape, data).unwrap_or_else(|e| panic!("{e}"))
    }

    /// For data built from the shape by the caller, so that a mismatch is a bug.
    ///
    /// # Panics
    /// If `data.len()` is not the shape's element count.
    #[track_caller]
    pub fn i64(shape: Vec<usize>, data: Vec<i64>) -> Tensor {
        Tensor::try_i64(shape, data).unwrap_or_else(|e| panic!("{e}"))
    }

    /// A `[rows.len(), width]` i64 tensor from rows of one length.
    ///
    /// # Panics
    /// If the rows differ in length (user input is checked for that before it gets here).
    #[track_caller]
    pub fn i64_rows(rows: &[Vec<i64>]) -> Tensor {
        let width = rows.first().map_or(0, Vec::len);
        Tensor::i64(vec![rows.len(), width], rows.concat())
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn data(&self) -> &TensorData {
        &self.data
    }

    /// The shape and the data, which then need no longer agree.
    pub fn into_parts(self) -> (Vec<usize>, TensorData) {
        (self.shape, self.data)
    }

    pub fn numel(&self) -> usize {
        self.data.len()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constructors_check_the_length() {
        let t = Tensor::try_f32(vec![2, 3], vec![0.0; 6]).unwrap();
        assert_eq!((t.shape(), t.numel()), (&[2, 3][..], 6));
        assert_eq!(
            Tensor::try_f32(vec![2, 3], vec![0.0; 5]).unwrap_err(),
            TensorError::Length {
                shape: vec![2, 3],
                expected: 6,
                got: 5
            }
        );
        let err = Tensor::try_i64(vec![4], vec![0; 8])
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "a tensor of shape [4] holds 4 elements, but 8 were given"
        );
        // Dims whose product wraps around must not pass as a small tensor.
        let big = 1usize << (usize::BITS / 2);
        assert!(matches!(
            Tensor::try_f32(vec![big, big, 2], vec![]),
            Err(TensorError::Overflow { .. })
        ));
        assert_eq!(Tensor::try_i64(vec![0, 7], vec![]).unwrap().numel(), 0);
    }

    #[test]
    #[should_panic(expected = "holds 6 elements, but 5 were given")]
    fn panicking_constructor_panics_on_a_mismatch() {
        Tensor::f32(vec![2, 3], vec![0.0; 5]);
    }

    #[test]
    #[should_panic(expected = "holds 4 elements, but 3 were given")]
    fn ragged_rows_panic() {
        Tensor::i64_rows(&[vec![1, 2], vec![3]]);
    }
}
