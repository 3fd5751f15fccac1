//! UDP driver: one receive task feeding the core, one send task draining it round-robin.
//!
//! On a socket the relay binds itself ([`bind`]) the IO is batched through `quinn-udp`:
//! `recvmmsg` with GRO in (many datagrams per system call, each segment handed to the
//! core), `sendmsg` with GSO out (consecutive datagrams for the same client and of the
//! same size leave in one call), and 4 MiB socket buffers. Forwarded `Send`s are turned
//! into `Recv`s in the receive buffer by the core ([`crate::Relay::forward_in_place`])
//! and the receive task sends them from there, a GRO batch for one client as one GSO
//! send; only what the core queues goes through the send task. On any
//! [`DatagramSocket`] a caller provides (e.g. netsim's simulated sockets) it is one
//! datagram per call.

use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;

use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::{Direction, ServerError, Shared};
use crate::core::Forward;
use agentmesh_dgram::DatagramSocket;

/// Datagrams taken from the core per lock.
const BATCH: usize = 64;
/// Receive buffers per `recvmmsg`, each large enough for one GRO batch (64 KiB).
const RECV_SLOTS: usize = 8;
/// Size of one receive buffer: the largest UDP payload (GRO batches are capped there).
const RECV_SLOT: usize = 1 << 16;
/// Largest GSO send (the kernel caps a UDP send at 64 KiB).
const MAX_GSO_BYTES: usize = 60_000;
/// Socket buffers asked for (Linux caps them at `net.core.rmem_max` / `wmem_max`): the
/// default ≈ 208 KiB overflows under a bulk QUIC stream, and every loss costs the
/// stream a congestion-window cut.
const UDP_BUFFER: usize = 4 << 20;

/// The relay's UDP socket.
#[derive(Debug, Clone)]
pub(crate) enum UdpIo {
    /// Bound by the relay: batched IO.
    Native(Arc<Native>),
    /// Provided by the caller: one datagram per call.
    Dyn(Arc<dyn DatagramSocket>),
}

/// A bound tokio socket with `quinn-udp`'s state for it (GRO, GSO, ECN options).
#[derive(Debug)]
pub(crate) struct Native {
    sock: UdpSocket,
    state: UdpSocketState,
}

impl UdpIo {
    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match self {
            UdpIo::Native(n) => n.sock.local_addr(),
            UdpIo::Dyn(s) => s.local_addr(),
        }
    }
}

/// Binds `addr` (batched IO, large buffers).
pub(super) fn bind(addr: SocketAddr) -> Result<UdpIo, ServerError> {
    let err = |source| ServerError::Bind { addr, source };
    let std_sock = std::net::UdpSocket::bind(addr).map_err(err)?;
    std_sock.set_nonblocking(true).map_err(err)?;
    let state = UdpSocketState::new((&std_sock).into()).map_err(err)?;
    let grown = state
        .set_recv_buffer_size((&std_sock).into(), UDP_BUFFER)
        .and_then(|()| state.set_send_buffer_size((&std_sock).into(), UDP_BUFFER));
    if let Err(e) = grown {
        tracing::warn!(error = %e, "cannot size the relay's UDP socket buffers");
    }
    let sock = UdpSocket::from_std(std_sock).map_err(err)?;
    Ok(UdpIo::Native(Arc::new(Native { sock, state })))
}

/// Spawns the UDP tasks on `sock` (bound for `addr`); returns its address.
pub(super) fn spawn(
    tasks: &mut JoinSet<()>,
    shared: Arc<Shared>,
    sock: UdpIo,
    addr: SocketAddr,
    stop: watch::Receiver<bool>,
) -> Result<SocketAddr, ServerError> {
    let local = sock
        .local_addr()
        .map_err(|source| ServerError::Bind { addr, source })?;
    match sock {
        UdpIo::Native(n) => {
            tasks.spawn(receive_batched(shared.clone(), n.clone(), stop.clone()));
            tasks.spawn(send_batched(shared, n, stop));
        }
        UdpIo::Dyn(s) => {
            tasks.spawn(receive(shared.clone(), s.clone(), stop.clone()));
            tasks.spawn(send(shared, s, stop));
        }
    }
    Ok(local)
}

async fn receive_batched(shared: Arc<Shared>, n: Arc<Native>, mut stop: watch::Receiver<bool>) {
    let mut storage = vec![0u8; RECV_SLOTS * RECV_SLOT];
    let mut bufs: Vec<IoSliceMut<'_>> =
        storage.chunks_mut(RECV_SLOT).map(IoSliceMut::new).collect();
    let mut meta = [RecvMeta::default(); RECV_SLOTS];
    let mut fates: Vec<Vec<Forward>> = (0..RECV_SLOTS).map(|_| Vec::new()).collect();
    let mut pieces = Vec::new();
    let mut gso = Vec::with_capacity(MAX_GSO_BYTES);
    loop {
        let got = tokio::select! {
            r = n.sock.async_io(Interest::READABLE, || {
                n.state.recv((&n.sock).into(), &mut bufs, &mut meta)
            }) => match r {
                Ok(got) => got,
                // ICMP errors surface here on some systems; the socket is still good.
                Err(_) => continue,
            },
            _ = stop.changed() => return,
        };
        let now = super::now();
        shared.with_core(|c| {
            let slots = meta.iter().zip(bufs.iter_mut()).zip(fates.iter_mut());
            for ((m, buf), fate) in slots.take(got) {
                let len = m.len.min(buf.len());
                let stride = m.stride.max(1);
                for datagram in buf[..len].chunks(stride) {
                    shared.tap(Direction::In, datagram);
                }
                c.forward_in_place(now, m.addr, &mut buf[..len], stride, fate);
            }
        });
        // Out of the lock: what the core rewrote in place leaves from the receive
        // buffers, runs for one client as one GSO send.
        let max_segments = n.state.max_gso_segments().max(1);
        pieces.clear();
        let slots = meta.iter().zip(bufs.iter()).zip(fates.iter()).enumerate();
        for (slot, ((m, buf), fate)) in slots.take(got) {
            let len = m.len.min(buf.len());
            let stride = m.stride.max(1);
            for (to, segments) in send_runs(fate, max_segments, stride) {
                pieces.push(Piece {
                    to,
                    slot,
                    bytes: (segments.start * stride).min(len)..(segments.end * stride).min(len),
                    stride,
                    segments: segments.len(),
                });
            }
        }
        for group in gso_groups(&pieces, max_segments) {
            let group = &pieces[group];
            let Some(first) = group.first() else {
                continue;
            };
            // One piece leaves from its receive buffer. Several (consecutive slots for
            // one client: datagrams that came without GRO, or GRO batches ending on a
            // full-size datagram) are copied together first: one copy for fewer system
            // calls here and fewer wake-ups of the receiver.
            let contents: &[u8] = if group.len() == 1 {
                &bufs[first.slot][first.bytes.clone()]
            } else {
                gso.clear();
                for p in group {
                    gso.extend_from_slice(&bufs[p.slot][p.bytes.clone()]);
                }
                &gso
            };
            for datagram in contents.chunks(first.stride) {
                shared.tap(Direction::Out, datagram);
            }
            let segments: usize = group.iter().map(|p| p.segments).sum();
            let t = transmit(first.to, contents, (segments > 1).then_some(first.stride));
            let sent = n
                .sock
                .async_io(Interest::WRITABLE, || n.state.send((&n.sock).into(), &t))
                .await;
            if let Err(e) = sent {
                tracing::debug!(error = %e, to = %first.to, "udp send failed");
            }
        }
    }
}

/// Forwarded datagrams that sit back to back in one receive buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Piece {
    /// Their destination.
    to: SocketAddr,
    /// Which receive buffer.
    slot: usize,
    /// Where in it.
    bytes: Range<usize>,
    /// Their size (the last may be shorter).
    stride: usize,
    /// How many.
    segments: usize,
}

/// Cuts `pieces` (in order) into groups that can leave as one GSO send: one destination
/// and one size, only the group's last datagram shorter, at most `max_segments` and
/// [`MAX_GSO_BYTES`] together (a piece alone may be a group however large).
pub(crate) fn gso_groups(
    pieces: &[Piece],
    max_segments: usize,
) -> impl Iterator<Item = Range<usize>> + '_ {
    let mut i = 0;
    std::iter::from_fn(move || {
        let start = i;
        let first = pieces.get(start)?;
        let (mut segments, mut bytes) = (first.segments, first.bytes.len());
        let full = |p: &Piece| p.bytes.len() == p.segments * p.stride;
        let mut open = full(first);
        i += 1;
        while let Some(p) = pieces.get(i) {
            if !open
                || p.to != first.to
                || p.stride != first.stride
                || segments + p.segments > max_segments
                || bytes + p.bytes.len() > MAX_GSO_BYTES
            {
                break;
            }
            segments += p.segments;
            bytes += p.bytes.len();
            open = full(p);
            i += 1;
        }
        Some(start..i)
    })
}

/// The GSO sends for one receive's datagrams, given their fates from
/// [`Relay::forward_in_place`](crate::Relay::forward_in_place): runs of consecutive
/// datagrams to one address (indexes into the receive), at most `max_segments` and
/// [`MAX_GSO_BYTES`] (for `stride`-byte datagrams) each.
pub(crate) fn send_runs(
    fates: &[Forward],
    max_segments: usize,
    stride: usize,
) -> impl Iterator<Item = (SocketAddr, Range<usize>)> + '_ {
    let per_send = max_segments.min(MAX_GSO_BYTES / stride.max(1)).max(1);
    let mut i = 0;
    std::iter::from_fn(move || {
        while i < fates.len() {
            let start = i;
            i += 1;
            let Forward::Send(to) = fates[start] else {
                continue;
            };
            while i < fates.len() && i - start < per_send && fates[i] == Forward::Send(to) {
                i += 1;
            }
            return Some((to, start..i));
        }
        None
    })
}

async fn send_batched(shared: Arc<Shared>, n: Arc<Native>, mut stop: watch::Receiver<bool>) {
    let mut gso = Vec::with_capacity(MAX_GSO_BYTES);
    loop {
        tokio::select! {
            _ = shared.udp_notify.notified() => {}
            _ = stop.changed() => return,
        }
        loop {
            let mut batch: Vec<_> = {
                let mut core = shared.core();
                std::iter::from_fn(|| core.poll_udp()).take(BATCH).collect()
            };
            if batch.is_empty() {
                break;
            }
            // Group by client (stable: each client's datagrams keep their order), so
            // runs for one client leave as one GSO send.
            batch.sort_by_key(|(to, _)| *to);
            let max_segments = n.state.max_gso_segments().max(1);
            let mut rest = &batch[..];
            while !rest.is_empty() {
                let run = gso_run(rest, max_segments);
                let (now, later) = rest.split_at(run);
                rest = later;
                for (_, d) in now {
                    shared.tap(Direction::Out, d);
                }
                let (to, first) = &now[0];
                let t = if run == 1 {
                    transmit(*to, first, None)
                } else {
                    gso.clear();
                    for (_, d) in now {
                        gso.extend_from_slice(d);
                    }
                    transmit(*to, &gso, Some(first.len()))
                };
                let sent = n
                    .sock
                    .async_io(Interest::WRITABLE, || n.state.send((&n.sock).into(), &t))
                    .await;
                if let Err(e) = sent {
                    tracing::debug!(error = %e, %to, "udp send failed");
                }
            }
        }
    }
}

fn transmit(destination: SocketAddr, contents: &[u8], segment_size: Option<usize>) -> Transmit<'_> {
    Transmit {
        destination,
        ecn: None,
        contents,
        segment_size,
        src_ip: None,
    }
}

/// How many datagrams at the start of `batch` can leave as one GSO send: same
/// destination, the size of the first (only the last may be shorter), at most
/// `max_segments` and [`MAX_GSO_BYTES`] together. At least 1.
pub(crate) fn gso_run(batch: &[(SocketAddr, Vec<u8>)], max_segments: usize) -> usize {
    let Some((to, first)) = batch.first() else {
        return 0;
    };
    let size = first.len();
    if size == 0 {
        return 1;
    }
    let mut total = size;
    let mut run = 1;
    for (t, d) in &batch[1..] {
        if run >= max_segments || t != to || d.len() > size || total + d.len() > MAX_GSO_BYTES {
            break;
        }
        total += d.len();
        run += 1;
        if d.len() < size {
            break;
        }
    }
    run
}

async fn receive(
    shared: Arc<Shared>,
    sock: Arc<dyn DatagramSocket>,
    mut stop: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, from) = tokio::select! {
            r = sock.recv_from(&mut buf) => match r {
                Ok(x) => x,
                // ICMP errors surface here on some systems; the socket is still good.
                Err(_) => continue,
            },
            _ = stop.changed() => return,
        };
        shared.tap(Direction::In, &buf[..n]);
        // Take whatever else is already waiting under the same lock (no waiting here).
        shared.with_core(|c| {
            c.handle_datagram(super::now(), from, &buf[..n]);
            for _ in 0..BATCH {
                let Ok((n, from)) = sock.try_recv_from(&mut buf) else {
                    break;
                };
                shared.tap(Direction::In, &buf[..n]);
                c.handle_datagram(super::now(), from, &buf[..n]);
            }
        });
    }
}

async fn send(shared: Arc<Shared>, sock: Arc<dyn DatagramSocket>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = shared.udp_notify.notified() => {}
            _ = stop.changed() => return,
        }
        loop {
            let batch: Vec<_> = {
                let mut core = shared.core();
                std::iter::from_fn(|| core.poll_udp()).take(BATCH).collect()
            };
            if batch.is_empty() {
                break;
            }
            for (to, datagram) in batch {
                shared.tap(Direction::Out, &datagram);
                if let Err(e) = sock.send_to(&datagram, to).await {
                    tracing::debug!(error = %e, %to, "udp send failed");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use agentmesh_proto::relay::{self as wire, ClientMsg, Payload, Transport};
    use agentmesh_proto::SecretKey;

    use crate::client::{ClientEvent, ClientSession, RelayClient};
    use crate::{Config, MemStore, StartOptions};

    fn key(seed: u8) -> SecretKey {
        SecretKey::from_bytes(&[seed; 32])
    }

    /// One client sends a GSO batch of `Send`s for two others, interleaved (the relay
    /// reads it as one GRO batch): each gets its own frames, whole and in order.
    #[tokio::test]
    async fn a_batch_for_two_clients_reaches_each_in_order() {
        let cfg = Config {
            udp_listen: Some(([127, 0, 0, 1], 0).into()),
            ..Config::default()
        };
        let store = Box::new(MemStore::default());
        let relay = crate::start(&cfg, key(250), store, StartOptions::default())
            .await
            .unwrap();
        let to = relay.udp_addr.unwrap();
        let id = Some(relay.relay_id);
        let mut b = RelayClient::connect_udp(to, key(2), id).await.unwrap();
        let mut c = RelayClient::connect_udp(to, key(3), id).await.unwrap();
        // A authenticates by hand on a socket that can send GSO batches.
        let std_sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        std_sock.set_nonblocking(true).unwrap();
        let state = UdpSocketState::new((&std_sock).into()).unwrap();
        let sock = UdpSocket::from_std(std_sock).unwrap();
        let mut a = ClientSession::new(key(1), id, Transport::Udp);
        let mut buf = vec![0u8; 65536];
        sock.send_to(&a.encode(&a.hello()).unwrap(), to)
            .await
            .unwrap();
        while !a.is_ready() {
            let wait = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf));
            let (n, _) = wait.await.unwrap().unwrap();
            let msg = a.decode(&buf[..n]).unwrap();
            if let (Some(reply), _) = a.handle(msg).unwrap() {
                sock.send_to(&a.encode(&reply).unwrap(), to).await.unwrap();
            }
        }
        let dst = [
            b.node_id(),
            c.node_id(),
            b.node_id(),
            c.node_id(),
            b.node_id(),
            b.node_id(),
        ];
        let payload = |i: usize| vec![i as u8; if i == 5 { 500 } else { 1200 }];
        let (mut batch, mut stride) = (Vec::new(), 0);
        for (i, to) in dst.iter().enumerate() {
            let send = ClientMsg::Send {
                to: *to,
                payload: Payload(payload(i)),
            };
            let d = wire::encode_datagram(&send, 1 << 16).unwrap();
            stride = stride.max(d.len());
            batch.extend(d);
        }
        let segments = (state.max_gso_segments() > 1).then_some(stride);
        let t = transmit(to, &batch, segments);
        sock.async_io(Interest::WRITABLE, || state.send((&sock).into(), &t))
            .await
            .unwrap();
        for (client, want) in [(&mut b, vec![0, 2, 4, 5]), (&mut c, vec![1, 3])] {
            for i in want {
                let ev = client.recv_timeout(Duration::from_secs(5)).await.unwrap();
                let Some(ClientEvent::Recv { from, payload: p }) = ev else {
                    panic!("frame {i}: {ev:?}")
                };
                assert_eq!((from, p), (a.node_id(), payload(i)), "frame {i}");
            }
        }
        assert_eq!(relay.snapshot().counters.forwarded, 6);
    }

    fn d(port: u16, len: usize) -> (SocketAddr, Vec<u8>) {
        (SocketAddr::from(([127, 0, 0, 1], port)), vec![0; len])
    }

    #[test]
    fn send_runs_group_consecutive_datagrams_for_one_client() {
        let (a, b) = (d(1, 0).0, d(2, 0).0);
        use Forward::{Done, Send};
        let runs = |f: &[Forward], max: usize, stride: usize| -> Vec<_> {
            send_runs(f, max, stride).collect()
        };
        assert_eq!(runs(&[], 64, 1200), vec![]);
        assert_eq!(runs(&[Done, Done], 64, 1200), vec![]);
        let f = [Send(a), Send(a), Done, Send(a), Send(b), Send(b), Send(a)];
        assert_eq!(
            runs(&f, 64, 1200),
            vec![(a, 0..2), (a, 3..4), (b, 4..6), (a, 6..7)]
        );
        assert_eq!(
            runs(&[Send(a); 5], 2, 1200),
            vec![(a, 0..2), (a, 2..4), (a, 4..5)],
            "max segments"
        );
        let per = MAX_GSO_BYTES / 1500;
        assert_eq!(runs(&[Send(a); 64], 64, 1500)[0], (a, 0..per), "byte cap");
        assert_eq!(runs(&[Send(a); 3], 0, 70_000).len(), 3, "one each at least");
    }

    #[test]
    fn gso_groups_join_pieces_for_one_client_of_one_size() {
        let p = |port: u16, slot: usize, len: usize, stride: usize| {
            let segments = len.div_ceil(stride);
            Piece {
                to: d(port, 0).0,
                slot,
                bytes: 0..len,
                stride,
                segments,
            }
        };
        let groups = |pieces: &[Piece], max: usize| -> Vec<_> { gso_groups(pieces, max).collect() };
        assert_eq!(groups(&[], 64), vec![]);
        // Single datagrams from eight slots (no GRO): one send.
        let singles: Vec<_> = (0..8).map(|s| p(1, s, 1200, 1200)).collect();
        assert_eq!(groups(&singles, 64), vec![0..8]);
        assert_eq!(groups(&singles, 3), vec![0..3, 3..6, 6..8], "max segments");
        let mixed = [
            p(1, 0, 1200, 1200),
            p(2, 1, 1200, 1200),
            p(2, 2, 1100, 1200),
            p(2, 3, 1200, 1200),
            p(2, 4, 900, 900),
            p(2, 5, 12_000, 1200),
        ];
        assert_eq!(
            groups(&mixed, 64),
            vec![0..1, 1..3, 3..4, 4..5, 5..6],
            "other client, a shorter datagram ends a group, another size"
        );
        // A GRO batch already near the cap stays alone.
        let big = [p(1, 0, 48_000, 1200), p(1, 1, 24_000, 1200)];
        assert_eq!(groups(&big, 64), vec![0..1, 1..2], "byte cap");
    }

    #[test]
    fn gso_runs_need_one_destination_and_one_size() {
        assert_eq!(gso_run(&[], 64), 0);
        let same = vec![d(1, 100), d(1, 100), d(1, 100)];
        assert_eq!(gso_run(&same, 64), 3);
        assert_eq!(gso_run(&same, 2), 2, "max segments");
        assert_eq!(
            gso_run(&[d(1, 100), d(2, 100), d(1, 100)], 64),
            1,
            "other client"
        );
        assert_eq!(gso_run(&[d(1, 100), d(1, 101)], 64), 1, "a longer datagram");
        assert_eq!(
            gso_run(&[d(1, 100), d(1, 60), d(1, 100)], 64),
            2,
            "a shorter one ends the run"
        );
        let big: Vec<_> = (0..64).map(|_| d(1, 1500)).collect();
        assert_eq!(gso_run(&big, 64), MAX_GSO_BYTES / 1500, "byte cap");
        assert_eq!(
            gso_run(&[d(1, 0), d(1, 0)], 64),
            1,
            "empty datagrams go alone"
        );
    }
}
