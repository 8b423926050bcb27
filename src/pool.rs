//! Which threads belong to a pool: the threads whose own context is read-only.
//!
//! A pool thread runs work for many unrelated units one after another (tokio tasks, rayon
//! jobs, a server's requests). A value set in the thread's *own* context would stay there
//! after the unit that set it is done, and the next unit the thread runs would see it:
//! in a server, another request's tenant or identity. Python's thread pools leak exactly
//! like this. So a `set` in the own (base) context of a pool thread is refused
//! ([`SetError::is_pool_thread`](crate::SetError::is_pool_thread)); a set in a context
//! the unit runs in (a wrapped task, a job of `contextvars::rayon`, a request behind the
//! tower layer, a `Context::run` entered by the unit) is never affected.
//!
//! Two more places run many units in one context, and are refused the same way:
//!
//! * a context entered *outside* a tokio task that the task is polled or dropped in (a
//!   current-thread runtime driven by `block_on`, or dropped with tasks pending, inside
//!   `Context::run`, a thread's or a job's context): each frame entry records what ran
//!   when it was entered ([`Entered`]), and a set compares that with the task running now;
//! * the frame a rayon worker waits in inside a call of `contextvars::rayon` (`join`,
//!   `scope`, `install`, a parallel iterator), where it runs plain jobs it steals: that
//!   frame is read-only ([`Entered::READ_ONLY`]).
//!
//! The check is part of every build, whatever the features: which features are enabled
//! must never decide whether a request's value can reach another request. In a frame
//! entered by synchronous code it asks, in this order:
//!
//! * tokio: whether a task is being polled (or dropped) on this thread that did not enter
//!   the frame (`tokio::task::try_id`: plain `tokio::spawn`ed tasks, connection tasks,
//!   `spawn_blocking` closures);
//! * in the thread's own context only: rayon, whether the thread is a worker of a rayon
//!   pool (`rayon_core::current_thread_index`); any other pool, whether the thread was
//!   declared one with [`thread::declare_pool_thread`](crate::thread::declare_pool_thread).
//!
//! A frame a future entered for its own poll ([`Entered::FOR_POLL`]) is never refused:
//! it is the future's own context.

#![deny(unsafe_code)]

use crate::sync::{AtomicBool, Cell, Ordering, globals, thread_locals};

/// Why a set would reach other units of work, as far as the crate can tell: the pool
/// whose units would see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pool {
    /// A tokio task is being polled (or dropped) on this thread, in the thread's own
    /// context.
    #[cfg_attr(loom, allow(dead_code))] // no tokio under `--cfg loom`
    TokioTask,
    /// A tokio task is being polled (or dropped) inside a context entered outside it (a
    /// runtime driven by `block_on`, or dropped, inside `Context::run`, a thread's or a
    /// job's context): every task that runtime runs there shares the context.
    #[cfg_attr(loom, allow(dead_code))]
    TokioTaskInside,
    /// The thread is a rayon worker, in its own context.
    RayonWorker,
    /// A rayon worker runs a job while a call of `contextvars::rayon` waits on it (a
    /// `join`, `scope`, `install` or parallel iterator): a plain job it stole, which has
    /// no context of its own.
    #[cfg_attr(not(feature = "rayon"), allow(dead_code))]
    RayonWaiting,
    /// The thread was declared a pool thread, under this name.
    Declared(&'static str),
}

// The name under which this thread was declared a pool thread, if it was.
thread_locals! {
    static DECLARED: Cell<Option<&'static str>> = Cell::new(None);
}

/// What was running on the thread when its current frame was entered: the engine keeps
/// one per frame entry (`HOT.entered`), and a set compares it with what runs now
/// ([`refusal`]). A tokio task polled inside a frame entered outside it (a current-thread
/// runtime driven or dropped inside `Context::run`) must not bind there: every other
/// task that runtime polls there would see the value.
///
/// One word, compared and copied on every frame entry and exit: a tokio task's id
/// (never 0, and far below the reserved values), or one of the constants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Entered(u64);

impl Entered {
    /// Outside any tokio task: the thread's base frame, and a frame entered by
    /// synchronous code that no task was running (a thread's, a job's, `Context::run`
    /// called outside a task).
    pub(crate) const OUTSIDE_TASKS: Self = Self(0);
    /// By a future for one poll of its own (a wrapped future, a hooked task, a request
    /// behind the tower layer), or for releasing what a unit of work left: what runs in
    /// it belongs to that unit, whichever task polls it.
    pub(crate) const FOR_POLL: Self = Self(u64::MAX);
    /// A frame in which nothing may be bound: a rayon worker waiting inside a call of
    /// `contextvars::rayon` runs stolen jobs there ([`Pool::RayonWaiting`]).
    #[cfg_attr(not(feature = "rayon"), allow(dead_code))]
    pub(crate) const READ_ONLY: Self = Self(u64::MAX - 1);
}

/// What runs on the thread now, for a frame entered now by synchronous code: the tokio
/// task being polled or dropped, or [`Entered::OUTSIDE_TASKS`].
#[inline]
pub(crate) fn entered_now() -> Entered {
    // tokio does not build under `--cfg loom` (model checking), where it is not a
    // dependency: a model has no tokio tasks.
    #[cfg(not(loom))]
    if let Some(task) = tokio::task::try_id() {
        return Entered(task_number(task));
    }
    Entered::OUTSIDE_TASKS
}

/// A tokio task id as the number it wraps. tokio exposes no accessor on stable, but its
/// `Id` hashes that number (a `NonZeroU64`); a hasher that keeps what it is fed gets it
/// back, and one fed any other way folds the bytes, which keeps distinct ids distinct.
#[cfg(not(loom))]
#[inline]
fn task_number(task: tokio::task::Id) -> u64 {
    use std::hash::{Hash, Hasher};
    struct Keep(u64);
    impl Hasher for Keep {
        fn finish(&self) -> u64 {
            self.0
        }
        fn write_u64(&mut self, n: u64) {
            self.0 = n;
        }
        fn write(&mut self, bytes: &[u8]) {
            for &byte in bytes {
                self.0 = (self.0 << 8) | u64::from(byte);
            }
        }
    }
    let mut keep = Keep(0);
    task.hash(&mut keep);
    // Never 0 (a `NonZeroU64`); ids count up from 1 per process, so the two reserved
    // values at the top are out of reach.
    keep.0
}

/// Whether a set in the current frame, entered as `entered`, must be refused, and why: it
/// would bind where other units of work see it. `in_base` tells whether the frame is
/// the thread's own base frame.
///
/// The common answer, none, costs a few loads and no call but tokio's `try_id` (and,
/// in a thread's base frame, rayon's `current_thread_index`); the reason is worked out
/// only for a refusal, out of line.
#[inline]
pub(crate) fn refusal(entered: Entered, in_base: bool) -> Option<Pool> {
    if entered == Entered::FOR_POLL || !may_refuse(entered, in_base) {
        None
    } else {
        refusal_slow(entered, in_base)
    }
}

/// Whether [`refusal`] refuses: the same questions, answered as a `bool`.
#[inline]
fn may_refuse(entered: Entered, in_base: bool) -> bool {
    if entered == Entered::READ_ONLY {
        return true;
    }
    let now = entered_now();
    if now != Entered::OUTSIDE_TASKS && now != entered {
        return true;
    }
    in_base && (rayon_core::current_thread_index().is_some() || declared().is_some())
}

/// The name this thread was declared a pool thread under, if any (none during thread
/// teardown, when the thread runs no pool's work any more).
#[inline]
fn declared() -> Option<&'static str> {
    DECLARED.try_with(Cell::get).ok().flatten()
}

#[cold]
#[inline(never)]
fn refusal_slow(entered: Entered, in_base: bool) -> Option<Pool> {
    if entered == Entered::READ_ONLY {
        Some(Pool::RayonWaiting)
    } else {
        refusal_by_thread(entered, in_base)
    }
}

/// The pool whose units would see a binding in the thread's own base frame, if any (for
/// a missed lookup's hint there).
pub(crate) fn own_context_pool() -> Option<Pool> {
    refusal_by_thread(Entered::OUTSIDE_TASKS, true)
}

/// [`refusal`] for a frame entered by synchronous code: asks, in this order, whether a
/// tokio task runs now that did not enter the frame, and (in the thread's base frame)
/// whether the thread belongs to a rayon pool or a declared one.
fn refusal_by_thread(entered: Entered, in_base: bool) -> Option<Pool> {
    let now = entered_now();
    if now != Entered::OUTSIDE_TASKS && now != entered {
        return Some(if in_base {
            Pool::TokioTask
        } else {
            Pool::TokioTaskInside
        });
    }
    if !in_base {
        return None;
    }
    if rayon_core::current_thread_index().is_some() {
        return Some(Pool::RayonWorker);
    }
    declared().map(Pool::Declared)
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
#[cfg_attr(not(all(feature = "tokio", tokio_unstable)), allow(dead_code))]
pub(crate) fn say_once(said: &AtomicBool, note: &str) {
    if !said.swap(true, Ordering::Relaxed) {
        eprintln!("{note}");
    }
}
