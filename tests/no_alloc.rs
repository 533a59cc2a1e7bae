//! Checks allocate nothing once a thread has checked before (promise 4).
//!
//! The allocator counts violations (warn mode, in debug and release alike),
//! so an allocation fails the assertion below instead of aborting the run.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::unreachable,
    reason = "a test stops loudly at what it did not expect"
)]
use assert_no_alloc::{assert_no_alloc, violation_count, AllocDisabler};
use chrono::{Duration, Utc};
use grantwheel::{
    Context, Engine, EntityId, EntityKind, EntityRef, Expiry, Level, ManualClock, UserId,
};

#[global_allocator]
static ALLOC: AllocDisabler = AllocDisabler;

#[test]
fn checks_do_not_allocate() {
    let engine = Engine::builder()
        .clock(ManualClock::new(Utc::now()))
        .build()
        .unwrap();
    let uuid_entity = EntityId::new(
        EntityKind::custom(9),
        EntityRef::Uuid(uuid::Uuid::from_u128(5)),
    );
    for i in 0..1000u64 {
        let e = if i % 2 == 0 {
            EntityId::lead(i)
        } else {
            uuid_entity
        };
        engine
            .share(
                UserId::from_u128(u128::from(i)),
                e,
                Context::Direct,
                Level::Edit,
                Expiry::After(Duration::hours(1)),
            )
            .unwrap();
    }
    // The first check on this thread caches the table directory.
    assert!(engine.can_read(&UserId::from_u128(0), &EntityId::lead(0)));
    let (mut read, mut edit, mut some) = (0, 0, 0);
    let before = violation_count();
    assert_no_alloc(|| {
        for i in 0..2000u64 {
            let u = UserId::from_u128(u128::from(i));
            let e = if i % 2 == 0 {
                EntityId::lead(i)
            } else {
                uuid_entity
            };
            read += usize::from(engine.can_read(&u, &e));
            edit += usize::from(engine.can_edit(&u, &e));
            some += usize::from(engine.access(&u, &e).is_some());
        }
    });
    assert_eq!(violation_count() - before, 0, "checks allocated");
    assert_eq!((read, edit, some), (1000, 1000, 1000));
}
