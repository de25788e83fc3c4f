//! Open Inference Protocol (KServe v2): health, model metadata, and `infer`, which is the
//! `forward` task with the same tensor names (INT64 inputs [B, T] in, FP32 outputs back).

use super::{AppState, JsonBody};
use crate::error::ApiError;
use crate::worker::Job;
use crate::App;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use cranformer_runtime::ModelInfo;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::time::Instant;
use tokio::sync::oneshot;

pub async fn live() -> Json<Value> {
    Json(json!({"live": true}))
}

pub async fn ready(State(app): State<AppState>) -> Response {
    if app.shared.ready.load(Ordering::SeqCst) {
        Json(json!({"ready": true})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ready": false})),
        )
            .into_response()
    }
}

fn check_name(app: &App, name: &str) -> Result<(), ApiError> {
    if name == app.name {
        Ok(())
    } else {
        Err(ApiError::model_not_found(name, &app.name))
    }
}

pub async fn model_ready(State(app): State<AppState>, Path(name): Path<String>) -> Response {
    if let Err(e) = check_name(&app, &name) {
        return e.into_response();
    }
    ready(State(app)).await
}

/// The `forward` task's inputs (name, optional) and outputs (name, shape).
type Signature = (Vec<(&'static str, bool)>, Vec<(&'static str, Vec<i64>)>);

/// The `forward` task's inputs and outputs.
fn signature(info: &ModelInfo) -> Signature {
    match info {
        ModelInfo::Bert {
            has_pooler,
            has_mlm,
            has_nsp,
            labels,
            hidden_size,
            vocab_size,
            ..
        } => {
            let mut outs = vec![("last_hidden_state", vec![-1, -1, *hidden_size as i64])];
            if *has_pooler {
                outs.push(("pooler_output", vec![-1, *hidden_size as i64]));
            }
            if *has_mlm {
                outs.push(("mlm_logits", vec![-1, -1, *vocab_size as i64]));
            }
            if *has_nsp {
                outs.push(("nsp_logits", vec![-1, 2]));
            }
            if let Some(l) = labels {
                outs.push(("logits", vec![-1, l.len() as i64]));
            }
            (
                vec![
                    ("input_ids", false),
                    ("attention_mask", true),
                    ("token_type_ids", true),
                ],
                outs,
            )
        }
        ModelInfo::Gpt2 {
            has_lm_head,
            hidden_size,
            vocab_size,
            ..
        } => (
            vec![("input_ids", false), ("attention_mask", true)],
            vec![if *has_lm_head {
                ("logits", vec![-1, -1, *vocab_size as i64])
            } else {
                ("last_hidden_state", vec![-1, -1, *hidden_size as i64])
            }],
        ),
        ModelInfo::T5 { vocab_size, .. } => (
            vec![
                ("input_ids", false),
                ("attention_mask", true),
                ("decoder_input_ids", true),
            ],
            vec![
                ("encoder_last_hidden_state", vec![-1, -1, -1]),
                ("logits", vec![-1, -1, *vocab_size as i64]),
            ],
        ),
    }
}

pub async fn metadata(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    check_name(&app, &name)?;
    let (inputs, outputs) = signature(&app.info);
    Ok(Json(json!({
        "name": app.name,
        "versions": ["1"],
        "platform": format!("cranformer-{}", app.info.model_type()),
        "inputs": inputs.iter().map(|(n, optional)| json!({
            "name": n, "datatype": "INT64", "shape": [-1, -1], "optional": optional,
        })).collect::<Vec<_>>(),
        "outputs": outputs.iter().map(|(n, shape)| json!({
            "name": n, "datatype": "FP32", "shape": shape,
        })).collect::<Vec<_>>(),
    })))
}

#[derive(Deserialize)]
pub struct InferInput {
    name: String,
    shape: Vec<usize>,
    datatype: String,
    data: Value,
}

#[derive(Deserialize)]
pub struct RequestedOutput {
    name: String,
}

#[derive(Deserialize)]
pub struct InferRequest {
    id: Option<String>,
    inputs: Vec<InferInput>,
    outputs: Option<Vec<RequestedOutput>>,
}

/// A v2 tensor's `data` (flat or nested, row-major) as integers.
fn flat_ints(v: &Value, at: &str, out: &mut Vec<i64>) -> Result<(), ApiError> {
    match v {
        Value::Array(a) => {
            for x in a {
                flat_ints(x, at, out)?;
            }
            Ok(())
        }
        Value::Number(n) => {
            out.push(
                n.as_i64()
                    .ok_or_else(|| ApiError::field(at, format!("{n} is not an integer")))?,
            );
            Ok(())
        }
        other => Err(ApiError::field(at, format!("{other} is not an integer"))),
    }
}

pub async fn infer(
    State(app): State<AppState>,
    Path(name): Path<String>,
    JsonBody(req): JsonBody<InferRequest>,
) -> Result<Json<Value>, ApiError> {
    check_name(&app, &name)?;
    let (names, _) = signature(&app.info);
    if req.inputs.is_empty() {
        return Err(ApiError::field("inputs", "the list is empty"));
    }
    let mut doc = serde_json::Map::new();
    for (i, t) in req.inputs.iter().enumerate() {
        let at = format!("inputs[{i}]");
        if !names.iter().any(|(n, _)| *n == t.name) {
            let known: Vec<&str> = names.iter().map(|(n, _)| *n).collect();
            return Err(ApiError::field(
                &format!("{at}.name"),
                format!(
                    "{:?} is not an input of this model (it takes {})",
                    t.name,
                    known.join(", ")
                ),
            ));
        }
        if !matches!(
            t.datatype.as_str(),
            "INT64" | "INT32" | "INT16" | "INT8" | "UINT8" | "UINT16" | "UINT32"
        ) {
            return Err(ApiError::field(
                &format!("{at}.datatype"),
                format!("{} is not an integer type (send INT64)", t.datatype),
            ));
        }
        let [b, len] = t.shape[..] else {
            return Err(ApiError::field(
                &format!("{at}.shape"),
                format!("{:?} is not [batch, tokens]", t.shape),
            ));
        };
        let mut flat = vec![];
        flat_ints(&t.data, &format!("{at}.data"), &mut flat)?;
        if flat.len() != b * len {
            return Err(ApiError::field(
                &format!("{at}.data"),
                format!("{} values do not fill the shape [{b}, {len}]", flat.len()),
            ));
        }
        let rows: Vec<Vec<i64>> = flat.chunks(len.max(1)).map(<[i64]>::to_vec).collect();
        if doc.insert(t.name.clone(), json!(rows)).is_some() {
            return Err(ApiError::field(
                &format!("{at}.name"),
                format!("{:?} is given twice", t.name),
            ));
        }
    }
    let (reply, rx) = oneshot::channel();
    app.submit(Job::Forward {
        doc: Value::Object(doc),
        reply,
        queued_at: Instant::now(),
    })?;
    let outputs = rx
        .await
        .map_err(|_| ApiError::internal("the engine dropped the request"))?
        .map_err(|mut e| {
            // The forward task's checks of the tensors (a missing input_ids, an id past the
            // vocabulary, too many tokens, a mask's shape) name the tensor in their message;
            // the field they are about is `inputs`.
            if e.param.is_none() && e.status.is_client_error() {
                e.param = Some("inputs".into());
            }
            e
        })?;
    let wanted: Option<Vec<String>> = req.outputs.map(|o| o.into_iter().map(|r| r.name).collect());
    if let Some(w) = &wanted {
        if let Some(bad) = w.iter().find(|n| !outputs.contains_key(*n)) {
            let have: Vec<&str> = outputs.keys().map(String::as_str).collect();
            return Err(ApiError::field(
                "outputs",
                format!(
                    "{bad:?} is not an output of this request (it has {})",
                    have.join(", ")
                ),
            ));
        }
    }
    let outs: Vec<Value> = outputs
        .iter()
        .filter(|(k, _)| wanted.as_ref().is_none_or(|w| w.contains(k)))
        .map(|(k, t)| {
            json!({"name": k, "datatype": "FP32", "shape": t.shape(),
                   "data": t.as_f32().unwrap_or(&[])})
        })
        .collect();
    Ok(Json(json!({
        "model_name": app.name,
        "model_version": "1",
        "id": req.id,
        "outputs": outs,
    })))
}
