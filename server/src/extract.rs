//! What a handler reads from a call besides its credentials (those are
//! `auth.rs`'s): the query string's parameters, once, as an extractor
//! ([`Params`]), the common parameters, and a JSON body (its content type,
//! its size, strictly parsed).

use axum::body::{Body, Bytes};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use chrono::{DateTime, Utc};
use grantwheel::requests::wire;
use grantwheel::requests::RequestId;

use crate::app::App;
use crate::error::ApiError;

/// The query string's parameters, in order (an absent or unreadable query
/// string has none).
pub(crate) struct Params(pub(crate) Vec<(String, String)>);

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Params(parse(parts.uri.query())))
    }
}

/// The parameters of a query string.
fn parse(query: Option<&str>) -> Vec<(String, String)> {
    query
        .and_then(|q| serde_urlencoded::from_str::<Vec<(String, String)>>(q).ok())
        .unwrap_or_default()
}

/// The parameters of a raw query string (where the raw string is needed too).
pub(crate) fn params(query: &Option<String>) -> Vec<(String, String)> {
    parse(query.as_deref())
}

/// The first value of parameter `name`.
pub(crate) fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

impl App {
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
