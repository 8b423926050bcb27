//! [`ContextFields`]: an event format that adds context variables to every event.
//!
//! How it works (the module docs of [`crate::tracing`] say what it does):
//!
//! 1. Per callsite of an original event, a *combined* callsite is built once and cached:
//!    the original metadata with the variables' names appended to its field names. It is
//!    leaked, because a callsite must be `'static` (tracing's macros and tracing-log
//!    declare theirs as statics); the leak is bounded by the number of callsites times
//!    the number of distinct variable lists. A log record bridged by tracing-log gets
//!    one per record location instead, capped (see [`log_combined`]).
//! 2. Per event, the variables are read first; if none has a value the original event is
//!    formatted as it is. Otherwise the original event's values are recorded into owned
//!    copies of the same kinds (tracing's `Value` is sealed, so they cannot be borrowed
//!    back), the variables' values next to them, and a new `Event` with the combined
//!    metadata, the copies and the original parentage is handed to the inner format.
//! 3. The copies live in a per-thread scratch area that is taken out of its
//!    thread-local while an event is formatted (a re-entrant event, from a value's
//!    `Debug` that logs, gets a fresh one), so steady state allocates nothing for
//!    integers, strings and `Debug` text.

#![deny(unsafe_code)]

use std::collections::{BTreeMap, HashMap};
use std::error::Error;
use std::fmt::{self, Write as _};
use std::hash::{BuildHasherDefault, Hasher};
use std::ops::Range;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Mutex, PoisonError};

use ::tracing_core::callsite::{Callsite, Identifier};
use ::tracing_core::field::{DebugValue, Field, FieldSet, Value, Visit};
use ::tracing_core::metadata::Kind;
use ::tracing_core::subscriber::Interest;
use ::tracing_core::{Event, Level, Metadata, Subscriber};
use ::tracing_subscriber::fmt::format::Writer;
use ::tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use ::tracing_subscriber::registry::LookupSpan;

use crate::ContextVar;
use crate::sync::{Cell, OnceLock, thread_locals};

/// An event format that adds the values of chosen [`ContextVar`]s to every event, as
/// fields of the event itself, and leaves all formatting to the format it wraps.
///
/// Wrap the format last, after configuring it, with `map_event_format` (on
/// `tracing_subscriber::fmt()` or on `fmt::layer()`):
///
/// ```
/// use contextvars::ContextVar;
/// use contextvars::tracing::ContextFields;
///
/// static REQUEST_ID: ContextVar<u64> = ContextVar::new("request_id");
/// static TENANT: ContextVar<String> = ContextVar::new("tenant");
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
/// [`var`](Self::var) takes a variable whose type is a tracing [`Value`]
/// (integers, floats, `bool`, `String`, `&'static str`, `Box<str>`, `Option`s of them):
/// it is recorded as that kind, so JSON gets a number for a `u64` and a string for a
/// `String` (an `Option` that is `None` is left out).
/// [`var_display`](Self::var_display) and [`var_debug`](Self::var_debug) take any other
/// type and record its `Display` or `Debug` text: a string in JSON, unquoted
/// (`Display`) or as `Debug` prints it in text. `Arc<str>`, the type of
/// `contextvars::tower::RequestId`'s variable, is not a tracing `Value`: add it with
/// `var_display`.
///
/// # Field names and clashes
///
/// A variable is a field named after the variable ([`ContextVar::name`]: the identifier
/// for a variable declared with [`context_var!`](crate::context_var)), or as given to
/// [`named`](Self::named). If the event has a field of that name (a raw identifier
/// `r#type` counts as `type`, as the formats print it), the **event's own field wins**
/// and the variable is left out of that event, so JSON never gets a duplicate key. Of
/// two variables with the same name, the first one added wins. With JSON's
/// `.flatten_event(true)`, do not name a variable like one of the format's own keys
/// (`timestamp`, `level`, `target`, `filename`, `line_number`, `span`, `spans`,
/// `threadName`, `threadId`): as for the event's own fields, the format does not check.
pub struct ContextFields<E> {
    inner: E,
    vars: Vec<VarField>,
    /// The interned list of the variables' names (the key of the combined callsites),
    /// computed on the first event.
    layout: OnceLock<u64>,
}

/// One variable: its field name and how to record its value.
struct VarField {
    name: &'static str,
    read: Box<dyn ReadVar>,
}

/// Records a variable's current value, type-erased: the kind of recording (as a tracing
/// `Value`, as `Display` text, as `Debug` text) is chosen when the variable is added.
trait ReadVar: Send + Sync {
    /// Records the current value as `field` into `visitor`; nothing if there is none.
    fn record(&self, field: &Field, visitor: &mut dyn Visit);
}

struct AsValue<T: 'static>(&'static ContextVar<T>);
struct AsDisplay<T: 'static>(&'static ContextVar<T>);
struct AsDebug<T: 'static>(&'static ContextVar<T>);

impl<T: Value + Send + Sync + 'static> ReadVar for AsValue<T> {
    fn record(&self, field: &Field, visitor: &mut dyn Visit) {
        let _ = self.0.try_with(|value| value.record(field, visitor));
    }
}

impl<T: fmt::Display + Send + Sync + 'static> ReadVar for AsDisplay<T> {
    fn record(&self, field: &Field, visitor: &mut dyn Visit) {
        let _ = self
            .0
            .try_with(|value| ::tracing_core::field::display(value).record(field, visitor));
    }
}

impl<T: fmt::Debug + Send + Sync + 'static> ReadVar for AsDebug<T> {
    fn record(&self, field: &Field, visitor: &mut dyn Visit) {
        let _ = self
            .0
            .try_with(|value| ::tracing_core::field::debug(value).record(field, visitor));
    }
}

impl<E> ContextFields<E> {
    /// Wraps the event format `inner` (for example `Format<Full>`, `Format<Compact>`,
    /// `Format<Pretty>` or `Format<Json>`), with no variables yet.
    pub fn new(inner: E) -> Self {
        Self {
            inner,
            vars: Vec::new(),
            layout: OnceLock::new(),
        }
    }

    /// Adds `var`, recorded as the tracing [`Value`] its type is (a
    /// number stays a number in JSON).
    ///
    /// ```
    /// use contextvars::ContextVar;
    /// use contextvars::tracing::ContextFields;
    /// use tracing_subscriber::fmt::format;
    ///
    /// static ATTEMPT: ContextVar<u32> = ContextVar::with_default("attempt", 1);
    /// let format = ContextFields::new(format::Format::default()).var(&ATTEMPT);
    /// assert_eq!(format.var_names().collect::<Vec<_>>(), ["attempt"]);
    /// ```
    pub fn var<T: Value + Send + Sync + 'static>(self, var: &'static ContextVar<T>) -> Self {
        self.push(var.name(), Box::new(AsValue(var)))
    }

    /// Adds `var`, recorded as its `Display` text (as `tracing`'s `%value`).
    ///
    /// ```
    /// use std::net::IpAddr;
    /// use contextvars::ContextVar;
    /// use contextvars::tracing::ContextFields;
    /// use tracing_subscriber::fmt::format;
    ///
    /// static PEER: ContextVar<IpAddr> = ContextVar::new("peer");
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
    /// use contextvars::tracing::ContextFields;
    /// use tracing_subscriber::fmt::format;
    ///
    /// static BUDGET: ContextVar<Duration> = ContextVar::new("budget");
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
    /// variable declared with [`context_var!`](crate::context_var), whose name is its
    /// identifier.
    ///
    /// ```
    /// use contextvars::context_var;
    /// use contextvars::tracing::ContextFields;
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
        let key = (std::ptr::from_ref(original).addr(), layout);
        let cached = LOCAL_CALLSITES
            .try_with(|cell| {
                let map = cell.take();
                let found = map.as_ref().and_then(|map| map.get(&key).copied());
                cell.set(map);
                found
            })
            .ok()
            .flatten();
        if let Some(combined) = cached {
            return combined;
        }
        let combined = global_combined(key, original, self);
        let _ = LOCAL_CALLSITES.try_with(|cell| {
            let mut map = cell.take().unwrap_or_default();
            map.insert(key, combined);
            cell.set(Some(map));
        });
        combined
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

// ----- combined callsites ------------------------------------------------------------

/// The callsite of the events that [`ContextFields`] builds for one original callsite
/// and one list of variables. Leaked: it must be `'static` to be an [`Identifier`].
struct Combined {
    /// Set right after the callsite is leaked (its `FieldSet` names the callsite itself).
    metadata: OnceLock<Metadata<'static>>,
    shape: Shape,
}

/// The fields of a [`Combined`] callsite.
struct Shape {
    /// The original fields' names, then the variables'.
    names: &'static [&'static str],
    /// For each field after the original ones: the index of its variable in the
    /// [`ContextFields`]' list. Variables whose name clashes are not here.
    vars: Box<[usize]>,
    /// How many fields the original callsite has.
    own: usize,
    /// Whether the original callsite is one of `tracing-log`'s (see [`is_log_record`]).
    log_record: bool,
}

impl Callsite for Combined {
    fn set_interest(&self, _: Interest) {}

    fn metadata(&self) -> &Metadata<'_> {
        self.metadata.get().unwrap_or(&PLACEHOLDER)
    }
}

/// The metadata a [`Combined`] reports in the instant before its own is set (never
/// observed: combined callsites are not registered with any subscriber).
static PLACEHOLDER: Metadata<'static> = Metadata::new(
    "contextvars fields",
    "contextvars::tracing",
    Level::TRACE,
    None,
    None,
    None,
    FieldSet::new(&[], Identifier(&PLACEHOLDER_CALLSITE)),
    Kind::EVENT,
);

struct PlaceholderCallsite;
static PLACEHOLDER_CALLSITE: PlaceholderCallsite = PlaceholderCallsite;

impl Callsite for PlaceholderCallsite {
    fn set_interest(&self, _: Interest) {}

    fn metadata(&self) -> &Metadata<'_> {
        &PLACEHOLDER
    }
}

/// Every list of variable names a [`ContextFields`] has used; a list's id is its index.
static LAYOUTS: Mutex<Vec<Box<[&'static str]>>> = Mutex::new(Vec::new());

/// Combined callsites by (original metadata's address, layout id).
static COMBINED: Mutex<BTreeMap<(usize, u64), &'static Combined>> = Mutex::new(BTreeMap::new());

fn intern_layout(names: &[&'static str]) -> u64 {
    let mut layouts = LAYOUTS.lock().unwrap_or_else(PoisonError::into_inner);
    let index = match layouts.iter().position(|known| **known == *names) {
        Some(index) => index,
        None => {
            layouts.push(names.into());
            layouts.len() - 1
        }
    };
    index as u64
}

fn global_combined<E>(
    key: (usize, u64),
    original: &'static Metadata<'static>,
    fields: &ContextFields<E>,
) -> &'static Combined {
    let mut map = COMBINED.lock().unwrap_or_else(PoisonError::into_inner);
    map.entry(key)
        .or_insert_with(|| build_combined(original, fields))
}

fn build_combined<E>(
    original: &'static Metadata<'static>,
    fields: &ContextFields<E>,
) -> &'static Combined {
    let mut names: Vec<&'static str> = original.fields().iter().map(|f| f.name()).collect();
    let own = names.len();
    let mut vars = Vec::new();
    /// A field name as the formats print it (`r#type` as `type`).
    fn printed(name: &str) -> &str {
        name.strip_prefix("r#").unwrap_or(name)
    }
    for (index, var) in fields.vars.iter().enumerate() {
        let clash = names.iter().any(|name| printed(name) == printed(var.name));
        if !clash {
            names.push(var.name);
            vars.push(index);
        }
    }
    let shape = Shape {
        names: Box::leak(names.into_boxed_slice()),
        vars: vars.into(),
        own,
        log_record: is_log_record(original),
    };
    leak_combined(shape, |fields| {
        let kind = if original.is_span() {
            Kind::SPAN
        } else {
            Kind::EVENT
        };
        Metadata::new(
            original.name(),
            original.target(),
            *original.level(),
            original.file(),
            original.line(),
            original.module_path(),
            fields,
            kind,
        )
    })
}

/// Leaks a [`Combined`] of `shape`, with the metadata `metadata` makes from the
/// callsite's own `FieldSet`.
fn leak_combined(
    shape: Shape,
    metadata: impl FnOnce(FieldSet) -> Metadata<'static>,
) -> &'static Combined {
    let names = shape.names;
    let combined: &'static Combined = Box::leak(Box::new(Combined {
        metadata: OnceLock::new(),
        shape,
    }));
    let _ = combined
        .metadata
        .set(metadata(FieldSet::new(names, Identifier(combined))));
    combined
}

// ----- events bridged from `log` ------------------------------------------------------

/// The field names of `tracing-log`'s callsites (the event's message, then the log
/// record's metadata).
const LOG_FIELDS: [&str; 5] = [
    "message",
    "log.target",
    "log.module_path",
    "log.file",
    "log.line",
];

/// Whether `metadata` is that of one of `tracing-log`'s callsites, which carry a `log`
/// record's target, module, file and line as fields (tracing-subscriber, with its
/// `tracing-log` feature, shows those instead of the callsite's, recognising the
/// callsite by its address, which a combined callsite does not have).
fn is_log_record(metadata: &Metadata<'_>) -> bool {
    metadata.name() == "log event"
        && metadata.target() == "log"
        && metadata.fields().iter().map(|f| f.name()).eq(LOG_FIELDS)
}

/// The most normalized combined callsites of log records kept: each is one distinct
/// (log call site, variables) pair, and a program has finitely many, unless it makes
/// targets at run time; past the limit, log records keep the target `log`.
const MAX_LOG_CALLSITES: usize = 4096;

// Normalized combined callsites of log records, by key (see `Scratch::log_key`).
static LOG_COMBINED: Mutex<Option<HashMap<Box<str>, &'static Combined>>> = Mutex::new(None);

type LocalLogMap = HashMap<Box<str>, &'static Combined>;

/// The combined callsite for a log record of `base`'s callsite, with the record's own
/// target, module path, file and line as its metadata (as tracing-log's
/// `normalized_metadata` makes them), built once per distinct record location.
fn log_combined(
    base: &'static Combined,
    base_metadata: &'static Metadata<'static>,
    key: &str,
    location: LogLocation<'_>,
) -> Option<&'static Combined> {
    let cached = LOCAL_LOG_CALLSITES
        .try_with(|cell| {
            let map = cell.take();
            let found = map.as_ref().and_then(|map| map.get(key).copied());
            cell.set(map);
            found
        })
        .ok()
        .flatten();
    if cached.is_some() {
        return cached;
    }
    let combined = {
        let mut global = LOG_COMBINED.lock().unwrap_or_else(PoisonError::into_inner);
        let global = global.get_or_insert_with(HashMap::new);
        match global.get(key) {
            Some(&combined) => combined,
            None if global.len() >= MAX_LOG_CALLSITES => return None,
            None => {
                let leak = |text: Option<&str>| -> Option<&'static str> {
                    text.map(|text| &*Box::leak(Box::<str>::from(text)))
                };
                let (target, module_path, file) = (
                    leak(location.target),
                    leak(location.module_path),
                    leak(location.file),
                );
                let shape = Shape {
                    names: base.shape.names,
                    vars: base.shape.vars.clone(),
                    own: base.shape.own,
                    log_record: false,
                };
                let combined = leak_combined(shape, |fields| {
                    Metadata::new(
                        "log event",
                        target.unwrap_or("log"),
                        *base_metadata.level(),
                        file,
                        location.line,
                        module_path,
                        fields,
                        Kind::EVENT,
                    )
                });
                global.insert(key.into(), combined);
                combined
            }
        }
    };
    let _ = LOCAL_LOG_CALLSITES.try_with(|cell| {
        let mut map = cell.take().unwrap_or_default();
        map.insert(key.into(), combined);
        cell.set(Some(map));
    });
    Some(combined)
}

/// Where a log record was made, as its fields say.
#[derive(Clone, Copy)]
struct LogLocation<'a> {
    target: Option<&'a str>,
    module_path: Option<&'a str>,
    file: Option<&'a str>,
    line: Option<u32>,
}

/// A hasher for the per-thread cache's `(address, layout)` keys: metadata addresses are
/// unique and not chosen by an adversary, so a multiply-rotate mix suffices.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        // The table picks buckets from the low bits, and a multiply only carries low
        // input bits upwards: fold the high half (where the addresses' spread ends up)
        // into the low one.
        self.0 ^ (self.0 >> 32)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.write_u64(u64::from(byte));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

type LocalMap = HashMap<(usize, u64), &'static Combined, BuildHasherDefault<KeyHasher>>;

// `LOCAL_CALLSITES`, `LOCAL_LOG_CALLSITES`: this thread's views of `COMBINED` and
// `LOG_COMBINED`, so that an event takes no lock.
// `SCRATCH`: the scratch area for the next event formatted on this thread (`None` while
// one is being formatted).
thread_locals! {
    static LOCAL_CALLSITES: Cell<Option<LocalMap>> = Cell::new(None);
    static LOCAL_LOG_CALLSITES: Cell<Option<LocalLogMap>> = Cell::new(None);
    static SCRATCH: Cell<Option<Scratch>> = Cell::new(None);
}

// ----- copies of values --------------------------------------------------------------

/// An owned copy of one recorded value; text and bytes are ranges into the scratch
/// area's buffers.
enum Captured {
    I64(i64),
    U64(u64),
    I128(i128),
    U128(u128),
    F64(f64),
    Bool(bool),
    Str(Range<usize>),
    Bytes(Range<usize>),
    Debug(Range<usize>),
    Error(Box<CapturedError>),
}

/// An error recorded with `record_error`: its `Display`, its `Debug` and its chain of
/// sources, each captured as text.
struct CapturedError {
    display: String,
    debug: String,
    source: Option<Box<CapturedError>>,
}

impl CapturedError {
    /// The longest source chain copied (a cyclic `source` would otherwise never end).
    const MAX_CHAIN: usize = 64;

    fn new(error: &(dyn Error + 'static)) -> Box<Self> {
        let mut chain = Vec::new();
        let mut next = Some(error);
        while let Some(error) = next {
            if chain.len() == Self::MAX_CHAIN {
                break;
            }
            chain.push((error.to_string(), format!("{error:?}")));
            next = error.source();
        }
        let mut source = None;
        for (display, debug) in chain.into_iter().rev() {
            source = Some(Box::new(Self {
                display,
                debug,
                source,
            }));
        }
        source.unwrap_or_else(|| {
            Box::new(Self {
                display: String::new(),
                debug: String::new(),
                source: None,
            })
        })
    }
}

impl fmt::Display for CapturedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display)
    }
}

impl fmt::Debug for CapturedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.debug)
    }
}

impl Error for CapturedError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.source
            .as_deref()
            .map(|source| source as &(dyn Error + 'static))
    }
}

/// Captured `Debug` text, written back verbatim.
struct Verbatim<'a>(&'a str);

impl fmt::Debug for Verbatim<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// A copy, ready to be recorded again as the kind it was recorded as.
enum Emit<'a> {
    I64(i64),
    U64(u64),
    I128(i128),
    U128(u128),
    F64(f64),
    Bool(bool),
    Str(&'a str),
    Bytes(&'a [u8]),
    Debug(DebugValue<Verbatim<'a>>),
    Error(&'a (dyn Error + 'static)),
}

impl Emit<'_> {
    fn as_value(&self) -> &dyn Value {
        match self {
            Emit::I64(value) => value,
            Emit::U64(value) => value,
            Emit::I128(value) => value,
            Emit::U128(value) => value,
            Emit::F64(value) => value,
            Emit::Bool(value) => value,
            Emit::Str(value) => value,
            Emit::Bytes(value) => value,
            Emit::Debug(value) => value,
            Emit::Error(value) => value,
        }
    }
}

/// The per-thread buffers of one event's copies, reused from event to event.
#[derive(Default)]
struct Scratch {
    /// One slot per field of the combined callsite.
    slots: Vec<Option<Captured>>,
    text: String,
    bytes: Vec<u8>,
    /// The cache key of a log record's location.
    key: String,
    /// Empty; kept for their allocations (see [`recycle`]).
    emits: Vec<Option<Emit<'static>>>,
    values: Vec<Option<&'static dyn Value>>,
}

impl Scratch {
    /// Text kept between events at most; a larger buffer is dropped after use.
    const KEEP_BYTES: usize = 64 * 1024;

    fn take(fields: usize) -> Self {
        let mut scratch = SCRATCH
            .try_with(Cell::take)
            .ok()
            .flatten()
            .unwrap_or_default();
        scratch.slots.resize_with(fields, || None);
        scratch
    }

    fn put_back(mut self) {
        self.slots.clear();
        self.text.clear();
        self.bytes.clear();
        if self.text.capacity() > Self::KEEP_BYTES || self.bytes.capacity() > Self::KEEP_BYTES {
            return;
        }
        let _ = SCRATCH.try_with(|cell| cell.set(Some(self)));
    }

    /// The metadata for a log record's combined event: its own location's (see
    /// [`log_combined`]), or `base_metadata` if that cannot be had.
    fn log_metadata(
        &mut self,
        base: &'static Combined,
        base_metadata: &'static Metadata<'static>,
    ) -> &'static Metadata<'static> {
        let text_at = |index: usize| match self.slots.get(index) {
            Some(Some(Captured::Str(range))) => self.text.get(range.clone()),
            _ => None,
        };
        let location = LogLocation {
            target: text_at(1),
            module_path: text_at(2),
            file: text_at(3),
            line: match self.slots.get(4) {
                Some(Some(Captured::U64(line))) => u32::try_from(*line).ok(),
                _ => None,
            },
        };
        // The key: the base callsite, then each part, `None` and `Some("")` told apart.
        self.key.clear();
        let _ = write!(self.key, "{:x}", std::ptr::from_ref(base).addr());
        for part in [location.target, location.module_path, location.file] {
            match part {
                None => self.key.push('\u{1}'),
                Some(text) => {
                    self.key.push('\u{2}');
                    self.key.push_str(text);
                }
            }
        }
        let _ = write!(self.key, "\u{1}{:?}", location.line);
        log_combined(base, base_metadata, &self.key, location)
            .and_then(|combined| combined.metadata.get())
            .unwrap_or(base_metadata)
    }

    /// Records the variables' values into their slots; whether any had one.
    fn capture_vars<E>(
        &mut self,
        fields: &ContextFields<E>,
        combined: &Combined,
        metadata: &Metadata<'static>,
    ) -> bool {
        let mut any = false;
        let var_fields = metadata.fields().iter().skip(combined.shape.own);
        for (field, &index) in var_fields.zip(combined.shape.vars.iter()) {
            let Some(var) = fields.vars.get(index) else {
                continue;
            };
            let recorded = catch_unwind(AssertUnwindSafe(|| {
                var.read.record(&field, &mut Capture(self));
            }));
            let slot = self.slots.get_mut(field.index());
            match (recorded, slot) {
                (Ok(()), Some(slot)) => any |= slot.is_some(),
                // A panic part way: whatever was captured is not trusted.
                (Err(_), Some(slot)) => *slot = None,
                (_, None) => {}
            }
        }
        any
    }

    /// Calls `f` with the copies as values, one entry per field.
    fn emit<R>(&mut self, f: impl FnOnce(&[Option<&dyn Value>]) -> R) -> R {
        let Scratch {
            slots,
            text,
            bytes,
            emits: emits_store,
            values: values_store,
            key: _,
        } = self;
        let mut emits: Vec<Option<Emit<'_>>> = recycle(std::mem::take(emits_store));
        emits.extend(slots.iter().map(|slot| {
            slot.as_ref().map(|captured| match captured {
                Captured::I64(value) => Emit::I64(*value),
                Captured::U64(value) => Emit::U64(*value),
                Captured::I128(value) => Emit::I128(*value),
                Captured::U128(value) => Emit::U128(*value),
                Captured::F64(value) => Emit::F64(*value),
                Captured::Bool(value) => Emit::Bool(*value),
                Captured::Str(range) => Emit::Str(text.get(range.clone()).unwrap_or("")),
                Captured::Bytes(range) => Emit::Bytes(bytes.get(range.clone()).unwrap_or(&[])),
                Captured::Debug(range) => Emit::Debug(::tracing_core::field::debug(Verbatim(
                    text.get(range.clone()).unwrap_or(""),
                ))),
                Captured::Error(error) => Emit::Error(&**error),
            })
        }));
        let mut values: Vec<Option<&dyn Value>> = recycle(std::mem::take(values_store));
        values.extend(emits.iter().map(|emit| emit.as_ref().map(Emit::as_value)));
        let result = f(&values);
        *values_store = recycle(values);
        *emits_store = recycle(emits);
        result
    }
}

/// An empty `Vec<U>` in the allocation of `vec` (whose elements are dropped): `T` and
/// `U` differ only in lifetimes here, so the standard library's in-place collection
/// reuses the buffer, and the scratch area's vectors of borrowed values need no new
/// allocation per event.
fn recycle<T, U>(mut vec: Vec<T>) -> Vec<U> {
    vec.clear();
    vec.into_iter().filter_map(|_| None).collect()
}

/// The visitor that copies recorded values into their slots (by field index: the
/// original fields come first in the combined callsite, in the same order).
struct Capture<'s>(&'s mut Scratch);

impl Capture<'_> {
    fn put(&mut self, field: &Field, captured: Captured) {
        if let Some(slot) = self.0.slots.get_mut(field.index()) {
            *slot = Some(captured);
        }
    }

    fn text(&mut self, write: impl FnOnce(&mut String) -> fmt::Result) -> Option<Range<usize>> {
        let start = self.0.text.len();
        match write(&mut self.0.text) {
            Ok(()) => Some(start..self.0.text.len()),
            Err(fmt::Error) => {
                self.0.text.truncate(start);
                None
            }
        }
    }
}

impl Visit for Capture<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, Captured::F64(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Captured::I64(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Captured::U64(value));
    }

    fn record_i128(&mut self, field: &Field, value: i128) {
        self.put(field, Captured::I128(value));
    }

    fn record_u128(&mut self, field: &Field, value: u128) {
        self.put(field, Captured::U128(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Captured::Bool(value));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        let start = self.0.text.len();
        self.0.text.push_str(value);
        let range = start..self.0.text.len();
        self.put(field, Captured::Str(range));
    }

    fn record_bytes(&mut self, field: &Field, value: &[u8]) {
        let start = self.0.bytes.len();
        self.0.bytes.extend_from_slice(value);
        let range = start..self.0.bytes.len();
        self.put(field, Captured::Bytes(range));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn Error + 'static)) {
        self.put(field, Captured::Error(CapturedError::new(value)));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if let Some(range) = self.text(|text| write!(text, "{value:?}")) {
            self.put(field, Captured::Debug(range));
        }
    }
}
