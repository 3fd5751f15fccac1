//! STUN: the rendezvous's responder (requests from anyone) and the daemon's prober
//! (answers from anyone).
#![no_main]

use std::net::SocketAddr;
use std::time::Instant;

use agentmesh::net::stun::StunProbe;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let from: SocketAddr = "203.0.113.5:4000".parse().unwrap();
    let local: SocketAddr = "198.51.100.1:3478".parse().unwrap();
    let _ = agentmesh_rendezvous::stun::respond(data, from, local, Some(from));
    let mut probe = StunProbe::new(Instant::now(), &[local], 1);
    probe.handle_response(local, data);
    let _ = probe.answers();
});
