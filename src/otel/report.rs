//! What the extractor ignored, and why.

#![deny(unsafe_code)]

use std::fmt;

/// Why the extractor ignored part of the propagation headers; counted in an
/// [`ExtractReport`].
///
/// ```
/// use contextvars::opentelemetry::Reason;
///
/// assert!(Reason::DuplicateKey.is_malformed());
/// assert!(!Reason::UnknownKey.is_malformed());
/// assert_eq!(Reason::UnknownKey.to_string(), "baggage key not declared");
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
    /// A baggage value or property with a byte the W3C grammar does not allow (a space
    /// inside it, `"`, `\`, a control or a non-ASCII byte).
    InvalidValue,
    /// Baggage properties (after `;`) holding `%`: dropped, the member kept.
    /// OpenTelemetry decodes properties but does not encode them again, so they would
    /// reach the next hop changed.
    PropertiesDropped,
    /// A `%` in a baggage value not followed by two hex digits.
    BadPercentEncoding,
    /// A baggage value whose percent-decoded bytes are not UTF-8.
    InvalidUtf8,
    /// A baggage key seen before in the same request: the first one counts.
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
    /// A `tracestate` over 8,192 bytes or 32 list members, not ASCII, or refused by
    /// OpenTelemetry's `TraceState` (bad keys or values): the trace context is kept
    /// without it.
    TracestateInvalid,
}

const REASONS: usize = 16;

impl Reason {
    /// Every reason, in declaration order.
    pub const ALL: [Reason; REASONS] = [
        Reason::BaggageTooLong,
        Reason::BaggageTooManyMembers,
        Reason::MissingEquals,
        Reason::InvalidKey,
        Reason::InvalidValue,
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
        Reason::TracestateInvalid,
    ];

    /// Whether the input broke a rule (everything but [`UnknownKey`](Self::UnknownKey),
    /// which is ordinary when other services add baggage of their own).
    pub fn is_malformed(self) -> bool {
        self != Reason::UnknownKey
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
            Reason::TracestateInvalid => "invalid tracestate",
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
/// use contextvars::opentelemetry::{Propagation, Reason};
///
/// let mut headers = http::HeaderMap::new();
/// headers.insert("baggage", "a=1,a=2,b".parse().unwrap());
/// let (_, report) = Propagation::new().extract_with_report(&headers);
/// assert_eq!(report.count(Reason::DuplicateKey), 1);
/// assert_eq!(report.count(Reason::MissingEquals), 1);
/// assert_eq!(report.count(Reason::UnknownKey), 1); // `a`: nothing declared
/// assert_eq!(report.total(), 3);
/// assert_eq!(report.malformed(), 2);
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
