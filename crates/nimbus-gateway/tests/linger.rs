//! A body refused before it was read (413 from `Content-Length`) does not cost the client its
//! answer: the server reads and drops the rest, so the connection survives the upload and
//! serves the next request.

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::routing::post;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn app() -> Router {
    nimbus_gateway::edge(
        Router::new()
            .route("/small", post(|body: Bytes| async move { format!("{}", body.len()) }))
            .layer(axum::extract::DefaultBodyLimit::max(1024)),
    )
}

/// Reads a response head up to its blank line.
async fn read_head(stream: &mut (impl AsyncReadExt + Unpin)) -> String {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        assert_eq!(stream.read(&mut byte).await.unwrap(), 1, "the connection closed mid-response: {buf:?}");
        buf.push(byte[0]);
    }
    String::from_utf8(buf).unwrap()
}

/// Reads the body a head announces with `Content-Length`.
async fn skip_body(stream: &mut (impl AsyncReadExt + Unpin), head: &str) {
    let length: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
        .unwrap();
    let mut body = vec![0; length];
    stream.read_exact(&mut body).await.unwrap();
}

#[tokio::test]
async fn a_refused_upload_keeps_its_answer_and_its_connection() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(nimbus_gateway::serve(listener, app(), std::future::pending(), Duration::from_secs(1)));

    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let size = 8 * 1024 * 1024;
    let head = format!("POST /small HTTP/1.1\r\nhost: x\r\ncontent-length: {size}\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    // The answer comes before the upload ends; the whole upload still goes through.
    let upload = tokio::spawn(async move {
        let chunk = vec![b'a'; 64 * 1024];
        for _ in 0..size / chunk.len() {
            writer.write_all(&chunk).await.expect("the server stopped reading the upload");
        }
        writer.write_all(b"POST /small HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\nhi").await.unwrap();
        writer
    });
    let refused = read_head(&mut reader).await;
    assert!(refused.starts_with("HTTP/1.1 413"), "{refused}");
    skip_body(&mut reader, &refused).await;
    let writer = upload.await.unwrap();
    let mut stream = reader.reunite(writer).unwrap();
    // The next request on the same connection is answered.
    let next = read_head(&mut stream).await;
    assert!(next.starts_with("HTTP/1.1 200 OK"), "{next}");
    skip_body(&mut stream, &next).await;
}
