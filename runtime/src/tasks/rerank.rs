//! `rerank`: documents ordered by a cross-encoder's relevance to a query. Each (query,
//! document) pair is one sentence pair, truncated `longest_first` to the model's positions;
//! the score is sigmoid(logit), as sentence-transformers' CrossEncoder and
//! text-embeddings-inference's `/rerank` report a one-label model.

use super::{abbreviate, Input, Session};
use crate::cli::RerankArgs;
use anyhow::{bail, Result};
use std::io::Write;

pub fn run(s: &mut Session, a: &RerankArgs, out: &mut dyn Write) -> Result<()> {
    if !s.info.is_cross_encoder() {
        bail!("rerank needs a cross-encoder: a sequence classifier with one label");
    }
    // Always a pair, an empty document too: CrossEncoder tokenizes the batch of pairs
    // (`tokenizer(queries, docs)`), which keeps an empty second text and its [SEP].
    let inputs: Vec<Input> = a.docs.iter().map(|d| Input::Pair(&a.query, d)).collect();
    let encs = s.encode_all(&inputs, &s.positions_limit(true, ""))?;
    let logits = s.run_bert_rows("encode", "logits", &encs)?;
    let mut ranked: Vec<(usize, f32, f32)> = logits
        .iter()
        .enumerate()
        .map(|(i, row)| {
            let logit = row[0];
            let score = (1.0 / (1.0 + (-(logit as f64)).exp())) as f32;
            (i, score, logit)
        })
        .collect();
    // Highest score first; ties keep the documents' order (a stable sort).
    ranked.sort_by(|x, y| y.1.total_cmp(&x.1));
    ranked.truncate(a.top_n.unwrap_or(ranked.len()));
    if a.json {
        let results: Vec<serde_json::Value> = ranked
            .iter()
            .map(|&(index, score, logit)| {
                serde_json::json!({"index": index, "score": score, "logit": logit})
            })
            .collect();
        writeln!(out, "{}", serde_json::json!({ "results": results }))?;
    } else {
        for &(i, score, logit) in &ranked {
            writeln!(
                out,
                "{score:>8.4}  [{i}] {:<42} (logit {logit:.4})",
                abbreviate(&a.docs[i])
            )?;
        }
    }
    Ok(())
}
