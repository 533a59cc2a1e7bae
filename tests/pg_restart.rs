//! The PostgreSQL server restarted (`pg_ctl restart -m fast`) while two
//! engines write and follow: no acknowledged share or revoke is lost, no
//! share is acknowledged that was not committed, the calls that fail get
//! typed store errors, and both engines converge once it is back.
//!
//! A test binary of its own: it restarts the server every other test uses.
//! Needs `GRANTWHEEL_PG_URL` and `GRANTWHEEL_PG_DATA` (see `support/pg.rs`).
#![cfg(feature = "postgres")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::unreachable,
    reason = "a test stops loudly at what it did not expect"
)]

use std::time::{Duration as StdDuration, Instant};

use grantwheel::store::PostgresStore;
use grantwheel::{Context, Engine, EntityId, Expiry, Grant, Level, RevokeError, ShareError};

#[path = "support/common.rs"]
mod common;
#[path = "support/pg.rs"]
mod pg;

use common::user;

fn engine(url: &str) -> Engine {
    Engine::builder()
        .store(PostgresStore::connect(url).unwrap())
        .build()
        .unwrap()
}

#[test]
fn a_server_restart_during_writes_loses_nothing_acknowledged() {
    let Some(server) = pg::url("a_server_restart_during_writes_loses_nothing_acknowledged") else {
        return;
    };
    let data = std::env::var("GRANTWHEEL_PG_DATA")
        .expect("GRANTWHEEL_PG_DATA names the cluster to restart (`.ci/pg-cluster run` sets it)");
    let url = pg::fresh_database(&server);
    let (a, b) = (engine(&url), engine(&url));
    let writer = {
        let a = a.clone();
        std::thread::spawn(move || {
            let mut shared: Vec<Grant> = Vec::new();
            let mut revoked: Vec<Grant> = Vec::new();
            let mut failed = 0;
            let t = Instant::now();
            let mut i = 0u64;
            // Until well after the restart, and at least 400 calls.
            while i < 400 || t.elapsed() < StdDuration::from_secs(6) {
                let r = a.share(
                    user((i % 25) as usize),
                    EntityId::lead(i),
                    Context::Direct,
                    Level::Read,
                    Expiry::Default,
                );
                match r {
                    Ok(g) if i.is_multiple_of(4) => match a.revoke(&g.id) {
                        Ok(_) => revoked.push(g),
                        // Revoked in memory at once; the write is retried
                        // with the next batch. Not acknowledged: not
                        // counted either way.
                        Err(RevokeError::NotDurable(_)) => failed += 1,
                        Err(e) => panic!("revoke {i}: {e:?}"),
                    },
                    Ok(g) => shared.push(g),
                    Err(ShareError::Store(_)) => failed += 1,
                    Err(e) => panic!("share {i}: {e:?}"),
                }
                i += 1;
                std::thread::sleep(StdDuration::from_millis(5));
            }
            (shared, revoked, failed, i)
        })
    };
    std::thread::sleep(StdDuration::from_millis(800));
    let status = std::process::Command::new("bash")
        .args([".ci/pg-cluster", "restart", &data])
        .status()
        .unwrap();
    assert!(status.success(), "pg_ctl restart failed");
    let (shared, revoked, failed, calls) = writer.join().unwrap();
    assert!(failed > 0, "the restart failed no call: it came too late");
    assert!(shared.len() > 100, "{} shares acknowledged", shared.len());
    // Revokes whose write failed wait in memory for the next batch.
    a.flush().unwrap();
    // A fresh engine reads what was committed: every acknowledged share
    // (not revoked) is there, no acknowledged revoke is undone.
    let c = engine(&url);
    for g in &shared {
        assert!(
            c.can_read(&g.id.user, &g.id.entity),
            "acknowledged share {g:?} lost"
        );
    }
    for g in &revoked {
        assert!(
            !c.can_read(&g.id.user, &g.id.entity),
            "acknowledged revoke of {g:?} undone"
        );
    }
    // And both running engines converge on it.
    let t = Instant::now();
    let leads: Vec<u64> = (0..calls).collect();
    let view = |e: &Engine| -> Vec<Grant> {
        let mut gs: Vec<Grant> = leads
            .iter()
            .flat_map(|l| e.pair_grants(&user((*l % 25) as usize), &EntityId::lead(*l)))
            .collect();
        gs.sort_by_key(|g| g.id.serial);
        gs
    };
    let want = view(&c);
    while view(&a) != want || view(&b) != want {
        assert!(
            t.elapsed() < StdDuration::from_secs(15),
            "the engines did not converge after the restart"
        );
        std::thread::sleep(StdDuration::from_millis(20));
    }
    assert!(b.feed_status().unwrap().fresh);
    eprintln!(
        "restart: {calls} calls, {} shares and {} revokes acknowledged, {failed} failed with store errors",
        shared.len(),
        revoked.len()
    );
}
