//! The tokio driver: sockets (QUIC + STUN on one UDP socket, a second STUN socket,
//! TCP/TLS, HTTP admin), the timer, the store writer, and graceful shutdown around the
//! sans-IO [`crate::core::Server`].
//!
//! [`start`] binds the configured addresses; [`start_on`] runs on [`Sockets`] the caller
//! made (e.g. netsim's simulated `SimUdpSocket` and `SimRuntime`, so the service runs in
//! one process with simulated daemons). Time is tokio's clock, which is the system's
//! unless the runtime's clock is paused (virtual time in tests and simulations).

mod admin;
mod listen;
mod session;
mod udp;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use agentmesh_proto::{NodeId, SecretKey};
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::core::{ConnId, Output, Server, StoreOp};
use crate::store::{Store, StoreError};
pub use agentmesh_dgram::{DatagramSocket, QuinnDatagram};
use session::ConnCmd;

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// A socket could not be bound or configured.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// The TLS configuration could not be built.
    #[error("tls: {0}")]
    Tls(#[from] agentmesh_tlsid::TlsIdError),
    /// The store could not be opened or read.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The configuration is inconsistent.
    #[error("config: {0}")]
    Config(#[from] crate::config::ConfigError),
}

/// Transport counters kept by the driver.
#[derive(Debug, Default)]
pub(crate) struct DriverCounters {
    pub(crate) stun_answered: Arc<AtomicU64>,
    pub(crate) quic_sessions: AtomicU64,
    pub(crate) tcp_sessions: AtomicU64,
    pub(crate) slow_consumers: AtomicU64,
    pub(crate) store_errors: Arc<AtomicU64>,
}

/// State shared by the driver's tasks.
pub(crate) struct Shared {
    core: Mutex<Server>,
    conns: Mutex<HashMap<ConnId, mpsc::Sender<ConnCmd>>>,
    store_tx: mpsc::UnboundedSender<Option<Vec<StoreOp>>>,
    timer: Notify,
    next_conn: AtomicU64,
    pub(crate) counters: DriverCounters,
    pub(crate) started: Instant,
    pub(crate) max_frame: usize,
    pub(crate) log_peer_addresses: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    pub(crate) fn with_core<T>(&self, f: impl FnOnce(&mut Server) -> T) -> T {
        f(&mut lock(&self.core))
    }

    pub(crate) fn new_conn_id(&self) -> ConnId {
        ConnId(self.next_conn.fetch_add(1, Ordering::Relaxed))
    }

    pub(crate) fn register_conn(&self, conn: ConnId, tx: mpsc::Sender<ConnCmd>) {
        lock(&self.conns).insert(conn, tx);
    }

    pub(crate) fn unregister_conn(&self, conn: ConnId) {
        lock(&self.conns).remove(&conn);
    }

    pub(crate) fn kick_timer(&self) {
        self.timer.notify_one();
    }

    /// Routes the core's outputs: messages to sessions, changes to the store.
    pub(crate) fn dispatch(&self, outs: Vec<Output>) {
        if outs.is_empty() {
            return;
        }
        let mut ops = Vec::new();
        {
            let conns = lock(&self.conns);
            for out in outs {
                match out {
                    Output::Send { conn, msg } => {
                        self.send(&conns, conn, ConnCmd::Send(Box::new(msg)))
                    }
                    Output::Close { conn, reason } => {
                        tracing::debug!(conn = conn.0, ?reason, "closing session");
                        self.send(&conns, conn, ConnCmd::Close);
                    }
                    Output::Persist(op) => ops.push(op),
                }
            }
        }
        if !ops.is_empty() {
            let _ = self.store_tx.send(Some(ops));
        }
        self.kick_timer();
    }

    fn send(&self, conns: &HashMap<ConnId, mpsc::Sender<ConnCmd>>, conn: ConnId, cmd: ConnCmd) {
        let Some(tx) = conns.get(&conn) else { return };
        if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(cmd) {
            // The peer does not read: drop it rather than buffer without bound.
            self.counters.slow_consumers.fetch_add(1, Ordering::Relaxed);
            let tx = tx.clone();
            tokio::spawn(async move {
                let _ = tx.send(ConnCmd::Close).await;
            });
        }
    }
}

/// A running service.
pub struct Running {
    /// The rendezvous node id (daemons pin it).
    pub id: NodeId,
    /// The QUIC + STUN UDP address.
    pub udp_addr: SocketAddr,
    /// The TCP/TLS address, if enabled.
    pub tcp_addr: Option<SocketAddr>,
    /// The second STUN address, if enabled.
    pub stun_alt_addr: Option<SocketAddr>,
    /// The HTTP admin address (`0.0.0.0:0` when [`start_on`] was given no admin listener).
    pub admin_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    endpoint: quinn::Endpoint,
    store_thread: Option<std::thread::JoinHandle<()>>,
    shared: Arc<Shared>,
}

/// The sockets [`start_on`] runs on; the configuration's addresses are then not bound.
pub struct Sockets {
    /// QUIC and the STUN responder (one socket, so STUN reports the mapping QUIC uses).
    pub udp: Arc<dyn quinn::AsyncUdpSocket>,
    /// quinn's runtime for `udp` (`quinn::TokioRuntime` on real sockets).
    pub runtime: Arc<dyn quinn::Runtime>,
    /// The second STUN address (the other observer), if any.
    pub stun_alt: Option<Arc<dyn DatagramSocket>>,
    /// The TCP/TLS listener, if any.
    pub tcp: Option<tokio::net::TcpListener>,
    /// The HTTP admin listener, if any.
    pub admin: Option<tokio::net::TcpListener>,
}

impl std::fmt::Debug for Sockets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sockets")
            .field("udp", &self.udp.local_addr().ok())
            .field("stun_alt", &self.stun_alt)
            .field("tcp", &self.tcp)
            .field("admin", &self.admin)
            .finish_non_exhaustive()
    }
}

/// Now on tokio's clock (the system clock unless paused).
pub(crate) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Builds the core from the configuration and what the store holds.
fn build_core(cfg: &Config, key: SecretKey, store: &mut Store) -> Result<Server, ServeError> {
    let now = now();
    let seed = rand::random::<u64>();
    let mut core = Server::new(cfg.core(), key, now, unix_ms_now(), seed);
    store.save_tenants(&cfg.tenant_configs()?)?;
    for t in store.load_tenants()? {
        core.add_tenant(t);
    }
    for t in cfg.tenant_configs()? {
        core.add_tenant(t);
    }
    for n in store.load_nodes()? {
        core.restore_node(now, n);
    }
    let agents = store.load_agents()?;
    let total = agents.len();
    let restored = agents
        .into_iter()
        .filter(|a| core.restore_agent(now, a.clone()))
        .count();
    tracing::info!(
        restored,
        skipped = total - restored,
        "agents restored from the store"
    );
    Ok(core)
}

/// Applies store batches on a plain thread until told to stop (`None`).
fn store_thread(
    mut store: Store,
    mut rx: mpsc::UnboundedReceiver<Option<Vec<StoreOp>>>,
    errors: Arc<AtomicU64>,
) {
    let mut stop = false;
    while let Some(Some(mut ops)) = rx.blocking_recv() {
        while let Ok(more) = rx.try_recv() {
            match more {
                Some(more) => ops.extend(more),
                None => stop = true,
            }
        }
        if let Err(e) = store.apply(&ops) {
            errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, "store write failed");
        }
        if stop {
            break;
        }
    }
}

/// Starts the service with `key` as the rendezvous identity, on the configured addresses.
pub async fn start(cfg: Config, key: SecretKey) -> Result<Running, ServeError> {
    let (shared, store_thread) = prepare(&cfg, &key)?;
    let sockets = listen::bind(&cfg).await?;
    launch(cfg, key, shared, store_thread, sockets)
}

/// Starts the service on `sockets` instead of binding `cfg`'s addresses (`listen`,
/// `tcp_listen`, `stun_alt` and `admin` are ignored; `stun_alt_public` still overrides the
/// advertised second observer). The clock is tokio's: paused clocks work.
pub async fn start_on(
    cfg: Config,
    key: SecretKey,
    sockets: Sockets,
) -> Result<Running, ServeError> {
    let (shared, store_thread) = prepare(&cfg, &key)?;
    launch(cfg, key, shared, store_thread, sockets)
}

/// Opens the store, builds the core and starts the store writer.
fn prepare(
    cfg: &Config,
    key: &SecretKey,
) -> Result<(Arc<Shared>, std::thread::JoinHandle<()>), ServeError> {
    agentmesh_tlsid::install_default_provider();
    let mut store = Store::open(&cfg.database)?;
    let core = build_core(cfg, key.clone(), &mut store)?;
    let (store_tx, store_rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        core: Mutex::new(core),
        conns: Mutex::new(HashMap::new()),
        store_tx,
        timer: Notify::new(),
        next_conn: AtomicU64::new(1),
        counters: DriverCounters::default(),
        started: now(),
        max_frame: cfg.max_frame,
        log_peer_addresses: cfg.log_peer_addresses,
    });
    let errors = shared.counters.store_errors.clone();
    let store_thread = std::thread::Builder::new()
        .name("rv-store".into())
        .spawn(move || store_thread(store, store_rx, errors))
        .map_err(|source| ServeError::Bind {
            addr: cfg.listen,
            source,
        })?;
    Ok((shared, store_thread))
}

/// Spawns the loops on `sockets`.
fn launch(
    cfg: Config,
    key: SecretKey,
    shared: Arc<Shared>,
    store_thread: std::thread::JoinHandle<()>,
    sockets: Sockets,
) -> Result<Running, ServeError> {
    let (shutdown, _) = watch::channel(false);
    let mut running = listen::serve(&cfg, &key, shared, shutdown, sockets)?;
    running.store_thread = Some(store_thread);
    tracing::info!(id = %running.id, udp = %running.udp_addr, "rendezvous started");
    Ok(running)
}

impl Running {
    /// Stops accepting, closes every session, flushes the store and waits for all tasks.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        self.endpoint.close(0u32.into(), b"shutdown");
        for t in self.tasks.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
        // Sessions end on the shutdown signal; give them a moment to say goodbye.
        for _ in 0..300 {
            if lock(&self.shared.conns).is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = self.shared.store_tx.send(None);
        if let Some(t) = self.store_thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        tracing::info!("rendezvous stopped");
    }

    /// The Prometheus metrics text (the same as `GET /metrics`).
    pub fn metrics_text(&self) -> String {
        admin::metrics_text(&self.shared)
    }
}
