//! Plain data shared by every layer: grants, history records, rules.
//!
//! This module depends only on ids and time; the engine, the store, the
//! events and the request layer all speak it, and nothing here knows them.

pub mod grant;
pub mod history;
pub mod rule;
