//! The service's tests, in one binary: over real sockets (`http`,
//! `process`, `ops`, `postgres`) and in a real browser (`browser`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::unreachable,
    reason = "a test stops loudly at what it did not expect"
)]

mod common;
#[path = "../../../tests/support/pg.rs"]
mod pg;

mod browser;
mod http;
mod ops;
mod postgres;
mod process;
