//! Router tests: the whole local-API contract driven without sockets or clocks.

use std::time::{Duration, Instant, SystemTime};

use agentmesh_proto::SecretKey;
use serde_json::{json, Value};

use super::*;
use crate::api::ops::parse_line;

struct Harness {
    router: Router,
    now: Now,
}

impl Harness {
    fn new() -> Self {
        let node = SecretKey::from_bytes(&[42; 32]).node_id();
        Harness {
            router: Router::new(
                node,
                RouterConfig::default(),
                Box::new(MemoryKeyStore::default()),
            ),
            now: Now {
                mono: Instant::now(),
                wall: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            },
        }
    }

    /// Sends one line from `conn`; returns all outputs as (conn, message).
    fn line(&mut self, conn: u64, line: Value) -> Vec<(u64, Value)> {
        let bytes = line.to_string();
        let outs = match parse_line(bytes.as_bytes()) {
            Ok((id, op)) => self.router.handle_op(self.now, ConnId(conn), id, op),
            Err(bad) => self.router.handle_bad_line(ConnId(conn), bad.id, bad.error),
        };
        flatten(outs)
    }

    /// Sends a line and returns the reply to it (the message carrying `id`).
    fn call(&mut self, conn: u64, line: Value) -> Value {
        let id = line["id"].clone();
        let outs = self.line(conn, line);
        outs.into_iter()
            .find(|(c, m)| *c == conn && m["id"] == id && m.get("event").is_none())
            .map(|(_, m)| m)
            .unwrap_or(Value::Null)
    }

    fn register(&mut self, conn: u64, name: &str, caps: &[&str], skills: &[&str]) -> String {
        let skills: Vec<Value> = skills.iter().map(|s| json!({"id": s, "name": s})).collect();
        let r = self.call(
            conn,
            json!({"op": "register", "id": "r", "manifest": {
            "name": name, "capabilities": caps, "skills": skills}}),
        );
        r["ok"]["agent_id"].as_str().unwrap().to_string()
    }

    fn advance(&mut self, d: Duration) -> Vec<(u64, Value)> {
        self.now.mono += d;
        self.now.wall += d;
        flatten(self.router.handle_timeout(self.now))
    }

    fn close(&mut self, conn: u64) -> Vec<(u64, Value)> {
        flatten(self.router.connection_closed(self.now, ConnId(conn)))
    }
}

fn flatten(outs: Vec<Output>) -> Vec<(u64, Value)> {
    outs.into_iter()
        .filter_map(|o| match o {
            Output::Send { conn, msg } => Some((conn.0, msg)),
            _ => None,
        })
        .collect()
}

fn event<'a>(outs: &'a [(u64, Value)], conn: u64, name: &str) -> Option<&'a Value> {
    outs.iter()
        .find(|(c, m)| *c == conn && m["event"] == name)
        .map(|(_, m)| m)
}

fn code(reply: &Value) -> &str {
    reply["error"]["code"].as_str().unwrap_or("")
}

#[test]
fn hello_register_discover_status() {
    let mut h = Harness::new();
    let hello = h.call(1, json!({"op": "hello", "id": 1}));
    assert_eq!(hello["ok"]["protocol_version"], "0.1.0");
    assert!(hello["ok"]["node_id"].as_str().unwrap().starts_with('N'));
    let a = h.register(1, "Translator", &["translation"], &["translate"]);
    h.register(1, "Echo", &["echo"], &["echo"]);
    let d = h.call(
        2,
        json!({"op": "discover", "id": 2, "query": {"capabilities": ["translation"]}}),
    );
    assert_eq!(d["ok"]["total"], 1);
    let m = &d["ok"]["agents"][0];
    assert_eq!(m["id"], a.as_str());
    assert!(
        m["trust"]["signature"].is_string(),
        "manifests are signed by the agent key"
    );
    let manifest: agentmesh_proto::Manifest = serde_json::from_value(m.clone()).unwrap();
    assert!(manifest.verify().is_ok());
    let all = h.call(2, json!({"op": "discover", "id": 3, "query": {"limit": 1}}));
    assert_eq!(
        (
            all["ok"]["total"].as_u64(),
            all["ok"]["agents"].as_array().unwrap().len()
        ),
        (Some(2), 1)
    );
    let st = h.call(2, json!({"op": "status", "id": 4}));
    assert_eq!(st["ok"]["agents"].as_array().unwrap().len(), 2);
    assert_eq!(st["ok"]["peers"], json!([]));
}

#[test]
fn request_respond_completes_with_updates_in_order() {
    let mut h = Harness::new();
    let echo = h.register(1, "Echo", &["echo"], &["echo"]);
    let caller = h.register(2, "Caller", &[], &[]);
    let outs = h.line(
        2,
        json!({"op": "request", "id": 9, "from": caller, "to": echo,
                                "skill": "echo", "input": {"text": "hi"}, "context_id": "c1"}),
    );
    let push = event(&outs, 1, "request").unwrap().clone();
    assert_eq!(push["input"], json!({"text": "hi"}));
    assert_eq!(push["from"], caller.as_str());
    assert_eq!(push["context_id"], "c1");
    let task = push["task_id"].as_str().unwrap().to_string();
    assert_eq!(event(&outs, 2, "task_update").unwrap()["request_id"], 9);

    let outs = h.line(
        1,
        json!({"op": "respond", "id": 1, "task_id": task, "state": "working", "message": "on it"}),
    );
    assert_eq!(event(&outs, 2, "task_update").unwrap()["message"], "on it");
    let outs = h.line(
        1,
        json!({"op": "stream", "id": 2, "task_id": task, "chunk": "a"}),
    );
    assert_eq!(event(&outs, 2, "stream").unwrap()["seq"], 0);
    let outs = h.line(
        1,
        json!({"op": "stream", "id": 3, "task_id": task, "chunk": "b", "final": true}),
    );
    assert_eq!(event(&outs, 2, "stream").unwrap()["seq"], 1);
    assert_eq!(event(&outs, 2, "stream").unwrap()["final"], true);
    let outs = h.line(1, json!({"op": "respond", "id": 4, "task_id": task, "state": "completed", "output": {"text": "hi"}}));
    let reply = outs.iter().find(|(c, m)| *c == 2 && m["id"] == 9).unwrap();
    assert_eq!(reply.1["ok"]["state"], "completed");
    assert_eq!(reply.1["ok"]["output"], json!({"text": "hi"}));
    let ack = outs.iter().find(|(c, m)| *c == 1 && m["id"] == 4).unwrap();
    assert_eq!(ack.1["ok"]["state"], "completed");

    let late = h.call(
        1,
        json!({"op": "respond", "id": 5, "task_id": task, "state": "working"}),
    );
    assert_eq!(code(&late), "TASK_INVALID_TRANSITION");
    let cancel = h.call(2, json!({"op": "cancel", "id": 6, "task_id": task}));
    assert_eq!(code(&cancel), "TASK_NOT_CANCELABLE");
}

#[test]
fn immediate_completion_passes_through_working() {
    let mut h = Harness::new();
    let echo = h.register(1, "Echo", &["echo"], &["echo"]);
    let caller = h.register(2, "Caller", &[], &[]);
    let outs = h.line(
        2,
        json!({"op": "request", "id": 1, "from": caller, "to": echo, "skill": "echo"}),
    );
    let task = event(&outs, 1, "request").unwrap()["task_id"].clone();
    let outs = h.line(
        1,
        json!({"op": "respond", "id": 2, "task_id": task, "state": "completed", "output": 1}),
    );
    let to_requester: Vec<&Value> = outs
        .iter()
        .filter(|(c, _)| *c == 2)
        .map(|(_, m)| m)
        .collect();
    assert_eq!(to_requester[0]["state"], "working");
    assert_eq!(to_requester[1]["ok"]["state"], "completed");
}

#[test]
fn input_required_then_continue() {
    let mut h = Harness::new();
    let a = h.register(1, "Booker", &["book"], &["book"]);
    let c = h.register(2, "Caller", &[], &[]);
    let outs = h.line(
        2,
        json!({"op": "request", "id": 1, "from": c, "to": a, "skill": "book"}),
    );
    let task = event(&outs, 1, "request").unwrap()["task_id"].clone();
    h.line(
        1,
        json!({"op": "respond", "id": 2, "task_id": task, "state": "working"}),
    );
    let outs = h.line(1, json!({"op": "respond", "id": 3, "task_id": task, "state": "input_required", "message": "which date?"}));
    assert_eq!(
        event(&outs, 2, "task_update").unwrap()["state"],
        "input_required"
    );
    let wrong_side = h.call(
        1,
        json!({"op": "continue", "id": 4, "task_id": task, "input": "x"}),
    );
    assert_eq!(code(&wrong_side), "UNAUTHORIZED");
    let outs = h.line(
        2,
        json!({"op": "continue", "id": 5, "task_id": task, "input": "friday"}),
    );
    assert_eq!(event(&outs, 1, "continue").unwrap()["input"], "friday");
    let again = h.call(
        2,
        json!({"op": "continue", "id": 6, "task_id": task, "input": "x"}),
    );
    assert_eq!(code(&again), "TASK_INVALID_TRANSITION");
    let bad = h.call(
        1,
        json!({"op": "respond", "id": 7, "task_id": task, "state": "submitted"}),
    );
    assert_eq!(code(&bad), "TASK_INVALID_TRANSITION");
}

#[test]
fn errors_for_unknown_agents_skills_and_ownership() {
    let mut h = Harness::new();
    let a = h.register(1, "Echo", &["echo"], &["echo"]);
    let c = h.register(2, "Caller", &[], &[]);
    let stranger = SecretKey::from_bytes(&[7; 32]).agent_id().to_string();
    let r = h.call(
        2,
        json!({"op": "request", "id": 1, "from": c, "to": stranger, "skill": "echo"}),
    );
    assert_eq!(code(&r), "AGENT_UNAVAILABLE");
    assert_eq!(r["error"]["retryable"], true);
    let r = h.call(
        2,
        json!({"op": "request", "id": 2, "from": c, "to": a, "skill": "nope"}),
    );
    assert_eq!(code(&r), "SKILL_NOT_FOUND");
    let r = h.call(
        2,
        json!({"op": "request", "id": 3, "from": a, "to": a, "skill": "echo"}),
    );
    assert_eq!(code(&r), "IDENTITY_MISMATCH");
    let r = h.call(
        2,
        json!({"op": "request", "id": 4, "from": c, "capability": "none", "skill": "echo"}),
    );
    assert_eq!(code(&r), "TRANSPORT_NO_RESPONDERS");
    let r = h.call(
        2,
        json!({"op": "request", "id": 5, "from": c, "skill": "echo"}),
    );
    assert_eq!(code(&r), "INPUT_INVALID");
    let r = h.call(
        2,
        json!({"op": "respond", "id": 6, "task_id": "nope", "state": "working"}),
    );
    assert_eq!(code(&r), "TASK_NOT_FOUND");
    let r = h.call(
        2,
        json!({"op": "register", "id": 7, "manifest": {"name": ""}}),
    );
    assert_eq!(code(&r), "INVALID_MANIFEST");
    let r = h.call(
        2,
        json!({"op": "register", "id": 8, "manifest": {"name": "x", "id": stranger}}),
    );
    assert_eq!(code(&r), "IDENTITY_MISMATCH");
    let r = h.call(2, json!({"op": "discover", "id": 9, "query": {"limit": 0}}));
    assert_eq!(code(&r), "INVALID_QUERY");
    let r = h.call(2, json!({"op": "frobnicate", "id": 10}));
    assert_eq!((code(&r), r["id"].clone()), ("INVALID_ENVELOPE", json!(10)));
}

#[test]
fn capability_requests_spread_over_agents() {
    let mut h = Harness::new();
    let w1 = h.register(1, "W1", &["work"], &["job"]);
    let w2 = h.register(3, "W2", &["work"], &["job"]);
    let c = h.register(2, "Caller", &[], &[]);
    let mut targets = Vec::new();
    for i in 0..4 {
        let outs = h.line(
            2,
            json!({"op": "request", "id": i, "from": c, "capability": "work", "skill": "job"}),
        );
        let (conn, push) = outs.iter().find(|(_, m)| m["event"] == "request").unwrap();
        targets.push(push["to"].as_str().unwrap().to_string());
        // complete it so both stay equally idle
        h.line(
            *conn,
            json!({"op": "respond", "id": 0, "task_id": push["task_id"], "state": "completed"}),
        );
    }
    assert_eq!(
        targets,
        vec![w1.clone(), w2.clone(), w1.clone(), w2.clone()]
    );
    // With w1 busy, w2 gets the next ones.
    h.line(
        2,
        json!({"op": "request", "id": 10, "from": c, "to": w1, "skill": "job"}),
    );
    for i in 11..13 {
        let outs = h.line(
            2,
            json!({"op": "request", "id": i, "from": c, "capability": "work", "skill": "job"}),
        );
        assert_eq!(event(&outs, 3, "request").unwrap()["to"], w2.as_str());
        let t = event(&outs, 3, "request").unwrap()["task_id"].clone();
        h.line(
            3,
            json!({"op": "respond", "id": 0, "task_id": t, "state": "completed"}),
        );
    }
}

#[test]
fn timeout_cancels_with_transport_timeout() {
    let mut h = Harness::new();
    let a = h.register(1, "Slow", &["slow"], &["slow"]);
    let c = h.register(2, "Caller", &[], &[]);
    let outs = h.line(
        2,
        json!({"op": "request", "id": 1, "from": c, "to": a, "skill": "slow", "timeout_ms": 500}),
    );
    assert!(event(&outs, 1, "request").is_some());
    assert!(h.advance(Duration::from_millis(499)).is_empty());
    let outs = h.advance(Duration::from_millis(1));
    assert_eq!(
        event(&outs, 1, "cancel").unwrap()["reason"],
        "the request timed out"
    );
    let reply = outs.iter().find(|(c, m)| *c == 2 && m["id"] == 1).unwrap();
    assert_eq!(reply.1["ok"]["state"], "canceled");
    assert_eq!(reply.1["ok"]["error"]["code"], "TRANSPORT_TIMEOUT");
    assert_eq!(h.router.poll_timeout(), None);
}

#[test]
fn responder_disconnect_fails_tasks_and_requester_disconnect_cancels() {
    let mut h = Harness::new();
    let a = h.register(1, "Echo", &["echo"], &["echo"]);
    let c = h.register(2, "Caller", &[], &[]);
    h.line(
        2,
        json!({"op": "request", "id": 1, "from": c, "to": a, "skill": "echo"}),
    );
    let outs = h.close(1);
    let reply = outs.iter().find(|(c, m)| *c == 2 && m["id"] == 1).unwrap();
    assert_eq!(reply.1["ok"]["state"], "failed");
    assert_eq!(reply.1["ok"]["error"]["code"], "AGENT_UNAVAILABLE");
    let d = h.call(
        2,
        json!({"op": "discover", "id": 2, "query": {"capabilities": ["echo"]}}),
    );
    assert_eq!(
        d["ok"]["total"], 0,
        "closing the connection takes its agent offline"
    );

    let a = h.register(3, "Echo", &["echo"], &["echo"]);
    let outs = h.line(
        2,
        json!({"op": "request", "id": 3, "from": c, "to": a, "skill": "echo"}),
    );
    let task = event(&outs, 3, "request").unwrap()["task_id"].clone();
    let outs = h.close(2);
    assert_eq!(event(&outs, 3, "cancel").unwrap()["task_id"], task);
    let r = h.call(
        3,
        json!({"op": "respond", "id": 4, "task_id": task, "state": "completed"}),
    );
    assert_eq!(code(&r), "TASK_INVALID_TRANSITION");
}

#[test]
fn cancel_by_requester_tells_responder() {
    let mut h = Harness::new();
    let a = h.register(1, "Echo", &["echo"], &["echo"]);
    let c = h.register(2, "Caller", &[], &[]);
    let outs = h.line(
        2,
        json!({"op": "request", "id": 1, "from": c, "to": a, "skill": "echo"}),
    );
    let task = event(&outs, 1, "request").unwrap()["task_id"].clone();
    let outs = h.line(2, json!({"op": "cancel", "id": 2, "task_id": task}));
    assert!(event(&outs, 1, "cancel").is_some());
    let final_reply = outs.iter().find(|(c, m)| *c == 2 && m["id"] == 1).unwrap();
    assert_eq!(final_reply.1["ok"]["state"], "canceled");
    let ack = outs.iter().find(|(c, m)| *c == 2 && m["id"] == 2).unwrap();
    assert_eq!(ack.1["ok"]["state"], "canceled");
    let stranger = h.call(9, json!({"op": "cancel", "id": 3, "task_id": task}));
    assert_eq!(code(&stranger), "TASK_NOT_CANCELABLE");
}

#[test]
fn emit_reaches_matching_subscriptions_only() {
    let mut h = Harness::new();
    let a = h.register(1, "Sub", &[], &[]);
    let b = h.register(2, "Pub", &[], &[]);
    let s1 = h.call(
        1,
        json!({"op": "subscribe", "id": 1, "agent_id": a, "pattern": "mesh.event.user.*"}),
    );
    let sid = s1["ok"]["subscription_id"].as_str().unwrap().to_string();
    h.call(
        1,
        json!({"op": "subscribe", "id": 2, "agent_id": a, "pattern": "mesh.event.>"}),
    );
    let outs = h.line(2, json!({"op": "emit", "id": 3, "from": b, "topic": "mesh.event.user.login", "data": {"u": 1}}));
    let events: Vec<&Value> = outs
        .iter()
        .filter(|(c, m)| *c == 1 && m["event"] == "event")
        .map(|(_, m)| m)
        .collect();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["subscription_id"], sid.as_str());
    assert_eq!(events[0]["from"], b.as_str());
    assert_eq!(events[0]["data"], json!({"u": 1}));
    let ack = outs.iter().find(|(c, m)| *c == 2 && m["id"] == 3).unwrap();
    assert_eq!(ack.1["ok"]["delivered"], 2);
    let outs = h.line(
        2,
        json!({"op": "emit", "id": 4, "from": b, "topic": "mesh.event.user.a.b"}),
    );
    assert_eq!(
        outs.iter().filter(|(_, m)| m["event"] == "event").count(),
        1
    );
    h.call(
        1,
        json!({"op": "unsubscribe", "id": 5, "subscription_id": sid}),
    );
    let r = h.call(
        2,
        json!({"op": "unsubscribe", "id": 6, "subscription_id": "sub-2"}),
    );
    assert_eq!(code(&r), "UNAUTHORIZED");
    let r = h.call(
        2,
        json!({"op": "emit", "id": 7, "from": b, "topic": "bad..topic"}),
    );
    assert_eq!(code(&r), "INPUT_INVALID");
    let r = h.call(
        1,
        json!({"op": "subscribe", "id": 8, "agent_id": a, "pattern": "a.>.b"}),
    );
    assert_eq!(code(&r), "INPUT_INVALID");
}

#[test]
fn named_keys_give_stable_agent_ids() {
    let mut h = Harness::new();
    let r1 = h.call(
        1,
        json!({"op": "register", "id": 1, "key_name": "echo", "manifest": {"name": "Echo"}}),
    );
    h.close(1);
    let r2 = h.call(
        2,
        json!({"op": "register", "id": 1, "key_name": "echo", "manifest": {"name": "Echo"}}),
    );
    assert_eq!(r1["ok"]["agent_id"], r2["ok"]["agent_id"]);
    let r3 = h.call(
        2,
        json!({"op": "register", "id": 1, "key_name": "../etc", "manifest": {"name": "Echo"}}),
    );
    assert_eq!(code(&r3), "INPUT_INVALID");
}

#[test]
fn ids_are_uuid_v7_of_the_given_time_and_distinct() {
    let t = std::time::SystemTime::UNIX_EPOCH + Duration::from_millis(1_763_769_600_123);
    let a = super::uuid_v7(t);
    let b = super::uuid_v7(t);
    assert_ne!(a, b);
    for id in [&a, &b] {
        let u = uuid::Uuid::parse_str(id).unwrap();
        assert_eq!(u.get_version_num(), 7);
        assert_eq!(u.get_variant(), uuid::Variant::RFC4122);
        let (secs, nanos) = u.get_timestamp().unwrap().to_unix();
        assert_eq!((secs, nanos / 1_000_000), (1_763_769_600, 123));
    }
}
