//! Errors in OpenAI's shape (`{"error": {"message", "type", "param", "code"}}`), which its SDKs
//! read: the AI endpoints answer them instead of the platform's `{"error": {"code", "message"}}`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug)]
pub(crate) struct AiError {
    pub status: StatusCode,
    /// OpenAI's `type`: `invalid_request_error`, `rate_limit_error`, `api_error`…
    pub kind: &'static str,
    pub code: &'static str,
    pub message: String,
    pub param: Option<&'static str>,
    /// Seconds, for `Retry-After`.
    pub retry_after: Option<u64>,
}

impl AiError {
    pub fn invalid(message: impl Into<String>, param: Option<&'static str>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            code: "invalid_request",
            message: message.into(),
            param,
            retry_after: None,
        }
    }

    pub fn unknown_model(model: &str) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            kind: "invalid_request_error",
            code: "model_not_found",
            message: format!("The model `{model}` does not exist or no backend of this gateway serves it."),
            param: Some("model"),
            retry_after: None,
        }
    }

    /// No backend could answer (after failover and retries).
    pub fn upstream(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        let kind = if status == StatusCode::TOO_MANY_REQUESTS { "rate_limit_error" } else { "api_error" };
        Self { status, kind, code, message: message.into(), param: None, retry_after: None }
    }

    /// The JSON body, also used as an SSE `data:` payload when a stream breaks.
    pub fn body(&self) -> serde_json::Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}})
    }
}

impl IntoResponse for AiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}
