//! What a request asks: shares and revokes, their submissions and
//! outcomes, and the failures recorded for them.

use serde::{Deserialize, Serialize};

use crate::engine::Grant;
use crate::error::{NotDurable, ShareError};
use crate::ids::{Context, EntityId, Level, UserId};
use crate::model::grant::Start;
use crate::model::history::{FailureKind, RequestId, RequestStatus, RuleId, Source};

use super::wire;

/// A failure on its way into a request's record.
#[derive(Clone, Debug)]
pub(super) struct Failure {
    pub(super) kind: FailureKind,
    pub(super) reason: String,
}

impl Failure {
    pub(super) fn new(kind: FailureKind, reason: impl Into<String>) -> Self {
        Failure {
            kind,
            reason: reason.into(),
        }
    }

    pub(super) fn status(self) -> RequestStatus {
        RequestStatus::Failed {
            kind: self.kind,
            reason: self.reason,
        }
    }
}

impl From<&ShareError> for Failure {
    fn from(e: &ShareError) -> Self {
        let kind = match e {
            ShareError::Invalid(_) => FailureKind::InvalidInput,
            ShareError::AlreadyShared { existing } => {
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
            ShareError::Full { .. } => FailureKind::Capacity,
            _ => FailureKind::Store,
        };
        Failure::new(kind, e.to_string())
    }
}

impl From<&NotDurable> for Failure {
    fn from(e: &NotDurable) -> Self {
        Failure::new(FailureKind::Store, e.to_string())
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
    /// How long (default: the engine's default duration), counted from
    /// the start.
    pub duration: Option<chrono::Duration>,
    /// From when (default: at once). A share that starts later is held
    /// as a scheduled grant: no check says yes before its start.
    #[serde(default)]
    pub start: Start,
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
            start: Start::Now,
        }
    }

    /// Starting then (see [`Start`]).
    pub fn start(mut self, start: Start) -> Self {
        self.start = start;
        self
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
            start: match (item.starts_at, item.starts_in_minutes) {
                (Some(at), _) => Start::At(at),
                (None, Some(m)) => Start::After(chrono::Duration::minutes(m)),
                (None, None) => Start::Now,
            },
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
