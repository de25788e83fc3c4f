//! Operations: `/metrics`, `/openapi.json`, and the answers for unknown routes and methods.

use super::{offered, AppState};
use crate::error::ApiError;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::Value;

pub async fn metrics(State(app): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.shared.metrics.render(),
    )
        .into_response()
}

pub async fn openapi(State(app): State<AppState>) -> Json<Value> {
    Json(crate::openapi::document(&app))
}

pub async fn not_found(State(app): State<AppState>, req: Request) -> ApiError {
    let routes: Vec<String> = offered(&app)
        .iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    ApiError::not_found(format!(
        "no route {} {} for this {} model; it offers: {}",
        req.method(),
        req.uri().path(),
        app.info.model_type(),
        routes.join(", ")
    ))
}

pub async fn method_not_allowed(req: Request) -> ApiError {
    let mut e = ApiError::invalid(format!(
        "{} is not allowed on {}",
        req.method(),
        req.uri().path()
    ));
    e.status = StatusCode::METHOD_NOT_ALLOWED;
    e.code = "method_not_allowed";
    e
}
