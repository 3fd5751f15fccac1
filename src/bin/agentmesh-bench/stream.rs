//! Throughput of one large QUIC stream on loopback, three ways with the same TLS
//! identities and transport settings: raw quinn on plain UDP sockets, agentmesh's socket
//! stack (UDP → `MeshSocket` → quinn) with the peer routed `Path::Direct`, and the same
//! stack routed `Path::Relay` through a real relay. The relay case uses the daemon's
//! socket pieces (mesh socket + relay link), not whole daemons.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentmesh::net::demux::Kind;
use agentmesh::net::mesh_socket::MeshSocket;
use agentmesh::net::relay_link::{relay_link, RelayLinkConfig, RelayLinkHandle};
use agentmesh::net::routes::{Path, Routes};

/// How the client reaches the server.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Route {
    /// Raw quinn: the server's UDP address.
    Plain,
    /// Mesh socket, both peers routed `Path::Direct` to each other's UDP address.
    Direct,
    /// Mesh socket, both peers routed `Path::Relay`.
    Relay,
}
use agentmesh_proto::SecretKey;
use agentmesh_tlsid::{ClientAuth, ServerPin, ALPN_PEER};
use anyhow::{bail, Context as _};
use bytes::Bytes;
use quinn::{Connection, Endpoint, EndpointConfig, TokioRuntime};
use tokio::sync::mpsc;

/// Bytes written per `write_chunk` call.
const CHUNK: usize = 1 << 20;

/// One side: a QUIC endpoint, and for the mesh stack its routes and relay link.
pub(crate) struct Node {
    key: SecretKey,
    endpoint: Endpoint,
    addr: SocketAddr,
    routes: Option<Arc<Routes>>,
    link: Option<RelayLinkHandle>,
}

fn std_socket() -> anyhow::Result<std::net::UdpSocket> {
    let s = std::net::UdpSocket::bind("127.0.0.1:0")?;
    s.set_nonblocking(true)?;
    Ok(s)
}

fn server_config(key: &SecretKey) -> anyhow::Result<quinn::ServerConfig> {
    Ok(agentmesh_tlsid::quinn_server_config(
        key,
        ClientAuth::RequireNodeCert,
        &[ALPN_PEER],
    )?)
}

/// Raw quinn on a plain UDP socket.
pub(crate) fn raw_node(seed: u8) -> anyhow::Result<Node> {
    let key = SecretKey::from_bytes(&[seed; 32]);
    let sock = std_socket()?;
    let addr = sock.local_addr()?;
    let mut config = EndpointConfig::default();
    config.grease_quic_bit(false);
    let endpoint = Endpoint::new(
        config,
        Some(server_config(&key)?),
        sock,
        Arc::new(TokioRuntime),
    )?;
    Ok(Node {
        key,
        endpoint,
        addr,
        routes: None,
        link: None,
    })
}

/// The daemon's socket stack: UDP → `MeshSocket` (with a relay link) → quinn, plus the
/// task that hands diverted relay datagrams to the link (the network driver's part).
pub(crate) fn mesh_node(seed: u8, link_config: RelayLinkConfig) -> anyhow::Result<Node> {
    let key = SecretKey::from_bytes(&[seed; 32]);
    let sock = std_socket()?;
    let addr = sock.local_addr()?;
    let inner = quinn::Runtime::wrap_udp_socket(&TokioRuntime, sock)?;
    let routes = Arc::new(Routes::default());
    let (sender, driver) = relay_link(link_config, key.clone());
    let (socket, mesh, mut diverted) = MeshSocket::new(inner, routes.clone(), Arc::new(sender));
    let (relay_tx, relay_rx) = mpsc::channel(1024);
    tokio::spawn(async move {
        while let Some(d) = diverted.recv().await {
            if d.kind == Kind::Relay && relay_tx.send((d.src, d.data)).await.is_err() {
                return;
            }
        }
    });
    let link = driver.spawn(mesh, relay_rx);
    let endpoint = socket.into_endpoint(server_config(&key)?, Arc::new(TokioRuntime))?;
    Ok(Node {
        key,
        endpoint,
        addr,
        routes: Some(routes),
        link: Some(link),
    })
}

impl Node {
    /// Waits (bounded) until the relay link is connected.
    pub(crate) async fn relay_connected(&self) -> anyhow::Result<()> {
        let Some(link) = &self.link else {
            return Ok(());
        };
        let mut w = link.watch();
        tokio::time::timeout(Duration::from_secs(5), w.wait_for(|s| s.connected))
            .await
            .context("relay link did not connect in 5 s")??;
        Ok(())
    }

    pub(crate) async fn shutdown(self) {
        self.endpoint.close(0u32.into(), b"done");
        if let Some(link) = self.link {
            link.shutdown().await;
        }
    }
}

/// A connection from `a` to `b` along `route`, with `b` serving every stream: it reads
/// to the end and answers one byte.
pub(crate) async fn connect(a: &Node, b: &Node, route: Route) -> anyhow::Result<Connection> {
    let (na, nb) = (a.key.node_id(), b.key.node_id());
    let paths = match route {
        Route::Plain => None,
        Route::Direct => Some((Path::Direct(b.addr), Path::Direct(a.addr))),
        Route::Relay => Some((Path::Relay, Path::Relay)),
    };
    let dest = match (&a.routes, &b.routes, paths) {
        (Some(ra), Some(rb), Some((pa, pb))) => {
            ra.set_path(nb, pa);
            rb.set_path(na, pb);
            ra.virtual_addr(nb)
        }
        (None, None, None) => b.addr,
        _ => bail!("route {route:?} does not fit these nodes"),
    };
    spawn_sink(b.endpoint.clone());
    let client =
        agentmesh_tlsid::quinn_client_config(Some(&a.key), ServerPin::Node(nb), &[ALPN_PEER])?;
    let conn = a
        .endpoint
        .connect_with(client, dest, agentmesh_tlsid::SERVER_NAME)?
        .await?;
    Ok(conn)
}

/// Serves the first connection: every bidirectional stream is drained, then acknowledged
/// with one byte.
fn spawn_sink(endpoint: Endpoint) {
    tokio::spawn(async move {
        let Some(incoming) = endpoint.accept().await else {
            return;
        };
        let Ok(conn) = incoming.await else {
            return;
        };
        while let Ok((mut send, mut recv)) = conn.accept_bi().await {
            tokio::spawn(async move {
                while let Ok(Some(_)) = recv.read_chunk(usize::MAX, true).await {}
                let _ = send.write_all(b"k").await;
                let _ = send.finish();
                let _ = send.stopped().await;
            });
        }
    });
}

/// Sends `total` bytes on a new stream and waits for the receiver's acknowledgement;
/// returns the elapsed time.
pub(crate) async fn transfer(conn: &Connection, total: u64) -> anyhow::Result<Duration> {
    let block = Bytes::from(vec![0x5a_u8; CHUNK]);
    let started = Instant::now();
    let (mut send, mut recv) = conn.open_bi().await?;
    let mut left = total;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        send.write_chunk(block.slice(..n)).await?;
        left -= n as u64;
    }
    send.finish()?;
    let ack = recv.read_to_end(16).await?;
    if ack != b"k" {
        bail!("receiver did not acknowledge");
    }
    Ok(started.elapsed())
}
