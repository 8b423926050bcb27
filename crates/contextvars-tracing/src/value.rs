//! [`FieldValue`]: the types [`ContextFields::var`](super::ContextFields::var) records
//! as a field of their own kind, and whether recording one runs code of the program's.

#![deny(unsafe_code)]

use std::borrow::Cow;
use std::error::Error;
use std::fmt;
use std::num::{NonZero, Wrapping};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::tracing_core::field::{DebugValue, DisplayValue, Empty, Field, Value, Visit};

/// A type whose values [`ContextFields::var`](super::ContextFields::var) records as a
/// field of their own kind: a number stays a number in JSON, text is a string.
///
/// Each value is recorded as `tracing` would record it at a log call, so a variable
/// looks like a field written there:
///
/// * integers (`u8` to `u128`, `i8` to `i128`, `usize`, `isize`, their `NonZero`s),
///   `f32`, `f64` and `bool`: as numbers and booleans;
/// * text (`String`, `&'static str`, `Box<str>`, `Arc<str>`, `Cow<'static, str>`): as a
///   string, with no allocation per event;
/// * bytes (`Box<[u8]>`, `Arc<[u8]>`, `&'static [u8]`): as `tracing` records bytes;
/// * [`Duration`]: as its `Debug` text (`250ms`, `1.5s`), a unit included;
/// * [`Instant`]: as the time from the event to it, as `Duration`'s `Debug` text, with a
///   `-` when it is already past (`1.5s` for a deadline 1.5 s ahead, `-300ms` for an
///   instant 300 ms ago);
/// * `Option<T>` of any of them: `Some` as its value, `None` left out; `Box<T>`,
///   `Arc<T>`, `&'static T` and `Wrapping<T>` as the `T` inside;
/// * tracing's own wrappers, [`DisplayValue`] and [`DebugValue`] (from
///   `tracing::field::display` and `debug`), and errors (`Box<dyn Error + Send + Sync>`,
///   `Arc<dyn Error + Send + Sync>`), as `tracing` records them.
///
/// These are the types of `contextvars_tower::RequestId`'s variable (`Arc<str>`) and of
/// every codec of `contextvars_opentelemetry` (`Int`'s integers, `Text`'s `String`,
/// `Arc<str>` and `Box<str>`, `Bool`'s `bool`, `Millis`' `Duration`, `Deadline`'s
/// `Instant`), so any variable that crosses a process boundary can be a field too.
///
/// The trait is sealed: add a variable of any other type with
/// [`var_display`](super::ContextFields::var_display) (its `Display` text) or
/// [`var_debug`](super::ContextFields::var_debug) (its `Debug` text).
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use contextvars::ContextVar;
/// use contextvars_tracing::ContextFields;
/// use tracing_subscriber::fmt::format;
///
/// static REQUEST_ID: ContextVar<Arc<str>> = contextvars::context_var!(Arc<str>, "request_id");
/// static BUDGET: ContextVar<Duration> = contextvars::context_var!(Duration, "budget");
/// static USER: ContextVar<Option<u64>> = contextvars::context_var!(Option<u64>, "user");
///
/// let format = ContextFields::new(format::Format::default())
///     .var(&REQUEST_ID)
///     .var(&BUDGET)
///     .var(&USER);
/// assert_eq!(format.var_names().collect::<Vec<_>>(), ["request_id", "budget", "user"]);
/// ```
///
/// A type that is not one of them is refused where the variable is added, with a
/// pointer to the alternatives:
///
/// ```compile_fail,E0277
/// use std::net::IpAddr;
/// use contextvars::ContextVar;
/// use contextvars_tracing::ContextFields;
/// use tracing_subscriber::fmt::format;
///
/// static PEER: ContextVar<IpAddr> = contextvars::context_var!(IpAddr, "peer");
/// let format = ContextFields::new(format::Format::default()).var(&PEER);
/// ```
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
#[diagnostic::on_unimplemented(
    message = "`ContextFields::var` cannot record `{Self}` as a field of its own kind",
    label = "not a `FieldValue`",
    note = "add the variable with `ContextFields::var_display` (its `Display` text) or \
            `ContextFields::var_debug` (its `Debug` text)"
)]
pub trait FieldValue: Send + Sync + 'static + sealed::Record {}

pub(super) mod sealed {
    use super::{Field, Visit};

    /// How a [`FieldValue`](super::FieldValue) is recorded. Public in a module the
    /// crate does not export, so that only the crate implements `FieldValue`.
    pub trait Record {
        /// Whether recording a value may run code of the program's (a `Display`,
        /// `Debug` or `Error` impl), which may panic; `false` when it runs only the
        /// standard library's and this crate's code.
        const RUNS_PROGRAM_CODE: bool;

        /// Records `self` as `field` into `visitor` (nothing for a value that is
        /// left out, such as `None`).
        fn record(&self, field: &Field, visitor: &mut dyn Visit);
    }
}

use sealed::Record;

/// Types recorded exactly as their tracing [`Value`] impl records them, with the code
/// that runs for it (`false`: std's and tracing-core's only).
macro_rules! as_tracing_value {
    ($program_code:literal: $($t:ty),* $(,)?) => {$(
        impl Record for $t {
            const RUNS_PROGRAM_CODE: bool = $program_code;

            fn record(&self, field: &Field, visitor: &mut dyn Visit) {
                Value::record(self, field, visitor);
            }
        }

        impl FieldValue for $t {}
    )*};
}

as_tracing_value!(false:
    bool, f32, f64,
    u8, u16, u32, u64, u128, usize,
    i8, i16, i32, i64, i128, isize,
    NonZero<u8>, NonZero<u16>, NonZero<u32>, NonZero<u64>, NonZero<u128>, NonZero<usize>,
    NonZero<i8>, NonZero<i16>, NonZero<i32>, NonZero<i64>, NonZero<i128>, NonZero<isize>,
    str, String, [u8], Empty,
);

as_tracing_value!(true: dyn Error + Send + Sync + 'static);

impl<T: fmt::Display + Send + Sync + 'static> Record for DisplayValue<T> {
    const RUNS_PROGRAM_CODE: bool = true;

    fn record(&self, field: &Field, visitor: &mut dyn Visit) {
        Value::record(self, field, visitor);
    }
}

impl<T: fmt::Display + Send + Sync + 'static> FieldValue for DisplayValue<T> {}

impl<T: fmt::Debug + Send + Sync + 'static> Record for DebugValue<T> {
    const RUNS_PROGRAM_CODE: bool = true;

    fn record(&self, field: &Field, visitor: &mut dyn Visit) {
        Value::record(self, field, visitor);
    }
}

impl<T: fmt::Debug + Send + Sync + 'static> FieldValue for DebugValue<T> {}

/// Types recorded as the value they hold or point to.
macro_rules! as_inner {
    ($(impl<$t:ident> for $outer:ty;)*) => {$(
        impl<$t: ?Sized + FieldValue> Record for $outer {
            const RUNS_PROGRAM_CODE: bool = $t::RUNS_PROGRAM_CODE;

            fn record(&self, field: &Field, visitor: &mut dyn Visit) {
                Record::record(&**self, field, visitor);
            }
        }

        impl<$t: ?Sized + FieldValue> FieldValue for $outer {}
    )*};
}

as_inner! {
    impl<T> for Box<T>;
    impl<T> for Arc<T>;
    impl<T> for &'static T;
}

impl<T: FieldValue> Record for Wrapping<T> {
    const RUNS_PROGRAM_CODE: bool = T::RUNS_PROGRAM_CODE;

    fn record(&self, field: &Field, visitor: &mut dyn Visit) {
        self.0.record(field, visitor);
    }
}

impl<T: FieldValue> FieldValue for Wrapping<T> {}

impl<T: FieldValue> Record for Option<T> {
    const RUNS_PROGRAM_CODE: bool = T::RUNS_PROGRAM_CODE;

    fn record(&self, field: &Field, visitor: &mut dyn Visit) {
        if let Some(value) = self {
            value.record(field, visitor);
        }
    }
}

impl<T: FieldValue> FieldValue for Option<T> {}

impl<B> Record for Cow<'static, B>
where
    B: ?Sized + ToOwned + FieldValue,
    B::Owned: Send + Sync + 'static,
{
    const RUNS_PROGRAM_CODE: bool = B::RUNS_PROGRAM_CODE;

    fn record(&self, field: &Field, visitor: &mut dyn Visit) {
        Record::record(&**self, field, visitor);
    }
}

impl<B> FieldValue for Cow<'static, B>
where
    B: ?Sized + ToOwned + FieldValue,
    B::Owned: Send + Sync + 'static,
{
}

impl Record for Duration {
    const RUNS_PROGRAM_CODE: bool = false;

    fn record(&self, field: &Field, visitor: &mut dyn Visit) {
        visitor.record_debug(field, self);
    }
}

impl FieldValue for Duration {}

/// An instant as the signed time from now to it, as `Duration`'s `Debug` text.
struct FromNow(Instant);

impl fmt::Debug for FromNow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let now = Instant::now();
        match self.0.checked_duration_since(now) {
            Some(ahead) => fmt::Debug::fmt(&ahead, f),
            None => {
                f.write_str("-")?;
                fmt::Debug::fmt(&now.saturating_duration_since(self.0), f)
            }
        }
    }
}

impl Record for Instant {
    const RUNS_PROGRAM_CODE: bool = false;

    fn record(&self, field: &Field, visitor: &mut dyn Visit) {
        visitor.record_debug(field, &FromNow(*self));
    }
}

impl FieldValue for Instant {}
