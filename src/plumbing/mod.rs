//! The building blocks integrations are made of: carry the current context into work
//! that runs later or elsewhere (an executor's tasks, a pool's jobs, a server's
//! requests), without ever switching the thread's context outside a call of the crate.
//!
//! This is what the separate crates (`contextvars-futures`, `contextvars-tower`,
//! `contextvars-tracing`, `contextvars-opentelemetry`) are built on: they see nothing of
//! the crate but this module and the rest of its public API. (`contextvars::future`,
//! `thread`, `tokio` and `rayon`, inside the crate, use the same engine calls directly:
//! `WithContext` holds a [`TaskFrame`].) An
//! integration with an executor or pool the crate does not know (smol, a custom thread
//! pool) is written the same way. Most programs never need this module.
//!
//! # A task's context
//!
//! A [`TaskFrame`] is a unit of work's context, held as data between its runs:
//!
//! 1. [`TaskFrame::capture`] takes a copy of the current context (O(1): the snapshot is
//!    shared), with the registered [`Carrier`]'s state (a tracing span, say);
//! 2. [`TaskFrame::enter`] runs a closure, such as one poll of the task's future, inside
//!    it, and returns with the thread back in its own context, whatever the closure did
//!    (a `set` there stays in the task's frame, for its next run);
//! 3. [`TaskFrame::end`] drops the work inside it when the unit is over (so a value's
//!    destructor sees the task's values), then releases what the frame holds where no
//!    other code can see what those destructors do.
//!
//! ```
//! use std::future::Future;
//! use std::pin::Pin;
//! use std::task::{Context, Poll};
//! use contextvars::plumbing::TaskFrame;
//!
//! /// A future that runs every poll in the context it was made in: what
//! /// `ContextFutureExt::in_copied_context` does, written against this module.
//! struct InContext<F> {
//!     future: Option<Pin<Box<F>>>,
//!     frame: TaskFrame,
//! }
//!
//! impl<F: Future> InContext<F> {
//!     fn new(future: F) -> Self {
//!         Self { future: Some(Box::pin(future)), frame: TaskFrame::capture_task() }
//!     }
//! }
//!
//! impl<F: Future> Future for InContext<F> {
//!     type Output = F::Output;
//!     fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
//!         let this = &mut *self; // `InContext` is `Unpin`: the future is boxed
//!         let future = this.future.as_mut().expect("polled after it completed");
//!         this.frame.enter(|| future.as_mut().poll(cx))
//!     }
//! }
//!
//! impl<F> Drop for InContext<F> {
//!     fn drop(&mut self) {
//!         // The future's destructors run in the task's context.
//!         let future = &mut self.future;
//!         self.frame.end(|| drop(future.take()));
//!     }
//! }
//!
//! contextvars::context_var! { static REQUEST_ID: u64; }
//!
//! let _id = REQUEST_ID.set(7);
//! let task = InContext::new(async {
//!     drop(REQUEST_ID.set(8)); // stays in the task
//!     REQUEST_ID.get()
//! });
//! let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
//! assert_eq!(runtime.block_on(task), 8);
//! assert_eq!(REQUEST_ID.get(), 7);
//! ```
//!
//! # What else is here
//!
//! * [`run_read_only`]: where a pool's worker waits and may run other work (a rayon
//!   worker inside `join`), an empty frame that refuses every set;
//! * [`run_in_snapshot`] and [`run_in_snapshot_each`]: run a closure (or each item of a
//!   batch) in a private frame over a borrowed snapshot, with no reference count unless
//!   it writes (structured parallelism);
//! * [`CallerFrames`]: a request layer's restore of the task that called it (a server's
//!   connection task), so that nothing set outside the layer reaches the next request;
//! * [`Carrier`] / [`Carried`] / [`set_carrier`]: what travels with every capture
//!   besides the bindings;
//! * [`peek`]: a read that runs no code of the program's (for a panic hook's formatter);
//! * [`note_request_layer`]: tells the crate's errors that a per-request layer is in use.
//!
//! # Soundness
//!
//! Nothing here lets code outside the crate switch the thread's frame except for the
//! duration of one call of the crate ([`TaskFrame::enter`], [`TaskFrame::run`],
//! [`run_read_only`], [`run_in_snapshot`]). A `TaskFrame` that is leaked, forgotten,
//! moved to another thread or dropped anywhere restores nothing: it is data.
//!
//! # Not offered: detached frames
//!
//! An executor that only calls hooks before and after each poll cannot use this module
//! to enter a task's frame in one hook and leave it in the other: that pair (which
//! tokio's task hooks use inside the crate, `contextvars::tokio::isolate_tasks`) is not
//! public. A leave that never comes (a skipped hook, a task that calls the pair itself)
//! would leave one task's frame current on a shared worker thread, where every task that
//! runs next would read its values and set into it, and nothing on the read path could
//! tell. Wrap the task's future instead, as `examples/async_executor.rs` does: each poll
//! is then a [`TaskFrame::enter`], which leaves on return whatever the task does.

#![deny(unsafe_code)]

use std::fmt;
use std::pin::Pin;

use crate::carry::CarriedState;
pub use crate::carry::{Carried, Carrier, CarrierTaken, set_carrier};
use crate::context::Context;
use crate::engine::{self, Frame, Vars};
use crate::error::EnterError;
use crate::snapshot::Snapshot;
use crate::var::ContextVar;

/// A unit of work's context, held as data between its runs: a frame (the bindings, and
/// the context object it runs, if any) and the [`Carrier`]'s state captured with it.
/// See the [module docs](self).
///
/// Dropping a `TaskFrame` releases what it holds in the dropping thread's context; call
/// [`end`](Self::end) or [`release`](Self::release) first where the values' destructors
/// must neither see nor change that context (a task's end).
pub struct TaskFrame {
    frame: Frame,
    carried: CarriedState,
}

impl TaskFrame {
    /// A copy of the current context, and the carrier's state now: the context of a
    /// thread or a job that runs once ([`run`](Self::run)).
    ///
    /// # Cost
    ///
    /// One reference-count increment (the snapshot is shared, whatever n), no allocation;
    /// the carrier costs one acquire load if none is registered, else its `capture` (one
    /// allocation when it carries something).
    #[inline]
    pub fn capture() -> Self {
        Self::over(Frame::private(engine::vars()))
    }

    /// [`capture`](Self::capture) for a task that may serve HTTP connections: its frame
    /// remembers the bindings it started with, so that a request layer
    /// ([`CallerFrames`]) can give them back when a request it served ends. That costs
    /// nothing until the frame's first set, which keeps a reference to the starting
    /// snapshot.
    ///
    /// # Cost
    ///
    /// As [`capture`](Self::capture); the frame's first set or reset adds one
    /// reference-count increment (the starting snapshot kept), released with the frame.
    #[inline]
    pub fn capture_task() -> Self {
        Self::over(Frame::with_origin(engine::vars()))
    }

    /// A task's frame over `snapshot`'s bindings (which it remembers as its starting
    /// ones, like [`capture_task`](Self::capture_task)), with the carrier's state now.
    ///
    /// # Cost
    ///
    /// As [`capture_task`](Self::capture_task).
    #[inline]
    pub fn from_snapshot(snapshot: &Snapshot) -> Self {
        Self::over(Frame::with_origin(snapshot.vars().clone()))
    }

    /// A task's frame that runs the context object `ctx`, entered now and left when the
    /// frame is dropped or released (so no other thread or task can enter it meanwhile),
    /// with the carrier's state now. It remembers the bindings `ctx` holds now, like
    /// [`capture_task`](Self::capture_task).
    ///
    /// # Errors
    ///
    /// [`EnterError`] if `ctx` is entered already (by this thread or another), or during
    /// thread teardown.
    ///
    /// # Cost
    ///
    /// As [`in_context`](crate::future::ContextFutureExt::in_context): the compare-and-swap
    /// on the entered flag and two reference-count increments (the object and its
    /// snapshot), plus the object's allocation the first time `ctx` is entered.
    pub fn for_context(ctx: &Context) -> Result<Self, EnterError> {
        Ok(Self::over(ctx.enter_frame()?.remembering_origin()))
    }

    /// An empty frame that carries nothing: a placeholder, for a slot whose frame was
    /// handed on.
    pub fn empty() -> Self {
        Self {
            frame: Frame::private(Vars::default()),
            carried: CarriedState::NONE,
        }
    }

    #[inline]
    pub(crate) fn over(frame: Frame) -> Self {
        Self {
            frame,
            carried: CarriedState::current(),
        }
    }

    /// Runs `f` inside this frame (and the carried state), and returns with the thread
    /// back in the context it was in, also when `f` panics; the frame keeps what `f` made
    /// of it (a `set` stays in the task). For one poll of a task's future, or any
    /// repeated run of the unit's work: a set there is the unit's own, whichever thread
    /// or task runs it.
    ///
    /// # Cost
    ///
    /// While `f` only reads: two thread-local cell swaps on entry, put back on exit,
    /// whatever n; no allocation, no atomic read-modify-write. The first set or reset in
    /// `f` takes counted copies of the frame's snapshots (and context object) and
    /// path-copies, and the snapshot it replaced is released on exit. A carried state adds
    /// one dynamic call ([`Carried::enter`]).
    #[inline]
    pub fn enter<R>(&mut self, f: impl FnOnce() -> R) -> R {
        let frame = &mut self.frame;
        self.carried.in_state(|| engine::run_in(frame, f))
    }

    /// Runs `f` inside this frame once, then releases it: a thread's or a job's work. A
    /// set there is checked as the thread's own (a set in a worker of a pool whose own
    /// context is read-only, while this frame runs there, is the frame's).
    ///
    /// # Cost
    ///
    /// As [`enter`](Self::enter), plus a read of tokio's task id (the isolation check's) on
    /// entry and, at the end, the frame's release (one reference-count decrement for a
    /// non-empty frame; for a frame of a context object, a release store and two
    /// decrements).
    #[inline]
    pub fn run<R>(self, f: impl FnOnce() -> R) -> R {
        let Self { frame, carried } = self;
        carried.in_state(|| engine::run_owned(frame, f))
    }

    /// Ends the unit: runs `drop_work` (which drops the unit's work: its future, its
    /// body) inside this frame and the carried state, then [releases](Self::release) the
    /// frame. The frame is left empty: a later `end` or drop releases nothing.
    ///
    /// # Cost
    ///
    /// An [`enter`](Self::enter) around `drop_work`, then a [`release`](Self::release).
    pub fn end(&mut self, drop_work: impl FnOnce()) {
        let frame = &mut self.frame;
        self.carried.in_state(|| engine::run_in(frame, drop_work));
        self.release();
    }

    /// Ends the unit whose work lives in `slot`: drops it inside this frame (if it is
    /// still there), then releases the frame ([`end`](Self::end)), for pinned work held
    /// in an `Option`.
    pub fn end_pinned<T>(&mut self, mut slot: Pin<&mut Option<T>>) {
        if slot.is_some() {
            self.end(|| slot.set(None));
        } else {
            self.release();
        }
    }

    /// Releases the bindings and the context object this frame holds, in an empty frame
    /// of their own where that may run a value's destructor (so a destructor that reads
    /// sees no other unit's values, and one that sets changes nothing any other code
    /// sees); the carried state is released too. The frame is left empty.
    ///
    /// # Cost
    ///
    /// A reference-count load decides. A frame that is the last holder of its snapshot,
    /// runs a context object or kept its starting bindings is released now, in a fresh
    /// empty frame (an `enter`'s swaps, and the decrements); one that only shares its
    /// snapshot gives up its reference here (one decrement, no destructor: another holder
    /// keeps the snapshot).
    #[inline]
    pub fn release(&mut self) {
        engine::release_isolated(&mut self.frame);
        self.carried = CarriedState::NONE;
    }

    /// This frame as a private one, for work that goes on after the unit's own work ended
    /// (a response body after its request's future): the frame itself if it runs no
    /// context object; otherwise a private copy of its bindings, and the object left (so
    /// it can be entered again).
    pub fn into_private(self) -> Self {
        let Self { frame, carried } = self;
        Self {
            frame: frame.into_private(),
            carried,
        }
    }

    /// Whether this frame's bindings were changed by a set or reset while it ran and are
    /// still changed: a set undone by its own token's reset counts as no change.
    pub fn bindings_changed(&self) -> bool {
        self.frame.bindings_changed()
    }

    /// This frame without its carried state, for `enter_detached` (a hook-entered state
    /// would have to stay entered between two hook calls, which is not a lexical scope).
    #[cfg(test)]
    fn into_frame(self) -> Frame {
        self.frame
    }
}

impl fmt::Debug for TaskFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskFrame").finish_non_exhaustive()
    }
}

/// Runs `f` in an empty frame in which every set is refused: where a pool's worker
/// waits inside a call of the crate and may run other work meanwhile (a rayon worker
/// inside `contextvars::rayon::join`), which must neither see the waiting work's values
/// nor bind any of its own there.
pub fn run_read_only<R>(f: impl FnOnce() -> R) -> R {
    engine::run_read_only(f)
}

/// Runs `f` in a private frame over `snapshot`'s bindings, taking no reference count
/// unless `f` writes: structured work (a fork-join job) whose parent keeps `snapshot`
/// alive for the whole call. A set in `f` stays in the frame and is gone when `f`
/// returns.
///
/// # Cost
///
/// A read of tokio's task id and two thread-local cell swaps, put back on exit, whatever
/// n; no allocation and no atomic read-modify-write while `f` only reads. The first set in
/// `f` takes a counted copy of `snapshot` (one increment) and path-copies; the frame is
/// released when `f` returns.
pub fn run_in_snapshot<R>(snapshot: &Snapshot, f: impl FnOnce() -> R) -> R {
    engine::run_borrowed(snapshot.vars(), f)
}

/// Calls `step` until it returns `false`, each call in a private frame over `snapshot`'s
/// bindings that starts from them again: the items of a batch, each of which must not see
/// what the one before it set. Consecutive calls that only read share one frame, so an
/// item costs nothing beyond its call; one that wrote ends the frame, and the next item
/// gets a fresh one.
pub fn run_in_snapshot_each(snapshot: &Snapshot, mut step: impl FnMut() -> bool) {
    engine::run_borrowed_fold(snapshot.vars(), (), |()| step());
}

// The detached pair over task frames: crate-private (see the module docs), for the
// tests of the engine's detached frames (`detached_tests`); tokio's hooks use the
// engine's pair directly.

/// Enters `frame` on this thread *without* a lexical scope, for executors that only call
/// hooks before and after each poll (tokio's `on_before_task_poll`); the frame's carried
/// state is dropped (it cannot stay entered between two hook calls). Undo it with
/// [`leave_detached`], on the same thread.
///
/// Sound whatever the caller does: the frame is moved into the thread's state, a later
/// `leave_detached` refuses unless it is the current frame (no frame entered since is
/// still running), and a scoped frame that exits with detached frames entered inside it
/// still current ends them first. A missing leave outside any scoped frame leaves the
/// thread in the task's context: a wrong value, never a dangling one.
///
/// # Errors
///
/// The frame back, during thread teardown.
///
/// # Cost
///
/// Moves the frame's fields into the thread's state, whatever n, and pushes the displaced
/// frame onto a per-thread stack (a `Vec`: an allocation only when it grows). No atomic
/// read-modify-write, except the counted copy a set would take when called inside a
/// poll, job or `run` that has not written yet, and the carried state's release.
#[cfg(test)]
pub(crate) fn enter_detached(frame: TaskFrame) -> Result<(), TaskFrame> {
    engine::enter_detached(frame.into_frame()).map_err(|frame| TaskFrame {
        frame,
        carried: CarriedState::NONE,
    })
}

/// Leaves the frame the last [`enter_detached`] on this thread entered and returns it,
/// with what the work made of it; `None` (and nothing changes) if there is none, or if a
/// frame entered after it is still running.
///
/// # Cost
///
/// A pop and the same moves back, whatever n: no allocation, no atomic read-modify-write.
#[cfg(test)]
pub(crate) fn leave_detached() -> Option<TaskFrame> {
    engine::leave_detached().map(|frame| TaskFrame {
        frame,
        carried: CarriedState::NONE,
    })
}

/// The frames of the task that called a request layer (a server's connection task),
/// recorded when a request starts, so that its starting bindings can be given back when
/// the request ends: nothing a middleware outside the layer set while serving one
/// keep-alive request then reaches the next one.
///
/// Only frames that remember their starting bindings are restored
/// ([`TaskFrame::capture_task`], `in_copied_context`, `in_context`, `scope_future`,
/// tokio's task hooks). The frame the layer was called in is recorded, and the nearest
/// such frame outside it (a middleware that calls the layer inside a wrapper of its
/// own). When the request ends, the one that is current is restored; one that is not
/// waits until it is current again on that thread.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct CallerFrames {
    /// The calling frame and the nearest one outside it, 0 where there is none (also
    /// once restored: see [`CallerFrames::restore`]).
    frames: [u64; 2],
}

impl CallerFrames {
    /// The frames of the code running now.
    ///
    /// # Cost
    ///
    /// A walk outward over the frames entered on this thread, O(their number), whatever n:
    /// no allocation, no atomic read-modify-write, except that a frame without an id takes
    /// one from the thread's block (a shared `fetch_add` per 65,536 ids).
    #[inline]
    pub fn record() -> Self {
        Self {
            frames: engine::origin_frames(),
        }
    }

    /// Gives the recorded frames back their starting bindings (see the type's docs), once:
    /// `self` is left recording nothing. `true` if the bindings had changed, that is if
    /// code outside the layer set a variable while the request was served.
    ///
    /// # Cost
    ///
    /// With nothing to restore, a few thread-local reads. A restore reinstalls the kept
    /// starting snapshot (no allocation, no path copy, publication in a context object)
    /// and releases the replaced one in a fresh empty frame (its decrement, and its
    /// values' if it held the last reference); a frame that is not current is flagged.
    #[inline]
    pub fn restore(&mut self) -> bool {
        let frames = std::mem::take(&mut self.frames);
        frames != [0, 0] && engine::restore_origins(frames)
    }
}

impl fmt::Debug for CallerFrames {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallerFrames")
            .field("pending", &(self.frames != [0, 0]))
            .finish()
    }
}

/// Calls `f` with `var`'s value, running no code of the program's but `f`: a lazy
/// default that was not computed yet counts as no value (`None`). For readers that must
/// not run user code, such as an event formatter inside a panic hook.
pub fn peek<T: Send + Sync + 'static, R>(
    var: &ContextVar<T>,
    f: impl FnOnce(&T) -> R,
) -> Option<R> {
    var.with_computed(f)
}

/// Tells the crate that a per-request layer (such as `contextvars_tower::ContextLayer`)
/// serves requests in this process: a set refused in a worker's own context then says
/// that the code runs outside the layer (the layer's order), rather than that the layer
/// is missing. One relaxed load per call once recorded.
#[inline]
pub fn note_request_layer() {
    crate::pool::note_request_layer();
}

#[cfg(test)]
mod detached_tests;
