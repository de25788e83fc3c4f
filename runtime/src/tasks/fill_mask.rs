//! `fill-mask`: the most likely tokens at each of the text's mask positions, each mask scored
//! by its own softmax over the vocabulary, as Hugging Face's fill-mask pipeline does.

use super::Session;
use crate::cli::FillMaskArgs;
use crate::sampling::softmax;
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
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
    if positions.is_empty() {
        bail!("the text has no {mask_token} token to fill");
    }
    let o = s.run_bert("encode", &batch)?;
    let logits = o
        .get("mlm_logits")
        .context("encode returned no mlm_logits")?;
    let v = logits.shape()[2];
    let all = logits.as_f32().unwrap_or(&[]);
    let mut masks = vec![];
    for &pos in &positions {
        let row = &all[pos * v..(pos + 1) * v];
        let probs = softmax(row);
        let mut order: Vec<usize> = (0..v).collect();
        order.sort_by(|&x, &y| row[y].total_cmp(&row[x]).then(x.cmp(&y)));
        let mut preds = vec![];
        for &id in order.iter().take(a.top_k) {
            let token = s
                .tokenizer
                .decode_keeping_special(&[id as i64])
                .unwrap_or_default();
            preds.push(json!({"token": token, "id": id, "score": probs[id]}));
        }
        masks.push(json!({"position": pos, "predictions": preds}));
    }
    if a.json {
        // One mask keeps the original shape of the output.
        let v = match masks.as_slice() {
            [one] => json!({ "predictions": one["predictions"] }),
            _ => json!({ "masks": masks }),
        };
        writeln!(out, "{v}")?;
        return Ok(());
    }
    for m in &masks {
        if masks.len() > 1 {
            writeln!(out, "[MASK] at token {}:", m["position"])?;
        }
        for p in m["predictions"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[])
        {
            writeln!(out, "{}", line(p))?;
        }
    }
    Ok(())
}

fn line(p: &Value) -> String {
    format!(
        "{:>8.4}  {:<20} (id {})",
        p["score"].as_f64().unwrap_or(0.0),
        p["token"].as_str().unwrap_or(""),
        p["id"]
    )
}
