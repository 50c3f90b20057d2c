//! Lingering reads. A request answered before its body was read (a 413 decided from
//! `Content-Length`, a 401 on an upload) would otherwise have its connection closed while the
//! client is still sending, and the reset that follows can make the client's TCP stack throw our
//! answer away. Like nginx's lingering close, the rest of such a body is read and dropped while
//! the response is written, within a byte and a time bound, so the connection even stays usable.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt;

/// At most this much of an unread body is read and dropped.
const LINGER_BYTES: u64 = 64 * 1024 * 1024;
/// And for at most this long.
const LINGER_TIME: Duration = Duration::from_secs(10);

type Slot = Arc<Mutex<Option<Body>>>;

pub(crate) async fn linger(req: Request, next: Next) -> Response {
    // A client that sent `Expect: 100-continue` waits for our word before sending the body.
    let expects_continue = req.headers().get(axum::http::header::EXPECT).is_some();
    if expects_continue || req.body().is_end_stream() {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let slot: Slot = Arc::new(Mutex::new(Some(body)));
    let response = next.run(Request::from_parts(parts, Body::new(Shared(slot.clone())))).await;
    // A handler that still streams the body somewhere holds the slot too and is left alone.
    let rest = Arc::try_unwrap(slot).ok().and_then(|m| m.into_inner().unwrap_or_else(|e| e.into_inner()));
    if let Some(body) = rest.filter(|body| !body.is_end_stream()) {
        tokio::spawn(read_and_drop(body));
    }
    response
}

/// Reads what is left of a body, within the bounds, while the connection writes the response.
async fn read_and_drop(mut body: Body) {
    let mut read = 0u64;
    let _ = tokio::time::timeout(LINGER_TIME, async {
        while let Some(Ok(frame)) = body.frame().await {
            read += frame.data_ref().map_or(0, |d| d.len() as u64);
            if read > LINGER_BYTES {
                break;
            }
        }
    })
    .await;
}

/// The request body as the handler sees it; the middleware keeps a handle on what it leaves.
struct Shared(Slot);

impl http_body::Body for Shared {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match slot.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}
