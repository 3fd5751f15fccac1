//! Relay wire messages: client authentication, forwarded frames by destination node id, control frames.
//!
//! Both transports carry the same frames ([`crate::frame`]: `length | version | bincode`).
//! On TCP/TLS the frames follow each other on the stream. On UDP each datagram is
//! [`UDP_MAGIC`] followed by exactly one frame, so the daemon can tell relay datagrams
//! from QUIC (first byte has bit `0x40` set) and STUN (first two bits `00`, cookie
//! `0x2112A442`) on its single socket: the magic's first byte `0xA7` is `10xx_xxxx`.
//!
//! Authentication: the client says [`ClientMsg::Hello`], the relay answers
//! [`RelayMsg::Challenge`] with a fresh single-use nonce and its own node id, the client
//! answers [`ClientMsg::Auth`] with its node id and a signature over [`auth_message`]
//! (nonce, relay id, transport). The relay then pins that node id to the UDP address or
//! TCP connection and forwards only frames arriving there as coming from it.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::frame::{self, FrameError};
use crate::id::{IdError, NodeId, SecretKey, Signature};

/// Prefix of every relay datagram on UDP.
pub const UDP_MAGIC: [u8; 4] = [0xA7, b'A', b'M', b'R'];
/// Relay protocol version spoken by this build.
pub const RELAY_VERSION: u16 = 1;
/// Minimum length of a UDP datagram carrying [`ClientMsg::Hello`], so a challenge is
/// never larger than the request that caused it (no amplification).
pub const MIN_UDP_HELLO: usize = 128;
/// Domain separation for the authentication signature.
pub const AUTH_CONTEXT: &[u8] = b"agentmesh-relay-auth/1";

/// Opaque bytes that go through bincode as one byte string (not element by element).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Payload(pub Vec<u8>);

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Payload({} bytes)", self.0.len())
    }
}

impl From<Vec<u8>> for Payload {
    fn from(v: Vec<u8>) -> Self {
        Payload(v)
    }
}

impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Payload;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Payload, E> {
                Ok(Payload(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Payload, E> {
                Ok(Payload(v))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Payload, A::Error> {
                let mut out = Vec::new();
                while let Some(b) = a.next_element::<u8>()? {
                    out.push(b);
                }
                Ok(Payload(out))
            }
        }
        d.deserialize_bytes(V)
    }
}

/// Which transport a client authenticates on (bound into the signature).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Transport {
    /// UDP datagrams (the daemon's single socket).
    Udp,
    /// TCP with TLS.
    Tls,
}

impl Transport {
    fn tag(self) -> u8 {
        match self {
            Transport::Udp => b'U',
            Transport::Tls => b'T',
        }
    }
}

/// The bytes a client signs to authenticate: context, nonce, relay id, transport.
pub fn auth_message(nonce: &[u8; 32], relay: &NodeId, transport: Transport) -> Vec<u8> {
    let mut m = Vec::with_capacity(AUTH_CONTEXT.len() + 65);
    m.extend_from_slice(AUTH_CONTEXT);
    m.extend_from_slice(nonce);
    m.extend_from_slice(relay.as_bytes());
    m.push(transport.tag());
    m
}

/// Builds the [`ClientMsg::Auth`] answering a challenge.
pub fn sign_auth(
    key: &SecretKey,
    nonce: &[u8; 32],
    relay: &NodeId,
    transport: Transport,
) -> ClientMsg {
    ClientMsg::Auth {
        node: key.node_id(),
        signature: key.sign(&auth_message(nonce, relay, transport)),
    }
}

/// Checks an authentication signature.
pub fn verify_auth(
    node: &NodeId,
    signature: &Signature,
    nonce: &[u8; 32],
    relay: &NodeId,
    transport: Transport,
) -> Result<(), IdError> {
    node.verify(&auth_message(nonce, relay, transport), signature)
}

/// Messages a client (daemon) sends to the relay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ClientMsg {
    /// Start authentication. On UDP the datagram must be at least [`MIN_UDP_HELLO`]
    /// bytes long (fill `pad` with zeros).
    Hello {
        /// Relay protocol version ([`RELAY_VERSION`]).
        version: u16,
        /// Padding, ignored.
        pad: Payload,
    },
    /// Answer to [`RelayMsg::Challenge`].
    Auth {
        /// The client's node id.
        node: NodeId,
        /// Signature over [`auth_message`] by the node key.
        signature: Signature,
    },
    /// Forward `payload` to the client authenticated as `to`.
    Send {
        /// Destination node.
        to: NodeId,
        /// Opaque bytes (QUIC packets, Noise messages).
        payload: Payload,
    },
    /// Keep a sealed message for `to` until it connects (store-and-forward).
    Store {
        /// Client-chosen id, echoed in [`RelayMsg::StoreAck`].
        id: u64,
        /// Recipient node.
        to: NodeId,
        /// A message sealed to the recipient (see [`crate::sealed`]).
        sealed: Payload,
    },
    /// Stored messages up to and including `id` were received; the relay deletes them.
    MailAck {
        /// Highest [`RelayMsg::Mail`] id received in order.
        id: u64,
    },
    /// Liveness check; answered by [`RelayMsg::Pong`]. Also keeps a UDP client alive.
    Ping {
        /// Echoed.
        n: u64,
    },
    /// Ask for [`RelayMsg::Health`].
    HealthQuery,
}

/// Why a stored message was or was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoreOutcome {
    /// Stored (or delivered at once); it will reach the recipient when it connects.
    Stored,
    /// The recipient's quota (messages or bytes) is full.
    QuotaExceeded,
    /// The relay's storage failed.
    Unavailable,
}

/// Why the relay refused or ended something.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RefuseReason {
    /// Authentication failed (bad signature, unknown or reused nonce).
    AuthFailed,
    /// Protocol version not supported.
    Version,
    /// The relay has its maximum number of clients.
    Full,
    /// The relay is shutting down.
    Draining,
    /// The same node authenticated again elsewhere; this link is no longer used.
    Replaced,
}

/// Messages the relay sends to a client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RelayMsg {
    /// Prove you hold your node key: sign [`auth_message`] with this nonce.
    Challenge {
        /// Single-use nonce.
        nonce: [u8; 32],
        /// The relay's own node id (bound into the signature).
        relay: NodeId,
    },
    /// Authenticated: frames from this link now come from `node`.
    Welcome {
        /// The pinned node id.
        node: NodeId,
        /// Largest frame the relay accepts.
        max_frame: u32,
    },
    /// Refused; on TLS the connection is closed afterwards.
    Refused {
        /// Why.
        reason: RefuseReason,
    },
    /// A frame forwarded from `from`.
    Recv {
        /// The authenticated sender.
        from: NodeId,
        /// The sender's bytes, untouched.
        payload: Payload,
    },
    /// The destination of a [`ClientMsg::Send`] is not connected.
    PeerGone {
        /// The absent node.
        node: NodeId,
    },
    /// Answer to [`ClientMsg::Store`].
    StoreAck {
        /// The client's id.
        id: u64,
        /// Result.
        outcome: StoreOutcome,
    },
    /// A stored message, delivered in order; acknowledge with [`ClientMsg::MailAck`].
    Mail {
        /// Relay-assigned, increasing id.
        id: u64,
        /// Id of the mail sent before this one in this session (0 for the first): a
        /// client accepts a mail only if `prev` is the last id it accepted, so a lost or
        /// reordered UDP datagram is never skipped by a cumulative ack.
        prev: u64,
        /// Who stored it (authenticated when stored).
        from: NodeId,
        /// The sealed bytes.
        sealed: Payload,
    },
    /// The relay is restarting: reconnect (to it or another relay) after this delay.
    Restarting {
        /// Suggested delay before reconnecting, in milliseconds.
        reconnect_after_ms: u32,
    },
    /// Answer to [`ClientMsg::Ping`].
    Pong {
        /// Echo.
        n: u64,
    },
    /// Answer to [`ClientMsg::HealthQuery`].
    Health {
        /// Connected, authenticated clients.
        clients: u32,
        /// Maximum clients.
        max_clients: u32,
        /// Whether the relay is draining.
        draining: bool,
    },
}

/// Encodes one UDP datagram: [`UDP_MAGIC`] then one frame.
pub fn encode_datagram<T: Serialize>(msg: &T, max: usize) -> Result<Vec<u8>, FrameError> {
    let frame = frame::encode(msg, max)?;
    let mut out = Vec::with_capacity(UDP_MAGIC.len() + frame.len());
    out.extend_from_slice(&UDP_MAGIC);
    out.extend_from_slice(&frame);
    Ok(out)
}

/// Whether a datagram on the daemon's socket is a relay datagram.
pub fn is_relay_datagram(datagram: &[u8]) -> bool {
    datagram.starts_with(&UDP_MAGIC)
}

/// Decodes a UDP relay datagram (magic + exactly one frame).
pub fn decode_datagram<T: serde::de::DeserializeOwned>(
    datagram: &[u8],
    max: usize,
) -> Result<T, FrameError> {
    let body = datagram
        .strip_prefix(&UDP_MAGIC[..])
        .ok_or(FrameError::Version {
            got: datagram.first().copied().unwrap_or(0),
            supported: UDP_MAGIC[0],
        })?;
    frame::decode_datagram(body, max)
}

/// Bincode variant index of [`ClientMsg::Send`] (declaration order; pinned by a test).
const SEND_VARIANT: u32 = 2;
/// Bincode variant index of [`RelayMsg::Recv`] (declaration order; pinned by a test).
const RECV_VARIANT: u32 = 3;

// The in-place rewrite writes the variant index as one byte.
const _: () = assert!(SEND_VARIANT < 251 && RECV_VARIANT < 251);

/// The bincode configuration of [`crate::frame`] (standard, bounded).
fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<{ frame::DEFAULT_MAX_FRAME }>()
}

/// Appends to `out` the UDP datagram of [`ClientMsg::Send`] `{ to, payload }`, byte for
/// byte what [`encode_datagram`] writes, with the payload copied once (straight into
/// `out`). Lets a sender put several datagrams in one buffer (a GSO batch).
pub fn encode_send_datagram(
    out: &mut Vec<u8>,
    to: &NodeId,
    payload: &[u8],
    max: usize,
) -> Result<(), FrameError> {
    encode_forward(out, true, SEND_VARIANT, to, payload, max)
}

/// Appends to `out` [`RelayMsg::Recv`] `{ from, payload }`: a UDP datagram (magic and
/// frame, as [`encode_datagram`]) when `udp`, else one stream frame (as
/// [`frame::encode`]). The relay's forwarding path: the payload is copied once.
pub fn encode_recv(
    out: &mut Vec<u8>,
    udp: bool,
    from: &NodeId,
    payload: &[u8],
    max: usize,
) -> Result<(), FrameError> {
    encode_forward(out, udp, RECV_VARIANT, from, payload, max)
}

fn encode_forward(
    out: &mut Vec<u8>,
    udp: bool,
    variant: u32,
    node: &NodeId,
    payload: &[u8],
    max: usize,
) -> Result<(), FrameError> {
    let start = out.len();
    if udp {
        out.extend_from_slice(&UDP_MAGIC);
    }
    let len_at = out.len();
    out.extend_from_slice(&[0, 0, 0, 0, frame::FRAME_VERSION]);
    // The body as bincode writes the enum: the variant index and the payload's length
    // as bincode varints, the node id as its 32 bytes, then the payload (checked
    // against the enum's own encoding by the tests).
    let put = |n: u64, out: &mut Vec<u8>| {
        bincode::encode_into_std_write(n, out, bincode_config()).map(drop)
    };
    let body = put(u64::from(variant), out).and_then(|()| {
        out.extend_from_slice(node.as_bytes());
        put(payload.len() as u64, out)
    });
    if let Err(e) = body {
        out.truncate(start);
        return Err(FrameError::Encode(e));
    }
    out.extend_from_slice(payload);
    let len = out.len() - len_at - 4;
    let Some(len32) = u32::try_from(len).ok().filter(|_| len <= max) else {
        out.truncate(start);
        return Err(FrameError::TooLarge { len, max });
    };
    out[len_at..len_at + 4].copy_from_slice(&len32.to_be_bytes());
    Ok(())
}

/// Reads a UDP datagram holding [`ClientMsg::Send`] without copying its payload:
/// `Some((to, payload))`, or `None` when the datagram is a valid frame of another message
/// or does not decode (decode it with [`decode_datagram`] then). The payload is always
/// the datagram's tail.
pub fn decode_send_datagram(datagram: &[u8], max: usize) -> Option<(NodeId, &[u8])> {
    decode_forward(datagram, SEND_VARIANT, max)
}

/// Reads a UDP datagram holding [`RelayMsg::Recv`] without copying its payload:
/// `Some((from, payload))`, `None` as for [`decode_send_datagram`]. The payload is always
/// the datagram's tail.
pub fn decode_recv_datagram(datagram: &[u8], max: usize) -> Option<(NodeId, &[u8])> {
    decode_forward(datagram, RECV_VARIANT, max)
}

fn decode_forward(datagram: &[u8], variant: u32, max: usize) -> Option<(NodeId, &[u8])> {
    let at = forward_layout(datagram, variant, max)?;
    let node = NodeId::from_bytes(at.node_bytes(datagram)?).ok()?;
    Some((node, &datagram[at.payload..]))
}

/// Where the parts of a forwarded frame (`Send` or `Recv`) sit in its UDP datagram.
#[derive(Debug, Clone, Copy)]
struct ForwardLayout {
    /// Offset of the variant index.
    variant: usize,
    /// Offset of the node id (32 bytes).
    node: usize,
    /// Offset of the payload (the datagram's tail).
    payload: usize,
    /// Whether the variant index and the payload length are bincode's shortest forms
    /// (what [`encode_forward`] writes).
    canonical: bool,
}

impl ForwardLayout {
    fn node_bytes(&self, datagram: &[u8]) -> Option<[u8; 32]> {
        datagram.get(self.node..self.node + 32)?.try_into().ok()
    }
}

/// Reads the layout of a UDP datagram holding the forwarded frame `variant`, checking
/// everything the enum decoder checks except that the node id is a valid key.
fn forward_layout(datagram: &[u8], variant: u32, max: usize) -> Option<ForwardLayout> {
    let frame = datagram.strip_prefix(&UDP_MAGIC[..])?;
    let header: [u8; 4] = frame.get(..4)?.try_into().ok()?;
    let len = u32::from_be_bytes(header) as usize;
    if len == 0 || len > max || frame.len() != 4 + len || frame[4] != frame::FRAME_VERSION {
        return None;
    }
    let body_at = UDP_MAGIC.len() + frame::HEADER_LEN;
    let body = &frame[5..];
    // Read as the enum decoder reads them: the variant index as a u32, the length as a
    // u64 (bincode's varints), so both accept exactly the same datagrams.
    let (v, v_used) = bincode::decode_from_slice::<u32, _>(body, bincode_config()).ok()?;
    if v != variant {
        return None;
    }
    let rest = body.get(v_used..)?;
    rest.get(..32)?;
    let (n, n_used) = bincode::decode_from_slice::<u64, _>(&rest[32..], bincode_config()).ok()?;
    let payload = body_at + v_used + 32 + n_used;
    if (datagram.len() - payload) as u64 != n {
        return None;
    }
    Some(ForwardLayout {
        variant: body_at,
        node: body_at + v_used,
        payload,
        canonical: v_used == 1 && n_used == varint_len(n),
    })
}

/// Bytes bincode's varint encoding of `n` takes (its shortest form).
fn varint_len(n: u64) -> usize {
    match n {
        0..=250 => 1,
        251..=0xFFFF => 3,
        0x1_0000..=0xFFFF_FFFF => 5,
        _ => 9,
    }
}

/// Turns a UDP datagram holding [`ClientMsg::Send`] `{ to, payload }` into the datagram of
/// [`RelayMsg::Recv`] `{ from, payload }`, in place, and returns `to`: the relay's
/// forwarding path without a copy. The result is byte for byte what [`encode_recv`]
/// (`udp`) writes for `from` and the payload: the two frames differ only in the variant
/// index and the node id, and have the same length.
///
/// `None`, with the datagram untouched, when it is not a `Send` that
/// [`decode_send_datagram`] reads (`max` as there), or when its variant index or payload
/// length is not in bincode's shortest form (valid, but re-encoding would change the
/// length: take the copying path then). `known` is a destination the caller already holds
/// as a [`NodeId`] (e.g. the previous datagram's): when `to` has the same bytes, it is not
/// checked as a key again.
pub fn rewrite_send_as_recv(
    datagram: &mut [u8],
    from: &NodeId,
    known: Option<&NodeId>,
    max: usize,
) -> Option<NodeId> {
    let at = forward_layout(datagram, SEND_VARIANT, max)?;
    if !at.canonical {
        return None;
    }
    let bytes = at.node_bytes(datagram)?;
    let to = match known {
        Some(k) if *k.as_bytes() == bytes => *k,
        _ => NodeId::from_bytes(bytes).ok()?,
    };
    // Both variant indexes are below 251: one byte each in bincode's varint.
    datagram[at.variant] = RECV_VARIANT as u8;
    datagram[at.node..at.node + 32].copy_from_slice(from.as_bytes());
    Some(to)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(seed: u8) -> SecretKey {
        SecretKey::from_bytes(&[seed; 32])
    }

    fn client_msgs(n: u64, bytes: Vec<u8>) -> Vec<ClientMsg> {
        let k = key(n as u8);
        vec![
            ClientMsg::Hello {
                version: RELAY_VERSION,
                pad: Payload(bytes.clone()),
            },
            sign_auth(&k, &[n as u8; 32], &key(1).node_id(), Transport::Udp),
            ClientMsg::Send {
                to: k.node_id(),
                payload: Payload(bytes.clone()),
            },
            ClientMsg::Store {
                id: n,
                to: k.node_id(),
                sealed: Payload(bytes),
            },
            ClientMsg::MailAck { id: n },
            ClientMsg::Ping { n },
            ClientMsg::HealthQuery,
        ]
    }

    fn relay_msgs(n: u64, bytes: Vec<u8>) -> Vec<RelayMsg> {
        let id = key(n as u8).node_id();
        vec![
            RelayMsg::Challenge {
                nonce: [n as u8; 32],
                relay: id,
            },
            RelayMsg::Welcome {
                node: id,
                max_frame: n as u32,
            },
            RelayMsg::Refused {
                reason: RefuseReason::Draining,
            },
            RelayMsg::Recv {
                from: id,
                payload: Payload(bytes.clone()),
            },
            RelayMsg::PeerGone { node: id },
            RelayMsg::StoreAck {
                id: n,
                outcome: StoreOutcome::QuotaExceeded,
            },
            RelayMsg::Mail {
                id: n,
                prev: n / 2,
                from: id,
                sealed: Payload(bytes),
            },
            RelayMsg::Restarting {
                reconnect_after_ms: n as u32,
            },
            RelayMsg::Pong { n },
            RelayMsg::Health {
                clients: 1,
                max_clients: 2,
                draining: true,
            },
        ]
    }

    #[test]
    fn magic_is_neither_quic_nor_stun() {
        assert_eq!(UDP_MAGIC[0] & 0x40, 0, "QUIC fixed bit must be clear");
        assert_ne!(UDP_MAGIC[0] & 0xC0, 0, "STUN starts with two zero bits");
        let d = encode_datagram(&ClientMsg::Ping { n: 1 }, 1500).unwrap();
        assert!(is_relay_datagram(&d));
        assert!(!is_relay_datagram(&[0x40, 1, 2, 3, 4]));
    }

    #[test]
    fn auth_signature_binds_nonce_relay_and_transport() {
        let k = key(5);
        let relay = key(6).node_id();
        let ClientMsg::Auth { node, signature } = sign_auth(&k, &[9; 32], &relay, Transport::Udp)
        else {
            panic!("not auth")
        };
        assert!(verify_auth(&node, &signature, &[9; 32], &relay, Transport::Udp).is_ok());
        assert!(verify_auth(&node, &signature, &[8; 32], &relay, Transport::Udp).is_err());
        assert!(verify_auth(&node, &signature, &[9; 32], &node, Transport::Udp).is_err());
        assert!(verify_auth(&node, &signature, &[9; 32], &relay, Transport::Tls).is_err());
    }

    #[test]
    fn payload_is_encoded_as_one_byte_string() {
        let small = frame::to_bytes(&Payload(vec![200; 1000])).unwrap();
        assert!(small.len() <= 1003, "len {}", small.len());
    }

    #[test]
    fn forward_encoding_refuses_oversize_and_leaves_out_alone() {
        let mut out = vec![7u8; 3];
        let to = key(3).node_id();
        let err = encode_send_datagram(&mut out, &to, &[1; 2000], 1000);
        assert!(matches!(err, Err(FrameError::TooLarge { .. })), "{err:?}");
        assert_eq!(out, vec![7u8; 3]);
        encode_send_datagram(&mut out, &to, &[1; 900], 1000).unwrap();
        assert_eq!(&out[..3], &[7, 7, 7]);
        assert_eq!(
            decode_send_datagram(&out[3..], 1000).unwrap().1,
            &[1; 900][..]
        );
        assert!(
            decode_send_datagram(&out[3..], 900).is_none(),
            "frame over max"
        );
    }

    proptest! {
        #[test]
        fn forward_fast_path_matches_the_enum_encoding(
            n in any::<u64>(),
            prefix in prop::collection::vec(any::<u8>(), 0..40),
            bytes in prop::collection::vec(any::<u8>(), 0..1600),
        ) {
            let node = key(n as u8).node_id();
            let send = ClientMsg::Send { to: node, payload: Payload(bytes.clone()) };
            let mut out = prefix.clone();
            encode_send_datagram(&mut out, &node, &bytes, 4096).unwrap();
            let want = encode_datagram(&send, 4096).unwrap();
            prop_assert_eq!(&out[prefix.len()..], &want[..]);
            prop_assert_eq!(decode_send_datagram(&want, 4096), Some((node, &bytes[..])));
            prop_assert_eq!(decode_recv_datagram(&want, 4096), None);

            let recv = RelayMsg::Recv { from: node, payload: Payload(bytes.clone()) };
            let mut udp = prefix.clone();
            encode_recv(&mut udp, true, &node, &bytes, 4096).unwrap();
            let want = encode_datagram(&recv, 4096).unwrap();
            prop_assert_eq!(&udp[prefix.len()..], &want[..]);
            let (from, payload) = decode_recv_datagram(&want, 4096).unwrap();
            prop_assert_eq!(from, node);
            prop_assert_eq!(payload, &bytes[..]);
            // The payload is the datagram's tail (receivers move it in place).
            prop_assert!(std::ptr::eq(payload.as_ptr_range().end, want.as_ptr_range().end));
            prop_assert_eq!(decode_send_datagram(&want, 4096), None);

            let mut stream = Vec::new();
            encode_recv(&mut stream, false, &node, &bytes, 4096).unwrap();
            prop_assert_eq!(stream, frame::encode(&recv, 4096).unwrap());

            for m in client_msgs(n, bytes.clone()) {
                if !matches!(m, ClientMsg::Send { .. }) {
                    let d = encode_datagram(&m, 4096).unwrap();
                    prop_assert_eq!(decode_send_datagram(&d, 4096), None);
                }
            }
            for m in relay_msgs(n, bytes.clone()) {
                if !matches!(m, RelayMsg::Recv { .. }) {
                    let d = encode_datagram(&m, 4096).unwrap();
                    prop_assert_eq!(decode_recv_datagram(&d, 4096), None);
                }
            }
        }

        #[test]
        fn forward_readers_accept_what_the_decoders_accept(
            variant in prop::sample::select(vec![
                vec![2u8], vec![3], vec![0xFB, 2, 0], vec![0xFC, 3, 0, 0, 0], vec![0xFD, 2, 0, 0, 0, 0, 0, 0, 0],
            ]),
            len_form in 0usize..3,
            payload in prop::collection::vec(any::<u8>(), 0..300),
            extra in 0usize..2,
        ) {
            let mut body = variant;
            body.extend_from_slice(key(9).node_id().as_bytes());
            let n = payload.len() + extra;
            match len_form {
                0 if n < 251 => body.push(n as u8),
                1 => { body.push(0xFB); body.extend_from_slice(&(n as u16).to_le_bytes()) }
                _ => { body.push(0xFD); body.extend_from_slice(&(n as u64).to_le_bytes()) }
            }
            body.extend_from_slice(&payload);
            let mut d = UDP_MAGIC.to_vec();
            d.extend_from_slice(&((body.len() + 1) as u32).to_be_bytes());
            d.push(frame::FRAME_VERSION);
            d.extend_from_slice(&body);
            let send = decode_send_datagram(&d, 4096);
            match decode_datagram::<ClientMsg>(&d, 4096) {
                Ok(ClientMsg::Send { to, payload: p }) => {
                    prop_assert_eq!(send, Some((to, &p.0[..])))
                }
                _ => prop_assert_eq!(send, None),
            }
            let recv = decode_recv_datagram(&d, 4096);
            match decode_datagram::<RelayMsg>(&d, 4096) {
                Ok(RelayMsg::Recv { from, payload: p }) => {
                    prop_assert_eq!(recv, Some((from, &p.0[..])))
                }
                _ => prop_assert_eq!(recv, None),
            }
        }

        #[test]
        fn send_rewritten_in_place_is_the_recv_encoding(
            n in any::<u64>(),
            m in any::<u8>(),
            bytes in prop::collection::vec(any::<u8>(), 0..1600),
            known in 0usize..3,
        ) {
            let to = key(n as u8).node_id();
            let from = key(m.wrapping_add(1)).node_id();
            let other = key(m.wrapping_add(2)).node_id();
            let known = [None, Some(&to), Some(&other)][known];
            let mut d = Vec::new();
            encode_send_datagram(&mut d, &to, &bytes, 4096).unwrap();
            prop_assert_eq!(rewrite_send_as_recv(&mut d, &from, known, 4096), Some(to));
            let mut want = Vec::new();
            encode_recv(&mut want, true, &from, &bytes, 4096).unwrap();
            prop_assert_eq!(&d, &want);
            prop_assert_eq!(
                decode_datagram::<RelayMsg>(&d, 4096).unwrap(),
                RelayMsg::Recv { from, payload: Payload(bytes.clone()) }
            );
            // A Recv is not a Send: a second rewrite refuses and leaves it alone.
            prop_assert_eq!(rewrite_send_as_recv(&mut d, &to, None, 4096), None);
            prop_assert_eq!(&d, &want);
            // Over `max`: refused as `decode_send_datagram` refuses it.
            let mut d = Vec::new();
            encode_send_datagram(&mut d, &to, &bytes, 4096).unwrap();
            let before = d.clone();
            let max = d.len() - UDP_MAGIC.len() - 5;
            prop_assert_eq!(rewrite_send_as_recv(&mut d, &from, None, max), None);
            prop_assert_eq!(&d, &before);
            for msg in client_msgs(n, bytes.clone()) {
                if !matches!(msg, ClientMsg::Send { .. }) {
                    let mut d = encode_datagram(&msg, 4096).unwrap();
                    let before = d.clone();
                    prop_assert_eq!(rewrite_send_as_recv(&mut d, &from, None, 4096), None);
                    prop_assert_eq!(d, before);
                }
            }
        }

        #[test]
        fn send_rewrite_agrees_with_the_decoder_on_every_form(
            variant in prop::sample::select(vec![
                vec![2u8], vec![3], vec![0xFB, 2, 0], vec![0xFC, 2, 0, 0, 0], vec![0xFD, 2, 0, 0, 0, 0, 0, 0, 0],
            ]),
            len_form in 0usize..4,
            payload in prop::collection::vec(any::<u8>(), 0..300),
            extra in 0usize..2,
            valid_key in any::<bool>(),
        ) {
            let to = if valid_key { *key(9).node_id().as_bytes() } else { [0xFF; 32] };
            let mut body = variant;
            body.extend_from_slice(&to);
            let n = payload.len() + extra;
            match len_form {
                0 if n < 251 => body.push(n as u8),
                1 => { body.push(0xFB); body.extend_from_slice(&(n as u16).to_le_bytes()) }
                2 => { body.push(0xFC); body.extend_from_slice(&(n as u32).to_le_bytes()) }
                _ => { body.push(0xFD); body.extend_from_slice(&(n as u64).to_le_bytes()) }
            }
            body.extend_from_slice(&payload);
            let mut d = UDP_MAGIC.to_vec();
            d.extend_from_slice(&((body.len() + 1) as u32).to_be_bytes());
            d.push(frame::FRAME_VERSION);
            d.extend_from_slice(&body);
            let before = d.clone();
            let from = key(4).node_id();
            let decoded = decode_send_datagram(&before, 4096);
            match rewrite_send_as_recv(&mut d, &from, None, 4096) {
                Some(got) => {
                    let (to, p) = decoded.expect("rewrote a datagram the reader refuses");
                    prop_assert_eq!(got, to);
                    let mut want = Vec::new();
                    encode_recv(&mut want, true, &from, p, 4096).unwrap();
                    prop_assert_eq!(&d, &want);
                }
                None => {
                    prop_assert_eq!(&d, &before);
                    // Refused only what the reader refuses or what is not in the
                    // shortest form (re-encoding would change the length).
                    if let Some((to, p)) = decoded {
                        let mut canonical = Vec::new();
                        encode_send_datagram(&mut canonical, &to, p, 4096).unwrap();
                        prop_assert_ne!(canonical, before);
                    }
                }
            }
        }

        #[test]
        fn forward_decoders_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let mut d = UDP_MAGIC.to_vec();
            d.extend_from_slice(&((bytes.len() + 1) as u32).to_be_bytes());
            d.push(frame::FRAME_VERSION);
            d.extend_from_slice(&bytes);
            let _ = decode_send_datagram(&d, 4096);
            let _ = decode_recv_datagram(&d, 4096);
            let _ = decode_recv_datagram(&bytes, 4096);
            let from = key(1).node_id();
            for mut g in [d, bytes] {
                let before = g.clone();
                if rewrite_send_as_recv(&mut g, &from, None, 4096).is_none() {
                    prop_assert_eq!(g, before);
                }
            }
        }
    }

    proptest! {
        #[test]
        fn round_trip(n in any::<u64>(), bytes in prop::collection::vec(any::<u8>(), 0..600)) {
            for m in client_msgs(n, bytes.clone()) {
                let d = encode_datagram(&m, 4096).unwrap();
                prop_assert_eq!(decode_datagram::<ClientMsg>(&d, 4096).unwrap(), m.clone());
                let f = frame::encode(&m, 4096).unwrap();
                prop_assert_eq!(frame::decode::<ClientMsg>(&f, 4096).unwrap().unwrap().0, m);
            }
            for m in relay_msgs(n, bytes.clone()) {
                let d = encode_datagram(&m, 4096).unwrap();
                prop_assert_eq!(decode_datagram::<RelayMsg>(&d, 4096).unwrap(), m);
            }
        }

        #[test]
        fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode_datagram::<ClientMsg>(&bytes, 4096);
            let _ = decode_datagram::<RelayMsg>(&bytes, 4096);
            let mut d = UDP_MAGIC.to_vec();
            d.extend_from_slice(&((bytes.len() + 1) as u32).to_be_bytes());
            d.push(frame::FRAME_VERSION);
            d.extend_from_slice(&bytes);
            let _ = decode_datagram::<ClientMsg>(&d, 4096);
            let _ = decode_datagram::<RelayMsg>(&d, 4096);
        }
    }
}
