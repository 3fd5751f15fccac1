//! Router operations on the local registry: `register`, `deregister`, `discover`
//! (local, or merged with the rendezvous's answer in mesh mode), `status`, and taking
//! an agent offline.

use agentmesh_proto::rendezvous::AgentRecord;
use agentmesh_proto::{AgentId, DiscoverQuery, ErrorCode, ErrorObject, Manifest, NodeId};
use serde_json::{json, Value};

use super::tasks::Endpoint;
use super::{iso8601, Announce, ConnId, LocalAgent, Now, Output, Router};

impl Router {
    pub(super) fn register(
        &mut self,
        now: Now,
        conn: ConnId,
        manifest: Value,
        key_name: Option<&str>,
    ) -> Result<Option<Value>, ErrorObject> {
        let owned = self.conns.get(&conn).map_or(0, |c| c.agents.len());
        if owned >= self.config.max_agents_per_conn {
            return Err(ErrorObject::new(
                ErrorCode::RateLimited,
                format!(
                    "a connection may register at most {} agents",
                    self.config.max_agents_per_conn
                ),
            ));
        }
        let key = self
            .keys
            .key(key_name)
            .map_err(|e| ErrorObject::new(ErrorCode::InputInvalid, e.to_string()))?;
        let agent_id = key.agent_id();
        let mut manifest = parse_manifest(manifest, agent_id)?;
        if manifest.endpoint.is_empty() {
            manifest.endpoint = format!("mesh.agent.{agent_id}.inbox");
        }
        manifest.last_heartbeat = Some(iso8601(now.wall));
        manifest.sign(&key, iso8601(now.wall));
        if let Some(previous) = self.agents.insert(LocalAgent {
            manifest,
            conn,
            active_tasks: 0,
            key,
        }) {
            if let Some(state) = self.conns.get_mut(&previous) {
                state.agents.shift_remove(&agent_id);
            }
        }
        self.conns.entry(conn).or_default().agents.insert(agent_id);
        if self.config.mesh {
            if let Some(a) = self.agents.get(&agent_id) {
                let m = Box::new(a.manifest.clone());
                self.out.push(Output::Announce(Announce::Register(m)));
            }
            self.release_held_for(now, agent_id);
        }
        Ok(Some(json!({ "agent_id": agent_id })))
    }

    pub(super) fn deregister(
        &mut self,
        now: Now,
        conn: ConnId,
        agent_id: AgentId,
    ) -> Result<Option<Value>, ErrorObject> {
        self.owned(conn, &agent_id)?;
        if let Some(state) = self.conns.get_mut(&conn) {
            state.agents.shift_remove(&agent_id);
        }
        self.remove_agent(now, agent_id, "it was deregistered");
        Ok(Some(json!({ "agent_id": agent_id })))
    }

    pub(super) fn discover(
        &mut self,
        now: Now,
        conn: ConnId,
        id: &Value,
        query: DiscoverQuery,
    ) -> Result<Option<Value>, ErrorObject> {
        query
            .validate()
            .map_err(|e| ErrorObject::new(ErrorCode::InvalidQuery, e.to_string()))?;
        if self.config.mesh {
            return self.discover_mesh(now, conn, id.clone(), query);
        }
        let matching: Vec<&Manifest> = self
            .agents
            .iter()
            .map(|a| &a.manifest)
            .filter(|m| query.matches(m))
            .collect();
        let total = matching.len();
        let agents: Vec<&Manifest> = matching.into_iter().take(query.effective_limit()).collect();
        Ok(Some(json!({ "agents": agents, "total": total })))
    }

    /// The mesh-wide `discover` answer: local agents (authoritative) and the
    /// rendezvous's records of agents on other nodes, each marked with `node` and
    /// `local`. When the rendezvous could not be asked the reply is its error, with the
    /// local matches in `error.details.local_agents` (never a silently partial list).
    pub(super) fn discover_merge(
        &self,
        query: &DiscoverQuery,
        remote: Result<Vec<AgentRecord>, ErrorObject>,
    ) -> Result<Value, ErrorObject> {
        let me = self.node_id;
        let local: Vec<Value> = self
            .agents
            .iter()
            .map(|a| &a.manifest)
            .filter(|m| query.matches(m))
            .map(|m| located(m, me, true))
            .collect();
        let records = match remote {
            Ok(r) => r,
            Err(mut e) => {
                let mut details = json!({ "local_agents": local });
                if let Some(d) = e.details.take() {
                    details["driver_details"] = json!(d);
                }
                e.details = Some(agentmesh_proto::Json(details));
                return Err(e);
            }
        };
        let remote: Vec<Value> = records
            .iter()
            .filter(|r| self.agents.get(&r.manifest.id).is_none())
            .map(|r| located(&r.manifest, r.node, false))
            .collect();
        let total = local.len() + remote.len();
        let agents: Vec<Value> = local
            .into_iter()
            .chain(remote)
            .take(query.effective_limit())
            .collect();
        Ok(json!({ "agents": agents, "total": total }))
    }

    pub(super) fn status(&mut self, conn: ConnId, watch: bool) -> Option<Value> {
        if watch {
            self.conns.entry(conn).or_default().watch_paths = true;
        }
        let net = self.net_status();
        let peers = net.get("peers").cloned().unwrap_or_else(|| json!([]));
        let agents: Vec<Value> = self
            .agents
            .iter()
            .map(|a| {
                json!({
                    "agent_id": a.manifest.id,
                    "name": a.manifest.name,
                    "availability": a.manifest.availability,
                    "capabilities": a.manifest.capabilities,
                    "skills": a.manifest.skills.iter().map(|s| &s.id).collect::<Vec<_>>(),
                    "active_tasks": a.active_tasks,
                })
            })
            .collect();
        Some(json!({
            "node_id": self.node_id,
            "version": env!("CARGO_PKG_VERSION"),
            "protocol_version": agentmesh_proto::PROTOCOL_VERSION,
            "agents": agents,
            "tasks_in_flight": self.tasks.live_count(),
            "subscriptions": self.subs.len(),
            "connections": self.conns.len(),
            "mesh": self.config.mesh,
            "remote_agents_known": self.mesh.directory.len(),
            "lookups_in_flight": self.mesh.lookups.len(),
            "net": net,
            "peers": peers,
        }))
    }

    /// Takes an agent offline: its unfinished tasks fail, its subscriptions end.
    pub(super) fn remove_agent(&mut self, now: Now, agent: AgentId, why: &str) {
        if self.agents.remove(&agent).is_none() {
            return;
        }
        let local = |e: Endpoint| e.conn().is_some();
        self.subs.remove_where(|s| s.agent == agent);
        if self.config.mesh {
            self.out.push(Output::Announce(Announce::Unregister(agent)));
            self.sync_patterns();
        }
        for task_id in self
            .tasks
            .ids_where(|t| t.responder == agent && local(t.responder_end))
        {
            let err = ErrorObject::new(
                ErrorCode::AgentUnavailable,
                format!("responder {} went offline: {why}", agent.short()),
            );
            self.abort_failed(now, &task_id, err);
        }
        for task_id in self
            .tasks
            .ids_where(|t| t.requester == agent && local(t.requester_end))
        {
            self.cancel_by_daemon(now, &task_id, "the requesting agent went offline");
        }
    }
}

/// A manifest as `discover` lists it in mesh mode: plus its `node` and `local`.
fn located(m: &Manifest, node: NodeId, local: bool) -> Value {
    let mut v = json!(m);
    if let Value::Object(map) = &mut v {
        map.insert("node".into(), json!(node));
        map.insert("local".into(), json!(local));
    }
    v
}

/// Reads a manifest supplied by an agent, filling in its id.
fn parse_manifest(mut value: Value, agent_id: AgentId) -> Result<Manifest, ErrorObject> {
    let invalid = |msg: String| ErrorObject::new(ErrorCode::InvalidManifest, msg);
    let Value::Object(map) = &mut value else {
        return Err(invalid("manifest must be a JSON object".into()));
    };
    match map.get("id") {
        None | Some(Value::Null) => {
            map.insert("id".into(), json!(agent_id));
        }
        Some(given) if *given == json!(agent_id) => {}
        Some(_) => {
            return Err(ErrorObject::new(
                ErrorCode::IdentityMismatch,
                "manifest id does not match the agent key; omit 'id' and the daemon fills it in",
            ))
        }
    }
    let manifest: Manifest =
        serde_json::from_value(value).map_err(|e| invalid(format!("manifest: {e}")))?;
    manifest
        .validate()
        .map_err(|e| invalid(format!("manifest: {e}")))?;
    Ok(manifest)
}
