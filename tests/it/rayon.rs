//! rayon propagation: every job runs in a copy of its creator's context, and a worker's
//! own state is saved and restored around every job (work stealing is re-entrant).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use contextvars::rayon::{ParallelIteratorExt, ThreadPoolExt};
use contextvars::{Context, ContextVar};
use rayon::prelude::*;

use crate::{expect_panic, isolated, iterations};

static JOB: ContextVar<u64> = contextvars::context_var!(u64, "job");
static ROOT: ContextVar<&str> = contextvars::context_var!(&'static str, "root");

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
}

/// True on every worker of `pool` if no job left state behind: a plain rayon job (no
/// context wrapper) sees the worker's own, empty context.
fn workers_clean(pool: &rayon::ThreadPool) -> bool {
    pool.broadcast(|_| !JOB.is_set() && !ROOT.is_set())
        .into_iter()
        .all(|clean| clean)
}

#[test]
fn join_inherits_and_isolates() {
    isolated(|| {
        let _root = ROOT.set("caller");
        let _job = JOB.set(1);
        let (a, b) = contextvars::rayon::join(
            || {
                let seen = (ROOT.get(), JOB.get());
                drop(JOB.set(2));
                (seen, JOB.get())
            },
            || {
                let seen = (ROOT.get(), JOB.get());
                drop(JOB.set(3));
                (seen, JOB.get())
            },
        );
        assert_eq!(a, (("caller", 1), 2));
        assert_eq!(b, (("caller", 1), 3));
        assert_eq!(JOB.get(), 1, "a set in a job leaked to the caller");
    });
}

#[test]
fn join_context_inherits() {
    isolated(|| {
        let _job = JOB.set(5);
        let (a, b) = contextvars::rayon::join_context(|_| JOB.get(), |_| JOB.get());
        assert_eq!((a, b), (5, 5));
    });
}

/// The stress test: nested joins inside a `par_iter` on a small pool. Every job
/// sets its own value and checks it after each nested call; a child checks it sees
/// exactly its parent's value. 100,000+ jobs in all.
#[test]
fn stress_nested_joins_in_par_iter() {
    const DEPTH: u32 = 4;
    let items = iterations(8_000) as u64;
    let pool = pool(3);
    let next_id = Arc::new(std::sync::atomic::AtomicU64::new(1_000_000));
    let jobs = AtomicUsize::new(0);
    let failures = Mutex::new(Vec::new());

    fn nested(
        depth: u32,
        expect_parent: u64,
        ids: &std::sync::atomic::AtomicU64,
        jobs: &AtomicUsize,
        failures: &Mutex<Vec<String>>,
    ) {
        jobs.fetch_add(1, Ordering::Relaxed);
        let inherited = JOB.try_get().ok();
        if inherited != Some(expect_parent) {
            failures
                .lock()
                .unwrap()
                .push(format!("job saw {inherited:?}, parent was {expect_parent}"));
        }
        let mine = ids.fetch_add(1, Ordering::Relaxed);
        let _guard = JOB.scoped_set(mine);
        if depth == 0 {
            return;
        }
        contextvars::rayon::join(
            || nested(depth - 1, mine, ids, jobs, failures),
            || nested(depth - 1, mine, ids, jobs, failures),
        );
        if JOB.get() != mine {
            failures
                .lock()
                .unwrap()
                .push(format!("job {mine} saw {} after its join", JOB.get()));
        }
        contextvars::rayon::join(|| nested(depth - 1, mine, ids, jobs, failures), || ());
        if JOB.get() != mine {
            failures.lock().unwrap().push(format!(
                "job {mine} saw {} after its second join",
                JOB.get()
            ));
        }
    }

    pool.install(|| {
        isolated(|| {
            let _root = ROOT.set("stress");
            let _job = JOB.set(7);
            (0..items)
                .into_par_iter()
                .in_copied_context()
                .for_each(|item| {
                    if ROOT.get() != "stress" || JOB.get() != 7 {
                        failures
                            .lock()
                            .unwrap()
                            .push(format!("item {item} started with job {:?}", JOB.try_get()));
                    }
                    let _token = JOB.set(item);
                    nested(DEPTH, item, &next_id, &jobs, &failures);
                    if JOB.get() != item {
                        failures
                            .lock()
                            .unwrap()
                            .push(format!("item {item} ended with job {}", JOB.get()));
                    }
                });
            assert_eq!(JOB.get(), 7);
        });
    });

    let failures = failures.into_inner().unwrap();
    assert!(
        failures.is_empty(),
        "{} failures, first: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    // Each item runs a depth-4 tree: 3 children per node (two in the first join, one in
    // the second) gives (3^5 - 1) / 2 = 121 nested jobs per item.
    let ran = jobs.load(Ordering::Relaxed);
    assert_eq!(ran, items as usize * 121);
    if !cfg!(miri) {
        assert!(ran >= 100_000, "only {ran} jobs");
    }
    assert!(workers_clean(&pool), "a job left its context on a worker");
}

#[test]
fn panic_in_job_restores_worker_state() {
    let pool = pool(2);
    pool.install(|| {
        isolated(|| {
            let _job = JOB.set(1);
            let message = expect_panic(|| {
                contextvars::rayon::join(
                    || {
                        drop(JOB.set(2));
                        panic!("left job failed");
                    },
                    || {
                        drop(JOB.set(3));
                        panic!("right job failed");
                    },
                )
            });
            assert!(message.contains("job failed"), "{message}");
            assert_eq!(JOB.get(), 1, "a panicking job left its set behind");
        });
    });
    // Panics inside a parallel iterator, on every path.
    let _ = expect_panic(|| {
        pool.install_in_copied_context(|| {
            (0..1000u64)
                .into_par_iter()
                .in_copied_context()
                .filter(|n| n % 2 == 0)
                .for_each(|n| {
                    drop(JOB.set(n));
                    assert!(n < 900, "item {n} failed");
                })
        })
    });
    assert!(
        workers_clean(&pool),
        "a panicking job left its context on a worker"
    );
}

#[test]
fn par_iter_paths_all_run_in_context() {
    let pool = pool(2);
    pool.install(|| {
        isolated(|| {
            let _root = ROOT.set("ctx");
            // Indexed (producer) path.
            let indexed: Vec<&str> = (0..100)
                .into_par_iter()
                .in_copied_context()
                .map(|_| ROOT.get())
                .collect();
            assert!(indexed.iter().all(|root| *root == "ctx"));
            // Unindexed (consumer) path.
            let unindexed = (0..100)
                .into_par_iter()
                .in_copied_context()
                .filter(|_| ROOT.get() == "ctx")
                .count();
            assert_eq!(unindexed, 100);
            // Iterator path (zip drives the producer as an iterator): the step runs in
            // the context.
            let zipped = (0..100)
                .into_par_iter()
                .map(|_| ROOT.get())
                .in_copied_context()
                .zip((0..100).into_par_iter())
                .filter(|(root, _)| *root == "ctx")
                .count();
            assert_eq!(zipped, 100);
            // Adapter last: zip, enumerate and the consumer's closures all run inside.
            let last: Vec<(usize, (&str, &str))> = (0..100)
                .into_par_iter()
                .map(|_| ROOT.get())
                .zip((0..100).into_par_iter().map(|_| ROOT.get()))
                .enumerate()
                .map(|(i, (a, _))| (i, (a, ROOT.get())))
                .in_copied_context()
                .collect();
            assert!(last.iter().all(|(_, (a, b))| (*a, *b) == ("ctx", "ctx")));
            assert_eq!(last.len(), 100);
            let folded: u32 = (0..100)
                .into_par_iter()
                .in_copied_context()
                .fold(
                    || {
                        assert_eq!(ROOT.get(), "ctx", "fold's identity ran outside");
                        0u32
                    },
                    |acc, _| acc + u32::from(ROOT.get() == "ctx"),
                )
                .sum();
            assert_eq!(folded, 100);
            // The reducer runs user code too.
            let reduced = (0..100)
                .into_par_iter()
                .map(|_| 1u32)
                .in_copied_context()
                .reduce(
                    || 0,
                    |a, b| {
                        assert_eq!(ROOT.get(), "ctx", "reduce ran outside the context");
                        a + b
                    },
                );
            assert_eq!(reduced, 100);
            // Sets inside items stay inside their job.
            (0..100)
                .into_par_iter()
                .in_copied_context()
                .for_each(|n| drop(JOB.set(n)));
            assert!(!JOB.is_set());
        });
    });
    assert!(workers_clean(&pool));
}

#[test]
fn context_captured_when_the_adapter_is_made() {
    isolated(|| {
        let token = JOB.set(1);
        let iter = (0..10).into_par_iter().in_copied_context();
        JOB.reset(token).unwrap();
        let seen: Vec<u64> = iter.map(|_| JOB.get()).collect();
        assert!(seen.iter().all(|job| *job == 1));
    });
}

#[test]
fn scope_spawns_capture_at_spawn() {
    isolated(|| {
        let _job = JOB.set(1);
        let seen = Mutex::new(Vec::new());
        let outer = contextvars::rayon::scope(|s| {
            for job in 10..13 {
                JOB.scope(job, || {
                    s.spawn(|s| {
                        let mine = JOB.get();
                        seen.lock().unwrap().push(mine);
                        drop(JOB.set(mine + 100)); // stays in this spawn
                        s.spawn(|_| seen.lock().unwrap().push(JOB.get()));
                    });
                });
            }
            JOB.get()
        });
        assert_eq!(outer, 1);
        let mut seen = seen.into_inner().unwrap();
        seen.sort();
        assert_eq!(seen, [10, 11, 12, 110, 111, 112]);
        assert_eq!(JOB.get(), 1);
    });
}

#[test]
// Under miri (Tree Borrows), rayon-core 1.13's own `in_place_scope` + `spawn` is UB on some
// schedules, with or without this crate: `ScopeBase::execute_job_closure`'s `func` argument
// (a closure holding `&Scope`) is still protected after `Latch::set` lets the owner free
// the scope. The plain-rayon twin of this test fails the same way ("deallocation through
// <tag> ... is forbidden", rayon-core src/scope/mod.rs:412) on seed 105 of 0..120; this
// test fails on the default seed within `rayon::`.
#[cfg_attr(miri, ignore = "rayon-core scope UB under Tree Borrows, see above")]
fn in_place_scope_runs_in_context() {
    isolated(|| {
        let _job = JOB.set(4);
        let seen = AtomicUsize::new(0);
        contextvars::rayon::in_place_scope(|s| {
            assert_eq!(JOB.get(), 4);
            s.spawn(|_| {
                seen.store(JOB.get() as usize, Ordering::Relaxed);
            });
        });
        assert_eq!(seen.load(Ordering::Relaxed), 4);
    });
}

#[test]
fn static_spawns_take_an_owned_copy() {
    isolated(|| {
        let pool = pool(2);
        let (send, receive) = mpsc::channel();
        let token = JOB.set(21);
        {
            let send = send.clone();
            contextvars::rayon::spawn(move || send.send(("spawn", JOB.get())).unwrap());
        }
        {
            let send = send.clone();
            contextvars::rayon::spawn_fifo(move || send.send(("spawn_fifo", JOB.get())).unwrap());
        }
        {
            let send = send.clone();
            pool.spawn_in_copied_context(move || send.send(("pool.spawn", JOB.get())).unwrap());
        }
        pool.spawn_fifo_in_copied_context(move || {
            send.send(("pool.spawn_fifo", JOB.get())).unwrap()
        });
        // The caller's later changes do not reach jobs that were already spawned.
        JOB.reset(token).unwrap();
        let mut seen: Vec<_> = receive.iter().take(4).collect();
        seen.sort();
        assert_eq!(
            seen,
            [
                ("pool.spawn", 21),
                ("pool.spawn_fifo", 21),
                ("spawn", 21),
                ("spawn_fifo", 21)
            ]
        );
        assert!(workers_clean(&pool));
    });
}

#[test]
fn install_in_copied_context_runs_a_copy() {
    let pool = pool(2);
    isolated(|| {
        let _job = JOB.set(3);
        let inside = pool.install_in_copied_context(|| {
            let seen = JOB.get();
            drop(JOB.set(4));
            seen
        });
        assert_eq!(inside, 3);
        assert_eq!(JOB.get(), 3);
        // Plain `install` does not carry context: the worker's own state shows.
        assert!(!pool.install(|| JOB.is_set()));
    });
}

#[test]
fn jobs_can_take_a_context_handle() {
    // `Context::current()` inside a borrowed job makes a context object for the job
    // without disturbing the caller's snapshot.
    isolated(|| {
        let _job = JOB.set(8);
        let (handle, _) = contextvars::rayon::join(
            || {
                let handle = Context::current();
                drop(JOB.set(9));
                handle
            },
            || (),
        );
        assert_eq!(handle.snapshot().get(&JOB).cloned(), Some(9));
        assert_eq!(JOB.get(), 8);
    });
}

/// Two `in_copied_context` in one pipeline put the outer adapter's folder (which holds
/// the thread's frame for the job) inside the inner adapter's light frame. A panicking
/// item makes rayon drop that folder while the light frame still runs; the frame must
/// still come back in order (found by review: before, the worker was left with a root
/// pointer into a snapshot it did not own, and a context object could be left twice).
/// A pipeline with two `in_copied_context` adapters, one job per item; each item sets
/// `JOB`, and the items for which `fails` holds panic.
fn nested_pipeline_failing_at(items: &[u64], fails: impl Fn(u64) -> bool + Sync) {
    items
        .par_iter()
        .in_copied_context()
        .with_min_len(1)
        .in_copied_context()
        .for_each(|&n| {
            drop(JOB.set(n));
            assert!(!fails(n), "item {n} failed");
        });
}

#[test]
fn panic_with_nested_in_copied_context_restores_everything() {
    let pool = pool(2);
    // Under miri, fewer items (each is a job): the failing items 3 and 5 are still there.
    let items: Vec<u64> = (0..if cfg!(miri) { 200 } else { 2000 }).collect();
    // Scenario A: plain nesting, on workers.
    for _ in 0..iterations(20) {
        let message = expect_panic(|| {
            pool.install_in_copied_context(|| nested_pipeline_failing_at(&items, |n| n % 97 == 3))
        });
        assert!(message.contains("failed"), "{message}");
        assert!(workers_clean(&pool), "a worker kept a job's context");
    }
    // Scenario B: the same inside `ctx.run` on a worker, with a set before the panic: the
    // run's frame must hand its snapshot back and leave the context once.
    let ctx = Context::new();
    for round in 0..iterations(20) {
        let message = expect_panic(|| {
            pool.install(|| {
                ctx.run(|| {
                    drop(ROOT.set("in ctx"));
                    nested_pipeline_failing_at(&items, |n| n % 89 == 5);
                })
            })
        });
        assert!(message.contains("failed"), "{message}");
        assert!(
            workers_clean(&pool),
            "round {round}: a worker kept a context"
        );
        assert_eq!(
            ctx.snapshot().get(&ROOT).cloned(),
            Some("in ctx"),
            "the run's set was handed back"
        );
        assert!(
            ctx.try_run(|| ()).is_ok(),
            "round {round}: the context stayed entered"
        );
        // Entered by this run, and only once: a nested entry is refused.
        ctx.run(|| assert!(ctx.try_run(|| ()).is_err()));
    }
}
