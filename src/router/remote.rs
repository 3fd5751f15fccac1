//! What the router exchanges with the rest of the mesh, as plain values: messages for
//! the routers of other daemons ([`PeerMsg`], carried by the session layer on the QUIC
//! stream of their task), questions for the rendezvous ([`Lookup`]) and what the
//! rendezvous must be told ([`Announce`]). The router stays sans-IO; the daemon's
//! network driver turns these into streams and rendezvous calls and feeds the answers
//! back (`Router::handle_peer`, `Router::lookup_done`, `Router::peer_unreachable`,
//! `Router::set_remote_subscriptions`).

use agentmesh_proto::peer::{OnewayFrame, RequesterFrame, ResponderFrame};
use agentmesh_proto::{AgentId, DiscoverQuery, Manifest};

/// One message between the routers of two daemons.
///
/// The session layer keys streams by task id: [`RequesterFrame::Open`] opens a new
/// bidirectional stream, every later message of that task rides it, and
/// [`PeerMsg::Cancel`] resets it with `STREAM_CANCELED`. Events ride one-way streams.
#[derive(Debug, Clone, PartialEq)]
pub enum PeerMsg {
    /// Requester's daemon → responder's daemon.
    Requester(RequesterFrame),
    /// Responder's daemon → requester's daemon.
    Responder(ResponderFrame),
    /// Either side ends the task as canceled (a stream reset on the wire).
    Cancel {
        /// The task.
        task_id: String,
    },
    /// A published event for the receiving daemon's subscribers.
    Event(OnewayFrame),
}

impl PeerMsg {
    /// The task this message belongs to (`None` for events).
    pub fn task_id(&self) -> Option<&str> {
        match self {
            PeerMsg::Requester(RequesterFrame::Open(e) | RequesterFrame::Continue(e))
            | PeerMsg::Responder(ResponderFrame::Update(e) | ResponderFrame::Final(e)) => {
                e.task_id.as_deref()
            }
            PeerMsg::Responder(ResponderFrame::Chunk { task_id, .. })
            | PeerMsg::Cancel { task_id } => Some(task_id),
            PeerMsg::Event(_) => None,
        }
    }
}

/// A question for the rendezvous; the driver answers with `Router::lookup_done(token, …)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Lookup {
    /// Matches the answer to the question.
    pub token: u64,
    /// What to search.
    pub query: DiscoverQuery,
}

/// A change the rendezvous must learn about.
#[derive(Debug, Clone, PartialEq)]
pub enum Announce {
    /// A local agent registered (or re-registered) with this signed manifest.
    Register(Box<Manifest>),
    /// A local agent went away.
    Unregister(AgentId),
    /// The full set of topic patterns this daemon's local subscribers hold.
    Patterns(Vec<String>),
}
