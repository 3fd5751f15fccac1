//! The datagram socket the agentmesh services run their UDP loops on without binding it
//! themselves: [`DatagramSocket`] (receive from, send to) with its implementation for
//! tokio's `UdpSocket`, and, with the `quinn` feature, [`QuinnDatagram`], which turns any
//! `quinn::AsyncUdpSocket` (a real quinn socket, or a simulated one such as netsim's
//! `SimUdpSocket`) into one. Shared by the rendezvous and the relay.

use std::fmt;
use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::task::{ready, Context, Poll, Waker};

use tokio::io::ReadBuf;

#[cfg(feature = "quinn")]
mod quinn_datagram;

#[cfg(feature = "quinn")]
pub use quinn_datagram::QuinnDatagram;

/// A datagram socket: receive from anyone, send to anyone.
pub trait DatagramSocket: Send + Sync + fmt::Debug {
    /// Receives one datagram into `buf` (truncated to its length): length and sender.
    fn poll_recv_from(
        &self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<(usize, SocketAddr)>>;

    /// Sends `buf` as one datagram to `to`.
    fn poll_send_to(
        &self,
        cx: &mut Context<'_>,
        buf: &[u8],
        to: SocketAddr,
    ) -> Poll<io::Result<usize>>;

    /// The bound address.
    fn local_addr(&self) -> io::Result<SocketAddr>;

    /// Receives a datagram only if one is already waiting (`WouldBlock` otherwise).
    fn try_recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        let mut cx = Context::from_waker(Waker::noop());
        match self.poll_recv_from(&mut cx, buf) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl dyn DatagramSocket {
    /// Waits for one datagram.
    pub async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        poll_fn(|cx| self.poll_recv_from(cx, buf)).await
    }

    /// Sends one datagram.
    pub async fn send_to(&self, buf: &[u8], to: SocketAddr) -> io::Result<usize> {
        poll_fn(|cx| self.poll_send_to(cx, buf, to)).await
    }
}

impl DatagramSocket for tokio::net::UdpSocket {
    fn poll_recv_from(
        &self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<(usize, SocketAddr)>> {
        let mut rb = ReadBuf::new(buf);
        let from = ready!(tokio::net::UdpSocket::poll_recv_from(self, cx, &mut rb))?;
        Poll::Ready(Ok((rb.filled().len(), from)))
    }

    fn poll_send_to(
        &self,
        cx: &mut Context<'_>,
        buf: &[u8],
        to: SocketAddr,
    ) -> Poll<io::Result<usize>> {
        tokio::net::UdpSocket::poll_send_to(self, cx, buf, to)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        tokio::net::UdpSocket::local_addr(self)
    }

    fn try_recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        tokio::net::UdpSocket::try_recv_from(self, buf)
    }
}
