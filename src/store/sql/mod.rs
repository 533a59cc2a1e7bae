//! What the two SQL stores share: how a history record becomes a row and
//! back ([`history`]), over a small vocabulary both speak: a row's values
//! as neutral [`Cell`]s each store binds its own way, the column types
//! ([`Ty`]) a store declares them with, and [`Cells`], a row read by
//! position. The stores keep their connections, locking, schemas and
//! migrations; the record's shape is written here once.

#[cfg(feature = "postgres")]
pub(crate) mod grants;
pub(crate) mod history;
pub(crate) mod queries;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::ids::{Context, EntityId, EntityKind, EntityRef, Level, UserId};
use crate::model::history::{BadRequestId, RequestId};

/// Why a column could not be read: the column and the reason.
pub(crate) type Bad = (&'static str, String);

/// A column's type, as the stores declare it (PostgreSQL binds by it).
#[cfg(feature = "postgres")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ty {
    /// A 32-bit integer (kinds of entities and contexts).
    Int4,
    /// A 64-bit integer (instants in milliseconds, serials, rule ids).
    Int8,
    /// Text.
    Text,
    /// A boolean (SQLite: 0 or 1).
    Bool,
    /// An entity id: a number or a UUID (SQLite keeps a number as an
    /// integer, PostgreSQL writes both as text).
    Entity,
}

/// One value of a row, before a store binds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Cell {
    /// SQL `NULL`.
    Null,
    /// An integer.
    Int(i64),
    /// Text.
    Text(String),
    /// A boolean.
    Bool(bool),
    /// An entity id.
    Entity(EntityRef),
}

impl Cell {
    fn text(s: impl Into<String>) -> Self {
        Cell::Text(s.into())
    }

    fn opt<T>(v: Option<T>, f: impl FnOnce(T) -> Cell) -> Self {
        v.map_or(Cell::Null, f)
    }

    fn ms(t: DateTime<Utc>) -> Self {
        Cell::Int(t.timestamp_millis())
    }
}

/// A row read by position; every error names the column.
pub(crate) trait Cells {
    /// An integer column (of either width); `None` for `NULL`.
    fn int(&self, i: usize, col: &'static str) -> Result<Option<i64>, Bad>;
    /// A text column, borrowed from the row; `None` for `NULL`.
    fn text(&self, i: usize, col: &'static str) -> Result<Option<&str>, Bad>;
    /// A boolean column; `None` for `NULL`.
    fn flag(&self, i: usize, col: &'static str) -> Result<Option<bool>, Bad>;
    /// An entity id column.
    fn entity_id(&self, i: usize, col: &'static str) -> Result<EntityRef, Bad>;
}

/// A value that must be there.
pub(crate) fn need<T>(v: Option<T>, col: &'static str) -> Result<T, Bad> {
    v.ok_or((col, "missing".to_string()))
}

/// An instant in milliseconds.
fn time(c: &impl Cells, i: usize, col: &'static str) -> Result<Option<DateTime<Utc>>, Bad> {
    c.int(i, col)?
        .map(|ms| {
            DateTime::<Utc>::from_timestamp_millis(ms).ok_or((col, format!("`{ms}` out of range")))
        })
        .transpose()
}

fn request(c: &impl Cells, i: usize, col: &'static str) -> Result<Option<RequestId>, Bad> {
    c.text(i, col)?
        .map(|t| t.parse().map_err(|e: BadRequestId| (col, e.to_string())))
        .transpose()
}

fn user(c: &impl Cells, i: usize, col: &'static str) -> Result<Option<UserId>, Bad> {
    c.text(i, col)?
        .map(|t| t.parse().map_err(|e| (col, format!("`{t}`: {e}"))))
        .transpose()
}

/// An entity from its kind at `i` and its id at `i + 1`.
fn entity(c: &impl Cells, i: usize) -> Result<EntityId, Bad> {
    let kind = need(c.int(i, "entity_kind")?, "entity_kind")?;
    let kind =
        u16::try_from(kind).map_err(|_| ("entity_kind", format!("`{kind}` out of range")))?;
    Ok(EntityId::new(
        EntityKind::custom(kind),
        c.entity_id(i + 1, "entity_id")?,
    ))
}

/// A context from its kind at `i` and its id at `i + 1`.
fn context(c: &impl Cells, i: usize) -> Result<Context, Bad> {
    let kind = need(c.int(i, "context_kind")?, "context_kind")?;
    match (kind, c.text(i + 1, "context_id")?) {
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

fn level(c: &impl Cells, i: usize) -> Result<Level, Bad> {
    match need(c.text(i, "level")?, "level")? {
        "read" => Ok(Level::Read),
        "edit" => Ok(Level::Edit),
        other => Err(("level", format!("`{other}` is neither read nor edit"))),
    }
}

/// The `level` column's word for a level.
pub(crate) fn level_name(level: Level) -> &'static str {
    match level {
        Level::Read => "read",
        Level::Edit => "edit",
    }
}

/// The `context_id` column of a context: its UUID as text, `None` for a
/// direct share.
pub(crate) fn context_id(ctx: Context) -> Option<String> {
    let (kind, id) = ctx.pack();
    (kind != 0).then(|| Uuid::from_u128(id).hyphenated().to_string())
}

/// A `u64` the store keeps as a signed integer. Serials stay below 2^47
/// and instants below the latest representable one (both far below 2^63).
pub(crate) fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A user id as the stores write it: hyphenated.
pub(crate) fn user_text(u: UserId) -> String {
    u.0.hyphenated().to_string()
}
