//! grantwheel
#![forbid(unsafe_code)]
pub mod clock;
pub mod ids;
pub(crate) mod index;
pub(crate) mod wheel;
pub use clock::{Clock, ManualClock, SystemClock};
pub use ids::*;
