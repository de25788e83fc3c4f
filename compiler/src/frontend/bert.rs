//! BERT: `BertModel`, `BertForPreTraining`, `BertForMaskedLM`, `BertForNextSentencePrediction`,
//! `BertForSequenceClassification`, and sentence-transformers directories around a BertModel.
//!
//! Dims: B batch, T tokens, C hidden (`hidden_size`), H heads, D = C / H, F `intermediate_size`,
//! V vocabulary.

use super::{activation, check_layer_count, detect_prefix, Builder, FrontendError, WeightTable};
use crate::graph::{Activation, Dim, Graph, Op, TensorType, WeightLayout};
use cranformer_runtime::config::BertConfig;
use cranformer_runtime::model_info::{ModelInfo, Pooling};
use cranformer_runtime::weights::Weights;
use petgraph::graph::NodeIndex;
use std::path::Path;

/// Which heads an architecture has: (pooler required, mlm, nsp, classifier).
fn heads_of(arch: &str) -> Option<(bool, bool, bool, bool)> {
    Some(match arch {
        "BertModel" => (false, false, false, false),
        "BertForPreTraining" => (true, true, true, false),
        "BertForMaskedLM" => (false, true, false, false),
        "BertForNextSentencePrediction" => (true, false, true, false),
        "BertForSequenceClassification" => (true, false, false, true),
        _ => return None,
    })
}

const SUPPORTED: &str =
    "BertModel, BertForPreTraining, BertForMaskedLM, BertForNextSentencePrediction, BertForSequenceClassification";

/// The BERT checkpoint's layout: prefix of the encoder's keys, and the heads present.
struct Layout<'c> {
    c: &'c BertConfig,
    /// "bert." in models with heads, "" in a bare BertModel.
    p: &'static str,
    act: Activation,
    pooler: bool,
    mlm: bool,
    nsp: bool,
    classes: Option<usize>,
}

impl Layout<'_> {
    /// LayerNorm parameters; checkpoints converted from TensorFlow name them gamma / beta.
    fn layer_norm(
        &self,
        b: &mut Builder,
        x: NodeIndex,
        prefix: &str,
    ) -> Result<NodeIndex, FrontendError> {
        let c = self.c.hidden_size;
        let (wk, bk) = if !b.has(&format!("{prefix}.weight")) && b.has(&format!("{prefix}.gamma")) {
            ("gamma", "beta")
        } else {
            ("weight", "bias")
        };
        let g = b.weight(&format!("{prefix}.{wk}"), &[c])?;
        let beta = b.weight(&format!("{prefix}.{bk}"), &[c])?;
        b.op(
            Op::LayerNorm {
                eps: self.c.layer_norm_eps as f32,
            },
            &[x, g, beta],
            prefix,
        )
    }

    /// BertEmbeddings + BertEncoder: `[B, T, C]`.
    fn encoder(&self, b: &mut Builder) -> Result<NodeIndex, FrontendError> {
        let c = self.c;
        let (hidden, p) = (c.hidden_size, self.p);
        let ids = b.input("input_ids", TensorType::i64(&[Dim::Batch, Dim::Seq]));
        let types = b.input("token_type_ids", TensorType::i64(&[Dim::Batch, Dim::Seq]));
        let mask = b.input("attention_mask", TensorType::i64(&[Dim::Batch, Dim::Seq]));

        let e = format!("{p}embeddings");
        let words_t = b.weight(
            &format!("{e}.word_embeddings.weight"),
            &[c.vocab_size, hidden],
        )?;
        let pos_t = b.weight(
            &format!("{e}.position_embeddings.weight"),
            &[c.max_position_embeddings, hidden],
        )?;
        let type_t = b.weight(
            &format!("{e}.token_type_embeddings.weight"),
            &[c.type_vocab_size, hidden],
        )?;
        let words = b.op(Op::Gather, &[words_t, ids], "embeddings.word_embeddings")?; // [B, T, C]
        let tt = b.op(
            Op::Gather,
            &[type_t, types],
            "embeddings.token_type_embeddings",
        )?; // [B, T, C]
        let positions = b.op(Op::Positions, &[], "embeddings.position_ids")?; // [T]
        let pos = b.op(
            Op::Gather,
            &[pos_t, positions],
            "embeddings.position_embeddings",
        )?; // [T, C]
            // Hugging Face adds words + token types first, then positions: keep the rounding order.
        let x = b.add(words, tt, "embeddings")?;
        let x = b.add(x, pos, "embeddings")?;
        let mut x = self.layer_norm(b, x, &format!("{e}.LayerNorm"))?;

        let heads = c.num_attention_heads;
        let d = hidden / heads;
        for l in 0..c.num_hidden_layers {
            let lp = format!("{p}encoder.layer.{l}");
            let q = b.linear(
                x,
                &format!("{lp}.attention.self.query"),
                hidden,
                hidden,
                WeightLayout::OutIn,
                true,
            )?;
            let k = b.linear(
                x,
                &format!("{lp}.attention.self.key"),
                hidden,
                hidden,
                WeightLayout::OutIn,
                true,
            )?;
            let v = b.linear(
                x,
                &format!("{lp}.attention.self.value"),
                hidden,
                hidden,
                WeightLayout::OutIn,
                true,
            )?;
            let attn = Op::Attention {
                heads,
                head_dim: d,
                scale: 1.0 / (d as f32).sqrt(),
                causal: self.c.is_decoder,
                masked: true,
                biased: false,
            };
            let ctx = b.op(attn, &[q, k, v, mask], &format!("{lp}.attention.self"))?; // [B, T, C]
            let a = b.linear(
                ctx,
                &format!("{lp}.attention.output.dense"),
                hidden,
                hidden,
                WeightLayout::OutIn,
                true,
            )?;
            let a = b.add(a, x, &format!("{lp}.attention.output"))?;
            x = self.layer_norm(b, a, &format!("{lp}.attention.output.LayerNorm"))?;
            let f = c.intermediate_size;
            let i = b.linear(
                x,
                &format!("{lp}.intermediate.dense"),
                hidden,
                f,
                WeightLayout::OutIn,
                true,
            )?; // [B, T, F]
            let i = b.act(i, self.act, &format!("{lp}.intermediate"))?;
            let o = b.linear(
                i,
                &format!("{lp}.output.dense"),
                f,
                hidden,
                WeightLayout::OutIn,
                true,
            )?;
            let o = b.add(o, x, &format!("{lp}.output"))?;
            x = self.layer_norm(b, o, &format!("{lp}.output.LayerNorm"))?;
        }
        Ok(x)
    }

    /// BertPooler: tanh(dense(h[:, 0])) -> `[B, C]`.
    fn pooler(&self, b: &mut Builder, x: NodeIndex) -> Result<NodeIndex, FrontendError> {
        let h = self.c.hidden_size;
        let first = b.op(Op::FirstToken, &[x], "pooler")?;
        let d = b.linear(
            first,
            &format!("{}pooler.dense", self.p),
            h,
            h,
            WeightLayout::OutIn,
            true,
        )?;
        b.act(d, Activation::Tanh, "pooler")
    }

    /// BertLMPredictionHead: decoder(LayerNorm(act(dense(x)))) + bias -> `[B, T, V]`.
    fn mlm(&self, b: &mut Builder, x: NodeIndex) -> Result<NodeIndex, FrontendError> {
        let (h, v) = (self.c.hidden_size, self.c.vocab_size);
        let t = b.linear(
            x,
            "cls.predictions.transform.dense",
            h,
            h,
            WeightLayout::OutIn,
            true,
        )?;
        let t = b.act(t, self.act, "cls.predictions.transform")?;
        let t = self.layer_norm(b, t, "cls.predictions.transform.LayerNorm")?;
        // The decoder is tied to the word embeddings and absent from most checkpoints.
        let wkey = if b.has("cls.predictions.decoder.weight") {
            "cls.predictions.decoder.weight".to_string()
        } else {
            format!("{}embeddings.word_embeddings.weight", self.p)
        };
        let bkey = if b.has("cls.predictions.bias") {
            "cls.predictions.bias"
        } else {
            "cls.predictions.decoder.bias"
        };
        let w = b.weight(&wkey, &[v, h])?;
        let bias = b.weight(bkey, &[v])?;
        b.op(
            Op::Linear {
                layout: WeightLayout::OutIn,
            },
            &[t, w, bias],
            "cls.predictions.decoder",
        )
    }
}

/// Reads sentence-transformers' modules.json (pooling mode, Normalize) when present. A
/// pipeline with a module cranformer does not run (Dense, say), or a pooling it does not
/// have, is refused with the module named: leaving it out would give other embeddings.
fn pooling(dir: &Path) -> Result<Pooling, FrontendError> {
    let mut pooling = Pooling {
        mode: "mean".into(),
        normalize: false,
    };
    let modules_path = dir.join("modules.json");
    let Ok(text) = std::fs::read_to_string(&modules_path) else {
        return Ok(pooling);
    };
    let bad = |message: String| FrontendError::Config {
        path: modules_path.clone(),
        message,
    };
    let modules: Vec<serde_json::Value> =
        serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    for m in &modules {
        let ty = m.get("type").and_then(|t| t.as_str()).unwrap_or("");
        let sub = m.get("path").and_then(|t| t.as_str()).unwrap_or("");
        let kind = ty.rsplit('.').next().unwrap_or("");
        match kind {
            "Transformer" => {}
            "Normalize" => pooling.normalize = true,
            "Pooling" => {
                let cfg_path = dir.join(sub).join("config.json");
                let bad = |message: String| FrontendError::Config {
                    path: cfg_path.clone(),
                    message,
                };
                let text = std::fs::read_to_string(&cfg_path).map_err(|e| bad(e.to_string()))?;
                let cfg: serde_json::Value =
                    serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
                pooling.mode = pooling_mode(&cfg).map_err(bad)?;
            }
            _ => {
                return Err(bad(format!(
                    "module {ty:?} (path {sub:?}) is not supported: cranformer runs \
                     sentence-transformers pipelines of Transformer, Pooling and Normalize"
                )))
            }
        }
    }
    Ok(pooling)
}

/// Pooling modes in sentence-transformers' order (its legacy `pooling_mode_*` keys, and the
/// order it concatenates several in).
const POOLING_MODES: [(&str, &str); 6] = [
    ("pooling_mode_cls_token", "cls"),
    ("pooling_mode_max_tokens", "max"),
    ("pooling_mode_mean_tokens", "mean"),
    ("pooling_mode_mean_sqrt_len_tokens", "mean_sqrt_len_tokens"),
    ("pooling_mode_weightedmean_tokens", "weightedmean"),
    ("pooling_mode_lasttoken", "lasttoken"),
];

/// The one pooling mode of a sentence-transformers Pooling config, as it reads one:
/// `pooling_mode` (a name or a list of names, sentence-transformers 6), else the legacy
/// `pooling_mode_*` flags, mean where none is set. Several modes are concatenated there; a
/// mode cranformer has no op for, or several, is an error.
fn pooling_mode(cfg: &serde_json::Value) -> Result<String, String> {
    let modes: Vec<String> = match cfg.get("pooling_mode") {
        Some(serde_json::Value::String(m)) => vec![m.clone()],
        Some(serde_json::Value::Array(ms)) => ms
            .iter()
            .map(|m| m.as_str().map(str::to_string))
            .collect::<Option<_>>()
            .ok_or_else(|| format!("pooling_mode {ms:?}: expected names of pooling modes"))?,
        Some(other) => return Err(format!("pooling_mode {other}: expected a name or a list")),
        None => {
            let on = |k: &str| cfg.get(k).and_then(|v| v.as_bool()).unwrap_or(false);
            let set: Vec<String> = POOLING_MODES
                .iter()
                .filter(|(k, _)| on(k))
                .map(|(_, m)| m.to_string())
                .collect();
            if set.is_empty() {
                vec!["mean".into()]
            } else {
                set
            }
        }
    };
    match &modes[..] {
        [m] if ["mean", "cls", "max"].contains(&m.as_str()) => Ok(m.clone()),
        [m] => Err(format!(
            "pooling mode {m:?} is not supported (supported: mean, cls, max)"
        )),
        _ => Err(format!(
            "pooling modes {modes:?} together (sentence-transformers concatenates them) are \
             not supported: cranformer pools with one of mean, cls, max"
        )),
    }
}

/// sentence-transformers' `max_seq_length` from sentence_bert_config.json, when present: the
/// length it truncates every text to before pooling (all-MiniLM-L6-v2: 256 of 512 positions).
fn max_seq_length(dir: &Path) -> Result<Option<usize>, FrontendError> {
    let path = dir.join("sentence_bert_config.json");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(None);
    };
    let bad = |message: String| FrontendError::Config {
        path: path.clone(),
        message,
    };
    let cfg: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    match cfg.get("max_seq_length") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if n > 0 => Ok(Some(n as usize)),
            _ => Err(bad(format!(
                "max_seq_length is {v}, expected a positive whole number of tokens"
            ))),
        },
    }
}

/// Builds the `encode` and `embed` entry points.
pub fn build(
    c: &BertConfig,
    dir: &Path,
    weights: &Weights,
    table: &mut WeightTable,
) -> Result<(ModelInfo, Vec<Graph>), FrontendError> {
    let cfg_path = dir.join("config.json");
    let arch = c
        .architectures
        .first()
        .cloned()
        .unwrap_or_else(|| "BertModel".into());
    let Some((pooler, mlm, nsp, cls)) = heads_of(&arch) else {
        return Err(FrontendError::Config {
            path: cfg_path,
            message: format!("architecture {arch:?} is not supported (supported: {SUPPORTED})"),
        });
    };
    let act = activation(&c.hidden_act, &cfg_path, "hidden_act")?;
    let p = detect_prefix(weights, &["bert.", ""], "embeddings.word_embeddings.weight")?;
    check_layer_count(
        weights,
        &format!("{p}encoder.layer."),
        c.num_hidden_layers,
        &cfg_path,
        "num_hidden_layers",
    )?;
    let pooler = pooler || weights.contains(&format!("{p}pooler.dense.weight"));
    let labels = if cls {
        let n = c
            .num_labels
            .or(c.id2label.as_ref().map(|m| m.len()))
            .unwrap_or(2);
        let names = (0..n)
            .map(|i| {
                c.id2label
                    .as_ref()
                    .and_then(|m| m.get(&i.to_string()).cloned())
                    .unwrap_or_else(|| format!("LABEL_{i}"))
            })
            .collect::<Vec<_>>();
        Some(names)
    } else {
        None
    };
    // Absent, as in most checkpoints: the scores follow from the number of labels
    // (`sampling::label_scores`: one label is a sigmoid, as Hugging Face's pipeline has it,
    // although the model's training loss takes one label for regression).
    let problem_type = c
        .problem_type
        .clone()
        .unwrap_or_else(|| "single_label_classification".into());
    let layout = Layout {
        c,
        p,
        act,
        pooler,
        mlm,
        nsp,
        classes: labels.as_ref().map(Vec::len),
    };
    let pooling = pooling(dir)?;
    let max_seq_length = max_seq_length(dir)?;

    let mut b = Builder::new("encode", weights, table);
    let x = layout.encoder(&mut b)?;
    b.output("last_hidden_state", x);
    if layout.pooler {
        let pooled = layout.pooler(&mut b, x)?;
        b.output("pooler_output", pooled);
        if layout.nsp {
            let h = c.hidden_size;
            let s = b.linear(
                pooled,
                "cls.seq_relationship",
                h,
                2,
                WeightLayout::OutIn,
                true,
            )?;
            b.output("nsp_logits", s);
        }
        if let Some(n) = layout.classes {
            let l = b.linear(
                pooled,
                "classifier",
                c.hidden_size,
                n,
                WeightLayout::OutIn,
                true,
            )?;
            b.output("logits", l);
        }
    }
    if layout.mlm {
        let m = layout.mlm(&mut b, x)?;
        b.output("mlm_logits", m);
    }
    let encode = b.finish();

    let mut b = Builder::new("embed", weights, table);
    let x = layout.encoder(&mut b)?;
    let mask = b
        .graph
        .inputs
        .iter()
        .find(|(n, _)| n == "attention_mask")
        .map(|&(_, i)| i)
        .expect("declared above");
    let mut e = match pooling.mode.as_str() {
        "cls" => b.op(Op::FirstToken, &[x], "pooling")?,
        "max" => b.op(Op::MaxPool, &[x, mask], "pooling")?,
        _ => b.op(Op::MeanPool, &[x, mask], "pooling")?,
    };
    if pooling.normalize {
        // The vectors before the model's own normalisation too (the server's
        // `/embed` with TEI's `normalize: false`).
        b.output("pooled", e);
        e = b.op(Op::L2Normalize, &[e], "normalize")?;
    }
    b.output("embeddings", e);
    let embed = b.finish();

    let info = ModelInfo::Bert {
        architecture: arch,
        max_positions: c.max_position_embeddings,
        type_vocab_size: c.type_vocab_size,
        hidden_size: c.hidden_size,
        vocab_size: c.vocab_size,
        has_pooler: layout.pooler,
        has_mlm: mlm,
        has_nsp: nsp,
        labels,
        problem_type,
        pooling,
        max_seq_length,
    };
    Ok((info, vec![encode, embed]))
}
