//! Mesh tests of announce, discover, lookups, events across daemons and status.

use super::*;

#[test]
fn announce_follows_register_deregister_and_close() {
    let mut m = Mesh::new();
    let echo = m.register(R::B, 1, "Echo", &["echo"], &["echo"]);
    let rec = &m.registry[0];
    assert_eq!(rec.node, m.node(R::B));
    assert_eq!(rec.manifest.id.to_string(), echo);
    m.register(R::B, 1, "Other", &[], &[]);
    m.call(
        R::B,
        1,
        json!({"op": "deregister", "id": 1, "agent_id": echo}),
    );
    assert_eq!(m.registry.len(), 1, "deregister is announced");
    m.close(R::B, 1);
    assert!(
        m.registry.is_empty(),
        "a closed connection's agents are unregistered"
    );
}

#[test]
fn discover_lists_local_and_remote_agents_with_their_node() {
    let mut m = Mesh::new();
    let remote = m.register(R::B, 1, "Echo B", &["echo"], &["echo"]);
    let local = m.register(R::A, 1, "Echo A", &["echo"], &["echo"]);
    m.register(R::A, 1, "Caller", &[], &[]);
    let d = m.call(
        R::A,
        2,
        json!({"op": "discover", "id": 5, "query": {"capabilities": ["echo"]}}),
    );
    assert_eq!(d["ok"]["total"], 2, "{d}");
    let agents = d["ok"]["agents"].as_array().cloned().unwrap_or_default();
    let find = |id: &str| {
        agents
            .iter()
            .find(|a| a["id"] == id)
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(find(&local)["local"], true);
    assert_eq!(find(&local)["node"], json!(m.node(R::A)));
    assert_eq!(find(&remote)["local"], false);
    assert_eq!(find(&remote)["node"], json!(m.node(R::B)));
    let st = m.call(R::A, 2, json!({"op": "status", "id": 6}));
    assert_eq!(
        st["ok"]["remote_agents_known"], 1,
        "records land in the directory"
    );
    let limited = m.call(
        R::A,
        2,
        json!({"op": "discover", "id": 7, "query": {"capabilities": ["echo"], "limit": 1}}),
    );
    assert_eq!(limited["ok"]["agents"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        limited["ok"]["agents"][0]["id"],
        local.as_str(),
        "local first"
    );
}

#[test]
fn rendezvous_errors_and_silence_give_clear_replies() {
    let mut m = Mesh::new();
    let local = m.register(R::A, 1, "Echo", &["echo"], &["echo"]);
    let caller = m.register(R::A, 1, "Caller", &[], &[]);
    m.lookup_error = Some(ErrorObject::new(
        agentmesh_proto::ErrorCode::DependencyFailed,
        "rendezvous unreachable: connection refused",
    ));
    let d = m.call(R::A, 2, json!({"op": "discover", "id": 1, "query": {}}));
    assert_eq!(code(&d), "DEPENDENCY_FAILED");
    assert!(d["error"]["message"]
        .as_str()
        .unwrap_or("")
        .contains("rendezvous"));
    let listed = &d["error"]["details"]["local_agents"];
    assert_eq!(listed.as_array().map(Vec::len), Some(2));
    assert!(listed
        .as_array()
        .into_iter()
        .flatten()
        .any(|a| a["id"] == local.as_str()));
    let stranger = SecretKey::from_bytes(&[77; 32]).agent_id().to_string();
    let r = m.call(
        R::A,
        1,
        json!({"op": "request", "id": 2, "from": caller, "to": stranger, "skill": "echo"}),
    );
    assert_eq!(code(&r), "DEPENDENCY_FAILED");

    m.lookup_error = None;
    let r = m.call(
        R::A,
        1,
        json!({"op": "request", "id": 3, "from": caller, "to": stranger, "skill": "echo"}),
    );
    assert_eq!(code(&r), "AGENT_UNAVAILABLE");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("mesh"),
        "{r}"
    );

    m.mute_rendezvous = true;
    let outs = m.line(R::A, 2, json!({"op": "discover", "id": 4, "query": {}}));
    assert!(
        reply(&outs, R::A, 2, &json!(4)).is_none(),
        "waits for the rendezvous"
    );
    let outs = m.advance(Duration::from_secs(10));
    let r = reply(&outs, R::A, 2, &json!(4))
        .cloned()
        .unwrap_or_default();
    assert_eq!(code(&r), "DEPENDENCY_FAILED");
    assert_eq!(m.a.poll_timeout(), None);
}

#[test]
fn emit_reaches_remote_subscribers_once() {
    let mut m = Mesh::new();
    let sub = m.register(R::B, 1, "Sub", &[], &[]);
    let publisher = m.register(R::A, 1, "Pub", &[], &[]);
    let s = m.call(
        R::B,
        1,
        json!({"op": "subscribe", "id": 1, "agent_id": sub, "pattern": "mesh.event.user.*"}),
    );
    m.call(
        R::B,
        1,
        json!({"op": "subscribe", "id": 2, "agent_id": sub, "pattern": "mesh.event.user.*"}),
    );
    assert_eq!(
        m.patterns.get(&m.node(R::B)),
        Some(&vec!["mesh.event.user.*".to_string()]),
        "patterns are announced deduplicated"
    );
    m.hold = true;
    let outs = m.line(
        R::A,
        1,
        json!({"op": "emit", "id": 3, "from": publisher, "topic": "mesh.event.user.login", "data": {"u": 1}}),
    );
    let ack = reply(&outs, R::A, 1, &json!(3))
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        (
            ack["ok"]["delivered"].clone(),
            ack["ok"]["remote_nodes"].clone()
        ),
        (json!(0), json!(1))
    );
    let got = m.release(2);
    let events: Vec<&Value> = got
        .iter()
        .filter(|(r, c, e)| *r == R::B && *c == 1 && e["event"] == "event")
        .map(|(_, _, e)| e)
        .collect();
    assert_eq!(
        events.len(),
        2,
        "two subscriptions, and the duplicate delivery is dropped"
    );
    assert_eq!(events[0]["from"], publisher.as_str());
    assert_eq!(events[0]["from_node"], json!(m.node(R::A)));
    assert_eq!(events[0]["data"], json!({"u": 1}));
    assert_eq!(events[0]["subscription_id"], s["ok"]["subscription_id"]);

    let outs = m.line(
        R::A,
        1,
        json!({"op": "emit", "id": 4, "from": publisher, "topic": "mesh.other"}),
    );
    let ack = reply(&outs, R::A, 1, &json!(4))
        .cloned()
        .unwrap_or_default();
    assert_eq!(ack["ok"]["remote_nodes"], 0, "no remote pattern matches");
    m.close(R::B, 1);
    assert_eq!(m.patterns.get(&m.node(R::B)), Some(&vec![]));
    let outs = m.line(
        R::A,
        1,
        json!({"op": "emit", "id": 5, "from": publisher, "topic": "mesh.event.user.login"}),
    );
    assert_eq!(
        reply(&outs, R::A, 1, &json!(5)).map(|r| r["ok"]["remote_nodes"].clone()),
        Some(json!(0))
    );
}

#[test]
fn status_shows_the_network_and_watchers_get_path_events() {
    let mut m = Mesh::new();
    let st = m.call(R::A, 1, json!({"op": "status", "id": 1}));
    assert_eq!(
        (st["ok"]["net"].clone(), st["ok"]["peers"].clone()),
        (Value::Null, json!([]))
    );
    let peer = json!({"node": m.node(R::B), "path": "direct", "tier": "punched", "rtt_ms": 12});
    let nat = std::sync::Arc::new(std::sync::Mutex::new("port-restricted"));
    let seen = nat.clone();
    let p = peer.clone();
    m.a.set_net_source(crate::router::NetSource(std::sync::Arc::new(move || {
        let nat = *seen.lock().unwrap();
        json!({"nat": nat, "public": ["203.0.113.7:4433"], "peers": [p]})
    })));
    let st = m.call(R::A, 1, json!({"op": "status", "id": 2, "watch": true}));
    assert_eq!(st["ok"]["net"]["nat"], "port-restricted");
    assert_eq!(st["ok"]["peers"], json!([peer]));
    *nat.lock().unwrap() = "symmetric";
    let st = m.call(R::A, 1, json!({"op": "status", "id": 4}));
    assert_eq!(
        st["ok"]["net"]["nat"], "symmetric",
        "status reads the source each time"
    );
    m.call(R::A, 2, json!({"op": "status", "id": 3}));
    let info = json!({"node": m.node(R::B), "path": "relayed", "rtt_ms": 80});
    let outs = m.step(R::A, |rt, _| rt.path_changed(info));
    assert_eq!(outs.len(), 1, "only the watching connection: {outs:?}");
    let (_, conn, ev) = &outs[0];
    assert_eq!(*conn, 1);
    assert_eq!(ev["event"], "path");
    assert_eq!(ev["path"], "relayed");
}
