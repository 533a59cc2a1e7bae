//! The PostgreSQL store's own promises, beside the conformance suite and
//! the restart tests it shares with the other stores: the schema is
//! versioned and migrated once, the change feed is dense and in commit
//! order, a commit wakes listeners, and errors never show the URL.
//!
//! Needs a server: `GRANTWHEEL_PG_URL` (see `support/pg.rs`).
#![cfg(feature = "postgres")]

use chrono::{Duration, TimeZone, Utc};
use grantwheel::store::{Batch, Change, PostgresStore, Store, StoreError, FEED_CHANNEL};
use grantwheel::{Context, EntityId, Grant, GrantId, Level};
use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, NoTls};

use crate::pg;

use crate::common::{by_serial, user};

fn grant(serial: u64) -> Grant {
    Grant {
        id: GrantId {
            user: user(serial as usize),
            entity: EntityId::lead(serial),
            context: Context::Direct,
            serial,
        },
        level: Level::Read,
        expires_at: Utc.with_ymd_and_hms(2030, 1, 1, 0, 0, 0).unwrap(),
        starts_at: None,
    }
}

fn batch(store: &mut PostgresStore, seq: u64, changes: &[Change]) -> Result<(), StoreError> {
    store.apply(&Batch {
        seq,
        next_serial: seq + 1,
        clock: Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap() + Duration::seconds(seq as i64),
        changes,
    })
}

#[test]
fn the_schema_is_made_once_and_a_newer_one_is_refused() {
    let Some(server) = pg::url("the_schema_is_made_once_and_a_newer_one_is_refused") else {
        return;
    };
    let url = pg::fresh_database(&server);
    // Several instances starting at once: each connects, one migrates.
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || PostgresStore::connect(&url).map(drop))
        })
        .collect();
    for h in handles {
        h.join().unwrap().unwrap();
    }
    let mut sql = Client::connect(&url, NoTls).unwrap();
    let version: i64 = sql
        .query_one("SELECT version FROM grantwheel_schema", &[])
        .unwrap()
        .get(0);
    assert_eq!(version, 5);
    // A database of version 1 (before history rows named their owner and
    // grants their start) is migrated forward, keeping its rows.
    let mut store = PostgresStore::connect(&url).unwrap();
    batch(&mut store, 1, &[Change::Put(grant(1))]).unwrap();
    drop(store);
    sql.batch_execute(
        "ALTER TABLE grantwheel_history DROP COLUMN owner; \
         ALTER TABLE grantwheel_grants DROP COLUMN starts_ms; \
         ALTER TABLE grantwheel_history DROP COLUMN starts_ms, DROP COLUMN granted_by, \
             DROP COLUMN approval_why, DROP COLUMN approval_deadline_ms, DROP COLUMN approver, \
             DROP COLUMN approved, DROP COLUMN decided_ms, DROP COLUMN decision_reason, DROP COLUMN end_reason; \
         DROP INDEX grantwheel_history_shares_by_user; \
         UPDATE grantwheel_schema SET version = 1",
    )
    .unwrap();
    let mut store = PostgresStore::connect(&url).unwrap();
    let mut serials = Vec::new();
    store.grants(&mut |g| serials.push(g.id.serial)).unwrap();
    assert_eq!(serials, [1]);
    let version: i64 = sql
        .query_one("SELECT version FROM grantwheel_schema", &[])
        .unwrap()
        .get(0);
    assert_eq!(version, 5);
    // The columns are back (an error here if not).
    sql.query("SELECT owner FROM grantwheel_history LIMIT 0", &[])
        .unwrap();
    sql.query("SELECT starts_ms FROM grantwheel_grants LIMIT 0", &[])
        .unwrap();
    sql.query(
        "SELECT starts_ms, approval_deadline_ms, approver FROM grantwheel_history LIMIT 0",
        &[],
    )
    .unwrap();
    sql.execute("UPDATE grantwheel_schema SET version = 99", &[])
        .unwrap();
    assert_eq!(
        PostgresStore::connect(&url).unwrap_err(),
        StoreError::NewerSchema {
            found: 99,
            supported: 5
        }
    );
}

#[test]
fn the_feed_is_dense_and_replays_take_no_number() {
    let Some(server) = pg::url("the_feed_is_dense_and_replays_take_no_number") else {
        return;
    };
    let url = pg::fresh_database(&server);
    let mut store = PostgresStore::connect(&url).unwrap();
    batch(&mut store, 1, &[Change::Put(grant(1))]).unwrap();
    // A replay is ignored and rolled back: its number goes back.
    batch(&mut store, 1, &[Change::Put(grant(9))]).unwrap();
    // A batch that fails (a record of a kind the schema refuses cannot be
    // made from the API, so a grant with an impossible serial stands in)
    // rolls back whole and takes its number with it.
    let mut bad = grant(3);
    bad.id.serial = u64::MAX;
    let mut sql = Client::connect(&url, NoTls).unwrap();
    sql.batch_execute(
        "ALTER TABLE grantwheel_grants ADD CONSTRAINT small_serials CHECK (serial < 1000000)",
    )
    .unwrap();
    assert!(matches!(
        batch(&mut store, 2, &[Change::Put(grant(2)), Change::Put(bad)]),
        Err(StoreError::Io(_))
    ));
    batch(&mut store, 3, &[Change::Put(grant(3))]).unwrap();
    batch(
        &mut store,
        4,
        &[Change::End {
            grant: by_serial(1),
            at: Utc.with_ymd_and_hms(2026, 1, 2, 0, 0, 0).unwrap(),
            cause: grantwheel::store::EndCause::Revoked,
        }],
    )
    .unwrap();
    let feed: Vec<(i64, i64)> = sql
        .query(
            "SELECT seq, batch_seq FROM grantwheel_feed ORDER BY seq",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(feed, [(1, 1), (2, 3), (3, 4)], "dense, in commit order");
    assert_eq!(store.feed_head().unwrap(), 3);
    let serials: Vec<i64> = sql
        .query("SELECT serial FROM grantwheel_grants ORDER BY serial", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        serials,
        [3],
        "the failed batch left nothing, the revoke removed 1"
    );
    // The stored batch is the change itself.
    let changes: String = sql
        .query_one("SELECT changes FROM grantwheel_feed WHERE seq = 2", &[])
        .unwrap()
        .get(0);
    let back: Vec<Change> = serde_json::from_str(&changes).unwrap();
    assert_eq!(back, [Change::Put(grant(3))]);
}

#[test]
fn a_commit_wakes_listeners_with_its_feed_number() {
    let Some(server) = pg::url("a_commit_wakes_listeners_with_its_feed_number") else {
        return;
    };
    let url = pg::fresh_database(&server);
    let mut store = PostgresStore::connect(&url).unwrap();
    let mut listener = Client::connect(&url, NoTls).unwrap();
    listener
        .batch_execute(&format!("LISTEN {FEED_CHANNEL}"))
        .unwrap();
    batch(&mut store, 1, &[Change::Put(grant(1))]).unwrap();
    batch(&mut store, 2, &[Change::Put(grant(2))]).unwrap();
    let mut notes = listener.notifications();
    let mut got = Vec::new();
    let mut waiting = notes.timeout_iter(std::time::Duration::from_secs(5));
    while got.len() < 2 {
        match waiting.next().unwrap() {
            Some(n) => got.push((n.channel().to_string(), n.payload().to_string())),
            None => break,
        }
    }
    assert_eq!(
        got,
        [
            (FEED_CHANNEL.to_string(), "1".to_string()),
            (FEED_CHANNEL.to_string(), "2".to_string())
        ]
    );
}

#[test]
fn errors_never_show_the_url_or_its_password() {
    let Some(server) = pg::url("errors_never_show_the_url_or_its_password") else {
        return;
    };
    // Nothing listens on port 1: refused at once.
    let unreachable = "postgresql://grantwheel:s3cret-pass@127.0.0.1:1/crm";
    let e = PostgresStore::connect(unreachable).unwrap_err();
    assert!(matches!(e, StoreError::Io(_)), "{e:?}");
    assert!(!e.to_string().contains("s3cret"), "{e}");
    // A database that does not exist: the server's own message.
    let missing = pg::with_database(&server, "no_such_database_here");
    let e = PostgresStore::connect(&missing).unwrap_err();
    assert!(e.to_string().contains("does not exist"), "{e}");
    let store = PostgresStore::connect(&pg::fresh_database(&server)).unwrap();
    assert!(!format!("{store:?}").contains("127.0.0.1"));
}

#[test]
fn a_store_dropped_on_an_async_thread_closes_cleanly() {
    let Some(server) = pg::url("a_store_dropped_on_an_async_thread_closes_cleanly") else {
        return;
    };
    let url = pg::fresh_database(&server);
    let store = PostgresStore::connect(&url).unwrap();
    let reader = store.reader().unwrap();
    assert_eq!(reader.processing(10).unwrap(), []);
    // Inside a task of an async runtime, as a server shutting down drops
    // its engine: closing a connection on this thread would panic
    // ("Cannot start a runtime from within a runtime").
    let dropped = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async move {
            drop(store);
            drop(reader);
        });
    });
    dropped
        .join()
        .expect("dropping inside a runtime must not panic");
    PostgresStore::connect(&url).unwrap();
}

#[test]
fn connections_ended_by_the_server_while_idle_are_opened_again_by_the_next_call() {
    let Some(server) =
        pg::url("connections_ended_by_the_server_while_idle_are_opened_again_by_the_next_call")
    else {
        return;
    };
    let url = pg::fresh_database(&server);
    let name = url.rsplit('/').next().unwrap().to_string();
    let mut store = PostgresStore::connect(&url).unwrap();
    let reader = store.reader().unwrap();
    batch(&mut store, 1, &[Change::Put(grant(1))]).unwrap();
    assert_eq!(reader.processing(10).unwrap(), []);
    // The writer's and the idle reader's backends are ended (as by an
    // administrator or a failover): neither connection knows until used.
    let mut admin = Client::connect(&server, NoTls).unwrap();
    let ended = admin
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
            &[&name],
        )
        .unwrap();
    assert!(ended.len() >= 2, "the writer and the reader were connected");
    // Ended means gone: the signal is only sent by then, and a call made
    // while the backend still lives would be lost mid-way instead.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let left: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1",
                &[&name],
            )
            .unwrap()
            .get(0);
        if left == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the backends did not end"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // Neither call fails: nothing had been sent on the lost connections,
    // so each is opened again and the call goes ahead.
    batch(&mut store, 2, &[Change::Put(grant(2))]).unwrap();
    assert_eq!(reader.processing(10).unwrap(), []);
    assert_eq!(store.feed_head().unwrap(), 2);
    let mut again = PostgresStore::connect(&url).unwrap();
    let mut serials = Vec::new();
    again.grants(&mut |g| serials.push(g.id.serial)).unwrap();
    serials.sort_unstable();
    assert_eq!(serials, [1, 2], "both batches committed");
}
