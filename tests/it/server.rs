//! Request isolation in a real server: an axum service on 127.0.0.1 whose
//! middleware does the most natural thing (`drop(REQUEST_ID.set(..))`), under load, with
//! faults injected, must never let one request's values reach another.
//!
//! * Behind [`ContextLayer`], every request's handler, its `contextvars::tokio::spawn`ed
//!   helper, its `spawn_blocking` work and its rayon `par_iter` see exactly the id and
//!   tenant the request carried; a plain `tokio::spawn` sees nothing (the worker's own
//!   context is never written). 1% of handlers panic, 1% of clients drop the connection
//!   mid-request, 1% of handlers hit a `tokio::time::timeout`; the requests after each
//!   fault are still isolated. Every log line names its own request.
//! * Without the layer, the same middleware is refused: its `try_set` returns the error
//!   that names the fixes.
//!
//! * Under the runtime's task hooks (`--cfg tokio_unstable`, `.ci/run`'s hooks run), the
//!   same middleware without the layer is isolated too, and a plain `tokio::spawn` from
//!   the handler carries the request's values.
//!
//! 10,000 requests at 256 concurrent in release builds (`.ci/run`'s release test run),
//! fewer in debug builds; never under miri (sockets).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use contextvars::ContextVar;
use contextvars::rayon::ParallelIteratorExt;
use contextvars_tower::{ContextLayer, InitError, RequestId};
use rayon::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

static REQUEST_ID: ContextVar<u64> = contextvars::context_var!(u64, "request_id");
static TENANT: ContextVar<String> =
    contextvars::context_var!(String, "tenant", default String::new());
static LAYER_ID: ContextVar<Arc<str>> = contextvars::context_var!(Arc<str>, "layer_id");

/// The name of every thread of the server's runtime.
const SERVER_THREAD: &str = "server-load";

/// Log lines: (the request the line is about, as the URL says; what the code saw).
type Log = Arc<Mutex<Vec<(u64, u64)>>>;

fn header(request: &Request, name: &str) -> String {
    request
        .headers()
        .get(name)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// The middleware, as a new user writes it.
async fn naive_middleware(request: Request, next: Next) -> Response {
    let id: u64 = header(&request, "x-id").parse().unwrap_or(0);
    let tenant = header(&request, "x-tenant");
    // `try_set`, so that the test without the layer can show the refusal.
    if let Err(error) = REQUEST_ID.try_set(id).map(drop) {
        return (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response();
    }
    drop(TENANT.set(tenant));
    next.run(request).await
}

fn seen() -> String {
    format!(
        "{}/{}",
        REQUEST_ID
            .try_get()
            .map_or_else(|_| "-".to_owned(), |id| id.to_string()),
        TENANT.get()
    )
}

async fn handler(request: Request) -> Response {
    let log: Log = request.extensions().get::<Log>().cloned().expect("log");
    let id: u64 = header(&request, "x-id").parse().unwrap_or(0);
    let fault = header(&request, "x-fault");
    let own = |what: &str| {
        let seen = REQUEST_ID.try_get().unwrap_or(u64::MAX);
        log.lock().unwrap().push((id, seen));
        let _ = what;
    };
    own("handler: start");
    match fault.as_str() {
        "panic" => panic!("injected handler panic"),
        "timeout" => {
            let slow = tokio::time::timeout(
                Duration::from_millis(1),
                tokio::time::sleep(Duration::from_secs(5)),
            );
            assert!(slow.await.is_err());
            own("handler: after timeout");
            return (StatusCode::GATEWAY_TIMEOUT, seen()).into_response();
        }
        _ => {}
    }
    let in_handler = seen();
    let carried = contextvars::tokio::spawn(async { seen() })
        .await
        .expect("helper");
    let plain = tokio::spawn(async { seen() }).await.expect("plain task");
    let blocking = contextvars::tokio::spawn_blocking(|| {
        let items: Vec<String> = (0..4)
            .into_par_iter()
            .in_copied_context()
            .map(|_| seen())
            .collect();
        (seen(), items)
    })
    .await
    .expect("blocking");
    own("handler: end");
    let rayon_ok = blocking.1.iter().all(|item| *item == in_handler);
    let layer_id = LAYER_ID
        .try_get()
        .map_or_else(|_| "-".into(), |id| id.to_string());
    format!(
        "handler={in_handler};carried={carried};plain={plain};blocking={};rayon={rayon_ok};layer={layer_id}",
        blocking.0
    )
    .into_response()
}

/// How requests get a context of their own.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Mode {
    /// [`ContextLayer`], added last.
    Layer,
    /// The runtime's task hooks (`--cfg tokio_unstable`), no layer.
    #[cfg_attr(not(tokio_unstable), allow(dead_code))]
    Hooks,
    /// Neither: the naive middleware's set is refused.
    Bare,
}

fn app(log: Log, mode: Mode) -> Router {
    let router = Router::new()
        .route("/", get(handler))
        .layer(middleware::from_fn(naive_middleware))
        .layer(axum::Extension(log));
    if mode == Mode::Layer {
        router.layer(
            ContextLayer::new().init(
                RequestId::new(&LAYER_ID).header(axum::http::HeaderName::from_static("x-id")),
            ),
        )
    } else {
        router
    }
}

/// What a client saw.
enum Outcome {
    Ok(String),
    Status(u16, String),
    /// The server closed the connection (a handler panicked) or the client gave up; why.
    Closed(String),
}

async fn request(port: u16, id: u64, fault: &str) -> Outcome {
    let mut stream = match TcpStream::connect(("127.0.0.1", port)).await {
        Ok(stream) => stream,
        Err(error) => return Outcome::Closed(format!("connect: {error}")),
    };
    let head = format!(
        "GET / HTTP/1.1\r\nhost: localhost\r\nx-id: {id}\r\nx-tenant: t{}\r\nx-fault: {fault}\r\nconnection: close\r\n\r\n",
        id % 7
    );
    if fault == "drop" {
        // Half a request, then the connection goes away.
        let _ = stream.write_all(&head.as_bytes()[..head.len() / 2]).await;
        return Outcome::Closed("dropped by the client".into());
    }
    if let Err(error) = stream.write_all(head.as_bytes()).await {
        return Outcome::Closed(format!("write: {error}"));
    }
    let mut response = Vec::new();
    if let Err(error) = stream.read_to_end(&mut response).await {
        return Outcome::Closed(format!("read: {error}"));
    }
    if response.is_empty() {
        return Outcome::Closed("closed with no response".into());
    }
    let response = String::from_utf8_lossy(&response).into_owned();
    let status: u16 = response
        .get(9..12)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    if status == 200 {
        Outcome::Ok(body)
    } else {
        Outcome::Status(status, body)
    }
}

fn fault_of(id: u64) -> &'static str {
    match id % 100 {
        13 => "panic",
        47 => "drop",
        71 => "timeout",
        _ => "",
    }
}

async fn serve(log: Log, mode: Mode) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        axum::serve(listener, app(log, mode)).await.expect("serve");
    });
    port
}

fn runtime(mode: Mode) -> tokio::runtime::Runtime {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder
        .worker_threads(2)
        .thread_name(SERVER_THREAD)
        .enable_all();
    #[cfg(tokio_unstable)]
    if mode == Mode::Hooks {
        contextvars::tokio::isolate_tasks(&mut builder);
    }
    assert!(mode != Mode::Hooks || cfg!(tokio_unstable));
    builder.build().expect("runtime")
}

#[test]
#[cfg_attr(miri, ignore)]
fn naive_middleware_behind_the_layer_is_isolated() {
    load_test(Mode::Layer);
}

/// The same load, isolated by the runtime's task hooks instead of the layer: a plain
/// `tokio::spawn` from the handler now carries the request's values too.
#[cfg(tokio_unstable)]
#[test]
#[cfg_attr(miri, ignore)]
fn naive_middleware_under_the_task_hooks_is_isolated() {
    load_test(Mode::Hooks);
}

fn load_test(mode: Mode) {
    let (requests, concurrency) = if cfg!(debug_assertions) {
        (2_000, 64)
    } else {
        (10_000, 256)
    };
    // Injected panics are expected: keep them off stderr. Any other panic on the
    // server's threads is counted and fails the test (the hook is process-wide, so
    // panics of other tests, on other threads, are not counted).
    let unexpected_panics = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let hook = std::panic::take_hook();
    let counter = unexpected_panics.clone();
    std::panic::set_hook(Box::new(move |info| {
        if !info.to_string().contains("injected handler panic") {
            eprintln!("{info}");
            let on_server = std::thread::current()
                .name()
                .is_some_and(|name| name == SERVER_THREAD);
            if on_server {
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }));
    let rt = runtime(mode);
    let log: Log = Arc::default();
    let results = rt.block_on(async {
        let port = serve(log.clone(), mode).await;
        let semaphore = Arc::new(tokio::sync::Semaphore::new(concurrency));
        let mut clients = tokio::task::JoinSet::new();
        for id in 1..=requests {
            let permit = semaphore.clone().acquire_owned().await.expect("permit");
            clients.spawn(async move {
                let fault = fault_of(id);
                let mut retried = Vec::new();
                let outcome = loop {
                    let outcome =
                        tokio::time::timeout(Duration::from_secs(30), request(port, id, fault))
                            .await
                            .unwrap_or_else(|_| Outcome::Closed("client timeout (30 s)".into()));
                    // A transport failure of a request without a fault (a reset from a
                    // loaded loopback, a refused connect) is retried, and counted below;
                    // it says nothing about isolation. A panic behind it would not go
                    // unnoticed: the panic hook counts those.
                    match outcome {
                        Outcome::Closed(why) if fault.is_empty() && retried.len() < 2 => {
                            retried.push(format!("request {id}: {why}"));
                        }
                        outcome => break outcome,
                    }
                };
                drop(permit);
                (id, outcome, retried)
            });
        }
        let mut results = Vec::new();
        while let Some(result) = clients.join_next().await {
            results.push(result.expect("client"));
        }
        results
    });
    std::panic::set_hook(hook);

    let (mut ok, mut panicked, mut dropped, mut timed_out, mut leaks) = (0, 0, 0, 0, Vec::new());
    let retried: Vec<&String> = results.iter().flat_map(|(_, _, why)| why).collect();
    for (id, outcome, _) in &results {
        let own = format!("{id}/t{}", id % 7);
        match (fault_of(*id), outcome) {
            ("", Outcome::Ok(body)) => {
                ok += 1;
                let (plain, layer) = match mode {
                    Mode::Hooks => (own.clone(), "-".to_owned()),
                    _ => ("-/".to_owned(), id.to_string()),
                };
                let expected = format!(
                    "handler={own};carried={own};plain={plain};blocking={own};rayon=true;layer={layer}"
                );
                if *body != expected {
                    leaks.push(format!("request {id}: {body}"));
                }
            }
            ("panic", Outcome::Closed(_)) => panicked += 1,
            ("drop", Outcome::Closed(_)) => dropped += 1,
            ("timeout", Outcome::Status(504, body)) => {
                timed_out += 1;
                if *body != own {
                    leaks.push(format!("request {id} (timeout): {body}"));
                }
            }
            (fault, Outcome::Ok(body) | Outcome::Status(_, body)) => {
                leaks.push(format!("request {id} (fault {fault:?}): unexpected {body}"));
            }
            (fault, Outcome::Closed(why)) => {
                leaks.push(format!(
                    "request {id} (fault {fault:?}): connection closed ({why})"
                ));
            }
        }
    }
    let log = log.lock().unwrap();
    let wrong_lines: Vec<_> = log.iter().filter(|(id, seen)| id != seen).collect();
    let faults = requests / 100;
    assert_eq!(
        unexpected_panics.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "panics on the server's threads other than the injected ones (printed above)"
    );
    if !retried.is_empty() {
        eprintln!("{} transport failures retried: {retried:?}", retried.len());
    }
    assert!(
        retried.len() <= requests as usize / 500,
        "{} transport failures (retried) in {requests} requests: {:?}",
        retried.len(),
        &retried[..retried.len().min(10)]
    );
    assert!(
        leaks.is_empty(),
        "{} of {requests} requests saw another request's values or failed: {:?}",
        leaks.len(),
        &leaks[..leaks.len().min(10)]
    );
    assert!(
        wrong_lines.is_empty(),
        "{} of {} log lines named another request: {:?}",
        wrong_lines.len(),
        log.len(),
        &wrong_lines[..wrong_lines.len().min(10)]
    );
    assert_eq!(
        (ok, panicked, dropped, timed_out),
        (requests - 3 * faults, faults, faults, faults),
        "outcomes (ok, panicked, dropped, timed out)"
    );
}

#[test]
#[cfg_attr(miri, ignore)]
fn naive_middleware_without_the_layer_is_refused() {
    let rt = runtime(Mode::Bare);
    let outcome = rt.block_on(async {
        let port = serve(Arc::default(), Mode::Bare).await;
        request(port, 5, "").await
    });
    let Outcome::Status(500, body) = outcome else {
        panic!("expected the refusal as a 500");
    };
    assert!(
        body.starts_with("refused to set <ContextVar name=\"request_id\">")
            && body.contains("contextvars_tower::ContextLayer"),
        "{body}"
    );
}

#[test]
fn request_id_headers_that_cannot_be_trusted_get_a_fresh_id() {
    use contextvars_tower::{Initializer, fresh_request_id};
    let init = RequestId::new(&LAYER_ID).max_len(8);
    let parts = |value: Option<&[u8]>, twice: bool| {
        let mut builder = axum::http::Request::builder();
        if let Some(value) = value {
            builder = builder.header("x-request-id", value);
            if twice {
                builder = builder.header("x-request-id", value);
            }
        }
        builder.body(()).expect("request").into_parts().0
    };
    // (header value, sent twice, the complaint if it is not trusted)
    type Case = (Option<&'static [u8]>, bool, Option<&'static str>);
    let cases: [Case; 8] = [
        (Some(b"abc-123"), false, None),
        (None, false, None),
        (Some(b""), false, Some("is empty")),
        (Some(b"123456789"), false, Some("is longer than the limit")),
        (Some(b"caf\xc3\xa9"), false, Some("is not visible ASCII")),
        (Some(b"abc"), true, Some("appears more than once")),
        (Some(b"   "), false, Some("is not visible ASCII")),
        (Some(b"a\tb"), false, Some("is not visible ASCII")),
    ];
    for (value, twice, complaint) in cases {
        let request = parts(value, twice);
        contextvars::Context::new().run(|| {
            let result = init.initialize(&request);
            let id = LAYER_ID.get();
            match complaint {
                None if value.is_some() => {
                    assert!(result.is_ok());
                    assert_eq!(&*id, "abc-123");
                }
                None => {
                    assert!(result.is_ok());
                    assert_eq!(id.len(), 16, "a fresh id: {id}");
                }
                Some(reason) => {
                    let error: InitError = result.expect_err("untrusted");
                    assert!(error.message().contains(reason), "{error}");
                    assert!(error.message().contains("x-request-id"), "{error}");
                    assert_eq!(id.len(), 16, "a fresh id: {id}");
                }
            }
        });
    }
    let fresh: std::collections::HashSet<_> = (0..1_000).map(|_| fresh_request_id()).collect();
    assert_eq!(fresh.len(), 1_000, "fresh ids repeat");
}

/// The response body is polled in the request's context as it was when the response was
/// made: a streaming body sees what the initializer and the handler set, wherever and
/// whenever it is polled.
#[test]
#[cfg_attr(miri, ignore)]
fn a_streaming_body_is_polled_in_the_requests_context() {
    use std::convert::Infallible;
    use std::pin::Pin;

    use axum::body::Body;
    use contextvars_tower::{Layer, Service};
    use futures_util::StreamExt;
    use http_body::Body as _;

    async fn streaming() -> Response {
        drop(TENANT.set("from-the-handler".to_owned()));
        let chunks = futures_util::stream::iter(0..3).map(|i| {
            // Runs when the body is polled, long after the handler returned.
            Ok::<_, Infallible>(format!("{i}:{}:{};", LAYER_ID.get(), TENANT.get()))
        });
        Body::from_stream(chunks).into_response()
    }

    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let router = Router::new().route("/", get(streaming));
    let mut service = ContextLayer::new()
        .init(RequestId::new(&LAYER_ID))
        .layer(router);
    let request = axum::http::Request::builder()
        .uri("/")
        .header("x-request-id", "req-9")
        .body(Body::empty())
        .expect("request");
    let response = rt.block_on(service.call(request)).expect("response");
    // Polled here, outside the request, in a context that binds other values.
    let mut body = response.into_body();
    let text = contextvars::Context::new()
        .with_value(&TENANT, "outside".to_owned())
        .run(|| {
            rt.block_on(async {
                let mut text = String::new();
                while let Some(frame) =
                    std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
                {
                    let data = frame.expect("frame").into_data().expect("data");
                    text.push_str(std::str::from_utf8(&data).expect("utf-8"));
                }
                assert_eq!(TENANT.get(), "outside");
                text
            })
        });
    assert_eq!(
        text,
        "0:req-9:from-the-handler;1:req-9:from-the-handler;2:req-9:from-the-handler;"
    );
}
