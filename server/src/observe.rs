//! Each call logged and counted: a request id, the method, the route, the
//! code and the time.
//!
//! INVARIANT: nothing the caller typed reaches the log or a metric label
//! unredacted. A matched call is named by its route's template
//! (`/v2/EntityAccess.svc/Rules/{id}`), never its path; an unmatched one by
//! [`redacted_path`], which keeps only short words and cuts the rest. A
//! mistyped URL (`/Share&accessKey=K&secretKey=S`) carries the secret in
//! its path, so the raw path is never written, at any level.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;

/// The route of a single check.
const CHECK_ROUTE: &str = "/v2/EntityAccess.svc/Check";

/// The most segments of an unmatched path that are logged.
const MAX_SEGMENTS: usize = 6;
/// The longest segment kept; longer ones are cut whole.
const MAX_SEGMENT: usize = 40;

/// A loggable form of a path no route matched: each segment kept only when
/// it is a short word (ASCII letters and dots, with at most two digits, as
/// in `v2` or `EntityAccess.svc`), else replaced by `…`; at most
/// six segments. A key, a secret or an id the caller put in
/// the path is never a short word, so it never survives.
///
/// ```
/// use grantwheel_server::observe::redacted_path;
/// let secret = "4f1c".repeat(16);
/// let typed = format!("/v2/EntityAccess.svc/Share&accessKey=gw1&secretKey={secret}");
/// assert_eq!(redacted_path(&typed), "/v2/EntityAccess.svc/…");
/// assert_eq!(redacted_path(&format!("/v2/EntityAccess.svc/Share/{secret}")), "/v2/EntityAccess.svc/Share/…");
/// ```
pub fn redacted_path(path: &str) -> String {
    let mut out = String::new();
    for (i, segment) in path.split('/').skip(1).enumerate() {
        if i == MAX_SEGMENTS {
            out.push_str("/…");
            break;
        }
        out.push('/');
        let digits = segment.bytes().filter(u8::is_ascii_digit).count();
        let word = segment.len() <= MAX_SEGMENT
            && digits <= 2
            && segment
                .bytes()
                .all(|b| b.is_ascii_alphabetic() || b == b'.' || b.is_ascii_digit());
        out.push_str(if word { segment } else { "…" });
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// What every call is held to: the body limit (for reading what an early
/// answer left unread) and the deadline.
#[derive(Clone, Copy, Debug)]
pub struct CallLimits {
    /// The largest body taken.
    pub max_body: usize,
    /// Every call is answered within this (503 past it).
    pub deadline: std::time::Duration,
}

/// Answer `req` within `within`: past it, 503 `Unavailable`. A call waiting
/// on a store that does not answer (a frozen link) is answered, and the
/// caller can ask the status of what it sent. A check reads the index
/// inline and never waits on the store: no timer on the hot path.
async fn within_deadline(within: std::time::Duration, req: Request, next: Next) -> Response {
    if req.method() == axum::http::Method::GET
        && req
            .extensions()
            .get::<MatchedPath>()
            .is_some_and(|m| m.as_str() == CHECK_ROUTE)
    {
        return next.run(req).await;
    }
    match tokio::time::timeout(within, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => {
            metrics::counter!("grantwheel_call_timeouts_total").increment(1);
            axum::response::IntoResponse::into_response(crate::error::ApiError::unavailable(
                format!(
                    "the call did not finish within {} ms: the store may be unreachable; a share or revoke may still have been carried out (its status tells)",
                    within.as_millis()
                ),
            ))
        }
    }
}

/// The one middleware every call goes through (one layer, not three: this
/// is on the check path): answered within its deadline, its connection
/// kept usable after an early answer (the rest of its body read and
/// dropped, within bounds), then logged and counted in the metrics; the
/// answer carries its id in `x-request-id`.
pub async fn call(
    axum::extract::State(limits): axum::extract::State<CallLimits>,
    req: Request,
    next: Next,
) -> Response {
    static NEXT_ID: AtomicU64 = AtomicU64::new(1);
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let (route, matched) = match req.extensions().get::<MatchedPath>() {
        Some(m) => (m.as_str().to_string(), true),
        None => (redacted_path(req.uri().path()), false),
    };
    let method = req.method().clone();
    let start = Instant::now();
    let mut resp = crate::drain::keep_usable(limits.max_body, req, |req| {
        within_deadline(limits.deadline, req, next)
    })
    .await;
    let took = start.elapsed();
    let status = resp.status().as_u16();
    tracing::info!(
        request_id = id,
        method = %method,
        route = %route,
        matched,
        status,
        micros = took.as_micros() as u64,
        "call"
    );
    // Metric labels stay few: every unmatched path is one label.
    let label = if matched { route } else { "unmatched".into() };
    metrics::counter!("grantwheel_http_requests_total", "route" => label.clone(), "status" => status.to_string()).increment(1);
    metrics::histogram!("grantwheel_http_request_duration_seconds", "route" => label)
        .record(took.as_secs_f64());
    if let Ok(v) = axum::http::HeaderValue::from_str(&id.to_string()) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::redacted_path;

    #[test]
    fn short_words_stay_and_everything_else_is_cut() {
        assert_eq!(redacted_path("/"), "/");
        assert_eq!(redacted_path(""), "/");
        assert_eq!(redacted_path("/metricz"), "/metricz");
        assert_eq!(
            redacted_path("/v2/EntityAccess.svc/Shares"),
            "/v2/EntityAccess.svc/Shares"
        );
        assert_eq!(redacted_path("/a;secretKey=x"), "/…");
        assert_eq!(redacted_path("/a/b/c/d/e/f/g/h"), "/a/b/c/d/e/f/…");
        assert_eq!(redacted_path(&format!("/{}", "a".repeat(41))), "/…");
        assert_eq!(redacted_path("/0203f172"), "/…");
        assert_eq!(redacted_path("/%73ecret"), "/…");
    }
}
