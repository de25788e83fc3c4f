//! The decoder's key/value cache between generation steps: per layer, keys and values of
//! `B` rows of `P` cached positions, `width` floats each (B batch, P cached, W width).
//!
//! Each batch row owns `capacity` positions (`[B, capacity, W]` per layer and kind), so a step
//! appends its T new positions in place: compiled entries write them straight into the cache
//! and attend to rows `0..P+T` of it ([`crate::Engine::run_cached`]), and other engines hand
//! over `present_*` outputs of which only the new rows are copied ([`KvCache::update`]).
//! Capacity grows geometrically, so a step moves O(T) bytes of cache, amortised.

use crate::{EngineError, Outputs, Tensor};

pub struct KvCache {
    batch: usize,
    width: usize,
    /// P: positions cached in every batch row.
    len: usize,
    /// Positions each batch row has room for (`len <= capacity`).
    capacity: usize,
    /// Per layer, `[B, capacity, W]`; positions `len..capacity` hold nothing meaningful.
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
}

/// Which of a layer's two tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Key,
    Value,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Key => "key",
            Kind::Value => "value",
        }
    }
}

/// Positions a cache reserves at least when it first grows: short generations never regrow.
const MIN_CAPACITY: usize = 64;

impl KvCache {
    /// An empty cache (P = 0) for `layers` layers.
    pub fn new(layers: usize, batch: usize, width: usize) -> KvCache {
        KvCache {
            batch,
            width,
            len: 0,
            capacity: 0,
            keys: vec![vec![]; layers],
            values: vec![vec![]; layers],
        }
    }

    /// Tokens already cached.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn layers(&self) -> usize {
        self.keys.len()
    }

    pub fn batch(&self) -> usize {
        self.batch
    }

    pub fn width(&self) -> usize {
        self.width
    }

    /// Positions each batch row has room for before the cache must grow.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Makes room for `extra` more positions in every row: at least doubles the capacity when
    /// it grows, moving each row's cached positions to their new place.
    pub fn reserve(&mut self, extra: usize) {
        let need = self.len + extra;
        if need <= self.capacity {
            return;
        }
        let cap = need.max(2 * self.capacity).max(MIN_CAPACITY);
        let (b, w, len, old) = (self.batch, self.width, self.len, self.capacity);
        for t in self.keys.iter_mut().chain(self.values.iter_mut()) {
            let mut grown = vec![0.0f32; b * cap * w];
            for r in 0..b {
                grown[r * cap * w..][..len * w].copy_from_slice(&t[r * old * w..][..len * w]);
            }
            *t = grown;
        }
        self.capacity = cap;
    }

    /// Batch row `row`'s cached positions of layer `l`, `[P, W]`.
    pub fn rows(&self, kind: Kind, l: usize, row: usize) -> &[f32] {
        let t = match kind {
            Kind::Key => &self.keys[l],
            Kind::Value => &self.values[l],
        };
        let w = self.width;
        if self.len == 0 {
            return &[];
        }
        &t[row * self.capacity * w..][..self.len * w]
    }

    /// Layer `l`'s cached positions as a `[B, P, W]` tensor (a copy).
    pub fn tensor(&self, kind: Kind, l: usize) -> Tensor {
        let mut data = Vec::with_capacity(self.batch * self.len * self.width);
        for r in 0..self.batch {
            data.extend_from_slice(self.rows(kind, l, r));
        }
        Tensor::f32(vec![self.batch, self.len, self.width], data)
    }

    /// Named `past_key.{l}` / `past_value.{l}` inputs (copies, for engines that take the past
    /// as tensors; compiled entries read the cache in place).
    pub fn inputs(&self) -> Vec<(String, Tensor)> {
        let mut v = Vec::with_capacity(2 * self.layers());
        for l in 0..self.layers() {
            for kind in [Kind::Key, Kind::Value] {
                v.push((format!("past_{}.{l}", kind.name()), self.tensor(kind, l)));
            }
        }
        v
    }

    /// The layer and kind an input named `past_key.{l}` / `past_value.{l}` stands for.
    pub fn input_slot(&self, name: &str) -> Option<(Kind, usize)> {
        let (kind, l) = if let Some(l) = name.strip_prefix("past_key.") {
            (Kind::Key, l)
        } else {
            (Kind::Value, name.strip_prefix("past_value.")?)
        };
        let l: usize = l.parse().ok()?;
        (l < self.layers()).then_some((kind, l))
    }

    /// Layer `l`'s storage, `[B, capacity, W]`, for an engine that appends in place.
    pub(crate) fn storage_mut(&mut self, kind: Kind, l: usize) -> &mut [f32] {
        match kind {
            Kind::Key => &mut self.keys[l],
            Kind::Value => &mut self.values[l],
        }
    }

    /// Marks `t` positions appended in place (written at `len..len+t` of every row).
    pub(crate) fn commit(&mut self, t: usize) {
        debug_assert!(self.len + t <= self.capacity);
        self.len += t;
    }

    /// Appends `t` positions: `new(kind, l)` gives layer `l`'s `[B, t, W]` new rows.
    pub fn append<'a>(
        &mut self,
        t: usize,
        new: impl Fn(Kind, usize) -> &'a [f32],
    ) -> Result<(), String> {
        let (b, w) = (self.batch, self.width);
        for l in 0..self.layers() {
            for kind in [Kind::Key, Kind::Value] {
                let n = new(kind, l).len();
                if n != b * t * w {
                    return Err(format!(
                        "{} rows of layer {l}: {n} values, expected [{b}, {t}, {w}]",
                        kind.name()
                    ));
                }
            }
        }
        self.reserve(t);
        let (len, cap) = (self.len, self.capacity);
        for l in 0..self.layers() {
            for kind in [Kind::Key, Kind::Value] {
                let src = new(kind, l);
                let dst = self.storage_mut(kind, l);
                for r in 0..b {
                    dst[(r * cap + len) * w..][..t * w].copy_from_slice(&src[r * t * w..][..t * w]);
                }
            }
        }
        self.len += t;
        Ok(())
    }

    /// Appends the new positions of a step's `present_*` outputs (`[B, P+T, W]`, the cached
    /// positions then the new ones), removing those outputs; only the new rows are copied.
    pub fn update(&mut self, out: &mut Outputs) -> Result<(), EngineError> {
        let internal = |message: String| EngineError::Internal {
            engine: "?".into(),
            message,
        };
        let (b, w, p) = (self.batch, self.width, self.len);
        let mut new: Vec<[Vec<f32>; 2]> = Vec::with_capacity(self.layers());
        let mut t = None;
        for l in 0..self.layers() {
            let mut pair = [vec![], vec![]];
            for (i, kind) in [Kind::Key, Kind::Value].into_iter().enumerate() {
                let name = format!("present_{}.{l}", kind.name());
                let present = out
                    .remove(&name)
                    .ok_or_else(|| internal(format!("step returned no {name}")))?;
                let shape = present.shape();
                let (ok, total) = match shape[..] {
                    [pb, total, pw] => (pb == b && pw == w && total >= p, total),
                    _ => (false, 0),
                };
                if !ok || t.is_some_and(|t| t != total - p) {
                    return Err(internal(format!(
                        "{name} is {present}, expected [{b}, {p}+T, {w}]"
                    )));
                }
                let tt = total - p;
                t = Some(tt);
                let data = present.as_f32().unwrap_or(&[]);
                let mut rows = Vec::with_capacity(b * tt * w);
                for r in 0..b {
                    rows.extend_from_slice(&data[(r * total + p) * w..][..tt * w]);
                }
                pair[i] = rows;
            }
            new.push(pair);
        }
        let t = t.unwrap_or(0);
        self.append(t, |kind, l| &new[l][kind as usize])
            .map_err(internal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(b: usize, t: usize, w: usize, base: f32) -> Vec<f32> {
        (0..b * t * w).map(|i| base + i as f32).collect()
    }

    #[test]
    fn appends_keep_every_rows_positions_across_growth() {
        let (b, w) = (2, 3);
        let mut c = KvCache::new(2, b, w);
        let mut want: Vec<Vec<f32>> = vec![vec![]; b];
        // Enough single steps to grow past the first capacity.
        for step in 0..MIN_CAPACITY + 5 {
            let t = if step == 0 { 4 } else { 1 };
            let k = rows(b, t, w, 1000.0 * step as f32);
            let v: Vec<f32> = k.iter().map(|x| -x).collect();
            for r in 0..b {
                want[r].extend_from_slice(&k[r * t * w..][..t * w]);
            }
            c.append(t, |kind, _| if kind == Kind::Key { &k } else { &v })
                .unwrap();
        }
        assert_eq!(c.len(), MIN_CAPACITY + 8);
        assert!(c.capacity() >= c.len());
        for l in 0..2 {
            for r in 0..b {
                assert_eq!(c.rows(Kind::Key, l, r), &want[r][..]);
                let neg: Vec<f32> = want[r].iter().map(|x| -x).collect();
                assert_eq!(c.rows(Kind::Value, l, r), &neg[..]);
            }
            let t = c.tensor(Kind::Key, l);
            assert_eq!(t.shape(), &[b, c.len(), w]);
            assert_eq!(
                t.as_f32().unwrap(),
                &[want[0].clone(), want[1].clone()].concat()[..]
            );
        }
    }

    #[test]
    fn update_takes_only_the_new_positions_of_present() {
        let (b, w) = (2, 2);
        let mut c = KvCache::new(1, b, w);
        let first = rows(b, 1, w, 0.0);
        c.append(1, |_, _| &first).unwrap();
        // present [B, 1+2, W]: the cached position (ignored) then two new ones.
        let present = rows(b, 3, w, 100.0);
        let mut out = Outputs::new();
        out.insert(
            "present_key.0".into(),
            Tensor::f32(vec![b, 3, w], present.clone()),
        );
        out.insert(
            "present_value.0".into(),
            Tensor::f32(vec![b, 3, w], present.clone()),
        );
        out.insert("logits".into(), Tensor::f32(vec![1], vec![0.0]));
        c.update(&mut out).unwrap();
        assert_eq!(out.keys().collect::<Vec<_>>(), ["logits"]);
        assert_eq!(c.len(), 3);
        for r in 0..b {
            let mut want = first[r * w..][..w].to_vec();
            want.extend_from_slice(&present[(r * 3 + 1) * w..][..2 * w]);
            assert_eq!(c.rows(Kind::Key, 0, r), &want[..]);
        }
        let mut bad = Outputs::new();
        bad.insert(
            "present_key.0".into(),
            Tensor::f32(vec![b, 2, 3], vec![0.0; b * 6]),
        );
        bad.insert(
            "present_value.0".into(),
            Tensor::f32(vec![b, 2, 3], vec![0.0; b * 6]),
        );
        assert!(c.update(&mut bad).is_err());
        assert_eq!(c.len(), 3);
    }
}
