//! Context across processes: declared variables travel as W3C Baggage, next to W3C
//! Trace Context, through OpenTelemetry's propagators: a [`contextvars`] integration.
//!
//! When service A calls service B, A's request id, tenant and deadline should arrive in
//! B's context without header code in either. The wire formats are the standard ones,
//! `baggage` ([W3C Baggage](https://www.w3.org/TR/baggage/)) and `traceparent` /
//! `tracestate` ([W3C Trace Context](https://www.w3.org/TR/trace-context/)), written and
//! read by OpenTelemetry's own propagators, so a Java, Python or Go service on the other
//! end (or opentelemetry-rust code in the same one) sees the same values.
//!
//! # Declared, or it stays home
//!
//! A variable crosses a process boundary only if the program declares it, with a stable
//! baggage key and a [`Codec`]. Nothing else is ever sent: an auth token in a context
//! variable stays in the process.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::{Duration, Instant};
//! use contextvars::context_var;
//! use contextvars_opentelemetry::{Deadline, Int, Propagation, Text};
//!
//! context_var! {
//!     static REQUEST_ID: u64;
//!     static TENANT: Arc<str>;
//!     static DEADLINE: Instant;
//!     static AUTH_TOKEN: String; // not declared: never sent
//! }
//!
//! let propagation = Propagation::new()
//!     .var(&REQUEST_ID, "request_id", Int)
//!     .var(&TENANT, "tenant", Text)
//!     .var(&DEADLINE, "deadline_ms", Deadline);
//!
//! // Service A, inside a request: the headers of an outgoing call.
//! let mut headers = http::HeaderMap::new();
//! let _id = REQUEST_ID.scoped_set(7);
//! let _tenant = TENANT.scoped_set(Arc::from("acme"));
//! let _deadline = DEADLINE.scoped_set(Instant::now() + Duration::from_secs(2));
//! let _secret = AUTH_TOKEN.scoped_set("hunter2".to_owned());
//! propagation.inject(&mut headers);
//! assert!(!headers["baggage"].to_str().unwrap().contains("hunter2"));
//!
//! // Service B: a fresh context with what A declared.
//! let received = propagation.extract(&headers);
//! received.run(|| {
//!     assert_eq!(REQUEST_ID.get(), 7);
//!     assert_eq!(&*TENANT.get(), "acme");
//!     let left = DEADLINE.get().saturating_duration_since(Instant::now());
//!     assert!(left > Duration::from_millis(1_900) && left <= Duration::from_secs(2));
//!     assert!(!AUTH_TOKEN.is_set());
//! });
//! ```
//!
//! # Codecs
//!
//! [`Int`] (every integer type, decimal), [`Text`] (`String`, `Arc<str>`, `Box<str>`),
//! [`Bool`] (`true` / `false`), [`Millis`] (a `Duration` in milliseconds) and
//! [`Deadline`] (an `Instant`, sent as the **time remaining** in milliseconds, so the
//! two machines' clocks need not agree; an expired deadline is sent as `0`). Implement
//! [`Codec`] for your own types.
//!
//! # With tower
//!
//! On the server, a [`Propagation`] is an [`Initializer`](contextvars_tower::Initializer) for
//! [`ContextLayer`](contextvars_tower::ContextLayer): each request's context starts with what
//! its headers carry. On the client, [`InjectLayer`] writes the caller's context into
//! every outgoing request.
//!
//! ```
//! use axum::{Router, routing::get};
//! use contextvars_opentelemetry::{InjectLayer, Int, Propagation};
//! use contextvars_tower::ContextLayer;
//!
//! contextvars::context_var! { static REQUEST_ID: u64; }
//!
//! let propagation = Propagation::new().var(&REQUEST_ID, "request_id", Int);
//! let server: Router = Router::new()
//!     .route("/", get(|| async { REQUEST_ID.get_or(0).to_string() }))
//!     .layer(ContextLayer::new().init(propagation.clone()));
//! let client_layer = InjectLayer::new(propagation); // .layer(your tower HTTP client)
//! # drop((server, client_layer));
//! ```
//!
//! # Traces
//!
//! [`OTEL_CONTEXT`] is a context variable holding an OpenTelemetry
//! [`Context`](::opentelemetry::Context). Extraction binds it to the remote span context
//! (and the whole received baggage), so a handler's tracer parents its spans on the
//! caller's span: `tracer.start_with_context("work", &OTEL_CONTEXT.get())`. To send your
//! own span as the parent of the next hop, bind [`OTEL_CONTEXT`] to
//! `cx.with_span(span)` around the call. Being a context variable, it follows the work
//! into spawned tasks and rayon jobs like every other.
//!
//! # With OpenTelemetry's own `Context`
//!
//! [`Propagation::otel_context`] is the current context as OpenTelemetry sees it: the
//! declared variables are in its baggage. [`Propagation::from_otel`] goes the other way,
//! from an OpenTelemetry context (baggage set by opentelemetry-rust code, or extracted by
//! another propagator) to a context with the declared variables bound. Baggage under
//! keys nobody declared is kept in [`OTEL_CONTEXT`] and sent on, but binds nothing.
//!
//! # Bad input
//!
//! The extractor reads headers from anyone. Before OpenTelemetry's propagators see them,
//! it enforces the W3C limits and grammar in bounded work (it never allocates more than
//! a small multiple of the limits, whatever it is sent):
//!
//! * `baggage`: all headers together at most **8,192 bytes** and **180 members**, else
//!   all baggage is ignored; a member without `=`, with a key that is not an HTTP token
//!   (or holds `%`), with bytes the grammar forbids, with properties (after `;`) that
//!   break the grammar (an empty one, a key that is not a token), with bad
//!   percent-encoding or with percent-decoded bytes that are not UTF-8 is dropped; of
//!   duplicate keys the first counts (in one header or across several); properties
//!   holding `%` are dropped (OpenTelemetry would re-send them decoded); at most 64
//!   members reach OpenTelemetry's `Baggage` (its own limit), declared keys first; a
//!   declared key whose value its codec refuses binds nothing. Empty members (`a=1,,b=2`)
//!   are skipped. (180 members is the W3C Baggage draft's limit, which OpenTelemetry's
//!   other SDKs enforce; the current Recommendation asks receivers to keep at least 64
//!   members and lets them drop what is past 8,192 bytes. Ignoring *all* of the baggage
//!   past either limit, rather than cutting it, is this crate's choice: a cut list could
//!   drop a declared key or keep half of a duplicate pair.)
//! * `traceparent`: exactly one, version `00` of exactly 55 bytes or a later version
//!   (not `ff`) read as its first 55; else no trace context.
//! * `tracestate`: read only with a `traceparent` that is taken; all headers are one
//!   list, in order. It is discarded **whole**, the trace context kept without it (as
//!   the W3C test suite's strict cases expect; OpenTelemetry's `TraceState` would keep
//!   most of these), when it is over 8,192 bytes (this crate's bound; W3C asks for at
//!   least 512), has over 32 list-members, or holds a member that breaks the grammar:
//!   a key other than a simple key (a lowercase letter, then up to 255 of
//!   `a-z 0-9 _ - * /`) or `tenant@system` (both parts there, within 241 and 14
//!   characters, the system id starting with a letter); a value that is empty, over 256
//!   characters, or holds `=` or a byte outside printable ASCII; or a key that came
//!   before, in the same header or an earlier one. Spaces and tabs around members, and
//!   empty members, are ignored (a space at the start of a value is part of it). A
//!   valid member that OpenTelemetry's `TraceState` cannot hold (a system id of exactly
//!   14 characters) is dropped alone. The key grammar is Trace Context Level 1's, which
//!   the test suite checks; a later draft relaxes it (any of `a-z 0-9 _ - * / @` after
//!   a lowercase letter or digit), and the keys only it allows, such as `1foo` or
//!   `foo@`, are refused here.
//!
//! Nothing is an error and nothing panics: what was ignored is counted per [`Reason`] in
//! an [`ExtractReport`] ([`Propagation::extract_with_report`]; the server layer puts it
//! into the request's extensions).

#![deny(unsafe_code)]

mod codec;
mod layer;
mod propagate;
mod report;
mod wire;

pub use codec::{Bool, Codec, Deadline, DecodeError, Int, Millis, Text};
pub use layer::{InjectLayer, InjectService};
pub use propagate::{OTEL_CONTEXT, Propagation};
pub use report::{ExtractReport, Reason};
