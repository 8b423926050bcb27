//! The combined callsites of [`ContextFields`]: per original callsite (and per list of
//! variables), metadata whose fields are the original ones followed by the variables',
//! built once and leaked (it must be `'static` to be a callsite), cached per thread; and
//! the per-location metadata of records bridged from `log`.

#![deny(unsafe_code)]

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Mutex, PoisonError};

use ::tracing_core::callsite::{Callsite, Identifier};
use ::tracing_core::field::FieldSet;
use ::tracing_core::metadata::Kind;
use ::tracing_core::subscriber::Interest;
use ::tracing_core::{Level, Metadata};

use std::cell::Cell;
use std::sync::OnceLock;

use super::fields::ContextFields;

/// The callsite of the events that [`ContextFields`] builds for one original callsite
/// and one list of variables. Leaked: it must be `'static` to be an [`Identifier`].
pub(super) struct Combined {
    /// Set right after the callsite is leaked (its `FieldSet` names the callsite itself).
    pub(super) metadata: OnceLock<Metadata<'static>>,
    pub(super) shape: Shape,
}

/// The fields of a [`Combined`] callsite.
pub(super) struct Shape {
    /// The original fields' names, then the variables'.
    pub(super) names: &'static [&'static str],
    /// For each field after the original ones: the index of its variable in the
    /// [`ContextFields`]' list. Variables whose name clashes are not here.
    pub(super) vars: Box<[usize]>,
    /// How many fields the original callsite has.
    pub(super) own: usize,
    /// Whether the original callsite is one of `tracing-log`'s (see [`is_log_record`]).
    pub(super) log_record: bool,
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
    "contextvars_tracing",
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

pub(super) fn intern_layout(names: &[&'static str]) -> u64 {
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
pub(super) fn log_combined(
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
pub(super) struct LogLocation<'a> {
    pub(super) target: Option<&'a str>,
    pub(super) module_path: Option<&'a str>,
    pub(super) file: Option<&'a str>,
    pub(super) line: Option<u32>,
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
thread_local! {
    static LOCAL_CALLSITES: Cell<Option<LocalMap>> = const { Cell::new(None) };
    static LOCAL_LOG_CALLSITES: Cell<Option<LocalLogMap>> = const { Cell::new(None) };
}

/// The combined callsite for `key` (the original metadata's address and the layout of
/// `fields`' variables): from this thread's cache, else from the process-wide map (built
/// and leaked there the first time).
pub(super) fn combined_for<E>(
    key: (usize, u64),
    original: &'static Metadata<'static>,
    fields: &ContextFields<E>,
) -> &'static Combined {
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
    let combined = global_combined(key, original, fields);
    let _ = LOCAL_CALLSITES.try_with(|cell| {
        let mut map = cell.take().unwrap_or_default();
        map.insert(key, combined);
        cell.set(Some(map));
    });
    combined
}
