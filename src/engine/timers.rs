//! The wheel's side of the state: where each grant's timer stands (its
//! start, its warnings, its expiry), how a change re-arms it, and the
//! advance that fires what is due. The invariants cited here (INV-3,
//! INV-9, INV-10) are listed in `state.rs`.

use crate::clock::{from_millis, to_millis};
use crate::events::Event;
use crate::ids::Level;
use crate::index::{IndexReader, Locator, PairKey};
use crate::store::EndCause;
use crate::wheel::{Links, Place, Tick};

use super::batch::Changes;
use super::config::Timing;
use super::record::{GrantIx, GrantRec, Slab, Starts, DUE, SCHEDULED};
use super::state::State;

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

impl State {
    /// Take `g`'s timer out of the wheel.
    pub(super) fn cancel_timer(&mut self, g: GrantIx) {
        self.wheel.cancel(
            &mut GrantLinks {
                grants: &mut self.grants,
                timing: &self.timing,
                starts: &self.starts,
            },
            g.raw(),
        );
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
}
