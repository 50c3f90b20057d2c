//! Serving with graceful shutdown: on the shutdown signal the listener stops accepting, idle
//! connections close, in-flight requests run on for at most the grace period, then the server
//! stops regardless.

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownOutcome {
    /// Every in-flight request finished.
    Drained,
    /// The grace period ran out with requests still in flight; they were dropped.
    GraceExpired,
}

pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> std::io::Result<ShutdownOutcome> {
    let (began, began_rx) = tokio::sync::oneshot::channel::<()>();
    let signal = async move {
        shutdown.await;
        tracing::info!(grace = ?grace, "shutting down: no new connections, draining in-flight requests");
        let _ = began.send(());
    };
    // TCP_NODELAY: a response whose head and body leave in separate writes (a streamed body, a
    // file read after the headers) must not wait for the client's delayed ACK (~40 ms) under Nagle.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    let server = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(signal)
        .into_future();
    let grace_over = async move {
        match began_rx.await {
            Ok(()) => tokio::time::sleep(grace).await,
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        result = server => result.map(|()| ShutdownOutcome::Drained),
        () = grace_over => {
            tracing::warn!("grace period over; dropping requests still in flight");
            Ok(ShutdownOutcome::GraceExpired)
        }
    }
}
