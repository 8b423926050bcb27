//! The third-party executor integration of `examples/async_executor.rs` (async-executor,
//! written against `contextvars::plumbing` only), tested piece by piece.

use std::sync::{Arc, Mutex};

use async_executor::Executor;
use contextvars::{Context, ContextVar};

#[path = "../examples/async_executor.rs"]
#[allow(
    unreachable_pub,
    reason = "the example's public items, used here from outside"
)]
mod example;

use example::{POOL, REQUEST_ID, STAGE, SpawnInContext, with_workers};

#[test]
fn every_task_sees_only_its_own_values() {
    let requests = if cfg!(miri) { 20 } else { 2_000 };
    assert_eq!(example::run(requests, 2), Ok(requests));
}

#[test]
fn a_tasks_sets_stay_in_the_task() {
    Context::new().run(|| {
        let _id = REQUEST_ID.set(1);
        let executor = Executor::new();
        let task = executor.spawn_in_copied_context(async {
            let inherited = REQUEST_ID.get();
            drop(REQUEST_ID.set(2));
            futures_lite::future::yield_now().await;
            (inherited, REQUEST_ID.get())
        });
        // Set after the spawn: the task has its own copy.
        drop(STAGE.set(Arc::from("spawner")));
        let seen = futures_lite::future::block_on(executor.run(task));
        assert_eq!(seen, (1, 2));
        assert_eq!(
            REQUEST_ID.get(),
            1,
            "the task's set did not reach the spawner"
        );
        assert_eq!(&*STAGE.get(), "spawner");
    });
}

#[test]
fn a_plain_task_cannot_set_in_a_workers_own_context() {
    let executor = Executor::new();
    let refused = with_workers(&executor, 1, || {
        let task = executor.spawn(async { STAGE.try_set(Arc::from("leaked")).map(drop) });
        futures_lite::future::block_on(task)
    });
    let error = refused.expect_err("a worker's own context is read-only");
    assert_eq!(error.pool_name(), Some(POOL));
    // A wrapped task on the same worker sets freely.
    let executor = Executor::new();
    let set = with_workers(&executor, 1, || {
        let task = executor.spawn_in_copied_context(async {
            STAGE.try_set(Arc::from("own")).map(drop)?;
            Ok::<_, contextvars::SetError>(STAGE.get())
        });
        futures_lite::future::block_on(task)
    });
    assert_eq!(set.as_deref(), Ok("own"));
}

#[test]
fn an_unfinished_task_is_dropped_in_its_own_context() {
    /// Records what its destructor sees, and sets a value there.
    struct OnDrop(Arc<Mutex<Option<u64>>>);
    impl Drop for OnDrop {
        fn drop(&mut self) {
            *self.0.lock().unwrap() = REQUEST_ID.try_get().ok();
            drop(REQUEST_ID.set(99));
        }
    }
    Context::new().run(|| {
        let seen = Arc::new(Mutex::new(None));
        let _id = REQUEST_ID.set(7);
        let executor = Executor::new();
        let guard = OnDrop(seen.clone());
        let task = executor.spawn_in_copied_context(async move {
            let _guard = guard;
            std::future::pending::<()>().await;
        });
        // Polled once (it waits forever), then cancelled: the future is dropped.
        assert!(executor.try_tick());
        futures_lite::future::block_on(executor.run(task.cancel()));
        assert_eq!(
            *seen.lock().unwrap(),
            Some(7),
            "the destructor saw the task's value"
        );
        assert_eq!(REQUEST_ID.get(), 7, "its set stayed in the task");
    });
}

#[test]
fn tasks_polled_in_turn_on_one_thread_do_not_see_each_other() {
    static ORDER: ContextVar<u32> = contextvars::context_var!(u32, "order");
    let executor = Executor::new();
    let tasks: Vec<_> = (0..8)
        .map(|n| {
            Context::new().run(|| {
                let _n = ORDER.set(n);
                executor.spawn_in_copied_context(async move {
                    for round in 0..4 {
                        assert_eq!(ORDER.get(), n + round * 100, "task {n}, round {round}");
                        drop(ORDER.set(n + (round + 1) * 100));
                        futures_lite::future::yield_now().await;
                    }
                })
            })
        })
        .collect();
    futures_lite::future::block_on(executor.run(async {
        for task in tasks {
            task.await;
        }
    }));
    assert!(ORDER.try_get().is_err(), "nothing reached this thread");
}
