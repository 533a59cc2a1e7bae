//! CRM events: what they teach of owners, then the rules they fire.

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use serde::Serialize;

use crate::app::{ok, App};
use crate::auth::Authorized;
use crate::error::ApiError;
use crate::extract::read_json;
use crate::views::EventBody;

#[derive(Serialize)]
pub(crate) struct EventAnswer {
    #[serde(rename = "Status")]
    status: &'static str,
    /// The requests the event's rules made (queued: see their status).
    #[serde(rename = "RequestIds")]
    requests: Vec<String>,
}

pub(crate) async fn events(
    _: Authorized,
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
