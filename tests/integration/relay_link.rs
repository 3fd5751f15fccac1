//! The daemon's relay link end to end on loopback: a real relay server (UDP + TLS), two
//! daemons' mesh sockets with relay links, both peers routed `Path::Relay`, and a real
//! QUIC connection echoing 1 MiB through the relay, once over UDP and once with UDP to
//! the relay unanswered (the links fall back to TCP/TLS).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentmesh::net::demux::Kind;
use agentmesh::net::mesh_socket::{MeshHandle, MeshSocket};
use agentmesh::net::peers;
use agentmesh::net::relay_link::{
    relay_link, RelayLinkConfig, RelayLinkHandle, RelayLinkStatus, RelayTransport,
};
use agentmesh::net::routes::{Path, Routes};
use agentmesh_proto::{NodeId, SecretKey};
use agentmesh_relay::{Config, MemStore, RelayHandle, StartOptions};
use agentmesh_tlsid::{ClientAuth, ALPN_PEER};
use quinn::{Endpoint, TokioRuntime};
use tokio::sync::mpsc;

const ECHO_BYTES: usize = 1 << 20;

async fn start_relay() -> RelayHandle {
    let cfg = Config {
        udp_listen: Some("127.0.0.1:0".parse().unwrap()),
        tls_listen: Some("127.0.0.1:0".parse().unwrap()),
        admin_listen: None,
        ..Config::default()
    };
    let key = SecretKey::from_bytes(&[250; 32]);
    agentmesh_relay::start(
        &cfg,
        key,
        Box::new(MemStore::default()),
        StartOptions::default(),
    )
    .await
    .unwrap()
}

struct Daemon {
    key: SecretKey,
    endpoint: Endpoint,
    routes: Arc<Routes>,
    mesh: MeshHandle,
    link: RelayLinkHandle,
}

/// A daemon's socket stack: UDP socket → MeshSocket (with the relay link) → quinn, and
/// the network driver's part played by a task forwarding diverted relay datagrams.
fn daemon(seed: u8, link_config: RelayLinkConfig) -> Daemon {
    agentmesh_tlsid::install_default_provider();
    let key = SecretKey::from_bytes(&[seed; 32]);
    let std_sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    std_sock.set_nonblocking(true).unwrap();
    let inner = quinn::Runtime::wrap_udp_socket(&TokioRuntime, std_sock).unwrap();
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
    let link = driver.spawn(mesh.clone(), relay_rx);
    let server =
        agentmesh_tlsid::quinn_server_config(&key, ClientAuth::RequireNodeCert, &[ALPN_PEER])
            .unwrap();
    let endpoint = socket
        .into_endpoint(server, Arc::new(TokioRuntime))
        .unwrap();
    Daemon {
        key,
        endpoint,
        routes,
        mesh,
        link,
    }
}

async fn wait_connected(link: &RelayLinkHandle, within: Duration) -> RelayLinkStatus {
    let mut w = link.watch();
    let status = tokio::time::timeout(within, w.wait_for(|s| s.connected))
        .await
        .expect("relay link connects in time")
        .unwrap()
        .clone();
    status
}

/// Echoes every bidirectional stream of the first connection.
fn spawn_echo_server(endpoint: Endpoint) {
    tokio::spawn(async move {
        let conn = endpoint.accept().await.unwrap().await.unwrap();
        while let Ok((mut send, mut recv)) = conn.accept_bi().await {
            let data = recv.read_to_end(2 * ECHO_BYTES).await.unwrap();
            send.write_all(&data).await.unwrap();
            send.finish().unwrap();
        }
    });
}

/// Connects `a` to `b` through the relay and echoes 1 MiB; returns the bytes per second.
async fn echo_through_relay(a: &Daemon, b: &Daemon) -> f64 {
    let (na, nb): (NodeId, NodeId) = (a.key.node_id(), b.key.node_id());
    a.routes.set_path(nb, Path::Relay);
    b.routes.set_path(na, Path::Relay);
    spawn_echo_server(b.endpoint.clone());
    let conn = peers::dial(&a.endpoint, &a.key, nb, a.routes.virtual_addr(nb))
        .unwrap()
        .await
        .unwrap();
    assert_eq!(agentmesh_tlsid::peer_node_id_quic(&conn).unwrap(), nb);
    let data: Vec<u8> = (0..ECHO_BYTES).map(|i| (i * 31 + i / 251) as u8).collect();
    let started = Instant::now();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let writer = {
        let data = data.clone();
        tokio::spawn(async move {
            send.write_all(&data).await.unwrap();
            send.finish().unwrap();
        })
    };
    let back = recv.read_to_end(2 * ECHO_BYTES).await.unwrap();
    let elapsed = started.elapsed();
    writer.await.unwrap();
    assert!(back == data, "the echo came back intact");
    conn.close(0u32.into(), b"done");
    // Both directions crossed the relay: 2 MiB in `elapsed`.
    (2 * ECHO_BYTES) as f64 / elapsed.as_secs_f64()
}

fn assert_all_relayed(d: &Daemon, status: &RelayLinkStatus) {
    let stats = d.mesh.stats();
    assert_eq!(stats.direct_sent.load(Ordering::Relaxed), 0);
    assert!(stats.relay_sent.load(Ordering::Relaxed) > 700);
    assert!(stats.relay_received.load(Ordering::Relaxed) > 700);
    assert!(status.sent > 700 && status.received > 700, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_echo_of_one_mib_through_the_relay_over_udp() {
    tokio::time::timeout(Duration::from_secs(20), async {
        let mut relay = start_relay().await;
        let config = RelayLinkConfig::new(relay.relay_id, relay.udp_addr.unwrap(), relay.tls_addr);
        let a = daemon(1, config.clone());
        let b = daemon(2, config);
        for d in [&a, &b] {
            let s = wait_connected(&d.link, Duration::from_secs(3)).await;
            assert_eq!(s.transport, Some(RelayTransport::Udp));
            assert_eq!(s.relay, relay.udp_addr.unwrap());
        }
        let rate = echo_through_relay(&a, &b).await;
        let (sa, sb) = (a.link.status(), b.link.status());
        eprintln!(
            "relay-udp echo: {:.1} MiB/s; a {sa:?}; b {sb:?}",
            rate / 1048576.0
        );
        assert_all_relayed(&a, &sa);
        assert_all_relayed(&b, &sb);
        assert_eq!(sa.transport, Some(RelayTransport::Udp));
        // Over UDP the sockets frame and unwrap the packets themselves (not the link's
        // task), GSO batches included.
        for d in [&a, &b] {
            let stats = d.mesh.stats();
            assert!(stats.relay_framed.load(Ordering::Relaxed) > 700);
            assert!(stats.relay_unwrapped.load(Ordering::Relaxed) > 700);
        }
        let snap = relay.snapshot();
        assert_eq!((snap.clients_udp, snap.clients_tls), (2, 0));
        assert!(snap.counters.forwarded >= sa.sent.min(sb.sent));
        a.link.shutdown().await;
        b.link.shutdown().await;
        relay.stop().await;
    })
    .await
    .expect("test took too long");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_fall_back_to_tls_when_udp_to_the_relay_gets_no_answer() {
    tokio::time::timeout(Duration::from_secs(20), async {
        let mut relay = start_relay().await;
        // A UDP "relay" that swallows everything: UDP to the relay is filtered.
        let black_hole = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let dead_udp: SocketAddr = black_hole.local_addr().unwrap();
        let config = RelayLinkConfig::new(relay.relay_id, dead_udp, relay.tls_addr);
        let started = Instant::now();
        let a = daemon(3, config.clone());
        let b = daemon(4, config);
        let mut took = Duration::ZERO;
        for d in [&a, &b] {
            let s = wait_connected(&d.link, Duration::from_secs(5)).await;
            took = took.max(started.elapsed());
            assert_eq!(s.transport, Some(RelayTransport::Tls));
            assert_eq!(s.relay, relay.tls_addr.unwrap());
        }
        assert!(took >= Duration::from_secs(2), "udp was given its 2 s");
        assert!(took < Duration::from_secs(3), "fell back in {took:?}");
        let mut hello = [0u8; 2048];
        black_hole.set_nonblocking(true).unwrap();
        assert!(
            black_hole.recv_from(&mut hello).is_ok(),
            "udp hellos were sent first"
        );
        let rate = echo_through_relay(&a, &b).await;
        let (sa, sb) = (a.link.status(), b.link.status());
        eprintln!(
            "relay-tcp echo: {:.1} MiB/s; fallback after {took:?}; a {sa:?}; b {sb:?}",
            rate / 1048576.0
        );
        assert_all_relayed(&a, &sa);
        assert_all_relayed(&b, &sb);
        assert_eq!(sa.transport, Some(RelayTransport::Tls));
        for d in [&a, &b] {
            let stats = d.mesh.stats();
            assert_eq!(
                stats.relay_framed.load(Ordering::Relaxed),
                0,
                "tls: the link frames"
            );
            assert_eq!(stats.relay_unwrapped.load(Ordering::Relaxed), 0);
        }
        assert_eq!(sa.transport.unwrap().tier().name(), "relay-tcp");
        let snap = relay.snapshot();
        assert_eq!((snap.clients_udp, snap.clients_tls), (0, 2));
        a.link.shutdown().await;
        b.link.shutdown().await;
        relay.stop().await;
    })
    .await
    .expect("test took too long");
}
