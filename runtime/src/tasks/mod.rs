//! The tasks: text in, model run through an [`Engine`], results out (text, or one JSON object
//! per line with `--json`).

mod classify;
mod embed;
mod fill_mask;
mod forward;
mod generate;

use crate::cli::Task;
use crate::tokenize::{Encoding, Tokenizer};
use crate::{Engine, ModelInfo, Tensor};
use anyhow::{bail, Context, Result};
use std::io::Write;

/// A model ready to run tasks: what it is, its tokenizer, and the engine that runs it.
pub struct Session {
    pub info: ModelInfo,
    pub tokenizer: Tokenizer,
    pub engine: Box<dyn Engine>,
}

impl Session {
    /// Runs `task`, writing its results to `out`.
    pub fn run(&mut self, task: &Task, out: &mut dyn Write) -> Result<()> {
        let supported = self.info.tasks();
        if !supported.contains(&task.name()) {
            bail!(
                "task {} is not supported by this {} model ({}); it supports: {}",
                task.name(),
                self.info.model_type(),
                self.info.architecture(),
                supported.join(", ")
            );
        }
        match task {
            Task::Tokenize(a) => {
                let enc = self.encode(&a.text)?;
                if a.json {
                    let v = serde_json::json!({"ids": enc.ids, "tokens": enc.tokens});
                    writeln!(out, "{v}")?;
                } else {
                    for (id, tok) in enc.ids.iter().zip(&enc.tokens) {
                        writeln!(out, "{id:>8}  {tok}")?;
                    }
                }
            }
            Task::Forward(a) => forward::run(self, a, out)?,
            Task::Embed(a) => embed::run(self, a, out)?,
            Task::FillMask(a) => fill_mask::run(self, a, out)?,
            Task::Classify(a) => classify::run(self, a, out)?,
            Task::Generate(a) => generate::run(self, a, out)?,
        }
        Ok(())
    }

    pub fn encode(&self, text: &str) -> Result<Encoding> {
        Ok(self.tokenizer.encode(text)?)
    }

    /// Fails when the tokenizer gave an id the model has no embedding for (a tokenizer that
    /// does not belong to the model); the engine would only see an index out of range.
    pub fn check_vocab(&self, enc: &Encoding, what: &str) -> Result<()> {
        let vocab = self.info.vocab_size();
        if let Some((id, token)) = enc
            .ids
            .iter()
            .zip(&enc.tokens)
            .find(|(&id, _)| id < 0 || id as usize >= vocab)
        {
            bail!(
                "{what}: token {token:?} has id {id}, but the model's vocabulary (vocab_size in \
                 config.json) has {vocab} ids: the tokenizer does not match the model"
            );
        }
        Ok(())
    }

    /// Fails when `len` tokens do not fit the model's positions.
    pub fn check_length(&self, len: usize, what: &str) -> Result<()> {
        let max = self.info.max_positions();
        if len > max {
            bail!("{what} has {len} tokens, but this model takes at most {max} positions");
        }
        Ok(())
    }

    /// Tokenizes texts into a right-padded batch: (input_ids, token_type_ids, attention_mask).
    pub fn batch(&self, texts: &[String]) -> Result<(Tensor, Tensor, Tensor)> {
        let encs: Vec<Encoding> = texts
            .iter()
            .map(|t| self.encode(t))
            .collect::<Result<_>>()?;
        for (t, e) in texts.iter().zip(&encs) {
            let what = format!("text {:?}", abbreviate(t));
            self.check_length(e.ids.len(), &what)?;
            self.check_vocab(e, &what)?;
        }
        let pad = self.pad_id();
        let width = encs.iter().map(|e| e.ids.len()).max().unwrap_or(0);
        let mut ids = vec![];
        let mut types = vec![];
        let mut mask = vec![];
        for e in &encs {
            let n = e.ids.len();
            ids.extend(
                e.ids
                    .iter()
                    .copied()
                    .chain(std::iter::repeat_n(pad, width - n)),
            );
            types.extend(
                e.type_ids
                    .iter()
                    .copied()
                    .chain(std::iter::repeat_n(0, width - n)),
            );
            mask.extend(std::iter::repeat_n(1, n).chain(std::iter::repeat_n(0, width - n)));
        }
        let shape = vec![encs.len(), width];
        Ok((
            Tensor::i64(shape.clone(), ids),
            Tensor::i64(shape.clone(), types),
            Tensor::i64(shape, mask),
        ))
    }

    /// Runs a BERT `entry` whose output `name` has one row per sequence (pooled embeddings,
    /// classifier logits) and returns each text's row. Texts of equal token length share a
    /// batch and nothing is padded: padding changes nothing in these outputs, so the padded
    /// positions' work is skipped altogether.
    pub fn run_bert_rows(
        &mut self,
        entry: &str,
        name: &str,
        texts: &[String],
    ) -> Result<Vec<Vec<f32>>> {
        let mut by_len: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
        for (i, t) in texts.iter().enumerate() {
            by_len.entry(self.encode(t)?.ids.len()).or_default().push(i);
        }
        let mut rows_out: Vec<Vec<f32>> = vec![vec![]; texts.len()];
        for group in by_len.values() {
            let part: Vec<String> = group.iter().map(|&i| texts[i].clone()).collect();
            let batch = self.batch(&part)?;
            let o = self.run_bert(entry, &batch)?;
            let t = o
                .get(name)
                .with_context(|| format!("{entry} returned no {name}"))?;
            for (&i, row) in group.iter().zip(rows(t)) {
                rows_out[i] = row;
            }
        }
        Ok(rows_out)
    }

    pub fn pad_id(&self) -> i64 {
        ["[PAD]", "<pad>"]
            .iter()
            .find_map(|t| self.tokenizer.token_to_id(t))
            .unwrap_or(0)
    }

    /// Runs a BERT `entry` on a padded batch.
    pub fn run_bert(
        &mut self,
        entry: &str,
        batch: &(Tensor, Tensor, Tensor),
    ) -> Result<crate::Outputs> {
        let inputs = [
            ("input_ids", &batch.0),
            ("token_type_ids", &batch.1),
            ("attention_mask", &batch.2),
        ];
        self.engine
            .run(entry, &inputs)
            .with_context(|| format!("running {entry}"))
    }
}

pub(crate) fn abbreviate(text: &str) -> String {
    if text.chars().count() > 40 {
        format!("{}...", text.chars().take(40).collect::<String>())
    } else {
        text.to_string()
    }
}

/// Rows of a `[rows, width]` f32 tensor.
pub(crate) fn rows(t: &Tensor) -> Vec<Vec<f32>> {
    let width = *t.shape.last().unwrap_or(&0);
    t.as_f32()
        .unwrap_or(&[])
        .chunks(width.max(1))
        .map(|r| r.to_vec())
        .collect()
}
