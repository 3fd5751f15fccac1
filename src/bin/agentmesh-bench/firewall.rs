//! A UDP socket with an outbound allow list, standing in for a firewall that lets a
//! daemon reach its rendezvous and relay but drops its UDP to everything else (so two
//! daemons on loopback cannot punch and stay on the relay path). Datagrams to other
//! destinations are dropped silently and counted, as a firewall would.

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};

/// The wrapped socket.
#[derive(Debug)]
pub(crate) struct Firewalled {
    inner: Arc<dyn AsyncUdpSocket>,
    allow: Vec<SocketAddr>,
    dropped: Arc<AtomicU64>,
}

impl Firewalled {
    /// `inner` may send only to `allow`; `dropped` counts the rest.
    pub(crate) fn new(
        inner: Arc<dyn AsyncUdpSocket>,
        allow: Vec<SocketAddr>,
        dropped: Arc<AtomicU64>,
    ) -> Firewalled {
        Firewalled {
            inner,
            allow,
            dropped,
        }
    }
}

impl AsyncUdpSocket for Firewalled {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        if self.allow.contains(&transmit.destination) {
            self.inner.try_send(transmit)
        } else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        self.inner.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}
