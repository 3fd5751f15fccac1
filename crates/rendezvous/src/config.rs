//! The service's TOML configuration (see `dist/rendezvous.example.toml`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use agentmesh_proto::NodeId;
use serde::Deserialize;

use crate::core::{CoreConfig, Limits, TenantConfig};
use crate::ratelimit::Rate;

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The TOML does not parse or has unknown keys.
    #[error("invalid configuration: {0}")]
    Parse(#[from] toml::de::Error),
    /// A revoked node id does not parse.
    #[error("tenant {tenant}: revoked node '{id}' is not a node id")]
    BadNodeId {
        /// Tenant.
        tenant: String,
        /// The text.
        id: String,
    },
    /// Heartbeat must be shorter than the agent TTL.
    #[error("heartbeat_ms ({heartbeat}) must be below agent_ttl_ms ({ttl})")]
    Timing {
        /// Heartbeat.
        heartbeat: u64,
        /// TTL.
        ttl: u64,
    },
}

/// One `[[tenant]]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantSection {
    /// Tenant name.
    pub name: String,
    /// Join token nodes present.
    pub join_token: String,
    /// Revoked node ids (`N…`).
    #[serde(default)]
    pub revoked: Vec<String>,
}

/// The `[limits]` table: per-node rates.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    /// Registrations.
    pub register: Rate,
    /// Discovery queries.
    pub discover: Rate,
    /// Introductions.
    pub introduce: Rate,
}

impl Default for LimitsSection {
    fn default() -> Self {
        let l = Limits::default();
        LimitsSection {
            register: l.register,
            discover: l.discover,
            introduce: l.introduce,
        }
    }
}

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// UDP address for QUIC sessions and the STUN responder.
    pub listen: SocketAddr,
    /// TCP address for the TLS fallback (none: disabled).
    #[serde(default)]
    pub tcp_listen: Option<SocketAddr>,
    /// Second STUN-only UDP address (none: disabled).
    #[serde(default)]
    pub stun_alt: Option<SocketAddr>,
    /// The address advertised as the second observer (OTHER-ADDRESS), if it differs from
    /// `stun_alt` (e.g. behind a cloud 1:1 NAT).
    #[serde(default)]
    pub stun_alt_public: Option<SocketAddr>,
    /// HTTP admin address for `/metrics` and `/status`.
    #[serde(default = "default_admin")]
    pub admin: SocketAddr,
    /// The rendezvous node key (created 0600 if missing).
    pub key_file: PathBuf,
    /// SQLite database file.
    pub database: PathBuf,
    /// Heartbeat interval announced to daemons, ms.
    #[serde(default = "default_heartbeat")]
    pub heartbeat_ms: u64,
    /// Agent lifetime without heartbeat, ms.
    #[serde(default = "default_ttl")]
    pub agent_ttl_ms: u64,
    /// Largest accepted frame, bytes.
    #[serde(default = "default_max_frame")]
    pub max_frame: usize,
    /// Log peers' addresses at info level (default: only at debug).
    #[serde(default)]
    pub log_peer_addresses: bool,
    /// Rate limits.
    #[serde(default)]
    pub limits: LimitsSection,
    /// Tenants.
    #[serde(default, rename = "tenant")]
    pub tenants: Vec<TenantSection>,
}

fn default_admin() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9464))
}
fn default_heartbeat() -> u64 {
    30_000
}
fn default_ttl() -> u64 {
    45_000
}
fn default_max_frame() -> usize {
    256 * 1024
}

impl Config {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text)
    }

    /// Parses and checks configuration text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let cfg: Config = toml::from_str(text)?;
        if cfg.heartbeat_ms >= cfg.agent_ttl_ms {
            return Err(ConfigError::Timing {
                heartbeat: cfg.heartbeat_ms,
                ttl: cfg.agent_ttl_ms,
            });
        }
        cfg.tenant_configs()?;
        Ok(cfg)
    }

    /// The core's settings.
    pub fn core(&self) -> CoreConfig {
        CoreConfig {
            heartbeat: Duration::from_millis(self.heartbeat_ms),
            agent_ttl: Duration::from_millis(self.agent_ttl_ms),
            limits: Limits {
                register: self.limits.register,
                discover: self.limits.discover,
                introduce: self.limits.introduce,
            },
            ..CoreConfig::default()
        }
    }

    /// The tenants with parsed revocations.
    pub fn tenant_configs(&self) -> Result<Vec<TenantConfig>, ConfigError> {
        self.tenants
            .iter()
            .map(|t| {
                let revoked = t
                    .revoked
                    .iter()
                    .map(|id| {
                        id.parse::<NodeId>().map_err(|_| ConfigError::BadNodeId {
                            tenant: t.name.clone(),
                            id: id.clone(),
                        })
                    })
                    .collect::<Result<_, _>>()?;
                Ok(TenantConfig {
                    name: t.name.clone(),
                    join_token: t.join_token.clone(),
                    revoked,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_file_parses() {
        let text = include_str!("../../../dist/rendezvous.example.toml");
        let cfg = Config::parse(text).unwrap();
        assert_eq!(cfg.tenants.len(), 1);
        assert_eq!(cfg.core().agent_ttl, Duration::from_secs(45));
        assert!(cfg.admin.ip().is_loopback());
    }

    #[test]
    fn mistakes_are_reported() {
        let base = "listen = \"127.0.0.1:1\"\nkey_file = \"k\"\ndatabase = \"d\"\n";
        assert!(Config::parse(base).is_ok());
        assert!(matches!(
            Config::parse(&format!("{base}lissen = 1\n")),
            Err(ConfigError::Parse(_))
        ));
        assert!(matches!(
            Config::parse(&format!("{base}heartbeat_ms = 50\nagent_ttl_ms = 40\n")),
            Err(ConfigError::Timing { .. })
        ));
        let bad =
            format!("{base}[[tenant]]\nname = \"a\"\njoin_token = \"t\"\nrevoked = [\"x\"]\n");
        assert!(matches!(
            Config::parse(&bad),
            Err(ConfigError::BadNodeId { .. })
        ));
    }
}
