//! `Context`: a mutable cell holding an immutable snapshot, and `copy_context`.

#![deny(unsafe_code)]

use std::fmt;
use std::mem::ManuallyDrop;

use crate::engine::{self, Frame, Shared, Vars};
use crate::error::{AccessError, EnterError};
use crate::map::Map;
use crate::snapshot::Snapshot;
use crate::sync::{Arc, ArcRef, OnceArc};
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
/// by identity only. Values stored inline (statics of small `Copy + Eq` types, see
/// [Inline values](ContextVar#inline-values)) have no identity and compare with `==`.
/// `==` takes both [`snapshot`](Self::snapshot)s and compares them as [`Snapshot`]'s `==`
/// does.
pub struct Context {
    /// The shared cell, made on first [`run`](Self::run) or when a handle to a running
    /// frame is taken. Deferring it keeps `copy_context` to a reference-count increment.
    /// Released by `Context`'s `Drop`, out of line (see there).
    shared: ManuallyDrop<OnceArc<Shared>>,
    /// The snapshot the context was created with; authoritative until `shared` exists.
    initial: Vars,
}

impl Context {
    /// A new, empty context (Python's `Context()`).
    ///
    /// # Cost
    ///
    /// No allocation and no atomic operation: an empty snapshot has no node, and the
    /// context's shared object is made by its first [`run`](Self::run).
    pub fn new() -> Self {
        Self::from_vars(Map::new())
    }

    pub(crate) fn from_vars(vars: Vars) -> Self {
        Self {
            initial: vars,
            shared: ManuallyDrop::new(OnceArc::new()),
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
    ///
    /// # Cost
    ///
    /// The first call in a frame makes its context object: one allocation and up to three
    /// reference-count increments (the snapshot twice, the object once); later calls, one
    /// increment (and a publication of sets made while no handle was alive). While a
    /// handle is alive, every set in this context path-copies and publishes (see
    /// [`ContextVar::set`]). Inside a poll, a job or a `run` that has not written yet, the
    /// call first takes a counted copy of the frame, as a set does.
    #[track_caller]
    pub fn current() -> Self {
        match Self::try_current() {
            Ok(context) => context,
            Err(error) => error.panic(),
        }
    }

    /// [`current`](Self::current), returning an [`AccessError`] during thread teardown.
    ///
    /// # Cost
    ///
    /// As [`current`](Self::current).
    pub fn try_current() -> Result<Self, AccessError> {
        let shared = engine::current_shared()?;
        Ok(Self {
            initial: Map::new(),
            shared: ManuallyDrop::new(OnceArc::with_value(shared)),
        })
    }

    /// The shared cell, made on first use. Inline: after the first `run` its load and test
    /// are all `Context::run` spends here (the call cost as much again).
    #[inline]
    fn shared(&self) -> ArcRef<'_, Shared> {
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
    ///
    /// # Cost
    ///
    /// No allocation, whatever n. One reference-count increment for a context never run;
    /// for one that has been run (or a [`current`](Self::current) handle), a load of the
    /// published snapshot from its cell: the increment plus two read-modify-writes of the
    /// cell's counter of loads in progress. Lock-free: a thread running the context never
    /// makes a load wait.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot::new(self.vars())
    }

    /// A new context with the same bindings (Python's `ctx.copy()`), in O(1).
    ///
    /// # Cost
    ///
    /// As [`snapshot`](Self::snapshot): no allocation, one reference-count increment (a
    /// load from its published cell if this context has been run).
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
    ///
    /// # Cost
    ///
    /// The value's allocation (none if it is stored inline, see
    /// [Inline values](ContextVar#inline-values)) and a path copy of this context's
    /// snapshot (read as [`snapshot`](Self::snapshot) does): one more allocation up to 4
    /// variables, two per copied trie level beyond, and a reference-count increment per
    /// boxed entry and child copied.
    pub fn with_value<T: Send + Sync + 'static>(&self, var: &ContextVar<T>, value: T) -> Context {
        let id = var.raw_id();
        let entry = var.make_entry(id, value);
        Self::from_vars(self.vars().insert(id, entry))
    }

    /// Runs `f` in this context (Python's `ctx.run(f)`): enters it, calls `f`, and leaves
    /// it again, also if `f` panics. Sets made inside stay in this context object.
    ///
    /// # Panics
    ///
    /// If the context is already entered, in this thread or another, or during thread
    /// teardown; [`try_run`](Self::try_run) returns an [`EnterError`] instead. Panics of
    /// `f` propagate after the context is left.
    ///
    /// # Cost
    ///
    /// One atomic read-modify-write, the compare-and-swap on the entered flag (leaving is a
    /// release store), plus a read of tokio's task id and two thread-local cell swaps, put
    /// back on exit: no reference count, whatever n. No allocation, except the shared
    /// object at a `Context`'s first run. If `f` sets, its first set takes counted copies
    /// of the snapshot and the object, and every set path-copies and publishes (the
    /// `Context` being run holds the object).
    #[track_caller]
    pub fn run<R>(&self, f: impl FnOnce() -> R) -> R {
        match self.try_run(f) {
            Ok(result) => result,
            Err(error) => error.panic(),
        }
    }

    /// [`run`](Self::run), returning an [`EnterError`] if the context is already entered.
    ///
    /// # Cost
    ///
    /// As [`run`](Self::run); a refusal costs the compare-and-swap that fails.
    pub fn try_run<R>(&self, f: impl FnOnce() -> R) -> Result<R, EnterError> {
        // During thread teardown nothing can be entered (writes would have nowhere to go).
        engine::check_alive()?;
        let shared = self.shared();
        if !shared.owner().try_enter() {
            return Err(EnterError::ALREADY_ENTERED);
        }
        // The context is left when `f` returns or unwinds.
        Ok(engine::run_entered(&shared, f))
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

impl Drop for Context {
    /// Without a shared cell (a copy that was never run: what `copy_context` makes), the
    /// drop is the snapshot's release alone. The cell's release is out of line and takes
    /// the snapshot with it, so that the common drop has one release that may unwind and
    /// no cleanup path (which cost a saved register in every caller).
    #[inline]
    fn drop(&mut self) {
        #[cold]
        #[inline(never)]
        fn release(shared: Arc<Shared>, initial: Vars) {
            drop(shared);
            drop(initial);
        }
        if let Some(shared) = OnceArc::take(&mut self.shared) {
            release(shared, std::mem::take(&mut self.initial));
        }
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
///
/// # Cost
///
/// One reference-count increment, whatever n; no allocation. While the copy lives, the
/// current context's snapshot is shared, so its next set path-copies instead of writing
/// in place.
#[inline]
pub fn copy_context() -> Context {
    Context::from_vars(engine::vars())
}
