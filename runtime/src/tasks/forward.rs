//! `forward`: token ids from a JSON file in, the model's output tensors out as safetensors.

use super::decode::{named, step_inputs};
use super::{check_length, Session};
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

/// The validated contents of forward's input JSON: `[B, T]` rows, every id inside the
/// model's vocabulary and every sequence within its positions.
#[derive(Clone, Debug, PartialEq)]
pub struct ForwardInput {
    pub input_ids: Tensor,
    /// All ones when the file gives no `attention_mask`.
    pub attention_mask: Tensor,
    /// BERT only; zeros when absent.
    pub token_type_ids: Option<Tensor>,
    /// T5 only, when given: the decoder is run on them.
    pub decoder_input_ids: Option<Tensor>,
}

impl ForwardInput {
    /// Parses and checks the input JSON `text` for a model described by `info`; `path` is
    /// only used in errors.
    pub fn parse(text: &[u8], path: &Path, info: &ModelInfo) -> Result<ForwardInput> {
        let doc: Value = serde_json::from_slice(text)
            .with_context(|| format!("{}: not valid JSON", path.display()))?;
        if !doc.is_object() {
            bail!(
                "{}: expected a JSON object with \"input_ids\"",
                path.display()
            );
        }
        let ids = batch_of(&doc, "input_ids", path)?.ok_or_else(|| {
            anyhow::anyhow!(
                "{}: missing \"input_ids\" (a list of lists of token ids)",
                path.display()
            )
        })?;
        let (b, t) = (ids.len(), ids[0].len());
        check_length(info, t, &format!("{}: input_ids", path.display()))?;
        let mask = batch_of(&doc, "attention_mask", path)?;
        if let Some(m) = &mask {
            check_mask(m, &ids, "attention_mask", path)?;
        }
        check_ids(&ids, info.vocab_size(), "input_ids", path)?;
        let mut token_type_ids = None;
        let mut decoder_input_ids = None;
        match info {
            ModelInfo::Bert {
                type_vocab_size, ..
            } => {
                let types = batch_of(&doc, "token_type_ids", path)?;
                if let Some(tt) = &types {
                    check_shape(tt, &ids, "token_type_ids", path)?;
                    check_ids(tt, *type_vocab_size, "token_type_ids", path)?;
                }
                token_type_ids = Some(Tensor::i64_rows(
                    &types.unwrap_or_else(|| vec![vec![0; t]; b]),
                ));
            }
            ModelInfo::Gpt2 { .. } => {}
            ModelInfo::T5 { .. } => {
                if let Some(dec) = batch_of(&doc, "decoder_input_ids", path)? {
                    if dec.len() != b {
                        bail!(
                            "{}: decoder_input_ids has {} rows but input_ids has {b}",
                            path.display(),
                            dec.len()
                        );
                    }
                    check_ids(&dec, info.vocab_size(), "decoder_input_ids", path)?;
                    check_length(
                        info,
                        dec[0].len(),
                        &format!("{}: decoder_input_ids", path.display()),
                    )?;
                    decoder_input_ids = Some(Tensor::i64_rows(&dec));
                }
            }
        }
        Ok(ForwardInput {
            input_ids: Tensor::i64_rows(&ids),
            attention_mask: Tensor::i64_rows(&mask.unwrap_or_else(|| vec![vec![1; t]; b])),
            token_type_ids,
            decoder_input_ids,
        })
    }
}

pub fn run(s: &mut Session, a: &ForwardArgs, out: &mut dyn Write) -> Result<()> {
    let path = &a.input;
    let text = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let input = ForwardInput::parse(&text, path, &s.info)?;
    let outputs = run_input(s, &input)?;
    write_safetensors(&outputs, &a.output)?;
    let names: Vec<String> = outputs.iter().map(|(k, v)| format!("{k} {v}")).collect();
    writeln!(out, "wrote {}: {}", a.output.display(), names.join(", "))?;
    Ok(())
}

/// The `forward` outputs for an input document (`{"input_ids": [[..]], ..}`); `path` names
/// where it came from in error messages (a file, or a server's request).
pub fn outputs(s: &mut Session, doc: &Value, path: &Path) -> Result<Outputs> {
    let text = serde_json::to_vec(doc)?;
    let input = ForwardInput::parse(&text, path, &s.info)?;
    run_input(s, &input)
}

/// Runs the model on checked inputs: the tensors `forward` writes.
pub fn run_input(s: &mut Session, input: &ForwardInput) -> Result<Outputs> {
    let b = input.input_ids.shape()[0];
    let (ids_t, mask) = (&input.input_ids, &input.attention_mask);

    let outputs: Outputs = match s.info.clone() {
        ModelInfo::Bert { .. } => {
            let types = input.token_type_ids.clone().expect("parsed for BERT");
            s.run_bert("encode", &(ids_t.clone(), types, mask.clone()))?
        }
        ModelInfo::Gpt2 {
            layers,
            hidden_size,
            ..
        } => {
            let mut cache = KvCache::new(layers, b, hidden_size);
            let inputs = step_inputs(ids_t, mask, None);
            let mut o = s
                .engine
                .run_cached("forward", &named(&inputs), &mut cache)?;
            o.retain(|k, _| k == "logits" || k == "last_hidden_state");
            o
        }
        ModelInfo::T5 {
            decoder_layers,
            kv_width,
            ..
        } => {
            let enc = s
                .engine
                .run("encode", &[("input_ids", ids_t), ("attention_mask", mask)])?;
            let mut result = Outputs::new();
            let hidden = enc["encoder_last_hidden_state"].clone();
            if let Some(dec_t) = &input.decoder_input_ids {
                let cross = s
                    .engine
                    .run("cross_kv", &[("encoder_hidden_states", &hidden)])?;
                let mut cache = KvCache::new(decoder_layers, b, kv_width);
                let inputs = step_inputs(dec_t, mask, Some(&cross));
                let mut o = s.engine.run_cached("decode", &named(&inputs), &mut cache)?;
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
