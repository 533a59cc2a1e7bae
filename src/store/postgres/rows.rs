//! Rows in and out: a grant and a history record as columns, and back,
//! with every decoding error naming its column.

use postgres::types::{ToSql, Type};
use postgres::Row;

use crate::clock::to_millis;
use crate::ids::{Context, EntityId, EntityRef};
use crate::model::grant::Grant;
use crate::model::history::HistoryRecord;
use crate::store::sql::grants;
use crate::store::sql::history::{self, history_columns, record_cells, HISTORY_TYPES};
pub(super) use crate::store::sql::{context_id, i64_of, level_name, user_text};
use crate::store::sql::{Bad, Cell, Cells, Ty};
use crate::store::StoreError;

/// The columns a grant is read from, in this order.
pub(super) const GRANT_COLUMNS: &str =
    "serial, user_id, entity_kind, entity_id, context_kind, context_id, level, expires_ms, starts_ms";

/// The columns a history record is read from, in this order.
pub(super) const HISTORY_COLUMNS: &str = concat!("seq, ", history_columns!("user_id"));

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
            context_id: context_id(g.id.context),
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

/// Decode a row selected as [`GRANT_COLUMNS`].
pub(super) fn decode_grant(row: &Row) -> Result<Grant, StoreError> {
    grants::decode_grant(&PgRow(row), 8).map_err(|(col, reason)| {
        let serial: i64 = row.try_get(0).unwrap_or(-1);
        StoreError::Corrupt {
            what: format!("grantwheel_grants row with serial {serial}"),
            reason: format!("{col}: {reason}"),
        }
    })
}

/// A row of either table, read by position.
struct PgRow<'r>(&'r Row);

impl Cells for PgRow<'_> {
    fn int(&self, i: usize, col: &'static str) -> Result<Option<i64>, Bad> {
        // The kinds are `int`, the rest `bigint`: each read at its width.
        let narrow = self
            .0
            .columns()
            .get(i)
            .is_some_and(|c| *c.type_() == Type::INT4);
        if narrow {
            let v: Option<i32> = self.0.try_get(i).map_err(|e| (col, e.to_string()))?;
            Ok(v.map(i64::from))
        } else {
            self.0.try_get(i).map_err(|e| (col, e.to_string()))
        }
    }

    fn text(&self, i: usize, col: &'static str) -> Result<Option<&str>, Bad> {
        self.0.try_get(i).map_err(|e| (col, e.to_string()))
    }

    fn flag(&self, i: usize, col: &'static str) -> Result<Option<bool>, Bad> {
        self.0.try_get(i).map_err(|e| (col, e.to_string()))
    }

    fn entity_id(&self, i: usize, col: &'static str) -> Result<EntityRef, Bad> {
        let id: &str = self.0.try_get(i).map_err(|e| (col, e.to_string()))?;
        id.parse::<EntityRef>()
            .map_err(|e| (col, e.reason().to_string()))
    }
}

/// Decode a row selected as [`HISTORY_COLUMNS`]: its place and record.
pub(super) fn decode_record(row: &Row) -> Result<(u64, HistoryRecord), StoreError> {
    history::decode_record(&PgRow(row)).map_err(|(col, reason)| {
        let request: String = row.try_get(1).unwrap_or_else(|_| "?".into());
        StoreError::Corrupt {
            what: format!("grantwheel_history row `{request}`"),
            reason: format!("{col}: {reason}"),
        }
    })
}

/// A cell bound as a value of its column's type (a `NULL` is typed too).
pub(super) fn param(cell: Cell, ty: Ty) -> Param {
    match (cell, ty) {
        (Cell::Int(n), Ty::Int4) => Box::new(i32::try_from(n).unwrap_or(i32::MAX)),
        (Cell::Int(n), _) => Box::new(n),
        (Cell::Text(t), _) => Box::new(t),
        (Cell::Bool(b), _) => Box::new(b),
        (Cell::Entity(e), _) => Box::new(e.to_string()),
        (Cell::Null, Ty::Int4) => Box::new(None::<i32>),
        (Cell::Null, Ty::Int8) => Box::new(None::<i64>),
        (Cell::Null, Ty::Bool) => Box::new(None::<bool>),
        (Cell::Null, Ty::Text | Ty::Entity) => Box::new(None::<String>),
    }
}

/// One value bound to a statement.
pub(super) type Param = Box<dyn ToSql + Sync + Send>;

/// A record's values, bound one by one.
pub(super) fn record_params(r: &HistoryRecord) -> Vec<Param> {
    record_cells(r)
        .into_iter()
        .zip(HISTORY_TYPES)
        .map(|(cell, ty)| param(cell, ty))
        .collect()
}

/// The name of a type in SQL, for `UNNEST`'s casts.
pub(super) fn sql_type(ty: Ty) -> &'static str {
    match ty {
        Ty::Int4 => "int",
        Ty::Int8 => "bigint",
        Ty::Text | Ty::Entity => "text",
        Ty::Bool => "boolean",
    }
}

/// One array per column of the records bound to one `UNNEST` statement.
enum Array {
    Int4(Vec<Option<i32>>),
    Int8(Vec<Option<i64>>),
    Text(Vec<Option<String>>),
    Bool(Vec<Option<bool>>),
}

/// Records as one array per column, in the order of `history_columns!`.
pub(super) struct RecordColumns(Vec<Array>);

impl Default for RecordColumns {
    fn default() -> Self {
        RecordColumns(
            HISTORY_TYPES
                .iter()
                .map(|ty| match ty {
                    Ty::Int4 => Array::Int4(Vec::new()),
                    Ty::Int8 => Array::Int8(Vec::new()),
                    Ty::Text | Ty::Entity => Array::Text(Vec::new()),
                    Ty::Bool => Array::Bool(Vec::new()),
                })
                .collect(),
        )
    }
}

impl RecordColumns {
    pub(super) fn push(&mut self, r: &HistoryRecord) {
        for (array, cell) in self.0.iter_mut().zip(record_cells(r)) {
            match (array, cell) {
                (Array::Int4(a), Cell::Int(n)) => {
                    a.push(Some(i32::try_from(n).unwrap_or(i32::MAX)))
                }
                (Array::Int8(a), Cell::Int(n)) => a.push(Some(n)),
                (Array::Text(a), Cell::Text(t)) => a.push(Some(t)),
                (Array::Text(a), Cell::Entity(e)) => a.push(Some(e.to_string())),
                (Array::Bool(a), Cell::Bool(b)) => a.push(Some(b)),
                // `NULL`, or a cell of another type than its column's
                // (which `record_cells` never makes): `NULL` too.
                (Array::Int4(a), _) => a.push(None),
                (Array::Int8(a), _) => a.push(None),
                (Array::Text(a), _) => a.push(None),
                (Array::Bool(a), _) => a.push(None),
            }
        }
    }

    pub(super) fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.0
            .iter()
            .map(|a| -> &(dyn ToSql + Sync) {
                match a {
                    Array::Int4(v) => v,
                    Array::Int8(v) => v,
                    Array::Text(v) => v,
                    Array::Bool(v) => v,
                }
            })
            .collect()
    }
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
