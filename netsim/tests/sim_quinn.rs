//! A full quinn connection across simulated NATs: two hosts behind port-restricted cone
//! NATs (same private address, lossy jittery links) learn their public endpoints from a
//! reflector, punch, complete a QUIC handshake and exchange a stream, in virtual time.

#![cfg(feature = "quinn")]
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns unwrap too

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use netsim::adapter::{SimNet, SimUdpSocket};
use netsim::{HostId, LinkConfig, Loss, Preset, Sim, SimTime};
use quinn::rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer};

const REFLECTOR: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);

fn wan() -> LinkConfig {
    LinkConfig {
        latency: Duration::from_millis(30),
        jitter: Duration::from_millis(5),
        loss: Loss::Uniform(0.01),
        ..LinkConfig::default()
    }
}

/// Answers every datagram with the text of its source address.
async fn reflector(sock: SimUdpSocket) {
    let mut buf = [0u8; 1500];
    while let Ok((_, from)) = sock.recv_from(&mut buf).await {
        let _ = sock.send_to(from.to_string().as_bytes(), from).await;
    }
}

/// Asks the reflector (retrying over loss) which public endpoint `host:port` has.
async fn public_endpoint(net: &SimNet, host: HostId, port: u16) -> SocketAddr {
    let sock = net.bind(host, port).unwrap();
    let mut buf = [0u8; 100];
    for _ in 0..10 {
        sock.send_to(b"who am i", SocketAddr::from((REFLECTOR, 3478)))
            .await
            .unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(1), sock.recv_from(&mut buf)).await;
        if let Ok(Ok((n, _))) = reply {
            return std::str::from_utf8(&buf[..n]).unwrap().parse().unwrap();
        }
    }
    panic!("no answer from the reflector");
}

fn tls() -> (quinn::ServerConfig, quinn::ClientConfig) {
    let ck = rcgen::generate_simple_self_signed(vec!["b.test".to_owned()]).unwrap();
    let cert = CertificateDer::from(ck.cert.der().to_vec());
    let key = PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der());
    let server = quinn::ServerConfig::with_single_cert(vec![cert.clone()], key.into()).unwrap();
    let mut roots = quinn::rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let client = quinn::ClientConfig::with_root_certificates(Arc::new(roots)).unwrap();
    (server, client)
}

#[tokio::test(start_paused = true)]
async fn quic_handshake_and_stream_between_two_nated_hosts() {
    let mut sim = Sim::new(2026);
    let inet = sim.internet();
    let refl = sim.add_host("reflector", inet, REFLECTOR, wan()).unwrap();
    let private = Ipv4Addr::new(192, 168, 1, 2);
    let a = sim
        .add_site(
            "a",
            Preset::PortRestrictedCone,
            inet,
            [198, 51, 100, 1].into(),
            private,
            wan(),
        )
        .unwrap();
    let b = sim
        .add_site(
            "b",
            Preset::PortRestrictedCone,
            inet,
            [198, 51, 100, 2].into(),
            private,
            wan(),
        )
        .unwrap();
    let net = SimNet::new(sim);
    tokio::spawn(reflector(net.bind(refl, 3478).unwrap()));

    let a_pub = public_endpoint(&net, a.host, 4433).await;
    let b_pub = public_endpoint(&net, b.host, 4433).await;
    assert_eq!(a_pub, SocketAddr::from(([198, 51, 100, 1], 4433)));

    let (server_cfg, client_cfg) = tls();
    let b_ep = net.endpoint(b.host, 4433, Some(server_cfg)).unwrap();
    // B opens its NAT toward A, so A's Initial gets in (A's NAT drops these punches).
    for _ in 0..3 {
        net.with(|sim| sim.send(b.host, 4433, a_pub, &b"punch"[..]))
            .unwrap();
    }
    let server = tokio::spawn(async move {
        let conn = b_ep.accept().await.unwrap().await.unwrap();
        let (mut send, mut recv) = conn.accept_bi().await.unwrap();
        let msg = recv.read_to_end(1 << 16).await.unwrap();
        send.write_all(&msg.to_ascii_uppercase()).await.unwrap();
        send.finish().unwrap();
        let peer = conn.remote_address();
        conn.closed().await;
        peer
    });

    let start = net.now();
    let mut a_ep = net.endpoint(a.host, 4433, None).unwrap();
    a_ep.set_default_client_config(client_cfg);
    let conn = a_ep.connect(b_pub, "b.test").unwrap().await.unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(b"hello across two nats").await.unwrap();
    send.finish().unwrap();
    let reply = recv.read_to_end(1 << 16).await.unwrap();
    assert_eq!(reply, b"HELLO ACROSS TWO NATS");
    conn.close(0u32.into(), b"done");
    a_ep.wait_idle().await;

    assert_eq!(server.await.unwrap(), a_pub, "B sees A's public endpoint");
    // Two round trips at least (handshake, then the stream) over ~140 ms RTT paths.
    let took = net.now().saturating_since(start);
    assert!(took >= Duration::from_millis(280), "virtual time {took:?}");
    let a_nat = a.nat.unwrap();
    let mappings = net.with(|sim| sim.nat_mappings(a_nat));
    assert!(mappings
        .iter()
        .any(|m| m.external == "198.51.100.1:4433".parse().unwrap()
            && m.permits.contains(&"198.51.100.2:4433".parse().unwrap())));
    assert!(net.now() > SimTime::ZERO);
}

/// Echoes each bidirectional stream back, uppercased, until the connection closes.
async fn echo_server(ep: quinn::Endpoint) -> quinn::Connection {
    let conn = ep.accept().await.unwrap().await.unwrap();
    let c = conn.clone();
    tokio::spawn(async move {
        while let Ok((mut send, mut recv)) = c.accept_bi().await {
            let msg = recv.read_to_end(1 << 16).await.unwrap();
            send.write_all(&msg.to_ascii_uppercase()).await.unwrap();
            send.finish().unwrap();
        }
    });
    conn
}

async fn ask(conn: &quinn::Connection, msg: &[u8]) -> Vec<u8> {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(msg).await.unwrap();
    send.finish().unwrap();
    recv.read_to_end(1 << 16).await.unwrap()
}

#[tokio::test(start_paused = true)]
async fn connection_survives_a_nat_reboot_that_changes_its_port() {
    let mut sim = Sim::new(7);
    let inet = sim.internet();
    let server_ip = Ipv4Addr::new(203, 0, 113, 5);
    let server = sim.add_host("server", inet, server_ip, wan()).unwrap();
    let client = sim
        .add_site(
            "c",
            Preset::Symmetric,
            inet,
            [198, 51, 100, 1].into(),
            [10, 0, 0, 2].into(),
            wan(),
        )
        .unwrap();
    let net = SimNet::new(sim);
    let (server_cfg, client_cfg) = tls();
    let s_ep = net.endpoint(server, 4433, Some(server_cfg)).unwrap();
    let accepted = tokio::spawn(echo_server(s_ep));
    let mut c_ep = net.endpoint(client.host, 0, None).unwrap();
    c_ep.set_default_client_config(client_cfg);
    let conn = c_ep
        .connect(SocketAddr::from((server_ip, 4433)), "b.test")
        .unwrap()
        .await
        .unwrap();
    let server_conn = accepted.await.unwrap();
    assert_eq!(ask(&conn, b"before").await, b"BEFORE");
    let before = server_conn.remote_address();

    let nat = client.nat.unwrap();
    net.with(|sim| sim.reboot_nat(nat)).unwrap();
    assert_eq!(ask(&conn, b"after").await, b"AFTER");
    let after = server_conn.remote_address();
    assert_ne!(
        before, after,
        "the server follows the new NAT port (QUIC migration)"
    );
    assert_eq!(after.ip(), before.ip());
    conn.close(0u32.into(), b"done");
}

#[tokio::test(start_paused = true)]
async fn sockets_bind_send_and_receive_in_virtual_time() {
    use netsim::adapter::BindError;
    let mut sim = Sim::new(9);
    let inet = sim.internet();
    let link = LinkConfig::with_latency(Duration::from_millis(250));
    let a = sim
        .add_host("a", inet, [203, 0, 113, 1].into(), link)
        .unwrap();
    let b = sim
        .add_host("b", inet, [203, 0, 113, 2].into(), link)
        .unwrap();
    let net = SimNet::new(sim);
    let sa = net.bind(a, 5000).unwrap();
    assert!(matches!(
        net.bind(a, 5000),
        Err(BindError::PortInUse { .. })
    ));
    let eph = net.bind(b, 0).unwrap();
    assert!(eph.local_addr().port() >= 49_152);
    drop(eph);
    let sb = net.bind(b, 49_152).unwrap();

    let t0 = tokio::time::Instant::now();
    sa.send_to(b"ping", sb.local_addr()).await.unwrap();
    let mut buf = [0u8; 16];
    let (n, from) = sb.recv_from(&mut buf).await.unwrap();
    assert_eq!((&buf[..n], from), (&b"ping"[..], sa.local_addr()));
    // Two links of 250 ms each, in tokio's (paused, auto-advancing) clock.
    assert_eq!(t0.elapsed(), Duration::from_millis(500));
    assert_eq!(net.now(), SimTime::from_millis(500));
}
