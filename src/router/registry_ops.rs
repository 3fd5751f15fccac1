//! Router operations on the local registry: `register`, `deregister`, `discover`,
//! `status`, and taking an agent offline.

use agentmesh_proto::{AgentId, DiscoverQuery, ErrorCode, ErrorObject, Manifest};
use serde_json::{json, Value};

use super::{iso8601, ConnId, LocalAgent, Now, Router};

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

    pub(super) fn discover(&self, query: &DiscoverQuery) -> Result<Option<Value>, ErrorObject> {
        query
            .validate()
            .map_err(|e| ErrorObject::new(ErrorCode::InvalidQuery, e.to_string()))?;
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

    pub(super) fn status(&self) -> Option<Value> {
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
            "peers": [],
        }))
    }

    /// Takes an agent offline: its unfinished tasks fail, its subscriptions end.
    pub(super) fn remove_agent(&mut self, _now: Now, agent: AgentId, why: &str) {
        self.agents.remove(&agent);
        self.subs.remove_where(|s| s.agent == agent);
        for task_id in self.tasks.ids_where(|t| t.responder == agent) {
            let err = ErrorObject::new(
                ErrorCode::AgentUnavailable,
                format!("responder {} went offline: {why}", agent.short()),
            );
            self.abort_failed(&task_id, err);
        }
        for task_id in self.tasks.ids_where(|t| t.requester == agent) {
            self.cancel_by_daemon(&task_id, "the requesting agent went offline");
        }
    }
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
