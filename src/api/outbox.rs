//! A connection's outgoing queue, bounded in messages and in bytes. When a client stops
//! reading and its queue fills, the daemon drops the client (a "slow consumer", as NATS
//! calls it) instead of growing without bound.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

/// The sending half, held by the server's connection table.
#[derive(Debug, Clone)]
pub struct Outbox {
    tx: mpsc::Sender<Vec<u8>>,
    queued_bytes: Arc<AtomicUsize>,
    max_bytes: usize,
}

/// The receiving half, held by the connection's writer task.
#[derive(Debug)]
pub struct OutboxReceiver {
    rx: mpsc::Receiver<Vec<u8>>,
    queued_bytes: Arc<AtomicUsize>,
}

/// Why a message was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OutboxError {
    /// The client is not reading fast enough.
    #[error("client is not reading: outgoing queue full")]
    Full,
    /// The connection is gone.
    #[error("connection closed")]
    Closed,
}

/// A queue of at most `max_messages` messages and `max_bytes` bytes (one message may
/// exceed `max_bytes` alone when the queue is empty, so big replies still pass).
pub fn outbox(max_messages: usize, max_bytes: usize) -> (Outbox, OutboxReceiver) {
    let (tx, rx) = mpsc::channel(max_messages.max(1));
    let queued_bytes = Arc::new(AtomicUsize::new(0));
    (
        Outbox {
            tx,
            queued_bytes: queued_bytes.clone(),
            max_bytes,
        },
        OutboxReceiver { rx, queued_bytes },
    )
}

impl Outbox {
    /// Queues one line without waiting.
    pub fn push(&self, line: Vec<u8>) -> Result<(), OutboxError> {
        let len = line.len();
        let queued = self.queued_bytes.load(Ordering::Acquire);
        if queued > 0 && queued + len > self.max_bytes {
            return Err(OutboxError::Full);
        }
        self.queued_bytes.fetch_add(len, Ordering::AcqRel);
        self.tx.try_send(line).map_err(|e| {
            self.queued_bytes.fetch_sub(len, Ordering::AcqRel);
            match e {
                mpsc::error::TrySendError::Full(_) => OutboxError::Full,
                mpsc::error::TrySendError::Closed(_) => OutboxError::Closed,
            }
        })
    }
}

impl OutboxReceiver {
    /// Waits for the next line.
    pub async fn recv(&mut self) -> Option<Vec<u8>> {
        let line = self.rx.recv().await?;
        self.queued_bytes.fetch_sub(line.len(), Ordering::AcqRel);
        Some(line)
    }

    /// Takes a line if one is ready.
    pub fn try_recv(&mut self) -> Option<Vec<u8>> {
        let line = self.rx.try_recv().ok()?;
        self.queued_bytes.fetch_sub(line.len(), Ordering::AcqRel);
        Some(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bounded_by_count_and_bytes() {
        let (tx, mut rx) = outbox(3, 100);
        for _ in 0..3 {
            tx.push(vec![0; 10]).unwrap();
        }
        assert_eq!(tx.push(vec![0; 10]), Err(OutboxError::Full));
        while rx.try_recv().is_some() {}
        tx.push(vec![0; 500]).unwrap(); // alone, may exceed the byte bound
        assert_eq!(tx.push(vec![0; 1]), Err(OutboxError::Full));
        assert_eq!(rx.recv().await.unwrap().len(), 500);
        tx.push(vec![0; 60]).unwrap();
        assert_eq!(tx.push(vec![0; 60]), Err(OutboxError::Full));
        drop(rx);
        assert_eq!(tx.push(vec![0; 1]), Err(OutboxError::Closed));
    }
}
