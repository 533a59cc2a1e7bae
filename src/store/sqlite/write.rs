//! Writes: one batch's changes and its meta, each change to the table it
//! belongs to, in the batch's transaction.

use rusqlite::{params, Transaction};
use uuid::Uuid;

use super::codec::{entity_value, grant_crc, i64_of, level_name};
use super::{history, io};
use crate::clock::to_millis;
use crate::model::grant::Grant;
use crate::model::history::RuleId;
use crate::model::rule::Rule;
use crate::store::{Batch, Change, EndCause, StoreError};

const PUT_GRANT: &str = "INSERT OR REPLACE INTO grants (serial, user, entity_kind, entity_id, context_kind, context_id, level, expires_ms, crc, starts_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)";
const END_GRANT: &str = "DELETE FROM grants WHERE serial = ?1";
const PUT_RULE: &str = "INSERT OR REPLACE INTO rules (id, rule) VALUES (?1, ?2)";
const REMOVE_RULE: &str = "DELETE FROM rules WHERE id = ?1";
const PUT_META: &str = "UPDATE meta SET value = CASE key WHEN 'last_seq' THEN ?1 WHEN 'next_serial' THEN max(value, ?2) ELSE max(value, ?3) END";

/// Write one change in the batch's transaction. Every kind of change is
/// handled here: a new kind is a compile error, never a silent no-op.
pub(super) fn write_change(tx: &Transaction<'_>, change: &Change) -> Result<(), StoreError> {
    let run = |sql: &str, values: &[&dyn rusqlite::ToSql]| {
        tx.prepare_cached(sql)
            .and_then(|mut s| s.execute(values))
            .map(|_| ())
            .map_err(io)
    };
    match change {
        Change::Put(g) => put_grant(tx, g),
        Change::End { grant, at, cause } => {
            let serial = &grant.serial;
            run(END_GRANT, &[&i64_of(*serial)])?;
            match cause {
                // Not recorded: readers compare `expires_ms` with their time.
                EndCause::Expired => Ok(()),
                EndCause::Revoked | EndCause::Replaced => {
                    history::end_record(tx, *serial, *at, *cause)
                }
            }
        }
        Change::EndedBy { serial, request } => history::ended_by(tx, *serial, request),
        Change::Record(record) => history::put_record(tx, record),
        Change::Forget(request) => history::forget(tx, request),
        Change::Rule { id, rule } => put_rule(tx, *id, rule),
        Change::RemoveRule(id) => run(REMOVE_RULE, &[&i64_of(id.0)]),
    }
}

/// Record the batch's sequence number and high-water marks.
pub(super) fn write_meta(tx: &Transaction<'_>, batch: &Batch<'_>) -> Result<(), StoreError> {
    tx.prepare_cached(PUT_META)
        .and_then(|mut s| {
            s.execute(params![
                i64_of(batch.seq),
                i64_of(batch.next_serial),
                i64_of(to_millis(batch.clock))
            ])
        })
        .map(|_| ())
        .map_err(io)
}

fn put_grant(tx: &Transaction<'_>, g: &Grant) -> Result<(), StoreError> {
    let (kind, ctx) = g.id.context.pack();
    // Encoded on the stack: batches of thousands of rows allocate nothing
    // per row.
    let mut user_buf = Uuid::encode_buffer();
    let user = g.id.user.0.hyphenated().encode_lower(&mut user_buf);
    let mut ctx_buf = Uuid::encode_buffer();
    let ctx_id =
        (kind != 0).then(|| &*Uuid::from_u128(ctx).hyphenated().encode_lower(&mut ctx_buf));
    tx.prepare_cached(PUT_GRANT)
        .and_then(|mut s| {
            s.execute(params![
                i64_of(g.id.serial),
                &*user,
                g.id.entity.kind.code(),
                entity_value(&g.id.entity.id),
                kind,
                ctx_id,
                level_name(g.level),
                i64_of(to_millis(g.expires_at)),
                i64::from(grant_crc(g)),
                g.starts_at.map(|t| i64_of(to_millis(t))),
            ])
        })
        .map(|_| ())
        .map_err(io)
}

fn put_rule(tx: &Transaction<'_>, id: RuleId, rule: &Rule) -> Result<(), StoreError> {
    let json =
        serde_json::to_string(rule).map_err(|e| StoreError::Io(format!("encoding a rule: {e}")))?;
    tx.prepare_cached(PUT_RULE)
        .and_then(|mut s| s.execute(params![i64_of(id.0), json]))
        .map(|_| ())
        .map_err(io)
}
