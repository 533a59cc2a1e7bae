#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod clock;
mod engine;
pub mod error;
pub mod events;
pub mod ids;
mod index;
mod model;
pub mod requests;
pub mod store;
mod wheel;

pub use clock::{Clock, ManualClock, SystemClock};
pub use engine::{
    Access, Driver, Engine, EngineBuilder, Expiry, Footprint, Grant, OverMax, RepeatShare,
    ShareSpec,
};
pub use error::{
    BuildError, ChangeError, Error, InvalidArgument, NotDurable, QueryError, RevokeError,
    RuleError, ShareError,
};
pub use events::{Event, RevokeReason, SubscriptionId};
pub use ids::{BadEntityRef, Context, EntityId, EntityKind, EntityRef, GrantId, Level, UserId};
