//! Router operations on events: `emit` (to local subscriptions, and in mesh mode one
//! event envelope per other daemon with a matching subscriber), events arriving from
//! other daemons, `subscribe`, `unsubscribe`.

use agentmesh_proto::peer::{EventPayload, OnewayFrame};
use agentmesh_proto::{
    AgentId, Envelope, ErrorCode, ErrorObject, Json, NodeId, PrimitiveType, Subject, SubjectPattern,
};
use serde_json::{json, Map, Value};
use tracing::debug;

use super::envelopes;
use super::{ConnId, Now, PeerMsg, Router, Subscription};

impl Router {
    pub(super) fn emit(
        &mut self,
        now: Now,
        conn: ConnId,
        from: AgentId,
        topic: &str,
        data: Json,
    ) -> Result<Option<Value>, ErrorObject> {
        self.owned(conn, &from)?;
        let subject: Subject = topic.parse().map_err(|e| {
            ErrorObject::new(ErrorCode::InputInvalid, format!("topic '{topic}': {e}"))
        })?;
        let delivered = self.deliver_locally(&subject, &data, from, None);
        let mut reply = Map::new();
        reply.insert("delivered".into(), json!(delivered));
        if self.config.mesh {
            let nodes = self.remote_nodes_for(&subject);
            reply.insert("remote_nodes".into(), json!(nodes.len()));
            if !nodes.is_empty() {
                let e = envelopes::event(now, from, subject, data);
                for node in nodes {
                    self.peer(node, PeerMsg::Event(OnewayFrame::Event(e.clone())));
                }
            }
        }
        Ok(Some(Value::Object(reply)))
    }

    /// Pushes an event to the local subscriptions matching `subject`; returns how many.
    fn deliver_locally(
        &mut self,
        subject: &Subject,
        data: &Json,
        from: AgentId,
        from_node: Option<NodeId>,
    ) -> usize {
        let deliveries: Vec<(ConnId, Value)> = self
            .subs
            .matching(subject)
            .map(|(id, s)| {
                let mut msg = json!({"event": "event", "subscription_id": id,
                                     "topic": subject, "data": data, "from": from});
                if let Some(node) = from_node {
                    msg["from_node"] = json!(node);
                }
                (s.conn, msg)
            })
            .collect();
        let delivered = deliveries.len();
        for (c, msg) in deliveries {
            self.send(c, msg);
        }
        delivered
    }

    /// An event published on daemon `from`: to local subscribers only, once per
    /// envelope id.
    pub(super) fn peer_event(&mut self, from: NodeId, mut e: Envelope) {
        if from == self.node_id || !self.mesh.events_seen.first_time(&e.id) {
            return;
        }
        match envelopes::take_payload::<EventPayload>(&mut e, PrimitiveType::Emit) {
            Ok(p) => {
                self.deliver_locally(&p.topic, &p.data, e.from, Some(from));
            }
            Err(err) => debug!(error = %err.message, "bad event dropped"),
        }
    }

    pub(super) fn subscribe(
        &mut self,
        conn: ConnId,
        agent: AgentId,
        pattern: &str,
    ) -> Result<Option<Value>, ErrorObject> {
        self.owned(conn, &agent)?;
        let pattern: SubjectPattern = pattern.parse().map_err(|e| {
            ErrorObject::new(ErrorCode::InputInvalid, format!("pattern '{pattern}': {e}"))
        })?;
        let held = self.conns.get(&conn).map_or(0, |c| c.subscriptions.len());
        if held >= self.config.max_subscriptions_per_conn {
            return Err(ErrorObject::new(
                ErrorCode::RateLimited,
                format!(
                    "a connection may hold at most {} subscriptions",
                    self.config.max_subscriptions_per_conn
                ),
            ));
        }
        let id = self.subs.add(Subscription {
            agent,
            conn,
            pattern,
        });
        self.conns
            .entry(conn)
            .or_default()
            .subscriptions
            .insert(id.clone());
        self.sync_patterns();
        Ok(Some(json!({ "subscription_id": id })))
    }

    pub(super) fn unsubscribe(
        &mut self,
        conn: ConnId,
        subscription_id: &str,
    ) -> Result<Option<Value>, ErrorObject> {
        match self.subs.get(subscription_id) {
            Some(s) if s.conn == conn => {
                self.subs.remove(subscription_id);
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.subscriptions.shift_remove(subscription_id);
                }
                self.sync_patterns();
                Ok(Some(json!({ "subscription_id": subscription_id })))
            }
            Some(_) => Err(ErrorObject::new(
                ErrorCode::Unauthorized,
                format!("subscription {subscription_id} belongs to another connection"),
            )),
            None => Err(ErrorObject::new(
                ErrorCode::InputInvalid,
                format!("no subscription with id {subscription_id}"),
            )),
        }
    }
}
