//! Ours against every peer, row by row, in one run:
//!
//! * `peers_get`: a read of the last-bound variable. Ours (`VAR.get()`), opentelemetry
//!   (`Context::current()` + `get::<T>()`, and its cheaper `Context::map_current`), an
//!   imbl-backed "afternoon implementation" (a `thread_local!` `RefCell` holding an
//!   `imbl::HashMap<u64, Arc<dyn Any + Send + Sync>>`: lookup, downcast, clone), a global
//!   `RwLock<HashMap<u64, Arc<dyn Any + Send + Sync>>>`, and the floors: a `thread_local!`
//!   `Cell` and tokio's `task_local!` (no map; one key each).
//! * `peers_set`: set + reset (ours with a token, and `scoped_set`), opentelemetry's
//!   `Context::current_with_value(v).attach()` + guard drop, the imbl implementation's
//!   insert + restore, a bare persistent imbl insert (clone + insert + drop: what a set
//!   costs once the map is shared), and the `RwLock` store's insert + restore.
//! * `peers_copy`: `copy_context()` (also at 100,000 variables), opentelemetry's
//!   `Context::current()`, cloning the imbl map, and `Arc::clone` + drop.
//! * `peers_run`: entering and leaving a context around an empty closure: ours
//!   `Context::run(|| ())`, opentelemetry `cx.clone().attach()` + drop, tokio's
//!   `sync_scope`.
//! * `peers_scope`: `scope(v, || read of v)` in the thread's own context (private: the
//!   binding stays on the call's stack), inline and boxed, against tokio's
//!   `sync_scope(v, || TASK.get())`.
//! * `peers_with_value`: a new context with one more binding, without entering it.
//! * `peers_poll`: one poll of an always-pending future: bare, in our `WithContext`,
//!   opentelemetry's `WithContext`, and tokio's `TaskLocalFuture`.
//! * `peers_scaling`: per-thread cost of our `get` and `copy_context` (and of
//!   `Arc::clone`) when 1 and 2 threads run it at the same time (`iter_custom`, threads
//!   started before the clock, released together by a `Barrier`; the figure is the mean
//!   of the threads' times, so it is the per-thread cost per op).
//!
//! Before the measurements, the allocations per operation (counted by a global
//! allocator that is armed only while counting) are printed.
//!
//! ```text
//! cargo bench --all-features --bench peers -- --warm-up-time 1 --measurement-time 2
//! ```
//!
//! Context size "n" is the number of *other* values bound; the value read or set is bound
//! after them (the last inserted, the worst case), so a context of size n holds n + 1
//! values. This is the same convention as `benches/ops.rs`. Every contender is called
//! through its own `#[inline(never)]` function with `black_box`ed inputs.

use std::alloc::{GlobalAlloc, Layout, System};
use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::hint::black_box;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, OnceLock, RwLock};
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::{Duration, Instant};

use contextvars::future::ContextFutureExt;
use contextvars::{Context, ContextVar, copy_context};
use criterion::{BenchmarkId, Criterion, criterion_group};
use opentelemetry::Context as OtelContext;
use opentelemetry::context::FutureExt as _;

#[path = "support/shapes.rs"]
mod shapes;
#[path = "support/summary.rs"]
mod summary;
use shapes::{Var, context_with, in_private_shape, make_vars, shape};

contextvars::context_var! {
    /// The target of the `*_inline` rows: a `static` declared with `context_var!` of a
    /// `Copy + Eq` type, so its values are stored inline (no allocation per set).
    static INLINE_TARGET: u64;
}

/// The target of the `*_boxed_twin` rows: a `static` made with the expression form, so
/// its values are boxed. Its id is assigned right after [`INLINE_TARGET`]'s (both after
/// the pool's, see [`twins`]), so the two sit at the same depth of the trie: the pair
/// compares the two forms of a value and nothing else. (The other rows' targets,
/// `pool[n]`, have lower ids, so a lookup walks fewer levels than the twins' beyond 32
/// variables.)
static BOXED_TWIN: ContextVar<u64> = contextvars::context_var!(u64, "boxed_twin");

/// The twin targets, their ids assigned once, in order, after the pool's.
fn twins() -> [Var; 2] {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        shapes::pool();
        INLINE_TARGET.id();
        BOXED_TWIN.id();
    });
    [&INLINE_TARGET, &BOXED_TWIN]
}

/// The rows' names for the twins, in [`twins`]' order.
const TWIN_NAMES: [&str; 2] = ["inline", "boxed_twin"];

/// Shape `n` with `target` (a twin) as its target, as a context object.
fn shape_of(n: usize, target: Var) -> (Context, Var) {
    (context_with(&shapes::pool()[..n], target), target)
}

/// [`in_private_shape`] with `target` (a twin) as its target.
fn in_private_shape_of<R>(n: usize, target: Var, f: impl FnOnce(Var) -> R) -> R {
    let pool = shapes::pool();
    let tokens: Vec<_> = pool[..n]
        .iter()
        .enumerate()
        .map(|(i, var)| var.set(i as u64))
        .collect();
    let token = target.set(42);
    let result = f(target);
    if target.reset(token).is_err() {
        unreachable!("reset in the context of the set");
    }
    for token in tokens.into_iter().rev() {
        if token.var().reset(token).is_err() {
            unreachable!("reset in the context of the set");
        }
    }
    result
}

/// Context sizes (other values bound).
const SIZES: [usize; 4] = [1, 8, 64, 1024];
/// The large context of the copy group.
const BIG: usize = 100_000;

// ----- allocation counting -----------------------------------------------------------------

/// Counts allocations while armed; otherwise the cost is one relaxed load per call.
struct Counting;

static ARMED: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
/// Bytes allocated minus bytes freed while armed.
static NET_BYTES: AtomicI64 = AtomicI64::new(0);

/// Counts an allocation of `size` bytes, if armed.
fn count_alloc(size: usize) {
    if ARMED.load(Ordering::Relaxed) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        NET_BYTES.fetch_add(size as i64, Ordering::Relaxed);
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_alloc(layout.size());
        // SAFETY: forwarded from our caller, who upholds `GlobalAlloc::alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count_alloc(layout.size());
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_alloc(new_size);
        if ARMED.load(Ordering::Relaxed) {
            NET_BYTES.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        }
        // SAFETY: `ptr` came from this allocator (hence from `System`) with `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if ARMED.load(Ordering::Relaxed) {
            NET_BYTES.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        }
        // SAFETY: `ptr` came from this allocator (hence from `System`) with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Mean allocations per call of `op` over many calls (single-threaded, before criterion
/// starts, so nothing else allocates meanwhile).
fn allocations_per_op(mut op: impl FnMut()) -> f64 {
    const CALLS: u64 = 1000;
    op(); // warm: first-use initialisation (ids, thread-locals) is not the op's cost
    ALLOCATIONS.store(0, Ordering::Relaxed);
    ARMED.store(true, Ordering::Relaxed);
    for _ in 0..CALLS {
        op();
    }
    ARMED.store(false, Ordering::Relaxed);
    ALLOCATIONS.load(Ordering::Relaxed) as f64 / CALLS as f64
}

// ----- ours --------------------------------------------------------------------------------

fn big_shape() -> &'static (Context, Var) {
    static BIG_CTX: OnceLock<(Context, Var)> = OnceLock::new();
    BIG_CTX.get_or_init(|| {
        let vars = make_vars(BIG + 1);
        (context_with(&vars[..BIG], vars[BIG]), vars[BIG])
    })
}

#[inline(never)]
fn ours_get(var: &ContextVar<u64>) -> u64 {
    var.get()
}

#[inline(never)]
fn ours_set_reset(var: &ContextVar<u64>, value: u64) {
    let token = var.set(value);
    if var.reset(token).is_err() {
        unreachable!("reset in the context of the set");
    }
}

#[inline(never)]
fn ours_scoped_set(var: &ContextVar<u64>, value: u64) {
    let guard = var.scoped_set(value);
    black_box(&guard);
}

/// A scope that reads its own value inside, as a request handler would.
#[inline(never)]
fn ours_scope(var: &ContextVar<u64>, value: u64) -> u64 {
    var.scope(value, || black_box(var.get()))
}

#[inline(never)]
fn ours_copy_drop() {
    let ctx = copy_context();
    black_box(&ctx);
}

#[inline(never)]
fn ours_run(ctx: &Context) {
    ctx.run(|| ());
}

#[inline(never)]
fn ours_with_value(ctx: &Context, var: &ContextVar<u64>, value: u64) {
    let new = ctx.with_value(var, value);
    black_box(&new);
}

// ----- opentelemetry -----------------------------------------------------------------------

/// The value read and set in opentelemetry's context (it is keyed by type).
#[derive(Clone, Copy)]
struct Target(u64);

/// The "other" values: one distinct type per slot (32 x 32 of them).
struct Other<const A: usize, const B: usize>;

/// Binds `Other<A, 0..count>`.
fn otel_row<const A: usize>(mut cx: OtelContext, count: usize) -> OtelContext {
    macro_rules! cells {
        ($($b:literal)*) => {
            $( if $b < count { cx = cx.with_value(Other::<A, $b>); } )*
        };
    }
    cells!(0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31);
    cx
}

/// How many of row `row`'s 32 slots the first `n` values fill.
fn row_count(n: usize, row: usize) -> usize {
    n.saturating_sub(row * 32).min(32)
}

/// An opentelemetry context with `n` other values (`n <= 1024`), then `Target(42)`.
fn otel_shape(n: usize) -> OtelContext {
    assert!(n <= 32 * 32);
    let mut cx = OtelContext::new();
    macro_rules! rows {
        ($($a:literal)*) => {
            $( cx = otel_row::<$a>(cx, row_count(n, $a)); )*
        };
    }
    rows!(0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31);
    cx.with_value(Target(42))
}

#[inline(never)]
fn otel_current_get() -> u64 {
    OtelContext::current().get::<Target>().map_or(0, |t| t.0)
}

#[inline(never)]
fn otel_map_current_get() -> u64 {
    OtelContext::map_current(|cx| cx.get::<Target>().map_or(0, |t| t.0))
}

#[inline(never)]
fn otel_set(value: u64) {
    let guard = OtelContext::current_with_value(Target(value)).attach();
    drop(black_box(guard));
}

#[inline(never)]
fn otel_copy() {
    let cx = OtelContext::current();
    black_box(&cx);
}

#[inline(never)]
fn otel_attach(cx: &OtelContext) {
    let guard = cx.clone().attach();
    drop(black_box(guard));
}

#[inline(never)]
fn otel_with_value(cx: &OtelContext, value: u64) {
    let new = cx.with_value(Target(value));
    black_box(&new);
}

// ----- the imbl "afternoon implementation" and the RwLock store ----------------------------

type AnyValue = Arc<dyn Any + Send + Sync>;
type ImblMap = imbl::HashMap<u64, AnyValue>;

std::thread_local! {
    static IMBL: RefCell<ImblMap> = RefCell::new(ImblMap::new());
}

/// Keys `0..n` (others), then `n` (the target, 42).
fn imbl_shape(n: usize) -> ImblMap {
    let mut map = ImblMap::new();
    for key in 0..n as u64 {
        map.insert(key, Arc::new(key));
    }
    map.insert(n as u64, Arc::new(42_u64));
    map
}

#[inline(never)]
fn imbl_get(key: u64) -> u64 {
    IMBL.with_borrow(|map| {
        map.get(&key)
            .and_then(|value| value.downcast_ref::<u64>())
            .copied()
            .unwrap_or(0)
    })
}

#[inline(never)]
fn imbl_set_reset(key: u64, value: u64) {
    let old = IMBL.with_borrow_mut(|map| map.insert(key, Arc::new(value)));
    IMBL.with_borrow_mut(|map| match old {
        Some(old) => drop(map.insert(key, old)),
        None => drop(map.remove(&key)),
    });
}

/// A persistent insert: the map is shared (as after a copy), so the path is copied.
#[inline(never)]
fn imbl_insert(map: &ImblMap, key: u64, value: u64) {
    let mut new = map.clone();
    new.insert(key, Arc::new(value));
    black_box(&new);
}

#[inline(never)]
fn imbl_copy() {
    let map = IMBL.with_borrow(ImblMap::clone);
    black_box(&map);
}

fn rwlock_store() -> &'static RwLock<HashMap<u64, AnyValue>> {
    static STORE: OnceLock<RwLock<HashMap<u64, AnyValue>>> = OnceLock::new();
    STORE.get_or_init(|| RwLock::new(HashMap::new()))
}

/// Fills the global store like `imbl_shape(n)`.
fn rwlock_fill(n: usize) {
    let mut store = rwlock_store().write().expect("not poisoned");
    store.clear();
    for key in 0..n as u64 {
        store.insert(key, Arc::new(key));
    }
    store.insert(n as u64, Arc::new(42_u64));
}

#[inline(never)]
fn rwlock_get(store: &RwLock<HashMap<u64, AnyValue>>, key: u64) -> u64 {
    let map = store.read().expect("not poisoned");
    map.get(&key)
        .and_then(|value| value.downcast_ref::<u64>())
        .copied()
        .unwrap_or(0)
}

#[inline(never)]
fn rwlock_set_reset(store: &RwLock<HashMap<u64, AnyValue>>, key: u64, value: u64) {
    let old = store
        .write()
        .expect("not poisoned")
        .insert(key, Arc::new(value));
    let mut map = store.write().expect("not poisoned");
    match old {
        Some(old) => drop(map.insert(key, old)),
        None => drop(map.remove(&key)),
    }
}

// ----- floors ------------------------------------------------------------------------------

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

/// As a user scopes it: the static named directly; the value is `black_box`ed.
#[inline(never)]
fn task_local_sync_scope(value: u64) {
    TASK.sync_scope(value, || ());
}

/// `sync_scope` reading its own value inside: the peer of `ours_scope`.
#[inline(never)]
fn task_local_sync_scope_read(value: u64) -> u64 {
    TASK.sync_scope(value, || black_box(TASK.get()))
}

#[inline(never)]
fn arc_clone_drop(arc: &Arc<u64>) {
    let clone = Arc::clone(arc);
    black_box(&clone);
}

// ----- groups ------------------------------------------------------------------------------

fn get(c: &mut Criterion) {
    let mut group = c.benchmark_group("peers_get");
    for n in SIZES {
        let (ctx, var) = shape(n);
        group.bench_function(BenchmarkId::new("contextvars", n), |b| {
            ctx.run(|| {
                assert_eq!(ours_get(var), 42);
                b.iter(|| ours_get(black_box(var)));
            });
        });
        for (target, name) in twins().into_iter().zip(TWIN_NAMES) {
            let (ctx, var) = shape_of(n, target);
            group.bench_function(BenchmarkId::new(format!("contextvars_{name}"), n), |b| {
                ctx.run(|| {
                    assert_eq!(ours_get(var), 42);
                    b.iter(|| ours_get(black_box(var)));
                });
            });
        }
    }
    for n in SIZES {
        let cx = otel_shape(n);
        group.bench_function(BenchmarkId::new("otel_current_get", n), |b| {
            let _guard = cx.clone().attach();
            assert_eq!(otel_current_get(), 42);
            b.iter(otel_current_get);
        });
        group.bench_function(BenchmarkId::new("otel_map_current_get", n), |b| {
            let _guard = cx.clone().attach();
            assert_eq!(otel_map_current_get(), 42);
            b.iter(otel_map_current_get);
        });
    }
    for n in SIZES {
        let map = imbl_shape(n);
        group.bench_function(BenchmarkId::new("imbl_tls", n), |b| {
            IMBL.set(map.clone());
            assert_eq!(imbl_get(n as u64), 42);
            b.iter(|| imbl_get(black_box(n as u64)));
        });
    }
    for n in SIZES {
        group.bench_function(BenchmarkId::new("rwlock_hashmap", n), |b| {
            rwlock_fill(n);
            let store = rwlock_store();
            assert_eq!(rwlock_get(store, n as u64), 42);
            b.iter(|| rwlock_get(black_box(store), black_box(n as u64)));
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
    group.finish();
}

fn set(c: &mut Criterion) {
    let mut group = c.benchmark_group("peers_set");
    for n in SIZES {
        let (ctx, var) = shape(n);
        group.bench_function(BenchmarkId::new("contextvars_set_reset", n), |b| {
            ctx.run(|| {
                b.iter(|| ours_set_reset(black_box(var), black_box(7)));
                assert_eq!(var.get(), 42);
            });
        });
        group.bench_function(BenchmarkId::new("contextvars_scoped_set", n), |b| {
            ctx.run(|| {
                b.iter(|| ours_scoped_set(black_box(var), black_box(7)));
                assert_eq!(var.get(), 42);
            });
        });
        group.bench_function(BenchmarkId::new("contextvars_set_reset_private", n), |b| {
            in_private_shape(n, |var| {
                b.iter(|| ours_set_reset(black_box(var), black_box(7)));
                assert_eq!(var.get(), 42);
            });
        });
        group.bench_function(BenchmarkId::new("contextvars_scoped_set_private", n), |b| {
            in_private_shape(n, |var| {
                b.iter(|| ours_scoped_set(black_box(var), black_box(7)));
                assert_eq!(var.get(), 42);
            });
        });
        for (target, name) in twins().into_iter().zip(TWIN_NAMES) {
            let (ctx, var) = shape_of(n, target);
            group.bench_function(
                BenchmarkId::new(format!("contextvars_set_reset_{name}"), n),
                |b| {
                    ctx.run(|| {
                        b.iter(|| ours_set_reset(black_box(var), black_box(7)));
                        assert_eq!(var.get(), 42);
                    });
                },
            );
            group.bench_function(
                BenchmarkId::new(format!("contextvars_set_reset_private_{name}"), n),
                |b| {
                    in_private_shape_of(n, target, |var| {
                        b.iter(|| ours_set_reset(black_box(var), black_box(7)));
                        assert_eq!(var.get(), 42);
                    });
                },
            );
            group.bench_function(
                BenchmarkId::new(format!("contextvars_scoped_set_private_{name}"), n),
                |b| {
                    in_private_shape_of(n, target, |var| {
                        b.iter(|| ours_scoped_set(black_box(var), black_box(7)));
                        assert_eq!(var.get(), 42);
                    });
                },
            );
        }
    }
    for n in SIZES {
        let cx = otel_shape(n);
        group.bench_function(BenchmarkId::new("otel_attach", n), |b| {
            let _guard = cx.clone().attach();
            b.iter(|| otel_set(black_box(7)));
            assert_eq!(otel_current_get(), 42);
        });
    }
    for n in SIZES {
        let map = imbl_shape(n);
        group.bench_function(BenchmarkId::new("imbl_tls_insert_restore", n), |b| {
            IMBL.set(map.clone());
            b.iter(|| imbl_set_reset(black_box(n as u64), black_box(7)));
            assert_eq!(imbl_get(n as u64), 42);
        });
        group.bench_function(BenchmarkId::new("imbl_insert", n), |b| {
            b.iter(|| imbl_insert(black_box(&map), black_box(n as u64), black_box(7)));
        });
    }
    for n in SIZES {
        group.bench_function(BenchmarkId::new("rwlock_hashmap_insert_restore", n), |b| {
            rwlock_fill(n);
            let store = rwlock_store();
            b.iter(|| rwlock_set_reset(black_box(store), black_box(n as u64), black_box(7)));
            assert_eq!(rwlock_get(store, n as u64), 42);
        });
    }
    group.finish();
}

fn copy(c: &mut Criterion) {
    let mut group = c.benchmark_group("peers_copy");
    for n in SIZES {
        let (ctx, _) = shape(n);
        group.bench_function(BenchmarkId::new("contextvars", n), |b| {
            ctx.run(|| b.iter(ours_copy_drop));
        });
    }
    group.bench_function(BenchmarkId::new("contextvars", BIG), |b| {
        let (ctx, _) = big_shape();
        assert_eq!(ctx.snapshot().len(), BIG + 1);
        ctx.run(|| b.iter(ours_copy_drop));
    });
    for n in SIZES {
        let cx = otel_shape(n);
        group.bench_function(BenchmarkId::new("otel_current", n), |b| {
            let _guard = cx.clone().attach();
            b.iter(otel_copy);
        });
    }
    for n in SIZES.into_iter().chain([BIG]) {
        let map = imbl_shape(n);
        group.bench_function(BenchmarkId::new("imbl_tls_clone", n), |b| {
            IMBL.set(map.clone());
            b.iter(imbl_copy);
        });
    }
    group.bench_function("arc_clone", |b| {
        let arc = Arc::new(42_u64);
        b.iter(|| arc_clone_drop(black_box(&arc)));
    });
    group.finish();
}

fn run(c: &mut Criterion) {
    let mut group = c.benchmark_group("peers_run");
    for n in SIZES {
        let (ctx, _) = shape(n);
        group.bench_function(BenchmarkId::new("contextvars", n), |b| {
            b.iter(|| ours_run(black_box(&ctx)));
        });
    }
    for n in SIZES {
        let cx = otel_shape(n);
        group.bench_function(BenchmarkId::new("otel_attach", n), |b| {
            b.iter(|| otel_attach(black_box(&cx)));
        });
    }
    group.bench_function("tokio_sync_scope", |b| {
        b.iter(|| task_local_sync_scope(black_box(1)));
    });
    group.finish();
}

/// `scope(v, || read)` in the thread's own (private) context, which keeps the binding on
/// the call's stack, inline and boxed, against tokio's `sync_scope(v, || read)`.
fn scope(c: &mut Criterion) {
    let mut group = c.benchmark_group("peers_scope");
    for n in SIZES {
        for (target, name) in twins().into_iter().zip(TWIN_NAMES) {
            group.bench_function(
                BenchmarkId::new(format!("contextvars_private_{name}"), n),
                |b| {
                    in_private_shape_of(n, target, |var| {
                        b.iter(|| ours_scope(black_box(var), black_box(7)));
                        assert_eq!(var.get(), 42);
                    });
                },
            );
        }
    }
    group.bench_function("tokio_sync_scope", |b| {
        b.iter(|| task_local_sync_scope_read(black_box(7)));
    });
    group.finish();
}

fn with_value(c: &mut Criterion) {
    let mut group = c.benchmark_group("peers_with_value");
    for n in SIZES {
        let (ctx, var) = shape(n);
        group.bench_function(BenchmarkId::new("contextvars", n), |b| {
            b.iter(|| ours_with_value(black_box(&ctx), black_box(var), black_box(7)));
        });
    }
    for n in SIZES {
        let cx = otel_shape(n);
        group.bench_function(BenchmarkId::new("otel", n), |b| {
            b.iter(|| otel_with_value(black_box(&cx), black_box(7)));
        });
    }
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
    let mut group = c.benchmark_group("peers_poll");
    let mut cx = TaskContext::from_waker(Waker::noop());
    group.bench_function("bare", |b| {
        let mut future = pin!(Pending(0));
        b.iter(|| poll_once(future.as_mut(), &mut cx));
    });
    for n in [1, 64] {
        let (ctx, _) = shape(n);
        let mut future = pin!(ctx.run(|| Pending(0).in_copied_context()));
        group.bench_function(BenchmarkId::new("contextvars", n), |b| {
            b.iter(|| poll_once(future.as_mut(), &mut cx));
        });
    }
    for n in [1, 64] {
        let otel_cx = otel_shape(n);
        let mut future = pin!(Pending(0).with_context(otel_cx));
        group.bench_function(BenchmarkId::new("otel_with_context", n), |b| {
            b.iter(|| poll_once(future.as_mut(), &mut cx));
        });
    }
    group.bench_function("tokio_task_local", |b| {
        let mut future = pin!(TASK.scope(1, Pending(0)));
        b.iter(|| poll_once(future.as_mut(), &mut cx));
    });
    group.finish();
}

/// Runs `op` `iters` times on each of `threads` threads at once and returns the mean
/// of the threads' times. Each thread first runs `enter`, which wraps the timed loop (to
/// enter a context); the clock starts after all threads have passed a barrier.
fn concurrently<E>(threads: usize, iters: u64, enter: E, op: fn()) -> Duration
where
    E: Fn(&mut dyn FnMut() -> Duration) -> Duration + Sync,
{
    let barrier = Barrier::new(threads);
    let total: Duration = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    enter(&mut || {
                        barrier.wait();
                        let start = Instant::now();
                        for _ in 0..iters {
                            op();
                        }
                        start.elapsed()
                    })
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().expect("bench thread"))
            .sum()
    });
    total / threads as u32
}

fn scaling(c: &mut Criterion) {
    let mut group = c.benchmark_group("peers_scaling");
    let (ctx, var) = shape(8);
    static SCALING_VAR: OnceLock<Var> = OnceLock::new();
    SCALING_VAR.get_or_init(|| var);
    fn get_op() {
        let var = SCALING_VAR.get().expect("set before the group");
        black_box(ours_get(black_box(var)));
    }
    static SHARED_ARC: OnceLock<Arc<u64>> = OnceLock::new();
    fn arc_op() {
        arc_clone_drop(black_box(SHARED_ARC.get_or_init(|| Arc::new(42))));
    }
    // Each thread runs its own copy of one context (a context runs on one thread at a
    // time); the copies share one snapshot, as rayon workers handed the same context do.
    let in_ctx = |timed: &mut dyn FnMut() -> Duration| ctx.copy().run(timed);
    let bare = |timed: &mut dyn FnMut() -> Duration| timed();
    for threads in [1, 2] {
        group.bench_function(BenchmarkId::new("contextvars_get_threads", threads), |b| {
            b.iter_custom(|iters| concurrently(threads, iters, in_ctx, get_op));
        });
        group.bench_function(
            BenchmarkId::new("contextvars_copy_context_threads", threads),
            |b| b.iter_custom(|iters| concurrently(threads, iters, in_ctx, ours_copy_drop)),
        );
        group.bench_function(BenchmarkId::new("arc_clone_threads", threads), |b| {
            b.iter_custom(|iters| concurrently(threads, iters, bare, arc_op));
        });
    }
    group.finish();
}

/// Prints allocations per operation for ours and the peers.
fn print_allocations() {
    println!("Allocations per operation (mean of 1000 calls; a set + reset counts both):");
    let row = |name: &str, n: usize, per_op: f64| println!("  {name:<40} {n:>6} {per_op:>6.2}");
    println!("  {:<40} {:>6} {:>6}", "operation", "n", "allocs");
    for n in [1, 8, 15, 64, 1024] {
        let (ctx, var) = shape(n);
        ctx.run(|| {
            let per_op = allocations_per_op(|| {
                let token = var.set(black_box(7));
                black_box(&token);
                std::mem::forget(token); // not reset: the set alone
            });
            row("contextvars set (no reset)", n, per_op);
        });
        in_private_shape(n, |var| {
            let per_op = allocations_per_op(|| {
                let token = var.set(black_box(7));
                black_box(&token);
                std::mem::forget(token); // not reset: the set alone
            });
            row("contextvars set (no reset), private", n, per_op);
            row(
                "contextvars set + reset, private",
                n,
                allocations_per_op(|| ours_set_reset(var, black_box(7))),
            );
        });
        for (target, name) in twins().into_iter().zip(TWIN_NAMES) {
            in_private_shape_of(n, target, |var| {
                row(
                    &format!("contextvars set + reset, private, {name}"),
                    n,
                    allocations_per_op(|| ours_set_reset(var, black_box(7))),
                );
                row(
                    &format!("contextvars scoped_set, private, {name}"),
                    n,
                    allocations_per_op(|| ours_scoped_set(var, black_box(7))),
                );
            });
            let (ctx, var) = shape_of(n, target);
            ctx.run(|| {
                row(
                    &format!("contextvars set + reset, {name}"),
                    n,
                    allocations_per_op(|| ours_set_reset(var, black_box(7))),
                );
            });
        }
        let (ctx, var) = shape(n);
        ctx.run(|| {
            row(
                "contextvars set + reset",
                n,
                allocations_per_op(|| ours_set_reset(var, black_box(7))),
            );
            row(
                "contextvars copy_context",
                n,
                allocations_per_op(ours_copy_drop),
            );
        });
        row(
            "contextvars ctx.with_value",
            n,
            allocations_per_op(|| ours_with_value(&ctx, var, 7)),
        );
        row(
            "contextvars Context::run(|| ())",
            n,
            allocations_per_op(|| ours_run(&ctx)),
        );
    }
    for n in [1, 8, 64, 1024] {
        let cx = otel_shape(n);
        let _guard = cx.clone().attach();
        row(
            "opentelemetry current_with_value.attach",
            n,
            allocations_per_op(|| otel_set(7)),
        );
        let map = imbl_shape(n);
        row(
            "imbl persistent insert",
            n,
            allocations_per_op(|| imbl_insert(&map, n as u64, 7)),
        );
    }
    println!();
}

// ----- memory per in-flight request ----------------------------------------------------------

static REQ_ID: ContextVar<u64> = contextvars::context_var!(u64, "request_id");
static REQ_TENANT: ContextVar<u64> = contextvars::context_var!(u64, "tenant");
static REQ_DEADLINE: ContextVar<u64> = contextvars::context_var!(u64, "deadline");

tokio::task_local! {
    static TASK_ID: u64;
    static TASK_TENANT: u64;
    static TASK_DEADLINE: u64;
}

#[derive(Debug)]
struct OtelId(#[allow(dead_code)] u64);
#[derive(Debug)]
struct OtelTenant(#[allow(dead_code)] u64);
#[derive(Debug)]
struct OtelDeadline(#[allow(dead_code)] u64);

/// Heap bytes and allocations a request holds while in flight: `start` makes the
/// request's future (which binds 3 values to a context that had none), it is polled once
/// (it then waits), and what was allocated and not freed by then is counted; then it is
/// dropped. Also the future's own size (where an executor keeps it: in the task).
fn in_flight<F: Future<Output = ()>>(start: impl Fn() -> F) -> (i64, u64, usize) {
    let poll_once = || {
        let mut future = pin!(start());
        let mut cx = TaskContext::from_waker(Waker::noop());
        assert!(future.as_mut().poll(&mut cx).is_pending());
        let held = (
            NET_BYTES.load(Ordering::Relaxed),
            ALLOCATIONS.load(Ordering::Relaxed),
            std::mem::size_of_val(&*future),
        );
        ARMED.store(false, Ordering::Relaxed);
        held
    };
    poll_once(); // warm: ids, thread-locals, lazily made statics
    NET_BYTES.store(0, Ordering::Relaxed);
    ALLOCATIONS.store(0, Ordering::Relaxed);
    ARMED.store(true, Ordering::Relaxed);
    poll_once()
}

/// Prints the memory a request holds while in flight, for ours and the peers.
fn print_request_memory() {
    println!(
        "Memory per in-flight request (3 values bound in a request that started from an empty context):"
    );
    println!(
        "  {:<58} {:>10} {:>7} {:>12}",
        "request", "heap bytes", "allocs", "future bytes"
    );
    let row = |name: &str, (bytes, allocs, size): (i64, u64, usize)| {
        println!("  {name:<58} {bytes:>10} {allocs:>7} {size:>12}");
    };
    row(
        "contextvars: in_copied_context, 3 sets in the task",
        in_flight(|| {
            Context::new().run(|| {
                async {
                    drop(REQ_ID.set(black_box(7)));
                    drop(REQ_TENANT.set(black_box(3)));
                    drop(REQ_DEADLINE.set(black_box(1_000)));
                    std::future::pending::<()>().await;
                }
                .in_copied_context()
            })
        }),
    );
    row(
        "contextvars: Context::with_value x3, in_context",
        in_flight(|| {
            let ctx = Context::new()
                .with_value(&REQ_ID, black_box(7))
                .with_value(&REQ_TENANT, black_box(3))
                .with_value(&REQ_DEADLINE, black_box(1_000));
            std::future::pending::<()>().in_context(&ctx)
        }),
    );
    row(
        "tokio task_local!: 3 nested scopes",
        in_flight(|| {
            TASK_ID.scope(
                black_box(7),
                TASK_TENANT.scope(
                    black_box(3),
                    TASK_DEADLINE.scope(black_box(1_000), std::future::pending::<()>()),
                ),
            )
        }),
    );
    row(
        "opentelemetry: Context with 3 values, with_context",
        in_flight(|| {
            let cx = OtelContext::new()
                .with_value(OtelId(black_box(7)))
                .with_value(OtelTenant(black_box(3)))
                .with_value(OtelDeadline(black_box(1_000)));
            std::future::pending::<()>().with_context(cx)
        }),
    );
    println!();
}

criterion_group!(
    benches, get, set, copy, run, scope, with_value, poll, scaling
);

fn main() {
    // `cargo bench` passes `--bench`; the allocation counts are printed only in a bench
    // run (not when `cargo test --benches` smoke-tests the harness).
    if std::env::args().any(|arg| arg == "--bench") {
        print_allocations();
        print_request_memory();
    }
    let started = std::time::SystemTime::now();
    benches();
    Criterion::default().configure_from_args().final_summary();
    summary::print(
        started,
        &[
            (
                "peers_get",
                &["peers_get/thread_local", "peers_get/tokio_task_local"],
            ),
            ("peers_set", &[]),
            ("peers_copy", &["peers_copy/arc_clone"]),
            ("peers_run", &["peers_run/tokio_sync_scope"]),
            ("peers_scope", &["peers_scope/tokio_sync_scope"]),
            ("peers_with_value", &[]),
            (
                "peers_poll",
                &["peers_poll/bare", "peers_poll/tokio_task_local"],
            ),
            ("peers_scaling", &[]),
        ],
    );
}
