//! Snapshots crossing threads: readers of a running context, reclamation, and the
//! capture / install / restore protocol that hands a snapshot to other work.
//!
//! * `reader_sees_whole_snapshots`: one thread runs a context and sets and resets two
//!   variables inside it, while another reads and copies the context through a shared
//!   handle. Every read is a whole snapshot of the owner's program order: old or new,
//!   never torn, never freed (loom's `Arc` and cell checks would report it).
//! * `every_value_dropped_exactly_once`: values bound in a context, its copies and a
//!   task's snapshot are dropped exactly once, whichever thread drops the last handle, and
//!   loom's leak check finds nothing left.
//! * `task_snapshot_hand_off`: the future wrapper captures the context on one thread, a
//!   second thread (standing in for an executor worker with its own state) installs it
//!   for a poll and restores its own, and a third polls it again: the task keeps its
//!   `set`s, no thread sees another's state. This is the protocol every propagation form
//!   uses (rayon jobs install a borrowed snapshot the same way, as a light frame).
//!
//! * `publish_counts_loads_in_progress`: a stand-in of `PublishCell`'s protocol (the
//!   cell a context object publishes its snapshot in: one writer at a time, O(1)
//!   stores, two counts of loads in progress and a phase bit): a load that is in
//!   progress while the writer replaces the value three times (switching phases as it
//!   goes) never counts a released value, and every value is released exactly once.
//!
//! Canaries (`#[ignore]`, must FAIL): the same hand-off through stand-ins with a
//! deliberately too weak ordering (`Relaxed` publication of a snapshot, `Relaxed`
//! hand-off flag), and a `PublishCell` whose replacement ignores the count of loads in
//! progress. `.ci/run loom` runs them and fails if one passes.

#[cfg(loom)]
mod tests {
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::atomic::AtomicUsize as StdAtomicUsize;
    use std::task::{Context as TaskContext, Poll, Waker};

    use contextvars::future::ContextFutureExt;
    use contextvars::{Context, ContextVar, copy_context};
    use loom::cell::UnsafeCell;
    use loom::sync::Arc;
    use loom::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
    use loom::thread;
    use loom_tests::model;

    static A: ContextVar<u32> = contextvars::context_var!(u32, "a");
    static B: ContextVar<u32> = contextvars::context_var!(u32, "b");

    #[test]
    fn reader_sees_whole_snapshots() {
        model("reader_sees_whole_snapshots", || {
            let ctx = Arc::new(Context::new());
            let owner = {
                let ctx = ctx.clone();
                thread::spawn(move || {
                    ctx.run(|| {
                        let a = A.set(1);
                        let b = B.set(2);
                        B.reset(b).unwrap();
                        A.reset(a).unwrap();
                        drop(A.set(3));
                    });
                })
            };
            // The owner's program order gives these snapshots, in this order:
            // {} -> {a:1} -> {a:1,b:2} -> {a:1} -> {} -> {a:3}.
            let allowed = [
                (None, None),
                (Some(1), None),
                (Some(1), Some(2)),
                (Some(3), None),
            ];
            let snapshot = ctx.snapshot(); // one load: both reads from one snapshot
            let seen = (snapshot.get(&A).copied(), snapshot.get(&B).copied());
            assert!(allowed.contains(&seen), "torn snapshot {seen:?}");
            let copy = ctx.copy();
            let seen_copy = (
                copy.snapshot().get(&A).cloned(),
                copy.snapshot().get(&B).cloned(),
            );
            assert!(allowed.contains(&seen_copy), "torn copy {seen_copy:?}");
            owner.join().unwrap();
            assert_eq!(
                (
                    ctx.snapshot().get(&A).cloned(),
                    ctx.snapshot().get(&B).cloned()
                ),
                (Some(3), None)
            );
        });
    }

    /// Counts drops of the values it wraps (a std counter: it lives outside the model).
    struct Counted(std::sync::Arc<StdAtomicUsize>);

    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    static TRACKED: ContextVar<Counted> = contextvars::context_var!(Counted, "tracked");

    #[test]
    fn every_value_dropped_exactly_once() {
        model("every_value_dropped_exactly_once", || {
            let drops = std::sync::Arc::new(StdAtomicUsize::new(0));
            let ctx = Arc::new(Context::new().with_value(&TRACKED, Counted(drops.clone())));
            let worker = {
                let (ctx, drops) = (ctx.clone(), drops.clone());
                thread::spawn(move || {
                    // Replaces the first value in the object; copies made before keep it.
                    ctx.run(|| drop(TRACKED.set(Counted(drops))));
                })
            };
            let copy = ctx.copy(); // old or new value, depending on the interleaving
            let task = ctx.copy().run(|| async {}.in_copied_context());
            drop(ctx);
            worker.join().unwrap();
            assert_eq!(copy.snapshot().len(), 1);
            drop(copy);
            drop(task);
            // Both values are gone once the last handle anywhere is: dropped once each.
            assert_eq!(drops.load(std::sync::atomic::Ordering::Relaxed), 2);
        });
    }

    /// Pending on its first poll (waking itself), ready on the second; reads `A` and sets
    /// it in between.
    struct Step(u8);

    impl Future for Step {
        type Output = u32;
        fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<u32> {
            self.0 += 1;
            if self.0 == 1 {
                assert_eq!(A.get(), 1, "first poll sees the captured value");
                drop(A.set(2)); // stays in the task
                cx.waker().wake_by_ref();
                Poll::Pending
            } else {
                Poll::Ready(A.get())
            }
        }
    }

    fn poll_once<F: Future + Unpin>(future: &mut F) -> Poll<F::Output> {
        let mut cx = TaskContext::from_waker(Waker::noop());
        Pin::new(future).poll(&mut cx)
    }

    #[test]
    fn task_snapshot_hand_off() {
        model("task_snapshot_hand_off", || {
            // Capture on this thread, from a context whose snapshot the task then shares.
            let ctx = Arc::new(copy_context());
            ctx.run(|| drop(A.set(1)));
            let task = ctx.copy().run(|| Box::pin(Step(0).in_copied_context()));
            let slot = Arc::new(loom::sync::Mutex::new(Some(task)));
            // A worker with its own state polls it once.
            let worker = {
                let slot = slot.clone();
                thread::spawn(move || {
                    drop(A.set(9));
                    let mut task = slot.lock().unwrap().take().unwrap();
                    assert!(poll_once(&mut task).is_pending());
                    assert_eq!(A.get(), 9, "the worker's own state is restored");
                    *slot.lock().unwrap() = Some(task);
                })
            };
            // Meanwhile this thread drops the context the snapshot came from (a reference
            // count race with the worker's reads), and its own state is untouched.
            assert_eq!(ctx.snapshot().get(&A).cloned(), Some(1));
            drop(ctx);
            assert!(!A.is_set());
            worker.join().unwrap();
            // A third thread finishes it: the task kept its own set.
            let finisher = thread::spawn(move || {
                let mut task = slot.lock().unwrap().take().unwrap();
                let result = poll_once(&mut task);
                assert!(!A.is_set(), "the finisher's own state is restored");
                result
            });
            assert_eq!(finisher.join().unwrap(), Poll::Ready(2));
        });
    }

    // ---- Canaries: stand-ins for the hand-off with orderings that are too weak.

    /// A snapshot published through a pointer-like index: `data` is written, then
    /// `published` is set; a reader that sees `published` reads `data`.
    struct Publication {
        data: UnsafeCell<u32>,
        published: AtomicBool,
    }

    fn publication_model(name: &str, store: Ordering, load: Ordering) {
        model(name, move || {
            let p = Arc::new(Publication {
                data: UnsafeCell::new(0),
                published: AtomicBool::new(false),
            });
            let writer = {
                let p = p.clone();
                thread::spawn(move || {
                    p.data.with_mut(|d| unsafe { *d = 42 });
                    p.published.store(true, store);
                })
            };
            if p.published.load(load) {
                let value = p.data.with(|d| unsafe { *d });
                assert_eq!(value, 42);
            }
            writer.join().unwrap();
        });
    }

    /// The twin of the canary: Release publication, Acquire read (what arc-swap's store
    /// and load, and the thread spawn/join edges of the hand-off, provide).
    #[test]
    fn publication_release_acquire() {
        publication_model(
            "publication_release_acquire",
            Ordering::Release,
            Ordering::Acquire,
        );
    }

    #[test]
    #[ignore = "canary: must fail (run by .ci/run loom)"]
    fn canary_publication_relaxed() {
        publication_model(
            "canary_publication_relaxed",
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// A job handed to a worker through a flag: the worker waits for `ready`, then
    /// installs the captured snapshot (reads `captured`).
    fn hand_off_model(name: &str, ready_store: Ordering, ready_load: Ordering) {
        model(name, move || {
            let captured = Arc::new((UnsafeCell::new(0u32), AtomicUsize::new(0)));
            let worker = {
                let captured = captured.clone();
                thread::spawn(move || {
                    while captured.1.load(ready_load) == 0 {
                        thread::yield_now();
                    }
                    captured.0.with(|v| unsafe { *v })
                })
            };
            captured.0.with_mut(|v| unsafe { *v = 7 });
            captured.1.store(1, ready_store);
            assert_eq!(worker.join().unwrap(), 7);
        });
    }

    /// A value of the [`publish_model`] stand-in: its reference count, never freed for
    /// real (a count that goes from 0 back up is the use after free).
    struct Refs {
        refs: AtomicUsize,
    }

    /// The counter word's phase bit, and one load in each phase's count (as in
    /// `src/sync/publish.rs`).
    const PHASE: u64 = 1 << 63;
    const ONE: [u64; 2] = [1, 1 << 32];
    const COUNT: [u64; 2] = [0xFFFF_FFFF, 0x7FFF_FFFF << 32];

    fn phase_of(word: u64) -> usize {
        usize::from(word & PHASE != 0)
    }

    /// The stand-in of `PublishCell` (`src/sync/publish.rs`), on indices into `values`
    /// instead of `Arc` pointers: a reader loads the current value and counts a
    /// reference on it while the writer replaces it three times, keeping what it
    /// replaced until each count was read at 0 after the swap (`honour_counts`), and
    /// switching the phase when the current count is busy and the other idle.
    struct PublishStandIn {
        values: [Refs; 4],
        current: AtomicUsize,
        loading: AtomicU64,
    }

    impl PublishStandIn {
        fn release(&self, index: usize) {
            let before = self.values[index].refs.fetch_sub(1, Ordering::AcqRel);
            assert!(before > 0, "value {index} released twice");
        }

        /// `PublishCell::load`'s steps.
        fn load(&self) {
            let mut phase = phase_of(self.loading.load(Ordering::Relaxed));
            loop {
                let word = self.loading.fetch_add(ONE[phase], Ordering::Acquire);
                if phase_of(word) == phase {
                    break;
                }
                self.loading.fetch_sub(ONE[phase], Ordering::Relaxed);
                phase = phase_of(word);
            }
            let index = self.current.load(Ordering::Acquire);
            let before = self.values[index].refs.fetch_add(1, Ordering::Relaxed);
            assert!(before > 0, "a load counted value {index} after its release");
            self.loading.fetch_sub(ONE[phase], Ordering::Release);
            self.release(index); // the reader's own reference, done with
        }
    }

    /// Notes the counts `word` shows at 0 on every kept value (index, counts seen at 0).
    fn note_zero_counts(kept: &mut [(usize, u8)], word: u64) {
        for (phase, count) in COUNT.into_iter().enumerate() {
            if word & count == 0 {
                kept.iter_mut().for_each(|(_, zero)| *zero |= 1 << phase);
            }
        }
    }

    fn publish_model(name: &str, honour_counts: bool) {
        model(name, move || {
            let cell = Arc::new(PublishStandIn {
                // Each value starts with the one reference its publisher owns.
                values: [0, 1, 2, 3].map(|_| Refs {
                    refs: AtomicUsize::new(1),
                }),
                current: AtomicUsize::new(0),
                loading: AtomicU64::new(0),
            });
            let reader = {
                let cell = cell.clone();
                thread::spawn(move || cell.load())
            };
            let mut kept: Vec<(usize, u8)> = Vec::new();
            let settle = |kept: &mut Vec<(usize, u8)>, word: u64| {
                note_zero_counts(kept, word);
                let phase = phase_of(word);
                if word & COUNT[phase] != 0 && word & COUNT[1 - phase] == 0 {
                    let word = cell.loading.fetch_xor(PHASE, Ordering::AcqRel);
                    note_zero_counts(kept, word);
                }
                kept.retain(|&(index, zero)| {
                    let free = zero == 0b11 || !honour_counts;
                    if free {
                        cell.release(index);
                    }
                    !free
                });
            };
            for next in 1..4 {
                let old = cell.current.swap(next, Ordering::Release);
                let word = cell.loading.fetch_add(0, Ordering::AcqRel);
                kept.push((old, 0));
                settle(&mut kept, word);
            }
            reader.join().unwrap();
            // No load in progress: a reclaim hands everything back.
            let word = cell.loading.fetch_add(0, Ordering::AcqRel);
            settle(&mut kept, word);
            assert!(kept.is_empty(), "kept after every load ended: {kept:?}");
            let refs: Vec<usize> = cell
                .values
                .iter()
                .map(|value| value.refs.load(Ordering::Relaxed))
                .collect();
            assert_eq!(
                refs,
                [0, 0, 0, 1],
                "only the current value is still counted"
            );
        });
    }

    /// The twin of the canary: the protocol `PublishCell` follows.
    #[test]
    fn publish_counts_loads_in_progress() {
        publish_model("publish_counts_loads_in_progress", true);
    }

    /// A replacement that releases the old value without reading the counts of loads in
    /// progress frees it under a load.
    #[test]
    #[ignore = "canary: must fail (run by .ci/run loom)"]
    fn canary_publish_without_load_count() {
        publish_model("canary_publish_without_load_count", false);
    }

    #[test]
    fn hand_off_release_acquire() {
        hand_off_model(
            "hand_off_release_acquire",
            Ordering::Release,
            Ordering::Acquire,
        );
    }

    #[test]
    #[ignore = "canary: must fail (run by .ci/run loom)"]
    fn canary_hand_off_relaxed() {
        hand_off_model(
            "canary_hand_off_relaxed",
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }
}
