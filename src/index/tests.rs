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
            crate::ids::EntityKind::custom(9),
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

#[test]
fn a_reserved_index_takes_its_count_without_a_rebuild() {
    let (reader, mut writer) = new_index();
    let n = 200_000u64;
    writer.reserve_numeric(&reader, n as usize, &mut |_, _| {});
    let bytes = writer.table_bytes();
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
    assert_eq!(writer.table_bytes(), bytes);
    let slots = bytes / (std::mem::size_of::<Slot<4>>() + 1);
    let load = n as f64 / slots as f64;
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
        &|i| hasher.hash(&Key([0x0203_f172, 0x8642_11e7, i, 1])),
        &|i| hasher.hash(&Key([0, i, 869_196, 1])),
        &|i| hasher.hash(&Key([7, 7, 0, i, 3])),
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
