//! Every failure a client can see, as OpenAI's error object:
//! `{"error": {"message", "type", "code", "param"}}` with the matching HTTP status.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use cranformer_runtime::EngineError;

/// An error answered to the client.
#[derive(Clone, Debug)]
pub struct ApiError {
    pub status: StatusCode,
    /// OpenAI's `type`: invalid_request_error, authentication_error, server_error, ...
    pub kind: &'static str,
    /// A stable machine-readable `code`.
    pub code: &'static str,
    pub message: String,
    /// The request field at fault, when there is one.
    pub param: Option<String>,
    /// Seconds to wait before retrying (503).
    pub retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, code: &'static str, message: String) -> Self {
        ApiError {
            status,
            kind,
            code,
            message,
            param: None,
            retry_after: None,
        }
    }

    /// A request the client must change (400).
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_request",
            message.into(),
        )
    }

    /// A request field with a bad value (400), naming the field.
    pub fn field(param: &str, message: impl std::fmt::Display) -> Self {
        let mut e = Self::invalid(format!("{param}: {message}"));
        e.param = Some(param.to_string());
        e.code = "invalid_value";
        e
    }

    /// A text or batch longer than the model takes (400, as OpenAI answers it).
    pub fn too_long(param: &str, message: impl Into<String>) -> Self {
        let mut e = Self::invalid(message);
        e.param = Some(param.to_string());
        e.code = "context_length_exceeded";
        e
    }

    pub fn model_not_found(asked: &str, served: &str) -> Self {
        let mut e = Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "model_not_found",
            format!("the model {asked:?} does not exist; this server serves {served:?}"),
        );
        e.param = Some("model".into());
        e
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "not_found",
            message.into(),
        )
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "invalid_api_key",
            "missing or wrong API key: send `Authorization: Bearer KEY`".into(),
        )
    }

    /// The queue is full (503 with Retry-After).
    pub fn overloaded(queue: usize) -> Self {
        let mut e = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "overloaded",
            format!("the server is busy ({queue} requests are waiting); retry shortly"),
        );
        e.retry_after = Some(1);
        e
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        let mut e = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "unavailable",
            message.into(),
        );
        e.retry_after = Some(1);
        e
    }

    /// A bug or engine failure (500).
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "internal_error",
            message.into(),
        )
    }

    /// An error of a runtime task: the engine's internal failures are 500, everything else
    /// (the task's checks of its inputs) is the client's to fix.
    pub fn from_task(e: anyhow::Error) -> Self {
        let message = cranformer_runtime::cli::error_message(&e);
        let internal = e.chain().any(|c| {
            matches!(
                c.downcast_ref::<EngineError>(),
                Some(EngineError::Internal { .. })
            )
        });
        if internal {
            Self::internal(message)
        } else {
            Self::invalid(message)
        }
    }

    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({"error": {
            "message": self.message,
            "type": self.kind,
            "code": self.code,
            "param": self.param,
        }})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, axum::Json(self.body())).into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        r
    }
}
