//! A grant row read back through [`Cells`](super::Cells): PostgreSQL's
//! decoder. SQLite keeps a decoder of its own on its restart path (see
//! `sqlite/codec.rs`: through these helpers a restart of 1M grants was
//! about 30% slower), and each store binds a grant's values its own way
//! (SQLite without allocating, PostgreSQL as arrays).

use super::{context, entity, level, need, user, Bad, Cells};
use crate::clock::{from_millis, max_millis};
use crate::ids::GrantId;
use crate::model::grant::Grant;

/// Decode a grant from a row whose columns are `serial`, the user,
/// `entity_kind`, `entity_id`, `context_kind`, `context_id`, `level` and
/// `expires_ms`, in this order, and `starts_ms` at `starts`.
pub(crate) fn decode_grant(c: &impl Cells, starts: usize) -> Result<Grant, Bad> {
    let serial = need(c.int(0, "serial")?, "serial")?;
    let serial = u64::try_from(serial).map_err(|_| ("serial", "negative".to_string()))?;
    let instant = |i: usize, col: &'static str| -> Result<Option<u64>, Bad> {
        c.int(i, col)?
            .map(|ms| {
                u64::try_from(ms)
                    .ok()
                    .filter(|ms| *ms <= max_millis())
                    .ok_or((col, format!("`{ms}` out of range")))
            })
            .transpose()
    };
    Ok(Grant {
        id: GrantId {
            user: need(user(c, 1, "user")?, "user")?,
            entity: entity(c, 2)?,
            context: context(c, 4)?,
            serial,
        },
        level: level(c, 6)?,
        expires_at: from_millis(need(instant(7, "expires_ms")?, "expires_ms")?),
        starts_at: instant(starts, "starts_ms")?.map(from_millis),
    })
}
