//! The daemon's network, assembled: one UDP socket wrapped as the [`MeshSocket`], the
//! QUIC endpoint on it, the relay link, the path finder, STUN, the rendezvous link and
//! the peer sessions; plus the two dispatch loops that join them (diverted datagrams to
//! their owners; router outputs to sessions and the rendezvous) and the status feed to
//! the router (a source `status` reads afresh). Socket and runtime are given, so the same code runs on a real socket and
//! on `netsim`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentmesh_proto::{ErrorCode, ErrorObject, SecretKey};
use quinn::{AsyncUdpSocket, Endpoint};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::debug;

use super::demux::Kind;
use super::mailbox::{deliver_mail, MailCounters, Mailbox};
use super::mesh_socket::{Diverted, DoorBinder, MeshHandle, MeshSocket, RelayLink};
use super::metrics::{NetMetrics, PathCounters};
use super::paths::{PathChange, Paths};
use super::peer_path::{PathConfig, Tier};
use super::peers::{self, Sessions};
use super::ping;
use super::portmap::{PortMapper, PortMapperConfig};
use super::reflexive::{Reflexive, SelfView};
use super::relay_link::{relay_link, RelayLinkConfig, RelayLinkHandle, RelayLinkStatus};
use super::rendezvous_link::{Command, RendezvousConfig, RendezvousLink};
use super::routes::Routes;
use super::status;
use crate::api::RouterHandle;
use crate::router::{NetSource, Output};

/// Probe interval on a direct path that is new or carried traffic in the last 10 s: two
/// silent ones (2–3 s) and the peer is back on the relay, so a NAT reboot or a lost uplink
/// costs seconds, not the 60 s of a QUIC idle timeout. An idle path probes every 20 s
/// (`PathConfig::idle_keepalive`), below NAT mapping timeouts.
pub const KEEPALIVE: Duration = Duration::from_secs(1);

/// What the network needs to know.
#[derive(Debug, Clone)]
pub struct MeshConfig {
    /// The rendezvous (none: a daemon without a mesh answers only for local agents).
    pub rendezvous: Option<RendezvousConfig>,
    /// The relay (none: only direct paths).
    pub relay: Option<RelayLinkConfig>,
    /// STUN observers besides the rendezvous (two or more classify the NAT).
    pub stun_servers: Vec<SocketAddr>,
    /// Path maintenance timing.
    pub path: PathConfig,
    /// How often STUN is asked again (a changed mapping re-punches).
    pub restun_interval: Duration,
    /// Ask the router for a UPnP IGD port mapping (real sockets only).
    pub upnp: bool,
}

impl Default for MeshConfig {
    fn default() -> Self {
        MeshConfig {
            rendezvous: None,
            relay: None,
            stun_servers: Vec::new(),
            path: PathConfig {
                keepalive: KEEPALIVE,
                keepalive_misses: 2,
                ..PathConfig::default()
            },
            restun_interval: Duration::from_secs(60),
            upnp: false,
        }
    }
}

/// Why the network could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// The TLS identity could not be built.
    #[error("node TLS identity: {0}")]
    Tls(#[from] agentmesh_tlsid::TlsIdError),
    /// The QUIC endpoint could not be created.
    #[error("QUIC endpoint: {0}")]
    Endpoint(#[from] std::io::Error),
}

/// A relay link for daemons without a relay: every packet is dropped.
#[derive(Debug)]
struct NoRelay;

impl RelayLink for NoRelay {
    fn send(&self, _: agentmesh_proto::NodeId, _: &[u8]) -> std::io::Result<()> {
        Err(std::io::ErrorKind::NotConnected.into())
    }
}

/// Longest a shutdown waits for its close frames to leave.
const CLOSE_FLUSH: std::time::Duration = std::time::Duration::from_millis(300);

/// The running network of one daemon.
pub struct MeshNode {
    endpoint: Endpoint,
    sessions: Arc<Sessions>,
    paths: Arc<Paths>,
    relay: Option<RelayLinkHandle>,
    rendezvous: Option<Arc<RendezvousLink>>,
    portmap: Option<PortMapper>,
    view: Arc<Mutex<SelfView>>,
    /// Starts a STUN round at once (the network may have changed).
    stun_kick: Arc<tokio::sync::Notify>,
    mesh: MeshHandle,
    /// Path changes counted for metrics (punch successes by tier).
    changes: Arc<PathCounters>,
    /// Store-and-forward counters.
    mail: Arc<MailCounters>,
    tasks: Vec<JoinHandle<()>>,
}

impl MeshNode {
    /// Starts the network on `udp` (driven by `runtime`), serving the router behind
    /// `router`, whose network outputs arrive on `outputs`. `doors` opens the extra
    /// sockets of many-port probing (none: this daemon never takes the hard side).
    pub fn start(
        config: MeshConfig,
        key: SecretKey,
        router: RouterHandle,
        outputs: mpsc::UnboundedReceiver<Output>,
        udp: Arc<dyn AsyncUdpSocket>,
        runtime: Arc<dyn quinn::Runtime>,
        doors: Option<Arc<dyn DoorBinder>>,
    ) -> Result<MeshNode, NetError> {
        let routes = Arc::new(Routes::default());
        let (link, relay_driver): (Arc<dyn RelayLink>, _) = match &config.relay {
            Some(rc) => {
                let (sender, driver) = relay_link(rc.clone(), key.clone());
                (Arc::new(sender), Some(driver))
            }
            None => (Arc::new(NoRelay), None),
        };
        let (socket, mesh, diverted) = MeshSocket::new(udp, routes.clone(), link);
        if let Some(binder) = doors {
            mesh.set_door_binder(binder);
        }
        let endpoint = socket.into_endpoint(peers::server_config(&key)?, runtime)?;
        let mut tasks = Vec::new();
        let (relay_tx, relay_rx) = mpsc::channel(1024);
        let mut relay = relay_driver.map(|d| d.spawn(mesh.clone(), relay_rx));
        let mail_counters = Arc::new(MailCounters::default());
        let mailbox = Mailbox::new(
            key.clone(),
            relay.as_ref().map(|r| r.storer()),
            router.clone(),
            mail_counters.clone(),
        );
        let gone = relay.as_mut().and_then(|r| r.take_peer_gone());
        if let Some(mail) = relay.as_mut().and_then(|r| r.take_mail()) {
            let delivery = deliver_mail(mail, key.clone(), router.clone(), mail_counters.clone());
            tasks.push(tokio::spawn(delivery));
        }
        let relay_tier = relay.as_ref().map(|_| Tier::RelayUdp);
        let (paths, intro_rx, change_rx) = Paths::new(
            key.clone(),
            routes.clone(),
            mesh.clone(),
            config.path.clone(),
            relay_tier,
        );
        tasks.push(tokio::spawn(paths.clone().run()));
        let sessions = Sessions::new(
            endpoint.clone(),
            key.clone(),
            routes,
            router.clone(),
            paths.clone(),
        );
        tasks.push(tokio::spawn(sessions.clone().accept_loop()));
        if let Some(mut gone) = gone {
            let absence = sessions.absence();
            tasks.push(tokio::spawn(async move {
                while let Some(node) = gone.recv().await {
                    absence.report(node);
                }
            }));
        }
        let (rdv_tx, rdv_rx) = mpsc::unbounded_channel();
        let rendezvous = config.rendezvous.as_ref().map(|rc| {
            let link = RendezvousLink::new(
                rc.clone(),
                endpoint.clone(),
                key.clone(),
                router.clone(),
                paths.clone(),
                config.relay.as_ref().map(|r| r.udp_addr.to_string()),
                sessions.absence(),
            );
            tasks.push(tokio::spawn(link.clone().run(rdv_rx)));
            link
        });
        let mut servers: Vec<SocketAddr> = config.rendezvous.iter().map(|r| r.addr).collect();
        servers.extend(config.stun_servers.iter().copied());
        let reflexive = Reflexive::new(servers, mesh.clone(), config.restun_interval);
        let view = reflexive.view();
        let stun_kick = reflexive.kick();
        let portmap = if config.upnp {
            start_portmap(&mesh, view.clone(), reflexive.kick(), &mut tasks)
        } else {
            None
        };
        let (stun_tx, stun_rx) = mpsc::channel(64);
        let publish_tx = rdv_tx.clone();
        let declared = Mutex::new(None);
        tasks.push(tokio::spawn(reflexive.run(
            stun_rx,
            move |c, kind| {
                let _ = publish_tx.send(Command::Candidates(c));
                let mut last = declared.lock().unwrap_or_else(|e| e.into_inner());
                if *last != Some(kind) {
                    *last = Some(kind);
                    let _ = publish_tx.send(Command::Mapping(kind.into()));
                }
            },
            paths.clone(),
        )));
        tasks.push(tokio::spawn(dispatch_diverted(
            diverted,
            paths.clone(),
            relay_tx,
            stun_tx,
        )));
        tasks.push(tokio::spawn(dispatch_outputs(
            outputs,
            sessions.clone(),
            paths.clone(),
            router.clone(),
            rdv_tx.clone(),
            rendezvous.is_some(),
            mailbox,
        )));
        tasks.push(tokio::spawn(forward_intros(intro_rx, rdv_tx)));
        let node = MeshNode {
            endpoint,
            sessions,
            paths,
            relay,
            rendezvous,
            portmap,
            view,
            stun_kick,
            mesh,
            changes: Arc::default(),
            mail: mail_counters,
            tasks,
        };
        let feed = node.status_feed(router, change_rx);
        let mut node = node;
        node.tasks.push(feed);
        Ok(node)
    }

    /// The network's view for `status`: NAT class, addresses, relay, per-peer paths.
    pub fn status(&self) -> Value {
        self.sources().build()
    }

    fn sources(&self) -> status::Sources {
        status::Sources {
            view: self.view.clone(),
            paths: self.paths.clone(),
            sessions: self.sessions.clone(),
            relay: self.relay.as_ref().map(|r| r.watch()),
            rendezvous: self.rendezvous.clone(),
            mesh: self.mesh.clone(),
        }
    }

    /// What the metrics page reads from the network.
    pub fn metrics(&self) -> NetMetrics {
        NetMetrics {
            sources: self.sources(),
            changes: self.changes.clone(),
            mail: self.mail.clone(),
        }
    }

    /// The peer sessions.
    pub fn sessions(&self) -> &Arc<Sessions> {
        &self.sessions
    }

    /// The path finder.
    pub fn paths(&self) -> &Arc<Paths> {
        &self.paths
    }

    /// Gives the router its status source (read afresh by every `status`) and spawns
    /// the task that forwards path changes as `path` events and relay transport
    /// changes to the path finder.
    fn status_feed(
        &self,
        router: RouterHandle,
        mut changes: mpsc::UnboundedReceiver<PathChange>,
    ) -> JoinHandle<()> {
        let sources = self.sources();
        router.apply(move |r, _| {
            r.set_net_source(NetSource(Arc::new(move || sources.build())));
            Vec::new()
        });
        let paths = self.paths.clone();
        let counters = self.changes.clone();
        let mut relay = self.relay.as_ref().map(|r| r.watch());
        let poke = self.relay.as_ref().map(|r| r.poke());
        let stun_kick = self.stun_kick.clone();
        tokio::spawn(async move {
            let mut transport = None;
            let mut direct: std::collections::HashSet<agentmesh_proto::NodeId> =
                std::collections::HashSet::new();
            loop {
                tokio::select! {
                    Some(()) = relay_changed(&mut relay) => {
                        let now = relay.as_ref().and_then(|r| r.borrow().transport);
                        if now.is_some() && now != transport {
                            transport = now;
                            paths.set_relay_tier(now.map(|t| t.tier()));
                        }
                    }
                    change = changes.recv() => match change {
                        Some(c) => {
                            let was_direct = direct.contains(&c.node);
                            if c.tier.is_direct() {
                                direct.insert(c.node);
                            } else if was_direct {
                                // A direct path died: our mapping may have changed (NAT
                                // reboot), so the relay link and STUN start afresh.
                                direct.remove(&c.node);
                                if let Some(p) = &poke {
                                    p.network_changed();
                                }
                                stun_kick.notify_one();
                            }
                            counters.record(&c);
                            let event = path_event(&c);
                            router.apply(|r, _| r.path_changed(event));
                        }
                        None => return,
                    },
                }
            }
        })
    }

    /// Closes sessions and the endpoint, and stops every task.
    pub async fn shutdown(self) {
        self.sessions.close_all();
        self.endpoint.close(0u32.into(), b"shutdown");
        // Let the close frames leave (peers then know at once that we are gone), but
        // never hold the shutdown for long.
        let _ = tokio::time::timeout(CLOSE_FLUSH, self.endpoint.wait_idle()).await;
        for t in &self.tasks {
            t.abort();
        }
        if let Some(relay) = self.relay {
            relay.shutdown().await;
        }
        if let Some(portmap) = self.portmap {
            portmap.shutdown().await;
        }
    }
}

async fn relay_changed(relay: &mut Option<watch::Receiver<RelayLinkStatus>>) -> Option<()> {
    match relay {
        Some(r) => r.changed().await.ok(),
        None => std::future::pending().await,
    }
}

/// Maps the socket's port on the router (IPv4 only); the external address, when it
/// comes, joins the candidates at once.
fn start_portmap(
    mesh: &MeshHandle,
    view: Arc<Mutex<SelfView>>,
    kick: Arc<tokio::sync::Notify>,
    tasks: &mut Vec<JoinHandle<()>>,
) -> Option<PortMapper> {
    let local = mesh.local_addr().ok()?;
    let bind_ip = match local.ip() {
        std::net::IpAddr::V4(v4) if !v4.is_loopback() => v4,
        _ => return None,
    };
    let config = PortMapperConfig {
        bind_ip: (!bind_ip.is_unspecified()).then_some(bind_ip),
        ..PortMapperConfig::default()
    };
    let mapper = PortMapper::spawn(local.port(), config);
    let mut external = mapper.external();
    tasks.push(tokio::spawn(async move {
        while external.changed().await.is_ok() {
            let mapped = *external.borrow();
            if let Ok(mut v) = view.lock() {
                v.upnp = mapped;
            }
            kick.notify_one();
        }
    }));
    Some(mapper)
}

fn path_event(c: &PathChange) -> Value {
    let (path, addr) = c.path.describe();
    json!({
        "node": c.node,
        "path": path,
        "tier": c.tier.name(),
        "addr": addr,
        "rtt_ms": c.rtt.map(|d| d.as_secs_f64() * 1e3),
    })
}

async fn dispatch_diverted(
    mut diverted: mpsc::Receiver<Diverted>,
    paths: Arc<Paths>,
    relay: mpsc::Sender<(SocketAddr, Vec<u8>)>,
    stun: mpsc::Sender<(SocketAddr, Vec<u8>)>,
) {
    while let Some(d) = diverted.recv().await {
        match d.kind {
            Kind::Probe => paths.handle_probe_on(d.src, d.socket, &d.data),
            // Relay frames and STUN answers belong to the daemon's socket only.
            Kind::Relay | Kind::Stun if d.socket != 0 => {
                debug!(door = d.socket, "non-probe datagram on a door dropped")
            }
            Kind::Relay => {
                let _ = relay.try_send((d.src, d.data));
            }
            Kind::Stun => {
                let _ = stun.try_send((d.src, d.data));
            }
            Kind::Quic | Kind::Unknown => debug!(len = d.data.len(), "datagram dropped"),
        }
    }
}

async fn dispatch_outputs(
    mut outputs: mpsc::UnboundedReceiver<Output>,
    sessions: Arc<Sessions>,
    paths: Arc<Paths>,
    router: RouterHandle,
    rendezvous: mpsc::UnboundedSender<Command>,
    has_rendezvous: bool,
    mailbox: Mailbox,
) {
    while let Some(out) = outputs.recv().await {
        match out {
            Output::Peer { node, msg } => sessions.send(node, *msg),
            Output::Lookup(l) if !has_rendezvous => {
                let error = ErrorObject::new(
                    ErrorCode::DependencyFailed,
                    "no rendezvous is configured: only local agents can be found",
                );
                router.apply(|r, now| r.lookup_done(now, l.token, Err(error)));
            }
            Output::Lookup(l) => {
                let _ = rendezvous.send(Command::Lookup(l));
            }
            Output::Announce(a) => {
                let _ = rendezvous.send(Command::Announce(a));
            }
            Output::Ping(job) => {
                let run = ping::run(*job, sessions.clone(), paths.clone(), router.clone());
                tokio::spawn(run);
            }
            Output::Store {
                node,
                task_id,
                frame,
            } => mailbox.store(node, task_id, *frame),
            Output::Send { .. } => {} // local; the API server delivers these
        }
    }
}

async fn forward_intros(
    mut intros: mpsc::UnboundedReceiver<agentmesh_proto::NodeId>,
    rendezvous: mpsc::UnboundedSender<Command>,
) {
    while let Some(node) = intros.recv().await {
        let _ = rendezvous.send(Command::Introduce(node));
    }
}
