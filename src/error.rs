//! The crate's errors: small opaque types with hand-written `Display` and `Error`.
//!
//! Each maps to a Python exception: [`LookupError`] to `LookupError`, [`ResetError`] to
//! the `ValueError`s of `ContextVar.reset`, [`EnterError`] to the `RuntimeError` of
//! `Context.run`. [`AccessError`] has no Python twin: it is returned while a thread's
//! context storage is being torn down.

#![deny(unsafe_code)]

use std::fmt;

use crate::engine::{self, MissSite, SetRefused, TornDown};
use crate::pool::{self, Pool};
use crate::token::Token;

/// The variable has no value in the current context and no default.
///
/// Python raises `LookupError(var)`; the message here names the variable the same way.
/// Also returned when a lazy default's initialiser reads its own variable
/// ([`is_lazy_default_cycle`](Self::is_lazy_default_cycle)): that default cannot be
/// computed, and waiting for it would never end.
///
/// When the miss happens where a hand-off was probably forgotten (a tokio task, a rayon
/// job or a pool thread running in the thread's own context, a plain rayon job stolen
/// while a `contextvars::rayon` call waits, or a thread whose own context is empty), the
/// message names the helpers that carry the context there.
#[derive(Clone, Copy)]
pub struct LookupError {
    name: &'static str,
    cycle: bool,
    hint: HandOffHint,
}

/// Two errors are equal when they are about the same variable for the same reason; the
/// hint (where the miss happened) does not count.
impl PartialEq for LookupError {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.cycle == other.cycle
    }
}

impl Eq for LookupError {}

/// Where a miss happened, for the message: the hand-off that may have been forgotten.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum HandOffHint {
    None,
    Pool(Pool),
    EmptyThread,
}

impl LookupError {
    /// A miss in the current context, whose message says which hand-off may have been
    /// forgotten (see the type's docs). Called on the cold path only.
    pub(crate) fn in_current_context(name: &'static str) -> Self {
        let hint = match engine::miss_site() {
            MissSite::Elsewhere => HandOffHint::None,
            MissSite::ReadOnly => HandOffHint::Pool(Pool::RayonWaiting),
            MissSite::OwnContext { empty } => match pool::own_context_pool() {
                Some(pool) => HandOffHint::Pool(pool),
                None if empty => HandOffHint::EmptyThread,
                None => HandOffHint::None,
            },
        };
        Self {
            name,
            cycle: false,
            hint,
        }
    }

    pub(crate) fn lazy_default_cycle(name: &'static str) -> Self {
        Self {
            name,
            cycle: true,
            hint: HandOffHint::None,
        }
    }

    /// The name of the variable that had no value.
    pub fn var_name(&self) -> &'static str {
        self.name
    }

    /// Whether the variable has a lazy default whose initialiser read the variable
    /// itself while this thread was computing it.
    pub fn is_lazy_default_cycle(&self) -> bool {
        self.cycle
    }

    #[track_caller]
    pub(crate) fn panic(self) -> ! {
        panic!("{self}")
    }
}

impl fmt::Debug for LookupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("LookupError");
        debug.field("var", &self.name);
        if self.cycle {
            debug.field("lazy_default_cycle", &true);
        }
        if self.hint != HandOffHint::None {
            debug.field("hint", &self.hint);
        }
        debug.finish()
    }
}

impl fmt::Display for LookupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.cycle {
            write!(
                f,
                "the lazy default of <ContextVar name={:?}> reads the variable itself while it is being computed; an initialiser must not read its own variable",
                self.name
            )
        } else {
            write!(
                f,
                "<ContextVar name={:?}> has no value in the current context and no default",
                self.name
            )?;
            match self.hint {
                HandOffHint::None => Ok(()),
                HandOffHint::Pool(pool) => write!(f, "; {}", MissingHandOff(pool)),
                HandOffHint::EmptyThread => f.write_str(
                    "; this thread's own context is empty: if it was started with \
                     `std::thread::spawn` (a new thread starts with an empty context, as in \
                     Python), start it with `contextvars::thread::spawn` to carry the \
                     spawner's values",
                ),
            }
        }
    }
}

/// Why a unit of work on a pool thread does not see its starter's values, and the
/// helpers that hand them over.
struct MissingHandOff(Pool);

impl fmt::Display for MissingHandOff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Pool::TokioTask => f.write_str(
                "this runs in a tokio task with no context of its own (a plain \
                 `tokio::spawn`, a server's connection task, or a plain `spawn_blocking` \
                 closure), so the values of the code that started it were not handed over: \
                 start it with `contextvars::tokio::spawn` / `spawn_blocking`, wrap the \
                 future with `.in_copied_context()`, serve requests behind \
                 `contextvars_tower::ContextLayer`, or install \
                 `contextvars::tokio::isolate_tasks` on the runtime",
            ),
            Pool::TokioTaskInside => f.write_str(
                "this runs in a tokio task with no context of its own, inside a context \
                 entered outside the task (a runtime driven by `block_on`, or dropped, \
                 inside `Context::run` or a thread's or job's context): start it with \
                 `contextvars::tokio::spawn` or wrap the future with \
                 `.in_copied_context()`",
            ),
            Pool::RayonWorker => f.write_str(
                "this runs on a rayon worker thread in its own context (a plain \
                 `rayon::spawn`, `join`, `scope`, `ThreadPool::install` or parallel \
                 iterator), so the values of the code that started it were not handed over: \
                 use `contextvars::rayon`'s `spawn` / `join` / `scope` / `install`, or \
                 `.in_copied_context()` on the parallel iterator",
            ),
            Pool::RayonWaiting => f.write_str(
                "this runs in a plain rayon job that a worker took up while it waited \
                 inside a call of `contextvars::rayon` (a stolen job sees no context: the \
                 values of the code that started it were not handed over): start it with \
                 `contextvars::rayon`'s `spawn` / `join` / `scope` / `install`, or \
                 `.in_copied_context()` on the parallel iterator",
            ),
            Pool::Declared(name) => write!(
                f,
                "this runs on a thread of the pool {name:?} in the thread's own context, so \
                 the values of the code that submitted the work were not handed over: \
                 capture them with `copy_context()` when submitting, and run the work in \
                 them with `Context::run`"
            ),
        }
    }
}

impl std::error::Error for LookupError {}

/// The thread's context storage is gone: the thread is exiting and its thread-locals are
/// being destroyed (for example, a value's `Drop` running at thread exit called
/// [`ContextVar::try_set`](crate::ContextVar::try_set)).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct AccessError {
    _private: (),
}

impl AccessError {
    pub(crate) const fn new() -> Self {
        Self { _private: () }
    }

    #[track_caller]
    pub(crate) fn panic(self) -> ! {
        panic!("{self}")
    }
}

impl fmt::Debug for AccessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccessError")
    }
}

impl fmt::Display for AccessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("cannot access the current context: this thread's context storage has been destroyed (the thread is exiting)")
    }
}

impl std::error::Error for AccessError {}

impl From<TornDown> for AccessError {
    fn from(_: TornDown) -> Self {
        Self::new()
    }
}

/// [`ContextVar::try_set`](crate::ContextVar::try_set) (and `try_scoped_set`,
/// `try_scope`) refused to bind a value.
///
/// Two reasons:
///
/// * **A pool thread's own context** ([`is_pool_thread`](Self::is_pool_thread)): the
///   code runs on a thread that serves many unrelated units of work (a tokio worker or
///   blocking thread while a task is polled, a rayon worker, or a thread declared with
///   [`thread::declare_pool_thread`](crate::thread::declare_pool_thread)), and not in a
///   context of the unit's own. The thread's own context outlives the unit: the value
///   would be seen by the next task, job or request the thread runs. Run the unit in a
///   context of its own; the message names the fix for where it happened (the tower
///   layer, or its order, for a server's middleware; the hand-off helpers of
///   `contextvars::tokio` and `contextvars::rayon`; `Context::run`). Two more places
///   run many units in one context and are refused the same way: a plain tokio task
///   polled or dropped inside a context entered outside it (a current-thread runtime
///   driven by `block_on`, or dropped, inside `Context::run`), and a plain rayon job a
///   worker steals while a call of `contextvars::rayon` waits. This check is part of
///   every build, whatever the crate's features.
/// * **Thread teardown** ([`is_access_error`](Self::is_access_error)): the thread's
///   context storage is being destroyed (see [`AccessError`]).
///
/// ```
/// use contextvars::ContextVar;
///
/// static TENANT: ContextVar<&'static str> = contextvars::context_var!(&'static str, "tenant");
///
/// let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
/// // A plain rayon job runs in the worker's own context, shared by every job it runs.
/// let error = pool.install(|| TENANT.try_set("alpha").map(drop)).unwrap_err();
/// assert!(error.is_pool_thread());
/// assert_eq!(error.pool_name(), Some("rayon"));
/// // A context of the job's own takes the set.
/// let seen = pool.install(|| {
///     contextvars::Context::new().run(|| {
///         let _token = TENANT.set("alpha");
///         TENANT.get()
///     })
/// });
/// assert_eq!(seen, "alpha");
/// ```
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SetError {
    name: &'static str,
    kind: SetErrorKind,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum SetErrorKind {
    /// `layer_seen`: the tower layer has served requests in this process (so the code
    /// runs outside it rather than without it).
    PoolThread {
        pool: Pool,
        layer_seen: bool,
    },
    Access,
}

impl SetError {
    pub(crate) fn from_refusal(name: &'static str, refused: SetRefused) -> Self {
        let kind = match refused {
            SetRefused::PoolThread(pool) => SetErrorKind::PoolThread {
                pool,
                layer_seen: pool::request_layer_seen(),
            },
            SetRefused::TornDown => SetErrorKind::Access,
        };
        Self { name, kind }
    }

    /// The name of the variable whose set was refused.
    pub fn var_name(&self) -> &'static str {
        self.name
    }

    /// Whether the set was refused because the value would reach other units of work:
    /// the code runs in the own context of a pool thread (a tokio task without a context
    /// of its own, a plain rayon job, or a thread declared with
    /// [`thread::declare_pool_thread`](crate::thread::declare_pool_thread)), in a plain
    /// tokio task polled inside a context entered outside it (a runtime driven or dropped
    /// inside `Context::run`), or in a plain rayon job stolen while a `contextvars::rayon`
    /// call waits.
    pub fn is_pool_thread(&self) -> bool {
        matches!(self.kind, SetErrorKind::PoolThread { .. })
    }

    /// For a pool thread's refusal, which pool: `"tokio"`, `"rayon"`, or the name given to
    /// [`thread::declare_pool_thread`](crate::thread::declare_pool_thread).
    pub fn pool_name(&self) -> Option<&'static str> {
        match self.kind {
            SetErrorKind::PoolThread { pool, .. } => Some(match pool {
                Pool::TokioTask | Pool::TokioTaskInside => "tokio",
                Pool::RayonWorker | Pool::RayonWaiting => "rayon",
                Pool::Declared(name) => name,
            }),
            SetErrorKind::Access => None,
        }
    }

    /// Whether the thread's context storage is being torn down.
    pub fn is_access_error(&self) -> bool {
        self.kind == SetErrorKind::Access
    }

    #[track_caller]
    pub(crate) fn panic(self) -> ! {
        panic!("{self}")
    }
}

impl fmt::Debug for SetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SetError")
            .field("var", &self.name)
            .field("kind", &self.kind)
            .finish()
    }
}

impl fmt::Display for SetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (pool, layer_seen) = match self.kind {
            SetErrorKind::PoolThread { pool, layer_seen } => (pool, layer_seen),
            SetErrorKind::Access => {
                return write!(
                    f,
                    "cannot set <ContextVar name={:?}>: {}",
                    self.name,
                    AccessError::new()
                );
            }
        };
        write!(f, "refused to set <ContextVar name={:?}>: ", self.name)?;
        match pool {
            Pool::TokioTask if layer_seen => f.write_str(
                "this runs in a tokio task with no context of its own, in the thread's own \
                 context (a tokio worker's or blocking thread's), where the value would stay \
                 and be seen by whatever the thread runs next (another request's handler, in \
                 a server). \
                 `contextvars_tower::ContextLayer` serves requests in this process, but this \
                 code runs outside it: a middleware the layer does not wrap (with axum, a \
                 layer added after `.layer(ContextLayer::new())` wraps it from outside: add \
                 the context layer last, or first in a `ServiceBuilder`); a task a handler \
                 spawned with a plain `tokio::spawn` (spawn it with \
                 `contextvars::tokio::spawn` or wrap it with `.in_copied_context()`); or a \
                 plain `spawn_blocking` closure (use `contextvars::tokio::spawn_blocking`). \
                 (A task's destructor run while a runtime shuts down is refused the same way: \
                 that task is over)",
            ),
            Pool::TokioTask => f.write_str(
                "this runs in a tokio task with no context of its own (a plain \
                 `tokio::spawn`ed task, a server's connection task, or a plain \
                 `spawn_blocking` closure), in the thread's own context (a tokio worker's or \
                 blocking thread's), where the value would stay and be seen by whatever the \
                 thread runs next (another request's handler, in a server). Give the task a \
                 context of its own: add \
                 `contextvars_tower::ContextLayer` to the service (each request; with axum, \
                 add it last so it wraps every middleware), install \
                 `contextvars::tokio::isolate_tasks` on the runtime builder (every task; \
                 needs `--cfg tokio_unstable`), or spawn it with `contextvars::tokio::spawn` \
                 / `spawn_blocking` or wrap it with `.in_copied_context()` (one task)",
            ),
            Pool::TokioTaskInside => f.write_str(
                "this runs in a tokio task with no context of its own, polled (or dropped) \
                 inside a context that was entered outside the task: a runtime driven by \
                 `block_on`, or dropped with tasks pending, inside `Context::run` or the \
                 context of a thread or job. Every task that runtime runs there shares that \
                 context, so the value would be seen by the other tasks. Give the task a \
                 context of its own (spawn it with `contextvars::tokio::spawn` or wrap it \
                 with `.in_copied_context()`), or set the value in the context before \
                 driving the runtime. (A task's destructor run while a runtime is dropped \
                 there is refused the same way: that task is over)",
            ),
            Pool::RayonWaiting => f.write_str(
                "this runs in a plain rayon job that a worker took up (stole) while it \
                 waited inside a call of `contextvars::rayon` (a `join`, `scope`, \
                 `install` or parallel iterator of this crate): the job has no context of \
                 its own, and a value set there would be seen by the next job the worker \
                 takes up while it waits. Start the job with `contextvars::rayon`'s \
                 `spawn` / `join` / `scope` / `install` or `.in_copied_context()` on its \
                 parallel iterator (each job gets a copy of its creator's context), or set \
                 inside `Context::run`",
            ),
            Pool::RayonWorker => f.write_str(
                "this runs on a rayon worker thread in its own context (a plain \
                 `rayon::spawn`, `join`, `scope`, `ThreadPool::install` or parallel \
                 iterator, or any code on a thread that joined a pool with \
                 `use_current_thread`), where the value would stay and be seen by every job \
                 the worker runs next (another request's job, in a server). Run the job in a \
                 context of its own: use `contextvars::rayon`'s `spawn` / `join` / `scope` / `install` \
                 or `.in_copied_context()` on the parallel iterator (each job or item gets \
                 a copy of the caller's context), or set inside `Context::run`",
            ),
            Pool::Declared(name) => write!(
                f,
                "this runs on a thread of the pool {name:?} in the thread's own context, where \
                 the value would stay and be seen by the next work the thread runs. Run the \
                 work in a context of its own: capture one with `copy_context()` when \
                 submitting it and call `Context::run` on the pool thread"
            ),
        }
    }
}

impl std::error::Error for SetError {}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum ResetErrorKind {
    DifferentVar,
    DifferentContext,
    Access,
}

/// [`ContextVar::reset`](crate::ContextVar::reset) refused the token. The token is handed
/// back ([`into_token`](Self::into_token)) so it can be used in the right place.
///
/// Python's third reset error, "has already been used once", cannot happen: a token is
/// moved into `reset`, so the compiler rejects a second use.
pub struct ResetError<'v, T: 'static> {
    kind: ResetErrorKind,
    token: Token<'v, T>,
}

impl<'v, T: Send + Sync + 'static> ResetError<'v, T> {
    pub(crate) fn different_var(token: Token<'v, T>) -> Self {
        Self {
            kind: ResetErrorKind::DifferentVar,
            token,
        }
    }

    pub(crate) fn different_context(token: Token<'v, T>) -> Self {
        Self {
            kind: ResetErrorKind::DifferentContext,
            token,
        }
    }

    pub(crate) fn access(token: Token<'v, T>) -> Self {
        Self {
            kind: ResetErrorKind::Access,
            token,
        }
    }

    /// The token was made by a different variable (Python's `ValueError: ... was created
    /// by a different ContextVar`).
    pub fn is_different_var(&self) -> bool {
        self.kind == ResetErrorKind::DifferentVar
    }

    /// The token was made in a different context than the current one (Python's
    /// `ValueError: ... was created in a different Context`).
    pub fn is_different_context(&self) -> bool {
        self.kind == ResetErrorKind::DifferentContext
    }

    /// The thread's context storage is being torn down (see [`AccessError`]).
    pub fn is_access_error(&self) -> bool {
        self.kind == ResetErrorKind::Access
    }

    /// The token, unused, to reset it elsewhere or drop it.
    pub fn into_token(self) -> Token<'v, T> {
        self.token
    }

    #[track_caller]
    pub(crate) fn panic(self) -> ! {
        panic!("{self}")
    }
}

impl<T: Send + Sync + 'static> fmt::Debug for ResetError<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResetError")
            .field("kind", &self.kind)
            .field("token", &self.token)
            .finish()
    }
}

impl<T: Send + Sync + 'static> fmt::Display for ResetError<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            ResetErrorKind::DifferentVar => {
                write!(f, "{:?} was created by a different ContextVar", self.token)
            }
            ResetErrorKind::DifferentContext => {
                write!(f, "{:?} was created in a different Context", self.token)
            }
            ResetErrorKind::Access => {
                write!(f, "cannot reset {:?}: {}", self.token, AccessError::new())
            }
        }
    }
}

impl<T: Send + Sync + 'static> std::error::Error for ResetError<'_, T> {}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum EnterErrorKind {
    AlreadyEntered,
    Access,
}

/// [`Context::try_run`](crate::Context::try_run) could not enter the context.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct EnterError {
    kind: EnterErrorKind,
}

impl EnterError {
    pub(crate) const ALREADY_ENTERED: Self = Self {
        kind: EnterErrorKind::AlreadyEntered,
    };
    pub(crate) const ACCESS: Self = Self {
        kind: EnterErrorKind::Access,
    };

    /// The context is already entered, in this thread (a nested `run`, or it is the
    /// thread's current context) or in another one. Python: `RuntimeError: cannot enter
    /// context: ... is already entered`.
    pub fn is_already_entered(&self) -> bool {
        self.kind == EnterErrorKind::AlreadyEntered
    }

    /// The thread's context storage is being torn down (see [`AccessError`]).
    pub fn is_access_error(&self) -> bool {
        self.kind == EnterErrorKind::Access
    }

    #[track_caller]
    pub(crate) fn panic(self) -> ! {
        panic!("{self}")
    }
}

impl From<AccessError> for EnterError {
    fn from(_: AccessError) -> Self {
        Self::ACCESS
    }
}

impl From<TornDown> for EnterError {
    fn from(_: TornDown) -> Self {
        Self::ACCESS
    }
}

impl fmt::Debug for EnterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnterError")
            .field("kind", &self.kind)
            .finish()
    }
}

impl fmt::Display for EnterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            EnterErrorKind::AlreadyEntered => {
                f.write_str("cannot enter context: the context is already entered")
            }
            EnterErrorKind::Access => write!(f, "cannot enter context: {}", AccessError::new()),
        }
    }
}

impl std::error::Error for EnterError {}
