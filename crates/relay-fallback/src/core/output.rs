//! Outbound side of the core: encoding frames into link queues, and the poll functions
//! the drivers call to take them.

use std::net::SocketAddr;

use agentmesh_proto::relay::{self as wire, RelayMsg};
use agentmesh_proto::{frame, NodeId};

use super::{ConnId, Event, Link, Relay, State};
use crate::store::MailStore;

/// Bound on datagrams queued to addresses without link state (refusals).
const MAX_UDP_CONTROL: usize = 256;
/// Bytes a `Recv` datagram adds around its payload (magic, frame header, variant, node
/// id, payload length), rounded up: the allocation then never grows.
const RECV_OVERHEAD: usize = 48;

/// What [`Relay::poll_stream`] has for a connection.
#[derive(Debug, PartialEq, Eq)]
pub enum StreamPoll {
    /// Write this frame.
    Frame(Vec<u8>),
    /// Nothing now; wait for the next [`Event::StreamReady`].
    Idle,
    /// Close the connection (everything queued was returned), then call
    /// [`Relay::handle_stream_closed`].
    Close,
}

impl<S: MailStore> Relay<S> {
    /// Queues `msg` for `link`; counts a drop if its queue is full.
    pub(super) fn send(&mut self, link: Link, msg: &RelayMsg) {
        let max = self.limits.max_out_frame();
        let encoded = match link {
            Link::Udp(_) => wire::encode_datagram(msg, max),
            Link::Stream(_) => frame::encode(msg, max),
        };
        let Ok(bytes) = encoded else {
            self.counters.dropped_oversize += 1;
            return;
        };
        self.enqueue(link, bytes);
    }

    /// Queues `RelayMsg::Recv { from, payload }` for `link`, encoded straight from the
    /// borrowed payload (the forwarding path: one copy, one allocation).
    pub(super) fn send_recv(&mut self, link: Link, from: NodeId, payload: &[u8]) {
        let max = self.limits.max_out_frame();
        let mut bytes = Vec::with_capacity(payload.len() + RECV_OVERHEAD);
        if wire::encode_recv(
            &mut bytes,
            matches!(link, Link::Udp(_)),
            &from,
            payload,
            max,
        )
        .is_err()
        {
            self.counters.dropped_oversize += 1;
            return;
        }
        self.enqueue(link, bytes);
    }

    /// Puts an encoded frame in `link`'s queue (or the control queue for an address
    /// without link state) and signals the driver.
    pub(super) fn enqueue(&mut self, link: Link, bytes: Vec<u8>) {
        let (qf, qb) = (self.limits.queue_frames, self.limits.queue_bytes);
        let Some(ls) = self.links.get_mut(&link) else {
            if let Link::Udp(addr) = link {
                if self.udp_control.len() < MAX_UDP_CONTROL {
                    self.udp_control.push_back((addr, bytes));
                    self.signal_udp();
                }
            }
            return;
        };
        let was_empty = ls.queue.is_empty();
        if !ls.queue.push(bytes, qf, qb) {
            self.counters.dropped_queue += 1;
            return;
        }
        match link {
            Link::Udp(addr) if was_empty => {
                self.udp_ready.push_back(addr);
                self.signal_udp();
            }
            Link::Stream(conn) if !ls.signalled => {
                ls.signalled = true;
                self.events.push_back(Event::StreamReady(conn));
            }
            _ => {}
        }
    }

    fn signal_udp(&mut self) {
        if !self.udp_signalled {
            self.udp_signalled = true;
            self.events.push_back(Event::UdpReady);
        }
    }

    /// The next thing the driver must act on.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The next datagram to send (links served round-robin), or `None` when all are sent.
    pub fn poll_udp(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        if let Some(d) = self.udp_control.pop_front() {
            return Some(self.count_out(d));
        }
        while let Some(addr) = self.udp_ready.pop_front() {
            let Some(ls) = self.links.get_mut(&Link::Udp(addr)) else {
                continue;
            };
            let Some(bytes) = ls.queue.pop() else {
                continue;
            };
            if !ls.queue.is_empty() {
                self.udp_ready.push_back(addr);
            }
            return Some(self.count_out((addr, bytes)));
        }
        self.udp_signalled = false;
        None
    }

    /// The next frame for stream `conn`, or whether to wait or close.
    pub fn poll_stream(&mut self, conn: ConnId) -> StreamPoll {
        let Some(ls) = self.links.get_mut(&Link::Stream(conn)) else {
            return StreamPoll::Close;
        };
        if let Some(bytes) = ls.queue.pop() {
            self.counters.frames_out += 1;
            self.counters.bytes_out += bytes.len() as u64;
            return StreamPoll::Frame(bytes);
        }
        ls.signalled = false;
        if matches!(ls.state, State::Closing) {
            StreamPoll::Close
        } else {
            StreamPoll::Idle
        }
    }

    fn count_out<T>(&mut self, (to, bytes): (T, Vec<u8>)) -> (T, Vec<u8>) {
        self.counters.frames_out += 1;
        self.counters.bytes_out += bytes.len() as u64;
        (to, bytes)
    }

    /// Whether every queue is empty (used to finish a drain).
    pub fn queues_empty(&self) -> bool {
        self.udp_control.is_empty() && self.links.values().all(|l| l.queue.is_empty())
    }
}
