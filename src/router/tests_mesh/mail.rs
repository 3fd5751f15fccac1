//! Mesh tests of store-and-forward: a request for a node that becomes unreachable before
//! answering is parked and stored, held at the responder's daemon until its agent registers, then
//! sent again and run; refusals, timeouts and stray `MailReady`s.

use agentmesh_proto::peer::{OnewayFrame, RequesterFrame, StoredFrame};
use agentmesh_proto::ErrorCode;

use super::*;

/// Echo on B (conn 1), Caller on A (conn 2); A's request for Echo is sent while B is
/// unreachable: the session layer reports B unreachable before B answered anything.
/// Returns (echo, task id, A's messages after the report).
fn request_while_b_is_away(m: &mut Mesh, timeout_ms: u64) -> (String, String, Vec<Msg>) {
    let echo = m.register(R::B, 1, "Echo", &["echo"], &["echo"]);
    let caller = m.register(R::A, 2, "Caller", &[], &[]);
    m.hold = true;
    m.line(
        R::A,
        2,
        json!({"op": "request", "id": 1, "from": caller, "to": echo, "skill": "echo",
               "input": {"text": "later"}, "timeout_ms": timeout_ms}),
    );
    let Some((_, _, PeerMsg::Requester(RequesterFrame::Open(open)))) = m.held.pop() else {
        panic!("the request's Open went to B");
    };
    m.held.clear();
    m.hold = false;
    let task = open.task_id.clone().unwrap_or_default();
    let b = m.node(R::B);
    let err = ErrorObject::new(ErrorCode::AgentUnavailable, "no QUIC handshake within 10 s");
    let outs = m.step(R::A, |rt, now| rt.peer_unreachable(now, b, err));
    (echo, task, outs)
}

#[test]
fn a_request_for_an_unreachable_node_is_stored_and_runs_when_its_agent_returns() {
    let mut m = Mesh::new();
    let (echo, task, outs) = request_while_b_is_away(&mut m, 60_000);
    let stored = event(&outs, R::A, 2, "task_stored").cloned();
    assert_eq!(
        stored.map(|s| s["task_id"].clone()),
        Some(json!(task)),
        "the requester learns its request waits at the relay"
    );
    assert!(reply(&outs, R::A, 2, &json!(1)).is_none(), "no final reply");
    assert_eq!(m.a.tasks.live_count(), 1, "peer_unreachable parks it");
    let Some((R::A, node, stored_task, frame)) = m.stores.pop() else {
        panic!("A asked to store the request");
    };
    assert_eq!((node, stored_task.as_str()), (m.node(R::B), task.as_str()));
    let StoredFrame::Request(original) = frame.clone();
    assert_eq!(original.task_id.as_deref(), Some(task.as_str()));
    m.step(R::A, |rt, now| rt.store_done(now, &task, Ok(())));

    // B restarts: its agent is gone when the relay hands over the mail.
    m.step(R::B, |rt, now| rt.connection_closed(now, ConnId(1)));
    let a = m.node(R::A);
    let wire_before = m.wire.len();
    m.step(R::B, |rt, now| rt.mail(now, a, frame));
    assert_eq!(m.wire.len(), wire_before, "held until the agent is back");

    // The agent registers again (same key): B says so, A sends the Open again.
    let outs = m.line(
        R::B,
        5,
        json!({"op": "register", "id": "reg", "key_name": "B_Echo",
               "manifest": {"name": "Echo", "capabilities": ["echo"],
                            "skills": [{"id": "echo", "name": "echo"}]}}),
    );
    let again = reply(&outs, R::B, 5, &json!("reg"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(again["ok"]["agent_id"], json!(echo), "same key, same agent");
    let ready = m.wire[wire_before..].iter().any(|(_, _, msg)| {
        matches!(msg, PeerMsg::Event(OnewayFrame::MailReady { task_id }) if *task_id == task)
    });
    assert!(ready, "B told A the agent is here");
    assert_eq!(
        event(&outs, R::B, 5, "request").map(|r| r["task_id"].clone()),
        Some(json!(task)),
        "the agent got the stored request"
    );
    let outs = m.line(
        R::B,
        5,
        json!({"op": "respond", "id": 2, "task_id": task, "state": "completed",
               "output": {"text": "later"}}),
    );
    let r = reply(&outs, R::A, 2, &json!(1))
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        (r["ok"]["state"].clone(), r["ok"]["output"]["text"].clone()),
        (json!("completed"), json!("later"))
    );
    // The relay may deliver the mail twice, and the Open may come twice: nothing runs again.
    let before = m.wire.len();
    let outs = m.step(R::B, |rt, now| {
        rt.mail(now, a, StoredFrame::Request(original.clone()))
    });
    assert!(event(&outs, R::B, 5, "request").is_none());
    let outs = m.step(R::B, |rt, now| {
        rt.handle_peer(now, a, PeerMsg::Requester(RequesterFrame::Open(original)))
    });
    assert!(event(&outs, R::B, 5, "request").is_none());
    let reopened = m.wire[before..]
        .iter()
        .any(|(_, _, msg)| matches!(msg, PeerMsg::Requester(RequesterFrame::Open(_))));
    assert!(!reopened, "A does not send a finished task's Open again");
}

#[test]
fn a_refused_store_fails_the_request() {
    let mut m = Mesh::new();
    let (_, task, _) = request_while_b_is_away(&mut m, 60_000);
    let err = ErrorObject::new(ErrorCode::DependencyFailed, "the relay did not answer");
    let outs = m.step(R::A, |rt, now| rt.store_done(now, &task, Err(err)));
    let (state, error, message) = task_end(&outs, R::A, 2, 1);
    assert_eq!(
        (state, error),
        (json!("failed"), json!("AGENT_UNAVAILABLE"))
    );
    assert!(message.contains("could not be stored"), "{message}");
}

#[test]
fn a_parked_request_times_out_and_a_late_mail_ready_sends_nothing() {
    let mut m = Mesh::new();
    let (_, task, _) = request_while_b_is_away(&mut m, 1_000);
    m.step(R::A, |rt, now| rt.store_done(now, &task, Ok(())));
    m.now.mono += Duration::from_secs(2);
    let outs = m.step(R::A, |rt, now| rt.handle_timeout(now));
    let r = reply(&outs, R::A, 2, &json!(1))
        .cloned()
        .unwrap_or_default();
    assert_eq!(r["ok"]["error"]["code"], json!("TRANSPORT_TIMEOUT"), "{r}");
    let before = m.wire.len();
    let b = m.node(R::B);
    m.step(R::A, |rt, now| {
        rt.handle_peer(
            now,
            b,
            PeerMsg::Event(OnewayFrame::MailReady {
                task_id: task.clone(),
            }),
        )
    });
    let opens = m.wire[before..]
        .iter()
        .filter(|(_, _, msg)| matches!(msg, PeerMsg::Requester(RequesterFrame::Open(_))))
        .count();
    assert_eq!(opens, 0);
}

#[test]
fn mail_ready_from_another_node_is_ignored() {
    let mut m = Mesh::new();
    let (_, task, _) = request_while_b_is_away(&mut m, 60_000);
    let before = m.wire.len();
    let stranger = SecretKey::from_bytes(&[77; 32]).node_id();
    m.step(R::A, |rt, now| {
        rt.handle_peer(
            now,
            stranger,
            PeerMsg::Event(OnewayFrame::MailReady {
                task_id: task.clone(),
            }),
        )
    });
    assert_eq!(
        m.wire.len(),
        before,
        "only the responder's node may wake it"
    );
    assert_eq!(m.a.tasks.live_count(), 1);
}

#[test]
fn mail_for_an_agent_already_here_is_ready_at_once_and_held_mail_expires() {
    let mut m = Mesh::new();
    let (_, task, _) = request_while_b_is_away(&mut m, 60_000);
    let (_, _, _, frame) = m.stores.pop().unwrap_or_else(|| panic!("stored"));
    let a = m.node(R::A);
    let before = m.wire.len();
    m.step(R::B, |rt, now| rt.mail(now, a, frame.clone()));
    assert!(
        m.wire[before..]
            .iter()
            .any(|(_, _, msg)| matches!(msg, PeerMsg::Event(OnewayFrame::MailReady { .. }))),
        "Echo is registered on B: ready at once"
    );
    // Held mail is dropped after the request's timeout.
    m.step(R::B, |rt, now| rt.connection_closed(now, ConnId(1)));
    m.step(R::B, |rt, now| rt.mail(now, a, frame));
    assert_eq!(m.b.mesh.held.len(), 1);
    m.now.mono += Duration::from_secs(61);
    let before = m.wire.len();
    m.register(R::B, 6, "Echo", &["echo"], &["echo"]);
    assert!(m.b.mesh.held.is_empty());
    assert!(
        !m.wire[before..]
            .iter()
            .any(|(_, _, msg)| matches!(msg, PeerMsg::Event(OnewayFrame::MailReady { .. }))),
        "expired mail for task {task} is not announced"
    );
}

#[test]
fn a_request_the_responder_already_answered_is_not_stored() {
    let mut m = Mesh::new();
    let echo = m.register(R::B, 1, "Echo", &["echo"], &["echo"]);
    let caller = m.register(R::A, 2, "Caller", &[], &[]);
    let outs = m.line(
        R::A,
        2,
        json!({"op": "request", "id": 1, "from": caller, "to": echo, "skill": "echo"}),
    );
    let task = event(&outs, R::B, 1, "request").map(|r| r["task_id"].clone());
    m.line(
        R::B,
        1,
        json!({"op": "respond", "id": 2, "task_id": task, "state": "working"}),
    );
    let b = m.node(R::B);
    let err = ErrorObject::new(ErrorCode::AgentUnavailable, "the connection ended");
    let outs = m.step(R::A, |rt, now| rt.peer_unreachable(now, b, err));
    let r = reply(&outs, R::A, 2, &json!(1))
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        r["ok"]["state"],
        json!("failed"),
        "B was working on it: {r}"
    );
    assert!(m.stores.is_empty());
    assert!(m.a.mesh.unconfirmed.is_empty() && m.a.mesh.parked.is_empty());
}

#[test]
fn a_finished_task_opened_again_is_answered_failed() {
    let mut m = Mesh::new();
    let echo = m.register(R::B, 1, "Echo", &["echo"], &["echo"]);
    let caller = m.register(R::A, 2, "Caller", &[], &[]);
    m.line(
        R::A,
        2,
        json!({"op": "request", "id": 1, "from": caller, "to": echo, "skill": "echo"}),
    );
    let Some((_, _, PeerMsg::Requester(RequesterFrame::Open(open)))) = m
        .wire
        .iter()
        .rev()
        .find(|(_, _, msg)| matches!(msg, PeerMsg::Requester(RequesterFrame::Open(_))))
        .cloned()
    else {
        panic!("an Open crossed");
    };
    let task = open.task_id.clone().unwrap_or_default();
    m.line(
        R::B,
        1,
        json!({"op": "respond", "id": 2, "task_id": task, "state": "completed"}),
    );
    // The same Open arrives again at B (stored while B's answer was lost): B says how it
    // ended instead of staying silent.
    let a = m.node(R::A);
    let before = m.wire.len();
    let outs = m.step(R::B, |rt, now| {
        rt.handle_peer(now, a, PeerMsg::Requester(RequesterFrame::Open(open)))
    });
    assert!(event(&outs, R::B, 1, "request").is_none(), "not run again");
    let finals: Vec<&PeerMsg> = m.wire[before..]
        .iter()
        .map(|(_, _, msg)| msg)
        .filter(|msg| {
            matches!(
                msg,
                PeerMsg::Responder(agentmesh_proto::peer::ResponderFrame::Final(_))
            )
        })
        .collect();
    assert_eq!(finals.len(), 1, "{finals:?}");
}
