//! History served by the store: figures for the request layer's write
//! rate, the store's query latencies, and restart time and memory with a
//! large history. Prints figures (no criterion: most figures need files
//! of millions of rows, built once).
//!
//! `cargo bench --bench history [-- throughput|queries|restart|store]`
//! (`store`: queries and restart over one history file); sizes
//! from `GRANTWHEEL_HISTORY_N` (history records, default 1,000,000) and
//! `GRANTWHEEL_HISTORY_GRANTS` (live grants for the user listing, default
//! 1,000,000). The issue's figures use `GRANTWHEEL_HISTORY_N=10000000
//! GRANTWHEEL_HISTORY_GRANTS=10000000`.
//!
//! - **throughput**: API batches of 1,000 items (JSON decoded, carried out,
//!   written with their records) on SQLite with full sync, the clock
//!   moving 1 s per batch so that grants expire and their ends are written
//!   as they would be; the rate per window of 100,000 requests, first to
//!   last.
//! - **queries**: a file of N history records over 100,000 entities (five
//!   of them with 2% of the records each), mixed statuses, sources (API,
//!   20 rules, direct) and idempotency keys, and a file of live grants over
//!   100,000 users: p50 / p99 / max of each query of the read side.
//! - **restart**: a child process opens a file of 1,000,000 live grants
//!   with N history records, and one with none: time to build the engine
//!   and its request layer, and resident memory after, against the live
//!   grants' own footprint.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::unreachable,
    reason = "a test stops loudly at what it did not expect"
)]
use std::path::Path;
use std::time::{Duration as StdDuration, Instant};

use chrono::{DateTime, Duration, TimeZone, Utc};
use grantwheel::requests::{
    FailureKind, HistoryQuery, HistoryRecord, RequestId, RequestKind, RequestStatus, RuleId,
    Sharing, Source, SourceKind, StatusKind,
};
use grantwheel::store::{Batch, Change, EndCause, GrantFilter, SqliteStore, Store};
use grantwheel::{Context, Engine, EntityId, Grant, GrantId, Level, ManualClock, UserId};
use rand::{rngs::StdRng, RngExt, SeedableRng};

const ENTITIES: u64 = 100_000;
const HOT: u64 = 5;
const USERS: u128 = 1_000_000;

fn start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
}

fn env(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// An entity: one of five hot ones for 10% of the records, else one of
/// 100,000.
fn pick_entity(rng: &mut StdRng) -> EntityId {
    if rng.random_bool(0.10) {
        EntityId::lead(rng.random_range(0..HOT))
    } else {
        EntityId::lead(rng.random_range(HOT..ENTITIES))
    }
}

fn pick_user(rng: &mut StdRng) -> UserId {
    UserId::from_u128(rng.random_range(1..=USERS))
}

fn main() {
    let arg = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    if let Ok(job) = std::env::var("GRANTWHEEL_HISTORY_CHILD") {
        return child(&job);
    }
    let n = env("GRANTWHEEL_HISTORY_N", 1_000_000);
    let grants = env("GRANTWHEEL_HISTORY_GRANTS", 1_000_000);
    if let Ok(reuse) = std::env::var("GRANTWHEEL_BENCH_REUSE") {
        // Files kept by an earlier run: queries (sampled from the files) or
        // restarts again.
        let reuse = Path::new(&reuse);
        let history = reuse.join("history.db");
        if arg.as_deref() != Some("restart") {
            queries(&history, &reuse.join("grants.db"), &sample(&history));
        }
        if arg.as_deref() != Some("queries") {
            let without = reuse.join("no-history.db");
            if !without.exists() {
                build_history(&without, 0, 1_000_000);
            }
            restart(&history, &without, n);
        }
        return;
    }
    let temp =
        tempfile::tempdir_in(std::env::var("GRANTWHEEL_BENCH_DIR").unwrap_or(".".into())).unwrap();
    // GRANTWHEEL_BENCH_KEEP=1 keeps the files (to look at them, or to run
    // the queries again on them with GRANTWHEEL_BENCH_REUSE=<folder>).
    let dir = Paths(temp.path().to_path_buf());
    let _temp = if std::env::var("GRANTWHEEL_BENCH_KEEP").is_ok() {
        println!("files in {}", temp.keep().display());
        None
    } else {
        Some(temp)
    };
    let all = arg.is_none() || arg.as_deref() == Some("history");
    // `store`: the queries and the restart, over one history file.
    let store = arg.as_deref() == Some("store");
    if all || arg.as_deref() == Some("throughput") {
        throughput(&dir.path().join("api.db"), n);
    }
    if all || store || arg.as_deref() == Some("queries") || arg.as_deref() == Some("restart") {
        let with = dir.path().join("history.db");
        let samples = build_history(&with, n, 1_000_000);
        if all || store || arg.as_deref() == Some("queries") {
            let listing = dir.path().join("grants.db");
            build_grants(&listing, grants);
            queries(&with, &listing, &samples);
        }
        if all || store || arg.as_deref() == Some("restart") {
            let without = dir.path().join("no-history.db");
            build_history(&without, 0, 1_000_000);
            restart(&with, &without, n);
        }
    }
}

/// Where the files go.
struct Paths(std::path::PathBuf);

impl Paths {
    fn path(&self) -> &Path {
        &self.0
    }
}

fn api_body(rng: &mut StdRng, items: usize) -> Vec<u8> {
    let mut body = String::from("[");
    for i in 0..items {
        if i > 0 {
            body.push(',');
        }
        let minutes = if rng.random_bool(0.1) { 129_600 } else { 1 };
        body.push_str(&format!(
            r#"{{"UserId":"{}","Entity":1,"EntityType":3,"EntityId":"{}","ContextEntity":1,"ContextEntityId":"{}","AccessType":{},"DurationInMinutes":{}}}"#,
            pick_user(rng).0,
            match pick_entity(rng).id {
                grantwheel::EntityRef::Number(n) => n,
                grantwheel::EntityRef::Uuid(_) => 0,
            },
            uuid::Uuid::from_u128(rng.random()),
            1 + rng.random_range(0..2u8),
            minutes
        ));
    }
    body.push(']');
    body.into_bytes()
}

/// Single calls: the API with one item per call (a request and its record
/// each), against the engine's own single shares, on files of their own:
/// both are bound by one sync per call.
fn single_calls(dir: &Path) {
    const CALLS: usize = 2000;
    let open = |name: &str| {
        Engine::builder()
            .clock(ManualClock::new(start()))
            .store(SqliteStore::open(dir.join(name)).unwrap())
            .build()
            .unwrap()
    };
    let mut rng = StdRng::seed_from_u64(3);
    let engine = open("single-engine.db");
    let t = Instant::now();
    for _ in 0..CALLS {
        engine
            .share(
                pick_user(&mut rng),
                pick_entity(&mut rng),
                Context::Direct,
                Level::Read,
                grantwheel::Expiry::Default,
            )
            .unwrap();
    }
    let engine_rate = CALLS as f64 / t.elapsed().as_secs_f64();
    let sharing = Sharing::new(open("single-api.db"));
    let bodies: Vec<Vec<u8>> = (0..CALLS).map(|_| api_body(&mut rng, 1)).collect();
    let t = Instant::now();
    for body in &bodies {
        sharing.api_share(body).unwrap();
    }
    let api_rate = CALLS as f64 / t.elapsed().as_secs_f64();
    println!(
        "single calls: engine shares {engine_rate:.0}/s, API calls of one item {api_rate:.0}/s ({:.2}x)",
        api_rate / engine_rate
    );
}

/// API batches of 1,000 through the request layer on SQLite.
fn throughput(path: &Path, n: usize) {
    if let Some(dir) = path.parent() {
        single_calls(dir);
    }
    let clock = ManualClock::new(start());
    let engine = Engine::builder()
        .clock(clock.clone())
        .store(SqliteStore::open(path).unwrap())
        .build()
        .unwrap();
    let sharing = Sharing::new(engine.clone());
    let mut rng = StdRng::seed_from_u64(7);
    const WINDOW: usize = 100_000;
    let mut rates = Vec::new();
    let mut done = 0;
    let mut spent = StdDuration::ZERO;
    let mut written = written_bytes();
    while done < n {
        let body = api_body(&mut rng, 1000);
        let t = Instant::now();
        let answers = sharing.api_share(&body).unwrap();
        clock.advance(Duration::seconds(1));
        engine.advance();
        spent += t.elapsed();
        assert_eq!(answers.len(), 1000);
        done += 1000;
        if done % WINDOW == 0 {
            rates.push(WINDOW as f64 / spent.as_secs_f64());
            spent = StdDuration::ZERO;
            let now_written = written_bytes();
            println!(
                "throughput: {done} requests, {:.0} requests/s in the last {WINDOW}, {:.1} KiB written per request, file {} MB",
                rates.last().copied().unwrap_or(0.0),
                (now_written - written) as f64 / WINDOW as f64 / 1024.0,
                std::fs::metadata(path)
                    .map(|m| m.len() / 1_000_000)
                    .unwrap_or(0)
            );
            written = now_written;
        }
    }
    if let (Some(first), Some(last)) = (rates.first(), rates.last()) {
        let min = rates.iter().copied().fold(f64::MAX, f64::min);
        let max = rates.iter().copied().fold(0.0, f64::max);
        println!(
            "throughput: first {first:.0}/s, last {last:.0}/s, min {min:.0}/s, max {max:.0}/s, first/last {:.2}x, live grants {}",
            first / last,
            engine.len()
        );
    }
}

/// Writes changes straight into a store in batches of 20,000.
struct Bulk {
    store: SqliteStore,
    seq: u64,
    changes: Vec<Change>,
}

impl Bulk {
    fn open(path: &Path) -> Self {
        Bulk {
            store: SqliteStore::open(path).unwrap(),
            seq: 0,
            changes: Vec::with_capacity(20_000),
        }
    }

    /// Queue `change`; write the batch when it is full. `serial` is the
    /// highest grant serial given so far.
    fn push(&mut self, change: Change, serial: u64) {
        self.changes.push(change);
        if self.changes.len() >= 20_000 {
            self.write(serial);
        }
    }

    fn write(&mut self, serial: u64) {
        if self.changes.is_empty() {
            return;
        }
        self.seq += 1;
        self.store
            .apply(&Batch {
                seq: self.seq,
                next_serial: serial + 1,
                clock: start(),
                changes: &self.changes,
            })
            .unwrap();
        self.changes.clear();
    }
}

/// What the query figures sample.
struct Samples {
    ids: Vec<RequestId>,
    keys: Vec<String>,
    users: Vec<(EntityId, UserId)>,
}

/// A file with `n` history records (mixed kinds, most of their grants
/// ended) and `live` live grants, written straight through the store.
fn build_history(path: &Path, n: usize, live: usize) -> Samples {
    let t = Instant::now();
    let mut bulk = Bulk::open(path);
    let mut rng = StdRng::seed_from_u64(11);
    let mut samples = Samples {
        ids: Vec::new(),
        keys: Vec::new(),
        users: Vec::new(),
    };
    let mut serial = 0u64;
    for i in 0..n {
        let entity = pick_entity(&mut rng);
        let user = pick_user(&mut rng);
        let created = start() + Duration::seconds(i as i64 / 100);
        let source = match rng.random_range(0..10) {
            0..=5 => Source::Api,
            6..=8 => Source::Automation {
                rule: RuleId(rng.random_range(1..=20)),
            },
            _ => Source::Direct,
        };
        // About 4% fail; one in 100,000 is still processing (queued when
        // the service stopped): a restart fails those few as interrupted.
        let status = match rng.random_range(0..100_000) {
            0..=3_999 => RequestStatus::Failed {
                kind: FailureKind::ContextRefused,
                reason: "the activity is not the user's".into(),
            },
            4_000 => RequestStatus::Processing,
            _ => RequestStatus::Completed,
        };
        let context = Context::Activity(uuid::Uuid::from_u128(rng.random()));
        serial += 1;
        let grant = (status == RequestStatus::Completed).then_some(GrantId {
            user,
            entity,
            context,
            serial,
        });
        let key = rng.random_bool(0.1).then(|| format!("crm-event-{i}"));
        let record = HistoryRecord {
            request: RequestId::random(),
            kind: RequestKind::Share,
            entity,
            user,
            context,
            level: Level::Read,
            duration: Some(Duration::minutes(30)),
            expires_at: grant.map(|_| created + Duration::minutes(30)),
            source,
            status: status.clone(),
            grant,
            created_at: created,
            completed_at: (status != RequestStatus::Processing).then_some(created),
            revoked: None,
            expired_at: None,
            idempotency_key: key.clone(),
            starts_at: None,
            granted_by: None,
            approval: None,
            end_reason: None,
        };
        if i % 997 == 0 {
            samples.ids.push(record.request);
            samples.users.push((entity, user));
        }
        if let (Some(key), true) = (key, i % 97 == 0) {
            samples.keys.push(key);
        }
        bulk.push(Change::Record(Box::new(record)), serial);
        if let Some(g) = grant {
            // Ended (expired) soon after: the history of a busy CRM.
            let end = Change::End {
                grant: g,
                at: created + Duration::minutes(30),
                cause: EndCause::Expired,
            };
            bulk.push(end, serial);
        }
    }
    let far = start() + Duration::days(3650);
    for i in 0..live {
        let mut r = StdRng::seed_from_u64(i as u64);
        serial += 1;
        let put = Change::Put(Grant {
            id: GrantId {
                user: UserId::from_u128(r.random()),
                entity: EntityId::lead(r.random_range(0..1u64 << 40)),
                context: Context::Direct,
                serial,
            },
            level: Level::Read,
            expires_at: far,
            starts_at: None,
        });
        bulk.push(put, serial);
    }
    bulk.write(serial);
    println!(
        "built {}: {n} history records, {live} live grants in {:.1} s, {} MB",
        path.display(),
        t.elapsed().as_secs_f64(),
        std::fs::metadata(path)
            .map(|m| m.len() / 1_000_000)
            .unwrap_or(0)
    );
    samples
}

/// Samples of ids, keys and (entity, user) pairs read from a file.
fn sample(path: &Path) -> Samples {
    let conn = rusqlite::Connection::open(path).unwrap();
    let col = |sql: &str| -> Vec<String> {
        let mut stmt = conn.prepare(sql).unwrap();
        let rows = stmt.query_map([], |r| r.get::<_, String>(0)).unwrap();
        rows.map(Result::unwrap).collect()
    };
    let ids = col("SELECT request FROM history WHERE seq % 997 = 0");
    let keys = col(
        "SELECT idempotency_key FROM history WHERE idempotency_key IS NOT NULL AND seq % 97 = 0",
    );
    let mut stmt = conn
        .prepare("SELECT entity_id, user FROM history WHERE seq % 997 = 0")
        .unwrap();
    let users = stmt
        .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .map(|(e, u)| (EntityId::lead(e as u64), u.parse().unwrap()))
        .collect();
    Samples {
        ids: ids.iter().map(|s| s.parse().unwrap()).collect(),
        keys,
        users,
    }
}

/// A file of `n` live grants over 100,000 users.
fn build_grants(path: &Path, n: usize) {
    let t = Instant::now();
    let mut bulk = Bulk::open(path);
    let mut rng = StdRng::seed_from_u64(13);
    let far = start() + Duration::days(3650);
    for serial in 0..n as u64 {
        let put = Change::Put(Grant {
            id: GrantId {
                user: UserId::from_u128(rng.random_range(1..=100_000)),
                entity: EntityId::lead(rng.random_range(0..1u64 << 40)),
                context: Context::Direct,
                serial,
            },
            level: Level::Edit,
            expires_at: far - Duration::seconds(rng.random_range(0..86_400)),
            starts_at: None,
        });
        bulk.push(put, serial);
    }
    bulk.write(n as u64);
    println!(
        "built {}: {n} live grants in {:.1} s",
        path.display(),
        t.elapsed().as_secs_f64()
    );
}

fn report(name: &str, mut times: Vec<StdDuration>, results: usize) {
    times.sort();
    let at = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
    println!(
        "query {name:<34} p50 {:>7.1} µs  p99 {:>7.1} µs  max {:>7.1} µs  ({} queries, {results} records)",
        at(0.5).as_secs_f64() * 1e6,
        at(0.99).as_secs_f64() * 1e6,
        times.last().copied().unwrap_or_default().as_secs_f64() * 1e6,
        times.len()
    );
}

fn time<T>(name: &str, count: usize, mut q: impl FnMut(usize) -> T, size: impl Fn(&T) -> usize) {
    // Warm the connection and the operating system's cache of the pages
    // a query meets first; the figures are of queries after.
    for i in 0..count.min(200) {
        q(i);
    }
    let mut times = Vec::with_capacity(count);
    let mut results = 0;
    for i in 0..count {
        let t = Instant::now();
        let out = q(i);
        times.push(t.elapsed());
        results += size(&out);
    }
    report(name, times, results);
}

fn queries(history: &Path, listing: &Path, s: &Samples) {
    let store = SqliteStore::open(history).unwrap();
    let r = store.reader().unwrap();
    let mut rng = StdRng::seed_from_u64(17);
    let entities: Vec<EntityId> = (0..2000).map(|_| pick_entity(&mut rng)).collect();
    let hot: Vec<EntityId> = (0..HOT).map(EntityId::lead).collect();
    let page = HistoryQuery::default().limit(50);
    let n = 2000;
    for (label, es) in [("", &entities), (" (hot entity)", &hot)] {
        let pick = |i: usize| es[i % es.len()];
        time(
            &format!("newest page of 50{label}"),
            n,
            |i| r.history(&pick(i), &page).unwrap(),
            |p| p.records.len(),
        );
        let by_user: Vec<(EntityId, UserId)> = if label.is_empty() {
            s.users.clone()
        } else {
            (0..200)
                .map(|i| (hot[i % hot.len()], UserId::from_u128(i as u128 + 1)))
                .collect()
        };
        time(
            &format!("page by user{label}"),
            n,
            |i| {
                let (e, u) = by_user[i % by_user.len()];
                r.history(&e, &page.clone().user(u)).unwrap()
            },
            |p| p.records.len(),
        );
        for (name, q) in [
            ("status Failed", page.clone().status(StatusKind::Failed)),
            (
                "status Processing",
                page.clone().status(StatusKind::Processing),
            ),
            (
                "source Automation",
                page.clone().source_kind(SourceKind::Automation),
            ),
            (
                "source Direct",
                page.clone().source_kind(SourceKind::Direct),
            ),
        ] {
            time(
                &format!("page by {name}{label}"),
                n,
                |i| r.history(&pick(i), &q).unwrap(),
                |p| p.records.len(),
            );
        }
    }
    time(
        "status by request id",
        n * 5,
        |i| r.request(&s.ids[i % s.ids.len()]).unwrap(),
        |x| usize::from(x.is_some()),
    );
    time(
        "idempotency key",
        n * 5,
        |i| r.request_by_key(&s.keys[i % s.keys.len()]).unwrap(),
        |x| usize::from(x.is_some()),
    );
    let store = SqliteStore::open(listing).unwrap();
    let r = store.reader().unwrap();
    time(
        "live grants of one user",
        n,
        |i| {
            let u = UserId::from_u128((i as u128 * 7919) % 100_000 + 1);
            r.live_grants(GrantFilter::User(u), start()).unwrap()
        },
        Vec::len,
    );
}

fn restart(with: &Path, without: &Path, n: usize) {
    let run = |path: &Path| -> String {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .env(
                "GRANTWHEEL_HISTORY_CHILD",
                format!("restart:{}", path.display()),
            )
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    // Twice each, alternating: the second of each is the one reported.
    for _ in 0..2 {
        let a = run(without);
        let b = run(with);
        println!("restart without history: {a}");
        println!("restart with {n} history records: {b}");
    }
}

/// In a child process: open a file, build the engine and its request
/// layer, print the time and resident memory.
fn child(job: &str) {
    let Some(path) = job.strip_prefix("restart:") else {
        return;
    };
    let before = resident_kb();
    let t = Instant::now();
    let engine = Engine::builder()
        .clock(ManualClock::new(start()))
        .store(SqliteStore::open(path).unwrap())
        .build()
        .unwrap();
    let sharing = Sharing::new(engine.clone());
    let took = t.elapsed();
    let after = resident_kb();
    let f = engine.footprint();
    let footprint = (f.index_bytes + f.grant_bytes + f.wheel_bytes) / 1024;
    println!(
        "{} live grants in {:.3} s; resident {} MiB after (+{} MiB), live grants' footprint {} MiB, above it {} MiB",
        engine.len(),
        took.as_secs_f64(),
        after / 1024,
        (after - before) / 1024,
        footprint / 1024,
        (after - before).saturating_sub(footprint as u64) / 1024
    );
    drop(sharing);
}

/// Bytes this process has caused to be written to storage.
fn written_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn resident_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
