//! The broker contender: a real `nats-server` child process on 127.0.0.1 (random port,
//! killed on drop) and request/reply through `async-nats` between two connections (the
//! requester and an echo responder), in plain TCP or over TLS (a certificate for
//! 127.0.0.1 issued by a CA made for the run, which the clients trust), as a broker
//! whose traffic crosses a network would run. Even then the broker decrypts every
//! message; agentmesh's encryption is end to end.

use std::path::{Path, PathBuf};
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
    /// Starts a server and its two clients; with `tls`, the server requires TLS.
    pub(crate) async fn start(log_dir: &std::path::Path, tls: bool) -> anyhow::Result<Nats> {
        let port = free_port()?;
        let name = if tls { "nats-tls" } else { "nats" };
        let mut command = Command::new("nats-server");
        command
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-m", "0", "-l"])
            .arg(log_dir.join(format!("{name}.log")));
        let ca = if tls {
            let files = write_tls_files(log_dir)?;
            command
                .arg("--tls")
                .arg("--tlscert")
                .arg(&files.cert)
                .arg("--tlskey")
                .arg(&files.key);
            Some(files.ca)
        } else {
            None
        };
        let server = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nats-server (Debian package nats-server)")?;
        let mut nats = Nats {
            server,
            requester: connect(port, ca.as_deref()).await?,
            responder: tokio::spawn(async {}),
        };
        let responder = connect(port, ca.as_deref()).await?;
        nats.responder = spawn_echo(responder).await?;
        wait_for_echo(&nats.requester).await?;
        Ok(nats)
    }

    /// One request/reply of `payload`.
    pub(crate) async fn round_trip(&mut self, payload: &Bytes) -> anyhow::Result<Duration> {
        request_round_trip(&self.requester, payload).await
    }
}

/// Subscribes `responder` to the bench subject and answers every request with its
/// payload, in a task of the current runtime.
pub(crate) async fn spawn_echo(responder: async_nats::Client) -> anyhow::Result<JoinHandle<()>> {
    let mut sub = responder.subscribe(SUBJECT).await?;
    responder.flush().await?;
    Ok(tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            if let Some(reply) = msg.reply {
                if responder.publish(reply, msg.payload).await.is_err() {
                    return;
                }
            }
        }
    }))
}

/// Waits (bounded) until a request reaches the echo: the responder's subscription
/// travels on its own connection, and a request the server handles before it answers
/// "no responders".
pub(crate) async fn wait_for_echo(requester: &async_nats::Client) -> anyhow::Result<()> {
    let probe = Bytes::from_static(b"ready?");
    let mut last = None;
    for _ in 0..100 {
        match request_round_trip(requester, &probe).await {
            Ok(_) => return Ok(()),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no answer")))
        .context("the NATS echo never answered (5 s)")
}

/// One request/reply of `payload` on the bench subject, checked for length.
pub(crate) async fn request_round_trip(
    requester: &async_nats::Client,
    payload: &Bytes,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let reply = requester.request(SUBJECT, payload.clone()).await?;
    let took = started.elapsed();
    if reply.payload.len() != payload.len() {
        bail!("nats reply of {} bytes", reply.payload.len());
    }
    Ok(took)
}

/// The server's certificate and key and the CA that issued it, as PEM files.
struct TlsFiles {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

/// Makes a CA and a certificate for 127.0.0.1 issued by it, in `dir`.
fn write_tls_files(dir: &Path) -> anyhow::Result<TlsFiles> {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate()?;
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string()])?.signed_by(&key, &issuer)?;
    let files = TlsFiles {
        ca: dir.join("nats-ca.pem"),
        cert: dir.join("nats-cert.pem"),
        key: dir.join("nats-key.pem"),
    };
    std::fs::write(&files.ca, ca_cert.pem())?;
    std::fs::write(&files.cert, cert.pem())?;
    std::fs::write(&files.key, key.serialize_pem())?;
    Ok(files)
}

/// Connects (over TLS trusting `ca` when given), retrying while the server starts
/// (bounded).
async fn connect(port: u16, ca: Option<&Path>) -> anyhow::Result<async_nats::Client> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut options = async_nats::ConnectOptions::new();
        if let Some(ca) = ca {
            options = options
                .add_root_certificates(ca.to_path_buf())
                .require_tls(true);
        }
        match options.connect(format!("127.0.0.1:{port}")).await {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Plain and TLS servers both answer a request with its payload (needs `nats-server`,
    /// which `scripts/test` installs).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn plain_and_tls_brokers_echo_requests() {
        let dir = tempfile::tempdir().expect("tempdir");
        for tls in [false, true] {
            let mut nats = Nats::start(dir.path(), tls).await.expect("nats-server");
            let payload = Bytes::from(vec![b'z'; 1000]);
            nats.round_trip(&payload).await.expect("request/reply");
        }
        let log = std::fs::read_to_string(dir.path().join("nats-tls.log")).unwrap_or_default();
        assert!(log.contains("TLS required"), "server without TLS: {log}");
    }
}
