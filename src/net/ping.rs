//! The network side of `ping`: real round trips to a peer daemon over its QUIC session
//! (see [`Sessions::ping_once`]), each reported with the path and tier it took, then
//! handed back to the router ([`crate::router::Router::ping_done`]).

use std::sync::Arc;
use std::time::Duration;

use agentmesh_proto::{ErrorObject, NodeId};
use serde_json::{json, Value};

use super::paths::Paths;
use super::peers::Sessions;
use super::routes::Path;
use crate::api::RouterHandle;
use crate::router::PingJob;

/// Longest wait for one answer (dialing included for the first).
pub const PING_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs the round trips of `job` and replies to its connection.
pub async fn run(job: PingJob, sessions: Arc<Sessions>, paths: Arc<Paths>, router: RouterHandle) {
    let mut replies = Vec::new();
    let mut received = 0u32;
    let mut first_error: Option<ErrorObject> = None;
    for seq in 1..=job.count {
        if seq > 1 {
            tokio::time::sleep(job.interval).await;
        }
        let reply = match tokio::time::timeout(PING_TIMEOUT, sessions.ping_once(job.node)).await {
            Ok(Ok(rtt)) => {
                received += 1;
                answered(seq, rtt, &paths, job.node)
            }
            Ok(Err(e)) => {
                let r = json!({"seq": seq, "error": e.message});
                first_error.get_or_insert(e);
                r
            }
            Err(_) => json!({"seq": seq, "error": "no answer within 5 s"}),
        };
        replies.push(reply);
    }
    let result = match first_error {
        Some(e) if received == 0 => Err(e),
        _ => Ok(json!({
            "node": job.node,
            "sent": job.count,
            "received": received,
            "replies": replies,
        })),
    };
    router.apply(|r, _| r.ping_done(job.conn, job.id, result));
}

/// One answered round trip, with the path the peer is on now.
fn answered(seq: u32, rtt: Duration, paths: &Paths, node: NodeId) -> Value {
    let info = paths.info().into_iter().find(|p| p.node == node);
    let (path, tier) = match &info {
        Some(p) => (
            match p.path {
                Path::Direct(_) => "direct",
                Path::Relay => "relay",
            },
            p.tier.name(),
        ),
        None => ("unknown", "unknown"),
    };
    json!({
        "seq": seq,
        "rtt_ms": rtt.as_secs_f64() * 1e3,
        "path": path,
        "tier": tier,
    })
}
