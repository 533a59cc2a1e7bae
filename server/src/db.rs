//! The service's own tables in the database file, beside the engine's:
//! keys, and what the events endpoint learnt of activities and owners.
//!
//! They are versioned apart from the engine's schema (row `schema` of
//! `server_meta`), created on first open and migrated forward; a file
//! whose server tables are newer than this build is refused.

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension};

/// The version of the server tables this build writes.
pub const SERVER_SCHEMA: i64 = 1;

const V1: &str = "
CREATE TABLE IF NOT EXISTS server_meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
-- API keys: the SHA-256 digest of the secret, never the secret.
CREATE TABLE IF NOT EXISTS server_keys (
    access_key TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    digest     BLOB NOT NULL,
    created_at TEXT NOT NULL,
    revoked_at TEXT
) WITHOUT ROWID;
-- Activities and tasks posted on records (learnt from the events
-- endpoint): a lead is shared through an activity only with its owner.
CREATE TABLE IF NOT EXISTS server_contexts (
    context TEXT PRIMARY KEY,    -- `activity:<UUID>` or `task:<UUID>`
    entity  TEXT NOT NULL,       -- `lead:869196`
    owner   TEXT NOT NULL        -- UUID
) WITHOUT ROWID;
-- Owners of records (learnt from the events endpoint): an opportunity is
-- never shared with its owner.
CREATE TABLE IF NOT EXISTS server_owners (
    entity TEXT PRIMARY KEY,     -- `opportunity:42`
    owner  TEXT NOT NULL         -- UUID
) WITHOUT ROWID;
";

/// Why the service's tables could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DbError {
    /// SQLite failed.
    #[error("the database failed: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The file's server tables come from a newer version.
    #[error("the database's server tables are version {found}; this build reads up to {SERVER_SCHEMA}: upgrade grantwheel-server")]
    Newer {
        /// The version found.
        found: i64,
    },
    /// A stored value does not read back.
    #[error("the database holds `{0}` where a time was expected")]
    BadTime(String),
    /// The system's random source failed.
    #[error("no random bytes could be had: {0}")]
    Random(String),
    /// An argument was refused.
    #[error("`{field}`: {reason}")]
    Invalid {
        /// The argument.
        field: &'static str,
        /// Why.
        reason: String,
    },
}

/// Open `path` for the server tables: WAL (the engine's readers and
/// writer share the file), full sync, a busy wait for the engine's
/// writer, the tables made or migrated.
pub fn open(path: &Path) -> Result<Connection, DbError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))?;
    conn.execute_batch("PRAGMA synchronous=FULL")?;
    let found: Option<i64> = conn
        .query_row(
            "SELECT value FROM server_meta WHERE key = 'schema'",
            [],
            |r| r.get(0),
        )
        .optional()
        .or_else(|e| match e {
            // No table yet: a new file, or one made by the engine alone.
            rusqlite::Error::SqliteFailure(_, Some(ref m)) if m.contains("no such table") => {
                Ok(None)
            }
            e => Err(e),
        })?;
    match found {
        Some(v) if v > SERVER_SCHEMA => Err(DbError::Newer { found: v }),
        Some(v) if v == SERVER_SCHEMA => Ok(conn),
        _ => {
            let tx = conn.unchecked_transaction()?;
            tx.execute_batch(V1)?;
            tx.execute(
                "INSERT OR REPLACE INTO server_meta (key, value) VALUES ('schema', ?1)",
                [SERVER_SCHEMA],
            )?;
            tx.commit()?;
            Ok(conn)
        }
    }
}

/// A time as the server tables store it (RFC 3339).
pub fn parse_time(s: &str) -> Result<DateTime<Utc>, DbError> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| DbError::BadTime(s.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newer_file_is_refused_and_the_engine_store_opens_beside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.db");
        drop(open(&path).unwrap());
        // The engine's store migrates the same file around the server tables.
        let store = grantwheel::store::SqliteStore::open(&path).unwrap();
        drop(store);
        let conn = open(&path).unwrap();
        conn.execute("UPDATE server_meta SET value = 99 WHERE key = 'schema'", [])
            .unwrap();
        drop(conn);
        assert!(matches!(open(&path), Err(DbError::Newer { found: 99 })));
    }
}
