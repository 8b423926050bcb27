//! The checks made on the headers before OpenTelemetry's propagators see them: the W3C
//! limits and grammar, enforced in bounded work, with every rejection classified.
//!
//! The propagators are lenient and partly unbounded (the trace context propagator
//! splits `traceparent` into a vector whatever its length; the baggage propagator takes
//! the first 64 members, keeps the last of duplicate keys, and cuts a value at a raw
//! `=`). So the extractor hands them a checked copy: the `baggage` members that are
//! valid, declared keys first, at most 64; a `traceparent` of at most 55 bytes; a
//! `tracestate` of at most 8,192 bytes.

#![deny(unsafe_code)]

use std::borrow::Cow;
use std::collections::HashSet;

use ::opentelemetry::propagation::{Extractor, Injector};
use ::opentelemetry::trace::TraceState;
use http::header::{HeaderMap, HeaderName, HeaderValue};

use super::report::{ExtractReport, Reason};

/// W3C Baggage: the most bytes of all `baggage` headers together.
pub(super) const MAX_BAGGAGE_BYTES: usize = 8192;
/// W3C Baggage (the draft's limit, which OpenTelemetry's SDKs enforce): the most list
/// members.
pub(super) const MAX_BAGGAGE_MEMBERS: usize = 180;
/// OpenTelemetry's `Baggage`: the most entries it holds.
pub(super) const MAX_OTEL_ENTRIES: usize = 64;
/// Our bound on all `tracestate` headers together (W3C asks for at least 512).
pub(super) const MAX_TRACESTATE_BYTES: usize = 8192;
/// W3C Trace Context: the most `tracestate` list members.
const MAX_TRACESTATE_MEMBERS: usize = 32;
/// W3C Trace Context: a version-00 `traceparent`'s length (later versions start with
/// the same 55 bytes).
const TRACEPARENT_LEN: usize = 55;

/// The checked headers, as the propagators read them.
#[derive(Debug, Default)]
pub(super) struct Checked<'a> {
    baggage: Option<String>,
    traceparent: Option<&'a str>,
    tracestate: Option<Cow<'a, str>>,
}

impl Checked<'_> {
    /// Whether a `traceparent` passed the checks (the propagator may still refuse it).
    pub(super) fn has_traceparent(&self) -> bool {
        self.traceparent.is_some()
    }
}

impl Extractor for Checked<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "baggage" => self.baggage.as_deref(),
            "traceparent" => self.traceparent,
            "tracestate" => self.tracestate.as_deref(),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        [
            self.baggage.as_ref().map(|_| "baggage"),
            self.traceparent.map(|_| "traceparent"),
            self.tracestate.as_ref().map(|_| "tracestate"),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}

/// Writes the propagators' headers into an `http::HeaderMap` (a value that is not a
/// valid header value is skipped; the propagators write only ASCII).
pub(super) struct HeaderInjector<'a>(pub(super) &'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// Checks `headers`, counting what is ignored into `report`; `is_declared` tells the
/// keys to keep first.
pub(super) fn check<'a>(
    headers: &'a HeaderMap,
    is_declared: impl Fn(&str) -> bool,
    report: &mut ExtractReport,
) -> Checked<'a> {
    let baggage = check_baggage(headers, is_declared, report);
    let traceparent = check_traceparent(headers, report);
    let tracestate = traceparent.and_then(|_| check_tracestate(headers, report));
    Checked {
        baggage,
        traceparent,
        tracestate,
    }
}

fn is_ows(byte: u8) -> bool {
    byte == b' ' || byte == b'\t'
}

fn trim_ows(mut bytes: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = bytes {
        if !is_ows(*first) {
            break;
        }
        bytes = rest;
    }
    while let [rest @ .., last] = bytes {
        if !is_ows(*last) {
            break;
        }
        bytes = rest;
    }
    bytes
}

/// The list members of every `baggage` header, in order (empty ones included).
fn members(headers: &HeaderMap) -> impl Iterator<Item = &[u8]> {
    headers
        .get_all("baggage")
        .iter()
        .flat_map(|value| value.as_bytes().split(|byte| *byte == b','))
}

fn check_baggage(
    headers: &HeaderMap,
    is_declared: impl Fn(&str) -> bool,
    report: &mut ExtractReport,
) -> Option<String> {
    // Limits first, on the raw bytes: no allocation until both hold.
    let mut bytes = 0usize;
    let mut any = false;
    for value in headers.get_all("baggage") {
        // Several headers count as one list joined with `,`.
        bytes = bytes.saturating_add(value.len() + usize::from(any));
        any = true;
        if bytes > MAX_BAGGAGE_BYTES {
            report.add(Reason::BaggageTooLong);
            return None;
        }
    }
    if !any {
        return None;
    }
    let count = members(headers)
        .filter(|member| !trim_ows(member).is_empty())
        .take(MAX_BAGGAGE_MEMBERS + 1)
        .count();
    if count > MAX_BAGGAGE_MEMBERS {
        report.add(Reason::BaggageTooManyMembers);
        return None;
    }

    // Then each member; at most 180 of them, at most 8,192 bytes in all.
    let mut seen: HashSet<&str> = HashSet::with_capacity(count);
    let mut declared: Vec<(&str, &[u8], &str)> = Vec::new();
    let mut others: Vec<(&str, &[u8], &str)> = Vec::new();
    for member in members(headers) {
        let member = trim_ows(member);
        if member.is_empty() {
            continue;
        }
        match parse_member(member) {
            Err(reason) => report.add(reason),
            Ok((key, value, properties, dropped)) => {
                if let Some(reason) = dropped {
                    report.add(reason);
                }
                if !seen.insert(key) {
                    report.add(Reason::DuplicateKey);
                } else if is_declared(key) {
                    declared.push((key, value, properties));
                } else {
                    others.push((key, value, properties));
                }
            }
        }
    }
    let mut header = String::with_capacity(bytes + 2 * count);
    for (i, (key, value, properties)) in declared.into_iter().chain(others).enumerate() {
        if i >= MAX_OTEL_ENTRIES {
            report.add(Reason::OverEntryLimit);
            continue;
        }
        if i > 0 {
            header.push(',');
        }
        header.push_str(key);
        header.push('=');
        for &byte in value {
            // The propagator cuts a value at a raw `=`; the encoded form means the same.
            if byte == b'=' {
                header.push_str("%3D");
            } else {
                header.push(char::from(byte));
            }
        }
        if !properties.is_empty() {
            header.push(';');
            header.push_str(properties);
        }
    }
    Some(header)
}

/// A checked baggage member: key, raw value, raw properties, and why the properties
/// were dropped, if they were.
type Member<'a> = (&'a str, &'a [u8], &'a str, Option<Reason>);

/// A W3C `token` character (RFC 9110), which is what a baggage key is made of.
fn is_tchar(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

/// W3C Baggage's `baggage-octet`: visible ASCII but `"`, `,`, `;` and `\`.
fn is_baggage_octet(byte: u8) -> bool {
    matches!(byte, 0x21 | 0x23..=0x2B | 0x2D..=0x3A | 0x3C..=0x5B | 0x5D..=0x7E)
}

/// A member (trimmed, not empty): key, raw value, raw properties (after the first `;`),
/// and why the properties were dropped, if they were.
fn parse_member(member: &[u8]) -> Result<Member<'_>, Reason> {
    let (pair, properties) = match member.iter().position(|byte| *byte == b';') {
        Some(at) => (&member[..at], &member[at + 1..]),
        None => (member, &[][..]),
    };
    let at = pair
        .iter()
        .position(|byte| *byte == b'=')
        .ok_or(Reason::MissingEquals)?;
    let key = trim_ows(&pair[..at]);
    let value = trim_ows(&pair[at + 1..]);
    // `%` is a token character, but OpenTelemetry percent-decodes keys, so a key with
    // `%` would change its meaning on the way through: refused.
    if key.is_empty() || !key.iter().all(|byte| is_tchar(*byte) && *byte != b'%') {
        return Err(Reason::InvalidKey);
    }
    if !value.iter().all(|byte| is_baggage_octet(*byte)) {
        return Err(Reason::InvalidValue);
    }
    check_percent_utf8(value)?;
    let mut properties = trim_ows(properties);
    if !properties
        .iter()
        .all(|byte| is_ows(*byte) || (0x21..=0x7E).contains(byte))
    {
        return Err(Reason::InvalidValue);
    }
    // OpenTelemetry percent-decodes properties but writes them back as they are, so a
    // `%2C` would come out of the next hop as a raw `,`: such properties are dropped.
    let mut dropped = None;
    if properties.contains(&b'%') {
        properties = &[];
        dropped = Some(Reason::PropertiesDropped);
    }
    // All ASCII by the checks above.
    let key = std::str::from_utf8(key).map_err(|_| Reason::InvalidKey)?;
    let properties = std::str::from_utf8(properties).map_err(|_| Reason::InvalidValue)?;
    Ok((key, value, properties, dropped))
}

fn hex(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// Every `%` starts two hex digits, and the decoded bytes are UTF-8. Decodes into a
/// buffer no longer than the value.
fn check_percent_utf8(value: &[u8]) -> Result<(), Reason> {
    if !value.contains(&b'%') {
        return Ok(()); // ASCII already
    }
    let mut decoded = Vec::with_capacity(value.len());
    let mut i = 0;
    while i < value.len() {
        if value[i] == b'%' {
            let high = value.get(i + 1).copied().and_then(hex);
            let low = value.get(i + 2).copied().and_then(hex);
            let (Some(high), Some(low)) = (high, low) else {
                return Err(Reason::BadPercentEncoding);
            };
            decoded.push(high << 4 | low);
            i += 3;
        } else {
            decoded.push(value[i]);
            i += 1;
        }
    }
    std::str::from_utf8(&decoded)
        .map(drop)
        .map_err(|_| Reason::InvalidUtf8)
}

/// The `traceparent` to hand on (its first 55 bytes), if there is exactly one and it
/// has the W3C shape the propagator can then check in bounded work.
fn check_traceparent<'a>(headers: &'a HeaderMap, report: &mut ExtractReport) -> Option<&'a str> {
    let mut values = headers.get_all("traceparent").iter();
    let value = values.next()?;
    if values.next().is_some() {
        report.add(Reason::TraceparentDuplicate);
        return None;
    }
    let bytes = trim_ows(value.as_bytes());
    let version = match bytes {
        [high, low, ..] if high.is_ascii_hexdigit() && low.is_ascii_hexdigit() => [*high, *low],
        _ => {
            report.add(Reason::TraceparentVersion);
            return None;
        }
    };
    if version.iter().any(u8::is_ascii_uppercase) || version == *b"ff" {
        report.add(Reason::TraceparentVersion);
        return None;
    }
    let shaped = if version == *b"00" {
        bytes.len() == TRACEPARENT_LEN
    } else {
        // A later version: its first 55 bytes are read as version 00's fields, and
        // whatever follows must be set off by `-`.
        bytes.len() == TRACEPARENT_LEN
            || (bytes.len() > TRACEPARENT_LEN && bytes[TRACEPARENT_LEN] == b'-')
    };
    if !shaped || !bytes[..TRACEPARENT_LEN.min(bytes.len())].is_ascii() {
        report.add(Reason::TraceparentInvalid);
        return None;
    }
    match std::str::from_utf8(&bytes[..TRACEPARENT_LEN]) {
        Ok(text) => Some(text),
        Err(_) => {
            report.add(Reason::TraceparentInvalid);
            None
        }
    }
}

/// The `tracestate` to hand on: every header joined with `,`, if within the bound and
/// accepted by OpenTelemetry's `TraceState`.
fn check_tracestate<'a>(
    headers: &'a HeaderMap,
    report: &mut ExtractReport,
) -> Option<Cow<'a, str>> {
    // The headers are checked first and joined once: the work is linear in the bytes
    // read, which the limit bounds.
    let mut parts: Vec<&'a str> = Vec::new();
    let mut bytes = 0usize;
    for value in headers.get_all("tracestate") {
        bytes = bytes.saturating_add(value.len() + usize::from(!parts.is_empty()));
        let text = value.to_str().ok();
        let (true, Some(text)) = (bytes <= MAX_TRACESTATE_BYTES, text) else {
            report.add(Reason::TracestateInvalid);
            return None;
        };
        parts.push(text);
    }
    let joined: Cow<'a, str> = match parts.as_slice() {
        [] => return None,
        [one] => Cow::Borrowed(one),
        many => Cow::Owned(many.join(",")),
    };
    // W3C: over 32 list members, the whole tracestate is discarded (OpenTelemetry's
    // `TraceState` does not count them).
    let members = joined
        .split(',')
        .filter(|member| !member.trim_matches([' ', '\t']).is_empty())
        .take(MAX_TRACESTATE_MEMBERS + 1)
        .count();
    if members > MAX_TRACESTATE_MEMBERS {
        report.add(Reason::TracestateInvalid);
        return None;
    }
    match joined.parse::<TraceState>() {
        Ok(_) => Some(joined),
        Err(_) => {
            report.add(Reason::TracestateInvalid);
            None
        }
    }
}
