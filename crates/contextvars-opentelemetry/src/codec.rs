//! How a declared variable's value is written as a baggage value and read back.

#![deny(unsafe_code)]

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Turns a variable's value into a baggage value and back; see the [module
/// docs](super#codecs).
///
/// The text is what OpenTelemetry's baggage holds: any UTF-8 (the propagator
/// percent-encodes it on the wire). `decode` reads text from anyone, so it must refuse
/// what it does not understand rather than guess, and never panic.
///
/// ```
/// use contextvars_opentelemetry::{Codec, DecodeError};
///
/// #[derive(Clone, Copy, Debug, PartialEq)]
/// enum Tier {
///     Free,
///     Paid,
/// }
///
/// /// `free` or `paid`.
/// #[derive(Clone, Copy, Debug)]
/// struct TierCodec;
///
/// impl Codec<Tier> for TierCodec {
///     fn encode(&self, value: &Tier) -> String {
///         match value {
///             Tier::Free => "free".to_owned(),
///             Tier::Paid => "paid".to_owned(),
///         }
///     }
///
///     fn decode(&self, text: &str) -> Result<Tier, DecodeError> {
///         match text {
///             "free" => Ok(Tier::Free),
///             "paid" => Ok(Tier::Paid),
///             _ => Err(DecodeError::new("not a tier")),
///         }
///     }
/// }
///
/// assert_eq!(TierCodec.decode(&TierCodec.encode(&Tier::Paid)), Ok(Tier::Paid));
/// assert!(TierCodec.decode("gold").is_err());
/// ```
pub trait Codec<T>: Send + Sync + 'static {
    /// The value as baggage text.
    fn encode(&self, value: &T) -> String;

    /// The value the text stands for, or why it stands for none.
    fn decode(&self, text: &str) -> Result<T, DecodeError>;
}

/// A [`Codec`]'s refusal of a baggage value.
///
/// ```
/// use contextvars_opentelemetry::{Codec, Int};
///
/// let error = Codec::<u8>::decode(&Int, "256").unwrap_err();
/// assert_eq!(error.to_string(), "not an integer of the declared type");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct DecodeError {
    message: &'static str,
}

impl DecodeError {
    /// An error saying `message`.
    pub const fn new(message: &'static str) -> Self {
        Self { message }
    }

    /// What was wrong.
    pub fn message(&self) -> &'static str {
        self.message
    }
}

impl fmt::Debug for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("DecodeError").field(&self.message).finish()
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message)
    }
}

impl std::error::Error for DecodeError {}

/// Integers (`u8` to `u128`, `i8` to `i128`, `usize`, `isize`) in decimal; a value out
/// of the type's range, a sign on an unsigned type, or anything else is refused.
///
/// ```
/// use contextvars_opentelemetry::{Codec, Int};
///
/// assert_eq!(Int.encode(&-42i64), "-42");
/// assert_eq!(Codec::<i64>::decode(&Int, "-42"), Ok(-42));
/// assert!(Codec::<u32>::decode(&Int, "-1").is_err());
/// assert!(Codec::<u32>::decode(&Int, "4x").is_err());
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct Int;

macro_rules! int_codec {
    ($($t:ty)*) => {$(
        impl Codec<$t> for Int {
            fn encode(&self, value: &$t) -> String {
                value.to_string()
            }

            fn decode(&self, text: &str) -> Result<$t, DecodeError> {
                // `FromStr` also takes a leading `+`; the wire form is the plain one.
                if text.starts_with('+') {
                    return Err(DecodeError::new("not an integer of the declared type"));
                }
                text.parse()
                    .map_err(|_| DecodeError::new("not an integer of the declared type"))
            }
        }
    )*};
}

int_codec!(u8 u16 u32 u64 u128 usize i8 i16 i32 i64 i128 isize);

/// Text as it is (`String`, `Arc<str>`, `Box<str>`): any UTF-8, including the empty
/// string. Leading and trailing whitespace does not survive the trip: OpenTelemetry's
/// baggage propagator trims values when it writes and when it reads them.
///
/// ```
/// use std::sync::Arc;
/// use contextvars_opentelemetry::{Codec, Text};
///
/// let tenant: Arc<str> = Arc::from("acme, inc.");
/// assert_eq!(Text.encode(&tenant), "acme, inc.");
/// assert_eq!(Codec::<Arc<str>>::decode(&Text, "acme, inc."), Ok(tenant));
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct Text;

impl Codec<String> for Text {
    fn encode(&self, value: &String) -> String {
        value.clone()
    }

    fn decode(&self, text: &str) -> Result<String, DecodeError> {
        Ok(text.to_owned())
    }
}

impl Codec<Arc<str>> for Text {
    fn encode(&self, value: &Arc<str>) -> String {
        String::from(&**value)
    }

    fn decode(&self, text: &str) -> Result<Arc<str>, DecodeError> {
        Ok(Arc::from(text))
    }
}

impl Codec<Box<str>> for Text {
    fn encode(&self, value: &Box<str>) -> String {
        String::from(&**value)
    }

    fn decode(&self, text: &str) -> Result<Box<str>, DecodeError> {
        Ok(Box::from(text))
    }
}

/// `true` or `false`, exactly.
///
/// ```
/// use contextvars_opentelemetry::{Bool, Codec};
///
/// assert_eq!(Bool.encode(&true), "true");
/// assert_eq!(Bool.decode("false"), Ok(false));
/// assert!(Bool.decode("1").is_err());
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct Bool;

impl Codec<bool> for Bool {
    fn encode(&self, value: &bool) -> String {
        value.to_string()
    }

    fn decode(&self, text: &str) -> Result<bool, DecodeError> {
        match text {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(DecodeError::new("not `true` or `false`")),
        }
    }
}

/// A [`Duration`] as whole milliseconds (a fraction of a millisecond is dropped, a
/// duration over `u64::MAX` milliseconds is sent as `u64::MAX`).
///
/// ```
/// use std::time::Duration;
/// use contextvars_opentelemetry::{Codec, Millis};
///
/// assert_eq!(Millis.encode(&Duration::from_micros(1_500)), "1");
/// assert_eq!(Millis.decode("250"), Ok(Duration::from_millis(250)));
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct Millis;

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl Codec<Duration> for Millis {
    fn encode(&self, value: &Duration) -> String {
        millis(*value).to_string()
    }

    fn decode(&self, text: &str) -> Result<Duration, DecodeError> {
        let ms: u64 = Int
            .decode(text)
            .map_err(|_| DecodeError::new("not milliseconds"))?;
        Ok(Duration::from_millis(ms))
    }
}

/// A deadline ([`Instant`]) as the **time remaining**, in whole milliseconds, so that the
/// two machines' clocks need not agree: it is sent as the milliseconds left when it is
/// sent (rounded down; a deadline already past is sent as `0`) and read back as
/// `Instant::now()` plus those. Time spent on the wire is not counted, so the receiver's
/// deadline is a little later than the sender's; rounding down makes up for some of it.
///
/// ```
/// use std::time::{Duration, Instant};
/// use contextvars_opentelemetry::{Codec, Deadline};
///
/// let deadline = Instant::now() + Duration::from_secs(2);
/// let remaining: u64 = Deadline.encode(&deadline).parse().unwrap();
/// assert!((1_900..=2_000).contains(&remaining));
///
/// let before = Instant::now();
/// let received = Deadline.decode("1500").unwrap();
/// assert!(received >= before + Duration::from_millis(1_500));
///
/// // Past deadlines are sent as 0: already expired at the receiver too.
/// assert_eq!(Deadline.encode(&before), "0");
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct Deadline;

impl Codec<Instant> for Deadline {
    fn encode(&self, value: &Instant) -> String {
        millis(value.saturating_duration_since(Instant::now())).to_string()
    }

    fn decode(&self, text: &str) -> Result<Instant, DecodeError> {
        let remaining: Duration = Millis
            .decode(text)
            .map_err(|_| DecodeError::new("not remaining milliseconds"))?;
        Instant::now()
            .checked_add(remaining)
            .ok_or(DecodeError::new("deadline out of this clock's range"))
    }
}
