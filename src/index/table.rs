//! One shard's table: groups of eight slots of atomic words with one tag
//! word each, read under the shard's sequence lock.

use std::sync::Arc;

use crate::sync::{fence, spin_loop, AtomicBool, AtomicU64, Ordering};

use super::key::{Key, KeyHasher};
use super::Summary;

/// Slots per group (one tag byte each, one tag word per group).
pub(super) const GROUP: usize = 8;
/// Smallest table, in groups.
pub(super) const MIN_GROUPS: usize = 1;
/// Tables are rebuilt larger when full and deleted slots pass this share
/// of the capacity (numerator over 8).
pub(super) const MAX_LOAD_EIGHTHS: usize = 7;
/// Tables are sized for this load when built (numerator over 100), also
/// when reserved for a known count. Built at 86% (the most a table holds,
/// less room for the shards' uneven shares), 10M grants took 5 bytes less
/// each, but a check that finds nothing took 25% longer at 1M and 47% at
/// 10M: more groups are full, so a miss walks further.
pub(super) const BUILD_LOAD_PERCENT: usize = 80;
/// Shrink when a table is emptier than this (numerator over 100).
pub(super) const MIN_LOAD_PERCENT: usize = 20;

pub(super) const KIND_SHIFT: u32 = 32;
pub(super) const TAG_EMPTY: u8 = 0xff;
pub(super) const TAG_DELETED: u8 = 0x80;
pub(super) const LOW_BITS: u64 = 0x0101_0101_0101_0101;
pub(super) const HIGH_BITS: u64 = 0x8080_8080_8080_8080;

/// The fingerprint of a hash (a full slot's tag): seven bits that neither
/// the shard (the low six bits) nor the home group (the high bits) uses, so
/// the keys of one group have distinct tags.
pub(super) fn tag_of(hash: u64) -> u8 {
    ((hash >> 8) & 0x7f) as u8
}

/// Bytes of `word` equal to `tag`, as their high bits (may report a false
/// candidate next to a true one; keys are compared anyway).
pub(super) fn match_tag(word: u64, tag: u8) -> u64 {
    let x = word ^ (LOW_BITS * u64::from(tag));
    x.wrapping_sub(LOW_BITS) & !x & HIGH_BITS
}

/// Empty bytes (0xff: both top bits set), as their high bits.
pub(super) fn match_empty(word: u64) -> u64 {
    word & (word << 1) & HIGH_BITS
}

/// Empty or deleted bytes (top bit set), as their high bits.
pub(super) fn match_free(word: u64) -> u64 {
    word & HIGH_BITS
}

/// The index within its group of the lowest byte flagged in `m`.
pub(super) fn lowest(m: u64) -> usize {
    (m.trailing_zeros() / 8) as usize
}

pub(super) struct Slot<const K: usize> {
    pub(super) key: [AtomicU64; K],
    pub(super) read: AtomicU64,
    pub(super) edit: AtomicU64,
}

impl<const K: usize> Slot<K> {
    pub(super) fn empty() -> Self {
        Slot {
            key: std::array::from_fn(|_| AtomicU64::new(0)),
            read: AtomicU64::new(0),
            edit: AtomicU64::new(0),
        }
    }

    /// The last key word: the kind (high bits) and the pair's head grant
    /// (low 32 bits). A key has at least four words, so it is always there.
    pub(super) fn meta(&self) -> u64 {
        self.key.last().map_or(0, |m| m.load(Ordering::Relaxed))
    }

    /// Whether the slot holds `key` (whose last word is the kind).
    #[inline(always)]
    pub(super) fn holds(&self, key: &Key<K>) -> bool {
        let (Some((meta, words)), Some((kind, want))) = (self.key.split_last(), key.0.split_last())
        else {
            return false;
        };
        let mut same = (meta.load(Ordering::Relaxed) >> KIND_SHIFT) & 0xffff == *kind;
        for (a, b) in words.iter().zip(want) {
            same &= a.load(Ordering::Relaxed) == *b;
        }
        same
    }

    pub(super) fn load(&self) -> Entry<K> {
        let meta = self.meta();
        let mut key = [0u64; K];
        for (k, a) in key.iter_mut().zip(&self.key) {
            *k = a.load(Ordering::Relaxed);
        }
        if let Some(kind) = key.last_mut() {
            *kind = (meta >> KIND_SHIFT) & 0xffff;
        }
        Entry {
            key: Key(key),
            head: meta as u32,
            summary: Summary {
                read_until: self.read.load(Ordering::Relaxed),
                edit_until: self.edit.load(Ordering::Relaxed),
            },
        }
    }

    pub(super) fn store(&self, e: &Entry<K>) {
        if let (Some((meta, words)), Some((kind, key))) =
            (self.key.split_last(), e.key.0.split_last())
        {
            for (a, k) in words.iter().zip(key) {
                a.store(*k, Ordering::Relaxed);
            }
            meta.store(
                ((kind & 0xffff) << KIND_SHIFT) | u64::from(e.head),
                Ordering::Relaxed,
            );
        }
        self.read.store(e.summary.read_until, Ordering::Relaxed);
        self.edit.store(e.summary.edit_until, Ordering::Relaxed);
    }
}

/// A slot's content as the writer handles it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Entry<const K: usize> {
    pub(super) key: Key<K>,
    pub(super) head: u32,
    pub(super) summary: Summary,
}

/// One shard's table, shared by the writer and the readers.
pub(crate) struct Table<const K: usize> {
    pub(super) seq: AtomicU64,
    pub(super) retired: AtomicBool,
    /// One tag word per group: dense, so probes of large tables find their
    /// tags in cache and miss memory once, on the slot.
    pub(super) tags: Box<[AtomicU64]>,
    pub(super) slots: Box<[Slot<K>]>,
}

/// What a reader found: a summary, or a retired table.
pub(super) enum Read {
    Found(Summary),
    Retired,
}

pub(super) fn home(hash: u64, groups: usize) -> usize {
    ((u128::from(hash) * groups as u128) >> 64) as usize
}

/// Groups for a table that holds `len` entries at the build load.
pub(super) fn groups_for(len: usize) -> usize {
    (len * 100 / BUILD_LOAD_PERCENT)
        .div_ceil(GROUP)
        .max(MIN_GROUPS)
}

impl<const K: usize> Table<K> {
    pub(super) fn with_groups(groups: usize) -> Self {
        let groups = groups.max(MIN_GROUPS);
        Table {
            seq: AtomicU64::new(0),
            retired: AtomicBool::new(false),
            tags: (0..groups).map(|_| AtomicU64::new(u64::MAX)).collect(),
            slots: (0..groups * GROUP).map(|_| Slot::empty()).collect(),
        }
    }

    pub(super) fn cap(&self) -> usize {
        self.slots.len()
    }

    pub(super) fn groups(&self) -> usize {
        self.tags.len()
    }

    #[expect(
        clippy::indexing_slicing,
        reason = "i < cap: callers pass a slot this table's probe found or its writer issued"
    )]
    pub(super) fn slot(&self, i: usize) -> &Slot<K> {
        &self.slots[i]
    }

    #[expect(
        clippy::indexing_slicing,
        reason = "g < groups: callers pass the group of a slot of this table"
    )]
    pub(super) fn tags(&self, g: usize) -> &AtomicU64 {
        &self.tags[g]
    }

    /// Entries a table may hold, deleted slots included, before a rebuild.
    pub(super) fn max_used(&self) -> usize {
        self.cap() * MAX_LOAD_EIGHTHS / 8
    }

    pub(super) fn begin_write(&self) {
        let s = self.seq.load(Ordering::Relaxed);
        self.seq.store(s.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
    }

    pub(super) fn end_write(&self) {
        let s = self.seq.load(Ordering::Relaxed);
        self.seq.store(s.wrapping_add(1), Ordering::Release);
    }

    pub(super) fn retire(&self) {
        self.retired.store(true, Ordering::Release);
        self.begin_write();
    }

    pub(super) fn tag(&self, slot: usize) -> u8 {
        (self.tags(slot / GROUP).load(Ordering::Relaxed) >> (8 * (slot % GROUP))) as u8
    }

    pub(super) fn set_tag(&self, slot: usize, tag: u8) {
        let word = self.tags(slot / GROUP);
        let shift = 8 * (slot % GROUP);
        let w = word.load(Ordering::Relaxed);
        word.store(
            (w & !(0xff << shift)) | (u64::from(tag) << shift),
            Ordering::Relaxed,
        );
    }

    /// Probe for `key`, calling `found` with the slot's index. Bounded by
    /// the number of groups, so torn reads cannot loop forever.
    #[inline(always)]
    pub(super) fn probe(&self, key: &Key<K>, hash: u64) -> Option<usize> {
        let groups = self.groups();
        let tag = tag_of(hash);
        let mut g = home(hash, groups);
        let mut left = groups;
        loop {
            // `g` stays below `groups` (it wraps); fail closed otherwise.
            let word = self.tags.get(g)?.load(Ordering::Relaxed);
            let mut m = match_tag(word, tag);
            while m != 0 {
                let i = g * GROUP + lowest(m);
                if self.slots.get(i).is_some_and(|s| s.holds(key)) {
                    return Some(i);
                }
                m &= m - 1;
            }
            left -= 1;
            if match_empty(word) != 0 || left == 0 {
                return None;
            }
            g += 1;
            if g == groups {
                g = 0;
            }
        }
    }

    /// The reader's lookup under the sequence lock.
    #[inline(always)]
    pub(super) fn read(&self, key: &Key<K>, hash: u64) -> Read {
        loop {
            let s1 = self.seq.load(Ordering::Acquire);
            if s1 & 1 == 0 {
                let found = match self.probe(key, hash).and_then(|i| self.slots.get(i)) {
                    Some(slot) => Summary {
                        read_until: slot.read.load(Ordering::Relaxed),
                        edit_until: slot.edit.load(Ordering::Relaxed),
                    },
                    None => Summary::default(),
                };
                fence(Ordering::Acquire);
                if self.seq.load(Ordering::Relaxed) == s1 {
                    return Read::Found(found);
                }
            } else if self.retired.load(Ordering::Acquire) {
                return Read::Retired;
            }
            spin_loop();
        }
    }

    /// The first free slot on `hash`'s probe sequence.
    pub(super) fn free_slot(&self, hash: u64) -> Option<usize> {
        let groups = self.groups();
        let mut g = home(hash, groups);
        for _ in 0..groups {
            let m = match_free(self.tags(g).load(Ordering::Relaxed));
            if m != 0 {
                return Some(g * GROUP + lowest(m));
            }
            g += 1;
            if g == groups {
                g = 0;
            }
        }
        None
    }

    /// Mark a slot free. It becomes empty when its group has an empty slot
    /// already (then no probe ever passed this group), deleted otherwise.
    /// Returns whether it became empty.
    pub(super) fn free(&self, slot: usize) -> bool {
        let empty = match_empty(self.tags(slot / GROUP).load(Ordering::Relaxed)) != 0;
        self.set_tag(slot, if empty { TAG_EMPTY } else { TAG_DELETED });
        empty
    }

    pub(super) fn entries(&self) -> impl Iterator<Item = Entry<K>> + '_ {
        (0..self.cap())
            .filter(|i| self.tag(*i) & 0x80 == 0)
            .map(|i| self.slot(i).load())
    }
}

/// The writer's handle on one shard.
pub(super) struct Shard<const K: usize> {
    pub(super) table: Arc<Table<K>>,
    pub(super) len: usize,
    /// Slots used, by entries or deleted markers.
    pub(super) used: usize,
}

impl<const K: usize> Shard<K> {
    pub(super) fn new() -> Self {
        Shard {
            table: Arc::new(Table::with_groups(MIN_GROUPS)),
            len: 0,
            used: 0,
        }
    }

    /// Add an absent entry; returns its slot and, when the table had to be
    /// rebuilt, the table it replaced (the caller publishes, then retires
    /// it).
    pub(super) fn insert(
        &mut self,
        hasher: &KeyHasher,
        entry: Entry<K>,
        hash: u64,
        report: &mut dyn FnMut(u32, usize),
    ) -> (usize, Option<Arc<Table<K>>>) {
        let table = &self.table;
        let free = table
            .free_slot(hash)
            .filter(|&slot| table.tag(slot) == TAG_DELETED || self.used < table.max_used());
        if let Some(slot) = free {
            if table.tag(slot) == TAG_EMPTY {
                self.used += 1;
            }
            self.len += 1;
            table.begin_write();
            table.slot(slot).store(&entry);
            table.set_tag(slot, tag_of(hash));
            table.end_write();
            return (slot, None);
        }
        // Full: grow, or just sweep the deleted markers out.
        let groups = if self.len < table.max_used() / 2 {
            table.groups()
        } else {
            (table.groups() * 3 / 2 + 1).max(groups_for(self.len + 1))
        };
        let old = self.rebuild(hasher, groups, Some(entry), report);
        self.len += 1;
        self.used = self.len;
        // INVARIANT: the entry was just placed in the new table.
        let slot = self.table.probe(&entry.key, hash).unwrap_or(0);
        (slot, Some(old))
    }

    /// Remove slot `slot`. Returns the replaced table when it shrank.
    pub(super) fn remove(
        &mut self,
        hasher: &KeyHasher,
        slot: usize,
        report: &mut dyn FnMut(u32, usize),
    ) -> Option<Arc<Table<K>>> {
        let table = &self.table;
        table.begin_write();
        let emptied = table.free(slot);
        table.end_write();
        if emptied {
            self.used -= 1;
        }
        self.len -= 1;
        let (groups, cap) = (table.groups(), table.cap());
        if groups > MIN_GROUPS && self.len * 100 < cap * MIN_LOAD_PERCENT {
            let old = self.rebuild(hasher, groups_for(self.len), None, report);
            self.used = self.len;
            return Some(old);
        }
        None
    }

    /// Move every entry (and `extra`) into a new table of `groups` groups,
    /// reporting each entry's new slot. Returns the old table.
    pub(super) fn rebuild(
        &mut self,
        hasher: &KeyHasher,
        groups: usize,
        extra: Option<Entry<K>>,
        report: &mut dyn FnMut(u32, usize),
    ) -> Arc<Table<K>> {
        let table = Table::with_groups(groups);
        for e in self.table.entries().chain(extra) {
            let hash = hasher.hash(&e.key);
            // INVARIANT: the new table is sized above its entries, so a
            // free slot exists.
            if let Some(slot) = table.free_slot(hash) {
                table.slot(slot).store(&e);
                table.set_tag(slot, tag_of(hash));
                report(e.head, slot);
            }
        }
        std::mem::replace(&mut self.table, Arc::new(table))
    }
}
