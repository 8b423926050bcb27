//! The cost of cross-thread observation (`contextvars::observe`) to the observed threads:
//! set + reset and `Context::run`, with publication off and on, in the same run.
//!
//! ```text
//! cargo bench --bench observe                                            # full run
//! cargo bench --bench observe -- --warm-up-time 1 --measurement-time 2   # quick
//! ```
//!
//! Rows: `<group>/off` with publication off (the default: one relaxed load per change),
//! `<group>/on` with publication on and nobody reading, and `<group>/on_read` with
//! publication on while a second thread calls `observe::threads()` in a loop (on the
//! 2-core machines that thread has a core to itself). The summary printed at the end
//! gives each row's ratio to `off`.
//!
//! Every contender is called through its own `#[inline(never)]` function with
//! `black_box`ed inputs, as in `benches/ops.rs`.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use contextvars::{Context, ContextVar, observe};
use criterion::{BenchmarkGroup, Criterion, criterion_group, measurement::WallTime};

#[path = "support/summary.rs"]
mod summary;

static TARGET: ContextVar<u64> = contextvars::context_var!(u64, "target");
static OTHER: ContextVar<u64> = contextvars::context_var!(u64, "other");

// ----- contenders ------------------------------------------------------------------------

#[inline(never)]
fn set_reset(var: &ContextVar<u64>, value: u64) {
    let token = var.set(value);
    var.reset(token).unwrap();
}

#[inline(never)]
fn run(ctx: &Context) -> u64 {
    ctx.run(|| black_box(1))
}

// ----- harness -----------------------------------------------------------------------------

/// A thread reading every thread's published context in a loop until dropped.
struct BackgroundReader {
    stop: Arc<AtomicBool>,
    handle: Option<thread::JoinHandle<u64>>,
}

impl BackgroundReader {
    fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let handle = thread::spawn({
            let stop = stop.clone();
            move || {
                let mut seen = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    seen += black_box(observe::threads()).len() as u64;
                }
                seen
            }
        });
        Self {
            stop,
            handle: Some(handle),
        }
    }
}

impl Drop for BackgroundReader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.handle.take() {
            black_box(handle.join().unwrap());
        }
    }
}

/// Runs `routine` three times: publication off, on, and on with a background reader.
fn contenders(group: &mut BenchmarkGroup<'_, WallTime>, mut routine: impl FnMut()) {
    observe::disable();
    group.bench_function("off", |b| b.iter(&mut routine));
    observe::enable();
    group.bench_function("on", |b| b.iter(&mut routine));
    let reader = BackgroundReader::start();
    group.bench_function("on_read", |b| b.iter(&mut routine));
    drop(reader);
    observe::disable();
}

fn bench_set_reset(c: &mut Criterion) {
    let mut group = c.benchmark_group("set_reset");
    // In the thread's own context (a private frame, as in `benches/ops.rs`), which
    // already binds another variable, as a request handler's would.
    let other = OTHER.set(7);
    contenders(&mut group, || set_reset(black_box(&TARGET), black_box(42)));
    OTHER.reset(other).unwrap();
    group.finish();
}

fn bench_run(c: &mut Criterion) {
    let mut group = c.benchmark_group("run");
    let ctx = Context::new().with_value(&TARGET, 42).with_value(&OTHER, 7);
    contenders(&mut group, || {
        black_box(run(black_box(&ctx)));
    });
    group.finish();
}

criterion_group!(benches, bench_set_reset, bench_run);

fn main() {
    let started = std::time::SystemTime::now();
    benches();
    Criterion::default().configure_from_args().final_summary();
    summary::print(
        started,
        &[("set_reset", &["set_reset/off"]), ("run", &["run/off"])],
    );
}
