//! Light frames: a frame that is current for reads only (`HOT.root` points at its
//! snapshot, `HOT.light` at its record on the stack of [`enter_light`]), made into a
//! frame of the thread's own ([`materialize`]) by the first operation that needs one. See
//! `frame`'s docs for why the raw root pointer stays valid.

use std::mem::MaybeUninit;
use std::ptr;

use super::frame::{Frame, swap_frame};
use super::object::Shared;
use super::origin::restore_pending;
use super::run::release_isolated;
use super::scope::flush_scopes;
use super::thread::{Hot, Status, with_hot};
use super::{Vars, announce};
use crate::map::{Map, Node};
use crate::pool::Entered;
use crate::sync::{Arc, Cell, arc_clone_raw};
use crate::value::Entry;

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
    /// frames of [`run_borrowed`](super::run::run_borrowed), whose private frame is simply released at the end;
    /// `borrowed` is then set.
    pub(super) frame: *mut Frame,
    /// If set, the frame's snapshot is this borrowed one, cloned into the storage only on
    /// materialization ([`run_borrowed`](super::run::run_borrowed), [`run_entered`](super::run::run_entered)).
    pub(super) borrowed: *const Vars,
    /// If set, the frame runs this context object, entered by the caller of
    /// [`run_entered`](super::run::run_entered); materialization makes the storage a frame of that object, which
    /// then leaves it when dropped.
    pub(super) object: *const Arc<Shared>,
    /// What leaving the frame has to do besides putting `HOT.root` and `HOT.light`
    /// back: [`MATERIALIZED`], [`RESTORE_OUTSIDE`]; 0 for a frame that only read.
    pub(super) exit_work: Cell<u8>,
    /// `HOT.light` when this frame was entered (the light frame it runs inside, if that
    /// one had not materialized), put back when it exits; also followed outward by
    /// [`origin_frames`](super::origin::origin_frames).
    pub(super) outer: Cell<*const Light>,
    /// What ran when the frame was entered (`crate::pool::Entered`), what a set in it is
    /// checked against: read from here while the frame is light, and kept in
    /// `HOT.entered` once it materializes.
    pub(super) entered: Entered,
    /// After materialization (only then initialized), the frame the light frame
    /// displaced, `HOT.stacked` right after materializing (what it is again when the
    /// light frame exits, unless detached frames were stranded inside it) and the
    /// displaced `HOT.entered`. `MaybeUninit`, so that entering a light frame writes
    /// nothing here and leaving one that never materialized drops nothing.
    pub(super) displaced: Cell<MaybeUninit<Displaced>>,
}

/// What a light frame's materialization displaced (see [`Light::displaced`]).
pub(super) struct Displaced {
    /// `HOT.stacked` right after materializing.
    pub(super) level: u32,
    /// `HOT.entered_cell` before.
    pub(super) entered: Entered,
    /// `HOT.materialized` before: the light frame whose copy `frame` is, if any.
    pub(super) materialized: *const Light,
    /// The thread's frame before.
    pub(super) frame: Frame,
}

/// [`Light::exit_work`]: the frame materialized (see [`materialize`]).
pub(super) const MATERIALIZED: u8 = 1;
/// [`Light::exit_work`]: a request ended while the frame was current, and frames outside
/// it wait to be restored (`HOT.pending_restore`, see [`restore_origins`](super::origin::restore_origins)).
pub(super) const RESTORE_OUTSIDE: u8 = 2;

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

/// Enters a light frame over `root` (owned by `frame`'s storage or by `borrowed`, see
/// [`Light`]) as `entered` (what a set in it is checked against, `crate::pool`), runs
/// `f`, and leaves the frame when `f` returns or unwinds.
#[inline]
pub(super) fn enter_light<R>(
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
        let mut outer_root = hot.root();
        if outer_root.is_null() {
            // No bindings, or a scope's records linked: they belong to the frame they
            // were made in, and are made real there before another frame becomes
            // current (which may materialize it: `HOT.light` is read after this).
            flush_scopes(hot);
            outer_root = hot.root();
        }
        light.outer.set(hot.light.replace(&light));
        hot.set_root(root);
        let _exit = Exit {
            hot,
            light: &light,
            root: outer_root,
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
            self.hot.set_root(self.root);
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
        self.hot.set_root(self.root);
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
    /// Ends the detached frames ([`enter_detached`](super::run::enter_detached)) entered inside this light frame that
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
        self.hot.set_root(self.root);
        self.hot.light.set(self.light.outer.get());
        announce();
    }
}

/// A clone of the current snapshot (empty during thread teardown).
#[inline]
pub(crate) fn vars() -> Vars {
    // `HOT.root` is the root of the current snapshot in every frame, light or not: one
    // load, and no branch on the frame's kind.
    let root = with_hot(|hot| hot.root());
    if root.is_null() {
        return vars_of_null_root();
    }
    // SAFETY: a non-null `HOT.root` is `Arc::as_ptr` of the root node of the current
    // frame's snapshot, which stays alive while the frame is current, past this call
    // (see `frame`'s module docs: why the raw root pointer is valid).
    Map::from_arc(Some(unsafe { arc_clone_raw(root) }))
}

/// [`vars`] where `HOT.root` is null: no bindings (an empty copy, two loads), or a
/// scope's records linked, which a copy of the context includes (out of line).
#[inline]
fn vars_of_null_root() -> Vars {
    if with_hot(|hot| !hot.scopes.get().is_null()) {
        vars_after_flush()
    } else {
        Map::new()
    }
}

#[cold]
#[inline(never)]
fn vars_after_flush() -> Vars {
    let root = with_hot(|hot| {
        flush_scopes(hot);
        hot.root()
    });
    if root.is_null() {
        return Map::new();
    }
    // SAFETY: as in `vars`.
    Map::from_arc(Some(unsafe { arc_clone_raw(root) }))
}

/// Calls `f` with the current snapshot, to hand to structured work that finishes before
/// `f` returns (a rayon `join` or `scope`).
///
/// Inside a light frame (a rayon job, a task's poll, `Context::run`, an
/// `install_in_copied_context`) the frame's own snapshot is lent, so `join`s there take no
/// reference count at all; elsewhere `f` gets a counted clone. A lent snapshot outlives
/// `f`: it is kept alive by the code that started the enclosing light frame, which
/// cannot return before `f` does, and a write in the frame (even by an unrelated job that
/// rayon runs on this thread meanwhile) materializes a copy instead of replacing it.
#[allow(
    dead_code,
    reason = "the rayon module's (feature `rayon`); the engine does not know its users"
)]
pub(crate) fn with_captured<R>(f: impl FnOnce(&Vars) -> R) -> R {
    let light = with_hot(|hot| {
        // The work `f` hands the snapshot to sees what the scopes running here bound (a
        // flush may materialize the light frame: `light` is read after it).
        flush_scopes(hot);
        hot.light.get()
    });
    if light.is_null() {
        return f(&vars());
    }
    // SAFETY: a non-null `HOT.light` is the current, unmaterialized light frame, alive
    // until its `enter_light` call returns, which is below us on this thread's stack; its
    // snapshot (borrowed, or the storage's, which is not written while the light frame
    // runs) stays where it is until then. See `Light`.
    f(unsafe { (*light).vars() })
}
