//! The state behind the lock: grant records, the index writer and the
//! wheel, and the operations that keep them in step.
//!
//! # Invariants
//!
//! True whenever the state lock is free; [`State::check_invariants`]
//! verifies them all (the model test calls it after every step). Sites
//! that rely on one cite its number.
//!
//! - **INV-1 (pairs)**: every grant record in use is in exactly one pair
//!   list, the one of its (user, entity), whose index entry heads the list;
//!   no index entry has an empty list.
//! - **INV-2 (handles)**: a [`GrantIx`] held by the index, the wheel or a
//!   record's `next` link names a record in use (see `record.rs`).
//! - **INV-3 (timers)**: every record in use has exactly one timer in the
//!   wheel, and nothing else is in the wheel: `wheel.len() == held`.
//! - **INV-4 (summaries)**: a pair's index summary is the maximum over the
//!   pair's visible grants: read-until over all of them, edit-until over
//!   the edit ones. A pending grant is visible as it was before its batch
//!   (a new one not at all).
//! - **INV-5 (pending)**: the pending bit is set only while a batch is
//!   being made (`group` is `Some`).
//! - **INV-6 (one per context)**: at most one record per (user, entity,
//!   context).
//! - **INV-7 (locations)**: each record's `loc` names its pair's index
//!   slot.
//! - **INV-8 (serials)**: serials of records in use are distinct and below
//!   `next_serial`.
//! - **INV-9 (starts)**: a record at stage [`SCHEDULED`] or [`DUE`] has
//!   its start in `starts`; every entry of `starts` belongs to a record in
//!   use (it stays after the start, so the grant keeps reporting it; a
//!   confirmed start is dropped, so a restart does not hold it again).
//! - **INV-10 (due)**: `due` maps exactly the serials of the records at
//!   stage [`DUE`] to them.
//! - **INV-11 (contexts)**: each record in use names a direct share or a
//!   context interned in `contexts`, whose count of references is the
//!   number of records in use naming it; nothing else is interned.

use crate::clock::{from_millis, to_millis};
use crate::events::{Event, RevokeReason};
use crate::ids::{EntityId, GrantId, Level, UserId};
use crate::index::{IndexReader, IndexWriter, Locator, PackedLocator, PairKey, Summary};
use crate::model::grant::Grant;
use crate::model::history::RuleId;
use crate::model::rule::Rule;
use crate::store::{Change, EndCause, GrantFilter, Meta, Store};
use crate::wheel::{Links, Place, Tick, Wheel};

use super::commit::{Changes, Group};
use super::config::{Config, Timing};
use super::contexts::Contexts;
use super::record::{GrantIx, GrantRec, Slab, DUE, SCHEDULED};

/// The starts of grants made to start later, by serial (see INV-9).
pub(super) type Starts = hashbrown::HashMap<u64, u64, BySerial>;

/// Hashes a serial to itself in its low bits and to a mix of it in the top
/// seven (the table's tags). Serials are the engine's own, dense and
/// increasing, so grants shared together sit in neighbouring buckets:
/// the wheel, which looks starts up in about the order they were shared
/// when it re-files or fires them in bulk, walks the table instead of
/// missing the cache on every lookup. Nothing outside chooses a serial.
#[derive(Clone, Copy, Default)]
pub(super) struct BySerial;

impl std::hash::BuildHasher for BySerial {
    type Hasher = SerialHasher;
    fn build_hasher(&self) -> SerialHasher {
        SerialHasher(0)
    }
}

/// See [`BySerial`].
#[derive(Default)]
pub(super) struct SerialHasher(u64);

impl std::hash::Hasher for SerialHasher {
    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys are hashed; any other shape still hashes fully.
        for b in bytes {
            self.write_u64(self.0.rotate_left(8) ^ u64::from(*b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        const TAG: u64 = 0x7f << 57;
        self.0 = (n & !TAG) | (n.wrapping_mul(0x9e37_79b9_7f4a_7c15) & TAG);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// The grant records as the wheel sees them: a grant's timer is due at the
/// tick of its current stage.
pub(super) struct GrantLinks<'a> {
    pub(super) grants: &'a mut Slab,
    pub(super) timing: &'a Timing,
    pub(super) starts: &'a Starts,
}

impl Links for GrantLinks<'_> {
    fn deadline(&self, id: u32) -> Tick {
        let rec = &self.grants[GrantIx::from_raw(id)];
        let at = if rec.scheduled() {
            // INV-9; a missing start (never) fires at once.
            self.starts.get(&rec.serial()).copied().unwrap_or(0)
        } else {
            self.timing.timer_at(rec.expires, rec.stage())
        };
        // Rounded up: a timer never fires before its instant.
        self.timing.tick_of(at)
    }

    fn place(&self, id: u32) -> Place {
        let rec = &self.grants[GrantIx::from_raw(id)];
        Place {
            bucket: rec.bucket(),
            pos: rec.pos,
        }
    }

    fn set_place(&mut self, id: u32, place: Place) {
        let rec = &mut self.grants[GrantIx::from_raw(id)];
        rec.set_bucket(place.bucket);
        rec.pos = place.pos;
    }
}

pub(super) struct State {
    pub(super) index: IndexWriter,
    pub(super) timing: Timing,
    pub(super) grants: Slab,
    /// The contexts the records name (INV-11).
    pub(super) contexts: Contexts,
    /// Starts of grants made to start later (INV-9): only they pay for
    /// one, so the record stays 32 bytes.
    pub(super) starts: Starts,
    /// Grants whose start came and waits to be confirmed, by serial
    /// (INV-10).
    pub(super) due: hashbrown::HashMap<u64, GrantIx, BySerial>,
    pub(super) wheel: Wheel,
    pub(super) next_serial: u64,
    pub(super) fired: Vec<u32>,
    /// Where changes are written (`None`: memory only).
    pub(super) store: Option<Box<dyn Store>>,
    /// The sequence number of the last batch attempted.
    pub(super) seq: u64,
    /// Over a shared store: the last feed entry the state includes (see
    /// `follow.rs`).
    pub(super) feed: u64,
    /// The latest engine time a batch has written (restarted engines never
    /// run behind it).
    pub(super) clock_written: u64,
    /// Writes that wait for the next batch: expirations, revokes whose
    /// batch failed, history updates.
    pub(super) lazy: Vec<Change>,
    /// The batch being made, while one is.
    pub(super) group: Option<Group>,
    /// The highest automation rule id written by any engine on the store:
    /// new rules are numbered after it, under the feed lock.
    pub(super) max_rule: u64,
    /// Rule changes written or followed, for the request layer's rule set
    /// (collected only once it listens: `Some`).
    pub(super) rule_updates: Option<Vec<RuleUpdate>>,
}

/// A change to the automation rules, in the store's order.
#[derive(Clone, Debug)]
pub(crate) enum RuleUpdate {
    /// A rule written (new or replaced).
    Put(RuleId, Rule),
    /// A rule removed.
    Remove(RuleId),
    /// Every rule, as a snapshot has them (after a resync).
    All(Vec<(RuleId, Rule)>),
}

impl State {
    /// Note a rule change written or followed.
    pub(super) fn note_rule(&mut self, change: &Change) {
        let update = match change {
            Change::Rule { id, rule } => {
                self.max_rule = self.max_rule.max(id.0);
                RuleUpdate::Put(*id, (**rule).clone())
            }
            Change::RemoveRule(id) => RuleUpdate::Remove(*id),
            _ => return,
        };
        if let Some(updates) = &mut self.rule_updates {
            updates.push(update);
        }
    }
}

impl State {
    /// An empty state for an engine with settings `cfg`, resuming the
    /// store's `meta`, at `now`.
    pub(super) fn new(index: IndexWriter, cfg: &Config, meta: &Meta, now: u64) -> Self {
        State {
            index,
            timing: cfg.timing.clone(),
            grants: Slab::default(),
            contexts: Contexts::default(),
            starts: Starts::default(),
            due: hashbrown::HashMap::default(),
            wheel: Wheel::new(cfg.timing.tick_at(now)),
            next_serial: meta.next_serial.max(1),
            fired: Vec::new(),
            store: None,
            seq: meta.last_seq,
            feed: 0,
            clock_written: meta.clock.map_or(0, to_millis),
            lazy: Vec::new(),
            group: None,
            max_rule: 0,
            rule_updates: None,
        }
    }

    /// Room for `grants` grants without growing (numeric entities).
    pub(super) fn reserve(&mut self, reader: &IndexReader, grants: usize) {
        self.grants.reserve(grants);
        self.index.reserve_numeric(reader, grants, &mut |_, _| {});
    }

    /// The first grant of the pair at `loc`.
    pub(super) fn head(&self, loc: Locator) -> GrantIx {
        GrantIx::from_raw(self.index.head(loc))
    }

    pub(super) fn grant(&self, g: GrantIx) -> Grant {
        let rec = &self.grants[g];
        let (user, entity) = self.index.pair_at(rec.loc.into());
        rec.grant(
            user,
            entity,
            self.contexts.get(rec.ctx()),
            self.start_of(rec),
        )
    }

    /// A new record for a grant with context `ctx`, taking a reference on
    /// it (INV-11: released when the record is, in `detach`).
    pub(super) fn record(
        &mut self,
        expires: u64,
        serial: u64,
        ctx: (u32, u128),
        level: Level,
    ) -> GrantRec {
        let ctx = self.contexts.intern(ctx);
        GrantRec::new(expires, serial, ctx, level)
    }

    /// A grant's start, if it was made to start later.
    pub(super) fn start_of(&self, rec: &GrantRec) -> Option<u64> {
        if self.starts.is_empty() {
            return None;
        }
        self.starts.get(&rec.serial()).copied()
    }

    pub(super) fn summary_of(&self, head: GrantIx) -> Summary {
        let mut s = Summary::default();
        for g in self.grants.pair(head) {
            let rec = &self.grants[g];
            if rec.hidden() {
                // Not started, or not confirmed: checks do not see it.
                continue;
            }
            let (expires, level) = if !rec.pending() {
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

    /// The grants of the pair at `loc`.
    pub(super) fn pair_grants(&self, loc: Locator) -> Vec<GrantIx> {
        self.grants.pair(self.head(loc)).collect()
    }

    /// The grant of a pair with this context (live or not).
    pub(super) fn find_context(&self, loc: Locator, ctx: (u32, u128)) -> Option<GrantIx> {
        // A context no held grant names has no number (INV-11).
        let n = self.contexts.find(ctx)?;
        self.grants
            .pair(self.head(loc))
            .find(|g| self.grants[*g].ctx() == n)
    }

    /// Find a held grant by id: live, or scheduled to start.
    pub(super) fn find_id(&self, id: &GrantId, now: u64) -> Option<GrantIx> {
        let key = PairKey::new(&id.user, &id.entity);
        let loc = self.index.find(&key, self.index.hash(&key))?;
        let g = self.find_context(loc, id.context.pack())?;
        let rec = &self.grants[g];
        (rec.serial() == id.serial && rec.expires > now).then_some(g)
    }

    /// Put a new grant record into its pair (creating the pair).
    pub(super) fn attach(
        &mut self,
        reader: &IndexReader,
        key: &PairKey,
        hash: u64,
        found: Option<Locator>,
        g: GrantIx,
    ) {
        match found {
            Some(loc) => {
                let head = self.head(loc);
                self.grants[g].set_next(Some(head));
                self.grants[g].loc = loc.into();
                let summary = self.summary_of(g);
                self.index.update(loc, g.raw(), summary);
            }
            None => {
                self.grants[g].set_next(None);
                let summary = self.summary_of(g);
                let grants = &mut self.grants;
                let loc =
                    self.index
                        .insert(reader, key, hash, g.raw(), summary, &mut |head, loc| {
                            relocate(grants, head, loc)
                        });
                self.grants[g].loc = loc.into();
            }
        }
    }

    /// Take a grant out of its pair, the wheel and the slab.
    pub(super) fn detach(&mut self, reader: &IndexReader, g: GrantIx) {
        let rec = self.grants[g];
        let loc: Locator = rec.loc.into();
        self.wheel.cancel(
            &mut GrantLinks {
                grants: &mut self.grants,
                timing: &self.timing,
                starts: &self.starts,
            },
            g.raw(),
        );
        if !self.starts.is_empty() {
            // INV-9 (a batch undone puts it back from its saved copy).
            self.starts.remove(&rec.serial());
        }
        if !self.due.is_empty() {
            // INV-10.
            self.due.remove(&rec.serial());
        }
        let head = self.head(loc);
        let new_head = if head == g {
            rec.next()
        } else {
            let before = self
                .grants
                .pair(head)
                .find(|p| self.grants[*p].next() == Some(g));
            if let Some(p) = before {
                self.grants[p].set_next(rec.next());
            }
            Some(head)
        };
        match new_head {
            None => {
                let grants = &mut self.grants;
                self.index
                    .remove(reader, loc, &mut |head, loc| relocate(grants, head, loc));
            }
            Some(new_head) => {
                let summary = self.summary_of(new_head);
                self.index.update(loc, new_head.raw(), summary);
            }
        }
        self.grants.free(g);
        // INV-11.
        self.contexts.release(rec.ctx());
    }

    /// Arm a grant's next timer: its start while that is ahead, else its
    /// next warning or its expiry. Returns `false` if it is due already.
    pub(super) fn arm(&mut self, g: GrantIx, now: u64) -> bool {
        let stage = match self.start_of(&self.grants[g]) {
            Some(start) if start > now => SCHEDULED,
            // INV-9: a start still held and passed.
            Some(_) => self.started_stage(g, now),
            None => self.timing.next_timer(self.grants[g].expires, now).0,
        };
        self.arm_at(g, stage)
    }

    /// The stage of a grant whose start passed: held until confirmed
    /// where starts are confirmed, else its next warning or its expiry.
    fn started_stage(&self, g: GrantIx, now: u64) -> u8 {
        if self.timing.confirm_starts {
            DUE
        } else {
            self.timing.next_timer(self.grants[g].expires, now).0
        }
    }

    /// Put `g` at `stage` and schedule that stage's timer. Returns `false`
    /// if it is due already.
    fn arm_at(&mut self, g: GrantIx, stage: u8) -> bool {
        self.set_stage(g, stage);
        self.wheel.schedule(
            &mut GrantLinks {
                grants: &mut self.grants,
                timing: &self.timing,
                starts: &self.starts,
            },
            g.raw(),
        )
    }

    /// Set a record's stage, keeping `due` in step (INV-10).
    fn set_stage(&mut self, g: GrantIx, stage: u8) {
        let serial = self.grants[g].serial();
        if stage == DUE {
            self.due.insert(serial, g);
        } else if self.grants[g].due() {
            self.due.remove(&serial);
        }
        self.grants[g].set_stage(stage);
    }

    /// Confirm a due grant's start: it goes live (checks see it once its
    /// batch is written), and its start is dropped, so a restart does not
    /// hold it again (INV-9). Returns `false` if it is due no more.
    pub(super) fn confirm(&mut self, g: GrantIx, now: u64) -> bool {
        let rec = self.grants[g];
        if !rec.due() {
            return false;
        }
        // Saved first, so a failed batch puts the start back.
        let (user, entity) = self.index.pair_at(rec.loc.into());
        self.note_pair(&user, &entity);
        self.starts.remove(&rec.serial());
        self.change(g, rec.expires, rec.level(), now)
    }

    /// Arm the next timer of a grant whose start has passed (its warning
    /// or expiry): [`arm`](Self::arm) without the start's lookup. Returns
    /// `false` if it is due already.
    fn arm_started(&mut self, g: GrantIx, now: u64) -> bool {
        let stage = self.started_stage(g, now);
        self.arm_at(g, stage)
    }

    /// Put a new record into its pair and the wheel, starting at `start`
    /// if that is given (checks see it only from then: its stage is set
    /// before the pair's summary is published). Returns `None`, holding
    /// nothing, if its expiry is due already.
    pub(super) fn place(
        &mut self,
        reader: &IndexReader,
        (key, hash): (&PairKey, u64),
        mut rec: GrantRec,
        start: Option<u64>,
        now: u64,
    ) -> Option<GrantIx> {
        if let Some(start) = start {
            self.starts.insert(rec.serial(), start);
            if start > now {
                rec.set_stage(SCHEDULED);
            } else if self.timing.confirm_starts {
                // Its start passed (while the engine was down, or before a
                // batch was undone): held until confirmed.
                rec.set_stage(DUE);
            }
        }
        let g = self.grants.alloc(rec);
        let found = self.index.find(key, hash);
        self.attach(reader, key, hash, found, g);
        if self.arm(g, now) {
            Some(g)
        } else {
            self.detach(reader, g);
            None
        }
    }

    /// Set a held grant's expiry and level, re-arming its timer and
    /// refreshing its pair. Returns `true` if that started a grant whose
    /// start had passed but whose start timer had not fired yet (it was
    /// waiting for the wheel's next tick): the caller raises
    /// [`Event::Started`].
    pub(super) fn change(&mut self, g: GrantIx, expires: u64, level: Level, now: u64) -> bool {
        let was_hidden = self.grants[g].hidden();
        if self.group.is_some() {
            let rec = self.grants[g];
            let (user, entity) = self.index.pair_at(rec.loc.into());
            self.note_pair(&user, &entity);
            if !rec.pending() {
                // A grant not yet started was not visible: shown as
                // nothing (expiry 0) until the batch is written.
                let shown = if rec.hidden() {
                    (0, Level::Read)
                } else {
                    (rec.expires, rec.level())
                };
                if let Some(group) = &mut self.group {
                    group.shown.insert(rec.serial(), shown);
                }
                self.grants[g].set_pending(true);
            }
        }
        self.wheel.cancel(
            &mut GrantLinks {
                grants: &mut self.grants,
                timing: &self.timing,
                starts: &self.starts,
            },
            g.raw(),
        );
        let rec = &mut self.grants[g];
        rec.expires = expires;
        rec.set_level(level);
        let loc: Locator = rec.loc.into();
        let armed = self.arm(g, now);
        debug_assert!(armed, "a live grant's timer is ahead of now");
        let head = self.head(loc);
        let summary = self.summary_of(head);
        self.index.update(loc, head.raw(), summary);
        was_hidden && !self.grants[g].hidden()
    }

    /// The start of `g` if it is still ahead of `now`, or if it passed and
    /// waits to be confirmed (a grant whose start has passed otherwise
    /// counts as started, even if checks wait for the wheel's tick to see
    /// it).
    pub(super) fn waiting_start(&self, g: GrantIx, now: u64) -> Option<u64> {
        let rec = &self.grants[g];
        if rec.scheduled() {
            self.start_of(rec).filter(|start| *start > now)
        } else if rec.due() {
            // Its start passed; it waits to be confirmed.
            self.start_of(rec)
        } else {
            None
        }
    }

    /// Reclaim what is due at `now`, raising warnings and expiries.
    pub(super) fn advance(
        &mut self,
        reader: &IndexReader,
        ch: &mut Changes<'_>,
        now: u64,
    ) -> usize {
        let cfg = ch.cfg;
        let mut fired = std::mem::take(&mut self.fired);
        self.wheel.advance(
            &mut GrantLinks {
                grants: &mut self.grants,
                timing: &self.timing,
                starts: &self.starts,
            },
            cfg.timing.tick_at(now),
            &mut fired,
        );
        if fired.len() > 4096 {
            // Visit the records in memory order: a mass expiry is bound by
            // cache misses, and the events are sorted by time below anyway.
            fired.sort_unstable();
        }
        let mut expired = 0;
        let mut timed: Vec<(u64, u64, Event)> = Vec::new();
        for g in fired.iter().copied().map(GrantIx::from_raw) {
            let rec = self.grants[g];
            // Its start timer fired, so its start has passed: armed for its
            // expiry without looking the start up again.
            if rec.scheduled() && rec.expires > now && self.arm_started(g, now) {
                if self.grants[g].due() {
                    // Held until confirmed: nothing to publish yet.
                    continue;
                }
                // Its start came: checks see it from here on.
                let loc: Locator = rec.loc.into();
                let head = self.head(loc);
                let summary = self.summary_of(head);
                self.index.update(loc, head.raw(), summary);
                if ch.want {
                    let grant = self.grant(g);
                    let at = grant.starts_at.map_or(now, to_millis);
                    timed.push((at, rec.serial(), Event::Started(grant)));
                }
                continue;
            }
            // A grant whose start and end both passed while the wheel
            // lagged expires without ever being seen.
            let warning = cfg.timing.warnings.get(usize::from(rec.stage()));
            if let Some(offset) = warning {
                if rec.expires > now && ch.want {
                    let at = rec.expires.saturating_sub(*offset);
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

    /// Revoke the given grants (all held), in serial order.
    pub(super) fn revoke_all(
        &mut self,
        ch: &mut Changes<'_>,
        now: u64,
        mut gs: Vec<GrantIx>,
    ) -> Vec<Grant> {
        let reader = ch.reader;
        gs.sort_by_key(|g| self.grants[*g].serial());
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

    /// The held grants (live or scheduled) of the pair at `loc`.
    pub(super) fn held_at(&self, loc: Locator, now: u64) -> Vec<GrantIx> {
        let mut gs = self.pair_grants(loc);
        gs.retain(|g| self.grants[*g].expires > now);
        gs
    }

    /// The held grants (live or scheduled) of (user, entity).
    pub(super) fn held_in_pair(&self, user: &UserId, entity: &EntityId, now: u64) -> Vec<GrantIx> {
        let key = PairKey::new(user, entity);
        match self.index.find(&key, self.index.hash(&key)) {
            Some(loc) => self.held_at(loc, now),
            None => Vec::new(),
        }
    }

    /// Held grants (live or scheduled) `filter` selects, found by
    /// scanning: the pairs for a user or an entity, O(pairs); the grants
    /// for a context or an expiry, O(grants).
    pub(super) fn held_scan(&self, filter: &GrantFilter, now: u64) -> Vec<GrantIx> {
        match filter {
            GrantFilter::User(user) => self.held_where(now, |u, _| u == user),
            GrantFilter::Entity(entity) => self.held_where(now, |_, e| e == entity),
            GrantFilter::Context(context) => {
                let Some(n) = self.contexts.find(context.pack()) else {
                    return Vec::new();
                };
                self.grants
                    .used()
                    .filter(|(_, r)| r.expires > now && r.ctx() == n)
                    .map(|(g, _)| g)
                    .collect()
            }
            GrantFilter::ExpiringBy(until) => {
                let until = to_millis(*until);
                self.grants
                    .used()
                    .filter(|(_, r)| r.expires > now && r.expires <= until)
                    .map(|(g, _)| g)
                    .collect()
            }
        }
    }

    /// Held grants on pairs accepted by `keep`.
    pub(super) fn held_where(
        &self,
        now: u64,
        keep: impl Fn(&UserId, &EntityId) -> bool,
    ) -> Vec<GrantIx> {
        let mut out = Vec::new();
        for (loc, user, entity) in self.index.pairs() {
            if keep(&user, &entity) {
                out.extend(self.held_at(loc, now));
            }
        }
        out
    }

    /// Set a held grant's start (a start at or before `now` starts it),
    /// expiry and level, as [`change`](Self::change) does (and returning
    /// what it returns).
    pub(super) fn change_window(
        &mut self,
        g: GrantIx,
        start: Option<u64>,
        expires: u64,
        level: Level,
        now: u64,
    ) -> bool {
        let serial = self.grants[g].serial();
        if let Some(start) = start {
            // The timer is re-armed from the new start by `change`, which
            // cancels the old one first.
            self.starts.insert(serial, start);
        }
        self.change(g, expires, level, now)
    }

    pub(super) fn sorted_by_expiry(&self, mut gs: Vec<GrantIx>) -> Vec<Grant> {
        gs.sort_by_key(|g| {
            let r = &self.grants[*g];
            (r.expires, r.serial())
        });
        gs.into_iter().map(|g| self.grant(g)).collect()
    }
}

#[cfg(any(test, feature = "testing"))]
impl State {
    /// Check INV-1 and INV-3 to INV-11 (INV-2 holds if these do: every
    /// handle reached is checked to name a record in use).
    pub(super) fn check_invariants(&self) -> Result<(), String> {
        let mut due = 0usize;
        let mut reached = 0usize;
        let mut named: std::collections::HashMap<u32, u32> = std::collections::HashMap::new();
        let mut serials = std::collections::HashSet::new();
        for (loc, user, entity) in self.index.pairs() {
            let head = self.head(loc);
            let mut contexts = std::collections::HashSet::new();
            let mut count = 0usize;
            for g in self.grants.pair(head) {
                let rec = &self.grants[g];
                let at = || format!("pair ({user}, {entity}), grant {}", rec.serial());
                if !rec.used() {
                    return Err(format!("INV-2: {} is a free record", at()));
                }
                if Locator::from(rec.loc) != loc {
                    return Err(format!("INV-7: {} has a stale location", at()));
                }
                if !contexts.insert(rec.ctx()) {
                    return Err(format!("INV-6: {} repeats a context", at()));
                }
                if !serials.insert(rec.serial()) || rec.serial() >= self.next_serial {
                    return Err(format!("INV-8: {} repeats a serial or is too new", at()));
                }
                if self.group.is_none() && rec.pending() {
                    return Err(format!("INV-5: {} is pending outside a batch", at()));
                }
                if rec.bucket() == 0 {
                    return Err(format!("INV-3: {} has no timer", at()));
                }
                if rec.hidden() && self.start_of(rec).is_none() {
                    return Err(format!("INV-9: {} waits for no start", at()));
                }
                if rec.due() != (self.due.get(&rec.serial()) == Some(&g)) {
                    return Err(format!(
                        "INV-10: {} is due but not listed, or listed but not due",
                        at()
                    ));
                }
                if rec.due() {
                    due += 1;
                }
                if rec.ctx() != super::record::DIRECT {
                    *named.entry(rec.ctx()).or_default() += 1;
                }
                count += 1;
                if count > self.grants.held() {
                    return Err(format!("INV-1: the list of ({user}, {entity}) loops"));
                }
            }
            if count == 0 {
                return Err(format!("INV-1: ({user}, {entity}) has no grants"));
            }
            let stored = self.index.summary_at(loc);
            if stored != self.summary_of(head) {
                return Err(format!(
                    "INV-4: ({user}, {entity}) shows {stored:?}, its grants {:?}",
                    self.summary_of(head)
                ));
            }
            reached += count;
        }
        if reached != self.grants.held() {
            return Err(format!(
                "INV-1: {} records in use, {reached} in pair lists",
                self.grants.held()
            ));
        }
        if self.wheel.len() != self.grants.held() {
            return Err(format!(
                "INV-3: {} timers for {} records",
                self.wheel.len(),
                self.grants.held()
            ));
        }
        if named.len() != self.contexts.len()
            || named
                .iter()
                .any(|(n, refs)| self.contexts.refs(*n) != *refs)
        {
            return Err(format!(
                "INV-11: {} contexts named by records, {} interned, or counts differ",
                named.len(),
                self.contexts.len()
            ));
        }
        if due != self.due.len() {
            return Err(format!(
                "INV-10: {} listed as due, {due} due",
                self.due.len()
            ));
        }
        Ok(())
    }
}

/// Record a pair's new place in each of its grants.
pub(super) fn relocate(grants: &mut Slab, head: u32, loc: Locator) {
    let loc = PackedLocator::from(loc);
    let mut next = Some(GrantIx::from_raw(head));
    while let Some(g) = next {
        let rec = &mut grants[g];
        rec.loc = loc;
        next = rec.next();
    }
}
