//! The share-history page: server-rendered HTML (no script), a GET form
//! whose filters are query parameters (so every view is a link), behind a
//! login with an API key that sets a session cookie.
//!
//! Everything shown is escaped by the template (maud), so a hostile name
//! or id renders as text.

use axum::extract::{Form, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use chrono::{DateTime, Utc};
use maud::{html, Markup, PreEscaped, DOCTYPE};
use serde::Deserialize;

use crate::app::App;
use crate::extract::{param, params};
use crate::routes::access::{live_grants, scheduled_grants};
use crate::routes::history::history_query;
use crate::sessions::{session_id, COOKIE};
use crate::views::{GrantView, RecordView};

/// The access key of the page's session, if it is live and its key is.
fn logged_in(app: &App, headers: &HeaderMap) -> Option<String> {
    let key = app.inner.sessions.key_of(&session_id(headers)?)?;
    app.inner.keys.is_live(&key).then_some(key)
}

const STYLE: &str = "
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0;background:#f5f6f8;color:#1d2330}
header{background:#1f3a5f;color:#fff;padding:14px 28px;display:flex;justify-content:space-between;align-items:center}
header h1{font-size:20px;margin:0;font-weight:600}
header form{margin:0}
header button{background:transparent;color:#fff;border:1px solid #8fa6c4;border-radius:4px;padding:4px 10px;cursor:pointer}
main{padding:20px 28px;max-width:1200px}
section{background:#fff;border:1px solid #dde1e7;border-radius:6px;padding:16px 20px;margin-bottom:18px}
h2{font-size:16px;margin:0 0 12px 0}
form.filters{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-end}
label{display:flex;flex-direction:column;font-size:12px;color:#4a5466;gap:4px}
input,select{font-size:14px;padding:6px 8px;border:1px solid #c4cad4;border-radius:4px;min-width:120px}
input[name=UserId]{min-width:300px}
button.primary{background:#2563eb;color:#fff;border:0;border-radius:4px;padding:8px 16px;font-size:14px;cursor:pointer}
table{border-collapse:collapse;width:100%;font-size:14px}
th{text-align:left;font-weight:600;color:#4a5466;border-bottom:2px solid #dde1e7;padding:8px}
td{border-bottom:1px solid #eceff3;padding:8px;vertical-align:top}
td.mono{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px}
.badge{display:inline-block;border-radius:10px;padding:2px 10px;font-size:12px;font-weight:600}
.Completed{background:#dcfce7;color:#166534}.Processing{background:#fef9c3;color:#854d0e}.Failed{background:#fee2e2;color:#991b1b}
.reason{color:#991b1b;font-size:12px;margin-top:4px}
.muted{color:#6b7280}
.pager{margin-top:12px}
.error{background:#fee2e2;color:#991b1b;border-radius:4px;padding:8px 12px}
";

fn layout(title: &str, logged_in: bool, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · grantwheel" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                header {
                    h1 { (title) }
                    @if logged_in {
                        form method="post" action="/logout" { button type="submit" { "Log out" } }
                    }
                }
                main { (body) }
            }
        }
    }
}

fn page(status: StatusCode, markup: Markup) -> Response {
    (
        status,
        [(header::CACHE_CONTROL, "no-store")],
        Html(markup.into_string()),
    )
        .into_response()
}

fn login_form(next: &str, error: Option<&str>) -> Markup {
    layout(
        "Share history: log in",
        false,
        html! {
            section {
                h2 { "Log in with an API key" }
                @if let Some(e) = error { p.error { (e) } }
                form method="post" action="/login" {
                    input type="hidden" name="next" value=(next);
                    p { label { "Access key" input type="text" name="accessKey" autocomplete="username" required; } }
                    p { label { "Secret key" input type="password" name="secretKey" autocomplete="current-password" required; } }
                    button.primary type="submit" { "Log in" }
                }
            }
        },
    )
}

/// Only a path of this service may follow a login (no open redirect).
fn safe_next(next: &str) -> &str {
    if next.starts_with('/') && !next.starts_with("//") && !next.contains('\\') {
        next
    } else {
        "/history"
    }
}

async fn login_page(RawQuery(q): RawQuery) -> Response {
    let p = params(&q);
    let next = safe_next(param(&p, "next").unwrap_or("/history"));
    page(StatusCode::OK, login_form(next, None))
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(rename = "accessKey", default)]
    access_key: String,
    #[serde(rename = "secretKey", default)]
    secret_key: String,
    #[serde(default)]
    next: String,
}

async fn login(State(app): State<App>, Form(form): Form<LoginForm>) -> Response {
    let next = safe_next(&form.next).to_string();
    if !app.inner.keys.verify(&form.access_key, &form.secret_key) {
        return page(
            StatusCode::UNAUTHORIZED,
            login_form(
                &next,
                Some("That access key and secret key do not match a live key."),
            ),
        );
    }
    let Some(id) = app.inner.sessions.open(&form.access_key) else {
        return page(
            StatusCode::INTERNAL_SERVER_ERROR,
            login_form(&next, Some("No session could be made; try again.")),
        );
    };
    let secure = if app.inner.secure_cookies {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!("{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/{secure}");
    let mut resp = (StatusCode::SEE_OTHER, [(header::LOCATION, next)]).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

async fn logout(State(app): State<App>, headers: HeaderMap) -> Response {
    if let Some(id) = session_id(&headers) {
        app.inner.sessions.close(&id);
    }
    let mut resp = (StatusCode::SEE_OTHER, [(header::LOCATION, "/login")]).into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(if app.inner.secure_cookies {
            "gw_session=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0; Secure"
        } else {
            "gw_session=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"
        }),
    );
    resp
}

/// A duration in words: `30 minutes`, `90 days`, `1 day 12 hours`.
pub fn in_words(minutes: i64) -> String {
    let units = [(60 * 24, "day"), (60, "hour"), (1, "minute")];
    let mut left = minutes;
    let mut parts = Vec::new();
    for (size, name) in units {
        let n = left / size;
        if n > 0 {
            parts.push(format!("{n} {name}{}", if n == 1 { "" } else { "s" }));
            left -= n * size;
        }
        if parts.len() == 2 {
            break;
        }
    }
    if parts.is_empty() {
        "under a minute".into()
    } else {
        parts.join(" ")
    }
}

fn when(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M UTC").to_string()
}

fn access_name(code: u8) -> &'static str {
    if code == 2 {
        "Read and edit"
    } else {
        "Read only"
    }
}

fn selected(p: &[(String, String)], name: &str, value: &str) -> bool {
    param(p, name).unwrap_or("") == value
}

fn filters(p: &[(String, String)]) -> Markup {
    let v = |name| param(p, name).unwrap_or("").to_string();
    html! {
        form.filters method="get" action="/history" {
            label { "Record"
                select name="Entity" {
                    option value="1" selected[selected(p, "Entity", "1") || param(p, "Entity").is_none()] { "Lead" }
                    option value="5" selected[selected(p, "Entity", "5")] { "Opportunity" }
                }
            }
            label { "Number or GUID" input type="text" name="EntityId" value=(v("EntityId")) required; }
            label { "Shared with (user id)" input type="text" name="UserId" value=(v("UserId")) placeholder="all users"; }
            label { "Status"
                select name="Status" {
                    option value="" { "All" }
                    @for s in ["Processing", "Completed", "Failed"] {
                        option value=(s) selected[selected(p, "Status", s)] { (s) }
                    }
                }
            }
            label { "Source"
                select name="Source" {
                    option value="" { "All" }
                    @for (value, name) in [("Api", "API"), ("Automation", "Automation"), ("Direct", "Direct")] {
                        option value=(value) selected[selected(p, "Source", value)] { (name) }
                    }
                }
            }
            button.primary type="submit" { "Filter" }
        }
    }
}

fn access_panel(grants: &[GrantView]) -> Markup {
    html! {
        section #access {
            h2 { "Who has access now" }
            @if grants.is_empty() {
                p.muted { "Nobody has shared access to this record now." }
            } @else {
                table {
                    thead { tr { th { "User" } th { "Access" } th { "Through" } th { "Ends" } } }
                    tbody {
                        @for g in grants {
                            tr {
                                td.mono { (g.user.to_string()) }
                                td { (access_name(g.access)) }
                                td.mono { @if let Some(c) = g.context { (c.to_string()) } @else { span.muted { "direct" } } }
                                td { (when(g.ends)) }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Grants made to start later, soonest first; nothing when there are none.
fn scheduled_panel(grants: &[GrantView]) -> Markup {
    html! {
        @if !grants.is_empty() {
            section #scheduled {
                h2 { "Access that starts later" }
                table {
                    thead { tr { th { "User" } th { "Access" } th { "Through" } th { "Starts" } th { "Ends" } } }
                    tbody {
                        @for g in grants {
                            tr {
                                td.mono { (g.user.to_string()) }
                                td { (access_name(g.access)) }
                                td.mono { @if let Some(c) = g.context { (c.to_string()) } @else { span.muted { "direct" } } }
                                td { @if let Some(s) = g.starts { (when(s)) } }
                                td { (when(g.ends)) }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The shares waiting for an approver, soonest deadline first; nothing
/// when there are none.
fn approvals_panel(records: &[RecordView], default_minutes: i64) -> Markup {
    html! {
        @if !records.is_empty() {
            section #approvals {
                h2 { "Waiting for an approver" }
                table {
                    thead { tr { th { "Record" } th { "User" } th { "Access" } th { "Duration" } th { "Why" } th { "Asked at" } th { "Decide by" } } }
                    tbody {
                        @for r in records {
                            tr data-request=(r.request) {
                                td {
                                    a href=(format!("/history?{}", serde_urlencoded::to_string([("Entity", r.entity.to_string()), ("EntityId", r.entity_id.clone())]).unwrap_or_default())) {
                                        @if r.entity == 5 { "Opportunity " } @else { "Lead " }
                                        (r.entity_id)
                                    }
                                }
                                td.mono { (r.user.to_string()) }
                                td { (access_name(r.access)) }
                                td {
                                    @match r.duration_minutes {
                                        Some(m) => { (in_words(m)) }
                                        None => { (in_words(default_minutes)) span.muted { " (default)" } }
                                    }
                                }
                                td { @if let Some(a) = &r.approval { (a.why) } }
                                td { (when(r.created_at)) }
                                td { @if let Some(a) = &r.approval { (when(a.deadline)) } }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn history_table(records: &[RecordView], default_minutes: i64) -> Markup {
    html! {
        table #history {
            thead {
                tr { th { "User" } th { "Access" } th { "Duration" } th { "Source" } th { "Status" } th { "Shared at" } th { "Ends / ended" } }
            }
            tbody {
                @for r in records {
                    tr data-request=(r.request) {
                        td.mono { (r.user.to_string()) }
                        td {
                            @if matches!(r.kind, grantwheel::requests::RequestKind::Revoke) { "Revoke " }
                            (access_name(r.access))
                        }
                        td {
                            @match (r.kind, r.duration_minutes) {
                                (grantwheel::requests::RequestKind::Revoke, _) => { span.muted { "—" } }
                                (_, Some(m)) => { (in_words(m)) }
                                (_, None) => { (in_words(default_minutes)) span.muted { " (default)" } }
                            }
                        }
                        td {
                            @match r.rule {
                                Some(rule) => { "Automation (rule " (rule) ")" }
                                None => { @if r.source == "Api" { "API" } @else { (r.source) } }
                            }
                        }
                        td {
                            span class=(format!("badge {}", r.status)) { (r.status) }
                            @if r.stage.is_some() { div.muted.stage { "awaiting approval" } }
                            @if let Some(reason) = &r.reason { div.reason { (reason) } }
                            @if let Some(a) = &r.approval {
                                @if let (Some(d), Some(who)) = (a.decision, a.approver) {
                                    div.muted.decision { (d) " by " span.mono { (who.to_string()) } }
                                }
                            }
                        }
                        td {
                            (when(r.created_at))
                            @if let Some(s) = r.starts { div.muted.starts { "starts " (when(s)) } }
                        }
                        td {
                            @match (r.kind, r.ends, r.ended_by) {
                                // A revoke ends other grants; it has no end of its own.
                                (grantwheel::requests::RequestKind::Revoke, _, _) => { span.muted { "—" } }
                                (_, Some(e), Some(how)) => {
                                    (how) " " (when(e))
                                    @if let Some(why) = &r.end_reason { div.reason { (why) } }
                                }
                                (_, Some(e), None) => { "Ends " (when(e)) }
                                (_, None, _) => { span.muted { "—" } }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The query string of the next page: the same filters, after `cursor`.
fn next_link(p: &[(String, String)], cursor: u64) -> String {
    let mut kept: Vec<(String, String)> = p.iter().filter(|(k, _)| k != "After").cloned().collect();
    kept.push(("After".into(), cursor.to_string()));
    format!(
        "/history?{}",
        serde_urlencoded::to_string(&kept).unwrap_or_default()
    )
}

async fn history_page(
    State(app): State<App>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    if logged_in(&app, &headers).is_none() {
        let next = match &q {
            Some(q) => format!("/history?{q}"),
            None => "/history".into(),
        };
        let to = format!(
            "/login?{}",
            serde_urlencoded::to_string([("next", next)]).unwrap_or_default()
        );
        return (StatusCode::SEE_OTHER, [(header::LOCATION, to)]).into_response();
    }
    let p = params(&q);
    if param(&p, "EntityId").is_none() {
        return page(
            StatusCode::OK,
            layout(
                "Share history",
                true,
                html! { section { h2 { "Choose a record" } (filters(&p)) } },
            ),
        );
    }
    let (entity, query) = match history_query(&p) {
        Ok(v) => v,
        Err(e) => {
            return page(
                StatusCode::BAD_REQUEST,
                layout(
                    "Share history",
                    true,
                    html! { section { (filters(&p)) } section { p.error { (e) } } },
                ),
            )
        }
    };
    let answer = app
        .blocking(move |s| {
            let page = s.history(&entity, &query);
            let grants = (live_grants(s, &entity), scheduled_grants(s, &entity));
            // A queue that cannot be read now is left off; the history
            // below says whether the store answers.
            let waiting = s.awaiting_approval(50).unwrap_or_default();
            (page, grants, waiting, s.engine().now())
        })
        .await;
    let (history, (grants, scheduled), waiting, now) = match answer {
        Ok(v) => v,
        Err(e) => {
            return page(
                StatusCode::INTERNAL_SERVER_ERROR,
                layout("Share history", true, html! { p.error { (e.message) } }),
            )
        }
    };
    let kind = if entity.kind == grantwheel::EntityKind::OPPORTUNITY {
        "Opportunity"
    } else {
        "Lead"
    };
    let title = format!(
        "Share history: {kind} {}",
        grantwheel::requests::wire::entity_id_text(&entity)
    );
    let body = match history {
        Ok(h) => {
            let records: Vec<RecordView> =
                h.records.iter().map(|r| RecordView::of(r, now)).collect();
            let waiting: Vec<RecordView> = waiting.iter().map(|r| RecordView::of(r, now)).collect();
            html! {
                section { (filters(&p)) }
                (approvals_panel(&waiting, app.inner.default_minutes))
                (access_panel(&grants))
                (scheduled_panel(&scheduled))
                section {
                    h2 { "Shares and revokes, newest first" }
                    @if records.is_empty() {
                        p.muted #empty { "No share matches these filters." }
                    } @else {
                        (history_table(&records, app.inner.default_minutes))
                    }
                    @if let Some(next) = h.next {
                        p.pager { a #older href=(next_link(&p, next.place())) { "Older shares →" } }
                    }
                }
            }
        }
        Err(e) => {
            html! { section { (filters(&p)) } section { p.error { "The history cannot be read now: " (e) } } }
        }
    };
    page(StatusCode::OK, layout(&title, true, body))
}

/// The page's routes.
pub fn routes() -> Router<App> {
    Router::new()
        .route("/history", get(history_page))
        .route("/login", get(login_page).post(login))
        .route("/logout", axum::routing::post(logout))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_words() {
        assert_eq!(in_words(30), "30 minutes");
        assert_eq!(in_words(90 * 24 * 60), "90 days");
        assert_eq!(in_words(36 * 60), "1 day 12 hours");
        assert_eq!(in_words(61), "1 hour 1 minute");
        assert_eq!(in_words(0), "under a minute");
    }

    #[test]
    fn only_local_paths_follow_a_login() {
        assert_eq!(safe_next("/history?Entity=1"), "/history?Entity=1");
        assert_eq!(safe_next("//evil.example"), "/history");
        assert_eq!(safe_next("https://evil.example"), "/history");
    }
}
