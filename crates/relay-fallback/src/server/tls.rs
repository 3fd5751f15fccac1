//! TCP/TLS driver: accepts connections (node-key certificate, ALPN `agentmesh-relay/1`)
//! and runs one task per connection that feeds reads to the core and writes what the core
//! queued for it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use agentmesh_proto::SecretKey;
use agentmesh_tlsid::ClientAuth;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use super::{Direction, ServerError, Shared};
use crate::core::{ConnId, StreamPoll};

/// How long a TLS handshake may take.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Frames taken from the core per lock.
const BATCH: usize = 64;

/// Spawns the accept loop on `listener` (bound for `addr`); returns its address.
pub(super) fn spawn(
    tasks: &mut JoinSet<()>,
    shared: Arc<Shared>,
    key: &SecretKey,
    listener: TcpListener,
    addr: SocketAddr,
    stop: watch::Receiver<bool>,
) -> Result<SocketAddr, ServerError> {
    agentmesh_tlsid::install_default_provider();
    let cfg =
        agentmesh_tlsid::server_config_alpn(key, ClientAuth::None, &[agentmesh_tlsid::ALPN_RELAY])?;
    let acceptor = TlsAcceptor::from(Arc::new(cfg));
    let local = listener
        .local_addr()
        .map_err(|source| ServerError::Bind { addr, source })?;
    tasks.spawn(accept_loop(shared, listener, acceptor, stop));
    Ok(local)
}

async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    acceptor: TlsAcceptor,
    mut stop: watch::Receiver<bool>,
) {
    let next = AtomicU64::new(1);
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            r = listener.accept() => {
                let Ok((tcp, peer)) = r else { continue };
                tracing::debug!(%peer, "relay tls connection");
                let conn = ConnId(next.fetch_add(1, Ordering::Relaxed));
                conns.spawn(serve(shared.clone(), acceptor.clone(), tcp, conn, stop.clone()));
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            _ = stop.changed() => break,
        }
    }
    conns.abort_all();
    while conns.join_next().await.is_some() {}
}

async fn serve(
    shared: Arc<Shared>,
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    conn: ConnId,
    stop: watch::Receiver<bool>,
) {
    let _ = tcp.set_nodelay(true);
    let Ok(Ok(tls)) = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
    else {
        return;
    };
    let notify = Arc::new(Notify::new());
    shared.writers().insert(conn, notify.clone());
    shared.with_core(|c| c.handle_stream_open(super::now(), conn));
    let (rd, wr) = tokio::io::split(tls);
    run(&shared, conn, &notify, rd, wr, stop).await;
    shared.writers().remove(&conn);
    shared.with_core(|c| c.handle_stream_closed(conn));
}

async fn run<R, W>(
    shared: &Shared,
    conn: ConnId,
    notify: &Notify,
    mut rd: R,
    mut wr: W,
    mut stop: watch::Receiver<bool>,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    // One TLS record at most per read; larger buffers only cost memory per connection.
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        tokio::select! {
            r = rd.read(&mut buf) => {
                let n = match r { Ok(0) | Err(_) => return, Ok(n) => n };
                let chunk = &buf[..n];
                shared.tap(Direction::In, chunk);
                shared.with_core(|c| c.handle_stream_bytes(super::now(), conn, chunk));
            }
            _ = notify.notified() => {
                if !write_queued(shared, conn, &mut wr).await {
                    let _ = wr.shutdown().await;
                    return;
                }
            }
            _ = stop.changed() => return,
        }
    }
}

/// Writes everything the core queued for `conn`; returns false when the link must close.
async fn write_queued<W: AsyncWrite + Unpin>(shared: &Shared, conn: ConnId, wr: &mut W) -> bool {
    loop {
        let (frames, open, more) = {
            let mut core = shared.core();
            let mut frames = Vec::new();
            let mut state = StreamPoll::Idle;
            while frames.len() < BATCH {
                match core.poll_stream(conn) {
                    StreamPoll::Frame(f) => frames.push(f),
                    other => {
                        state = other;
                        break;
                    }
                }
            }
            let more = frames.len() == BATCH;
            (frames, state != StreamPoll::Close, more)
        };
        for f in &frames {
            shared.tap(Direction::Out, f);
            if wr.write_all(f).await.is_err() {
                return false;
            }
        }
        if wr.flush().await.is_err() {
            return false;
        }
        if !open {
            return false;
        }
        if !more {
            return true;
        }
    }
}
