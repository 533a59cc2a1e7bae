//! Health, readiness, metrics and the OpenAPI document.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use grantwheel::requests::RequestId;
use serde::Serialize;

use crate::app::{ok, App};
use crate::error::ApiError;

/// How long `/ready` waits for the store: a probe's client gives up after a
/// few seconds, and a store that slow is not ready anyway.
pub const READY_WITHIN: std::time::Duration = std::time::Duration::from_secs(2);

/// What `/health` and `/ready` say of the change feed (with
/// `--postgres`): how far this instance has followed the others' writes.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct FeedBody {
    position: u64,
    fresh: bool,
    caught_up_at: Option<String>,
    skew_ms: Option<i64>,
    problem: Option<String>,
    resyncs: u64,
    head: Option<u64>,
    lag: Option<u64>,
}

pub(crate) fn feed_body(app: &App) -> Option<FeedBody> {
    app.sharing().engine().feed_status().map(|f| FeedBody {
        position: f.position,
        fresh: f.fresh,
        caught_up_at: f.caught_up_at.map(|t| t.to_rfc3339()),
        skew_ms: f.skew_ms,
        problem: f.problem,
        resyncs: f.resyncs,
        head: f.head,
        lag: f.head.map(|h| h.saturating_sub(f.position)),
    })
}

// Alive whatever the store and the feed say (a restart would not help);
// what they say is shown, and `/ready` is what fails.
pub(crate) async fn health(State(app): State<App>) -> Response {
    match feed_body(&app) {
        Some(feed) => ok(&serde_json::json!({"Status": "Ok", "Feed": feed})),
        None => ok(&serde_json::json!({"Status": "Ok"})),
    }
}

pub(crate) async fn ready(State(app): State<App>) -> Response {
    // Over a shared store: not ready while this instance is behind the
    // other instances' writes (its checks say no until it catches up).
    let feed = feed_body(&app);
    if let Some(f) = feed.as_ref().filter(|f| !f.fresh) {
        let why = f.problem.as_deref().unwrap_or("not caught up yet");
        return ApiError::unavailable(format!(
            "not ready: this instance is behind the change feed at position {}, and its checks say no: {why}",
            f.position
        ))
        .into_response();
    }
    // A read of the store through the request layer: not ready while the
    // store cannot answer.
    let probe = tokio::time::timeout(
        READY_WITHIN,
        app.blocking(|s| s.status(&RequestId::random()).map(|_| ())),
    )
    .await;
    let Ok(probe) = probe else {
        return ApiError::unavailable(format!(
            "not ready: the store did not answer within {} ms",
            READY_WITHIN.as_millis()
        ))
        .into_response();
    };
    match probe {
        Ok(Ok(())) => match feed {
            Some(feed) => ok(&serde_json::json!({"Status": "Ready", "Feed": feed})),
            None => ok(&serde_json::json!({"Status": "Ready"})),
        },
        Ok(Err(e)) => ApiError::unavailable(format!("not ready: the store cannot be read: {e}"))
            .into_response(),
        Err(e) => e.into_response(),
    }
}

pub(crate) async fn metrics_route(State(app): State<App>) -> Response {
    let engine = app.sharing().engine();
    metrics::gauge!("grantwheel_live_grants").set(engine.len() as f64);
    metrics::gauge!("grantwheel_requests_in_memory").set(app.sharing().in_memory() as f64);
    if let Some(f) = engine.feed_status() {
        metrics::gauge!("grantwheel_feed_position").set(f.position as f64);
        metrics::gauge!("grantwheel_feed_fresh").set(if f.fresh { 1.0 } else { 0.0 });
        if let Some(ms) = f.skew_ms {
            metrics::gauge!("grantwheel_clock_skew_ms").set(ms as f64);
        }
        metrics::gauge!("grantwheel_feed_resyncs").set(f.resyncs as f64);
        if let Some(head) = f.head {
            metrics::gauge!("grantwheel_feed_head").set(head as f64);
            metrics::gauge!("grantwheel_feed_lag_changes")
                .set(head.saturating_sub(f.position) as f64);
        }
        if let Some(at) = f.caught_up_at {
            // Alert on this before it reaches --max-staleness, when checks
            // start to say no.
            let age = (engine.now() - at).num_milliseconds().max(0) as f64 / 1000.0;
            metrics::gauge!("grantwheel_feed_catch_up_age_seconds").set(age);
        }
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.inner.metrics.render(),
    )
        .into_response()
}

/// The OpenAPI document of every endpoint, as served at `/openapi.yaml`.
pub const OPENAPI: &str = include_str!("../../openapi.yaml");

pub(crate) async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/yaml")], OPENAPI).into_response()
}

pub(crate) async fn no_api() -> ApiError {
    ApiError::no_api()
}
