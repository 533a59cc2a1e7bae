#![cfg_attr(feature = "sqlite", doc = include_str!("../README.md"))]
#![cfg_attr(
    not(feature = "sqlite"),
    doc = "Time-limited access grants: a constant-time grant index and a hierarchical timing wheel for expiry. Built without the `sqlite` feature: the README's examples need it."
)]
#![forbid(unsafe_code)]
// The other lints are the workspace's (`Cargo.toml`).

pub mod clock;
mod engine;
pub mod error;
pub mod events;
pub mod ids;
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
