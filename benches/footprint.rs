//! Resident memory per live grant: builds N grants (default 10M; set
//! `GRANTWHEEL_FOOTPRINT_N`) of random UUID users on numeric entities and
//! prints the growth of the process's resident set divided by N, in two
//! runs, each a child process of its own: the grants over 1M distinct users
//! (`GRANTWHEEL_FOOTPRINT_USERS` sets the count; a CRM's sales users are far
//! fewer than its shares), and every grant's user distinct (the worst
//! case). Each run then builds the two bare maps of the check benchmark over
//! the same keys and prints their bytes per entry, measured the same way.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::unreachable,
    reason = "a test stops loudly at what it did not expect"
)]
mod common;

use std::process::Command;

fn main() {
    if let Ok(users) = std::env::var("GRANTWHEEL_FOOTPRINT_RUN") {
        measure(users.parse().unwrap_or(0));
        return;
    }
    let users = common::sizes("GRANTWHEEL_FOOTPRINT_USERS", &[1_000_000])[0];
    for users in [users, 0] {
        let me = std::env::current_exe().unwrap();
        let status = Command::new(me)
            .env("GRANTWHEEL_FOOTPRINT_RUN", users.to_string())
            .status()
            .unwrap();
        assert!(status.success(), "footprint run failed: {status}");
    }
}

fn measure(users: usize) {
    let n = common::sizes("GRANTWHEEL_FOOTPRINT_N", &[10_000_000])[0];
    let keys = common::keys_over_users(n, users, 21);
    let packed = common::packed_keys(&keys);
    let before = common::resident_bytes();
    let (_clock, engine) = common::engine(&keys);
    let after = common::resident_bytes();
    let f = engine.footprint();
    assert_eq!(f.grants, n);
    let users = if users == 0 {
        "all distinct".to_string()
    } else {
        users.to_string()
    };
    println!("grants={n} users={users}");
    println!("resident_before={before} resident_after={after}");
    println!("bytes_per_grant={}", (after - before) / n as u64);
    println!(
        "accounted: index_bytes_per_grant={} grant_bytes_per_grant={} wheel_bytes_per_grant={}",
        f.index_bytes / n,
        f.grant_bytes / n,
        f.wheel_bytes / n,
    );
    let at = common::resident_bytes();
    let base = common::baseline(&keys);
    let after_base = common::resident_bytes();
    let tight = common::packed_baseline(&keys, &packed);
    let after_tight = common::resident_bytes();
    println!(
        "bare_uuid_entity_map_bytes_per_entry={} bare_packed_u64_map_bytes_per_entry={}",
        (after_base - at) / base.len() as u64,
        (after_tight - after_base) / tight.len() as u64,
    );
    drop((keys, base, tight, engine));
}
