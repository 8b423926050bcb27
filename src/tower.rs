//! Every HTTP request in a context of its own: a tower [`Layer`] (feature `tower`).
//!
//! A server runs each connection in a plain task, so without help a handler's `set`
//! would land in the worker thread's own context and reach every request that worker
//! serves next; it is refused instead, in every build (see
//! [`SetError`](crate::SetError)). [`ContextLayer`] gives each request what an asyncio
//! task gets in Python: a **copy of the context current when the service is called**,
//! in which
//!
//! * the request's [`Initializer`] runs first (for example [`RequestId`], which binds a
//!   request id from `x-request-id`, or a fresh one);
//! * the inner service's `call` and every poll of its future run, so `set`s in
//!   middleware and handlers stay in that request, across every `.await`;
//! * the response body is polled too (a streaming body sees the request's values as
//!   they were when the response was made).
//!
//! When the task that calls the service has a context of its own (a connection task
//! spawned with [`contextvars::tokio::spawn`](crate::tokio::spawn) or wrapped with
//! [`in_current_context`](crate::future::ContextFutureExt::in_current_context), or any
//! task of a runtime with the task hooks), that context is kept across the requests of a
//! keep-alive connection. When each request ends (its response body dropped, or its
//! future dropped without one), the layer gives that task back the bindings it started
//! with, so a value a middleware *outside* the layer set while serving one request does
//! not reach the next. A request such a middleware answers itself, without calling the
//! layer, runs no code of the crate and keeps its values for the next request: the crate
//! says so once on stderr, the first time a restore finds the task's bindings changed.
//! Add the layer last.
//!
//! It works for any service of `http::Request` to `http::Response` (axum, hyper-util;
//! tonic's servers take the same shape). With axum, add it **last**, so that it wraps
//! every route and every middleware added before it:
//!
//! ```
//! use std::sync::Arc;
//! use axum::{Router, routing::get};
//! use contextvars::ContextVar;
//! use contextvars::tower::{ContextLayer, RequestId};
//!
//! static REQUEST_ID: ContextVar<Arc<str>> = ContextVar::new("request_id");
//!
//! async fn handler() -> String {
//!     format!("request {}", REQUEST_ID.get())
//! }
//!
//! let app: Router = Router::new()
//!     .route("/", get(handler))
//!     .layer(ContextLayer::new().init(RequestId::new(&REQUEST_ID)));
//! # drop(app);
//! ```
//!
//! # Initializers
//!
//! An [`Initializer`] runs in the request's fresh context before the inner service is
//! called, and may `set` variables from the request's head (dropping the tokens keeps
//! the values for the whole request). A closure
//! `Fn(&http::request::Parts) -> Result<(), InitError>` is one, [`RequestId`] is one,
//! and a pair of initializers runs both. An initializer's error never fails the request:
//! the layer puts the [`InitError`] into the request's extensions, where a handler or a
//! logging middleware can read it (`request.extensions().get::<InitError>()`).
//!
//! # Cost
//!
//! Per request: one copy of the caller's context (a reference-count increment), the
//! initializer's sets, per poll of the future or the body a light frame (two
//! thread-local cell writes on entry and exit), and one more light frame to drop the
//! body inside the request's context. The request's context moves into the body (no
//! second copy). Finding and restoring the calling task's context costs a thread-local
//! read at the call and a compare when the request ends; a restore that finds the
//! task's bindings changed installs its starting snapshot (no allocation) and releases
//! the replaced one in an empty frame.

#![deny(unsafe_code)]

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use http::header::{HeaderName, HeaderValue};
use http::request::Parts;
use http_body::{Body, Frame as BodyFrame, SizeHint};
use pin_project_lite::pin_project;
pub use tower_layer::Layer;
pub use tower_service::Service;

use crate::ContextVar;
use crate::carry::{self, CarriedSpan};
use crate::engine::{self, Frame};
use crate::future::WithContext;
use crate::sync::{AtomicBool, OnceLock, StaticCounter, globals};

/// A tower [`Layer`] that runs each request in a copy of the context current when the
/// service is called; see the [module docs](self).
#[derive(Clone, Debug, Default)]
pub struct ContextLayer<I = NoInit> {
    init: I,
}

impl ContextLayer {
    /// The layer, with no initializer: each request starts with a copy of the caller's
    /// context.
    pub fn new() -> Self {
        Self { init: NoInit }
    }
}

impl<I> ContextLayer<I> {
    /// Runs `init` in each request's fresh context before the inner service is called.
    ///
    /// ```
    /// use contextvars::ContextVar;
    /// use contextvars::tower::{ContextLayer, InitError};
    ///
    /// static TENANT: ContextVar<String> = ContextVar::with_default("tenant", String::new());
    ///
    /// let layer = ContextLayer::new().init(|request: &http::request::Parts| {
    ///     let tenant = request.headers.get("x-tenant").ok_or(InitError::new("no x-tenant"))?;
    ///     let tenant = tenant.to_str().map_err(|_| InitError::new("x-tenant is not ASCII"))?;
    ///     drop(TENANT.set(tenant.to_owned())); // kept for the whole request
    ///     Ok(())
    /// });
    /// # drop(layer);
    /// ```
    pub fn init<J: Initializer>(self, init: J) -> ContextLayer<J> {
        ContextLayer { init }
    }
}

impl<S, I: Clone> Layer<S> for ContextLayer<I> {
    type Service = ContextService<S, I>;

    fn layer(&self, inner: S) -> Self::Service {
        ContextService {
            inner,
            init: self.init.clone(),
        }
    }
}

/// The service [`ContextLayer`] makes: `inner`, each of whose requests runs in a context
/// of its own.
#[derive(Clone, Debug)]
pub struct ContextService<S, I = NoInit> {
    inner: S,
    init: I,
}

impl<S, I> ContextService<S, I> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The wrapped service, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, I, ReqBody, ResBody> Service<http::Request<ReqBody>> for ContextService<S, I>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    I: Initializer,
{
    type Response = http::Response<ContextBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        crate::pool::note_request_layer();
        let mut frame = Frame::private(engine::vars());
        let (inner, init) = (&mut self.inner, &self.init);
        let future = engine::run_in(&mut frame, || {
            let (mut parts, body) = request.into_parts();
            if let Err(error) = init.initialize_head(&mut parts) {
                parts.extensions.insert(error);
            }
            inner.call(http::Request::from_parts(parts, body))
        });
        ResponseFuture {
            inner: WithContext::new(future, frame),
            carrier: Some(Carrier::current()),
        }
    }
}

pin_project! {
    /// The future of a [`ContextService`] call: the inner future, polled in the request's
    /// context, whose response body is then polled in it too.
    #[must_use = "futures do nothing unless polled"]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: WithContext<F>,
        // Handed to the response's body; restored here if there is none (an error, or
        // the future dropped before it finished).
        carrier: Option<Carrier>,
    }

    impl<F> PinnedDrop for ResponseFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            // The request's future first (inside its context), then the connection.
            this.inner.end();
            if let Some(carrier) = this.carrier.take() {
                carrier.restore();
            }
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<ContextBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.project();
        // The request's context, as the response left it, goes to the body: it is polled
        // and dropped in it.
        this.inner
            .poll_to_end(cx)
            .map(|(result, mut frame, span)| match result {
                Ok(response) => Ok(response.map(|body| ContextBody {
                    inner: Some(body),
                    // A context object the handler made (`Context::current`) is left
                    // now, as its future ended: the body runs in a private copy.
                    frame: frame.into_private(),
                    span,
                    carrier: this.carrier.take(),
                })),
                Err(error) => {
                    engine::release_isolated(&mut frame);
                    Err(error)
                }
            })
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

pin_project! {
    /// A response body polled in the context its request had when the response was made.
    ///
    /// It is also dropped in that context: when a client goes away mid-stream, the
    /// body's clean-up (and whatever it logs) sees the request's values, and a `set` in
    /// its destructor stays in the request.
    pub struct ContextBody<B> {
        #[pin]
        inner: Option<B>,
        frame: Frame,
        span: CarriedSpan,
        // Set by `ResponseFuture` when it hands the body out.
        carrier: Option<Carrier>,
    }

    impl<B> PinnedDrop for ContextBody<B> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            // The request is over, before the connection is restored.
            carry::drop_in_frame(this.inner, this.frame, this.span);
            // The response is done: the connection is ready for its next request.
            if let Some(carrier) = this.carrier.take() {
                carrier.restore();
            }
        }
    }
}

/// The task that called the service (a server's connection task), if it runs in a
/// context of its own that remembers its starting bindings: a task spawned with
/// [`contextvars::tokio::spawn`](crate::tokio::spawn) or
/// [`in_current_context`](crate::future::ContextFutureExt::in_current_context), or any task of a
/// runtime with the task hooks (`contextvars::tokio::isolate_tasks`). Such a context is
/// kept across the requests of a keep-alive connection; when a request is done (its
/// response body dropped, or its future dropped without a response), the task gets back
/// the bindings it started with, so that nothing a middleware outside the layer set
/// while serving one request (before or after calling the layer) reaches the next
/// request on the connection. A connection task in its worker's own context has
/// nothing to restore: such a set is refused there.
#[derive(Clone, Copy)]
struct Carrier {
    /// The task's frame (`engine::origin_frame`), 0 if it has none to restore.
    frame: u64,
}

impl Carrier {
    #[inline]
    fn current() -> Self {
        Self {
            frame: engine::origin_frame(),
        }
    }

    /// Restores the calling task's bindings, if its frame is the current one (a body
    /// dropped by another task, or outside a poll, restores nothing).
    #[inline]
    fn restore(self) {
        if self.frame != 0 && engine::restore_origin(self.frame) {
            note_set_outside_layer();
        }
    }
}

globals! {
    /// Whether [`note_set_outside_layer`] has spoken (once per process).
    static NOTED_SET_OUTSIDE_LAYER: AtomicBool = const AtomicBool::new(false);
}

/// Said once per process: a connection task's own bindings changed while it served a
/// request through the layer, so code outside the layer (a middleware the layer does not
/// wrap) sets variables. The restore after each request keeps that from reaching the
/// next request, but only for requests that reach the layer: a request the middleware
/// answers itself leaves its values for the next one. In a worker's own context the
/// same set is refused with a message that names the layer's order.
#[cold]
fn note_set_outside_layer() {
    crate::pool::say_once(&NOTED_SET_OUTSIDE_LAYER, SET_OUTSIDE_LAYER);
}

/// What [`note_set_outside_layer`] prints.
const SET_OUTSIDE_LAYER: &str = "contextvars: code outside \
    `contextvars::tower::ContextLayer` (a middleware the layer does not wrap) set a context \
    variable in the context of the task that called the layer (a server's connection \
    task). The crate gives that task back its starting bindings after each request that \
    reaches the layer, but a request that middleware answers itself (a rejection) leaves \
    its values to the next request on the connection. Add the context layer last (with \
    axum) or first in a `ServiceBuilder`, so it wraps every middleware. This note is \
    printed once.";

const BODY_GONE: &str = "the inner body lives as long as the wrapper";

impl<B> ContextBody<B> {
    /// The wrapped body.
    pub fn get_ref(&self) -> &B {
        self.inner.as_ref().expect(BODY_GONE)
    }

    /// The wrapped body, unwrapped (it is then dropped wherever its new owner drops it).
    pub fn into_inner(mut self) -> B {
        self.inner.take().expect(BODY_GONE)
    }
}

impl<B: Body> Body for ContextBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<BodyFrame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let inner = this.inner.as_pin_mut().expect(BODY_GONE);
        let frame = this.frame;
        this.span
            .in_span(|| engine::run_in(frame, || inner.poll_frame(cx)))
    }

    fn is_end_stream(&self) -> bool {
        self.get_ref().is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.get_ref().size_hint()
    }
}

impl<B> fmt::Debug for ContextBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContextBody").finish_non_exhaustive()
    }
}

// ------------------------------------------------------------------------- initializers

/// Sets variables from a request's head, in the request's fresh context, before the
/// inner service is called; see [`ContextLayer::init`].
pub trait Initializer: Clone + Send + Sync + 'static {
    /// Sets what the request says (the tokens may be dropped: the values then stay for
    /// the whole request). An error does not fail the request: the layer puts it into
    /// the request's extensions.
    fn initialize(&self, request: &Parts) -> Result<(), InitError>;

    /// What the layer calls: [`initialize`](Self::initialize), unless an initializer has
    /// more to say than an [`InitError`] and puts it into the request's extensions (the
    /// `opentelemetry` feature's `Propagation` adds its `ExtractReport`). The head is the
    /// one the inner service receives.
    fn initialize_head(&self, request: &mut Parts) -> Result<(), InitError> {
        self.initialize(request)
    }
}

/// No initializer ([`ContextLayer::new`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoInit;

impl Initializer for NoInit {
    fn initialize(&self, _: &Parts) -> Result<(), InitError> {
        Ok(())
    }
}

impl<F> Initializer for F
where
    F: Fn(&Parts) -> Result<(), InitError> + Clone + Send + Sync + 'static,
{
    fn initialize(&self, request: &Parts) -> Result<(), InitError> {
        self(request)
    }
}

/// Both, in order; both run even if the first fails, and the first error is returned.
impl<A: Initializer, B: Initializer> Initializer for (A, B) {
    fn initialize(&self, request: &Parts) -> Result<(), InitError> {
        let first = self.0.initialize(request);
        let second = self.1.initialize(request);
        first.and(second)
    }

    fn initialize_head(&self, request: &mut Parts) -> Result<(), InitError> {
        let first = self.0.initialize_head(request);
        let second = self.1.initialize_head(request);
        first.and(second)
    }
}

/// An initializer's complaint about a request: reported in the request's extensions,
/// never a failed request or a panic.
#[derive(Clone, PartialEq, Eq)]
pub struct InitError {
    message: Cow<'static, str>,
}

impl InitError {
    /// An error saying `message`.
    pub fn new(message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            message: message.into(),
        }
    }

    /// What was wrong.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Debug for InitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("InitError").field(&self.message).finish()
    }
}

impl fmt::Display for InitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for InitError {}

/// Binds a request id: the request's `x-request-id` header (or another one) if it can be
/// trusted, otherwise a fresh id, like tower-http's request-id layer.
///
/// A header is trusted only if it appears once, is not empty, is at most
/// [`max_len`](Self::max_len) bytes (128 unless set) and is visible ASCII; otherwise the
/// request gets a fresh id and the layer reports why ([`InitError`] in the request's
/// extensions). Fresh ids are 16 hex digits, unique in the process and unpredictable
/// across processes.
#[derive(Clone, Debug)]
pub struct RequestId {
    var: &'static ContextVar<Arc<str>>,
    header: HeaderName,
    max_len: usize,
}

impl RequestId {
    /// Binds `var` from `x-request-id`.
    pub fn new(var: &'static ContextVar<Arc<str>>) -> Self {
        Self {
            var,
            header: HeaderName::from_static("x-request-id"),
            max_len: 128,
        }
    }

    /// Reads `header` instead of `x-request-id`.
    pub fn header(mut self, header: HeaderName) -> Self {
        self.header = header;
        self
    }

    /// Trusts header values of at most `max_len` bytes (at least 1).
    pub fn max_len(mut self, max_len: usize) -> Self {
        self.max_len = max_len.max(1);
        self
    }

    /// The header's value if it can be trusted, else why not.
    fn trusted<'a>(&self, request: &'a Parts) -> Result<Option<&'a str>, &'static str> {
        let mut values = request.headers.get_all(&self.header).iter();
        let Some(value) = values.next() else {
            return Ok(None);
        };
        if values.next().is_some() {
            return Err("appears more than once");
        }
        check_request_id(value, self.max_len).map(Some)
    }
}

fn check_request_id(value: &HeaderValue, max_len: usize) -> Result<&str, &'static str> {
    if value.is_empty() {
        return Err("is empty");
    }
    if value.len() > max_len {
        return Err("is longer than the limit");
    }
    // `HeaderValue::to_str` also accepts spaces and tabs; an id is visible ASCII only.
    let bytes = value.as_bytes();
    if !bytes.iter().all(|byte| (0x21..=0x7e).contains(byte)) {
        return Err("is not visible ASCII");
    }
    value.to_str().map_err(|_| "is not visible ASCII")
}

impl Initializer for RequestId {
    fn initialize(&self, request: &Parts) -> Result<(), InitError> {
        let (id, outcome) = match self.trusted(request) {
            Ok(Some(id)) => (Arc::from(id), Ok(())),
            Ok(None) => (fresh_request_id(), Ok(())),
            Err(reason) => (
                fresh_request_id(),
                Err(InitError::new(format!(
                    "untrusted {} header ({reason}): the request got a fresh id",
                    self.header
                ))),
            ),
        };
        self.var
            .try_set(id)
            .map(drop)
            .map_err(|error| InitError::new(error.to_string()))?;
        outcome
    }
}

/// A fresh request id: 16 hex digits, from a process-wide counter mixed with a seed
/// drawn once per process (std's `RandomState`), so ids do not repeat within a process
/// and are not guessable across processes.
pub fn fresh_request_id() -> Arc<str> {
    static COUNTER: StaticCounter = StaticCounter::new(0);
    static SEED: OnceLock<u64> = OnceLock::new();
    let seed = *SEED.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish()
    });
    // splitmix64 of a per-process permutation of the counter: distinct inputs give
    // distinct outputs (it is a bijection on u64).
    let mut z = seed.wrapping_add(COUNTER.fetch_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    Arc::from(format!("{z:016x}"))
}
