//! Tests of the persistent map against a `HashMap` model, plus structural invariants.

#![deny(unsafe_code)]

use super::*;
use proptest::prelude::*;
use std::collections::{BTreeSet, HashMap};

/// The reference model.
type Model = HashMap<u64, u32>;

/// Which form a map's root is in.
#[derive(Debug, PartialEq, Eq)]
enum Form {
    /// No root.
    Empty,
    /// Small-form root.
    Small,
    /// HAMT root, with the depth of its deepest branch (1 = root only).
    Trie(usize),
}

/// Checks every structural invariant of `map` and returns its form.
fn check_invariants<V>(map: &Map<V>) -> Form {
    let Some(root) = &map.root else {
        return Form::Empty;
    };
    // The map's length is its root's: an empty map has no root node at all.
    assert!(root.len > 0, "a root node with no entries");
    match &root.repr {
        Repr::Small(small) => {
            let n = root.len;
            assert!((1..=SMALL_MAX).contains(&n), "small form with {n} entries");
            for i in 0..SMALL_MAX {
                if i < n {
                    assert!(small.values[i].is_some(), "value below len is None");
                    if i > 0 {
                        assert!(small.keys[i - 1] < small.keys[i], "keys not ascending");
                    }
                } else {
                    assert!(small.values[i].is_none(), "value past len is Some");
                    assert_eq!(small.keys[i], small.keys[0], "unused key not padded");
                }
            }
            Form::Small
        }
        Repr::Trie(branch) => {
            let mut keys = Vec::new();
            let depth = check_branch(branch, 0, 0, &mut keys);
            assert_eq!(keys.len(), root.len, "trie key count != len");
            let distinct: BTreeSet<u64> = keys.iter().copied().collect();
            assert_eq!(distinct.len(), keys.len(), "duplicate key in trie");
            assert!(
                keys.len() > SMALL_MAX,
                "trie with {} keys that would fit the small form",
                keys.len()
            );
            Form::Trie(depth)
        }
    }
}

/// Checks a branch at level `shift / 5` whose keys agree with `prefix` below `shift`;
/// appends its keys and returns its depth.
fn check_branch<V>(branch: &Branch<V>, shift: u32, prefix: u64, keys: &mut Vec<u64>) -> usize {
    assert!(shift < 64, "trie deeper than {MAX_DEPTH} levels");
    assert_eq!(branch.slots.len(), branch.bitmap.count_ones() as usize);
    assert!(!branch.slots.is_empty(), "empty branch");
    let mut bits = branch.bitmap;
    let mut depth = 1;
    for (i, slot) in branch.slots.iter().enumerate() {
        let index = u64::from(bits.trailing_zeros());
        bits &= bits - 1;
        assert_eq!(usize::from(branch.pos[index as usize]), i, "position table");
        let slot_prefix = prefix | (index << shift);
        let low_mask = if shift + BITS >= 64 {
            u64::MAX
        } else {
            (1u64 << (shift + BITS)) - 1
        };
        match slot {
            Slot::Entry(key, _) => {
                assert_eq!(key & low_mask, slot_prefix, "entry in the wrong slot");
                keys.push(*key);
            }
            Slot::Child(child) => {
                let before = keys.len();
                let sub = check_branch(child, shift + BITS, slot_prefix, keys);
                assert!(keys.len() - before >= 2, "child with fewer than two keys");
                for key in &keys[before..] {
                    assert_eq!(key & low_mask, slot_prefix, "key under the wrong slot");
                }
                depth = depth.max(sub + 1);
            }
        }
    }
    depth
}

/// Asserts that `map` matches `model` in every observable way.
fn check_against<V: Clone + PartialEq + fmt::Debug>(map: &Map<V>, model: &HashMap<u64, V>) {
    check_invariants(map);
    assert_eq!(map.len(), model.len());
    assert_eq!(map.is_empty(), model.is_empty());
    assert_eq!(map.root_ptr().is_null(), model.is_empty());
    for (key, value) in model {
        assert_eq!(map.get(*key), Some(value), "key {key}");
        assert!(map.contains_key(*key));
    }
    let iter = map.iter();
    assert_eq!(iter.len(), model.len());
    let mut seen = HashMap::new();
    for (key, value) in iter {
        assert!(
            seen.insert(key, value.clone()).is_none(),
            "key {key} yielded twice"
        );
    }
    assert_eq!(&seen, model);
}

/// Builds a map by inserting `entries` in the given order.
fn build<V: Clone>(entries: impl IntoIterator<Item = (u64, V)>) -> Map<V> {
    entries
        .into_iter()
        .fold(Map::new(), |map, (key, value)| map.insert(key, value))
}

/// Keys in iteration order.
fn keys<V>(map: &Map<V>) -> Vec<u64> {
    map.iter().map(|(key, _)| key).collect()
}

/// A tiny deterministic PRNG (xorshift64*) for the non-proptest tests.
struct Rng(u64);

impl Rng {
    /// Next pseudo-random value.
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Fisher-Yates shuffle.
    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            items.swap(i, j);
        }
    }
}

/// One step of a random operation sequence.
#[derive(Clone, Debug)]
enum Op {
    /// Insert (or overwrite) an arbitrary key from the strategy's key space.
    Insert(u64, u32),
    /// Overwrite the n-th (mod len) present key, in sorted order.
    Overwrite(usize, u32),
    /// Remove the n-th (mod len) present key.
    RemovePresent(usize),
    /// Remove a key from the key space (usually absent for large spaces).
    Remove(u64),
    /// Look up a key from the key space.
    Get(u64),
}

/// Operation sequences over keys drawn from `keys`.
fn ops(keys: impl Strategy<Value = u64> + Clone) -> impl Strategy<Value = Vec<Op>> {
    let op = prop_oneof![
        4 => (keys.clone(), any::<u32>()).prop_map(|(k, v)| Op::Insert(k, v)),
        1 => (any::<usize>(), any::<u32>()).prop_map(|(i, v)| Op::Overwrite(i, v)),
        2 => any::<usize>().prop_map(Op::RemovePresent),
        1 => keys.clone().prop_map(Op::Remove),
        1 => keys.prop_map(Op::Get),
    ];
    prop::collection::vec(op, 0..if cfg!(miri) { 24 } else { 120 })
}

/// Keys sharing their low 35 bits (`x << 35 | c`), forcing deep tries.
fn deep_keys() -> impl Strategy<Value = u64> + Clone {
    (0u64..64, prop_oneof![Just(0x1_2345u64), Just(0), Just(7)]).prop_map(|(x, c)| (x << 35) | c)
}

/// A mix of all the key shapes.
fn mixed_keys() -> impl Strategy<Value = u64> + Clone {
    prop_oneof![
        1u64..40,
        any::<u64>(),
        deep_keys(),
        (0u64..16).prop_map(|x| (x << 60) | 0xabc),
        (0u64..8).prop_map(|x| x * 64 + 3),
    ]
}

/// The model's keys in ascending order (ops name present keys by their rank).
fn sorted_keys(model: &Model) -> Vec<u64> {
    model
        .keys()
        .copied()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// Runs `ops` against a map and the model, keeping every version with its model snapshot
/// and rechecking them all at the end (persistence).
fn run_ops(ops: &[Op]) {
    let mut map: Map<u32> = Map::new();
    let mut model = Model::new();
    let mut versions = vec![(map.clone(), model.clone())];
    for op in ops {
        let sorted = sorted_keys(&model);
        match *op {
            Op::Insert(key, value) => {
                map = map.insert(key, value);
                model.insert(key, value);
            }
            Op::Overwrite(i, value) => {
                if let Some(&key) = sorted.get(i % sorted.len().max(1)) {
                    map = map.insert(key, value);
                    model.insert(key, value);
                }
            }
            Op::RemovePresent(i) => {
                if let Some(&key) = sorted.get(i % sorted.len().max(1)) {
                    map = map.remove(key).expect("present key");
                    model.remove(&key);
                }
            }
            Op::Remove(key) => match map.remove(key) {
                Some(next) => {
                    assert!(model.remove(&key).is_some(), "removed absent key {key}");
                    map = next;
                }
                None => assert!(!model.contains_key(&key), "failed to remove {key}"),
            },
            Op::Get(key) => assert_eq!(map.get(key), model.get(&key)),
        }
        check_against(&map, &model);
        versions.push((map.clone(), model.clone()));
    }
    for (version, snapshot) in &versions {
        check_against(version, snapshot);
    }
    // The same key set and values built in another order is equal and iterates alike.
    let mut entries: Vec<(u64, u32)> = model.iter().map(|(k, v)| (*k, *v)).collect();
    entries.sort_unstable();
    entries.reverse();
    let rebuilt = build(entries);
    assert!(map.eq_by(&rebuilt, |a, b| a == b));
    assert!(rebuilt.eq_by(&map, |a, b| a == b));
    assert_eq!(keys(&map), keys(&rebuilt));
    assert_eq!(check_invariants(&map), check_invariants(&rebuilt));
}

/// Sets `key` the way a thread's own frame does: in place if possible, else path-copying.
/// Returns the old value and whether the change was made in place.
fn set_mut(map: &mut Map<u32>, key: u64, value: u32) -> (Option<u32>, bool) {
    match map.insert_in_place(key, value) {
        Ok(old) => (old, true),
        Err(value) => {
            let old = map.get(key).copied();
            *map = map.insert(key, value);
            (old, false)
        }
    }
}

/// Unsets `key` the same way. Returns the old value and whether it was done in place.
fn unset_mut(map: &mut Map<u32>, key: u64) -> (Option<u32>, bool) {
    match map.remove_in_place(key) {
        Ok(old) => (old, true),
        Err(()) => {
            let old = map.get(key).copied();
            *map = map
                .remove(key)
                .expect("remove_in_place refuses only present keys");
            (old, false)
        }
    }
}

/// Runs `ops` through the in-place operations, keeping a version (a clone, which makes
/// the next change path-copy) after every op whose index is a multiple of `keep_every`
/// (never if 0). Checks the map against the model after each op, the returned old values,
/// and at the end that no kept version changed. Returns how many changes were in place.
fn run_ops_in_place(ops: &[Op], keep_every: usize) -> usize {
    let mut map: Map<u32> = Map::new();
    let mut model = Model::new();
    let mut versions = Vec::new();
    let mut in_place = 0;
    for (i, op) in ops.iter().enumerate() {
        let sorted = sorted_keys(&model);
        let pick = |n: usize| sorted.get(n % sorted.len().max(1)).copied();
        let (old, expected, done_in_place) = match *op {
            Op::Insert(key, value) => {
                let (old, p) = set_mut(&mut map, key, value);
                (old, model.insert(key, value), p)
            }
            Op::Overwrite(n, value) => match pick(n) {
                Some(key) => {
                    let (old, p) = set_mut(&mut map, key, value);
                    (old, model.insert(key, value), p)
                }
                None => (None, None, false),
            },
            Op::RemovePresent(n) => match pick(n) {
                Some(key) => {
                    let (old, p) = unset_mut(&mut map, key);
                    (old, model.remove(&key), p)
                }
                None => (None, None, false),
            },
            Op::Remove(key) => {
                let (old, p) = unset_mut(&mut map, key);
                (old, model.remove(&key), p)
            }
            Op::Get(key) => (map.get(key).copied(), model.get(&key).copied(), false),
        };
        assert_eq!(old, expected, "old value after {op:?}");
        in_place += usize::from(done_in_place);
        check_against(&map, &model);
        if keep_every != 0 && i % keep_every == 0 {
            versions.push((map.clone(), model.clone()));
        }
    }
    for (version, snapshot) in &versions {
        check_against(version, snapshot);
    }
    in_place
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: if cfg!(miri) { 2 } else { 256 },
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Random operations on small sequential ids (the real workload).
    #[test]
    fn prop_in_place_ops_small_keys(ops in ops(1u64..40), keep_every in 0usize..4) {
        run_ops_in_place(&ops, keep_every);
    }

    #[test]
    fn prop_in_place_ops_mixed_keys(ops in ops(mixed_keys()), keep_every in 0usize..4) {
        run_ops_in_place(&ops, keep_every);
    }

    #[test]
    fn prop_ops_small_sequential_keys(ops in ops(1u64..40)) {
        run_ops(&ops);
    }

    /// Random operations on arbitrary `u64` keys.
    #[test]
    fn prop_ops_arbitrary_keys(ops in ops(any::<u64>())) {
        run_ops(&ops);
    }

    /// Random operations on keys sharing their low 35 bits (deep tries).
    #[test]
    fn prop_ops_deep_keys(ops in ops(deep_keys())) {
        run_ops(&ops);
    }

    /// Random operations over a mixture of key shapes.
    #[test]
    fn prop_ops_mixed_keys(ops in ops(mixed_keys())) {
        run_ops(&ops);
    }

    /// Two maps built from the same entries in different orders are equal, have the same
    /// shape and iterate in the same order; changing one value breaks equality.
    #[test]
    fn prop_insertion_order_does_not_matter(
        entries in prop::collection::btree_map(mixed_keys(), any::<u32>(), 0..60),
        seed in any::<u64>(),
    ) {
        let mut shuffled: Vec<(u64, u32)> = entries.into_iter().collect();
        let a = build(shuffled.iter().copied());
        Rng(seed | 1).shuffle(&mut shuffled);
        let b = build(shuffled.iter().copied());
        prop_assert!(a.eq_by(&b, |x, y| x == y));
        prop_assert_eq!(keys(&a), keys(&b));
        prop_assert_eq!(check_invariants(&a), check_invariants(&b));
        if let Some(&(key, value)) = shuffled.first() {
            let changed = b.insert(key, value.wrapping_add(1));
            prop_assert!(!a.eq_by(&changed, |x, y| x == y));
        }
    }
}

#[test]
fn empty_map_does_not_allocate() {
    let map: Map<u32> = Map::new();
    assert!(map.root_ptr().is_null());
    assert!(Map::<String>::default().root_ptr().is_null());
    assert_eq!(map.len(), 0);
    assert!(map.is_empty());
    assert_eq!(map.get(0), None);
    assert_eq!(map.get(1), None);
    assert_eq!(map.iter().next(), None);
    assert_eq!(map.iter().len(), 0);
    assert!(map.remove(1).is_none());
    assert!(map.ptr_eq(&Map::new()));
    assert_eq!(check_invariants(&map), Form::Empty);
    // Removing the last entry goes back to the allocation-free empty map.
    let emptied = map.insert(5, 1).remove(5).expect("present");
    assert!(emptied.root_ptr().is_null());
    assert!(emptied.ptr_eq(&map));
    let emptied = build((0..20).map(|k| (k, 0))).remove(0);
    assert_eq!(emptied.map(|m| m.len()), Some(19));
}

#[test]
fn new_is_const() {
    static EMPTY: Map<u32> = Map::new();
    assert!(EMPTY.is_empty());
}

#[test]
fn sequential_keys_insert_then_remove_in_random_order() {
    let n: u64 = if cfg!(miri) { 48 } else { 10_000 };
    let full_check_every = if cfg!(miri) { 16 } else { 1000 };
    let always_check_below = if cfg!(miri) { 20 } else { 40 };
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut map = Map::new();
    let mut model = Model::new();
    for key in 1..=n {
        let value = rng.next() as u32;
        let before = map.clone();
        map = map.insert(key, value);
        model.insert(key, value);
        assert_eq!(map.len(), model.len());
        assert_eq!(map.get(key), Some(&value));
        assert_eq!(before.get(key), None, "old version changed");
        let probe = 1 + rng.next() % key;
        assert_eq!(map.get(probe), model.get(&probe));
        if key % full_check_every == 0 || key <= always_check_below {
            check_against(&map, &model);
        }
    }
    check_against(&map, &model);
    let mut order: Vec<u64> = (1..=n).collect();
    rng.shuffle(&mut order);
    for (step, key) in order.into_iter().enumerate() {
        let before = map.clone();
        map = map.remove(key).expect("present key");
        model.remove(&key);
        assert_eq!(map.len(), model.len());
        assert_eq!(map.get(key), None);
        assert!(map.remove(key).is_none());
        assert!(before.contains_key(key), "old version changed");
        let probe = 1 + rng.next() % n;
        assert_eq!(map.get(probe), model.get(&probe));
        if step % full_check_every as usize == 0 || model.len() as u64 <= always_check_below {
            check_against(&map, &model);
        }
    }
    assert!(map.is_empty());
    assert!(map.root_ptr().is_null());
}

#[test]
fn maximum_depth_tree_from_keys_equal_in_low_60_bits() {
    let low = 0x0abc_def0_1234_5678_u64 & ((1 << 60) - 1);
    let keys_: Vec<u64> = (0..16).map(|x| (x << 60) | low).collect();
    let mut map = Map::new();
    let mut model = Model::new();
    for (i, &key) in keys_.iter().enumerate() {
        map = map.insert(key, i as u32);
        model.insert(key, i as u32);
        check_against(&map, &model);
    }
    assert_eq!(check_invariants(&map), Form::Trie(MAX_DEPTH));
    assert_eq!(MAX_DEPTH, 13);
    // Absent keys that follow the whole path, or leave it early.
    assert_eq!(map.get(low), Some(&0));
    assert_eq!(map.get(low ^ (1 << 59)), None);
    assert_eq!(map.get(low ^ 1), None);
    assert!(map.remove(low ^ (1 << 59)).is_none());
    // Removing all but one key collapses the chain back to the small form.
    for &key in &keys_[1..] {
        map = map.remove(key).expect("present");
        model.remove(&key);
        check_against(&map, &model);
    }
    assert_eq!(check_invariants(&map), Form::Small);
    // Two keys differing only in the top bit also take the full depth (in a trie: with
    // three more keys, past the small form).
    let pair = build([(low, 1), (low | (1 << 63), 2), (1, 3), (2, 4), (3, 5)]);
    assert_eq!(check_invariants(&pair), Form::Trie(MAX_DEPTH));
    assert_eq!(pair.get(low | (1 << 63)), Some(&2));
    // As a pair alone they are small.
    let pair = build([(low, 1), (low | (1 << 63), 2)]);
    assert_eq!(check_invariants(&pair), Form::Small);
    assert_eq!(pair.get(low | (1 << 63)), Some(&2));
}

#[test]
fn small_form_up_to_small_max_entries_then_trie_and_back() {
    let max = SMALL_MAX as u64;
    let full = build((1..=max).map(|k| (k, k as u32)));
    assert_eq!(check_invariants(&full), Form::Small);
    let over = full.insert(max + 1, 17);
    assert_eq!(check_invariants(&over), Form::Trie(1));
    assert_eq!(over.len(), SMALL_MAX + 1);
    // Overwriting at the most entries stays small.
    assert_eq!(check_invariants(&full.insert(max, 0)), Form::Small);
    // The old version is untouched.
    assert_eq!(check_invariants(&full), Form::Small);
    assert_eq!(full.get(max + 1), None);
    for key in 1..=max + 1 {
        let back = over.remove(key).expect("present");
        assert_eq!(check_invariants(&back), Form::Small, "after removing {key}");
        assert_eq!(back.len(), SMALL_MAX);
        assert_eq!(back.get(key), None);
        let expected: Vec<u64> = (1..=max + 1).filter(|&k| k != key).collect();
        let mut got = keys(&back);
        got.sort_unstable();
        assert_eq!(got, expected);
    }
    // Shrinking back is canonical: equal to building the same keys directly.
    let back = over.remove(max + 1).expect("present");
    assert_eq!(keys(&back), keys(&full));
    assert!(back.eq_by(&full, |a, b| a == b));
}

#[test]
fn any_keys_fit_the_small_form_and_a_fifth_promotes() {
    // Keys that share their low bits (1, 65, 129), the extremes, and key 0: all small,
    // in ascending order, whatever the insertion order.
    let keys_in = [u64::MAX, 65, 0, 1];
    let small = build(keys_in.iter().map(|&k| (k, k as u32)));
    assert_eq!(check_invariants(&small), Form::Small);
    assert_eq!(keys(&small), [0, 1, 65, u64::MAX]);
    for &key in &keys_in {
        assert_eq!(small.get(key), Some(&(key as u32)));
    }
    // Absent keys, including ones equal to a padded slot's neighbours.
    for absent in [2, 64, 66, 129, u64::MAX - 1] {
        assert_eq!(small.get(absent), None);
        assert!(small.remove(absent).is_none());
    }
    // A fifth key promotes to the trie; removing any one shrinks back, canonically.
    let over = small.insert(129, 129);
    assert!(matches!(check_invariants(&over), Form::Trie(_)));
    for &key in keys_in.iter().chain(&[129]) {
        let back = over.remove(key).expect("present");
        assert_eq!(check_invariants(&back), Form::Small, "after removing {key}");
        assert_eq!(back.get(key), None);
        let expected: Vec<u64> = {
            let mut all: Vec<u64> = keys_in.iter().chain(&[129]).copied().collect();
            all.retain(|&k| k != key);
            all.sort_unstable();
            all
        };
        assert_eq!(keys(&back), expected);
    }
    // Removing down to one and to none, each version untouched by the next.
    let mut map = small.clone();
    for &key in &keys_in {
        let next = map.remove(key).expect("present");
        assert_eq!(
            map.get(key),
            Some(&(key as u32)),
            "the old version keeps {key}"
        );
        map = next;
        if !map.is_empty() {
            assert_eq!(check_invariants(&map), Form::Small);
        }
    }
    assert!(map.is_empty());
    assert!(map.root_ptr().is_null());
}

#[test]
fn small_form_in_place_keeps_order_and_padding() {
    let mut map = Map::new().insert(40, 0_u32);
    for (key, value) in [(10, 1), (70, 2), (20, 3)] {
        assert_eq!(map.insert_in_place(key, value), Ok(None));
        assert_eq!(check_invariants(&map), Form::Small);
    }
    assert_eq!(keys(&map), [10, 20, 40, 70]);
    // Full: a new key is refused (the caller path-copies into a trie), a present one is
    // replaced.
    assert_eq!(map.insert_in_place(5, 9), Err(9));
    assert_eq!(map.insert_in_place(40, 4), Ok(Some(0)));
    assert_eq!(map.get(40), Some(&4));
    for (key, value) in [(20, 3), (10, 1), (70, 2)] {
        assert_eq!(map.remove_in_place(key), Ok(Some(value)));
        assert_eq!(check_invariants(&map), Form::Small);
        assert_eq!(map.get(key), None);
    }
    assert_eq!(keys(&map), [40]);
    assert_eq!(map.remove_in_place(40), Ok(Some(4)));
    assert!(map.is_empty());
    // A shared root is never written.
    let shared = Map::new().insert(1, 1_u32);
    let mut other = shared.clone();
    assert_eq!(other.insert_in_place(2, 2), Err(2));
    assert_eq!(other.remove_in_place(1), Err(()));
    assert_eq!(keys(&shared), [1]);
}

#[test]
fn iteration_order_is_independent_of_insertion_order() {
    let sets: [Vec<u64>; 4] = [
        (1..=10).collect(),
        (1..=if cfg!(miri) { 70 } else { 300 }).collect(),
        (0..40).map(|x| (x << 35) | 9).collect(),
        vec![u64::MAX, 0, 1 << 63, 64, 1, 12345, 65, 1 << 40],
    ];
    let mut rng = Rng(42);
    for set in sets {
        let reference = keys(&build(set.iter().map(|&k| (k, ()))));
        let mut sorted = reference.clone();
        sorted.sort_unstable();
        let mut expected = set.clone();
        expected.sort_unstable();
        assert_eq!(sorted, expected);
        for _ in 0..if cfg!(miri) { 1 } else { 5 } {
            let mut shuffled = set.clone();
            rng.shuffle(&mut shuffled);
            let map = build(shuffled.iter().map(|&k| (k, ())));
            assert_eq!(keys(&map), reference);
            // Also after inserting extra keys and removing them again.
            let detour = map.insert(7 << 50, ()).insert(3, ()).remove(7 << 50);
            if let Some(detour) = detour {
                let detour = if set.contains(&3) {
                    detour
                } else {
                    detour.remove(3).expect("present")
                };
                assert_eq!(keys(&detour), reference);
            }
        }
    }
    // Small-form order is by key, trie order by the low 5 bits first.
    assert_eq!(keys(&build([(63, ()), (2, ()), (1, ())])), [1, 2, 63]);
    assert_eq!(keys(&build([(64, ()), (2, ()), (1, ())])), [1, 2, 64]);
}

#[test]
fn remove_of_absent_key_returns_none() {
    let empty: Map<u32> = Map::new();
    assert!(empty.remove(0).is_none());
    let small = build([(1, 1), (2, 2)]);
    assert!(small.remove(3).is_none(), "absent");
    assert!(small.remove(65).is_none(), "same low bits, other key");
    assert!(small.remove(0).is_none());
    let trie = build((1..=100).map(|k| (k, k as u32)));
    assert!(trie.remove(0).is_none());
    assert!(trie.remove(101).is_none());
    assert!(trie.remove(1 << 40).is_none());
    assert!(trie.remove(u64::MAX).is_none());
    let shrinkable = build((1..=SMALL_MAX as u64 + 1).map(|k| (k, 0)));
    assert!(
        shrinkable.remove(SMALL_MAX as u64 + 2).is_none(),
        "absent while one over SMALL_MAX"
    );
    assert!(shrinkable.remove(65).is_none());
}

#[test]
fn insert_overwrites_and_keeps_old_version() {
    for n in [1u64, SMALL_MAX as u64, SMALL_MAX as u64 + 1, 16, 17, 100] {
        let map = build((1..=n).map(|k| (k, 0u32)));
        let updated = map.insert(1, 7);
        assert_eq!(updated.len(), map.len());
        assert_eq!(updated.get(1), Some(&7));
        assert_eq!(map.get(1), Some(&0));
        assert!(!updated.ptr_eq(&map));
        assert_eq!(check_invariants(&updated), check_invariants(&map));
        assert_eq!(keys(&updated), keys(&map));
    }
}

#[test]
fn eq_by_cases() {
    let mut calls = 0;
    let a = build((1..=20).map(|k| (k, k)));
    // Same root: no value comparison at all.
    assert!(a.eq_by(&a.clone(), |_, _| {
        calls += 1;
        false
    }));
    assert_eq!(calls, 0);
    // Both empty.
    assert!(Map::<u64>::new().eq_by(&Map::new(), |_, _| false));
    // Different lengths: no value comparison.
    assert!(!a.eq_by(&a.remove(3).expect("present"), |_, _| {
        calls += 1;
        true
    }));
    assert_eq!(calls, 0);
    // Built in another order: equal by value, compares every entry.
    let b = build((1..=20).rev().map(|k| (k, k)));
    assert!(!a.ptr_eq(&b));
    assert!(a.eq_by(&b, |x, y| {
        calls += 1;
        x == y
    }));
    assert_eq!(calls, 20);
    // A value changed, or a key replaced by another.
    assert!(!a.eq_by(&b.insert(5, 0), |x, y| x == y));
    let swapped = b.remove(20).expect("present").insert(21, 20);
    assert!(!a.eq_by(&swapped, |x, y| x == y));
    assert!(!swapped.eq_by(&a, |x, y| x == y));
    // The comparison decides: a value relation that ignores values.
    assert!(a.eq_by(&b.insert(5, 0), |_, _| true));
    // Small form vs empty.
    assert!(!build([(1, 1)]).eq_by(&Map::new(), |_, _| true));
}

#[test]
fn clone_is_shallow_and_root_ptr_tracks_versions() {
    let a = build((1..=5).map(|k| (k, k)));
    let b = a.clone();
    assert!(a.ptr_eq(&b));
    assert_eq!(a.root_ptr(), b.root_ptr());
    assert!(!a.root_ptr().is_null());
    let c = a.insert(6, 6);
    assert_ne!(c.root_ptr(), a.root_ptr());
    assert!(!c.ptr_eq(&a));
    assert!(!a.ptr_eq(&Map::new()));
    assert!(!Map::new().ptr_eq(&a));
    let root = a.root.as_ref().expect("non-empty");
    assert_eq!(Arc::strong_count(root), 2);
}

#[test]
fn unchanged_subtries_are_shared_not_copied() {
    // 64 keys already give a root whose 32 slots are all children (k and k + 32).
    let a = build((0..if cfg!(miri) { 64 } else { 1024 }).map(|k| (k, k)));
    let b = a.insert(5, 0);
    let (Repr::Trie(ra), Repr::Trie(rb)) = (
        &a.root.as_ref().unwrap().repr,
        &b.root.as_ref().unwrap().repr,
    ) else {
        panic!("expected tries");
    };
    let mut shared = 0;
    for (sa, sb) in ra.slots.iter().zip(rb.slots.iter()) {
        if let (Slot::Child(ca), Slot::Child(cb)) = (sa, sb)
            && Arc::ptr_eq(ca, cb)
        {
            shared += 1;
        }
    }
    assert_eq!(
        shared, 31,
        "all root children but the one on the path are shared"
    );
}

#[test]
fn values_are_dropped_with_the_last_version() {
    use std::rc::Rc;
    let value = Rc::new(());
    {
        let mut versions = Vec::new();
        let mut map = Map::new();
        for key in [
            1u64,
            65,
            2,
            129,
            1 << 40,
            3,
            4,
            5,
            6,
            7,
            8,
            9,
            10,
            11,
            12,
            13,
            14,
            15,
        ] {
            map = map.insert(key, Rc::clone(&value));
            versions.push(map.clone());
        }
        for key in [65u64, 1, 1 << 40, 3] {
            map = map.remove(key).expect("present");
            versions.push(map.clone());
        }
        assert!(Rc::strong_count(&value) > 1);
    }
    assert_eq!(
        Rc::strong_count(&value),
        1,
        "leaked or double-counted values"
    );
}

#[test]
fn debug_formats_as_a_map() {
    assert_eq!(format!("{:?}", Map::<u32>::new()), "{}");
    assert_eq!(
        format!("{:?}", build([(2, "b"), (1, "a")])),
        r#"{1: "a", 2: "b"}"#
    );
}

#[test]
fn node_get_matches_map_get() {
    let map = build((1..=40).map(|k| (k, k)));
    let root = map.root.as_ref().expect("non-empty");
    assert!(std::ptr::eq(Arc::as_ptr(root), map.root_ptr()));
    for key in 0..=41 {
        assert_eq!(root.get(key), map.get(key));
    }
}

#[test]
fn map_is_send_and_sync_for_send_sync_values() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Map<u64>>();
    assert_send_sync::<Map<std::sync::Arc<str>>>();
    assert_send_sync::<Iter<'static, u64>>();
}

#[test]
fn iterator_is_exact_size_and_fused() {
    let map = build((1..=50).map(|k| (k, k)));
    let mut iter = map.iter();
    for left in (0..50).rev() {
        assert!(iter.next().is_some());
        assert_eq!(iter.len(), left);
    }
    assert_eq!(iter.next(), None);
    assert_eq!(iter.next(), None);
    let mut total = 0;
    for (key, value) in &map {
        assert_eq!(key, *value);
        total += 1;
    }
    assert_eq!(total, 50);
}

#[test]
fn in_place_changes_happen_only_on_unshared_nodes() {
    // Never keeping a version, a run of small-form changes is all in place after the
    // first insert (which allocates the root).
    let max = SMALL_MAX as u64;
    let ops: Vec<Op> = (1..=max)
        .map(|k| Op::Insert(k, 1))
        .chain((0..SMALL_MAX).map(|i| Op::Overwrite(i, 2)))
        .chain((0..SMALL_MAX / 2).map(Op::RemovePresent))
        .collect();
    assert_eq!(run_ops_in_place(&ops, 0), ops.len() - 1);
    // Keeping every version, none is.
    assert_eq!(run_ops_in_place(&ops, 1), 0);

    // A shared root refuses; the clone is unaffected by the path-copied change.
    let mut map = build((1..=4).map(|k| (k, 10)));
    let kept = map.clone();
    assert_eq!(map.insert_in_place(2, 20), Err(20));
    assert_eq!(map.remove_in_place(2), Err(()));
    assert_eq!(
        map.remove_in_place(99),
        Ok(None),
        "an absent key needs no change"
    );
    drop(kept);
    let root = map.root_ptr();
    assert_eq!(map.insert_in_place(2, 20), Ok(Some(10)));
    assert_eq!(map.remove_in_place(1), Ok(Some(10)));
    assert_eq!(map.insert_in_place(5, 50), Ok(None));
    assert_eq!(map.root_ptr(), root, "in place: the same root node");
    assert_eq!(map.len(), 4);
    check_invariants(&map);

    // Trie form: replacing a present key goes in place through unshared branches, a new
    // key does not.
    let mut trie = build((1..=40).map(|k| (k, 0)));
    assert_eq!(trie.insert_in_place(33, 1), Ok(Some(0)));
    assert_eq!(trie.insert_in_place(41, 1), Err(1));
    assert_eq!(trie.remove_in_place(33), Err(()));
    assert_eq!(trie.get(33), Some(&1));

    // Removing the last entry in place leaves the empty map, with no root.
    let mut one = build([(7, 1)]);
    assert_eq!(one.remove_in_place(7), Ok(Some(1)));
    assert!(one.is_empty());
    assert!(one.root_ptr().is_null());
}

/// A trie lookup does not test the bitmap (`Branch::get`): an absent key follows whatever
/// slot its bits name at each level (a child branch that holds other keys, an entry with
/// another key). It must still miss, at every depth, and never read past a branch.
#[test]
fn absent_keys_miss_through_the_slots_their_bits_name() {
    // Deep paths: keys sharing their low 35 bits, plus sequential ids.
    let present: Vec<u64> = (0..40u64)
        .map(|x| (x << 35) | 0x1_2345)
        .chain(1..=300)
        .collect();
    let mut map = Map::new();
    for (n, &key) in present.iter().enumerate() {
        map = map.insert(key, n);
    }
    assert!(matches!(check_invariants(&map), Form::Trie(depth) if depth >= 3));
    let present: BTreeSet<u64> = present.into_iter().collect();
    let probes = (0..40u64)
        .flat_map(|x| {
            [
                (x << 35) | 0x1_2344,
                (x << 35) | 0x1_2346,
                (x << 36) | 0x1_2345,
            ]
        })
        .chain((0..64).map(|bit| 1u64 << bit))
        .chain(301..2_000)
        .chain([0, u64::MAX, u64::MAX - 1]);
    for key in probes {
        let expected = present.contains(&key);
        assert_eq!(map.get(key).is_some(), expected, "key {key:#x}");
    }
}
