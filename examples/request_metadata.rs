//! A small HTTP service whose middleware sets a request id and a tenant in the context
//! the plainest way there is (`drop(REQUEST_ID.set(id))`); handlers read them, and the
//! context follows the work into `tokio::spawn`, `spawn_blocking` and a rayon
//! `par_iter`, so every log line carries the request id.
//!
//! One line makes that safe: `.layer(ContextLayer::new())`, last on the router, runs each
//! request in a context of its own, so a set in one request never reaches another
//! (without it, the middleware's set is refused: it would land in the worker thread's
//! own context, which the next request on that worker would see).
//!
//! The example starts the server on 127.0.0.1, sends itself a bounded number of
//! concurrent requests, checks every response and every log line, and exits.
//!
//! ```text
//! cargo run --example request_metadata --features rayon,tokio,tower
//! ```

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use axum::Router;
use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use contextvars::context_var;
use contextvars::rayon::ParallelIteratorExt;
use contextvars::tower::ContextLayer;
use rayon::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

context_var! {
    /// The id of the request being served (from the `x-request-id` header).
    static REQUEST_ID: u64;
    /// The tenant the request is served for (from the `x-tenant` header).
    static TENANT: String = lazy String::from("public");
}

const REQUESTS: u64 = 64;
const CONCURRENCY: usize = 16;
/// Log lines per request: middleware in/out, handler start/end, spawn, blocking, and
/// four from the rayon job.
const LINES_PER_REQUEST: usize = 10;

static LOG: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// A logger that needs no arguments to know which request it is working for.
fn log(message: &str) {
    let request = REQUEST_ID
        .try_get()
        .map_or_else(|_| "-".to_owned(), |id| id.to_string());
    let line = format!("[request={request} tenant={}] {message}", TENANT.get());
    LOG.lock().unwrap().push(line);
}

/// Middleware: read the headers and set them for the rest of the request. The request's
/// context is its own (the layer), so dropping the tokens keeps the values for exactly
/// this request.
async fn request_context(request: Request, next: Next) -> Response {
    let (id, tenant) = {
        let header = |name: &str| {
            request
                .headers()
                .get(name)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned)
        };
        let id: u64 = header("x-request-id")
            .and_then(|id| id.parse().ok())
            .unwrap_or(0);
        (id, header("x-tenant"))
    };
    drop(REQUEST_ID.set(id));
    if let Some(tenant) = tenant {
        drop(TENANT.set(tenant));
    }
    log("middleware: request in");
    let response = next.run(request).await;
    log("middleware: response out");
    response
}

/// The handler: reads the context and fans work out three ways.
async fn work() -> String {
    log("handler: start");
    let spawned = contextvars::tokio::spawn(async {
        tokio::task::yield_now().await;
        log("tokio::spawn: running");
        REQUEST_ID.get()
    })
    .await
    .expect("spawned task");
    let blocking = contextvars::tokio::spawn_blocking(|| {
        log("spawn_blocking: running");
        // A CPU-bound step on rayon's pool, from the blocking thread.
        (0..4_000u64)
            .into_par_iter()
            .in_current_context()
            .map(|i| {
                if i % 1_000 == 0 {
                    log("rayon par_iter: item");
                }
                i
            })
            .sum::<u64>()
    })
    .await
    .expect("blocking task");
    log("handler: end");
    format!(
        "request={} tenant={} spawned={spawned} sum={blocking}",
        REQUEST_ID.get(),
        TENANT.get()
    )
}

/// A minimal HTTP/1.1 client: one request per connection.
async fn send(addr: std::net::SocketAddr, id: u64, tenant: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!(
        "GET /work HTTP/1.1\r\nhost: {addr}\r\nx-request-id: {id}\r\nx-tenant: {tenant}\r\nconnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("malformed response"))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(format!("status: {head}")));
    }
    Ok(body.to_owned())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let started = Instant::now();
    let app = Router::new()
        .route("/work", get(work))
        .layer(middleware::from_fn(request_context))
        .layer(ContextLayer::new()); // last: each request in a context of its own
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
    });
    println!("serving on http://{addr}");

    // Bounded concurrency: at most CONCURRENCY requests in flight.
    let mut in_flight = tokio::task::JoinSet::new();
    let mut responses = HashMap::new();
    for id in 1..=REQUESTS {
        if in_flight.len() == CONCURRENCY {
            let (id, body) = in_flight.join_next().await.expect("in flight")?;
            responses.insert(id, body?);
        }
        in_flight.spawn(async move {
            let tenant = format!("tenant-{}", id % 4);
            (id, send(addr, id, &tenant).await)
        });
    }
    while let Some(done) = in_flight.join_next().await {
        let (id, body) = done?;
        responses.insert(id, body?);
    }
    let _ = stop.send(());
    server.await??;

    // Every response names its own request and tenant.
    for id in 1..=REQUESTS {
        let body = &responses[&id];
        let expected = format!(
            "request={id} tenant=tenant-{} spawned={id} sum=7998000",
            id % 4
        );
        assert_eq!(body, &expected, "response to request {id}");
    }

    // Every log line carries the request id of the request it was written for.
    let log = LOG.lock().unwrap();
    let mut per_request: HashMap<u64, usize> = HashMap::new();
    for line in log.iter() {
        let id: u64 = line
            .strip_prefix("[request=")
            .and_then(|rest| rest.split_once(' '))
            .and_then(|(id, _)| id.parse().ok())
            .unwrap_or_else(|| panic!("a log line without a request id: {line}"));
        let tenant = format!("tenant=tenant-{}]", id % 4);
        assert!(line.contains(&tenant), "wrong tenant in {line}");
        *per_request.entry(id).or_default() += 1;
    }
    assert_eq!(per_request.len(), REQUESTS as usize);
    for (id, lines) in &per_request {
        assert_eq!(*lines, LINES_PER_REQUEST, "log lines of request {id}");
    }
    for line in log.iter().filter(|line| line.starts_with("[request=7 ")) {
        println!("{line}");
    }
    println!(
        "ok: {REQUESTS} requests ({CONCURRENCY} at a time), {} log lines, each with its request id, in {:.2?}",
        log.len(),
        started.elapsed()
    );
    Ok(())
}
