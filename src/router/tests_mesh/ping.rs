//! Mesh tests of `ping`: how its target resolves to a daemon and what the network
//! driver is asked to do (the harness answers `Output::Ping` at once).

use super::*;

#[test]
fn ping_resolves_node_ids_and_known_agents_and_clamps_its_arguments() {
    let mut m = Mesh::new();
    let b = m.node(R::B);
    let p = m.call(
        R::A,
        1,
        json!({"op": "ping", "id": 1, "target": b, "count": 1000, "interval_ms": 1}),
    );
    assert_eq!(
        p["ok"],
        json!({"node": b, "count": 100, "interval_ms": 10}),
        "{p}"
    );
    let p = m.call(R::A, 1, json!({"op": "ping", "id": 2, "target": b}));
    assert_eq!(
        (p["ok"]["count"].clone(), p["ok"]["interval_ms"].clone()),
        (json!(4), json!(1000))
    );

    let echo = m.register(R::B, 1, "Echo", &["echo"], &["echo"]);
    let before = m.lookups;
    let p = m.call(R::A, 1, json!({"op": "ping", "id": 3, "target": echo}));
    assert_eq!(p["ok"]["node"], json!(b), "looked up: {p}");
    assert_eq!(m.lookups, before + 1);
    let p = m.call(R::A, 1, json!({"op": "ping", "id": 4, "target": echo}));
    assert_eq!(p["ok"]["node"], json!(b), "from the directory: {p}");
    assert_eq!(m.lookups, before + 1, "no second lookup");
    m.call(
        R::B,
        1,
        json!({"op": "deregister", "id": 5, "agent_id": echo}),
    );
    let gone = SecretKey::from_bytes(&[9; 32]).agent_id().to_string();
    let p = m.call(R::A, 1, json!({"op": "ping", "id": 6, "target": gone}));
    assert_eq!(
        code(&p),
        "AGENT_UNAVAILABLE",
        "unknown at the rendezvous: {p}"
    );
}

#[test]
fn ping_refuses_this_daemon_and_garbage() {
    let mut m = Mesh::new();
    let own = m.register(R::A, 1, "Here", &[], &[]);
    let a = m.node(R::A);
    for target in [json!(own), json!(a), json!("hello")] {
        let p = m.call(R::A, 1, json!({"op": "ping", "id": 1, "target": target}));
        assert_eq!(code(&p), "INPUT_INVALID", "{target}: {p}");
    }
}
