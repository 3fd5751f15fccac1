//! The subscriptions index (who wants which topic patterns, pushed on change) and
//! introductions (signed candidate sets and a common start time for both sides).

use std::net::SocketAddr;
use std::time::Instant;

use agentmesh_proto::rendezvous::{
    Introduction, NatMapping, RvError, RvErrorCode, ServerMsg, SignedIntroduction, MAX_PATTERNS,
};
use agentmesh_proto::{NodeId, SubjectPattern};
use rand::RngCore;

use super::registry::{Class, Ctx, Failure};
use super::{ConnId, NodeState, Output, Server, Tenant};

impl Tenant {
    /// Every subscribed node with its patterns.
    pub(super) fn subs_snapshot(&self) -> Vec<(NodeId, Vec<String>)> {
        self.subs.iter().map(|(n, p)| (*n, p.clone())).collect()
    }

    fn live_conns(&self) -> Vec<ConnId> {
        self.nodes.values().filter_map(|n| n.conn).collect()
    }
}

/// A node's addresses: the observed one first, then its own candidates, no duplicates.
fn candidates_of(n: &NodeState) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = n.observed.into_iter().collect();
    for c in &n.candidates {
        if !out.contains(c) {
            out.push(*c);
        }
    }
    out
}

/// The introduction message for a node: with the peer's NAT mapping if the node declared
/// its own (so it reads `MappedIntroduction`), else the plain version-1 `Introduction`.
fn intro_msg(
    intro: SignedIntroduction,
    own: Option<NatMapping>,
    peer: Option<NatMapping>,
) -> ServerMsg {
    match own {
        Some(_) => ServerMsg::MappedIntroduction {
            intro,
            peer_mapping: peer.unwrap_or_default(),
        },
        None => ServerMsg::Introduction(intro),
    }
}

impl Server {
    pub(super) fn subscribe(
        &mut self,
        ctx: Ctx,
        req: u64,
        patterns: Vec<String>,
        out: &mut Vec<Output>,
    ) -> Result<(), Failure> {
        if patterns.len() > MAX_PATTERNS {
            let msg = format!("at most {MAX_PATTERNS} patterns");
            return Err((Some(req), RvError::new(RvErrorCode::TooMany, msg)));
        }
        for p in &patterns {
            p.parse::<SubjectPattern>().map_err(|e| {
                (
                    Some(req),
                    RvError::new(RvErrorCode::InvalidPattern, e.to_string()),
                )
            })?;
        }
        let mut patterns = patterns;
        patterns.sort();
        patterns.dedup();
        out.push(Output::Send {
            conn: ctx.conn,
            msg: agentmesh_proto::rendezvous::ServerMsg::Ok { req },
        });
        let Some((_, t)) = self.tenants.get_index_mut(ctx.tenant) else {
            return Ok(());
        };
        let changed = if patterns.is_empty() {
            t.subs.shift_remove(&ctx.node).is_some()
        } else {
            t.subs.insert(ctx.node, patterns.clone()) != Some(patterns)
        };
        if changed {
            self.push_subscriptions(ctx.tenant, out);
        }
        Ok(())
    }

    /// Sends the tenant's subscription snapshot to every live node of the tenant.
    pub(super) fn push_subscriptions(&mut self, tenant: usize, out: &mut Vec<Output>) {
        let Some((_, t)) = self.tenants.get_index(tenant) else {
            return;
        };
        let entries = t.subs_snapshot();
        for conn in t.live_conns() {
            out.push(Output::Send {
                conn,
                msg: ServerMsg::Subscriptions {
                    entries: entries.clone(),
                },
            });
        }
    }

    pub(super) fn introduce(
        &mut self,
        ctx: Ctx,
        req: u64,
        target: NodeId,
        out: &mut Vec<Output>,
    ) -> Result<(), Failure> {
        self.limit(ctx, req, Class::Introduce)?;
        let unknown = || {
            (
                Some(req),
                RvError::new(
                    RvErrorCode::UnknownNode,
                    "node is not online in this tenant",
                ),
            )
        };
        if target == ctx.node {
            return Err(unknown());
        }
        // Random ids: they stay unique across restarts, so daemons can drop repeats.
        let ids = (self.rng.next_u64(), self.rng.next_u64());
        let (_, t) = self.tenants.get_index(ctx.tenant).ok_or_else(unknown)?;
        let a = t.nodes.get(&ctx.node).ok_or_else(unknown)?;
        let b = t
            .nodes
            .get(&target)
            .filter(|b| b.conn.is_some())
            .ok_or_else(unknown)?;
        let b_conn = b.conn.ok_or_else(unknown)?;
        let (for_a, for_b) = self.plan(ctx.now, ids, (ctx.node, a), (target, b));
        let msg_a = intro_msg(for_a.sign(&self.key), a.mapping, b.mapping);
        let msg_b = intro_msg(for_b.sign(&self.key), b.mapping, a.mapping);
        out.push(Output::Send {
            conn: ctx.conn,
            msg: ServerMsg::Ok { req },
        });
        out.push(Output::Send {
            conn: ctx.conn,
            msg: msg_a,
        });
        out.push(Output::Send {
            conn: b_conn,
            msg: msg_b,
        });
        self.metrics.introductions += 1;
        tracing::debug!(from = %ctx.node.short(), to = %target.short(), "introduction");
        Ok(())
    }

    /// Builds both sides' introductions. The start moment is `now + max(rtt) + margin`:
    /// both messages have arrived by then (each needs half its RTT); each side also gets
    /// its own delay after receipt.
    fn plan(
        &self,
        now: Instant,
        (id_a, id_b): (u64, u64),
        (a_id, a): (NodeId, &NodeState),
        (b_id, b): (NodeId, &NodeState),
    ) -> (Introduction, Introduction) {
        let start = now + a.rtt.max(b.rtt) + self.cfg.intro_margin;
        let start_unix = self.unix_ms(start);
        let expires = start_unix + self.cfg.intro_validity.as_millis() as u64;
        let make = |id: u64,
                    to: NodeId,
                    me: &NodeState,
                    peer_id: NodeId,
                    peer: &NodeState,
                    initiator: bool| {
            let arrival = now + me.rtt / 2;
            Introduction {
                id,
                to,
                peer: peer_id,
                initiator,
                peer_candidates: candidates_of(peer),
                peer_home_relay: peer.home_relay.clone(),
                start_at_unix_ms: start_unix,
                start_in_ms: start.saturating_duration_since(arrival).as_millis() as u64,
                expires_unix_ms: expires,
            }
        };
        (
            make(id_a, a_id, a, b_id, b, true),
            make(id_b, b_id, b, a_id, a, false),
        )
    }
}
