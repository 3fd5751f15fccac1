//! The tokio drivers around the sans-IO [`Relay`]: UDP, TCP/TLS, admin HTTP, timers, drain.
//!
//! The core sits behind one mutex; each task locks it briefly to feed input, collects the
//! core's events and wakes the writers they name (the UDP sender or a connection's task)
//! after unlocking. No IO happens under the lock.
//!
//! [`start`] binds the configured addresses; [`start_on`] runs on [`RelaySockets`] the
//! caller made (e.g. netsim's simulated `SimUdpSocket` through [`QuinnDatagram`], feature
//! `quinn`). Time is tokio's clock: the system's unless the runtime's clock is paused.

mod admin;
mod tls;
mod udp;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use agentmesh_proto::{NodeId, SecretKey};
use rand::RngCore;
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;

use crate::config::Config;
use crate::core::{ConnId, Event, Relay, TICK};
use crate::metrics::Snapshot;
use crate::store::MailStore;
pub use agentmesh_dgram::DatagramSocket;
#[cfg(feature = "quinn")]
pub use agentmesh_dgram::QuinnDatagram;

/// The store type the server runs with.
pub type BoxStore = Box<dyn MailStore + Send>;

/// Which way bytes went, for a [`Tap`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Received by the relay.
    In,
    /// Sent by the relay.
    Out,
}

/// Sees every datagram and every decrypted stream chunk the relay reads or writes (tests).
pub type Tap = Arc<dyn Fn(Direction, &[u8]) + Send + Sync>;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// A socket could not be bound.
    #[error("bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The TLS config could not be built.
    #[error("tls: {0}")]
    Tls(#[from] agentmesh_tlsid::TlsIdError),
}

/// State shared by the driver tasks.
pub(crate) struct Shared {
    /// The relay core.
    core: Mutex<Relay<BoxStore>>,
    /// Wakes the task of each open stream connection.
    writers: Mutex<HashMap<ConnId, Arc<Notify>>>,
    /// Wakes the UDP sender.
    udp_notify: Notify,
    /// Optional capture of all relay IO.
    tap: Option<Tap>,
}

impl Shared {
    /// Locks the core (a poisoned lock is recovered: the core has no invariants a panic
    /// in a driver could break halfway).
    pub(crate) fn core(&self) -> MutexGuard<'_, Relay<BoxStore>> {
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn writers(&self) -> MutexGuard<'_, HashMap<ConnId, Arc<Notify>>> {
        self.writers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the core, then wakes whoever its events name.
    pub(crate) fn with_core<R>(&self, f: impl FnOnce(&mut Relay<BoxStore>) -> R) -> R {
        let (r, events) = {
            let mut core = self.core();
            let r = f(&mut core);
            let mut events = Vec::new();
            while let Some(e) = core.poll_event() {
                events.push(e);
            }
            (r, events)
        };
        for e in events {
            match e {
                Event::UdpReady => self.udp_notify.notify_one(),
                Event::StreamReady(conn) => {
                    if let Some(n) = self.writers().get(&conn) {
                        n.notify_one();
                    }
                }
            }
        }
        r
    }

    pub(crate) fn tap(&self, dir: Direction, bytes: &[u8]) {
        if let Some(t) = &self.tap {
            t(dir, bytes);
        }
    }
}

/// Options for [`start`] beyond the config file.
#[derive(Default)]
pub struct StartOptions {
    /// Capture of all relay IO (tests).
    pub tap: Option<Tap>,
}

/// A running relay.
pub struct RelayHandle {
    /// The relay's node id.
    pub relay_id: NodeId,
    /// Bound UDP address.
    pub udp_addr: Option<SocketAddr>,
    /// Bound TLS address.
    pub tls_addr: Option<SocketAddr>,
    /// Bound admin address.
    pub admin_addr: Option<SocketAddr>,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

/// The sockets [`start_on`] runs on; the configuration's addresses are then not bound.
#[derive(Debug, Default)]
pub struct RelaySockets {
    /// The UDP socket, if any.
    pub udp: Option<Arc<dyn DatagramSocket>>,
    /// The TCP/TLS listener, if any.
    pub tls: Option<tokio::net::TcpListener>,
    /// The admin HTTP listener, if any (keep it on loopback).
    pub admin: Option<tokio::net::TcpListener>,
}

/// Now on tokio's clock (the system clock unless paused).
pub(crate) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

fn unix_ms() -> u64 {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Binds the configured sockets and starts serving.
pub async fn start(
    cfg: &Config,
    key: SecretKey,
    store: BoxStore,
    opts: StartOptions,
) -> Result<RelayHandle, ServerError> {
    let udp = match cfg.udp_listen {
        Some(addr) => Some(udp::bind(addr)?),
        None => None,
    };
    let tls = match cfg.tls_listen {
        Some(addr) => Some(bind_tcp(addr).await?),
        None => None,
    };
    let admin = match cfg.admin_listen {
        Some(addr) => Some(bind_tcp(addr).await?),
        None => None,
    };
    serve(cfg, key, store, opts, udp, tls, admin)
}

async fn bind_tcp(addr: SocketAddr) -> Result<tokio::net::TcpListener, ServerError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })
}

/// Starts serving on `sockets` instead of binding `cfg`'s addresses (`udp_listen`,
/// `tls_listen` and `admin_listen` are ignored). Must be called inside a tokio runtime;
/// a paused clock works.
pub async fn start_on(
    cfg: &Config,
    key: SecretKey,
    store: BoxStore,
    opts: StartOptions,
    sockets: RelaySockets,
) -> Result<RelayHandle, ServerError> {
    let udp = sockets.udp.map(udp::UdpIo::Dyn);
    serve(cfg, key, store, opts, udp, sockets.tls, sockets.admin)
}

/// Starts the tasks on the given sockets.
fn serve(
    cfg: &Config,
    key: SecretKey,
    store: BoxStore,
    opts: StartOptions,
    udp: Option<udp::UdpIo>,
    tls: Option<tokio::net::TcpListener>,
    admin: Option<tokio::net::TcpListener>,
) -> Result<RelayHandle, ServerError> {
    let mut seed = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut seed);
    let relay_id = key.node_id();
    let core = Relay::new(relay_id, cfg.limits.clone(), store, seed, now(), unix_ms());
    let shared = Arc::new(Shared {
        core: Mutex::new(core),
        writers: Mutex::new(HashMap::new()),
        udp_notify: Notify::new(),
        tap: opts.tap,
    });
    let (shutdown, rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
    let udp_addr = match udp {
        Some(sock) => {
            let addr = cfg.udp_listen.unwrap_or(unspecified);
            Some(udp::spawn(
                &mut tasks,
                shared.clone(),
                sock,
                addr,
                rx.clone(),
            )?)
        }
        None => None,
    };
    let tls_addr = match tls {
        Some(l) => {
            let addr = cfg.tls_listen.unwrap_or(unspecified);
            Some(tls::spawn(
                &mut tasks,
                shared.clone(),
                &key,
                l,
                addr,
                rx.clone(),
            )?)
        }
        None => None,
    };
    let admin_addr = match admin {
        Some(l) => {
            let addr = cfg.admin_listen.unwrap_or(unspecified);
            Some(admin::spawn(
                &mut tasks,
                shared.clone(),
                l,
                addr,
                rx.clone(),
            )?)
        }
        None => None,
    };
    tasks.spawn(ticker(shared.clone(), rx));
    Ok(RelayHandle {
        relay_id,
        udp_addr,
        tls_addr,
        admin_addr,
        shared,
        shutdown,
        tasks,
    })
}

async fn ticker(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            _ = tick.tick() => shared.with_core(|c| c.handle_timeout(now())),
            _ = stop.changed() => return,
        }
    }
}

impl RelayHandle {
    /// Counters and gauges now.
    pub fn snapshot(&self) -> Snapshot {
        self.shared.core().snapshot()
    }

    /// Graceful drain: tell clients, wait (up to `timeout`) for queues to flush and stream
    /// clients to leave, then stop.
    pub async fn drain(mut self, timeout: Duration) {
        self.shared.with_core(|c| c.begin_drain());
        let deadline = now() + timeout;
        while now() < deadline {
            let done = {
                let c = self.shared.core();
                c.queues_empty() && c.stream_links() == 0
            };
            if done {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.stop().await;
    }

    /// Stops at once (connections are dropped, mail stays stored).
    pub async fn stop(&mut self) {
        let _ = self.shutdown.send(true);
        let deadline = tokio::time::sleep(Duration::from_secs(2));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                next = self.tasks.join_next() => if next.is_none() { break },
                _ = &mut deadline => { self.tasks.abort_all(); break }
            }
        }
        while self.tasks.join_next().await.is_some() {}
    }
}
