//! The library's integration tests, in one binary (one link instead of
//! fifteen). The crash tests, the server restart and the allocation test
//! are binaries of their own: they kill child processes, restart the
//! PostgreSQL server the others use, or replace the global allocator.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::unreachable,
    reason = "a test stops loudly at what it did not expect"
)]
#![allow(
    clippy::duplicate_mod,
    reason = "the fuzz checks include their own copy of common.rs, as the fuzz targets take them alone"
)]
#[cfg(feature = "sqlite")]
#[path = "../support/fuzz_checks.rs"]
mod checks;
#[path = "../support/common.rs"]
mod common;
#[path = "../support/conformance.rs"]
mod conformance;
#[cfg(feature = "postgres")]
#[path = "../support/pg.rs"]
mod pg;

mod adversarial;
mod approvals;
mod approvals_model;
mod automation;
mod concurrency;
mod durable;
mod engine;
mod examples;
mod faults;
mod instances;
mod model;
mod postgres;
mod requests;
mod scheduled;
mod store_conformance;
