//! Rows in and out: how a grant, an entity, a context and a level become
//! column values and back, with the CRC that guards grant rows.

use rusqlite::types::{Value, ValueRef};
use rusqlite::Row;

use crate::clock::to_millis;
use crate::ids::{EntityRef, Level};
use crate::model::grant::Grant;
use crate::store::sql::{grants, need, Bad, Cell, Cells};

pub(super) fn entity_value(e: &EntityRef) -> Value {
    match e {
        EntityRef::Number(n) => match i64::try_from(*n) {
            Ok(n) => Value::Integer(n),
            Err(_) => Value::Text(n.to_string()),
        },
        EntityRef::Uuid(u) => Value::Text(u.hyphenated().to_string()),
    }
}

pub(super) use crate::store::sql::{context_id, i64_of, level_name};

/// A cell as SQLite keeps it: booleans as 0 or 1, entity ids that are
/// numbers as integers.
pub(super) fn value(cell: Cell) -> Value {
    match cell {
        Cell::Null => Value::Null,
        Cell::Int(n) => Value::Integer(n),
        Cell::Text(t) => Value::Text(t),
        Cell::Bool(b) => Value::Integer(i64::from(b)),
        Cell::Entity(e) => entity_value(&e),
    }
}

/// The CRC-32 of a grant's fields in a fixed binary form: a row whose
/// bytes were damaged on disk is refused instead of giving access it never
/// had.
pub(super) fn grant_crc(g: &Grant) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&g.id.serial.to_le_bytes());
    h.update(&g.id.user.as_u128().to_le_bytes());
    h.update(&g.id.entity.kind.code().to_le_bytes());
    match g.id.entity.id {
        EntityRef::Number(n) => {
            h.update(&[0]);
            h.update(&n.to_le_bytes());
        }
        EntityRef::Uuid(u) => {
            h.update(&[1]);
            h.update(&u.as_u128().to_le_bytes());
        }
    }
    let (kind, ctx) = g.id.context.pack();
    h.update(&kind.to_le_bytes());
    h.update(&ctx.to_le_bytes());
    h.update(&[u8::from(g.level == Level::Edit)]);
    h.update(&to_millis(g.expires_at).to_le_bytes());
    // Rows without a start hash as they did before starts existed.
    if let Some(start) = g.starts_at {
        h.update(&[2]);
        h.update(&to_millis(start).to_le_bytes());
    }
    h.finalize()
}

/// Why a grant row could not be read: its serial (-1 when unreadable)
/// and the column and reason.
pub(super) type DecodeError = (i64, String);

/// A row of either table, read by position; text is borrowed (loading
/// is bound by per-row work).
pub(super) struct SqliteRow<'r, 's>(pub(super) &'r Row<'s>);

impl SqliteRow<'_, '_> {
    fn get_ref(&self, i: usize, col: &'static str) -> Result<ValueRef<'_>, Bad> {
        self.0.get_ref(i).map_err(|e| (col, e.to_string()))
    }
}

impl Cells for SqliteRow<'_, '_> {
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

    fn flag(&self, i: usize, col: &'static str) -> Result<Option<bool>, Bad> {
        match self.int(i, col)? {
            None => Ok(None),
            Some(0) => Ok(Some(false)),
            Some(1) => Ok(Some(true)),
            Some(other) => Err((col, format!("`{other}` is neither 0 nor 1"))),
        }
    }

    fn entity_id(&self, i: usize, col: &'static str) -> Result<EntityRef, Bad> {
        entity_ref_from(self.get_ref(i, col)?)
    }
}

/// An entity id column: a number kept as an integer, or text (numbers
/// beyond `i64` and UUIDs, read by the one rule for entity ids,
/// `EntityRef`'s `FromStr`).
pub(super) fn entity_ref_from(id: ValueRef<'_>) -> Result<EntityRef, Bad> {
    match id {
        ValueRef::Integer(n) => {
            Ok(EntityRef::Number(u64::try_from(n).map_err(|_| {
                ("entity_id", format!("`{n}` is negative"))
            })?))
        }
        ValueRef::Text(t) => std::str::from_utf8(t)
            .map_err(|e| ("entity_id", e.to_string()))?
            .parse::<EntityRef>()
            .map_err(|e| ("entity_id", e.reason().to_string())),
        other => Err((
            "entity_id",
            format!("a {} is neither a number nor a UUID", other.data_type()),
        )),
    }
}

/// Decode one grant row and check its CRC; the error names the column.
pub(super) fn decode_grant(row: &Row<'_>) -> Result<Grant, DecodeError> {
    let serial: i64 = row.get(0).unwrap_or(-1);
    let bad = |(col, why): Bad| (serial, format!("{col}: {why}"));
    let r = SqliteRow(row);
    let grant = grants::decode_grant(&r, 9).map_err(bad)?;
    let crc = need(r.int(8, "crc").map_err(bad)?, "crc").map_err(bad)?;
    if crc != i64::from(grant_crc(&grant)) {
        return Err(bad((
            "crc",
            "the row does not match its checksum (damaged)".to_string(),
        )));
    }
    Ok(grant)
}
