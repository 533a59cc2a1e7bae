//! Readers checking while writers share, revoke, grow the tables and move
//! time: no check may see a grant after its revoke returned, none may see
//! one past its expiry or before its start, and no answer may be torn
//! between two states.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use chrono::{Duration, TimeZone, Utc};
use grantwheel::{
    Clock, Context, Engine, EntityId, Expiry, Level, ManualClock, ShareSpec, Start, UserId,
};

const PAIRS: usize = 8;
const CYCLES: u64 = 20_000;

/// Phases of a pair, published by the writer around its calls.
const SHARING: u64 = 0;
const SHARED: u64 = 1;
const REVOKING: u64 = 2;
const REVOKED: u64 = 3;

fn pair(i: usize) -> (UserId, EntityId) {
    (
        UserId::from_u128(0xabc0 + i as u128),
        EntityId::lead(i as u64),
    )
}

#[test]
fn checks_never_outlive_revokes_or_expiries_and_are_never_torn() {
    let start = Utc.with_ymd_and_hms(2026, 11, 22, 0, 0, 0).unwrap();
    let clock = ManualClock::new(start);
    let engine = Engine::builder()
        .clock(clock.clone())
        .tick(Duration::milliseconds(1))
        .build()
        .unwrap();
    let phases: Arc<Vec<AtomicU64>> =
        Arc::new((0..PAIRS).map(|_| AtomicU64::new(REVOKED)).collect());
    let done = Arc::new(AtomicBool::new(false));
    // Grants that expire one after another as the clock moves: (user, expiry ms).
    let expiring: Vec<(UserId, i64)> = (0..200)
        .map(|i| {
            (
                UserId::from_u128(0xe000 + i),
                start.timestamp_millis() + 5 + i as i64 * 7,
            )
        })
        .collect();
    let timed = EntityId::opportunity(1);
    for (u, at) in &expiring {
        let at = Utc.timestamp_millis_opt(*at).unwrap();
        engine
            .share(*u, timed, Context::Direct, Level::Edit, Expiry::At(at))
            .unwrap();
    }

    let mut threads = Vec::new();
    // Readers.
    for r in 0..2 {
        let (engine, phases, done, clock, expiring) = (
            engine.clone(),
            phases.clone(),
            done.clone(),
            clock.clone(),
            expiring.clone(),
        );
        threads.push(std::thread::spawn(move || {
            let mut checks = 0u64;
            let mut i = r;
            while !done.load(Ordering::Acquire) {
                i = (i + 1) % PAIRS;
                let (u, e) = pair(i);
                let before = phases[i].load(Ordering::Acquire);
                let read = engine.can_read(&u, &e);
                let access = engine.access(&u, &e);
                let after = phases[i].load(Ordering::Acquire);
                if before == after {
                    let phase = before % 4;
                    if phase == REVOKED {
                        assert!(!read, "pair {i} readable after its revoke returned");
                        assert!(access.is_none());
                    }
                    if phase == SHARED {
                        assert!(read, "pair {i} unreadable while shared");
                    }
                }
                if let Some(a) = access {
                    assert!(a.read_until >= a.until, "torn summary {a:?}");
                }
                let (u, at) = expiring[i * 25 % expiring.len()];
                let now = clock.now_millis();
                let ok = engine.can_edit(&u, &timed);
                if now >= at {
                    assert!(!ok, "grant readable {} ms after its expiry", now - at);
                }
                checks += 1;
            }
            checks
        }));
    }
    // A writer that shares and revokes the watched pairs, and fills the
    // index with other pairs so its tables are rebuilt under the readers.
    {
        let (engine, phases) = (engine.clone(), phases.clone());
        threads.push(std::thread::spawn(move || {
            for cycle in 0..CYCLES {
                let i = (cycle as usize) % PAIRS;
                let (u, e) = pair(i);
                let base = phases[i].load(Ordering::Relaxed) + 1;
                phases[i].store(base + SHARING, Ordering::Release);
                let level = if cycle % 2 == 0 {
                    Level::Edit
                } else {
                    Level::Read
                };
                engine
                    .share(
                        u,
                        e,
                        Context::Direct,
                        level,
                        Expiry::After(Duration::days(1)),
                    )
                    .unwrap();
                phases[i].store(base + SHARED, Ordering::Release);
                engine
                    .share(
                        UserId::from_u128(u128::from(cycle) << 32),
                        e,
                        Context::Direct,
                        Level::Read,
                        Expiry::Default,
                    )
                    .unwrap();
                phases[i].store(base + REVOKING, Ordering::Release);
                let gone = engine.revoke_pair(&u, &e).unwrap();
                assert_eq!(gone.len(), 1);
                phases[i].store(base + REVOKED, Ordering::Release);
            }
            0
        }));
    }
    // Time moves and the wheel reclaims.
    {
        let (engine, clock) = (engine.clone(), clock.clone());
        threads.push(std::thread::spawn(move || {
            for _ in 0..2_000 {
                clock.advance(Duration::milliseconds(1));
                engine.advance();
            }
            0
        }));
    }
    let time = threads.pop().unwrap();
    let writer = threads.pop().unwrap();
    writer.join().unwrap();
    time.join().unwrap();
    done.store(true, Ordering::Release);
    let checks: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(checks > 0);
    // Every expiring grant has expired and been reclaimed.
    engine.advance();
    for (u, _) in &expiring {
        assert!(!engine.can_read(u, &timed));
    }
    assert_eq!(engine.len(), CYCLES as usize);
}

/// Phases of a pair in the scheduled test (a call in progress has a phase
/// of its own: its effect may be seen before it returns).
const SCHEDULING: u64 = 0;
const SCHEDULED: u64 = 1;
const STARTING: u64 = 2;
const STARTED: u64 = 3;
const ENDING: u64 = 4;
const ENDED: u64 = 5;
const PHASES: u64 = 6;

#[test]
fn checks_never_see_a_grant_before_its_start() {
    let t0 = Utc.with_ymd_and_hms(2026, 11, 22, 0, 0, 0).unwrap();
    let clock = ManualClock::new(t0);
    let engine = Engine::builder()
        .clock(clock.clone())
        .tick(Duration::milliseconds(1))
        .build()
        .unwrap();
    let phases: Arc<Vec<AtomicU64>> = Arc::new((0..PAIRS).map(|_| AtomicU64::new(ENDED)).collect());
    let done = Arc::new(AtomicBool::new(false));
    // Grants that start one after another as the clock moves: (user, start ms).
    let starting: Vec<(UserId, i64)> = (0..200)
        .map(|i| {
            (
                UserId::from_u128(0xf000 + i),
                t0.timestamp_millis() + 5 + i as i64 * 7,
            )
        })
        .collect();
    let timed = EntityId::opportunity(2);
    for (u, at) in &starting {
        let at = Utc.timestamp_millis_opt(*at).unwrap();
        engine
            .share_spec(
                ShareSpec::new(*u, timed, Level::Edit)
                    .start(Start::At(at))
                    .expiry(Expiry::After(Duration::days(1))),
            )
            .unwrap();
    }

    let mut threads = Vec::new();
    for r in 0..2 {
        let (engine, phases, done, clock, starting) = (
            engine.clone(),
            phases.clone(),
            done.clone(),
            clock.clone(),
            starting.clone(),
        );
        threads.push(std::thread::spawn(move || {
            let mut checks = 0u64;
            let mut i = r;
            while !done.load(Ordering::Acquire) {
                i = (i + 1) % PAIRS;
                let (u, e) = pair(i);
                let before = phases[i].load(Ordering::Acquire);
                let read = engine.can_read(&u, &e);
                let after = phases[i].load(Ordering::Acquire);
                if before == after {
                    match before % PHASES {
                        SCHEDULED => assert!(!read, "pair {i} readable before its start"),
                        ENDED => assert!(!read, "pair {i} readable after its revoke returned"),
                        STARTED => assert!(read, "pair {i} unreadable after set_start returned"),
                        _ => {}
                    }
                }
                // The clock read after the check is at least the engine's
                // time when the grant was published: never before its start.
                let (u, at) = starting[i * 25 % starting.len()];
                let ok = engine.can_edit(&u, &timed);
                let now = clock.now_millis();
                if ok {
                    assert!(now >= at, "grant readable {} ms before its start", at - now);
                }
                checks += 1;
            }
            checks
        }));
    }
    // A writer that schedules the watched pairs far ahead, starts them,
    // revokes them, and grows the index under the readers.
    {
        let (engine, phases) = (engine.clone(), phases.clone());
        threads.push(std::thread::spawn(move || {
            for cycle in 0..CYCLES / 2 {
                let i = (cycle as usize) % PAIRS;
                let (u, e) = pair(i);
                let base = phases[i].load(Ordering::Relaxed) + 1;
                phases[i].store(base + SCHEDULING, Ordering::Release);
                let level = if cycle % 2 == 0 {
                    Level::Edit
                } else {
                    Level::Read
                };
                let g = engine
                    .share_spec(ShareSpec::new(u, e, level).start(Start::After(Duration::days(30))))
                    .unwrap();
                phases[i].store(base + SCHEDULED, Ordering::Release);
                engine
                    .share(
                        UserId::from_u128(u128::from(cycle) << 32),
                        e,
                        Context::Direct,
                        Level::Read,
                        Expiry::Default,
                    )
                    .unwrap();
                if cycle % 3 == 0 {
                    // Revoked before it ever started.
                    phases[i].store(base + ENDING, Ordering::Release);
                    engine.revoke(&g.id).unwrap();
                    phases[i].store(base + ENDED, Ordering::Release);
                    continue;
                }
                phases[i].store(base + STARTING, Ordering::Release);
                engine.set_start(&g.id, Start::Now).unwrap();
                phases[i].store(base + STARTED, Ordering::Release);
                engine
                    .share(
                        UserId::from_u128(u128::from(cycle) << 32 | 1),
                        e,
                        Context::Direct,
                        Level::Read,
                        Expiry::Default,
                    )
                    .unwrap();
                phases[i].store(base + ENDING, Ordering::Release);
                let gone = engine.revoke_pair(&u, &e).unwrap();
                assert_eq!(gone.len(), 1);
                phases[i].store(base + ENDED, Ordering::Release);
            }
            0
        }));
    }
    {
        let (engine, clock) = (engine.clone(), clock.clone());
        threads.push(std::thread::spawn(move || {
            for _ in 0..2_000 {
                clock.advance(Duration::milliseconds(1));
                engine.advance();
            }
            0
        }));
    }
    let time = threads.pop().unwrap();
    let writer = threads.pop().unwrap();
    writer.join().unwrap();
    time.join().unwrap();
    done.store(true, Ordering::Release);
    let checks: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(checks > 0);
    // Every scheduled grant has started by now.
    engine.advance();
    for (u, _) in &starting {
        assert!(engine.can_edit(u, &timed));
    }
    assert!(engine.scheduled_on(&timed).is_empty());
}

/// Phases of a held share, published by the writer around its calls.
const HOLDING: u64 = 0;
const HELD: u64 = 1;
const DECIDING: u64 = 2;
const DENIED: u64 = 3;
const APPROVED: u64 = 4;
const APPROVAL_PHASES: u64 = 5;

/// Two threads checking the watched pairs while a writer publishes their
/// phases: no while held or refused, yes once the decision that grants
/// (an approval, a confirmed start) returned. Each returns its count.
fn decision_readers(
    engine: &Engine,
    phases: &Arc<Vec<AtomicU64>>,
    done: &Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<u64>> {
    // The writer starts once both readers run, so they check while it
    // works however busy the machine is.
    let started = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let readers: Vec<_> = (0..2)
        .map(|r| {
            let (engine, phases, done) = (engine.clone(), phases.clone(), done.clone());
            let started = started.clone();
            std::thread::spawn(move || {
                let mut checks = 0u64;
                let mut i = r;
                started.fetch_add(1, Ordering::AcqRel);
                while !done.load(Ordering::Acquire) {
                    i = (i + 1) % PAIRS;
                    let (u, e) = pair(i);
                    let before = phases[i].load(Ordering::Acquire);
                    let read = engine.can_read(&u, &e);
                    let after = phases[i].load(Ordering::Acquire);
                    if before == after {
                        match before % APPROVAL_PHASES {
                            HELD | DENIED => {
                                assert!(!read, "pair {i} readable before it was granted")
                            }
                            APPROVED => assert!(read, "pair {i} unreadable after it was granted"),
                            _ => {}
                        }
                    }
                    checks += 1;
                }
                checks
            })
        })
        .collect();
    while started.load(Ordering::Acquire) < readers.len() {
        std::thread::yield_now();
    }
    readers
}

#[test]
fn checks_never_see_a_share_before_its_approval() {
    use grantwheel::requests::{
        ApprovalRules, RequestStatus, RevokeRequest, ShareRequest, Sharing,
    };
    let t0 = Utc.with_ymd_and_hms(2026, 11, 22, 0, 0, 0).unwrap();
    let clock = ManualClock::new(t0);
    let engine = Engine::builder().clock(clock.clone()).build().unwrap();
    let sharing = Sharing::builder(engine)
        .approvals(
            ApprovalRules {
                edit: true,
                ..ApprovalRules::default()
            },
            Duration::hours(1),
        )
        .build()
        .unwrap();
    let phases: Arc<Vec<AtomicU64>> =
        Arc::new((0..PAIRS).map(|_| AtomicU64::new(DENIED)).collect());
    let done = Arc::new(AtomicBool::new(false));
    let readers = decision_readers(sharing.engine(), &phases, &done);
    let boss = UserId::from_u128(0xb055);
    let rival = UserId::from_u128(0xb056);
    for cycle in 0..2_000u64 {
        let i = (cycle as usize) % PAIRS;
        let (u, e) = pair(i);
        let base = phases[i].load(Ordering::Relaxed) + 1;
        let base = base + (APPROVAL_PHASES - base % APPROVAL_PHASES) % APPROVAL_PHASES;
        phases[i].store(base + HOLDING, Ordering::Release);
        let asked = sharing.share(ShareRequest::new(u, e, Level::Edit));
        assert_eq!(asked.status, RequestStatus::Processing);
        phases[i].store(base + HELD, Ordering::Release);
        phases[i].store(base + DECIDING, Ordering::Release);
        match cycle % 3 {
            0 => {
                sharing.deny(&asked.request, boss, None).unwrap();
                phases[i].store(base + DENIED, Ordering::Release);
            }
            1 => {
                // Nobody acted in time: it fails, and never grants.
                clock.advance(Duration::hours(1));
                assert_eq!(sharing.expire_approvals().unwrap(), 1);
                phases[i].store(base + DENIED, Ordering::Release);
            }
            _ => {
                // Two approvers at once: exactly one decides.
                let (a, b) = std::thread::scope(|s| {
                    let a = s.spawn(|| sharing.approve(&asked.request, boss, None));
                    let b = s.spawn(|| sharing.approve(&asked.request, rival, None));
                    (a.join().unwrap(), b.join().unwrap())
                });
                assert!(a.is_ok() != b.is_ok(), "{a:?} {b:?}");
                phases[i].store(base + APPROVED, Ordering::Release);
                assert!(sharing.engine().can_edit(&u, &e));
                phases[i].store(base + DECIDING, Ordering::Release);
                let out = sharing.revoke(RevokeRequest {
                    user: u,
                    entity: e,
                    context: Context::Direct,
                    level: Level::Edit,
                });
                assert_eq!(out.status, RequestStatus::Completed);
                phases[i].store(base + DENIED, Ordering::Release);
            }
        }
    }
    done.store(true, Ordering::Release);
    let checks: u64 = readers.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(checks > 0);
}

#[test]
fn checks_never_see_a_held_start_before_it_is_confirmed() {
    let t0 = Utc.with_ymd_and_hms(2026, 11, 22, 0, 0, 0).unwrap();
    let clock = ManualClock::new(t0);
    let engine = Engine::builder()
        .clock(clock.clone())
        .tick(Duration::milliseconds(1))
        .confirm_starts(true)
        .build()
        .unwrap();
    let phases: Arc<Vec<AtomicU64>> =
        Arc::new((0..PAIRS).map(|_| AtomicU64::new(DENIED)).collect());
    let done = Arc::new(AtomicBool::new(false));
    let readers = decision_readers(&engine, &phases, &done);
    for cycle in 0..4_000u64 {
        let i = (cycle as usize) % PAIRS;
        let (u, e) = pair(i);
        let base = phases[i].load(Ordering::Relaxed) + 1;
        let base = base + (APPROVAL_PHASES - base % APPROVAL_PHASES) % APPROVAL_PHASES;
        phases[i].store(base + HOLDING, Ordering::Release);
        let g = engine
            .share_spec(
                ShareSpec::new(u, e, Level::Edit)
                    .start(Start::After(Duration::milliseconds(1)))
                    .expiry(Expiry::After(Duration::days(1))),
            )
            .unwrap();
        clock.advance(Duration::milliseconds(1));
        engine.advance();
        assert!(engine.due_starts().iter().any(|d| d.id == g.id));
        phases[i].store(base + HELD, Ordering::Release);
        phases[i].store(base + DECIDING, Ordering::Release);
        if cycle % 2 == 0 {
            engine.confirm_start(&g.id).unwrap();
            phases[i].store(base + APPROVED, Ordering::Release);
            phases[i].store(base + DECIDING, Ordering::Release);
        }
        engine.revoke(&g.id).unwrap();
        phases[i].store(base + DENIED, Ordering::Release);
    }
    done.store(true, Ordering::Release);
    let checks: u64 = readers.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(checks > 0);
    assert!(engine.due_starts().is_empty());
}
