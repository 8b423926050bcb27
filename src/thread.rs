//! Threads that start in the spawner's context.
//!
//! A thread made with [`std::thread::spawn`] starts with an empty context, as in Python.
//! The functions here carry the context over, in the two ways Python offers:
//!
//! * [`spawn`], [`BuilderExt::spawn_in_copied_context`] and [`ScopeExt::spawn_in_copied_context`]
//!   run the child in a **copy** of the spawner's context, taken at the call (Python
//!   3.14's `thread_inherit_context`). The child sees the spawner's values; its `set`s
//!   stay in the child.
//! * [`spawn_in`], [`BuilderExt::spawn_in_context`] and [`ScopeExt::spawn_in_context`] run
//!   the child in a given [`Context`] **object** (Python's `Thread(context=ctx)`): its
//!   `set`s are made to that object and can be read through it afterwards. The object
//!   counts as entered from the call until the child ends, so entering it twice is an
//!   error, reported by the call itself.
//!
//! ```
//! use contextvars::{Context, ContextVar, thread};
//! static JOB: ContextVar<&str> = contextvars::context_var!(&'static str, "job");
//!
//! let _token = JOB.set("import");
//! let copy = thread::spawn(|| {
//!     drop(JOB.set("child")); // stays in the child's copy
//!     JOB.get()
//! });
//! assert_eq!(copy.join().unwrap(), "child");
//! assert_eq!(JOB.get(), "import");
//!
//! let ctx = Context::new();
//! thread::spawn_in(&ctx, || drop(JOB.set("done"))).join().unwrap();
//! assert_eq!(ctx.snapshot().get(&JOB), Some(&"done")); // the child's set, kept by the object
//! ```
//!
//! Copies cost one reference-count increment, whatever the number of variables.
//!
//! Under `--cfg loom` (model checking, see [`docs::model_checking`](crate::docs::model_checking)),
//! [`spawn`], [`spawn_in`] and [`try_spawn_in`] start `loom::thread`s and return loom's
//! `JoinHandle`, so the same code runs in a model; the extension traits stay on
//! `std::thread`, which a model cannot use.

#![deny(unsafe_code)]

use std::error::Error;
use std::fmt;
use std::io;
use std::thread::{Builder, JoinHandle, Scope, ScopedJoinHandle};

use crate::carry;
use crate::context::Context;
use crate::engine::{self, Frame};
use crate::error::EnterError;
use crate::sync::{self, spawn_thread};

fn copied() -> Frame {
    Frame::private(engine::vars())
}

/// Spawns a thread that runs `f` in a copy of the current context (like
/// [`std::thread::spawn`] otherwise).
///
/// # Panics
///
/// If the operating system cannot create a thread, as [`std::thread::spawn`] does;
/// [`BuilderExt::spawn_in_copied_context`] returns the error instead.
///
/// # Cost
///
/// The context part: one reference-count increment at the call (the copy, whatever n) and
/// one decrement when `f` returns; no allocation. The child enters the copy with a read
/// of tokio's task id and two thread-local cell swaps; its first set takes a counted copy
/// and path-copies, its later sets are in place.
pub fn spawn<F, T>(f: F) -> sync::JoinHandle<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    spawn_thread(carry::job(copied(), f))
}

/// Spawns a thread that runs `f` in the context object `ctx` (Python's
/// `Thread(context=ctx)`): its `set`s are visible through `ctx` afterwards.
///
/// # Panics
///
/// If `ctx` is already entered (by a thread, including this one, or by a task), or if
/// the operating system cannot create a thread; [`try_spawn_in`] returns the first error
/// and [`BuilderExt::spawn_in_context`] both.
///
/// # Cost
///
/// The context part: the compare-and-swap on `ctx`'s entered flag and two reference-count
/// increments (the object and its snapshot), plus one allocation the first time `ctx` is
/// entered (its shared object); when `f` returns, a release store and the decrements.
/// While another handle holds `ctx`, every set in the child path-copies and publishes.
#[track_caller]
pub fn spawn_in<F, T>(ctx: &Context, f: F) -> sync::JoinHandle<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    match try_spawn_in(ctx, f) {
        Ok(handle) => handle,
        Err(error) => error.panic(),
    }
}

/// [`spawn_in`], returning an [`EnterError`] if `ctx` is already entered; no thread is
/// started then.
///
/// # Cost
///
/// As [`spawn_in`]; a refusal costs the compare-and-swap that fails.
pub fn try_spawn_in<F, T>(ctx: &Context, f: F) -> Result<sync::JoinHandle<T>, EnterError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    Ok(spawn_thread(carry::job(ctx.enter_frame()?, f)))
}

/// Declares the current thread a thread of the pool `pool` for the rest of its life:
/// from now on a `set` in the thread's **own** context is refused (a
/// [`SetError`](crate::SetError) for which
/// [`is_pool_thread`](crate::SetError::is_pool_thread) is true, naming `pool`), because
/// a value bound there would outlive the work that bound it and be seen by the next work
/// the thread runs. Work that runs in a context of its own
/// ([`Context::run`](crate::Context::run) of a context captured when it was submitted)
/// sets freely.
///
/// Call it at the start of each thread of a pool the crate does not know (tokio's
/// runtime threads and rayon's workers are recognised without it): a thread pool crate's
/// start handler, or the first line of a worker loop.
///
/// ```
/// use contextvars::{ContextVar, copy_context};
///
/// static TENANT: ContextVar<&'static str> = contextvars::context_var!(&'static str, "tenant");
///
/// let _token = TENANT.set("alpha");
/// let job = copy_context(); // captured when the work is submitted
/// std::thread::spawn(move || {
///     contextvars::thread::declare_pool_thread("my-pool");
///     let error = TENANT.try_set("beta").map(drop).unwrap_err();
///     assert_eq!(error.pool_name(), Some("my-pool"));
///     // The work runs in its submitter's context, and may set there.
///     job.run(|| {
///         assert_eq!(TENANT.get(), "alpha");
///         let _token = TENANT.set("beta");
///     });
/// })
/// .join()
/// .unwrap();
/// ```
pub fn declare_pool_thread(pool: &'static str) {
    crate::pool::declare(pool);
}

/// Why a thread could not be spawned in a context object.
#[derive(Debug)]
#[non_exhaustive]
pub enum SpawnError {
    /// The context is already entered; no thread was started.
    AlreadyEntered(EnterError),
    /// The operating system could not create the thread; the context was left again.
    Io(io::Error),
}

impl fmt::Display for SpawnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AlreadyEntered(error) => {
                write!(f, "cannot spawn a thread in the context: {error}")
            }
            Self::Io(error) => write!(f, "cannot spawn a thread: {error}"),
        }
    }
}

impl Error for SpawnError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            Self::AlreadyEntered(error) => Some(error),
            Self::Io(error) => Some(error),
        }
    }
}

impl From<SpawnError> for io::Error {
    /// An `io::Error` as is; an entered context as [`io::ErrorKind::ResourceBusy`].
    fn from(error: SpawnError) -> Self {
        match error {
            SpawnError::Io(error) => error,
            entered @ SpawnError::AlreadyEntered(_) => {
                io::Error::new(io::ErrorKind::ResourceBusy, entered)
            }
        }
    }
}

/// Context-carrying spawns for [`std::thread::Builder`] (named threads, stack sizes).
///
/// ```
/// use contextvars::ContextVar;
/// use contextvars::thread::BuilderExt;
/// static TENANT: ContextVar<&str> = contextvars::context_var!(&'static str, "tenant");
///
/// let _token = TENANT.set("acme");
/// let handle = std::thread::Builder::new()
///     .name("worker".into())
///     .spawn_in_copied_context(|| TENANT.get())
///     .unwrap();
/// assert_eq!(handle.join().unwrap(), "acme");
/// ```
pub trait BuilderExt: Sized {
    /// [`Builder::spawn`], running `f` in a copy of the current context.
    fn spawn_in_copied_context<F, T>(self, f: F) -> io::Result<JoinHandle<T>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static;

    /// [`Builder::spawn`], running `f` in the context object `ctx` (see [`spawn_in`]).
    fn spawn_in_context<F, T>(self, ctx: &Context, f: F) -> Result<JoinHandle<T>, SpawnError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static;

    /// [`Builder::spawn_scoped`], running `f` in a copy of the current context.
    fn spawn_scoped_in_copied_context<'scope, 'env, F, T>(
        self,
        scope: &'scope Scope<'scope, 'env>,
        f: F,
    ) -> io::Result<ScopedJoinHandle<'scope, T>>
    where
        F: FnOnce() -> T + Send + 'scope,
        T: Send + 'scope;
}

impl BuilderExt for Builder {
    fn spawn_in_copied_context<F, T>(self, f: F) -> io::Result<JoinHandle<T>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.spawn(carry::job(copied(), f))
    }

    fn spawn_in_context<F, T>(self, ctx: &Context, f: F) -> Result<JoinHandle<T>, SpawnError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let frame = ctx.enter_frame().map_err(SpawnError::AlreadyEntered)?;
        // If the thread cannot be created the closure, and with it the frame, is dropped,
        // which leaves the context again.
        self.spawn(carry::job(frame, f)).map_err(SpawnError::Io)
    }

    fn spawn_scoped_in_copied_context<'scope, 'env, F, T>(
        self,
        scope: &'scope Scope<'scope, 'env>,
        f: F,
    ) -> io::Result<ScopedJoinHandle<'scope, T>>
    where
        F: FnOnce() -> T + Send + 'scope,
        T: Send + 'scope,
    {
        self.spawn_scoped(scope, carry::job(copied(), f))
    }
}

/// Context-carrying spawns for [`std::thread::scope`].
///
/// ```
/// use contextvars::Context;
/// use contextvars::thread::ScopeExt;
/// contextvars::context_var! { static STEP: u32; }
///
/// let _token = STEP.set(1);
/// let ctx = Context::new();
/// std::thread::scope(|s| {
///     let copy = s.spawn_in_copied_context(|| STEP.get());
///     s.spawn_in_context(&ctx, || drop(STEP.set(2)));
///     assert_eq!(copy.join().unwrap(), 1);
/// });
/// assert_eq!(ctx.snapshot().get(&STEP), Some(&2));
/// ```
pub trait ScopeExt<'scope> {
    /// [`Scope::spawn`], running `f` in a copy of the current context.
    fn spawn_in_copied_context<F, T>(&'scope self, f: F) -> ScopedJoinHandle<'scope, T>
    where
        F: FnOnce() -> T + Send + 'scope,
        T: Send + 'scope;

    /// [`Scope::spawn`], running `f` in the context object `ctx` (see [`spawn_in`]).
    ///
    /// # Panics
    ///
    /// If `ctx` is already entered.
    #[track_caller]
    fn spawn_in_context<F, T>(&'scope self, ctx: &Context, f: F) -> ScopedJoinHandle<'scope, T>
    where
        F: FnOnce() -> T + Send + 'scope,
        T: Send + 'scope;

    /// [`spawn_in_context`](Self::spawn_in_context), returning an [`EnterError`] if `ctx`
    /// is already entered; no thread is started then.
    fn try_spawn_in_context<F, T>(
        &'scope self,
        ctx: &Context,
        f: F,
    ) -> Result<ScopedJoinHandle<'scope, T>, EnterError>
    where
        F: FnOnce() -> T + Send + 'scope,
        T: Send + 'scope;
}

impl<'scope> ScopeExt<'scope> for Scope<'scope, '_> {
    fn spawn_in_copied_context<F, T>(&'scope self, f: F) -> ScopedJoinHandle<'scope, T>
    where
        F: FnOnce() -> T + Send + 'scope,
        T: Send + 'scope,
    {
        self.spawn(carry::job(copied(), f))
    }

    #[track_caller]
    fn spawn_in_context<F, T>(&'scope self, ctx: &Context, f: F) -> ScopedJoinHandle<'scope, T>
    where
        F: FnOnce() -> T + Send + 'scope,
        T: Send + 'scope,
    {
        match self.try_spawn_in_context(ctx, f) {
            Ok(handle) => handle,
            Err(error) => error.panic(),
        }
    }

    fn try_spawn_in_context<F, T>(
        &'scope self,
        ctx: &Context,
        f: F,
    ) -> Result<ScopedJoinHandle<'scope, T>, EnterError>
    where
        F: FnOnce() -> T + Send + 'scope,
        T: Send + 'scope,
    {
        Ok(self.spawn(carry::job(ctx.enter_frame()?, f)))
    }
}
