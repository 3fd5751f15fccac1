//! Requests of authenticated nodes about agents and addresses: register, unregister,
//! heartbeat, discover, candidate updates; agent expiry; restoring persisted records.

use std::net::SocketAddr;
use std::time::Instant;

use agentmesh_proto::manifest::Availability;
use agentmesh_proto::rendezvous::{
    AgentRecord, ClientMsg, RvError, RvErrorCode, ServerMsg, MAX_BATCH, MAX_CANDIDATES,
};
use agentmesh_proto::{AgentId, DiscoverQuery, Manifest, NodeId};

use super::{AgentRow, ConnId, NodeRow, NodeState, Output, Server, StoreOp};
use crate::ratelimit::Bucket;

/// Which bucket a request draws from.
#[derive(Debug, Clone, Copy)]
pub(super) enum Class {
    Register = 0,
    Discover = 1,
    Introduce = 2,
}

impl Server {
    pub(super) fn on_request(
        &mut self,
        now: Instant,
        conn: ConnId,
        node: NodeId,
        tenant: usize,
        msg: ClientMsg,
        out: &mut Vec<Output>,
    ) {
        let unix = self.unix_ms(now);
        if let Some(n) = self.node_mut(tenant, &node) {
            n.last_seen_unix_ms = unix;
        }
        let ctx = Ctx {
            now,
            conn,
            node,
            tenant,
        };
        let result = match msg {
            ClientMsg::Register { req, manifests } => self.register(ctx, req, manifests, out),
            ClientMsg::Unregister { req, agents } => self.unregister(ctx, req, &agents, out),
            ClientMsg::Heartbeat { req, agents } => self.heartbeat(ctx, req, &agents, out),
            ClientMsg::UpdateCandidates {
                req,
                candidates,
                home_relay,
            } => self.update_candidates(ctx, req, candidates, home_relay, out),
            ClientMsg::Discover { req, query } => self.discover(ctx, req, &query, out),
            ClientMsg::Subscribe { req, patterns } => self.subscribe(ctx, req, patterns, out),
            ClientMsg::Introduce { req, target } => self.introduce(ctx, req, target, out),
            ClientMsg::UpdateMapping { req, mapping } => {
                if let Some(n) = self.node_mut(ctx.tenant, &ctx.node) {
                    n.mapping = Some(mapping);
                }
                out.push(Output::Send {
                    conn,
                    msg: ServerMsg::Ok { req },
                });
                Ok(())
            }
            ClientMsg::Ping { req } => {
                out.push(Output::Send {
                    conn,
                    msg: ServerMsg::Pong { req },
                });
                Ok(())
            }
            ClientMsg::Hello { .. } | ClientMsg::Auth { .. } => Err((
                None,
                RvError::new(
                    RvErrorCode::NotAuthenticated,
                    "session already authenticated",
                ),
            )),
        };
        if let Err((req, err)) = result {
            self.reject(conn, req, err, out);
        }
    }

    pub(super) fn node_mut(&mut self, tenant: usize, node: &NodeId) -> Option<&mut NodeState> {
        self.tenants.get_index_mut(tenant)?.1.nodes.get_mut(node)
    }

    /// Takes one token of `class` from the node's bucket.
    pub(super) fn limit(&mut self, ctx: Ctx, req: u64, class: Class) -> Result<(), Failure> {
        let limits = self.cfg.limits;
        let rate = match class {
            Class::Register => limits.register,
            Class::Discover => limits.discover,
            Class::Introduce => limits.introduce,
        };
        let Some(n) = self.node_mut(ctx.tenant, &ctx.node) else {
            return Ok(());
        };
        let bucket: &mut Bucket = &mut n.buckets[class as usize];
        bucket.take(rate, 1.0, ctx.now).map_err(|wait| {
            let mut e = RvError::new(RvErrorCode::RateLimited, "too many requests");
            e.retry_after_ms = Some(wait.as_millis() as u64 + 1);
            (Some(req), e)
        })
    }

    fn register(
        &mut self,
        ctx: Ctx,
        req: u64,
        manifests: Vec<Manifest>,
        out: &mut Vec<Output>,
    ) -> Result<(), Failure> {
        self.limit(ctx, req, Class::Register)?;
        too_many(req, manifests.len(), MAX_BATCH)?;
        let tenant_name = self.tenant_name(ctx.tenant);
        for m in &manifests {
            self.check_manifest(ctx, req, m, &tenant_name)?;
        }
        let unix = self.unix_ms(ctx.now);
        for m in manifests {
            self.insert_agent(ctx.now, ctx.tenant, ctx.node, m.clone(), unix);
            self.metrics.registrations += 1;
            out.push(Output::Persist(StoreOp::Agent(AgentRow {
                tenant: tenant_name.clone(),
                node: ctx.node,
                manifest: m,
                last_seen_unix_ms: unix,
            })));
        }
        out.push(Output::Send {
            conn: ctx.conn,
            msg: ServerMsg::Ok { req },
        });
        Ok(())
    }

    fn check_manifest(
        &self,
        ctx: Ctx,
        req: u64,
        m: &Manifest,
        tenant: &str,
    ) -> Result<(), Failure> {
        let bad = |msg: String| (Some(req), RvError::new(RvErrorCode::InvalidManifest, msg));
        m.validate().map_err(|e| bad(e.to_string()))?;
        m.verify().map_err(|e| bad(e.to_string()))?;
        let declared = m.trust.as_ref().and_then(|t| t.tenant.as_deref());
        if declared.is_some_and(|d| d != tenant) {
            return Err(bad(format!(
                "manifest of {} names another tenant",
                m.id.short()
            )));
        }
        let owner = self
            .tenants
            .get_index(ctx.tenant)
            .and_then(|(_, t)| t.index.get(&m.id))
            .map(|e| e.node);
        if owner.is_some_and(|o| o != ctx.node) {
            let msg = format!("agent {} is registered by another node", m.id.short());
            return Err((Some(req), RvError::new(RvErrorCode::NotOwner, msg)));
        }
        Ok(())
    }

    /// Inserts an agent into the index and (re)arms its expiry.
    fn insert_agent(&mut self, now: Instant, tenant: usize, node: NodeId, m: Manifest, unix: u64) {
        let deadline = now + self.cfg.agent_ttl;
        let id = m.id;
        let Some((_, t)) = self.tenants.get_index_mut(tenant) else {
            return;
        };
        t.index.upsert(node, m, unix);
        if let Some(old) = t.deadlines.insert(id, deadline) {
            self.expiry.remove(&(old, tenant, id));
        }
        self.expiry.insert((deadline, tenant, id));
    }

    fn remove_agent(&mut self, tenant: usize, id: &AgentId) -> bool {
        let Some((_, t)) = self.tenants.get_index_mut(tenant) else {
            return false;
        };
        if let Some(old) = t.deadlines.remove(id) {
            self.expiry.remove(&(old, tenant, *id));
        }
        t.index.remove(id).is_some()
    }

    fn unregister(
        &mut self,
        ctx: Ctx,
        req: u64,
        agents: &[AgentId],
        out: &mut Vec<Output>,
    ) -> Result<(), Failure> {
        too_many(req, agents.len(), MAX_BATCH)?;
        let tenant_name = self.tenant_name(ctx.tenant);
        for id in agents {
            if self.owner(ctx.tenant, id) == Some(ctx.node) && self.remove_agent(ctx.tenant, id) {
                out.push(Output::Persist(StoreOp::DeleteAgent {
                    tenant: tenant_name.clone(),
                    agent: *id,
                }));
            }
        }
        out.push(Output::Send {
            conn: ctx.conn,
            msg: ServerMsg::Ok { req },
        });
        Ok(())
    }

    fn owner(&self, tenant: usize, id: &AgentId) -> Option<NodeId> {
        Some(self.tenants.get_index(tenant)?.1.index.get(id)?.node)
    }

    fn heartbeat(
        &mut self,
        ctx: Ctx,
        req: u64,
        agents: &[(AgentId, Availability)],
        out: &mut Vec<Output>,
    ) -> Result<(), Failure> {
        too_many(req, agents.len(), MAX_BATCH)?;
        let unix = self.unix_ms(ctx.now);
        let deadline = ctx.now + self.cfg.agent_ttl;
        let tenant_name = self.tenant_name(ctx.tenant);
        let mut unknown = Vec::new();
        let Some((_, t)) = self.tenants.get_index_mut(ctx.tenant) else {
            return Ok(());
        };
        for (id, avail) in agents {
            if t.index.get(id).is_none_or(|e| e.node != ctx.node) {
                unknown.push(*id);
                continue;
            }
            t.index.touch(id, unix);
            if t.index.set_availability(id, *avail) {
                if let Some(e) = t.index.get(id) {
                    out.push(Output::Persist(StoreOp::Agent(AgentRow {
                        tenant: tenant_name.clone(),
                        node: ctx.node,
                        manifest: Manifest::clone(&e.manifest),
                        last_seen_unix_ms: unix,
                    })));
                }
            }
            if let Some(old) = t.deadlines.insert(*id, deadline) {
                self.expiry.remove(&(old, ctx.tenant, *id));
            }
            self.expiry.insert((deadline, ctx.tenant, *id));
        }
        out.push(Output::Send {
            conn: ctx.conn,
            msg: ServerMsg::HeartbeatAck { req, unknown },
        });
        Ok(())
    }

    fn update_candidates(
        &mut self,
        ctx: Ctx,
        req: u64,
        candidates: Vec<SocketAddr>,
        home_relay: Option<String>,
        out: &mut Vec<Output>,
    ) -> Result<(), Failure> {
        too_many(req, candidates.len(), MAX_CANDIDATES)?;
        let tenant = self.tenant_name(ctx.tenant);
        let Some(n) = self.node_mut(ctx.tenant, &ctx.node) else {
            return Ok(());
        };
        n.candidates = candidates;
        n.home_relay = home_relay;
        let row = NodeRow {
            tenant,
            node: ctx.node,
            observed: n.observed,
            candidates: n.candidates.clone(),
            home_relay: n.home_relay.clone(),
            last_seen_unix_ms: n.last_seen_unix_ms,
        };
        out.push(Output::Persist(StoreOp::Node(row)));
        out.push(Output::Send {
            conn: ctx.conn,
            msg: ServerMsg::Ok { req },
        });
        Ok(())
    }

    fn discover(
        &mut self,
        ctx: Ctx,
        req: u64,
        query: &DiscoverQuery,
        out: &mut Vec<Output>,
    ) -> Result<(), Failure> {
        self.limit(ctx, req, Class::Discover)?;
        query.validate().map_err(|e| {
            (
                Some(req),
                RvError::new(RvErrorCode::InvalidQuery, e.to_string()),
            )
        })?;
        let agents = self.query(ctx.tenant, query);
        self.metrics.discoveries += 1;
        out.push(Output::Send {
            conn: ctx.conn,
            msg: ServerMsg::Discovered { req, agents },
        });
        Ok(())
    }

    /// Runs a discovery query in tenant `tenant` (public for benchmarks through
    /// [`Server::discover_in`]).
    pub(super) fn query(&self, tenant: usize, query: &DiscoverQuery) -> Vec<AgentRecord> {
        let Some((_, t)) = self.tenants.get_index(tenant) else {
            return Vec::new();
        };
        t.index
            .query(query)
            .into_iter()
            .map(|e| AgentRecord {
                node: e.node,
                manifest: e.manifest.clone(),
            })
            .collect()
    }

    /// Answers `query` in tenant `tenant` without a session (tools, benchmarks).
    pub fn discover_in(&self, tenant: &str, query: &DiscoverQuery) -> Vec<AgentRecord> {
        match self.tenants.get_index_of(tenant) {
            Some(ix) => self.query(ix, query),
            None => Vec::new(),
        }
    }

    pub(super) fn tenant_name(&self, tenant: usize) -> String {
        self.tenants
            .get_index(tenant)
            .map(|(n, _)| n.clone())
            .unwrap_or_default()
    }

    /// Drops agents whose heartbeats ran out.
    pub(super) fn expire_agents(&mut self, now: Instant, out: &mut Vec<Output>) {
        while let Some(&(t, tenant, id)) = self.expiry.first() {
            if t > now {
                break;
            }
            self.expiry.pop_first();
            let name = self.tenant_name(tenant);
            if let Some((_, ten)) = self.tenants.get_index_mut(tenant) {
                ten.deadlines.remove(&id);
                if ten.index.remove(&id).is_some() {
                    self.metrics.expired_agents += 1;
                    tracing::debug!(agent = %id.short(), "agent expired");
                    out.push(Output::Persist(StoreOp::DeleteAgent {
                        tenant: name,
                        agent: id,
                    }));
                }
            }
        }
    }

    /// Restores a persisted node (offline until it reconnects). Unknown tenants are skipped.
    pub fn restore_node(&mut self, now: Instant, row: NodeRow) {
        let limits = self.cfg.limits;
        let Some(t) = self.tenants.get_mut(&row.tenant) else {
            return;
        };
        t.nodes.insert(
            row.node,
            NodeState {
                observed: row.observed,
                candidates: row.candidates,
                home_relay: row.home_relay,
                mapping: None,
                last_seen_unix_ms: row.last_seen_unix_ms,
                conn: None,
                rtt: std::time::Duration::from_millis(100),
                buckets: [
                    Bucket::full(limits.register, now),
                    Bucket::full(limits.discover, now),
                    Bucket::full(limits.introduce, now),
                ],
            },
        );
    }

    /// Restores a persisted agent with a full TTL from `now`, so its daemon has time to
    /// reconnect and heartbeat. The manifest's signature is checked again.
    pub fn restore_agent(&mut self, now: Instant, row: AgentRow) -> bool {
        let Some(tenant) = self.tenants.get_index_of(&row.tenant) else {
            return false;
        };
        if row.manifest.verify().is_err() {
            return false;
        }
        self.insert_agent(now, tenant, row.node, row.manifest, row.last_seen_unix_ms);
        true
    }
}

/// A refused request: its number and the error.
pub(super) type Failure = (Option<u64>, RvError);

/// The context of one authenticated request.
#[derive(Debug, Clone, Copy)]
pub(super) struct Ctx {
    pub(super) now: Instant,
    pub(super) conn: ConnId,
    pub(super) node: NodeId,
    pub(super) tenant: usize,
}

fn too_many(req: u64, len: usize, max: usize) -> Result<(), Failure> {
    if len > max {
        let msg = format!("{len} entries, at most {max} per request");
        return Err((Some(req), RvError::new(RvErrorCode::TooMany, msg)));
    }
    Ok(())
}
