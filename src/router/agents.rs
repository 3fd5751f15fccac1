//! The agents registered on this daemon, who owns each, and how a request addressed
//! to a capability picks one of them (least busy first, round robin among equals).

use std::collections::HashMap;

use agentmesh_proto::{AgentId, Availability, ErrorCode, ErrorObject, Manifest, SecretKey};
use indexmap::IndexMap;

use super::ConnId;

/// One agent registered through the local API.
#[derive(Debug)]
pub struct LocalAgent {
    /// Its signed manifest.
    pub manifest: Manifest,
    /// The connection that registered it; closing that connection removes it.
    pub conn: ConnId,
    /// Unfinished tasks it is the responder of (for least-busy selection).
    pub active_tasks: usize,
    /// Its key: signs the manifest now, and its envelopes once networking lands.
    pub key: SecretKey,
}

/// All local agents, in registration order (deterministic listing).
#[derive(Debug, Default)]
pub struct AgentTable {
    agents: IndexMap<AgentId, LocalAgent>,
    /// Round-robin cursor per capability.
    cursors: HashMap<String, usize>,
}

impl AgentTable {
    /// Adds or replaces an agent. Returns the connection that owned it before, if any.
    pub fn insert(&mut self, agent: LocalAgent) -> Option<ConnId> {
        let id = agent.manifest.id;
        let previous = self.agents.get(&id).map(|a| a.conn);
        let active = self.agents.get(&id).map_or(0, |a| a.active_tasks);
        self.agents.insert(
            id,
            LocalAgent {
                active_tasks: active,
                ..agent
            },
        );
        previous
    }

    /// Removes an agent.
    pub fn remove(&mut self, id: &AgentId) -> Option<LocalAgent> {
        self.agents.shift_remove(id)
    }

    /// Looks an agent up.
    pub fn get(&self, id: &AgentId) -> Option<&LocalAgent> {
        self.agents.get(id)
    }

    /// Looks an agent up for change.
    pub fn get_mut(&mut self, id: &AgentId) -> Option<&mut LocalAgent> {
        self.agents.get_mut(id)
    }

    /// Every agent, in registration order.
    pub fn iter(&self) -> impl Iterator<Item = &LocalAgent> {
        self.agents.values()
    }

    /// Number of agents.
    pub fn len(&self) -> usize {
        self.agents.len()
    }

    /// Whether no agent is registered.
    pub fn is_empty(&self) -> bool {
        self.agents.is_empty()
    }

    /// Checks that `id` can take a request for `skill`.
    pub fn check_target(&self, id: &AgentId, skill: &str) -> Result<(), ErrorObject> {
        let agent = self.agents.get(id).ok_or_else(|| {
            ErrorObject::new(
                ErrorCode::AgentUnavailable,
                format!("agent {} is not registered (or went offline)", id.short()),
            )
        })?;
        if agent.manifest.availability == Availability::Offline {
            return Err(ErrorObject::new(
                ErrorCode::AgentUnavailable,
                format!("agent {} is offline", id.short()),
            ));
        }
        if agent.manifest.skill(skill).is_none() {
            return Err(ErrorObject::new(
                ErrorCode::SkillNotFound,
                format!("agent {} has no skill '{skill}'", id.short()),
            ));
        }
        Ok(())
    }

    /// Picks an agent offering `capability` and `skill`: the least busy, and among
    /// equally busy ones the next in round-robin order.
    pub fn pick(&mut self, capability: &str, skill: &str) -> Result<AgentId, ErrorObject> {
        let with_cap: Vec<&LocalAgent> = self
            .agents
            .values()
            .filter(|a| a.manifest.availability != Availability::Offline)
            .filter(|a| a.manifest.capabilities.iter().any(|c| c == capability))
            .collect();
        if with_cap.is_empty() {
            return Err(ErrorObject::new(
                ErrorCode::TransportNoResponders,
                format!("no online agent offers capability '{capability}'"),
            ));
        }
        let able: Vec<&LocalAgent> = with_cap
            .into_iter()
            .filter(|a| a.manifest.skill(skill).is_some())
            .collect();
        let Some(min_load) = able.iter().map(|a| a.active_tasks).min() else {
            return Err(ErrorObject::new(
                ErrorCode::SkillNotFound,
                format!("no agent with capability '{capability}' has skill '{skill}'"),
            ));
        };
        let least: Vec<AgentId> = able
            .iter()
            .filter(|a| a.active_tasks == min_load)
            .map(|a| a.manifest.id)
            .collect();
        let cursor = self.cursors.entry(capability.to_string()).or_insert(0);
        let chosen = least[*cursor % least.len()];
        *cursor = cursor.wrapping_add(1);
        Ok(chosen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentmesh_proto::Skill;

    fn agent(seed: u8, caps: &[&str], skills: &[&str]) -> LocalAgent {
        let key = SecretKey::from_bytes(&[seed; 32]);
        let mut manifest = Manifest::new(key.agent_id(), format!("a{seed}"));
        manifest.capabilities = caps.iter().map(|s| s.to_string()).collect();
        manifest.skills = skills
            .iter()
            .map(|s| Skill {
                id: s.to_string(),
                ..Skill::default()
            })
            .collect();
        LocalAgent {
            manifest,
            conn: ConnId(seed.into()),
            active_tasks: 0,
            key,
        }
    }

    #[test]
    fn round_robin_among_equally_busy() {
        let mut t = AgentTable::default();
        let ids: Vec<AgentId> = (1..=3)
            .map(|s| {
                let a = agent(s, &["echo"], &["echo"]);
                let id = a.manifest.id;
                t.insert(a);
                id
            })
            .collect();
        let picks: Vec<AgentId> = (0..6).map(|_| t.pick("echo", "echo").unwrap()).collect();
        assert_eq!(picks, [ids.clone(), ids].concat());
    }

    #[test]
    fn least_busy_wins() {
        let mut t = AgentTable::default();
        let a = agent(1, &["echo"], &["echo"]);
        let b = agent(2, &["echo"], &["echo"]);
        let (ia, ib) = (a.manifest.id, b.manifest.id);
        t.insert(a);
        t.insert(b);
        t.get_mut(&ia).unwrap().active_tasks = 3;
        for _ in 0..4 {
            assert_eq!(t.pick("echo", "echo").unwrap(), ib);
        }
    }

    #[test]
    fn errors_name_the_problem() {
        let mut t = AgentTable::default();
        let a = agent(1, &["echo"], &["echo"]);
        let id = a.manifest.id;
        t.insert(a);
        assert_eq!(
            t.pick("nope", "echo").unwrap_err().code,
            ErrorCode::TransportNoResponders
        );
        assert_eq!(
            t.pick("echo", "nope").unwrap_err().code,
            ErrorCode::SkillNotFound
        );
        assert_eq!(
            t.check_target(&id, "nope").unwrap_err().code,
            ErrorCode::SkillNotFound
        );
        let other = SecretKey::from_bytes(&[9; 32]).agent_id();
        assert_eq!(
            t.check_target(&other, "echo").unwrap_err().code,
            ErrorCode::AgentUnavailable
        );
    }
}
