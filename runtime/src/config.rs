//! `config.json` of the supported architectures, mirrored as serde structs.
//!
//! Size fields are required (a config without them is rejected with the field's name); options
//! that Hugging Face defaults are defaulted the same way here.

use crate::model_info::StopIds;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Errors reading or validating a model's config.json.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The directory does not exist or is not a directory.
    #[error(
        "{path}: not a model directory (expected a directory holding config.json and weights)"
    )]
    NotADirectory { path: PathBuf },
    /// The directory has no config.json.
    #[error("{path}: no config.json, so this is not a Hugging Face model directory")]
    NoConfig { path: PathBuf },
    /// config.json could not be read.
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// config.json is not valid JSON or misses / mistypes a field.
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    /// The `model_type` is not one cranformer compiles.
    #[error(
        "{path}: model_type {found:?} is not supported; cranformer supports bert, gpt2 and t5"
    )]
    Unsupported { path: PathBuf, found: String },
}

fn default_gelu() -> String {
    "gelu".into()
}
fn default_gelu_new() -> String {
    "gelu_new".into()
}
fn default_relu() -> String {
    "relu".into()
}
fn default_true() -> bool {
    true
}
fn default_type_vocab() -> usize {
    2
}
fn default_bert_eps() -> f64 {
    1e-12
}
fn default_gpt2_eps() -> f64 {
    1e-5
}
fn default_t5_eps() -> f64 {
    1e-6
}
fn default_buckets() -> usize {
    32
}
fn default_max_distance() -> usize {
    128
}
fn default_abs() -> String {
    "absolute".into()
}
fn default_gpt2_eos() -> Option<i64> {
    Some(50256)
}
fn default_gpt2_stop() -> StopIds {
    StopIds::new(vec![50256])
}
fn default_t5_stop() -> StopIds {
    StopIds::new(vec![1])
}

/// BERT (`BertModel` and its heads).
#[derive(Clone, Debug, Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "default_gelu")]
    pub hidden_act: String,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_bert_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_abs")]
    pub position_embedding_type: String,
    #[serde(default)]
    pub architectures: Vec<String>,
    #[serde(default)]
    pub id2label: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub num_labels: Option<usize>,
    #[serde(default)]
    pub problem_type: Option<String>,
    #[serde(default)]
    pub pad_token_id: Option<i64>,
    /// Hugging Face's `BertModel` as a decoder: its self-attention is causal (each position
    /// sees itself and the ones before it), on top of the padding mask.
    #[serde(default)]
    pub is_decoder: bool,
}

/// GPT-2 (`GPT2Model`, `GPT2LMHeadModel`).
#[derive(Clone, Debug, Deserialize)]
pub struct Gpt2Config {
    pub vocab_size: usize,
    pub n_positions: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    #[serde(default)]
    pub n_inner: Option<usize>,
    #[serde(default = "default_gelu_new")]
    pub activation_function: String,
    #[serde(default = "default_gpt2_eps")]
    pub layer_norm_epsilon: f64,
    #[serde(default = "default_true")]
    pub scale_attn_weights: bool,
    #[serde(default)]
    pub scale_attn_by_inverse_layer_idx: bool,
    #[serde(default = "default_gpt2_stop")]
    pub eos_token_id: StopIds,
    /// The token `generate` starts from when the prompt gives none (GPT2Config's default is
    /// the same `<|endoftext|>` as `eos_token_id`).
    #[serde(default = "default_gpt2_eos")]
    pub bos_token_id: Option<i64>,
    /// false: the LM head is `lm_head.weight`, not `wte`. Either way a checkpoint's own
    /// `lm_head.weight` is the head (see [`lm_head_key`]).
    #[serde(default = "default_true")]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub architectures: Vec<String>,
}

/// The weight of an LM head that may be tied to the token embedding (`tied`): the
/// checkpoint's own `head` where it has one, else the embedding where the config ties them,
/// else `head` (missing, so loading names it). Hugging Face transformers (5.x) does the same:
/// where a checkpoint holds both with different values it does not tie them ("both are
/// present in the checkpoints with different values, so we will NOT tie them"), and T5Config
/// now writes `tie_word_embeddings: true` for every T5, flan-t5's separate head included.
pub fn lm_head_key<'k>(
    has_head: bool,
    tie_word_embeddings: bool,
    head: &'k str,
    tied: &'k str,
) -> &'k str {
    if has_head || !tie_word_embeddings {
        head
    } else {
        tied
    }
}

/// T5 (`T5ForConditionalGeneration`): original T5 and v1.1 / flan-t5.
#[derive(Clone, Debug, Deserialize)]
pub struct T5Config {
    pub vocab_size: usize,
    pub d_model: usize,
    pub d_kv: usize,
    pub d_ff: usize,
    pub num_layers: usize,
    #[serde(default)]
    pub num_decoder_layers: Option<usize>,
    pub num_heads: usize,
    #[serde(default = "default_buckets")]
    pub relative_attention_num_buckets: usize,
    #[serde(default = "default_max_distance")]
    pub relative_attention_max_distance: usize,
    #[serde(default = "default_t5_eps")]
    pub layer_norm_epsilon: f64,
    #[serde(default = "default_relu")]
    pub feed_forward_proj: String,
    #[serde(default = "default_true")]
    pub tie_word_embeddings: bool,
    /// Newer transformers write this; older configs imply it from `tie_word_embeddings`.
    #[serde(default)]
    pub scale_decoder_outputs: Option<bool>,
    #[serde(default)]
    pub decoder_start_token_id: Option<i64>,
    #[serde(default = "default_t5_stop")]
    pub eos_token_id: StopIds,
    #[serde(default)]
    pub pad_token_id: Option<i64>,
    #[serde(default)]
    pub architectures: Vec<String>,
}

impl T5Config {
    pub fn decoder_layers(&self) -> usize {
        self.num_decoder_layers.unwrap_or(self.num_layers)
    }

    /// `(activation, gated)` as Hugging Face derives them from `feed_forward_proj`.
    pub fn feed_forward(&self) -> (String, bool) {
        let parts: Vec<&str> = self.feed_forward_proj.split('-').collect();
        let gated = parts.len() == 2 && parts[0] == "gated";
        let act = if self.feed_forward_proj == "gated-gelu" {
            "gelu_new".to_string()
        } else {
            parts.last().copied().unwrap_or("relu").to_string()
        };
        (act, gated)
    }

    /// Whether the decoder output is scaled by d_model^-0.5 before the (tied) LM head.
    pub fn scales_decoder_output(&self) -> bool {
        self.scale_decoder_outputs
            .unwrap_or(self.tie_word_embeddings)
    }

    pub fn start_token(&self) -> i64 {
        self.decoder_start_token_id
            .or(self.pad_token_id)
            .unwrap_or(0)
    }
}

/// A parsed config.json of a supported architecture.
#[derive(Clone, Debug)]
pub enum ModelConfig {
    Bert(BertConfig),
    Gpt2(Gpt2Config),
    T5(T5Config),
}

impl ModelConfig {
    /// The tokenizer family of the architecture.
    pub fn tokenizer_kind(&self) -> crate::tokenize::TokenizerKind {
        use crate::tokenize::TokenizerKind;
        match self {
            ModelConfig::Bert(_) => TokenizerKind::Bert,
            ModelConfig::Gpt2(_) => TokenizerKind::Gpt2,
            ModelConfig::T5(_) => TokenizerKind::T5,
        }
    }
}

#[derive(Deserialize)]
struct ModelTypeOnly {
    model_type: Option<String>,
}

/// Deserializes a config struct, naming the field at fault: serde alone names a missing
/// field but not a mistyped one ("invalid type: string \"32\", expected usize").
fn typed<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, String> {
    let de = &mut serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        if path == "." || inner.starts_with("missing field") {
            inner
        } else {
            format!("field `{path}`: {inner}")
        }
    })
}

impl ModelConfig {
    /// Reads `<dir>/config.json`.
    pub fn load(dir: &Path) -> Result<ModelConfig, ConfigError> {
        if !dir.is_dir() {
            return Err(ConfigError::NotADirectory {
                path: dir.to_path_buf(),
            });
        }
        let path = dir.join("config.json");
        if !path.is_file() {
            return Err(ConfigError::NoConfig {
                path: dir.to_path_buf(),
            });
        }
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Io {
            path: path.clone(),
            source,
        })?;
        let mut config = ModelConfig::parse(&text, &path)?;
        let gen_path = dir.join("generation_config.json");
        if gen_path.is_file() {
            let text = std::fs::read_to_string(&gen_path).map_err(|source| ConfigError::Io {
                path: gen_path.clone(),
                source,
            })?;
            config.apply_generation_config(&text, &gen_path)?;
        }
        Ok(config)
    }

    /// Takes the special tokens of a `generation_config.json` beside config.json, as Hugging
    /// Face's `generate` does (they win over config.json's): `eos_token_id` (one id, a list or
    /// null), GPT-2's `bos_token_id` and T5's `decoder_start_token_id`. A key the file does not
    /// have leaves config.json's value. `path` is only used in errors.
    pub fn apply_generation_config(&mut self, text: &str, path: &Path) -> Result<(), ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| invalid(format!("not valid JSON: {e}")))?;
        let Some(obj) = value.as_object() else {
            return Err(invalid("expected a JSON object".into()));
        };
        let stop = match obj.get("eos_token_id") {
            Some(v) => Some(
                StopIds::deserialize(v)
                    .map_err(|e| invalid(format!("field `eos_token_id`: {e}")))?,
            ),
            None => None,
        };
        let id = |key: &str| -> Result<Option<Option<i64>>, ConfigError> {
            match obj.get(key) {
                None => Ok(None),
                Some(serde_json::Value::Null) => Ok(Some(None)),
                Some(v) => v.as_i64().map(|i| Some(Some(i))).ok_or_else(|| {
                    invalid(format!(
                        "field `{key}`: expected a token id or null, got {v}"
                    ))
                }),
            }
        };
        match self {
            ModelConfig::Gpt2(c) => {
                if let Some(bos) = id("bos_token_id")? {
                    c.bos_token_id = bos;
                }
                if let Some(stop) = stop {
                    c.eos_token_id = stop;
                }
            }
            ModelConfig::T5(c) => {
                if let Some(start) = id("decoder_start_token_id")? {
                    c.decoder_start_token_id = start;
                }
                if let Some(stop) = stop {
                    c.eos_token_id = stop;
                }
            }
            ModelConfig::Bert(_) => {}
        }
        Ok(())
    }

    /// Parses config.json text; `path` is only used in errors.
    pub fn parse(text: &str, path: &Path) -> Result<ModelConfig, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| invalid(format!("not valid JSON: {e}")))?;
        if !value.is_object() {
            return Err(invalid(
                "expected a JSON object with \"model_type\" and the model's sizes".into(),
            ));
        }
        let head: ModelTypeOnly = typed(text).map_err(invalid)?;
        let model_type = head.model_type.ok_or_else(|| ConfigError::Invalid {
            path: path.to_path_buf(),
            message: "missing field `model_type` (expected \"bert\", \"gpt2\" or \"t5\")".into(),
        })?;
        let config = match model_type.as_str() {
            "bert" => ModelConfig::Bert(typed(text).map_err(invalid)?),
            "gpt2" => ModelConfig::Gpt2(typed(text).map_err(invalid)?),
            "t5" => ModelConfig::T5(typed(text).map_err(invalid)?),
            other => {
                return Err(ConfigError::Unsupported {
                    path: path.to_path_buf(),
                    found: other.into(),
                })
            }
        };
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let bad = |message: String| {
            Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                message,
            })
        };
        match self {
            ModelConfig::Bert(c) => {
                if c.num_attention_heads == 0 || c.hidden_size % c.num_attention_heads != 0 {
                    return bad(format!(
                        "hidden_size {} is not a multiple of num_attention_heads {}",
                        c.hidden_size, c.num_attention_heads
                    ));
                }
                if c.position_embedding_type != "absolute" {
                    return bad(format!(
                        "position_embedding_type {:?} is not supported (only \"absolute\")",
                        c.position_embedding_type
                    ));
                }
            }
            ModelConfig::Gpt2(c) => {
                if c.n_head == 0 || c.n_embd % c.n_head != 0 {
                    return bad(format!(
                        "n_embd {} is not a multiple of n_head {}",
                        c.n_embd, c.n_head
                    ));
                }
            }
            ModelConfig::T5(c) => {
                if c.num_heads == 0 || c.d_kv == 0 {
                    return bad("num_heads and d_kv must be positive".into());
                }
                if c.relative_attention_num_buckets < 4 {
                    return bad("relative_attention_num_buckets must be at least 4".into());
                }
            }
        }
        Ok(())
    }

    pub fn model_type(&self) -> &'static str {
        match self {
            ModelConfig::Bert(_) => "bert",
            ModelConfig::Gpt2(_) => "gpt2",
            ModelConfig::T5(_) => "t5",
        }
    }

    /// The most positions one sequence may have (T5 has no hard limit; its relative buckets
    /// saturate, so cranformer caps it at a generous length).
    pub fn max_positions(&self) -> usize {
        match self {
            ModelConfig::Bert(c) => c.max_position_embeddings,
            ModelConfig::Gpt2(c) => c.n_positions,
            ModelConfig::T5(_) => 4096,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GPT2: &str = r#"{"model_type": "gpt2", "vocab_size": 100, "n_positions": 16,
        "n_embd": 8, "n_layer": 1, "n_head": 2"#;

    fn gpt2(extra: &str) -> Result<Gpt2Config, ConfigError> {
        match ModelConfig::parse(&format!("{GPT2}{extra}}}"), Path::new("config.json"))? {
            ModelConfig::Gpt2(c) => Ok(c),
            other => panic!("not GPT-2: {other:?}"),
        }
    }

    #[test]
    fn eos_token_id_is_one_id_a_list_or_null() {
        assert_eq!(gpt2("").unwrap().eos_token_id.ids(), [50256]);
        assert_eq!(
            gpt2(r#", "eos_token_id": 7"#).unwrap().eos_token_id.ids(),
            [7]
        );
        let list = gpt2(r#", "eos_token_id": [7, 9]"#).unwrap().eos_token_id;
        assert_eq!(list.ids(), [7, 9]);
        assert!(list.contains(9) && !list.contains(8));
        assert!(gpt2(r#", "eos_token_id": null"#)
            .unwrap()
            .eos_token_id
            .ids()
            .is_empty());
        for bad in [r#""7""#, "[7, \"x\"]", "1.5"] {
            let err = gpt2(&format!(r#", "eos_token_id": {bad}"#))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("eos_token_id") && err.contains("a list of token ids"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn generation_config_special_tokens_win_over_config_json() {
        let path = Path::new("generation_config.json");
        let parse = |text: &str| -> Result<Gpt2Config, ConfigError> {
            let mut c = ModelConfig::parse(&format!("{GPT2}}}"), Path::new("config.json"))?;
            c.apply_generation_config(text, path)?;
            match c {
                ModelConfig::Gpt2(c) => Ok(c),
                other => panic!("not GPT-2: {other:?}"),
            }
        };
        let c = parse(r#"{"eos_token_id": [3, 4], "bos_token_id": null}"#).unwrap();
        assert_eq!(c.eos_token_id.ids(), [3, 4]);
        assert_eq!(c.bos_token_id, None);
        // Keys it does not have keep config.json's values.
        let c = parse(r#"{"max_length": 20}"#).unwrap();
        assert_eq!(
            (c.eos_token_id.ids(), c.bos_token_id),
            (&[50256][..], Some(50256))
        );
        let err = parse(r#"{"bos_token_id": "x"}"#).unwrap_err().to_string();
        assert!(
            err.contains("generation_config.json") && err.contains("bos_token_id"),
            "{err}"
        );
        let err = parse(r#"{"eos_token_id": {"a": 1}}"#)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("generation_config.json") && err.contains("eos_token_id"),
            "{err}"
        );

        let t5 = r#"{"model_type": "t5", "vocab_size": 100, "d_model": 8, "d_kv": 4, "d_ff": 16,
            "num_layers": 1, "num_heads": 2, "decoder_start_token_id": 0}"#;
        let mut c = ModelConfig::parse(t5, Path::new("config.json")).unwrap();
        c.apply_generation_config(r#"{"decoder_start_token_id": 5, "eos_token_id": 2}"#, path)
            .unwrap();
        let ModelConfig::T5(c) = c else {
            panic!("not T5")
        };
        assert_eq!((c.start_token(), c.eos_token_id.ids()), (5, &[2][..]));
    }
}
