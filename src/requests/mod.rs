//! Share and revoke requests shaped like the share API: request ids and
//! status, the share history, and the API's wire format ([`wire`]).
//!
//! [`Sharing`] wraps an [`Engine`]: every share or revoke that goes through
//! it, whether from the API's JSON, a direct call or (later) an automation
//! rule, gets a [`RequestId`], a status and a [`HistoryRecord`]. The engine's
//! events keep the records current (revoked, expired).
//!
//! # Ground rules
//!
//! - The history lock is never held across a call into the engine, so the
//!   engine's events (delivered inside its calls) can update the history.
//! - A record is written as `Processing` before the engine is asked, and
//!   finished (`Completed` or `Failed`) after; an end event that arrives
//!   before its grant's record is finished is kept and applied then.
//!
//! # With a durable engine
//!
//! When the engine has a store ([`EngineBuilder::store`]), the request
//! layer keeps its history and rules there too:
//!
//! - a share's finished record is written in the same batch as its grant,
//!   so a `Completed` status is as durable as the access it reports;
//! - rule changes are written before the call returns;
//! - other record updates (`Processing`, revoked, expired) go with the next
//!   batch;
//! - on restart the history and rules are loaded back; a request still
//!   `Processing` (the service stopped before carrying it out) becomes
//!   `Failed`, and grants that expired while the service was down are
//!   recorded as expired.
//!
//! [`EngineBuilder::store`]: crate::EngineBuilder::store

pub mod automation;
pub mod wire;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::engine::Restored;
use crate::engine::{Engine, Expiry, Grant, OverMax, ShareSpec};
use crate::error::Error;
use crate::events::{Event, RevokeReason};
use crate::ids::{Context, EntityId, GrantId, Level, UserId};
use crate::store::{Change, Records};

pub use crate::model::history::{
    BadRequestId, EndedBy, FailureKind, HistoryRecord, RequestId, RequestKind, RequestStatus,
    RuleId, Source, SourceKind, StatusKind, INTERRUPTED,
};

/// A failure on its way into a request's record.
#[derive(Clone, Debug)]
struct Failure {
    kind: FailureKind,
    reason: String,
}

impl Failure {
    fn new(kind: FailureKind, reason: impl Into<String>) -> Self {
        Failure {
            kind,
            reason: reason.into(),
        }
    }

    fn status(self) -> RequestStatus {
        RequestStatus::Failed {
            kind: self.kind,
            reason: self.reason,
        }
    }
}

impl From<&Error> for Failure {
    fn from(e: &Error) -> Self {
        let kind = match e {
            Error::Invalid { .. } => FailureKind::InvalidInput,
            Error::AlreadyShared { existing } => {
                return Failure::new(
                    FailureKind::AlreadyShared,
                    format!(
                        "`{}` already has {} access to `{}` through this context until {}, and repeat shares are refused; revoke or extend that grant instead",
                        existing.id.user,
                        match existing.level {
                            Level::Read => "read",
                            Level::Edit => "edit",
                        },
                        existing.id.entity,
                        existing.expires_at.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
                    ),
                )
            }
            Error::NotLive(_) => FailureKind::NotFound,
            Error::Full { .. } => FailureKind::Capacity,
            _ => FailureKind::Store,
        };
        Failure::new(kind, e.to_string())
    }
}

/// A share request, for a direct call.
///
/// ```
/// use grantwheel::requests::ShareRequest;
/// use grantwheel::{Context, EntityId, Level, UserId};
/// let req = ShareRequest::new(UserId::from_u128(1), EntityId::lead(7), Level::Read)
///     .context(Context::Activity(uuid::Uuid::nil()))
///     .duration(chrono::Duration::minutes(30));
/// assert_eq!(req.level, Level::Read);
/// ```
#[must_use = "its setters return the changed value"]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareRequest {
    /// The user to share with.
    pub user: UserId,
    /// The record.
    pub entity: EntityId,
    /// Through what (default: direct).
    pub context: Context,
    /// Read or edit.
    pub level: Level,
    /// How long (default: the engine's default duration).
    pub duration: Option<chrono::Duration>,
}

impl ShareRequest {
    /// Share `entity` with `user` at `level`, directly, for the default
    /// duration.
    pub fn new(user: UserId, entity: EntityId, level: Level) -> Self {
        ShareRequest {
            user,
            entity,
            context: Context::Direct,
            level,
            duration: None,
        }
    }

    /// Through this context.
    pub fn context(mut self, context: Context) -> Self {
        self.context = context;
        self
    }

    /// For this long.
    pub fn duration(mut self, d: chrono::Duration) -> Self {
        self.duration = Some(d);
        self
    }
}

/// A revoke request: the grant of (user, entity) through `context`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokeRequest {
    /// The user.
    pub user: UserId,
    /// The record.
    pub entity: EntityId,
    /// The context whose grant ends; grants through other contexts stay.
    pub context: Context,
    /// The access named by the request (recorded in the history).
    pub level: Level,
}

/// What a finished request did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The request's id.
    pub request: RequestId,
    /// Its final status.
    pub status: RequestStatus,
    /// The grant created or ended, when there is one.
    pub grant: Option<Grant>,
}

/// What a request asks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Give access.
    Share(ShareRequest),
    /// Take access away.
    Revoke(RevokeRequest),
}

/// A request with where it came from, an optional idempotency key, and
/// optionally the user who grants it (for delegation limits).
///
/// ```
/// use grantwheel::requests::{Command, ShareRequest, Submission};
/// use grantwheel::{EntityId, Level, UserId};
/// let sub = Submission::api(Command::Share(ShareRequest::new(UserId::from_u128(1), EntityId::lead(2), Level::Read)))
///     .key("crm-event-17")
///     .granted_by(UserId::from_u128(9));
/// assert_eq!(sub.idempotency_key.as_deref(), Some("crm-event-17"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Submission {
    /// The request.
    pub command: Command,
    /// Where it came from.
    pub source: Source,
    /// The same key submitted twice yields the same request (and one grant).
    pub idempotency_key: Option<String>,
    /// The user on whose authority the share is made: the share may not
    /// give more than this user holds, unless the grantor policy says the
    /// user is privileged.
    pub granted_by: Option<UserId>,
}

impl Submission {
    /// A request from a direct call.
    pub fn direct(command: Command) -> Self {
        Submission {
            command,
            source: Source::Direct,
            idempotency_key: None,
            granted_by: None,
        }
    }

    /// A request from the API.
    pub fn api(command: Command) -> Self {
        Submission {
            source: Source::Api,
            ..Submission::direct(command)
        }
    }

    /// A request made by an automation rule.
    pub fn automation(command: Command, rule: RuleId) -> Self {
        Submission {
            source: Source::Automation { rule },
            ..Submission::direct(command)
        }
    }

    /// With this idempotency key.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// Made on the authority of `grantor`.
    pub fn granted_by(mut self, grantor: UserId) -> Self {
        self.granted_by = Some(grantor);
        self
    }
}

impl From<wire::ShareItem> for ShareRequest {
    fn from(item: wire::ShareItem) -> Self {
        ShareRequest {
            user: item.user,
            entity: item.entity,
            context: item.context,
            level: item.level,
            duration: item.duration_minutes.map(chrono::Duration::minutes),
        }
    }
}

impl From<wire::RevokeItem> for RevokeRequest {
    fn from(item: wire::RevokeItem) -> Self {
        RevokeRequest {
            user: item.user,
            entity: item.entity,
            context: item.context,
            level: item.level,
        }
    }
}

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

/// The thread started by [`Sharing::start_worker`]. Dropping it stops the
/// thread (after the request it is carrying out), so keep it for as long
/// as queued requests should be carried out.
///
/// ```compile_fail
/// #![deny(unused_must_use)]
/// let sharing = grantwheel::requests::Sharing::new(grantwheel::Engine::new());
/// sharing.start_worker();
/// ```
#[must_use = "the worker stops when this handle is dropped; keep it (`let _worker = ...`) while requests are queued"]
pub struct Worker {
    stop: Arc<std::sync::atomic::AtomicBool>,
    inner: Arc<SharingInner>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl fmt::Debug for Worker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Worker").finish_non_exhaustive()
    }
}

impl Worker {
    /// Stop the thread (after the request in hand) and wait for it.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        {
            let _queue = self.inner.queue.lock();
            self.inner.queued.notify_all();
        }
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Configures a [`Sharing`]; see [`Sharing::builder`].
#[must_use = "a builder does nothing until `build()` is called"]
pub struct SharingBuilder {
    engine: Engine,
    config: SharingConfig,
    resolver: Option<Box<dyn ContextResolver>>,
    grantor_policy: Option<Box<dyn GrantorPolicy>>,
    users: Option<Box<dyn automation::UserDirectory>>,
}

impl fmt::Debug for SharingBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharingBuilder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl SharingBuilder {
    /// The settings (default: [`SharingConfig::default`]).
    pub fn config(mut self, config: SharingConfig) -> Self {
        self.config = config;
        self
    }

    /// How long records of ended grants, failed requests and revokes are
    /// kept before [`Sharing::prune`] removes them (default 90 days).
    pub fn retention(mut self, retention: chrono::Duration) -> Self {
        self.config.retention = retention;
        self
    }

    /// Check each share's context with `resolver` (default: accept).
    pub fn resolver(mut self, resolver: impl ContextResolver) -> Self {
        self.resolver = Some(Box::new(resolver));
        self
    }

    /// Lift delegation limits for the grantors `policy` names (default:
    /// none privileged).
    pub fn grantor_policy(mut self, policy: impl GrantorPolicy) -> Self {
        self.grantor_policy = Some(Box::new(policy));
        self
    }

    /// Refuse to publish rules that name users unknown to `users` (default:
    /// users are not checked).
    pub fn users(mut self, users: impl automation::UserDirectory) -> Self {
        self.users = Some(Box::new(users));
        self
    }

    /// Build the engine's request layer with these settings.
    ///
    /// # Errors
    ///
    /// An engine carries one request layer, so that every handle sees one
    /// history: [`Error::Invalid`] (field `engine`) when the engine (or a
    /// clone of it) already has a living one. Clone that [`Sharing`]
    /// instead, or get it with [`Sharing::new`].
    ///
    /// ```
    /// use grantwheel::requests::Sharing;
    /// use grantwheel::Engine;
    /// let engine = Engine::new();
    /// let first = Sharing::builder(engine.clone()).build().unwrap();
    /// assert_eq!(Sharing::builder(engine.clone()).build().unwrap_err().field(), Some("engine"));
    /// ```
    pub fn build(self) -> Result<Sharing, Error> {
        let engine = self.engine.clone();
        match engine.attach_layer(|restored| Sharing::layer(self, restored)) {
            Ok(inner) => Ok(Sharing::started(inner)),
            Err(_) => Err(Error::invalid(
                "engine",
                "already carries a request layer; clone that `Sharing` (or get it with `Sharing::new`) instead of building another",
            )),
        }
    }
}

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

    fn check(&self) -> Result<(), Error> {
        if self.limit == 0 || self.limit > 1000 {
            return Err(Error::invalid(
                "limit",
                format!("`{}` is not between 1 and 1000", self.limit),
            ));
        }
        if let (Some(f), Some(u)) = (self.from, self.until) {
            if f > u {
                return Err(Error::invalid(
                    "from",
                    format!("`{f}` is after `until` `{u}`"),
                ));
            }
        }
        Ok(())
    }

    fn keeps(&self, r: &HistoryRecord) -> bool {
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

/// Settings of the request layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SharingConfig {
    /// How long records of ended grants, failed requests and revokes are
    /// kept before [`Sharing::prune`] removes them (default 90 days).
    pub retention: chrono::Duration,
}

impl Default for SharingConfig {
    fn default() -> Self {
        SharingConfig {
            retention: chrono::Duration::days(90),
        }
    }
}

#[derive(Default)]
struct History {
    next_seq: u64,
    records: BTreeMap<u64, HistoryRecord>,
    by_request: HashMap<RequestId, u64>,
    /// Idempotency keys.
    by_key: HashMap<String, RequestId>,
    by_entity: HashMap<EntityId, BTreeSet<u64>>,
    /// Share records of grants that may still be live.
    by_grant: HashMap<GrantId, u64>,
    /// End events that arrived before their share record was finished.
    early_ends: HashMap<GrantId, (DateTime<Utc>, Option<EndedBy>)>,
}

impl History {
    fn add(&mut self, record: HistoryRecord) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.by_request.insert(record.request, seq);
        self.by_entity.entry(record.entity).or_default().insert(seq);
        self.records.insert(seq, record);
        seq
    }

    fn end(&mut self, grant: &GrantId, at: DateTime<Utc>, by: Option<EndedBy>) {
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

    fn finish_share(&mut self, seq: u64, grant: &Grant, at: DateTime<Utc>) {
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

    fn finish(&mut self, seq: u64, status: RequestStatus, at: DateTime<Utc>) {
        if let Some(r) = self.records.get_mut(&seq) {
            r.status = status;
            r.completed_at = Some(at);
        }
    }

    /// The write that stores a record as it now stands.
    fn change(&self, seq: u64) -> Option<Change> {
        self.records.get(&seq).map(|r| Change::Record {
            seq,
            record: Box::new(r.clone()),
        })
    }

    /// Rebuild from stored records. Returns the sequence numbers of the
    /// records it changed (unfinished requests, now failed).
    fn restore(&mut self, records: Vec<(u64, HistoryRecord)>, now: DateTime<Utc>) -> Vec<u64> {
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
fn record_then(
    seq: u64,
    pending: Option<HistoryRecord>,
) -> impl FnOnce(&Result<Grant, Error>, DateTime<Utc>) -> Vec<Change> + Send + 'static {
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
fn finished(
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

struct SharingInner {
    engine: Engine,
    config: SharingConfig,
    resolver: Option<Box<dyn ContextResolver>>,
    grantor_policy: Option<Box<dyn GrantorPolicy>>,
    users: Option<Box<dyn automation::UserDirectory>>,
    rules: Mutex<automation::Rules>,
    history: Mutex<History>,
    queue: Mutex<std::collections::VecDeque<(RequestId, u64, Submission)>>,
    queued: parking_lot::Condvar,
    /// Revoke requests under way, by (user, entity, context): the revoked
    /// event names its request through this.
    revoking: Mutex<HashMap<(UserId, EntityId, Context), RequestId>>,
    /// This layer's subscription to the engine's events.
    subscription: Mutex<Option<crate::events::SubscriptionId>>,
}

impl SharingInner {
    /// Take back history and rules, and finish the records of grants that
    /// ended while no layer listened: expired ones as expired, the others
    /// as ended outside the request layer.
    fn restore(&self, restored: Restored) {
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
        if let Some(id) = self.subscription.get_mut().take() {
            self.engine.unsubscribe(id);
        }
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

/// The request layer: share and revoke requests with ids, status and
/// history, over an [`Engine`]. `Send + Sync`; clones share it.
///
/// ```
/// use grantwheel::requests::{RequestStatus, ShareRequest, Sharing};
/// use grantwheel::{Engine, EntityId, Level, UserId};
///
/// let sharing = Sharing::new(Engine::new());
/// let (user, lead) = (UserId::from_u128(1), EntityId::lead(869196));
/// let outcome = sharing.share(ShareRequest::new(user, lead, Level::Edit));
/// assert_eq!(outcome.status, RequestStatus::Completed);
/// assert!(sharing.engine().can_edit(&user, &lead));
/// assert_eq!(sharing.status(&outcome.request), Some(RequestStatus::Completed));
/// ```
#[derive(Clone)]
pub struct Sharing {
    inner: Arc<SharingInner>,
}

impl fmt::Debug for Sharing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sharing").finish_non_exhaustive()
    }
}

impl Sharing {
    /// The request layer of `engine`: the one it already carries, else a
    /// new one with the default settings.
    ///
    /// An engine carries at most one request layer, so the order of calls
    /// does not matter: a second `Sharing::new` over the same engine (or a
    /// clone) is a handle on the first, and a layer built after the engine
    /// has run a while still sees the grants that ended meanwhile (their
    /// records are finished as expired, or as ended outside the request
    /// layer). When the last handle is dropped, the history stays with the
    /// engine for the next layer.
    ///
    /// ```
    /// use grantwheel::requests::{ShareRequest, Sharing};
    /// use grantwheel::{Engine, EntityId, Level, UserId};
    /// let engine = Engine::new();
    /// let a = Sharing::new(engine.clone());
    /// let done = a.share(ShareRequest::new(UserId::from_u128(1), EntityId::lead(1), Level::Read));
    /// let b = Sharing::new(engine);
    /// assert!(b.status(&done.request).is_some(), "one history");
    /// ```
    pub fn new(engine: Engine) -> Self {
        let builder = Sharing::builder(engine.clone());
        match engine.attach_layer(|restored| Sharing::layer(builder, restored)) {
            Ok(inner) => Sharing::started(inner),
            Err(existing) => Sharing { inner: existing },
        }
    }

    /// Configure a request layer over `engine`: settings, a context
    /// resolver, a grantor policy, a user directory.
    ///
    /// ```
    /// use grantwheel::requests::{ContextResolver, RequestStatus, ShareRequest, Sharing};
    /// use grantwheel::{Context, Engine, EntityId, Level, UserId};
    ///
    /// struct NoTasks;
    /// impl ContextResolver for NoTasks {
    ///     fn check(&self, _: &UserId, _: &EntityId, c: &Context) -> Result<(), String> {
    ///         match c {
    ///             Context::Task(_) => Err("tasks cannot share".into()),
    ///             _ => Ok(()),
    ///         }
    ///     }
    /// }
    /// let sharing = Sharing::builder(Engine::new()).resolver(NoTasks).build().unwrap();
    /// let req = ShareRequest::new(UserId::from_u128(1), EntityId::lead(1), Level::Read)
    ///     .context(Context::Task(uuid::Uuid::nil()));
    /// assert!(matches!(sharing.share(req).status, RequestStatus::Failed { .. }));
    /// assert!(sharing.engine().is_empty());
    /// ```
    pub fn builder(engine: Engine) -> SharingBuilder {
        SharingBuilder {
            engine,
            config: SharingConfig::default(),
            resolver: None,
            grantor_policy: None,
            users: None,
        }
    }

    /// A new request layer from its settings and the state the engine
    /// kept (loaded from the store, or left by an earlier layer).
    fn layer(b: SharingBuilder, restored: Option<Restored>) -> Arc<SharingInner> {
        let inner = Arc::new(SharingInner {
            engine: b.engine,
            config: b.config,
            resolver: b.resolver,
            grantor_policy: b.grantor_policy,
            users: b.users,
            rules: Mutex::new(automation::Rules::default()),
            queue: Mutex::new(std::collections::VecDeque::new()),
            queued: parking_lot::Condvar::new(),
            history: Mutex::new(History::default()),
            revoking: Mutex::new(HashMap::new()),
            subscription: Mutex::new(None),
        });
        // Subscribed before restoring: a grant that ends from now on either
        // raises its event after its record is back, or is found gone below.
        let weak = Arc::downgrade(&inner);
        let id = inner.engine.subscribe(move |event: &Event| {
            if let Some(inner) = weak.upgrade() {
                on_event(&inner, event);
            }
        });
        *inner.subscription.lock() = Some(id);
        if let Some(restored) = restored {
            inner.restore(restored);
        }
        inner
    }

    /// A handle on a layer just attached to its engine.
    fn started(inner: Arc<SharingInner>) -> Self {
        Sharing { inner }
    }

    /// The engine underneath (for checks).
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// Write a request's record as `Processing`, or find the request that
    /// already carries the same idempotency key. Returns the id, the
    /// record's sequence number, and whether it is new.
    fn begin(&self, sub: &Submission) -> (RequestId, u64, bool) {
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
    fn outcome_of(&self, request: RequestId, seq: u64) -> Outcome {
        let history = self.inner.history.lock();
        let record = history.records.get(&seq);
        Outcome {
            request,
            status: record.map_or(RequestStatus::Processing, |r| r.status.clone()),
            grant: None,
        }
    }

    /// Carry out a recorded request and finish its record.
    fn execute(&self, request: RequestId, seq: u64, sub: &Submission) -> Outcome {
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
    fn pending_record(&self, seq: u64) -> Option<HistoryRecord> {
        if !self.inner.engine.is_durable() {
            return None;
        }
        self.inner.history.lock().records.get(&seq).cloned()
    }

    /// Finish a request's record in memory (it is written with the next
    /// batch; a share's was written with its grant already).
    fn conclude(
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
    fn run_shares(&self, subs: Vec<Submission>) -> Vec<Outcome> {
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
            outcomes[at] =
                Some(self.conclude(request, seq, true, result.map_err(|e| Failure::from(&e))));
        }
        outcomes.into_iter().flatten().collect()
    }

    /// The checks before a share reaches the engine: the context resolver
    /// and, for a grantor who is not privileged, the delegation limits.
    fn precheck_share(
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
    fn check_delegation(&self, grantor: &UserId, req: &ShareRequest) -> Result<(), String> {
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

    fn execute_revoke(
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

    /// Queue requests and return their ids at once, with status
    /// `Processing`; [`process`](Self::process) or a [`Worker`] carries them
    /// out in order. Requests whose idempotency key was seen before are not
    /// queued again: their earlier id is returned.
    pub fn submit(&self, subs: Vec<Submission>) -> Vec<RequestId> {
        let mut ids = Vec::with_capacity(subs.len());
        let mut queued = Vec::new();
        for sub in subs {
            let (request, seq, new) = self.begin(&sub);
            ids.push(request);
            if new {
                queued.push((request, seq, sub));
            }
        }
        self.enqueue(queued);
        ids
    }

    /// Queue accepted requests. With a durable engine their `Processing`
    /// records are written first, so an id handed out is known after a
    /// restart; if that write fails the requests fail at once (status
    /// `Failed`, nothing queued).
    fn enqueue(&self, queued: Vec<(RequestId, u64, Submission)>) {
        if queued.is_empty() {
            return;
        }
        if let Err(e) = self.inner.engine.flush() {
            for (request, seq, sub) in queued {
                let is_share = matches!(sub.command, Command::Share(_));
                let failure = Failure::new(FailureKind::Store, format!("not accepted: {e}"));
                self.conclude(request, seq, is_share, Err(failure));
            }
            return;
        }
        self.inner.queue.lock().extend(queued);
        self.inner.queued.notify_all();
    }

    /// Carry out up to `max` queued requests, oldest first. Returns how many
    /// were carried out.
    pub fn process(&self, max: usize) -> usize {
        let mut done = 0;
        while done < max {
            let Some((request, seq, sub)) = self.inner.queue.lock().pop_front() else {
                break;
            };
            self.execute(request, seq, &sub);
            done += 1;
        }
        done
    }

    /// Requests queued and not yet carried out.
    pub fn pending(&self) -> usize {
        self.inner.queue.lock().len()
    }

    /// Start a thread that carries out queued requests as they arrive. It
    /// stops when the returned [`Worker`] is stopped or dropped (after the
    /// request in hand).
    pub fn start_worker(&self) -> Worker {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (sharing, flag) = (self.clone(), stop.clone());
        let handle = std::thread::Builder::new()
            .name("grantwheel-requests".into())
            .spawn(move || {
                while !flag.load(std::sync::atomic::Ordering::Acquire) {
                    if sharing.process(64) == 0 {
                        let mut queue = sharing.inner.queue.lock();
                        if queue.is_empty() && !flag.load(std::sync::atomic::Ordering::Acquire) {
                            sharing
                                .inner
                                .queued
                                .wait_for(&mut queue, std::time::Duration::from_millis(100));
                        }
                    }
                }
            })
            .ok();
        Worker {
            stop,
            inner: self.inner.clone(),
            handle,
        }
    }

    /// Carry out a share batch in the API's JSON, item by item: one response
    /// per item, in order. A bad item gets an error response and changes
    /// nothing; the others are still carried out.
    ///
    /// Which refusals leave a request behind:
    ///
    /// - **No request** (`ExceptionType` `InvalidInput`, no `RequestId`): an
    ///   item that does not decode, or that the engine's settings refuse
    ///   whatever its state: a `DurationInMinutes` over the engine's
    ///   maximum (unless the engine clamps). Such an item was never a
    ///   request the seed's status API could report on.
    /// - **A `Failed` request** (`ExceptionType` `Failed`, with a
    ///   `RequestId` whose status and history record say why): an item
    ///   refused for the state it meets when carried out: a repeat share
    ///   the engine refuses, a context the resolver refuses, a delegation
    ///   limit, a full engine or a store failure.
    ///
    /// Every error message starts with the item's index; one that concerns
    /// a field names it as the wire spells it.
    ///
    /// ```
    /// use grantwheel::requests::{wire::ItemResponse, Sharing};
    /// use grantwheel::Engine;
    /// let sharing = Sharing::new(Engine::new());
    /// let body = br#"[{"UserId":"0203f172-8642-11e7-9bed-069b743e848f","Entity":1,"EntityType":3,
    ///   "EntityId":"869196","ContextEntity":1,"ContextEntityId":"f2dbf1d5-bbab-418b-bddc-4c92ecdef214",
    ///   "AccessType":2,"DurationInMinutes":30}]"#;
    /// let responses = sharing.api_share(body).unwrap();
    /// assert!(matches!(responses[0], ItemResponse::Success { .. }));
    /// ```
    pub fn api_share(&self, body: &[u8]) -> Result<Vec<wire::ItemResponse>, wire::BatchError> {
        self.share_batch(body, "the request was not carried out", |subs| {
            self.run_shares(subs).into_iter().map(respond).collect()
        })
    }

    /// Decode a share batch, hand its valid items to `carry` as API
    /// submissions, and answer every item in order: invalid ones with their
    /// error, valid ones with what `carry` answered.
    fn share_batch(
        &self,
        body: &[u8],
        missing: &str,
        carry: impl FnOnce(Vec<Submission>) -> Vec<wire::ItemResponse>,
    ) -> Result<Vec<wire::ItemResponse>, wire::BatchError> {
        let items = wire::decode_shares_within(body, &self.limits())?;
        let subs: Vec<Submission> = items
            .iter()
            .filter_map(|i| i.as_ref().ok())
            .map(|item| Submission::api(Command::Share((*item).into())))
            .collect();
        let mut answers = carry(subs).into_iter();
        Ok(items
            .into_iter()
            .enumerate()
            .map(|(index, item)| match item {
                Err(e) => wire::ItemResponse::error("InvalidInput", e),
                Ok(item) => answers.next().map_or_else(
                    || wire::ItemResponse::error("Failed", format!("item {index}: {missing}")),
                    |answer| answer.for_item(index, share_field(&item.context)),
                ),
            })
            .collect())
    }

    /// The engine's limits, as the wire decoder checks them.
    fn limits(&self) -> wire::Limits {
        let engine = &self.inner.engine;
        wire::Limits {
            max_duration: match engine.over_max() {
                OverMax::Reject => Some(engine.max_duration()),
                OverMax::Clamp => None,
            },
        }
    }

    /// Carry out a revoke batch in the API's JSON, item by item.
    pub fn api_revoke(&self, body: &[u8]) -> Result<Vec<wire::ItemResponse>, wire::BatchError> {
        Ok(wire::decode_revokes(body)?
            .into_iter()
            .enumerate()
            .map(|(index, item)| match item {
                Err(e) => wire::ItemResponse::error("InvalidInput", e),
                Ok(item) => respond(self.run(Submission::api(Command::Revoke(item.into()))))
                    .for_item(index, share_field(&item.context)),
            })
            .collect())
    }

    /// Queue a share batch in the API's JSON: valid items get a request id
    /// at once (status `Processing`), invalid ones an error response.
    pub fn api_submit_shares(
        &self,
        body: &[u8],
    ) -> Result<Vec<wire::ItemResponse>, wire::BatchError> {
        self.share_batch(body, "the request was not queued", |subs| {
            self.submit(subs)
                .into_iter()
                .map(wire::ItemResponse::success)
                .collect()
        })
    }

    /// Write a rule (with a durable engine) before it changes in memory.
    fn save_rule(&self, id: RuleId, rule: &automation::Rule) -> Result<(), Error> {
        self.inner.engine.write_now(vec![Change::Rule {
            id,
            rule: Box::new(rule.clone()),
        }])
    }

    /// Save a rule as a draft; returns its id. Drafts do not act. With a
    /// durable engine the rule is written before this returns; if the store
    /// fails, [`Error::Store`] and no rule.
    pub fn add_rule(&self, mut rule: automation::Rule) -> Result<RuleId, Error> {
        rule.state = automation::RuleState::Draft;
        let mut rules = self.inner.rules.lock();
        let id = RuleId(rules.next + 1);
        self.save_rule(id, &rule)?;
        rules.next += 1;
        rules.rules.insert(id, rule);
        Ok(id)
    }

    /// Replace a rule; it becomes a draft again. Returns whether it existed.
    pub fn update_rule(&self, id: RuleId, mut rule: automation::Rule) -> Result<bool, Error> {
        rule.state = automation::RuleState::Draft;
        let mut rules = self.inner.rules.lock();
        if !rules.rules.contains_key(&id) {
            return Ok(false);
        }
        self.save_rule(id, &rule)?;
        rules.rules.insert(id, rule);
        Ok(true)
    }

    /// Publish a rule after checking it: conditions well formed, a positive
    /// duration within the engine's maximum, an owner the trigger knows, and
    /// a fixed user the user directory knows.
    ///
    /// ```
    /// use grantwheel::requests::automation::{Rule, ShareAction, ShareWith, Trigger};
    /// use grantwheel::requests::Sharing;
    /// use grantwheel::{Engine, EntityKind, Level, UserId};
    /// let sharing = Sharing::new(Engine::new());
    /// let action = ShareAction { with: ShareWith::User(UserId::from_u128(1)), duration_minutes: Some(0), level: Level::Read };
    /// let id = sharing.add_rule(Rule::new("bad", Trigger::EntityCreated, EntityKind::OPPORTUNITY, action)).unwrap();
    /// assert_eq!(sharing.publish_rule(id).unwrap_err().field(), Some("action.duration_minutes"));
    /// ```
    pub fn publish_rule(&self, id: RuleId) -> Result<(), Error> {
        let max_minutes = self.inner.engine.max_duration().num_minutes();
        let mut rules = self.inner.rules.lock();
        let rule = rules
            .rules
            .get_mut(&id)
            .ok_or_else(|| Error::invalid("rule", format!("no rule `{}`", id.0)))?;
        automation::check_rule(rule, max_minutes)?;
        if let (automation::ShareWith::User(u), Some(users)) = (rule.action.with, &self.inner.users)
        {
            if !users.exists(&u) {
                return Err(Error::invalid("action.with", format!("unknown user `{u}`")));
            }
        }
        let mut published = rule.clone();
        published.state = automation::RuleState::Published;
        self.save_rule(id, &published)?;
        *rule = published;
        Ok(())
    }

    /// Stop a rule acting (it stays as a draft). Returns whether it existed.
    pub fn unpublish_rule(&self, id: RuleId) -> Result<bool, Error> {
        let mut rules = self.inner.rules.lock();
        let Some(rule) = rules.rules.get_mut(&id) else {
            return Ok(false);
        };
        let mut draft = rule.clone();
        draft.state = automation::RuleState::Draft;
        self.save_rule(id, &draft)?;
        *rule = draft;
        Ok(true)
    }

    /// Delete a rule. Returns it.
    pub fn remove_rule(&self, id: RuleId) -> Result<Option<automation::Rule>, Error> {
        let mut rules = self.inner.rules.lock();
        if !rules.rules.contains_key(&id) {
            return Ok(None);
        }
        self.inner.engine.write_now(vec![Change::RemoveRule(id)])?;
        Ok(rules.rules.remove(&id))
    }

    /// A rule by id.
    pub fn rule(&self, id: RuleId) -> Option<automation::Rule> {
        self.inner.rules.lock().rules.get(&id).cloned()
    }

    /// All rules, by id.
    pub fn rules(&self) -> Vec<(RuleId, automation::Rule)> {
        let rules = self.inner.rules.lock();
        rules.rules.iter().map(|(id, r)| (*id, r.clone())).collect()
    }

    /// Feed an event: every matching published rule submits a share request
    /// (source `Automation`), queued for [`process`](Self::process) or a
    /// [`Worker`]. The same event (same id) delivered twice creates one
    /// request per rule. A rule whose grantee the event does not name (no
    /// activity or task owner) gets a `Failed` request saying so. Returns the
    /// requests' ids.
    pub fn on_event(&self, event: &automation::AutomationEvent) -> Vec<RequestId> {
        use automation::ShareWith;
        let matching: Vec<(RuleId, automation::Rule)> = {
            let rules = self.inner.rules.lock();
            rules
                .rules
                .iter()
                .filter(|(_, r)| r.matches(event))
                .map(|(id, r)| (*id, r.clone()))
                .collect()
        };
        let mut ids = Vec::with_capacity(matching.len());
        let mut queued = Vec::new();
        for (id, rule) in matching {
            let (grantee, context) = match rule.action.with {
                ShareWith::User(u) => (Some(u), event_context(event)),
                ShareWith::ActivityOwner => {
                    (event.activity.map(|(_, owner)| owner), event_context(event))
                }
                ShareWith::TaskOwner => (event.task.map(|(_, owner)| owner), event_context(event)),
            };
            let key = format!("rule:{}:event:{}", id.0, event.id);
            // Recorded against the owner if known, else against no one.
            let user = grantee.unwrap_or(UserId::from_u128(0));
            let mut req = ShareRequest::new(user, event.entity, rule.action.level).context(context);
            req.duration = rule.action.duration_minutes.map(chrono::Duration::minutes);
            let sub = Submission::automation(Command::Share(req), id).key(key);
            let (request, seq, new) = self.begin(&sub);
            ids.push(request);
            if !new {
                continue;
            }
            if grantee.is_none() {
                let reason = format!("rule `{}`: the event names no owner to share with", id.0);
                let now = self.inner.engine.now();
                let mut history = self.inner.history.lock();
                let status = Failure::new(FailureKind::NotFound, reason).status();
                history.finish(seq, status, now);
                let write = history.change(seq);
                drop(history);
                self.inner.engine.write_later(write);
                continue;
            }
            queued.push((request, seq, sub));
        }
        self.enqueue(queued);
        ids
    }

    /// Revoke every live grant that a rule's requests created. Each revoke
    /// is a request (source `Automation`) with its own record.
    pub fn revoke_rule_grants(&self, rule: RuleId) -> Vec<Outcome> {
        let grants: Vec<(GrantId, Level)> = {
            let history = self.inner.history.lock();
            history
                .records
                .values()
                .filter(|r| {
                    r.source == (Source::Automation { rule })
                        && r.kind == RequestKind::Share
                        && r.status == RequestStatus::Completed
                        && r.ended_at().is_none()
                })
                .filter_map(|r| r.grant.map(|g| (g, r.level)))
                .collect()
        };
        let now = self.inner.engine.now();
        grants
            .into_iter()
            .filter(|(g, _)| {
                self.inner
                    .engine
                    .grants_for(&g.user, &g.entity)
                    .iter()
                    .any(|live| live.id == *g && live.expires_at > now)
            })
            .map(|(g, level)| {
                let req = RevokeRequest {
                    user: g.user,
                    entity: g.entity,
                    context: g.context,
                    level,
                };
                self.run(Submission::automation(Command::Revoke(req), rule))
            })
            .collect()
    }

    /// The status of a request; `None` for an unknown (or pruned) id.
    pub fn status(&self, id: &RequestId) -> Option<RequestStatus> {
        let history = self.inner.history.lock();
        let seq = history.by_request.get(id)?;
        history.records.get(seq).map(|r| r.status.clone())
    }

    /// The status of a request in the shape of the status API.
    ///
    /// ```
    /// use grantwheel::requests::{RequestId, Sharing};
    /// use grantwheel::Engine;
    /// let sharing = Sharing::new(Engine::new());
    /// let unknown = sharing.status_response(&RequestId::random());
    /// assert_eq!(unknown.status, "Error");
    /// ```
    pub fn status_response(&self, id: &RequestId) -> StatusResponse {
        match self.status(id) {
            Some(status) => StatusResponse {
                status: "Success".into(),
                message: StatusMessage {
                    response_text: status.name().into(),
                    share_status: status.code(),
                    error_message: match status {
                        RequestStatus::Failed { reason, .. } => Some(reason),
                        _ => None,
                    },
                },
            },
            None => StatusResponse::not_found(format!("no request `{id}`")),
        }
    }

    /// The status API's answer for a request id as the API carries it (the
    /// `id` query parameter: 32 hex digits). A malformed id gets the same
    /// not-found answer as an unknown one, saying why.
    ///
    /// ```
    /// use grantwheel::requests::{ShareRequest, Sharing};
    /// use grantwheel::{Engine, EntityId, Level, UserId};
    /// let sharing = Sharing::new(Engine::new());
    /// let done = sharing.share(ShareRequest::new(UserId::from_u128(1), EntityId::lead(1), Level::Read));
    /// let answer = sharing.api_status(&done.request.to_string());
    /// assert_eq!(answer.message.response_text, "Completed");
    /// let bad = sharing.api_status("98fe");
    /// assert_eq!((bad.status.as_str(), bad.message.response_text.as_str()), ("Error", "NotFound"));
    /// ```
    pub fn api_status(&self, id: &str) -> StatusResponse {
        match id.trim().parse::<RequestId>() {
            Ok(id) => self.status_response(&id),
            Err(e) => StatusResponse::not_found(e.to_string()),
        }
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
    pub fn history(&self, entity: &EntityId, query: &HistoryQuery) -> Result<HistoryPage, Error> {
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

/// The context a rule's share goes through: the event's activity, else its
/// task, else none.
fn event_context(event: &automation::AutomationEvent) -> Context {
    match (event.activity, event.task) {
        (Some((a, _)), _) => Context::Activity(a),
        (None, Some((t, _))) => Context::Task(t),
        (None, None) => Context::Direct,
    }
}

fn respond(outcome: Outcome) -> wire::ItemResponse {
    match outcome.status {
        RequestStatus::Failed { kind, reason } => {
            wire::ItemResponse::failed(outcome.request, kind, reason)
        }
        _ => wire::ItemResponse::success(outcome.request),
    }
}

/// The wire field that names what a repeat share collides with: the
/// context's id when there is one, else the record's.
fn share_field(context: &Context) -> &'static str {
    match context {
        Context::Activity(_) => "ContextEntityId",
        _ => "EntityId",
    }
}

fn on_event(inner: &SharingInner, event: &Event) {
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
fn end_record(inner: &SharingInner, grant: &GrantId, at: DateTime<Utc>, by: Option<EndedBy>) {
    let mut history = inner.history.lock();
    let seq = history.by_grant.get(grant).copied();
    history.end(grant, at, by);
    let write = seq.and_then(|s| history.change(s));
    drop(history);
    inner.engine.write_later(write);
}

/// The status API's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusResponse {
    /// `Success` when the request is known, `Error` otherwise.
    #[serde(rename = "Status")]
    pub status: String,
    /// The request's status.
    #[serde(rename = "Message")]
    pub message: StatusMessage,
}

impl StatusResponse {
    /// The answer for a request that cannot be found.
    fn not_found(why: String) -> Self {
        StatusResponse {
            status: "Error".into(),
            message: StatusMessage {
                response_text: "NotFound".into(),
                share_status: 2,
                error_message: Some(why),
            },
        }
    }
}

/// The `Message` of the status API's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusMessage {
    /// `Processing`, `Completed` or `Failed` (`NotFound` for unknown ids).
    #[serde(rename = "ResponseText")]
    pub response_text: String,
    /// 0 processing, 1 completed, 2 failed.
    #[serde(rename = "ShareStatus")]
    pub share_status: u8,
    /// Why it failed.
    #[serde(rename = "ErrorMessage")]
    pub error_message: Option<String>,
}
