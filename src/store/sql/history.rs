//! A history record as a row, for both SQL stores: its columns (their
//! order, names and types), one encoder ([`record_cells`]), one decoder
//! ([`decode_record`]) and the rule by which a record replaces its earlier
//! version ([`upsert`]).
//!
//! A new history column is one change here (its name in
//! `history_columns!`, its type in [`HISTORY_TYPES`], its cell in
//! [`record_cells`], its read in [`decode_record`]), plus the migration
//! each store's schema adds for it.

#[cfg(feature = "postgres")]
use super::Ty;
use super::{
    context, context_id, entity, i64_of, level, level_name, need, request, time, user, user_text,
    Bad, Cell, Cells,
};
use crate::ids::GrantId;
use crate::model::history::{
    Approval, Decision, EndedBy, FailureKind, HistoryRecord, RequestKind, RequestStatus, RuleId,
    Source,
};

/// The columns a record is written to, in order, with the name of the
/// user's column (`user` in SQLite; `user_id` in PostgreSQL, where `user`
/// is a keyword). Reads select `seq` first, then these.
macro_rules! history_columns {
    ($user:literal) => {
        concat!(
            "request, kind, entity_kind, entity_id, ",
            $user,
            ", context_kind, context_id, level, duration_ms, expires_ms, source, rule, status, \
             failure_kind, reason, grant_serial, created_ms, completed_ms, end_ms, end_cause, \
             ended_by, idempotency_key, starts_ms, granted_by, approval_why, \
             approval_deadline_ms, approver, approved, decided_ms, decision_reason, end_reason"
        )
    };
}
pub(crate) use history_columns;

/// The number of columns a record is written to.
pub(crate) const WRITTEN: usize = 31;

/// The written columns' types, in order.
#[cfg(feature = "postgres")]
pub(crate) const HISTORY_TYPES: [Ty; WRITTEN] = {
    use Ty::{Bool, Entity, Int4, Int8, Text};
    [
        Text,   // request
        Text,   // kind
        Int4,   // entity_kind
        Entity, // entity_id
        Text,   // user
        Int4,   // context_kind
        Text,   // context_id
        Text,   // level
        Int8,   // duration_ms
        Int8,   // expires_ms
        Text,   // source
        Int8,   // rule
        Text,   // status
        Text,   // failure_kind
        Text,   // reason
        Int8,   // grant_serial
        Int8,   // created_ms
        Int8,   // completed_ms
        Int8,   // end_ms
        Text,   // end_cause
        Text,   // ended_by
        Text,   // idempotency_key
        Int8,   // starts_ms
        Text,   // granted_by
        Text,   // approval_why
        Int8,   // approval_deadline_ms
        Text,   // approver
        Bool,   // approved
        Int8,   // decided_ms
        Text,   // decision_reason
        Text,   // end_reason
    ]
};

/// The `ON CONFLICT` clause of a record written again (same request id):
/// it replaces the earlier version in place (keeping its `seq`), but keeps
/// a recorded end, and who or what ended it, when the new version has
/// none. `extra` names columns the store fills itself (PostgreSQL's
/// `owner`), replaced like the others.
pub(crate) fn upsert(table: &str, user: &str, extra: &[&str]) -> String {
    let kept = |col: &str| format!("{col} = coalesce(excluded.{col}, {table}.{col})");
    let mut sets: Vec<String> = history_columns!("user")
        .split(", ")
        .filter(|c| *c != "request")
        .map(|c| match c {
            "user" => format!("{user} = excluded.{user}"),
            "end_cause" => format!(
                "end_cause = CASE WHEN excluded.end_ms IS NULL THEN {table}.end_cause ELSE excluded.end_cause END"
            ),
            "end_ms" | "ended_by" | "end_reason" => kept(c),
            other => format!("{other} = excluded.{other}"),
        })
        .collect();
    sets.extend(extra.iter().map(|c| format!("{c} = excluded.{c}")));
    format!("ON CONFLICT (request) DO UPDATE SET {}", sets.join(", "))
}

/// A record's cells, in the order of `history_columns!`.
pub(crate) fn record_cells(r: &HistoryRecord) -> [Cell; WRITTEN] {
    let (source, rule) = match r.source {
        Source::Api => ("api", Cell::Null),
        Source::Automation { rule } => ("automation", Cell::Int(i64_of(rule.0))),
        Source::Direct => ("direct", Cell::Null),
    };
    let (failure, reason) = match &r.status {
        RequestStatus::Failed { kind, reason } => (Cell::text(kind.name()), Cell::text(reason)),
        _ => (Cell::Null, Cell::Null),
    };
    let (end_ms, cause, by) = match (r.revoked, r.expired_at) {
        (Some((t, by)), _) => {
            let (cause, by) = match by {
                EndedBy::Request(id) => ("revoked", Cell::text(id.to_string())),
                EndedBy::Engine => ("revoked", Cell::Null),
                EndedBy::Replaced => ("replaced", Cell::Null),
            };
            (Cell::ms(t), Cell::text(cause), by)
        }
        (None, Some(t)) => (Cell::ms(t), Cell::text("expired"), Cell::Null),
        (None, None) => (Cell::Null, Cell::Null, Cell::Null),
    };
    let approval = r.approval.as_ref();
    let decision = approval.and_then(|a| a.decision.as_ref());
    [
        Cell::text(r.request.to_string()),
        Cell::text(match r.kind {
            RequestKind::Share => "share",
            RequestKind::Revoke => "revoke",
        }),
        Cell::Int(i64::from(r.entity.kind.code())),
        Cell::Entity(r.entity.id),
        Cell::text(user_text(r.user)),
        Cell::Int(i64::from(r.context.pack().0)),
        Cell::opt(context_id(r.context), Cell::Text),
        Cell::text(level_name(r.level)),
        Cell::opt(r.duration, |d| Cell::Int(d.num_milliseconds())),
        Cell::opt(r.expires_at, Cell::ms),
        Cell::text(source),
        rule,
        Cell::text(r.status.name()),
        failure,
        reason,
        Cell::opt(r.grant, |g| Cell::Int(i64_of(g.serial))),
        Cell::ms(r.created_at),
        Cell::opt(r.completed_at, Cell::ms),
        end_ms,
        cause,
        by,
        Cell::opt(r.idempotency_key.as_deref(), Cell::text),
        Cell::opt(r.starts_at, Cell::ms),
        Cell::opt(r.granted_by, |u| Cell::text(user_text(u))),
        Cell::opt(approval, |a| Cell::text(&a.why)),
        Cell::opt(approval, |a| Cell::ms(a.deadline)),
        Cell::opt(decision, |d| Cell::text(user_text(d.approver))),
        Cell::opt(decision, |d| Cell::Bool(d.approved)),
        Cell::opt(decision, |d| Cell::ms(d.at)),
        Cell::opt(decision.and_then(|d| d.reason.as_deref()), Cell::text),
        Cell::opt(r.end_reason.as_deref(), Cell::text),
    ]
}

/// Decode a row selected as `seq` then `history_columns!`: its place and
/// record.
pub(crate) fn decode_record(c: &impl Cells) -> Result<(u64, HistoryRecord), Bad> {
    let seq = need(c.int(0, "seq")?, "seq")?;
    let seq = u64::try_from(seq).map_err(|_| ("seq", format!("`{seq}` is negative")))?;
    let request_id = need(request(c, 1, "request")?, "request")?;
    let kind = match need(c.text(2, "kind")?, "kind")? {
        "share" => RequestKind::Share,
        "revoke" => RequestKind::Revoke,
        other => return Err(("kind", format!("`{other}` is neither share nor revoke"))),
    };
    let entity = entity(c, 3)?;
    let user_id = need(user(c, 5, "user")?, "user")?;
    let context = context(c, 6)?;
    let level = level(c, 8)?;
    let duration = c.int(9, "duration_ms")?.map(chrono::Duration::milliseconds);
    let source = match (need(c.text(11, "source")?, "source")?, c.int(12, "rule")?) {
        ("api", _) => Source::Api,
        ("direct", _) => Source::Direct,
        ("automation", Some(rule)) => Source::Automation {
            rule: RuleId(
                u64::try_from(rule).map_err(|_| ("rule", format!("`{rule}` is negative")))?,
            ),
        },
        (other, rule) => return Err(("source", format!("`{other}` with rule {rule:?}"))),
    };
    let status = match need(c.text(13, "status")?, "status")? {
        "Processing" => RequestStatus::Processing,
        "Completed" => RequestStatus::Completed,
        "Failed" => RequestStatus::Failed {
            kind: c
                .text(14, "failure_kind")?
                .map_or(Ok(FailureKind::Unknown), str::parse)
                .map_err(|_| ("failure_kind", "not a failure kind".to_string()))?,
            reason: c.text(15, "reason")?.unwrap_or_default().to_string(),
        },
        other => return Err(("status", format!("`{other}` is not a status"))),
    };
    let grant = c
        .int(16, "grant_serial")?
        .map(|s| {
            u64::try_from(s)
                .map(|serial| GrantId {
                    user: user_id,
                    entity,
                    context,
                    serial,
                })
                .map_err(|_| ("grant_serial", format!("`{s}` is negative")))
        })
        .transpose()?;
    let end = time(c, 19, "end_ms")?;
    let by = request(c, 21, "ended_by")?;
    let (revoked, expired_at) = match (end, c.text(20, "end_cause")?) {
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
        request: request_id,
        kind,
        entity,
        user: user_id,
        context,
        level,
        duration,
        expires_at: time(c, 10, "expires_ms")?,
        source,
        status,
        grant,
        created_at: need(time(c, 17, "created_ms")?, "created_ms")?,
        completed_at: time(c, 18, "completed_ms")?,
        revoked,
        expired_at,
        idempotency_key: c.text(22, "idempotency_key")?.map(str::to_string),
        starts_at: time(c, 23, "starts_ms")?,
        granted_by: user(c, 24, "granted_by")?,
        approval: approval(c)?,
        end_reason: c.text(31, "end_reason")?.map(str::to_string),
    };
    Ok((seq, record))
}

/// The approval columns (25 to 31 of the row): none unless a deadline is
/// set; a decision when it was decided.
fn approval(c: &impl Cells) -> Result<Option<Approval>, Bad> {
    let Some(deadline) = time(c, 26, "approval_deadline_ms")? else {
        return Ok(None);
    };
    let why = need(c.text(25, "approval_why")?, "approval_why")?.to_string();
    let decision = match time(c, 29, "decided_ms")? {
        None => None,
        Some(at) => Some(Decision {
            approver: need(user(c, 27, "approver")?, "approver")?,
            approved: need(c.flag(28, "approved")?, "approved")?,
            at,
            reason: c.text(30, "decision_reason")?.map(str::to_string),
        }),
    };
    Ok(Some(Approval {
        why,
        deadline,
        decision,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_columns_and_their_types_agree() {
        assert_eq!(history_columns!("user").split(", ").count(), WRITTEN);
        let upsert = upsert("history", "user", &[]);
        // Every column but the key is replaced, once.
        for col in history_columns!("user").split(", ").skip(1) {
            assert_eq!(upsert.matches(&format!(" {col} = ")).count(), 1, "{col}");
        }
    }
}
