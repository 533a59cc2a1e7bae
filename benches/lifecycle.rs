//! Share, revoke and expiry throughput.
//!
//! - `lifecycle/share`: 100k shares into an empty engine;
//! - `lifecycle/revoke`: 100k revokes by id;
//! - `lifecycle/expire_1M`: one `advance` that expires 1M grants;
//! - `lifecycle/start_1M`: one `advance` that starts 1M scheduled grants
//!   (they go live: the same wheel work as an expiry, plus re-arming each
//!   for its end and publishing its pair).

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
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use grantwheel::{Engine, Expiry, ManualClock, ShareSpec, Start};

const N: usize = 100_000;
const EXPIRING: usize = 1_000_000;

fn bench(c: &mut Criterion) {
    let keys = common::keys(N, 11);
    let mut g = c.benchmark_group("lifecycle");
    g.sample_size(10);
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("share", |b| {
        b.iter_batched(
            || {
                Engine::builder()
                    .clock(ManualClock::new(common::start()))
                    .build()
                    .unwrap()
            },
            |engine| {
                common::share_all(&engine, &keys);
                engine
            },
            BatchSize::PerIteration,
        )
    });
    g.bench_function("revoke", |b| {
        b.iter_batched(
            || {
                let (_, engine) = common::engine(&keys);
                let ids: Vec<_> = keys
                    .iter()
                    .flat_map(|(u, e, _, _)| engine.pair_grants(u, e))
                    .map(|g| g.id)
                    .collect();
                (engine, ids)
            },
            |(engine, ids)| {
                for id in &ids {
                    engine.revoke(id).unwrap();
                }
                engine
            },
            BatchSize::PerIteration,
        )
    });
    let expiring = common::keys(EXPIRING, 12);
    g.throughput(Throughput::Elements(EXPIRING as u64));
    g.bench_function("expire_1M", |b| {
        b.iter_batched(
            || {
                let (clock, engine) = common::engine(&expiring);
                clock.advance(Duration::days(91));
                engine
            },
            |engine| {
                assert_eq!(engine.advance(), EXPIRING);
                engine
            },
            BatchSize::PerIteration,
        )
    });
    g.bench_function("start_1M", |b| {
        b.iter_batched(
            || {
                let clock = ManualClock::new(common::start());
                let engine = Engine::builder()
                    .clock(clock.clone())
                    .capacity(EXPIRING)
                    .build()
                    .unwrap();
                // Starts spread over ten days, as the expiries above are
                // spread over ninety; each lasts eighty days from its start.
                for (u, e, l, secs) in &expiring {
                    let start = Start::After(Duration::seconds(secs % (10 * 86_400)));
                    engine
                        .share_spec(
                            ShareSpec::new(*u, *e, *l)
                                .start(start)
                                .expiry(Expiry::After(Duration::days(80))),
                        )
                        .unwrap();
                }
                clock.advance(Duration::days(11));
                engine
            },
            |engine| {
                assert_eq!(engine.advance(), 0, "all start, none ends");
                engine
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
