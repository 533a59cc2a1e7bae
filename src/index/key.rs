//! Keys: a (user, entity) pair encoded in machine words, and its hash.

use crate::ids::{EntityId, EntityKind, EntityRef, UserId};

/// An encoded key: user words, entity words, kind (the last word).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Key<const K: usize>(pub(super) [u64; K]);

impl<const K: usize> std::hash::Hash for Key<K> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        for w in self.0 {
            state.write_u64(w);
        }
    }
}

/// A pair's key in one of the two shapes.
#[derive(Clone, Copy, Debug)]
pub(crate) enum PairKey {
    Num(Key<4>),
    Uuid(Key<5>),
}

impl PairKey {
    #[inline]
    pub(crate) fn new(user: &UserId, entity: &EntityId) -> Self {
        // The ids' bytes as they lie in memory (no byte swaps): keys are
        // only compared and hashed, never ordered.
        let u = user.0.to_u128_le();
        let (hi, lo) = ((u >> 64) as u64, u as u64);
        let kind = u64::from(entity.kind.code());
        match entity.id {
            EntityRef::Number(n) => PairKey::Num(Key([hi, lo, n, kind])),
            EntityRef::Uuid(e) => {
                let e = e.to_u128_le();
                PairKey::Uuid(Key([hi, lo, (e >> 64) as u64, e as u64, kind]))
            }
        }
    }
}

/// A keyed hash of the fixed-width keys: pairs of words are multiplied
/// into 128 bits and folded (independent multiplies, one final mix). The
/// final mix is needed: without it, runs of user numbers crowd some home
/// groups for some keys (a test holds the spread). The keys are random per
/// engine, so hash flooding needs the keys.
#[derive(Clone, Copy, Debug)]
pub(crate) struct KeyHasher {
    /// One key per key word (the last pairs with the sixth when a key has
    /// an odd number of words): random seeds mixed with constants that
    /// differ per position, so equal words in different positions do not
    /// cancel.
    pub(super) keys: [u64; 6],
}

/// Per-position constants (digits of pi).
const PI: [u64; 6] = [
    0x243f_6a88_85a3_08d3,
    0x1319_8a2e_0370_7344,
    0xa409_3822_299f_31d0,
    0x082e_fa98_ec4e_6c89,
    0x4528_21e6_38d0_1377,
    0xbe54_66cf_34e9_0c6c,
];

pub(super) fn fold_mul(a: u64, b: u64) -> u64 {
    let f = u128::from(a) * u128::from(b);
    (f as u64) ^ ((f >> 64) as u64)
}

impl KeyHasher {
    fn from_seeds(seeds: [u64; 2]) -> Self {
        KeyHasher {
            keys: std::array::from_fn(|i| {
                let (seed, pi) = (seeds.get(i % 2), PI.get(i));
                seed.zip(pi).map_or(0, |(s, p)| s ^ p)
            }),
        }
    }

    /// Seeded at random, so an adversary cannot aim keys at one group.
    /// Fixed in the loom models, which must run the same way every time.
    #[cfg(grantwheel_loom)]
    pub(super) fn random() -> Self {
        Self::from_seeds([0x9e37_79b9_7f4a_7c15, 0xc2b2_ae3d_27d4_eb4f])
    }

    /// Seeded at random, so an adversary cannot aim keys at one group.
    #[cfg(not(grantwheel_loom))]
    pub(super) fn random() -> Self {
        use std::hash::BuildHasher;
        let state = std::collections::hash_map::RandomState::new();
        Self::from_seeds(std::array::from_fn(|i| state.hash_one(i) | 1))
    }

    #[inline(always)]
    pub(super) fn hash<const K: usize>(&self, key: &Key<K>) -> u64 {
        let mut h = 0;
        // Key words in pairs, each folded with its position's keys; an odd
        // last word pairs with the next position's key alone.
        for (ws, ks) in key.0.chunks(2).zip(self.keys.chunks(2)) {
            let (a, b) = match (ws, ks) {
                ([w0, w1], [k0, k1]) => (w0 ^ k0, w1 ^ k1),
                ([w0], [k0, k1]) => (w0 ^ k0, *k1),
                _ => continue,
            };
            h ^= fold_mul(a, b);
        }
        fold_mul(h, 0x9e37_79b9_7f4a_7c15)
    }
}

/// Decode a stored key into its ids.
pub(super) trait Decode {
    fn decode(&self) -> (UserId, EntityId);
}

impl Decode for Key<4> {
    fn decode(&self) -> (UserId, EntityId) {
        let [hi, lo, id, kind] = self.0;
        (
            UserId(uuid::Uuid::from_u128_le(
                (u128::from(hi) << 64) | u128::from(lo),
            )),
            EntityId::new(EntityKind::custom(kind as u16), EntityRef::Number(id)),
        )
    }
}

impl Decode for Key<5> {
    fn decode(&self) -> (UserId, EntityId) {
        let [hi, lo, ehi, elo, kind] = self.0;
        let e = (u128::from(ehi) << 64) | u128::from(elo);
        (
            UserId(uuid::Uuid::from_u128_le(
                (u128::from(hi) << 64) | u128::from(lo),
            )),
            EntityId::new(
                EntityKind::custom(kind as u16),
                EntityRef::Uuid(uuid::Uuid::from_u128_le(e)),
            ),
        )
    }
}
