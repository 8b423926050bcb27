//! Context follows the work into rayon: `join`, `scope`, a parallel iterator and a
//! thread pool, with work stealing in between.
//!
//! ```text
//! cargo run --example rayon --features rayon
//! ```

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use contextvars::context_var;
use contextvars::rayon::{ParallelIteratorExt, ThreadPoolExt};
use rayon::prelude::*;

context_var! {
    /// The batch being processed.
    static BATCH: &'static str = "none";
    /// The recursion depth of the current job.
    static DEPTH: u32 = 0;
}

/// A recursive parallel sum: each level binds its own depth, and reads it back after the
/// nested `join`, during which this worker may have run other, stolen jobs.
fn sum(values: &[u64], mismatches: &AtomicUsize) -> u64 {
    let depth = DEPTH.get();
    if values.len() <= 1_024 {
        if BATCH.get() != "nightly" {
            mismatches.fetch_add(1, Ordering::Relaxed);
        }
        return values.iter().sum();
    }
    let (left, right) = values.split_at(values.len() / 2);
    let (a, b) = contextvars::rayon::join(
        || DEPTH.scope(depth + 1, || sum(left, mismatches)),
        || DEPTH.scope(depth + 1, || sum(right, mismatches)),
    );
    if DEPTH.get() != depth {
        mismatches.fetch_add(1, Ordering::Relaxed);
    }
    a + b
}

fn main() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(4)
        .build()
        .expect("thread pool");
    let values: Vec<u64> = (1..=1_000_000).collect();
    let mismatches = AtomicUsize::new(0);

    let _batch = BATCH.set("nightly");

    // join: both halves, on any worker, see the caller's batch.
    let total = pool.install_in_copied_context(|| sum(&values, &mismatches));
    assert_eq!(total, 500_000_500_000);
    println!("join: sum = {total}");

    // A parallel iterator: captured once, right after the source; each item starts clean.
    let labels: Vec<String> = (0..8)
        .into_par_iter()
        .in_copied_context()
        .map(|i| {
            assert_eq!(DEPTH.get(), 0, "an earlier item's set leaked into item {i}");
            drop(DEPTH.set(i + 1)); // left behind on purpose: the next item does not see it
            format!("{}#{i}", BATCH.get())
        })
        .collect();
    println!("par_iter: {labels:?}");
    assert!(labels.iter().all(|label| label.starts_with("nightly#")));

    // scope: each spawn captures the context at the spawn.
    let seen = Mutex::new(Vec::new());
    contextvars::rayon::scope(|s| {
        for batch in ["a", "b", "c"] {
            BATCH.scope(batch, || {
                s.spawn(|_| seen.lock().unwrap().push(BATCH.get()))
            });
        }
    });
    let mut seen = seen.into_inner().unwrap();
    seen.sort_unstable();
    println!("scope: spawns saw {seen:?}");
    assert_eq!(seen, ["a", "b", "c"]);

    // Nothing leaked onto the workers: plain rayon jobs see the workers' own context.
    let leaked = pool.broadcast(|_| BATCH.get() != "none" || DEPTH.get() != 0);
    assert!(
        leaked.iter().all(|leaked| !leaked),
        "a worker kept a job's context"
    );
    assert_eq!(mismatches.load(Ordering::Relaxed), 0);
    assert_eq!(DEPTH.get(), 0);
    println!("ok: no job saw a value it did not inherit; workers are clean");
}
