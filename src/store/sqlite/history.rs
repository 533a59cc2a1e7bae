//! History rows: a record in columns, written by request id, ended by
//! grant serial, read back with every error naming its column.

use chrono::{DateTime, Utc};
use rusqlite::types::{Value, ValueRef};
use rusqlite::{params, Row, Transaction};

use super::codec::{context_from, context_id, entity_from, entity_value, i64_of, level_name};
use super::io;
use crate::ids::{GrantId, Level, UserId};
use crate::model::history::{
    Approval, Decision, EndedBy, FailureKind, HistoryRecord, RequestId, RequestKind, RequestStatus,
    RuleId, Source,
};
use crate::store::{failure_name, failure_of, EndCause, StoreError};

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
pub(super) const COLUMNS: &str = "seq, request, kind, entity_kind, entity_id, user, context_kind, context_id, level, duration_ms, expires_ms, source, rule, status, failure_kind, reason, grant_serial, created_ms, completed_ms, end_ms, end_cause, ended_by, idempotency_key, starts_ms, granted_by, approval_why, approval_deadline_ms, approver, approved, decided_ms, decision_reason, end_reason";

/// The columns of version 2, which a version 1 record fills (its later
/// fields are all empty).
const WRITTEN_V2: &str = "request, kind, entity_kind, entity_id, user, context_kind, context_id, level, duration_ms, expires_ms, source, rule, status, failure_kind, reason, grant_serial, created_ms, completed_ms, end_ms, end_cause, ended_by, idempotency_key";

/// Insert or replace by request id. A replaced record keeps its place
/// (`seq`), and keeps a recorded end when the new one has none.
const PUT: &str = "INSERT INTO history (request, kind, entity_kind, entity_id, user, context_kind, context_id, level, duration_ms, expires_ms, source, rule, status, failure_kind, reason, grant_serial, created_ms, completed_ms, end_ms, end_cause, ended_by, idempotency_key, starts_ms, granted_by, approval_why, approval_deadline_ms, approver, approved, decided_ms, decision_reason, end_reason)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29, ?30, ?31)
ON CONFLICT (request) DO UPDATE SET
    kind = excluded.kind, entity_kind = excluded.entity_kind, entity_id = excluded.entity_id,
    user = excluded.user, context_kind = excluded.context_kind, context_id = excluded.context_id,
    level = excluded.level, duration_ms = excluded.duration_ms, expires_ms = excluded.expires_ms,
    source = excluded.source, rule = excluded.rule, status = excluded.status,
    failure_kind = excluded.failure_kind, reason = excluded.reason,
    grant_serial = excluded.grant_serial, created_ms = excluded.created_ms,
    completed_ms = excluded.completed_ms,
    end_cause = CASE WHEN excluded.end_ms IS NULL THEN history.end_cause ELSE excluded.end_cause END,
    end_ms = coalesce(excluded.end_ms, history.end_ms),
    ended_by = coalesce(excluded.ended_by, history.ended_by),
    idempotency_key = excluded.idempotency_key, starts_ms = excluded.starts_ms,
    granted_by = excluded.granted_by, approval_why = excluded.approval_why,
    approval_deadline_ms = excluded.approval_deadline_ms, approver = excluded.approver,
    approved = excluded.approved, decided_ms = excluded.decided_ms,
    decision_reason = excluded.decision_reason,
    end_reason = coalesce(excluded.end_reason, history.end_reason)";

const END: &str = "UPDATE history SET end_ms = ?2, end_cause = ?3 WHERE grant_serial = ?1 AND kind = 'share' AND end_ms IS NULL";
const ENDED_BY: &str =
    "UPDATE history SET ended_by = ?2 WHERE grant_serial = ?1 AND kind = 'share'";
const FORGET: &str = "DELETE FROM history WHERE request = ?1";

/// A record's columns, in the order of [`PUT`] (those of [`WRITTEN_V2`]
/// first).
fn values(r: &HistoryRecord) -> [Value; 31] {
    let text = |s: &str| Value::Text(s.to_string());
    let opt_ms = |t: Option<DateTime<Utc>>| t.map_or(Value::Null, |t| Value::Integer(ms(t)));
    let (kind, _) = r.context.pack();
    let (source, rule) = match r.source {
        Source::Api => ("api", Value::Null),
        Source::Automation { rule } => ("automation", Value::Integer(i64_of(rule.0))),
        Source::Direct => ("direct", Value::Null),
    };
    let (failure, reason) = match &r.status {
        RequestStatus::Failed { kind, reason } => (text(failure_name(*kind)), text(reason)),
        _ => (Value::Null, Value::Null),
    };
    let (end_ms, cause, by) = match (r.revoked, r.expired_at) {
        (Some((t, by)), _) => {
            let (cause, by) = match by {
                EndedBy::Request(id) => ("revoked", Value::Text(id.to_string())),
                EndedBy::Engine => ("revoked", Value::Null),
                EndedBy::Replaced => ("replaced", Value::Null),
            };
            (Value::Integer(ms(t)), text(cause), by)
        }
        (None, Some(t)) => (Value::Integer(ms(t)), text("expired"), Value::Null),
        (None, None) => (Value::Null, Value::Null, Value::Null),
    };
    let approval = r.approval.as_ref();
    let decision = approval.and_then(|a| a.decision.as_ref());
    [
        Value::Text(r.request.to_string()),
        text(match r.kind {
            RequestKind::Share => "share",
            RequestKind::Revoke => "revoke",
        }),
        Value::Integer(i64::from(r.entity.kind.code())),
        entity_value(&r.entity.id),
        Value::Text(r.user.0.hyphenated().to_string()),
        Value::Integer(i64::from(kind)),
        context_id(r.context).map_or(Value::Null, Value::Text),
        text(level_name(r.level)),
        r.duration
            .map_or(Value::Null, |d| Value::Integer(d.num_milliseconds())),
        opt_ms(r.expires_at),
        text(source),
        rule,
        text(r.status.name()),
        failure,
        reason,
        r.grant
            .map_or(Value::Null, |g| Value::Integer(i64_of(g.serial))),
        Value::Integer(ms(r.created_at)),
        opt_ms(r.completed_at),
        end_ms,
        cause,
        by,
        r.idempotency_key
            .as_ref()
            .map_or(Value::Null, |k| Value::Text(k.clone())),
        opt_ms(r.starts_at),
        r.granted_by
            .map_or(Value::Null, |u| Value::Text(u.0.hyphenated().to_string())),
        approval.map_or(Value::Null, |a| text(&a.why)),
        approval.map_or(Value::Null, |a| Value::Integer(ms(a.deadline))),
        decision.map_or(Value::Null, |d| {
            Value::Text(d.approver.0.hyphenated().to_string())
        }),
        decision.map_or(Value::Null, |d| Value::Integer(i64::from(d.approved))),
        decision.map_or(Value::Null, |d| Value::Integer(ms(d.at))),
        decision
            .and_then(|d| d.reason.as_deref())
            .map_or(Value::Null, text),
        r.end_reason.as_deref().map_or(Value::Null, text),
    ]
}

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

/// Insert or replace a record by its request id.
pub(super) fn put_record(tx: &Transaction<'_>, r: &HistoryRecord) -> Result<(), StoreError> {
    tx.prepare_cached(PUT)
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

/// Reads one history row (selected as [`COLUMNS`]); every error names the
/// request and the column.
struct HistoryRow<'r, 's> {
    row: &'r Row<'s>,
}

type Bad = (&'static str, String);

impl HistoryRow<'_, '_> {
    fn get_ref(&self, i: usize, col: &'static str) -> Result<ValueRef<'_>, Bad> {
        self.row.get_ref(i).map_err(|e| (col, e.to_string()))
    }

    fn int(&self, i: usize, col: &'static str) -> Result<Option<i64>, Bad> {
        match self.get_ref(i, col)? {
            ValueRef::Null => Ok(None),
            ValueRef::Integer(n) => Ok(Some(n)),
            other => Err((
                col,
                format!("a {} where a number belongs", other.data_type()),
            )),
        }
    }

    fn text(&self, i: usize, col: &'static str) -> Result<Option<&str>, Bad> {
        match self.get_ref(i, col)? {
            ValueRef::Null => Ok(None),
            ValueRef::Text(t) => std::str::from_utf8(t)
                .map(Some)
                .map_err(|e| (col, e.to_string())),
            other => Err((col, format!("a {} where text belongs", other.data_type()))),
        }
    }

    fn need<T>(v: Option<T>, col: &'static str) -> Result<T, Bad> {
        v.ok_or((col, "missing".to_string()))
    }

    fn time(&self, i: usize, col: &'static str) -> Result<Option<DateTime<Utc>>, Bad> {
        self.int(i, col)?
            .map(|ms| {
                DateTime::<Utc>::from_timestamp_millis(ms)
                    .ok_or((col, format!("`{ms}` out of range")))
            })
            .transpose()
    }

    fn request(&self, i: usize, col: &'static str) -> Result<Option<RequestId>, Bad> {
        self.text(i, col)?
            .map(|t| {
                t.parse()
                    .map_err(|e: crate::model::history::BadRequestId| (col, e.to_string()))
            })
            .transpose()
    }

    fn user_at(&self, i: usize, col: &'static str) -> Result<Option<UserId>, Bad> {
        self.text(i, col)?
            .map(|t| t.parse().map_err(|e| (col, format!("`{t}`: {e}"))))
            .transpose()
    }

    /// The approval columns (24 to 30): none unless a deadline is set; a
    /// decision when it was decided.
    fn approval(&self) -> Result<Option<Approval>, Bad> {
        let Some(deadline) = self.time(26, "approval_deadline_ms")? else {
            return Ok(None);
        };
        let why = Self::need(self.text(25, "approval_why")?, "approval_why")?.to_string();
        let decision = match self.time(29, "decided_ms")? {
            None => None,
            Some(at) => Some(Decision {
                approver: Self::need(self.user_at(27, "approver")?, "approver")?,
                approved: match Self::need(self.int(28, "approved")?, "approved")? {
                    0 => false,
                    1 => true,
                    other => return Err(("approved", format!("`{other}` is neither 0 nor 1"))),
                },
                at,
                reason: self.text(30, "decision_reason")?.map(str::to_string),
            }),
        };
        Ok(Some(Approval {
            why,
            deadline,
            decision,
        }))
    }

    fn decode(&self) -> Result<(u64, HistoryRecord), Bad> {
        let seq = Self::need(self.int(0, "seq")?, "seq")?;
        let seq = u64::try_from(seq).map_err(|_| ("seq", format!("`{seq}` is negative")))?;
        let request = Self::need(self.request(1, "request")?, "request")?;
        let kind = match Self::need(self.text(2, "kind")?, "kind")? {
            "share" => RequestKind::Share,
            "revoke" => RequestKind::Revoke,
            other => return Err(("kind", format!("`{other}` is neither share nor revoke"))),
        };
        let entity = entity_from(
            Self::need(self.int(3, "entity_kind")?, "entity_kind")?,
            self.get_ref(4, "entity_id")?,
        )?;
        let user_text = Self::need(self.text(5, "user")?, "user")?;
        let user: UserId = user_text
            .parse()
            .map_err(|e| ("user", format!("`{user_text}`: {e}")))?;
        let context = context_from(
            Self::need(self.int(6, "context_kind")?, "context_kind")?,
            self.get_ref(7, "context_id")?,
        )?;
        let level = match Self::need(self.text(8, "level")?, "level")? {
            "read" => Level::Read,
            "edit" => Level::Edit,
            other => return Err(("level", format!("`{other}` is neither read nor edit"))),
        };
        let duration = self
            .int(9, "duration_ms")?
            .map(chrono::Duration::milliseconds);
        let source = match (
            Self::need(self.text(11, "source")?, "source")?,
            self.int(12, "rule")?,
        ) {
            ("api", _) => Source::Api,
            ("direct", _) => Source::Direct,
            ("automation", Some(rule)) => Source::Automation {
                rule: RuleId(
                    u64::try_from(rule).map_err(|_| ("rule", format!("`{rule}` is negative")))?,
                ),
            },
            (other, rule) => return Err(("source", format!("`{other}` with rule {rule:?}"))),
        };
        let status = match Self::need(self.text(13, "status")?, "status")? {
            "Processing" => RequestStatus::Processing,
            "Completed" => RequestStatus::Completed,
            "Failed" => RequestStatus::Failed {
                kind: self
                    .text(14, "failure_kind")?
                    .map_or(Some(FailureKind::Unknown), failure_of)
                    .ok_or(("failure_kind", "not a failure kind".to_string()))?,
                reason: self.text(15, "reason")?.unwrap_or_default().to_string(),
            },
            other => return Err(("status", format!("`{other}` is not a status"))),
        };
        let grant = self
            .int(16, "grant_serial")?
            .map(|s| {
                u64::try_from(s)
                    .map(|serial| GrantId {
                        user,
                        entity,
                        context,
                        serial,
                    })
                    .map_err(|_| ("grant_serial", format!("`{s}` is negative")))
            })
            .transpose()?;
        let end = self.time(19, "end_ms")?;
        let by = self.request(21, "ended_by")?;
        let (revoked, expired_at) = match (end, self.text(20, "end_cause")?) {
            (None, _) => (None, None),
            (Some(t), Some("expired")) => (None, Some(t)),
            (Some(t), Some("replaced")) => (Some((t, EndedBy::Replaced)), None),
            (Some(t), Some("revoked")) => (
                Some((t, by.map_or(EndedBy::Engine, EndedBy::Request))),
                None,
            ),
            (Some(_), cause) => return Err(("end_cause", format!("{cause:?} is not a cause"))),
        };
        let record = HistoryRecord {
            request,
            kind,
            entity,
            user,
            context,
            level,
            duration,
            expires_at: self.time(10, "expires_ms")?,
            source,
            status,
            grant,
            created_at: Self::need(self.time(17, "created_ms")?, "created_ms")?,
            completed_at: self.time(18, "completed_ms")?,
            revoked,
            expired_at,
            idempotency_key: self.text(22, "idempotency_key")?.map(str::to_string),
            starts_at: self.time(23, "starts_ms")?,
            granted_by: self.user_at(24, "granted_by")?,
            approval: self.approval()?,
            end_reason: self.text(31, "end_reason")?.map(str::to_string),
        };
        Ok((seq, record))
    }
}

/// Decode a row selected as [`COLUMNS`]: its place and record.
pub(super) fn decode(row: &Row<'_>) -> Result<(u64, HistoryRecord), StoreError> {
    HistoryRow { row }.decode().map_err(|(col, reason)| {
        let request: String = row.get(1).unwrap_or_else(|_| "?".into());
        StoreError::Corrupt {
            what: format!("history row `{request}`"),
            reason: format!("{col}: {reason}"),
        }
    })
}
