//! Questions this router has put to the rendezvous ([`Output::Lookup`]) and what it does
//! with the answers ([`Router::lookup_done`]): finish a mesh-wide `discover`, or carry
//! on with a `request` whose responder is on another daemon (by `to` or by
//! `capability`), opening the task there. A lookup the driver never answers ends at
//! its deadline.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use agentmesh_proto::peer::{RequestConfig, RequesterFrame};
use agentmesh_proto::rendezvous::AgentRecord;
use agentmesh_proto::{AgentId, DiscoverQuery, ErrorCode, ErrorObject, NodeId};
use serde_json::Value;

use super::directory::{check_remote, pick_remote};
use super::envelopes::{self, TaskAddr};
use super::ping::PingJob;
use super::task_ops::RequestJob;
use super::tasks::Endpoint;
use super::{uuid_v7, ConnId, Lookup, Now, Output, PeerMsg, Router};

/// Most lookups waiting for an answer at once (beyond: `RATE_LIMITED`).
const MAX_PENDING_LOOKUPS: usize = 10_000;

/// What to do with an answer.
#[derive(Debug)]
enum Waiting {
    /// A `discover` from `conn`, replied to with `id`.
    Discover {
        conn: ConnId,
        id: Value,
        query: DiscoverQuery,
    },
    /// A request to a named agent that is not local.
    Agent { job: RequestJob, to: AgentId },
    /// A request to a capability no local agent could take (`local` says why).
    Capability {
        job: RequestJob,
        capability: String,
        local: ErrorObject,
    },
    /// A `ping` of an agent whose daemon is not known yet (`job.node` is filled in
    /// from the answer).
    Ping { job: PingJob, agent: AgentId },
}

impl Waiting {
    fn conn(&self) -> ConnId {
        match self {
            Waiting::Discover { conn, .. } => *conn,
            Waiting::Agent { job, .. } | Waiting::Capability { job, .. } => job.conn,
            Waiting::Ping { job, .. } => job.conn,
        }
    }
}

/// Lookups in flight, by token, with their deadlines.
#[derive(Debug, Default)]
pub(super) struct PendingLookups {
    next_token: u64,
    waiting: BTreeMap<u64, (Instant, Waiting)>,
    deadlines: BTreeSet<(Instant, u64)>,
}

impl PendingLookups {
    /// The earliest deadline.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|(t, _)| *t)
    }

    fn take(&mut self, token: u64) -> Option<Waiting> {
        let (deadline, w) = self.waiting.remove(&token)?;
        self.deadlines.remove(&(deadline, token));
        Some(w)
    }

    /// Forgets the lookups of a closed connection (their answers are dropped).
    pub(super) fn drop_conn(&mut self, conn: ConnId) {
        let gone: Vec<u64> = self
            .waiting
            .iter()
            .filter(|(_, (_, w))| w.conn() == conn)
            .map(|(t, _)| *t)
            .collect();
        for t in gone {
            self.take(t);
        }
    }

    /// Number of lookups in flight.
    pub(super) fn len(&self) -> usize {
        self.waiting.len()
    }
}

impl Router {
    fn ask(&mut self, now: Now, query: DiscoverQuery, w: Waiting) -> Result<(), ErrorObject> {
        let p = &mut self.mesh.lookups;
        if p.waiting.len() >= MAX_PENDING_LOOKUPS {
            return Err(ErrorObject::new(
                ErrorCode::RateLimited,
                format!("{MAX_PENDING_LOOKUPS} rendezvous lookups are already in flight"),
            ));
        }
        let mut deadline = now.mono + self.config.lookup_timeout;
        if let Waiting::Agent { job, .. } | Waiting::Capability { job, .. } = &w {
            deadline = deadline.min(job.deadline);
        }
        p.next_token += 1;
        let token = p.next_token;
        p.waiting.insert(token, (deadline, w));
        p.deadlines.insert((deadline, token));
        self.out
            .push(Output::Lookup(Box::new(Lookup { token, query })));
        Ok(())
    }

    /// `discover` in mesh mode: the answer waits for the rendezvous.
    pub(super) fn discover_mesh(
        &mut self,
        now: Now,
        conn: ConnId,
        id: Value,
        query: DiscoverQuery,
    ) -> Result<Option<Value>, ErrorObject> {
        let w = Waiting::Discover {
            conn,
            id,
            query: query.clone(),
        };
        self.ask(now, query, w)?;
        Ok(None)
    }

    /// A request `to` an agent that is not local: from the directory, or after a lookup.
    pub(super) fn request_remote_agent(
        &mut self,
        now: Now,
        job: RequestJob,
        to: AgentId,
    ) -> Result<Option<Value>, ErrorObject> {
        if let Some(e) = self.mesh.directory.get(&to, now.mono) {
            check_remote(&e.manifest, &job.args.skill)?;
            let node = e.node;
            return self.start_remote(now, job, to, node);
        }
        let query = DiscoverQuery {
            agent_id: Some(to),
            limit: Some(1),
            ..DiscoverQuery::default()
        };
        self.ask(now, query, Waiting::Agent { job, to })?;
        Ok(None)
    }

    /// A `ping` of `agent`, whose daemon the rendezvous is asked for.
    pub(super) fn ping_lookup(
        &mut self,
        now: Now,
        job: PingJob,
        agent: AgentId,
    ) -> Result<Option<Value>, ErrorObject> {
        let query = DiscoverQuery {
            agent_id: Some(agent),
            limit: Some(1),
            ..DiscoverQuery::default()
        };
        self.ask(now, query, Waiting::Ping { job, agent })?;
        Ok(None)
    }

    /// A request to a capability no local agent can take: ask the rendezvous.
    pub(super) fn request_remote_capability(
        &mut self,
        now: Now,
        job: RequestJob,
        capability: &str,
        local: ErrorObject,
    ) -> Result<Option<Value>, ErrorObject> {
        let query = DiscoverQuery {
            capabilities: vec![capability.to_string()],
            skill_id: Some(job.args.skill.clone()),
            ..DiscoverQuery::default()
        };
        let w = Waiting::Capability {
            job,
            capability: capability.to_string(),
            local,
        };
        self.ask(now, query, w)?;
        Ok(None)
    }

    /// The answer to lookup `token` (from the rendezvous, or the driver's error when it
    /// could not ask). Unknown or expired tokens are ignored.
    pub fn lookup_done(
        &mut self,
        now: Now,
        token: u64,
        answer: Result<Vec<AgentRecord>, ErrorObject>,
    ) -> Vec<Output> {
        let Some(w) = self.mesh.lookups.take(token) else {
            return std::mem::take(&mut self.out);
        };
        let me = self.node_id;
        let remote: Result<Vec<AgentRecord>, ErrorObject> =
            answer.map(|rs| rs.into_iter().filter(|r| r.node != me).collect());
        if let Ok(records) = &remote {
            for r in records {
                self.mesh.directory.learn(r, now.mono);
            }
        }
        match w {
            Waiting::Discover { conn, id, query } => match self.discover_merge(&query, remote) {
                Ok(ok) => self.reply_ok(conn, id, ok),
                Err(e) => self.reply_err(conn, id, e),
            },
            Waiting::Agent { job, to } => {
                let (conn, id) = (job.conn, job.request_id.clone());
                if let Err(e) = remote.and_then(|rs| self.continue_to(now, job, to, &rs)) {
                    self.reply_err(conn, id, e);
                }
            }
            Waiting::Capability {
                job,
                capability,
                local,
            } => {
                let (conn, id) = (job.conn, job.request_id.clone());
                let r = remote.and_then(|rs| self.continue_cap(now, job, &capability, local, &rs));
                if let Err(e) = r {
                    self.reply_err(conn, id, e);
                }
            }
            Waiting::Ping { mut job, agent } => {
                let found =
                    remote.map(|rs| rs.iter().find(|r| r.manifest.id == agent).map(|r| r.node));
                match found {
                    Ok(Some(node)) => {
                        job.node = node;
                        self.out.push(Output::Ping(Box::new(job)));
                    }
                    Ok(None) => {
                        let e = ErrorObject::new(
                            ErrorCode::AgentUnavailable,
                            format!("agent {} is not online in the mesh", agent.short()),
                        );
                        self.reply_err(job.conn, job.id, e);
                    }
                    Err(e) => self.reply_err(job.conn, job.id, e),
                }
            }
        }
        std::mem::take(&mut self.out)
    }

    fn continue_to(
        &mut self,
        now: Now,
        job: RequestJob,
        to: AgentId,
        records: &[AgentRecord],
    ) -> Result<(), ErrorObject> {
        self.owned(job.conn, &job.args.from)?;
        let Some(r) = records.iter().find(|r| r.manifest.id == to) else {
            if let Some(e) = self.mesh.directory.last_known(&to, now.mono) {
                // Its daemon went away: the request goes there, and is stored at the
                // relay if that daemon is still unreachable (store-and-forward).
                if e.manifest.skill(&job.args.skill).is_some() {
                    let node = e.node;
                    return self.start_remote(now, job, to, node).map(|_| ());
                }
            }
            return Err(ErrorObject::new(
                ErrorCode::AgentUnavailable,
                format!(
                    "agent {} is not registered on this node nor, says the rendezvous, \
                     anywhere else in the mesh",
                    to.short()
                ),
            ));
        };
        check_remote(&r.manifest, &job.args.skill)?;
        self.start_remote(now, job, to, r.node).map(|_| ())
    }

    fn continue_cap(
        &mut self,
        now: Now,
        job: RequestJob,
        capability: &str,
        local: ErrorObject,
        records: &[AgentRecord],
    ) -> Result<(), ErrorObject> {
        self.owned(job.conn, &job.args.from)?;
        let load = self.tasks.load_by_responder();
        let cursor = self
            .mesh
            .remote_cursors
            .entry(capability.to_string())
            .or_insert(0);
        let Some(r) = pick_remote(records, capability, &job.args.skill, &load, cursor) else {
            if local.code == ErrorCode::SkillNotFound {
                return Err(local);
            }
            return Err(ErrorObject::new(
                ErrorCode::TransportNoResponders,
                format!(
                    "no available agent offers capability '{capability}' with skill '{}' \
                     on this node or elsewhere in the mesh",
                    job.args.skill
                ),
            ));
        };
        let (id, node) = (r.manifest.id, r.node);
        self.start_remote(now, job, id, node).map(|_| ())
    }

    /// Starts a task whose responder is on daemon `node`: the task id is made here and
    /// travels in the `Open` envelope.
    pub(super) fn start_remote(
        &mut self,
        now: Now,
        mut job: RequestJob,
        responder: AgentId,
        node: NodeId,
    ) -> Result<Option<Value>, ErrorObject> {
        let left = job.deadline.saturating_duration_since(now.mono);
        if left.is_zero() {
            return Err(ErrorObject::new(
                ErrorCode::TransportTimeout,
                "the request's timeout passed while looking up the responder",
            ));
        }
        let task_id = uuid_v7(now.wall);
        let config = RequestConfig {
            timeout_ms: Some(u64::try_from(left.as_millis()).unwrap_or(u64::MAX).max(1)),
            stream: Some(job.args.stream),
        };
        let addr = TaskAddr {
            from: job.args.from,
            to: responder,
            task_id: &task_id,
            context_id: job.args.context_id.as_deref(),
        };
        let open = envelopes::request(
            now,
            &addr,
            &job.args.skill,
            std::mem::take(&mut job.args.input),
            Some(config),
        );
        self.track_request(&task_id, job, responder, Endpoint::Remote(node));
        self.remember_open(node, &open);
        self.peer(node, PeerMsg::Requester(RequesterFrame::Open(open)));
        Ok(None)
    }

    /// Ends lookups whose deadline passed.
    pub(super) fn expire_lookups(&mut self, now: Now) {
        let due: Vec<u64> = self
            .mesh
            .lookups
            .deadlines
            .iter()
            .take_while(|(t, _)| *t <= now.mono)
            .map(|(_, token)| *token)
            .collect();
        for token in due {
            let Some(w) = self.mesh.lookups.take(token) else {
                continue;
            };
            let (conn, id, err) = match w {
                Waiting::Discover { conn, id, .. } => (conn, id, self.lookup_timed_out()),
                Waiting::Agent { job, .. } | Waiting::Capability { job, .. } => {
                    let err = if job.deadline <= now.mono {
                        ErrorObject::new(
                            ErrorCode::TransportTimeout,
                            "the request's timeout passed while looking up the responder",
                        )
                    } else {
                        self.lookup_timed_out()
                    };
                    (job.conn, job.request_id, err)
                }
                Waiting::Ping { job, .. } => (job.conn, job.id, self.lookup_timed_out()),
            };
            self.reply_err(conn, id, err);
        }
    }

    fn lookup_timed_out(&self) -> ErrorObject {
        ErrorObject::new(
            ErrorCode::DependencyFailed,
            format!(
                "the rendezvous did not answer within {} ms",
                self.config.lookup_timeout.as_millis()
            ),
        )
    }
}
