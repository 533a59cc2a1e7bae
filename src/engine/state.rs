//! The state behind the lock: grant records, the index writer and the
//! wheel, and the pair operations that keep them in step (the timers'
//! side is `timers.rs`, the invariants' check `invariants.rs`).
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

use crate::clock::to_millis;
use crate::events::{Event, RevokeReason};
use crate::ids::{EntityId, GrantId, Level, UserId};
use crate::index::{IndexReader, IndexWriter, Locator, PackedLocator, PairKey, Summary};
use crate::model::grant::Grant;
use crate::model::history::RuleId;
use crate::model::rule::Rule;
use crate::store::{Change, EndCause, GrantFilter, Meta, Store};
use crate::wheel::Wheel;

use super::batch::{Changes, Group};
use super::config::{Config, Timing};
use super::contexts::Contexts;
use super::record::{BySerial, GrantIx, GrantRec, Slab, Starts};

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
        self.cancel_timer(g);
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

    pub(super) fn sorted_by_expiry(&self, mut gs: Vec<GrantIx>) -> Vec<Grant> {
        gs.sort_by_key(|g| {
            let r = &self.grants[*g];
            (r.expires, r.serial())
        });
        gs.into_iter().map(|g| self.grant(g)).collect()
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
