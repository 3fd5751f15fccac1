//! Key files: a node's or agent's Ed25519 secret key on disk, created with mode 0600.
//!
//! Format: one line, `agentmesh-ed25519:` followed by the 32 secret bytes in base32.
//! A key file readable by group or others is refused, as ssh does.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use data_encoding::BASE32_NOPAD;

use crate::id::SecretKey;

const TAG: &str = "agentmesh-ed25519:";

/// Why a key file could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileError {
    /// Filesystem error.
    #[error("key file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file does not hold a key in our format.
    #[error("key file {path} is not an agentmesh key (expected '{TAG}<base32>')")]
    Format {
        /// The file.
        path: PathBuf,
    },
    /// The file is readable by others.
    #[error(
        "key file {path} has mode {mode:o}; it must not be readable by group or others (chmod 600)"
    )]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its mode bits.
        mode: u32,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeyFileError + '_ {
    move |source| KeyFileError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads the key at `path`.
pub fn load(path: &Path) -> Result<SecretKey, KeyFileError> {
    let meta = fs::metadata(path).map_err(io(path))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::Permissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    let text = fs::read_to_string(path).map_err(io(path))?;
    let format = || KeyFileError::Format {
        path: path.to_path_buf(),
    };
    let body = text.trim().strip_prefix(TAG).ok_or_else(format)?;
    let raw = BASE32_NOPAD.decode(body.as_bytes()).map_err(|_| format())?;
    let bytes: [u8; 32] = raw.try_into().map_err(|_| format())?;
    Ok(SecretKey::from_bytes(&bytes))
}

/// Writes `key` to a new file at `path` (mode 0600, parent directories 0700 if made).
/// Fails if the file exists.
pub fn create(path: &Path, key: &SecretKey) -> Result<(), KeyFileError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io(dir))?;
        }
    }
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))?;
    let line = format!("{TAG}{}\n", BASE32_NOPAD.encode(&key.to_bytes()));
    f.write_all(line.as_bytes()).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

use std::os::unix::fs::DirBuilderExt;

/// Reads the key at `path`, creating a fresh one there first if none exists.
pub fn load_or_create(path: &Path) -> Result<SecretKey, KeyFileError> {
    if path.exists() {
        return load(path);
    }
    let key = SecretKey::generate_os();
    create(path, &key)?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_0600_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/node.key");
        let key = load_or_create(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(load_or_create(&path).unwrap().to_bytes(), key.to_bytes());
        assert!(create(&path, &key).is_err(), "never overwrites");
    }

    #[test]
    fn loose_permissions_and_garbage_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        create(&path, &SecretKey::from_bytes(&[1; 32])).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            load(&path),
            Err(KeyFileError::Permissions { mode: 0o644, .. })
        ));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(&path, "hello").unwrap();
        assert!(matches!(load(&path), Err(KeyFileError::Format { .. })));
    }
}
