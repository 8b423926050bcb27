//! [`contextvars`] in [`tracing`] output: the request's span follows the work into
//! threads, tasks and rayon jobs, and context variables appear on every event.
//!
//! # The span follows the work
//!
//! tracing's current span is per thread: a `tokio::spawn`, a `spawn_blocking` closure, a
//! rayon job or a `std::thread` starts in no span, so their events lose the request span
//! (tracing's `Instrument` covers futures only, and only where it is written). After
//! [`carry_spans`] (which [`ContextFields::new`] calls too), **every hand-off of
//! `contextvars` carries the span that was current when it captured the context**, and
//! enters it around each run, poll or job of the child:
//!
//! * [`contextvars::thread::spawn`], `spawn_in`, and the `Builder` and `Scope`
//!   extensions;
//! * the future wrapper ([`in_copied_context`](contextvars::future::ContextFutureExt::in_copied_context),
//!   `in_context`, [`ContextVar::scope_future`](contextvars::ContextVar::scope_future)),
//!   so also `contextvars::tokio::spawn`, `spawn_local` and `JoinSetExt`, and
//!   `spawn_blocking`;
//! * rayon's `join`, `join_context`, `scope`, `in_place_scope`, `Scope::spawn`,
//!   `spawn`, `spawn_fifo`, `ThreadPoolExt` and the `in_copied_context`
//!   parallel-iterator adapter (`contextvars`' feature `rayon`);
//! * `contextvars-tower`'s `ContextLayer`: the service future and the response body are
//!   polled in the span current when the service was called;
//! * anything built on `contextvars::plumbing::TaskFrame` (this crate registers the
//!   span as the process's `contextvars::plumbing::Carrier`).
//!
//! ```
//! use contextvars::rayon::ParallelIteratorExt;
//! use rayon::prelude::*;
//!
//! contextvars_tracing::carry_spans().unwrap();
//! let span = tracing::info_span!("request", id = 7);
//! span.in_scope(|| {
//!     // Each item's event sits in `request{id=7}`, on whichever worker runs it.
//!     (0..4).into_par_iter().in_copied_context().for_each(|i| tracing::info!(i, "item"));
//!     // A thread too: no span is passed by hand.
//!     contextvars::thread::spawn(|| tracing::info!("from a thread")).join().unwrap();
//! });
//! ```
//!
//! The span is entered outside the context's frame and left before the run, poll or job
//! returns, also when it panics (its guard exits it), exactly as `span.in_scope` would;
//! `Context::run` carries nothing of its own (it runs on the caller's thread, in the
//! caller's span). Not carried: tasks isolated by tokio's task hooks
//! (`contextvars::tokio::isolate_tasks`, `--cfg tokio_unstable`), because a hook-entered
//! span would have to stay entered between two hook calls, which is not a lexical scope;
//! wrap such a task with `.instrument(span)` or spawn it with `contextvars::tokio::spawn`.
//!
//! Cost: with no subscriber ever installed, a capture is one relaxed load; with one, a
//! capture asks the dispatcher for the current span (a thread-local lookup with
//! tracing-subscriber's `Registry`), and a span found there is cloned (a reference count
//! on the subscriber) into one allocation shared by the work. Entering it per run, poll
//! or job is the subscriber's `enter` and `exit`, what tracing's `Instrument` does. The
//! figures, against a span carried by hand and `Instrument`, are in the repository's
//! `BENCHMARKS.md` (`benches/tracing.rs`, group `span_carry`).
//!
//! A poll pays nothing for a capture (that happens once, when the future is wrapped);
//! without [`carry_spans`] no lookup is made. A parallel
//! iterator enters its span once per call rayon makes into the adapter: once per batch
//! of items, but once per item where an adapter such as `zip` pulls them one at a time.
//! Where a child runs on the thread that captured it while the span is still entered
//! there (the first closure of a `join`, the calling worker's share of a parallel
//! iterator), the span is entered once more inside itself, as nested `in_scope` calls
//! would; tracing allows it, but a subscriber that logs span enters logs both.
//!
//! # Variables as fields of every event
//!
//! Name the variables once, where the subscriber is built, and every event that
//! tracing-subscriber's `fmt` formats shows them as fields, with the values of the
//! context the event was emitted in, and nothing is written at the log call:
//!
//! ```
//! use std::io::Write;
//! use std::sync::{Arc, Mutex};
//! use contextvars::{Context, ContextVar};
//! use contextvars_tracing::ContextFields;
//!
//! // A variable's field name is its name.
//! contextvars::context_var! { static REQUEST_ID: u64 as "request_id"; }
//! static TENANT: ContextVar<String> = contextvars::context_var!(String, "tenant");
//!
//! // A writer into a buffer, to look at the output.
//! #[derive(Clone, Default)]
//! struct Buffer(Arc<Mutex<Vec<u8>>>);
//! impl Write for Buffer {
//!     fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
//!         self.0.lock().unwrap().write(bytes)
//!     }
//!     fn flush(&mut self) -> std::io::Result<()> {
//!         Ok(())
//!     }
//! }
//! let buffer = Buffer::default();
//! let writer = buffer.clone();
//!
//! let subscriber = tracing_subscriber::fmt()
//!     .without_time()
//!     .with_ansi(false)
//!     .with_writer(move || writer.clone())
//!     // Configure the format first, wrap it last.
//!     .map_event_format(|format| ContextFields::new(format).var(&REQUEST_ID).var(&TENANT))
//!     .finish();
//!
//! tracing::subscriber::with_default(subscriber, || {
//!     Context::new().run(|| {
//!         let _id = REQUEST_ID.set(7);
//!         let _tenant = TENANT.set("acme".to_owned());
//!         tracing::info!(user = "ada", "logged in");
//!     });
//!     tracing::info!("between requests"); // no value: no field
//! });
//!
//! let output = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
//! assert_eq!(
//!     output,
//!     format!(
//!         " INFO {0}: logged in user=\"ada\" request_id=7 tenant=\"acme\"\n \
//!          INFO {0}: between requests\n",
//!         module_path!(),
//!     ),
//! );
//! ```
//!
//! [`ContextFields`] wraps the event format of `tracing_subscriber::fmt()` or
//! `tracing_subscriber::fmt::layer()` (through their `map_event_format`). For each event
//! it builds an event with the same metadata, parent and fields plus one field per
//! variable that has a value, and hands that to the format it wraps. The wrapped format
//! does all the formatting, so:
//!
//! * **Every `fmt` format is supported**: `Full` (the default), `Compact`, `Pretty` and
//!   `Json` (tracing-subscriber's `json` feature), with all their options. The variables
//!   appear where the event's own fields do, formatted the way its fields are: after the
//!   message in the text formats; inside `"fields"` in JSON, each its own key with its
//!   own JSON type (a `u64` is a number, a `String` a string), or at the top level with
//!   `.flatten_event(true)`. Spans (`with_current_span`, `with_span_list`, the text
//!   formats' span prefix) are printed as before.
//! * A custom `FormatEvent` works too, if it formats the event's fields through the
//!   event (`event.record`, `ctx.field_format().format_fields(.., event)`).
//! * **Other layers are not affected**: filters, `EnvFilter`, other `fmt` layers and
//!   third-party layers see the events as they were emitted; the fields are added only
//!   inside the wrapped format.
//!
//! The values are read when the event is formatted, which `fmt` does inside the event
//! call, on the thread that emits it (a non-blocking writer such as `tracing-appender`'s
//! only moves the writing elsewhere), so they are the values of the event's own context.
//!
//! Which value a variable shows, how each kind of value is recorded (the types that are
//! recorded as their own kind are the [`FieldValue`]s), what an event shows while the
//! thread panics (in a panic hook that logs, only what cannot panic again), and what
//! happens when an event has a field of a variable's name (the event's own field wins),
//! are on [`ContextFields`].
//!
//! # Cost
//!
//! Per event: one lookup of the event's callsite in a per-thread cache (the combined
//! callsite is built and leaked once per callsite and list of variables, as
//! `tracing-log` does for log records), one read per variable, and, when a variable has a
//! value, a copy of the event's values (numbers as they are, strings and `Debug` text
//! into a reused per-thread buffer) to build the new event from. An event for which no
//! variable has a value is formatted as it is. `benches/tracing.rs` measures a JSON event
//! without and with 2 and 8 variables.
//!
//! # Limitations
//!
//! * `Debug` values of the event are captured with `{:?}`: a field formatter that asks
//!   for the alternate form (`{:#?}`, tracing-subscriber's `debug_alt`) gets the plain
//!   form for them.
//! * A value recorded with `valuable` (tracing's unstable `valuable` support) is copied
//!   as its `Debug` text.
//! * Records of the `log` crate bridged by `tracing-log` (`LogTracer`) keep their own
//!   target, module, file and line, as tracing-subscriber's `tracing-log` feature shows
//!   them: the new event's metadata is made from the record's, once per record location
//!   (and leaked, like a callsite). Past 4096 distinct locations (targets made at run
//!   time), further ones are shown with the bridge's target, `log`. This matches the
//!   unwrapped output when tracing-subscriber's `tracing-log` feature is on (one of its
//!   default features); without it, the unwrapped format shows such records with the
//!   target `log`, and both show the bridge's `log.*` fields.

#![deny(unsafe_code)]

mod callsite;
mod capture;
mod carrier;
mod fields;
mod value;

pub use carrier::carry_spans;
pub use fields::ContextFields;
pub use value::FieldValue;
