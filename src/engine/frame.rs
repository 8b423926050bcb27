//! Frames: the state a thread runs in. Entering them is `run`'s, light frames are
//! `light`'s; what this file's docs say about both is the argument they rely on.
//!
//! A [`Frame`] is the state a thread runs in: a snapshot, the context object it writes
//! through to (if any), an identity for token checks and a change marker. The thread's
//! current frame lives in `HOT` (`thread`); every other frame lives outside it, owned by
//! whatever will run it next (a task wrapper between polls, a spawned job, a
//! `Context::run` call).
//!
//! **Every frame switch is lexically scoped.** A frame is entered and left inside one
//! call of this module ([`run_in`](super::run::run_in), [`run_owned`](super::run::run_owned), [`run_borrowed`](super::run::run_borrowed),
//! [`run_borrowed_fold`](super::run::run_borrowed_fold), [`run_entered`](super::run::run_entered)), and left again when that call returns or
//! unwinds, by a guard that lives on that call's stack and never leaves it. No value that
//! user code can move, leak, `mem::forget` or drop out of order ever restores a frame:
//! the folders, futures and tokens the crate hands out hold frames or snapshots as data,
//! and enter them only inside their own methods. So the frames on a thread always form a
//! stack that matches the call stack, and whoever owns the snapshot behind `HOT.root`
//! (below) is a caller of the code that reads it.
//!
//! **Light frames.** Work that usually only reads (a rayon job, a future's poll,
//! `Context::run`) runs in a *light* frame ([`Light`](super::light::Light)): only `HOT.root` and `HOT.light`
//! change on entry and exit. The first operation that needs the frame itself (a set, a
//! reset, a context handle) *materializes* it ([`materialize`](super::light::materialize)).
//!
//! **Why the raw root pointer is valid.** Outside light frames, `HOT.root` equals
//! `HOT.vars.root_ptr()`: both are written together, before anything else can observe
//! them, so the node is kept alive by `HOT.vars` as long as the pointer is current (an
//! in-place change keeps the node). Inside an unmaterialized light frame, `HOT.root` is
//! that frame's snapshot, owned by the caller of the `enter_light` call running it (a
//! task's frame, the snapshot a rayon job borrows, the runner copy of a context object),
//! which cannot return before `enter_light` does, and `enter_light` puts the previous
//! pointer back before it returns, also when unwinding.

use super::Vars;
use super::object::Shared;
use super::thread::{Hot, publish_final, retire, retire_replaced};
use crate::sync::Arc;

/// A frame: the state a thread runs in, kept outside the thread-local while it is not
/// running (owned by a task wrapper between polls, a spawned job, or the storage of a
/// [`Light`](super::light::Light) frame waiting for its first write).
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

/// What a frame remembers of the bindings it started with, so that [`restore_origin`](super::origin::restore_origin)
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
    /// starting bindings when a request it served ends ([`restore_origin`](super::origin::restore_origin)). Costs
    /// nothing more than a private frame: the frame gets its id when the layer first asks
    /// for it ([`origin_frames`](super::origin::origin_frames)), and its starting bindings are kept by its first change.
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

impl Frame {
    /// Gives up this frame's reference to its snapshot, for
    /// [`release_isolated`](super::run::release_isolated) when the snapshot is shared (or
    /// empty) and the frame holds nothing else: the decrement runs no destructor (unless
    /// the other holders let go in between, as they could before any later drop of the
    /// frame too). The frame is left empty.
    #[inline]
    pub(super) fn let_go_of_shared(&mut self) {
        if !self.vars.is_empty() {
            drop(std::mem::take(&mut self.vars));
        }
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
        // SAFETY: this frame holds the object's flag (below).
        let released = unsafe { publish_final(&shared, self.dirty, || vars.clone()) };
        // SAFETY: a frame with a context object holds its entered flag: it was made by
        // `Frame::entered` (after `try_enter`), by `current_shared` (an entered
        // object), by materializing `run_entered`'s light frame (whose caller entered
        // and which then leaves it to this frame), or is the copy that materializing a
        // light frame over a stored frame made (`materialize_slow`), which acts for the
        // stored one until the light frame ends and is written back in its place. No
        // reference from `owner().get()` is in use: only an unmaterialized `run_entered`
        // frame holds one.
        let handed_back = unsafe { shared.owner().leave_with(vars) };
        // Released only after leaving: they may run destructors, and a panicking one must
        // not leave the context entered for good.
        retire_replaced(released);
        retire(handed_back);
        if !origin.is_empty() {
            retire(origin);
        }
    }
}

/// Exchanges the thread's current frame with `frame`. Runs no user code.
pub(super) fn swap_frame(hot: &Hot, frame: &mut Frame) {
    let vars = std::mem::take(&mut frame.vars);
    hot.set_root(vars.root_ptr());
    frame.vars = hot.vars.replace(vars);
    frame.ctx = hot.ctx.replace(frame.ctx.take());
    frame.id = hot.id.replace(frame.id);
    frame.last_change = hot.last_change.replace(frame.last_change);
    frame.dirty = hot.dirty.replace(frame.dirty);
    frame.origin = hot.origin.replace(frame.origin);
    let origin_vars = std::mem::take(&mut frame.origin_vars);
    frame.origin_vars = hot.origin_vars.replace(origin_vars);
}
