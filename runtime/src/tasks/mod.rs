//! The tasks: text in, model run through an [`Engine`], results out (text, or one JSON object
//! per line with `--json`).

mod classify;
pub mod decode;
mod embed;
mod fill_mask;
pub mod forward;
mod generate;
mod rerank;

use crate::cli::{Task, TokenizeArgs};
use crate::tokenize::{Encoding, Tokenizer};
use crate::{Engine, ModelInfo, Tensor};
use anyhow::{bail, Context, Result};
use std::io::Write;

/// One input sequence: a text, or a (first, second) sentence pair.
#[derive(Clone, Copy, Debug)]
pub enum Input<'a> {
    Single(&'a str),
    Pair(&'a str, &'a str),
}

impl Input<'_> {
    /// How error messages name the input.
    pub fn describe(&self) -> String {
        match self {
            Input::Single(t) => format!("text {:?}", abbreviate(t)),
            Input::Pair(a, b) => format!("pair ({:?}, {:?})", abbreviate(a), abbreviate(b)),
        }
    }
}

/// How many tokens an input may have, and what happens to a longer one.
pub struct Limit {
    pub max: usize,
    /// Cut longer inputs `longest_first`, as Hugging Face's `truncation=True` does.
    pub truncate: bool,
    /// The limit as the error message states it ("this model takes at most 64 positions").
    pub says: String,
    /// Appended to the error message: what to do about it.
    pub hint: &'static str,
}

/// Runs `task` if it needs only the tokenizer (tokenize), so that callers skip loading
/// weights and building an engine; returns whether it ran.
pub fn run_without_weights(
    task: &Task,
    tokenizer: &Tokenizer,
    out: &mut dyn Write,
) -> Result<bool> {
    match task {
        Task::Tokenize(a) => tokenize(tokenizer, a, out).map(|()| true),
        _ => Ok(false),
    }
}

fn tokenize(tokenizer: &Tokenizer, a: &TokenizeArgs, out: &mut dyn Write) -> Result<()> {
    let enc = tokenizer.encode(&a.text)?;
    if a.json {
        let v = serde_json::json!({"ids": enc.ids, "tokens": enc.tokens});
        writeln!(out, "{v}")?;
    } else {
        for (id, tok) in enc.ids.iter().zip(&enc.tokens) {
            writeln!(out, "{id:>8}  {tok}")?;
        }
    }
    Ok(())
}

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
            let needs = match (task, &self.info) {
                (
                    Task::Rerank(_),
                    ModelInfo::Bert {
                        labels: Some(l), ..
                    },
                ) => format!(
                    " (rerank needs a cross-encoder, a sequence classifier with one label; this \
                     one has {} labels: {})",
                    l.len(),
                    l.join(", ")
                ),
                (Task::Rerank(_), _) => {
                    " (rerank needs a cross-encoder, a sequence classifier with one label)".into()
                }
                (Task::Classify(_), _) => {
                    " (classify needs a sequence-classification or next-sentence head)".into()
                }
                (Task::FillMask(_), _) => " (fill-mask needs a masked-LM head)".into(),
                _ => String::new(),
            };
            bail!(
                "task {} is not supported by this {} model ({}){needs}; it supports: {}",
                task.name(),
                self.info.model_type(),
                self.info.architecture(),
                supported.join(", ")
            );
        }
        match task {
            Task::Tokenize(a) => tokenize(&self.tokenizer, a, out)?,
            Task::Forward(a) => forward::run(self, a, out)?,
            Task::Embed(a) => embed::run(self, a, out)?,
            Task::FillMask(a) => fill_mask::run(self, a, out)?,
            Task::Classify(a) => classify::run(self, a, out)?,
            Task::Rerank(a) => rerank::run(self, a, out)?,
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

    /// Tokenizes every input, checked against the model's vocabulary and `limit`: an input
    /// longer than the limit is truncated `longest_first` when the limit says so, else an
    /// error. Returns the encodings; [`Encoding::truncated`] marks those that were cut.
    pub fn encode_all(&self, inputs: &[Input<'_>], limit: &Limit) -> Result<Vec<Encoding>> {
        let truncating;
        let tokenizer = if limit.truncate {
            truncating = self.tokenizer.truncating(limit.max)?;
            &truncating
        } else {
            &self.tokenizer
        };
        let type_vocab = match &self.info {
            ModelInfo::Bert {
                type_vocab_size, ..
            } => *type_vocab_size,
            _ => 1,
        };
        let mut encs = Vec::with_capacity(inputs.len());
        for input in inputs {
            let enc = match *input {
                Input::Single(t) => tokenizer.encode(t)?,
                Input::Pair(a, b) => tokenizer.encode_pair(a, b)?,
            };
            let what = input.describe();
            if enc.ids.len() > limit.max {
                bail!(
                    "{what} has {} tokens, but {}{}",
                    enc.ids.len(),
                    limit.says,
                    limit.hint
                );
            }
            self.check_vocab(&enc, &what)?;
            if let Some(t) = enc
                .type_ids
                .iter()
                .find(|&&t| t < 0 || t as usize >= type_vocab)
            {
                bail!(
                    "{what}: the tokenizer gives segment id {t}, but the model has {type_vocab} \
                     (type_vocab_size in config.json): it cannot read sentence pairs"
                );
            }
            encs.push(enc);
        }
        Ok(encs)
    }

    /// The limit of the model's positions, truncating or not; `hint` ends the error message.
    pub fn positions_limit(&self, truncate: bool, hint: &'static str) -> Limit {
        let max = self.info.max_positions();
        Limit {
            max,
            truncate,
            says: format!("this model takes at most {max} positions"),
            hint,
        }
    }

    /// Tokenizes texts into a right-padded batch: (input_ids, token_type_ids, attention_mask).
    pub fn batch(&self, texts: &[String]) -> Result<(Tensor, Tensor, Tensor)> {
        let inputs: Vec<Input> = texts.iter().map(|t| Input::Single(t)).collect();
        let encs = self.encode_all(&inputs, &self.positions_limit(false, ""))?;
        Ok(self.pad(&encs))
    }

    /// Encodings as a right-padded batch: (input_ids, token_type_ids, attention_mask).
    pub fn pad(&self, encs: &[Encoding]) -> (Tensor, Tensor, Tensor) {
        let pad = self.pad_id();
        let width = encs.iter().map(|e| e.ids.len()).max().unwrap_or(0);
        let mut ids = vec![];
        let mut types = vec![];
        let mut mask = vec![];
        for e in encs {
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
        (
            Tensor::i64(shape.clone(), ids),
            Tensor::i64(shape.clone(), types),
            Tensor::i64(shape, mask),
        )
    }

    /// Runs a BERT `entry` whose output `name` has one row per sequence (pooled embeddings,
    /// classifier logits) and returns each encoding's row. Encodings of equal length share a
    /// batch and nothing is padded: padding changes nothing in these outputs, so the padded
    /// positions' work is skipped altogether.
    pub fn run_bert_rows(
        &mut self,
        entry: &str,
        name: &str,
        encs: &[Encoding],
    ) -> Result<Vec<Vec<f32>>> {
        let mut by_len: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
        for (i, e) in encs.iter().enumerate() {
            by_len.entry(e.ids.len()).or_default().push(i);
        }
        let mut rows_out: Vec<Vec<f32>> = vec![vec![]; encs.len()];
        for group in by_len.values() {
            let part: Vec<Encoding> = group.iter().map(|&i| encs[i].clone()).collect();
            let batch = self.pad(&part);
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
    let width = *t.shape().last().unwrap_or(&0);
    t.as_f32()
        .unwrap_or(&[])
        .chunks(width.max(1))
        .map(|r| r.to_vec())
        .collect()
}
