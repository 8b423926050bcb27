//! What isolating tasks and requests costs, each row against its peer in the
//! same run:
//!
//! * `task_poll`: a task that yields 1,000 times on a current-thread runtime, so a row
//!   is dominated by polls: a plain task (`bare`), under the runtime's task hooks
//!   (`hooks`, only with `--cfg tokio_unstable`), wrapped with `in_copied_context`
//!   (`wrapper`), and in tokio's `task_local!` scope (`tokio_task_local`).
//! * `server_request`: one request and its response over a kept-alive HTTP/1.1
//!   connection to an axum server on 127.0.0.1, whose middleware binds a request id:
//!   behind `ContextLayer` with the naive `drop(REQUEST_ID.set(id))` (`layer`), and with
//!   tokio's `task_local!` scope around `next.run` (`tokio_task_local`).
//!
//! Run with `cargo bench --all-features --bench isolation`; add
//! `RUSTFLAGS="--cfg tokio_unstable"` (and a separate `CARGO_TARGET_DIR`) for the hooks row.

use std::hint::black_box;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use contextvars::ContextVar;
use contextvars::future::ContextFutureExt;
use contextvars_tower::ContextLayer;
use criterion::{Criterion, Throughput, criterion_group};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

static REQUEST_ID: ContextVar<u64> = contextvars::context_var!(u64, "request_id");

tokio::task_local! {
    static TASK_REQUEST_ID: u64;
}

const YIELDS: u64 = 1_000;

/// Yields `YIELDS` times, reading the request id at each poll.
async fn yielding(read: fn() -> u64) -> u64 {
    let mut sum = 0;
    for _ in 0..YIELDS {
        sum += read();
        tokio::task::yield_now().await;
    }
    sum
}

fn ours() -> u64 {
    REQUEST_ID.get_or(0)
}

fn theirs() -> u64 {
    TASK_REQUEST_ID.try_with(|id| *id).unwrap_or(0)
}

/// Spawns `task` and checks that every poll read the bound request id.
async fn spawn_checked(task: impl std::future::Future<Output = u64> + Send + 'static) -> u64 {
    let sum = tokio::spawn(task).await.unwrap();
    assert_eq!(sum, YIELDS);
    black_box(sum)
}

fn task_poll(c: &mut Criterion) {
    let mut group = c.benchmark_group("task_poll");
    group.throughput(Throughput::Elements(YIELDS));
    let bare = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    group.bench_function("bare", |b| {
        b.iter(|| bare.block_on(async { black_box(tokio::spawn(yielding(ours)).await.unwrap()) }))
    });
    #[cfg(tokio_unstable)]
    {
        let mut builder = tokio::runtime::Builder::new_current_thread();
        contextvars::tokio::isolate_tasks(&mut builder);
        let hooks = builder.build().expect("runtime");
        group.bench_function("hooks", |b| {
            b.iter(|| {
                hooks.block_on(async {
                    let _guard = REQUEST_ID.scoped_set(1);
                    spawn_checked(yielding(ours)).await
                })
            })
        });
    }
    group.bench_function("wrapper", |b| {
        b.iter(|| bare.block_on(spawn_checked(REQUEST_ID.scope_future(1, yielding(ours)))))
    });
    group.bench_function("tokio_task_local", |b| {
        b.iter(|| bare.block_on(spawn_checked(TASK_REQUEST_ID.scope(1, yielding(theirs)))))
    });
    // `in_copied_context` on a plain copy, to compare with `scope_future`.
    group.bench_function("wrapper_copy", |b| {
        b.iter(|| {
            bare.block_on(async {
                let sum = tokio::spawn(yielding(ours).in_copied_context())
                    .await
                    .unwrap();
                black_box(sum)
            })
        })
    });
    group.finish();
}

fn header_id(request: &Request) -> u64 {
    request
        .headers()
        .get("x-id")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse().ok())
        .unwrap_or(0)
}

async fn naive(request: Request, next: Next) -> Response {
    drop(REQUEST_ID.set(header_id(&request)));
    next.run(request).await
}

async fn task_local(request: Request, next: Next) -> Response {
    let id = header_id(&request);
    TASK_REQUEST_ID.scope(id, next.run(request)).await
}

async fn serve(app: Router) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
    addr
}

/// One request over a kept-alive connection; returns the response body.
async fn round_trip(stream: &mut TcpStream, buffer: &mut Vec<u8>, id: u64) -> u64 {
    let request = format!("GET / HTTP/1.1\r\nhost: bench\r\nx-id: {id}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    buffer.clear();
    loop {
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).await.expect("read");
        assert!(n > 0, "connection closed");
        buffer.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(buffer);
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            continue;
        };
        let length: usize = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length: "))
            .and_then(|value| value.trim().parse().ok())
            .expect("content-length");
        if body.len() >= length {
            return body[..length].parse().expect("body");
        }
    }
}

fn server_request(c: &mut Criterion) {
    let mut group = c.benchmark_group("server_request");
    group.measurement_time(Duration::from_secs(4));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let layer = rt.block_on(serve(
        Router::new()
            .route("/", get(|| async { REQUEST_ID.get().to_string() }))
            .layer(middleware::from_fn(naive))
            .layer(ContextLayer::new()),
    ));
    let task_local = rt.block_on(serve(
        Router::new()
            .route("/", get(|| async { TASK_REQUEST_ID.get().to_string() }))
            .layer(middleware::from_fn(task_local)),
    ));
    for (name, addr) in [("layer", layer), ("tokio_task_local", task_local)] {
        let mut stream = rt.block_on(TcpStream::connect(addr)).expect("connect");
        let mut buffer = Vec::new();
        let mut id = 0u64;
        group.bench_function(name, |b| {
            b.iter(|| {
                id += 1;
                let seen = rt.block_on(round_trip(&mut stream, &mut buffer, id));
                assert_eq!(seen, id);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, task_poll, server_request);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
