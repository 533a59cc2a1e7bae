//! Several engines over one PostgreSQL database: each writes, each
//! follows the others through the change feed, every write is decided as
//! one engine would decide it in feed order, and an engine that cannot
//! follow fails closed.
//!
//! Needs a server: `GRANTWHEEL_PG_URL` (see `support/pg.rs`).
#![cfg(feature = "postgres")]

use std::time::{Duration as StdDuration, Instant};

use chrono::Duration;
use grantwheel::store::PostgresStore;
use grantwheel::{
    Context, Engine, EntityId, Expiry, Grant, Level, ManualClock, RepeatShare, ShareError,
    ShareSpec, Start,
};
use postgres::{Client, NoTls};

use crate::common;
use crate::pg;

use crate::common::user;

/// An engine over the database at `url`, on the system clock.
fn engine(url: &str) -> Engine {
    engine_with(url, |b| b)
}

fn engine_with(
    url: &str,
    more: impl FnOnce(grantwheel::EngineBuilder) -> grantwheel::EngineBuilder,
) -> Engine {
    more(Engine::builder().store(PostgresStore::connect(url).unwrap()))
        .build()
        .unwrap()
}

/// Wait until `cond` holds (at most 10 s); returns how long it took.
#[track_caller]
fn eventually(what: &str, mut cond: impl FnMut() -> bool) -> StdDuration {
    let t = Instant::now();
    while !cond() {
        assert!(
            t.elapsed() < StdDuration::from_secs(10),
            "not within 10 s: {what}"
        );
        std::thread::sleep(StdDuration::from_millis(2));
    }
    t.elapsed()
}

/// The grants an engine holds in memory on the pairs of users `users` and
/// leads `leads`, by serial (what its checks answer from).
fn held(e: &Engine, users: std::ops::Range<usize>, leads: &[u64]) -> Vec<Grant> {
    e.check_invariants().unwrap();
    let mut gs: Vec<Grant> = users
        .flat_map(|u| {
            leads
                .iter()
                .flat_map(move |l| e.pair_grants(&user(u), &EntityId::lead(*l)))
        })
        .collect();
    gs.sort_by_key(|g| g.id.serial);
    gs
}

/// `url` with the connections of its stores named for one instance (so a
/// test can cut that instance off); returns the URL and the name, which
/// is unique to the database (tests run at once).
fn named(url: &str) -> (String, String) {
    let name = format!("b_{}", url.rsplit('/').next().unwrap_or(""));
    let sep = if url.contains('?') { '&' } else { '?' };
    (format!("{url}{sep}application_name={name}"), name)
}

/// End every connection of the instance named `name`; returns how many.
fn cut(sql: &mut Client, name: &str) -> usize {
    sql.query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
        &[&name],
    )
    .unwrap()
    .len()
}

fn head(sql: &mut Client) -> u64 {
    let h: i64 = sql
        .query_one("SELECT seq FROM grantwheel_feed_head", &[])
        .unwrap()
        .get(0);
    h as u64
}

fn admin(url: &str) -> Client {
    Client::connect(url, NoTls).unwrap()
}

#[test]
fn a_share_and_a_revoke_on_one_engine_reach_the_other() {
    let Some(server) = pg::url("a_share_and_a_revoke_on_one_engine_reach_the_other") else {
        return;
    };
    let url = pg::fresh_database(&server);
    let (a, b) = (engine(&url), engine(&url));
    let (u, lead) = (user(1), EntityId::lead(869196));
    let g = a
        .share(
            u,
            lead,
            Context::Direct,
            Level::Edit,
            Expiry::After(Duration::hours(1)),
        )
        .unwrap();
    assert!(a.can_edit(&u, &lead), "read-your-writes on the writer");
    eventually("B sees A's share", || b.can_edit(&u, &lead));
    assert_eq!(b.user_grants(&u), vec![g]);
    a.revoke(&g.id).unwrap();
    assert!(!a.can_read(&u, &lead));
    eventually("B sees A's revoke", || !b.can_read(&u, &lead));
    assert!(b.user_grants(&u).is_empty());

    // B extends a grant A made; A sees the new expiry.
    let g = a
        .share(
            u,
            lead,
            Context::Direct,
            Level::Read,
            Expiry::After(Duration::hours(1)),
        )
        .unwrap();
    eventually("B sees the second share", || b.can_read(&u, &lead));
    let longer = b.extend(&g.id, Duration::hours(5)).unwrap();
    eventually("A sees B's extension", || {
        a.user_grants(&u).first().map(|g| g.expires_at) == Some(longer.expires_at)
    });
    let status = b.feed_status().unwrap();
    assert!(status.fresh, "{status:?}");
    assert_eq!(status.problem, None);
    assert!(a.feed_status().unwrap().position >= 3);
    assert_eq!(
        Engine::new().feed_status(),
        None,
        "a memory engine follows nothing"
    );
}

#[test]
fn a_scheduled_grant_reaches_the_other_engine_and_starts_on_each_never_early() {
    let Some(server) =
        pg::url("a_scheduled_grant_reaches_the_other_engine_and_starts_on_each_never_early")
    else {
        return;
    };
    let url = pg::fresh_database(&server);
    let fast = |b: grantwheel::EngineBuilder| b.tick(Duration::milliseconds(10));
    let (a, b) = (engine_with(&url, fast), engine_with(&url, fast));
    let _drivers = (
        a.start_driver(StdDuration::from_millis(10)).unwrap(),
        b.start_driver(StdDuration::from_millis(10)).unwrap(),
    );
    let (u, lead) = (user(3), EntityId::lead(4242));
    let g = a
        .share_spec(
            ShareSpec::new(u, lead, Level::Edit)
                .start(Start::After(Duration::hours(1)))
                .expiry(Expiry::After(Duration::hours(2))),
        )
        .unwrap();
    eventually("B holds A's scheduled grant", || {
        b.scheduled_of(&u) == vec![g]
    });
    assert!(!b.can_read(&u, &lead) && b.user_grants(&u).is_empty());
    // B moves it to start shortly; A follows the move.
    let moved = b
        .set_start(&g.id, Start::After(Duration::milliseconds(500)))
        .unwrap();
    let start = moved.starts_at.unwrap();
    assert_eq!(
        moved.expires_at - start,
        Duration::hours(2),
        "its length stays"
    );
    eventually("A sees B's move", || {
        a.scheduled_of(&u) == vec![moved] || a.can_read(&u, &lead)
    });
    for e in [&a, &b] {
        eventually("the grant starts", || {
            let yes = e.can_edit(&u, &lead);
            let now = chrono::Utc::now();
            assert!(
                !yes || now >= start,
                "readable {} before its start",
                start - now
            );
            yes
        });
    }
    assert_eq!(a.user_grants(&u), vec![moved]);
}

#[test]
fn a_start_held_on_both_engines_goes_live_on_each_once_one_confirms_it() {
    let Some(server) =
        pg::url("a_start_held_on_both_engines_goes_live_on_each_once_one_confirms_it")
    else {
        return;
    };
    let url = pg::fresh_database(&server);
    let held =
        |b: grantwheel::EngineBuilder| b.tick(Duration::milliseconds(10)).confirm_starts(true);
    let (a, b) = (engine_with(&url, held), engine_with(&url, held));
    let _drivers = (
        a.start_driver(StdDuration::from_millis(10)).unwrap(),
        b.start_driver(StdDuration::from_millis(10)).unwrap(),
    );
    let (u, lead) = (user(5), EntityId::lead(4343));
    let g = a
        .share_spec(
            ShareSpec::new(u, lead, Level::Read)
                .start(Start::After(Duration::milliseconds(200)))
                .expiry(Expiry::After(Duration::hours(1))),
        )
        .unwrap();
    for e in [&a, &b] {
        eventually("the start comes and is held", || {
            e.due_starts().iter().any(|d| d.id == g.id)
        });
        assert!(!e.can_read(&u, &lead), "held until confirmed");
    }
    let live = b.confirm_start(&g.id).unwrap();
    assert_eq!(live.expires_at, g.expires_at);
    for e in [&a, &b] {
        eventually("the confirmation is followed", || e.can_read(&u, &lead));
        assert!(e.due_starts().is_empty());
        assert_eq!(e.user_grants(&u), vec![live]);
    }
    assert!(matches!(
        a.confirm_start(&g.id),
        Err(grantwheel::ChangeError::NotDue(_))
    ));
    // A new engine over the database holds it live, not due.
    let c = engine_with(&url, held);
    assert!(c.can_read(&u, &lead) && c.due_starts().is_empty());
}

#[test]
fn writes_on_two_engines_are_decided_in_feed_order() {
    let Some(server) = pg::url("writes_on_two_engines_are_decided_in_feed_order") else {
        return;
    };
    let url = pg::fresh_database(&server);
    let reject = |b: grantwheel::EngineBuilder| b.repeat_share(RepeatShare::Reject);
    let (a, b) = (engine_with(&url, reject), engine_with(&url, reject));
    // The same (user, entity, context) shared on both at once, many times:
    // exactly one share of each wins, as on one engine.
    for round in 0..20u64 {
        let entity = EntityId::lead(round);
        let share = |e: Engine| {
            std::thread::spawn(move || {
                e.share(
                    user(2),
                    entity,
                    Context::Direct,
                    Level::Read,
                    Expiry::Default,
                )
            })
        };
        let (ra, rb) = (share(a.clone()), share(b.clone()));
        let results = [ra.join().unwrap(), rb.join().unwrap()];
        let won: Vec<&Grant> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
        assert_eq!(won.len(), 1, "round {round}: {results:?}");
        let lost = results.iter().find_map(|r| r.as_ref().err()).unwrap();
        match lost {
            ShareError::AlreadyShared { existing } => assert_eq!(existing, won[0]),
            other => panic!("round {round}: {other:?}"),
        }
    }
    let leads: Vec<u64> = (0..20).collect();
    eventually("both hold the 20 winners", || {
        let held_a = held(&a, 2..3, &leads);
        held_a.len() == 20 && held(&b, 2..3, &leads) == held_a
    });
}

#[test]
fn serials_are_unique_across_engines_and_both_converge() {
    let Some(server) = pg::url("serials_are_unique_across_engines_and_both_converge") else {
        return;
    };
    let url = pg::fresh_database(&server);
    let (a, b) = (engine(&url), engine(&url));
    let writer = |e: Engine, base: usize| {
        std::thread::spawn(move || {
            (0..150)
                .map(|i| {
                    e.share(
                        user(base + i % 20),
                        EntityId::lead((base * 1000 + i) as u64),
                        Context::Direct,
                        Level::Read,
                        Expiry::Default,
                    )
                    .unwrap()
                })
                .collect::<Vec<_>>()
        })
    };
    let (wa, wb) = (writer(a.clone(), 0), writer(b.clone(), 20));
    let mut made = wa.join().unwrap();
    made.extend(wb.join().unwrap());
    let mut serials: Vec<u64> = made.iter().map(|g| g.id.serial).collect();
    serials.sort_unstable();
    serials.dedup();
    assert_eq!(serials.len(), 300, "no serial given twice");
    made.sort_by_key(|g| g.id.serial);
    let leads: Vec<u64> = (0..150).chain(20_000..20_150).collect();
    eventually("A holds all 300", || held(&a, 0..40, &leads) == made);
    eventually("B holds all 300", || held(&b, 0..40, &leads) == made);
    // Both applied the same dense feed.
    let head = head(&mut admin(&url));
    eventually("both at the head", || {
        a.feed_status().unwrap().position == head && b.feed_status().unwrap().position == head
    });
}

#[test]
fn a_follower_cut_off_mid_stream_converges_without_a_gap() {
    let Some(server) = pg::url("a_follower_cut_off_mid_stream_converges_without_a_gap") else {
        return;
    };
    let url = pg::fresh_database(&server);
    let (b_url, b_name) = named(&url);
    let (a, b) = (engine(&url), engine(&b_url));
    let mut sql = admin(&url);
    let writer = {
        let a = a.clone();
        std::thread::spawn(move || {
            for i in 0..1000u64 {
                let g = a
                    .share(
                        user((i % 30) as usize),
                        EntityId::lead(i % 97),
                        Context::Direct,
                        Level::Read,
                        Expiry::Default,
                    )
                    .unwrap();
                if i.is_multiple_of(3) {
                    a.revoke(&g.id).unwrap();
                }
            }
        })
    };
    // B's connections (its follower's among them) ended again and again
    // while A writes.
    let mut cuts = 0;
    while !writer.is_finished() {
        std::thread::sleep(StdDuration::from_millis(25));
        cuts += cut(&mut sql, &b_name);
    }
    writer.join().unwrap();
    assert!(cuts >= 3, "B's connections were cut {cuts} times");
    let leads: Vec<u64> = (0..97).collect();
    let want = held(&a, 0..30, &leads);
    assert_eq!(want.len(), 666, "A holds the shares it did not revoke");
    eventually("B converges with A", || held(&b, 0..30, &leads) == want);
    let head = head(&mut sql);
    eventually("B at the head", || {
        b.feed_status().unwrap().position == head
    });
}

#[test]
fn an_engine_cut_off_longer_than_max_staleness_says_no_until_it_catches_up() {
    let Some(server) =
        pg::url("an_engine_cut_off_longer_than_max_staleness_says_no_until_it_catches_up")
    else {
        return;
    };
    let url = pg::fresh_database(&server);
    let name = url.rsplit('/').next().unwrap().to_string();
    let a = engine(&url);
    let (b_url, b_name) = named(&url);
    let b = engine_with(&b_url, |b| b.max_staleness(Duration::milliseconds(500)));
    let (u, lead) = (user(3), EntityId::lead(5));
    a.share(u, lead, Context::Direct, Level::Read, Expiry::Default)
        .unwrap();
    eventually("B sees the share", || b.can_read(&u, &lead));
    // New connections to the database are refused and B's are ended: B
    // cannot follow (A keeps its open connection and goes on writing).
    let mut sql = admin(&server);
    sql.batch_execute(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false"))
        .unwrap();
    let cut_at = Instant::now();
    cut(&mut sql, &b_name);
    eventually("B fails closed", || !b.can_read(&u, &lead));
    let took = cut_at.elapsed();
    assert!(took < StdDuration::from_secs(2), "{took:?}");
    let status = b.feed_status().unwrap();
    assert!(!status.fresh);
    assert!(
        status
            .problem
            .as_deref()
            .unwrap_or("")
            .contains("checks say no"),
        "{status:?}"
    );
    let other = a
        .share(
            u,
            EntityId::lead(6),
            Context::Direct,
            Level::Read,
            Expiry::Default,
        )
        .unwrap();
    sql.batch_execute(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true"))
        .unwrap();
    eventually("B answers again once it has caught up", || {
        b.can_read(&u, &lead) && b.can_read(&u, &other.id.entity)
    });
    assert!(b.feed_status().unwrap().fresh);
}

#[test]
fn a_clock_three_seconds_off_fails_closed() {
    let Some(server) = pg::url("a_clock_three_seconds_off_fails_closed") else {
        return;
    };
    let url = pg::fresh_database(&server);
    let a = engine(&url);
    let (u, lead) = (user(4), EntityId::lead(6));
    a.share(u, lead, Context::Direct, Level::Read, Expiry::Default)
        .unwrap();
    let ahead = ManualClock::new(chrono::Utc::now() + Duration::seconds(3));
    let b = engine_with(&url, |b| b.clock(ahead.clone()));
    assert!(!b.can_read(&u, &lead), "a skewed clock says no");
    let status = b.feed_status().unwrap();
    assert!(!status.fresh);
    assert!(status.skew_ms.unwrap() > 2_000, "{status:?}");
    assert!(
        status.problem.as_deref().unwrap_or("").contains("clock"),
        "{status:?}"
    );
    // An engine whose limit allows it answers.
    let lenient = engine_with(&url, |b| {
        b.clock(ahead.clone())
            .clock_skew(Duration::seconds(1), Duration::seconds(10))
    });
    assert!(lenient.can_read(&u, &lead));
}

#[test]
fn a_follower_behind_the_kept_feed_resyncs_from_a_snapshot() {
    let Some(server) = pg::url("a_follower_behind_the_kept_feed_resyncs_from_a_snapshot") else {
        return;
    };
    let url = pg::fresh_database(&server);
    let name = url.rsplit('/').next().unwrap().to_string();
    let a = engine(&url);
    let (b_url, b_name) = named(&url);
    let b = engine(&b_url);
    let first = a
        .share(
            user(5),
            EntityId::lead(1),
            Context::Direct,
            Level::Read,
            Expiry::Default,
        )
        .unwrap();
    eventually("B sees the first share", || {
        b.can_read(&user(5), &EntityId::lead(1))
    });
    // B is cut off; a connection opened before the refusal trims the feed.
    let mut sql = admin(&server);
    let mut inside = admin(&url);
    sql.batch_execute(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false"))
        .unwrap();
    cut(&mut sql, &b_name);
    // Meanwhile A revokes the first grant and makes others, and the feed
    // is trimmed past B's position.
    a.revoke(&first.id).unwrap();
    let later: Vec<Grant> = (0..5)
        .map(|i| {
            a.share(
                user(6),
                EntityId::lead(10 + i),
                Context::Direct,
                Level::Edit,
                Expiry::Default,
            )
            .unwrap()
        })
        .collect();
    inside.batch_execute("DELETE FROM grantwheel_feed").unwrap();
    sql.batch_execute(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true"))
        .unwrap();
    let leads = [1, 10, 11, 12, 13, 14];
    eventually("B resynced", || {
        b.feed_status().unwrap().resyncs >= 1 && held(&b, 5..7, &leads) == later
    });
    assert!(
        !b.can_read(&user(5), &EntityId::lead(1)),
        "the revoke is not lost"
    );
    assert_eq!(b.feed_status().unwrap().position, head(&mut inside));
}

#[test]
fn an_idle_transaction_in_another_database_does_not_stall_the_feed() {
    let Some(server) = pg::url("an_idle_transaction_in_another_database_does_not_stall_the_feed")
    else {
        return;
    };
    let url = pg::fresh_database(&server);
    let other = pg::fresh_database(&server);
    // A transaction holding an xid open in another database: it would
    // hold back any snapshot-xmin watermark on the server.
    let mut idle = admin(&other);
    idle.batch_execute("CREATE TABLE t (x int); BEGIN; INSERT INTO t VALUES (1)")
        .unwrap();
    let (a, b) = (engine(&url), engine(&url));
    for i in 0..20 {
        let g = a
            .share(
                user(7),
                EntityId::lead(i),
                Context::Direct,
                Level::Read,
                Expiry::Default,
            )
            .unwrap();
        eventually("B sees each share while the transaction is open", || {
            b.can_read(&g.id.user, &g.id.entity)
        });
    }
    idle.batch_execute("ROLLBACK").unwrap();
}

/// The two-engine model test: random shares, revokes, extensions, clock
/// moves and restarts on two engines over one database; after every step
/// (once both have caught up with the head) both answer every pair as one
/// model does.
mod model {
    use std::collections::BTreeMap;

    use chrono::{DateTime, Utc};
    use grantwheel::{ChangeError, GrantId, RevokeError};
    use proptest::prelude::*;

    use super::*;
    use crate::common::{context, entity};

    const USERS: usize = 3;
    const ENTITIES: usize = 3;
    const CONTEXTS: usize = 2;

    type Key = (usize, usize, usize);

    #[derive(Clone, Debug)]
    enum Op {
        Share {
            on: usize,
            key: Key,
            edit: bool,
            minutes: i64,
        },
        Revoke {
            on: usize,
            key: Key,
        },
        Extend {
            on: usize,
            key: Key,
            minutes: i64,
        },
        Advance {
            minutes: i64,
        },
        Restart {
            on: usize,
        },
    }

    fn key() -> impl Strategy<Value = Key> {
        (0..USERS, 0..ENTITIES, 0..CONTEXTS)
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..2usize, key(), any::<bool>(), 1..180i64)
                .prop_map(|(on, key, edit, minutes)| Op::Share { on, key, edit, minutes }),
            2 => (0..2usize, key()).prop_map(|(on, key)| Op::Revoke { on, key }),
            1 => (0..2usize, key(), 1..120i64)
                .prop_map(|(on, key, minutes)| Op::Extend { on, key, minutes }),
            2 => (1..90i64).prop_map(|minutes| Op::Advance { minutes }),
            1 => (0..2usize).prop_map(|on| Op::Restart { on }),
        ]
    }

    fn open(url: &str, clock: &ManualClock) -> Engine {
        // The manual clock is far from the server's: the skew guard off.
        let far = Duration::days(36_500);
        engine_with(url, |b| b.clock(clock.clone()).clock_skew(far, far))
    }

    fn id_of(key: Key, serial: u64) -> GrantId {
        GrantId {
            user: user(key.0),
            entity: entity(key.1),
            context: context(key.2),
            serial,
        }
    }

    fn live(model: &BTreeMap<Key, Grant>, key: &Key, now: DateTime<Utc>) -> Option<Grant> {
        model.get(key).copied().filter(|g| g.expires_at > now)
    }

    fn run(server: &str, ops: &[Op]) -> Result<(), TestCaseError> {
        let url = pg::fresh_database(server);
        let clock = ManualClock::new(common::start());
        let mut engines = [open(&url, &clock), open(&url, &clock)];
        let mut sql = admin(&url);
        let mut model: BTreeMap<Key, Grant> = BTreeMap::new();
        for (step, op) in ops.iter().enumerate() {
            let now = engines[0].now();
            match op.clone() {
                Op::Share {
                    on,
                    key,
                    edit,
                    minutes,
                } => {
                    let level = if edit { Level::Edit } else { Level::Read };
                    let g = engines[on]
                        .share(
                            user(key.0),
                            entity(key.1),
                            context(key.2),
                            level,
                            Expiry::After(Duration::minutes(minutes)),
                        )
                        .map_err(|e| TestCaseError::fail(format!("step {step}: {e}")))?;
                    prop_assert_eq!(g.expires_at, now + Duration::minutes(minutes));
                    prop_assert_eq!(g.level, level);
                    if let Some(old) = live(&model, &key, now) {
                        prop_assert!(g.id.serial > old.id.serial, "serials grow in feed order");
                    }
                    model.insert(key, g);
                }
                Op::Revoke { on, key } => match live(&model, &key, now) {
                    Some(g) => {
                        let got = engines[on].revoke(&g.id);
                        prop_assert_eq!(got, Ok(g), "step {}", step);
                        model.remove(&key);
                    }
                    None => {
                        let id = id_of(key, model.get(&key).map_or(9_999, |g| g.id.serial));
                        let got = engines[on].revoke(&id);
                        prop_assert_eq!(got, Err(RevokeError::NotLive(id)), "step {}", step);
                    }
                },
                Op::Extend { on, key, minutes } => match live(&model, &key, now) {
                    Some(g) => {
                        let got = engines[on]
                            .extend(&g.id, Duration::minutes(minutes))
                            .map_err(|e| TestCaseError::fail(format!("step {step}: {e}")))?;
                        prop_assert_eq!(got.expires_at, g.expires_at + Duration::minutes(minutes));
                        model.insert(key, got);
                    }
                    None => {
                        let id = id_of(key, model.get(&key).map_or(9_999, |g| g.id.serial));
                        let got = engines[on].extend(&id, Duration::minutes(minutes));
                        prop_assert_eq!(got, Err(ChangeError::NotLive(id)), "step {}", step);
                    }
                },
                Op::Advance { minutes } => clock.advance(Duration::minutes(minutes)),
                Op::Restart { on } => {
                    engines[on] = open(&url, &clock);
                }
            }
            // Both caught up with the head: then both answer as the model.
            let head = head(&mut sql);
            for e in &engines {
                eventually("caught up", || e.feed_status().unwrap().position == head);
            }
            let now = engines[0].now();
            for u in 0..USERS {
                for en in 0..ENTITIES {
                    let mut want: Vec<Grant> = (0..CONTEXTS)
                        .filter_map(|c| live(&model, &(u, en, c), now))
                        .collect();
                    want.sort_by_key(|g| (g.expires_at, g.id.serial));
                    let read = !want.is_empty();
                    let edit = want.iter().any(|g| g.level == Level::Edit);
                    for (i, e) in engines.iter().enumerate() {
                        let (uu, ee) = (user(u), entity(en));
                        prop_assert_eq!(
                            (e.can_read(&uu, &ee), e.can_edit(&uu, &ee)),
                            (read, edit),
                            "step {} {:?}: engine {} on pair ({}, {})",
                            step,
                            op,
                            i,
                            u,
                            en
                        );
                        prop_assert_eq!(e.pair_grants(&uu, &ee), want.clone(), "step {}", step);
                    }
                }
            }
            for e in &engines {
                e.check_invariants().map_err(TestCaseError::fail)?;
            }
        }
        Ok(())
    }

    fn cases() -> u32 {
        std::env::var("GRANTWHEEL_INSTANCES_MODEL_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(16)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: cases(), max_shrink_iters: 200, ..ProptestConfig::default() })]

        #[test]
        fn two_engines_answer_as_one_model(ops in proptest::collection::vec(op(), 1..40)) {
            let Some(server) = pg::url("two_engines_answer_as_one_model") else {
                return Ok(());
            };
            run(&server, &ops)?;
        }
    }
}

#[test]
fn one_idempotency_key_on_two_instances_at_once_is_carried_out_once() {
    use grantwheel::requests::{Command, RequestStatus, ShareRequest, Sharing, Submission};
    let Some(server) = pg::url("one_idempotency_key_on_two_instances_at_once_is_carried_out_once")
    else {
        return;
    };
    let url = pg::fresh_database(&server);
    let (a, b) = (Sharing::new(engine(&url)), Sharing::new(engine(&url)));
    // The same keyed share sent to both instances at once (a CRM retrying
    // through the load balancer), many times: one request is carried out,
    // both calls answer with it, and neither fails.
    for round in 0..20u64 {
        let key = format!("crm-event-{round}");
        let send = |s: Sharing| {
            let key = key.clone();
            std::thread::spawn(move || {
                let req = ShareRequest::new(user(3), EntityId::lead(round), Level::Read);
                s.run(Submission::direct(Command::Share(req)).key(key))
            })
        };
        let (ra, rb) = (send(a.clone()), send(b.clone()));
        let (oa, ob) = (ra.join().unwrap(), rb.join().unwrap());
        assert_eq!(oa.request, ob.request, "round {round}: {oa:?} {ob:?}");
        for o in [&oa, &ob] {
            assert_eq!(o.status, RequestStatus::Completed, "round {round}: {o:?}");
        }
        let ea = a.engine().clone();
        eventually("A holds the one grant", || {
            ea.pair_grants(&user(3), &EntityId::lead(round)).len() == 1
        });
        let eb = b.engine().clone();
        eventually("B holds the one grant", || {
            eb.pair_grants(&user(3), &EntityId::lead(round)).len() == 1
        });
    }
    // One record per key in the shared history.
    let page = b
        .history(
            &EntityId::lead(7),
            &grantwheel::requests::HistoryQuery::default(),
        )
        .unwrap();
    assert_eq!(page.records.len(), 1, "{page:?}");
}

#[test]
fn delegation_is_decided_on_the_state_the_share_is_made_on() {
    use grantwheel::requests::{Command, RequestStatus, ShareRequest, Sharing, Submission};
    let Some(server) = pg::url("delegation_is_decided_on_the_state_the_share_is_made_on") else {
        return;
    };
    let url = pg::fresh_database(&server);
    // A polls only, and rarely: between its reads of the feed it has not
    // seen B's writes, so only a decision made after catching up under
    // the feed lock can see them.
    let slow = |b: grantwheel::EngineBuilder| b.feed_poll(Duration::seconds(30));
    let a = Sharing::new(
        Engine::builder()
            .store(PostgresStore::connect(&url).unwrap().poll_only())
            .feed_poll(Duration::seconds(30))
            .max_staleness(Duration::seconds(60))
            .build()
            .unwrap(),
    );
    let b = Sharing::new(engine_with(&url, slow));
    let (grantor, grantee, lead) = (user(10), user(11), EntityId::lead(500));
    let delegated = || {
        let req = ShareRequest::new(grantee, lead, Level::Read).duration(Duration::hours(1));
        Submission::direct(Command::Share(req)).granted_by(grantor)
    };
    // The grantor's access is shared on B; A gives on from it at once
    // (A's own poll has not run: the write lock made it catch up).
    let gives = ShareRequest::new(grantor, lead, Level::Read).duration(Duration::days(1));
    assert_eq!(b.share(gives).status, RequestStatus::Completed);
    let first = a.run(delegated());
    assert_eq!(first.status, RequestStatus::Completed, "{first:?}");
    // B revokes the grantor's access; A, not yet told, is asked to give
    // on again: it catches up under the lock and refuses.
    let revoked = b.revoke(grantwheel::requests::RevokeRequest {
        user: grantor,
        entity: lead,
        context: Context::Direct,
        level: Level::Read,
    });
    assert_eq!(revoked.status, RequestStatus::Completed, "{revoked:?}");
    let again = a.run(delegated());
    match &again.status {
        RequestStatus::Failed { kind, .. } => {
            assert_eq!(
                *kind,
                grantwheel::requests::FailureKind::Delegation,
                "{again:?}"
            )
        }
        other => panic!("a grantor without access gave it on: {other:?}"),
    }
}

#[test]
fn leased_expiry_events_are_raised_by_one_instance_and_pass_on_when_it_stops() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let Some(server) =
        pg::url("leased_expiry_events_are_raised_by_one_instance_and_pass_on_when_it_stops")
    else {
        return;
    };
    /// Long enough that a follower has every grant before it ends.
    const LIFE: i64 = 1500;
    let past_life = StdDuration::from_millis(LIFE as u64 + 100);
    let url = pg::fresh_database(&server);
    let leased = |b: grantwheel::EngineBuilder| {
        b.expiry_events(grantwheel::ExpiryEvents::Leased)
            .tick(Duration::milliseconds(10))
    };
    let counted = |e: &Engine| {
        let n = Arc::new(AtomicUsize::new(0));
        let sink = n.clone();
        e.subscribe(move |ev: &grantwheel::Event| {
            if matches!(ev, grantwheel::Event::Expired(_)) {
                sink.fetch_add(1, Ordering::Relaxed);
            }
        });
        n
    };
    let a = engine_with(&url, leased);
    let b = engine_with(&url, leased);
    let (na, nb) = (counted(&a), counted(&b));
    let holds = |e: &Engine| e.feed_status().unwrap().expiry_events;
    assert!(
        holds(&a) && !holds(&b),
        "the first engine up holds the lease"
    );

    // 40 short shares, made on both: each expiry is raised once, by A.
    let share_short = |e: &Engine, from: u64| {
        for i in from..from + 20 {
            e.share(
                user(20),
                EntityId::lead(i),
                Context::Direct,
                Level::Read,
                Expiry::After(Duration::milliseconds(LIFE)),
            )
            .unwrap();
        }
    };
    share_short(&a, 0);
    share_short(&b, 20);
    // Held (live, or expired and not yet reclaimed: no driver runs).
    eventually("both hold the 40 grants", || a.len() == 40 && b.len() == 40);
    std::thread::sleep(past_life);
    a.advance();
    b.advance();
    assert_eq!(
        (na.load(Ordering::Relaxed), nb.load(Ordering::Relaxed)),
        (40, 0),
        "each expiry raised once, by the holder"
    );
    assert_eq!((a.len(), b.len()), (0, 0), "all reclaimed");

    // A stops: its connection ends, and B takes the lease within a poll.
    drop(a);
    eventually("B takes the lease", || holds(&b));
    share_short(&b, 40);
    std::thread::sleep(past_life);
    b.advance();
    assert_eq!(nb.load(Ordering::Relaxed), 20, "B raises them now");

    // Everywhere (the default): every engine raises its own.
    let c = engine_with(&url, |b| b.tick(Duration::milliseconds(10)));
    let nc = counted(&c);
    share_short(&b, 60);
    eventually("C holds the 20 grants", || c.len() == 20);
    std::thread::sleep(past_life);
    c.advance();
    assert!(c.feed_status().unwrap().expiry_events);
    assert_eq!(nc.load(Ordering::Relaxed), 20);
}

#[test]
fn rules_written_on_one_instance_act_on_every_instance_with_unique_ids() {
    use grantwheel::requests::automation::{
        AutomationEvent, Rule, RuleState, ShareAction, ShareWith, Trigger,
    };
    use grantwheel::requests::Sharing;
    use grantwheel::EntityKind;
    let Some(server) =
        pg::url("rules_written_on_one_instance_act_on_every_instance_with_unique_ids")
    else {
        return;
    };
    let url = pg::fresh_database(&server);
    let (a, b) = (Sharing::new(engine(&url)), Sharing::new(engine(&url)));
    let rule = |n: usize| {
        Rule::new(
            format!("rule {n}"),
            Trigger::TaskCreated,
            EntityKind::OPPORTUNITY,
            ShareAction {
                with: ShareWith::TaskOwner,
                duration_minutes: Some(60),
                level: Level::Read,
            },
        )
    };
    // Rules added on both at once: every id is unique, and both
    // instances end with the same 20 rules.
    let add = |s: Sharing, from: usize| {
        std::thread::spawn(move || {
            (from..from + 10)
                .map(|n| s.add_rule(rule(n)).unwrap())
                .collect::<Vec<_>>()
        })
    };
    let (ta, tb) = (add(a.clone(), 0), add(b.clone(), 10));
    let mut ids = ta.join().unwrap();
    ids.extend(tb.join().unwrap());
    let mut unique = ids.clone();
    unique.sort_unstable_by_key(|id| id.0);
    unique.dedup();
    assert_eq!(
        unique.len(),
        20,
        "rule ids unique across instances: {ids:?}"
    );
    eventually("both hold the 20 rules", || {
        a.rules().len() == 20 && a.rules() == b.rules()
    });

    // Published on B, a rule made on A acts on A.
    let id = ids[0];
    b.publish_rule(id).unwrap();
    eventually("A sees it published", || {
        a.rule(id).is_some_and(|r| r.state == RuleState::Published)
    });
    let owner = user(30);
    let event = AutomationEvent {
        id: "task-1".into(),
        trigger: Trigger::TaskCreated,
        entity: EntityId::opportunity(9),
        activity: None,
        task: Some((uuid::Uuid::from_u128(9), owner)),
        fields: Default::default(),
    };
    let made = a.on_event(&event);
    assert_eq!(made.len(), 1, "the one published rule acted on A");
    assert_eq!(a.process(10), 1);
    let status = a.status(&made[0]).unwrap();
    assert_eq!(status, Some(grantwheel::requests::RequestStatus::Completed));
    assert!(a.engine().can_read(&owner, &EntityId::opportunity(9)));

    // Removed on A: gone on B.
    assert!(a.remove_rule(id).unwrap().is_some());
    eventually("B no longer has it", || b.rule(id).is_none());
    assert!(b
        .on_event(&AutomationEvent {
            id: "task-2".into(),
            ..event
        })
        .is_empty());
}

#[test]
fn requests_left_processing_fail_only_once_their_instance_is_gone() {
    use grantwheel::requests::{
        Command, FailureKind, RequestStatus, ShareRequest, Sharing, Submission,
    };
    let Some(server) = pg::url("requests_left_processing_fail_only_once_their_instance_is_gone")
    else {
        return;
    };
    let url = pg::fresh_database(&server);
    let name = url.rsplit('/').next().unwrap().to_string();
    let mut sql = admin(&server);
    let advisory_locks = |sql: &mut Client| -> i64 {
        sql.query_one(
            "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database WHERE l.locktype = 'advisory' AND d.datname = $1",
            &[&name],
        )
        .unwrap()
        .get(0)
    };
    let queue = |s: &Sharing, from: u64| {
        s.submit(
            (from..from + 5)
                .map(|i| {
                    Submission::direct(Command::Share(ShareRequest::new(
                        user(40),
                        EntityId::lead(i),
                        Level::Read,
                    )))
                })
                .collect(),
        )
    };
    let a = Sharing::new(engine(&url));
    let queued = queue(&a, 0);
    // Another instance starting meanwhile leaves A's queue alone: A is
    // alive, so its requests are its own to finish.
    let b = Sharing::new(engine(&url));
    for id in &queued {
        assert_eq!(b.status(id).unwrap(), Some(RequestStatus::Processing));
    }
    assert_eq!(a.process(10), 5);
    for id in &queued {
        assert_eq!(b.status(id).unwrap(), Some(RequestStatus::Completed));
    }

    // A stops with requests queued: once it is gone, the next instance to
    // start fails them as interrupted.
    let left = queue(&a, 10);
    assert_eq!(advisory_locks(&mut sql), 2, "A's and B's owner locks");
    drop(a);
    eventually("A's connections are closed", || {
        advisory_locks(&mut sql) == 1
    });
    let c = Sharing::new(engine(&url));
    for id in &left {
        match c.status(id).unwrap() {
            Some(RequestStatus::Failed { kind, .. }) => assert_eq!(kind, FailureKind::Interrupted),
            other => panic!("{id:?}: {other:?}"),
        }
    }
    // B's and C's own queues stay theirs.
    let mine = queue(&b, 20);
    drop(Sharing::new(engine(&url)));
    for id in &mine {
        assert_eq!(c.status(id).unwrap(), Some(RequestStatus::Processing));
    }
}
