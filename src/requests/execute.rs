//! Carrying out requests: recorded first, checked by the host's policy
//! hooks, run on the engine, then finished in the history.

use chrono::{DateTime, Utc};

use crate::engine::{Expiry, Grant, ShareSpec, Transaction};
use crate::error::NotDurable;
use crate::ids::{Context, EntityId, Level, UserId};
use crate::model::grant::Start;
use crate::model::history::{FailureKind, HistoryRecord, RequestId, RequestKind, RequestStatus};
use crate::store::Change;

use super::history::{ended_by, finished, Backend};
use super::request::{Command, Failure, Outcome, RevokeRequest, ShareRequest, Submission};
use super::Sharing;

/// Confirms a share's context before the grant is made. The host
/// implements it over its own records.
///
/// For a lead shared through an activity: the activity exists, belongs to
/// the lead, and its owner is the grantee. For an opportunity: also that
/// the grantee is not the opportunity's owner. Without a resolver, contexts
/// are accepted as given.
pub trait ContextResolver: Send + Sync + 'static {
    /// `Ok(())` to accept; `Err(reason)` to fail the request with that
    /// reason and create no grant.
    fn check(&self, user: &UserId, entity: &EntityId, context: &Context) -> Result<(), String>;
}

/// Says which grantors may give access beyond their own (owners, admins).
pub trait GrantorPolicy: Send + Sync + 'static {
    /// Whether `grantor` may share `entity` without delegation limits.
    fn is_privileged(&self, grantor: &UserId, entity: &EntityId) -> bool;
}

/// How [`Sharing::begin`] found a submission.
pub(super) enum Begun {
    /// A new request, in flight from now on (its record `Processing`).
    New(HistoryRecord),
    /// A request that carried the same idempotency key before.
    Seen(RequestId),
    /// A new request whose idempotency key could not be checked (the store
    /// could not be read): it fails without being carried out.
    Unchecked(HistoryRecord, Failure),
}

impl Sharing {
    /// Start a request: find the request that already carries its
    /// idempotency key (in flight, waiting for its batch, or stored), or
    /// put a new one in flight as `Processing`.
    pub(super) fn begin(&self, sub: &Submission) -> Begun {
        let mut memory = self.inner.memory.lock();
        let mut unchecked = None;
        if let Some(key) = &sub.idempotency_key {
            if let Some(id) = memory.keys.get(key) {
                return Begun::Seen(*id);
            }
            let waiting = memory
                .unwritten
                .values()
                .find(|(_, r)| r.idempotency_key.as_ref() == Some(key));
            if let Some((_, r)) = waiting {
                return Begun::Seen(r.request);
            }
            // Under the memory lock: two requests with one key never both
            // miss each other.
            match self.inner.backend.reader().request_by_key(key) {
                Ok(Some(r)) => return Begun::Seen(r.request),
                Ok(None) => {}
                Err(e) => {
                    unchecked = Some(Failure::new(
                        FailureKind::Store,
                        format!("the idempotency key could not be checked: {e}"),
                    ))
                }
            }
        }
        let (kind, req) = match &sub.command {
            Command::Share(r) => (RequestKind::Share, r.clone()),
            Command::Revoke(r) => (
                RequestKind::Revoke,
                ShareRequest::new(r.user, r.entity, r.level).context(r.context),
            ),
        };
        let record = HistoryRecord {
            request: RequestId::random(),
            kind,
            entity: req.entity,
            user: req.user,
            context: req.context,
            level: req.level,
            duration: req.duration,
            expires_at: None,
            source: sub.source,
            status: RequestStatus::Processing,
            grant: None,
            created_at: self.inner.engine.now(),
            completed_at: None,
            revoked: None,
            expired_at: None,
            idempotency_key: sub.idempotency_key.clone(),
            starts_at: requested_start(self.inner.engine.now(), req.start),
            granted_by: sub.granted_by,
            approval: None,
            end_reason: None,
        };
        if let Some(failure) = unchecked {
            return Begun::Unchecked(record, failure);
        }
        memory.in_flight.insert(record.request, record.clone());
        if let Some(key) = &sub.idempotency_key {
            memory.keys.insert(key.clone(), record.request);
        }
        Begun::New(record)
    }

    /// The outcome of a request already on record (`Processing` if it
    /// cannot be read now).
    pub(super) fn outcome_of(&self, request: RequestId) -> Outcome {
        let status = self.inner.find(&request).ok().flatten().map(|r| r.status);
        Outcome {
            request,
            status: status.unwrap_or(RequestStatus::Processing),
            grant: None,
        }
    }

    /// Carry out a request in flight and finish its record.
    pub(super) fn execute(&self, record: HistoryRecord, sub: &Submission) -> Outcome {
        match &sub.command {
            Command::Share(req) => match self.prepare_share(req, sub.granted_by.as_ref()) {
                Ok(plan) => match self.approval_for(req, &sub.source) {
                    Some(approval) => self.hold(record, approval),
                    None => {
                        let request = record.request;
                        // One outcome per item: never empty.
                        let mut one = self.run_shares_decided(vec![(record, plan)]);
                        one.pop().unwrap_or_else(|| self.outcome_of(request))
                    }
                },
                Err(failure) => self.conclude(record, Err(failure), false),
            },
            Command::Revoke(req) => self.execute_revoke(record, req),
        }
    }

    /// The idempotency key a decision must check again under the engine's
    /// lock: over a shared store another instance may have carried it
    /// since [`begin`](Self::begin) looked.
    fn key_to_recheck(&self, record: &HistoryRecord) -> Option<String> {
        record
            .idempotency_key
            .clone()
            .filter(|_| self.inner.engine.is_shared())
    }

    /// Finish a request: its record is written (`written`: the engine's
    /// batch carried it already), and it is no longer in flight.
    pub(super) fn conclude(
        &self,
        record: HistoryRecord,
        result: Result<Grant, Failure>,
        written: bool,
    ) -> Outcome {
        let now = self.inner.engine.now();
        let request = record.request;
        let key = record.idempotency_key.clone();
        let done = finished(record, result.as_ref().map_err(Clone::clone), now);
        let status = done.status.clone();
        if !written {
            self.inner.write_records(vec![done]);
        }
        self.no_longer_in_flight(request, key.as_deref());
        Outcome {
            request,
            status,
            grant: result.ok(),
        }
    }

    /// Forget a request in flight, and its idempotency key if the key is
    /// still its own.
    pub(super) fn no_longer_in_flight(&self, request: RequestId, key: Option<&str>) {
        let mut memory = self.inner.memory.lock();
        memory.in_flight.remove(&request);
        if let Some(key) = key {
            if memory.keys.get(key) == Some(&request) {
                memory.keys.remove(key);
            }
        }
    }

    /// Run share requests together: checked one by one, carried out in
    /// one engine batch (with a durable engine, one transaction, which also
    /// carries the records of those refused before it). Outcomes in order.
    pub(super) fn run_shares(&self, subs: Vec<Submission>) -> Vec<Outcome> {
        let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(subs.len());
        let mut batch = Vec::new();
        let mut places = Vec::new();
        for sub in &subs {
            let record = match self.begin(sub) {
                Begun::Seen(request) => {
                    outcomes.push(Some(self.outcome_of(request)));
                    continue;
                }
                Begun::Unchecked(record, failure) => {
                    outcomes.push(Some(self.conclude(record, Err(failure), false)));
                    continue;
                }
                Begun::New(record) => record,
            };
            let Command::Share(req) = &sub.command else {
                outcomes.push(Some(self.execute(record, sub)));
                continue;
            };
            match self.prepare_share(req, sub.granted_by.as_ref()) {
                Ok(plan) => match self.approval_for(req, &sub.source) {
                    Some(approval) => outcomes.push(Some(self.hold(record, approval))),
                    None => {
                        batch.push((record, plan));
                        places.push(outcomes.len());
                        outcomes.push(None);
                    }
                },
                Err(reason) => outcomes.push(Some(self.conclude(record, Err(reason), false))),
            }
        }
        for (at, outcome) in places.into_iter().zip(self.run_shares_decided(batch)) {
            if let Some(slot) = outcomes.get_mut(at) {
                *slot = Some(outcome);
            }
        }
        outcomes.into_iter().flatten().collect()
    }

    /// Decide and carry out prepared shares in one engine batch, under its
    /// lock: each item's idempotency key (over a shared store) and
    /// delegation limits are checked on the state the share is made on,
    /// and its finished record goes in the same batch. Outcomes in order.
    fn run_shares_decided(&self, items: Vec<(HistoryRecord, SharePlan)>) -> Vec<Outcome> {
        if items.is_empty() {
            return Vec::new();
        }
        let backend = self.inner.backend.clone();
        let records: Vec<HistoryRecord> = items.iter().map(|(r, _)| r.clone()).collect();
        let items: Vec<_> = items
            .into_iter()
            .map(|(record, plan)| (self.key_to_recheck(&record), record, plan))
            .collect();
        let (decided, batch) = self.inner.engine.transact(move |d| {
            items
                .into_iter()
                .map(|(recheck, record, plan)| decide_share(d, &backend, recheck, record, plan))
                .collect::<Vec<_>>()
        });
        let decided = decided.unwrap_or_else(|| records.iter().map(|_| Decided::Lost).collect());
        records
            .into_iter()
            .zip(decided)
            .map(|(record, decided)| match (decided, &batch) {
                (Decided::Lost, _) => self.conclude(record, Err(lost()), false),
                (Decided::Seen(request), _) => self.abandon(record, request),
                (Decided::Done(result), Ok(())) => self.conclude(record, result, true),
                (Decided::Done(Ok(_)), Err(e)) => {
                    let failure = Failure::from(&crate::error::ShareError::Store(e.clone()));
                    self.conclude(record, Err(failure), false)
                }
                (Decided::Done(Err(failure)), Err(_)) => self.conclude(record, Err(failure), false),
            })
            .collect()
    }

    /// A request found, under the engine's lock, to carry an idempotency
    /// key another request carried first: it is not carried out and leaves
    /// no record; the first request answers for it.
    fn abandon(&self, record: HistoryRecord, first: RequestId) -> Outcome {
        self.no_longer_in_flight(record.request, record.idempotency_key.as_deref());
        self.outcome_of(first)
    }

    /// The checks before a share reaches the engine's lock: the context
    /// resolver, and whether the grantor is privileged (both the host's
    /// code, never called under the engine's lock).
    pub(super) fn prepare_share(
        &self,
        req: &ShareRequest,
        granted_by: Option<&UserId>,
    ) -> Result<SharePlan, Failure> {
        if let Some(resolver) = &self.inner.resolver {
            resolver
                .check(&req.user, &req.entity, &req.context)
                .map_err(|reason| {
                    Failure::new(
                        FailureKind::ContextRefused,
                        format!("context refused: {reason}"),
                    )
                })?;
        }
        let delegate = granted_by.copied().filter(|grantor| {
            !self
                .inner
                .grantor_policy
                .as_ref()
                .is_some_and(|p| p.is_privileged(grantor, &req.entity))
        });
        Ok(SharePlan {
            req: req.clone(),
            delegate,
        })
    }

    /// Revoke through the engine, in one batch with the request's record
    /// and the name of the request on the ended grant's record.
    pub(super) fn execute_revoke(&self, record: HistoryRecord, req: &RevokeRequest) -> Outcome {
        let none = move || {
            Failure::new(
                FailureKind::NotFound,
                format!(
                    "no live grant of `{}` for user `{}` through this context",
                    req.entity, req.user
                ),
            )
        };
        let none_reason = none();
        let backend = self.inner.backend.clone();
        let recheck = self.key_to_recheck(&record);
        let (req2, pending) = (*req, record.clone());
        let (decided, batch) = self.inner.engine.transact(move |d| {
            if let Some(first) =
                recheck.and_then(|key| seen_before(&backend, &key, pending.request))
            {
                return Decided::Seen(first);
            }
            let request = pending.request;
            let grant = d.revoke_via(&req2.user, &req2.entity, &req2.context);
            let result = grant.ok_or(none_reason);
            let mut changes = vec![Change::Record(Box::new(finished(
                pending,
                result.as_ref().map_err(Clone::clone),
                d.now(),
            )))];
            if let Ok(g) = &result {
                changes.push(ended_by(g, request));
            }
            // A revoke stands even if its batch fails, and so does its
            // record: it is written with the next batch.
            d.keep(backend.in_batch(changes));
            Decided::Done(result)
        });
        match (decided.unwrap_or(Decided::Lost), batch) {
            (Decided::Lost, _) => self.conclude(record, Err(lost()), false),
            (Decided::Seen(first), _) => self.abandon(record, first),
            (Decided::Done(result), Ok(())) => self.conclude(record, result, true),
            (Decided::Done(result), Err(source)) => {
                let e = NotDurable {
                    revoked: result.into_iter().collect(),
                    source,
                };
                self.conclude(record, Err(Failure::from(&e)), false)
            }
        }
    }

    /// Carry out one request now; it is finished when this returns. A
    /// request whose idempotency key was seen before is not carried out
    /// again: the earlier request's id and status are returned.
    ///
    /// ```
    /// use grantwheel::requests::{Command, ShareRequest, Sharing, Submission};
    /// use grantwheel::{Engine, EntityId, Level, UserId};
    /// let sharing = Sharing::new(Engine::new());
    /// let share = ShareRequest::new(UserId::from_u128(1), EntityId::lead(1), Level::Read);
    /// let first = sharing.run(Submission::direct(Command::Share(share.clone())).key("k-1"));
    /// let again = sharing.run(Submission::direct(Command::Share(share)).key("k-1"));
    /// assert_eq!(first.request, again.request);
    /// assert_eq!(sharing.engine().len(), 1);
    /// ```
    pub fn run(&self, sub: Submission) -> Outcome {
        match self.begin(&sub) {
            Begun::New(record) => self.execute(record, &sub),
            Begun::Seen(request) => self.outcome_of(request),
            Begun::Unchecked(record, failure) => self.conclude(record, Err(failure), false),
        }
    }

    /// Share now, as a direct call; the request is finished when this
    /// returns.
    pub fn share(&self, req: ShareRequest) -> Outcome {
        self.run(Submission::direct(Command::Share(req)))
    }

    /// Revoke now, as a direct call: the grant of (user, entity) through the
    /// request's context. Grants through other contexts stay.
    pub fn revoke(&self, req: RevokeRequest) -> Outcome {
        self.run(Submission::direct(Command::Revoke(req)))
    }
}

/// A share checked outside the engine's lock, to be decided under it.
pub(super) struct SharePlan {
    req: ShareRequest,
    /// The grantor whose delegation limits apply (none when the share has
    /// no grantor, or a privileged one).
    delegate: Option<UserId>,
}

/// What a decision under the engine's lock came to.
pub(super) enum Decided {
    /// Carried out (or refused), with its record in the batch.
    Done(Result<Grant, Failure>),
    /// Its idempotency key was carried first by this request.
    Seen(RequestId),
    /// Never decided (the engine did not run the decision: not expected).
    Lost,
}

fn lost() -> Failure {
    Failure::new(
        FailureKind::Store,
        "the request was not carried out: its batch did not run",
    )
}

/// The request other than `ours` already on record with `key`, if any (a
/// queued request's own `Processing` record carries its key too). A failed
/// read is no answer: the request goes ahead, and the store's unique index
/// on keys refuses a second record of one key.
fn seen_before(backend: &Backend, key: &str, ours: RequestId) -> Option<RequestId> {
    backend
        .reader()
        .request_by_key(key)
        .ok()
        .flatten()
        .map(|r| r.request)
        .filter(|first| *first != ours)
}

/// Decide one share under the engine's lock and put its record in the
/// batch.
pub(super) fn decide_share(
    d: &mut Transaction<'_, '_>,
    backend: &Backend,
    recheck: Option<String>,
    record: HistoryRecord,
    plan: SharePlan,
) -> Decided {
    if let Some(first) = recheck.and_then(|key| seen_before(backend, &key, record.request)) {
        return Decided::Seen(first);
    }
    let req = &plan.req;
    let result = match plan.delegate {
        Some(grantor) => check_delegation(d, &grantor, req)
            .map_err(|reason| Failure::new(FailureKind::Delegation, reason)),
        None => Ok(()),
    }
    .and_then(|()| {
        let spec = ShareSpec {
            user: req.user,
            entity: req.entity,
            context: req.context,
            level: req.level,
            expiry: req.duration.map_or(Expiry::Default, Expiry::After),
            start: share_start(&record, req),
        };
        d.share(&spec).map_err(|e| Failure::from(&e))
    });
    let done = finished(record, result.as_ref().map_err(Clone::clone), d.now());
    d.write(backend.in_batch(vec![Change::Record(Box::new(done))]));
    Decided::Done(result)
}

/// The instant a request's start asks for, if it is ahead of `now`
/// (a start that cannot be reached is left to the engine to refuse).
fn requested_start(now: DateTime<Utc>, start: Start) -> Option<DateTime<Utc>> {
    match start {
        Start::Now => None,
        Start::After(d) if d < chrono::Duration::zero() => None,
        Start::After(d) => now.checked_add_signed(d),
        Start::At(t) => Some(t),
    }
    .filter(|t| *t > now)
}

/// The start a share is made with: the instant fixed when the request was
/// made (a delay counts from the request, not from its decision), else
/// what it asked (the engine refuses a bad one by name).
fn share_start(record: &HistoryRecord, req: &ShareRequest) -> Start {
    record.starts_at.map_or(req.start, Start::At)
}

/// A grantor who is not privileged may give no more than it holds now:
/// no higher level and no later expiry.
fn check_delegation(
    d: &Transaction<'_, '_>,
    grantor: &UserId,
    req: &ShareRequest,
) -> Result<(), String> {
    let Some(access) = d.access(grantor, &req.entity) else {
        return Err(format!(
            "grantor `{grantor}` has no access to `{}`",
            req.entity
        ));
    };
    let holds_until = match req.level {
        Level::Edit if access.level != Level::Edit => {
            return Err(format!(
                "grantor `{grantor}` may only read `{}` and cannot give edit access",
                req.entity
            ))
        }
        Level::Edit => access.until,
        Level::Read => access.read_until,
    };
    let from = requested_start(d.now(), req.start).unwrap_or_else(|| d.now());
    let wanted = from.checked_add_signed(req.duration.unwrap_or_else(|| d.default_duration()));
    match wanted {
        Some(until) if until <= holds_until => Ok(()),
        _ => Err(format!(
            "grantor `{grantor}` holds this access only until {holds_until}; the share would outlast it"
        )),
    }
}
