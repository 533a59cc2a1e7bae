//! Grants and the values that describe a share: what the engine, the
//! store and the events all speak.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::{Context, EntityId, GrantId, Level, UserId};

/// One grant as the API shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// Its id: (user, entity, context, serial).
    pub id: GrantId,
    /// The access it gives.
    pub level: Level,
    /// The instant it ends (exclusive: at this instant it no longer holds).
    pub expires_at: DateTime<Utc>,
    /// For a grant shared to start later: the instant its access begins
    /// (inclusive). Before it no check says yes; listings show the grant
    /// as scheduled. `None`: access began when the grant was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starts_at: Option<DateTime<Utc>>,
}

impl Grant {
    /// Whether the grant gives access at `at`: on or after its start and
    /// before its expiry.
    pub fn holds_at(&self, at: DateTime<Utc>) -> bool {
        self.starts_at.is_none_or(|s| s <= at) && at < self.expires_at
    }

    /// Whether the grant has yet to start at `at`.
    pub fn is_scheduled_at(&self, at: DateTime<Utc>) -> bool {
        self.starts_at.is_some_and(|s| s > at) && at < self.expires_at
    }
}

/// When a share's access begins.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Start {
    /// At once (the default).
    #[default]
    Now,
    /// This long from now.
    After(chrono::Duration),
    /// At this instant (one in the past means at once).
    At(DateTime<Utc>),
}

/// How long a share lasts. Durations count from the share's start: now,
/// or for a scheduled share (see [`Start`]) the later of its start and
/// now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Expiry {
    /// The engine's default duration (90 days unless configured).
    Default,
    /// This long from the start.
    After(chrono::Duration),
    /// Until this instant.
    At(DateTime<Utc>),
}

/// What to do with a duration above the configured maximum.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OverMax {
    /// Refuse the share with an error naming the field.
    Reject,
    /// Shorten it to the maximum.
    Clamp,
}

/// Which engines on a shared store raise [`Event::Expired`] and
/// [`Event::ExpiringSoon`] (every engine expires grants by its own clock,
/// for memory and checks, either way).
///
/// [`Event::Expired`]: crate::Event::Expired
/// [`Event::ExpiringSoon`]: crate::Event::ExpiringSoon
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExpiryEvents {
    /// Every engine raises them (the default): a host that sends a
    /// notification per expiry sends one per instance.
    #[default]
    Everywhere,
    /// Only the engine holding the store's lease raises them: one at a
    /// time, for as long as its connection to the store lives; when it
    /// stops, the next engine to ask (within its feed poll) takes over.
    /// Expiries while no engine holds the lease raise nothing, and for up
    /// to one poll after a holder's connection is cut two engines may both
    /// raise them.
    Leased,
}

/// What a share does when its (user, entity, context) already has a live
/// grant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RepeatShare {
    /// Revoke the old grant (reason `Replaced`) and create the new one.
    Replace,
    /// Keep the old grant, raised to the later expiry and the higher level.
    KeepLater,
    /// Refuse with [`ShareError::AlreadyShared`](crate::ShareError::AlreadyShared).
    Reject,
}

/// The effective access of a (user, entity) pair right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Access {
    /// The highest level among the pair's live grants.
    pub level: Level,
    /// Until when that level holds.
    pub until: DateTime<Utc>,
    /// Until when reading holds (at or after `until`).
    pub read_until: DateTime<Utc>,
}

/// Memory the engine holds for its grants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Footprint {
    /// Grants held (live, or expired and not yet reclaimed).
    pub grants: usize,
    /// (user, entity) pairs with at least one grant held.
    pub pairs: usize,
    /// Bytes of the index tables (all slots, used or not).
    pub index_bytes: usize,
    /// Bytes of the grant records (in use or free) and of the contexts
    /// they name.
    pub grant_bytes: usize,
    /// Bytes of the timing wheel's slot vectors.
    pub wheel_bytes: usize,
}

/// One share, as [`Engine::share`](crate::Engine::share) and
/// [`Engine::share_many`](crate::Engine::share_many) take it.
#[must_use = "its setters return the changed value"]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareSpec {
    /// The user to share with.
    pub user: UserId,
    /// The record.
    pub entity: EntityId,
    /// Through what.
    pub context: Context,
    /// The access.
    pub level: Level,
    /// For how long.
    pub expiry: Expiry,
    /// From when.
    #[serde(default)]
    pub start: Start,
}

impl ShareSpec {
    /// A direct share at `level` for the default duration.
    pub fn new(user: UserId, entity: EntityId, level: Level) -> Self {
        ShareSpec {
            user,
            entity,
            context: Context::Direct,
            level,
            expiry: Expiry::Default,
            start: Start::Now,
        }
    }

    /// The same share through `context`.
    pub fn context(mut self, context: Context) -> Self {
        self.context = context;
        self
    }

    /// The same share lasting `expiry`.
    pub fn expiry(mut self, expiry: Expiry) -> Self {
        self.expiry = expiry;
        self
    }

    /// The same share starting at `start`.
    ///
    /// ```
    /// use grantwheel::{Engine, EntityId, Expiry, Level, ShareSpec, Start, UserId};
    /// use chrono::Duration;
    /// let engine = Engine::new();
    /// let (u, e) = (UserId::from_u128(1), EntityId::lead(7));
    /// let spec = ShareSpec::new(u, e, Level::Edit)
    ///     .start(Start::After(Duration::days(7)))
    ///     .expiry(Expiry::After(Duration::days(2)));
    /// let grant = engine.share_spec(spec).unwrap();
    /// assert!(!engine.can_read(&u, &e), "not before its start");
    /// assert_eq!(grant.expires_at - grant.starts_at.unwrap(), Duration::days(2));
    /// assert_eq!(engine.scheduled_of(&u), vec![grant]);
    /// ```
    pub fn start(mut self, start: Start) -> Self {
        self.start = start;
        self
    }
}
