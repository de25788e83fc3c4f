//! Hugging Face text-embeddings-inference style routes: `/embed`, `/predict`, `/tokenize`.
//!
//! `/predict` takes one text, one pair `["a", "b"]`, or a list of either (as in TEI, a list of
//! two texts is one pair: send `[["a"], ["b"]]` or three texts for a batch); a pair is encoded as
//! BERT's `[CLS] a [SEP] b [SEP]` with segment ids 0 then 1 (`Tokenizer::encode_pair`). A
//! `/rerank` route (a query against documents through a one-label cross-encoder) builds on the
//! same pieces: [`Input`] for the pairs and [`classify`] for the scores.

use super::openai::{encode, fit, rows};
use super::{AppState, JsonBody};
use crate::error::ApiError;
use crate::worker::{RowKind, Seq};
use crate::{App, Budget};
use axum::extract::State;
use axum::Json;
use cranformer_runtime::sampling::label_scores;
use cranformer_runtime::ModelInfo;
use serde::Deserialize;
use serde_json::{json, Value};

fn texts(v: &Value, param: &str) -> Result<(Vec<String>, bool), ApiError> {
    match v {
        Value::String(s) => Ok((vec![s.clone()], false)),
        Value::Array(a) if a.is_empty() => Err(ApiError::field(param, "the list is empty")),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .map(|(i, x)| {
                x.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| ApiError::field(&format!("{param}[{i}]"), "expected a string"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|t| (t, true)),
        Value::Null => Err(ApiError::field(param, "missing")),
        _ => Err(ApiError::field(
            param,
            "expected a string or a list of strings",
        )),
    }
}

#[derive(Deserialize)]
pub struct EmbedRequest {
    #[serde(default)]
    inputs: Value,
    #[serde(default = "yes")]
    normalize: bool,
    #[serde(default)]
    truncate: bool,
}

fn yes() -> bool {
    true
}

pub async fn embed(
    State(app): State<AppState>,
    JsonBody(req): JsonBody<EmbedRequest>,
) -> Result<Json<Value>, ApiError> {
    let (texts, _) = texts(&req.inputs, "inputs")?;
    let seqs = texts
        .iter()
        .enumerate()
        .map(|(i, t)| {
            encode(
                &app,
                t,
                &format!("inputs[{i}]"),
                req.truncate,
                Budget::Embedding,
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    // TEI's `normalize: false` gives the pooled vectors as they are, also where the model's
    // pipeline normalises them (sentence-transformers' Normalize module; TEI reads only the
    // pooling config).
    let normalized = matches!(&app.info, ModelInfo::Bert { pooling, .. } if pooling.normalize);
    let kind = if normalized && !req.normalize {
        RowKind::Pooled
    } else {
        RowKind::Embed
    };
    let mut vectors = rows(&app, kind, seqs).await?;
    if req.normalize {
        for v in &mut vectors {
            let norm = v
                .iter()
                .map(|x| (*x as f64).powi(2))
                .sum::<f64>()
                .sqrt()
                .max(1e-12);
            for x in v.iter_mut() {
                *x = (*x as f64 / norm) as f32;
            }
        }
    }
    Ok(Json(json!(vectors)))
}

/// One `/predict` input: a text or a pair of texts.
pub enum Input {
    Text(String),
    Pair(String, String),
}

impl Input {
    /// `inputs`: `"text"`, `["a", "b"]` (one pair), or a list of texts and pairs; the flag says
    /// whether the answer is a list.
    pub fn parse(v: &Value, param: &str) -> Result<(Vec<Input>, bool), ApiError> {
        let one = |x: &Value, at: &str| -> Result<Input, ApiError> {
            match x {
                Value::String(s) => Ok(Input::Text(s.clone())),
                Value::Array(p) if p.len() == 1 && p[0].is_string() => {
                    Ok(Input::Text(p[0].as_str().unwrap_or("").into()))
                }
                Value::Array(p) if p.len() == 2 && p.iter().all(Value::is_string) => {
                    Ok(Input::Pair(
                        p[0].as_str().unwrap_or("").into(),
                        p[1].as_str().unwrap_or("").into(),
                    ))
                }
                _ => Err(ApiError::field(
                    at,
                    "expected a text or a pair [text, text]",
                )),
            }
        };
        match v {
            Value::String(_) => Ok((vec![one(v, param)?], false)),
            Value::Array(a) if a.is_empty() => Err(ApiError::field(param, "the list is empty")),
            Value::Array(a) if a.len() == 2 && a.iter().all(Value::is_string) => {
                Ok((vec![one(v, param)?], false))
            }
            Value::Array(a) => a
                .iter()
                .enumerate()
                .map(|(i, x)| one(x, &format!("{param}[{i}]")))
                .collect::<Result<Vec<_>, _>>()
                .map(|v| (v, true)),
            Value::Null => Err(ApiError::field(param, "missing")),
            _ => Err(ApiError::field(
                param,
                "expected a text, a pair or a list of them",
            )),
        }
    }

    /// The input's tokens; with `truncate`, cut to the positions `longest_first` (TEI's
    /// `truncate`), else refused past them.
    pub fn encode(&self, app: &App, param: &str, truncate: bool) -> Result<Seq, ApiError> {
        match self {
            Input::Text(t) => encode(app, t, param, truncate, Budget::Positions),
            Input::Pair(a, b) => {
                if a.is_empty() || b.is_empty() {
                    return Err(ApiError::field(param, "a text of the pair is empty"));
                }
                let tokenizer = if truncate {
                    app.truncating(Budget::Positions, param)?
                } else {
                    &app.tokenizer
                };
                let enc = tokenizer
                    .encode_pair(a, b)
                    .map_err(|e| ApiError::field(param, e))?;
                let mut seq = Seq {
                    ids: enc.ids,
                    type_ids: enc.type_ids,
                };
                fit(app, &mut seq, param, false, Budget::Positions)?;
                Ok(seq)
            }
        }
    }
}

/// Scores per label for each input, as `classify` computes them ([`label_scores`]), or the
/// raw logits with `raw`.
pub async fn classify(
    app: &App,
    inputs: &[Input],
    raw: bool,
    truncate: bool,
) -> Result<Vec<Vec<(String, f32)>>, ApiError> {
    // A classifier's labels, or a next-sentence head's (as the classify task reads them).
    let (kind, labels, problem_type) = match &app.info {
        ModelInfo::Bert {
            labels: Some(labels),
            problem_type,
            ..
        } => (RowKind::Classify, labels.clone(), problem_type.as_str()),
        ModelInfo::Bert { has_nsp: true, .. } => (
            RowKind::NextSentence,
            vec!["is_next".to_string(), "not_next".to_string()],
            "single_label_classification",
        ),
        _ => return Err(ApiError::invalid("this model has no classification head")),
    };
    let seqs = inputs
        .iter()
        .enumerate()
        .map(|(i, x)| x.encode(app, &format!("inputs[{i}]"), truncate))
        .collect::<Result<Vec<_>, _>>()?;
    let logits = rows(app, kind, seqs).await?;
    Ok(logits
        .iter()
        .map(|row| {
            let scores = if raw {
                row.clone()
            } else {
                label_scores(problem_type, row)
            };
            let mut pairs: Vec<(String, f32)> = labels.iter().cloned().zip(scores).collect();
            pairs.sort_by(|a, b| b.1.total_cmp(&a.1));
            pairs
        })
        .collect())
}

#[derive(Deserialize)]
pub struct PredictRequest {
    #[serde(default)]
    inputs: Value,
    #[serde(default)]
    raw_scores: bool,
    #[serde(default)]
    truncate: bool,
}

pub async fn predict(
    State(app): State<AppState>,
    JsonBody(req): JsonBody<PredictRequest>,
) -> Result<Json<Value>, ApiError> {
    let (inputs, list) = Input::parse(&req.inputs, "inputs")?;
    let results = classify(&app, &inputs, req.raw_scores, req.truncate).await?;
    let as_json = |r: &Vec<(String, f32)>| -> Value {
        Value::Array(
            r.iter()
                .map(|(l, s)| json!({"label": l, "score": s}))
                .collect(),
        )
    };
    Ok(Json(if list {
        Value::Array(results.iter().map(as_json).collect())
    } else {
        as_json(&results[0])
    }))
}

#[derive(Deserialize)]
pub struct TokenizeRequest {
    #[serde(default)]
    inputs: Value,
    #[serde(default = "yes")]
    add_special_tokens: bool,
}

pub async fn tokenize(
    State(app): State<AppState>,
    JsonBody(req): JsonBody<TokenizeRequest>,
) -> Result<Json<Value>, ApiError> {
    let (texts, list) = texts(&req.inputs, "inputs")?;
    let mut out = vec![];
    for (i, t) in texts.iter().enumerate() {
        let enc = if req.add_special_tokens {
            app.tokenizer.encode(t)
        } else {
            app.tokenizer.encode_without_special(t)
        }
        .map_err(|e| ApiError::field(&format!("inputs[{i}]"), e))?;
        let toks: Vec<Value> = enc
            .ids
            .iter()
            .zip(&enc.tokens)
            .map(|(id, tok)| json!({"id": id, "text": tok}))
            .collect();
        out.push(Value::Array(toks));
    }
    Ok(Json(if list {
        Value::Array(out)
    } else {
        out.pop().unwrap_or(Value::Array(vec![]))
    }))
}

#[derive(Deserialize)]
pub struct RerankRequest {
    #[serde(default)]
    query: Value,
    #[serde(default)]
    texts: Value,
    #[serde(default)]
    raw_scores: bool,
    #[serde(default)]
    return_text: bool,
}

/// `/rerank` (cross-encoders: one-label classifiers): each (query, text) pair is encoded as a
/// sentence pair truncated `longest_first` to the positions, as the `rerank` task does; the
/// answer lists `{index, score}` best first, score = sigmoid(logit) unless `raw_scores`.
pub async fn rerank(
    State(app): State<AppState>,
    JsonBody(req): JsonBody<RerankRequest>,
) -> Result<Json<Value>, ApiError> {
    let query = match &req.query {
        Value::String(s) if !s.is_empty() => s.clone(),
        Value::Null => return Err(ApiError::field("query", "missing")),
        _ => return Err(ApiError::field("query", "expected a non-empty text")),
    };
    let (texts, _) = texts(&req.texts, "texts")?;
    let tokenizer = app.truncating(Budget::Positions, "texts")?;
    let seqs = texts
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let at = format!("texts[{i}]");
            if t.is_empty() {
                return Err(ApiError::field(&at, "the text is empty"));
            }
            let enc = tokenizer
                .encode_pair(&query, t)
                .map_err(|e| ApiError::field(&at, e))?;
            let mut seq = Seq {
                ids: enc.ids,
                type_ids: enc.type_ids,
            };
            fit(&app, &mut seq, &at, false, Budget::Positions)?;
            Ok(seq)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let logits = rows(&app, RowKind::Classify, seqs).await?;
    let mut ranked: Vec<(usize, f32)> = logits
        .iter()
        .enumerate()
        .map(|(i, row)| (i, row.first().copied().unwrap_or(f32::NAN)))
        .collect();
    // Best first; equal logits keep the texts' order.
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    Ok(Json(Value::Array(
        ranked
            .into_iter()
            .map(|(i, logit)| {
                let score = if req.raw_scores {
                    logit
                } else {
                    1.0 / (1.0 + (-logit).exp())
                };
                let mut r = json!({"index": i, "score": score, "logit": logit});
                if req.return_text {
                    r["text"] = json!(texts[i]);
                }
                r
            })
            .collect(),
    )))
}
