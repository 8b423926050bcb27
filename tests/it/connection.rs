//! A connection task that calls the tower layer, with a "middleware outside the layer"
//! that sets before each request: when each request ends (its body dropped, its future
//! failed or dropped unanswered), the layer gives the task back the bindings it started
//! with. Covered for every task that has a context of its own: one wrapped with
//! `in_copied_context`, `in_context` or `scope_future` (every build), and under the task
//! hooks a plain `tokio::spawn` (`--cfg tokio_unstable`, feature `tokio`).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use contextvars::ContextVar;
use contextvars::future::ContextFutureExt;
use contextvars_tower::{ContextLayer, Layer, Service};

static TENANT: ContextVar<String> =
    contextvars::context_var!(String, "tenant", default String::new());
static PEER: ContextVar<u32> = contextvars::context_var!(u32, "peer");

/// Sets `closed:<tenant>` when dropped: a destructor that sets.
struct SetsOnDrop;

impl Drop for SetsOnDrop {
    fn drop(&mut self) {
        let _ = TENANT.try_set(format!("closed:{}", TENANT.get())).map(drop);
    }
}

static DROPS_IN_REQUEST: ContextVar<std::sync::Arc<SetsOnDrop>> =
    contextvars::context_var!(std::sync::Arc<SetsOnDrop>, "drops_in_request");

/// Answers with the tenant it sees, fails for `/err`, never answers for `/pending`;
/// every request's context holds a value whose destructor sets.
#[derive(Clone)]
struct Inner;

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

/// How the connection task gets a context of its own.
#[derive(Clone, Copy, Debug)]
enum Task {
    /// `tokio::spawn(connection.in_copied_context())` on a plain runtime.
    Wrapped,
    /// `tokio::spawn(connection.in_context(&copy_context()))`: the task runs a context
    /// object, entered for the task's life.
    WrappedInObject,
    /// `tokio::spawn(PEER.scope_future(1, connection))`: the task is a scope's future.
    ScopeFuture,
    /// A plain `tokio::spawn` on a runtime with the task hooks.
    #[cfg(all(feature = "tokio", tokio_unstable))]
    Hooks,
    /// `in_copied_context` on a runtime with the task hooks (the wrapper's frame runs
    /// inside the hooks' one).
    #[cfg(all(feature = "tokio", tokio_unstable))]
    WrappedUnderHooks,
}

const TASKS: &[Task] = &[
    Task::Wrapped,
    Task::WrappedInObject,
    Task::ScopeFuture,
    #[cfg(all(feature = "tokio", tokio_unstable))]
    Task::Hooks,
    #[cfg(all(feature = "tokio", tokio_unstable))]
    Task::WrappedUnderHooks,
];

/// Runs `connection` as a task of the kind `task`, spawned from a context where the
/// tenant is `start`, and returns its output.
fn serve<T: Send + 'static>(
    task: Task,
    start: &str,
    connection: impl Future<Output = T> + Send + 'static,
) -> T {
    // Under miri a current-thread runtime: the restore is the same, and miri's cost of
    // starting and parking worker threads is not what these tests check.
    let mut builder = if cfg!(miri) {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(2);
        builder
    };
    #[cfg(all(feature = "tokio", tokio_unstable))]
    if !matches!(
        task,
        Task::Wrapped | Task::WrappedInObject | Task::ScopeFuture
    ) {
        contextvars::tokio::isolate_tasks(&mut builder);
    }
    let rt = builder.build().expect("runtime");
    let start = start.to_owned();
    rt.block_on(async move {
        let handle = TENANT.scope(start, || match task {
            Task::Wrapped => tokio::spawn(connection.in_copied_context()),
            Task::WrappedInObject => {
                tokio::spawn(connection.in_context(&contextvars::copy_context()))
            }
            Task::ScopeFuture => tokio::spawn(PEER.scope_future(1, connection)),
            #[cfg(all(feature = "tokio", tokio_unstable))]
            Task::Hooks => tokio::spawn(connection),
            #[cfg(all(feature = "tokio", tokio_unstable))]
            Task::WrappedUnderHooks => tokio::spawn(connection.in_copied_context()),
        });
        handle.await.expect("connection task")
    })
}

/// One "connection": like a middleware outside the layer, it sets the tenant before
/// each request; returns, per request, what the middleware saw first and what the
/// handler answered, then what the task sees at the end.
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
                let polled =
                    std::future::poll_fn(|cx| Poll::Ready(future.as_mut().poll(cx).is_pending()))
                        .await;
                assert!(polled);
                drop(future);
                "cancelled".to_owned()
            }
            _ => match future.await {
                Ok(response) => {
                    let body = response.into_body();
                    let text = body.get_ref().clone();
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

#[test]
fn a_connection_task_is_restored_after_every_kind_of_request_end() {
    for &task in TASKS {
        let seen = serve(task, "", connection(&["/", "/err", "/pending", "/", "/"]));
        // Each request's middleware starts from the connection's own (empty) value: not
        // the previous request's tenant, not a destructor's `closed:..`.
        let expected = [
            ("", "t0"),
            ("", "failed"),
            ("", "cancelled"),
            ("", "t3"),
            ("", "t4"),
            ("", ""),
        ];
        let seen: Vec<(&str, &str)> = seen.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        assert_eq!(seen, expected, "{task:?}");
    }
}

/// What the task got from its spawner is what it gets back: the value the accept loop
/// bound before spawning the connection is seen by every request.
#[test]
fn the_spawners_values_are_what_the_task_gets_back() {
    for &task in TASKS {
        let seen = serve(task, "conn", connection(&["/", "/", "/err"]));
        let firsts: Vec<&str> = seen.iter().map(|(first, _)| first.as_str()).collect();
        assert_eq!(firsts, ["conn", "conn", "conn", "conn"], "{task:?}");
    }
}

/// The documented contract: the task gets back the bindings it *started* with, so a
/// value the task set itself before its first request is gone after that request. A
/// connection-wide value belongs in the context the task is spawned from.
#[test]
fn a_set_in_the_task_before_its_first_request_is_not_kept() {
    for &task in TASKS {
        let seen = serve(task, "", async {
            drop(TENANT.set("set-by-the-task".to_owned()));
            connection(&["/", "/"]).await
        });
        let firsts: Vec<&str> = seen.iter().map(|(first, _)| first.as_str()).collect();
        assert_eq!(firsts, ["set-by-the-task", "", ""], "{task:?}");
    }
}

/// A token the task made before a restore stays valid after it, and its reset leaves
/// the starting value.
#[test]
fn a_token_from_before_the_restore_still_resets() {
    for &task in TASKS {
        let after = serve(task, "start", async {
            // A token is not `Send`: the request is answered within this poll.
            let mut service = ContextLayer::new().layer(Inner);
            let token = TENANT.set("outside".to_owned());
            let request = http::Request::builder().uri("/").body(()).unwrap();
            let mut future = std::pin::pin!(service.call(request));
            let mut cx = TaskContext::from_waker(std::task::Waker::noop());
            let Poll::Ready(Ok(response)) = future.as_mut().poll(&mut cx) else {
                panic!("the inner service answers at once");
            };
            let answered = response.body().get_ref().clone();
            drop(response); // the request ends: the task is restored
            let restored = TENANT.get();
            TENANT
                .reset(token)
                .expect("the token resets after the restore");
            (answered, restored, TENANT.get())
        });
        let expected = ("outside".to_owned(), "start".to_owned(), "start".to_owned());
        assert_eq!(after, expected, "{task:?}");
    }
}

/// A request whose body is dropped inside a frame the task entered (a `Context::run`)
/// leaves that frame alone; the task is restored when the run ends and the task's frame
/// is current again.
#[test]
fn a_body_dropped_inside_a_run_restores_the_task_after_it() {
    for &task in TASKS {
        let seen = serve(task, "", async {
            let mut service = ContextLayer::new().layer(Inner);
            drop(TENANT.set("outside".to_owned()));
            let request = http::Request::builder().uri("/").body(()).unwrap();
            let response = service.call(request).await.expect("response");
            let ctx = contextvars::Context::new().with_value(&TENANT, "run".to_owned());
            let in_run = ctx.run(move || {
                // A set first: the run's frame materializes before the body ends.
                drop(PEER.set(2));
                drop(response);
                TENANT.get()
            });
            (in_run, ctx.snapshot().get(&TENANT).cloned(), TENANT.get())
        });
        let expected = ("run".to_owned(), Some("run".to_owned()), String::new());
        assert_eq!(seen, expected, "{task:?}");
    }
}

const OUTSIDE_SCENARIO: &str = "CONTEXTVARS_TEST_OUTSIDE_LAYER_SCENARIO";

/// The child's half of [`a_set_outside_the_layer_is_noted_once`].
#[test]
fn outside_scenario_child() {
    if std::env::var_os(OUTSIDE_SCENARIO).is_none() {
        return;
    }
    for &task in TASKS {
        for _ in 0..4 {
            serve(task, "", connection(&["/", "/"]));
        }
    }
}

/// A middleware outside the layer that sets is restored after each request, not
/// refused, in a connection task with a context of its own; the crate says once that a
/// request answered without the layer would keep its values, and how to order the
/// layer.
#[test]
#[cfg_attr(miri, ignore)] // starts a process
fn a_set_outside_the_layer_is_noted_once() {
    let stderr = crate::stderr_of_child("connection::outside_scenario_child", OUTSIDE_SCENARIO);
    let note = "contextvars: code outside `contextvars_tower::ContextLayer`";
    assert_eq!(stderr.matches(note).count(), 1, "{stderr}");
    assert!(stderr.contains("Add the context layer last"), "{stderr}");
    // A layer served requests: the note about hooks without any layer stays silent.
    assert!(
        !stderr.contains("no `contextvars_tower::ContextLayer` has served"),
        "{stderr}"
    );
}

/// A middleware's own scoped future around the layer's call is a frame with a start of
/// its own, like a task's: when the request ends (here it fails), the layer gives it back
/// the bindings it started with. Its scoped value stays; a plain set made in it before
/// the call, for this request, is gone, as it would be in the connection task's frame.
#[test]
fn a_scoped_future_around_the_call_is_restored_to_its_start() {
    static USER: ContextVar<&'static str> =
        contextvars::context_var!(&'static str, "user", default "");
    for &task in TASKS {
        let after = serve(task, "", async {
            let mut service = ContextLayer::new().layer(Inner);
            USER.scope_future("u1", async move {
                drop(TENANT.set("outside".to_owned()));
                let request = http::Request::builder().uri("/err").body(()).unwrap();
                let failed = service.call(request).await.is_err();
                (failed, USER.get(), TENANT.get())
            })
            .await
        });
        assert_eq!(after, (true, "u1", String::new()), "{task:?}");
    }
}

/// A middleware that sets in the connection task, then awaits the layer's future inside
/// a scoped future of its own made *after* the call: the request's future ends inside
/// the scope's frame, not the task's. The task is restored as soon as it is current
/// again (when the scope's poll returns), so no request sees the one before it, also
/// after a failed request (which has no body to restore it later).
#[test]
fn a_call_awaited_inside_a_later_scope_restores_the_task() {
    static USER: ContextVar<&'static str> =
        contextvars::context_var!(&'static str, "user", default "");
    for &task in TASKS {
        let seen = serve(task, "", async {
            let mut service = ContextLayer::new().layer(Inner);
            let mut seen = Vec::new();
            for (i, path) in ["/", "/", "/err", "/", "/pending", "/"]
                .into_iter()
                .enumerate()
            {
                seen.push(TENANT.get());
                drop(TENANT.set(format!("t{i}")));
                let request = http::Request::builder().uri(path).body(()).unwrap();
                let call = service.call(request);
                let mut scoped = std::pin::pin!(USER.scope_future("u", call));
                // `/pending` never answers: polled once, then dropped unanswered.
                let answer = std::future::poll_fn(|cx| match path {
                    "/pending" => Poll::Ready(scoped.as_mut().poll(cx).map(|_| ()).is_ready()),
                    _ => scoped.as_mut().poll(cx).map(|result| result.is_ok()),
                })
                .await;
                assert_eq!(answer, !matches!(path, "/err" | "/pending"), "{path}");
            }
            seen.push(TENANT.get());
            seen
        });
        assert_eq!(seen, ["", "", "", "", "", "", ""], "{task:?}");
    }
}

/// A middleware that sets in the connection task, then calls the layer *inside* a
/// scoped future of its own: the layer records both frames. A failed request ends in
/// the scope (restored now) and the task is restored when the scope's poll returns; a
/// successful one's body, dropped in the task, restores the task.
#[test]
fn a_call_made_inside_a_scope_restores_the_task_too() {
    static USER: ContextVar<&'static str> =
        contextvars::context_var!(&'static str, "user", default "");
    for &task in TASKS {
        let seen = serve(task, "", async {
            let mut service = ContextLayer::new().layer(Inner);
            let mut seen = Vec::new();
            for (i, path) in ["/", "/err", "/", "/err", "/", "/", "/err", "/err"]
                .into_iter()
                .enumerate()
            {
                seen.push(TENANT.get());
                drop(TENANT.set(format!("t{i}")));
                let request = http::Request::builder().uri(path).body(()).unwrap();
                let response = USER
                    .scope_future("u", async {
                        let in_scope = (USER.get(), TENANT.get());
                        // Every other request, a set in the scope first (it materializes
                        // the scope's frame).
                        if i % 2 == 1 {
                            drop(USER.set("set in the scope"));
                        }
                        (service.call(request).await.ok(), in_scope)
                    })
                    .await;
                assert_eq!(response.1, ("u", format!("t{i}")));
                drop(response);
            }
            seen.push(TENANT.get());
            seen
        });
        assert_eq!(seen, ["", "", "", "", "", "", "", "", ""], "{task:?}");
    }
}

/// A context object the handler takes (`Context::current`) is left when the handler's
/// future ends, not when the response body is dropped: a streaming body does not keep
/// it entered.
#[test]
fn a_handlers_context_object_is_free_once_the_response_is_made() {
    use std::sync::{Arc, Mutex};

    #[derive(Clone)]
    struct KeepsContext(Arc<Mutex<Option<contextvars::Context>>>);

    impl Service<http::Request<()>> for KeepsContext {
        type Response = http::Response<String>;
        type Error = &'static str;
        type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

        fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            drop(TENANT.set("handler".to_owned()));
            *self.0.lock().unwrap() = Some(contextvars::Context::current());
            std::future::ready(Ok(http::Response::new(String::new())))
        }
    }

    let slot = Arc::new(Mutex::new(None));
    let mut service = ContextLayer::new().layer(KeepsContext(slot.clone()));
    let request = http::Request::builder().uri("/").body(()).unwrap();
    let mut future = std::pin::pin!(service.call(request));
    let mut cx = TaskContext::from_waker(std::task::Waker::noop());
    let Poll::Ready(Ok(response)) = future.as_mut().poll(&mut cx) else {
        panic!("the service answers at once");
    };
    let ctx = slot.lock().unwrap().take().expect("the handler ran");
    // The body is alive (a stream still being sent), and the handler's context is free.
    let seen = ctx.try_run(|| TENANT.get()).expect("not entered any more");
    assert_eq!(seen, "handler");
    drop(response);
}
