//! The QUIC UDP socket, shared with the STUN responder: a wrapper around quinn's socket
//! that answers STUN Binding requests itself and hands everything else to quinn.
//!
//! STUN is recognised by its first two bits (00, where QUIC always sets the fixed bit
//! 0x40 because the endpoint does not advertise `grease_quic_bit`) plus the magic cookie
//! or the RFC 3489 Binding type. GRO batches (`len != stride`) are never diverted.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};

use crate::stun;
use agentmesh_dgram::DatagramSocket;

/// Most STUN datagrams answered in one `poll_recv` before yielding.
const MAX_DIVERTED_PER_POLL: usize = 64;

/// quinn's socket with STUN diverted.
pub(crate) struct StunDivert {
    inner: Arc<dyn AsyncUdpSocket>,
    local: SocketAddr,
    other: Option<SocketAddr>,
    answered: Arc<AtomicU64>,
}

impl fmt::Debug for StunDivert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StunDivert")
            .field("local", &self.local)
            .finish()
    }
}

impl StunDivert {
    /// Wraps `inner`, answering STUN with `other` as the second observer; counts answers.
    pub(crate) fn new(
        inner: Arc<dyn AsyncUdpSocket>,
        other: Option<SocketAddr>,
        answered: Arc<AtomicU64>,
    ) -> io::Result<Self> {
        let local = inner.local_addr()?;
        Ok(StunDivert {
            inner,
            local,
            other,
            answered,
        })
    }

    /// Answers `pkt` if it is a Binding request; true when it was STUN (answered or not).
    fn divert(&self, pkt: &[u8], meta: &RecvMeta) -> bool {
        if meta.len != meta.stride || !stun::looks_like_stun(pkt) {
            return false;
        }
        let local = SocketAddr::new(meta.dst_ip.unwrap_or(self.local.ip()), self.local.port());
        if let Ok(resp) = stun::respond(pkt, meta.addr, local, self.other) {
            let t = Transmit {
                destination: meta.addr,
                ecn: None,
                contents: &resp,
                segment_size: None,
                src_ip: meta.dst_ip,
            };
            // A lost answer is retried by the STUN client.
            if self.inner.try_send(&t).is_ok() {
                self.answered.fetch_add(1, Ordering::Relaxed);
            }
        }
        true
    }
}

impl AsyncUdpSocket for StunDivert {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let mut diverted = 0;
        loop {
            let n = match self.inner.poll_recv(cx, bufs, meta) {
                Poll::Ready(Ok(n)) => n,
                other => return other,
            };
            let mut kept = 0;
            for i in 0..n {
                let m = meta[i];
                if self.divert(&bufs[i][..m.len.min(bufs[i].len())], &m) {
                    diverted += 1;
                    continue;
                }
                if kept != i {
                    let (head, tail) = bufs.split_at_mut(i);
                    head[kept][..m.len].copy_from_slice(&tail[0][..m.len]);
                    meta[kept] = m;
                }
                kept += 1;
            }
            if kept > 0 {
                return Poll::Ready(Ok(kept));
            }
            if diverted >= MAX_DIVERTED_PER_POLL {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
        }
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

/// Serves STUN only on a second socket (the second observer).
pub(crate) async fn stun_only(
    socket: Arc<dyn DatagramSocket>,
    other: Option<SocketAddr>,
    answered: Arc<AtomicU64>,
) {
    let Ok(local) = socket.local_addr() else {
        return;
    };
    let mut buf = vec![0u8; 2048];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        if let Ok(resp) = stun::respond(&buf[..n], from, local, other) {
            if socket.send_to(&resp, from).await.is_ok() {
                answered.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
