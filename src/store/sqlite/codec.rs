//! Rows in and out: how a grant, an entity, a context and a level become
//! column values and back, with the CRC that guards grant rows.

use rusqlite::types::{Value, ValueRef};
use rusqlite::Row;

use uuid::Uuid;

use crate::clock::{from_millis, max_millis, to_millis};
use crate::ids::{Context, EntityId, EntityKind, EntityRef, GrantId, Level, UserId};
use crate::model::grant::Grant;
use crate::store::sql::{Bad, Cell, Cells};

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

// Grant rows keep a decoder of their own here rather than the shared
// one in `sql::grants` (which PostgreSQL uses): a restart decodes every
// row on this path, and reading them through the shared helpers made a
// restart of 1M grants about 30% slower (378 ms against 482 to 537 ms in
// `cargo bench --bench durable -- restart`). The column rules are the
// same, and the store conformance suite holds both stores to them.

/// Why a grant row could not be read: its serial (-1 when unreadable)
/// and the column and reason.
pub(super) type DecodeError = (i64, String);

/// Reads the columns of one grant row (`SELECT serial, user, entity_kind,
/// entity_id, context_kind, context_id, level, expires_ms, crc,
/// starts_ms`); every error names the column.
struct GrantRow<'r, 's> {
    row: &'r Row<'s>,
    serial: i64,
}

impl GrantRow<'_, '_> {
    fn bad(&self, col: &str, why: impl std::fmt::Display) -> DecodeError {
        (self.serial, format!("{col}: {why}"))
    }

    fn int(&self, i: usize, col: &str) -> Result<i64, DecodeError> {
        self.row.get(i).map_err(|e| self.bad(col, e))
    }

    /// A text column, borrowed: loading is bound by per-row work.
    fn text(&self, i: usize, col: &str) -> Result<&str, DecodeError> {
        match self.row.get_ref(i).map_err(|e| self.bad(col, e))? {
            ValueRef::Text(t) => std::str::from_utf8(t).map_err(|e| self.bad(col, e)),
            other => Err(self.bad(col, format!("a {} where text belongs", other.data_type()))),
        }
    }

    fn user(&self) -> Result<UserId, DecodeError> {
        let user = self.text(1, "user")?;
        user.parse()
            .map_err(|e| self.bad("user", format!("`{user}`: {e}")))
    }

    fn entity(&self) -> Result<EntityId, DecodeError> {
        let kind = self.int(2, "entity_kind")?;
        let id = self.row.get_ref(3).map_err(|e| self.bad("entity_id", e))?;
        entity_from(kind, id).map_err(|(col, why)| self.bad(col, why))
    }

    fn context(&self) -> Result<Context, DecodeError> {
        let kind = self.int(4, "context_kind")?;
        let id = self.row.get_ref(5).map_err(|e| self.bad("context_id", e))?;
        context_from(kind, id).map_err(|(col, why)| self.bad(col, why))
    }

    fn level(&self) -> Result<Level, DecodeError> {
        match self.text(6, "level")? {
            "read" => Ok(Level::Read),
            "edit" => Ok(Level::Edit),
            other => Err(self.bad("level", format!("`{other}` is neither read nor edit"))),
        }
    }

    fn starts_ms(&self) -> Result<Option<u64>, DecodeError> {
        let start: Option<i64> = self.row.get(9).map_err(|e| self.bad("starts_ms", e))?;
        start
            .map(|ms| {
                u64::try_from(ms)
                    .ok()
                    .filter(|ms| *ms <= crate::clock::max_millis())
                    .ok_or_else(|| self.bad("starts_ms", format!("`{ms}` out of range")))
            })
            .transpose()
    }

    fn expires_ms(&self) -> Result<u64, DecodeError> {
        let expires = self.int(7, "expires_ms")?;
        u64::try_from(expires)
            .ok()
            .filter(|ms| *ms <= max_millis())
            .ok_or_else(|| self.bad("expires_ms", format!("`{expires}` out of range")))
    }
}

/// An entity from its two columns (`entity_kind`, `entity_id`); the error
/// names the column.
fn entity_from(kind: i64, id: ValueRef<'_>) -> Result<EntityId, Bad> {
    let kind =
        u16::try_from(kind).map_err(|_| ("entity_kind", format!("`{kind}` out of range")))?;
    Ok(EntityId::new(
        EntityKind::custom(kind),
        entity_ref_from(id)?,
    ))
}

/// A context from its two columns (`context_kind`, `context_id`); the
/// error names the column.
fn context_from(kind: i64, id: ValueRef<'_>) -> Result<Context, Bad> {
    let id = match id {
        ValueRef::Null => None,
        ValueRef::Text(t) => {
            Some(std::str::from_utf8(t).map_err(|e| ("context_id", e.to_string()))?)
        }
        other => {
            return Err((
                "context_id",
                format!("a {} where text belongs", other.data_type()),
            ))
        }
    };
    match (kind, id) {
        (0, None) => Ok(Context::Direct),
        (k, Some(id)) if (1..=i64::from(u16::MAX) + 3).contains(&k) => {
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

/// Decode one grant row and check its CRC; the error names the column.
pub(super) fn decode_grant(row: &Row<'_>) -> Result<Grant, DecodeError> {
    let serial: i64 = row.get(0).map_err(|e| (-1, format!("serial: {e}")))?;
    let r = GrantRow { row, serial };
    let serial = u64::try_from(serial).map_err(|_| r.bad("serial", "negative"))?;
    let grant = Grant {
        id: GrantId {
            user: r.user()?,
            entity: r.entity()?,
            context: r.context()?,
            serial,
        },
        level: r.level()?,
        expires_at: from_millis(r.expires_ms()?),
        starts_at: r.starts_ms()?.map(from_millis),
    };
    let crc = r.int(8, "crc")?;
    if crc != i64::from(grant_crc(&grant)) {
        return Err(r.bad("crc", "the row does not match its checksum (damaged)"));
    }
    Ok(grant)
}
