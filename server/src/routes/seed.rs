//! The seed's calls: Share, Revoke and Status/Get.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use grantwheel::requests::wire::StatusResponse;
use grantwheel::requests::wire::{self, ItemResponse};
use grantwheel::requests::{FailureKind, Sharing};

use crate::app::{json_with, ok, App};
use crate::auth::{Authorized, Budget, Verified};
use crate::error::ApiError;
use crate::extract::{param, request_id, Params};

/// The answer to a batch of share or revoke items. A one-item batch (the
/// seed's example) is answered with that item's object and the code of its
/// outcome; a batch of several with an array of objects in item order and
/// 200, each object saying how its item went.
pub(crate) fn batch_answer(items: Vec<ItemResponse>) -> Response {
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
pub(crate) fn item_status(item: &ItemResponse) -> StatusCode {
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

pub(crate) fn batch_error(e: grantwheel::requests::wire::BatchError) -> ApiError {
    ApiError::bad_request(e.to_string())
}

/// The call's `Idempotency-Key` header, checked: a retry with the same key
/// and body is answered with the first call's requests.
pub(crate) fn call_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
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
pub(crate) async fn batch_of(
    app: &App,
    access: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<(wire::Batch, Option<String>), ApiError> {
    let read = async {
        let key = call_key(headers)?;
        let bytes = app.json_body(headers, body).await?;
        let batch = app.sharing().parse_batch(&bytes).map_err(batch_error)?;
        Ok::<_, ApiError>((batch, key))
    }
    .await;
    // Counted whatever came of it: a bad call spends the calls' budget.
    let budget = match &read {
        Ok((batch, _)) if batch.len() > 1 => Budget::Batches,
        _ => Budget::Calls,
    };
    app.admit(access, budget)?;
    read
}

/// Carry out a share or revoke call with `carry` on the blocking pool.
async fn carry(
    app: App,
    access: &str,
    headers: &HeaderMap,
    body: Body,
    carry: fn(&Sharing, &wire::Batch, Option<&str>) -> Vec<ItemResponse>,
) -> Result<Response, ApiError> {
    let (batch, key) = batch_of(&app, access, headers, body).await?;
    let items = app
        .blocking(move |s| carry(s, &batch, key.as_deref()))
        .await?;
    Ok(batch_answer(items))
}

pub(crate) async fn share(
    Verified(access): Verified,
    State(app): State<App>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    carry(app, &access, &headers, body, Sharing::api_share_batch).await
}

pub(crate) async fn revoke(
    Verified(access): Verified,
    State(app): State<App>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    carry(app, &access, &headers, body, Sharing::api_revoke_batch).await
}

pub(crate) async fn status(
    _: Authorized,
    State(app): State<App>,
    Params(p): Params,
) -> Result<Response, ApiError> {
    let Some(id) = param(&p, "id") else {
        return Err(ApiError::bad_request("`id`: is required"));
    };
    let id = request_id(id)?;
    let found = app.blocking(move |s| s.request(&id)).await??;
    let Some(record) = found else {
        return Err(ApiError::not_found(
            "RequestNotFound",
            format!("`id`: no request `{id}`"),
        ));
    };
    Ok(ok(&StatusResponse::of_record(record)))
}
