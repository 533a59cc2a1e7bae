//! The durable default: one SQLite file.

use std::path::{Path, PathBuf};

use rusqlite::types::{Value, ValueRef};
use rusqlite::{params, Connection, ErrorCode, OptionalExtension, TransactionBehavior};
use uuid::Uuid;

use super::{Batch, Change, Meta, Records, Store, StoreError, Unwritable};
use crate::clock::{from_millis, max_millis, to_millis};
use crate::ids::{Context, EntityId, EntityKind, EntityRef, GrantId, Level, UserId};
use crate::model::grant::Grant;
use crate::model::history::{HistoryRecord, RuleId};
use crate::model::rule::Rule;

/// The schema version this library writes. Older files are migrated
/// forward on open; newer ones are refused.
const SCHEMA_VERSION: i64 = 1;

/// Migrations: entry `i` takes a file from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &["
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO meta (key, value) VALUES ('last_seq', 0), ('next_serial', 0), ('clock_ms', 0);

-- The live grants. A row goes when its grant is revoked, replaced or
-- expires, so this table holds only what may still give access.
CREATE TABLE grants (
    serial       INTEGER PRIMARY KEY,   -- unique per grant, never reused
    user         TEXT NOT NULL,         -- UUID
    entity_kind  INTEGER NOT NULL,      -- 1 lead, 5 opportunity, host codes
    entity_id    NOT NULL,              -- a number, or a UUID as text (no type: kept as given)
    context_kind INTEGER NOT NULL,      -- 0 direct, 1 activity, 2 task, 3+ host kinds
    context_id   TEXT,                  -- UUID; NULL for a direct share
    level        TEXT NOT NULL CHECK (level IN ('read', 'edit')),
    expires_ms   INTEGER NOT NULL,      -- exclusive; milliseconds since 1970 UTC
    crc          INTEGER NOT NULL       -- CRC-32 of the row's fields: damage is refused, not loaded
);

-- Every share and revoke request; `record` is the whole record as JSON.
CREATE TABLE history (
    request    TEXT PRIMARY KEY,        -- 32 hex digits
    seq        INTEGER NOT NULL UNIQUE,
    kind       TEXT NOT NULL,
    entity     TEXT NOT NULL,
    user       TEXT NOT NULL,
    status     TEXT NOT NULL,
    created_at TEXT NOT NULL,
    record     TEXT NOT NULL
);
CREATE INDEX history_by_entity ON history (entity, seq);

CREATE TABLE rules (
    id   INTEGER PRIMARY KEY,
    rule TEXT NOT NULL                  -- the rule as JSON
);

-- The live grants with readable times.
CREATE VIEW grants_readable AS
SELECT serial, user, entity_kind, entity_id, context_kind, context_id, level,
       strftime('%Y-%m-%dT%H:%M:%fZ', expires_ms / 1000.0, 'unixepoch') AS expires_at
FROM grants;
"];

const _: () = assert!(MIGRATIONS.len() as i64 == SCHEMA_VERSION);

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
/// - **One writer**: the file is opened in exclusive locking mode and
///   locked at once, so a second engine (in this process or another)
///   opening it gets [`StoreError::Locked`] instead of writing beside the
///   first. The lock goes when the store is dropped or the process dies.
/// - **Schema**: readable with the `sqlite3` shell (tables `grants`,
///   `history`, `rules`, `meta`, and the view `grants_readable`), versioned
///   in `PRAGMA user_version`, migrated forward on open; a file from a
///   newer version is refused with [`StoreError::NewerSchema`].
/// - **Compaction**: ended grants are deleted, not flagged, so the grant
///   table holds live grants only; history rows go when the request layer
///   prunes them.
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
}

fn io(e: rusqlite::Error) -> StoreError {
    StoreError::Io(e.to_string())
}

fn busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
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
        let mut conn = Connection::open(&path).map_err(io)?;
        let locked = || StoreError::Locked {
            path: path.display().to_string(),
        };
        let setup = |conn: &Connection| -> rusqlite::Result<()> {
            conn.busy_timeout(std::time::Duration::ZERO)?;
            conn.pragma_update(None, "locking_mode", "EXCLUSIVE")?;
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
            // Take the write lock now and keep it (exclusive locking mode).
            conn.execute_batch("BEGIN EXCLUSIVE; COMMIT;")
        };
        if let Err(e) = setup(&conn) {
            return Err(if busy(&e) { locked() } else { io(e) });
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
            for (v, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
                tx.execute_batch(sql).map_err(io)?;
                tx.pragma_update(None, "user_version", v as i64 + 1)
                    .map_err(io)?;
            }
            tx.commit().map_err(io)?;
        }
        Ok(SqliteStore { conn, path })
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

fn entity_value(e: &EntityRef) -> Value {
    match e {
        EntityRef::Number(n) => match i64::try_from(*n) {
            Ok(n) => Value::Integer(n),
            Err(_) => Value::Text(n.to_string()),
        },
        EntityRef::Uuid(u) => Value::Text(u.hyphenated().to_string()),
    }
}

fn level_name(level: Level) -> &'static str {
    match level {
        Level::Read => "read",
        Level::Edit => "edit",
    }
}

fn i64_of(v: u64) -> i64 {
    // Serials stay below 2^47 and instants below the latest representable
    // one (both far below 2^63).
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The CRC-32 of a grant's fields in a fixed binary form: a row whose
/// bytes were damaged on disk is refused instead of giving access it never
/// had.
fn grant_crc(g: &Grant) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&g.id.serial.to_le_bytes());
    h.update(&g.id.user.as_u128().to_le_bytes());
    h.update(&g.id.entity.kind.code().to_le_bytes());
    match g.id.entity.id {
        EntityRef::Number(n) => {
            h.update(&[0]);
            h.update(&n.to_le_bytes());
        }
        EntityRef::Uuid(u) => {
            h.update(&[1]);
            h.update(&u.as_u128().to_le_bytes());
        }
    }
    let (kind, ctx) = g.id.context.pack();
    h.update(&kind.to_le_bytes());
    h.update(&ctx.to_le_bytes());
    h.update(&[u8::from(g.level == Level::Edit)]);
    h.update(&to_millis(g.expires_at).to_le_bytes());
    h.finalize()
}

/// Decode one grant row; the error names the column.
fn decode_grant(row: &rusqlite::Row<'_>) -> Result<Grant, (i64, String)> {
    let serial: i64 = row.get(0).map_err(|e| (-1, format!("serial: {e}")))?;
    let bad = |col: &str, why: String| (serial, format!("{col}: {why}"));
    // Borrowed, not copied: loading is bound by per-row work.
    let text = |i: usize, col: &str| -> Result<&str, (i64, String)> {
        match row.get_ref(i).map_err(|e| bad(col, e.to_string()))? {
            ValueRef::Text(t) => std::str::from_utf8(t).map_err(|e| bad(col, e.to_string())),
            other => Err(bad(
                col,
                format!("a {} where text belongs", other.data_type()),
            )),
        }
    };
    if serial < 0 {
        return Err(bad("serial", "negative".into()));
    }
    let user = text(1, "user")?;
    let user: UserId = user
        .parse()
        .map_err(|e| bad("user", format!("`{user}`: {e}")))?;
    let kind: i64 = row.get(2).map_err(|e| bad("entity_kind", e.to_string()))?;
    let kind =
        u16::try_from(kind).map_err(|_| bad("entity_kind", format!("`{kind}` out of range")))?;
    let entity_ref = match row
        .get_ref(3)
        .map_err(|e| bad("entity_id", e.to_string()))?
    {
        ValueRef::Integer(n) => EntityRef::Number(
            u64::try_from(n).map_err(|_| bad("entity_id", format!("`{n}` is negative")))?,
        ),
        ValueRef::Text(t) => {
            let t = std::str::from_utf8(t).map_err(|e| bad("entity_id", e.to_string()))?;
            t.parse::<EntityRef>()
                .map_err(|e| bad("entity_id", e.reason().to_string()))?
        }
        other => {
            return Err(bad(
                "entity_id",
                format!("a {} is neither a number nor a UUID", other.data_type()),
            ))
        }
    };
    let ctx_kind: i64 = row.get(4).map_err(|e| bad("context_kind", e.to_string()))?;
    let ctx_id = match row
        .get_ref(5)
        .map_err(|e| bad("context_id", e.to_string()))?
    {
        ValueRef::Null => None,
        _ => Some(text(5, "context_id")?),
    };
    let context = match (ctx_kind, ctx_id) {
        (0, None) => Context::Direct,
        (k, Some(id)) if (1..=i64::from(u16::MAX) + 3).contains(&k) => {
            let id: Uuid = id
                .parse()
                .map_err(|e| bad("context_id", format!("`{id}`: {e}")))?;
            Context::unpack(k as u32, id.as_u128())
        }
        (k, id) => {
            return Err(bad(
                "context_kind",
                format!("kind `{k}` with id {id:?} is not a context"),
            ))
        }
    };
    let level = match text(6, "level")? {
        "read" => Level::Read,
        "edit" => Level::Edit,
        other => return Err(bad("level", format!("`{other}` is neither read nor edit"))),
    };
    let expires: i64 = row.get(7).map_err(|e| bad("expires_ms", e.to_string()))?;
    let expires = u64::try_from(expires)
        .ok()
        .filter(|ms| *ms <= max_millis())
        .ok_or_else(|| bad("expires_ms", format!("`{expires}` out of range")))?;
    let grant = Grant {
        id: GrantId {
            user,
            entity: EntityId::new(EntityKind::custom(kind), entity_ref),
            context,
            serial: serial as u64,
        },
        level,
        expires_at: from_millis(expires),
    };
    let crc: i64 = row.get(8).map_err(|e| bad("crc", e.to_string()))?;
    if crc != i64::from(grant_crc(&grant)) {
        return Err(bad(
            "crc",
            "the row does not match its checksum (damaged)".into(),
        ));
    }
    Ok(grant)
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
        let mut stmt = self
            .conn
            .prepare(
                "SELECT serial, user, entity_kind, entity_id, context_kind, context_id, level, expires_ms, crc FROM grants",
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

    fn records(&mut self) -> Result<Records, StoreError> {
        let mut history = Vec::new();
        {
            let mut stmt = self
                .conn
                .prepare("SELECT seq, request, record FROM history ORDER BY seq")
                .map_err(io)?;
            let mut rows = stmt.query([]).map_err(io)?;
            while let Some(row) = rows.next().map_err(io)? {
                let request: String = row.get(1).map_err(io)?;
                let corrupt = |reason: String| StoreError::Corrupt {
                    what: format!("history row `{request}`"),
                    reason,
                };
                let seq: i64 = row.get(0).map_err(|e| corrupt(e.to_string()))?;
                let seq = u64::try_from(seq).map_err(|_| corrupt(format!("seq `{seq}`")))?;
                let json: String = row.get(2).map_err(|e| corrupt(e.to_string()))?;
                let record: HistoryRecord =
                    serde_json::from_str(&json).map_err(|e| corrupt(e.to_string()))?;
                history.push((seq, record));
            }
        }
        let mut rules = Vec::new();
        {
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
        }
        Ok(Records { history, rules })
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
            match change {
                Change::Put(g) => {
                    let (kind, ctx) = g.id.context.pack();
                    let mut user_buf = Uuid::encode_buffer();
                    let user = g.id.user.0.hyphenated().encode_lower(&mut user_buf);
                    let mut ctx_buf = Uuid::encode_buffer();
                    let ctx_id = (kind != 0)
                        .then(|| &*Uuid::from_u128(ctx).hyphenated().encode_lower(&mut ctx_buf));
                    tx.prepare_cached(
                        "INSERT OR REPLACE INTO grants (serial, user, entity_kind, entity_id, context_kind, context_id, level, expires_ms, crc) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                    )
                    .and_then(|mut s| {
                        s.execute(params![
                            i64_of(g.id.serial),
                            &*user,
                            g.id.entity.kind.code(),
                            entity_value(&g.id.entity.id),
                            kind,
                            ctx_id,
                            level_name(g.level),
                            i64_of(to_millis(g.expires_at)),
                            i64::from(grant_crc(g)),
                        ])
                    })
                    .map_err(io)?;
                }
                Change::End { serial, .. } => {
                    tx.prepare_cached("DELETE FROM grants WHERE serial = ?1")
                        .and_then(|mut s| s.execute([i64_of(*serial)]))
                        .map_err(io)?;
                }
                Change::Record { seq, record } => {
                    let json = serde_json::to_string(record)
                        .map_err(|e| StoreError::Io(format!("encoding a history record: {e}")))?;
                    tx.prepare_cached(
                        "INSERT OR REPLACE INTO history (request, seq, kind, entity, user, status, created_at, record) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    )
                    .and_then(|mut s| {
                        s.execute(params![
                            record.request.to_string(),
                            i64_of(*seq),
                            format!("{:?}", record.kind),
                            record.entity.to_string(),
                            record.user.to_string(),
                            record.status.name(),
                            record.created_at.to_rfc3339(),
                            json,
                        ])
                    })
                    .map_err(io)?;
                }
                Change::Forget(request) => {
                    tx.prepare_cached("DELETE FROM history WHERE request = ?1")
                        .and_then(|mut s| s.execute([request.to_string()]))
                        .map_err(io)?;
                }
                Change::Rule { id, rule } => {
                    let json = serde_json::to_string(rule)
                        .map_err(|e| StoreError::Io(format!("encoding a rule: {e}")))?;
                    tx.prepare_cached("INSERT OR REPLACE INTO rules (id, rule) VALUES (?1, ?2)")
                        .and_then(|mut s| s.execute(params![i64_of(id.0), json]))
                        .map_err(io)?;
                }
                Change::RemoveRule(id) => {
                    tx.prepare_cached("DELETE FROM rules WHERE id = ?1")
                        .and_then(|mut s| s.execute([i64_of(id.0)]))
                        .map_err(io)?;
                }
            }
        }
        tx.prepare_cached(
            "UPDATE meta SET value = CASE key WHEN 'last_seq' THEN ?1 WHEN 'next_serial' THEN max(value, ?2) ELSE max(value, ?3) END",
        )
        .and_then(|mut s| {
            s.execute(params![
                i64_of(batch.seq),
                i64_of(batch.next_serial),
                i64_of(to_millis(batch.clock))
            ])
        })
        .map_err(io)?;
        tx.commit().map_err(io)
    }
}
