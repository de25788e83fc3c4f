//! `generate`: GPT-2 continues the prompt; T5 reads the prompt with its encoder and decodes
//! from `decoder_start_token_id`. Both run one `step` per token over a KV cache.

use super::decode::Decoder;
use super::Session;
use crate::cli::GenerateArgs;
use crate::sampling::{pick, Rng, Sampling};
use crate::tokenize::Encoding;
use crate::{ModelInfo, Tensor};
use anyhow::{bail, Result};
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
    let mut prompt = s.encode(&a.prompt)?;
    if prompt.ids.is_empty() {
        // As Hugging Face's text-generation pipeline: a prompt of no tokens (GPT-2's empty
        // text) starts from the model's bos_token_id. Whitespace is a prompt like any other
        // (GPT-2's " " is one token; T5's every prompt ends in its </s>).
        let Some(bos) = s.info.bos_token_id() else {
            bail!(
                "--prompt {:?} gives no tokens, and the model has no bos_token_id (config.json, \
                 or generation_config.json where there is one) to start from instead: give the \
                 text to start from",
                a.prompt
            );
        };
        let token = s.tokenizer.id_to_token(bos).unwrap_or_default();
        prompt = Encoding {
            ids: vec![bos],
            tokens: vec![token],
            type_ids: vec![0],
            truncated: false,
        };
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

    let info = s.info.clone();
    let prompt_t = Tensor::i64(vec![1, prompt_ids.len()], prompt_ids.clone());
    let mut decoder = Decoder::new(s.engine.as_mut(), &info, &prompt_t)?;
    let mut next = decoder.first_tokens(&info, &prompt_t);
    while new_ids.len() < a.max_new_tokens {
        // GPT-2's learned positions end; T5's relative ones do not.
        if let ModelInfo::Gpt2 { max_positions, .. } = info {
            if decoder.cached() + next.shape()[1] > max_positions {
                eprintln!("note: stopped at the model's limit of {max_positions} positions");
                break;
            }
        }
        let logits = decoder.step(s.engine.as_mut(), &next)?;
        let id = pick(logits.as_f32().unwrap_or(&[]), &sampling, &mut rng, allowed) as i64;
        new_ids.push(id);
        stream.show(&text_of(s, &new_ids)?, out)?;
        if info.stops_at(id) {
            break;
        }
        next = Tensor::i64(vec![1, 1], vec![id]);
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
