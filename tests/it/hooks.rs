//! Every tokio task in a context of its own through the runtime's task hooks
//! (`contextvars::tokio::isolate_tasks`, `--cfg tokio_unstable`): plain
//! `tokio::spawn` behaves like an asyncio task.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use contextvars::{Context, ContextVar};

static ID: ContextVar<u64> = contextvars::context_var!(u64, "id");
static TRACKED: ContextVar<Tracked> = contextvars::context_var!(Tracked, "tracked");

/// Counts its drops: a task's frame releases its values when the task ends.
struct Tracked(Arc<AtomicUsize>);

impl Drop for Tracked {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn runtime(multi_thread: bool) -> tokio::runtime::Runtime {
    let mut builder = if multi_thread {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(2);
        builder
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    contextvars::tokio::isolate_tasks(&mut builder);
    builder.enable_all().build().expect("runtime")
}

#[test]
fn plain_spawns_inherit_and_keep_their_sets() {
    for multi_thread in [true, false] {
        let rt = runtime(multi_thread);
        let seen = rt.block_on(async {
            let _guard = ID.scoped_set(1000);
            let mut tasks = Vec::new();
            for i in 0..200u64 {
                tasks.push(tokio::spawn(async move {
                    let inherited = ID.get();
                    drop(ID.set(i)); // the task's own context keeps it
                    tokio::task::yield_now().await;
                    let child = tokio::spawn(async { ID.get() }).await.unwrap();
                    tokio::task::yield_now().await;
                    (inherited, ID.get(), child)
                }));
            }
            let mut seen = Vec::new();
            for task in tasks {
                seen.push(task.await.unwrap());
            }
            (seen, ID.get())
        });
        let expected: Vec<_> = (0..200).map(|i| (1000, i, i)).collect();
        assert_eq!(seen.0, expected, "multi_thread: {multi_thread}");
        assert_eq!(seen.1, 1000);
        // A task spawned from a context without the value does not see it.
        let after = rt.block_on(async { tokio::spawn(async { ID.try_get().ok() }).await });
        assert_eq!(after.unwrap(), None);
        assert!(!ID.is_set());
    }
}

#[test]
fn a_task_frame_is_released_when_the_task_ends() {
    let rt = runtime(true);
    let drops = Arc::new(AtomicUsize::new(0));
    let counter = drops.clone();
    rt.block_on(async move {
        let handles: Vec<_> = (0..50)
            .map(|_| {
                let counter = counter.clone();
                tokio::spawn(async move {
                    drop(TRACKED.set(Tracked(counter)));
                    tokio::task::yield_now().await;
                })
            })
            .collect();
        for handle in handles {
            handle.await.unwrap();
        }
        // An aborted task's frame goes too.
        let counter = counter.clone();
        let (was_set, set) = tokio::sync::oneshot::channel();
        let aborted = tokio::spawn(async move {
            drop(TRACKED.set(Tracked(counter)));
            was_set.send(()).unwrap();
            std::future::pending::<()>().await;
        });
        set.await.unwrap();
        aborted.abort();
        assert!(aborted.await.unwrap_err().is_cancelled());
    });
    drop(rt);
    assert_eq!(drops.load(Ordering::SeqCst), 51, "task frames left behind");
}

#[test]
fn a_run_around_block_on_and_panicking_tasks() {
    // Tasks polled inside a `Context::run` (a current-thread runtime's block_on) still
    // get their own frames, and the run's context is intact afterwards.
    let rt = runtime(false);
    let ctx = Context::new();
    let seen = ctx.run(|| {
        drop(ID.set(1));
        rt.block_on(async {
            let panicked = tokio::spawn(async {
                drop(ID.set(2));
                panic!("injected task panic");
            })
            .await;
            assert!(panicked.unwrap_err().is_panic());
            let other = tokio::spawn(async { ID.get() }).await.unwrap();
            (other, ID.get())
        })
    });
    assert_eq!(seen, (1, 1));
    assert_eq!(ctx.snapshot().get(&ID).cloned(), Some(1));
    assert!(!ID.is_set());
}

// ---- a replaced after-poll hook: memory-safe, context left once ----

static SEEN: ContextVar<u64> = contextvars::context_var!(u64, "seen", default 0);

/// Runs a task on a runtime whose after-poll hook was replaced after `isolate_tasks`
/// (ordinary `Builder` use), so the task's frame is entered and never left, inside
/// `ctx.run`.
fn strand_a_task_frame_inside(ctx: &Context) {
    let mut builder = tokio::runtime::Builder::new_current_thread();
    contextvars::tokio::isolate_tasks(&mut builder);
    builder.on_after_task_poll(|_| {});
    let rt = builder.build().expect("runtime");
    ctx.run(|| {
        drop(SEEN.set(1));
        rt.block_on(async { tokio::spawn(async { drop(SEEN.set(2)) }).await.unwrap() });
        // The stranded task frame is current here: a wrong value, never a dangling one.
        assert_eq!(SEEN.get(), 2);
    });
}

#[test]
fn a_replaced_after_hook_cannot_leave_a_context_entered_twice() {
    let ctx = Arc::new(Context::new());
    let (ready, stranded) = std::sync::mpsc::channel();
    let (exit, may_exit) = std::sync::mpsc::channel::<()>();
    let thread = {
        let ctx = ctx.clone();
        std::thread::spawn(move || {
            strand_a_task_frame_inside(&ctx);
            // Back outside the run: the thread's own context, not the task's.
            assert_eq!(SEEN.get(), 0);
            ready.send(()).unwrap();
            may_exit.recv().unwrap();
        })
    };
    stranded.recv().unwrap();
    // The run's set reached the context object, and the object was left exactly once.
    assert_eq!(ctx.snapshot().get(&SEEN).cloned(), Some(1));
    let inside = Arc::new(std::sync::Barrier::new(2));
    let runner = {
        let (ctx, inside) = (ctx.clone(), inside.clone());
        std::thread::spawn(move || {
            ctx.run(|| {
                inside.wait(); // entered
                inside.wait(); // the other thread has exited meanwhile
                SEEN.get()
            })
        })
    };
    inside.wait();
    exit.send(()).unwrap();
    thread.join().unwrap(); // its teardown must not leave `ctx` a second time
    assert!(ctx.try_run(|| ()).is_err(), "entered twice");
    inside.wait();
    assert_eq!(runner.join().unwrap(), 1);
}

#[test]
fn a_replaced_after_hook_does_not_disable_the_leak_check() {
    std::thread::spawn(|| {
        strand_a_task_frame_inside(&Context::new());
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let refused = rt.block_on(async {
            tokio::spawn(async { SEEN.try_set(5).map(drop) })
                .await
                .unwrap()
        });
        assert!(refused.unwrap_err().is_pool_thread());
    })
    .join()
    .unwrap();
}

/// The environment variable that makes [`a_set_without_any_layer_is_noted_once`]'s child
/// run the scenario.
const NOTE_SCENARIO: &str = "CONTEXTVARS_TEST_NOTE_SCENARIO";

/// The child's half: tasks that set in their own contexts, no tower layer anywhere in the
/// process (a fresh process: the flag that records a layer is process-wide).
#[test]
fn note_scenario_child() {
    if std::env::var_os(NOTE_SCENARIO).is_none() {
        return;
    }
    let rt = runtime(true);
    rt.block_on(async {
        for i in 0..8 {
            tokio::spawn(async move { drop(ID.set(i)) }).await.unwrap();
        }
    });
}

/// Hooks without any layer cannot protect a keep-alive connection task's requests from
/// each other (the crate cannot tell a connection task), so the crate says so on stderr,
/// once per process, at the first set in a task's own context.
#[test]
#[cfg_attr(miri, ignore)] // starts a process
fn a_set_without_any_layer_is_noted_once() {
    let stderr = crate::stderr_of_child("hooks::note_scenario_child", NOTE_SCENARIO);
    let note = "contextvars: a task of a runtime with `contextvars::tokio::isolate_tasks` set";
    assert_eq!(stderr.matches(note).count(), 1, "{stderr}");
    for needle in ["keep-alive", "add `ContextLayer`", "printed once"] {
        assert!(stderr.contains(needle), "{needle:?} missing from: {stderr}");
    }
}
