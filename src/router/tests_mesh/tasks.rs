//! Mesh tests of tasks across daemons: the requester on A, the responder on B.

use agentmesh_proto::peer::{RequesterFrame, ResponderFrame};

use super::*;

/// Echo on `resp` (conn 1), Caller on A (conn 2); returns (echo, caller).
fn pair(m: &mut Mesh, resp: R) -> (String, String) {
    let echo = m.register(resp, 1, "Echo", &["echo"], &["echo", "book"]);
    let caller = m.register(R::A, 2, "Caller", &[], &[]);
    (echo, caller)
}

/// Opens a request from the caller; returns (task id, all messages).
fn open(m: &mut Mesh, resp: R, line: Value) -> (Value, Vec<Msg>) {
    let outs = m.line(R::A, 2, line);
    let push = event(&outs, resp, 1, "request")
        .cloned()
        .unwrap_or_default();
    (push["task_id"].clone(), outs)
}

/// What the requester's connection saw, with task ids blanked for comparison.
fn requester_view(outs: &[Msg]) -> Vec<Value> {
    outs.iter()
        .filter(|(r, c, _)| *r == R::A && *c == 2)
        .map(|(_, _, m)| {
            let mut m = m.clone();
            for (k, blank) in [("task_id", "T"), ("to", "AGENT")] {
                if m.get(k).is_some() {
                    m[k] = json!(blank);
                }
            }
            if m["ok"].get("task_id").is_some() {
                m["ok"]["task_id"] = json!("T");
            }
            m
        })
        .collect()
}

/// Runs request → working → two chunks → completed with the responder on `resp`.
fn full_run(resp: R) -> (Vec<Value>, Value) {
    let mut m = Mesh::new();
    let (echo, caller) = pair(&mut m, resp);
    let line = json!({"op": "request", "id": 9, "from": caller, "to": echo, "skill": "echo",
                      "input": {"text": "hi"}, "context_id": "c1", "stream": true});
    let (task, mut seen) = open(&mut m, resp, line);
    let push = event(&seen, resp, 1, "request")
        .cloned()
        .unwrap_or_default();
    for l in [
        json!({"op": "respond", "id": 1, "task_id": task, "state": "working", "message": "on it"}),
        json!({"op": "stream", "id": 2, "task_id": task, "chunk": "a"}),
        json!({"op": "stream", "id": 3, "task_id": task, "chunk": "b", "final": true}),
        json!({"op": "respond", "id": 4, "task_id": task, "state": "completed", "output": {"text": "hi"}}),
    ] {
        let id = l["id"].clone();
        let outs = m.line(resp, 1, l);
        assert!(reply(&outs, resp, 1, &id).is_some_and(|r| r.get("ok").is_some()));
        seen.extend(outs);
    }
    assert_eq!(
        m.a.tasks.live_count() + m.b.tasks.live_count(),
        0,
        "both tables end it"
    );
    (requester_view(&seen), push)
}

#[test]
fn request_across_hosts_gives_the_requester_the_local_pushes() {
    let (local, local_push) = full_run(R::A);
    let (remote, remote_push) = full_run(R::B);
    assert_eq!(remote, local);
    assert_eq!(
        remote.len(),
        5,
        "submitted, working, 2 chunks, completed reply: {remote:?}"
    );
    assert_eq!(remote[4]["ok"]["output"], json!({"text": "hi"}));
    assert_eq!(remote[1]["message"], "on it");
    assert_eq!(remote_push["from_node"], json!(Mesh::new().node(R::A)));
    let mut without_node = remote_push.clone();
    if let Some(o) = without_node.as_object_mut() {
        o.remove("from_node");
    }
    let blank = |mut v: Value| {
        v["task_id"] = json!("T");
        v["to"] = json!("AGENT");
        v
    };
    assert_eq!(
        blank(without_node),
        blank(local_push),
        "same request push plus from_node"
    );
}

/// An agent that answers `completed` at once: the requester sees what it would see
/// locally (submitted, working, the reply), and the responder's daemon sends one frame.
#[test]
fn immediate_completion_across_hosts_sends_one_frame_and_still_shows_working() {
    let run = |resp: R| {
        let mut m = Mesh::new();
        let (echo, caller) = pair(&mut m, resp);
        let line = json!({"op": "request", "id": 9, "from": caller, "to": echo, "skill": "echo"});
        let (task, mut seen) = open(&mut m, resp, line);
        let before = m.wire.len();
        let done =
            json!({"op": "respond", "id": 1, "task_id": task, "state": "completed", "output": 7});
        seen.extend(m.line(resp, 1, done));
        let frames: Vec<String> = m.wire[before..]
            .iter()
            .map(|(_, _, msg)| format!("{msg:?}"))
            .collect();
        (requester_view(&seen), frames)
    };
    let (local, _) = run(R::A);
    let (remote, frames) = run(R::B);
    assert_eq!(remote, local);
    let states: Vec<Value> = remote
        .iter()
        .map(|m| m.get("ok").unwrap_or(m)["state"].clone())
        .collect();
    assert_eq!(
        states,
        [json!("submitted"), json!("working"), json!("completed")]
    );
    assert_eq!(frames.len(), 1, "only the final crosses: {frames:?}");
    assert!(frames[0].contains("Final"), "{frames:?}");
}

#[test]
fn capability_goes_remote_when_no_local_agent_and_spreads() {
    let mut m = Mesh::new();
    let w1 = m.register(R::B, 1, "W1", &["work"], &["job"]);
    let w2 = m.register(R::B, 3, "W2", &["work"], &["job"]);
    let caller = m.register(R::A, 2, "Caller", &[], &[]);
    let mut targets = Vec::new();
    for i in 0..4 {
        let outs = m.line(
            R::A,
            2,
            json!({"op": "request", "id": i, "from": caller, "capability": "work", "skill": "job"}),
        );
        let Some((_, conn, push)) = outs
            .iter()
            .find(|(r, _, e)| *r == R::B && e["event"] == "request")
        else {
            panic!("no request reached B: {outs:?}");
        };
        targets.push(push["to"].as_str().unwrap_or_default().to_string());
        let done =
            json!({"op": "respond", "id": 0, "task_id": push["task_id"], "state": "completed"});
        let conn = *conn;
        let outs = m.line(R::B, conn, done);
        assert_eq!(
            reply(&outs, R::A, 2, &json!(i)).map(|r| r["ok"]["state"].clone()),
            Some(json!("completed"))
        );
    }
    targets.sort();
    let mut want = vec![w1.clone(), w1, w2.clone(), w2];
    want.sort();
    assert_eq!(targets, want, "spread over both remote workers");
    let r = m.call(
        R::A,
        2,
        json!({"op": "request", "id": 8, "from": caller, "capability": "none", "skill": "job"}),
    );
    assert_eq!(code(&r), "TRANSPORT_NO_RESPONDERS");
    let local = m.register(R::A, 4, "W3", &["work"], &["job"]);
    let outs = m.line(
        R::A,
        2,
        json!({"op": "request", "id": 9, "from": caller, "capability": "work", "skill": "job"}),
    );
    assert_eq!(
        event(&outs, R::A, 4, "request").map(|p| p["to"].clone()),
        Some(json!(local)),
        "local first"
    );
}

#[test]
fn input_required_then_continue_across_hosts() {
    let mut m = Mesh::new();
    let (echo, caller) = pair(&mut m, R::B);
    let (task, _) = open(
        &mut m,
        R::B,
        json!({"op": "request", "id": 1, "from": caller, "to": echo, "skill": "book"}),
    );
    let outs = m.line(R::B, 1, json!({"op": "respond", "id": 2, "task_id": task, "state": "input_required", "message": "which date?"}));
    let states: Vec<Value> = requester_view(&outs)
        .iter()
        .map(|v| v["state"].clone())
        .collect();
    assert_eq!(states, vec![json!("working"), json!("input_required")]);
    let outs = m.line(
        R::A,
        2,
        json!({"op": "continue", "id": 3, "task_id": task, "input": "friday"}),
    );
    assert_eq!(
        event(&outs, R::B, 1, "continue").map(|e| e["input"].clone()),
        Some(json!("friday"))
    );
    assert_eq!(
        event(&outs, R::A, 2, "task_update").map(|e| e["state"].clone()),
        Some(json!("working"))
    );
    let outs = m.line(
        R::B,
        1,
        json!({"op": "respond", "id": 4, "task_id": task, "state": "completed", "output": 1}),
    );
    let done = reply(&outs, R::A, 2, &json!(1))
        .cloned()
        .unwrap_or_default();
    assert_eq!(done["ok"]["state"], "completed");
}

#[test]
fn requester_cancel_reaches_the_remote_responder() {
    let mut m = Mesh::new();
    let (echo, caller) = pair(&mut m, R::B);
    let (task, _) = open(
        &mut m,
        R::B,
        json!({"op": "request", "id": 1, "from": caller, "to": echo, "skill": "echo"}),
    );
    let outs = m.line(R::A, 2, json!({"op": "cancel", "id": 2, "task_id": task}));
    assert_eq!(
        event(&outs, R::B, 1, "cancel").map(|e| e["reason"].clone()),
        Some(json!("canceled by the requester"))
    );
    assert_eq!(
        reply(&outs, R::A, 2, &json!(1)).map(|r| r["ok"]["state"].clone()),
        Some(json!("canceled"))
    );
    let late = m.call(
        R::B,
        1,
        json!({"op": "respond", "id": 3, "task_id": task, "state": "completed"}),
    );
    assert_eq!(code(&late), "TASK_INVALID_TRANSITION");
}

#[test]
fn requester_timeout_sends_cancel() {
    let mut m = Mesh::new();
    let (echo, caller) = pair(&mut m, R::B);
    let (task, _) = open(
        &mut m,
        R::B,
        json!({"op": "request", "id": 1, "from": caller, "to": echo, "skill": "echo", "timeout_ms": 500}),
    );
    assert!(m.advance(Duration::from_millis(499)).is_empty());
    let outs = m.advance(Duration::from_millis(1));
    let (node_a, node_b) = (m.node(R::A), m.node(R::B));
    assert!(m.wire.iter().any(|(f, t, msg)| (*f, *t) == (node_a, node_b)
        && *msg
            == PeerMsg::Cancel {
                task_id: task.as_str().unwrap_or_default().into()
            }));
    assert!(event(&outs, R::B, 1, "cancel").is_some());
    let (state, error, _) = task_end(&outs, R::A, 2, 1);
    assert_eq!(
        (state, error),
        (json!("canceled"), json!("TRANSPORT_TIMEOUT"))
    );
    assert_eq!((m.a.poll_timeout(), m.b.tasks.live_count()), (None, 0));
}

#[test]
fn responder_connection_closing_fails_the_remote_request() {
    let mut m = Mesh::new();
    let (echo, caller) = pair(&mut m, R::B);
    open(
        &mut m,
        R::B,
        json!({"op": "request", "id": 1, "from": caller, "to": echo, "skill": "echo"}),
    );
    let outs = m.close(R::B, 1);
    let (state, error, _) = task_end(&outs, R::A, 2, 1);
    assert_eq!(
        (state, error),
        (json!("failed"), json!("AGENT_UNAVAILABLE"))
    );
    let again = m.call(
        R::A,
        2,
        json!({"op": "request", "id": 2, "from": caller, "to": echo, "skill": "echo"}),
    );
    assert_eq!(
        code(&again),
        "AGENT_UNAVAILABLE",
        "the directory forgot it: {again}"
    );
}

#[test]
fn duplicate_open_runs_once_and_bad_opens_fail_back() {
    let mut m = Mesh::new();
    let (echo, caller) = pair(&mut m, R::B);
    m.hold = true;
    m.line(
        R::A,
        2,
        json!({"op": "request", "id": 1, "from": caller, "to": echo, "skill": "echo"}),
    );
    let outs = m.release(2);
    let pushes = outs
        .iter()
        .filter(|(r, _, e)| *r == R::B && e["event"] == "request")
        .count();
    assert_eq!((pushes, m.b.tasks.live_count()), (1, 1));
    let Some((_, _, PeerMsg::Requester(RequesterFrame::Open(env)))) = m.wire.first().cloned()
    else {
        panic!("no open on the wire");
    };
    let mut other = env.clone();
    other.id = "another-envelope".into();
    let from = m.node(R::A);
    let outs = m.step(R::B, |rt, now| {
        rt.handle_peer(now, from, PeerMsg::Requester(RequesterFrame::Open(other)))
    });
    assert!(outs.is_empty(), "the same task id never runs twice");

    let mut bad = env;
    bad.id = "bad-skill".into();
    bad.task_id = Some("task-2".into());
    bad.payload = Some(agentmesh_proto::Json(json!({"skill": "nope"})));
    m.hold = true;
    m.step(R::B, |rt, now| {
        rt.handle_peer(now, from, PeerMsg::Requester(RequesterFrame::Open(bad)))
    });
    let Some((_, to, PeerMsg::Responder(ResponderFrame::Final(fin)))) = m.held.last().cloned()
    else {
        panic!("no final for a bad open");
    };
    assert_eq!(to, from);
    assert_eq!(
        fin.error.map(|e| e.code),
        Some(agentmesh_proto::ErrorCode::SkillNotFound)
    );
}

#[test]
fn messages_from_other_nodes_are_ignored() {
    let mut m = Mesh::new();
    let (echo, caller) = pair(&mut m, R::B);
    let (task, _) = open(
        &mut m,
        R::B,
        json!({"op": "request", "id": 1, "from": caller, "to": echo, "skill": "echo"}),
    );
    let stranger = SecretKey::from_bytes(&[9; 32]).node_id();
    let chunk = ResponderFrame::Chunk {
        task_id: task.as_str().unwrap_or_default().into(),
        seq: 0,
        chunk: agentmesh_proto::Json(json!("x")),
        last: true,
    };
    let outs = m.step(R::A, |rt, now| {
        rt.handle_peer(now, stranger, PeerMsg::Responder(chunk))
    });
    assert!(outs.is_empty());
    let outs = m.step(R::A, |rt, now| {
        rt.handle_peer(
            now,
            stranger,
            PeerMsg::Cancel {
                task_id: task.as_str().unwrap_or_default().into(),
            },
        )
    });
    assert!(outs.is_empty());
    assert_eq!(m.a.tasks.live_count(), 1);
}

#[test]
fn peer_unreachable_ends_tasks_on_both_sides() {
    let mut m = Mesh::new();
    let (echo, caller) = pair(&mut m, R::B);
    let (task, _) = open(
        &mut m,
        R::B,
        json!({"op": "request", "id": 1, "from": caller, "to": echo, "skill": "echo"}),
    );
    // B answered, so it has the request: losing B fails the task (an unanswered one
    // would be stored instead, see tests_mesh/mail.rs).
    m.line(
        R::B,
        1,
        json!({"op": "respond", "id": 5, "task_id": task, "state": "working"}),
    );
    // And a task the other way: B asks an agent on A.
    let a_agent = m.register(R::A, 3, "Local", &[], &["job"]);
    let b_caller = m.register(R::B, 4, "BCaller", &[], &[]);
    let outs = m.line(
        R::B,
        4,
        json!({"op": "request", "id": 7, "from": b_caller, "to": a_agent, "skill": "job"}),
    );
    assert!(event(&outs, R::A, 3, "request").is_some());
    let before = m.wire.len();
    let b = m.node(R::B);
    let err = ErrorObject::new(
        agentmesh_proto::ErrorCode::AgentUnavailable,
        "no path to the peer",
    );
    let outs = m.step(R::A, |rt, now| rt.peer_unreachable(now, b, err));
    let (state, error, message) = task_end(&outs, R::A, 2, 1);
    assert_eq!(
        (state, error),
        (json!("failed"), json!("AGENT_UNAVAILABLE"))
    );
    assert!(message.contains("unreachable"), "{message}");
    assert!(
        event(&outs, R::A, 3, "cancel").is_some(),
        "the local responder is told"
    );
    assert_eq!(
        (m.wire.len(), m.a.tasks.live_count()),
        (before, 0),
        "nothing is sent to the lost node"
    );
}
