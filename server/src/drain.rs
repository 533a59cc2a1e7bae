//! Connections stay usable after an early answer.
//!
//! Many answers come before the body is read: 401 for a wrong key, 400 for
//! a wrong content type, 404, 405, 429. A body left unread on a kept-alive
//! connection cannot be skipped, so the connection would have to end; a
//! pooled client that sent its next call on it would get a transport error
//! and could not tell whether that call happened. So after such an answer
//! the rest of the body is read and thrown away, within bounds (at most
//! the body limit, within [`DRAIN_WITHIN`]); past them the answer says
//! `Connection: close`, and the client opens a new connection knowing the
//! old one is gone.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use axum::http::{header, HeaderValue};
use axum::response::Response;
use parking_lot::Mutex;

/// How long the rest of an unread body is waited for.
pub const DRAIN_WITHIN: Duration = Duration::from_secs(2);

/// The request's body, shared between the handler (which may drop it
/// unread) and the middleware (which reads what is left).
struct Shared {
    body: Mutex<Body>,
    ended: AtomicBool,
}

/// The handler's side.
struct Tracked(Arc<Shared>);

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let shared = &self.0;
        let mut body = shared.body.lock();
        let polled = Pin::new(&mut *body).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) {
            shared.ended.store(true, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.0.body.lock().is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.0.body.lock().size_hint()
    }
}

/// Read what is left of `shared`'s body, at most `limit` bytes; whether it
/// ended within them.
async fn drain(shared: &Shared, limit: usize) -> bool {
    let mut read = 0usize;
    loop {
        let frame = std::future::poll_fn(|cx| Pin::new(&mut *shared.body.lock()).poll_frame(cx));
        match frame.await {
            None => return true,
            Some(Err(_)) => return false,
            Some(Ok(frame)) => {
                read = read.saturating_add(frame.data_ref().map_or(0, Bytes::len));
                if read > limit {
                    return false;
                }
            }
        }
    }
}

/// Answer `req` with `answer`, then read what is left of its body (at most
/// `limit` bytes, within [`DRAIN_WITHIN`]), or say `Connection: close`.
pub(crate) async fn keep_usable<F, Fut>(limit: usize, req: Request, answer: F) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: std::future::Future<Output = Response>,
{
    let (parts, body) = req.into_parts();
    if body.is_end_stream() {
        return answer(Request::from_parts(parts, body)).await;
    }
    let shared = Arc::new(Shared {
        body: Mutex::new(body),
        ended: AtomicBool::new(false),
    });
    let req = Request::from_parts(parts, Body::new(Tracked(shared.clone())));
    let mut resp = answer(req).await;
    if shared.ended.load(Ordering::Acquire) || shared.body.lock().is_end_stream() {
        return resp;
    }
    let declared_over = shared
        .body
        .lock()
        .size_hint()
        .exact()
        .is_some_and(|n| n > limit as u64);
    let drained = !declared_over
        && matches!(
            tokio::time::timeout(DRAIN_WITHIN, drain(&shared, limit)).await,
            Ok(true)
        );
    if !drained {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}
