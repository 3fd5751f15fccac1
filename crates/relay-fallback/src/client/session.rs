//! The client side of the relay protocol, sans-IO: authentication, mail ordering and acks.
//!
//! A daemon owns the socket; it sends [`ClientSession::hello`], feeds every decoded
//! [`RelayMsg`] to [`ClientSession::handle`], sends the reply it returns (if any) and acts
//! on the [`ClientEvent`]. On the daemon's single UDP socket:
//!
//! ```text
//! let mut s = ClientSession::new(node_key, Some(relay_id), Transport::Udp);
//! sock.send_to(&s.encode(&s.hello())?, relay_addr);
//! // for each datagram from relay_addr where relay::is_relay_datagram(d):
//! let (reply, event) = s.handle(s.decode(d)?)?;
//! if let Some(r) = reply { sock.send_to(&s.encode(&r)?, relay_addr) }
//! // to send: s.encode(&ClientMsg::Send { to, payload: Payload(quic_packet) })
//! // every PING_INTERVAL while idle: s.encode(&ClientMsg::Ping { n })
//! ```
//!
//! On `Restarting` or `Refused`, reconnect (new `hello`) after the suggested delay.

use agentmesh_proto::frame::{self, FrameError};
use agentmesh_proto::relay::{
    self as wire, ClientMsg, Payload, RefuseReason, RelayMsg, StoreOutcome, Transport,
    MIN_UDP_HELLO, RELAY_VERSION,
};
use agentmesh_proto::{NodeId, SecretKey};

/// How often an idle UDP client should ping the relay (the relay forgets UDP clients silent
/// for `idle_timeout_secs`, 60 s by default; NAT mappings often last less than 30 s).
pub const PING_INTERVAL: std::time::Duration = std::time::Duration::from_secs(15);

/// Why the relay's answer is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The challenge names another relay than the one pinned.
    #[error("relay identifies as {got}, expected {expected}")]
    WrongRelay {
        /// The pinned relay id.
        expected: NodeId,
        /// The id in the challenge.
        got: NodeId,
    },
}

/// What happened, for the daemon.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientEvent {
    /// Authenticated; frames can be sent.
    Ready {
        /// Largest frame the relay accepts.
        max_frame: u32,
    },
    /// A payload from another node.
    Recv {
        /// The authenticated sender.
        from: NodeId,
        /// Its bytes.
        payload: Vec<u8>,
    },
    /// A destination was not connected.
    PeerGone(NodeId),
    /// Answer to a store request.
    StoreAck {
        /// The id given to [`ClientMsg::Store`].
        id: u64,
        /// What happened.
        outcome: StoreOutcome,
    },
    /// A stored message, in order (open it with `agentmesh_proto::sealed::open`).
    Mail {
        /// Who stored it.
        from: NodeId,
        /// The sealed bytes.
        sealed: Vec<u8>,
    },
    /// The relay is going away; reconnect after this many milliseconds.
    Restarting {
        /// Suggested delay.
        reconnect_after_ms: u32,
    },
    /// The relay refused us.
    Refused(RefuseReason),
    /// Answer to a ping.
    Pong(u64),
    /// Relay health.
    Health {
        /// Connected clients.
        clients: u32,
        /// Whether draining.
        draining: bool,
    },
}

/// One client's protocol state with one relay.
#[derive(Debug)]
pub struct ClientSession {
    /// The node key that signs the challenge.
    key: SecretKey,
    /// The relay's id, if pinned; otherwise the first challenge's id is accepted.
    relay: Option<NodeId>,
    /// Transport, bound into the signature.
    transport: Transport,
    /// Whether `Welcome` was received.
    ready: bool,
    /// Last mail id accepted in order in this session (0 = none).
    last_mail: u64,
}

impl ClientSession {
    /// A session for `key` with the relay `relay` (pin it when known) over `transport`.
    pub fn new(key: SecretKey, relay: Option<NodeId>, transport: Transport) -> Self {
        Self {
            key,
            relay,
            transport,
            ready: false,
            last_mail: 0,
        }
    }

    /// This client's node id.
    pub fn node_id(&self) -> NodeId {
        self.key.node_id()
    }

    /// The relay's id once known.
    pub fn relay_id(&self) -> Option<NodeId> {
        self.relay
    }

    /// Whether authenticated.
    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// The first message (padded so that a UDP datagram carrying it is long enough).
    pub fn hello(&self) -> ClientMsg {
        ClientMsg::Hello {
            version: RELAY_VERSION,
            pad: Payload(vec![0; MIN_UDP_HELLO]),
        }
    }

    /// Encodes `msg` for this session's transport.
    pub fn encode(&self, msg: &ClientMsg) -> Result<Vec<u8>, FrameError> {
        match self.transport {
            Transport::Udp => wire::encode_datagram(msg, frame::DEFAULT_MAX_FRAME),
            Transport::Tls => frame::encode(msg, frame::DEFAULT_MAX_FRAME),
        }
    }

    /// Decodes a datagram (UDP) or one whole frame (TLS) from the relay.
    pub fn decode(&self, bytes: &[u8]) -> Result<RelayMsg, FrameError> {
        match self.transport {
            Transport::Udp => wire::decode_datagram(bytes, frame::DEFAULT_MAX_FRAME),
            Transport::Tls => frame::decode_datagram(bytes, frame::DEFAULT_MAX_FRAME),
        }
    }

    /// Handles a message from the relay: returns a reply to send and an event.
    pub fn handle(
        &mut self,
        msg: RelayMsg,
    ) -> Result<(Option<ClientMsg>, Option<ClientEvent>), SessionError> {
        let event = match msg {
            RelayMsg::Challenge { nonce, relay } => return self.on_challenge(nonce, relay),
            RelayMsg::Welcome { max_frame, .. } => {
                self.ready = true;
                self.last_mail = 0;
                ClientEvent::Ready { max_frame }
            }
            RelayMsg::Mail {
                id,
                prev,
                from,
                sealed,
            } => return Ok(self.on_mail(id, prev, from, sealed)),
            RelayMsg::Refused { reason } => {
                self.ready = false;
                ClientEvent::Refused(reason)
            }
            RelayMsg::Recv { from, payload } => ClientEvent::Recv {
                from,
                payload: payload.0,
            },
            RelayMsg::PeerGone { node } => ClientEvent::PeerGone(node),
            RelayMsg::StoreAck { id, outcome } => ClientEvent::StoreAck { id, outcome },
            RelayMsg::Restarting { reconnect_after_ms } => {
                ClientEvent::Restarting { reconnect_after_ms }
            }
            RelayMsg::Pong { n } => ClientEvent::Pong(n),
            RelayMsg::Health {
                clients, draining, ..
            } => ClientEvent::Health { clients, draining },
        };
        Ok((None, Some(event)))
    }

    fn on_challenge(
        &mut self,
        nonce: [u8; 32],
        relay: NodeId,
    ) -> Result<(Option<ClientMsg>, Option<ClientEvent>), SessionError> {
        match self.relay {
            Some(expected) if expected != relay => {
                return Err(SessionError::WrongRelay {
                    expected,
                    got: relay,
                })
            }
            _ => self.relay = Some(relay),
        }
        self.ready = false;
        let auth = wire::sign_auth(&self.key, &nonce, &relay, self.transport);
        Ok((Some(auth), None))
    }

    fn on_mail(
        &mut self,
        id: u64,
        prev: u64,
        from: NodeId,
        sealed: Payload,
    ) -> (Option<ClientMsg>, Option<ClientEvent>) {
        if prev == self.last_mail && id > self.last_mail {
            self.last_mail = id;
            let event = ClientEvent::Mail {
                from,
                sealed: sealed.0,
            };
            (Some(ClientMsg::MailAck { id }), Some(event))
        } else if id <= self.last_mail {
            // A resend of something we have: ack again (our ack was lost).
            (Some(ClientMsg::MailAck { id: self.last_mail }), None)
        } else {
            // A gap (lost or reordered datagram): wait for the relay's resend.
            (None, None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SecretKey {
        SecretKey::from_bytes(&[seed; 32])
    }

    #[test]
    fn hello_datagram_is_long_enough() {
        let s = ClientSession::new(key(1), None, Transport::Udp);
        assert!(s.encode(&s.hello()).unwrap().len() >= MIN_UDP_HELLO);
    }

    #[test]
    fn decode_matches_the_transport() {
        for t in [Transport::Udp, Transport::Tls] {
            let s = ClientSession::new(key(1), None, t);
            let msg = RelayMsg::Pong { n: 3 };
            let bytes = match t {
                Transport::Udp => wire::encode_datagram(&msg, 1000).unwrap(),
                Transport::Tls => frame::encode(&msg, 1000).unwrap(),
            };
            assert_eq!(s.decode(&bytes).unwrap(), msg);
        }
    }

    #[test]
    fn pinned_relay_is_enforced() {
        let mut s = ClientSession::new(key(1), Some(key(2).node_id()), Transport::Udp);
        let bad = RelayMsg::Challenge {
            nonce: [0; 32],
            relay: key(3).node_id(),
        };
        assert!(matches!(
            s.handle(bad),
            Err(SessionError::WrongRelay { .. })
        ));
        let good = RelayMsg::Challenge {
            nonce: [0; 32],
            relay: key(2).node_id(),
        };
        assert!(matches!(
            s.handle(good),
            Ok((Some(ClientMsg::Auth { .. }), None))
        ));
    }

    #[test]
    fn mail_is_accepted_only_in_order() {
        let mut s = ClientSession::new(key(1), None, Transport::Udp);
        let from = key(2).node_id();
        let mail = |id, prev| RelayMsg::Mail {
            id,
            prev,
            from,
            sealed: Payload(vec![id as u8]),
        };
        assert_eq!(s.handle(mail(7, 3)).unwrap(), (None, None), "gap");
        let (ack, ev) = s.handle(mail(3, 0)).unwrap();
        assert_eq!(ack, Some(ClientMsg::MailAck { id: 3 }));
        assert!(matches!(ev, Some(ClientEvent::Mail { .. })));
        assert!(s.handle(mail(7, 3)).unwrap().1.is_some());
        assert_eq!(
            s.handle(mail(3, 0)).unwrap(),
            (Some(ClientMsg::MailAck { id: 7 }), None)
        );
    }
}
