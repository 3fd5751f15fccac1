//! STUN over the daemon's shared socket, sans-IO: Binding requests to several observers
//! (the rendezvous's responders and configured STUN servers), retried with backoff; the
//! reflexive addresses they report; and the mapping behaviour their comparison reveals.
//!
//! Messages are encoded and decoded with `stun_codec`. The `stunclient` crate (built on
//! the same codec) is not used: it reads and writes the UDP socket itself, while the
//! daemon's one socket belongs to quinn and STUN replies reach us through `demux`.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytecodec::{DecodeExt, EncodeExt};
use indexmap::IndexMap;
use stun_codec::rfc5389::attributes::{MappedAddress, XorMappedAddress};
use stun_codec::rfc5389::{methods::BINDING, Attribute};
use stun_codec::{Message, MessageClass, MessageDecoder, MessageEncoder, TransactionId};

use super::punch::{predicted_ports, CandidateKind};

/// Retry schedule of one Binding request: first try, then after each of these.
const RETRIES: [Duration; 3] = [
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_millis(1000),
];

/// What the observers saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MappingObservation {
    /// Fewer than two observers answered: no comparison possible.
    Unknown,
    /// Every observer saw our local address: no NAT in the way.
    NoNat,
    /// All observers saw the same public address: endpoint-independent mapping (cone).
    /// Peers can reach this one address; hole punching works against most NATs.
    EndpointIndependent(SocketAddr),
    /// Observers saw different public ports or addresses: endpoint-dependent (symmetric).
    /// `ports` are the ports seen, in the order the requests were sent (sequential ones
    /// make port prediction worth trying).
    EndpointDependent {
        /// Ports observed.
        ports: Vec<u16>,
    },
}

/// A STUN request to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// The observer.
    pub dst: SocketAddr,
    /// The encoded Binding request.
    pub data: Vec<u8>,
}

#[derive(Debug)]
struct Pending {
    server: SocketAddr,
    attempt: usize,
    next_retry: Instant,
}

/// One round of STUN queries.
#[derive(Debug)]
pub struct StunProbe {
    pending: HashMap<[u8; 12], Pending>,
    answers: IndexMap<SocketAddr, SocketAddr>,
    order: Vec<SocketAddr>,
    transmits: VecDeque<Transmit>,
    next_txid: u64,
}

impl StunProbe {
    /// Queries each of `servers`; `txid_seed` must be fresh randomness (transaction ids
    /// are what stops a stranger from feeding us a false address).
    pub fn new(now: Instant, servers: &[SocketAddr], txid_seed: u64) -> Self {
        let mut probe = StunProbe {
            pending: HashMap::new(),
            answers: IndexMap::new(),
            order: servers.to_vec(),
            transmits: VecDeque::new(),
            next_txid: txid_seed,
        };
        for server in servers {
            probe.send(now, *server, 0);
        }
        probe
    }

    fn send(&mut self, now: Instant, server: SocketAddr, attempt: usize) {
        self.next_txid = self
            .next_txid
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let mut id = [0u8; 12];
        id[..8].copy_from_slice(&self.next_txid.to_be_bytes());
        id[8..].copy_from_slice(&(attempt as u32).to_be_bytes());
        let msg = Message::<Attribute>::new(MessageClass::Request, BINDING, TransactionId::new(id));
        let Ok(data) = MessageEncoder::new().encode_into_bytes(msg) else {
            return;
        };
        let next_retry = now + RETRIES.get(attempt).copied().unwrap_or_default();
        self.pending.insert(
            id,
            Pending {
                server,
                attempt,
                next_retry,
            },
        );
        self.transmits.push_back(Transmit { dst: server, data });
    }

    /// Requests to send now, in the order the servers were given (so a sequential NAT's
    /// ports follow that order).
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// When [`StunProbe::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.pending.values().map(|p| p.next_retry).min()
    }

    /// Retries unanswered requests; drops those out of retries.
    pub fn handle_timeout(&mut self, now: Instant) {
        let due: Vec<([u8; 12], SocketAddr, usize)> = self
            .pending
            .iter()
            .filter(|(_, p)| p.next_retry <= now)
            .map(|(id, p)| (*id, p.server, p.attempt))
            .collect();
        for (id, server, attempt) in due {
            self.pending.remove(&id);
            if attempt < RETRIES.len() {
                self.send(now, server, attempt + 1);
            }
        }
    }

    /// Handles a datagram that `demux` classified as STUN, from `src`. Answers to
    /// requests we did not send, or from another address than we asked, are ignored.
    pub fn handle_response(&mut self, src: SocketAddr, datagram: &[u8]) {
        let Ok(Ok(msg)) = MessageDecoder::<Attribute>::new().decode_from_bytes(datagram) else {
            return;
        };
        if msg.class() != MessageClass::SuccessResponse || msg.method() != BINDING {
            return;
        }
        let id = *msg.transaction_id().as_bytes();
        if self.pending.get(&id).is_none_or(|p| p.server != src) {
            return;
        }
        let mapped = msg
            .get_attribute::<XorMappedAddress>()
            .map(|a| a.address())
            .or_else(|| msg.get_attribute::<MappedAddress>().map(|a| a.address()));
        if let Some(mapped) = mapped {
            // Every retry of this server shares the server: drop them all.
            self.pending.retain(|_, p| p.server != src);
            self.answers.insert(src, mapped);
        }
    }

    /// Whether every server answered or gave up.
    pub fn is_done(&self) -> bool {
        self.pending.is_empty()
    }

    /// Reflexive addresses seen, per server, in the order the servers were given.
    pub fn answers(&self) -> Vec<(SocketAddr, SocketAddr)> {
        self.order
            .iter()
            .filter_map(|s| self.answers.get(s).map(|m| (*s, *m)))
            .collect()
    }

    /// What the answers say about our NAT's mapping, given our socket's local address.
    pub fn observation(&self, local: SocketAddr) -> MappingObservation {
        classify(local, &self.answers())
    }

    /// The candidates this node reports for hole punching: its local address, the
    /// reflexive address the first observer saw, and, when the mapping is
    /// endpoint-dependent with consecutive ports (a sequential symmetric NAT),
    /// `predict` ports after the highest one seen.
    pub fn candidates(&self, local: SocketAddr, predict: u16) -> Vec<(SocketAddr, CandidateKind)> {
        candidates_from(local, &self.answers(), predict)
    }
}

/// The candidates of [`StunProbe::candidates`], from (observer, mapping) answers.
pub fn candidates_from(
    local: SocketAddr,
    answers: &[(SocketAddr, SocketAddr)],
    predict: u16,
) -> Vec<(SocketAddr, CandidateKind)> {
    let mut out = vec![(local, CandidateKind::Local)];
    if let Some((_, reflexive)) = answers.first() {
        out.push((*reflexive, CandidateKind::Reflexive));
    }
    if let MappingObservation::EndpointDependent { mut ports } = classify(local, answers) {
        ports.sort_unstable();
        let sequential = ports.windows(2).all(|w| w[1] == w[0].wrapping_add(1));
        if let (true, Some((_, seen)), Some(last)) = (sequential, answers.first(), ports.last()) {
            out.extend(predicted_ports(SocketAddr::new(seen.ip(), *last), predict));
        }
    }
    out
}

/// Classifies the mapping from (observer, reflexive address) pairs.
pub fn classify(local: SocketAddr, answers: &[(SocketAddr, SocketAddr)]) -> MappingObservation {
    if answers.len() < 2 {
        return MappingObservation::Unknown;
    }
    let first = answers[0].1;
    if answers.iter().all(|(_, m)| *m == first) {
        if first == local || (local.ip().is_unspecified() && first.port() == local.port()) {
            return MappingObservation::NoNat;
        }
        return MappingObservation::EndpointIndependent(first);
    }
    MappingObservation::EndpointDependent {
        ports: answers.iter().map(|(_, m)| m.port()).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stun_codec::rfc5389::attributes::XorMappedAddress;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// A STUN server's answer to `request` (what coturn sends).
    fn answer(request: &[u8], mapped: SocketAddr) -> Vec<u8> {
        let req = MessageDecoder::<Attribute>::new()
            .decode_from_bytes(request)
            .unwrap()
            .unwrap();
        let mut resp =
            Message::<Attribute>::new(MessageClass::SuccessResponse, BINDING, req.transaction_id());
        resp.add_attribute(XorMappedAddress::new(mapped));
        MessageEncoder::new().encode_into_bytes(resp).unwrap()
    }

    #[test]
    fn two_observers_same_mapping_is_a_cone() {
        let now = Instant::now();
        let (s1, s2) = (addr("203.0.113.1:3478"), addr("198.51.100.1:3478"));
        let mut p = StunProbe::new(now, &[s1, s2], 7);
        let reqs: Vec<Transmit> = std::iter::from_fn(|| p.poll_transmit()).collect();
        assert_eq!(reqs.len(), 2);
        assert_eq!((reqs[0].dst, reqs[1].dst), (s1, s2), "sent in server order");
        assert!(crate::net::demux::classify(&reqs[0].data) == crate::net::demux::Kind::Stun);
        let public = addr("203.0.113.50:40000");
        for r in &reqs {
            p.handle_response(r.dst, &answer(&r.data, public));
        }
        assert!(p.is_done());
        assert_eq!(
            p.observation(addr("10.0.0.2:5000")),
            MappingObservation::EndpointIndependent(public)
        );
        assert_eq!(p.observation(public), MappingObservation::NoNat);
    }

    #[test]
    fn different_ports_mean_symmetric_and_strangers_are_ignored() {
        let now = Instant::now();
        let (s1, s2) = (addr("203.0.113.1:3478"), addr("198.51.100.1:3478"));
        let mut p = StunProbe::new(now, &[s1, s2], 9);
        let reqs: Vec<Transmit> = std::iter::from_fn(|| p.poll_transmit()).collect();
        // A stranger's answer, and an answer from the wrong address, change nothing.
        p.handle_response(
            addr("192.0.2.9:3478"),
            &answer(&reqs[0].data, addr("192.0.2.9:1")),
        );
        p.handle_response(reqs[1].dst, &answer(&reqs[0].data, addr("192.0.2.9:1")));
        assert!(p.answers().is_empty());
        p.handle_response(
            reqs[0].dst,
            &answer(&reqs[0].data, addr("203.0.113.50:40001")),
        );
        p.handle_response(
            reqs[1].dst,
            &answer(&reqs[1].data, addr("203.0.113.50:40002")),
        );
        let mut ports = match p.observation(addr("10.0.0.2:5000")) {
            MappingObservation::EndpointDependent { ports } => ports,
            other => panic!("{other:?}"),
        };
        ports.sort();
        assert_eq!(ports, vec![40001, 40002]);
        // Consecutive ports: a sequential symmetric NAT; the next ones are predicted.
        let local = addr("10.0.0.2:5000");
        let c = p.candidates(local, 3);
        assert_eq!(c[0], (local, CandidateKind::Local));
        assert_eq!(c[1].1, CandidateKind::Reflexive);
        let predicted: Vec<u16> = c[2..]
            .iter()
            .map(|(a, k)| {
                assert_eq!(*k, CandidateKind::Predicted);
                a.port()
            })
            .collect();
        assert_eq!(predicted, vec![40003, 40004, 40005]);
    }

    #[test]
    fn unanswered_requests_are_retried_then_given_up() {
        let now = Instant::now();
        let mut p = StunProbe::new(now, &[addr("203.0.113.1:3478")], 1);
        let mut sent = 0;
        let mut t = now;
        for _ in 0..10 {
            while p.poll_transmit().is_some() {
                sent += 1;
            }
            let Some(due) = p.poll_timeout() else { break };
            t = due;
            p.handle_timeout(t);
        }
        assert_eq!(sent, 1 + RETRIES.len());
        assert!(p.is_done());
        assert_eq!(t - now, Duration::from_millis(1750));
        assert_eq!(
            p.observation(addr("10.0.0.2:1")),
            MappingObservation::Unknown
        );
    }

    #[test]
    fn garbage_is_ignored() {
        let mut p = StunProbe::new(Instant::now(), &[addr("203.0.113.1:3478")], 1);
        for junk in [
            &b""[..],
            &[0u8; 20],
            &[0xff; 64],
            b"\x01\x01\x00\x00\x21\x12\xa4\x42",
        ] {
            p.handle_response(addr("203.0.113.1:3478"), junk);
        }
        assert!(p.answers().is_empty());
    }
}
