//! A hierarchical hashed timing wheel (Varghese & Lauck), used to reclaim
//! expired grants and to raise expiring-soon warnings.
//!
//! # Geometry
//!
//! Six levels of 64 slots. A deadline is filed at the level of the highest
//! bit in which it differs from the wheel's current tick (`elapsed`), in the
//! slot named by its six bits at that level. Deadlines that differ above bit
//! 36 are parked in an overflow list and re-filed when the wheel reaches
//! their 2^36-tick epoch.
//!
//! | level | slot span (ticks) | level span (ticks) | slot / level at the default 1 s tick |
//! |-------|-------------------|--------------------|--------------------------------------|
//! | 0     | 1                 | 64                 | 1 s / 64 s                           |
//! | 1     | 64                | 4,096              | 64 s / 68 min                        |
//! | 2     | 4,096             | 262,144            | 68 min / 3 days                      |
//! | 3     | 262,144           | 16,777,216         | 3 days / 194 days                    |
//! | 4     | 16,777,216        | 1,073,741,824      | 194 days / 34 years                  |
//! | 5     | 1,073,741,824     | 68,719,476,736     | 34 years / 2,177 years               |
//! | park  | -                 | beyond             | re-filed when its epoch comes        |
//!
//! # Ground rules
//!
//! - The wheel never decides access. A check compares a grant's own expiry
//!   with the time; the wheel only tells the engine when to reclaim a grant
//!   (and when to warn). A lagging wheel costs memory, never correctness.
//! - Each slot is a vector of entry ids; an entry is an id chosen by the
//!   caller, whose deadline and [`Place`] (slot vector and position in it)
//!   live in the caller's record, reached through [`Links`]. Scheduling
//!   pushes the id; cancelling swaps the last id of the slot into its place
//!   and updates that entry's position: both O(1). Advancing walks a slot's
//!   vector in order, so a mass expiry reads ids sequentially and the
//!   records' loads overlap, instead of chasing one pointer per entry.
//! - `advance(now)` visits only occupied slots, found through one bitmap per
//!   level, so a jump of years costs work proportional to what fires plus the
//!   cascades (at most one per level per entry), never to ticks skipped.
//! - Time never goes backwards inside the wheel: advancing to an earlier tick
//!   does nothing.

/// A point in the wheel's time: a tick number, not milliseconds. Only the
/// engine's timing (`Timing::tick_of`, `Timing::tick_at`,
/// `Timing::start_ms`) converts between the two, so a millisecond instant
/// handed to the wheel is a type error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Tick(pub(crate) u64);

/// Bits of a tick consumed by one level.
const SLOT_BITS: u32 = 6;
/// Slots per level.
const SLOTS: usize = 1 << SLOT_BITS;
/// Number of levels.
pub(crate) const LEVELS: usize = 6;
/// Ticks covered by all levels together (one epoch).
const EPOCH: u64 = 1 << (SLOT_BITS as usize * LEVELS);
/// `Place::bucket` of an entry that is not scheduled.
const UNSCHEDULED: u16 = 0;
/// `Place::bucket` of a parked entry.
const PARKED: u16 = (LEVELS * SLOTS) as u16 + 1;
/// Slot vectors: one per (level, slot), plus the parking vector.
const BUCKETS: usize = LEVELS * SLOTS + 1;
/// A drained slot vector keeps its allocation up to this many ids.
const KEEP_CAPACITY: usize = 4096;

/// Where an entry is filed: its slot vector (`bucket`, 0 when not
/// scheduled) and its position in that vector. Kept in the caller's record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Place {
    pub(crate) bucket: u16,
    pub(crate) pos: u32,
}

impl Place {
    /// Whether the entry is filed in the wheel.
    pub(crate) fn is_scheduled(&self) -> bool {
        self.bucket != UNSCHEDULED
    }
}

/// The largest `Place::bucket` (it fits in 9 bits).
pub(crate) const MAX_BUCKET: u16 = PARKED;

/// The wheel's view of the caller's records, by entry id. The caller keeps
/// each entry's deadline (the wheel never stores it) and its place.
pub(crate) trait Links {
    /// The tick entry `id` is due at. Must not change while it is filed.
    fn deadline(&self, id: u32) -> Tick;
    /// Where entry `id` is filed.
    fn place(&self, id: u32) -> Place;
    /// Record where entry `id` is filed.
    fn set_place(&mut self, id: u32, place: Place);
}

/// The timing wheel: slot vectors and occupancy bitmaps; per-entry state
/// lives in the caller's records.
#[derive(Debug)]
pub(crate) struct Wheel {
    elapsed: u64,
    /// Index `place - 1`: level-major slots, then the parking vector.
    buckets: Vec<Vec<u32>>,
    occupied: [u64; LEVELS],
    /// A lower bound of the parked deadlines (`u64::MAX` when none were
    /// parked since the last re-file).
    parked_min: u64,
    len: usize,
}

/// Where a tick belongs relative to `elapsed`: its level (`LEVELS` for the
/// parking vector).
fn level_for(elapsed: u64, when: u64) -> usize {
    let masked = (elapsed ^ when) | (SLOTS as u64 - 1);
    let significant = 63 - masked.leading_zeros() as usize;
    (significant / SLOT_BITS as usize).min(LEVELS)
}

fn slot_for(when: u64, level: usize) -> usize {
    ((when >> (level * SLOT_BITS as usize)) & (SLOTS as u64 - 1)) as usize
}

fn place_of(level: usize, slot: usize) -> u16 {
    // INVARIANT: level < LEVELS and slot < SLOTS, so this is below PARKED.
    (level * SLOTS + slot + 1) as u16
}

impl Wheel {
    /// An empty wheel whose current tick is `now`.
    pub(crate) fn new(now: Tick) -> Self {
        Wheel {
            elapsed: now.0,
            buckets: (0..BUCKETS).map(|_| Vec::new()).collect(),
            occupied: [0; LEVELS],
            parked_min: u64::MAX,
            len: 0,
        }
    }

    /// The tick up to which every due entry has been fired.
    #[cfg(test)]
    pub(crate) fn elapsed(&self) -> u64 {
        self.elapsed
    }

    /// How many entries are scheduled.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Bytes held by the slot vectors.
    pub(crate) fn bytes(&self) -> usize {
        self.buckets.iter().map(|b| b.capacity() * 4).sum()
    }

    /// Schedule entry `id` (which must not be scheduled) for its
    /// deadline. Returns `false`, filing nothing, when the deadline is not
    /// after the current tick: the entry is due already.
    pub(crate) fn schedule<L: Links>(&mut self, links: &mut L, id: u32) -> bool {
        debug_assert!(!links.place(id).is_scheduled());
        let Tick(deadline) = links.deadline(id);
        if deadline <= self.elapsed {
            return false;
        }
        self.file(links, id, deadline);
        self.len += 1;
        true
    }

    /// Cancel entry `id`. Returns whether it was scheduled; cancelling an
    /// entry that already fired or was never filed does nothing.
    pub(crate) fn cancel<L: Links>(&mut self, links: &mut L, id: u32) -> bool {
        let place = links.place(id);
        if !place.is_scheduled() {
            return false;
        }
        let idx = usize::from(place.bucket - 1);
        let bucket = self.bucket_mut(idx);
        let pos = place.pos as usize;
        debug_assert_eq!(bucket.get(pos), Some(&id));
        bucket.swap_remove(pos);
        if let Some(&moved) = bucket.get(pos) {
            links.set_place(moved, place);
        }
        if bucket.is_empty() && place.bucket != PARKED {
            *self.occupied_mut(idx / SLOTS) &= !(1u64 << (idx % SLOTS));
        }
        links.set_place(id, Place::default());
        self.len -= 1;
        true
    }

    /// Fire every entry whose deadline is at or before `now`, pushing their
    /// ids to `fired` (in no particular order) and unscheduling them.
    pub(crate) fn advance<L: Links>(&mut self, links: &mut L, now: Tick, fired: &mut Vec<u32>) {
        let now = now.0;
        if now < self.elapsed {
            return;
        }
        loop {
            let next = self.next_expiration();
            if !self.bucket(BUCKETS - 1).is_empty() {
                let refile_at = self.parked_min & !(EPOCH - 1);
                let bound = next.map_or(now, |(_, _, start)| start.min(now));
                if refile_at <= bound {
                    self.elapsed = self.elapsed.max(refile_at);
                    self.parked_min = u64::MAX;
                    self.drain(links, BUCKETS - 1, now, fired);
                    continue;
                }
            }
            let Some((level, slot, start)) = next else {
                break;
            };
            if start > now {
                break;
            }
            self.elapsed = self.elapsed.max(start);
            *self.occupied_mut(level) &= !(1u64 << slot);
            // INVARIANT: entries not yet due share their level-`level` slot
            // with `elapsed`, so they drop to a lower level.
            self.drain(links, level * SLOTS + slot, now, fired);
        }
        self.elapsed = now;
    }

    /// Empty one slot vector: fire what is due, re-file the rest.
    fn drain<L: Links>(&mut self, links: &mut L, idx: usize, now: u64, fired: &mut Vec<u32>) {
        let mut ids = std::mem::take(self.bucket_mut(idx));
        for &id in &ids {
            let Tick(deadline) = links.deadline(id);
            if deadline <= now {
                links.set_place(id, Place::default());
                self.len -= 1;
                fired.push(id);
            } else {
                self.file(links, id, deadline);
            }
        }
        ids.clear();
        let bucket = self.bucket_mut(idx);
        if ids.capacity() <= KEEP_CAPACITY && bucket.is_empty() {
            *bucket = ids;
        }
    }

    /// A tick at or before the earliest scheduled deadline, at which
    /// [`advance`](Self::advance) has work to do; `None` when nothing is
    /// scheduled. Exact for entries due within 64 ticks.
    pub(crate) fn next_wakeup(&self) -> Option<Tick> {
        let wheel = self.next_expiration().map(|(_, _, s)| s.max(self.elapsed));
        let parked = (!self.bucket(BUCKETS - 1).is_empty())
            .then(|| (self.parked_min & !(EPOCH - 1)).max(self.elapsed));
        match (wheel, parked) {
            (Some(a), Some(b)) => Some(Tick(a.min(b))),
            (a, b) => a.or(b).map(Tick),
        }
    }

    fn file<L: Links>(&mut self, links: &mut L, id: u32, deadline: u64) {
        let level = level_for(self.elapsed, deadline);
        let place = if level >= LEVELS {
            self.parked_min = self.parked_min.min(deadline);
            PARKED
        } else {
            let slot = slot_for(deadline, level);
            *self.occupied_mut(level) |= 1u64 << slot;
            place_of(level, slot)
        };
        let bucket = self.bucket_mut(usize::from(place - 1));
        // INVARIANT: fewer than 2^32 entries are scheduled.
        let pos = bucket.len() as u32;
        bucket.push(id);
        links.set_place(id, Place { bucket: place, pos });
    }

    /// The slot vector at `idx` (a place minus one).
    #[expect(
        clippy::indexing_slicing,
        reason = "idx < BUCKETS: every place is made by place_of (below PARKED) or is PARKED"
    )]
    fn bucket(&self, idx: usize) -> &Vec<u32> {
        &self.buckets[idx]
    }

    /// The slot vector at `idx`, to change it.
    #[expect(
        clippy::indexing_slicing,
        reason = "idx < BUCKETS: every place is made by place_of (below PARKED) or is PARKED"
    )]
    fn bucket_mut(&mut self, idx: usize) -> &mut Vec<u32> {
        &mut self.buckets[idx]
    }

    /// The occupancy bitmap of `level`.
    #[expect(
        clippy::indexing_slicing,
        reason = "level < LEVELS: levels of filed slots and of parked entries are never asked"
    )]
    fn occupied_mut(&mut self, level: usize) -> &mut u64 {
        &mut self.occupied[level]
    }

    /// The earliest occupied slot: its level, index and first tick.
    fn next_expiration(&self) -> Option<(usize, usize, u64)> {
        for (level, &occupied) in self.occupied.iter().enumerate() {
            if occupied == 0 {
                continue;
            }
            let pos = slot_for(self.elapsed, level);
            let zeros = occupied.rotate_right(pos as u32).trailing_zeros() as usize;
            let slot = (pos + zeros) % SLOTS;
            let slot_span = 1u64 << (level * SLOT_BITS as usize);
            let level_span = slot_span << SLOT_BITS;
            let level_start = self.elapsed & !(level_span - 1);
            let mut start = level_start + slot as u64 * slot_span;
            if slot < pos {
                start = start.saturating_add(level_span);
            }
            return Some((level, slot, start));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[derive(Default)]
    struct TestLinks {
        deadlines: Vec<u64>,
        places: Vec<Place>,
    }

    impl TestLinks {
        fn place(&self, id: u32) -> Place {
            self.places[id as usize]
        }
    }

    impl Links for TestLinks {
        fn deadline(&self, id: u32) -> Tick {
            Tick(self.deadlines[id as usize])
        }
        fn place(&self, id: u32) -> Place {
            self.places[id as usize]
        }
        fn set_place(&mut self, id: u32, place: Place) {
            self.places[id as usize] = place;
        }
    }

    struct Harness {
        wheel: Wheel,
        links: TestLinks,
        model: BTreeMap<u32, u64>,
    }

    impl Harness {
        fn new(start: u64, n: usize) -> Self {
            Harness {
                wheel: Wheel::new(Tick(start)),
                links: TestLinks {
                    deadlines: vec![0; n],
                    places: vec![Place::default(); n],
                },
                model: BTreeMap::new(),
            }
        }

        fn schedule(&mut self, id: u32, deadline: u64) -> bool {
            self.links.deadlines[id as usize] = deadline;
            let filed = self.wheel.schedule(&mut self.links, id);
            assert_eq!(filed, deadline > self.wheel.elapsed());
            if filed {
                self.model.insert(id, deadline);
            }
            filed
        }

        fn cancel(&mut self, id: u32) -> bool {
            let was = self.wheel.cancel(&mut self.links, id);
            assert_eq!(was, self.model.remove(&id).is_some());
            was
        }

        /// Advance and check that exactly the model's due entries fired.
        fn advance(&mut self, now: u64) -> Vec<u32> {
            let mut fired = Vec::new();
            self.wheel.advance(&mut self.links, Tick(now), &mut fired);
            fired.sort_unstable();
            let now = now.max(self.wheel.elapsed());
            let due: Vec<u32> = self
                .model
                .iter()
                .filter(|(_, &d)| d <= now)
                .map(|(&id, _)| id)
                .collect();
            for id in &due {
                self.model.remove(id);
            }
            assert_eq!(fired, due, "fired set differs at tick {now}");
            assert_eq!(self.wheel.len(), self.model.len());
            if let Some(min) = self.model.values().min() {
                let Tick(wake) = self.wheel.next_wakeup().expect("entries are scheduled");
                assert!(wake <= *min, "wakeup {wake} after earliest deadline {min}");
                assert!(wake >= self.wheel.elapsed());
            } else {
                assert_eq!(self.wheel.next_wakeup(), None);
            }
            fired
        }
    }

    #[test]
    fn level_for_matches_the_geometry_table() {
        assert_eq!(level_for(0, 1), 0);
        assert_eq!(level_for(0, 63), 0);
        assert_eq!(level_for(0, 64), 1);
        assert_eq!(level_for(0, 4095), 1);
        assert_eq!(level_for(0, 4096), 2);
        assert_eq!(level_for(0, (1 << 36) - 1), 5);
        assert_eq!(level_for(0, 1 << 36), LEVELS);
        assert_eq!(level_for(63, 64), 1);
    }

    #[test]
    fn every_level_boundary_fires_exactly_on_its_tick() {
        for start in [0u64, 1, 63, 64, 1000, (1 << 36) - 3] {
            for level in 0..=LEVELS {
                let span = 1u64 << (level * 6);
                let mut h = Harness::new(start, 8);
                let deadlines = [span - 1, span, span + 1, 2 * span, 2 * span - 1];
                for (i, d) in deadlines.iter().enumerate() {
                    h.schedule(i as u32, start + d.max(&1));
                }
                let mut ticks: Vec<u64> = h.model.values().copied().collect();
                ticks.sort_unstable();
                ticks.dedup();
                for t in ticks {
                    // One tick before: nothing due at t may fire.
                    h.advance(t - 1);
                    let fired = h.advance(t);
                    assert!(!fired.is_empty(), "nothing fired at {t} (level {level})");
                }
                assert!(h.model.is_empty());
            }
        }
    }

    #[test]
    fn parked_entries_are_refiled_and_fire_on_time() {
        let mut h = Harness::new(5, 4);
        let far = 5 + EPOCH * 3 + 17;
        h.schedule(0, far);
        h.schedule(1, 5 + EPOCH + 1);
        h.schedule(2, 5 + 10);
        assert_eq!(h.links.place(0).bucket, PARKED);
        h.advance(5 + 10);
        h.advance(5 + EPOCH);
        h.advance(5 + EPOCH + 1);
        assert!(h.model.contains_key(&0));
        h.advance(far - 1);
        assert_eq!(h.advance(far), vec![0]);
    }

    #[test]
    fn a_jump_of_centuries_fires_everything_due() {
        let mut h = Harness::new(0, 64);
        for i in 0..64u32 {
            h.schedule(i, 1 + u64::from(i) * 1_000_003_117);
        }
        h.advance(EPOCH * 5);
        assert!(h.model.is_empty());
    }

    #[test]
    fn cancel_filed_parked_and_fired_entries() {
        let mut h = Harness::new(100, 4);
        h.schedule(0, 150);
        h.schedule(1, 100 + EPOCH * 2);
        h.schedule(2, 120);
        assert!(h.cancel(0));
        assert!(!h.cancel(0), "second cancel is a no-op");
        assert!(h.cancel(1));
        assert_eq!(h.advance(200), vec![2]);
        assert!(!h.cancel(2), "cancel after firing is a no-op");
        // A cancelled id can be scheduled again.
        assert!(h.schedule(0, 300));
        assert_eq!(h.advance(300), vec![0]);
    }

    #[test]
    fn due_deadlines_are_refused_and_time_never_goes_back() {
        let mut h = Harness::new(100, 2);
        assert!(!h.schedule(0, 100));
        assert!(!h.schedule(0, 50));
        assert!(h.schedule(0, 101));
        h.wheel.advance(&mut h.links, Tick(10), &mut Vec::new());
        assert_eq!(h.wheel.elapsed(), 100);
        assert_eq!(h.advance(101), vec![0]);
    }

    #[test]
    fn a_cancel_in_the_middle_of_a_list_keeps_the_rest() {
        let mut h = Harness::new(0, 5);
        for i in 0..5 {
            h.schedule(i, 10);
        }
        h.cancel(2);
        h.cancel(4);
        h.cancel(0);
        assert_eq!(h.advance(10), vec![1, 3]);
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        #[derive(Clone, Debug)]
        enum Op {
            Schedule(u32, u64),
            Cancel(u32),
            Advance(u64),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                4 => (0u32..32, prop_oneof![1u64..100, 1u64..10_000, 1u64..(1 << 40)])
                    .prop_map(|(i, d)| Op::Schedule(i, d)),
                2 => (0u32..32).prop_map(Op::Cancel),
                3 => prop_oneof![0u64..70, 0u64..5000, 0u64..(1 << 38)].prop_map(Op::Advance),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]
            #[test]
            fn wheel_matches_a_sorted_map(start in 0u64..(1 << 40), ops in proptest::collection::vec(op(), 1..120)) {
                let mut h = Harness::new(start, 32);
                for op in ops {
                    match op {
                        Op::Schedule(id, delta) => {
                            if h.links.place(id).is_scheduled() {
                                h.cancel(id);
                            }
                            let elapsed = h.wheel.elapsed();
                            h.schedule(id, elapsed + delta);
                        }
                        Op::Cancel(id) => {
                            h.cancel(id);
                        }
                        Op::Advance(by) => {
                            let now = h.wheel.elapsed() + by;
                            h.advance(now);
                        }
                    }
                }
            }
        }
    }
}
