//! Standard model sizes with random weights, for `cranformer bench --preset`: no download.
//!
//! Each preset is the config.json Hugging Face publishes for that size (the fields cranformer
//! reads), parsed by the same `ModelConfig` path as a real directory. The weights are a
//! safetensors file built in memory under the checkpoint's own key names, so the frontends
//! load them exactly as they load a real checkpoint.

use anyhow::{bail, Context, Result};
use cranformer_compiler::Model;
use cranformer_runtime::config::{BertConfig, Gpt2Config, T5Config};
use cranformer_runtime::weights::Weights;
use cranformer_runtime::ModelConfig;
use std::path::Path;

/// `(name, config.json)` of every preset.
pub const PRESETS: &[(&str, &str)] = &[
    (
        "bert-base",
        r#"{"model_type": "bert", "architectures": ["BertModel"], "vocab_size": 30522,
            "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
            "intermediate_size": 3072, "max_position_embeddings": 512, "type_vocab_size": 2,
            "hidden_act": "gelu", "layer_norm_eps": 1e-12}"#,
    ),
    (
        "bert-large",
        r#"{"model_type": "bert", "architectures": ["BertModel"], "vocab_size": 30522,
            "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
            "intermediate_size": 4096, "max_position_embeddings": 512, "type_vocab_size": 2,
            "hidden_act": "gelu", "layer_norm_eps": 1e-12}"#,
    ),
    (
        "gpt2",
        r#"{"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": 50257,
            "n_positions": 1024, "n_embd": 768, "n_layer": 12, "n_head": 12,
            "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5}"#,
    ),
    (
        "gpt2-medium",
        r#"{"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": 50257,
            "n_positions": 1024, "n_embd": 1024, "n_layer": 24, "n_head": 16,
            "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5}"#,
    ),
    (
        "gpt2-large",
        r#"{"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": 50257,
            "n_positions": 1024, "n_embd": 1280, "n_layer": 36, "n_head": 20,
            "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5}"#,
    ),
    (
        "gpt2-xl",
        r#"{"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": 50257,
            "n_positions": 1024, "n_embd": 1600, "n_layer": 48, "n_head": 25,
            "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5}"#,
    ),
    (
        "t5-small",
        r#"{"model_type": "t5", "architectures": ["T5ForConditionalGeneration"],
            "vocab_size": 32128, "d_model": 512, "d_kv": 64, "d_ff": 2048, "num_layers": 6,
            "num_decoder_layers": 6, "num_heads": 8, "relative_attention_num_buckets": 32,
            "relative_attention_max_distance": 128, "feed_forward_proj": "relu",
            "tie_word_embeddings": true, "layer_norm_epsilon": 1e-6,
            "decoder_start_token_id": 0, "eos_token_id": 1, "pad_token_id": 0}"#,
    ),
    (
        "t5-base",
        r#"{"model_type": "t5", "architectures": ["T5ForConditionalGeneration"],
            "vocab_size": 32128, "d_model": 768, "d_kv": 64, "d_ff": 3072, "num_layers": 12,
            "num_decoder_layers": 12, "num_heads": 12, "relative_attention_num_buckets": 32,
            "relative_attention_max_distance": 128, "feed_forward_proj": "relu",
            "tie_word_embeddings": true, "layer_norm_epsilon": 1e-6,
            "decoder_start_token_id": 0, "eos_token_id": 1, "pad_token_id": 0}"#,
    ),
];

pub fn names() -> String {
    PRESETS
        .iter()
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The preset's config, with the layer count replaced by `layers` when given (every stack of
/// a T5) so that tests can build a one-layer model of a real width.
pub fn config(name: &str, layers: Option<usize>) -> Result<ModelConfig> {
    let Some((_, text)) = PRESETS.iter().find(|(n, _)| *n == name) else {
        bail!("unknown --preset {name:?} (available: {})", names());
    };
    let mut json: serde_json::Value = serde_json::from_str(text).expect("preset configs are JSON");
    if let Some(l) = layers {
        let fields: &[&str] = match json["model_type"].as_str() {
            Some("bert") => &["num_hidden_layers"],
            Some("gpt2") => &["n_layer"],
            _ => &["num_layers", "num_decoder_layers"],
        };
        for f in fields {
            json[*f] = l.into();
        }
    }
    let path = format!("<preset {name}>/config.json");
    Ok(ModelConfig::parse(&json.to_string(), Path::new(&path))?)
}

/// What a checkpoint tensor holds, which decides its random values.
#[derive(Clone, Copy)]
enum Init {
    /// Matrices and embeddings: N(0, 0.02²), Hugging Face's `initializer_range`.
    Matrix,
    /// Biases: N(0, 0.02²).
    Bias,
    /// Norm gains: 1 + N(0, 0.1²), so that a wrong gain index shows up in outputs.
    Gain,
}

type Spec = Vec<(String, Vec<usize>, Init)>;

/// `BertModel` with its pooler, keys unprefixed as in hub `bert-base-uncased`'s encoder.
fn bert_tensors(c: &BertConfig) -> Spec {
    let (h, f) = (c.hidden_size, c.intermediate_size);
    let mut t: Spec = vec![];
    let linear = |t: &mut Spec, p: &str, n: usize, k: usize| {
        t.push((format!("{p}.weight"), vec![n, k], Init::Matrix));
        t.push((format!("{p}.bias"), vec![n], Init::Bias));
    };
    let norm = |t: &mut Spec, p: &str| {
        t.push((format!("{p}.weight"), vec![h], Init::Gain));
        t.push((format!("{p}.bias"), vec![h], Init::Bias));
    };
    let e = "embeddings";
    t.push((
        format!("{e}.word_embeddings.weight"),
        vec![c.vocab_size, h],
        Init::Matrix,
    ));
    t.push((
        format!("{e}.position_embeddings.weight"),
        vec![c.max_position_embeddings, h],
        Init::Matrix,
    ));
    t.push((
        format!("{e}.token_type_embeddings.weight"),
        vec![c.type_vocab_size, h],
        Init::Matrix,
    ));
    norm(&mut t, &format!("{e}.LayerNorm"));
    for l in 0..c.num_hidden_layers {
        let p = format!("encoder.layer.{l}");
        for qkv in ["query", "key", "value"] {
            linear(&mut t, &format!("{p}.attention.self.{qkv}"), h, h);
        }
        linear(&mut t, &format!("{p}.attention.output.dense"), h, h);
        norm(&mut t, &format!("{p}.attention.output.LayerNorm"));
        linear(&mut t, &format!("{p}.intermediate.dense"), f, h);
        linear(&mut t, &format!("{p}.output.dense"), h, f);
        norm(&mut t, &format!("{p}.output.LayerNorm"));
    }
    linear(&mut t, "pooler.dense", h, h);
    t
}

/// `GPT2LMHeadModel`: `transformer.`-prefixed, Conv1D weights `[in, out]`, head tied to wte.
fn gpt2_tensors(c: &Gpt2Config) -> Spec {
    let h = c.n_embd;
    let f = c.n_inner.unwrap_or(4 * h);
    let mut t: Spec = vec![];
    let conv1d = |t: &mut Spec, p: &str, k: usize, n: usize| {
        t.push((format!("{p}.weight"), vec![k, n], Init::Matrix));
        t.push((format!("{p}.bias"), vec![n], Init::Bias));
    };
    let norm = |t: &mut Spec, p: &str| {
        t.push((format!("{p}.weight"), vec![h], Init::Gain));
        t.push((format!("{p}.bias"), vec![h], Init::Bias));
    };
    let p = "transformer";
    t.push((
        format!("{p}.wte.weight"),
        vec![c.vocab_size, h],
        Init::Matrix,
    ));
    t.push((
        format!("{p}.wpe.weight"),
        vec![c.n_positions, h],
        Init::Matrix,
    ));
    for l in 0..c.n_layer {
        let b = format!("{p}.h.{l}");
        norm(&mut t, &format!("{b}.ln_1"));
        conv1d(&mut t, &format!("{b}.attn.c_attn"), h, 3 * h);
        conv1d(&mut t, &format!("{b}.attn.c_proj"), h, h);
        norm(&mut t, &format!("{b}.ln_2"));
        conv1d(&mut t, &format!("{b}.mlp.c_fc"), h, f);
        conv1d(&mut t, &format!("{b}.mlp.c_proj"), f, h);
    }
    norm(&mut t, &format!("{p}.ln_f"));
    t
}

/// `T5ForConditionalGeneration`: `nn.Linear` weights without biases, RMS-norm gains only,
/// embeddings in `shared` (and `lm_head` when untied).
fn t5_tensors(c: &T5Config) -> Spec {
    let (cm, i, f) = (c.d_model, c.num_heads * c.d_kv, c.d_ff);
    let (_, gated) = c.feed_forward();
    let mut t: Spec = vec![];
    let linear = |t: &mut Spec, p: &str, n: usize, k: usize| {
        t.push((format!("{p}.weight"), vec![n, k], Init::Matrix));
    };
    let norm = |t: &mut Spec, p: &str| t.push((format!("{p}.weight"), vec![cm], Init::Gain));
    let attention = |t: &mut Spec, p: &str| {
        for proj in ["q", "k", "v"] {
            linear(t, &format!("{p}.{proj}"), i, cm);
        }
        linear(t, &format!("{p}.o"), cm, i);
    };
    let feed_forward = |t: &mut Spec, p: &str| {
        let d = format!("{p}.DenseReluDense");
        if gated {
            linear(t, &format!("{d}.wi_0"), f, cm);
            linear(t, &format!("{d}.wi_1"), f, cm);
        } else {
            linear(t, &format!("{d}.wi"), f, cm);
        }
        linear(t, &format!("{d}.wo"), cm, f);
        norm(t, &format!("{p}.layer_norm"));
    };
    t.push(("shared.weight".into(), vec![c.vocab_size, cm], Init::Matrix));
    if !c.tie_word_embeddings {
        t.push((
            "lm_head.weight".into(),
            vec![c.vocab_size, cm],
            Init::Matrix,
        ));
    }
    for (stack, layers) in [("encoder", c.num_layers), ("decoder", c.decoder_layers())] {
        t.push((
            format!("{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"),
            vec![c.relative_attention_num_buckets, c.num_heads],
            Init::Matrix,
        ));
        for l in 0..layers {
            let b = format!("{stack}.block.{l}");
            attention(&mut t, &format!("{b}.layer.0.SelfAttention"));
            norm(&mut t, &format!("{b}.layer.0.layer_norm"));
            if stack == "decoder" {
                attention(&mut t, &format!("{b}.layer.1.EncDecAttention"));
                norm(&mut t, &format!("{b}.layer.1.layer_norm"));
                feed_forward(&mut t, &format!("{b}.layer.2"));
            } else {
                feed_forward(&mut t, &format!("{b}.layer.1"));
            }
        }
        norm(&mut t, &format!("{stack}.final_layer_norm"));
    }
    t
}

/// xorshift64*: deterministic, fast, and good enough for weights nobody reads.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Roughly N(0, 1): the sum of four uniforms on [-√3, √3], scaled back to unit variance
    /// (Irwin-Hall), so no value exceeds 2√3.
    pub fn normalish(&mut self) -> f32 {
        let r = self.next_u64();
        let u = |s: u32| ((r >> s) & 0xFFFF) as f32 / 65535.0 - 0.5; // variance 1/12
        (u(0) + u(16) + u(32) + u(48)) * 3.0f32.sqrt()
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// A safetensors file holding `spec`'s tensors filled from `seed`, leaked so that the
/// weight store can view it as `'static` bytes without a copy (the model lives until exit).
fn random_safetensors(spec: &Spec, seed: u64) -> &'static [u8] {
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (key, shape, _) in spec {
        let len = shape.iter().product::<usize>() * 4;
        header.insert(
            key.clone(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len]}),
        );
        offset += len;
    }
    let mut head = serde_json::Value::Object(header).to_string().into_bytes();
    // Pad the header so that the data starts 8-aligned: f32 tensors are then viewed in place.
    while !(8 + head.len()).is_multiple_of(8) {
        head.push(b' ');
    }
    let total = 8 + head.len() + offset;
    // u64 storage gives the alignment; the bytes are filled through a byte view of it.
    let words: &'static mut [u64] = Box::leak(vec![0u64; total.div_ceil(8)].into_boxed_slice());
    // SAFETY: u8 has no alignment or validity requirements, and the slice covers exactly the
    // words' bytes (`total` rounded up), borrowed for as long as the leaked words live.
    let bytes: &'static mut [u8] =
        unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), words.len() * 8) };
    bytes[..8].copy_from_slice(&(head.len() as u64).to_le_bytes());
    bytes[8..8 + head.len()].copy_from_slice(&head);
    let mut rng = Rng::new(seed);
    let mut at = 8 + head.len();
    for (_, shape, init) in spec {
        let n: usize = shape.iter().product();
        for chunk in bytes[at..at + 4 * n].chunks_exact_mut(4) {
            let z = rng.normalish();
            let v = match init {
                Init::Matrix | Init::Bias => 0.02 * z,
                Init::Gain => 1.0 + 0.1 * z,
            };
            chunk.copy_from_slice(&v.to_le_bytes());
        }
        at += 4 * n;
    }
    &bytes[..total]
}

/// Writes preset `name` as a model directory: config.json and model.safetensors with random
/// weights from `seed` (no tokenizer: copy one in to run text tasks or `serve`).
pub fn save(name: &str, layers: Option<usize>, seed: u64, dir: &Path) -> Result<()> {
    let config = config(name, layers)?;
    let spec = match &config {
        ModelConfig::Bert(c) => bert_tensors(c),
        ModelConfig::Gpt2(c) => gpt2_tensors(c),
        ModelConfig::T5(c) => t5_tensors(c),
    };
    let (_, json) = PRESETS
        .iter()
        .find(|(n, _)| *n == name)
        .with_context(|| format!("no preset {name}"))?;
    let mut json: serde_json::Value = serde_json::from_str(json)?;
    if let Some(l) = layers {
        for key in [
            "num_hidden_layers",
            "n_layer",
            "num_layers",
            "num_decoder_layers",
        ] {
            if json.get(key).is_some() {
                json[key] = l.into();
            }
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let write = |file: &str, bytes: &[u8]| {
        std::fs::write(dir.join(file), bytes)
            .with_context(|| format!("writing {}", dir.join(file).display()))
    };
    write(
        "config.json",
        serde_json::to_string_pretty(&json)?.as_bytes(),
    )?;
    write("model.safetensors", random_safetensors(&spec, seed))?;
    Ok(())
}

/// Builds preset `name` with random weights from `seed`.
pub fn load(name: &str, layers: Option<usize>, seed: u64) -> Result<Model> {
    let config = config(name, layers)?;
    let spec = match &config {
        ModelConfig::Bert(c) => bert_tensors(c),
        ModelConfig::Gpt2(c) => gpt2_tensors(c),
        ModelConfig::T5(c) => t5_tensors(c),
    };
    let label = format!("<preset {name}>/model.safetensors");
    let weights = Weights::from_static(random_safetensors(&spec, seed), &label)
        .with_context(|| format!("building the random weights of preset {name}"))?;
    // No directory exists: the frontends only look into it for optional files
    // (sentence-transformers' modules.json), which a preset does not have.
    let dir = Path::new("<preset>").join(name);
    Ok(Model::from_parts(&dir, config, &weights)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_config_parses() {
        for (name, _) in PRESETS {
            config(name, None).unwrap_or_else(|e| panic!("{name}: {e:#}"));
            config(name, Some(1)).unwrap();
        }
    }

    #[test]
    fn one_layer_presets_build_every_entry() {
        for (name, entries) in [
            ("bert-base", "embed, encode"),
            ("gpt2", "batch_step, forward, step"),
            ("t5-small", "batch_step, cross_kv, decode, encode, step"),
        ] {
            let m = load(name, Some(1), 7).unwrap_or_else(|e| panic!("{name}: {e:#}"));
            assert_eq!(m.entry_names(), entries);
        }
    }

    #[test]
    fn normalish_values_are_centred_and_bounded() {
        let mut r = Rng::new(3);
        let xs: Vec<f32> = (0..100_000).map(|_| r.normalish()).collect();
        let mean = xs.iter().sum::<f32>() / xs.len() as f32;
        let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>() / xs.len() as f32;
        assert!(mean.abs() < 0.02, "mean {mean}");
        assert!((var - 1.0).abs() < 0.05, "variance {var}");
        assert!(xs.iter().all(|x| x.abs() <= 2.0 * 3.0f32.sqrt()));
    }
}
