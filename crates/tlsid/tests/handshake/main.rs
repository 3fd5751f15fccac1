//! Real loopback handshakes (quinn and TCP + tokio-rustls) with node-key identities.

// Test helpers outside #[test] fns may unwrap too (clippy only exempts the fns themselves).
#![allow(clippy::unwrap_used)]

mod forged;
mod quic;
mod tcp;

use std::time::Duration;

/// Upper bound for any single handshake or close in these tests.
pub(crate) const STEP: Duration = Duration::from_secs(10);

/// Runs `fut` with the [`STEP`] bound, panicking on timeout.
pub(crate) async fn bounded<F: std::future::Future>(fut: F) -> F::Output {
    tokio::time::timeout(STEP, fut)
        .await
        .expect("step took longer than the test bound")
}
