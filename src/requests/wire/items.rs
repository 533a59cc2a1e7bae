//! One item of a share or revoke batch, decoded field by field: each
//! error names the item, the field as the wire spells it, and the reason.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::{
    kind_of, ItemError, Limits, RevokeItem, ShareItem, CONTEXT_ACTIVITY, ENTITY_LEAD,
    ENTITY_OPPORTUNITY, ENTITY_TYPE_USER, MAX_DURATION_MINUTES,
};
use crate::ids::{quoted, Context, EntityId, EntityKind, EntityRef, Level, UserId};

/// Reads the fields of one item, recording the first error.
struct Fields<'a> {
    index: usize,
    map: &'a Map<String, Value>,
}

impl<'a> Fields<'a> {
    fn err(&self, field: &str, reason: impl Into<String>) -> ItemError {
        ItemError {
            index: self.index,
            field: field.to_string(),
            reason: reason.into(),
        }
    }

    fn get(&self, field: &str) -> Option<&'a Value> {
        self.map.get(field).filter(|v| !v.is_null())
    }

    fn required(&self, field: &str) -> Result<&'a Value, ItemError> {
        self.get(field)
            .ok_or_else(|| self.err(field, "is required"))
    }

    fn int(&self, field: &str, v: &Value) -> Result<i64, ItemError> {
        match v {
            Value::Number(n) => n
                .as_i64()
                .ok_or_else(|| self.err(field, format!("`{n}` is not a whole number in range"))),
            other => Err(self.err(
                field,
                format!("must be a whole number, not {}", kind_of(other)),
            )),
        }
    }

    fn uuid(&self, field: &str, v: &Value) -> Result<Uuid, ItemError> {
        match v {
            Value::String(s) if s.trim().is_empty() => Err(self.err(field, "is empty")),
            Value::String(s) => Uuid::parse_str(s)
                .map_err(|_| self.err(field, format!("`{}` is not a UUID", quoted(s)))),
            other => Err(self.err(
                field,
                format!("must be a UUID string, not {}", kind_of(other)),
            )),
        }
    }

    fn code(&self, field: &str, allowed: &[(i64, &str)]) -> Result<i64, ItemError> {
        let v = self.required(field)?;
        let code = self.int(field, v)?;
        if allowed.iter().any(|(c, _)| *c == code) {
            return Ok(code);
        }
        let expected: Vec<String> = allowed.iter().map(|(c, n)| format!("{c} ({n})")).collect();
        Err(self.err(
            field,
            format!("unknown code `{code}`: expected {}", expected.join(" or ")),
        ))
    }

    fn only(&self, known: &[&str]) -> Result<(), ItemError> {
        match self.map.keys().find(|k| !known.contains(&k.as_str())) {
            Some(k) => Err(self.err(
                k,
                format!(
                    "is not a field of this request (fields: {})",
                    known.join(", ")
                ),
            )),
            None => Ok(()),
        }
    }

    fn entity(&self) -> Result<EntityId, ItemError> {
        let code = self.code(
            "Entity",
            &[(ENTITY_LEAD, "lead"), (ENTITY_OPPORTUNITY, "opportunity")],
        )?;
        self.code("EntityType", &[(ENTITY_TYPE_USER, "user")])?;
        let kind = if code == ENTITY_LEAD {
            EntityKind::LEAD
        } else {
            EntityKind::OPPORTUNITY
        };
        let field = "EntityId";
        let id = match self.required(field)? {
            Value::Number(n) => n
                .as_u64()
                .map(EntityRef::Number)
                .ok_or_else(|| self.err(field, format!("`{n}` is not a record number")))?,
            Value::String(s) => {
                if s.is_empty() {
                    return Err(self.err(field, "is empty"));
                }
                // The shape is decided by the text's form (`EntityRef`'s
                // `FromStr`): a 32-digit GUID is never read as a number.
                s.parse::<EntityRef>()
                    .map_err(|e| self.err(field, e.reason().to_string()))?
            }
            other => {
                return Err(self.err(
                    field,
                    format!("must be a string or a number, not {}", kind_of(other)),
                ))
            }
        };
        Ok(EntityId::new(kind, id))
    }

    fn context(&self, entity: &EntityId) -> Result<Context, ItemError> {
        let (kind, id) = (self.get("ContextEntity"), self.get("ContextEntityId"));
        if kind.is_none() && id.is_none() && entity.kind == EntityKind::OPPORTUNITY {
            return Ok(Context::Direct);
        }
        self.code("ContextEntity", &[(CONTEXT_ACTIVITY, "activity")])?;
        let id = self.uuid("ContextEntityId", self.required("ContextEntityId")?)?;
        Ok(Context::Activity(id))
    }

    fn level(&self, default: Option<Level>) -> Result<Level, ItemError> {
        if self.get("AccessType").is_none() {
            if let Some(level) = default {
                return Ok(level);
            }
        }
        match self.code("AccessType", &[(1, "read"), (2, "write")])? {
            1 => Ok(Level::Read),
            _ => Ok(Level::Edit),
        }
    }
}

const SHARE_FIELDS: &[&str] = &[
    "UserId",
    "Entity",
    "EntityType",
    "EntityId",
    "ContextEntity",
    "ContextEntityId",
    "AccessType",
    "DurationInMinutes",
    "StartsAt",
    "StartsInMinutes",
    "IdempotencyKey",
];

/// The share fields without a duration or a start.
const REVOKE_FIELDS: &[&str] = &[
    "UserId",
    "Entity",
    "EntityType",
    "EntityId",
    "ContextEntity",
    "ContextEntityId",
    "AccessType",
    "IdempotencyKey",
];

/// The longest `IdempotencyKey`, in bytes.
pub const MAX_KEY_BYTES: usize = 200;

/// An idempotency key as the API takes it: 1 to [`MAX_KEY_BYTES`] bytes of
/// visible ASCII, so that it can travel in a header and a log line alike.
///
/// ```
/// use grantwheel::requests::wire::check_key;
/// assert!(check_key("crm-7f3a/share-12").is_ok());
/// assert!(check_key("").is_err());
/// assert!(check_key("a b").is_err());
/// ```
///
/// # Errors
///
/// Why not, in words.
pub fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(format!("must be 1 to {MAX_KEY_BYTES} bytes"));
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("must be visible ASCII characters (no spaces)".into());
    }
    Ok(())
}

/// The item's `IdempotencyKey`, checked.
fn item_key(f: &Fields<'_>) -> Result<(), ItemError> {
    match f.get("IdempotencyKey") {
        None => Ok(()),
        Some(Value::String(k)) => check_key(k).map_err(|why| f.err("IdempotencyKey", why)),
        Some(other) => Err(f.err(
            "IdempotencyKey",
            format!("must be a string, not {}", kind_of(other)),
        )),
    }
}

/// The fields of item `index`, which must be an object holding only `known`
/// fields, and the (user, entity, context) it names.
fn item_target<'a>(
    index: usize,
    v: &'a Value,
    known: &[&str],
) -> Result<(Fields<'a>, UserId, EntityId, Context), ItemError> {
    let Value::Object(map) = v else {
        return Err(ItemError {
            index,
            field: "item".to_string(),
            reason: format!("must be an object, not {}", kind_of(v)),
        });
    };
    let f = Fields { index, map };
    f.only(known)?;
    item_key(&f)?;
    let user = UserId(f.uuid("UserId", f.required("UserId")?)?);
    let entity = f.entity()?;
    let context = f.context(&entity)?;
    Ok((f, user, entity, context))
}

pub(super) fn share_item(index: usize, v: &Value, limits: &Limits) -> Result<ShareItem, ItemError> {
    let (f, user, entity, context) = item_target(index, v, SHARE_FIELDS)?;
    let level = f.level(None)?;
    let duration_minutes = match f.get("DurationInMinutes") {
        None => None,
        Some(v) => {
            let m = f.int("DurationInMinutes", v)?;
            if m <= 0 {
                return Err(f.err(
                    "DurationInMinutes",
                    format!("`{m}` is not a positive number of minutes"),
                ));
            }
            if m > MAX_DURATION_MINUTES {
                return Err(f.err(
                    "DurationInMinutes",
                    format!("`{m}` minutes is more than the limit of {MAX_DURATION_MINUTES}"),
                ));
            }
            if let Some(max) = limits.max_duration {
                if chrono::Duration::try_minutes(m).is_none_or(|d| d > max) {
                    return Err(f.err(
                        "DurationInMinutes",
                        format!(
                            "`{m}` minutes is more than the maximum of {} minutes",
                            max.num_minutes()
                        ),
                    ));
                }
            }
            Some(m)
        }
    };
    let (starts_at, starts_in_minutes) = item_start(&f)?;
    Ok(ShareItem {
        user,
        entity,
        context,
        level,
        duration_minutes,
        starts_at,
        starts_in_minutes,
    })
}

/// `StartsAt` or `StartsInMinutes`, at most one of them.
fn item_start(f: &Fields<'_>) -> Result<(Option<DateTime<Utc>>, Option<i64>), ItemError> {
    let at = match f.get("StartsAt") {
        None => None,
        Some(Value::String(s)) => Some(
            DateTime::parse_from_rfc3339(s)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| {
                    f.err(
                        "StartsAt",
                        format!(
                            "`{}` is not an RFC 3339 instant (2026-12-07T09:00:00Z): {e}",
                            quoted(s)
                        ),
                    )
                })?,
        ),
        Some(other) => {
            return Err(f.err(
                "StartsAt",
                format!("must be an RFC 3339 string, not {}", kind_of(other)),
            ))
        }
    };
    let field = "StartsInMinutes";
    let within = match f.get(field) {
        None => None,
        Some(_) if at.is_some() => {
            return Err(f.err(field, "give `StartsAt` or `StartsInMinutes`, not both"))
        }
        Some(v) => {
            let m = f.int(field, v)?;
            if m < 0 {
                return Err(f.err(field, format!("`{m}` is negative")));
            }
            if m > MAX_DURATION_MINUTES {
                return Err(f.err(
                    field,
                    format!("`{m}` minutes is more than the limit of {MAX_DURATION_MINUTES}"),
                ));
            }
            Some(m)
        }
    };
    Ok((at, within))
}

pub(super) fn revoke_item(index: usize, v: &Value) -> Result<RevokeItem, ItemError> {
    let (f, user, entity, context) = item_target(index, v, REVOKE_FIELDS)?;
    let level = f.level(Some(Level::Read))?;
    Ok(RevokeItem {
        user,
        entity,
        context,
        level,
    })
}
