//! The local API's line parser: any bytes an agent sends.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = agentmesh::api::ops::parse_line(data);
});
