//! What this daemon has learned from the rendezvous about agents on other daemons: a
//! bounded, expiring map agent id → (node, manifest, learned at), filled by every
//! lookup answer and read by `request` so a repeated `to` needs no new lookup; the last
//! known node of an agent whose daemon went away (for store-and-forward, when the
//! rendezvous no longer lists it); and how a capability request picks one of several
//! remote agents.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentmesh_proto::rendezvous::AgentRecord;
use agentmesh_proto::{AgentId, Availability, ErrorCode, ErrorObject, Manifest, NodeId};
use indexmap::IndexMap;

/// How many remote agents are remembered (the oldest learned is forgotten first).
pub(super) const DIRECTORY_CAPACITY: usize = 4096;
/// How long a learned location is trusted before a new lookup.
pub(super) const DIRECTORY_TTL: Duration = Duration::from_secs(60);
/// How long the last known node of an agent is remembered for store-and-forward.
pub(super) const LAST_KNOWN_TTL: Duration = Duration::from_secs(3600);

/// One remote agent as the rendezvous described it.
#[derive(Debug, Clone)]
pub(super) struct DirEntry {
    /// The daemon hosting it.
    pub(super) node: NodeId,
    /// Its signed manifest (availability as of `learned`).
    pub(super) manifest: Arc<Manifest>,
    /// When the rendezvous said so.
    learned: Instant,
    /// False once its node was unreachable: then only [`Directory::last_known`] finds it.
    reachable: bool,
}

/// Remote agents by id, in the order they were learned.
#[derive(Debug, Default)]
pub(super) struct Directory {
    entries: IndexMap<AgentId, DirEntry>,
}

impl Directory {
    /// Remembers a record (refreshing it if known).
    pub(super) fn learn(&mut self, record: &AgentRecord, now: Instant) {
        let id = record.manifest.id;
        self.entries.shift_remove(&id);
        if self.entries.len() >= DIRECTORY_CAPACITY {
            self.entries.shift_remove_index(0);
        }
        self.entries.insert(
            id,
            DirEntry {
                node: record.node,
                manifest: Arc::clone(&record.manifest),
                learned: now,
                reachable: true,
            },
        );
    }

    /// Where `id` lives, if learned less than [`DIRECTORY_TTL`] ago.
    pub(super) fn get(&self, id: &AgentId, now: Instant) -> Option<&DirEntry> {
        self.entries
            .get(id)
            .filter(|e| e.reachable && now.saturating_duration_since(e.learned) < DIRECTORY_TTL)
    }

    /// Where `id` was last known to live (also after its node became unreachable), if
    /// learned less than [`LAST_KNOWN_TTL`] ago.
    pub(super) fn last_known(&self, id: &AgentId, now: Instant) -> Option<&DirEntry> {
        self.entries
            .get(id)
            .filter(|e| now.saturating_duration_since(e.learned) < LAST_KNOWN_TTL)
    }

    /// Forgets one agent (it answered that it is gone).
    pub(super) fn forget(&mut self, id: &AgentId) {
        self.entries.shift_remove(id);
    }

    /// Stops using the agents of a node (the node is unreachable); they stay known as
    /// last seen there.
    pub(super) fn forget_node(&mut self, node: NodeId) {
        for e in self.entries.values_mut().filter(|e| e.node == node) {
            e.reachable = false;
        }
    }

    /// Number of remembered agents (also those last seen on unreachable nodes).
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }
}

/// Checks that a remote agent, as its manifest says, can take a request for `skill`.
pub(super) fn check_remote(m: &Manifest, skill: &str) -> Result<(), ErrorObject> {
    if m.availability == Availability::Offline {
        return Err(ErrorObject::new(
            ErrorCode::AgentUnavailable,
            format!("agent {} is offline", m.id.short()),
        ));
    }
    if m.skill(skill).is_none() {
        return Err(ErrorObject::new(
            ErrorCode::SkillNotFound,
            format!("agent {} has no skill '{skill}'", m.id.short()),
        ));
    }
    Ok(())
}

/// Preference among available agents: online first, then degraded, then busy.
fn availability_rank(a: Availability) -> Option<u8> {
    match a {
        Availability::Online => Some(0),
        Availability::Degraded => Some(1),
        Availability::Busy => Some(2),
        Availability::Offline => None,
    }
}

/// Picks one remote record able to run `skill` for `capability`: the best availability,
/// then the fewest tasks this daemon already has in flight with it, then round robin
/// (`cursor`) among those equal. `None` when no record qualifies.
pub(super) fn pick_remote<'a>(
    records: &'a [AgentRecord],
    capability: &str,
    skill: &str,
    load: &HashMap<AgentId, usize>,
    cursor: &mut usize,
) -> Option<&'a AgentRecord> {
    let key = |r: &AgentRecord| {
        let rank = availability_rank(r.manifest.availability)?;
        let able = r.manifest.capabilities.iter().any(|c| c == capability)
            && r.manifest.skill(skill).is_some();
        able.then(|| (rank, load.get(&r.manifest.id).copied().unwrap_or(0)))
    };
    let best = records.iter().filter_map(key).min()?;
    let equals: Vec<&AgentRecord> = records.iter().filter(|r| key(r) == Some(best)).collect();
    let chosen = equals.get(*cursor % equals.len()).copied();
    *cursor = cursor.wrapping_add(1);
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentmesh_proto::{SecretKey, Skill};

    fn record(seed: u8, avail: Availability) -> AgentRecord {
        let key = SecretKey::from_bytes(&[seed; 32]);
        let mut m = Manifest::new(key.agent_id(), format!("r{seed}"));
        m.capabilities = vec!["work".into()];
        m.skills = vec![Skill {
            id: "job".into(),
            ..Skill::default()
        }];
        m.availability = avail;
        AgentRecord {
            node: SecretKey::from_bytes(&[100 + seed; 32]).node_id(),
            manifest: Arc::new(m),
        }
    }

    #[test]
    fn picks_best_available_then_least_loaded_then_round_robin() {
        let recs = vec![
            record(1, Availability::Busy),
            record(2, Availability::Online),
            record(3, Availability::Online),
            record(4, Availability::Offline),
        ];
        let mut load = HashMap::new();
        let mut cur = 0;
        let picks: Vec<AgentId> = (0..4)
            .map(|_| {
                pick_remote(&recs, "work", "job", &load, &mut cur)
                    .unwrap()
                    .manifest
                    .id
            })
            .collect();
        let (b, c) = (recs[1].manifest.id, recs[2].manifest.id);
        assert_eq!(picks, vec![b, c, b, c]);
        load.insert(b, 2);
        for _ in 0..3 {
            let p = pick_remote(&recs, "work", "job", &load, &mut cur).unwrap();
            assert_eq!(p.manifest.id, c);
        }
        assert!(pick_remote(&recs, "work", "nope", &load, &mut cur).is_none());
        assert!(pick_remote(&recs[3..], "work", "job", &load, &mut cur).is_none());
    }

    #[test]
    fn directory_is_bounded_and_expires() {
        let t0 = Instant::now();
        let mut d = Directory::default();
        let r = record(1, Availability::Online);
        d.learn(&r, t0);
        assert_eq!(d.get(&r.manifest.id, t0).map(|e| e.node), Some(r.node));
        assert!(d.get(&r.manifest.id, t0 + DIRECTORY_TTL).is_none());
        for i in 0..DIRECTORY_CAPACITY + 5 {
            let mut seed = [7u8; 32];
            seed[..8].copy_from_slice(&(i as u64).to_le_bytes());
            let key = SecretKey::from_bytes(&seed);
            let rec = AgentRecord {
                node: r.node,
                manifest: Arc::new(Manifest::new(key.agent_id(), "x")),
            };
            d.learn(&rec, t0);
        }
        assert_eq!(d.len(), DIRECTORY_CAPACITY);
        assert!(d.get(&r.manifest.id, t0).is_none(), "the oldest went first");
        let last = d.entries.get_index(0).map(|(id, _)| *id).unwrap();
        d.forget_node(r.node);
        assert!(
            d.get(&last, t0).is_none(),
            "not used while its node is unreachable"
        );
        assert_eq!(
            d.last_known(&last, t0 + DIRECTORY_TTL).map(|e| e.node),
            Some(r.node),
            "still known as last seen there"
        );
        assert!(d.last_known(&last, t0 + LAST_KNOWN_TTL).is_none());
    }
}
