//! The design question behind `sync::SnapshotCell`: keep a context's published snapshot
//! in `arc_swap::ArcSwapOption<T>`, or in an `AtomicPtr` with crossbeam-epoch
//! reclamation?
//!
//! arc-swap won, and still holds the observation registry's slots (several writers).
//! A context object's snapshot has one writer at a time (the holder of its entered
//! flag) and has since moved to `sync::PublishCell`, whose store is O(1) where
//! arc-swap's walks every thread's debt slots: `benches/instructions.rs` measures that
//! through the public API (`set_reset_in_run`, with and without 8 threads that loaded
//! the context), since the cell is not public.
//!
//! ```text
//! cargo bench --bench cells
//! cargo bench --bench cells -- --warm-up-time 1 --measurement-time 2   # quick
//! ```
//!
//! Both cells offer what `Context` needs from its cell:
//!
//! * `load_full`: an owned `Arc` clone of the current value (`Context::copy`, `snapshot`,
//!   and `run` entering it, possibly from another thread),
//! * `swap`: publish a new `Arc` and hand back the old one (every `set` in a running
//!   context, by the thread running it),
//! * `store`: publish without handing back.
//!
//! Groups: `uncontended/*` with no other thread; `background_reader/*` while a second
//! thread loads from the same cell in a loop (on the 2-core machines that thread has a
//! core to itself).

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use arc_swap::ArcSwapOption;
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, criterion_group, criterion_main};
use crossbeam_epoch::{self as epoch, Atomic, Owned, Shared};

/// The payload: the size of a small snapshot root does not matter to either cell, which
/// only ever touches the `Arc`'s reference count.
type Payload = [u64; 4];

/// An `Option<Arc<T>>` cell on crossbeam-epoch: an atomic pointer to a heap node that
/// holds one `Arc<T>`. Readers clone the inner `Arc` while pinned; a writer swaps in a new
/// node and defers destroying the old one (and so dropping its `Arc`) until no pinned
/// reader can still see it.
struct EpochCell<T> {
    ptr: Atomic<Arc<T>>,
}

impl<T> EpochCell<T> {
    fn new(value: Option<Arc<T>>) -> Self {
        Self {
            ptr: match value {
                Some(arc) => Atomic::new(arc),
                None => Atomic::null(),
            },
        }
    }

    fn load_full(&self) -> Option<Arc<T>> {
        let guard = epoch::pin();
        // Acquire pairs with the AcqRel swap that published the node: the node's `Arc`
        // is initialised before we read it.
        let shared = self.ptr.load(Ordering::Acquire, &guard);
        // SAFETY: `shared` is null or a node published by `new`/`swap`. A node is only
        // destroyed through `defer_destroy` after it was unlinked, or in `Drop` (which has
        // `&mut self`, so no reader exists), so it is alive while `guard` is pinned.
        unsafe { shared.as_ref() }.cloned()
    }

    /// Replaces the node; returns the unlinked one (null for none) for the caller to
    /// retire while `guard` is pinned.
    fn replace<'g>(&self, value: Option<Arc<T>>, guard: &'g epoch::Guard) -> Shared<'g, Arc<T>> {
        // AcqRel: Release publishes the new node to `load_full`'s Acquire; Acquire makes
        // the old node's contents (written by the previous swap) visible to us.
        match value {
            Some(arc) => self.ptr.swap(Owned::new(arc), Ordering::AcqRel, guard),
            None => self.ptr.swap(Shared::null(), Ordering::AcqRel, guard),
        }
    }

    fn swap(&self, value: Option<Arc<T>>) -> Option<Arc<T>> {
        let guard = epoch::pin();
        let old = self.replace(value, &guard);
        // SAFETY: `old` was the published node until the swap above, so it is alive
        // while `guard` is pinned (see `load_full`).
        let previous = unsafe { old.as_ref() }.cloned();
        if !old.is_null() {
            // SAFETY: `old` is unlinked, so no new reader can reach it; readers that
            // already did are pinned, and the destruction waits for them.
            unsafe { guard.defer_destroy(old) };
        }
        previous
    }

    fn store(&self, value: Option<Arc<T>>) {
        let guard = epoch::pin();
        let old = self.replace(value, &guard);
        if !old.is_null() {
            // SAFETY: as in `swap`.
            unsafe { guard.defer_destroy(old) };
        }
    }
}

impl<T> Drop for EpochCell<T> {
    fn drop(&mut self) {
        // SAFETY: `&mut self`: no reader holds this cell, so nothing can still reach the
        // node, and no pin is needed to free it now.
        unsafe {
            let guard = epoch::unprotected();
            let node = self.ptr.load(Ordering::Relaxed, guard);
            if !node.is_null() {
                drop(node.into_owned());
            }
        }
    }
}

/// The two contenders behind one face, so each row runs the same loop.
trait Cell: Send + Sync + 'static {
    const NAME: &'static str;
    fn new(value: Option<Arc<Payload>>) -> Self;
    fn load_full(&self) -> Option<Arc<Payload>>;
    fn swap(&self, value: Option<Arc<Payload>>) -> Option<Arc<Payload>>;
    fn store(&self, value: Option<Arc<Payload>>);
}

impl Cell for ArcSwapOption<Payload> {
    const NAME: &'static str = "arc_swap";
    fn new(value: Option<Arc<Payload>>) -> Self {
        ArcSwapOption::new(value)
    }
    #[inline(never)]
    fn load_full(&self) -> Option<Arc<Payload>> {
        ArcSwapOption::load_full(self)
    }
    #[inline(never)]
    fn swap(&self, value: Option<Arc<Payload>>) -> Option<Arc<Payload>> {
        ArcSwapOption::swap(self, value)
    }
    #[inline(never)]
    fn store(&self, value: Option<Arc<Payload>>) {
        ArcSwapOption::store(self, value)
    }
}

impl Cell for EpochCell<Payload> {
    const NAME: &'static str = "epoch";
    fn new(value: Option<Arc<Payload>>) -> Self {
        EpochCell::new(value)
    }
    #[inline(never)]
    fn load_full(&self) -> Option<Arc<Payload>> {
        EpochCell::load_full(self)
    }
    #[inline(never)]
    fn swap(&self, value: Option<Arc<Payload>>) -> Option<Arc<Payload>> {
        EpochCell::swap(self, value)
    }
    #[inline(never)]
    fn store(&self, value: Option<Arc<Payload>>) {
        EpochCell::store(self, value)
    }
}

/// Runs `f` while another thread loads from `cell` in a loop (if `background`).
fn with_reader<C: Cell, R>(cell: &C, background: bool, f: impl FnOnce() -> R) -> R {
    if !background {
        return f();
    }
    let stop = AtomicBool::new(false);
    let running = AtomicBool::new(false);
    thread::scope(|scope| {
        scope.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                black_box(cell.load_full());
                running.store(true, Ordering::Relaxed);
            }
        });
        // Measure only once the reader is really loading (criterion calls this once per
        // sample, some with very few iterations).
        while !running.load(Ordering::Relaxed) {
            std::hint::spin_loop();
        }
        let result = f();
        stop.store(true, Ordering::Relaxed);
        result
    })
}

#[derive(Clone, Copy)]
enum Op {
    Load,
    Swap,
    Store,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Load => "load",
            Op::Swap => "swap",
            Op::Store => "store",
        }
    }
}

fn row<C: Cell>(group: &mut BenchmarkGroup<'_, WallTime>, op: Op, background: bool) {
    let a = Arc::new([1, 2, 3, 4]);
    let b = Arc::new([5, 6, 7, 8]);
    group.bench_function(format!("{}/{}", op.name(), C::NAME), |bencher| {
        let cell = C::new(Some(a.clone()));
        with_reader(&cell, background, || match op {
            Op::Load => bencher.iter(|| black_box(black_box(&cell).load_full())),
            // Alternate two values, so each write really changes the cell; the old value
            // is handed back and dropped (never the last reference).
            Op::Swap => {
                let mut flip = false;
                bencher.iter(|| {
                    flip = !flip;
                    let next = if flip { &b } else { &a };
                    black_box(black_box(&cell).swap(Some(Arc::clone(next))))
                });
            }
            Op::Store => {
                let mut flip = false;
                bencher.iter(|| {
                    flip = !flip;
                    let next = if flip { &b } else { &a };
                    black_box(&cell).store(Some(Arc::clone(next)));
                });
            }
        });
    });
}

fn rows(c: &mut Criterion, background: bool) {
    let mut group = c.benchmark_group(if background {
        "background_reader"
    } else {
        "uncontended"
    });
    for op in [Op::Load, Op::Swap, Op::Store] {
        row::<ArcSwapOption<Payload>>(&mut group, op, background);
        row::<EpochCell<Payload>>(&mut group, op, background);
    }
    group.finish();
}

/// The epoch cell is hand-written for this bench: check it once before measuring.
fn sanity() {
    let one = Arc::new([1; 4]);
    let two = Arc::new([2; 4]);
    let cell = EpochCell::new(None);
    assert!(cell.load_full().is_none());
    assert!(cell.swap(Some(one.clone())).is_none());
    assert!(Arc::ptr_eq(&cell.load_full().unwrap(), &one));
    assert!(Arc::ptr_eq(&cell.swap(Some(two.clone())).unwrap(), &one));
    cell.store(None);
    assert!(cell.load_full().is_none());
    drop(cell);
    // Deferred destructions run eventually; flush them and check nothing leaked.
    for _ in 0..1000 {
        epoch::pin().flush();
        if Arc::strong_count(&one) == 1 && Arc::strong_count(&two) == 1 {
            return;
        }
    }
    panic!("epoch cell leaked its Arcs");
}

fn checked(c: &mut Criterion) {
    sanity();
    rows(c, false);
    rows(c, true);
}

criterion_group!(benches, checked);
criterion_main!(benches);
