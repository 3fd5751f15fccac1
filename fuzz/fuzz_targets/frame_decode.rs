//! Every binary frame decoder: daemon, rendezvous and relay messages, as a stream and as
//! UDP datagrams. Decoding garbage must return an error, never panic or over-allocate;
//! the relay's in-place `Send`/`Recv` readers must agree with the full decoders.
#![no_main]

use agentmesh_proto::frame::{decode, decode_datagram, DEFAULT_MAX_FRAME};
use agentmesh_proto::{peer, relay, rendezvous, DiscoverQuery, Envelope, ErrorObject, Manifest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = decode::<Envelope>(data, DEFAULT_MAX_FRAME);
    let _ = decode::<Manifest>(data, DEFAULT_MAX_FRAME);
    let _ = decode::<DiscoverQuery>(data, DEFAULT_MAX_FRAME);
    let _ = decode::<ErrorObject>(data, DEFAULT_MAX_FRAME);
    let _ = decode::<rendezvous::ClientMsg>(data, DEFAULT_MAX_FRAME);
    let _ = decode::<rendezvous::ServerMsg>(data, DEFAULT_MAX_FRAME);
    let _ = decode::<relay::ClientMsg>(data, DEFAULT_MAX_FRAME);
    let _ = decode::<relay::RelayMsg>(data, DEFAULT_MAX_FRAME);
    // Peer frames have their own version (2: binary envelopes and JSON values).
    let _ = peer::decode_frame::<peer::RequesterFrame>(data, DEFAULT_MAX_FRAME);
    let _ = peer::decode_frame::<peer::ResponderFrame>(data, DEFAULT_MAX_FRAME);
    let _ = peer::decode_frame::<peer::OnewayFrame>(data, DEFAULT_MAX_FRAME);
    let _ = agentmesh_proto::frame::from_bytes::<peer::StoredFrame>(data);
    let _ = decode_datagram::<relay::ClientMsg>(data, 2048);
    let _ = relay::decode_datagram::<relay::ClientMsg>(data, 2048);
    let _ = relay::decode_datagram::<relay::RelayMsg>(data, 2048);
    // The relay's in-place readers of Send / Recv must agree with the full decoders.
    if let Some((to, payload)) = relay::decode_send_datagram(data, 2048) {
        match relay::decode_datagram::<relay::ClientMsg>(data, 2048) {
            Ok(relay::ClientMsg::Send { to: t, payload: p }) => {
                assert!(t == to && p.0 == payload, "send fast path disagrees")
            }
            other => panic!("send fast path read a datagram the decoder reads as {other:?}"),
        }
    }
    // The relay's in-place rewrite of Send into Recv: only what the reader reads, and
    // then exactly the Recv encoding; anything refused is left untouched.
    let mut rewritten = data.to_vec();
    let from = agentmesh_proto::SecretKey::from_bytes(&[1; 32]).node_id();
    match relay::rewrite_send_as_recv(&mut rewritten, &from, None, 2048) {
        Some(to) => match relay::decode_send_datagram(data, 2048) {
            Some((t, payload)) => {
                let mut want = Vec::new();
                assert!(relay::encode_recv(&mut want, true, &from, payload, 2048).is_ok());
                assert!(t == to && rewritten == want, "in-place rewrite disagrees")
            }
            None => panic!("in-place rewrite of a datagram the reader refuses"),
        },
        None => assert!(rewritten == data, "a refused rewrite changed the datagram"),
    }
    if let Some((from, payload)) = relay::decode_recv_datagram(data, 2048) {
        match relay::decode_datagram::<relay::RelayMsg>(data, 2048) {
            Ok(relay::RelayMsg::Recv { from: f, payload: p }) => {
                assert!(f == from && p.0 == payload, "recv fast path disagrees")
            }
            other => panic!("recv fast path read a datagram the decoder reads as {other:?}"),
        }
    }
});
