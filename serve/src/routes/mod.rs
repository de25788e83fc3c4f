//! The routes, which of them a model offers, and what every request goes through: the API
//! key check, metrics, the body limit and JSON parsing with errors that name the field.

pub mod kserve;
pub mod openai;
pub mod ops;
pub mod tei;

use crate::error::ApiError;
use crate::App;
use axum::extract::{FromRequest, MatchedPath, Request, State};
use axum::http::{header, Method};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::Router;
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::time::Instant;

/// Largest request body accepted (413 beyond).
pub const MAX_BODY_BYTES: usize = 4 << 20;

/// A body past [`MAX_BODY_BYTES`] is still read, and dropped, up to this many bytes in all and
/// for at most [`DRAIN_SECS`], before its 413 goes out: a client still sending when the
/// answer came and the connection closed would meet a broken pipe instead of the answer.
const DRAIN_BYTES: usize = 256 << 20;
const DRAIN_SECS: u64 = 10;

type AppState = Arc<App>;

/// One route: where, which task it needs (None: every model), and what it does.
pub struct RouteInfo {
    pub method: Method,
    pub path: &'static str,
    pub task: Option<&'static str>,
    pub summary: &'static str,
}

const fn route(
    method: Method,
    path: &'static str,
    task: Option<&'static str>,
    summary: &'static str,
) -> RouteInfo {
    RouteInfo {
        method,
        path,
        task,
        summary,
    }
}

/// Every route this server can offer, in the order of the OpenAPI document.
pub fn all_routes() -> Vec<RouteInfo> {
    vec![
        route(
            Method::POST,
            "/v1/embeddings",
            Some("embed"),
            "OpenAI embeddings",
        ),
        route(
            Method::POST,
            "/v1/completions",
            Some("generate"),
            "OpenAI completions (stream: true for server-sent events)",
        ),
        route(Method::GET, "/v1/models", None, "OpenAI: the model served"),
        route(Method::GET, "/v1/models/{model}", None, "OpenAI: one model"),
        route(
            Method::POST,
            "/embed",
            Some("embed"),
            "TEI: sentence embeddings",
        ),
        route(
            Method::POST,
            "/predict",
            Some("classify"),
            "TEI: classification scores of texts or text pairs",
        ),
        route(
            Method::POST,
            "/rerank",
            Some("rerank"),
            "TEI: texts ranked against a query by a cross-encoder",
        ),
        route(
            Method::POST,
            "/tokenize",
            Some("tokenize"),
            "TEI: token ids and tokens",
        ),
        route(
            Method::GET,
            "/v2/health/live",
            None,
            "KServe v2: the process is up",
        ),
        route(
            Method::GET,
            "/v2/health/ready",
            None,
            "KServe v2: weights mapped and warm-up call done",
        ),
        route(
            Method::GET,
            "/v2/models/{name}",
            None,
            "KServe v2: model metadata (inputs and outputs)",
        ),
        route(
            Method::GET,
            "/v2/models/{name}/ready",
            None,
            "KServe v2: model readiness",
        ),
        route(
            Method::POST,
            "/v2/models/{name}/infer",
            Some("forward"),
            "KServe v2: the forward task, with its tensor names",
        ),
        route(Method::GET, "/metrics", None, "Prometheus metrics"),
        route(
            Method::GET,
            "/openapi.json",
            None,
            "This API's OpenAPI 3.1 description",
        ),
    ]
}

/// The routes this model supports.
pub fn offered(app: &App) -> Vec<RouteInfo> {
    let tasks = app.tasks();
    all_routes()
        .into_iter()
        .filter(|r| r.task.is_none_or(|t| tasks.contains(&t)))
        .collect()
}

fn handler(path: &str) -> MethodRouter<AppState> {
    match path {
        "/v1/embeddings" => post(openai::embeddings),
        "/v1/completions" => post(openai::completions),
        "/v1/models" => get(openai::models),
        "/v1/models/{model}" => get(openai::model),
        "/embed" => post(tei::embed),
        "/predict" => post(tei::predict),
        "/rerank" => post(tei::rerank),
        "/tokenize" => post(tei::tokenize),
        "/v2/health/live" => get(kserve::live),
        "/v2/health/ready" => get(kserve::ready),
        "/v2/models/{name}" => get(kserve::metadata),
        "/v2/models/{name}/ready" => get(kserve::model_ready),
        "/v2/models/{name}/infer" => post(kserve::infer),
        "/metrics" => get(ops::metrics),
        "/openapi.json" => get(ops::openapi),
        other => unreachable!("route {other} has no handler"),
    }
}

pub fn router(app: AppState) -> Router {
    let mut r = Router::new();
    for info in offered(&app) {
        r = r.route(info.path, handler(info.path));
    }
    r.fallback(ops::not_found)
        .method_not_allowed_fallback(ops::method_not_allowed)
        .layer(middleware::from_fn_with_state(app.clone(), check_key))
        .layer(middleware::from_fn_with_state(app.clone(), record))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(app)
}

/// `--api-key`: every route but health and metrics (probes and scrapers carry no key).
async fn check_key(State(app): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(key) = &app.args.api_key {
        let path = req.uri().path();
        let open = path.starts_with("/v2/health/") || path == "/metrics";
        if !open {
            let given = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or("");
            if !same(given.as_bytes(), key.as_bytes()) {
                return ApiError::unauthorized().into_response();
            }
        }
    }
    next.run(req).await
}

/// Compares without stopping at the first difference, so timing does not reveal the key.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Counts requests by route and status and times them.
async fn record(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let m = &app.shared.metrics;
    m.in_flight.inc();
    let t = Instant::now();
    let resp = next.run(req).await;
    m.in_flight.dec();
    m.latency
        .get_or_create(&crate::metrics::Route {
            route: route.clone(),
        })
        .observe(t.elapsed().as_secs_f64());
    m.requests
        .get_or_create(&crate::metrics::RouteStatus {
            route,
            status: resp.status().as_u16(),
        })
        .inc();
    resp
}

/// A JSON body parsed into `T`: malformed JSON, a wrong type or a missing field is a 400 that
/// names the field; a body past [`MAX_BODY_BYTES`] a 413.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, ApiError> {
        parse_json(&body_bytes(req).await?).map(JsonBody)
    }
}

/// The request's body, at most [`MAX_BODY_BYTES`]: beyond, a 413 once the rest is drained
/// ([`DRAIN_BYTES`]).
async fn body_bytes(req: Request) -> Result<Vec<u8>, ApiError> {
    use futures_util::StreamExt;
    let unreadable = |e: axum::Error| {
        let mut err = ApiError::invalid(format!("cannot read the request body: {e}"));
        err.code = "invalid_body";
        err
    };
    let mut stream = req.into_body().into_data_stream();
    let mut body = Vec::new();
    while let Some(frame) = stream.next().await {
        let frame = frame.map_err(unreadable)?;
        if body.len() + frame.len() > MAX_BODY_BYTES {
            let mut seen = body.len() + frame.len();
            let drain = async {
                while let Some(Ok(frame)) = stream.next().await {
                    seen += frame.len();
                    if seen > DRAIN_BYTES {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(std::time::Duration::from_secs(DRAIN_SECS), drain).await;
            let mut err = ApiError::invalid(format!(
                "the request body is larger than the limit of {MAX_BODY_BYTES} bytes"
            ));
            err.status = axum::http::StatusCode::PAYLOAD_TOO_LARGE;
            err.code = "payload_too_large";
            return Err(err);
        }
        body.extend_from_slice(&frame);
    }
    Ok(body)
}

pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // serde's derived structs also take a JSON array as their fields in order: `["a"]` would
    // read as {"inputs": "a"}. Every route's body is an object.
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first.is_some_and(|&b| b != b'{')
        && serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok()
    {
        return Err(ApiError::invalid("the body must be a JSON object"));
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    match serde_path_to_error::deserialize::<_, T>(de) {
        Ok(v) => Ok(v),
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let syntax = inner.is_syntax() || inner.is_eof();
            let mut err = if syntax {
                let mut err = ApiError::invalid(format!("the body is not valid JSON: {inner}"));
                err.code = "invalid_json";
                err
            } else if path == "." || path.is_empty() {
                ApiError::invalid(format!("the body: {inner}"))
            } else {
                ApiError::field(&path, inner)
            };
            if err.param.is_none() && path != "." && !path.is_empty() && !syntax {
                err.param = Some(path);
            }
            Err(err)
        }
    }
}

/// Checks an optional `model` field against the served name.
pub fn check_model(app: &App, model: Option<&str>) -> Result<(), ApiError> {
    match model {
        Some(m) if m != app.name => Err(ApiError::model_not_found(m, &app.name)),
        _ => Ok(()),
    }
}
