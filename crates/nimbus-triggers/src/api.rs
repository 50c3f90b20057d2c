//! The queues' REST API (`/_nimbus/queues/{name}/…`), for the admin token and, on the platform
//! socket, functions granted `queues:<name>:rw` (`r` to read a queue's state).
//!
//! - `POST /_nimbus/queues/{name}/messages` `{"data": <any JSON>, "delay": <seconds>?}` → `201 {"id", "queue"}`
//! - `GET /_nimbus/queues/{name}` → `{"queue", "length", "oldest_age_seconds", "poison_length"}`
//! - `POST /_nimbus/queues/{name}/requeue` → `{"requeued": n}`: the poison queue's messages back to `name`

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use nimbus_api::{ApiError, Authenticate};
use serde_json::{Value, json};

use crate::queue::{QueueError, Queues, is_queue_name, poison_of};

/// The largest message (its JSON `data`), as SQS's.
pub const MAX_MESSAGE: usize = 256 * 1024;
/// The longest delay before a message is visible.
const MAX_DELAY: u64 = 7 * 86_400;
/// Messages counted at most by `GET /_nimbus/queues/{name}`.
const COUNT_LIMIT: usize = 100_000;

#[derive(Clone)]
struct Api {
    queues: Arc<Queues>,
    authenticate: Authenticate,
}

pub(crate) fn router(queues: Arc<Queues>, authenticate: Authenticate) -> Router {
    Router::new()
        .route("/_nimbus/queues/{name}", get(state))
        .route("/_nimbus/queues/{name}/messages", post(send))
        .route("/_nimbus/queues/{name}/requeue", post(requeue))
        .with_state(Api { queues, authenticate })
}

impl Api {
    fn allow(&self, headers: &HeaderMap, name: &str, write: bool) -> Result<(), ApiError> {
        let Some(principal) = (self.authenticate)(headers) else {
            return Err(ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "a token is needed"));
        };
        if !is_queue_name(name) || name.len() > 63 {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_queue_name",
                format!("\"{name}\" is not a queue name (1-63 lowercase letters, digits and '-')"),
            ));
        }
        if !principal.may("queues", name, write) {
            let access = if write { "rw" } else { "r" };
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("{} may not use queue `{name}` (grant \"queues:{name}:{access}\")", principal.describe()),
            ));
        }
        Ok(())
    }
}

fn store_error(e: QueueError) -> ApiError {
    tracing::error!(error = %e, "a queue operation failed");
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", "the queue cannot be reached now; retry")
}

async fn send(State(api): State<Api>, Path(name): Path<String>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(e) = api.allow(&headers, &name, true) {
        return e.into_response();
    }
    let invalid = |message: String| ApiError::new(StatusCode::BAD_REQUEST, "invalid_message", message).into_response();
    if body.len() > MAX_MESSAGE + 1024 {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "message_too_large",
            format!("a message is at most {MAX_MESSAGE} bytes of JSON"),
        )
        .into_response();
    }
    let request: Value = match serde_json::from_slice(&body) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => return invalid("the body must be {\"data\": <any JSON>, \"delay\": <seconds>?}".into()),
        Err(e) => return invalid(format!("the body is not JSON: {e}")),
    };
    if let Some(unknown) = request.as_object().and_then(|o| o.keys().find(|k| *k != "data" && *k != "delay")) {
        return invalid(format!("unknown field `{unknown}` (a message is {{\"data\", \"delay\"?}})"));
    }
    let Some(data) = request.get("data").cloned() else { return invalid("`data` is missing".into()) };
    if data.to_string().len() > MAX_MESSAGE {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "message_too_large",
            format!("a message is at most {MAX_MESSAGE} bytes of JSON"),
        )
        .into_response();
    }
    let delay = match request.get("delay") {
        None | Some(Value::Null) => Duration::ZERO,
        Some(v) => match v.as_f64() {
            Some(s) if (0.0..=MAX_DELAY as f64).contains(&s) => Duration::from_secs_f64(s),
            _ => return invalid(format!("`delay` is a number of seconds from 0 to {MAX_DELAY}")),
        },
    };
    match api.queues.send(&name, data, delay).await {
        Ok(id) => (StatusCode::CREATED, axum::Json(json!({"id": id, "queue": name}))).into_response(),
        Err(e) => store_error(e).into_response(),
    }
}

async fn state(State(api): State<Api>, Path(name): Path<String>, headers: HeaderMap) -> Response {
    if let Err(e) = api.allow(&headers, &name, false) {
        return e.into_response();
    }
    let depth = api.queues.depth(&name, COUNT_LIMIT).await;
    let poison = api.queues.depth(&poison_of(&name), COUNT_LIMIT).await;
    match (depth, poison) {
        (Ok((length, oldest)), Ok((poison_length, _))) => axum::Json(json!({
            "queue": name,
            "length": length,
            "oldest_age_seconds": oldest.map(|d| d.as_secs_f64()),
            "poison_length": poison_length,
        }))
        .into_response(),
        (Err(e), _) | (_, Err(e)) => store_error(e).into_response(),
    }
}

async fn requeue(State(api): State<Api>, Path(name): Path<String>, headers: HeaderMap) -> Response {
    if let Err(e) = api.allow(&headers, &name, true) {
        return e.into_response();
    }
    match api.queues.requeue(&name).await {
        Ok(n) => axum::Json(json!({"requeued": n})).into_response(),
        Err(e) => store_error(e).into_response(),
    }
}
