//! Which threads belong to a pool: the threads whose own context is read-only.
//!
//! A pool thread runs work for many unrelated units one after another (tokio tasks, rayon
//! jobs, a server's requests). A value set in the thread's *own* context would stay there
//! after the unit that set it is done, and the next unit the thread runs would see it:
//! in a server, another request's tenant or identity. Python's thread pools leak exactly
//! like this. So a `set` in the own (base) context of a pool thread is refused
//! ([`SetError::is_pool_thread`](crate::SetError::is_pool_thread)); a set in a context
//! the unit runs in (a wrapped task, a job of `contextvars::rayon`, a request behind the
//! tower layer, a `Context::run`) is never affected.
//!
//! The check is part of every build, whatever the features: which features are enabled
//! must never decide whether a request's value can reach another request. It asks, in
//! this order, and only when the thread runs in its own context:
//!
//! * tokio: whether a task is being polled (or dropped) on this thread
//!   (`tokio::task::try_id`: plain `tokio::spawn`ed tasks, connection tasks, and
//!   `spawn_blocking` closures);
//! * rayon: whether the thread is a worker of a rayon pool
//!   (`rayon_core::current_thread_index`);
//! * any other pool: whether the thread was declared one with
//!   [`thread::declare_pool_thread`](crate::thread::declare_pool_thread).

#![deny(unsafe_code)]

use crate::sync::{AtomicBool, Cell, Ordering, globals, thread_locals};

/// The pool a thread belongs to, as far as the crate can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pool {
    /// A tokio task is being polled (or dropped) on this thread.
    #[cfg_attr(loom, allow(dead_code))] // no tokio under `--cfg loom`
    TokioTask,
    /// The thread is a rayon worker.
    RayonWorker,
    /// The thread was declared a pool thread, under this name.
    Declared(&'static str),
}

// The name under which this thread was declared a pool thread, if it was.
thread_locals! {
    static DECLARED: Cell<Option<&'static str>> = Cell::new(None);
}

/// The pool the current thread works for now, if any. Only asked when a set would bind
/// in the thread's own context, so a set anywhere else never pays for it.
#[inline(never)]
pub(crate) fn current() -> Option<Pool> {
    // tokio does not build under `--cfg loom` (model checking), where it is not a
    // dependency: a model has no tokio tasks.
    #[cfg(not(loom))]
    if tokio::task::try_id().is_some() {
        return Some(Pool::TokioTask);
    }
    if rayon_core::current_thread_index().is_some() {
        return Some(Pool::RayonWorker);
    }
    // A thread whose thread-locals are being destroyed runs no pool's work any more.
    DECLARED
        .try_with(Cell::get)
        .ok()
        .flatten()
        .map(Pool::Declared)
}

/// Declares the current thread a thread of the pool `name` for the rest of its life
/// (see [`thread::declare_pool_thread`](crate::thread::declare_pool_thread)).
pub(crate) fn declare(name: &'static str) {
    // During thread teardown there is nothing left to protect.
    let _ = DECLARED.try_with(|declared| declared.set(Some(name)));
}

globals! {
    /// Whether a request has gone through the tower layer in this process: a refused
    /// set's message then says the code runs outside the layer (the layer's order),
    /// rather than that the layer is missing. Relaxed: it only chooses a message.
    static REQUEST_LAYER_SEEN: AtomicBool = const AtomicBool::new(false);
}

/// Records that the tower layer served a request (checked first, so the flag's cache
/// line is written once per process, not once per request).
#[cfg_attr(not(feature = "tower"), allow(dead_code))]
pub(crate) fn note_request_layer() {
    if !REQUEST_LAYER_SEEN.load(Ordering::Relaxed) {
        REQUEST_LAYER_SEEN.store(true, Ordering::Relaxed);
    }
}

/// Whether the tower layer has served a request in this process.
pub(crate) fn request_layer_seen() -> bool {
    REQUEST_LAYER_SEEN.load(Ordering::Relaxed)
}

/// Prints `note` to stderr unless `said` says it was printed already: the crate's
/// once-per-process notes about configurations it cannot refuse. Relaxed: two threads
/// racing here print it once between them, as `swap` hands `false` to one.
#[cfg_attr(
    not(any(feature = "tower", all(feature = "tokio", tokio_unstable))),
    allow(dead_code)
)]
pub(crate) fn say_once(said: &AtomicBool, note: &str) {
    if !said.swap(true, Ordering::Relaxed) {
        eprintln!("{note}");
    }
}
