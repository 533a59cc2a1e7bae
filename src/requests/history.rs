//! The share history: records by request, entity and grant, queries,
//! access at an instant, pruning, and the engine events that end records.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::engine::{Grant, Restored};
use crate::error::{InvalidArgument, QueryError, ShareError};
use crate::events::{Event, RevokeReason};
use crate::ids::{EntityId, GrantId, UserId};
use crate::model::history::{
    EndedBy, FailureKind, HistoryRecord, RequestId, RequestKind, RequestStatus, Source, SourceKind,
    StatusKind, INTERRUPTED,
};
use crate::store::{Change, Records};

use super::request::Failure;
use super::{Sharing, SharingInner};

/// Filters and paging of a history query. All filters are optional.
///
/// ```
/// use grantwheel::requests::{HistoryQuery, Source};
/// let q = HistoryQuery::default().source(Source::Api).limit(20);
/// assert_eq!(q.limit, 20);
/// ```
#[must_use = "its setters return the changed value"]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryQuery {
    /// Only requests for this user.
    pub user: Option<UserId>,
    /// Only requests with this status.
    pub status: Option<StatusKind>,
    /// Only requests from this exact source (one rule, say).
    pub source: Option<Source>,
    /// Only requests from this kind of source (any rule, say).
    pub source_kind: Option<SourceKind>,
    /// Only requests made at or after this instant.
    pub from: Option<DateTime<Utc>>,
    /// Only requests made before this instant.
    pub until: Option<DateTime<Utc>>,
    /// At most this many records (1 to 1,000; default 50).
    pub limit: usize,
    /// Continue after this cursor (from the previous page).
    pub after: Option<Cursor>,
}

impl Default for HistoryQuery {
    fn default() -> Self {
        HistoryQuery {
            user: None,
            status: None,
            source: None,
            source_kind: None,
            from: None,
            until: None,
            limit: 50,
            after: None,
        }
    }
}

impl HistoryQuery {
    /// Only requests for `user`.
    pub fn user(mut self, user: UserId) -> Self {
        self.user = Some(user);
        self
    }

    /// Only requests whose status is of this kind.
    pub fn status(mut self, status: StatusKind) -> Self {
        self.status = Some(status);
        self
    }

    /// Only requests from exactly `source`.
    pub fn source(mut self, source: Source) -> Self {
        self.source = Some(source);
        self
    }

    /// Only requests from this kind of source: every automation rule's
    /// requests, say, as the history tab's API / Automation column.
    ///
    /// ```
    /// use grantwheel::requests::{HistoryQuery, SourceKind};
    /// let q = HistoryQuery::default().source_kind(SourceKind::Automation);
    /// assert_eq!(q.source_kind, Some(SourceKind::Automation));
    /// ```
    pub fn source_kind(mut self, kind: SourceKind) -> Self {
        self.source_kind = Some(kind);
        self
    }

    /// Only requests made in `[from, until)`.
    pub fn between(mut self, from: DateTime<Utc>, until: DateTime<Utc>) -> Self {
        self.from = Some(from);
        self.until = Some(until);
        self
    }

    /// Pages of `n` records.
    pub fn limit(mut self, n: usize) -> Self {
        self.limit = n;
        self
    }

    /// The page after `cursor`.
    pub fn after(mut self, cursor: Cursor) -> Self {
        self.after = Some(cursor);
        self
    }

    pub(super) fn check(&self) -> Result<(), InvalidArgument> {
        if self.limit == 0 || self.limit > 1000 {
            return Err(InvalidArgument::new(
                "limit",
                format!("`{}` is not between 1 and 1000", self.limit),
            ));
        }
        if let (Some(f), Some(u)) = (self.from, self.until) {
            if f > u {
                return Err(InvalidArgument::new(
                    "from",
                    format!("`{f}` is after `until` `{u}`"),
                ));
            }
        }
        Ok(())
    }

    pub(super) fn keeps(&self, r: &HistoryRecord) -> bool {
        self.user.is_none_or(|u| u == r.user)
            && self.status.is_none_or(|s| s == r.status.kind())
            && self.source.is_none_or(|s| s == r.source)
            && self.source_kind.is_none_or(|k| k == r.source.kind())
            && self.from.is_none_or(|f| r.created_at >= f)
            && self.until.is_none_or(|u| r.created_at < u)
    }
}

/// Where a history page ended: pass it to the next query.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Cursor(u64);

/// One page of history, newest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryPage {
    /// The records.
    pub records: Vec<HistoryRecord>,
    /// The cursor of the next page, if there are more records.
    pub next: Option<Cursor>,
}

#[derive(Default)]
pub(super) struct History {
    pub(super) next_seq: u64,
    pub(super) records: BTreeMap<u64, HistoryRecord>,
    pub(super) by_request: HashMap<RequestId, u64>,
    /// Idempotency keys.
    pub(super) by_key: HashMap<String, RequestId>,
    pub(super) by_entity: HashMap<EntityId, BTreeSet<u64>>,
    /// Share records of grants that may still be live.
    pub(super) by_grant: HashMap<GrantId, u64>,
    /// End events that arrived before their share record was finished.
    pub(super) early_ends: HashMap<GrantId, (DateTime<Utc>, Option<EndedBy>)>,
}

impl History {
    pub(super) fn add(&mut self, record: HistoryRecord) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.by_request.insert(record.request, seq);
        self.by_entity.entry(record.entity).or_default().insert(seq);
        self.records.insert(seq, record);
        seq
    }

    pub(super) fn end(&mut self, grant: &GrantId, at: DateTime<Utc>, by: Option<EndedBy>) {
        let Some(seq) = self.by_grant.remove(grant) else {
            self.early_ends.insert(*grant, (at, by));
            return;
        };
        if let Some(r) = self.records.get_mut(&seq) {
            match by {
                Some(by) => r.revoked = Some((at, by)),
                None => r.expired_at = Some(at),
            }
        }
    }

    pub(super) fn finish_share(&mut self, seq: u64, grant: &Grant, at: DateTime<Utc>) {
        if let Some(r) = self.records.get_mut(&seq) {
            r.status = RequestStatus::Completed;
            r.completed_at = Some(at);
            r.grant = Some(grant.id);
            r.expires_at = Some(grant.expires_at);
        }
        match self.early_ends.remove(&grant.id) {
            Some((t, by)) => {
                self.by_grant.insert(grant.id, seq);
                self.end(&grant.id, t, by);
            }
            None => {
                self.by_grant.insert(grant.id, seq);
            }
        }
    }

    pub(super) fn finish(&mut self, seq: u64, status: RequestStatus, at: DateTime<Utc>) {
        if let Some(r) = self.records.get_mut(&seq) {
            r.status = status;
            r.completed_at = Some(at);
        }
    }

    /// The write that stores a record as it now stands.
    pub(super) fn change(&self, seq: u64) -> Option<Change> {
        self.records.get(&seq).map(|r| Change::Record {
            seq,
            record: Box::new(r.clone()),
        })
    }

    /// Rebuild from stored records. Returns the sequence numbers of the
    /// records it changed (unfinished requests, now failed).
    pub(super) fn restore(
        &mut self,
        records: Vec<(u64, HistoryRecord)>,
        now: DateTime<Utc>,
    ) -> Vec<u64> {
        let mut changed = Vec::new();
        for (seq, mut record) in records {
            if record.status == RequestStatus::Processing {
                record.status = RequestStatus::Failed {
                    kind: FailureKind::Interrupted,
                    reason: INTERRUPTED.into(),
                };
                record.completed_at = Some(now);
                changed.push(seq);
            }
            self.next_seq = self.next_seq.max(seq + 1);
            self.by_request.insert(record.request, seq);
            if let Some(key) = &record.idempotency_key {
                self.by_key.insert(key.clone(), record.request);
            }
            self.by_entity.entry(record.entity).or_default().insert(seq);
            if record.kind == RequestKind::Share
                && record.status == RequestStatus::Completed
                && record.ended_at().is_none()
            {
                if let Some(g) = record.grant {
                    self.by_grant.insert(g, seq);
                }
            }
            self.records.insert(seq, record);
        }
        changed
    }
}

/// The write of a share's finished record, made in the grant's batch.
pub(super) fn record_then(
    seq: u64,
    pending: Option<HistoryRecord>,
) -> impl FnOnce(&Result<Grant, ShareError>, DateTime<Utc>) -> Vec<Change> + Send + 'static {
    move |result, at| {
        pending
            .map(|r| Change::Record {
                seq,
                record: Box::new(finished(r, result.as_ref().map_err(Failure::from), at)),
            })
            .into_iter()
            .collect()
    }
}

/// The finished form of a record, as written with its grant.
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
        }
        Err(failure) => record.status = failure.status(),
    }
    record
}

impl SharingInner {
    /// Take back history and rules, and finish the records of grants that
    /// ended while no layer listened: expired ones as expired, the others
    /// as ended outside the request layer.
    pub(super) fn restore(&self, restored: Restored) {
        let now = self.engine.now();
        let (mut changed, open) = {
            let mut history = self.history.lock();
            let changed = history.restore(restored.records.history, now);
            let open: Vec<GrantId> = history.by_grant.keys().copied().collect();
            (changed, open)
        };
        let gone = self.engine.not_held(open);
        let mut history = self.history.lock();
        for grant in gone {
            let Some(seq) = history.by_grant.get(&grant).copied() else {
                continue; // its end event came meanwhile
            };
            let expires = history.records.get(&seq).and_then(|r| r.expires_at);
            match expires {
                Some(at) if at <= now => history.end(&grant, at, None),
                _ => history.end(&grant, now, Some(EndedBy::Engine)),
            }
            changed.push(seq);
        }
        let writes: Vec<Change> = changed.iter().filter_map(|s| history.change(*s)).collect();
        drop(history);
        self.engine.write_later(writes);
        let mut rules = self.rules.lock();
        for (id, rule) in restored.records.rules {
            rules.next = rules.next.max(id.0);
            rules.rules.insert(id, rule);
        }
    }
}

impl Drop for SharingInner {
    /// The engine keeps the history and rules for the next layer.
    fn drop(&mut self) {
        self.engine.unsubscribe(self.subscription);
        let history = std::mem::take(self.history.get_mut());
        let rules = std::mem::take(self.rules.get_mut());
        self.engine.hand_back(Restored {
            records: Records {
                history: history.records.into_iter().collect(),
                rules: rules.rules.into_iter().collect(),
            },
        });
    }
}

impl Sharing {
    /// The status of a request; `None` for an unknown (or pruned) id.
    pub fn status(&self, id: &RequestId) -> Option<RequestStatus> {
        let history = self.inner.history.lock();
        let seq = history.by_request.get(id)?;
        history.records.get(seq).map(|r| r.status.clone())
    }

    /// The record of one request.
    pub fn request(&self, id: &RequestId) -> Option<HistoryRecord> {
        let history = self.inner.history.lock();
        let seq = history.by_request.get(id)?;
        history.records.get(seq).cloned()
    }

    /// The share history of `entity`, newest first, filtered and paged.
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
    pub fn history(
        &self,
        entity: &EntityId,
        query: &HistoryQuery,
    ) -> Result<HistoryPage, QueryError> {
        query.check()?;
        let history = self.inner.history.lock();
        let Some(seqs) = history.by_entity.get(entity) else {
            return Ok(HistoryPage {
                records: Vec::new(),
                next: None,
            });
        };
        let upper = query.after.map_or(u64::MAX, |c| c.0);
        let mut records = Vec::new();
        let mut next = None;
        for seq in seqs.range(..upper).rev() {
            let Some(r) = history.records.get(seq) else {
                continue;
            };
            if !query.keeps(r) {
                continue;
            }
            if records.len() == query.limit {
                // The next page starts at this record.
                next = Some(Cursor(*seq + 1));
                break;
            }
            records.push(r.clone());
        }
        Ok(HistoryPage { records, next })
    }

    /// The share records of `entity` whose grant was live at `at`: who had
    /// access then.
    pub fn access_at(&self, entity: &EntityId, at: DateTime<Utc>) -> Vec<HistoryRecord> {
        let history = self.inner.history.lock();
        let Some(seqs) = history.by_entity.get(entity) else {
            return Vec::new();
        };
        seqs.iter()
            .rev()
            .filter_map(|s| history.records.get(s))
            .filter(|r| r.gave_access_at(at))
            .cloned()
            .collect()
    }

    /// Remove the records whose grants ended, and the failed requests and
    /// revokes, finished longer ago than the retention period. Returns how
    /// many were removed.
    pub fn prune(&self) -> usize {
        let horizon = self.inner.engine.now() - self.inner.config.retention;
        let mut history = self.inner.history.lock();
        let old: Vec<u64> = history
            .records
            .iter()
            .filter(|(_, r)| {
                let done = match r.kind {
                    RequestKind::Share if r.status == RequestStatus::Completed => r.ended_at(),
                    _ => r.completed_at,
                };
                done.is_some_and(|t| t < horizon)
            })
            .map(|(s, _)| *s)
            .collect();
        let mut forget = Vec::with_capacity(old.len());
        for seq in &old {
            if let Some(r) = history.records.remove(seq) {
                forget.push(Change::Forget(r.request));
                history.by_request.remove(&r.request);
                if let Some(key) = &r.idempotency_key {
                    history.by_key.remove(key);
                }
                if let Some(set) = history.by_entity.get_mut(&r.entity) {
                    set.remove(seq);
                    if set.is_empty() {
                        history.by_entity.remove(&r.entity);
                    }
                }
            }
        }
        drop(history);
        self.inner.engine.write_later(forget);
        old.len()
    }
}

pub(super) fn on_event(inner: &SharingInner, event: &Event) {
    let now = inner.engine.now();
    match event {
        Event::Revoked { grant, reason } => {
            let by = match reason {
                RevokeReason::Replaced => EndedBy::Replaced,
                RevokeReason::Requested => inner
                    .revoking
                    .lock()
                    .remove(&(grant.id.user, grant.id.entity, grant.id.context))
                    .map_or(EndedBy::Engine, EndedBy::Request),
            };
            end_record(inner, &grant.id, now, Some(by));
        }
        Event::Expired(grant) => end_record(inner, &grant.id, grant.expires_at, None),
        _ => {}
    }
}

/// Record that a grant ended, and queue the record's write.
pub(super) fn end_record(
    inner: &SharingInner,
    grant: &GrantId,
    at: DateTime<Utc>,
    by: Option<EndedBy>,
) {
    let mut history = inner.history.lock();
    let seq = history.by_grant.get(grant).copied();
    history.end(grant, at, by);
    let write = seq.and_then(|s| history.change(s));
    drop(history);
    inner.engine.write_later(write);
}
