//! [`PostgresStore`]: the engine's state in a PostgreSQL database
//! (feature `postgres`), shared by every instance on the database: each
//! writes, and follows the others' writes through the change feed (see
//! [`SharedStore`]).
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

mod connect;
mod follow;
mod reader;
mod rows;
mod schema;
mod write;

use std::sync::Arc;

use postgres::Client;

use self::connect::{close_off_thread, connect, own, run_off_thread};
use self::rows::GRANT_COLUMNS;
use self::write::Statements;
use crate::clock::{from_millis, max_millis};
use crate::model::grant::Grant;
use crate::model::history::RuleId;
use crate::model::rule::Rule;
use crate::store::{Batch, Change, FeedEntry, Meta, SharedStore, Store, StoreError, StoreReader};

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
    /// This instance's owner key: the history rows it writes carry it, and
    /// its writer connection holds the session advisory lock of it (taken
    /// again with every new connection, given back when the store is
    /// dropped), so another instance can tell whether a request left
    /// `Processing` is still queued somewhere (lock held) or was lost with
    /// its instance (lock free).
    owner: i64,
    statements: Statements,
    /// The feed head read under the feed lock, while a write holds it (a
    /// transaction is open on `client`).
    locked: Option<i64>,
    /// Whether this store's follower listens for wake-ups.
    listen: bool,
}
impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password: never printed.
        f.debug_struct("PostgresStore")
            .field("engine", &self.engine)
            .finish_non_exhaustive()
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

/// Whether `e` says the connection itself is gone (closed, or ended by the
/// server: a restart or `pg_terminate_backend`). A connection idle in a
/// pool learns this only when next used, so the first statement after
/// such a loss fails this way even though a new connection would work.
pub(super) fn lost(e: &postgres::Error) -> bool {
    use postgres::error::SqlState;
    e.is_closed()
        || e.code().is_some_and(|c| {
            [
                SqlState::ADMIN_SHUTDOWN,
                SqlState::CRASH_SHUTDOWN,
                SqlState::CANNOT_CONNECT_NOW,
            ]
            .contains(c)
        })
}
impl PostgresStore {
    /// Connect to the database at `url` (a `postgresql://` URL or a
    /// `key=value` connection string), create or migrate its schema, and
    /// prepare the write path.
    ///
    /// Any number of stores (one per instance) may be connected to one
    /// database at once: each engine decides its writes under the feed
    /// lock, after every write committed before, and follows the others'.
    ///
    /// # Errors
    ///
    /// [`StoreError::NewerSchema`] when the database was written
    /// by a newer version of grantwheel; [`StoreError::Io`] (with the
    /// server's message, never the URL) when the server cannot be reached
    /// or refuses.
    pub fn connect(url: &str) -> Result<Self, StoreError> {
        let mut client = connect(url)?;
        // Positive and never 0: the low 62 bits of a random UUID.
        let owner = (uuid::Uuid::new_v4().as_u128() as i64 & (i64::MAX >> 1)).max(1);
        if let Err(e) = schema::migrate(&mut client).and_then(|()| own(&mut client, owner)) {
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
            owner,
            statements,
            locked: None,
            listen: true,
        })
    }

    /// The connection, opened again (with its statements prepared again)
    /// if the last one was lost: a server restart or a dropped connection
    /// fails the calls made while it is down, not every call after.
    fn client(&mut self) -> Result<&mut Client, StoreError> {
        if self.client.as_ref().is_none_or(Client::is_closed) && self.locked.is_none() {
            let mut client = connect(&self.url)?;
            let statements = match own(&mut client, self.owner)
                .and_then(|()| Statements::prepare(&mut client))
            {
                Ok(s) => s,
                Err(e) => {
                    close_off_thread(client);
                    return Err(e);
                }
            };
            if let Some(old) = self.client.replace(client) {
                close_off_thread(old);
            }
            self.statements = statements;
        }
        self.client
            .as_mut()
            .ok_or_else(|| StoreError::Io("postgresql: the store is closed".into()))
    }

    /// Follow the feed by polling alone: the engine's follower does not
    /// listen for wake-ups, so another instance's write reaches this one
    /// within the poll interval (`EngineBuilder::feed_poll`, 250 ms by
    /// default) instead of within milliseconds. For networks that drop
    /// idle listening connections, and to measure the poll path.
    pub fn poll_only(mut self) -> Self {
        self.listen = false;
        self
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

impl Drop for PostgresStore {
    fn drop(&mut self) {
        if let Some(mut client) = self.client.take() {
            // Given back before the connection closes, so an instance
            // started at once after this one stops already finds its
            // queued requests orphaned (a close alone releases the lock a
            // moment later, on the server's time).
            let owner = self.owner;
            run_off_thread(move || {
                let _ = client.execute("SELECT pg_advisory_unlock($1)", &[&owner]);
                drop(client);
            });
        }
    }
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
        let mut tx = self
            .client()?
            .build_transaction()
            .isolation_level(postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .map_err(pg)?;
        read_grants(&mut tx, each)?;
        tx.commit().map_err(pg)
    }

    fn rules(&mut self) -> Result<Vec<(RuleId, Rule)>, StoreError> {
        read_rules(self.client()?)
    }

    fn reader(&self) -> Result<Arc<dyn StoreReader>, StoreError> {
        Ok(Arc::new(reader::PostgresReader::new(self.url.clone())))
    }

    fn apply(&mut self, batch: &Batch<'_>) -> Result<(), StoreError> {
        let head = self.lock()?;
        let written = self.write_locked(head, batch);
        self.locked = None;
        if written.is_err() {
            // The transaction is aborted (or the connection gone): end it,
            // which also gives the feed lock back.
            if let Some(c) = self.client.as_mut() {
                let _ = c.batch_execute("ROLLBACK");
            }
        }
        written
    }

    fn shared(&mut self) -> Option<&mut dyn SharedStore> {
        Some(self)
    }
}

/// Every live grant stored, read through a portal in pages: a million
/// grants never sit in memory as rows at once.
pub(super) fn read_grants(
    tx: &mut postgres::Transaction<'_>,
    each: &mut dyn FnMut(Grant),
) -> Result<(), StoreError> {
    let stmt = tx
        .prepare(&format!("SELECT {GRANT_COLUMNS} FROM grantwheel_grants"))
        .map_err(pg)?;
    let portal = tx.bind(&stmt, &[]).map_err(pg)?;
    loop {
        let rows = tx.query_portal(&portal, 10_000).map_err(pg)?;
        if rows.is_empty() {
            return Ok(());
        }
        for row in &rows {
            each(rows::decode_grant(row)?);
        }
    }
}

/// The automation rules, by id.
pub(super) fn read_rules(
    client: &mut impl postgres::GenericClient,
) -> Result<Vec<(RuleId, Rule)>, StoreError> {
    let rows = client
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

/// Decode a feed row: (seq, batch_seq, next_serial, clock_ms, changes).
pub(super) fn decode_entry(row: &postgres::Row) -> Result<FeedEntry, StoreError> {
    let seq: i64 = row.try_get(0).map_err(pg)?;
    let corrupt = |reason: String| StoreError::Corrupt {
        what: format!("grantwheel_feed row {seq}"),
        reason,
    };
    let num = |i: usize| -> Result<u64, StoreError> {
        let v: i64 = row.try_get(i).map_err(pg)?;
        u64::try_from(v).map_err(|_| corrupt(format!("column {i} is negative")))
    };
    let json: &str = row.try_get(4).map_err(pg)?;
    let changes: Vec<Change> = serde_json::from_str(json).map_err(|e| corrupt(e.to_string()))?;
    Ok(FeedEntry {
        position: num(0)?,
        seq: num(1)?,
        next_serial: num(2)?,
        clock: from_millis(num(3)?.min(max_millis())),
        changes,
    })
}
