//! The read side: queries on connections of their own, beside the writer.
//!
//! Each query is one statement, which PostgreSQL answers from one
//! snapshot: committed state, read consistently, never a part of a batch.
//! A history page is one statement too: a union of the index ranges the
//! page is merged from (its user's, its rule's, or one per status and
//! source), each cut at the page size, merged newest first.

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use postgres::types::ToSql;
use postgres::Client;

use super::pg;
use super::rows::{
    context_id, context_kind, decode_grant, decode_record, entity_kind, entity_text, i64_of,
    user_text, Param, GRANT_COLUMNS, HISTORY_COLUMNS,
};
use crate::clock::to_millis;
use crate::ids::{EntityId, UserId};
use crate::model::grant::Grant;
use crate::model::history::{
    Cursor, HistoryPage, HistoryQuery, HistoryRecord, RequestId, RuleId, Source, SourceKind,
    StatusKind,
};
use crate::store::sql::queries::{self, Dialect};
use crate::store::{GrantFilter, StoreError, StoreReader};

/// Idle connections kept for the next queries; more are opened while more
/// queries run at once, and closed when they are done.
const IDLE: usize = 8;

/// The read side of a [`PostgresStore`](super::PostgresStore).
pub(super) struct PostgresReader {
    url: String,
    idle: Mutex<Vec<Client>>,
}

/// How this store spells the shared statements.
const SQL: Dialect = Dialect {
    history: "grantwheel_history",
    grants: "grantwheel_grants",
    user: "user_id",
    columns: HISTORY_COLUMNS,
    grant_columns: GRANT_COLUMNS,
    parameter: '$',
};

impl PostgresReader {
    pub(super) fn new(url: String) -> Self {
        PostgresReader {
            url,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Run `f` on an idle (or new) connection; a connection that failed
    /// is dropped, not kept.
    fn read<T>(
        &self,
        mut f: impl FnMut(&mut Client) -> Result<T, postgres::Error>,
    ) -> Result<T, StoreError> {
        let pooled = self.idle.lock().pop().filter(|c| !c.is_closed());
        let (client, out) = match pooled {
            Some(mut c) => match f(&mut c) {
                // An idle connection ended by the server (a restart, a
                // terminated backend) fails its first query: its peers
                // went the same way, so they are dropped, and the read
                // (which changes nothing) runs again on a new connection.
                Err(e) if super::lost(&e) => {
                    let stale = std::mem::take(&mut *self.idle.lock());
                    super::close_off_thread((c, stale));
                    let mut c = super::connect(&self.url)?;
                    let out = f(&mut c);
                    (c, out)
                }
                out => (c, out),
            },
            None => {
                let mut c = super::connect(&self.url)?;
                let out = f(&mut c);
                (c, out)
            }
        };
        let out = out.map_err(pg)?;
        let mut idle = self.idle.lock();
        if idle.len() < IDLE {
            idle.push(client);
        }
        Ok(out)
    }

    fn rows(&self, sql: &str, params: &[Param]) -> Result<Vec<postgres::Row>, StoreError> {
        let refs: Vec<&(dyn ToSql + Sync)> =
            params.iter().map(|p| &**p as &(dyn ToSql + Sync)).collect();
        self.read(|c| c.query(sql, &refs))
    }

    fn records(&self, sql: &str, params: &[Param]) -> Result<Vec<HistoryRecord>, StoreError> {
        self.rows(sql, params)?
            .iter()
            .map(|r| decode_record(r).map(|(_, r)| r))
            .collect()
    }
}

impl Drop for PostgresReader {
    fn drop(&mut self) {
        super::close_off_thread(std::mem::take(&mut *self.idle.lock()));
    }
}

fn boxed<T: ToSql + Sync + Send + 'static>(v: T) -> Param {
    Box::new(v)
}

/// The statement of one history page and the values it binds.
/// `None` when no record can pass the filters (two source filters that
/// exclude each other).
fn page_query(
    entity: &EntityId,
    q: &HistoryQuery,
    below: i64,
    want: i64,
) -> Option<(String, Vec<Param>)> {
    let mut params: Vec<Param> = vec![
        boxed(entity_kind(entity)),
        boxed(entity_text(entity)),
        boxed(below),
        boxed(want),
    ];
    // Filters every range carries (so the union selects exactly what
    // `q.keeps`), each bound as the next parameter.
    let mut filters = String::new();
    let mut bind = |params: &mut Vec<Param>, cond: &str, v: Param| {
        params.push(v);
        filters.push_str(&format!(" AND {cond} ${}", params.len()));
    };
    if let Some(user) = q.user {
        bind(&mut params, "user_id =", boxed(user_text(user)));
    }
    if let Some(Source::Automation { rule }) = q.source {
        bind(&mut params, "rule =", boxed(i64_of(rule.0)));
    }
    if let Some(from) = q.from {
        bind(&mut params, "created_ms >=", boxed(from.timestamp_millis()));
    }
    if let Some(until) = q.until {
        bind(&mut params, "created_ms <", boxed(until.timestamp_millis()));
    }
    let statuses: &[&str] = match q.status {
        Some(StatusKind::Processing) => &["Processing"],
        Some(StatusKind::Completed) => &["Completed"],
        Some(StatusKind::Failed) => &["Failed"],
        None => &["Processing", "Completed", "Failed"],
    };
    let kinds = [q.source.map(|s| s.kind()), q.source_kind];
    let allowed = |k: SourceKind| kinds.iter().all(|want| want.is_none_or(|w| w == k));
    let sources: Vec<&str> = [
        (SourceKind::Api, "api"),
        (SourceKind::Automation, "automation"),
        (SourceKind::Direct, "direct"),
    ]
    .into_iter()
    .filter(|(k, _)| allowed(*k))
    .map(|(_, name)| name)
    .collect();
    let head = format!(
        "SELECT {HISTORY_COLUMNS} FROM grantwheel_history WHERE entity_kind = $1 AND entity_id = $2 AND seq < $3{filters}"
    );
    let range = |extra: &str| format!("({head}{extra} ORDER BY seq DESC LIMIT $4)");
    let ranges: Vec<String> =
        if q.user.is_some() || matches!(q.source, Some(Source::Automation { .. })) {
            // One index range (the user's or the rule's); status and source are
            // filters on it.
            let mut extra = String::new();
            if let [status] = statuses {
                extra.push_str(&format!(" AND status = '{status}'"));
            }
            if sources.len() < 3 {
                let list: Vec<String> = sources.iter().map(|s| format!("'{s}'")).collect();
                extra.push_str(&format!(" AND source IN ({})", list.join(", ")));
            }
            vec![range(&extra)]
        } else {
            // The status and source are written into the text: each range is a
            // range of one index, (entity, status, source, seq).
            statuses
                .iter()
                .flat_map(|status| sources.iter().map(move |source| (status, source)))
                .map(|(status, source)| {
                    range(&format!(" AND status = '{status}' AND source = '{source}'"))
                })
                .collect()
        };
    if sources.is_empty() {
        return None;
    }
    let sql = format!(
        "SELECT * FROM ({}) AS page ORDER BY seq DESC LIMIT $4",
        ranges.join(" UNION ALL ")
    );
    Some((sql, params))
}

impl StoreReader for PostgresReader {
    fn request(&self, id: &RequestId) -> Result<Option<HistoryRecord>, StoreError> {
        Ok(self
            .records(&SQL.render(queries::REQUEST), &[boxed(id.to_string())])?
            .into_iter()
            .next())
    }

    fn request_by_key(&self, key: &str) -> Result<Option<HistoryRecord>, StoreError> {
        Ok(self
            .records(
                &SQL.render(queries::REQUEST_BY_KEY),
                &[boxed(key.to_string())],
            )?
            .into_iter()
            .next())
    }

    fn history(&self, entity: &EntityId, query: &HistoryQuery) -> Result<HistoryPage, StoreError> {
        let below = query.after.map_or(i64::MAX, |c| i64_of(c.place()));
        let want = i64::try_from(query.limit.saturating_add(1)).unwrap_or(i64::MAX);
        let Some((sql, params)) = page_query(entity, query, below, want) else {
            return Ok(HistoryPage {
                records: Vec::new(),
                next: None,
            });
        };
        let mut found = Vec::new();
        for row in self.rows(&sql, &params)? {
            let (seq, record) = decode_record(&row)?;
            // The statement selects exactly what the query keeps; checked
            // again so a difference can only shorten a page, never widen it.
            if query.keeps(&record) {
                found.push((seq, record));
            }
        }
        let next = if found.len() > query.limit {
            found.truncate(query.limit);
            found.last().map(|(seq, _)| Cursor::before(*seq))
        } else {
            None
        };
        Ok(HistoryPage {
            records: found.into_iter().map(|(_, r)| r).collect(),
            next,
        })
    }

    fn access_at(
        &self,
        entity: &EntityId,
        at: DateTime<Utc>,
    ) -> Result<Vec<HistoryRecord>, StoreError> {
        let all = self.records(
            &SQL.render(queries::ACCESS_AT),
            &[
                boxed(entity_kind(entity)),
                boxed(entity_text(entity)),
                boxed(at.timestamp_millis()),
            ],
        )?;
        Ok(all.into_iter().filter(|r| r.gave_access_at(at)).collect())
    }

    fn processing(&self, limit: usize) -> Result<Vec<HistoryRecord>, StoreError> {
        self.records(
            &format!(
                // Only those whose instance is gone: no session holds the
                // advisory lock of the owner key the row carries (a bigint
                // key shows in pg_locks as its high and low 32 bits).
                "SELECT {HISTORY_COLUMNS} FROM grantwheel_history h WHERE status = 'Processing'
                   AND approval_deadline_ms IS NULL
                   AND NOT EXISTS (SELECT 1 FROM pg_locks l
                     WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
                       AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                       AND l.classid::bigint = (h.owner >> 32) AND l.objid::bigint = (h.owner & 4294967295))
                   ORDER BY seq LIMIT $1"
            ),
            &[boxed(i64::try_from(limit).unwrap_or(i64::MAX))],
        )
    }

    fn share_of_grant(&self, serial: u64) -> Result<Option<HistoryRecord>, StoreError> {
        Ok(self
            .records(
                &SQL.render(queries::SHARE_OF_GRANT),
                &[boxed(i64_of(serial))],
            )?
            .into_iter()
            .next())
    }

    fn awaiting_approval(&self, limit: usize) -> Result<Vec<HistoryRecord>, StoreError> {
        self.records(
            &SQL.render(queries::AWAITING),
            &[boxed(i64::try_from(limit).unwrap_or(i64::MAX))],
        )
    }

    fn held_at(&self, user: &UserId, at: DateTime<Utc>) -> Result<Vec<HistoryRecord>, StoreError> {
        let all = self.records(
            &SQL.render(queries::HELD_AT),
            &[boxed(user_text(*user)), boxed(at.timestamp_millis())],
        )?;
        Ok(all.into_iter().filter(|r| r.gave_access_at(at)).collect())
    }

    fn open_shares_of_rule(
        &self,
        rule: RuleId,
        now: DateTime<Utc>,
    ) -> Result<Vec<HistoryRecord>, StoreError> {
        self.records(
            &SQL.render(queries::OPEN_OF_RULE),
            &[boxed(i64_of(rule.0)), boxed(now.timestamp_millis())],
        )
    }

    fn prunable(&self, horizon: DateTime<Utc>, limit: usize) -> Result<Vec<RequestId>, StoreError> {
        let rows = self.rows(
            &SQL.render(queries::PRUNABLE),
            &[
                boxed(horizon.timestamp_millis()),
                boxed(i64::try_from(limit).unwrap_or(i64::MAX)),
            ],
        )?;
        rows.iter()
            .map(|row| {
                let text: &str = row.try_get(0).map_err(pg)?;
                text.parse().map_err(
                    |e: crate::model::history::BadRequestId| StoreError::Corrupt {
                        what: "grantwheel_history row".into(),
                        reason: format!("request: {e}"),
                    },
                )
            })
            .collect()
    }

    fn live_grants(
        &self,
        filter: GrantFilter,
        now: DateTime<Utc>,
    ) -> Result<Vec<Grant>, StoreError> {
        let now = boxed(i64_of(to_millis(now)));
        let (template, mut params): (&str, Vec<Param>) = match filter {
            GrantFilter::User(u) => (queries::GRANTS_OF_USER, vec![boxed(user_text(u))]),
            GrantFilter::Entity(e) => (
                queries::GRANTS_ON_ENTITY,
                vec![boxed(entity_kind(&e)), boxed(entity_text(&e))],
            ),
            GrantFilter::Context(c) => match context_id(c) {
                Some(id) => (
                    queries::GRANTS_THROUGH,
                    vec![boxed(context_kind(c)), boxed(id)],
                ),
                None => (queries::GRANTS_DIRECT, vec![boxed(context_kind(c))]),
            },
            GrantFilter::ExpiringBy(until) => (
                queries::GRANTS_EXPIRING,
                vec![boxed(i64_of(to_millis(until)))],
            ),
        };
        params.push(now);
        let rows = self.rows(&SQL.render(template), &params)?;
        rows.iter().map(decode_grant).collect()
    }
}
