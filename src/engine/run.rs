//! Entering frames: every lexically scoped entry point ([`run_in`], [`run_owned`],
//! [`run_read_only`], [`run_borrowed`], [`run_borrowed_fold`], [`run_entered`]), the
//! isolated release of what a unit of work left, and the one pair that is not scoped
//! ([`enter_detached`] / [`leave_detached`]).

use std::mem::ManuallyDrop;
use std::ptr;

use super::frame::{Frame, swap_frame};
use super::light::{enter_light, materialize};
use super::object::Shared;
use super::scope::flush_scopes;
use super::thread::{Status, with_hot, with_state};
use super::{Vars, announce};
use crate::map::Map;
use crate::pool::{self, Entered};
use crate::sync::Arc;

/// Runs `f` in `frame`, then puts the thread's previous frame back and leaves `frame`
/// holding what `f` made of it (a task's context between polls). `frame` runs as a
/// light frame: see [`Light`](super::light::Light). For a future's poll (or drop) in its own frame, and for
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
/// that sets a value whose destructor sets again, forever, is let go after that: leaked,
/// never dropped, so a context object such a destructor entered stays entered).
///
/// A destructor that panics ends the rounds the same way: what the rounds before it set
/// is let go, never dropped in the caller's frame.
pub(crate) fn isolated(f: impl FnOnce()) {
    /// Rounds of destructors that set, released in frames of their own.
    const ROUNDS: usize = 4;
    // Never dropped here, not even while unwinding: dropping what destructors set in it
    // would run their destructors in the caller's frame, where their sets would land. An
    // empty frame (the way out of the loop) holds nothing, so not dropping it frees
    // nothing.
    let mut frame = ManuallyDrop::new(Frame::private(Vars::default()));
    run_in(&mut frame, f);
    for _ in 0..ROUNDS {
        if frame.ctx.is_none() && frame.vars.is_empty() {
            return;
        }
        let leftover = std::mem::replace(&mut *frame, Frame::private(Vars::default()));
        run_in(&mut frame, move || drop(leftover));
    }
    // Still setting after every round: let go (leaked).
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
/// value's destructor; otherwise lets go of its shared snapshot in place, which runs
/// none. Either way `slot` is left empty.
#[inline]
pub(crate) fn release_isolated(slot: &mut Frame) {
    if slot.release_may_run_destructors() {
        release_isolated_now(slot);
    } else {
        slot.let_go_of_shared();
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

/// Calls `step` on `state` until it returns `false`, each call in a private frame over
/// `vars` that starts from `vars`' bindings, and hands `state` back: the items of a
/// rayon job (the folder and the items it pulls), each of which must not see what the
/// one before it did.
///
/// Consecutive calls share one light frame while they only read (a read leaves nothing
/// behind); a call that materialized the frame (a set, a reset, a context handle) ends
/// it, and the next call gets a fresh one. So an item pays two `HOT` cell writes only
/// when the one before it wrote, and nothing otherwise.
///
/// The state is owned by this call, not borrowed by `step` from the caller, so it lives
/// in registers across the items. Borrowed (captured by `step`), LLVM had to store it
/// before each item's call and load it after (the call could, as far as it knew, reach
/// the caller's memory): in the disassembly of `benches/propagation.rs`'
/// `par_iter/ours_inline` item loop, 12 instructions per item besides the read (the call
/// included), and 8 now.
#[inline]
pub(crate) fn run_borrowed_fold<S>(
    vars: &Vars,
    mut state: S,
    mut step: impl FnMut(&mut S) -> bool,
) -> S {
    let root = vars.root_ptr();
    let entered = pool::entered_now();
    let mut more = true;
    while more {
        more = enter_light(ptr::null_mut(), vars, ptr::null(), root, entered, || {
            while step(&mut state) {
                // `HOT.light` is this frame again unless `step` materialized it (nested
                // frames put it back when they end; materializing clears it).
                if with_hot(|hot| hot.light.get().is_null()) {
                    return true;
                }
            }
            false
        });
    }
    state
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
#[inline]
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
#[allow(
    dead_code,
    reason = "tokio's task hooks' (`contextvars::tokio::isolate_tasks`) and the tests'"
)]
pub(crate) fn enter_detached(frame: Frame) -> Result<(), Frame> {
    let mut frame = Some(frame);
    // `with_state`: the thread's teardown guard is registered (a thread whose first call
    // of the crate is this one still releases what it leaves entered), and a thread being
    // torn down refuses.
    let entered = with_state(|hot| {
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
    })
    .is_ok();
    if !entered {
        return Err(frame.take().expect("not entered"));
    }
    announce();
    Ok(())
}

/// Leaves the frame the last [`enter_detached`] entered and returns it, with what the
/// work made of it; `None` (and nothing changes) if there is none, or if a light frame
/// entered after it is still running.
#[allow(
    dead_code,
    reason = "tokio's task hooks' (`contextvars::tokio::isolate_tasks`) and the tests'"
)]
pub(crate) fn leave_detached() -> Option<Frame> {
    let left = with_hot(|hot| {
        flush_scopes(hot);
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
