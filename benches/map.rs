//! Benchmarks of the persistent map's hot paths against `std::collections::HashMap`.
//!
//! Run with `cargo bench --bench map -- --warm-up-time 1 --measurement-time 2`.

//! The map is `pub(crate)`, so this bench compiles `src/map/` into itself, with a
//! `sync` stub standing for `crate::sync`.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use std::collections::HashMap;
use std::hint::black_box;

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
#[path = "../src/map/mod.rs"]
mod map;

use map::Map;

/// Map sizes measured; keys are `1..=size`, like sequential context-variable ids.
const SIZES: [u64; 6] = [1, 4, 8, 16, 64, 1024];

/// A map with keys `1..=size` (value = key).
fn map_of(size: u64) -> Map<u64> {
    (1..=size).fold(Map::new(), |map, key| map.insert(key, key))
}

/// The measured lookup, kept out of line so each call is a real call with opaque inputs.
#[inline(never)]
fn map_get(map: &Map<u64>, key: u64) -> Option<u64> {
    map.get(key).copied()
}

/// The reference lookup.
#[inline(never)]
fn hashmap_get(map: &HashMap<u64, u64>, key: u64) -> Option<u64> {
    map.get(&key).copied()
}

/// The measured insert (a new version; the old one is kept).
#[inline(never)]
fn map_insert(map: &Map<u64>, key: u64, value: u64) -> Map<u64> {
    map.insert(key, value)
}

/// `get` of the last-inserted key.
fn bench_get(c: &mut Criterion) {
    let mut group = c.benchmark_group("get");
    for size in SIZES {
        let map = map_of(size);
        group.bench_with_input(BenchmarkId::new("map", size), &size, |b, &size| {
            b.iter(|| map_get(black_box(&map), black_box(size)))
        });
        let hash: HashMap<u64, u64> = (1..=size).map(|k| (k, k)).collect();
        group.bench_with_input(BenchmarkId::new("std_hashmap", size), &size, |b, &size| {
            b.iter(|| hashmap_get(black_box(&hash), black_box(size)))
        });
    }
    group.finish();
}

/// `insert` of a new key (`size + 1`) into a map of `size` entries, dropping the result.
fn bench_insert(c: &mut Criterion) {
    let mut group = c.benchmark_group("insert");
    for size in SIZES {
        let map = map_of(size);
        group.bench_with_input(BenchmarkId::new("new_key", size), &size, |b, &size| {
            b.iter(|| map_insert(black_box(&map), black_box(size + 1), black_box(7)))
        });
        group.bench_with_input(BenchmarkId::new("overwrite", size), &size, |b, &size| {
            b.iter(|| map_insert(black_box(&map), black_box(size), black_box(7)))
        });
    }
    group.finish();
}

criterion_group!(benches, bench_get, bench_insert);
criterion_main!(benches);
