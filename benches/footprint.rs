//! Resident memory per live grant: builds N grants (default 10M; set
//! `GRANTWHEEL_FOOTPRINT_N`) of random UUID users on numeric entities and
//! prints the growth of the process's resident set divided by N.

mod common;

fn main() {
    let n = common::sizes("GRANTWHEEL_FOOTPRINT_N", &[10_000_000])[0];
    let keys = common::keys(n, 21);
    let before = common::resident_bytes();
    let (_clock, engine) = common::engine(&keys);
    let after = common::resident_bytes();
    let f = engine.footprint();
    assert_eq!(f.grants, n);
    println!("grants={n}");
    println!("resident_before={before} resident_after={after}");
    println!("bytes_per_grant={}", (after - before) / n as u64);
    println!(
        "accounted: index_bytes_per_grant={} grant_bytes_per_grant={} wheel_bytes_per_grant={}",
        f.index_bytes / n,
        f.grant_bytes / n,
        f.wheel_bytes / n
    );
    drop(keys);
}
