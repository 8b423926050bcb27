//! Frames and entering them.
//!
//! A [`Frame`] is the state a thread runs in: a snapshot, the context object it writes
//! through to (if any), an identity for token checks and a change marker. The thread's
//! current frame lives in `HOT` (`thread`); every other frame lives outside it, owned by
//! whatever will run it next (a task wrapper between polls, a spawned job, a
//! `Context::run` call).
//!
//! **Every frame switch is lexically scoped.** A frame is entered and left inside one
//! call of this module ([`run_in`], [`run_owned`], [`run_borrowed`],
//! [`run_borrowed_each`], [`run_entered`]), and left again when that call returns or
//! unwinds, by a guard that lives on that call's stack and never leaves it. No value that
//! user code can move, leak, `mem::forget` or drop out of order ever restores a frame:
//! the folders, futures and tokens the crate hands out hold frames or snapshots as data,
//! and enter them only inside their own methods. So the frames on a thread always form a
//! stack that matches the call stack, and whoever owns the snapshot behind `HOT.root`
//! (below) is a caller of the code that reads it.
//!
//! **Light frames.** Work that usually only reads (a rayon job, a future's poll,
//! `Context::run`) runs in a *light* frame ([`Light`]): only `HOT.root` and `HOT.light`
//! change on entry and exit. The first operation that needs the frame itself (a set, a
//! reset, a context handle) *materializes* it ([`materialize`]).
//!
//! **Why the raw root pointer is valid.** Outside light frames, `HOT.root` equals
//! `HOT.vars.root_ptr()`: both are written together, before anything else can observe
//! them, so the node is kept alive by `HOT.vars` as long as the pointer is current (an
//! in-place change keeps the node). Inside an unmaterialized light frame, `HOT.root` is
//! that frame's snapshot, owned by the caller of the `enter_light` call running it (a
//! task's frame, the snapshot a rayon job borrows, the runner copy of a context object),
//! which cannot return before `enter_light` does, and `enter_light` puts the previous
//! pointer back before it returns, also when unwinding.

use std::mem::{ManuallyDrop, MaybeUninit};
use std::ptr;

use super::object::Shared;
use super::thread::{Hot, Status, publish_to, retire, with_hot, with_state};
use super::{Vars, announce};
use crate::map::{Map, Node};
use crate::pool::{self, Entered};
use crate::sync::{Arc, Cell};
use crate::value::Entry;

/// A frame: the state a thread runs in, kept outside the thread-local while it is not
/// running (owned by a task wrapper between polls, a spawned job, or the storage of a
/// [`Light`] frame waiting for its first write).
pub(crate) struct Frame {
    pub(super) vars: Vars,
    pub(super) ctx: Option<Arc<Shared>>,
    pub(super) id: u64,
    pub(super) last_change: u64,
    pub(super) dirty: bool,
    /// Whether the frame remembers the bindings it started with ([`Frame::with_origin`]),
    /// and whether `origin_vars` holds them.
    pub(super) origin: Origin,
    /// The bindings the frame started with, kept from its first change on
    /// ([`Origin::Kept`]); empty otherwise.
    pub(super) origin_vars: Vars,
}

/// What a frame remembers of the bindings it started with, so that [`restore_origin`]
/// can give them back (a server's connection task, between two requests).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Origin {
    /// Nothing: a request's, a job's, a thread's or a `Context::run`'s frame.
    None,
    /// The frame's bindings are still the ones it started with (no set or reset has
    /// changed them since it started or was last restored), so nothing is kept.
    Unchanged,
    /// The frame has changed since it started: its starting bindings are in
    /// `origin_vars`, kept by the first change (`binding::set_binding`).
    Kept,
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
            origin: Origin::None,
            origin_vars: Vars::default(),
        }
    }

    /// A private frame over `vars` (see [`Frame::private`]) that remembers them as the
    /// bindings it started with: a task's frame, which the tower layer gives back its
    /// starting bindings when a request it served ends ([`restore_origin`]). Costs
    /// nothing more than a private frame: the frame gets its id when the layer first asks
    /// for it ([`origin_frames`]), and its starting bindings are kept by its first change.
    #[inline]
    pub(crate) fn with_origin(vars: Vars) -> Self {
        Self::private(vars).remembering_origin()
    }

    /// This frame, remembering the bindings it holds now as the ones it started with
    /// (see [`Frame::with_origin`]): a task's frame over a context object
    /// (`in_context`), which the tower layer restores like a copy's.
    #[inline]
    pub(crate) fn remembering_origin(mut self) -> Self {
        debug_assert!(self.origin == Origin::None, "a fresh frame");
        self.origin = Origin::Unchanged;
        self
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
            origin: Origin::None,
            origin_vars: Vars::default(),
        }
    }
}

impl Frame {
    /// Whether a set or reset ever changed this frame's bindings while it ran.
    pub(crate) fn bindings_changed(&self) -> bool {
        self.last_change != 0
    }
}

impl Drop for Frame {
    /// Releases what a frame that stopped running holds: publishes an unpublished change
    /// to its context object and leaves that object, handing it the final snapshot as the
    /// next runner's starting point; or, for a private frame, releases its snapshot.
    #[inline]
    fn drop(&mut self) {
        if self.ctx.is_none() && self.vars.is_empty() && self.origin_vars.is_empty() {
            return; // nothing to release (a light frame's unused storage)
        }
        self.release();
    }
}

impl Frame {
    /// The body of `drop` for a frame that holds something.
    #[inline(never)]
    fn release(&mut self) {
        // Retired last, after the context object is left: its values' destructors may
        // panic, and must not leave the object entered for good.
        let origin = std::mem::take(&mut self.origin_vars);
        let vars = std::mem::take(&mut self.vars);
        let Some(shared) = self.ctx.take() else {
            retire(vars);
            if !origin.is_empty() {
                retire(origin);
            }
            return;
        };
        let published = if self.dirty {
            publish_to(&shared, || vars.clone())
        } else {
            None
        };
        // SAFETY: a frame with a context object holds its entered flag: it was made by
        // `Frame::entered` (after `try_enter`), by `current_shared` (an entered
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
        if !origin.is_empty() {
            retire(origin);
        }
    }
}

/// Exchanges the thread's current frame with `frame`. Runs no user code.
pub(super) fn swap_frame(hot: &Hot, frame: &mut Frame) {
    let vars = std::mem::take(&mut frame.vars);
    hot.root.set(vars.root_ptr());
    frame.vars = hot.vars.replace(vars);
    frame.ctx = hot.ctx.replace(frame.ctx.take());
    frame.id = hot.id.replace(frame.id);
    frame.last_change = hot.last_change.replace(frame.last_change);
    frame.dirty = hot.dirty.replace(frame.dirty);
    frame.origin = hot.origin.replace(frame.origin);
    let origin_vars = std::mem::take(&mut frame.origin_vars);
    frame.origin_vars = hot.origin_vars.replace(origin_vars);
}

/// A *light* frame: one that is current for reads (`HOT.root` points at its snapshot)
/// while `HOT` still holds the frame below it. Entering and leaving one touches two
/// `HOT` cells, whatever the number of variables: this is what a rayon job or a future's
/// poll costs when it only reads, which is almost always.
///
/// The first operation that needs the frame itself (a set, a reset, a context handle)
/// *materializes* it ([`materialize`]): a copy of the frame (counted clones of its
/// snapshot and context object) becomes the thread's frame, and the frame it displaces
/// waits in `displaced` until the light frame ends; then the copy, with what the work
/// made of it, is written back to the storage. The storage itself is *not* written while
/// the light frame runs, so its snapshot can be lent to rayon jobs ([`with_captured`])
/// even if something on this thread materializes meanwhile.
///
/// A light frame lives on the stack of `enter_light`, which is the only code that sets
/// `HOT.light`, and which puts the previous value back before the `Light` goes out of
/// scope, also when unwinding; so a non-null `HOT.light` always points to a live `Light`
/// of an active `enter_light` on this thread.
pub(super) struct Light {
    /// The frame's storage: the frame the light frame runs, written back (with what the
    /// work made of it) when a materialized light frame ends. Null for the borrowed
    /// frames of [`run_borrowed`], whose private frame is simply released at the end;
    /// `borrowed` is then set.
    frame: *mut Frame,
    /// If set, the frame's snapshot is this borrowed one, cloned into the storage only on
    /// materialization ([`run_borrowed`], [`run_entered`]).
    borrowed: *const Vars,
    /// If set, the frame runs this context object, entered by the caller of
    /// [`run_entered`]; materialization makes the storage a frame of that object, which
    /// then leaves it when dropped.
    object: *const Arc<Shared>,
    /// What leaving the frame has to do besides putting `HOT.root` and `HOT.light`
    /// back: [`MATERIALIZED`], [`RESTORE_OUTSIDE`]; 0 for a frame that only read.
    exit_work: Cell<u8>,
    /// `HOT.light` when this frame was entered (the light frame it runs inside, if that
    /// one had not materialized), put back when it exits; also followed outward by
    /// [`origin_frames`].
    outer: Cell<*const Light>,
    /// What ran when the frame was entered (`crate::pool::Entered`), what a set in it is
    /// checked against: read from here while the frame is light, and kept in
    /// `HOT.entered` once it materializes.
    pub(super) entered: Entered,
    /// After materialization (only then initialized), the frame the light frame
    /// displaced, `HOT.stacked` right after materializing (what it is again when the
    /// light frame exits, unless detached frames were stranded inside it) and the
    /// displaced `HOT.entered`. `MaybeUninit`, so that entering a light frame writes
    /// nothing here and leaving one that never materialized drops nothing.
    displaced: Cell<MaybeUninit<Displaced>>,
}

/// What a light frame's materialization displaced (see [`Light::displaced`]).
struct Displaced {
    /// `HOT.stacked` right after materializing.
    level: u32,
    /// `HOT.entered_cell` before.
    entered: Entered,
    /// `HOT.materialized` before: the light frame whose copy `frame` is, if any.
    materialized: *const Light,
    /// The thread's frame before.
    frame: Frame,
}

/// [`Light::exit_work`]: the frame materialized (see [`materialize`]).
const MATERIALIZED: u8 = 1;
/// [`Light::exit_work`]: a request ended while the frame was current, and frames outside
/// it wait to be restored (`HOT.pending_restore`, see [`restore_origins`]).
const RESTORE_OUTSIDE: u8 = 2;

impl Light {
    /// The snapshot the light frame runs (before materialization).
    ///
    /// # Safety
    ///
    /// `self` must be the current light frame (`HOT.light`), not yet materialized.
    unsafe fn vars(&self) -> &Vars {
        // SAFETY: while the light frame is current and unmaterialized, `enter_light` does
        // not touch the storage, and the borrow behind `borrowed` outlives the
        // `enter_light` call.
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
pub(super) fn materialize(hot: &Hot) {
    let light = hot.light.get();
    if !light.is_null() {
        materialize_slow(hot, light);
    }
}

#[cold]
fn materialize_slow(hot: &Hot, light: *const Light) {
    // SAFETY: a non-null `HOT.light` points to the live `Light` of an active
    // `enter_light` on this thread (see `Light`).
    let light = unsafe { &*light };
    // SAFETY: `light` is current and not yet materialized (`HOT.light` is cleared below),
    // so `borrowed` is still lent to it.
    let mut frame = match unsafe { light.borrowed.as_ref() } {
        Some(vars) => Frame::private(vars.clone()),
        None => {
            // SAFETY: without a borrowed snapshot the storage is set (see `Light`). It is
            // only accessed through this pointer while the light frame runs, and only
            // read until it ends; `enter_light`'s caller holds the `&mut Frame` it came
            // from for the whole call.
            let storage = unsafe { &*light.frame };
            Frame {
                vars: storage.vars.clone(),
                ctx: storage.ctx.clone(),
                id: storage.id,
                last_change: storage.last_change,
                dirty: storage.dirty,
                origin: storage.origin,
                origin_vars: storage.origin_vars.clone(),
            }
        }
    };
    // SAFETY: `run_entered` keeps the `Arc` it points to alive for the whole light frame.
    if let Some(shared) = unsafe { light.object.as_ref() } {
        frame.id = shared.id;
        frame.ctx = Some(Arc::clone(shared));
    }
    swap_frame(hot, &mut frame);
    let level = hot.stacked.get() + 1;
    hot.stacked.set(level);
    let displaced = Displaced {
        level,
        entered: hot.entered_cell.replace(light.entered),
        materialized: hot.materialized.replace(light),
        frame,
    };
    light.displaced.set(MaybeUninit::new(displaced));
    light.exit_work.set(light.exit_work.get() | MATERIALIZED);
    hot.light.set(ptr::null());
}

/// Runs `f` in `frame`, then puts the thread's previous frame back and leaves `frame`
/// holding what `f` made of it (a task's context between polls). `frame` runs as a
/// light frame: see [`Light`]. For a future's poll (or drop) in its own frame, and for
/// releasing what a unit of work left ([`Entered::FOR_POLL`]: a set there is the unit's
/// own, whichever task polls it); synchronous work runs with [`run_owned`].
#[inline]
pub(crate) fn run_in<R>(frame: &mut Frame, f: impl FnOnce() -> R) -> R {
    let root = frame.vars.root_ptr();
    enter_light(frame, ptr::null(), ptr::null(), root, Entered::FOR_POLL, f)
}

/// Runs `f` in a fresh, empty private frame: for releasing what a unit of work (a
/// request, a task) held once the unit is over, so that a value's destructor that reads
/// sees no other unit's values and one that sets changes nothing any other code sees.
/// What such destructors set is released the same way, a few rounds deep (a destructor
/// that sets a value whose destructor sets again, forever, is let go after that).
pub(crate) fn isolated(f: impl FnOnce()) {
    /// Rounds of destructors that set, released in frames of their own.
    const ROUNDS: usize = 4;
    let mut frame = Frame::private(Vars::default());
    run_in(&mut frame, f);
    for _ in 0..ROUNDS {
        if frame.ctx.is_none() && frame.vars.is_empty() {
            return;
        }
        let leftover = std::mem::replace(&mut frame, Frame::private(Vars::default()));
        run_in(&mut frame, move || drop(leftover));
    }
}

/// Drops `value` in a fresh, empty private frame ([`isolated`]). `value` must not own the
/// snapshot of the thread's current frame (a borrow may point into it: such a snapshot
/// is retired, see `restore_origin`); frames and task state never do.
pub(crate) fn drop_isolated<T>(value: T) {
    isolated(move || drop(value));
}

impl Frame {
    /// Whether releasing this frame now may run a value's destructor: it is the last
    /// owner of its snapshot, or it holds a context object (leaving it may release the
    /// object's previous snapshot). A frame that only read still shares its snapshot
    /// with the context it was copied from: the common case, and a cheap check.
    #[inline]
    fn release_may_run_destructors(&self) -> bool {
        // A kept origin counts whatever its count: it may share its snapshot with `vars`
        // alone, where each count says "shared" and neither is.
        self.ctx.is_some() || !self.vars.is_shared_or_empty() || !self.origin_vars.is_empty()
    }
}

/// Releases the frame in `slot`, which a unit of work (a request, a wrapped future) ran
/// in and which is over, in a frame of its own ([`drop_isolated`]) if that may run a
/// value's destructor; otherwise leaves it for its owner's drop, which releases it
/// without running any.
#[inline]
pub(crate) fn release_isolated(slot: &mut Frame) {
    if slot.release_may_run_destructors() {
        release_isolated_now(slot);
    }
}

/// The rare half of [`release_isolated`], out of line so that the common half stays a
/// few instructions in every destructor that calls it.
#[cold]
#[inline(never)]
fn release_isolated_now(slot: &mut Frame) {
    drop_isolated(std::mem::replace(slot, Frame::private(Vars::default())));
}

impl Frame {
    /// This frame as a private one, for work that goes on after the frame's own work
    /// ended (a response body after its request's future): the frame itself if it runs
    /// no context object; otherwise a private copy of its snapshot, and the frame, which
    /// leaves its object (so the object can be entered again), released in a frame of
    /// its own.
    pub(crate) fn into_private(mut self) -> Frame {
        if self.ctx.is_none() {
            return self;
        }
        let copy = Frame::private(self.vars.clone());
        release_isolated(&mut self);
        copy
    }
}

/// Runs `f` in `frame`, then releases the frame: synchronous work (a thread's, a spawned
/// job's), which records what runs on the thread now ([`pool::entered_now`]).
pub(crate) fn run_owned<R>(mut frame: Frame, f: impl FnOnce() -> R) -> R {
    let root = frame.vars.root_ptr();
    enter_light(
        &mut frame,
        ptr::null(),
        ptr::null(),
        root,
        pool::entered_now(),
        f,
    )
}

/// Runs `f` in an empty frame in which every set is refused
/// ([`Entered::READ_ONLY`](crate::pool::Entered::READ_ONLY)): where a rayon worker waits
/// inside a call of `contextvars::rayon` and may run plain jobs it steals, which must
/// neither see the waiting job's values nor bind any of their own there.
pub(crate) fn run_read_only<R>(f: impl FnOnce() -> R) -> R {
    let empty = Vars::default();
    enter_light(
        ptr::null_mut(),
        &empty,
        ptr::null(),
        empty.root_ptr(),
        Entered::READ_ONLY,
        f,
    )
}

/// Runs `f` in a private frame over `vars` without taking a reference count unless `f`
/// writes: the structured hand-off of a rayon job, whose parent keeps `vars` alive for
/// the whole call.
pub(crate) fn run_borrowed<R>(vars: &Vars, f: impl FnOnce() -> R) -> R {
    let entered = pool::entered_now();
    enter_light(
        ptr::null_mut(),
        vars,
        ptr::null(),
        vars.root_ptr(),
        entered,
        f,
    )
}

/// Calls `step` until it returns `false`, each call in a private frame over `vars` that
/// starts from `vars`' bindings: the items of a rayon job, each of which must not see
/// what the one before it did.
///
/// Consecutive calls share one light frame while they only read (a read leaves nothing
/// behind); a call that materialized the frame (a set, a reset, a context handle) ends
/// it, and the next call gets a fresh one. So an item pays two `HOT` cell writes only
/// when the one before it wrote, and nothing otherwise.
pub(crate) fn run_borrowed_each(vars: &Vars, mut step: impl FnMut() -> bool) {
    let root = vars.root_ptr();
    let entered = pool::entered_now();
    let mut more = true;
    while more {
        more = enter_light(ptr::null_mut(), vars, ptr::null(), root, entered, || {
            while step() {
                // `HOT.light` is this frame again unless `step` materialized it (nested
                // frames put it back when they end; materializing clears it).
                if with_hot(|hot| hot.light.get().is_null()) {
                    return true;
                }
            }
            false
        });
    }
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
    /// leaves it instead, when it is dropped here).
    struct Leave<'a> {
        shared: &'a Shared,
        storage: ManuallyDrop<Frame>,
    }
    impl Drop for Leave<'_> {
        // Always inlined (with the rare half out of line): `Context::run`'s cost is
        // mostly this and the entry, and the inliner's choice here moved with unrelated
        // code (118 instructions inlined, 130 not).
        #[inline(always)]
        fn drop(&mut self) {
            if self.storage.ctx.is_none() {
                // SAFETY: `run_entered`'s caller entered `shared`, and no frame took the
                // flag over (none materialized); the light frame, which held the only
                // reference from `owner().get()`, has ended.
                unsafe { self.shared.owner().leave() };
                // The storage was never written (only a materialized light frame writes
                // it back, and that leaves a context object in it): it holds two empty
                // maps and no object, so not dropping it frees nothing.
            } else {
                self.drop_materialized();
            }
        }
    }
    impl Leave<'_> {
        /// The frame the light frame materialized into leaves the object instead.
        #[cold]
        #[inline(never)]
        fn drop_materialized(&mut self) {
            // SAFETY: dropped once, here (from `drop`), and never used again.
            unsafe { ManuallyDrop::drop(&mut self.storage) };
        }
    }
    let mut leave = Leave {
        shared,
        storage: ManuallyDrop::new(Frame::private(Map::new())),
    };
    // SAFETY: the flag is held until `leave` drops, after the light frame (the only user
    // of this reference) has ended; the value is replaced only by `leave_with`, which
    // runs after that too.
    let vars: &Vars = unsafe { shared.owner().get() };
    let entered = pool::entered_now();
    enter_light(
        &mut *leave.storage,
        vars,
        shared,
        vars.root_ptr(),
        entered,
        f,
    )
}

/// Makes `frame` the thread's current frame until [`leave_detached`]: the one frame
/// switch that is not lexically scoped, for the tokio runtime's task hooks
/// (`contextvars::tokio::isolate_tasks`), which tokio calls right before and right after
/// it polls a task, on the polling thread, as a pair around the poll.
///
/// It stays memory-safe whatever the order of calls: both frames are owned and move by
/// value (no borrowed snapshot is involved); [`leave_detached`] refuses to leave unless
/// the detached frame is the thread's current frame (no light frame entered since is
/// still running); and a light frame that exits with detached frames entered inside it
/// still current (their leave never came: the runtime's after-poll hook was replaced)
/// ends them first, so that it leaves from its own frame, the one that holds its context
/// object's entered flag. A missing leave outside any light frame leaves the thread in
/// the task's context (a wrong value, never a dangling one).
pub(crate) fn enter_detached(frame: Frame) -> Result<(), Frame> {
    let mut frame = Some(frame);
    let entered = with_hot(|hot| {
        if hot.status.get() == Status::TornDown {
            return false;
        }
        materialize(hot);
        let mut displaced = frame.take().expect("taken once");
        swap_frame(hot, &mut displaced);
        let stacked = hot.stacked.get() + 1;
        hot.stacked.set(stacked);
        let mut stack = hot.detached.take();
        // Materialized above: `HOT.entered` is the current frame's. The detached frame
        // is no light frame's copy.
        stack.push((
            stacked,
            hot.entered_cell.replace(Entered::FOR_POLL),
            hot.materialized.replace(ptr::null()),
            displaced,
        ));
        hot.detached.set(stack);
        true
    });
    if !entered {
        return Err(frame.take().expect("not entered"));
    }
    announce();
    Ok(())
}

/// Leaves the frame the last [`enter_detached`] entered and returns it, with what the
/// work made of it; `None` (and nothing changes) if there is none, or if a light frame
/// entered after it is still running.
pub(crate) fn leave_detached() -> Option<Frame> {
    let left = with_hot(|hot| {
        if !hot.light.get().is_null() || hot.status.get() == Status::TornDown {
            return None;
        }
        let mut stack = hot.detached.take();
        // The detached frame must be the current one: no frame entered after it (light,
        // or materialized) may still be running, or its exit would restore a root
        // pointer into the frame handed back here.
        let current = stack
            .last()
            .is_some_and(|(stacked, ..)| *stacked == hot.stacked.get());
        let popped = if current { stack.pop() } else { None };
        hot.detached.set(stack);
        let (stacked, entered, materialized, mut frame) = popped?;
        swap_frame(hot, &mut frame);
        hot.stacked.set(stacked - 1);
        hot.entered_cell.set(entered);
        hot.materialized.set(materialized);
        Some(frame)
    });
    if left.is_some() {
        announce();
    }
    left
}

/// The frames a request's end may give back their starting bindings ([`restore_origin`]):
/// the current frame's id if it remembers the bindings it started with
/// ([`Frame::with_origin`]: a future's frame, which may be a connection task), and the
/// id of the nearest such frame outside it (the connection task's frame, when a
/// middleware calls the layer inside a scoped future or a wrapper of its own); 0 where
/// there is none (a request's, job's, thread's or `Context::run`'s frame). The walk
/// outward follows the light frames' records on this thread's stack: the unmaterialized
/// ones through `outer`, the materialized ones through `HOT.materialized` and what each
/// displaced. A frame that has no id yet gets one now.
pub(crate) fn origin_frames() -> [u64; 2] {
    with_hot(|hot| {
        let mut found = [0; 2];
        let mut first = true;
        // Whether `id` ends the walk: the first frame looked at is the current one, and
        // the walk ends at the first frame outside it that remembers its start.
        let mut take = |id: u64| {
            if std::mem::take(&mut first) {
                found[0] = id;
                false
            } else {
                found[1] = id;
                id != 0
            }
        };
        // Outward, level by level: the unmaterialized light frames (a chain through
        // `outer`), then the frame below them (HOT's own, then the frame each
        // materialized light frame displaced), then that frame's own light frame's outer
        // chain, and so on.
        let mut light = hot.light.get();
        let mut below: *const Light = ptr::null(); // null: the frame below is HOT's own
        let mut materialized = hot.materialized.get();
        loop {
            while !light.is_null() {
                // SAFETY: the current light frame, and each one's `outer`, is an
                // unmaterialized light frame alive for its `enter_light` call on this
                // thread, which encloses the current one (see `Light`).
                let current = unsafe { &*light };
                if take(light_origin(hot, current, true)) {
                    return found;
                }
                light = current.outer.get();
            }
            let id = if below.is_null() {
                own_origin(hot, true)
            } else {
                // SAFETY: `below` is a materialized light frame that is still running
                // (see `Hot::materialized`).
                unsafe { displaced_origin(hot, &*below) }
            };
            if take(id) || materialized.is_null() {
                return found;
            }
            // SAFETY: as `below`: `HOT.materialized`, and each materialized light frame's
            // displaced `materialized`, is a running materialized light frame.
            let copy_of = unsafe { &*materialized };
            light = copy_of.outer.get();
            below = materialized;
            // SAFETY: `copy_of` materialized, so its `displaced` is initialized.
            materialized = unsafe { displaced_of(copy_of).materialized };
        }
    })
}

/// The frame a materialized light frame displaced, in place.
///
/// # Safety
///
/// `light` must have materialized and still be running (its `displaced` is initialized
/// and taken out only when it exits), and no other reference into its `displaced` may be
/// live: only `materialize_slow` and `leave_materialized` touch it otherwise.
#[allow(clippy::mut_from_ref)] // the contract: nothing else refers into `displaced`
unsafe fn displaced_of(light: &Light) -> &mut Displaced {
    // SAFETY: see the function's contract.
    unsafe { (*light.displaced.as_ptr()).assume_init_mut() }
}

/// The id of the frame the materialized light frame `light` displaced, if that frame
/// remembers its starting bindings, else 0; one without an id gets one now.
///
/// # Safety
///
/// As [`displaced_of`].
unsafe fn displaced_origin(hot: &Hot, light: &Light) -> u64 {
    // SAFETY: forwarded; the reference made here is the only one into `displaced`.
    unsafe { stored_origin(hot, &mut displaced_of(light).frame, true) }
}

/// The current frame's id if it remembers its starting bindings and has an id already,
/// else 0 (never assigns one: a frame without an id is not one [`origin_frames`]
/// recorded).
fn current_origin(hot: &Hot) -> u64 {
    let light = hot.light.get();
    if light.is_null() {
        return own_origin(hot, false);
    }
    // SAFETY: a non-null `HOT.light` is the current, unmaterialized light frame, alive
    // for its `enter_light` call (see `Light`).
    light_origin(hot, unsafe { &*light }, false)
}

/// The id of the thread's own frame (`HOT`'s, below any light frame) if it remembers its
/// starting bindings, else 0; with `assign`, one without an id gets one now.
fn own_origin(hot: &Hot, assign: bool) -> u64 {
    match hot.origin.get() {
        Origin::None => 0,
        Origin::Unchanged | Origin::Kept if assign => hot.frame_id(),
        Origin::Unchanged | Origin::Kept => hot.id.get(),
    }
}

/// The id of the unmaterialized light frame `light` (current, or one the current light
/// frame runs inside) if its storage remembers its starting bindings, else 0; with
/// `assign`, one without an id gets one now.
fn light_origin(hot: &Hot, light: &Light, assign: bool) -> u64 {
    if !light.borrowed.is_null() || light.frame.is_null() {
        return 0; // a job's or a context object's frame
    }
    // SAFETY: the storage is the `&mut Frame` that `enter_light`'s caller holds for the
    // whole call, reached only through this pointer while the light frame runs. Only
    // its snapshot is ever lent out meanwhile (`with_captured`), and no reference to
    // its other fields outlives the statement that makes it (`materialize_slow`); so
    // reading `origin` and `id` and writing `id` through the pointer conflicts with no
    // live reference.
    unsafe { stored_origin(hot, light.frame, assign) }
}

/// The id of `frame` if it remembers its starting bindings, else 0; with `assign`, one
/// without an id gets one now.
///
/// # Safety
///
/// `frame` points to a live frame that no reference in use points into (a light frame's
/// storage, or what a materialized light frame displaced: see the callers).
unsafe fn stored_origin(hot: &Hot, frame: *mut Frame, assign: bool) -> u64 {
    // SAFETY: see the function's contract.
    unsafe {
        if (*frame).origin == Origin::None {
            return 0;
        }
        if assign && (*frame).id == 0 {
            (*frame).id = hot.next_id();
        }
        (*frame).id
    }
}

/// Gives the current frame back the bindings it started with, if it is the frame `id`
/// names ([`origin_frames`]): what the tower layer does to a connection task when a
/// request it served ends, so that nothing code outside the layer set while serving one
/// request reaches the next request on the connection. A binding change, not a frame
/// switch: tokens made in the frame stay valid, and reset by path copying. `true` if the
/// bindings had changed since the frame started (or was last restored); `false` if they
/// had not, or if the current frame is another one (a frame entered inside it is
/// running, or the request ended on another task or thread).
pub(crate) fn restore_origin(id: u64) -> bool {
    if id == 0 {
        return false;
    }
    let restored = with_state(|hot| {
        if current_origin(hot) != id || unchanged_light(hot) {
            return None;
        }
        materialize(hot);
        if hot.origin.get() != Origin::Kept {
            return None;
        }
        hot.origin.set(Origin::Unchanged);
        let origin = hot.origin_vars.take();
        if hot.root.get() == origin.root_ptr() {
            // Changed and changed back: the same snapshot, which `HOT.vars` also holds,
            // so dropping this clone runs no destructor.
            drop(origin);
            return None;
        }
        let old = hot.install(origin);
        hot.last_change.set(hot.next_id());
        Some((old, hot.publish()))
    });
    let Ok(Some((old, published))) = restored else {
        return false;
    };
    announce();
    // Retired only now, with the state consistent, and in a frame of their own: they may
    // hold the last reference to a value of the request that just ended, whose `Drop`
    // may use context variables (a set there must not reach the next request).
    isolated(move || {
        retire(old);
        if let Some(published) = published {
            retire(published);
        }
    });
    true
}

/// Gives back their starting bindings ([`restore_origin`]) to the frames `frames` names
/// ([`origin_frames`]), when a request the layer served ends: now, to the one that is
/// current; later, to one that is not (the request ended inside a frame it runs inside
/// of, such as a middleware's scoped future), as soon as it is current again on this
/// thread, when the light frames inside it exit. `true` if a restore changed the
/// bindings now.
///
/// One frame waits at a time, per thread, and only until the thread gets back to its
/// own frame or leaves a hooked task's: a request that ends inside a frame that does not
/// run inside the waiting one, before it is current again, replaces it.
pub(crate) fn restore_origins(frames: [u64; 2]) -> bool {
    let [calling, outside] = frames;
    let restored = restore_origin(calling) | restore_origin(outside);
    let current = with_hot(current_origin);
    // The request ended inside the frames that are not current (they wait), unless it
    // ended in the outer one: then the calling frame, inside it, has ended (or is
    // another task's).
    if outside != 0 && outside == current {
        return restored;
    }
    let waiting = [calling, outside].map(|id| if id == current { 0 } else { id });
    if waiting != [0, 0] {
        with_hot(|hot| wait_for_restore(hot, waiting));
    }
    restored
}

/// Makes the frames `ids` wait for their restore until the current light frame exits
/// (then [`restore_pending`] looks again), materialized or not; forgotten if the current
/// frame is the thread's base frame or a detached one.
fn wait_for_restore(hot: &Hot, ids: [u64; 2]) {
    let mut light = hot.light.get();
    if light.is_null() {
        light = hot.materialized.get();
    }
    if light.is_null() {
        hot.pending_restore.set([0, 0]);
        return;
    }
    hot.pending_restore.set(ids);
    // SAFETY: a non-null `HOT.light` or `HOT.materialized` points to the live `Light` of
    // an active `enter_light` on this thread (see `Light`, `Hot::materialized`); only its
    // `Cell`s are written.
    let light = unsafe { &*light };
    light.exit_work.set(light.exit_work.get() | RESTORE_OUTSIDE);
}

/// After a light frame exits with restores waiting ([`restore_origins`]): does the one
/// whose frame is now current, and passes the others' wait on to the frame that is
/// current now. Not while unwinding: the restore releases values, whose destructors must
/// not run then.
fn restore_pending(hot: &Hot) {
    let mut waiting = hot.pending_restore.get();
    if waiting == [0, 0] {
        return; // done, or replaced by a later request's and done
    }
    let current = current_origin(hot);
    let now = current != 0 && waiting.contains(&current);
    if now {
        waiting = waiting.map(|id| if id == current { 0 } else { id });
    }
    if waiting == [0, 0] {
        hot.pending_restore.set(waiting);
    } else {
        wait_for_restore(hot, waiting);
    }
    if now && !std::thread::panicking() {
        restore_origin(current);
    }
}

/// Whether the current frame is a light one whose storage has its starting bindings
/// (nothing to restore, and no need to materialize).
fn unchanged_light(hot: &Hot) -> bool {
    let light = hot.light.get();
    if light.is_null() {
        return false;
    }
    // SAFETY: as in `light_origin`, which found the storage.
    match unsafe { (*light).frame.as_ref() } {
        Some(storage) => {
            storage.origin == Origin::Unchanged
                || storage.origin_vars.root_ptr() == storage.vars.root_ptr()
        }
        None => true,
    }
}

/// Enters a light frame over `root` (owned by `frame`'s storage or by `borrowed`, see
/// [`Light`]) as `entered` (what a set in it is checked against, `crate::pool`), runs
/// `f`, and leaves the frame when `f` returns or unwinds.
#[inline]
fn enter_light<R>(
    frame: *mut Frame,
    borrowed: *const Vars,
    object: *const Arc<Shared>,
    root: *const Node<Entry>,
    entered: Entered,
    f: impl FnOnce() -> R,
) -> R {
    let light = Light {
        frame,
        borrowed,
        object,
        exit_work: Cell::new(0),
        outer: Cell::new(ptr::null()),
        entered,
        displaced: Cell::new(MaybeUninit::uninit()),
    };
    with_hot(|hot| {
        light.outer.set(hot.light.replace(&light));
        let _exit = Exit {
            hot,
            light: &light,
            root: hot.root.replace(root),
        };
        announce();
        f()
    })
}

/// Leaves a light frame, also when its work unwinds. Made by `enter_light` after its
/// `Light`, on its stack, so it runs while the `Light` is still alive; it never leaves
/// that call.
struct Exit<'a> {
    hot: &'a Hot,
    light: &'a Light,
    root: *const Node<Entry>,
}

impl Exit<'_> {
    /// Leaving a light frame with work to do ([`Light::exit_work`]), then announcing the
    /// change.
    #[cold]
    #[inline(never)]
    fn leave_with_work(&self, work: u8) {
        if work & MATERIALIZED != 0 {
            self.leave_materialized();
        } else {
            self.hot.root.set(self.root);
            self.hot.light.set(self.light.outer.get());
        }
        announce();
        if work & RESTORE_OUTSIDE != 0 {
            restore_pending(self.hot);
        }
    }

    /// Leaving a light frame that materialized: the thread's frame becomes the displaced
    /// one again, and the light frame's copy goes back to the storage.
    fn leave_materialized(&self) {
        let displaced = self.light.displaced.replace(MaybeUninit::uninit());
        // SAFETY: `materialized` is set only right after `displaced` was initialized, and
        // this is the one place that takes it out.
        let Displaced {
            level,
            entered,
            materialized,
            mut frame,
        } = unsafe { displaced.assume_init() };
        // Frames stacked inside this one are left by the calls that entered them, except
        // detached ones whose leave never came: end those first. (Only a materialized
        // light frame can have them: `enter_detached` materializes the current one.)
        let stranded = if self.hot.stacked.get() == level {
            Vec::new()
        } else {
            self.end_stranded(level)
        };
        // During thread teardown there is no thread frame to restore (cannot happen: a
        // light frame cannot materialize then); `frame` is just released.
        if self.hot.status.get() != Status::TornDown {
            // Put the displaced frame back, taking out the light frame's copy.
            swap_frame(self.hot, &mut frame);
            // SAFETY: the storage, if any, is still the `&mut Frame` `enter_light`'s
            // caller holds, which nothing else touches until it returns, and nothing
            // borrows its snapshot any more (work it was lent to has ended).
            if let Some(storage) = unsafe { self.light.frame.as_mut() } {
                let mut original = std::mem::replace(storage, frame);
                // The copy now in the storage holds the context object and its entered
                // flag; the original must not leave it when dropped.
                drop(original.ctx.take());
                frame = original;
            }
            // Without a storage (`run_borrowed`), the job's private frame ends here.
        }
        self.hot.root.set(self.root);
        self.hot.light.set(self.light.outer.get());
        self.hot.stacked.set(level - 1);
        self.hot.entered_cell.set(entered);
        self.hot.materialized.set(materialized);
        // Released only now that the thread's frame is the outer one again, and in a frame
        // of their own if that may run a destructor: what the light frame replaced (the
        // storage's snapshot before a set or a restore) belongs to its work, and a
        // destructor that sets must not bind in the outer frame.
        release_isolated(&mut frame);
        drop(frame);
        // Stranded task frames belong to their tasks: released in frames of their own too.
        for mut task_frame in stranded {
            release_isolated(&mut task_frame);
        }
    }
}

impl Exit<'_> {
    /// Ends the detached frames ([`enter_detached`]) entered inside this light frame that
    /// were never left (a runtime whose after-poll hook was replaced, say), so that the
    /// light frame leaves from the frame it materialized into, which alone may hand back
    /// its context object's entered flag. Returns the frames it ended, to be released
    /// once the thread's state is consistent.
    #[cold]
    #[inline(never)]
    fn end_stranded(&self, level: u32) -> Vec<Frame> {
        let mut stack = self.hot.detached.take();
        let mut ended = Vec::new();
        while let Some((at, ..)) = stack.last()
            && *at > level
        {
            if let Some((.., mut displaced)) = stack.pop() {
                swap_frame(self.hot, &mut displaced);
                ended.push(displaced);
            }
        }
        self.hot.detached.set(stack);
        self.hot.stacked.set(level);
        ended
    }
}

impl Drop for Exit<'_> {
    #[inline]
    fn drop(&mut self) {
        let work = self.light.exit_work.get();
        if work != 0 {
            self.leave_with_work(work);
            return;
        }
        self.hot.root.set(self.root);
        self.hot.light.set(self.light.outer.get());
        announce();
    }
}

/// A clone of the current snapshot (empty during thread teardown).
#[inline]
pub(crate) fn vars() -> Vars {
    let light = with_hot(|hot| hot.light.get());
    if !light.is_null() {
        // SAFETY: a non-null `HOT.light` is the current, unmaterialized light frame
        // (materializing clears it), alive for the duration of its `enter_light` call
        // (see `Light`).
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
#[allow(
    dead_code,
    reason = "the rayon module's (feature `rayon`); the engine does not know its users"
)]
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
