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
//!   while readers keep using the old one, names the new directory of
//!   tables in the shared `current` word (its address), publishes it, then
//!   retires the old table (leaves its sequence odd for good). Each thread
//!   caches the directory it last used; a check compares that directory's
//!   address with the one shared, read-mostly `current` word, which also
//!   tells one engine's directory from another's (a cached directory is
//!   alive, so no other directory can have its address). A retired table
//!   sends its readers to the new directory. A thread's cache keeps the
//!   tables it last saw alive until it checks again or exits.
//! - **Slot words.** `key[..K-1]` hold the key, `key[K-1]` holds the meta
//!   word (entity kind and the writer's head grant), then the read-until
//!   and edit-until instants (milliseconds).

mod key;
#[cfg(all(test, grantwheel_loom))]
mod loom_models;
mod table;
#[cfg(all(test, not(grantwheel_loom)))]
mod tests;

pub(crate) use key::PairKey;

use std::cell::RefCell;
use std::sync::Arc;

use crate::sync::{AtomicU64, Mutex, Ordering};

use crate::ids::{EntityId, UserId};

use self::key::{Decode, Key, KeyHasher};
use self::table::{groups_for, Entry, Read, Shard, Slot, Table};

/// Tables per key shape (two in the loom models, whose state grows with
/// every atomic word).
#[cfg(not(grantwheel_loom))]
pub(crate) const SHARDS: usize = 64;
#[cfg(grantwheel_loom)]
pub(crate) const SHARDS: usize = 2;
// A packed locator keeps six bits of shard.
const _: () = assert!(SHARDS <= 64 && SHARDS.is_power_of_two());

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

/// One value per shard, indexed by a shard number. Indices are masked to
/// the shard count, so indexing never goes out of bounds (and costs no
/// bounds check).
pub(crate) struct PerShard<T>([T; SHARDS]);

impl<T> PerShard<T> {
    fn from_fn(f: impl FnMut(usize) -> T) -> Self {
        PerShard(std::array::from_fn(f))
    }

    fn iter(&self) -> std::slice::Iter<'_, T> {
        self.0.iter()
    }
}

impl<T> std::ops::Index<usize> for PerShard<T> {
    type Output = T;

    #[inline(always)]
    #[expect(
        clippy::indexing_slicing,
        reason = "masked below SHARDS, the array's length"
    )]
    fn index(&self, shard: usize) -> &T {
        &self.0[shard & (SHARDS - 1)]
    }
}

impl<T> std::ops::IndexMut<usize> for PerShard<T> {
    #[inline(always)]
    #[expect(
        clippy::indexing_slicing,
        reason = "masked below SHARDS, the array's length"
    )]
    fn index_mut(&mut self, shard: usize) -> &mut T {
        &mut self.0[shard & (SHARDS - 1)]
    }
}

/// The tables readers use, as one publication left them.
struct Directory {
    num: PerShard<Arc<Table<4>>>,
    uuid: PerShard<Arc<Table<5>>>,
}

/// A thread's cached directory (of whichever index it checked last).
type ReaderCache = Option<Arc<Directory>>;

#[cfg(not(grantwheel_loom))]
thread_local! {
    static READER: RefCell<ReaderCache> = const { RefCell::new(None) };
}

// Loom runs a model's threads on one OS thread: its own thread-locals.
#[cfg(grantwheel_loom)]
loom::thread_local! {
    static READER: RefCell<ReaderCache> = RefCell::new(None);
}

/// A directory's address, as the `current` word holds it.
fn address(dir: &Arc<Directory>) -> u64 {
    Arc::as_ptr(dir) as usize as u64
}

/// The read side of the index: shared by all threads.
pub(crate) struct IndexReader {
    hasher: KeyHasher,
    /// The address of the directory being published or last published.
    ///
    /// INVARIANT: it names a live directory: it is stored before that
    /// directory goes into `published` (held by the publisher until then)
    /// and replaced before that directory leaves it. So a thread whose
    /// cached directory (alive: the cache holds it) has this address holds
    /// this index's current directory, not a stale one nor another index's.
    current: AtomicU64,
    published: Mutex<Arc<Directory>>,
}

/// The write side of the index: owned by the engine state.
pub(crate) struct IndexWriter {
    hasher: KeyHasher,
    num: PerShard<Shard<4>>,
    uuid: PerShard<Shard<5>>,
}

/// Build the index: its shared read side and its write side.
pub(crate) fn new_index() -> (IndexReader, IndexWriter) {
    let hasher = KeyHasher::random();
    let writer = IndexWriter {
        hasher,
        num: PerShard::from_fn(|_| Shard::new()),
        uuid: PerShard::from_fn(|_| Shard::new()),
    };
    let dir = Arc::new(writer.directory());
    let reader = IndexReader {
        hasher,
        current: AtomicU64::new(address(&dir)),
        published: Mutex::new(dir),
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
        pick: fn(&Directory) -> &PerShard<Arc<Table<K>>>,
    ) -> Summary {
        let hash = self.hasher.hash(key);
        let shard = shard_of(hash);
        let fast = READER.try_with(|cell| {
            let cache = cell.try_borrow().ok()?;
            let dir = cache.as_ref()?;
            if address(dir) != self.current.load(Ordering::Acquire) {
                return None;
            }
            match pick(dir)[shard].read(key, hash) {
                Read::Found(s) => Some(s),
                Read::Retired => None,
            }
        });
        match fast {
            Ok(Some(s)) => s,
            _ => self.lookup_slow(*key, hash, pick),
        }
    }

    /// The lookup when this thread's cached directory is missing or stale:
    /// refresh the cache, then read.
    #[cold]
    #[inline(never)]
    fn lookup_slow<const K: usize>(
        &self,
        key: Key<K>,
        hash: u64,
        pick: fn(&Directory) -> &PerShard<Arc<Table<K>>>,
    ) -> Summary {
        let shard = shard_of(hash);
        loop {
            let dir = self.published.lock().clone();
            let found = pick(&dir)[shard].read(&key, hash);
            // Cache it for the next check (unless the thread is exiting or a
            // check up this thread's stack holds the cache).
            let _ = READER.try_with(|cell| {
                if let Ok(mut cache) = cell.try_borrow_mut() {
                    *cache = Some(dir);
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
        let dir = Arc::new(writer.directory());
        // Named before it is published and while the one it replaces is
        // still held (see `current`).
        self.current.store(address(&dir), Ordering::Release);
        *self.published.lock() = dir;
        old.retire();
    }
}

impl IndexWriter {
    fn directory(&self) -> Directory {
        Directory {
            num: PerShard::from_fn(|i| self.num[i].table.clone()),
            uuid: PerShard::from_fn(|i| self.uuid[i].table.clone()),
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
    #[cfg(any(test, feature = "testing"))]
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
            shards: &'a PerShard<Shard<K>>,
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
    if let Some(word) = s.key.last() {
        word.store((meta & !0xffff_ffff) | u64::from(head), Ordering::Relaxed);
    }
    s.read.store(summary.read_until, Ordering::Relaxed);
    s.edit.store(summary.edit_until, Ordering::Relaxed);
    table.end_write();
}
