//! The decoder's key/value cache between generation steps: per layer, `[B, P, width]` keys
//! and values, replaced by each step's `present_*` outputs.

use crate::{EngineError, Outputs, Tensor};

pub struct KvCache {
    pub keys: Vec<Tensor>,
    pub values: Vec<Tensor>,
}

impl KvCache {
    /// An empty cache (P = 0) for `layers` layers.
    pub fn new(layers: usize, batch: usize, width: usize) -> KvCache {
        let empty = || Tensor::f32(vec![batch, 0, width], vec![]);
        KvCache {
            keys: (0..layers).map(|_| empty()).collect(),
            values: (0..layers).map(|_| empty()).collect(),
        }
    }

    /// Tokens already cached.
    pub fn len(&self) -> usize {
        self.keys.first().map_or(0, |k| k.shape()[1])
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Named `past_key.{l}` / `past_value.{l}` inputs.
    pub fn inputs(&self) -> Vec<(String, &Tensor)> {
        let mut v = Vec::with_capacity(2 * self.keys.len());
        for (l, (k, val)) in self.keys.iter().zip(&self.values).enumerate() {
            v.push((format!("past_key.{l}"), k));
            v.push((format!("past_value.{l}"), val));
        }
        v
    }

    /// Takes the step's `present_*` outputs as the new cache.
    pub fn update(&mut self, out: &mut Outputs) -> Result<(), EngineError> {
        for l in 0..self.keys.len() {
            for (kind, slot) in [("key", &mut self.keys[l]), ("value", &mut self.values[l])] {
                let name = format!("present_{kind}.{l}");
                *slot = out.remove(&name).ok_or_else(|| EngineError::Internal {
                    engine: "?".into(),
                    message: format!("step returned no {name}"),
                })?;
            }
        }
        Ok(())
    }
}
