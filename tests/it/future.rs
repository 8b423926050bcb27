//! The future wrapper: every poll runs in the task's own context, and nothing leaks
//! between tasks or to the spawner.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context as TaskContext, Poll};

use contextvars::future::ContextFutureExt;
use contextvars::{Context, ContextVar};

use crate::{isolated, iterations};

static TASK: ContextVar<u64> = contextvars::context_var!(u64, "task");

fn block_on<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

/// Yields once: returns `Pending` the first time it is polled (waking itself).
struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<()> {
        if self.0 {
            Poll::Ready(())
        } else {
            self.0 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

fn yield_now() -> YieldOnce {
    YieldOnce(false)
}

#[test]
fn captures_at_creation_and_keeps_sets_inside() {
    isolated(|| {
        let token = TASK.set(1);
        let task = async {
            assert_eq!(TASK.get(), 1);
            let _inner = TASK.set(2);
            yield_now().await;
            assert_eq!(TASK.get(), 2, "a set did not survive an await");
            TASK.get()
        }
        .in_copied_context();
        TASK.reset(token).unwrap();
        assert_eq!(block_on(task), 2);
        assert!(!TASK.is_set(), "the task's set leaked to the spawner");
    });
}

#[test]
fn interleaved_tasks_never_see_each_other() {
    isolated(|| {
        let rounds = iterations(50);
        let checks = std::rc::Rc::new(AtomicUsize::new(0));
        let local = tokio::task::LocalSet::new();
        for id in 0..iterations(200) as u64 {
            let checks = checks.clone();
            // A value set before the wrapper is made, then others inside, across awaits.
            let _token = TASK.set(id);
            let task = async move {
                assert_eq!(TASK.get(), id);
                for round in 0..rounds as u64 {
                    let _token = TASK.set(id * 1_000 + round);
                    yield_now().await;
                    assert_eq!(TASK.get(), id * 1_000 + round);
                    checks.fetch_add(1, Ordering::Relaxed);
                }
            }
            .in_copied_context();
            local.spawn_local(task);
        }
        block_on(local);
        assert_eq!(checks.load(Ordering::Relaxed), iterations(200) * rounds);
    });
}

#[test]
fn token_across_await_in_a_local_task_resets_in_the_task() {
    isolated(|| {
        let local = tokio::task::LocalSet::new();
        let _outer = TASK.set(100);
        local.spawn_local(
            async {
                let token = TASK.set(1);
                yield_now().await; // other tasks run and set their own values
                assert_eq!(TASK.get(), 1);
                TASK.reset(token).unwrap();
                assert_eq!(TASK.get(), 100);
            }
            .in_copied_context(),
        );
        local.spawn_local(
            async {
                let token = TASK.set(2);
                yield_now().await;
                TASK.reset(token).unwrap();
            }
            .in_copied_context(),
        );
        block_on(local);
        assert_eq!(TASK.get(), 100);
    });
}

#[test]
fn in_context_writes_to_the_object_and_holds_it_entered() {
    isolated(|| {
        let ctx = Context::new();
        let task = async {
            drop(TASK.set(5));
            yield_now().await;
            drop(TASK.set(6));
        }
        .in_context(&ctx);
        let second = async {}.try_in_context(&ctx);
        assert!(second.unwrap_err().is_already_entered());
        assert!(ctx.try_run(|| ()).is_err());
        block_on(task); // the wrapper is consumed and dropped: the context is left
        assert_eq!(ctx.snapshot().get(&TASK).cloned(), Some(6));
        assert_eq!(ctx.run(|| TASK.get()), 6);
        // A wrapper dropped unpolled leaves the context too.
        drop(async {}.in_context(&ctx));
        ctx.run(|| ());
    });
}

#[test]
fn inner_future_is_dropped_inside_the_context() {
    struct ReadsOnDrop<'a>(&'a AtomicUsize);
    impl Drop for ReadsOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(TASK.get_or(0) as usize, Ordering::Relaxed);
        }
    }
    isolated(|| {
        let seen = AtomicUsize::new(0);
        let _token = TASK.set(9);
        let guard = ReadsOnDrop(&seen);
        let task = async move {
            let _keep = guard;
            std::future::pending::<()>().await;
        }
        .in_copied_context();
        drop(_token);
        let _other = TASK.set(10);
        drop(task);
        assert_eq!(seen.load(Ordering::Relaxed), 9);
    });
}

#[test]
fn panic_in_poll_restores_the_thread() {
    isolated(|| {
        let _token = TASK.set(1);
        let task = async {
            drop(TASK.set(2));
            panic!("poll failed");
        }
        .in_copied_context();
        let message = crate::expect_panic(|| block_on(task));
        assert!(message.contains("poll failed"));
        assert_eq!(TASK.get(), 1);
    });
}

#[test]
fn wrapper_is_send_when_the_future_is() {
    fn assert_send<T: Send>(_: &T) {}
    let task = async {}.in_copied_context();
    assert_send(&task);
    assert!(format!("{task:?}").starts_with("WithContext"));
}

/// Sets `TASK` to 999 when dropped: a destructor that sets.
struct SetsWhenDropped;

impl Drop for SetsWhenDropped {
    fn drop(&mut self) {
        let _ = TASK.try_set(999).map(drop);
    }
}

static HELD: ContextVar<std::sync::Arc<SetsWhenDropped>> =
    contextvars::context_var!(std::sync::Arc<SetsWhenDropped>, "held");

/// What a wrapped future's context held is released where no one sees what its
/// destructors do: a set in such a destructor reaches neither the code that drops the
/// future nor anything else.
#[test]
fn a_finished_task_s_values_are_released_in_a_frame_of_their_own() {
    isolated(|| {
        let _outer = TASK.set(1);
        let mut future = Box::pin(
            async {
                drop(HELD.set(std::sync::Arc::new(SetsWhenDropped)));
                TASK.get()
            }
            .in_copied_context(),
        );
        let waker = std::task::Waker::noop();
        let seen = future.as_mut().poll(&mut TaskContext::from_waker(waker));
        assert_eq!(seen, Poll::Ready(1));
        // The task's context is the last owner of its value: dropping the wrapper drops it.
        drop(future);
        assert_eq!(TASK.get(), 1, "a destructor's set reached the dropper");
    });
}
