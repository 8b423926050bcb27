//! Every tokio task in a context of its own through the runtime's task hooks
//! (`contextvars::tokio::isolate_tasks`, `--cfg tokio_unstable`): plain
//! `tokio::spawn` behaves like an asyncio task.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use contextvars::{Context, ContextVar};

static ID: ContextVar<u64> = ContextVar::new("id");
static TRACKED: ContextVar<Tracked> = ContextVar::new("tracked");

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
    assert_eq!(ctx.get(&ID), Some(1));
    assert!(!ID.is_set());
}

// ---- a replaced after-poll hook: memory-safe, context left once ----

static SEEN: ContextVar<u64> = ContextVar::with_default("seen", 0);

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
    assert_eq!(ctx.get(&SEEN), Some(1));
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

/// Runs the test `name` of this binary alone in a child process with `switch` set (a
/// fresh process: the crate's once-per-process notes and its layer flag start unset),
/// checks that it succeeded, and returns what it printed to stderr.
fn stderr_of_child(name: &str, switch: &str) -> String {
    let output = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(switch, "1")
        .output()
        .expect("child");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stderr).into_owned()
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
    let stderr = stderr_of_child("hooks::note_scenario_child", NOTE_SCENARIO);
    let note = "contextvars: a task of a runtime with `contextvars::tokio::isolate_tasks` set";
    assert_eq!(stderr.matches(note).count(), 1, "{stderr}");
    for needle in ["keep-alive", "add `ContextLayer`", "printed once"] {
        assert!(stderr.contains(needle), "{needle:?} missing from: {stderr}");
    }
}

// ---- a connection task that calls the tower layer: restored after every request ----

#[cfg(feature = "tower")]
mod connection {
    use std::convert::Infallible;
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context as TaskContext, Poll};

    use contextvars::ContextVar;
    use contextvars::tower::{ContextLayer, Layer, Service};

    use super::runtime;

    static TENANT: ContextVar<String> = ContextVar::with_default("tenant", String::new());

    /// Sets `closed:<tenant>` when dropped: a destructor that sets.
    struct SetsOnDrop;

    impl Drop for SetsOnDrop {
        fn drop(&mut self) {
            let _ = TENANT.try_set(format!("closed:{}", TENANT.get())).map(drop);
        }
    }

    /// Answers with the tenant it sees, fails for `/err`, never answers for `/pending`;
    /// every request's context holds a value whose destructor sets.
    #[derive(Clone)]
    struct Inner;

    static DROPS_IN_REQUEST: ContextVar<std::sync::Arc<SetsOnDrop>> =
        ContextVar::new("drops_in_request");

    impl Service<http::Request<()>> for Inner {
        type Response = http::Response<String>;
        type Error = &'static str;
        type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

        fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: http::Request<()>) -> Self::Future {
            drop(DROPS_IN_REQUEST.set(std::sync::Arc::new(SetsOnDrop)));
            let path = request.uri().path().to_owned();
            Box::pin(async move {
                match path.as_str() {
                    "/err" => Err("failed"),
                    "/pending" => std::future::pending().await,
                    _ => Ok(http::Response::new(TENANT.get())),
                }
            })
        }
    }

    /// One "connection": a task that, like a middleware outside the layer, sets the
    /// tenant before each request and reads it after each; returns what each request's
    /// handler and the middleware's next request saw.
    async fn connection(paths: &[&'static str]) -> Vec<(String, String)> {
        let mut service = ContextLayer::new().layer(Inner);
        let mut seen = Vec::new();
        for (i, path) in paths.iter().enumerate() {
            let before = TENANT.get(); // what this request's middleware sees first
            drop(TENANT.set(format!("t{i}")));
            let request = http::Request::builder().uri(*path).body(()).unwrap();
            let future = service.call(request);
            let answer = match *path {
                "/pending" => {
                    // Cancelled: polled once, then dropped without an answer.
                    let mut future = Box::pin(future);
                    let polled = std::future::poll_fn(|cx| {
                        Poll::Ready(future.as_mut().poll(cx).is_pending())
                    })
                    .await;
                    assert!(polled);
                    drop(future);
                    "cancelled".to_owned()
                }
                _ => match future.await {
                    Ok(response) => {
                        let body = response.into_body();
                        let text = http_body_util_text(&body);
                        drop(body);
                        text
                    }
                    Err(error) => error.to_owned(),
                },
            };
            seen.push((before, answer));
        }
        seen.push((TENANT.get(), String::new()));
        seen
    }

    fn http_body_util_text(body: &contextvars::tower::ContextBody<String>) -> String {
        body.get_ref().clone()
    }

    const OUTSIDE_SCENARIO: &str = "CONTEXTVARS_TEST_OUTSIDE_LAYER_SCENARIO";

    /// The child's half of [`a_set_outside_the_layer_is_noted_once`].
    #[test]
    fn outside_scenario_child() {
        if std::env::var_os(OUTSIDE_SCENARIO).is_none() {
            return;
        }
        let rt = runtime(true);
        rt.block_on(async {
            for _ in 0..4 {
                tokio::spawn(connection(&["/", "/"])).await.unwrap();
            }
        });
    }

    /// Under the hooks a middleware outside the layer that sets is restored after each
    /// request, not refused; the crate says once that a request answered without the
    /// layer would keep its values, and how to order the layer.
    #[test]
    #[cfg_attr(miri, ignore)] // starts a process
    fn a_set_outside_the_layer_is_noted_once() {
        let stderr = super::stderr_of_child(
            "hooks::connection::outside_scenario_child",
            OUTSIDE_SCENARIO,
        );
        let note = "contextvars: code outside `contextvars::tower::ContextLayer`";
        assert_eq!(stderr.matches(note).count(), 1, "{stderr}");
        assert!(stderr.contains("Add the context layer last"), "{stderr}");
        // A layer served requests: the note about hooks without any layer stays silent.
        assert!(
            !stderr.contains("no `contextvars::tower::ContextLayer` has served"),
            "{stderr}"
        );
    }

    #[test]
    fn a_connection_task_is_restored_after_every_kind_of_request_end() {
        let _: Option<Infallible> = None;
        let rt = runtime(true);
        let seen = rt.block_on(async {
            tokio::spawn(connection(&["/", "/err", "/pending", "/", "/"]))
                .await
                .unwrap()
        });
        // Each request's middleware starts from the connection's own (empty) value: not the
        // previous request's tenant, not a destructor's `closed:..`.
        let expected = [
            ("", "t0"),
            ("", "failed"),
            ("", "cancelled"),
            ("", "t3"),
            ("", "t4"),
            ("", ""),
        ];
        let seen: Vec<(&str, &str)> = seen.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        assert_eq!(seen, expected);
    }
}
