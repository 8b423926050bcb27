//! Every HTTP request in a context of its own: a tower [`Layer`] for [`contextvars`].
//!
//! A server runs each connection in a plain task, so without help a handler's `set`
//! would land in the worker thread's own context and reach every request that worker
//! serves next; it is refused instead, in every build (see
//! [`SetError`](contextvars::SetError)). [`ContextLayer`] gives each request what an asyncio
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
//! spawned with `contextvars::tokio::spawn` (feature `tokio`) or wrapped with
//! [`in_copied_context`](contextvars::future::ContextFutureExt::in_copied_context), or any
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
//! use contextvars_tower::{ContextLayer, RequestId};
//!
//! static REQUEST_ID: ContextVar<Arc<str>> = contextvars::context_var!(Arc<str>, "request_id");
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

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use pin_project_lite::pin_project;
pub use tower_layer::Layer;
pub use tower_service::Service;

use std::sync::atomic::{AtomicBool, Ordering};

use contextvars::plumbing::{self, CallerFrames, TaskFrame};

mod body;
mod init;

pub use body::ContextBody;
pub use init::{InitError, Initializer, NoInit, RequestId, fresh_request_id};

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
    /// use contextvars_tower::{ContextLayer, InitError};
    ///
    /// static TENANT: ContextVar<String> = contextvars::context_var!(String, "tenant", default String::new());
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
        plumbing::note_request_layer();
        let mut frame = TaskFrame::capture();
        let (inner, init) = (&mut self.inner, &self.init);
        let future = frame.enter(|| {
            let (mut parts, body) = request.into_parts();
            if let Err(error) = init.initialize_head(&mut parts) {
                parts.extensions.insert(error);
            }
            inner.call(http::Request::from_parts(parts, body))
        });
        ResponseFuture {
            inner: Some(future),
            frame,
            caller: CallerFrames::record(),
        }
    }
}

pin_project! {
    /// The future of a [`ContextService`] call: the inner future, polled in the request's
    /// context, whose response body is then polled in it too.
    #[must_use = "futures do nothing unless polled"]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: Option<F>,
        frame: TaskFrame,
        // The task that called the service (see `restore_caller`): handed to the
        // response's body; restored here if there is none (an error, or the future
        // dropped before it finished).
        caller: CallerFrames,
    }

    impl<F> PinnedDrop for ResponseFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            // The request's future first (inside its context), then the connection.
            this.frame.end_pinned(this.inner);
            restore_caller(this.caller);
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<ContextBody<B>>, E>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut inner = this.inner;
        // When the future is ready it is dropped inside the same entry of the request's
        // context, which then goes to the body (no second entry, no copy of it).
        let polled = this.frame.enter(|| {
            let polled = inner
                .as_mut()
                .as_pin_mut()
                .expect("polled after it completed")
                .poll(cx);
            if polled.is_ready() {
                inner.set(None);
            }
            polled
        });
        polled.map(|result| {
            let mut frame = std::mem::replace(this.frame, TaskFrame::empty());
            match result {
                Ok(response) => Ok(response.map(|body| ContextBody {
                    inner: Some(body),
                    // A context object the handler made (`Context::current`) is left
                    // now, as its future ended: the body runs in a private copy.
                    frame: frame.into_private(),
                    caller: std::mem::take(this.caller),
                })),
                Err(error) => {
                    frame.release();
                    Err(error)
                }
            }
        })
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

/// Gives the task that called the service (a server's connection task) back the
/// bindings it started with, once the request is over, if it runs in a context of its
/// own that remembers them: a task spawned with `contextvars::tokio::spawn` (feature
/// `tokio`) or [`in_copied_context`](contextvars::future::ContextFutureExt::in_copied_context),
/// or any task of a runtime with the task hooks (`contextvars::tokio::isolate_tasks`).
/// Such a context is kept across the requests of a keep-alive connection; the restore
/// keeps anything a middleware outside the layer set while serving one request (before
/// or after calling the layer) from reaching the next request on the connection. A
/// connection task in its worker's own context has nothing to restore: such a set is
/// refused there. See [`CallerFrames`] for which frames are restored, and when.
#[inline]
fn restore_caller(caller: &mut CallerFrames) {
    if caller.restore() {
        note_set_outside_layer();
    }
}

/// Whether [`note_set_outside_layer`] has spoken (once per process).
static NOTED_SET_OUTSIDE_LAYER: AtomicBool = AtomicBool::new(false);

/// Said once per process: a connection task's own bindings changed while it served a
/// request through the layer, so code outside the layer (a middleware the layer does not
/// wrap) sets variables. The restore after each request keeps that from reaching the
/// next request, but only for requests that reach the layer: a request the middleware
/// answers itself leaves its values for the next one. In a worker's own context the
/// same set is refused with a message that names the layer's order.
#[cold]
fn note_set_outside_layer() {
    // Relaxed: two threads racing here print it once between them, as `swap` hands
    // `false` to one.
    if !NOTED_SET_OUTSIDE_LAYER.swap(true, Ordering::Relaxed) {
        eprintln!("{SET_OUTSIDE_LAYER}");
    }
}

/// What [`note_set_outside_layer`] prints.
const SET_OUTSIDE_LAYER: &str = "contextvars: code outside \
    `contextvars_tower::ContextLayer` (a middleware the layer does not wrap) set a context \
    variable in the context of the task that called the layer (a server's connection \
    task). The crate gives that task back its starting bindings after each request that \
    reaches the layer, but a request that middleware answers itself (a rejection) leaves \
    its values to the next request on the connection. Add the context layer last (with \
    axum) or first in a `ServiceBuilder`, so it wraps every middleware. This note is \
    printed once.";
