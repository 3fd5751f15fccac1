//! Store-and-forward: accepting sealed mail, delivering it in order when the recipient is
//! connected, deleting it when acknowledged, resending what was not acknowledged.

use std::time::{Duration, Instant};

use agentmesh_proto::relay::{Payload, RelayMsg, StoreOutcome};
use agentmesh_proto::NodeId;
use tracing::warn;

use super::{Link, Relay, State};
use crate::limits::MailLimits;
use crate::store::MailStore;

/// Delivery progress of one connected recipient.
#[derive(Debug, Clone)]
pub(super) struct Cursor {
    /// Highest id acknowledged (and deleted) in this session.
    acked: u64,
    /// Highest id sent in this session.
    sent: u64,
    /// Whether sent mails await an ack.
    inflight: bool,
    /// When the last batch was sent.
    sent_at: Instant,
}

impl Cursor {
    pub(super) fn new(now: Instant) -> Self {
        Self {
            acked: 0,
            sent: 0,
            inflight: false,
            sent_at: now,
        }
    }

    /// Whether the batch in flight has waited too long for its ack.
    pub(super) fn due(&self, now: Instant, limits: &MailLimits) -> bool {
        self.inflight
            && now.saturating_duration_since(self.sent_at) > Duration::from_millis(limits.resend_ms)
    }
}

impl<S: MailStore> Relay<S> {
    pub(super) fn on_store(
        &mut self,
        now: Instant,
        link: Link,
        from: NodeId,
        id: u64,
        to: NodeId,
        sealed: &[u8],
    ) {
        let outcome = self.store_mail(now, from, to, sealed);
        self.send(link, &RelayMsg::StoreAck { id, outcome });
        if outcome == StoreOutcome::Stored {
            if let Some(&dst) = self.nodes.get(&to) {
                self.pump_mail(now, dst);
            }
        }
    }

    fn store_mail(
        &mut self,
        now: Instant,
        from: NodeId,
        to: NodeId,
        sealed: &[u8],
    ) -> StoreOutcome {
        let now_ms = self.unix_ms(now);
        let quota = &self.limits.mail;
        let (count, bytes) = match self.store.usage(&to, now_ms) {
            Ok(u) => u,
            Err(e) => return self.store_failed(&e),
        };
        if count >= quota.max_messages_per_node
            || bytes + sealed.len() as u64 > quota.max_bytes_per_node
        {
            self.counters.mail_quota += 1;
            return StoreOutcome::QuotaExceeded;
        }
        let expires = now_ms.saturating_add(quota.ttl_secs.saturating_mul(1000));
        match self.store.insert(&to, &from, sealed, expires) {
            Ok(_) => {
                self.counters.mail_stored += 1;
                StoreOutcome::Stored
            }
            Err(e) => self.store_failed(&e),
        }
    }

    fn store_failed(&mut self, e: &crate::store::StoreError) -> StoreOutcome {
        warn!(error = %e, "mail store failed");
        self.counters.store_errors += 1;
        StoreOutcome::Unavailable
    }

    fn cursor(&mut self, link: Link) -> Option<(NodeId, &mut Cursor)> {
        match &mut self.links.get_mut(&link)?.state {
            State::Authed(a) => Some((a.node, &mut a.mail)),
            _ => None,
        }
    }

    /// Sends the next batch of mail to `link` unless a batch is in flight.
    pub(super) fn pump_mail(&mut self, now: Instant, link: Link) {
        let Some((node, cursor)) = self.cursor(link) else {
            return;
        };
        if cursor.inflight {
            return;
        }
        let after = cursor.acked;
        let now_ms = self.unix_ms(now);
        let mails = match self
            .store
            .pending(&node, after, self.limits.mail.batch, now_ms)
        {
            Ok(m) => m,
            Err(e) => {
                self.store_failed(&e);
                return;
            }
        };
        let Some(last) = mails.last().map(|m| m.id) else {
            return;
        };
        let mut prev = after;
        for m in mails {
            let msg = RelayMsg::Mail {
                id: m.id,
                prev,
                from: m.from,
                sealed: Payload(m.sealed),
            };
            prev = m.id;
            self.send(link, &msg);
        }
        if let Some((_, cursor)) = self.cursor(link) {
            cursor.sent = last;
            cursor.inflight = true;
            cursor.sent_at = now;
        }
    }

    pub(super) fn on_mail_ack(&mut self, now: Instant, link: Link, id: u64) {
        let Some((node, cursor)) = self.cursor(link) else {
            return;
        };
        if id <= cursor.acked || id > cursor.sent {
            return;
        }
        cursor.acked = id;
        let done = id == cursor.sent;
        if done {
            cursor.inflight = false;
        }
        match self.store.delete_through(&node, id) {
            Ok(n) => self.counters.mail_delivered += n,
            Err(e) => {
                self.store_failed(&e);
            }
        }
        if done {
            self.pump_mail(now, link);
        }
    }

    pub(super) fn resend_mail(&mut self, now: Instant, link: Link) {
        if let Some((_, cursor)) = self.cursor(link) {
            cursor.inflight = false;
        }
        self.pump_mail(now, link);
    }

    pub(super) fn purge_mail(&mut self, now: Instant) {
        let now_ms = self.unix_ms(now);
        match self.store.purge_expired(now_ms) {
            Ok(n) => self.counters.mail_expired += n,
            Err(e) => {
                self.store_failed(&e);
            }
        }
    }
}
