//! Element types, symbolic shapes and the binding of symbolic dims to a call's input shapes:
//! the one type system of graphs (compiler), generated entry points (runtime executor) and
//! the reports that count work per call (`cranformer bench`).
//!
//! A shape's dims are constants or sizes known only when a model runs (B batch, T new tokens,
//! P cached tokens, S encoder tokens). [`bind`] reads their values from the caller's tensors
//! and checks every input against its signature, so every caller judges a call alike.

use crate::Tensor;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Element type of a tensor. Activations are `F32`, token ids and masks `I64`; `I8`, `BF16`
/// and `F16` are weight storage types (quantised or half-precision checkpoints) that no
/// kernel computes with yet: every consumer must reject them rather than read them as f32.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum DType {
    F32,
    I64,
    I8,
    BF16,
    F16,
}

impl DType {
    /// Bytes per element.
    pub const fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::I64 => 8,
            DType::I8 => 1,
            DType::BF16 | DType::F16 => 2,
        }
    }

    /// Lower-case name as printed in graphs (`f32[B, T, 768]`).
    pub const fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::I64 => "i64",
            DType::I8 => "i8",
            DType::BF16 => "bf16",
            DType::F16 => "f16",
        }
    }

    /// The type of a safetensors header's `dtype` (`"F32"`, `"BF16"`, ...), if it is one of these.
    pub fn from_safetensors(name: &str) -> Option<DType> {
        Some(match name {
            "F32" => DType::F32,
            "I64" => DType::I64,
            "I8" => DType::I8,
            "BF16" => DType::BF16,
            "F16" => DType::F16,
            _ => return None,
        })
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One dimension of a shape: a constant or a size known only when the model runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
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
    /// The dim's value for this call; `None` if P + T overflows (sizes read from untrusted
    /// metadata: see [`TensorType::checked_bytes`]).
    pub fn try_eval(self, d: &Dims) -> Option<usize> {
        match self {
            Dim::Total => d.past.checked_add(d.seq),
            _ => Some(self.eval(d)),
        }
    }

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

/// Element type and symbolic shape of a tensor.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TensorType {
    pub dtype: DType,
    pub shape: Shape,
}

impl TensorType {
    pub fn new(dtype: DType, shape: &[Dim]) -> TensorType {
        TensorType {
            dtype,
            shape: shape.to_vec(),
        }
    }
    pub fn f32(shape: &[Dim]) -> TensorType {
        TensorType::new(DType::F32, shape)
    }
    pub fn i64(shape: &[Dim]) -> TensorType {
        TensorType::new(DType::I64, shape)
    }
    /// The shape with every dim evaluated.
    pub fn concrete(&self, d: &Dims) -> Vec<usize> {
        self.shape.iter().map(|x| x.eval(d)).collect()
    }
    pub fn numel(&self, d: &Dims) -> usize {
        self.shape.iter().map(|x| x.eval(d)).product()
    }
    pub fn bytes(&self, d: &Dims) -> usize {
        self.numel(d) * self.dtype.size()
    }
    /// [`TensorType::numel`], or `None` if it overflows.
    pub fn checked_numel(&self, d: &Dims) -> Option<usize> {
        self.shape
            .iter()
            .try_fold(1usize, |acc, x| acc.checked_mul(x.try_eval(d)?))
    }
    /// [`TensorType::bytes`], or `None` if it overflows.
    pub fn checked_bytes(&self, d: &Dims) -> Option<usize> {
        self.checked_numel(d)?.checked_mul(self.dtype.size())
    }
    /// The last dim, which every op here keeps constant (channels).
    pub fn last(&self) -> Option<Dim> {
        self.shape.last().copied()
    }
}

impl fmt::Display for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dims: Vec<String> = self.shape.iter().map(|d| d.to_string()).collect();
        write!(f, "{}[{}]", self.dtype, dims.join(", "))
    }
}

/// A caller's tensors do not fit an entry point's signature (a user error).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("input {input}: {message}")]
pub struct BindError {
    /// The input at fault (`attention_mask` when the cache length is inconsistent).
    pub input: String,
    pub message: String,
}

/// Binds the symbolic dims of entry point `entry`, whose inputs are `sigs` (name and type),
/// from the shapes of the caller's tensors `given`, checking every one: each input is present
/// with its dtype and rank, its constant dims match, a symbolic dim has one value wherever it
/// appears, and nothing is given that the entry does not take. Dims no input shows default to
/// B = 1, T = 0, S = 0; P follows from P and P + T ([`resolve_past`]).
pub fn bind(
    entry: &str,
    sigs: &[(&str, &TensorType)],
    given: &[(&str, &Tensor)],
) -> Result<Dims, BindError> {
    let err = |name: &str, message: String| BindError {
        input: name.into(),
        message,
    };
    // Batch, Seq, Past, Total, EncSeq.
    let mut vals: [Option<usize>; 5] = [None; 5];
    for &(name, ty) in sigs {
        let Some(&(_, t)) = given.iter().find(|(n, _)| *n == name) else {
            return Err(err(
                name,
                format!("missing; entry point {entry} needs {ty}"),
            ));
        };
        let shape = t.shape();
        if t.dtype() != ty.dtype {
            return Err(err(
                name,
                format!("expected {} elements, got {}", ty.dtype, t.dtype()),
            ));
        }
        if shape.len() != ty.shape.len() {
            return Err(err(name, format!("expected shape {ty}, got {shape:?}")));
        }
        for (&d, &n) in ty.shape.iter().zip(shape) {
            let slot = match d {
                Dim::Const(c) if c == n => continue,
                Dim::Const(_) => {
                    return Err(err(name, format!("expected shape {ty}, got {shape:?}")))
                }
                Dim::Batch => 0,
                Dim::Seq => 1,
                Dim::Past => 2,
                Dim::Total => 3,
                Dim::EncSeq => 4,
            };
            match vals[slot] {
                Some(prev) if prev != n => {
                    return Err(err(
                        name,
                        format!(
                            "dimension {d} is {n} here but {prev} in an earlier input \
                             (expected {ty}, got {shape:?})"
                        ),
                    ))
                }
                _ => vals[slot] = Some(n),
            }
        }
    }
    for (name, _) in given {
        if !sigs.iter().any(|(n, _)| n == name) {
            let known: Vec<&str> = sigs.iter().map(|(n, _)| *n).collect();
            return Err(err(
                name,
                format!(
                    "entry point {entry} has no such input (it takes {})",
                    known.join(", ")
                ),
            ));
        }
    }
    let seq = vals[1].unwrap_or(0);
    let past = resolve_past(seq, vals[2], vals[3]).map_err(|m| err("attention_mask", m))?;
    Ok(Dims {
        batch: vals[0].unwrap_or(1),
        seq,
        past,
        enc_seq: vals[4].unwrap_or(0),
    })
}

/// A KV cache standing for a call's `past_*` inputs: `batch` rows of `past` positions of
/// `width` floats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheShape {
    pub batch: usize,
    pub past: usize,
    pub width: usize,
}

/// [`bind`] for a call whose inputs named by `is_cache` are held in a KV cache of `cache`'s
/// shape rather than given: the given inputs are bound as by [`bind`], P is the cache's, and
/// the cache must fit every cache input's signature (`[B, P, width]`).
pub fn bind_cached(
    entry: &str,
    sigs: &[(&str, &TensorType)],
    given: &[(&str, &Tensor)],
    is_cache: &dyn Fn(&str) -> bool,
    cache: CacheShape,
) -> Result<Dims, BindError> {
    let (cached, rest): (Vec<_>, Vec<_>) = sigs.iter().partition(|(n, _)| is_cache(n));
    let mut d = bind(entry, &rest, given)?;
    let err = |name: &str, message: String| BindError {
        input: name.into(),
        message,
    };
    let has = |dim: Dim| rest.iter().any(|(_, ty)| ty.shape.contains(&dim));
    if has(Dim::Total) {
        // `bind` read P + T from the mask.
        resolve_past(d.seq, Some(cache.past), Some(d.past + d.seq))
            .map_err(|m| err("attention_mask", m))?;
    }
    d.past = cache.past;
    if has(Dim::Batch) && d.batch != cache.batch {
        return Err(err(
            cached.first().map_or("past_key.0", |(n, _)| *n),
            format!(
                "the KV cache holds {} rows, the other inputs {}",
                cache.batch, d.batch
            ),
        ));
    }
    d.batch = cache.batch;
    for (name, ty) in cached {
        let fits = ty.dtype == DType::F32
            && ty.shape[..] == [Dim::Batch, Dim::Past, Dim::Const(cache.width)];
        if !fits {
            return Err(err(
                name,
                format!(
                    "expected {ty}, the KV cache holds f32[{}, {}, {}]",
                    cache.batch, cache.past, cache.width
                ),
            ));
        }
    }
    Ok(d)
}

/// Cached tokens P from what the inputs showed: P itself (the past keys), P + T (the
/// attention mask), both (which must agree) or neither (no cache).
pub fn resolve_past(
    seq: usize,
    past: Option<usize>,
    total: Option<usize>,
) -> Result<usize, String> {
    match (past, total) {
        (Some(p), Some(t)) if p.checked_add(seq) != Some(t) => Err(format!(
            "covers {t} positions, expected past {p} + new {seq}"
        )),
        (Some(p), _) => Ok(p),
        (None, Some(t)) if t < seq => Err(format!(
            "covers {t} positions, fewer than the {seq} new tokens"
        )),
        (None, Some(t)) => Ok(t - seq),
        (None, None) => Ok(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sigs() -> Vec<(&'static str, TensorType)> {
        vec![
            ("ids", TensorType::i64(&[Dim::Batch, Dim::Seq])),
            ("mask", TensorType::i64(&[Dim::Batch, Dim::Total])),
            (
                "past",
                TensorType::f32(&[Dim::Batch, Dim::Past, Dim::Const(4)]),
            ),
        ]
    }

    fn call(given: &[(&str, &Tensor)]) -> Result<Dims, BindError> {
        let s = sigs();
        let s: Vec<(&str, &TensorType)> = s.iter().map(|(n, t)| (*n, t)).collect();
        bind("step", &s, given)
    }

    #[test]
    fn binds_every_dim_from_the_inputs() {
        let ids = Tensor::i64(vec![2, 3], vec![0; 6]);
        let mask = Tensor::i64(vec![2, 8], vec![1; 16]);
        let past = Tensor::f32(vec![2, 5, 4], vec![0.0; 40]);
        let d = call(&[("ids", &ids), ("mask", &mask), ("past", &past)]).unwrap();
        assert_eq!(
            d,
            Dims {
                batch: 2,
                seq: 3,
                past: 5,
                enc_seq: 0
            }
        );
    }

    #[test]
    fn names_the_input_and_what_was_expected() {
        let ids = Tensor::i64(vec![2, 3], vec![0; 6]);
        let mask = Tensor::i64(vec![2, 8], vec![1; 16]);
        let past = Tensor::f32(vec![2, 5, 4], vec![0.0; 40]);
        let wide = Tensor::f32(vec![2, 5, 3], vec![0.0; 30]);
        let floats = Tensor::f32(vec![2, 3], vec![0.0; 6]);
        let short = Tensor::i64(vec![2, 7], vec![1; 14]);
        let cases: Vec<(Vec<(&str, &Tensor)>, &str)> = vec![
            (
                vec![("ids", &ids), ("mask", &mask)],
                "input past: missing; entry point step needs f32[B, P, 4]",
            ),
            (
                vec![("ids", &floats), ("mask", &mask), ("past", &past)],
                "input ids: expected i64 elements, got f32",
            ),
            (
                vec![("ids", &ids), ("mask", &mask), ("past", &wide)],
                "input past: expected shape f32[B, P, 4], got [2, 5, 3]",
            ),
            (
                vec![("ids", &ids), ("mask", &short), ("past", &past)],
                "input attention_mask: covers 7 positions, expected past 5 + new 3",
            ),
            (
                vec![("ids", &ids), ("mask", &mask), ("past", &past), ("x", &ids)],
                "input x: entry point step has no such input (it takes ids, mask, past)",
            ),
        ];
        for (given, want) in cases {
            assert_eq!(call(&given).unwrap_err().to_string(), want);
        }
    }

    #[test]
    fn dtype_sizes_and_names() {
        for (d, size, name, st) in [
            (DType::F32, 4, "f32", "F32"),
            (DType::I64, 8, "i64", "I64"),
            (DType::I8, 1, "i8", "I8"),
            (DType::BF16, 2, "bf16", "BF16"),
            (DType::F16, 2, "f16", "F16"),
        ] {
            assert_eq!((d.size(), d.name()), (size, name));
            assert_eq!(DType::from_safetensors(st), Some(d));
        }
        assert_eq!(DType::from_safetensors("F64"), None);
    }
}
