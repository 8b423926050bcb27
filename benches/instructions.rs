//! Instructions per call, counted by callgrind through gungraun: the crate's hot
//! operations next to their peers, in the same binary, as a regression gate.
//!
//! Each benchmark runs once, in a process of its own under callgrind; its setup (binding
//! the variables, capturing a context) is not counted. A read inside a frame (a
//! `Context::run`, a future's poll) or inside tokio's `sync_scope` is counted in a probe
//! function of its own (`probe_*`, `#[inline(never)]`, the benchmark's entry point), so
//! entering and leaving the frame are not part of the read's count. Inputs and results
//! go through `black_box`; peers' statics are named directly, as users name them.
//!
//! Every benchmark has a committed hard limit on instructions (`Ir`): its count when the
//! limit was set, plus about 5%. The reads, the writes, `run` and `copy_context` also have
//! one on heap allocations (DHAT's total blocks, exact: 0 for a value stored inline, 1 for
//! a boxed one). Run with
//!
//! ```text
//! cargo bench --bench instructions --features rayon
//! ```
//!
//! (needs valgrind and `cargo install gungraun-runner --version 0.20.0`). A count over its
//! limit fails the run; one far under it means the limit should come down with the change
//! that earned it. `BENCHMARKS.md` keeps the table.

// gungraun's macros generate undocumented modules.
#![allow(missing_docs)]

use std::cell::Cell;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll, Waker};

use contextvars::future::ContextFutureExt;
use contextvars::{Context, ContextVar, copy_context};
use gungraun::{
    Callgrind, Dhat, DhatMetric, EntryPoint, EventKind, LibraryBenchmarkConfig, library_benchmark,
    library_benchmark_group, main,
};

contextvars::context_var! {
    /// The variable most benchmarks read and write: a `static` of a small `Copy + Eq`
    /// type, so its values are stored inline in the snapshot (no allocation, no borrow).
    static FIRST: u64;
}

/// `FIRST`'s 1,023 companions, made with the expression form: their values are boxed (one
/// allocation per set). `VARS[1]` is the boxed twin of `FIRST` in the `*_boxed` benchmarks.
static VARS: [ContextVar<u64>; 1024] = [const { contextvars::context_var!(u64, "v") }; 1024];

/// A shared value behind an `Arc`: a word, but not `Copy`, so boxed.
static SHARED_CONFIG: ContextVar<Arc<u64>> = contextvars::context_var!(Arc<u64>, "config");

tokio::task_local! {
    static TASK_LOCAL: u64;
}

thread_local! {
    static THREAD_LOCAL: Cell<u64> = const { Cell::new(7) };
}

/// Binds `n` variables in the thread's own context, `FIRST` and `VARS[1..n]` (their
/// tokens dropped: the values stay).
fn bound(n: usize) {
    drop(FIRST.set(0));
    for (i, var) in VARS.iter().enumerate().take(n).skip(1) {
        drop(var.set(i as u64));
    }
}

/// `bound(n)`, then a copy of the context with them.
fn captured(n: usize) -> Context {
    bound(n);
    copy_context()
}

/// `captured(n)`, run once: a context's first run makes its shared object (one
/// allocation), which `run_empty` leaves out.
fn entered_once(n: usize) -> Context {
    let ctx = captured(n);
    ctx.run(|| ());
    ctx
}

/// [`entered_once`], leaked: `run_empty` takes it by reference, as a caller of `run`
/// holds its `Context`, so that the row counts `run` and not the move of a `Context`
/// into the benchmark function and back out (16 instructions when it did).
fn entered_once_leaked(n: usize) -> &'static Context {
    Box::leak(Box::new(entered_once(n)))
}

/// How many other threads load a context's published snapshot in
/// [`entered_once_read_by_threads`].
const READER_THREADS: usize = 8;

/// [`entered_once_leaked`], after [`READER_THREADS`] other threads, alive at the same
/// time, have each loaded its published snapshot (`Context::copy`): a publication must
/// not cost more for them. With arc-swap as the cell it did: its store walks the debt
/// slots of every thread that ever loaded through arc-swap.
fn entered_once_read_by_threads(n: usize) -> &'static Context {
    let ctx = entered_once_leaked(n);
    let all_loaded = std::sync::Barrier::new(READER_THREADS + 1);
    std::thread::scope(|scope| {
        for _ in 0..READER_THREADS {
            scope.spawn(|| {
                black_box(ctx.copy());
                all_loaded.wait();
            });
        }
        all_loaded.wait();
    });
    ctx
}

/// A limit of `ir` instructions, counted from the benchmark function.
fn limit(ir: u64) -> LibraryBenchmarkConfig {
    let mut config = LibraryBenchmarkConfig::default();
    config.tool(Callgrind::default().hard_limits([(EventKind::Ir, ir)]));
    config
}

/// A limit of `ir` instructions and of `blocks` heap allocations (counted by DHAT), both
/// counted from the benchmark function.
fn limits(ir: u64, blocks: u64) -> LibraryBenchmarkConfig {
    let mut config = limit(ir);
    config.tool(Dhat::default().hard_limits([(DhatMetric::TotalBlocks, blocks)]));
    config
}

/// A limit of `ir` instructions, counted from the probe functions matching `probe`.
fn probe_limit(probe: &str, ir: u64) -> LibraryBenchmarkConfig {
    let mut config = LibraryBenchmarkConfig::default();
    config.tool(
        Callgrind::default()
            .entry_point(EntryPoint::Custom(format!("*{probe}*")))
            .hard_limits([(EventKind::Ir, ir)]),
    );
    config
}

/// The functions the scopes and runs below call, named so that callgrind counts them: a
/// closure defined in a benchmark function is named after it (`bench::{{closure}}`), and
/// gungraun's entry point (`--toggle-collect` on the benchmark's name) switches counting
/// *off* while it runs. (Before this was noticed, the scope rows left out their read.)
#[inline(never)]
fn read_first() -> u64 {
    black_box(FIRST.get())
}

#[inline(never)]
fn read_boxed_twin() -> u64 {
    black_box(VARS[1].get())
}

#[inline(never)]
fn read_task_local() -> u64 {
    black_box(TASK_LOCAL.get())
}

#[inline(never)]
fn one() -> u64 {
    black_box(1)
}

// ------------------------------------------------------------------------------ reads

#[library_benchmark]
#[bench::vars_1(args = (1), setup = bound, config = limits(14, 0))]
#[bench::vars_8(args = (8), setup = bound, config = limits(14, 0))]
#[bench::vars_16(args = (16), setup = bound, config = limits(14, 0))]
#[bench::vars_1024(args = (1024), setup = bound, config = limits(14, 0))]
fn get_own_context(_: ()) -> u64 {
    black_box(FIRST.get())
}

/// `bound(n)`, then one read of `FIRST`: a read of a variable read before in the same
/// frame, with nothing changed since. (The set in `bound` already fills `FIRST`'s slot of
/// the read cache, so this is the same as `get_own_context`; the `get_cold_*` rows below
/// are the reads the cache cannot serve.)
fn bound_and_read(n: usize) {
    bound(n);
    black_box(FIRST.get());
}

#[library_benchmark]
#[bench::vars_8(args = (8), setup = bound_and_read, config = limits(14, 0))]
#[bench::vars_1024(args = (1024), setup = bound_and_read, config = limits(14, 0))]
fn get_again_own_context(_: ()) -> u64 {
    black_box(FIRST.get())
}

#[library_benchmark]
#[bench::vars_8(args = (8), setup = bound, config = limit(32))]
#[bench::vars_1024(args = (1024), setup = bound, config = limit(32))]
fn get_boxed_own_context(_: ()) -> u64 {
    black_box(VARS[1].get())
}

contextvars::context_var! {
    /// An inline variable with a default, read where nothing binds it.
    static LEVEL: u64 = 3;
}

#[library_benchmark]
#[bench::empty(setup = nothing, config = limits(51, 0))]
#[bench::vars_8(args = (8), setup = bound, config = limits(64, 0))]
fn get_default(_: ()) -> u64 {
    black_box(LEVEL.get())
}

/// `bound(n)`, and `SHARED_CONFIG` bound too.
fn bound_with_arc(n: usize) {
    bound(n);
    drop(SHARED_CONFIG.set(Arc::new(7)));
}

#[library_benchmark]
#[bench::vars_8(args = (8), setup = bound_with_arc, config = limit(31))]
fn get_arc_own_context(_: ()) -> u64 {
    black_box(SHARED_CONFIG.with(|config| **config))
}

#[inline(never)]
fn probe_get() -> u64 {
    black_box(FIRST.get())
}

#[library_benchmark]
#[bench::vars_8(args = (8), setup = captured, config = probe_limit("probe_get", 14))]
fn get_in_run(ctx: Context) -> u64 {
    ctx.run(probe_get)
}

#[library_benchmark]
#[bench::vars_8(args = (8), setup = captured, config = probe_limit("probe_get", 14))]
fn get_again_in_run(ctx: Context) -> u64 {
    ctx.run(|| {
        black_box(FIRST.get());
        probe_get()
    })
}

/// Polls, once, a future that returns `probe()`, wrapped to run in a copy of the current
/// context: `probe` runs inside a poll's frame.
fn poll_once_in_copied_context(probe: fn() -> u64) -> u64 {
    poll_once_in_copied_context_after(probe, || ())
}

/// [`poll_once_in_copied_context`], with `before` run between the copy and the poll.
fn poll_once_in_copied_context_after(probe: fn() -> u64, before: impl FnOnce()) -> u64 {
    let mut future = pin!(std::future::poll_fn(|_| Poll::Ready(probe())).in_copied_context());
    before();
    match future
        .as_mut()
        .poll(&mut TaskContext::from_waker(Waker::noop()))
    {
        Poll::Ready(value) => value,
        Poll::Pending => 0,
    }
}

#[library_benchmark]
#[bench::vars_8(args = (8), setup = bound, config = probe_limit("probe_get", 14))]
fn get_in_poll(_: ()) -> u64 {
    poll_once_in_copied_context(probe_get)
}

// A read the read cache cannot serve: the first read of `FIRST` after the thread's
// snapshot changed under it (a frame whose root is another node was entered or left), in
// the three frame kinds. Only `probe_get` is counted.

#[library_benchmark]
#[bench::vars_3(args = (3), setup = bound, config = probe_limit("probe_get", 40))]
#[bench::vars_8(args = (8), setup = bound, config = probe_limit("probe_get", 43))]
#[bench::vars_1024(args = (1024), setup = bound, config = probe_limit("probe_get", 73))]
fn get_cold_own_context(_: ()) -> u64 {
    // Entering an empty context and leaving it again starts new epochs.
    Context::new().run(|| ());
    probe_get()
}

#[inline(never)]
fn probe_boxed_get() -> u64 {
    black_box(VARS[1].get())
}

#[library_benchmark]
#[bench::vars_8(args = (8), setup = bound, config = probe_limit("probe_boxed_get", 60))]
fn get_cold_boxed_own_context(_: ()) -> u64 {
    Context::new().run(|| ());
    probe_boxed_get()
}

#[library_benchmark]
#[bench::vars_8(args = (8), setup = captured, config = probe_limit("probe_get", 43))]
fn get_cold_in_run(ctx: Context) -> u64 {
    // The thread's own snapshot is another node than `ctx`'s from here on.
    drop(FIRST.set(black_box(9)));
    ctx.run(probe_get)
}

#[library_benchmark]
#[bench::vars_8(args = (8), setup = bound, config = probe_limit("probe_get", 43))]
fn get_cold_in_poll(_: ()) -> u64 {
    // The future's copy is another node than the thread's snapshot after the set.
    poll_once_in_copied_context_after(probe_get, || drop(FIRST.set(black_box(9))))
}

// A read in a rayon job of `contextvars::rayon::join`, run by a worker of the global pool
// (the caller is not one): the worker's first read of `FIRST` misses the cache (its own),
// and the ones after hit it.

#[library_benchmark]
#[bench::vars_8(args = (8), setup = bound, config = probe_limit("probe_get", 43))]
fn get_cold_in_rayon_job(_: ()) -> u64 {
    contextvars::rayon::join(probe_get, || 0).0
}

#[library_benchmark]
#[bench::vars_8(args = (8), setup = bound, config = probe_limit("probe_get", 14))]
fn get_in_rayon_job(_: ()) -> u64 {
    contextvars::rayon::join(
        || {
            black_box(FIRST.get());
            probe_get()
        },
        || 0,
    )
    .0
}

#[library_benchmark(config = limit(6))]
fn peer_thread_local_get() -> u64 {
    black_box(THREAD_LOCAL.with(Cell::get))
}

#[inline(never)]
fn probe_task_local_get() -> u64 {
    black_box(TASK_LOCAL.get())
}

#[library_benchmark(config = probe_limit("probe_task_local_get", 13))]
fn peer_task_local_get() -> u64 {
    TASK_LOCAL.sync_scope(black_box(7), probe_task_local_get)
}

library_benchmark_group!(
    name = reads,
    benchmarks = [
        get_own_context,
        get_again_own_context,
        get_boxed_own_context,
        get_arc_own_context,
        get_default,
        get_in_run,
        get_again_in_run,
        get_in_poll,
        get_cold_own_context,
        get_cold_boxed_own_context,
        get_cold_in_run,
        get_cold_in_poll,
        get_in_rayon_job,
        get_cold_in_rayon_job,
        peer_thread_local_get,
        peer_task_local_get
    ]
);

// ----------------------------------------------------------------- writes and frames

#[library_benchmark]
#[bench::vars_3(args = (3), setup = bound, config = limits(510, 0))]
#[bench::vars_8(args = (8), setup = bound, config = limits(578, 0))]
fn set_reset_own_context(_: ()) -> bool {
    let token = FIRST.set(black_box(41));
    black_box(FIRST.reset(token).is_ok())
}

#[library_benchmark]
#[bench::vars_8(args = (8), setup = bound, config = limits(924, 1))]
fn set_reset_boxed_own_context(_: ()) -> bool {
    let token = VARS[1].set(black_box(41));
    black_box(VARS[1].reset(token).is_ok())
}

#[inline(never)]
fn probe_set_reset() -> bool {
    let token = FIRST.set(black_box(41));
    black_box(FIRST.reset(token).is_ok())
}

// Set + reset where a handle can see the bindings (inside `Context::run`: the `Context`
// reads them, so each change is published to it), counted in `probe_set_reset` after a
// first set has made the run's frame a frame of the thread (which each later set reuses).
#[library_benchmark]
#[bench::vars_8(args = (8), setup = entered_once_leaked, config = probe_limit("probe_set_reset", 2100))]
#[bench::vars_8_read_by_8_threads(args = (8), setup = entered_once_read_by_threads, config = probe_limit("probe_set_reset", 2100))]
fn set_reset_in_run(ctx: &'static Context) -> bool {
    ctx.run(|| {
        drop(FIRST.set(black_box(40)));
        probe_set_reset()
    })
}

#[library_benchmark]
#[bench::vars_8(args = (8), setup = bound, config = limits(171, 0))]
fn scope_own_context(_: ()) -> u64 {
    FIRST.scope(black_box(41), read_first)
}

#[library_benchmark]
#[bench::vars_8(args = (8), setup = bound, config = limits(527, 1))]
fn scope_boxed_own_context(_: ()) -> u64 {
    VARS[1].scope(black_box(41), read_boxed_twin)
}

#[inline(never)]
fn probe_scope() -> u64 {
    FIRST.scope(black_box(41), read_first)
}

// A scope inside a future's poll (a request handler's frame), counted in `probe_scope`.
#[library_benchmark]
#[bench::vars_8(args = (8), setup = bound, config = probe_limit("probe_scope", 140))]
fn scope_in_poll(_: ()) -> u64 {
    poll_once_in_copied_context(probe_scope)
}

#[library_benchmark(config = limit(67))]
fn peer_task_local_sync_scope() -> u64 {
    TASK_LOCAL.sync_scope(black_box(41), read_task_local)
}

#[library_benchmark]
#[bench::vars_8(args = (8), setup = entered_once_leaked, config = limits(102, 0))]
fn run_empty(ctx: &'static Context) -> u64 {
    ctx.run(one)
}

/// The setup of the benchmarks that run where nothing is bound.
fn nothing() {}

#[library_benchmark]
#[bench::vars_8(args = (8), setup = bound, config = limits(24, 0))]
#[bench::empty(setup = nothing, config = limits(24, 0))]
fn copy_context_and_drop(_: ()) {
    drop(black_box(copy_context()));
}

/// [`entered_once_leaked`], copied once already: the thread's first load from a cell
/// may set up state of its own (arc-swap's did, about 950 instructions).
fn entered_and_copied_once(n: usize) -> &'static Context {
    let ctx = entered_once_leaked(n);
    drop(black_box(ctx.copy()));
    ctx
}

// `Context::copy` of a context that has run: a load of its published snapshot from its
// cell (the read side of a publication), and the copy's drop.
#[library_benchmark]
#[bench::vars_8(args = (8), setup = entered_and_copied_once, config = limits(50, 0))]
fn copy_published_and_drop(ctx: &'static Context) {
    drop(black_box(black_box(ctx).copy()));
}

fn shared() -> Arc<u64> {
    Arc::new(7)
}

#[library_benchmark]
#[bench::one(setup = shared, config = limit(15))]
fn peer_arc_clone_and_drop(arc: Arc<u64>) -> Arc<u64> {
    drop(black_box(Arc::clone(&arc)));
    arc
}

library_benchmark_group!(
    name = writes,
    benchmarks = [
        set_reset_own_context,
        set_reset_boxed_own_context,
        set_reset_in_run,
        scope_own_context,
        scope_boxed_own_context,
        scope_in_poll,
        peer_task_local_sync_scope,
        run_empty,
        copy_context_and_drop,
        copy_published_and_drop,
        peer_arc_clone_and_drop
    ]
);

main!(library_benchmark_groups = reads, writes);
