//! Why the functions component could not start, and why an invocation failed.

use axum::http::StatusCode;
use nimbus_api::ApiError;

#[derive(Debug, thiserror::Error)]
pub enum FunctionsError {
    #[error("{0}")]
    Config(String),
    #[error("worker `{worker}` could not start: {reason}")]
    Start { worker: String, reason: String },
    #[error("worker `{worker}` answered a bad index: {reason}")]
    Index { worker: String, reason: String },
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
}

/// Why an invocation did not reach a worker or did not complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum InvokeError {
    QueueFull,
    QueueTimeout,
    Unavailable,
    WorkerCrashed,
    Timeout,
    BodyTooLarge(u64),
    /// The client's request body was cut off or malformed.
    IncompleteBody,
    ShuttingDown,
}

impl InvokeError {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::QueueFull => "queue_full",
            Self::QueueTimeout => "queue_timeout",
            Self::Unavailable => "worker_unavailable",
            Self::WorkerCrashed => "worker_crashed",
            Self::Timeout => "timeout",
            Self::BodyTooLarge(_) => "payload_too_large",
            Self::IncompleteBody => "incomplete_body",
            Self::ShuttingDown => "shutting_down",
        }
    }

    pub fn to_api(&self, function: &str) -> ApiError {
        let (status, message) = match self {
            Self::QueueFull => {
                (StatusCode::SERVICE_UNAVAILABLE, format!("function `{function}` is at capacity and its queue is full"))
            }
            Self::QueueTimeout => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("function `{function}` had no free instance within its queue timeout"),
            ),
            Self::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("function `{function}` could not start an instance; see the node's log"),
            ),
            Self::WorkerCrashed => {
                (StatusCode::BAD_GATEWAY, format!("the worker of `{function}` exited before completing the response"))
            }
            Self::Timeout => (StatusCode::GATEWAY_TIMEOUT, format!("function `{function}` did not answer in time")),
            Self::BodyTooLarge(limit) => return nimbus_api::body::payload_too_large(*limit),
            Self::IncompleteBody => {
                (StatusCode::BAD_REQUEST, "the request body was cut off or is malformed".to_owned())
            }
            Self::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "the node is shutting down".to_owned()),
        };
        ApiError::new(status, self.kind(), message)
    }
}
