//! Session handshake: `Hello` → `Challenge` → `Auth` → `Welcome`, and a node going
//! offline when its session ends.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use agentmesh_proto::rendezvous::{
    auth_transcript, RvError, RvErrorCode, ServerMsg, MAX_CANDIDATES, RV_PROTOCOL_VERSION,
};
use agentmesh_proto::{NodeId, Signature};
use rand::RngCore;

use super::{CloseReason, ConnId, NodeRow, NodeState, Output, Phase, Server, StoreOp};
use crate::ratelimit::Bucket;

/// The outstanding challenge of a session.
#[derive(Debug, Clone, Copy)]
pub(super) struct Pending {
    pub(super) node: NodeId,
    pub(super) tenant: usize,
    pub(super) nonce: [u8; 32],
    pub(super) sent: Instant,
}

/// What the daemon answered.
#[derive(Debug, Clone)]
pub(super) struct Answer {
    pub(super) nonce: [u8; 32],
    pub(super) join_token: String,
    pub(super) signature: Signature,
    pub(super) candidates: Vec<SocketAddr>,
    pub(super) home_relay: Option<String>,
}

/// Compares secrets without an early exit.
fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut diff = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i).copied().unwrap_or(0));
    }
    diff == 0
}

impl Server {
    fn fail_auth(&mut self, conn: ConnId, code: RvErrorCode, message: &str, out: &mut Vec<Output>) {
        self.reject(conn, None, RvError::new(code, message), out);
        out.push(Output::Close {
            conn,
            reason: CloseReason::AuthFailed(code),
        });
    }

    pub(super) fn on_hello(
        &mut self,
        now: Instant,
        conn: ConnId,
        version: u16,
        node: NodeId,
        tenant: &str,
        out: &mut Vec<Output>,
    ) {
        if version != RV_PROTOCOL_VERSION {
            let msg = format!("this rendezvous speaks version {RV_PROTOCOL_VERSION}");
            return self.fail_auth(conn, RvErrorCode::UnsupportedVersion, &msg, out);
        }
        let tls_node = self.sessions.get(&conn).and_then(|s| s.tls_node);
        if tls_node.is_some_and(|t| t != node) {
            let msg = "node id differs from the TLS identity";
            return self.fail_auth(conn, RvErrorCode::IdentityMismatch, msg, out);
        }
        let Some((tenant_ix, _, t)) = self.tenants.get_full(tenant) else {
            return self.fail_auth(conn, RvErrorCode::UnknownTenant, "no such tenant", out);
        };
        if t.revoked.contains(&node) {
            return self.fail_auth(conn, RvErrorCode::Revoked, "node is revoked", out);
        }
        let mut nonce = [0u8; 32];
        self.rng.fill_bytes(&mut nonce);
        if let Some(s) = self.sessions.get_mut(&conn) {
            s.phase = Phase::Challenged {
                node,
                tenant: tenant_ix,
                nonce,
                sent: now,
            };
        }
        out.push(Output::Send {
            conn,
            msg: ServerMsg::Challenge {
                nonce,
                server: self.id(),
            },
        });
    }

    pub(super) fn on_auth(
        &mut self,
        now: Instant,
        conn: ConnId,
        p: Pending,
        a: Answer,
        out: &mut Vec<Output>,
    ) {
        if a.nonce != p.nonce {
            let msg = "answer is for another challenge";
            return self.fail_auth(conn, RvErrorCode::ReplayedChallenge, msg, out);
        }
        let Some((tenant_name, token)) = self
            .tenants
            .get_index(p.tenant)
            .map(|(n, t)| (n.clone(), t.token.clone()))
        else {
            return self.fail_auth(conn, RvErrorCode::UnknownTenant, "no such tenant", out);
        };
        if !same_secret(&a.join_token, &token) {
            return self.fail_auth(conn, RvErrorCode::BadJoinToken, "wrong join token", out);
        }
        let transcript = auth_transcript(&self.id(), &p.nonce, &p.node, &tenant_name);
        if p.node.verify(&transcript, &a.signature).is_err() {
            let msg = "challenge signature does not verify";
            return self.fail_auth(conn, RvErrorCode::BadSignature, msg, out);
        }
        self.complete_auth(now, conn, p, a, tenant_name, out);
    }

    fn complete_auth(
        &mut self,
        now: Instant,
        conn: ConnId,
        p: Pending,
        mut a: Answer,
        tenant_name: String,
        out: &mut Vec<Output>,
    ) {
        a.candidates.truncate(MAX_CANDIDATES);
        self.auth_deadlines.retain(|(_, c)| *c != conn);
        let observed = match self.sessions.get_mut(&conn) {
            Some(s) => {
                s.phase = Phase::Authed {
                    node: p.node,
                    tenant: p.tenant,
                };
                s.observed
            }
            None => return,
        };
        let rtt = now
            .saturating_duration_since(p.sent)
            .max(Duration::from_millis(1));
        let unix = self.unix_ms(now);
        let limits = self.cfg.limits;
        let Some((_, t)) = self.tenants.get_index_mut(p.tenant) else {
            return;
        };
        let state = t.nodes.entry(p.node).or_insert_with(|| NodeState {
            observed: None,
            candidates: Vec::new(),
            home_relay: None,
            mapping: None,
            last_seen_unix_ms: unix,
            conn: None,
            rtt,
            buckets: [
                Bucket::full(limits.register, now),
                Bucket::full(limits.discover, now),
                Bucket::full(limits.introduce, now),
            ],
        });
        let old = state.conn.replace(conn);
        state.observed = Some(observed);
        state.candidates = a.candidates;
        state.home_relay = a.home_relay;
        state.mapping = None;
        state.last_seen_unix_ms = unix;
        state.rtt = rtt;
        let row = NodeRow {
            tenant: tenant_name,
            node: p.node,
            observed: state.observed,
            candidates: state.candidates.clone(),
            home_relay: state.home_relay.clone(),
            last_seen_unix_ms: unix,
        };
        let snapshot = t.subs_snapshot();
        if let Some(old) = old.filter(|o| *o != conn) {
            self.sessions.remove(&old);
            out.push(Output::Close {
                conn: old,
                reason: CloseReason::Superseded,
            });
        }
        self.metrics.sessions_authenticated += 1;
        tracing::info!(node = %p.node.short(), "node authenticated");
        out.push(Output::Persist(StoreOp::Node(row)));
        out.push(Output::Send {
            conn,
            msg: ServerMsg::Welcome {
                node: p.node,
                observed,
                heartbeat_ms: self.cfg.heartbeat.as_millis() as u64,
                agent_ttl_ms: self.cfg.agent_ttl.as_millis() as u64,
            },
        });
        if !snapshot.is_empty() {
            out.push(Output::Send {
                conn,
                msg: ServerMsg::Subscriptions { entries: snapshot },
            });
        }
    }

    /// The transport saw the session's peer move to `addr` (QUIC migration after a NAT
    /// rebinding): later introductions give peers the new address.
    pub fn observe_addr(&mut self, conn: ConnId, addr: SocketAddr) {
        let Some(s) = self.sessions.get_mut(&conn) else {
            return;
        };
        if s.observed == addr {
            return;
        }
        s.observed = addr;
        if let Phase::Authed { node, tenant } = s.phase {
            if let Some(n) = self.node_mut(tenant, &node) {
                n.observed = Some(addr);
            }
            tracing::debug!(node = %node.short(), %addr, "peer address changed");
        }
    }

    /// Marks `node` offline if `conn` is its live session; drops its subscriptions.
    pub(super) fn node_offline(
        &mut self,
        now: Instant,
        tenant: usize,
        node: NodeId,
        conn: ConnId,
        out: &mut Vec<Output>,
    ) {
        let unix = self.unix_ms(now);
        let Some((name, t)) = self.tenants.get_index_mut(tenant) else {
            return;
        };
        let Some(state) = t.nodes.get_mut(&node).filter(|s| s.conn == Some(conn)) else {
            return;
        };
        state.conn = None;
        state.last_seen_unix_ms = unix;
        out.push(Output::Persist(StoreOp::Node(NodeRow {
            tenant: name.clone(),
            node,
            observed: state.observed,
            candidates: state.candidates.clone(),
            home_relay: state.home_relay.clone(),
            last_seen_unix_ms: unix,
        })));
        tracing::info!(node = %node.short(), "node offline");
        if t.subs.shift_remove(&node).is_some() {
            self.push_subscriptions(tenant, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::same_secret;

    #[test]
    fn secret_comparison() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "abcd"));
        assert!(!same_secret("", "a"));
        assert!(same_secret("", ""));
    }
}
