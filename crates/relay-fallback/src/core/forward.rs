//! The UDP forwarding fast path: a client's `Send` datagram becomes the destination's
//! `Recv` datagram inside the receive buffer itself, and the driver sends it from there
//! (no allocation, no copy, no queue).
//!
//! [`Relay::forward_in_place`] takes one receive (a GRO batch: datagrams of `stride` bytes
//! from one address, the last maybe shorter) and gives each datagram exactly the outcome
//! [`Relay::handle_datagram`] gives it: the same counters, rate buckets, authentication
//! check, `PeerGone` answers and queues. Only a `Send` from an authenticated UDP link, in
//! bincode's shortest form, to a UDP client whose queue is empty leaves through the buffer
//! ([`Forward::Send`]); anything else (other messages, a stream destination, a destination
//! with frames already waiting) is handled as before ([`Forward::Done`]).

use std::net::SocketAddr;
use std::time::Instant;

use agentmesh_proto::relay::{self as wire, RelayMsg};
use agentmesh_proto::NodeId;

use super::{Link, Relay, State};
use crate::store::MailStore;

/// What became of one datagram given to [`Relay::forward_in_place`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forward {
    /// The datagram was rewritten in place into the `Recv` for its destination and
    /// counted as sent: send it, as it now is, to this address.
    Send(SocketAddr),
    /// Handled as [`Relay::handle_datagram`] handles it (queued, answered or dropped);
    /// nothing to send from the buffer.
    Done,
}

/// Lookups every datagram of one receive would repeat. Valid while the core handles
/// that receive's datagrams on the fast path (which adds and removes no link and no
/// node); cleared when a datagram takes the general path.
#[derive(Debug, Default)]
struct Lookups {
    /// The source link's index in `links`, once looked up (`Some(None)`: no link).
    src: Option<Option<usize>>,
    /// The last destination.
    dst: Option<Dst>,
}

/// A destination node as the fast path found it.
#[derive(Debug, Clone, Copy)]
struct Dst {
    /// The node (a checked key).
    node: NodeId,
    /// Where it is authenticated.
    link: Link,
    /// That link's index in `links`.
    index: Option<usize>,
}

impl<S: MailStore> Relay<S> {
    /// Handles the datagrams of one receive from `from`: `buf` cut every `stride` bytes
    /// (a GRO batch; `stride` ≥ `buf.len()` for one datagram). Each gets the outcome
    /// [`Relay::handle_datagram`] would give it; those that are forwarded over UDP are
    /// rewritten in place and must be sent from `buf` by the caller. `out` is cleared and
    /// gets one [`Forward`] per datagram, in order.
    pub fn forward_in_place(
        &mut self,
        now: Instant,
        from: SocketAddr,
        buf: &mut [u8],
        stride: usize,
        out: &mut Vec<Forward>,
    ) {
        out.clear();
        let mut lookups = Lookups::default();
        for datagram in buf.chunks_mut(stride.max(1)) {
            let fate = self.forward_one(now, from, datagram, &mut lookups);
            out.push(fate);
        }
    }

    fn forward_one(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &mut [u8],
        lookups: &mut Lookups,
    ) -> Forward {
        if !self.count_in(datagram.len()) {
            return Forward::Done;
        }
        let link = Link::Udp(from);
        let node = match self.admit_at(now, link, datagram.len(), lookups) {
            Admitted::Dropped => return Forward::Done,
            Admitted::Authed(node) => Some(node),
            Admitted::NotAuthed => None,
        };
        let known = lookups.dst.as_ref().map(|d| &d.node);
        let rewritten = node.and_then(|node| {
            wire::rewrite_send_as_recv(datagram, &node, known, self.limits.max_frame)
                .map(|to| (node, to))
        });
        let Some((node, to)) = rewritten else {
            // Untouched: not a `Send` the fast path takes, or not from an authenticated
            // link. The general path may add or remove links: look them up again after.
            *lookups = Lookups::default();
            self.dispatch_datagram(now, link, datagram);
            return Forward::Done;
        };
        let dst = match lookups.dst {
            Some(d) if d.node == to => d,
            _ => {
                let Some(&dst) = self.nodes.get(&to) else {
                    self.counters.peer_gone += 1;
                    self.send(link, &RelayMsg::PeerGone { node: to });
                    return Forward::Done;
                };
                let d = Dst {
                    node: to,
                    link: dst,
                    index: self.links.get_index_of(&dst),
                };
                lookups.dst = Some(d);
                d
            }
        };
        self.counters.forwarded += 1;
        let queue_empty = dst
            .index
            .and_then(|i| self.links.get_index(i))
            .is_some_and(|(_, ls)| ls.queue.is_empty());
        match dst.link {
            Link::Udp(addr) if queue_empty => {
                // Counted here as `poll_udp` counts what it hands out.
                self.counters.frames_out += 1;
                self.counters.bytes_out += datagram.len() as u64;
                Forward::Send(addr)
            }
            // Behind frames already queued (order kept): the queue, with the bytes the
            // general path would have encoded (the rewritten datagram is exactly them).
            Link::Udp(_) => {
                self.enqueue(dst.link, datagram.to_vec());
                Forward::Done
            }
            Link::Stream(_) => {
                if let Some((_, payload)) =
                    wire::decode_recv_datagram(datagram, self.limits.max_frame)
                {
                    self.send_recv(dst.link, node, payload);
                }
                Forward::Done
            }
        }
    }

    /// [`Relay::admit`] for `link` through the cached index: refreshes `last_seen` and
    /// spends from the rate buckets of an authenticated link.
    fn admit_at(
        &mut self,
        now: Instant,
        link: Link,
        wire_len: usize,
        lookups: &mut Lookups,
    ) -> Admitted {
        let index = *lookups
            .src
            .get_or_insert_with(|| self.links.get_index_of(&link));
        let Some((_, ls)) = index.and_then(|i| self.links.get_index_mut(i)) else {
            return Admitted::NotAuthed;
        };
        let State::Authed(a) = &mut ls.state else {
            return Admitted::NotAuthed;
        };
        ls.last_seen = now;
        if a.admit(now, wire_len) {
            Admitted::Authed(a.node)
        } else {
            self.counters.dropped_rate += 1;
            Admitted::Dropped
        }
    }
}

/// The rate check's verdict on one datagram.
enum Admitted {
    /// Over the link's rate: dropped (counted).
    Dropped,
    /// From this authenticated node, within its rate.
    Authed(NodeId),
    /// From a link that is not authenticated (no rate applies).
    NotAuthed,
}
