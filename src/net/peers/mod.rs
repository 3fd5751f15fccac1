//! QUIC sessions between daemons: one connection per peer node (certificates bound to
//! node keys, the peer's id pinned when we dial and read from its certificate when it
//! dials us), carrying the router's [`PeerMsg`]s as `proto::peer` frames.
//!
//! Each task rides its own bidirectional stream: the requester's daemon opens it with
//! the request, later `continue`s follow on it; the responder's daemon answers on it
//! and finishes it with the final state. A cancel resets it with `STREAM_CANCELED`.
//! Events ride one-way streams. An empty bidirectional stream is a ping, answered by
//! finishing the other direction; a task stream that stays silent has its peer pinged
//! (`liveness.rs`), so a daemon that died without closing is noticed in seconds.
//! Messages for one node keep the order the router
//! produced them in: while the node has a live connection and nothing is queued for it,
//! a message is written at once by the caller (a frame goes into the stream's send
//! buffer, no task hop); otherwise it queues for the node's worker, which dials first.
//! A stream whose send buffer is full gets a writer task, so a slow stream never holds
//! up the others.

mod absence;
mod frames;
mod liveness;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use agentmesh_proto::peer::{
    OnewayFrame, RequesterFrame, ResponderFrame, STREAM_CANCELED, STREAM_SHUTDOWN,
};
use agentmesh_proto::{ErrorCode, ErrorObject, NodeId, SecretKey};
use agentmesh_tlsid::{ServerPin, ALPN_PEER, SERVER_NAME};
use futures_util::FutureExt as _;
use quinn::{Connection, Endpoint, VarInt};
use tokio::sync::{broadcast, mpsc};
use tracing::{debug, warn};

pub use absence::{Absence, ABSENT_MEMORY};
use frames::StreamTx;
pub use frames::{FrameReader, StreamError, WriteCmd, MAX_PEER_FRAME};
pub use liveness::{PEER_SILENT, PING_TIMEOUT, SILENCE_CHECK, SILENCE_RECHECK};

use super::routes::{Path, Routes};
use crate::api::RouterHandle;
use crate::router::PeerMsg;

/// How long dialing a peer may take before its tasks fail.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a handshake may go on after the relay or the rendezvous said its peer is
/// not connected.
pub const GONE_GRACE: Duration = Duration::from_millis(1500);

/// Most concurrent task streams (bidirectional) a peer may open to us. quinn allocates
/// state for every stream it allows up front (a few dozen bytes each, in two hash maps),
/// so this is memory per idle session: 4096 cost ≈ 520 KB per peer (agentmesh-bench,
/// footprint). A peer with more tasks in flight waits for a stream to finish.
pub const MAX_STREAMS: u32 = 128;

/// Most concurrent event streams (unidirectional, each finished as soon as written).
pub const MAX_EVENT_STREAMS: u32 = 32;

/// Prepares the way to a peer before it is dialed, and learns of peers that dial us.
pub trait PathSetup: Send + Sync + 'static {
    /// Makes a route to `node` usable (the relay at once where there is one, punching in
    /// the background); fails when there is no way to reach it.
    fn prepare(
        &self,
        node: NodeId,
    ) -> Pin<Box<dyn Future<Output = Result<(), ErrorObject>> + Send>>;
    /// `node` connected to us.
    fn incoming(&self, node: NodeId);
    /// `node`'s daemon closed our session on shutting down: when it comes back its
    /// address may differ, so its path starts over at the next contact.
    fn peer_left(&self, node: NodeId);
}

/// A peer connection's traffic, for status and metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionInfo {
    /// The peer.
    pub node: NodeId,
    /// QUIC's smoothed round-trip time.
    pub rtt: Duration,
    /// UDP bytes sent on the connection.
    pub bytes_sent: u64,
    /// UDP bytes received on the connection.
    pub bytes_received: u64,
}

type StreamKey = (NodeId, String);

/// The worker of one node: its queue, and how many messages are queued or being
/// dispatched (while any are, later messages must queue behind them).
struct Worker {
    tx: mpsc::UnboundedSender<PeerMsg>,
    pending: Arc<AtomicUsize>,
}

/// The daemon's peer sessions.
pub struct Sessions {
    endpoint: Endpoint,
    key: SecretKey,
    routes: Arc<Routes>,
    router: RouterHandle,
    paths: Arc<dyn PathSetup>,
    conns: Mutex<HashMap<NodeId, Connection>>,
    workers: Mutex<HashMap<NodeId, Worker>>,
    streams: Mutex<HashMap<StreamKey, StreamTx>>,
    /// Nodes the relay or the rendezvous says are absent.
    absence: Absence,
    /// Nodes whose liveness is being checked (`liveness.rs`).
    checking: Mutex<HashSet<NodeId>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn unreachable(node: NodeId, why: impl std::fmt::Display) -> ErrorObject {
    ErrorObject::new(
        ErrorCode::AgentUnavailable,
        format!("node {} is unreachable: {why}", node.short()),
    )
}

impl Sessions {
    /// Sessions on `endpoint` (which must have a server config for [`ALPN_PEER`]).
    pub fn new(
        endpoint: Endpoint,
        key: SecretKey,
        routes: Arc<Routes>,
        router: RouterHandle,
        paths: Arc<dyn PathSetup>,
    ) -> Arc<Self> {
        Arc::new(Sessions {
            endpoint,
            key,
            routes,
            router,
            paths,
            conns: Mutex::new(HashMap::new()),
            workers: Mutex::new(HashMap::new()),
            streams: Mutex::new(HashMap::new()),
            absence: Absence::default(),
            checking: Mutex::new(HashSet::new()),
        })
    }

    /// Where the relay link and the rendezvous link report absent nodes: a handshake
    /// with such a node that has no direct path fails [`GONE_GRACE`] after the report
    /// instead of at [`CONNECT_TIMEOUT`].
    pub fn absence(&self) -> Absence {
        self.absence.clone()
    }

    /// Sends a router message to `node`: at once when the node has a live connection
    /// and nothing queued, else through that node's worker (which dials first).
    pub fn send(self: &Arc<Self>, node: NodeId, msg: PeerMsg) {
        let mut workers = lock(&self.workers);
        let idle = workers
            .get(&node)
            .is_none_or(|w| w.pending.load(Ordering::Acquire) == 0);
        let msg = match self.connection(&node) {
            // Holding `workers` keeps a queued message from overtaking this one.
            Some(conn) if idle => match self.dispatch_now(node, &conn, msg) {
                None => return,
                Some(msg) => msg,
            },
            _ => msg,
        };
        let w = workers.entry(node).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            let pending = Arc::new(AtomicUsize::new(0));
            tokio::spawn(self.clone().worker(node, rx, pending.clone()));
            Worker { tx, pending }
        });
        w.pending.fetch_add(1, Ordering::AcqRel);
        if w.tx.send(msg).is_err() {
            workers.remove(&node);
        }
    }

    /// Serves connections peers open to us, until the endpoint closes.
    pub async fn accept_loop(self: Arc<Self>) {
        while let Some(incoming) = self.endpoint.accept().await {
            let me = self.clone();
            tokio::spawn(async move {
                let conn = match incoming.await {
                    Ok(c) => c,
                    Err(e) => return debug!(error = %e, "incoming peer handshake failed"),
                };
                let Some(node) = peer_of(&conn) else {
                    return conn.close(VarInt::from_u32(1), b"not a peer connection");
                };
                me.paths.incoming(node);
                me.adopt(node, conn);
            });
        }
    }

    /// Traffic of every live connection.
    pub fn info(&self) -> Vec<SessionInfo> {
        lock(&self.conns)
            .iter()
            .map(|(node, c)| {
                let s = c.stats();
                SessionInfo {
                    node: *node,
                    rtt: c.rtt(),
                    bytes_sent: s.udp_tx.bytes,
                    bytes_received: s.udp_rx.bytes,
                }
            })
            .collect()
    }

    /// The live connection to `node`, if any.
    pub fn connection(&self, node: &NodeId) -> Option<Connection> {
        lock(&self.conns)
            .get(node)
            .filter(|c| c.close_reason().is_none())
            .cloned()
    }

    /// Closes every session (daemon shutdown).
    pub fn close_all(&self) {
        for (_, c) in lock(&self.conns).drain() {
            c.close(VarInt::from_u32(STREAM_SHUTDOWN), b"daemon shutting down");
        }
    }

    async fn worker(
        self: Arc<Self>,
        node: NodeId,
        mut rx: mpsc::UnboundedReceiver<PeerMsg>,
        pending: Arc<AtomicUsize>,
    ) {
        while let Some(msg) = rx.recv().await {
            match self.connect(node).await {
                Ok(conn) => self.dispatch(node, &conn, msg).await,
                Err(error) => {
                    warn!(peer = %node.short(), error = %error.message, "cannot reach peer");
                    while rx.try_recv().is_ok() {
                        pending.fetch_sub(1, Ordering::AcqRel); // doomed like this one
                    }
                    self.router
                        .apply(|r, now| r.peer_unreachable(now, node, error.clone()));
                }
            }
            pending.fetch_sub(1, Ordering::AcqRel);
        }
    }

    async fn connect(self: &Arc<Self>, node: NodeId) -> Result<Connection, ErrorObject> {
        if let Some(c) = self.connection(&node) {
            return Ok(c);
        }
        // Listen before `prepare`, which may ask for the introduction that is refused.
        let gone = self.absence.subscribe();
        self.paths.prepare(node).await?;
        let addr = self.routes.virtual_addr(node);
        let connecting =
            dial(&self.endpoint, &self.key, node, addr).map_err(|e| unreachable(node, e))?;
        let conn = tokio::select! {
            r = tokio::time::timeout(CONNECT_TIMEOUT, connecting) => match r {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => return Err(unreachable(node, e)),
                Err(_) => return Err(unreachable(node, "no QUIC handshake within 10 s")),
            },
            () = self.said_absent(gone, node) => {
                return Err(unreachable(node, "it is not connected to the relay and has no direct path"));
            }
        };
        Ok(self.adopt(node, conn))
    }

    /// Returns [`GONE_GRACE`] after `node` is reported absent, if by then it has no
    /// direct path either; never otherwise.
    async fn said_absent(&self, rx: broadcast::Receiver<NodeId>, node: NodeId) {
        absence::reported(&self.absence, rx, node).await;
        tokio::time::sleep(GONE_GRACE).await;
        if matches!(self.routes.path(&node), Some(Path::Direct(_))) {
            std::future::pending::<()>().await;
        }
    }

    /// Records a connection (keeping an older live one as the one we send on) and
    /// serves the streams the peer opens on it.
    fn adopt(self: &Arc<Self>, node: NodeId, conn: Connection) -> Connection {
        let chosen = {
            let mut conns = lock(&self.conns);
            match conns.get(&node).filter(|c| c.close_reason().is_none()) {
                Some(live) => live.clone(),
                None => {
                    conns.insert(node, conn.clone());
                    conn.clone()
                }
            }
        };
        tokio::spawn(self.clone().serve(node, conn));
        chosen
    }

    async fn serve(self: Arc<Self>, node: NodeId, conn: Connection) {
        loop {
            tokio::select! {
                bi = conn.accept_bi() => match bi {
                    Ok((send, recv)) => {
                        tokio::spawn(self.clone().serve_task_stream(node, send, recv));
                    }
                    Err(_) => break,
                },
                uni = conn.accept_uni() => match uni {
                    Ok(recv) => {
                        tokio::spawn(self.clone().serve_event_stream(node, recv));
                    }
                    Err(_) => break,
                },
            }
        }
        let reason = conn
            .close_reason()
            .map_or_else(|| "closed".to_string(), |r| r.to_string());
        debug!(peer = %node.short(), %reason, "peer connection ended");
        if let Some(quinn::ConnectionError::ApplicationClosed(close)) = conn.close_reason() {
            if close.error_code == VarInt::from_u32(STREAM_SHUTDOWN) {
                self.paths.peer_left(node);
            }
        }
        if self.forget_conn(node, &conn) {
            let error = unreachable(node, format!("the connection ended ({reason})"));
            self.router
                .apply(|r, now| r.peer_unreachable(now, node, error));
        }
    }

    /// Forgets `conn` as `node`'s connection; false if another one had replaced it (the
    /// end of `conn` then says nothing about the node).
    fn forget_conn(&self, node: NodeId, conn: &Connection) -> bool {
        let mut conns = lock(&self.conns);
        let current = conns
            .get(&node)
            .is_some_and(|c| c.stable_id() == conn.stable_id());
        if current {
            conns.remove(&node);
        }
        current
    }

    /// Dispatches `msg` on `conn`, waiting for stream credit when a new task stream
    /// cannot be opened at once.
    async fn dispatch(self: &Arc<Self>, node: NodeId, conn: &Connection, msg: PeerMsg) {
        let Some(msg) = self.dispatch_now(node, conn, msg) else {
            return;
        };
        let (PeerMsg::Requester(open @ RequesterFrame::Open(_)), Some(task)) =
            (&msg, msg.task_id())
        else {
            return warn!(?msg, "only opening a stream waits");
        };
        match conn.open_bi().await {
            Ok((send, recv)) => self.start_task(node, task.to_string(), open, send, recv),
            Err(e) => self.open_failed(node, e),
        }
    }

    /// Dispatches `msg` on `conn` without waiting; gives it back when it opens a task
    /// and the connection has no stream credit left (the caller waits for some).
    fn dispatch_now(
        self: &Arc<Self>,
        node: NodeId,
        conn: &Connection,
        msg: PeerMsg,
    ) -> Option<PeerMsg> {
        let task = msg.task_id().map(str::to_string);
        match (msg, task) {
            (PeerMsg::Requester(open @ RequesterFrame::Open(_)), Some(task)) => {
                match conn.open_bi().now_or_never() {
                    Some(Ok((send, recv))) => self.start_task(node, task, &open, send, recv),
                    Some(Err(e)) => self.open_failed(node, e),
                    None => return Some(PeerMsg::Requester(open)),
                }
            }
            (PeerMsg::Requester(frame), Some(task)) => self.write(node, &task, &frame, false),
            (PeerMsg::Responder(frame @ ResponderFrame::Final(_)), Some(task)) => {
                self.write(node, &task, &frame, true);
            }
            (PeerMsg::Responder(frame), Some(task)) => self.write(node, &task, &frame, false),
            (PeerMsg::Cancel { .. }, Some(task)) => {
                if let Some(w) = lock(&self.streams).remove(&(node, task)) {
                    w.reset(STREAM_CANCELED);
                }
            }
            (PeerMsg::Event(frame), _) => {
                let conn = conn.clone();
                tokio::spawn(async move {
                    if let Err(e) = send_event(&conn, &frame).await {
                        debug!(error = %e, "event not delivered");
                    }
                });
            }
            (msg, None) => warn!(?msg, "peer message without a task id dropped"),
        }
        None
    }

    fn open_failed(&self, node: NodeId, e: quinn::ConnectionError) {
        let error = unreachable(node, e);
        self.router
            .apply(|r, now| r.peer_unreachable(now, node, error));
    }

    /// Requester side: a task's stream is open; its first frame goes out and its
    /// responses are read.
    fn start_task(
        self: &Arc<Self>,
        node: NodeId,
        task: String,
        open: &RequesterFrame,
        send: quinn::SendStream,
        recv: quinn::RecvStream,
    ) {
        lock(&self.streams).insert((node, task.clone()), StreamTx::new(send));
        self.write(node, &task, open, false);
        tokio::spawn(
            self.clone()
                .read_responses(node, task, FrameReader::new(recv)),
        );
    }

    fn write<T: serde::Serialize>(&self, node: NodeId, task: &str, frame: &T, last: bool) {
        let bytes = match frames::encode(frame) {
            Ok(b) => b,
            Err(e) => return warn!(error = %e, "peer frame not encodable; dropped"),
        };
        let key = (node, task.to_string());
        let mut streams = lock(&self.streams);
        if last {
            match streams.remove(&key) {
                Some(w) => w.write_last(bytes),
                None => debug!(task, "no stream for this task any more; frame dropped"),
            }
            return;
        }
        match streams.get_mut(&key) {
            Some(w) => {
                if !w.write(bytes) {
                    streams.remove(&key);
                }
            }
            None => debug!(task, "no stream for this task any more; frame dropped"),
        }
    }

    /// Requester side: the responder's frames for one task. A stream silent for
    /// [`SILENCE_CHECK`] has its peer's liveness checked.
    async fn read_responses(self: Arc<Self>, node: NodeId, task: String, mut rd: FrameReader) {
        let mut silence = SILENCE_CHECK;
        loop {
            // `FrameReader::next` keeps what it read in its buffer: safe to time out.
            let Ok(next) = tokio::time::timeout(silence, rd.next::<ResponderFrame>()).await else {
                self.check_alive(node);
                silence = SILENCE_RECHECK;
                continue;
            };
            silence = SILENCE_CHECK;
            match next {
                Ok(Some(frame)) => {
                    let msg = PeerMsg::Responder(frame);
                    self.router.apply(|r, now| r.handle_peer(now, node, msg));
                }
                Ok(None) => break,
                Err(StreamError::Reset { code }) if code == u64::from(STREAM_CANCELED) => {
                    let task_id = task.clone();
                    self.router
                        .apply(|r, now| r.handle_peer(now, node, PeerMsg::Cancel { task_id }));
                    break;
                }
                Err(e) => {
                    debug!(task, error = %e, "task stream ended");
                    break;
                }
            }
        }
        lock(&self.streams).remove(&(node, task));
    }

    /// Responder side: a stream the requester opened for one task.
    async fn serve_task_stream(
        self: Arc<Self>,
        node: NodeId,
        send: quinn::SendStream,
        recv: quinn::RecvStream,
    ) {
        let mut rd = FrameReader::new(recv);
        let open = match rd.next::<RequesterFrame>().await {
            Ok(Some(RequesterFrame::Open(env))) => env,
            Ok(None) => return pong(send),
            Ok(_) => return debug!("task stream did not start with a request"),
            Err(e) => return debug!(error = %e, "task stream failed before its request"),
        };
        let Some(task) = open.task_id.clone() else {
            return debug!("request without a task id");
        };
        lock(&self.streams).insert((node, task.clone()), StreamTx::new(send));
        let msg = PeerMsg::Requester(RequesterFrame::Open(open));
        self.router.apply(|r, now| r.handle_peer(now, node, msg));
        loop {
            match rd.next::<RequesterFrame>().await {
                Ok(Some(frame)) => {
                    let msg = PeerMsg::Requester(frame);
                    self.router.apply(|r, now| r.handle_peer(now, node, msg));
                }
                Ok(None) => return, // the requester has nothing more to say
                Err(StreamError::Reset { code }) if code == u64::from(STREAM_CANCELED) => {
                    lock(&self.streams).remove(&(node, task.clone()));
                    let task_id = task.clone();
                    return self
                        .router
                        .apply(|r, now| r.handle_peer(now, node, PeerMsg::Cancel { task_id }));
                }
                Err(e) => return debug!(task, error = %e, "task stream ended"),
            }
        }
    }

    /// One round trip to `node` over its session (dialing it if needed): an empty
    /// bidirectional stream, which the peer answers by finishing its side. Measured
    /// from opening the stream to the peer's end arriving; the dial is not counted.
    pub async fn ping_once(self: &Arc<Self>, node: NodeId) -> Result<Duration, ErrorObject> {
        let conn = self.connect(node).await?;
        let start = std::time::Instant::now();
        liveness::ping(&conn)
            .await
            .map_err(|e| unreachable(node, e))?;
        Ok(start.elapsed())
    }

    async fn serve_event_stream(self: Arc<Self>, node: NodeId, recv: quinn::RecvStream) {
        let mut rd = FrameReader::new(recv);
        while let Ok(Some(frame)) = rd.next::<OnewayFrame>().await {
            let msg = PeerMsg::Event(frame);
            self.router.apply(|r, now| r.handle_peer(now, node, msg));
        }
    }
}

/// Answers a ping (a bidirectional stream that ended before any frame) by ending ours.
fn pong(mut send: quinn::SendStream) {
    if let Err(e) = send.finish() {
        debug!(error = %e, "ping not answered");
    }
}

async fn send_event(conn: &Connection, frame: &OnewayFrame) -> Result<(), String> {
    let bytes = frames::encode(frame).map_err(|e| e.to_string())?;
    let mut send = conn.open_uni().await.map_err(|e| e.to_string())?;
    send.write_all(&bytes).await.map_err(|e| e.to_string())?;
    send.finish().map_err(|e| e.to_string())
}

fn peer_of(conn: &Connection) -> Option<NodeId> {
    let alpn = conn
        .handshake_data()?
        .downcast::<quinn::crypto::rustls::HandshakeData>()
        .ok()?
        .protocol?;
    if alpn != ALPN_PEER {
        return None;
    }
    agentmesh_tlsid::peer_node_id_quic(conn).ok()
}

/// Why a handshake with a peer could not start.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// The client config could not be built from our key.
    #[error("client config: {0}")]
    Config(#[from] agentmesh_tlsid::TlsIdError),
    /// quinn refused to start the handshake.
    #[error("cannot connect: {0}")]
    Connect(#[from] quinn::ConnectError),
}

/// Starts the QUIC handshake of a peer session with `node` at `addr` (its virtual
/// address, so the mesh socket routes it): our node certificate from `key`, `node`'s
/// pinned, ALPN [`ALPN_PEER`], the peer stream limits.
pub fn dial(
    endpoint: &Endpoint,
    key: &SecretKey,
    node: NodeId,
    addr: std::net::SocketAddr,
) -> Result<quinn::Connecting, DialError> {
    let config =
        agentmesh_tlsid::quinn_client_config(Some(key), ServerPin::Node(node), &[ALPN_PEER])?;
    Ok(endpoint.connect_with(with_stream_limits(config), addr, SERVER_NAME)?)
}

/// Sets the peer stream limits ([`MAX_STREAMS`], [`MAX_EVENT_STREAMS`]): every in-flight
/// task is a stream.
pub fn with_stream_limits(mut config: quinn::ClientConfig) -> quinn::ClientConfig {
    config.transport_config(Arc::new(transport()));
    config
}

/// The transport settings of peer sessions.
pub fn transport() -> quinn::TransportConfig {
    let mut t = agentmesh_tlsid::transport_config();
    t.max_concurrent_bidi_streams(VarInt::from_u32(MAX_STREAMS));
    t.max_concurrent_uni_streams(VarInt::from_u32(MAX_EVENT_STREAMS));
    t
}

/// The server config for peer sessions: clients must present a node certificate.
pub fn server_config(key: &SecretKey) -> Result<quinn::ServerConfig, agentmesh_tlsid::TlsIdError> {
    let mut config = agentmesh_tlsid::quinn_server_config(
        key,
        agentmesh_tlsid::ClientAuth::RequireNodeCert,
        &[ALPN_PEER],
    )?;
    config.transport_config(Arc::new(transport()));
    Ok(config)
}
