//! What each fuzz target checks, shared by the fuzz targets (`fuzz/`) and
//! by `tests/adversarial.rs`, which replays the seed corpora and every input
//! that ever failed.
//!
//! Each function takes arbitrary bytes and panics only when grantwheel
//! breaks a promise: a panic inside grantwheel, a grant nobody asked for,
//! an answer that differs from the model.

#![allow(dead_code, reason = "each test binary uses a part of it")]

use std::sync::OnceLock;

use arbitrary::{Arbitrary, Unstructured};
use chrono::{Duration, TimeZone, Utc};
use grantwheel::requests::automation::{AutomationEvent, Rule, RuleState, Trigger};
use grantwheel::requests::wire::ItemResponse;
use grantwheel::requests::{RequestId, RequestStatus, Sharing};
use grantwheel::store::MemoryStore;
#[cfg(feature = "sqlite")]
use grantwheel::store::SqliteStore;
use grantwheel::{
    ChangeError, Context, Engine, EntityId, Expiry, Grant, GrantId, Level, ManualClock,
    RevokeError, UserId,
};
use uuid::Uuid;

#[path = "common.rs"]
mod common;

use common::{context, entity, start, user, AccessModel};

fn engine() -> Engine {
    Engine::builder()
        .clock(ManualClock::new(start()))
        .build()
        .unwrap()
}

/// The share, revoke and status paths of the API, on one body.
pub fn requests(data: &[u8]) {
    let sharing = Sharing::new(engine());
    let completed = |responses: &[ItemResponse]| completed_in(&sharing, responses);
    match sharing.api_share(data) {
        Ok(responses) => {
            // Every grant comes from a completed request.
            assert!(sharing.engine().len() <= completed(&responses));
            for r in &responses {
                serde_json::to_string(r).unwrap();
            }
        }
        Err(e) => {
            assert!(
                sharing.engine().is_empty(),
                "a refused body shared nothing ({e})"
            );
            assert!(!e.to_string().is_empty());
        }
    }
    let before = sharing.engine().len();
    if let Ok(responses) = sharing.api_revoke(data) {
        assert_eq!(sharing.engine().len() + completed(&responses), before);
    } else {
        assert_eq!(sharing.engine().len(), before);
    }
    let fresh = Sharing::new(engine());
    if let Ok(responses) = fresh.api_submit_shares(data) {
        fresh.process(usize::MAX);
        assert!(fresh.engine().len() <= completed_in(&fresh, &responses));
    }
    // The status path: any text as a request id.
    if let Ok(text) = std::str::from_utf8(data) {
        let status = match text.trim().parse::<RequestId>() {
            Ok(id) => sharing.status_response(&id),
            Err(_) => sharing.status_response(&RequestId::random()),
        };
        serde_json::to_string(&status).unwrap();
    }
}

fn completed_in(sharing: &Sharing, responses: &[ItemResponse]) -> usize {
    responses
        .iter()
        .filter_map(|r| match r {
            ItemResponse::Success { message, .. } => message.id.parse::<RequestId>().ok(),
            _ => None,
        })
        .filter(|id| sharing.status(id).unwrap() == Some(RequestStatus::Completed))
        .count()
}

/// A rule's JSON, saved, published, and fed events of every trigger.
pub fn rules(data: &[u8]) {
    let Ok(rule) = serde_json::from_slice::<Rule>(data) else {
        // Maybe an event: feed it to a rule that always matches its kind.
        if let Ok(event) = serde_json::from_slice::<AutomationEvent>(data) {
            let sharing = Sharing::new(engine());
            let ids = sharing.on_event(&event);
            sharing.process(usize::MAX);
            assert!(ids.is_empty(), "no rules, no requests");
            assert!(sharing.engine().is_empty());
        }
        return;
    };
    let sharing = Sharing::new(engine());
    let id = sharing.add_rule(rule.clone()).unwrap();
    match sharing.publish_rule(id) {
        Ok(()) => assert_eq!(sharing.rule(id).unwrap().state, RuleState::Published),
        Err(e) => {
            assert!(e.field().is_some(), "a refused rule names the field: {e}");
            assert_eq!(sharing.rule(id).unwrap().state, RuleState::Draft);
        }
    }
    let triggers = [
        Trigger::EntityCreated,
        Trigger::EntityUpdated,
        Trigger::ActivityPosted,
        Trigger::ActivityUpdated,
        Trigger::TaskCreated,
        Trigger::TaskCompleted,
        Trigger::TaskReminder,
    ];
    let mut requests = 0;
    for (i, trigger) in triggers.into_iter().enumerate() {
        let event = AutomationEvent {
            id: format!("event-{i}"),
            trigger,
            entity: EntityId::new(rule.entity_kind, grantwheel::EntityRef::Number(7)),
            activity: Some((Uuid::from_u128(1), UserId::from_u128(2))),
            task: Some((Uuid::from_u128(3), UserId::from_u128(4))),
            fields: rule
                .conditions
                .iter()
                .map(|c| (c.field.clone(), c.value.clone()))
                .collect(),
        };
        requests += sharing.on_event(&event).len();
        // The same event again: no new request.
        assert_eq!(
            sharing.on_event(&event).len(),
            sharing.on_event(&event).len()
        );
    }
    sharing.process(usize::MAX);
    assert!(sharing.engine().len() <= requests);
    for g in sharing.engine().entity_grants(&EntityId::new(
        rule.entity_kind,
        grantwheel::EntityRef::Number(7),
    )) {
        // No rule outlasts the engine's maximum.
        assert!(g.expires_at <= sharing.engine().now() + sharing.engine().max_duration());
    }
    assert!(sharing.remove_rule(id).unwrap().is_some());
}

/// One step of an operation sequence.
#[derive(Arbitrary, Debug)]
pub enum Op {
    /// Share (user, entity, context), edit or read, for minutes.
    Share(u8, u8, u8, bool, i32),
    /// Revoke by id (a stale id when the flag is set).
    Revoke(u8, u8, u8, bool),
    /// Revoke through a context.
    RevokeContext(u8, u8, u8),
    /// Revoke a pair.
    RevokePair(u8, u8),
    /// Revoke a user.
    RevokeUser(u8),
    /// Move the expiry by minutes.
    Extend(u8, u8, u8, i32),
    /// Move the clock by minutes (back too), maybe reclaim.
    Clock(i16, bool),
    /// Drop the engine and load it again from its store.
    Restart,
}

const MAX_MS: i64 = 3660 * 86_400_000;
/// Bounded operations applied to the engine (over a memory store) and to
/// a plain map; every answer must agree after every step.
pub fn ops(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(ops) = u
        .arbitrary_iter::<Op>()
        .and_then(|it| it.take(64).collect::<Result<Vec<_>, _>>())
    else {
        return;
    };
    let clock = ManualClock::new(start());
    let store = MemoryStore::new();
    let build = || {
        Engine::builder()
            .clock(clock.clone())
            .store(store.clone())
            .build()
            .unwrap()
    };
    let mut engine = build();
    let mut model = AccessModel::default();
    let at = |ms: i64| Utc.timestamp_millis_opt(ms).unwrap();
    let mut clock_ms = start().timestamp_millis();
    let mut now = clock_ms;
    let key = |a: u8, b: u8, c: u8| (usize::from(a) % 3, usize::from(b) % 3, usize::from(c) % 2);
    for op in ops {
        match op {
            Op::Share(a, b, c, edit, minutes) => {
                let k = key(a, b, c);
                let d = i64::from(minutes) * 60_000;
                let level = if edit { Level::Edit } else { Level::Read };
                let got = engine.share(
                    user(k.0),
                    entity(k.1),
                    context(k.2),
                    level,
                    Expiry::After(Duration::milliseconds(d)),
                );
                if d <= 0 || d > MAX_MS {
                    assert_eq!(got.unwrap_err().field(), Some("duration"));
                } else {
                    let g = got.unwrap();
                    assert_eq!(g.expires_at.timestamp_millis(), now + d);
                    model.share(k, g);
                }
            }
            Op::Revoke(a, b, c, stale) => {
                let k = key(a, b, c);
                let (id, want) = match (model.live(&k, at(now)), stale) {
                    (Some(g), false) => (g.id, Some(g)),
                    (Some(g), true) => (
                        GrantId {
                            serial: g.id.serial + 1000,
                            ..g.id
                        },
                        None,
                    ),
                    (None, _) => (
                        GrantId {
                            user: user(k.0),
                            entity: entity(k.1),
                            context: context(k.2),
                            serial: 99_999,
                        },
                        None,
                    ),
                };
                match (engine.revoke(&id), want) {
                    (Ok(g), Some(w)) => {
                        assert_eq!(g, w);
                        model.grants.remove(&k);
                    }
                    (Err(RevokeError::NotLive(_)), None) => {}
                    (got, want) => panic!("revoke {id:?}: got {got:?}, want {want:?}"),
                }
            }
            Op::RevokeContext(a, b, c) => {
                let k = key(a, b, c);
                let got = engine
                    .revoke_via(&user(k.0), &entity(k.1), &context(k.2))
                    .unwrap();
                assert_eq!(got, model.live(&k, at(now)));
                model.grants.remove(&k);
            }
            Op::RevokePair(a, b) => {
                let (ui, ei) = (usize::from(a) % 3, usize::from(b) % 3);
                let got = engine.revoke_pair(&user(ui), &entity(ei)).unwrap();
                let n = model.revoke_where(at(now), |k| k.0 == ui && k.1 == ei);
                assert_eq!(got.len(), n);
            }
            Op::RevokeUser(a) => {
                let ui = usize::from(a) % 3;
                let got = engine.revoke_user(&user(ui)).unwrap();
                let n = model.revoke_where(at(now), |k| k.0 == ui);
                assert_eq!(got.len(), n);
            }
            Op::Extend(a, b, c, minutes) => {
                let k = key(a, b, c);
                let by = i64::from(minutes) * 60_000;
                match model.live(&k, at(now)) {
                    None => {
                        let id = model.grants.get(&k).map(|g| g.id).unwrap_or(GrantId {
                            user: user(k.0),
                            entity: entity(k.1),
                            context: context(k.2),
                            serial: 99_999,
                        });
                        assert!(matches!(
                            engine.extend(&id, Duration::milliseconds(by)),
                            Err(ChangeError::NotLive(_))
                        ));
                    }
                    Some(g) => {
                        let target = g.expires_at.timestamp_millis() + by;
                        let got = engine.extend(&g.id, Duration::milliseconds(by));
                        if target > now && target - now <= MAX_MS {
                            let got = got.unwrap();
                            assert_eq!(got.expires_at.timestamp_millis(), target);
                            model.share(k, got);
                        } else {
                            assert_eq!(got.unwrap_err().field(), Some("by"));
                        }
                    }
                }
            }
            Op::Clock(minutes, advance) => {
                clock_ms += i64::from(minutes) * 60_000;
                clock.set(Utc.timestamp_millis_opt(clock_ms).unwrap());
                now = now.max(clock_ms);
                if advance {
                    engine.advance();
                }
            }
            Op::Restart => {
                drop(engine);
                engine = build();
            }
        }
        assert_eq!(engine.now().timestamp_millis(), now);
        for ui in 0..3 {
            for ei in 0..3 {
                let (read, edit) = model.access(ui, ei, at(now));
                assert_eq!(
                    engine.can_read(&user(ui), &entity(ei)),
                    read,
                    "read ({ui}, {ei})"
                );
                assert_eq!(
                    engine.can_edit(&user(ui), &entity(ei)),
                    edit,
                    "edit ({ui}, {ei})"
                );
            }
        }
    }
}

#[cfg(feature = "sqlite")]
/// The grants of the pristine database, and its bytes.
fn pristine() -> &'static (Vec<Grant>, Vec<u8>) {
    static PRISTINE: OnceLock<(Vec<Grant>, Vec<u8>)> = OnceLock::new();
    PRISTINE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pristine.db");
        let mut grants = Vec::new();
        {
            let engine = Engine::builder()
                .clock(ManualClock::new(start()))
                .store(SqliteStore::open(&path).unwrap())
                .build()
                .unwrap();
            let sharing = Sharing::new(engine.clone());
            for i in 0..24u64 {
                let g = engine
                    .share(
                        user((i % 3) as usize),
                        EntityId::lead(i),
                        if i % 2 == 0 {
                            Context::Direct
                        } else {
                            Context::Activity(Uuid::from_u128(i as u128))
                        },
                        if i % 3 == 0 { Level::Edit } else { Level::Read },
                        Expiry::After(Duration::hours(1 + i as i64)),
                    )
                    .unwrap();
                grants.push(g);
            }
            sharing.share(grantwheel::requests::ShareRequest::new(
                user(0),
                EntityId::lead(99),
                Level::Read,
            ));
            grants.extend(engine.pair_grants(&user(0), &EntityId::lead(99)));
        }
        (grants, std::fs::read(&path).unwrap())
    })
}

/// A valid database damaged by the input (byte edits or a cut), opened.
#[cfg(feature = "sqlite")]
pub fn store_recovery(data: &[u8]) {
    let (grants, bytes) = pristine();
    let mut damaged = bytes.clone();
    let len = damaged.len();
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let at = (usize::from(c[0]) << 16 | usize::from(c[1]) << 8 | usize::from(c[2])) % len;
        match c[3] {
            0 => damaged.truncate(at.max(1)),
            x => {
                if let Some(b) = damaged.get_mut(at) {
                    *b ^= x;
                }
            }
        }
    }
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    let dir = DIR.get_or_init(|| tempfile::tempdir().unwrap());
    let path = dir
        .path()
        .join(format!("damaged-{:?}.db", std::thread::current().id()));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    std::fs::write(&path, &damaged).unwrap();
    let Ok(store) = SqliteStore::open(&path) else {
        return;
    };
    let Ok(engine) = Engine::builder()
        .clock(ManualClock::new(start()))
        .store(store)
        .build()
    else {
        return;
    };
    // Loaded: every grant it holds is one the database had, unchanged.
    // Listings by user come from the store's indexes, which damage can
    // leave short (rows carry a checksum, index entries do not): whatever
    // they list must be real, and the engine's own pairs must hold only
    // real grants.
    for u in 0..3 {
        for g in engine.user_grants(&user(u)) {
            assert!(grants.contains(&g), "a grant that was never given: {g:?}");
        }
    }
    let mut pairs: Vec<(UserId, EntityId)> =
        grants.iter().map(|g| (g.id.user, g.id.entity)).collect();
    pairs.sort();
    pairs.dedup();
    let mut seen = 0;
    for (u, e) in pairs {
        for g in engine.pair_grants(&u, &e) {
            assert!(grants.contains(&g), "a grant that was never given: {g:?}");
            seen += 1;
        }
    }
    assert_eq!(seen, engine.len(), "grants for users never shared with");
    // And it keeps working.
    let g = engine.share(
        user(0),
        EntityId::lead(1_000),
        Context::Direct,
        Level::Read,
        Expiry::Default,
    );
    if let Ok(g) = g {
        assert!(engine.can_read(&g.id.user, &g.id.entity));
    }
}
