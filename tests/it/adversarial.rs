//! Adversarial input, replayed: every file of the fuzz seed corpora
//! (`fuzz/seeds/<target>/`) and every input a fuzz run ever failed on
//! (`fuzz/regressions/<target>/`) goes through the same checks as the fuzz
//! targets (`tests/support/fuzz_checks.rs`).
#![cfg(feature = "sqlite")]

use crate::checks;

use std::path::Path;

fn replay(target: &str, check: fn(&[u8])) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut n = 0;
    for dir in ["seeds", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        let mut files: Vec<_> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
        files.sort();
        for file in files {
            let data = std::fs::read(&file).unwrap();
            let outcome = std::panic::catch_unwind(|| check(&data));
            assert!(outcome.is_ok(), "{} fails its check", file.display());
            n += 1;
        }
    }
    n
}

#[test]
fn request_bodies() {
    assert!(replay("requests", checks::requests) >= 10);
}

#[test]
fn rule_bodies() {
    assert!(replay("rules", checks::rules) >= 5);
}

#[test]
fn operation_sequences() {
    assert!(replay("ops", checks::ops) >= 3);
}

#[test]
fn damaged_databases() {
    assert!(replay("store_recovery", checks::store_recovery) >= 3);
}

#[test]
fn hostile_bodies_by_hand() {
    let cases: &[&[u8]] = &[
        b"",
        b"null",
        b"[]",
        b"{}",
        b"[null]",
        b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
        b"[{\"UserId\":\"0203f172-8642-11e7-9bed-069b743e848f\",\"Entity\":1,\"EntityType\":3,\"EntityId\":\"869196\",\"ContextEntity\":1,\"ContextEntityId\":\"f2dbf1d5-bbab-418b-bddc-4c92ecdef214\",\"AccessType\":2,\"DurationInMinutes\":-1}]",
        b"[{\"UserId\":\"0203f172-8642-11e7-9bed-069b743e848f\",\"Entity\":1,\"EntityType\":3,\"EntityId\":\"869196\",\"ContextEntity\":1,\"ContextEntityId\":\"f2dbf1d5-bbab-418b-bddc-4c92ecdef214\",\"AccessType\":2,\"DurationInMinutes\":9223372036854775807}]",
        b"[{\"UserId\":\"\xff\xfe\",\"Entity\":1}]",
        "[{\"UserId\":\"\u{202e}\",\"EntityId\":\"\u{0}\"}]".as_bytes(),
    ];
    for case in cases {
        checks::requests(case);
        checks::rules(case);
        checks::ops(case);
        checks::store_recovery(case);
    }
    // Deep nesting must not overflow the stack.
    let deep = "[".repeat(100_000);
    checks::requests(deep.as_bytes());
    checks::rules(deep.as_bytes());
}
