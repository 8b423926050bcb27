//! Context across processes: two axum services on 127.0.0.1, A and B.
//!
//! A receives a request, sets the request id, the tenant, a deadline and an auth token
//! in its context, opens a span, and calls B through a tower client wrapped in
//! [`InjectLayer`]. B's server runs [`ContextLayer`] with the same [`Propagation`] as
//! its initializer, so B's handler, the task it spawns
//! (`contextvars::tokio::spawn`) and its rayon job see A's request id, tenant and the
//! deadline's remaining time (sent as milliseconds left, not as a clock reading), but
//! not the auth token (not declared, so never sent); B's span is a child of A's span, in
//! A's trace. Neither service has a line of header code.
//!
//! The example sends itself a bounded number of concurrent requests, checks every
//! answer and every span, prints a summary and exits (`tests/it/otel.rs` runs the same
//! services with 1,000 requests, 64 at a time).
//!
//! ```text
//! cargo run --example across_processes --features tokio,rayon
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::get;
use contextvars::context_var;
use contextvars_opentelemetry::{Deadline, InjectLayer, InjectService, Int, OTEL_CONTEXT};
use contextvars_opentelemetry::{Propagation, Text};
use contextvars_tower::{ContextLayer, Layer, Service};
use futures_util::StreamExt;
use opentelemetry::trace::{Span, TraceContextExt, Tracer, TracerProvider};
use opentelemetry::{Context as OtelContext, KeyValue};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider, SpanData, SpanExporter};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

context_var! {
    /// The request being served.
    static REQUEST_ID: u64;
    /// Who it is served for.
    static TENANT: Arc<str>;
    /// When the answer is no longer wanted.
    static DEADLINE: Instant;
    /// The caller's credentials: never leave the process (not declared).
    static AUTH_TOKEN: String;
}

/// How long A gives each request.
pub(crate) const BUDGET: Duration = Duration::from_secs(30);

/// What crosses between the services: declared once, shared by both sides.
pub(crate) fn propagation() -> Propagation {
    Propagation::new()
        .var(&REQUEST_ID, "request_id", Int)
        .var(&TENANT, "tenant", Text)
        .var(&DEADLINE, "deadline_ms", Deadline)
}

/// The tenant of request `id`: with characters that need encoding on the wire.
pub(crate) fn tenant_for(id: u64) -> String {
    format!("tenant {}, ü=%{}\\", id % 7, id % 3)
}

// ------------------------------------------------------------------------- tracing

/// An exporter that keeps every finished span, to check the parents afterwards.
#[derive(Clone, Debug, Default)]
struct Collect(Arc<Mutex<Vec<SpanData>>>);

impl SpanExporter for Collect {
    fn export(&self, batch: Vec<SpanData>) -> impl Future<Output = OTelSdkResult> + Send {
        self.0.lock().unwrap().extend(batch);
        std::future::ready(Ok(()))
    }
}

fn tracing() -> &'static (SdkTracerProvider, Collect) {
    static TRACING: OnceLock<(SdkTracerProvider, Collect)> = OnceLock::new();
    TRACING.get_or_init(|| {
        let spans = Collect::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(spans.clone())
            .build();
        (provider, spans)
    })
}

fn tracer() -> SdkTracer {
    tracing().0.tracer("across_processes")
}

// ------------------------------------------------------------------------- service B

/// What B saw, one line each: id, tenant, remaining ms, the spawned task's id and tenant,
/// the rayon job's id and tenant, whether the auth token arrived.
async fn b_handler() -> String {
    let mut span = tracer().start_with_context("b", &OTEL_CONTEXT.get());
    let id = REQUEST_ID.get();
    span.set_attribute(KeyValue::new("request_id", id as i64));
    let remaining = DEADLINE.get().saturating_duration_since(Instant::now());
    let spawned = contextvars::tokio::spawn(async {
        tokio::task::yield_now().await;
        (REQUEST_ID.get(), TENANT.get())
    })
    .await
    .expect("spawned task");
    let (sender, receiver) = tokio::sync::oneshot::channel();
    contextvars::rayon::spawn(move || {
        let _ = sender.send((REQUEST_ID.get(), TENANT.get()));
    });
    let on_rayon = receiver.await.expect("rayon job");
    span.end();
    format!(
        "{id}\n{}\n{}\n{}\n{}\n{}\n{}\n{}",
        TENANT.get(),
        remaining.as_millis(),
        spawned.0,
        spawned.1,
        on_rayon.0,
        on_rayon.1,
        AUTH_TOKEN.is_set(),
    )
}

// ------------------------------------------------------------------------- service A

/// A tower HTTP client, as small as it gets: one `GET` per connection.
#[derive(Clone, Debug)]
struct Client {
    addr: SocketAddr,
}

impl Service<http::Request<()>> for Client {
    type Response = String;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<String>> + Send>>;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<()>) -> Self::Future {
        let mut head = format!("GET {} HTTP/1.1\r\nhost: {}\r\n", request.uri(), self.addr);
        for (name, value) in request.headers() {
            head.push_str(&format!("{name}: {}\r\n", value.to_str().unwrap_or("")));
        }
        head.push_str("connection: close\r\n\r\n");
        Box::pin(get_body(self.addr, head))
    }
}

async fn get_body(addr: SocketAddr, head: String) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(head.as_bytes()).await?;
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

/// Sets the request's values, opens a span, calls B: no header code.
async fn a_handler(State(mut b): State<InjectService<Client>>, headers: HeaderMap) -> String {
    let id: u64 = headers
        .get("x-id")
        .and_then(|id| id.to_str().ok()?.parse().ok())
        .unwrap_or(0);
    drop(REQUEST_ID.set(id));
    drop(TENANT.set(Arc::from(tenant_for(id))));
    drop(DEADLINE.set(Instant::now() + BUDGET));
    drop(AUTH_TOKEN.set("secret".to_owned()));
    let mut span = tracer().start_with_context("a", &OtelContext::new());
    span.set_attribute(KeyValue::new("request_id", id as i64));
    let cx = OtelContext::new().with_span(span);
    drop(OTEL_CONTEXT.set(cx.clone()));
    let answer = b.call(http::Request::get("/b").body(()).unwrap()).await;
    cx.span().end();
    answer.unwrap_or_else(|error| format!("error: {error}"))
}

// ------------------------------------------------------------------------- the run

/// What B saw for one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Seen {
    pub(crate) id: u64,
    pub(crate) tenant: String,
    pub(crate) remaining_ms: u64,
    pub(crate) spawned: (u64, String),
    pub(crate) on_rayon: (u64, String),
    pub(crate) auth_token: bool,
}

fn parse(body: &str) -> Result<Seen, String> {
    let lines: Vec<&str> = body.split('\n').collect();
    let [
        id,
        tenant,
        remaining,
        spawned_id,
        spawned_tenant,
        rayon_id,
        rayon_tenant,
        auth,
    ] = lines[..]
    else {
        return Err(format!("unexpected answer {body:?}"));
    };
    let number = |text: &str| text.parse::<u64>().map_err(|e| format!("{text:?}: {e}"));
    Ok(Seen {
        id: number(id)?,
        tenant: tenant.to_owned(),
        remaining_ms: number(remaining)?,
        spawned: (number(spawned_id)?, spawned_tenant.to_owned()),
        on_rayon: (number(rayon_id)?, rayon_tenant.to_owned()),
        auth_token: auth == "true",
    })
}

/// Starts A and B on 127.0.0.1, sends A `requests` requests, `concurrency` at a time,
/// and returns what B saw for each (by the id sent), and every span of the run.
pub(crate) async fn run(
    requests: u64,
    concurrency: usize,
) -> Result<(HashMap<u64, Seen>, Vec<SpanData>), Box<dyn std::error::Error>> {
    let propagation = propagation();
    let b_listener = TcpListener::bind("127.0.0.1:0").await?;
    let b_addr = b_listener.local_addr()?;
    let b = Router::new()
        .route("/b", get(b_handler))
        .layer(ContextLayer::new().init(propagation.clone()));
    tokio::spawn(async move { axum::serve(b_listener, b).await });

    let a_listener = TcpListener::bind("127.0.0.1:0").await?;
    let a_addr = a_listener.local_addr()?;
    let client = InjectLayer::new(propagation).layer(Client { addr: b_addr });
    let a = Router::new()
        .route("/a", get(a_handler))
        .with_state(client)
        .layer(ContextLayer::new());
    tokio::spawn(async move { axum::serve(a_listener, a).await });

    tracing().1.0.lock().unwrap().clear();
    let answers: Vec<(u64, std::io::Result<String>)> = futures_util::stream::iter(1..=requests)
        .map(|id| async move {
            let head = format!(
                "GET /a HTTP/1.1\r\nhost: {a_addr}\r\nx-id: {id}\r\nconnection: close\r\n\r\n"
            );
            (id, get_body(a_addr, head).await)
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let mut seen = HashMap::new();
    for (id, answer) in answers {
        seen.insert(id, parse(&answer?)?);
    }
    let spans = std::mem::take(&mut *tracing().1.0.lock().unwrap());
    Ok((seen, spans))
}

/// Checks every answer and span; returns a summary line.
pub(crate) fn check(
    requests: u64,
    seen: &HashMap<u64, Seen>,
    spans: &[SpanData],
) -> Result<String, String> {
    let mut min_remaining = u64::MAX;
    for id in 1..=requests {
        let tenant = tenant_for(id);
        let expected = Seen {
            id,
            tenant: tenant.clone(),
            remaining_ms: 0,
            spawned: (id, tenant.clone()),
            on_rayon: (id, tenant),
            auth_token: false,
        };
        let got = seen.get(&id).ok_or(format!("request {id}: no answer"))?;
        if (Seen {
            remaining_ms: 0,
            ..got.clone()
        }) != expected
        {
            return Err(format!("request {id}: B saw {got:?}"));
        }
        // The deadline arrives as time remaining: at most A's budget, and not much less.
        if got.remaining_ms > BUDGET.as_millis() as u64
            || got.remaining_ms < BUDGET.as_millis() as u64 - 10_000
        {
            return Err(format!(
                "request {id}: {} ms remaining of {BUDGET:?}",
                got.remaining_ms
            ));
        }
        min_remaining = min_remaining.min(got.remaining_ms);
    }
    // Spans: each request's B span is a child of its A span, in A's trace.
    let id_of = |span: &SpanData| {
        span.attributes
            .iter()
            .find(|kv| kv.key.as_str() == "request_id")
            .map(|kv| kv.value.to_string())
    };
    let a_spans: HashMap<String, &SpanData> = spans
        .iter()
        .filter(|span| span.name == "a")
        .filter_map(|span| Some((id_of(span)?, span)))
        .collect();
    let mut children = 0;
    for b in spans.iter().filter(|span| span.name == "b") {
        let id = id_of(b).ok_or("a B span without request_id")?;
        let a = a_spans.get(&id).ok_or(format!("request {id}: no A span"))?;
        if b.span_context.trace_id() != a.span_context.trace_id()
            || b.parent_span_id != a.span_context.span_id()
            || !b.parent_span_is_remote
        {
            return Err(format!(
                "request {id}: B's span is not a remote child of A's"
            ));
        }
        children += 1;
    }
    if children != requests || a_spans.len() as u64 != requests {
        return Err(format!(
            "{children} B spans and {} A spans for {requests} requests",
            a_spans.len()
        ));
    }
    Ok(format!(
        "{requests} requests: B saw A's request id, tenant and deadline (in its handler, a spawned task and a rayon job; at least {min_remaining} of {} ms left), never the auth token; {children} B spans, each a child of its A span",
        BUDGET.as_millis()
    ))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    const REQUESTS: u64 = 200;
    let started = Instant::now();
    let (seen, spans) = run(REQUESTS, 16).await?;
    let summary = check(REQUESTS, &seen, &spans)?;
    println!("{summary}; {:?}", started.elapsed());
    Ok(())
}
