//! Router operations on events: `emit`, `subscribe`, `unsubscribe`.

use agentmesh_proto::{AgentId, ErrorCode, ErrorObject, Json, Subject, SubjectPattern};
use serde_json::{json, Value};

use super::{ConnId, Router, Subscription};

impl Router {
    pub(super) fn emit(
        &mut self,
        conn: ConnId,
        from: AgentId,
        topic: &str,
        data: Json,
    ) -> Result<Option<Value>, ErrorObject> {
        self.owned(conn, &from)?;
        let subject: Subject = topic.parse().map_err(|e| {
            ErrorObject::new(ErrorCode::InputInvalid, format!("topic '{topic}': {e}"))
        })?;
        let deliveries: Vec<(ConnId, Value)> = self
            .subs
            .matching(&subject)
            .map(|(id, s)| {
                (
                    s.conn,
                    json!({"event": "event", "subscription_id": id, "topic": subject,
                           "data": data, "from": from}),
                )
            })
            .collect();
        let delivered = deliveries.len();
        for (c, msg) in deliveries {
            self.send(c, msg);
        }
        Ok(Some(json!({ "delivered": delivered })))
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
