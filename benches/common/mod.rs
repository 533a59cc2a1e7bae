//! Workload shared by the benchmarks: random UUID users on numeric entity
//! ids, an engine holding them, and the bare-map baseline over the same keys.

#![allow(dead_code, reason = "each test binary uses a part of it")]

use chrono::{Duration, TimeZone, Utc};
use grantwheel::{Context, Engine, EntityId, Expiry, Level, ManualClock, UserId};
use rand::{rngs::StdRng, RngExt, SeedableRng};

/// A fixed start so runs compare.
pub fn start() -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
}

/// `n` distinct (user, entity) keys with levels and durations (up to 90 days),
/// every key's user distinct.
pub fn keys(n: usize, seed: u64) -> Vec<(UserId, EntityId, Level, i64)> {
    keys_over_users(n, 0, seed)
}

/// `n` distinct (user, entity) keys over `users` random users (`0`: every
/// key's user distinct), with levels and durations (up to 90 days).
pub fn keys_over_users(n: usize, users: usize, seed: u64) -> Vec<(UserId, EntityId, Level, i64)> {
    let mut rng = StdRng::seed_from_u64(seed);
    let pool: Vec<UserId> = (0..users)
        .map(|_| UserId::from_u128(rng.random()))
        .collect();
    (0..n)
        .map(|_| {
            let user = if pool.is_empty() {
                UserId::from_u128(rng.random())
            } else {
                pool[rng.random_range(0..pool.len())]
            };
            let entity = EntityId::lead(rng.random_range(0..1u64 << 40));
            let level = if rng.random_bool(0.5) {
                Level::Read
            } else {
                Level::Edit
            };
            let secs = rng.random_range(3_600..90 * 86_400);
            (user, entity, level, secs)
        })
        .collect()
}

/// An engine on a manual clock holding every key's grant.
pub fn engine(keys: &[(UserId, EntityId, Level, i64)]) -> (ManualClock, Engine) {
    let clock = ManualClock::new(start());
    let engine = Engine::builder()
        .clock(clock.clone())
        .capacity(keys.len())
        .build()
        .unwrap();
    share_all(&engine, keys);
    (clock, engine)
}

/// An engine on the operating system's clock holding every key's grant
/// (expiring from now).
pub fn engine_on_system_clock(keys: &[(UserId, EntityId, Level, i64)]) -> Engine {
    let engine = Engine::builder().capacity(keys.len()).build().unwrap();
    share_all(&engine, keys);
    engine
}

/// Share every key's grant (direct, expiring its duration from now).
pub fn share_all(engine: &Engine, keys: &[(UserId, EntityId, Level, i64)]) {
    for (u, e, l, secs) in keys {
        engine
            .share(
                *u,
                *e,
                Context::Direct,
                *l,
                Expiry::After(Duration::seconds(*secs)),
            )
            .unwrap();
    }
}

/// The bare map: the same keys to their expiry in milliseconds.
pub type Baseline = hashbrown::HashMap<(UserId, EntityId), i64>;

pub fn baseline(keys: &[(UserId, EntityId, Level, i64)]) -> Baseline {
    let t = start().timestamp_millis();
    keys.iter()
        .map(|(u, e, _, secs)| ((*u, *e), t + secs * 1000))
        .collect()
}

/// The tightest probe: a bare map keyed by one packed `u64` (the user's
/// number in order of first appearance, high 24 bits; the lead id, low 40),
/// to the expiry in milliseconds.
pub type PackedBaseline = hashbrown::HashMap<u64, i64>;

/// Each key packed as [`PackedBaseline`] keys it (same order as `keys`).
pub fn packed_keys(keys: &[(UserId, EntityId, Level, i64)]) -> Vec<u64> {
    let mut numbers: hashbrown::HashMap<UserId, u64> = hashbrown::HashMap::new();
    keys.iter()
        .map(|(u, e, _, _)| {
            let next = numbers.len() as u64;
            let user = *numbers.entry(*u).or_insert(next);
            let lead = match e.id {
                grantwheel::EntityRef::Number(n) => n,
                grantwheel::EntityRef::Uuid(u) => u.as_u128() as u64,
            };
            assert!(user < 1 << 24 && lead < 1 << 40, "fits the packing");
            (user << 40) | lead
        })
        .collect()
}

/// The packed baseline over the same keys and expiries.
pub fn packed_baseline(keys: &[(UserId, EntityId, Level, i64)], packed: &[u64]) -> PackedBaseline {
    let t = start().timestamp_millis();
    keys.iter()
        .zip(packed)
        .map(|((_, _, _, secs), p)| (*p, t + secs * 1000))
        .collect()
}

/// A random visiting order over `n` keys.
pub fn order(n: usize, len: usize, seed: u64) -> Vec<u32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..len).map(|_| rng.random_range(0..n as u32)).collect()
}

/// Resident set size of this process, in bytes.
pub fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// Sizes from an environment variable (comma separated), or the defaults.
pub fn sizes(var: &str, default: &[usize]) -> Vec<usize> {
    std::env::var(var)
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .filter(|v: &Vec<usize>| !v.is_empty())
        .unwrap_or_else(|| default.to_vec())
}
