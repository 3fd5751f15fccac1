//! One transport session (a QUIC bidirectional stream or a TCP/TLS stream): read frames
//! into the core, write the core's messages back.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use agentmesh_proto::frame::encode;
use agentmesh_proto::rendezvous::{ClientMsg, ServerMsg};
use agentmesh_proto::NodeId;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

use super::Shared;
use crate::core::ConnId;
use crate::deframe::FrameReader;

/// What a session task is told to do.
#[derive(Debug)]
pub(crate) enum ConnCmd {
    /// Write this message.
    Send(Box<ServerMsg>),
    /// Flush and close.
    Close,
}

/// Messages queued per session before it counts as too slow and is closed.
pub(crate) const QUEUE: usize = 1024;

/// Where a session came from.
pub(crate) struct Peer {
    pub(crate) observed: SocketAddr,
    pub(crate) tls_node: Option<NodeId>,
    /// Reads the transport's RTT estimate and current peer address, when it has them
    /// (QUIC: both change over the connection's life).
    pub(crate) path: Option<Box<dyn Fn() -> (Duration, SocketAddr) + Send>>,
}

/// Runs a session until the peer leaves, the core closes it, or shutdown.
pub(crate) async fn run<R, W>(
    shared: Arc<Shared>,
    peer: Peer,
    mut reader: R,
    mut writer: W,
    mut shutdown: watch::Receiver<bool>,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let conn = shared.new_conn_id();
    let (tx, mut rx) = mpsc::channel(QUEUE);
    shared.register_conn(conn, tx);
    shared.with_core(|core| core.connect(super::now(), conn, peer.observed, peer.tls_node));
    shared.kick_timer();
    if shared.log_peer_addresses {
        tracing::info!(conn = conn.0, peer = %peer.observed, "session opened");
    } else {
        tracing::debug!(conn = conn.0, peer = %peer.observed, "session opened");
    }
    let mut frames = FrameReader::new(shared.max_frame);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        tokio::select! {
            read = reader.read(&mut buf) => {
                let n = match read {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                frames.push(&buf[..n]);
                if let Some(path) = &peer.path {
                    let (rtt, addr) = path();
                    shared.with_core(|core| {
                        core.observe_rtt(conn, rtt);
                        core.observe_addr(conn, addr);
                    });
                }
                feed(&shared, conn, &mut frames);
            }
            cmd = rx.recv() => match cmd {
                Some(ConnCmd::Send(msg)) => {
                    if write(&mut writer, &msg, shared.max_frame).await.is_err() {
                        break;
                    }
                }
                Some(ConnCmd::Close) | None => break,
            },
            _ = shutdown.changed() => break,
        }
    }
    // Deliver what was queued before the close (e.g. the error that caused it).
    while let Ok(ConnCmd::Send(msg)) = rx.try_recv() {
        if write(&mut writer, &msg, shared.max_frame).await.is_err() {
            break;
        }
    }
    let _ = writer.shutdown().await;
    shared.unregister_conn(conn);
    let outs = shared.with_core(|core| core.disconnect(super::now(), conn));
    shared.dispatch(outs);
    tracing::debug!(conn = conn.0, "session closed");
}

/// Hands every complete frame (or fault) to the core.
fn feed(shared: &Shared, conn: ConnId, frames: &mut FrameReader) {
    while let Some(item) = frames.next_frame::<ClientMsg>() {
        let now = super::now();
        let outs = shared.with_core(|core| match item {
            Ok(msg) => core.handle_msg(now, conn, msg),
            Err(fault) => core.handle_fault(now, conn, fault),
        });
        shared.dispatch(outs);
    }
}

/// A peer that takes longer than this to accept one message is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

async fn write<W: AsyncWrite + Unpin>(
    w: &mut W,
    msg: &ServerMsg,
    max: usize,
) -> std::io::Result<()> {
    // Our own messages fit unless a discovery answer is huge; allow 16x the client limit.
    let bytes = encode(msg, max.saturating_mul(16))
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    let io = async {
        w.write_all(&bytes).await?;
        w.flush().await
    };
    tokio::time::timeout(WRITE_TIMEOUT, io)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "peer does not read"))?
}
