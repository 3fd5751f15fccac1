//! Binding the sockets and the accept loops: QUIC (with STUN diverted), the second STUN
//! socket, TCP/TLS, the admin port, and the core's timer. [`bind`] binds real sockets;
//! [`serve`] runs on whatever [`Sockets`] it is given (real or simulated).

use std::future::pending;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use agentmesh_proto::SecretKey;
use agentmesh_tlsid::{self as tlsid, ClientAuth, ALPN_RENDEZVOUS};
use quinn::Runtime;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use super::session::{self, Peer};
use super::udp::{stun_only, StunDivert};
use super::{admin, Running, ServeError, Shared, Sockets};
use crate::config::Config;
use agentmesh_dgram::DatagramSocket;

/// Time a peer gets to finish the QUIC or TLS handshake and open its stream.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Receive and send buffer asked for the QUIC socket. The kernel's default (≈ 208 KiB)
/// overflows when many daemons register at once (after a restart, 100 nodes each sending
/// a 70 KB `Register` frame): datagrams are dropped and their QUIC streams wait for
/// retransmission timeouts, seconds at the tail. Linux caps the request at
/// `net.core.rmem_max` / `wmem_max`.
const UDP_BUFFER: usize = 4 << 20;

/// Asks for [`UDP_BUFFER`]-sized socket buffers on `sock`; logs what the kernel granted.
fn grow_buffers(sock: &std::net::UdpSocket) {
    let granted = quinn::udp::UdpSocketState::new(sock.into()).and_then(|state| {
        state.set_recv_buffer_size(sock.into(), UDP_BUFFER)?;
        state.set_send_buffer_size(sock.into(), UDP_BUFFER)?;
        Ok((
            state.recv_buffer_size(sock.into())?,
            state.send_buffer_size(sock.into())?,
        ))
    });
    match granted {
        Ok((recv, send)) => tracing::debug!(recv, send, "QUIC socket buffers"),
        Err(e) => tracing::warn!(error = %e, "cannot size the QUIC socket buffers"),
    }
}

fn bind_err(addr: SocketAddr) -> impl FnOnce(std::io::Error) -> ServeError {
    move |source| ServeError::Bind { addr, source }
}

/// Binds the configured sockets (the real-network half of [`super::start`]).
pub(super) async fn bind(cfg: &Config) -> Result<Sockets, ServeError> {
    let std_sock = std::net::UdpSocket::bind(cfg.listen).map_err(bind_err(cfg.listen))?;
    std_sock
        .set_nonblocking(true)
        .map_err(bind_err(cfg.listen))?;
    grow_buffers(&std_sock);
    let runtime = Arc::new(quinn::TokioRuntime);
    let udp = runtime
        .wrap_udp_socket(std_sock)
        .map_err(bind_err(cfg.listen))?;
    let stun_alt = match cfg.stun_alt {
        Some(a) => {
            let s: Arc<dyn DatagramSocket> =
                Arc::new(UdpSocket::bind(a).await.map_err(bind_err(a))?);
            Some(s)
        }
        None => None,
    };
    let tcp = match cfg.tcp_listen {
        Some(a) => Some(TcpListener::bind(a).await.map_err(bind_err(a))?),
        None => None,
    };
    let admin = TcpListener::bind(cfg.admin)
        .await
        .map_err(bind_err(cfg.admin))?;
    Ok(Sockets {
        udp,
        runtime,
        stun_alt,
        tcp,
        admin: Some(admin),
    })
}

/// Spawns the loops on `sockets`.
pub(super) fn serve(
    cfg: &Config,
    key: &SecretKey,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    sockets: Sockets,
) -> Result<Running, ServeError> {
    let rx = shutdown.subscribe();
    let udp_addr = sockets.udp.local_addr().map_err(bind_err(cfg.listen))?;
    let stun_alt_addr = sockets.stun_alt.as_ref().and_then(|s| s.local_addr().ok());
    let endpoint = quic_endpoint(
        cfg,
        key,
        &shared,
        sockets.udp,
        sockets.runtime,
        stun_alt_addr,
    )?;
    let mut tasks = vec![tokio::spawn(quic_accept(
        endpoint.clone(),
        shared.clone(),
        rx.clone(),
    ))];
    if let Some(alt) = sockets.stun_alt {
        let answered = shared.counters.stun_answered.clone();
        let mut stop = rx.clone();
        tasks.push(tokio::spawn(async move {
            tokio::select! {
                _ = stun_only(alt, Some(udp_addr), answered) => {}
                _ = stop.changed() => {}
            }
        }));
    }
    let tcp_addr = match sockets.tcp {
        Some(listener) => {
            let local = listener
                .local_addr()
                .map_err(bind_err(cfg.tcp_listen.unwrap_or(cfg.listen)))?;
            let tls =
                tlsid::server_config_alpn(key, ClientAuth::RequireNodeCert, &[ALPN_RENDEZVOUS])?;
            let acceptor = TlsAcceptor::from(Arc::new(tls));
            tasks.push(tokio::spawn(tcp_accept(
                listener,
                acceptor,
                shared.clone(),
                rx.clone(),
            )));
            Some(local)
        }
        None => None,
    };
    let admin_addr = match sockets.admin {
        Some(listener) => {
            let local = listener.local_addr().map_err(bind_err(cfg.admin))?;
            tasks.push(tokio::spawn(admin::serve(
                listener,
                shared.clone(),
                rx.clone(),
            )));
            local
        }
        None => SocketAddr::from(([0, 0, 0, 0], 0)),
    };
    tasks.push(tokio::spawn(timer(shared.clone(), rx)));
    Ok(Running {
        id: key.node_id(),
        udp_addr,
        tcp_addr,
        stun_alt_addr,
        admin_addr,
        shutdown,
        tasks,
        endpoint,
        store_thread: None,
        shared,
    })
}

/// The QUIC endpoint on `udp`, with STUN diverted to the responder.
fn quic_endpoint(
    cfg: &Config,
    key: &SecretKey,
    shared: &Shared,
    udp: Arc<dyn quinn::AsyncUdpSocket>,
    runtime: Arc<dyn quinn::Runtime>,
    stun_alt_addr: Option<SocketAddr>,
) -> Result<quinn::Endpoint, ServeError> {
    let divert = StunDivert::new(
        udp,
        cfg.stun_alt_public.or(stun_alt_addr),
        shared.counters.stun_answered.clone(),
    )
    .map_err(bind_err(cfg.listen))?;
    let mut ep_cfg = quinn::EndpointConfig::default();
    // Clients must keep QUIC's fixed bit set, so STUN (top bits 00) stays recognisable.
    ep_cfg.grease_quic_bit(false);
    let server_cfg =
        tlsid::quinn_server_config(key, ClientAuth::RequireNodeCert, &[ALPN_RENDEZVOUS])?;
    quinn::Endpoint::new_with_abstract_socket(ep_cfg, Some(server_cfg), Arc::new(divert), runtime)
        .map_err(bind_err(cfg.listen))
}

async fn quic_accept(
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => match i {
                Some(i) => i,
                None => break,
            },
            _ = stop.changed() => break,
        };
        tokio::spawn(quic_session(incoming, shared.clone(), stop.clone()));
    }
}

async fn quic_session(incoming: quinn::Incoming, shared: Arc<Shared>, stop: watch::Receiver<bool>) {
    let setup = async {
        let conn = incoming.await.ok()?;
        let (send, recv) = conn.accept_bi().await.ok()?;
        Some((conn, send, recv))
    };
    let Ok(Some((conn, send, recv))) = tokio::time::timeout(HANDSHAKE_TIMEOUT, setup).await else {
        return;
    };
    shared
        .counters
        .quic_sessions
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let rtt_conn = conn.clone();
    let peer = Peer {
        observed: conn.remote_address(),
        tls_node: tlsid::peer_node_id_quic(&conn).ok(),
        path: Some(Box::new(move || {
            (rtt_conn.rtt(), rtt_conn.remote_address())
        })),
    };
    session::run(shared, peer, recv, send, stop).await;
    // Let the final frames reach the peer before the connection goes.
    let _ = tokio::time::timeout(Duration::from_millis(200), conn.closed()).await;
    conn.close(0u32.into(), b"bye");
}

async fn tcp_accept(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let (stream, from) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(_) => continue,
            },
            _ = stop.changed() => break,
        };
        tokio::spawn(tcp_session(
            stream,
            from,
            acceptor.clone(),
            shared.clone(),
            stop.clone(),
        ));
    }
}

async fn tcp_session(
    stream: TcpStream,
    from: SocketAddr,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let Ok(Ok(tls)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await else {
        return;
    };
    shared
        .counters
        .tcp_sessions
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tls_node = tlsid::peer_node_id_tls(tls.get_ref().1).ok();
    let (r, w) = tokio::io::split(tls);
    let peer = Peer {
        observed: from,
        tls_node,
        path: None,
    };
    session::run(shared, peer, r, w, stop).await;
}

/// Runs the core's timeouts (agent expiry, handshake deadlines).
async fn timer(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    loop {
        let next = shared.with_core(|c| c.poll_timeout());
        let sleep = async {
            match next {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => pending().await,
            }
        };
        tokio::select! {
            _ = sleep => {
                let outs = shared.with_core(|c| c.handle_timeout(super::now()));
                shared.dispatch(outs);
            }
            _ = shared.timer.notified() => {}
            _ = stop.changed() => break,
        }
    }
}
