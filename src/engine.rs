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
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use chrono::{DateTime, Utc};
use parking_lot::Mutex;

use crate::clock::{from_millis, max_millis, to_millis, to_millis_i64, Clock, ClockSource};
use crate::error::Error;
use crate::events::{Event, Hub, RevokeReason, SubscriptionId};
use crate::ids::{Context, EntityId, GrantId, Level, UserId};
use crate::index::{new_index, IndexReader, IndexWriter, Locator, PackedLocator, PairKey, Summary};
use crate::store::{Batch, Change, EndCause, Records, Store};
use crate::wheel::{Links, Place, Wheel, MAX_BUCKET};

pub use crate::model::grant::{Access, Expiry, Footprint, Grant, OverMax, RepeatShare, ShareSpec};

const NIL: u32 = u32::MAX;
/// The most grants one engine holds: keeps grant numbers in 32 bits and
/// each index shard far below its 2^25 slots.
pub(crate) const MAX_GRANTS: usize = 1 << 30;
const MS_PER_DAY: i64 = 86_400_000;

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
    store: Option<Box<dyn Store>>,
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
            store: None,
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
    /// use grantwheel::{Context, Engine, EntityId, Error, Expiry, Level, RepeatShare, UserId};
    /// let engine = Engine::builder().repeat_share(RepeatShare::Reject).build().unwrap();
    /// let (u, e) = (UserId::from_u128(1), EntityId::lead(1));
    /// engine.share(u, e, Context::Direct, Level::Read, Expiry::Default).unwrap();
    /// let again = engine.share(u, e, Context::Direct, Level::Edit, Expiry::Default);
    /// assert!(matches!(again, Err(Error::AlreadyShared { .. })));
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

    /// Raise [`Event::ExpiringSoon`] this long before each grant expires,
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
    /// use grantwheel::store::SqliteStore;
    /// use grantwheel::Engine;
    /// let dir = tempfile::tempdir().unwrap();
    /// let store = SqliteStore::open(dir.path().join("grants.db")).unwrap();
    /// let engine = Engine::builder().store(store).build().unwrap();
    /// assert!(engine.is_durable());
    /// ```
    pub fn store(mut self, store: impl Store + 'static) -> Self {
        self.store = Some(Box::new(store));
        self
    }

    /// Check the settings and build the engine.
    pub fn build(self) -> Result<Engine, Error> {
        let positive_ms = |field: &'static str, d: chrono::Duration| -> Result<u64, Error> {
            let ms = d.num_milliseconds();
            if ms <= 0 {
                return Err(Error::invalid(
                    field,
                    format!("`{d}` is not at least one millisecond"),
                ));
            }
            Ok(ms.unsigned_abs())
        };
        let default_ms = positive_ms("default_duration", self.default_duration)?;
        let max_ms = positive_ms("max_duration", self.max_duration)?;
        let tick_ms = positive_ms("tick", self.tick)?;
        if self.tick.num_milliseconds() > MS_PER_DAY {
            return Err(Error::invalid(
                "tick",
                format!("`{}` is longer than one day", self.tick),
            ));
        }
        if default_ms > max_ms {
            return Err(Error::invalid(
                "default_duration",
                format!(
                    "`{}` is longer than the maximum duration `{}`",
                    self.default_duration, self.max_duration
                ),
            ));
        }
        let mut warnings = Vec::with_capacity(self.warnings.len());
        for w in &self.warnings {
            warnings.push(positive_ms("warn_before", *w)?);
        }
        warnings.sort_unstable_by(|a, b| b.cmp(a));
        warnings.dedup();
        if warnings.len() >= usize::from(u8::MAX) {
            return Err(Error::invalid(
                "warn_before",
                "more than 254 warning offsets",
            ));
        }
        let timing = Timing {
            tick_ms,
            warnings: warnings.into_boxed_slice(),
        };
        let timing_copy = timing.clone();
        let (reader, mut index) = new_index();
        let clock = self.clock;
        let mut now = to_millis_i64(clock.now_millis());
        let mut store = self.store;
        let meta = match &mut store {
            Some(store) => store.meta()?,
            None => Default::default(),
        };
        if let Some(at) = meta.clock {
            // Never run behind the time the store last saw.
            now = now.max(to_millis(at));
        }
        let mut grants = Vec::new();
        if self.capacity > 0 {
            grants.reserve(self.capacity);
            index.reserve_numeric(&reader, self.capacity, &mut |_, _| {});
        }
        let durable = store.is_some();
        let mut state = State {
            index,
            timing,
            grants,
            free: Vec::new(),
            wheel: Wheel::new(now / tick_ms),
            next_serial: meta.next_serial.max(1),
            held: 0,
            fired: Vec::new(),
            store: None,
            seq: meta.last_seq,
            clock_written: meta.clock.map_or(0, to_millis),
            lazy: Vec::new(),
            group: None,
        };
        let restored = match store {
            Some(mut store) => {
                let restored = state.load(&reader, &mut *store, now)?;
                state.store = Some(store);
                Some(restored)
            }
            None => None,
        };
        let engine = Engine {
            inner: Arc::new(Inner {
                reader,
                clock,
                high_water: AtomicU64::new(now),
                cfg: Config {
                    default_ms,
                    max_ms,
                    over_max: self.over_max,
                    repeat: self.repeat,
                    timing: timing_copy,
                },
                state: Mutex::new(state),
                hub: Hub::default(),
                durable,
                queue: Mutex::new(Queue::default()),
                batch_done: parking_lot::Condvar::new(),
                restored: Mutex::new(restored),
                layer: Mutex::new(None),
            }),
        };
        if durable {
            // Write down what the load found expired (and any duplicates).
            engine.flush()?;
        }
        Ok(engine)
    }
}

struct Config {
    default_ms: u64,
    max_ms: u64,
    over_max: OverMax,
    repeat: RepeatShare,
    timing: Timing,
}

/// The tick and the warning offsets: what turns a grant into its timer.
#[derive(Clone, Debug)]
struct Timing {
    tick_ms: u64,
    /// Warning offsets, longest first.
    warnings: Box<[u64]>,
}

impl Timing {
    /// The next timer of a grant: the first warning still ahead, else the
    /// expiry. Returns the stage (`warnings.len()` for the expiry) and its
    /// instant.
    fn next_timer(&self, expires: u64, now: u64) -> (u8, u64) {
        for (i, w) in self.warnings.iter().enumerate() {
            let at = expires.saturating_sub(*w);
            if at > now {
                return (i as u8, at);
            }
        }
        (self.warnings.len() as u8, expires)
    }

    /// The instant of a grant's timer at `stage`.
    fn timer_at(&self, expires: u64, stage: u8) -> u64 {
        match self.warnings.get(usize::from(stage)) {
            Some(w) => expires.saturating_sub(*w),
            None => expires,
        }
    }

    /// The first tick at or after `instant`.
    fn tick_of(&self, instant: u64) -> u64 {
        instant.div_ceil(self.tick_ms)
    }
}

impl Config {
    /// The expiry instant a share asks for, validated.
    fn resolve(&self, now: u64, expiry: Expiry) -> Result<u64, Error> {
        let (field, ms) = match expiry {
            Expiry::Default => ("duration", self.default_ms),
            Expiry::After(d) => {
                let ms = d.num_milliseconds();
                if ms <= 0 {
                    return Err(Error::invalid(
                        "duration",
                        format!("`{d}` is not at least one millisecond"),
                    ));
                }
                ("duration", ms.unsigned_abs())
            }
            Expiry::At(t) => {
                let at = to_millis(t);
                if at <= now {
                    return Err(Error::invalid(
                        "expires_at",
                        format!("`{t}` is not after the current time `{}`", from_millis(now)),
                    ));
                }
                ("expires_at", at - now)
            }
        };
        self.expiry_after(now, field, ms)
    }

    fn expiry_after(&self, now: u64, field: &'static str, mut ms: u64) -> Result<u64, Error> {
        if ms > self.max_ms {
            match self.over_max {
                OverMax::Clamp => ms = self.max_ms,
                OverMax::Reject => {
                    return Err(Error::invalid(
                        field,
                        format!(
                            "a duration of {} ms is longer than the maximum of {} ms",
                            ms, self.max_ms
                        ),
                    ))
                }
            }
        }
        match now.checked_add(ms) {
            Some(at) if at <= max_millis() => Ok(at),
            _ => Err(Error::invalid(
                field,
                "the expiry would fall after the latest representable instant",
            )),
        }
    }
}

/// A grant as the engine stores it: 48 bytes.
#[derive(Clone, Copy, Debug)]
struct GrantRec {
    expires: u64,
    /// The serial (high 47 bits) and the context kind (low 17 bits).
    serial_kind: u64,
    ctx_hi: u64,
    ctx_lo: u64,
    loc: PackedLocator,
    /// The next grant of the same pair.
    next: u32,
    /// The position in its wheel slot vector.
    pos: u32,
    /// The wheel slot vector (bits 0..9), the timer stage (bits 9..17: a
    /// warning index, `warnings.len()` for the expiry, [`FREE`] for a record
    /// on the free list) and the level (bit 17: edit).
    bits: u32,
}

/// The stage of a free record.
const FREE: u8 = u8::MAX;
const KIND_BITS: u32 = 17;
/// Serials stay below this (2^47: decades of shares at millions a second).
const MAX_SERIAL: u64 = 1 << (64 - KIND_BITS);
const BUCKET_MASK: u32 = 0x1ff;
const STAGE_SHIFT: u32 = 9;
const EDIT_BIT: u32 = 1 << 17;
/// Set on a grant created or changed by a batch not yet written: checks see
/// it as it was before the batch (see [`Group`]).
const PENDING_BIT: u32 = 1 << 18;
// The wheel's slot vectors fit in the bucket bits.
const _: () = assert!(MAX_BUCKET as u32 <= BUCKET_MASK);

impl GrantRec {
    fn new(expires: u64, serial: u64, ctx: (u32, u128), level: Level) -> Self {
        let mut rec = GrantRec {
            expires,
            serial_kind: (serial << KIND_BITS) | u64::from(ctx.0),
            ctx_hi: (ctx.1 >> 64) as u64,
            ctx_lo: ctx.1 as u64,
            loc: PackedLocator::from(Locator {
                uuid_entity: false,
                shard: 0,
                slot: 0,
            }),
            next: NIL,
            pos: 0,
            bits: 0,
        };
        rec.set_level(level);
        rec
    }

    fn serial(&self) -> u64 {
        self.serial_kind >> KIND_BITS
    }

    fn ctx_kind(&self) -> u32 {
        (self.serial_kind & ((1 << KIND_BITS) - 1)) as u32
    }

    fn has_context(&self, ctx: (u32, u128)) -> bool {
        self.ctx_kind() == ctx.0
            && self.ctx_hi == (ctx.1 >> 64) as u64
            && self.ctx_lo == ctx.1 as u64
    }

    fn level(&self) -> Level {
        if self.bits & EDIT_BIT != 0 {
            Level::Edit
        } else {
            Level::Read
        }
    }

    fn set_level(&mut self, level: Level) {
        self.bits = (self.bits & !EDIT_BIT) | if level == Level::Edit { EDIT_BIT } else { 0 };
    }

    fn stage(&self) -> u8 {
        (self.bits >> STAGE_SHIFT) as u8
    }

    fn set_stage(&mut self, stage: u8) {
        self.bits = (self.bits & !(0xff << STAGE_SHIFT)) | (u32::from(stage) << STAGE_SHIFT);
    }

    fn used(&self) -> bool {
        self.stage() != FREE
    }

    /// The grant as the API shows it, given its pair.
    fn grant(&self, user: UserId, entity: EntityId) -> Grant {
        Grant {
            id: GrantId {
                user,
                entity,
                context: self.context(),
                serial: self.serial(),
            },
            level: self.level(),
            expires_at: from_millis(self.expires),
        }
    }

    fn context(&self) -> Context {
        Context::unpack(
            self.ctx_kind(),
            (u128::from(self.ctx_hi) << 64) | u128::from(self.ctx_lo),
        )
    }
}

/// The grant records as the wheel sees them: a grant's timer is due at the
/// tick of its current stage.
struct GrantLinks<'a> {
    grants: &'a mut [GrantRec],
    timing: &'a Timing,
}

impl Links for GrantLinks<'_> {
    fn deadline(&self, id: u32) -> u64 {
        let rec = &self.grants[id as usize];
        self.timing
            .tick_of(self.timing.timer_at(rec.expires, rec.stage()))
    }

    fn place(&self, id: u32) -> Place {
        let rec = &self.grants[id as usize];
        Place {
            bucket: (rec.bits & BUCKET_MASK) as u16,
            pos: rec.pos,
        }
    }

    fn set_place(&mut self, id: u32, place: Place) {
        let rec = &mut self.grants[id as usize];
        rec.bits = (rec.bits & !BUCKET_MASK) | u32::from(place.bucket);
        rec.pos = place.pos;
    }
}

struct State {
    index: IndexWriter,
    timing: Timing,
    grants: Vec<GrantRec>,
    free: Vec<u32>,
    wheel: Wheel,
    next_serial: u64,
    held: usize,
    fired: Vec<u32>,
    /// Where changes are written (`None`: memory only).
    store: Option<Box<dyn Store>>,
    /// The sequence number of the last batch attempted.
    seq: u64,
    /// The latest engine time a batch has written (restarted engines never
    /// run behind it).
    clock_written: u64,
    /// Writes that wait for the next batch: expirations, revokes whose
    /// batch failed, history updates.
    lazy: Vec<Change>,
    /// The batch being made, while one is.
    group: Option<Group>,
}

/// What a batch under way needs to be undone, and to hide what it has not
/// yet written.
#[derive(Default)]
struct Group {
    /// Each touched pair's grants as they were before the batch.
    pairs: hashbrown::HashMap<(UserId, EntityId), Vec<GrantRec>>,
    /// For grants changed in the batch (by serial): the expiry and level
    /// checks go on seeing until it is written. New grants are not in it:
    /// checks do not see them at all.
    shown: hashbrown::HashMap<u64, (u64, Level)>,
    /// Grants that ended for good in the batch (revoked on request, or
    /// reclaimed as expired): undoing the batch does not bring them back.
    ended: hashbrown::HashSet<u64>,
}

/// What loading found besides the live grants.
#[derive(Default)]
struct Loaded {
    expired: Vec<Grant>,
    max_serial: u64,
    overflow: Option<u64>,
}

/// Restored state the request layer picks up: loaded from the store at
/// start, or handed back by a request layer that was dropped.
pub(crate) struct Restored {
    /// History records and rules.
    pub(crate) records: Records,
}

/// A change queued for the next batch; it returns what to do once the
/// batch is written (`None`) or has failed (`Some(reason)`).
type Job = Box<dyn FnOnce(&mut State, &mut Changes<'_>, u64) -> Finish + Send>;
type Finish = Box<dyn FnOnce(Option<&str>) + Send>;
/// More writes for a share's batch, made from its result under the lock.
pub(crate) type Then = Box<dyn FnOnce(&Result<Grant, Error>, DateTime<Utc>) -> Vec<Change> + Send>;

/// Changes waiting for a batch, and whether a caller is making one.
#[derive(Default)]
struct Queue {
    jobs: Vec<Job>,
    leading: bool,
}

struct Inner {
    reader: IndexReader,
    clock: ClockSource,
    high_water: AtomicU64,
    cfg: Config,
    state: Mutex<State>,
    hub: Hub,
    /// Whether the engine has a store.
    durable: bool,
    /// Changes waiting for the next batch.
    queue: Mutex<Queue>,
    /// Signalled when a batch is done.
    batch_done: parking_lot::Condvar,
    /// Loaded state, until the request layer takes it.
    restored: Mutex<Option<Restored>>,
    /// The request layer over this engine, while one lives: there is at
    /// most one, so every handle sees one history.
    layer: Mutex<Option<std::sync::Weak<dyn std::any::Any + Send + Sync>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Best effort: write what waits (expirations, history updates).
        let st = self.state.get_mut();
        let now = *self.high_water.get_mut();
        if st.lazy.is_empty() && now <= st.clock_written {
            return;
        }
        if let Some(mut store) = st.store.take() {
            let changes = std::mem::take(&mut st.lazy);
            let batch = Batch {
                seq: st.seq + 1,
                next_serial: st.next_serial,
                clock: from_millis(now),
                changes: &changes,
            };
            let _ = store.apply(&batch);
        }
    }
}

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

/// What a change collects while it holds the state lock.
struct Changes<'a> {
    events: Vec<Event>,
    /// Positions in `events` of events that stand even if the batch fails.
    kept_events: Vec<usize>,
    want: bool,
    cfg: &'a Config,
    reader: &'a IndexReader,
    /// Whether writes are collected (the engine has a store).
    durable: bool,
    /// Writes undone if the batch fails.
    writes: Vec<Change>,
    /// Writes that stand even if the batch fails: revokes, expirations.
    kept: Vec<Change>,
    /// Grants revoked on request.
    revoked: Vec<Grant>,
}

impl Changes<'_> {
    fn push(&mut self, make: impl FnOnce() -> Event) {
        if self.want {
            self.events.push(make());
        }
    }

    /// An event that stands even if the batch fails.
    fn push_kept(&mut self, make: impl FnOnce() -> Event) {
        if self.want {
            self.kept_events.push(self.events.len());
            self.events.push(make());
        }
    }

    /// A write undone if the batch fails.
    fn write(&mut self, make: impl FnOnce() -> Change) {
        if self.durable {
            self.writes.push(make());
        }
    }

    /// A write that stands even if the batch fails.
    fn keep(&mut self, make: impl FnOnce() -> Change) {
        if self.durable {
            self.kept.push(make());
        }
    }

    fn end(&mut self, grant: &Grant, at: u64, cause: EndCause) {
        let serial = grant.id.serial;
        let change = move || Change::End {
            serial,
            at: from_millis(at),
            cause,
        };
        match cause {
            EndCause::Replaced => self.write(change),
            EndCause::Revoked | EndCause::Expired => self.keep(change),
        }
    }
}

impl State {
    fn alloc(&mut self, rec: GrantRec) -> u32 {
        self.held += 1;
        if let Some(g) = self.free.pop() {
            self.grants[g as usize] = rec;
            g
        } else {
            self.grants.push(rec);
            // INVARIANT: fewer than 2^32 - 1 grants are held at once.
            (self.grants.len() - 1) as u32
        }
    }

    fn grant(&self, g: u32) -> Grant {
        let rec = &self.grants[g as usize];
        let (user, entity) = self.index.pair_at(rec.loc.into());
        rec.grant(user, entity)
    }

    fn summary_of(&self, head: u32) -> Summary {
        let mut s = Summary::default();
        let mut g = head;
        while g != NIL {
            let rec = &self.grants[g as usize];
            g = rec.next;
            let (expires, level) = if rec.bits & PENDING_BIT == 0 {
                (rec.expires, rec.level())
            } else {
                // Not yet written: checks see what was there before.
                match self
                    .group
                    .as_ref()
                    .and_then(|gr| gr.shown.get(&rec.serial()))
                {
                    Some(&(e, l)) => (e.min(rec.expires), l.min(rec.level())),
                    None => continue,
                }
            };
            s.read_until = s.read_until.max(expires);
            if level == Level::Edit {
                s.edit_until = s.edit_until.max(expires);
            }
        }
        s
    }

    /// Remember a pair's grants before a batch first touches them.
    fn note_pair(&mut self, user: &UserId, entity: &EntityId) {
        let Some(group) = &self.group else { return };
        if group.pairs.contains_key(&(*user, *entity)) {
            return;
        }
        let key = PairKey::new(user, entity);
        let saved = match self.index.find(&key, self.index.hash(&key)) {
            Some(loc) => self
                .pair_grants(loc)
                .into_iter()
                .map(|g| self.grants[g as usize])
                .collect(),
            None => Vec::new(),
        };
        if let Some(group) = &mut self.group {
            group.pairs.insert((*user, *entity), saved);
        }
    }

    /// Note that a grant ended for good in the batch under way.
    fn ended_for_good(&mut self, serial: u64) {
        if let Some(group) = &mut self.group {
            group.ended.insert(serial);
        }
    }

    /// The batch is written: show its grants.
    fn finalize(&mut self) {
        let Some(group) = self.group.take() else {
            return;
        };
        for (user, entity) in group.pairs.keys() {
            let key = PairKey::new(user, entity);
            if let Some(loc) = self.index.find(&key, self.index.hash(&key)) {
                let head = self.index.head(loc);
                let mut g = head;
                while g != NIL {
                    self.grants[g as usize].bits &= !PENDING_BIT;
                    g = self.grants[g as usize].next;
                }
                let summary = self.summary_of(head);
                self.index.update(loc, head, summary);
            }
        }
    }

    /// The batch failed: put every touched pair back as it was, except
    /// for grants that ended for good.
    fn rollback(&mut self, ch: &mut Changes<'_>, now: u64) {
        let Some(group) = self.group.take() else {
            return;
        };
        for ((user, entity), saved) in group.pairs {
            let key = PairKey::new(&user, &entity);
            let hash = self.index.hash(&key);
            if let Some(loc) = self.index.find(&key, hash) {
                for g in self.pair_grants(loc) {
                    self.detach(ch.reader, g);
                }
            }
            for rec in saved {
                if group.ended.contains(&rec.serial()) {
                    continue;
                }
                if rec.expires <= now {
                    // Came due meanwhile: reclaim it as expired.
                    let grant = rec.grant(user, entity);
                    ch.push_kept(|| Event::Expired(grant));
                    ch.end(&grant, rec.expires, EndCause::Expired);
                    continue;
                }
                let mut fresh = rec;
                fresh.next = NIL;
                fresh.bits &= EDIT_BIT;
                let g = self.alloc(fresh);
                let found = self.index.find(&key, hash);
                self.attach(ch.reader, &key, hash, found, g);
                let armed = self.arm(g, now);
                debug_assert!(armed, "a restored grant is live");
            }
        }
    }

    /// Load the grants a store holds, dropping those past their expiry.
    /// Two threads: the store decodes rows while this one indexes them.
    fn load(
        &mut self,
        reader: &IndexReader,
        store: &mut dyn Store,
        now: u64,
    ) -> Result<Restored, Error> {
        const CHUNK: usize = 4096;
        let (tx, rx) = mpsc::sync_channel::<Vec<Grant>>(8);
        let (read, acc) = std::thread::scope(|s| {
            let state = &mut *self;
            let inserter = s.spawn(move || {
                let mut acc = Loaded::default();
                for chunk in rx {
                    for grant in chunk {
                        state.load_one(reader, grant, now, &mut acc);
                    }
                }
                acc
            });
            let mut buf = Vec::with_capacity(CHUNK);
            let read = store.grants(&mut |grant| {
                buf.push(grant);
                if buf.len() == CHUNK {
                    // A send fails only if the inserter died; its panic is
                    // raised by the join below.
                    let _ = tx.send(std::mem::replace(&mut buf, Vec::with_capacity(CHUNK)));
                }
            });
            if !buf.is_empty() {
                let _ = tx.send(buf);
            }
            drop(tx);
            let acc = inserter
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p));
            (read, acc)
        });
        read?;
        if let Some(serial) = acc.overflow {
            return Err(Error::Load(crate::store::StoreError::Corrupt {
                what: format!("grant with serial {serial}"),
                reason: format!(
                    "beyond the engine's limits ({MAX_GRANTS} grants, serials below {MAX_SERIAL})"
                ),
            }));
        }
        let records = store.records()?;
        self.next_serial = self.next_serial.max(acc.max_serial + 1);
        for grant in &acc.expired {
            self.lazy.push(Change::End {
                serial: grant.id.serial,
                at: grant.expires_at,
                cause: EndCause::Expired,
            });
        }
        Ok(Restored { records })
    }

    /// Index one loaded grant (or set it aside as expired).
    fn load_one(&mut self, reader: &IndexReader, grant: Grant, now: u64, acc: &mut Loaded) {
        acc.max_serial = acc.max_serial.max(grant.id.serial);
        let expires = to_millis(grant.expires_at);
        if expires <= now {
            acc.expired.push(grant);
            return;
        }
        let key = PairKey::new(&grant.id.user, &grant.id.entity);
        let hash = self.index.hash(&key);
        let found = self.index.find(&key, hash);
        let ctx = grant.id.context.pack();
        if let Some(g) = found.and_then(|loc| self.find_context(loc, ctx)) {
            // Two live grants for one context (a damaged store): keep the
            // one that lasts longer, drop the other.
            let drop_serial = if self.grants[g as usize].expires >= expires {
                grant.id.serial
            } else {
                let serial = self.grants[g as usize].serial();
                self.detach(reader, g);
                serial
            };
            self.lazy.push(Change::End {
                serial: drop_serial,
                at: from_millis(now),
                cause: EndCause::Replaced,
            });
            if drop_serial == grant.id.serial {
                return;
            }
        }
        if self.held >= MAX_GRANTS || grant.id.serial >= MAX_SERIAL {
            acc.overflow.get_or_insert(grant.id.serial);
            return;
        }
        let g = self.alloc(GrantRec::new(expires, grant.id.serial, ctx, grant.level));
        let found = self.index.find(&key, hash);
        self.attach(reader, &key, hash, found, g);
        self.arm(g, now);
    }

    /// The grants of the pair at `loc`.
    fn pair_grants(&self, loc: Locator) -> Vec<u32> {
        let mut out = Vec::new();
        let mut g = self.index.head(loc);
        while g != NIL {
            out.push(g);
            g = self.grants[g as usize].next;
        }
        out
    }

    /// The grant of a pair with this context (live or not).
    fn find_context(&self, loc: Locator, ctx: (u32, u128)) -> Option<u32> {
        let mut g = self.index.head(loc);
        while g != NIL {
            let rec = &self.grants[g as usize];
            if rec.has_context(ctx) {
                return Some(g);
            }
            g = rec.next;
        }
        None
    }

    /// Find a live grant by id.
    fn find_id(&self, id: &GrantId, now: u64) -> Option<u32> {
        let key = PairKey::new(&id.user, &id.entity);
        let loc = self.index.find(&key, self.index.hash(&key))?;
        let g = self.find_context(loc, id.context.pack())?;
        let rec = &self.grants[g as usize];
        (rec.serial() == id.serial && rec.expires > now).then_some(g)
    }

    /// Put a new grant record into its pair (creating the pair).
    fn attach(
        &mut self,
        reader: &IndexReader,
        key: &PairKey,
        hash: u64,
        found: Option<Locator>,
        g: u32,
    ) {
        match found {
            Some(loc) => {
                let head = self.index.head(loc);
                self.grants[g as usize].next = head;
                self.grants[g as usize].loc = loc.into();
                let summary = self.summary_of(g);
                self.index.update(loc, g, summary);
            }
            None => {
                self.grants[g as usize].next = NIL;
                let summary = self.summary_of(g);
                let grants = &mut self.grants;
                let loc = self
                    .index
                    .insert(reader, key, hash, g, summary, &mut |head, loc| {
                        relocate(grants, head, loc)
                    });
                self.grants[g as usize].loc = loc.into();
            }
        }
    }

    /// Take a grant out of its pair, the wheel and the slab.
    fn detach(&mut self, reader: &IndexReader, g: u32) {
        let rec = self.grants[g as usize];
        let loc: Locator = rec.loc.into();
        self.wheel.cancel(
            &mut GrantLinks {
                grants: &mut self.grants,
                timing: &self.timing,
            },
            g,
        );
        let head = self.index.head(loc);
        let new_head = if head == g {
            rec.next
        } else {
            let mut p = head;
            while p != NIL && self.grants[p as usize].next != g {
                p = self.grants[p as usize].next;
            }
            if p != NIL {
                self.grants[p as usize].next = rec.next;
            }
            head
        };
        if new_head == NIL {
            let grants = &mut self.grants;
            self.index
                .remove(reader, loc, &mut |head, loc| relocate(grants, head, loc));
        } else {
            let summary = self.summary_of(new_head);
            self.index.update(loc, new_head, summary);
        }
        self.grants[g as usize].set_stage(FREE);
        self.grants[g as usize].next = NIL;
        self.free.push(g);
        self.held -= 1;
    }

    /// Arm a grant's next timer. Returns `false` if it is due already.
    fn arm(&mut self, g: u32, now: u64) -> bool {
        let (stage, _) = self.timing.next_timer(self.grants[g as usize].expires, now);
        self.grants[g as usize].set_stage(stage);
        self.wheel.schedule(
            &mut GrantLinks {
                grants: &mut self.grants,
                timing: &self.timing,
            },
            g,
        )
    }

    /// Set a live grant's expiry and level, re-arming its timer and
    /// refreshing its pair.
    fn change(&mut self, g: u32, expires: u64, level: Level, now: u64) {
        if self.group.is_some() {
            let rec = self.grants[g as usize];
            let (user, entity) = self.index.pair_at(rec.loc.into());
            self.note_pair(&user, &entity);
            if rec.bits & PENDING_BIT == 0 {
                if let Some(group) = &mut self.group {
                    group.shown.insert(rec.serial(), (rec.expires, rec.level()));
                }
                self.grants[g as usize].bits |= PENDING_BIT;
            }
        }
        self.wheel.cancel(
            &mut GrantLinks {
                grants: &mut self.grants,
                timing: &self.timing,
            },
            g,
        );
        let rec = &mut self.grants[g as usize];
        rec.expires = expires;
        rec.set_level(level);
        let loc: Locator = rec.loc.into();
        let armed = self.arm(g, now);
        debug_assert!(armed, "a live grant's timer is ahead of now");
        let head = self.index.head(loc);
        let summary = self.summary_of(head);
        self.index.update(loc, head, summary);
    }

    /// Reclaim what is due at `now`, raising warnings and expiries.
    fn advance(&mut self, reader: &IndexReader, ch: &mut Changes<'_>, now: u64) -> usize {
        let cfg = ch.cfg;
        let mut fired = std::mem::take(&mut self.fired);
        self.wheel.advance(
            &mut GrantLinks {
                grants: &mut self.grants,
                timing: &self.timing,
            },
            now / cfg.timing.tick_ms,
            &mut fired,
        );
        if fired.len() > 4096 {
            // Visit the records in memory order: a mass expiry is bound by
            // cache misses, and the events are sorted by time below anyway.
            fired.sort_unstable();
        }
        let mut expired = 0;
        let mut timed: Vec<(u64, u64, Event)> = Vec::new();
        for &g in &fired {
            let rec = self.grants[g as usize];
            let warning = usize::from(rec.stage()) < cfg.timing.warnings.len();
            if warning {
                if rec.expires > now && ch.want {
                    let at = rec
                        .expires
                        .saturating_sub(cfg.timing.warnings[usize::from(rec.stage())]);
                    let grant = self.grant(g);
                    timed.push((
                        at,
                        rec.serial(),
                        Event::ExpiringSoon {
                            grant,
                            warned_at: from_millis(at),
                        },
                    ));
                }
                if self.arm(g, now) {
                    continue;
                }
            }
            if ch.want || ch.durable {
                let grant = self.grant(g);
                ch.end(&grant, rec.expires, EndCause::Expired);
                if ch.want {
                    timed.push((rec.expires, rec.serial(), Event::Expired(grant)));
                }
            }
            self.detach(reader, g);
            expired += 1;
        }
        fired.clear();
        self.fired = fired;
        if !timed.is_empty() {
            timed.sort_by_key(|(at, serial, _)| (*at, *serial));
            ch.events.extend(timed.into_iter().map(|(_, _, e)| e));
        }
        expired
    }

    /// Revoke the given grants (all live), in serial order.
    fn revoke_all(&mut self, ch: &mut Changes<'_>, now: u64, mut gs: Vec<u32>) -> Vec<Grant> {
        let reader = ch.reader;
        gs.sort_by_key(|g| self.grants[*g as usize].serial());
        let mut out = Vec::with_capacity(gs.len());
        for g in gs {
            let grant = self.grant(g);
            ch.push_kept(|| Event::Revoked {
                grant,
                reason: RevokeReason::Requested,
            });
            if ch.durable {
                ch.end(&grant, now, EndCause::Revoked);
                ch.revoked.push(grant);
                self.ended_for_good(grant.id.serial);
            }
            self.detach(reader, g);
            out.push(grant);
        }
        out
    }

    /// The live grants of the pair at `loc`.
    fn live_at(&self, loc: Locator, now: u64) -> Vec<u32> {
        let mut gs = self.pair_grants(loc);
        gs.retain(|g| self.grants[*g as usize].expires > now);
        gs
    }

    /// The live grants of (user, entity).
    fn live_in_pair(&self, user: &UserId, entity: &EntityId, now: u64) -> Vec<u32> {
        let key = PairKey::new(user, entity);
        match self.index.find(&key, self.index.hash(&key)) {
            Some(loc) => self.live_at(loc, now),
            None => Vec::new(),
        }
    }

    /// Live grants on pairs accepted by `keep`.
    fn live_where(&self, now: u64, keep: impl Fn(&UserId, &EntityId) -> bool) -> Vec<u32> {
        let mut out = Vec::new();
        for (loc, user, entity) in self.index.pairs() {
            if keep(&user, &entity) {
                out.extend(self.live_at(loc, now));
            }
        }
        out
    }

    fn sorted_by_expiry(&self, mut gs: Vec<u32>) -> Vec<Grant> {
        gs.sort_by_key(|g| {
            let r = &self.grants[*g as usize];
            (r.expires, r.serial())
        });
        gs.into_iter().map(|g| self.grant(g)).collect()
    }
}

/// Record a pair's new place in each of its grants.
fn relocate(grants: &mut [GrantRec], head: u32, loc: Locator) {
    let loc = PackedLocator::from(loc);
    let mut g = head;
    while g != NIL {
        let rec = &mut grants[g as usize];
        rec.loc = loc;
        g = rec.next;
    }
}

impl Engine {
    /// Start configuring an engine.
    pub fn builder() -> EngineBuilder {
        EngineBuilder::default()
    }

    /// An engine with the default settings and the system clock.
    pub fn new() -> Engine {
        match EngineBuilder::default().build() {
            Ok(e) => e,
            // INVARIANT: the default settings are valid (see the tests).
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
    /// no lock, no allocation, no I/O.
    #[inline]
    pub fn can_read(&self, user: &UserId, entity: &EntityId) -> bool {
        let s = self.inner.reader.summary(user, entity);
        self.now_ms() < s.read_until
    }

    /// May `user` edit `entity` now? Same cost as [`can_read`](Self::can_read).
    #[inline]
    pub fn can_edit(&self, user: &UserId, entity: &EntityId) -> bool {
        let s = self.inner.reader.summary(user, entity);
        self.now_ms() < s.edit_until
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
        let s = self.inner.reader.summary(user, entity);
        let now = self.now_ms();
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

    /// A fresh change record for `locked` and the batch leader.
    fn changes(&self) -> Changes<'_> {
        let inner = &*self.inner;
        Changes {
            events: Vec::new(),
            kept_events: Vec::new(),
            want: inner.hub.wanted(),
            cfg: &inner.cfg,
            reader: &inner.reader,
            durable: inner.durable,
            writes: Vec::new(),
            kept: Vec::new(),
            revoked: Vec::new(),
        }
    }

    /// Run a change under the state lock (after reclaiming what is due),
    /// then deliver its events. Memory-only engines.
    fn with_state<T>(&self, f: impl FnOnce(&mut State, &mut Changes<'_>, u64) -> T) -> T {
        self.locked(|st, ch, now| {
            st.advance(ch.reader, ch, now);
            f(st, ch, now)
        })
    }

    /// Run `f` under the state lock, then deliver the events it raised.
    /// Writes it makes (expirations) wait for the next batch.
    fn locked<T>(&self, f: impl FnOnce(&mut State, &mut Changes<'_>, u64) -> T) -> T {
        let inner = &*self.inner;
        let out = {
            let mut st = inner.state.lock();
            let now = self.now_ms();
            let mut ch = self.changes();
            let out = f(&mut st, &mut ch, now);
            // INVARIANT: every held grant has exactly one timer.
            debug_assert_eq!(st.wheel.len(), st.held);
            if ch.durable {
                st.lazy.append(&mut ch.kept);
                st.lazy.append(&mut ch.writes);
            }
            inner.hub.enqueue(&mut ch.events);
            out
        };
        inner.hub.deliver();
        out
    }

    /// Run a change: at once on a memory-only engine; as part of the next
    /// batch on a durable one, returning once the batch is written.
    fn run<T: Send + 'static>(
        &self,
        op: impl FnOnce(&mut State, &mut Changes<'_>, u64) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        if !self.inner.durable {
            return self.with_state(op);
        }
        let slot: Arc<Mutex<Option<Result<T, Error>>>> = Arc::default();
        let out = slot.clone();
        let job: Job = Box::new(move |st, ch, now| {
            let result = op(st, ch, now);
            let revoked = std::mem::take(&mut ch.revoked);
            Box::new(move |failure: Option<&str>| {
                let result = match (failure, result) {
                    (None, r) | (Some(_), r @ Err(_)) => r,
                    (Some(reason), Ok(_)) if revoked.is_empty() => Err(Error::Store {
                        reason: reason.to_string(),
                    }),
                    (Some(reason), Ok(_)) => Err(Error::NotDurable {
                        revoked,
                        reason: reason.to_string(),
                    }),
                };
                *out.lock() = Some(result);
            })
        });
        // Leader and followers: one caller at a time makes a batch of all
        // the changes queued; the others wait for it, and one of those
        // whose change missed it leads the next.
        let inner = &*self.inner;
        let mut queue = inner.queue.lock();
        queue.jobs.push(job);
        loop {
            if let Some(result) = slot.lock().take() {
                return result;
            }
            if queue.leading {
                inner.batch_done.wait(&mut queue);
                continue;
            }
            queue.leading = true;
            drop(queue);
            self.commit();
            queue = inner.queue.lock();
            queue.leading = false;
            inner.batch_done.notify_all();
            drop(queue);
            // Outside the leadership: a subscriber may make changes.
            inner.hub.deliver();
            queue = inner.queue.lock();
            // INVARIANT: our change was queued before we led, so the batch
            // we made carried it and its result is in the slot.
        }
    }

    /// Take the state lock and, if changes are queued, run them all and
    /// write them as one batch (group commit: while a batch is written the
    /// callers that arrive queue their changes for the next one).
    fn commit(&self) {
        let inner = &*self.inner;
        {
            let mut guard = inner.state.lock();
            let st = &mut *guard;
            let jobs = std::mem::take(&mut inner.queue.lock().jobs);
            if jobs.is_empty() {
                return;
            }
            let now = self.now_ms();
            let mut base = self.changes();
            st.advance(&inner.reader, &mut base, now);
            let mut events = std::mem::take(&mut base.events);
            let mut batch = std::mem::take(&mut st.lazy);
            batch.append(&mut base.kept);
            st.group = Some(Group::default());
            // Per change: its events, which of them stand, and the range of
            // its undoable writes in the batch.
            let mut done = Vec::with_capacity(jobs.len());
            for job in jobs {
                let mut ch = self.changes();
                let finish = job(st, &mut ch, now);
                batch.append(&mut ch.kept);
                let start = batch.len();
                batch.append(&mut ch.writes);
                done.push((finish, ch.events, ch.kept_events, start..batch.len()));
            }
            // An empty batch still records that time moved on: a restart
            // must not run the clock back.
            let result = if batch.is_empty() && now <= st.clock_written {
                Ok(())
            } else {
                st.seq += 1;
                let b = Batch {
                    seq: st.seq,
                    next_serial: st.next_serial,
                    clock: from_millis(now),
                    changes: &batch,
                };
                match &mut st.store {
                    Some(store) => store.apply(&b),
                    None => Ok(()),
                }
            };
            let failure = match result {
                Ok(()) => {
                    st.clock_written = st.clock_written.max(now);
                    st.finalize();
                    None
                }
                Err(e) => {
                    let mut ch = self.changes();
                    st.rollback(&mut ch, now);
                    // What stands waits for the next batch.
                    let mut undo = vec![false; batch.len()];
                    for (_, _, _, range) in &done {
                        undo[range.clone()].iter_mut().for_each(|u| *u = true);
                    }
                    st.lazy = batch
                        .into_iter()
                        .zip(undo)
                        .filter_map(|(c, u)| (!u).then_some(c))
                        .collect();
                    st.lazy.append(&mut ch.kept);
                    // Only the events that stand go out.
                    for (_, evs, kept, _) in &mut done {
                        let mut keep = vec![false; evs.len()];
                        kept.iter().for_each(|i| keep[*i] = true);
                        *evs = std::mem::take(evs)
                            .into_iter()
                            .zip(keep)
                            .filter_map(|(e, k)| k.then_some(e))
                            .collect();
                    }
                    done.push((Box::new(|_| {}), ch.events, Vec::new(), 0..0));
                    Some(e.to_string())
                }
            };
            // INVARIANT: every held grant has exactly one timer.
            debug_assert_eq!(st.wheel.len(), st.held);
            for (finish, evs, _, _) in done {
                events.extend(evs);
                // Before the lock goes: waiters read their result under it.
                finish(failure.as_deref());
            }
            inner.hub.enqueue(&mut events);
        }
    }

    /// Write what waits for the next batch (expirations, revokes whose
    /// batch failed, history updates) now. A no-op without a store.
    ///
    /// ```
    /// use grantwheel::store::MemoryStore;
    /// use grantwheel::Engine;
    /// let engine = Engine::builder().store(MemoryStore::new()).build().unwrap();
    /// engine.flush().unwrap();
    /// ```
    pub fn flush(&self) -> Result<(), Error> {
        if !self.inner.durable {
            return Ok(());
        }
        // The batch carries what waits; an empty change is enough.
        self.run(|_, _, _| Ok(()))
    }

    /// Whether the driver should write: changes wait, or the time moved on
    /// by a second since it was last written (so that after a crash and a
    /// clock set back, the engine's time runs at most a second behind).
    fn flush_due(&self) -> bool {
        if !self.inner.durable {
            return false;
        }
        let now = self.now_ms();
        let st = self.inner.state.lock();
        !st.lazy.is_empty() || now >= st.clock_written.saturating_add(1000)
    }

    /// Whether the engine writes its state to a store.
    pub fn is_durable(&self) -> bool {
        self.inner.durable
    }

    /// Give `user` access to `entity` at `level` until `expiry`, through
    /// `context`. Returns the grant as it now stands.
    ///
    /// A duration that is zero or negative, longer than the maximum (unless
    /// configured to clamp), or that overflows is refused with
    /// [`Error::Invalid`] naming `duration` or `expires_at`. When the (user,
    /// entity, context) already has a live grant, the [`RepeatShare`] rule
    /// decides. Grants through other contexts are untouched.
    ///
    /// With a store, the grant is written before any check sees it and
    /// before this returns; if the store fails the call returns
    /// [`Error::Store`] and nothing changed.
    ///
    /// ```
    /// use grantwheel::{Context, Engine, EntityId, Expiry, Level, UserId};
    /// use chrono::Duration;
    /// use uuid::Uuid;
    ///
    /// let engine = Engine::new();
    /// let user: UserId = "0203f172-8642-11e7-9bed-069b743e848f".parse().unwrap();
    /// let activity = Context::Activity("f2dbf1d5-bbab-418b-bddc-4c92ecdef214".parse::<Uuid>().unwrap());
    /// let grant = engine
    ///     .share(user, EntityId::lead(869196), activity, Level::Edit, Expiry::After(Duration::minutes(30)))
    ///     .unwrap();
    /// assert!(engine.can_edit(&user, &EntityId::lead(869196)));
    /// assert_eq!(grant.level, Level::Edit);
    /// ```
    pub fn share(
        &self,
        user: UserId,
        entity: EntityId,
        context: Context,
        level: Level,
        expiry: Expiry,
    ) -> Result<Grant, Error> {
        let spec = ShareSpec {
            user,
            entity,
            context,
            level,
            expiry,
        };
        self.run(move |st, ch, now| share_op(st, ch, now, &spec))
    }

    /// Share several grants as one batch: one lock, and with a store one
    /// transaction. Each item succeeds or fails on its own, as
    /// [`share`](Self::share) would; if the store fails, every item fails
    /// with [`Error::Store`].
    ///
    /// ```
    /// use grantwheel::{Context, Engine, EntityId, Expiry, Level, ShareSpec, UserId};
    /// let engine = Engine::new();
    /// let items: Vec<ShareSpec> = (0..3)
    ///     .map(|i| ShareSpec::new(UserId::from_u128(i), EntityId::lead(7), Level::Read))
    ///     .collect();
    /// let results = engine.share_many(items);
    /// assert!(results.iter().all(|r| r.is_ok()));
    /// assert_eq!(engine.len(), 3);
    /// ```
    pub fn share_many(&self, items: Vec<ShareSpec>) -> Vec<Result<Grant, Error>> {
        // A closure that captures nothing: boxing it allocates nothing.
        let none = |_: &Result<Grant, Error>, _: DateTime<Utc>| Vec::new();
        self.share_many_then(
            items
                .into_iter()
                .map(|spec| (spec, Box::new(none) as Then))
                .collect(),
        )
    }

    /// [`share`](Self::share), with more writes for the same batch, made
    /// from the result under the lock (the request layer's history).
    pub(crate) fn share_then(
        &self,
        spec: ShareSpec,
        then: impl FnOnce(&Result<Grant, Error>, DateTime<Utc>) -> Vec<Change> + Send + 'static,
    ) -> Result<Grant, Error> {
        self.run(move |st, ch, now| share_op_then(st, ch, now, &spec, then))
    }

    /// [`share_many`](Self::share_many), each item with its own more
    /// writes for the same batch.
    pub(crate) fn share_many_then(
        &self,
        items: Vec<(ShareSpec, Then)>,
    ) -> Vec<Result<Grant, Error>> {
        let n = items.len();
        if n == 0 {
            return Vec::new();
        }
        let out = self.run(move |st, ch, now| {
            Ok(items
                .into_iter()
                .map(|(spec, then)| share_op_then(st, ch, now, &spec, then))
                .collect::<Vec<_>>())
        });
        match out {
            Ok(results) => results,
            Err(e) => vec![Err(e); n],
        }
    }

    /// Queue writes for the next batch without waiting for it.
    pub(crate) fn write_later(&self, changes: impl IntoIterator<Item = Change>) {
        if self.inner.durable {
            self.inner.state.lock().lazy.extend(changes);
        }
    }

    /// Write changes now, in the next batch.
    pub(crate) fn write_now(&self, changes: Vec<Change>) -> Result<(), Error> {
        if !self.inner.durable {
            return Ok(());
        }
        self.run(move |_, ch, _| {
            ch.writes.extend(changes);
            Ok(())
        })
    }

    /// The request layer attached to this engine: `Err` with the living
    /// one, or `Ok` with one that `make` builds from the restored state
    /// (taken) and that is attached from now on.
    pub(crate) fn attach_layer<T: std::any::Any + Send + Sync>(
        &self,
        make: impl FnOnce(Option<Restored>) -> Arc<T>,
    ) -> Result<Arc<T>, Arc<T>> {
        let mut slot = self.inner.layer.lock();
        // Kept past the lock: dropping the last handle of a layer runs its
        // drop, which hands state back to this engine.
        let living = slot.as_ref().and_then(std::sync::Weak::upgrade);
        if let Some(Ok(existing)) = living.clone().map(|l| l.downcast::<T>()) {
            drop(slot);
            return Err(existing);
        }
        let restored = self.inner.restored.lock().take();
        let layer = make(restored);
        let any: Arc<dyn std::any::Any + Send + Sync> = layer.clone();
        *slot = Some(Arc::downgrade(&any));
        drop(slot);
        drop(living);
        Ok(layer)
    }

    /// Keep a dropped request layer's state for the next one.
    pub(crate) fn hand_back(&self, restored: Restored) {
        *self.inner.restored.lock() = Some(restored);
    }

    /// Those of `ids` the engine no longer holds. A grant past its expiry
    /// but not yet reclaimed is still held: its expiry event is to come.
    pub(crate) fn not_held(&self, ids: Vec<GrantId>) -> Vec<GrantId> {
        let st = self.inner.state.lock();
        ids.into_iter()
            .filter(|id| st.find_id(id, 0).is_none())
            .collect()
    }

    /// Set a live grant's expiry (extend or shorten it), atomically: no
    /// check ever sees the grant missing. The new expiry must be after now
    /// and within the maximum duration from now. With a store, a later
    /// expiry shows only once written; an earlier one shows at once.
    ///
    /// ```
    /// use grantwheel::{Context, Engine, EntityId, Expiry, Level, UserId};
    /// use chrono::Duration;
    /// let engine = Engine::new();
    /// let g = engine.share(UserId::from_u128(1), EntityId::lead(1), Context::Direct, Level::Read, Expiry::After(Duration::hours(1))).unwrap();
    /// let longer = engine.set_expiry(&g.id, Expiry::After(Duration::days(2))).unwrap();
    /// assert!(longer.expires_at > g.expires_at);
    /// ```
    pub fn set_expiry(&self, id: &GrantId, expiry: Expiry) -> Result<Grant, Error> {
        let id = *id;
        self.run(move |st, ch, now| {
            let g = st.find_id(&id, now).ok_or(Error::NotLive(id))?;
            let expires = ch.cfg.resolve(now, expiry)?;
            Ok(change_expiry(st, ch, g, expires, now))
        })
    }

    /// Move a live grant's expiry by `by` (negative shortens it). The result
    /// must stay after now and within the maximum duration from now;
    /// otherwise [`Error::Invalid`] names `by`.
    ///
    /// ```
    /// use grantwheel::{Context, Engine, EntityId, Expiry, Level, UserId};
    /// use chrono::Duration;
    /// let engine = Engine::new();
    /// let g = engine.share(UserId::from_u128(1), EntityId::lead(1), Context::Direct, Level::Read, Expiry::After(Duration::hours(2))).unwrap();
    /// let shorter = engine.extend(&g.id, Duration::hours(-1)).unwrap();
    /// assert_eq!(g.expires_at - shorter.expires_at, Duration::hours(1));
    /// assert_eq!(engine.extend(&g.id, Duration::hours(-5)).unwrap_err().field(), Some("by"));
    /// ```
    pub fn extend(&self, id: &GrantId, by: chrono::Duration) -> Result<Grant, Error> {
        let id = *id;
        self.run(move |st, ch, now| {
            let g = st.find_id(&id, now).ok_or(Error::NotLive(id))?;
            let old = st.grants[g as usize].expires;
            let by_ms = by.num_milliseconds();
            let target = if by_ms >= 0 {
                old.checked_add(by_ms.unsigned_abs())
            } else {
                old.checked_sub(by_ms.unsigned_abs())
            };
            let expires = match target {
                Some(t) if t > now => ch.cfg.expiry_after(now, "by", t - now)?,
                Some(_) => {
                    return Err(Error::invalid(
                        "by",
                        format!("`{by}` would end the grant at or before now; revoke it instead"),
                    ))
                }
                None => {
                    return Err(Error::invalid(
                        "by",
                        format!("`{by}` moves the expiry out of the representable range"),
                    ))
                }
            };
            Ok(change_expiry(st, ch, g, expires, now))
        })
    }

    /// Revoke one live grant by id. Returns it as it was.
    ///
    /// Every check says no from the moment the revoke is decided. With a
    /// store, if the revoke cannot be written the call returns
    /// [`Error::NotDurable`]: the grant stays revoked, and the revoke is
    /// written with the next batch that succeeds.
    ///
    /// ```
    /// use grantwheel::{Context, Engine, EntityId, Error, Expiry, Level, UserId};
    /// let engine = Engine::new();
    /// let (u, e) = (UserId::from_u128(1), EntityId::lead(1));
    /// let g = engine.share(u, e, Context::Direct, Level::Read, Expiry::Default).unwrap();
    /// engine.revoke(&g.id).unwrap();
    /// assert!(!engine.can_read(&u, &e));
    /// assert!(matches!(engine.revoke(&g.id), Err(Error::NotLive(_))));
    /// ```
    pub fn revoke(&self, id: &GrantId) -> Result<Grant, Error> {
        let id = *id;
        self.run(move |st, ch, now| {
            let g = st.find_id(&id, now).ok_or(Error::NotLive(id))?;
            Ok(st.revoke_all(ch, now, vec![g]).remove(0))
        })
    }

    /// Revoke the live grant of (user, entity) through `context`, if any.
    /// Grants through other contexts stay. Store failures as for
    /// [`revoke`](Self::revoke).
    pub fn revoke_context(
        &self,
        user: &UserId,
        entity: &EntityId,
        context: &Context,
    ) -> Result<Option<Grant>, Error> {
        let (user, entity, context) = (*user, *entity, *context);
        self.run(move |st, ch, now| Ok(revoke_context_op(st, ch, now, &user, &entity, &context)))
    }

    /// [`revoke_context`](Self::revoke_context), with more writes for the
    /// same batch made from the result under the lock.
    pub(crate) fn revoke_context_then(
        &self,
        user: UserId,
        entity: EntityId,
        context: Context,
        then: impl FnOnce(Option<&Grant>, DateTime<Utc>) -> Vec<Change> + Send + 'static,
    ) -> Result<Option<Grant>, Error> {
        self.run(move |st, ch, now| {
            let result = revoke_context_op(st, ch, now, &user, &entity, &context);
            if ch.durable {
                let more = then(result.as_ref(), from_millis(now));
                ch.kept.extend(more);
            }
            Ok(result)
        })
    }

    /// Revoke every live grant of (user, entity), whatever the context.
    pub fn revoke_pair(&self, user: &UserId, entity: &EntityId) -> Result<Vec<Grant>, Error> {
        let (user, entity) = (*user, *entity);
        self.run(move |st, ch, now| {
            let gs = st.live_in_pair(&user, &entity, now);
            Ok(st.revoke_all(ch, now, gs))
        })
    }

    /// Revoke every live grant of `user`. Scans the index: O(pairs).
    pub fn revoke_user(&self, user: &UserId) -> Result<Vec<Grant>, Error> {
        let user = *user;
        self.run(move |st, ch, now| {
            let gs = st.live_where(now, |u, _| *u == user);
            Ok(st.revoke_all(ch, now, gs))
        })
    }

    /// Revoke every live grant on `entity`. Scans the index: O(pairs).
    pub fn revoke_entity(&self, entity: &EntityId) -> Result<Vec<Grant>, Error> {
        let entity = *entity;
        self.run(move |st, ch, now| {
            let gs = st.live_where(now, |_, e| *e == entity);
            Ok(st.revoke_all(ch, now, gs))
        })
    }

    /// Revoke every live grant given through `context` (for example all
    /// that one activity shared). Scans the grants: O(grants).
    pub fn revoke_from_context(&self, context: &Context) -> Result<Vec<Grant>, Error> {
        let (kind, id) = context.pack();
        self.run(move |st, ch, now| {
            let gs = st
                .grants
                .iter()
                .enumerate()
                .filter(|(_, r)| {
                    r.used()
                        && r.expires > now
                        && r.ctx_kind() == kind
                        && r.ctx_hi == (id >> 64) as u64
                        && r.ctx_lo == id as u64
                })
                .map(|(g, _)| g as u32)
                .collect();
            Ok(st.revoke_all(ch, now, gs))
        })
    }

    /// Read the state under the lock (after reclaiming what is due).
    fn read_state<T>(&self, f: impl FnOnce(&State, u64) -> T) -> T {
        self.with_state(|st, _, now| f(st, now))
    }

    /// The live grants of (user, entity), by expiry.
    pub fn grants_for(&self, user: &UserId, entity: &EntityId) -> Vec<Grant> {
        self.read_state(|st, now| st.sorted_by_expiry(st.live_in_pair(user, entity, now)))
    }

    /// The live grants on `entity`, by expiry. Scans the index: O(pairs).
    pub fn grants_on(&self, entity: &EntityId) -> Vec<Grant> {
        self.read_state(|st, now| st.sorted_by_expiry(st.live_where(now, |_, e| e == entity)))
    }

    /// The live grants of `user`, by expiry. Scans the index: O(pairs).
    pub fn grants_of(&self, user: &UserId) -> Vec<Grant> {
        self.read_state(|st, now| st.sorted_by_expiry(st.live_where(now, |u, _| u == user)))
    }

    /// The live grants that expire within `window` from now, by expiry.
    /// Scans the grants: O(grants).
    ///
    /// ```
    /// use grantwheel::{Context, Engine, EntityId, Expiry, Level, UserId};
    /// use chrono::Duration;
    /// let engine = Engine::new();
    /// let u = UserId::from_u128(1);
    /// engine.share(u, EntityId::lead(1), Context::Direct, Level::Read, Expiry::After(Duration::days(3))).unwrap();
    /// engine.share(u, EntityId::lead(2), Context::Direct, Level::Read, Expiry::After(Duration::hours(2))).unwrap();
    /// let soon = engine.expiring_within(Duration::days(1));
    /// assert_eq!(soon.len(), 1);
    /// assert_eq!(soon[0].id.entity, EntityId::lead(2));
    /// ```
    pub fn expiring_within(&self, window: chrono::Duration) -> Vec<Grant> {
        let window = u64::try_from(window.num_milliseconds()).unwrap_or(0);
        self.read_state(|st, now| {
            let until = now.saturating_add(window);
            let gs = st
                .grants
                .iter()
                .enumerate()
                .filter(|(_, r)| r.used() && r.expires > now && r.expires <= until)
                .map(|(g, _)| g as u32)
                .collect();
            st.sorted_by_expiry(gs)
        })
    }

    /// Reclaim every grant whose expiry has passed (to the tick), raise
    /// the due expiring-soon warnings, and return how many grants expired.
    /// Checks never depend on it; call it (or run [`start_driver`]) to free
    /// memory and get `Expired` events.
    ///
    /// [`start_driver`]: Self::start_driver
    pub fn advance(&self) -> usize {
        let reader = &self.inner.reader;
        self.locked(|st, ch, now| st.advance(reader, ch, now))
    }

    /// When [`advance`](Self::advance) next has work to do: never later than
    /// the next expiry or warning (exact within 64 ticks, earlier for
    /// farther ones). `None` when no grant is held.
    pub fn next_expiry(&self) -> Option<DateTime<Utc>> {
        let st = self.inner.state.lock();
        st.wheel
            .next_wakeup()
            .map(|t| from_millis(t.saturating_mul(self.inner.cfg.timing.tick_ms)))
    }

    /// Grants held: live, or expired and not yet reclaimed.
    pub fn len(&self) -> usize {
        self.inner.state.lock().held
    }

    /// Whether no grant is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The memory held for grants.
    pub fn footprint(&self) -> Footprint {
        let st = self.inner.state.lock();
        Footprint {
            grants: st.held,
            pairs: st.index.len(),
            index_bytes: st.index.table_bytes(),
            grant_bytes: st.grants.len() * std::mem::size_of::<GrantRec>(),
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

    /// Start a thread that calls [`advance`](Self::advance) whenever
    /// something is due, and at least every `max_sleep` (so a clock that
    /// jumps is noticed). It stops when the returned [`Driver`] is stopped
    /// or dropped.
    ///
    /// ```
    /// use grantwheel::Engine;
    /// let engine = Engine::new();
    /// let driver = engine.start_driver(std::time::Duration::from_millis(50));
    /// driver.stop();
    /// ```
    pub fn start_driver(&self, max_sleep: std::time::Duration) -> Driver {
        let (tx, rx) = mpsc::channel::<()>();
        let engine = self.clone();
        let max_sleep = max_sleep.max(std::time::Duration::from_millis(1));
        let handle = std::thread::Builder::new()
            .name("grantwheel-driver".into())
            .spawn(move || loop {
                engine.advance();
                if engine.flush_due() {
                    // Expirations and history updates, and the time: written
                    // now rather than with the next change. A failure is
                    // retried on the next round.
                    let _ = engine.flush();
                }
                let wait = engine
                    .next_expiry()
                    .map(|t| (t - engine.now()).to_std().unwrap_or_default())
                    .unwrap_or(max_sleep)
                    .clamp(std::time::Duration::from_millis(1), max_sleep);
                match rx.recv_timeout(wait) {
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    _ => return,
                }
            });
        Driver {
            stop: Some(tx),
            handle: handle.ok(),
        }
    }
}

impl Default for Engine {
    fn default() -> Self {
        Engine::new()
    }
}

fn change_expiry(st: &mut State, ch: &mut Changes<'_>, g: u32, expires: u64, now: u64) -> Grant {
    let rec = st.grants[g as usize];
    if rec.expires != expires {
        st.change(g, expires, rec.level(), now);
        let grant = st.grant(g);
        ch.write(|| Change::Put(grant));
        ch.push(|| Event::Extended {
            grant,
            previous_expiry: from_millis(rec.expires),
        });
    }
    st.grant(g)
}

#[inline(always)]
fn share_op(
    st: &mut State,
    ch: &mut Changes<'_>,
    now: u64,
    spec: &ShareSpec,
) -> Result<Grant, Error> {
    let ShareSpec {
        user,
        entity,
        context,
        level,
        expiry,
    } = *spec;
    let reader = ch.reader;
    let expires = ch.cfg.resolve(now, expiry)?;
    st.note_pair(&user, &entity);
    let key = PairKey::new(&user, &entity);
    let ctx = context.pack();
    let hash = st.index.hash(&key);
    let mut found = st.index.find(&key, hash);
    let existing = found.and_then(|loc| st.find_context(loc, ctx));
    if let Some(g) = existing {
        let rec = st.grants[g as usize];
        if rec.expires <= now {
            // Past its expiry, not yet reclaimed: reclaim it now.
            let grant = st.grant(g);
            ch.push_kept(|| Event::Expired(grant));
            ch.end(&grant, rec.expires, EndCause::Expired);
            st.ended_for_good(grant.id.serial);
            st.detach(reader, g);
            found = st.index.find(&key, hash);
        } else {
            match ch.cfg.repeat {
                RepeatShare::Reject => {
                    return Err(Error::AlreadyShared {
                        existing: st.grant(g),
                    })
                }
                RepeatShare::KeepLater => {
                    let (exp, lvl) = (rec.expires.max(expires), rec.level().max(level));
                    if (exp, lvl) != (rec.expires, rec.level()) {
                        st.change(g, exp, lvl, now);
                        let grant = st.grant(g);
                        ch.write(|| Change::Put(grant));
                        ch.push(|| Event::Extended {
                            grant,
                            previous_expiry: from_millis(rec.expires),
                        });
                    }
                    return Ok(st.grant(g));
                }
                RepeatShare::Replace => {
                    let grant = st.grant(g);
                    ch.push(|| Event::Revoked {
                        grant,
                        reason: RevokeReason::Replaced,
                    });
                    ch.end(&grant, now, EndCause::Replaced);
                    st.detach(reader, g);
                    found = st.index.find(&key, hash);
                }
            }
        }
    }
    if st.held >= MAX_GRANTS || st.next_serial >= MAX_SERIAL {
        return Err(Error::Full { limit: MAX_GRANTS });
    }
    let serial = st.next_serial;
    st.next_serial += 1;
    let mut rec = GrantRec::new(expires, serial, ctx, level);
    if st.group.is_some() {
        // Hidden from checks until the batch is written.
        rec.bits |= PENDING_BIT;
    }
    let g = st.alloc(rec);
    st.attach(reader, &key, hash, found, g);
    let armed = st.arm(g, now);
    debug_assert!(armed, "a new grant's timer is ahead of now");
    let grant = Grant {
        id: GrantId {
            user,
            entity,
            context,
            serial,
        },
        level,
        expires_at: from_millis(expires),
    };
    ch.write(|| Change::Put(grant));
    ch.push(|| Event::Granted(grant));
    Ok(grant)
}

/// A share, then the caller's writes for the same batch, made from its
/// result (durable engines only).
fn share_op_then(
    st: &mut State,
    ch: &mut Changes<'_>,
    now: u64,
    spec: &ShareSpec,
    then: impl FnOnce(&Result<Grant, Error>, DateTime<Utc>) -> Vec<Change>,
) -> Result<Grant, Error> {
    let result = share_op(st, ch, now, spec);
    if ch.durable {
        let more = then(&result, from_millis(now));
        ch.writes.extend(more);
    }
    result
}

fn revoke_context_op(
    st: &mut State,
    ch: &mut Changes<'_>,
    now: u64,
    user: &UserId,
    entity: &EntityId,
    context: &Context,
) -> Option<Grant> {
    let key = PairKey::new(user, entity);
    let loc = st.index.find(&key, st.index.hash(&key))?;
    let g = st.find_context(loc, context.pack())?;
    if st.grants[g as usize].expires <= now {
        return None;
    }
    st.revoke_all(ch, now, vec![g]).pop()
}

/// The background thread started by [`Engine::start_driver`]. Dropping it
/// stops the thread, so keep it for as long as the engine should run by
/// itself.
///
/// Dropping it at once is a warning (an error under
/// `#![deny(unused_must_use)]`):
///
/// ```compile_fail
/// #![deny(unused_must_use)]
/// let engine = grantwheel::Engine::new();
/// engine.start_driver(std::time::Duration::from_millis(10));
/// ```
#[derive(Debug)]
#[must_use = "the driver stops when this handle is dropped; keep it (`let _driver = ...`) for as long as the engine should run"]
pub struct Driver {
    stop: Option<mpsc::Sender<()>>,
    handle: Option<JoinHandle<()>>,
}

impl Driver {
    /// Stop the thread and wait for it to finish.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        drop(self.stop.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_stay_small() {
        // Memory per grant is a headline figure: keep an eye on it.
        assert_eq!(std::mem::size_of::<GrantRec>(), 48);
    }

    #[test]
    fn record_fields_pack_and_unpack() {
        let ctx = Context::Other {
            kind: u16::MAX,
            id: uuid::Uuid::from_u128(7),
        };
        let mut rec = GrantRec::new(99, MAX_SERIAL - 1, ctx.pack(), Level::Edit);
        assert_eq!(
            (rec.serial(), rec.context(), rec.level()),
            (MAX_SERIAL - 1, ctx, Level::Edit)
        );
        rec.set_stage(FREE - 1);
        rec.set_level(Level::Read);
        let mut links = GrantLinks {
            grants: std::slice::from_mut(&mut rec),
            timing: &Timing {
                tick_ms: 10,
                warnings: Box::new([]),
            },
        };
        links.set_place(
            0,
            Place {
                bucket: MAX_BUCKET,
                pos: u32::MAX,
            },
        );
        assert_eq!(
            links.place(0),
            Place {
                bucket: MAX_BUCKET,
                pos: u32::MAX
            }
        );
        assert_eq!(links.deadline(0), 10, "99 ms rounds up to tick 10");
        assert_eq!(
            (rec.stage(), rec.level(), rec.serial()),
            (FREE - 1, Level::Read, MAX_SERIAL - 1)
        );
        assert!(rec.used());
    }

    #[test]
    fn packed_locators_round_trip() {
        for loc in [
            Locator {
                uuid_entity: false,
                shard: 0,
                slot: 0,
            },
            Locator {
                uuid_entity: true,
                shard: 63,
                slot: (1 << 25) - 1,
            },
            Locator {
                uuid_entity: true,
                shard: 17,
                slot: 12345,
            },
        ] {
            assert_eq!(Locator::from(PackedLocator::from(loc)), loc);
        }
    }
}
