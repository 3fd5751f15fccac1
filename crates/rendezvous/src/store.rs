//! Persistence in embedded SQLite: tenants, revocations, node records and agent records,
//! so a restart loses nothing. The core emits [`StoreOp`]s; the driver applies them in
//! batches, one transaction each.

use std::net::SocketAddr;
use std::path::Path;

use agentmesh_proto::{Manifest, NodeId};
use rusqlite::{params, Connection};

use crate::core::{AgentRow, NodeRow, StoreOp, TenantConfig};

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// SQLite refused an operation.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A manifest could not be (de)serialised.
    #[error("manifest json: {0}")]
    Json(#[from] serde_json::Error),
}

const SCHEMA: &str = "
PRAGMA journal_mode = WAL;
PRAGMA synchronous = NORMAL;
CREATE TABLE IF NOT EXISTS tenants (name TEXT PRIMARY KEY, join_token TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS revocations (tenant TEXT NOT NULL, node TEXT NOT NULL,
    PRIMARY KEY (tenant, node));
CREATE TABLE IF NOT EXISTS nodes (tenant TEXT NOT NULL, node TEXT NOT NULL,
    observed TEXT, candidates TEXT NOT NULL, home_relay TEXT, last_seen INTEGER NOT NULL,
    PRIMARY KEY (tenant, node));
CREATE TABLE IF NOT EXISTS agents (tenant TEXT NOT NULL, agent TEXT NOT NULL,
    node TEXT NOT NULL, manifest TEXT NOT NULL, last_seen INTEGER NOT NULL,
    PRIMARY KEY (tenant, agent));
";

/// The SQLite store.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
}

fn addrs_text(addrs: &[SocketAddr]) -> String {
    addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn parse_addrs(text: &str) -> Vec<SocketAddr> {
    text.split(',').filter_map(|s| s.parse().ok()).collect()
}

impl Store {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::init(Connection::open(path)?)
    }

    /// An in-memory database (tests, benchmarks).
    pub fn open_in_memory() -> Result<Self, StoreError> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> Result<Self, StoreError> {
        conn.execute_batch(SCHEMA)?;
        Ok(Store { conn })
    }

    /// Applies `ops` in one transaction.
    pub fn apply(&mut self, ops: &[StoreOp]) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        for op in ops {
            match op {
                StoreOp::Node(n) => {
                    tx.prepare_cached(
                        "INSERT OR REPLACE INTO nodes VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    )?
                    .execute(params![
                        n.tenant,
                        n.node.to_string(),
                        n.observed.map(|a| a.to_string()),
                        addrs_text(&n.candidates),
                        n.home_relay,
                        n.last_seen_unix_ms as i64
                    ])?;
                }
                StoreOp::Agent(a) => {
                    tx.prepare_cached("INSERT OR REPLACE INTO agents VALUES (?1, ?2, ?3, ?4, ?5)")?
                        .execute(params![
                            a.tenant,
                            a.manifest.id.to_string(),
                            a.node.to_string(),
                            serde_json::to_string(&a.manifest)?,
                            a.last_seen_unix_ms as i64
                        ])?;
                }
                StoreOp::DeleteAgent { tenant, agent } => {
                    tx.prepare_cached("DELETE FROM agents WHERE tenant = ?1 AND agent = ?2")?
                        .execute(params![tenant, agent.to_string()])?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Records tenants and their revocations (configuration wins over what is stored).
    pub fn save_tenants(&mut self, tenants: &[TenantConfig]) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        for t in tenants {
            tx.execute(
                "INSERT OR REPLACE INTO tenants VALUES (?1, ?2)",
                params![t.name, t.join_token],
            )?;
            for n in &t.revoked {
                tx.execute(
                    "INSERT OR IGNORE INTO revocations VALUES (?1, ?2)",
                    params![t.name, n.to_string()],
                )?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// All stored tenants with their revocations.
    pub fn load_tenants(&self) -> Result<Vec<TenantConfig>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT name, join_token FROM tenants ORDER BY name")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (name, join_token) = row?;
            let mut rev = self
                .conn
                .prepare_cached("SELECT node FROM revocations WHERE tenant = ?1")?;
            let revoked = rev
                .query_map([&name], |r| r.get::<_, String>(0))?
                .filter_map(|n| n.ok()?.parse::<NodeId>().ok())
                .collect();
            out.push(TenantConfig {
                name,
                join_token,
                revoked,
            });
        }
        Ok(out)
    }

    /// All stored nodes (rows with unparsable ids are skipped).
    pub fn load_nodes(&self) -> Result<Vec<NodeRow>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT tenant, node, observed, candidates, home_relay, last_seen FROM nodes",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, Option<String>>(4)?,
                r.get::<_, i64>(5)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (tenant, node, observed, candidates, home_relay, last_seen) = row?;
            let Ok(node) = node.parse() else { continue };
            out.push(NodeRow {
                tenant,
                node,
                observed: observed.and_then(|o| o.parse().ok()),
                candidates: parse_addrs(&candidates),
                home_relay,
                last_seen_unix_ms: last_seen.max(0) as u64,
            });
        }
        Ok(out)
    }

    /// All stored agents (rows that do not parse are skipped).
    pub fn load_agents(&self) -> Result<Vec<AgentRow>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT tenant, node, manifest, last_seen FROM agents")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (tenant, node, manifest, last_seen) = row?;
            let (Ok(node), Ok(manifest)) =
                (node.parse(), serde_json::from_str::<Manifest>(&manifest))
            else {
                continue;
            };
            out.push(AgentRow {
                tenant,
                node,
                manifest,
                last_seen_unix_ms: last_seen.max(0) as u64,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentmesh_proto::SecretKey;

    #[test]
    fn records_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rv.sqlite");
        let node = SecretKey::from_bytes(&[2; 32]).node_id();
        let key = SecretKey::from_bytes(&[3; 32]);
        let mut m = Manifest::new(key.agent_id(), "a");
        m.sign(&key, "2026-11-21T00:00:00Z");
        let row = AgentRow {
            tenant: "acme".into(),
            node,
            manifest: m.clone(),
            last_seen_unix_ms: 5,
        };
        let n = NodeRow {
            tenant: "acme".into(),
            node,
            observed: Some("203.0.113.5:4000".parse().unwrap()),
            candidates: vec!["10.0.0.1:4000".parse().unwrap(), "[::1]:5".parse().unwrap()],
            home_relay: None,
            last_seen_unix_ms: 9,
        };
        {
            let mut s = Store::open(&path).unwrap();
            s.save_tenants(&[TenantConfig {
                name: "acme".into(),
                join_token: "t".into(),
                revoked: vec![node],
            }])
            .unwrap();
            s.apply(&[
                StoreOp::Node(n.clone()),
                StoreOp::Agent(row.clone()),
                StoreOp::Agent(row.clone()),
            ])
            .unwrap();
        }
        let mut s = Store::open(&path).unwrap();
        assert_eq!(s.load_nodes().unwrap(), vec![n]);
        let agents = s.load_agents().unwrap();
        assert_eq!(agents, vec![row]);
        assert!(agents[0].manifest.verify().is_ok());
        assert_eq!(s.load_tenants().unwrap()[0].revoked, vec![node]);
        s.apply(&[StoreOp::DeleteAgent {
            tenant: "acme".into(),
            agent: m.id,
        }])
        .unwrap();
        assert!(s.load_agents().unwrap().is_empty());
    }
}
