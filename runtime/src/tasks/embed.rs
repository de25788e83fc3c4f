//! `embed`: one vector per text, pooled as the model's sentence-transformers config says,
//! from at most `max_seq_length` tokens (sentence_bert_config.json, else the model's
//! positions): sentence-transformers truncates longer texts, and so does this, with a note.

use super::{abbreviate, Input, Limit, Session};
use crate::cli::EmbedArgs;
use anyhow::Result;
use std::io::Write;

pub fn run(s: &mut Session, a: &EmbedArgs, out: &mut dyn Write) -> Result<()> {
    let limit = match s.info.embed_limit() {
        (m, true) => Limit {
            max: m,
            truncate: !a.no_truncate,
            says: format!(
                "this model embeds at most {m} (max_seq_length in sentence_bert_config.json)"
            ),
            hint: " (without --no-truncate it is cut to fit, as sentence-transformers does)",
        },
        (_, false) => s.positions_limit(
            !a.no_truncate,
            " (without --no-truncate it is cut to fit, as sentence-transformers does)",
        ),
    };
    let inputs: Vec<Input> = a.texts.iter().map(|t| Input::Single(t)).collect();
    let encs = s.encode_all(&inputs, &limit)?;
    let cut = encs.iter().filter(|e| e.truncated).count();
    if cut > 0 {
        eprintln!(
            "note: embed truncated {cut} of {} texts to {} tokens, as sentence-transformers \
             does (--no-truncate makes this an error)",
            encs.len(),
            limit.max
        );
    }
    let e = s.run_bert_rows("embed", "embeddings", &encs)?;
    if a.json {
        writeln!(out, "{}", serde_json::json!({ "embeddings": e }))?;
        return Ok(());
    }
    for (t, v) in a.texts.iter().zip(&e) {
        let head: Vec<String> = v.iter().take(6).map(|x| format!("{x:.4}")).collect();
        writeln!(
            out,
            "{:<42} [{}, ...] ({} dims)",
            abbreviate(t),
            head.join(", "),
            v.len()
        )?;
    }
    if e.len() > 1 {
        writeln!(out, "\ncosine similarity:")?;
        for (i, u) in e.iter().enumerate() {
            let sims: Vec<String> = e.iter().map(|v| format!("{:6.3}", cosine(u, v))).collect();
            writeln!(out, "  [{i}] {}", sims.join(" "))?;
        }
    }
    Ok(())
}

pub fn cosine(u: &[f32], v: &[f32]) -> f32 {
    let dot: f64 = u.iter().zip(v).map(|(a, b)| *a as f64 * *b as f64).sum();
    let nu: f64 = u.iter().map(|a| (*a as f64).powi(2)).sum::<f64>().sqrt();
    let nv: f64 = v.iter().map(|a| (*a as f64).powi(2)).sum::<f64>().sqrt();
    (dot / (nu * nv).max(1e-12)) as f32
}
