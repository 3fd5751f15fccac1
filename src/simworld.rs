//! A whole mesh on `netsim`, in one process: the rendezvous and the relay on simulated
//! public hosts, and full daemons (local API on real Unix sockets, everything else the
//! production code) each on a simulated host behind the NAT preset asked for. Only the
//! network is simulated. Used by `agentmesh demo` and the full-daemon NAT matrix.
//!
//! Each daemon can open extra sockets on its host (ephemeral ports) for many-port
//! probing, as a real daemon binds extra UDP sockets.
//!
//! The simulation runs on tokio's clock; with a running clock it runs in real time
//! (links have their configured latency in wall-clock time).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use agentmesh_proto::{NodeId, SecretKey};
use agentmesh_relay::server::{QuinnDatagram as RelayDatagram, RelaySockets};
use agentmesh_relay::{Config as RelayConfig, MemStore, RelayHandle, StartOptions};
use agentmesh_rendezvous::config::Config as RvConfig;
use agentmesh_rendezvous::server::{QuinnDatagram, Running, Sockets};
use netsim::adapter::SimNet;
use netsim::{LinkConfig, Loss, Preset, Sim};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::config::DaemonConfig;
use crate::daemon::{Daemon, NetBinding, StartError};
use crate::net::mesh_socket::DoorBinder;
use crate::net::node::MeshConfig;
use crate::net::relay_link::RelayLinkConfig;
use crate::net::rendezvous_link::RendezvousConfig;

/// The rendezvous's public address in the simulation.
pub const RENDEZVOUS_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(203, 0, 113, 10)), 3478);
/// Its second STUN observer.
pub const STUN_ALT_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(203, 0, 113, 11)), 3478);
/// The relay's public address.
pub const RELAY_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(203, 0, 113, 20)), 7500);
/// The daemons' UDP port on their hosts.
pub const DAEMON_PORT: u16 = 7946;

/// Why the world could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorldError {
    /// The simulated topology was refused.
    #[error("topology: {0}")]
    Topology(String),
    /// The rendezvous did not start.
    #[error("rendezvous: {0}")]
    Rendezvous(String),
    /// The relay did not start.
    #[error("relay: {0}")]
    Relay(String),
    /// A daemon did not start.
    #[error("daemon {name}: {source}")]
    Daemon {
        /// Its name.
        name: String,
        /// Why.
        #[source]
        source: StartError,
    },
}

/// One daemon to place.
#[derive(Debug, Clone)]
pub struct SiteSpec {
    /// Its name (also the name of its site).
    pub name: String,
    /// The NAT in front of it.
    pub preset: Preset,
    /// The NAT's public address (or the host's, for `Preset::Open`).
    pub public_ip: Ipv4Addr,
    /// One-way latency of its access link.
    pub latency: Duration,
    /// Packet loss on its access link (0.0–1.0).
    pub loss: f64,
}

/// A running daemon of the world.
pub struct WorldDaemon {
    /// Its name.
    pub name: String,
    /// Its node id.
    pub node_id: NodeId,
    /// Its local API socket.
    pub socket: PathBuf,
    /// Its NAT preset.
    pub preset: Preset,
    /// Its NAT in the simulation (none for `Preset::Open`), for faults.
    pub nat: Option<netsim::NatId>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), StartError>>,
}

/// The running world.
pub struct World {
    /// The simulated network.
    pub net: SimNet,
    /// The daemons, in the order given.
    pub daemons: Vec<WorldDaemon>,
    rendezvous: Option<Running>,
    relay: Option<RelayHandle>,
}

/// The doors (extra sockets of many-port probing) of a daemon: ephemeral ports of its
/// simulated host.
#[derive(Debug)]
struct SimDoors {
    net: SimNet,
    host: netsim::HostId,
}

impl DoorBinder for SimDoors {
    fn bind(&self) -> std::io::Result<Arc<dyn quinn::AsyncUdpSocket>> {
        match self.net.bind(self.host, 0) {
            Ok(s) => Ok(Arc::new(s)),
            Err(e) => Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                e.to_string(),
            )),
        }
    }
}

fn link(ms: Duration, loss: f64) -> LinkConfig {
    LinkConfig {
        loss: if loss > 0.0 {
            Loss::Uniform(loss)
        } else {
            Loss::None
        },
        ..LinkConfig::with_latency(ms)
    }
}

impl World {
    /// Builds the topology, starts the rendezvous, the relay and one daemon per site
    /// (state and sockets under `dir`), with `seed` for the simulation.
    pub async fn start(dir: &Path, sites: &[SiteSpec], seed: u64) -> Result<World, WorldError> {
        let topo = |e: netsim::TopologyError| WorldError::Topology(e.to_string());
        let mut sim = Sim::new(seed);
        let inet = sim.internet();
        let fast = LinkConfig::with_latency(Duration::from_millis(2));
        let ip = |a: SocketAddr| match a.ip() {
            std::net::IpAddr::V4(v4) => v4,
            std::net::IpAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
        };
        let rv_host = sim
            .add_host("rendezvous", inet, ip(RENDEZVOUS_ADDR), fast)
            .map_err(topo)?;
        let alt_host = sim
            .add_host("stun-alt", inet, ip(STUN_ALT_ADDR), fast)
            .map_err(topo)?;
        let relay_host = sim
            .add_host("relay", inet, ip(RELAY_ADDR), fast)
            .map_err(topo)?;
        let mut hosts = Vec::new();
        for s in sites {
            let private = Ipv4Addr::new(10, 0, 0, 2);
            let site = sim
                .add_site(
                    &s.name,
                    s.preset,
                    inet,
                    s.public_ip,
                    if s.preset == Preset::Open {
                        s.public_ip
                    } else {
                        private
                    },
                    link(s.latency, s.loss),
                )
                .map_err(topo)?;
            hosts.push((site.host, site.nat));
        }
        let net = SimNet::new(sim);
        let bind = |host, port| {
            net.bind(host, port)
                .map(Arc::new)
                .map_err(|e| WorldError::Topology(e.to_string()))
        };

        let rv_text = format!(
            "listen = \"0.0.0.0:0\"\nkey_file = \"{d}/rv.key\"\ndatabase = \"{d}/rv.sqlite\"\n\
             [[tenant]]\nname = \"demo\"\njoin_token = \"demo-token\"\n",
            d = dir.display()
        );
        let rv_cfg =
            RvConfig::parse(&rv_text).map_err(|e| WorldError::Rendezvous(e.to_string()))?;
        let rv_key = SecretKey::from_bytes(&[0x52; 32]);
        let rendezvous = agentmesh_rendezvous::server::start_on(
            rv_cfg,
            rv_key,
            Sockets {
                udp: bind(rv_host, RENDEZVOUS_ADDR.port())?,
                runtime: net.runtime(),
                stun_alt: Some(Arc::new(QuinnDatagram::new(bind(
                    alt_host,
                    STUN_ALT_ADDR.port(),
                )?))),
                tcp: None,
                admin: None,
            },
        )
        .await
        .map_err(|e| WorldError::Rendezvous(e.to_string()))?;

        let relay_key = SecretKey::from_bytes(&[0x53; 32]);
        let relay = agentmesh_relay::server::start_on(
            &RelayConfig::default(),
            relay_key,
            Box::new(MemStore::default()),
            StartOptions::default(),
            RelaySockets {
                udp: Some(Arc::new(RelayDatagram::new(bind(
                    relay_host,
                    RELAY_ADDR.port(),
                )?))),
                tls: None,
                admin: None,
            },
        )
        .await
        .map_err(|e| WorldError::Relay(e.to_string()))?;

        let mesh = MeshConfig {
            rendezvous: Some(RendezvousConfig {
                addr: RENDEZVOUS_ADDR,
                tcp_addr: None,
                node: rendezvous.id,
                tenant: "demo".into(),
                token: "demo-token".into(),
            }),
            relay: Some(RelayLinkConfig::new(relay.relay_id, RELAY_ADDR, None)),
            stun_servers: vec![STUN_ALT_ADDR],
            ..MeshConfig::default()
        };
        let mut daemons = Vec::new();
        for (s, (host, nat)) in sites.iter().zip(hosts) {
            let doors: Arc<dyn DoorBinder> = Arc::new(SimDoors {
                net: net.clone(),
                host,
            });
            let binding = NetBinding {
                udp: bind(host, DAEMON_PORT)?,
                runtime: net.runtime(),
                doors: Some(doors),
                mesh: mesh.clone(),
            };
            let mut d = start_daemon(dir, s, binding)?;
            d.nat = nat;
            daemons.push(d);
        }
        Ok(World {
            net,
            daemons,
            rendezvous: Some(rendezvous),
            relay: Some(relay),
        })
    }

    /// The daemon named `name`.
    pub fn daemon(&self, name: &str) -> Option<&WorldDaemon> {
        self.daemons.iter().find(|d| d.name == name)
    }

    /// Stops the rendezvous (daemons keep their sessions).
    pub async fn stop_rendezvous(&mut self) {
        if let Some(rv) = self.rendezvous.take() {
            rv.shutdown().await;
        }
    }

    /// Stops the relay.
    pub async fn stop_relay(&mut self) {
        if let Some(mut relay) = self.relay.take() {
            relay.stop().await;
        }
    }

    /// Stops every daemon, then the services.
    pub async fn shutdown(mut self) {
        for d in &mut self.daemons {
            if let Some(stop) = d.stop.take() {
                let _ = stop.send(());
            }
        }
        for d in self.daemons.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(5), d.task).await;
        }
        self.stop_relay().await;
        self.stop_rendezvous().await;
    }
}

fn start_daemon(dir: &Path, s: &SiteSpec, binding: NetBinding) -> Result<WorldDaemon, WorldError> {
    let config = DaemonConfig {
        socket: dir.join(format!("{}.sock", s.name)),
        state_dir: dir.join(&s.name),
        upnp: false,
        admin: None,
        ..DaemonConfig::default()
    };
    let err = |source| WorldError::Daemon {
        name: s.name.clone(),
        source,
    };
    let daemon = Daemon::start_with_mesh(&config).map_err(err)?;
    let node_id = daemon.node_id();
    let (stop, stop_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(daemon.run_on(Some(binding), async {
        let _ = stop_rx.await;
    }));
    Ok(WorldDaemon {
        name: s.name.clone(),
        node_id,
        socket: config.socket,
        preset: s.preset,
        nat: None,
        stop: Some(stop),
        task,
    })
}
