//! The crash test across instances: a child process (instance A) shares
//! and revokes on two threads over PostgreSQL and reports each
//! acknowledged call on its stdout; this process runs instance B, which
//! follows. A is killed with SIGKILL at a random moment and started again,
//! cycle after cycle. After each kill, B and a freshly started A agree
//! with everything A acknowledged: no acknowledged share lost, no
//! acknowledged revoke undone, nothing past its expiry, nothing held that
//! was never asked for.
//!
//! 20 cycles by default; `GRANTWHEEL_PG_CRASH_CYCLES` for more. Needs a
//! server: `GRANTWHEEL_PG_URL` (see `support/pg.rs`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::unreachable,
    reason = "a test stops loudly at what it did not expect"
)]
#![cfg(feature = "postgres")]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration as StdDuration, Instant};

use chrono::{DateTime, Duration, Utc};
use grantwheel::store::PostgresStore;
use grantwheel::{Context, Engine, EntityId, Expiry, Level, UserId};
use rand::{rngs::StdRng, RngExt, SeedableRng};

#[path = "support/pg.rs"]
mod pg;

const CHILD_ENV: &str = "GRANTWHEEL_PG_CRASH_CHILD";
const USERS: u128 = 7;

fn user(i: u128) -> UserId {
    UserId::from_u128(0x7000 + i)
}

/// The number of a lead (every entity here is one).
fn lead_number(e: &EntityId) -> u64 {
    match e.id {
        grantwheel::EntityRef::Number(n) => n,
        grantwheel::EntityRef::Uuid(_) => u64::MAX,
    }
}

fn engine(url: &str) -> Engine {
    Engine::builder()
        .store(PostgresStore::connect(url).unwrap())
        .build()
        .unwrap()
}

/// Instance A: works until killed. `ACK S entity user serial expires_ms`
/// after a share returned, `TRY R entity` before a revoke is made and
/// `ACK R entity` after it returned. Each share is of an entity of its
/// own, so a grant is named by its entity.
#[test]
fn crash_child() {
    let Ok(url) = std::env::var(CHILD_ENV) else {
        return;
    };
    let cycle: u64 = std::env::var("GRANTWHEEL_PG_CRASH_CYCLE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let a = engine(&url);
    let stop = Instant::now() + StdDuration::from_secs(20);
    std::thread::scope(|s| {
        for t in 0..2u64 {
            let a = a.clone();
            s.spawn(move || {
                let mut rng = StdRng::seed_from_u64(cycle * 7 + t);
                let mut mine = Vec::new();
                let mut next = (cycle * 2 + t) * 1_000_000;
                while Instant::now() < stop {
                    if rng.random_bool(0.7) || mine.is_empty() {
                        next += 1;
                        let u = user(rng.random_range(0..USERS));
                        // Some expire within the test, most do not.
                        let ms = if rng.random_bool(0.2) {
                            rng.random_range(50..1500)
                        } else {
                            3_600_000
                        };
                        let g = a
                            .share(
                                u,
                                EntityId::lead(next),
                                Context::Direct,
                                Level::Read,
                                Expiry::After(Duration::milliseconds(ms)),
                            )
                            .unwrap();
                        println!(
                            "ACK S {next} {} {} {}",
                            u.as_u128(),
                            g.id.serial,
                            g.expires_at.timestamp_millis()
                        );
                        mine.push(g);
                    } else {
                        let g = mine.swap_remove(rng.random_range(0..mine.len()));
                        let n = lead_number(&g.id.entity);
                        println!("TRY R {n}");
                        match a.revoke(&g.id) {
                            Ok(_) => println!("ACK R {n}"),
                            // Expired meanwhile.
                            Err(grantwheel::RevokeError::NotLive(_)) => {}
                            Err(e) => panic!("{e}"),
                        }
                    }
                }
            });
        }
    });
}

/// What A acknowledged of one grant (by entity).
#[derive(Clone, Debug, Default)]
struct Known {
    user: u128,
    serial: u64,
    expires: i64,
    revoke_tried: bool,
    revoked: bool,
}

fn parse(line: &str, known: &mut BTreeMap<u64, Known>) {
    let w: Vec<&str> = line.split_whitespace().collect();
    let num = |i: usize| w.get(i).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
    match (w.first(), w.get(1)) {
        (Some(&"ACK"), Some(&"S")) => {
            known.insert(
                num(2) as u64,
                Known {
                    // Printed as the UUID's number; `user` adds the base.
                    user: (num(3) as u128).wrapping_sub(0x7000),
                    serial: num(4) as u64,
                    expires: num(5),
                    ..Known::default()
                },
            );
        }
        (Some(&"TRY"), Some(&"R")) => {
            if let Some(k) = known.get_mut(&(num(2) as u64)) {
                k.revoke_tried = true;
            }
        }
        (Some(&"ACK"), Some(&"R")) => {
            if let Some(k) = known.get_mut(&(num(2) as u64)) {
                k.revoked = true;
            }
        }
        _ => {}
    }
}

/// Check `e` against what A acknowledged; returns the violations.
fn violations(e: &Engine, known: &BTreeMap<u64, Known>, kills: u64, name: &str) -> Vec<String> {
    let now = Utc::now().timestamp_millis();
    let mut bad = Vec::new();
    for (entity, k) in known {
        let (u, lead) = (user(k.user), EntityId::lead(*entity));
        let held = e.pair_grants(&u, &lead);
        let live = k.expires > now + 50;
        if k.revoked {
            if !held.is_empty() || e.can_read(&u, &lead) {
                bad.push(format!(
                    "{name}: acknowledged revoke of lead {entity} undone"
                ));
            }
        } else if !k.revoke_tried && live {
            let ok = held.len() == 1
                && held[0].id.serial == k.serial
                && held[0].expires_at.timestamp_millis() == k.expires;
            if !ok || !e.can_read(&u, &lead) {
                bad.push(format!(
                    "{name}: acknowledged share of lead {entity} lost: {held:?}"
                ));
            }
        }
        if k.expires <= now && e.can_read(&u, &lead) {
            bad.push(format!("{name}: lead {entity} honoured past its expiry"));
        }
    }
    // Nothing held that was not asked for: a grant A never acknowledged
    // is at most the one call each of its two threads had in flight when
    // it was killed.
    let mut unknown = 0;
    for i in 0..USERS {
        for g in e.user_grants(&user(i)) {
            let n = lead_number(&g.id.entity);
            if !known.contains_key(&n) {
                unknown += 1;
                if n / 1_000_000 >= 2 * kills {
                    bad.push(format!("{name}: {g:?} was never asked for"));
                }
            }
        }
    }
    if unknown > 2 * kills {
        bad.push(format!(
            "{name}: {unknown} grants never acknowledged after {kills} kills"
        ));
    }
    bad
}

#[test]
fn kill_nine_on_one_instance_loses_nothing_the_other_follows() {
    let Some(server) = pg::url("kill_nine_on_one_instance_loses_nothing_the_other_follows") else {
        return;
    };
    let cycles: u64 = std::env::var("GRANTWHEEL_PG_CRASH_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let url = pg::fresh_database(&server);
    let b = engine(&url);
    let exe = std::env::current_exe().unwrap();
    let mut rng = StdRng::seed_from_u64(0x9c4a5);
    let mut known: BTreeMap<u64, Known> = BTreeMap::new();
    let mut acks = 0usize;
    let mut sql = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let started = Instant::now();
    for cycle in 0..cycles {
        let mut child = Command::new(&exe)
            .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, &url)
            .env("GRANTWHEEL_PG_CRASH_CYCLE", cycle.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            let mut r = BufReader::new(stdout);
            let mut line = String::new();
            while r.read_line(&mut line).unwrap_or(0) > 0 {
                // A line cut by the kill was not reported.
                let at = line.find("ACK ").or_else(|| line.find("TRY "));
                if let (true, Some(at)) = (line.ends_with('\n'), at) {
                    lines.push(line[at..].trim_end().to_string());
                }
                line.clear();
            }
            lines
        });
        std::thread::sleep(StdDuration::from_millis(rng.random_range(150..600)));
        child.kill().unwrap();
        child.wait().unwrap();
        for line in reader.join().unwrap() {
            acks += usize::from(line.starts_with("ACK"));
            parse(&line, &mut known);
        }
        // B at the head; a restarted A reads the same.
        let head: i64 = sql
            .query_one("SELECT seq FROM grantwheel_feed_head", &[])
            .unwrap()
            .get(0);
        let t = Instant::now();
        while b.feed_status().unwrap().position < head as u64 {
            assert!(
                t.elapsed() < StdDuration::from_secs(10),
                "B never caught up"
            );
            std::thread::sleep(StdDuration::from_millis(2));
        }
        let a = engine(&url);
        let mut bad = violations(&b, &known, cycle + 1, "B");
        bad.extend(violations(&a, &known, cycle + 1, "restarted A"));
        assert!(bad.is_empty(), "cycle {cycle}: {bad:#?}");
        b.check_invariants().unwrap();
    }
    assert!(
        acks as u64 > cycles * 10,
        "the children got work done ({acks})"
    );
    let at: DateTime<Utc> = Utc::now();
    eprintln!(
        "{cycles} kills of instance A, {acks} acknowledged operations checked on B and a restarted A, 0 violations, {:.1} s (ended {at})",
        started.elapsed().as_secs_f64()
    );
}
