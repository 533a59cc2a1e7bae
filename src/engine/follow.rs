//! Following a shared store's feed: other engines' batches applied to this
//! engine's index, the follower thread, and failing closed when behind.
//!
//! # Ground rules
//!
//! - **Position**: `State::feed` is the last feed entry the state
//!   includes. Entries are applied in order, each once, under the state
//!   lock: by the follower thread between writes, and by the writer under
//!   the feed lock before it decides (so every decision sees every write
//!   committed before it).
//! - **Idempotent**: loading may see entries after its position; applying
//!   them again converges (a put replaces by context, an end removes by
//!   serial).
//! - **Fail closed**: `Inner::fresh_until` is `u64::MAX` while checks may
//!   say yes and 0 while they may not. It is set after each complete
//!   catch-up, and cleared by a watchdog thread once `max_staleness` of
//!   real (monotonic) time has passed since the start of the last one, or
//!   while the engine's clock is too far from the store's. Checks load it
//!   beside the probe, so a cut-off engine says no for every pair until it
//!   has caught up. Staleness is real time, not the engine's clock: a
//!   clock that jumps does not make an engine stale, and a frozen one does
//!   not keep it fresh.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use parking_lot::Mutex;

use crate::clock::{from_millis, to_millis};
use crate::index::{IndexReader, PairKey};
use crate::model::grant::Grant;
use crate::store::{Change, FeedEntry, FeedRead, Follower, StoreError};

use super::config::FollowSettings;
use super::record::{MAX_GRANTS, MAX_SERIAL};
use super::state::{RuleUpdate, State};
use super::{Engine, Inner};

/// Where an engine over a shared store stands with the feed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FeedStatus {
    /// The last feed entry this engine has applied.
    pub position: u64,
    /// Whether checks may say yes: caught up within the staleness limit,
    /// with a clock close enough to the store's.
    pub fresh: bool,
    /// When the last complete catch-up started (engine time).
    pub caught_up_at: Option<DateTime<Utc>>,
    /// This host's clock minus the store's, as last measured (ms).
    pub skew_ms: Option<i64>,
    /// Why the engine is not fresh, or the last failure while following.
    pub problem: Option<String>,
    /// Snapshots taken to resync (the feed had been trimmed past this
    /// engine's position).
    pub resyncs: u64,
    /// The feed's newest position when this engine last looked (`None`
    /// before it has): `head - position` is how many changes it is behind.
    pub head: Option<u64>,
    /// The clock skew worth a warning, and the skew past which checks say
    /// no (`EngineBuilder::clock_skew`), in ms.
    pub skew_limits_ms: (u64, u64),
    /// Whether this engine raises expiry and expiring-soon events: always
    /// with [`ExpiryEvents::Everywhere`](crate::ExpiryEvents::Everywhere);
    /// with `Leased`, while it holds the lease.
    pub expiry_events: bool,
}

/// The follower's shared record, read by [`Engine::feed_status`].
#[derive(Debug, Default)]
pub(super) struct FeedHealth {
    pub(super) caught_up_at: Option<u64>,
    /// When the engine goes stale unless it catches up again.
    pub(super) deadline: Option<Instant>,
    pub(super) skew_ms: Option<i64>,
    pub(super) skew_bad: bool,
    pub(super) problem: Option<String>,
    pub(super) resyncs: u64,
    pub(super) head: Option<u64>,
    /// With leased expiry events: whether this engine holds the lease.
    pub(super) leased: bool,
}

impl State {
    /// Apply one feed entry of another engine (or one this engine wrote
    /// and did not hear back about). Returns `false` if the entry does not
    /// follow the state's position.
    pub(super) fn apply_entry(
        &mut self,
        reader: &IndexReader,
        entry: &FeedEntry,
        now: u64,
    ) -> bool {
        if entry.position <= self.feed {
            return true;
        }
        if entry.position != self.feed + 1 {
            return false;
        }
        for change in &entry.changes {
            match change {
                Change::Put(g) => self.put_followed(reader, g, now),
                Change::End { grant, .. } => self.end_followed(reader, grant),
                // For the request layer's rule set.
                Change::Rule { .. } | Change::RemoveRule(_) => self.note_rule(change),
                // History lives in the store; no memory to update.
                Change::EndedBy { .. } | Change::Record(_) | Change::Forget(_) => {}
            }
        }
        self.seq = self.seq.max(entry.seq);
        self.next_serial = self.next_serial.max(entry.next_serial);
        self.feed = entry.position;
        true
    }

    /// Insert or replace a grant another engine wrote: the put's grant
    /// replaces whatever holds its (user, entity, context).
    fn put_followed(&mut self, reader: &IndexReader, grant: &Grant, now: u64) {
        let expires = to_millis(grant.expires_at);
        let key = PairKey::new(&grant.id.user, &grant.id.entity);
        let hash = self.index.hash(&key);
        let ctx = grant.id.context.pack();
        let found = self.index.find(&key, hash);
        let start = grant.starts_at.map(to_millis);
        if let Some(old) = found.and_then(|loc| self.find_context(loc, ctx)) {
            if self.grants[old].serial() == grant.id.serial && expires > now {
                if start.is_none() {
                    // Its start was confirmed by the writer (INV-9): held
                    // here no more.
                    self.starts.remove(&grant.id.serial);
                }
                // A follower raises no events: the writer did.
                let _started = self.change_window(old, start, expires, grant.level, now);
                return;
            }
            self.detach(reader, old);
        }
        self.next_serial = self.next_serial.max(grant.id.serial + 1);
        if expires <= now || self.grants.held() >= MAX_GRANTS || grant.id.serial >= MAX_SERIAL {
            // Past its expiry here already, or beyond this engine's limits
            // (refused by the writer's own engine too): no access.
            return;
        }
        let rec = self.record(expires, grant.id.serial, ctx, grant.level);
        self.place(reader, (&key, hash), rec, start, now);
    }

    /// Remove a grant another engine ended (a no-op if it is not held).
    fn end_followed(&mut self, reader: &IndexReader, id: &crate::ids::GrantId) {
        let key = PairKey::new(&id.user, &id.entity);
        let Some(loc) = self.index.find(&key, self.index.hash(&key)) else {
            return;
        };
        if let Some(g) = self.find_context(loc, id.context.pack()) {
            if self.grants[g].serial() == id.serial {
                self.detach(reader, g);
            }
        }
    }

    /// Replace the state with a snapshot at `position`: grants not in it
    /// go, the others are put (checks never see a grant of both missing
    /// for a moment).
    pub(super) fn resync(
        &mut self,
        reader: &IndexReader,
        grants: Vec<Grant>,
        position: u64,
        now: u64,
    ) {
        let keep: hashbrown::HashSet<u64> = grants.iter().map(|g| g.id.serial).collect();
        let mut gone = Vec::new();
        for (loc, _, _) in self.index.pairs() {
            for g in self.pair_grants(loc) {
                if !keep.contains(&self.grants[g].serial()) {
                    gone.push(self.grant(g).id);
                }
            }
        }
        for id in &gone {
            self.end_followed(reader, id);
        }
        for g in &grants {
            self.put_followed(reader, g, now);
        }
        self.feed = position;
    }
}

impl Engine {
    /// Whether checks may say yes now: `now` if so, else a time past every
    /// expiry (so every compare says no).
    #[inline]
    pub(super) fn check_now(&self) -> u64 {
        let now = self.now_ms();
        if now < self.inner.fresh_until.load(Ordering::Relaxed) {
            now
        } else {
            u64::MAX
        }
    }

    /// A catch-up that started at engine time `started` (and real time
    /// `began`) is complete.
    pub(super) fn caught_up(&self, started: u64, began: Instant) {
        let Some(follow) = &self.inner.follow else {
            return;
        };
        let mut health = follow.health.lock();
        health.caught_up_at = Some(health.caught_up_at.map_or(started, |t| t.max(started)));
        let deadline = began + follow.settings.max_staleness;
        health.deadline = Some(health.deadline.map_or(deadline, |d| d.max(deadline)));
        if !health.skew_bad && Instant::now() < deadline {
            self.inner.fresh_until.store(u64::MAX, Ordering::Relaxed);
        }
    }

    /// Where this engine stands with its shared store's feed; `None` for
    /// an engine whose store is its own (or that has none).
    pub fn feed_status(&self) -> Option<FeedStatus> {
        let follow = self.inner.follow.as_ref()?;
        let position = self.inner.state.lock().feed;
        let health = follow.health.lock();
        let fresh = self.check_now() != u64::MAX;
        let problem = match (&health.problem, fresh, health.skew_bad) {
            (_, _, true) => Some(format!(
                "the clock is {} ms from the store's (limit {} ms): checks say no until it is back within",
                health.skew_ms.unwrap_or(0),
                follow.settings.skew_fail.as_millis()
            )),
            (Some(p), false, _) => Some(format!(
                "not caught up with the feed for more than {} ms: checks say no ({p})",
                follow.settings.max_staleness.as_millis()
            )),
            (None, false, _) => Some(format!(
                "not caught up with the feed for more than {} ms: checks say no",
                follow.settings.max_staleness.as_millis()
            )),
            (p, true, false) => p.clone(),
        };
        Some(FeedStatus {
            position,
            fresh,
            caught_up_at: health.caught_up_at.map(from_millis),
            skew_ms: health.skew_ms,
            problem,
            resyncs: health.resyncs,
            head: health.head.map(|h| h.max(position)),
            skew_limits_ms: (
                follow.settings.skew_warn.as_millis() as u64,
                follow.settings.skew_fail.as_millis() as u64,
            ),
            expiry_events: !follow.settings.leased_events || health.leased,
        })
    }

    /// Read and apply the feed until up to date. Returns how many entries
    /// were applied.
    fn catch_up_with(&self, follower: &mut dyn Follower) -> Result<usize, StoreError> {
        const PAGE: usize = 10_000;
        let started = self.now_ms();
        let began = Instant::now();
        let mut applied = 0;
        // Read before the entries, so the head is never ahead of what the
        // catch-up then applies (a lag of 0 once caught up).
        if let (Some(follow), Some(head)) = (&self.inner.follow, follower.head()?) {
            let mut health = follow.health.lock();
            health.head = Some(health.head.map_or(head, |h| h.max(head)));
        }
        loop {
            let after = self.inner.state.lock().feed;
            match follower.read(after, PAGE)? {
                FeedRead::Entries(entries) => {
                    let n = entries.len();
                    let mut st = self.inner.state.lock();
                    let now = self.now_ms();
                    for entry in &entries {
                        if !st.apply_entry(&self.inner.reader, entry, now) {
                            // The writer moved the position meanwhile past
                            // what was read: read again from there.
                            break;
                        }
                    }
                    drop(st);
                    applied += n;
                    if n < PAGE {
                        self.caught_up(started, began);
                        return Ok(applied);
                    }
                }
                FeedRead::Behind { .. } => {
                    self.resync_from(follower)?;
                }
            }
        }
    }

    /// Start again from a snapshot (the feed was trimmed past this
    /// engine's position).
    fn resync_from(&self, follower: &mut dyn Follower) -> Result<(), StoreError> {
        let mut grants = Vec::new();
        let (position, rules) = follower.snapshot(&mut |g| grants.push(g))?;
        let mut st = self.inner.state.lock();
        if st.feed >= position {
            // The writer caught up past the snapshot meanwhile (under the
            // feed lock, from entries it found): nothing to repair.
            return Ok(());
        }
        let now = self.now_ms();
        st.resync(&self.inner.reader, grants, position, now);
        st.max_rule = st
            .max_rule
            .max(rules.iter().map(|(id, _)| id.0).max().unwrap_or(0));
        if let Some(updates) = &mut st.rule_updates {
            updates.push(RuleUpdate::All(rules));
        }
        drop(st);
        if let Some(follow) = &self.inner.follow {
            follow.health.lock().resyncs += 1;
        }
        Ok(())
    }

    /// Measure the clock against the store's and fail closed when it is
    /// too far off.
    fn check_skew(&self, follower: &mut dyn Follower) -> Result<(), StoreError> {
        let Some(follow) = &self.inner.follow else {
            return Ok(());
        };
        let before = self.inner.clock.now_millis();
        let server = to_millis(follower.server_time()?) as i64;
        let after = self.inner.clock.now_millis();
        // The server read its clock somewhere in the round trip: compare
        // with the middle of it.
        let local = before + (after - before) / 2;
        let skew = local - server;
        let bad = skew.unsigned_abs() > follow.settings.skew_fail.as_millis() as u64;
        let mut health = follow.health.lock();
        health.skew_ms = Some(skew);
        health.skew_bad = bad;
        if bad {
            self.inner.fresh_until.store(0, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// How often the clock is measured against the store's (and every round
/// while it is too far off).
const SKEW_EVERY: Duration = Duration::from_secs(60);
/// How often an engine tries to do the housekeeping (one at a time does
/// it).
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(30);
/// How long feed entries are kept: a follower away for longer resyncs
/// from a snapshot.
const KEEP_FEED: Duration = Duration::from_secs(15 * 60);

/// What the follower thread shares with the engine.
pub(super) struct Follow {
    pub(super) settings: FollowSettings,
    pub(super) health: Mutex<FeedHealth>,
}

/// Start following: catch up once before the engine serves (so a new
/// instance answers as the others do), then on a thread of its own.
pub(super) fn start(engine: &Engine, mut follower: Box<dyn Follower>) -> Result<(), StoreError> {
    // Rule changes are collected from the load on, for the request layer
    // that may come.
    engine
        .inner
        .state
        .lock()
        .rule_updates
        .get_or_insert_with(Vec::new);
    engine.check_skew(&mut *follower)?;
    engine.catch_up_with(&mut *follower)?;
    if engine.inner.cfg.follow.leased_events {
        engine.inner.hub.quiet_expiries(true);
        engine.take_lease(&mut *follower)?;
    }
    let weak = Arc::downgrade(&engine.inner);
    let watched = weak.clone();
    let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
        std::thread::Builder::new()
            .name(name.into())
            .spawn(f)
            .map(drop)
            .map_err(|e| StoreError::Io(format!("starting the feed follower: {e}")))
    };
    spawn(
        "grantwheel-follow",
        Box::new(move || follow_loop(weak, follower)),
    )?;
    spawn("grantwheel-stale", Box::new(move || watchdog(watched)))?;
    Ok(())
}

/// Clear the fresh word once the deadline of the last catch-up passes:
/// on a thread of its own, so a follower blocked on a dead connection
/// cannot keep the engine fresh. Ends when the engine is dropped.
fn watchdog(weak: Weak<Inner>) {
    const NAP: Duration = Duration::from_millis(20);
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let Some(follow) = &inner.follow else { return };
        let nap = {
            let health = follow.health.lock();
            let now = Instant::now();
            match health.deadline {
                Some(d) if now >= d => {
                    inner.fresh_until.store(0, Ordering::Relaxed);
                    NAP
                }
                Some(d) => (d - now).min(NAP),
                None => NAP,
            }
        };
        drop(inner);
        std::thread::sleep(nap);
    }
}

impl Engine {
    /// Take or keep the lease on expiry events, and raise them or not.
    fn take_lease(&self, follower: &mut dyn Follower) -> Result<(), StoreError> {
        let held = follower.hold_lease()?;
        if let Some(follow) = &self.inner.follow {
            follow.health.lock().leased = held;
        }
        self.inner.hub.quiet_expiries(!held);
        Ok(())
    }
}

/// Wait for a wake-up or the poll interval, catch up, repeat; reconnect
/// with backoff after a failure. Ends when the engine is dropped.
fn follow_loop(weak: Weak<Inner>, mut follower: Box<dyn Follower>) {
    let mut last_skew = Instant::now();
    let mut last_housekeeping: Option<Instant> = None;
    let mut backoff = Duration::from_millis(50);
    let mut connected = true;
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let engine = Engine { inner };
        let Some(follow) = &engine.inner.follow else {
            return;
        };
        let settings = follow.settings;
        let round = (|| {
            if !connected {
                follower.reconnect()?;
                connected = true;
            }
            engine.catch_up_with(&mut *follower)?;
            if settings.leased_events {
                engine.take_lease(&mut *follower)?;
            }
            let skew_bad = follow.health.lock().skew_bad;
            if skew_bad || last_skew.elapsed() >= SKEW_EVERY {
                engine.check_skew(&mut *follower)?;
                last_skew = Instant::now();
            }
            if last_housekeeping.is_none_or(|t| t.elapsed() >= HOUSEKEEPING_EVERY) {
                // Rows of grants expired a while ago by every clock within
                // the skew limit.
                let margin = chrono::Duration::from_std(settings.skew_fail * 2).unwrap_or_default();
                let before = engine.now() - margin;
                follower.housekeep(before, KEEP_FEED)?;
                last_housekeeping = Some(Instant::now());
            }
            Ok::<(), StoreError>(())
        })();
        // Outside every lock: rule changes found by this round (or by a
        // writer's catch-up) reach the request layer's rule set.
        engine.deliver_rules();
        match round {
            Ok(()) => {
                backoff = Duration::from_millis(50);
                follow.health.lock().problem = None;
            }
            Err(e) => {
                connected = false;
                let mut health = follow.health.lock();
                health.problem = Some(e.to_string());
                if settings.leased_events {
                    // The connection that held the lease is gone with it.
                    health.leased = false;
                    engine.inner.hub.quiet_expiries(true);
                }
            }
        }
        drop(engine);
        if connected {
            // A lost wake-up costs at most the poll interval.
            if follower.wait(settings.poll).is_err() {
                connected = false;
            }
        } else {
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }
}
