//! The request layer: share batches in the API's JSON (1, 100 and 10,000
//! items, decoded and carried out), and history queries on an entity with
//! 100k records.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::unreachable,
    reason = "a test stops loudly at what it did not expect"
)]
use std::hint::black_box;

use chrono::Duration;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use grantwheel::requests::{HistoryQuery, ShareRequest, Sharing};
use grantwheel::{Engine, EntityId, Level, ManualClock, UserId};
use serde_json::json;

fn body(n: usize, offset: usize) -> Vec<u8> {
    let items: Vec<_> = (0..n)
        .map(|i| {
            let user = uuid::Uuid::from_u128((offset + i) as u128 + 1);
            json!({
                "UserId": user.to_string(), "Entity": 1, "EntityType": 3,
                "EntityId": (i % 1000).to_string(), "ContextEntity": 1,
                "ContextEntityId": uuid::Uuid::from_u128(7).to_string(),
                "AccessType": 1 + (i % 2), "DurationInMinutes": 60
            })
        })
        .collect();
    serde_json::to_vec(&items).unwrap()
}

fn fresh() -> Sharing {
    Sharing::new(
        Engine::builder()
            .clock(ManualClock::new(chrono::Utc::now()))
            .build()
            .unwrap(),
    )
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("requests/api_share");
    g.sample_size(10);
    for n in [1usize, 100, 10_000] {
        let payload = body(n, 0);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(format!("batch_{n}"), |b| {
            b.iter_batched(
                fresh,
                |s| {
                    black_box(s.api_share(&payload).unwrap());
                    s
                },
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();

    let s = fresh();
    let lead = EntityId::lead(1);
    for i in 0..100_000u128 {
        s.share(
            ShareRequest::new(UserId::from_u128(i % 500), lead, Level::Read)
                .duration(Duration::hours(1)),
        );
    }
    let mut g = c.benchmark_group("requests/history_100k");
    g.bench_function("newest_page", |b| {
        b.iter(|| black_box(s.history(&lead, &HistoryQuery::default()).unwrap()))
    });
    g.bench_function("by_user_page", |b| {
        let q = HistoryQuery::default().user(UserId::from_u128(499));
        b.iter(|| black_box(s.history(&lead, &q).unwrap()))
    });
    g.bench_function("failed_none_match", |b| {
        let q = HistoryQuery::default().status(grantwheel::requests::StatusKind::Failed);
        b.iter(|| black_box(s.history(&lead, &q).unwrap()))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
