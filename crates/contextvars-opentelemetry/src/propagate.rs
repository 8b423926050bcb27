//! The registry of declared variables, and inject / extract through OpenTelemetry's
//! propagators.

#![deny(unsafe_code)]

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use ::opentelemetry::Context as OtelContext;
use ::opentelemetry::baggage::{Baggage, BaggageExt, BaggageMetadata};
use ::opentelemetry::propagation::{TextMapCompositePropagator, TextMapPropagator};
use ::opentelemetry::trace::TraceContextExt;
use http::HeaderMap;
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};

use super::codec::{Codec, DecodeError};
use super::report::{ExtractReport, Reason};
use super::wire::{self, HeaderInjector};
use contextvars::{Context, ContextVar, SetError, Snapshot, copy_context};

/// The OpenTelemetry [`Context`](::opentelemetry::Context) of the current request: the
/// remote span context and the baggage [`Propagation::extract`] received, or what the
/// program put here (for example the context of its own span, for
/// [`inject`](Propagation::inject) to send as the parent).
///
/// It is an ordinary context variable, so it follows the work into spawned tasks,
/// threads and rayon jobs like the others. It is never sent as baggage.
///
/// ```
/// use contextvars_opentelemetry::OTEL_CONTEXT;
/// use opentelemetry::trace::TraceContextExt;
///
/// // Unset outside an extracted request: read it with a fallback.
/// let cx = OTEL_CONTEXT.try_get().unwrap_or_default();
/// assert!(!cx.span().span_context().is_valid());
/// ```
pub static OTEL_CONTEXT: ContextVar<OtelContext> =
    contextvars::context_var!(OtelContext, "opentelemetry.context");

/// One declared variable, its type erased.
trait Declared: Send + Sync {
    fn name(&self) -> &'static str;
    fn encode_in(&self, snapshot: &Snapshot) -> Option<String>;
    fn bind(&self, text: &str, target: &mut Target) -> Result<(), DecodeError>;
}

struct Var<T: 'static, C> {
    var: &'static ContextVar<T>,
    codec: C,
}

impl<T: Send + Sync + 'static, C: Codec<T>> Declared for Var<T, C> {
    fn name(&self) -> &'static str {
        self.var.name()
    }

    fn encode_in(&self, snapshot: &Snapshot) -> Option<String> {
        snapshot.get(self.var).map(|value| self.codec.encode(value))
    }

    fn bind(&self, text: &str, target: &mut Target) -> Result<(), DecodeError> {
        let value = self.codec.decode(text)?;
        target.bind(self.var, value);
        Ok(())
    }
}

/// Where decoded values go: a fresh context, or the current one.
enum Target {
    Fresh(Context),
    Current(Option<SetError>),
}

impl Target {
    fn bind<T: Send + Sync + 'static>(&mut self, var: &'static ContextVar<T>, value: T) {
        match self {
            Target::Fresh(context) => *context = context.with_value(var, value),
            Target::Current(error) => {
                if let Err(refused) = var.try_set(value) {
                    error.get_or_insert(refused);
                }
            }
        }
    }
}

#[derive(Clone, Default)]
struct Registry {
    /// In declaration order.
    vars: Vec<(&'static str, Arc<dyn Declared>)>,
    /// Key to index in `vars`.
    keys: HashMap<&'static str, usize>,
}

/// Which context variables cross process boundaries, under which baggage keys, with
/// which [`Codec`]s; and the inject / extract operations that send and receive them. See
/// the [module docs](super).
///
/// Build it once at start-up and share it (it is `Clone`, a reference count): pass it to
/// [`ContextLayer::init`](contextvars_tower::ContextLayer::init) on the server side and to
/// [`InjectLayer`](super::InjectLayer) on the client side, or keep it in a `static`
/// `OnceLock`/`LazyLock` for direct calls.
///
/// ```
/// use std::sync::Arc;
/// use contextvars::{ContextVar, copy_context};
/// use contextvars_opentelemetry::{Int, Propagation, Text};
///
/// contextvars::context_var! { static REQUEST_ID: u64; }
/// static TENANT: ContextVar<Arc<str>> = contextvars::context_var!(Arc<str>, "tenant");
/// static AUTH_TOKEN: ContextVar<String> = contextvars::context_var!(String, "auth_token"); // not declared
///
/// let propagation = Propagation::new()
///     .var(&REQUEST_ID, "request_id", Int)
///     .var(&TENANT, "tenant", Text);
///
/// let mut headers = http::HeaderMap::new();
/// REQUEST_ID.scope(7, || {
///     TENANT.scope(Arc::from("acme"), || {
///         AUTH_TOKEN.scope("secret".to_owned(), || propagation.inject(&mut headers))
///     })
/// });
/// let baggage = headers["baggage"].to_str().unwrap();
/// assert!(baggage.contains("request_id=7") && baggage.contains("tenant=acme"));
/// assert!(!baggage.contains("secret"));
///
/// // The receiving side: a fresh context with the declared variables bound.
/// let received = propagation.extract(&headers);
/// assert_eq!(received.snapshot().get(&REQUEST_ID), Some(&7));
/// assert_eq!(received.run(|| TENANT.get()).as_ref(), "acme");
/// assert!(!received.snapshot().contains(&AUTH_TOKEN));
/// # drop(copy_context());
/// ```
#[derive(Clone, Default)]
pub struct Propagation {
    registry: Arc<Registry>,
}

impl Propagation {
    /// Nothing declared yet: only the trace context and unknown baggage pass through.
    pub fn new() -> Self {
        Self::default()
    }

    /// Declares `var` to be sent as the baggage key `key`, written and read by `codec`.
    ///
    /// # Panics
    ///
    /// If `key` is not a valid baggage key (a non-empty HTTP token without `%`), or is
    /// declared already. Keys are part of the wire protocol between services: choose them
    /// once and keep them.
    #[track_caller]
    pub fn var<T, C>(mut self, var: &'static ContextVar<T>, key: &'static str, codec: C) -> Self
    where
        T: Send + Sync + 'static,
        C: Codec<T>,
    {
        let valid = !key.is_empty()
            && key.bytes().all(|byte| {
                byte != b'%' && (byte.is_ascii_alphanumeric() || b"!#$&'*+-.^_`|~".contains(&byte))
            });
        assert!(
            valid,
            "{key:?} is not a valid baggage key (an HTTP token without `%`)"
        );
        let registry = Arc::make_mut(&mut self.registry);
        assert!(
            !registry.keys.contains_key(key),
            "the baggage key {key:?} is declared twice"
        );
        registry.keys.insert(key, registry.vars.len());
        registry.vars.push((key, Arc::new(Var { var, codec })));
        self
    }

    /// Whether `key` is declared.
    ///
    /// ```
    /// use contextvars_opentelemetry::{Bool, Propagation};
    ///
    /// contextvars::context_var! { static DEBUG: bool; }
    /// let propagation = Propagation::new().var(&DEBUG, "debug", Bool);
    /// assert!(propagation.is_declared("debug"));
    /// assert!(!propagation.is_declared("user"));
    /// ```
    pub fn is_declared(&self, key: &str) -> bool {
        self.registry.keys.contains_key(key)
    }

    fn propagator() -> TextMapCompositePropagator {
        TextMapCompositePropagator::new(vec![
            Box::new(TraceContextPropagator::new()),
            Box::new(BaggagePropagator::new()),
        ])
    }

    // ------------------------------------------------------------------ sending

    /// Writes the current context into `headers`: `baggage` (the declared variables that
    /// are set, then the other baggage of [`OTEL_CONTEXT`]), and `traceparent` /
    /// `tracestate` for the span of [`OTEL_CONTEXT`]. When [`OTEL_CONTEXT`] is not set,
    /// OpenTelemetry's own current context (`opentelemetry::Context::current()`) stands
    /// in for it. Headers of those names already present are removed first, so the
    /// three say exactly what the context holds.
    ///
    /// Defaults are not sent: a variable counts when the context binds it. What does not
    /// fit OpenTelemetry's `Baggage` (64 entries, 8,192 bytes) is left out, declared
    /// variables first in line.
    ///
    /// ```
    /// use contextvars_opentelemetry::{Bool, Propagation};
    ///
    /// contextvars::context_var! { static DEBUG: bool = false; }
    /// let propagation = Propagation::new().var(&DEBUG, "debug", Bool);
    ///
    /// let mut headers = http::HeaderMap::new();
    /// propagation.inject(&mut headers);
    /// assert!(headers.get("baggage").is_none()); // the default is not sent
    ///
    /// DEBUG.scope(true, || propagation.inject(&mut headers));
    /// assert_eq!(headers["baggage"], "debug=true");
    /// ```
    pub fn inject(&self, headers: &mut HeaderMap) {
        self.inject_context(&copy_context(), headers);
    }

    /// [`inject`](Self::inject) from `context` instead of the current context.
    ///
    /// ```
    /// use contextvars::Context;
    /// use contextvars_opentelemetry::{Int, Propagation};
    ///
    /// contextvars::context_var! { static USER: u32; }
    /// let propagation = Propagation::new().var(&USER, "user", Int);
    ///
    /// let mut headers = http::HeaderMap::new();
    /// propagation.inject_context(&Context::new().with_value(&USER, 5), &mut headers);
    /// assert_eq!(headers["baggage"], "user=5");
    /// ```
    pub fn inject_context(&self, context: &Context, headers: &mut HeaderMap) {
        let cx = self.otel_context_of(context, true);
        // Stale headers (a forwarded request's) must not outlive an empty context.
        for name in ["baggage", "traceparent", "tracestate"] {
            headers.remove(name);
        }
        Self::propagator().inject_context(&cx, &mut HeaderInjector(headers));
    }

    /// The current context as an OpenTelemetry [`Context`](::opentelemetry::Context):
    /// [`OTEL_CONTEXT`] (or OpenTelemetry's current context when it is not set), with
    /// the declared variables that are set in its baggage, encoded by their codecs. For
    /// code that already speaks OpenTelemetry (a tracer, another propagator, a metrics
    /// exporter reading baggage).
    ///
    /// ```
    /// use contextvars_opentelemetry::{Int, Propagation};
    /// use opentelemetry::baggage::BaggageExt;
    ///
    /// contextvars::context_var! { static USER: u32; }
    /// let propagation = Propagation::new().var(&USER, "user", Int);
    ///
    /// let cx = USER.scope(5, || propagation.otel_context());
    /// assert_eq!(cx.baggage().get("user").map(|v| v.as_str()), Some("5"));
    /// ```
    pub fn otel_context(&self) -> OtelContext {
        self.otel_context_of(&copy_context(), false)
    }

    /// `for_wire`: the baggage values pre-escaped for OpenTelemetry's baggage propagator
    /// (see [`escape_for_propagator`]).
    fn otel_context_of(&self, context: &Context, for_wire: bool) -> OtelContext {
        let text = |value: String| {
            if for_wire {
                escape_for_propagator(value)
            } else {
                value
            }
        };
        let snapshot = context.snapshot();
        let base = match snapshot.get(&OTEL_CONTEXT) {
            Some(cx) => cx.clone(),
            None => OtelContext::current(),
        };
        let mut baggage = Baggage::new();
        for (declared, key) in self.declared() {
            if let Some(text_value) = declared.encode_in(&snapshot) {
                let _ = baggage.insert(key, text(text_value));
            }
        }
        for (key, (value, metadata)) in base.baggage() {
            if !self.is_declared(key.as_str()) {
                let value = text(value.as_str().to_owned());
                let metadata = if for_wire && !wire_safe_metadata(metadata.as_str()) {
                    BaggageMetadata::default()
                } else {
                    metadata.clone()
                };
                let _ = baggage.insert_with_metadata(key.clone(), value, metadata);
            }
        }
        base.with_baggage(baggage)
    }

    fn declared(&self) -> impl Iterator<Item = (&dyn Declared, &'static str)> {
        self.registry
            .vars
            .iter()
            .map(|(key, declared)| (&**declared, *key))
    }

    // ---------------------------------------------------------------- receiving

    /// A fresh context holding what `headers` carry: each declared variable found in the
    /// `baggage`, decoded by its codec, and [`OTEL_CONTEXT`] bound to the OpenTelemetry
    /// context the propagators extracted (the remote span context to parent spans on,
    /// and all the baggage, unknown keys included). Whatever is malformed is ignored, as
    /// the W3C specifications say; [`extract_with_report`](Self::extract_with_report)
    /// also tells what and why.
    ///
    /// ```
    /// use contextvars_opentelemetry::{OTEL_CONTEXT, Int, Propagation};
    /// use opentelemetry::trace::TraceContextExt;
    ///
    /// contextvars::context_var! { static USER: u32; }
    /// let propagation = Propagation::new().var(&USER, "user", Int);
    ///
    /// let mut headers = http::HeaderMap::new();
    /// headers.insert("baggage", "user=5".parse().unwrap());
    /// headers.insert(
    ///     "traceparent",
    ///     "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().unwrap(),
    /// );
    /// let context = propagation.extract(&headers);
    /// context.run(|| {
    ///     assert_eq!(USER.get(), 5);
    ///     let remote = OTEL_CONTEXT.get().span().span_context().clone();
    ///     assert_eq!(remote.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
    ///     assert!(remote.is_remote());
    /// });
    /// ```
    pub fn extract(&self, headers: &HeaderMap) -> Context {
        self.extract_with_report(headers).0
    }

    /// [`extract`](Self::extract), and what was ignored, counted per [`Reason`].
    ///
    /// ```
    /// use contextvars_opentelemetry::{Int, Propagation, Reason};
    ///
    /// contextvars::context_var! { static USER: u32; }
    /// let propagation = Propagation::new().var(&USER, "user", Int);
    ///
    /// let mut headers = http::HeaderMap::new();
    /// headers.insert("baggage", "user=five".parse().unwrap());
    /// headers.insert("traceparent", "ff-00-00-00".parse().unwrap());
    /// let (context, report) = propagation.extract_with_report(&headers);
    /// assert!(!context.snapshot().contains(&USER));
    /// assert_eq!(report.count(Reason::CodecRejected), 1);
    /// assert_eq!(report.count(Reason::TraceparentVersion), 1);
    /// ```
    pub fn extract_with_report(&self, headers: &HeaderMap) -> (Context, ExtractReport) {
        let mut report = ExtractReport::new();
        let cx = self.extract_otel(headers, &mut report);
        let mut target = Target::Fresh(Context::new());
        self.bind_from(cx, &mut target, &mut report);
        let Target::Fresh(context) = target else {
            unreachable!("the target stays fresh")
        };
        (context, report)
    }

    /// Binds what `headers` carry in the **current** context, as
    /// [`extract`](Self::extract) would in a fresh one (the server layer's way: the
    /// request already runs in a context of its own). Returns the report, or the first
    /// [`SetError`] if a variable could not be set.
    pub(super) fn extract_here(&self, headers: &HeaderMap) -> (ExtractReport, Option<SetError>) {
        let mut report = ExtractReport::new();
        let cx = self.extract_otel(headers, &mut report);
        let mut target = Target::Current(None);
        self.bind_from(cx, &mut target, &mut report);
        let Target::Current(error) = target else {
            unreachable!("the target stays current")
        };
        (report, error)
    }

    /// A fresh context holding the declared variables found in an OpenTelemetry
    /// context's baggage (for example one a different propagator or a framework
    /// extracted), with [`OTEL_CONTEXT`] bound to it; the report counts unknown keys and
    /// values refused by their codecs.
    ///
    /// ```
    /// use contextvars_opentelemetry::{Int, Propagation};
    /// use opentelemetry::KeyValue;
    /// use opentelemetry::baggage::BaggageExt;
    ///
    /// contextvars::context_var! { static USER: u32; }
    /// let propagation = Propagation::new().var(&USER, "user", Int);
    ///
    /// let cx = opentelemetry::Context::new()
    ///     .with_baggage([KeyValue::new("user", "5"), KeyValue::new("region", "eu")]);
    /// let (context, report) = propagation.from_otel(&cx);
    /// assert_eq!(context.snapshot().get(&USER), Some(&5));
    /// assert_eq!(report.to_string(), "1 × baggage key not declared");
    /// ```
    pub fn from_otel(&self, cx: &OtelContext) -> (Context, ExtractReport) {
        let mut report = ExtractReport::new();
        let mut target = Target::Fresh(Context::new());
        self.bind_from(cx.clone(), &mut target, &mut report);
        let Target::Fresh(context) = target else {
            unreachable!("the target stays fresh")
        };
        (context, report)
    }

    fn extract_otel(&self, headers: &HeaderMap, report: &mut ExtractReport) -> OtelContext {
        let checked = wire::check(headers, |key| self.is_declared(key), report);
        let cx = Self::propagator().extract_with_context(&OtelContext::new(), &checked);
        checked.settle(cx.span().span_context().is_valid(), report);
        cx
    }

    fn bind_from(&self, cx: OtelContext, target: &mut Target, report: &mut ExtractReport) {
        for (key, (value, _)) in cx.baggage() {
            match self.registry.keys.get(key.as_str()) {
                None => report.add(Reason::UnknownKey),
                Some(&i) => {
                    if self.registry.vars[i]
                        .1
                        .bind(value.as_str(), target)
                        .is_err()
                    {
                        report.add(Reason::CodecRejected);
                    }
                }
            }
        }
        target.bind(&OTEL_CONTEXT, cx);
    }
}

/// OpenTelemetry's baggage propagator percent-encodes controls, space, `"`, `,`, `;`,
/// `=` and non-ASCII, but writes `%` and `\` as they are: a `%` would then be read back
/// as the start of an escape (or refused), and `\` is not a baggage octet. Encoding
/// those two first makes the wire form the W3C one, which every decoder (OpenTelemetry's
/// included) reads back as the original text.
fn escape_for_propagator(value: String) -> String {
    if !value.contains(['%', '\\']) {
        return value;
    }
    value.replace('%', "%25").replace('\\', "%5C")
}

/// Whether OpenTelemetry's baggage propagator writes these properties (which it does
/// as they are) in a form that reads back the same: W3C Baggage's property grammar
/// (which the extractor checks), without `%` (which the reader would decode). Others
/// are not sent.
fn wire_safe_metadata(metadata: &str) -> bool {
    !metadata.contains('%') && wire::is_properties(metadata.trim_matches([' ', '\t']).as_bytes())
}

impl fmt::Debug for Propagation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(
                self.declared()
                    .map(|(declared, key)| (key, declared.name())),
            )
            .finish()
    }
}
