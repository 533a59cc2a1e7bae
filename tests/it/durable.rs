//! Durable state: restarts over both stores, the SQLite file's rules (one
//! writer, schema version, readable schema), write order, group commit.
#![cfg(feature = "sqlite")]

use std::sync::{Arc, Mutex, OnceLock};

use chrono::Duration;
use grantwheel::requests::automation::{Rule, ShareAction, ShareWith, Trigger};
use grantwheel::requests::RuleId;
use grantwheel::requests::{
    FailureKind, HistoryQuery, RequestStatus, RevokeRequest, ShareRequest, Sharing, INTERRUPTED,
};
use grantwheel::store::{
    Batch, Change, MemoryStore, Meta, SqliteStore, Store, StoreError, StoreReader,
};
use grantwheel::{
    BuildError, Context, Engine, EntityId, EntityKind, Expiry, Grant, Level, ManualClock,
    RevokeError,
};
use uuid::Uuid;

#[cfg(feature = "postgres")]
use crate::pg;

use crate::common::{by_serial, start, user};

/// Opens engines over one store kind, again and again.
trait Reopen {
    fn open(&self, clock: &ManualClock) -> Engine;
}

struct Memory(MemoryStore);

impl Reopen for Memory {
    fn open(&self, clock: &ManualClock) -> Engine {
        Engine::builder()
            .clock(clock.clone())
            .store(self.0.clone())
            .build()
            .unwrap()
    }
}

struct Sqlite(tempfile::TempDir);

impl Sqlite {
    fn new() -> Self {
        Sqlite(tempfile::tempdir().unwrap())
    }
    fn path(&self) -> std::path::PathBuf {
        self.0.path().join("grants.db")
    }
}

impl Reopen for Sqlite {
    fn open(&self, clock: &ManualClock) -> Engine {
        Engine::builder()
            .clock(clock.clone())
            .store(SqliteStore::open(self.path()).unwrap())
            .build()
            .unwrap()
    }
}

/// A database of its own on the test server, reconnected at each open.
#[cfg(feature = "postgres")]
struct Postgres(String);

#[cfg(feature = "postgres")]
impl Reopen for Postgres {
    fn open(&self, clock: &ManualClock) -> Engine {
        // The manual clock is days away from the server's: the skew guard
        // would (rightly) make every check say no.
        let far = Duration::days(36_500);
        Engine::builder()
            .clock(clock.clone())
            .clock_skew(far, far)
            .store(grantwheel::store::PostgresStore::connect(&self.0).unwrap())
            .build()
            .unwrap()
    }
}

/// The memory store, a SQLite file, and a PostgreSQL database when a
/// server is named (see `support/pg.rs`).
fn stores() -> Vec<Box<dyn Reopen>> {
    #[cfg_attr(
        not(feature = "postgres"),
        expect(unused_mut, reason = "only the postgres feature adds to it")
    )]
    let mut all: Vec<Box<dyn Reopen>> = vec![
        Box::new(Memory(MemoryStore::new())),
        Box::new(Sqlite::new()),
    ];
    #[cfg(feature = "postgres")]
    if let Some(server) = pg::url("the restart tests over PostgreSQL") {
        all.push(Box::new(Postgres(pg::fresh_database(&server))));
    }
    all
}

#[test]
fn grants_survive_a_restart_and_expired_ones_do_not() {
    for store in stores() {
        let clock = ManualClock::new(start());
        let engine = store.open(&clock);
        let (a, b, c) = (user(1), user(2), user(3));
        let lead = EntityId::lead(869196);
        let deal = EntityId::new(
            EntityKind::OPPORTUNITY,
            grantwheel::EntityRef::Uuid(Uuid::from_u128(9)),
        );
        let act = Context::Activity(Uuid::from_u128(0xa));
        let long = engine
            .share(a, lead, act, Level::Edit, Expiry::After(Duration::days(3)))
            .unwrap();
        let short = engine
            .share(
                b,
                deal,
                Context::Direct,
                Level::Read,
                Expiry::After(Duration::hours(1)),
            )
            .unwrap();
        let revoked = engine
            .share(
                c,
                lead,
                Context::Task(Uuid::from_u128(0xb)),
                Level::Read,
                Expiry::Default,
            )
            .unwrap();
        engine.revoke(&revoked.id).unwrap();
        let extended = engine.extend(&short.id, Duration::hours(2)).unwrap();
        drop(engine);

        // Down for two hours: the short grant (now 3 h) is still live.
        clock.advance(Duration::hours(2));
        let engine = store.open(&clock);
        assert!(engine.can_edit(&a, &lead));
        assert!(engine.can_read(&b, &deal));
        assert!(!engine.can_read(&c, &lead), "a revoke never comes back");
        assert_eq!(engine.pair_grants(&b, &deal), vec![extended]);
        assert_eq!(engine.pair_grants(&a, &lead), vec![long]);
        // Serials are never reused: old ids stay dead.
        let fresh = engine
            .share(c, lead, Context::Direct, Level::Read, Expiry::Default)
            .unwrap();
        assert!(fresh.id.serial > extended.id.serial.max(revoked.id.serial));
        assert!(matches!(
            engine.revoke(&revoked.id),
            Err(RevokeError::NotLive(_))
        ));
        drop(engine);

        // Down past the extended expiry: dropped on load.
        clock.advance(Duration::hours(2));
        let engine = store.open(&clock);
        assert!(!engine.can_read(&b, &deal));
        assert!(engine.pair_grants(&b, &deal).is_empty());
        assert_eq!(engine.len(), 2);
    }
}

#[test]
fn a_clock_set_back_across_a_restart_revives_nothing() {
    for store in stores() {
        let clock = ManualClock::new(start());
        let engine = store.open(&clock);
        let (u, e) = (user(1), EntityId::lead(1));
        engine
            .share(
                u,
                e,
                Context::Direct,
                Level::Read,
                Expiry::After(Duration::hours(1)),
            )
            .unwrap();
        clock.advance(Duration::hours(2));
        // A write at the later time: the store learns it.
        engine
            .share(
                user(2),
                e,
                Context::Direct,
                Level::Read,
                Expiry::After(Duration::days(1)),
            )
            .unwrap();
        drop(engine);
        clock.set(start());
        let engine = store.open(&clock);
        assert!(!engine.can_read(&u, &e));
        assert!(engine.now() >= start() + Duration::hours(2));
    }
}

#[test]
fn history_and_rules_survive_a_restart() {
    for store in stores() {
        let clock = ManualClock::new(start());
        let (u, lead) = (user(1), EntityId::lead(5));
        let (done, revoke, expiring, rule);
        {
            let sharing = Sharing::new(store.open(&clock));
            done = sharing.share(ShareRequest::new(u, lead, Level::Edit));
            expiring = sharing.share(
                ShareRequest::new(user(2), lead, Level::Read).duration(Duration::minutes(30)),
            );
            revoke = sharing.revoke(RevokeRequest {
                user: u,
                entity: lead,
                context: Context::Direct,
                level: Level::Edit,
            });
            assert_eq!(revoke.status, RequestStatus::Completed);
            let action = ShareAction {
                with: ShareWith::ActivityOwner,
                duration_minutes: Some(60),
                level: Level::Read,
            };
            rule = sharing
                .add_rule(Rule::new(
                    "owners",
                    Trigger::ActivityPosted,
                    EntityKind::LEAD,
                    action,
                ))
                .unwrap();
            sharing.publish_rule(rule).unwrap();
        }
        clock.advance(Duration::hours(1));
        let sharing = Sharing::new(store.open(&clock));
        assert_eq!(
            sharing.status(&done.request).unwrap(),
            Some(RequestStatus::Completed)
        );
        assert_eq!(
            sharing.status(&revoke.request).unwrap(),
            Some(RequestStatus::Completed)
        );
        let page = sharing.history(&lead, &HistoryQuery::default()).unwrap();
        assert_eq!(page.records.len(), 3);
        let first = sharing.request(&done.request).unwrap().unwrap();
        assert!(
            first.revoked.is_some(),
            "the revoke is on the share's record"
        );
        let lapsed = sharing.request(&expiring.request).unwrap().unwrap();
        assert_eq!(
            lapsed.expired_at,
            Some(start() + Duration::minutes(30)),
            "expired while down, recorded as expired"
        );
        let rules = sharing.rules();
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].0, rule);
        assert_eq!(
            rules[0].1.state,
            grantwheel::requests::automation::RuleState::Published
        );
        // New rules get new ids.
        let next = sharing.add_rule(rules[0].1.clone()).unwrap();
        assert!(next > rule);
    }
}

#[test]
fn requests_left_processing_fail_on_restart() {
    for store in stores() {
        let clock = ManualClock::new(start());
        let ids;
        {
            let sharing = Sharing::new(store.open(&clock));
            ids = sharing.submit(vec![grantwheel::requests::Submission::api(
                grantwheel::requests::Command::Share(ShareRequest::new(
                    user(1),
                    EntityId::lead(1),
                    Level::Read,
                )),
            )]);
            assert_eq!(
                sharing.status(&ids[0]).unwrap(),
                Some(RequestStatus::Processing)
            );
            sharing.engine().flush().unwrap();
            // Stopped before the queue was worked.
        }
        let sharing = Sharing::new(store.open(&clock));
        assert_eq!(
            sharing.status(&ids[0]).unwrap(),
            Some(RequestStatus::Failed {
                kind: FailureKind::Interrupted,
                reason: INTERRUPTED.into()
            })
        );
        assert!(sharing.engine().is_empty());
    }
}

#[test]
fn a_second_engine_on_the_same_file_is_refused() {
    let dir = Sqlite::new();
    let first = SqliteStore::open(dir.path()).unwrap();
    let second = SqliteStore::open(dir.path()).unwrap_err();
    assert!(matches!(second, StoreError::Locked { .. }), "{second}");
    drop(first);
    SqliteStore::open(dir.path()).unwrap();
}

#[test]
fn a_newer_schema_is_refused_and_the_schema_reads_in_plain_sql() {
    let dir = Sqlite::new();
    let clock = ManualClock::new(start());
    {
        let engine = dir.open(&clock);
        engine
            .share(
                user(1),
                EntityId::lead(869196),
                Context::Activity(Uuid::from_u128(0xa)),
                Level::Edit,
                Expiry::After(Duration::minutes(30)),
            )
            .unwrap();
    }
    {
        let conn = rusqlite::Connection::open(dir.path()).unwrap();
        let row: (String, i64, i64, String, String) = conn
            .query_row(
                "SELECT user, entity_kind, entity_id, level, expires_at FROM grants_readable",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .unwrap();
        assert_eq!(
            row,
            (
                user(1).to_string(),
                1,
                869196,
                "edit".into(),
                "2026-11-23T09:30:00.000Z".into()
            )
        );
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, 5);
        conn.pragma_update(None, "user_version", 6).unwrap();
    }
    match SqliteStore::open(dir.path()) {
        Err(StoreError::NewerSchema {
            found: 6,
            supported: 5,
        }) => {}
        other => panic!("expected a newer-schema error, got {other:?}"),
    }
}

#[test]
fn replaying_a_batch_changes_nothing() {
    let dir = Sqlite::new();
    let sqlite: Box<dyn Store> = Box::new(SqliteStore::open(dir.path()).unwrap());
    for mut store in [sqlite, Box::new(MemoryStore::new()) as Box<dyn Store>] {
        let g = Grant {
            id: grantwheel::GrantId {
                user: user(1),
                entity: EntityId::lead(u64::MAX),
                context: Context::Other {
                    kind: 9,
                    id: Uuid::from_u128(3),
                },
                serial: 7,
            },
            level: Level::Read,
            expires_at: start() + Duration::days(1),
            starts_at: None,
        };
        let first = [Change::Put(g)];
        let b1 = Batch {
            seq: 1,
            next_serial: 8,
            clock: start(),
            changes: &first,
        };
        store.apply(&b1).unwrap();
        let end = [Change::End {
            grant: by_serial(7),
            at: start(),
            cause: grantwheel::store::EndCause::Revoked,
        }];
        store
            .apply(&Batch {
                seq: 2,
                next_serial: 8,
                clock: start(),
                changes: &end,
            })
            .unwrap();
        // The first batch again: ignored, the grant stays revoked.
        store.apply(&b1).unwrap();
        let mut grants = Vec::new();
        store.grants(&mut |g| grants.push(g)).unwrap();
        assert!(grants.is_empty());
        assert_eq!(
            store.meta().unwrap(),
            Meta {
                last_seq: 2,
                next_serial: 8,
                clock: Some(start())
            }
        );
        // And the round trip of every field.
        store
            .apply(&Batch {
                seq: 3,
                next_serial: 8,
                clock: start(),
                changes: &first,
            })
            .unwrap();
        let mut grants = Vec::new();
        store.grants(&mut |g| grants.push(g)).unwrap();
        assert_eq!(grants, vec![g]);
    }
}

/// A memory store that calls `hook` with each batch once it is written,
/// before the engine hears back: the hook may look at the engine's checks,
/// or sleep like a sync to disk.
struct Hooked<F> {
    inner: MemoryStore,
    hook: F,
}

impl<F: FnMut(&Batch<'_>) + Send> Store for Hooked<F> {
    fn meta(&mut self) -> Result<Meta, StoreError> {
        self.inner.meta()
    }
    fn grants(&mut self, each: &mut dyn FnMut(Grant)) -> Result<(), StoreError> {
        self.inner.grants(each)
    }
    fn rules(&mut self) -> Result<Vec<(RuleId, Rule)>, StoreError> {
        self.inner.rules()
    }
    fn apply(&mut self, batch: &Batch<'_>) -> Result<(), StoreError> {
        self.inner.apply(batch)?;
        (self.hook)(batch);
        Ok(())
    }
    fn reader(&self) -> Result<Arc<dyn StoreReader>, StoreError> {
        self.inner.reader()
    }
}

#[test]
fn shares_show_after_they_are_written_and_revokes_before() {
    let (u, e) = (user(1), EntityId::lead(1));
    let cell = Arc::new(OnceLock::new());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (watched, record) = (cell.clone(), seen.clone());
    let store = Hooked {
        inner: MemoryStore::new(),
        // What the checks say while the batch is being written.
        hook: move |_: &Batch<'_>| {
            if let Some(engine) = watched.get() {
                let engine: &Engine = engine;
                record
                    .lock()
                    .unwrap()
                    .push((engine.can_read(&u, &e), engine.can_edit(&u, &e)));
            }
        },
    };
    let clock = ManualClock::new(start());
    let engine = Engine::builder()
        .clock(clock.clone())
        .store(store)
        .build()
        .unwrap();
    cell.set(engine.clone()).unwrap();
    let read = engine
        .share(
            u,
            e,
            Context::Direct,
            Level::Read,
            Expiry::After(Duration::hours(1)),
        )
        .unwrap();
    assert!(engine.can_read(&u, &e));
    // Raise to edit through another context, then extend, then revoke both.
    let edit = engine
        .share(
            u,
            e,
            Context::Task(Uuid::nil()),
            Level::Edit,
            Expiry::After(Duration::hours(1)),
        )
        .unwrap();
    engine.extend(&read.id, Duration::hours(1)).unwrap();
    engine.revoke(&edit.id).unwrap();
    engine.revoke(&read.id).unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            (false, false), // the read share, while written
            (true, false),  // the edit share, while written
            (true, true),   // the extension (the edit share is written)
            (true, false),  // the edit revoke: gone before it is written
            (false, false), // the read revoke
        ]
    );
}

#[test]
fn concurrent_shares_are_committed_together() {
    let store = MemoryStore::new();
    let engine = Engine::builder()
        .store(Hooked {
            inner: store.clone(),
            // Writes that take a while, like a sync to disk.
            hook: |_: &Batch<'_>| std::thread::sleep(std::time::Duration::from_millis(2)),
        })
        .build()
        .unwrap();
    let before = store.batches();
    let threads = 8;
    let per = 100;
    std::thread::scope(|s| {
        for t in 0..threads {
            let engine = engine.clone();
            s.spawn(move || {
                for i in 0..per {
                    engine
                        .share(
                            user(t),
                            EntityId::lead(i),
                            Context::Direct,
                            Level::Read,
                            Expiry::Default,
                        )
                        .unwrap();
                }
            });
        }
    });
    let batches = store.batches() - before;
    let shares = (threads as u64) * per;
    assert_eq!(engine.len() as u64, shares);
    assert_eq!(store.stored_grants().len() as u64, shares);
    // While one batch is written the seven other threads queue theirs.
    assert!(
        batches * 3 <= shares,
        "{batches} batches for {shares} shares"
    );
}

#[test]
fn share_many_is_one_batch() {
    let store = MemoryStore::new();
    let engine = Engine::builder().store(store.clone()).build().unwrap();
    let before = store.batches();
    let items = (0..100)
        .map(|i| grantwheel::ShareSpec::new(user(i), EntityId::lead(1), Level::Read))
        .collect();
    let results = engine.share_many(items);
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(store.batches() - before, 1);
    assert_eq!(store.stored_grants().len(), 100);
}

/// A database holding one grant, changed behind the engine by `sql` (check
/// constraints off), then loaded: the error.
fn load_after_tampering(sql: &str) -> BuildError {
    let dir = Sqlite::new();
    let clock = ManualClock::new(start());
    dir.open(&clock)
        .share(
            user(1),
            EntityId::lead(1),
            Context::Direct,
            Level::Read,
            Expiry::After(Duration::hours(1)),
        )
        .unwrap();
    {
        let conn = rusqlite::Connection::open(dir.path()).unwrap();
        conn.pragma_update(None, "ignore_check_constraints", true)
            .unwrap();
        conn.execute(sql, []).unwrap();
    }
    Engine::builder()
        .clock(clock)
        .store(SqliteStore::open(dir.path()).unwrap())
        .build()
        .unwrap_err()
}

#[test]
fn a_damaged_row_is_a_clear_error() {
    let err = load_after_tampering("UPDATE grants SET level = 'owner'");
    match &err {
        BuildError::Load(StoreError::Corrupt { what, reason }) => {
            assert!(what.contains("serial 1"), "{what}");
            assert!(
                reason.contains("level") && reason.contains("owner"),
                "{reason}"
            );
        }
        other => panic!("expected a corrupt-row error, got {other:?}"),
    }
}

#[test]
fn an_api_batch_is_one_transaction_and_fails_whole() {
    use grantwheel::requests::wire::ItemResponse;
    use grantwheel::store::{Fault, FaultyStore};
    let memory = MemoryStore::new();
    let (store, faults) = FaultyStore::new(memory.clone());
    let sharing = Sharing::new(Engine::builder().store(store).build().unwrap());
    let item = |u: usize| {
        format!(
            r#"{{"UserId":"{}","Entity":1,"EntityType":3,"EntityId":"869196","ContextEntity":1,"ContextEntityId":"f2dbf1d5-bbab-418b-bddc-4c92ecdef214","AccessType":1,"DurationInMinutes":30}}"#,
            user(u)
        )
    };
    let body = |from: usize| {
        format!(
            "[{}]",
            (from..from + 50).map(item).collect::<Vec<_>>().join(",")
        )
    };
    let before = memory.batches();
    let responses = sharing.api_share(body(0).as_bytes()).unwrap();
    assert_eq!(memory.batches() - before, 1);
    assert!(responses
        .iter()
        .all(|r| matches!(r, ItemResponse::Success { .. })));
    assert_eq!(memory.stored_grants().len(), 50);

    // The store fails the next batch: every item fails, none is visible.
    faults.set(Fault::Once(faults.ops() + 1));
    let responses = sharing.api_share(body(100).as_bytes()).unwrap();
    assert!(responses
        .iter()
        .all(|r| !matches!(r, ItemResponse::Success { .. })));
    assert!(!sharing
        .engine()
        .can_read(&user(100), &EntityId::lead(869196)));
    assert_eq!(sharing.engine().len(), 50);
    let page = sharing
        .history(
            &EntityId::lead(869196),
            &HistoryQuery::default().status(grantwheel::requests::StatusKind::Failed),
        )
        .unwrap();
    assert_eq!(page.records.len(), 50);
}

#[test]
fn a_subscriber_may_change_a_durable_engine() {
    let engine = Engine::builder().store(MemoryStore::new()).build().unwrap();
    let again = engine.clone();
    engine.subscribe(move |e: &grantwheel::Event| {
        if let grantwheel::Event::Granted(g) = e {
            if g.id.user == user(1) {
                // Re-entry from the delivering thread must not deadlock.
                again
                    .share(
                        user(2),
                        g.id.entity,
                        Context::Direct,
                        Level::Read,
                        Expiry::Default,
                    )
                    .unwrap();
            }
        }
    });
    engine
        .share(
            user(1),
            EntityId::lead(1),
            Context::Direct,
            Level::Read,
            Expiry::Default,
        )
        .unwrap();
    assert!(engine.can_read(&user(2), &EntityId::lead(1)));
}

#[test]
fn pruned_history_stays_pruned_after_a_restart() {
    for store in stores() {
        let clock = ManualClock::new(start());
        let lead = EntityId::lead(3);
        {
            let sharing = Sharing::new(store.open(&clock));
            sharing
                .share(ShareRequest::new(user(1), lead, Level::Read).duration(Duration::hours(1)));
            sharing
                .share(ShareRequest::new(user(2), lead, Level::Read).duration(Duration::days(200)));
            clock.advance(Duration::days(100));
            sharing.engine().advance();
            assert_eq!(sharing.prune().unwrap(), 1);
        }
        let sharing = Sharing::new(store.open(&clock));
        let page = sharing.history(&lead, &HistoryQuery::default()).unwrap();
        assert_eq!(page.records.len(), 1);
        assert_eq!(page.records[0].user, user(2));
    }
}

#[test]
fn a_row_changed_behind_the_engine_is_refused() {
    // A valid-looking edit (as damage on disk could make): edit access for
    // a year.
    let err = load_after_tampering(
        "UPDATE grants SET level = 'edit', expires_ms = expires_ms + 31536000000",
    );
    assert!(err.to_string().contains("checksum"), "{err}");
}

#[test]
fn concurrent_readers_never_see_a_share_before_it_is_written() {
    use std::sync::atomic::{AtomicBool, Ordering};
    const N: usize = 400;
    let written: Arc<Vec<AtomicBool>> = Arc::new((0..N).map(|_| AtomicBool::new(false)).collect());
    let engine = Engine::builder()
        .store(Hooked {
            inner: MemoryStore::new(),
            // Mark each share's lead as written, slowly enough that readers
            // run while the batch is being written.
            hook: {
                let written = written.clone();
                move |batch: &Batch<'_>| {
                    std::thread::sleep(std::time::Duration::from_micros(200));
                    for c in batch.changes {
                        if let Change::Put(g) = c {
                            if let grantwheel::EntityRef::Number(n) = g.id.entity.id {
                                written[n as usize].store(true, Ordering::SeqCst);
                            }
                        }
                    }
                }
            },
        })
        .build()
        .unwrap();
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        for w in 0..2 {
            let engine = engine.clone();
            s.spawn(move || {
                for n in (w..N).step_by(2) {
                    engine
                        .share(
                            user(1),
                            EntityId::lead(n as u64),
                            Context::Direct,
                            Level::Edit,
                            Expiry::Default,
                        )
                        .unwrap();
                }
            });
        }
        for _ in 0..2 {
            let (engine, written, done) = (engine.clone(), written.clone(), &done);
            s.spawn(move || {
                let mut seen = 0;
                while !done.load(Ordering::SeqCst) {
                    for n in 0..N {
                        if engine.can_read(&user(1), &EntityId::lead(n as u64)) {
                            assert!(
                                written[n].load(Ordering::SeqCst),
                                "lead {n} readable before it was written"
                            );
                            seen += 1;
                        }
                    }
                }
                assert!(seen > 0);
            });
        }
        // Writers finish, then the readers stop.
        while engine.len() < N {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
        done.store(true, Ordering::SeqCst);
    });
}

#[test]
fn queued_requests_are_known_after_a_restart_or_refused() {
    use grantwheel::requests::{Command, Submission};
    use grantwheel::store::{Fault, FaultyStore};
    let memory = MemoryStore::new();
    let clock = ManualClock::new(start());
    let (store, faults) = FaultyStore::new(memory.clone());
    let share = || {
        Submission::api(Command::Share(ShareRequest::new(
            user(1),
            EntityId::lead(1),
            Level::Read,
        )))
    };
    let kept;
    {
        let sharing = Sharing::new(
            Engine::builder()
                .clock(clock.clone())
                .store(store)
                .build()
                .unwrap(),
        );
        kept = sharing.submit(vec![share()]);
        // The store fails: the next submission is refused, not queued.
        faults.set(Fault::From(faults.ops() + 1));
        let refused = sharing.submit(vec![share()]);
        assert!(matches!(
            sharing.status(&refused[0]).unwrap(),
            Some(RequestStatus::Failed { kind: FailureKind::Store, reason }) if reason.starts_with("not accepted")
        ));
        assert_eq!(sharing.pending(), 1);
        // Gone without carrying out the queue.
    }
    let sharing = Sharing::new(
        Engine::builder()
            .clock(clock.clone())
            .store(memory)
            .build()
            .unwrap(),
    );
    assert_eq!(
        sharing.status(&kept[0]).unwrap(),
        Some(RequestStatus::Failed {
            kind: FailureKind::Interrupted,
            reason: INTERRUPTED.into()
        })
    );
}

/// A database the process may not write names its path and the cause,
/// instead of reading like a hardware fault. Root may write anything, so
/// as root the checks run in a child process as `nobody` (and the
/// read-only file system in a private mount namespace).
mod unwritable {
    use super::*;
    use grantwheel::store::Unwritable;
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;

    const STEP: &str = "GRANTWHEEL_UNWRITABLE_STEP";
    const DIR: &str = "GRANTWHEEL_UNWRITABLE_DIR";
    const NAME: &str = "unwritable::databases_that_cannot_be_written_say_why";

    fn cause(path: &std::path::Path) -> Unwritable {
        match SqliteStore::open(path) {
            Err(StoreError::Unwritable { path: p, cause }) => {
                assert_eq!(p, path.display().to_string());
                let message = StoreError::Unwritable {
                    path: p.clone(),
                    cause,
                }
                .to_string();
                assert!(message.contains(&p), "{message}");
                cause
            }
            other => panic!("{}: {other:?}", path.display()),
        }
    }

    fn make_db(path: &std::path::Path) {
        let engine = Engine::builder()
            .store(SqliteStore::open(path).unwrap())
            .build()
            .unwrap();
        engine
            .share(
                user(1),
                EntityId::lead(1),
                Context::Direct,
                Level::Read,
                Expiry::Default,
            )
            .unwrap();
    }

    /// The cases a user without special rights meets.
    fn as_a_plain_user() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("grants.db");
        make_db(&file);
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o444)).unwrap();
        assert_eq!(cause(&file), Unwritable::ReadOnlyFile);
        // Nothing stored was lost: made writable again, it opens with its grant.
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let engine = Engine::builder()
            .store(SqliteStore::open(&file).unwrap())
            .build()
            .unwrap();
        assert!(engine.can_read(&user(1), &EntityId::lead(1)));
        drop(engine);

        let missing = dir.path().join("no-such-dir").join("grants.db");
        assert_eq!(cause(&missing), Unwritable::DirectoryMissing);

        let locked_dir = dir.path().join("locked");
        std::fs::create_dir(&locked_dir).unwrap();
        std::fs::set_permissions(&locked_dir, std::fs::Permissions::from_mode(0o555)).unwrap();
        assert_eq!(
            cause(&locked_dir.join("grants.db")),
            Unwritable::PermissionDenied
        );
        std::fs::set_permissions(&locked_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn is_root() -> bool {
        Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
    }

    fn run_child(cmd: &mut Command) -> Option<bool> {
        match cmd.status() {
            Ok(status) => Some(status.success()),
            Err(e) => {
                println!("skipped: cannot start {cmd:?}: {e}");
                None
            }
        }
    }

    #[test]
    fn databases_that_cannot_be_written_say_why() {
        let exe = std::env::current_exe().unwrap();
        match std::env::var(STEP).as_deref() {
            Ok("plain") => return as_a_plain_user(),
            Ok("create") => {
                return make_db(
                    &std::path::Path::new(&std::env::var(DIR).unwrap()).join("grants.db"),
                )
            }
            Ok("read-only-fs") => {
                let file = std::path::Path::new(&std::env::var(DIR).unwrap()).join("grants.db");
                return assert_eq!(cause(&file), Unwritable::ReadOnlyFileSystem);
            }
            _ => {}
        }
        if !is_root() {
            as_a_plain_user();
            println!("skipped: the read-only file system case needs root (a private mount)");
            return;
        }
        // The test binary must be reachable by `nobody`, and so must /tmp.
        let mut plain = Command::new("setpriv");
        plain
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(&exe)
            .args(["--exact", NAME, "--nocapture"])
            .env(STEP, "plain")
            .env("TMPDIR", "/tmp");
        if let Some(ok) = run_child(&mut plain) {
            assert!(ok, "the plain-user cases failed (see above)");
        }
        let mount_dir = tempfile::tempdir().unwrap();
        let script = r#"set -e
mount -t tmpfs -o size=16m tmpfs "$GRANTWHEEL_UNWRITABLE_DIR"
GRANTWHEEL_UNWRITABLE_STEP=create "$0" --exact "$1" --nocapture
mount -o remount,ro "$GRANTWHEEL_UNWRITABLE_DIR"
GRANTWHEEL_UNWRITABLE_STEP=read-only-fs "$0" --exact "$1" --nocapture"#;
        let mut ro = Command::new("unshare");
        ro.args(["--mount", "--propagation", "private", "sh", "-c", script])
            .arg(&exe)
            .arg(NAME)
            .env(DIR, mount_dir.path());
        if let Some(ok) = run_child(&mut ro) {
            assert!(ok, "the read-only file system case failed (see above)");
        }
    }
}

/// The request layer keeps only what is in flight: finished requests are
/// read back from the store, also after a restart, and a request refused
/// before it reached the engine is seen at once and written with the next
/// batch.
#[test]
fn history_is_read_from_the_store_and_memory_holds_only_what_is_in_flight() {
    struct NoTasks;
    impl grantwheel::requests::ContextResolver for NoTasks {
        fn check(&self, _: &grantwheel::UserId, _: &EntityId, c: &Context) -> Result<(), String> {
            match c {
                Context::Task(_) => Err("no tasks".into()),
                _ => Ok(()),
            }
        }
    }
    for store in stores() {
        let clock = ManualClock::new(start());
        let lead = EntityId::lead(42);
        let (done, refused) = {
            let sharing = Sharing::builder(store.open(&clock))
                .resolver(NoTasks)
                .build()
                .unwrap();
            let mut last = None;
            for u in 0..200 {
                last = Some(sharing.share(ShareRequest::new(user(u), lead, Level::Read)));
            }
            assert_eq!(sharing.in_memory(), 0, "nothing finished stays in memory");
            let refused = sharing.share(
                ShareRequest::new(user(1), lead, Level::Read).context(Context::Task(Uuid::nil())),
            );
            // Refused before the engine: read from memory until written.
            assert!(matches!(
                sharing.status(&refused.request).unwrap(),
                Some(RequestStatus::Failed {
                    kind: FailureKind::ContextRefused,
                    ..
                })
            ));
            let page = sharing
                .history(&lead, &HistoryQuery::default().limit(2))
                .unwrap();
            assert_eq!(
                page.records[0].request, refused.request,
                "written for the page"
            );
            assert_eq!(sharing.in_memory(), 0);
            (last.unwrap(), refused)
        };
        let sharing = Sharing::new(store.open(&clock));
        assert_eq!(
            sharing.status(&done.request).unwrap(),
            Some(RequestStatus::Completed)
        );
        assert!(matches!(
            sharing.status(&refused.request).unwrap(),
            Some(RequestStatus::Failed { .. })
        ));
        let all = sharing
            .history(&lead, &HistoryQuery::default().limit(1000))
            .unwrap();
        assert_eq!(all.records.len(), 201);
        assert_eq!(sharing.in_memory(), 0);
    }
}

/// Listings come from the store's indexes, and never list a grant that is
/// revoked in memory though its revoke could not be written yet.
#[test]
fn listings_from_the_store_never_show_a_revoked_grant() {
    use grantwheel::store::{Fault, FaultyStore};
    let memory = MemoryStore::new();
    let (store, faults) = FaultyStore::new(memory.clone());
    let clock = ManualClock::new(start());
    let engine = Engine::builder()
        .clock(clock.clone())
        .store(store)
        .build()
        .unwrap();
    let (a, b) = (user(1), user(2));
    let mut shared = Vec::new();
    for e in 0..4 {
        for u in [a, b] {
            let g = engine
                .share(
                    u,
                    EntityId::lead(e),
                    Context::Direct,
                    Level::Read,
                    Expiry::After(Duration::hours(1 + e as i64)),
                )
                .unwrap();
            shared.push(g);
        }
    }
    let of_a: Vec<Grant> = shared.iter().filter(|g| g.id.user == a).copied().collect();
    assert_eq!(engine.user_grants(&a), of_a, "by expiry");
    assert_eq!(engine.entity_grants(&EntityId::lead(2)).len(), 2);
    assert_eq!(engine.expiring_within(Duration::minutes(90)).len(), 2);
    // The revoke cannot be written: the store still holds the grant.
    faults.set(Fault::Once(faults.ops() + 1));
    assert!(matches!(
        engine.revoke(&of_a[0].id),
        Err(RevokeError::NotDurable(_))
    ));
    assert!(memory.stored_grants().iter().any(|g| g.id == of_a[0].id));
    assert_eq!(engine.user_grants(&a), of_a[1..].to_vec());
    assert_eq!(engine.expiring_within(Duration::minutes(90)).len(), 1);
    // Past their expiry, grants are not listed (before any reclaim).
    clock.advance(Duration::minutes(150));
    assert_eq!(engine.user_grants(&a), of_a[2..].to_vec());
    // The revokes by user go through the same listing.
    let revoked = engine.revoke_user(&b).unwrap();
    assert_eq!(revoked.len(), 2);
    assert!(engine.user_grants(&b).is_empty());
    // No access after a revoke found through the store's listing.
    for e in 0..4 {
        assert!(!engine.can_read(&b, &EntityId::lead(e)));
    }
    assert!(
        engine.can_read(&a, &EntityId::lead(3)),
        "other users keep theirs"
    );
}

/// When the store cannot be read: queries say so (typed), the status API
/// answers "unavailable" rather than "not found", a keyed request is
/// refused rather than risked twice, and listings and revokes fall back to
/// the engine's own memory, so a revoke still takes effect.
#[test]
fn an_unreadable_store_is_reported_and_revokes_still_work() {
    use grantwheel::store::FaultyStore;
    use grantwheel::QueryError;
    let (store, faults) = FaultyStore::new(MemoryStore::new());
    let engine = Engine::builder()
        .clock(ManualClock::new(start()))
        .store(store)
        .build()
        .unwrap();
    let sharing = Sharing::new(engine.clone());
    let lead = EntityId::lead(5);
    let done = sharing.share(ShareRequest::new(user(1), lead, Level::Edit));
    faults.fail_reads(true);
    assert!(matches!(
        sharing.status(&done.request),
        Err(QueryError::Store(_))
    ));
    assert!(matches!(
        sharing.history(&lead, &HistoryQuery::default()),
        Err(QueryError::Store(_))
    ));
    assert_eq!(
        sharing
            .api_status(&done.request.to_string())
            .state
            .as_deref(),
        Some("Unavailable")
    );
    let keyed = sharing.run(
        grantwheel::requests::Submission::direct(grantwheel::requests::Command::Share(
            ShareRequest::new(user(2), lead, Level::Read),
        ))
        .key("k"),
    );
    assert!(matches!(
        keyed.status,
        RequestStatus::Failed {
            kind: FailureKind::Store,
            ..
        }
    ));
    assert!(
        !engine.can_read(&user(2), &lead),
        "not carried out unchecked"
    );
    // Listings and revokes fall back to memory.
    assert_eq!(engine.user_grants(&user(1)).len(), 1);
    assert_eq!(engine.revoke_entity(&lead).unwrap().len(), 1);
    assert!(!engine.can_read(&user(1), &lead));
    faults.fail_reads(false);
    assert_eq!(
        sharing.status(&keyed.request).unwrap().map(|s| s.kind()),
        Some(grantwheel::requests::StatusKind::Failed)
    );
}
