//! Store-and-forward storage: sealed mails per recipient with TTL, in embedded SQLite
//! ([`SqliteStore`]) or in memory ([`MemStore`], for tests and a relay without a disk).
//!
//! The relay core calls a [`MailStore`] synchronously; every call is one short SQLite
//! statement. Ids grow monotonically, so "in order" is "by id".

use std::collections::BTreeMap;
use std::path::Path;

use agentmesh_proto::NodeId;
use rusqlite::{params, Connection, OptionalExtension};

/// A mail waiting for its recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMail {
    /// Store-assigned id, increasing.
    pub id: u64,
    /// The authenticated sender.
    pub from: NodeId,
    /// The sealed bytes (opaque to the relay).
    pub sealed: Vec<u8>,
}

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// SQLite failed.
    #[error("mail store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored node id is not a valid key (database corrupted or edited).
    #[error("mail store holds an invalid node id in row {id}")]
    BadNodeId {
        /// The row.
        id: u64,
    },
}

/// Storage of sealed mails. Times are Unix milliseconds given by the caller.
pub trait MailStore {
    /// Stores a mail for `to`, expiring at `expires_ms`; returns its id.
    fn insert(
        &mut self,
        to: &NodeId,
        from: &NodeId,
        sealed: &[u8],
        expires_ms: u64,
    ) -> Result<u64, StoreError>;
    /// Unexpired mails held for `to`: (count, total bytes).
    fn usage(&self, to: &NodeId, now_ms: u64) -> Result<(u64, u64), StoreError>;
    /// Up to `limit` unexpired mails for `to` with id greater than `after`, oldest first.
    fn pending(
        &self,
        to: &NodeId,
        after: u64,
        limit: usize,
        now_ms: u64,
    ) -> Result<Vec<StoredMail>, StoreError>;
    /// Deletes `to`'s mails with id up to and including `id`; returns how many.
    fn delete_through(&mut self, to: &NodeId, id: u64) -> Result<u64, StoreError>;
    /// Deletes expired mails; returns how many.
    fn purge_expired(&mut self, now_ms: u64) -> Result<u64, StoreError>;
    /// Mails held in total.
    fn total(&self) -> Result<u64, StoreError>;
}

/// A boxed store is a store (the server picks SQLite or memory at run time).
impl MailStore for Box<dyn MailStore + Send> {
    fn insert(
        &mut self,
        to: &NodeId,
        from: &NodeId,
        sealed: &[u8],
        expires_ms: u64,
    ) -> Result<u64, StoreError> {
        (**self).insert(to, from, sealed, expires_ms)
    }
    fn usage(&self, to: &NodeId, now_ms: u64) -> Result<(u64, u64), StoreError> {
        (**self).usage(to, now_ms)
    }
    fn pending(
        &self,
        to: &NodeId,
        after: u64,
        limit: usize,
        now_ms: u64,
    ) -> Result<Vec<StoredMail>, StoreError> {
        (**self).pending(to, after, limit, now_ms)
    }
    fn delete_through(&mut self, to: &NodeId, id: u64) -> Result<u64, StoreError> {
        (**self).delete_through(to, id)
    }
    fn purge_expired(&mut self, now_ms: u64) -> Result<u64, StoreError> {
        (**self).purge_expired(now_ms)
    }
    fn total(&self) -> Result<u64, StoreError> {
        (**self).total()
    }
}

/// Mails in an SQLite file; survives restarts.
#[derive(Debug)]
pub struct SqliteStore {
    /// The open database.
    db: Connection,
}

const SCHEMA: &str = "
PRAGMA journal_mode = WAL;
PRAGMA synchronous = NORMAL;
CREATE TABLE IF NOT EXISTS mail (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    recipient BLOB NOT NULL,
    sender BLOB NOT NULL,
    sealed BLOB NOT NULL,
    expires_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS mail_by_recipient ON mail (recipient, id);
CREATE INDEX IF NOT EXISTS mail_by_expiry ON mail (expires_ms);
";

fn ms(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl SqliteStore {
    /// Opens (creating if needed) the store at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Connection::open(path)?;
        db.execute_batch(SCHEMA)?;
        Ok(Self { db })
    }

    /// An in-memory SQLite store (lost on drop).
    pub fn in_memory() -> Result<Self, StoreError> {
        let db = Connection::open_in_memory()?;
        db.execute_batch(SCHEMA)?;
        Ok(Self { db })
    }
}

impl MailStore for SqliteStore {
    fn insert(
        &mut self,
        to: &NodeId,
        from: &NodeId,
        sealed: &[u8],
        expires_ms: u64,
    ) -> Result<u64, StoreError> {
        self.db.execute(
            "INSERT INTO mail (recipient, sender, sealed, expires_ms) VALUES (?1, ?2, ?3, ?4)",
            params![
                &to.as_bytes()[..],
                &from.as_bytes()[..],
                sealed,
                ms(expires_ms)
            ],
        )?;
        Ok(self.db.last_insert_rowid().max(0) as u64)
    }

    fn usage(&self, to: &NodeId, now_ms: u64) -> Result<(u64, u64), StoreError> {
        let row: Option<(i64, i64)> = self
            .db
            .query_row(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(sealed)), 0) FROM mail
                 WHERE recipient = ?1 AND expires_ms > ?2",
                params![&to.as_bytes()[..], ms(now_ms)],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let (n, b) = row.unwrap_or((0, 0));
        Ok((n.max(0) as u64, b.max(0) as u64))
    }

    fn pending(
        &self,
        to: &NodeId,
        after: u64,
        limit: usize,
        now_ms: u64,
    ) -> Result<Vec<StoredMail>, StoreError> {
        let mut stmt = self.db.prepare_cached(
            "SELECT id, sender, sealed FROM mail
             WHERE recipient = ?1 AND id > ?2 AND expires_ms > ?3 ORDER BY id LIMIT ?4",
        )?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = stmt.query_map(
            params![&to.as_bytes()[..], ms(after), ms(now_ms), limit],
            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?, r.get(2)?)),
        )?;
        let mut out = Vec::new();
        for row in rows {
            let (id, sender, sealed) = row?;
            let id = id.max(0) as u64;
            let from = <[u8; 32]>::try_from(sender.as_slice())
                .ok()
                .and_then(|b| NodeId::from_bytes(b).ok())
                .ok_or(StoreError::BadNodeId { id })?;
            out.push(StoredMail { id, from, sealed });
        }
        Ok(out)
    }

    fn delete_through(&mut self, to: &NodeId, id: u64) -> Result<u64, StoreError> {
        let n = self.db.execute(
            "DELETE FROM mail WHERE recipient = ?1 AND id <= ?2",
            params![&to.as_bytes()[..], ms(id)],
        )?;
        Ok(n as u64)
    }

    fn purge_expired(&mut self, now_ms: u64) -> Result<u64, StoreError> {
        let n = self.db.execute(
            "DELETE FROM mail WHERE expires_ms <= ?1",
            params![ms(now_ms)],
        )?;
        Ok(n as u64)
    }

    fn total(&self) -> Result<u64, StoreError> {
        let n: i64 = self
            .db
            .query_row("SELECT COUNT(*) FROM mail", [], |r| r.get(0))?;
        Ok(n.max(0) as u64)
    }
}

/// Mails in memory (lost on restart).
#[derive(Debug, Default)]
pub struct MemStore {
    /// id → (recipient, mail, expiry).
    mails: BTreeMap<u64, (NodeId, StoredMail, u64)>,
    /// Last id given.
    next: u64,
}

impl MailStore for MemStore {
    fn insert(
        &mut self,
        to: &NodeId,
        from: &NodeId,
        sealed: &[u8],
        expires_ms: u64,
    ) -> Result<u64, StoreError> {
        self.next += 1;
        let mail = StoredMail {
            id: self.next,
            from: *from,
            sealed: sealed.to_vec(),
        };
        self.mails.insert(self.next, (*to, mail, expires_ms));
        Ok(self.next)
    }

    fn usage(&self, to: &NodeId, now_ms: u64) -> Result<(u64, u64), StoreError> {
        let it = self
            .mails
            .values()
            .filter(|(r, _, e)| r == to && *e > now_ms);
        Ok(it.fold((0, 0), |(n, b), (_, m, _)| {
            (n + 1, b + m.sealed.len() as u64)
        }))
    }

    fn pending(
        &self,
        to: &NodeId,
        after: u64,
        limit: usize,
        now_ms: u64,
    ) -> Result<Vec<StoredMail>, StoreError> {
        let it = self.mails.range(after + 1..).map(|(_, v)| v);
        let it = it.filter(|(r, _, e)| r == to && *e > now_ms);
        Ok(it.take(limit).map(|(_, m, _)| m.clone()).collect())
    }

    fn delete_through(&mut self, to: &NodeId, id: u64) -> Result<u64, StoreError> {
        let before = self.mails.len();
        self.mails.retain(|k, (r, _, _)| !(r == to && *k <= id));
        Ok((before - self.mails.len()) as u64)
    }

    fn purge_expired(&mut self, now_ms: u64) -> Result<u64, StoreError> {
        let before = self.mails.len();
        self.mails.retain(|_, (_, _, e)| *e > now_ms);
        Ok((before - self.mails.len()) as u64)
    }

    fn total(&self) -> Result<u64, StoreError> {
        Ok(self.mails.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentmesh_proto::SecretKey;

    fn node(seed: u8) -> NodeId {
        SecretKey::from_bytes(&[seed; 32]).node_id()
    }

    fn exercise(s: &mut dyn MailStore) {
        let (a, b, c) = (node(1), node(2), node(3));
        let i1 = s.insert(&b, &a, b"one", 1000).unwrap();
        let i2 = s.insert(&c, &a, b"other", 1000).unwrap();
        let i3 = s.insert(&b, &a, b"three", 2000).unwrap();
        assert!(i1 < i2 && i2 < i3);
        assert_eq!(s.usage(&b, 0).unwrap(), (2, 8));
        let p = s.pending(&b, 0, 10, 0).unwrap();
        assert_eq!(p.iter().map(|m| m.id).collect::<Vec<_>>(), vec![i1, i3]);
        assert_eq!(p[0].from, a);
        assert_eq!(s.pending(&b, i1, 10, 0).unwrap().len(), 1);
        assert_eq!(
            s.pending(&b, 0, 10, 1500).unwrap().len(),
            1,
            "expired hidden"
        );
        assert_eq!(s.delete_through(&b, i1).unwrap(), 1);
        assert_eq!(s.purge_expired(1500).unwrap(), 1, "c's mail expired");
        assert_eq!(s.total().unwrap(), 1);
    }

    #[test]
    fn mem_store_behaves() {
        exercise(&mut MemStore::default());
    }

    #[test]
    fn sqlite_store_behaves_and_persists() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mail.db");
        exercise(&mut SqliteStore::open(&path).unwrap());
        let s = SqliteStore::open(&path).unwrap();
        assert_eq!(s.total().unwrap(), 1);
        assert_eq!(s.pending(&node(2), 0, 10, 0).unwrap()[0].sealed, b"three");
    }
}
