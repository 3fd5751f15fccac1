//! `ping`: resolving its target (a node id, or an agent id: local, in the directory,
//! or looked up at the rendezvous) to a daemon, handing the round trips to the network driver
//! ([`Output::Ping`]) and replying with what it measured ([`Router::ping_done`]).

use std::time::Duration;

use agentmesh_proto::{AgentId, ErrorCode, ErrorObject, NodeId};
use serde_json::Value;

use super::{ConnId, Now, Output, Router};

/// Round trips when the client gives no `count`.
const DEFAULT_COUNT: u32 = 4;
/// Most round trips one `ping` may ask for.
const MAX_COUNT: u32 = 100;
/// Pause between round trips when the client gives none.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
/// Shortest pause between round trips.
const MIN_INTERVAL: Duration = Duration::from_millis(10);

/// Round trips the network driver is asked to measure; its answer goes to
/// [`Router::ping_done`] with `conn` and `id`.
#[derive(Debug, Clone, PartialEq)]
pub struct PingJob {
    /// The asking connection.
    pub conn: ConnId,
    /// The request id to echo.
    pub id: Value,
    /// The daemon to reach.
    pub node: NodeId,
    /// How many round trips.
    pub count: u32,
    /// Pause between them.
    pub interval: Duration,
}

/// What a `ping` target names.
enum Target {
    /// A daemon.
    Node(NodeId),
    /// An agent whose daemon the rendezvous must be asked for.
    Unknown(AgentId),
}

impl Router {
    /// Starts a `ping`; the reply comes with [`Router::ping_done`].
    pub(super) fn ping(
        &mut self,
        now: Now,
        conn: ConnId,
        id: Value,
        target: &str,
        count: Option<u32>,
        interval_ms: Option<u64>,
    ) -> Result<Option<Value>, ErrorObject> {
        let mut job = PingJob {
            conn,
            id,
            node: self.node_id,
            count: count.unwrap_or(DEFAULT_COUNT).clamp(1, MAX_COUNT),
            interval: interval_ms
                .map_or(DEFAULT_INTERVAL, Duration::from_millis)
                .max(MIN_INTERVAL),
        };
        let node = match self.ping_target(now, target)? {
            Target::Node(node) => node,
            Target::Unknown(agent) => return self.ping_lookup(now, job, agent),
        };
        if node == self.node_id {
            return Err(ErrorObject::new(
                ErrorCode::InputInvalid,
                "the target is on this daemon; ping measures the way to another daemon",
            ));
        }
        job.node = node;
        self.out.push(Output::Ping(Box::new(job)));
        Ok(None)
    }

    fn ping_target(&self, now: Now, target: &str) -> Result<Target, ErrorObject> {
        if let Ok(node) = target.parse::<NodeId>() {
            return Ok(Target::Node(node));
        }
        let Ok(agent) = target.parse::<AgentId>() else {
            return Err(ErrorObject::new(
                ErrorCode::InputInvalid,
                format!("target {target:?} is neither a node id (N…) nor an agent id (A…)"),
            ));
        };
        if self.agents.get(&agent).is_some() {
            return Ok(Target::Node(self.node_id));
        }
        match self.mesh.directory.get(&agent, now.mono) {
            Some(e) => Ok(Target::Node(e.node)),
            None if self.config.mesh => Ok(Target::Unknown(agent)),
            None => Err(ErrorObject::new(
                ErrorCode::AgentUnavailable,
                format!("agent {} is not registered here", agent.short()),
            )),
        }
    }

    /// The network driver measured a `ping` (or could not reach the node).
    pub fn ping_done(
        &mut self,
        conn: ConnId,
        id: Value,
        result: Result<Value, ErrorObject>,
    ) -> Vec<Output> {
        match result {
            Ok(ok) => self.reply_ok(conn, id, ok),
            Err(e) => self.reply_err(conn, id, e),
        }
        std::mem::take(&mut self.out)
    }
}
