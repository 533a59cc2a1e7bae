//! [`PostgresStore`]: the engine's state in a PostgreSQL database
//! (feature `postgres`): history and status readable by every instance on
//! the database, written by one engine at a time (see
//! [`PostgresStore::connect`]).
//!
//! The tables mirror the SQLite store's, with the same indexes for the
//! same queries, and add the change feed: every batch is written in a
//! transaction that first takes the row lock of a one-row feed head and
//! holds it to commit, so the feed numbers are dense and in commit order,
//! and the batch is stored under its number beside its effect on the
//! tables. A `NOTIFY` on [`FEED_CHANNEL`] carries only a wake-up (the new
//! number), never the change.
//!
//! The store uses the synchronous `postgres` crate, which runs its own
//! small runtime: call it from plain threads (the engine's writer, a
//! `spawn_blocking` task), never from inside an async worker thread.

mod reader;
mod rows;
mod schema;

use std::sync::Arc;

use postgres::{Client, NoTls, Statement, Transaction};

use self::rows::{i64_of, GrantValues, RecordValues, GRANT_COLUMNS};
use crate::clock::{from_millis, max_millis, to_millis};
use crate::model::grant::Grant;
use crate::model::history::RuleId;
use crate::model::rule::Rule;
use crate::store::{Batch, Change, EndCause, Meta, Store, StoreError, StoreReader};

/// The channel every write notifies (its payload: the feed number).
pub const FEED_CHANNEL: &str = "grantwheel_feed";

/// A store in a PostgreSQL database.
///
/// ```no_run
/// use grantwheel::store::PostgresStore;
/// use grantwheel::Engine;
///
/// let store = PostgresStore::connect("postgresql://grantwheel@127.0.0.1/crm")?;
/// let engine = Engine::builder().store(store).build()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct PostgresStore {
    /// Always `Some` but in `drop` (see [`close_off_thread`]).
    client: Option<Client>,
    url: String,
    /// Names this instance in the feed.
    engine: String,
    statements: Statements,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password: never printed.
        f.debug_struct("PostgresStore")
            .field("engine", &self.engine)
            .finish_non_exhaustive()
    }
}

/// The write path's statements, prepared once per connection.
struct Statements {
    take_head: Statement,
    last_seq: Statement,
    put_grant: Statement,
    end_grant: Statement,
    end_record: Statement,
    ended_by: Statement,
    put_record: Statement,
    forget: Statement,
    put_rule: Statement,
    remove_rule: Statement,
    put_feed: Statement,
    put_meta: Statement,
    notify: Statement,
}

const PUT_RECORD: &str = "INSERT INTO grantwheel_history (request, kind, entity_kind, entity_id, user_id, context_kind, context_id, level, duration_ms, expires_ms, source, rule, status, failure_kind, reason, grant_serial, created_ms, completed_ms, end_ms, end_cause, ended_by, idempotency_key)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22)
ON CONFLICT (request) DO UPDATE SET
    kind = excluded.kind, entity_kind = excluded.entity_kind, entity_id = excluded.entity_id,
    user_id = excluded.user_id, context_kind = excluded.context_kind, context_id = excluded.context_id,
    level = excluded.level, duration_ms = excluded.duration_ms, expires_ms = excluded.expires_ms,
    source = excluded.source, rule = excluded.rule, status = excluded.status,
    failure_kind = excluded.failure_kind, reason = excluded.reason,
    grant_serial = excluded.grant_serial, created_ms = excluded.created_ms,
    completed_ms = excluded.completed_ms,
    end_cause = CASE WHEN excluded.end_ms IS NULL THEN grantwheel_history.end_cause ELSE excluded.end_cause END,
    end_ms = coalesce(excluded.end_ms, grantwheel_history.end_ms),
    ended_by = coalesce(excluded.ended_by, grantwheel_history.ended_by),
    idempotency_key = excluded.idempotency_key";

impl Statements {
    fn prepare(c: &mut Client) -> Result<Self, StoreError> {
        let mut p = |sql: &str| c.prepare(sql).map_err(pg);
        Ok(Statements {
            take_head: p("UPDATE grantwheel_feed_head SET seq = seq + 1 RETURNING seq")?,
            last_seq: p("SELECT value FROM grantwheel_meta WHERE key = 'last_seq'")?,
            put_grant: p("INSERT INTO grantwheel_grants (serial, user_id, entity_kind, entity_id, context_kind, context_id, level, expires_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                ON CONFLICT (serial) DO UPDATE SET user_id = excluded.user_id, entity_kind = excluded.entity_kind, entity_id = excluded.entity_id,
                context_kind = excluded.context_kind, context_id = excluded.context_id, level = excluded.level, expires_ms = excluded.expires_ms")?,
            end_grant: p("DELETE FROM grantwheel_grants WHERE serial = $1")?,
            end_record: p("UPDATE grantwheel_history SET end_ms = $2, end_cause = $3 WHERE grant_serial = $1 AND kind = 'share' AND end_ms IS NULL")?,
            ended_by: p("UPDATE grantwheel_history SET ended_by = $2 WHERE grant_serial = $1 AND kind = 'share'")?,
            put_record: p(PUT_RECORD)?,
            forget: p("DELETE FROM grantwheel_history WHERE request = $1")?,
            put_rule: p("INSERT INTO grantwheel_rules (id, rule) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET rule = excluded.rule")?,
            remove_rule: p("DELETE FROM grantwheel_rules WHERE id = $1")?,
            put_feed: p("INSERT INTO grantwheel_feed (seq, engine, batch_seq, next_serial, clock_ms, changes) VALUES ($1, $2, $3, $4, $5, $6)")?,
            put_meta: p("UPDATE grantwheel_meta SET value = CASE key WHEN 'last_seq' THEN $1 WHEN 'next_serial' THEN greatest(value, $2) ELSE greatest(value, $3) END")?,
            notify: p("SELECT pg_notify($1, $2)")?,
        })
    }
}

/// A PostgreSQL error as a store error. The message names what failed
/// (the server's own message, with its SQLSTATE) and never the URL.
pub(super) fn pg(e: postgres::Error) -> StoreError {
    match e.as_db_error() {
        Some(db) => StoreError::Io(format!(
            "postgresql: {} ({})",
            db.message(),
            db.code().code()
        )),
        None => StoreError::Io(format!("postgresql: {e}")),
    }
}

impl PostgresStore {
    /// Connect to the database at `url` (a `postgresql://` URL or a
    /// `key=value` connection string), create or migrate its schema, and
    /// prepare the write path.
    ///
    /// The store holds the database's writer lock (a session advisory
    /// lock) for its life: one engine writes at a time, as with a SQLite
    /// file, until writes from several instances are decided in feed
    /// order. A new store waits up to 3 s for a writer that has just
    /// stopped.
    ///
    /// # Errors
    ///
    /// [`StoreError::Locked`] (naming the database) when another engine
    /// writes it; [`StoreError::NewerSchema`] when the database was written
    /// by a newer version of grantwheel; [`StoreError::Io`] (with the
    /// server's message, never the URL) when the server cannot be reached
    /// or refuses.
    pub fn connect(url: &str) -> Result<Self, StoreError> {
        let mut client = Client::connect(url, NoTls).map_err(pg)?;
        let taken = take_writer_lock(&mut client);
        if let Err(e) = taken {
            close_off_thread(client);
            return Err(e);
        }
        if let Err(e) = schema::migrate(&mut client) {
            close_off_thread(client);
            return Err(e);
        }
        let statements = match Statements::prepare(&mut client) {
            Ok(s) => s,
            Err(e) => {
                close_off_thread(client);
                return Err(e);
            }
        };
        Ok(PostgresStore {
            client: Some(client),
            url: url.to_string(),
            engine: uuid::Uuid::now_v7().simple().to_string(),
            statements,
        })
    }

    fn client(&mut self) -> Result<&mut Client, StoreError> {
        self.client
            .as_mut()
            .ok_or_else(|| StoreError::Io("postgresql: the store is closed".into()))
    }

    /// The URL the store connected with (it may hold a password: the
    /// store never prints it).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The feed number of the last batch committed by any instance.
    pub fn feed_head(&mut self) -> Result<u64, StoreError> {
        let seq: i64 = self
            .client()?
            .query_one("SELECT seq FROM grantwheel_feed_head", &[])
            .map_err(pg)?
            .try_get(0)
            .map_err(pg)?;
        Ok(u64::try_from(seq).unwrap_or(0))
    }

    fn meta_value(&mut self, key: &str) -> Result<u64, StoreError> {
        let v: Option<i64> = self
            .client()?
            .query_opt("SELECT value FROM grantwheel_meta WHERE key = $1", &[&key])
            .map_err(pg)?
            .map(|r| r.try_get(0))
            .transpose()
            .map_err(pg)?;
        match v {
            Some(v) if v >= 0 => Ok(v as u64),
            Some(v) => Err(StoreError::Corrupt {
                what: format!("grantwheel_meta `{key}`"),
                reason: format!("`{v}` is negative"),
            }),
            None => Err(StoreError::Corrupt {
                what: format!("grantwheel_meta `{key}`"),
                reason: "missing".into(),
            }),
        }
    }
}

/// The advisory lock key of the one writer ("gw-write" in ASCII).
const WRITER_LOCK: i64 = 0x6777_2d77_7269_7465;

/// How long a new store waits for the writer lock: a writer that just
/// closed its connection releases it when its server process ends, a
/// moment later.
const WRITER_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Take the one-writer lock for this connection's life.
///
/// Until writes from several instances are decided in feed order (each
/// writer catching up under the feed lock before it decides), two engines
/// writing one database would each decide on their own state (serials,
/// the repeat-share rule) and could overwrite each other's grants. So one
/// engine writes at a time, as with a SQLite file; the lock is a session
/// lock, released by the server when the connection ends, also when its
/// process is killed.
fn take_writer_lock(client: &mut Client) -> Result<(), StoreError> {
    let deadline = std::time::Instant::now() + WRITER_LOCK_WAIT;
    loop {
        let got: bool = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&WRITER_LOCK])
            .map_err(pg)?
            .try_get(0)
            .map_err(pg)?;
        if got {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            let name: String = client
                .query_one("SELECT current_database()", &[])
                .map_err(pg)?
                .try_get(0)
                .map_err(pg)?;
            return Err(StoreError::Locked { path: name });
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Drop `value` (which holds connections) on a thread of its own.
///
/// A `postgres` client closes its connection by blocking on its own
/// runtime, which panics on a thread that drives an async runtime; hosts
/// drop engines from async code all the time (a server shutting down), so
/// the store never closes a connection on the dropping thread.
pub(super) fn close_off_thread<T: Send + 'static>(value: T) {
    let _ = std::thread::Builder::new()
        .name("grantwheel-pg-close".into())
        .spawn(move || drop(value))
        .map(|t| t.join());
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            close_off_thread(client);
        }
    }
}

/// Write one change in the batch's transaction. Every kind of change is
/// handled here: a new kind is a compile error, never a silent no-op.
fn write_change(
    tx: &mut Transaction<'_>,
    s: &Statements,
    change: &Change,
) -> Result<(), StoreError> {
    match change {
        Change::Put(g) => {
            let v = GrantValues::of(g);
            tx.execute(&s.put_grant, &v.params()).map_err(pg)?;
        }
        Change::End { serial, at, cause } => {
            tx.execute(&s.end_grant, &[&i64_of(*serial)]).map_err(pg)?;
            let cause = match cause {
                // Not recorded: readers compare `expires_ms` with their time.
                EndCause::Expired => return Ok(()),
                EndCause::Revoked => "revoked",
                EndCause::Replaced => "replaced",
            };
            tx.execute(
                &s.end_record,
                &[&i64_of(*serial), &at.timestamp_millis(), &cause],
            )
            .map_err(pg)?;
        }
        Change::EndedBy { serial, request } => {
            tx.execute(&s.ended_by, &[&i64_of(*serial), &request.to_string()])
                .map_err(pg)?;
        }
        Change::Record(record) => {
            let v = RecordValues::of(record);
            tx.execute(&s.put_record, &v.params()).map_err(pg)?;
        }
        Change::Forget(request) => {
            tx.execute(&s.forget, &[&request.to_string()]).map_err(pg)?;
        }
        Change::Rule { id, rule } => {
            let json = serde_json::to_string(rule)
                .map_err(|e| StoreError::Io(format!("encoding a rule: {e}")))?;
            tx.execute(&s.put_rule, &[&i64_of(id.0), &json])
                .map_err(pg)?;
        }
        Change::RemoveRule(id) => {
            tx.execute(&s.remove_rule, &[&i64_of(id.0)]).map_err(pg)?;
        }
    }
    Ok(())
}

impl Store for PostgresStore {
    fn meta(&mut self) -> Result<Meta, StoreError> {
        let clock = self.meta_value("clock_ms")?;
        Ok(Meta {
            last_seq: self.meta_value("last_seq")?,
            next_serial: self.meta_value("next_serial")?,
            clock: (clock > 0).then(|| from_millis(clock.min(max_millis()))),
        })
    }

    fn grants(&mut self, each: &mut dyn FnMut(Grant)) -> Result<(), StoreError> {
        // A portal read in pages: a million grants never sit in memory as
        // rows at once.
        let mut tx = self
            .client()?
            .build_transaction()
            .isolation_level(postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .map_err(pg)?;
        let stmt = tx
            .prepare(&format!("SELECT {GRANT_COLUMNS} FROM grantwheel_grants"))
            .map_err(pg)?;
        let portal = tx.bind(&stmt, &[]).map_err(pg)?;
        loop {
            let rows = tx.query_portal(&portal, 10_000).map_err(pg)?;
            if rows.is_empty() {
                break;
            }
            for row in &rows {
                each(rows::decode_grant(row)?);
            }
        }
        tx.commit().map_err(pg)
    }

    fn rules(&mut self) -> Result<Vec<(RuleId, Rule)>, StoreError> {
        let rows = self
            .client()?
            .query("SELECT id, rule FROM grantwheel_rules ORDER BY id", &[])
            .map_err(pg)?;
        let mut rules = Vec::with_capacity(rows.len());
        for row in rows {
            let id: i64 = row.try_get(0).map_err(pg)?;
            let corrupt = |reason: String| StoreError::Corrupt {
                what: format!("grantwheel_rules row {id}"),
                reason,
            };
            let id = u64::try_from(id).map_err(|_| corrupt("negative id".into()))?;
            let json: &str = row.try_get(1).map_err(|e| corrupt(e.to_string()))?;
            let rule: Rule = serde_json::from_str(json).map_err(|e| corrupt(e.to_string()))?;
            rules.push((RuleId(id), rule));
        }
        Ok(rules)
    }

    fn reader(&self) -> Result<Arc<dyn StoreReader>, StoreError> {
        Ok(Arc::new(reader::PostgresReader::new(self.url.clone())))
    }

    fn apply(&mut self, batch: &Batch<'_>) -> Result<(), StoreError> {
        let s = &self.statements;
        let client = self
            .client
            .as_mut()
            .ok_or_else(|| StoreError::Io("postgresql: the store is closed".into()))?;
        let mut tx = client.transaction().map_err(pg)?;
        // The feed lock first, held to commit: every write is ordered
        // after every write committed before it.
        let head: i64 = tx
            .query_one(&s.take_head, &[])
            .map_err(pg)?
            .try_get(0)
            .map_err(pg)?;
        let last: i64 = tx
            .query_one(&s.last_seq, &[])
            .map_err(pg)?
            .try_get(0)
            .map_err(pg)?;
        if i64_of(batch.seq) <= last {
            // A replay: rolled back, so the feed number is not used.
            return tx.rollback().map_err(pg);
        }
        for change in batch.changes {
            write_change(&mut tx, s, change)?;
        }
        let changes = serde_json::to_string(batch.changes)
            .map_err(|e| StoreError::Io(format!("encoding a batch: {e}")))?;
        let clock = i64_of(to_millis(batch.clock));
        tx.execute(
            &s.put_feed,
            &[
                &head,
                &self.engine,
                &i64_of(batch.seq),
                &i64_of(batch.next_serial),
                &clock,
                &changes,
            ],
        )
        .map_err(pg)?;
        tx.execute(
            &s.put_meta,
            &[&i64_of(batch.seq), &i64_of(batch.next_serial), &clock],
        )
        .map_err(pg)?;
        // Delivered at commit, and only if it commits.
        tx.execute(&s.notify, &[&FEED_CHANNEL, &head.to_string()])
            .map_err(pg)?;
        tx.commit().map_err(pg)
    }
}
