//! The routes and their handlers: HTTP in, request-layer calls, HTTP out.
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
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use chrono::{DateTime, Utc};
use grantwheel::requests::wire::{self, ItemResponse};
use grantwheel::requests::{
    ApprovalError, Cursor, FailureKind, HistoryQuery, HistoryRecord, RequestId, RuleId, Sharing,
    SourceKind, StatusKind, StatusResponse,
};
use grantwheel::{EntityId, QueryError, RuleError};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use serde_json::Value;

use crate::auth::{Authorized, Budget, CheckCaller, Verified};
use crate::directory::Directory;
use crate::error::ApiError;
use crate::keys::Keys;
use crate::limiter::Limiter;
use crate::page::Sessions;
use crate::wire::{
    entity_from, CheckAnswer, CheckItem, DecisionBody, EventBody, GrantView, RecordView, RuleBody,
    RuleView,
};

/// The path prefix of the seed's API.
pub const API: &str = "/v2/EntityAccess.svc";

/// How long `/ready` waits for the store: a probe's client gives up after a
/// few seconds, and a store that slow is not ready anyway.
pub const READY_WITHIN: std::time::Duration = std::time::Duration::from_secs(2);

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

fn ok<T: Serialize>(value: &T) -> Response {
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
    async fn json_body(&self, headers: &HeaderMap, body: Body) -> Result<Bytes, ApiError> {
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

/// The answer to a batch of share or revoke items. A one-item batch (the
/// seed's example) is answered with that item's object and the code of its
/// outcome; a batch of several with an array of objects in item order and
/// 200, each object saying how its item went.
fn batch_answer(items: Vec<ItemResponse>) -> Response {
    if items.len() != 1 {
        return ok(&items);
    }
    let status = match &items[..] {
        [item] => item_status(item),
        _ => StatusCode::OK,
    };
    match items.into_iter().next() {
        Some(item) => json_with(status, &item),
        None => ok(&Vec::<ItemResponse>::new()),
    }
}

/// The code of one item's outcome.
fn item_status(item: &ItemResponse) -> StatusCode {
    match item {
        ItemResponse::Success { .. } => StatusCode::OK,
        ItemResponse::Error { .. } => match item.failure() {
            Some(FailureKind::Store | FailureKind::Interrupted | FailureKind::Unknown) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            Some(FailureKind::Capacity) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_REQUEST,
        },
    }
}

fn batch_error(e: grantwheel::requests::wire::BatchError) -> ApiError {
    ApiError::bad_request(e.to_string())
}

/// The call's `Idempotency-Key` header, checked: a retry with the same key
/// and body is answered with the first call's requests.
fn call_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = v.to_str().map_err(|_| {
        ApiError::bad_request("`Idempotency-Key`: must be visible ASCII characters")
    })?;
    wire::check_key(key)
        .map_err(|why| ApiError::bad_request(format!("`Idempotency-Key`: {why}")))?;
    Ok(Some(key.to_string()))
}

/// Read a share or revoke call's body and its `Idempotency-Key`, and count
/// the call: a batch of more than one item spends the key's batch budget,
/// any other call its calls' budget (a body that is not a batch spends a
/// call).
async fn batch_of(
    app: &App,
    access: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<(wire::Batch, Option<String>), ApiError> {
    let key = match call_key(headers) {
        Ok(key) => key,
        Err(e) => {
            app.admit(access, Budget::Calls)?;
            return Err(e);
        }
    };
    let bytes = match app.json_body(headers, body).await {
        Ok(bytes) => bytes,
        Err(e) => {
            app.admit(access, Budget::Calls)?;
            return Err(e);
        }
    };
    match app.sharing().parse_batch(&bytes) {
        Ok(batch) => {
            let budget = if batch.len() > 1 {
                Budget::Batches
            } else {
                Budget::Calls
            };
            app.admit(access, budget)?;
            Ok((batch, key))
        }
        Err(e) => {
            app.admit(access, Budget::Calls)?;
            Err(batch_error(e))
        }
    }
}

async fn share(
    Verified(access): Verified,
    State(app): State<App>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (batch, key) = batch_of(&app, &access, &headers, body).await?;
    let items = app
        .blocking(move |s| s.api_share_batch(&batch, key.as_deref()))
        .await?;
    Ok(batch_answer(items))
}

async fn revoke(
    Verified(access): Verified,
    State(app): State<App>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (batch, key) = batch_of(&app, &access, &headers, body).await?;
    let items = app
        .blocking(move |s| s.api_revoke_batch(&batch, key.as_deref()))
        .await?;
    Ok(batch_answer(items))
}

fn query_error(e: QueryError) -> ApiError {
    match e {
        QueryError::Store(e) => ApiError::unavailable(format!("the store cannot be read: {e}")),
        other => ApiError::bad_request(other.to_string()),
    }
}

async fn status(
    Authorized(_): Authorized,
    State(app): State<App>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let p = params(&q);
    let Some(id) = param(&p, "id") else {
        return Err(ApiError::bad_request("`id`: is required"));
    };
    let id = request_id(id)?;
    let found = app
        .blocking(move |s| s.request(&id))
        .await?
        .map_err(query_error)?;
    let Some(record) = found else {
        return Err(ApiError::not_found(
            "RequestNotFound",
            format!("`id`: no request `{id}`"),
        ));
    };
    Ok(ok(&StatusResponse::of_record(record)))
}

/// The request id in a path.
fn request_id(raw: &str) -> Result<RequestId, ApiError> {
    raw.trim()
        .parse()
        .map_err(|e: grantwheel::requests::BadRequestId| {
            ApiError::bad_request(format!("`id`: {e}"))
        })
}

/// The `Limit` parameter: 1 to 1,000, 50 when absent.
fn limit_of(p: &[(String, String)]) -> Result<usize, ApiError> {
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

/// The shares waiting for an approver, soonest deadline first.
async fn approvals(
    Authorized(_): Authorized,
    State(app): State<App>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let p = params(&q);
    let limit = limit_of(&p)?;
    records_answer(&app, move |s| s.awaiting_approval(limit)).await
}

/// The records a request-layer query found, as history records at now.
async fn records_answer(
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

fn approval_error(e: ApprovalError) -> ApiError {
    match e {
        ApprovalError::NotFound(id) => {
            ApiError::not_found("RequestNotFound", format!("`id`: no request `{id}`"))
        }
        ApprovalError::OwnShare { .. } => ApiError::forbidden("OwnShare", e.to_string()),
        ApprovalError::NotAwaiting { .. } => {
            ApiError::conflict("NotAwaitingApproval", e.to_string())
        }
        ApprovalError::TimedOut { .. } => ApiError::conflict("ApprovalTimedOut", e.to_string()),
        ApprovalError::Store(_) => ApiError::unavailable(e.to_string()),
        other => ApiError::bad_request(other.to_string()),
    }
}

/// Approve (`approved`) or deny a share waiting for an approver; answers
/// the request's record after the decision.
async fn decide(
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
    decided.map_err(approval_error)?;
    match record.map_err(query_error)? {
        Some(r) => Ok(ok(&RecordView::of(&r, now))),
        None => Err(ApiError::not_found(
            "RequestNotFound",
            format!("`id`: no request `{id}`"),
        )),
    }
}

async fn approve(
    Authorized(_): Authorized,
    State(app): State<App>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    decide(app, id, headers, body, true).await
}

async fn deny(
    Authorized(_): Authorized,
    State(app): State<App>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    decide(app, id, headers, body, false).await
}

/// The `At` parameter: an RFC 3339 instant.
fn at_of(p: &[(String, String)]) -> Result<DateTime<Utc>, ApiError> {
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

/// Who had access to a record at an instant: the share records whose grant
/// was live then, each with its request and approval.
async fn access_at(
    Authorized(_): Authorized,
    State(app): State<App>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let p = params(&q);
    let (entity, _) = history_query(&p).map_err(ApiError::bad_request)?;
    let at = at_of(&p)?;
    records_answer(&app, move |s| s.access_at(&entity, at)).await
}

/// The grants a user held at an instant, each with its request and
/// approval.
async fn held_at(
    Authorized(_): Authorized,
    State(app): State<App>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let p = params(&q);
    let raw = param(&p, "UserId").ok_or_else(|| ApiError::bad_request("`UserId`: is required"))?;
    let user: grantwheel::UserId = raw.trim().parse().map_err(|_| {
        ApiError::bad_request(format!("`UserId`: `{}` is not a UUID", wire::quoted(raw)))
    })?;
    let at = at_of(&p)?;
    records_answer(&app, move |s| s.held_at(&user, at)).await
}

fn check_one(sharing: &Sharing, item: &CheckItem) -> Result<CheckAnswer, String> {
    let entity = entity_from(item.entity, &item.entity_id)?;
    Ok(CheckAnswer::of(
        sharing.engine().access(&item.user, &entity),
    ))
}

async fn check_get(
    CheckCaller(_): CheckCaller,
    State(app): State<App>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let p = params(&q);
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
enum CheckResult {
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

async fn check_batch(
    CheckCaller(_): CheckCaller,
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

/// The history filters of the query string, shared by the JSON endpoint
/// and the page: `Entity` and `EntityId`, then optional `UserId`,
/// `Status` (`Processing`, `Completed`, `Failed`), `Source` (`Api`,
/// `Automation`, `Direct`), `RuleId`, `Limit` (1 to 1,000; default 50)
/// and `After` (the cursor of the previous page).
pub(crate) fn history_query(p: &[(String, String)]) -> Result<(EntityId, HistoryQuery), String> {
    let code = param(p, "Entity")
        .ok_or("`Entity`: is required")?
        .trim()
        .parse::<i64>()
        .map_err(|_| "`Entity`: must be 1 (lead) or 5 (opportunity)")?;
    let id = param(p, "EntityId").ok_or("`EntityId`: is required")?;
    let entity = entity_from(code, &Value::String(id.to_string()))?;
    let mut q = HistoryQuery::default();
    let present = |name| param(p, name).map(str::trim).filter(|v| !v.is_empty());
    if let Some(u) = present("UserId") {
        q = q.user(
            u.parse()
                .map_err(|_| format!("`UserId`: `{}` is not a UUID", wire::quoted(u)))?,
        );
    }
    if let Some(s) = present("Status") {
        q = q.status(match s {
            "Processing" => StatusKind::Processing,
            "Completed" => StatusKind::Completed,
            "Failed" => StatusKind::Failed,
            other => {
                return Err(format!(
                    "`Status`: `{}` is not `Processing`, `Completed` or `Failed`",
                    wire::quoted(other)
                ))
            }
        });
    }
    if let Some(s) = present("Source") {
        q = q.source_kind(match s {
            "Api" => SourceKind::Api,
            "Automation" => SourceKind::Automation,
            "Direct" => SourceKind::Direct,
            other => {
                return Err(format!(
                    "`Source`: `{}` is not `Api`, `Automation` or `Direct`",
                    wire::quoted(other)
                ))
            }
        });
    }
    if let Some(r) = present("RuleId") {
        let rule = r
            .parse::<u64>()
            .map_err(|_| format!("`RuleId`: `{}` is not a rule id", wire::quoted(r)))?;
        q = q.source(grantwheel::requests::Source::Automation { rule: RuleId(rule) });
    }
    if let Some(l) = present("Limit") {
        q = q.limit(
            l.parse::<usize>()
                .ok()
                .filter(|n| (1..=1000).contains(n))
                .ok_or_else(|| {
                    format!(
                        "`Limit`: `{}` is not a number from 1 to 1000",
                        wire::quoted(l)
                    )
                })?,
        );
    }
    if let Some(a) = present("After") {
        q = q.after(Cursor::before(a.parse::<u64>().map_err(|_| {
            format!("`After`: `{}` is not a cursor", wire::quoted(a))
        })?));
    }
    Ok((entity, q))
}

#[derive(Serialize)]
struct HistoryAnswer {
    #[serde(rename = "Records")]
    records: Vec<RecordView>,
    #[serde(rename = "Next", skip_serializing_if = "Option::is_none")]
    next: Option<u64>,
}

async fn history(
    Authorized(_): Authorized,
    State(app): State<App>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let p = params(&q);
    let (entity, query) = history_query(&p).map_err(ApiError::bad_request)?;
    let (page, now) = app
        .blocking(move |s| (s.history(&entity, &query), s.engine().now()))
        .await?;
    let page = page.map_err(query_error)?;
    Ok(ok(&HistoryAnswer {
        records: page
            .records
            .iter()
            .map(|r| RecordView::of(r, now))
            .collect(),
        next: page.next.map(|c| c.place()),
    }))
}

async fn access_now(
    Authorized(_): Authorized,
    State(app): State<App>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let p = params(&q);
    let (entity, _) = history_query(&p).map_err(ApiError::bad_request)?;
    let grants = app.blocking(move |s| live_grants(s, &entity)).await?;
    Ok(ok(&grants))
}

async fn access_scheduled(
    Authorized(_): Authorized,
    State(app): State<App>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let p = params(&q);
    let (entity, _) = history_query(&p).map_err(ApiError::bad_request)?;
    let grants = app.blocking(move |s| scheduled_grants(s, &entity)).await?;
    Ok(ok(&grants))
}

/// A grant as listed, its start being the instant access begins (the
/// tick at or after the start asked for, when checks begin to say yes).
fn begun(engine: &grantwheel::Engine, g: &grantwheel::Grant) -> GrantView {
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
        .grants_on(entity)
        .iter()
        .filter(|g| g.expires_at > now)
        .map(|g| begun(sharing.engine(), g))
        .collect();
    grants.sort_by(|a, b| b.ends.cmp(&a.ends).then(a.user.cmp(&b.user)));
    grants
}

fn rule_error(e: RuleError) -> ApiError {
    match e {
        RuleError::Store(e) => ApiError::unavailable(format!("the rule could not be written: {e}")),
        other => ApiError::bad_request(other.to_string()),
    }
}

async fn read_json<T: serde::de::DeserializeOwned>(
    app: &App,
    headers: &HeaderMap,
    body: Body,
) -> Result<T, ApiError> {
    let bytes = app.json_body(headers, body).await?;
    let value = wire::strict_json(&bytes).map_err(|e| ApiError::bad_request(e.to_string()))?;
    serde_json::from_value(value).map_err(|e| ApiError::bad_request(e.to_string()))
}

fn rule_id(raw: &str) -> Result<RuleId, ApiError> {
    raw.parse::<u64>().map(RuleId).map_err(|_| {
        ApiError::bad_request(format!(
            "`RuleId`: `{}` is not a rule id",
            wire::quoted(raw)
        ))
    })
}

fn no_rule(id: RuleId) -> ApiError {
    ApiError::not_found("RuleNotFound", format!("no rule `{}`", id.0))
}

async fn rules_list(
    Authorized(_): Authorized,
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

async fn rules_create(
    Authorized(_): Authorized,
    State(app): State<App>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let rule: RuleBody = read_json(&app, &headers, body).await?;
    let rule = rule.to_rule().map_err(ApiError::bad_request)?;
    let id = app
        .blocking(move |s| s.add_rule(rule))
        .await?
        .map_err(rule_error)?;
    rule_answer(&app, id, StatusCode::CREATED)
}

fn rule_answer(app: &App, id: RuleId, code: StatusCode) -> Result<Response, ApiError> {
    let rule = app.sharing().rule(id).ok_or_else(|| no_rule(id))?;
    Ok(json_with(code, &RuleView::of(id, &rule)))
}

async fn rules_get(
    Authorized(_): Authorized,
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    rule_answer(&app, rule_id(&id)?, StatusCode::OK)
}

async fn rules_update(
    Authorized(_): Authorized,
    State(app): State<App>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let id = rule_id(&id)?;
    let rule: RuleBody = read_json(&app, &headers, body).await?;
    let rule = rule.to_rule().map_err(ApiError::bad_request)?;
    let found = app
        .blocking(move |s| s.update_rule(id, rule))
        .await?
        .map_err(rule_error)?;
    if !found {
        return Err(no_rule(id));
    }
    rule_answer(&app, id, StatusCode::OK)
}

async fn rules_delete(
    Authorized(_): Authorized,
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = rule_id(&id)?;
    let removed = app
        .blocking(move |s| s.remove_rule(id))
        .await?
        .map_err(rule_error)?;
    match removed {
        Some(rule) => Ok(ok(&RuleView::of(id, &rule))),
        None => Err(no_rule(id)),
    }
}

async fn rules_publish(
    Authorized(_): Authorized,
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = rule_id(&id)?;
    if app.sharing().rule(id).is_none() {
        return Err(no_rule(id));
    }
    app.blocking(move |s| s.publish_rule(id))
        .await?
        .map_err(rule_error)?;
    rule_answer(&app, id, StatusCode::OK)
}

async fn rules_unpublish(
    Authorized(_): Authorized,
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = rule_id(&id)?;
    let found = app
        .blocking(move |s| s.unpublish_rule(id))
        .await?
        .map_err(rule_error)?;
    if !found {
        return Err(no_rule(id));
    }
    rule_answer(&app, id, StatusCode::OK)
}

#[derive(Serialize)]
struct EventAnswer {
    #[serde(rename = "Status")]
    status: &'static str,
    /// The requests the event's rules made (queued: see their status).
    #[serde(rename = "RequestIds")]
    requests: Vec<String>,
}

async fn events(
    Authorized(_): Authorized,
    State(app): State<App>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let body: EventBody = read_json(&app, &headers, body).await?;
    let event = body.to_event().map_err(ApiError::bad_request)?;
    let directory = app.inner.directory.clone();
    let owner = body.owner;
    let learnt = app
        .blocking(move |s| {
            // What the event says of owners is kept before its rules act,
            // so the shares they make are checked against it.
            if let Some(d) = &directory {
                let learn = || -> Result<(), crate::db::DbError> {
                    if let Some(owner) = owner {
                        d.learn_owner(&event.entity, &owner)?;
                    }
                    if let Some((a, o)) = event.activity {
                        d.learn_context(&grantwheel::Context::Activity(a), &event.entity, &o)?;
                    }
                    if let Some((t, o)) = event.task {
                        d.learn_context(&grantwheel::Context::Task(t), &event.entity, &o)?;
                    }
                    Ok(())
                };
                learn().map_err(|e| e.to_string())?;
            }
            Ok::<_, String>(s.on_event(&event))
        })
        .await?
        .map_err(|e| ApiError::unavailable(format!("the event could not be kept: {e}")))?;
    Ok(ok(&EventAnswer {
        status: "Success",
        requests: learnt.iter().map(ToString::to_string).collect(),
    }))
}

/// What `/health` and `/ready` say of the change feed (with
/// `--postgres`): how far this instance has followed the others' writes.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct FeedBody {
    position: u64,
    fresh: bool,
    caught_up_at: Option<String>,
    skew_ms: Option<i64>,
    problem: Option<String>,
    resyncs: u64,
    head: Option<u64>,
    lag: Option<u64>,
}

fn feed_body(app: &App) -> Option<FeedBody> {
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
async fn health(State(app): State<App>) -> Response {
    match feed_body(&app) {
        Some(feed) => ok(&serde_json::json!({"Status": "Ok", "Feed": feed})),
        None => ok(&serde_json::json!({"Status": "Ok"})),
    }
}

async fn ready(State(app): State<App>) -> Response {
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

async fn metrics_route(State(app): State<App>) -> Response {
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
pub const OPENAPI: &str = include_str!("../openapi.yaml");

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/yaml")], OPENAPI).into_response()
}

async fn no_api() -> ApiError {
    ApiError::no_api()
}

/// Every route of the service.
pub fn router(app: App) -> Router {
    let api = Router::new()
        .route("/Share", post(share))
        .route("/Revoke", post(revoke))
        .route("/Status/Get", get(status))
        .route("/Check", get(check_get).post(check_batch))
        .route("/History", get(history))
        .route("/Access", get(access_now))
        .route("/Access/Scheduled", get(access_scheduled))
        .route("/Access/At", get(access_at))
        .route("/Access/Held", get(held_at))
        .route("/Approvals", get(approvals))
        .route("/Approvals/{id}/Approve", post(approve))
        .route("/Approvals/{id}/Deny", post(deny))
        .route("/Rules", get(rules_list).post(rules_create))
        .route(
            "/Rules/{id}",
            get(rules_get).put(rules_update).delete(rules_delete),
        )
        .route("/Rules/{id}/Publish", post(rules_publish))
        .route("/Rules/{id}/Unpublish", post(rules_unpublish))
        .route("/Events", post(events));
    Router::new()
        .nest(API, api)
        .merge(crate::page::routes())
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics_route))
        .route("/openapi.yaml", get(openapi))
        .fallback(no_api)
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .with_state(app)
}
