//! The packed grant record (32 bytes) and its bit layout.

use crate::clock::from_millis;
use crate::ids::{Context, EntityId, GrantId, Level, UserId};
use crate::index::{Locator, PackedLocator};
use crate::model::grant::Grant;
use crate::wheel::MAX_BUCKET;

pub(super) const NIL: u32 = u32::MAX;
/// The most grants one engine holds: keeps grant numbers in 32 bits, each
/// index shard far below its 2^25 slots, and context numbers (one per
/// held grant at most) in their 30 bits.
pub(super) const MAX_GRANTS: usize = (1 << 30) - 1;

/// A grant as the engine stores it: 32 bytes.
#[derive(Clone, Copy, Debug)]
pub(super) struct GrantRec {
    pub(super) expires: u64,
    /// The serial (high 47 bits), the wheel slot vector (the next 9 bits)
    /// and the timer stage (low 8 bits: a warning index,
    /// `warnings.len()` for the expiry, [`SCHEDULED`] before the start,
    /// [`DUE`] while its start waits to be confirmed, [`FREE`] for a record
    /// on the free list).
    serial_timer: u64,
    /// The context's number in the engine's interned contexts (low 30
    /// bits; [`DIRECT`] for a direct share), the level (bit 30: edit) and
    /// the pending flag (bit 31).
    ctx_flags: u32,
    pub(super) loc: PackedLocator,
    /// The next grant of the same pair.
    next: u32,
    /// The position in its wheel slot vector.
    pub(super) pos: u32,
}

/// The stage of a free record.
pub(super) const FREE: u8 = u8::MAX;
/// The stage of a grant that has yet to start: its timer is its start
/// (kept in `State::starts`), and checks do not see it (INV-4).
pub(super) const SCHEDULED: u8 = u8::MAX - 1;
/// The stage of a grant whose start came while its engine confirms starts
/// ([`EngineBuilder::confirm_starts`](crate::EngineBuilder::confirm_starts)):
/// checks do not see it until it is confirmed (INV-4); its timer is its
/// expiry, so one never confirmed ends there.
pub(super) const DUE: u8 = u8::MAX - 2;
/// Bits of `serial_timer` below the serial.
const TIMER_BITS: u32 = 17;
/// Serials stay below this (2^47: decades of shares at millions a second).
pub(super) const MAX_SERIAL: u64 = 1 << (64 - TIMER_BITS);
const STAGE_MASK: u64 = 0xff;
const BUCKET_SHIFT: u32 = 8;
const BUCKET_MASK: u64 = 0x1ff;
/// The context number of a direct share (no interned context).
pub(super) const DIRECT: u32 = 0;
/// Context numbers stay below this.
pub(super) const CTX_LIMIT: u32 = 1 << 30;
const EDIT_FLAG: u32 = 1 << 30;
/// Set on a grant created or changed by a batch not yet written: checks see
/// it as it was before the batch (see `Group`).
const PENDING_FLAG: u32 = 1 << 31;
// The wheel's slot vectors fit in the bucket bits.
const _: () = assert!(MAX_BUCKET as u64 <= BUCKET_MASK);
// One context number per held grant at most, each below the limit.
const _: () = assert!(MAX_GRANTS < CTX_LIMIT as usize);

impl GrantRec {
    /// A record for a grant whose context has number `ctx` (see
    /// `Contexts::intern`).
    pub(super) fn new(expires: u64, serial: u64, ctx: u32, level: Level) -> Self {
        let mut rec = GrantRec {
            expires,
            serial_timer: serial << TIMER_BITS,
            ctx_flags: ctx & (CTX_LIMIT - 1),
            loc: PackedLocator::from(Locator {
                uuid_entity: false,
                shard: 0,
                slot: 0,
            }),
            next: NIL,
            pos: 0,
        };
        rec.set_level(level);
        rec
    }

    /// The next grant of the same pair.
    pub(super) fn next(&self) -> Option<GrantIx> {
        (self.next != NIL).then_some(GrantIx(self.next))
    }

    pub(super) fn set_next(&mut self, next: Option<GrantIx>) {
        self.next = next.map_or(NIL, GrantIx::raw);
    }

    pub(super) fn serial(&self) -> u64 {
        self.serial_timer >> TIMER_BITS
    }

    /// The number of its context (see `Contexts`).
    pub(super) fn ctx(&self) -> u32 {
        self.ctx_flags & (CTX_LIMIT - 1)
    }

    pub(super) fn level(&self) -> Level {
        if self.ctx_flags & EDIT_FLAG != 0 {
            Level::Edit
        } else {
            Level::Read
        }
    }

    pub(super) fn set_level(&mut self, level: Level) {
        self.ctx_flags =
            (self.ctx_flags & !EDIT_FLAG) | if level == Level::Edit { EDIT_FLAG } else { 0 };
    }

    /// Whether a batch not yet written created or changed it.
    pub(super) fn pending(&self) -> bool {
        self.ctx_flags & PENDING_FLAG != 0
    }

    pub(super) fn set_pending(&mut self, pending: bool) {
        self.ctx_flags = (self.ctx_flags & !PENDING_FLAG) | if pending { PENDING_FLAG } else { 0 };
    }

    /// Its wheel slot vector (0: not filed).
    pub(super) fn bucket(&self) -> u16 {
        ((self.serial_timer >> BUCKET_SHIFT) & BUCKET_MASK) as u16
    }

    pub(super) fn set_bucket(&mut self, bucket: u16) {
        self.serial_timer = (self.serial_timer & !(BUCKET_MASK << BUCKET_SHIFT))
            | ((u64::from(bucket) & BUCKET_MASK) << BUCKET_SHIFT);
    }

    pub(super) fn stage(&self) -> u8 {
        (self.serial_timer & STAGE_MASK) as u8
    }

    pub(super) fn set_stage(&mut self, stage: u8) {
        self.serial_timer = (self.serial_timer & !STAGE_MASK) | u64::from(stage);
    }

    pub(super) fn used(&self) -> bool {
        self.stage() != FREE
    }

    /// Whether the grant has yet to start.
    pub(super) fn scheduled(&self) -> bool {
        self.stage() == SCHEDULED
    }

    /// Whether its start came and waits to be confirmed.
    pub(super) fn due(&self) -> bool {
        self.stage() == DUE
    }

    /// Whether checks do not see it: yet to start, or due.
    pub(super) fn hidden(&self) -> bool {
        self.stage() >= DUE && self.stage() != FREE
    }

    /// The grant as the API shows it, given its pair, its context and its
    /// start.
    pub(super) fn grant(
        &self,
        user: UserId,
        entity: EntityId,
        context: Context,
        starts: Option<u64>,
    ) -> Grant {
        Grant {
            id: GrantId {
                user,
                entity,
                context,
                serial: self.serial(),
            },
            level: self.level(),
            expires_at: from_millis(self.expires),
            starts_at: starts.map(from_millis),
        }
    }
}

/// A grant record's number in the [`Slab`]: the typed handle every engine
/// structure uses for a grant. The index (a pair's head), the wheel and
/// each record's `next` link hold these numbers as `u32`s.
///
/// INVARIANT (INV-2): a `GrantIx` names a record in use: one that
/// [`Slab::alloc`] returned and [`Slab::free`] has not released. The
/// index, the wheel and the pair lists hold only such numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) struct GrantIx(u32);

impl GrantIx {
    /// A number the index, the wheel or a record's link handed back.
    pub(super) fn from_raw(raw: u32) -> Self {
        GrantIx(raw)
    }

    /// The number, for the index and the wheel.
    pub(super) fn raw(self) -> u32 {
        self.0
    }
}

/// The grant records, by [`GrantIx`]; released records are reused.
#[derive(Default)]
pub(super) struct Slab {
    recs: Vec<GrantRec>,
    free: Vec<u32>,
    held: usize,
}

impl Slab {
    /// Room for `n` more records without growing.
    pub(super) fn reserve(&mut self, n: usize) {
        self.recs.reserve(n);
    }

    /// Records in use: grants held (live, or expired and not reclaimed).
    pub(super) fn held(&self) -> usize {
        self.held
    }

    /// Bytes of the records, used or free.
    pub(super) fn bytes(&self) -> usize {
        self.recs.len() * std::mem::size_of::<GrantRec>()
    }

    /// Store `rec`, reusing a released record if there is one.
    pub(super) fn alloc(&mut self, rec: GrantRec) -> GrantIx {
        self.held += 1;
        if let Some(g) = self.free.pop() {
            let g = GrantIx(g);
            self[g] = rec;
            g
        } else {
            // INVARIANT: at most MAX_GRANTS (2^30 - 1) records exist, so
            // their numbers fit in 32 bits below NIL.
            let g = GrantIx(u32::try_from(self.recs.len()).unwrap_or(NIL));
            self.recs.push(rec);
            g
        }
    }

    /// Release `g`: it is marked free and its number reused later.
    pub(super) fn free(&mut self, g: GrantIx) {
        let rec = &mut self[g];
        rec.set_stage(FREE);
        rec.set_next(None);
        self.free.push(g.0);
        self.held -= 1;
    }

    /// The records in use, in memory order.
    pub(super) fn used(&self) -> impl Iterator<Item = (GrantIx, &GrantRec)> + '_ {
        (0u32..)
            .zip(self.recs.iter())
            .filter(|(_, r)| r.used())
            .map(|(g, r)| (GrantIx(g), r))
    }

    /// The grants of a pair, from its head along the `next` links.
    pub(super) fn pair(&self, head: GrantIx) -> Pair<'_> {
        Pair {
            slab: self,
            next: Some(head),
        }
    }
}

impl std::ops::Index<GrantIx> for Slab {
    type Output = GrantRec;

    #[expect(
        clippy::indexing_slicing,
        reason = "INV-2: a GrantIx names a record of this slab"
    )]
    fn index(&self, g: GrantIx) -> &GrantRec {
        &self.recs[g.0 as usize]
    }
}

impl std::ops::IndexMut<GrantIx> for Slab {
    #[expect(
        clippy::indexing_slicing,
        reason = "INV-2: a GrantIx names a record of this slab"
    )]
    fn index_mut(&mut self, g: GrantIx) -> &mut GrantRec {
        &mut self.recs[g.0 as usize]
    }
}

/// The grants of one pair, along their `next` links.
pub(super) struct Pair<'a> {
    slab: &'a Slab,
    next: Option<GrantIx>,
}

impl Iterator for Pair<'_> {
    type Item = GrantIx;

    fn next(&mut self) -> Option<GrantIx> {
        let g = self.next?;
        self.next = self.slab[g].next();
        Some(g)
    }
}

/// The starts of grants made to start later, by serial (see INV-9).
pub(super) type Starts = hashbrown::HashMap<u64, u64, BySerial>;

/// Hashes a serial to itself in its low bits and to a mix of it in the top
/// seven (the table's tags). Serials are the engine's own, dense and
/// increasing, so grants shared together sit in neighbouring buckets:
/// the wheel, which looks starts up in about the order they were shared
/// when it re-files or fires them in bulk, walks the table instead of
/// missing the cache on every lookup. Nothing outside chooses a serial.
#[derive(Clone, Copy, Default)]
pub(super) struct BySerial;

impl std::hash::BuildHasher for BySerial {
    type Hasher = SerialHasher;
    fn build_hasher(&self) -> SerialHasher {
        SerialHasher(0)
    }
}

/// See [`BySerial`].
#[derive(Default)]
pub(super) struct SerialHasher(u64);

impl std::hash::Hasher for SerialHasher {
    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys are hashed; any other shape still hashes fully.
        for b in bytes {
            self.write_u64(self.0.rotate_left(8) ^ u64::from(*b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        const TAG: u64 = 0x7f << 57;
        self.0 = (n & !TAG) | (n.wrapping_mul(0x9e37_79b9_7f4a_7c15) & TAG);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::config::Timing;
    use crate::engine::timers::GrantLinks;
    use crate::index::Locator;
    use crate::wheel::{Links, Place, Tick};

    #[test]
    fn records_stay_small() {
        // Memory per grant is a headline figure: keep an eye on it.
        assert_eq!(std::mem::size_of::<GrantRec>(), 32);
    }

    #[test]
    fn record_fields_pack_and_unpack() {
        let ctx = CTX_LIMIT - 1;
        let mut rec = GrantRec::new(99, MAX_SERIAL - 1, ctx, Level::Edit);
        assert_eq!(
            (rec.serial(), rec.ctx(), rec.level(), rec.pending()),
            (MAX_SERIAL - 1, ctx, Level::Edit, false)
        );
        rec.set_stage(SCHEDULED - 1);
        rec.set_level(Level::Read);
        rec.set_pending(true);
        assert!(rec.pending());
        assert_eq!((rec.ctx(), rec.level()), (ctx, Level::Read));
        let mut slab = Slab::default();
        let g = slab.alloc(rec);
        assert_eq!(g.raw(), 0);
        let mut links = GrantLinks {
            grants: &mut slab,
            timing: &Timing {
                tick_ms: 10,
                warnings: Box::new([]),
                confirm_starts: false,
            },
            starts: &super::super::record::Starts::default(),
        };
        links.set_place(
            0,
            Place {
                bucket: MAX_BUCKET,
                pos: u32::MAX,
            },
        );
        assert_eq!(
            links.place(0),
            Place {
                bucket: MAX_BUCKET,
                pos: u32::MAX
            }
        );
        assert_eq!(links.deadline(0), Tick(10), "99 ms rounds up to tick 10");
        let rec = slab[g];
        assert_eq!(
            (rec.stage(), rec.level(), rec.serial(), rec.ctx()),
            (SCHEDULED - 1, Level::Read, MAX_SERIAL - 1, ctx)
        );
        assert!(rec.used() && rec.pending());
        assert_eq!(rec.bucket(), MAX_BUCKET);
    }

    #[test]
    fn packed_locators_round_trip() {
        for loc in [
            Locator {
                uuid_entity: false,
                shard: 0,
                slot: 0,
            },
            Locator {
                uuid_entity: true,
                shard: 63,
                slot: (1 << 25) - 1,
            },
            Locator {
                uuid_entity: true,
                shard: 17,
                slot: 12345,
            },
        ] {
            assert_eq!(Locator::from(PackedLocator::from(loc)), loc);
        }
    }

    #[test]
    fn the_slab_reuses_freed_records_and_walks_pairs() {
        let rec = |serial| GrantRec::new(1, serial, DIRECT, Level::Read);
        let mut slab = Slab::default();
        let (a, b, c) = (slab.alloc(rec(1)), slab.alloc(rec(2)), slab.alloc(rec(3)));
        assert_eq!(slab.held(), 3);
        slab[a].set_next(Some(c));
        slab[c].set_next(Some(b));
        let walk: Vec<GrantIx> = slab.pair(a).collect();
        assert_eq!(walk, vec![a, c, b]);
        slab.free(c);
        assert_eq!(slab.held(), 2);
        assert!(!slab[c].used());
        assert_eq!(slab.used().map(|(g, _)| g).collect::<Vec<_>>(), vec![a, b]);
        let d = slab.alloc(rec(4));
        assert_eq!(d, c, "a freed number is reused");
        assert_eq!(slab[d].serial(), 4);
        assert_eq!(slab.bytes(), 3 * 32);
    }
}
