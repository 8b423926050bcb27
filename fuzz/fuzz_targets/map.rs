//! Differential fuzz target for the persistent map (`src/map/mod.rs`) against
//! `std::collections::HashMap`: inserts, overwrites and removals on any of the versions
//! kept so far (each op makes a new version; the old ones must not change), in-place
//! inserts and removals (refused whenever another version shares the root), lookups,
//! iteration, equality, clones and drops of versions. Values count their live copies, so
//! a leak or a double drop is caught when the input ends.
//!
//! The map is crate-private, so, as `benches/map.rs` does, this compiles its source in
//! with a `sync` stub standing for `crate::sync`. Run from the repository root:
//!
//! ```text
//! cargo fuzz run map                          # nightly, with ASAN
//! cargo fuzz run -s none map fuzz/corpus/map  # stable, no sanitizer
//! ```
//!
//! Inputs are decoded by hand: a tag byte picks the op, then one byte per field; keys take
//! a shape byte (small sequential ids, ids sharing their low 6 bits (a trie's deeper
//! levels; the small form takes any 4 ids), ids differing only in
//! their top bits, or any 8 bytes), so every form of the map and every trie depth is
//! reachable.

#![no_main]

use std::cell::Cell;
use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;

/// Stand-in for the crate's synchronisation shim (the map only uses `Arc` and
/// `unique_mut`, here the plain `Arc::get_mut`).
mod sync {
    pub(crate) use std::sync::Arc;

    pub(crate) fn unique_mut<T>(arc: &mut Arc<T>) -> Option<&mut T> {
        Arc::get_mut(arc)
    }
}

/// The map under test, compiled from the crate's source.
#[allow(dead_code)]
#[path = "../../src/map/mod.rs"]
mod map;

use map::Map;

thread_local! {
    /// Live `Counted` values (the fuzzer runs inputs on one thread).
    static LIVE: Cell<isize> = const { Cell::new(0) };
}

/// A value that counts its live copies.
#[derive(Debug, PartialEq)]
struct Counted(u32);

impl Counted {
    fn new(value: u32) -> Self {
        LIVE.with(|live| live.set(live.get() + 1));
        Counted(value)
    }
}

impl Clone for Counted {
    fn clone(&self) -> Self {
        Counted::new(self.0)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        LIVE.with(|live| {
            live.set(live.get() - 1);
            assert!(live.get() >= 0, "a value was dropped twice");
        });
    }
}

type Model = HashMap<u64, u32>;

/// Most versions kept at once.
const MAX_VERSIONS: usize = 32;
/// Longer inputs add little but time.
const MAX_INPUT: usize = 4096;

struct Bytes<'a>(std::slice::Iter<'a, u8>);

impl Bytes<'_> {
    fn byte(&mut self) -> u8 {
        self.0.next().copied().unwrap_or(0)
    }

    fn key(&mut self) -> u64 {
        let shape = self.byte();
        let b = u64::from(self.byte());
        match shape % 4 {
            // Sequential ids, as context variables get: fill the small form and the root.
            0 => b % 48,
            // Keys sharing `key & 63`: a small form of ids far apart, and trie levels below
            // the root.
            1 => (b << 6) | u64::from(shape >> 2),
            // Keys differing only in their top bits: the deepest trie paths.
            2 => (b << 56) | u64::from(shape >> 2),
            // Anything.
            _ => {
                let mut key = b;
                for _ in 0..7 {
                    key = (key << 8) | u64::from(self.byte());
                }
                key
            }
        }
    }
}

/// A version's full contents against its model.
fn check(map: &Map<Counted>, model: &Model) {
    assert_eq!(map.len(), model.len(), "len");
    assert_eq!(map.is_empty(), model.is_empty(), "is_empty");
    let iter = map.iter();
    assert_eq!(iter.len(), model.len(), "iter().len()");
    let mut seen: Vec<(u64, u32)> = iter.map(|(k, v)| (k, v.0)).collect();
    assert_eq!(seen.len(), model.len(), "iterated entries");
    let order: Vec<u64> = seen.iter().map(|(k, _)| *k).collect();
    seen.sort_unstable();
    let mut expected: Vec<(u64, u32)> = model.iter().map(|(k, v)| (*k, *v)).collect();
    expected.sort_unstable();
    assert_eq!(seen, expected, "entries");
    for (key, value) in model {
        assert_eq!(map.get(*key).map(|v| v.0), Some(*value), "get({key})");
        assert!(map.contains_key(*key));
    }
    // The shape is canonical: the same key set, built in another order, iterates alike.
    let rebuilt = expected
        .iter()
        .rev()
        .fold(Map::new(), |m, (k, v)| m.insert(*k, Counted::new(*v)));
    let rebuilt_order: Vec<u64> = rebuilt.iter().map(|(k, _)| k).collect();
    assert_eq!(
        order, rebuilt_order,
        "iteration order depends on the key set only"
    );
    assert!(map.eq_by(&rebuilt, |a, b| a == b), "equal to its rebuild");
}

fuzz_target!(|data: &[u8]| {
    let data = &data[..data.len().min(MAX_INPUT)];
    let mut bytes = Bytes(data.iter());
    let mut versions: Vec<(Map<Counted>, Model)> = vec![(Map::new(), Model::new())];
    while let Some(&tag) = bytes.0.next() {
        let pick = usize::from(bytes.byte()) % versions.len();
        if tag % 10 >= 8 {
            // In place, on the version itself. Allowed only if no other version shares its
            // root; a refusal must change nothing.
            let key = bytes.key();
            let value = u32::from(bytes.byte());
            let root = versions[pick].0.root_ptr();
            let shared = !root.is_null()
                && versions
                    .iter()
                    .enumerate()
                    .any(|(i, (other, _))| i != pick && other.root_ptr() == root);
            let (map, model) = &mut versions[pick];
            if tag % 10 == 8 {
                match map.insert_in_place(key, Counted::new(value)) {
                    Ok(old) => {
                        assert!(!shared, "changed a shared root in place");
                        assert_eq!(old.map(|v| v.0), model.insert(key, value), "old value");
                        assert_eq!(map.root_ptr(), root, "in place keeps the root");
                    }
                    Err(refused) => assert_eq!(refused.0, value, "the value comes back"),
                }
            } else {
                match map.remove_in_place(key) {
                    Ok(old) => {
                        let expected = model.remove(&key);
                        assert_eq!(old.map(|v| v.0), expected, "removed value");
                        assert!(
                            expected.is_none() || !shared,
                            "changed a shared root in place"
                        );
                    }
                    Err(()) => assert!(model.contains_key(&key), "refused an absent key"),
                }
            }
            assert_eq!(map.len(), model.len(), "len after an in-place change");
            continue;
        }
        let new = {
            let (map, model) = &versions[pick];
            match tag % 8 {
                // Insert or overwrite, as a new version.
                0 | 1 => {
                    let key = bytes.key();
                    let value = u32::from(bytes.byte());
                    let new = map.insert(key, Counted::new(value));
                    let mut new_model = model.clone();
                    new_model.insert(key, value);
                    assert_eq!(new.get(key).map(|v| v.0), Some(value), "get after insert");
                    assert_eq!(new.len(), new_model.len(), "len after insert");
                    Some((new, new_model))
                }
                // Remove, as a new version (`None` for an absent key).
                2 => {
                    // Mostly a present key, so removals actually happen.
                    let key = match bytes.byte() {
                        b if b < 192 && !model.is_empty() => {
                            let mut keys: Vec<u64> = model.keys().copied().collect();
                            keys.sort_unstable();
                            keys[usize::from(b) % keys.len()]
                        }
                        _ => bytes.key(),
                    };
                    let new = map.remove(key);
                    assert_eq!(new.is_some(), model.contains_key(&key), "remove({key})");
                    new.map(|new| {
                        let mut new_model = model.clone();
                        new_model.remove(&key);
                        assert_eq!(new.get(key).map(|v| v.0), None, "get after remove");
                        assert_eq!(new.len(), new_model.len(), "len after remove");
                        (new, new_model)
                    })
                }
                // Lookup.
                3 => {
                    let key = bytes.key();
                    assert_eq!(map.get(key).map(|v| v.0), model.get(&key).copied());
                    assert_eq!(map.contains_key(key), model.contains_key(&key));
                    None
                }
                // Full check of one version.
                4 => {
                    check(map, model);
                    None
                }
                // Equality with another version.
                5 => {
                    let other = usize::from(bytes.byte()) % versions.len();
                    let (other_map, other_model) = &versions[other];
                    let eq = map.eq_by(other_map, |a, b| a == b);
                    assert_eq!(eq, model == other_model, "eq_by");
                    if map.ptr_eq(other_map) {
                        assert!(eq, "ptr_eq implies equal");
                    }
                    None
                }
                // A clone: the same root.
                6 => {
                    let clone = map.clone();
                    assert!(clone.ptr_eq(map), "a clone shares the root");
                    Some((clone, model.clone()))
                }
                // Drop a version (the others must not notice).
                _ => {
                    if versions.len() > 1 {
                        versions.swap_remove(pick);
                    }
                    None
                }
            }
        };
        if let Some(version) = new {
            if versions.len() >= MAX_VERSIONS {
                versions.remove(0);
            }
            versions.push(version);
        }
    }
    // Every version kept is still what it was when it was made.
    for (map, model) in &versions {
        check(map, model);
    }
    drop(versions);
    assert_eq!(
        LIVE.with(Cell::get),
        0,
        "every value is dropped exactly once"
    );
});
