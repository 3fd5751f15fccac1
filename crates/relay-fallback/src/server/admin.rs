//! Admin HTTP on loopback: `GET /metrics` (Prometheus text) and `GET /status` (JSON).
//! Deliberately tiny: one request per connection, no keep-alive, no body.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::{ServerError, Shared};

/// Spawns the admin server on `listener` (bound for `addr`); returns its address.
pub(super) fn spawn(
    tasks: &mut JoinSet<()>,
    shared: Arc<Shared>,
    listener: TcpListener,
    addr: SocketAddr,
    mut stop: watch::Receiver<bool>,
) -> Result<SocketAddr, ServerError> {
    let local = listener
        .local_addr()
        .map_err(|source| ServerError::Bind { addr, source })?;
    tasks.spawn(async move {
        loop {
            tokio::select! {
                r = listener.accept() => if let Ok((s, _)) = r {
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(Duration::from_secs(5), answer(&shared, s)).await;
                    });
                },
                _ = stop.changed() => return,
            }
        }
    });
    Ok(local)
}

async fn answer(shared: &Shared, mut s: TcpStream) -> std::io::Result<()> {
    let mut buf = [0u8; 1024];
    let mut n = 0;
    while n < buf.len() {
        let m = s.read(&mut buf[n..]).await?;
        if m == 0 {
            break;
        }
        n += m;
        if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let request = String::from_utf8_lossy(&buf[..n]);
    let path = request.split_whitespace().nth(1).unwrap_or("");
    let (status, ctype, body) = match path {
        "/metrics" => (
            "200 OK",
            "text/plain; version=0.0.4",
            shared.core().snapshot().prometheus(),
        ),
        "/status" => {
            let snap = shared.core().snapshot();
            (
                "200 OK",
                "application/json",
                serde_json::to_string_pretty(&snap).unwrap_or_default(),
            )
        }
        _ => ("404 Not Found", "text/plain", "not found\n".to_string()),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await?;
    s.write_all(body.as_bytes()).await?;
    s.shutdown().await
}
