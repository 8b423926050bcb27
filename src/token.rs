//! `Token`: the receipt of a `set`, and `ScopedSet`, the guard that resets on drop.
//!
//! # Any drop order is memory-safe
//!
//! Neither type switches frames. A token records *data*: the variable's previous entry,
//! the identity of the frame the set happened in, a change marker and perhaps the
//! snapshot the set replaced, each owned by the token (reference-counted), never a
//! pointer into the thread's state. Resetting (explicitly, or when a `ScopedSet` drops)
//! changes the *bindings* of whichever frame is current, through the same checked path
//! as a `set`, and only after checking that this is the frame the token was made in;
//! otherwise it is refused: [`ResetError`], which a `ScopedSet` dropped in the wrong
//! frame raises as a panic (or skips, if a panic is already unwinding).
//!
//! So user code can forget a token or a guard (`mem::forget`: the value just stays set,
//! as if the token were dropped), drop guards out of order (each restores its own
//! variable's previous binding; the frame's other bindings are untouched), drop one
//! inside another `Context::run` (a different frame: refused, nothing changes there), or have one
//! dropped by an unwinding panic (a normal reset in the frame the panic unwinds
//! through), and no order can make a reader follow a freed snapshot: what is current is
//! always owned by a frame on this thread's call stack, and what a token holds is kept
//! alive by the token. `tests/it/hostile.rs` exercises these orders, natively and under
//! miri.

#![deny(unsafe_code)]

use std::fmt;
use std::marker::PhantomData;

use crate::engine::{self, ResetFailure, SetState};
use crate::error::ResetError;
use crate::var::ContextVar;

/// The receipt of a [`ContextVar::set`]: what [`ContextVar::reset`] needs to restore the
/// state from before that set.
///
/// A token is used at most once, which the compiler enforces: `reset` takes it by value.
/// It is `!Send`: it belongs to the thread (and context) it was made in.
///
/// ```compile_fail
/// contextvars::context_var! { static V: u8; }
/// fn assert_send<T: Send>(_: T) {}
/// assert_send(V.set(1)); // error: a Token cannot move to another thread
/// ```
///
/// Dropping a token without resetting keeps the value that was set. A token holds a
/// reference to the variable's previous value (that is where
/// [`old_value`](Self::old_value) comes from, and what `reset` puts back), so that value
/// lives at least as long as the token. If the set had to copy the snapshot (because a
/// copy of the context, or a context object that publishes it, shared it), the token also
/// keeps the snapshot from before the set, so that a reset with nothing changed in
/// between can reinstall it without allocating: drop tokens you no longer need.
#[must_use = "the value stays set in the current context (the thread's, task's or job's) until the token is passed to `ContextVar::reset`; use `scoped_set` or `scope` to undo it at the end of a scope"]
pub struct Token<'v, T: 'static> {
    var: &'v ContextVar<T>,
    state: SetState,
    _not_send: PhantomData<*const ()>,
}

impl<'v, T: Send + Sync + 'static> Token<'v, T> {
    pub(crate) fn new(var: &'v ContextVar<T>, state: SetState) -> Self {
        Self {
            var,
            state,
            _not_send: PhantomData,
        }
    }

    /// The variable whose `set` made this token (Python's `token.var`).
    pub fn var(&self) -> &'v ContextVar<T> {
        self.var
    }

    /// The variable's binding before the set, or `None` if it had none (Python's
    /// `Token.MISSING`: the variable's default does not count as a binding).
    ///
    /// # Cost
    ///
    /// O(1): a relaxed load of the variable's id and a comparison with the binding's (read
    /// through the entry's table of functions). No allocation, no atomic
    /// read-modify-write: the token holds the old value already.
    pub fn old_value(&self) -> Option<&T> {
        self.state.old.as_ref()?.get(self.var)
    }

    pub(crate) fn reset_in(self, var: &ContextVar<T>) -> Result<(), ResetError<'v, T>> {
        if self.var.existing_id() != var.existing_id() {
            return Err(ResetError::different_var(self));
        }
        let Self { var, state, .. } = self;
        engine::reset_binding(var.raw_id(), state).map_err(|(failure, state)| {
            let token = Token::new(var, state);
            match failure {
                ResetFailure::DifferentContext => ResetError::different_context(token),
                ResetFailure::Access => ResetError::access(token),
            }
        })
    }
}

impl<T: Send + Sync + 'static> fmt::Debug for Token<'_, T> {
    /// Python's repr without the address: `<Token var=<ContextVar name='a'>>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<Token var={:?}>", self.var)
    }
}

/// Resets a [`ContextVar::scoped_set`] when dropped: Python 3.14's `with var.set(v):`.
///
/// `!Send`, like the token it holds: it restores this thread's state, so it cannot cross
/// to another thread, and holding one across an `.await` makes the future `!Send`.
///
/// ```compile_fail
/// contextvars::context_var! { static V: u8; }
/// fn assert_send<T: Send>(_: T) {}
/// assert_send(V.scoped_set(1)); // error: the guard restores this thread's state
/// ```
///
/// # Cost
///
/// Dropping the guard, or [`reset`](Self::reset), costs a [`ContextVar::reset`]: when it
/// is in place, no allocation and one reference-count decrement (the value it releases;
/// none for an inline value).
/// The guard allocates nothing itself.
#[must_use = "the value is reset as soon as the guard is dropped: bind it to a name (`let _guard = ...`), not to `_`"]
pub struct ScopedSet<'v, T: Send + Sync + 'static> {
    token: Option<Token<'v, T>>,
}

impl<'v, T: Send + Sync + 'static> ScopedSet<'v, T> {
    pub(crate) fn new(token: Token<'v, T>) -> Self {
        Self { token: Some(token) }
    }

    /// The token of the set (Python's `with var.set(v) as token:`).
    pub fn token(&self) -> &Token<'v, T> {
        self.token.as_ref().expect("present until reset or drop")
    }

    /// Resets now, returning the error that dropping would panic with.
    ///
    /// # Cost
    ///
    /// That of [`ContextVar::reset`].
    pub fn reset(mut self) -> Result<(), ResetError<'v, T>> {
        let token = self.token.take().expect("present until reset or drop");
        token.var().reset(token)
    }
}

impl<T: Send + Sync + 'static> Drop for ScopedSet<'_, T> {
    /// Resets the set, at the cost of a [`ContextVar::reset`].
    fn drop(&mut self) {
        let Some(token) = self.token.take() else {
            return;
        };
        match token.var().reset(token) {
            Ok(()) => {}
            // The thread's storage is gone (the guard lives in a thread-local destroyed
            // after ours): there is no state left to restore.
            Err(error) if error.is_access_error() => {}
            // The guard was moved into another context's `run`. Do not turn an unwinding
            // panic into an abort.
            Err(error) => {
                if !std::thread::panicking() {
                    error.panic();
                }
            }
        }
    }
}

impl<T: Send + Sync + 'static> fmt::Debug for ScopedSet<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.token {
            Some(token) => f.debug_tuple("ScopedSet").field(token).finish(),
            None => f.write_str("ScopedSet(<reset>)"),
        }
    }
}
