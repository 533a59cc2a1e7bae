//! Durable state: the [`Store`] trait and its implementations.
//!
//! An engine built with a store ([`EngineBuilder::store`]) writes every
//! change as part of an ordered, atomic [`Batch`] and rebuilds its live
//! grants from the store when it starts. The store is the system of record
//! for everything too large to keep in memory: the request history and
//! its status, and the listings of live grants by user, entity, context or
//! expiry are queries on its read side ([`StoreReader`]), so memory and
//! restart time do not grow with the history. Three stores come with the
//! crate:
//!
//! - `SqliteStore` (feature `sqlite`, on by default): the durable
//!   default, one SQLite file (WAL, full sync by default). See its
//!   documentation for the schema.
//! - [`MemoryStore`]: keeps the batches' effect in memory; clones share it,
//!   so a test can "restart" an engine over the same state.
//! - `FaultyStore` (feature `testing`): wraps another store and fails
//!   chosen operations, to prove what the engine does when its store fails.
//!
//! # Write order
//!
//! - A share or an extension is written before it is visible: no check says
//!   yes for it before the batch that holds it has been applied, and the
//!   call returns only after that.
//! - A revoke is visible at once (checks say no from the moment it is
//!   decided) and is then written; if the write fails the caller gets
//!   [`Error::NotDurable`](crate::Error::NotDurable), the grant stays
//!   revoked in memory and the revoke is written with the next batch that
//!   succeeds.
//! - Concurrent calls are committed together: while one batch is being
//!   written the calls that arrive queue up, and the next batch carries them
//!   all (one transaction, one sync).
//! - Expirations, and history updates that promise nothing to a caller, are
//!   written with the next batch (or by [`Engine::flush`]). After a crash
//!   they are recomputed: grants past their expiry are dropped when the
//!   engine starts.
//!
//! [`EngineBuilder::store`]: crate::EngineBuilder::store
//! [`Engine::flush`]: crate::Engine::flush

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::{Context, EntityId, GrantId, UserId};
use crate::model::grant::Grant;
use crate::model::history::{HistoryPage, HistoryQuery, HistoryRecord, RequestId, RuleId};
use crate::model::rule::Rule;

#[cfg(any(test, feature = "testing"))]
mod faulty;
mod feed;
mod memory;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod sql;
#[cfg(feature = "sqlite")]
mod sqlite;

#[cfg(any(test, feature = "testing"))]
pub use faulty::{Fault, FaultHandle, FaultyStore};
pub use feed::{FeedEntry, FeedRead, Follower, Housekept, SharedStore};
pub use memory::MemoryStore;
#[cfg(feature = "postgres")]
pub use postgres::{PostgresStore, FEED_CHANNEL};
#[cfg(feature = "sqlite")]
pub use sqlite::{SqliteStore, Synchronous};

/// Why a grant left the live grants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EndCause {
    /// Revoked on request.
    Revoked,
    /// Replaced by a later share of the same (user, entity, context).
    Replaced,
    /// Its expiry passed.
    Expired,
}

/// One change in a [`Batch`]. Every change is idempotent: applying it a
/// second time leaves the store as the first time did.
///
/// Deliberately not `#[non_exhaustive]`: a store must handle every kind
/// of change, so a new kind is a compile error in every store rather than
/// a change silently dropped by a catch-all arm.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Change {
    /// Insert or replace a live grant, keyed by its serial: a share, an
    /// extension, a raised level.
    Put(Grant),
    /// A grant ended: remove it from the live grants (a no-op if it is not
    /// there). A grant revoked or replaced also records its end in the
    /// history record of the share that made it (the record whose kind is
    /// share and whose grant has this serial), if that record has no end
    /// yet. An expiry is not recorded there: the record's `expires_at`
    /// already says when the grant ends, and readers compare it with their
    /// time (so the most common end costs the history nothing).
    End {
        /// The grant (its serial is the key; the rest lets a follower
        /// find it in its own index).
        grant: GrantId,
        /// When it ended.
        at: DateTime<Utc>,
        /// Why.
        cause: EndCause,
    },
    /// The grant `serial` was revoked by the revoke request `request`: the
    /// share record of that grant names it (whether or not its
    /// [`End`](Change::End) was applied yet).
    EndedBy {
        /// The grant's serial.
        serial: u64,
        /// The revoke request.
        request: RequestId,
    },
    /// Insert or replace a history record, keyed by its request id. A new
    /// record takes the next place in the store's history order (the
    /// order of pages and cursors); a replaced one keeps its place, and
    /// keeps the end that [`End`](Change::End) and
    /// [`EndedBy`](Change::EndedBy) recorded when `record` has none.
    Record(Box<HistoryRecord>),
    /// Forget a history record (pruned by the retention period).
    Forget(RequestId),
    /// Insert or replace an automation rule.
    Rule {
        /// The rule's id.
        id: RuleId,
        /// The rule.
        rule: Box<Rule>,
    },
    /// Remove an automation rule.
    RemoveRule(RuleId),
}

/// An ordered, atomic group of changes.
///
/// Sequence numbers increase from batch to batch (gaps are allowed: a batch
/// that failed is not retried under the same number). A store applies a
/// batch whole or not at all, and ignores a batch whose sequence number is
/// not above the last one it applied: replaying batches is harmless.
#[derive(Clone, Copy, Debug)]
pub struct Batch<'a> {
    /// The batch's sequence number.
    pub seq: u64,
    /// The serial the engine gives its next grant: a restarted engine
    /// never reuses a serial, so an old grant id never names a new grant.
    pub next_serial: u64,
    /// The engine's time when the batch was made: a restarted engine never
    /// runs behind it, even if the clock was set back.
    pub clock: DateTime<Utc>,
    /// The changes, in order.
    pub changes: &'a [Change],
}

/// What a store knows besides the grants, history and rules.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// The sequence number of the last batch applied (0: none).
    pub last_seq: u64,
    /// The highest `next_serial` of any batch applied.
    pub next_serial: u64,
    /// The latest `clock` of any batch applied.
    pub clock: Option<DateTime<Utc>>,
}

/// Which live grants a listing asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrantFilter {
    /// The grants of one user.
    User(UserId),
    /// The grants on one record.
    Entity(EntityId),
    /// The grants given through one context (an activity, a task).
    Context(Context),
    /// The grants that expire after `now` and at or before this instant.
    ExpiringBy(DateTime<Utc>),
}

/// Why a store operation failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The storage underneath failed (disk, file system, database engine).
    #[error("store i/o failed: {0}")]
    Io(String),
    /// Another engine holds the database.
    #[error("the database `{path}` is in use by another engine (one writer at a time); stop it or open another file")]
    Locked {
        /// The database's path.
        path: String,
    },
    /// The database cannot be written: the engine needs to write it (and,
    /// for SQLite, the journal files beside it).
    #[error("the database `{path}` cannot be opened for writing: {cause}")]
    Unwritable {
        /// The database's path.
        path: String,
        /// Why.
        cause: Unwritable,
    },
    /// The database was written by a newer version of this library.
    #[error("the database's schema version {found} is newer than the {supported} this version of grantwheel reads; upgrade grantwheel")]
    NewerSchema {
        /// The version found in the file.
        found: i64,
        /// The newest version this library knows.
        supported: i64,
    },
    /// Stored data could not be read back.
    #[error("corrupt {what}: {reason}")]
    Corrupt {
        /// What could not be read (a table and row).
        what: String,
        /// Why.
        reason: String,
    },
    /// A `FaultyStore` failed this operation on purpose (feature
    /// `testing`).
    #[cfg(any(test, feature = "testing"))]
    #[error("injected fault at store operation {op}")]
    Injected {
        /// The operation's number (from 1).
        op: u64,
    },
}

/// Why a database cannot be opened for writing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Unwritable {
    /// The file's permissions make it read-only.
    #[error("the file is read-only; give the process write permission or open a copy")]
    ReadOnlyFile,
    /// The file system holding it is mounted read-only.
    #[error("the file system is mounted read-only; put the database on a writable one")]
    ReadOnlyFileSystem,
    /// The process may not write the file or create files in its
    /// directory (SQLite keeps its write-ahead log beside the database).
    #[error("permission denied: the process must be able to write the file and create files in its directory")]
    PermissionDenied,
    /// The directory the database should be in does not exist.
    #[error("its directory does not exist; create it first")]
    DirectoryMissing,
}

/// Where an engine keeps its state. Implement it to put grantwheel's state
/// in another database.
///
/// # Contract
///
/// - [`apply`](Store::apply) is atomic and durable when it returns `Ok`:
///   after a crash the store shows every change of every batch it
///   acknowledged, in order, and nothing of a batch it did not.
/// - A batch whose `seq` is not above [`Meta::last_seq`] is ignored
///   (returns `Ok`): replaying is harmless. Each change is also idempotent
///   on its own (upsert by key, delete if present).
/// - The engine calls these methods from one thread at a time and never
///   from a check; a store may block.
/// - Loading is [`meta`](Store::meta), then [`grants`](Store::grants), then
///   [`rules`](Store::rules), once at start. Grants come in any order; the
///   engine drops those past their expiry. History is never loaded: it is
///   queried through the [`reader`](Store::reader).
///
/// A store several engines write at once also implements
/// [`SharedStore`] and returns it from [`shared`](Store::shared): the
/// engine then decides every batch under the feed lock, on the state of
/// every batch committed before it, and follows the other engines' batches
/// between its own.
pub trait Store: Send {
    /// The store's sequence number, serial and clock high-water marks.
    fn meta(&mut self) -> Result<Meta, StoreError>;
    /// Call `each` with every live grant stored.
    fn grants(&mut self, each: &mut dyn FnMut(Grant)) -> Result<(), StoreError>;
    /// The automation rules, by id (rules are few: they are loaded whole).
    fn rules(&mut self) -> Result<Vec<(RuleId, Rule)>, StoreError>;
    /// Apply a batch atomically and durably (see the contract above).
    fn apply(&mut self, batch: &Batch<'_>) -> Result<(), StoreError>;
    /// A handle that answers queries from any thread, beside (not behind)
    /// [`apply`](Store::apply). Called once, when the engine is built.
    fn reader(&self) -> Result<Arc<dyn StoreReader>, StoreError>;
    /// The store's shared side, when several engines write it at once
    /// (see [`SharedStore`]); `None` (the default) for a store one engine
    /// owns.
    fn shared(&mut self) -> Option<&mut dyn SharedStore> {
        None
    }
}

/// The read side of a [`Store`]: history, request status and listings of
/// live grants, answered from the store's indexes.
///
/// # Contract
///
/// - Every answer reflects a state that includes every batch whose
///   [`apply`](Store::apply) returned before the query began (and no part
///   of a batch that has not returned): committed state, read consistently.
/// - Queries are safe from any number of threads at once, while batches
///   are applied; none waits for a batch to be written longer than the
///   store's own locking requires.
/// - The history order is the order in which records were first written;
///   a [`Cursor`](crate::model::history::Cursor) is a place in it. Paging with
///   cursors returns every record that existed when the first page was read
///   exactly once, whatever is written meanwhile (records written later
///   are newer, so they sort before the first page).
/// - Cost: each query is answered from an index, in time that grows with
///   what it returns (and, where its method says so, with what it skips),
///   never with the whole history or every grant.
pub trait StoreReader: Send + Sync {
    /// The record of one request; `None` when unknown (or pruned).
    fn request(&self, id: &RequestId) -> Result<Option<HistoryRecord>, StoreError>;
    /// The record of the request that carries this idempotency key.
    fn request_by_key(&self, key: &str) -> Result<Option<HistoryRecord>, StoreError>;
    /// One page of `entity`'s history, newest first: at most `query.limit`
    /// records that pass every filter of `query`, continuing below
    /// `query.after`; `next` is set when more records may follow.
    ///
    /// Time filters (`from`, `until`) are applied to what the other
    /// filters select: their cost grows with the records they skip.
    fn history(&self, entity: &EntityId, query: &HistoryQuery) -> Result<HistoryPage, StoreError>;
    /// The completed share records of `entity` whose grant was live at
    /// `at` (completed at or before it, ending after it), newest first.
    /// Costs what the entity's completed shares ending after `at` cost.
    fn access_at(
        &self,
        entity: &EntityId,
        at: DateTime<Utc>,
    ) -> Result<Vec<HistoryRecord>, StoreError>;
    /// Requests still `Processing` that no running instance will finish,
    /// oldest first, at most `limit`: on a store of one engine every one
    /// (its queue died with the process that held it); on a shared store
    /// those whose writing instance is gone (a live instance's queued
    /// requests are its own to finish).
    fn processing(&self, limit: usize) -> Result<Vec<HistoryRecord>, StoreError>;
    /// Share requests waiting for an approver (see
    /// [`HistoryRecord::awaiting_approval`]), soonest deadline first (then
    /// by place), at most `limit`. Not among [`processing`](Self::processing):
    /// they wait in the store, not in a queue that dies with its process.
    fn awaiting_approval(&self, limit: usize) -> Result<Vec<HistoryRecord>, StoreError>;
    /// The share record that made the grant of serial `serial`, if it is
    /// kept (a grant made on the engine directly has none).
    fn share_of_grant(&self, serial: u64) -> Result<Option<HistoryRecord>, StoreError>;
    /// The completed share records of `user` whose grant was live at
    /// `at`, newest first: the grants the user held then. Costs what the
    /// user's completed shares cost.
    fn held_at(&self, user: &UserId, at: DateTime<Utc>) -> Result<Vec<HistoryRecord>, StoreError>;
    /// The completed share records of rule `rule` whose grant was neither
    /// revoked nor replaced and expires after `now`, oldest first.
    fn open_shares_of_rule(
        &self,
        rule: RuleId,
        now: DateTime<Utc>,
    ) -> Result<Vec<HistoryRecord>, StoreError>;
    /// At most `limit` requests that retention may remove: shares whose
    /// grant ended (revoked, replaced, or past its `expires_at`), and
    /// failed requests and revokes finished, before `horizon`. Oldest first
    /// (by that instant, then by place).
    fn prunable(&self, horizon: DateTime<Utc>, limit: usize) -> Result<Vec<RequestId>, StoreError>;
    /// The stored grants that `filter` selects and that expire after `now`,
    /// ordered by expiry, then serial.
    fn live_grants(
        &self,
        filter: GrantFilter,
        now: DateTime<Utc>,
    ) -> Result<Vec<Grant>, StoreError>;
}

impl<S: Store + ?Sized> Store for Box<S> {
    fn meta(&mut self) -> Result<Meta, StoreError> {
        (**self).meta()
    }
    fn grants(&mut self, each: &mut dyn FnMut(Grant)) -> Result<(), StoreError> {
        (**self).grants(each)
    }
    fn rules(&mut self) -> Result<Vec<(RuleId, Rule)>, StoreError> {
        (**self).rules()
    }
    fn apply(&mut self, batch: &Batch<'_>) -> Result<(), StoreError> {
        (**self).apply(batch)
    }
    fn reader(&self) -> Result<Arc<dyn StoreReader>, StoreError> {
        (**self).reader()
    }
    fn shared(&mut self) -> Option<&mut dyn SharedStore> {
        (**self).shared()
    }
}
