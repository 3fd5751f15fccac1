//! Client library for the rendezvous session, used by the integration tests and meant
//! for the daemon: connect over QUIC (on the daemon's own endpoint, so the rendezvous sees
//! its real mapping) or TCP/TLS, authenticate, then make requests and receive pushed
//! events (introductions, verified against the pinned rendezvous id; subscription index
//! snapshots).
//!
//! [`RawSession`] is the framed stream alone (for tests that misbehave on purpose);
//! [`Client`] runs the handshake and a reader task that matches answers to requests.
//!
//! The daemon's loop: connect, register its agents, heartbeat them every `heartbeat_ms`
//! (re-registering any the answer lists as unknown), and act on [`Event`]s; on
//! [`Client::next_event`] returning `None`, reconnect and register again (upserts: no
//! duplicates).
//!
//! ```no_run
//! # async fn demo(endpoint: quinn::Endpoint, key: agentmesh_proto::SecretKey,
//! #     rv: std::net::SocketAddr, rv_id: agentmesh_proto::NodeId,
//! #     manifest: agentmesh_proto::Manifest) -> Result<(), Box<dyn std::error::Error>> {
//! use agentmesh_proto::{Availability, DiscoverQuery};
//! use agentmesh_rendezvous::client::{Client, Event, Join, Target};
//!
//! let target = Target { addr: rv, server: rv_id };
//! let join = Join { tenant: "acme".into(), token: "secret".into(), candidates: vec![], home_relay: None };
//! let mut client = Client::connect_quic(&endpoint, &target, &key, &join).await?;
//! let id = manifest.id;
//! client.register(vec![manifest]).await?;
//! let unknown = client.heartbeat(vec![(id, Availability::Online)]).await?;
//! assert!(unknown.is_empty());
//! let found = client.discover(DiscoverQuery { capabilities: vec!["text".into()], ..Default::default() }).await?;
//! if let Some(peer) = found.first() {
//!     client.introduce(peer.node).await?;
//! }
//! while let Some(event) = client.next_event().await {
//!     if let Event::Introduction(i) = event {
//!         // Punch towards i.intro.peer_candidates at i.intro.start_in_ms from now.
//!         let _ = i;
//!     }
//! }
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentmesh_proto::frame::{encode, FrameError, DEFAULT_MAX_FRAME};
use agentmesh_proto::rendezvous::{
    AgentRecord, ClientMsg, NatMapping, RvError, ServerMsg, SignedIntroduction,
};
use agentmesh_proto::{AgentId, Availability, DiscoverQuery, Manifest, NodeId, SecretKey};
use agentmesh_tlsid as tlsid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use crate::deframe::FrameReader;

mod raw;

use raw::{unexpected, Reader, Writer};
pub use raw::{Join, RawSession, Target};

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Socket error.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// TLS configuration error.
    #[error("tls: {0}")]
    Tls(#[from] tlsid::TlsIdError),
    /// QUIC connection could not start.
    #[error("quic connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// QUIC connection failed.
    #[error("quic: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// A message could not be encoded.
    #[error("frame: {0}")]
    Frame(#[from] FrameError),
    /// The rendezvous sent something that does not decode.
    #[error("undecodable frame from the rendezvous")]
    BadFrame,
    /// The rendezvous refused.
    #[error("refused: {0}")]
    Refused(RvError),
    /// The rendezvous answered with an unexpected message.
    #[error("unexpected answer: {0}")]
    Unexpected(String),
    /// The challenge names another server than the pinned one.
    #[error("challenge from {got:?}, expected {expected:?}")]
    WrongServer {
        /// Pinned id.
        expected: NodeId,
        /// Id in the challenge.
        got: NodeId,
    },
    /// The session ended.
    #[error("session closed")]
    Closed,
    /// No answer in time.
    #[error("timed out")]
    Timeout,
}

/// Something the rendezvous pushed.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// An introduction (signature already verified against the pinned id).
    Introduction(SignedIntroduction),
    /// An introduction with the peer's NAT mapping (to a client that sent
    /// [`Client::update_mapping`]); signature verified as for `Introduction`.
    MappedIntroduction(SignedIntroduction, NatMapping),
    /// The tenant's subscription index.
    Subscriptions(Vec<(NodeId, Vec<String>)>),
    /// An error not tied to a request (e.g. a malformed frame was reported).
    Error(RvError),
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<ServerMsg>>>>;

/// An authenticated session with request/answer matching.
pub struct Client {
    writer: tokio::sync::Mutex<Writer>,
    pending: Pending,
    next_req: AtomicU64,
    events: mpsc::UnboundedReceiver<Event>,
    observed: SocketAddr,
    timeout: Duration,
    _conn: Option<quinn::Connection>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Client {
    /// Connects over QUIC from `endpoint` and authenticates.
    pub async fn connect_quic(
        endpoint: &quinn::Endpoint,
        target: &Target,
        key: &SecretKey,
        join: &Join,
    ) -> Result<Self, ClientError> {
        let mut raw = RawSession::quic(endpoint, target, key).await?;
        let observed = raw.authenticate(target, key, join).await?;
        Ok(Self::run(raw, target.server, observed))
    }

    /// Connects over TCP/TLS and authenticates.
    pub async fn connect_tcp(
        target: &Target,
        key: &SecretKey,
        join: &Join,
    ) -> Result<Self, ClientError> {
        let mut raw = RawSession::tcp(target, key).await?;
        let observed = raw.authenticate(target, key, join).await?;
        Ok(Self::run(raw, target.server, observed))
    }

    /// Wraps an authenticated raw session.
    pub fn run(raw: RawSession, server: NodeId, observed: SocketAddr) -> Self {
        let pending: Pending = Arc::default();
        let (tx, events) = mpsc::unbounded_channel();
        let RawSession {
            reader,
            writer,
            frames,
            conn,
        } = raw;
        let reader = tokio::spawn(read_loop(reader, frames, pending.clone(), tx, server));
        Client {
            writer: tokio::sync::Mutex::new(writer),
            pending,
            next_req: AtomicU64::new(1),
            events,
            observed,
            timeout: Duration::from_secs(10),
            _conn: conn,
            reader,
        }
    }

    /// Changes how long a request waits for its answer (default 10 s) before
    /// [`ClientError::Timeout`].
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// The address the rendezvous sees this daemon at.
    pub fn observed(&self) -> SocketAddr {
        self.observed
    }

    /// The next pushed event, or `None` once the session ended.
    pub async fn next_event(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// Takes the stream of pushed events, so the client can be shared (`Arc`) while
    /// another task reads them; [`Client::next_event`] returns `None` afterwards.
    pub fn take_events(&mut self) -> mpsc::UnboundedReceiver<Event> {
        let (_closed, empty) = mpsc::unbounded_channel();
        std::mem::replace(&mut self.events, empty)
    }

    /// Sends raw bytes on the session (tests).
    pub async fn send_bytes(&self, bytes: &[u8]) -> Result<(), ClientError> {
        let mut w = self.writer.lock().await;
        w.write_all(bytes).await?;
        w.flush().await?;
        Ok(())
    }

    /// Sends a request built around a fresh request number; waits for its answer.
    pub async fn request(
        &self,
        build: impl FnOnce(u64) -> ClientMsg,
    ) -> Result<ServerMsg, ClientError> {
        let req = self.next_req.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        if let Ok(mut p) = self.pending.lock() {
            p.insert(req, tx);
        }
        self.send_bytes(&encode(&build(req), DEFAULT_MAX_FRAME * 16)?)
            .await?;
        match tokio::time::timeout(self.timeout, rx).await {
            Err(_) => Err(ClientError::Timeout),
            Ok(Err(_)) => Err(ClientError::Closed),
            Ok(Ok(ServerMsg::Error { error, .. })) => Err(ClientError::Refused(error)),
            Ok(Ok(msg)) => Ok(msg),
        }
    }

    async fn ok(&self, build: impl FnOnce(u64) -> ClientMsg) -> Result<(), ClientError> {
        match self.request(build).await? {
            ServerMsg::Ok { .. } => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Registers (or replaces) signed manifests.
    pub async fn register(&self, manifests: Vec<Manifest>) -> Result<(), ClientError> {
        self.ok(|req| ClientMsg::Register { req, manifests }).await
    }

    /// Removes agents.
    pub async fn unregister(&self, agents: Vec<AgentId>) -> Result<(), ClientError> {
        self.ok(|req| ClientMsg::Unregister { req, agents }).await
    }

    /// Heartbeats agents; returns those the rendezvous does not know (register them again).
    pub async fn heartbeat(
        &self,
        agents: Vec<(AgentId, Availability)>,
    ) -> Result<Vec<AgentId>, ClientError> {
        match self
            .request(|req| ClientMsg::Heartbeat { req, agents })
            .await?
        {
            ServerMsg::HeartbeatAck { unknown, .. } => Ok(unknown),
            other => Err(unexpected(other)),
        }
    }

    /// Searches the tenant.
    pub async fn discover(&self, query: DiscoverQuery) -> Result<Vec<AgentRecord>, ClientError> {
        match self
            .request(|req| ClientMsg::Discover { req, query })
            .await?
        {
            ServerMsg::Discovered { agents, .. } => Ok(agents),
            other => Err(unexpected(other)),
        }
    }

    /// Replaces this node's topic patterns.
    pub async fn subscribe(&self, patterns: Vec<String>) -> Result<(), ClientError> {
        self.ok(|req| ClientMsg::Subscribe { req, patterns }).await
    }

    /// Replaces this node's candidates and home relay.
    pub async fn update_candidates(
        &self,
        candidates: Vec<SocketAddr>,
        home_relay: Option<String>,
    ) -> Result<(), ClientError> {
        self.ok(|req| ClientMsg::UpdateCandidates {
            req,
            candidates,
            home_relay,
        })
        .await
    }

    /// Declares how this node's NAT maps; introductions then arrive as
    /// [`Event::MappedIntroduction`]. A rendezvous older than this message refuses it
    /// (`MalformedFrame`) and keeps sending plain introductions.
    pub async fn update_mapping(&self, mapping: NatMapping) -> Result<(), ClientError> {
        self.ok(|req| ClientMsg::UpdateMapping { req, mapping })
            .await
    }

    /// Asks to be introduced to `target`; this side's introduction arrives as an
    /// [`Event::Introduction`].
    pub async fn introduce(&self, target: NodeId) -> Result<(), ClientError> {
        self.ok(|req| ClientMsg::Introduce { req, target }).await
    }

    /// Round trip time of one `Ping`.
    pub async fn ping(&self) -> Result<Duration, ClientError> {
        let t = Instant::now();
        match self.request(|req| ClientMsg::Ping { req }).await? {
            ServerMsg::Pong { .. } => Ok(t.elapsed()),
            other => Err(unexpected(other)),
        }
    }
}

fn request_of(msg: &ServerMsg) -> Option<u64> {
    match msg {
        ServerMsg::Ok { req }
        | ServerMsg::Pong { req }
        | ServerMsg::HeartbeatAck { req, .. }
        | ServerMsg::Discovered { req, .. } => Some(*req),
        ServerMsg::Error { req, .. } => *req,
        _ => None,
    }
}

async fn read_loop(
    mut reader: Reader,
    mut frames: FrameReader,
    pending: Pending,
    events: mpsc::UnboundedSender<Event>,
    server: NodeId,
) {
    let mut buf = vec![0u8; 16 * 1024];
    'outer: loop {
        while let Some(item) = frames.next_frame::<ServerMsg>() {
            let Ok(msg) = item else { break 'outer };
            if let Some(req) = request_of(&msg) {
                let waiter = pending.lock().ok().and_then(|mut p| p.remove(&req));
                if let Some(w) = waiter {
                    let _ = w.send(msg);
                }
                continue;
            }
            let event = match msg {
                ServerMsg::Introduction(i) if i.verify(&server).is_ok() => Event::Introduction(i),
                ServerMsg::MappedIntroduction {
                    intro,
                    peer_mapping,
                } if intro.verify(&server).is_ok() => {
                    Event::MappedIntroduction(intro, peer_mapping)
                }
                ServerMsg::Introduction(_) | ServerMsg::MappedIntroduction { .. } => {
                    tracing::warn!("dropping an introduction with a bad signature");
                    continue;
                }
                ServerMsg::Subscriptions { entries } => Event::Subscriptions(entries),
                ServerMsg::Error { error, .. } => Event::Error(error),
                _ => continue,
            };
            let _ = events.send(event);
        }
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => frames.push(&buf[..n]),
        }
    }
    if let Ok(mut p) = pending.lock() {
        p.clear();
    }
}
