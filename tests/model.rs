//! The engine against a plain model: a `BTreeMap` of grants and a clock.
//!
//! Every step applies one operation to both; after every step each (user,
//! entity) pair must answer exactly as the model does, and the events the
//! engine delivered must be exactly the model's.
//!
//! Each case runs without a store, over the memory store or over SQLite;
//! with a store, a `Restart` step drops the engine and builds a new one
//! over the same store: grants past their expiry are gone (without
//! events), the rest answer as before.
//!
//! Cases: 2,000 of up to 100 steps by default; `GRANTWHEEL_MODEL_CASES`
//! and `GRANTWHEEL_MODEL_STEPS` set more (the gate runs 10,000 of up to
//! 200 in release).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, TimeZone, Utc};
use grantwheel::store::MemoryStore;
#[cfg(feature = "sqlite")]
use grantwheel::store::{SqliteStore, Synchronous};
use grantwheel::{
    ChangeError, Engine, Event, Expiry, Grant, GrantId, Level, ManualClock, OverMax, RepeatShare,
    RevokeError, RevokeReason, ShareError,
};
use proptest::prelude::*;

const USERS: usize = 3;
const ENTITIES: usize = 3;
const CONTEXTS: usize = 3;
const DEFAULT_MS: u64 = 7 * 86_400_000;
const MAX_MS: u64 = 30 * 86_400_000;
const YEAR_MS: i64 = 365 * 86_400_000;

#[path = "support/common.rs"]
mod common;

use common::{context, entity, user};

fn ms(t: u64) -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp_millis(t as i64).unwrap()
}

#[derive(Clone, Debug)]
enum When {
    Default,
    After(i64),
    At(i64),
}

#[derive(Clone, Debug)]
enum Op {
    Share(usize, usize, usize, Level, When),
    SetExpiry(usize, usize, usize, When, bool),
    Extend(usize, usize, usize, i64, bool),
    Revoke(usize, usize, usize, bool),
    RevokeContext(usize, usize, usize),
    RevokePair(usize, usize),
    RevokeUser(usize),
    RevokeEntity(usize),
    RevokeFromContext(usize),
    /// Move the clock (negative: backwards) and maybe call advance.
    Clock(i64, bool),
    /// Set the clock to the n-th grant's expiry (or warning) plus -1, 0 or
    /// 1 ms, and maybe call advance: the edges.
    ClockToEdge(usize, bool, i64, bool),
    /// Drop the engine and build it again over its store.
    Restart,
}

/// Where the engine keeps its state.
#[derive(Clone, Copy, Debug)]
enum Backing {
    Nothing,
    Memory,
    #[cfg(feature = "sqlite")]
    Sqlite,
}

/// The backings this build can test.
const BACKINGS: &[Backing] = &[
    Backing::Nothing,
    Backing::Memory,
    #[cfg(feature = "sqlite")]
    Backing::Sqlite,
];

#[derive(Clone, Copy, Debug)]
struct Settings {
    tick_ms: u64,
    warnings: &'static [u64],
    repeat: RepeatShare,
    over: OverMax,
}

#[derive(Clone, Copy, Debug)]
struct MGrant {
    level: Level,
    expires: u64,
    serial: u64,
    stage: usize,
}

struct Model {
    s: Settings,
    clock: i64,
    now: u64,
    next_serial: u64,
    grants: BTreeMap<(usize, usize, usize), MGrant>,
    events: Vec<Event>,
}

impl Model {
    fn grant(&self, k: (usize, usize, usize), g: &MGrant) -> Grant {
        Grant {
            id: GrantId {
                user: user(k.0),
                entity: entity(k.1),
                context: context(k.2),
                serial: g.serial,
            },
            level: g.level,
            expires_at: ms(g.expires),
            starts_at: None,
        }
    }

    fn next_timer(&self, expires: u64) -> (usize, u64) {
        for (i, w) in self.s.warnings.iter().enumerate() {
            let at = expires.saturating_sub(*w);
            if at > self.now {
                return (i, at);
            }
        }
        (self.s.warnings.len(), expires)
    }

    fn tick_of(&self, at: u64) -> u64 {
        at.div_ceil(self.s.tick_ms)
    }

    fn advance(&mut self) {
        let now_tick = self.now / self.s.tick_ms;
        let mut timed: Vec<(u64, u64, Event)> = Vec::new();
        let keys: Vec<_> = self.grants.keys().copied().collect();
        for k in keys {
            let g = self.grants[&k];
            let warning = g.stage < self.s.warnings.len();
            let at = if warning {
                g.expires.saturating_sub(self.s.warnings[g.stage])
            } else {
                g.expires
            };
            if self.tick_of(at) > now_tick {
                continue;
            }
            if warning {
                if g.expires > self.now {
                    timed.push((
                        at,
                        g.serial,
                        Event::ExpiringSoon {
                            grant: self.grant(k, &g),
                            warned_at: ms(at),
                        },
                    ));
                }
                let (stage, next) = self.next_timer(g.expires);
                if self.tick_of(next) > now_tick {
                    self.grants.get_mut(&k).unwrap().stage = stage;
                    continue;
                }
            }
            timed.push((g.expires, g.serial, Event::Expired(self.grant(k, &g))));
            self.grants.remove(&k);
        }
        timed.sort_by_key(|(a, s, _)| (*a, *s));
        self.events.extend(timed.into_iter().map(|(_, _, e)| e));
    }

    fn expiry_after(&self, field: &'static str, mut d: u64) -> Result<u64, &'static str> {
        if d > MAX_MS {
            match self.s.over {
                OverMax::Clamp => d = MAX_MS,
                OverMax::Reject => return Err(field),
            }
        }
        Ok(self.now + d)
    }

    fn resolve(&self, when: &When) -> Result<u64, &'static str> {
        match when {
            When::Default => self.expiry_after("duration", DEFAULT_MS),
            When::After(d) if *d <= 0 => Err("duration"),
            When::After(d) => self.expiry_after("duration", *d as u64),
            When::At(t) => {
                let t = u64::try_from(*t).unwrap_or(0);
                if t <= self.now {
                    Err("expires_at")
                } else {
                    self.expiry_after("expires_at", t - self.now)
                }
            }
        }
    }

    fn live(&self, k: &(usize, usize, usize)) -> Option<MGrant> {
        self.grants.get(k).copied().filter(|g| g.expires > self.now)
    }

    fn rearm(&mut self, k: (usize, usize, usize)) {
        let (stage, _) = self.next_timer(self.grants[&k].expires);
        self.grants.get_mut(&k).unwrap().stage = stage;
    }

    fn share(
        &mut self,
        k: (usize, usize, usize),
        level: Level,
        when: &When,
    ) -> Result<Grant, &'static str> {
        let expires = self.resolve(when)?;
        if let Some(old) = self.grants.get(&k).copied() {
            if old.expires <= self.now {
                self.events.push(Event::Expired(self.grant(k, &old)));
                self.grants.remove(&k);
            } else {
                match self.s.repeat {
                    RepeatShare::Reject => return Err("already"),
                    RepeatShare::KeepLater => {
                        let (e, l) = (old.expires.max(expires), old.level.max(level));
                        if (e, l) != (old.expires, old.level) {
                            let g = self.grants.get_mut(&k).unwrap();
                            g.expires = e;
                            g.level = l;
                            self.rearm(k);
                            let g = self.grants[&k];
                            self.events.push(Event::Extended {
                                grant: self.grant(k, &g),
                                previous_expiry: ms(old.expires),
                            });
                        }
                        let g = self.grants[&k];
                        return Ok(self.grant(k, &g));
                    }
                    RepeatShare::Replace => {
                        self.events.push(Event::Revoked {
                            grant: self.grant(k, &old),
                            reason: RevokeReason::Replaced,
                        });
                        self.grants.remove(&k);
                    }
                }
            }
        }
        let serial = self.next_serial;
        self.next_serial += 1;
        let (stage, _) = self.next_timer(expires);
        let g = MGrant {
            level,
            expires,
            serial,
            stage,
        };
        self.grants.insert(k, g);
        let grant = self.grant(k, &g);
        self.events.push(Event::Granted(grant));
        Ok(grant)
    }

    fn change(&mut self, k: (usize, usize, usize), expires: u64) -> Grant {
        let old = self.grants[&k];
        if old.expires != expires {
            self.grants.get_mut(&k).unwrap().expires = expires;
            self.rearm(k);
            let g = self.grants[&k];
            self.events.push(Event::Extended {
                grant: self.grant(k, &g),
                previous_expiry: ms(old.expires),
            });
        }
        let g = self.grants[&k];
        self.grant(k, &g)
    }

    fn revoke_keys(&mut self, mut keys: Vec<(usize, usize, usize)>) -> Vec<Grant> {
        keys.retain(|k| self.live(k).is_some());
        keys.sort_by_key(|k| self.grants[k].serial);
        let mut out = Vec::new();
        for k in keys {
            let g = self.grants.remove(&k).unwrap();
            let grant = self.grant(k, &g);
            self.events.push(Event::Revoked {
                grant,
                reason: RevokeReason::Requested,
            });
            out.push(grant);
        }
        out
    }
}

fn when() -> impl Strategy<Value = When> {
    prop_oneof![
        1 => Just(When::Default),
        1 => (-2_000i64..=0).prop_map(When::After),
        4 => (1i64..120_000).prop_map(When::After),
        2 => (1i64..(40 * 86_400_000)).prop_map(When::After),
        2 => (-5_000i64..(35 * 86_400_000)).prop_map(When::At),
    ]
}

fn level() -> impl Strategy<Value = Level> {
    prop_oneof![Just(Level::Read), Just(Level::Edit)]
}

fn op() -> impl Strategy<Value = Op> {
    let u = 0..USERS;
    let e = 0..ENTITIES;
    let c = 0..CONTEXTS;
    prop_oneof![
        8 => (u.clone(), e.clone(), c.clone(), level(), when()).prop_map(|(u, e, c, l, w)| Op::Share(u, e, c, l, w)),
        2 => (u.clone(), e.clone(), c.clone(), when(), any::<bool>()).prop_map(|(u, e, c, w, s)| Op::SetExpiry(u, e, c, w, s)),
        2 => (u.clone(), e.clone(), c.clone(), -200_000i64..(3 * 86_400_000), any::<bool>()).prop_map(|(u, e, c, b, s)| Op::Extend(u, e, c, b, s)),
        2 => (u.clone(), e.clone(), c.clone(), any::<bool>()).prop_map(|(u, e, c, s)| Op::Revoke(u, e, c, s)),
        1 => (u.clone(), e.clone(), c.clone()).prop_map(|(u, e, c)| Op::RevokeContext(u, e, c)),
        1 => (u.clone(), e.clone()).prop_map(|(u, e)| Op::RevokePair(u, e)),
        1 => u.clone().prop_map(Op::RevokeUser),
        1 => e.clone().prop_map(Op::RevokeEntity),
        1 => c.clone().prop_map(Op::RevokeFromContext),
        8 => (prop_oneof![
                6 => 0i64..5_000,
                3 => 0i64..(2 * 86_400_000),
                1 => YEAR_MS..(5 * YEAR_MS),
                2 => -(3 * 86_400_000i64)..0,
             ], any::<bool>()).prop_map(|(d, a)| Op::Clock(d, a)),
        4 => (0usize..8, any::<bool>(), -1i64..=1, any::<bool>()).prop_map(|(n, w, d, a)| Op::ClockToEdge(n, w, d, a)),
        2 => Just(Op::Restart),
    ]
}

fn settings() -> impl Strategy<Value = Settings> {
    (
        prop_oneof![Just(1u64), Just(1000), Just(60_000)],
        prop_oneof![
            Just(&[][..]),
            Just(&[10_000u64][..]),
            Just(&[3_600_000u64, 10_000][..])
        ],
        prop_oneof![
            Just(RepeatShare::Replace),
            Just(RepeatShare::KeepLater),
            Just(RepeatShare::Reject)
        ],
        prop_oneof![Just(OverMax::Reject), Just(OverMax::Clamp)],
    )
        .prop_map(|(tick_ms, warnings, repeat, over)| Settings {
            tick_ms,
            warnings,
            repeat,
            over,
        })
}

fn id_for(model: &Model, k: (usize, usize, usize), stale: bool) -> GrantId {
    let serial = match model.grants.get(&k) {
        Some(g) if !stale => g.serial,
        Some(g) => g.serial + 1000,
        None => 999_999,
    };
    GrantId {
        user: user(k.0),
        entity: entity(k.1),
        context: context(k.2),
        serial,
    }
}

/// What the model expects of a refusal: the rejected field, or the kind.
trait Why: std::fmt::Debug {
    fn why(&self) -> &'static str;
}

impl Why for ShareError {
    fn why(&self) -> &'static str {
        match self {
            ShareError::Invalid(a) => a.field(),
            ShareError::AlreadyShared { .. } => "already",
            e => panic!("unexpected error {e:?}"),
        }
    }
}

impl Why for ChangeError {
    fn why(&self) -> &'static str {
        match self {
            ChangeError::Invalid(a) => a.field(),
            ChangeError::NotLive(_) => "notlive",
            e => panic!("unexpected error {e:?}"),
        }
    }
}

impl Why for RevokeError {
    fn why(&self) -> &'static str {
        match self {
            RevokeError::NotLive(_) => "notlive",
            e => panic!("unexpected error {e:?}"),
        }
    }
}

fn field_of<T: std::fmt::Debug, E: Why>(r: &Result<T, E>) -> Option<&'static str> {
    r.as_ref().err().map(Why::why)
}

/// Set both clocks to `to` (at least 0); with `advance`, reclaim in both and
/// compare how many expired.
fn set_clock(
    m: &mut Model,
    clock: &ManualClock,
    engine: &Engine,
    to: i64,
    advance: bool,
) -> Result<(), TestCaseError> {
    m.clock = to.max(0);
    clock.set(Utc.timestamp_millis_opt(m.clock).unwrap());
    m.now = m.now.max(m.clock as u64);
    if advance {
        let before = m.grants.len();
        m.advance();
        let expired = before - m.grants.len();
        prop_assert_eq!(engine.advance(), expired);
    }
    Ok(())
}

fn run(
    settings: Settings,
    backing: Backing,
    start: i64,
    ops: Vec<Op>,
) -> Result<(), TestCaseError> {
    let clock = ManualClock::new(Utc.timestamp_millis_opt(start).unwrap());
    #[cfg(feature = "sqlite")]
    let dir = tempfile::tempdir().unwrap();
    let memory = MemoryStore::new();
    let build = || {
        let b = Engine::builder();
        let b = match backing {
            Backing::Nothing => b,
            Backing::Memory => b.store(memory.clone()),
            // Crash durability is not what this test is about.
            #[cfg(feature = "sqlite")]
            Backing::Sqlite => b.store(
                SqliteStore::open_with(dir.path().join("model.db"), Synchronous::Normal).unwrap(),
            ),
        };
        b.clock(clock.clone())
            .default_duration(Duration::milliseconds(DEFAULT_MS as i64))
            .max_duration(Duration::milliseconds(MAX_MS as i64), settings.over)
            .repeat_share(settings.repeat)
            .tick(Duration::milliseconds(settings.tick_ms as i64))
            .warn_before(
                settings
                    .warnings
                    .iter()
                    .map(|w| Duration::milliseconds(*w as i64)),
            )
            .build()
            .unwrap()
    };
    let mut engine = build();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    engine.subscribe(move |e: &Event| sink.lock().unwrap().push(e.clone()));
    let mut m = Model {
        s: settings,
        clock: start,
        now: start as u64,
        next_serial: 1,
        grants: BTreeMap::new(),
        events: Vec::new(),
    };
    for (step, op) in ops.into_iter().enumerate() {
        let now_ms = m.now as i64;
        match &op {
            Op::Clock(..) | Op::ClockToEdge(..) | Op::Restart => {}
            _ => m.advance(),
        }
        match op {
            Op::Share(u, e, c, level, w) => {
                let expiry = match w {
                    When::Default => Expiry::Default,
                    When::After(d) => Expiry::After(Duration::milliseconds(d)),
                    When::At(t) => Expiry::At(ms((now_ms + t).max(0) as u64)),
                };
                let w = match w {
                    When::At(t) => When::At(now_ms + t),
                    w => w,
                };
                let got = engine.share(user(u), entity(e), context(c), level, expiry);
                let want = m.share((u, e, c), level, &w);
                match want {
                    Ok(g) => prop_assert_eq!(got.unwrap(), g),
                    Err(f) => prop_assert_eq!(field_of(&got), Some(f)),
                }
            }
            Op::SetExpiry(u, e, c, w, stale) => {
                let id = id_for(&m, (u, e, c), stale);
                let expiry = match w {
                    When::Default => Expiry::Default,
                    When::After(d) => Expiry::After(Duration::milliseconds(d)),
                    When::At(t) => Expiry::At(ms((now_ms + t).max(0) as u64)),
                };
                let w = match w {
                    When::At(t) => When::At(now_ms + t),
                    w => w,
                };
                let got = engine.set_expiry(&id, expiry);
                let live = m.live(&(u, e, c)).filter(|g| g.serial == id.serial);
                match live {
                    None => prop_assert_eq!(field_of(&got), Some("notlive")),
                    Some(_) => match m.resolve(&w) {
                        Err(f) => prop_assert_eq!(field_of(&got), Some(f)),
                        Ok(exp) => prop_assert_eq!(got.unwrap(), m.change((u, e, c), exp)),
                    },
                }
            }
            Op::Extend(u, e, c, by, stale) => {
                let id = id_for(&m, (u, e, c), stale);
                let got = engine.extend(&id, Duration::milliseconds(by));
                match m.live(&(u, e, c)).filter(|g| g.serial == id.serial) {
                    None => prop_assert_eq!(field_of(&got), Some("notlive")),
                    Some(g) => {
                        let target = g.expires as i64 + by;
                        if target <= m.now as i64 {
                            prop_assert_eq!(field_of(&got), Some("by"));
                        } else {
                            match m.expiry_after("by", target as u64 - m.now) {
                                Err(f) => prop_assert_eq!(field_of(&got), Some(f)),
                                Ok(exp) => prop_assert_eq!(got.unwrap(), m.change((u, e, c), exp)),
                            }
                        }
                    }
                }
            }
            Op::Revoke(u, e, c, stale) => {
                let id = id_for(&m, (u, e, c), stale);
                let got = engine.revoke(&id);
                match m.live(&(u, e, c)).filter(|g| g.serial == id.serial) {
                    None => prop_assert_eq!(field_of(&got), Some("notlive")),
                    Some(_) => prop_assert_eq!(vec![got.unwrap()], m.revoke_keys(vec![(u, e, c)])),
                }
            }
            Op::RevokeContext(u, e, c) => {
                let got = engine
                    .revoke_context(&user(u), &entity(e), &context(c))
                    .unwrap();
                prop_assert_eq!(
                    got.into_iter().collect::<Vec<_>>(),
                    m.revoke_keys(vec![(u, e, c)])
                );
            }
            Op::RevokePair(u, e) => {
                let got = engine.revoke_pair(&user(u), &entity(e)).unwrap();
                let keys = m
                    .grants
                    .keys()
                    .filter(|k| k.0 == u && k.1 == e)
                    .copied()
                    .collect();
                prop_assert_eq!(got, m.revoke_keys(keys));
            }
            Op::RevokeUser(u) => {
                let got = engine.revoke_user(&user(u)).unwrap();
                let keys = m.grants.keys().filter(|k| k.0 == u).copied().collect();
                prop_assert_eq!(got, m.revoke_keys(keys));
            }
            Op::RevokeEntity(e) => {
                let got = engine.revoke_entity(&entity(e)).unwrap();
                let keys = m.grants.keys().filter(|k| k.1 == e).copied().collect();
                prop_assert_eq!(got, m.revoke_keys(keys));
            }
            Op::RevokeFromContext(c) => {
                let got = engine.revoke_from_context(&context(c)).unwrap();
                let keys = m.grants.keys().filter(|k| k.2 == c).copied().collect();
                prop_assert_eq!(got, m.revoke_keys(keys));
            }
            Op::ClockToEdge(n, warning, delta, advance) => {
                let target = m.grants.values().nth(n % m.grants.len().max(1)).map(|g| {
                    let base = if warning {
                        g.expires
                            .saturating_sub(settings.warnings.first().copied().unwrap_or(0))
                    } else {
                        g.expires
                    };
                    base as i64 + delta
                });
                let to = target.unwrap_or(m.clock);
                set_clock(&mut m, &clock, &engine, to, advance)?;
            }
            Op::Clock(by, advance) => {
                let to = m.clock.saturating_add(by);
                set_clock(&mut m, &clock, &engine, to, advance)?;
            }
            Op::Restart => {
                if matches!(backing, Backing::Nothing) {
                    continue;
                }
                drop(engine);
                engine = build();
                let sink = seen.clone();
                engine.subscribe(move |e: &Event| sink.lock().unwrap().push(e.clone()));
                // Grants past their expiry are dropped on load, silently;
                // the others are scheduled afresh (warnings already due
                // are skipped).
                let now = m.now;
                m.grants.retain(|_, g| g.expires > now);
                let stages: Vec<_> = m
                    .grants
                    .iter()
                    .map(|(k, g)| (*k, m.next_timer(g.expires).0))
                    .collect();
                for (k, stage) in stages {
                    m.grants.get_mut(&k).unwrap().stage = stage;
                }
            }
        }
        // Every pair answers as the model does.
        for u in 0..USERS {
            for e in 0..ENTITIES {
                let live: Vec<MGrant> = (0..CONTEXTS).filter_map(|c| m.live(&(u, e, c))).collect();
                let read = live.iter().map(|g| g.expires).max();
                let edit = live
                    .iter()
                    .filter(|g| g.level == Level::Edit)
                    .map(|g| g.expires)
                    .max();
                let (uu, ee) = (user(u), entity(e));
                prop_assert_eq!(
                    engine.can_read(&uu, &ee),
                    read.is_some(),
                    "step {} read {:?}",
                    step,
                    (u, e)
                );
                prop_assert_eq!(
                    engine.can_edit(&uu, &ee),
                    edit.is_some(),
                    "step {} edit {:?}",
                    step,
                    (u, e)
                );
                let access = engine
                    .access(&uu, &ee)
                    .map(|a| (a.level, a.until, a.read_until));
                let want = match (edit, read) {
                    (Some(ed), Some(r)) => Some((Level::Edit, ms(ed), ms(r))),
                    (None, Some(r)) => Some((Level::Read, ms(r), ms(r))),
                    _ => None,
                };
                prop_assert_eq!(access, want);
            }
        }
        prop_assert_eq!(engine.now(), ms(m.now));
        if let Err(broken) = engine.check_invariants() {
            return Err(TestCaseError::fail(format!("step {step}: {broken}")));
        }
        let got: Vec<Event> = std::mem::take(&mut *seen.lock().unwrap());
        let want = std::mem::take(&mut m.events);
        prop_assert_eq!(got, want, "events differ at step {}", step);
    }
    // The listings agree with the model at the end.
    let mut want: Vec<Grant> = m
        .grants
        .iter()
        .filter(|(k, _)| m.live(k).is_some())
        .map(|(k, g)| m.grant(*k, g))
        .collect();
    want.sort_by_key(|g| (g.expires_at, g.id.serial));
    let mut got = Vec::new();
    for u in 0..USERS {
        got.extend(engine.grants_of(&user(u)));
    }
    got.sort_by_key(|g| (g.expires_at, g.id.serial));
    // grants_of may have reclaimed (and so raised events for) grants due by now.
    m.advance();
    want.retain(|g| m.grants.values().any(|x| x.serial == g.id.serial));
    prop_assert_eq!(got, want);
    Ok(())
}

fn cases() -> u32 {
    std::env::var("GRANTWHEEL_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

fn steps() -> usize {
    std::env::var("GRANTWHEEL_MODEL_STEPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), max_shrink_iters: 20_000, ..ProptestConfig::default() })]
    #[test]
    fn engine_matches_model(
        settings in settings(),
        backing in proptest::sample::select(BACKINGS),
        start in 1_700_000_000_000i64..1_800_000_000_000,
        ops in proptest::collection::vec(op(), 1..steps()),
    ) {
        run(settings, backing, start, ops)?;
    }
}
