//! Graceful shutdown: in-flight requests finish within the grace period; past it, the server
//! stops anyway.

use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use nimbus_gateway::{ShutdownOutcome, serve};

fn slow_app(delay: Duration) -> Router {
    nimbus_gateway::edge(Router::new().route(
        "/slow",
        get(move || async move {
            tokio::time::sleep(delay).await;
            "done"
        }),
    ))
}

async fn start(
    delay: Duration,
    grace: Duration,
) -> (String, tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<std::io::Result<ShutdownOutcome>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/slow", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(
        listener,
        slow_app(delay),
        async move {
            let _ = stopped.await;
        },
        grace,
    ));
    (url, stop, server)
}

#[tokio::test]
async fn in_flight_requests_finish_within_the_grace_period() {
    let (url, stop, server) = start(Duration::from_millis(500), Duration::from_secs(10)).await;
    let request = tokio::spawn(async move { reqwest::get(&url).await.unwrap().text().await.unwrap() });
    tokio::time::sleep(Duration::from_millis(100)).await; // let the request arrive
    stop.send(()).unwrap();
    assert_eq!(request.await.unwrap(), "done");
    assert_eq!(server.await.unwrap().unwrap(), ShutdownOutcome::Drained);
}

#[tokio::test]
async fn the_grace_period_bounds_the_drain() {
    let (url, stop, server) = start(Duration::from_secs(30), Duration::from_millis(300)).await;
    let request = tokio::spawn(async move { reqwest::get(&url).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let asked = Instant::now();
    stop.send(()).unwrap();
    assert_eq!(server.await.unwrap().unwrap(), ShutdownOutcome::GraceExpired);
    assert!(asked.elapsed() < Duration::from_secs(5), "took {:?}", asked.elapsed());
    request.abort();
}
