//! The request layer with approvals and re-validation at start against a
//! plain model.
//!
//! Edit shares wait for an approver; read shares are made at once. Shares
//! may start later, and the engine confirms starts: when one comes, the
//! context resolver is asked again. Steps approve, deny, revoke, take a
//! user's standing away or give it back, move the clock both ways (the
//! worker's rounds, the sweep of timed-out approvals and the check of the
//! starts that came, run after each move), and restart over the store.
//! After every step each (user, record) pair answers as the model does, and
//! each request's status is the model's: no check says yes for a share not
//! yet approved or before its start is checked, an approved share's
//! duration counts from the approval (or the requested start, if later), a
//! share nobody approved in time fails, and a start refused ends its grant.
//!
//! Cases: 300 of up to 60 steps by default; `GRANTWHEEL_MODEL_CASES` and
//! `GRANTWHEEL_MODEL_STEPS` set more (the gate runs 10,000 of up to 200
//! in release). Over SQLite a tenth as many run (each case writes a file
//! of its own: a tenth costs what all of them cost in memory).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, TimeZone, Utc};
use grantwheel::requests::{
    ApprovalError, ApprovalRules, ContextResolver, FailureKind, RequestId, RequestStatus,
    RevokeRequest, ShareRequest, Sharing,
};
use grantwheel::store::MemoryStore;
#[cfg(feature = "sqlite")]
use grantwheel::store::{SqliteStore, Synchronous};
use grantwheel::{Context, Engine, EntityId, Level, ManualClock, Start, UserId};

/// The users who lost their standing: the resolver refuses them.
#[derive(Clone, Default)]
struct Standing(Arc<Mutex<BTreeSet<UserId>>>);

impl ContextResolver for Standing {
    fn check(&self, user: &UserId, _: &EntityId, _: &Context) -> Result<(), String> {
        if self.0.lock().unwrap().contains(user) {
            Err("lost their standing".into())
        } else {
            Ok(())
        }
    }
}
use proptest::prelude::*;

const USERS: u128 = 2;
const ENTITIES: u64 = 2;
const APPROVER: UserId = UserId::from_u128(0xfeed);
/// How long a held share waits for an approver.
const TIMEOUT_MIN: i64 = 120;

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 7, 9, 0, 0).unwrap()
}

fn user(u: u128) -> UserId {
    UserId::from_u128(0x100 + u)
}

#[derive(Clone, Debug)]
enum Op {
    /// Share (user, record) at a level for minutes, starting after a
    /// delay in minutes (0: at once).
    Share(u128, u64, Level, i64, i64),
    /// Approve (true) or deny the n-th request asked.
    Decide(usize, bool),
    Revoke(u128, u64),
    /// Move the clock by minutes (negative: back).
    Clock(i64),
    /// Take a user's standing away (false) or give it back.
    Stand(u128, bool),
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    let level = prop_oneof![Just(Level::Read), Just(Level::Edit)];
    prop_oneof![
        4 => (0..USERS, 0..ENTITIES, level, 1..180i64, prop_oneof![Just(0i64), 1..120i64])
            .prop_map(|(u, e, l, d, s)| Op::Share(u, e, l, d, s)),
        4 => (0..16usize, any::<bool>()).prop_map(|(n, a)| Op::Decide(n, a)),
        1 => (0..USERS, 0..ENTITIES).prop_map(|(u, e)| Op::Revoke(u, e)),
        4 => prop_oneof![-30..0i64, 1..90i64].prop_map(Op::Clock),
        1 => (0..USERS, any::<bool>()).prop_map(|(u, ok)| Op::Stand(u, ok)),
        1 => Just(Op::Restart),
    ]
}

/// A grant in the model: its level, start and end; `started` once a
/// check may see it (the wheel reached its start, or it started at once).
#[derive(Clone, Copy, Debug)]
struct Held {
    level: Level,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    started: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    Awaiting,
    Completed,
    Failed(FailureKind),
}

#[derive(Clone, Debug)]
struct Asked {
    id: RequestId,
    user: u128,
    entity: u64,
    level: Level,
    minutes: i64,
    /// The requested start, if later than the request.
    start: Option<DateTime<Utc>>,
    deadline: DateTime<Utc>,
    state: State,
}

#[derive(Default)]
struct Model {
    /// One grant per pair (the engine replaces a repeated share).
    grants: BTreeMap<(u128, u64), Held>,
    asked: Vec<Asked>,
    /// Users without standing.
    lost: BTreeSet<u128>,
}

impl Model {
    fn make(
        &mut self,
        u: u128,
        e: u64,
        level: Level,
        from: DateTime<Utc>,
        minutes: i64,
        now: DateTime<Utc>,
    ) {
        self.grants.insert(
            (u, e),
            Held {
                level,
                start: from,
                end: from + Duration::minutes(minutes),
                started: from <= now,
            },
        );
    }

    /// The wheel ran at `now` and the starts that came were checked: a
    /// grant whose start came is seen if its user has standing, and ended
    /// if not; those whose end came are gone.
    fn advance(&mut self, now: DateTime<Utc>) {
        self.grants.retain(|_, g| g.end > now);
        let lost = &self.lost;
        self.grants
            .retain(|(u, _), g| g.started || g.start > now || !lost.contains(u));
        for g in self.grants.values_mut() {
            g.started |= g.start <= now;
        }
    }

    fn access(&self, u: u128, e: u64, now: DateTime<Utc>) -> (bool, bool) {
        match self.grants.get(&(u, e)) {
            Some(g) if g.started && now < g.end => (true, g.level == Level::Edit),
            _ => (false, false),
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Backing {
    Memory,
    #[cfg(feature = "sqlite")]
    Sqlite,
}

/// Opens an engine over the case's store (again, for a restart).
type Opener = Box<dyn Fn(&ManualClock) -> Engine>;

struct Rig {
    clock: ManualClock,
    standing: Standing,
    open: Opener,
    sharing: Option<Sharing>,
    _dir: Option<tempfile::TempDir>,
}

impl Rig {
    fn new(backing: Backing) -> Rig {
        let clock = ManualClock::new(t0());
        let (open, dir): (Opener, _) = match backing {
            Backing::Memory => {
                let store = MemoryStore::new();
                (
                    Box::new(move |c: &ManualClock| base(c).store(store.clone()).build().unwrap()),
                    None,
                )
            }
            #[cfg(feature = "sqlite")]
            Backing::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("approvals.db");
                (
                    Box::new(move |c: &ManualClock| {
                        let store = SqliteStore::open_with(&path, Synchronous::Normal).unwrap();
                        base(c).store(store).build().unwrap()
                    }),
                    Some(dir),
                )
            }
        };
        let mut rig = Rig {
            clock,
            standing: Standing::default(),
            open,
            sharing: None,
            _dir: dir,
        };
        rig.restart();
        rig
    }

    fn restart(&mut self) {
        self.sharing = None;
        let engine = (self.open)(&self.clock);
        self.sharing = Some(
            Sharing::builder(engine)
                .approvals(
                    ApprovalRules {
                        edit: true,
                        ..ApprovalRules::default()
                    },
                    Duration::minutes(TIMEOUT_MIN),
                )
                .resolver(self.standing.clone())
                .build()
                .unwrap(),
        );
    }

    fn s(&self) -> &Sharing {
        self.sharing.as_ref().unwrap()
    }
}

fn base(clock: &ManualClock) -> grantwheel::EngineBuilder {
    Engine::builder()
        .clock(clock.clone())
        .tick(Duration::milliseconds(1))
        .confirm_starts(true)
        .default_duration(Duration::days(7))
}

fn run(backing: Backing, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut rig = Rig::new(backing);
    let mut model = Model::default();
    for (step, op) in ops.into_iter().enumerate() {
        let now = rig.s().engine().now();
        match op {
            Op::Share(u, e, level, minutes, _) if model.lost.contains(&u) => {
                let out = rig.s().share(
                    ShareRequest::new(user(u), EntityId::lead(e), level)
                        .duration(Duration::minutes(minutes)),
                );
                prop_assert!(
                    matches!(
                        out.status,
                        RequestStatus::Failed {
                            kind: FailureKind::ContextRefused,
                            ..
                        }
                    ),
                    "step {}: {:?}",
                    step,
                    out
                );
            }
            Op::Stand(u, ok) => {
                let mut lost = rig.standing.0.lock().unwrap();
                if ok {
                    lost.remove(&user(u));
                    model.lost.remove(&u);
                } else {
                    lost.insert(user(u));
                    model.lost.insert(u);
                }
            }
            Op::Share(u, e, level, minutes, delay) => {
                let mut req = ShareRequest::new(user(u), EntityId::lead(e), level)
                    .duration(Duration::minutes(minutes));
                if delay > 0 {
                    req = req.start(Start::After(Duration::minutes(delay)));
                }
                let out = rig.s().share(req);
                let start = (delay > 0).then(|| now + Duration::minutes(delay));
                let state = if level == Level::Edit {
                    prop_assert_eq!(&out.status, &RequestStatus::Processing, "step {}", step);
                    State::Awaiting
                } else {
                    prop_assert_eq!(&out.status, &RequestStatus::Completed, "step {}", step);
                    model.make(u, e, level, start.unwrap_or(now), minutes, now);
                    State::Completed
                };
                model.asked.push(Asked {
                    id: out.request,
                    user: u,
                    entity: e,
                    level,
                    minutes,
                    start,
                    deadline: now + Duration::minutes(TIMEOUT_MIN),
                    state,
                });
            }
            Op::Decide(n, approve) => {
                if model.asked.is_empty() {
                    continue;
                }
                let n = n % model.asked.len();
                let a = model.asked[n].clone();
                let got = if approve {
                    rig.s().approve(&a.id, APPROVER, Some("ok"))
                } else {
                    rig.s().deny(&a.id, APPROVER, None)
                };
                match (&a.state, got) {
                    (State::Awaiting, Ok(out)) if approve && model.lost.contains(&a.user) => {
                        prop_assert!(
                            matches!(
                                out.status,
                                RequestStatus::Failed {
                                    kind: FailureKind::ContextRefused,
                                    ..
                                }
                            ),
                            "step {}: {:?}",
                            step,
                            out
                        );
                        model.asked[n].state = State::Failed(FailureKind::ContextRefused);
                    }
                    (State::Awaiting, Ok(out)) if approve => {
                        prop_assert_eq!(&out.status, &RequestStatus::Completed, "step {}", step);
                        let from = a.start.filter(|s| *s > now).unwrap_or(now);
                        model.make(a.user, a.entity, a.level, from, a.minutes, now);
                        let g = out.grant.unwrap();
                        prop_assert_eq!(g.expires_at, from + Duration::minutes(a.minutes));
                        model.asked[n].state = State::Completed;
                    }
                    (State::Awaiting, Ok(out)) => {
                        prop_assert!(
                            matches!(
                                out.status,
                                RequestStatus::Failed {
                                    kind: FailureKind::Denied,
                                    ..
                                }
                            ),
                            "step {}: {:?}",
                            step,
                            out
                        );
                        model.asked[n].state = State::Failed(FailureKind::Denied);
                    }
                    (State::Awaiting, Err(e)) => {
                        return Err(TestCaseError::fail(format!("step {step}: {e}")))
                    }
                    (_, Err(ApprovalError::NotAwaiting { .. })) => {}
                    (state, other) => {
                        return Err(TestCaseError::fail(format!(
                            "step {step}: a request {state:?} was decided: {other:?}"
                        )))
                    }
                }
            }
            Op::Revoke(u, e) => {
                let out = rig.s().revoke(RevokeRequest {
                    user: user(u),
                    entity: EntityId::lead(e),
                    context: Context::Direct,
                    level: Level::Read,
                });
                let held = model.grants.get(&(u, e)).is_some_and(|g| g.end > now);
                prop_assert_eq!(
                    out.status == RequestStatus::Completed,
                    held,
                    "step {}: {:?}",
                    step,
                    out
                );
                model.grants.remove(&(u, e));
            }
            Op::Clock(minutes) => {
                rig.clock.advance(Duration::minutes(minutes));
                let now = rig.s().engine().now();
                rig.s().engine().advance();
                rig.s().check_starts().unwrap();
                model.advance(now);
                rig.s().expire_approvals().unwrap();
                for a in &mut model.asked {
                    if a.state == State::Awaiting && a.deadline <= now {
                        a.state = State::Failed(FailureKind::ApprovalTimedOut);
                    }
                }
            }
            Op::Restart => {
                // The restarted worker's first round checks the starts
                // that came while it was down.
                rig.restart();
                rig.s().check_starts().unwrap();
                model.advance(now);
            }
        }
        rig.s()
            .engine()
            .check_invariants()
            .map_err(|e| TestCaseError::fail(format!("step {step}: {e}")))?;
        let now = rig.s().engine().now();
        for u in 0..USERS {
            for e in 0..ENTITIES {
                let lead = EntityId::lead(e);
                let got = (
                    rig.s().engine().can_read(&user(u), &lead),
                    rig.s().engine().can_edit(&user(u), &lead),
                );
                prop_assert_eq!(
                    got,
                    model.access(u, e, now),
                    "step {}: pair ({}, {})",
                    step,
                    u,
                    e
                );
            }
        }
        for a in &model.asked {
            let status = rig.s().status(&a.id).unwrap().unwrap();
            let state = match status {
                RequestStatus::Processing => State::Awaiting,
                RequestStatus::Completed => State::Completed,
                RequestStatus::Failed { kind, .. } => State::Failed(kind),
            };
            prop_assert_eq!(&state, &a.state, "step {}: request {}", step, a.id);
        }
    }
    Ok(())
}

fn cases() -> u32 {
    std::env::var("GRANTWHEEL_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
}

fn steps() -> usize {
    std::env::var("GRANTWHEEL_MODEL_STEPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn approvals_answer_as_the_model_over_memory(ops in proptest::collection::vec(op(), 1..steps())) {
        run(Backing::Memory, ops)?;
    }

}

#[cfg(feature = "sqlite")]
proptest! {
    #![proptest_config(ProptestConfig { cases: (cases() / 10).max(30), ..ProptestConfig::default() })]

    #[test]
    fn approvals_answer_as_the_model_over_sqlite(ops in proptest::collection::vec(op(), 1..steps())) {
        run(Backing::Sqlite, ops)?;
    }
}
