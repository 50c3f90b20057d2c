//! The REST API under `/_nimbus/docs`:
//! - `GET /_nimbus/docs` (containers), `PUT`/`GET`/`DELETE /_nimbus/docs/{container}`;
//! - `POST /_nimbus/docs/{container}/items` (create; `x-nimbus-upsert: true` upserts),
//!   `GET /_nimbus/docs/{container}/items?pk=&continuation=&maxItems=` (read feed),
//!   `GET|PUT|PATCH|DELETE /_nimbus/docs/{container}/items/{id}?pk=…` (`If-Match` on writes);
//! - `POST /_nimbus/docs/{container}/query` with `{"query", "parameters", "partitionKey",
//!   "continuation", "maxItems"}` (a page ends at `maxItems` rows or past 4 MB);
//! - `POST /_nimbus/docs/{container}/batch` with `{"partitionKey", "operations"}`;
//! - `GET /_nimbus/docs/{container}/feed?pk=&continuation=&maxItems=&startFrom=now|beginning` (change
//!   feed).
//!
//! `pk` is the partition key value: JSON (`"a"`, `5`, `true`, `null`) or, when it does not parse
//! as JSON, the string itself. Callers need the admin token or a function's grant
//! (`docs:<container>:r|rw`). Every error is in the JSON error shape: bodies are read as bytes and
//! parsed here, path and query strings through `nimbus_api::extract`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use nimbus_api::ApiError;
use nimbus_api::extract::{Path, Query};
use serde::Deserialize;
use serde_json::Value;

use crate::engine::{BatchOp, DocsError, MAX_ITEM_BYTES};
use crate::model::Container;
use crate::patch::PatchOp;
use crate::{Docs, query};

#[derive(Clone)]
struct Api {
    docs: Docs,
    authenticate: nimbus_api::Authenticate,
}

impl Api {
    /// `None` when the caller may go on; else the refusal (see [`nimbus_api::authorize`]).
    fn refuse(&self, headers: &HeaderMap, container: &str, write: bool) -> Option<Response> {
        nimbus_api::authorize(&self.authenticate, headers, "docs", container, write)
            .err()
            .map(IntoResponse::into_response)
    }

    fn refuse_admin(&self, headers: &HeaderMap) -> Option<Response> {
        match (self.authenticate)(headers) {
            Some(p) if p.is_admin() => None,
            Some(p) => Some(ApiError::forbidden(format!("{} may not manage containers", p.describe())).into_response()),
            None => Some(ApiError::unauthorized("this endpoint needs the admin token").into_response()),
        }
    }
}

pub(crate) fn error(e: &DocsError) -> ApiError {
    let (status, code) = match e {
        DocsError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
        DocsError::NoContainer(_) => (StatusCode::NOT_FOUND, "container_not_found"),
        DocsError::NotFound { .. } => (StatusCode::NOT_FOUND, "not_found"),
        DocsError::Exists { .. } | DocsError::ContainerExists(_) => (StatusCode::CONFLICT, "conflict"),
        DocsError::Unique(_) => (StatusCode::CONFLICT, "unique_key_violation"),
        DocsError::Precondition(_) => (StatusCode::PRECONDITION_FAILED, "precondition_failed"),
        DocsError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "item_too_large"),
        DocsError::BodyTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
        DocsError::Query(_) => (StatusCode::BAD_REQUEST, "invalid_query"),
        DocsError::TooExpensive(_) => (StatusCode::BAD_REQUEST, "query_too_expensive"),
        DocsError::Timeout(_) => (StatusCode::REQUEST_TIMEOUT, "query_timeout"),
        DocsError::Continuation(_) => (StatusCode::BAD_REQUEST, "invalid_continuation"),
        DocsError::Busy => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
        DocsError::Batch { source, .. } => {
            let inner = error(source);
            (inner.status, inner.code)
        }
        DocsError::Store(_) => {
            tracing::error!(error = %e, "docs storage failed");
            return ApiError::internal();
        }
    };
    ApiError::new(status, code, e.to_string())
}

fn respond(result: Result<Response, DocsError>) -> Response {
    result.unwrap_or_else(|e| error(&e).into_response())
}

/// A request body, refused with our error shape when it is too big or cut off.
type Body = Result<Bytes, axum::extract::rejection::BytesRejection>;

/// What a body is, for the message that refuses it.
#[derive(Clone, Copy)]
enum BodyOf {
    /// An item: too large is `item_too_large`.
    Item,
    /// Anything else (`"the query body"`): too large is `payload_too_large`.
    Other(&'static str),
}

/// Bodies are at most this large: an item, and room for the JSON around it.
const MAX_BODY: usize = MAX_ITEM_BYTES + 64 * 1024;

/// A JSON body, refused with a clear message when it is not JSON or too big.
fn json_body(body: &Body, of: BodyOf) -> Result<Value, DocsError> {
    let too_large = |size: Option<usize>| match of {
        BodyOf::Item => DocsError::TooLarge(size.unwrap_or(BODY_LIMIT)),
        BodyOf::Other(what) => DocsError::BodyTooLarge {
            what,
            size: size.map_or_else(|| format!("over {BODY_LIMIT}"), |n| n.to_string()),
            limit: MAX_BODY,
        },
    };
    let bytes = match body {
        Ok(bytes) => bytes,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => return Err(too_large(None)),
        Err(e) => return Err(DocsError::Invalid(format!("the body could not be read: {}", e.body_text()))),
    };
    if bytes.len() > MAX_BODY {
        return Err(too_large(Some(bytes.len())));
    }
    serde_json::from_slice(bytes).map_err(|e| DocsError::Invalid(format!("the body is not valid JSON: {e}")))
}

/// Bodies are read up to this size, so the item limit is answered with our error and not cut off.
const BODY_LIMIT: usize = MAX_ITEM_BYTES * 3;

/// The item with its ETag as a header too.
fn item_response(status: StatusCode, item: Value) -> Response {
    let etag = item.get("_etag").and_then(Value::as_str).and_then(|e| HeaderValue::from_str(e).ok());
    let mut response = (status, Json(item)).into_response();
    if let Some(etag) = etag {
        response.headers_mut().insert(header::ETAG, etag);
    }
    response
}

/// `pk=…`: JSON, or the bare string.
fn partition_key(raw: Option<&str>) -> Result<Value, DocsError> {
    let raw = raw.ok_or_else(|| DocsError::Invalid("the partition key is missing: add ?pk=<value>".into()))?;
    parse_pk(raw)
}

fn parse_pk(raw: &str) -> Result<Value, DocsError> {
    match serde_json::from_str::<Value>(raw) {
        Ok(v) if v.is_object() || v.is_array() => Err(DocsError::Invalid(
            "a partition key is a string, number, boolean or null, not an object or array".into(),
        )),
        Ok(v) => Ok(v),
        Err(_) => Ok(Value::String(raw.to_owned())),
    }
}

fn if_match(headers: &HeaderMap) -> Option<String> {
    headers.get(header::IF_MATCH).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PageQuery {
    pk: Option<String>,
    continuation: Option<String>,
    max_items: Option<usize>,
    /// Change feed only: `now` starts at the present (an empty page and its continuation);
    /// `beginning`, the default, from the first change.
    start_from: Option<String>,
}

fn max_items(requested: Option<usize>) -> Result<usize, DocsError> {
    match requested {
        None => Ok(100),
        Some(n) if (1..=1000).contains(&n) => Ok(n),
        Some(_) => Err(DocsError::Invalid("maxItems is 1 to 1000".into())),
    }
}

async fn list_containers(State(api): State<Api>, headers: HeaderMap) -> Response {
    if let Some(refusal) = api.refuse_admin(&headers) {
        return refusal;
    }
    respond(api.docs.containers().await.map(|all| Json(serde_json::json!({ "containers": all })).into_response()))
}

async fn get_container(State(api): State<Api>, headers: HeaderMap, Path(name): Path<String>) -> Response {
    if let Some(refusal) = api.refuse(&headers, &name, false) {
        return refusal;
    }
    respond(api.docs.container(&name).await.map(|c| Json(c).into_response()))
}

async fn put_container(State(api): State<Api>, headers: HeaderMap, Path(name): Path<String>, body: Body) -> Response {
    if let Some(refusal) = api.refuse_admin(&headers) {
        return refusal;
    }
    let result = async {
        let mut value = json_body(&body, BodyOf::Other("the container definition"))?;
        if let Some(map) = value.as_object_mut() {
            map.insert("name".into(), Value::String(name));
        }
        let c: Container = serde_json::from_value(value)
            .map_err(|e| DocsError::Invalid(format!("not a container definition: {e}")))?;
        let c = api.docs.create_container(c).await?;
        Ok((StatusCode::CREATED, Json(c)).into_response())
    };
    respond(result.await)
}

async fn delete_container(State(api): State<Api>, headers: HeaderMap, Path(name): Path<String>) -> Response {
    if let Some(refusal) = api.refuse_admin(&headers) {
        return refusal;
    }
    respond(api.docs.delete_container(&name).await.map(|()| StatusCode::NO_CONTENT.into_response()))
}

async fn create_item(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(container): Path<String>,
    body: Body,
) -> Response {
    if let Some(refusal) = api.refuse(&headers, &container, true) {
        return refusal;
    }
    let upsert =
        headers.get("x-nimbus-upsert").and_then(|v| v.to_str().ok()).is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let result = async {
        let item = json_body(&body, BodyOf::Item)?;
        if upsert {
            let (item, created) = api.docs.upsert(&container, item).await?;
            Ok(item_response(if created { StatusCode::CREATED } else { StatusCode::OK }, item))
        } else {
            api.docs.create(&container, item).await.map(|i| item_response(StatusCode::CREATED, i))
        }
    };
    respond(result.await)
}

async fn read_feed(state: State<Api>, headers: HeaderMap, path: Path<String>, q: Query<PageQuery>) -> Response {
    feed(state, headers, path, q, false).await
}

async fn change_feed(state: State<Api>, headers: HeaderMap, path: Path<String>, q: Query<PageQuery>) -> Response {
    feed(state, headers, path, q, true).await
}

/// The read feed (items in key order) or the change feed (in the order of their last change).
async fn feed(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(container): Path<String>,
    Query(q): Query<PageQuery>,
    changes: bool,
) -> Response {
    if let Some(refusal) = api.refuse(&headers, &container, false) {
        return refusal;
    }
    let result = async {
        let pk = q.pk.as_deref().map(parse_pk).transpose()?;
        let (continuation, max) = (q.continuation.as_deref(), max_items(q.max_items)?);
        let now = match (changes, q.start_from.as_deref()) {
            (_, None | Some("beginning")) => false,
            (true, Some("now")) => continuation.is_none(),
            (true, Some(other)) => {
                return Err(DocsError::Invalid(format!("startFrom is \"now\" or \"beginning\", not \"{other}\"")));
            }
            (false, Some(_)) => return Err(DocsError::Invalid("startFrom is for the change feed (…/feed)".into())),
        };
        if now {
            let continuation = Some(api.docs.feed_now(&container).await?);
            return Ok(Json(crate::Page { items: Vec::new(), continuation }).into_response());
        }
        let page = match changes {
            true => api.docs.change_feed(&container, pk.as_ref(), continuation, max).await?,
            false => api.docs.read_feed(&container, pk.as_ref(), continuation, max).await?,
        };
        Ok(Json(page).into_response())
    };
    respond(result.await)
}

#[derive(Deserialize)]
struct ItemQuery {
    pk: Option<String>,
}

async fn item(
    State(api): State<Api>,
    method: axum::http::Method,
    headers: HeaderMap,
    Path((container, id)): Path<(String, String)>,
    Query(q): Query<ItemQuery>,
    body: Body,
) -> Response {
    use axum::http::Method;
    let write = method != Method::GET && method != Method::HEAD;
    if let Some(refusal) = api.refuse(&headers, &container, write) {
        return refusal;
    }
    let result = async {
        let pk = partition_key(q.pk.as_deref())?;
        let if_match = if_match(&headers);
        match method {
            Method::GET | Method::HEAD => {
                api.docs.read(&container, &id, &pk).await.map(|i| item_response(StatusCode::OK, i))
            }
            Method::PUT => {
                let item = json_body(&body, BodyOf::Item)?;
                api.docs
                    .replace(&container, &id, &pk, item, if_match.as_deref())
                    .await
                    .map(|i| item_response(StatusCode::OK, i))
            }
            Method::PATCH => {
                let ops = json_body(&body, BodyOf::Other("the patch"))?;
                let ops = ops.get("operations").cloned().unwrap_or(ops);
                let ops: Vec<PatchOp> = serde_json::from_value(ops).map_err(|e| {
                    DocsError::Invalid(format!("a patch is a list of {{\"op\", \"path\", \"value\"}}: {e}"))
                })?;
                api.docs
                    .patch(&container, &id, &pk, &ops, if_match.as_deref())
                    .await
                    .map(|i| item_response(StatusCode::OK, i))
            }
            Method::DELETE => api
                .docs
                .delete(&container, &id, &pk, if_match.as_deref())
                .await
                .map(|()| StatusCode::NO_CONTENT.into_response()),
            _ => unreachable!("the router sends only GET, HEAD, PUT, PATCH and DELETE here"),
        }
    };
    respond(result.await)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct QueryRequest {
    query: String,
    #[serde(default)]
    parameters: Vec<Parameter>,
    /// Absent: every partition; present (even `null`): that partition.
    #[serde(default, deserialize_with = "present")]
    partition_key: Option<Value>,
    #[serde(default)]
    continuation: Option<String>,
    #[serde(default)]
    max_items: Option<usize>,
}

/// `Some` for a field that is there, `null` included (serde's `Option` reads `null` as absent).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Parameter {
    name: String,
    value: Value,
}

async fn run_query(State(api): State<Api>, headers: HeaderMap, Path(container): Path<String>, body: Body) -> Response {
    if let Some(refusal) = api.refuse(&headers, &container, false) {
        return refusal;
    }
    let result = async {
        let request: QueryRequest = serde_json::from_value(json_body(&body, BodyOf::Other("the query body"))?).map_err(|e| {
            DocsError::Invalid(format!(
                "a query is {{\"query\", \"parameters\"?, \"partitionKey\"?, \"continuation\"?, \"maxItems\"?}}: {e}"
            ))
        })?;
        let mut params = query::Params::new();
        for p in request.parameters {
            if !p.name.starts_with('@') || p.name.len() < 2 {
                return Err(DocsError::Invalid(format!("parameter names start with @: \"{}\"", p.name)));
            }
            params.insert(p.name, p.value);
        }
        if request.partition_key.as_ref().is_some_and(|v| v.is_object() || v.is_array()) {
            return Err(DocsError::Invalid("partitionKey is a string, number, boolean or null".into()));
        }
        let max = max_items(request.max_items)?;
        let page = api
            .docs
            .query(
                &container,
                &request.query,
                &params,
                request.partition_key.as_ref(),
                request.continuation.as_deref(),
                max,
            )
            .await?;
        Ok(Json(page).into_response())
    };
    respond(result.await)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct BatchRequest {
    partition_key: Value,
    operations: Vec<BatchOp>,
}

async fn batch(State(api): State<Api>, headers: HeaderMap, Path(container): Path<String>, body: Body) -> Response {
    if let Some(refusal) = api.refuse(&headers, &container, true) {
        return refusal;
    }
    let result = async {
        let request: BatchRequest = serde_json::from_value(json_body(&body, BodyOf::Other("the batch"))?)
            .map_err(|e| DocsError::Invalid(format!("a batch is {{\"partitionKey\", \"operations\": [{{\"op\": \"create\"|\"upsert\"|\"replace\"|\"delete\"|\"read\"|\"patch\", …}}]}}: {e}")))?;
        let results = api.docs.batch(&container, &request.partition_key, request.operations).await?;
        let results: Vec<Value> =
            results.into_iter().map(|(status, item)| serde_json::json!({"status": status, "item": item})).collect();
        Ok(Json(serde_json::json!({ "results": results })).into_response())
    };
    match result.await {
        Ok(r) => r,
        Err(e @ DocsError::Batch { index, .. }) => {
            let api_error = error(&e);
            let mut body = serde_json::to_value(api_error.body()).unwrap_or_default();
            body["error"]["operationIndex"] = Value::from(index);
            (api_error.status, Json(body)).into_response()
        }
        Err(e) => error(&e).into_response(),
    }
}

pub fn router(docs: Docs, authenticate: nimbus_api::Authenticate) -> axum::Router {
    axum::Router::new()
        .route("/_nimbus/docs", get(list_containers))
        .route("/_nimbus/docs/{container}", get(get_container).put(put_container).delete(delete_container))
        .route("/_nimbus/docs/{container}/items", post(create_item).get(read_feed))
        .route("/_nimbus/docs/{container}/items/{id}", get(item).put(item).patch(item).delete(item))
        .route("/_nimbus/docs/{container}/query", post(run_query))
        .route("/_nimbus/docs/{container}/batch", post(batch))
        .route("/_nimbus/docs/{container}/feed", get(change_feed))
        // Bodies are checked against the item limit by the handlers, with a clear error.
        .layer(axum::extract::DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(Api { docs, authenticate })
}
