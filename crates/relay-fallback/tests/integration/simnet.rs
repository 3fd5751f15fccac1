//! The relay on a simulated socket (`server::start_on` with netsim's `SimUdpSocket` through
//! `QuinnDatagram`, tokio clock paused): two daemons behind NATs authenticate with the
//! sans-IO `ClientSession` over their own simulated sockets and exchange payloads.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use agentmesh_proto::relay::{ClientMsg, Payload, Transport};
use agentmesh_proto::NodeId;
use agentmesh_relay::client::{ClientEvent, ClientSession};
use agentmesh_relay::server::{self, BoxStore, QuinnDatagram, RelaySockets};
use agentmesh_relay::{Config, MemStore, RelayHandle, StartOptions};
use netsim::adapter::{SimNet, SimUdpSocket};
use netsim::{HostId, LinkConfig, Preset, Sim};

use crate::common::key;

const RELAY_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 20);

fn wan() -> LinkConfig {
    LinkConfig {
        latency: Duration::from_millis(25),
        ..LinkConfig::default()
    }
}

/// The relay host and two daemons behind NATs of different kinds.
fn topology() -> (Sim, HostId, HostId, HostId) {
    let mut sim = Sim::new(5);
    let inet = sim.internet();
    let relay = sim.add_host("relay", inet, RELAY_IP, wan()).unwrap();
    let mut site = |name: &str, preset, public: [u8; 4]| {
        sim.add_site(
            name,
            preset,
            inet,
            public.into(),
            [10, 0, 0, 2].into(),
            wan(),
        )
        .unwrap()
        .host
    };
    let a = site("a", Preset::PortRestrictedCone, [198, 51, 100, 1]);
    let b = site("b", Preset::Symmetric, [198, 51, 100, 2]);
    (sim, relay, a, b)
}

async fn start_sim(net: &SimNet, host: HostId) -> RelayHandle {
    let cfg = Config {
        udp_listen: None,
        tls_listen: None,
        admin_listen: None,
        ..Config::default()
    };
    let store: BoxStore = Box::<MemStore>::default();
    let sockets = RelaySockets {
        udp: Some(Arc::new(QuinnDatagram::new(Arc::new(
            net.bind(host, 3479).unwrap(),
        )))),
        tls: None,
        admin: None,
    };
    server::start_on(&cfg, key(250), store, StartOptions::default(), sockets)
        .await
        .unwrap()
}

/// A daemon's relay session on its own simulated socket.
struct Daemon {
    sock: SimUdpSocket,
    session: ClientSession,
    relay: SocketAddr,
}

impl Daemon {
    fn new(net: &SimNet, host: HostId, seed: u8, relay: &RelayHandle) -> Daemon {
        Daemon {
            sock: net.bind(host, 4100).unwrap(),
            session: ClientSession::new(key(seed), Some(relay.relay_id), Transport::Udp),
            relay: relay.udp_addr.unwrap(),
        }
    }

    async fn send(&self, msg: &ClientMsg) {
        let bytes = self.session.encode(msg).unwrap();
        self.sock.send_to(&bytes, self.relay).await.unwrap();
    }

    /// The next event from the relay (answering what needs an answer), within 2 s.
    async fn next_event(&mut self) -> Option<ClientEvent> {
        let mut buf = vec![0u8; 65536];
        loop {
            let read = tokio::time::timeout(Duration::from_secs(2), self.sock.recv_from(&mut buf));
            let (n, from) = read.await.ok()?.unwrap();
            assert_eq!(from, self.relay);
            let msg = self.session.decode(&buf[..n]).unwrap();
            let (reply, event) = self.session.handle(msg).unwrap();
            if let Some(r) = reply {
                self.send(&r).await;
            }
            if event.is_some() {
                return event;
            }
        }
    }

    /// Says hello (three tries) until the relay welcomes us.
    async fn authenticate(&mut self) {
        for _ in 0..3 {
            self.send(&self.session.hello()).await;
            if let Some(ClientEvent::Ready { .. }) = self.next_event().await {
                assert!(self.session.is_ready());
                return;
            }
        }
        panic!("relay did not welcome {}", self.session.node_id());
    }

    async fn send_payload(&self, to: NodeId, payload: &[u8]) {
        let msg = ClientMsg::Send {
            to,
            payload: Payload(payload.to_vec()),
        };
        self.send(&msg).await;
    }
}

#[tokio::test(start_paused = true)]
async fn two_nated_daemons_exchange_payloads_through_a_simulated_relay() {
    let (sim, relay_host, a_host, b_host) = topology();
    let net = SimNet::new(sim);
    let mut relay = start_sim(&net, relay_host).await;
    assert_eq!(relay.udp_addr, Some(SocketAddr::from((RELAY_IP, 3479))));
    assert_eq!((relay.tls_addr, relay.admin_addr), (None, None));

    let mut a = Daemon::new(&net, a_host, 1, &relay);
    let mut b = Daemon::new(&net, b_host, 2, &relay);
    a.authenticate().await;
    b.authenticate().await;

    for i in 0..5u8 {
        let payload = vec![i; 200 + usize::from(i)];
        a.send_payload(b.session.node_id(), &payload).await;
        let got = b.next_event().await;
        assert_eq!(
            got,
            Some(ClientEvent::Recv {
                from: a.session.node_id(),
                payload
            })
        );
        b.send_payload(a.session.node_id(), &[i]).await;
        let got = a.next_event().await;
        assert_eq!(
            got,
            Some(ClientEvent::Recv {
                from: b.session.node_id(),
                payload: vec![i]
            })
        );
    }
    let snap = relay.snapshot();
    assert_eq!(snap.counters.auth_ok, 2);
    assert_eq!(snap.counters.forwarded, 10);
    relay.stop().await;
}
