//! The tokio driver of the port-mapping scheduler: performs its actions against a UPnP
//! IGD with `igd-next` (SSDP search, SOAP AddPortMapping / DeletePortMapping) and
//! publishes the external address on a `watch` channel.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use igd_next::aio::tokio::Tokio;
use igd_next::{AddAnyPortError, AddPortError, PortMappingProtocol, RemovePortError, SearchError};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use super::state::{Action, Outcome, PortMapConfig, PortMapState};

/// Errors talking to an IGD.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PortMapError {
    /// No IGD answered the SSDP search in time.
    #[error("no UPnP IGD answered within {timeout:?}")]
    NoGateway {
        /// The search timeout.
        timeout: Duration,
    },
    /// The search failed otherwise (socket error, bad description).
    #[error("UPnP IGD search failed")]
    Search {
        /// What igd-next reported.
        #[source]
        source: SearchError,
    },
    /// The gateway did not report its external address.
    #[error("UPnP IGD did not report its external IP")]
    ExternalIp {
        /// What igd-next reported.
        #[source]
        source: igd_next::GetExternalIpError,
    },
    /// The gateway reported an unusable external address.
    #[error("UPnP IGD reported an unusable external IP {ip}")]
    BadExternalIp {
        /// The address it reported.
        ip: IpAddr,
    },
    /// No local interface address routes to the gateway.
    #[error("no local address routes to the UPnP gateway")]
    NoLocalAddress {
        /// The socket error.
        #[source]
        source: std::io::Error,
    },
    /// A request to the gateway took too long.
    #[error("UPnP request {what} timed out after {timeout:?}")]
    Timeout {
        /// Which request.
        what: &'static str,
        /// The bound it exceeded.
        timeout: Duration,
    },
}

/// Settings of a [`PortMapper`].
#[derive(Debug, Clone)]
pub struct PortMapperConfig {
    /// Lease and retry timing.
    pub schedule: PortMapConfig,
    /// The local address the daemon's socket is bound to; `None` (or unspecified):
    /// search on all interfaces and map to the address that routes to the gateway.
    pub bind_ip: Option<Ipv4Addr>,
    /// How long an SSDP search waits for an IGD.
    pub search_timeout: Duration,
    /// Bound on each SOAP request (and on fetching the device description).
    pub request_timeout: Duration,
    /// The mapping's description shown by the router.
    pub description: String,
}

impl Default for PortMapperConfig {
    fn default() -> Self {
        PortMapperConfig {
            schedule: PortMapConfig::default(),
            bind_ip: None,
            search_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
            description: "agentmesh".to_owned(),
        }
    }
}

/// A discovered IGD and the local address that reaches it.
#[derive(Debug, Clone)]
pub struct Igd {
    gateway: igd_next::aio::Gateway<Tokio>,
    local_ip: IpAddr,
    external_ip: IpAddr,
}

impl Igd {
    /// Searches for an IGD (bound to `config.bind_ip`) and asks for its external IP.
    pub async fn discover(config: &PortMapperConfig) -> Result<Igd, PortMapError> {
        let bind = IpAddr::V4(config.bind_ip.unwrap_or(Ipv4Addr::UNSPECIFIED));
        let mut opts = igd_next::SearchOptions::default();
        opts.bind_addr = SocketAddr::new(bind, 0);
        opts.timeout = Some(config.search_timeout);
        opts.single_search_timeout = Some(config.search_timeout);
        let timeout = config.search_timeout;
        let gateway = bounded("search", timeout + config.request_timeout, async {
            igd_next::aio::tokio::search_gateway(opts)
                .await
                .map_err(|source| match source {
                    SearchError::NoResponseWithinTimeout => PortMapError::NoGateway { timeout },
                    source => PortMapError::Search { source },
                })
        })
        .await?;
        let local_ip = match bind {
            ip if !ip.is_unspecified() => ip,
            _ => route_to(gateway.addr).await?,
        };
        let external_ip = bounded("GetExternalIPAddress", config.request_timeout, async {
            gateway
                .get_external_ip()
                .await
                .map_err(|source| PortMapError::ExternalIp { source })
        })
        .await?;
        if external_ip.is_unspecified() || external_ip.is_loopback() {
            return Err(PortMapError::BadExternalIp { ip: external_ip });
        }
        Ok(Igd {
            gateway,
            local_ip,
            external_ip,
        })
    }

    /// The gateway's control address.
    pub fn addr(&self) -> SocketAddr {
        self.gateway.addr
    }

    /// Our LAN address that reaches the gateway (the mappings' target).
    pub fn local_ip(&self) -> IpAddr {
        self.local_ip
    }

    /// The gateway's WAN address.
    pub fn external_ip(&self) -> IpAddr {
        self.external_ip
    }
}

/// Keeps a UDP port mapped on the LAN's IGD while it runs; see the module doc.
#[derive(Debug)]
pub struct PortMapper {
    external: watch::Receiver<Option<SocketAddr>>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
    /// Bound on the final removal in [`PortMapper::shutdown`].
    shutdown_bound: Duration,
}

impl PortMapper {
    /// Starts mapping UDP `internal_port` (the daemon's socket) on the current runtime.
    pub fn spawn(internal_port: u16, config: PortMapperConfig) -> PortMapper {
        let (tx, external) = watch::channel(None);
        let (stop, stop_rx) = oneshot::channel();
        let shutdown_bound = config.search_timeout + config.request_timeout * 3;
        let state = PortMapState::new(internal_port, config.schedule.clone(), Instant::now());
        let driver = Driver {
            state,
            config,
            igd: None,
            tx,
        };
        let task = tokio::spawn(driver.run(stop_rx));
        PortMapper {
            external,
            stop,
            task,
            shutdown_bound,
        }
    }

    /// The mapped external address (`None` while unmapped): a punch candidate of
    /// kind `CandidateKind::Upnp`.
    pub fn external(&self) -> watch::Receiver<Option<SocketAddr>> {
        self.external.clone()
    }

    /// Removes the mapping from the router and stops (bounded: an outstanding request
    /// finishes first; after the bound the task is aborted).
    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        let mut task = self.task;
        if tokio::time::timeout(self.shutdown_bound, &mut task)
            .await
            .is_err()
        {
            tracing::warn!("UPnP port mapper did not stop in time; aborted");
            task.abort();
        }
    }
}

/// The task behind a [`PortMapper`].
struct Driver {
    state: PortMapState,
    config: PortMapperConfig,
    /// The gateway found by the last successful discovery.
    igd: Option<Igd>,
    tx: watch::Sender<Option<SocketAddr>>,
}

impl Driver {
    async fn run(mut self, mut stop: oneshot::Receiver<()>) {
        let mut stopping = false;
        while !self.state.is_finished() {
            if !stopping && stop_requested(&mut stop) {
                stopping = true;
                self.state.shutdown();
            }
            if let Some(action) = self.state.poll_action(Instant::now()) {
                let outcome = self.perform(action).await;
                self.state.handle_result(Instant::now(), outcome);
                self.publish();
                continue;
            }
            let Some(deadline) = self.state.poll_timeout() else {
                if stopping {
                    break;
                }
                let _ = (&mut stop).await;
                stopping = true;
                self.state.shutdown();
                continue;
            };
            tokio::select! {
                _ = tokio::time::sleep_until(deadline.into()) => {}
                _ = &mut stop, if !stopping => {
                    stopping = true;
                    self.state.shutdown();
                }
            }
        }
        self.publish();
    }

    fn publish(&self) {
        let now = self.state.external();
        self.tx.send_if_modified(|cur| {
            let changed = *cur != now;
            *cur = now;
            changed
        });
    }

    async fn perform(&mut self, action: Action) -> Outcome {
        let started = Instant::now();
        let outcome = match action {
            Action::Discover => self.discover().await,
            Action::Add {
                internal,
                external_port_hint: Some(port),
                lease,
            }
            | Action::Renew {
                internal,
                external_port: port,
                lease,
            } => self.add_port(internal, port, lease).await,
            Action::Add {
                internal,
                external_port_hint: None,
                lease,
            } => self.add_any_port(internal, lease).await,
            Action::Remove { external_port } => self.remove(external_port).await,
        };
        tracing::debug!(?action, ?outcome, elapsed = ?started.elapsed(), "UPnP action");
        outcome
    }

    async fn discover(&mut self) -> Outcome {
        match Igd::discover(&self.config).await {
            Ok(igd) => {
                let external_ip = igd.external_ip;
                tracing::debug!(gateway = %igd.addr(), local = %igd.local_ip, "found UPnP IGD");
                self.igd = Some(igd);
                Outcome::GatewayFound { external_ip }
            }
            Err(PortMapError::NoGateway { .. }) => {
                self.igd = None;
                Outcome::NoGateway
            }
            Err(e) => {
                tracing::debug!(error = %e, "UPnP discovery failed");
                self.igd = None;
                Outcome::Failed
            }
        }
    }

    async fn add_port(&self, internal: u16, external: u16, lease: Duration) -> Outcome {
        let Some(igd) = &self.igd else {
            return Outcome::Failed;
        };
        let local = SocketAddr::new(igd.local_ip, internal);
        let request = igd.gateway.add_port(
            PortMappingProtocol::UDP,
            external,
            local,
            lease_secs(lease),
            &self.config.description,
        );
        match tokio::time::timeout(self.config.request_timeout, request).await {
            Ok(Ok(())) => Outcome::Mapped {
                external_port: external,
            },
            Ok(Err(AddPortError::PortInUse | AddPortError::SamePortValuesRequired)) => {
                Outcome::PortInUse
            }
            Ok(Err(AddPortError::OnlyPermanentLeasesSupported)) => Outcome::LeaseRefused,
            Ok(Err(e)) => failed("AddPortMapping", &e),
            Err(_) => failed("AddPortMapping", &"timed out"),
        }
    }

    async fn add_any_port(&self, internal: u16, lease: Duration) -> Outcome {
        let Some(igd) = &self.igd else {
            return Outcome::Failed;
        };
        let local = SocketAddr::new(igd.local_ip, internal);
        let request = igd.gateway.add_any_port(
            PortMappingProtocol::UDP,
            local,
            lease_secs(lease),
            &self.config.description,
        );
        match tokio::time::timeout(self.config.request_timeout, request).await {
            Ok(Ok(external_port)) => Outcome::Mapped { external_port },
            Ok(Err(AddAnyPortError::OnlyPermanentLeasesSupported)) => Outcome::LeaseRefused,
            Ok(Err(e)) => failed("AddAnyPortMapping", &e),
            Err(_) => failed("AddAnyPortMapping", &"timed out"),
        }
    }

    async fn remove(&self, external: u16) -> Outcome {
        let Some(igd) = &self.igd else {
            return Outcome::Failed;
        };
        let request = igd.gateway.remove_port(PortMappingProtocol::UDP, external);
        match tokio::time::timeout(self.config.request_timeout, request).await {
            Ok(Ok(()) | Err(RemovePortError::NoSuchPortMapping)) => Outcome::Removed,
            Ok(Err(e)) => failed("DeletePortMapping", &e),
            Err(_) => failed("DeletePortMapping", &"timed out"),
        }
    }
}

/// True once the owner asked to stop (or dropped the [`PortMapper`]).
fn stop_requested(stop: &mut oneshot::Receiver<()>) -> bool {
    !matches!(stop.try_recv(), Err(oneshot::error::TryRecvError::Empty))
}

fn failed(what: &str, error: &dyn std::fmt::Display) -> Outcome {
    tracing::debug!(request = what, %error, "UPnP request failed");
    Outcome::Failed
}

/// A lease in whole seconds for SOAP (0 = permanent).
fn lease_secs(lease: Duration) -> u32 {
    u32::try_from(lease.as_secs()).unwrap_or(u32::MAX)
}

/// `fut`, or [`PortMapError::Timeout`] after `timeout`.
async fn bounded<T>(
    what: &'static str,
    timeout: Duration,
    fut: impl std::future::Future<Output = Result<T, PortMapError>>,
) -> Result<T, PortMapError> {
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| PortMapError::Timeout { what, timeout })?
}

/// The local address the kernel picks to reach `gateway` (a connected UDP socket
/// sends nothing).
async fn route_to(gateway: SocketAddr) -> Result<IpAddr, PortMapError> {
    let any = match gateway {
        SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        SocketAddr::V6(_) => SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0)),
    };
    let io = |source| PortMapError::NoLocalAddress { source };
    let sock = tokio::net::UdpSocket::bind(any).await.map_err(io)?;
    sock.connect(gateway).await.map_err(io)?;
    Ok(sock.local_addr().map_err(io)?.ip())
}
