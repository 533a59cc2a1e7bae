//! The durable default: one SQLite file.

mod codec;
mod history;
mod reader;
mod schema;
mod write;

use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior};

use self::codec::decode_grant;
use self::reader::SqliteReader;
use self::schema::{MIGRATIONS, SCHEMA_VERSION};
use self::write::{write_change, write_meta};
use super::{Batch, Meta, Store, StoreError, StoreReader, Unwritable};
use crate::clock::{from_millis, max_millis};
use crate::model::grant::Grant;
use crate::model::history::RuleId;
use crate::model::rule::Rule;

/// How hard SQLite works to make each commit durable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Synchronous {
    /// `synchronous=FULL`: every commit is synced to disk before it is
    /// acknowledged. A share acknowledged survives a power cut.
    #[default]
    Full,
    /// `synchronous=NORMAL`: in WAL mode commits are synced at checkpoints
    /// only. Still safe against a crash of the process (what is acknowledged
    /// is in the operating system's cache), but a power cut or kernel crash
    /// may lose the last commits, and with them acknowledged shares and
    /// revokes (a lost revoke brings the grant back after restart). Faster
    /// for single, unbatched requests.
    Normal,
}

/// The durable default store: one SQLite file in WAL mode.
///
/// - **Durability**: `synchronous=FULL` unless [`Synchronous::Normal`] is
///   chosen; each batch is one transaction.
/// - **One writer, many readers**: the store takes an exclusive lock on
///   the file `<database>-lock` beside the database (released when the
///   store is dropped or the process dies), so a second engine (in this
///   process or another) opening the file gets [`StoreError::Locked`]
///   instead of writing beside the first. Queries ([`Store::reader`]) run
///   on connections of their own and never wait for a batch being written
///   (WAL): the `sqlite3` shell can read the file while the engine runs.
/// - **Schema**: readable with the `sqlite3` shell (tables `grants`,
///   `history`, `rules`, `meta`, and the views `grants_readable` and
///   `history_readable`), versioned in `PRAGMA user_version`, migrated
///   forward on open (keeping every record); a file from a newer version is
///   refused with [`StoreError::NewerSchema`]. Every query of the read side
///   is served by an index: `EXPLAIN QUERY PLAN` shows no table scan (the
///   crate's tests check it).
/// - **Compaction**: ended grants are deleted, not flagged, so the grant
///   table holds live grants only; history rows go when the request layer
///   prunes them (`Sharing::prune` in the request layer).
///
/// ```
/// use grantwheel::store::SqliteStore;
/// use grantwheel::{Context, Engine, EntityId, Expiry, Level, UserId};
///
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("grants.db");
/// let (u, e) = (UserId::from_u128(1), EntityId::lead(7));
/// {
///     let engine = Engine::builder().store(SqliteStore::open(&path).unwrap()).build().unwrap();
///     engine.share(u, e, Context::Direct, Level::Edit, Expiry::Default).unwrap();
/// } // dropped: the file is closed
/// let engine = Engine::builder().store(SqliteStore::open(&path).unwrap()).build().unwrap();
/// assert!(engine.can_edit(&u, &e));
/// ```
#[derive(Debug)]
pub struct SqliteStore {
    conn: Connection,
    path: PathBuf,
    /// Held for the store's life: the one-writer lock.
    _lock: File,
}

fn io(e: rusqlite::Error) -> StoreError {
    StoreError::Io(e.to_string())
}

/// The file whose lock makes the store the file's one writer: a file of
/// its own, never opened by SQLite (closing a descriptor of the database
/// itself would drop SQLite's own locks on it).
fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push("-lock");
    PathBuf::from(name)
}

impl SqliteStore {
    /// Open (or create) the database at `path` with full sync.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        SqliteStore::open_with(path, Synchronous::Full)
    }

    /// Open (or create) the database at `path`.
    ///
    /// # Errors
    ///
    /// [`StoreError::Locked`] when another engine holds the file,
    /// [`StoreError::Unwritable`] (naming the path and the cause) when the
    /// file or its directory cannot be written, [`StoreError::NewerSchema`]
    /// for a file from a newer version, [`StoreError::Io`] otherwise.
    pub fn open_with(path: impl AsRef<Path>, sync: Synchronous) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        Self::open_at(&path, sync).map_err(|e| match e {
            StoreError::Io(reason) => match unwritable(&path) {
                Some(cause) => StoreError::Unwritable {
                    path: path.display().to_string(),
                    cause,
                },
                None => StoreError::Io(format!("`{}`: {reason}", path.display())),
            },
            other => other,
        })
    }

    fn open_at(path: &Path, sync: Synchronous) -> Result<Self, StoreError> {
        let path = path.to_path_buf();
        let locked = || StoreError::Locked {
            path: path.display().to_string(),
        };
        // Asked before SQLite sees the file: SQLite opens a file it may not
        // write read-only, without a word, and then makes its journal files
        // read-only too, which would keep the file unwritable after its
        // permissions are fixed.
        if let Some(cause) = unwritable(&path) {
            return Err(StoreError::Unwritable {
                path: path.display().to_string(),
                cause,
            });
        }
        let lock = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(lock_path(&path))
            .map_err(|e| StoreError::Io(e.to_string()))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(locked()),
            Err(TryLockError::Error(e)) => return Err(StoreError::Io(e.to_string())),
        }
        let mut conn = Connection::open(&path).map_err(io)?;
        let setup = |conn: &Connection| -> rusqlite::Result<()> {
            // Readers in WAL mode never block the writer; only a checkpoint
            // or recovery may make it wait, briefly.
            conn.busy_timeout(std::time::Duration::from_secs(5))?;
            conn.pragma_update(None, "journal_mode", "WAL")?;
            // 64 MiB of page cache: batches of thousands of rows stay in
            // memory until they are written.
            conn.pragma_update(None, "cache_size", -65536)?;
            conn.pragma_update(
                None,
                "synchronous",
                match sync {
                    Synchronous::Full => "FULL",
                    Synchronous::Normal => "NORMAL",
                },
            )?;
            // Fails now, not at the first batch, if the file is read-only.
            conn.execute_batch("BEGIN IMMEDIATE; COMMIT;")
        };
        setup(&conn).map_err(io)?;
        // SQLite opens a file it may not write read-only, without a word.
        if conn.is_readonly(rusqlite::MAIN_DB).map_err(io)? {
            return Err(StoreError::Io(
                "attempt to write a readonly database".into(),
            ));
        }
        let found: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(io)?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::NewerSchema {
                found,
                supported: SCHEMA_VERSION,
            });
        }
        if found < 0 {
            return Err(StoreError::Corrupt {
                what: "schema version".into(),
                reason: format!("`{found}` is negative"),
            });
        }
        if found < SCHEMA_VERSION {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Exclusive)
                .map_err(io)?;
            for (v, migrate) in MIGRATIONS.iter().enumerate().skip(found as usize) {
                migrate(&tx)?;
                tx.pragma_update(None, "user_version", v as i64 + 1)
                    .map_err(io)?;
            }
            tx.commit().map_err(io)?;
        }
        Ok(SqliteStore {
            conn,
            path,
            _lock: lock,
        })
    }

    /// The database file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Run SQLite's `PRAGMA integrity_check`; `Ok` when it reports `ok`.
    pub fn integrity_check(&mut self) -> Result<(), StoreError> {
        let rows: Vec<String> = {
            let mut stmt = self.conn.prepare("PRAGMA integrity_check").map_err(io)?;
            let rows = stmt
                .query_map([], |r| r.get::<_, String>(0))
                .map_err(io)?
                .collect::<Result<_, _>>()
                .map_err(io)?;
            rows
        };
        if rows == ["ok"] {
            Ok(())
        } else {
            Err(StoreError::Corrupt {
                what: "database".into(),
                reason: rows.join("; "),
            })
        }
    }

    fn meta_value(&self, key: &str) -> Result<u64, StoreError> {
        let v: Option<i64> = self
            .conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(io)?;
        match v {
            Some(v) if v >= 0 => Ok(v as u64),
            Some(v) => Err(StoreError::Corrupt {
                what: format!("meta `{key}`"),
                reason: format!("`{v}` is negative"),
            }),
            None => Err(StoreError::Corrupt {
                what: format!("meta `{key}`"),
                reason: "missing".into(),
            }),
        }
    }
}

/// Why `path` cannot be written, if that is why opening it failed. Asked
/// only after a failure: SQLite reports all of these as a plain I/O or
/// "readonly" error.
fn unwritable(path: &Path) -> Option<Unwritable> {
    use std::fs::OpenOptions;
    use std::io::ErrorKind;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Some(Unwritable::DirectoryMissing);
    }
    let cause = |e: &std::io::Error, read_only_file: bool| match e.kind() {
        ErrorKind::ReadOnlyFilesystem => Some(Unwritable::ReadOnlyFileSystem),
        ErrorKind::PermissionDenied if read_only_file => Some(Unwritable::ReadOnlyFile),
        ErrorKind::PermissionDenied => Some(Unwritable::PermissionDenied),
        _ => None,
    };
    match OpenOptions::new().read(true).write(true).open(path) {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => {
            let read_only = std::fs::metadata(path).is_ok_and(|m| m.permissions().readonly());
            return cause(&e, read_only);
        }
    }
    // The file is writable or absent: SQLite also creates its journal
    // files in the directory.
    let name = path
        .file_name()
        .map_or_else(|| "grantwheel".into(), |n| n.to_string_lossy().into_owned());
    let probe = dir.join(format!(".{name}.probe-{}", std::process::id()));
    match OpenOptions::new().write(true).create_new(true).open(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            None
        }
        Err(e) => cause(&e, false),
    }
}

impl Store for SqliteStore {
    fn meta(&mut self) -> Result<Meta, StoreError> {
        let clock = self.meta_value("clock_ms")?;
        Ok(Meta {
            last_seq: self.meta_value("last_seq")?,
            next_serial: self.meta_value("next_serial")?,
            clock: (clock > 0).then(|| from_millis(clock.min(max_millis()))),
        })
    }

    fn grants(&mut self, each: &mut dyn FnMut(Grant)) -> Result<(), StoreError> {
        // A connection of its own with a small cache, closed after: a scan
        // of every grant would otherwise fill the writer's cache with pages
        // no batch needs, and keep that memory for the life of the process.
        let scan = Connection::open(&self.path).map_err(io)?;
        scan.pragma_update(None, "cache_size", -2048).map_err(io)?;
        let mut stmt = scan
            .prepare(
                "SELECT serial, user, entity_kind, entity_id, context_kind, context_id, level, expires_ms, crc, starts_ms FROM grants",
            )
            .map_err(io)?;
        let mut rows = stmt.query([]).map_err(io)?;
        while let Some(row) = rows.next().map_err(io)? {
            let grant = decode_grant(row).map_err(|(serial, reason)| StoreError::Corrupt {
                what: format!("grants row with serial {serial}"),
                reason,
            })?;
            each(grant);
        }
        Ok(())
    }

    fn rules(&mut self) -> Result<Vec<(RuleId, Rule)>, StoreError> {
        let mut rules = Vec::new();
        let mut stmt = self
            .conn
            .prepare("SELECT id, rule FROM rules ORDER BY id")
            .map_err(io)?;
        let mut rows = stmt.query([]).map_err(io)?;
        while let Some(row) = rows.next().map_err(io)? {
            let id: i64 = row.get(0).map_err(io)?;
            let corrupt = |reason: String| StoreError::Corrupt {
                what: format!("rules row {id}"),
                reason,
            };
            let id = u64::try_from(id).map_err(|_| corrupt("negative id".into()))?;
            let json: String = row.get(1).map_err(|e| corrupt(e.to_string()))?;
            let rule: Rule = serde_json::from_str(&json).map_err(|e| corrupt(e.to_string()))?;
            rules.push((RuleId(id), rule));
        }
        Ok(rules)
    }

    fn reader(&self) -> Result<Arc<dyn StoreReader>, StoreError> {
        Ok(Arc::new(SqliteReader::new(self.path.clone())))
    }

    fn apply(&mut self, batch: &Batch<'_>) -> Result<(), StoreError> {
        let last = self.meta_value("last_seq")?;
        if batch.seq <= last {
            return Ok(());
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(io)?;
        for change in batch.changes {
            write_change(&tx, change)?;
        }
        write_meta(&tx, batch)?;
        tx.commit().map_err(io)
    }
}

#[cfg(test)]
mod tests;
