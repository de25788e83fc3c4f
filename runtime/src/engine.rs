//! The interface between the tasks and whatever runs a model's entry points: the reference
//! interpreter, JIT-compiled code, or code linked into a compiled executable.
//!
//! Entry points and their tensors, by architecture (B batch, T new tokens, P cached tokens,
//! S encoder tokens, C hidden, V vocabulary, L layers; ids and masks are i64):
//! - BERT `encode`: `input_ids`, `token_type_ids`, `attention_mask` [B, T] -> `last_hidden_state`
//!   [B, T, C] and, when the checkpoint has them, `pooler_output` [B, C], `mlm_logits`
//!   [B, T, V], `nsp_logits` [B, 2], `logits` [B, labels]. BERT `embed`: the same inputs ->
//!   `embeddings` [B, C], pooled as the model's pooling says.
//! - GPT-2 `forward` (all positions) and `step` (last position only): `input_ids` [B, T],
//!   `attention_mask` [B, P+T], `past_key.{l}`, `past_value.{l}` [B, P, C] -> `logits`
//!   [B, T or 1, V] (or `last_hidden_state` without an LM head), `present_key.{l}`,
//!   `present_value.{l}` [B, P+T, C]. GPT-2 `batch_step`: `step` with `position_ids` [B, T]
//!   given per row (for a cache whose rows hold different lengths, see [`crate::kv_cache`]).
//! - T5 `encode`: `input_ids`, `attention_mask` [B, S] -> `encoder_last_hidden_state`
//!   [B, S, C]. `cross_kv`: `encoder_hidden_states` [B, S, C] -> `cross_key.{l}`,
//!   `cross_value.{l}` [B, S, H*D]. `decode` (all positions) and `step` (last position):
//!   `decoder_input_ids` [B, T], `encoder_attention_mask` [B, S], `cross_key.{l}`,
//!   `cross_value.{l}`, `past_key.{l}`, `past_value.{l}` [B, P, H*D] -> `logits`,
//!   `present_key.{l}`, `present_value.{l}`. T5 `batch_step`: `step` with
//!   `decoder_attention_mask` [B, P+T] over the self-attention keys (rows with shorter caches
//!   left-padded and masked; shorter encoder outputs right-padded, masked by
//!   `encoder_attention_mask`).
//!
//! A decode loop hands its [`KvCache`] to [`Engine::run_cached`] instead of passing `past_*`
//! and taking `present_*`: compiled entries then write each step's new keys and values into
//! the cache and attend to it in place, so a step moves O(T) bytes of cache, not O(P).

use crate::kv_cache::KvCache;
use crate::Tensor;
use std::collections::BTreeMap;

/// Named output tensors of one call.
pub type Outputs = BTreeMap<String, Tensor>;

/// Errors running an entry point.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The model has no such entry point.
    #[error("this model has no entry point {entry:?} (it has {available})")]
    NoEntry { entry: String, available: String },
    /// The inputs do not fit the entry point (user error: names the input and what was expected).
    #[error("{0}")]
    Input(String),
    /// A weight an entry point reads was not loaded (names the tensor).
    #[error(transparent)]
    Weight(#[from] crate::native::WeightLoadError),
    /// Code the entry point ran panicked: always a cranformer bug. The panic was stopped and
    /// the engine stays usable.
    #[error("entry point {entry} failed: the runtime panicked: {message} (a cranformer bug)")]
    Panic { entry: String, message: String },
    /// Anything else: a bug in the engine or the generated code.
    #[error("internal error in the {engine} engine: {message}")]
    Internal { engine: String, message: String },
}

/// Runs a model's entry points.
pub trait Engine {
    /// "interp", "jit" or "aot".
    fn name(&self) -> &str;
    fn run(&mut self, entry: &str, inputs: &[(&str, &Tensor)]) -> Result<Outputs, EngineError>;

    /// Runs a decoder entry (GPT-2 `forward`/`step`/`batch_step`, T5 `decode`/`step`) over
    /// `cache`, which stands for its `past_key.{l}`/`past_value.{l}` inputs (`inputs` are the
    /// others), and appends the call's new keys and values to it; the `present_*` outputs are
    /// not returned. This default copies the cache into tensors and takes only the new rows
    /// back; compiled engines write the new rows into the cache in place. A cache whose rows
    /// hold different lengths takes one token per row (see [`crate::kv_cache`]).
    fn run_cached(
        &mut self,
        entry: &str,
        inputs: &[(&str, &Tensor)],
        cache: &mut KvCache,
    ) -> Result<Outputs, EngineError> {
        cache.run_copied(inputs, |all| self.run(entry, all))
    }
}
