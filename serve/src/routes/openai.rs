//! OpenAI-compatible routes: `/v1/embeddings`, `/v1/completions` (with server-sent events),
//! `/v1/models`.

use super::{check_model, AppState, JsonBody};
use crate::error::ApiError;
use crate::worker::{Finish, GenEvent, GenRequest, Job, RowKind, Seq};
use crate::{App, Budget};
use axum::extract::{Path, State};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use cranformer_runtime::sampling::Sampling;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

/// Tokenizes `text` for the model, refusing empty texts and texts longer than `budget`
/// allows, or, with `truncate`, cutting them to fit as the `tokenizers` crate's
/// `longest_first` truncation does (the special tokens stay), like the CLI's tasks.
pub fn encode(
    app: &App,
    text: &str,
    param: &str,
    truncate: bool,
    budget: Budget,
) -> Result<Seq, ApiError> {
    if text.is_empty() {
        return Err(ApiError::field(param, "the text is empty"));
    }
    let tokenizer = if truncate {
        app.truncating(budget, param)?
    } else {
        &app.tokenizer
    };
    let enc = tokenizer
        .encode(text)
        .map_err(|e| ApiError::field(param, e))?;
    let mut seq = Seq {
        ids: enc.ids,
        type_ids: enc.type_ids,
    };
    fit(app, &mut seq, param, truncate, budget)?;
    Ok(seq)
}

/// Checks token ids against the model's vocabulary and `budget`; with `truncate`, cuts ids
/// past the budget (keeping BERT's final [SEP], as Hugging Face's truncation does).
pub fn fit(
    app: &App,
    seq: &mut Seq,
    param: &str,
    truncate: bool,
    budget: Budget,
) -> Result<(), ApiError> {
    let (max, says) = app.limit(budget);
    if seq.ids.len() > max {
        if !truncate {
            return Err(ApiError::too_long(
                param,
                format!("{param} has {} tokens, but {says}", seq.ids.len()),
            ));
        }
        let last = *seq.ids.last().unwrap_or(&0);
        let last_type = *seq.type_ids.last().unwrap_or(&0);
        if app.info.model_type() == "bert" {
            seq.ids.truncate(max - 1);
            seq.type_ids.truncate(max - 1);
            seq.ids.push(last);
            seq.type_ids.push(last_type);
        } else {
            seq.ids.truncate(max);
            seq.type_ids.truncate(max);
        }
    }
    let vocab = app.info.vocab_size();
    if let Some((i, id)) = seq
        .ids
        .iter()
        .enumerate()
        .find(|(_, &id)| id < 0 || id as usize >= vocab)
    {
        return Err(ApiError::field(
            &format!("{param}[{i}]"),
            format!("token id {id} is outside the vocabulary (0..{vocab})"),
        ));
    }
    Ok(())
}

/// OpenAI's `input`/`prompt`: a string, a list of strings, a list of token ids, or a list of
/// lists of token ids. Returns (texts or ids) per item.
pub enum Item {
    Text(String),
    Ids(Vec<i64>),
}

pub fn items(v: &Value, param: &str) -> Result<Vec<Item>, ApiError> {
    const WANT: &str =
        "expected a string, a list of strings, a list of token ids or a list of lists of token ids";
    let ids = |v: &Value, at: &str| -> Result<Vec<i64>, ApiError> {
        let list = v.as_array().ok_or_else(|| ApiError::field(at, WANT))?;
        if list.is_empty() {
            return Err(ApiError::field(at, "the list of token ids is empty"));
        }
        list.iter()
            .enumerate()
            .map(|(i, x)| {
                x.as_i64().ok_or_else(|| {
                    ApiError::field(&format!("{at}[{i}]"), format!("{x} is not a token id"))
                })
            })
            .collect()
    };
    match v {
        Value::String(s) => Ok(vec![Item::Text(s.clone())]),
        Value::Array(list) if list.is_empty() => Err(ApiError::field(param, "the list is empty")),
        Value::Array(list) => match &list[0] {
            Value::String(_) => list
                .iter()
                .enumerate()
                .map(|(i, x)| {
                    x.as_str()
                        .map(|s| Item::Text(s.to_string()))
                        .ok_or_else(|| {
                            ApiError::field(
                                &format!("{param}[{i}]"),
                                format!("{x} is not a string"),
                            )
                        })
                })
                .collect(),
            Value::Number(_) => Ok(vec![Item::Ids(ids(v, param)?)]),
            Value::Array(_) => list
                .iter()
                .enumerate()
                .map(|(i, x)| ids(x, &format!("{param}[{i}]")).map(Item::Ids))
                .collect(),
            _ => Err(ApiError::field(param, WANT)),
        },
        Value::Null => Err(ApiError::field(param, "missing")),
        _ => Err(ApiError::field(param, WANT)),
    }
}

fn seqs_of(
    app: &App,
    v: &Value,
    param: &str,
    truncate: bool,
    budget: Budget,
) -> Result<Vec<Seq>, ApiError> {
    items(v, param)?
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let at = format!("{param}[{i}]");
            match item {
                Item::Text(t) => encode(app, &t, &at, truncate, budget),
                Item::Ids(ids) => {
                    let mut seq = Seq {
                        type_ids: vec![0; ids.len()],
                        ids,
                    };
                    fit(app, &mut seq, &at, truncate, budget)?;
                    Ok(seq)
                }
            }
        })
        .collect()
}

/// Runs row jobs on the engine (embeddings, classifier logits).
pub async fn rows(app: &App, kind: RowKind, seqs: Vec<Seq>) -> Result<Vec<Vec<f32>>, ApiError> {
    let (reply, rx) = oneshot::channel();
    app.submit(Job::Rows {
        kind,
        seqs,
        reply,
        queued_at: Instant::now(),
    })?;
    rx.await
        .map_err(|_| ApiError::internal("the engine dropped the request"))?
}

#[derive(Deserialize)]
pub struct EmbeddingsRequest {
    #[serde(default)]
    input: Value,
    model: Option<String>,
    encoding_format: Option<String>,
    dimensions: Option<usize>,
    /// Not OpenAI's: cut texts past the model's limit (as `/embed`'s `truncate`) instead of
    /// refusing them.
    #[serde(default)]
    truncate: bool,
    #[allow(dead_code)]
    user: Option<String>,
}

pub async fn embeddings(
    State(app): State<AppState>,
    JsonBody(req): JsonBody<EmbeddingsRequest>,
) -> Result<Response, ApiError> {
    check_model(&app, req.model.as_deref())?;
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::field(
                "encoding_format",
                format!("{other:?} is not one of \"float\", \"base64\""),
            ))
        }
    };
    let seqs = seqs_of(&app, &req.input, "input", req.truncate, Budget::Embedding)?;
    let tokens: usize = seqs.iter().map(|s| s.ids.len()).sum();
    let vectors = rows(&app, RowKind::Embed, seqs).await?;
    if let Some(d) = req.dimensions {
        let have = vectors.first().map_or(0, Vec::len);
        if d != have {
            return Err(ApiError::field(
                "dimensions",
                format!("this model's embeddings have {have} dimensions, not {d}"),
            ));
        }
    }
    let data: Vec<Value> = vectors
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "model": app.name,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }))
    .into_response())
}

#[derive(Deserialize)]
pub struct CompletionsRequest {
    #[serde(default)]
    prompt: Value,
    model: Option<String>,
    max_tokens: Option<usize>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    /// Not in OpenAI's API; vLLM and TGI accept it.
    top_k: Option<usize>,
    seed: Option<u64>,
    #[serde(default)]
    stop: Value,
    n: Option<usize>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    echo: Option<bool>,
    logprobs: Option<Value>,
    best_of: Option<usize>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    logit_bias: Option<serde_json::Map<String, Value>>,
    suffix: Option<String>,
    #[allow(dead_code)]
    user: Option<String>,
}

#[derive(Deserialize)]
pub struct StreamOptions {
    /// OpenAI's: a last chunk with the usage (and no choices) before `[DONE]`, only if asked.
    include_usage: Option<bool>,
}

/// Counter for response ids.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn sampling(req: &CompletionsRequest) -> Result<Sampling, ApiError> {
    let temperature = req.temperature.unwrap_or(1.0);
    if !(temperature >= 0.0 && temperature.is_finite() && temperature <= 2.0) {
        return Err(ApiError::field(
            "temperature",
            format!("must be between 0 and 2, got {temperature}"),
        ));
    }
    let top_p = req.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::field(
            "top_p",
            format!("must be in (0, 1], got {top_p}"),
        ));
    }
    // OpenAI: temperature 0 is greedy; otherwise sampling over the whole vocabulary.
    if temperature == 0.0 || req.top_k == Some(1) {
        return Ok(Sampling::Greedy);
    }
    Ok(Sampling::Sample {
        temperature,
        top_k: req.top_k.unwrap_or(0),
        top_p,
        seed: req.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        }),
    })
}

fn stops(v: &Value) -> Result<Vec<String>, ApiError> {
    let list = match v {
        Value::Null => return Ok(vec![]),
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a
            .iter()
            .enumerate()
            .map(|(i, x)| {
                x.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| ApiError::field(&format!("stop[{i}]"), "expected a string"))
            })
            .collect::<Result<_, _>>()?,
        _ => {
            return Err(ApiError::field(
                "stop",
                "expected a string or a list of strings",
            ))
        }
    };
    if list.len() > 4 {
        return Err(ApiError::field("stop", "at most 4 stop sequences"));
    }
    if list.iter().any(String::is_empty) {
        return Err(ApiError::field("stop", "a stop sequence is empty"));
    }
    Ok(list)
}

/// A choice's text as tokens arrive: decoded in full each time, released only up to where it
/// can no longer change (an unfinished UTF-8 sequence, or the start of a stop string, is held
/// back), cut at the first stop string.
pub struct ChoiceText {
    ids: Vec<i64>,
    pub sent: String,
    pub finish: Option<Finish>,
    decodable: i64,
}

impl ChoiceText {
    pub fn new(decodable: usize) -> Self {
        ChoiceText {
            ids: vec![],
            sent: String::new(),
            finish: None,
            decodable: decodable as i64,
        }
    }

    pub fn tokens(&self) -> usize {
        self.ids.len()
    }

    fn text(&self, app: &App) -> String {
        let ids: Vec<i64> = self
            .ids
            .iter()
            .copied()
            .filter(|&i| i < self.decodable)
            .collect();
        app.tokenizer.decode(&ids).unwrap_or_default()
    }

    /// Adds a token; returns the newly releasable text.
    pub fn push(&mut self, app: &App, id: i64, stops: &[String]) -> String {
        self.ids.push(id);
        let full = self.text(app);
        if let Some(cut) = stops.iter().filter_map(|s| full.find(s.as_str())).min() {
            self.finish = Some(Finish::Stop);
            return self.release(&full[..cut]);
        }
        if full.ends_with('\u{FFFD}') {
            return String::new();
        }
        let hold = stops
            .iter()
            .map(|s| {
                (1..s.len())
                    .rev()
                    .find(|&k| s.is_char_boundary(k) && full.ends_with(&s[..k]))
                    .unwrap_or(0)
            })
            .max()
            .unwrap_or(0);
        self.release(&full[..full.len() - hold])
    }

    /// The stream ended: everything left goes out.
    pub fn end(&mut self, app: &App, finish: Finish) -> String {
        if self.finish.is_some() {
            return String::new();
        }
        self.finish = Some(finish);
        let full = self.text(app);
        self.release(&full)
    }

    fn release(&mut self, upto: &str) -> String {
        match upto.strip_prefix(self.sent.as_str()) {
            Some(delta) => {
                let delta = delta.to_string();
                self.sent = upto.to_string();
                delta
            }
            None => String::new(),
        }
    }
}

pub async fn completions(
    State(app): State<AppState>,
    JsonBody(req): JsonBody<CompletionsRequest>,
) -> Result<Response, ApiError> {
    check_model(&app, req.model.as_deref())?;
    if req.echo == Some(true) {
        return Err(ApiError::field("echo", "echo is not supported"));
    }
    // Parameters that would change the tokens: refused rather than ignored.
    for (field, value) in [
        ("presence_penalty", req.presence_penalty),
        ("frequency_penalty", req.frequency_penalty),
    ] {
        if value.is_some_and(|v| v != 0.0) {
            return Err(ApiError::field(
                field,
                format!("{field} is not supported (only 0)"),
            ));
        }
    }
    if req.logit_bias.as_ref().is_some_and(|b| !b.is_empty()) {
        return Err(ApiError::field("logit_bias", "logit_bias is not supported"));
    }
    if req.suffix.as_ref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::field(
            "suffix",
            "suffix (insertion) is not supported",
        ));
    }
    if req.logprobs.as_ref().is_some_and(|v| !v.is_null()) {
        return Err(ApiError::field("logprobs", "logprobs are not supported"));
    }
    let n = req.n.unwrap_or(1);
    if n == 0 || n > 16 {
        return Err(ApiError::field(
            "n",
            format!("must be between 1 and 16, got {n}"),
        ));
    }
    if req.best_of.is_some_and(|b| b != n) {
        return Err(ApiError::field(
            "best_of",
            "best_of other than n is not supported",
        ));
    }
    let limit = app.args.max_new_tokens_limit;
    let max_new = req.max_tokens.unwrap_or(16);
    if max_new == 0 || max_new > limit {
        return Err(ApiError::field(
            "max_tokens",
            format!("must be between 1 and {limit} (--max-new-tokens-limit), got {max_new}"),
        ));
    }
    let sampling = sampling(&req)?;
    let stop = stops(&req.stop)?;
    let prompts = seqs_of(&app, &req.prompt, "prompt", false, Budget::Positions)?;
    let prompt_tokens: usize = prompts.iter().map(|s| s.ids.len()).sum();
    let decodable = app.tokenizer.vocab_size().min(app.info.vocab_size());

    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, GenEvent)>();
    let mut cancels = vec![];
    let now_queued = Instant::now();
    for (p, seq) in prompts.iter().enumerate() {
        for i in 0..n {
            let index = p * n + i;
            let cancel = Arc::new(AtomicBool::new(false));
            cancels.push(cancel.clone());
            let sampling = match &sampling {
                Sampling::Sample {
                    temperature,
                    top_k,
                    top_p,
                    seed,
                } => Sampling::Sample {
                    temperature: *temperature,
                    top_k: *top_k,
                    top_p: *top_p,
                    seed: seed.wrapping_add(i as u64),
                },
                Sampling::Greedy => Sampling::Greedy,
            };
            let job = Job::Generate(GenRequest {
                index,
                prompt: seq.ids.clone(),
                max_new,
                sampling,
                events: tx.clone(),
                cancel: cancel.clone(),
                queued_at: now_queued,
            });
            if let Err(e) = app.submit(job) {
                // Choices already queued stop at their first step.
                for c in &cancels {
                    c.store(true, Ordering::Relaxed);
                }
                return Err(e);
            }
        }
    }
    drop(tx);
    let choices = prompts.len() * n;
    let id = format!("cmpl-{}", NEXT_ID.fetch_add(1, Ordering::Relaxed));
    let created = now();
    let mut texts: Vec<ChoiceText> = (0..choices).map(|_| ChoiceText::new(decodable)).collect();

    if req.stream != Some(true) {
        let mut done = 0;
        while done < choices {
            let Some((i, ev)) = rx.recv().await else {
                return Err(ApiError::internal(
                    "the engine ended a stream without finishing it",
                ));
            };
            match ev {
                GenEvent::Token(t) => {
                    if texts[i].finish.is_none() {
                        texts[i].push(&app, t, &stop);
                        if texts[i].finish.is_some() {
                            cancels[i].store(true, Ordering::Relaxed);
                            done += 1;
                        }
                    }
                }
                GenEvent::Done(f) => {
                    if texts[i].finish.is_none() {
                        texts[i].end(&app, f);
                        done += 1;
                    }
                }
                GenEvent::Failed(e) => {
                    for c in &cancels {
                        c.store(true, Ordering::Relaxed);
                    }
                    return Err(e);
                }
            }
        }
        let completion_tokens: usize = texts.iter().map(ChoiceText::tokens).sum();
        let choices: Vec<Value> = texts
            .iter()
            .enumerate()
            .map(|(i, t)| {
                json!({"text": t.sent, "index": i, "logprobs": null,
                       "finish_reason": t.finish.map(Finish::as_str)})
            })
            .collect();
        return Ok(Json(json!({
            "id": id, "object": "text_completion", "created": created, "model": app.name,
            "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }))
        .into_response());
    }

    // Streaming: one event per released piece of text, one with each choice's finish_reason,
    // one with the usage if `stream_options.include_usage` asks for it, then `data: [DONE]`.
    let include_usage = req
        .stream_options
        .as_ref()
        .and_then(|o| o.include_usage)
        .unwrap_or(false);
    let app2 = app.clone();
    let model = app.name.clone();
    let usage_id = id.clone();
    let chunk = move |i: usize, text: &str, finish: Option<Finish>| -> Event {
        Event::default().data(
            json!({"id": id, "object": "text_completion", "created": created, "model": model,
                   "choices": [{"text": text, "index": i, "logprobs": null,
                                "finish_reason": finish.map(Finish::as_str)}]})
            .to_string(),
        )
    };
    let (etx, erx) = mpsc::unbounded_channel::<Result<Event, std::convert::Infallible>>();
    tokio::spawn(async move {
        let mut done = 0;
        let mut failed = false;
        while done < choices {
            let Some((i, ev)) = rx.recv().await else {
                break;
            };
            let event = match ev {
                GenEvent::Token(t) if texts[i].finish.is_none() => {
                    let delta = texts[i].push(&app2, t, &stop);
                    match texts[i].finish {
                        Some(f) => {
                            cancels[i].store(true, Ordering::Relaxed);
                            done += 1;
                            Some(chunk(i, &delta, Some(f)))
                        }
                        None if delta.is_empty() => None,
                        None => Some(chunk(i, &delta, None)),
                    }
                }
                GenEvent::Token(_) => None,
                GenEvent::Done(f) if texts[i].finish.is_none() => {
                    let delta = texts[i].end(&app2, f);
                    done += 1;
                    Some(chunk(i, &delta, Some(f)))
                }
                GenEvent::Done(_) => None,
                GenEvent::Failed(e) => {
                    failed = true;
                    Some(Event::default().data(e.body().to_string()))
                }
            };
            if let Some(ev) = event {
                if etx.send(Ok(ev)).is_err() {
                    // The client went away: stop every choice.
                    for c in &cancels {
                        c.store(true, Ordering::Relaxed);
                    }
                    return;
                }
            }
            if failed {
                for c in &cancels {
                    c.store(true, Ordering::Relaxed);
                }
                break;
            }
        }
        if !failed && include_usage {
            let completion_tokens: usize = texts.iter().map(ChoiceText::tokens).sum();
            let usage = json!({"id": usage_id, "object": "text_completion",
                "created": created, "model": app2.name, "choices": [],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens}});
            let _ = etx.send(Ok(Event::default().data(usage.to_string())));
        }
        let _ = etx.send(Ok(Event::default().data("[DONE]")));
    });
    let stream =
        futures_util::stream::unfold(
            erx,
            |mut rx| async move { rx.recv().await.map(|ev| (ev, rx)) },
        );
    Ok(Sse::new(stream).into_response())
}

fn model_card(app: &App) -> Value {
    json!({"id": app.name, "object": "model", "created": app.started, "owned_by": "cranformer"})
}

pub async fn models(State(app): State<AppState>) -> Json<Value> {
    Json(json!({"object": "list", "data": [model_card(&app)]}))
}

pub async fn model(
    State(app): State<AppState>,
    Path(model): Path<String>,
) -> Result<Json<Value>, ApiError> {
    check_model(&app, Some(&model))?;
    Ok(Json(model_card(&app)))
}
