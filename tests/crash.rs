//! Crash safety: a child process runs shares, revokes and extensions on
//! three threads against a SQLite file and reports each acknowledged one on
//! its stdout; the parent kills it with SIGKILL at a random moment, opens
//! the file itself and checks:
//!
//! - the database passes SQLite's integrity check;
//! - no acknowledged share is lost (while it has not expired);
//! - no acknowledged revoke is undone;
//! - no grant past its expiry is honoured, and every grant held was asked
//!   for;
//! - a share made to start later is held with its start, answers no before
//!   it, and answers yes once its start passed (here, on open);
//! - every acknowledged share request is on record as `Completed`;
//! - shares of opportunities wait for an approver: an acknowledged hold is
//!   on record awaiting approval (or decided, if a decision was tried), an
//!   acknowledged approval or denial survives, and no grant of an
//!   opportunity is held without an approval on record (an approval that
//!   was not acknowledged either took whole or never granted);
//!
//! then starts the next child on the same file. 200 cycles by default; set
//! `GRANTWHEEL_CRASH_CYCLES` for more (the gate runs 1,000). Every
//! `GRANTWHEEL_CRASH_FILE_CYCLES` cycles (250 by default) the run moves to
//! a new file, so a long run stays linear in its cycles: every check
//! reads the whole file, which grows with the history.
//!
//! `GRANTWHEEL_CRASH_LANES` runs that many kill loops side by side, each
//! on files of its own.
//!
//! The soak: `GRANTWHEEL_CRASH_CYCLES=100000 GRANTWHEEL_CRASH_LANES=4 cargo
//! test --release --test crash kill_nine -- --nocapture`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::unreachable,
    reason = "a test stops loudly at what it did not expect"
)]
#![cfg(feature = "sqlite")]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration as StdDuration, Instant};

use chrono::{DateTime, Duration, Utc};
use grantwheel::requests::{
    ApprovalRules, FailureKind, RequestId, RequestStatus, ShareRequest, Sharing,
};
use grantwheel::store::{SqliteStore, StoreError};
use grantwheel::{
    ChangeError, Context, Engine, EntityId, EntityKind, EntityRef, Expiry, Grant, Level,
    RevokeError, ShareSpec, Start, UserId,
};
use rand::{rngs::StdRng, RngExt, SeedableRng};
use uuid::Uuid;

const CHILD_ENV: &str = "GRANTWHEEL_CRASH_CHILD";
const THREADS: u128 = 3;
const USERS_PER_THREAD: u128 = 20;
const ENTITIES: u64 = 8;
/// Opportunities, after the leads: their shares wait for an approver.
const OPPORTUNITIES: u64 = 4;

fn user(i: u128) -> UserId {
    UserId::from_u128(0x5000 + i)
}

/// Records `0..ENTITIES` are leads; those above are opportunities, whose
/// shares wait for an approver.
fn entity(i: u64) -> EntityId {
    if i < ENTITIES {
        EntityId::lead(100 + i)
    } else {
        EntityId::opportunity(100 + i)
    }
}

/// The request layer of the child and of the checks: shares of
/// opportunities wait for an approver (for a day: none times out here).
fn layer(engine: &Engine) -> Sharing {
    Sharing::builder(engine.clone())
        .approvals(
            ApprovalRules {
                kinds: vec![EntityKind::OPPORTUNITY],
                ..ApprovalRules::default()
            },
            Duration::days(1),
        )
        .build()
        .unwrap()
}

/// The approver of the crash test's held shares.
const APPROVER: UserId = UserId::from_u128(0xa9);

fn context(i: u8) -> Context {
    match i {
        0 => Context::Direct,
        _ => Context::Activity(Uuid::from_u128(0xac)),
    }
}

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn open(path: &std::path::Path) -> Engine {
    // The previous owner may be a dying process: wait for its lock.
    let deadline = Instant::now() + StdDuration::from_secs(10);
    loop {
        match SqliteStore::open(path) {
            Ok(store) => return Engine::builder().store(store).build().unwrap(),
            Err(StoreError::Locked { .. }) if Instant::now() < deadline => {
                std::thread::sleep(StdDuration::from_millis(5))
            }
            Err(e) => panic!("opening {}: {e}", path.display()),
        }
    }
}

/// The child: works until killed. Each line is printed after the call
/// returned Ok (`ACK`) or before it was made (`TRY`, shares only).
#[test]
fn crash_child() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let seed: u64 = std::env::var("GRANTWHEEL_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let engine = open(std::path::Path::new(&path));
    let sharing = layer(&engine);
    let stop = Instant::now() + StdDuration::from_secs(20);
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (engine, sharing) = (engine.clone(), sharing.clone());
            s.spawn(move || {
                let mut rng = StdRng::seed_from_u64(seed * 31 + t as u64);
                let users: Vec<UserId> = (0..USERS_PER_THREAD)
                    .map(|i| user(t * USERS_PER_THREAD + i))
                    .collect();
                // This thread's users' grants, as the engine has them.
                let mut mine: Vec<Grant> = users
                    .iter()
                    .flat_map(|u| [engine.user_grants(u), engine.scheduled_of(u)].concat())
                    .collect();
                // This thread's shares held for an approver:
                // (request, user, record).
                // Those a killed child left waiting are decided by the
                // next.
                let mut held: Vec<(RequestId, UserId, u64)> = sharing
                    .awaiting_approval(1000)
                    .unwrap()
                    .into_iter()
                    .filter(|r| users.contains(&r.user))
                    .map(|r| {
                        let EntityRef::Number(n) = r.entity.id else {
                            unreachable!("opportunities are numbered")
                        };
                        (r.request, r.user, n - 100)
                    })
                    .collect();
                while Instant::now() < stop {
                    let op = rng.random_range(0..12);
                    if op == 10 {
                        let u = users[rng.random_range(0..users.len())];
                        let e = ENTITIES + rng.random_range(0..OPPORTUNITIES);
                        let d = rng.random_range(100..4000);
                        let out = sharing.share(
                            ShareRequest::new(u, entity(e), Level::Edit)
                                .duration(Duration::milliseconds(d)),
                        );
                        assert_eq!(out.status, RequestStatus::Processing, "held");
                        println!("ACK H {}", out.request);
                        held.push((out.request, u, e));
                    } else if op == 11 && !held.is_empty() {
                        let (request, u, e) = held.swap_remove(rng.random_range(0..held.len()));
                        if rng.random_bool(0.75) {
                            // An approval makes a share of the pair (it
                            // replaces the pair's grant through the same
                            // context).
                            println!("TRY S {} {e} 0", u.as_u128());
                            println!("TRY A {request}");
                            let out = sharing.approve(&request, APPROVER, Some("crash")).unwrap();
                            let g = out.grant.unwrap();
                            println!(
                                "ACK S {} {} {e} 0 1 {} {request} 0",
                                g.id.serial,
                                u.as_u128(),
                                ms(g.expires_at)
                            );
                            println!("ACK A {request}");
                            mine.retain(|old| {
                                (old.id.user, old.id.entity, old.id.context)
                                    != (u, entity(e), Context::Direct)
                            });
                            mine.push(g);
                        } else {
                            println!("TRY D {request}");
                            sharing.deny(&request, APPROVER, None).unwrap();
                            println!("ACK D {request}");
                        }
                    } else if !(6..10).contains(&op) || mine.is_empty() {
                        let u = users[rng.random_range(0..users.len())];
                        let e = rng.random_range(0..ENTITIES);
                        let c = rng.random_range(0..2u8);
                        let level = if rng.random_bool(0.5) {
                            Level::Read
                        } else {
                            Level::Edit
                        };
                        let d = rng.random_range(100..4000);
                        println!("TRY S {} {e} {c}", u.as_u128());
                        // Half through the request layer: its record is kept
                        // too; some start later.
                        let (g, request) = if rng.random_bool(0.2) {
                            let start =
                                Start::After(Duration::milliseconds(rng.random_range(50..1500)));
                            let g = engine
                                .share_spec(
                                    ShareSpec::new(u, entity(e), level)
                                        .context(context(c))
                                        .start(start)
                                        .expiry(Expiry::After(Duration::milliseconds(d))),
                                )
                                .unwrap();
                            (g, String::from("-"))
                        } else if rng.random_bool(0.5) {
                            let g = engine
                                .share(
                                    u,
                                    entity(e),
                                    context(c),
                                    level,
                                    Expiry::After(Duration::milliseconds(d)),
                                )
                                .unwrap();
                            (g, String::from("-"))
                        } else {
                            let out = sharing.share(
                                ShareRequest::new(u, entity(e), level)
                                    .context(context(c))
                                    .duration(Duration::milliseconds(d)),
                            );
                            (out.grant.unwrap(), out.request.to_string())
                        };
                        println!(
                            "ACK S {} {} {e} {c} {} {} {request} {}",
                            g.id.serial,
                            u.as_u128(),
                            u8::from(level == Level::Edit),
                            ms(g.expires_at),
                            g.starts_at.map_or(0, ms)
                        );
                        mine.retain(|old| {
                            (old.id.user, old.id.entity, old.id.context)
                                != (u, entity(e), context(c))
                        });
                        mine.push(g);
                    } else if op < 8 {
                        let g = mine.swap_remove(rng.random_range(0..mine.len()));
                        println!("TRY R {}", g.id.serial);
                        match engine.revoke(&g.id) {
                            Ok(_) => println!("ACK R {}", g.id.serial),
                            Err(RevokeError::NotLive(_)) => {}
                            Err(e) => panic!("revoke: {e}"),
                        }
                    } else {
                        let i = rng.random_range(0..mine.len());
                        let by = Duration::milliseconds(rng.random_range(-300..2000));
                        println!("TRY X {}", mine[i].id.serial);
                        match engine.extend(&mine[i].id, by) {
                            Ok(g) => {
                                println!("ACK X {} {}", g.id.serial, ms(g.expires_at));
                                mine[i] = g;
                            }
                            Err(ChangeError::NotLive(_) | ChangeError::Invalid(_)) => {
                                mine.swap_remove(i);
                            }
                            Err(e) => panic!("extend: {e}"),
                        }
                    }
                }
            });
        }
    });
}

#[derive(Clone, Copy, Debug)]
struct Known {
    user: u128,
    entity: u64,
    context: u8,
    edit: bool,
    expires: i64,
    /// Its start, if it was made to start later (0: none).
    start: i64,
    /// An extension was asked for and not acknowledged: the expiry may
    /// differ.
    maybe_moved: bool,
    /// A revoke, or a share of the same key, was asked for and not
    /// acknowledged: the grant may be gone.
    maybe_gone: bool,
}

#[derive(Default)]
struct Model {
    /// Acknowledged shares still standing, by serial.
    live: BTreeMap<u64, Known>,
    /// Acknowledged revokes, and grants replaced by an acknowledged share.
    gone: BTreeSet<u64>,
    /// (user, entity, context) keys a share was asked for.
    asked: BTreeSet<(u128, u64, u8)>,
    /// Share requests acknowledged through the request layer.
    requests: Vec<RequestId>,
    /// Shares held for an approver, and what was asked or acknowledged of
    /// their decision.
    holds: BTreeMap<RequestId, Hold>,
    /// The grants that approvals on record made, by serial.
    approved: BTreeSet<u64>,
}

/// A held share's decision, as far as the child reported it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hold {
    Waiting,
    Approving,
    Approved,
    Denying,
    Denied,
}

impl Model {
    fn line(&mut self, line: &str) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let n = |i: usize| f[i].parse::<i128>().unwrap();
        match (f[0], f[1]) {
            ("TRY", "S") => {
                let key = (n(2) as u128, n(3) as u64, n(4) as u8);
                self.asked.insert(key);
                for k in self.live.values_mut() {
                    if (k.user, k.entity, k.context) == key {
                        k.maybe_gone = true;
                    }
                }
            }
            ("TRY", "X") => {
                if let Some(k) = self.live.get_mut(&(n(2) as u64)) {
                    k.maybe_moved = true;
                }
            }
            ("TRY", "R") => {
                if let Some(k) = self.live.get_mut(&(n(2) as u64)) {
                    k.maybe_gone = true;
                }
            }
            ("ACK", "S") => {
                let k = Known {
                    user: n(3) as u128,
                    entity: n(4) as u64,
                    context: n(5) as u8,
                    edit: n(6) == 1,
                    expires: n(7) as i64,
                    start: n(9) as i64,
                    maybe_moved: false,
                    maybe_gone: false,
                };
                // The share replaced any grant of the same key.
                let old: Vec<u64> = self
                    .live
                    .iter()
                    .filter(|(_, o)| (o.user, o.entity, o.context) == (k.user, k.entity, k.context))
                    .map(|(s, _)| *s)
                    .collect();
                for s in old {
                    self.live.remove(&s);
                    self.gone.insert(s);
                }
                self.live.insert(n(2) as u64, k);
                if f[8] != "-" {
                    self.requests.push(f[8].parse().unwrap());
                }
            }
            ("ACK", "H") => {
                self.holds.insert(f[2].parse().unwrap(), Hold::Waiting);
            }
            (kind @ ("TRY" | "ACK"), what @ ("A" | "D")) => {
                let state = match (kind, what) {
                    ("TRY", "A") => Hold::Approving,
                    ("ACK", "A") => Hold::Approved,
                    ("TRY", _) => Hold::Denying,
                    _ => Hold::Denied,
                };
                self.holds.insert(f[2].parse().unwrap(), state);
            }
            ("ACK", "R") => {
                let s = n(2) as u64;
                self.live.remove(&s);
                self.gone.insert(s);
            }
            ("ACK", "X") => {
                if let Some(k) = self.live.get_mut(&(n(2) as u64)) {
                    k.expires = n(3) as i64;
                    k.maybe_moved = false;
                }
            }
            _ => panic!("unexpected line {line:?}"),
        }
    }
}

/// Check the file against the model; returns the number of live grants.
fn verify(path: &std::path::Path, m: &mut Model, cycle: usize) -> usize {
    let mut store = SqliteStore::open(path).unwrap();
    store.integrity_check().unwrap();
    let before = ms(Utc::now());
    let engine = Engine::builder().store(store).build().unwrap();
    let sharing = layer(&engine);
    for request in &m.requests {
        assert_eq!(
            sharing.status(request).unwrap(),
            Some(RequestStatus::Completed),
            "cycle {cycle}: acknowledged request {request}"
        );
    }
    // Held shares: on record as the child last said, or (for a decision
    // asked and not acknowledged) either before or after it.
    let mut decided = Vec::new();
    for (request, hold) in &m.holds {
        let record = sharing
            .request(request)
            .unwrap()
            .unwrap_or_else(|| panic!("cycle {cycle}: held request {request} lost"));
        let waiting = record.awaiting_approval();
        let approved = record.status == RequestStatus::Completed;
        let denied = matches!(
            record.status,
            RequestStatus::Failed {
                kind: FailureKind::Denied,
                ..
            }
        );
        let fine = match hold {
            Hold::Waiting => waiting,
            Hold::Approving => waiting || approved,
            Hold::Approved => approved,
            Hold::Denying => waiting || denied,
            Hold::Denied => denied,
        };
        assert!(
            fine,
            "cycle {cycle}: held request {request} ({hold:?}) is {record:?}"
        );
        if approved {
            let decision = record.approval.as_ref().and_then(|a| a.decision.as_ref());
            assert!(decision.is_some_and(|d| d.approved && d.approver == APPROVER));
            m.approved.extend(record.grant.map(|id| id.serial));
        }
        if approved || denied {
            decided.push(*request);
        }
    }
    // A decided request stays decided: the next cycles check it no more.
    for request in decided {
        m.holds.remove(&request);
    }
    let mut held = BTreeMap::new();
    let mut waiting = BTreeSet::new();
    for u in 0..THREADS * USERS_PER_THREAD {
        // Scheduled first: a grant may start between the two listings
        // (and then shows in both), never stop.
        for g in engine.scheduled_of(&user(u)) {
            assert!(
                g.starts_at.is_some_and(|s| ms(s) > before),
                "cycle {cycle}: {g:?} listed as scheduled"
            );
            waiting.insert(g.id.serial);
            held.insert(g.id.serial, g);
        }
        for g in engine.user_grants(&user(u)) {
            waiting.remove(&g.id.serial);
            held.insert(g.id.serial, g);
        }
    }
    let after = ms(engine.now());
    // A pair whose every grant is yet to start answers no.
    for g in held.values() {
        let pair: Vec<&Grant> = held
            .values()
            .filter(|o| (o.id.user, o.id.entity) == (g.id.user, g.id.entity))
            .collect();
        if pair.iter().all(|o| waiting.contains(&o.id.serial)) {
            // Time moves on while the checks run: a later listing may
            // have started one whose start passed since.
            let first = pair.iter().filter_map(|o| o.starts_at).map(ms).min();
            let yes = engine.can_read(&g.id.user, &g.id.entity);
            let t = ms(Utc::now());
            assert!(
                !yes || first.is_some_and(|s| t >= s),
                "cycle {cycle}: {g:?} readable before its start"
            );
        }
    }
    for (serial, g) in &held {
        if g.id.entity.kind == EntityKind::OPPORTUNITY {
            assert!(
                m.approved.contains(serial),
                "cycle {cycle}: grant {serial} of an opportunity held without an approval on record: {g:?}"
            );
        }
        let asked = m.asked.iter().any(|(u, e, c)| {
            (UserId::from_u128(*u), entity(*e), context(*c))
                == (g.id.user, g.id.entity, g.id.context)
        });
        assert!(
            asked,
            "cycle {cycle}: grant {serial} was never asked for: {g:?}"
        );
        assert!(
            !m.gone.contains(serial),
            "cycle {cycle}: revoked grant {serial} came back"
        );
        assert!(
            ms(g.expires_at) > before,
            "cycle {cycle}: grant {serial} held past its expiry"
        );
    }
    for (serial, k) in &m.live {
        // Lost only if it expired (allowing for the time the checks take).
        if !k.maybe_gone && !k.maybe_moved && k.expires > after + 50 {
            let g = held
                .get(serial)
                .unwrap_or_else(|| panic!("cycle {cycle}: acknowledged share {serial} lost"));
            assert_eq!(
                ms(g.expires_at),
                k.expires,
                "cycle {cycle}: grant {serial} expiry"
            );
            assert_eq!(g.level == Level::Edit, k.edit);
            assert_eq!(
                g.starts_at.map_or(0, ms),
                k.start,
                "cycle {cycle}: grant {serial} start"
            );
            // Started once its start has passed (on open, here).
            if k.start <= before {
                let (u, e) = (UserId::from_u128(k.user), entity(k.entity));
                assert!(!waiting.contains(serial));
                // Read the time after the check: on a loaded machine the
                // grant may have reached its expiry since the listing.
                let read = engine.can_read(&u, &e);
                let edit = engine.can_edit(&u, &e);
                let t = ms(Utc::now());
                assert!(
                    (read && (edit || !k.edit)) || t >= k.expires,
                    "cycle {cycle}: grant {serial} unreadable {} ms before its expiry",
                    k.expires - t
                );
            } else if k.start > after {
                assert!(
                    waiting.contains(serial),
                    "cycle {cycle}: {serial} started early"
                );
            }
        }
        if k.expires <= before && !k.maybe_moved {
            assert!(
                !held.contains_key(serial),
                "cycle {cycle}: expired grant {serial} honoured"
            );
        }
    }
    // What the restarted engine has is now the truth for the next cycle.
    m.live.retain(|s, _| held.contains_key(s));
    for (s, g) in &held {
        if let Some(k) = m.live.get_mut(s) {
            k.expires = ms(g.expires_at);
            k.maybe_moved = false;
            k.maybe_gone = false;
        }
    }
    held.len()
}

/// How one lane of the kill run went.
#[derive(Default)]
struct Lane {
    acks: usize,
    held_max: usize,
    /// Shares held for an approver, and decisions acknowledged.
    holds: usize,
    decisions: usize,
}

/// Runs `cycles` kill cycles on files of its own in `dir`. Lanes share
/// nothing but the machine, so several of them make a long soak shorter
/// where the children wait on the disk more than on the processor.
fn kill_lane(lane: usize, cycles: usize, per_file: usize, dir: &std::path::Path) -> Lane {
    let exe = std::env::current_exe().unwrap();
    let mut rng = StdRng::seed_from_u64(0xc4a5 + lane as u64);
    let mut m = Model::default();
    let mut out = Lane::default();
    let file = |n: usize| dir.join(format!("crash-{lane}-{n}.db"));
    let mut path = file(0);
    for cycle in 0..cycles {
        if cycle > 0 && cycle % per_file == 0 {
            path = file(cycle / per_file);
            m = Model::default();
        }
        let mut child = Command::new(&exe)
            .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, &path)
            .env("GRANTWHEEL_CRASH_SEED", (lane * cycles + cycle).to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            let mut r = BufReader::new(stdout);
            let mut line = String::new();
            while r.read_line(&mut line).unwrap_or(0) > 0 {
                // A line cut by the kill was not reported. The test
                // harness may have printed its own words before ours.
                let at = line.find("ACK ").or_else(|| line.find("TRY "));
                if let (true, Some(at)) = (line.ends_with('\n'), at) {
                    lines.push(line[at..].trim_end().to_string());
                }
                line.clear();
            }
            lines
        });
        std::thread::sleep(StdDuration::from_millis(rng.random_range(20..150)));
        child.kill().unwrap();
        child.wait().unwrap();
        for line in reader.join().unwrap() {
            out.acks += usize::from(line.starts_with("ACK"));
            out.holds += usize::from(line.starts_with("ACK H"));
            out.decisions += usize::from(line.starts_with("ACK A") || line.starts_with("ACK D"));
            m.line(&line);
        }
        out.held_max = out.held_max.max(verify(&path, &mut m, cycle));
    }
    out
}

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

#[test]
fn kill_nine_loses_nothing_acknowledged() {
    let cycles = env_count("GRANTWHEEL_CRASH_CYCLES", 200);
    let per_file = env_count("GRANTWHEEL_CRASH_FILE_CYCLES", 250).max(1);
    let lanes = env_count("GRANTWHEEL_CRASH_LANES", 1).clamp(1, cycles.max(1));
    let dir = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let done: Vec<Lane> = std::thread::scope(|s| {
        let runs: Vec<_> = (0..lanes)
            .map(|lane| {
                // The first lanes take the remainder.
                let n = cycles / lanes + usize::from(lane < cycles % lanes);
                let dir = dir.path();
                s.spawn(move || kill_lane(lane, n, per_file, dir))
            })
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    let acks: usize = done.iter().map(|l| l.acks).sum();
    let held_max = done.iter().map(|l| l.held_max).max().unwrap_or(0);
    let holds: usize = done.iter().map(|l| l.holds).sum();
    let decisions: usize = done.iter().map(|l| l.decisions).sum();
    assert!(
        acks > cycles,
        "the children got work done ({acks} acknowledgements)"
    );
    assert!(
        holds > 0 && decisions > 0,
        "shares were held ({holds}) and decided ({decisions})"
    );
    println!(
        "{cycles} kills in {lanes} lane(s), {acks} acknowledged operations checked ({holds} shares held for an approver, {decisions} decisions), up to {held_max} live grants, 0 violations, {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn a_second_process_is_refused_while_the_first_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("owned.db");
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(&exe)
        .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait for the child's first acknowledged write: it holds the file.
    let mut r = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while r.read_line(&mut line).unwrap() > 0 && !line.contains("ACK ") {
        line.clear();
    }
    let second = SqliteStore::open(&path);
    child.kill().unwrap();
    child.wait().unwrap();
    match second {
        Err(StoreError::Locked { path: p }) => assert!(p.ends_with("owned.db")),
        other => panic!("a second writer was let in: {other:?}"),
    }
    // Once the first is gone, the file opens.
    drop(r);
    open(&path);
}
