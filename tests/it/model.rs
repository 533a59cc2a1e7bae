//! The engine against a plain model: a `BTreeMap` of grants and a clock.
//!
//! Every step applies one operation to both; after every step each (user,
//! entity) pair must answer exactly as the model does, and the events the
//! engine delivered must be exactly the model's.
//!
//! Shares may start later: a scheduled grant answers no until the wheel
//! reaches its start (it can be moved, extended and revoked before then),
//! and a restart starts those whose start passed while it was down.
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
    RevokeError, RevokeReason, ShareError, ShareSpec, Start,
};
use proptest::prelude::*;

const USERS: usize = 3;
const ENTITIES: usize = 3;
const CONTEXTS: usize = 3;
const DEFAULT_MS: u64 = 7 * 86_400_000;
const MAX_MS: u64 = 30 * 86_400_000;
const YEAR_MS: i64 = 365 * 86_400_000;

use crate::common::{context, entity, user};

fn ms(t: u64) -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp_millis(t as i64).unwrap()
}

#[derive(Clone, Debug)]
enum When {
    Default,
    After(i64),
    At(i64),
}

/// A share's start: now, after a delay (negative: refused), or at an
/// instant relative to now (in the past: now).
#[derive(Clone, Debug)]
enum Begin {
    Now,
    After(i64),
    At(i64),
}

/// Which instant of a grant `ClockToEdge` aims at.
#[derive(Clone, Copy, Debug)]
enum Edge {
    Expiry,
    Warning,
    Start,
}

#[derive(Clone, Debug)]
enum Op {
    Share(usize, usize, usize, Level, When, Begin),
    /// Move a scheduled grant (maybe through a stale id).
    SetStart(usize, usize, usize, Begin, bool),
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
    /// Set the clock to the n-th grant's expiry (or warning, or start)
    /// plus -1, 0 or 1 ms, and maybe call advance: the edges.
    ClockToEdge(usize, Edge, i64, bool),
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
    /// The start it was made with, if it was made to start later.
    start: Option<u64>,
    /// Whether checks see it: false until the wheel reaches its start.
    shown: bool,
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
            starts_at: g.start.map(ms),
        }
    }

    /// A grant's start while it is still ahead of now.
    fn waiting(&self, g: &MGrant) -> Option<u64> {
        g.start.filter(|s| !g.shown && *s > self.now)
    }

    /// After a change to a scheduled grant: started if its start has
    /// passed. Returns whether it started just now.
    fn settle(&mut self, k: (usize, usize, usize)) -> bool {
        let now = self.now;
        let g = self.grants.get_mut(&k).unwrap();
        let started = !g.shown && g.start.is_none_or(|s| s <= now);
        g.shown |= started;
        self.rearm(k);
        started
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
            if !g.shown {
                let start = g.start.unwrap();
                if self.tick_of(start) > now_tick {
                    continue;
                }
                if g.expires > self.now {
                    let stage = self.next_timer(g.expires).0;
                    let m = self.grants.get_mut(&k).unwrap();
                    m.shown = true;
                    m.stage = stage;
                    timed.push((start, g.serial, Event::Started(self.grant(k, &g))));
                    continue;
                }
                // Its start and end both passed while the wheel lagged.
                timed.push((g.expires, g.serial, Event::Expired(self.grant(k, &g))));
                self.grants.remove(&k);
                continue;
            }
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

    fn expiry_after(
        &self,
        from: u64,
        field: &'static str,
        mut d: u64,
    ) -> Result<u64, &'static str> {
        if d > MAX_MS {
            match self.s.over {
                OverMax::Clamp => d = MAX_MS,
                OverMax::Reject => return Err(field),
            }
        }
        Ok(from + d)
    }

    /// The expiry of a window beginning at `from`.
    fn resolve(&self, from: u64, when: &When) -> Result<u64, &'static str> {
        match when {
            When::Default => self.expiry_after(from, "duration", DEFAULT_MS),
            When::After(d) if *d <= 0 => Err("duration"),
            When::After(d) => self.expiry_after(from, "duration", *d as u64),
            When::At(t) => {
                let t = u64::try_from(*t).unwrap_or(0);
                if t <= from {
                    Err("expires_at")
                } else {
                    self.expiry_after(from, "expires_at", t - from)
                }
            }
        }
    }

    /// The start a share asks for (`None`: now); `Begin::At` is absolute.
    fn start_at(&self, begin: &Begin) -> Result<Option<u64>, &'static str> {
        let at = match begin {
            Begin::Now => self.now,
            Begin::After(d) if *d < 0 => return Err("starts_in"),
            Begin::After(d) => self.now + *d as u64,
            Begin::At(t) => u64::try_from(*t).unwrap_or(0),
        };
        Ok((at > self.now).then_some(at))
    }

    fn live(&self, k: &(usize, usize, usize)) -> Option<MGrant> {
        self.grants.get(k).copied().filter(|g| g.expires > self.now)
    }

    /// `set_start`: move a scheduled grant to `begins`, keeping its length.
    fn set_start(&mut self, k: (usize, usize, usize), begins: u64, old_start: u64) -> Grant {
        let old = self.grants[&k];
        let g = self.grants.get_mut(&k).unwrap();
        g.start = Some(begins);
        g.expires = begins + (old.expires - old_start);
        let started = self.settle(k);
        let g = self.grants[&k];
        let grant = self.grant(k, &g);
        self.events.push(Event::ExpiryChanged {
            grant,
            previous_expiry: ms(old.expires),
        });
        if started {
            self.events.push(Event::Started(grant));
        }
        grant
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
        begin: &Begin,
    ) -> Result<Grant, &'static str> {
        let start = self.start_at(begin)?;
        let expires = self.resolve(start.unwrap_or(self.now), when)?;
        if let Some(old) = self.grants.get(&k).copied() {
            if old.expires <= self.now {
                self.events.push(Event::Expired(self.grant(k, &old)));
                self.grants.remove(&k);
            } else {
                match self.s.repeat {
                    RepeatShare::Reject => return Err("already"),
                    RepeatShare::KeepLater => {
                        let (e, l) = (old.expires.max(expires), old.level.max(level));
                        // A scheduled grant moves to the earlier start.
                        let waiting = self.waiting(&old);
                        let now = self.now;
                        let earlier = waiting
                            .map(|o| start.unwrap_or(now).min(o))
                            .filter(|a| Some(*a) != waiting);
                        if (e, l) != (old.expires, old.level) || earlier.is_some() {
                            let g = self.grants.get_mut(&k).unwrap();
                            g.expires = e;
                            g.level = l;
                            if earlier.is_some() {
                                g.start = earlier;
                            }
                            let started = self.settle(k);
                            let g = self.grants[&k];
                            self.events.push(Event::ExpiryChanged {
                                grant: self.grant(k, &g),
                                previous_expiry: ms(old.expires),
                            });
                            if started {
                                self.events.push(Event::Started(self.grant(k, &g)));
                            }
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
            start,
            shown: start.is_none(),
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
            let started = self.settle(k);
            let g = self.grants[&k];
            self.events.push(Event::ExpiryChanged {
                grant: self.grant(k, &g),
                previous_expiry: ms(old.expires),
            });
            if started {
                self.events.push(Event::Started(self.grant(k, &g)));
            }
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

fn begin() -> impl Strategy<Value = Begin> {
    prop_oneof![
        5 => Just(Begin::Now),
        1 => (-1_000i64..=0).prop_map(Begin::After),
        3 => (1i64..120_000).prop_map(Begin::After),
        1 => (1i64..(3 * 86_400_000)).prop_map(Begin::After),
        2 => (-5_000i64..200_000).prop_map(Begin::At),
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
        8 => (u.clone(), e.clone(), c.clone(), level(), when(), begin()).prop_map(|(u, e, c, l, w, b)| Op::Share(u, e, c, l, w, b)),
        2 => (u.clone(), e.clone(), c.clone(), begin(), any::<bool>()).prop_map(|(u, e, c, b, s)| Op::SetStart(u, e, c, b, s)),
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
        4 => (0usize..8, prop_oneof![Just(Edge::Expiry), Just(Edge::Warning), Just(Edge::Start)], -1i64..=1, any::<bool>()).prop_map(|(n, w, d, a)| Op::ClockToEdge(n, w, d, a)),
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
            Op::Share(u, e, c, level, w, b) => {
                let expiry = match w {
                    When::Default => Expiry::Default,
                    When::After(d) => Expiry::After(Duration::milliseconds(d)),
                    When::At(t) => Expiry::At(ms((now_ms + t).max(0) as u64)),
                };
                let w = match w {
                    When::At(t) => When::At(now_ms + t),
                    w => w,
                };
                let (start, b) = start_of(b, now_ms);
                let got = if matches!(start, Start::Now) {
                    engine.share(user(u), entity(e), context(c), level, expiry)
                } else {
                    engine.share_spec(
                        ShareSpec::new(user(u), entity(e), level)
                            .context(context(c))
                            .expiry(expiry)
                            .start(start),
                    )
                };
                let want = m.share((u, e, c), level, &w, &b);
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
                    Some(g) => match m.resolve(m.waiting(&g).unwrap_or(m.now), &w) {
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
                        let from = m.waiting(&g).unwrap_or(m.now);
                        if target <= from as i64 {
                            prop_assert_eq!(field_of(&got), Some("by"));
                        } else {
                            match m.expiry_after(from, "by", target as u64 - from) {
                                Err(f) => prop_assert_eq!(field_of(&got), Some(f)),
                                Ok(exp) => prop_assert_eq!(got.unwrap(), m.change((u, e, c), exp)),
                            }
                        }
                    }
                }
            }
            Op::SetStart(u, e, c, b, stale) => {
                let id = id_for(&m, (u, e, c), stale);
                let (start, b) = start_of(b, now_ms);
                let got = engine.set_start(&id, start);
                match m.live(&(u, e, c)).filter(|g| g.serial == id.serial) {
                    None => prop_assert_eq!(field_of(&got), Some("notlive")),
                    Some(g) => match m.waiting(&g) {
                        None => prop_assert_eq!(field_of(&got), Some("starts_at")),
                        Some(old_start) => match m.start_at(&b) {
                            Err(f) => prop_assert_eq!(field_of(&got), Some(f)),
                            Ok(at) => {
                                let begins = at.unwrap_or(m.now);
                                prop_assert_eq!(
                                    got.unwrap(),
                                    m.set_start((u, e, c), begins, old_start)
                                );
                            }
                        },
                    },
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
                    .revoke_via(&user(u), &entity(e), &context(c))
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
                let got = engine.revoke_all_via(&context(c)).unwrap();
                let keys = m.grants.keys().filter(|k| k.2 == c).copied().collect();
                prop_assert_eq!(got, m.revoke_keys(keys));
            }
            Op::ClockToEdge(n, edge, delta, advance) => {
                let target = m.grants.values().nth(n % m.grants.len().max(1)).map(|g| {
                    let base = match edge {
                        Edge::Warning => g
                            .expires
                            .saturating_sub(settings.warnings.first().copied().unwrap_or(0)),
                        Edge::Start => g.start.unwrap_or(g.expires),
                        Edge::Expiry => g.expires,
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
                // are skipped), and those whose start passed start,
                // silently too.
                let now = m.now;
                m.grants.retain(|_, g| g.expires > now);
                for g in m.grants.values_mut() {
                    g.shown |= g.start.is_none_or(|s| s <= now);
                }
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
                let live: Vec<MGrant> = (0..CONTEXTS)
                    .filter_map(|c| m.live(&(u, e, c)))
                    .filter(|g| g.shown)
                    .collect();
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
    // The listings agree with the model at the end (a listing reclaims
    // what is due first): the grants checks see apart from those they do
    // not see yet (a start that passed waits for its tick).
    m.advance();
    for scheduled in [false, true] {
        let mut want: Vec<Grant> = m
            .grants
            .iter()
            .filter(|(k, g)| m.live(k).is_some() && g.shown != scheduled)
            .map(|(k, g)| m.grant(*k, g))
            .collect();
        want.sort_by_key(|g| (g.expires_at, g.id.serial));
        let mut got = Vec::new();
        for u in 0..USERS {
            got.extend(if scheduled {
                engine.scheduled_of(&user(u))
            } else {
                engine.user_grants(&user(u))
            });
        }
        got.sort_by_key(|g| (g.expires_at, g.id.serial));
        prop_assert_eq!(got, want, "scheduled: {}", scheduled);
    }
    Ok(())
}

/// The engine's start for `b` (relative instants made absolute) and the
/// model's.
fn start_of(b: Begin, now_ms: i64) -> (Start, Begin) {
    match b {
        Begin::Now => (Start::Now, Begin::Now),
        Begin::After(d) => (Start::After(Duration::milliseconds(d)), Begin::After(d)),
        Begin::At(t) => {
            let at = (now_ms + t).max(0);
            (Start::At(ms(at as u64)), Begin::At(at))
        }
    }
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
