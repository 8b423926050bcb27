//! Owned copies of an event's values, and the per-thread scratch area that holds them
//! while [`ContextFields`](super::ContextFields) builds the event it hands on.

#![deny(unsafe_code)]

use std::error::Error;
use std::fmt::{self, Write as _};
use std::ops::Range;
use std::panic::{AssertUnwindSafe, catch_unwind};

use ::tracing_core::Metadata;
use ::tracing_core::field::{DebugValue, Field, Value, Visit};

use std::cell::Cell;

use super::callsite::{Combined, LogLocation, log_combined};
use super::fields::ContextFields;

// `SCRATCH`: the scratch area for the next event formatted on this thread (`None` while
// one is being formatted).
thread_local! {
    static SCRATCH: Cell<Option<Scratch>> = const { Cell::new(None) };
}

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
pub(super) struct Scratch {
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

    pub(super) fn take(fields: usize) -> Self {
        let mut scratch = SCRATCH
            .try_with(Cell::take)
            .ok()
            .flatten()
            .unwrap_or_default();
        scratch.slots.resize_with(fields, || None);
        scratch
    }

    pub(super) fn put_back(mut self) {
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
    pub(super) fn log_metadata(
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
    ///
    /// A panic while a value is recorded is caught and the value left out. That cannot
    /// help while the thread is panicking already: in a panic hook, a second panic aborts
    /// the process before it unwinds, so there only values whose recording runs no code
    /// of the program's are recorded (see `ReadVar::record`).
    pub(super) fn capture_vars<E>(
        &mut self,
        fields: &ContextFields<E>,
        combined: &Combined,
        metadata: &Metadata<'static>,
    ) -> bool {
        let panicking = std::thread::panicking();
        let mut any = false;
        let var_fields = metadata.fields().iter().skip(combined.shape.own);
        for (field, &index) in var_fields.zip(combined.shape.vars.iter()) {
            let Some(var) = fields.vars.get(index) else {
                continue;
            };
            let recorded = catch_unwind(AssertUnwindSafe(|| {
                var.read.record(&field, &mut Capture(self), panicking);
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
    pub(super) fn emit<R>(&mut self, f: impl FnOnce(&[Option<&dyn Value>]) -> R) -> R {
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
pub(super) struct Capture<'s>(pub(super) &'s mut Scratch);

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
