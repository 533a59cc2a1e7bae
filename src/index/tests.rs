//! The index against a plain map, through growth and shrinking.

use super::table::{home, tag_of};
use super::*;
use crate::ids::EntityRef;
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

/// Pair `i`'s head grant: spread up to 2^30, so that heads use all their
/// bits (the low half lives in the slot, the high half beside it).
fn head_of(i: u64) -> u32 {
    (i as u32) * 50_021 + 7
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
        let loc = writer.insert(&reader, &pk, h, head_of(i), s, &mut |head, loc| {
            where_is.insert(head, loc);
        });
        where_is.insert(head_of(i), loc);
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
        let loc = where_is.remove(&head_of(i)).unwrap();
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
    // The tables shrank (each below 20% load is rebuilt at 80%), and only
    // the users of the pairs left keep numbers.
    let slots: usize = writer.num.iter().map(|s| s.table.cap()).sum::<usize>()
        + writer.uuid.iter().map(|s| s.table.cap()).sum::<usize>();
    assert!(slots <= model.len() * 5 + 2 * SHARDS * 8, "{slots} slots");
    let users: std::collections::HashSet<UserId> = model.keys().map(|i| key(*i, false).0).collect();
    assert_eq!(writer.users.len(), users.len());
}

#[test]
fn tags_vary_within_a_group_of_a_large_table() {
    // Keys of one group share the hash's high bits (the home) and, in
    // one shard, its low bits: the tag must come from other bits.
    let hasher = KeyHasher::random();
    let groups = 1 << 20;
    let mut tags = std::collections::HashMap::<usize, std::collections::HashSet<u8>>::new();
    for i in 0..2_000_000u64 {
        let h = hasher.hash(&Key {
            user: [i, 7],
            rest: [1, 9],
        });
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
    writer.update(loc, 0x3fff_fffe, s);
    assert_eq!(writer.head(loc), 0x3fff_fffe);
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
    // 32-byte slots at 80% load.
    assert!(writer.table_bytes() >= 100_000 * 40);
    assert_eq!(writer.head(loc), 0);
    assert_eq!(reader.summary(&u, &e), s);
}

#[test]
fn a_reserved_index_takes_its_count_without_a_rebuild() {
    let (reader, mut writer) = new_index();
    let n = 200_000u64;
    writer.reserve_numeric(&reader, n as usize, &mut |_, _| {});
    let slots = |w: &IndexWriter| w.num.iter().map(|s| s.table.cap()).sum::<usize>();
    let reserved = slots(&writer);
    let mut moves = 0usize;
    for i in 0..n {
        let user = UserId::from_u128(
            u128::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835),
        );
        let pk = PairKey::new(&user, &EntityId::lead(i));
        let h = writer.hash(&pk);
        let s = Summary {
            read_until: 1,
            edit_until: 0,
        };
        writer.insert(&reader, &pk, h, i as u32, s, &mut |_, _| moves += 1);
    }
    assert_eq!(moves, 0, "no table was rebuilt");
    assert_eq!(slots(&writer), reserved);
    assert_eq!(writer.users.len(), n as usize);
    let load = n as f64 / reserved as f64;
    assert!((0.78..=0.80).contains(&load), "load {load}");
}

#[test]
fn runs_of_ids_spread_evenly_over_shards_and_groups() {
    // One user's many leads, many users' one lead (numbers in a row, as
    // hosts often number them), and UUID leads: every shard gets its share
    // and no home group of a shard is crowded.
    // Several keys each run. Without the hash's final mix, runs of user
    // numbers crowded a group under a few keys in a hundred (this test
    // failed 4 runs in 60 with one key a run, 2 in 10 with eight).
    for _ in 0..8 {
        spread_evenly(KeyHasher::random());
    }
}

fn spread_evenly(hasher: KeyHasher) {
    let n = 640_000u64;
    let shapes: [&dyn Fn(u64) -> u64; 3] = [
        &|i| {
            hasher.hash(&Key {
                user: [0x0203_f172, 0x8642_11e7],
                rest: [1, i],
            })
        },
        &|i| {
            hasher.hash(&Key {
                user: [0, i],
                rest: [1, 869_196],
            })
        },
        &|i| {
            hasher.hash(&Key {
                user: [7, 7],
                rest: [3, 0, i],
            })
        },
    ];
    for (s, hash) in shapes.iter().enumerate() {
        let mut per_shard = [0u64; SHARDS];
        let mut per_group = HashMap::<usize, u64>::new();
        for i in 0..n {
            let h = hash(i);
            if let Some(c) = per_shard.get_mut(shard_of(h)) {
                *c += 1;
            }
            if shard_of(h) == 0 {
                *per_group.entry(home(h, 4096)).or_default() += 1;
            }
        }
        let mean = n / SHARDS as u64;
        for (i, c) in per_shard.iter().enumerate() {
            assert!(
                (mean * 9 / 10..=mean * 11 / 10).contains(c),
                "shape {s}: shard {i} has {c}, the mean is {mean}"
            );
        }
        // About 10,000 keys over 4,096 groups: 2.4 a group on average.
        let crowded = per_group.values().max().copied().unwrap_or(0);
        assert!(crowded <= 16, "shape {s}: a group has {crowded} homes");
    }
}
