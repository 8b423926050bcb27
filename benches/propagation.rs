//! The cost of carrying context into work: rayon jobs and future polls, each next to
//! the same work without context.
//!
//! ```text
//! cargo bench --all-features --bench propagation
//! ```
//!
//! * `rayon_join`: one `join` of two trivial closures on a worker of a 2-thread pool,
//!   plain `rayon::join` against `contextvars::rayon::join`; `rayon_join_one_worker`: the
//!   same on a 1-thread pool, where nothing is stolen (the per-join cost alone).
//! * `par_iter`: a `par_iter` over 1,000,000 items reading a variable per item with
//!   `in_copied_context` (`ours`: a boxed value; `ours_inline`: a value stored inline),
//!   against the same reading a non-inlined `thread_local!`.
//! * `poll`: one poll of a future that is always pending, bare, in the [`WithContext`]
//!   wrapper (with 1 and 64 variables in the context: the cost must not depend on it),
//!   and in tokio's `task_local!` scope.
//!
//! Every contender is called through an `#[inline(never)]` function with `black_box`ed
//! inputs.

use std::cell::Cell;
use std::future::Future;
use std::hint::black_box;
use std::pin::{Pin, pin};
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::{Duration, Instant};

use contextvars::future::ContextFutureExt;
use contextvars::rayon::ParallelIteratorExt;
use contextvars::{Context, ContextVar};
use criterion::{BenchmarkId, Criterion, criterion_group};
use rayon::prelude::*;

#[path = "support/summary.rs"]
mod summary;

static VALUE: ContextVar<u64> = contextvars::context_var!(u64, "value", default 0);

contextvars::context_var! {
    /// `VALUE`'s inline twin (a `static` declared with `context_var!`: its `u64` values are
    /// stored in the snapshot's entries), read by `par_iter/ours_inline`.
    static INLINE_VALUE: u64 = 0;
}

thread_local! {
    static TL_VALUE: Cell<u64> = const { Cell::new(1) };
}

tokio::task_local! {
    static TASK_VALUE: u64;
}

fn pool() -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .expect("pool")
}

/// A context with `n` variables bound, `VALUE` last.
fn context_of(n: usize) -> Context {
    let mut ctx = Context::new();
    for _ in 1..n {
        let var: &'static ContextVar<u64> =
            Box::leak(Box::new(contextvars::context_var!(u64, "other")));
        ctx = ctx.with_value(var, 0);
    }
    ctx.with_value(&VALUE, 1).with_value(&INLINE_VALUE, 1)
}

#[inline(never)]
fn plain_join() -> (u64, u64) {
    rayon::join(|| black_box(1u64), || black_box(2u64))
}

#[inline(never)]
fn ours_join() -> (u64, u64) {
    contextvars::rayon::join(|| black_box(1u64), || black_box(2u64))
}

fn rayon_join(c: &mut Criterion) {
    // Two workers: the other worker is idle and steals `B` whenever it can, so the figure
    // mixes the per-job cost with how often a steal (a cross-thread wake-up, about
    // 100 ns) happens, which depends on how long `A` takes. One worker: nothing can be
    // stolen, so the difference is the per-join cost alone.
    for (group_name, threads) in [("rayon_join", 2), ("rayon_join_one_worker", 1)] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("pool");
        let mut group = c.benchmark_group(group_name);
        let ctx = context_of(8);
        group.bench_function("plain", |b| {
            b.iter_custom(|iters| {
                pool.install(|| {
                    let start = Instant::now();
                    for _ in 0..iters {
                        black_box(plain_join());
                    }
                    start.elapsed()
                })
            })
        });
        group.bench_function("ours", |b| {
            b.iter_custom(|iters| {
                ctx.copy().run(|| {
                    contextvars::rayon::ThreadPoolExt::install_in_copied_context(&pool, || {
                        assert_eq!(VALUE.get(), 1, "the worker runs in the caller's context");
                        let start = Instant::now();
                        for _ in 0..iters {
                            black_box(ours_join());
                        }
                        start.elapsed()
                    })
                })
            })
        });
        group.finish();
    }
}

// Each read's result is `black_box`ed inside its function, so that no read-only call
// can be hoisted out of the item loop, and `TL_VALUE` is set on every worker from a
// `black_box`ed value before its row (`par_iter`): a thread-local that nothing ever
// writes is folded to its initialiser, and `tl_get` compiled to `mov $1` with no
// thread-local access at all (the row measured rayon's splitting alone: 191 us for a
// million items, where ours read the context's state for each).

#[inline(never)]
fn ours_get() -> u64 {
    black_box(VALUE.get())
}

#[inline(never)]
fn ours_inline_get() -> u64 {
    black_box(INLINE_VALUE.get())
}

#[inline(never)]
fn tl_get() -> u64 {
    black_box(TL_VALUE.with(Cell::get))
}

const ITEMS: u64 = 1_000_000;

/// A `par_iter` row of ours: every item calls `read` (a fn item, called directly, as the
/// thread-local row calls `tl_get`) in a copy of `ctx`, on `pool`.
fn bench_ours(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    pool: &rayon::ThreadPool,
    ctx: &Context,
    name: &str,
    read: impl Fn() -> u64 + Sync,
) {
    group.bench_function(name, |b| {
        b.iter(|| {
            let sum = ctx.copy().run(|| {
                // On the same pool as the thread-local version, in the caller's context.
                contextvars::rayon::ThreadPoolExt::install_in_copied_context(pool, || {
                    (0..black_box(ITEMS))
                        .into_par_iter()
                        .map(|_| read())
                        .in_copied_context()
                        .sum::<u64>()
                })
            });
            assert_eq!(sum, ITEMS);
        })
    });
}

fn par_iter(c: &mut Criterion) {
    let pool = pool();
    let mut group = c.benchmark_group("par_iter");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(4));
    let ctx = context_of(8);
    // Every item reads 1, so both sums are `ITEMS`: checked, so that a read that misses
    // (and falls back to the default, 0) cannot pass for a fast one. Written on every
    // worker, so that a read of it is a read (see `tl_get`).
    pool.broadcast(|_| TL_VALUE.with(|value| value.set(black_box(1))));
    group.bench_function("thread_local", |b| {
        b.iter(|| {
            let sum = pool.install(|| {
                (0..black_box(ITEMS))
                    .into_par_iter()
                    .map(|_| tl_get())
                    .sum::<u64>()
            });
            assert_eq!(sum, ITEMS);
        })
    });
    bench_ours(&mut group, &pool, &ctx, "ours", ours_get);
    bench_ours(&mut group, &pool, &ctx, "ours_inline", ours_inline_get);
    group.finish();
}

/// Always pending: the cost of a poll is the wrapper's alone.
struct Pending(u64);

impl Future for Pending {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, _: &mut TaskContext<'_>) -> Poll<()> {
        self.0 = self.0.wrapping_add(1);
        Poll::Pending
    }
}

#[inline(never)]
fn poll_once<F: Future>(future: Pin<&mut F>, cx: &mut TaskContext<'_>) -> bool {
    black_box(future).poll(cx).is_ready()
}

fn poll(c: &mut Criterion) {
    let mut group = c.benchmark_group("poll");
    let mut cx = TaskContext::from_waker(Waker::noop());
    group.bench_function("bare", |b| {
        let mut future = pin!(Pending(0));
        b.iter(|| poll_once(future.as_mut(), &mut cx))
    });
    for n in [1usize, 64] {
        let ctx = context_of(n);
        let mut future = pin!(ctx.run(|| Pending(0).in_copied_context()));
        group.bench_with_input(BenchmarkId::new("ours", n), &n, |b, _| {
            b.iter(|| poll_once(future.as_mut(), &mut cx))
        });
    }
    group.bench_function("tokio_task_local", |b| {
        let mut future = pin!(TASK_VALUE.scope(1, Pending(0)));
        b.iter(|| poll_once(future.as_mut(), &mut cx))
    });
    group.finish();
}

criterion_group!(benches, rayon_join, par_iter, poll);

fn main() {
    let started = std::time::SystemTime::now();
    benches();
    Criterion::default().configure_from_args().final_summary();
    summary::print(
        started,
        &[
            ("rayon_join", &["rayon_join/plain"]),
            ("rayon_join_one_worker", &["rayon_join_one_worker/plain"]),
            ("par_iter", &["par_iter/thread_local"]),
            ("poll", &["poll/bare", "poll/tokio_task_local"]),
        ],
    );
}
