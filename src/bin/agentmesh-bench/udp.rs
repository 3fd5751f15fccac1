//! The floor: a raw UDP ping-pong between two loopback sockets (an echo task answers
//! every datagram). Payloads above one datagram's limit go as several datagrams of at
//! most [`MAX_DATAGRAM`] bytes; the round trip ends when all have come back.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// Largest datagram sent (a loopback UDP datagram carries at most 65 507 bytes).
pub(crate) const MAX_DATAGRAM: usize = 32 * 1024;

/// A client socket and the echo task behind it.
pub(crate) struct UdpPingPong {
    client: UdpSocket,
    echo: JoinHandle<()>,
    buf: Vec<u8>,
}

impl UdpPingPong {
    pub(crate) async fn start() -> anyhow::Result<UdpPingPong> {
        let server = UdpSocket::bind("127.0.0.1:0").await?;
        let client = UdpSocket::bind("127.0.0.1:0").await?;
        client.connect(server.local_addr()?).await?;
        let echo = spawn_echo(server);
        Ok(UdpPingPong {
            client,
            echo,
            buf: vec![0u8; 65_536],
        })
    }

    /// A ping-pong between two sockets made elsewhere (e.g. in two network namespaces):
    /// `client` sends to `server_addr`, as which `server` is reached; `server` echoes.
    pub(crate) fn from_std(
        server: std::net::UdpSocket,
        client: std::net::UdpSocket,
        server_addr: std::net::SocketAddr,
    ) -> anyhow::Result<UdpPingPong> {
        server.set_nonblocking(true)?;
        client.set_nonblocking(true)?;
        client.connect(server_addr)?;
        let server = UdpSocket::from_std(server)?;
        let client = UdpSocket::from_std(client)?;
        let echo = spawn_echo(server);
        Ok(UdpPingPong {
            client,
            echo,
            buf: vec![0u8; 65_536],
        })
    }

    /// One round trip of `payload` bytes.
    pub(crate) async fn round_trip(&mut self, payload: &[u8]) -> anyhow::Result<Duration> {
        let started = Instant::now();
        for chunk in payload.chunks(MAX_DATAGRAM) {
            self.client.send(chunk).await?;
        }
        let mut got = 0;
        while got < payload.len() {
            let n = tokio::time::timeout(Duration::from_secs(2), self.client.recv(&mut self.buf))
                .await
                .context("udp echo lost a datagram")??;
            got += n;
        }
        if got != payload.len() {
            bail!("udp echo returned {got} bytes for {}", payload.len());
        }
        Ok(started.elapsed())
    }
}

/// The echo: every datagram goes back to its sender.
fn spawn_echo(server: UdpSocket) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, from)) = server.recv_from(&mut buf).await {
            if server.send_to(&buf[..n], from).await.is_err() {
                return;
            }
        }
    })
}

impl Drop for UdpPingPong {
    fn drop(&mut self) {
        self.echo.abort();
    }
}
