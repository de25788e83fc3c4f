//! What a loaded or compiled model offers: its entry points' conventions, heads, labels and
//! special ids. Built by the compiler's frontend, embedded as JSON in compiled executables, and
//! read by the task front end, which must not need the compiler.

use serde::{Deserialize, Serialize};

/// How `embed` turns token states into one vector per text.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Pooling {
    /// "mean", "cls" or "max".
    pub mode: String,
    /// L2-normalise after pooling (sentence-transformers' Normalize module).
    pub normalize: bool,
}

/// The tokens generation stops at: Hugging Face's `eos_token_id`, which a config gives as one
/// id, a list of ids (`int | list[int]`: generation stops at any of them) or null (none).
/// Serialised as a list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StopIds(Vec<i64>);

impl StopIds {
    pub fn new(ids: Vec<i64>) -> StopIds {
        StopIds(ids)
    }

    pub fn contains(&self, id: i64) -> bool {
        self.0.contains(&id)
    }

    pub fn ids(&self) -> &[i64] {
        &self.0
    }
}

impl<'de> Deserialize<'de> for StopIds {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<StopIds, D::Error> {
        use serde_json::Value;
        let v = Value::deserialize(d)?;
        let id = |x: &Value| x.as_i64();
        let ids = match &v {
            Value::Null => Some(vec![]),
            Value::Array(xs) => xs.iter().map(id).collect(),
            x => id(x).map(|i| vec![i]),
        };
        ids.map(StopIds).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "expected a token id, a list of token ids or null, got {v}"
            ))
        })
    }
}

/// Per-architecture facts the tasks need.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "model_type", rename_all = "lowercase")]
pub enum ModelInfo {
    Bert {
        architecture: String,
        max_positions: usize,
        type_vocab_size: usize,
        hidden_size: usize,
        vocab_size: usize,
        has_pooler: bool,
        has_mlm: bool,
        has_nsp: bool,
        /// Classification labels in id order, when the checkpoint has a classifier.
        labels: Option<Vec<String>>,
        /// "single_label_classification" (also when config.json has none),
        /// "multi_label_classification" or "regression": how `classify` scores the logits
        /// (`sampling::label_scores`).
        problem_type: String,
        pooling: Pooling,
        /// sentence-transformers' `max_seq_length` (sentence_bert_config.json): `embed`
        /// truncates every text to it. Absent from executables compiled before it existed.
        #[serde(default)]
        max_seq_length: Option<usize>,
    },
    Gpt2 {
        architecture: String,
        max_positions: usize,
        layers: usize,
        hidden_size: usize,
        has_lm_head: bool,
        eos_token_id: StopIds,
        /// What an empty prompt starts from (absent in programs compiled before it).
        #[serde(default)]
        bos_token_id: Option<i64>,
        vocab_size: usize,
    },
    T5 {
        architecture: String,
        max_positions: usize,
        encoder_layers: usize,
        decoder_layers: usize,
        /// Width of one layer's keys and values (heads * d_kv).
        kv_width: usize,
        decoder_start_token_id: i64,
        eos_token_id: StopIds,
        vocab_size: usize,
    },
}

impl ModelInfo {
    pub fn model_type(&self) -> &'static str {
        match self {
            ModelInfo::Bert { .. } => "bert",
            ModelInfo::Gpt2 { .. } => "gpt2",
            ModelInfo::T5 { .. } => "t5",
        }
    }

    pub fn architecture(&self) -> &str {
        match self {
            ModelInfo::Bert { architecture, .. }
            | ModelInfo::Gpt2 { architecture, .. }
            | ModelInfo::T5 { architecture, .. } => architecture,
        }
    }

    pub fn max_positions(&self) -> usize {
        match self {
            ModelInfo::Bert { max_positions, .. }
            | ModelInfo::Gpt2 { max_positions, .. }
            | ModelInfo::T5 { max_positions, .. } => *max_positions,
        }
    }

    /// The most tokens an embedding reads, and whether that is sentence-transformers'
    /// `max_seq_length` (sentence_bert_config.json) rather than the positions: it truncates
    /// longer texts there, so `embed` and the server's embedding routes do too. A
    /// `max_seq_length` beyond the positions could not run; the positions still bound it.
    pub fn embed_limit(&self) -> (usize, bool) {
        let positions = self.max_positions();
        match self {
            ModelInfo::Bert {
                max_seq_length: Some(m),
                ..
            } if *m < positions => (*m, true),
            _ => (positions, false),
        }
    }

    /// The token a GPT-2 prompt of no tokens starts from (config.json's `bos_token_id`); none
    /// for T5, whose prompt always ends in `</s>`, and BERT.
    pub fn bos_token_id(&self) -> Option<i64> {
        match self {
            ModelInfo::Gpt2 { bos_token_id, .. } => *bos_token_id,
            ModelInfo::Bert { .. } | ModelInfo::T5 { .. } => None,
        }
    }

    /// The tokens generation stops at (none for BERT, which does not generate).
    pub fn stop_ids(&self) -> &StopIds {
        static NONE: StopIds = StopIds(Vec::new());
        match self {
            ModelInfo::Gpt2 { eos_token_id, .. } | ModelInfo::T5 { eos_token_id, .. } => {
                eos_token_id
            }
            ModelInfo::Bert { .. } => &NONE,
        }
    }

    /// Whether generation stops at token `id`.
    pub fn stops_at(&self, id: i64) -> bool {
        self.stop_ids().contains(id)
    }

    /// Rows of the token embedding (may exceed the tokenizer's vocabulary, as in T5).
    pub fn vocab_size(&self) -> usize {
        match self {
            ModelInfo::Bert { vocab_size, .. }
            | ModelInfo::Gpt2 { vocab_size, .. }
            | ModelInfo::T5 { vocab_size, .. } => *vocab_size,
        }
    }

    /// A sequence classifier with one label: what sentence-transformers' CrossEncoder and
    /// text-embeddings-inference's `/rerank` take as a reranker (score = sigmoid(logit)).
    pub fn is_cross_encoder(&self) -> bool {
        matches!(self, ModelInfo::Bert { labels: Some(l), .. } if l.len() == 1)
    }

    /// The tasks this model supports, in the order `--help` lists them.
    pub fn tasks(&self) -> Vec<&'static str> {
        let mut t = vec!["tokenize", "forward"];
        match self {
            ModelInfo::Bert {
                has_mlm,
                has_nsp,
                labels,
                ..
            } => {
                t.push("embed");
                if *has_mlm {
                    t.push("fill-mask");
                }
                // A next-sentence head classifies pairs as is_next / not_next.
                if labels.is_some() || *has_nsp {
                    t.push("classify");
                }
                if self.is_cross_encoder() {
                    t.push("rerank");
                }
            }
            ModelInfo::Gpt2 { has_lm_head, .. } => {
                if *has_lm_head {
                    t.push("generate");
                }
            }
            ModelInfo::T5 { .. } => t.push("generate"),
        }
        t
    }
}
