//! `PublishCell`: the snapshot a context object shows to every thread, replaced by one
//! writer at a time (the holder of the object's entered flag) in O(1).
//!
//! arc-swap, which held it before, is built for many writers: each store walks every
//! thread's debt slots to pay the debts on the value it replaces, so a publication cost
//! grew with the number of threads that had ever loaded through arc-swap (388 of a set
//! and reset's 2,369 instructions with one such thread). Here a store is one `swap` and
//! one load, whatever the number of threads, and a load stays lock-free.
//!
//! **The protocol.** The cell holds the pointer of `Arc::into_raw` (null for `None`) and
//! a count of loads in progress:
//!
//! * a load counts itself in (`loading += 1`), loads the pointer, counts one more
//!   reference on the value, and counts itself out;
//! * a replacement swaps the pointer, then reads the count (with a read-modify-write,
//!   which reads the latest count). At 0, no load that could
//!   have read the old pointer is still between its load and its increment, so the old
//!   value (and every value deferred before it) goes back to the caller to release.
//!   Otherwise the old value is deferred: the cell keeps it until a later replacement
//!   reads 0, or until the cell drops. Nothing waits, on either side.
//!
//! Why a count of 0 is enough. Every access to the count is a read-modify-write (the
//! replacement reads it with `fetch_add(0)`), so all of them sit in one modification
//! order, and each reads the one before it. Take a load and a replacement:
//!
//! * If the load counted itself in before the replacement read the count, a read of 0
//!   means the load also counted itself out before it. The replacement's read
//!   (`Acquire`) then reads the load's decrement (`Release`) or a later RMW in its
//!   release sequence, so the load's reference count increment happens before the
//!   caller releases the old value. The value is never freed under a load.
//! * If the replacement read the count first, the load's increment (`Acquire`) reads
//!   the replacement's read (`Release`) or a later RMW: the swap happens before the
//!   load's read of the pointer, which therefore sees the new value or a later one,
//!   never the old.
//!
//! Only acquire and release orderings are used, so loom checks this exactly (it models
//! `SeqCst` as `AcqRel`: the first version of this cell read the count with a `SeqCst`
//! load, a store-buffering pattern that is right in C++'s model and that loom reports
//! as a use after free; the read-modify-write needs no `SeqCst` at all).
//!
//! A replaced value can be deferred only while a load is within a few instructions of
//! its own start; a later replacement (the next set in the context) returns it. Until
//! then it is kept alive, values and all.
//!
//! `loom-tests/tests/handoff.rs` models the protocol: `reader_sees_whole_snapshots`
//! runs the real cell (loom's `Arc` reports an increment on a released value),
//! `publish_counts_loads_in_progress` runs a stand-in with reference counts of its own
//! through every interleaving of a load and two replacements, and the canary
//! `canary_publish_without_load_count` shows that a replacement that ignores the count
//! frees a value under a load.

use std::marker::PhantomData;
use std::ptr;

use super::{Arc, AtomicPtr, AtomicUsize, Ordering, arc_clone_raw};

/// A cell holding an optional `Arc<T>` that any thread loads lock-free while one writer
/// at a time replaces it: the published snapshot of a context object, whose writer is
/// the holder of its entered flag.
pub struct PublishCell<T> {
    /// `Arc::into_raw` of the value, null for `None`. The cell owns that count.
    current: AtomicPtr<T>,
    /// Loads between counting themselves in and out (see the module docs).
    loading: AtomicUsize,
    /// Replaced values that a load may still be about to count: owned by the cell and
    /// touched only by the writer ([`replace`](Self::replace)) and by `Drop`. Boxed, so
    /// that the cell is three words (it is in every context object) and its usual
    /// emptiness costs no allocation.
    #[allow(clippy::box_collection)] // the `Box` keeps the cell's field one word
    deferred: WriterOnly<Option<Box<Vec<Arc<T>>>>>,
    /// Owns `Arc<T>`s: `Send` and drop checking follow `Arc<T>`'s.
    _owns: PhantomData<Arc<T>>,
}

// SAFETY: a `&PublishCell` lets any thread `load` (atomics, then an `Arc<T>` clone, which
// needs `T: Send + Sync` as `Arc<T>: Send` does), and `replace` is `unsafe`, with callers
// serialised by a happens-before chain, so `deferred` is never accessed concurrently.
unsafe impl<T: Send + Sync> Sync for PublishCell<T> {}
// SAFETY: the cell owns `Arc<T>`s, which may be sent when `T: Send + Sync`.
unsafe impl<T: Send + Sync> Send for PublishCell<T> {}

/// What a [`PublishCell::replace`] gives back for the caller to release.
pub struct Replaced<T> {
    /// The value replaced, or `None` if it was deferred (or the cell held `None`).
    pub old: Option<Arc<T>>,
    /// Values deferred by earlier replacements, now safe to release (usually none: no
    /// allocation then).
    pub earlier: Vec<Arc<T>>,
}

impl<T> PublishCell<T> {
    pub fn new(value: Option<Arc<T>>) -> Self {
        Self {
            current: AtomicPtr::new(into_ptr(value)),
            loading: AtomicUsize::new(0),
            deferred: WriterOnly::new(None),
            _owns: PhantomData,
        }
    }

    /// An owned copy of the current value, from any thread, lock-free.
    #[inline]
    pub fn load(&self) -> Option<Arc<T>> {
        // Acquire: pairs with a replacement's `AcqRel` read of the count, so that a swap
        // made before that read is seen by the load below (module docs).
        self.loading.fetch_add(1, Ordering::Acquire);
        // Acquire: pairs with the swap's `Release`, so the value's contents are visible.
        let ptr = self.current.load(Ordering::Acquire);
        // SAFETY: a non-null pointer came from `Arc::into_raw`, and the value is alive:
        // a replacement that swaps it out releases it only after it reads the count at
        // 0, which it cannot until the decrement below (module docs).
        let value = (!ptr.is_null()).then(|| unsafe { arc_clone_raw(ptr.cast_const()) });
        // Release: pairs with a replacement's `AcqRel` read of the count: the increment
        // above happens before the old value is released.
        self.loading.fetch_sub(1, Ordering::Release);
        value
    }

    /// Stores `value` and hands back what may be released now (see [`Replaced`]); a
    /// value replaced while a load is in progress is kept until a later replacement.
    ///
    /// # Safety
    ///
    /// Replacements of one cell are serialised: each happens before the next (the
    /// callers hold the context object's entered flag, taken with `Acquire` and handed
    /// on with `Release`).
    #[inline]
    pub unsafe fn replace(&self, value: Option<Arc<T>>) -> Replaced<T> {
        // Release: publishes the new value's contents to the loads' `Acquire`.
        let old = self.current.swap(into_ptr(value), Ordering::Release);
        // SAFETY: a non-null pointer came from `Arc::into_raw`; the cell owned that count
        // and holds the pointer no more.
        let old = (!old.is_null()).then(|| unsafe { Arc::from_raw(old.cast_const()) });
        // A read-modify-write, not a load: it reads the latest count. Acquire pairs with
        // each load's `Release` decrement; Release (after the swap in program order)
        // pairs with each later load's `Acquire` increment (module docs).
        if self.loading.fetch_add(0, Ordering::AcqRel) == 0 {
            // SAFETY: replacements are serialised (this function's contract), and `Drop`
            // has `&mut self`: nothing else touches `deferred` now.
            let earlier = unsafe { self.deferred.with_mut(Option::take) };
            Replaced {
                old,
                earlier: earlier.map_or_else(Vec::new, |earlier| *earlier),
            }
        } else {
            self.defer(old);
            Replaced {
                old: None,
                earlier: Vec::new(),
            }
        }
    }

    #[cold]
    #[inline(never)]
    fn defer(&self, old: Option<Arc<T>>) {
        // SAFETY: as in `replace`, whose caller this is.
        unsafe {
            self.deferred
                .with_mut(|deferred| deferred.get_or_insert_default().extend(old));
        };
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
        drop(unsafe { self.deferred.with_mut(Option::take) });
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
    /// Counts a load in progress until the guard drops, as a load between its count and
    /// its increment would: the next replacements must defer what they replace.
    pub(crate) fn hold_load(&self) -> impl Drop + '_ {
        struct Held<'a>(&'a AtomicUsize);
        impl Drop for Held<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Release);
            }
        }
        self.loading.fetch_add(1, Ordering::Acquire);
        Held(&self.loading)
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
    fn a_replacement_during_a_load_is_deferred_to_the_next_one() {
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
        assert_eq!(
            drops.load(Ordering::Relaxed),
            0,
            "nothing released under a load"
        );
        drop(held);
        // SAFETY: one writer, this thread.
        let third = unsafe { cell.replace(None) };
        assert!(third.old.is_some(), "no load in progress: handed back");
        assert_eq!(third.earlier.len(), 2, "with the two kept before");
        drop(third);
        assert_eq!(drops.load(Ordering::Relaxed), 3);
        assert!(cell.load().is_none());
    }

    #[test]
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
        const VALUES: usize = 40;
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
