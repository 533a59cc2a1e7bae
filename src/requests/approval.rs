//! Shares that wait for an approver: the policy that picks them, the
//! approve and deny calls, the timeout, and the audit queries.
//!
//! # Ground rules
//!
//! - A share the policy picks is checked first (context, grantor) and then
//!   held: its record is written `Processing`, with an approval that names
//!   why and a deadline, in an engine batch of its own, before its id goes
//!   out. It is not queued: it waits in the store, so a restart keeps it
//!   (it is never failed as interrupted).
//! - A decision is taken once: in this process the request is claimed
//!   while it is decided, and under the engine's lock the stored record is
//!   checked to be still awaiting. An approval makes the grant and writes
//!   the completed record, with the decision, in one batch; a denial or a
//!   timeout writes the failed record with the decision in one batch.
//! - An approved share's duration counts from the approval, or from the
//!   requested start if that is later; the host's hooks (context resolver,
//!   grantor policy, delegation limits) are asked again at approval.

use chrono::{DateTime, Utc};

use crate::error::InvalidArgument;
use crate::ids::{EntityKind, Level, UserId};
use crate::model::grant::Start;
use crate::model::history::{
    Approval, Decision, FailureKind, HistoryRecord, RequestId, RequestStatus, Source, SourceKind,
};
use crate::store::{Change, StoreError};

use super::execute::{decide_share, Decided};
use super::history::{finished, timed_out, Backend};
use super::request::{Failure, Outcome, ShareRequest};
use super::Sharing;
use crate::error::QueryError;

/// The longest reason an approver may give, in bytes.
pub const MAX_REASON_BYTES: usize = 2000;

/// Chooses which shares need an approver. The host implements it, or uses
/// [`ApprovalRules`].
pub trait ApprovalPolicy: Send + Sync + 'static {
    /// `Some(why)` when `share` (from `source`, lasting `duration` from its
    /// start) must wait for an approver; `why` is kept in its record.
    fn needs_approval(
        &self,
        share: &ShareRequest,
        source: &Source,
        duration: chrono::Duration,
    ) -> Option<String>;
}

/// A ready-made [`ApprovalPolicy`]: a share needs an approver if any rule
/// matches.
///
/// ```
/// use grantwheel::requests::{ApprovalPolicy, ApprovalRules, ShareRequest, Source};
/// use grantwheel::{EntityId, Level, UserId};
/// let rules = ApprovalRules { edit: true, longer_than: Some(chrono::Duration::days(30)), ..ApprovalRules::default() };
/// let read = ShareRequest::new(UserId::from_u128(1), EntityId::lead(1), Level::Read);
/// assert_eq!(rules.needs_approval(&read, &Source::Api, chrono::Duration::days(7)), None);
/// let why = rules.needs_approval(&read, &Source::Api, chrono::Duration::days(31)).unwrap();
/// assert!(why.contains("longer than 30 days"), "{why}");
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApprovalRules {
    /// Edit access needs an approver.
    pub edit: bool,
    /// Shares lasting longer than this need an approver.
    pub longer_than: Option<chrono::Duration>,
    /// Shares from these sources need an approver.
    pub sources: Vec<SourceKind>,
    /// Shares of these record kinds need an approver.
    pub kinds: Vec<EntityKind>,
}

impl ApprovalPolicy for ApprovalRules {
    fn needs_approval(
        &self,
        share: &ShareRequest,
        source: &Source,
        duration: chrono::Duration,
    ) -> Option<String> {
        if self.edit && share.level == Level::Edit {
            return Some("edit access needs an approver".into());
        }
        if let Some(limit) = self.longer_than.filter(|limit| duration > *limit) {
            return Some(format!(
                "a share of {} is longer than {} without an approver",
                crate::clock::words(duration),
                crate::clock::words(limit)
            ));
        }
        if self.sources.contains(&source.kind()) {
            let from = match source.kind() {
                SourceKind::Api => "the API",
                SourceKind::Automation => "automation rules",
                SourceKind::Direct => "direct calls",
            };
            return Some(format!("shares from {from} need an approver"));
        }
        if self.kinds.contains(&share.entity.kind) {
            return Some(format!(
                "shares of {} records need an approver",
                share.entity.kind
            ));
        }
        None
    }
}

/// Why an approve or deny call was refused. Nothing changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApprovalError {
    /// No request has this id (or its record was pruned).
    #[error("request `{0}` is not known")]
    NotFound(RequestId),
    /// The request does not wait for an approver (it never needed one, or
    /// it was decided, or another call is deciding it now).
    #[error("request `{request}` is not awaiting approval: it is {status}")]
    NotAwaiting {
        /// The request.
        request: RequestId,
        /// Its status's name (`Processing`, `Completed`, `Failed`).
        status: &'static str,
    },
    /// The approver is the grantee, or the grantor the share was asked on
    /// the authority of.
    #[error(
        "`{approver}` may not decide on a share to themselves or one asked on their authority"
    )]
    OwnShare {
        /// The approver.
        approver: UserId,
    },
    /// Nobody acted before the deadline: the request has failed.
    #[error("request `{request}` timed out at {deadline}: nobody acted on it in time")]
    TimedOut {
        /// The request.
        request: RequestId,
        /// Its deadline.
        deadline: DateTime<Utc>,
    },
    /// An argument is invalid (the reason is too long).
    #[error(transparent)]
    Invalid(#[from] InvalidArgument),
    /// The store could not be read or written.
    #[error("the store failed: {0}")]
    Store(StoreError),
}

impl ApprovalError {
    /// The invalid field, for [`ApprovalError::Invalid`].
    pub fn field(&self) -> Option<&'static str> {
        match self {
            ApprovalError::Invalid(a) => Some(a.field()),
            _ => None,
        }
    }
}

impl From<QueryError> for ApprovalError {
    fn from(e: QueryError) -> Self {
        match e {
            QueryError::Invalid(a) => ApprovalError::Invalid(a),
            QueryError::Store(e) => ApprovalError::Store(e),
        }
    }
}

/// The share a held record asks for (its start fixed when it was asked).
pub(super) fn share_of(r: &HistoryRecord) -> ShareRequest {
    ShareRequest {
        user: r.user,
        entity: r.entity,
        context: r.context,
        level: r.level,
        duration: r.duration,
        start: r.starts_at.map_or(Start::Now, Start::At),
    }
}

/// Whether the stored record of `id` still waits for an approver (a failed
/// read is no: nothing is decided on a record that cannot be seen).
fn still_awaiting(backend: &Backend, id: &RequestId) -> bool {
    backend
        .reader()
        .request(id)
        .ok()
        .flatten()
        .is_some_and(|r| r.awaiting_approval())
}

impl Sharing {
    /// The approval a share needs under the layer's policy, if any.
    pub(super) fn approval_for(&self, req: &ShareRequest, source: &Source) -> Option<Approval> {
        let policy = self.inner.approvals.as_ref()?;
        let duration = req
            .duration
            .unwrap_or_else(|| self.inner.engine.default_duration());
        let why = policy.needs_approval(req, source, duration)?;
        let now = self.inner.engine.now();
        Some(Approval {
            why,
            deadline: now
                .checked_add_signed(self.inner.config.approval_timeout)
                .unwrap_or(DateTime::<Utc>::MAX_UTC),
            decision: None,
        })
    }

    /// Hold a checked share for an approver: its record, `Processing` with
    /// `approval`, is written in a batch of its own before this returns.
    pub(super) fn hold(&self, mut record: HistoryRecord, approval: Approval) -> Outcome {
        record.approval = Some(approval);
        let backend = self.inner.backend.clone();
        let held = record.clone();
        let (_, batch) = self.inner.engine.transact(move |d| {
            d.write(backend.in_batch(vec![Change::Record(Box::new(held))]));
        });
        match batch {
            Ok(()) => {
                let request = record.request;
                self.no_longer_in_flight(record.request, record.idempotency_key.as_deref());
                Outcome {
                    request,
                    status: RequestStatus::Processing,
                    grant: None,
                }
            }
            Err(e) => {
                record.approval = None;
                let failure =
                    Failure::new(FailureKind::Store, format!("not held for approval: {e}"));
                self.conclude(record, Err(failure), false)
            }
        }
    }

    /// Shares waiting for an approver, soonest deadline first, at most
    /// `limit` (1 to 1,000): the approvals queue.
    ///
    /// # Errors
    ///
    /// [`QueryError::Invalid`] for a limit outside 1 to 1,000;
    /// [`QueryError::Store`] when the store cannot be read.
    pub fn awaiting_approval(&self, limit: usize) -> Result<Vec<HistoryRecord>, QueryError> {
        if limit == 0 || limit > 1000 {
            return Err(QueryError::Invalid(InvalidArgument::new(
                "limit",
                format!("`{limit}` is not between 1 and 1000"),
            )));
        }
        self.inner.settle_overlay()?;
        let now = self.inner.engine.now();
        Ok(self
            .inner
            .backend
            .reader()
            .awaiting_approval(limit)
            .map_err(QueryError::Store)?
            .into_iter()
            .filter(|r| r.approval.as_ref().is_some_and(|a| a.deadline > now))
            .collect())
    }

    /// The share records of `user` whose grant was live at `at`: what the
    /// user held then, through which request, approved by whom (each
    /// record's [`approval`](HistoryRecord::approval)).
    ///
    /// # Errors
    ///
    /// [`QueryError::Store`] when the store cannot be read.
    pub fn held_at(
        &self,
        user: &UserId,
        at: DateTime<Utc>,
    ) -> Result<Vec<HistoryRecord>, QueryError> {
        self.inner.settle_overlay()?;
        let records = self
            .inner
            .backend
            .reader()
            .held_at(user, at)
            .map_err(QueryError::Store)?;
        Ok(self.inner.live_at(records, at))
    }

    /// Approve a share waiting for an approver: the grant is made now (its
    /// duration counting from now, or from the requested start if later),
    /// after the host's hooks are asked again, and the record keeps who
    /// approved, when and why. Returns the request's outcome: `Completed`
    /// with the grant, or `Failed` if a hook or the engine refused it then
    /// (the decision is recorded either way).
    ///
    /// ```
    /// use grantwheel::requests::{ApprovalRules, RequestStatus, ShareRequest, Sharing};
    /// use grantwheel::{Engine, EntityId, Level, UserId};
    /// let sharing = Sharing::builder(Engine::new())
    ///     .approvals(ApprovalRules { edit: true, ..ApprovalRules::default() }, chrono::Duration::days(2))
    ///     .build()
    ///     .unwrap();
    /// let (user, lead, boss) = (UserId::from_u128(1), EntityId::lead(7), UserId::from_u128(9));
    /// let asked = sharing.share(ShareRequest::new(user, lead, Level::Edit));
    /// assert_eq!(asked.status, RequestStatus::Processing);
    /// assert!(!sharing.engine().can_read(&user, &lead), "nothing before the approval");
    /// let done = sharing.approve(&asked.request, boss, Some("covering for Ana")).unwrap();
    /// assert_eq!(done.status, RequestStatus::Completed);
    /// assert!(sharing.engine().can_edit(&user, &lead));
    /// let record = sharing.request(&asked.request).unwrap().unwrap();
    /// assert_eq!(record.approval.unwrap().decision.unwrap().approver, boss);
    /// ```
    ///
    /// # Errors
    ///
    /// [`ApprovalError`]: the request is unknown, not awaiting approval,
    /// timed out (it fails), the approver is the grantee or the grantor,
    /// the reason is over [`MAX_REASON_BYTES`], or the store failed.
    pub fn approve(
        &self,
        request: &RequestId,
        approver: UserId,
        reason: Option<&str>,
    ) -> Result<Outcome, ApprovalError> {
        let (mut record, decision) = self.claim_decision(request, approver, reason, true)?;
        let id = record.request;
        // The duration counts from the approval, or from the requested
        // start if that is still ahead.
        if record.starts_at.is_some_and(|s| s <= decision.at) {
            record.starts_at = None;
        }
        let req = share_of(&record);
        let plan = match self.prepare_share(&req, record.granted_by.as_ref()) {
            Ok(plan) => plan,
            Err(failure) => return self.decide_failure(record, decision, failure),
        };
        let backend = self.inner.backend.clone();
        let mut decided_record = record.clone();
        if let Some(a) = &mut decided_record.approval {
            a.decision = Some(decision);
        }
        let stored = decided_record.clone();
        let (decided, batch) = self.inner.engine.transact(move |d| {
            if !still_awaiting(&backend, &id) {
                return Decided::Seen(id);
            }
            decide_share(d, &backend, None, stored, plan)
        });
        self.finish_decision(decided_record, decided, batch)
    }

    /// Deny a share waiting for an approver: it fails
    /// ([`FailureKind::Denied`]), and its record keeps who denied it, when
    /// and why.
    ///
    /// # Errors
    ///
    /// As [`approve`](Self::approve) (a grantee may deny their own share).
    pub fn deny(
        &self,
        request: &RequestId,
        approver: UserId,
        reason: Option<&str>,
    ) -> Result<Outcome, ApprovalError> {
        let (record, decision) = self.claim_decision(request, approver, reason, false)?;
        let words = match &decision.reason {
            Some(r) => format!("denied by `{approver}`: {r}"),
            None => format!("denied by `{approver}`"),
        };
        self.decide_failure(record, decision, Failure::new(FailureKind::Denied, words))
    }

    /// Fail every share whose approval deadline has passed; returns how
    /// many. The worker ([`start_worker`](Self::start_worker)) runs this
    /// every second; an approve or deny after the deadline does it for its
    /// request, and a status read shows such a request failed already.
    ///
    /// # Errors
    ///
    /// [`QueryError::Store`] when the store cannot be read; those failed
    /// before stay failed.
    pub fn expire_approvals(&self) -> Result<usize, QueryError> {
        const STEP: usize = 1000;
        if self.inner.approvals.is_none() {
            return Ok(0);
        }
        let mut done = 0;
        loop {
            let now = self.inner.engine.now();
            let waiting = self
                .inner
                .backend
                .reader()
                .awaiting_approval(STEP)
                .map_err(QueryError::Store)?;
            let n = waiting.len();
            let due: Vec<HistoryRecord> = waiting
                .into_iter()
                .filter(|r| r.approval.as_ref().is_some_and(|a| a.deadline <= now))
                .collect();
            let all_due = due.len() == n;
            for r in due {
                if self.time_out(r).is_ok() {
                    done += 1;
                }
            }
            if n < STEP || !all_due {
                return Ok(done);
            }
        }
    }

    /// Fail one request whose deadline passed (once: checked still
    /// awaiting under the engine's lock).
    fn time_out(&self, record: HistoryRecord) -> Result<(), StoreError> {
        let Some(deadline) = record.approval.as_ref().map(|a| a.deadline) else {
            return Ok(());
        };
        let backend = self.inner.backend.clone();
        let id = record.request;
        let (_, batch) = self.inner.engine.transact(move |d| {
            if still_awaiting(&backend, &id) {
                let done = timed_out(record, deadline);
                d.write(backend.in_batch(vec![Change::Record(Box::new(done))]));
            }
        });
        batch
    }

    /// Check a decision may be taken on `request` and claim it in this
    /// process; returns the stored record and the decision.
    fn claim_decision(
        &self,
        request: &RequestId,
        approver: UserId,
        reason: Option<&str>,
        approved: bool,
    ) -> Result<(HistoryRecord, Decision), ApprovalError> {
        if let Some(r) = reason.filter(|r| r.len() > MAX_REASON_BYTES) {
            return Err(InvalidArgument::new(
                "reason",
                format!(
                    "{} bytes is more than the limit of {MAX_REASON_BYTES}",
                    r.len()
                ),
            )
            .into());
        }
        let stored = self
            .inner
            .backend
            .reader()
            .request(request)
            .map_err(ApprovalError::Store)?
            .ok_or(ApprovalError::NotFound(*request))?;
        if !stored.awaiting_approval() {
            return Err(ApprovalError::NotAwaiting {
                request: *request,
                status: self
                    .inner
                    .find(request)?
                    .map_or(stored.status.name(), |r| r.status.name()),
            });
        }
        if approved && (stored.user == approver || stored.granted_by == Some(approver)) {
            return Err(ApprovalError::OwnShare { approver });
        }
        let now = self.inner.engine.now();
        if let Some(deadline) = stored
            .approval
            .as_ref()
            .map(|a| a.deadline)
            .filter(|d| *d <= now)
        {
            self.time_out(stored).map_err(ApprovalError::Store)?;
            return Err(ApprovalError::TimedOut {
                request: *request,
                deadline,
            });
        }
        // One decision at a time in this process: the request is in flight
        // while it is decided.
        {
            let mut memory = self.inner.memory.lock();
            if memory.in_flight.contains_key(request) {
                return Err(ApprovalError::NotAwaiting {
                    request: *request,
                    status: "Processing",
                });
            }
            memory.in_flight.insert(*request, stored.clone());
        }
        Ok((
            stored,
            Decision {
                approver,
                approved,
                at: now,
                reason: reason.map(str::to_string),
            },
        ))
    }

    /// Record a decision that ends the request failed (a denial, or an
    /// approval a hook refused), in one batch, if it still awaits.
    fn decide_failure(
        &self,
        mut record: HistoryRecord,
        decision: Decision,
        failure: Failure,
    ) -> Result<Outcome, ApprovalError> {
        if let Some(a) = &mut record.approval {
            a.decision = Some(decision);
        }
        let backend = self.inner.backend.clone();
        let id = record.request;
        let stored = record.clone();
        let words = failure.clone();
        let (decided, batch) = self.inner.engine.transact(move |d| {
            if !still_awaiting(&backend, &id) {
                return Decided::Seen(id);
            }
            let done = finished(stored, Err(words.clone()), d.now());
            d.write(backend.in_batch(vec![Change::Record(Box::new(done))]));
            Decided::Done(Err(words))
        });
        self.finish_decision(record, decided, batch)
    }

    /// The outcome of a decision taken under the engine's lock.
    fn finish_decision(
        &self,
        record: HistoryRecord,
        decided: Option<Decided>,
        batch: Result<(), StoreError>,
    ) -> Result<Outcome, ApprovalError> {
        let request = record.request;
        match (decided, batch) {
            (Some(Decided::Done(result)), Ok(())) => Ok(self.conclude(record, result, true)),
            (Some(Decided::Seen(_)), _) => {
                self.no_longer_in_flight(record.request, record.idempotency_key.as_deref());
                let status = self
                    .inner
                    .find(&request)?
                    .map_or("unknown", |r| r.status.name());
                Err(ApprovalError::NotAwaiting { request, status })
            }
            (_, Err(e)) => {
                // Nothing was written: the request still awaits a decision.
                self.no_longer_in_flight(record.request, record.idempotency_key.as_deref());
                Err(ApprovalError::Store(e))
            }
            (None | Some(Decided::Lost), Ok(())) => {
                self.no_longer_in_flight(record.request, record.idempotency_key.as_deref());
                Err(ApprovalError::Store(StoreError::Io(
                    "the decision was not carried out: its batch did not run".into(),
                )))
            }
        }
    }
}
