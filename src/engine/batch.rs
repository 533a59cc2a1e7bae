//! A batch under way: the changes and events one run of queued jobs makes
//! (`Changes`), and what the state keeps to hide the batch until it is
//! written and to undo it if writing fails (`Group`). `commit.rs` queues
//! and runs the jobs, writes the batch, and publishes or undoes it.

use crate::clock::from_millis;
use crate::events::Event;
use crate::ids::{Context, EntityId, Level, UserId};
use crate::index::IndexReader;
use crate::model::grant::Grant;
use crate::store::{Change, EndCause};

use super::config::Config;
use super::record::GrantRec;

/// What a batch under way needs to be undone, and to hide what it has not
/// yet written.
#[derive(Default)]
pub(super) struct Group {
    /// Each touched pair's grants as they were before the batch, with
    /// their contexts (a record's context number is released with it).
    pub(super) pairs: hashbrown::HashMap<(UserId, EntityId), Vec<(GrantRec, Context)>>,
    /// The starts of those grants that have one (INV-9), by serial.
    pub(super) starts: hashbrown::HashMap<u64, u64>,
    /// For grants changed in the batch (by serial): the expiry and level
    /// checks go on seeing until it is written. New grants are not in it:
    /// checks do not see them at all.
    pub(super) shown: hashbrown::HashMap<u64, (u64, Level)>,
    /// Grants that ended for good in the batch (revoked on request, or
    /// reclaimed as expired): undoing the batch does not bring them back.
    pub(super) ended: hashbrown::HashSet<u64>,
}

/// What a change collects while it holds the state lock.
pub(super) struct Changes<'a> {
    pub(super) events: Vec<Event>,
    /// Positions in `events` of events that stand even if the batch fails.
    pub(super) kept_events: Vec<usize>,
    pub(super) want: bool,
    pub(super) cfg: &'a Config,
    pub(super) reader: &'a IndexReader,
    /// Whether writes are collected (the engine has a store).
    pub(super) durable: bool,
    /// Whether expirations are written (not over a shared store, whose
    /// housekeeping removes expired rows: every engine expires by its own
    /// clock).
    pub(super) expiries: bool,
    /// Writes undone if the batch fails.
    pub(super) writes: Vec<Change>,
    /// Writes that stand even if the batch fails: revokes, expirations.
    pub(super) kept: Vec<Change>,
    /// Grants revoked on request.
    pub(super) revoked: Vec<Grant>,
}

impl Changes<'_> {
    pub(super) fn push(&mut self, make: impl FnOnce() -> Event) {
        if self.want {
            self.events.push(make());
        }
    }

    /// An event that stands even if the batch fails.
    pub(super) fn push_kept(&mut self, make: impl FnOnce() -> Event) {
        if self.want {
            self.kept_events.push(self.events.len());
            self.events.push(make());
        }
    }

    /// A write undone if the batch fails.
    pub(super) fn write(&mut self, make: impl FnOnce() -> Change) {
        if self.durable {
            self.writes.push(make());
        }
    }

    /// A write that stands even if the batch fails.
    pub(super) fn keep(&mut self, make: impl FnOnce() -> Change) {
        if self.durable {
            self.kept.push(make());
        }
    }

    pub(super) fn end(&mut self, grant: &Grant, at: u64, cause: EndCause) {
        let id = grant.id;
        let change = move || Change::End {
            grant: id,
            at: from_millis(at),
            cause,
        };
        match cause {
            EndCause::Replaced => self.write(change),
            EndCause::Expired if !self.expiries => {}
            EndCause::Revoked | EndCause::Expired => self.keep(change),
        }
    }
}
