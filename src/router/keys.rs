//! Where agent keys come from: ephemeral keys for agents that don't ask for a stable
//! identity, and named keys kept on disk (0600) so an agent id survives restarts.

use std::fmt::Debug;
use std::path::PathBuf;

use agentmesh_proto::keyfile::{self, KeyFileError};
use agentmesh_proto::SecretKey;

/// Why a key could not be provided.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyStoreError {
    /// The name has characters that are not allowed in a file name.
    #[error("key_name '{0}' must be 1-64 characters of A-Z a-z 0-9 _ - .")]
    BadName(String),
    /// The key file could not be read or written.
    #[error(transparent)]
    File(#[from] KeyFileError),
}

/// A source of agent keys.
pub trait KeyStore: Debug + Send {
    /// The key for `name` (the same key every time), or a fresh key when `None`.
    fn key(&mut self, name: Option<&str>) -> Result<SecretKey, KeyStoreError>;
}

fn check_name(name: &str) -> Result<(), KeyStoreError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(KeyStoreError::BadName(name.to_string()))
    }
}

/// Keys in `<dir>/<name>.key`, created on first use.
#[derive(Debug)]
pub struct FileKeyStore {
    dir: PathBuf,
}

impl FileKeyStore {
    /// Keeps keys under `dir`.
    pub fn new(dir: PathBuf) -> Self {
        FileKeyStore { dir }
    }
}

impl KeyStore for FileKeyStore {
    fn key(&mut self, name: Option<&str>) -> Result<SecretKey, KeyStoreError> {
        match name {
            None => Ok(SecretKey::generate_os()),
            Some(n) => {
                check_name(n)?;
                Ok(keyfile::load_or_create(&self.dir.join(format!("{n}.key")))?)
            }
        }
    }
}

/// Deterministic keys for tests: named keys derive from the name, fresh keys from a
/// counter.
#[derive(Debug, Default)]
pub struct MemoryKeyStore {
    counter: u64,
}

impl KeyStore for MemoryKeyStore {
    fn key(&mut self, name: Option<&str>) -> Result<SecretKey, KeyStoreError> {
        let mut seed = [0u8; 32];
        match name {
            Some(n) => {
                check_name(n)?;
                for (i, b) in n.bytes().enumerate() {
                    seed[i % 32] ^= b;
                }
                seed[31] = 0xAA;
            }
            None => {
                self.counter += 1;
                seed[..8].copy_from_slice(&self.counter.to_le_bytes());
            }
        }
        Ok(SecretKey::from_bytes(&seed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_keys_are_stable_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = FileKeyStore::new(dir.path().to_path_buf());
        let a = store.key(Some("echo")).unwrap();
        let b = FileKeyStore::new(dir.path().to_path_buf())
            .key(Some("echo"))
            .unwrap();
        assert_eq!(a.agent_id(), b.agent_id());
        assert_ne!(store.key(None).unwrap().agent_id(), a.agent_id());
        assert!(matches!(
            store.key(Some("../x")),
            Err(KeyStoreError::BadName(_))
        ));
        assert!(matches!(
            store.key(Some("")),
            Err(KeyStoreError::BadName(_))
        ));
    }
}
