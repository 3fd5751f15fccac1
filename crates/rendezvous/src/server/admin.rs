//! The HTTP admin port: `GET /metrics` (Prometheus text) and `GET /status` (JSON). A
//! minimal HTTP/1.1 responder: one request per connection, then close.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::Shared;
use crate::metrics;

/// Largest request head read.
const MAX_HEAD: usize = 8 * 1024;

/// The metrics page.
pub(crate) fn metrics_text(shared: &Shared) -> String {
    let (m, g) = shared.with_core(|c| (c.metrics().clone(), c.gauges()));
    let k = &shared.counters;
    let extra = [
        (
            "rv_stun_answered_total",
            "STUN binding requests answered.",
            k.stun_answered.load(Ordering::Relaxed),
        ),
        (
            "rv_quic_sessions_total",
            "QUIC sessions opened.",
            k.quic_sessions.load(Ordering::Relaxed),
        ),
        (
            "rv_tcp_sessions_total",
            "TCP/TLS sessions opened.",
            k.tcp_sessions.load(Ordering::Relaxed),
        ),
        (
            "rv_slow_consumers_total",
            "Sessions closed for not reading.",
            k.slow_consumers.load(Ordering::Relaxed),
        ),
        (
            "rv_store_errors_total",
            "Failed store writes.",
            k.store_errors.load(Ordering::Relaxed),
        ),
    ];
    metrics::render(&m, &g, &extra)
}

fn status_json(shared: &Shared) -> String {
    let (id, g) = shared.with_core(|c| (c.id(), c.gauges()));
    serde_json::json!({
        "id": id.to_string(),
        "uptime_s": super::now().saturating_duration_since(shared.started).as_secs(),
        "sessions": g.sessions,
        "nodes_online": g.nodes_online,
        "agents": g.agents,
        "tenants": g.tenants,
    })
    .to_string()
}

/// Accepts admin connections until shutdown.
pub(crate) async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let stream = tokio::select! {
            a = listener.accept() => match a {
                Ok((s, _)) => s,
                Err(_) => continue,
            },
            _ = stop.changed() => break,
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), answer(stream, &shared)).await;
        });
    }
}

async fn answer(mut stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, ctype, body) = match (method, path) {
        ("GET", "/metrics") => ("200 OK", "text/plain; version=0.0.4", metrics_text(shared)),
        ("GET", "/status") => ("200 OK", "application/json", status_json(shared)),
        ("GET", _) => ("404 Not Found", "text/plain", "not found\n".to_string()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_string(),
        ),
    };
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(reply.as_bytes()).await?;
    stream.shutdown().await
}
