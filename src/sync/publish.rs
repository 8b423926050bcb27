//! `PublishCell`: the snapshot a context object shows to every thread, replaced by one
//! writer at a time (the holder of the object's entered flag) in O(1).
//!
//! arc-swap, which held it before, is built for many writers: each store walks every
//! thread's debt slots to pay the debts on the value it replaces, so a publication cost
//! grew with the number of threads that had ever loaded through arc-swap (about 1,100
//! instructions more per set with 8 such threads). Here a store is a `swap` and one
//! read-modify-write of a counter word, whatever the number of threads, and a load is
//! lock-free.
//!
//! **The protocol.** The cell holds the pointer of `Arc::into_raw` (null for `None`) and
//! one counter word: two counts of loads in progress and a *phase* bit that says which
//! of the two new loads join.
//!
//! * A load counts itself in to the current phase's count (if the phase changed under
//!   it, it counts itself out and in again), loads the pointer, counts one more reference
//!   on the value, and counts itself out.
//! * A replacement swaps the pointer, then reads the counter word with a
//!   read-modify-write (which reads its latest value). With both counts at 0, no load
//!   that could have read the old pointer is still between its load and its increment,
//!   so the old value goes back to the caller to release. Otherwise the cell keeps it,
//!   with a note of which counts have read 0 since its swap; it goes back to a caller
//!   once both have. Nothing waits, on either side.
//! * **Phases keep that bounded.** While loads keep coming, the current phase's count
//!   may never be 0 at a replacement. So a replacement that finds the current count busy
//!   and the other one at 0 switches the phase: new loads then join the other count, and
//!   the busy one only loses the loads already in flight. At the next replacements each
//!   count is 0 in turn, and what the cell kept goes back, however steady the loads.
//!   Only a load stalled between its first and last step (a preempted thread) holds
//!   values back, and only while it stalls. A frame that ends without publishing hands
//!   back what it can ([`PublishCell::reclaim`]); the cell's drop releases the rest.
//!
//! Why a count of 0 is enough. Every access to the counter word is a read-modify-write,
//! so all of them sit in one modification order, and each reads the one before it. Take
//! a load that counted itself in to count `c` (the phase its read-modify-write returned
//! was `c`), and a replacement's later read of the word that finds count `c` at 0:
//!
//! * If the load counted itself in before that read, a count of 0 means it also counted
//!   itself out before it. The read (`Acquire`) then reads the load's decrement
//!   (`Release`) or a later read-modify-write in its release sequence, so the load's
//!   reference count increment happens before the value is released. The value is never
//!   freed under a load.
//! * If the read came first, the load's increment (`Acquire`) reads the replacement's
//!   read (`Release`) or a later read-modify-write: the swap happens before the load's
//!   read of the pointer, which therefore sees the new value or a later one, never the
//!   old.
//!
//! A load holding the old value is in one of the two counts, so a value is released
//! only once *each* count has been read at 0 after its swap. Only acquire and release
//! orderings are used (loom models `SeqCst` as `AcqRel`: the cell's first version read
//! the count with a `SeqCst` load, a store-buffering pattern that is right in C++'s model
//! and that loom reported as a use after free).
//!
//! `loom-tests/tests/handoff.rs` checks the protocol within the CI's preemption bound:
//! `reader_sees_whole_snapshots` runs the real cell (loom's `Arc` reports an increment
//! of a released value), `publish_counts_loads_in_progress` runs a stand-in with
//! reference counts of its own (one load against three replacements, with the phase
//! switch), and the canary `canary_publish_without_load_count` shows that a replacement
//! that ignores the counts frees a value under a load.

use std::marker::PhantomData;
use std::ptr;

use super::{Arc, AtomicPtr, AtomicU64, Ordering, arc_clone_raw};

/// The counter word's phase bit: which count new loads join.
const PHASE: u64 = 1 << 63;
/// One load, in the count of phase 0 (bits 0 to 31) or 1 (bits 32 to 62).
const ONE: [u64; 2] = [1, 1 << 32];
/// The count of each phase, as a mask of the counter word.
const COUNT: [u64; 2] = [0xFFFF_FFFF, 0x7FFF_FFFF << 32];

/// The phase a counter word names.
fn phase_of(word: u64) -> usize {
    usize::from(word & PHASE != 0)
}

/// A cell holding an optional `Arc<T>` that any thread loads lock-free while one writer
/// at a time replaces it: the published snapshot of a context object, whose writer is
/// the holder of its entered flag.
pub struct PublishCell<T> {
    /// `Arc::into_raw` of the value, null for `None`. The cell owns that count.
    current: AtomicPtr<T>,
    /// The phase bit and the two counts of loads in progress (see the module docs).
    loading: AtomicU64,
    /// Replaced values that a load may still be about to count, each with the counts
    /// read at 0 since its swap: owned by the cell and touched only by the writer
    /// ([`replace`](Self::replace), [`reclaim`](Self::reclaim)) and by `Drop`. Boxed, so
    /// that the cell is three words on 64-bit targets (it is in every context object)
    /// and its usual emptiness costs no allocation.
    #[allow(clippy::box_collection)] // the `Box` keeps the cell's field one word
    kept: WriterOnly<Option<Box<Vec<Kept<T>>>>>,
    /// Owns `Arc<T>`s: `Send` and drop checking follow `Arc<T>`'s.
    _owns: PhantomData<Arc<T>>,
}

/// A value the cell keeps after replacing it.
struct Kept<T> {
    value: Arc<T>,
    /// Bit `c` is set once count `c` was read at 0 after the value was swapped out.
    zero_since: u8,
}

/// Both counts read at 0: the value may be released.
const BOTH_ZERO: u8 = 0b11;

// SAFETY: a `&PublishCell` lets any thread `load` (atomics, then an `Arc<T>` clone, which
// needs `T: Send + Sync` as `Arc<T>: Send` does); `replace` and `reclaim` are `unsafe`,
// with their callers serialised by a happens-before chain, so `kept` is never accessed
// concurrently.
unsafe impl<T: Send + Sync> Sync for PublishCell<T> {}
// SAFETY: the cell owns `Arc<T>`s, which may be sent when `T: Send + Sync`.
unsafe impl<T: Send + Sync> Send for PublishCell<T> {}

/// What a [`PublishCell::replace`] gives back for the caller to release.
pub struct Replaced<T> {
    /// The value replaced, or `None` if the cell kept it (or held `None`).
    pub old: Option<Arc<T>>,
    /// Values the cell kept before and may release now (usually none: no allocation).
    pub earlier: Vec<Arc<T>>,
}

impl<T> PublishCell<T> {
    pub fn new(value: Option<Arc<T>>) -> Self {
        Self {
            current: AtomicPtr::new(into_ptr(value)),
            loading: AtomicU64::new(0),
            kept: WriterOnly::new(None),
            _owns: PhantomData,
        }
    }

    /// An owned copy of the current value, from any thread, lock-free.
    #[inline]
    pub fn load(&self) -> Option<Arc<T>> {
        let phase = self.count_in();
        // Acquire: pairs with the swap's `Release`, so the value's contents are visible.
        let ptr = self.current.load(Ordering::Acquire);
        // SAFETY: a non-null pointer came from `Arc::into_raw`, and the value is alive:
        // a replacement that swaps it out releases it only after both counts were read
        // at 0 after the swap, which the count this load is in cannot be until the
        // decrement below (module docs).
        let value = (!ptr.is_null()).then(|| unsafe { arc_clone_raw(ptr.cast_const()) });
        // Release: pairs with a replacement's `AcqRel` read of the counts: the increment
        // above happens before the old value is released.
        self.loading.fetch_sub(ONE[phase], Ordering::Release);
        value
    }

    /// Counts a load in to the current phase's count; returns the phase.
    #[inline]
    fn count_in(&self) -> usize {
        // Relaxed: only a guess, which the read-modify-write below checks.
        let mut phase = phase_of(self.loading.load(Ordering::Relaxed));
        loop {
            // Acquire: pairs with a replacement's `AcqRel` read of the counts, so that a
            // swap made before that read is seen by the load of the pointer (module docs).
            let word = self.loading.fetch_add(ONE[phase], Ordering::Acquire);
            let now = phase_of(word);
            if now == phase {
                return phase;
            }
            // The phase changed since the guess: out of the old count, into the new one.
            // Relaxed: nothing was loaded under this count.
            self.loading.fetch_sub(ONE[phase], Ordering::Relaxed);
            phase = now;
        }
    }

    /// Stores `value` and hands back what may be released now (see [`Replaced`]); a
    /// value replaced while a load is in progress is kept until both counts have been
    /// read at 0 (module docs).
    ///
    /// # Safety
    ///
    /// Replacements and [`reclaim`](Self::reclaim)s of one cell are serialised: each
    /// happens before the next (the callers hold the context object's entered flag,
    /// handed on with `Release` and taken with `Acquire`, or are the frame that holds it,
    /// moved between threads by an executor, which orders the moves).
    #[inline]
    pub unsafe fn replace(&self, value: Option<Arc<T>>) -> Replaced<T> {
        // Release: publishes the new value's contents to the loads' `Acquire`.
        let old = self.current.swap(into_ptr(value), Ordering::Release);
        // SAFETY: a non-null pointer came from `Arc::into_raw`; the cell owned that count
        // and holds the pointer no more.
        let old = (!old.is_null()).then(|| unsafe { Arc::from_raw(old.cast_const()) });
        // A read-modify-write, not a load: it reads the latest counts. Acquire pairs with
        // each load's `Release` decrement; Release (after the swap in program order)
        // pairs with each later load's `Acquire` increment (module docs).
        let word = self.loading.fetch_add(0, Ordering::AcqRel);
        // SAFETY: `kept` is the writer's: replacements are serialised (this function's
        // contract), and `Drop` has `&mut self`.
        let nothing_kept = unsafe { self.kept.with_mut(|kept| kept.is_none()) };
        if word & !PHASE == 0 && nothing_kept {
            return Replaced {
                old,
                earlier: Vec::new(),
            };
        }
        // SAFETY: as above.
        let earlier = unsafe { self.settle(old, word) };
        Replaced { old: None, earlier }
    }

    /// Hands back what the cell kept and may release now; with nothing kept (the usual
    /// case), a test and no atomic operation. For a frame that ends without publishing,
    /// so that what it replaced is not kept until the context's next publication.
    ///
    /// # Safety
    ///
    /// As for [`replace`](Self::replace).
    #[inline]
    pub unsafe fn reclaim(&self) -> Vec<Arc<T>> {
        // SAFETY: the writer's (this function's contract).
        if unsafe { self.kept.with_mut(|kept| kept.is_none()) } {
            return Vec::new();
        }
        // Acquire and Release as in `replace`.
        let word = self.loading.fetch_add(0, Ordering::AcqRel);
        // SAFETY: the writer's (this function's contract).
        unsafe { self.settle(None, word) }
    }

    /// Keeps `old` (if any), notes the counts read at 0 in `word` (a read made after
    /// every kept value's swap), switches the phase if the current count is busy and the
    /// other one is not, and hands back every value both counts were read at 0 for.
    ///
    /// # Safety
    ///
    /// The writer's: as for [`replace`](Self::replace).
    #[cold]
    #[inline(never)]
    unsafe fn settle(&self, old: Option<Arc<T>>, word: u64) -> Vec<Arc<T>> {
        // SAFETY: the writer's (this function's contract).
        unsafe {
            self.kept.with_mut(|slot| {
                let kept = slot.get_or_insert_default();
                kept.extend(old.map(|value| Kept {
                    value,
                    zero_since: 0,
                }));
                note_zero_counts(kept, word);
                let phase = phase_of(word);
                if word & COUNT[phase] != 0 && word & COUNT[1 - phase] == 0 {
                    // New loads join the idle count; the busy one only loses the loads
                    // in flight. The switch's read of the counts is one more read after
                    // every swap: AcqRel as in `replace`.
                    let word = self.loading.fetch_xor(PHASE, Ordering::AcqRel);
                    note_zero_counts(kept, word);
                }
                let (free, still): (Vec<_>, Vec<_>) = std::mem::take(&mut **kept)
                    .into_iter()
                    .partition(|kept| kept.zero_since == BOTH_ZERO);
                **kept = still;
                if kept.is_empty() {
                    *slot = None;
                }
                free.into_iter().map(|kept| kept.value).collect()
            })
        }
    }
}

/// Notes, on every kept value, the counts that `word` (read after their swaps) shows at
/// 0.
fn note_zero_counts<T>(kept: &mut [Kept<T>], word: u64) {
    for (phase, count) in COUNT.into_iter().enumerate() {
        if word & count == 0 {
            for value in kept.iter_mut() {
                value.zero_since |= 1 << phase;
            }
        }
    }
}

impl<T> Drop for PublishCell<T> {
    fn drop(&mut self) {
        // `&mut self`: no load or replacement is in progress, and whatever made the last
        // replacement happened before this drop (it handed the cell over to us).
        let ptr = self.current.swap(ptr::null_mut(), Ordering::Relaxed);
        if !ptr.is_null() {
            // SAFETY: the pointer came from `Arc::into_raw`, and the cell owned that count.
            drop(unsafe { Arc::from_raw(ptr.cast_const()) });
        }
        // SAFETY: `&mut self`, as above.
        drop(unsafe { self.kept.with_mut(Option::take) });
    }
}

/// The cell's count of `value`, as a pointer (null for `None`).
fn into_ptr<T>(value: Option<Arc<T>>) -> *mut T {
    value.map_or(ptr::null_mut(), |value| Arc::into_raw(value).cast_mut())
}

/// A value only ever touched by one party at a time, by contract: loom's `UnsafeCell` in
/// loom builds (so the models check that contract), std's otherwise.
struct WriterOnly<T>(
    #[cfg(not(loom))] std::cell::UnsafeCell<T>,
    #[cfg(loom)] loom::cell::UnsafeCell<T>,
);

impl<T> WriterOnly<T> {
    fn new(value: T) -> Self {
        #[cfg(not(loom))]
        return Self(std::cell::UnsafeCell::new(value));
        #[cfg(loom)]
        return Self(loom::cell::UnsafeCell::new(value));
    }

    /// # Safety
    ///
    /// No other access to the value is in progress, and each access happens before the
    /// next.
    #[inline]
    unsafe fn with_mut<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        #[cfg(not(loom))]
        // SAFETY: exclusive by the contract.
        return f(unsafe { &mut *self.0.get() });
        #[cfg(loom)]
        // SAFETY: exclusive by the contract, which loom checks.
        return self.0.with_mut(|value| f(unsafe { &mut *value }));
    }
}

#[cfg(test)]
impl<T> PublishCell<T> {
    /// Counts a load in until the guard drops, as a load between its count and its
    /// increment would: the next replacements must keep what they replace.
    pub(crate) fn hold_load(&self) -> impl Drop + '_ {
        struct Held<'a>(&'a AtomicU64, usize);
        impl Drop for Held<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(ONE[self.1], Ordering::Release);
            }
        }
        Held(&self.loading, self.count_in())
    }

    /// How many values the cell keeps.
    pub(crate) fn kept(&self) -> usize {
        // SAFETY: tests call this from the writer's thread, between its replacements.
        unsafe {
            self.kept
                .with_mut(|kept| kept.as_ref().map_or(0, |kept| kept.len()))
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::PublishCell;
    use crate::sync::Arc;

    /// Counts its drops in the counter it points to.
    struct Dropped<'a>(&'a AtomicUsize);

    impl Drop for Dropped<'_> {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn a_replacement_during_a_load_is_kept_until_the_counts_read_0() {
        let drops = AtomicUsize::new(0);
        let cell = PublishCell::new(Some(Arc::new(Dropped(&drops))));
        let held = cell.hold_load();
        // SAFETY: one writer, this thread.
        let first = unsafe { cell.replace(Some(Arc::new(Dropped(&drops)))) };
        assert!(first.old.is_none(), "kept: a load may be about to count it");
        assert!(first.earlier.is_empty());
        // SAFETY: one writer, this thread.
        let second = unsafe { cell.replace(Some(Arc::new(Dropped(&drops)))) };
        assert!(second.old.is_none() && second.earlier.is_empty());
        assert_eq!(cell.kept(), 2);
        assert_eq!(
            drops.load(Ordering::Relaxed),
            0,
            "nothing released under a load"
        );
        drop(held);
        // SAFETY: one writer, this thread.
        let third = unsafe { cell.replace(None) };
        assert_eq!(
            third.old.iter().count() + third.earlier.len(),
            3,
            "no load in progress: the replaced value, with the two kept before"
        );
        assert_eq!(cell.kept(), 0);
        drop(third);
        assert_eq!(drops.load(Ordering::Relaxed), 3);
        assert!(cell.load().is_none());
    }

    /// Loads that never stop (one always in progress, each in the phase current when it
    /// started) do not make the cell keep more and more: switching phases lets each count
    /// reach 0 in turn.
    #[test]
    fn steady_loads_do_not_make_the_cell_keep_more() {
        let drops = AtomicUsize::new(0);
        let cell = PublishCell::new(Some(Arc::new(Dropped(&drops))));
        let mut in_progress = cell.hold_load();
        for round in 1..=20 {
            // SAFETY: one writer, this thread.
            drop(unsafe { cell.replace(Some(Arc::new(Dropped(&drops)))) });
            assert!(cell.kept() <= 2, "round {round}: {} kept", cell.kept());
            let next = cell.hold_load();
            drop(std::mem::replace(&mut in_progress, next));
        }
        assert!(drops.load(Ordering::Relaxed) >= 18, "released as it went");
        drop(in_progress);
        // SAFETY: one writer, this thread.
        let reclaimed = unsafe { cell.reclaim() };
        drop(reclaimed);
        assert_eq!(
            cell.kept(),
            0,
            "a reclaim with no load in progress hands all back"
        );
        assert_eq!(drops.load(Ordering::Relaxed), 20);
    }

    #[test]
    #[cfg(target_pointer_width = "64")] // the counter word is 64 bits everywhere
    fn the_cell_is_three_words() {
        assert_eq!(
            std::mem::size_of::<PublishCell<u64>>(),
            3 * std::mem::size_of::<usize>()
        );
    }

    #[test]
    fn the_cell_releases_what_it_kept_when_it_drops() {
        let drops = AtomicUsize::new(0);
        let cell = PublishCell::new(Some(Arc::new(Dropped(&drops))));
        let held = cell.hold_load();
        // SAFETY: one writer, this thread.
        let replaced = unsafe { cell.replace(Some(Arc::new(Dropped(&drops)))) };
        assert!(replaced.old.is_none());
        assert_eq!(cell.kept(), 1);
        drop(held);
        assert_eq!(drops.load(Ordering::Relaxed), 0);
        drop(cell);
        assert_eq!(
            drops.load(Ordering::Relaxed),
            2,
            "the current value and the kept one"
        );
    }

    /// Loads race a writer on other threads: every load sees a whole value, and every
    /// value is released exactly once (miri and the sanitizers run this too).
    #[test]
    fn loads_race_replacements() {
        // Scaled down under miri, which runs the threads' interleavings slowly.
        const VALUES: usize = if cfg!(miri) { 10 } else { 40 };
        let drops = AtomicUsize::new(0);
        let cell = PublishCell::new(Some(Arc::new((0usize, Dropped(&drops)))));
        std::thread::scope(|scope| {
            for _ in 0..2 {
                scope.spawn(|| {
                    let mut last = 0;
                    for _ in 0..VALUES {
                        let value = cell.load().expect("never None").0;
                        assert!(value >= last, "values appear in the writer's order");
                        last = value;
                    }
                });
            }
            let mut kept = Vec::new();
            for n in 1..=VALUES {
                // SAFETY: one writer, this thread.
                let replaced = unsafe { cell.replace(Some(Arc::new((n, Dropped(&drops))))) };
                kept.extend(replaced.old);
                kept.extend(replaced.earlier);
            }
            drop(kept);
        });
        drop(cell);
        assert_eq!(drops.load(Ordering::Relaxed), VALUES + 1);
    }
}
