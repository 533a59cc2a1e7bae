//! Grants that start later: hidden from checks until the wheel reaches
//! their start, held (listed apart, movable, revocable) before then, and
//! kept across restarts.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, TimeZone, Utc};
use grantwheel::store::MemoryStore;
#[cfg(feature = "sqlite")]
use grantwheel::store::SqliteStore;
use grantwheel::{
    ChangeError, Engine, EntityId, Event, Expiry, Level, ManualClock, RepeatShare, RevokeReason,
    ShareError, ShareSpec, Start, UserId,
};

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 7, 9, 0, 0).unwrap()
}

fn pair(i: u64) -> (UserId, EntityId) {
    (UserId::from_u128(0x700 + u128::from(i)), EntityId::lead(i))
}

fn recorder(engine: &Engine) -> Arc<Mutex<Vec<Event>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    engine.subscribe(move |e: &Event| sink.lock().unwrap().push(e.clone()));
    seen
}

fn taken(seen: &Arc<Mutex<Vec<Event>>>) -> Vec<Event> {
    std::mem::take(&mut *seen.lock().unwrap())
}

fn later(u: UserId, e: EntityId, start: Start, expiry: Expiry) -> ShareSpec {
    ShareSpec::new(u, e, Level::Edit)
        .start(start)
        .expiry(expiry)
}

#[test]
fn access_begins_at_the_first_tick_at_or_after_the_start_never_before() {
    let clock = ManualClock::new(t0());
    let engine = Engine::builder()
        .clock(clock.clone())
        .tick(Duration::seconds(1))
        .build()
        .unwrap();
    let seen = recorder(&engine);
    let (u, e) = pair(1);
    let start = t0() + Duration::milliseconds(2_500);
    let g = engine
        .share_spec(later(
            u,
            e,
            Start::At(start),
            Expiry::After(Duration::hours(1)),
        ))
        .unwrap();
    assert_eq!(g.starts_at, Some(start));
    assert_eq!(
        g.expires_at,
        start + Duration::hours(1),
        "counted from the start"
    );
    assert_eq!(taken(&seen), vec![Event::Granted(g)]);
    assert!(!engine.can_read(&u, &e) && engine.access(&u, &e).is_none());

    // At the start, inside the tick: the wheel has not reached it.
    clock.set(start);
    engine.advance();
    assert!(!engine.can_read(&u, &e), "a lagging wheel delays access");
    assert!(taken(&seen).is_empty());
    // The start's tick (rounded up): access from here on.
    clock.set(t0() + Duration::seconds(3));
    engine.advance();
    assert!(engine.can_edit(&u, &e));
    assert_eq!(taken(&seen), vec![Event::Started(g)]);
    assert_eq!(engine.user_grants(&u), vec![g], "it keeps its start");
    assert!(engine.scheduled_of(&u).is_empty());
}

#[test]
fn scheduled_grants_are_listed_apart_and_can_be_moved_extended_and_revoked() {
    let clock = ManualClock::new(t0());
    let engine = Engine::builder().clock(clock.clone()).build().unwrap();
    let seen = recorder(&engine);
    let (u, e) = pair(2);
    let now_grant = engine
        .share_spec(ShareSpec::new(u, EntityId::lead(99), Level::Read))
        .unwrap();
    let g = engine
        .share_spec(later(
            u,
            e,
            Start::After(Duration::days(7)),
            Expiry::After(Duration::days(2)),
        ))
        .unwrap();
    let start = t0() + Duration::days(7);
    assert_eq!(engine.user_grants(&u), vec![now_grant]);
    assert_eq!(engine.scheduled_of(&u), vec![g]);
    assert_eq!(engine.scheduled_on(&e), vec![g]);
    assert!(engine.entity_grants(&e).is_empty() && engine.pair_grants(&u, &e).is_empty());
    assert!(engine
        .expiring_within(Duration::days(30))
        .iter()
        .all(|x| x.id != g.id));

    // An expiry is counted from the start: before it is refused, by name.
    let err = engine.extend(&g.id, Duration::days(-3)).unwrap_err();
    assert_eq!(err.field(), Some("by"));
    assert!(err.to_string().contains("its start"), "{err}");
    let err = engine.set_expiry(&g.id, Expiry::At(start)).unwrap_err();
    assert_eq!(err.field(), Some("expires_at"));
    let longer = engine.extend(&g.id, Duration::days(1)).unwrap();
    assert_eq!(longer.expires_at, start + Duration::days(3));
    assert_eq!(longer.starts_at, Some(start));

    // Moving keeps the length.
    let moved = engine
        .set_start(&g.id, Start::At(t0() + Duration::days(1)))
        .unwrap();
    assert_eq!(moved.starts_at, Some(t0() + Duration::days(1)));
    assert_eq!(moved.expires_at, t0() + Duration::days(4));
    assert!(!engine.can_read(&u, &e));
    taken(&seen);

    // Revoked before it starts: it never answers yes.
    let gone = engine.revoke(&g.id).unwrap();
    assert_eq!(gone, moved);
    assert_eq!(
        taken(&seen),
        vec![Event::Revoked {
            grant: moved,
            reason: RevokeReason::Requested
        }]
    );
    clock.set(t0() + Duration::days(2));
    engine.advance();
    assert!(!engine.can_read(&u, &e));
    assert!(engine.scheduled_of(&u).is_empty());
    assert_eq!(taken(&seen), vec![], "nothing starts");
}

#[test]
fn set_start_now_starts_at_once_and_a_started_grant_cannot_be_moved() {
    let (clock, engine) = {
        let clock = ManualClock::new(t0());
        let engine = Engine::builder().clock(clock.clone()).build().unwrap();
        (clock, engine)
    };
    let seen = recorder(&engine);
    let (u, e) = pair(3);
    let g = engine
        .share_spec(later(
            u,
            e,
            Start::After(Duration::hours(5)),
            Expiry::After(Duration::hours(1)),
        ))
        .unwrap();
    clock.advance(Duration::minutes(10));
    taken(&seen);
    let now = engine.set_start(&g.id, Start::Now).unwrap();
    assert!(engine.can_edit(&u, &e));
    assert_eq!(now.starts_at, Some(engine.now()));
    assert_eq!(now.expires_at, engine.now() + Duration::hours(1));
    assert_eq!(
        taken(&seen),
        vec![
            Event::ExpiryChanged {
                grant: now,
                previous_expiry: g.expires_at
            },
            Event::Started(now)
        ]
    );
    let err = engine.set_start(&g.id, Start::Now).unwrap_err();
    assert_eq!(err.field(), Some("starts_at"));
    // A grant made to start now has no start to move either.
    let plain = engine
        .share_spec(ShareSpec::new(u, EntityId::lead(77), Level::Read))
        .unwrap();
    assert_eq!(plain.starts_at, None);
    assert!(matches!(
        engine.set_start(&plain.id, Start::After(Duration::hours(1))),
        Err(ChangeError::Invalid(_))
    ));
}

#[test]
fn bad_starts_are_refused_by_field_and_nothing_is_held() {
    let engine = Engine::new();
    let (u, e) = pair(4);
    let refused = |spec: ShareSpec| match engine.share_spec(spec) {
        Err(ShareError::Invalid(a)) => a.field(),
        other => panic!("expected a refusal, got {other:?}"),
    };
    assert_eq!(
        refused(later(
            u,
            e,
            Start::After(Duration::seconds(-1)),
            Expiry::Default
        )),
        "starts_in"
    );
    let far = DateTime::<Utc>::MAX_UTC;
    assert_eq!(
        refused(later(u, e, Start::At(far), Expiry::Default)),
        "starts_at"
    );
    let start = engine.now() + Duration::days(1);
    assert_eq!(
        refused(later(u, e, Start::At(start), Expiry::At(start))),
        "expires_at"
    );
    assert!(engine.scheduled_of(&u).is_empty() && engine.is_empty());
    // A start in the past is now.
    let past = engine
        .share_spec(later(
            u,
            e,
            Start::At(engine.now() - Duration::days(1)),
            Expiry::Default,
        ))
        .unwrap();
    assert_eq!(past.starts_at, None);
    assert!(engine.can_edit(&u, &e));
}

#[test]
fn a_repeat_share_moves_a_scheduled_grant_to_the_earlier_start() {
    let clock = ManualClock::new(t0());
    let engine = Engine::builder()
        .clock(clock.clone())
        .repeat_share(RepeatShare::KeepLater)
        .build()
        .unwrap();
    let (u, e) = pair(5);
    let g = engine
        .share_spec(later(
            u,
            e,
            Start::After(Duration::days(3)),
            Expiry::After(Duration::days(1)),
        ))
        .unwrap();
    let earlier = engine
        .share_spec(later(
            u,
            e,
            Start::After(Duration::days(1)),
            Expiry::After(Duration::hours(1)),
        ))
        .unwrap();
    assert_eq!(earlier.id, g.id, "one grant covers both");
    assert_eq!(earlier.starts_at, Some(t0() + Duration::days(1)));
    assert_eq!(earlier.expires_at, g.expires_at, "the later end stays");
    assert!(!engine.can_read(&u, &e));
    let now = engine
        .share_spec(ShareSpec::new(u, e, Level::Read).expiry(Expiry::After(Duration::hours(1))))
        .unwrap();
    assert_eq!(now.starts_at, Some(t0()));
    assert!(engine.can_edit(&u, &e), "a share starting now starts it");
}

#[test]
fn a_clock_that_jumps_back_or_past_the_whole_window_never_grants() {
    let clock = ManualClock::new(t0());
    let engine = Engine::builder().clock(clock.clone()).build().unwrap();
    let seen = recorder(&engine);
    let (u, e) = pair(6);
    let g = engine
        .share_spec(later(
            u,
            e,
            Start::After(Duration::hours(1)),
            Expiry::After(Duration::hours(1)),
        ))
        .unwrap();
    taken(&seen);
    // Backwards: the engine's time does not go back, the grant waits.
    clock.set(t0() - Duration::days(3));
    engine.advance();
    assert!(!engine.can_read(&u, &e));
    assert_eq!(engine.scheduled_of(&u), vec![g]);
    // Forwards past its start and its end at once: never seen.
    clock.set(t0() + Duration::hours(3));
    assert!(!engine.can_read(&u, &e), "before the wheel runs");
    assert_eq!(engine.advance(), 1);
    assert!(!engine.can_read(&u, &e));
    assert_eq!(taken(&seen), vec![Event::Expired(g)]);
}

#[test]
fn the_driver_starts_a_grant_in_real_time_and_never_early() {
    let engine = Engine::builder()
        .tick(Duration::milliseconds(10))
        .build()
        .unwrap();
    let driver = engine
        .start_driver(std::time::Duration::from_millis(10))
        .unwrap();
    let (u, e) = pair(7);
    let g = engine
        .share_spec(later(
            u,
            e,
            Start::After(Duration::milliseconds(300)),
            Expiry::After(Duration::minutes(5)),
        ))
        .unwrap();
    let start = g.starts_at.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let readable = engine.can_read(&u, &e);
        let after = Utc::now();
        if readable {
            assert!(
                after >= start,
                "readable {} before its start",
                start - after
            );
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never started");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    driver.stop();
}

/// Three scheduled grants across a restart: one still ahead, one whose
/// start passed while the engine was down (live on open), one whose start
/// and end both passed (gone).
fn restart_keeps_them(build: impl Fn(&ManualClock) -> Engine) {
    let clock = ManualClock::new(t0());
    let engine = build(&clock);
    let spec = |i, start_h, len_h| {
        let (u, e) = pair(i);
        later(
            u,
            e,
            Start::After(Duration::hours(start_h)),
            Expiry::After(Duration::hours(len_h)),
        )
    };
    let ahead = engine.share_spec(spec(10, 48, 1)).unwrap();
    let passed = engine.share_spec(spec(11, 2, 10)).unwrap();
    let _over = engine.share_spec(spec(12, 1, 1)).unwrap();
    drop(engine);
    clock.set(t0() + Duration::hours(5));
    let engine = build(&clock);
    let (u10, e10) = pair(10);
    let (u11, e11) = pair(11);
    let (u12, e12) = pair(12);
    assert!(!engine.can_read(&u10, &e10));
    assert_eq!(engine.scheduled_of(&u10), vec![ahead]);
    assert!(engine.can_edit(&u11, &e11), "its start passed while down");
    assert_eq!(engine.user_grants(&u11), vec![passed]);
    assert!(!engine.can_read(&u12, &e12));
    assert!(engine.user_grants(&u12).is_empty() && engine.scheduled_of(&u12).is_empty());
    assert_eq!(engine.len(), 2);
    // The one ahead still starts on time.
    clock.set(t0() + Duration::hours(48));
    engine.advance();
    assert!(engine.can_edit(&u10, &e10));
}

#[test]
fn restart_over_memory_keeps_scheduled_grants_and_starts_the_passed_ones() {
    let store = MemoryStore::new();
    restart_keeps_them(|clock| {
        Engine::builder()
            .clock(clock.clone())
            .store(store.clone())
            .build()
            .unwrap()
    });
}

#[cfg(feature = "sqlite")]
#[test]
fn restart_over_sqlite_keeps_scheduled_grants_and_starts_the_passed_ones() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scheduled.db");
    restart_keeps_them(|clock| {
        Engine::builder()
            .clock(clock.clone())
            .store(SqliteStore::open(&path).unwrap())
            .build()
            .unwrap()
    });
}

/// The request layer: a share that starts later completes at once (the
/// grant is made, scheduled), its record keeps the start, and "who had
/// access at T" counts from the start.
fn scheduled_requests(sharing: &grantwheel::requests::Sharing, clock: &ManualClock) {
    use grantwheel::requests::{HistoryQuery, RequestStatus, ShareRequest};
    let (u, e) = pair(20);
    let start = t0() + Duration::days(2);
    let out = sharing.share(
        ShareRequest::new(u, e, Level::Edit)
            .start(Start::At(start))
            .duration(Duration::hours(8)),
    );
    assert_eq!(out.status, RequestStatus::Completed);
    let grant = out.grant.unwrap();
    assert_eq!(grant.starts_at, Some(start));
    assert_eq!(grant.expires_at, start + Duration::hours(8));
    assert!(!sharing.engine().can_read(&u, &e));
    let record = sharing.request(&out.request).unwrap().unwrap();
    assert_eq!(record.starts_at, Some(start));
    assert_eq!(record.expires_at, Some(start + Duration::hours(8)));
    let page = sharing.history(&e, &HistoryQuery::default()).unwrap();
    assert_eq!(page.records[0].starts_at, Some(start));
    // Who had access: nobody before the start, the grantee within it.
    assert!(sharing
        .access_at(&e, t0() + Duration::days(1))
        .unwrap()
        .is_empty());
    let during = sharing.access_at(&e, start + Duration::hours(1)).unwrap();
    assert_eq!(during.len(), 1);
    assert_eq!(during[0].request, out.request);
    assert!(sharing
        .access_at(&e, start + Duration::hours(8))
        .unwrap()
        .is_empty());
    clock.set(start);
    sharing.engine().advance();
    assert!(sharing.engine().can_edit(&u, &e));

    // A delay counts from the request; a bad one fails the request by name.
    let out = sharing.share(
        ShareRequest::new(u, EntityId::lead(21), Level::Read)
            .start(Start::After(Duration::hours(1))),
    );
    assert_eq!(
        out.grant.unwrap().starts_at,
        Some(start + Duration::hours(1))
    );
    let bad = sharing.share(
        ShareRequest::new(u, EntityId::lead(22), Level::Read)
            .start(Start::After(Duration::hours(-1))),
    );
    match bad.status {
        RequestStatus::Failed { reason, .. } => assert!(reason.contains("starts_in"), "{reason}"),
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[test]
fn a_scheduled_share_request_keeps_its_start_in_memory() {
    let clock = ManualClock::new(t0());
    let engine = Engine::builder().clock(clock.clone()).build().unwrap();
    scheduled_requests(&grantwheel::requests::Sharing::new(engine), &clock);
}

#[cfg(feature = "sqlite")]
#[test]
fn a_scheduled_share_request_keeps_its_start_in_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(t0());
    let engine = Engine::builder()
        .clock(clock.clone())
        .store(SqliteStore::open(dir.path().join("requests.db")).unwrap())
        .build()
        .unwrap();
    scheduled_requests(&grantwheel::requests::Sharing::new(engine), &clock);
}

#[test]
fn the_api_takes_starts_at_and_starts_in_minutes() {
    let clock = ManualClock::new(t0());
    let engine = Engine::builder().clock(clock.clone()).build().unwrap();
    let sharing = grantwheel::requests::Sharing::new(engine);
    let user = "0203f172-8642-11e7-9bed-069b743e848f";
    let body = serde_json::json!([
        {"UserId": user, "Entity": 5, "EntityType": 3, "EntityId": "1", "AccessType": 1,
         "DurationInMinutes": 60, "StartsAt": "2026-12-08T09:00:00Z"},
        {"UserId": user, "Entity": 5, "EntityType": 3, "EntityId": "2", "AccessType": 2,
         "StartsInMinutes": 30},
        {"UserId": user, "Entity": 5, "EntityType": 3, "EntityId": "3", "AccessType": 2,
         "StartsInMinutes": 30, "StartsAt": "2026-12-08T09:00:00Z"}
    ]);
    let answers = sharing
        .api_share(&serde_json::to_vec(&body).unwrap())
        .unwrap();
    let u: UserId = user.parse().unwrap();
    let scheduled = sharing.engine().scheduled_of(&u);
    assert_eq!(scheduled.len(), 2, "{answers:?}");
    // By expiry: the hour from Tuesday 9:00, then the default from 9:30.
    let tuesday = Utc.with_ymd_and_hms(2026, 12, 8, 9, 0, 0).unwrap();
    assert_eq!(scheduled[0].starts_at, Some(tuesday));
    assert_eq!(scheduled[0].expires_at, tuesday + Duration::hours(1));
    assert_eq!(scheduled[1].starts_at, Some(t0() + Duration::minutes(30)));
    match &answers[2] {
        grantwheel::requests::wire::ItemResponse::Error {
            exception_message, ..
        } => assert!(
            exception_message.contains("StartsInMinutes"),
            "{exception_message}"
        ),
        other => panic!("expected an error, got {other:?}"),
    }
}

/// An engine that confirms starts holds each grant at its start until it
/// is confirmed: no check says yes, it is listed as scheduled and due, and
/// it survives restarts as due; confirmed, it goes live; never confirmed,
/// it ends at its expiry.
fn confirmed_starts(build: impl Fn(&ManualClock) -> Engine) {
    let clock = ManualClock::new(t0());
    let engine = build(&clock);
    let seen = recorder(&engine);
    let spec = |i, start_h, len_h| {
        let (u, e) = pair(i);
        later(
            u,
            e,
            Start::After(Duration::hours(start_h)),
            Expiry::After(Duration::hours(len_h)),
        )
    };
    let a = engine.share_spec(spec(30, 1, 5)).unwrap();
    let b = engine.share_spec(spec(31, 1, 2)).unwrap();
    let c = engine.share_spec(spec(32, 1, 5)).unwrap();
    let d = engine.share_spec(spec(33, 3, 5)).unwrap();
    let (ua, ea) = pair(30);
    assert!(matches!(
        engine.confirm_start(&a.id),
        Err(ChangeError::NotDue(_))
    ));
    taken(&seen);
    clock.set(t0() + Duration::hours(1));
    engine.advance();
    assert!(taken(&seen).is_empty(), "no start is raised while held");
    for g in [&a, &b, &c] {
        assert!(!engine.can_read(&g.id.user, &g.id.entity), "{g:?} held");
    }
    assert_eq!(engine.due_starts(), vec![a, b, c]);
    assert_eq!(
        engine.scheduled_of(&ua),
        vec![a],
        "listed with the scheduled"
    );
    assert!(engine.user_grants(&ua).is_empty());
    // Extending a held grant keeps it held.
    let a = engine.extend(&a.id, Duration::hours(1)).unwrap();
    assert!(!engine.can_read(&ua, &ea));
    // Confirmed: live until its end, counted from its start.
    let live = engine.confirm_start(&a.id).unwrap();
    assert_eq!(live.expires_at, t0() + Duration::hours(7));
    assert_eq!(live.starts_at, None, "a confirmed start is not held again");
    assert!(engine.can_edit(&ua, &ea));
    assert!(taken(&seen)
        .iter()
        .any(|e| matches!(e, Event::Started(g) if g.id == a.id)));
    assert!(matches!(
        engine.confirm_start(&a.id),
        Err(ChangeError::NotDue(_))
    ));
    // Refused: revoked.
    engine.revoke(&c.id).unwrap();
    assert_eq!(engine.due_starts(), vec![b]);
    // A restart keeps the held one held, starts none, and holds one whose
    // start passed while down.
    drop(engine);
    clock.set(t0() + Duration::hours(3) + Duration::minutes(30));
    let engine = build(&clock);
    assert!(engine.can_edit(&ua, &ea), "confirmed stays live");
    assert_eq!(
        engine.due_starts().iter().map(|g| g.id).collect::<Vec<_>>(),
        vec![d.id],
        "b ended at its expiry; d's start passed while down"
    );
    let (ud, ed) = pair(33);
    assert!(!engine.can_read(&ud, &ed));
    engine.confirm_start(&d.id).unwrap();
    assert!(engine.can_edit(&ud, &ed));
    assert!(engine.due_starts().is_empty());
}

#[test]
fn confirmed_starts_over_memory() {
    let store = MemoryStore::new();
    confirmed_starts(|clock| {
        Engine::builder()
            .clock(clock.clone())
            .confirm_starts(true)
            .store(store.clone())
            .build()
            .unwrap()
    });
}

#[cfg(feature = "sqlite")]
#[test]
fn confirmed_starts_over_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("confirmed.db");
    confirmed_starts(|clock| {
        Engine::builder()
            .clock(clock.clone())
            .confirm_starts(true)
            .store(SqliteStore::open(&path).unwrap())
            .build()
            .unwrap()
    });
}

/// A held grant never confirmed ends at its expiry, raising `Expired`.
#[test]
fn a_held_start_never_confirmed_expires() {
    let clock = ManualClock::new(t0());
    let engine = Engine::builder()
        .clock(clock.clone())
        .confirm_starts(true)
        .build()
        .unwrap();
    let seen = recorder(&engine);
    let (u, e) = pair(40);
    let g = engine
        .share_spec(later(
            u,
            e,
            Start::After(Duration::minutes(10)),
            Expiry::After(Duration::minutes(20)),
        ))
        .unwrap();
    clock.advance(Duration::minutes(15));
    engine.advance();
    assert_eq!(engine.due_starts(), vec![g]);
    taken(&seen);
    clock.advance(Duration::minutes(15));
    engine.advance();
    assert!(engine.due_starts().is_empty());
    assert!(engine.scheduled_of(&u).is_empty());
    assert!(taken(&seen)
        .iter()
        .any(|ev| matches!(ev, Event::Expired(x) if x.id == g.id)));
    assert!(matches!(
        engine.confirm_start(&g.id),
        Err(ChangeError::NotLive(_))
    ));
    assert_eq!(engine.len(), 0);
}

/// A confirmation the store fails to write is undone: the grant stays held
/// (no check says yes), still due, and confirms once the store heals.
#[test]
fn a_confirmation_the_store_fails_leaves_the_start_held() {
    use grantwheel::store::{Fault, FaultyStore};
    let (store, faults) = FaultyStore::new(MemoryStore::new());
    let clock = ManualClock::new(t0());
    let engine = Engine::builder()
        .clock(clock.clone())
        .confirm_starts(true)
        .store(store)
        .build()
        .unwrap();
    let (u, e) = pair(50);
    let g = engine
        .share_spec(later(
            u,
            e,
            Start::After(Duration::minutes(1)),
            Expiry::After(Duration::hours(1)),
        ))
        .unwrap();
    clock.advance(Duration::minutes(1));
    engine.advance();
    engine.check_invariants().unwrap();
    faults.set(Fault::From(faults.ops() + 1));
    assert!(matches!(
        engine.confirm_start(&g.id),
        Err(ChangeError::Store(_))
    ));
    engine.check_invariants().unwrap();
    assert!(
        !engine.can_read(&u, &e),
        "not seen: its confirmation failed"
    );
    assert_eq!(engine.due_starts(), vec![g]);
    faults.set(Fault::None);
    engine.confirm_start(&g.id).unwrap();
    engine.check_invariants().unwrap();
    assert!(engine.can_read(&u, &e));
}

/// Checks, listings and the audit tell one story at the tick's edges: a
/// share asked to start at t0+1.5 s (tick 1 s) goes live at the tick at
/// t0+2 s. Just before it (t0+1.9 s, after `advance`) checks say no, it is
/// listed as scheduled, not live, and nobody held it at t0+1.7 s or at
/// t0+1.999 s; from t0+2 s checks say yes, it is listed live, and the
/// audit has it held from t0+2 s. A start on a tick begins on it. The end
/// is the one asked for.
fn one_story(sharing: &grantwheel::requests::Sharing, clock: &ManualClock) {
    use grantwheel::requests::ShareRequest;
    let engine = sharing.engine();
    let ms = Duration::milliseconds;
    let (u, e) = pair(40);
    let out = sharing.share(
        ShareRequest::new(u, e, Level::Read)
            .start(Start::At(t0() + ms(1500)))
            .duration(Duration::minutes(10)),
    );
    let g = out.grant.unwrap();
    assert_eq!(g.expires_at, t0() + ms(1500) + Duration::minutes(10));
    assert_eq!(engine.live_from(t0() + ms(1500)), t0() + ms(2000));
    let held = |at| {
        (
            sharing.access_at(&e, at).unwrap().len(),
            sharing.held_at(&u, at).unwrap().len(),
        )
    };
    for before in [1000, 1500, 1900] {
        clock.set(t0() + ms(before));
        engine.advance();
        assert!(!engine.can_read(&u, &e), "{before} ms");
        assert!(
            engine.pair_grants(&u, &e).is_empty(),
            "{before} ms: not live"
        );
        assert!(engine.entity_grants(&e).is_empty() && engine.user_grants(&u).is_empty());
        assert_eq!(engine.scheduled_of(&u).len(), 1, "{before} ms: scheduled");
        assert_eq!(engine.scheduled_on(&e).len(), 1);
        for at in [1500, 1700, 1900] {
            assert_eq!(held(t0() + ms(at)), (0, 0), "{at} ms seen at {before} ms");
        }
    }
    clock.set(t0() + ms(2000));
    engine.advance();
    assert!(engine.can_read(&u, &e));
    assert_eq!(engine.pair_grants(&u, &e).len(), 1);
    assert_eq!(engine.entity_grants(&e).len(), 1);
    assert!(engine.scheduled_of(&u).is_empty() && engine.scheduled_on(&e).is_empty());
    assert_eq!(held(t0() + ms(1999)), (0, 0));
    assert_eq!(held(t0() + ms(2000)), (1, 1));
    assert_eq!(
        held(t0() + ms(1500) + Duration::minutes(10) - ms(1)),
        (1, 1)
    );
    assert_eq!(held(t0() + ms(1500) + Duration::minutes(10)), (0, 0));

    // A start on a tick begins on it.
    let (u2, e2) = pair(41);
    sharing.share(ShareRequest::new(u2, e2, Level::Read).start(Start::At(t0() + ms(3000))));
    clock.set(t0() + ms(2999));
    engine.advance();
    assert!(!engine.can_read(&u2, &e2) && engine.pair_grants(&u2, &e2).is_empty());
    clock.set(t0() + ms(3000));
    engine.advance();
    assert!(engine.can_read(&u2, &e2) && engine.pair_grants(&u2, &e2).len() == 1);
    assert_eq!(sharing.access_at(&e2, t0() + ms(3000)).unwrap().len(), 1);
    assert!(sharing.access_at(&e2, t0() + ms(2999)).unwrap().is_empty());
}

#[test]
fn checks_listings_and_the_audit_agree_at_the_ticks_edges_in_memory() {
    let clock = ManualClock::new(t0());
    let engine = Engine::builder()
        .clock(clock.clone())
        .tick(Duration::seconds(1))
        .build()
        .unwrap();
    one_story(&grantwheel::requests::Sharing::new(engine), &clock);
}

#[cfg(feature = "sqlite")]
#[test]
fn checks_listings_and_the_audit_agree_at_the_ticks_edges_in_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(t0());
    let engine = Engine::builder()
        .clock(clock.clone())
        .tick(Duration::seconds(1))
        .store(SqliteStore::open(dir.path().join("edges.db")).unwrap())
        .build()
        .unwrap();
    one_story(&grantwheel::requests::Sharing::new(engine), &clock);
}
