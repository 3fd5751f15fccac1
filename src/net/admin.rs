//! The daemon's admin listener on loopback: `GET /metrics` answers with the Prometheus
//! page, anything else with 404/405. A minimal HTTP/1.1 responder (one request per
//! connection, then close), like the rendezvous's and the relay's admin ports.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::debug;

/// Largest request head read.
const MAX_HEAD: usize = 8 * 1024;

/// How long one admin connection may take.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// Builds the metrics page when asked.
pub type MetricsPage = Arc<dyn Fn() -> String + Send + Sync>;

/// Accepts admin connections until the task is aborted.
pub async fn serve(listener: TcpListener, page: MetricsPage) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                debug!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let page = page.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(ANSWER_TIMEOUT, answer(stream, &page)).await;
        });
    }
}

async fn answer(mut stream: TcpStream, page: &MetricsPage) -> std::io::Result<()> {
    let head = read_head(&mut stream).await?;
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (status, ctype, body) = match (parts.next(), parts.next()) {
        (Some("GET"), Some("/metrics")) => ("200 OK", "text/plain; version=0.0.4", page()),
        (Some("GET"), _) => ("404 Not Found", "text/plain", "not found\n".into()),
        _ => ("405 Method Not Allowed", "text/plain", "GET only\n".into()),
    };
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(reply.as_bytes()).await?;
    stream.shutdown().await
}

async fn read_head(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    Ok(head)
}
