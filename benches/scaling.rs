//! Aggregate checks per second with 1 and 2 threads, grantwheel and the two
//! bare-map baselines of the check benchmark, at 10k and 1M grants (`GRANTWHEEL_SCALING_SIZES`).

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
use std::sync::Arc;
use std::time::{Duration, Instant};

use grantwheel::Clock;

const RUN: Duration = Duration::from_millis(1500);

fn rate<F: Fn(usize) -> u64 + Sync>(threads: usize, check: F) -> f64 {
    let start = Instant::now();
    let total: u64 = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|t| {
                let check = &check;
                s.spawn(move || {
                    let mut n = 0u64;
                    let mut i = t * 7919;
                    while start.elapsed() < RUN {
                        for _ in 0..1024 {
                            black_box(check(i));
                            i += 1;
                        }
                        n += 1024;
                    }
                    n
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).sum()
    });
    total as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    for n in common::sizes("GRANTWHEEL_SCALING_SIZES", &[10_000, 1_000_000]) {
        let keys = Arc::new(common::keys(n, 31));
        let (clock, engine) = common::engine(&keys);
        let base = common::baseline(&keys);
        let packed = common::packed_keys(&keys);
        let tight = common::packed_baseline(&keys, &packed);
        let order = common::order(n, 1 << 20, 32);
        let mask = order.len() - 1;
        for threads in [1, 2] {
            let b = rate(threads, |i| {
                let (u, e, _, _) = &keys[order[i & mask] as usize];
                let now = clock.now_millis();
                u64::from(base.get(&(*u, *e)).is_some_and(|x| now < *x))
            });
            let p = rate(threads, |i| {
                let k = packed[order[i & mask] as usize];
                let now = clock.now_millis();
                u64::from(tight.get(&k).is_some_and(|x| now < *x))
            });
            let g = rate(threads, |i| {
                let (u, e, _, _) = &keys[order[i & mask] as usize];
                u64::from(engine.can_read(u, e))
            });
            println!(
                "n={n} threads={threads} baseline_checks_per_sec={b:.0} packed_u64_checks_per_sec={p:.0} grantwheel_checks_per_sec={g:.0} ratio={:.2} ratio_to_packed={:.2}",
                g / b,
                g / p
            );
        }
    }
}
