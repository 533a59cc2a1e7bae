//! The share history: where records are written and read, what the layer
//! keeps in memory (requests in flight, and records whose write waits for
//! the next batch), the queries, pruning, and restart.
//!
//! # Ground rules
//!
//! - The store is the system of record. With a durable engine the layer
//!   writes records in the engine's batches and reads them back through
//!   the store's read side; without a store it keeps them in a
//!   [`MemoryStore`] of its own, written at once, read the same way.
//! - In memory: requests in flight (being carried out, or queued), and
//!   records written with the next batch and not yet written (the
//!   overlay). Both are looked at before the store, so a status is never
//!   older than what a call returned.
//! - Ends of grants (revoked, replaced, expired) reach the stored record
//!   through the store itself ([`Change::End`] names the grant), with no
//!   map from grants to requests in memory. An engine without a store has
//!   no writes: its events end the records here.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::engine::{Grant, Restored};
use crate::error::{InvalidArgument, QueryError};
use crate::events::{Event, RevokeReason};
use crate::model::history::{
    FailureKind, HistoryRecord, RequestId, RequestKind, RequestStatus, INTERRUPTED,
};
use crate::store::{Change, EndCause, MemoryStore, StoreReader};

pub use crate::model::history::{Cursor, HistoryPage, HistoryQuery};

use super::request::Failure;
use super::{Sharing, SharingInner};

/// Where the layer keeps its records.
#[derive(Clone)]
pub(super) enum Backend {
    /// The engine's store: written in the engine's batches.
    Store(Arc<dyn StoreReader>),
    /// The layer's own memory store (an engine without a store): written
    /// at once.
    Local(MemoryStore),
}

impl Backend {
    pub(super) fn reader(&self) -> &dyn StoreReader {
        match self {
            Backend::Store(r) => r.as_ref(),
            Backend::Local(m) => m,
        }
    }

    /// Changes made under the engine's lock for the batch at hand: on a
    /// store they go with the batch; locally they are applied now, before
    /// the lock goes (so no end of the grant can come before its record).
    pub(super) fn in_batch(&self, changes: Vec<Change>) -> Vec<Change> {
        match self {
            Backend::Store(_) => changes,
            Backend::Local(m) => {
                m.apply_changes(&changes);
                Vec::new()
            }
        }
    }
}

/// What the layer keeps in memory.
#[derive(Default)]
pub(super) struct Memory {
    /// Requests being carried out or queued, by id.
    pub(super) in_flight: HashMap<RequestId, HistoryRecord>,
    /// Their idempotency keys.
    pub(super) keys: HashMap<String, RequestId>,
    /// Records queued for the next batch, with the batch that carries
    /// them; dropped once it is written.
    pub(super) unwritten: HashMap<RequestId, (u64, HistoryRecord)>,
    /// The overlay's ids in the order they were queued (batches only grow).
    pub(super) unwritten_order: VecDeque<(u64, RequestId)>,
}

impl Memory {
    /// Forget overlay entries whose batch is written.
    fn settle(&mut self, written: u64) {
        while let Some(&(batch, id)) = self.unwritten_order.front() {
            if batch > written {
                break;
            }
            self.unwritten_order.pop_front();
            if self.unwritten.get(&id).is_some_and(|(b, _)| *b == batch) {
                self.unwritten.remove(&id);
            }
        }
    }

    fn find(&self, id: &RequestId) -> Option<&HistoryRecord> {
        self.in_flight
            .get(id)
            .or_else(|| self.unwritten.get(id).map(|(_, r)| r))
    }
}

/// A record as a reader sees it at `now`: a completed share whose grant is
/// past its expiry reads as expired then, even before the end is written
/// (ends of expired grants are written with the next batch).
pub(super) fn as_of(mut r: HistoryRecord, now: DateTime<Utc>) -> HistoryRecord {
    // A share nobody approved in time has failed, swept or not.
    if let Some(deadline) = r
        .approval
        .as_ref()
        .filter(|_| r.awaiting_approval())
        .map(|a| a.deadline)
        .filter(|d| *d <= now)
    {
        return timed_out(r, deadline);
    }
    if r.kind == RequestKind::Share
        && r.status == RequestStatus::Completed
        && r.ended_at().is_none()
    {
        if let Some(expires) = r.expires_at.filter(|t| *t <= now) {
            r.expired_at = Some(expires);
        }
    }
    r
}

/// Check a query's page size and time range.
pub(super) fn check_query(q: &HistoryQuery) -> Result<(), InvalidArgument> {
    if q.limit == 0 || q.limit > 1000 {
        return Err(InvalidArgument::new(
            "limit",
            format!("`{}` is not between 1 and 1000", q.limit),
        ));
    }
    if let (Some(f), Some(u)) = (q.from, q.until) {
        if f > u {
            return Err(InvalidArgument::new(
                "from",
                format!("`{f}` is after `until` `{u}`"),
            ));
        }
    }
    Ok(())
}

/// The finished form of a record.
pub(super) fn finished(
    mut record: HistoryRecord,
    result: Result<&Grant, Failure>,
    at: DateTime<Utc>,
) -> HistoryRecord {
    record.completed_at = Some(at);
    match result {
        Ok(grant) => {
            record.status = RequestStatus::Completed;
            record.grant = Some(grant.id);
            record.expires_at = Some(grant.expires_at);
            record.starts_at = grant.starts_at;
        }
        Err(failure) => record.status = failure.status(),
    }
    record
}

impl SharingInner {
    /// Write records that no engine batch of the caller's carries: at
    /// once locally; with the next batch on a store, kept in the overlay
    /// until that batch is written.
    pub(super) fn write_records(&self, records: Vec<HistoryRecord>) {
        if records.is_empty() {
            return;
        }
        match &self.backend {
            Backend::Local(m) => {
                let changes: Vec<Change> = records
                    .into_iter()
                    .map(|r| Change::Record(Box::new(r)))
                    .collect();
                m.apply_changes(&changes);
            }
            Backend::Store(_) => {
                // Queued before the overlay takes them (the memory lock is
                // never held across the engine's): a request concluding
                // is still in flight meanwhile, so it is never unseen.
                let changes = records.iter().map(|r| Change::Record(Box::new(r.clone())));
                let batch = self.engine.write_later(changes);
                let mut memory = self.memory.lock();
                memory.settle(self.engine.written_through());
                for r in records {
                    memory.unwritten_order.push_back((batch, r.request));
                    memory.unwritten.insert(r.request, (batch, r));
                }
            }
        }
    }

    /// The records among `records` whose grant was live at `at`, read as
    /// of now (an end or a timeout not yet written counts).
    /// `r` with the instant its access really began as its start: a share
    /// made to start later goes live at the tick at or after its start
    /// ([`Engine::live_from`](crate::Engine::live_from)), and the audit
    /// says what checks said.
    fn as_begun(&self, mut r: HistoryRecord) -> HistoryRecord {
        if let (Some(start), Some(done)) = (r.starts_at, r.completed_at) {
            if start > done {
                r.starts_at = Some(self.engine.live_from(start));
            }
        }
        r
    }

    pub(super) fn live_at(
        &self,
        records: Vec<HistoryRecord>,
        at: DateTime<Utc>,
    ) -> Vec<HistoryRecord> {
        let now = self.engine.now();
        records
            .into_iter()
            .map(|r| self.as_begun(as_of(r, now)))
            .filter(|r| r.gave_access_at(at))
            .collect()
    }

    /// Make sure the overlay is in the store, so a query of the store
    /// sees every record a call has returned.
    pub(super) fn settle_overlay(&self) -> Result<(), QueryError> {
        let pending = {
            let mut memory = self.memory.lock();
            memory.settle(self.engine.written_through());
            !memory.unwritten.is_empty()
        };
        if pending {
            self.engine.flush().map_err(QueryError::Store)?;
        }
        Ok(())
    }

    /// A request's record: in flight, queued for writing, or stored.
    pub(super) fn find(&self, id: &RequestId) -> Result<Option<HistoryRecord>, QueryError> {
        {
            let mut memory = self.memory.lock();
            memory.settle(self.engine.written_through());
            if let Some(r) = memory.find(id) {
                return Ok(Some(r.clone()));
            }
        }
        let stored = self
            .backend
            .reader()
            .request(id)
            .map_err(QueryError::Store)?;
        Ok(stored.map(|r| as_of(r, self.engine.now())))
    }

    /// Take back the rules, and bring the history up to date: requests
    /// left `Processing` by a stopped service fail as interrupted; on a
    /// local backend, grants that ended while no layer listened are
    /// recorded.
    pub(super) fn restore(&self, restored: Restored) {
        self.rules.lock().rules = restored.rules.into_iter().collect();
        self.fail_interrupted();
        if let Backend::Local(local) = &self.backend {
            self.end_unheld(local);
        }
    }

    /// Requests the store holds as `Processing` that no running instance
    /// will carry out (their queue died with the layer that held it): they
    /// fail.
    pub(super) fn fail_interrupted(&self) {
        const STEP: usize = 1000;
        let now = self.engine.now();
        loop {
            let Ok(stuck) = self.backend.reader().processing(STEP) else {
                return;
            };
            let n = stuck.len();
            let failed = stuck
                .into_iter()
                .map(|r| {
                    let interrupted = Failure::new(FailureKind::Interrupted, INTERRUPTED);
                    finished(r, Err(interrupted), now)
                })
                .collect();
            self.write_records(failed);
            if n < STEP || self.engine.flush().is_err() {
                return;
            }
        }
    }

    /// Record the ends of grants the engine no longer holds: expired ones
    /// as expired, the others as ended outside the request layer.
    fn end_unheld(&self, local: &MemoryStore) {
        let now = self.engine.now();
        let open = local.open_grants();
        let expiry: HashMap<_, _> = open.iter().map(|(g, e)| (g.serial, *e)).collect();
        let gone = self
            .engine
            .not_held(open.into_iter().map(|(g, _)| g).collect());
        let ends: Vec<Change> = gone
            .into_iter()
            .map(|g| {
                let (at, cause) = match expiry.get(&g.serial).copied().flatten() {
                    Some(at) if at <= now => (at, EndCause::Expired),
                    _ => (now, EndCause::Revoked),
                };
                Change::End {
                    grant: g,
                    at,
                    cause,
                }
            })
            .collect();
        local.apply_changes(&ends);
    }
}

impl Drop for SharingInner {
    /// The engine keeps the rules (and a local history) for the next layer.
    fn drop(&mut self) {
        self.engine.unsubscribe(self.subscription);
        let rules = std::mem::take(self.rules.get_mut());
        self.engine.hand_back(Restored {
            rules: rules.rules.into_iter().collect(),
            local: match &self.backend {
                Backend::Local(m) => Some(m.clone()),
                Backend::Store(_) => None,
            },
        });
    }
}

impl Sharing {
    /// How many requests the layer holds in memory: those being carried
    /// out or queued, and finished ones whose record waits for the next
    /// batch. Everything else is in the store, so this stays small
    /// whatever the history's size.
    ///
    /// ```
    /// use grantwheel::requests::{ShareRequest, Sharing};
    /// use grantwheel::{Engine, EntityId, Level, UserId};
    /// let sharing = Sharing::new(Engine::new());
    /// sharing.share(ShareRequest::new(UserId::from_u128(1), EntityId::lead(1), Level::Read));
    /// assert_eq!(sharing.in_memory(), 0);
    /// ```
    pub fn in_memory(&self) -> usize {
        let mut memory = self.inner.memory.lock();
        memory.settle(self.inner.engine.written_through());
        memory.in_flight.len() + memory.unwritten.len()
    }

    /// The status of a request; `None` for an unknown (or pruned) id.
    ///
    /// # Errors
    ///
    /// [`QueryError::Store`] when the store cannot be read.
    pub fn status(&self, id: &RequestId) -> Result<Option<RequestStatus>, QueryError> {
        Ok(self.inner.find(id)?.map(|r| r.status))
    }

    /// The record of one request: from memory while it is in flight, else
    /// from the store.
    ///
    /// # Errors
    ///
    /// [`QueryError::Store`] when the store cannot be read.
    pub fn request(&self, id: &RequestId) -> Result<Option<HistoryRecord>, QueryError> {
        self.inner.find(id)
    }

    /// The share history of `entity`, newest first, filtered and paged:
    /// a query of the store's indexes (see
    /// [`StoreReader::history`] for
    /// what each filter costs).
    ///
    /// ```
    /// use grantwheel::requests::{HistoryQuery, ShareRequest, Sharing, Source};
    /// use grantwheel::{Engine, EntityId, Level, UserId};
    /// let sharing = Sharing::new(Engine::new());
    /// let lead = EntityId::lead(1);
    /// for u in 0..3 {
    ///     sharing.share(ShareRequest::new(UserId::from_u128(u), lead, Level::Read));
    /// }
    /// let page = sharing.history(&lead, &HistoryQuery::default().limit(2)).unwrap();
    /// assert_eq!(page.records.len(), 2);
    /// assert_eq!(page.records[0].user, UserId::from_u128(2), "newest first");
    /// let rest = sharing.history(&lead, &HistoryQuery::default().after(page.next.unwrap())).unwrap();
    /// assert_eq!(rest.records.len(), 1);
    /// ```
    ///
    /// # Errors
    ///
    /// [`QueryError::Invalid`] for a page size outside 1 to 1,000 or a
    /// time range that ends before it starts; [`QueryError::Store`] when
    /// the store cannot be read.
    pub fn history(
        &self,
        entity: &crate::ids::EntityId,
        query: &HistoryQuery,
    ) -> Result<HistoryPage, QueryError> {
        check_query(query)?;
        self.inner.settle_overlay()?;
        let mut page = self
            .inner
            .backend
            .reader()
            .history(entity, query)
            .map_err(QueryError::Store)?;
        let now = self.inner.engine.now();
        page.records = page.records.into_iter().map(|r| as_of(r, now)).collect();
        Ok(page)
    }

    /// The share records of `entity` whose grant was live at `at`: who had
    /// access then.
    ///
    /// # Errors
    ///
    /// [`QueryError::Store`] when the store cannot be read.
    pub fn access_at(
        &self,
        entity: &crate::ids::EntityId,
        at: DateTime<Utc>,
    ) -> Result<Vec<HistoryRecord>, QueryError> {
        self.inner.settle_overlay()?;
        let records = self
            .inner
            .backend
            .reader()
            .access_at(entity, at)
            .map_err(QueryError::Store)?;
        Ok(self.inner.live_at(records, at))
    }

    /// Remove the records whose grants ended, and the failed requests and
    /// revokes, finished longer ago than the retention period, in steps
    /// of at most 1,000 records (one batch each, found through the store's
    /// index of finishing times). Returns how many were removed.
    ///
    /// # Errors
    ///
    /// [`QueryError::Store`] when the store cannot be read or written; the
    /// steps already written stay done.
    pub fn prune(&self) -> Result<usize, QueryError> {
        const STEP: usize = 1000;
        // Ends waiting for the next batch (expirations) make records
        // prunable: write them first.
        self.inner.engine.flush().map_err(QueryError::Store)?;
        let horizon = self.inner.engine.now() - self.inner.config.retention;
        let mut removed = 0;
        loop {
            let old = self
                .inner
                .backend
                .reader()
                .prunable(horizon, STEP)
                .map_err(QueryError::Store)?;
            let n = old.len();
            let forget: Vec<Change> = old.into_iter().map(Change::Forget).collect();
            match &self.inner.backend {
                Backend::Local(m) => m.apply_changes(&forget),
                Backend::Store(_) => self
                    .inner
                    .engine
                    .write_now(forget)
                    .map_err(QueryError::Store)?,
            }
            removed += n;
            if n < STEP {
                return Ok(removed);
            }
        }
    }
}

/// The engine's events, on a layer without a store: end the records of
/// grants that ended (with a store, the store does this from the batch).
pub(super) fn on_event(inner: &SharingInner, event: &Event) {
    let Backend::Local(local) = &inner.backend else {
        return;
    };
    let end = match event {
        Event::Revoked { grant, reason } => Change::End {
            grant: grant.id,
            at: inner.engine.now(),
            cause: match reason {
                RevokeReason::Replaced => EndCause::Replaced,
                RevokeReason::Requested => EndCause::Revoked,
            },
        },
        Event::Expired(grant) => Change::End {
            grant: grant.id,
            at: grant.expires_at,
            cause: EndCause::Expired,
        },
        _ => return,
    };
    local.apply_changes(&[end]);
}

/// The change that names the revoke request that ended a grant.
pub(super) fn ended_by(grant: &Grant, request: RequestId) -> Change {
    Change::EndedBy {
        serial: grant.id.serial,
        request,
    }
}

/// The record of a request whose approval timed out at its deadline.
pub(super) fn timed_out(record: HistoryRecord, deadline: DateTime<Utc>) -> HistoryRecord {
    let failure = Failure::new(
        FailureKind::ApprovalTimedOut,
        format!("no approver acted on this share by {deadline}"),
    );
    finished(record, Err(failure), deadline)
}
