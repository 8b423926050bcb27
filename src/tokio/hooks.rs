//! Every tokio task in a context of its own, through the runtime's task hooks (feature
//! `tokio`, built with `--cfg tokio_unstable`): [`isolate_tasks`].
//!
//! tokio calls the hooks of a runtime's [`Builder`]:
//!
//! * `on_task_spawn` on the *spawning* thread, inside `tokio::spawn` (and the runtime's
//!   and `Handle`'s `spawn`): the spawner's current context is copied for the new task
//!   and filed under its task id;
//! * `on_before_task_poll` / `on_after_task_poll` on the worker thread, right before and
//!   right after each poll of a task, as a pair around it: the task's frame is swapped in
//!   as the thread's frame, and taken out again with what the poll made of it;
//! * `on_task_terminate` when a task completes, is cancelled or is shut down (inside its
//!   last poll, or on the thread that shuts it down): its frame is released.
//!
//! So `tokio::spawn`, a server's connection tasks and every handler start with a copy of
//! their spawner's context and keep their `set`s, like asyncio tasks.
//!
//! # What is not covered
//!
//! * `spawn_blocking` closures: tokio runs them outside the poll hooks. Use
//!   [`contextvars::tokio::spawn_blocking`](crate::tokio::spawn_blocking) (a plain one's
//!   `set` is refused, as in any unisolated task).
//! * `LocalSet` tasks (`spawn_local`): a `LocalSet` polls them without the hooks, inside
//!   the poll of whatever task or `block_on` drives it, so they share that context. Use
//!   [`contextvars::tokio::spawn_local`](crate::tokio::spawn_local).
//! * `block_on`'s own future is not a task: it runs in the calling thread's context.
//! * Requests on one HTTP/1 keep-alive connection are served by one connection task, so
//!   they share its context: without the `contextvars_tower` layer, a value a
//!   middleware sets while serving one request is seen by the next request on the
//!   connection. The crate cannot tell a connection task from any other task, so it
//!   cannot refuse that set; add the layer. The first time a task sets a variable in its
//!   own context while no layer has served a request, the crate prints a note saying so
//!   to stderr, once per process. With the layer anywhere in the stack (also
//!   inside a middleware that sets), each request runs in a context of its own, and
//!   after each response the connection task gets back the bindings it started with, so
//!   nothing set outside the layer reaches the next request either, except after a
//!   request that such a middleware answers itself without calling the layer (no code
//!   of the crate runs for it). The first time a restore finds the connection's bindings
//!   changed, the crate prints a note saying so to stderr, once per process.
//! * A task still pending when a *current-thread* runtime is dropped has its future
//!   dropped on the dropping thread, outside the hooks (tokio calls none around that
//!   drop), so its destructors run in that thread's context. A multi-thread runtime drops
//!   them on its workers, in their own contexts, where a `set` is refused.
//! * Runtimes built without these hooks, and other executors.
//!
//! # Cost
//!
//! Per spawn, a copy of the spawner's context (a reference-count increment) and an
//! insertion into a sharded map; per poll, a removal and an insertion (each under a
//! shard's mutex) and two frame swaps. `benches/propagation.rs` measures a poll.

#![deny(unsafe_code)]

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::runtime::Builder;
use tokio::task::Id;

use crate::engine::{self, Frame};
use crate::sync::{AtomicBool, Cell, OnceLock, Ordering, StaticCounter, globals, thread_locals};

/// Hashes a task id (a `u64` that tokio hands out in sequence) with one multiplication:
/// SipHash, std's default, cost more than the rest of a hook.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.write_u64(u64::from(byte));
        }
    }

    fn write_u64(&mut self, value: u64) {
        // Fibonacci hashing: spreads sequential ids over the high bits, which `HashMap`
        // and the shard index use.
        self.0 = (self.0 ^ value).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// A task's place in the registry.
enum Slot {
    /// Between polls: the task's frame waits here.
    Filed(Frame),
    /// A poll on the thread with this [`poller_id`] took the frame out, and its
    /// after-poll hook has not filed it back yet.
    CheckedOut(u64),
}

type IdMap = HashMap<Id, Slot, BuildHasherDefault<IdHasher>>;

/// How long a poll waits for the previous poll of the same task, on another thread, to
/// file the task's frame back before it gives up and starts from an empty context
/// (values lost, none leaked). The wait is the gap between tokio marking the task idle
/// and calling the after-poll hook: a few instructions, unless that thread is
/// descheduled right there. A poll does not wait at all when the frame was taken out on
/// its own thread, or when no after-poll hook has ever run (both mean the after-poll
/// hook was replaced and will never come).
const CHECK_OUT_PATIENCE: Duration = Duration::from_secs(2);

globals! {
    /// Whether any after-poll hook of `isolate_tasks` has run in this process.
    static AFTER_POLL_SEEN: AtomicBool = const AtomicBool::new(false);
    /// Hands out [`poller_id`]s.
    static NEXT_POLLER: StaticCounter = const StaticCounter::new(1);
}

// This thread's poller id (0: not assigned yet).
thread_locals! {
    static POLLER: Cell<u64> = Cell::new(0);
}

/// A number for this thread, unique in the process: which thread took a task's frame out.
fn poller_id() -> u64 {
    POLLER
        .try_with(|id| match id.get() {
            0 => {
                let fresh = NEXT_POLLER.fetch_add(1);
                id.set(fresh);
                fresh
            }
            assigned => assigned,
        })
        .unwrap_or(u64::MAX)
}

/// The tasks' frames between polls, by task id: sharded, so polls on different workers
/// rarely meet on a lock.
///
/// tokio marks a task idle *before* it calls the after-poll hook, so a task woken from
/// another thread can be polled on a second worker while the first is still about to
/// file the frame back. A poll therefore checks the frame out ([`Registry::check_out`])
/// and waits while it is still out; the after-poll hook checks it back in.
struct Registry {
    shards: [Mutex<IdMap>; SHARDS],
}

const SHARDS: usize = 16;

impl Registry {
    fn get() -> &'static Self {
        static REGISTRY: OnceLock<Registry> = OnceLock::new();
        REGISTRY.get_or_init(|| Self {
            shards: std::array::from_fn(|_| Mutex::new(IdMap::default())),
        })
    }

    fn shard(&self, id: Id) -> &Mutex<IdMap> {
        let hash = BuildHasherDefault::<IdHasher>::default().hash_one(id);
        &self.shards[(hash >> 60) as usize % SHARDS]
    }

    fn lock(&self, id: Id) -> MutexGuard<'_, IdMap> {
        self.shard(id)
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Files a new task's frame.
    fn file_new(&self, id: Id, frame: Frame) {
        let old = self.lock(id).insert(id, Slot::Filed(frame));
        // Released outside the lock: a frame's values may have destructors.
        release(old);
    }

    /// Takes the task's frame out for a poll, waiting while a previous poll still has it
    /// out; `None` if the task has no frame (spawned before the hooks were installed) or
    /// the wait gave up ([`CHECK_OUT_PATIENCE`]). The slot is marked checked out either
    /// way, for [`check_in`](Self::check_in).
    fn check_out(&self, id: Id) -> Option<Frame> {
        let me = poller_id();
        let mut spins = 0u32;
        let mut since: Option<Instant> = None;
        loop {
            {
                let mut map = self.lock(id);
                match map.get_mut(&id) {
                    Some(&mut Slot::CheckedOut(by))
                        if by != me && AFTER_POLL_SEEN.load(Ordering::Relaxed) => {}
                    Some(slot) => {
                        return match std::mem::replace(slot, Slot::CheckedOut(me)) {
                            Slot::Filed(frame) => Some(frame),
                            Slot::CheckedOut(_) => None,
                        };
                    }
                    None => {
                        map.insert(id, Slot::CheckedOut(me));
                        return None;
                    }
                }
            }
            if spins < 64 {
                spins += 1;
                std::hint::spin_loop();
                continue;
            }
            let since = *since.get_or_insert_with(Instant::now);
            if since.elapsed() > CHECK_OUT_PATIENCE {
                return None;
            }
            std::thread::yield_now();
        }
    }

    /// Files the frame back after a poll; gives it back (to be released by the caller,
    /// outside the lock) if the slot is no longer checked out: the task terminated
    /// elsewhere meanwhile, or a later poll gave up waiting and filed its own.
    fn check_in(&self, id: Id, frame: Frame) -> Option<Frame> {
        match self.lock(id).get_mut(&id) {
            Some(slot @ Slot::CheckedOut(_)) => {
                *slot = Slot::Filed(frame);
                None
            }
            _ => Some(frame),
        }
    }

    fn remove(&self, id: Id) -> Option<Slot> {
        self.lock(id).remove(&id)
    }
}

/// A task whose frame this thread is running now.
struct Polled {
    id: Id,
    /// The task terminated during its poll: its frame is released instead of filed again.
    terminated: bool,
}

// The tasks whose frames this thread is running now, innermost last.
thread_locals! {
    static POLLING: Cell<Vec<Polled>> = Cell::new(Vec::new());
}

/// Calls `f` with this thread's list of tasks being polled; `None` once the thread's
/// thread-locals are being destroyed.
fn with_polling<R>(f: impl FnOnce(&mut Vec<Polled>) -> R) -> Option<R> {
    POLLING
        .try_with(|cell| {
            let mut polling = cell.take();
            let result = f(&mut polling);
            cell.set(polling);
            result
        })
        .ok()
}

/// Releases what a task held, outside the lock and in a frame of its own where that may
/// run a value's destructor (`engine::release_isolated`): this runs in a hook, outside
/// the task's poll, and a destructor that sets must not bind in the thread's own context
/// (or whatever context the thread runs), where the next task could see it.
fn release(held: Option<impl Into<Option<Frame>>>) {
    if let Some(mut frame) = held.and_then(Into::into) {
        engine::release_isolated(&mut frame);
    }
}

impl From<Slot> for Option<Frame> {
    fn from(slot: Slot) -> Self {
        match slot {
            Slot::Filed(task) => Some(task),
            Slot::CheckedOut(_) => None,
        }
    }
}

fn on_spawn(id: Id) {
    Registry::get().file_new(id, Frame::with_origin(engine::vars()));
}

fn before_poll(id: Id) {
    // The after-poll hook finds the task through this list, so a task that cannot be
    // recorded (the list is gone: thread teardown) is not entered, and keeps its frame.
    if with_polling(|_| ()).is_none() {
        return;
    }
    // A task spawned before the hooks were installed, or whose frame is missing, starts
    // from an empty context of its own rather than the worker's.
    let frame = Registry::get()
        .check_out(id)
        .unwrap_or_else(|| Frame::with_origin(engine::Vars::default()));
    let polled = Polled {
        id,
        terminated: false,
    };
    // Cannot fail: the list was there a moment ago, and no code of another kind ran.
    let _ = with_polling(|polling| polling.push(polled));
    if let Err(frame) = engine::enter_detached(frame) {
        // Thread teardown: nothing can run in a context any more.
        let polled = with_polling(|polling| polling.pop()).flatten();
        release(Registry::get().remove(id));
        drop((frame, polled));
    }
}

fn after_poll(id: Id) {
    if !AFTER_POLL_SEEN.load(Ordering::Relaxed) {
        AFTER_POLL_SEEN.store(true, Ordering::Relaxed);
    }
    let entered = with_polling(|polling| match polling.last() {
        Some(top) if top.id == id => polling.pop(),
        _ => None,
    })
    .flatten();
    let Some(Polled { terminated, .. }) = entered else {
        return; // `before_poll` did not enter (thread teardown)
    };
    let Some(task) = engine::leave_detached() else {
        // Cannot happen (tokio calls the hooks as a pair around the poll); the next poll
        // starts from an empty context rather than wait for this one.
        release(Registry::get().remove(id));
        return;
    };
    note_set_without_layer(&task);
    if terminated {
        release(Registry::get().remove(id));
        release(Some(task));
    } else {
        release(Registry::get().check_in(id, task));
    }
}

globals! {
    /// Whether [`note_set_without_layer`] has spoken (once per process).
    static NOTED_SET_WITHOUT_LAYER: AtomicBool = const AtomicBool::new(false);
}

/// The one configuration the crate cannot protect, said once per process: a task set a
/// variable in its own context, and no tower layer has served a request. If the task is a
/// server's connection task, the requests of its keep-alive connection share that
/// context. The crate cannot tell a connection task from any other task, so the set is
/// not refused; this note on stderr says what to add. Cost per poll once said: one
/// relaxed load.
fn note_set_without_layer(frame: &Frame) {
    if NOTED_SET_WITHOUT_LAYER.load(Ordering::Relaxed)
        || !frame.bindings_changed()
        || crate::pool::request_layer_seen()
    {
        return;
    }
    crate::pool::say_once(&NOTED_SET_WITHOUT_LAYER, SET_WITHOUT_LAYER);
}

/// What [`note_set_without_layer`] prints.
const SET_WITHOUT_LAYER: &str = "contextvars: a task of a runtime with \
    `contextvars::tokio::isolate_tasks` set a context variable in its own context, and no \
    `contextvars_tower::ContextLayer` has served a request in this process. If the task \
    serves HTTP connections (a server's connection task), the requests of a keep-alive \
    connection share its context, and a value set while serving one request is seen by \
    the next: add `ContextLayer` to the service (crate `contextvars-tower`; with axum, add it \
    last). A task that serves no HTTP connection is isolated as it is: then ignore this \
    note, which is printed once.";

fn on_terminate(id: Id) {
    // Inside the task's last poll the frame is the thread's now: mark it, and the
    // after-poll hook releases it.
    let polled_here = with_polling(|polling| match polling.last_mut() {
        Some(top) if top.id == id => {
            top.terminated = true;
            true
        }
        _ => false,
    })
    .unwrap_or(false);
    if !polled_here {
        release(Registry::get().remove(id));
    }
}

/// Installs the task hooks that give every task of the runtime a context of its own: a
/// copy of its spawner's context, kept across its polls, like an asyncio task. Needs
/// `--cfg tokio_unstable` (tokio's poll hooks are unstable).
///
/// tokio keeps one function per hook: registering another `on_task_spawn`,
/// `on_before_task_poll`, `on_after_task_poll` or `on_task_terminate` afterwards replaces
/// this one. Without its after-poll hook a worker would stay in the last task's context
/// (the crate keeps that memory-safe, not correct), so register your own hooks first and
/// call `isolate_tasks` last. See the [module docs](self) for where tokio calls each
/// hook and what is not covered.
///
/// ```
/// # #[cfg(tokio_unstable)] {
/// contextvars::context_var! { static REQUEST_ID: u64; }
///
/// let mut builder = tokio::runtime::Builder::new_multi_thread();
/// contextvars::tokio::isolate_tasks(&mut builder);
/// let rt = builder.build().unwrap();
/// let seen = rt.block_on(async {
///     let _token = REQUEST_ID.set(7);
///     // A plain `tokio::spawn` now starts with a copy of the spawner's context, and
///     // its sets stay in it.
///     tokio::spawn(async {
///         drop(REQUEST_ID.set(REQUEST_ID.get() + 1));
///         tokio::task::yield_now().await;
///         REQUEST_ID.get()
///     })
///     .await
///     .unwrap()
/// });
/// assert_eq!(seen, 8);
/// # }
/// ```
pub fn isolate_tasks(builder: &mut Builder) -> &mut Builder {
    builder
        .on_task_spawn(|meta| on_spawn(meta.id()))
        .on_before_task_poll(|meta| before_poll(meta.id()))
        .on_after_task_poll(|meta| after_poll(meta.id()))
        .on_task_terminate(|meta| on_terminate(meta.id()))
}
