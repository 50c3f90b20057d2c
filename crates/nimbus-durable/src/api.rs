//! The management API under `/_nimbus/durable`, in Durable Functions' shapes and status codes:
//! - `POST /orchestrations/{name}?instanceId=&version=` (body: the input) → `202` with `id`,
//!   `statusQueryGetUri`, `sendEventPostUri`, `terminatePostUri`, `purgeHistoryDeleteUri`;
//! - `GET /instances/{id}?showHistory=&showInput=` → `200` once ended, `202` while pending or
//!   running, `404` for an unknown id;
//! - `GET /instances?runtimeStatus=&name=&createdTimeFrom=&createdTimeTo=&top=&continuationToken=`;
//! - `POST /instances/{id}/raiseEvent/{event}` (body: the data), `POST /instances/{id}/terminate?reason=`,
//!   `POST /instances/{id}/suspend?reason=`, `POST /instances/{id}/resume?reason=` → `202`, `410` once
//!   ended (`409` to suspend a suspended instance or resume a running one);
//! - `POST /instances/{id}/rewind?reason=` → `202`; `410` once completed or terminated, `409` while
//!   it runs (only a failed instance rewinds);
//! - `POST /instances/{id}/restart?restartWithNewInstanceId=` (default `true`) → `202` with the new
//!   run's links; `409` to restart a running instance under its own id;
//! - `DELETE /instances/{id}` (purge) → `200` with `instancesDeleted`, `409` while it runs.
//!
//! - `POST /payloads` (body: a value's JSON, streamed) → `201` with its reference;
//!   `GET /payloads/{key}` → the JSON (PROTOCOL.md §7.4).
//!
//! Callers need the admin token or a function's `durable:<orchestration>:r|rw` grant; payloads are
//! for the admin and the app's orchestrators and activities (a payload's random key is what
//! opens it).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use nimbus_api::ApiError;
use nimbus_api::extract::{Path, Query};
use serde::Deserialize;
use serde_json::{Value, json};

use nimbus_blob::BlobError;

use crate::engine::{DurableError, Engine};
use crate::instances::Filter;
use crate::model::{self, Instance, Status};

#[derive(Clone)]
struct Api {
    engine: Arc<Engine>,
    authenticate: nimbus_api::Authenticate,
    base: Arc<str>,
}

pub(crate) fn router(engine: Arc<Engine>, authenticate: nimbus_api::Authenticate, base: &str) -> Router {
    let api = Api { engine, authenticate, base: base.trim_end_matches('/').into() };
    Router::new()
        .route("/_nimbus/durable/orchestrations/{name}", post(start))
        .route("/_nimbus/durable/instances", get(list))
        .route("/_nimbus/durable/instances/{id}", get(status).delete(purge))
        .route("/_nimbus/durable/instances/{id}/raiseEvent/{event}", post(raise))
        .route("/_nimbus/durable/instances/{id}/restart", post(restart))
        .route("/_nimbus/durable/instances/{id}/{action}", post(control))
        .route("/_nimbus/durable/payloads", post(upload))
        .route("/_nimbus/durable/payloads/{key}", get(download))
        .with_state(api)
}

impl Api {
    fn refuse(&self, headers: &HeaderMap, orchestration: &str, write: bool) -> Option<Response> {
        nimbus_api::authorize(&self.authenticate, headers, "durable", orchestration, write)
            .err()
            .map(IntoResponse::into_response)
    }

    /// `202` with the links of a started instance, and its status URL as `Location`.
    fn accepted(&self, id: &str) -> Response {
        let links = self.links(id);
        let mut response = (StatusCode::ACCEPTED, Json(links.clone())).into_response();
        if let Some(location) = links["statusQueryGetUri"].as_str().and_then(|l| HeaderValue::from_str(l).ok()) {
            response.headers_mut().insert(header::LOCATION, location);
        }
        response
    }

    /// Durable Functions' management URLs of an instance.
    fn links(&self, id: &str) -> Value {
        let instance = format!("{}/_nimbus/durable/instances/{}", self.base, encode(id));
        json!({
            "id": id,
            "statusQueryGetUri": instance,
            "sendEventPostUri": format!("{instance}/raiseEvent/{{eventName}}"),
            "terminatePostUri": format!("{instance}/terminate?reason={{text}}"),
            "purgeHistoryDeleteUri": instance,
        })
    }
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b':' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn error(e: DurableError) -> Response {
    let (status, code) = match &e {
        DurableError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
        DurableError::UnknownOrchestrator(_) => (StatusCode::NOT_FOUND, "orchestrator_not_found"),
        DurableError::NotFound(_) => (StatusCode::NOT_FOUND, "instance_not_found"),
        DurableError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
        DurableError::Ended { .. } => (StatusCode::GONE, "instance_ended"),
        // Durable Functions answers 410 to rewind an instance that completed or was terminated.
        DurableError::NotFailed { status, .. } if status.is_terminal() => (StatusCode::GONE, "instance_not_failed"),
        DurableError::NotFailed { .. } => (StatusCode::CONFLICT, "instance_not_failed"),
        DurableError::Store(_) => (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable"),
        DurableError::Payload(e) => match e {
            BlobError::NotFound(_) => (StatusCode::NOT_FOUND, "payload_not_found"),
            BlobError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            BlobError::Invalid(_) | BlobError::Incomplete => (StatusCode::BAD_REQUEST, "invalid_request"),
            _ => (StatusCode::SERVICE_UNAVAILABLE, "payload_unavailable"),
        },
    };
    ApiError::new(status, code, e.to_string()).into_response()
}

/// A JSON body; empty means `null` (an orchestration without input).
fn body_json(body: &Bytes) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", format!("the body is not JSON: {e}")))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StartQuery {
    instance_id: Option<String>,
    /// The orchestration version to stamp (the node's `[durable] version` when absent).
    version: Option<String>,
}

async fn start(
    State(api): State<Api>,
    Path(name): Path<String>,
    Query(q): Query<StartQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(refused) = api.refuse(&headers, &name, true) {
        return refused;
    }
    let input = match body_json(&body) {
        Ok(input) => input,
        Err(e) => return e.into_response(),
    };
    match api.engine.start(&name, q.instance_id, input, q.version).await {
        Ok(id) => api.accepted(&id),
        Err(e) => error(e),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StatusQuery {
    #[serde(default)]
    show_history: bool,
    #[serde(default = "yes")]
    show_input: bool,
}

fn yes() -> bool {
    true
}

/// Reads an instance for a caller allowed to see its orchestration.
async fn readable(api: &Api, headers: &HeaderMap, id: &str, write: bool) -> Result<Instance, Response> {
    // Authenticated first: whether an id exists is not for strangers to learn.
    if (api.authenticate)(headers).is_none() {
        return Err(api.refuse(headers, "*", write).unwrap_or_else(|| StatusCode::UNAUTHORIZED.into_response()));
    }
    let instance = api.engine.get(id).await.map_err(error)?;
    match api.refuse(headers, &instance.name, write) {
        Some(refused) => Err(refused),
        None => Ok(instance),
    }
}

async fn status(
    State(api): State<Api>,
    Path(id): Path<String>,
    Query(q): Query<StatusQuery>,
    headers: HeaderMap,
) -> Response {
    let instance = match readable(&api, &headers, &id, false).await {
        Ok(instance) => instance,
        Err(response) => return response,
    };
    let instance = match api.engine.get_resolved(&instance.id, q.show_input).await {
        Ok(instance) => instance,
        Err(e) => return error(e),
    };
    let mut body = describe(&instance, q.show_input);
    if q.show_history {
        match api.engine.history(&id).await {
            Ok(events) => body["historyEvents"] = Value::Array(events),
            Err(e) => return error(e.into()),
        }
    }
    let code = if instance.status.is_terminal() { StatusCode::OK } else { StatusCode::ACCEPTED };
    (code, Json(body)).into_response()
}

/// Durable Functions' status object.
fn describe(instance: &Instance, show_input: bool) -> Value {
    json!({
        "name": instance.name,
        "instanceId": instance.id,
        "runtimeStatus": instance.status,
        "input": if show_input { instance.input.clone() } else { Value::Null },
        "customStatus": instance.custom_status,
        "output": instance.output,
        "version": instance.version,
        "createdTime": model::rfc3339(instance.created),
        "lastUpdatedTime": model::rfc3339(instance.updated),
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListQuery {
    runtime_status: Option<String>,
    name: Option<String>,
    created_time_from: Option<String>,
    created_time_to: Option<String>,
    top: Option<usize>,
    continuation_token: Option<String>,
    #[serde(default = "yes")]
    show_input: bool,
}

async fn list(State(api): State<Api>, Query(q): Query<ListQuery>, headers: HeaderMap) -> Response {
    // Listing spans orchestrations: the admin's, or a grant for every one (`durable:*:r`).
    if let Some(refused) = api.refuse(&headers, "*", false) {
        return refused;
    }
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", m).into_response();
    let mut filter = Filter { name: q.name, ..Filter::default() };
    for s in q.runtime_status.iter().flat_map(|s| s.split(',')).map(str::trim).filter(|s| !s.is_empty()) {
        match Status::parse(s) {
            Some(status) => filter.statuses.push(status),
            None => {
                return bad(format!(
                    "runtimeStatus: unknown status \"{s}\" (Pending, Running, Completed, ContinuedAsNew, Failed, Terminated)"
                ));
            }
        }
    }
    for (key, value, into) in [
        ("createdTimeFrom", &q.created_time_from, &mut filter.created_from),
        ("createdTimeTo", &q.created_time_to, &mut filter.created_to),
    ] {
        if let Some(value) = value {
            match model::parse_rfc3339(value) {
                Some(ms) => *into = Some(ms),
                None => return bad(format!("{key}: \"{value}\" is not an RFC 3339 time")),
            }
        }
    }
    let top = q.top.unwrap_or(100);
    if !(1..=1000).contains(&top) {
        return bad("top: between 1 and 1000".into());
    }
    match api.engine.list(&filter, top, q.continuation_token.as_deref()).await {
        Ok(listed) => {
            let body: Vec<Value> = listed.instances.iter().map(|i| describe(i, q.show_input)).collect();
            let mut response = Json(body).into_response();
            // Durable Functions pages with this header.
            if let Some(token) = listed.continuation.and_then(|c| HeaderValue::from_str(&c).ok()) {
                response.headers_mut().insert("x-ms-continuation-token", token);
            }
            response
        }
        Err(e) => error(e),
    }
}

async fn raise(
    State(api): State<Api>,
    Path((id, event)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(response) = readable(&api, &headers, &id, true).await {
        return response;
    }
    let data = match body_json(&body) {
        Ok(data) => data,
        Err(e) => return e.into_response(),
    };
    match api.engine.raise(&id, &event, data).await {
        Ok(()) => StatusCode::ACCEPTED.into_response(),
        Err(e) => error(e),
    }
}

/// `?reason=` of terminate, suspend, resume and rewind.
#[derive(Deserialize)]
struct ReasonQuery {
    reason: Option<String>,
}

/// `POST /instances/{id}/{terminate|suspend|resume|rewind}?reason=`.
async fn control(
    State(api): State<Api>,
    Path((id, action)): Path<(String, String)>,
    Query(q): Query<ReasonQuery>,
    headers: HeaderMap,
) -> Response {
    if !matches!(action.as_str(), "terminate" | "suspend" | "resume" | "rewind") {
        return ApiError::not_found(format!("no route matches POST /_nimbus/durable/instances/{id}/{action}"))
            .into_response();
    }
    if let Err(response) = readable(&api, &headers, &id, true).await {
        return response;
    }
    let reason = q.reason.map_or(Value::Null, Value::String);
    let done = match action.as_str() {
        "terminate" => api.engine.terminate(&id, reason).await,
        "suspend" => api.engine.suspend(&id, true, reason).await,
        "resume" => api.engine.suspend(&id, false, reason).await,
        _ => api.engine.rewind(&id, reason).await,
    };
    match done {
        Ok(()) => StatusCode::ACCEPTED.into_response(),
        Err(e) => error(e),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RestartQuery {
    #[serde(default = "yes")]
    restart_with_new_instance_id: bool,
}

async fn restart(
    State(api): State<Api>,
    Path(id): Path<String>,
    Query(q): Query<RestartQuery>,
    headers: HeaderMap,
) -> Response {
    if let Err(response) = readable(&api, &headers, &id, true).await {
        return response;
    }
    match api.engine.restart(&id, q.restart_with_new_instance_id).await {
        Ok(id) => api.accepted(&id),
        Err(e) => error(e),
    }
}

async fn purge(State(api): State<Api>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    if let Err(response) = readable(&api, &headers, &id, true).await {
        return response;
    }
    match api.engine.purge(&id).await {
        Ok(()) => Json(json!({"instancesDeleted": 1})).into_response(),
        Err(e) => error(e),
    }
}

/// Payloads are for the admin and the app's orchestrators and activities.
fn may_use_payloads(api: &Api, headers: &HeaderMap) -> Result<(), ApiError> {
    match (api.authenticate)(headers) {
        Some(nimbus_api::Principal::Admin) => Ok(()),
        Some(nimbus_api::Principal::Function { function, .. }) => {
            let durable = api.engine.invoker.functions().iter().any(|f| {
                *f.name == *function
                    && matches!(f.trigger, nimbus_api::Trigger::Orchestrator {} | nimbus_api::Trigger::Activity {})
            });
            if durable {
                Ok(())
            } else {
                Err(ApiError::forbidden(format!(
                    "function \"{function}\" is neither an orchestrator nor an activity: durable payloads are not for it"
                )))
            }
        }
        None => Err(ApiError::unauthorized("this endpoint needs the admin token or a worker's token")),
    }
}

async fn upload(State(api): State<Api>, headers: HeaderMap, body: axum::body::Body) -> Response {
    if let Err(refused) = may_use_payloads(&api, &headers) {
        return refused.into_response();
    }
    match api.engine.payloads.upload(body.into_data_stream()).await {
        Ok(reference) => (StatusCode::CREATED, Json(reference)).into_response(),
        Err(e) => error(e.into()),
    }
}

async fn download(State(api): State<Api>, Path(key): Path<String>, headers: HeaderMap) -> Response {
    if let Err(refused) = may_use_payloads(&api, &headers) {
        return refused.into_response();
    }
    match api.engine.payloads.open(&key).await {
        Ok(download) => {
            let mut response = axum::body::Body::from_stream(download.body).into_response();
            let headers = response.headers_mut();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(download.info.size));
            response
        }
        Err(e) => error(e.into()),
    }
}
