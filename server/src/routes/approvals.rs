//! Shares waiting for an approver, and the decisions on them.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;

use crate::app::{ok, records_answer, App};
use crate::auth::Authorized;
use crate::error::ApiError;
use crate::extract::{limit_of, read_json, request_id, Params};
use crate::views::{DecisionBody, RecordView};

/// The shares waiting for an approver, soonest deadline first.
pub(crate) async fn approvals(
    _: Authorized,
    State(app): State<App>,
    Params(p): Params,
) -> Result<Response, ApiError> {
    let limit = limit_of(&p)?;
    records_answer(&app, move |s| s.awaiting_approval(limit)).await
}

/// Approve (`approved`) or deny a share waiting for an approver; answers
/// the request's record after the decision.
pub(crate) async fn decide(
    app: App,
    id: String,
    headers: HeaderMap,
    body: Body,
    approved: bool,
) -> Result<Response, ApiError> {
    let id = request_id(&id)?;
    let body: DecisionBody = read_json(&app, &headers, body).await?;
    let (decided, record, now) = app
        .blocking(move |s| {
            let reason = body.reason.as_deref();
            let decided = if approved {
                s.approve(&id, body.approver, reason)
            } else {
                s.deny(&id, body.approver, reason)
            };
            (decided, s.request(&id), s.engine().now())
        })
        .await?;
    decided?;
    match record? {
        Some(r) => Ok(ok(&RecordView::of(&r, now))),
        None => Err(ApiError::not_found(
            "RequestNotFound",
            format!("`id`: no request `{id}`"),
        )),
    }
}

pub(crate) async fn approve(
    _: Authorized,
    State(app): State<App>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    decide(app, id, headers, body, true).await
}

pub(crate) async fn deny(
    _: Authorized,
    State(app): State<App>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    decide(app, id, headers, body, false).await
}
