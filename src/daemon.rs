//! Starting a daemon from its configuration: node key, router, local API. Used by the
//! `agentmeshd` binary, the demo and the tests, so all run the same code.

use std::future::Future;
use std::time::Duration;

use agentmesh_proto::keyfile::{self, KeyFileError};
use agentmesh_proto::NodeId;

use crate::api::{ApiConfig, ApiServer, ServeError};
use crate::config::DaemonConfig;
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
}

/// A daemon ready to serve.
pub struct Daemon {
    node_id: NodeId,
    api: ApiServer,
}

impl Daemon {
    /// Loads (or creates) the node key and binds the local API socket.
    pub fn start(config: &DaemonConfig) -> Result<Daemon, StartError> {
        let node_key = keyfile::load_or_create(&config.key_path())?;
        let node_id = node_key.node_id();
        let router_config = RouterConfig {
            default_timeout: Duration::from_millis(config.default_request_timeout_ms.max(1)),
            ..RouterConfig::default()
        };
        let keys = FileKeyStore::new(config.state_dir.join("agents"));
        let router = Router::new(node_id, router_config, Box::new(keys));
        let mut api_config = ApiConfig::new(config.socket.clone());
        api_config.max_line_bytes = config.max_line_bytes;
        api_config.max_queued_bytes = config.max_queued_bytes;
        let api = ApiServer::bind(api_config, router)?;
        Ok(Daemon { node_id, api })
    }

    /// This daemon's node id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// Serves until `shutdown` completes.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        self.api.serve(shutdown).await;
    }
}
