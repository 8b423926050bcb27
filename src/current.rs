//! Per-thread state: the frame (context) the thread is running now.
//!
//! One thread-local, `HOT`, holds everything: a raw pointer to the root node of the
//! current snapshot (all [`with_binding`] needs), a counter of active borrows, the
//! light-frame pointer, this thread's block of ids (context ids, frame ids, change markers:
//! handing one out never touches a shared cache line, and ids stay unique across threads
//! even when a task's frame moves), and the frame itself: the current snapshot (`Vars`),
//! the [`Shared`] context object it writes through to (if any), the frame's identity for
//! token checks, and snapshots whose release is deferred.
//!
//! `HOT` has a `const` initialiser and no destructor (the owning fields are
//! `ManuallyDrop`), so reaching it compiles to a TLS address computation with no lazy
//! initialisation or liveness check ([`with_hot`]). The zero-sized `TEARDOWN`
//! thread-local, registered the first time a frame is stored ([`with_state`]), releases
//! the frame at thread exit: it nulls `HOT.root` first, so code that runs while the
//! thread's values are dropped reads defaults instead of freed memory, and marks the
//! thread torn down, so writes from then on fail with an [`AccessError`].
//!
//! **No borrow across user code.** Every field is a `Cell`; state is read with
//! `take`/`replace` and written back before any user code (a closure, a value's `Drop`)
//! can run. Snapshots that stop being current are dropped only after the state is
//! consistent again ([`retire`]).
//!
//! **Why the raw root pointer is valid.** Outside light frames ([`Light`]), `HOT.root`
//! equals `HOT.vars.root_ptr()`: both are written together, in every function below,
//! before anything else can observe them, so the node is kept alive by `HOT.vars` as
//! long as the pointer is current (an in-place change keeps the node). Inside an
//! unmaterialized light frame, `HOT.root` is that frame's snapshot, owned by the
//! [`enter_light`] call running it (a task's frame, the borrow a rayon job was given, or
//! the runner copy of a context object) until that call restores the pointer and
//! returns. A reader that runs user code while holding a reference into the node (the
//! closure of [`ContextVar::with`](crate::ContextVar::with), or `T::clone`) counts itself
//! in `HOT.borrows`; while that count is non-zero, no change is made in place, and a
//! snapshot that stops being current is parked in `HOT.graveyard` instead of dropped, so
//! the node outlives the reference. The last borrow to end drops the parked snapshots.

use std::marker::PhantomData;
use std::mem::{ManuallyDrop, MaybeUninit};
use std::ptr;

use crate::context::Shared;
use crate::error::AccessError;
use crate::map::{Map, Node};
use crate::observe;
use crate::sync::{Arc, Cell, StaticCounter, thread_locals};
use crate::value::Entry;

/// A snapshot of bindings: var id → entry.
pub(crate) type Vars = Map<Entry>;

/// Context and frame ids are handed out in blocks, so a thread allocates ids without
/// touching a shared counter. 0 means "not assigned".
static NEXT_ID_BLOCK: StaticCounter = StaticCounter::new(1);
const ID_BLOCK: u64 = 1 << 16;

struct Hot {
    root: Cell<*const Node<Entry>>,
    /// The light frame running now, if the current frame is one ([`Light`]).
    light: Cell<*const Light>,
    borrows: Cell<usize>,
    deferred: Cell<bool>,
    ids_next: Cell<u64>,
    ids_end: Cell<u64>,
    /// Whether the thread's teardown guard is registered, and whether it has run.
    status: Cell<Status>,
    // ----- the current frame (moved in and out as a whole by `swap_frame`) -----
    // The fields that own something are `ManuallyDrop`, so that `Hot` has no destructor
    // (one would add a liveness check to every access); `Teardown` empties them instead.
    vars: ManuallyDrop<Cell<Vars>>,
    ctx: ManuallyDrop<Cell<Option<Arc<Shared>>>>,
    id: Cell<u64>,
    /// Changed (to a fresh id) by every set, reset and restore of this frame's snapshot,
    /// so a token can tell whether anything happened since its set.
    last_change: Cell<u64>,
    /// A set or reset was not published to `ctx` because nobody else could see it.
    dirty: Cell<bool>,
    /// Snapshots retired while a borrow was active, dropped when the last borrow ends.
    graveyard: ManuallyDrop<Cell<Vec<Vars>>>,
    /// How many light frames are running on this thread (nested `enter_light` calls).
    depth: Cell<usize>,
    /// Frame restorations a [`FrameGuard`] could not do when it was dropped, because a
    /// light frame entered after it was still running (a panic unwinding through it):
    /// each waits, with the guard's depth, until the light frames above it have exited.
    pending: ManuallyDrop<Cell<Vec<(usize, Frame)>>>,
    /// `pending` is not empty (checked on every light-frame exit).
    has_pending: Cell<bool>,
}

/// Where the thread is in its life, as far as `HOT` is concerned.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Status {
    /// The teardown guard (`TEARDOWN`) is not registered yet: nothing that needs
    /// releasing has been stored.
    Fresh,
    /// The guard is registered and will release the frame at thread exit.
    Alive,
    /// The guard has run: the thread is being torn down, and writes are refused.
    TornDown,
}

impl Hot {
    const fn new() -> Self {
        Self {
            root: Cell::new(ptr::null()),
            light: Cell::new(ptr::null()),
            borrows: Cell::new(0),
            deferred: Cell::new(false),
            ids_next: Cell::new(0),
            ids_end: Cell::new(0),
            status: Cell::new(Status::Fresh),
            vars: ManuallyDrop::new(Cell::new(Map::new())),
            ctx: ManuallyDrop::new(Cell::new(None)),
            id: Cell::new(0),
            last_change: Cell::new(0),
            dirty: Cell::new(false),
            graveyard: ManuallyDrop::new(Cell::new(Vec::new())),
            depth: Cell::new(0),
            pending: ManuallyDrop::new(Cell::new(Vec::new())),
            has_pending: Cell::new(false),
        }
    }

    fn next_id(&self) -> u64 {
        let next = self.ids_next.get();
        if next != self.ids_end.get() {
            self.ids_next.set(next + 1);
            return next;
        }
        let start = NEXT_ID_BLOCK.fetch_add(ID_BLOCK);
        self.ids_next.set(start + 1);
        self.ids_end.set(start + ID_BLOCK);
        start
    }

    fn frame_id(&self) -> u64 {
        match self.id.get() {
            0 => {
                let id = self.next_id();
                self.id.set(id);
                id
            }
            id => id,
        }
    }

    fn vars_clone(&self) -> Vars {
        let vars = self.vars.take();
        let copy = vars.clone();
        self.vars.set(vars);
        copy
    }

    /// Makes `new` the current snapshot and returns the old one. No user code runs.
    fn install(&self, new: Vars) -> Vars {
        self.root.set(new.root_ptr());
        self.vars.replace(new)
    }

    /// Binds `key` to `entry` (or unbinds it, for `None`) by writing into the current
    /// snapshot's root node, if nobody else holds the snapshot and no borrow of it is
    /// active ([`Map::insert_in_place`]). Returns the entry `key` had; `Err` gives `entry`
    /// back when the change needs a new snapshot. No user code runs, and `HOT.root` stays
    /// valid: an in-place change keeps the root, except a removal that empties the map.
    #[inline(always)]
    fn rebind_in_place(
        &self,
        key: u64,
        entry: Option<Entry>,
    ) -> Result<Option<Entry>, Option<Entry>> {
        if self.borrows.get() != 0 {
            return Err(entry);
        }
        let mut vars = self.vars.take();
        let outcome = match entry {
            Some(entry) => vars.insert_in_place(key, entry).map_err(Some),
            None => vars.remove_in_place(key).map_err(|()| None),
        };
        self.root.set(vars.root_ptr());
        self.vars.set(vars);
        outcome
    }

    /// [`rebind_in_place`](Self::rebind_in_place) by path copying: installs a new
    /// snapshot and returns the entry `key` had and the replaced snapshot, for the caller
    /// to [`retire`] once the state is consistent (a borrow in progress may point into it).
    fn rebind_copy(&self, key: u64, entry: Option<Entry>) -> (Option<Entry>, Vars) {
        let current = self.vars_clone();
        let old = current.get(key).cloned();
        let new = match entry {
            Some(entry) => current.insert(key, entry),
            None => current.remove(key).unwrap_or(current),
        };
        (old, self.install(new))
    }

    /// Publishes the current snapshot to the frame's context object if anyone else can
    /// see that object, and returns what the object held before (to be retired by the
    /// caller). A context object referenced only by this frame (`strong_count == 1`: its
    /// handles were all dropped) cannot be observed, so the publication is skipped and
    /// the frame marked dirty; a handle made later publishes first ([`current_shared`]).
    #[inline]
    fn publish(&self) -> Option<Vars> {
        // No context object (a private frame): the cell is left holding `None`.
        let shared = self.ctx.take()?;
        self.publish_to_object(shared)
    }

    #[cold]
    fn publish_to_object(&self, shared: Arc<Shared>) -> Option<Vars> {
        let old = publish_to(&shared, || self.vars_clone());
        self.dirty.set(old.is_none());
        self.ctx.set(Some(shared));
        old
    }
}

/// Stores `vars()` in `shared` if anyone besides the running frame can see the object
/// (`strong_count > 1`), returning the object's previous snapshot for the caller to
/// retire; `None` if the publication was skipped.
fn publish_to(shared: &Arc<Shared>, vars: impl FnOnce() -> Vars) -> Option<Vars> {
    (Arc::strong_count(shared) > 1).then(|| shared.replace_vars(vars()))
}

/// The thread's teardown guard: `HOT` has no destructor (so that reaching it is a plain
/// TLS access), and this zero-sized thread-local, registered the first time the thread
/// stores something in `HOT`'s frame, releases that frame at thread exit.
struct Teardown;

impl Drop for Teardown {
    fn drop(&mut self) {
        let _ = HOT.try_with(tear_down);
    }
}

/// Releases the thread's frame at thread exit and refuses writes from then on.
fn tear_down(hot: &Hot) {
    hot.status.set(Status::TornDown);
    // Readers that run while the values below are dropped must not follow the root, and
    // writers are refused from here on (`with_state`).
    hot.root.set(ptr::null());
    hot.light.set(ptr::null());
    let vars = hot.vars.take();
    if let Some(shared) = hot.ctx.take() {
        if hot.dirty.get() {
            drop(publish_to(&shared, || vars.clone()));
        }
        // SAFETY: the thread's base frame holds its object's flag (`current_shared` made
        // it with `new_entered`); nothing borrows the runner's copy now.
        drop(unsafe { shared.owner().leave_with(vars.clone()) });
    }
    // May run user destructors, which see defaults and cannot write.
    drop(vars);
    drop(hot.graveyard.take());
    drop(hot.pending.take());
}

/// Loom drops every thread-local of a finished thread, `HOT` included, in an order of
/// its own: if `HOT` goes first, `TEARDOWN` can no longer reach it, so `HOT` releases the
/// frame itself (the second of the two finds it empty). Normal builds keep `HOT` free of
/// a destructor (see `with_hot`).
#[cfg(contextvars_loom)]
impl Drop for Hot {
    fn drop(&mut self) {
        tear_down(self);
    }
}

thread_locals! {
    static HOT: Hot = Hot::new();
    static TEARDOWN: Teardown = Teardown;
}

/// Calls `f` with this thread's `Hot`.
///
/// `HOT.with(f)` is a generic call that LLVM often leaves out of line when `f` is large
/// (it was, for `ContextVar::get`: a call plus an indirect call to the TLS accessor).
/// Taking only the address inside `with` keeps that closure trivial, so the whole access
/// inlines to a TLS address computation.
// `with_hot` relies on this: no destructor, hence no teardown of `HOT`'s storage.
#[cfg(not(contextvars_loom))]
const _: () = assert!(!std::mem::needs_drop::<Hot>());

#[inline(always)]
fn with_hot<R>(f: impl FnOnce(&Hot) -> R) -> R {
    let hot: *const Hot = HOT.with(ptr::from_ref);
    // SAFETY: `HOT` has a `const` initialiser and no destructor, so its storage is
    // initialised before first use and stays valid until the thread's TLS block is freed,
    // after every frame of this thread (including the caller's) has returned. `Hot` is
    // `!Sync`, and the reference does not outlive the call, so it is used on this thread
    // only, and only through `Cell`s.
    f(unsafe { &*hot })
}

/// Calls `f` with the thread's state, registering the teardown guard on first use;
/// `Err` during thread teardown.
#[inline]
fn with_state<R>(f: impl FnOnce(&Hot) -> R) -> Result<R, AccessError> {
    with_hot(|hot| {
        if hot.status.get() != Status::Alive && !register(hot) {
            return Err(AccessError::new());
        }
        Ok(f(hot))
    })
}

/// Registers the teardown guard if the thread is fresh; `false` if it is torn down.
#[cold]
fn register(hot: &Hot) -> bool {
    if hot.status.get() == Status::Fresh && TEARDOWN.try_with(|_| ()).is_ok() {
        hot.status.set(Status::Alive);
    }
    hot.status.get() == Status::Alive
}

/// Drops `vars` now, or parks it until the last active borrow ends.
fn retire(vars: Vars) {
    let parked = with_hot(|hot| {
        if hot.borrows.get() == 0 {
            return Some(vars);
        }
        if hot.status.get() == Status::TornDown {
            // Nothing would drain the graveyard any more.
            return Some(vars);
        }
        let mut graveyard = hot.graveyard.take();
        graveyard.push(vars);
        hot.graveyard.set(graveyard);
        hot.deferred.set(true);
        None
    });
    drop(parked);
}

#[cold]
fn drain_graveyard() {
    let _ = HOT.try_with(|hot| {
        loop {
            let dead = hot.graveyard.take();
            if dead.is_empty() {
                break;
            }
            drop(dead); // may run user destructors, which may park more snapshots
        }
    });
}

/// Counts an active borrow of the current snapshot; see the module docs.
struct Borrow<'a>(&'a Hot);

impl<'a> Borrow<'a> {
    #[inline]
    fn new(hot: &'a Hot) -> Self {
        hot.borrows.set(hot.borrows.get() + 1);
        Borrow(hot)
    }
}

impl Drop for Borrow<'_> {
    #[inline]
    fn drop(&mut self) {
        let left = self.0.borrows.get() - 1;
        self.0.borrows.set(left);
        if left == 0 && self.0.deferred.get() {
            self.0.deferred.set(false);
            drain_graveyard();
        }
    }
}

/// Calls `f` with the current binding of variable `key`, as a `T`.
///
/// `key` must be the id of a `ContextVar<T>` (the id → type invariant of `value.rs`).
#[inline]
pub(crate) fn with_binding<T: 'static, R>(key: u64, f: impl FnOnce(Option<&T>) -> R) -> R {
    with_hot(|hot| {
        let root = hot.root.get();
        if root.is_null() {
            return f(None);
        }
        let _borrow = Borrow::new(hot);
        // SAFETY: `root` is `HOT.vars.root_ptr()` (module invariant), so the node is
        // owned by the current snapshot; `_borrow` defers the release of that snapshot
        // until after `f` returns, even if `f` sets variables or enters contexts.
        let node = unsafe { &*root };
        // SAFETY: an entry under `key` was made by the `ContextVar<T>` whose id is `key`.
        let value = node
            .get(key)
            .map(|entry| unsafe { entry.downcast_unchecked::<T>() });
        f(value)
    })
}

/// A clone of the current snapshot (empty during thread teardown).
pub(crate) fn vars() -> Vars {
    let light = with_hot(|hot| hot.light.get());
    if !light.is_null() {
        // SAFETY: a non-null `HOT.light` is the current, unmaterialized light frame
        // (materializing clears it), alive for the duration of its `enter_light` call (see `Light`).
        return unsafe { (*light).vars() }.clone();
    }
    with_hot(Hot::vars_clone)
}

/// Calls `f` with the current snapshot, to hand to structured work that finishes before
/// `f` returns (a rayon `join` or `scope`).
///
/// Inside a light frame (a rayon job, a task's poll, `Context::run`, an
/// `install_with_context`) the frame's own snapshot is lent, so `join`s there take no
/// reference count at all; elsewhere `f` gets a counted clone. A lent snapshot outlives
/// `f`: it is kept alive by the code that started the enclosing light frame, which
/// cannot return before `f` does, and a write in the frame (even by an unrelated job that
/// rayon runs on this thread meanwhile) materializes a copy instead of replacing it.
#[cfg_attr(not(feature = "rayon"), allow(dead_code))]
pub(crate) fn with_captured<R>(f: impl FnOnce(&Vars) -> R) -> R {
    let light = with_hot(|hot| hot.light.get());
    if light.is_null() {
        return f(&vars());
    }
    // SAFETY: a non-null `HOT.light` is the current, unmaterialized light frame, alive
    // until its `enter_light` call returns, which is below us on this thread's stack; its
    // snapshot (borrowed, or the storage's, which is not written while the light frame
    // runs) stays where it is until then. See `Light`.
    f(unsafe { (*light).vars() })
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

/// Binds `entry` under `key` in the current frame.
pub(crate) fn set_binding(key: u64, entry: Entry) -> Result<SetState, AccessError> {
    let (set, published) = with_state(|hot| {
        materialize(hot);
        let (old, prev) = match hot.rebind_in_place(key, Some(entry)) {
            Ok(old) => (old, None),
            Err(entry) => {
                let (old, prev) = hot.rebind_copy(key, entry);
                (old, Some(prev))
            }
        };
        let seq = hot.next_id();
        let set = SetState {
            old,
            frame_id: hot.frame_id(),
            prev,
            seq,
            prev_change: hot.last_change.replace(seq),
        };
        (set, hot.publish())
    })?;
    if observe::publishing() {
        observe::on_change();
    }
    if let Some(old) = published {
        retire(old);
    }
    Ok(set)
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
pub(crate) fn reset_binding(key: u64, set: SetState) -> Result<(), (ResetFailure, SetState)> {
    let mut set = Some(set);
    let outcome = with_state(|hot| {
        materialize(hot);
        let mut token = set.take().expect("taken once");
        if hot.frame_id() != token.frame_id {
            return Err(token);
        }
        let unchanged = hot.last_change.get() == token.seq;
        let (replaced_entry, replaced, last_change) =
            match hot.rebind_in_place(key, token.old.take()) {
                Ok(entry) => (entry, None, None),
                Err(old) => match token.prev.take() {
                    Some(prev) if unchanged => (None, Some(hot.install(prev)), None),
                    prev => {
                        // Not reinstalled: retired with the token below.
                        token.prev = prev;
                        let (entry, replaced) = hot.rebind_copy(key, old);
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
        Ok((replaced_entry, replaced, hot.publish(), token))
    });
    match outcome {
        Ok(Ok((replaced_entry, replaced, published, token))) => {
            if observe::publishing() {
                observe::on_change();
            }
            if let Some(vars) = replaced {
                retire(vars);
            }
            if let Some(vars) = published {
                retire(vars);
            }
            // Dropped only now, with the state consistent: each may hold the last
            // reference to a value, whose `Drop` may use context variables.
            drop(replaced_entry);
            drop(token);
            Ok(())
        }
        Ok(Err(token)) => Err((ResetFailure::DifferentContext, token)),
        Err(_) => Err((
            ResetFailure::Access,
            set.take().expect("closure did not run"),
        )),
    }
}

/// The context object of the current frame, made on first request.
///
/// The frame keeps its identity (tokens made before stay valid) and the object counts as
/// entered until the frame ends, as `Context::current` documents.
pub(crate) fn current_shared() -> Result<Arc<Shared>, AccessError> {
    let (shared, old) = with_state(|hot| {
        materialize(hot);
        let existing = hot.ctx.take();
        let shared = match existing {
            Some(shared) => shared,
            None => Arc::new(Shared::new_entered(hot.frame_id(), hot.vars_clone())),
        };
        let handle = shared.clone();
        hot.ctx.set(Some(shared));
        // Publish what an earlier, unobserved set left unpublished.
        let old = if hot.dirty.get() { hot.publish() } else { None };
        (handle, old)
    })?;
    if let Some(old) = old {
        retire(old);
    }
    Ok(shared)
}

/// `Ok` unless the thread's state is being torn down.
pub(crate) fn check_alive() -> Result<(), AccessError> {
    with_state(|_| ())
}

/// A fresh context id from this thread's block. Context ids and frame ids share one
/// space, unique across threads.
pub(crate) fn next_context_id() -> u64 {
    with_hot(Hot::next_id)
}

/// A frame: the state a thread runs in, kept outside the thread-local while it is not
/// running (saved by a [`FrameGuard`], owned by a task wrapper between polls, or waiting
/// in a [`Light`] frame for its first write).
pub(crate) struct Frame {
    vars: Vars,
    ctx: Option<Arc<Shared>>,
    id: u64,
    last_change: u64,
    dirty: bool,
}

impl Frame {
    /// A frame of its own over `vars` that writes through to no context object: a copy
    /// of a context (a thread, job or task's private context). Its id is assigned on the
    /// first set, so entering it costs no counter.
    pub(crate) fn private(vars: Vars) -> Self {
        Self {
            vars,
            ctx: None,
            id: 0,
            last_change: 0,
            dirty: false,
        }
    }

    /// A frame that runs the context object `shared`, which the caller has already
    /// marked entered: the frame leaves it when it is dropped.
    pub(crate) fn entered(shared: Arc<Shared>) -> Self {
        Self {
            // SAFETY: the caller entered `shared` (see the doc comment), and the reference
            // is used only for this clone.
            vars: unsafe { shared.owner().get() }.clone(),
            id: shared.id,
            ctx: Some(shared),
            last_change: 0,
            dirty: false,
        }
    }
}

impl Drop for Frame {
    /// Releases what a frame that stopped running holds: publishes an unpublished change
    /// to its context object and leaves that object, handing it the final snapshot as the
    /// next runner's starting point; or, for a private frame, releases its snapshot.
    #[inline]
    fn drop(&mut self) {
        if self.ctx.is_none() && self.vars.is_empty() {
            return; // nothing to release (a light frame's unused storage)
        }
        self.release();
    }
}

impl Frame {
    /// The body of `drop` for a frame that holds something.
    #[inline(never)]
    fn release(&mut self) {
        let vars = std::mem::take(&mut self.vars);
        let Some(shared) = self.ctx.take() else {
            retire(vars);
            return;
        };
        let published = if self.dirty {
            publish_to(&shared, || vars.clone())
        } else {
            None
        };
        // SAFETY: a frame with a context object holds its entered flag: it was made by
        // `Frame::entered` (after `try_enter`), by `current_shared` (a `new_entered`
        // object), or by materializing `run_entered`'s light frame (whose caller entered
        // and which then leaves it to this frame). No reference from `owner().get()` is
        // in use: only an unmaterialized `run_entered` frame holds one.
        let handed_back = unsafe { shared.owner().leave_with(vars) };
        // Released only after leaving: they may run destructors, and a panicking one must
        // not leave the context entered for good.
        if let Some(old) = published {
            retire(old);
        }
        retire(handed_back);
    }
}

/// Exchanges the thread's current frame with `frame`. Runs no user code.
fn swap_frame(hot: &Hot, frame: &mut Frame) {
    let vars = std::mem::take(&mut frame.vars);
    hot.root.set(vars.root_ptr());
    frame.vars = hot.vars.replace(vars);
    frame.ctx = hot.ctx.replace(frame.ctx.take());
    frame.id = hot.id.replace(frame.id);
    frame.last_change = hot.last_change.replace(frame.last_change);
    frame.dirty = hot.dirty.replace(frame.dirty);
}

/// A *light* frame: one that is current for reads (`HOT.root` points at its snapshot)
/// while `HOT` still holds the frame below it. Entering and leaving one touches two
/// `HOT` cells, whatever the number of variables: this is what a rayon job or a future's
/// poll costs when it only reads, which is almost always.
///
/// The first operation that needs the frame itself (a set, a reset, a context handle, a
/// nested frame) *materializes* it ([`materialize`]): a copy of the frame (counted clones
/// of its snapshot and context object) becomes the thread's frame, and the frame it
/// displaces waits in `displaced` until the light frame ends; then the copy, with what
/// the work made of it, is written back to the storage. The storage itself is *not*
/// written while the light frame runs, so its snapshot can be lent to rayon jobs
/// ([`with_captured`]) even if something on this thread materializes meanwhile.
///
/// A light frame lives on the stack of [`enter_light`], which is the only code that sets
/// `HOT.light`, and which puts the previous value back before the `Light` goes out of
/// scope, also when unwinding; so a non-null `HOT.light` always points to a live `Light`
/// of an active `enter_light` on this thread.
struct Light {
    /// The frame's storage: the frame the light frame runs, written back (with what the
    /// work made of it) when a materialized light frame ends. Null for [`run_borrowed`],
    /// whose private frame is simply released at the end; `borrowed` is then set.
    frame: *mut Frame,
    /// If set, the frame's snapshot is this borrowed one, cloned into the storage only on
    /// materialization ([`run_borrowed`], [`run_entered`]).
    borrowed: *const Vars,
    /// If set, the frame runs this context object, entered by the caller of
    /// [`run_entered`]; materialization makes the storage a frame of that object, which
    /// then leaves it when dropped.
    object: *const Arc<Shared>,
    materialized: Cell<bool>,
    /// After materialization (only then initialized), the frame the light frame
    /// displaced. `MaybeUninit`, so that entering a light frame writes nothing here and
    /// leaving one that never materialized drops nothing.
    displaced: Cell<MaybeUninit<Frame>>,
}

impl Light {
    /// The snapshot the light frame runs (before materialization).
    ///
    /// # Safety
    ///
    /// `self` must be the current light frame (`HOT.light`), not yet materialized.
    unsafe fn vars(&self) -> &Vars {
        // SAFETY: while the light frame is current and unmaterialized, `enter_light` does not
        // touch the storage, and the borrow behind `borrowed` outlives the `enter_light` call.
        unsafe {
            match self.borrowed.as_ref() {
                Some(vars) => vars,
                None => &(*self.frame).vars,
            }
        }
    }
}

/// If the current frame is a light one, makes a copy of it the thread's frame (see
/// [`Light`]). Called first by every operation that reads or writes `HOT`'s frame.
#[inline]
fn materialize(hot: &Hot) {
    let light = hot.light.get();
    if !light.is_null() {
        materialize_slow(hot, light);
    }
}

#[cold]
fn materialize_slow(hot: &Hot, light: *const Light) {
    // SAFETY: a non-null `HOT.light` points to the live `Light` of an active `enter_light` on
    // this thread (see `Light`).
    let light = unsafe { &*light };
    // SAFETY: `light` is current and not yet materialized (`HOT.light` is cleared below),
    // so `borrowed` is still lent to it.
    let mut frame = match unsafe { light.borrowed.as_ref() } {
        Some(vars) => Frame::private(vars.clone()),
        None => {
            // SAFETY: without a borrowed snapshot the storage is set (see `Light`). It is
            // only accessed through this pointer while the light frame runs, and only read
            // until it ends; `enter_light` holds the `&mut Frame` it came from for the
            // whole call.
            let storage = unsafe { &*light.frame };
            Frame {
                vars: storage.vars.clone(),
                ctx: storage.ctx.clone(),
                id: storage.id,
                last_change: storage.last_change,
                dirty: storage.dirty,
            }
        }
    };
    // SAFETY: `run_entered` keeps the `Arc` it points to alive for the whole light frame.
    if let Some(shared) = unsafe { light.object.as_ref() } {
        frame.id = shared.id;
        frame.ctx = Some(Arc::clone(shared));
    }
    swap_frame(hot, &mut frame);
    light.displaced.set(MaybeUninit::new(frame));
    light.materialized.set(true);
    hot.light.set(ptr::null());
}

/// Makes `frame` the thread's current frame until the guard is dropped. Gives the frame
/// back if the thread's state is gone (thread teardown).
#[cfg_attr(not(feature = "rayon"), allow(dead_code))]
pub(crate) fn enter(mut frame: Frame) -> Result<FrameGuard, Frame> {
    let entered = with_state(|hot| {
        materialize(hot);
        swap_frame(hot, &mut frame);
        if observe::publishing() {
            observe::on_change();
        }
        hot.depth.get()
    });
    match entered {
        Ok(depth) => Ok(FrameGuard {
            saved: frame,
            depth,
            _not_send: PhantomData,
        }),
        Err(_) => Err(frame),
    }
}

/// Runs `f` in `frame`, then puts the thread's previous frame back and leaves `frame`
/// holding what `f` made of it (a task's context between polls). `frame` runs as a
/// light frame: see [`Light`].
pub(crate) fn run_in<R>(frame: &mut Frame, f: impl FnOnce() -> R) -> R {
    let root = frame.vars.root_ptr();
    enter_light(frame, ptr::null(), ptr::null(), root, f)
}

/// Runs `f` in `frame`, then releases the frame.
pub(crate) fn run_owned<R>(mut frame: Frame, f: impl FnOnce() -> R) -> R {
    run_in(&mut frame, f)
}

/// Runs `f` in a private frame over `vars` without taking a reference count unless `f`
/// writes: the structured hand-off of a rayon `join` or parallel-iterator job, whose
/// parent keeps `vars` alive for the whole call.
#[cfg_attr(not(feature = "rayon"), allow(dead_code))]
pub(crate) fn run_borrowed<R>(vars: &Vars, f: impl FnOnce() -> R) -> R {
    enter_light(ptr::null_mut(), vars, ptr::null(), vars.root_ptr(), f)
}

/// Runs `f` in the context object `shared`, which the caller has entered (`try_enter`
/// succeeded), and leaves it when `f` returns or unwinds: `Context::run`.
///
/// The frame is a light one over the runner's own copy of the snapshot
/// ([`EnteredCell`](crate::sync::EnteredCell)), borrowed with no reference count, and
/// `shared` is borrowed too. If `f` only reads, entering and leaving cost the entry's
/// compare-and-swap, the leaving store and two swaps of `HOT` cells. The first write
/// materializes a frame of the object, which publishes, hands back its final snapshot and
/// leaves when `run_entered` drops it.
pub(crate) fn run_entered<R>(shared: &Arc<Shared>, f: impl FnOnce() -> R) -> R {
    /// Leaves `shared` unless the light frame materialized (the frame in `storage` then
    /// leaves it instead, when it drops right after this).
    struct Leave<'a> {
        shared: &'a Shared,
        storage: Frame,
    }
    impl Drop for Leave<'_> {
        fn drop(&mut self) {
            if self.storage.ctx.is_none() {
                // SAFETY: `run_entered`'s caller entered `shared`, and no frame took the
                // flag over (none materialized); the light frame, which held the only
                // reference from `owner().get()`, has ended.
                unsafe { self.shared.owner().leave() };
            }
        }
    }
    let mut leave = Leave {
        shared,
        storage: Frame::private(Map::new()),
    };
    // SAFETY: the flag is held until `leave` drops, after the light frame (the only user
    // of this reference) has ended; the value is replaced only by `leave_with`, which
    // runs after that too.
    let vars: &Vars = unsafe { shared.owner().get() };
    enter_light(&mut leave.storage, vars, shared, vars.root_ptr(), f)
}

fn enter_light<R>(
    frame: *mut Frame,
    borrowed: *const Vars,
    object: *const Arc<Shared>,
    root: *const Node<Entry>,
    f: impl FnOnce() -> R,
) -> R {
    let light = Light {
        frame,
        borrowed,
        object,
        materialized: Cell::new(false),
        displaced: Cell::new(MaybeUninit::uninit()),
    };
    /// Leaves the light frame, also when `f` unwinds. Declared after `light`, so it runs
    /// while `light` is still alive.
    struct Exit<'a> {
        hot: &'a Hot,
        light: &'a Light,
        root: *const Node<Entry>,
        outer: *const Light,
    }
    impl Exit<'_> {
        /// Leaving a light frame that materialized: the thread's frame becomes the
        /// displaced one again, and the light frame's copy goes back to the storage.
        #[cold]
        #[inline(never)]
        fn leave_materialized(&self) {
            let displaced = self.light.displaced.replace(MaybeUninit::uninit());
            // SAFETY: `materialized` is set only right after `displaced` was initialized,
            // and this is the one place that takes it out.
            let mut frame = unsafe { displaced.assume_init() };
            // During thread teardown there is no thread frame to restore (cannot happen:
            // a light frame cannot materialize then); `frame` is just released.
            if self.hot.status.get() != Status::TornDown {
                // Put the displaced frame back, taking out the light frame's copy.
                swap_frame(self.hot, &mut frame);
                // SAFETY: the storage, if any, is still the `&mut Frame` `enter_light` was
                // given, which nothing else touches until it returns, and nothing borrows
                // its snapshot any more (work it was lent to has ended).
                if let Some(storage) = unsafe { self.light.frame.as_mut() } {
                    let mut original = std::mem::replace(storage, frame);
                    // The copy now in the storage holds the context object and its
                    // entered flag; the original must not leave it when dropped.
                    drop(original.ctx.take());
                    frame = original;
                }
                // Without a storage (`run_borrowed`), the job's private frame ends here.
            }
            self.hot.root.set(self.root);
            self.hot.light.set(self.outer);
            // Released only now that the thread's frame is the outer one again: it may
            // run destructors that use context variables.
            drop(frame);
        }
    }

    impl Drop for Exit<'_> {
        fn drop(&mut self) {
            if self.light.materialized.get() {
                self.leave_materialized();
            } else {
                self.hot.root.set(self.root);
                self.hot.light.set(self.outer);
            }
            let depth = self.hot.depth.get() - 1;
            self.hot.depth.set(depth);
            if self.hot.has_pending.get() {
                run_pending(self.hot, depth);
            }
            if observe::publishing() {
                observe::on_change();
            }
        }
    }
    with_hot(|hot| {
        let _exit = Exit {
            hot,
            light: &light,
            root: hot.root.replace(root),
            outer: hot.light.replace(&light),
        };
        hot.depth.set(hot.depth.get() + 1);
        if observe::publishing() {
            observe::on_change();
        }
        f()
    })
}

/// Makes `vars` the current snapshot again if code since the last call changed it (a
/// parallel-iterator item that set a variable without resetting it), so the next item
/// starts from the captured bindings. One thread-local load when nothing changed.
#[cfg_attr(not(feature = "rayon"), allow(dead_code))]
#[inline]
pub(crate) fn restore(vars: &Vars) {
    if with_hot(|hot| hot.root.get()) != vars.root_ptr() {
        restore_slow(vars);
    }
}

#[cfg_attr(not(feature = "rayon"), allow(dead_code))]
#[cold]
fn restore_slow(vars: &Vars) {
    let dead = with_state(|hot| {
        materialize(hot);
        let old = hot.install(vars.clone());
        // Tokens of the discarded sets must not take the reinstall shortcut.
        hot.last_change.set(hot.next_id());
        [Some(old), hot.publish()]
    });
    if observe::publishing() {
        observe::on_change();
    }
    for vars in dead.into_iter().flatten().flatten() {
        retire(vars);
    }
}

/// Restores the previous frame on drop, also during unwinding, and releases the frame it
/// leaves. `!Send`: it restores *this* thread's state.
#[cfg_attr(not(feature = "rayon"), allow(dead_code))]
pub(crate) struct FrameGuard {
    saved: Frame,
    /// The light-frame depth the guard was made at.
    depth: usize,
    _not_send: PhantomData<*const ()>,
}

impl Drop for FrameGuard {
    fn drop(&mut self) {
        // If the state is gone (the guard outlived the thread's storage), `saved` is
        // still released below: it leaves its context object so other threads can enter.
        let _ = with_state(|hot| {
            if hot.depth.get() > self.depth {
                // A light frame entered after this guard is still running: a panic is
                // unwinding through it, and rayon dropped the folder holding this guard
                // inside that light frame (a pipeline with two `in_current_context`s).
                // Restoring now would pull the frame out from under the light frame, so
                // the restoration waits until the light frames above have exited.
                let saved = std::mem::replace(&mut self.saved, Frame::private(Map::new()));
                let mut pending = hot.pending.take();
                pending.push((self.depth, saved));
                hot.pending.set(pending);
                hot.has_pending.set(true);
            } else {
                swap_frame(hot, &mut self.saved);
            }
        });
        if observe::publishing() {
            observe::on_change();
        }
        // The thread's state is consistent again; `saved` now holds the frame that ended
        // (or nothing, if the restoration waits) and is released when the guard's fields
        // drop.
    }
}

/// Does the restorations of [`FrameGuard`]s made at `depth` or deeper that had to wait
/// (see `FrameGuard::drop`), now that the light frames above `depth` have exited.
#[cold]
#[inline(never)]
fn run_pending(hot: &Hot, depth: usize) {
    let mut pending = hot.pending.take();
    let mut ended = Vec::new();
    while let Some(&(at, _)) = pending.last()
        && at >= depth
    {
        if let Some((_, mut frame)) = pending.pop() {
            swap_frame(hot, &mut frame);
            ended.push(frame);
        }
    }
    hot.has_pending.set(!pending.is_empty());
    hot.pending.set(pending);
    // The state is consistent: the frames that ended may run destructors now.
    drop(ended);
}
