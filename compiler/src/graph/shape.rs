//! Tensor types with symbolic dims, and binding those dims to a call's input shapes.

use super::{Graph, GraphError};
use std::fmt;

/// Element type of a graph value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    I64,
}

/// One dimension of a shape: a constant or a size known only when the model runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dim {
    Const(usize),
    /// B: sequences in the batch.
    Batch,
    /// T: tokens fed in this call.
    Seq,
    /// P: tokens already in the KV cache.
    Past,
    /// P + T: keys a decoder step attends to.
    Total,
    /// S: encoder tokens a T5 decoder cross-attends to.
    EncSeq,
}

/// The values of the symbolic dims for one call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dims {
    pub batch: usize,
    pub seq: usize,
    pub past: usize,
    pub enc_seq: usize,
}

impl Dim {
    pub fn eval(self, d: &Dims) -> usize {
        match self {
            Dim::Const(n) => n,
            Dim::Batch => d.batch,
            Dim::Seq => d.seq,
            Dim::Past => d.past,
            Dim::Total => d.past + d.seq,
            Dim::EncSeq => d.enc_seq,
        }
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Const(n) => write!(f, "{n}"),
            Dim::Batch => write!(f, "B"),
            Dim::Seq => write!(f, "T"),
            Dim::Past => write!(f, "P"),
            Dim::Total => write!(f, "P+T"),
            Dim::EncSeq => write!(f, "S"),
        }
    }
}

pub type Shape = Vec<Dim>;

/// Type of a graph value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorType {
    pub dtype: DType,
    pub shape: Shape,
}

impl TensorType {
    pub fn f32(shape: &[Dim]) -> TensorType {
        TensorType {
            dtype: DType::F32,
            shape: shape.to_vec(),
        }
    }
    pub fn i64(shape: &[Dim]) -> TensorType {
        TensorType {
            dtype: DType::I64,
            shape: shape.to_vec(),
        }
    }
    pub fn concrete(&self, d: &Dims) -> Vec<usize> {
        self.shape.iter().map(|x| x.eval(d)).collect()
    }
    /// The last dim, which every op here keeps constant (channels).
    pub fn last(&self) -> Option<Dim> {
        self.shape.last().copied()
    }
}

impl fmt::Display for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dims: Vec<String> = self.shape.iter().map(|d| d.to_string()).collect();
        let dt = match self.dtype {
            DType::F32 => "f32",
            DType::I64 => "i64",
        };
        write!(f, "{dt}[{}]", dims.join(", "))
    }
}

fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::F32 => "f32",
        DType::I64 => "i64",
    }
}

pub(super) fn bind(graph: &Graph, given: &[(&str, &[usize], DType)]) -> Result<Dims, GraphError> {
    let err = |name: &str, message: String| GraphError::Input {
        name: name.into(),
        message,
    };
    let mut batch = None;
    let mut seq = None;
    let mut past = None;
    let mut enc = None;
    let mut total = None;
    for (name, node) in &graph.inputs {
        let ty = &graph.g[*node].ty;
        let Some(&(_, shape, dtype)) = given.iter().find(|(n, _, _)| n == name) else {
            return Err(err(
                name,
                format!("missing; entry point {} needs {}", graph.name, ty),
            ));
        };
        if dtype != ty.dtype {
            return Err(err(
                name,
                format!(
                    "expected {} elements, got {}",
                    dtype_name(ty.dtype),
                    dtype_name(dtype)
                ),
            ));
        }
        if shape.len() != ty.shape.len() {
            return Err(err(name, format!("expected shape {}, got {:?}", ty, shape)));
        }
        for (&d, &n) in ty.shape.iter().zip(shape) {
            let slot = match d {
                Dim::Const(c) => {
                    if c != n {
                        return Err(err(name, format!("expected shape {}, got {:?}", ty, shape)));
                    }
                    continue;
                }
                Dim::Batch => &mut batch,
                Dim::Seq => &mut seq,
                Dim::Past => &mut past,
                Dim::Total => &mut total,
                Dim::EncSeq => &mut enc,
            };
            match *slot {
                None => *slot = Some(n),
                Some(prev) if prev != n => {
                    return Err(err(
                        name,
                        format!("dimension {d} is {n} here but {prev} in an earlier input (expected {ty}, got {shape:?})"),
                    ))
                }
                Some(_) => {}
            }
        }
    }
    for (name, _, _) in given {
        if graph.input_type(name).is_none() {
            let known: Vec<&str> = graph.inputs.iter().map(|(n, _)| n.as_str()).collect();
            return Err(err(
                name,
                format!(
                    "entry point {} has no such input (it takes {})",
                    graph.name,
                    known.join(", ")
                ),
            ));
        }
    }
    let seq = seq.unwrap_or(0);
    let past = cranformer_runtime::native::resolve_past(seq, past, total)
        .map_err(|m| err("attention_mask", m))?;
    Ok(Dims {
        batch: batch.unwrap_or(1),
        seq,
        past,
        enc_seq: enc.unwrap_or(0),
    })
}
