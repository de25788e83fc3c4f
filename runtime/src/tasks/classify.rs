//! `classify`: a label and per-label scores for each text.

use super::{abbreviate, Session};
use crate::cli::ClassifyArgs;
use crate::sampling::{argmax, softmax};
use crate::ModelInfo;
use anyhow::Result;
use std::io::Write;

pub fn run(s: &mut Session, a: &ClassifyArgs, out: &mut dyn Write) -> Result<()> {
    let ModelInfo::Bert {
        labels: Some(labels),
        problem_type,
        ..
    } = s.info.clone()
    else {
        anyhow::bail!("this model has no classification head");
    };
    let logits = s.run_bert_rows("encode", "logits", &a.texts)?;
    let mut results = vec![];
    for row in &logits {
        let scores: Vec<f32> = match problem_type.as_str() {
            "multi_label_classification" => row.iter().map(|&x| 1.0 / (1.0 + (-x).exp())).collect(),
            "regression" => row.clone(),
            _ => softmax(row),
        };
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
        for (t, r) in a.texts.iter().zip(&results) {
            let score = r["scores"][r["label"].as_str().unwrap_or("")]
                .as_f64()
                .unwrap_or(0.0);
            writeln!(
                out,
                "{:<42} {} ({score:.4})",
                abbreviate(t),
                r["label"].as_str().unwrap_or("")
            )?;
        }
    }
    Ok(())
}
