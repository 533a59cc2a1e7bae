//! The share history as JSON, and its filters (shared with the page).

use axum::extract::State;
use axum::response::Response;
use grantwheel::requests::wire;
use grantwheel::requests::{Cursor, HistoryQuery, RuleId, SourceKind, StatusKind};
use grantwheel::EntityId;
use serde::Serialize;
use serde_json::Value;

use crate::app::{ok, App};
use crate::auth::Authorized;
use crate::error::ApiError;
use crate::extract::{param, Params};
use crate::views::{entity_from, RecordView};

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
pub(crate) struct HistoryAnswer {
    #[serde(rename = "Records")]
    records: Vec<RecordView>,
    #[serde(rename = "Next", skip_serializing_if = "Option::is_none")]
    next: Option<u64>,
}

pub(crate) async fn history(
    _: Authorized,
    State(app): State<App>,
    Params(p): Params,
) -> Result<Response, ApiError> {
    let (entity, query) = history_query(&p).map_err(ApiError::bad_request)?;
    let (page, now) = app
        .blocking(move |s| (s.history(&entity, &query), s.engine().now()))
        .await?;
    let page = page?;
    Ok(ok(&HistoryAnswer {
        records: page
            .records
            .iter()
            .map(|r| RecordView::of(r, now))
            .collect(),
        next: page.next.map(|c| c.place()),
    }))
}
