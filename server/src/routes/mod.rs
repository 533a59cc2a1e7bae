//! Every route of the service, one file per resource: the seed's calls,
//! access (checks and the audit), history, approvals, rules, events, and
//! operations. Each handler takes its caller first (`Authorized`,
//! `CheckCaller` or `Verified`, see [`crate::auth`]): one that takes none is
//! open, and that shows in its signature.

pub(crate) mod access;
pub(crate) mod approvals;
pub(crate) mod events;
pub(crate) mod history;
pub(crate) mod ops;
pub(crate) mod page;
pub(crate) mod rules;
pub(crate) mod seed;

use axum::routing::{get, post};
use axum::Router;

use crate::app::{App, API};
use crate::error::ApiError;

/// Every route of the service.
pub fn router(app: App) -> Router {
    let api = Router::new()
        .route("/Share", post(seed::share))
        .route("/Revoke", post(seed::revoke))
        .route("/Status/Get", get(seed::status))
        .route("/Check", get(access::check_get).post(access::check_batch))
        .route("/History", get(history::history))
        .route("/Access", get(access::access_now))
        .route("/Access/Scheduled", get(access::access_scheduled))
        .route("/Access/At", get(access::access_at))
        .route("/Access/Held", get(access::held_at))
        .route("/Approvals", get(approvals::approvals))
        .route("/Approvals/{id}/Approve", post(approvals::approve))
        .route("/Approvals/{id}/Deny", post(approvals::deny))
        .route("/Rules", get(rules::rules_list).post(rules::rules_create))
        .route(
            "/Rules/{id}",
            get(rules::rules_get)
                .put(rules::rules_update)
                .delete(rules::rules_delete),
        )
        .route("/Rules/{id}/Publish", post(rules::rules_publish))
        .route("/Rules/{id}/Unpublish", post(rules::rules_unpublish))
        .route("/Events", post(events::events));
    Router::new()
        .nest(API, api)
        .merge(page::routes())
        .route("/health", get(ops::health))
        .route("/ready", get(ops::ready))
        .route("/metrics", get(ops::metrics_route))
        .route("/openapi.yaml", get(ops::openapi))
        .fallback(ops::no_api)
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .with_state(app)
}
