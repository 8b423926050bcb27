//! [`ContextFields`]: an event format that adds context variables to every event.
//!
//! How it works (the module docs of [`crate::tracing`] say what it does):
//!
//! 1. Per callsite of an original event, a *combined* callsite is built once and cached:
//!    the original metadata with the variables' names appended to its field names. It is
//!    leaked, because a callsite must be `'static` (tracing's macros and tracing-log
//!    declare theirs as statics); the leak is bounded by the number of callsites times
//!    the number of distinct variable lists. A log record bridged by tracing-log gets
//!    one per record location instead, capped. All of this is in `callsite.rs`.
//! 2. Per event, the variables are read first; if none has a value the original event is
//!    formatted as it is. Otherwise the original event's values are recorded into owned
//!    copies of the same kinds (tracing's `Value` is sealed, so they cannot be borrowed
//!    back), the variables' values next to them, and a new `Event` with the combined
//!    metadata, the copies and the original parentage is handed to the inner format.
//! 3. The copies live in a per-thread scratch area that is taken out of its
//!    thread-local while an event is formatted (a re-entrant event, from a value's
//!    `Debug` that logs, gets a fresh one), so steady state allocates nothing for
//!    integers, strings and `Debug` text. This is `capture.rs`.

#![deny(unsafe_code)]

use std::fmt;

use ::tracing_core::field::{Field, Value, Visit};
use ::tracing_core::{Event, Metadata, Subscriber};
use ::tracing_subscriber::fmt::format::Writer;
use ::tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use ::tracing_subscriber::registry::LookupSpan;

use std::sync::OnceLock;

use contextvars::ContextVar;

use super::callsite::{self, Combined, intern_layout};
use super::capture::{Capture, Scratch};
use super::value::FieldValue;

/// An event format that adds the values of chosen [`ContextVar`]s to every event, as
/// fields of the event itself, and leaves all formatting to the format it wraps.
///
/// Wrap the format last, after configuring it, with `map_event_format` (on
/// `tracing_subscriber::fmt()` or on `fmt::layer()`):
///
/// ```
/// use contextvars::ContextVar;
/// use contextvars_tracing::ContextFields;
///
/// contextvars::context_var! { static REQUEST_ID: u64 as "request_id"; }
/// static TENANT: ContextVar<String> = contextvars::context_var!(String, "tenant");
///
/// let subscriber = tracing_subscriber::fmt()
///     .without_time()
///     .map_event_format(|format| ContextFields::new(format).var(&REQUEST_ID).var(&TENANT))
///     .finish();
///
/// tracing::subscriber::with_default(subscriber, || {
///     let _id = REQUEST_ID.set(7);
///     tracing::info!(user = "ada", "logged in"); // ... logged in user="ada" request_id=7
/// });
/// ```
///
/// # Which value a variable shows
///
/// The value the event's own code would read with [`ContextVar::try_with`]: the binding
/// in the current context, else the variable's default. A variable with neither is left
/// out of the event, and so is one whose value cannot be read (a lazy default whose
/// initialiser panics, or reads its own variable; a value whose `Debug` or `Display`
/// panics): formatting never panics because of a variable.
///
/// # How a value is recorded
///
/// [`var`](Self::var) takes a variable whose type is a [`FieldValue`]: numbers, `bool`,
/// text (`String`, `&'static str`, `Box<str>`, `Arc<str>`, `Cow<'static, str>`),
/// `Duration`, `Instant`, and `Option`s of them, among others; every type that
/// `contextvars_tower::RequestId` or a codec of `contextvars_opentelemetry` produces
/// is one. It is recorded as that kind, so JSON gets a number for a `u64` and a string
/// for an `Arc<str>` (an `Option` that is `None` is left out).
/// [`var_display`](Self::var_display) and [`var_debug`](Self::var_debug) take any other
/// type and record its `Display` or `Debug` text: a string in JSON, unquoted
/// (`Display`) or as `Debug` prints it in text.
///
/// # While the thread panics
///
/// A panic hook that logs the panic through `tracing` formats an event while the thread
/// is panicking, and there a second panic cannot be caught: the standard library aborts
/// the process ("panicked while processing panic") before anything unwinds. So while
/// [`std::thread::panicking`] is true, an event shows only the variables whose
/// recording runs no code of the program's, and leaves the others out as if they had
/// no value:
///
/// * shown: the variables added with [`var`](Self::var) whose type is recorded by the
///   standard library and this crate alone (numbers, `bool`, text, bytes, `Duration`,
///   `Instant`, and `Option`s, `Box`es and `Arc`s of them), with their binding or their
///   default, or their lazy default if it has been computed already;
/// * left out: the variables added with [`var_display`](Self::var_display) or
///   [`var_debug`](Self::var_debug) (their `Display` or `Debug` may panic: it is not
///   called, even if it would not have), a [`FieldValue`] that records an error or a
///   `tracing::field::display`/`debug` wrapper, and a lazy default not computed yet
///   (its initialiser is not run).
///
/// So a panic stays a panic, whatever the variables' `Display` and `Debug` do, and the
/// panic's event still carries a request id or a tenant held as text or a number. This
/// also holds in destructors that run while a panic unwinds (the thread is panicking
/// there too), where a second panic could have been caught: the standard library does
/// not tell the two apart.
///
/// # Field names and clashes
///
/// A variable is a field named after the variable ([`ContextVar::name`]: the identifier
/// for a variable declared with [`context_var!`](contextvars::context_var)), or as given to
/// [`named`](Self::named). If the event has a field of that name (a raw identifier
/// `r#type` counts as `type`, as the formats print it), the **event's own field wins**
/// and the variable is left out of that event, so JSON never gets a duplicate key. Of
/// two variables with the same name, the first one added wins. With JSON's
/// `.flatten_event(true)`, do not name a variable like one of the format's own keys
/// (`timestamp`, `level`, `target`, `filename`, `line_number`, `span`, `spans`,
/// `threadName`, `threadId`): as for the event's own fields, the format does not check.
pub struct ContextFields<E> {
    inner: E,
    pub(super) vars: Vec<VarField>,
    /// The interned list of the variables' names (the key of the combined callsites),
    /// computed on the first event.
    layout: OnceLock<u64>,
}

/// One variable: its field name and how to record its value.
pub(super) struct VarField {
    pub(super) name: &'static str,
    pub(super) read: Box<dyn ReadVar>,
}

/// Records a variable's current value, type-erased: the kind of recording (as a
/// [`FieldValue`], as `Display` text, as `Debug` text) is chosen when the variable is
/// added.
pub(super) trait ReadVar: Send + Sync {
    /// Records the current value as `field` into `visitor`; nothing if there is none.
    ///
    /// While the thread is `panicking`, nothing of the program's may run (a panic
    /// inside a panic hook aborts the process, before any `catch_unwind` can help): a
    /// lazy default not computed yet is not computed, and a value whose recording would
    /// run a `Display`, `Debug` or `Error` impl is not recorded.
    fn record(&self, field: &Field, visitor: &mut dyn Visit, panicking: bool);
}

struct AsValue<T: 'static>(&'static ContextVar<T>);
struct AsDisplay<T: 'static>(&'static ContextVar<T>);
struct AsDebug<T: 'static>(&'static ContextVar<T>);

impl<T: FieldValue> ReadVar for AsValue<T> {
    fn record(&self, field: &Field, visitor: &mut dyn Visit, panicking: bool) {
        if !panicking {
            let _ = self.0.try_with(|value| value.record(field, visitor));
        } else if !T::RUNS_PROGRAM_CODE {
            let _ = contextvars::plumbing::peek(self.0, |value| value.record(field, visitor));
        }
    }
}

impl<T: fmt::Display + Send + Sync + 'static> ReadVar for AsDisplay<T> {
    fn record(&self, field: &Field, visitor: &mut dyn Visit, panicking: bool) {
        if panicking {
            return;
        }
        let _ = self
            .0
            .try_with(|value| ::tracing_core::field::display(value).record(field, visitor));
    }
}

impl<T: fmt::Debug + Send + Sync + 'static> ReadVar for AsDebug<T> {
    fn record(&self, field: &Field, visitor: &mut dyn Visit, panicking: bool) {
        if panicking {
            return;
        }
        let _ = self
            .0
            .try_with(|value| ::tracing_core::field::debug(value).record(field, visitor));
    }
}

impl<E> ContextFields<E> {
    /// Wraps the event format `inner` (for example `Format<Full>`, `Format<Compact>`,
    /// `Format<Pretty>` or `Format<Json>`), with no variables yet. Spans follow the work
    /// from now on too ([`carry_spans`](crate::carry_spans); nothing if another carrier
    /// is registered).
    pub fn new(inner: E) -> Self {
        let _ = crate::carry_spans();
        Self {
            inner,
            vars: Vec::new(),
            layout: OnceLock::new(),
        }
    }

    /// Adds `var`, recorded as a field of its own kind: a number stays a number in JSON,
    /// text is a string. Its type is a [`FieldValue`]: numbers, `bool`, text (`String`,
    /// `&'static str`, `Box<str>`, `Arc<str>`, `Cow<'static, str>`), `Duration`,
    /// `Instant`, and `Option`s of them, among others (the list is on the trait).
    ///
    /// ```
    /// use contextvars_tracing::ContextFields;
    /// use tracing_subscriber::fmt::format;
    ///
    /// contextvars::context_var! { static ATTEMPT: u32 as "attempt" = 1; }
    /// let format = ContextFields::new(format::Format::default()).var(&ATTEMPT);
    /// assert_eq!(format.var_names().collect::<Vec<_>>(), ["attempt"]);
    /// ```
    pub fn var<T: FieldValue>(self, var: &'static ContextVar<T>) -> Self {
        self.push(var.name(), Box::new(AsValue(var)))
    }

    /// Adds `var`, recorded as its `Display` text (as `tracing`'s `%value`).
    ///
    /// ```
    /// use std::net::IpAddr;
    /// use contextvars::ContextVar;
    /// use contextvars_tracing::ContextFields;
    /// use tracing_subscriber::fmt::format;
    ///
    /// static PEER: ContextVar<IpAddr> = contextvars::context_var!(IpAddr, "peer");
    /// let format = ContextFields::new(format::Format::default()).var_display(&PEER);
    /// # drop(format);
    /// ```
    pub fn var_display<T: fmt::Display + Send + Sync + 'static>(
        self,
        var: &'static ContextVar<T>,
    ) -> Self {
        self.push(var.name(), Box::new(AsDisplay(var)))
    }

    /// Adds `var`, recorded as its `Debug` text (as `tracing`'s `?value`).
    ///
    /// ```
    /// use std::time::Duration;
    /// use contextvars::ContextVar;
    /// use contextvars_tracing::ContextFields;
    /// use tracing_subscriber::fmt::format;
    ///
    /// static BUDGET: ContextVar<Duration> = contextvars::context_var!(Duration, "budget");
    /// let format = ContextFields::new(format::Format::default()).var_debug(&BUDGET);
    /// # drop(format);
    /// ```
    pub fn var_debug<T: fmt::Debug + Send + Sync + 'static>(
        self,
        var: &'static ContextVar<T>,
    ) -> Self {
        self.push(var.name(), Box::new(AsDebug(var)))
    }

    /// Sets the field name of the variable added last (instead of its
    /// [`ContextVar::name`]); has no effect before a variable is added. Useful for a
    /// variable declared with [`context_var!`](contextvars::context_var), whose name is its
    /// identifier.
    ///
    /// ```
    /// use contextvars::context_var;
    /// use contextvars_tracing::ContextFields;
    /// use tracing_subscriber::fmt::format;
    ///
    /// context_var! {
    ///     static REQUEST_ID: u64;
    /// }
    /// let format = ContextFields::new(format::Format::default())
    ///     .var(&REQUEST_ID)
    ///     .named("request_id");
    /// assert_eq!(format.var_names().collect::<Vec<_>>(), ["request_id"]);
    /// ```
    pub fn named(mut self, name: &'static str) -> Self {
        if let Some(last) = self.vars.last_mut() {
            last.name = name;
        }
        self.layout = OnceLock::new();
        self
    }

    fn push(mut self, name: &'static str, read: Box<dyn ReadVar>) -> Self {
        self.vars.push(VarField { name, read });
        self.layout = OnceLock::new();
        self
    }

    /// The field names of the variables, in the order they were added.
    pub fn var_names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.vars.iter().map(|var| var.name)
    }

    /// The wrapped event format.
    pub fn inner(&self) -> &E {
        &self.inner
    }

    /// The wrapped event format, mutably.
    pub fn inner_mut(&mut self) -> &mut E {
        &mut self.inner
    }

    /// The combined callsite for events of `original`'s callsite.
    fn combined(&self, original: &'static Metadata<'static>) -> &'static Combined {
        let layout = *self.layout.get_or_init(|| {
            let names: Vec<&'static str> = self.var_names().collect();
            intern_layout(&names)
        });
        // Keyed by the metadata's address, not the callsite's: both are unique per
        // callsite, but a zero-sized callsite type (tracing-log's, one per level) can
        // share its address with another.
        callsite::combined_for(
            (std::ptr::from_ref(original).addr(), layout),
            original,
            self,
        )
    }
}

impl<E: fmt::Debug> fmt::Debug for ContextFields<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContextFields")
            .field("inner", &self.inner)
            .field(
                "vars",
                &self.vars.iter().map(|var| var.name).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl<S, N, E> FormatEvent<S, N> for ContextFields<E>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    E: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        if self.vars.is_empty() {
            return self.inner.format_event(ctx, writer, event);
        }
        let combined = self.combined(event.metadata());
        let Some(metadata) = combined.metadata.get() else {
            return self.inner.format_event(ctx, writer, event);
        };
        if combined.shape.vars.is_empty() {
            // Every variable clashes with one of the event's own fields.
            return self.inner.format_event(ctx, writer, event);
        }
        let mut scratch = Scratch::take(metadata.fields().len());
        if !scratch.capture_vars(self, combined, metadata) {
            scratch.put_back();
            return self.inner.format_event(ctx, writer, event);
        }
        event.record(&mut Capture(&mut scratch));
        let metadata = if combined.shape.log_record {
            scratch.log_metadata(combined, metadata)
        } else {
            metadata
        };
        let result = scratch.emit(|values| {
            // `value_set_all` is `#[doc(hidden)]` in tracing-core, but it is what tracing's
            // own macros and tracing-log use to build a `ValueSet` for a `FieldSet` whose
            // length is known only at run time; `values` has exactly one entry per field.
            let values = metadata.fields().value_set_all(values);
            let combined_event = if event.is_root() {
                Event::new_child_of(None, metadata, &values)
            } else if let Some(parent) = event.parent() {
                Event::new_child_of(parent.clone(), metadata, &values)
            } else {
                Event::new(metadata, &values)
            };
            self.inner.format_event(ctx, writer, &combined_event)
        });
        scratch.put_back();
        result
    }
}
