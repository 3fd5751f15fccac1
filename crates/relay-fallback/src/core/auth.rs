//! Authentication and link lifecycle: challenge, signature check, node pinning, closing.

use std::time::Instant;

use agentmesh_proto::relay::{self as wire, RefuseReason, RelayMsg, RELAY_VERSION};
use agentmesh_proto::{NodeId, Signature};
use rand::RngCore;
use tracing::debug;

use super::{mail, Authed, Link, LinkState, Relay, State};
use crate::bucket::TokenBucket;
use crate::store::MailStore;

impl<S: MailStore> Relay<S> {
    pub(super) fn on_hello(&mut self, now: Instant, link: Link, version: u16, wire_len: usize) {
        if matches!(link, Link::Udp(_)) && wire_len < wire::MIN_UDP_HELLO {
            self.counters.dropped_malformed += 1;
            return;
        }
        if self.draining || version != RELAY_VERSION {
            let reason = if self.draining {
                RefuseReason::Draining
            } else {
                RefuseReason::Version
            };
            self.refuse(link, reason);
            return;
        }
        if !self.handshakes.take(now, 1) {
            self.counters.dropped_handshake += 1;
            return;
        }
        let mut nonce = [0u8; 32];
        self.rng.fill_bytes(&mut nonce);
        let fresh = State::Pending {
            nonce: Some(nonce),
            since: now,
        };
        match self.links.get(&link).map(|l| &l.state) {
            Some(State::Closing) => return,
            Some(State::Pending { .. }) => {}
            Some(State::Authed(_)) => {
                self.unpin(link);
                self.pending += 1;
            }
            None => self.add_pending(now, link),
        }
        if let Some(ls) = self.links.get_mut(&link) {
            ls.state = fresh;
            ls.last_seen = now;
        }
        self.send(
            link,
            &RelayMsg::Challenge {
                nonce,
                relay: self.id,
            },
        );
    }

    pub(super) fn on_auth(&mut self, now: Instant, link: Link, node: NodeId, sig: Signature) {
        // The nonce is taken out whatever happens next: it is single-use.
        let nonce = match self.links.get_mut(&link).map(|l| &mut l.state) {
            Some(State::Pending { nonce, .. }) => nonce.take(),
            _ => None,
        };
        let verified = nonce.is_some_and(|n| {
            wire::verify_auth(&node, &sig, &n, &self.id, link.transport()).is_ok()
        });
        if !verified {
            self.counters.auth_failed += 1;
            debug!(node = %node.short(), "relay authentication failed");
            self.refuse(link, RefuseReason::AuthFailed);
            return;
        }
        if self.nodes.len() >= self.limits.max_clients && !self.nodes.contains_key(&node) {
            self.counters.refused_full += 1;
            self.refuse(link, RefuseReason::Full);
            return;
        }
        if let Some(old) = self.nodes.get(&node).copied().filter(|old| *old != link) {
            self.refuse(old, RefuseReason::Replaced);
        }
        self.pin(now, link, node);
        self.counters.auth_ok += 1;
        let max_frame = u32::try_from(self.limits.max_frame).unwrap_or(u32::MAX);
        self.send(link, &RelayMsg::Welcome { node, max_frame });
        self.pump_mail(now, link);
    }

    fn pin(&mut self, now: Instant, link: Link, node: NodeId) {
        let l = &self.limits;
        let burst = l.burst_secs.max(1);
        let authed = Authed {
            node,
            bytes: TokenBucket::new(now, l.rate_bytes_per_sec, l.rate_bytes_per_sec * burst),
            packets: TokenBucket::new(now, l.rate_packets_per_sec, l.rate_packets_per_sec * burst),
            mail: mail::Cursor::new(now),
        };
        if let Some(ls) = self.links.get_mut(&link) {
            ls.state = State::Authed(Box::new(authed));
            ls.last_seen = now;
            self.pending -= 1;
            self.nodes.insert(node, link);
        }
    }

    /// Drops the node pin of an authenticated link (it becomes pending again).
    fn unpin(&mut self, link: Link) {
        if let Some(State::Authed(a)) = self.links.get(&link).map(|l| &l.state) {
            let node = a.node;
            if self.nodes.get(&node) == Some(&link) {
                self.nodes.remove(&node);
            }
        }
    }

    /// Tells `link` why it is refused, then closes it.
    pub(super) fn refuse(&mut self, link: Link, reason: RefuseReason) {
        match link {
            Link::Udp(_) => {
                self.counters.links_closed += 1;
                self.forget(link);
                self.send(link, &RelayMsg::Refused { reason });
            }
            Link::Stream(_) => {
                self.send(link, &RelayMsg::Refused { reason });
                self.close(link);
            }
        }
    }

    /// Closes a link: a stream flushes its queue then closes; UDP state is dropped at once.
    pub(super) fn close(&mut self, link: Link) {
        self.counters.links_closed += 1;
        match link {
            Link::Udp(_) => self.forget(link),
            Link::Stream(conn) => {
                self.unpin(link);
                if let Some(ls) = self.links.get_mut(&link) {
                    if matches!(ls.state, State::Pending { .. }) {
                        self.pending -= 1;
                    }
                    ls.state = State::Closing;
                    ls.inbuf = Vec::new();
                    if !ls.signalled {
                        ls.signalled = true;
                        self.events.push_back(super::Event::StreamReady(conn));
                    }
                }
            }
        }
    }

    /// Removes every trace of a link.
    pub(super) fn forget(&mut self, link: Link) {
        self.unpin(link);
        if let Some(ls) = self.links.swap_remove(&link) {
            if matches!(ls.state, State::Pending { .. }) {
                self.pending -= 1;
            }
        }
    }

    /// Starts tracking a new, not yet authenticated link (evicting the oldest pending
    /// one if the bound is reached).
    pub(super) fn add_pending(&mut self, now: Instant, link: Link) {
        self.make_room_for_pending();
        self.links.insert(
            link,
            LinkState::new(
                now,
                State::Pending {
                    nonce: None,
                    since: now,
                },
            ),
        );
        self.pending += 1;
    }

    /// Evicts the oldest pending link when the pending bound is reached.
    pub(super) fn make_room_for_pending(&mut self) {
        if self.pending < self.limits.max_pending {
            return;
        }
        let oldest = self
            .links
            .iter()
            .find(|(_, l)| matches!(l.state, State::Pending { .. }))
            .map(|(k, _)| *k);
        if let Some(link) = oldest {
            self.counters.dropped_handshake += 1;
            self.close(link);
        }
    }
}
