//! Binding changes: reading a variable's binding in the current frame, setting it,
//! resetting it from a token's record, and handing out the frame's context object.
//!
//! None of these switches frames. A set or reset changes the *bindings* of the frame
//! that is current when it runs; a token records the frame's identity and refuses to
//! reset in another one. So a [`SetState`] (inside a `Token` or `ScopedSet`) that user
//! code forgets, leaks, moves or drops in any order can only ever change bindings of
//! the frame it was made in, or be refused: it owns a snapshot and an entry, never a
//! pointer into the thread's state.

use super::Vars;
use super::announce;
use super::frame::Origin;
use super::light::materialize;
use super::object::Shared;
use super::scope::flush_scopes;
use super::thread::{
    Borrow, CacheSlot, Hot, TornDown, hot_ptr, retire, retire_published, with_hot, with_state,
};
use crate::map::Node;
use crate::pool::{self, Entered, Pool};
use crate::sync::Arc;
use crate::value::{CachedWord, Entry, may_be_inline};

/// The current value of the variable whose read cache slot is `slot` if the thread's
/// read cache holds it (`thread`'s module docs), for a variable that stores values
/// inline: for a type that cannot be stored inline this is `None` at compile time (boxed
/// values: [`cached_boxed`], [`with_cached_boxed`]). A variable with no slot (0) always
/// misses.
///
/// `slot` must be the [`CacheSlot`] of a `ContextVar<T>` (as `key` is for
/// [`lookup_bound`]).
#[inline(always)]
pub(crate) fn cached<T: 'static>(slot: &CacheSlot) -> Option<T> {
    if !const { may_be_inline::<T>() } {
        return None;
    }
    // SAFETY: `with_hot`'s argument (see `hot_ptr`); `slot` is the cache slot of a
    // `ContextVar<T>` (this function's contract).
    unsafe { (*hot_ptr()).cached::<T>(slot) }
}

/// What the read cache knows of a boxed variable ([`with_cached_boxed`]).
pub(crate) enum CachedBoxed<R, F> {
    /// It is bound: the reader's closure ran with the value.
    Value(R),
    /// It has no binding (in the snapshot, and no scope's record binds it): the reader's
    /// closure, for the caller's default.
    Unbound(F),
    /// The cache does not know: the reader's closure, for the lookup.
    Unknown(F),
}

/// Calls `f` with the boxed value of variable `key` if the thread's read cache holds it
/// (`thread`'s module docs), or says that the variable is unbound, or that the cache
/// does not know. The binding is lent in place under a borrow count, as [`lookup_bound`]
/// lends it: `f` may replace the snapshot that owns it, which is then parked until `f`
/// returns.
///
/// `key` as for [`lookup_bound`].
#[inline(always)]
pub(crate) fn with_cached_boxed<T: 'static, R, F: FnOnce(&T) -> R>(
    key: u64,
    f: F,
) -> CachedBoxed<R, F> {
    match cached_boxed(key) {
        BoxedSlot::Bound(word) => CachedBoxed::Value(lend_boxed(word, f)),
        BoxedSlot::Unbound => CachedBoxed::Unbound(f),
        BoxedSlot::Unknown => CachedBoxed::Unknown(f),
    }
}

/// What the read cache knows of a boxed variable ([`cached_boxed`]), before anything is
/// lent.
pub(crate) enum BoxedSlot {
    /// It is bound, to the boxed entry whose word this is (for [`lend_boxed`]).
    Bound(BoxedWord),
    /// It has no binding (in the snapshot, and no scope's record binds it).
    Unbound,
    /// The cache does not know.
    Unknown,
}

/// The word of a boxed entry that the read cache holds as variable `key`'s binding now.
/// Only [`cached_boxed`] makes one, and it is good for the [`lend_boxed`] that follows
/// it, before anything else runs on the thread.
pub(crate) struct BoxedWord {
    word: CachedWord,
    /// Not `Send`: it stays on the thread whose cache it came from.
    _thread: std::marker::PhantomData<*const ()>,
}

/// What the thread's read cache holds for the boxed variable `key` (`thread`'s module
/// docs), without lending it: a caller may answer "unbound" inline and lend a value out
/// of line ([`lend_boxed`]).
///
/// `key` as for [`lookup_bound`].
#[inline(always)]
pub(crate) fn cached_boxed(key: u64) -> BoxedSlot {
    // SAFETY: `with_hot`'s argument (see `hot_ptr`).
    let hot = unsafe { &*hot_ptr() };
    let Some(word) = hot.cached_boxed(key) else {
        return BoxedSlot::Unknown;
    };
    // SAFETY: a valid slot in the boxed range holds a boxed entry's word or `UNBOUND`
    // (`Hot::cached_boxed`).
    if unsafe { word.is_unbound() } {
        return BoxedSlot::Unbound;
    }
    BoxedSlot::Bound(BoxedWord {
        word,
        _thread: std::marker::PhantomData,
    })
}

/// Calls `f` with the boxed value behind `word`, lent in place under a borrow count, as
/// [`lookup_bound`] lends it: `f` may replace the snapshot that owns it, which is then
/// parked until `f` returns.
///
/// `word` must come from [`cached_boxed`] of the id of a `ContextVar<T>`, with nothing run
/// on the thread since (the caller's next step).
#[inline(always)]
pub(crate) fn lend_boxed<T: 'static, R, F: FnOnce(&T) -> R>(word: BoxedWord, f: F) -> R {
    // SAFETY: `with_hot`'s argument (see `hot_ptr`).
    let _borrow = Borrow::new(unsafe { &*hot_ptr() });
    // SAFETY: `word` is the word of a boxed entry bound under the variable's id, made by
    // that `ContextVar<T>` (the id → type invariant of `value`), in the current snapshot
    // or a linked scope's record, and nothing has run since the cache said so (this
    // function's contract): the snapshot lives until it stops being current, and
    // `_borrow` parks it until `f` returns if `f` replaces it (a record lives until its
    // scope's call returns, which encloses this read).
    f(unsafe { word.word.boxed_value::<T>() })
}

/// Calls `f` with the binding of variable `key` in the current snapshot, as a `T`, if
/// there is one; gives `f` back if there is none. What it finds, a value or the absence of
/// one, is cached ([`Hot::fill`], [`Hot::fill_unbound`]); a reader asks the cache first
/// ([`cached`], [`with_cached_boxed`], from `ContextVar::read`).
///
/// `key` must be the id of a `ContextVar<T>` (the id → type invariant of `value.rs`), or
/// 0 (a variable with no id yet), which no binding has: the lookup misses.
///
/// A miss must be followed by [`with_bound_scoped`](super::with_bound_scoped) before
/// the caller falls back to a default: while a scope runs (`super::scope`), its binding
/// is found there, not here.
/// The miss path returns before the borrow is counted, so a read of a default never
/// touches the borrow counter, and the hit path calls nothing but `f` (the graveyard
/// drain after a borrow is out of line and cold).
///
/// Always inlined, and it reaches `HOT` through `hot_ptr` rather than `with_hot`'s closure:
/// LLVM otherwise left that closure out of line in some callers (a call and a stack frame
/// more per read, 39 instructions instead of 32 at 8 variables).
#[inline(always)]
pub(crate) fn lookup_bound<T: 'static, R, F: FnOnce(&T) -> R>(key: u64, f: F) -> Result<R, F> {
    // SAFETY: `with_hot`'s argument (see `hot_ptr`): the reference is used within this
    // call, on this thread, through `Cell`s.
    let hot = unsafe { &*hot_ptr() };
    // Null: no bindings, or a scope's records are linked (`super::scope`); the caller's
    // miss path, out of line, looks at them (`with_bound_scoped`), so that a read outside
    // any scope pays nothing for them.
    bound_at::<true, T, R, F>(hot, hot.root(), key, f)
}

/// What [`lookup_inline`] found.
pub(crate) enum InlineLookup<T> {
    /// An inline binding: a copy of its value (now in the read cache too).
    Value(T),
    /// No binding in the snapshot (or no snapshot), and no scope's record is linked:
    /// the variable is unbound (an inline slot cannot cache that).
    Unbound,
    /// A boxed binding, or a scope's records linked: the caller's full read
    /// ([`lookup_bound`], then [`with_bound_scoped`](super::with_bound_scoped)) finds out.
    Other,
}

/// [`lookup_bound`] for a variable that stores its values inline, after its cache slot
/// missed, as far as it goes without calling anything: the lookup in the current
/// snapshot, the fill of the slot, and a copy of the value. Whatever else there is to
/// do (lend a boxed value, walk a scope's records) is the caller's, out of line, so a
/// read that ends here keeps no register across a call: it needs no stack frame but
/// its caller's.
///
/// `key` as for [`lookup_bound`], and not in the boxed slots' range
/// ([`has_boxed_slot`](super::has_boxed_slot)).
#[inline(always)]
pub(crate) fn lookup_inline<T: 'static>(key: u64) -> InlineLookup<T> {
    if !const { may_be_inline::<T>() } {
        return InlineLookup::Other;
    }
    // SAFETY: `with_hot`'s argument (see `hot_ptr`).
    let hot = unsafe { &*hot_ptr() };
    // SAFETY: `HOT.root` is null or the root node of the current frame's snapshot (see
    // `frame`'s module docs), and nothing has run since it was loaded.
    let Some(node) = (unsafe { hot.root().as_ref() }) else {
        // No bindings (unbound), or a scope's records linked (the caller's full read).
        return if hot.scopes.get().is_null() {
            InlineLookup::Unbound
        } else {
            InlineLookup::Other
        };
    };
    let Some(entry) = node.get(key) else {
        // Unbound: a non-null `HOT.root` means that no scope's record is linked (linking
        // the first one nulls it, and everything but a read flushes the chain first).
        // Nothing to cache: an inline slot cannot say "unbound", and the caller reads a
        // boxed variable with a slot of its own through `cached_boxed` instead.
        debug_assert!(hot.scopes.get().is_null());
        return InlineLookup::Unbound;
    };
    if !entry.is_inline() {
        return InlineLookup::Other;
    }
    let word = entry.cached_word();
    hot.fill(key, word);
    // SAFETY: an entry under `key` was made by the `ContextVar<T>` whose id is `key`, and
    // an inline one holds a `T: Copy` (`value`'s invariants).
    InlineLookup::Value(unsafe { word.read::<T>() })
}

/// The read of `key` in the snapshot whose root node is `root` (null: no bindings): the
/// current frame's, or, while a scope's records are linked, `HOT.scoped_root`. `FILL`:
/// `root` is `HOT.root`, so what the lookup finds is cached (`Hot::fill`,
/// `Hot::fill_unbound`).
#[inline(always)]
pub(super) fn bound_at<const FILL: bool, T: 'static, R, F: FnOnce(&T) -> R>(
    hot: &Hot,
    root: *const Node<Entry>,
    key: u64,
    f: F,
) -> Result<R, F> {
    {
        // SAFETY: `root` is null or the root node of the current frame's snapshot (see
        // `frame`'s module docs), and nothing has run since it was loaded.
        let Some(node) = (unsafe { root.as_ref() }) else {
            return Err(f);
        };
        let Some(entry) = node.get(key) else {
            if FILL {
                // `root` is `HOT.root`, not null: no scope's record is linked, so the
                // variable has no binding at all.
                hot.fill_unbound(key);
            }
            return Err(f);
        };
        let word = entry.cached_word();
        if FILL {
            hot.fill(key, word);
        }
        if entry.is_inline() {
            // SAFETY: an entry under `key` was made by the `ContextVar<T>` whose id is
            // `key`, and an inline one holds a `T: Copy` (`value`'s invariants). The copy
            // is taken before `f` runs, so no borrow of the snapshot is needed.
            let value = unsafe { word.read::<T>() };
            return Ok(f(&value));
        }
        // From here on `f` runs (user code: a closure, `T::clone`), which may set
        // variables or enter contexts: `_borrow` defers the release of the snapshot that
        // owns `entry` until after `f` returns, and keeps it from being changed in place.
        let _borrow = Borrow::new(hot);
        // SAFETY: an entry under `key` was made by the `ContextVar<T>` whose id is `key`,
        // and it is not inline.
        let value = unsafe { entry.downcast_boxed_unchecked::<T>() };
        Ok(f(value))
    }
}

/// Where a lookup missed, for the hints of its error.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum MissSite {
    /// The thread's own base frame, and whether it holds no binding at all.
    OwnContext { empty: bool },
    /// A read-only frame (`crate::pool::Entered::READ_ONLY`): a plain rayon job a worker
    /// runs while it waits inside a call of `contextvars::rayon`.
    ReadOnly,
    /// Any other frame.
    Elsewhere,
}

/// Where the thread runs now, for a missed lookup's hint (see [`MissSite`]).
pub(crate) fn miss_site() -> MissSite {
    with_hot(|hot| {
        flush_scopes(hot);
        if hot.entered() == Entered::READ_ONLY {
            MissSite::ReadOnly
        } else if hot.in_base_frame() {
            MissSite::OwnContext {
                empty: hot.root().is_null(),
            }
        } else {
            MissSite::Elsewhere
        }
    })
}

/// Binds `key` to `entry` (or unbinds it, for `None`) by writing into the current
/// snapshot's root node, if nobody else holds the snapshot and no borrow of it is
/// active (`Map::insert_in_place`). Returns the entry `key` had; `Err` gives `entry`
/// back when the change needs a new snapshot. No user code runs, and `HOT.root` stays
/// valid: an in-place change keeps the root, except a removal that empties the map.
#[inline(always)]
fn rebind_in_place(
    hot: &Hot,
    key: u64,
    entry: Option<Entry>,
) -> Result<Option<Entry>, Option<Entry>> {
    if hot.borrows.get() != 0 {
        return Err(entry);
    }
    let now = entry.as_ref().map(Entry::cached_word);
    let mut vars = hot.vars.take();
    let outcome = match entry {
        Some(entry) => vars.insert_in_place(key, entry).map_err(Some),
        None => vars.remove_in_place(key).map_err(|()| None),
    };
    // Unchanged on `Err` (nothing was written): the cache stays right either way.
    hot.rebound(vars.root_ptr(), key, now.filter(|_| outcome.is_ok()));
    hot.vars.set(vars);
    outcome
}

/// [`rebind_in_place`] by path copying: installs a new snapshot and returns the entry
/// `key` had and the replaced snapshot, for the caller to [`retire`] once the state is
/// consistent (a borrow in progress may point into it).
fn rebind_copy(hot: &Hot, key: u64, entry: Option<Entry>) -> (Option<Entry>, Vars) {
    let current = hot.vars_clone();
    let old = current.get(key).cloned();
    let now = entry.as_ref().map(Entry::cached_word);
    let new = match entry {
        Some(entry) => current.insert(key, entry),
        None => current.remove(key).unwrap_or(current),
    };
    // `new` differs from the current snapshot in `key`'s binding alone.
    hot.rebound(new.root_ptr(), key, now);
    (old, hot.vars.replace(new))
}

/// What a `set` leaves behind for its token.
pub(crate) struct SetState {
    /// The variable's entry before the set, `None` if it had none (gives
    /// `Token::old_value`, and what `reset` puts back).
    pub(crate) old: Option<Entry>,
    /// The frame (context) the set happened in.
    pub(crate) frame_id: u64,
    /// The snapshot the set replaced, if it made a new one (the snapshot was shared):
    /// kept instead of dropped, so that a reset with nothing changed in between can
    /// simply reinstall it.
    prev: Option<Vars>,
    /// The frame's change marker right after the set, and right before it.
    seq: u64,
    prev_change: u64,
}

impl Drop for SetState {
    /// The replaced snapshot may be the one a borrow in progress points into (it was
    /// current when the borrow began, then a set inside the borrow replaced it), so it is
    /// retired like any snapshot that stops being current, never dropped directly.
    fn drop(&mut self) {
        if let Some(prev) = self.prev.take() {
            retire(prev);
        }
    }
}

/// Why [`set_binding`] refused.
#[derive(Clone, Copy, Debug)]
pub(crate) enum SetRefused {
    /// The thread's state is gone (thread teardown).
    TornDown,
    /// The binding would stay where other units of work see it (`crate::pool`): the
    /// thread's own base frame on a pool thread, a frame a tokio task runs in that it
    /// did not enter, or the read-only frame of a rayon worker waiting in a call of
    /// `contextvars::rayon`.
    PoolThread(Pool),
}

impl From<TornDown> for SetRefused {
    fn from(TornDown: TornDown) -> Self {
        Self::TornDown
    }
}

impl SetState {
    /// Drops the state once its reset is done, as its `Drop` would (the replaced
    /// snapshot retired, then the old entry dropped), but inline: left to the drop glue,
    /// the release was a call whose inlining moved with unrelated code (20 instructions
    /// of a set and reset's 568).
    #[inline]
    fn release(mut self) {
        let prev = self.prev.take();
        let old = self.old.take();
        // Nothing is left in `self` to drop: its other fields are integers (a field that
        // owns something must be taken out above too, or it leaks here).
        std::mem::forget(self);
        if let Some(prev) = prev {
            retire(prev);
        }
        drop(old);
    }
}

/// Binds `entry` under `key` in the current frame.
///
/// Refused where the binding would reach other units of work (the base frame of a pool
/// thread, a frame a tokio task runs in that it did not enter, a read-only frame: see
/// [`SetRefused::PoolThread`] and `crate::pool`); the entry is then dropped, after the
/// state is left as it was.
pub(crate) fn set_binding(key: u64, entry: Entry) -> Result<SetState, SetRefused> {
    set_binding_in::<true>(key, entry)
}

/// [`set_binding`] without the check of where the binding lands, and without announcing
/// the change: the flush of a scope's record (`super::scope`), which was checked when the
/// scope started, and which announces once for all its records.
pub(super) fn set_binding_unchecked(key: u64, entry: Entry) -> Result<SetState, SetRefused> {
    set_binding_in::<false>(key, entry)
}

/// A const parameter, so that each caller has a closure of its own below: shared, LLVM
/// left it out of line (a call and 45 more instructions per set).
#[inline(always)]
fn set_binding_in<const CHECK: bool>(key: u64, entry: Entry) -> Result<SetState, SetRefused> {
    let mut entry = Some(entry);
    // The closure returns the parts, and the `SetState` is put together out here: moving
    // it out through two `Result`s cost more than the in-place rebinding itself.
    let outcome = with_state(|hot| {
        if CHECK && let Some(pool) = pool::refusal(hot.entered(), hot.in_base_frame()) {
            return Err(pool);
        }
        let entry = entry.take().expect("taken once");
        materialize(hot);
        keep_origin(hot);
        let (old, prev) = match rebind_in_place(hot, key, Some(entry)) {
            Ok(old) => (old, None),
            Err(entry) => {
                let (old, prev) = rebind_copy(hot, key, entry);
                (old, Some(prev))
            }
        };
        let seq = hot.next_id();
        let prev_change = hot.last_change.replace(seq);
        Ok((old, prev, hot.frame_id(), seq, prev_change, hot.publish()))
    });
    // A refused entry is dropped here, with the state consistent (its value's `Drop`
    // may use context variables).
    drop(entry);
    let (old, prev, frame_id, seq, prev_change, published) =
        outcome?.map_err(SetRefused::PoolThread)?;
    // A scope's flush announces once, after all its sets (`super::scope`).
    if CHECK {
        announce();
    }
    if let Some(old) = published {
        retire_published(old);
    }
    Ok(SetState {
        old,
        frame_id,
        prev,
        seq,
        prev_change,
    })
}

/// Before the first change of a frame that remembers its starting bindings
/// (`Frame::with_origin`), keeps them: a counted clone, so the change that follows
/// path-copies rather than writing in place.
#[inline]
fn keep_origin(hot: &Hot) {
    if hot.origin.get() == Origin::Unchanged {
        keep_origin_now(hot);
    }
}

#[cold]
#[inline(never)]
fn keep_origin_now(hot: &Hot) {
    // The cell holds an empty map while the frame is unchanged: nothing is dropped.
    hot.origin_vars.set(hot.vars_clone());
    hot.origin.set(Origin::Kept);
}

/// Why [`reset_binding`] refused.
pub(crate) enum ResetFailure {
    DifferentContext,
    Access,
}

/// Restores the binding `key` had before the set that produced `set`.
///
/// In order of preference: in place, if the snapshot is the frame's alone; by
/// reinstalling the snapshot the set replaced, if nothing changed since the set (no
/// allocation); otherwise by path copying. CPython raises `LookupError` when the token has
/// no old value and the binding is already gone; that cannot happen through set and reset
/// alone (a stale token of an outer set may have removed it first), and there is nothing
/// to undo, so it succeeds.
pub(crate) fn reset_binding(key: u64, mut set: SetState) -> Result<(), (ResetFailure, SetState)> {
    // The token stays here and is only borrowed by the closure: moving it in and out
    // (seven words, twice) cost more than the in-place rebinding itself.
    let token = &mut set;
    let outcome = with_state(|hot| {
        materialize(hot);
        if hot.frame_id() != token.frame_id {
            return None;
        }
        keep_origin(hot);
        let unchanged = hot.last_change.get() == token.seq;
        let (replaced_entry, replaced, last_change) =
            match rebind_in_place(hot, key, token.old.take()) {
                Ok(entry) => (entry, None, None),
                Err(old) => match token.prev.take() {
                    Some(prev) if unchanged => (None, Some(hot.install(prev)), None),
                    prev => {
                        // Not reinstalled: retired with the token below.
                        token.prev = prev;
                        let (entry, replaced) = rebind_copy(hot, key, old);
                        (entry, Some(replaced), Some(hot.next_id()))
                    }
                },
            };
        // Back to the state right after the set's predecessor: the change marker too,
        // so an outer token can still take the reinstall shortcut.
        let marker = match last_change {
            Some(fresh) => fresh,
            None if unchanged => token.prev_change,
            None => hot.next_id(),
        };
        hot.last_change.set(marker);
        Some((replaced_entry, replaced, hot.publish()))
    });
    match outcome {
        Ok(Some((replaced_entry, replaced, published))) => {
            announce();
            if let Some(vars) = replaced {
                retire(vars);
            }
            if let Some(vars) = published {
                retire_published(vars);
            }
            // Dropped only now, with the state consistent: each may hold the last
            // reference to a value, whose `Drop` may use context variables.
            drop(replaced_entry);
            set.release();
            Ok(())
        }
        Ok(None) => Err((ResetFailure::DifferentContext, set)),
        Err(TornDown) => Err((ResetFailure::Access, set)),
    }
}

/// The context object of the current frame, made on first request.
///
/// The frame keeps its identity (tokens made before stay valid) and the object counts as
/// entered until the frame ends, as `Context::current` documents. Inside a light frame
/// (a job, an item, a poll) the frame materializes first, so the object belongs to that
/// frame alone and is left when the call running it returns.
pub(crate) fn current_shared() -> Result<Arc<Shared>, TornDown> {
    let (shared, old) = with_state(|hot| {
        materialize(hot);
        let existing = hot.ctx.take();
        let shared = match existing {
            Some(shared) => shared,
            None => Arc::new(Shared::new(hot.frame_id(), hot.vars_clone(), true)),
        };
        let handle = shared.clone();
        hot.ctx.set(Some(shared));
        // Publish what an earlier, unobserved set left unpublished.
        let old = if hot.dirty.get() { hot.publish() } else { None };
        (handle, old)
    })?;
    if let Some(old) = old {
        retire_published(old);
    }
    Ok(shared)
}

#[cfg(test)]
mod tests {
    //! When the read cache serves a read: the crate's tests check that reads are right
    //! (`tests/read_cache.rs` against a model); this checks that the cache is used.

    use super::cached;
    use crate::{Context, context_var, copy_context};

    context_var! {
        static CACHED: u64;
        static NAME: String;
    }

    /// What the cache holds for `CACHED` now.
    fn in_cache() -> Option<u64> {
        cached::<u64>(CACHED.cache_slot())
    }

    #[test]
    fn kept_across_switches_into_the_same_snapshot_and_not_into_another() {
        std::thread::spawn(|| {
            let token = CACHED.set(7);
            assert!(CACHED.id().as_u64() < super::super::READ_CACHE_SLOTS);
            assert_eq!(in_cache(), Some(7), "the set fills the slot");
            let copy = copy_context();
            copy.run(|| assert_eq!(in_cache(), Some(7), "a copy is the same node"));
            assert_eq!(in_cache(), Some(7));
            Context::new().run(|| assert_eq!(in_cache(), None, "another node"));
            assert_eq!(in_cache(), None, "stale after coming back");
            assert_eq!(CACHED.get(), 7);
            assert_eq!(in_cache(), Some(7), "the read fills the slot");
            CACHED.scope(8, || assert_eq!(in_cache(), Some(8), "a scope writes it"));
            assert_eq!(in_cache(), None, "and empties it");
            CACHED.reset(token).unwrap();
            assert_eq!(in_cache(), None, "unbound");
            assert_eq!(CACHED.try_get().ok(), None);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn an_inline_variable_has_the_slot_of_its_id_and_no_other_variable_has_one() {
        context_var! {
            static FRESH: u64;
        }
        static BOXED_WORD: crate::ContextVar<u64> = crate::context_var!(u64, "boxed");
        assert_eq!(
            FRESH.cache_slot().index(),
            0,
            "no id yet: slot 0, never filled"
        );
        let id = FRESH.id().as_u64();
        assert!(id < super::super::READ_CACHE_SLOTS);
        assert_eq!(FRESH.cache_slot().index() as u64, id);
        BOXED_WORD.id();
        assert_eq!(
            BOXED_WORD.cache_slot().index(),
            0,
            "a boxed variable reads no slot"
        );
        std::thread::spawn(|| {
            let token = BOXED_WORD.set(3);
            assert_eq!(
                cached::<u64>(BOXED_WORD.cache_slot()),
                None,
                "its value is not read as an inline one"
            );
            assert_eq!(BOXED_WORD.get(), 3);
            BOXED_WORD.reset(token).unwrap();
        })
        .join()
        .unwrap();
    }

    /// What the cache knows of `NAME`: `Some(Some(value))`, `Some(None)` (unbound), or
    /// `None` (nothing).
    fn boxed_in_cache() -> Option<Option<String>> {
        match super::with_cached_boxed::<String, _, _>(NAME.id().as_u64(), String::clone) {
            super::CachedBoxed::Value(name) => Some(Some(name)),
            super::CachedBoxed::Unbound(_) => Some(None),
            super::CachedBoxed::Unknown(_) => None,
        }
    }

    #[test]
    fn boxed_values_and_their_absence_are_cached_too() {
        std::thread::spawn(|| {
            let token = CACHED.set(1); // a snapshot to look `NAME` up in
            // An id first: a variable without one reads key 0, which has no slot.
            assert!(crate::engine::has_boxed_slot(NAME.id().as_u64()));
            assert_eq!(NAME.try_get().ok(), None);
            assert_eq!(boxed_in_cache(), Some(None), "a miss caches the absence");
            let name = NAME.set("a".to_owned());
            assert_eq!(
                boxed_in_cache(),
                Some(Some("a".to_owned())),
                "the set fills it"
            );
            NAME.scope("b".to_owned(), || {
                assert_eq!(
                    boxed_in_cache(),
                    Some(Some("b".to_owned())),
                    "a scope writes it"
                );
            });
            assert_eq!(boxed_in_cache(), None, "and empties it");
            assert_eq!(NAME.get(), "a");
            assert_eq!(
                boxed_in_cache(),
                Some(Some("a".to_owned())),
                "the read fills it"
            );
            Context::new().run(|| assert_eq!(boxed_in_cache(), None, "another node"));
            NAME.reset(name).unwrap();
            CACHED.reset(token).unwrap();
        })
        .join()
        .unwrap();
    }

    /// Counts its drops.
    struct Tracked(crate::sync::Arc<crate::sync::AtomicU64>);

    impl Drop for Tracked {
        fn drop(&mut self) {
            self.0.fetch_add(1, crate::sync::Ordering::Relaxed);
        }
    }

    context_var! {
        static TRACKED: Tracked;
    }

    /// A publication made while another thread loads the object's snapshot leaves the
    /// snapshot it replaced in the cell (`sync::publish`); the next publication hands it
    /// back, and the set that made it retires it: nothing is lost or kept for good.
    #[test]
    fn a_snapshot_kept_by_the_cell_is_retired_by_the_next_publication() {
        use crate::sync::{Arc, AtomicU64, Ordering};
        std::thread::spawn(|| {
            let drops = Arc::new(AtomicU64::new(0));
            let _handle = Context::current(); // the base frame is now observed
            let shared = super::current_shared().unwrap();
            drop(TRACKED.set(Tracked(drops.clone()))); // published: the cell holds it
            let load = shared.published().hold_load();
            drop(TRACKED.set(Tracked(drops.clone())));
            assert_eq!(
                drops.load(Ordering::Relaxed),
                0,
                "the first value's snapshot is kept by the cell: a load may be counting it"
            );
            drop(load);
            drop(TRACKED.set(Tracked(drops.clone())));
            assert_eq!(
                drops.load(Ordering::Relaxed),
                2,
                "the next publication retires the kept snapshot and the one it replaced"
            );
            assert_eq!(Context::current().snapshot().len(), 1);
        })
        .join()
        .unwrap();
    }
}
