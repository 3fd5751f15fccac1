//! Event subscriptions of local agents: pattern, owner, and matching of published
//! subjects (NATS semantics, see `agentmesh_proto::topic`).

use agentmesh_proto::{AgentId, Subject, SubjectPattern};
use indexmap::IndexMap;

use super::ConnId;

/// One subscription.
#[derive(Debug, Clone)]
pub struct Subscription {
    /// Subscribing agent.
    pub agent: AgentId,
    /// Connection that receives the events.
    pub conn: ConnId,
    /// Subject pattern.
    pub pattern: SubjectPattern,
}

/// All subscriptions, in creation order (events fan out deterministically).
#[derive(Debug, Default)]
pub struct Subscriptions {
    subs: IndexMap<String, Subscription>,
    next: u64,
}

impl Subscriptions {
    /// Adds a subscription and returns its id.
    pub fn add(&mut self, sub: Subscription) -> String {
        self.next += 1;
        let id = format!("sub-{}", self.next);
        self.subs.insert(id.clone(), sub);
        id
    }

    /// Looks a subscription up.
    pub fn get(&self, id: &str) -> Option<&Subscription> {
        self.subs.get(id)
    }

    /// Removes a subscription.
    pub fn remove(&mut self, id: &str) -> Option<Subscription> {
        self.subs.shift_remove(id)
    }

    /// Removes every subscription matching a predicate.
    pub fn remove_where(&mut self, pred: impl Fn(&Subscription) -> bool) {
        self.subs.retain(|_, s| !pred(s));
    }

    /// Subscriptions whose pattern matches `subject`.
    pub fn matching<'a>(
        &'a self,
        subject: &'a Subject,
    ) -> impl Iterator<Item = (&'a String, &'a Subscription)> + 'a {
        self.subs.iter().filter(|(_, s)| s.pattern.matches(subject))
    }

    /// Every subscription, in creation order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Subscription)> {
        self.subs.iter()
    }

    /// Number of subscriptions.
    pub fn len(&self) -> usize {
        self.subs.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.subs.is_empty()
    }
}
