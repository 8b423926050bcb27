//! A small HTTP service whose logs carry the request: its middleware sets a request id
//! and a tenant in the context the plainest way there is (`drop(REQUEST_ID.set(id))`)
//! and opens a `request` span; the handler fans work out into a `tokio::spawn`ed helper,
//! `spawn_blocking`, a rayon `par_iter`, a `join` and a `std::thread`; and every log line
//! from every one of them, written with a plain `tracing::info!`, names its request id,
//! tenant and span.
//!
//! Three lines make that happen:
//!
//! * `.layer(ContextLayer::new())`, last on the router, runs each request in a context
//!   of its own, so a set in one request never reaches another (without it the
//!   middleware's set is refused: it would land in the worker thread's own context);
//! * `ContextFields::new(format).var(&REQUEST_ID).named("request_id")...` adds the variables to
//!   every event, in the JSON and the text format alike;
//! * the crate's hand-offs (`contextvars::tokio::spawn`, `spawn_blocking`, rayon's
//!   `in_copied_context`, `join`, `contextvars::thread::spawn`) carry the request's
//!   context and its tracing span into the work.
//!
//! The example starts the server on 127.0.0.1, sends itself 256 requests, 64 at a time,
//! captures both log outputs, checks every line and exits; it prints one request's lines.
//! `tests/request_metadata.rs` runs the same with 1,000 requests.
//!
//! ```text
//! cargo run --example request_metadata --features tokio,rayon
//! ```

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use axum::Router;
use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use contextvars::context_var;
use contextvars::rayon::ParallelIteratorExt;
use contextvars_tower::ContextLayer;
use contextvars_tracing::ContextFields;
use rayon::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::{Instrument, info, info_span};
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt;

context_var! {
    /// The id of the request being served (from the `x-request-id` header).
    static REQUEST_ID: u64;
    /// The tenant the request is served for (from the `x-tenant` header).
    static TENANT: String = lazy String::from("public");
}

/// The messages every request logs, once each, and where they come from.
pub(crate) const MESSAGES: [&str; 12] = [
    "middleware: request in",
    "handler: start",
    "tokio::spawn: running",
    "tokio::spawn: own tenant",
    "spawn_blocking: running",
    "rayon par_iter: item 0",
    "rayon par_iter: item 1000",
    "rayon join: left",
    "rayon join: right",
    "std::thread: running",
    "handler: end",
    "middleware: response out",
];

// ---------------------------------------------------------------------------- the service

/// Middleware: read the headers, set them for the rest of the request and open the
/// request's span. The request's context is its own (the layer), so dropping the tokens
/// keeps the values for exactly this request.
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
    async move {
        info!("middleware: request in");
        let response = next.run(request).await;
        info!("middleware: response out");
        response
    }
    .instrument(info_span!("request", rid = id))
    .await
}

/// The handler: fans work out five ways; nothing below passes the id or the span along.
async fn work() -> String {
    info!("handler: start");
    let spawned = contextvars::tokio::spawn(async {
        tokio::task::yield_now().await;
        info!("tokio::spawn: running");
        // A set in the helper task stays in the helper: the event below shows it, the
        // handler's next event does not.
        drop(TENANT.set(format!("{}/helper", TENANT.get())));
        info!("tokio::spawn: own tenant");
        REQUEST_ID.get()
    })
    .await
    .expect("spawned task");
    let sum = contextvars::tokio::spawn_blocking(|| {
        info!("spawn_blocking: running");
        // A CPU-bound step on rayon's pool, from the blocking thread.
        let sum = (0..4_000u64)
            .into_par_iter()
            .in_copied_context()
            .map(|i| {
                if i % 1_000 == 0 && i < 2_000 {
                    info!("rayon par_iter: item {i}");
                }
                i
            })
            .sum::<u64>();
        contextvars::rayon::join(|| info!("rayon join: left"), || info!("rayon join: right"));
        contextvars::thread::spawn(|| info!("std::thread: running"))
            .join()
            .expect("thread");
        sum
    })
    .await
    .expect("blocking task");
    info!("handler: end");
    format!(
        "request={} tenant={} spawned={spawned} sum={sum}",
        REQUEST_ID.get(),
        TENANT.get()
    )
}

fn app() -> Router {
    Router::new()
        .route("/work", get(work))
        .layer(middleware::from_fn(request_context))
        .layer(ContextLayer::new()) // last: each request in a context of its own
}

// ---------------------------------------------------------------------------- the logs

/// A log output captured in memory, one `write` per event.
#[derive(Clone, Default)]
pub(crate) struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    /// What was written, as lines.
    pub(crate) fn lines(&self) -> Vec<String> {
        let bytes = self.0.lock().unwrap();
        String::from_utf8_lossy(&bytes)
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The two outputs: JSON and tracing-subscriber's default text format.
pub(crate) struct Logs {
    /// `fmt::layer().json()`, one object per line.
    pub(crate) json: Captured,
    /// `fmt::layer()` without colours.
    pub(crate) text: Captured,
}

/// The variables on every event: `context_var!` names a variable after its static, so
/// each is given its field name.
fn with_request_fields<F>(format: F) -> ContextFields<F> {
    ContextFields::new(format)
        .var(&REQUEST_ID)
        .named("request_id")
        .var(&TENANT)
        .named("tenant")
}

/// Only this program's events: the checks expect nothing else (a dependency that logs,
/// such as axum with its `tracing` feature, would add lines of its own).
fn own_events() -> tracing_subscriber::filter::FilterFn {
    tracing_subscriber::filter::filter_fn(|metadata| metadata.target().starts_with(module_path!()))
}

/// Installs, once per process, a subscriber with a JSON layer and a text layer, both
/// showing `REQUEST_ID` and `TENANT` on every event.
pub(crate) fn install_logging() -> &'static Logs {
    static LOGS: OnceLock<Logs> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Logs {
            json: Captured::default(),
            text: Captured::default(),
        };
        let (json, text) = (logs.json.clone(), logs.text.clone());
        let subscriber = tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(move || json.clone())
                    .map_event_format(with_request_fields)
                    .with_filter(own_events()),
            )
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer(move || text.clone())
                    .map_event_format(with_request_fields)
                    .with_filter(own_events()),
            );
        tracing::subscriber::set_global_default(subscriber).expect("one global subscriber");
        logs
    })
}

// ---------------------------------------------------------------------------- the load

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

fn tenant_of(id: u64) -> String {
    format!("tenant-{}", id % 4)
}

/// Serves `requests` requests, `concurrency` at a time, from a client in the same
/// process; checks every response.
pub(crate) async fn serve_and_load(requests: u64, concurrency: usize) -> Result<(), String> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, app())
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
    });
    let mut in_flight = tokio::task::JoinSet::new();
    let mut responses = HashMap::new();
    let mut record = |(id, body): (u64, std::io::Result<String>)| {
        let body = body.map_err(|e| format!("request {id}: {e}"))?;
        responses.insert(id, body);
        Ok::<_, String>(())
    };
    for id in 1..=requests {
        if in_flight.len() == concurrency {
            record(
                in_flight
                    .join_next()
                    .await
                    .expect("in flight")
                    .expect("client"),
            )?;
        }
        in_flight.spawn(async move { (id, send(addr, id, &tenant_of(id)).await) });
    }
    while let Some(done) = in_flight.join_next().await {
        record(done.expect("client"))?;
    }
    let _ = stop.send(());
    server
        .await
        .expect("server task")
        .map_err(|e| e.to_string())?;
    for id in 1..=requests {
        let expected = format!(
            "request={id} tenant={} spawned={id} sum=7998000",
            tenant_of(id)
        );
        if responses[&id] != expected {
            return Err(format!("response to request {id}: {}", responses[&id]));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------- the checks

/// The tenant an event of request `id` must show: the helper task set its own.
fn expected_tenant(id: u64, message: &str) -> String {
    if message == "tokio::spawn: own tenant" {
        format!("{}/helper", tenant_of(id))
    } else {
        tenant_of(id)
    }
}

/// Counts each request's messages; every request must have logged each message once.
fn check_counts(seen: &BTreeMap<u64, Vec<String>>, requests: u64) -> Result<(), String> {
    if seen.len() as u64 != requests {
        return Err(format!("{} requests logged, not {requests}", seen.len()));
    }
    let mut expected: Vec<&str> = MESSAGES.to_vec();
    expected.sort_unstable();
    for (id, messages) in seen {
        let mut messages: Vec<&str> = messages.iter().map(String::as_str).collect();
        messages.sort_unstable();
        if messages != expected {
            return Err(format!("request {id} logged {messages:?}"));
        }
    }
    Ok(())
}

/// Parses every JSON line: each event is a JSON object whose `fields` hold the message,
/// `request_id` (a number) and `tenant` (a string) of its own request, and whose
/// `span` and `spans` name the `request` span with the same id.
pub(crate) fn check_json(lines: &[String], requests: u64) -> Result<(), String> {
    let mut seen: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for line in lines {
        let event: serde_json::Value =
            serde_json::from_str(line).map_err(|e| format!("not JSON ({e}): {line}"))?;
        let fields = &event["fields"];
        let message = fields["message"]
            .as_str()
            .ok_or(format!("no message: {line}"))?;
        let id = fields["request_id"]
            .as_u64()
            .ok_or(format!("no numeric request_id: {line}"))?;
        let tenant = fields["tenant"]
            .as_str()
            .ok_or(format!("no tenant: {line}"))?;
        if tenant != expected_tenant(id, message) {
            return Err(format!("wrong tenant: {line}"));
        }
        let span = &event["span"];
        if span["name"] != "request" || span["rid"].as_u64() != Some(id) {
            return Err(format!("not in its request's span: {line}"));
        }
        let spans = event["spans"]
            .as_array()
            .ok_or(format!("no spans: {line}"))?;
        if !spans.iter().any(|s| s["rid"].as_u64() == Some(id)) {
            return Err(format!("its request's span is not in the list: {line}"));
        }
        seen.entry(id).or_default().push(message.to_owned());
    }
    check_counts(&seen, requests)
}

/// Reads every text line: `LEVEL request{rid=ID}: target: message request_id=ID
/// tenant="..."`, the span prefix and the fields of its own request.
pub(crate) fn check_text(lines: &[String], requests: u64) -> Result<(), String> {
    let mut seen: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for line in lines {
        let (_, fields) = line
            .split_once(" request_id=")
            .ok_or(format!("no request_id: {line}"))?;
        let (id, tenant) = fields
            .split_once(" tenant=")
            .ok_or(format!("no tenant: {line}"))?;
        let id: u64 = id.parse().map_err(|_| format!("bad request_id: {line}"))?;
        let (_, rest) = line
            .split_once(&format!(" request{{rid={id}}}: "))
            .ok_or(format!("not in its request's span: {line}"))?;
        let (_, message) = rest.split_once(": ").ok_or(format!("no target: {line}"))?;
        let message = message
            .strip_suffix(&format!(" request_id={fields}"))
            .ok_or(format!("fields not after the message: {line}"))?;
        if tenant != format!("{:?}", expected_tenant(id, message)) {
            return Err(format!("wrong tenant: {line}"));
        }
        seen.entry(id).or_default().push(message.to_owned());
    }
    check_counts(&seen, requests)
}

/// The whole run: serve and load, then check both logs.
pub(crate) fn run(requests: u64, concurrency: usize) -> Result<(usize, usize), String> {
    let logs = install_logging();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?
        .block_on(serve_and_load(requests, concurrency))?;
    let (json, text) = (logs.json.lines(), logs.text.lines());
    check_json(&json, requests)?;
    check_text(&text, requests)?;
    Ok((json.len(), text.len()))
}

#[allow(dead_code)] // the test includes this file as a module and calls `run`
fn main() -> Result<(), String> {
    let started = Instant::now();
    let (requests, concurrency) = (256, 64);
    let (json, text) = run(requests, concurrency)?;
    let logs = install_logging();
    let of_seven = |lines: Vec<String>| {
        lines
            .into_iter()
            .filter(|line| line.contains("\"request_id\":7,") || line.contains("request_id=7 "))
            .take(4)
            .collect::<Vec<_>>()
    };
    println!("request 7, JSON (4 of {} lines):", MESSAGES.len());
    for line in of_seven(logs.json.lines()) {
        println!("  {line}");
    }
    println!("request 7, text:");
    for line in of_seven(logs.text.lines()) {
        println!("  {line}");
    }
    println!(
        "ok: {requests} requests ({concurrency} at a time); {json} JSON and {text} text log lines, \
         each with its request id, tenant and span, in {:.2?}",
        started.elapsed()
    );
    Ok(())
}
