//! Errors of the mutating calls. Checks never fail.
//!
//! Messages follow one rule set: lowercase, no trailing period, the value
//! the caller gave in backticks, and what to do about it when that is not
//! obvious.

use crate::ids::GrantId;
use crate::model::grant::Grant;
use crate::store::StoreError;

/// What went wrong in a share, a change or a revoke.
///
/// Every variant but [`Error::NotDurable`] leaves the engine's state as it
/// was before the call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An argument was rejected; `field` names it and `reason` says why.
    #[error("invalid `{field}`: {reason}")]
    Invalid {
        /// The argument or setting that was rejected.
        field: &'static str,
        /// Why it was rejected, with the offending value.
        reason: String,
    },
    /// The (user, entity, context) already has a live grant and the engine
    /// is configured to reject repeated shares.
    #[error("a live grant already exists for this user, entity and context (until {}); revoke or extend it instead", .existing.expires_at)]
    AlreadyShared {
        /// The grant that is already live.
        existing: Grant,
    },
    /// No live grant has this id: it never existed, was revoked, replaced,
    /// or has expired.
    #[error("no live grant `{}` for user `{}` (serial {})", .0.entity, .0.user, .0.serial)]
    NotLive(GrantId),
    /// The engine holds as many grants as it can index; revoke or let some
    /// expire, or run more engines.
    #[error("the engine holds its maximum of {limit} grants")]
    Full {
        /// The most grants one engine holds.
        limit: usize,
    },
    /// The store could not make the change durable, so it was not made:
    /// no grant was created or extended.
    #[error("the change was not made because the store failed: {reason}")]
    Store {
        /// The store's error.
        reason: String,
    },
    /// The grants were revoked in memory (every check says no from now on)
    /// but the store failed to record it. The engine writes the revoke with
    /// its next successful batch; until then a restart would bring the
    /// grants back.
    #[error("{} grant(s) revoked in memory but not yet durable, because the store failed: {reason}", .revoked.len())]
    NotDurable {
        /// The grants revoked.
        revoked: Vec<Grant>,
        /// The store's error.
        reason: String,
    },
    /// The engine could not load its state from the store.
    #[error("loading the engine's state failed: {0}")]
    Load(#[from] StoreError),
}

impl Error {
    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Error::Invalid {
            field,
            reason: reason.into(),
        }
    }

    /// The name of the rejected field, for [`Error::Invalid`].
    pub fn field(&self) -> Option<&'static str> {
        match self {
            Error::Invalid { field, .. } => Some(field),
            _ => None,
        }
    }
}
