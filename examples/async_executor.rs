//! contextvars on an executor it does not know, integrated from outside with nothing but
//! [`contextvars::plumbing`]: `async-executor` (smol's executor).
//!
//! Three pieces make an executor's tasks behave like asyncio tasks:
//!
//! * [`InTaskContext`]: a future wrapper over a [`TaskFrame`] captured at spawn time;
//!   each poll runs inside it ([`TaskFrame::enter`]), and the future is dropped inside it
//!   ([`TaskFrame::end_pinned`]), so its destructors see the task's values;
//! * [`SpawnInContext::spawn_in_copied_context`]: `Executor::spawn` of a wrapped future;
//! * [`with_workers`]: worker threads that declare themselves threads of a pool
//!   ([`declare_pool_thread`]), so a *plain* `spawn`ed task that sets a variable is
//!   refused there instead of leaving its value to the next task on that thread.
//!
//! `InTaskContext` is what `contextvars::future::WithContext` already is: a program would
//! write `executor.spawn(future.in_copied_context())`. It is written out here to show
//! that an integration needs nothing of the crate but `plumbing` (the same holds for an
//! executor or pool with no future to wrap: a job is a [`TaskFrame::run`]).
//!
//! `cargo run --example async_executor` serves 10,000 "requests" on two worker threads
//! and checks that every task saw only its own values; `tests/async_executor.rs` tests
//! the same pieces one by one.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll, Waker};

use async_executor::{Executor, Task};
use contextvars::ContextVar;
use contextvars::plumbing::TaskFrame;
use contextvars::thread::declare_pool_thread;
use pin_project_lite::pin_project;

pin_project! {
    /// A future whose every poll, and whose drop, runs in the context captured when it
    /// was made: a copy of the spawner's context, its own from then on.
    #[must_use = "futures do nothing unless polled"]
    pub struct InTaskContext<F> {
        #[pin]
        future: Option<F>,
        frame: TaskFrame,
    }

    impl<F> PinnedDrop for InTaskContext<F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            // The future's destructors see the task's values, and a set in one stays in
            // the task; then the task's context is released where no one sees it.
            this.frame.end_pinned(this.future);
        }
    }
}

impl<F> InTaskContext<F> {
    /// `future` in a copy of the current context.
    pub fn new(future: F) -> Self {
        Self {
            future: Some(future),
            frame: TaskFrame::capture_task(),
        }
    }
}

impl<F: Future> Future for InTaskContext<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<F::Output> {
        let this = self.project();
        let future = this
            .future
            .as_pin_mut()
            .expect("the future lives as long as the wrapper");
        this.frame.enter(|| future.poll(cx))
    }
}

/// `spawn` in a copy of the current context, for `async_executor::Executor`.
pub trait SpawnInContext<'a> {
    /// Spawns `future` in a copy of the context current now: it sees the spawner's
    /// values, and its sets stay in it across every `.await` and worker thread.
    fn spawn_in_copied_context<T: Send + 'a>(
        &self,
        future: impl Future<Output = T> + Send + 'a,
    ) -> Task<T>;
}

impl<'a> SpawnInContext<'a> for Executor<'a> {
    fn spawn_in_copied_context<T: Send + 'a>(
        &self,
        future: impl Future<Output = T> + Send + 'a,
    ) -> Task<T> {
        self.spawn(InTaskContext::new(future))
    }
}

/// The name the worker threads declare ([`declare_pool_thread`]).
pub const POOL: &str = "async-executor";

/// Runs `main` on this thread while `threads` worker threads run `executor`'s tasks; the
/// workers stop when `main` returns. Each worker declares itself a thread of [`POOL`], so
/// its own context is read-only: a plain `spawn`ed task's set is refused there.
pub fn with_workers<T>(executor: &Executor<'_>, threads: usize, main: impl FnOnce() -> T) -> T {
    let stop = Stop::default();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                declare_pool_thread(POOL);
                futures_lite::future::block_on(executor.run(stop.wait()));
            });
        }
        // Stops the workers also if `main` panics (the scope joins them before it
        // unwinds further).
        struct StopOnExit<'a>(&'a Stop);
        impl Drop for StopOnExit<'_> {
            fn drop(&mut self) {
                self.0.stop();
            }
        }
        let _stop = StopOnExit(&stop);
        main()
    })
}

/// A stop signal the workers wait on.
#[derive(Default)]
struct Stop {
    stopped: AtomicBool,
    wakers: Mutex<Vec<Waker>>,
}

impl Stop {
    fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        for waker in self.wakers.lock().unwrap().drain(..) {
            waker.wake();
        }
    }

    async fn wait(&self) {
        std::future::poll_fn(|cx| {
            let mut wakers = self.wakers.lock().unwrap();
            // Checked under the lock `stop` takes to wake: no wake-up is lost.
            if self.stopped.load(Ordering::Acquire) {
                return Poll::Ready(());
            }
            wakers.push(cx.waker().clone());
            Poll::Pending
        })
        .await;
    }
}

contextvars::context_var! {
    /// The request a task serves.
    pub static REQUEST_ID: u64;
}

/// What the task is doing, set inside it.
pub static STAGE: ContextVar<Arc<str>> = contextvars::context_var!(Arc<str>, "stage");

/// Serves `requests` requests on `threads` workers, each a task spawned in a context that
/// binds its request id; each task sets a stage of its own, yields (so tasks interleave
/// and move between workers), and checks what it sees. Returns the number of requests
/// whose every check passed, or the first mismatch.
pub fn run(requests: u64, threads: usize) -> Result<u64, String> {
    let executor = Executor::new();
    let tasks: Vec<Task<Result<(), String>>> = (0..requests)
        .map(|id| {
            let _id = REQUEST_ID.scoped_set(id);
            executor.spawn_in_copied_context(serve(id))
        })
        .collect();
    with_workers(&executor, threads, || {
        futures_lite::future::block_on(async {
            for task in tasks {
                task.await?;
            }
            Ok(requests)
        })
    })
}

/// One request's task.
async fn serve(id: u64) -> Result<(), String> {
    let check = |when: &str, stage: Option<&str>| {
        let seen = (REQUEST_ID.try_get().ok(), STAGE.try_get().ok());
        let expected = (Some(id), stage.map(Arc::from));
        if seen == expected {
            Ok(())
        } else {
            Err(format!("request {id} {when}: saw {seen:?}"))
        }
    };
    check("at the start", None)?;
    let stage = format!("{id}/parsed");
    drop(STAGE.set(Arc::from(stage.as_str())));
    futures_lite::future::yield_now().await;
    check("after a yield", Some(&stage))?;
    let stage = format!("{id}/answered");
    drop(STAGE.set(Arc::from(stage.as_str())));
    futures_lite::future::yield_now().await;
    check("after a second yield", Some(&stage))
}

#[allow(
    dead_code,
    reason = "a module of tests/async_executor.rs too, which has its own"
)]
fn main() {
    match run(10_000, 2) {
        Ok(served) => println!("async-executor: {served} requests, each saw only its own values"),
        Err(mismatch) => {
            eprintln!("async-executor: {mismatch}");
            std::process::exit(1);
        }
    }
}
