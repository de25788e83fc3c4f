//! `generate`: GPT-2 continues the prompt; T5 reads the prompt with its encoder and decodes
//! from `decoder_start_token_id`. Both run one `step` per token over a KV cache.

use super::Session;
use crate::cli::GenerateArgs;
use crate::kv_cache::KvCache;
use crate::sampling::{pick, Rng, Sampling};
use crate::{ModelInfo, Tensor};
use anyhow::{bail, Context, Result};
use std::io::Write;

fn sampling_of(a: &GenerateArgs) -> Result<Sampling> {
    if a.temperature.is_none() && a.top_k.is_none() && a.top_p.is_none() && a.seed.is_none() {
        return Ok(Sampling::Greedy);
    }
    let temperature = a.temperature.unwrap_or(1.0);
    if !(temperature > 0.0 && temperature.is_finite()) {
        bail!("--temperature must be a positive number, got {temperature}");
    }
    let top_p = a.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        bail!("--top-p must be in (0, 1], got {top_p}");
    }
    Ok(Sampling::Sample {
        temperature,
        top_k: a.top_k.unwrap_or(50),
        top_p,
        seed: a.seed.unwrap_or(0),
    })
}

/// Prints generated text as it grows, holding back an incomplete UTF-8 sequence.
struct Streamer {
    printed: String,
    on: bool,
}

impl Streamer {
    fn show(&mut self, text: &str, out: &mut dyn Write) -> Result<()> {
        if !self.on || text.ends_with('\u{FFFD}') {
            return Ok(());
        }
        if let Some(delta) = text.strip_prefix(self.printed.as_str()) {
            write!(out, "{delta}")?;
            out.flush()?;
            self.printed = text.to_string();
        }
        Ok(())
    }
}

pub fn run(s: &mut Session, a: &GenerateArgs, out: &mut dyn Write) -> Result<()> {
    let sampling = sampling_of(a)?;
    if a.prompt.trim().is_empty() {
        bail!("--prompt is empty: give the text to start from");
    }
    let prompt = s.encode(&a.prompt)?;
    if prompt.ids.is_empty() {
        bail!("--prompt {:?} gives no tokens", a.prompt);
    }
    s.check_length(prompt.ids.len(), "the prompt")?;
    s.check_vocab(&prompt, "the prompt")?;
    let prompt_ids = prompt.ids;
    let mut rng = Rng::new(if let Sampling::Sample { seed, .. } = sampling {
        seed
    } else {
        0
    });
    // Ids past the tokenizer's vocabulary (T5 pads its embedding) cannot be turned into text.
    let decodable = s.tokenizer.vocab_size() as i64;
    let allowed = (decodable as usize).min(s.info.vocab_size());
    let mut stream = Streamer {
        printed: String::new(),
        on: !a.json,
    };
    let mut new_ids: Vec<i64> = vec![];
    let text_of = |s: &Session, ids: &[i64]| -> Result<String> {
        let ids: Vec<i64> = ids.iter().copied().filter(|&i| i < decodable).collect();
        Ok(s.tokenizer.decode(&ids)?)
    };
    if !a.json {
        if let ModelInfo::Gpt2 { .. } = s.info {
            write!(out, "{}", a.prompt)?;
        }
    }

    match s.info.clone() {
        ModelInfo::Gpt2 {
            layers,
            hidden_size,
            eos_token_id,
            max_positions,
            ..
        } => {
            let mut cache = KvCache::new(layers, 1, hidden_size);
            let mut next = prompt_ids.clone();
            while new_ids.len() < a.max_new_tokens {
                let total = cache.len() + next.len();
                if total > max_positions {
                    eprintln!("note: stopped at the model's limit of {max_positions} positions");
                    break;
                }
                let ids = Tensor::i64(vec![1, next.len()], next.clone());
                let mask = Tensor::i64(vec![1, total], vec![1; total]);
                let mut inputs: Vec<(String, &Tensor)> =
                    vec![("input_ids".into(), &ids), ("attention_mask".into(), &mask)];
                inputs.extend(cache.inputs());
                let named: Vec<(&str, &Tensor)> =
                    inputs.iter().map(|(n, t)| (n.as_str(), *t)).collect();
                let mut o = s.engine.run("step", &named)?;
                let logits = o.remove("logits").context("step returned no logits")?;
                cache.update(&mut o)?;
                let id = pick(logits.as_f32().unwrap_or(&[]), &sampling, &mut rng, allowed) as i64;
                new_ids.push(id);
                stream.show(&text_of(s, &new_ids)?, out)?;
                if Some(id) == eos_token_id {
                    break;
                }
                next = vec![id];
            }
        }
        ModelInfo::T5 {
            decoder_layers,
            kv_width,
            decoder_start_token_id,
            eos_token_id,
            ..
        } => {
            let n = prompt_ids.len();
            let ids = Tensor::i64(vec![1, n], prompt_ids.clone());
            let mask = Tensor::i64(vec![1, n], vec![1; n]);
            let enc = s
                .engine
                .run("encode", &[("input_ids", &ids), ("attention_mask", &mask)])?;
            let hidden = enc
                .get("encoder_last_hidden_state")
                .context("encode returned no hidden states")?;
            let cross = s
                .engine
                .run("cross_kv", &[("encoder_hidden_states", hidden)])?;
            let mut cache = KvCache::new(decoder_layers, 1, kv_width);
            let mut next = decoder_start_token_id;
            while new_ids.len() < a.max_new_tokens {
                let dec = Tensor::i64(vec![1, 1], vec![next]);
                let mut inputs: Vec<(String, &Tensor)> = vec![
                    ("decoder_input_ids".into(), &dec),
                    ("encoder_attention_mask".into(), &mask),
                ];
                inputs.extend(cache.inputs());
                inputs.extend(cross.iter().map(|(k, v)| (k.clone(), v)));
                let named: Vec<(&str, &Tensor)> =
                    inputs.iter().map(|(n, t)| (n.as_str(), *t)).collect();
                let mut o = s.engine.run("step", &named)?;
                let logits = o.remove("logits").context("step returned no logits")?;
                cache.update(&mut o)?;
                let id = pick(logits.as_f32().unwrap_or(&[]), &sampling, &mut rng, allowed) as i64;
                new_ids.push(id);
                stream.show(&text_of(s, &new_ids)?, out)?;
                if Some(id) == eos_token_id {
                    break;
                }
                next = id;
            }
        }
        ModelInfo::Bert { .. } => bail!("BERT models do not generate text"),
    }
    let text = text_of(s, &new_ids)?;
    if a.json {
        writeln!(
            out,
            "{}",
            serde_json::json!({"prompt_ids": prompt_ids, "new_ids": new_ids, "text": text})
        )?;
    } else {
        // Whatever the stream held back (an unfinished character) goes out now.
        let rest = text.strip_prefix(stream.printed.as_str()).unwrap_or("");
        writeln!(out, "{rest}")?;
    }
    Ok(())
}
