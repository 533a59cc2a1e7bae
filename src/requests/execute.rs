//! Carrying out requests: recorded first, checked by the host's policy
//! hooks, run on the engine, then finished in the history.

use crate::engine::{Expiry, Grant, ShareSpec};
use crate::ids::{Context, EntityId, Level, UserId};
use crate::model::history::{FailureKind, HistoryRecord, RequestId, RequestKind, RequestStatus};
use crate::store::Change;

use super::history::{ended_by, finished, record_then};
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
            Command::Share(req) => {
                let result = self
                    .precheck_share(req, sub.granted_by.as_ref())
                    .and_then(|spec| {
                        let then = record_then(self.inner.backend.clone(), record.clone());
                        self.inner
                            .engine
                            .share_then(spec, then)
                            .map_err(|e| Failure::from(&e))
                    });
                let written = result.is_ok();
                self.conclude(record, result, written)
            }
            Command::Revoke(req) => {
                let (result, written) = self.execute_revoke(&record, req);
                self.conclude(record, result, written)
            }
        }
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
        let mut memory = self.inner.memory.lock();
        memory.in_flight.remove(&request);
        if let Some(key) = key {
            if memory.keys.get(&key) == Some(&request) {
                memory.keys.remove(&key);
            }
        }
        drop(memory);
        Outcome {
            request,
            status,
            grant: result.ok(),
        }
    }

    /// Run share requests together: checked one by one, carried out in
    /// one engine batch (with a durable engine, one transaction, which also
    /// carries the records of those refused before it). Outcomes in order.
    pub(super) fn run_shares(&self, subs: Vec<Submission>) -> Vec<Outcome> {
        let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(subs.len());
        let mut batch = Vec::new();
        let mut waiting = Vec::new();
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
            match self.precheck_share(req, sub.granted_by.as_ref()) {
                Ok(spec) => {
                    let then: crate::engine::Then =
                        Box::new(record_then(self.inner.backend.clone(), record.clone()));
                    batch.push((spec, then));
                    waiting.push((outcomes.len(), record));
                    outcomes.push(None);
                }
                Err(reason) => outcomes.push(Some(self.conclude(record, Err(reason), false))),
            }
        }
        let results = self.inner.engine.share_many_then(batch);
        for ((at, record), result) in waiting.into_iter().zip(results) {
            let written = result.is_ok();
            let outcome = self.conclude(record, result.map_err(|e| Failure::from(&e)), written);
            if let Some(slot) = outcomes.get_mut(at) {
                *slot = Some(outcome);
            }
        }
        outcomes.into_iter().flatten().collect()
    }

    /// The checks before a share reaches the engine: the context resolver
    /// and, for a grantor who is not privileged, the delegation limits.
    pub(super) fn precheck_share(
        &self,
        req: &ShareRequest,
        granted_by: Option<&UserId>,
    ) -> Result<ShareSpec, Failure> {
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
        if let Some(grantor) = granted_by {
            let privileged = self
                .inner
                .grantor_policy
                .as_ref()
                .is_some_and(|p| p.is_privileged(grantor, &req.entity));
            if !privileged {
                self.check_delegation(grantor, req)
                    .map_err(|reason| Failure::new(FailureKind::Delegation, reason))?;
            }
        }
        Ok(ShareSpec {
            user: req.user,
            entity: req.entity,
            context: req.context,
            level: req.level,
            expiry: req.duration.map_or(Expiry::Default, Expiry::After),
        })
    }

    /// A grantor who is not privileged may give no more than it holds now:
    /// no higher level and no later expiry.
    pub(super) fn check_delegation(
        &self,
        grantor: &UserId,
        req: &ShareRequest,
    ) -> Result<(), String> {
        let engine = &self.inner.engine;
        let Some(access) = engine.access(grantor, &req.entity) else {
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
        let wanted = match req.duration {
            Some(d) => engine.now().checked_add_signed(d),
            None => engine.now().checked_add_signed(engine.default_duration()),
        };
        match wanted {
            Some(until) if until <= holds_until => Ok(()),
            _ => Err(format!(
                "grantor `{grantor}` holds this access only until {holds_until}; the share would outlast it"
            )),
        }
    }

    /// Revoke through the engine, writing the request's record and the
    /// name of the request on the ended grant's record in the revoke's
    /// batch. Returns the result and whether that batch was written.
    pub(super) fn execute_revoke(
        &self,
        record: &HistoryRecord,
        req: &RevokeRequest,
    ) -> (Result<Grant, Failure>, bool) {
        let none = || {
            Failure::new(
                FailureKind::NotFound,
                format!(
                    "no live grant of `{}` for user `{}` through this context",
                    req.entity, req.user
                ),
            )
        };
        let none_reason = none();
        let (backend, pending) = (self.inner.backend.clone(), record.clone());
        let result = self.inner.engine.revoke_context_then(
            req.user,
            req.entity,
            req.context,
            move |grant, at| {
                let request = pending.request;
                let mut changes = vec![Change::Record(Box::new(finished(
                    pending,
                    grant.ok_or(none_reason),
                    at,
                )))];
                if let Some(g) = grant {
                    changes.push(ended_by(g, request));
                }
                backend.in_batch(changes)
            },
        );
        match result {
            Ok(Some(grant)) => (Ok(grant), true),
            Ok(None) => (Err(none()), true),
            Err(e) => (Err(Failure::from(&e)), false),
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
