//! A real quinn connection between two daemons' mesh sockets on loopback: it starts on an
//! in-memory relay, moves to the direct path mid-stream without reconnecting, and
//! non-QUIC datagrams never reach quinn.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use agentmesh_proto::SecretKey;
use agentmesh_tlsid::{ClientAuth, ALPN_PEER};
use quinn::{Endpoint, TokioRuntime};

use super::*;
use crate::net::peers::dial;

/// A relay in memory: hands packets straight to the other side's socket.
#[derive(Debug, Default)]
struct MemRelay {
    from: Mutex<Option<NodeId>>,
    to: Mutex<Option<MeshHandle>>,
    packets: AtomicU64,
}

impl RelayLink for MemRelay {
    fn send(&self, _peer: NodeId, packet: &[u8]) -> io::Result<()> {
        let from = self.from.lock().unwrap().unwrap();
        if let Some(h) = self.to.lock().unwrap().as_ref() {
            self.packets.fetch_add(1, Ordering::Relaxed);
            h.deliver_relayed(from, packet.to_vec());
        }
        Ok(())
    }
}

struct Side {
    key: SecretKey,
    endpoint: Endpoint,
    handle: MeshHandle,
    routes: Arc<Routes>,
    relay: Arc<MemRelay>,
    diverted: mpsc::Receiver<Diverted>,
    real: SocketAddr,
}

fn side(seed: u8) -> Side {
    agentmesh_tlsid::install_default_provider();
    let key = SecretKey::from_bytes(&[seed; 32]);
    let std_sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    std_sock.set_nonblocking(true).unwrap();
    let real = std_sock.local_addr().unwrap();
    let inner = quinn::Runtime::wrap_udp_socket(&TokioRuntime, std_sock).unwrap();
    let routes = Arc::new(Routes::default());
    let relay = Arc::new(MemRelay::default());
    *relay.from.lock().unwrap() = Some(key.node_id());
    let (socket, handle, diverted) = MeshSocket::new(inner, routes.clone(), relay.clone());
    let server =
        agentmesh_tlsid::quinn_server_config(&key, ClientAuth::RequireNodeCert, &[ALPN_PEER])
            .unwrap();
    let endpoint = socket
        .into_endpoint(server, Arc::new(TokioRuntime))
        .unwrap();
    Side {
        key,
        endpoint,
        handle,
        routes,
        relay,
        diverted,
        real,
    }
}

/// Accepts one connection on `endpoint` and echoes every bidirectional stream; the task
/// returns the client's node id when the connection ends.
fn spawn_echo_server(endpoint: Endpoint) -> tokio::task::JoinHandle<NodeId> {
    tokio::spawn(async move {
        let conn = endpoint.accept().await.unwrap().await.unwrap();
        let peer = agentmesh_tlsid::peer_node_id_quic(&conn).unwrap();
        while let Ok((mut send, mut recv)) = conn.accept_bi().await {
            let data = recv.read_to_end(1 << 20).await.unwrap();
            send.write_all(&data).await.unwrap();
            send.finish().unwrap();
        }
        peer
    })
}

/// Connects `a` to `b` (pinning `b`'s node id) through `a`'s virtual address for it.
async fn connect(a: &Side, b: NodeId) -> quinn::Connection {
    dial(&a.endpoint, &a.key, b, a.routes.virtual_addr(b))
        .unwrap()
        .await
        .unwrap()
}

async fn echo_once(conn: &quinn::Connection, msg: &[u8]) -> Vec<u8> {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(msg).await.unwrap();
    send.finish().unwrap();
    recv.read_to_end(1 << 20).await.unwrap()
}

#[tokio::test]
async fn starts_relayed_then_moves_direct_without_reconnecting() {
    let mut a = side(1);
    let b = side(2);
    *a.relay.to.lock().unwrap() = Some(b.handle.clone());
    *b.relay.to.lock().unwrap() = Some(a.handle.clone());
    let (na, nb) = (a.key.node_id(), b.key.node_id());
    a.routes.set_path(nb, Path::Relay);
    b.routes.set_path(na, Path::Relay);

    let accept = spawn_echo_server(b.endpoint.clone());

    let conn = connect(&a, nb).await;
    assert_eq!(agentmesh_tlsid::peer_node_id_quic(&conn).unwrap(), nb);
    assert_eq!(echo_once(&conn, b"over the relay").await, b"over the relay");
    let relayed = a.relay.packets.load(Ordering::Relaxed);
    assert!(relayed > 0);
    assert_eq!(a.handle.stats().direct_sent.load(Ordering::Relaxed), 0);

    // The punch succeeded: both sides switch to the direct path.
    a.routes.set_path(nb, Path::Direct(b.real));
    b.routes.set_path(na, Path::Direct(a.real));
    let before = (
        a.relay.packets.load(Ordering::Relaxed),
        b.relay.packets.load(Ordering::Relaxed),
    );
    for i in 0..20 {
        let msg = format!("direct {i}");
        assert_eq!(echo_once(&conn, msg.as_bytes()).await, msg.as_bytes());
    }
    let after = (
        a.relay.packets.load(Ordering::Relaxed),
        b.relay.packets.load(Ordering::Relaxed),
    );
    assert_eq!(before, after, "nothing more went through the relay");
    assert!(a.handle.stats().direct_sent.load(Ordering::Relaxed) >= 20);
    assert_eq!(conn.stable_id(), conn.stable_id());
    assert!(
        conn.close_reason().is_none(),
        "same connection, never closed"
    );

    // A probe-looking datagram sent to A's socket goes to the daemon, not quinn.
    let stranger = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    stranger
        .send_to(&[0xA7, b'A', b'M', b'P', 1, 2, 3], a.real)
        .unwrap();
    let d = tokio::time::timeout(Duration::from_secs(5), a.diverted.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (d.kind, d.src, d.data.len()),
        (Kind::Probe, stranger.local_addr().unwrap(), 7)
    );
    assert_eq!(echo_once(&conn, b"still fine").await, b"still fine");

    conn.close(0u32.into(), b"done");
    assert_eq!(
        accept.await.unwrap(),
        na,
        "the server read the client's node id"
    );
}

#[tokio::test]
async fn a_peer_without_a_path_is_answered_through_the_relay() {
    let a = side(3);
    let b = side(4);
    *a.relay.to.lock().unwrap() = Some(b.handle.clone());
    *b.relay.to.lock().unwrap() = Some(a.handle.clone());
    let nb = b.key.node_id();
    let connecting = dial(&a.endpoint, &a.key, nb, a.routes.virtual_addr(nb)).unwrap();
    let server = b.endpoint.clone();
    tokio::spawn(async move {
        if let Some(i) = server.accept().await {
            let _ = i.await;
        }
    });
    // Neither side has chosen a path: both fall back to the relay.
    let conn = tokio::time::timeout(Duration::from_secs(10), connecting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(agentmesh_tlsid::peer_node_id_quic(&conn).unwrap(), nb);
    assert!(a.handle.stats().relay_sent.load(Ordering::Relaxed) > 0);
    assert!(b.handle.stats().relay_sent.load(Ordering::Relaxed) > 0);
    assert_eq!(a.handle.stats().direct_sent.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn a_flood_of_non_quic_datagrams_does_not_starve_the_connection() {
    let mut a = side(5);
    let b = side(6);
    let (na, nb) = (a.key.node_id(), b.key.node_id());
    a.routes.set_path(nb, Path::Direct(b.real));
    b.routes.set_path(na, Path::Direct(a.real));
    spawn_echo_server(b.endpoint.clone());
    let conn = connect(&a, nb).await;
    let target = a.real;
    let flood = std::thread::spawn(move || {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for _ in 0..20_000 {
            let _ = s.send_to(&[0xA7, b'A', b'M', b'P', 0], target);
        }
    });
    for i in 0..10 {
        let msg = format!("during the flood {i}");
        let got = tokio::time::timeout(Duration::from_secs(10), echo_once(&conn, msg.as_bytes()))
            .await
            .unwrap();
        assert_eq!(got, msg.as_bytes());
    }
    flood.join().unwrap();
    // The flood reached the socket and went to the daemon, not to quinn (quinn's receive
    // task may still be reading it when the echoes finish, so wait for it, bounded).
    let first = tokio::time::timeout(Duration::from_secs(10), a.diverted.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.kind, Kind::Probe);
    assert!(a.handle.stats().diverted.load(Ordering::Relaxed) > 0);
}

/// The relay drops the handshake (the peer is not connected to it yet). When the path
/// turns direct, the replayed handshake completes the connection at once, not at quinn's
/// retransmission timeout (about 1 s after the first Initial with the default 333 ms
/// initial RTT).
#[tokio::test]
async fn a_handshake_the_relay_lost_completes_as_soon_as_the_path_is_direct() {
    let a = side(7);
    let b = side(8);
    let (na, nb) = (a.key.node_id(), b.key.node_id());
    // Neither relay has a far end: every relayed packet is lost.
    a.routes.set_path(nb, Path::Relay);
    b.routes.set_path(na, Path::Relay);
    spawn_echo_server(b.endpoint.clone());
    let connecting = dial(&a.endpoint, &a.key, nb, a.routes.virtual_addr(nb)).unwrap();
    let dial = tokio::spawn(connecting);
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(a.handle.stats().relay_sent.load(Ordering::Relaxed) > 0);
    // The punch succeeded on both sides.
    b.routes.set_path(na, Path::Direct(a.real));
    a.routes.set_path(nb, Path::Direct(b.real));
    let switched = std::time::Instant::now();
    assert!(a.handle.replay_handshake(nb, b.real) >= 1);
    let conn = tokio::time::timeout(Duration::from_secs(10), dial)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let took = switched.elapsed();
    assert!(
        took < Duration::from_millis(600),
        "handshake done {took:?} after the switch: waited for a retransmission"
    );
    assert_eq!(echo_once(&conn, b"direct").await, b"direct");
    assert_eq!(a.handle.stats().replayed.load(Ordering::Relaxed), 1);
    // Nothing is left to replay once the handshake is over.
    assert_eq!(a.handle.replay_handshake(nb, b.real), 0);
}

/// Waits for the next diverted datagram.
#[track_caller]
fn next_diverted(side: &mut Side) -> impl std::future::Future<Output = Diverted> + '_ {
    let at = std::panic::Location::caller();
    async move {
        tokio::time::timeout(Duration::from_secs(5), side.diverted.recv())
            .await
            .unwrap_or_else(|_| panic!("nothing diverted ({at})"))
            .unwrap()
    }
}

#[tokio::test]
async fn a_peer_routed_through_a_door_talks_through_it_and_doors_close() {
    let mut a = side(5);
    let mut b = side(6);
    *a.relay.to.lock().unwrap() = Some(b.handle.clone());
    *b.relay.to.lock().unwrap() = Some(a.handle.clone());
    let (na, nb) = (a.key.node_id(), b.key.node_id());
    a.routes.set_path(nb, Path::Relay);
    b.routes.set_path(na, Path::Relay);
    let accept = spawn_echo_server(b.endpoint.clone());
    let conn = connect(&a, nb).await;
    assert_eq!(echo_once(&conn, b"relayed").await, b"relayed");

    // Without a binder there are no doors.
    assert!(!a.handle.doors_available());
    assert!(a.handle.open_doors(nb, 4).is_err());
    a.handle.set_door_binder(Arc::new(UdpDoors::new(
        "127.0.0.1".parse().unwrap(),
        Arc::new(TokioRuntime),
    )));
    assert_eq!(a.handle.open_doors(nb, 4).unwrap(), 4);
    assert_eq!(a.handle.doors_of(&nb), (4, None));
    assert_eq!(a.handle.doors_open(), 4);
    assert_eq!(a.handle.peers_with_doors(), vec![nb]);

    // A probe from door 3 reaches B from door 3's own port; B's answer to that port
    // is diverted on A tagged with door 3.
    let probe = [0xA7, b'A', b'M', b'P', 9, 9];
    // A new socket is writable once the reactor has seen it (a send before that is
    // dropped like any send on a full socket; punches ping again).
    tokio::time::sleep(Duration::from_millis(50)).await;
    a.handle.send_on(nb, 3, b.real, &probe).unwrap();
    let d = next_diverted(&mut b).await;
    assert_eq!((d.kind, d.socket), (Kind::Probe, 0));
    let door3 = d.src;
    assert_ne!(door3, a.real, "door 3 is its own socket");
    b.handle.send_raw(door3, &probe).unwrap();
    let d = next_diverted(&mut a).await;
    assert_eq!((d.kind, d.socket, d.src), (Kind::Probe, 3, b.real));

    // Door 3 wins: the other doors close and B's QUIC goes through door 3 both ways.
    assert!(a.handle.keep_door(nb, 3));
    assert_eq!(a.handle.doors_of(&nb), (1, Some(3)));
    assert_eq!(a.handle.doors_open(), 1, "the losing doors closed");
    assert!(a.handle.send_on(nb, 1, b.real, &probe).is_err());
    a.routes.set_path(nb, Path::Direct(b.real));
    b.routes.set_path(na, Path::Direct(door3));
    let relayed = (
        a.relay.packets.load(Ordering::Relaxed),
        b.relay.packets.load(Ordering::Relaxed),
    );
    for i in 0..10 {
        let msg = format!("through door 3: {i}");
        assert_eq!(echo_once(&conn, msg.as_bytes()).await, msg.as_bytes());
    }
    let stats = a.handle.stats();
    assert!(stats.door_sent.load(Ordering::Relaxed) >= 10);
    assert!(stats.door_received.load(Ordering::Relaxed) >= 10);
    assert_eq!(
        stats.direct_sent.load(Ordering::Relaxed),
        0,
        "not the main socket"
    );
    assert_eq!(
        relayed,
        (
            a.relay.packets.load(Ordering::Relaxed),
            b.relay.packets.load(Ordering::Relaxed),
        ),
        "nothing more through the relay"
    );
    assert!(conn.close_reason().is_none());

    conn.close(0u32.into(), b"done");
    assert_eq!(accept.await.unwrap(), na);

    // The attempt is over: every door closes and its port is free again.
    a.handle.close_doors(&nb);
    assert_eq!(a.handle.doors_of(&nb), (0, None));
    assert_eq!(a.handle.doors_open(), 0);
    assert!(a.handle.peers_with_doors().is_empty());
    assert!(a.handle.send_on(nb, 3, b.real, &probe).is_err());
    let mut freed = false;
    for _ in 0..50 {
        if std::net::UdpSocket::bind(door3).is_ok() {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(freed, "door 3's socket was closed");
}

fn node(seed: u8) -> NodeId {
    SecretKey::from_bytes(&[seed; 32]).node_id()
}

/// A `Recv` datagram from `from` carrying `payload`, as the relay writes it.
fn recv_datagram(from: NodeId, payload: &[u8]) -> Vec<u8> {
    use agentmesh_proto::relay::{encode_datagram, Payload, RelayMsg};
    let msg = RelayMsg::Recv {
        from,
        payload: Payload(payload.to_vec()),
    };
    encode_datagram(&msg, 1 << 20).unwrap()
}

#[test]
fn a_gso_transmit_is_framed_as_one_uniform_batch_of_send_datagrams() {
    use agentmesh_proto::relay::decode_send_datagram;
    let to = node(7);
    // Three full 1200-byte packets and a short last one, as quinn hands a GSO batch.
    let contents: Vec<u8> = (0..3 * 1200 + 300).map(|i| (i % 251) as u8).collect();
    let mut buf = vec![0xEE; 10];
    let framed = frame_for_relay(&mut buf, to, &contents, 1200, 1 << 20).unwrap();
    let stride = framed.stride.expect("uniform");
    assert_eq!(framed.lens.len(), 4);
    assert_eq!(&framed.lens[..3], &[stride; 3]);
    assert!(framed.lens[3] < stride);
    assert_eq!(
        buf.len(),
        framed.lens.iter().sum::<usize>(),
        "buffer cleared first"
    );
    // The kernel cuts the batch at `stride`: each piece is one whole datagram.
    for (i, d) in buf.chunks(stride).enumerate() {
        let (dst, payload) = decode_send_datagram(d, 1 << 20).expect("a Send datagram");
        assert_eq!(dst, to);
        let want = &contents[i * 1200..((i + 1) * 1200).min(contents.len())];
        assert_eq!(payload, want);
    }
    // One packet: a single datagram.
    let one = frame_for_relay(&mut buf, to, &contents[..1000], 1000, 1 << 20).unwrap();
    assert_eq!(one.lens, vec![buf.len()]);
    assert_eq!(one.stride, Some(buf.len()));
    // A frame over the relay's limit: the socket leaves it to the link.
    assert_eq!(frame_for_relay(&mut buf, to, &contents, 1200, 1000), None);
}

#[test]
fn relayed_packets_are_unwrapped_in_place_and_strangers_diverted() {
    let (a, b) = (node(1), node(2));
    let pa: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i + 10; 100]).collect();
    let last = vec![99u8; 60];
    // A GRO batch: segments of one size (the stride), the last one shorter.
    let segs = [
        recv_datagram(a, &pa[0]),
        recv_datagram(b, &[5u8; 100]), // another sender: to the link
        recv_datagram(a, &pa[1]),
        recv_datagram(a, &pa[2]),
        recv_datagram(a, &last),
    ];
    let stride = segs[0].len();
    assert!(segs[..4].iter().all(|s| s.len() == stride));
    let mut buf: Vec<u8> = segs.concat();
    let mut diverted = Vec::new();
    let u = unwrap_relayed(&mut buf, stride, 1 << 20, |d| diverted.push(d.to_vec())).unwrap();
    assert_eq!(
        (u.from, u.len, u.stride, u.packets),
        (a, 360, 100, 4),
        "{u:?}"
    );
    let want: Vec<u8> = [&pa[0][..], &pa[1], &pa[2], &last].concat();
    assert_eq!(&buf[..u.len], &want[..]);
    assert_eq!(diverted, vec![segs[1].clone()]);

    // A datagram that is not a Recv (a pong) goes to the link untouched.
    let pong = agentmesh_proto::relay::encode_datagram(
        &agentmesh_proto::relay::RelayMsg::Pong { n: 3 },
        1 << 20,
    )
    .unwrap();
    let first = recv_datagram(b, &[1, 2, 3]);
    assert!(pong.len() < first.len());
    let mut buf = [first.clone(), pong.clone()].concat();
    let mut diverted = Vec::new();
    let u = unwrap_relayed(&mut buf, first.len(), 1 << 20, |d| {
        diverted.push(d.to_vec())
    });
    assert_eq!(diverted, vec![pong.clone()]);
    let u = u.unwrap();
    assert_eq!((u.from, u.len, u.stride, u.packets), (b, 3, 3, 1));
    assert_eq!(&buf[..3], &[1, 2, 3]);

    // Nothing usable: nothing kept, everything diverted.
    let mut buf = pong.clone();
    let mut n = 0;
    assert_eq!(
        unwrap_relayed(&mut buf, pong.len(), 1 << 20, |_| n += 1),
        None
    );
    assert_eq!(n, 1);
}
