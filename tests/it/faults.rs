//! Fault injection: a workload runs over a store that fails its n-th
//! operation (once, or from then on), for every n from the first operation
//! to the last, over the memory store and over SQLite; and over random
//! schedules of several faults per run (some once, some lasting a while
//! and then healing), interleaved with the workload's clock moves
//! (`GRANTWHEEL_FAULT_SCHEDULES` of them, 300 by default; the gate runs
//! 10,000).
//!
//! After every step: no panic, every check answers as the model of the
//! acknowledged operations says (never yes for a share that was not
//! acknowledged). After the workload: the store, opened again without
//! faults, holds exactly the acknowledged state (plus revokes the engine
//! reported as not durable and could not write since).

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
#[cfg(feature = "sqlite")]
use grantwheel::store::SqliteStore;
use grantwheel::store::{Fault, FaultyStore, MemoryStore, Store};
use grantwheel::Clock;
use grantwheel::{
    BuildError, ChangeError, Engine, Expiry, Grant, GrantId, Level, ManualClock, NotDurable,
    RevokeError, ShareError,
};
use rand::{rngs::StdRng, RngExt, SeedableRng};

use crate::common;

use crate::common::{context, entity, start, user, AccessModel, Key};

const USERS: usize = 3;
const ENTITIES: usize = 2;
const CONTEXTS: usize = 2;

fn key_of(id: &GrantId) -> Key {
    common::key_of(id, USERS, ENTITIES, CONTEXTS)
}

#[derive(Clone, Debug)]
enum Op {
    Share(Key, Level, i64),
    Extend(Key, i64),
    Revoke(Key),
    RevokeContext(Key),
    RevokePair(usize, usize),
    Wait(i64),
    Flush,
}

fn workload(seed: u64, len: usize) -> Vec<Op> {
    let mut rng = StdRng::seed_from_u64(seed);
    let key = |rng: &mut StdRng| {
        (
            rng.random_range(0..USERS),
            rng.random_range(0..ENTITIES),
            rng.random_range(0..CONTEXTS),
        )
    };
    (0..len)
        .map(|_| match rng.random_range(0..10) {
            0..=3 => Op::Share(
                key(&mut rng),
                if rng.random_bool(0.5) {
                    Level::Read
                } else {
                    Level::Edit
                },
                rng.random_range(1..120),
            ),
            4 => Op::Extend(key(&mut rng), rng.random_range(-30..60)),
            5 => Op::Revoke(key(&mut rng)),
            6 => Op::RevokeContext(key(&mut rng)),
            7 => Op::RevokePair(rng.random_range(0..USERS), rng.random_range(0..ENTITIES)),
            8 => Op::Wait(rng.random_range(1..40)),
            _ => Op::Flush,
        })
        .collect()
}

/// The acknowledged state: who has access, and what is not yet durable.
#[derive(Default)]
struct Model {
    access: AccessModel,
    /// Revokes reported not durable and not yet carried by a later batch.
    undurable: Vec<Grant>,
}

impl Model {
    fn ok(&mut self) {
        // Any acknowledged change means a batch was written: it carried the
        // waiting revokes.
        self.undurable.clear();
    }

    fn end(&mut self, revoked: &[Grant]) {
        self.access.end(revoked);
    }
}

/// Run the workload over `store`; return the model of what was
/// acknowledged.
fn run(store: impl Store + 'static, clock: &ManualClock, ops: &[Op]) -> Option<Model> {
    run_scheduled(store, clock, ops, &mut |_| {})
}

/// [`run`], calling `before(i)` before the workload's `i`-th operation (to
/// change the faults).
fn run_scheduled(
    store: impl Store + 'static,
    clock: &ManualClock,
    ops: &[Op],
    before: &mut dyn FnMut(usize),
) -> Option<Model> {
    let engine = match Engine::builder().clock(clock.clone()).store(store).build() {
        Ok(e) => e,
        Err(BuildError::Load(_)) => return None,
        Err(e) => panic!("unexpected error opening: {e}"),
    };
    let mut m = Model::default();
    for (i, op) in ops.iter().enumerate() {
        before(i);
        match op {
            Op::Share(k, level, minutes) => {
                let r = engine.share(
                    user(k.0),
                    entity(k.1),
                    context(k.2),
                    *level,
                    Expiry::After(Duration::minutes(*minutes)),
                );
                match r {
                    Ok(g) => {
                        m.ok();
                        m.access.share(*k, g);
                    }
                    Err(ShareError::Store(_)) => {}
                    Err(e) => panic!("share: {e}"),
                }
            }
            Op::Extend(k, minutes) => {
                let Some(g) = m.access.grants.get(k).copied() else {
                    continue;
                };
                match engine.extend(&g.id, Duration::minutes(*minutes)) {
                    Ok(g) => {
                        m.ok();
                        m.access.share(*k, g);
                    }
                    Err(
                        ChangeError::Store(_) | ChangeError::NotLive(_) | ChangeError::Invalid(_),
                    ) => {}
                    Err(e) => panic!("extend: {e}"),
                }
            }
            Op::Revoke(k) => {
                let Some(g) = m.access.grants.get(k).copied() else {
                    continue;
                };
                match engine.revoke(&g.id) {
                    Ok(g) => {
                        m.ok();
                        m.end(&[g]);
                    }
                    Err(RevokeError::NotDurable(NotDurable { revoked, .. })) => {
                        m.end(&revoked);
                        m.undurable.extend(revoked);
                    }
                    Err(RevokeError::NotLive(_)) => {}
                    Err(e) => panic!("revoke: {e}"),
                }
            }
            Op::RevokeContext(k) => {
                match engine.revoke_via(&user(k.0), &entity(k.1), &context(k.2)) {
                    Ok(gone) => {
                        m.ok();
                        m.end(&gone.into_iter().collect::<Vec<_>>());
                    }
                    Err(NotDurable { revoked, .. }) => {
                        m.end(&revoked);
                        m.undurable.extend(revoked);
                    }
                }
            }
            Op::RevokePair(u, e) => match engine.revoke_pair(&user(*u), &entity(*e)) {
                Ok(gone) => {
                    m.ok();
                    m.end(&gone);
                }
                Err(NotDurable { revoked, .. }) => {
                    m.end(&revoked);
                    m.undurable.extend(revoked);
                }
            },
            Op::Wait(minutes) => {
                clock.advance(Duration::minutes(*minutes));
                engine.advance();
            }
            Op::Flush => {
                // Only the store can fail a flush: the type says so.
                if engine.flush().is_ok() {
                    m.ok();
                }
            }
        }
        if let Err(broken) = engine.check_invariants() {
            panic!("after {op:?}: {broken}");
        }
        let now = engine.now();
        for u in 0..USERS {
            for e in 0..ENTITIES {
                let (r, w) = m.access.access(u, e, now);
                assert_eq!(
                    (
                        engine.can_read(&user(u), &entity(e)),
                        engine.can_edit(&user(u), &entity(e))
                    ),
                    (r, w),
                    "checks after {op:?} for pair ({u}, {e})"
                );
            }
        }
    }
    // Write what waits; a second try gets past a one-off fault. After a
    // success nothing is left for the engine to write when it is dropped.
    if engine.flush().is_ok() || engine.flush().is_ok() {
        m.ok();
    }
    Some(m)
}

/// The live grants an engine over `store` holds.
fn reopened(store: impl Store + 'static, clock: &ManualClock) -> BTreeMap<Key, Grant> {
    let engine = Engine::builder()
        .clock(clock.clone())
        .store(store)
        .build()
        .unwrap();
    let mut out = BTreeMap::new();
    for u in 0..USERS {
        for e in 0..ENTITIES {
            for g in engine.pair_grants(&user(u), &entity(e)) {
                out.insert(key_of(&g.id), g);
            }
        }
    }
    out
}

fn expected(m: &Model, now: DateTime<Utc>) -> BTreeMap<Key, Grant> {
    let mut out: BTreeMap<Key, Grant> = m
        .access
        .grants
        .iter()
        .filter(|(_, g)| g.expires_at > now)
        .map(|(k, g)| (*k, *g))
        .collect();
    for g in &m.undurable {
        if g.expires_at > now {
            out.insert(key_of(&g.id), *g);
        }
    }
    out
}

/// Every n, once and from then on, over a fresh store from `fresh`.
fn every_fault<S: Store + 'static>(fresh: impl Fn(usize) -> (S, Box<dyn Fn() -> S>), seed: u64) {
    let ops = workload(seed, 80);
    // A clean run counts the operations.
    let total = {
        let (store, _) = fresh(0);
        let (store, faults) = FaultyStore::new(store);
        let clock = ManualClock::new(start());
        run(store, &clock, &ops).unwrap();
        faults.ops()
    };
    assert!(
        total > 30,
        "the workload reaches the store ({total} operations)"
    );
    let mut runs = 0;
    for n in 1..=total + 1 {
        for persistent in [false, true] {
            let (store, reopen) = fresh(runs + 1);
            runs += 1;
            let (store, faults) = FaultyStore::new(store);
            faults.set(if persistent {
                Fault::From(n)
            } else {
                Fault::Once(n)
            });
            let clock = ManualClock::new(start());
            let Some(m) = run(store, &clock, &ops) else {
                // Failed to open: the store holds nothing yet.
                assert!(reopened(reopen(), &clock).is_empty());
                continue;
            };
            // The engine is gone (its last write may have failed too: that
            // only ever concerns expirations, which a restart recomputes).
            let now = clock.now();
            assert_eq!(
                reopened(reopen(), &clock),
                expected(&m, now),
                "fault {} at operation {n}",
                if persistent { "from" } else { "once" }
            );
        }
    }
}

#[test]
fn every_failed_memory_store_operation() {
    for seed in 0..3 {
        every_fault(
            |_| {
                let store = MemoryStore::new();
                let again = store.clone();
                (store, Box::new(move || again.clone()))
            },
            seed,
        );
    }
}

#[cfg(feature = "sqlite")]
#[test]
fn every_failed_sqlite_store_operation() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().to_path_buf();
    every_fault(
        move |i| {
            let path = base.join(format!("faults-{i}.db"));
            let store = SqliteStore::open(&path).unwrap();
            (store, Box::new(move || SqliteStore::open(&path).unwrap()))
        },
        7,
    );
}

/// A fault schedule: before which operation of the workload each change
/// of the faults comes.
fn schedule(seed: u64, len: usize) -> Vec<(usize, Change)> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed_fa17);
    let mut out: Vec<(usize, Change)> = (0..rng.random_range(1..=4))
        .flat_map(|_| {
            let at = rng.random_range(0..len);
            if rng.random_bool(0.5) {
                vec![(at, Change::Once(rng.random_range(0..4)))]
            } else {
                // Failing from a point, healing some operations later.
                let heal = (at + rng.random_range(1..12)).min(len);
                vec![
                    (at, Change::From(rng.random_range(0..4))),
                    (heal, Change::Heal),
                ]
            }
        })
        .collect();
    out.sort_by_key(|(at, _)| *at);
    out
}

/// A change of the faults: fail the store's k-th next operation, fail
/// from its k-th next on, or stop failing.
#[derive(Clone, Copy, Debug)]
enum Change {
    Once(u64),
    From(u64),
    Heal,
}

#[test]
fn random_fault_schedules() {
    let n: u64 = std::env::var("GRANTWHEEL_FAULT_SCHEDULES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    for seed in 0..n {
        let ops = workload(seed, 60);
        let plan = schedule(seed, ops.len());
        let store = MemoryStore::new();
        let again = store.clone();
        let (store, faults) = FaultyStore::new(store);
        let clock = ManualClock::new(start());
        let mut next = 0;
        let m = run_scheduled(store, &clock, &ops, &mut |i| {
            while let Some((at, change)) = plan.get(next) {
                if *at != i {
                    break;
                }
                let now = faults.ops();
                faults.set(match change {
                    Change::Once(k) => Fault::Once(now + 1 + k),
                    Change::From(k) => Fault::From(now + 1 + k),
                    Change::Heal => Fault::None,
                });
                next += 1;
            }
        });
        let Some(m) = m else {
            continue;
        };
        assert_eq!(
            reopened(again, &clock),
            expected(&m, clock.now()),
            "schedule {seed}: {plan:?}"
        );
    }
}
