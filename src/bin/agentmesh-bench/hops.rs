//! The architecture's floor: the hops an agentmesh request takes, with no protocol on
//! them. A caller writes a line to a forwarder over a Unix socket, the forwarder sends
//! the bytes over UDP to a second forwarder, which writes them over a Unix socket to an
//! echo; the echo's line comes back the same way. Each forwarder is a byte pipe on a
//! multi-thread runtime of its own (as each daemon of the measured pair is); the caller
//! and the echo are tasks of the bench's runtime (as the agents are). What agentmesh
//! adds above this is its own work: JSON, routing, task state, QUIC and encryption.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UdpSocket, UnixListener, UnixStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::udp::MAX_DATAGRAM;

/// A caller connected through two forwarders to an echo.
pub(crate) struct HopChain {
    caller: BufReader<UnixStream>,
    line: Vec<u8>,
    echo: JoinHandle<()>,
    forwarders: Vec<Forwarder>,
}

/// One forwarder's runtime thread and the switch that stops it.
struct Forwarder {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl HopChain {
    /// Builds echo ← forwarder B ← UDP ← forwarder A ← caller, with sockets in `dir`.
    pub(crate) async fn start(dir: &Path) -> anyhow::Result<HopChain> {
        let echo_path = dir.join("hops-echo.sock");
        let front_path = dir.join("hops-front.sock");
        let echo_listener = UnixListener::bind(&echo_path).context("bind the echo's socket")?;
        let echo = tokio::spawn(echo_lines(echo_listener));
        let udp_a = std::net::UdpSocket::bind("127.0.0.1:0")?;
        let udp_b = std::net::UdpSocket::bind("127.0.0.1:0")?;
        let (addr_a, addr_b) = (udp_a.local_addr()?, udp_b.local_addr()?);
        let back = Forwarder::spawn(udp_b, addr_a, Side::Connect(echo_path))?;
        let front_listener =
            std::os::unix::net::UnixListener::bind(&front_path).context("bind the front")?;
        let front = Forwarder::spawn(udp_a, addr_b, Side::Accept(front_listener))?;
        let caller = UnixStream::connect(&front_path)
            .await
            .context("connect to the front forwarder")?;
        Ok(HopChain {
            caller: BufReader::with_capacity(64 * 1024, caller),
            line: Vec::new(),
            echo,
            forwarders: vec![front, back],
        })
    }

    /// One round trip of `payload` (a line of that many bytes plus its newline).
    pub(crate) async fn round_trip(&mut self, payload: &[u8]) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let stream = self.caller.get_mut();
        stream.write_all(payload).await?;
        stream.write_all(b"\n").await?;
        self.line.clear();
        let read = self.caller.read_until(b'\n', &mut self.line);
        tokio::time::timeout(Duration::from_secs(2), read)
            .await
            .context("the hop chain lost a datagram")??;
        if self.line.len() != payload.len() + 1 {
            bail!(
                "hop chain returned {} bytes for {}",
                self.line.len(),
                payload.len() + 1
            );
        }
        Ok(started.elapsed())
    }
}

impl Drop for HopChain {
    fn drop(&mut self) {
        self.echo.abort();
        self.forwarders.clear();
    }
}

/// How a forwarder gets its Unix-socket side.
enum Side {
    /// Accepts one connection (the caller's).
    Accept(std::os::unix::net::UnixListener),
    /// Connects to a listener (the echo's).
    Connect(PathBuf),
}

impl Forwarder {
    /// Starts a byte pipe between a Unix socket and UDP to `peer` on a runtime of its own.
    fn spawn(udp: std::net::UdpSocket, peer: SocketAddr, side: Side) -> anyhow::Result<Self> {
        udp.set_nonblocking(true)?;
        udp.connect(peer)?;
        let (stop, stopped) = oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        let thread = std::thread::spawn(move || {
            runtime.block_on(async move {
                tokio::select! {
                    r = pipe(udp, side) => {
                        if let Err(e) = r {
                            eprintln!("hop forwarder stopped: {e:#}");
                        }
                    }
                    _ = stopped => {}
                }
            });
        });
        Ok(Forwarder {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

/// Unix → UDP (in datagrams of at most [`MAX_DATAGRAM`] bytes) and UDP → Unix, as two
/// tasks, until either side ends.
async fn pipe(udp: std::net::UdpSocket, side: Side) -> anyhow::Result<()> {
    let udp = Arc::new(UdpSocket::from_std(udp)?);
    let unix = match side {
        Side::Accept(l) => {
            l.set_nonblocking(true)?;
            UnixListener::from_std(l)?.accept().await?.0
        }
        Side::Connect(path) => UnixStream::connect(path).await?,
    };
    let (mut read, mut write) = unix.into_split();
    let out = udp.clone();
    let up = tokio::spawn(async move {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let n = read.read(&mut buf).await?;
            if n == 0 {
                return anyhow::Ok(());
            }
            out.send(&buf[..n]).await?;
        }
    });
    let mut buf = vec![0u8; 65_536];
    let down = async {
        loop {
            let n = udp.recv(&mut buf).await?;
            write.write_all(&buf[..n]).await?;
        }
    };
    let r: anyhow::Result<()> = down.await;
    up.abort();
    r
}

/// Answers every line with itself.
async fn echo_lines(listener: UnixListener) {
    let Ok((stream, _)) = listener.accept().await else {
        return;
    };
    let mut stream = BufReader::with_capacity(64 * 1024, stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        match stream.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                if stream.get_mut().write_all(&line).await.is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines of both sizes come back whole (`round_trip` checks the length) through the
    /// forwarders; dropping the chain joins their threads.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_line_comes_back_whole_through_the_chain() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut chain = HopChain::start(dir.path()).await.expect("chain");
        for size in [64, 65_536] {
            let payload = vec![b'x'; size];
            for _ in 0..3 {
                chain.round_trip(&payload).await.expect("round trip");
            }
        }
        assert!(chain.round_trip(&[b'y'; 10]).await.is_ok());
        drop(chain);
    }
}
