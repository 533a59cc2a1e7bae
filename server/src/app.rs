//! What every handler shares: the service's state ([`App`]) and the
//! helpers that read a call (its query, its JSON body) and answer it. The
//! handlers are in [`crate::routes`], one file per resource.
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

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use grantwheel::requests::wire;
use grantwheel::requests::{HistoryRecord, RequestId, Sharing};
use grantwheel::QueryError;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;

use crate::directory::Directory;
use crate::error::ApiError;
use crate::keys::Keys;
use crate::limiter::Limiter;
use crate::page::Sessions;
use crate::wire::RecordView;

/// The path prefix of the seed's API.
pub const API: &str = "/v2/EntityAccess.svc";

/// The most items a check batch may hold.
pub const MAX_CHECKS: usize = 10_000;

/// What every handler shares.
#[derive(Clone)]
pub struct App {
    pub(crate) inner: Arc<AppInner>,
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

/// The query string's parameters, in order.
pub(crate) fn params(query: &Option<String>) -> Vec<(String, String)> {
    query
        .as_deref()
        .and_then(|q| serde_urlencoded::from_str::<Vec<(String, String)>>(q).ok())
        .unwrap_or_default()
}

/// The first value of parameter `name`.
pub(crate) fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
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

    /// The body of a JSON call: the content type must be
    /// `application/json`, the body at most the configured size.
    pub(crate) async fn json_body(
        &self,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<Bytes, ApiError> {
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let essence = content_type.split(';').next().unwrap_or("").trim();
        if !essence.eq_ignore_ascii_case("application/json") {
            return Err(ApiError::bad_request(format!(
                "the content type must be `application/json`, not `{}`",
                if content_type.is_empty() {
                    "(none)"
                } else {
                    content_type
                }
            )));
        }
        let limit = self.inner.max_body;
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(ApiError::too_large(limit));
        }
        axum::body::to_bytes(body, limit)
            .await
            .map_err(|_| ApiError::too_large(limit))
    }
}

pub(crate) fn query_error(e: QueryError) -> ApiError {
    match e {
        QueryError::Store(e) => ApiError::unavailable(format!("the store cannot be read: {e}")),
        other => ApiError::bad_request(other.to_string()),
    }
}

/// The request id in a path.
pub(crate) fn request_id(raw: &str) -> Result<RequestId, ApiError> {
    raw.trim()
        .parse()
        .map_err(|e: grantwheel::requests::BadRequestId| {
            ApiError::bad_request(format!("`id`: {e}"))
        })
}

/// The `Limit` parameter: 1 to 1,000, 50 when absent.
pub(crate) fn limit_of(p: &[(String, String)]) -> Result<usize, ApiError> {
    match param(p, "Limit").map(str::trim).filter(|v| !v.is_empty()) {
        None => Ok(50),
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "`Limit`: `{}` is not a number from 1 to 1000",
                    wire::quoted(l)
                ))
            }),
    }
}

/// The records a request-layer query found, as history records at now.
pub(crate) async fn records_answer(
    app: &App,
    query: impl FnOnce(&Sharing) -> Result<Vec<HistoryRecord>, QueryError> + Send + 'static,
) -> Result<Response, ApiError> {
    let (found, now) = app.blocking(move |s| (query(s), s.engine().now())).await?;
    let records = found.map_err(query_error)?;
    Ok(ok(&records
        .iter()
        .map(|r| RecordView::of(r, now))
        .collect::<Vec<_>>()))
}

/// The `At` parameter: an RFC 3339 instant.
pub(crate) fn at_of(p: &[(String, String)]) -> Result<DateTime<Utc>, ApiError> {
    let raw = param(p, "At").ok_or_else(|| ApiError::bad_request("`At`: is required"))?;
    DateTime::parse_from_rfc3339(raw.trim())
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            ApiError::bad_request(format!(
                "`At`: `{}` is not an RFC 3339 instant: {e}",
                wire::quoted(raw)
            ))
        })
}

pub(crate) async fn read_json<T: serde::de::DeserializeOwned>(
    app: &App,
    headers: &HeaderMap,
    body: Body,
) -> Result<T, ApiError> {
    let bytes = app.json_body(headers, body).await?;
    let value = wire::strict_json(&bytes).map_err(|e| ApiError::bad_request(e.to_string()))?;
    serde_json::from_value(value).map_err(|e| ApiError::bad_request(e.to_string()))
}
