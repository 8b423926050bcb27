//! The checks made on the headers before OpenTelemetry's propagators see them: the W3C
//! limits and grammar, enforced in bounded work, with every rejection classified.
//!
//! The propagators are lenient and partly unbounded (the trace context propagator
//! splits `traceparent` into a vector whatever its length; the baggage propagator takes
//! the first 64 members, keeps the last of duplicate keys, and cuts a value at a raw
//! `=`; `TraceState` keeps duplicate keys and keys with an empty tenant or system id).
//! So the extractor hands them a checked copy: the `baggage` members that are valid,
//! declared keys first, at most 64; a `traceparent` of at most 55 bytes; a `tracestate`
//! rebuilt from list-members that all passed the W3C grammar, or none.

#![deny(unsafe_code)]

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
/// W3C Trace Context: the longest `tracestate` value (`0*255(chr) nblk-chr`).
const MAX_TRACESTATE_VALUE: usize = 256;
/// W3C Trace Context: a version-00 `traceparent`'s length (later versions start with
/// the same 55 bytes).
const TRACEPARENT_LEN: usize = 55;

/// The checked headers, as the propagators read them.
#[derive(Debug, Default)]
pub(super) struct Checked<'a> {
    baggage: Option<String>,
    traceparent: Option<&'a str>,
    tracestate: Option<String>,
    /// What the `tracestate` check ignored: it counts only if the propagator takes the
    /// `traceparent` (W3C: no `traceparent`, no `tracestate` parsing).
    tracestate_report: ExtractReport,
}

impl Checked<'_> {
    /// Counts into `report` what depends on the propagator's verdict on the
    /// `traceparent` (`valid`: it produced a valid span context): a `traceparent` that
    /// passed these checks and was still refused, or else what the `tracestate` check
    /// ignored.
    pub(super) fn settle(self, valid: bool, report: &mut ExtractReport) {
        if self.traceparent.is_none() {
            return;
        }
        if valid {
            report.absorb(&self.tracestate_report);
        } else {
            // An all-zero id, a non-hex or uppercase field.
            report.add(Reason::TraceparentInvalid);
        }
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
    let mut tracestate_report = ExtractReport::new();
    let tracestate = traceparent.and_then(|_| check_tracestate(headers, &mut tracestate_report));
    Checked {
        baggage,
        traceparent,
        tracestate,
        tracestate_report,
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

/// W3C Baggage's `key`: an HTTP token. `%` is a token character, but OpenTelemetry
/// percent-decodes keys, so a key with `%` would change its meaning on the way
/// through: refused too.
fn is_baggage_key(key: &[u8]) -> bool {
    !key.is_empty() && key.iter().all(|byte| is_tchar(*byte) && *byte != b'%')
}

/// The properties of a baggage member (what follows its first `;`, trimmed), by W3C
/// Baggage's grammar: `property *( OWS ";" OWS property )`, each `property` a token key
/// alone or `key OWS "=" OWS value` with a value of baggage octets (possibly empty).
/// An empty property (`k=v;` or `k=v;;p`) breaks it.
pub(super) fn is_properties(properties: &[u8]) -> bool {
    properties.split(|byte| *byte == b';').all(|property| {
        let property = trim_ows(property);
        let (key, value) = match property.iter().position(|byte| *byte == b'=') {
            Some(at) => (trim_ows(&property[..at]), trim_ows(&property[at + 1..])),
            None => (property, &[][..]),
        };
        !key.is_empty()
            && key.iter().all(|byte| is_tchar(*byte))
            && value.iter().all(|byte| is_baggage_octet(*byte))
    })
}

/// A member (trimmed, not empty): key, raw value, raw properties (after the first `;`),
/// and why the properties were dropped, if they were.
fn parse_member(member: &[u8]) -> Result<Member<'_>, Reason> {
    let (pair, properties, has_properties) = match member.iter().position(|byte| *byte == b';') {
        Some(at) => (&member[..at], &member[at + 1..], true),
        None => (member, &[][..], false),
    };
    let at = pair
        .iter()
        .position(|byte| *byte == b'=')
        .ok_or(Reason::MissingEquals)?;
    let key = trim_ows(&pair[..at]);
    let value = trim_ows(&pair[at + 1..]);
    if !is_baggage_key(key) {
        return Err(Reason::InvalidKey);
    }
    if !value.iter().all(|byte| is_baggage_octet(*byte)) {
        return Err(Reason::InvalidValue);
    }
    check_percent_utf8(value)?;
    let mut properties = trim_ows(properties);
    if has_properties && !is_properties(properties) {
        return Err(Reason::InvalidProperty);
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

/// The `tracestate` to hand on, rebuilt as `key=value` list-members joined with `,`
/// (OWS and empty members gone); or none, when there is none or it is discarded. All
/// `tracestate` headers are one list, in order (W3C: combined as RFC 9110 combines
/// fields).
///
/// The rules, checked in this order; the first one broken discards the whole
/// tracestate and is counted once: at most 8,192 bytes in all (this crate's bound);
/// at most 32 list-members (empty ones do not count); then, member by member, a key by
/// the grammar, a value by the grammar, a key not seen before. A member that passes
/// them all and that OpenTelemetry's `TraceState` still refuses is dropped alone and
/// counted.
fn check_tracestate(headers: &HeaderMap, report: &mut ExtractReport) -> Option<String> {
    // Limits first, on the raw bytes: no allocation until both hold.
    let mut bytes = 0usize;
    let mut any = false;
    for value in headers.get_all("tracestate") {
        bytes = bytes.saturating_add(value.len() + usize::from(any));
        any = true;
        if bytes > MAX_TRACESTATE_BYTES {
            report.add(Reason::TracestateTooLong);
            return None;
        }
    }
    if !any {
        return None;
    }
    let list_members = || {
        headers
            .get_all("tracestate")
            .iter()
            .flat_map(|value| value.as_bytes().split(|byte| *byte == b','))
            .map(trim_ows)
            .filter(|member| !member.is_empty())
    };
    let count = list_members().take(MAX_TRACESTATE_MEMBERS + 1).count();
    if count > MAX_TRACESTATE_MEMBERS {
        report.add(Reason::TracestateTooManyMembers);
        return None;
    }

    // Then each member; at most 32, so the duplicate check is a scan.
    let mut pairs: Vec<(&str, &str)> = Vec::with_capacity(count);
    for member in list_members() {
        let (key, value) = match member.iter().position(|byte| *byte == b'=') {
            Some(at) => (&member[..at], &member[at + 1..]),
            None => (member, &[][..]),
        };
        if !is_tracestate_key(key) {
            report.add(Reason::TracestateInvalidKey);
            return None;
        }
        if !is_tracestate_value(value) {
            report.add(Reason::TracestateInvalidValue);
            return None;
        }
        // ASCII by the checks above.
        let (Ok(key), Ok(value)) = (std::str::from_utf8(key), std::str::from_utf8(value)) else {
            report.add(Reason::TracestateInvalidValue);
            return None;
        };
        if pairs.iter().any(|(seen, _)| *seen == key) {
            report.add(Reason::TracestateDuplicateKey);
            return None;
        }
        pairs.push((key, value));
    }

    let join = |pairs: &[(&str, &str)]| {
        let mut header = String::with_capacity(bytes);
        for (i, (key, value)) in pairs.iter().enumerate() {
            if i > 0 {
                header.push(',');
            }
            header.push_str(key);
            header.push('=');
            header.push_str(value);
        }
        header
    };
    let mut header = join(&pairs);
    // OpenTelemetry's `TraceState` holds every valid list-member but one kind: it
    // refuses a system id of 14 characters, one more than its check allows. Such a
    // member is dropped alone (a W3C receiver may delete members) so that the others,
    // another vendor's, are kept.
    if header.parse::<TraceState>().is_err() {
        pairs.retain(|(key, value)| {
            let held = TraceState::from_key_value([(*key, *value)]).is_ok();
            if !held {
                report.add(Reason::TracestateMemberRefused);
            }
            held
        });
        header = join(&pairs);
    }
    (!header.is_empty()).then_some(header)
}

/// W3C Trace Context's `tracestate` key character, after the first: `lcalpha / DIGIT /
/// "_" / "-" / "*" / "/"`.
fn is_tracestate_key_char(byte: u8) -> bool {
    byte.is_ascii_lowercase() || byte.is_ascii_digit() || matches!(byte, b'_' | b'-' | b'*' | b'/')
}

/// W3C Trace Context's `tracestate` key: a `simple-key` (`lcalpha 0*255(keychar)`) or
/// a `multi-tenant-key`, `tenant-id "@" system-id` with `tenant-id = (lcalpha / DIGIT)
/// 0*240(keychar)` and `system-id = lcalpha 0*13(keychar)`. So at most 256 characters,
/// and at most one `@`, with something on both sides.
fn is_tracestate_key(key: &[u8]) -> bool {
    let part = |part: &[u8], digit_first: bool, max_rest: usize| match part {
        [first, rest @ ..] => {
            (first.is_ascii_lowercase() || (digit_first && first.is_ascii_digit()))
                && rest.len() <= max_rest
                && rest.iter().all(|byte| is_tracestate_key_char(*byte))
        }
        [] => false,
    };
    match key.iter().position(|byte| *byte == b'@') {
        None => part(key, false, 255),
        Some(at) => part(&key[..at], true, 240) && part(&key[at + 1..], false, 13),
    }
}

/// W3C Trace Context's `tracestate` value: `0*255(chr) nblk-chr`, with `chr = %x20 /
/// nblk-chr` and `nblk-chr = %x21-2B / %x2D-3C / %x3E-7E`. So 1 to 256 printable ASCII
/// characters, no `,` or `=`, not ending in a space (a space there is OWS, trimmed
/// before; a leading space is part of the value).
fn is_tracestate_value(value: &[u8]) -> bool {
    let nblk = |byte: u8| matches!(byte, 0x21..=0x2B | 0x2D..=0x3C | 0x3E..=0x7E);
    match value {
        [rest @ .., last] => {
            value.len() <= MAX_TRACESTATE_VALUE
                && nblk(*last)
                && rest.iter().all(|byte| *byte == b' ' || nblk(*byte))
        }
        [] => false,
    }
}
