//! GPT-2: `GPT2Model` and `GPT2LMHeadModel`, every size.
//!
//! Dims: B batch, T new tokens, P cached tokens, C `n_embd`, H `n_head`, D = C / H,
//! F `n_inner` (4C by default), V vocabulary. Checkpoint quirks: `Conv1D` stores weights
//! `[in, out]`; keys are `transformer.`-prefixed under an LM head and bare in hub `gpt2`;
//! the LM head is tied to `wte` unless the checkpoint has an `lm_head.weight` (or the config
//! unties them); `attn.bias` / `attn.masked_bias` are buffers, never read.

use super::{activation, check_layer_count, detect_prefix, Builder, FrontendError, WeightTable};
use crate::graph::{Dim, Graph, Op, TensorType, WeightLayout};
use cranformer_runtime::config::{lm_head_key, Gpt2Config};
use cranformer_runtime::model_info::ModelInfo;
use cranformer_runtime::weights::Weights;
use std::path::Path;

/// Builds the `forward` (logits at every position) and `step` (last position only) entry points.
pub fn build(
    c: &Gpt2Config,
    dir: &Path,
    weights: &Weights,
    table: &mut WeightTable,
) -> Result<(ModelInfo, Vec<Graph>), FrontendError> {
    let cfg_path = dir.join("config.json");
    let arch = c
        .architectures
        .first()
        .cloned()
        .unwrap_or_else(|| "GPT2LMHeadModel".into());
    let lm_head = match arch.as_str() {
        "GPT2LMHeadModel" => true,
        "GPT2Model" => false,
        other => {
            return Err(FrontendError::Config {
                path: cfg_path,
                message: format!(
                "architecture {other:?} is not supported (supported: GPT2Model, GPT2LMHeadModel)"
            ),
            })
        }
    };
    let act = activation(&c.activation_function, &cfg_path, "activation_function")?;
    let p = detect_prefix(weights, &["transformer.", ""], "wte.weight")?;
    check_layer_count(weights, &format!("{p}h."), c.n_layer, &cfg_path, "n_layer")?;
    let (cdim, heads) = (c.n_embd, c.n_head);
    let d = cdim / heads;
    let f = c.n_inner.unwrap_or(4 * cdim);
    let eps = c.layer_norm_epsilon as f32;

    let mut graphs = vec![];
    // `batch_step` is `step` with each row's positions given (`position_ids` [B, T]) instead of
    // P..P+T for all rows: a server decoding streams of different lengths in one call keeps
    // each in a KV-cache row of its own length (masked after it), and each row's position must
    // be its own count.
    for entry in ["forward", "step", "batch_step"] {
        let mut b = Builder::new(entry, weights, table);
        let ids = b.input("input_ids", TensorType::i64(&[Dim::Batch, Dim::Seq]));
        let mask = b.input("attention_mask", TensorType::i64(&[Dim::Batch, Dim::Total]));
        let wte = b.weight(&format!("{p}wte.weight"), &[c.vocab_size, cdim])?;
        let wpe = b.weight(&format!("{p}wpe.weight"), &[c.n_positions, cdim])?;
        let tok = b.op(Op::Gather, &[wte, ids], "wte")?; // [B, T, C]
        let positions = if entry == "batch_step" {
            b.input("position_ids", TensorType::i64(&[Dim::Batch, Dim::Seq]))
        } else {
            b.op(Op::Positions, &[], "position_ids")? // [T]: P..P+T
        };
        let pos = b.op(Op::Gather, &[wpe, positions], "wpe")?; // [T, C] or [B, T, C]
        let mut x = b.add(tok, pos, "embeddings")?;
        let ln = |b: &mut Builder, x, name: &str| -> Result<_, FrontendError> {
            let g = b.weight(&format!("{name}.weight"), &[cdim])?;
            let beta = b.weight(&format!("{name}.bias"), &[cdim])?;
            b.op(Op::LayerNorm { eps }, &[x, g, beta], name)
        };
        for l in 0..c.n_layer {
            let h = format!("{p}h.{l}");
            let past_k = b.input(
                &format!("past_key.{l}"),
                TensorType::f32(&[Dim::Batch, Dim::Past, Dim::Const(cdim)]),
            );
            let past_v = b.input(
                &format!("past_value.{l}"),
                TensorType::f32(&[Dim::Batch, Dim::Past, Dim::Const(cdim)]),
            );
            let a = ln(&mut b, x, &format!("{h}.ln_1"))?;
            let qkv = b.linear(
                a,
                &format!("{h}.attn.c_attn"),
                cdim,
                3 * cdim,
                WeightLayout::InOut,
                true,
            )?; // [B, T, 3C]
            let q = b.op(
                Op::SliceLast {
                    start: 0,
                    len: cdim,
                },
                &[qkv],
                &format!("{h}.attn.q"),
            )?;
            let k = b.op(
                Op::SliceLast {
                    start: cdim,
                    len: cdim,
                },
                &[qkv],
                &format!("{h}.attn.k"),
            )?;
            let v = b.op(
                Op::SliceLast {
                    start: 2 * cdim,
                    len: cdim,
                },
                &[qkv],
                &format!("{h}.attn.v"),
            )?;
            let k = b.op(
                Op::ConcatSeq,
                &[past_k, k],
                &format!("{h}.attn.present_key"),
            )?; // [B, P+T, C]
            let v = b.op(
                Op::ConcatSeq,
                &[past_v, v],
                &format!("{h}.attn.present_value"),
            )?;
            b.output(&format!("present_key.{l}"), k);
            b.output(&format!("present_value.{l}"), v);
            let mut scale = if c.scale_attn_weights {
                1.0 / (d as f32).sqrt()
            } else {
                1.0
            };
            if c.scale_attn_by_inverse_layer_idx {
                scale /= (l + 1) as f32;
            }
            let attn = Op::Attention {
                heads,
                head_dim: d,
                scale,
                causal: true,
                masked: true,
                biased: false,
            };
            let y = b.op(attn, &[q, k, v, mask], &format!("{h}.attn"))?; // [B, T, C]
            let y = b.linear(
                y,
                &format!("{h}.attn.c_proj"),
                cdim,
                cdim,
                WeightLayout::InOut,
                true,
            )?;
            x = b.add(x, y, &format!("{h}.attn.residual"))?;
            let m = ln(&mut b, x, &format!("{h}.ln_2"))?;
            let m = b.linear(
                m,
                &format!("{h}.mlp.c_fc"),
                cdim,
                f,
                WeightLayout::InOut,
                true,
            )?; // [B, T, F]
            let m = b.act(m, act, &format!("{h}.mlp.act"))?;
            let m = b.linear(
                m,
                &format!("{h}.mlp.c_proj"),
                f,
                cdim,
                WeightLayout::InOut,
                true,
            )?;
            x = b.add(x, m, &format!("{h}.mlp.residual"))?;
        }
        if entry != "forward" {
            x = b.op(Op::LastToken, &[x], "last_token")?; // [B, 1, C]
        }
        let x = ln(&mut b, x, &format!("{p}ln_f"))?;
        if lm_head {
            // Tied to wte unless the checkpoint has a head of its own: logits = x · Wᵀ, no bias.
            let wte_key = format!("{p}wte.weight");
            let key = lm_head_key(
                b.has("lm_head.weight"),
                c.tie_word_embeddings,
                "lm_head.weight",
                &wte_key,
            );
            let head = b.weight(key, &[c.vocab_size, cdim])?;
            let logits = b.op(
                Op::Linear {
                    layout: WeightLayout::OutIn,
                },
                &[x, head],
                "lm_head",
            )?; // [B, T, V]
            b.output("logits", logits);
        } else {
            b.output("last_hidden_state", x);
        }
        graphs.push(b.finish());
    }
    let info = ModelInfo::Gpt2 {
        architecture: arch,
        max_positions: c.n_positions,
        layers: c.n_layer,
        hidden_size: cdim,
        has_lm_head: lm_head,
        eos_token_id: c.eos_token_id.clone(),
        bos_token_id: c.bos_token_id,
        vocab_size: c.vocab_size,
    };
    Ok((info, graphs))
}
