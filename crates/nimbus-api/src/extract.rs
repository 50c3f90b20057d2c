//! axum's `Path` and `Query` extractors with their rejections in the JSON error shape: axum answers
//! a malformed path parameter or query string with a plain-text `400`; every platform endpoint
//! answers `{"error": {"code": "invalid_request", "message"}}` instead.

use axum::extract::{FromRequestParts, OptionalFromRequestParts};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::ApiError;

/// `axum::extract::Path`, refusing in the JSON error shape.
#[derive(Debug)]
pub struct Path<T>(pub T);

/// `axum::extract::Query`, refusing in the JSON error shape.
#[derive(Debug)]
pub struct Query<T>(pub T);

fn invalid(what: &str, detail: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", format!("{what}: {detail}"))
}

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match <axum::extract::Path<T> as FromRequestParts<S>>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Self(value)),
            Err(e) => Err(invalid("the path is not valid", e.body_text())),
        }
    }
}

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match <axum::extract::Query<T> as FromRequestParts<S>>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Self(value)),
            Err(e) => Err(invalid("the query string is not valid", e.body_text())),
        }
    }
}

impl<T: DeserializeOwned + Send, S: Send + Sync> OptionalFromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Option<Self>, ApiError> {
        match parts.uri.query() {
            None => Ok(None),
            Some(_) => <Self as FromRequestParts<S>>::from_request_parts(parts, state).await.map(Some),
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::Router;
    use axum::routing::get;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;

    #[derive(serde::Deserialize)]
    struct Q {
        #[allow(dead_code)]
        n: u32,
    }

    #[tokio::test]
    async fn rejections_use_the_json_error_shape() {
        let app = Router::new()
            .route("/p/{id}", get(|Path(id): Path<u32>| async move { id.to_string() }))
            .route("/q", get(|Query(_q): Query<Q>| async { "ok" }));
        for uri in ["/p/notanumber", "/q?n=minus", "/q"] {
            let resp = app.clone().oneshot(axum::http::Request::get(uri).body(axum::body::Body::empty()).unwrap());
            let resp = resp.await.unwrap();
            assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{uri}");
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_else(|_| panic!("{uri}: {body:?}"));
            assert_eq!(json["error"]["code"], "invalid_request", "{uri}");
        }
    }
}
