//! The discovery index of one tenant: live agents in slots, with posting lists by
//! capability, skill id and tag so a query only looks at agents that can match.
//!
//! Names are indexed by byte trigrams of their lower-cased form, so a name-substring
//! query of three or more bytes only looks at names holding all of its trigrams.
//!
//! A query naming an `agent_id` is a direct lookup of that one slot. Otherwise a query
//! picks its most selective indexed filter (smallest posting list; for tags the
//! union of their lists; for names the rarest trigram), walks those candidates and applies the full
//! [`DiscoverQuery::matches`] rule to each, stopping at the limit. Queries with no indexed
//! filter scan all slots.

use std::collections::HashMap;
use std::sync::Arc;

use agentmesh_proto::{AgentId, Availability, DiscoverQuery, Manifest, NodeId};
use indexmap::IndexSet;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// One live agent.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    /// The verified manifest (registry-owned fields kept current).
    pub(crate) manifest: Arc<Manifest>,
    /// The hosting node.
    pub(crate) node: NodeId,
    /// Last heartbeat or registration, Unix milliseconds.
    pub(crate) last_seen_unix_ms: u64,
    /// Lower-cased name, so name queries do not allocate per agent.
    name_lower: String,
}

/// Formats Unix milliseconds as RFC 3339.
fn iso(unix_ms: u64) -> Option<String> {
    let nanos = i128::from(unix_ms) * 1_000_000;
    OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()?
        .format(&Rfc3339)
        .ok()
}

/// Posting lists: key → slots.
type Postings = HashMap<String, IndexSet<u32>>;

/// The index. Slots are reused after removal.
#[derive(Debug, Default)]
pub(crate) struct Index {
    slots: Vec<Option<Entry>>,
    free: Vec<u32>,
    by_agent: HashMap<AgentId, u32>,
    by_cap: Postings,
    by_skill: Postings,
    by_tag: Postings,
    by_trigram: HashMap<[u8; 3], IndexSet<u32>>,
    /// Slots by availability (online, busy, degraded, offline).
    by_avail: [IndexSet<u32>; 4],
}

fn avail_ix(a: Availability) -> usize {
    match a {
        Availability::Online => 0,
        Availability::Busy => 1,
        Availability::Degraded => 2,
        Availability::Offline => 3,
    }
}

/// The distinct byte trigrams of `s`.
fn trigrams(s: &str) -> IndexSet<[u8; 3]> {
    s.as_bytes()
        .windows(3)
        .map(|w| [w[0], w[1], w[2]])
        .collect()
}

fn post(map: &mut Postings, key: &str, slot: u32) {
    map.entry(key.to_string()).or_default().insert(slot);
}

fn unpost(map: &mut Postings, key: &str, slot: u32) {
    if let Some(set) = map.get_mut(key) {
        set.swap_remove(&slot);
        if set.is_empty() {
            map.remove(key);
        }
    }
}

impl Index {
    /// Number of agents.
    pub(crate) fn len(&self) -> usize {
        self.by_agent.len()
    }

    /// The entry of `agent`.
    pub(crate) fn get(&self, agent: &AgentId) -> Option<&Entry> {
        let slot = *self.by_agent.get(agent)?;
        self.slots.get(slot as usize)?.as_ref()
    }

    /// Records a heartbeat at `unix_ms` (also as the manifest's `last_heartbeat`, formatted
    /// here once rather than in every discovery answer).
    pub(crate) fn touch(&mut self, agent: &AgentId, unix_ms: u64) {
        let Some(&slot) = self.by_agent.get(agent) else {
            return;
        };
        if let Some(e) = self.slots.get_mut(slot as usize).and_then(Option::as_mut) {
            e.last_seen_unix_ms = unix_ms;
            Arc::make_mut(&mut e.manifest).last_heartbeat = iso(unix_ms);
        }
    }

    /// Changes an agent's availability, keeping its posting list current.
    pub(crate) fn set_availability(&mut self, agent: &AgentId, a: Availability) -> bool {
        let Some(&slot) = self.by_agent.get(agent) else {
            return false;
        };
        let Some(e) = self.slots.get_mut(slot as usize).and_then(Option::as_mut) else {
            return false;
        };
        let old = e.manifest.availability;
        if old == a {
            return false;
        }
        Arc::make_mut(&mut e.manifest).availability = a;
        self.by_avail[avail_ix(old)].swap_remove(&slot);
        self.by_avail[avail_ix(a)].insert(slot);
        true
    }

    /// Inserts or replaces the agent of `manifest.id`.
    pub(crate) fn upsert(&mut self, node: NodeId, mut manifest: Manifest, last_seen_unix_ms: u64) {
        manifest.last_heartbeat = iso(last_seen_unix_ms);
        self.remove(&manifest.id);
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.slots.push(None);
                (self.slots.len() - 1) as u32
            }
        };
        for c in &manifest.capabilities {
            post(&mut self.by_cap, c, slot);
        }
        for s in &manifest.skills {
            post(&mut self.by_skill, &s.id, slot);
            for t in &s.tags {
                post(&mut self.by_tag, t, slot);
            }
        }
        self.by_agent.insert(manifest.id, slot);
        self.by_avail[avail_ix(manifest.availability)].insert(slot);
        let name_lower = manifest.name.to_lowercase();
        for t in trigrams(&name_lower) {
            self.by_trigram.entry(t).or_default().insert(slot);
        }
        self.slots[slot as usize] = Some(Entry {
            manifest: Arc::new(manifest),
            node,
            last_seen_unix_ms,
            name_lower,
        });
    }

    /// Removes an agent, returning its entry.
    pub(crate) fn remove(&mut self, agent: &AgentId) -> Option<Entry> {
        let slot = self.by_agent.remove(agent)?;
        let entry = self.slots.get_mut(slot as usize)?.take()?;
        for c in &entry.manifest.capabilities {
            unpost(&mut self.by_cap, c, slot);
        }
        for s in &entry.manifest.skills {
            unpost(&mut self.by_skill, &s.id, slot);
            for t in &s.tags {
                unpost(&mut self.by_tag, t, slot);
            }
        }
        for t in trigrams(&entry.name_lower) {
            if let Some(set) = self.by_trigram.get_mut(&t) {
                set.swap_remove(&slot);
                if set.is_empty() {
                    self.by_trigram.remove(&t);
                }
            }
        }
        self.by_avail[avail_ix(entry.manifest.availability)].swap_remove(&slot);
        self.free.push(slot);
        Some(entry)
    }

    /// Answers `query` (assumed valid), at most its effective limit.
    pub(crate) fn query(&self, query: &DiscoverQuery) -> Vec<&Entry> {
        let limit = query.effective_limit();
        let name = query.name.as_ref().map(|n| n.to_lowercase());
        let accept = |e: &&Entry| {
            name.as_ref().is_none_or(|n| e.name_lower.contains(n)) && query.matches(&e.manifest)
        };
        match self.candidates(query) {
            Some(slots) => slots
                .into_iter()
                .filter_map(|s| self.slots.get(s as usize)?.as_ref())
                .filter(accept)
                .take(limit)
                .collect(),
            None => self
                .slots
                .iter()
                .flatten()
                .filter(accept)
                .take(limit)
                .collect(),
        }
    }

    /// The smallest candidate set given by an indexed filter, or `None` for a full scan.
    fn candidates(&self, query: &DiscoverQuery) -> Option<Vec<u32>> {
        if let Some(id) = &query.agent_id {
            return Some(self.by_agent.get(id).copied().into_iter().collect());
        }
        let empty = IndexSet::new();
        let mut best: Option<&IndexSet<u32>> = None;
        let lists = query
            .capabilities
            .iter()
            .map(|c| self.by_cap.get(c))
            .chain(query.skill_id.iter().map(|s| self.by_skill.get(s)));
        let name = query
            .name
            .as_ref()
            .map(|n| n.to_lowercase())
            .unwrap_or_default();
        let grams = trigrams(&name);
        let name_lists = grams.iter().map(|t| self.by_trigram.get(t));
        let avail = query
            .availability
            .map(|a| Some(&self.by_avail[avail_ix(a)]));
        for list in lists.chain(name_lists).chain(avail) {
            let list = list.unwrap_or(&empty);
            if best.is_none_or(|b| list.len() < b.len()) {
                best = Some(list);
            }
        }
        let tags = self.tag_union(query);
        match (best, tags) {
            (Some(b), Some(t)) if t.len() < b.len() => Some(t),
            (Some(b), _) => Some(b.iter().copied().collect()),
            (None, t) => t,
        }
    }

    fn tag_union(&self, query: &DiscoverQuery) -> Option<Vec<u32>> {
        if query.tags.is_empty() {
            return None;
        }
        let mut out: IndexSet<u32> = IndexSet::new();
        for t in &query.tags {
            if let Some(list) = self.by_tag.get(t) {
                out.extend(list.iter().copied());
            }
        }
        Some(out.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentmesh_proto::manifest::Skill;
    use agentmesh_proto::SecretKey;
    use proptest::prelude::*;

    fn manifest(seed: u32, caps: &[&str], skills: &[(&str, &[&str])]) -> Manifest {
        let mut b = [0u8; 32];
        b[..4].copy_from_slice(&seed.to_be_bytes());
        let key = SecretKey::from_bytes(&b);
        let mut m = Manifest::new(key.agent_id(), format!("Agent {seed}"));
        m.capabilities = caps.iter().map(|c| c.to_string()).collect();
        m.skills = skills
            .iter()
            .map(|(id, tags)| Skill {
                id: id.to_string(),
                tags: tags.iter().map(|t| t.to_string()).collect(),
                ..Skill::default()
            })
            .collect();
        m
    }

    fn node() -> NodeId {
        SecretKey::from_bytes(&[1; 32]).node_id()
    }

    fn q(json: serde_json::Value) -> DiscoverQuery {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn posting_lists_follow_upserts_and_removals() {
        let mut ix = Index::default();
        let a = manifest(1, &["text", "vision"], &[("ocr", &["img"])]);
        let b = manifest(2, &["text"], &[("translate", &["nlp"])]);
        ix.upsert(node(), a.clone(), 0);
        ix.upsert(node(), b.clone(), 0);
        assert_eq!(
            ix.query(&q(serde_json::json!({"capabilities": ["text"]})))
                .len(),
            2
        );
        assert_eq!(
            ix.query(&q(serde_json::json!({"capabilities": ["text", "vision"]})))
                .len(),
            1
        );
        assert_eq!(
            ix.query(&q(serde_json::json!({"tags": ["nlp", "img"]})))
                .len(),
            2
        );
        assert_eq!(
            ix.query(&q(serde_json::json!({"skill_id": "ocr"}))).len(),
            1
        );
        assert_eq!(
            ix.query(&q(serde_json::json!({"name": "AGENT 2"}))).len(),
            1
        );
        let a2 = manifest(1, &["audio"], &[]);
        ix.upsert(node(), a2, 0);
        assert_eq!(ix.len(), 2);
        assert_eq!(
            ix.query(&q(serde_json::json!({"capabilities": ["vision"]})))
                .len(),
            0
        );
        assert!(ix.remove(&b.id).is_some());
        assert_eq!(
            ix.query(&q(serde_json::json!({"capabilities": ["text"]})))
                .len(),
            0
        );
        assert!(!ix.by_cap.contains_key("text"), "empty lists are dropped");
        assert!(
            !ix.by_trigram.contains_key(b"t 2"),
            "trigrams follow removals"
        );
        assert_eq!(ix.query(&q(serde_json::json!({"limit": 5}))).len(), 1);
    }

    #[test]
    fn agent_id_is_a_direct_lookup() {
        let mut ix = Index::default();
        let a = manifest(1, &["text"], &[("ocr", &[])]);
        let b = manifest(2, &["text"], &[("ocr", &[])]);
        ix.upsert(node(), a.clone(), 0);
        ix.upsert(node(), b.clone(), 0);
        let by_id = |ix: &Index, json: serde_json::Value| -> Vec<AgentId> {
            ix.query(&q(json)).iter().map(|e| e.manifest.id).collect()
        };
        assert_eq!(
            by_id(&ix, serde_json::json!({"agent_id": b.id})),
            vec![b.id]
        );
        assert_eq!(
            by_id(
                &ix,
                serde_json::json!({"agent_id": a.id, "capabilities": ["text"]})
            ),
            vec![a.id]
        );
        assert!(
            by_id(
                &ix,
                serde_json::json!({"agent_id": a.id, "skill_id": "nope"})
            )
            .is_empty(),
            "the other filters still apply"
        );
        ix.remove(&a.id);
        assert!(by_id(&ix, serde_json::json!({"agent_id": a.id})).is_empty());
    }

    proptest! {
        /// The index answers exactly what a full scan with `matches` answers.
        #[test]
        fn index_agrees_with_a_full_scan(
            agents in prop::collection::vec((prop::sample::subsequence(vec!["a", "b", "c", "d"], 0..4), prop::sample::subsequence(vec!["s1", "s2", "s3"], 0..3)), 1..40),
            removals in prop::collection::vec(0usize..40, 0..10),
            want_caps in prop::sample::subsequence(vec!["a", "b", "c", "d", "zz"], 0..3),
            skill in proptest::option::of(prop::sample::select(vec!["s1", "s2", "s9"])),
            tags in prop::sample::subsequence(vec!["t-s1", "t-s3", "none"], 0..2),
            name in proptest::option::of(prop::sample::select(vec!["AGENT", "nt 1", "3", "zzz", "t 2"])),
            busy in prop::collection::vec(0usize..40, 0..10),
            avail in proptest::option::of(prop::sample::select(vec![Availability::Online, Availability::Busy])),
            by_id in proptest::option::of(0usize..40),
        ) {
            let mut ix = Index::default();
            let mut all = Vec::new();
            for (i, (caps, skills)) in agents.iter().enumerate() {
                let tag_names: Vec<String> = skills.iter().map(|s| format!("t-{s}")).collect();
                let sk: Vec<(&str, Vec<&str>)> = skills.iter().zip(&tag_names).map(|(s, t)| (*s, vec![t.as_str()])).collect();
                let sk_ref: Vec<(&str, &[&str])> = sk.iter().map(|(s, t)| (*s, t.as_slice())).collect();
                let m = manifest(i as u32, caps, &sk_ref);
                ix.upsert(node(), m.clone(), 0);
                all.push(m);
            }
            for b in busy {
                if let Some(m) = all.get_mut(b) {
                    ix.set_availability(&m.id, Availability::Busy);
                    m.availability = Availability::Busy;
                }
            }
            for r in removals {
                if let Some(m) = all.get(r) {
                    ix.remove(&m.id);
                }
            }
            let query = DiscoverQuery {
                capabilities: want_caps.iter().map(|s| s.to_string()).collect(),
                skill_id: skill.map(str::to_string),
                tags: tags.iter().map(|s| s.to_string()).collect(),
                name: name.map(str::to_string),
                availability: avail,
                limit: Some(1000),
                agent_id: by_id.and_then(|i| all.get(i)).map(|m| m.id),
                ..DiscoverQuery::default()
            };
            let mut got: Vec<AgentId> = ix.query(&query).iter().map(|e| e.manifest.id).collect();
            let mut want: Vec<AgentId> = all.iter().filter(|m| ix.get(&m.id).is_some() && query.matches(m)).map(|m| m.id).collect();
            got.sort();
            want.sort();
            prop_assert_eq!(got, want);
        }
    }
}
