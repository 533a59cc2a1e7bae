//! The grant index: for each (user, entity) pair, the instants until which
//! the pair may read and edit, readable by any number of threads without a
//! lock and without writing to shared memory.
//!
//! # Ground rules
//!
//! - **One writer at a time.** Every change happens under the engine's state
//!   mutex. The index only adds lock-free readers beside that writer.
//! - **Readers only load.** A table is an open-addressing array of atomic
//!   words guarded by a sequence lock: the writer makes the sequence odd,
//!   changes slots, and makes it even again; a reader loads the sequence,
//!   probes, and loads it again, retrying if it moved. Readers never store,
//!   so two threads checking never fight over a cache line.
//! - **Probing.** Slots come in groups of eight, each group with one word
//!   of eight tag bytes: a 7-bit fingerprint of the hash for a full slot,
//!   or an empty or deleted marker. A probe loads a group's tag word,
//!   compares the key only in slots whose fingerprint matches, and stops at
//!   a group that has an empty slot; otherwise it moves to the next group.
//!   The home group is the high bits of the hash scaled to the number of
//!   groups, so capacities need not be powers of two and tables grow by
//!   half. Entries never move except when a table is rebuilt.
//! - **Shards.** The pairs are split over [`SHARDS`] tables per key shape
//!   (numeric entity ids, UUID entity ids) by the low bits of the hash: a
//!   write makes readers of one shard retry, not all, and a table rebuilt
//!   to grow or shrink is one shard's worth of work.
//! - **Publishing a rebuilt table.** The writer builds the new table aside
//!   while readers keep using the old one, publishes a new directory of
//!   tables, bumps the directory version, then retires the old table
//!   (leaves its sequence odd for good). Each thread caches the directory it
//!   last used with its version; a check compares one shared, read-mostly
//!   version word. A retired table sends its readers to the new directory.
//!   A thread's cache keeps the tables it last saw alive until it checks
//!   again or exits.
//! - **Slot words.** `key[..K-1]` hold the key, `key[K-1]` holds the meta
//!   word (entity kind and the writer's head grant), then the read-until
//!   and edit-until instants (milliseconds).

use std::cell::RefCell;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::ids::{EntityId, EntityKind, EntityRef, UserId};

/// Tables per key shape.
pub(crate) const SHARDS: usize = 64;
// A packed locator keeps six bits of shard.
const _: () = assert!(SHARDS <= 64 && SHARDS.is_power_of_two());
/// Slots per group (one tag byte each, one tag word per group).
const GROUP: usize = 8;
/// Smallest table, in groups.
const MIN_GROUPS: usize = 1;
/// Tables are rebuilt larger when full and deleted slots pass this share
/// of the capacity (numerator over 8).
const MAX_LOAD_EIGHTHS: usize = 7;
/// Tables are sized for this load when built (numerator over 100).
const BUILD_LOAD_PERCENT: usize = 80;
/// Shrink when a table is emptier than this (numerator over 100).
const MIN_LOAD_PERCENT: usize = 20;

const KIND_SHIFT: u32 = 32;
const TAG_EMPTY: u8 = 0xff;
const TAG_DELETED: u8 = 0x80;
const LOW_BITS: u64 = 0x0101_0101_0101_0101;
const HIGH_BITS: u64 = 0x8080_8080_8080_8080;

/// The access summary of one (user, entity) pair.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Summary {
    /// The pair may read while `now < read_until`.
    pub(crate) read_until: u64,
    /// The pair may edit while `now < edit_until`.
    pub(crate) edit_until: u64,
}

/// Which table holds a pair: key shape, shard and slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Locator {
    pub(crate) uuid_entity: bool,
    pub(crate) shard: u8,
    pub(crate) slot: u32,
}

/// A [`Locator`] in four bytes: key shape (1 bit), shard (6 bits), slot
/// (25 bits, so up to 32M slots per shard, 2G pairs per shape).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PackedLocator(u32);

const SLOT_BITS: u32 = 25;

impl From<Locator> for PackedLocator {
    fn from(l: Locator) -> Self {
        PackedLocator(
            (u32::from(l.uuid_entity) << 31)
                | (u32::from(l.shard) << SLOT_BITS)
                | (l.slot & ((1 << SLOT_BITS) - 1)),
        )
    }
}

impl From<PackedLocator> for Locator {
    fn from(p: PackedLocator) -> Self {
        Locator {
            uuid_entity: p.0 >> 31 == 1,
            shard: ((p.0 >> SLOT_BITS) & 0x3f) as u8,
            slot: p.0 & ((1 << SLOT_BITS) - 1),
        }
    }
}

/// An encoded key: user words, entity words, kind (the last word).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Key<const K: usize>([u64; K]);

impl<const K: usize> std::hash::Hash for Key<K> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        for w in self.0 {
            state.write_u64(w);
        }
    }
}

/// A pair's key in one of the two shapes.
#[derive(Clone, Copy, Debug)]
pub(crate) enum PairKey {
    Num(Key<4>),
    Uuid(Key<5>),
}

impl PairKey {
    #[inline]
    pub(crate) fn new(user: &UserId, entity: &EntityId) -> Self {
        let u = user.as_u128();
        let (hi, lo) = ((u >> 64) as u64, u as u64);
        let kind = u64::from(entity.kind.code());
        match entity.id {
            EntityRef::Number(n) => PairKey::Num(Key([hi, lo, n, kind])),
            EntityRef::Uuid(e) => {
                let e = e.as_u128();
                PairKey::Uuid(Key([hi, lo, (e >> 64) as u64, e as u64, kind]))
            }
        }
    }
}

/// A keyed hash of the fixed-width keys: pairs of words are multiplied
/// into 128 bits and folded (independent multiplies, one final mix). The
/// seeds are random per engine, so hash flooding needs the seeds.
#[derive(Clone, Copy, Debug)]
pub(crate) struct KeyHasher {
    seeds: [u64; 2],
}

/// Per-word constants (digits of pi), so equal words in different
/// positions do not cancel.
const PI: [u64; 5] = [
    0x243f_6a88_85a3_08d3,
    0x1319_8a2e_0370_7344,
    0xa409_3822_299f_31d0,
    0x082e_fa98_ec4e_6c89,
    0x4528_21e6_38d0_1377,
];

fn fold_mul(a: u64, b: u64) -> u64 {
    let f = u128::from(a) * u128::from(b);
    (f as u64) ^ ((f >> 64) as u64)
}

impl KeyHasher {
    fn random() -> Self {
        use std::hash::BuildHasher;
        let state = std::collections::hash_map::RandomState::new();
        KeyHasher {
            seeds: std::array::from_fn(|i| state.hash_one(i) | 1),
        }
    }

    #[inline(always)]
    fn hash<const K: usize>(&self, key: &Key<K>) -> u64 {
        let [s0, s1] = self.seeds;
        let w = &key.0;
        let mut h = 0;
        let mut i = 0;
        while i < K {
            let a = w[i] ^ s0 ^ PI[i];
            let b = if i + 1 < K {
                w[i + 1] ^ s1 ^ PI[i + 1]
            } else {
                s1
            };
            h ^= fold_mul(a, b);
            i += 2;
        }
        fold_mul(h ^ s0, 0x9e37_79b9_7f4a_7c15)
    }
}

/// The fingerprint of a hash (a full slot's tag): seven bits that neither
/// the shard (the low six bits) nor the home group (the high bits) uses, so
/// the keys of one group have distinct tags.
fn tag_of(hash: u64) -> u8 {
    ((hash >> 8) & 0x7f) as u8
}

/// Bytes of `word` equal to `tag`, as their high bits (may report a false
/// candidate next to a true one; keys are compared anyway).
fn match_tag(word: u64, tag: u8) -> u64 {
    let x = word ^ (LOW_BITS * u64::from(tag));
    x.wrapping_sub(LOW_BITS) & !x & HIGH_BITS
}

/// Empty bytes (0xff: both top bits set), as their high bits.
fn match_empty(word: u64) -> u64 {
    word & (word << 1) & HIGH_BITS
}

/// Empty or deleted bytes (top bit set), as their high bits.
fn match_free(word: u64) -> u64 {
    word & HIGH_BITS
}

/// The index within its group of the lowest byte flagged in `m`.
fn lowest(m: u64) -> usize {
    (m.trailing_zeros() / 8) as usize
}

struct Slot<const K: usize> {
    key: [AtomicU64; K],
    read: AtomicU64,
    edit: AtomicU64,
}

impl<const K: usize> Slot<K> {
    fn empty() -> Self {
        Slot {
            key: std::array::from_fn(|_| AtomicU64::new(0)),
            read: AtomicU64::new(0),
            edit: AtomicU64::new(0),
        }
    }

    fn meta(&self) -> u64 {
        self.key[K - 1].load(Ordering::Relaxed)
    }

    /// Whether the slot holds `key` (whose last word is the kind).
    #[inline(always)]
    fn holds(&self, key: &Key<K>) -> bool {
        let mut same = (self.meta() >> KIND_SHIFT) & 0xffff == key.0[K - 1];
        for (a, b) in self.key[..K - 1].iter().zip(&key.0[..K - 1]) {
            same &= a.load(Ordering::Relaxed) == *b;
        }
        same
    }

    fn load(&self) -> Entry<K> {
        let meta = self.meta();
        let mut key = [0u64; K];
        for (k, a) in key.iter_mut().zip(&self.key) {
            *k = a.load(Ordering::Relaxed);
        }
        key[K - 1] = (meta >> KIND_SHIFT) & 0xffff;
        Entry {
            key: Key(key),
            head: meta as u32,
            summary: Summary {
                read_until: self.read.load(Ordering::Relaxed),
                edit_until: self.edit.load(Ordering::Relaxed),
            },
        }
    }

    fn store(&self, e: &Entry<K>) {
        for (a, k) in self.key[..K - 1].iter().zip(&e.key.0[..K - 1]) {
            a.store(*k, Ordering::Relaxed);
        }
        let meta = ((e.key.0[K - 1] & 0xffff) << KIND_SHIFT) | u64::from(e.head);
        self.key[K - 1].store(meta, Ordering::Relaxed);
        self.read.store(e.summary.read_until, Ordering::Relaxed);
        self.edit.store(e.summary.edit_until, Ordering::Relaxed);
    }
}

/// A slot's content as the writer handles it.
#[derive(Clone, Copy, Debug)]
struct Entry<const K: usize> {
    key: Key<K>,
    head: u32,
    summary: Summary,
}

/// One shard's table, shared by the writer and the readers.
pub(crate) struct Table<const K: usize> {
    seq: AtomicU64,
    retired: AtomicBool,
    /// One tag word per group: dense, so probes of large tables find their
    /// tags in cache and miss memory once, on the slot.
    tags: Box<[AtomicU64]>,
    slots: Box<[Slot<K>]>,
}

/// What a reader found: a summary, or a retired table.
enum Read {
    Found(Summary),
    Retired,
}

fn home(hash: u64, groups: usize) -> usize {
    ((u128::from(hash) * groups as u128) >> 64) as usize
}

/// Groups for a table that holds `len` entries at the build load.
fn groups_for(len: usize) -> usize {
    (len * 100 / BUILD_LOAD_PERCENT)
        .div_ceil(GROUP)
        .max(MIN_GROUPS)
}

impl<const K: usize> Table<K> {
    fn with_groups(groups: usize) -> Self {
        let groups = groups.max(MIN_GROUPS);
        Table {
            seq: AtomicU64::new(0),
            retired: AtomicBool::new(false),
            tags: (0..groups).map(|_| AtomicU64::new(u64::MAX)).collect(),
            slots: (0..groups * GROUP).map(|_| Slot::empty()).collect(),
        }
    }

    fn cap(&self) -> usize {
        self.slots.len()
    }

    fn groups(&self) -> usize {
        self.tags.len()
    }

    fn slot(&self, i: usize) -> &Slot<K> {
        &self.slots[i]
    }

    fn tags(&self, g: usize) -> &AtomicU64 {
        &self.tags[g]
    }

    /// Entries a table may hold, deleted slots included, before a rebuild.
    fn max_used(&self) -> usize {
        self.cap() * MAX_LOAD_EIGHTHS / 8
    }

    fn begin_write(&self) {
        let s = self.seq.load(Ordering::Relaxed);
        self.seq.store(s.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
    }

    fn end_write(&self) {
        let s = self.seq.load(Ordering::Relaxed);
        self.seq.store(s.wrapping_add(1), Ordering::Release);
    }

    fn retire(&self) {
        self.retired.store(true, Ordering::Release);
        self.begin_write();
    }

    fn tag(&self, slot: usize) -> u8 {
        (self.tags(slot / GROUP).load(Ordering::Relaxed) >> (8 * (slot % GROUP))) as u8
    }

    fn set_tag(&self, slot: usize, tag: u8) {
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
    fn probe(&self, key: &Key<K>, hash: u64) -> Option<usize> {
        let groups = self.groups();
        let tag = tag_of(hash);
        let mut g = home(hash, groups);
        let mut left = groups;
        loop {
            let word = self.tags[g].load(Ordering::Relaxed);
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
    fn read(&self, key: &Key<K>, hash: u64) -> Read {
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
            std::hint::spin_loop();
        }
    }

    /// The first free slot on `hash`'s probe sequence.
    fn free_slot(&self, hash: u64) -> Option<usize> {
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
    fn free(&self, slot: usize) -> bool {
        let empty = match_empty(self.tags(slot / GROUP).load(Ordering::Relaxed)) != 0;
        self.set_tag(slot, if empty { TAG_EMPTY } else { TAG_DELETED });
        empty
    }

    fn entries(&self) -> impl Iterator<Item = Entry<K>> + '_ {
        (0..self.cap())
            .filter(|i| self.tag(*i) & 0x80 == 0)
            .map(|i| self.slot(i).load())
    }
}

/// The writer's handle on one shard.
struct Shard<const K: usize> {
    table: Arc<Table<K>>,
    len: usize,
    /// Slots used, by entries or deleted markers.
    used: usize,
}

impl<const K: usize> Shard<K> {
    fn new() -> Self {
        Shard {
            table: Arc::new(Table::with_groups(MIN_GROUPS)),
            len: 0,
            used: 0,
        }
    }

    /// Add an absent entry; returns its slot and, when the table had to be
    /// rebuilt, the table it replaced (the caller publishes, then retires
    /// it).
    fn insert(
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
    fn remove(
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
    fn rebuild(
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

/// The tables readers use, one directory version.
struct Directory {
    num: [Arc<Table<4>>; SHARDS],
    uuid: [Arc<Table<5>>; SHARDS],
}

/// A thread's cached directory.
struct ReaderCache {
    index: u64,
    version: u64,
    dir: Option<Arc<Directory>>,
}

thread_local! {
    static READER: RefCell<ReaderCache> = const {
        RefCell::new(ReaderCache { index: u64::MAX, version: 0, dir: None })
    };
}

static NEXT_INDEX_ID: AtomicU64 = AtomicU64::new(0);

/// The read side of the index: shared by all threads.
pub(crate) struct IndexReader {
    id: u64,
    hasher: KeyHasher,
    version: AtomicU64,
    published: Mutex<Arc<Directory>>,
}

/// The write side of the index: owned by the engine state.
pub(crate) struct IndexWriter {
    hasher: KeyHasher,
    num: Vec<Shard<4>>,
    uuid: Vec<Shard<5>>,
}

/// Build the index: its shared read side and its write side.
pub(crate) fn new_index() -> (IndexReader, IndexWriter) {
    let hasher = KeyHasher::random();
    let writer = IndexWriter {
        hasher,
        num: (0..SHARDS).map(|_| Shard::new()).collect(),
        uuid: (0..SHARDS).map(|_| Shard::new()).collect(),
    };
    let reader = IndexReader {
        id: NEXT_INDEX_ID.fetch_add(1, Ordering::Relaxed),
        hasher,
        version: AtomicU64::new(0),
        published: Mutex::new(Arc::new(writer.directory())),
    };
    (reader, writer)
}

fn shard_of(hash: u64) -> usize {
    (hash as usize) & (SHARDS - 1)
}

#[inline(always)]
fn hash_key(hasher: &KeyHasher, key: &PairKey) -> u64 {
    match key {
        PairKey::Num(k) => hasher.hash(k),
        PairKey::Uuid(k) => hasher.hash(k),
    }
}

impl IndexReader {
    /// The summary of a pair (all zero when absent). Lock-free; never
    /// allocates once the thread has cached the directory.
    #[inline]
    pub(crate) fn summary(&self, user: &UserId, entity: &EntityId) -> Summary {
        match PairKey::new(user, entity) {
            PairKey::Num(k) => self.lookup(&k, |d| &d.num),
            PairKey::Uuid(k) => self.lookup(&k, |d| &d.uuid),
        }
    }

    /// The lookup for one key shape, through this thread's cached
    /// directory.
    #[inline(always)]
    fn lookup<const K: usize>(
        &self,
        key: &Key<K>,
        pick: fn(&Directory) -> &[Arc<Table<K>>; SHARDS],
    ) -> Summary {
        let hash = self.hasher.hash(key);
        let shard = shard_of(hash);
        let fast = READER.try_with(|cell| {
            let cache = cell.try_borrow().ok()?;
            if cache.index != self.id || cache.version != self.version.load(Ordering::Acquire) {
                return None;
            }
            match pick(cache.dir.as_ref()?)[shard].read(key, hash) {
                Read::Found(s) => Some(s),
                Read::Retired => None,
            }
        });
        match fast {
            Ok(Some(s)) => s,
            _ => self.lookup_slow(key, hash, pick),
        }
    }

    /// The lookup when this thread's cached directory is missing or stale:
    /// refresh the cache, then read.
    #[cold]
    #[inline(never)]
    fn lookup_slow<const K: usize>(
        &self,
        key: &Key<K>,
        hash: u64,
        pick: fn(&Directory) -> &[Arc<Table<K>>; SHARDS],
    ) -> Summary {
        let shard = shard_of(hash);
        loop {
            let version = self.version.load(Ordering::Acquire);
            let dir = self.published.lock().clone();
            let found = pick(&dir)[shard].read(key, hash);
            // Cache it for the next check (unless the thread is exiting or a
            // check up this thread's stack holds the cache).
            let _ = READER.try_with(|cell| {
                if let Ok(mut cache) = cell.try_borrow_mut() {
                    cache.index = self.id;
                    cache.version = version;
                    cache.dir = Some(dir);
                }
            });
            if let Read::Found(s) = found {
                return s;
            }
        }
    }

    /// Publish the writer's current tables, then retire the replaced one.
    fn publish<const K: usize>(&self, writer: &IndexWriter, retired: Option<Arc<Table<K>>>) {
        let Some(old) = retired else {
            return;
        };
        *self.published.lock() = Arc::new(writer.directory());
        self.version.fetch_add(1, Ordering::Release);
        old.retire();
    }
}

impl IndexWriter {
    fn directory(&self) -> Directory {
        Directory {
            num: std::array::from_fn(|i| self.num[i].table.clone()),
            uuid: std::array::from_fn(|i| self.uuid[i].table.clone()),
        }
    }

    /// The hash of a key (the same on both sides).
    pub(crate) fn hash(&self, key: &PairKey) -> u64 {
        hash_key(&self.hasher, key)
    }

    /// Where `key` is, if present.
    pub(crate) fn find(&self, key: &PairKey, hash: u64) -> Option<Locator> {
        let shard = shard_of(hash);
        let slot = match key {
            PairKey::Num(k) => self.num[shard].table.probe(k, hash),
            PairKey::Uuid(k) => self.uuid[shard].table.probe(k, hash),
        }?;
        Some(Locator {
            uuid_entity: matches!(key, PairKey::Uuid(_)),
            shard: shard as u8,
            slot: slot as u32,
        })
    }

    /// Add an absent `key` with its head grant and summary; returns where it
    /// went. Entries that move (every entry of the shard when its table is
    /// rebuilt) are reported through `moved(head, new_locator)`.
    pub(crate) fn insert(
        &mut self,
        reader: &IndexReader,
        key: &PairKey,
        hash: u64,
        head: u32,
        summary: Summary,
        moved: &mut dyn FnMut(u32, Locator),
    ) -> Locator {
        let shard = shard_of(hash);
        let uuid_entity = matches!(key, PairKey::Uuid(_));
        let mut report = |head: u32, slot: usize| {
            moved(
                head,
                Locator {
                    uuid_entity,
                    shard: shard as u8,
                    slot: slot as u32,
                },
            )
        };
        let slot = match key {
            PairKey::Num(k) => {
                let e = Entry {
                    key: *k,
                    head,
                    summary,
                };
                let (slot, old) = self.num[shard].insert(&self.hasher, e, hash, &mut report);
                reader.publish(self, old);
                slot
            }
            PairKey::Uuid(k) => {
                let e = Entry {
                    key: *k,
                    head,
                    summary,
                };
                let (slot, old) = self.uuid[shard].insert(&self.hasher, e, hash, &mut report);
                reader.publish(self, old);
                slot
            }
        };
        Locator {
            uuid_entity,
            shard: shard as u8,
            slot: slot as u32,
        }
    }

    /// Remove the pair at `loc`, reporting entries that move.
    pub(crate) fn remove(
        &mut self,
        reader: &IndexReader,
        loc: Locator,
        moved: &mut dyn FnMut(u32, Locator),
    ) {
        let mut report = |head: u32, slot: usize| {
            moved(
                head,
                Locator {
                    slot: slot as u32,
                    ..loc
                },
            )
        };
        let shard = usize::from(loc.shard);
        if loc.uuid_entity {
            let old = self.uuid[shard].remove(&self.hasher, loc.slot as usize, &mut report);
            reader.publish(self, old);
        } else {
            let old = self.num[shard].remove(&self.hasher, loc.slot as usize, &mut report);
            reader.publish(self, old);
        }
    }

    /// The head grant of the pair at `loc`.
    pub(crate) fn head(&self, loc: Locator) -> u32 {
        let (shard, slot) = (usize::from(loc.shard), loc.slot as usize);
        if loc.uuid_entity {
            self.uuid[shard].table.slot(slot).meta() as u32
        } else {
            self.num[shard].table.slot(slot).meta() as u32
        }
    }

    /// The summary of the pair at `loc`.
    #[cfg(test)]
    pub(crate) fn summary_at(&self, loc: Locator) -> Summary {
        let (shard, slot) = (usize::from(loc.shard), loc.slot as usize);
        if loc.uuid_entity {
            self.uuid[shard].table.slot(slot).load().summary
        } else {
            self.num[shard].table.slot(slot).load().summary
        }
    }

    /// Replace the head grant and summary of the pair at `loc`.
    pub(crate) fn update(&self, loc: Locator, head: u32, summary: Summary) {
        let (shard, slot) = (usize::from(loc.shard), loc.slot as usize);
        if loc.uuid_entity {
            update_in(&self.uuid[shard].table, slot, head, summary);
        } else {
            update_in(&self.num[shard].table, slot, head, summary);
        }
    }

    /// The number of pairs.
    pub(crate) fn len(&self) -> usize {
        self.num.iter().map(|s| s.len).sum::<usize>()
            + self.uuid.iter().map(|s| s.len).sum::<usize>()
    }

    /// Bytes held by the current tables.
    pub(crate) fn table_bytes(&self) -> usize {
        let num: usize = self.num.iter().map(|s| s.table.cap()).sum();
        let uuid: usize = self.uuid.iter().map(|s| s.table.cap()).sum();
        num * (std::mem::size_of::<Slot<4>>() + 1) + uuid * (std::mem::size_of::<Slot<5>>() + 1)
    }

    /// Make room for `additional` more numeric-entity pairs now, so that
    /// loading them later rebuilds no table.
    pub(crate) fn reserve_numeric(
        &mut self,
        reader: &IndexReader,
        additional: usize,
        moved: &mut dyn FnMut(u32, Locator),
    ) {
        let per_shard = additional.div_ceil(SHARDS);
        for shard in 0..SHARDS {
            let want = groups_for(self.num[shard].len + per_shard);
            if want > self.num[shard].table.groups() {
                let mut report = |head: u32, slot: usize| {
                    moved(
                        head,
                        Locator {
                            uuid_entity: false,
                            shard: shard as u8,
                            slot: slot as u32,
                        },
                    )
                };
                let old = self.num[shard].rebuild(&self.hasher, want, None, &mut report);
                self.num[shard].used = self.num[shard].len;
                reader.publish(self, Some(old));
            }
        }
    }
}

/// Decode a stored key into its ids.
trait Decode {
    fn decode(&self) -> (UserId, EntityId);
}

impl Decode for Key<4> {
    fn decode(&self) -> (UserId, EntityId) {
        let [hi, lo, id, kind] = self.0;
        (
            UserId::from_u128((u128::from(hi) << 64) | u128::from(lo)),
            EntityId::new(EntityKind::custom(kind as u16), EntityRef::Number(id)),
        )
    }
}

impl Decode for Key<5> {
    fn decode(&self) -> (UserId, EntityId) {
        let [hi, lo, ehi, elo, kind] = self.0;
        let e = (u128::from(ehi) << 64) | u128::from(elo);
        (
            UserId::from_u128((u128::from(hi) << 64) | u128::from(lo)),
            EntityId::new(
                EntityKind::custom(kind as u16),
                EntityRef::Uuid(uuid::Uuid::from_u128(e)),
            ),
        )
    }
}

impl IndexWriter {
    /// The ids of the pair at `loc`.
    pub(crate) fn pair_at(&self, loc: Locator) -> (UserId, EntityId) {
        let (shard, slot) = (usize::from(loc.shard), loc.slot as usize);
        if loc.uuid_entity {
            self.uuid[shard].table.slot(slot).load().key.decode()
        } else {
            self.num[shard].table.slot(slot).load().key.decode()
        }
    }

    /// Every pair: where it is and its ids, in table order.
    pub(crate) fn pairs(&self) -> impl Iterator<Item = (Locator, UserId, EntityId)> + '_ {
        fn walk<'a, const K: usize>(
            shards: &'a [Shard<K>],
            uuid_entity: bool,
        ) -> impl Iterator<Item = (Locator, UserId, EntityId)> + 'a
        where
            Key<K>: Decode,
        {
            shards.iter().enumerate().flat_map(move |(shard, s)| {
                (0..s.table.cap()).filter_map(move |slot| {
                    let sl = s.table.slot(slot);
                    (s.table.tag(slot) & 0x80 == 0).then(|| {
                        let (u, e) = sl.load().key.decode();
                        let loc = Locator {
                            uuid_entity,
                            shard: shard as u8,
                            slot: slot as u32,
                        };
                        (loc, u, e)
                    })
                })
            })
        }
        walk(&self.num, false).chain(walk(&self.uuid, true))
    }
}

fn update_in<const K: usize>(table: &Table<K>, slot: usize, head: u32, summary: Summary) {
    let s = table.slot(slot);
    let meta = s.meta();
    table.begin_write();
    s.key[K - 1].store((meta & !0xffff_ffff) | u64::from(head), Ordering::Relaxed);
    s.read.store(summary.read_until, Ordering::Relaxed);
    s.edit.store(summary.edit_until, Ordering::Relaxed);
    table.end_write();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use uuid::Uuid;

    fn key(i: u64, uuid_entity: bool) -> (UserId, EntityId) {
        let user = UserId::from_u128(u128::from(i % 97) << 64 | u128::from(i * 7));
        let entity = if uuid_entity {
            EntityId::new(
                crate::EntityKind::custom(9),
                EntityRef::Uuid(Uuid::from_u128(u128::from(i))),
            )
        } else {
            EntityId::lead(i / 3)
        };
        (user, entity)
    }

    /// Insert and remove many pairs, tracking where each head lives through
    /// the reported moves, and compare with a plain map after each step.
    #[test]
    fn index_matches_a_map_through_growth_and_shrinking() {
        let (reader, mut writer) = new_index();
        let mut where_is: HashMap<u32, Locator> = HashMap::new();
        let mut model: HashMap<u64, Summary> = HashMap::new();
        let n = 20_000u64;
        for i in 0..n {
            let (u, e) = key(i, i % 5 == 0);
            let pk = PairKey::new(&u, &e);
            let h = writer.hash(&pk);
            assert!(writer.find(&pk, h).is_none());
            let s = Summary {
                read_until: i + 10,
                edit_until: i,
            };
            let loc = writer.insert(&reader, &pk, h, i as u32, s, &mut |head, loc| {
                where_is.insert(head, loc);
            });
            where_is.insert(i as u32, loc);
            model.insert(i, s);
        }
        assert_eq!(writer.len(), n as usize);
        for (head, loc) in &where_is {
            assert_eq!(writer.head(*loc), *head);
        }
        for i in (0..n).step_by(7) {
            let (u, e) = key(i, i % 5 == 0);
            assert_eq!(reader.summary(&u, &e), model[&i]);
        }
        // Remove most pairs: tables shrink and entries move.
        for i in 0..n {
            if i % 10 == 0 {
                continue;
            }
            let loc = where_is.remove(&(i as u32)).unwrap();
            writer.remove(&reader, loc, &mut |head, loc| {
                where_is.insert(head, loc);
            });
            model.remove(&i);
        }
        for (head, loc) in &where_is {
            assert_eq!(writer.head(*loc), *head);
        }
        for i in 0..n {
            let (u, e) = key(i, i % 5 == 0);
            assert_eq!(
                reader.summary(&u, &e),
                model.get(&i).copied().unwrap_or_default()
            );
        }
        assert_eq!(writer.len(), model.len());
        assert!(writer.table_bytes() < 20_000 * 49);
    }

    #[test]
    fn tags_vary_within_a_group_of_a_large_table() {
        // Keys of one group share the hash's high bits (the home) and, in
        // one shard, its low bits: the tag must come from other bits.
        let hasher = KeyHasher::random();
        let groups = 1 << 20;
        let mut tags = std::collections::HashMap::<usize, std::collections::HashSet<u8>>::new();
        for i in 0..2_000_000u64 {
            let h = hasher.hash(&Key([i, 7, 9, 1]));
            if shard_of(h) == 0 {
                tags.entry(home(h, groups) >> 14)
                    .or_default()
                    .insert(tag_of(h));
            }
        }
        let (_, seen) = tags.iter().max_by_key(|(_, t)| t.len()).unwrap();
        assert!(
            seen.len() > 100,
            "only {} distinct tags in one home range",
            seen.len()
        );
    }

    #[test]
    fn update_changes_only_head_and_summary() {
        let (reader, mut writer) = new_index();
        let (u, e) = key(1, false);
        let pk = PairKey::new(&u, &e);
        let h = writer.hash(&pk);
        let loc = writer.insert(&reader, &pk, h, 3, Summary::default(), &mut |_, _| {});
        let s = Summary {
            read_until: 50,
            edit_until: 40,
        };
        writer.update(loc, 4, s);
        assert_eq!(writer.head(loc), 4);
        assert_eq!(writer.summary_at(loc), s);
        assert_eq!(reader.summary(&u, &e), s);
        assert_eq!(writer.find(&pk, h), Some(loc));
    }

    #[test]
    fn reserve_rebuilds_once_and_keeps_entries() {
        let (reader, mut writer) = new_index();
        let (u, e) = key(5, false);
        let pk = PairKey::new(&u, &e);
        let h = writer.hash(&pk);
        let s = Summary {
            read_until: 9,
            edit_until: 0,
        };
        let mut loc = writer.insert(&reader, &pk, h, 0, s, &mut |_, _| {});
        writer.reserve_numeric(&reader, 100_000, &mut |_, l| loc = l);
        assert!(writer.table_bytes() >= 100_000 * 48);
        assert_eq!(writer.head(loc), 0);
        assert_eq!(reader.summary(&u, &e), s);
    }
}
