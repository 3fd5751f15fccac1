//! Noise-sealed messages and hole-punch probes: anyone on the internet can send them.
#![no_main]

use agentmesh_proto::{sealed, SecretKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let me = SecretKey::from_bytes(&[7; 32]);
    let _ = sealed::open(&me, data);
    let _ = agentmesh::net::probe::decode(&me, data);
    let mut probe = agentmesh::net::demux::PROBE_MAGIC.to_vec();
    probe.extend_from_slice(data);
    let _ = agentmesh::net::probe::decode(&me, &probe);
});
