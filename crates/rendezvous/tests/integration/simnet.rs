//! The service on simulated sockets (`server::start_on` with netsim's `SimUdpSocket` and
//! `SimRuntime`, tokio clock paused): a daemon behind a port-restricted cone NAT joins
//! over QUIC, registers and discovers an agent, and STUN from behind the NAT reports the
//! NAT's public mapping on both observers.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use agentmesh_proto::DiscoverQuery;
use agentmesh_rendezvous::client::{Client, Target};
use agentmesh_rendezvous::config::Config;
use agentmesh_rendezvous::server::{self, QuinnDatagram, Running, Sockets};
use agentmesh_rendezvous::stun::MAGIC_COOKIE;
use netsim::adapter::{SimNet, SimUdpSocket};
use netsim::{HostId, LinkConfig, NatId, Preset, Sim};

use crate::harness::{join, key, manifest};

const RV_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const NAT_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);

fn wan() -> LinkConfig {
    LinkConfig {
        latency: Duration::from_millis(20),
        ..LinkConfig::default()
    }
}

/// The rendezvous host on the simulated internet and a daemon host behind a NAT.
fn topology() -> (Sim, HostId, HostId, NatId) {
    let mut sim = Sim::new(11);
    let inet = sim.internet();
    let rv = sim.add_host("rv", inet, RV_IP, wan()).unwrap();
    let site = sim
        .add_site(
            "d",
            Preset::PortRestrictedCone,
            inet,
            NAT_IP,
            [192, 168, 1, 2].into(),
            wan(),
        )
        .unwrap();
    (sim, rv, site.host, site.nat.unwrap())
}

fn config(dir: &Path) -> Config {
    // Addresses are not bound by start_on; the default timers (30 s / 45 s) apply.
    Config::parse(&format!(
        r#"listen = "127.0.0.1:0"
key_file = "{dir}/rv.key"
database = "{dir}/rv.sqlite"
[[tenant]]
name = "acme"
join_token = "acme-token"
"#,
        dir = dir.display()
    ))
    .unwrap()
}

async fn start_sim(net: &SimNet, host: HostId, dir: &Path) -> Running {
    let sockets = Sockets {
        udp: Arc::new(net.bind(host, 3478).unwrap()),
        runtime: net.runtime(),
        stun_alt: Some(Arc::new(QuinnDatagram::new(Arc::new(
            net.bind(host, 3479).unwrap(),
        )))),
        tcp: None,
        admin: None,
    };
    server::start_on(config(dir), key(200), sockets)
        .await
        .unwrap()
}

/// The NAT's external endpoint for `internal`, as its mapping table says.
fn mapping(net: &SimNet, nat: NatId, internal: SocketAddrV4) -> SocketAddr {
    let maps = net.with(|sim| sim.nat_mappings(nat));
    let m = maps.iter().find(|m| m.internal == internal).unwrap();
    SocketAddr::V4(m.external)
}

/// A Binding request (RFC 5389) with transaction id `tid`.
fn binding_request(tid: [u8; 12]) -> Vec<u8> {
    let mut req = vec![0x00, 0x01, 0x00, 0x00];
    req.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
    req.extend_from_slice(&tid);
    req
}

/// XOR-MAPPED-ADDRESS (IPv4) of a Binding success response for `tid`.
fn xor_mapped(resp: &[u8], tid: [u8; 12]) -> Option<SocketAddr> {
    if resp.len() < 20 || resp[0..2] != [0x01, 0x01] || resp[8..20] != tid {
        return None;
    }
    let cookie = MAGIC_COOKIE.to_be_bytes();
    let mut at = 20;
    while at + 4 <= resp.len() {
        let ty = u16::from_be_bytes([resp[at], resp[at + 1]]);
        let len = usize::from(u16::from_be_bytes([resp[at + 2], resp[at + 3]]));
        let v = resp.get(at + 4..at + 4 + len)?;
        if ty == 0x0020 && len == 8 && v[1] == 0x01 {
            let port = u16::from_be_bytes([v[2] ^ cookie[0], v[3] ^ cookie[1]]);
            let ip = Ipv4Addr::new(
                v[4] ^ cookie[0],
                v[5] ^ cookie[1],
                v[6] ^ cookie[2],
                v[7] ^ cookie[3],
            );
            return Some(SocketAddr::from((ip, port)));
        }
        at += 4 + len.div_ceil(4) * 4;
    }
    None
}

/// Asks `server` for this socket's public address (three tries, 1 s each).
async fn stun(sock: &SimUdpSocket, server: SocketAddr, tid: [u8; 12]) -> SocketAddr {
    let mut buf = [0u8; 1500];
    for _ in 0..3 {
        sock.send_to(&binding_request(tid), server).await.unwrap();
        let wait = tokio::time::timeout(Duration::from_secs(1), sock.recv_from(&mut buf)).await;
        if let Ok(Ok((n, from))) = wait {
            assert_eq!(from, server, "the answer leaves from the address asked");
            return xor_mapped(&buf[..n], tid).expect("a binding success response");
        }
    }
    panic!("no STUN answer from {server}");
}

#[tokio::test(start_paused = true)]
async fn daemon_behind_nat_joins_registers_discovers_and_learns_its_mapping() {
    let dir = tempfile::tempdir().unwrap();
    let (sim, rv_host, d_host, nat) = topology();
    let net = SimNet::new(sim);
    let rv = start_sim(&net, rv_host, dir.path()).await;
    assert_eq!(rv.udp_addr, SocketAddr::from((RV_IP, 3478)));
    assert_eq!(rv.stun_alt_addr, Some(SocketAddr::from((RV_IP, 3479))));
    assert_eq!(rv.tcp_addr, None);

    let ep = net.endpoint(d_host, 4100, None).unwrap();
    let target = Target {
        addr: rv.udp_addr,
        server: rv.id,
    };
    let client = tokio::time::timeout(
        Duration::from_secs(10),
        Client::connect_quic(&ep, &target, &key(1), &join("acme")),
    )
    .await
    .expect("QUIC session within 10 s")
    .unwrap();
    let public = mapping(&net, nat, SocketAddrV4::new([192, 168, 1, 2].into(), 4100));
    assert_eq!(public.ip(), NAT_IP);
    assert_eq!(
        client.observed(),
        public,
        "the rendezvous sees the NAT's mapping"
    );

    client
        .register(vec![manifest(1, &["translate"])])
        .await
        .unwrap();
    let found = client
        .discover(DiscoverQuery {
            capabilities: vec!["translate".into()],
            ..DiscoverQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].node, key(1).node_id());
    assert_eq!(found[0].manifest.id, manifest(1, &[]).id);

    // STUN from another socket on the NATed host, to both observers.
    let sock = net.bind(d_host, 5000).unwrap();
    let got = stun(&sock, rv.udp_addr, [7; 12]).await;
    let want = mapping(&net, nat, SocketAddrV4::new([192, 168, 1, 2].into(), 5000));
    assert_eq!(got, want);
    assert_eq!(got.ip(), NAT_IP);
    let alt = stun(&sock, rv.stun_alt_addr.unwrap(), [8; 12]).await;
    assert_eq!(alt, want, "endpoint-independent mapping: same on both");
    assert!(rv.metrics_text().contains("rv_stun_answered_total 2"));

    // QUIC on the shared socket still works after the diverted STUN.
    client.ping().await.unwrap();
    drop(client);
    rv.shutdown().await;
}
