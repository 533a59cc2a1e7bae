//! Time-limited access grants for records such as CRM leads and
//! opportunities: "may this user read or edit this record right now?",
//! answered from memory in a few loads, with expiry handled by a
//! hierarchical timing wheel.
//!
//! A host shares a record with a user for a while (read only, or read and
//! edit), through a context such as the activity that motivated the share.
//! The [`Engine`] keeps those grants, answers checks without locks,
//! allocation or I/O, reclaims grants as they expire, and tells the host
//! what happened through [`Event`]s.
//!
//! ```
//! use chrono::{Duration, TimeZone, Utc};
//! use grantwheel::{Context, Engine, EntityId, Expiry, Level, ManualClock, UserId};
//!
//! let clock = ManualClock::new(Utc.with_ymd_and_hms(2026, 11, 22, 9, 0, 0).unwrap());
//! let engine = Engine::builder().clock(clock.clone()).build()?;
//!
//! let user: UserId = "0203f172-8642-11e7-9bed-069b743e848f".parse()?;
//! let lead = EntityId::lead(869196);
//! let activity = Context::Activity("f2dbf1d5-bbab-418b-bddc-4c92ecdef214".parse()?);
//!
//! engine.share(user, lead, activity, Level::Edit, Expiry::After(Duration::minutes(30)))?;
//! assert!(engine.can_edit(&user, &lead));
//!
//! clock.advance(Duration::minutes(30));
//! assert!(!engine.can_read(&user, &lead)); // expired: checks compare the time themselves
//! assert_eq!(engine.advance(), 1);         // the wheel reclaims it
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Which part to hold
//!
//! - [`Engine`] (built by [`EngineBuilder`]) keeps the grants: share,
//!   revoke, extend, list, and the checks ([`Engine::can_read`],
//!   [`Engine::can_edit`], [`Engine::access`]). A [`Driver`] thread
//!   advances its wheel; or call [`Engine::advance`] yourself.
//! - [`requests::Sharing`] wraps an engine with what the share API needs:
//!   request ids and their status, the history of every share, automation
//!   rules, context validation, scheduled starts and approvals, and the
//!   API's JSON ([`requests::wire`]).
//! - [`store`] keeps both across restarts: [`store::MemoryStore`],
//!   `SqliteStore` (feature `sqlite`, on by default) and `PostgresStore`
//!   (feature `postgres`: many instances on one database, following one
//!   change feed, failing closed when stale).
//!
//! Ids are [`UserId`], [`EntityId`] (a lead, an opportunity, or a kind of
//! the host's), [`Context`] and [`Level`]; time comes from a [`Clock`]
//! ([`SystemClock`], or [`ManualClock`] in tests). Errors are typed by
//! family ([`ShareError`], [`RevokeError`], ...) and name the field and
//! the reason ([`InvalidArgument`]).
//!
//! # Promises
//!
//! No access past expiry (a check compares the time itself); none after a
//! revoke returns, on any thread; checks in constant time; an acknowledged
//! share survives `kill -9`; a failing store fails a share and leaves
//! nothing behind; bad input never panics. The repository's `docs/`
//! folder says how each is built and which tests prove it.

#![forbid(unsafe_code)]
// The other lints are the workspace's (`Cargo.toml`).

mod clock;
mod engine;
mod error;
mod events;
mod ids;
mod index;
mod model;
pub mod requests;
pub mod store;
mod sync;
mod wheel;

pub use clock::{Clock, ManualClock, SystemClock};
pub use engine::{
    Access, Driver, Engine, EngineBuilder, Expiry, ExpiryEvents, FeedStatus, Footprint, Grant,
    OverMax, RepeatShare, ShareSpec, Start,
};
pub use error::{
    BuildError, ChangeError, Error, InvalidArgument, NotDurable, QueryError, RevokeError,
    RuleError, ShareError,
};
pub use events::{Event, RevokeReason, SubscriptionId};
pub use ids::{BadEntityRef, Context, EntityId, EntityKind, EntityRef, GrantId, Level, UserId};

// The README's and the guides' examples run as doctests.
#[cfg(all(doctest, feature = "sqlite"))]
mod guides {
    #[doc = include_str!("../README.md")]
    struct Readme;
    #[doc = include_str!("../docs/durability.md")]
    struct Durability;
    #[doc = include_str!("../docs/requests.md")]
    struct Requests;
}
