//! The relay link's tokio driver: feeds the [`RelayLinkState`] with packets from the
//! [`MeshSocket`](crate::net::mesh_socket::MeshSocket) (through [`RelayLinkSender`]),
//! relay datagrams diverted from the daemon's socket, TLS frames and timers, and carries
//! out what it asks: UDP datagrams via [`MeshHandle::send_raw`], received packets via
//! [`MeshHandle::deliver_relayed`], TLS connections via `tls.rs`. Status is published on
//! a watch channel.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use agentmesh_proto::frame::DEFAULT_MAX_FRAME;
use agentmesh_proto::relay::StoreOutcome;
use agentmesh_proto::{NodeId, SecretKey};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info};

use super::events::{LinkEvent, LinkTransmit};
use super::state::RelayLinkState;
use super::tls::{TlsConn, TlsInput};
use super::{RelayLinkConfig, RelayLinkStatus, RelayTransport};
use crate::net::mesh_socket::{MeshHandle, RelayLink, UdpRelay};

/// Packets queued from the socket to the driver; beyond it the socket's packets are
/// dropped (QUIC sees loss and slows down).
const OUTGOING_QUEUE: usize = 1024;
/// TLS reports queued for the driver (the reader waits when it is full).
const TLS_QUEUE: usize = 1024;
/// Stored messages queued for the daemon.
const MAIL_QUEUE: usize = 64;
/// `PeerGone` notices queued for the daemon (beyond, they are dropped).
const GONE_QUEUE: usize = 256;
/// Inputs of one kind handled before looking at the others.
const BATCH: usize = 64;

/// The [`RelayLink`] given to the `MeshSocket`: hands packets to the driver without
/// blocking (a full queue drops the packet and counts it), and tells the socket the
/// relay's UDP address while the link is up over UDP (the socket then frames and
/// unwraps relayed packets itself). Cheap to clone.
#[derive(Debug, Clone)]
pub struct RelayLinkSender {
    tx: mpsc::Sender<(NodeId, Vec<u8>)>,
    dropped: Arc<AtomicU64>,
    framed: Arc<Framed>,
}

/// What the driver and the socket share about the socket's own framing.
#[derive(Debug, Default)]
struct Framed {
    /// Set by the driver while the link is authenticated over UDP.
    relay: Mutex<Option<UdpRelay>>,
    /// Packets the socket framed itself.
    sent: AtomicU64,
    /// `Recv` packets the socket unwrapped itself.
    received: AtomicU64,
    /// The link's own counts (its task's), as of its last step.
    link_sent: AtomicU64,
    /// See `link_sent`.
    link_received: AtomicU64,
}

impl Framed {
    fn relay(&self) -> MutexGuard<'_, Option<UdpRelay>> {
        self.relay.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Packets sent and received through the relay: the link's and the socket's.
    fn totals(&self) -> (u64, u64) {
        let sent = self.link_sent.load(Ordering::Relaxed) + self.sent.load(Ordering::Relaxed);
        let received =
            self.link_received.load(Ordering::Relaxed) + self.received.load(Ordering::Relaxed);
        (sent, received)
    }
}

/// How often the published status is refreshed while nothing else happens (the
/// socket's own framing does not wake the link's task).
const STATUS_REFRESH: Duration = Duration::from_secs(1);

impl RelayLink for RelayLinkSender {
    fn send(&self, peer: NodeId, packet: &[u8]) -> io::Result<()> {
        if self.tx.try_send((peer, packet.to_vec())).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    fn udp_relay(&self) -> Option<UdpRelay> {
        *self.framed.relay()
    }

    fn count_framed(&self, sent: u64, received: u64) {
        self.framed.sent.fetch_add(sent, Ordering::Relaxed);
        self.framed.received.fetch_add(received, Ordering::Relaxed);
    }
}

/// The driver, created with its sender by [`relay_link`], started by
/// [`RelayLinkDriver::spawn`].
#[derive(Debug)]
pub struct RelayLinkDriver {
    config: RelayLinkConfig,
    key: SecretKey,
    outgoing: mpsc::Receiver<(NodeId, Vec<u8>)>,
    dropped: Arc<AtomicU64>,
    framed: Arc<Framed>,
}

/// A stored message the relay delivered (sealed to this node's key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mail {
    /// Who stored it.
    pub from: NodeId,
    /// The sealed bytes (open with `agentmesh_proto::sealed::open`).
    pub sealed: Vec<u8>,
}

/// One store-and-forward request for the driver, with where its answer goes.
type StoreCmd = (NodeId, Vec<u8>, oneshot::Sender<Option<StoreOutcome>>);

/// Leaves sealed messages at the relay for offline nodes (cheap to clone).
#[derive(Debug, Clone)]
pub struct RelayStorer {
    tx: mpsc::UnboundedSender<StoreCmd>,
}

impl RelayStorer {
    /// Asks the relay to keep `sealed` (sealed to `to`'s node key) until `to` connects.
    /// `None` when the relay never answered (link down, or every try lost) or the link
    /// stopped.
    pub async fn store(&self, to: NodeId, sealed: Vec<u8>) -> Option<StoreOutcome> {
        let (tx, rx) = oneshot::channel();
        self.tx.send((to, sealed, tx)).ok()?;
        rx.await.ok().flatten()
    }
}

/// A running relay link. Dropping it stops the link.
#[derive(Debug)]
pub struct RelayLinkHandle {
    status: watch::Receiver<RelayLinkStatus>,
    poke: RelayLinkPoke,
    storer: RelayStorer,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
    mail: Option<mpsc::Receiver<Mail>>,
    gone: Option<mpsc::Receiver<NodeId>>,
    /// Cleared when the link stops, so the socket stops framing for it.
    framed: Arc<Framed>,
}

/// Tells a running link that the network changed (cheap to clone).
#[derive(Debug, Clone)]
pub struct RelayLinkPoke {
    tx: mpsc::UnboundedSender<()>,
}

impl RelayLinkPoke {
    /// The daemon's network changed: re-authenticate from the current mapping.
    pub fn network_changed(&self) {
        let _ = self.tx.send(());
    }
}

/// Creates the link for node `key`: the sender for `MeshSocket::new`, and the driver to
/// [`spawn`](RelayLinkDriver::spawn) once the socket's handle exists.
pub fn relay_link(config: RelayLinkConfig, key: SecretKey) -> (RelayLinkSender, RelayLinkDriver) {
    let (tx, outgoing) = mpsc::channel(OUTGOING_QUEUE);
    let dropped = Arc::new(AtomicU64::new(0));
    let framed = Arc::new(Framed::default());
    let sender = RelayLinkSender {
        tx,
        dropped: dropped.clone(),
        framed: framed.clone(),
    };
    let driver = RelayLinkDriver {
        config,
        key,
        outgoing,
        dropped,
        framed,
    };
    (sender, driver)
}

impl RelayLinkDriver {
    /// Starts the link on the daemon's socket `mesh`. `relay_frames` carries the relay
    /// datagrams (`Kind::Relay`) the daemon's network driver took from the socket's
    /// diverted stream, with their source addresses. Must run inside a tokio runtime.
    pub fn spawn(
        self,
        mesh: MeshHandle,
        relay_frames: mpsc::Receiver<(SocketAddr, Vec<u8>)>,
    ) -> RelayLinkHandle {
        let now = tokio::time::Instant::now().into_std();
        let state = RelayLinkState::new(self.config, self.key, now);
        let (status_tx, status) = watch::channel(snapshot(&state, 0, &self.framed));
        let (tls_tx, tls_rx) = mpsc::channel(TLS_QUEUE);
        let (mail_tx, mail) = mpsc::channel(MAIL_QUEUE);
        let (gone_tx, gone) = mpsc::channel(GONE_QUEUE);
        let (stop, stop_rx) = oneshot::channel();
        let (poke_tx, pokes) = mpsc::unbounded_channel();
        let (store_tx, stores) = mpsc::unbounded_channel();
        let driver = Driver {
            pokes,
            stores,
            store_waiters: HashMap::new(),
            state,
            mesh,
            outgoing: self.outgoing,
            relay_frames,
            tls_tx,
            tls_rx,
            tls: None,
            status: status_tx,
            mail: mail_tx,
            gone: gone_tx,
            sender_dropped: self.dropped,
            io_dropped: 0,
            framed: self.framed.clone(),
        };
        let task = tokio::spawn(driver.run(stop_rx));
        RelayLinkHandle {
            status,
            poke: RelayLinkPoke { tx: poke_tx },
            storer: RelayStorer { tx: store_tx },
            stop: Some(stop),
            task,
            mail: Some(mail),
            gone: Some(gone),
            framed: self.framed,
        }
    }
}

impl RelayLinkHandle {
    /// The link's status now (packet counts up to date; the [`watch`](Self::watch)ed
    /// value refreshes them at least every second).
    pub fn status(&self) -> RelayLinkStatus {
        let mut s = self.status.borrow().clone();
        (s.sent, s.received) = self.framed.totals();
        s
    }

    /// A handle to tell the link the network changed.
    pub fn poke(&self) -> RelayLinkPoke {
        self.poke.clone()
    }

    /// A handle to leave sealed messages at the relay.
    pub fn storer(&self) -> RelayStorer {
        self.storer.clone()
    }

    /// A receiver that sees every status change.
    pub fn watch(&self) -> watch::Receiver<RelayLinkStatus> {
        self.status.clone()
    }

    /// The stored messages the relay delivers (once; `None` afterwards).
    pub fn take_mail(&mut self) -> Option<mpsc::Receiver<Mail>> {
        self.mail.take()
    }

    /// The nodes the relay said are not connected, as it says so (once; `None`
    /// afterwards).
    pub fn take_peer_gone(&mut self) -> Option<mpsc::Receiver<NodeId>> {
        self.gone.take()
    }

    /// Stops the link (closing its TLS connection) and waits for the driver to end.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for RelayLinkHandle {
    fn drop(&mut self) {
        self.task.abort();
        *self.framed.relay() = None;
    }
}

fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

fn snapshot(state: &RelayLinkState, extra_dropped: u64, framed: &Framed) -> RelayLinkStatus {
    let c = state.counters();
    framed.link_sent.store(c.sent, Ordering::Relaxed);
    framed.link_received.store(c.received, Ordering::Relaxed);
    let (sent, received) = framed.totals();
    RelayLinkStatus {
        connected: state.is_connected(),
        transport: state.transport(),
        relay: state.relay_addr(),
        sent,
        received,
        dropped: c.dropped + extra_dropped,
        peer_gone: c.peer_gone,
        connects: c.connects,
    }
}

struct Driver {
    /// Network-changed notices from the daemon.
    pokes: mpsc::UnboundedReceiver<()>,
    /// Store-and-forward requests from the daemon.
    stores: mpsc::UnboundedReceiver<StoreCmd>,
    /// Who waits for the answer of each store.
    store_waiters: HashMap<u64, oneshot::Sender<Option<StoreOutcome>>>,
    state: RelayLinkState,
    mesh: MeshHandle,
    outgoing: mpsc::Receiver<(NodeId, Vec<u8>)>,
    relay_frames: mpsc::Receiver<(SocketAddr, Vec<u8>)>,
    tls_tx: mpsc::Sender<TlsInput>,
    tls_rx: mpsc::Receiver<TlsInput>,
    /// The TLS connection in use or being opened.
    tls: Option<TlsConn>,
    status: watch::Sender<RelayLinkStatus>,
    mail: mpsc::Sender<Mail>,
    gone: mpsc::Sender<NodeId>,
    /// Packets the sender could not queue.
    sender_dropped: Arc<AtomicU64>,
    /// Transmits that failed here (socket errors, full TLS writer).
    io_dropped: u64,
    /// The socket's own framing: the relay address is set here.
    framed: Arc<Framed>,
}

impl Driver {
    async fn run(mut self, mut stop: oneshot::Receiver<()>) {
        let mut refresh = tokio::time::interval(STATUS_REFRESH);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.flush();
            let deadline = self
                .state
                .poll_timeout()
                .map(tokio::time::Instant::from_std);
            let timer = async move {
                match deadline {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = &mut stop => break,
                Some(()) = self.pokes.recv() => self.state.network_changed(now()),
                Some((to, sealed, answer)) = self.stores.recv() => {
                    let id = self.state.store(now(), to, sealed);
                    self.store_waiters.insert(id, answer);
                }
                Some(input) = self.tls_rx.recv() => {
                    self.on_tls(input);
                    for _ in 0..BATCH {
                        let Ok(input) = self.tls_rx.try_recv() else { break };
                        self.on_tls(input);
                    }
                }
                Some((src, bytes)) = self.relay_frames.recv() => {
                    let now = now();
                    self.state.handle_udp(now, src, &bytes);
                    for _ in 0..BATCH {
                        let Ok((src, bytes)) = self.relay_frames.try_recv() else { break };
                        self.state.handle_udp(now, src, &bytes);
                    }
                }
                Some((peer, packet)) = self.outgoing.recv() => {
                    self.state.send(peer, packet);
                    for _ in 0..BATCH {
                        let Ok((peer, packet)) = self.outgoing.try_recv() else { break };
                        self.state.send(peer, packet);
                    }
                }
                _ = timer => self.state.handle_timeout(now()),
                // Publishes the socket's counts (flush at the top of the loop).
                _ = refresh.tick() => {}
            }
        }
        self.tls = None;
        *self.framed.relay() = None;
    }

    fn on_tls(&mut self, input: TlsInput) {
        let now = now();
        match input {
            TlsInput::Opened { conn, writer } => {
                if let Some(t) = self.tls.as_mut().filter(|t| t.conn == conn) {
                    t.set_writer(writer);
                }
                self.state.handle_tls_open(now, conn);
            }
            TlsInput::Frame { conn, bytes } => self.state.handle_tls_frame(now, conn, &bytes),
            TlsInput::Closed { conn } => self.state.handle_tls_closed(now, conn),
        }
    }

    /// Carries out what the state asks, then publishes the status.
    fn flush(&mut self) {
        while let Some(t) = self.state.poll_transmit() {
            self.transmit(t);
        }
        while let Some(e) = self.state.poll_event() {
            self.event(e);
        }
        let relay = (self.state.transport() == Some(RelayTransport::Udp)).then(|| UdpRelay {
            addr: self.state.relay_addr(),
            max_frame: DEFAULT_MAX_FRAME,
        });
        {
            let mut shared = self.framed.relay();
            if *shared != relay {
                *shared = relay;
            }
        }
        let extra = self.io_dropped + self.sender_dropped.load(Ordering::Relaxed);
        let now = snapshot(&self.state, extra, &self.framed);
        self.status.send_if_modified(|s| {
            let changed = *s != now;
            *s = now;
            changed
        });
    }

    fn transmit(&mut self, t: LinkTransmit) {
        match t {
            LinkTransmit::Udp { dst, bytes } => {
                if let Err(error) = self.mesh.send_raw(dst, &bytes) {
                    debug!(%error, "relay datagram not sent");
                    self.io_dropped += 1;
                }
            }
            LinkTransmit::OpenTls { conn, addr, relay } => {
                self.tls = Some(TlsConn::open(conn, addr, relay, self.tls_tx.clone()));
            }
            LinkTransmit::Tls { conn, bytes } => {
                let sent = self
                    .tls
                    .as_ref()
                    .filter(|t| t.conn == conn)
                    .is_some_and(|t| t.send(bytes));
                if !sent {
                    self.io_dropped += 1;
                }
            }
            LinkTransmit::CloseTls { conn } => {
                if self.tls.as_ref().is_some_and(|t| t.conn == conn) {
                    self.tls = None;
                }
            }
        }
    }

    fn event(&mut self, e: LinkEvent) {
        match e {
            LinkEvent::Received { from, packet } => self.mesh.deliver_relayed(from, packet),
            LinkEvent::Connected { transport } => {
                info!(tier = %transport.tier(), "relay link connected");
            }
            LinkEvent::Disconnected { transport, reason } => {
                info!(tier = %transport.tier(), ?reason, "relay link lost; reconnecting");
            }
            LinkEvent::PeerGone(node) => {
                debug!(peer = %node.short(), "relay: peer not connected");
                let _ = self.gone.try_send(node);
            }
            LinkEvent::Stored { id, outcome } => {
                if let Some(w) = self.store_waiters.remove(&id) {
                    let _ = w.send(outcome);
                }
            }
            LinkEvent::Mail { from, sealed } => {
                if self.mail.try_send(Mail { from, sealed }).is_err() {
                    debug!("relay mail dropped: nobody reads it");
                }
            }
        }
    }
}
