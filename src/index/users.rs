//! Users by number: a slot names its user by a 32-bit number, not by the
//! user's 16-byte id, so each user's id is held once, not once per pair.
//!
//! - **Names** (shared with readers): user number to id, in segments that
//!   are allocated as numbers are first used and never move, so a reader
//!   needs no lock and no republished directory to follow growth. A check
//!   that finds a slot whose entity matches loads the slot's user number's
//!   id and compares it with the id it was asked about.
//! - **The dictionary** (the writer's alone): id to number, and a count of
//!   the pairs naming each number. A number whose count falls to zero is
//!   freed and may later name another user.
//!
//! # Why a reader may trust a name it loaded
//!
//! A reader compares a name only while it probes a table under that
//! table's sequence lock, and keeps the answer only if the sequence did not
//! move. The writer writes a number's name before any slot names the
//! number (so a reader that sees the slot in a stable table sees the name),
//! and renames a number only after every slot naming it was removed, with
//! a release fence before the new name: a reader that loaded the new name
//! then sees the table's sequence moved by that removal, and retries.

use std::sync::{Arc, OnceLock};

use hashbrown::HashTable;

use crate::sync::{fence, AtomicU64, Ordering};

use super::key::KeyHasher;

/// Numbers in the first segment, as a power of two. Small in the loom
/// models, whose state grows with every atomic word.
#[cfg(not(grantwheel_loom))]
const FIRST_BITS: u32 = 10;
#[cfg(grantwheel_loom)]
const FIRST_BITS: u32 = 4;

/// Segments double from `2^FIRST_BITS` numbers up to `2^CHUNK_BITS`, then
/// stay at that size: a user costs its 16 bytes and at most a
/// sixteen-millionth of the last chunk's spare room beyond, where doubling
/// to the end would leave up to half the names unused.
const CHUNK_BITS: u32 = 20;
const DOUBLING: usize = (CHUNK_BITS - FIRST_BITS) as usize;

/// User numbers are below this. Every number names at least one pair, and
/// an engine holds fewer grants than this (`MAX_GRANTS`, 2^30 - 1).
const MAX_USERS: u64 = 1 << 31;

/// Segments enough for every number below `MAX_USERS`.
const SEGMENTS: usize = DOUBLING + (MAX_USERS >> CHUNK_BITS) as usize;

/// One user's id, as two words.
struct Name([AtomicU64; 2]);

/// User number to id, readable without a lock.
pub(super) struct Names {
    segments: Box<[OnceLock<Box<[Name]>>]>,
}

/// The segment of number `n` and its place in it.
#[inline(always)]
fn locate(n: u32) -> (usize, usize) {
    let m = u64::from(n) + (1 << FIRST_BITS);
    if m < 1 << CHUNK_BITS {
        let top = 63 - m.leading_zeros();
        ((top - FIRST_BITS) as usize, (m - (1 << top)) as usize)
    } else {
        (
            DOUBLING + (m >> CHUNK_BITS) as usize - 1,
            (m & ((1 << CHUNK_BITS) - 1)) as usize,
        )
    }
}

/// Numbers in segment `s`.
fn segment_len(s: usize) -> usize {
    1 << (FIRST_BITS as usize + s.min(DOUBLING))
}

impl Names {
    fn new() -> Self {
        let names = Names {
            segments: (0..SEGMENTS).map(|_| OnceLock::new()).collect(),
        };
        // Made before any reader runs: the loom models' readers then never
        // meet a segment made under them (loom cannot see `OnceLock`).
        names.segment(0);
        names
    }

    fn segment(&self, s: usize) -> Option<&[Name]> {
        let cell = self.segments.get(s)?;
        Some(cell.get_or_init(|| {
            (0..segment_len(s))
                .map(|_| Name([AtomicU64::new(0), AtomicU64::new(0)]))
                .collect()
        }))
    }

    fn name(&self, n: u32) -> Option<&Name> {
        let (s, i) = locate(n);
        self.segments.get(s)?.get()?.get(i)
    }

    /// Whether number `n` names `user`. Lock-free; only meaningful under a
    /// table's sequence lock (see the module's notes).
    #[inline(always)]
    pub(super) fn is(&self, n: u32, user: [u64; 2]) -> bool {
        let [hi, lo] = user;
        self.name(n).is_some_and(|Name([a, b])| {
            a.load(Ordering::Relaxed) == hi && b.load(Ordering::Relaxed) == lo
        })
    }

    /// The id number `n` names (the writer's view).
    pub(super) fn get(&self, n: u32) -> [u64; 2] {
        self.name(n).map_or([0, 0], |Name([a, b])| {
            [a.load(Ordering::Relaxed), b.load(Ordering::Relaxed)]
        })
    }

    fn set(&self, n: u32, user: [u64; 2]) {
        let (s, i) = locate(n);
        if let Some(Name([a, b])) = self.segment(s).and_then(|seg| seg.get(i)) {
            // A reader that loads this name sees every removal before it.
            let [hi, lo] = user;
            // The removals that freed `n` were each opened by a release
            // fence (`begin_write`) after their table's sequence went odd;
            // this one keeps the order without relying on that.
            fence(Ordering::Release);
            a.store(hi, Ordering::Relaxed);
            b.store(lo, Ordering::Relaxed);
        }
    }

    /// Bytes held by the segments made so far.
    fn bytes(&self) -> usize {
        let made: usize = self
            .segments
            .iter()
            .filter_map(OnceLock::get)
            .map(|s| s.len())
            .sum();
        made * std::mem::size_of::<Name>()
    }
}

/// The writer's dictionary of users.
pub(super) struct Users {
    hasher: KeyHasher,
    pub(super) names: Arc<Names>,
    /// Numbers by the hash of their ids (looked up through `names`).
    by_id: HashTable<u32>,
    /// Pairs naming each number (zero: free).
    counts: Vec<u32>,
    /// Freed numbers, reused before new ones.
    free: Vec<u32>,
}

impl Users {
    pub(super) fn new(hasher: KeyHasher) -> Self {
        Users {
            hasher,
            names: Arc::new(Names::new()),
            by_id: HashTable::new(),
            counts: Vec::new(),
            free: Vec::new(),
        }
    }

    /// The number of `user`, made if new; counts one more pair naming it.
    pub(super) fn intern(&mut self, user: [u64; 2]) -> u32 {
        let hash = self.hasher.user_hash(user);
        let names = &self.names;
        if let Some(&n) = self.by_id.find(hash, |&n| names.get(n) == user) {
            if let Some(c) = self.counts.get_mut(n as usize) {
                *c += 1;
            }
            return n;
        }
        // INVARIANT: below `MAX_USERS` (see there), so a new number fits
        // in 32 bits and has a segment.
        let n = match self.free.pop() {
            Some(n) => n,
            None => {
                // Grown by a quarter, not doubled: a count per user.
                if self.counts.len() == self.counts.capacity() {
                    self.counts.reserve_exact(self.counts.len() / 4 + 64);
                }
                self.counts.push(0);
                (self.counts.len() - 1) as u32
            }
        };
        if let Some(c) = self.counts.get_mut(n as usize) {
            *c = 1;
        }
        self.names.set(n, user);
        let (hasher, names) = (self.hasher, &self.names);
        self.by_id
            .insert_unique(hash, n, |&m| hasher.user_hash(names.get(m)));
        n
    }

    /// One pair naming number `n` is gone; frees the number with its last.
    pub(super) fn release(&mut self, n: u32) {
        let Some(c) = self.counts.get_mut(n as usize) else {
            return;
        };
        *c = c.saturating_sub(1);
        if *c > 0 {
            return;
        }
        let user = self.names.get(n);
        let hash = self.hasher.user_hash(user);
        if let Ok(entry) = self.by_id.find_entry(hash, |&m| m == n) {
            entry.remove();
        }
        self.free.push(n);
    }

    /// Users with at least one pair.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Bytes held: names, the dictionary, counts and free numbers.
    pub(super) fn bytes(&self) -> usize {
        self.names.bytes()
            + self.by_id.capacity() * (std::mem::size_of::<u32>() + 1)
            + (self.counts.capacity() + self.free.capacity()) * std::mem::size_of::<u32>()
    }
}

#[cfg(all(test, not(grantwheel_loom)))]
mod tests {
    use super::*;

    #[test]
    fn numbers_map_to_segments_without_gaps() {
        let mut expect = (0usize, 0usize);
        for n in 0..5_000_000u32 {
            assert_eq!(locate(n), expect, "number {n}");
            expect.1 += 1;
            if expect.1 == segment_len(expect.0) {
                expect = (expect.0 + 1, 0);
            }
        }
        let (s, i) = locate((MAX_USERS - 1) as u32);
        // The numbers are shifted by the first segment's size.
        assert_eq!((s, i + 1), (SEGMENTS - 1, 1 << FIRST_BITS));
    }

    #[test]
    fn numbers_are_shared_counted_freed_and_reused() {
        let mut users = Users::new(KeyHasher::random());
        let a = users.intern([1, 2]);
        let b = users.intern([3, 4]);
        assert_ne!(a, b);
        assert_eq!(users.intern([1, 2]), a);
        assert!(users.names.is(a, [1, 2]) && users.names.is(b, [3, 4]));
        assert!(!users.names.is(a, [3, 4]));
        users.release(a);
        assert_eq!(users.len(), 2, "a still names one pair");
        users.release(a);
        assert_eq!(users.len(), 1);
        let c = users.intern([5, 6]);
        assert_eq!(c, a, "the freed number is reused");
        assert!(users.names.is(c, [5, 6]));
        assert_eq!(users.intern([3, 4]), b);
    }

    #[test]
    fn many_users_keep_their_numbers_across_segments() {
        let mut users = Users::new(KeyHasher::random());
        let ids: Vec<[u64; 2]> = (0..50_000u64).map(|i| [i * 31 + 7, !i]).collect();
        let numbers: Vec<u32> = ids.iter().map(|&u| users.intern(u)).collect();
        for (u, n) in ids.iter().zip(&numbers) {
            assert!(users.names.is(*n, *u));
            assert_eq!(users.intern(*u), *n);
        }
        assert_eq!(users.len(), ids.len());
    }
}
