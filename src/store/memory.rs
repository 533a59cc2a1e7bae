//! A store that keeps everything in memory.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use parking_lot::Mutex;

use super::{Batch, Change, EndCause, GrantFilter, Meta, Store, StoreError, StoreReader};
use crate::ids::{EntityId, GrantId, UserId};
use crate::model::grant::Grant;
use crate::model::history::{
    Cursor, EndedBy, HistoryPage, HistoryQuery, HistoryRecord, RequestId, RequestKind,
    RequestStatus, RuleId, Source,
};
use crate::model::rule::Rule;

/// A history record as stored: the record, and the revoke request that
/// ended its grant when [`Change::EndedBy`] named one.
#[derive(Debug, Clone)]
struct Stored {
    record: HistoryRecord,
    ended_by: Option<RequestId>,
}

#[derive(Debug, Default)]
struct State {
    meta: Meta,
    grants: BTreeMap<u64, Grant>,
    /// History records by place in the history order.
    history: BTreeMap<u64, Stored>,
    /// The place the next new record takes.
    next_place: u64,
    places: HashMap<RequestId, u64>,
    keys: HashMap<String, u64>,
    by_entity: HashMap<EntityId, BTreeSet<u64>>,
    /// Records by their user (the user's audit).
    by_user: HashMap<UserId, BTreeSet<u64>>,
    /// Share records by their grant's serial.
    by_grant: HashMap<u64, u64>,
    rules: BTreeMap<RuleId, Rule>,
    batches: u64,
}

/// A store in memory: no durability across processes, but an engine built
/// again over a clone starts from the state the last one left, which is
/// what tests of restarts need. Clones share the state. It answers every
/// query of [`StoreReader`] with the same results as the durable stores
/// (by scanning where they use an index: it is meant for tests and small
/// hosts that want no durability).
///
/// ```
/// use grantwheel::store::MemoryStore;
/// use grantwheel::{Context, Engine, EntityId, Expiry, Level, UserId};
///
/// let store = MemoryStore::new();
/// let (u, e) = (UserId::from_u128(1), EntityId::lead(7));
/// let engine = Engine::builder().store(store.clone()).build().unwrap();
/// engine.share(u, e, Context::Direct, Level::Read, Expiry::Default).unwrap();
/// drop(engine);
///
/// let again = Engine::builder().store(store).build().unwrap();
/// assert!(again.can_read(&u, &e));
/// ```
#[derive(Clone, Debug, Default)]
pub struct MemoryStore {
    state: Arc<Mutex<State>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryStore::default()
    }

    /// The live grants stored, by serial.
    pub fn stored_grants(&self) -> Vec<Grant> {
        self.state.lock().grants.values().copied().collect()
    }

    /// How many batches were applied (replays not counted).
    pub fn batches(&self) -> u64 {
        self.state.lock().batches
    }

    /// How many history records are stored.
    pub fn history_len(&self) -> usize {
        self.state.lock().history.len()
    }

    /// Apply changes outside any batch: the request layer of an engine
    /// without a store keeps its history this way.
    pub(crate) fn apply_changes(&self, changes: &[Change]) {
        let mut st = self.state.lock();
        for change in changes {
            st.apply_one(change);
        }
    }

    /// The grants of completed share records whose end is not recorded,
    /// with their expiry.
    pub(crate) fn open_grants(&self) -> Vec<(GrantId, Option<DateTime<Utc>>)> {
        let st = self.state.lock();
        st.by_grant
            .values()
            .filter_map(|place| st.history.get(place))
            .filter(|s| is_open_share(&s.record))
            .filter_map(|s| s.record.grant.map(|g| (g, s.record.expires_at)))
            .collect()
    }
}

fn is_open_share(r: &HistoryRecord) -> bool {
    r.kind == RequestKind::Share
        && r.status == RequestStatus::Completed
        && r.grant.is_some()
        && r.ended_at().is_none()
}

/// When retention may remove a record: the end of a completed share's
/// grant (recorded, else its expiry), else when the request finished.
fn done_at(r: &HistoryRecord) -> Option<DateTime<Utc>> {
    match (r.kind, &r.status) {
        (RequestKind::Share, RequestStatus::Completed) => r.ended_at().or(r.expires_at),
        (_, RequestStatus::Processing) => None,
        _ => r.completed_at,
    }
}

impl State {
    fn apply_one(&mut self, change: &Change) {
        match change {
            Change::Put(g) => {
                self.grants.insert(g.id.serial, *g);
            }
            Change::End { grant, at, cause } => {
                self.grants.remove(&grant.serial);
                self.end_record(grant.serial, *at, *cause);
            }
            Change::EndedBy { serial, request } => {
                if let Some(s) = self.share_of(*serial) {
                    s.ended_by = Some(*request);
                    if let Some((t, EndedBy::Engine)) = s.record.revoked {
                        s.record.revoked = Some((t, EndedBy::Request(*request)));
                    }
                }
            }
            Change::Record(record) => self.put_record(record),
            Change::Forget(request) => self.forget(request),
            Change::Rule { id, rule } => {
                self.rules.insert(*id, (**rule).clone());
            }
            Change::RemoveRule(id) => {
                self.rules.remove(id);
            }
        }
    }

    fn share_of(&mut self, serial: u64) -> Option<&mut Stored> {
        let place = *self.by_grant.get(&serial)?;
        self.history.get_mut(&place)
    }

    fn end_record(&mut self, serial: u64, at: DateTime<Utc>, cause: EndCause) {
        let Some(s) = self.share_of(serial) else {
            return;
        };
        if s.record.ended_at().is_some() {
            return;
        }
        match cause {
            // Not recorded: readers compare `expires_at` with their time.
            EndCause::Expired => {}
            EndCause::Replaced => s.record.revoked = Some((at, EndedBy::Replaced)),
            EndCause::Revoked => {
                let by = s.ended_by.map_or(EndedBy::Engine, EndedBy::Request);
                s.record.revoked = Some((at, by));
            }
        }
    }

    fn put_record(&mut self, record: &HistoryRecord) {
        let mut record = record.clone();
        let place = match self.places.get(&record.request) {
            Some(place) => {
                if let Some(old) = self.history.get(place) {
                    if record.ended_at().is_none() {
                        record.revoked = old.record.revoked;
                        record.expired_at = old.record.expired_at;
                    }
                }
                *place
            }
            None => {
                let place = self.next_place;
                self.next_place += 1;
                self.places.insert(record.request, place);
                self.by_entity
                    .entry(record.entity)
                    .or_default()
                    .insert(place);
                self.by_user.entry(record.user).or_default().insert(place);
                place
            }
        };
        if let Some(key) = &record.idempotency_key {
            self.keys.insert(key.clone(), place);
        }
        if let (RequestKind::Share, Some(g)) = (record.kind, record.grant) {
            self.by_grant.insert(g.serial, place);
        }
        let ended_by = self.history.get(&place).and_then(|s| s.ended_by);
        if let (Some(by), Some((t, EndedBy::Engine))) = (ended_by, record.revoked) {
            record.revoked = Some((t, EndedBy::Request(by)));
        }
        self.history.insert(place, Stored { record, ended_by });
    }

    fn forget(&mut self, request: &RequestId) {
        let Some(place) = self.places.remove(request) else {
            return;
        };
        let Some(s) = self.history.remove(&place) else {
            return;
        };
        let r = s.record;
        if let Some(key) = &r.idempotency_key {
            if self.keys.get(key) == Some(&place) {
                self.keys.remove(key);
            }
        }
        if let Some(g) = r.grant {
            if self.by_grant.get(&g.serial) == Some(&place) {
                self.by_grant.remove(&g.serial);
            }
        }
        if let Some(set) = self.by_entity.get_mut(&r.entity) {
            set.remove(&place);
            if set.is_empty() {
                self.by_entity.remove(&r.entity);
            }
        }
        if let Some(set) = self.by_user.get_mut(&r.user) {
            set.remove(&place);
            if set.is_empty() {
                self.by_user.remove(&r.user);
            }
        }
    }

    /// The records at `places` (an index's set) whose grant was live at
    /// `at`, newest first.
    fn live_at(&self, places: Option<&BTreeSet<u64>>, at: DateTime<Utc>) -> Vec<HistoryRecord> {
        places
            .into_iter()
            .flatten()
            .rev()
            .filter_map(|p| self.record_at(*p))
            .filter(|r| r.gave_access_at(at))
            .cloned()
            .collect()
    }

    fn record_at(&self, place: u64) -> Option<&HistoryRecord> {
        self.history.get(&place).map(|s| &s.record)
    }
}

impl Store for MemoryStore {
    fn meta(&mut self) -> Result<Meta, StoreError> {
        Ok(self.state.lock().meta)
    }

    fn grants(&mut self, each: &mut dyn FnMut(Grant)) -> Result<(), StoreError> {
        let grants: Vec<Grant> = self.stored_grants();
        grants.into_iter().for_each(each);
        Ok(())
    }

    fn rules(&mut self) -> Result<Vec<(RuleId, Rule)>, StoreError> {
        let st = self.state.lock();
        Ok(st.rules.iter().map(|(id, r)| (*id, r.clone())).collect())
    }

    fn apply(&mut self, batch: &Batch<'_>) -> Result<(), StoreError> {
        let mut st = self.state.lock();
        if batch.seq <= st.meta.last_seq {
            return Ok(());
        }
        for change in batch.changes {
            st.apply_one(change);
        }
        st.meta.last_seq = batch.seq;
        st.meta.next_serial = st.meta.next_serial.max(batch.next_serial);
        st.meta.clock = st.meta.clock.max(Some(batch.clock));
        st.batches += 1;
        Ok(())
    }

    fn reader(&self) -> Result<Arc<dyn StoreReader>, StoreError> {
        Ok(Arc::new(self.clone()))
    }
}

impl StoreReader for MemoryStore {
    fn request(&self, id: &RequestId) -> Result<Option<HistoryRecord>, StoreError> {
        let st = self.state.lock();
        Ok(st.places.get(id).and_then(|p| st.record_at(*p)).cloned())
    }

    fn request_by_key(&self, key: &str) -> Result<Option<HistoryRecord>, StoreError> {
        let st = self.state.lock();
        Ok(st.keys.get(key).and_then(|p| st.record_at(*p)).cloned())
    }

    fn history(&self, entity: &EntityId, query: &HistoryQuery) -> Result<HistoryPage, StoreError> {
        let st = self.state.lock();
        let mut records = Vec::new();
        let mut next = None;
        if let Some(places) = st.by_entity.get(entity) {
            let upper = query.after.map_or(u64::MAX, |c| c.place());
            let mut last = None;
            for place in places.range(..upper).rev() {
                let Some(r) = st.record_at(*place) else {
                    continue;
                };
                if !query.keeps(r) {
                    continue;
                }
                if records.len() == query.limit {
                    next = last.map(Cursor::before);
                    break;
                }
                records.push(r.clone());
                last = Some(*place);
            }
        }
        Ok(HistoryPage { records, next })
    }

    fn access_at(
        &self,
        entity: &EntityId,
        at: DateTime<Utc>,
    ) -> Result<Vec<HistoryRecord>, StoreError> {
        let st = self.state.lock();
        Ok(st.live_at(st.by_entity.get(entity), at))
    }

    fn processing(&self, limit: usize) -> Result<Vec<HistoryRecord>, StoreError> {
        let st = self.state.lock();
        Ok(st
            .history
            .values()
            .map(|s| &s.record)
            .filter(|r| r.status == RequestStatus::Processing && !r.awaiting_approval())
            .take(limit)
            .cloned()
            .collect())
    }

    fn share_of_grant(&self, serial: u64) -> Result<Option<HistoryRecord>, StoreError> {
        let st = self.state.lock();
        Ok(st
            .by_grant
            .get(&serial)
            .and_then(|p| st.record_at(*p))
            .cloned())
    }

    fn awaiting_approval(&self, limit: usize) -> Result<Vec<HistoryRecord>, StoreError> {
        let st = self.state.lock();
        let mut waiting: Vec<(DateTime<Utc>, u64, &HistoryRecord)> = st
            .history
            .iter()
            .filter_map(|(place, s)| {
                let deadline = s.record.approval.as_ref()?.deadline;
                s.record
                    .awaiting_approval()
                    .then_some((deadline, *place, &s.record))
            })
            .collect();
        waiting.sort_by_key(|(d, p, _)| (*d, *p));
        Ok(waiting
            .into_iter()
            .take(limit)
            .map(|(_, _, r)| r.clone())
            .collect())
    }

    fn held_at(&self, user: &UserId, at: DateTime<Utc>) -> Result<Vec<HistoryRecord>, StoreError> {
        let st = self.state.lock();
        Ok(st.live_at(st.by_user.get(user), at))
    }

    fn open_shares_of_rule(
        &self,
        rule: RuleId,
        now: DateTime<Utc>,
    ) -> Result<Vec<HistoryRecord>, StoreError> {
        let st = self.state.lock();
        Ok(st
            .history
            .values()
            .map(|s| &s.record)
            .filter(|r| r.source == Source::Automation { rule } && is_open_share(r))
            .filter(|r| r.expires_at.is_some_and(|t| t > now))
            .cloned()
            .collect())
    }

    fn prunable(&self, horizon: DateTime<Utc>, limit: usize) -> Result<Vec<RequestId>, StoreError> {
        let st = self.state.lock();
        let mut old: Vec<(DateTime<Utc>, u64, RequestId)> = st
            .history
            .iter()
            .filter_map(|(place, s)| {
                let done = done_at(&s.record)?;
                (done < horizon).then_some((done, *place, s.record.request))
            })
            .collect();
        old.sort();
        Ok(old.into_iter().take(limit).map(|(_, _, id)| id).collect())
    }

    fn live_grants(
        &self,
        filter: GrantFilter,
        now: DateTime<Utc>,
    ) -> Result<Vec<Grant>, StoreError> {
        let st = self.state.lock();
        let mut out: Vec<Grant> = st
            .grants
            .values()
            .filter(|g| g.expires_at > now && selects(&filter, g))
            .copied()
            .collect();
        out.sort_by_key(|g| (g.expires_at, g.id.serial));
        Ok(out)
    }
}

/// Whether `filter` selects `g` (expiry after now aside).
fn selects(filter: &GrantFilter, g: &Grant) -> bool {
    match filter {
        GrantFilter::User(u) => g.id.user == *u,
        GrantFilter::Entity(e) => g.id.entity == *e,
        GrantFilter::Context(c) => g.id.context == *c,
        GrantFilter::ExpiringBy(until) => g.expires_at <= *until,
    }
}
