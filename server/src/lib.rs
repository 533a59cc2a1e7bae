//! grantwheel's share API as an HTTP service.
//!
//! The seed's endpoints (`Share`, `Revoke`, `Status/Get` under
//! `/v2/EntityAccess.svc`) with access keys and the 25-calls-per-5-s
//! limit, checks, rules and events for automation, the share history as
//! JSON and as a page, health, readiness and metrics. [`Server`] runs it;
//! the binary `grantwheel-server` is its command line.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod app;
pub mod auth;
pub mod config;
pub mod db;
pub mod directory;
mod drain;
pub mod error;
mod extract;
pub mod keys;
pub mod limiter;
pub mod observe;
pub mod routes;
mod serve;
pub mod sessions;
pub mod starting;
pub mod tls;
pub mod views;
pub mod watch;

pub use serve::{Server, StartError};

use axum::http::header;
use axum::response::{IntoResponse, Response};

/// `value` as a JSON answer.
pub fn json<T: serde::Serialize>(value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => error::ApiError::internal(format!("the answer could not be written: {e}"))
            .into_response(),
    }
}
