//! Errors of the mutating calls, one type per family of operations, each
//! convertible into the crate-wide [`Error`]. Checks never fail.
//!
//! A signature names only what its call can do: a bulk revoke fails only
//! with [`NotDurable`], a flush only with a [`StoreError`]. The store's own
//! error reaches the caller typed (a host can tell
//! [`StoreError::Locked`] from [`StoreError::Io`]), never as a string.
//!
//! Messages follow one rule set: lowercase, no trailing period, the value
//! the caller gave in backticks, and what to do about it when that is not
//! obvious.

use crate::ids::GrantId;
use crate::model::grant::Grant;
use crate::model::history::RuleId;
use crate::store::StoreError;

/// An argument or setting was rejected: [`field`](Self::field) names it,
/// [`reason`](Self::reason) says why, with the offending value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid `{field}`: {reason}")]
pub struct InvalidArgument {
    field: &'static str,
    reason: String,
}

impl InvalidArgument {
    pub(crate) fn new(field: &'static str, reason: impl Into<String>) -> Self {
        InvalidArgument {
            field,
            reason: reason.into(),
        }
    }

    /// The argument or setting that was rejected.
    pub fn field(&self) -> &'static str {
        self.field
    }

    /// Why it was rejected.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

/// Why an engine (or a request layer) could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// A setting was rejected.
    #[error(transparent)]
    Invalid(#[from] InvalidArgument),
    /// The engine could not load its state from the store.
    #[error("loading the engine's state failed: {0}")]
    Load(#[from] StoreError),
}

/// Why a share was refused. Every variant leaves the engine as it was.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ShareError {
    /// An argument was rejected (a duration, an expiry).
    #[error(transparent)]
    Invalid(#[from] InvalidArgument),
    /// The (user, entity, context) already has a live grant and the engine
    /// is configured to reject repeated shares.
    #[error("a live grant already exists for this user, entity and context (until {}); revoke or extend it instead", .existing.expires_at)]
    AlreadyShared {
        /// The grant that is already live.
        existing: Grant,
    },
    /// The engine holds as many grants as it can index; revoke or let some
    /// expire, or run more engines.
    #[error("the engine holds its maximum of {limit} grants")]
    Full {
        /// The most grants one engine holds.
        limit: usize,
    },
    /// The store could not make the share durable, so it was not made.
    #[error("the share was not made because the store failed: {0}")]
    Store(StoreError),
}

/// Why an expiry change (`set_expiry`, `extend`) was refused. Every
/// variant leaves the grant as it was.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChangeError {
    /// No live grant has this id: it never existed, was revoked, replaced,
    /// or has expired.
    #[error("no live grant `{}` for user `{}` (serial {})", .0.entity, .0.user, .0.serial)]
    NotLive(GrantId),
    /// The new expiry was rejected.
    #[error(transparent)]
    Invalid(#[from] InvalidArgument),
    /// The store could not make the change durable, so it was not made.
    #[error("the change was not made because the store failed: {0}")]
    Store(StoreError),
    /// The grant does not wait for its start to be confirmed (it is live
    /// already, or yet to start, or its engine does not confirm starts).
    #[error("grant `{}` for user `{}` (serial {}) does not wait for its start to be confirmed", .0.entity, .0.user, .0.serial)]
    NotDue(GrantId),
}

/// Grants revoked in memory (every check says no from now on) whose revoke
/// the store failed to record. The engine writes the revoke with its next
/// successful batch; until then a restart would bring the grants back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} grant(s) revoked in memory but not yet durable, because the store failed: {source}", .revoked.len())]
pub struct NotDurable {
    /// The grants revoked.
    pub revoked: Vec<Grant>,
    /// The store's error.
    pub source: StoreError,
}

/// Why a revoke by id failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RevokeError {
    /// No live grant has this id.
    #[error("no live grant `{}` for user `{}` (serial {})", .0.entity, .0.user, .0.serial)]
    NotLive(GrantId),
    /// Revoked in memory, not yet durable.
    #[error(transparent)]
    NotDurable(#[from] NotDurable),
}

/// Why a history query was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QueryError {
    /// A filter or the page size was rejected.
    #[error(transparent)]
    Invalid(#[from] InvalidArgument),
    /// The store could not be read (or, for pruning, written).
    #[error(transparent)]
    Store(StoreError),
}

/// Why a rule change failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RuleError {
    /// No rule has this id.
    #[error("no rule `{}`", .0 .0)]
    NotFound(RuleId),
    /// The rule was rejected (its conditions, duration or grantee).
    #[error(transparent)]
    Invalid(#[from] InvalidArgument),
    /// The store could not write the change, so it was not made.
    #[error("the rule was not changed because the store failed: {0}")]
    Store(StoreError),
}

/// Any error of this crate: each operation family's error converts into
/// it, for hosts that handle them in one place.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Building failed.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// A share was refused.
    #[error(transparent)]
    Share(#[from] ShareError),
    /// An expiry change was refused.
    #[error(transparent)]
    Change(#[from] ChangeError),
    /// A revoke failed.
    #[error(transparent)]
    Revoke(#[from] RevokeError),
    /// Revoked, not yet durable.
    #[error(transparent)]
    NotDurable(#[from] NotDurable),
    /// A history query was refused.
    #[error(transparent)]
    Query(#[from] QueryError),
    /// A rule change failed.
    #[error(transparent)]
    Rule(#[from] RuleError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Error {
    /// The rejected argument, when the error is one.
    pub fn invalid_argument(&self) -> Option<&InvalidArgument> {
        match self {
            Error::Build(BuildError::Invalid(a))
            | Error::Share(ShareError::Invalid(a))
            | Error::Change(ChangeError::Invalid(a))
            | Error::Query(QueryError::Invalid(a))
            | Error::Rule(RuleError::Invalid(a)) => Some(a),
            _ => None,
        }
    }

    /// The name of the rejected field, when the error is an invalid
    /// argument.
    pub fn field(&self) -> Option<&'static str> {
        self.invalid_argument().map(InvalidArgument::field)
    }
}

/// `field()` on each family's error, for tests and hosts that only want
/// the field.
macro_rules! field_of {
    ($($t:ty),*) => {$(
        impl $t {
            /// The name of the rejected field, when the error is an
            /// invalid argument.
            pub fn field(&self) -> Option<&'static str> {
                match self {
                    Self::Invalid(a) => Some(a.field()),
                    _ => None,
                }
            }
        }
    )*};
}

field_of!(BuildError, ShareError, ChangeError, QueryError, RuleError);

/// How a change's result reads when its batch could not be written:
/// `revoked` holds the grants it revoked (they stay revoked).
pub(crate) trait FromStoreFailure {
    fn from_store_failure(source: StoreError, revoked: Vec<Grant>) -> Self;
}

impl FromStoreFailure for ShareError {
    fn from_store_failure(source: StoreError, _: Vec<Grant>) -> Self {
        ShareError::Store(source)
    }
}

impl FromStoreFailure for ChangeError {
    fn from_store_failure(source: StoreError, _: Vec<Grant>) -> Self {
        ChangeError::Store(source)
    }
}

impl FromStoreFailure for NotDurable {
    fn from_store_failure(source: StoreError, revoked: Vec<Grant>) -> Self {
        NotDurable { revoked, source }
    }
}

impl FromStoreFailure for RevokeError {
    fn from_store_failure(source: StoreError, revoked: Vec<Grant>) -> Self {
        RevokeError::NotDurable(NotDurable { revoked, source })
    }
}

impl FromStoreFailure for StoreError {
    fn from_store_failure(source: StoreError, _: Vec<Grant>) -> Self {
        source
    }
}
