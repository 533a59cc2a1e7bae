//! The share API's wire format: JSON batches of share and revoke items, and
//! the responses.
//!
//! Decoding is per item: a batch that is a JSON array yields one result per
//! item, so one bad item never stops the others. Each error names the item's
//! index, the field (as spelled on the wire) and the reason.
//!
//! | field | share | revoke | values |
//! |---|---|---|---|
//! | `UserId` | required | required | a UUID |
//! | `Entity` | required | required | 1 = lead, 5 = opportunity |
//! | `EntityType` | required | required | 3 = user |
//! | `EntityId` | required | required | a record number (no leading zero) as a string or a number, or a GUID (32 hex digits or hyphenated) |
//! | `ContextEntity` | required for leads | required for leads | 1 = activity |
//! | `ContextEntityId` | required for leads | required for leads | a UUID |
//! | `AccessType` | required | optional (1) | 1 = read, 2 = write |
//! | `DurationInMinutes` | optional (the engine's default) | not allowed | 1 or more, counted from the start |
//! | `StartsAt` | optional (at once) | not allowed | an RFC 3339 instant; one in the past means at once |
//! | `StartsInMinutes` | optional (at once) | not allowed | 0 or more; not with `StartsAt` |
//! | `IdempotencyKey` | optional | optional | 1 to 200 visible ASCII characters: an item sent again with its key is answered with its first request, not carried out twice |
//!
//! A revoke ends the grant its context gave, whatever `AccessType` it
//! names: a read revoke (1, the default) of an edit grant ends reading and
//! editing alike, since reading is part of editing; the history keeps the
//! access named.
//!
//! `StartsAt` and `StartsInMinutes` extend the seed's share item: a share
//! that starts later is held as a scheduled grant, and no check says yes
//! before its start. Bodies without them keep their meaning.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use crate::ids::{quoted, QUOTED_CHARS};

mod items;
mod status;
mod strict;

use crate::ids::{Context, EntityId, EntityKind, EntityRef, Level, UserId};
pub use items::{check_key, MAX_KEY_BYTES};
pub use status::{
    StatusMessage, StatusResponse, SHARE_STATUS_COMPLETED, SHARE_STATUS_FAILED,
    SHARE_STATUS_PROCESSING,
};
pub use strict::{strict_json, Batch};

/// Code of `Entity` for a lead.
pub const ENTITY_LEAD: i64 = 1;
/// Code of `Entity` for an opportunity.
pub const ENTITY_OPPORTUNITY: i64 = 5;
/// Code of `EntityType` for a user (the only grantee kind).
pub const ENTITY_TYPE_USER: i64 = 3;
/// Code of `ContextEntity` for an activity.
pub const CONTEXT_ACTIVITY: i64 = 1;
/// The longest `DurationInMinutes` the wire accepts (100 years); the
/// engine's maximum duration applies on top.
pub const MAX_DURATION_MINUTES: i64 = 100 * 366 * 24 * 60;
/// The most items one batch may hold.
pub const MAX_BATCH_ITEMS: usize = 100_000;

/// One share item, decoded and checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareItem {
    /// The user to share with.
    pub user: UserId,
    /// The record shared.
    pub entity: EntityId,
    /// Through what (`Direct` when an opportunity names no context).
    pub context: Context,
    /// Read or edit.
    pub level: Level,
    /// How long, in minutes; `None` means the engine's default.
    pub duration_minutes: Option<i64>,
    /// When the access begins (`StartsAt`); `None`: see `starts_in_minutes`.
    #[serde(default)]
    pub starts_at: Option<DateTime<Utc>>,
    /// In how many minutes the access begins (`StartsInMinutes`); with
    /// neither, at once.
    #[serde(default)]
    pub starts_in_minutes: Option<i64>,
}

/// One revoke item, decoded and checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokeItem {
    /// The user whose access is revoked.
    pub user: UserId,
    /// The record.
    pub entity: EntityId,
    /// The context whose grant is revoked; grants through other contexts stay.
    pub context: Context,
    /// The access named (`AccessType`, 1 when absent).
    pub level: Level,
}

/// Why one item of a batch was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("item {index}: `{field}`: {reason}")]
pub struct ItemError {
    /// The item's position in the batch (from 0).
    pub index: usize,
    /// The field, as spelled on the wire (`UserId`, `DurationInMinutes` ...).
    pub field: String,
    /// Why.
    pub reason: String,
}

/// Why a whole batch was refused (no item was looked at).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BatchError {
    /// The body is not JSON.
    #[error("the body is not JSON: {0}")]
    NotJson(String),
    /// The body is JSON but not an array of items.
    #[error("the body must be a JSON array of items, not {0}")]
    NotArray(&'static str),
    /// An object names a key twice.
    #[error("`{field}` appears twice in {at}: a field may be given once")]
    Duplicate {
        /// Where: `item 0`, `item 2, Fields`, `the body`.
        at: String,
        /// The key, as given (quoted at most in part).
        field: String,
    },
    /// The batch holds more items than allowed.
    #[error("the batch holds {count} items; at most {max} are allowed")]
    TooLarge {
        /// Items in the body.
        count: usize,
        /// The limit.
        max: usize,
    },
}

pub(super) fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The wire code of an entity kind: [`ENTITY_LEAD`], [`ENTITY_OPPORTUNITY`],
/// or a host kind's own code.
pub fn entity_code(kind: EntityKind) -> i64 {
    match kind {
        EntityKind::LEAD => ENTITY_LEAD,
        EntityKind::OPPORTUNITY => ENTITY_OPPORTUNITY,
        other => i64::from(other.code()),
    }
}

/// The entity kind of a wire code the API accepts (a lead or an
/// opportunity).
pub fn entity_kind(code: i64) -> Option<EntityKind> {
    match code {
        ENTITY_LEAD => Some(EntityKind::LEAD),
        ENTITY_OPPORTUNITY => Some(EntityKind::OPPORTUNITY),
        _ => None,
    }
}

/// An entity's id as the wire writes it: a number, or a hyphenated GUID.
pub fn entity_id_text(entity: &EntityId) -> String {
    match entity.id {
        EntityRef::Number(n) => n.to_string(),
        EntityRef::Uuid(u) => u.hyphenated().to_string(),
    }
}

/// Decode a share batch: one result per item, in order.
///
/// ```
/// use grantwheel::requests::wire::decode_shares;
/// let body = br#"[{"UserId":"0203f172-8642-11e7-9bed-069b743e848f","Entity":1,"EntityType":3,
///   "EntityId":"869196","ContextEntity":1,"ContextEntityId":"f2dbf1d5-bbab-418b-bddc-4c92ecdef214",
///   "AccessType":2,"DurationInMinutes":30}, {"UserId":"nope"}]"#;
/// let items = decode_shares(body).unwrap();
/// assert!(items[0].is_ok());
/// assert_eq!(items[1].as_ref().unwrap_err().field, "UserId");
/// ```
pub fn decode_shares(body: &[u8]) -> Result<Vec<Result<ShareItem, ItemError>>, BatchError> {
    decode_shares_within(body, &Limits::default())
}

/// The limits an engine sets on share items. Decoding checks them, so an
/// item the engine would refuse for a setting the host chose is refused in
/// the API's words (its index, its wire field, minutes) before any request
/// is made for it.
///
/// ```
/// use grantwheel::requests::wire::{decode_shares_within, Limits};
/// let limits = Limits { max_duration: Some(chrono::Duration::days(1)), ..Limits::default() };
/// let body = br#"[{"UserId":"0203f172-8642-11e7-9bed-069b743e848f","Entity":5,"EntityType":3,
///   "EntityId":"1","AccessType":1,"DurationInMinutes":1441}]"#;
/// let err = decode_shares_within(body, &limits).unwrap()[0].clone().unwrap_err();
/// assert_eq!(
///     err.to_string(),
///     "item 0: `DurationInMinutes`: `1441` minutes is more than the maximum of 1440 minutes"
/// );
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The longest duration the engine accepts; `None` when it accepts any
    /// (up to the wire's own [`MAX_DURATION_MINUTES`]) or clamps longer ones.
    pub max_duration: Option<chrono::Duration>,
    /// The most items one batch may hold (default [`MAX_BATCH_ITEMS`]).
    pub max_items: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_duration: None,
            max_items: MAX_BATCH_ITEMS,
        }
    }
}

/// [`decode_shares`], refusing items beyond the engine's `limits`.
pub fn decode_shares_within(
    body: &[u8],
    limits: &Limits,
) -> Result<Vec<Result<ShareItem, ItemError>>, BatchError> {
    Ok(Batch::parse(body, limits.max_items)?.shares(limits))
}

/// Decode a revoke batch: one result per item, in order.
pub fn decode_revokes(body: &[u8]) -> Result<Vec<Result<RevokeItem, ItemError>>, BatchError> {
    Ok(Batch::parse(body, MAX_BATCH_ITEMS)?.revokes())
}

fn entity_fields(
    map: &mut Map<String, Value>,
    user: &UserId,
    entity: &EntityId,
    context: &Context,
) {
    map.insert("UserId".into(), Value::String(user.to_string()));
    map.insert("Entity".into(), entity_code(entity.kind).into());
    map.insert("EntityType".into(), ENTITY_TYPE_USER.into());
    map.insert("EntityId".into(), Value::String(entity_id_text(entity)));
    if let Context::Activity(a) = context {
        map.insert("ContextEntity".into(), CONTEXT_ACTIVITY.into());
        map.insert(
            "ContextEntityId".into(),
            Value::String(a.hyphenated().to_string()),
        );
    }
}

fn access_code(level: Level) -> i64 {
    match level {
        Level::Read => 1,
        Level::Edit => 2,
    }
}

impl ShareItem {
    /// The item as the wire spells it (for clients and tests).
    pub fn to_wire(&self) -> Value {
        let mut map = Map::new();
        entity_fields(&mut map, &self.user, &self.entity, &self.context);
        map.insert("AccessType".into(), access_code(self.level).into());
        if let Some(m) = self.duration_minutes {
            map.insert("DurationInMinutes".into(), m.into());
        }
        if let Some(t) = self.starts_at {
            map.insert(
                "StartsAt".into(),
                Value::String(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
            );
        }
        if let Some(m) = self.starts_in_minutes {
            map.insert("StartsInMinutes".into(), m.into());
        }
        Value::Object(map)
    }
}

impl RevokeItem {
    /// The item as the wire spells it.
    pub fn to_wire(&self) -> Value {
        let mut map = Map::new();
        entity_fields(&mut map, &self.user, &self.entity, &self.context);
        map.insert("AccessType".into(), access_code(self.level).into());
        Value::Object(map)
    }
}

/// `Message` of a successful response: the request id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMessage {
    /// The request id (32 hex digits).
    #[serde(rename = "Id")]
    pub id: String,
}

/// The response to one share or revoke item, as the API answers it:
/// `{"Status":"Success","Message":{"Id":"..."}}`, or an error.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ItemResponse {
    /// Accepted: the request id.
    Success {
        /// Always `"Success"`.
        #[serde(rename = "Status")]
        status: String,
        /// The request id.
        #[serde(rename = "Message")]
        message: IdMessage,
    },
    /// Refused.
    Error {
        /// Always `"Error"`.
        #[serde(rename = "Status")]
        status: String,
        /// The kind of error (`InvalidInput`, `Failed` ...).
        #[serde(rename = "ExceptionType")]
        exception_type: String,
        /// What was wrong.
        #[serde(rename = "ExceptionMessage")]
        exception_message: String,
        /// The request id, when the item became a request that then failed
        /// (its status and history record can be looked up).
        #[serde(rename = "RequestId", default, skip_serializing_if = "Option::is_none")]
        request_id: Option<String>,
        /// What kind of failure ended the request, when the item became a
        /// request that failed (not on the wire: for a host to choose its
        /// answer's code).
        #[serde(skip)]
        failure: Option<crate::requests::FailureKind>,
    },
}

impl ItemResponse {
    /// A success with this request id.
    pub fn success(id: impl std::fmt::Display) -> Self {
        ItemResponse::Success {
            status: "Success".into(),
            message: IdMessage { id: id.to_string() },
        }
    }

    /// An error of this kind.
    pub fn error(kind: &str, message: impl std::fmt::Display) -> Self {
        ItemResponse::Error {
            status: "Error".into(),
            exception_type: kind.into(),
            exception_message: message.to_string(),
            request_id: None,
            failure: None,
        }
    }

    /// What kind of failure ended the item's request: `None` for a success
    /// and for an item that never became a request (it did not decode).
    ///
    /// ```
    /// use grantwheel::requests::{wire::ItemResponse, FailureKind};
    /// let r = ItemResponse::failed("98fe2984209c413c9b6b06a1b68111ff", FailureKind::Store, "item 0: disk full");
    /// assert_eq!(r.failure(), Some(FailureKind::Store));
    /// assert_eq!(ItemResponse::error("InvalidInput", "item 0: `UserId`: is required").failure(), None);
    /// ```
    pub fn failure(&self) -> Option<crate::requests::FailureKind> {
        match self {
            ItemResponse::Error { failure, .. } => *failure,
            ItemResponse::Success { .. } => None,
        }
    }

    /// A request that was made and failed. A repeat share refused reads
    /// `AlreadyShared`; every other failure `Failed`.
    pub fn failed(
        request: impl std::fmt::Display,
        kind: crate::requests::FailureKind,
        reason: impl std::fmt::Display,
    ) -> Self {
        let exception_type = match kind {
            crate::requests::FailureKind::AlreadyShared => "AlreadyShared",
            _ => "Failed",
        };
        ItemResponse::Error {
            status: "Error".into(),
            exception_type: exception_type.into(),
            exception_message: reason.to_string(),
            request_id: Some(request.to_string()),
            failure: Some(kind),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::strict::BOM;
    use super::*;
    use serde_json::json;

    /// The body of the seeds' Share API example, byte for byte.
    const SEED_SHARE: &str = r#"[
  {
    "UserId": "0203f172-8642-11e7-9bed-069b743e848f",
    "Entity": 1,
    "EntityType": 3,
    "EntityId": "869196",
    "ContextEntity": 1,
    "ContextEntityId": "f2dbf1d5-bbab-418b-bddc-4c92ecdef214",
    "AccessType": 2,
    "DurationInMinutes": 30
  }
]"#;

    /// The seeds' response example.
    const SEED_RESPONSE: &str = r#"{
  "Status": "Success",
  "Message": {
    "Id": "98fe2984209c413c9b6b06a1b68111ff"
  }
}"#;

    #[test]
    fn the_seed_share_body_decodes_and_encodes_back() {
        let items = decode_shares(SEED_SHARE.as_bytes()).unwrap();
        let item = items[0].clone().unwrap();
        assert_eq!(
            item,
            ShareItem {
                user: "0203f172-8642-11e7-9bed-069b743e848f".parse().unwrap(),
                entity: EntityId::lead(869196),
                context: Context::Activity("f2dbf1d5-bbab-418b-bddc-4c92ecdef214".parse().unwrap()),
                level: Level::Edit,
                duration_minutes: Some(30),
                starts_at: None,
                starts_in_minutes: None,
            }
        );
        let back = Value::Array(vec![item.to_wire()]);
        let seed: Value = serde_json::from_str(SEED_SHARE).unwrap();
        assert_eq!(back, seed);
    }

    #[test]
    fn the_seed_response_round_trips() {
        let r: ItemResponse = serde_json::from_str(SEED_RESPONSE).unwrap();
        assert_eq!(r, ItemResponse::success("98fe2984209c413c9b6b06a1b68111ff"));
        let v: Value = serde_json::to_value(&r).unwrap();
        assert_eq!(v, serde_json::from_str::<Value>(SEED_RESPONSE).unwrap());
    }

    fn seed_with(f: impl FnOnce(&mut Map<String, Value>)) -> Vec<u8> {
        let mut v: Value = serde_json::from_str(SEED_SHARE).unwrap();
        if let Value::Array(items) = &mut v {
            if let Some(Value::Object(m)) = items.get_mut(0) {
                f(m);
            }
        }
        serde_json::to_vec(&v).unwrap()
    }

    fn share_error(body: &[u8]) -> ItemError {
        decode_shares(body).unwrap()[0].clone().unwrap_err()
    }

    #[test]
    fn each_bad_field_is_named() {
        // (field, new value or `None` to remove it); the error names the field.
        let cases: Vec<(&str, Option<Value>)> = vec![
            ("UserId", None),
            ("UserId", Some(json!(""))),
            ("UserId", Some(json!("0203f172-zzzz"))),
            ("UserId", Some(json!(5))),
            ("Entity", Some(json!(7))),
            ("Entity", Some(json!("1"))),
            ("EntityType", Some(json!(2))),
            ("EntityType", None),
            ("EntityId", Some(json!(""))),
            ("EntityId", Some(json!("abc"))),
            ("EntityId", Some(json!(-4))),
            ("ContextEntity", None),
            ("ContextEntity", Some(json!(2))),
            ("ContextEntityId", None),
            ("AccessType", Some(json!(3))),
            ("AccessType", None),
            ("DurationInMinutes", Some(json!(0))),
            ("DurationInMinutes", Some(json!(-30))),
            ("DurationInMinutes", Some(json!(1.5))),
            ("DurationInMinutes", Some(json!("30"))),
            ("DurationInMinutes", Some(json!(i64::MAX))),
            ("Durationinminutes", Some(json!(30))),
            ("StartsAt", Some(json!("next monday"))),
            ("StartsAt", Some(json!(1_700_000_000))),
            ("StartsInMinutes", Some(json!(-1))),
            ("StartsInMinutes", Some(json!("60"))),
            ("StartsInMinutes", Some(json!(i64::MAX))),
        ];
        for (field, value) in cases {
            let body = seed_with(|m| match &value {
                Some(v) => {
                    m.insert(field.to_string(), v.clone());
                }
                None => {
                    m.remove(field);
                }
            });
            let e = share_error(&body);
            assert_eq!((e.index, e.field.as_str()), (0, field), "{e}");
            assert!(!e.reason.is_empty());
        }
    }

    #[test]
    fn a_start_is_an_instant_or_minutes_never_both() {
        let body = seed_with(|m| {
            m.insert("StartsAt".into(), json!("2026-12-07T09:00:00+01:00"));
        });
        let item = decode_shares(&body).unwrap()[0].clone().unwrap();
        let at = "2026-12-07T08:00:00Z".parse().unwrap();
        assert_eq!(item.starts_at, Some(at));
        assert_eq!(
            crate::requests::ShareRequest::from(item).start,
            crate::Start::At(at)
        );
        let back = decode_shares(&serde_json::to_vec(&vec![item.to_wire()]).unwrap()).unwrap();
        assert_eq!(back[0].clone().unwrap(), item, "encodes back");
        let body = seed_with(|m| {
            m.insert("StartsInMinutes".into(), json!(90));
        });
        let item = decode_shares(&body).unwrap()[0].clone().unwrap();
        assert_eq!(
            crate::requests::ShareRequest::from(item).start,
            crate::Start::After(chrono::Duration::minutes(90))
        );
        let both = seed_with(|m| {
            m.insert("StartsAt".into(), json!("2026-12-07T09:00:00Z"));
            m.insert("StartsInMinutes".into(), json!(5));
        });
        let e = share_error(&both);
        assert_eq!(e.field, "StartsInMinutes");
        assert!(e.reason.contains("not both"), "{e}");
        // A revoke has no start.
        let revoke = br#"[{"UserId":"0203f172-8642-11e7-9bed-069b743e848f","Entity":5,"EntityType":3,"EntityId":"1","StartsInMinutes":5}]"#;
        let e = decode_revokes(revoke).unwrap()[0].clone().unwrap_err();
        assert_eq!(e.field, "StartsInMinutes");
    }

    #[test]
    fn defaults_and_optional_fields() {
        let body = seed_with(|m| {
            m.remove("DurationInMinutes");
        });
        assert_eq!(
            decode_shares(&body).unwrap()[0]
                .clone()
                .unwrap()
                .duration_minutes,
            None
        );
        let body = seed_with(|m| {
            m.insert("Entity".into(), 5.into());
            m.insert(
                "EntityId".into(),
                "6a9b2c1e-1111-4a2b-9c3d-000000000001".into(),
            );
            m.remove("ContextEntity");
            m.remove("ContextEntityId");
        });
        let item = decode_shares(&body).unwrap()[0].clone().unwrap();
        assert_eq!(
            item.context,
            Context::Direct,
            "an opportunity needs no context"
        );
        assert!(matches!(item.entity.id, EntityRef::Uuid(_)));
        let revoke = seed_with(|m| {
            m.remove("DurationInMinutes");
            m.remove("AccessType");
        });
        assert_eq!(
            decode_revokes(&revoke).unwrap()[0].clone().unwrap().level,
            Level::Read
        );
        let with_duration = decode_revokes(SEED_SHARE.as_bytes()).unwrap()[0]
            .clone()
            .unwrap_err();
        assert_eq!(with_duration.field, "DurationInMinutes");
    }

    #[test]
    fn one_bad_item_leaves_the_others() {
        let body = br#"[{"UserId":"x"}, 7, {"UserId":"0203f172-8642-11e7-9bed-069b743e848f","Entity":5,"EntityType":3,"EntityId":12,"AccessType":1}]"#;
        let items = decode_shares(body).unwrap();
        assert_eq!(items[0].clone().unwrap_err().field, "UserId");
        assert_eq!(items[1].clone().unwrap_err().field, "item");
        assert!(items[2].is_ok());
    }

    #[test]
    fn whole_batch_errors() {
        assert!(matches!(
            decode_shares(b"not json"),
            Err(BatchError::NotJson(_))
        ));
        assert!(matches!(
            decode_shares(b"{}"),
            Err(BatchError::NotArray("an object"))
        ));
        assert_eq!(decode_shares(b"[]").unwrap().len(), 0);
    }

    /// A key given twice is refused, naming it and where, at any depth; a
    /// body is otherwise what `serde_json` reads (the same value).
    #[test]
    fn a_key_given_twice_is_refused_where_it_is() {
        let twice = seed_with(|m| {
            m.insert("Z".into(), json!(0));
        });
        let text = String::from_utf8(twice)
            .unwrap()
            .replace("\"Z\":0", "\"AccessType\":1");
        assert_eq!(
            decode_shares(text.as_bytes()).unwrap_err(),
            BatchError::Duplicate {
                at: "item 0".into(),
                field: "AccessType".into()
            }
        );
        assert_eq!(
            strict_json(br#"{"a":1,"a":2}"#).unwrap_err().to_string(),
            "`a` appears twice in the body: a field may be given once"
        );
        assert_eq!(
            strict_json(br#"[{}, {"Fields": {"k": [1, {"x": 1, "x": 2}]}}]"#)
                .unwrap_err()
                .to_string(),
            "`x` appears twice in item 1, Fields, k, [1]: a field may be given once"
        );
        let nested =
            br#"[{"a": [1, 2.5, null, true, "s", {"b": {}}], "c": -3, "d": 18446744073709551615}]"#;
        assert_eq!(
            strict_json(nested).unwrap(),
            serde_json::from_slice::<Value>(nested).unwrap()
        );
    }

    /// A leading byte-order mark is skipped (RFC 8259 lets a parser ignore
    /// it); anything else before the JSON is refused.
    #[test]
    fn a_byte_order_mark_is_skipped() {
        let mut body = BOM.to_vec();
        body.extend_from_slice(SEED_SHARE.as_bytes());
        assert!(decode_shares(&body).unwrap()[0].is_ok());
        let twice: Vec<u8> = [BOM, BOM, b"[]"].concat();
        assert!(matches!(decode_shares(&twice), Err(BatchError::NotJson(_))));
    }

    /// An id with white space around it is refused, not trimmed.
    #[test]
    fn ids_are_not_trimmed() {
        for padded in [
            " 869196",
            "869196 ",
            "\t869196",
            " f2dbf1d5-bbab-418b-bddc-4c92ecdef214",
        ] {
            let body = seed_with(|m| {
                m.insert("EntityId".into(), json!(padded));
            });
            let e = share_error(&body);
            assert_eq!(e.field, "EntityId");
            assert!(e.reason.contains("white space"), "{e}");
        }
    }

    /// An error quotes at most a short prefix of what the caller sent.
    #[test]
    fn errors_quote_a_short_prefix() {
        let huge = "x".repeat(900_000);
        for field in ["UserId", "EntityId", "ContextEntityId", "StartsAt"] {
            let body = seed_with(|m| {
                m.insert(field.into(), json!(huge));
            });
            let e = share_error(&body);
            assert_eq!(e.field, field);
            assert!(
                e.to_string().len() < 300,
                "{field}: {} bytes",
                e.to_string().len()
            );
        }
        let mut key = String::from("[{\"");
        key.push_str(&huge);
        key.push_str("\":1,\"");
        key.push_str(&huge);
        key.push_str("\":2}]");
        assert!(decode_shares(key.as_bytes()).unwrap_err().to_string().len() < 300);
        let broken = format!("[\"{huge}");
        assert!(
            decode_shares(broken.as_bytes())
                .unwrap_err()
                .to_string()
                .len()
                < 300
        );
    }

    #[test]
    fn a_batch_over_the_limit_is_refused_whole() {
        let limits = Limits {
            max_items: 2,
            ..Limits::default()
        };
        assert_eq!(
            decode_shares_within(b"[{},{},{}]", &limits).unwrap_err(),
            BatchError::TooLarge { count: 3, max: 2 }
        );
        assert_eq!(decode_shares_within(b"[{},{}]", &limits).unwrap().len(), 2);
    }

    fn json_value() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            ".{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map(".{0,6}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        /// Against the model, `serde_json`: any document without a key
        /// given twice reads as the same value, with or without a
        /// byte-order mark; anything `serde_json` refuses is refused.
        #[test]
        fn strict_reads_what_serde_json_reads(v in json_value(), bom in proptest::bool::ANY) {
            let mut text = if bom { BOM.to_vec() } else { Vec::new() };
            text.extend_from_slice(serde_json::to_string(&v).unwrap().as_bytes());
            let plain = serde_json::to_vec(&v).unwrap();
            let model: Value = serde_json::from_slice(&plain).unwrap();
            proptest::prop_assert_eq!(strict_json(&text).unwrap(), model);
        }

        #[test]
        fn strict_refuses_what_serde_json_refuses(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            if serde_json::from_slice::<Value>(&bytes).is_err() && !bytes.starts_with(BOM) {
                proptest::prop_assert!(strict_json(&bytes).is_err());
            }
        }
    }
}
