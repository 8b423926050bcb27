//! The fast tracking set: `get` / `with` / set+reset / `copy_context` / `run`, each next
//! to its baseline (`thread_local!`, tokio's `task_local!`, `Arc::clone`).
//!
//! ```text
//! cargo bench --bench ops                                            # full run
//! cargo bench --bench ops -- --warm-up-time 1 --measurement-time 2   # quick
//! cargo bench --bench ops -- get/                                    # one group
//! ```
//!
//! Every contender is called through its own `#[inline(never)]` function with
//! `black_box`ed inputs, so nothing (the thread-local address, the snapshot root, the
//! variable's id) can be hoisted out of the measurement loop.
//!
//! Context shapes (`support/shapes.rs`): "N" is the number of *other* variables bound in
//! the context the bench runs in; the variable that is read (or set) is bound after them.
//!
//! `get` is measured in each kind of frame a read happens in: `contextvars` inside
//! `Context::run`, `contextvars_own` in the thread's own context, `contextvars_poll` in a
//! wrapped future's poll, `contextvars_job` in a rayon job (feature `rayon`). Peers are
//! called as users call them: their statics named directly, values and results
//! `black_box`ed.

use std::cell::Cell;
use std::hint::black_box;
use std::sync::{Arc, OnceLock};

use contextvars::future::ContextFutureExt;
use contextvars::{Context, ContextVar, copy_context};
use criterion::{BenchmarkId, Criterion, criterion_group};
use std::future::Future;

#[path = "support/shapes.rs"]
mod shapes;
use shapes::{context_with, in_private_shape, make_vars, shape};

/// Context sizes (other variables bound) for `get` / `with`. 3 others and the target are
/// 4 variables, the most the snapshot's one-node small form holds; 4 others are the
/// first size in the trie form; 15 others make the 16 variables of the issue's target.
const GET_SIZES: [usize; 7] = [1, 3, 4, 8, 15, 64, 1024];
/// Context sizes for set + reset (in a context object, and in a private frame).
const SET_SIZES: [usize; 4] = [1, 8, 64, 1024];
/// The large context of the `copy_context` group.
const BIG: usize = 100_000;

// ----- contenders ------------------------------------------------------------------------

#[inline(never)]
fn ours_get(var: &ContextVar<u64>) -> u64 {
    var.get()
}

#[inline(never)]
fn ours_with(var: &ContextVar<u64>) -> u64 {
    var.with(|value| *value)
}

std::thread_local! {
    static TLS: Cell<u64> = const { Cell::new(0) };
}

/// As a user reads it: the static named directly (a `black_box`ed `&LocalKey` would turn
/// the thread-local access into an indirect call that no user code pays).
#[inline(never)]
fn thread_local_get() -> u64 {
    TLS.get()
}

tokio::task_local! {
    static TASK: u64;
}

/// As a user reads it: the static named directly.
#[inline(never)]
fn task_local_get() -> u64 {
    TASK.get()
}

#[inline(never)]
fn ours_copy_drop() {
    let ctx = copy_context();
    black_box(&ctx);
}

#[inline(never)]
fn arc_clone_drop(arc: &Arc<u64>) {
    let clone = Arc::clone(arc);
    black_box(&clone);
}

#[inline(never)]
fn ours_set_reset(var: &ContextVar<u64>, value: u64) {
    let token = var.set(value);
    if var.reset(token).is_err() {
        unreachable!("reset in the context of the set");
    }
}

#[inline(never)]
fn ours_run(ctx: &Context) {
    ctx.run(|| ());
}

// ----- groups ----------------------------------------------------------------------------

fn get(c: &mut Criterion) {
    let mut group = c.benchmark_group("get");
    for n in GET_SIZES {
        let (ctx, var) = shape(n);
        group.bench_function(BenchmarkId::new("contextvars", n), |b| {
            ctx.run(|| {
                assert_eq!(ours_get(var), 42);
                b.iter(|| ours_get(black_box(var)));
            });
        });
    }
    // The other three frame kinds a read happens in: the thread's own context, a wrapped
    // future's poll, and a rayon job (`Context::run` is `contextvars` above).
    for n in GET_SIZES {
        group.bench_function(BenchmarkId::new("contextvars_own", n), |b| {
            in_private_shape(n, |var| {
                assert_eq!(ours_get(var), 42);
                b.iter(|| ours_get(black_box(var)));
            });
        });
    }
    for n in GET_SIZES {
        let (ctx, var) = shape(n);
        group.bench_function(BenchmarkId::new("contextvars_poll", n), |b| {
            let future = ctx.run(|| {
                std::future::poll_fn(|_| {
                    assert_eq!(ours_get(var), 42);
                    b.iter(|| ours_get(black_box(var)));
                    std::task::Poll::Ready(())
                })
                .in_copied_context()
            });
            let mut future = std::pin::pin!(future);
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            assert!(future.as_mut().poll(&mut cx).is_ready());
        });
    }
    #[cfg(feature = "rayon")]
    for n in GET_SIZES {
        let (ctx, var) = shape(n);
        group.bench_function(BenchmarkId::new("contextvars_job", n), |b| {
            ctx.run(|| {
                // The first half of a join runs on this thread, in the job's frame.
                contextvars::rayon::join(
                    || {
                        assert_eq!(ours_get(var), 42);
                        b.iter(|| ours_get(black_box(var)));
                    },
                    || (),
                );
            });
        });
    }
    group.bench_function("thread_local", |b| {
        TLS.set(42);
        assert_eq!(thread_local_get(), 42);
        b.iter(|| black_box(thread_local_get()));
    });
    group.bench_function("tokio_task_local", |b| {
        TASK.sync_scope(42, || {
            assert_eq!(task_local_get(), 42);
            b.iter(|| black_box(task_local_get()));
        });
    });
    for n in GET_SIZES {
        let (ctx, var) = shape(n);
        group.bench_function(BenchmarkId::new("contextvars_with", n), |b| {
            ctx.run(|| {
                assert_eq!(ours_with(var), 42);
                b.iter(|| ours_with(black_box(var)));
            });
        });
    }
    // A miss: the variable has an id (it is bound elsewhere) but not in this context, so
    // the lookup runs to the end and falls back to the default.
    static MISS: ContextVar<u64> = contextvars::context_var!(u64, "miss", default 7);
    Context::new().run(|| drop(MISS.set(1)));
    for n in [1, 1024] {
        let (ctx, _) = shape(n);
        group.bench_function(BenchmarkId::new("contextvars_miss_default", n), |b| {
            ctx.run(|| {
                assert_eq!(ours_get(&MISS), 7);
                b.iter(|| ours_get(black_box(&MISS)));
            });
        });
    }
    group.finish();
}

fn copy(c: &mut Criterion) {
    let mut group = c.benchmark_group("copy_context");
    let (small, _) = shape(0);
    group.bench_function(BenchmarkId::new("contextvars", 1), |b| {
        let ctx = &small;
        assert_eq!(ctx.snapshot().len(), 1);
        ctx.run(|| b.iter(ours_copy_drop));
    });
    group.bench_function(BenchmarkId::new("contextvars", BIG), |b| {
        // Built on first use, so only if this row is selected (criterion calls this
        // closure once per sample, and the build is the slow part of the set-up).
        static BIG_CTX: OnceLock<Context> = OnceLock::new();
        let ctx = BIG_CTX.get_or_init(|| {
            let vars = make_vars(BIG);
            context_with(&vars[..BIG - 1], vars[BIG - 1])
        });
        assert_eq!(ctx.snapshot().len(), BIG);
        ctx.run(|| b.iter(ours_copy_drop));
    });
    group.bench_function("arc_clone", |b| {
        let arc = Arc::new(42_u64);
        b.iter(|| arc_clone_drop(black_box(&arc)));
    });
    group.finish();
}

fn set_reset(c: &mut Criterion) {
    let mut group = c.benchmark_group("set_reset");
    for n in SET_SIZES {
        let (ctx, var) = shape(n);
        group.bench_function(BenchmarkId::new("contextvars", n), |b| {
            ctx.run(|| {
                b.iter(|| ours_set_reset(black_box(var), black_box(7)));
                assert_eq!(var.get(), 42);
            });
        });
    }
    // The same in a private frame (see `in_private_shape`): the set and the reset each
    // write into the snapshot's node in place, as nothing else holds it.
    for n in SET_SIZES {
        group.bench_function(BenchmarkId::new("contextvars_private", n), |b| {
            in_private_shape(n, |var| {
                b.iter(|| ours_set_reset(black_box(var), black_box(7)));
                assert_eq!(var.get(), 42);
            });
        });
    }
    group.finish();
}

fn run(c: &mut Criterion) {
    let mut group = c.benchmark_group("run");
    let (ctx, _) = shape(8);
    group.bench_function("contextvars_empty_closure", |b| {
        b.iter(|| ours_run(black_box(&ctx)));
    });
    group.finish();
}

criterion_group!(benches, get, copy, set_reset, run);

fn main() {
    let started = std::time::SystemTime::now();
    benches();
    Criterion::default().configure_from_args().final_summary();
    let tls = ["get/thread_local", "get/tokio_task_local"];
    summary::print(
        started,
        &[
            ("get", &tls),
            ("copy_context", &["copy_context/arc_clone"]),
            ("set_reset", &tls),
            ("run", &tls),
        ],
    );
}

#[path = "support/summary.rs"]
mod summary;
