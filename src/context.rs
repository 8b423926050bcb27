//! `Context`: a mutable cell holding an immutable snapshot, and `copy_context`.

#![deny(unsafe_code)]

use std::fmt;

use crate::engine::{self, Frame, Shared, Vars};
use crate::error::{AccessError, EnterError};
use crate::map::Map;
use crate::snapshot::Snapshot;
use crate::sync::{Arc, OnceArc};
use crate::var::ContextVar;

/// A context: a mapping from [`ContextVar`]s to values that code can run in.
///
/// A `Context` is a cell holding an immutable snapshot of bindings. Running code in it
/// ([`run`](Self::run)) makes it the thread's current context: every
/// [`ContextVar::set`] inside replaces the snapshot *of this context object*, so the
/// changes are still there after `run` returns, as in Python. Copies
/// ([`copy`](Self::copy), [`copy_context`]) share the snapshot in O(1) and never see each
/// other's later changes.
///
/// ```
/// use contextvars::{Context, ContextVar, copy_context};
/// static USER: ContextVar<u32> = contextvars::context_var!(u32, "user");
///
/// let ctx = Context::new();
/// ctx.run(|| drop(USER.set(7))); // dropping the token keeps the binding
/// assert_eq!(ctx.snapshot().get(&USER), Some(&7)); // the context kept the set
/// assert!(!USER.is_set()); // the caller's context did not change
///
/// let copy = ctx.copy();
/// ctx.run(|| drop(USER.set(8))); // (tokens are `#[must_use]`)
/// assert_eq!(copy.snapshot().get(&USER), Some(&7)); // a copy is a snapshot
/// assert_eq!(copy_context(), Context::new());
/// ```
///
/// # Entering
///
/// A context can be entered by one thread at a time, and not recursively:
/// [`try_run`](Self::try_run) returns an [`EnterError`] otherwise (Python's
/// `RuntimeError: ... is already entered`). Nested runs of *different* contexts form a
/// stack. The thread's own current context counts as entered (see
/// [`current`](Self::current)).
///
/// # Sharing
///
/// `Context` is `Send + Sync` but not `Clone`: a clone would be ambiguous between "the
/// same context object" and "a copy". Use [`copy`](Self::copy) for a copy, and an
/// `Arc<Context>` or a borrow (for example with [`std::thread::scope`]) to share one
/// object between threads, like Python's `Thread(context=ctx)`. Reads from other threads
/// are lock-free and see a whole snapshot.
///
/// # Equality
///
/// Two contexts are equal when they bind the same variables to equal values (Python's
/// `Context.__eq__`). Values are equal if they are the same value object (set once,
/// shared by copies), or, for variables declared with [`context_var!`](crate::context_var)
/// whose type implements `PartialEq`, if `==` says so. Values of other variables compare
/// by identity only.
pub struct Context {
    /// The snapshot the context was created with; authoritative until `shared` exists.
    initial: Vars,
    /// The shared cell, made on first [`run`](Self::run) or when a handle to a running
    /// frame is taken. Deferring it keeps `copy_context` to a reference-count increment.
    shared: OnceArc<Shared>,
}

impl Context {
    /// A new, empty context (Python's `Context()`).
    pub fn new() -> Self {
        Self::from_vars(Map::new())
    }

    pub(crate) fn from_vars(vars: Vars) -> Self {
        Self {
            initial: vars,
            shared: OnceArc::new(),
        }
    }

    /// A handle to the context this thread is running now (the overview's
    /// `get_current_context()`; Python has no public equivalent).
    ///
    /// Sets made through the handle's [`run`](Self::run) are impossible while the thread
    /// runs it: the current context counts as entered, so no other thread (and no nested
    /// `run`) can enter it until the frame ends, which for a thread's base context is when
    /// the thread exits. Reading it from other threads is fine and sees every later set
    /// of this thread.
    ///
    /// ```
    /// use contextvars::{Context, ContextVar};
    /// static N: ContextVar<i32> = contextvars::context_var!(i32, "n");
    /// let here = Context::current();
    /// let _token = N.set(1);
    /// assert_eq!(here.snapshot().get(&N), Some(&1));
    /// assert!(here.try_run(|| ()).unwrap_err().is_already_entered());
    /// ```
    ///
    /// # Panics
    ///
    /// During thread teardown; [`try_current`](Self::try_current) returns the error.
    #[track_caller]
    pub fn current() -> Self {
        match Self::try_current() {
            Ok(context) => context,
            Err(error) => error.panic(),
        }
    }

    /// [`current`](Self::current), returning an [`AccessError`] during thread teardown.
    pub fn try_current() -> Result<Self, AccessError> {
        let shared = engine::current_shared()?;
        Ok(Self {
            initial: Map::new(),
            shared: OnceArc::with_value(shared),
        })
    }

    fn shared(&self) -> &Arc<Shared> {
        self.shared.get_or_init(|| {
            Arc::new(Shared::new(
                engine::next_context_id(),
                self.initial.clone(),
                false,
            ))
        })
    }

    pub(crate) fn vars(&self) -> Vars {
        match self.shared.get() {
            Some(shared) => shared.load_vars(),
            None => self.initial.clone(),
        }
    }

    /// The context's current bindings as an immutable [`Snapshot`], in O(1).
    pub fn snapshot(&self) -> Snapshot {
        Snapshot::new(self.vars())
    }

    /// A new context with the same bindings (Python's `ctx.copy()`), in O(1).
    pub fn copy(&self) -> Context {
        Self::from_vars(self.vars())
    }

    /// A new context with this one's bindings plus `var = value`, without entering either
    /// (the overview's "factory function"). O(log n) path copying.
    ///
    /// ```
    /// use contextvars::{Context, ContextVar};
    /// static USER: ContextVar<u32> = contextvars::context_var!(u32, "user");
    /// let ctx = Context::new().with_value(&USER, 12345);
    /// assert_eq!(ctx.run(|| USER.get()), 12345);
    /// ```
    pub fn with_value<T: Send + Sync + 'static>(&self, var: &ContextVar<T>, value: T) -> Context {
        let entry = var.make_entry(value);
        Self::from_vars(self.vars().insert(var.raw_id(), entry))
    }

    /// Runs `f` in this context (Python's `ctx.run(f)`): enters it, calls `f`, and leaves
    /// it again, also if `f` panics. Sets made inside stay in this context object.
    ///
    /// # Panics
    ///
    /// If the context is already entered, in this thread or another, or during thread
    /// teardown; [`try_run`](Self::try_run) returns an [`EnterError`] instead. Panics of
    /// `f` propagate after the context is left.
    #[track_caller]
    pub fn run<R>(&self, f: impl FnOnce() -> R) -> R {
        match self.try_run(f) {
            Ok(result) => result,
            Err(error) => error.panic(),
        }
    }

    /// [`run`](Self::run), returning an [`EnterError`] if the context is already entered.
    pub fn try_run<R>(&self, f: impl FnOnce() -> R) -> Result<R, EnterError> {
        // During thread teardown nothing can be entered (writes would have nowhere to go).
        engine::check_alive()?;
        let shared = self.shared();
        if !shared.owner().try_enter() {
            return Err(EnterError::ALREADY_ENTERED);
        }
        // The context is left when `f` returns or unwinds.
        Ok(engine::run_entered(shared, f))
    }

    /// Marks the context entered and returns a frame that runs it and leaves it when
    /// dropped, on whichever thread: the frame may be handed to another thread or task.
    pub(crate) fn enter_frame(&self) -> Result<Frame, EnterError> {
        let shared = self.shared();
        if !shared.owner().try_enter() {
            return Err(EnterError::ALREADY_ENTERED);
        }
        Ok(Frame::entered(shared.clone()))
    }
}

impl Default for Context {
    fn default() -> Self {
        Self::new()
    }
}

impl PartialEq for Context {
    fn eq(&self, other: &Self) -> bool {
        self.snapshot() == other.snapshot()
    }
}

impl fmt::Debug for Context {
    /// `Context { name: value, .. }` with the variables' names and values.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Context ")?;
        fmt::Debug::fmt(&self.snapshot(), f)
    }
}

/// A new context holding the current context's bindings (Python's
/// `contextvars.copy_context()`), in O(1): it shares the snapshot, copying no map data.
///
/// ```
/// use contextvars::{ContextVar, copy_context};
/// static REQUEST: ContextVar<u64> = contextvars::context_var!(u64, "request");
/// let _token = REQUEST.set(1);
/// let ctx = copy_context();
/// let _token2 = REQUEST.set(2);
/// assert_eq!(ctx.run(|| REQUEST.get()), 1);
/// ```
pub fn copy_context() -> Context {
    Context::from_vars(engine::vars())
}
