//! Many instances over PostgreSQL: a program that prints figures (run it
//! with a server: `.ci/pg-cluster run cargo bench --bench instances
//! --features postgres`).
//!
//! - propagation: a revoke on instance A until instance B says no, p50
//!   and p99 over `GRANTWHEEL_BENCH_REVOKES` revokes (default 1,000),
//!   with wake-ups and with polling alone;
//! - durable shares: single calls on 1 and 8 threads, batches of 100 and
//!   10,000;
//! - a new instance joining with 1M live grants (time to serve), and a
//!   follower applying a burst of 100,000 changes.
//!
//! Each figure is a ratio-free absolute: the server runs on the same
//! machine (loopback), so they are a floor of what a network adds to.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::unreachable,
    reason = "a test stops loudly at what it did not expect"
)]
use std::time::{Duration as StdDuration, Instant};

use chrono::Duration;
use grantwheel::store::PostgresStore;
use grantwheel::{Context, Engine, EntityId, Expiry, Level, ShareSpec, Start, UserId};

fn server() -> Option<String> {
    match std::env::var("GRANTWHEEL_PG_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            eprintln!("instances: no PostgreSQL server (set GRANTWHEEL_PG_URL, or run under `.ci/pg-cluster run`); nothing measured");
            None
        }
    }
}

/// A new empty database on the server; returns its URL.
fn fresh(server: &str, name: &str) -> String {
    let mut admin = postgres::Client::connect(server, postgres::NoTls).unwrap();
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name}"))
        .unwrap();
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .unwrap();
    let base = server.rsplit_once('/').map_or(server, |(b, _)| b);
    format!("{base}/{name}")
}

fn engine(store: PostgresStore) -> Engine {
    Engine::builder().store(store).build().unwrap()
}

fn connect(url: &str) -> PostgresStore {
    PostgresStore::connect(url).unwrap()
}

fn percentile(sorted: &[StdDuration], p: f64) -> StdDuration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: StdDuration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn spec(i: u64) -> ShareSpec {
    ShareSpec {
        user: UserId::from_u128(u128::from(i % 100_000) + 1),
        entity: EntityId::lead(i),
        context: Context::Direct,
        level: if i.is_multiple_of(3) {
            Level::Edit
        } else {
            Level::Read
        },
        expiry: Expiry::After(Duration::days(30)),
        start: Start::Now,
    }
}

/// Revoke on `a` until `b` says no, `n` times.
fn propagation(a: &Engine, b: &Engine, n: usize, label: &str) {
    let mut lat = Vec::with_capacity(n);
    for i in 0..n as u64 {
        let s = spec(1_000_000_000 + i);
        let g = a
            .share(s.user, s.entity, s.context, s.level, s.expiry)
            .unwrap();
        while !b.can_read(&s.user, &s.entity) {
            std::thread::sleep(StdDuration::from_micros(50));
        }
        let t = Instant::now();
        a.revoke(&g.id).unwrap();
        while b.can_read(&s.user, &s.entity) {
            std::hint::spin_loop();
        }
        lat.push(t.elapsed());
    }
    lat.sort();
    println!(
        "propagation {label}: revoke on A to no on B over {n}: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.99)),
        ms(lat[lat.len() - 1])
    );
}

fn shares(url: &str) {
    let e = engine(connect(url));
    let mut next = 2_000_000_000u64;
    let mut take = |n: u64| {
        let out: Vec<ShareSpec> = (next..next + n).map(spec).collect();
        next += n;
        out
    };
    // Single calls, one thread.
    let items = take(2_000);
    let t = Instant::now();
    for s in &items {
        e.share(s.user, s.entity, s.context, s.level, s.expiry)
            .unwrap();
    }
    let one = items.len() as f64 / t.elapsed().as_secs_f64();
    println!("durable shares, single calls, 1 thread: {one:.0}/s");
    // Single calls, 8 threads (committed in groups).
    let per = 1_000;
    let work: Vec<Vec<ShareSpec>> = (0..8).map(|_| take(per)).collect();
    let t = Instant::now();
    std::thread::scope(|sc| {
        for items in &work {
            let e = e.clone();
            sc.spawn(move || {
                for s in items {
                    e.share(s.user, s.entity, s.context, s.level, s.expiry)
                        .unwrap();
                }
            });
        }
    });
    let eight = (8 * per) as f64 / t.elapsed().as_secs_f64();
    println!(
        "durable shares, single calls, 8 threads: {eight:.0}/s ({:.1}x one thread)",
        eight / one
    );
    for (size, rounds) in [(100u64, 100), (10_000, 10)] {
        let batches: Vec<Vec<ShareSpec>> = (0..rounds).map(|_| take(size)).collect();
        let t = Instant::now();
        for b in batches {
            assert!(e.share_many(b).iter().all(Result::is_ok));
        }
        let rate = (size * rounds) as f64 / t.elapsed().as_secs_f64();
        println!("durable shares, batches of {size}: {rate:.0} grants/s");
    }
}

fn joining_and_burst(url: &str) {
    const LIVE: u64 = 1_000_000;
    let a = engine(connect(url));
    let t = Instant::now();
    for start in (0..LIVE).step_by(10_000) {
        let batch: Vec<ShareSpec> = (start..start + 10_000).map(spec).collect();
        assert!(a.share_many(batch).iter().all(Result::is_ok));
    }
    println!(
        "writing {LIVE} grants in batches of 10,000: {:.1} s ({:.0} grants/s)",
        t.elapsed().as_secs_f64(),
        LIVE as f64 / t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let b = Engine::builder()
        .capacity(LIVE as usize + 200_000)
        .store(connect(url))
        .build()
        .unwrap();
    let took = t.elapsed();
    assert_eq!(b.len(), LIVE as usize);
    println!(
        "new instance joining with {LIVE} live grants: serving after {:.2} s ({:.0} grants/s)",
        took.as_secs_f64(),
        LIVE as f64 / took.as_secs_f64()
    );
    // A burst of 100,000 changes in one transaction, applied by B's
    // follower: from A's commit until B is at the head.
    const BURST: u64 = 100_000;
    let batch: Vec<ShareSpec> = (LIVE..LIVE + BURST).map(spec).collect();
    assert!(a.share_many(batch).iter().all(Result::is_ok));
    let t = Instant::now();
    let head = a.feed_status().unwrap().position;
    while b.feed_status().unwrap().position < head {
        std::thread::sleep(StdDuration::from_micros(200));
    }
    let took = t.elapsed();
    assert_eq!(b.len(), (LIVE + BURST) as usize);
    println!(
        "follower applying a burst of {BURST} changes (one batch): {:.0} ms ({:.0} changes/s)",
        ms(took),
        BURST as f64 / took.as_secs_f64()
    );
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is not used.
    let Some(server) = server() else { return };
    let revokes: usize = std::env::var("GRANTWHEEL_BENCH_REVOKES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000);
    let url = fresh(&server, "grantwheel_bench_propagation");
    let a = engine(connect(&url));
    let b = engine(connect(&url));
    propagation(&a, &b, revokes, "with wake-ups");
    let polled = engine(connect(&url).poll_only());
    propagation(&a, &polled, revokes, "polling alone (250 ms)");
    drop((a, b, polled));
    shares(&fresh(&server, "grantwheel_bench_shares"));
    joining_and_burst(&fresh(&server, "grantwheel_bench_join"));
}
