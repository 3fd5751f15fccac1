//! Starting a daemon from its configuration: node key, router, local API and, when a
//! rendezvous is configured, the mesh network. Used by the `agentmeshd` binary, the
//! demo and the tests, so all run the same code.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use agentmesh_proto::keyfile::{self, KeyFileError};
use agentmesh_proto::{NodeId, SecretKey};
use quinn::{AsyncUdpSocket, TokioRuntime};
use tracing::{info, warn};

use crate::api::{ApiConfig, ApiServer, RouterHandle, ServeError};
use crate::config::DaemonConfig;
use crate::net::admin;
use crate::net::mesh_socket::{DoorBinder, UdpDoors};
use crate::net::metrics::{NetMetrics, Page};
use crate::net::node::{MeshConfig, MeshNode, NetError};
use crate::net::relay_link::RelayLinkConfig;
use crate::net::rendezvous_link::RendezvousConfig;
use crate::net::resolve::{resolve, ResolveError};
use crate::router::{FileKeyStore, Router, RouterConfig};

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The node key could not be loaded or created.
    #[error(transparent)]
    Key(#[from] KeyFileError),
    /// The local API could not start.
    #[error(transparent)]
    Api(#[from] ServeError),
    /// A configured address does not resolve.
    #[error("config: {0}")]
    Resolve(#[from] ResolveError),
    /// The UDP socket could not be bound.
    #[error("cannot bind the UDP socket {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The network could not start.
    #[error(transparent)]
    Net(#[from] NetError),
    /// The admin address is not `ip:port`.
    #[error("config: admin address {addr:?} is not ip:port: {source}")]
    AdminAddr {
        /// The configured text.
        addr: String,
        /// The cause.
        #[source]
        source: std::net::AddrParseError,
    },
}

/// The network a daemon runs on: a socket and the runtime that drives it (a real UDP
/// socket with tokio, or a `netsim` host).
pub struct NetBinding {
    /// The daemon's one UDP socket.
    pub udp: Arc<dyn AsyncUdpSocket>,
    /// quinn's runtime for it.
    pub runtime: Arc<dyn quinn::Runtime>,
    /// Opens the extra sockets ("doors") of many-port probing next to `udp` (none: the
    /// daemon never takes the hard side of it).
    pub doors: Option<Arc<dyn DoorBinder>>,
    /// Rendezvous, relay and STUN, resolved.
    pub mesh: MeshConfig,
}

/// A daemon ready to serve.
pub struct Daemon {
    node_id: NodeId,
    key: SecretKey,
    config: DaemonConfig,
    api: ApiServer,
    /// The bound admin (metrics) listener, if enabled and its port was free.
    admin: Option<std::net::TcpListener>,
}

impl Daemon {
    /// Loads (or creates) the node key and binds the local API socket; the router works
    /// across hosts when a rendezvous is configured.
    pub fn start(config: &DaemonConfig) -> Result<Daemon, StartError> {
        Self::start_inner(config, config.rendezvous.is_some())
    }

    /// Like [`Daemon::start`], for a daemon whose mesh is given to
    /// [`Daemon::run_on`] rather than configured (simulations).
    pub fn start_with_mesh(config: &DaemonConfig) -> Result<Daemon, StartError> {
        Self::start_inner(config, true)
    }

    fn start_inner(config: &DaemonConfig, mesh: bool) -> Result<Daemon, StartError> {
        let node_key = keyfile::load_or_create(&config.key_path())?;
        let node_id = node_key.node_id();
        let router_config = RouterConfig {
            default_timeout: Duration::from_millis(config.default_request_timeout_ms.max(1)),
            mesh,
            ..RouterConfig::default()
        };
        let keys = FileKeyStore::new(config.state_dir.join("agents"));
        let router = Router::new(node_id, router_config, Box::new(keys));
        let mut api_config = ApiConfig::new(config.socket.clone());
        api_config.max_line_bytes = config.max_line_bytes;
        api_config.max_queued_bytes = config.max_queued_bytes;
        let api = ApiServer::bind(api_config, router)?;
        let admin = bind_admin(config.admin.as_deref())?;
        Ok(Daemon {
            node_id,
            key: node_key,
            config: config.clone(),
            api,
            admin,
        })
    }

    /// Where the admin listener (`GET /metrics`) is bound, if it runs.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// This daemon's node id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// Serves until `shutdown` completes: the local API and, when a rendezvous is
    /// configured, the mesh on a real UDP socket bound to `listen`.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), StartError> {
        let binding = match self.config.rendezvous {
            Some(_) => Some(self.real_binding().await?),
            None => None,
        };
        self.run_on(binding, shutdown).await
    }

    /// Serves until `shutdown` completes, the mesh (if any) on `binding`.
    pub async fn run_on(
        self,
        binding: Option<NetBinding>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), StartError> {
        // Without a mesh the router produces no network outputs; the receiver is
        // dropped and the handle only reads the router (metrics).
        let (router, outputs) = self.api.attach_network();
        let node = match binding {
            Some(b) => {
                let node = MeshNode::start(
                    b.mesh,
                    self.key.clone(),
                    router.clone(),
                    outputs,
                    b.udp,
                    b.runtime,
                    b.doors,
                )?;
                info!(node = %self.node_id.short(), "mesh network started");
                Some(node)
            }
            None => None,
        };
        let admin = match self.admin {
            Some(l) => Some(spawn_admin(
                l,
                router,
                node.as_ref().map(MeshNode::metrics),
            )?),
            None => None,
        };
        self.api.serve(shutdown).await;
        if let Some(a) = admin {
            a.abort();
        }
        if let Some(node) = node {
            node.shutdown().await;
        }
        Ok(())
    }

    async fn real_binding(&self) -> Result<NetBinding, StartError> {
        let listen = resolve(&self.config.listen, true).await?;
        let bind_err = |source| StartError::Bind {
            addr: listen,
            source,
        };
        let std_sock = std::net::UdpSocket::bind(listen).map_err(bind_err)?;
        std_sock.set_nonblocking(true).map_err(bind_err)?;
        let udp = quinn::Runtime::wrap_udp_socket(&TokioRuntime, std_sock).map_err(bind_err)?;
        let doors: Arc<dyn DoorBinder> =
            Arc::new(UdpDoors::new(listen.ip(), Arc::new(TokioRuntime)));
        Ok(NetBinding {
            udp,
            runtime: Arc::new(TokioRuntime),
            doors: Some(doors),
            mesh: mesh_config(&self.config, listen.is_ipv4()).await?,
        })
    }
}

/// Binds the admin listener; a taken port is logged and leaves the daemon without one.
fn bind_admin(addr: Option<&str>) -> Result<Option<std::net::TcpListener>, StartError> {
    let Some(text) = addr.map(str::trim).filter(|a| !a.is_empty()) else {
        return Ok(None);
    };
    let addr: SocketAddr = text.parse().map_err(|source| StartError::AdminAddr {
        addr: text.to_string(),
        source,
    })?;
    if !addr.ip().is_loopback() {
        warn!(%addr, "the admin listener is not on loopback: metrics are readable from the network");
    }
    let bound = std::net::TcpListener::bind(addr).and_then(|l| {
        l.set_nonblocking(true)?;
        Ok(l)
    });
    match bound {
        Ok(l) => {
            info!(addr = %l.local_addr().unwrap_or(addr), "admin listener (GET /metrics)");
            Ok(Some(l))
        }
        Err(e) => {
            warn!(%addr, error = %e, "admin listener not started");
            Ok(None)
        }
    }
}

/// Serves `GET /metrics` from the router's counts and, with a mesh, the network's.
fn spawn_admin(
    listener: std::net::TcpListener,
    router: RouterHandle,
    net: Option<NetMetrics>,
) -> Result<tokio::task::JoinHandle<()>, StartError> {
    let addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        source,
    })?;
    let listener = tokio::net::TcpListener::from_std(listener)
        .map_err(|source| StartError::Bind { addr, source })?;
    let page = Arc::new(move || {
        let mut page = Page::default();
        page.router(&router.read(|r| r.stats()));
        if let Some(net) = &net {
            page.net(net);
        }
        page.finish()
    });
    Ok(tokio::spawn(admin::serve(listener, page)))
}

/// The network part of the configuration, names resolved.
pub async fn mesh_config(config: &DaemonConfig, v4: bool) -> Result<MeshConfig, StartError> {
    let mut mesh = MeshConfig {
        upnp: config.upnp,
        ..MeshConfig::default()
    };
    if let Some(rv) = &config.rendezvous {
        let tcp_addr = match &rv.tcp {
            Some(t) => Some(resolve(t, v4).await?),
            None => None,
        };
        mesh.rendezvous = Some(RendezvousConfig {
            addr: resolve(&rv.addr, v4).await?,
            tcp_addr,
            node: rv.node_id,
            tenant: rv.tenant.clone(),
            token: rv.token.clone(),
        });
    }
    if let Some(relay) = &config.relay {
        let tls = match &relay.tls {
            Some(t) => Some(resolve(t, v4).await?),
            None => None,
        };
        mesh.relay = Some(RelayLinkConfig::new(
            relay.node_id,
            resolve(&relay.udp, v4).await?,
            tls,
        ));
    }
    for s in &config.stun_servers {
        mesh.stun_servers.push(resolve(s, v4).await?);
    }
    Ok(mesh)
}
