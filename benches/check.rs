//! Check latency against two bare-map baselines, at 10k, 1M and 10M live
//! grants (`GRANTWHEEL_CHECK_SIZES=10000,1000000` to choose):
//! `hashbrown_baseline` keyed by the same (UUID, entity) pairs, and
//! `packed_u64_baseline` keyed by one packed `u64` (user number, lead id),
//! the tightest probe a map can do. At 10k, `can_read_hit_system_clock`
//! and `can_read_miss_system_clock` are the same checks on an engine
//! reading the operating system's clock.
//!
//! `check/*/scheduled_*`: an engine holding the same live grants and as
//! many more scheduled to start later, on other pairs: a hit on a live
//! pair beside them, and a check of a pair whose only grant is yet to
//! start (no). Scheduled grants should add nothing to either.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::unreachable,
    reason = "a test stops loudly at what it did not expect"
)]
mod common;

use std::hint::black_box;

use chrono::Duration;
use criterion::{criterion_group, criterion_main, Bencher, Criterion};
use grantwheel::{Clock, EntityId, Level, ShareSpec, Start, UserId};

fn bench(c: &mut Criterion) {
    for n in common::sizes("GRANTWHEEL_CHECK_SIZES", &[10_000, 1_000_000, 10_000_000]) {
        let keys = common::keys(n, 1);
        let (clock, engine) = common::engine(&keys);
        let base = common::baseline(&keys);
        let packed = common::packed_keys(&keys);
        let tight = common::packed_baseline(&keys, &packed);
        let order = common::order(n, 1 << 20, 2);
        let absent: Vec<(UserId, EntityId)> = common::keys(1 << 16, 3)
            .into_iter()
            .map(|(u, e, _, _)| (u, e))
            .collect();
        let label = match n {
            n if n >= 1_000_000 => format!("check/{}M", n / 1_000_000),
            n => format!("check/{}k", n / 1_000),
        };
        let mut g = c.benchmark_group(label);
        let mut i = 0usize;
        g.bench_function("hashbrown_baseline", |b| {
            b.iter(|| {
                let (u, e, _, _) = &keys[order[i & (order.len() - 1)] as usize];
                i += 1;
                let now = clock.now_millis();
                black_box(base.get(&(*u, *e)).is_some_and(|exp| now < *exp))
            })
        });
        g.bench_function("packed_u64_baseline", |b| {
            b.iter(|| {
                let k = packed[order[i & (order.len() - 1)] as usize];
                i += 1;
                let now = clock.now_millis();
                black_box(tight.get(&k).is_some_and(|exp| now < *exp))
            })
        });
        g.bench_function("can_read_hit", |b| {
            in_order(b, &keys, &order, &mut i, |u, e| engine.can_read(u, e))
        });
        g.bench_function("can_read_miss", |b| {
            in_turn(b, &absent, &mut i, |u, e| engine.can_read(u, e))
        });
        g.bench_function("can_edit_hit", |b| {
            in_order(b, &keys, &order, &mut i, |u, e| engine.can_edit(u, e))
        });
        if n == 10_000 {
            // What the operating system's clock adds to a check, where the
            // probe itself is cheapest (the other functions use a manual
            // clock, whose read is one load).
            let on_system = common::engine_on_system_clock(&keys);
            g.bench_function("can_read_hit_system_clock", |b| {
                in_order(b, &keys, &order, &mut i, |u, e| on_system.can_read(u, e))
            });
            g.bench_function("can_read_miss_system_clock", |b| {
                in_turn(b, &absent, &mut i, |u, e| on_system.can_read(u, e))
            });
        }
        drop(engine);
        // The same live grants, and as many scheduled on other pairs.
        let (_, engine) = common::engine(&keys);
        let later = common::keys(n, 4);
        for (u, e, l, _) in &later {
            engine
                .share_spec(ShareSpec::new(*u, *e, *l).start(Start::After(Duration::days(7))))
                .unwrap();
        }
        g.bench_function("scheduled_beside_hit", |b| {
            in_order(b, &keys, &order, &mut i, |u, e| engine.can_read(u, e))
        });
        g.bench_function("scheduled_pair_no", |b| {
            in_order(b, &later, &order, &mut i, |u, e| engine.can_read(u, e))
        });
        g.finish();
    }
}

/// `check` on `keys` in the benchmark's random `order` (a power of two
/// long), from the shared counter `i`.
fn in_order(
    b: &mut Bencher,
    keys: &[(UserId, EntityId, Level, i64)],
    order: &[u32],
    i: &mut usize,
    check: impl Fn(&UserId, &EntityId) -> bool,
) {
    b.iter(|| {
        let (u, e, _, _) = &keys[order[*i & (order.len() - 1)] as usize];
        *i += 1;
        black_box(check(u, e))
    })
}

/// `check` on pairs that hold no grant (a power of two of them), in turn.
fn in_turn(
    b: &mut Bencher,
    pairs: &[(UserId, EntityId)],
    i: &mut usize,
    check: impl Fn(&UserId, &EntityId) -> bool,
) {
    b.iter(|| {
        let (u, e) = &pairs[*i & (pairs.len() - 1)];
        *i += 1;
        black_box(check(u, e))
    })
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(std::time::Duration::from_secs(1))
        .measurement_time(std::time::Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
