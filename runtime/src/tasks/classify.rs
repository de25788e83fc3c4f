//! `classify`: a label and per-label scores for each text or sentence pair, from a
//! sequence-classification head or, for pairs, a next-sentence head.

use super::{abbreviate, Input, Session};
use crate::cli::ClassifyArgs;
use crate::sampling::{argmax, label_scores};
use crate::ModelInfo;
use anyhow::{bail, Result};
use std::io::Write;

/// Hugging Face's next-sentence head: index 0 means the second text follows the first.
const NSP_LABELS: [&str; 2] = ["is_next", "not_next"];

pub fn run(s: &mut Session, a: &ClassifyArgs, out: &mut dyn Write) -> Result<()> {
    let ModelInfo::Bert {
        architecture,
        labels,
        problem_type,
        has_nsp,
        ..
    } = s.info.clone()
    else {
        bail!("classify needs a BERT model");
    };
    // The classifier's logits, or the next-sentence head's when there is no classifier.
    let (output, labels, problem_type) = match labels {
        Some(l) => ("logits", l, problem_type),
        None if has_nsp => {
            if !a.pairs {
                bail!(
                    "this {architecture} has only a next-sentence head, which classifies \
                     sentence pairs: pass --pairs with the texts two at a time (first, second)"
                );
            }
            let l = NSP_LABELS.map(String::from).to_vec();
            ("nsp_logits", l, "single_label_classification".to_string())
        }
        None => bail!("this model has no classification or next-sentence head"),
    };
    if a.pairs && !a.texts.len().is_multiple_of(2) {
        bail!(
            "--pairs takes the texts two at a time as (first, second) pairs, but {} texts were \
             given: the last one has no partner",
            a.texts.len()
        );
    }
    let inputs: Vec<Input> = if a.pairs {
        // As `tokenizer(first, second)` and the text-classification pipeline, which test the
        // second text for truth as Python does: an empty second text is no second text, and
        // the pair encodes as the first text alone ([CLS] first [SEP]).
        a.texts
            .chunks(2)
            .map(|p| match p[1].as_str() {
                "" => Input::Single(&p[0]),
                second => Input::Pair(&p[0], second),
            })
            .collect()
    } else {
        a.texts.iter().map(|t| Input::Single(t)).collect()
    };
    let limit = s.positions_limit(a.truncate, " (pass --truncate to cut it to fit)");
    let encs = s.encode_all(&inputs, &limit)?;
    let logits = s.run_bert_rows("encode", output, &encs)?;
    let mut results = vec![];
    for row in &logits {
        let scores = label_scores(&problem_type, row);
        let best = argmax(row);
        let map: serde_json::Map<String, serde_json::Value> = labels
            .iter()
            .zip(&scores)
            .map(|(l, &v)| (l.clone(), serde_json::json!(v)))
            .collect();
        results.push(serde_json::json!({"label": labels[best], "scores": map}));
    }
    if a.json {
        writeln!(out, "{}", serde_json::json!({ "results": results }))?;
    } else {
        for (input, r) in inputs.iter().zip(&results) {
            let shown = match *input {
                Input::Single(t) => abbreviate(t),
                Input::Pair(x, y) => format!("{} | {}", abbreviate(x), abbreviate(y)),
            };
            let score = r["scores"][r["label"].as_str().unwrap_or("")]
                .as_f64()
                .unwrap_or(0.0);
            writeln!(
                out,
                "{shown:<42} {} ({score:.4})",
                r["label"].as_str().unwrap_or("")
            )?;
        }
    }
    Ok(())
}
