//! The daemon's side of store-and-forward, between the router and the relay link:
//! [`Mailbox::store`] seals a router's `Output::Store` frame to the recipient daemon's
//! node key (`agentmesh_proto::sealed`, Noise `X`) and leaves it at the relay, then
//! answers the router with `store_done`; [`deliver_mail`] opens what the relay delivers,
//! checks that the sealing key is the node the relay names as sender, and hands the
//! frame to the router (`Router::mail`). The relay only ever sees ciphertext.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use agentmesh_proto::frame::{from_bytes, to_bytes};
use agentmesh_proto::peer::StoredFrame;
use agentmesh_proto::relay::StoreOutcome;
use agentmesh_proto::{sealed, ErrorCode, ErrorObject, NodeId, SecretKey};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::relay_link::{Mail, RelayStorer};
use crate::api::server::RouterHandle;

/// Largest sealed message left at the relay (its frames are at most 64 KiB, and the
/// store message has its own header).
pub const MAX_SEALED: usize = 60 * 1024;

/// Store-and-forward counters (for `/metrics`).
#[derive(Debug, Default)]
pub struct MailCounters {
    /// Requests the relay accepted to store.
    pub stored: AtomicU64,
    /// Requests that could not be stored.
    pub store_failed: AtomicU64,
    /// Stored messages received and handed to the router.
    pub delivered: AtomicU64,
    /// Stored messages that did not open or decode.
    pub rejected: AtomicU64,
}

/// Seals and stores frames for the router.
#[derive(Clone)]
pub struct Mailbox {
    key: SecretKey,
    storer: Option<RelayStorer>,
    router: RouterHandle,
    counters: Arc<MailCounters>,
}

impl Mailbox {
    /// A mailbox for node `key`; without a relay every store fails at once.
    pub fn new(
        key: SecretKey,
        storer: Option<RelayStorer>,
        router: RouterHandle,
        counters: Arc<MailCounters>,
    ) -> Self {
        Mailbox {
            key,
            storer,
            router,
            counters,
        }
    }

    /// Seals `frame` for `node` and leaves it at the relay in the background; the
    /// router learns the outcome through `store_done(task_id, …)`.
    pub fn store(&self, node: NodeId, task_id: String, frame: StoredFrame) {
        let this = self.clone();
        tokio::spawn(async move {
            let result = this.seal_and_store(node, &frame).await;
            let counter = match &result {
                Ok(()) => &this.counters.stored,
                Err(_) => &this.counters.store_failed,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = &result {
                warn!(peer = %node.short(), task = %task_id, error = %e.message,
                      "request not stored at the relay");
            }
            this.router
                .apply(|r, now| r.store_done(now, &task_id, result));
        });
    }

    async fn seal_and_store(&self, node: NodeId, frame: &StoredFrame) -> Result<(), ErrorObject> {
        let Some(storer) = &self.storer else {
            return Err(unavailable("no relay is configured"));
        };
        let plain = to_bytes(frame).map_err(|e| unavailable(format!("does not encode: {e}")))?;
        let sealed = sealed::seal(&self.key, node, &plain)
            .map_err(|e| unavailable(format!("does not seal: {e}")))?;
        if sealed.len() > MAX_SEALED {
            return Err(ErrorObject::new(
                ErrorCode::InputInvalid,
                format!(
                    "the request is too large to store at the relay ({} bytes sealed, at most {MAX_SEALED})",
                    sealed.len()
                ),
            ));
        }
        match storer.store(node, sealed).await {
            Some(StoreOutcome::Stored) => Ok(()),
            Some(StoreOutcome::QuotaExceeded) => Err(unavailable(
                "the relay's mailbox for that node is full (quota exceeded)",
            )),
            Some(StoreOutcome::Unavailable) => Err(unavailable("the relay's storage failed")),
            None => Err(unavailable("the relay did not answer")),
        }
    }
}

fn unavailable(message: impl Into<String>) -> ErrorObject {
    ErrorObject::new(ErrorCode::DependencyFailed, message)
}

/// Opens every stored message the relay delivers to node `key` and hands it to the
/// router; ends when the relay link stops.
pub async fn deliver_mail(
    mut mail: mpsc::Receiver<Mail>,
    key: SecretKey,
    router: RouterHandle,
    counters: Arc<MailCounters>,
) {
    while let Some(m) = mail.recv().await {
        match open_mail(&key, &m) {
            Ok(frame) => {
                counters.delivered.fetch_add(1, Ordering::Relaxed);
                router.apply(|r, now| r.mail(now, m.from, frame));
            }
            Err(why) => {
                counters.rejected.fetch_add(1, Ordering::Relaxed);
                debug!(peer = %m.from.short(), %why, "stored message rejected");
            }
        }
    }
}

/// Why a delivered message was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    /// It does not open with our key.
    #[error("does not open: {0}")]
    Open(#[from] sealed::SealError),
    /// The node that sealed it is not the one the relay names.
    #[error("sealed by {sealed_by}, delivered as from another node")]
    WrongSender {
        /// The sealing node.
        sealed_by: NodeId,
    },
    /// It opened but is no stored frame.
    #[error("does not decode: {0}")]
    Decode(#[from] agentmesh_proto::frame::FrameError),
}

/// Opens one delivered message.
pub fn open_mail(key: &SecretKey, m: &Mail) -> Result<StoredFrame, MailError> {
    let (sealed_by, plain) = sealed::open(key, &m.sealed)?;
    if sealed_by != m.from {
        return Err(MailError::WrongSender { sealed_by });
    }
    Ok(from_bytes(&plain)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentmesh_proto::envelope::{Envelope, PrimitiveType, TraceContext};

    fn frame(from: &SecretKey) -> StoredFrame {
        let mut e = Envelope::new(
            "e1",
            PrimitiveType::Request,
            "2026-11-21T00:00:00Z",
            from.agent_id(),
            TraceContext::default(),
        );
        e.task_id = Some("t1".into());
        StoredFrame::Request(e)
    }

    #[test]
    fn mail_opens_only_for_its_node_and_its_true_sender() {
        let a = SecretKey::from_bytes(&[1; 32]);
        let b = SecretKey::from_bytes(&[2; 32]);
        let c = SecretKey::from_bytes(&[3; 32]);
        let f = frame(&a);
        let sealed = sealed::seal(&a, b.node_id(), &to_bytes(&f).unwrap()).unwrap();
        let good = Mail {
            from: a.node_id(),
            sealed: sealed.clone(),
        };
        assert_eq!(open_mail(&b, &good).unwrap(), f);
        assert!(matches!(open_mail(&c, &good), Err(MailError::Open(_))));
        let forged = Mail {
            from: c.node_id(),
            sealed,
        };
        assert!(matches!(
            open_mail(&b, &forged),
            Err(MailError::WrongSender { sealed_by }) if sealed_by == a.node_id()
        ));
    }
}
