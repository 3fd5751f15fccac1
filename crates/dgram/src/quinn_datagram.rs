//! [`QuinnDatagram`]: any `quinn::AsyncUdpSocket` as a [`DatagramSocket`].

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};

use crate::DatagramSocket;

/// Receive buffer for sockets that may return GRO batches.
const GRO_BUF: usize = 64 * 1024;

/// A `quinn::AsyncUdpSocket` used as a [`DatagramSocket`] (e.g. netsim's `SimUdpSocket`
/// for a simulated second STUN address). Segments of a GRO batch are returned one by one.
pub struct QuinnDatagram {
    inner: Arc<dyn AsyncUdpSocket>,
    /// Tells when `inner` can send again after a `WouldBlock`.
    poller: Mutex<Pin<Box<dyn UdpPoller>>>,
    /// Further segments of the last GRO batch, not yet returned.
    pending: Mutex<VecDeque<(Vec<u8>, SocketAddr)>>,
}

impl fmt::Debug for QuinnDatagram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QuinnDatagram")
            .field("local", &self.inner.local_addr().ok())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl QuinnDatagram {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn AsyncUdpSocket>) -> Self {
        let poller = Mutex::new(inner.clone().create_io_poller());
        QuinnDatagram {
            inner,
            poller,
            pending: Mutex::new(VecDeque::new()),
        }
    }

    /// Keeps every segment after the first of a batch received into `buf`.
    fn keep_rest(&self, buf: &[u8], meta: &RecvMeta) {
        let mut pending = lock(&self.pending);
        for seg in buf[..meta.len].chunks(meta.stride.max(1)).skip(1) {
            pending.push_back((seg.to_vec(), meta.addr));
        }
    }
}

impl DatagramSocket for QuinnDatagram {
    fn poll_recv_from(
        &self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<(usize, SocketAddr)>> {
        if let Some((seg, from)) = lock(&self.pending).pop_front() {
            let n = seg.len().min(buf.len());
            buf[..n].copy_from_slice(&seg[..n]);
            return Poll::Ready(Ok((n, from)));
        }
        let mut meta = [RecvMeta::default()];
        if self.inner.max_receive_segments() <= 1 {
            // One datagram per receive (no GRO): straight into the caller's buffer.
            ready!(self
                .inner
                .poll_recv(cx, &mut [IoSliceMut::new(buf)], &mut meta))?;
            return Poll::Ready(Ok((meta[0].len.min(buf.len()), meta[0].addr)));
        }
        let mut batch = vec![0u8; GRO_BUF];
        ready!(self
            .inner
            .poll_recv(cx, &mut [IoSliceMut::new(&mut batch)], &mut meta))?;
        let meta = meta[0];
        self.keep_rest(&batch, &meta);
        let n = meta.stride.min(meta.len).min(buf.len());
        buf[..n].copy_from_slice(&batch[..n]);
        Poll::Ready(Ok((n, meta.addr)))
    }

    fn poll_send_to(
        &self,
        cx: &mut Context<'_>,
        buf: &[u8],
        to: SocketAddr,
    ) -> Poll<io::Result<usize>> {
        let t = Transmit {
            destination: to,
            ecn: None,
            contents: buf,
            segment_size: None,
            src_ip: None,
        };
        loop {
            ready!(lock(&self.poller).as_mut().poll_writable(cx))?;
            match self.inner.try_send(&t) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r.map(|()| buf.len())),
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}
