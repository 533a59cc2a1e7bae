//! API keys: a public access key and a random secret, stored as a digest.
//!
//! - The secret is 32 random bytes (64 hex digits). Only its SHA-256
//!   digest is stored: a slow password hash buys nothing for a random
//!   secret of 256 bits and would cost every call tens of milliseconds.
//! - A call is verified by hashing the secret it carries and comparing the
//!   32-byte digests in constant time. An unknown or revoked access key is
//!   compared against a dummy digest, so every refusal costs the same work
//!   and gets the same answer.
//! - Keys live in the table `server_keys` of the service's database file,
//!   beside the engine's tables, so `keys add|list|revoke` work while the
//!   service runs: the service reloads the table every second
//!   ([`KEY_RELOAD`]).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use hashbrown::HashMap;
use parking_lot::RwLock;
use rusqlite::{params, Connection, OptionalExtension};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::db::{self, DbError};

/// How often a running service reloads its keys from the database: a key
/// added or revoked from the command line takes effect within this time.
pub const KEY_RELOAD: Duration = Duration::from_secs(1);

/// A key as listed (never its secret).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct KeyInfo {
    /// The public access key (`accessKey`).
    pub access_key: String,
    /// A name for people (which CRM, which team).
    pub name: String,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A new key: the only time its secret is seen.
#[derive(Clone, PartialEq, Eq)]
pub struct NewKey {
    /// The public access key (`accessKey`).
    pub access_key: String,
    /// The secret (`secretKey`): 64 hex digits, shown once.
    pub secret: String,
}

impl std::fmt::Debug for NewKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewKey")
            .field("access_key", &self.access_key)
            .field("secret", &"<hidden>")
            .finish()
    }
}

fn random_hex<const N: usize>() -> Result<String, DbError> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|e| DbError::Random(e.to_string()))?;
    Ok(hex::encode(bytes))
}

fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// The keys table of a database file, for the `keys` commands and the
/// service's reloads.
#[derive(Debug)]
pub struct KeyStore {
    conn: Connection,
}

impl KeyStore {
    /// Open the keys table of the database at `path` (created if missing).
    ///
    /// # Errors
    ///
    /// [`DbError`] when the file cannot be opened or its server tables are
    /// from a newer version.
    pub fn open(path: &Path) -> Result<Self, DbError> {
        Ok(KeyStore {
            conn: db::open(path)?,
        })
    }

    /// Make a new key named `name`.
    ///
    /// # Errors
    ///
    /// [`DbError::Invalid`] for an empty name or one over 200 characters;
    /// [`DbError`] when it cannot be written.
    pub fn add(&self, name: &str) -> Result<NewKey, DbError> {
        let name = name.trim();
        if name.is_empty() || name.chars().count() > 200 {
            return Err(DbError::Invalid {
                field: "name",
                reason: "must be 1 to 200 characters".into(),
            });
        }
        // 96 bits of access key (public, only unique) and 256 of secret.
        let key = NewKey {
            access_key: format!("gw{}", random_hex::<12>()?),
            secret: random_hex::<32>()?,
        };
        self.conn.execute(
            "INSERT INTO server_keys (access_key, name, digest, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![
                key.access_key,
                name,
                digest(&key.secret).as_slice(),
                Utc::now().to_rfc3339()
            ],
        )?;
        Ok(key)
    }

    /// Every key, oldest first.
    ///
    /// # Errors
    ///
    /// [`DbError`] when the table cannot be read.
    pub fn list(&self) -> Result<Vec<KeyInfo>, DbError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT access_key, name, created_at, revoked_at FROM server_keys ORDER BY created_at, access_key",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<String>>(3)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (access_key, name, created, revoked) = row?;
            out.push(KeyInfo {
                access_key,
                name,
                created_at: db::parse_time(&created)?,
                revoked_at: revoked.as_deref().map(db::parse_time).transpose()?,
            });
        }
        Ok(out)
    }

    /// Revoke `access_key`: calls with it are refused from the next reload
    /// on. Returns whether such a key was live.
    ///
    /// # Errors
    ///
    /// [`DbError`] when it cannot be written.
    pub fn revoke(&self, access_key: &str) -> Result<bool, DbError> {
        let n = self.conn.execute(
            "UPDATE server_keys SET revoked_at = ?2 WHERE access_key = ?1 AND revoked_at IS NULL",
            params![access_key, Utc::now().to_rfc3339()],
        )?;
        Ok(n > 0)
    }

    /// Whether any key is live.
    ///
    /// # Errors
    ///
    /// [`DbError`] when the table cannot be read.
    pub fn any_live(&self) -> Result<bool, DbError> {
        Ok(self
            .conn
            .query_row(
                "SELECT 1 FROM server_keys WHERE revoked_at IS NULL LIMIT 1",
                [],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    /// The digests of the live keys.
    fn live_digests(&self) -> Result<HashMap<String, [u8; 32]>, DbError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT access_key, digest FROM server_keys WHERE revoked_at IS NULL",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))
        })?;
        let mut out = HashMap::new();
        for row in rows {
            let (key, d) = row?;
            // A digest of another length is damage: that key verifies nothing.
            if let Ok(d) = <[u8; 32]>::try_from(d.as_slice()) {
                out.insert(key, d);
            }
        }
        Ok(out)
    }
}

/// The live keys as the service verifies them: a map in memory, swapped
/// whole at each reload.
#[derive(Clone, Debug, Default)]
pub struct Keys {
    live: Arc<RwLock<HashMap<String, [u8; 32]>>>,
}

/// The digest compared when the access key is unknown, so that the work
/// done does not depend on whether it exists.
const DUMMY: [u8; 32] = [0x5a; 32];

impl Keys {
    /// The keys of `store`, loaded now.
    ///
    /// # Errors
    ///
    /// [`DbError`] when the table cannot be read.
    pub fn load(store: &KeyStore) -> Result<Self, DbError> {
        let keys = Keys::default();
        keys.reload(store)?;
        Ok(keys)
    }

    /// Read the live keys again.
    ///
    /// # Errors
    ///
    /// [`DbError`] when the table cannot be read; the keys held stay.
    pub fn reload(&self, store: &KeyStore) -> Result<(), DbError> {
        let fresh = store.live_digests()?;
        *self.live.write() = fresh;
        Ok(())
    }

    /// Whether `secret` is the secret of the live key `access_key`. The
    /// same work is done for an unknown key, a revoked one and a wrong
    /// secret.
    pub fn verify(&self, access_key: &str, secret: &str) -> bool {
        let given = digest(secret);
        let (stored, known) = match self.live.read().get(access_key) {
            Some(d) => (*d, true),
            None => (DUMMY, false),
        };
        let same: bool = stored.ct_eq(&given).into();
        same & known
    }

    /// Whether `access_key` names a live key (for sessions opened with it).
    pub fn is_live(&self, access_key: &str) -> bool {
        self.live.read().contains_key(access_key)
    }

    /// How many keys are live.
    pub fn len(&self) -> usize {
        self.live.read().len()
    }

    /// Whether no key is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_verify_by_digest_and_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::open(&dir.path().join("g.db")).unwrap();
        assert!(!store.any_live().unwrap());
        let a = store.add("crm").unwrap();
        let b = store.add("other").unwrap();
        assert_eq!(a.secret.len(), 64);
        assert_ne!(a.access_key, b.access_key);
        let keys = Keys::load(&store).unwrap();
        assert!(keys.verify(&a.access_key, &a.secret));
        assert!(
            !keys.verify(&a.access_key, &b.secret),
            "another key's secret"
        );
        assert!(!keys.verify("gwunknown", &a.secret));
        assert!(!keys.verify(&a.access_key, ""));
        assert!(store.revoke(&a.access_key).unwrap());
        assert!(!store.revoke(&a.access_key).unwrap(), "already revoked");
        keys.reload(&store).unwrap();
        assert!(!keys.verify(&a.access_key, &a.secret));
        assert!(keys.verify(&b.access_key, &b.secret));
        let listed = store.list().unwrap();
        assert_eq!(listed.len(), 2);
        assert!(listed
            .iter()
            .any(|k| k.name == "crm" && k.revoked_at.is_some()));
        // The secret is nowhere in the file.
        drop(store);
        let bytes = std::fs::read(dir.path().join("g.db")).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains(&b.secret));
        assert!(!format!("{b:?}").contains(&b.secret));
    }

    #[test]
    fn names_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::open(&dir.path().join("g.db")).unwrap();
        assert!(matches!(
            store.add("  "),
            Err(DbError::Invalid { field: "name", .. })
        ));
        assert!(store.add(&"x".repeat(201)).is_err());
    }
}
