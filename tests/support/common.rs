//! Helpers shared by the integration tests and the fuzz checks: ids named
//! by small numbers, the start instant, and the one model of who has
//! access that the fault, crash and fuzz checks compare the engine with.
//!
//! Include it with `#[path = "support/common.rs"] mod common;`.

#![allow(dead_code, reason = "each test binary uses a part of it")]

use std::collections::BTreeMap;

use chrono::{DateTime, TimeZone, Utc};
use grantwheel::{Context, EntityId, EntityKind, EntityRef, Grant, GrantId, Level, UserId};
use uuid::Uuid;

/// A grant's key by small numbers: (user, entity, context).
pub type Key = (usize, usize, usize);

/// The instant the tests' clocks start at.
pub fn start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, 9, 0, 0).unwrap()
}

/// User `i`.
pub fn user(i: usize) -> UserId {
    UserId::from_u128(0x100 + i as u128)
}

/// Entity `i`: a lead, an opportunity, or a host kind with a UUID id, in
/// turn, so every id shape is exercised; all distinct, and entities 0 and
/// 1 share their number (kinds keep them apart).
pub fn entity(i: usize) -> EntityId {
    let n = 869_196 + (i / 3) as u64;
    match i % 3 {
        0 => EntityId::lead(n),
        1 => EntityId::opportunity(n),
        _ => EntityId::new(
            EntityKind::custom(40),
            EntityRef::Uuid(Uuid::from_u128(0x5000 + i as u128)),
        ),
    }
}

/// Context `i`: direct for 0, then activities and tasks in turn.
pub fn context(i: usize) -> Context {
    match i {
        0 => Context::Direct,
        i if i % 2 == 1 => Context::Activity(Uuid::from_u128(0xa0 + i as u128)),
        i => Context::Task(Uuid::from_u128(0xa0 + i as u128)),
    }
}

/// The key of a grant made from the helpers above, among `users`,
/// `entities` and `contexts` of each.
pub fn key_of(id: &GrantId, users: usize, entities: usize, contexts: usize) -> Key {
    let u = (0..users).find(|u| user(*u) == id.user).unwrap();
    let e = (0..entities).find(|e| entity(*e) == id.entity).unwrap();
    let c = (0..contexts).find(|c| context(*c) == id.context).unwrap();
    (u, e, c)
}

/// Who has access: the grants acknowledged, by key (at most one per key,
/// as the engine keeps), each live while `now < expires_at`.
#[derive(Clone, Debug, Default)]
pub struct AccessModel {
    /// The grants, by key; a grant past its expiry may still be here.
    pub grants: BTreeMap<Key, Grant>,
}

impl AccessModel {
    /// Record a share acknowledged as `grant` (replacing the key's grant).
    pub fn share(&mut self, key: Key, grant: Grant) {
        self.grants.insert(key, grant);
    }

    /// The live grant of `key` at `now`.
    pub fn live(&self, key: &Key, now: DateTime<Utc>) -> Option<Grant> {
        self.grants.get(key).copied().filter(|g| g.expires_at > now)
    }

    /// Whether user `u` may read and may edit entity `e` at `now`: the
    /// highest level among the pair's live grants.
    pub fn access(&self, u: usize, e: usize, now: DateTime<Utc>) -> (bool, bool) {
        let (mut read, mut edit) = (false, false);
        for (k, g) in &self.grants {
            if k.0 == u && k.1 == e && g.expires_at > now {
                read = true;
                edit |= g.level == Level::Edit;
            }
        }
        (read, edit)
    }

    /// Forget the grants that ended (revoked), by serial.
    pub fn end(&mut self, ended: &[Grant]) {
        self.grants
            .retain(|_, g| !ended.iter().any(|e| e.id.serial == g.id.serial));
    }

    /// Forget the grants whose key `hit` accepts; returns how many of them
    /// were live at `now` (what a revoke over them returns).
    pub fn revoke_where(&mut self, now: DateTime<Utc>, hit: impl Fn(&Key) -> bool) -> usize {
        let mut live = 0;
        self.grants.retain(|k, g| {
            let gone = hit(k);
            live += usize::from(gone && g.expires_at > now);
            !gone
        });
        live
    }
}

/// A grant id that names only `serial` (stores key ends by serial).
pub fn by_serial(serial: u64) -> grantwheel::GrantId {
    grantwheel::GrantId {
        user: user(0),
        entity: grantwheel::EntityId::lead(0),
        context: grantwheel::Context::Direct,
        serial,
    }
}
