//! Who may read or edit a record: checks (one pair or a batch), who has
//! access now or later, and the audit at an instant.

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use grantwheel::requests::wire;
use grantwheel::requests::Sharing;
use grantwheel::EntityId;
use serde::Serialize;
use serde_json::Value;

use super::history::history_query;
use crate::app::{ok, records_answer, App, MAX_CHECKS};
use crate::auth::{Authorized, CheckCaller};
use crate::error::ApiError;
use crate::extract::{at_of, param, Params};
use crate::views::{entity_from, CheckAnswer, CheckItem, GrantView};

/// Who had access to a record at an instant: the share records whose grant
/// was live then, each with its request and approval.
pub(crate) async fn access_at(
    _: Authorized,
    State(app): State<App>,
    Params(p): Params,
) -> Result<Response, ApiError> {
    let (entity, _) = history_query(&p).map_err(ApiError::bad_request)?;
    let at = at_of(&p)?;
    records_answer(&app, move |s| s.access_at(&entity, at)).await
}

/// The grants a user held at an instant, each with its request and
/// approval.
pub(crate) async fn held_at(
    _: Authorized,
    State(app): State<App>,
    Params(p): Params,
) -> Result<Response, ApiError> {
    let raw = param(&p, "UserId").ok_or_else(|| ApiError::bad_request("`UserId`: is required"))?;
    let user: grantwheel::UserId = raw.trim().parse().map_err(|_| {
        ApiError::bad_request(format!("`UserId`: `{}` is not a UUID", wire::quoted(raw)))
    })?;
    let at = at_of(&p)?;
    records_answer(&app, move |s| s.held_at(&user, at)).await
}

pub(crate) fn check_one(sharing: &Sharing, item: &CheckItem) -> Result<CheckAnswer, String> {
    let entity = entity_from(item.entity, &item.entity_id)?;
    Ok(CheckAnswer::of(
        sharing.engine().access(&item.user, &entity),
    ))
}

pub(crate) async fn check_get(
    _: CheckCaller,
    State(app): State<App>,
    Params(p): Params,
) -> Result<Response, ApiError> {
    let user = param(&p, "UserId")
        .ok_or_else(|| ApiError::bad_request("`UserId`: is required"))?
        .parse()
        .map_err(|_| ApiError::bad_request("`UserId`: is not a UUID"))?;
    let entity = param(&p, "Entity")
        .ok_or_else(|| ApiError::bad_request("`Entity`: is required"))?
        .parse::<i64>()
        .map_err(|_| ApiError::bad_request("`Entity`: must be a whole number"))?;
    let entity_id =
        param(&p, "EntityId").ok_or_else(|| ApiError::bad_request("`EntityId`: is required"))?;
    let item = CheckItem {
        user,
        entity,
        entity_id: Value::String(entity_id.to_string()),
    };
    check_one(app.sharing(), &item)
        .map(|a| ok(&a))
        .map_err(ApiError::bad_request)
}

/// One answer of a check batch: the answer, or the item's error.
#[derive(Serialize)]
#[serde(untagged)]
pub(crate) enum CheckResult {
    Answer(CheckAnswer),
    Error {
        #[serde(rename = "Status")]
        status: &'static str,
        #[serde(rename = "ExceptionType")]
        kind: &'static str,
        #[serde(rename = "ExceptionMessage")]
        message: String,
    },
}

pub(crate) async fn check_batch(
    _: CheckCaller,
    State(app): State<App>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = app.json_body(&headers, body).await?;
    let items: Vec<Value> = wire::strict_json(&bytes)
        .and_then(|v| {
            serde_json::from_value(v).map_err(|e| wire::BatchError::NotJson(e.to_string()))
        })
        .map_err(|e| {
            ApiError::bad_request(format!("the body must be a JSON array of checks: {e}"))
        })?;
    if items.len() > MAX_CHECKS {
        return Err(ApiError::bad_request(format!(
            "the batch holds {} checks; at most {MAX_CHECKS} are allowed",
            items.len()
        )));
    }
    let answers: Vec<CheckResult> = items
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            serde_json::from_value::<CheckItem>(v)
                .map_err(|e| e.to_string())
                .and_then(|item| check_one(app.sharing(), &item))
                .map_or_else(
                    |e| CheckResult::Error {
                        status: "Error",
                        kind: "InvalidInput",
                        message: format!("item {i}: {e}"),
                    },
                    CheckResult::Answer,
                )
        })
        .collect();
    Ok(ok(&answers))
}

pub(crate) async fn access_now(
    _: Authorized,
    State(app): State<App>,
    Params(p): Params,
) -> Result<Response, ApiError> {
    let (entity, _) = history_query(&p).map_err(ApiError::bad_request)?;
    let grants = app.blocking(move |s| live_grants(s, &entity)).await?;
    Ok(ok(&grants))
}

pub(crate) async fn access_scheduled(
    _: Authorized,
    State(app): State<App>,
    Params(p): Params,
) -> Result<Response, ApiError> {
    let (entity, _) = history_query(&p).map_err(ApiError::bad_request)?;
    let grants = app.blocking(move |s| scheduled_grants(s, &entity)).await?;
    Ok(ok(&grants))
}

/// A grant as listed, its start being the instant access begins (the
/// tick at or after the start asked for, when checks begin to say yes).
pub(crate) fn begun(engine: &grantwheel::Engine, g: &grantwheel::Grant) -> GrantView {
    let mut view = GrantView::of(g);
    view.starts = view.starts.map(|s| engine.live_from(s));
    view
}

/// Who will see `entity` later: its grants yet to start, soonest start
/// first.
pub(crate) fn scheduled_grants(sharing: &Sharing, entity: &EntityId) -> Vec<GrantView> {
    let engine = sharing.engine();
    let mut grants: Vec<GrantView> = engine
        .scheduled_on(entity)
        .iter()
        .map(|g| begun(engine, g))
        .collect();
    grants.sort_by(|a, b| a.starts.cmp(&b.starts).then(a.user.cmp(&b.user)));
    grants
}

/// Who may see `entity` now: its live grants, soonest end last.
pub(crate) fn live_grants(sharing: &Sharing, entity: &EntityId) -> Vec<GrantView> {
    let now = sharing.engine().now();
    let mut grants: Vec<GrantView> = sharing
        .engine()
        .entity_grants(entity)
        .iter()
        .filter(|g| g.expires_at > now)
        .map(|g| begun(sharing.engine(), g))
        .collect();
    grants.sort_by(|a, b| b.ends.cmp(&a.ends).then(a.user.cmp(&b.user)));
    grants
}
