//! The packed grant record (48 bytes) and its bit layout.

use crate::clock::from_millis;
use crate::ids::{Context, EntityId, GrantId, Level, UserId};
use crate::index::{Locator, PackedLocator};
use crate::model::grant::Grant;
use crate::wheel::MAX_BUCKET;

pub(super) const NIL: u32 = u32::MAX;
/// The most grants one engine holds: keeps grant numbers in 32 bits and
/// each index shard far below its 2^25 slots.
pub(super) const MAX_GRANTS: usize = 1 << 30;

/// A grant as the engine stores it: 48 bytes.
#[derive(Clone, Copy, Debug)]
pub(super) struct GrantRec {
    pub(super) expires: u64,
    /// The serial (high 47 bits) and the context kind (low 17 bits).
    pub(super) serial_kind: u64,
    pub(super) ctx_hi: u64,
    pub(super) ctx_lo: u64,
    pub(super) loc: PackedLocator,
    /// The next grant of the same pair.
    next: u32,
    /// The position in its wheel slot vector.
    pub(super) pos: u32,
    /// The wheel slot vector (bits 0..9), the timer stage (bits 9..17: a
    /// warning index, `warnings.len()` for the expiry, [`SCHEDULED`] before
    /// the start, [`FREE`] for a record on the free list) and the level
    /// (bit 17: edit).
    pub(super) bits: u32,
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
pub(super) const KIND_BITS: u32 = 17;
/// Serials stay below this (2^47: decades of shares at millions a second).
pub(super) const MAX_SERIAL: u64 = 1 << (64 - KIND_BITS);
pub(super) const BUCKET_MASK: u32 = 0x1ff;
pub(super) const STAGE_SHIFT: u32 = 9;
pub(super) const EDIT_BIT: u32 = 1 << 17;
/// Set on a grant created or changed by a batch not yet written: checks see
/// it as it was before the batch (see [`Group`]).
pub(super) const PENDING_BIT: u32 = 1 << 18;
// The wheel's slot vectors fit in the bucket bits.
const _: () = assert!(MAX_BUCKET as u32 <= BUCKET_MASK);

impl GrantRec {
    pub(super) fn new(expires: u64, serial: u64, ctx: (u32, u128), level: Level) -> Self {
        let mut rec = GrantRec {
            expires,
            serial_kind: (serial << KIND_BITS) | u64::from(ctx.0),
            ctx_hi: (ctx.1 >> 64) as u64,
            ctx_lo: ctx.1 as u64,
            loc: PackedLocator::from(Locator {
                uuid_entity: false,
                shard: 0,
                slot: 0,
            }),
            next: NIL,
            pos: 0,
            bits: 0,
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
        self.serial_kind >> KIND_BITS
    }

    pub(super) fn ctx_kind(&self) -> u32 {
        (self.serial_kind & ((1 << KIND_BITS) - 1)) as u32
    }

    pub(super) fn has_context(&self, ctx: (u32, u128)) -> bool {
        self.ctx_kind() == ctx.0
            && self.ctx_hi == (ctx.1 >> 64) as u64
            && self.ctx_lo == ctx.1 as u64
    }

    pub(super) fn level(&self) -> Level {
        if self.bits & EDIT_BIT != 0 {
            Level::Edit
        } else {
            Level::Read
        }
    }

    pub(super) fn set_level(&mut self, level: Level) {
        self.bits = (self.bits & !EDIT_BIT) | if level == Level::Edit { EDIT_BIT } else { 0 };
    }

    pub(super) fn stage(&self) -> u8 {
        (self.bits >> STAGE_SHIFT) as u8
    }

    pub(super) fn set_stage(&mut self, stage: u8) {
        self.bits = (self.bits & !(0xff << STAGE_SHIFT)) | (u32::from(stage) << STAGE_SHIFT);
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

    /// The grant as the API shows it, given its pair and its start.
    pub(super) fn grant(&self, user: UserId, entity: EntityId, starts: Option<u64>) -> Grant {
        Grant {
            id: GrantId {
                user,
                entity,
                context: self.context(),
                serial: self.serial(),
            },
            level: self.level(),
            expires_at: from_millis(self.expires),
            starts_at: starts.map(from_millis),
        }
    }

    pub(super) fn context(&self) -> Context {
        Context::unpack(
            self.ctx_kind(),
            (u128::from(self.ctx_hi) << 64) | u128::from(self.ctx_lo),
        )
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
            // INVARIANT: fewer than MAX_GRANTS (2^30) records exist, so
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::config::Timing;
    use crate::engine::state::GrantLinks;
    use crate::index::Locator;
    use crate::wheel::{Links, Place, Tick};

    #[test]
    fn records_stay_small() {
        // Memory per grant is a headline figure: keep an eye on it.
        assert_eq!(std::mem::size_of::<GrantRec>(), 48);
    }

    #[test]
    fn record_fields_pack_and_unpack() {
        let ctx = Context::Other {
            kind: u16::MAX,
            id: uuid::Uuid::from_u128(7),
        };
        let mut rec = GrantRec::new(99, MAX_SERIAL - 1, ctx.pack(), Level::Edit);
        assert_eq!(
            (rec.serial(), rec.context(), rec.level()),
            (MAX_SERIAL - 1, ctx, Level::Edit)
        );
        rec.set_stage(SCHEDULED - 1);
        rec.set_level(Level::Read);
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
            starts: &super::super::state::Starts::default(),
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
            (rec.stage(), rec.level(), rec.serial()),
            (SCHEDULED - 1, Level::Read, MAX_SERIAL - 1)
        );
        assert!(rec.used());
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
        let rec = |serial| GrantRec::new(1, serial, (0, 0), Level::Read);
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
        assert_eq!(slab.bytes(), 3 * 48);
    }
}
