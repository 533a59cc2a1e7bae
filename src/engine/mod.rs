//! The engine: grants, checks, expiry, events.
//!
//! # Ground rules
//!
//! - **Checks** read the lock-free index (see `index.rs`) and compare the
//!   pair's stored read-until or edit-until instant with the engine's time.
//!   They take no lock, allocate nothing once a thread has checked before,
//!   and never touch the timing wheel or a store.
//! - **Changes** (share, extend, revoke, advance) run one at a time under the
//!   state mutex. Each starts by reclaiming what is due, so the state a
//!   change sees holds no grant whose reclaim tick has passed.
//! - **Time** is the latest instant the clock has ever shown to this engine:
//!   a clock stepping back never revives a grant.
//! - **Live** means `now < expires`. A grant past its expiry but not yet
//!   reclaimed (within its last tick) answers no to every check, is not
//!   listed and cannot be revoked or extended; the next advance reclaims it.
//! - **One live grant per (user, entity, context)**; a repeated share follows
//!   the configured [`RepeatShare`] rule. A pair's access is the highest
//!   level among its live grants.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use parking_lot::Mutex;

use crate::clock::{from_millis, to_millis, to_millis_i64, ClockSource};
use crate::events::{Event, Hub, SubscriptionId};
use crate::ids::{EntityId, Level, UserId};
use crate::index::IndexReader;
use crate::store::StoreReader;

use self::commit::Queue;
use self::config::Config;
use self::state::State;

mod batch;
mod builder;
mod commit;
mod config;
mod contexts;
mod driver;
mod follow;
#[cfg(any(test, feature = "testing"))]
mod invariants;
mod listing;
mod load;
#[cfg(all(test, grantwheel_loom))]
mod loom_models;
mod record;
mod revoke;
mod share;
mod state;
mod timers;
mod transact;

pub use builder::EngineBuilder;
pub use driver::Driver;
pub use follow::FeedStatus;
pub(crate) use load::Restored;
pub(crate) use state::RuleUpdate;
pub(crate) use transact::Transaction;

pub use crate::model::grant::{
    Access, Expiry, ExpiryEvents, Footprint, Grant, OverMax, RepeatShare, ShareSpec, Start,
};

struct Inner {
    reader: IndexReader,
    clock: ClockSource,
    high_water: AtomicU64,
    /// Checks say yes only while the engine time is below this (see
    /// `follow.rs`); `u64::MAX` for an engine whose store is its own.
    fresh_until: AtomicU64,
    cfg: Config,
    state: Mutex<State>,
    hub: Hub,
    /// Whether the engine has a store.
    durable: bool,
    /// The store's read side (engines with a store).
    store_reader: Option<Arc<dyn StoreReader>>,
    /// The sequence number of the last batch written.
    written: AtomicU64,
    /// Changes waiting for the next batch.
    queue: Mutex<Queue>,
    /// Signalled when a batch is done.
    batch_done: parking_lot::Condvar,
    /// Loaded state, until the request layer takes it.
    restored: Mutex<Option<Restored>>,
    /// The request layer over this engine, while one lives: there is at
    /// most one, so every handle sees one history.
    layer: Mutex<Option<std::sync::Weak<dyn std::any::Any + Send + Sync>>>,
    /// Over a shared store: the follower's settings and health.
    follow: Option<follow::Follow>,
    /// Where rule changes go (the request layer's rule set), and the lock
    /// that keeps them in order: taken before the state lock, never under
    /// it.
    rule_sink: Mutex<Option<RuleSink>>,
}

/// Receives rule changes in the store's order.
pub(crate) type RuleSink = Box<dyn Fn(Vec<state::RuleUpdate>) + Send + Sync>;

/// The grant engine: shares, checks, revokes and expires time-limited
/// access. `Send + Sync`; clone it to share it (clones are handles on the
/// same engine).
///
/// ```
/// use grantwheel::{Context, Engine, EntityId, Expiry, Level, ManualClock, UserId};
/// use chrono::{Duration, TimeZone, Utc};
///
/// let clock = ManualClock::new(Utc.with_ymd_and_hms(2026, 11, 22, 9, 0, 0).unwrap());
/// let engine = Engine::builder().clock(clock.clone()).build().unwrap();
/// let (alice, lead) = (UserId::from_u128(7), EntityId::lead(869196));
///
/// engine.share(alice, lead, Context::Direct, Level::Read, Expiry::After(Duration::minutes(30))).unwrap();
/// assert!(engine.can_read(&alice, &lead));
/// assert!(!engine.can_edit(&alice, &lead));
///
/// clock.advance(Duration::minutes(30));
/// assert!(!engine.can_read(&alice, &lead)); // expired, even before reclaiming
/// assert_eq!(engine.advance(), 1);
/// assert!(engine.is_empty());
/// ```
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("grants", &self.len())
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Start configuring an engine.
    pub fn builder() -> EngineBuilder {
        EngineBuilder::default()
    }

    /// An engine with the default settings and the system clock.
    #[expect(
        clippy::unreachable,
        reason = "the default settings are valid and there is no store to fail (tested)"
    )]
    pub fn new() -> Engine {
        match EngineBuilder::default().build() {
            Ok(e) => e,
            Err(e) => unreachable!("default settings rejected: {e}"),
        }
    }

    /// The engine's time in milliseconds: the latest the clock has shown.
    #[inline]
    fn now_ms(&self) -> u64 {
        let c = to_millis_i64(self.inner.clock.now_millis());
        let hw = self.inner.high_water.load(Ordering::Relaxed);
        if c > hw {
            // Written at most once per clock millisecond, so readers on
            // several threads rarely share a dirty line.
            self.inner.high_water.fetch_max(c, Ordering::Relaxed);
            c
        } else {
            hw
        }
    }

    /// The longest share allowed.
    pub fn max_duration(&self) -> chrono::Duration {
        chrono::Duration::milliseconds(i64::try_from(self.inner.cfg.max_ms).unwrap_or(i64::MAX))
    }

    /// Whether grants are held at their start until confirmed
    /// ([`EngineBuilder::confirm_starts`](crate::EngineBuilder::confirm_starts)).
    pub fn confirms_starts(&self) -> bool {
        self.inner.cfg.timing.confirm_starts
    }

    /// What a share longer than [`max_duration`](Self::max_duration)
    /// gets: refused or clamped.
    pub fn over_max(&self) -> OverMax {
        self.inner.cfg.over_max
    }

    /// What a share of a (user, entity, context) that already has a live
    /// grant does.
    pub fn repeat_share(&self) -> RepeatShare {
        self.inner.cfg.repeat
    }

    /// The duration of a share that names none.
    pub fn default_duration(&self) -> chrono::Duration {
        chrono::Duration::milliseconds(i64::try_from(self.inner.cfg.default_ms).unwrap_or(i64::MAX))
    }

    /// The engine's current time: the latest instant its clock has shown.
    pub fn now(&self) -> DateTime<Utc> {
        from_millis(self.now_ms())
    }

    /// May `user` read `entity` now? One probe of the index and a compare:
    /// no lock, no allocation, no I/O. Over a shared store, no for every
    /// pair while the engine is behind the feed or its clock is too far off
    /// (see [`feed_status`](Self::feed_status)).
    #[inline]
    pub fn can_read(&self, user: &UserId, entity: &EntityId) -> bool {
        let until = self.inner.reader.summary(user, entity).read_until;
        // A pair with no access (0) is a no at any time: no clock read,
        // which is most of a miss's cost on the system clock.
        until != 0 && self.check_now() < until
    }

    /// May `user` edit `entity` now? Same cost as [`can_read`](Self::can_read).
    #[inline]
    pub fn can_edit(&self, user: &UserId, entity: &EntityId) -> bool {
        let until = self.inner.reader.summary(user, entity).edit_until;
        // As in `can_read`: no access needs no clock.
        until != 0 && self.check_now() < until
    }

    /// May `user` act on `entity` at `level` now?
    #[inline]
    pub fn check(&self, user: &UserId, entity: &EntityId, level: Level) -> bool {
        match level {
            Level::Read => self.can_read(user, entity),
            Level::Edit => self.can_edit(user, entity),
        }
    }

    /// The effective access of (user, entity) now: the highest level among
    /// its live grants and until when it holds; `None` without access.
    ///
    /// ```
    /// use grantwheel::{Context, Engine, EntityId, Expiry, Level, ManualClock, UserId};
    /// use chrono::{Duration, Utc};
    /// let engine = Engine::builder().clock(ManualClock::new(Utc::now())).build().unwrap();
    /// let (u, e) = (UserId::from_u128(1), EntityId::lead(1));
    /// let edit = engine.share(u, e, Context::Direct, Level::Edit, Expiry::After(Duration::hours(1))).unwrap();
    /// let read = engine.share(u, e, Context::Task(uuid::Uuid::nil()), Level::Read, Expiry::After(Duration::hours(5))).unwrap();
    /// let access = engine.access(&u, &e).unwrap();
    /// assert_eq!((access.level, access.until, access.read_until), (Level::Edit, edit.expires_at, read.expires_at));
    /// ```
    pub fn access(&self, user: &UserId, entity: &EntityId) -> Option<Access> {
        access_at(&self.inner.reader, user, entity, self.check_now())
    }

    /// Send every rule change this engine writes or follows to `sink`, in
    /// the store's order, from now on (the request layer's rule set).
    pub(crate) fn follow_rules(&self, sink: RuleSink) {
        let mut slot = self.inner.rule_sink.lock();
        self.inner
            .state
            .lock()
            .rule_updates
            .get_or_insert_with(Vec::new);
        *slot = Some(sink);
    }

    /// Hand the rule changes collected so far to the sink. Call with no
    /// lock of the sink's held.
    pub(crate) fn deliver_rules(&self) {
        let sink = self.inner.rule_sink.lock();
        let Some(sink) = sink.as_ref() else { return };
        let updates = match &mut self.inner.state.lock().rule_updates {
            Some(u) if !u.is_empty() => std::mem::take(u),
            _ => return,
        };
        sink(updates);
    }

    /// Whether the engine follows a store shared with other engines.
    pub(crate) fn is_shared(&self) -> bool {
        self.inner.follow.is_some()
    }

    /// Whether the engine writes its state to a store.
    pub fn is_durable(&self) -> bool {
        self.inner.durable
    }

    /// The store's read side, on an engine with a store.
    pub(crate) fn store_reader(&self) -> Option<Arc<dyn StoreReader>> {
        self.inner.store_reader.clone()
    }

    /// Reclaim every grant whose expiry has passed (to the tick), start
    /// the scheduled grants whose start has come, raise the due
    /// expiring-soon warnings, and return how many grants expired.
    /// Expiry never depends on it (a check compares the grant's own
    /// expiry with the time), but a scheduled grant is seen by checks only
    /// once this reaches its start: call it (or run [`start_driver`]) to
    /// start grants on time, free memory and get `Expired` events.
    ///
    /// [`start_driver`]: Self::start_driver
    pub fn advance(&self) -> usize {
        let reader = &self.inner.reader;
        self.locked(|st, ch, now| st.advance(reader, ch, now))
    }

    /// The instant a grant scheduled to start at `start` goes live: the
    /// first tick at or after it, when the [`advance`](Self::advance) that
    /// the driver makes at that tick (it wakes for it) starts the grant.
    /// Checks say yes from then; the listings and the audit report the same
    /// instant, and the grant still ends when it was asked to. A start
    /// waits for the tick so that checks never compare it: it costs the
    /// check path nothing, and with the default tick of a second access
    /// begins at most a second after it was asked for.
    ///
    /// ```
    /// use chrono::{Duration, TimeZone, Utc};
    /// use grantwheel::{Engine, EntityId, Level, ManualClock, ShareSpec, Start, UserId};
    /// let t0 = Utc.with_ymd_and_hms(2026, 12, 7, 9, 0, 0).unwrap();
    /// let clock = ManualClock::new(t0);
    /// let engine = Engine::builder().clock(clock.clone()).build().unwrap();
    /// let at = t0 + Duration::milliseconds(1500);
    /// assert_eq!(engine.live_from(at), t0 + Duration::seconds(2));
    /// assert_eq!(engine.live_from(t0 + Duration::seconds(3)), t0 + Duration::seconds(3));
    /// let (u, e) = (UserId::from_u128(1), EntityId::lead(1));
    /// engine.share_spec(ShareSpec::new(u, e, Level::Read).start(Start::At(at))).unwrap();
    /// clock.advance(Duration::milliseconds(1900));
    /// engine.advance();
    /// assert!(!engine.can_read(&u, &e) && engine.pair_grants(&u, &e).is_empty());
    /// clock.advance(Duration::milliseconds(100));
    /// engine.advance();
    /// assert!(engine.can_read(&u, &e) && engine.pair_grants(&u, &e).len() == 1);
    /// ```
    pub fn live_from(&self, start: DateTime<Utc>) -> DateTime<Utc> {
        let timing = &self.inner.cfg.timing;
        from_millis(timing.start_ms(timing.tick_of(to_millis(start))))
    }

    /// When [`advance`](Self::advance) next has work to do: never later than
    /// the next start, expiry or warning (exact within 64 ticks, earlier for
    /// farther ones). `None` when no grant is held.
    pub fn next_wakeup(&self) -> Option<DateTime<Utc>> {
        let st = self.inner.state.lock();
        st.wheel
            .next_wakeup()
            .map(|t| from_millis(self.inner.cfg.timing.start_ms(t)))
    }

    /// Check the engine's internal invariants (the numbered list in the
    /// state module): for tests, which call it after every step. Takes
    /// the state lock and walks every grant. Feature `testing`.
    #[cfg(any(test, feature = "testing"))]
    #[doc(hidden)]
    pub fn check_invariants(&self) -> Result<(), String> {
        self.inner.state.lock().check_invariants()
    }

    /// Grants held: live, or expired and not yet reclaimed.
    pub fn len(&self) -> usize {
        self.inner.state.lock().grants.held()
    }

    /// Whether no grant is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The memory held for grants.
    pub fn footprint(&self) -> Footprint {
        let st = self.inner.state.lock();
        Footprint {
            grants: st.grants.held(),
            pairs: st.index.len(),
            index_bytes: st.index.table_bytes(),
            grant_bytes: st.grants.bytes() + st.contexts.bytes(),
            wheel_bytes: st.wheel.bytes(),
        }
    }

    /// Call `f` with every event from now on, after the change that raised
    /// it has released the engine's lock. A subscriber that panics is
    /// disabled.
    ///
    /// ```
    /// use grantwheel::{Context, Engine, EntityId, Event, Expiry, Level, UserId};
    /// use std::sync::{Arc, Mutex};
    /// let engine = Engine::new();
    /// let seen = Arc::new(Mutex::new(Vec::new()));
    /// let sink = seen.clone();
    /// engine.subscribe(move |e: &Event| sink.lock().unwrap().push(e.clone()));
    /// engine.share(UserId::from_u128(1), EntityId::lead(1), Context::Direct, Level::Read, Expiry::Default).unwrap();
    /// assert!(matches!(seen.lock().unwrap()[0], Event::Granted(_)));
    /// ```
    pub fn subscribe(&self, f: impl Fn(&Event) + Send + Sync + 'static) -> SubscriptionId {
        self.inner.hub.subscribe(Box::new(f))
    }

    /// Stop calling a subscriber. Returns whether it was subscribed.
    pub fn unsubscribe(&self, id: SubscriptionId) -> bool {
        self.inner.hub.unsubscribe(id)
    }
}

impl Default for Engine {
    fn default() -> Self {
        Engine::new()
    }
}

/// A pair's access at `now` (ms), from the index.
#[inline]
pub(super) fn access_at(
    reader: &crate::index::IndexReader,
    user: &UserId,
    entity: &EntityId,
    now: u64,
) -> Option<Access> {
    let s = reader.summary(user, entity);
    if now < s.edit_until {
        Some(Access {
            level: Level::Edit,
            until: from_millis(s.edit_until),
            read_until: from_millis(s.read_until),
        })
    } else if now < s.read_until {
        Some(Access {
            level: Level::Read,
            until: from_millis(s.read_until),
            read_until: from_millis(s.read_until),
        })
    } else {
        None
    }
}
