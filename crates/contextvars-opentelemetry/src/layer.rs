//! The two tower sides: extracting on the way in (a [`Propagation`] is an
//! [`Initializer`] of the server-side [`ContextLayer`](contextvars_tower::ContextLayer)), and
//! injecting on the way out ([`InjectLayer`], for tower HTTP clients).

#![deny(unsafe_code)]

use std::task::{Context as TaskContext, Poll};

use http::request::Parts;

use super::propagate::Propagation;
use contextvars_tower::{InitError, Initializer, Layer, Service};

/// The server side: binds the declared variables and
/// [`OTEL_CONTEXT`](super::OTEL_CONTEXT) from the request's headers in the request's
/// fresh context, before the inner service is called.
///
/// When something was ignored, the request's extensions get the
/// [`ExtractReport`](super::ExtractReport); when that includes malformed input (anything
/// but unknown baggage keys) they also get an [`InitError`] that summarises it. The
/// request is served either way.
///
/// ```
/// use axum::{Router, routing::get};
/// use contextvars_opentelemetry::{Int, Propagation};
/// use contextvars_tower::ContextLayer;
///
/// contextvars::context_var! { static USER: u32; }
///
/// let propagation = Propagation::new().var(&USER, "user", Int);
/// let app: Router = Router::new()
///     .route("/", get(|| async { format!("user {}", USER.get_or(0)) }))
///     .layer(ContextLayer::new().init(propagation));
/// # drop(app);
/// ```
impl Initializer for Propagation {
    fn initialize(&self, request: &Parts) -> Result<(), InitError> {
        let (report, error) = self.extract_here(&request.headers);
        outcome(&report, error)
    }

    fn initialize_head(&self, request: &mut Parts) -> Result<(), InitError> {
        let (report, error) = self.extract_here(&request.headers);
        let outcome = outcome(&report, error);
        if !report.is_empty() {
            request.extensions.insert(report);
        }
        outcome
    }
}

fn outcome(
    report: &super::ExtractReport,
    error: Option<contextvars::SetError>,
) -> Result<(), InitError> {
    if let Some(error) = error {
        return Err(InitError::new(error.to_string()));
    }
    if report.malformed() > 0 {
        return Err(InitError::new(format!(
            "propagation headers partly ignored: {report}"
        )));
    }
    Ok(())
}

/// The client side: a tower [`Layer`] whose service writes the current context into
/// each outgoing request's headers ([`Propagation::inject`]) before passing it on; for
/// tower HTTP clients (hyper-util's, reqwest-style middleware stacks, or a hand-written
/// `Service<http::Request<B>>`).
///
/// The headers are written when the request is **called**, from the caller's current
/// context, so call the client inside the context whose values should travel.
///
/// ```
/// use std::convert::Infallible;
/// use std::future::{Ready, ready};
/// use std::task::{Context, Poll};
/// use contextvars_opentelemetry::{InjectLayer, Int, Propagation};
/// use contextvars_tower::{Layer, Service};
///
/// contextvars::context_var! { static USER: u32; }
///
/// /// A stand-in client that answers with the request's baggage header.
/// struct Echo;
///
/// impl Service<http::Request<()>> for Echo {
///     type Response = String;
///     type Error = Infallible;
///     type Future = Ready<Result<String, Infallible>>;
///
///     fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
///         Poll::Ready(Ok(()))
///     }
///
///     fn call(&mut self, request: http::Request<()>) -> Self::Future {
///         let baggage = request.headers().get("baggage");
///         ready(Ok(baggage.map_or("", |b| b.to_str().unwrap()).to_owned()))
///     }
/// }
///
/// let propagation = Propagation::new().var(&USER, "user", Int);
/// let mut client = InjectLayer::new(propagation).layer(Echo);
/// let future = USER.scope(5, || client.call(http::Request::new(())));
/// # let waker = std::task::Waker::noop();
/// # let mut future = std::pin::pin!(future);
/// # let Poll::Ready(answer) = future.as_mut().poll(&mut Context::from_waker(waker)) else { panic!() };
/// assert_eq!(answer.unwrap(), "user=5");
/// ```
#[derive(Clone, Debug)]
pub struct InjectLayer {
    propagation: Propagation,
}

impl InjectLayer {
    /// Injects what `propagation` declares.
    pub fn new(propagation: Propagation) -> Self {
        Self { propagation }
    }
}

impl<S> Layer<S> for InjectLayer {
    type Service = InjectService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        InjectService {
            inner,
            propagation: self.propagation.clone(),
        }
    }
}

/// The service [`InjectLayer`] makes: `inner`, whose requests carry the caller's context.
#[derive(Clone, Debug)]
pub struct InjectService<S> {
    inner: S,
    propagation: Propagation,
}

impl<S> InjectService<S> {
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

impl<S, B> Service<http::Request<B>> for InjectService<S>
where
    S: Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        self.propagation.inject(request.headers_mut());
        self.inner.call(request)
    }
}
