//! Group commit: changes queued, run under the lock, written as one batch,
//! then published or undone.

use std::sync::Arc;

use parking_lot::Mutex;

use crate::clock::from_millis;
use crate::error::FromStoreFailure;
use crate::events::Event;
use crate::ids::{Context, EntityId, UserId};
use crate::index::PairKey;
use crate::store::{Batch, Change, EndCause, FeedRead, StoreError};

use super::batch::{Changes, Group};
use super::record::GrantRec;
use super::state::State;
use super::{Engine, Inner};

/// A change queued for the next batch; it returns what to do once the
/// batch is written (`None`) or has failed (`Some(reason)`).
pub(super) type Job = Box<dyn FnOnce(&mut State, &mut Changes<'_>, u64) -> Finish + Send>;
pub(super) type Finish = Box<dyn FnOnce(Option<&StoreError>) + Send>;

/// Changes waiting for a batch, and whether a caller is making one.
#[derive(Default)]
pub(super) struct Queue {
    pub(super) jobs: Vec<Job>,
    pub(super) leading: bool,
}
impl Drop for Inner {
    fn drop(&mut self) {
        // Best effort: write what waits (expirations, history updates).
        let st = self.state.get_mut();
        let now = *self.high_water.get_mut();
        let shared = st.store.as_mut().is_some_and(|s| s.shared().is_some());
        if shared {
            // Over a shared store expirations and the clock are not
            // written: with nothing else waiting there is nothing to do,
            // and no connection is touched (a drop may run on an async
            // thread, where opening one again would block it).
            st.lazy.retain(|c| !is_expiry(c));
        }
        if st.lazy.is_empty() && (shared || now <= st.clock_written) {
            return;
        }
        if let Some(mut store) = st.store.take() {
            let changes = std::mem::take(&mut st.lazy);
            let mut seq = st.seq;
            if let Some(shared) = store.shared() {
                // Number the batch after everything written meanwhile.
                match shared.lock_feed(st.feed) {
                    Ok(FeedRead::Entries(entries)) => {
                        seq = entries.iter().fold(seq, |s, e| s.max(e.seq));
                    }
                    _ => {
                        shared.release_feed();
                        return;
                    }
                }
            }
            let batch = Batch {
                seq: seq + 1,
                next_serial: st.next_serial,
                clock: from_millis(now),
                changes: &changes,
            };
            let _ = store.apply(&batch);
        }
    }
}

impl State {
    /// Remember a pair's grants before a batch first touches them.
    pub(super) fn note_pair(&mut self, user: &UserId, entity: &EntityId) {
        let Some(group) = &self.group else { return };
        if group.pairs.contains_key(&(*user, *entity)) {
            return;
        }
        let key = PairKey::new(user, entity);
        let saved: Vec<(GrantRec, Context)> = match self.index.find(&key, self.index.hash(&key)) {
            Some(loc) => self
                .pair_grants(loc)
                .into_iter()
                .map(|g| {
                    let rec = self.grants[g];
                    (rec, self.contexts.get(rec.ctx()))
                })
                .collect(),
            None => Vec::new(),
        };
        let starts: Vec<(u64, u64)> = saved
            .iter()
            .filter_map(|(rec, _)| Some((rec.serial(), self.start_of(rec)?)))
            .collect();
        if let Some(group) = &mut self.group {
            group.pairs.insert((*user, *entity), saved);
            group.starts.extend(starts);
        }
    }

    /// Note that a grant ended for good in the batch under way.
    pub(super) fn ended_for_good(&mut self, serial: u64) {
        if let Some(group) = &mut self.group {
            group.ended.insert(serial);
        }
    }

    /// The batch is written: show its grants.
    pub(super) fn finalize(&mut self) {
        let Some(group) = self.group.take() else {
            return;
        };
        for (user, entity) in group.pairs.keys() {
            let key = PairKey::new(user, entity);
            if let Some(loc) = self.index.find(&key, self.index.hash(&key)) {
                let head = self.head(loc);
                let mut next = Some(head);
                while let Some(g) = next {
                    let rec = &mut self.grants[g];
                    rec.set_pending(false);
                    next = rec.next();
                }
                let summary = self.summary_of(head);
                self.index.update(loc, head.raw(), summary);
            }
        }
    }

    /// The batch failed: put every touched pair back as it was, except
    /// for grants that ended for good.
    pub(super) fn rollback(&mut self, ch: &mut Changes<'_>, now: u64) {
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
            for (rec, context) in saved {
                if group.ended.contains(&rec.serial()) {
                    continue;
                }
                let start = group.starts.get(&rec.serial()).copied();
                if rec.expires <= now {
                    // Came due meanwhile: reclaim it as expired.
                    let grant = rec.grant(user, entity, context, start);
                    ch.push_kept(|| Event::Expired(grant));
                    ch.end(&grant, rec.expires, EndCause::Expired);
                    continue;
                }
                // Its context is named afresh (the number it had was
                // released with it, INV-11).
                let fresh = self.record(rec.expires, rec.serial(), context.pack(), rec.level());
                let placed = self.place(ch.reader, (&key, hash), fresh, start, now);
                debug_assert!(placed.is_some(), "a restored grant is live");
            }
        }
    }
}

impl Engine {
    /// A fresh change record for `locked` and the batch leader.
    pub(super) fn changes(&self) -> Changes<'_> {
        let inner = &*self.inner;
        Changes {
            events: Vec::new(),
            kept_events: Vec::new(),
            want: inner.hub.wanted(),
            cfg: &inner.cfg,
            reader: &inner.reader,
            durable: inner.durable,
            expiries: inner.follow.is_none(),
            writes: Vec::new(),
            kept: Vec::new(),
            revoked: Vec::new(),
        }
    }

    /// Run a change under the state lock (after reclaiming what is due),
    /// then deliver its events. Memory-only engines.
    pub(super) fn with_state<T>(
        &self,
        f: impl FnOnce(&mut State, &mut Changes<'_>, u64) -> T,
    ) -> T {
        self.locked(|st, ch, now| {
            st.advance(ch.reader, ch, now);
            f(st, ch, now)
        })
    }

    /// Run `f` under the state lock, then deliver the events it raised.
    /// Writes it makes (expirations) wait for the next batch.
    pub(super) fn locked<T>(&self, f: impl FnOnce(&mut State, &mut Changes<'_>, u64) -> T) -> T {
        let inner = &*self.inner;
        let out = {
            let mut st = inner.state.lock();
            let now = self.now_ms();
            let mut ch = self.changes();
            let out = f(&mut st, &mut ch, now);
            // INVARIANT: every held grant has exactly one timer.
            debug_assert_eq!(st.wheel.len(), st.grants.held());
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
    pub(super) fn run<T, E>(
        &self,
        op: impl FnOnce(&mut State, &mut Changes<'_>, u64) -> Result<T, E> + Send + 'static,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: FromStoreFailure + Send + 'static,
    {
        if !self.inner.durable {
            return self.with_state(op);
        }
        let slot: Arc<Mutex<Option<Result<T, E>>>> = Arc::default();
        let out = slot.clone();
        let job: Job = Box::new(move |st, ch, now| {
            let result = op(st, ch, now);
            let revoked = std::mem::take(&mut ch.revoked);
            Box::new(move |failure: Option<&StoreError>| {
                let result = match (failure, result) {
                    (None, r) | (Some(_), r @ Err(_)) => r,
                    (Some(e), Ok(_)) => Err(E::from_store_failure(e.clone(), revoked)),
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
    pub(super) fn commit(&self) {
        let inner = &*self.inner;
        let mut guard = inner.state.lock();
        let st = &mut *guard;
        let jobs = std::mem::take(&mut inner.queue.lock().jobs);
        if jobs.is_empty() {
            return;
        }
        let now = self.now_ms();
        let caught = self.lock_and_catch_up(st, now, std::time::Instant::now());
        let mut run = self.run_jobs(st, jobs, now);
        let failure = match caught.and_then(|()| write_batch(st, &run.batch, now)) {
            Ok(()) => {
                // Everything queued for this batch or an earlier one is
                // written (what waited is carried until a batch succeeds).
                inner
                    .written
                    .store(st.seq, std::sync::atomic::Ordering::Release);
                st.clock_written = st.clock_written.max(now);
                st.finalize();
                if st.rule_updates.is_some() {
                    for change in &run.batch {
                        st.note_rule(change);
                    }
                }
                None
            }
            Err(e) => {
                self.undo(st, &mut run, now);
                Some(e)
            }
        };
        // INVARIANT (INV-3): every held grant has exactly one timer.
        debug_assert_eq!(st.wheel.len(), st.grants.held());
        let mut events = run.events;
        for done in run.done {
            events.extend(done.events);
            // Before the lock goes: waiters read their result under it.
            (done.finish)(failure.as_ref());
        }
        inner.hub.enqueue(&mut events);
    }

    /// Over a shared store: take the feed lock and apply every entry after
    /// the state's position, so the batch is decided on the state of every
    /// write committed before it. The lock is held until the batch is
    /// written (or found empty). A no-op for a store of the engine's own.
    fn lock_and_catch_up(
        &self,
        st: &mut State,
        started: u64,
        began: std::time::Instant,
    ) -> Result<(), StoreError> {
        let after = st.feed;
        let Some(shared) = st.store.as_mut().and_then(|s| s.shared()) else {
            return Ok(());
        };
        let entries = match shared.lock_feed(after)? {
            FeedRead::Entries(entries) => entries,
            FeedRead::Behind { oldest } => {
                shared.release_feed();
                return Err(StoreError::Io(format!(
                    "this engine's feed position {after} is older than the oldest entry kept ({oldest}): it resyncs from a snapshot; try again"
                )));
            }
        };
        for entry in &entries {
            if !st.apply_entry(&self.inner.reader, entry, started) {
                if let Some(shared) = st.store.as_mut().and_then(|s| s.shared()) {
                    shared.release_feed();
                }
                return Err(StoreError::Corrupt {
                    what: "the change feed".into(),
                    reason: format!(
                        "entry {} does not follow position {}",
                        entry.position, st.feed
                    ),
                });
            }
        }
        self.caught_up(started, began);
        Ok(())
    }

    /// Reclaim what is due, then run every queued change against the
    /// state (INV-5: its new and changed grants pending), collecting one
    /// batch.
    fn run_jobs(&self, st: &mut State, jobs: Vec<Job>, now: u64) -> Run {
        let mut base = self.changes();
        st.advance(&self.inner.reader, &mut base, now);
        let mut batch = std::mem::take(&mut st.lazy);
        batch.append(&mut base.kept);
        st.group = Some(Group::default());
        let mut done = Vec::with_capacity(jobs.len());
        for job in jobs {
            let mut ch = self.changes();
            let finish = job(st, &mut ch, now);
            batch.append(&mut ch.kept);
            let start = batch.len();
            batch.append(&mut ch.writes);
            done.push(Done {
                finish,
                events: ch.events,
                kept_events: ch.kept_events,
                undoable: start..batch.len(),
            });
        }
        Run {
            events: base.events,
            batch,
            done,
        }
    }

    /// The batch failed: put every touched pair back (except grants that
    /// ended for good), keep what stands for the next batch, and drop the
    /// events of what was undone.
    fn undo(&self, st: &mut State, run: &mut Run, now: u64) {
        let mut ch = self.changes();
        st.rollback(&mut ch, now);
        // The undoable writes of each change go, last range first so the
        // earlier ranges keep their positions.
        let mut batch = std::mem::take(&mut run.batch);
        for done in run.done.iter().rev() {
            batch.drain(done.undoable.clone());
        }
        st.lazy = batch;
        st.lazy.append(&mut ch.kept);
        // Only the events that stand go out (their positions were noted in
        // order).
        for done in &mut run.done {
            let mut stands = done.kept_events.iter().copied().peekable();
            let mut at = 0;
            done.events.retain(|_| {
                let keep = stands.next_if_eq(&at).is_some();
                at += 1;
                keep
            });
        }
        run.events.append(&mut ch.events);
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
    pub fn flush(&self) -> Result<(), StoreError> {
        if !self.inner.durable {
            return Ok(());
        }
        // The batch carries what waits; an empty change is enough.
        self.run(|_, _, _| Ok(()))
    }

    /// Queue writes for the next batch without waiting for it. Returns
    /// the batch that carries them: they are written once
    /// [`written_through`](Self::written_through) reaches it.
    pub(crate) fn write_later(&self, changes: impl IntoIterator<Item = Change>) -> u64 {
        if !self.inner.durable {
            return 0;
        }
        let mut st = self.inner.state.lock();
        st.lazy.extend(changes);
        st.seq + 1
    }

    /// The last batch written: every change queued for it or before it is
    /// in the store (a failed batch's writes that stand are carried to the
    /// next one).
    pub(crate) fn written_through(&self) -> u64 {
        self.inner
            .written
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Write changes now, in the next batch.
    pub(crate) fn write_now(&self, changes: Vec<Change>) -> Result<(), StoreError> {
        if !self.inner.durable {
            return Ok(());
        }
        self.run(move |_, ch, _| {
            ch.writes.extend(changes);
            Ok::<(), StoreError>(())
        })
    }
}

/// One batch being made: the events of the reclaim that opened it, the
/// changes to write, and each queued change's share of it.
struct Run {
    events: Vec<Event>,
    batch: Vec<Change>,
    done: Vec<Done>,
}

/// A queued change, run: what to tell its caller, its events (and which
/// of them stand if the batch fails), and the range of its undoable writes
/// in the batch.
struct Done {
    finish: Finish,
    events: Vec<Event>,
    kept_events: Vec<usize>,
    undoable: std::ops::Range<usize>,
}

/// Whether a change is the end of an expired grant.
pub(super) fn is_expiry(c: &Change) -> bool {
    matches!(
        c,
        Change::End {
            cause: EndCause::Expired,
            ..
        }
    )
}

/// Write `batch` as the next batch. An empty batch is still written when
/// the time moved on: a restart must not run the clock back.
///
/// Over a shared store (whose feed lock the caller holds) expirations are
/// left to the store's housekeeping (every engine expires grants by its
/// own clock), and a batch with nothing else is not written: the lock is
/// given back.
fn write_batch(st: &mut State, batch: &[Change], now: u64) -> Result<(), StoreError> {
    let shared = st.store.as_mut().and_then(|s| s.shared()).is_some();
    if shared {
        let kept: Vec<Change>;
        let batch = if batch.iter().any(is_expiry) {
            kept = batch.iter().filter(|c| !is_expiry(c)).cloned().collect();
            &kept[..]
        } else {
            batch
        };
        let store = st.store.as_mut();
        let Some(shared) = store.and_then(|s| s.shared()) else {
            return Ok(());
        };
        if batch.is_empty() {
            shared.release_feed();
            return Ok(());
        }
        st.seq += 1;
        let b = Batch {
            seq: st.seq,
            next_serial: st.next_serial,
            clock: from_millis(now),
            changes: batch,
        };
        let written = st.store.as_mut().map_or(Ok(()), |s| s.apply(&b));
        if written.is_ok() {
            st.feed += 1;
        }
        return written;
    }
    if batch.is_empty() && now <= st.clock_written {
        return Ok(());
    }
    st.seq += 1;
    let b = Batch {
        seq: st.seq,
        next_serial: st.next_serial,
        clock: from_millis(now),
        changes: batch,
    };
    match &mut st.store {
        Some(store) => store.apply(&b),
        None => Ok(()),
    }
}
