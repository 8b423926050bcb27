//! tokio tasks that start in the spawner's context (feature `tokio`).
//!
//! Drop-in replacements for [`tokio::spawn`], [`tokio::task::spawn_blocking`] and
//! [`tokio::task::spawn_local`], and the same three for a [`JoinSet`]. Each task runs
//! in a **copy** of the context current at the call, like an asyncio task: it sees the
//! spawner's values, and its `set`s stay in the task, across every `.await`, whichever
//! worker thread polls it.
//!
//! ```
//! contextvars::context_var! { static REQUEST_ID: u64; }
//!
//! # tokio::runtime::Builder::new_multi_thread().build().unwrap().block_on(async {
//! let _token = REQUEST_ID.set(42);
//! let task = contextvars::tokio::spawn(async {
//!     tokio::task::yield_now().await;
//!     let blocking = contextvars::tokio::spawn_blocking(|| REQUEST_ID.get());
//!     (REQUEST_ID.get(), blocking.await.unwrap())
//! });
//! assert_eq!(task.await.unwrap(), (42, 42));
//! # });
//! ```
//!
//! For other executors, wrap the future yourself with
//! [`ContextFutureExt::in_copied_context`].
//!
//! # Where a `set` lives in async code
//!
//! In the context of the task that runs it, if the task has one: a task spawned by the
//! functions here, a future wrapped with `in_copied_context` / `in_context`, a request
//! under the `contextvars_tower` layer, or, with `isolate_tasks` (`--cfg
//! tokio_unstable`), every task of the runtime. A *plain* `tokio::spawn`ed task has none:
//! it runs in the worker thread's own context, which every task that worker polls next
//! would see, so a `set` there is refused ([`SetError`](crate::SetError)) instead of
//! leaking, in every build (the check does not need this feature). Reads in such a task
//! see the worker's own context (empty: nothing can be set there). `block_on`'s own future is not a task: it runs in the
//! calling thread's context.

#![deny(unsafe_code)]

use std::future::Future;

use tokio::task::{AbortHandle, JoinHandle, JoinSet};

use crate::carry;
use crate::engine::{self, Frame};
use crate::future::ContextFutureExt;

#[cfg(tokio_unstable)]
#[cfg_attr(docsrs, doc(cfg(tokio_unstable)))]
pub mod hooks;
#[cfg(tokio_unstable)]
#[cfg_attr(docsrs, doc(cfg(tokio_unstable)))]
pub use hooks::isolate_tasks;

/// [`tokio::spawn`], running the task in a copy of the current context.
///
/// # Panics
///
/// Outside a tokio runtime, as [`tokio::spawn`] does.
#[track_caller]
pub fn spawn<F>(future: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(future.in_copied_context())
}

/// [`tokio::task::spawn_blocking`], running `f` in a copy of the current context.
///
/// # Panics
///
/// Outside a tokio runtime, as [`tokio::task::spawn_blocking`] does.
#[track_caller]
pub fn spawn_blocking<F, R>(f: F) -> JoinHandle<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    tokio::task::spawn_blocking(carry::job(Frame::private(engine::vars()), f))
}

/// [`tokio::task::spawn_local`], running the task in a copy of the current context.
///
/// # Panics
///
/// Outside a [`tokio::task::LocalSet`], as [`tokio::task::spawn_local`] does.
#[track_caller]
pub fn spawn_local<F>(future: F) -> JoinHandle<F::Output>
where
    F: Future + 'static,
    F::Output: 'static,
{
    tokio::task::spawn_local(future.in_copied_context())
}

/// Context-carrying spawns for a [`JoinSet`].
///
/// ```
/// use contextvars::tokio::JoinSetExt;
/// contextvars::context_var! { static SHARD: u8; }
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let mut set = tokio::task::JoinSet::new();
/// for shard in 0..4 {
///     SHARD.scope(shard, || set.spawn_in_copied_context(async { SHARD.get() }));
/// }
/// let mut seen: Vec<u8> = set.join_all().await;
/// seen.sort();
/// assert_eq!(seen, [0, 1, 2, 3]);
/// # });
/// ```
pub trait JoinSetExt<T> {
    /// [`JoinSet::spawn`], running the task in a copy of the current context.
    fn spawn_in_copied_context<F>(&mut self, future: F) -> AbortHandle
    where
        F: Future<Output = T> + Send + 'static,
        T: Send;

    /// [`JoinSet::spawn_blocking`], running `f` in a copy of the current context.
    fn spawn_blocking_in_copied_context<F>(&mut self, f: F) -> AbortHandle
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send;

    /// [`JoinSet::spawn_local`], running the task in a copy of the current context.
    fn spawn_local_in_copied_context<F>(&mut self, future: F) -> AbortHandle
    where
        F: Future<Output = T> + 'static;
}

impl<T: 'static> JoinSetExt<T> for JoinSet<T> {
    #[track_caller]
    fn spawn_in_copied_context<F>(&mut self, future: F) -> AbortHandle
    where
        F: Future<Output = T> + Send + 'static,
        T: Send,
    {
        self.spawn(future.in_copied_context())
    }

    #[track_caller]
    fn spawn_blocking_in_copied_context<F>(&mut self, f: F) -> AbortHandle
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send,
    {
        self.spawn_blocking(carry::job(Frame::private(engine::vars()), f))
    }

    #[track_caller]
    fn spawn_local_in_copied_context<F>(&mut self, future: F) -> AbortHandle
    where
        F: Future<Output = T> + 'static,
    {
        self.spawn_local(future.in_copied_context())
    }
}
