//! History rows: a record in columns, written by request id, ended by
//! grant serial, read back with every error naming its column.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use rusqlite::types::Value;
use rusqlite::{params, Row, Transaction};

use super::codec::{value, SqliteRow};
use super::io;
use crate::model::history::{HistoryRecord, RequestId};
use crate::store::sql::history::{decode_record, history_columns, record_cells, upsert, WRITTEN};
use crate::store::sql::i64_of;
use crate::store::{EndCause, StoreError};

/// The indexes of the history table, one per query of the read side.
pub(super) const HISTORY_INDEXES: &str = "
-- An entity's page, unfiltered or by status and source: one range per
-- (status, source), merged newest first.
CREATE INDEX history_by_entity_status ON history (entity_kind, entity_id, status, source, seq);
-- An entity's page for one user.
CREATE INDEX history_by_entity_user ON history (entity_kind, entity_id, user, seq);
-- An entity's page for one rule, and a rule's grants still open.
CREATE INDEX history_by_rule ON history (rule, entity_kind, entity_id, seq) WHERE rule IS NOT NULL;
CREATE INDEX history_open_by_rule ON history (rule, expires_ms)
    WHERE rule IS NOT NULL AND kind = 'share' AND status = 'Completed' AND end_ms IS NULL;
-- Idempotency keys.
CREATE UNIQUE INDEX history_by_key ON history (idempotency_key) WHERE idempotency_key IS NOT NULL;
-- The share record of a grant, when the grant ends.
CREATE INDEX history_by_grant ON history (grant_serial) WHERE kind = 'share' AND grant_serial IS NOT NULL;
-- Requests still being processed (failed as interrupted at start).
CREATE INDEX history_processing ON history (seq) WHERE status = 'Processing';
-- Retention: what finished longest ago first.
CREATE INDEX history_by_done ON history (done_ms, seq) WHERE done_ms IS NOT NULL;
";

/// The indexes version 5 adds: the approvals queue and a user's audit.
pub(super) const APPROVAL_INDEXES: &str = "
-- Shares waiting for an approver, soonest deadline first.
CREATE INDEX history_awaiting ON history (approval_deadline_ms, seq)
    WHERE status = 'Processing' AND approval_deadline_ms IS NOT NULL;
-- A user's completed shares, by end: what the user held at an instant.
CREATE INDEX history_shares_by_user ON history (user, expires_ms)
    WHERE kind = 'share' AND status = 'Completed';
";

/// The columns a record is read from, in this order.
pub(super) const COLUMNS: &str = concat!("seq, ", history_columns!("user"));

/// The columns of version 2, which a version 1 record fills (its later
/// fields are all empty).
const WRITTEN_V2: &str = "request, kind, entity_kind, entity_id, user, context_kind, context_id, level, duration_ms, expires_ms, source, rule, status, failure_kind, reason, grant_serial, created_ms, completed_ms, end_ms, end_cause, ended_by, idempotency_key";

/// Insert or replace by request id (see [`upsert`]).
static PUT: LazyLock<String> = LazyLock::new(|| {
    let places: Vec<String> = (1..=WRITTEN).map(|i| format!("?{i}")).collect();
    format!(
        "INSERT INTO history ({}) VALUES ({}) {}",
        history_columns!("user"),
        places.join(", "),
        upsert("history", "user", &[])
    )
});

const END: &str = "UPDATE history SET end_ms = ?2, end_cause = ?3 WHERE grant_serial = ?1 AND kind = 'share' AND end_ms IS NULL";
const ENDED_BY: &str =
    "UPDATE history SET ended_by = ?2 WHERE grant_serial = ?1 AND kind = 'share'";
const FORGET: &str = "DELETE FROM history WHERE request = ?1";

/// A record's values, in the order of `history_columns!` (those of
/// [`WRITTEN_V2`] first).
fn values(r: &HistoryRecord) -> [Value; WRITTEN] {
    record_cells(r).map(value)
}

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

/// Insert or replace a record by its request id.
pub(super) fn put_record(tx: &Transaction<'_>, r: &HistoryRecord) -> Result<(), StoreError> {
    tx.prepare_cached(&PUT)
        .and_then(|mut s| s.execute(rusqlite::params_from_iter(values(r))))
        .map(|_| ())
        .map_err(io)
}

/// Insert a record of version 1 at a given place (migrations only).
pub(super) fn insert_with_place(
    tx: &Transaction<'_>,
    table: &str,
    seq: i64,
    r: &HistoryRecord,
) -> Result<(), StoreError> {
    let sql = format!(
        "INSERT INTO {table} (seq, {WRITTEN_V2}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23)"
    );
    let mut all = vec![Value::Integer(seq)];
    all.extend(values(r).into_iter().take(22));
    tx.prepare_cached(&sql)
        .and_then(|mut s| s.execute(rusqlite::params_from_iter(all)))
        .map(|_| ())
        .map_err(io)
}

/// Record the end of the grant `serial` in its share record.
pub(super) fn end_record(
    tx: &Transaction<'_>,
    serial: u64,
    at: DateTime<Utc>,
    cause: EndCause,
) -> Result<(), StoreError> {
    let cause = match cause {
        EndCause::Revoked => "revoked",
        EndCause::Replaced => "replaced",
        EndCause::Expired => "expired",
    };
    tx.prepare_cached(END)
        .and_then(|mut s| s.execute(params![i64_of(serial), ms(at), cause]))
        .map(|_| ())
        .map_err(io)
}

/// Name the revoke request that ended the grant `serial`.
pub(super) fn ended_by(
    tx: &Transaction<'_>,
    serial: u64,
    request: &RequestId,
) -> Result<(), StoreError> {
    tx.prepare_cached(ENDED_BY)
        .and_then(|mut s| s.execute(params![i64_of(serial), request.to_string()]))
        .map(|_| ())
        .map_err(io)
}

/// Forget a record.
pub(super) fn forget(tx: &Transaction<'_>, request: &RequestId) -> Result<(), StoreError> {
    tx.prepare_cached(FORGET)
        .and_then(|mut s| s.execute(params![request.to_string()]))
        .map(|_| ())
        .map_err(io)
}

/// Decode a row selected as [`COLUMNS`]: its place and record.
pub(super) fn decode(row: &Row<'_>) -> Result<(u64, HistoryRecord), StoreError> {
    decode_record(&SqliteRow(row)).map_err(|(col, reason)| {
        let request: String = row.get(1).unwrap_or_else(|_| "?".into());
        StoreError::Corrupt {
            what: format!("history row `{request}`"),
            reason: format!("{col}: {reason}"),
        }
    })
}
