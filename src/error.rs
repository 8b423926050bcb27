//! The crate's errors: small opaque types with hand-written `Display` and `Error`.
//!
//! Each maps to a Python exception: [`LookupError`] to `LookupError`, [`ResetError`] to
//! the `ValueError`s of `ContextVar.reset`, [`EnterError`] to the `RuntimeError` of
//! `Context.run`. [`AccessError`] has no Python twin: it is returned while a thread's
//! context storage is being torn down.

#![deny(unsafe_code)]

use std::fmt;

use crate::engine::{SetRefused, TornDown};
use crate::token::Token;

/// The variable has no value in the current context and no default.
///
/// Python raises `LookupError(var)`; the message here names the variable the same way.
/// Also returned when a lazy default's initialiser reads its own variable
/// ([`is_lazy_default_cycle`](Self::is_lazy_default_cycle)): that default cannot be
/// computed, and waiting for it would never end.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct LookupError {
    name: &'static str,
    cycle: bool,
}

impl LookupError {
    pub(crate) fn new(name: &'static str) -> Self {
        Self { name, cycle: false }
    }

    pub(crate) fn lazy_default_cycle(name: &'static str) -> Self {
        Self { name, cycle: true }
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
            )
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
/// * **An unisolated tokio task** ([`is_unisolated_task`](Self::is_unisolated_task),
///   feature `tokio`): a task is being polled on this thread, and the thread runs in its
///   own context, not in one of the task's. A worker thread's own context outlives the
///   poll: the value would be seen by every task the worker polls next, which in a
///   server means another request's handler. Run the task in a context of its own: the
///   `contextvars::tower` layer for a service's requests, the runtime hooks of
///   `contextvars::tokio` for every task, or a wrapper (`contextvars::tokio::spawn`,
///   `fut.in_current_context()`) for one task.
/// * **Thread teardown** ([`is_access_error`](Self::is_access_error)): the thread's
///   context storage is being destroyed (see [`AccessError`]).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SetError {
    name: &'static str,
    kind: SetErrorKind,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum SetErrorKind {
    UnisolatedTask,
    Access,
}

impl SetError {
    pub(crate) fn from_refusal(name: &'static str, refused: SetRefused) -> Self {
        let kind = match refused {
            SetRefused::UnisolatedTask => SetErrorKind::UnisolatedTask,
            SetRefused::TornDown => SetErrorKind::Access,
        };
        Self { name, kind }
    }

    /// The name of the variable whose set was refused.
    pub fn var_name(&self) -> &'static str {
        self.name
    }

    /// Whether the set was refused because a tokio task is being polled in the worker
    /// thread's own context.
    pub fn is_unisolated_task(&self) -> bool {
        self.kind == SetErrorKind::UnisolatedTask
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
        match self.kind {
            SetErrorKind::UnisolatedTask => write!(
                f,
                "refused to set <ContextVar name={:?}>: a tokio task is being polled in this \
                 worker thread's own context, where the value would stay and be seen by every \
                 task the worker polls next (another request's handler, in a server). Give the \
                 task a context of its own: add `contextvars::tower::ContextLayer` to the \
                 service (each request), install `contextvars::tokio::isolate_tasks` on the \
                 runtime builder (every task; needs `--cfg tokio_unstable`), or spawn it with \
                 `contextvars::tokio::spawn` / wrap it with `.in_current_context()` (one task)",
                self.name
            ),
            SetErrorKind::Access => write!(
                f,
                "cannot set <ContextVar name={:?}>: {}",
                self.name,
                AccessError::new()
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
