//! The PostgreSQL server the tests use: its URL comes from
//! `GRANTWHEEL_PG_URL` (`.ci/pg-cluster run cargo test` sets it). When it
//! is unset the tests that need it print why and pass, unless
//! `GRANTWHEEL_PG_REQUIRED` is set (the gate sets it), when they fail.
//!
//! Include it with `#[path = "support/pg.rs"] mod pg;`.

#![allow(dead_code, reason = "each test binary uses a part of it")]

use std::sync::atomic::{AtomicUsize, Ordering};

/// The server's URL, or `None` (with the reason printed) when the test
/// should be skipped.
pub fn url(test: &str) -> Option<String> {
    match std::env::var("GRANTWHEEL_PG_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var_os("GRANTWHEEL_PG_REQUIRED").is_some() => {
            panic!("{test}: GRANTWHEEL_PG_URL is unset but GRANTWHEEL_PG_REQUIRED is set: start a server with `.ci/pg-cluster run cargo test`")
        }
        _ => {
            // Straight to the process's stderr, past the test harness's
            // capture: a skip is seen, not only when something fails.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "skipped {test}: no PostgreSQL server (set GRANTWHEEL_PG_URL, or run `.ci/pg-cluster run cargo test`)"
            );
            None
        }
    }
}

static DATABASES: AtomicUsize = AtomicUsize::new(0);

/// A new, empty database on the server at `url`; returns its URL. Named
/// by the process and a counter, so test binaries running at once never
/// share one.
pub fn fresh_database(url: &str) -> String {
    let n = DATABASES.fetch_add(1, Ordering::Relaxed);
    let name = format!("grantwheel_test_{}_{n}", std::process::id());
    let mut admin =
        postgres::Client::connect(url, postgres::NoTls).expect("connect to the test server");
    // One statement each: neither may run inside a transaction block.
    for sql in [
        format!("DROP DATABASE IF EXISTS {name}"),
        format!("CREATE DATABASE {name}"),
    ] {
        admin.batch_execute(&sql).expect("create a test database");
    }
    with_database(url, &name)
}

/// `url` with its database replaced by `name`.
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let rest = base.split_once("://").map_or(base, |(_, r)| r);
    let base = match rest.find('/') {
        Some(_) => &base[..base.rfind('/').unwrap_or(base.len())],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}
