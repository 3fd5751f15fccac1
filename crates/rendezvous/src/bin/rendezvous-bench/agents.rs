//! The simulated population: node keys, signed manifests with varied capabilities,
//! skills, tags and names, and the discovery queries asked of them.

use agentmesh_proto::manifest::Skill;
use agentmesh_proto::{DiscoverQuery, Manifest, SecretKey};

/// Distinct capabilities, skill ids and tags in the population.
pub(crate) const CAPS: usize = 50;
pub(crate) const SKILLS: usize = 200;
pub(crate) const TAGS: usize = 100;

/// The key of node `i` (deterministic, so runs are comparable).
pub(crate) fn node_key(i: usize) -> SecretKey {
    let mut b = [0xB1u8; 32];
    b[..8].copy_from_slice(&(i as u64).to_be_bytes());
    SecretKey::from_bytes(&b)
}

fn agent_key(i: usize) -> SecretKey {
    let mut b = [0xA7u8; 32];
    b[..8].copy_from_slice(&(i as u64).to_be_bytes());
    SecretKey::from_bytes(&b)
}

/// The signed manifest of agent `i` (global number): 2-4 capabilities, 1-3 skills with a
/// tag or two each, a name holding its number.
pub(crate) fn manifest(i: usize) -> Manifest {
    let k = agent_key(i);
    let mut m = Manifest::new(k.agent_id(), format!("Agent {i:06}"));
    m.description = format!("simulated agent {i} for rendezvous-bench");
    m.endpoint = format!("mesh.agent.{}.inbox", k.agent_id());
    m.capabilities = (0..2 + i % 3)
        .map(|j| format!("cap{}", (i * 7 + j * 13) % CAPS))
        .collect();
    m.skills = (0..1 + i % 3)
        .map(|j| Skill {
            id: format!("skill{}", (i * 3 + j * 101) % SKILLS),
            name: format!("Skill {j}"),
            tags: (0..1 + (i + j) % 2)
                .map(|t| format!("tag{}", (i + j + t * 37) % TAGS))
                .collect(),
            ..Skill::default()
        })
        .collect();
    m.sign(&k, "2026-11-21T00:00:00Z");
    m
}

/// Every node's manifests (node `n` hosts agents `n*per .. (n+1)*per`), signed on all
/// cores.
pub(crate) fn population(nodes: usize, per: usize) -> Vec<Vec<Manifest>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = nodes.div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..nodes)
            .step_by(chunk)
            .map(|start| {
                s.spawn(move || {
                    (start..(start + chunk).min(nodes))
                        .map(|n| (n * per..(n + 1) * per).map(manifest).collect())
                        .collect::<Vec<Vec<Manifest>>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    })
}

/// The query kinds asked over the wire, in order.
pub(crate) const KINDS: [&str; 7] = [
    "agent id (direct)",
    "one capability",
    "two capabilities",
    "skill id",
    "tags (2)",
    "name substring",
    "capability, limit 1000",
];

/// Query number `i` of `kind`; `agents` is the population size (for agent ids).
pub(crate) fn query(kind: &str, i: usize, all: &[Vec<Manifest>], agents: usize) -> DiscoverQuery {
    let mut q = DiscoverQuery::default();
    match kind {
        "agent id (direct)" => {
            let a = (i * 7919) % agents.max(1);
            let per = all.first().map_or(1, Vec::len).max(1);
            q.agent_id = all.get(a / per).and_then(|n| n.get(a % per)).map(|m| m.id);
        }
        "one capability" => q.capabilities = vec![format!("cap{}", i % CAPS)],
        "two capabilities" => {
            q.capabilities = vec![
                format!("cap{}", (i * 7) % CAPS),
                format!("cap{}", (i * 7 + 13) % CAPS),
            ]
        }
        "skill id" => q.skill_id = Some(format!("skill{}", i % SKILLS)),
        "tags (2)" => {
            q.tags = vec![
                format!("tag{}", i % TAGS),
                format!("tag{}", (i + 50) % TAGS),
            ]
        }
        "name substring" => q.name = Some(format!("{:04}", (i * 37) % 10_000)),
        _ => {
            q.capabilities = vec![format!("cap{}", i % CAPS)];
            q.limit = Some(1000);
        }
    }
    q
}

/// How many results `q` must return from `all` (a full scan; used on a sample).
pub(crate) fn expected(q: &DiscoverQuery, all: &[Vec<Manifest>]) -> usize {
    let hits = all.iter().flatten().filter(|m| q.matches(m)).count();
    hits.min(q.effective_limit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_are_valid_signed_and_varied() {
        let all = population(3, 5);
        assert_eq!(all.iter().map(Vec::len).sum::<usize>(), 15);
        for m in all.iter().flatten() {
            assert!(m.validate().is_ok() && m.verify().is_ok());
        }
        let caps: std::collections::HashSet<_> =
            all.iter().flatten().flat_map(|m| &m.capabilities).collect();
        assert!(caps.len() > 5, "{caps:?}");
        let q = query("agent id (direct)", 4, &all, 15);
        assert_eq!(expected(&q, &all), 1);
    }
}
