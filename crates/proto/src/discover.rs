//! Discovery queries and the matching rule every registry (the daemon's local one and
//! the rendezvous) applies: all given filters must hold (AND).

use serde::{Deserialize, Serialize};

use crate::id::AgentId;
use crate::manifest::{Availability, Manifest};

/// Default number of results when a query gives no `limit`.
pub const DEFAULT_LIMIT: usize = 100;
/// Largest `limit` accepted.
pub const MAX_LIMIT: usize = 1000;

/// Upper bound on price, in one currency.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(remote = "Self")]
pub struct MaxCost {
    /// Highest acceptable price per request.
    pub per_request: f64,
    /// Currency of that price.
    pub currency: String,
}

crate::json_in_binary!(MaxCost);

/// What a caller is looking for. Every field that is set must match.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(remote = "Self", deny_unknown_fields)]
pub struct DiscoverQuery {
    /// The agent must have all of these capabilities.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<String>,
    /// Exact availability.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub availability: Option<Availability>,
    /// The agent must offer this skill.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skill_id: Option<String>,
    /// At least one skill must carry one of these tags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Case-insensitive substring of the agent's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Price ceiling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cost: Option<MaxCost>,
    /// Exact `network.ip_type`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_type: Option<String>,
    /// Case-insensitive prefix of `network.geo`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub geo: Option<String>,
    /// Exact protocol version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Most results to return (default [`DEFAULT_LIMIT`], at most [`MAX_LIMIT`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// Exactly this agent (a daemon looking up where an agent id lives).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<AgentId>,
}

crate::json_in_binary!(DiscoverQuery);

/// Why a query is refused (`INVALID_QUERY`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QueryError {
    /// `limit` is zero or above [`MAX_LIMIT`].
    #[error("limit must be between 1 and {max}, got {got}")]
    Limit {
        /// Limit given.
        got: usize,
        /// Highest allowed.
        max: usize,
    },
    /// An empty string among capabilities or tags.
    #[error("'{field}' contains an empty string")]
    EmptyEntry {
        /// Field name.
        field: &'static str,
    },
}

impl DiscoverQuery {
    /// Checks the query's own consistency.
    pub fn validate(&self) -> Result<(), QueryError> {
        if let Some(l) = self.limit {
            if l == 0 || l > MAX_LIMIT {
                return Err(QueryError::Limit {
                    got: l,
                    max: MAX_LIMIT,
                });
            }
        }
        if self.capabilities.iter().any(String::is_empty) {
            return Err(QueryError::EmptyEntry {
                field: "capabilities",
            });
        }
        if self.tags.iter().any(String::is_empty) {
            return Err(QueryError::EmptyEntry { field: "tags" });
        }
        Ok(())
    }

    /// The effective result limit.
    pub fn effective_limit(&self) -> usize {
        self.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT)
    }

    /// Whether `m` satisfies every filter of this query.
    pub fn matches(&self, m: &Manifest) -> bool {
        self.agent_id.is_none_or(|id| id == m.id)
            && self
                .capabilities
                .iter()
                .all(|c| m.capabilities.iter().any(|have| have == c))
            && self.availability.is_none_or(|a| a == m.availability)
            && self.skill_id.as_ref().is_none_or(|s| m.skill(s).is_some())
            && (self.tags.is_empty()
                || m.skills
                    .iter()
                    .any(|s| s.tags.iter().any(|t| self.tags.contains(t))))
            && self
                .name
                .as_ref()
                .is_none_or(|n| m.name.to_lowercase().contains(&n.to_lowercase()))
            && self
                .version
                .as_ref()
                .is_none_or(|v| *v == m.protocol_version)
            && self.matches_network(m)
            && self.matches_cost(m)
    }

    fn matches_network(&self, m: &Manifest) -> bool {
        let net = m.network.as_ref();
        let ip_ok = self
            .ip_type
            .as_ref()
            .is_none_or(|want| net.and_then(|n| n.ip_type.as_ref()) == Some(want));
        let geo_ok = self.geo.as_ref().is_none_or(|want| {
            net.and_then(|n| n.geo.as_ref())
                .is_some_and(|g| g.to_lowercase().starts_with(&want.to_lowercase()))
        });
        ip_ok && geo_ok
    }

    fn matches_cost(&self, m: &Manifest) -> bool {
        let Some(max) = &self.max_cost else {
            return true;
        };
        match &m.cost {
            None => true,
            Some(c) => {
                c.currency == max.currency && c.per_request.is_none_or(|p| p <= max.per_request)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::tests::sample;
    use crate::manifest::Cost;
    use proptest::prelude::*;

    fn q(json: serde_json::Value) -> DiscoverQuery {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn filters_combine_with_and() {
        let (_, m) = sample(1);
        assert!(q(serde_json::json!({})).matches(&m));
        assert!(q(serde_json::json!({"capabilities": ["translation"]})).matches(&m));
        assert!(q(serde_json::json!({"capabilities": ["translation", "text"]})).matches(&m));
        assert!(!q(serde_json::json!({"capabilities": ["translation", "vision"]})).matches(&m));
        assert!(q(serde_json::json!({"skill_id": "translate"})).matches(&m));
        assert!(!q(serde_json::json!({"skill_id": "summarize"})).matches(&m));
        assert!(q(serde_json::json!({"tags": ["x", "nlp"]})).matches(&m));
        assert!(!q(serde_json::json!({"tags": ["x"]})).matches(&m));
        assert!(q(serde_json::json!({"name": "TRANS"})).matches(&m));
        assert!(q(serde_json::json!({"geo": "us"})).matches(&m));
        assert!(!q(serde_json::json!({"geo": "DE"})).matches(&m));
        assert!(
            q(serde_json::json!({"ip_type": "residential", "availability": "online"})).matches(&m)
        );
        assert!(!q(serde_json::json!({"availability": "busy"})).matches(&m));
        assert!(q(serde_json::json!({"agent_id": m.id})).matches(&m));
        let other = crate::id::SecretKey::from_bytes(&[99; 32]).agent_id();
        assert!(!q(serde_json::json!({"agent_id": other})).matches(&m));
    }

    #[test]
    fn cost_ceiling() {
        let (_, mut m) = sample(1);
        m.cost = Some(Cost {
            per_request: Some(2.0),
            per_token: None,
            currency: "USD".into(),
            billing_model: None,
        });
        assert!(
            q(serde_json::json!({"max_cost": {"per_request": 2.0, "currency": "USD"}})).matches(&m)
        );
        assert!(
            !q(serde_json::json!({"max_cost": {"per_request": 1.0, "currency": "USD"}}))
                .matches(&m)
        );
    }

    #[test]
    fn validation() {
        assert!(q(serde_json::json!({"limit": 0})).validate().is_err());
        assert!(q(serde_json::json!({"limit": 5000})).validate().is_err());
        assert!(q(serde_json::json!({"capabilities": [""]}))
            .validate()
            .is_err());
        assert_eq!(q(serde_json::json!({})).effective_limit(), DEFAULT_LIMIT);
        assert!(
            serde_json::from_value::<DiscoverQuery>(serde_json::json!({"capabilitys": []}))
                .is_err()
        );
    }

    proptest! {
        #[test]
        fn round_trips(caps in prop::collection::vec("[a-z]{1,8}", 0..4), limit in proptest::option::of(1usize..1000), name in proptest::option::of("[a-z]{0,8}"), seed in proptest::option::of(any::<u8>())) {
            let agent_id = seed.map(|s| crate::id::SecretKey::from_bytes(&[s; 32]).agent_id());
            let query = DiscoverQuery { capabilities: caps, limit, name, agent_id, ..DiscoverQuery::default() };
            let json = serde_json::to_string(&query).unwrap();
            prop_assert_eq!(&serde_json::from_str::<DiscoverQuery>(&json).unwrap(), &query);
            let bin = crate::frame::to_bytes(&query).unwrap();
            prop_assert_eq!(crate::frame::from_bytes::<DiscoverQuery>(&bin).unwrap(), query);
        }
    }
}
