//! `fill-mask`: the most likely tokens at the text's mask position.

use super::Session;
use crate::cli::FillMaskArgs;
use crate::sampling::softmax;
use anyhow::{bail, Context, Result};
use std::io::Write;

pub fn run(s: &mut Session, a: &FillMaskArgs, out: &mut dyn Write) -> Result<()> {
    let mask_token = "[MASK]";
    let mask_id = s
        .tokenizer
        .token_to_id(mask_token)
        .context("the tokenizer has no [MASK] token")?;
    let batch = s.batch(std::slice::from_ref(&a.text))?;
    let ids = batch.0.as_i64().unwrap_or(&[]);
    let positions: Vec<usize> = ids
        .iter()
        .enumerate()
        .filter(|(_, &id)| id == mask_id)
        .map(|(i, _)| i)
        .collect();
    let pos = match positions.as_slice() {
        [p] => *p,
        [] => bail!("the text has no {mask_token} token to fill"),
        more => bail!(
            "the text has {} {mask_token} tokens; fill-mask takes exactly one",
            more.len()
        ),
    };
    let o = s.run_bert("encode", &batch)?;
    let logits = o
        .get("mlm_logits")
        .context("encode returned no mlm_logits")?;
    let v = logits.shape[2];
    let row = &logits.as_f32().unwrap_or(&[])[pos * v..(pos + 1) * v];
    let probs = softmax(row);
    let mut order: Vec<usize> = (0..v).collect();
    order.sort_by(|&x, &y| row[y].total_cmp(&row[x]).then(x.cmp(&y)));
    let mut preds = vec![];
    for &id in order.iter().take(a.top_k) {
        let token = s.tokenizer.decode(&[id as i64]).unwrap_or_default();
        preds.push(serde_json::json!({"token": token, "id": id, "score": probs[id]}));
    }
    if a.json {
        writeln!(out, "{}", serde_json::json!({ "predictions": preds }))?;
    } else {
        for p in &preds {
            writeln!(
                out,
                "{:>8.4}  {:<20} (id {})",
                p["score"].as_f64().unwrap_or(0.0),
                p["token"].as_str().unwrap_or(""),
                p["id"]
            )?;
        }
    }
    Ok(())
}
