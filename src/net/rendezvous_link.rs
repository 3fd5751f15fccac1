//! The daemon's session with the rendezvous: logs in over QUIC from the daemon's own
//! socket (so the rendezvous sees the same public mapping peers will), keeps it up
//! with backoff, and carries the router's announcements and lookups, heartbeats,
//! candidate updates and introduction requests; pushes introductions to the path
//! finder and the tenant's subscription index to the router.
//!
//! It also declares how our NAT maps (from our STUN round), so introductions carry the
//! peer's mapping and each side can pick its many-port role.
//!
//! It mirrors what it announced (agents, patterns, candidates, mapping), so after a reconnect
//! the rendezvous learns everything again. While it is down, lookups fail at once with
//! `DEPENDENCY_FAILED`; sessions with peers are not affected.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use agentmesh_proto::rendezvous::{NatMapping, RvErrorCode};
use agentmesh_proto::{AgentId, ErrorCode, ErrorObject, Manifest, NodeId, SecretKey};
use agentmesh_rendezvous::client::{Client, ClientError, Event, Join, Target};
use indexmap::IndexMap;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::paths::Paths;
use super::peers::Absence;
use crate::api::RouterHandle;
use crate::router::{Announce, Lookup};

/// How often local agents are heartbeated (the rendezvous forgets them after 45 s).
pub const HEARTBEAT: Duration = Duration::from_secs(10);

/// Unanswered heartbeats (10 s timeout each) before the session is given up.
const MISSED_BEATS: u32 = 2;

/// How long a QUIC login may take before TCP/TLS is tried.
const QUIC_TRY: Duration = Duration::from_secs(3);

/// Longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Where the rendezvous is and how to join its tenant.
#[derive(Debug, Clone)]
pub struct RendezvousConfig {
    /// Its UDP (QUIC + STUN) address.
    pub addr: SocketAddr,
    /// Its TCP/TLS address, tried when QUIC gets no answer (UDP blocked).
    pub tcp_addr: Option<SocketAddr>,
    /// Its node id, pinned.
    pub node: NodeId,
    /// Tenant to join.
    pub tenant: String,
    /// Join token of the tenant.
    pub token: String,
}

/// What the link is asked to do.
#[derive(Debug)]
pub enum Command {
    /// Tell the rendezvous about a local change.
    Announce(Announce),
    /// Search, answering the router.
    Lookup(Box<Lookup>),
    /// Ask for an introduction to this node.
    Introduce(NodeId),
    /// Our candidate addresses changed.
    Candidates(Vec<SocketAddr>),
    /// Our NAT's mapping kind changed (or was measured for the first time).
    Mapping(NatMapping),
}

#[derive(Default)]
struct Mirror {
    agents: IndexMap<AgentId, Manifest>,
    patterns: Vec<String>,
    candidates: Vec<SocketAddr>,
    mapping: NatMapping,
    home_relay: Option<String>,
    client: Option<Arc<Client>>,
    connected_once: bool,
}

/// The rendezvous link.
pub struct RendezvousLink {
    config: RendezvousConfig,
    endpoint: quinn::Endpoint,
    key: SecretKey,
    router: RouterHandle,
    paths: Arc<Paths>,
    /// Where a node the rendezvous says is offline is reported (fails a dial early).
    absent: Absence,
    mirror: Mutex<Mirror>,
}

impl RendezvousLink {
    /// A link that will log in from `endpoint`.
    pub fn new(
        config: RendezvousConfig,
        endpoint: quinn::Endpoint,
        key: SecretKey,
        router: RouterHandle,
        paths: Arc<Paths>,
        home_relay: Option<String>,
        absent: Absence,
    ) -> Arc<Self> {
        Arc::new(RendezvousLink {
            config,
            endpoint,
            key,
            router,
            paths,
            absent,
            mirror: Mutex::new(Mirror {
                home_relay,
                ..Mirror::default()
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Mirror> {
        self.mirror.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a session is up.
    pub fn connected(&self) -> bool {
        self.lock().client.is_some()
    }

    /// The address the rendezvous sees us at, while connected.
    pub fn observed(&self) -> Option<SocketAddr> {
        self.lock().client.as_ref().map(|c| c.observed())
    }

    /// Keeps a session up and serves `commands`, until the process ends.
    pub async fn run(self: Arc<Self>, mut commands: mpsc::UnboundedReceiver<Command>) {
        let mut backoff = Duration::from_millis(250);
        loop {
            match self.connect().await {
                Ok((client, events)) => {
                    backoff = Duration::from_millis(250);
                    info!(rendezvous = %self.config.addr, "rendezvous session up");
                    self.serve(client, events, &mut commands).await;
                    warn!(rendezvous = %self.config.addr, "rendezvous session lost; reconnecting");
                }
                Err(e) => {
                    let first = !self.lock().connected_once;
                    if first {
                        warn!(rendezvous = %self.config.addr, error = %e, "cannot reach the rendezvous; retrying");
                    } else {
                        debug!(error = %e, "rendezvous reconnect failed");
                    }
                    let until = tokio::time::Instant::now() + backoff;
                    while let Ok(Some(cmd)) = tokio::time::timeout_at(until, commands.recv()).await
                    {
                        self.handle(cmd);
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    async fn connect(&self) -> Result<(Arc<Client>, mpsc::UnboundedReceiver<Event>), ClientError> {
        let join = {
            let m = self.lock();
            Join {
                tenant: self.config.tenant.clone(),
                token: self.config.token.clone(),
                candidates: m.candidates.clone(),
                home_relay: m.home_relay.clone(),
            }
        };
        let target = Target {
            addr: self.config.addr,
            server: self.config.node,
        };
        let quic = tokio::time::timeout(
            QUIC_TRY,
            Client::connect_quic(&self.endpoint, &target, &self.key, &join),
        )
        .await
        .unwrap_or(Err(ClientError::Timeout));
        let mut client = match (quic, self.config.tcp_addr) {
            (Ok(c), _) => c,
            (Err(e), None) => return Err(e),
            (Err(e), Some(tcp)) => {
                debug!(error = %e, "rendezvous over QUIC failed; trying TCP/TLS");
                let target = Target {
                    addr: tcp,
                    server: self.config.node,
                };
                Client::connect_tcp(&target, &self.key, &join).await?
            }
        };
        let events = client.take_events();
        let client = Arc::new(client);
        let (agents, patterns, candidates, home) = {
            let mut m = self.lock();
            m.client = Some(client.clone());
            m.connected_once = true;
            // Declared even while unknown: it asks for introductions with mappings. Not
            // awaited: a rendezvous older than the message never answers it by number.
            spawn_mapping(client.clone(), m.mapping);
            (
                m.agents.values().cloned().collect::<Vec<_>>(),
                m.patterns.clone(),
                m.candidates.clone(),
                m.home_relay.clone(),
            )
        };
        // Candidates learnt while the login was under way were not in its `Join`.
        if candidates != join.candidates {
            client.update_candidates(candidates, home).await?;
        }
        if !agents.is_empty() {
            client.register(agents).await?;
        }
        if !patterns.is_empty() {
            client.subscribe(patterns).await?;
        }
        Ok((client, events))
    }

    async fn serve(
        &self,
        client: Arc<Client>,
        mut events: mpsc::UnboundedReceiver<Event>,
        commands: &mut mpsc::UnboundedReceiver<Command>,
    ) {
        let mut beat = tokio::time::interval(HEARTBEAT);
        beat.tick().await;
        let (dead_tx, mut dead) = mpsc::unbounded_channel();
        let mut missed = 0u32;
        loop {
            tokio::select! {
                Some(answered) = dead.recv() => {
                    missed = if answered { 0 } else { missed + 1 };
                    if missed >= MISSED_BEATS {
                        warn!(rendezvous = %self.config.addr, "the rendezvous stopped answering");
                        break;
                    }
                }
                ev = events.recv() => match ev {
                    Some(ev) => self.on_event(ev),
                    None => break,
                },
                cmd = commands.recv() => match cmd {
                    Some(cmd) => self.handle(cmd),
                    None => break,
                },
                _ = beat.tick() => self.heartbeat(client.clone(), dead_tx.clone()),
            }
        }
        self.lock().client = None;
    }

    fn on_event(&self, ev: Event) {
        match ev {
            Event::Introduction(signed) => self.paths.handle_introduction(&signed.intro, None),
            Event::MappedIntroduction(signed, mapping) => {
                self.paths.handle_introduction(&signed.intro, Some(mapping))
            }
            Event::Subscriptions(entries) => self.router.apply(|r, _| {
                r.set_remote_subscriptions(entries);
                Vec::new()
            }),
            Event::Error(e) => warn!(error = %e.message, "the rendezvous reported an error"),
        }
    }

    /// Records a command in the mirror and, when connected, carries it out.
    fn handle(&self, cmd: Command) {
        let client = {
            let mut m = self.lock();
            match &cmd {
                Command::Announce(Announce::Register(man)) => {
                    m.agents.insert(man.id, (**man).clone());
                }
                Command::Announce(Announce::Unregister(id)) => {
                    m.agents.shift_remove(id);
                }
                Command::Announce(Announce::Patterns(p)) => m.patterns = p.clone(),
                Command::Candidates(c) => m.candidates = c.clone(),
                Command::Mapping(k) => m.mapping = *k,
                Command::Lookup(_) | Command::Introduce(_) => {}
            }
            m.client.clone()
        };
        let Some(client) = client else {
            if let Command::Lookup(l) = cmd {
                let error = self.unreachable_error("not connected");
                self.router
                    .apply(|r, now| r.lookup_done(now, l.token, Err(error)));
            }
            return;
        };
        let router = self.router.clone();
        match cmd {
            Command::Lookup(l) => {
                let addr = self.config.addr;
                tokio::spawn(async move {
                    let answer = match client.discover(l.query).await {
                        Ok(records) => Ok(records),
                        Err(ClientError::Refused(e)) if e.code == RvErrorCode::InvalidQuery => {
                            Err(ErrorObject::new(ErrorCode::InvalidQuery, e.message))
                        }
                        Err(e) => Err(fail_msg(addr, &e.to_string())),
                    };
                    router.apply(|r, now| r.lookup_done(now, l.token, answer));
                });
            }
            Command::Announce(a) => {
                tokio::spawn(async move {
                    let r = match a {
                        Announce::Register(m) => client.register(vec![*m]).await,
                        Announce::Unregister(id) => client.unregister(vec![id]).await,
                        Announce::Patterns(p) => client.subscribe(p).await,
                    };
                    if let Err(e) = r {
                        debug!(error = %e, "announcement not delivered");
                    }
                });
            }
            Command::Introduce(node) => {
                let absent = self.absent.clone();
                tokio::spawn(async move {
                    let result = client.introduce(node).await;
                    if let Err(ClientError::Refused(e)) = &result {
                        if e.code == RvErrorCode::UnknownNode {
                            absent.report(node);
                        }
                    }
                    if let Err(e) = result {
                        debug!(error = %e, peer = %node.short(), "introduction not asked");
                    }
                });
            }
            Command::Mapping(k) => spawn_mapping(client, k),
            Command::Candidates(c) => {
                let home = self.lock().home_relay.clone();
                tokio::spawn(async move {
                    if let Err(e) = client.update_candidates(c, home).await {
                        debug!(error = %e, "candidates not updated");
                    }
                });
            }
        }
    }

    /// Heartbeats the local agents (or pings when there are none) and reports on
    /// `answered` whether the rendezvous answered, so a crashed rendezvous is left after
    /// two silent beats rather than after QUIC's idle timeout.
    fn heartbeat(&self, client: Arc<Client>, answered: mpsc::UnboundedSender<bool>) {
        let agents: Vec<_> = self
            .lock()
            .agents
            .values()
            .map(|m| (m.id, m.availability))
            .collect();
        let mirror: Vec<Manifest> = self.lock().agents.values().cloned().collect();
        tokio::spawn(async move {
            if agents.is_empty() {
                let ok = client.ping().await.is_ok();
                let _ = answered.send(ok);
                return;
            }
            let result = client.heartbeat(agents).await;
            let _ = answered.send(result.is_ok());
            match result {
                Ok(unknown) if !unknown.is_empty() => {
                    let again: Vec<Manifest> = mirror
                        .into_iter()
                        .filter(|m| unknown.contains(&m.id))
                        .collect();
                    if let Err(e) = client.register(again).await {
                        debug!(error = %e, "re-registration failed");
                    }
                }
                Ok(_) => {}
                Err(e) => debug!(error = %e, "heartbeat failed"),
            }
        });
    }

    fn unreachable_error(&self, why: &str) -> ErrorObject {
        fail_msg(self.config.addr, why)
    }
}

/// Declares our mapping kind in the background.
fn spawn_mapping(client: Arc<Client>, mapping: NatMapping) {
    tokio::spawn(async move {
        if let Err(e) = client.update_mapping(mapping).await {
            debug!(error = %e, "mapping kind not declared");
        }
    });
}

fn fail_msg(addr: SocketAddr, why: &str) -> ErrorObject {
    ErrorObject::new(
        ErrorCode::DependencyFailed,
        format!(
            "the rendezvous at {addr} is unreachable ({why}); discovery across hosts \
             resumes when it is back (local agents and open sessions keep working)"
        ),
    )
}
