//! Building an engine: settings checked, the index made, the store
//! loaded.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::clock::{to_millis, to_millis_i64, words, Clock, ClockSource};
use crate::error::{BuildError, InvalidArgument};
use crate::events::Hub;
use crate::index::new_index;
use crate::model::grant::{ExpiryEvents, OverMax, RepeatShare};
use crate::store::{Meta, Store};

use super::commit::Queue;
use super::config::FollowSettings;
use super::config::{Config, Timing};
use super::follow::{self, Follow};
use super::record::DUE;
use super::state::State;
use super::{Engine, Inner};

pub(super) const MS_PER_DAY: i64 = 86_400_000;

/// Builds an [`Engine`].
///
/// ```
/// use grantwheel::{Engine, ManualClock, OverMax, RepeatShare};
/// use chrono::{Duration, Utc};
///
/// let engine = Engine::builder()
///     .clock(ManualClock::new(Utc::now()))
///     .default_duration(Duration::days(30))
///     .max_duration(Duration::days(365), OverMax::Clamp)
///     .repeat_share(RepeatShare::KeepLater)
///     .tick(Duration::seconds(1))
///     .warn_before([Duration::days(14), Duration::days(1)])
///     .build()
///     .unwrap();
/// assert!(engine.is_empty());
/// ```
#[must_use = "a builder does nothing until `build()` is called"]
pub struct EngineBuilder {
    clock: ClockSource,
    default_duration: chrono::Duration,
    max_duration: chrono::Duration,
    over_max: OverMax,
    repeat: RepeatShare,
    tick: chrono::Duration,
    warnings: Vec<chrono::Duration>,
    capacity: usize,
    confirm_starts: bool,
    store: Option<Box<dyn Store>>,
    max_staleness: chrono::Duration,
    feed_poll: chrono::Duration,
    skew_warn: chrono::Duration,
    skew_fail: chrono::Duration,
    expiry_events: ExpiryEvents,
}

impl std::fmt::Debug for EngineBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineBuilder")
            .field("default_duration", &self.default_duration)
            .field("max_duration", &self.max_duration)
            .field("durable", &self.store.is_some())
            .finish_non_exhaustive()
    }
}

impl Default for EngineBuilder {
    fn default() -> Self {
        EngineBuilder {
            clock: ClockSource::System,
            default_duration: chrono::Duration::days(90),
            max_duration: chrono::Duration::days(3660),
            over_max: OverMax::Reject,
            repeat: RepeatShare::Replace,
            tick: chrono::Duration::seconds(1),
            warnings: Vec::new(),
            capacity: 0,
            confirm_starts: false,
            store: None,
            max_staleness: chrono::Duration::seconds(5),
            feed_poll: chrono::Duration::milliseconds(250),
            skew_warn: chrono::Duration::milliseconds(250),
            skew_fail: chrono::Duration::seconds(2),
            expiry_events: ExpiryEvents::Everywhere,
        }
    }
}

impl EngineBuilder {
    /// The clock (default: [`SystemClock`](crate::SystemClock)).
    ///
    /// ```
    /// use grantwheel::{Engine, ManualClock};
    /// let clock = ManualClock::new(chrono::Utc::now());
    /// let engine = Engine::builder().clock(clock.clone()).build().unwrap();
    /// assert_eq!(engine.now(), chrono::Utc::now().min(engine.now()));
    /// ```
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = ClockSource::new(clock);
        self
    }

    /// The duration of a share that names none (default: 90 days).
    ///
    /// ```
    /// use grantwheel::{Context, Engine, EntityId, Expiry, Level, ManualClock, UserId};
    /// use chrono::{Duration, Utc};
    /// let clock = ManualClock::new(Utc::now());
    /// let engine = Engine::builder().clock(clock).default_duration(Duration::days(7)).build().unwrap();
    /// let g = engine.share(UserId::from_u128(1), EntityId::lead(1), Context::Direct, Level::Read, Expiry::Default).unwrap();
    /// assert_eq!(g.expires_at - engine.now(), Duration::days(7));
    /// ```
    pub fn default_duration(mut self, d: chrono::Duration) -> Self {
        self.default_duration = d;
        self
    }

    /// The longest share allowed, and what to do with a longer one
    /// (default: 3,660 days, rejected).
    ///
    /// ```
    /// use grantwheel::{Context, Engine, EntityId, Expiry, Level, OverMax, UserId};
    /// use chrono::Duration;
    /// let engine = Engine::builder()
    ///     .default_duration(Duration::days(7))
    ///     .max_duration(Duration::days(30), OverMax::Reject)
    ///     .build()
    ///     .unwrap();
    /// let err = engine
    ///     .share(UserId::from_u128(1), EntityId::lead(1), Context::Direct, Level::Read, Expiry::After(Duration::days(31)))
    ///     .unwrap_err();
    /// assert_eq!(err.field(), Some("duration"));
    /// ```
    pub fn max_duration(mut self, d: chrono::Duration, over: OverMax) -> Self {
        self.max_duration = d;
        self.over_max = over;
        self
    }

    /// What a repeated share of a live (user, entity, context) does
    /// (default: [`RepeatShare::Replace`]).
    ///
    /// ```
    /// use grantwheel::{Context, Engine, EntityId, Expiry, Level, RepeatShare, ShareError, UserId};
    /// let engine = Engine::builder().repeat_share(RepeatShare::Reject).build().unwrap();
    /// let (u, e) = (UserId::from_u128(1), EntityId::lead(1));
    /// engine.share(u, e, Context::Direct, Level::Read, Expiry::Default).unwrap();
    /// let again = engine.share(u, e, Context::Direct, Level::Edit, Expiry::Default);
    /// assert!(matches!(again, Err(ShareError::AlreadyShared { .. })));
    /// ```
    pub fn repeat_share(mut self, rule: RepeatShare) -> Self {
        self.repeat = rule;
        self
    }

    /// The timing wheel's resolution (default: 1 second; from 1 ms to 1
    /// day). Checks are exact to the millisecond whatever the tick; the tick
    /// sets how soon after its expiry a grant is reclaimed and its `Expired`
    /// event raised.
    ///
    /// ```
    /// use grantwheel::Engine;
    /// assert!(Engine::builder().tick(chrono::Duration::milliseconds(100)).build().is_ok());
    /// assert!(Engine::builder().tick(chrono::Duration::zero()).build().is_err());
    /// ```
    pub fn tick(mut self, tick: chrono::Duration) -> Self {
        self.tick = tick;
        self
    }

    /// Raise [`Event::ExpiringSoon`](crate::Event::ExpiringSoon) this long before each grant expires,
    /// for each offset given (default: none).
    ///
    /// ```
    /// use grantwheel::Engine;
    /// use chrono::Duration;
    /// let engine = Engine::builder().warn_before([Duration::days(14), Duration::days(1)]).build();
    /// assert!(engine.is_ok());
    /// ```
    pub fn warn_before(mut self, offsets: impl IntoIterator<Item = chrono::Duration>) -> Self {
        self.warnings = offsets.into_iter().collect();
        self
    }

    /// Over a shared store: how long the engine may go without completing
    /// a catch-up with the feed before its checks say no, for every pair,
    /// until it has caught up again (default: 5 seconds).
    ///
    /// ```
    /// use grantwheel::Engine;
    /// use chrono::Duration;
    /// assert!(Engine::builder().max_staleness(Duration::seconds(2)).build().is_ok());
    /// let err = Engine::builder().max_staleness(Duration::zero()).build().unwrap_err();
    /// assert!(matches!(&err, grantwheel::BuildError::Invalid(a) if a.field() == "max_staleness"));
    /// ```
    pub fn max_staleness(mut self, d: chrono::Duration) -> Self {
        self.max_staleness = d;
        self
    }

    /// Over a shared store: how often the follower reads the feed when no
    /// wake-up came (default: 250 ms). Wake-ups make it sooner; this
    /// bounds what a lost one costs.
    pub fn feed_poll(mut self, d: chrono::Duration) -> Self {
        self.feed_poll = d;
        self
    }

    /// Over a shared store: how far this host's clock may be from the
    /// store's (measured at start and every minute): beyond `warn` the
    /// feed status says so; beyond `fail` checks say no until it is back
    /// within (default: 250 ms and 2 s).
    pub fn clock_skew(mut self, warn: chrono::Duration, fail: chrono::Duration) -> Self {
        self.skew_warn = warn;
        self.skew_fail = fail;
        self
    }

    /// Over a shared store: which engines raise expiry and expiring-soon
    /// events (default: every one, [`ExpiryEvents::Everywhere`]). With
    /// [`ExpiryEvents::Leased`] one engine at a time does, so a host that
    /// sends a notification per expiry sends one, not one per instance.
    /// [`Engine::feed_status`](crate::Engine::feed_status) says whether an
    /// engine holds the lease.
    pub fn expiry_events(mut self, events: ExpiryEvents) -> Self {
        self.expiry_events = events;
        self
    }

    /// Hold each grant made to start later when its start comes, until it
    /// is confirmed with [`Engine::confirm_start`](crate::Engine::confirm_start)
    /// or revoked (default: it goes live at its start). Until then no check
    /// says yes for it; it is listed with the scheduled grants and by
    /// [`Engine::due_starts`](crate::Engine::due_starts), and one never
    /// confirmed ends at its expiry. A restart keeps it waiting. The
    /// request layer confirms such grants after asking the host's hooks
    /// again (see `Sharing::check_starts` in the request layer).
    pub fn confirm_starts(mut self, confirm: bool) -> Self {
        self.confirm_starts = confirm;
        self
    }

    /// Room for this many grants on numeric entities, reserved up front.
    pub fn capacity(mut self, grants: usize) -> Self {
        self.capacity = grants;
        self
    }

    /// Keep the engine's state in `store` (default: none, state lives only
    /// in memory). [`build`](Self::build) then loads the state the store
    /// holds: grants past their expiry are dropped (and recorded as
    /// expired), the rest are indexed and scheduled again. From then on
    /// every change is written to the store; see [`crate::store`] for the
    /// write order.
    ///
    /// ```
    /// # #[cfg(feature = "sqlite")] {
    /// use grantwheel::store::SqliteStore;
    /// use grantwheel::Engine;
    /// let dir = tempfile::tempdir().unwrap();
    /// let store = SqliteStore::open(dir.path().join("grants.db")).unwrap();
    /// let engine = Engine::builder().store(store).build().unwrap();
    /// assert!(engine.is_durable());
    /// # }
    /// ```
    pub fn store(mut self, store: impl Store + 'static) -> Self {
        self.store = Some(Box::new(store));
        self
    }

    /// Check the settings and build the engine: with a store, its state
    /// is loaded (grants past their expiry are dropped and written as
    /// ended) before this returns.
    ///
    /// # Errors
    ///
    /// [`BuildError::Invalid`] names a setting that was rejected (a
    /// duration that is not positive, a default over the maximum, a tick
    /// longer than a day, too many warnings); [`BuildError::Load`] carries
    /// the store's error when its state cannot be read or written.
    ///
    /// ```
    /// use grantwheel::{BuildError, Engine};
    /// let err = Engine::builder().tick(chrono::Duration::days(2)).build().unwrap_err();
    /// assert!(matches!(&err, BuildError::Invalid(a) if a.field() == "tick"));
    /// ```
    pub fn build(self) -> Result<Engine, BuildError> {
        let cfg = self.settings()?;
        let follow_settings = cfg.follow;
        let (reader, index) = new_index();
        let EngineBuilder {
            clock,
            capacity,
            store,
            ..
        } = self;
        let mut store = store;
        let meta = match &mut store {
            Some(store) => store.meta()?,
            None => Meta::default(),
        };
        // Before the grants: they may include later entries, which the
        // first catch-up applies again (harmlessly).
        let position = match store.as_mut().and_then(|s| s.shared()) {
            Some(shared) => Some(shared.position()?),
            None => None,
        };
        // Never run behind the time the store last saw.
        let now = meta
            .clock
            .map_or(0, to_millis)
            .max(to_millis_i64(clock.now_millis()));
        let mut state = State::new(index, &cfg, &meta, now);
        state.feed = position.unwrap_or(0);
        if capacity > 0 {
            state.reserve(&reader, capacity);
        }
        let durable = store.is_some();
        let mut follower = None;
        let (restored, store_reader) = match store {
            Some(mut store) => {
                let restored = state.load(&reader, &mut *store, now)?;
                let store_reader = store.reader()?;
                if let Some(shared) = store.shared() {
                    follower = Some(shared.follower()?);
                }
                state.store = Some(store);
                (Some(restored), Some(store_reader))
            }
            None => (None, None),
        };
        let engine = Engine {
            inner: Arc::new(Inner {
                reader,
                clock,
                high_water: AtomicU64::new(now),
                // Over a shared store: no until the first catch-up.
                fresh_until: AtomicU64::new(if follower.is_some() { 0 } else { u64::MAX }),
                cfg,
                state: Mutex::new(state),
                hub: Hub::default(),
                durable,
                store_reader,
                written: AtomicU64::new(meta.last_seq),
                queue: Mutex::new(Queue::default()),
                batch_done: parking_lot::Condvar::new(),
                restored: Mutex::new(restored),
                layer: Mutex::new(None),
                follow: follower.is_some().then(|| Follow {
                    settings: follow_settings,
                    health: Mutex::new(Default::default()),
                }),
                rule_sink: Mutex::new(None),
            }),
        };
        if let Some(follower) = follower {
            follow::start(&engine, follower)?;
        }
        if durable {
            // Write down what the load found expired (and any duplicates).
            engine.flush()?;
        }
        Ok(engine)
    }

    /// The settings, checked.
    fn settings(&self) -> Result<Config, InvalidArgument> {
        let positive_ms = |field: &'static str, d: chrono::Duration| {
            let ms = d.num_milliseconds();
            if ms <= 0 {
                return Err(InvalidArgument::new(
                    field,
                    format!("`{}` is not at least one millisecond", words(d)),
                ));
            }
            Ok(ms.unsigned_abs())
        };
        let default_ms = positive_ms("default_duration", self.default_duration)?;
        let max_ms = positive_ms("max_duration", self.max_duration)?;
        let tick_ms = positive_ms("tick", self.tick)?;
        if self.tick.num_milliseconds() > MS_PER_DAY {
            return Err(InvalidArgument::new(
                "tick",
                format!("`{}` is longer than one day", words(self.tick)),
            ));
        }
        if default_ms > max_ms {
            return Err(InvalidArgument::new(
                "default_duration",
                format!(
                    "`{}` is longer than the maximum duration `{}`",
                    words(self.default_duration),
                    words(self.max_duration)
                ),
            ));
        }
        let mut warnings = Vec::with_capacity(self.warnings.len());
        for w in &self.warnings {
            warnings.push(positive_ms("warn_before", *w)?);
        }
        warnings.sort_unstable_by(|a, b| b.cmp(a));
        warnings.dedup();
        // Stages 0..=len are the warnings and the expiry; DUE, SCHEDULED
        // and FREE sit above them.
        if warnings.len() >= usize::from(DUE) {
            return Err(InvalidArgument::new(
                "warn_before",
                "more than 252 warning offsets",
            ));
        }
        let std_of = |field: &'static str, d: chrono::Duration| {
            positive_ms(field, d).map(std::time::Duration::from_millis)
        };
        let follow = FollowSettings {
            poll: std_of("feed_poll", self.feed_poll)?,
            max_staleness: std_of("max_staleness", self.max_staleness)?,
            skew_warn: std_of("clock_skew", self.skew_warn)?,
            skew_fail: std_of("clock_skew", self.skew_fail)?,
            leased_events: self.expiry_events == ExpiryEvents::Leased,
        };
        if follow.skew_warn > follow.skew_fail {
            return Err(InvalidArgument::new(
                "clock_skew",
                format!(
                    "the warning `{}` is above the limit `{}`",
                    words(self.skew_warn),
                    words(self.skew_fail)
                ),
            ));
        }
        Ok(Config {
            follow,
            default_ms,
            max_ms,
            over_max: self.over_max,
            repeat: self.repeat,
            timing: Timing {
                tick_ms,
                warnings: warnings.into_boxed_slice(),
                confirm_starts: self.confirm_starts,
            },
        })
    }
}
