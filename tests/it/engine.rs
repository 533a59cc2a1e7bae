//! Behaviour of the engine beyond the model test: events and subscribers,
//! the driver thread, settings, and the seeds' scenarios.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, TimeZone, Utc};
use grantwheel::{
    Context, Engine, EntityId, EntityKind, EntityRef, Event, Expiry, Level, ManualClock, OverMax,
    RepeatShare, RevokeError, ShareError, UserId,
};
use uuid::Uuid;

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 22, 9, 0, 0).unwrap()
}

fn manual() -> (ManualClock, Engine) {
    let clock = ManualClock::new(t0());
    let engine = Engine::builder().clock(clock.clone()).build().unwrap();
    (clock, engine)
}

fn recorder(engine: &Engine) -> Arc<Mutex<Vec<Event>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    engine.subscribe(move |e: &Event| sink.lock().unwrap().push(e.clone()));
    seen
}

#[test]
fn a_lead_shared_through_two_activities_survives_revoking_one() {
    let (_, engine) = manual();
    let user: UserId = "0203f172-8642-11e7-9bed-069b743e848f".parse().unwrap();
    let lead = EntityId::lead(869196);
    let a1 = Context::Activity("f2dbf1d5-bbab-418b-bddc-4c92ecdef214".parse().unwrap());
    let a2 = Context::Activity(Uuid::from_u128(2));
    engine
        .share(
            user,
            lead,
            a1,
            Level::Edit,
            Expiry::After(Duration::minutes(30)),
        )
        .unwrap();
    engine
        .share(user, lead, a2, Level::Read, Expiry::Default)
        .unwrap();
    assert!(engine.can_edit(&user, &lead));
    let gone = engine.revoke_via(&user, &lead, &a1).unwrap().unwrap();
    assert_eq!(gone.level, Level::Edit);
    assert!(
        engine.can_read(&user, &lead),
        "the other activity's grant stays"
    );
    assert!(!engine.can_edit(&user, &lead));
    assert_eq!(engine.pair_grants(&user, &lead).len(), 1);
}

#[test]
fn expiry_is_exclusive_and_checked_without_the_wheel() {
    let (clock, engine) = manual();
    let (u, e) = (UserId::from_u128(1), EntityId::lead(1));
    let g = engine
        .share(
            u,
            e,
            Context::Direct,
            Level::Edit,
            Expiry::After(Duration::milliseconds(1500)),
        )
        .unwrap();
    clock.set(g.expires_at - Duration::milliseconds(1));
    assert!(engine.can_edit(&u, &e));
    clock.set(g.expires_at);
    assert!(
        !engine.can_read(&u, &e),
        "a grant with expires_at == now is expired"
    );
    assert!(!engine.can_edit(&u, &e));
    assert_eq!(engine.access(&u, &e), None);
    assert_eq!(
        engine.len(),
        1,
        "not reclaimed yet: the wheel lags, the check does not"
    );
    // The expiry is not on a tick edge: reclaiming waits for the next tick.
    assert_eq!(engine.advance(), 0);
    clock.advance(Duration::milliseconds(500));
    assert_eq!(engine.advance(), 1);
    assert!(engine.is_empty());
}

#[test]
fn a_clock_that_steps_back_never_revives_a_grant() {
    let (clock, engine) = manual();
    let (u, e) = (UserId::from_u128(1), EntityId::lead(1));
    engine
        .share(
            u,
            e,
            Context::Direct,
            Level::Read,
            Expiry::After(Duration::minutes(10)),
        )
        .unwrap();
    clock.advance(Duration::minutes(11));
    assert!(!engine.can_read(&u, &e));
    clock.set(t0());
    assert!(
        !engine.can_read(&u, &e),
        "stepped back before the expiry, still expired"
    );
    assert_eq!(engine.now(), t0() + Duration::minutes(11));
    // A share made now runs from the engine's time, not the stepped-back clock.
    let g = engine
        .share(
            u,
            e,
            Context::Direct,
            Level::Read,
            Expiry::After(Duration::minutes(1)),
        )
        .unwrap();
    assert_eq!(g.expires_at, t0() + Duration::minutes(12));
}

#[test]
fn a_jump_of_years_reclaims_everything_in_one_advance() {
    let (clock, engine) = manual();
    let n = 50_000u64;
    for i in 0..n {
        let d = Duration::seconds(1 + (i as i64 * 7919) % (3650 * 86_400));
        engine
            .share(
                UserId::from_u128(u128::from(i)),
                EntityId::lead(i),
                Context::Direct,
                Level::Read,
                Expiry::After(d),
            )
            .unwrap();
    }
    clock.advance(Duration::days(365 * 5));
    let half = engine.advance();
    assert!(half > 0 && half < n as usize);
    assert_eq!(engine.len(), n as usize - half);
    clock.advance(Duration::days(365 * 6));
    assert_eq!(engine.advance(), n as usize - half);
    assert!(engine.is_empty());
    assert_eq!(engine.footprint().pairs, 0);
}

#[test]
fn next_expiry_is_never_after_the_next_expiry() {
    let (clock, engine) = manual();
    assert_eq!(engine.next_wakeup(), None);
    let u = UserId::from_u128(1);
    let far = engine
        .share(
            u,
            EntityId::lead(1),
            Context::Direct,
            Level::Read,
            Expiry::After(Duration::days(40)),
        )
        .unwrap();
    let near = engine
        .share(
            u,
            EntityId::lead(2),
            Context::Direct,
            Level::Read,
            Expiry::After(Duration::seconds(30)),
        )
        .unwrap();
    assert_eq!(
        engine.next_wakeup(),
        Some(near.expires_at),
        "exact within 64 ticks"
    );
    engine.revoke(&near.id).unwrap();
    let wake = engine.next_wakeup().unwrap();
    assert!(wake <= far.expires_at && wake > t0());
    // Sleeping until each wake-up and advancing reaches the expiry.
    let mut rounds = 0;
    while !engine.is_empty() {
        clock.set(engine.next_wakeup().unwrap());
        engine.advance();
        rounds += 1;
        assert!(rounds < 20, "wake-ups make progress");
    }
    assert!(engine.now() >= far.expires_at);
}

#[test]
fn expiring_soon_warnings_fire_once_per_offset_and_rearm_on_extend() {
    let clock = ManualClock::new(t0());
    let engine = Engine::builder()
        .clock(clock.clone())
        .warn_before([Duration::days(14), Duration::days(1)])
        .build()
        .unwrap();
    let seen = recorder(&engine);
    let g = engine
        .share(
            UserId::from_u128(1),
            EntityId::lead(1),
            Context::Direct,
            Level::Read,
            Expiry::After(Duration::days(30)),
        )
        .unwrap();
    let warnings = |seen: &Arc<Mutex<Vec<Event>>>| {
        seen.lock()
            .unwrap()
            .iter()
            .filter(|e| matches!(e, Event::ExpiringSoon { .. }))
            .count()
    };
    clock.advance(Duration::days(16));
    engine.advance();
    assert_eq!(warnings(&seen), 1);
    engine.advance();
    assert_eq!(warnings(&seen), 1, "no repeat");
    clock.advance(Duration::days(13) + Duration::hours(1));
    engine.advance();
    assert_eq!(warnings(&seen), 2);
    // Extending re-arms both warnings for the new expiry.
    engine.extend(&g.id, Duration::days(20)).unwrap();
    clock.advance(Duration::days(7));
    engine.advance();
    assert_eq!(warnings(&seen), 3);
    clock.advance(Duration::days(20));
    engine.advance();
    let events = seen.lock().unwrap();
    assert!(
        matches!(events.last(), Some(Event::Expired(_))),
        "{events:?}"
    );
}

#[test]
fn a_panicking_subscriber_is_disabled_and_the_engine_carries_on() {
    let (_, engine) = manual();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    engine.subscribe(move |_| {
        c.fetch_add(1, Ordering::SeqCst);
        panic!("subscriber failure");
    });
    let seen = recorder(&engine);
    let u = UserId::from_u128(1);
    for i in 0..3 {
        engine
            .share(
                u,
                EntityId::lead(i),
                Context::Direct,
                Level::Read,
                Expiry::Default,
            )
            .unwrap();
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "called once, then disabled"
    );
    assert_eq!(seen.lock().unwrap().len(), 3, "the others keep receiving");
    assert!(engine.can_read(&u, &EntityId::lead(2)));
}

#[test]
fn subscribers_run_outside_the_lock_and_may_call_back() {
    let (_, engine) = manual();
    let seen = recorder(&engine);
    let inner = engine.clone();
    // On every grant of lead 1, also share lead 2: a callback that changes
    // the engine (it would deadlock if called under the state lock).
    engine.subscribe(move |e: &Event| {
        if let Event::Granted(g) = e {
            assert_eq!(inner.len(), inner.len());
            if g.id.entity == EntityId::lead(1) {
                inner
                    .share(
                        g.id.user,
                        EntityId::lead(2),
                        Context::Direct,
                        Level::Read,
                        Expiry::Default,
                    )
                    .unwrap();
            }
        }
    });
    let u = UserId::from_u128(1);
    engine
        .share(
            u,
            EntityId::lead(1),
            Context::Direct,
            Level::Read,
            Expiry::Default,
        )
        .unwrap();
    assert!(engine.can_read(&u, &EntityId::lead(2)));
    let events = seen.lock().unwrap();
    let entities: Vec<EntityId> = events.iter().map(|e| e.grant().id.entity).collect();
    assert_eq!(
        entities,
        vec![EntityId::lead(1), EntityId::lead(2)],
        "in order"
    );
}

#[test]
fn unsubscribe_stops_delivery() {
    let (_, engine) = manual();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let id = engine.subscribe(move |_| {
        c.fetch_add(1, Ordering::SeqCst);
    });
    let u = UserId::from_u128(1);
    engine
        .share(
            u,
            EntityId::lead(1),
            Context::Direct,
            Level::Read,
            Expiry::Default,
        )
        .unwrap();
    assert!(engine.unsubscribe(id));
    assert!(!engine.unsubscribe(id));
    engine
        .share(
            u,
            EntityId::lead(2),
            Context::Direct,
            Level::Read,
            Expiry::Default,
        )
        .unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[test]
fn the_driver_reclaims_in_the_background() {
    let engine = Engine::builder()
        .tick(Duration::milliseconds(1))
        .build()
        .unwrap();
    let seen = recorder(&engine);
    let driver = engine
        .start_driver(std::time::Duration::from_millis(20))
        .unwrap();
    let (u, e) = (UserId::from_u128(1), EntityId::lead(1));
    engine
        .share(
            u,
            e,
            Context::Direct,
            Level::Read,
            Expiry::After(Duration::milliseconds(30)),
        )
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !engine.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the driver never reclaimed the grant"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    driver.stop();
    assert!(matches!(
        seen.lock().unwrap().last(),
        Some(Event::Expired(_))
    ));
}

#[test]
fn settings_are_validated_with_the_field_named() {
    let field = |b: grantwheel::EngineBuilder| b.build().unwrap_err().field();
    assert_eq!(
        field(Engine::builder().tick(Duration::zero())),
        Some("tick")
    );
    assert_eq!(
        field(Engine::builder().tick(Duration::days(2))),
        Some("tick")
    );
    assert_eq!(
        field(Engine::builder().default_duration(Duration::seconds(-1))),
        Some("default_duration")
    );
    assert_eq!(
        field(Engine::builder().max_duration(Duration::zero(), OverMax::Clamp)),
        Some("max_duration")
    );
    assert_eq!(
        field(Engine::builder().max_duration(Duration::days(1), OverMax::Clamp)),
        Some("default_duration")
    );
    assert_eq!(
        field(Engine::builder().warn_before([Duration::zero()])),
        Some("warn_before")
    );
}

#[test]
fn bad_durations_are_refused_without_changing_anything() {
    let (_, engine) = manual();
    let (u, e) = (UserId::from_u128(1), EntityId::lead(1));
    engine
        .share(
            u,
            e,
            Context::Direct,
            Level::Read,
            Expiry::After(Duration::hours(1)),
        )
        .unwrap();
    let before = engine.pair_grants(&u, &e);
    for (expiry, field) in [
        (Expiry::After(Duration::zero()), "duration"),
        (Expiry::After(Duration::minutes(-5)), "duration"),
        (Expiry::After(Duration::microseconds(10)), "duration"),
        (Expiry::After(Duration::days(4000)), "duration"),
        (Expiry::After(Duration::MAX), "duration"),
        (Expiry::At(t0()), "expires_at"),
        (Expiry::At(t0() - Duration::days(1)), "expires_at"),
        (Expiry::At(DateTime::<Utc>::MAX_UTC), "expires_at"),
    ] {
        let err = engine
            .share(u, e, Context::Direct, Level::Edit, expiry)
            .unwrap_err();
        assert_eq!(err.field(), Some(field), "{expiry:?}: {err}");
        let msg = err.to_string();
        assert!(msg.starts_with("invalid `"), "{msg}");
        assert!(!msg.ends_with('.'), "{msg}");
    }
    assert_eq!(engine.pair_grants(&u, &e), before);
    assert!(!engine.can_edit(&u, &e));
}

#[test]
fn over_the_maximum_can_be_clamped() {
    let clock = ManualClock::new(t0());
    let engine = Engine::builder()
        .clock(clock)
        .max_duration(Duration::days(100), OverMax::Clamp)
        .build()
        .unwrap();
    let g = engine
        .share(
            UserId::from_u128(1),
            EntityId::lead(1),
            Context::Direct,
            Level::Read,
            Expiry::After(Duration::days(500)),
        )
        .unwrap();
    assert_eq!(g.expires_at, t0() + Duration::days(100));
}

#[test]
fn repeat_share_rules() {
    let (u, e, c) = (UserId::from_u128(1), EntityId::lead(1), Context::Direct);
    let build = |rule| {
        Engine::builder()
            .clock(ManualClock::new(t0()))
            .repeat_share(rule)
            .build()
            .unwrap()
    };

    let replace = build(RepeatShare::Replace);
    let a = replace
        .share(u, e, c, Level::Edit, Expiry::After(Duration::days(5)))
        .unwrap();
    let b = replace
        .share(u, e, c, Level::Read, Expiry::After(Duration::days(1)))
        .unwrap();
    assert_ne!(a.id, b.id);
    assert!(!replace.can_edit(&u, &e), "replaced by the read grant");
    assert!(matches!(
        replace.revoke(&a.id),
        Err(RevokeError::NotLive(_))
    ));

    let keep = build(RepeatShare::KeepLater);
    let a = keep
        .share(u, e, c, Level::Edit, Expiry::After(Duration::days(5)))
        .unwrap();
    let b = keep
        .share(u, e, c, Level::Read, Expiry::After(Duration::days(9)))
        .unwrap();
    assert_eq!(a.id, b.id);
    assert_eq!(
        (b.level, b.expires_at),
        (Level::Edit, t0() + Duration::days(9))
    );

    let reject = build(RepeatShare::Reject);
    reject.share(u, e, c, Level::Read, Expiry::Default).unwrap();
    let err = reject
        .share(u, e, c, Level::Read, Expiry::Default)
        .unwrap_err();
    assert!(matches!(err, ShareError::AlreadyShared { .. }));
    assert_eq!(reject.len(), 1);
}

#[test]
fn listings_and_bulk_revokes() {
    let (_, engine) = manual();
    let (alice, bob) = (UserId::from_u128(1), UserId::from_u128(2));
    let deal = EntityId::new(EntityKind::OPPORTUNITY, EntityRef::Uuid(Uuid::from_u128(9)));
    let lead = EntityId::lead(7);
    let act = Context::Activity(Uuid::from_u128(5));
    engine
        .share(
            alice,
            deal,
            act,
            Level::Edit,
            Expiry::After(Duration::days(3)),
        )
        .unwrap();
    engine
        .share(
            alice,
            lead,
            Context::Direct,
            Level::Read,
            Expiry::After(Duration::days(1)),
        )
        .unwrap();
    engine
        .share(
            bob,
            deal,
            Context::Direct,
            Level::Read,
            Expiry::After(Duration::days(2)),
        )
        .unwrap();
    engine
        .share(
            bob,
            lead,
            act,
            Level::Read,
            Expiry::After(Duration::days(4)),
        )
        .unwrap();

    let on_deal: Vec<UserId> = engine
        .entity_grants(&deal)
        .iter()
        .map(|g| g.id.user)
        .collect();
    assert_eq!(on_deal, vec![bob, alice], "by expiry");
    let of_alice: Vec<EntityId> = engine
        .user_grants(&alice)
        .iter()
        .map(|g| g.id.entity)
        .collect();
    assert_eq!(of_alice, vec![lead, deal]);
    assert_eq!(engine.expiring_within(Duration::days(2)).len(), 2);

    let by_activity = engine.revoke_all_via(&act).unwrap();
    assert_eq!(by_activity.len(), 2);
    assert!(!engine.can_read(&alice, &deal));
    assert!(engine.can_read(&bob, &deal));
    assert_eq!(engine.revoke_user(&bob).unwrap().len(), 1);
    assert_eq!(engine.revoke_entity(&lead).unwrap().len(), 1);
    assert!(engine.is_empty());
}

/// Setting errors speak days and minutes, not ISO 8601 durations.
#[test]
fn setting_errors_name_durations_in_words() {
    let err = Engine::builder()
        .max_duration(Duration::days(1), OverMax::Reject)
        .build()
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid `default_duration`: `90 days` is longer than the maximum duration `1 day`"
    );
    let engine = Engine::builder()
        .max_duration(Duration::days(100), OverMax::Reject)
        .build()
        .unwrap();
    let err = engine
        .share(
            UserId::from_u128(1),
            EntityId::lead(1),
            Context::Direct,
            Level::Read,
            Expiry::After(Duration::days(100) + Duration::hours(1)),
        )
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid `duration`: a duration of `100 days 1 hour` is longer than the maximum of 100 days"
    );
}
