//! Continuous batching of generation streams on the engine thread.
//!
//! GPT-2 (with its `batch_step` entry, per-row `position_ids`): every active stream owns one
//! row of a batch KV cache whose rows hold different lengths ([`KvCache::push_row`]). A decode
//! step is one `batch_step` call over all rows, one token each, that reads the weights once
//! for all of them (GPT-2 decode is memory-bound: 8 rows cost little more than 1); compiled
//! engines write each row's new keys and values right after that row's own positions and
//! attend to the cache where it lies ([`cranformer_runtime::Engine::run_cached`]), so a step
//! moves no cache. Each row's key mask covers its own positions and its new one, and its
//! position id is its own length, so a row's result does not depend on the others. A stream
//! joins after its prefill (prompts of equal length run together in a cache of their own,
//! each row then copied once into the batch) and leaves between steps (end of sequence,
//! `max_tokens`, a stop string, a client gone), its row taken by the last one.
//!
//! T5 (with its `batch_step` entry, a mask over the decoder's cached keys): every active
//! stream shares each decode step. Streams keep their own caches; a step stacks them, each
//! row's cache left-padded to the longest and its encoder outputs right-padded to the longest,
//! both padding masked. The relative position bias depends only on key minus query position,
//! which left padding keeps, so a row's result does not depend on the others. Streams of equal
//! cache and encoder lengths need no padding and run `step`; a stream alone appends to its own
//! cache in place.
//!
//! Without `batch_step`, streams of one cache length (and, T5, one encoder length) share a
//! `step`, their caches stacked.

use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::worker::{Finish, GenEvent, GenRequest};
use cranformer_runtime::kv_cache::{Kind, KvCache};
use cranformer_runtime::model_info::StopIds;
use cranformer_runtime::sampling::{pick, Rng, Sampling};
use cranformer_runtime::tasks::Session;
use cranformer_runtime::{EngineError, ModelInfo, Outputs, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;

pub struct Stream {
    req: GenRequest,
    /// Names the stream's row of the batch cache.
    id: u64,
    /// The stream's own cache (T5, and GPT-2 without `batch_step`).
    cache: KvCache,
    /// The token fed to the next step.
    next: i64,
    generated: usize,
    rng: Rng,
    pub finished: bool,
    /// T5: this stream's `cross_key.{l}` / `cross_value.{l}` [1, S, W] and encoder mask [S].
    cross: Outputs,
    enc_mask: Vec<i64>,
}

#[derive(Clone, Copy)]
enum Arch {
    Gpt2 {
        layers: usize,
        width: usize,
        max_positions: usize,
    },
    T5 {
        layers: usize,
        width: usize,
        start: i64,
    },
    None,
}

pub struct Generator {
    arch: Arch,
    /// The tokens a stream finishes at (`eos_token_id`).
    stop: StopIds,
    /// Ids the sampler may pick (those the tokenizer can decode).
    allowed: usize,
    /// `batch_step` is available: GPT-2 streams share `batch` (per-row positions), T5 streams
    /// of any lengths share a step (padded and masked).
    rows_step: bool,
    batch: Batch,
    next_id: u64,
}

/// The rows of every GPT-2 stream decoding with `batch_step`.
struct Batch {
    /// `[rows, capacity, W]` per layer, each row its own length.
    cache: KvCache,
    /// The stream in each row.
    ids: Vec<u64>,
}

impl Generator {
    pub fn new(session: &mut Session) -> Generator {
        let allowed = session
            .tokenizer
            .vocab_size()
            .min(session.info.vocab_size());
        let arch = match session.info {
            ModelInfo::Gpt2 {
                layers,
                hidden_size,
                max_positions,
                has_lm_head: true,
                ..
            } => Arch::Gpt2 {
                layers,
                width: hidden_size,
                max_positions,
            },
            ModelInfo::T5 {
                decoder_layers,
                kv_width,
                decoder_start_token_id,
                ..
            } => Arch::T5 {
                layers: decoder_layers,
                width: kv_width,
                start: decoder_start_token_id,
            },
            _ => Arch::None,
        };
        let (layers, width) = match arch {
            Arch::Gpt2 { layers, width, .. } => (layers, width),
            _ => (0, 0),
        };
        let mut g = Generator {
            arch,
            stop: session.info.stop_ids().clone(),
            allowed,
            rows_step: false,
            batch: Batch {
                cache: KvCache::new(layers, 0, width),
                ids: vec![],
            },
            next_id: 0,
        };
        if let Arch::Gpt2 { layers, width, .. } = arch {
            // Probe (and warm up) the per-row-position entry with one token.
            let ids = Tensor::i64(vec![1, 1], vec![0]);
            let pos = Tensor::i64(vec![1, 1], vec![0]);
            let mask = Tensor::i64(vec![1, 1], vec![1]);
            let mut cache = KvCache::new(layers, 1, width);
            let named: Vec<(&str, &Tensor)> = vec![
                ("input_ids", &ids),
                ("position_ids", &pos),
                ("attention_mask", &mask),
            ];
            g.rows_step = probed(session.engine.run_cached("batch_step", &named, &mut cache));
        }
        if let Arch::T5 {
            layers,
            width,
            start,
            ..
        } = arch
        {
            // Probe (and warm up) the masked step with one token and one encoder position.
            let dec = Tensor::i64(vec![1, 1], vec![start]);
            let one = Tensor::i64(vec![1, 1], vec![1]);
            let cross = Tensor::f32(vec![1, 1, width], vec![0.0; width]);
            let past = Tensor::f32(vec![1, 0, width], vec![]);
            let mut names = vec![];
            for l in 0..layers {
                names.push((format!("cross_key.{l}"), &cross));
                names.push((format!("cross_value.{l}"), &cross));
                names.push((format!("past_key.{l}"), &past));
                names.push((format!("past_value.{l}"), &past));
            }
            let mut named: Vec<(&str, &Tensor)> = vec![
                ("decoder_input_ids", &dec),
                ("encoder_attention_mask", &one),
                ("decoder_attention_mask", &one),
            ];
            named.extend(names.iter().map(|(n, t)| (n.as_str(), *t)));
            g.rows_step = probed(session.engine.run("batch_step", &named));
        }
        g
    }

    /// Streams of different cache lengths share a decode step.
    pub fn mixes_lengths(&self) -> bool {
        self.rows_step
    }

    /// Starts streams: GPT-2 runs each prompt through `step` (prompts of equal length together),
    /// picks the first token and, with `batch_step`, gives each stream its row of the batch; T5
    /// encodes the prompts and computes their cross-attention keys and values, the first token
    /// coming from the first decode step.
    pub fn prefill(
        &mut self,
        session: &mut Session,
        reqs: Vec<GenRequest>,
        metrics: &Metrics,
    ) -> Vec<Stream> {
        let mut by_len: BTreeMap<usize, Vec<GenRequest>> = BTreeMap::new();
        for r in reqs {
            by_len.entry(r.prompt.len()).or_default().push(r);
        }
        let mut out = vec![];
        for (n, group) in by_len {
            metrics.batch("prefill", group.len());
            metrics.tokens_in.inc_by((n * group.len()) as u64);
            let mut streams: Vec<Stream> = group
                .into_iter()
                .map(|req| {
                    let seed = match req.sampling {
                        Sampling::Sample { seed, .. } => seed,
                        Sampling::Greedy => 0,
                    };
                    self.next_id += 1;
                    Stream {
                        id: self.next_id,
                        cache: KvCache::new(0, 1, 0),
                        next: 0,
                        generated: 0,
                        rng: Rng::new(seed),
                        finished: false,
                        cross: Outputs::new(),
                        enc_mask: vec![],
                        req,
                    }
                })
                .collect();
            let result = match self.arch {
                Arch::Gpt2 { .. } => self.gpt2_prefill(session, &mut streams, n, metrics),
                Arch::T5 {
                    layers,
                    width,
                    start,
                    ..
                } => self.t5_encode(session, &mut streams, n).map(|()| {
                    for s in &mut streams {
                        s.cache = KvCache::new(layers, 1, width);
                        s.next = start;
                    }
                }),
                Arch::None => Err(ApiError::invalid("this model does not generate text")),
            };
            if let Err(e) = result {
                for s in &mut streams {
                    fail(s, e.clone());
                }
            }
            out.extend(streams.into_iter().filter(|s| !s.finished));
        }
        out
    }

    /// GPT-2: runs `streams`' prompts (all of length `n`) through `step` in one cache and picks
    /// each one's first token; with `batch_step` each stream's row joins the batch, otherwise
    /// it becomes the stream's own cache.
    fn gpt2_prefill(
        &mut self,
        session: &mut Session,
        streams: &mut [Stream],
        n: usize,
        metrics: &Metrics,
    ) -> Result<(), ApiError> {
        let Arch::Gpt2 { layers, width, .. } = self.arch else {
            return Err(ApiError::internal("not a GPT-2 model"));
        };
        let b = streams.len();
        let ids = Tensor::i64(
            vec![b, n],
            streams.iter().flat_map(|s| s.req.prompt.clone()).collect(),
        );
        let mask = Tensor::i64(vec![b, n], vec![1; b * n]);
        let mut cache = KvCache::new(layers, b, width);
        let mut out = session
            .engine
            .run_cached(
                "step",
                &[("input_ids", &ids), ("attention_mask", &mask)],
                &mut cache,
            )
            .map_err(|e| ApiError::from_task(e.into()))?;
        let logits = take_rows(&mut out, "logits", b)?;
        for (i, (s, row)) in streams.iter_mut().zip(logits).enumerate() {
            self.emit(s, &row, n, metrics);
            if s.finished {
                continue;
            }
            if self.rows_step {
                self.batch
                    .cache
                    .push_row(&cache, i)
                    .map_err(ApiError::internal)?;
                self.batch.ids.push(s.id);
            } else {
                s.cache = KvCache::new(layers, 0, width);
                s.cache.push_row(&cache, i).map_err(ApiError::internal)?;
            }
        }
        Ok(())
    }

    /// One decode step for every active stream.
    pub fn decode_step(&mut self, session: &mut Session, active: &mut [Stream], metrics: &Metrics) {
        for s in active.iter_mut() {
            if s.req.cancel.load(Ordering::Relaxed) || s.req.events.is_closed() {
                s.finished = true;
            }
        }
        if matches!(self.arch, Arch::Gpt2 { .. }) && self.rows_step {
            return self.batch_step(session, active, metrics);
        }
        // Groups of streams that may share a call.
        let mut groups: BTreeMap<(usize, usize), Vec<usize>> = BTreeMap::new();
        for (i, s) in active.iter().enumerate() {
            if s.finished {
                continue;
            }
            let key = match self.arch {
                // T5 with `batch_step`: all in one step, padded where lengths differ.
                Arch::T5 { .. } if self.rows_step => (0, 0),
                Arch::Gpt2 { .. } => (s.cache.len(), 0),
                _ => (s.cache.len(), s.enc_mask.len()),
            };
            groups.entry(key).or_default().push(i);
        }
        for idx in groups.into_values() {
            let mut refs: Vec<&mut Stream> = vec![];
            // Disjoint indices, taken in increasing order.
            let mut rest: &mut [Stream] = active;
            let mut offset = 0;
            for &i in &idx {
                let (_, tail) = rest.split_at_mut(i - offset);
                let (head, tail) = tail.split_at_mut(1);
                refs.push(&mut head[0]);
                rest = tail;
                offset = i + 1;
            }
            metrics.batch("decode", refs.len());
            let start = std::time::Instant::now();
            let tokens: Vec<Vec<i64>> = refs.iter().map(|s| vec![s.next]).collect();
            let result = match self.arch {
                Arch::Gpt2 { .. } => self.gpt2_call(session, &mut refs, &tokens),
                Arch::T5 { .. } => self.t5_step(session, &mut refs),
                Arch::None => Err(ApiError::invalid("this model does not generate text")),
            };
            metrics.call("decode", start.elapsed().as_secs_f64());
            match result {
                Ok(logits) => {
                    for (s, row) in refs.iter_mut().zip(logits) {
                        let cached = s.cache.len();
                        self.emit(s, &row, cached, metrics);
                    }
                }
                Err(e) => {
                    for s in refs.iter_mut() {
                        fail(s, e.clone());
                    }
                }
            }
        }
    }

    /// GPT-2 with `batch_step`: one call over every row of the batch, after dropping the rows
    /// of streams that ended.
    fn batch_step(&mut self, session: &mut Session, active: &mut [Stream], metrics: &Metrics) {
        let alive: HashMap<u64, usize> = active
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.finished)
            .map(|(i, s)| (s.id, i))
            .collect();
        let batch = &mut self.batch;
        // Downwards: the row moved into `r` was already kept.
        for r in (0..batch.ids.len()).rev() {
            if !alive.contains_key(&batch.ids[r]) {
                batch.cache.swap_remove_row(r);
                batch.ids.swap_remove(r);
            }
        }
        if batch.ids.is_empty() {
            // Nobody left: give the memory back.
            let c = &batch.cache;
            batch.cache = KvCache::new(c.layers(), 0, c.width());
            return;
        }
        let (b, p) = (batch.ids.len(), batch.cache.len());
        let ids = Tensor::i64(
            vec![b, 1],
            batch.ids.iter().map(|id| active[alive[id]].next).collect(),
        );
        let lens = batch.cache.row_lens();
        let positions = Tensor::i64(vec![b, 1], lens.to_vec());
        // Row r attends to its own len_r positions and the new one written after them.
        let mut mask = vec![0i64; b * (p + 1)];
        for (r, &len) in lens.iter().enumerate() {
            mask[r * (p + 1)..][..len as usize + 1].fill(1);
        }
        let mask = Tensor::i64(vec![b, p + 1], mask);
        metrics.batch("decode", b);
        let start = std::time::Instant::now();
        let result = session
            .engine
            .run_cached(
                "batch_step",
                &[
                    ("input_ids", &ids),
                    ("position_ids", &positions),
                    ("attention_mask", &mask),
                ],
                &mut batch.cache,
            )
            .map_err(|e| ApiError::from_task(e.into()))
            .and_then(|mut out| take_rows(&mut out, "logits", b));
        metrics.call("decode", start.elapsed().as_secs_f64());
        let rows: Vec<(usize, usize)> = batch
            .ids
            .iter()
            .enumerate()
            .map(|(r, id)| (alive[id], batch.cache.row_len(r)))
            .collect();
        match result {
            Ok(logits) => {
                for ((i, cached), row) in rows.into_iter().zip(logits) {
                    self.emit(&mut active[i], &row, cached, metrics);
                }
            }
            Err(e) => {
                for (i, _) in rows {
                    fail(&mut active[i], e.clone());
                }
            }
        }
    }

    /// Picks the next token from `logits`, reports it, and ends the stream when it is done
    /// (`cached`: the positions its cache now holds).
    fn emit(&self, s: &mut Stream, logits: &[f32], cached: usize, metrics: &Metrics) {
        let id = pick(logits, &s.req.sampling, &mut s.rng, self.allowed) as i64;
        s.generated += 1;
        metrics.tokens_out.inc();
        if s.req
            .events
            .send((s.req.index, GenEvent::Token(id)))
            .is_err()
        {
            s.finished = true;
            return;
        }
        let positions_left = match self.arch {
            Arch::Gpt2 { max_positions, .. } => cached < max_positions,
            Arch::T5 { .. } => true,
            Arch::None => false,
        };
        let finish = if self.stop.contains(id) {
            Some(Finish::Stop)
        } else if s.generated >= s.req.max_new || !positions_left {
            Some(Finish::Length)
        } else {
            None
        };
        if let Some(f) = finish {
            let _ = s.req.events.send((s.req.index, GenEvent::Done(f)));
            s.finished = true;
        }
        s.next = id;
    }

    /// One GPT-2 `step` over `streams` (caches of one length), feeding each its `tokens` (all
    /// of one length T); returns each stream's last-position logits and appends to its cache.
    fn gpt2_call(
        &self,
        session: &mut Session,
        streams: &mut [&mut Stream],
        tokens: &[Vec<i64>],
    ) -> Result<Vec<Vec<f32>>, ApiError> {
        let Arch::Gpt2 { layers, width, .. } = self.arch else {
            return Err(ApiError::internal("not a GPT-2 model"));
        };
        let b = streams.len();
        let t = tokens[0].len();
        let past = streams[0].cache.len();
        if streams.iter().any(|s| s.cache.len() != past) {
            return Err(ApiError::internal(
                "streams of different lengths in one step",
            ));
        }
        let ids = Tensor::i64(vec![b, t], tokens.concat());
        let mask = Tensor::i64(vec![b, past + t], vec![1; b * (past + t)]);
        let mut named: Vec<(&str, &Tensor)> = vec![("input_ids", &ids), ("attention_mask", &mask)];
        let entry = "step";
        if let [s] = streams {
            // Alone: appended in place.
            let mut out = session
                .engine
                .run_cached(entry, &named, &mut s.cache)
                .map_err(|e| ApiError::from_task(e.into()))?;
            return take_rows(&mut out, "logits", 1);
        }
        let stack = |kind: Kind, l: usize| -> Tensor {
            let mut data = Vec::with_capacity(b * past * width);
            for s in streams.iter() {
                data.extend_from_slice(s.cache.rows(kind, l, 0));
            }
            Tensor::f32(vec![b, past, width], data)
        };
        let mut past_tensors = vec![];
        for l in 0..layers {
            past_tensors.push((format!("past_key.{l}"), stack(Kind::Key, l)));
            past_tensors.push((format!("past_value.{l}"), stack(Kind::Value, l)));
        }
        named.extend(past_tensors.iter().map(|(n, t)| (n.as_str(), t)));
        let mut out = session
            .engine
            .run(entry, &named)
            .map_err(|e| ApiError::from_task(e.into()))?;
        let logits = take_rows(&mut out, "logits", b)?;
        append_new_rows(&mut out, streams, layers, t)?;
        Ok(logits)
    }

    /// T5: encodes `streams`' prompts (all of length `n`) and keeps each one's cross keys and
    /// values.
    fn t5_encode(
        &self,
        session: &mut Session,
        streams: &mut [Stream],
        n: usize,
    ) -> Result<(), ApiError> {
        let b = streams.len();
        let ids: Vec<i64> = streams.iter().flat_map(|s| s.req.prompt.clone()).collect();
        let ids = Tensor::i64(vec![b, n], ids);
        let mask = Tensor::i64(vec![b, n], vec![1; b * n]);
        let map = |e: EngineError| ApiError::from_task(e.into());
        let enc = session
            .engine
            .run("encode", &[("input_ids", &ids), ("attention_mask", &mask)])
            .map_err(map)?;
        let hidden = enc
            .get("encoder_last_hidden_state")
            .ok_or_else(|| ApiError::internal("encode returned no encoder_last_hidden_state"))?;
        let mut cross = session
            .engine
            .run("cross_kv", &[("encoder_hidden_states", hidden)])
            .map_err(map)?;
        let names: Vec<String> = cross.keys().cloned().collect();
        for name in names {
            let t = cross
                .remove(&name)
                .unwrap_or_else(|| Tensor::f32(vec![0], vec![]));
            let shape = t.shape().to_vec();
            let rows = split_rows(&t, b)?;
            for (s, row) in streams.iter_mut().zip(rows) {
                let mut sh = shape.clone();
                sh[0] = 1;
                s.cross.insert(name.clone(), Tensor::f32(sh, row));
            }
        }
        for s in streams.iter_mut() {
            s.enc_mask = vec![1; n];
        }
        Ok(())
    }

    /// One T5 decoder step over `streams`: of equal cache and encoder lengths through `step`,
    /// of different ones through `batch_step`, each row's cache left-padded and its encoder
    /// outputs right-padded to the longest, the padding masked.
    fn t5_step(
        &self,
        session: &mut Session,
        streams: &mut [&mut Stream],
    ) -> Result<Vec<Vec<f32>>, ApiError> {
        let Arch::T5 { layers, width, .. } = self.arch else {
            return Err(ApiError::internal("not a T5 model"));
        };
        let b = streams.len();
        let p = streams.iter().map(|s| s.cache.len()).max().unwrap_or(0);
        let s_len = streams.iter().map(|s| s.enc_mask.len()).max().unwrap_or(0);
        let padded = streams
            .iter()
            .any(|s| s.cache.len() != p || s.enc_mask.len() != s_len);
        let dec = Tensor::i64(vec![b, 1], streams.iter().map(|s| s.next).collect());
        let mask = Tensor::i64(
            vec![b, s_len],
            streams
                .iter()
                .flat_map(|s| {
                    let pad = s_len - s.enc_mask.len();
                    s.enc_mask
                        .iter()
                        .copied()
                        .chain(std::iter::repeat_n(0, pad))
                })
                .collect(),
        );
        // Cached keys (left padding) and the new one.
        let self_mask = Tensor::i64(
            vec![b, p + 1],
            streams
                .iter()
                .flat_map(|s| {
                    let pad = p - s.cache.len();
                    std::iter::repeat_n(0, pad).chain(std::iter::repeat_n(1, p + 1 - pad))
                })
                .collect(),
        );
        let cat = |kind: Kind, l: usize| -> Tensor {
            let mut data = Vec::with_capacity(b * p * width);
            for s in streams.iter() {
                data.resize(data.len() + (p - s.cache.len()) * width, 0.0);
                data.extend_from_slice(s.cache.rows(kind, l, 0));
            }
            Tensor::f32(vec![b, p, width], data)
        };
        let mut extra: Vec<(String, Tensor)> = vec![];
        let cross_names: Vec<String> = streams[0].cross.keys().cloned().collect();
        for name in &cross_names {
            let w = streams[0].cross[name].shape().last().copied().unwrap_or(0);
            let mut data = Vec::with_capacity(b * s_len * w);
            for s in streams.iter() {
                let rows = s.cross[name].as_f32().unwrap_or(&[]);
                data.extend_from_slice(rows);
                data.resize(data.len() + s_len * w - rows.len(), 0.0);
            }
            extra.push((name.clone(), Tensor::f32(vec![b, s_len, w], data)));
        }
        let mut named: Vec<(&str, &Tensor)> = vec![
            ("decoder_input_ids", &dec),
            ("encoder_attention_mask", &mask),
        ];
        if padded {
            named.push(("decoder_attention_mask", &self_mask));
        }
        if let [s] = streams {
            // Alone: appended in place.
            named.extend(extra.iter().map(|(n, t)| (n.as_str(), t)));
            let mut out = session
                .engine
                .run_cached("step", &named, &mut s.cache)
                .map_err(|e| ApiError::from_task(e.into()))?;
            return take_rows(&mut out, "logits", 1);
        }
        for l in 0..layers {
            extra.push((format!("past_key.{l}"), cat(Kind::Key, l)));
            extra.push((format!("past_value.{l}"), cat(Kind::Value, l)));
        }
        named.extend(extra.iter().map(|(n, t)| (n.as_str(), t)));
        let entry = if padded { "batch_step" } else { "step" };
        let mut out = session
            .engine
            .run(entry, &named)
            .map_err(|e| ApiError::from_task(e.into()))?;
        let logits = take_rows(&mut out, "logits", b)?;
        append_new_rows(&mut out, streams, layers, 1)?;
        Ok(logits)
    }
}

/// Whether a probe of `batch_step` (an older compiled executable lacks it) worked.
fn probed<T>(result: Result<T, EngineError>) -> bool {
    match result {
        Ok(_) => true,
        Err(EngineError::NoEntry { .. }) => false,
        Err(e) => {
            eprintln!("cranformer serve: batch_step failed its warm-up ({e}); streams of different lengths will not share decode steps");
            false
        }
    }
}

/// Appends to each stream's cache the last `t` positions of its row of the `present_*`
/// outputs (`[B, P+T, W]`, shorter caches left-padded), removing those outputs.
fn append_new_rows(
    out: &mut Outputs,
    streams: &mut [&mut Stream],
    layers: usize,
    t: usize,
) -> Result<(), ApiError> {
    let b = streams.len();
    // new[l][kind][stream]: that stream's [T, W] new rows.
    let mut new: Vec<[Vec<Vec<f32>>; 2]> = Vec::with_capacity(layers);
    for l in 0..layers {
        let mut pair = [vec![], vec![]];
        for (i, kind) in ["key", "value"].into_iter().enumerate() {
            let rows = take_rows(out, &format!("present_{kind}.{l}"), b)?;
            for (s, row) in streams.iter().zip(rows) {
                let n = t * s.cache.width();
                if row.len() < n {
                    return Err(ApiError::internal(format!(
                        "present_{kind}.{l} has fewer than {t} positions"
                    )));
                }
                pair[i].push(row[row.len() - n..].to_vec());
            }
        }
        new.push(pair);
    }
    for (si, s) in streams.iter_mut().enumerate() {
        s.cache
            .append(t, |kind, l| &new[l][kind as usize][si])
            .map_err(ApiError::internal)?;
    }
    Ok(())
}

fn fail(s: &mut Stream, e: ApiError) {
    let _ = s.req.events.send((s.req.index, GenEvent::Failed(e)));
    s.finished = true;
}

/// Output `name`, split into its `b` rows along the first dimension.
fn take_rows(out: &mut Outputs, name: &str, b: usize) -> Result<Vec<Vec<f32>>, ApiError> {
    let t = out
        .remove(name)
        .ok_or_else(|| ApiError::internal(format!("the step returned no {name}")))?;
    split_rows(&t, b)
}

fn split_rows(t: &Tensor, b: usize) -> Result<Vec<Vec<f32>>, ApiError> {
    let data = t
        .as_f32()
        .ok_or_else(|| ApiError::internal(format!("{t} is not f32")))?;
    if b == 0 || data.len() % b != 0 {
        return Err(ApiError::internal(format!(
            "{t} does not split into {b} rows"
        )));
    }
    Ok(data.chunks(data.len() / b).map(<[f32]>::to_vec).collect())
}
