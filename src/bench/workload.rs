//! Benchmark workloads: random token ids for the task's sizes, run through an engine with
//! the runtime's own decode loop (`tasks::decode`), recording each call's dims so FLOPs can
//! be counted from the graphs.

use super::Task;
use crate::presets;
use anyhow::{Context, Result};
use cranformer_compiler::graph::Dims;
use cranformer_compiler::Model;
use cranformer_runtime::kv_cache::KvCache;
use cranformer_runtime::shape::{bind_cached, CacheShape, TensorType};
use cranformer_runtime::tasks::decode::Decoder;
use cranformer_runtime::{Engine, EngineError, ModelInfo, Outputs, Tensor};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One benchmark workload: the model, the task's sizes and its random token ids.
pub(super) struct Work {
    pub model: Arc<Model>,
    pub task: Task,
    pub batch: usize,
    pub seq: usize,
    pub new_tokens: usize,
    /// [B, T] for forward (T5: the encoder's), [B, N] for generate.
    pub ids: Tensor,
    /// [B, T] decoder ids (T5 forward only).
    pub decoder_ids: Tensor,
}

/// Calls of one run with their bound dims, and whether each belongs to the decode phase.
pub(super) type Trace = Vec<(String, Dims, bool)>;

/// Times of one run, and what it computed (to compare weight formats on the same inputs).
pub(super) struct Times {
    pub total: Duration,
    /// The M single-token steps (generate only).
    pub decode: Option<Duration>,
    /// What the run computed from its inputs alone, to compare engines and weight formats:
    /// forward, the pass's outputs; generate, the first step's logits (later steps follow
    /// each engine's own greedy picks, so they see different inputs once the picks differ).
    pub last: Outputs,
    /// The greedy picks, `[B]` per step (generate only).
    pub tokens: Vec<i64>,
}

pub(super) fn random_ids(rng: &mut presets::Rng, batch: usize, len: usize, vocab: usize) -> Tensor {
    let ids = (0..batch * len).map(|_| rng.below(vocab) as i64).collect();
    Tensor::i64(vec![batch, len], ids)
}

/// The greedy pick of each row of step logits [B, 1, V].
fn argmax_rows(logits: &Tensor, batch: usize) -> Result<Vec<i64>> {
    let v = logits.as_f32().context("step logits are not f32")?;
    let width = v.len() / batch.max(1);
    Ok(v.chunks_exact(width.max(1))
        .map(|row| cranformer_runtime::sampling::argmax(row) as i64)
        .collect())
}

/// An engine that records the dims of every call it runs in a trace (bound from the same
/// input shapes the engine sees), marked as part of the decode phase or not.
struct Traced<'a> {
    inner: &'a mut dyn Engine,
    model: &'a Model,
    trace: Option<&'a mut Trace>,
    decode: bool,
}

impl Engine for Traced<'_> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn run(&mut self, entry: &str, inputs: &[(&str, &Tensor)]) -> Result<Outputs, EngineError> {
        if let Some(t) = self.trace.as_deref_mut() {
            let graph = &self.model.entries[entry];
            let dims = graph
                .bind_dims(inputs)
                .map_err(|e| EngineError::Input(e.to_string()))?;
            t.push((entry.to_string(), dims, self.decode));
        }
        self.inner.run(entry, inputs)
    }

    fn run_cached(
        &mut self,
        entry: &str,
        inputs: &[(&str, &Tensor)],
        cache: &mut KvCache,
    ) -> Result<Outputs, EngineError> {
        if let Some(t) = self.trace.as_deref_mut() {
            let graph = &self.model.entries[entry];
            let sigs: Vec<(&str, &TensorType)> = graph
                .inputs
                .iter()
                .map(|(n, node)| (n.as_str(), &graph.g[*node].ty))
                .collect();
            let shape = CacheShape {
                batch: cache.batch(),
                past: cache.len(),
                width: cache.width(),
            };
            let dims = bind_cached(
                entry,
                &sigs,
                inputs,
                &|n| cache.input_slot(n).is_some(),
                shape,
            )
            .map_err(|e| EngineError::Input(e.to_string()))?;
            t.push((entry.to_string(), dims, self.decode));
        }
        self.inner.run_cached(entry, inputs, cache)
    }
}

impl Work {
    /// One run; with `trace`, records its calls.
    pub fn run(&self, engine: &mut dyn Engine, trace: Option<&mut Trace>) -> Result<Times> {
        let b = self.batch;
        let info = &self.model.info;
        let mut e = Traced {
            inner: engine,
            model: &self.model,
            trace,
            decode: false,
        };
        let start = Instant::now();
        let mut decode = None;
        let mut tokens = vec![];
        let last = match (self.task, info) {
            (Task::Forward, ModelInfo::Bert { .. }) => {
                let types = Tensor::i64(vec![b, self.seq], vec![0; b * self.seq]);
                let mask = Tensor::i64(vec![b, self.seq], vec![1; b * self.seq]);
                let inputs = [
                    ("input_ids", &self.ids),
                    ("token_type_ids", &types),
                    ("attention_mask", &mask),
                ];
                e.run("encode", &inputs)?
            }
            (Task::Forward, ModelInfo::Gpt2 { .. }) => {
                Decoder::new(&mut e, info, &self.ids)?.run(&mut e, "forward", &self.ids)?
            }
            (Task::Forward, ModelInfo::T5 { .. }) => {
                // encode and cross_kv, then one decode of T decoder tokens.
                Decoder::new(&mut e, info, &self.ids)?.run(&mut e, "decode", &self.decoder_ids)?
            }
            (Task::Generate, ModelInfo::Gpt2 { .. } | ModelInfo::T5 { .. }) => {
                // T5's prefill is the encoder (in Decoder::new); GPT-2's is its first step,
                // over the prompt. The M single-token steps after it are the decode phase.
                let gpt2 = matches!(info, ModelInfo::Gpt2 { .. });
                let mut decoder = Decoder::new(&mut e, info, &self.ids)?;
                let mut next = decoder.first_tokens(info, &self.ids);
                let mut decode_start = None;
                let mut last = Outputs::new();
                for i in 0..self.new_tokens + usize::from(gpt2) {
                    e.decode = !gpt2 || i > 0;
                    if e.decode && decode_start.is_none() {
                        decode_start = Some(Instant::now());
                    }
                    let logits = decoder.step(&mut e, &next)?;
                    // End-of-sequence picks do not stop a run: every run does the same work.
                    let picks = argmax_rows(&logits, b)?;
                    tokens.extend(&picks);
                    next = Tensor::i64(vec![b, 1], picks);
                    if i == 0 {
                        last = Outputs::from([("logits".to_string(), logits)]);
                    }
                }
                decode = decode_start.map(|t| t.elapsed());
                last
            }
            (Task::Generate, ModelInfo::Bert { .. }) => {
                anyhow::bail!("BERT models do not generate: use --task forward")
            }
        };
        Ok(Times {
            total: start.elapsed(),
            decode,
            last,
            tokens,
        })
    }
}
