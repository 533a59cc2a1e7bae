//! Rows in and out: a grant and a history record as columns, and back,
//! with every decoding error naming its column.

use chrono::{DateTime, Utc};
use postgres::types::ToSql;
use postgres::Row;
use uuid::Uuid;

use crate::clock::{from_millis, max_millis, to_millis};
use crate::ids::{Context, EntityId, EntityKind, EntityRef, GrantId, Level, UserId};
use crate::model::grant::Grant;
use crate::model::history::{
    Approval, Decision, EndedBy, FailureKind, HistoryRecord, RequestId, RequestKind, RequestStatus,
    RuleId, Source,
};
use crate::store::{failure_name, failure_of, StoreError};

/// The columns a grant is read from, in this order.
pub(super) const GRANT_COLUMNS: &str =
    "serial, user_id, entity_kind, entity_id, context_kind, context_id, level, expires_ms, starts_ms";

/// The columns a history record is read from, in this order.
pub(super) const HISTORY_COLUMNS: &str = "seq, request, kind, entity_kind, entity_id, user_id, context_kind, context_id, level, duration_ms, expires_ms, source, rule, status, failure_kind, reason, grant_serial, created_ms, completed_ms, end_ms, end_cause, ended_by, idempotency_key, starts_ms, granted_by, approval_why, approval_deadline_ms, approver, approved, decided_ms, decision_reason, end_reason";

pub(super) fn i64_of(v: u64) -> i64 {
    // Serials stay below 2^47 and instants below the latest representable
    // one (both far below 2^63).
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(super) fn user_text(u: UserId) -> String {
    u.0.hyphenated().to_string()
}

pub(super) fn entity_kind(e: &EntityId) -> i32 {
    i32::from(e.kind.code())
}

/// An entity id as text: a number in decimal, a UUID hyphenated (the
/// forms `EntityRef` prints and parses back).
pub(super) fn entity_text(e: &EntityId) -> String {
    e.id.to_string()
}

pub(super) fn context_kind(c: Context) -> i32 {
    // Context kinds stay below 2^16 + 4.
    i32::try_from(c.pack().0).unwrap_or(i32::MAX)
}

/// The `context_id` column: the context's UUID, `None` for a direct share.
pub(super) fn context_text(c: Context) -> Option<String> {
    let (kind, id) = c.pack();
    (kind != 0).then(|| Uuid::from_u128(id).hyphenated().to_string())
}

pub(super) fn level_name(level: Level) -> &'static str {
    match level {
        Level::Read => "read",
        Level::Edit => "edit",
    }
}

/// A grant's columns, in the order of [`GRANT_COLUMNS`].
pub(super) struct GrantValues {
    serial: i64,
    user: String,
    entity_kind: i32,
    entity_id: String,
    context_kind: i32,
    context_id: Option<String>,
    level: &'static str,
    expires_ms: i64,
    starts_ms: Option<i64>,
}

impl GrantValues {
    pub(super) fn of(g: &Grant) -> Self {
        GrantValues {
            serial: i64_of(g.id.serial),
            user: user_text(g.id.user),
            entity_kind: entity_kind(&g.id.entity),
            entity_id: entity_text(&g.id.entity),
            context_kind: context_kind(g.id.context),
            context_id: context_text(g.id.context),
            level: level_name(g.level),
            expires_ms: i64_of(to_millis(g.expires_at)),
            starts_ms: g.starts_at.map(|t| i64_of(to_millis(t))),
        }
    }

    pub(super) fn params(&self) -> [&(dyn ToSql + Sync); 9] {
        [
            &self.serial,
            &self.user,
            &self.entity_kind,
            &self.entity_id,
            &self.context_kind,
            &self.context_id,
            &self.level,
            &self.expires_ms,
            &self.starts_ms,
        ]
    }
}

/// A history record's columns, in the order of [`HISTORY_COLUMNS`] less
/// `seq` (which the database assigns).
pub(super) struct RecordValues {
    request: String,
    kind: &'static str,
    entity_kind: i32,
    entity_id: String,
    user: String,
    context_kind: i32,
    context_id: Option<String>,
    level: &'static str,
    duration_ms: Option<i64>,
    expires_ms: Option<i64>,
    source: &'static str,
    rule: Option<i64>,
    status: &'static str,
    failure_kind: Option<&'static str>,
    reason: Option<String>,
    grant_serial: Option<i64>,
    created_ms: i64,
    completed_ms: Option<i64>,
    end_ms: Option<i64>,
    end_cause: Option<&'static str>,
    ended_by: Option<String>,
    idempotency_key: Option<String>,
    starts_ms: Option<i64>,
    granted_by: Option<String>,
    approval_why: Option<String>,
    approval_deadline_ms: Option<i64>,
    approver: Option<String>,
    approved: Option<bool>,
    decided_ms: Option<i64>,
    decision_reason: Option<String>,
    end_reason: Option<String>,
}

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

impl RecordValues {
    pub(super) fn of(r: &HistoryRecord) -> Self {
        let (source, rule) = match r.source {
            Source::Api => ("api", None),
            Source::Automation { rule } => ("automation", Some(i64_of(rule.0))),
            Source::Direct => ("direct", None),
        };
        let (failure_kind, reason) = match &r.status {
            RequestStatus::Failed { kind, reason } => {
                (Some(failure_name(*kind)), Some(reason.clone()))
            }
            _ => (None, None),
        };
        let (end_ms, end_cause, ended_by) = match (r.revoked, r.expired_at) {
            (Some((t, by)), _) => {
                let (cause, by) = match by {
                    EndedBy::Request(id) => ("revoked", Some(id.to_string())),
                    EndedBy::Engine => ("revoked", None),
                    EndedBy::Replaced => ("replaced", None),
                };
                (Some(ms(t)), Some(cause), by)
            }
            (None, Some(t)) => (Some(ms(t)), Some("expired"), None),
            (None, None) => (None, None, None),
        };
        let approval = r.approval.as_ref();
        let decision = approval.and_then(|a| a.decision.as_ref());
        RecordValues {
            request: r.request.to_string(),
            kind: match r.kind {
                RequestKind::Share => "share",
                RequestKind::Revoke => "revoke",
            },
            entity_kind: entity_kind(&r.entity),
            entity_id: entity_text(&r.entity),
            user: user_text(r.user),
            context_kind: context_kind(r.context),
            context_id: context_text(r.context),
            level: level_name(r.level),
            duration_ms: r.duration.map(|d| d.num_milliseconds()),
            expires_ms: r.expires_at.map(ms),
            source,
            rule,
            status: r.status.name(),
            failure_kind,
            reason,
            grant_serial: r.grant.map(|g| i64_of(g.serial)),
            created_ms: ms(r.created_at),
            completed_ms: r.completed_at.map(ms),
            end_ms,
            end_cause,
            ended_by,
            idempotency_key: r.idempotency_key.clone(),
            starts_ms: r.starts_at.map(ms),
            granted_by: r.granted_by.map(user_text),
            approval_why: approval.map(|a| a.why.clone()),
            approval_deadline_ms: approval.map(|a| ms(a.deadline)),
            approver: decision.map(|d| user_text(d.approver)),
            approved: decision.map(|d| d.approved),
            decided_ms: decision.map(|d| ms(d.at)),
            decision_reason: decision.and_then(|d| d.reason.clone()),
            end_reason: r.end_reason.clone(),
        }
    }

    pub(super) fn params(&self) -> [&(dyn ToSql + Sync); 31] {
        [
            &self.request,
            &self.kind,
            &self.entity_kind,
            &self.entity_id,
            &self.user,
            &self.context_kind,
            &self.context_id,
            &self.level,
            &self.duration_ms,
            &self.expires_ms,
            &self.source,
            &self.rule,
            &self.status,
            &self.failure_kind,
            &self.reason,
            &self.grant_serial,
            &self.created_ms,
            &self.completed_ms,
            &self.end_ms,
            &self.end_cause,
            &self.ended_by,
            &self.idempotency_key,
            &self.starts_ms,
            &self.granted_by,
            &self.approval_why,
            &self.approval_deadline_ms,
            &self.approver,
            &self.approved,
            &self.decided_ms,
            &self.decision_reason,
            &self.end_reason,
        ]
    }
}

type Bad = (&'static str, String);

/// Reads typed columns of one row; every error names the column.
struct Cols<'r> {
    row: &'r Row,
}

impl<'r> Cols<'r> {
    fn get<T: postgres::types::FromSql<'r>>(&self, i: usize, col: &'static str) -> Result<T, Bad> {
        self.row.try_get(i).map_err(|e| (col, e.to_string()))
    }

    fn need<T>(v: Option<T>, col: &'static str) -> Result<T, Bad> {
        v.ok_or((col, "missing".to_string()))
    }

    fn time(&self, i: usize, col: &'static str) -> Result<Option<DateTime<Utc>>, Bad> {
        self.get::<Option<i64>>(i, col)?
            .map(|ms| {
                DateTime::<Utc>::from_timestamp_millis(ms)
                    .ok_or((col, format!("`{ms}` out of range")))
            })
            .transpose()
    }

    fn request(&self, i: usize, col: &'static str) -> Result<Option<RequestId>, Bad> {
        self.get::<Option<&str>>(i, col)?
            .map(|t| {
                t.parse()
                    .map_err(|e: crate::model::history::BadRequestId| (col, e.to_string()))
            })
            .transpose()
    }

    fn user_opt(&self, i: usize, col: &'static str) -> Result<Option<UserId>, Bad> {
        self.get::<Option<&str>>(i, col)?
            .map(|t| t.parse().map_err(|e| (col, format!("`{t}`: {e}"))))
            .transpose()
    }

    /// The approval columns (24 to 30): none unless a deadline is set; a
    /// decision when it was decided.
    fn approval(&self) -> Result<Option<Approval>, Bad> {
        let Some(deadline) = self.time(26, "approval_deadline_ms")? else {
            return Ok(None);
        };
        let why = Self::need(
            self.get::<Option<String>>(25, "approval_why")?,
            "approval_why",
        )?;
        let decision = match self.time(29, "decided_ms")? {
            None => None,
            Some(at) => Some(Decision {
                approver: Self::need(self.user_opt(27, "approver")?, "approver")?,
                approved: Self::need(self.get::<Option<bool>>(28, "approved")?, "approved")?,
                at,
                reason: self.get::<Option<String>>(30, "decision_reason")?,
            }),
        };
        Ok(Some(Approval {
            why,
            deadline,
            decision,
        }))
    }

    fn user(&self, i: usize) -> Result<UserId, Bad> {
        let text: &str = self.get(i, "user_id")?;
        text.parse()
            .map_err(|e| ("user_id", format!("`{text}`: {e}")))
    }

    fn entity(&self, i: usize) -> Result<EntityId, Bad> {
        let kind: i32 = self.get(i, "entity_kind")?;
        let kind =
            u16::try_from(kind).map_err(|_| ("entity_kind", format!("`{kind}` out of range")))?;
        let id: &str = self.get(i + 1, "entity_id")?;
        let id = id
            .parse::<EntityRef>()
            .map_err(|e| ("entity_id", e.reason().to_string()))?;
        Ok(EntityId::new(EntityKind::custom(kind), id))
    }

    fn context(&self, i: usize) -> Result<Context, Bad> {
        let kind: i32 = self.get(i, "context_kind")?;
        let id: Option<&str> = self.get(i + 1, "context_id")?;
        match (kind, id) {
            (0, None) => Ok(Context::Direct),
            (k, Some(id)) if (1..=i32::from(u16::MAX) + 3).contains(&k) => {
                let id: Uuid = id
                    .parse()
                    .map_err(|e| ("context_id", format!("`{id}`: {e}")))?;
                let k = u32::try_from(k).map_err(|_| ("context_kind", k.to_string()))?;
                Ok(Context::unpack(k, id.as_u128()))
            }
            (k, id) => Err((
                "context_kind",
                format!("kind `{k}` with id {id:?} is not a context"),
            )),
        }
    }

    fn level(&self, i: usize) -> Result<Level, Bad> {
        match self.get::<&str>(i, "level")? {
            "read" => Ok(Level::Read),
            "edit" => Ok(Level::Edit),
            other => Err(("level", format!("`{other}` is neither read nor edit"))),
        }
    }
}

/// Decode a row selected as [`GRANT_COLUMNS`].
pub(super) fn decode_grant(row: &Row) -> Result<Grant, StoreError> {
    let c = Cols { row };
    let serial: i64 = row.try_get(0).unwrap_or(-1);
    let grant = || -> Result<Grant, Bad> {
        let serial = u64::try_from(c.get::<i64>(0, "serial")?)
            .map_err(|_| ("serial", "negative".to_string()))?;
        let expires: i64 = c.get(7, "expires_ms")?;
        let expires = u64::try_from(expires)
            .ok()
            .filter(|ms| *ms <= max_millis())
            .ok_or(("expires_ms", format!("`{expires}` out of range")))?;
        let starts = c
            .get::<Option<i64>>(8, "starts_ms")?
            .map(|ms| {
                u64::try_from(ms)
                    .ok()
                    .filter(|ms| *ms <= max_millis())
                    .ok_or(("starts_ms", format!("`{ms}` out of range")))
            })
            .transpose()?;
        Ok(Grant {
            id: GrantId {
                user: c.user(1)?,
                entity: c.entity(2)?,
                context: c.context(4)?,
                serial,
            },
            level: c.level(6)?,
            expires_at: from_millis(expires),
            starts_at: starts.map(from_millis),
        })
    };
    grant().map_err(|(col, reason)| StoreError::Corrupt {
        what: format!("grantwheel_grants row with serial {serial}"),
        reason: format!("{col}: {reason}"),
    })
}

/// Decode a row selected as [`HISTORY_COLUMNS`]: its place and record.
pub(super) fn decode_record(row: &Row) -> Result<(u64, HistoryRecord), StoreError> {
    let c = Cols { row };
    let record = || -> Result<(u64, HistoryRecord), Bad> {
        let seq: i64 = c.get(0, "seq")?;
        let seq = u64::try_from(seq).map_err(|_| ("seq", format!("`{seq}` is negative")))?;
        let request = Cols::need(c.request(1, "request")?, "request")?;
        let kind = match c.get::<&str>(2, "kind")? {
            "share" => RequestKind::Share,
            "revoke" => RequestKind::Revoke,
            other => return Err(("kind", format!("`{other}` is neither share nor revoke"))),
        };
        let entity = c.entity(3)?;
        let user = c.user(5)?;
        let context = c.context(6)?;
        let level = c.level(8)?;
        let duration = c
            .get::<Option<i64>>(9, "duration_ms")?
            .map(chrono::Duration::milliseconds);
        let source = match (
            c.get::<&str>(11, "source")?,
            c.get::<Option<i64>>(12, "rule")?,
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
        let status = match c.get::<&str>(13, "status")? {
            "Processing" => RequestStatus::Processing,
            "Completed" => RequestStatus::Completed,
            "Failed" => RequestStatus::Failed {
                kind: c
                    .get::<Option<&str>>(14, "failure_kind")?
                    .map_or(Some(FailureKind::Unknown), failure_of)
                    .ok_or(("failure_kind", "not a failure kind".to_string()))?,
                reason: c.get::<Option<String>>(15, "reason")?.unwrap_or_default(),
            },
            other => return Err(("status", format!("`{other}` is not a status"))),
        };
        let grant = c
            .get::<Option<i64>>(16, "grant_serial")?
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
        let end = c.time(19, "end_ms")?;
        let by = c.request(21, "ended_by")?;
        let (revoked, expired_at) = match (end, c.get::<Option<&str>>(20, "end_cause")?) {
            (None, _) => (None, None),
            (Some(t), Some("expired")) => (None, Some(t)),
            (Some(t), Some("replaced")) => (Some((t, EndedBy::Replaced)), None),
            (Some(t), Some("revoked")) => (
                Some((t, by.map_or(EndedBy::Engine, EndedBy::Request))),
                None,
            ),
            (Some(_), cause) => return Err(("end_cause", format!("{cause:?} is not a cause"))),
        };
        Ok((
            seq,
            HistoryRecord {
                request,
                kind,
                entity,
                user,
                context,
                level,
                duration,
                expires_at: c.time(10, "expires_ms")?,
                source,
                status,
                grant,
                created_at: Cols::need(c.time(17, "created_ms")?, "created_ms")?,
                completed_at: c.time(18, "completed_ms")?,
                revoked,
                expired_at,
                idempotency_key: c.get::<Option<String>>(22, "idempotency_key")?,
                starts_at: c.time(23, "starts_ms")?,
                granted_by: c.user_opt(24, "granted_by")?,
                approval: c.approval()?,
                end_reason: c.get::<Option<String>>(31, "end_reason")?,
            },
        ))
    };
    record().map_err(|(col, reason)| {
        let request: String = row.try_get(1).unwrap_or_else(|_| "?".into());
        StoreError::Corrupt {
            what: format!("grantwheel_history row `{request}`"),
            reason: format!("{col}: {reason}"),
        }
    })
}

/// One column struct of arrays beside a values struct: many rows bound
/// to one `INSERT ... SELECT FROM UNNEST(...)` statement.
macro_rules! columns {
    ($name:ident of $values:ident { $($f:ident: $t:ty),* $(,)? }) => {
        /// Rows as one array per column, in the order of the values.
        #[derive(Default)]
        pub(super) struct $name {
            $($f: Vec<$t>,)*
        }

        impl $name {
            pub(super) fn push(&mut self, v: $values) {
                $(self.$f.push(v.$f);)*
            }

            pub(super) fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
                vec![$(&self.$f),*]
            }
        }
    };
}

columns!(GrantColumns of GrantValues {
    serial: i64,
    user: String,
    entity_kind: i32,
    entity_id: String,
    context_kind: i32,
    context_id: Option<String>,
    level: &'static str,
    expires_ms: i64,
    starts_ms: Option<i64>,
});

columns!(RecordColumns of RecordValues {
    request: String,
    kind: &'static str,
    entity_kind: i32,
    entity_id: String,
    user: String,
    context_kind: i32,
    context_id: Option<String>,
    level: &'static str,
    duration_ms: Option<i64>,
    expires_ms: Option<i64>,
    source: &'static str,
    rule: Option<i64>,
    status: &'static str,
    failure_kind: Option<&'static str>,
    reason: Option<String>,
    grant_serial: Option<i64>,
    created_ms: i64,
    completed_ms: Option<i64>,
    end_ms: Option<i64>,
    end_cause: Option<&'static str>,
    ended_by: Option<String>,
    idempotency_key: Option<String>,
    starts_ms: Option<i64>,
    granted_by: Option<String>,
    approval_why: Option<String>,
    approval_deadline_ms: Option<i64>,
    approver: Option<String>,
    approved: Option<bool>,
    decided_ms: Option<i64>,
    decision_reason: Option<String>,
    end_reason: Option<String>,
});
