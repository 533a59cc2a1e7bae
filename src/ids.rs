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
        match self.id {
            EntityRef::Number(n) => write!(f, "{}:{}", self.kind, n),
            EntityRef::Uuid(u) => write!(f, "{}:{}", self.kind, u.hyphenated()),
        }
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
    fn user_id_parses_and_prints() {
        let s = "0203f172-8642-11e7-9bed-069b743e848f";
        let u: UserId = s.parse().unwrap();
        assert_eq!(u.to_string(), s);
        assert!("not-a-uuid".parse::<UserId>().is_err());
    }
}
