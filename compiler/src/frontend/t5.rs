//! T5 (`T5ForConditionalGeneration`): original T5 (ReLU, LM head tied to `shared` and scaled
//! by d_model^-0.5) and v1.1 / flan-t5 (gated GELU, separate `lm_head`, no scaling), one
//! file with config switches. The head is the checkpoint's `lm_head.weight` wherever it has
//! one (transformers 5.x saves every T5 with `tie_word_embeddings: true`, flan-t5 too, and
//! says whether to scale in `scale_decoder_outputs`).
//!
//! Dims: B batch, S encoder tokens, T new decoder tokens, P cached decoder tokens,
//! C `d_model`, H `num_heads`, D `d_kv`, I = H*D (not always C), F `d_ff`, V vocabulary.
//! Attention is unscaled; positions enter only through the relative position bias, computed
//! by the first block of each stack and shared by the others.

use super::{activation, check_layer_count, Builder, FrontendError, WeightTable};
use crate::graph::{Activation, Dim, Graph, Op, TensorType, WeightLayout};
use cranformer_runtime::config::{lm_head_key, T5Config};
use cranformer_runtime::model_info::ModelInfo;
use cranformer_runtime::weights::Weights;
use petgraph::graph::NodeIndex;
use std::path::Path;

struct T5<'c> {
    c: &'c T5Config,
    act: Activation,
    gated: bool,
}

impl T5<'_> {
    fn inner(&self) -> usize {
        self.c.num_heads * self.c.d_kv
    }

    /// T5LayerNorm: RMS norm with a gain and no bias.
    fn norm(
        &self,
        b: &mut Builder,
        x: NodeIndex,
        prefix: &str,
    ) -> Result<NodeIndex, FrontendError> {
        let g = b.weight(&format!("{prefix}.weight"), &[self.c.d_model])?;
        b.op(
            Op::RmsNorm {
                eps: self.c.layer_norm_epsilon as f32,
            },
            &[x, g],
            prefix,
        )
    }

    fn proj(
        &self,
        b: &mut Builder,
        x: NodeIndex,
        prefix: &str,
        k: usize,
        n: usize,
    ) -> Result<NodeIndex, FrontendError> {
        b.linear(x, prefix, k, n, WeightLayout::OutIn, false)
    }

    fn attention_op(&self, causal: bool, masked: bool, biased: bool) -> Op {
        Op::Attention {
            heads: self.c.num_heads,
            head_dim: self.c.d_kv,
            scale: 1.0,
            causal,
            masked,
            biased,
        }
    }

    /// T5DenseActDense or T5DenseGatedActDense, pre-normed, with the residual.
    fn feed_forward(
        &self,
        b: &mut Builder,
        x: NodeIndex,
        prefix: &str,
    ) -> Result<NodeIndex, FrontendError> {
        let (cm, f) = (self.c.d_model, self.c.d_ff);
        let h = self.norm(b, x, &format!("{prefix}.layer_norm"))?;
        let d = format!("{prefix}.DenseReluDense");
        let h = if self.gated {
            let g = self.proj(b, h, &format!("{d}.wi_0"), cm, f)?; // [.., F]
            let g = b.act(g, self.act, &format!("{d}.act"))?;
            let lin = self.proj(b, h, &format!("{d}.wi_1"), cm, f)?;
            b.op(Op::Mul, &[g, lin], &format!("{d}.gate"))?
        } else {
            let h = self.proj(b, h, &format!("{d}.wi"), cm, f)?;
            b.act(h, self.act, &format!("{d}.act"))?
        };
        let h = self.proj(b, h, &format!("{d}.wo"), f, cm)?;
        b.add(x, h, &format!("{prefix}.residual"))
    }

    fn rel_bias(
        &self,
        b: &mut Builder,
        stack: &str,
        bidirectional: bool,
        keys: Dim,
    ) -> Result<NodeIndex, FrontendError> {
        let key = format!("{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight");
        let table = b.weight(
            &key,
            &[self.c.relative_attention_num_buckets, self.c.num_heads],
        )?;
        let op = Op::RelPosBias {
            buckets: self.c.relative_attention_num_buckets,
            max_distance: self.c.relative_attention_max_distance,
            bidirectional,
            keys,
        };
        b.op(op, &[table], &format!("{stack}.relative_attention_bias"))
    }

    fn embed_tokens(
        &self,
        b: &mut Builder,
        ids: NodeIndex,
        stack: &str,
    ) -> Result<NodeIndex, FrontendError> {
        // `{stack}.embed_tokens` is tied to `shared` and usually absent.
        let own = format!("{stack}.embed_tokens.weight");
        let key = if b.has(&own) {
            own
        } else {
            "shared.weight".into()
        };
        let t = b.weight(&key, &[self.c.vocab_size, self.c.d_model])?;
        b.op(Op::Gather, &[t, ids], &format!("{stack}.embed_tokens"))
    }

    /// `encode`: T5Stack encoder -> `[B, S, C]` (the sequence is called T inside the graph).
    fn encoder(&self, b: &mut Builder) -> Result<NodeIndex, FrontendError> {
        let (cm, i) = (self.c.d_model, self.inner());
        let ids = b.input("input_ids", TensorType::i64(&[Dim::Batch, Dim::Seq]));
        let mask = b.input("attention_mask", TensorType::i64(&[Dim::Batch, Dim::Seq]));
        let mut x = self.embed_tokens(b, ids, "encoder")?; // [B, T, C]
        let bias = self.rel_bias(b, "encoder", true, Dim::Seq)?; // [H, T, T]
        for l in 0..self.c.num_layers {
            let s = format!("encoder.block.{l}.layer.0");
            let h = self.norm(b, x, &format!("{s}.layer_norm"))?;
            let q = self.proj(b, h, &format!("{s}.SelfAttention.q"), cm, i)?;
            let k = self.proj(b, h, &format!("{s}.SelfAttention.k"), cm, i)?;
            let v = self.proj(b, h, &format!("{s}.SelfAttention.v"), cm, i)?;
            let a = b.op(
                self.attention_op(false, true, true),
                &[q, k, v, mask, bias],
                &format!("{s}.SelfAttention"),
            )?;
            let a = self.proj(b, a, &format!("{s}.SelfAttention.o"), i, cm)?;
            x = b.add(x, a, &format!("{s}.residual"))?;
            x = self.feed_forward(b, x, &format!("encoder.block.{l}.layer.1"))?;
        }
        self.norm(b, x, "encoder.final_layer_norm")
    }

    /// `cross_kv`: each decoder block's EncDecAttention keys and values, once per input.
    fn cross_kv(&self, b: &mut Builder) -> Result<(), FrontendError> {
        let (cm, i) = (self.c.d_model, self.inner());
        let enc = b.input(
            "encoder_hidden_states",
            TensorType::f32(&[Dim::Batch, Dim::EncSeq, Dim::Const(cm)]),
        );
        for l in 0..self.c.decoder_layers() {
            let s = format!("decoder.block.{l}.layer.1.EncDecAttention");
            let k = self.proj(b, enc, &format!("{s}.k"), cm, i)?; // [B, S, I]
            let v = self.proj(b, enc, &format!("{s}.v"), cm, i)?;
            b.output(&format!("cross_key.{l}"), k);
            b.output(&format!("cross_value.{l}"), v);
        }
        Ok(())
    }

    /// `decode` / `step` / `batch_step`: the decoder stack with its self-attention cache, and
    /// the LM head. `row_masks` (`batch_step`) adds `decoder_attention_mask` [B, P+T] over the
    /// self-attention keys, so rows with shorter caches can be left-padded: the relative
    /// position bias depends only on key minus query position, which left padding keeps.
    fn decoder(
        &self,
        b: &mut Builder,
        last_only: bool,
        row_masks: bool,
    ) -> Result<(), FrontendError> {
        let (cm, i) = (self.c.d_model, self.inner());
        let ids = b.input(
            "decoder_input_ids",
            TensorType::i64(&[Dim::Batch, Dim::Seq]),
        );
        let enc_mask = b.input(
            "encoder_attention_mask",
            TensorType::i64(&[Dim::Batch, Dim::EncSeq]),
        );
        let self_mask = row_masks.then(|| {
            b.input(
                "decoder_attention_mask",
                TensorType::i64(&[Dim::Batch, Dim::Total]),
            )
        });
        let mut x = self.embed_tokens(b, ids, "decoder")?; // [B, T, C]
        let bias = self.rel_bias(b, "decoder", false, Dim::Total)?; // [H, T, P+T]
        let kv = |d: Dim| TensorType::f32(&[Dim::Batch, d, Dim::Const(i)]);
        for l in 0..self.c.decoder_layers() {
            let past_k = b.input(&format!("past_key.{l}"), kv(Dim::Past));
            let past_v = b.input(&format!("past_value.{l}"), kv(Dim::Past));
            let cross_k = b.input(&format!("cross_key.{l}"), kv(Dim::EncSeq));
            let cross_v = b.input(&format!("cross_value.{l}"), kv(Dim::EncSeq));

            let s = format!("decoder.block.{l}.layer.0");
            let h = self.norm(b, x, &format!("{s}.layer_norm"))?;
            let q = self.proj(b, h, &format!("{s}.SelfAttention.q"), cm, i)?;
            let k = self.proj(b, h, &format!("{s}.SelfAttention.k"), cm, i)?;
            let v = self.proj(b, h, &format!("{s}.SelfAttention.v"), cm, i)?;
            let k = b.op(Op::ConcatSeq, &[past_k, k], &format!("{s}.present_key"))?; // [B, P+T, I]
            let v = b.op(Op::ConcatSeq, &[past_v, v], &format!("{s}.present_value"))?;
            b.output(&format!("present_key.{l}"), k);
            b.output(&format!("present_value.{l}"), v);
            let a = match self_mask {
                Some(mask) => b.op(
                    self.attention_op(true, true, true),
                    &[q, k, v, mask, bias],
                    &format!("{s}.SelfAttention"),
                )?,
                None => b.op(
                    self.attention_op(true, false, true),
                    &[q, k, v, bias],
                    &format!("{s}.SelfAttention"),
                )?,
            };
            let a = self.proj(b, a, &format!("{s}.SelfAttention.o"), i, cm)?;
            x = b.add(x, a, &format!("{s}.residual"))?;

            let s = format!("decoder.block.{l}.layer.1");
            let h = self.norm(b, x, &format!("{s}.layer_norm"))?;
            let q = self.proj(b, h, &format!("{s}.EncDecAttention.q"), cm, i)?;
            let a = b.op(
                self.attention_op(false, true, false),
                &[q, cross_k, cross_v, enc_mask],
                &format!("{s}.EncDecAttention"),
            )?;
            let a = self.proj(b, a, &format!("{s}.EncDecAttention.o"), i, cm)?;
            x = b.add(x, a, &format!("{s}.residual"))?;
            x = self.feed_forward(b, x, &format!("decoder.block.{l}.layer.2"))?;
        }
        if last_only {
            x = b.op(Op::LastToken, &[x], "last_token")?;
        }
        let mut x = self.norm(b, x, "decoder.final_layer_norm")?;
        if self.c.scales_decoder_output() {
            x = b.op(
                Op::Scale {
                    factor: (cm as f32).powf(-0.5),
                },
                &[x],
                "lm_head.scale",
            )?;
        }
        let key = lm_head_key(
            b.has("lm_head.weight"),
            self.c.tie_word_embeddings,
            "lm_head.weight",
            "shared.weight",
        );
        let w = b.weight(key, &[self.c.vocab_size, cm])?;
        let logits = b.op(
            Op::Linear {
                layout: WeightLayout::OutIn,
            },
            &[x, w],
            "lm_head",
        )?; // [B, T, V]
        b.output("logits", logits);
        Ok(())
    }
}

/// Builds `encode`, `cross_kv`, `decode`, `step` and `batch_step`.
pub fn build(
    c: &T5Config,
    dir: &Path,
    weights: &Weights,
    table: &mut WeightTable,
) -> Result<(ModelInfo, Vec<Graph>), FrontendError> {
    let cfg_path = dir.join("config.json");
    let arch = c
        .architectures
        .first()
        .cloned()
        .unwrap_or_else(|| "T5ForConditionalGeneration".into());
    if arch != "T5ForConditionalGeneration" {
        return Err(FrontendError::Config {
            path: cfg_path,
            message: format!(
                "architecture {arch:?} is not supported (supported: T5ForConditionalGeneration)"
            ),
        });
    }
    // Hugging Face accepts "ACT" or "gated-ACT" and nothing else.
    let (act_name, gated) = c.feed_forward();
    let parts: Vec<&str> = c.feed_forward_proj.split('-').collect();
    let well_formed = parts.len() == 1 || (parts.len() == 2 && parts[0] == "gated");
    let act = match activation(&act_name, &cfg_path, "feed_forward_proj") {
        Ok(act) if well_formed => act,
        _ => {
            return Err(FrontendError::Config {
                path: cfg_path,
                message: format!(
                    "feed_forward_proj {:?} is not supported (expected ACT or gated-ACT, with \
                     ACT one of: {})",
                    c.feed_forward_proj,
                    Activation::SUPPORTED
                ),
            })
        }
    };
    check_layer_count(
        weights,
        "encoder.block.",
        c.num_layers,
        &cfg_path,
        "num_layers",
    )?;
    let decoder_field = if c.num_decoder_layers.is_some() {
        "num_decoder_layers"
    } else {
        "num_layers (no num_decoder_layers given)"
    };
    let decoder_layers = c.decoder_layers();
    check_layer_count(
        weights,
        "decoder.block.",
        decoder_layers,
        &cfg_path,
        decoder_field,
    )?;
    let t5 = T5 { c, act, gated };

    let mut b = Builder::new("encode", weights, table);
    let x = t5.encoder(&mut b)?;
    b.output("encoder_last_hidden_state", x);
    let encode = b.finish();
    let mut b = Builder::new("cross_kv", weights, table);
    t5.cross_kv(&mut b)?;
    let cross = b.finish();
    let mut b = Builder::new("decode", weights, table);
    t5.decoder(&mut b, false, false)?;
    let decode = b.finish();
    let mut b = Builder::new("step", weights, table);
    t5.decoder(&mut b, true, false)?;
    let step = b.finish();
    // `step` with a mask over the cached keys: a server decodes streams of different cache
    // and encoder lengths in one call, each row padded (the cache on the left, the encoder
    // outputs on the right) and masked.
    let mut b = Builder::new("batch_step", weights, table);
    t5.decoder(&mut b, true, true)?;
    let batch_step = b.finish();

    let info = ModelInfo::T5 {
        architecture: arch,
        max_positions: 4096,
        encoder_layers: c.num_layers,
        decoder_layers: c.decoder_layers(),
        kv_width: t5.inner(),
        decoder_start_token_id: c.start_token(),
        eos_token_id: c.eos_token_id.clone(),
        vocab_size: c.vocab_size,
    };
    Ok((info, vec![encode, cross, decode, step, batch_step]))
}
