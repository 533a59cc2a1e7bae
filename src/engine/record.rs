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
    pub(super) next: u32,
    /// The position in its wheel slot vector.
    pub(super) pos: u32,
    /// The wheel slot vector (bits 0..9), the timer stage (bits 9..17: a
    /// warning index, `warnings.len()` for the expiry, [`FREE`] for a record
    /// on the free list) and the level (bit 17: edit).
    pub(super) bits: u32,
}

/// The stage of a free record.
pub(super) const FREE: u8 = u8::MAX;
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

    /// The grant as the API shows it, given its pair.
    pub(super) fn grant(&self, user: UserId, entity: EntityId) -> Grant {
        Grant {
            id: GrantId {
                user,
                entity,
                context: self.context(),
                serial: self.serial(),
            },
            level: self.level(),
            expires_at: from_millis(self.expires),
        }
    }

    pub(super) fn context(&self) -> Context {
        Context::unpack(
            self.ctx_kind(),
            (u128::from(self.ctx_hi) << 64) | u128::from(self.ctx_lo),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::config::Timing;
    use crate::engine::state::GrantLinks;
    use crate::index::Locator;
    use crate::wheel::{Links, Place};

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
        rec.set_stage(FREE - 1);
        rec.set_level(Level::Read);
        let mut links = GrantLinks {
            grants: std::slice::from_mut(&mut rec),
            timing: &Timing {
                tick_ms: 10,
                warnings: Box::new([]),
            },
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
        assert_eq!(links.deadline(0), 10, "99 ms rounds up to tick 10");
        assert_eq!(
            (rec.stage(), rec.level(), rec.serial()),
            (FREE - 1, Level::Read, MAX_SERIAL - 1)
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
}
