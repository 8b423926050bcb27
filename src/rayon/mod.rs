//! rayon jobs that run in their creator's context (feature `rayon`).
//!
//! rayon has no per-job hook, and a worker thread runs many unrelated jobs, including,
//! while it waits in a `join`, jobs stolen from other callers. The forms here capture the
//! caller's context when a job is created and run the job in a copy of it, saving and
//! restoring the worker's own state around the job, so
//!
//! * every job sees the values of the code that created it,
//! * a job's `set`s stay in the job: they reach neither the caller nor sibling jobs
//!   (CPython's rule for concurrent work, as for asyncio tasks), and
//! * a stolen job made here never sees the state of the job it interrupted, nor the
//!   reverse. While a call of this module waits (a [`join`]'s other half, the end of a
//!   [`scope`], an [`install_in_copied_context`](ThreadPoolExt::install_in_copied_context) from
//!   another pool's worker, a parallel iterator's splits), the worker runs in an empty,
//!   read-only context: a *plain* rayon job it steals meanwhile sees no values, and its
//!   `set` is refused ([`SetError::pool_name`](crate::SetError::pool_name) `"rayon"`), as
//!   in the worker's own context.
//!
//! A plain rayon call (`rayon::join`, a parallel iterator without
//! [`in_copied_context`](ParallelIteratorExt::in_copied_context)) made *inside* a job
//! of this module waits in the job's context: a plain job stolen there runs in it,
//! reads its values, and its sets land there. rayon has no per-job hook to prevent
//! that, so hand work to rayon through this module everywhere.
//!
//! ```
//! use contextvars::ContextVar;
//! use contextvars::rayon::ParallelIteratorExt;
//! use rayon::prelude::*;
//!
//! static TENANT: ContextVar<&str> = contextvars::context_var!(&'static str, "tenant");
//!
//! let _token = TENANT.set("acme");
//! let (a, b) = contextvars::rayon::join(|| TENANT.get(), || TENANT.get());
//! assert_eq!((a, b), ("acme", "acme"));
//!
//! let labels: Vec<String> = (0..4)
//!     .into_par_iter()
//!     .in_copied_context() // right after the source: every closure after it sees "acme"
//!     .map(|i| format!("{}-{i}", TENANT.get()))
//!     .collect();
//! assert_eq!(labels, ["acme-0", "acme-1", "acme-2", "acme-3"]);
//! ```
//!
//! # Cost
//!
//! * Structured forms ([`join`], [`join_context`], [`scope`], [`in_place_scope`],
//!   [`ThreadPoolExt::install_in_copied_context`], and indexed parallel iterators) finish
//!   before the caller continues, so their jobs *borrow* the caller's snapshot. A call
//!   from outside a job takes one reference-count increment on the calling thread; a
//!   call from inside a job (a nested `join`, the usual divide-and-conquer shape) passes
//!   the job's own borrow on and takes none. Per job, entering and leaving the context
//!   swaps two thread-local cells and reads tokio's task id (for the isolation check),
//!   with no atomic read-modify-write; only a job's first `set` takes a counted copy. On
//!   a rayon worker, the wait of a structured form runs in an empty read-only frame
//!   (two more cell swaps each way).
//! * `'static` spawns ([`spawn`], [`spawn_fifo`], [`Scope::spawn`]) take an owned copy:
//!   one increment at the spawn, one decrement when the job ends.
//! * A parallel iterator wrapped by [`ParallelIteratorExt::in_copied_context`] takes
//!   one copy when the adapter is made; its jobs borrow it. Each call into the adapter
//!   enters and leaves a frame over it (two thread-local cell writes each way, and a read
//!   of tokio's task id); the
//!   items of one batch share that frame while they only read, and an item that wrote
//!   (a `set`, a handle) ends it, so the next item starts in a fresh one.

#![deny(unsafe_code)]

use std::fmt;

use ::rayon::{FnContext, ThreadPool};

use crate::carry::{self, CarriedState};
use crate::engine::{self, Frame, Vars};

mod iter;

pub use iter::{InContext, ParallelIteratorExt};

/// [`rayon::join`], running both closures in copies of the current context.
///
/// `oper_a` runs on the calling thread, `oper_b` possibly on another; each in its own
/// copy, so a `set` in one is seen neither by the other nor by the caller afterwards.
pub fn join<A, B, RA, RB>(oper_a: A, oper_b: B) -> (RA, RB)
where
    A: FnOnce() -> RA + Send,
    B: FnOnce() -> RB + Send,
    RA: Send,
    RB: Send,
{
    with_captured(move |capture| {
        waiting(|| ::rayon::join(move || capture.run(oper_a), move || capture.run(oper_b)))
    })
}

/// [`rayon::join_context`], running both closures in copies of the current context.
pub fn join_context<A, B, RA, RB>(oper_a: A, oper_b: B) -> (RA, RB)
where
    A: FnOnce(FnContext) -> RA + Send,
    B: FnOnce(FnContext) -> RB + Send,
    RA: Send,
    RB: Send,
{
    with_captured(move |capture| {
        waiting(|| {
            ::rayon::join_context(
                move |fn_ctx| capture.run(|| oper_a(fn_ctx)),
                move |fn_ctx| capture.run(|| oper_b(fn_ctx)),
            )
        })
    })
}

/// [`rayon::spawn`], running `func` in a copy of the current context.
pub fn spawn<F>(func: F)
where
    F: FnOnce() + Send + 'static,
{
    ::rayon::spawn(carry::job(Frame::private(engine::vars()), func));
}

/// [`rayon::spawn_fifo`], running `func` in a copy of the current context.
pub fn spawn_fifo<F>(func: F)
where
    F: FnOnce() + Send + 'static,
{
    ::rayon::spawn_fifo(carry::job(Frame::private(engine::vars()), func));
}

/// A [`rayon::Scope`] whose spawns run in copies of the context current at the spawn.
///
/// Made by [`scope`] and [`in_place_scope`].
pub struct Scope<'a, 'scope> {
    inner: &'a ::rayon::Scope<'scope>,
}

impl<'scope> Scope<'_, 'scope> {
    /// [`rayon::Scope::spawn`], running `body` in a copy of the context current now.
    ///
    /// ```
    /// contextvars::context_var! { static STAGE: u32; }
    ///
    /// let seen = std::sync::Mutex::new(Vec::new());
    /// contextvars::rayon::scope(|s| {
    ///     for stage in 0..3 {
    ///         STAGE.scope(stage, || {
    ///             s.spawn(|_| seen.lock().unwrap().push(STAGE.get()));
    ///         });
    ///     }
    /// });
    /// let mut seen = seen.into_inner().unwrap();
    /// seen.sort();
    /// assert_eq!(seen, [0, 1, 2]);
    /// ```
    pub fn spawn<BODY>(&self, body: BODY)
    where
        BODY: for<'b> FnOnce(&Scope<'b, 'scope>) + Send + 'scope,
    {
        let frame = Frame::private(engine::vars());
        let span = CarriedState::current();
        self.inner.spawn(move |inner| {
            span.in_state(|| engine::run_owned(frame, || body(&Scope { inner })));
        });
    }

    /// The wrapped rayon scope, for its other methods (which do not carry context).
    pub fn as_rayon(&self) -> &::rayon::Scope<'scope> {
        self.inner
    }
}

impl fmt::Debug for Scope<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scope").finish_non_exhaustive()
    }
}

/// [`rayon::scope`], running `op` and every [`Scope::spawn`] in copies of the context.
pub fn scope<'scope, OP, R>(op: OP) -> R
where
    OP: for<'a> FnOnce(&Scope<'a, 'scope>) -> R + Send,
    R: Send,
{
    with_captured(move |capture| {
        waiting(|| ::rayon::scope(move |inner| capture.run(|| op(&Scope { inner }))))
    })
}

/// [`rayon::in_place_scope`], running `op` and every [`Scope::spawn`] in copies of the
/// context.
pub fn in_place_scope<'scope, OP, R>(op: OP) -> R
where
    OP: for<'a> FnOnce(&Scope<'a, 'scope>) -> R,
{
    with_captured(move |capture| {
        waiting(|| ::rayon::in_place_scope(move |inner| capture.run(|| op(&Scope { inner }))))
    })
}

/// Context-carrying forms of [`ThreadPool`]'s methods.
///
/// ```
/// use contextvars::ContextVar;
/// use contextvars::rayon::ThreadPoolExt;
/// static USER: ContextVar<&str> = contextvars::context_var!(&'static str, "user");
///
/// let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
/// let _token = USER.set("ada");
/// assert_eq!(pool.install_in_copied_context(|| USER.get()), "ada");
/// ```
pub trait ThreadPoolExt {
    /// [`ThreadPool::install`], running `op` in a copy of the current context.
    fn install_in_copied_context<OP, R>(&self, op: OP) -> R
    where
        OP: FnOnce() -> R + Send,
        R: Send;

    /// [`ThreadPool::spawn`], running `op` in a copy of the current context.
    fn spawn_in_copied_context<OP>(&self, op: OP)
    where
        OP: FnOnce() + Send + 'static;

    /// [`ThreadPool::spawn_fifo`], running `op` in a copy of the current context.
    fn spawn_fifo_in_copied_context<OP>(&self, op: OP)
    where
        OP: FnOnce() + Send + 'static;
}

impl ThreadPoolExt for ThreadPool {
    fn install_in_copied_context<OP, R>(&self, op: OP) -> R
    where
        OP: FnOnce() -> R + Send,
        R: Send,
    {
        with_captured(move |capture| waiting(|| self.install(move || capture.run(op))))
    }

    fn spawn_in_copied_context<OP>(&self, op: OP)
    where
        OP: FnOnce() + Send + 'static,
    {
        self.spawn(carry::job(Frame::private(engine::vars()), op));
    }

    fn spawn_fifo_in_copied_context<OP>(&self, op: OP)
    where
        OP: FnOnce() + Send + 'static,
    {
        self.spawn_fifo(carry::job(Frame::private(engine::vars()), op));
    }
}

/// A capture borrowed by structured jobs (rayon's `join`, scopes, `install` and the
/// parallel-iterator adapter), which all end before the capture does.
#[derive(Clone, Copy)]
struct Borrowed<'a> {
    vars: &'a Vars,
    span: &'a CarriedState,
}

impl<'a> Borrowed<'a> {
    /// A capture of `vars` and `span`, owned by the caller.
    fn new(vars: &'a Vars, span: &'a CarriedState) -> Self {
        Self { vars, span }
    }

    /// The same snapshot without the span, for calls made inside a call that entered it
    /// (entering it again would make the subscriber record a second `enter`).
    fn inside_span(self) -> Borrowed<'a> {
        static NONE: CarriedState = CarriedState::NONE;
        Borrowed {
            vars: self.vars,
            span: &NONE,
        }
    }

    /// Runs `f` in a frame over the captured snapshot (see [`engine::run_borrowed`]),
    /// inside the captured span.
    #[inline]
    fn run<R>(self, f: impl FnOnce() -> R) -> R {
        self.span.in_state(|| engine::run_borrowed(self.vars, f))
    }

    /// Calls `step` on `state` until it returns `false`, each call in a frame that starts
    /// from the captured bindings (see [`engine::run_borrowed_fold`]), all inside the
    /// captured span (entered once); hands `state` back.
    #[inline]
    fn run_each<S>(self, state: S, step: impl FnMut(&mut S) -> bool) -> S {
        self.span
            .in_state(|| engine::run_borrowed_fold(self.vars, state, step))
    }
}

/// Runs `wait`, a rayon call during which this thread may take up other jobs, in an
/// empty, read-only frame if the thread is a rayon worker (see the module docs): a plain
/// job it steals there sees no values and cannot bind any. Elsewhere rayon blocks the
/// thread until the call is done, so `wait` runs as it is.
#[inline]
fn waiting<R>(wait: impl FnOnce() -> R) -> R {
    if ::rayon::current_thread_index().is_some() {
        engine::run_read_only(wait)
    } else {
        wait()
    }
}

/// Runs `f` with the current context and span captured; the jobs `f` starts borrow the
/// capture.
#[inline]
fn with_captured<R>(f: impl FnOnce(Borrowed<'_>) -> R) -> R {
    let span = CarriedState::current();
    engine::with_captured(|vars| f(Borrowed::new(vars, &span)))
}
