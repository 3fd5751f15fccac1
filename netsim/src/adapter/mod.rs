//! The tokio adapter: real async code (quinn, a daemon) runs on the simulator.
//!
//! A [`SimNet`] is a shared handle on one [`Sim`]: [`SimNet::bind`] gives a
//! [`SimUdpSocket`] (a `quinn::AsyncUdpSocket`, plus `send_to` / `recv_from` for other
//! code), [`SimRuntime`] is a `quinn::Runtime` whose clock is tokio's, and
//! [`SimNet::endpoint`] puts a quinn endpoint on a simulated host. A driver task moves the
//! simulator's clock along with tokio's and hands delivered datagrams to the sockets.
//!
//! Run it on a tokio runtime with the clock paused (`#[tokio::test(start_paused = true)]`,
//! or `tokio::time::pause()` on a current-thread runtime): tokio then jumps straight to the
//! next timer or packet whenever every task waits, so a QUIC handshake over 100 ms links
//! takes no wall-clock time. With a running clock it works too, in real time.
//!
//! Simulated time `t` is the tokio instant `base + t`, `base` being the moment the
//! `SimNet` was made; build the topology before (or through [`SimNet::with`]).

mod runtime;
mod socket;

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;

use bytes::Bytes;
use indexmap::IndexMap;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::sim::{Datagram, HostId, Output, Sim};
use crate::time::SimTime;

pub use runtime::SimRuntime;
pub use socket::SimUdpSocket;

/// Datagrams a socket holds before dropping new ones (like a full receive buffer).
const SOCKET_QUEUE: usize = 1024;
/// First port handed out for `bind(host, 0)`.
const EPHEMERAL_START: u16 = 49_152;

/// Errors binding a simulated socket.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BindError {
    /// No such host (or it has no interface).
    #[error("unknown host {0}")]
    UnknownHost(HostId),
    /// The port is taken on that host.
    #[error("port {port} in use on {host}")]
    PortInUse {
        /// The host.
        host: HostId,
        /// The port.
        port: u16,
    },
    /// No ephemeral port left.
    #[error("no free port on {0}")]
    NoFreePort(HostId),
}

impl From<BindError> for io::Error {
    fn from(e: BindError) -> io::Error {
        let kind = match e {
            BindError::PortInUse { .. } => io::ErrorKind::AddrInUse,
            _ => io::ErrorKind::AddrNotAvailable,
        };
        io::Error::new(kind, e)
    }
}

#[derive(Debug, Default)]
struct Slot {
    queue: VecDeque<Datagram>,
    waker: Option<Waker>,
}

#[derive(Debug)]
struct State {
    sim: Sim,
    sockets: IndexMap<(HostId, u16), Slot>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Wakes the driver when something was scheduled.
    notify: Notify,
    base: Instant,
}

/// A shared handle on a simulator driven in tokio's (virtual) time. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SimNet {
    shared: Arc<Shared>,
}

impl SimNet {
    /// Wraps `sim` and spawns its driver task. Must be called inside a tokio runtime; the
    /// simulator's current time becomes tokio's now.
    pub fn new(sim: Sim) -> SimNet {
        let base = Instant::now() - sim.now().since_start();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                sim,
                sockets: IndexMap::new(),
            }),
            notify: Notify::new(),
            base,
        });
        tokio::spawn(drive(Arc::downgrade(&shared)));
        SimNet { shared }
    }

    /// Runs `f` on the simulator, brought up to now first (topology, faults, mapping
    /// tables, trace, raw `send`s from a host).
    pub fn with<R>(&self, f: impl FnOnce(&mut Sim) -> R) -> R {
        let r = {
            let mut st = self.lock_now();
            let r = f(&mut st.sim);
            st.dispatch();
            r
        };
        self.shared.notify.notify_one();
        r
    }

    /// The current simulated time.
    pub fn now(&self) -> SimTime {
        self.shared.sim_time(Instant::now())
    }

    /// A quinn runtime on this net's clock.
    pub fn runtime(&self) -> Arc<SimRuntime> {
        Arc::new(SimRuntime)
    }

    /// Binds `port` (0: an ephemeral one) on `host`'s first interface address.
    pub fn bind(&self, host: HostId, port: u16) -> Result<SimUdpSocket, BindError> {
        let mut st = self.lock_now();
        let ip = st.sim.host_ip(host).ok_or(BindError::UnknownHost(host))?;
        let port = match port {
            0 => (EPHEMERAL_START..=u16::MAX)
                .find(|p| !st.sockets.contains_key(&(host, *p)))
                .ok_or(BindError::NoFreePort(host))?,
            p if st.sockets.contains_key(&(host, p)) => {
                return Err(BindError::PortInUse { host, port: p })
            }
            p => p,
        };
        st.sockets.insert((host, port), Slot::default());
        Ok(SimUdpSocket::new(
            self.clone(),
            host,
            SocketAddr::from((ip, port)),
        ))
    }

    /// A quinn endpoint on `host:port` (0: ephemeral), a server too if `server` is given.
    pub fn endpoint(
        &self,
        host: HostId,
        port: u16,
        server: Option<quinn::ServerConfig>,
    ) -> io::Result<quinn::Endpoint> {
        let socket = self.bind(host, port)?;
        quinn::Endpoint::new_with_abstract_socket(
            quinn::EndpointConfig::default(),
            server,
            Arc::new(socket),
            self.runtime(),
        )
    }

    fn lock_now(&self) -> MutexGuard<'_, State> {
        let now = self.now();
        let mut st = self.shared.lock();
        if now > st.sim.now() {
            st.sim.run_until(now);
            st.dispatch();
        }
        st
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.lock()
    }

    /// Sends from a bound socket now; the network may still lose it.
    fn send(&self, host: HostId, port: u16, to: SocketAddr, data: Bytes) -> io::Result<()> {
        let r = {
            let mut st = self.lock_now();
            st.sim.send(host, port, to, data)
        };
        self.shared.notify.notify_one();
        r.map_err(|e| io::Error::new(io::ErrorKind::NetworkUnreachable, e))
    }

    fn unbind(&self, host: HostId, port: u16) {
        self.lock().sockets.shift_remove(&(host, port));
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn sim_time(&self, t: Instant) -> SimTime {
        let d = t.saturating_duration_since(self.base);
        SimTime::from_nanos(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    }
}

impl State {
    /// Hands delivered datagrams to their sockets (unbound ports drop them).
    fn dispatch(&mut self) {
        while let Some(out) = self.sim.poll_output() {
            let Output::Datagram(d) = out else { continue };
            let Some(slot) = self.sockets.get_mut(&(d.host, d.local.port())) else {
                tracing::trace!(host = %d.host, port = d.local.port(), "no socket bound");
                continue;
            };
            if slot.queue.len() < SOCKET_QUEUE {
                slot.queue.push_back(d);
            }
            if let Some(w) = slot.waker.take() {
                w.wake();
            }
        }
    }
}

/// The driver: runs the simulator up to tokio's now, then sleeps until the next event or
/// until a send schedules one. Stops once no `SimNet` handle is left (checked each round).
async fn drive(shared: std::sync::Weak<Shared>) {
    loop {
        let Some(sh) = shared.upgrade() else { return };
        if Arc::strong_count(&sh) == 1 {
            return;
        }
        let next = {
            let now = sh.sim_time(Instant::now());
            let mut st = sh.lock();
            st.sim.run_until(now);
            st.dispatch();
            st.sim.next_event_time()
        };
        let notified = sh.notify.notified();
        match next.map(|t| sh.base + t.since_start()) {
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = notified => {}
                }
            }
            None => notified.await,
        }
    }
}
