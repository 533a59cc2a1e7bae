//! Identifiers: users, entities, contexts, grants, and access levels.
//!
//! Every id here is a small `Copy` value, so a check borrows nothing that
//! needs an allocation and hashes a fixed number of machine words.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A user who can be given access (the grantee).
///
/// Users are UUIDs in practice; any 128-bit id fits.
///
/// ```
/// use grantwheel::UserId;
/// let u: UserId = "0203f172-8642-11e7-9bed-069b743e848f".parse().unwrap();
/// assert_eq!(u.to_string(), "0203f172-8642-11e7-9bed-069b743e848f");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UserId(pub Uuid);

impl UserId {
    /// A user id from its 128-bit value.
    pub const fn from_u128(v: u128) -> Self {
        UserId(Uuid::from_u128(v))
    }

    /// The 128-bit value of this id.
    pub const fn as_u128(&self) -> u128 {
        self.0.as_u128()
    }
}

impl From<Uuid> for UserId {
    fn from(u: Uuid) -> Self {
        UserId(u)
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl std::str::FromStr for UserId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(UserId)
    }
}

/// The kind of record being shared: a lead, an opportunity, or a kind the
/// host defines.
///
/// The numeric codes of the built-in kinds are those of the share API
/// (`Entity` 1 = lead, 5 = opportunity); a host picks any other code for its
/// own kinds.
///
/// ```
/// use grantwheel::EntityKind;
/// assert_eq!(EntityKind::LEAD.code(), 1);
/// assert_eq!(EntityKind::custom(42).code(), 42);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EntityKind(u16);

impl EntityKind {
    /// A lead (`Entity` code 1).
    pub const LEAD: EntityKind = EntityKind(1);
    /// An opportunity (`Entity` code 5).
    pub const OPPORTUNITY: EntityKind = EntityKind(5);

    /// A host-defined kind with the given code.
    pub const fn custom(code: u16) -> Self {
        EntityKind(code)
    }

    /// The numeric code of this kind.
    pub const fn code(&self) -> u16 {
        self.0
    }
}

/// The id of one record within its kind: a number (such as a lead number)
/// or a UUID.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum EntityRef {
    /// A numeric id, such as `ProspectAutoId`.
    Number(u64),
    /// A UUID.
    Uuid(Uuid),
}

/// Why a text is not an [`EntityRef`].
///
/// ```
/// use grantwheel::EntityRef;
/// let err = "0869196".parse::<EntityRef>().unwrap_err();
/// assert!(err.to_string().contains("leading zero"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct BadEntityRef {
    reason: String,
}

impl BadEntityRef {
    /// Why the text was refused.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

/// The text forms of a GUID accepted as an entity id.
const GUID_FORMS: &str = "32 hex digits or the hyphenated 8-4-4-4-12 form";

/// The most characters of a caller's text an error message quotes.
pub const QUOTED_CHARS: usize = 40;

/// `text` as an error message quotes it: whole when short, else its first
/// [`QUOTED_CHARS`] characters and `…`, so a message never grows with what
/// a caller sent (a 900 KB id is answered in a line).
///
/// ```
/// use grantwheel::requests::wire::quoted;
/// assert_eq!(quoted("869196"), "869196");
/// assert_eq!(quoted(&"x".repeat(900_000)), format!("{}…", "x".repeat(40)));
/// ```
pub fn quoted(text: &str) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(QUOTED_CHARS) {
        None => std::borrow::Cow::Borrowed(text),
        Some((end, _)) => std::borrow::Cow::Owned(format!("{}…", &text[..end])),
    }
}

/// The shape of an id is decided by what it looks like, never by what
/// happens to parse first:
///
/// - a **GUID** is 32 hex digits, or the hyphenated 8-4-4-4-12 form (36
///   characters), optionally in braces;
/// - a **record number** is decimal digits without a leading zero (`0`
///   alone is zero) that fit in 64 bits.
///
/// Nothing is trimmed: ` 869196` is refused, saying so, since a caller
/// that pads an id has a bug worth hearing about.
///
/// The two never overlap: a number has at most 20 digits. A 32-digit
/// decimal string is therefore a GUID, and `0869196` is refused rather than
/// guessed.
///
/// ```
/// use grantwheel::EntityRef;
/// use uuid::Uuid;
/// assert_eq!("869196".parse::<EntityRef>().unwrap(), EntityRef::Number(869196));
/// assert_eq!(
///     "00000000000000000000000000869196".parse::<EntityRef>().unwrap(),
///     EntityRef::Uuid(Uuid::from_u128(0x869196)),
/// );
/// assert!("0869196".parse::<EntityRef>().is_err());
/// assert!(" 869196".parse::<EntityRef>().unwrap_err().reason().contains("white space"));
/// ```
impl std::str::FromStr for EntityRef {
    type Err = BadEntityRef;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason: String| Err(BadEntityRef { reason });
        let b = s.as_bytes();
        let inner = match b {
            [b'{', middle @ .., b'}'] if middle.len() == 36 => middle,
            _ => b,
        };
        let hex_at = |i: usize, c: &u8| match i {
            8 | 13 | 18 | 23 if inner.len() == 36 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        };
        if (inner.len() == 32 || inner.len() == 36)
            && inner.iter().enumerate().all(|(i, c)| hex_at(i, c))
        {
            return match Uuid::try_parse_ascii(inner) {
                Ok(u) => Ok(EntityRef::Uuid(u)),
                Err(e) => bad(format!("`{}` is not a GUID: {e}", quoted(s))),
            };
        }
        if s.is_empty() {
            return bad("is empty".into());
        }
        let q = quoted(s);
        if s.trim() != s {
            return bad(format!(
                "`{q}` has white space around it: an id is written without any"
            ));
        }
        if b.iter().all(u8::is_ascii_digit) {
            if b.len() > 1 && b.first() == Some(&b'0') {
                return bad(format!(
                    "`{q}` has a leading zero: a record number is written without one, a GUID as {GUID_FORMS}"
                ));
            }
            return match s.parse::<u64>() {
                Ok(n) => Ok(EntityRef::Number(n)),
                Err(_) => bad(format!(
                    "`{q}` is larger than the largest record number ({})",
                    u64::MAX
                )),
            };
        }
        bad(format!(
            "`{q}` is neither a record number nor a GUID ({GUID_FORMS})"
        ))
    }
}

/// Shown as a number, or as a hyphenated GUID: the form
/// [`FromStr`](std::str::FromStr) reads back.
impl fmt::Display for EntityRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EntityRef::Number(n) => n.fmt(f),
            EntityRef::Uuid(u) => u.hyphenated().fmt(f),
        }
    }
}

/// One shared record: its kind and its id.
///
/// ```
/// use grantwheel::{EntityId, EntityKind};
/// let lead = EntityId::lead(869196);
/// assert_eq!(lead.kind, EntityKind::LEAD);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EntityId {
    /// What kind of record this is.
    pub kind: EntityKind,
    /// Which record of that kind.
    pub id: EntityRef,
}

impl EntityId {
    /// An entity from its parts.
    pub const fn new(kind: EntityKind, id: EntityRef) -> Self {
        EntityId { kind, id }
    }

    /// A lead with a numeric id.
    pub const fn lead(id: u64) -> Self {
        EntityId::new(EntityKind::LEAD, EntityRef::Number(id))
    }

    /// An opportunity with a numeric id.
    pub const fn opportunity(id: u64) -> Self {
        EntityId::new(EntityKind::OPPORTUNITY, EntityRef::Number(id))
    }
}

impl fmt::Display for EntityKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            EntityKind::LEAD => f.write_str("lead"),
            EntityKind::OPPORTUNITY => f.write_str("opportunity"),
            EntityKind(code) => write!(f, "kind{code}"),
        }
    }
}

/// Shown as `kind:id`, for example `lead:869196`.
impl fmt::Display for EntityId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.id)
    }
}

/// Reads the form [`Display`](fmt::Display) writes: `lead:869196`,
/// `opportunity:<GUID>`, `kind42:<id>`; the id follows the rules of
/// [`EntityRef`]'s `FromStr`.
///
/// ```
/// use grantwheel::EntityId;
/// let lead: EntityId = "lead:869196".parse().unwrap();
/// assert_eq!(lead, EntityId::lead(869196));
/// assert!("lead:0869196".parse::<EntityId>().is_err());
/// ```
impl std::str::FromStr for EntityId {
    type Err = BadEntityRef;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let Some((kind, id)) = s.split_once(':') else {
            return Err(BadEntityRef {
                reason: format!("`{s}` is not of the form `kind:id` (for example `lead:869196`)"),
            });
        };
        let kind = match kind {
            "lead" => EntityKind::LEAD,
            "opportunity" => EntityKind::OPPORTUNITY,
            other => match other.strip_prefix("kind").map(str::parse::<u16>) {
                Some(Ok(code)) => EntityKind(code),
                _ => {
                    return Err(BadEntityRef {
                        reason: format!(
                        "`{other}` is not an entity kind (`lead`, `opportunity` or `kind<code>`)"
                    ),
                    })
                }
            },
        };
        Ok(EntityId::new(kind, id.parse()?))
    }
}

/// Through what a grant was given: for example the activity whose owner is
/// the grantee. At most one live grant exists per (user, entity, context).
///
/// ```
/// use grantwheel::Context;
/// use uuid::Uuid;
/// let activity = Context::Activity(Uuid::nil());
/// assert_ne!(activity, Context::Direct);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Context {
    /// No context: a direct share.
    Direct,
    /// An activity (`ContextEntity` code 1).
    Activity(Uuid),
    /// A task.
    Task(Uuid),
    /// A host-defined context kind and id.
    Other {
        /// The host's code for the context kind.
        kind: u16,
        /// The context's id.
        id: Uuid,
    },
}

impl Context {
    pub(crate) fn pack(self) -> (u32, u128) {
        match self {
            Context::Direct => (0, 0),
            Context::Activity(u) => (1, u.as_u128()),
            Context::Task(u) => (2, u.as_u128()),
            // Host kinds live above the built-in codes.
            Context::Other { kind, id } => (u32::from(kind) + 3, id.as_u128()),
        }
    }

    pub(crate) fn unpack(kind: u32, id: u128) -> Self {
        match kind {
            0 => Context::Direct,
            1 => Context::Activity(Uuid::from_u128(id)),
            2 => Context::Task(Uuid::from_u128(id)),
            k => Context::Other {
                kind: u16::try_from(k.saturating_sub(3)).unwrap_or(u16::MAX),
                id: Uuid::from_u128(id),
            },
        }
    }
}

/// The access a grant gives. `Edit` implies `Read`.
///
/// The share API's `AccessType` codes are 1 = read and 2 = write (edit).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Level {
    /// View only.
    Read,
    /// View and modify.
    Edit,
}

/// The id of one grant, returned by a share and accepted by revoke and
/// extend.
///
/// It names the grant's (user, entity, context) and a serial number, so an
/// id kept after its grant ended never touches a later grant on the same
/// key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct GrantId {
    /// The grantee.
    pub user: UserId,
    /// The shared record.
    pub entity: EntityId,
    /// Through what it was shared.
    pub context: Context,
    /// A number unique among the grants of one engine.
    pub serial: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_pack_round_trips() {
        let u = Uuid::from_u128(0xdead_beef);
        for c in [
            Context::Direct,
            Context::Activity(u),
            Context::Task(u),
            Context::Other { kind: 0, id: u },
            Context::Other { kind: 77, id: u },
            Context::Other {
                kind: u16::MAX,
                id: u,
            },
            Context::Other {
                kind: u16::MAX - 1,
                id: u,
            },
        ] {
            let (k, id) = c.pack();
            assert_eq!(Context::unpack(k, id), c);
        }
    }

    #[test]
    fn entities_print_their_kind() {
        assert_eq!(EntityId::lead(869196).to_string(), "lead:869196");
        assert_eq!(EntityId::opportunity(3).to_string(), "opportunity:3");
        let e = EntityId::new(EntityKind::custom(42), EntityRef::Uuid(Uuid::nil()));
        assert_eq!(e.to_string(), "kind42:00000000-0000-0000-0000-000000000000");
    }

    #[test]
    fn the_issue_example_is_a_guid() {
        let r: EntityRef = "00000000000000000000000000869196".parse().unwrap();
        assert_eq!(r, EntityRef::Uuid(Uuid::from_u128(0x0086_9196)));
        assert_ne!(r, EntityRef::Number(869196));
    }

    #[test]
    fn entity_refs_refuse_what_is_neither() {
        for (s, why) in [
            ("", "empty"),
            ("0869196", "leading zero"),
            ("00", "leading zero"),
            ("18446744073709551616", "larger"),
            ("12ab", "neither"),
            ("-5", "neither"),
            ("+5", "neither"),
            (" 5", "white space"),
            ("5\n", "white space"),
            (&"9".repeat(900), &format!("`{}…`", "9".repeat(40))),
            ("0203f172-8642-11e7-9bed-069b743e848", "neither"),
            ("0203f172864211e79bed069b743e848f0", "neither"),
            ("0203f172-864211e7-9bed-069b743e848f", "neither"),
            ("urn:uuid:0203f172-8642-11e7-9bed-069b743e848f", "neither"),
        ] {
            let err = s.parse::<EntityRef>().unwrap_err();
            assert!(err.reason().contains(why), "{s:?}: {err}");
        }
        assert_eq!("0".parse::<EntityRef>().unwrap(), EntityRef::Number(0));
        let braced = "{0203f172-8642-11e7-9bed-069b743e848f}".parse::<EntityRef>();
        assert_eq!(
            braced.unwrap(),
            EntityRef::Uuid("0203f172-8642-11e7-9bed-069b743e848f".parse().unwrap())
        );
    }

    #[test]
    fn entity_ids_round_trip_through_text() {
        for e in [
            EntityId::lead(0),
            EntityId::lead(u64::MAX),
            EntityId::opportunity(869196),
            EntityId::new(EntityKind::OPPORTUNITY, EntityRef::Uuid(Uuid::from_u128(7))),
            EntityId::new(EntityKind::custom(42), EntityRef::Uuid(Uuid::nil())),
        ] {
            assert_eq!(e.to_string().parse::<EntityId>().unwrap(), e);
        }
        assert!("deal:5".parse::<EntityId>().is_err());
        assert!("lead".parse::<EntityId>().is_err());
    }

    proptest::proptest! {
        #[test]
        fn any_uuid_in_either_form_is_that_uuid(v: u128, upper: bool) {
            let u = Uuid::from_u128(v);
            for text in [u.simple().to_string(), u.hyphenated().to_string()] {
                let text = if upper { text.to_uppercase() } else { text };
                proptest::prop_assert_eq!(text.parse::<EntityRef>().unwrap(), EntityRef::Uuid(u));
            }
        }

        #[test]
        fn any_number_in_decimal_is_that_number(n: u64) {
            proptest::prop_assert_eq!(n.to_string().parse::<EntityRef>().unwrap(), EntityRef::Number(n));
        }

        #[test]
        fn no_text_decodes_to_both_shapes(s in "[0-9a-fA-F{}-]{0,40}") {
            // A text is a GUID exactly when it reads as one in a GUID form,
            // and a number exactly when it is canonical decimal.
            let as_uuid = Uuid::try_parse(&s).ok().filter(|_| s.len() == 32 || s.len() == 36 || s.len() == 38);
            let as_number = s.parse::<u64>().ok().filter(|n| n.to_string() == s);
            proptest::prop_assert!(as_uuid.is_none() || as_number.is_none());
            match s.parse::<EntityRef>() {
                Ok(EntityRef::Uuid(u)) => proptest::prop_assert_eq!(Some(u), as_uuid),
                Ok(EntityRef::Number(n)) => proptest::prop_assert_eq!(Some(n), as_number),
                Err(_) => proptest::prop_assert!(as_uuid.is_none() && as_number.is_none()),
            }
        }
    }

    #[test]
    fn user_id_parses_and_prints() {
        let s = "0203f172-8642-11e7-9bed-069b743e848f";
        let u: UserId = s.parse().unwrap();
        assert_eq!(u.to_string(), s);
        assert!("not-a-uuid".parse::<UserId>().is_err());
    }
}
