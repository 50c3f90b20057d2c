//! Invocation by name, the [`nimbus_api::Invoke`] port: the call goes to the function's pool like an
//! HTTP invocation (same slots, scaling, deadline, metrics and trace) as the JSON envelope of
//! PROTOCOL.md §4, and the worker's JSON result comes back (read whole, at most
//! [`RESULT_LIMIT`]). Dropping the future closes the worker connection: the worker sees the
//! invocation cancelled.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use http_body_util::BodyExt;
use nimbus_api::{Call, Declared, Invoke, InvokeFuture, TraceContext, Trigger};
use serde_json::Value;
use tracing::Instrument;

use crate::error::InvokeError;
use crate::invoke::{Failure, exchange, new_invocation_id, note_failure, note_outcome, protocol_headers};
use crate::{Inner, Shared};

/// The largest result read back from a worker.
pub(crate) const RESULT_LIMIT: usize = 16 * 1024 * 1024;
/// The largest envelope sent to a worker (PROTOCOL.md §4).
const ENVELOPE_LIMIT: usize = 16 * 1024 * 1024;

/// The functions component's side of the port; follows reloads.
pub(crate) struct ByName {
    pub(crate) shared: Arc<Shared>,
}

impl Invoke for ByName {
    fn invoke(&self, call: Call) -> InvokeFuture {
        let shared = self.shared.clone();
        Box::pin(async move { invoke(&shared.current(), call).await })
    }

    fn functions(&self) -> Vec<Declared> {
        let inner = self.shared.current();
        inner.list.iter().map(|f| Declared { name: f.name.clone(), trigger: f.trigger.clone() }).collect()
    }
}

async fn invoke(inner: &Inner, call: Call) -> Result<Value, nimbus_api::InvokeError> {
    let function = call.function.clone();
    let unknown = || nimbus_api::InvokeError::UnknownFunction { function: function.clone() };
    let info = inner.list.iter().find(|f| f.name == function).ok_or_else(unknown)?;
    let target = inner.functions.get(&function).ok_or_else(unknown)?;
    if let Trigger::Http { route, .. } = &info.trigger {
        return Err(nimbus_api::InvokeError::Refused {
            function,
            reason: format!("it has an http trigger: it is invoked by requests to {route}"),
        });
    }
    let timeout = call.timeout.map_or(target.timeout, |t| t.min(target.timeout));
    let trace = TraceContext::continue_or_start(call.trace.map(|t| t.traceparent()).as_deref());
    let id = new_invocation_id();
    let span = tracing::info_span!("invoke", function = %function, invocation = %id, trace_id = %trace.trace_id_hex());
    let started = Instant::now();
    let result = send(target, info, call, &id, &trace, timeout).instrument(span).await;
    let status = match &result {
        Ok(_) => StatusCode::OK,
        Err(Outcome::Refused(e)) => {
            note_failure(&function, e);
            e.to_api(&function).status
        }
        Err(Outcome::Failed { .. }) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    note_outcome(target, &function, status, started);
    result.map_err(|outcome| match outcome {
        Outcome::Refused(e) => port_error(e, function, timeout),
        Outcome::Failed { code, message } => nimbus_api::InvokeError::Failed { function, code, message },
    })
}

/// Why an envelope invocation has no result.
enum Outcome {
    Refused(InvokeError),
    /// The handler's error, or an answer that is no result.
    Failed {
        code: String,
        message: String,
    },
}

async fn send(
    target: &crate::Target,
    info: &crate::FunctionInfo,
    call: Call,
    id: &str,
    trace: &TraceContext,
    timeout: Duration,
) -> Result<Value, Outcome> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut trigger = match serde_json::to_value(&info.trigger) {
        Ok(Value::Object(fields)) => fields,
        _ => serde_json::Map::new(),
    };
    trigger.extend(call.delivery);
    let affinity = call.affinity;
    let envelope = serde_json::json!({ "id": id, "trigger": trigger, "data": call.data }).to_string();
    if envelope.len() > ENVELOPE_LIMIT {
        return Err(Outcome::Refused(InvokeError::BodyTooLarge(ENVELOPE_LIMIT as u64)));
    }
    // Function names are checked at indexing (letters, digits, `_`, `-`, `.`): no escaping needed.
    let mut request = axum::http::Request::post(format!("/_nimbus/worker/invoke/{}", info.name))
        .body(Body::from(envelope))
        .map_err(|_| Outcome::Refused(InvokeError::WorkerCrashed))?;
    let headers = request.headers_mut();
    headers.insert(header::HOST, HeaderValue::from_static("localhost"));
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    protocol_headers(headers, &info.name, id, timeout, trace);

    let (response, slot, conn) = match exchange(target, &info.name, id, request, affinity.as_deref(), deadline).await {
        Ok(exchanged) => exchanged,
        Err(Failure::Refused(e)) => return Err(Outcome::Refused(e)),
        Err(Failure::Connection(_)) => return Err(Outcome::Refused(InvokeError::WorkerCrashed)),
    };
    let status = response.status();
    let body = http_body_util::Limited::new(response.into_body(), RESULT_LIMIT);
    let bytes = match tokio::time::timeout_at(deadline, body.collect()).await {
        Err(_) => {
            slot.retire();
            return Err(Outcome::Refused(InvokeError::Timeout));
        }
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(Outcome::Failed {
                code: "result_too_large".into(),
                message: format!("the result is larger than {RESULT_LIMIT} bytes"),
            });
        }
        Ok(Err(_)) => return Err(Outcome::Refused(InvokeError::WorkerCrashed)),
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    slot.instance.give_back(conn);
    drop(slot);
    if status == StatusCode::OK {
        return serde_json::from_slice(&bytes).map_err(|e| Outcome::Failed {
            code: "invalid_result".into(),
            message: format!("the worker's result is not JSON: {e}"),
        });
    }
    Err(match serde_json::from_slice::<nimbus_api::ErrorBody>(&bytes) {
        Ok(body) => Outcome::Failed { code: body.error.code, message: body.error.message },
        Err(_) => Outcome::Failed {
            code: "handler_error".into(),
            message: format!("the worker answered {status} without an error body"),
        },
    })
}

/// What the port's callers learn of a refusal inside the host.
fn port_error(e: InvokeError, function: String, timeout: Duration) -> nimbus_api::InvokeError {
    use nimbus_api::InvokeError as Port;
    match e {
        InvokeError::QueueFull | InvokeError::QueueTimeout => Port::QueueFull { function },
        InvokeError::Timeout => Port::Timeout { function, after: timeout },
        InvokeError::WorkerCrashed => Port::Crashed { function },
        InvokeError::Unavailable => {
            Port::Unavailable { function, reason: "no instance could start; see the node's log".into() }
        }
        InvokeError::ShuttingDown => Port::Unavailable { function, reason: "the node is shutting down".into() },
        InvokeError::BodyTooLarge(limit) => {
            Port::Refused { function, reason: format!("the call is larger than the {limit}-byte limit") }
        }
        InvokeError::IncompleteBody => Port::Refused { function, reason: "the call was cut off".into() },
    }
}
