//! Carrying out requests: recorded first, checked by the host's policy
//! hooks, run on the engine, then finished in the history.

use crate::engine::{Expiry, Grant, ShareSpec};
use crate::ids::{Context, EntityId, Level, UserId};
use crate::model::history::{FailureKind, HistoryRecord, RequestId, RequestKind, RequestStatus};
use crate::store::Change;

use super::history::{finished, record_then};
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

impl Sharing {
    /// Write a request's record as `Processing`, or find the request that
    /// already carries the same idempotency key. Returns the id, the
    /// record's sequence number, and whether it is new.
    pub(super) fn begin(&self, sub: &Submission) -> (RequestId, u64, bool) {
        let mut history = self.inner.history.lock();
        if let Some(key) = &sub.idempotency_key {
            if let Some(id) = history.by_key.get(key) {
                if let Some(seq) = history.by_request.get(id) {
                    return (*id, *seq, false);
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
        let request = RequestId::random();
        let record = HistoryRecord {
            request,
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
        let seq = history.add(record);
        if let Some(key) = &sub.idempotency_key {
            history.by_key.insert(key.clone(), request);
        }
        let write = history.change(seq);
        drop(history);
        self.inner.engine.write_later(write);
        (request, seq, true)
    }

    /// The outcome of a request already on record.
    pub(super) fn outcome_of(&self, request: RequestId, seq: u64) -> Outcome {
        let history = self.inner.history.lock();
        let record = history.records.get(&seq);
        Outcome {
            request,
            status: record.map_or(RequestStatus::Processing, |r| r.status.clone()),
            grant: None,
        }
    }

    /// Carry out a recorded request and finish its record.
    pub(super) fn execute(&self, request: RequestId, seq: u64, sub: &Submission) -> Outcome {
        let pending = self.pending_record(seq);
        let result = match &sub.command {
            Command::Share(req) => {
                self.precheck_share(req, sub.granted_by.as_ref())
                    .and_then(|spec| {
                        self.inner
                            .engine
                            .share_then(spec, record_then(seq, pending))
                            .map_err(|e| Failure::from(&e))
                    })
            }
            Command::Revoke(req) => self.execute_revoke(request, req, seq, pending),
        };
        let is_share = matches!(sub.command, Command::Share(_));
        self.conclude(request, seq, is_share, result)
    }

    /// A request's record as it stands, for writing its finished form in
    /// its grant's batch; `None` when the engine writes nothing.
    pub(super) fn pending_record(&self, seq: u64) -> Option<HistoryRecord> {
        if !self.inner.engine.is_durable() {
            return None;
        }
        self.inner.history.lock().records.get(&seq).cloned()
    }

    /// Finish a request's record in memory (it is written with the next
    /// batch; a share's was written with its grant already).
    pub(super) fn conclude(
        &self,
        request: RequestId,
        seq: u64,
        is_share: bool,
        result: Result<Grant, Failure>,
    ) -> Outcome {
        let now = self.inner.engine.now();
        let mut history = self.inner.history.lock();
        let outcome = match result {
            Ok(grant) => {
                if is_share {
                    history.finish_share(seq, &grant, now);
                } else {
                    history.finish(seq, RequestStatus::Completed, now);
                    if let Some(r) = history.records.get_mut(&seq) {
                        r.grant = Some(grant.id);
                        r.expires_at = Some(grant.expires_at);
                    }
                }
                Outcome {
                    request,
                    status: RequestStatus::Completed,
                    grant: Some(grant),
                }
            }
            Err(failure) => {
                let status = failure.status();
                history.finish(seq, status.clone(), now);
                Outcome {
                    request,
                    status,
                    grant: None,
                }
            }
        };
        let write = history.change(seq);
        drop(history);
        self.inner.engine.write_later(write);
        outcome
    }

    /// Run share requests together: checked one by one, carried out in
    /// one engine batch (with a durable engine, one transaction). Outcomes
    /// in order.
    pub(super) fn run_shares(&self, subs: Vec<Submission>) -> Vec<Outcome> {
        let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(subs.len());
        let mut batch = Vec::new();
        let mut waiting = Vec::new();
        for sub in &subs {
            let (request, seq, new) = self.begin(sub);
            if !new {
                outcomes.push(Some(self.outcome_of(request, seq)));
                continue;
            }
            let Command::Share(req) = &sub.command else {
                outcomes.push(Some(self.execute(request, seq, sub)));
                continue;
            };
            match self.precheck_share(req, sub.granted_by.as_ref()) {
                Ok(spec) => {
                    let pending = self.pending_record(seq);
                    let then: crate::engine::Then = Box::new(record_then(seq, pending));
                    batch.push((spec, then));
                    waiting.push((outcomes.len(), request, seq));
                    outcomes.push(None);
                }
                Err(reason) => outcomes.push(Some(self.conclude(request, seq, true, Err(reason)))),
            }
        }
        let results = self.inner.engine.share_many_then(batch);
        for ((at, request, seq), result) in waiting.into_iter().zip(results) {
            let outcome = self.conclude(request, seq, true, result.map_err(|e| Failure::from(&e)));
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

    pub(super) fn execute_revoke(
        &self,
        request: RequestId,
        req: &RevokeRequest,
        seq: u64,
        pending: Option<HistoryRecord>,
    ) -> Result<Grant, Failure> {
        let key = (req.user, req.entity, req.context);
        // Named before the call: the event may be delivered by another thread.
        self.inner.revoking.lock().insert(key, request);
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
        let result = self.inner.engine.revoke_context_then(
            req.user,
            req.entity,
            req.context,
            move |grant, at| {
                pending
                    .map(|r| Change::Record {
                        seq,
                        record: Box::new(finished(r, grant.ok_or(none_reason), at)),
                    })
                    .into_iter()
                    .collect()
            },
        );
        match result {
            Ok(Some(grant)) => Ok(grant),
            Ok(None) => {
                self.inner.revoking.lock().remove(&key);
                Err(none())
            }
            Err(e) => Err(Failure::from(&e)),
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
        let (request, seq, new) = self.begin(&sub);
        if !new {
            return self.outcome_of(request, seq);
        }
        self.execute(request, seq, &sub)
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
