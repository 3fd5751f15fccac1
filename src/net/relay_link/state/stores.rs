//! Store-and-forward requests on the relay link: each sealed message is sent as
//! [`ClientMsg::Store`] on the transport in use (or when one is up), sent again every
//! [`STORE_RETRY`] until the relay's `StoreAck` (a UDP datagram can be lost either way),
//! and given up after [`STORE_ATTEMPTS`] tries. Every store ends in exactly one
//! [`LinkEvent::Stored`].

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use agentmesh_proto::relay::{ClientMsg, Payload, StoreOutcome};
use agentmesh_proto::NodeId;

use super::RelayLinkState;
use crate::net::relay_link::events::LinkEvent;

/// Time between tries of one store.
pub const STORE_RETRY: Duration = Duration::from_secs(1);
/// Tries of one store (connected or not) before it is given up.
pub const STORE_ATTEMPTS: u32 = 5;

/// A store the relay has not acknowledged yet.
#[derive(Debug, Clone)]
pub(super) struct PendingStore {
    to: NodeId,
    sealed: Vec<u8>,
    attempts: u32,
    next_try: Instant,
}

impl RelayLinkState {
    /// Asks the relay to keep `sealed` (a message sealed to `to`'s node key) until `to`
    /// connects. Returns the id its [`LinkEvent::Stored`] will carry.
    pub fn store(&mut self, now: Instant, to: NodeId, sealed: Vec<u8>) -> u64 {
        self.next_store += 1;
        let id = self.next_store;
        self.stores.insert(
            id,
            PendingStore {
                to,
                sealed,
                attempts: 0,
                next_try: now,
            },
        );
        self.try_store(now, id);
        id
    }

    /// Stores waiting for the relay's answer.
    pub fn stores_pending(&self) -> usize {
        self.stores.len()
    }

    /// One try of store `id`: sent if connected, and counted either way.
    fn try_store(&mut self, now: Instant, id: u64) {
        let connected = self.is_connected();
        let Some(p) = self.stores.get_mut(&id) else {
            return;
        };
        if p.attempts >= STORE_ATTEMPTS {
            self.stores.remove(&id);
            self.events
                .push_back(LinkEvent::Stored { id, outcome: None });
            return;
        }
        p.attempts += 1;
        p.next_try = now + STORE_RETRY;
        if connected {
            let msg = ClientMsg::Store {
                id,
                to: p.to,
                sealed: Payload(p.sealed.clone()),
            };
            self.push_active(&msg);
        }
    }

    /// Tries the stores whose time has come.
    pub(super) fn tick_stores(&mut self, now: Instant) {
        let due: Vec<u64> = self
            .stores
            .iter()
            .filter(|(_, p)| p.next_try <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            self.try_store(now, id);
        }
    }

    /// Sends every waiting store at once (the link just came up).
    pub(super) fn resend_stores(&mut self, now: Instant) {
        let ids: Vec<u64> = self.stores.keys().copied().collect();
        for id in ids {
            self.try_store(now, id);
        }
    }

    /// The relay answered store `id`.
    pub(super) fn on_store_ack(&mut self, id: u64, outcome: StoreOutcome) {
        if self.stores.remove(&id).is_some() {
            self.events.push_back(LinkEvent::Stored {
                id,
                outcome: Some(outcome),
            });
        }
    }

    /// When the next store try is due.
    pub(super) fn stores_deadline(&self) -> Option<Instant> {
        self.stores.values().map(|p| p.next_try).min()
    }
}

/// The pending stores of a link, by id.
pub(super) type Stores = BTreeMap<u64, PendingStore>;
