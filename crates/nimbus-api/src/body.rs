//! Bodies on their way through a component: the request body limit every component applies the
//! same way, and [`Watched`], a response body that shows each frame to an observer as it passes
//! (nothing is buffered) and tells it how the stream ended — the gateway counts bytes with it, the
//! AI gateway counts tokens.

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::http::{HeaderMap, StatusCode, header};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::ApiError;

/// The body length a request declares in `Content-Length`.
pub fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// The `413` for a body over `limit` bytes.
pub fn payload_too_large(limit: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("the request body is larger than the {limit}-byte limit"),
    )
}

/// Refuses a request whose declared length is over `limit` at once, and bounds the body of one
/// that declares none (chunked): reading past `limit` fails with
/// [`http_body_util::LengthLimitError`] in the error's source chain.
pub fn limit_body(req: axum::extract::Request, limit: u64) -> Result<axum::extract::Request, ApiError> {
    if declared_length(req.headers()).is_some_and(|n| n > limit) {
        return Err(payload_too_large(limit));
    }
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    Ok(req.map(|body| axum::body::Body::new(http_body_util::Limited::new(body, limit))))
}

/// Whether an error (or one of its sources) is a body read past [`limit_body`]'s limit.
pub fn is_too_large(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(error);
    while let Some(e) = source {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = e.source();
    }
    false
}

/// How a watched body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Read to its end.
    Complete,
    /// The body failed (an upstream or worker broke off, a deadline passed).
    Failed,
    /// Dropped before its end: the client went away.
    Abandoned,
}

/// What sees a watched body go by.
pub trait Watch: Send + 'static {
    /// Each data frame, as it passes.
    fn frame(&mut self, data: &Bytes);
    /// Once, when the body ends in whichever way.
    fn end(&mut self, end: End);
}

pin_project_lite::pin_project! {
    /// A body passed on frame by frame, each data frame shown to `W` first.
    pub struct Watched<B, W: Watch> {
        #[pin]
        inner: B,
        watch: W,
        ended: bool,
    }

    impl<B, W: Watch> PinnedDrop for Watched<B, W> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if !*this.ended {
                this.watch.end(End::Abandoned);
            }
        }
    }
}

impl<B, W: Watch> Watched<B, W> {
    pub fn new(inner: B, watch: W) -> Self {
        Self { inner, watch, ended: false }
    }
}

impl<B, W> Body for Watched<B, W>
where
    B: Body<Data = Bytes>,
    W: Watch,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        if *this.ended {
            return Poll::Ready(None);
        }
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.watch.frame(data);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                *this.ended = true;
                this.watch.end(End::Failed);
            }
            Poll::Ready(None) => {
                *this.ended = true;
                this.watch.end(End::Complete);
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use http_body_util::BodyExt;

    use super::*;

    #[derive(Clone, Default)]
    struct Seen(Arc<Mutex<(Vec<Bytes>, Vec<End>)>>);

    impl Watch for Seen {
        fn frame(&mut self, data: &Bytes) {
            self.0.lock().unwrap().0.push(data.clone());
        }
        fn end(&mut self, end: End) {
            self.0.lock().unwrap().1.push(end);
        }
    }

    fn stream(parts: Vec<Result<&'static str, &'static str>>) -> axum::body::Body {
        let frames = parts
            .into_iter()
            .map(|p| p.map(|s: &'static str| Bytes::from_static(s.as_bytes())).map_err(std::io::Error::other));
        axum::body::Body::from_stream(futures_util::stream::iter(frames))
    }

    #[tokio::test]
    async fn every_frame_is_seen_and_the_end_told_once() {
        let seen = Seen::default();
        let body = Watched::new(stream(vec![Ok("a"), Ok("bc")]), seen.clone());
        assert_eq!(body.collect().await.unwrap().to_bytes(), "abc");
        assert_eq!(*seen.0.lock().unwrap(), (vec![Bytes::from("a"), Bytes::from("bc")], vec![End::Complete]));

        let seen = Seen::default();
        let body = Watched::new(stream(vec![Ok("a"), Err("broken")]), seen.clone());
        assert!(body.collect().await.is_err());
        assert_eq!(seen.0.lock().unwrap().1, vec![End::Failed]);

        let seen = Seen::default();
        let mut body = Watched::new(stream(vec![Ok("a"), Ok("b")]), seen.clone());
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first, "a");
        drop(body);
        assert_eq!(*seen.0.lock().unwrap(), (vec![Bytes::from("a")], vec![End::Abandoned]));
    }

    #[tokio::test]
    async fn bodies_over_the_limit_are_refused() {
        let req = |len: Option<&str>, body: &'static str| {
            let mut b = axum::http::Request::post("/");
            if let Some(len) = len {
                b = b.header("content-length", len);
            }
            b.body(axum::body::Body::from(body)).unwrap()
        };
        let refused = limit_body(req(Some("11"), "hello world"), 10).unwrap_err();
        assert_eq!((refused.status, refused.code), (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"));
        let chunked = limit_body(req(None, "hello world"), 10).unwrap();
        let e = chunked.into_body().collect().await.unwrap_err();
        assert!(is_too_large(&e), "{e}");
        let fits = limit_body(req(Some("5"), "hello"), 10).unwrap();
        assert_eq!(fits.into_body().collect().await.unwrap().to_bytes(), "hello");
    }
}
