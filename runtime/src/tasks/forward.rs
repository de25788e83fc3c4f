//! `forward`: token ids from a JSON file in, the model's output tensors out as safetensors.

use super::decode::{named, step_inputs};
use super::Session;
use crate::cli::ForwardArgs;
use crate::kv_cache::KvCache;
use crate::{ModelInfo, Outputs, Tensor};
use anyhow::{bail, Context, Result};
use safetensors::tensor::{Dtype, TensorView};
use serde_json::Value;
use std::io::Write;
use std::path::Path;

/// Reads `key` of the input JSON as a rectangular batch of integer rows.
fn batch_of(doc: &Value, key: &str, path: &Path) -> Result<Option<Vec<Vec<i64>>>> {
    let Some(v) = doc.get(key) else {
        return Ok(None);
    };
    let bad = |what: String| anyhow::anyhow!("{}: {key}: {what}", path.display());
    let rows = v
        .as_array()
        .ok_or_else(|| bad("expected a list of lists of integers".into()))?;
    if rows.is_empty() {
        return Err(bad("expected at least one sequence".into()));
    }
    let mut out = Vec::with_capacity(rows.len());
    for (i, r) in rows.iter().enumerate() {
        let r = r
            .as_array()
            .ok_or_else(|| bad(format!("row {i} is not a list of integers")))?;
        let ids = r
            .iter()
            .enumerate()
            .map(|(j, x)| {
                x.as_i64()
                    .ok_or_else(|| bad(format!("element [{i}][{j}] is {x}, not an integer")))
            })
            .collect::<Result<Vec<i64>>>()?;
        out.push(ids);
    }
    let width = out[0].len();
    if let Some((i, r)) = out.iter().enumerate().find(|(_, r)| r.len() != width) {
        return Err(bad(format!(
            "row {i} has {} elements but row 0 has {width}; pad the batch to one length",
            r.len()
        )));
    }
    if width == 0 {
        return Err(bad("sequences are empty".into()));
    }
    Ok(Some(out))
}

fn check_ids(rows: &[Vec<i64>], vocab: usize, key: &str, path: &Path) -> Result<()> {
    for (i, r) in rows.iter().enumerate() {
        if let Some((j, id)) = r
            .iter()
            .enumerate()
            .find(|(_, &id)| id < 0 || id as usize >= vocab)
        {
            bail!(
                "{}: {key}[{i}][{j}] = {id} is outside the vocabulary (0..{vocab})",
                path.display()
            );
        }
    }
    Ok(())
}

fn check_shape(rows: &[Vec<i64>], ids: &[Vec<i64>], key: &str, path: &Path) -> Result<()> {
    if rows.len() != ids.len() || rows[0].len() != ids[0].len() {
        bail!(
            "{}: {key} is [{}, {}] but input_ids is [{}, {}]",
            path.display(),
            rows.len(),
            rows[0].len(),
            ids.len(),
            ids[0].len()
        );
    }
    Ok(())
}

fn check_mask(rows: &[Vec<i64>], ids: &[Vec<i64>], key: &str, path: &Path) -> Result<()> {
    check_shape(rows, ids, key, path)?;
    if rows.iter().flatten().any(|&m| m != 0 && m != 1) {
        bail!("{}: {key} must hold only 0 and 1", path.display());
    }
    Ok(())
}

pub fn run(s: &mut Session, a: &ForwardArgs, out: &mut dyn Write) -> Result<()> {
    let path = &a.input;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let doc: Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: not valid JSON", path.display()))?;
    let outputs = outputs(s, &doc, path)?;
    write_safetensors(&outputs, &a.output)?;
    let names: Vec<String> = outputs.iter().map(|(k, v)| format!("{k} {v}")).collect();
    writeln!(out, "wrote {}: {}", a.output.display(), names.join(", "))?;
    Ok(())
}

/// The `forward` outputs for an input document (`{"input_ids": [[..]], ..}`); `path` names
/// where it came from in error messages (a file, or a server's request).
pub fn outputs(s: &mut Session, doc: &Value, path: &Path) -> Result<Outputs> {
    if !doc.is_object() {
        bail!(
            "{}: expected a JSON object with \"input_ids\"",
            path.display()
        );
    }
    let ids = batch_of(doc, "input_ids", path)?.ok_or_else(|| {
        anyhow::anyhow!(
            "{}: missing \"input_ids\" (a list of lists of token ids)",
            path.display()
        )
    })?;
    let (b, t) = (ids.len(), ids[0].len());
    s.check_length(t, &format!("{}: input_ids", path.display()))?;
    let mask = batch_of(doc, "attention_mask", path)?;
    if let Some(m) = &mask {
        check_mask(m, &ids, "attention_mask", path)?;
    }
    let mask = Tensor::i64_rows(&mask.unwrap_or_else(|| vec![vec![1; t]; b]));
    let ids_t = Tensor::i64_rows(&ids);

    let outputs: Outputs = match s.info.clone() {
        ModelInfo::Bert {
            type_vocab_size, ..
        } => {
            check_ids(&ids, s.info.vocab_size(), "input_ids", path)?;
            let types = batch_of(doc, "token_type_ids", path)?;
            if let Some(tt) = &types {
                check_shape(tt, &ids, "token_type_ids", path)?;
                check_ids(tt, type_vocab_size, "token_type_ids", path)?;
            }
            let types = Tensor::i64_rows(&types.unwrap_or_else(|| vec![vec![0; t]; b]));
            s.run_bert("encode", &(ids_t, types, mask))?
        }
        ModelInfo::Gpt2 {
            layers,
            hidden_size,
            ..
        } => {
            check_ids(&ids, s.info.vocab_size(), "input_ids", path)?;
            let cache = KvCache::new(layers, b, hidden_size);
            let inputs = step_inputs(&ids_t, &mask, &cache, None);
            let mut o = s.engine.run("forward", &named(&inputs))?;
            o.retain(|k, _| k == "logits" || k == "last_hidden_state");
            o
        }
        ModelInfo::T5 {
            decoder_layers,
            kv_width,
            ..
        } => {
            check_ids(&ids, s.info.vocab_size(), "input_ids", path)?;
            let enc = s.engine.run(
                "encode",
                &[("input_ids", &ids_t), ("attention_mask", &mask)],
            )?;
            let mut result = Outputs::new();
            let hidden = enc["encoder_last_hidden_state"].clone();
            if let Some(dec) = batch_of(doc, "decoder_input_ids", path)? {
                if dec.len() != b {
                    bail!(
                        "{}: decoder_input_ids has {} rows but input_ids has {b}",
                        path.display(),
                        dec.len()
                    );
                }
                check_ids(&dec, s.info.vocab_size(), "decoder_input_ids", path)?;
                s.check_length(
                    dec[0].len(),
                    &format!("{}: decoder_input_ids", path.display()),
                )?;
                let dec_t = Tensor::i64_rows(&dec);
                let cross = s
                    .engine
                    .run("cross_kv", &[("encoder_hidden_states", &hidden)])?;
                let cache = KvCache::new(decoder_layers, b, kv_width);
                let inputs = step_inputs(&dec_t, &mask, &cache, Some(&cross));
                let mut o = s.engine.run("decode", &named(&inputs))?;
                result.insert(
                    "logits".into(),
                    o.remove("logits").context("decode returned no logits")?,
                );
            }
            result.insert("encoder_last_hidden_state".into(), hidden);
            result
        }
    };
    Ok(outputs)
}

/// Writes F32 tensors to a safetensors file.
pub fn write_safetensors(tensors: &Outputs, path: &Path) -> Result<()> {
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .iter()
        .map(|(k, t)| {
            let data = t.as_f32().context("only f32 outputs are written")?;
            Ok((
                k.clone(),
                data.iter().flat_map(|v| v.to_le_bytes()).collect(),
                t.shape().to_vec(),
            ))
        })
        .collect::<Result<_>>()?;
    let views: Vec<(String, TensorView)> = bytes
        .iter()
        .map(|(k, b, shape)| Ok((k.clone(), TensorView::new(Dtype::F32, shape.clone(), b)?)))
        .collect::<Result<_>>()?;
    safetensors::serialize_to_file(views, None, path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
