//! The contexts of held grants, interned: a grant record names its context
//! by a 30-bit number instead of carrying its 16-byte id, so a direct share
//! (the common case) pays nothing for it and grants sharing a context (one
//! activity shared with several users) pay for it once.

use crate::ids::Context;

use super::record::{CTX_LIMIT, DIRECT};

/// One interned context: its packed kind and id, and how many held grant
/// records name it.
#[derive(Clone, Copy, Debug)]
struct Entry {
    hi: u64,
    lo: u64,
    kind: u32,
    refs: u32,
}

impl Entry {
    fn is(&self, (kind, id): (u32, u128)) -> bool {
        self.kind == kind && self.hi == (id >> 64) as u64 && self.lo == id as u64
    }

    fn packed(&self) -> (u32, u128) {
        (self.kind, (u128::from(self.hi) << 64) | u128::from(self.lo))
    }
}

/// The interned contexts.
///
/// INVARIANT (INV-11): every number a record in use names is [`DIRECT`] or
/// an entry here whose `refs` counts exactly the records in use naming it;
/// entries with no reference are released (their number on the free list).
#[derive(Default)]
pub(super) struct Contexts {
    /// Number `n` (from 1) at index `n - 1`; released entries have
    /// `refs == 0`.
    entries: Vec<Entry>,
    free: Vec<u32>,
    /// The numbers in use, by their context's hash.
    table: hashbrown::HashTable<u32>,
    hasher: hashbrown::DefaultHashBuilder,
}

/// Where number `n` (from 1) lies in `entries` (out of range for
/// [`DIRECT`]).
fn at(n: u32) -> usize {
    (n as usize).wrapping_sub(1)
}

impl Contexts {
    fn entry(&self, n: u32) -> Option<&Entry> {
        self.entries.get(at(n))
    }

    fn hash(&self, ctx: (u32, u128)) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one(ctx)
    }

    /// The number of `ctx`, if a held grant names it.
    pub(super) fn find(&self, ctx: (u32, u128)) -> Option<u32> {
        if ctx.0 == 0 {
            return Some(DIRECT);
        }
        self.table
            .find(self.hash(ctx), |n| {
                self.entry(*n).is_some_and(|e| e.is(ctx))
            })
            .copied()
    }

    /// Take a reference on `ctx` for a new record; returns its number.
    pub(super) fn intern(&mut self, ctx: (u32, u128)) -> u32 {
        if let Some(n) = self.find(ctx) {
            if let Some(e) = self.entries.get_mut(at(n)) {
                e.refs += 1;
            }
            // Direct (kind 0, id 0) has no entry: nothing to count.
            return n;
        }
        let entry = Entry {
            hi: (ctx.1 >> 64) as u64,
            lo: ctx.1 as u64,
            kind: ctx.0,
            refs: 1,
        };
        let n = match self.free.pop() {
            Some(n) => {
                if let Some(e) = self.entries.get_mut(at(n)) {
                    *e = entry;
                }
                n
            }
            None => {
                self.entries.push(entry);
                // INVARIANT: at most MAX_GRANTS (< CTX_LIMIT) contexts are
                // named at once (one per held grant), so numbers stay below
                // CTX_LIMIT.
                debug_assert!(self.entries.len() < CTX_LIMIT as usize);
                self.entries.len() as u32
            }
        };
        let (hasher, entries) = (&self.hasher, &self.entries);
        self.table.insert_unique(self.hash(ctx), n, |m| {
            use std::hash::BuildHasher;
            entries
                .get(at(*m))
                .map_or(0, |e| hasher.hash_one(e.packed()))
        });
        n
    }

    /// Drop a released record's reference on context number `n`.
    pub(super) fn release(&mut self, n: u32) {
        let Some(e) = self.entries.get_mut(at(n)) else {
            return;
        };
        e.refs = e.refs.saturating_sub(1);
        if e.refs > 0 {
            return;
        }
        let packed = e.packed();
        let hash = self.hash(packed);
        if let Ok(found) = self.table.find_entry(hash, |m| *m == n) {
            found.remove();
        }
        self.free.push(n);
    }

    /// The context of number `n`.
    pub(super) fn get(&self, n: u32) -> Context {
        let (kind, id) = self.entry(n).map_or((0, 0), Entry::packed);
        Context::unpack(kind, id)
    }

    /// References held on number `n` (0 for [`DIRECT`] or a released one).
    #[cfg(any(test, feature = "testing"))]
    pub(super) fn refs(&self, n: u32) -> u32 {
        self.entry(n).map_or(0, |e| e.refs)
    }

    /// Numbers with references.
    #[cfg(any(test, feature = "testing"))]
    pub(super) fn len(&self) -> usize {
        self.table.len()
    }

    /// Bytes held (entries and the table).
    pub(super) fn bytes(&self) -> usize {
        self.entries.capacity() * std::mem::size_of::<Entry>()
            + self.free.capacity() * 4
            + self.table.capacity() * (std::mem::size_of::<u32>() + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contexts_are_counted_released_and_reused() {
        let mut c = Contexts::default();
        let a = Context::Activity(uuid::Uuid::from_u128(1)).pack();
        let t = Context::Task(uuid::Uuid::from_u128(1)).pack();
        assert_eq!(c.intern(Context::Direct.pack()), DIRECT);
        let na = c.intern(a);
        assert_eq!(c.intern(a), na, "one number per context");
        let nt = c.intern(t);
        assert_ne!(na, nt, "same id, another kind");
        assert_eq!((c.refs(na), c.refs(nt), c.len()), (2, 1, 2));
        assert_eq!(c.get(na), Context::Activity(uuid::Uuid::from_u128(1)));
        assert_eq!(c.find(t), Some(nt));
        c.release(nt);
        assert_eq!((c.find(t), c.len()), (None, 1));
        c.release(na);
        assert_eq!(c.find(a), Some(na), "one reference left");
        c.release(na);
        assert_eq!((c.find(a), c.len()), (None, 0));
        let o = Context::Other {
            kind: 9,
            id: uuid::Uuid::from_u128(u128::MAX),
        };
        let no = c.intern(o.pack());
        assert!(no == na || no == nt, "a released number is reused");
        assert_eq!(c.get(no), o);
        c.release(DIRECT);
        assert_eq!(c.find(Context::Direct.pack()), Some(DIRECT));
    }
}
