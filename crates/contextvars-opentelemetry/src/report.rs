//! What the extractor ignored, and why.

#![deny(unsafe_code)]

use std::fmt;

/// Why the extractor ignored part of the propagation headers; counted in an
/// [`ExtractReport`].
///
/// The reasons follow the three headers. A bad `baggage` list-member is dropped alone
/// (the others still bind), so each one counts. A bad `traceparent` means no trace
/// context. A `tracestate` that breaks a W3C rule is discarded whole (the trace context
/// is kept without it) and counts once, under the first rule it breaks: its length,
/// then its number of list-members, then member by member its key, its value, and
/// whether the key came before. Only a member that OpenTelemetry refuses
/// ([`TracestateMemberRefused`](Self::TracestateMemberRefused)) is dropped alone, and
/// each such member counts. The `tracestate` is read only when a `traceparent` is
/// taken, so its reasons count only then.
///
/// ```
/// use contextvars_opentelemetry::Reason;
///
/// assert!(Reason::DuplicateKey.is_malformed());
/// assert!(!Reason::UnknownKey.is_malformed());
/// assert_eq!(Reason::UnknownKey.to_string(), "baggage key not declared");
/// assert_eq!(Reason::TracestateDuplicateKey.header(), "tracestate");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reason {
    /// The `baggage` headers together are over 8,192 bytes: all baggage is ignored.
    BaggageTooLong,
    /// The `baggage` headers together have over 180 list members: all baggage is
    /// ignored.
    BaggageTooManyMembers,
    /// A baggage list member without `=`.
    MissingEquals,
    /// A baggage key that is empty, is not an HTTP token, or holds `%`.
    InvalidKey,
    /// A baggage value with a byte the W3C grammar does not allow (a space inside it,
    /// `"`, `\`, a control or a non-ASCII byte).
    InvalidValue,
    /// Baggage properties (after `;`) that break the W3C grammar: a property whose key
    /// is empty or not an HTTP token, a property value with a byte the grammar does not
    /// allow, or an empty property (`k=v;`, `k=v;;p`). The member is dropped.
    InvalidProperty,
    /// Baggage properties (after `;`) holding `%`: dropped, the member kept.
    /// OpenTelemetry decodes properties but does not encode them again, so they would
    /// reach the next hop changed.
    PropertiesDropped,
    /// A `%` in a baggage value not followed by two hex digits.
    BadPercentEncoding,
    /// A baggage value whose percent-decoded bytes are not UTF-8.
    InvalidUtf8,
    /// A baggage key seen before in the same request (in the same header or another):
    /// the first one counts. W3C Baggage lets a receiver deduplicate this way, and asks
    /// senders not to repeat keys.
    DuplicateKey,
    /// A valid baggage member beyond the 64 that OpenTelemetry's `Baggage` holds
    /// (declared keys are kept first).
    OverEntryLimit,
    /// A baggage key no variable is declared for: kept in the OpenTelemetry baggage,
    /// binds nothing.
    UnknownKey,
    /// A declared key whose value its codec refused: the variable is not bound.
    CodecRejected,
    /// More than one `traceparent` header: no trace context is taken.
    TraceparentDuplicate,
    /// A `traceparent` whose version is `ff` or not two lowercase hex digits.
    TraceparentVersion,
    /// A `traceparent` that is malformed otherwise (length, ids, flags, all-zero ids).
    TraceparentInvalid,
    /// The `tracestate` headers together are over 8,192 bytes: the tracestate is
    /// discarded.
    TracestateTooLong,
    /// The `tracestate` headers together have over 32 list-members (empty ones not
    /// counted): the tracestate is discarded.
    TracestateTooManyMembers,
    /// A `tracestate` key that breaks the W3C grammar: the tracestate is discarded. A
    /// key is a lowercase letter then up to 255 of `a-z 0-9 _ - * /`; or a tenant id
    /// (a lowercase letter or a digit, then up to 240 of those) `@` a system id (a
    /// lowercase letter, then up to 13). So `FOO`, `foo.bar`, `1foo`, `foo@`, `@foo`,
    /// `a@b@c` and a key of 257 characters are all refused.
    TracestateInvalidKey,
    /// A `tracestate` list-member without `=`, or whose value breaks the W3C grammar:
    /// empty, over 256 characters, holding `=`, or a byte outside printable ASCII. The
    /// tracestate is discarded. (Spaces around a member are OWS and ignored; a space
    /// at the start of a value is part of it.)
    TracestateInvalidValue,
    /// A `tracestate` key seen before, in the same header or another one (several
    /// headers are one list): the tracestate is discarded.
    TracestateDuplicateKey,
    /// A `tracestate` list-member valid by the W3C grammar that OpenTelemetry's
    /// `TraceState` refuses (its key check allows a system id of at most 13 characters,
    /// the grammar 14): that member alone is dropped, the others kept.
    TracestateMemberRefused,
}

const REASONS: usize = 22;

impl Reason {
    /// Every reason, in declaration order.
    pub const ALL: [Reason; REASONS] = [
        Reason::BaggageTooLong,
        Reason::BaggageTooManyMembers,
        Reason::MissingEquals,
        Reason::InvalidKey,
        Reason::InvalidValue,
        Reason::InvalidProperty,
        Reason::PropertiesDropped,
        Reason::BadPercentEncoding,
        Reason::InvalidUtf8,
        Reason::DuplicateKey,
        Reason::OverEntryLimit,
        Reason::UnknownKey,
        Reason::CodecRejected,
        Reason::TraceparentDuplicate,
        Reason::TraceparentVersion,
        Reason::TraceparentInvalid,
        Reason::TracestateTooLong,
        Reason::TracestateTooManyMembers,
        Reason::TracestateInvalidKey,
        Reason::TracestateInvalidValue,
        Reason::TracestateDuplicateKey,
        Reason::TracestateMemberRefused,
    ];

    /// Whether the input broke a rule (everything but [`UnknownKey`](Self::UnknownKey),
    /// which is ordinary when other services add baggage of their own).
    pub fn is_malformed(self) -> bool {
        self != Reason::UnknownKey
    }

    /// The header the reason is about: `"baggage"`, `"traceparent"` or `"tracestate"`.
    ///
    /// ```
    /// use contextvars_opentelemetry::{Propagation, Reason};
    ///
    /// let mut headers = http::HeaderMap::new();
    /// headers.insert(
    ///     "traceparent",
    ///     "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().unwrap(),
    /// );
    /// headers.insert("tracestate", "foo@=1,bar=2".parse().unwrap()); // an empty system id
    /// let (_, report) = Propagation::new().extract_with_report(&headers);
    /// let tracestate_discarded = report.iter().any(|(reason, _)| reason.header() == "tracestate");
    /// assert!(tracestate_discarded);
    /// assert_eq!(report.count(Reason::TracestateInvalidKey), 1);
    /// ```
    pub fn header(self) -> &'static str {
        match self {
            Reason::TraceparentDuplicate
            | Reason::TraceparentVersion
            | Reason::TraceparentInvalid => "traceparent",
            Reason::TracestateTooLong
            | Reason::TracestateTooManyMembers
            | Reason::TracestateInvalidKey
            | Reason::TracestateInvalidValue
            | Reason::TracestateDuplicateKey
            | Reason::TracestateMemberRefused => "tracestate",
            Reason::BaggageTooLong
            | Reason::BaggageTooManyMembers
            | Reason::MissingEquals
            | Reason::InvalidKey
            | Reason::InvalidValue
            | Reason::InvalidProperty
            | Reason::PropertiesDropped
            | Reason::BadPercentEncoding
            | Reason::InvalidUtf8
            | Reason::DuplicateKey
            | Reason::OverEntryLimit
            | Reason::UnknownKey
            | Reason::CodecRejected => "baggage",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    fn description(self) -> &'static str {
        match self {
            Reason::BaggageTooLong => "baggage over 8192 bytes",
            Reason::BaggageTooManyMembers => "baggage over 180 members",
            Reason::MissingEquals => "baggage member without `=`",
            Reason::InvalidKey => "invalid baggage key",
            Reason::InvalidValue => "invalid byte in baggage value",
            Reason::InvalidProperty => "invalid baggage property",
            Reason::PropertiesDropped => "baggage properties with `%` dropped",
            Reason::BadPercentEncoding => "bad percent-encoding in baggage value",
            Reason::InvalidUtf8 => "baggage value not UTF-8",
            Reason::DuplicateKey => "duplicate baggage key",
            Reason::OverEntryLimit => "baggage member over opentelemetry's 64",
            Reason::UnknownKey => "baggage key not declared",
            Reason::CodecRejected => "baggage value refused by its codec",
            Reason::TraceparentDuplicate => "more than one traceparent",
            Reason::TraceparentVersion => "unsupported traceparent version",
            Reason::TraceparentInvalid => "malformed traceparent",
            Reason::TracestateTooLong => "tracestate over 8192 bytes",
            Reason::TracestateTooManyMembers => "tracestate over 32 members",
            Reason::TracestateInvalidKey => "invalid tracestate key",
            Reason::TracestateInvalidValue => "invalid tracestate member",
            Reason::TracestateDuplicateKey => "duplicate tracestate key",
            Reason::TracestateMemberRefused => "tracestate member refused by opentelemetry",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.description())
    }
}

/// How much of a request's propagation headers the extractor ignored, per [`Reason`]
/// (see [`Propagation::extract_with_report`](super::Propagation::extract_with_report)).
/// The server side puts it into the request's extensions when it is not empty.
///
/// ```
/// use contextvars_opentelemetry::{Propagation, Reason};
///
/// let mut headers = http::HeaderMap::new();
/// headers.insert("baggage", "a=1,a=2,b".parse().unwrap());
/// let (_, report) = Propagation::new().extract_with_report(&headers);
/// assert_eq!(report.count(Reason::DuplicateKey), 1);
/// assert_eq!(report.count(Reason::MissingEquals), 1);
/// assert_eq!(report.count(Reason::UnknownKey), 1); // `a`: nothing declared
/// assert_eq!(report.total(), 3);
/// assert_eq!(report.malformed(), 2);
///
/// // A tracestate split over two headers is one list: a key in both is a duplicate,
/// // and the whole tracestate is discarded (the trace context is kept).
/// headers.clear();
/// headers.insert(
///     "traceparent",
///     "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().unwrap(),
/// );
/// headers.append("tracestate", "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7".parse().unwrap());
/// headers.append("tracestate", "congo=1".parse().unwrap());
/// let (_, report) = Propagation::new().extract_with_report(&headers);
/// assert_eq!(report.to_string(), "1 × duplicate tracestate key");
/// ```
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct ExtractReport {
    counts: [u32; REASONS],
}

impl ExtractReport {
    /// An empty report.
    pub fn new() -> Self {
        Self::default()
    }

    /// How often `reason` occurred.
    pub fn count(&self, reason: Reason) -> u32 {
        self.counts[reason.index()]
    }

    /// Everything counted.
    pub fn total(&self) -> u32 {
        self.counts
            .iter()
            .fold(0, |sum, count| sum.saturating_add(*count))
    }

    /// Everything counted but [`Reason::UnknownKey`].
    pub fn malformed(&self) -> u32 {
        self.total() - self.count(Reason::UnknownKey)
    }

    /// Whether nothing was ignored.
    pub fn is_empty(&self) -> bool {
        self.total() == 0
    }

    /// The reasons that occurred, with their counts.
    pub fn iter(&self) -> impl Iterator<Item = (Reason, u32)> + '_ {
        Reason::ALL
            .into_iter()
            .map(|reason| (reason, self.count(reason)))
            .filter(|(_, count)| *count > 0)
    }

    pub(super) fn add(&mut self, reason: Reason) {
        let count = &mut self.counts[reason.index()];
        *count = count.saturating_add(1);
    }

    /// Adds `other`'s counts to these.
    pub(super) fn absorb(&mut self, other: &ExtractReport) {
        for (count, more) in self.counts.iter_mut().zip(other.counts) {
            *count = count.saturating_add(more);
        }
    }
}

impl fmt::Debug for ExtractReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// `2 × duplicate baggage key, 1 × malformed traceparent`, or `nothing ignored`.
impl fmt::Display for ExtractReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("nothing ignored");
        }
        for (i, (reason, count)) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{count} × {reason}")?;
        }
        Ok(())
    }
}
