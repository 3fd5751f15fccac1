//! `SimUdpSocket`: a UDP socket bound on a simulated host, usable by quinn
//! (`quinn::AsyncUdpSocket`) and directly (`send_to` / `recv_from`).

use std::fmt;
use std::future::poll_fn;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use quinn::udp::{RecvMeta, Transmit};

use super::SimNet;
use crate::sim::HostId;

/// A UDP socket on a simulated host. Dropping it frees the port.
pub struct SimUdpSocket {
    net: SimNet,
    host: HostId,
    local: SocketAddr,
}

impl fmt::Debug for SimUdpSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimUdpSocket")
            .field("host", &self.host)
            .field("local", &self.local)
            .finish()
    }
}

impl SimUdpSocket {
    pub(super) fn new(net: SimNet, host: HostId, local: SocketAddr) -> SimUdpSocket {
        SimUdpSocket { net, host, local }
    }

    /// The host it lives on.
    pub fn host(&self) -> HostId {
        self.host
    }

    /// The local address (the host's first interface and the bound port).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Sends one datagram now (never blocks; the network may lose it).
    pub async fn send_to(&self, data: &[u8], to: SocketAddr) -> io::Result<usize> {
        self.net.send(
            self.host,
            self.local.port(),
            to,
            Bytes::copy_from_slice(data),
        )?;
        Ok(data.len())
    }

    /// Waits for a datagram; returns its length (truncated to `buf`) and source.
    pub async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        poll_fn(|cx| {
            let mut st = self.net.lock();
            let Some(slot) = st.sockets.get_mut(&(self.host, self.local.port())) else {
                return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
            };
            match slot.queue.pop_front() {
                Some(d) => {
                    let n = d.data.len().min(buf.len());
                    buf[..n].copy_from_slice(&d.data[..n]);
                    Poll::Ready(Ok((n, d.from)))
                }
                None => {
                    slot.waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await
    }
}

impl Drop for SimUdpSocket {
    fn drop(&mut self) {
        self.net.unbind(self.host, self.local.port());
    }
}

/// Sends never block in the simulator, so the socket is always writable.
#[derive(Debug)]
struct AlwaysWritable;

impl quinn::UdpPoller for AlwaysWritable {
    fn poll_writable(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl quinn::AsyncUdpSocket for SimUdpSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn quinn::UdpPoller>> {
        Box::pin(AlwaysWritable)
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        // One datagram per transmit: max_transmit_segments() is 1.
        let data = Bytes::copy_from_slice(transmit.contents);
        self.net
            .send(self.host, self.local.port(), transmit.destination, data)
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let mut st = self.net.lock();
        let Some(slot) = st.sockets.get_mut(&(self.host, self.local.port())) else {
            return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
        };
        let mut n = 0;
        while n < bufs.len().min(meta.len()) {
            let Some(d) = slot.queue.pop_front() else {
                break;
            };
            let len = d.data.len().min(bufs[n].len());
            bufs[n][..len].copy_from_slice(&d.data[..len]);
            let m = RecvMeta {
                addr: d.from,
                len,
                stride: len,
                dst_ip: Some(d.local.ip()),
                ..RecvMeta::default()
            };
            meta[n] = m;
            n += 1;
        }
        if n > 0 {
            return Poll::Ready(Ok(n));
        }
        slot.waker = Some(cx.waker().clone());
        Poll::Pending
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }

    fn may_fragment(&self) -> bool {
        false
    }
}
