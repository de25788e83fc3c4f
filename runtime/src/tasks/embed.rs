//! `embed`: one vector per text, pooled as the model's sentence-transformers config says.

use super::{abbreviate, Session};
use crate::cli::EmbedArgs;
use anyhow::Result;
use std::io::Write;

pub fn run(s: &mut Session, a: &EmbedArgs, out: &mut dyn Write) -> Result<()> {
    let e = s.run_bert_rows("embed", "embeddings", &a.texts)?;
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
