//! The tasks this daemon routes: who asked, who answers (each side a local connection
//! or another daemon), the state, the deadline; and a bounded memory of recently
//! finished tasks so a late `respond` gets `TASK_INVALID_TRANSITION` rather than
//! `TASK_NOT_FOUND`.
//!
//! A task that crosses hosts lives in both daemons' tables under the same id (the
//! requester's daemon makes it): there the requester is `Local` and the responder
//! `Remote`, on the other daemon the other way round.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::Instant;

use agentmesh_proto::{AgentId, NodeId, TaskState};
use serde_json::Value;

use super::ConnId;

/// How many finished tasks are remembered.
const FINISHED_MEMORY: usize = 10_000;

/// Where one side of a task is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// A local-API connection of this daemon.
    Local(ConnId),
    /// Another daemon (its router holds the other side).
    Remote(NodeId),
}

impl Endpoint {
    /// The connection, when the side is local.
    pub fn conn(self) -> Option<ConnId> {
        match self {
            Endpoint::Local(c) => Some(c),
            Endpoint::Remote(_) => None,
        }
    }

    /// The daemon, when the side is remote.
    pub fn node(self) -> Option<NodeId> {
        match self {
            Endpoint::Local(_) => None,
            Endpoint::Remote(n) => Some(n),
        }
    }
}

/// One task in flight.
#[derive(Debug, Clone)]
pub struct Task {
    /// Task id (UUID v7).
    pub id: String,
    /// Requesting agent.
    pub requester: AgentId,
    /// Where the requester is: the connection that sent the request and waits for the
    /// reply, or the daemon that opened the task.
    pub requester_end: Endpoint,
    /// The `id` of the `request` line, echoed in the final reply (null when the
    /// requester is remote).
    pub request_id: Value,
    /// Responding agent.
    pub responder: AgentId,
    /// Where the responder is: the connection that registered it, or its daemon.
    pub responder_end: Endpoint,
    /// Skill asked for.
    pub skill: String,
    /// Current state.
    pub state: TaskState,
    /// When the requester gives up.
    pub deadline: Instant,
    /// Next stream chunk sequence number.
    pub next_seq: u64,
    /// Session grouping.
    pub context_id: Option<String>,
}

/// Tasks in flight, their deadlines, and recently finished ones.
#[derive(Debug, Default)]
pub struct TaskTable {
    live: HashMap<String, Task>,
    deadlines: BTreeSet<(Instant, String)>,
    finished: HashMap<String, TaskState>,
    finished_order: VecDeque<String>,
}

/// Where a task id was found.
#[derive(Debug)]
pub enum Lookup<'a> {
    /// In flight.
    Live(&'a mut Task),
    /// Already ended in this state.
    Finished(TaskState),
    /// Never seen (or forgotten).
    Unknown,
}

impl TaskTable {
    /// Starts tracking a task.
    pub fn insert(&mut self, task: Task) {
        self.deadlines.insert((task.deadline, task.id.clone()));
        self.live.insert(task.id.clone(), task);
    }

    /// Finds a task.
    pub fn lookup(&mut self, id: &str) -> Lookup<'_> {
        if let Some(t) = self.live.get_mut(id) {
            return Lookup::Live(t);
        }
        match self.finished.get(id) {
            Some(st) => Lookup::Finished(*st),
            None => Lookup::Unknown,
        }
    }

    /// Removes a task that reached a terminal state and remembers how it ended.
    pub fn finish(&mut self, id: &str, state: TaskState) -> Option<Task> {
        let task = self.live.remove(id)?;
        self.deadlines.remove(&(task.deadline, task.id.clone()));
        if self.finished_order.len() >= FINISHED_MEMORY {
            if let Some(old) = self.finished_order.pop_front() {
                self.finished.remove(&old);
            }
        }
        self.finished.insert(id.to_string(), state);
        self.finished_order.push_back(id.to_string());
        Some(task)
    }

    /// The earliest deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|(t, _)| *t)
    }

    /// Ids of tasks whose deadline is at or before `now`.
    pub fn expired(&self, now: Instant) -> Vec<String> {
        self.deadlines
            .iter()
            .take_while(|(t, _)| *t <= now)
            .map(|(_, id)| id.clone())
            .collect()
    }

    /// Ids of live tasks matching a predicate.
    pub fn ids_where(&self, pred: impl Fn(&Task) -> bool) -> Vec<String> {
        let mut ids: Vec<String> = self
            .live
            .values()
            .filter(|t| pred(t))
            .map(|t| t.id.clone())
            .collect();
        ids.sort();
        ids
    }

    /// Number of live tasks whose responder is each agent (load of remote agents).
    pub fn load_by_responder(&self) -> HashMap<AgentId, usize> {
        let mut load = HashMap::new();
        for t in self.live.values() {
            *load.entry(t.responder).or_insert(0) += 1;
        }
        load
    }

    /// Whether a task with this id is live or remembered as finished.
    pub fn known(&self, id: &str) -> bool {
        self.live.contains_key(id) || self.finished.contains_key(id)
    }

    /// Number of tasks in flight.
    pub fn live_count(&self) -> usize {
        self.live.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentmesh_proto::SecretKey;
    use std::time::Duration;

    fn task(id: &str, deadline: Instant) -> Task {
        let a = SecretKey::from_bytes(&[1; 32]).agent_id();
        Task {
            id: id.into(),
            requester: a,
            requester_end: Endpoint::Local(ConnId(1)),
            request_id: Value::from(1),
            responder: a,
            responder_end: Endpoint::Local(ConnId(2)),
            skill: "s".into(),
            state: TaskState::Submitted,
            deadline,
            next_seq: 0,
            context_id: None,
        }
    }

    #[test]
    fn deadlines_and_finished_memory() {
        let t0 = Instant::now();
        let mut t = TaskTable::default();
        t.insert(task("b", t0 + Duration::from_secs(2)));
        t.insert(task("a", t0 + Duration::from_secs(1)));
        assert_eq!(t.next_deadline(), Some(t0 + Duration::from_secs(1)));
        assert_eq!(
            t.expired(t0 + Duration::from_secs(1)),
            vec!["a".to_string()]
        );
        t.finish("a", TaskState::Canceled);
        assert!(matches!(
            t.lookup("a"),
            Lookup::Finished(TaskState::Canceled)
        ));
        assert!(matches!(t.lookup("b"), Lookup::Live(_)));
        assert!(matches!(t.lookup("zz"), Lookup::Unknown));
        assert_eq!(t.next_deadline(), Some(t0 + Duration::from_secs(2)));
        assert_eq!(t.live_count(), 1);
    }
}
