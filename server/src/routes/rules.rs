//! Automation rules: drafts, published rules, their changes.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use grantwheel::requests::wire;
use grantwheel::requests::RuleId;

use crate::app::{json_with, ok, App};
use crate::auth::Authorized;
use crate::error::ApiError;
use crate::extract::read_json;
use crate::views::{RuleBody, RuleView};

pub(crate) fn rule_id(raw: &str) -> Result<RuleId, ApiError> {
    raw.parse::<u64>().map(RuleId).map_err(|_| {
        ApiError::bad_request(format!(
            "`RuleId`: `{}` is not a rule id",
            wire::quoted(raw)
        ))
    })
}

pub(crate) fn no_rule(id: RuleId) -> ApiError {
    ApiError::not_found("RuleNotFound", format!("no rule `{}`", id.0))
}

pub(crate) async fn rules_list(
    _: Authorized,
    State(app): State<App>,
) -> Result<Response, ApiError> {
    let rules: Vec<RuleView> = app
        .sharing()
        .rules()
        .iter()
        .map(|(id, r)| RuleView::of(*id, r))
        .collect();
    Ok(ok(&rules))
}

pub(crate) async fn rules_create(
    _: Authorized,
    State(app): State<App>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let rule: RuleBody = read_json(&app, &headers, body).await?;
    let rule = rule.to_rule().map_err(ApiError::bad_request)?;
    let id = app.blocking(move |s| s.add_rule(rule)).await??;
    rule_answer(&app, id, StatusCode::CREATED)
}

pub(crate) fn rule_answer(app: &App, id: RuleId, code: StatusCode) -> Result<Response, ApiError> {
    let rule = app.sharing().rule(id).ok_or_else(|| no_rule(id))?;
    Ok(json_with(code, &RuleView::of(id, &rule)))
}

pub(crate) async fn rules_get(
    _: Authorized,
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    rule_answer(&app, rule_id(&id)?, StatusCode::OK)
}

pub(crate) async fn rules_update(
    _: Authorized,
    State(app): State<App>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let id = rule_id(&id)?;
    let rule: RuleBody = read_json(&app, &headers, body).await?;
    let rule = rule.to_rule().map_err(ApiError::bad_request)?;
    let found = app.blocking(move |s| s.update_rule(id, rule)).await??;
    if !found {
        return Err(no_rule(id));
    }
    rule_answer(&app, id, StatusCode::OK)
}

pub(crate) async fn rules_delete(
    _: Authorized,
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = rule_id(&id)?;
    let removed = app.blocking(move |s| s.remove_rule(id)).await??;
    match removed {
        Some(rule) => Ok(ok(&RuleView::of(id, &rule))),
        None => Err(no_rule(id)),
    }
}

pub(crate) async fn rules_publish(
    _: Authorized,
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = rule_id(&id)?;
    if app.sharing().rule(id).is_none() {
        return Err(no_rule(id));
    }
    app.blocking(move |s| s.publish_rule(id)).await??;
    rule_answer(&app, id, StatusCode::OK)
}

pub(crate) async fn rules_unpublish(
    _: Authorized,
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = rule_id(&id)?;
    let found = app.blocking(move |s| s.unpublish_rule(id)).await??;
    if !found {
        return Err(no_rule(id));
    }
    rule_answer(&app, id, StatusCode::OK)
}
