//! The read side: queries on connections of their own, beside the writer.
//!
//! In WAL mode a reader sees the last commit made before its read
//! transaction began and never waits for the writer, so a history page is
//! not held up by a batch being written, and a batch is not held up by a
//! page being read. Each query runs in one read transaction, so a query
//! that reads several index ranges (a page merged from its status and
//! source ranges) sees one state.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use rusqlite::types::Value;
use rusqlite::{params, params_from_iter, Connection};

use super::codec::{context_id, decode_grant, entity_value, i64_of};
use super::history::{decode, COLUMNS};
use super::io;
use crate::clock::to_millis;
use crate::ids::{EntityId, UserId};
use crate::model::grant::Grant;
use crate::model::history::{
    Cursor, HistoryPage, HistoryQuery, HistoryRecord, RequestId, RuleId, Source, SourceKind,
    StatusKind,
};
use crate::store::sql::queries::{self, Dialect};
use crate::store::{GrantFilter, StoreError, StoreReader};

/// Idle connections kept for the next queries; more are opened while
/// more queries run at once, and closed when they are done.
const IDLE: usize = 8;

/// The read side of a [`SqliteStore`](super::SqliteStore).
#[derive(Debug)]
pub(super) struct SqliteReader {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

/// Requests queued and not carried out (those awaiting an approver are not
/// queued: they wait in the store).
const PROCESSING: &str = "status = 'Processing' AND approval_deadline_ms IS NULL";

const GRANT_COLUMNS: &str =
    "serial, user, entity_kind, entity_id, context_kind, context_id, level, expires_ms, crc, starts_ms";

/// How this store spells the shared statements.
const SQL: Dialect = Dialect {
    history: "history",
    grants: "grants",
    user: "user",
    columns: COLUMNS,
    grant_columns: GRANT_COLUMNS,
    parameter: '?',
};

impl SqliteReader {
    pub(super) fn new(path: PathBuf) -> Self {
        SqliteReader {
            path,
            idle: Mutex::new(Vec::new()),
        }
    }

    fn connect(&self) -> Result<Connection, StoreError> {
        let conn = Connection::open(&self.path).map_err(io)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(io)?;
        conn.pragma_update(None, "query_only", true).map_err(io)?;
        // Reads touch a few pages per query; the writer keeps the big cache.
        conn.pragma_update(None, "cache_size", -8192).map_err(io)?;
        // Every query of the read side stays prepared.
        conn.set_prepared_statement_cache_capacity(64);
        Ok(conn)
    }

    /// Run `f` in one read transaction on an idle (or new) connection.
    fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let conn = match self.idle.lock().pop() {
            Some(c) => c,
            None => self.connect()?,
        };
        let run = |sql: &str| conn.prepare_cached(sql).and_then(|mut s| s.execute([]));
        run("BEGIN").map_err(io)?;
        let out = f(&conn);
        let end = run(if out.is_ok() { "COMMIT" } else { "ROLLBACK" });
        if end.is_ok() {
            let mut idle = self.idle.lock();
            if idle.len() < IDLE {
                idle.push(conn);
            }
        }
        let out = out?;
        end.map_err(io)?;
        Ok(out)
    }

    /// The record a query by a unique key finds, if any.
    fn one(
        &self,
        sql: &str,
        values: &[&dyn rusqlite::ToSql],
    ) -> Result<Option<HistoryRecord>, StoreError> {
        Ok(self.all(sql, values)?.into_iter().next())
    }

    fn all(
        &self,
        sql: &str,
        values: &[&dyn rusqlite::ToSql],
    ) -> Result<Vec<HistoryRecord>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(sql).map_err(io)?;
            let mut rows = stmt.query(values).map_err(io)?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().map_err(io)? {
                out.push(decode(row)?.1);
            }
            Ok(out)
        })
    }
}

/// One index range of a page: its query and the values it binds.
struct Range {
    sql: String,
    values: Vec<Value>,
}

/// The ranges a page is merged from: the user's range, the rule's, or one
/// range per (status, source) that the filters allow.
fn ranges(entity: &EntityId, q: &HistoryQuery, below: i64, columns: &str) -> Vec<Range> {
    let head = format!("SELECT {columns} FROM history WHERE entity_kind = ?1 AND entity_id = ?2");
    let kind = Value::Integer(i64::from(entity.kind.code()));
    let id = entity_value(&entity.id);
    if let Some(user) = q.user {
        return vec![Range {
            sql: format!("{head} AND user = ?3 AND seq < ?4 ORDER BY seq DESC"),
            values: vec![
                kind,
                id,
                Value::Text(user.0.hyphenated().to_string()),
                Value::Integer(below),
            ],
        }];
    }
    if let Some(Source::Automation { rule }) = q.source {
        return vec![Range {
            sql: format!("{head} AND rule = ?3 AND seq < ?4 ORDER BY seq DESC"),
            values: vec![
                kind,
                id,
                Value::Integer(i64_of(rule.0)),
                Value::Integer(below),
            ],
        }];
    }
    let statuses: &[&str] = match q.status {
        Some(StatusKind::Processing) => &["Processing"],
        Some(StatusKind::Completed) => &["Completed"],
        Some(StatusKind::Failed) => &["Failed"],
        None => &["Processing", "Completed", "Failed"],
    };
    let source_kind = q.source.map(|s| s.kind()).or(q.source_kind);
    let sources: &[&str] = match source_kind {
        Some(SourceKind::Api) => &["api"],
        Some(SourceKind::Automation) => &["automation"],
        Some(SourceKind::Direct) => &["direct"],
        None => &["api", "automation", "direct"],
    };
    let mut out = Vec::with_capacity(statuses.len() * sources.len());
    // The status and source are written into the text, not bound: each
    // range is its own statement, cached once per connection (a page reads
    // up to nine ranges at once).
    for status in statuses {
        for source in sources {
            out.push(Range {
                sql: format!(
                    "{head} AND status = '{status}' AND source = '{source}' AND seq < ?3 ORDER BY seq DESC"
                ),
                values: vec![kind.clone(), id.clone(), Value::Integer(below)],
            });
        }
    }
    out
}

impl StoreReader for SqliteReader {
    fn request(&self, id: &RequestId) -> Result<Option<HistoryRecord>, StoreError> {
        self.one(&SQL.render(queries::REQUEST), &[&id.to_string()])
    }

    fn request_by_key(&self, key: &str) -> Result<Option<HistoryRecord>, StoreError> {
        self.one(&SQL.render(queries::REQUEST_BY_KEY), &[&key])
    }

    fn history(&self, entity: &EntityId, query: &HistoryQuery) -> Result<HistoryPage, StoreError> {
        let below = query.after.map_or(i64::MAX, |c| i64_of(c.place()));
        let want = query.limit.saturating_add(1);
        let mut found = if exact(query) {
            // The ranges select exactly the page's records: merge places
            // read from the indexes alone, then read just the records
            // taken.
            let ranges = ranges(entity, query, below, "seq");
            self.read(|conn| {
                let places = merge(conn, &ranges, want, |row| {
                    let seq: i64 = row.get(0).map_err(io)?;
                    Ok(Some((seq, ())))
                })?;
                let mut stmt = conn
                    .prepare_cached(&format!("SELECT {COLUMNS} FROM history WHERE seq = ?1"))
                    .map_err(io)?;
                let mut out = Vec::with_capacity(places.len());
                for (seq, ()) in places {
                    let mut rows = stmt.query([seq]).map_err(io)?;
                    if let Some(row) = rows.next().map_err(io)? {
                        out.push(decode(row)?);
                    }
                }
                Ok(out)
            })?
        } else {
            let ranges = ranges(entity, query, below, COLUMNS);
            self.read(|conn| {
                let kept = merge(conn, &ranges, want, |row| {
                    let (seq, record) = decode(row)?;
                    Ok(query
                        .keeps(&record)
                        .then(|| (i64::try_from(seq).unwrap_or(i64::MAX), record)))
                })?;
                Ok(kept
                    .into_iter()
                    .map(|(seq, r)| (u64::try_from(seq).unwrap_or(0), r))
                    .collect())
            })?
        };
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
        let all = self.all(
            &SQL.render(queries::ACCESS_AT),
            &[
                &i64::from(entity.kind.code()),
                &entity_value(&entity.id),
                &at.timestamp_millis(),
            ],
        )?;
        Ok(all.into_iter().filter(|r| r.gave_access_at(at)).collect())
    }

    fn processing(&self, limit: usize) -> Result<Vec<HistoryRecord>, StoreError> {
        self.all(
            &format!("SELECT {COLUMNS} FROM history WHERE {PROCESSING} ORDER BY seq LIMIT ?1"),
            &[&i64::try_from(limit).unwrap_or(i64::MAX)],
        )
    }

    fn share_of_grant(&self, serial: u64) -> Result<Option<HistoryRecord>, StoreError> {
        Ok(self
            .all(&SQL.render(queries::SHARE_OF_GRANT), &[&i64_of(serial)])?
            .into_iter()
            .next())
    }

    fn awaiting_approval(&self, limit: usize) -> Result<Vec<HistoryRecord>, StoreError> {
        self.all(
            &SQL.render(queries::AWAITING),
            &[&i64::try_from(limit).unwrap_or(i64::MAX)],
        )
    }

    fn held_at(&self, user: &UserId, at: DateTime<Utc>) -> Result<Vec<HistoryRecord>, StoreError> {
        let all = self.all(
            &SQL.render(queries::HELD_AT),
            &[&user.0.hyphenated().to_string(), &at.timestamp_millis()],
        )?;
        Ok(all.into_iter().filter(|r| r.gave_access_at(at)).collect())
    }

    fn open_shares_of_rule(
        &self,
        rule: RuleId,
        now: DateTime<Utc>,
    ) -> Result<Vec<HistoryRecord>, StoreError> {
        self.all(
            &SQL.render(queries::OPEN_OF_RULE),
            &[&i64_of(rule.0), &now.timestamp_millis()],
        )
    }

    fn prunable(&self, horizon: DateTime<Utc>, limit: usize) -> Result<Vec<RequestId>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare_cached(&SQL.render(queries::PRUNABLE))
                .map_err(io)?;
            let mut rows = stmt
                .query(params![
                    horizon.timestamp_millis(),
                    i64::try_from(limit).unwrap_or(i64::MAX)
                ])
                .map_err(io)?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().map_err(io)? {
                let text: String = row.get(0).map_err(io)?;
                out.push(
                    text.parse()
                        .map_err(
                            |e: crate::model::history::BadRequestId| StoreError::Corrupt {
                                what: "history row".into(),
                                reason: format!("request: {e}"),
                            },
                        )?,
                );
            }
            Ok(out)
        })
    }

    fn live_grants(
        &self,
        filter: GrantFilter,
        now: DateTime<Utc>,
    ) -> Result<Vec<Grant>, StoreError> {
        let now = Value::Integer(i64_of(to_millis(now)));
        let (template, mut values) = match filter {
            GrantFilter::User(u) => (
                queries::GRANTS_OF_USER,
                vec![Value::Text(u.0.hyphenated().to_string())],
            ),
            GrantFilter::Entity(e) => (
                queries::GRANTS_ON_ENTITY,
                vec![
                    Value::Integer(i64::from(e.kind.code())),
                    entity_value(&e.id),
                ],
            ),
            GrantFilter::Context(c) => match context_id(c) {
                Some(id) => (
                    queries::GRANTS_THROUGH,
                    vec![Value::Integer(i64::from(c.pack().0)), Value::Text(id)],
                ),
                None => (
                    queries::GRANTS_DIRECT,
                    vec![Value::Integer(i64::from(c.pack().0))],
                ),
            },
            GrantFilter::ExpiringBy(until) => (
                queries::GRANTS_EXPIRING,
                vec![Value::Integer(i64_of(to_millis(until)))],
            ),
        };
        values.push(now);
        let sql = SQL.render(template);
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(&sql).map_err(io)?;
            let mut rows = stmt.query(params_from_iter(values.iter())).map_err(io)?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().map_err(io)? {
                out.push(
                    decode_grant(row).map_err(|(serial, reason)| StoreError::Corrupt {
                        what: format!("grants row with serial {serial}"),
                        reason,
                    })?,
                );
            }
            Ok(out)
        })
    }
}

/// Whether the ranges of `q` select exactly the records `q` keeps (no
/// filter is left to check on a record): true unless a time range is
/// asked, or a range selects by one filter while another is asked too.
fn exact(q: &HistoryQuery) -> bool {
    if q.from.is_some() || q.until.is_some() {
        return false;
    }
    let rule = matches!(q.source, Some(Source::Automation { .. }));
    if q.user.is_some() {
        return q.status.is_none() && q.source.is_none() && q.source_kind.is_none();
    }
    if rule {
        return q.status.is_none() && q.source_kind.is_none_or(|k| k == SourceKind::Automation);
    }
    match (q.source, q.source_kind) {
        (Some(s), Some(k)) => s.kind() == k,
        _ => true,
    }
}

/// Merge `ranges` (each newest first) into the `want` newest items that
/// `item` makes of their rows (`None`: a row the page does not keep).
fn merge<T>(
    conn: &Connection,
    ranges: &[Range],
    want: usize,
    mut item: impl FnMut(&rusqlite::Row<'_>) -> Result<Option<(i64, T)>, StoreError>,
) -> Result<Vec<(i64, T)>, StoreError> {
    let mut stmts = Vec::with_capacity(ranges.len());
    for r in ranges {
        stmts.push(conn.prepare_cached(&r.sql).map_err(io)?);
    }
    let mut streams = Vec::with_capacity(ranges.len());
    for (stmt, r) in stmts.iter_mut().zip(ranges) {
        streams.push(stmt.query(params_from_iter(r.values.iter())).map_err(io)?);
    }
    let mut next = |rows: &mut rusqlite::Rows<'_>| -> Result<Option<(i64, T)>, StoreError> {
        while let Some(row) = rows.next().map_err(io)? {
            if let Some(kept) = item(row)? {
                return Ok(Some(kept));
            }
        }
        Ok(None)
    };
    let mut heads = Vec::with_capacity(streams.len());
    for rows in &mut streams {
        heads.push(next(rows)?);
    }
    let mut out = Vec::new();
    while out.len() < want {
        // The newest head: the merge of ranges that are each newest first.
        let newest = heads
            .iter()
            .enumerate()
            .filter_map(|(i, h)| h.as_ref().map(|(seq, _)| (*seq, i)))
            .max();
        let Some((_, i)) = newest else { break };
        let (Some(head), Some(rows)) = (heads.get_mut(i), streams.get_mut(i)) else {
            break;
        };
        let following = next(rows)?;
        if let Some(taken) = std::mem::replace(head, following) {
            out.push(taken);
        }
    }
    Ok(out)
}

/// The query plan SQLite chooses for each query of the read side, one
/// line per step (for the docs and the test that no query scans a table).
#[cfg(test)]
pub(super) fn plans(conn: &Connection) -> Vec<(String, String)> {
    let entity = EntityId::lead(1);
    let mut out = Vec::new();
    let q = HistoryQuery::default();
    let mut queries: Vec<(String, String, Vec<Value>)> = Vec::new();
    for (name, query) in [
        ("page", q.clone()),
        (
            "page by user",
            q.clone().user(crate::ids::UserId::from_u128(1)),
        ),
        ("page by status", q.clone().status(StatusKind::Failed)),
        (
            "page by source kind",
            q.clone().source_kind(SourceKind::Api),
        ),
        (
            "page by rule",
            q.clone().source(Source::Automation { rule: RuleId(1) }),
        ),
    ] {
        if let Some(r) = ranges(&entity, &query, 10, COLUMNS).into_iter().next() {
            queries.push((name.into(), r.sql, r.values));
        }
        if let Some(r) = ranges(&entity, &query, 10, "seq").into_iter().next() {
            queries.push((format!("{name}, places only"), r.sql, r.values));
        }
    }
    queries.push((
        "a record by place".into(),
        format!("SELECT {COLUMNS} FROM history WHERE seq = ?1"),
        vec![Value::Integer(1)],
    ));
    let one = |sql: &str, v: Vec<Value>| (sql.to_string(), v);
    for (name, (sql, v)) in [
        ("request by id", one(&SQL.render(queries::REQUEST), vec![Value::Text("x".into())])),
        ("request by key", one(&SQL.render(queries::REQUEST_BY_KEY), vec![Value::Text("k".into())])),
        ("processing", one(&format!("SELECT {COLUMNS} FROM history WHERE {PROCESSING} ORDER BY seq LIMIT ?1"), vec![Value::Integer(10)])),
        ("share of a grant", one(&SQL.render(queries::SHARE_OF_GRANT), vec![Value::Integer(1)])),
        ("awaiting approval", one(&SQL.render(queries::AWAITING), vec![Value::Integer(10)])),
        ("held by a user at", one(&SQL.render(queries::HELD_AT), vec![Value::Text("u".into()), Value::Integer(1)])),
        ("open shares of a rule", one(&SQL.render(queries::OPEN_OF_RULE), vec![Value::Integer(1), Value::Integer(1)])),
        ("prunable", one(&SQL.render(queries::PRUNABLE), vec![Value::Integer(1), Value::Integer(10)])),
        ("access at", one(&SQL.render(queries::ACCESS_AT), vec![Value::Integer(1), Value::Integer(1), Value::Integer(1)])),
        ("end a share record", one("UPDATE history SET end_ms = ?2, end_cause = ?3 WHERE grant_serial = ?1 AND kind = 'share' AND end_ms IS NULL", vec![Value::Integer(1), Value::Integer(1), Value::Text("expired".into())])),
        ("grants of a user", one(&SQL.render(queries::GRANTS_OF_USER), vec![Value::Text("u".into()), Value::Integer(1)])),
        ("grants on an entity", one(&SQL.render(queries::GRANTS_ON_ENTITY), vec![Value::Integer(1), Value::Integer(1), Value::Integer(1)])),
        ("grants through a context", one(&SQL.render(queries::GRANTS_THROUGH), vec![Value::Integer(1), Value::Text("c".into()), Value::Integer(1)])),
        ("direct grants", one(&SQL.render(queries::GRANTS_DIRECT), vec![Value::Integer(0), Value::Integer(1)])),
        ("grants expiring", one(&SQL.render(queries::GRANTS_EXPIRING), vec![Value::Integer(2), Value::Integer(1)])),
    ] {
        queries.push((name.into(), sql, v));
    }
    for (name, sql, values) in queries {
        let plan = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .and_then(|mut s| {
                let rows =
                    s.query_map(params_from_iter(values.iter()), |r| r.get::<_, String>(3))?;
                rows.collect::<Result<Vec<_>, _>>()
            })
            .map(|steps| steps.join("; "))
            .unwrap_or_else(|e| format!("error: {e}"));
        out.push((name, plan));
    }
    out
}
