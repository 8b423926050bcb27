//! Futures that carry a context: every poll runs inside it (streams:
//! `contextvars-futures`).
//!
//! An async task should behave like an asyncio task: it starts with a copy of the
//! context it was created in, its `set`s stay inside it across `.await`s, and nothing it
//! does leaks to the code that spawned it or to other tasks polled on the same thread.
//! [`WithContext`] gives any future that behaviour, on any executor:
//!
//! ```
//! use contextvars::future::ContextFutureExt;
//!
//! contextvars::context_var! { static REQUEST_ID: u64; }
//!
//! let _token = REQUEST_ID.set(7);
//! let task = async {
//!     assert_eq!(REQUEST_ID.get(), 7); // inherited from the creator
//!     drop(REQUEST_ID.set(8)); // stays in the task
//!     std::future::ready(()).await;
//!     REQUEST_ID.get()
//! }
//! .in_copied_context(); // captures a copy of the current context, now
//!
//! let _other = REQUEST_ID.set(99); // later changes do not reach the task
//! let seen = futures_executor_block_on(task);
//! assert_eq!(seen, 8);
//! assert_eq!(REQUEST_ID.get(), 99); // the task's set did not leak out
//! # fn futures_executor_block_on<F: std::future::Future>(f: F) -> F::Output {
//! #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
//! # }
//! ```
//!
//! # Where a set lives
//!
//! Inside a wrapped future, in the future's own context, across every `.await` and
//! whichever thread polls it. In an *unwrapped* future, in whatever context the poller
//! runs: for a plain tokio task, the worker thread's own context, which the next task on
//! that worker would see, so such a set is refused in every build (see
//! [`SetError`](crate::SetError) and [`docs::isolation`](crate::docs::isolation)).
//! [`ContextVar::scope_future`](crate::ContextVar::scope_future) wraps a future with one
//! more binding.
//!
//! # Cost
//!
//! A poll swaps the task's frame into the thread-local state and back: a fixed number of
//! word moves, whatever the number of variables. No reference count is touched and
//! nothing is allocated, unless the poll sets or resets a variable ([`WithContext`] has
//! the cost).
//!
//! # Guards and `.await`
//!
//! A [`Token`](crate::Token) and a [`ScopedSet`](crate::ScopedSet) are `!Send`: they
//! belong to the frame (task) that made them, so a future holding one across an `.await`
//! cannot be spawned on a multi-threaded executor:
//!
//! ```compile_fail
//! contextvars::context_var! { static N: u32; }
//! fn assert_send<T: Send>(_: T) {}
//! assert_send(async {
//!     let _guard = N.scoped_set(1);
//!     std::future::ready(()).await; // the guard lives across this await
//! });
//! ```
//!
//! On a single-threaded executor (tokio's `LocalSet`) such a future is allowed, and
//! correct when the task runs in a [`WithContext`]: the guard resets its set in the
//! task's own frame whichever other tasks ran in between.

#![deny(unsafe_code)]

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use pin_project_lite::pin_project;

use crate::context::Context;
use crate::engine::{Frame, Vars};
use crate::error::EnterError;
use crate::plumbing::TaskFrame;

pin_project! {
    /// A future that runs every poll of the inner one in its own context.
    ///
    /// Made by [`ContextFutureExt::in_copied_context`] (a copy of the current context, like an
    /// asyncio task) or [`ContextFutureExt::in_context`] (a given [`Context`] object, which
    /// stays entered until the wrapper is dropped). The inner future is also dropped
    /// inside the context, so its destructors see the task's values.
    ///
    /// Both remember the bindings they started with: if the wrapped future serves HTTP
    /// connections through `contextvars_tower::ContextLayer`, the
    /// layer gives them back when each request ends, so nothing set outside the layer
    /// while serving one keep-alive request reaches the next. That costs nothing until
    /// the context's first set, which keeps a counted reference to the starting
    /// snapshot.
    ///
    /// # Cost
    ///
    /// A poll that only reads enters and leaves the frame with two thread-local cell swaps
    /// each way, whatever n: no allocation, no atomic read-modify-write. A poll that sets
    /// takes counted copies of the frame's snapshot (and context object) at its first set,
    /// which path-copies, and releases the snapshot it replaced when it ends; its later
    /// sets are in place in a copy's frame, and publish in an `in_context` one. Dropping
    /// the wrapper drops the inner future in the frame, then releases the frame.
    #[must_use = "futures do nothing unless polled"]
    pub struct WithContext<F> {
        #[pin]
        inner: Option<F>,
        frame: TaskFrame,
    }

    impl<F> PinnedDrop for WithContext<F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            // A set in a destructor must not land in the dropper's context (a server's
            // connection task, or a worker's own).
            this.frame.end_pinned(this.inner);
        }
    }
}

impl<F> WithContext<F> {
    /// `inner` in `frame`, under the carrier's state now (`plumbing::Carrier`).
    #[inline]
    fn new(inner: F, frame: Frame) -> Self {
        Self {
            inner: Some(inner),
            frame: TaskFrame::over(frame),
        }
    }

    /// `inner` in a copy of the current context (both extension traits' `in_copied_context`).
    #[inline]
    fn in_copy(inner: F) -> Self {
        // A task's context: it remembers its starting bindings, for a request layer's
        // restore of a connection task (`plumbing::CallerFrames`).
        Self {
            inner: Some(inner),
            frame: TaskFrame::capture_task(),
        }
    }

    /// `inner` in a private context over `vars` (a scope's future), which remembers them
    /// as its starting bindings: a connection task may be one.
    #[inline]
    pub(crate) fn in_vars(inner: F, vars: Vars) -> Self {
        Self::new(inner, Frame::with_origin(vars))
    }

    /// `inner` in the context object `ctx`, entered now (both traits' `try_in_context`).
    /// A task's context too: it remembers the bindings `ctx` holds now, for the tower
    /// layer's restore of a connection task.
    fn try_in(inner: F, ctx: &Context) -> Result<Self, EnterError> {
        Ok(Self::new(inner, ctx.enter_frame()?.remembering_origin()))
    }

    /// [`Self::try_in`], panicking with the error (both traits' `in_context`).
    #[track_caller]
    fn in_object(inner: F, ctx: &Context) -> Self {
        match Self::try_in(inner, ctx) {
            Ok(wrapped) => wrapped,
            Err(error) => error.panic(),
        }
    }

    /// A shared reference to the wrapped future.
    pub fn get_ref(&self) -> &F {
        self.inner
            .as_ref()
            .expect("the inner future lives as long as the wrapper")
    }

    /// A pinned mutable reference to the wrapped future.
    pub fn get_pin_mut(self: Pin<&mut Self>) -> Pin<&mut F> {
        self.project()
            .inner
            .as_pin_mut()
            .expect("the inner future lives as long as the wrapper")
    }
}

impl<F: Future> Future for WithContext<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<F::Output> {
        let this = self.project();
        let inner = this
            .inner
            .as_pin_mut()
            .expect("the inner future lives as long as the wrapper");
        this.frame.enter(|| inner.poll(cx))
    }
}

impl<F> fmt::Debug for WithContext<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WithContext").finish_non_exhaustive()
    }
}

/// Wraps futures in a context. Implemented for every [`Future`].
pub trait ContextFutureExt: Future + Sized {
    /// Runs every poll in a copy of the context current *now*: the task sees the
    /// creator's values, and its `set`s stay inside it. This is what an asyncio task does.
    ///
    /// ```
    /// use contextvars::ContextVar;
    /// use contextvars::future::ContextFutureExt;
    /// static USER: ContextVar<&str> = contextvars::context_var!(&'static str, "user");
    ///
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let _token = USER.set("ada");
    /// let handle = tokio::spawn(async { USER.get() }.in_copied_context());
    /// assert_eq!(handle.await.unwrap(), "ada");
    /// # });
    /// ```
    ///
    /// # Cost
    ///
    /// One reference-count increment (the copy, whatever n), no allocation: the wrapper
    /// holds its frame inline. The task's first set or reset also keeps a counted copy of
    /// its starting snapshot; both are released when the wrapper is dropped. Polls: see
    /// [`WithContext`].
    fn in_copied_context(self) -> WithContext<Self> {
        WithContext::in_copy(self)
    }

    /// Runs every poll in the context object `ctx` (Python's
    /// `asyncio.create_task(coro, context=ctx)`): `set`s inside are made to `ctx` and are
    /// visible through it afterwards. `ctx` counts as entered until the wrapper is
    /// dropped, so no other code can run it meanwhile.
    ///
    /// One exception, for servers: if the wrapped future calls
    /// `contextvars_tower::ContextLayer` (a connection task), each request's end gives
    /// `ctx` back the bindings it had when the wrapper was made, so a value set in it
    /// while serving one request never reaches the next.
    ///
    /// ```
    /// use contextvars::Context;
    /// use contextvars::future::ContextFutureExt;
    /// contextvars::context_var! { static HITS: u32; }
    ///
    /// let ctx = Context::new();
    /// let task = async { drop(HITS.set(1)) }.in_context(&ctx);
    /// assert!(ctx.try_run(|| ()).is_err()); // entered by the task
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(task);
    /// assert_eq!(ctx.snapshot().get(&HITS), Some(&1));
    /// ```
    ///
    /// # Panics
    ///
    /// If `ctx` is already entered; [`try_in_context`](Self::try_in_context) returns the
    /// error instead.
    ///
    /// # Cost
    ///
    /// The compare-and-swap on `ctx`'s entered flag and two reference-count increments (the
    /// object and its snapshot), plus one allocation the first time `ctx` is entered (its
    /// shared object). While another handle holds `ctx`, every set in the task path-copies
    /// and publishes. Dropping the wrapper leaves `ctx` (a release store) and releases
    /// both counts.
    #[track_caller]
    fn in_context(self, ctx: &Context) -> WithContext<Self> {
        WithContext::in_object(self, ctx)
    }

    /// [`in_context`](Self::in_context), returning an [`EnterError`] if `ctx` is already
    /// entered (by a thread, or by another wrapper that is still alive).
    ///
    /// # Cost
    ///
    /// As [`in_context`](Self::in_context); a refusal costs the failed compare-and-swap.
    fn try_in_context(self, ctx: &Context) -> Result<WithContext<Self>, EnterError> {
        WithContext::try_in(self, ctx)
    }
}

impl<F: Future> ContextFutureExt for F {}
