//! `SimRuntime`: a `quinn::Runtime` whose clock is tokio's (virtual when paused), so quinn's
//! timers and its idea of "now" follow the simulation.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

/// quinn's runtime on netsim: tokio tasks and timers, tokio's clock for `now`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SimRuntime;

impl quinn::Runtime for SimRuntime {
    fn new_timer(&self, i: Instant) -> Pin<Box<dyn quinn::AsyncTimer>> {
        // quinn implements AsyncTimer for tokio's Sleep (runtime-tokio).
        Box::pin(tokio::time::sleep_until(tokio::time::Instant::from_std(i)))
    }

    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) {
        tokio::spawn(future);
    }

    fn wrap_udp_socket(
        &self,
        _socket: std::net::UdpSocket,
    ) -> io::Result<Arc<dyn quinn::AsyncUdpSocket>> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "netsim has no real sockets: use SimNet::bind or SimNet::endpoint",
        ))
    }

    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }
}
