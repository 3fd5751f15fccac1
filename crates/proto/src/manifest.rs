//! Agent manifests: who an agent is and what it can do (AgentMesh v0.1.0 `Manifest`),
//! with validation and Ed25519 signatures over a canonical form.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::id::{AgentId, SecretKey, Signature};
use crate::json::Json;

/// Limits that keep one manifest small enough to index and ship.
pub mod limits {
    /// Longest name, description, version or id string, in bytes.
    pub const MAX_TEXT: usize = 1024;
    /// Most capabilities per manifest.
    pub const MAX_CAPABILITIES: usize = 64;
    /// Most skills per manifest.
    pub const MAX_SKILLS: usize = 128;
    /// Most tags per skill.
    pub const MAX_TAGS: usize = 64;
    /// Largest manifest as JSON text, in bytes.
    pub const MAX_JSON_BYTES: usize = 64 * 1024;
}

/// Whether an agent takes work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Availability {
    /// Accepting work.
    #[default]
    Online,
    /// Accepting, but slowly.
    Busy,
    /// Partly working.
    Degraded,
    /// Not accepting.
    Offline,
}

/// One specific thing an agent can do.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(remote = "Self")]
pub struct Skill {
    /// Unique skill identifier within the agent.
    pub id: String,
    /// Human-readable name.
    #[serde(default)]
    pub name: String,
    /// What it does.
    #[serde(default)]
    pub description: String,
    /// Free-form tags used by discovery.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// JSON Schema of the input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_schema: Option<Json>,
    /// JSON Schema of the output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_schema: Option<Json>,
    /// Accepted MIME types.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub input_modes: Vec<String>,
    /// Produced MIME types.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub output_modes: Vec<String>,
    /// Example inputs and outputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub examples: Option<Json>,
    /// Whether the skill streams partial results.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub streaming: Option<bool>,
    /// Typical duration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_duration_ms: Option<u64>,
}

crate::json_in_binary!(Skill);

/// Who runs an agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(remote = "Self")]
pub struct Provider {
    /// Provider name.
    pub name: String,
    /// Provider URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

crate::json_in_binary!(Provider);

/// What a request costs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(remote = "Self")]
pub struct Cost {
    /// Price per request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_request: Option<f64>,
    /// Price per token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_token: Option<f64>,
    /// Currency, e.g. `credits`, `USD`.
    pub currency: String,
    /// Billing model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub billing_model: Option<String>,
}

crate::json_in_binary!(Cost);

/// Self-declared rate limits.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(remote = "Self")]
pub struct RateLimits {
    /// Requests per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_second: Option<f64>,
    /// Requests per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<f64>,
    /// Concurrent tasks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrent_tasks: Option<u32>,
}

crate::json_in_binary!(RateLimits);

/// Self-reported network environment.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(remote = "Self")]
pub struct Network {
    /// `residential`, `datacenter`, `mobile` or `proxy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_type: Option<String>,
    /// ISO 3166 code such as `US-CA`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub geo: Option<String>,
}

crate::json_in_binary!(Network);

/// Tenant and signature.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(remote = "Self")]
pub struct Trust {
    /// Tenant (mesh) the agent belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// When the manifest was signed (ISO 8601).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_at: Option<String>,
    /// Ed25519 signature of the canonical manifest by the agent key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<Signature>,
}

crate::json_in_binary!(Trust);

/// A protocol extension the agent supports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(remote = "Self")]
pub struct Extension {
    /// Extension URI.
    pub uri: String,
    /// What it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Whether peers must support it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required: Option<bool>,
    /// Extension version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

crate::json_in_binary!(Extension);

fn default_version() -> String {
    "0.0.0".into()
}

fn default_protocol() -> String {
    crate::PROTOCOL_VERSION.into()
}

/// An agent's self-description, as registered and discovered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(remote = "Self")]
pub struct Manifest {
    /// The agent's id (its public key).
    pub id: AgentId,
    /// Display name.
    pub name: String,
    /// What the agent is for.
    #[serde(default)]
    pub description: String,
    /// The agent's own version (semver).
    #[serde(default = "default_version")]
    pub version: String,
    /// Protocol version the agent speaks.
    #[serde(default = "default_protocol")]
    pub protocol_version: String,
    /// Who runs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<Provider>,
    /// Where requests go (`mesh.agent.{id}.inbox`).
    #[serde(default)]
    pub endpoint: String,
    /// Whether it takes work.
    #[serde(default)]
    pub availability: Availability,
    /// Last heartbeat seen by the registry (ISO 8601).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat: Option<String>,
    /// Broad tags for coarse discovery.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Specific things it can do.
    #[serde(default)]
    pub skills: Vec<Skill>,
    /// Event subjects it subscribes to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub accepts: Vec<String>,
    /// Event subjects it publishes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub emits: Vec<String>,
    /// Pricing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<Cost>,
    /// Self-declared limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limits: Option<RateLimits>,
    /// Network environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<Network>,
    /// Tenant and signature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust: Option<Trust>,
    /// Supported extensions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extensions: Vec<Extension>,
    /// Anything else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<Json>,
}

crate::json_in_binary!(Manifest);

/// Why a manifest is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// A required text field is empty.
    #[error("manifest field '{field}' must not be empty")]
    Empty {
        /// Field name.
        field: &'static str,
    },
    /// A field is over its size limit.
    #[error("manifest field '{field}' has {len} entries or bytes, the limit is {max}")]
    TooLarge {
        /// Field name.
        field: &'static str,
        /// Size found.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Two skills share an id.
    #[error("skill id '{0}' appears twice")]
    DuplicateSkill(String),
    /// A skill has no id.
    #[error("skill {index} has an empty id")]
    EmptySkillId {
        /// Zero-based skill index.
        index: usize,
    },
    /// No signature where one is required.
    #[error("manifest is not signed")]
    Unsigned,
    /// The signature does not match the manifest and its id.
    #[error("manifest signature does not verify for {0}")]
    BadSignature(String),
}

fn check_text(field: &'static str, s: &str) -> Result<(), ManifestError> {
    if s.len() > limits::MAX_TEXT {
        return Err(ManifestError::TooLarge {
            field,
            len: s.len(),
            max: limits::MAX_TEXT,
        });
    }
    Ok(())
}

fn check_count(field: &'static str, len: usize, max: usize) -> Result<(), ManifestError> {
    if len > max {
        return Err(ManifestError::TooLarge { field, len, max });
    }
    Ok(())
}

impl Manifest {
    /// A minimal manifest: id and name, everything else default.
    pub fn new(id: AgentId, name: impl Into<String>) -> Self {
        Manifest {
            id,
            name: name.into(),
            description: String::new(),
            version: default_version(),
            protocol_version: default_protocol(),
            provider: None,
            endpoint: format!("mesh.agent.{id}.inbox"),
            availability: Availability::Online,
            last_heartbeat: None,
            capabilities: Vec::new(),
            skills: Vec::new(),
            accepts: Vec::new(),
            emits: Vec::new(),
            cost: None,
            rate_limits: None,
            network: None,
            trust: None,
            extensions: Vec::new(),
            meta: None,
        }
    }

    /// Checks required fields and size limits.
    pub fn validate(&self) -> Result<(), ManifestError> {
        if self.name.trim().is_empty() {
            return Err(ManifestError::Empty { field: "name" });
        }
        check_text("name", &self.name)?;
        check_text("description", &self.description)?;
        check_text("version", &self.version)?;
        check_count(
            "capabilities",
            self.capabilities.len(),
            limits::MAX_CAPABILITIES,
        )?;
        check_count("skills", self.skills.len(), limits::MAX_SKILLS)?;
        let mut seen = std::collections::HashSet::new();
        for (index, skill) in self.skills.iter().enumerate() {
            if skill.id.is_empty() {
                return Err(ManifestError::EmptySkillId { index });
            }
            check_text("skills.id", &skill.id)?;
            check_count("skills.tags", skill.tags.len(), limits::MAX_TAGS)?;
            if !seen.insert(skill.id.as_str()) {
                return Err(ManifestError::DuplicateSkill(skill.id.clone()));
            }
        }
        let bytes = serde_json::to_vec(self).map_or(usize::MAX, |v| v.len());
        check_count("manifest", bytes, limits::MAX_JSON_BYTES)
    }

    /// Whether the agent offers the skill `id`.
    pub fn skill(&self, id: &str) -> Option<&Skill> {
        self.skills.iter().find(|s| s.id == id)
    }

    /// The bytes a signature covers: the manifest as JSON with sorted keys, without
    /// `trust.signature` and without the registry-owned `last_heartbeat` and
    /// `availability`.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut copy = self.clone();
        copy.last_heartbeat = None;
        copy.availability = Availability::Online;
        if let Some(t) = copy.trust.as_mut() {
            t.signature = None;
        }
        // serde_json::Value keeps object keys sorted (no preserve_order feature).
        let value = serde_json::to_value(&copy).unwrap_or(serde_json::Value::Null);
        serde_json::to_vec(&value).unwrap_or_default()
    }

    /// Signs the manifest with the agent key (which must be the key of `id`).
    pub fn sign(&mut self, key: &SecretKey, signed_at: impl Into<String>) {
        let trust = self.trust.get_or_insert_with(Trust::default);
        trust.signed_at = Some(signed_at.into());
        trust.signature = None;
        let sig = key.sign(&self.canonical_bytes());
        if let Some(t) = self.trust.as_mut() {
            t.signature = Some(sig);
        }
    }

    /// Checks the signature against the manifest's own id.
    pub fn verify(&self) -> Result<(), ManifestError> {
        let sig = self
            .trust
            .as_ref()
            .and_then(|t| t.signature)
            .ok_or(ManifestError::Unsigned)?;
        self.id
            .verify(&self.canonical_bytes(), &sig)
            .map_err(|_| ManifestError::BadSignature(self.id.short()))
    }
}

impl fmt::Display for Availability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Availability::Online => "online",
            Availability::Busy => "busy",
            Availability::Degraded => "degraded",
            Availability::Offline => "offline",
        };
        f.write_str(s)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn sample(seed: u8) -> (SecretKey, Manifest) {
        let key = SecretKey::from_bytes(&[seed; 32]);
        let mut m = Manifest::new(key.agent_id(), "Translator");
        m.capabilities = vec!["translation".into(), "text".into()];
        m.skills = vec![Skill {
            id: "translate".into(),
            name: "Translate".into(),
            tags: vec!["nlp".into()],
            input_schema: Some(Json(serde_json::json!({"type": "object"}))),
            ..Skill::default()
        }];
        m.network = Some(Network {
            ip_type: Some("residential".into()),
            geo: Some("US-CA".into()),
        });
        (key, m)
    }

    #[test]
    fn parses_the_reference_example() {
        let key = SecretKey::from_bytes(&[1; 32]);
        let text = serde_json::json!({
            "id": key.agent_id().to_string(),
            "name": "Translator",
            "description": "Translates text between languages",
            "version": "1.0.0",
            "protocol_version": "0.1.0",
            "endpoint": "mesh.agent.X.inbox",
            "availability": "online",
            "capabilities": ["translation"],
            "skills": [{"id": "translate", "name": "Translate Text",
                        "description": "Translates", "input_modes": ["text/plain"],
                        "output_modes": ["text/plain"]}],
            "network": {"ip_type": "residential", "geo": "US-CA"}
        });
        let m: Manifest = serde_json::from_value(text).unwrap();
        assert_eq!(m.skills[0].input_modes, vec!["text/plain"]);
        assert!(m.validate().is_ok());
        let out = serde_json::to_value(&m).unwrap();
        assert!(out.get("cost").is_none(), "absent options stay absent");
    }

    #[test]
    fn signature_verifies_and_detects_tampering() {
        let (key, mut m) = sample(5);
        assert_eq!(m.verify(), Err(ManifestError::Unsigned));
        m.sign(&key, "2026-11-21T00:00:00Z");
        assert!(m.verify().is_ok());
        m.availability = Availability::Busy;
        m.last_heartbeat = Some("2026-11-21T00:00:30Z".into());
        assert!(
            m.verify().is_ok(),
            "registry-owned fields are outside the signature"
        );
        m.capabilities.push("admin".into());
        assert!(matches!(m.verify(), Err(ManifestError::BadSignature(_))));
    }

    #[test]
    fn validation_catches_bad_manifests() {
        let (_, mut m) = sample(2);
        m.name = " ".into();
        assert_eq!(m.validate(), Err(ManifestError::Empty { field: "name" }));
        let (_, mut m) = sample(2);
        m.skills.push(m.skills[0].clone());
        assert!(matches!(
            m.validate(),
            Err(ManifestError::DuplicateSkill(_))
        ));
        let (_, mut m) = sample(2);
        m.capabilities = vec!["c".into(); 65];
        assert!(matches!(m.validate(), Err(ManifestError::TooLarge { .. })));
    }

    proptest! {
        #[test]
        fn round_trips_json_and_bincode(seed in any::<u8>(), caps in prop::collection::vec("[a-z]{1,8}", 0..5), desc in ".{0,40}") {
            let (key, mut m) = sample(seed);
            m.capabilities = caps;
            m.description = desc;
            m.sign(&key, "2026-11-21T00:00:00Z");
            let json = serde_json::to_string(&m).unwrap();
            prop_assert_eq!(&serde_json::from_str::<Manifest>(&json).unwrap(), &m);
            let bin = crate::frame::to_bytes(&m).unwrap();
            let back = crate::frame::from_bytes::<Manifest>(&bin).unwrap();
            prop_assert!(back.verify().is_ok());
            prop_assert_eq!(back, m);
        }
    }
}
