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
//! - **Probing.** Robin Hood linear probing; a slot keeps its distance from
//!   its home slot, so a miss stops early without hashing stored keys. The
//!   home is the high bits of the hash scaled to the capacity, so capacities
//!   need not be powers of two and tables grow by half.
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
//!   word (occupied bit, probe distance, entity kind, and the writer's head
//!   grant), then the read-until and edit-until instants (milliseconds).
//!   An empty slot has meta 0.

use std::cell::RefCell;
use std::hash::BuildHasher;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::ids::{EntityId, EntityKind, EntityRef, UserId};

/// Tables per key shape.
pub(crate) const SHARDS: usize = 64;
/// Smallest table.
const MIN_CAPACITY: usize = 8;
/// Grow when a table would be fuller than this (numerator over 100).
const MAX_LOAD_PERCENT: usize = 85;
/// Shrink when a table is emptier than this (numerator over 100).
const MIN_LOAD_PERCENT: usize = 20;

const OCCUPIED: u64 = 1 << 63;
const DIST_SHIFT: u32 = 48;
const DIST_MAX: u64 = (1 << 15) - 1;
const KIND_SHIFT: u32 = 32;

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

/// An encoded key: user words, entity words, kind (the last word).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Key<const K: usize>([u64; K]);

/// A pair's key in one of the two shapes.
#[derive(Clone, Copy, Debug)]
pub(crate) enum PairKey {
    Num(Key<4>),
    Uuid(Key<5>),
}

impl PairKey {
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
    fn holds(&self, key: &Key<K>, meta: u64) -> bool {
        (meta >> KIND_SHIFT) & 0xffff == key.0[K - 1]
            && self.key[..K - 1]
                .iter()
                .zip(&key.0[..K - 1])
                .all(|(a, b)| a.load(Ordering::Relaxed) == *b)
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
            dist: (meta >> DIST_SHIFT) & DIST_MAX,
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
        let meta = OCCUPIED
            | (e.dist << DIST_SHIFT)
            | ((e.key.0[K - 1] & 0xffff) << KIND_SHIFT)
            | u64::from(e.head);
        self.key[K - 1].store(meta, Ordering::Relaxed);
        self.read.store(e.summary.read_until, Ordering::Relaxed);
        self.edit.store(e.summary.edit_until, Ordering::Relaxed);
    }

    fn clear(&self) {
        self.key[K - 1].store(0, Ordering::Relaxed);
    }
}

/// A slot's content as the writer handles it.
#[derive(Clone, Copy, Debug)]
struct Entry<const K: usize> {
    key: Key<K>,
    dist: u64,
    head: u32,
    summary: Summary,
}

/// One shard's table, shared by the writer and the readers.
pub(crate) struct Table<const K: usize> {
    seq: AtomicU64,
    retired: AtomicBool,
    slots: Box<[Slot<K>]>,
}

/// What a reader found: a summary, or a retired table.
enum Read {
    Found(Summary),
    Retired,
}

fn home(hash: u64, cap: usize) -> usize {
    ((u128::from(hash) * cap as u128) >> 64) as usize
}

impl<const K: usize> Table<K> {
    fn with_capacity(cap: usize) -> Self {
        Table {
            seq: AtomicU64::new(0),
            retired: AtomicBool::new(false),
            slots: (0..cap.max(MIN_CAPACITY)).map(|_| Slot::empty()).collect(),
        }
    }

    fn cap(&self) -> usize {
        self.slots.len()
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

    /// Probe for `key`; the caller validates the result (reader) or is the
    /// writer. Bounded by the capacity, so torn reads cannot loop forever.
    fn probe(&self, key: &Key<K>, hash: u64) -> Option<usize> {
        let cap = self.cap();
        let mut i = home(hash, cap);
        for d in 0..cap as u64 {
            let slot = &self.slots[i];
            let meta = slot.meta();
            if meta & OCCUPIED == 0 || (meta >> DIST_SHIFT) & DIST_MAX < d {
                return None;
            }
            if slot.holds(key, meta) {
                return Some(i);
            }
            i += 1;
            if i == cap {
                i = 0;
            }
        }
        None
    }

    /// The reader's lookup under the sequence lock.
    fn read(&self, key: &Key<K>, hash: u64) -> Read {
        loop {
            let s1 = self.seq.load(Ordering::Acquire);
            if s1 & 1 == 0 {
                let found = self.probe(key, hash).map(|i| {
                    let slot = &self.slots[i];
                    Summary {
                        read_until: slot.read.load(Ordering::Relaxed),
                        edit_until: slot.edit.load(Ordering::Relaxed),
                    }
                });
                fence(Ordering::Acquire);
                if self.seq.load(Ordering::Relaxed) == s1 {
                    return Read::Found(found.unwrap_or_default());
                }
            } else if self.retired.load(Ordering::Acquire) {
                return Read::Retired;
            }
            std::hint::spin_loop();
        }
    }

    /// Place `e` by Robin Hood insertion, reporting every displaced entry's
    /// new slot through `moved`. Returns the slot of `e`, or the entry left
    /// in hand when a distance would overflow (the caller rebuilds).
    fn insert(
        &self,
        mut e: Entry<K>,
        hash: u64,
        moved: &mut dyn FnMut(u32, usize),
    ) -> Result<usize, Entry<K>> {
        let cap = self.cap();
        let mut i = home(hash, cap);
        e.dist = 0;
        let mut placed = None;
        loop {
            let slot = &self.slots[i];
            let meta = slot.meta();
            if meta & OCCUPIED == 0 {
                slot.store(&e);
                if let Some(p) = placed {
                    moved(e.head, i);
                    return Ok(p);
                }
                return Ok(i);
            }
            let dist = (meta >> DIST_SHIFT) & DIST_MAX;
            if dist < e.dist {
                let out = slot.load();
                slot.store(&e);
                if placed.is_none() {
                    placed = Some(i);
                } else {
                    moved(e.head, i);
                }
                e = out;
            }
            e.dist += 1;
            if e.dist > DIST_MAX {
                return Err(e);
            }
            i += 1;
            if i == cap {
                i = 0;
            }
        }
    }

    /// Remove slot `i` by backward shifting, reporting moves.
    fn remove(&self, mut i: usize, moved: &mut dyn FnMut(u32, usize)) {
        let cap = self.cap();
        loop {
            let next = if i + 1 == cap { 0 } else { i + 1 };
            let ns = &self.slots[next];
            let meta = ns.meta();
            if meta & OCCUPIED == 0 || (meta >> DIST_SHIFT) & DIST_MAX == 0 {
                self.slots[i].clear();
                return;
            }
            let mut e = ns.load();
            e.dist -= 1;
            self.slots[i].store(&e);
            moved(e.head, i);
            i = next;
        }
    }

    fn entries(&self) -> impl Iterator<Item = Entry<K>> + '_ {
        self.slots
            .iter()
            .filter(|s| s.meta() & OCCUPIED != 0)
            .map(|s| s.load())
    }
}

/// The writer's handle on one shard.
struct Shard<const K: usize> {
    table: Arc<Table<K>>,
    len: usize,
}

impl<const K: usize> Shard<K> {
    fn new() -> Self {
        Shard {
            table: Arc::new(Table::with_capacity(MIN_CAPACITY)),
            len: 0,
        }
    }

    /// Add an absent entry. Returns the table it replaced when it had to
    /// rebuild (the caller publishes, then retires it).
    fn insert(
        &mut self,
        hasher: &hashbrown::DefaultHashBuilder,
        entry: Entry<K>,
        hash: u64,
        report: &mut dyn FnMut(u32, usize),
    ) -> Option<Arc<Table<K>>> {
        self.len += 1;
        if self.len * 100 > self.table.cap() * MAX_LOAD_PERCENT {
            let cap = (self.table.cap() * 3 / 2).max(capacity_for(self.len));
            return Some(self.rebuild(hasher, cap, Some(entry), report));
        }
        let table = self.table.clone();
        table.begin_write();
        let result = table.insert(entry, hash, report);
        table.end_write();
        match result {
            Ok(_) => None,
            // A probe distance overflowed: rebuild larger with the entry in hand.
            Err(carried) => Some(self.rebuild(hasher, table.cap() * 2, Some(carried), report)),
        }
    }

    /// Remove slot `slot`. Returns the replaced table when it shrank.
    fn remove(
        &mut self,
        hasher: &hashbrown::DefaultHashBuilder,
        slot: usize,
        report: &mut dyn FnMut(u32, usize),
    ) -> Option<Arc<Table<K>>> {
        let table = self.table.clone();
        table.begin_write();
        table.remove(slot, report);
        table.end_write();
        self.len -= 1;
        let cap = table.cap();
        if cap > MIN_CAPACITY && self.len * 100 < cap * MIN_LOAD_PERCENT {
            return Some(self.rebuild(hasher, capacity_for(self.len * 2), None, report));
        }
        None
    }

    /// Move every entry (and `extra`) into a new table of at least `cap`
    /// slots, reporting each entry's new slot. Returns the old table.
    fn rebuild(
        &mut self,
        hasher: &hashbrown::DefaultHashBuilder,
        mut cap: usize,
        extra: Option<Entry<K>>,
        report: &mut dyn FnMut(u32, usize),
    ) -> Arc<Table<K>> {
        'attempt: loop {
            let table = Table::with_capacity(cap);
            for e in self.table.entries().chain(extra) {
                let hash = hasher.hash_one(e.key);
                match table.insert(e, hash, report) {
                    Ok(slot) => report(e.head, slot),
                    Err(_) => {
                        cap *= 2;
                        continue 'attempt;
                    }
                }
            }
            return std::mem::replace(&mut self.table, Arc::new(table));
        }
    }
}

/// The tables readers use, one directory version.
struct Directory {
    num: Box<[Arc<Table<4>>]>,
    uuid: Box<[Arc<Table<5>>]>,
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
    hasher: hashbrown::DefaultHashBuilder,
    version: AtomicU64,
    published: Mutex<Arc<Directory>>,
}

/// The write side of the index: owned by the engine state.
pub(crate) struct IndexWriter {
    hasher: hashbrown::DefaultHashBuilder,
    num: Vec<Shard<4>>,
    uuid: Vec<Shard<5>>,
}

/// Build the index: its shared read side and its write side.
pub(crate) fn new_index() -> (IndexReader, IndexWriter) {
    let hasher = hashbrown::DefaultHashBuilder::default();
    let writer = IndexWriter {
        hasher: hasher.clone(),
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

fn hash_key(hasher: &hashbrown::DefaultHashBuilder, key: &PairKey) -> u64 {
    match key {
        PairKey::Num(k) => hasher.hash_one(k),
        PairKey::Uuid(k) => hasher.hash_one(k),
    }
}

impl IndexReader {
    /// The summary of a pair (all zero when absent). Lock-free; never
    /// allocates once the thread has cached the directory.
    #[inline]
    pub(crate) fn summary(&self, user: &UserId, entity: &EntityId) -> Summary {
        let key = PairKey::new(user, entity);
        let hash = hash_key(&self.hasher, &key);
        let fast = READER.try_with(|cell| {
            let mut cache = cell.borrow_mut();
            loop {
                let version = self.version.load(Ordering::Acquire);
                if cache.index != self.id || cache.version != version {
                    cache.dir = None;
                }
                let dir = match &cache.dir {
                    Some(dir) => dir,
                    None => {
                        cache.index = self.id;
                        cache.version = version;
                        cache.dir.insert(self.published.lock().clone())
                    }
                };
                match read_in(dir, &key, hash) {
                    Read::Found(s) => return s,
                    Read::Retired => cache.dir = None,
                }
            }
        });
        match fast {
            Ok(s) => s,
            // The thread is being torn down: read without the cache.
            Err(_) => loop {
                let dir = self.published.lock().clone();
                if let Read::Found(s) = read_in(&dir, &key, hash) {
                    return s;
                }
            },
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

fn read_in(dir: &Directory, key: &PairKey, hash: u64) -> Read {
    match key {
        PairKey::Num(k) => dir.num[shard_of(hash)].read(k, hash),
        PairKey::Uuid(k) => dir.uuid[shard_of(hash)].read(k, hash),
    }
}

fn capacity_for(len: usize) -> usize {
    (len * 100 / MAX_LOAD_PERCENT + 1).max(MIN_CAPACITY)
}

impl IndexWriter {
    fn directory(&self) -> Directory {
        Directory {
            num: self.num.iter().map(|s| s.table.clone()).collect(),
            uuid: self.uuid.iter().map(|s| s.table.clone()).collect(),
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
        match key {
            PairKey::Num(k) => {
                let e = Entry { key: *k, dist: 0, head, summary };
                let old = self.num[shard].insert(&self.hasher, e, hash, &mut report);
                reader.publish(self, old);
            }
            PairKey::Uuid(k) => {
                let e = Entry { key: *k, dist: 0, head, summary };
                let old = self.uuid[shard].insert(&self.hasher, e, hash, &mut report);
                reader.publish(self, old);
            }
        }
        // INVARIANT: the key was just inserted, so the probe finds it.
        self.find(key, hash).unwrap_or(Locator {
            uuid_entity,
            shard: shard as u8,
            slot: 0,
        })
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
            self.uuid[shard].table.slots[slot].meta() as u32
        } else {
            self.num[shard].table.slots[slot].meta() as u32
        }
    }

    /// The summary of the pair at `loc`.
    #[cfg(test)]
    pub(crate) fn summary_at(&self, loc: Locator) -> Summary {
        let (shard, slot) = (usize::from(loc.shard), loc.slot as usize);
        if loc.uuid_entity {
            self.uuid[shard].table.slots[slot].load().summary
        } else {
            self.num[shard].table.slots[slot].load().summary
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
        num * std::mem::size_of::<Slot<4>>() + uuid * std::mem::size_of::<Slot<5>>()
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
            let want = capacity_for(self.num[shard].len + per_shard);
            if want > self.num[shard].table.cap() {
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
            EntityId::new(EntityKind::custom(kind as u16), EntityRef::Uuid(uuid::Uuid::from_u128(e))),
        )
    }
}

impl IndexWriter {
    /// The ids of the pair at `loc`.
    pub(crate) fn pair_at(&self, loc: Locator) -> (UserId, EntityId) {
        let (shard, slot) = (usize::from(loc.shard), loc.slot as usize);
        if loc.uuid_entity {
            self.uuid[shard].table.slots[slot].load().key.decode()
        } else {
            self.num[shard].table.slots[slot].load().key.decode()
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
                s.table.slots.iter().enumerate().filter_map(move |(slot, sl)| {
                    (sl.meta() & OCCUPIED != 0).then(|| {
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
    let s = &table.slots[slot];
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
            EntityId::new(crate::EntityKind::custom(9), EntityRef::Uuid(Uuid::from_u128(u128::from(i))))
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
            let s = Summary { read_until: i + 10, edit_until: i };
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
            assert_eq!(reader.summary(&u, &e), model.get(&i).copied().unwrap_or_default());
        }
        assert_eq!(writer.len(), model.len());
        assert!(writer.table_bytes() < 20_000 * 48);
    }

    #[test]
    fn update_changes_only_head_and_summary() {
        let (reader, mut writer) = new_index();
        let (u, e) = key(1, false);
        let pk = PairKey::new(&u, &e);
        let h = writer.hash(&pk);
        let loc = writer.insert(&reader, &pk, h, 3, Summary::default(), &mut |_, _| {});
        let s = Summary { read_until: 50, edit_until: 40 };
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
        let s = Summary { read_until: 9, edit_until: 0 };
        let mut loc = writer.insert(&reader, &pk, h, 0, s, &mut |_, _| {});
        writer.reserve_numeric(&reader, 100_000, &mut |_, l| loc = l);
        assert!(writer.table_bytes() >= 100_000 * 48);
        assert_eq!(writer.head(loc), 0);
        assert_eq!(reader.summary(&u, &e), s);
    }
}
