//! What every handler shares: the service's state ([`App`]) and the
//! helpers that answer a call. What a call carries is read by
//! `extract.rs` and `auth.rs`; the handlers are in [`crate::routes`], one
//! file per resource.
//!
//! # Ground rules
//!
//! - Every call that may touch the store (shares, revokes, status,
//!   history, rules, events) runs on tokio's blocking pool
//!   (`App::blocking`), never on an async worker thread. A check reads
//!   only the engine's index (lock-free, no I/O) and runs inline.
//! - Credentials are verified before anything else is looked at, and only
//!   then is the call counted against its key's rate limit.
//! - No business rule lives here: decisions are the request layer's.

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use grantwheel::requests::{HistoryRecord, Sharing};
use grantwheel::QueryError;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;

use crate::directory::Directory;
use crate::error::ApiError;
use crate::keys::Keys;
use crate::limiter::Limiter;
use crate::sessions::Sessions;
use crate::views::RecordView;

/// The path prefix of the seed's API.
pub const API: &str = "/v2/EntityAccess.svc";

/// The most items a check batch may hold.
pub const MAX_CHECKS: usize = 10_000;

/// What every handler shares.
#[derive(Clone)]
pub struct App {
    pub(crate) inner: Arc<AppInner>,
}

// By hand: the state holds keys and sessions, which have no place in a
// debug print.
impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App").finish_non_exhaustive()
    }
}

pub(crate) struct AppInner {
    pub(crate) sharing: Sharing,
    pub(crate) keys: Keys,
    pub(crate) limiter: Limiter,
    /// Batch calls (a share or revoke of more than one item), limited apart.
    pub(crate) batch_limiter: Limiter,
    pub(crate) limit_checks: bool,
    pub(crate) directory: Option<Arc<Directory>>,
    pub(crate) sessions: Sessions,
    /// Whether the page's session cookie is marked `Secure` (HTTPS here or
    /// at a proxy in front).
    pub(crate) secure_cookies: bool,
    pub(crate) metrics: PrometheusHandle,
    pub(crate) max_body: usize,
    /// The duration of a share that names none, in minutes (for the page).
    pub(crate) default_minutes: i64,
}

/// A JSON answer with this code.
pub fn json_with<T: Serialize>(status: StatusCode, value: &T) -> Response {
    (status, crate::json(value)).into_response()
}

pub(crate) fn ok<T: Serialize>(value: &T) -> Response {
    json_with(StatusCode::OK, value)
}
impl App {
    pub(crate) fn sharing(&self) -> &Sharing {
        &self.inner.sharing
    }

    /// Run `f` on the blocking pool.
    pub(crate) async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Sharing) -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let sharing = self.inner.sharing.clone();
        tokio::task::spawn_blocking(move || f(&sharing))
            .await
            .map_err(|e| ApiError::internal(format!("the call failed: {e}")))
    }
}

/// The records a request-layer query found, as history records at now.
pub(crate) async fn records_answer(
    app: &App,
    query: impl FnOnce(&Sharing) -> Result<Vec<HistoryRecord>, QueryError> + Send + 'static,
) -> Result<Response, ApiError> {
    let (found, now) = app.blocking(move |s| (query(s), s.engine().now())).await?;
    let records = found?;
    Ok(ok(&records
        .iter()
        .map(|r| RecordView::of(r, now))
        .collect::<Vec<_>>()))
}
