//! The `tracing` span follows the work: every place the crate carries
//! a context also carries the span current at the capture, enters it around the child's
//! run, poll or job, and leaves it before returning, also on unwind.
//!
//! A test binary of its own, not a module of `tests/it`: events logged on rayon workers,
//! blocking threads and spawned threads reach only the *global* subscriber, which a
//! process can install once. Each event names its test in a `test` field, and each test
//! reads back only its own records.

#![cfg(all(feature = "rayon", feature = "tokio"))]

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread::ScopedJoinHandle;

use contextvars::future::ContextFutureExt;
use contextvars::rayon::{ParallelIteratorExt, ThreadPoolExt};
use contextvars::thread::{BuilderExt, ScopeExt};
use contextvars::tokio::JoinSetExt;
use contextvars::{Context, ContextVar};
use rayon::prelude::*;
use tracing::field::{Field, Visit};
use tracing::span::Id;
use tracing::{Event, Subscriber, info, info_span};
use tracing_subscriber::layer::{Context as LayerContext, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{Layer, Registry};

static USER: ContextVar<&str> = contextvars::context_var!(&'static str, "user", default "-");

/// What one event saw: the spans it sat in (root first) and the `user` variable.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Seen {
    spans: Vec<&'static str>,
    user: &'static str,
}

static RECORDS: Mutex<Vec<(String, Seen)>> = Mutex::new(Vec::new());

/// Records every event that has a `test` field.
struct Recorder;

struct TestField(Option<String>);

impl Visit for TestField {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "test" {
            self.0 = Some(value.to_owned());
        }
    }

    fn record_debug(&mut self, _: &Field, _: &dyn std::fmt::Debug) {}
}

/// Enters of a `reentry_check` span while it is already entered on the same thread.
static REENTERED: AtomicUsize = AtomicUsize::new(0);

std::thread_local! {
    /// How deep each span is entered on this thread, by id.
    static DEPTH: std::cell::RefCell<HashMap<u64, usize>> = std::cell::RefCell::default();
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Recorder {
    fn on_enter(&self, id: &Id, ctx: LayerContext<'_, S>) {
        let depth = DEPTH.with(|depth| {
            let mut depth = depth.borrow_mut();
            let entry = depth.entry(id.into_u64()).or_default();
            *entry += 1;
            *entry
        });
        let checked = ctx
            .span(id)
            .is_some_and(|span| span.name() == "reentry_check");
        if depth > 1 && checked {
            REENTERED.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn on_exit(&self, id: &Id, _: LayerContext<'_, S>) {
        DEPTH.with(|depth| {
            if let Some(entry) = depth.borrow_mut().get_mut(&id.into_u64()) {
                *entry -= 1;
            }
        });
    }

    fn on_event(&self, event: &Event<'_>, ctx: LayerContext<'_, S>) {
        let mut test = TestField(None);
        event.record(&mut test);
        let Some(test) = test.0 else { return };
        let spans = ctx
            .event_scope(event)
            .map(|scope| scope.from_root().map(|span| span.name()).collect())
            .unwrap_or_default();
        let seen = Seen {
            spans,
            user: USER.get(),
        };
        RECORDS.lock().unwrap().push((test, seen));
    }
}

/// Installs the recording subscriber and makes spans follow the work (once per process).
fn install() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        tracing::subscriber::set_global_default(Registry::default().with(Recorder))
            .expect("the only global subscriber of this test binary");
        contextvars_tracing::carry_spans().expect("the only carrier of this test binary");
    });
}

/// A process has one carrier: registering the span carrier again is fine, another one is
/// refused with an error that says so, and spans are still carried afterwards.
#[test]
fn a_second_carrier_is_refused() {
    use contextvars::plumbing::{Carried, Carrier, CarrierTaken, set_carrier};
    struct Other;
    impl Carrier for Other {
        fn capture(&self) -> Option<std::sync::Arc<dyn Carried>> {
            panic!("never registered, never asked")
        }
    }
    static OTHER: Other = Other;
    install();
    assert_eq!(contextvars_tracing::carry_spans(), Ok(()));
    assert_eq!(set_carrier(&OTHER), Err(CarrierTaken));
    assert!(
        CarrierTaken
            .to_string()
            .contains("another carrier is registered")
    );
    in_span(|| contextvars::thread::spawn(|| log("a_second_carrier_is_refused")).join()).unwrap();
    assert_in_request("a_second_carrier_is_refused", 1);
}

/// Logs one event for `test`.
fn log(test: &str) {
    info!(test, "an event");
}

/// What `test`'s events saw, in no particular order.
fn seen(test: &str) -> Vec<Seen> {
    RECORDS
        .lock()
        .unwrap()
        .iter()
        .filter(|(name, _)| name == test)
        .map(|(_, seen)| seen.clone())
        .collect()
}

fn in_request() -> Seen {
    Seen {
        spans: vec!["request"],
        user: "ada",
    }
}

fn outside() -> Seen {
    Seen {
        spans: vec![],
        user: "-",
    }
}

/// Asserts that `test` logged `count` events, each in the request's span and context.
#[track_caller]
fn assert_in_request(test: &str, count: usize) {
    assert_eq!(seen(test), vec![in_request(); count], "{test}");
}

/// Runs `f` with `USER = "ada"` inside an entered `request` span.
fn in_span<R>(f: impl FnOnce() -> R) -> R {
    install();
    USER.scope("ada", || info_span!("request").in_scope(f))
}

#[test]
fn thread_spawns_carry_the_span() {
    in_span(|| {
        contextvars::thread::spawn(|| log("thread::spawn"))
            .join()
            .unwrap();
        let ctx = contextvars::copy_context();
        contextvars::thread::spawn_in(&ctx, || log("thread::spawn_in"))
            .join()
            .unwrap();
        std::thread::Builder::new()
            .spawn_in_copied_context(|| log("Builder::spawn_in_copied_context"))
            .unwrap()
            .join()
            .unwrap();
        std::thread::scope(|scope| {
            let handle: ScopedJoinHandle<'_, ()> =
                scope.spawn_in_copied_context(|| log("Scope::spawn_in_copied_context"));
            handle.join().unwrap();
        });
        // The control: a plain spawn carries neither.
        std::thread::spawn(|| log("std::thread::spawn"))
            .join()
            .unwrap();
    });
    for test in [
        "thread::spawn",
        "thread::spawn_in",
        "Builder::spawn_in_copied_context",
        "Scope::spawn_in_copied_context",
    ] {
        assert_in_request(test, 1);
    }
    assert_eq!(seen("std::thread::spawn"), vec![outside()]);
}

#[test]
fn futures_and_tokio_helpers_carry_the_span_on_every_poll() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let tasks = in_span(|| {
        let _guard = rt.enter();
        let twice = |test: &'static str| async move {
            log(test);
            tokio::task::yield_now().await;
            log(test);
        };
        let mut set = tokio::task::JoinSet::new();
        set.spawn_in_copied_context(twice("JoinSet::spawn_in_copied_context"));
        set.spawn_blocking_in_copied_context(|| log("JoinSet::spawn_blocking_in_copied_context"));
        vec![
            contextvars::tokio::spawn(twice("tokio::spawn")),
            contextvars::tokio::spawn_blocking(|| log("tokio::spawn_blocking")),
            tokio::spawn(twice("in_copied_context").in_copied_context()),
            // The control: a plain task carries neither.
            tokio::spawn(twice("plain tokio::spawn")),
            tokio::spawn(async move {
                while let Some(done) = set.join_next().await {
                    done.unwrap();
                }
            }),
        ]
    });
    rt.block_on(async {
        for task in tasks {
            task.await.unwrap();
        }
        // Between polls the workers are in no span: a plain task on each sees none.
        let after: Vec<_> = (0..8)
            .map(|_| tokio::spawn(async { log("tokio worker after") }))
            .collect();
        for task in after {
            task.await.unwrap();
        }
    });
    for test in [
        "JoinSet::spawn_in_copied_context",
        "tokio::spawn",
        "in_copied_context",
    ] {
        assert_in_request(test, 2);
    }
    assert_in_request("JoinSet::spawn_blocking_in_copied_context", 1);
    assert_in_request("tokio::spawn_blocking", 1);
    assert_eq!(seen("plain tokio::spawn"), vec![outside(); 2]);
    assert_eq!(seen("tokio worker after"), vec![outside(); 8]);
}

#[test]
fn rayon_jobs_carry_the_span() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    let (done, finished) = std::sync::mpsc::channel();
    in_span(|| {
        pool.install_in_copied_context(|| {
            log("install_in_copied_context");
            contextvars::rayon::join(|| log("join"), || log("join"));
            contextvars::rayon::join_context(|_| log("join_context"), |_| log("join_context"));
            contextvars::rayon::scope(|s| {
                log("scope");
                s.spawn(|_| log("Scope::spawn"));
            });
            contextvars::rayon::in_place_scope(|s| {
                log("in_place_scope");
                s.spawn(|_| log("Scope::spawn"));
            });
            (0..64)
                .into_par_iter()
                .in_copied_context()
                .for_each(|_| log("par_iter"));
            // The producer path: an indexed adapter after the capture.
            (0..64)
                .into_par_iter()
                .in_copied_context()
                .map(|i| i * 2)
                .with_min_len(1)
                .for_each(|_| log("par_iter map"));
            let spawned = done.clone();
            contextvars::rayon::spawn(move || {
                log("rayon::spawn");
                spawned.send(()).unwrap();
            });
            let spawned = done.clone();
            contextvars::rayon::spawn_fifo(move || {
                log("rayon::spawn_fifo");
                spawned.send(()).unwrap();
            });
        });
        let spawned = done.clone();
        pool.spawn_in_copied_context(move || {
            log("ThreadPool::spawn_in_copied_context");
            spawned.send(()).unwrap();
        });
    });
    for _ in 0..3 {
        finished.recv().unwrap();
    }
    // After the jobs, the workers are in no span.
    pool.broadcast(|_| log("rayon worker after"));
    for (test, count) in [
        ("install_in_copied_context", 1),
        ("join", 2),
        ("join_context", 2),
        ("scope", 1),
        ("in_place_scope", 1),
        ("Scope::spawn", 2),
        ("par_iter", 64),
        ("par_iter map", 64),
        ("rayon::spawn", 1),
        ("rayon::spawn_fifo", 1),
        ("ThreadPool::spawn_in_copied_context", 1),
    ] {
        assert_in_request(test, count);
    }
    assert_eq!(seen("rayon worker after"), vec![outside(); 2]);
}

#[test]
fn a_parallel_iterator_never_enters_its_span_twice_on_one_thread() {
    // A subscriber that records span enters (`FmtSpan::ENTER`) would log each twice.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    install();
    // Captured here, consumed on the pool's workers, where the span is not entered: every
    // enter there is the adapter's, and none may nest in another.
    let (consumer, producer) = info_span!("reentry_check").in_scope(|| {
        (
            (0..256).into_par_iter().in_copied_context(),
            (0..256).into_par_iter().in_copied_context(),
        )
    });
    pool.install(|| {
        // The consumer path, and the producer path (an indexed adapter after it).
        consumer.for_each(|_| log("reentry consumer"));
        producer
            .map(|i| i + 1)
            .with_min_len(1)
            .for_each(|_| log("reentry producer"));
    });
    assert_eq!(REENTERED.load(Ordering::Relaxed), 0);
    let in_span = Seen {
        spans: vec!["reentry_check"],
        user: "-",
    };
    assert_eq!(seen("reentry consumer"), vec![in_span.clone(); 256]);
    assert_eq!(seen("reentry producer"), vec![in_span; 256]);
}

#[test]
fn the_innermost_span_is_carried_with_its_parents() {
    install();
    USER.scope("ada", || {
        info_span!("outer").in_scope(|| {
            info_span!("inner").in_scope(|| {
                contextvars::thread::spawn(|| log("nested")).join().unwrap();
            });
        });
    });
    assert_eq!(
        seen("nested"),
        vec![Seen {
            spans: vec!["outer", "inner"],
            user: "ada"
        }]
    );
}

#[test]
fn nothing_is_carried_when_no_span_is_current() {
    install();
    USER.scope("ada", || {
        contextvars::thread::spawn(|| log("no span"))
            .join()
            .unwrap();
        contextvars::rayon::join(|| log("no span"), || ());
    });
    assert_eq!(
        seen("no span"),
        vec![
            Seen {
                spans: vec![],
                user: "ada"
            };
            2
        ]
    );
}

#[test]
fn a_panicking_poll_leaves_the_span() {
    use futures_util::FutureExt as _;

    install();
    // Kept open until the end: a closed span would not show even if it leaked.
    let span = info_span!("request");
    let future = span.in_scope(|| {
        async {
            log("before the panic");
            panic!("a task panics");
        }
        .in_copied_context()
    });
    // Polled here, outside the span: the poll enters it, and its guard exits it on unwind.
    let outcome = catch_unwind(AssertUnwindSafe(|| future.now_or_never()));
    assert!(outcome.is_err());
    log("after the panic");
    drop(span);
    assert_eq!(
        seen("before the panic"),
        vec![Seen {
            spans: vec!["request"],
            user: "-"
        }]
    );
    assert_eq!(seen("after the panic"), vec![outside()]);
}

#[test]
fn a_context_object_run_keeps_the_callers_span() {
    // `Context::run` is not a hand-off: it runs on the caller's thread, in the caller's
    // span, and carries nothing of its own.
    install();
    let ctx = Context::new();
    info_span!("request").in_scope(|| ctx.run(|| log("Context::run")));
    assert_eq!(
        seen("Context::run"),
        vec![Seen {
            spans: vec!["request"],
            user: "-"
        }]
    );
}

#[test]
fn the_tower_layer_carries_the_span_into_the_body() {
    use tower_layer::Layer as _;
    use tower_service::Service;

    install();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let mut service = contextvars_tower::ContextLayer::new().layer(Handler);
    let future = in_span(|| service.call(http::Request::new(())));
    // The future and the body are polled on a worker, outside the span and the context.
    rt.block_on(async {
        tokio::spawn(async move {
            let response = future.await.unwrap();
            let mut body = std::pin::pin!(response.into_body());
            std::future::poll_fn(|cx| http_body::Body::poll_frame(body.as_mut(), cx)).await;
        })
        .await
        .unwrap();
    });
    assert_in_request("tower service", 1);
    assert_in_request("tower body", 1);
}

/// A service whose future logs when polled, and answers with a [`Logged`] body.
#[derive(Clone)]
struct Handler;

impl tower_service::Service<http::Request<()>> for Handler {
    type Response = http::Response<Logged>;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Request<()>) -> Self::Future {
        Box::pin(async {
            tokio::task::yield_now().await;
            log("tower service");
            Ok(http::Response::new(Logged(false)))
        })
    }
}

/// A body that logs when it is polled, then ends.
struct Logged(bool);

impl http_body::Body for Logged {
    type Data = &'static [u8];
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        if !self.0 {
            self.0 = true;
            log("tower body");
        }
        std::task::Poll::Ready(None)
    }
}
