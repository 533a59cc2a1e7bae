//! Models of the index's protocols under loom, which runs each test under
//! every interleaving of its threads (and every value the memory model
//! lets a load see) up to a bound of preemptions.
//!
//! Run with `RUSTFLAGS="--cfg grantwheel_loom" cargo test -p grantwheel
//! --release --lib --no-default-features --target-dir target/loom
//! index::loom_models` (`LOOM_MAX_PREEMPTIONS`
//! bounds the search; the gate uses 3).
//!
//! - the sequence lock: a reader never accepts a torn slot (a summary
//!   made of two writes, or a key of one pair with the instants of
//!   another);
//! - growth and shrinking: a table rebuilt, published and retired while a
//!   reader uses it (from its thread's cached directory) never hides a
//!   pair that is present in both, and a revoke that returned before a
//!   check is seen by it, whichever table the check started on;
//!
//! The group commit's model is the engine's (`engine::loom_models`).
//!
//! Each was run against a broken variant and failed: the reader taking the
//! sequence once (the torn-slot, key-reuse and growth models), a rebuilt
//! table published without naming it in `current` and retiring the old one (growth and
//! shrinking),

use std::sync::Arc;

use loom::sync::atomic::AtomicBool;
use loom::thread;

use super::{new_index, shard_of, IndexReader, IndexWriter, Locator, PairKey, Summary};
use crate::ids::{EntityId, UserId};
use crate::sync::Ordering;

fn pair(i: u128) -> (UserId, EntityId) {
    (UserId::from_u128(i + 1), EntityId::lead(7))
}

/// The first `n` pairs that fall in the same shard (the hasher is fixed
/// under loom, so these are the same pairs in every execution).
fn same_shard(writer: &IndexWriter, n: usize) -> Vec<(UserId, EntityId)> {
    let shard_of_pair = |(u, e): &(UserId, EntityId)| shard_of(writer.hash(&PairKey::new(u, e)));
    let first = shard_of_pair(&pair(0));
    (0..)
        .map(pair)
        .filter(|p| shard_of_pair(p) == first)
        .take(n)
        .collect()
}

fn live(i: u64) -> Summary {
    Summary {
        read_until: 1_000 + i,
        edit_until: 500 + i,
    }
}

/// Insert a pair with head `head`; returns where it went, noting moves.
fn insert(
    writer: &mut IndexWriter,
    reader: &IndexReader,
    (u, e): &(UserId, EntityId),
    head: u32,
    summary: Summary,
    at: &mut Vec<Option<Locator>>,
) {
    let key = PairKey::new(u, e);
    let hash = writer.hash(&key);
    let loc = writer.insert(reader, &key, hash, head, summary, &mut |h, loc| {
        if let Some(slot) = at.get_mut(h as usize) {
            *slot = Some(loc);
        }
    });
    if let Some(slot) = at.get_mut(head as usize) {
        *slot = Some(loc);
    }
}

/// Check `p` (live as `live(0)` until revoked) twice: the first check
/// caches this thread's directory, which the writer may retire at any
/// point after; the second, made after reading whether the revoke
/// returned, must see it if it did. Neither finds the pair missing while
/// it is present, in the old table or the new.
fn check_twice_around_a_revoke(r: &IndexReader, p: (UserId, EntityId), revoked: &AtomicBool) {
    let first = r.summary(&p.0, &p.1);
    assert!(first == live(0) || first == Summary::default(), "{first:?}");
    let returned = revoked.load(Ordering::Acquire);
    let second = r.summary(&p.0, &p.1);
    if returned {
        assert_eq!(second, Summary::default(), "a revoke that returned is seen");
    }
    assert!(
        second == live(0) || second == Summary::default(),
        "{second:?}"
    );
}

#[test]
fn a_reader_never_accepts_a_torn_slot() {
    loom::model(|| {
        let (reader, mut writer) = new_index();
        let reader = Arc::new(reader);
        let p = pair(0);
        let before = live(1);
        let after = Summary {
            read_until: 2_000,
            edit_until: 0,
        };
        let mut at = vec![None];
        insert(&mut writer, &reader, &p, 0, before, &mut at);
        let r = reader.clone();
        let check = thread::spawn(move || r.summary(&p.0, &p.1));
        if let Some(loc) = at[0] {
            writer.update(loc, 0, after);
        }
        let seen = check.join().unwrap();
        assert!(seen == before || seen == after, "torn: {seen:?}");
    });
}

#[test]
fn a_reader_never_takes_one_pairs_key_with_anothers_instants() {
    loom::model(|| {
        let (reader, mut writer) = new_index();
        let reader = Arc::new(reader);
        let pairs = same_shard(&writer, 2);
        let (p, q) = (pairs[0], pairs[1]);
        let mut at = vec![None, None];
        insert(&mut writer, &reader, &p, 0, live(1), &mut at);
        let r = reader.clone();
        let check = thread::spawn(move || r.summary(&p.0, &p.1));
        // P leaves and Q takes a slot of the same group (P's, freed).
        if let Some(loc) = at[0] {
            writer.remove(&reader, loc, &mut |_, _| {});
        }
        insert(&mut writer, &reader, &q, 1, live(2), &mut at);
        let seen = check.join().unwrap();
        assert!(
            seen == live(1) || seen == Summary::default(),
            "P read with Q's instants: {seen:?}"
        );
    });
}

#[test]
fn a_table_grown_under_a_reader_hides_nothing_and_a_revoke_that_returned_is_seen() {
    loom::model(|| {
        let (reader, mut writer) = new_index();
        let reader = Arc::new(reader);
        // Seven pairs fill one group (the most it takes): the eighth makes
        // the writer build a larger table, publish it and retire this one.
        let pairs = same_shard(&writer, 8);
        let mut at = vec![None; 8];
        for (i, p) in pairs.iter().take(7).enumerate() {
            insert(&mut writer, &reader, p, i as u32, live(i as u64), &mut at);
        }
        let p0 = pairs[0];
        let revoked = Arc::new(AtomicBool::new(false));
        let (r, flag) = (reader.clone(), revoked.clone());
        let check = thread::spawn(move || check_twice_around_a_revoke(&r, p0, &flag));
        insert(&mut writer, &reader, &pairs[7], 7, live(7), &mut at);
        // The revoke of P0, wherever the rebuild put it.
        if let Some(loc) = at[0] {
            writer.update(loc, 0, Summary::default());
        }
        revoked.store(true, Ordering::Release);
        check.join().unwrap();
    });
}

#[test]
fn a_table_shrunk_under_a_reader_hides_nothing_and_a_revoke_that_returned_is_seen() {
    loom::model(|| {
        let (reader, mut writer) = new_index();
        let reader = Arc::new(reader);
        // Grow to two groups, then remove down to the edge of shrinking.
        let pairs = same_shard(&writer, 8);
        let mut at = vec![None; 8];
        for (i, p) in pairs.iter().enumerate() {
            insert(&mut writer, &reader, p, i as u32, live(i as u64), &mut at);
        }
        let remove = |writer: &mut IndexWriter, i: usize, at: &mut Vec<Option<Locator>>| {
            if let Some(loc) = at[i] {
                writer.remove(&reader, loc, &mut |h, loc| {
                    if let Some(slot) = at.get_mut(h as usize) {
                        *slot = Some(loc);
                    }
                });
            }
        };
        for i in 4..8 {
            remove(&mut writer, i, &mut at);
        }
        let kept = pairs[0];
        let revoked = Arc::new(AtomicBool::new(false));
        let (r, flag) = (reader.clone(), revoked.clone());
        let check = thread::spawn(move || check_twice_around_a_revoke(&r, kept, &flag));
        // One more removal: the table is rebuilt smaller and published;
        // then the kept pair is revoked where the rebuild put it.
        remove(&mut writer, 3, &mut at);
        if let Some(loc) = at[0] {
            writer.update(loc, 0, Summary::default());
        }
        revoked.store(true, Ordering::Release);
        check.join().unwrap();
    });
}
