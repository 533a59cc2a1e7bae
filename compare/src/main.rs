//! grantwheel beside the engines a user would pick instead, on the same
//! grants, in one run.
//!
//! `cargo run --release -p grantwheel-compare` runs every engine at 10k, 100k
//! and 1M grants (`--sizes 10000,100000` to choose), each in its own process
//! so that resident memory is measured alone, and prints a table.
//!
//! The workload: N live grants of random UUID users on numeric entity ids,
//! read or edit, expiring within 90 days; checks on a random mix of present
//! (90%) and absent (10%) pairs, half asking for read, half for edit.

use std::collections::{HashMap, HashSet};
use std::hint::black_box;
use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

use rand::{rngs::StdRng, RngExt, SeedableRng};
use uuid::Uuid;

const DAY_MS: i64 = 86_400_000;
/// Engines whose setup passes this are skipped at that size.
const SETUP_LIMIT: Duration = Duration::from_secs(60);
/// Checks in one timed round (fewer for slow engines: see `ROUND_TIME`).
const ROUND_CHECKS: usize = 200_000;
/// A round stops after this long even if not all checks ran.
const ROUND_TIME: Duration = Duration::from_secs(2);
const ENGINES: &[&str] = &[
    "grantwheel",
    "hashbrown",
    "moka",
    "cedar",
    "casbin",
    "delayqueue",
];

/// One grant of the workload.
#[derive(Clone, Copy)]
struct Grant {
    user: Uuid,
    entity: u64,
    edit: bool,
    expires_ms: i64,
}

/// One check: the pair, and whether edit is asked.
#[derive(Clone, Copy)]
struct Check {
    user: Uuid,
    entity: u64,
    edit: bool,
}

fn start_ms() -> i64 {
    1_767_225_600_000 // 2026-01-01T00:00:00Z
}

fn workload(n: usize) -> (Vec<Grant>, Vec<Check>) {
    let mut rng = StdRng::seed_from_u64(7);
    let grants: Vec<Grant> = (0..n)
        .map(|_| Grant {
            user: Uuid::from_u128(rng.random()),
            entity: rng.random_range(0..1u64 << 40),
            edit: rng.random_bool(0.5),
            expires_ms: start_ms() + rng.random_range(DAY_MS / 24..90 * DAY_MS),
        })
        .collect();
    let checks = (0..ROUND_CHECKS)
        .map(|i| {
            let present = if rng.random_bool(0.9) {
                grants.get(rng.random_range(0..n)).copied()
            } else {
                None
            };
            if let Some(g) = present {
                Check {
                    user: g.user,
                    entity: g.entity,
                    edit: i % 2 == 1,
                }
            } else {
                Check {
                    user: Uuid::from_u128(rng.random()),
                    entity: rng.random_range(0..1u64 << 40),
                    edit: i % 2 == 1,
                }
            }
        })
        .collect();
    (grants, checks)
}

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        * 4096
}

/// A check answered by an engine.
trait Checker: Sync {
    fn check(&self, c: &Check, now_ms: i64) -> bool;
}

struct GrantwheelChecker(grantwheel::Engine);
impl Checker for GrantwheelChecker {
    fn check(&self, c: &Check, _now: i64) -> bool {
        let user = grantwheel::UserId(c.user);
        let entity = grantwheel::EntityId::lead(c.entity);
        if c.edit {
            self.0.can_edit(&user, &entity)
        } else {
            self.0.can_read(&user, &entity)
        }
    }
}

struct MapChecker(hashbrown::HashMap<(Uuid, u64), (bool, i64)>);
impl Checker for MapChecker {
    fn check(&self, c: &Check, now: i64) -> bool {
        self.0
            .get(&(c.user, c.entity))
            .is_some_and(|(edit, exp)| now < *exp && (*edit || !c.edit))
    }
}

struct MokaExpiry;
impl moka::Expiry<(Uuid, u64), (bool, i64)> for MokaExpiry {
    fn expire_after_create(
        &self,
        _: &(Uuid, u64),
        v: &(bool, i64),
        _: Instant,
    ) -> Option<Duration> {
        Some(Duration::from_millis(
            u64::try_from(v.1 - start_ms()).unwrap_or(0),
        ))
    }
}

struct MokaChecker(moka::sync::Cache<(Uuid, u64), (bool, i64)>);
impl Checker for MokaChecker {
    fn check(&self, c: &Check, _now: i64) -> bool {
        // moka checks the entry's expiry itself, against its own clock.
        self.0
            .get(&(c.user, c.entity))
            .is_some_and(|(edit, _)| edit || !c.edit)
    }
}

struct CedarChecker {
    policies: cedar_policy::PolicySet,
    entities: cedar_policy::Entities,
    authorizer: cedar_policy::Authorizer,
    user_type: cedar_policy::EntityTypeName,
    grant_type: cedar_policy::EntityTypeName,
    read: cedar_policy::EntityUid,
    edit: cedar_policy::EntityUid,
}

const CEDAR_POLICIES: &str = r#"
permit(principal, action == Action::"read", resource) when { resource.until > context.now };
permit(principal, action == Action::"edit", resource) when { resource.edit && resource.until > context.now };
"#;

fn cedar_grant_id(user: &Uuid, entity: u64) -> String {
    format!("{}:{entity}", user.simple())
}

impl Checker for CedarChecker {
    fn check(&self, c: &Check, now: i64) -> bool {
        use cedar_policy::{Context, EntityId, EntityUid, Request, RestrictedExpression};
        let principal = EntityUid::from_type_name_and_id(
            self.user_type.clone(),
            EntityId::new(c.user.simple().to_string()),
        );
        let resource = EntityUid::from_type_name_and_id(
            self.grant_type.clone(),
            EntityId::new(cedar_grant_id(&c.user, c.entity)),
        );
        let action = if c.edit { &self.edit } else { &self.read };
        let Ok(context) =
            Context::from_pairs([("now".to_string(), RestrictedExpression::new_long(now))])
        else {
            return false;
        };
        let Ok(request) = Request::new(principal, action.clone(), resource, context, None) else {
            return false;
        };
        self.authorizer
            .is_authorized(&request, &self.policies, &self.entities)
            .decision()
            == cedar_policy::Decision::Allow
    }
}

struct CasbinChecker(casbin::Enforcer);

const CASBIN_MODEL: &str = r#"
[request_definition]
r = sub, obj, act, now

[policy_definition]
p = sub, obj, act, until

[policy_effect]
e = some(where (p.eft == allow))

[matchers]
m = r.sub == p.sub && r.obj == p.obj && r.act == p.act && r.now < p.until
"#;

fn padded(ms: i64) -> String {
    format!("{ms:016}")
}

impl Checker for CasbinChecker {
    fn check(&self, c: &Check, now: i64) -> bool {
        use casbin::CoreApi;
        let act = if c.edit { "edit" } else { "read" };
        self.0
            .enforce((
                c.user.simple().to_string(),
                c.entity.to_string(),
                act,
                padded(now),
            ))
            .unwrap_or(false)
    }
}

/// Build the engine's state for `grants`; `None` if setup passed the limit.
fn setup(engine: &str, grants: &[Grant]) -> Option<Box<dyn Checker>> {
    let began = Instant::now();
    let over = || began.elapsed() > SETUP_LIMIT;
    match engine {
        "grantwheel" => {
            let clock =
                grantwheel::ManualClock::new(chrono::DateTime::from_timestamp_millis(start_ms())?);
            let e = grantwheel::Engine::builder()
                .clock(clock)
                .capacity(grants.len())
                .build()
                .ok()?;
            for (i, g) in grants.iter().enumerate() {
                let level = if g.edit {
                    grantwheel::Level::Edit
                } else {
                    grantwheel::Level::Read
                };
                let at = chrono::DateTime::from_timestamp_millis(g.expires_ms)?;
                e.share(
                    grantwheel::UserId(g.user),
                    grantwheel::EntityId::lead(g.entity),
                    grantwheel::Context::Direct,
                    level,
                    grantwheel::Expiry::At(at),
                )
                .ok()?;
                if i % 4096 == 0 && over() {
                    return None;
                }
            }
            Some(Box::new(GrantwheelChecker(e)))
        }
        "hashbrown" => Some(Box::new(MapChecker(
            grants
                .iter()
                .map(|g| ((g.user, g.entity), (g.edit, g.expires_ms)))
                .collect(),
        ))),
        "moka" => {
            let cache = moka::sync::Cache::builder()
                .expire_after(MokaExpiry)
                .build();
            for (i, g) in grants.iter().enumerate() {
                cache.insert((g.user, g.entity), (g.edit, g.expires_ms));
                if i % 4096 == 0 && over() {
                    return None;
                }
            }
            cache.run_pending_tasks();
            Some(Box::new(MokaChecker(cache)))
        }
        "cedar" => {
            use cedar_policy::{Entity, EntityId, EntityUid, RestrictedExpression};
            let grant_type: cedar_policy::EntityTypeName = "Grant".parse().ok()?;
            let mut entities = Vec::with_capacity(grants.len());
            for (i, g) in grants.iter().enumerate() {
                let uid = EntityUid::from_type_name_and_id(
                    grant_type.clone(),
                    EntityId::new(cedar_grant_id(&g.user, g.entity)),
                );
                let attrs = HashMap::from([
                    (
                        "until".to_string(),
                        RestrictedExpression::new_long(g.expires_ms),
                    ),
                    ("edit".to_string(), RestrictedExpression::new_bool(g.edit)),
                ]);
                entities.push(Entity::new(uid, attrs, HashSet::new()).ok()?);
                if i % 4096 == 0 && over() {
                    return None;
                }
            }
            let entities = cedar_policy::Entities::from_entities(entities, None).ok()?;
            if over() {
                return None;
            }
            Some(Box::new(CedarChecker {
                policies: CEDAR_POLICIES.parse().ok()?,
                entities,
                authorizer: cedar_policy::Authorizer::new(),
                user_type: "User".parse().ok()?,
                grant_type,
                read: r#"Action::"read""#.parse().ok()?,
                edit: r#"Action::"edit""#.parse().ok()?,
            }))
        }
        "casbin" => {
            use casbin::{CoreApi, DefaultModel, Enforcer, MemoryAdapter, MgmtApi};
            let rt = tokio::runtime::Builder::new_current_thread().build().ok()?;
            let enforcer = rt.block_on(async {
                let model = DefaultModel::from_str(CASBIN_MODEL).await.ok()?;
                let mut e = Enforcer::new(model, MemoryAdapter::default()).await.ok()?;
                for chunk in grants.chunks(4096) {
                    let mut rows = Vec::with_capacity(chunk.len() * 2);
                    for g in chunk {
                        let (sub, obj, until) = (
                            g.user.simple().to_string(),
                            g.entity.to_string(),
                            padded(g.expires_ms),
                        );
                        rows.push(vec![sub.clone(), obj.clone(), "read".into(), until.clone()]);
                        if g.edit {
                            rows.push(vec![sub, obj, "edit".into(), until]);
                        }
                    }
                    e.add_policies(rows).await.ok()?;
                    if over() {
                        return None;
                    }
                }
                Some(e)
            })?;
            Some(Box::new(CasbinChecker(enforcer)))
        }
        _ => None,
    }
}

/// Nanoseconds per check over `checks` on `threads` threads (aggregate: wall
/// time over all checks done), stopping a round after `ROUND_TIME`.
fn time_checks(checker: &dyn Checker, checks: &[Check], threads: usize) -> f64 {
    let now = start_ms();
    let began = Instant::now();
    let done: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    let mut n = 0;
                    // Slow engines look at the time after every check.
                    let mut stride = 64;
                    for c in checks.iter().skip(t).step_by(threads) {
                        black_box(checker.check(c, now));
                        n += 1;
                        if n == 1 && began.elapsed() > Duration::from_millis(1) {
                            stride = 1;
                        }
                        if n % stride == 0 && began.elapsed() > ROUND_TIME {
                            break;
                        }
                    }
                    n
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
    });
    began.elapsed().as_nanos() as f64 / done.max(1) as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Inserts and expirations per second (and, for DelayQueue, resident bytes
/// per entry while full): grantwheel's wheel reclaiming all N grants in one
/// advance, or tokio-util's DelayQueue draining N entries.
fn expirations(engine: &str, grants: &[Grant]) -> Option<(f64, f64, u64)> {
    match engine {
        "grantwheel" => {
            let clock =
                grantwheel::ManualClock::new(chrono::DateTime::from_timestamp_millis(start_ms())?);
            let e = grantwheel::Engine::builder()
                .clock(clock.clone())
                .build()
                .ok()?;
            let began = Instant::now();
            for g in grants {
                let at = chrono::DateTime::from_timestamp_millis(g.expires_ms)?;
                e.share(
                    grantwheel::UserId(g.user),
                    grantwheel::EntityId::lead(g.entity),
                    grantwheel::Context::Direct,
                    grantwheel::Level::Read,
                    grantwheel::Expiry::At(at),
                )
                .ok()?;
            }
            let insert = grants.len() as f64 / began.elapsed().as_secs_f64();
            clock.advance(chrono::Duration::days(91));
            let began = Instant::now();
            let n = e.advance();
            Some((insert, n as f64 / began.elapsed().as_secs_f64(), 0))
        }
        "delayqueue" => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .ok()?;
            rt.block_on(async {
                let before = resident_bytes();
                let mut queue = tokio_util::time::DelayQueue::with_capacity(grants.len());
                let began = Instant::now();
                for g in grants {
                    let d = Duration::from_millis(u64::try_from(g.expires_ms - start_ms()).ok()?);
                    queue.insert((g.user, g.entity), d);
                }
                let insert = grants.len() as f64 / began.elapsed().as_secs_f64();
                let bytes = resident_bytes().saturating_sub(before) / grants.len().max(1) as u64;
                tokio::time::advance(Duration::from_millis(91 * DAY_MS as u64)).await;
                let began = Instant::now();
                let mut n = 0usize;
                while let Some(item) = futures::future::poll_fn(|cx| queue.poll_expired(cx)).await {
                    black_box(item);
                    n += 1;
                }
                Some((insert, n as f64 / began.elapsed().as_secs_f64(), bytes))
            })
        }
        _ => None,
    }
}

/// Child mode: measure one engine at one size and print one `RESULT` line.
fn run_one(engine: &str, n: usize) {
    let (grants, checks) = workload(n);
    let mut fields: Vec<String> = vec![engine.into(), n.to_string()];
    if engine == "delayqueue" {
        match expirations(engine, &grants) {
            Some((ins, exp, bytes)) => {
                fields.extend([
                    "-".into(),
                    bytes.to_string(),
                    "-".into(),
                    "-".into(),
                    format!("{ins:.0}"),
                    format!("{exp:.0}"),
                ]);
            }
            None => fields.push("failed".into()),
        }
        println!("RESULT {}", fields.join(" "));
        return;
    }
    let before = resident_bytes();
    let began = Instant::now();
    let Some(checker) = setup(engine, &grants) else {
        println!("RESULT {engine} {n} skipped");
        return;
    };
    let setup_ms = began.elapsed().as_millis();
    let bytes = resident_bytes().saturating_sub(before) / n as u64;
    let one = median(
        (0..3)
            .map(|_| time_checks(checker.as_ref(), &checks, 1))
            .collect(),
    );
    let two = median(
        (0..3)
            .map(|_| time_checks(checker.as_ref(), &checks, 2))
            .collect(),
    );
    drop(checker);
    let (ins, exp) = match expirations(engine, &grants) {
        Some((i, e, _)) => (format!("{i:.0}"), format!("{e:.0}")),
        None => ("-".into(), "-".into()),
    };
    fields.extend([
        setup_ms.to_string(),
        bytes.to_string(),
        format!("{one:.1}"),
        format!("{two:.1}"),
        ins,
        exp,
    ]);
    println!("RESULT {}", fields.join(" "));
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--run") {
        let (Some(engine), Some(n)) = (args.get(2), args.get(3).and_then(|n| n.parse().ok()))
        else {
            eprintln!("usage: grantwheel-compare --run <engine> <n>");
            std::process::exit(2);
        };
        run_one(engine, n);
        return;
    }
    let sizes: Vec<usize> = match args.iter().position(|a| a == "--sizes") {
        Some(i) => args
            .get(i + 1)
            .map(|s| s.split(',').filter_map(|v| v.trim().parse().ok()).collect())
            .unwrap_or_default(),
        None => vec![10_000, 100_000, 1_000_000],
    };
    let Ok(me) = std::env::current_exe() else {
        eprintln!("cannot find this program's path");
        std::process::exit(1);
    };
    println!("| engine | grants | setup ms | bytes/grant | ns/check (1 thread) | ns/check (2 threads, aggregate) | inserts/s | expirations/s |");
    println!("|---|---|---|---|---|---|---|---|");
    for n in sizes {
        for engine in ENGINES {
            let out = Command::new(&me)
                .args(["--run", engine, &n.to_string()])
                .output();
            let line = out
                .ok()
                .and_then(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .lines()
                        .find(|l| l.starts_with("RESULT "))
                        .map(str::to_string)
                })
                .unwrap_or_else(|| format!("RESULT {engine} {n} failed"));
            let cols: Vec<&str> = line.split_whitespace().skip(1).collect();
            let row = if let Some(first) = cols.get(..8) {
                first.join(" | ")
            } else {
                let why = if cols.get(2) == Some(&"skipped") {
                    "skipped: setup over 60 s"
                } else {
                    "failed"
                };
                format!("{engine} | {n} | {why} | | | | |")
            };
            println!("| {row} |");
            let _ = std::io::stdout().flush();
        }
    }
}
