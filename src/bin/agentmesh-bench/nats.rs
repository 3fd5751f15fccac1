//! The broker contender: a real `nats-server` child process on 127.0.0.1 (random port,
//! killed on drop) and request/reply through `async-nats` between two connections (the
//! requester and an echo responder).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::task::JoinHandle;

const SUBJECT: &str = "bench.echo";

/// The running server and the two clients.
pub(crate) struct Nats {
    server: Child,
    requester: async_nats::Client,
    responder: JoinHandle<()>,
}

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

impl Nats {
    pub(crate) async fn start(log_dir: &std::path::Path) -> anyhow::Result<Nats> {
        let port = free_port()?;
        let server = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-m", "0", "-l"])
            .arg(log_dir.join("nats.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nats-server (Debian package nats-server)")?;
        let mut nats = Nats {
            server,
            requester: connect(port).await?,
            responder: tokio::spawn(async {}),
        };
        let responder = connect(port).await?;
        let mut sub = responder.subscribe(SUBJECT).await?;
        responder.flush().await?;
        nats.responder = tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                if let Some(reply) = msg.reply {
                    if responder.publish(reply, msg.payload).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(nats)
    }

    /// One request/reply of `payload`.
    pub(crate) async fn round_trip(&mut self, payload: &Bytes) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let reply = self.requester.request(SUBJECT, payload.clone()).await?;
        let took = started.elapsed();
        if reply.payload.len() != payload.len() {
            bail!("nats reply of {} bytes", reply.payload.len());
        }
        Ok(took)
    }
}

/// Connects, retrying while the server starts (bounded).
async fn connect(port: u16) -> anyhow::Result<async_nats::Client> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match async_nats::connect(format!("127.0.0.1:{port}")).await {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() > deadline => {
                return Err(e).context("nats-server never ready")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.responder.abort();
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}
