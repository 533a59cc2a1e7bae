//! Requests and their history records: ids, sources, status, and how a
//! shared grant ended.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::{Context, EntityId, GrantId, Level, UserId};

/// The reason given to requests found unfinished when the service starts.
pub const INTERRUPTED: &str = "interrupted: the service stopped before carrying out this request";

/// The id of one share or revoke request: 32 hex digits.
///
/// ```
/// use grantwheel::requests::RequestId;
/// let id: RequestId = "98fe2984209c413c9b6b06a1b68111ff".parse().unwrap();
/// assert_eq!(id.to_string(), "98fe2984209c413c9b6b06a1b68111ff");
/// assert!("98fe".parse::<RequestId>().is_err());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(u128);

impl RequestId {
    /// A new id: time-ordered (UUID version 7 layout: 48 bits of
    /// milliseconds, then 74 random bits), so ids made later sort later
    /// and a store's index of ids grows at its end instead of everywhere.
    pub fn random() -> Self {
        RequestId(uuid::Uuid::now_v7().as_u128())
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RequestId({self})")
    }
}

/// A request id that is not 32 hex digits.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid request id `{0}`: expected 32 hex digits")]
pub struct BadRequestId(pub String);

impl std::str::FromStr for RequestId {
    type Err = BadRequestId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(BadRequestId(s.to_string()));
        }
        u128::from_str_radix(s, 16)
            .map(RequestId)
            .map_err(|_| BadRequestId(s.to_string()))
    }
}

impl Serialize for RequestId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for RequestId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The id of an automation rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RuleId(pub u64);

/// Where a request came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Source {
    /// The share API (JSON).
    Api,
    /// An automation rule.
    Automation {
        /// The rule.
        rule: RuleId,
    },
    /// A direct call by the host.
    Direct,
}

impl Source {
    /// The source's kind: the history tab's API / Automation column.
    pub fn kind(&self) -> SourceKind {
        match self {
            Source::Api => SourceKind::Api,
            Source::Automation { .. } => SourceKind::Automation,
            Source::Direct => SourceKind::Direct,
        }
    }
}

/// The kind of a [`Source`], without the rule: filters "all automation".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SourceKind {
    /// The share API.
    Api,
    /// Any automation rule.
    Automation,
    /// Direct calls by the host.
    Direct,
}

/// The kind of a [`RequestStatus`], without its details: what the history
/// tab filters by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StatusKind {
    /// Accepted, not yet carried out.
    Processing,
    /// Carried out.
    Completed,
    /// Refused or failed.
    Failed,
}

/// What a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RequestKind {
    /// Give access.
    Share,
    /// Take access away.
    Revoke,
}

/// Where a request stands: the seeds' Processing, Completed, Failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RequestStatus {
    /// Accepted, not yet carried out.
    Processing,
    /// Carried out.
    Completed,
    /// Refused or failed; nothing changed.
    Failed {
        /// What kind of failure, for a host to map to its own codes.
        #[serde(default)]
        kind: FailureKind,
        /// Why, in words.
        reason: String,
    },
}

/// What kind of failure ended a request: a host maps it to its own codes
/// (an HTTP status, say) without reading the message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum FailureKind {
    /// The request named something invalid (for example a duration over
    /// the engine's maximum).
    InvalidInput,
    /// The host's context resolver refused the request's context.
    ContextRefused,
    /// The grantor may not give this access (delegation limits).
    Delegation,
    /// Nothing to act on: no live grant to revoke, or an automation event
    /// that names nobody to share with.
    NotFound,
    /// The (user, entity, context) already has a live grant and the engine
    /// refuses repeat shares.
    AlreadyShared,
    /// The engine holds as many grants as it can.
    Capacity,
    /// The store failed, so nothing was changed (or the request was not
    /// accepted).
    Store,
    /// The service stopped before carrying the request out.
    Interrupted,
    /// An approver denied the share.
    Denied,
    /// No approver acted on the share within the approval timeout.
    ApprovalTimedOut,
    /// Recorded by a version that kept no failure kinds.
    #[default]
    Unknown,
}

impl FailureKind {
    /// The kind's name, as stores and the API write it (`InvalidInput`,
    /// `ContextRefused`, ...); [`FromStr`](std::str::FromStr) reads it
    /// back.
    pub fn name(self) -> &'static str {
        match self {
            FailureKind::InvalidInput => "InvalidInput",
            FailureKind::ContextRefused => "ContextRefused",
            FailureKind::Delegation => "Delegation",
            FailureKind::NotFound => "NotFound",
            FailureKind::AlreadyShared => "AlreadyShared",
            FailureKind::Capacity => "Capacity",
            FailureKind::Store => "Store",
            FailureKind::Interrupted => "Interrupted",
            FailureKind::Denied => "Denied",
            FailureKind::ApprovalTimedOut => "ApprovalTimedOut",
            FailureKind::Unknown => "Unknown",
        }
    }
}

/// A name that is no [`FailureKind`]'s.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a failure kind")]
pub struct BadFailureKind(pub String);

impl std::str::FromStr for FailureKind {
    type Err = BadFailureKind;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Ok(match name {
            "InvalidInput" => FailureKind::InvalidInput,
            "ContextRefused" => FailureKind::ContextRefused,
            "Delegation" => FailureKind::Delegation,
            "NotFound" => FailureKind::NotFound,
            "AlreadyShared" => FailureKind::AlreadyShared,
            "Capacity" => FailureKind::Capacity,
            "Store" => FailureKind::Store,
            "Interrupted" => FailureKind::Interrupted,
            "Denied" => FailureKind::Denied,
            "ApprovalTimedOut" => FailureKind::ApprovalTimedOut,
            "Unknown" => FailureKind::Unknown,
            other => return Err(BadFailureKind(other.to_string())),
        })
    }
}

impl RequestStatus {
    /// The status's kind, without its details.
    pub fn kind(&self) -> StatusKind {
        match self {
            RequestStatus::Processing => StatusKind::Processing,
            RequestStatus::Completed => StatusKind::Completed,
            RequestStatus::Failed { .. } => StatusKind::Failed,
        }
    }

    /// The status's name: `Processing`, `Completed` or `Failed`.
    pub fn name(&self) -> &'static str {
        match self {
            RequestStatus::Processing => "Processing",
            RequestStatus::Completed => "Completed",
            RequestStatus::Failed { .. } => "Failed",
        }
    }
}

/// Who or what ended a shared grant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EndedBy {
    /// A revoke request.
    Request(RequestId),
    /// A later share of the same (user, entity, context) replaced it.
    Replaced,
    /// Revoked directly on the engine, outside the request layer.
    Engine,
}

/// One request in the share history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryRecord {
    /// The request.
    pub request: RequestId,
    /// Share or revoke.
    pub kind: RequestKind,
    /// The record shared.
    pub entity: EntityId,
    /// The user shared with.
    pub user: UserId,
    /// Through what.
    pub context: Context,
    /// The access asked for.
    pub level: Level,
    /// The duration asked for (`None`: the engine's default, or a revoke).
    pub duration: Option<chrono::Duration>,
    /// When the granted access ends (shares that completed).
    pub expires_at: Option<DateTime<Utc>>,
    /// Where the request came from.
    pub source: Source,
    /// Where it stands.
    pub status: RequestStatus,
    /// The grant it created or touched (shares that completed).
    pub grant: Option<GrantId>,
    /// When the request was made.
    pub created_at: DateTime<Utc>,
    /// When it completed or failed.
    pub completed_at: Option<DateTime<Utc>>,
    /// When the grant was revoked or replaced, and by what.
    pub revoked: Option<(DateTime<Utc>, EndedBy)>,
    /// When the grant expired and was reclaimed.
    pub expired_at: Option<DateTime<Utc>>,
    /// The request's idempotency key, if it had one.
    pub idempotency_key: Option<String>,
    /// When the access begins, for a share made to start later: the start
    /// asked for while the request is in flight; once it completed, the
    /// grant's start (`None` if its access began at once).
    #[serde(default)]
    pub starts_at: Option<DateTime<Utc>>,
    /// The user on whose authority the share was asked, if one was named
    /// (delegation limits apply to them).
    #[serde(default)]
    pub granted_by: Option<UserId>,
    /// The approval the share needed, if the approval policy asked for
    /// one: why, until when, and the decision once made.
    #[serde(default)]
    pub approval: Option<Approval>,
    /// Why the grant ended before its expiry, when the request layer ended
    /// it for a reason of its own: its start refused when the host's hooks
    /// were asked again (`Sharing::check_starts`).
    #[serde(default)]
    pub end_reason: Option<String>,
}

/// A share's approval: why it was needed, until when an approver may act,
/// and the decision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// Why the policy asked for an approver.
    pub why: String,
    /// After this instant nobody may act on it: the request fails
    /// ([`FailureKind::ApprovalTimedOut`]).
    pub deadline: DateTime<Utc>,
    /// The decision, once an approver made it.
    pub decision: Option<Decision>,
}

/// Who decided on a share's approval, when, how and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// The approver.
    pub approver: UserId,
    /// Approved (`true`) or denied.
    pub approved: bool,
    /// When.
    pub at: DateTime<Utc>,
    /// The approver's words, if any.
    pub reason: Option<String>,
}

impl HistoryRecord {
    /// Whether the grant this share made was live at `at` (from its
    /// completion, or its start if later, until it ended).
    pub fn gave_access_at(&self, at: DateTime<Utc>) -> bool {
        let (Some(done), Some(end)) = (self.completed_at, self.expires_at) else {
            return false;
        };
        let start = self.starts_at.map_or(done, |s| s.max(done));
        let end = match self.revoked {
            Some((t, _)) => end.min(t),
            None => end,
        };
        self.kind == RequestKind::Share
            && self.status == RequestStatus::Completed
            && start <= at
            && at < end
    }

    /// Whether the request waits for an approver: `Processing`, with an
    /// approval not yet decided (the stage "awaiting approval").
    pub fn awaiting_approval(&self) -> bool {
        self.status == RequestStatus::Processing
            && self.approval.as_ref().is_some_and(|a| a.decision.is_none())
    }

    /// When the record's grant stopped (revoked or expired), if it did.
    pub fn ended_at(&self) -> Option<DateTime<Utc>> {
        self.revoked.map(|(t, _)| t).or(self.expired_at)
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

    /// Whether `r` passes every filter (paging aside).
    pub fn keeps(&self, r: &HistoryRecord) -> bool {
        self.user.is_none_or(|u| u == r.user)
            && self.status.is_none_or(|s| s == r.status.kind())
            && self.source.is_none_or(|s| s == r.source)
            && self.source_kind.is_none_or(|k| k == r.source.kind())
            && self.from.is_none_or(|f| r.created_at >= f)
            && self.until.is_none_or(|u| r.created_at < u)
    }
}

/// Where a history page ended: pass it to the next query. It names a
/// place in the store's history order, so records written after the first
/// page (which are newer) never shift the pages that follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Cursor(u64);

impl Cursor {
    /// The cursor of a page that continues with the records whose place in
    /// the history order is below `place` (for store implementations).
    pub fn before(place: u64) -> Self {
        Cursor(place)
    }

    /// The place in the history order this cursor continues below.
    pub fn place(&self) -> u64 {
        self.0
    }
}

/// One page of history, newest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryPage {
    /// The records.
    pub records: Vec<HistoryRecord>,
    /// The cursor of the next page, if there are more records.
    pub next: Option<Cursor>,
}
