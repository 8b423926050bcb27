//! Memory per pending request, 100,000 at a time (the issue on memory per request): the
//! live heap and the resident set each request task holds while it waits, ours against
//! tokio's `task_local!` and opentelemetry's `Context`.
//!
//! A request binds 3 values: a `u64` id, an `Arc<str>` name and an `Instant` deadline.
//! Ours are `static`s declared with `context_var!`, so the id is stored inline in the
//! snapshot (no allocation of its own) and the other two are boxed (one allocation each).
//! Each contender spawns N tasks on a tokio current-thread runtime; each task binds its
//! request's values its contender's way, counts its first poll, and then waits forever on
//! `std::future::pending()`. Once every task has been polled once, the live heap (bytes and
//! allocations, from a counting global allocator that is always armed) and the resident
//! set (`VmRSS` in `/proc/self/status`) are read again, and the growth since the runtime
//! was built, divided by N, is the row. Contenders:
//!
//! * `bare task`: a task that only counts its poll and waits. Its row is what tokio itself
//!   spends per task (the task cell, the future's state, the run queue's slot), so the
//!   "beyond bare" columns, the row minus this one, are what carrying the request's
//!   values costs.
//! * ours, 3 `set`s inside a task wrapped with `in_copied_context` (a copy of the empty
//!   context current at the spawn; the wrapper is what lets a task `set` at all, since a
//!   plain tokio task runs in the worker's own context, where a `set` is refused).
//! * ours, `Context::new().with_value(..)` three times, the task wrapped with
//!   `in_context(&ctx)`.
//! * tokio `task_local!`: 3 nested `scope`s.
//! * opentelemetry: `Context::new().with_value(..)` three times, `FutureExt::with_context`.
//! * "at 64 parent values": the same request made from a parent context that already
//!   holds 64 values (64 `u64`s; one parent shared by every task), for ours (`with_value`
//!   and `in_context`, and 3 `set`s in a task spawned with `in_copied_context` inside
//!   `parent.run`) and for opentelemetry (64 distinct value types, as its map is keyed by
//!   type).
//!
//! Each contender runs in a child process of its own (this binary, re-run with an
//! environment variable naming the contender), so the resident set of one is not memory
//! that the allocator kept from the one before. In the child a warm-up round of a few
//! tasks comes first (variable ids, thread-locals and the shared parents are made once
//! per process, not per task). After the measurement the runtime is dropped, which drops
//! every task, and the live heap is compared with its value before the runtime was built:
//! anything left over is printed as a leak. Last, the child spawns one more task on a
//! fresh runtime with the allocator logging, and lists the sizes of the allocations that
//! task still holds once polled (the task cell is the one tokio makes; the rest are the
//! request's values and the context that carries them), to show where the bytes go.
//!
//! ```text
//! cargo bench --all-features --bench memory          # 100,000 tasks per contender
//! cargo bench --all-features --bench memory -- --test  # smoke run: 1,000 tasks
//! ```
//!
//! `cargo test --benches` runs it with 1,000 tasks too. RSS is page-granular and includes
//! the allocator's own overhead (chunk headers, size classes, fragmentation), so it is
//! above the heap column; at 1,000 tasks it is mostly noise.

use std::alloc::{GlobalAlloc, Layout, System};
use std::future::{Future, pending};
use std::hint::black_box;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use contextvars::future::ContextFutureExt;
use contextvars::{Context, ContextVar, copy_context};
use opentelemetry::Context as OtelContext;
use opentelemetry::context::FutureExt as _;

/// Tasks per contender in a bench run (`cargo bench` passes `--bench`).
const TASKS: usize = 100_000;
/// Tasks per contender in a smoke run (`-- --test`, or `cargo test --benches`).
const SMOKE_TASKS: usize = 1_000;
/// Tasks in the warm-up round a child runs before it measures.
const WARM_TASKS: usize = 16;
/// Values in the parent context of the "at 64 parent values" rows.
const PARENT_VALUES: usize = 64;
/// The environment variable that makes this binary a child measuring one contender.
const CHILD_CONTENDER: &str = "CONTEXTVARS_MEMORY_CONTENDER";
/// The environment variable that gives a child its number of tasks.
const CHILD_TASKS: &str = "CONTEXTVARS_MEMORY_TASKS";
/// The prefix of the line in which a child reports its figures to the parent.
const RESULT_PREFIX: &str = "memory-result";
/// The prefix of the line in which a child lists one task's allocation sizes.
const SIZES_PREFIX: &str = "memory-sizes";

// ----- allocation counting -----------------------------------------------------------------

/// Counts live heap bytes and live allocations, always (the cost is two relaxed atomic
/// adds per call, the same for every contender).
struct Counting;

/// Bytes allocated minus bytes freed, since the process started.
static LIVE_BYTES: AtomicI64 = AtomicI64::new(0);
/// Allocations made minus allocations freed, since the process started.
static LIVE_ALLOCS: AtomicI64 = AtomicI64::new(0);

/// Whether allocations and frees are being logged (for one task, to list its allocations).
static TRACING: AtomicBool = AtomicBool::new(false);
/// Room in the log, in events.
const TRACE_CAPACITY: usize = 1024;
/// The log: per event, the address, and the size (negative for a free).
static TRACE: [(AtomicUsize, AtomicI64); TRACE_CAPACITY] =
    [const { (AtomicUsize::new(0), AtomicI64::new(0)) }; TRACE_CAPACITY];
/// Events logged (may exceed the capacity; the excess is dropped).
static TRACE_LEN: AtomicUsize = AtomicUsize::new(0);

/// Logs an allocation (`size > 0`) or a free (`size < 0`) at `ptr`, if tracing.
fn trace(ptr: *mut u8, size: i64) {
    if TRACING.load(Ordering::Relaxed) {
        let i = TRACE_LEN.fetch_add(1, Ordering::Relaxed);
        if let Some((addr, bytes)) = TRACE.get(i) {
            addr.store(ptr as usize, Ordering::Relaxed);
            bytes.store(size, Ordering::Relaxed);
        }
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as i64, Ordering::Relaxed);
        LIVE_ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded from our caller, who upholds `GlobalAlloc::alloc`'s contract.
        let ptr = unsafe { System.alloc(layout) };
        trace(ptr, layout.size() as i64);
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as i64, Ordering::Relaxed);
        LIVE_ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as for `alloc`.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        trace(ptr, layout.size() as i64);
        ptr
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        trace(ptr, -(layout.size() as i64));
        // SAFETY: `ptr` came from this allocator (hence from `System`) with `layout`.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        trace(new, new_size as i64);
        new
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        LIVE_ALLOCS.fetch_sub(1, Ordering::Relaxed);
        trace(ptr, -(layout.size() as i64));
        // SAFETY: `ptr` came from this allocator (hence from `System`) with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// The counting allocator, for the whole process.
#[global_allocator]
static GLOBAL: Counting = Counting;

/// The resident set size in bytes (`VmRSS` of `/proc/self/status`), if the platform has
/// one to read.
fn rss_bytes() -> Option<i64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: i64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Live heap bytes, live allocations and resident bytes at one moment.
#[derive(Clone, Copy, Debug)]
struct Reading {
    /// Live heap bytes.
    bytes: i64,
    /// Live allocations.
    allocs: i64,
    /// Resident set size in bytes (`-1` where it cannot be read).
    rss: i64,
}

impl Reading {
    /// Reads the counters and the resident set now.
    fn now() -> Self {
        Reading {
            bytes: LIVE_BYTES.load(Ordering::Relaxed),
            allocs: LIVE_ALLOCS.load(Ordering::Relaxed),
            rss: rss_bytes().unwrap_or(-1),
        }
    }
}

// ----- the request's values ----------------------------------------------------------------

contextvars::context_var! {
    /// The request's id (ours): a `static` of a `Copy + Eq` type that fits a word, so its
    /// values are stored inline in the snapshot (no allocation of its own).
    static ID: u64 as "request_id";
    /// The request's name (ours): boxed (an `Arc<str>` is not `Copy`).
    static NAME: Arc<str> as "request_name";
    /// The request's deadline (ours): boxed (an `Instant` is two words).
    static DEADLINE: Instant as "deadline";
}

tokio::task_local! {
    /// The request's id (tokio).
    static TASK_ID: u64;
    /// The request's name (tokio).
    static TASK_NAME: Arc<str>;
    /// The request's deadline (tokio).
    static TASK_DEADLINE: Instant;
}

/// The request's id (opentelemetry, whose values are keyed by type).
#[derive(Debug)]
struct OtelId(#[allow(dead_code)] u64);
/// The request's name (opentelemetry).
#[derive(Debug)]
struct OtelName(#[allow(dead_code)] Arc<str>);
/// The request's deadline (opentelemetry).
#[derive(Debug)]
struct OtelDeadline(#[allow(dead_code)] Instant);
/// One of the 64 values of opentelemetry's parent context: one type per value.
#[derive(Debug)]
struct OtelParentValue<const I: usize>(#[allow(dead_code)] u64);

/// The request's id, different for every task.
fn request_id(task: usize) -> u64 {
    black_box(task as u64)
}

/// The request's name: a fresh `Arc<str>` per task, as a request would parse it.
fn request_name() -> Arc<str> {
    Arc::from(black_box("GET /api/orders"))
}

/// Our parent context: 64 values, of 64 variables made (and leaked) once.
fn our_parent() -> &'static Context {
    static PARENT: OnceLock<Context> = OnceLock::new();
    PARENT.get_or_init(|| {
        let mut ctx = Context::new();
        for i in 0..PARENT_VALUES {
            let var: &'static ContextVar<u64> =
                Box::leak(Box::new(contextvars::context_var!(u64, "parent")));
            ctx = ctx.with_value(var, i as u64);
        }
        assert_eq!(ctx.snapshot().len(), PARENT_VALUES);
        ctx
    })
}

/// Opentelemetry's context with one value of each listed `OtelParentValue` type.
macro_rules! otel_parent {
    ($($i:literal)*) => {
        OtelContext::new()$(.with_value(OtelParentValue::<$i>($i)))*
    };
}

/// Opentelemetry's parent context: 64 values of 64 types, made once.
fn otel_parent() -> &'static OtelContext {
    static PARENT: OnceLock<OtelContext> = OnceLock::new();
    PARENT.get_or_init(|| {
        otel_parent!(
            0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31
            32 33 34 35 36 37 38 39 40 41 42 43 44 45 46 47 48 49 50 51 52 53 54 55 56 57 58 59
            60 61 62 63
        )
    })
}

// ----- the tasks ---------------------------------------------------------------------------

/// Tasks that have had their first poll.
static POLLED: AtomicUsize = AtomicUsize::new(0);

/// What every task does once its request's values are bound: counts its first poll and
/// waits forever.
async fn wait() {
    POLLED.fetch_add(1, Ordering::Relaxed);
    pending::<()>().await;
}

/// Ours, 3 `set`s inside the task, which runs in a copy of the current context.
async fn set_three(task: usize) {
    drop(ID.set(request_id(task)));
    drop(NAME.set(request_name()));
    drop(DEADLINE.set(Instant::now()));
    wait().await;
}

/// Ours, the request's 3 values bound on `base` with `Context::with_value`.
fn with_request(base: &Context, task: usize) -> Context {
    base.with_value(&ID, request_id(task))
        .with_value(&NAME, request_name())
        .with_value(&DEADLINE, Instant::now())
}

/// Opentelemetry's, the request's 3 values bound on `base` with `Context::with_value`.
fn otel_with_request(base: &OtelContext, task: usize) -> OtelContext {
    base.with_value(OtelId(request_id(task)))
        .with_value(OtelName(request_name()))
        .with_value(OtelDeadline(Instant::now()))
}

/// One contender: a name for the table and a way to spawn one request task on `rt`.
struct Contender {
    /// The row's name (and the child's argument).
    name: &'static str,
    /// Spawns task number `task` on the runtime; returns the size of its future.
    spawn: fn(&tokio::runtime::Runtime, usize) -> usize,
}

/// Spawns `future` on `rt` (detached) and returns its size: the task cell holds it.
fn spawn_sized<F: Future<Output = ()> + Send + 'static>(
    rt: &tokio::runtime::Runtime,
    future: F,
) -> usize {
    let size = size_of_val(&future);
    drop(rt.spawn(future));
    size
}

/// The contenders, in table order; the first is the bare task the others are compared to.
const CONTENDERS: &[Contender] = &[
    Contender {
        name: "bare task (pending only)",
        spawn: |rt, _| spawn_sized(rt, wait()),
    },
    Contender {
        name: "contextvars: 3 sets in task, in_copied_context",
        spawn: |rt, task| {
            debug_assert!(copy_context().snapshot().is_empty());
            spawn_sized(rt, set_three(task).in_copied_context())
        },
    },
    Contender {
        name: "contextvars: Context::with_value x3, in_context",
        spawn: |rt, task| {
            let ctx = with_request(&Context::new(), task);
            spawn_sized(rt, wait().in_context(&ctx))
        },
    },
    Contender {
        name: "tokio task_local!: 3 nested scopes",
        spawn: |rt, task| {
            spawn_sized(
                rt,
                TASK_ID.scope(
                    request_id(task),
                    TASK_NAME.scope(request_name(), TASK_DEADLINE.scope(Instant::now(), wait())),
                ),
            )
        },
    },
    Contender {
        name: "opentelemetry: Context::with_value x3, with_context",
        spawn: |rt, task| {
            spawn_sized(
                rt,
                wait().with_context(otel_with_request(&OtelContext::new(), task)),
            )
        },
    },
    Contender {
        name: "64 parent values, contextvars: with_value x3, in_context",
        spawn: |rt, task| {
            let ctx = with_request(our_parent(), task);
            spawn_sized(rt, wait().in_context(&ctx))
        },
    },
    Contender {
        name: "64 parent values, contextvars: 3 sets in task, in_copied_context",
        spawn: |rt, task| {
            let future = our_parent().run(|| set_three(task).in_copied_context());
            spawn_sized(rt, future)
        },
    },
    Contender {
        name: "64 parent values, opentelemetry: with_value x3, with_context",
        spawn: |rt, task| {
            spawn_sized(
                rt,
                wait().with_context(otel_with_request(otel_parent(), task)),
            )
        },
    },
];

/// What a child measured for its contender, in totals over its tasks.
#[derive(Clone, Debug)]
struct Measured {
    /// Growth of the live heap, in bytes, while the tasks were pending.
    bytes: i64,
    /// Growth of the live allocations.
    allocs: i64,
    /// Growth of the resident set, in bytes (`None` where it cannot be read).
    rss: Option<i64>,
    /// Live heap after the runtime was dropped, minus before it was built.
    left_after_drop: i64,
    /// Size of one task's future, in bytes.
    future_size: usize,
    /// The sizes of the allocations one task holds, in the order they were made.
    sizes: Vec<i64>,
}

/// Builds a current-thread runtime, spawns `tasks` tasks of `contender`, runs it until
/// every task has been polled once, reads the memory, then drops the runtime.
fn run_round(contender: &Contender, tasks: usize) -> Measured {
    let start = Reading::now();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime");
    POLLED.store(0, Ordering::Relaxed);
    let before = Reading::now();
    let mut future_size = 0;
    for task in 0..tasks {
        future_size = (contender.spawn)(&rt, task);
    }
    rt.block_on(async {
        while POLLED.load(Ordering::Relaxed) < tasks {
            tokio::task::yield_now().await;
        }
    });
    let after = Reading::now();
    drop(rt);
    let dropped = Reading::now();
    Measured {
        bytes: after.bytes - before.bytes,
        allocs: after.allocs - before.allocs,
        rss: (before.rss >= 0 && after.rss >= 0).then_some(after.rss - before.rss),
        left_after_drop: dropped.bytes - start.bytes,
        future_size,
        sizes: Vec::new(),
    }
}

/// The sizes of the heap allocations that one task of `contender`, spawned on a fresh
/// runtime and polled once, holds (in the order they were made): what its bytes are.
fn one_task_allocations(contender: &Contender) -> Vec<i64> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime");
    POLLED.store(0, Ordering::Relaxed);
    TRACE_LEN.store(0, Ordering::Relaxed);
    TRACING.store(true, Ordering::Relaxed);
    (contender.spawn)(&rt, 0);
    rt.block_on(async {
        while POLLED.load(Ordering::Relaxed) < 1 {
            tokio::task::yield_now().await;
        }
    });
    TRACING.store(false, Ordering::Relaxed);
    let logged = TRACE_LEN.load(Ordering::Relaxed);
    assert!(
        logged <= TRACE_CAPACITY,
        "{logged} allocation events overflow the log"
    );
    let events: Vec<(usize, i64)> = TRACE[..logged]
        .iter()
        .map(|(addr, size)| (addr.load(Ordering::Relaxed), size.load(Ordering::Relaxed)))
        .collect();
    let live = events
        .iter()
        .enumerate()
        .filter(|&(i, &(addr, size))| {
            size > 0 && !events[i + 1..].iter().any(|&(a, s)| a == addr && s < 0)
        })
        .map(|(_, &(_, size))| size)
        .collect();
    drop(rt);
    live
}

/// The child's work: a warm-up round, then the measured round; prints the result line.
fn child(name: &str, tasks: usize) {
    let contender = CONTENDERS
        .iter()
        .find(|contender| contender.name == name)
        .expect("a known contender");
    run_round(contender, WARM_TASKS);
    let m = run_round(contender, tasks);
    println!(
        "{RESULT_PREFIX} {} {} {} {} {}",
        m.bytes,
        m.allocs,
        m.rss.unwrap_or(i64::MIN),
        m.left_after_drop,
        m.future_size
    );
    let sizes: Vec<String> = one_task_allocations(contender)
        .iter()
        .map(i64::to_string)
        .collect();
    println!("{SIZES_PREFIX} {}", sizes.join(" "));
}

/// Runs `contender` in a child process with `tasks` tasks and parses what it reports.
fn measure_in_child(contender: &Contender, tasks: usize) -> Measured {
    let exe = std::env::current_exe().expect("this bench's path");
    let output = Command::new(exe)
        .env(CHILD_CONTENDER, contender.name)
        .env(CHILD_TASKS, tasks.to_string())
        .output()
        .expect("the child runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "child for {:?} failed: {}\n{}",
        contender.name,
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let line = stdout
        .lines()
        .find_map(|line| line.strip_prefix(RESULT_PREFIX))
        .expect("the child's result line");
    let fields: Vec<i64> = line
        .split_whitespace()
        .map(|field| field.parse().expect("a number"))
        .collect();
    let [bytes, allocs, rss, left_after_drop, future_size] = fields[..] else {
        panic!("malformed result line: {line:?}");
    };
    let sizes = stdout
        .lines()
        .find_map(|line| line.strip_prefix(SIZES_PREFIX))
        .expect("the child's sizes line")
        .split_whitespace()
        .map(|size| size.parse().expect("a number"))
        .collect();
    Measured {
        bytes,
        allocs,
        rss: (rss != i64::MIN).then_some(rss),
        left_after_drop,
        future_size: future_size as usize,
        sizes,
    }
}

/// Measures every contender and prints the table.
fn parent(tasks: usize) {
    println!("Memory per pending request task, {tasks} tasks per contender (one process each):");
    println!();
    println!(
        "| contender | heap B/task | allocs/task | RSS B/task | heap beyond bare | RSS beyond bare | future B |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let per_task = |total: i64| total as f64 / tasks as f64;
    let rss_cell = |rss: Option<f64>| rss.map_or_else(|| "n/a".to_owned(), |r| format!("{r:.0}"));
    let mut bare: Option<(i64, Option<i64>)> = None;
    let mut leftovers = Vec::new();
    let mut allocations = Vec::new();
    for contender in CONTENDERS {
        let m = measure_in_child(contender, tasks);
        let (base_bytes, base_rss) = *bare.get_or_insert((m.bytes, m.rss));
        let rss = m.rss.map(per_task);
        let rss_beyond = m.rss.zip(base_rss).map(|(r, b)| per_task(r - b));
        println!(
            "| {} | {:.1} | {:.2} | {} | {:.1} | {} | {} |",
            contender.name,
            per_task(m.bytes),
            per_task(m.allocs),
            rss_cell(rss),
            per_task(m.bytes - base_bytes),
            rss_cell(rss_beyond),
            m.future_size,
        );
        leftovers.push((contender.name, m.left_after_drop));
        allocations.push((contender.name, m.sizes));
    }
    println!();
    println!("Live heap after dropping the runtime, minus before building it (0: nothing leaked):");
    for (name, left) in leftovers {
        println!("  {name:<66} {left:>8} B");
    }
    println!();
    println!("The allocations one task holds once polled (bytes each, in the order made):");
    for (name, sizes) in allocations {
        let total: i64 = sizes.iter().sum();
        let sizes: Vec<String> = sizes.iter().map(i64::to_string).collect();
        println!("  {name:<66} {total:>6} = {}", sizes.join(" + "));
    }
    println!();
}

fn main() {
    if let Ok(name) = std::env::var(CHILD_CONTENDER) {
        let tasks = std::env::var(CHILD_TASKS)
            .ok()
            .and_then(|tasks| tasks.parse().ok())
            .expect("the number of tasks");
        child(&name, tasks);
        return;
    }
    // `cargo bench` passes `--bench`; `-- --test` (CI's smoke run) and `cargo test
    // --benches` (no `--bench`) get the small run.
    let args: Vec<String> = std::env::args().collect();
    let bench = args.iter().any(|arg| arg == "--bench") && !args.iter().any(|arg| arg == "--test");
    parent(if bench { TASKS } else { SMOKE_TASKS });
}
