//! The service while its store is not reachable yet: the address answers
//! at once (`/health` says it is starting, everything else 503), and the
//! store is tried again with a growing pause until it answers.

use std::time::Duration;

use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

use crate::error::ApiError;

/// The first pause between tries, doubled after each failure up to
/// [`MAX_PAUSE`].
pub const FIRST_PAUSE: Duration = Duration::from_millis(250);
/// The longest pause between tries.
pub const MAX_PAUSE: Duration = Duration::from_secs(10);

/// The pause after `failures` failed tries.
///
/// ```
/// use grantwheel_server::starting::pause_after;
/// use std::time::Duration;
/// assert_eq!(pause_after(1), Duration::from_millis(250));
/// assert_eq!(pause_after(3), Duration::from_secs(1));
/// assert_eq!(pause_after(40), Duration::from_secs(10));
/// ```
pub fn pause_after(failures: u32) -> Duration {
    FIRST_PAUSE
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(MAX_PAUSE)
}

fn router() -> Router {
    Router::new()
        .route(
            "/health",
            get(|| async { crate::json(&serde_json::json!({"Status": "Starting"})) }),
        )
        .fallback(|| async { not_yet() })
}

fn not_yet() -> Response {
    ApiError::unavailable(
        "starting: the store is not reachable yet; it is tried again until it answers",
    )
    .into_response()
}

/// Answer on a second handle of `listener` until `stop` completes; then
/// finish the calls in flight and let go of it (the listening socket stays
/// open through the first handle).
pub async fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    match tls {
        Some(acceptor) => {
            let listener = crate::tls::TlsListener::new(listener, acceptor)?;
            axum::serve(listener, router())
                .with_graceful_shutdown(stop)
                .await
        }
        None => {
            axum::serve(listener, router())
                .with_graceful_shutdown(stop)
                .await
        }
    }
}
