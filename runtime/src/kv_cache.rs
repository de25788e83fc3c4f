//! The decoder's key/value cache between generation steps: per layer, keys and values of
//! `B` rows of `P` cached positions, `width` floats each (B batch, P cached, W width).
//!
//! Each batch row owns `capacity` positions (`[B, capacity, W]` per layer and kind), so a step
//! appends its T new positions in place: compiled entries write them straight into the cache
//! and attend to rows `0..P+T` of it ([`crate::Engine::run_cached`]), and other engines hand
//! over `present_*` outputs of which only the new rows are copied ([`KvCache::update`]).
//! Capacity grows geometrically, so a step moves O(T) bytes of cache, amortised.
//!
//! Rows may hold different lengths (a server's streams, each in its own row, joining with
//! [`KvCache::push_row`] and leaving with [`KvCache::swap_remove_row`]): P is then the longest
//! row's, each row is right-padded to P, and a step writes each row's new positions right
//! after its own. Such a *ragged* call takes one new token per row, its `position_ids`, and a
//! key mask `attention_mask` [B, P+T] laid out like the rows (a row's cached positions, its
//! new one, then padding), so attention over keys `0..P+T` sees exactly the row's own.

use crate::{EngineError, Outputs, Tensor};

pub struct KvCache {
    batch: usize,
    width: usize,
    /// P: positions cached in the longest batch row (in every row unless ragged).
    len: usize,
    /// Positions cached in each batch row, `[B]` (i64: generated code reads it,
    /// `CtxDims::kv_lens`).
    lens: Vec<i64>,
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
            lens: vec![0; batch],
            capacity: 0,
            keys: vec![vec![]; layers],
            values: vec![vec![]; layers],
        }
    }

    /// Tokens already cached (P: in the longest row).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Tokens cached in batch row `row`.
    pub fn row_len(&self, row: usize) -> usize {
        self.lens[row] as usize
    }

    /// Tokens cached in each batch row, `[B]`.
    pub fn row_lens(&self) -> &[i64] {
        &self.lens
    }

    /// Whether rows hold different lengths.
    pub fn is_ragged(&self) -> bool {
        self.lens.iter().any(|&n| n as usize != self.len)
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
        let (b, w, old) = (self.batch, self.width, self.capacity);
        for t in self.keys.iter_mut().chain(self.values.iter_mut()) {
            let mut grown = vec![0.0f32; b * cap * w];
            for (r, &len) in self.lens.iter().enumerate() {
                let n = len as usize * w;
                grown[r * cap * w..][..n].copy_from_slice(&t[r * old * w..][..n]);
            }
            *t = grown;
        }
        self.capacity = cap;
    }

    /// Adds a batch row holding row `row` of `src` (a stream joining a batch), returning its
    /// index: one copy of its cached positions.
    pub fn push_row(&mut self, src: &KvCache, row: usize) -> Result<usize, String> {
        if src.layers() != self.layers() || src.width != self.width || row >= src.batch {
            return Err(format!(
                "row {row} of a cache of {} layers x {} rows x width {} does not fit one of {} layers x width {}",
                src.layers(),
                src.batch,
                src.width,
                self.layers(),
                self.width
            ));
        }
        let n = src.row_len(row);
        self.reserve(n.saturating_sub(self.len));
        let (cap, w) = (self.capacity, self.width);
        for l in 0..self.layers() {
            for kind in [Kind::Key, Kind::Value] {
                let from = src.rows(kind, l, row);
                let t = self.storage_vec(kind, l);
                t.resize(t.len() + cap * w, 0.0);
                let start = t.len() - cap * w;
                t[start..][..n * w].copy_from_slice(from);
            }
        }
        self.batch += 1;
        self.lens.push(n as i64);
        self.len = self.len.max(n);
        Ok(self.batch - 1)
    }

    /// Removes batch row `row` (a stream leaving), moving the last row into its place: one
    /// copy of that row's cached positions.
    pub fn swap_remove_row(&mut self, row: usize) {
        assert!(row < self.batch, "row {row} of {}", self.batch);
        let last = self.batch - 1;
        let (cap, w) = (self.capacity, self.width);
        let n = self.row_len(last) * w;
        for l in 0..self.layers() {
            for kind in [Kind::Key, Kind::Value] {
                let t = self.storage_vec(kind, l);
                if row != last {
                    t.copy_within(last * cap * w..last * cap * w + n, row * cap * w);
                }
                t.truncate(last * cap * w);
            }
        }
        self.lens.swap_remove(row);
        self.batch = last;
        self.len = self.lens.iter().map(|&n| n as usize).max().unwrap_or(0);
    }

    fn storage_vec(&mut self, kind: Kind, l: usize) -> &mut Vec<f32> {
        match kind {
            Kind::Key => &mut self.keys[l],
            Kind::Value => &mut self.values[l],
        }
    }

    /// Batch row `row`'s cached positions of layer `l`, `[P, W]` (that row's P).
    pub fn rows(&self, kind: Kind, l: usize, row: usize) -> &[f32] {
        let t = match kind {
            Kind::Key => &self.keys[l],
            Kind::Value => &self.values[l],
        };
        let (w, n) = (self.width, self.row_len(row));
        if n == 0 {
            return &[];
        }
        &t[row * self.capacity * w..][..n * w]
    }

    /// Layer `l`'s cached positions as a `[B, P, W]` tensor (a copy; shorter rows padded
    /// with zeros after their own positions).
    pub fn tensor(&self, kind: Kind, l: usize) -> Tensor {
        let mut data = Vec::with_capacity(self.batch * self.len * self.width);
        for r in 0..self.batch {
            let row = self.rows(kind, l, r);
            data.extend_from_slice(row);
            data.resize(data.len() + self.len * self.width - row.len(), 0.0);
        }
        Tensor::f32(vec![self.batch, self.len, self.width], data)
    }

    /// A ragged call's inputs must say each row's positions and mask its padding.
    pub(crate) fn check_ragged(&self, inputs: &[(&str, &Tensor)]) -> Result<(), EngineError> {
        if !self.is_ragged() {
            return Ok(());
        }
        for name in ["position_ids", "attention_mask"] {
            if !inputs.iter().any(|(n, _)| *n == name) {
                return Err(EngineError::Input(format!(
                    "the KV cache's rows hold different lengths ({:?}): the call needs {name}",
                    self.lens
                )));
            }
        }
        Ok(())
    }

    /// Runs `run` with the past as tensors (for engines that do not append in place): `inputs`
    /// plus `past_*` copies, then appends the new positions of its `present_*` outputs. Those
    /// tensors put every row's new positions at P.., not after the row's own, so a ragged
    /// cache's `attention_mask` is moved to match.
    pub fn run_copied(
        &mut self,
        inputs: &[(&str, &Tensor)],
        run: impl FnOnce(&[(&str, &Tensor)]) -> Result<Outputs, EngineError>,
    ) -> Result<Outputs, EngineError> {
        self.check_ragged(inputs)?;
        let mut extra = self.inputs();
        if self.is_ragged() {
            let mask = inputs
                .iter()
                .find(|(n, _)| *n == "attention_mask")
                .map(|(_, t)| *t)
                .expect("checked");
            extra.push(("attention_mask".into(), self.padded_mask(mask)?));
        }
        let mut all: Vec<(&str, &Tensor)> = inputs
            .iter()
            .filter(|(n, _)| !extra.iter().any(|(e, _)| e == n))
            .copied()
            .collect();
        all.extend(extra.iter().map(|(n, t)| (n.as_str(), t)));
        let mut out = run(&all)?;
        self.update(&mut out)?;
        Ok(out)
    }

    /// A ragged call's key mask [B, P+T] (row b: its `len_b` cached positions, its T new ones,
    /// padding) as [`KvCache::tensor`]'s layout needs it: row b's cached positions, zeros up
    /// to P, then its new ones.
    fn padded_mask(&self, mask: &Tensor) -> Result<Tensor, EngineError> {
        let (b, p) = (self.batch, self.len);
        let m = match (mask.as_i64(), mask.shape()) {
            (Some(m), &[mb, total]) if mb == b && total >= p => m,
            _ => {
                return Err(EngineError::Input(format!(
                    "attention_mask is {mask}, expected i64 [{b}, {p}+T]"
                )))
            }
        };
        let total = mask.shape()[1];
        let t = total - p;
        let mut out = vec![0i64; b * total];
        for (r, &len) in self.lens.iter().enumerate() {
            let (src, dst) = (&m[r * total..][..total], &mut out[r * total..][..total]);
            let len = len as usize;
            dst[..len].copy_from_slice(&src[..len]);
            dst[p..].copy_from_slice(&src[len..len + t]);
        }
        Ok(Tensor::i64(vec![b, total], out))
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

    /// Marks `t` positions appended in place (written after each row's own).
    pub(crate) fn commit(&mut self, t: usize) {
        debug_assert!(self.len + t <= self.capacity);
        self.len += t;
        for n in &mut self.lens {
            *n += t as i64;
        }
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
        let cap = self.capacity;
        for l in 0..self.layers() {
            for kind in [Kind::Key, Kind::Value] {
                let src = new(kind, l);
                let lens = std::mem::take(&mut self.lens);
                let dst = self.storage_mut(kind, l);
                for (r, &len) in lens.iter().enumerate() {
                    dst[(r * cap + len as usize) * w..][..t * w]
                        .copy_from_slice(&src[r * t * w..][..t * w]);
                }
                self.lens = lens;
            }
        }
        self.commit(t);
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
            for (r, w) in want.iter().enumerate().take(b) {
                assert_eq!(c.rows(Kind::Key, l, r), &w[..]);
                let neg: Vec<f32> = w.iter().map(|x| -x).collect();
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

    #[test]
    fn rows_join_leave_and_append_after_their_own_length() {
        let w = 2;
        let mut a = KvCache::new(1, 1, w);
        let k = rows(1, 3, w, 0.0);
        a.append(3, |_, _| &k).unwrap();
        let mut c = KvCache::new(1, 0, w);
        assert_eq!(c.push_row(&a, 0), Ok(0));
        let mut one = KvCache::new(1, 1, w);
        let k1 = rows(1, 1, w, 50.0);
        one.append(1, |_, _| &k1).unwrap();
        assert_eq!(c.push_row(&one, 0), Ok(1));
        assert!(c.push_row(&KvCache::new(2, 1, w), 0).is_err());
        assert_eq!(
            (c.len(), c.row_lens(), c.is_ragged()),
            (3, &[3, 1][..], true)
        );
        // One new position per row, after each row's own.
        let new = rows(2, 1, w, 100.0);
        c.append(1, |_, _| &new).unwrap();
        assert_eq!(c.row_lens(), &[4, 2]);
        assert_eq!(c.rows(Kind::Key, 0, 0), &[&k[..], &new[..w]].concat()[..]);
        assert_eq!(c.rows(Kind::Key, 0, 1), &[&k1[..], &new[w..]].concat()[..]);
        // As tensors: rows right-padded; the key mask's new position moves to P.
        let t = c.tensor(Kind::Value, 0);
        assert_eq!(t.shape(), &[2, 4, w]);
        assert_eq!(
            &t.as_f32().unwrap()[8..],
            &[50.0, 51.0, 100.0 + 2.0, 103.0, 0.0, 0.0, 0.0, 0.0]
        );
        let mask = Tensor::i64(vec![2, 5], vec![1, 1, 1, 1, 1, 1, 1, 1, 0, 0]);
        let moved = c.padded_mask(&mask).unwrap();
        assert_eq!(moved.as_i64().unwrap(), &[1, 1, 1, 1, 1, 1, 1, 0, 0, 1]);
        // Row 0 leaves: row 1 takes its place.
        c.swap_remove_row(0);
        assert_eq!((c.batch(), c.len(), c.row_lens()), (1, 2, &[2][..]));
        assert_eq!(c.rows(Kind::Key, 0, 0), &[&k1[..], &new[w..]].concat()[..]);
        assert!(!c.is_ragged());
    }
}
