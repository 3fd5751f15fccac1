//! Reports that a node is absent (the relay says it is not connected, or the rendezvous
//! refuses its introduction as offline), shared by whoever learns it and the dials that
//! use it: a dial in progress hears the report at once, a dial that starts within
//! [`ABSENT_MEMORY`] finds it remembered.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentmesh_proto::NodeId;
use tokio::sync::broadcast;

/// How long a report that a node is absent counts for a dial that starts later.
pub const ABSENT_MEMORY: Duration = Duration::from_secs(10);

/// Absence reports; cheap to clone (clones share them).
#[derive(Debug, Clone)]
pub struct Absence {
    tx: broadcast::Sender<NodeId>,
    at: Arc<Mutex<HashMap<NodeId, Instant>>>,
}

impl Default for Absence {
    fn default() -> Self {
        Absence {
            tx: broadcast::channel(64).0,
            at: Arc::default(),
        }
    }
}

impl Absence {
    /// `node` is said to be absent now.
    pub fn report(&self, node: NodeId) {
        let now = Instant::now();
        {
            let mut at = self.at.lock().unwrap_or_else(|e| e.into_inner());
            at.retain(|_, t| now.duration_since(*t) < ABSENT_MEMORY);
            at.insert(node, now);
        }
        let _ = self.tx.send(node);
    }

    /// Reports from now on (subscribe before starting what may cause one).
    pub(super) fn subscribe(&self) -> broadcast::Receiver<NodeId> {
        self.tx.subscribe()
    }

    /// Whether `node` was reported within [`ABSENT_MEMORY`].
    pub(super) fn recently(&self, node: &NodeId) -> bool {
        self.at
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(node)
            .is_some_and(|t| t.elapsed() < ABSENT_MEMORY)
    }
}

/// Returns once `node` has been reported absent (at once if it was recently).
pub(super) async fn reported(absence: &Absence, mut rx: broadcast::Receiver<NodeId>, node: NodeId) {
    if absence.recently(&node) {
        return;
    }
    loop {
        match rx.recv().await {
            Ok(n) if n == node => return,
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentmesh_proto::SecretKey;

    #[tokio::test]
    async fn a_report_reaches_dials_in_progress_and_dials_that_start_later() {
        let a = Absence::default();
        let (x, y) = (
            SecretKey::from_bytes(&[1; 32]).node_id(),
            SecretKey::from_bytes(&[2; 32]).node_id(),
        );
        let rx = a.subscribe();
        let waiting = tokio::spawn({
            let a = a.clone();
            async move { reported(&a, rx, x).await }
        });
        a.clone().report(y);
        a.report(x);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the dial in progress heard it")
            .unwrap();
        assert!(a.recently(&x) && a.recently(&y));
        let later = a.subscribe();
        tokio::time::timeout(Duration::from_secs(1), reported(&a, later, x))
            .await
            .expect("a later dial finds it remembered");
    }
}
