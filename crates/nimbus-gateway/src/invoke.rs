//! `POST /_nimbus/admin/functions/{name}/invoke`: an operator runs a non-HTTP function by name
//! (as Azure Functions' admin endpoint does), through the [`nimbus_api::Invoke`] port. The body is
//! `{"data": <any JSON>}` (or empty for `null`); the answer `{"result": <the function's result>}`.
//! A client that goes away cancels the invocation.

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use nimbus_api::extract::Path;
use nimbus_api::{ApiError, Call, InvokeError, Invoker, TraceContext};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    #[serde(default)]
    data: serde_json::Value,
}

/// The route; the binary puts it behind the admin token.
pub fn admin_router(invoker: Invoker) -> Router {
    Router::new().route("/_nimbus/admin/functions/{name}/invoke", axum::routing::post(invoke)).with_state(invoker)
}

async fn invoke(
    State(invoker): State<Invoker>,
    Path(name): Path<String>,
    trace: Option<axum::Extension<TraceContext>>,
    body: Bytes,
) -> Response {
    let data = if body.iter().all(u8::is_ascii_whitespace) {
        serde_json::Value::Null
    } else {
        match serde_json::from_slice::<Body>(&body) {
            Ok(body) => body.data,
            Err(e) => {
                let message = format!("the body must be {{\"data\": <any JSON>}}: {e}");
                return ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", message).into_response();
            }
        }
    };
    let mut call = Call::new(name, data);
    call.trace = trace.map(|t| t.0);
    match invoker.invoke(call).await {
        Ok(result) => axum::Json(serde_json::json!({ "result": result })).into_response(),
        Err(e) => error_response(&e),
    }
}

fn error_response(e: &InvokeError) -> Response {
    let status = match e {
        InvokeError::UnknownFunction { .. } => StatusCode::NOT_FOUND,
        InvokeError::Refused { .. } => StatusCode::CONFLICT,
        InvokeError::Unavailable { .. } | InvokeError::QueueFull { .. } => StatusCode::SERVICE_UNAVAILABLE,
        InvokeError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        InvokeError::Crashed { .. } => StatusCode::BAD_GATEWAY,
        InvokeError::Failed { .. } => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let mut response = ApiError::new(status, e.kind(), e.to_string()).into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}
