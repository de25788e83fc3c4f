//! The model side of a decode loop, shared by `generate`, `forward` and `cranformer bench`:
//! the named inputs of a GPT-2 `forward`/`step` or T5 `decode`/`step` call, and a [`Decoder`]
//! that runs such calls over a KV cache (B batch, T new tokens, P cached, S encoder tokens).

use crate::kv_cache::KvCache;
use crate::{Engine, ModelInfo, Outputs, Tensor};
use anyhow::{bail, Context, Result};

/// The named inputs of a decoder call but its cache (see [`crate::Engine::run_cached`]):
/// `tokens` [B, T] (`input_ids` for GPT-2, `decoder_input_ids` for T5), `mask` (GPT-2:
/// `attention_mask` [B, P+T]; T5: `encoder_attention_mask` [B, S]), and for T5 the
/// `cross_key.{l}`/`cross_value.{l}` of `cross_kv`.
pub fn step_inputs<'a>(
    tokens: &'a Tensor,
    mask: &'a Tensor,
    cross: Option<&'a Outputs>,
) -> Vec<(String, &'a Tensor)> {
    let (ids, mask_name) = match cross {
        None => ("input_ids", "attention_mask"),
        Some(_) => ("decoder_input_ids", "encoder_attention_mask"),
    };
    let mut inputs = vec![(ids.to_string(), tokens), (mask_name.to_string(), mask)];
    if let Some(cross) = cross {
        inputs.extend(cross.iter().map(|(k, v)| (k.clone(), v)));
    }
    inputs
}

/// `inputs` as the engine takes them.
pub fn named<'a>(inputs: &'a [(String, &'a Tensor)]) -> Vec<(&'a str, &'a Tensor)> {
    inputs.iter().map(|(n, t)| (n.as_str(), *t)).collect()
}

/// A `[B, T]` mask of ones.
fn ones(batch: usize, len: usize) -> Tensor {
    Tensor::i64(vec![batch, len], vec![1; batch * len])
}

/// A decoder with its cache: GPT-2 attends to every cached and new token; T5 also to the
/// encoder's output, computed once when the decoder is made.
pub struct Decoder {
    cache: KvCache,
    batch: usize,
    /// T5: the encoder's attention mask [B, S] and the cross-attention keys and values.
    encoder: Option<(Tensor, Outputs)>,
}

impl Decoder {
    /// A decoder for a batch of `prompt` ids [B, N], all attended. GPT-2 starts with an empty
    /// cache (its first step takes the prompt); T5 runs `encode` on the prompt and `cross_kv`.
    pub fn new(engine: &mut dyn Engine, info: &ModelInfo, prompt: &Tensor) -> Result<Decoder> {
        let [batch, n] = prompt.shape()[..] else {
            bail!("a prompt is [batch, tokens], got {prompt}");
        };
        match *info {
            ModelInfo::Gpt2 {
                layers,
                hidden_size,
                ..
            } => Ok(Decoder {
                cache: KvCache::new(layers, batch, hidden_size),
                batch,
                encoder: None,
            }),
            ModelInfo::T5 {
                decoder_layers,
                kv_width,
                ..
            } => {
                let mask = ones(batch, n);
                let mut enc = engine.run(
                    "encode",
                    &[("input_ids", prompt), ("attention_mask", &mask)],
                )?;
                let hidden = enc
                    .remove("encoder_last_hidden_state")
                    .context("encode returned no encoder_last_hidden_state")?;
                let cross = engine.run("cross_kv", &[("encoder_hidden_states", &hidden)])?;
                Ok(Decoder {
                    cache: KvCache::new(decoder_layers, batch, kv_width),
                    batch,
                    encoder: Some((mask, cross)),
                })
            }
            ModelInfo::Bert { .. } => bail!("BERT models do not generate text"),
        }
    }

    /// The first step's tokens: GPT-2 continues the prompt, T5 starts every row from
    /// `decoder_start_token_id`.
    pub fn first_tokens(&self, info: &ModelInfo, prompt: &Tensor) -> Tensor {
        match *info {
            ModelInfo::T5 {
                decoder_start_token_id,
                ..
            } => Tensor::i64(
                vec![self.batch, 1],
                vec![decoder_start_token_id; self.batch],
            ),
            _ => prompt.clone(),
        }
    }

    /// Tokens in the cache.
    pub fn cached(&self) -> usize {
        self.cache.len()
    }

    /// Runs `entry` (`step`, or `forward`/`decode` for logits at every position) on `tokens`
    /// [B, T], appending their keys and values to the cache; returns the other outputs.
    pub fn run(
        &mut self,
        engine: &mut dyn Engine,
        entry: &str,
        tokens: &Tensor,
    ) -> Result<Outputs> {
        let gpt2_mask;
        let (mask, cross) = match &self.encoder {
            Some((mask, cross)) => (mask, Some(cross)),
            None => {
                gpt2_mask = ones(self.batch, self.cache.len() + tokens.shape()[1]);
                (&gpt2_mask, None)
            }
        };
        let inputs = step_inputs(tokens, mask, cross);
        Ok(engine.run_cached(entry, &named(&inputs), &mut self.cache)?)
    }

    /// One `step`: the logits of the last position [B, 1, V].
    pub fn step(&mut self, engine: &mut dyn Engine, tokens: &Tensor) -> Result<Tensor> {
        self.run(engine, "step", tokens)?
            .remove("logits")
            .context("step returned no logits (a model without an LM head cannot generate)")
    }
}
