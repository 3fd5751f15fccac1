//! The relay's TOML configuration file (`dist/relay.example.toml` documents every key).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::limits::Limits;

/// Why the configuration could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for this config.
    #[error("config {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: Box<toml::de::Error>,
    },
    /// The admin endpoint must listen on loopback only.
    #[error("admin_listen {addr} is not a loopback address")]
    AdminNotLoopback {
        /// The address.
        addr: SocketAddr,
    },
}

/// Relay configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The relay's node key (created 0600 if absent).
    pub key_file: PathBuf,
    /// SQLite file for store-and-forward mail; absent = in memory (lost on restart).
    pub store_path: Option<PathBuf>,
    /// UDP listen address; absent = no UDP.
    pub udp_listen: Option<SocketAddr>,
    /// TCP/TLS listen address; absent = no TLS.
    pub tls_listen: Option<SocketAddr>,
    /// Admin HTTP (`/metrics`, `/status`) address, loopback only; absent = none.
    pub admin_listen: Option<SocketAddr>,
    /// On SIGTERM, how long to wait for clients to leave and queues to flush.
    pub drain_timeout_secs: u64,
    /// Resource limits.
    pub limits: Limits,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            key_file: PathBuf::from("relay.key"),
            store_path: None,
            udp_listen: Some(SocketAddr::from(([0, 0, 0, 0], 3479))),
            tls_listen: Some(SocketAddr::from(([0, 0, 0, 0], 4443))),
            admin_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9479))),
            drain_timeout_secs: 10,
            limits: Limits::default(),
        }
    }
}

impl Config {
    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { source, .. } => ConfigError::Parse {
                path: path.to_path_buf(),
                source,
            },
            other => other,
        })
    }

    /// Parses and checks config text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::new(),
            source: Box::new(e),
        })?;
        if let Some(addr) = cfg.admin_listen.filter(|a| !a.ip().is_loopback()) {
            return Err(ConfigError::AdminNotLoopback { addr });
        }
        Ok(cfg)
    }

    /// `drain_timeout_secs` as a duration.
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_secs(self.drain_timeout_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses() {
        let text = include_str!("../../../dist/relay.example.toml");
        let cfg = Config::parse(text).unwrap();
        assert_eq!(cfg.tls_listen.unwrap().port(), 443);
        assert_eq!(cfg.limits.mail.max_messages_per_node, 1000);
    }

    #[test]
    fn unknown_keys_and_public_admin_are_refused() {
        assert!(Config::parse("bogus = 1").is_err());
        assert!(matches!(
            Config::parse("admin_listen = \"0.0.0.0:9479\""),
            Err(ConfigError::AdminNotLoopback { .. })
        ));
        assert_eq!(Config::parse("").unwrap(), Config::default());
    }
}
