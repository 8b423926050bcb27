//! Lexical scoped bindings: `ContextVar::scope(value, f)` without touching the snapshot.
//!
//! A scope binds a value for exactly the duration of one call, so it need not be a
//! change of the snapshot at all while only reads happen: [`scope`] keeps the binding in
//! a [`ScopeRecord`] on its own stack, links it onto the thread's chain of records
//! (`HOT.scopes`), runs `f`, and unlinks it. Reads look at the chain first. Nothing is
//! allocated, no node is written, no token is made.
//!
//! **Flushing.** Everything else the engine does (a set, a reset, a context handle, a
//! copy of the context, entering any frame, a detached frame's entry or exit, the origin
//! walk) first *flushes* the chain ([`flush_scopes`]): it makes each record, oldest first,
//! the real set it stands for, in the frame it was made in, and keeps the set's state in
//! the record; the scope's end then resets it as `ScopedSet` would. So the chain only
//! ever holds records of the current frame, made since its last change, and whatever
//! observes the context in any other way (a copy, a captured job, a frame entered inside
//! the scope, a token) sees exactly what the eager set and reset would have shown.
//!
//! **Where reads go.** While the chain is not empty, `HOT.root` is null and the frame's
//! root waits in `HOT.scoped_root`: the read's fast path already tests the root for null
//! (an empty context), so a read outside any scope pays nothing for this, and one inside
//! a scope misses there and takes the miss path ([`with_bound_scoped`], which every read
//! calls before falling back to a default), which walks the chain, then looks the
//! variable up in `HOT.scoped_root`. Every writer of `HOT.root` other than
//! this module runs after a flush, when the chain is empty. A variable served by the read
//! cache (`thread`'s module docs) is not even looked up: linking a record writes the
//! record's value into the variable's slot, and unlinking it empties the slot.
//!
//! **Isolation.** A record is seen only by reads on this thread while the chain holds
//! it, and the chain is flushed before any other frame can become current: entering a
//! light frame (a `run`, a poll, a job), a detached one, and capturing the context for
//! other work all flush first. A scope is refused where a set would be (a pool thread's
//! own context, a task's frame it did not enter, a read-only frame), checked when it
//! starts; the flush of a record that started then is not checked again (what runs
//! later in the same frame, a tokio task polled inside a `block_on` in `f` say, must not
//! undo a scope that was allowed).
//!
//! **Where a scope sets at once.** A frame's bindings are also seen, without passing
//! through this thread, by the holders of its context object (they read its published
//! snapshot, from any thread) and by `observe`. Where either can see them
//! ([`object_observed`], `announcing`), [`scope`] makes the set at once and resets it at
//! the end, exactly as `ScopedSet` does.

use std::mem::ManuallyDrop;
use std::ptr;

use super::binding::{SetRefused, SetState, bound_at, set_binding_unchecked};
use super::thread::{Borrow, Hot, hot_ptr, is_alive};
use super::{announce, announcing};
use crate::pool;
use crate::sync::{Arc, Cell};
use crate::value::Entry;

/// One scoped binding, on the stack of the [`scope`] call that made it.
pub(super) struct ScopeRecord {
    key: u64,
    /// The value, owned by the record and lent to reads while the scope runs (a read
    /// inside the scope cannot outlive it: the scope's call encloses it).
    entry: Entry,
    /// The record made before this one (`HOT.scopes` when this one was linked), null for
    /// the oldest.
    below: *const ScopeRecord,
    /// How many records the chain holds with this one: at most [`MAX_LINKED`].
    depth: usize,
    /// After a flush: the state of the real set made for this record, for the scope's end
    /// to reset. The end always takes it out ([`End`]), so the record has nothing to
    /// drop here: `ManuallyDrop` spares the scope a test of it on its way out (one left
    /// behind would be leaked, never dropped twice).
    flushed: ManuallyDrop<Cell<Option<SetState>>>,
}

/// The most records the chain holds: a scope nested deeper sets at once (after a flush of
/// the chain), so a read inside walks at most this many records and a flush recurses at
/// most this deep, however deep a recursion of scopes goes.
const MAX_LINKED: usize = 8;

/// Runs `f` with the entry `make` makes bound under `key` in the current frame (a scope),
/// then ends the binding. `reset` is called with the state of the real set if the scope
/// was flushed (see the module docs), to reset it as a `ScopedSet` would, also when `f`
/// unwinds.
///
/// Refused as `set_binding` refuses, before `f` runs and before `make` is called (`make`,
/// and the value it holds, is then dropped, with the state consistent). The entry is made
/// only once the scope is allowed, straight into its record: made first, it was kept in
/// two places across the checks.
#[inline]
pub(crate) fn scope<R>(
    key: u64,
    make: impl FnOnce() -> Entry,
    f: impl FnOnce() -> R,
    reset: impl FnOnce(SetState),
) -> Result<R, SetRefused> {
    // SAFETY: `HOT`'s address is valid for this call on this thread, used through
    // `Cell`s (see `hot_ptr`).
    let hot = unsafe { &*hot_ptr() };
    // Not `with_state`, which would flush the records of enclosing scopes.
    if !is_alive(hot) {
        drop(make);
        return Err(SetRefused::TornDown);
    }
    if let Some(pool) = pool::refusal(hot.entered(), hot.in_base_frame()) {
        drop(make);
        return Err(SetRefused::PoolThread(pool));
    }
    let below = hot.scopes.get();
    // SAFETY: a linked record is alive (see `flush_now`).
    let depth = unsafe { below.as_ref() }.map_or(0, |below| below.depth) + 1;
    if announcing() || depth > MAX_LINKED || object_observed(hot) {
        // Someone else can see this frame's bindings: a handle of its context object (a
        // `Context` being run, a `Context::current` handle), or `observe`. Or the chain
        // is full. The set is made now, as `scoped_set` does (after a flush: its own
        // `with_state`), so that they see it.
        let state = super::binding::set_binding(key, make())?;
        let _end = EndEager(Some((state, reset)));
        return Ok(f());
    }
    let record = ScopeRecord {
        key,
        entry: make(),
        below,
        depth,
        flushed: ManuallyDrop::new(Cell::new(None)),
    };
    // The root, or null if a record is linked already.
    let root = hot.link_scope(key, record.entry.cached_word());
    if record.below.is_null() {
        hot.scoped_root.set(root);
    }
    hot.scopes.set(&record);
    // Dropped before `record` (declared after it): unlinks it, or resets its real set.
    let _end = End {
        hot,
        record: &record,
        reset: Some(reset),
    };
    Ok(f())
}

/// Whether the current frame's context object can be seen by anyone but the frame: a
/// set in the frame would publish to it (`Hot::publish`), so a scope must set for real.
/// A light frame running a context object (`Context::run`) always can (the `Context`
/// being run is a handle); otherwise the frame's object, if it has one, can while any
/// handle besides the frame's own reference exists. None can appear while the scope
/// runs without a flush: a new handle comes from `Context::current`, which flushes.
#[inline]
fn object_observed(hot: &Hot) -> bool {
    let light = hot.light.get();
    // SAFETY: a non-null `HOT.light` is the current light frame, alive for its
    // `enter_light` call on this thread, which encloses this one (see `Light`).
    let Some(light) = (unsafe { light.as_ref() }) else {
        return hot.object_observed();
    };
    if !light.object.is_null() {
        return true;
    }
    // SAFETY: the storage of a current, unmaterialized light frame is not written while
    // it runs (see `Light`), and outlives its `enter_light` call.
    match unsafe { light.frame.as_ref() } {
        Some(storage) => storage
            .ctx
            .as_ref()
            .is_some_and(|ctx| Arc::strong_count(ctx) > 1),
        None => false,
    }
}

/// Ends a linked scope: unlinks its record if it is still on the chain, else resets the
/// set its flush made. The record itself (and its value) is dropped after this, with the
/// state consistent.
struct End<'a, F: FnOnce(SetState)> {
    hot: &'a Hot,
    record: &'a ScopeRecord,
    reset: Option<F>,
}

impl<F: FnOnce(SetState)> Drop for End<'_, F> {
    #[inline]
    fn drop(&mut self) {
        if ptr::eq(self.hot.scopes.get(), self.record) {
            // Still linked, hence the newest record (records end in the reverse order of
            // their scopes' calls, and a flush unlinks them all), and never flushed: the
            // record's `ManuallyDrop` state has nothing to leak.
            debug_assert!(
                {
                    let state = self.record.flushed.take();
                    let none = state.is_none();
                    self.record.flushed.set(state);
                    none
                },
                "a linked record was flushed"
            );
            self.hot.scopes.set(self.record.below);
            let root = self
                .record
                .below
                .is_null()
                .then(|| self.hot.scoped_root.replace(ptr::null()));
            self.hot.unlink_scope(self.record.key, root);
            // `observe` may have been switched on (by another thread) while the scope ran:
            // its end is a change, as the reset would have been.
            announce();
            return;
        }
        self.reset_flushed();
    }
}

impl<F: FnOnce(SetState)> End<'_, F> {
    #[cold]
    #[inline(never)]
    fn reset_flushed(&mut self) {
        // Not flushed either: the thread was being torn down when the flush came, and
        // made no set to undo. The state is taken out whatever happens next (the record
        // does not drop it).
        let state = self.record.flushed.take();
        if let (Some(state), Some(reset)) = (state, self.reset.take()) {
            reset(state);
        }
    }
}

/// Ends a scope made by an eager set: `reset` gets the set's state.
struct EndEager<F: FnOnce(SetState)>(Option<(SetState, F)>);

impl<F: FnOnce(SetState)> Drop for EndEager<F> {
    fn drop(&mut self) {
        if let Some((state, reset)) = self.0.take() {
            reset(state);
        }
    }
}

/// Makes every linked record the real set it stands for, oldest first, and empties the
/// chain (see the module docs). Called first by every engine operation but a read and a
/// scope; a no-op (two loads) when nothing is linked.
#[inline]
pub(super) fn flush_scopes(hot: &Hot) {
    if !hot.scopes.get().is_null() {
        flush_now(hot);
    }
}

#[cold]
#[inline(never)]
fn flush_now(hot: &Hot) {
    let newest = hot.scopes.replace(ptr::null());
    hot.set_root(hot.scoped_root.replace(ptr::null()));
    // The records' slots of the read cache point into the records: every slot goes
    // stale here, so that none can outlive its record even if a set below were refused
    // (none is today: the only refusal, thread teardown, unlinks the chain first). The
    // root's change above starts a new epoch too, but not when the frame had no bindings
    // (null before and after).
    hot.new_epoch();
    // Counted as a borrow while the sets are made: snapshots they replace are parked
    // until all are done, so no destructor runs with half the records flushed (and the
    // sets path-copy instead of writing in place, which is what a borrow means).
    let borrow = Borrow::new(hot);
    // SAFETY: a linked record is alive: it is on the stack of a `scope` call on this
    // thread that has not returned (it unlinks its record, or finds it flushed, before
    // returning, also when unwinding), and so is every record below it.
    unsafe { flush_from(newest) };
    // The sets do not announce one by one: `observe`'s announcer may drop a snapshot
    // (and a value's `Drop` may panic), which must not happen with half the chain set.
    announce();
    drop(borrow);
}

/// Flushes `record` after the records below it (a recursion at most [`MAX_LINKED`]
/// deep).
///
/// # Safety
///
/// `record` and every record below it must be alive (linked records are: see
/// [`flush_now`]).
unsafe fn flush_from(record: *const ScopeRecord) {
    // SAFETY: the caller's guarantee.
    let record = unsafe { &*record };
    if !record.below.is_null() {
        // SAFETY: the caller's guarantee covers the records below.
        unsafe { flush_from(record.below) };
    }
    // Only a thread being torn down refuses (the scope's own refusal was checked when it
    // started); its record then simply ends unflushed.
    if let Ok(state) = set_binding_unchecked(record.key, record.entry.clone()) {
        record.flushed.set(Some(state));
    }
}

/// The second half of a read, after `lookup_bound` missed: while records are linked
/// (`HOT.root` is null then), the newest record for `key`, else the frame's snapshot
/// (`HOT.scoped_root`); `Err(f)` for neither, and whenever no record is linked (the miss
/// stands): every read's miss path, and the path of reads inside a scope.
///
/// The test for a linked record is inline (a thread-local load), the walk is not: a miss
/// outside any scope (a read of a default) costs a few instructions more, not a call.
///
/// `key` as for `lookup_bound`.
#[inline(always)]
pub(crate) fn with_bound_scoped<T: 'static, R, F: FnOnce(&T) -> R>(key: u64, f: F) -> Result<R, F> {
    // SAFETY: `HOT`'s address is valid for this call on this thread, used through
    // `Cell`s (see `hot_ptr`).
    let hot = unsafe { &*hot_ptr() };
    if hot.scopes.get().is_null() {
        return Err(f);
    }
    with_bound_in_scopes(key, f)
}

/// [`with_bound_scoped`] with a record linked. It finds `HOT` again rather than taking
/// its address: passing that made every read compute it up front (two instructions on
/// the hit path).
#[inline(never)]
fn with_bound_in_scopes<T: 'static, R, F: FnOnce(&T) -> R>(key: u64, f: F) -> Result<R, F> {
    // SAFETY: as in `with_bound_scoped`.
    let hot = unsafe { &*hot_ptr() };
    let mut record = hot.scopes.get();
    // SAFETY: linked records are alive (see `flush_now`), and each one's `below` is a
    // linked record or null.
    while let Some(current) = unsafe { record.as_ref() } {
        if current.key == key {
            // SAFETY: the record was made by the `ContextVar<T>` whose id is `key` (the
            // id → type invariant of `value`); it outlives this read, which runs inside
            // its scope's call, and its entry is never changed while it lives.
            return Ok(unsafe { lend(&current.entry, f) });
        }
        record = current.below;
    }
    // The frame's snapshot; null when the frame has no bindings (or no record is linked).
    bound_at::<false, T, R, F>(hot, hot.scoped_root.get(), key, f)
}

/// `f` with the value of `entry`, a record's own.
///
/// # Safety
///
/// `entry` must have been made for a `T`, and outlive this call.
#[inline]
unsafe fn lend<T: 'static, R>(entry: &Entry, f: impl FnOnce(&T) -> R) -> R {
    if entry.is_inline() {
        // SAFETY: an inline entry made for a `T` holds a `T: Copy`.
        let value = unsafe { entry.read_inline::<T>() };
        return f(&value);
    }
    // SAFETY: a boxed entry made for a `T`; the record keeps its binding alive.
    f(unsafe { entry.downcast_boxed_unchecked::<T>() })
}

#[cfg(test)]
mod tests {
    //! Which path a scope takes: the crate's tests check what each path shows; these
    //! check that each is the one taken.

    use super::*;
    use crate::value::Entry;
    use crate::{Context, ContextVar};

    static VAR: ContextVar<u64> = crate::context_var!(u64, "scope_path");

    /// Whether a scope's record is linked on this thread now.
    fn linked() -> bool {
        // SAFETY: as in `scope`.
        !unsafe { &*hot_ptr() }.scopes.get().is_null()
    }

    fn entry(value: u64) -> Entry {
        VAR.make_entry(VAR.id().as_u64(), value)
    }

    fn run_scope(value: u64, f: impl FnOnce()) {
        let key = VAR.id().as_u64();
        scope(key, || entry(value), f, drop).unwrap();
    }

    #[test]
    fn a_thread_links_its_records_and_a_copy_flushes_them() {
        std::thread::spawn(|| {
            run_scope(1, || {
                assert!(linked());
                run_scope(2, || assert!(linked()));
                let copy = crate::copy_context();
                assert!(!linked(), "a copy flushes");
                assert_eq!(copy.snapshot().get(&VAR), Some(&1));
                run_scope(3, || assert!(linked(), "a new chain after the flush"));
            });
            assert!(!linked());
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_run_context_or_a_handle_makes_the_set_real() {
        std::thread::spawn(|| {
            Context::new().run(|| run_scope(1, || assert!(!linked())));
            let handle = Context::current();
            run_scope(1, || assert!(!linked(), "a handle can see the frame"));
            drop(handle);
            run_scope(1, || assert!(linked(), "no handle left"));
        })
        .join()
        .unwrap();
    }

    /// How many records are linked now.
    fn chain_length() -> usize {
        // SAFETY: as in `scope`.
        let mut record = unsafe { &*hot_ptr() }.scopes.get();
        let mut length = 0;
        // SAFETY: linked records are alive (see `flush_now`).
        while let Some(current) = unsafe { record.as_ref() } {
            length += 1;
            record = current.below;
        }
        length
    }

    #[test]
    fn the_chain_holds_at_most_max_linked_records() {
        fn nest(depth: usize, lengths: &mut Vec<usize>) {
            lengths.push(chain_length());
            if depth < 2 * MAX_LINKED {
                run_scope(depth as u64, || nest(depth + 1, lengths));
            }
        }
        std::thread::spawn(|| {
            let mut lengths = Vec::new();
            nest(0, &mut lengths);
            // One more per level up to the cap; then a scope sets at once, which flushes
            // the chain, and the scopes inside it link from an empty chain again.
            assert_eq!(lengths[..=MAX_LINKED], (0..=MAX_LINKED).collect::<Vec<_>>());
            assert!(lengths.iter().all(|&length| length <= MAX_LINKED));
            assert_eq!(lengths[MAX_LINKED + 1], 0);
            assert_eq!(chain_length(), 0);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn entering_a_frame_flushes() {
        std::thread::spawn(|| {
            run_scope(1, || {
                assert!(linked());
                Context::new().run(|| assert!(!linked()));
                assert!(!linked());
                assert_eq!(VAR.get(), 1);
            });
        })
        .join()
        .unwrap();
    }
}
