//! Durable throughput and restart time with the SQLite store
//! (`synchronous=FULL`, WAL).
//!
//! - `durable/share_single`: one share per call, one thread: one batch and
//!   one sync per share;
//! - `durable/share_8_threads`: single shares from 8 threads, committed in
//!   groups;
//! - `durable/share_many_100`, `durable/share_many_10000`: batches;
//! - `durable/restart_1M` (and `restart_10M` with
//!   `GRANTWHEEL_BENCH_10M=1`): open the file and build the engine, live
//!   grants indexed and scheduled.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::unreachable,
    reason = "a test stops loudly at what it did not expect"
)]
mod common;

use chrono::Duration;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use grantwheel::store::SqliteStore;
use grantwheel::{Context, Engine, Expiry, ManualClock, ShareSpec, Start};

fn open(path: &std::path::Path, capacity: usize) -> Engine {
    Engine::builder()
        .clock(ManualClock::new(common::start()))
        .capacity(capacity)
        .store(SqliteStore::open(path).unwrap())
        .build()
        .unwrap()
}

fn specs(
    keys: &[(
        grantwheel::UserId,
        grantwheel::EntityId,
        grantwheel::Level,
        i64,
    )],
) -> Vec<ShareSpec> {
    keys.iter()
        .map(|(u, e, l, secs)| ShareSpec {
            user: *u,
            entity: *e,
            context: Context::Direct,
            level: *l,
            start: Start::Now,
            expiry: Expiry::After(Duration::seconds(*secs)),
        })
        .collect()
}

fn shares(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut g = c.benchmark_group("durable");
    g.sample_size(10);
    let keys = specs(&common::keys(400_000, 5));
    let mut next = 0usize;
    let mut take = |n: usize| {
        let out: Vec<ShareSpec> = (0..n).map(|i| keys[(next + i) % keys.len()]).collect();
        next += n;
        out
    };

    let engine = open(&dir.path().join("single.db"), 0);
    g.throughput(Throughput::Elements(100));
    g.bench_function("share_single", |b| {
        b.iter(|| {
            for s in take(100) {
                engine
                    .share(s.user, s.entity, s.context, s.level, s.expiry)
                    .unwrap();
            }
        })
    });
    drop(engine);

    let engine = open(&dir.path().join("threads.db"), 0);
    g.throughput(Throughput::Elements(8 * 200));
    g.bench_function("share_8_threads", |b| {
        b.iter(|| {
            let work: Vec<Vec<ShareSpec>> = (0..8).map(|_| take(200)).collect();
            std::thread::scope(|s| {
                for part in work {
                    let engine = engine.clone();
                    s.spawn(move || {
                        for s in part {
                            engine
                                .share(s.user, s.entity, s.context, s.level, s.expiry)
                                .unwrap();
                        }
                    });
                }
            });
        })
    });
    drop(engine);

    for batch in [100usize, 10_000] {
        let engine = open(&dir.path().join(format!("batch{batch}.db")), 0);
        let rounds = (20_000 / batch).max(1);
        g.throughput(Throughput::Elements((batch * rounds) as u64));
        g.bench_function(format!("share_many_{batch}"), |b| {
            b.iter(|| {
                for _ in 0..rounds {
                    let results = engine.share_many(take(batch));
                    assert!(results.iter().all(Result::is_ok));
                }
            })
        });
    }
    g.finish();
}

fn restart(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut g = c.benchmark_group("durable");
    g.sample_size(10);
    let mut sizes = vec![("restart_1M", 1_000_000usize)];
    if std::env::var("GRANTWHEEL_BENCH_10M").is_ok() {
        sizes.push(("restart_10M", 10_000_000));
    }
    for (name, n) in sizes {
        let path = dir.path().join(format!("{name}.db"));
        {
            let engine = open(&path, n);
            for chunk in common::keys(n, 21).chunks(50_000) {
                let results = engine.share_many(specs(chunk));
                assert!(results.iter().all(Result::is_ok));
            }
        }
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(name, |b| {
            b.iter_with_large_drop(|| {
                let engine = open(&path, n);
                assert_eq!(engine.len(), n);
                engine
            })
        });
    }
    g.finish();
}

criterion_group!(benches, shares, restart);
criterion_main!(benches);
