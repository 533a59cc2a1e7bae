//! Stores shared by several engines: the change feed they follow.
//!
//! Each engine over a shared store keeps its own index and wheel and
//! follows the store's feed: every batch any engine commits, under a dense
//! position (1, 2, 3 ... in commit order, no holes). An engine writes by
//! locking the feed ([`SharedStore::lock_feed`]), applying every entry
//! after its own position, deciding its batch on that state, and applying
//! it ([`Store::apply`]) while the lock is held, so every decision is made
//! as one engine would make it in feed order. Between writes a
//! [`Follower`] on a connection of its own brings the other engines'
//! entries.
//!
//! [`Store::apply`]: super::Store::apply

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::model::grant::Grant;
use crate::model::history::RuleId;
use crate::model::rule::Rule;

use super::{Change, StoreError};

/// One committed batch, as the feed shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct FeedEntry {
    /// Its place in the feed: the entry after position `p` is at `p + 1`.
    pub position: u64,
    /// The batch's own sequence number.
    pub seq: u64,
    /// The serial the writing engine would have given its next grant.
    pub next_serial: u64,
    /// The writing engine's time.
    pub clock: DateTime<Utc>,
    /// The changes that concern other engines, in order. Expirations are
    /// left out: every engine expires grants by its own clock.
    pub changes: Vec<Change>,
}

/// What reading the feed after a position found.
#[derive(Clone, Debug, PartialEq)]
pub enum FeedRead {
    /// The entries after the position, in order (none: up to date).
    Entries(Vec<FeedEntry>),
    /// The entries right after the position are no longer kept (trimmed):
    /// the reader must start again from a [`Follower::snapshot`].
    Behind {
        /// The oldest position still kept.
        oldest: u64,
    },
}

/// A store several engines write at once (see the module documentation).
pub trait SharedStore {
    /// The feed position the store's state includes now. Loading reads it
    /// before the grants: the grants may include later entries, which are
    /// then applied again (every change is idempotent).
    fn position(&mut self) -> Result<u64, StoreError>;

    /// Lock the feed for a write and return the entries after `after`.
    /// The lock is held until the next [`apply`](super::Store::apply)
    /// commits or [`release_feed`](SharedStore::release_feed) is called;
    /// every other writer waits for it.
    fn lock_feed(&mut self, after: u64) -> Result<FeedRead, StoreError>;

    /// Give the feed lock back without writing (nothing to write, or the
    /// entries could not be applied).
    fn release_feed(&mut self);

    /// A follower of the feed, on a connection of its own.
    fn follower(&self) -> Result<Box<dyn Follower>, StoreError>;
}

/// Follows a shared store's feed from a thread of its own.
pub trait Follower: Send {
    /// Block until another engine may have written, or `timeout` passed.
    /// Returns whether a wake-up came (a lost one costs only latency: the
    /// caller reads the feed after every wait).
    fn wait(&mut self, timeout: Duration) -> Result<bool, StoreError>;

    /// At most `limit` entries after `after`, in order.
    fn read(&mut self, after: u64, limit: usize) -> Result<FeedRead, StoreError>;

    /// The feed's newest position (for how far behind a follower is);
    /// `None` when the store does not say.
    fn head(&mut self) -> Result<Option<u64>, StoreError> {
        Ok(None)
    }

    /// The whole state at one position, read consistently: `each` gets
    /// every live grant; returns the position and the rules.
    fn snapshot(
        &mut self,
        each: &mut dyn FnMut(Grant),
    ) -> Result<(u64, Vec<(RuleId, Rule)>), StoreError>;

    /// The store's own clock (to measure this host's clock against it).
    fn server_time(&mut self) -> Result<DateTime<Utc>, StoreError>;

    /// Open the connection again after a failure (and listen again).
    fn reconnect(&mut self) -> Result<(), StoreError>;

    /// Take, or keep, the lease on raising expiry events: among the
    /// engines on one store, one at a time holds it, for as long as its
    /// connection lives (a crashed holder's lease passes to the next engine
    /// that asks). Returns whether this follower holds it. The default is
    /// for a store with one engine: always held.
    fn hold_lease(&mut self) -> Result<bool, StoreError> {
        Ok(true)
    }

    /// Remove what no engine needs any more, unless another engine is
    /// doing it now: the rows of grants that expired before
    /// `expired_before`, and feed entries older than `keep_feed` (the
    /// newest are always kept). Returns what was removed, or `None` when
    /// another engine holds the housekeeping.
    fn housekeep(
        &mut self,
        expired_before: DateTime<Utc>,
        keep_feed: Duration,
    ) -> Result<Option<Housekept>, StoreError>;
}

/// What one round of [`Follower::housekeep`] removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Housekept {
    /// Rows of expired grants.
    pub grants: u64,
    /// Feed entries.
    pub feed: u64,
}
