//! A plain reference model of PEP 567 and an op runner that checks the crate against it.
//!
//! Shared, unchanged, by the proptest in `tests/it/differential.rs` and by the cargo-fuzz
//! target `fuzz/fuzz_targets/differential.rs` (which includes this file with `#[path]`),
//! so it depends on nothing but `contextvars` and std.
//!
//! **The model** ([`Model`]) is what python-semantics.md describes, with no cleverness:
//! every context object is a `HashMap` from variable to value, each thread has a stack of
//! the contexts it has entered, a token is `(variable, old value, context identity, used)`,
//! and a value is `(object identity, payload)`, so that `==` can be by value for variables
//! whose type has `PartialEq` and by object identity for the others (every variable here
//! has a `PartialEq` type; `tests/it/context.rs` checks identity for a type without one).
//!
//! **The runner** executes a program (a `&[Op]`) against the crate and the model at the
//! same time and asserts that they agree after every op. The program is flat: the ops
//! that open a block ([`Op::Run`], [`Op::RunNew`], [`Op::Scope`], [`Op::Thread`]) consume
//! the ops after them up to the matching [`Op::Exit`] (or the end) as their body. A thread
//! hand-off runs its body on a new std thread, with the model's state moved there and back.
//!
//! **Bytes.** [`decode`] turns any byte string into a program (a small hand-written
//! decoder: a tag byte, then one byte per field), and [`encode`] is its inverse, for seeds.
//!
//! Using a token twice cannot be expressed in Rust (`reset` moves it), so the model's
//! "already used" check exists for fidelity but the runner never reaches it.

use std::collections::{BTreeSet, HashMap};
use std::panic::resume_unwind;
use std::sync::Arc;

use contextvars::{Context, ContextVar, Snapshot, Token, context_var, copy_context};

// ------------------------------------------------------------------------------ variables

context_var! {
    /// `u32`, no default, `==` by value.
    static A: u32;
    /// `u32` with a default, `==` by value.
    static B: u32 = 7;
    /// `String` with a lazy default, `==` by value.
    static S: String = lazy String::from("100");
}
/// `u32`, no default, declared with a name of its own: `==` by value.
static C: ContextVar<u32> = contextvars::context_var!(u32, "C");
/// `u32` with a default, declared with a name of its own: `==` by value.
static D: ContextVar<u32> = contextvars::context_var!(u32, "D", default 9);
/// `String`, no default, declared with a name of its own: `==` by value.
static T: ContextVar<String> = contextvars::context_var!(String, "T");

/// A variable under test, typed.
#[derive(Clone, Copy)]
enum VarRef {
    U32(&'static ContextVar<u32>),
    Str(&'static ContextVar<String>),
}

/// A variable and what the model needs to know about it.
struct VarSpec {
    var: VarRef,
    name: &'static str,
    /// The variable's own default, as a payload.
    default: Option<u32>,
    /// Whether `Context::==` compares its values with `==` (else by identity).
    by_value: bool,
}

/// The variables, indexed by the `var` fields of [`Op`]. `String` values are the decimal
/// form of the payload.
static VARS: [VarSpec; 6] = [
    VarSpec {
        var: VarRef::U32(&A),
        name: "A",
        default: None,
        by_value: true,
    },
    VarSpec {
        var: VarRef::U32(&B),
        name: "B",
        default: Some(7),
        by_value: true,
    },
    VarSpec {
        var: VarRef::U32(&C),
        name: "C",
        default: None,
        by_value: true,
    },
    VarSpec {
        var: VarRef::U32(&D),
        name: "D",
        default: Some(9),
        by_value: true,
    },
    VarSpec {
        var: VarRef::Str(&S),
        name: "S",
        default: Some(100),
        by_value: true,
    },
    VarSpec {
        var: VarRef::Str(&T),
        name: "T",
        default: None,
        by_value: true,
    },
];

/// The payload of a `String` value.
fn parse(value: &str) -> u32 {
    value.parse().expect("String values are decimal payloads")
}

/// A `Token` of any of the variables' types.
enum CrateToken {
    U32(Token<'static, u32>),
    Str(Token<'static, String>),
}

/// What a crate `reset` returned, in the model's terms.
fn reset_outcome<T: Send + Sync + 'static>(
    result: Result<(), contextvars::ResetError<'static, T>>,
    wrap: fn(Token<'static, T>) -> CrateToken,
) -> Result<(), (ResetFailure, CrateToken)> {
    result.map_err(|error| {
        let failure = if error.is_different_var() {
            ResetFailure::DifferentVar
        } else if error.is_different_context() {
            ResetFailure::DifferentContext
        } else {
            panic!("unexpected reset error: {error:?}")
        };
        (failure, wrap(error.into_token()))
    })
}

impl VarRef {
    fn set(self, payload: u32) -> CrateToken {
        match self {
            VarRef::U32(var) => CrateToken::U32(var.set(payload)),
            VarRef::Str(var) => CrateToken::Str(var.set(payload.to_string())),
        }
    }

    fn try_get(self) -> Option<u32> {
        match self {
            VarRef::U32(var) => var.try_get().ok(),
            VarRef::Str(var) => var.try_get().ok().map(|value| parse(&value)),
        }
    }

    /// Every other way of reading the current value, each checked against `expected`
    /// (the binding or the default) and `bound` (the binding alone).
    fn check_reads(self, name: &str, expected: Option<u32>, bound: Option<u32>) {
        const FALLBACK: u32 = u32::MAX;
        match self {
            VarRef::U32(var) => {
                assert_eq!(var.is_set(), bound.is_some(), "{name}.is_set()");
                assert_eq!(var.try_with(|v| *v).ok(), expected, "{name}.try_with");
                if expected.is_some() {
                    assert_eq!(Some(var.get()), expected, "{name}.get()");
                    assert_eq!(Some(var.with(|v| *v)), expected, "{name}.with");
                }
                let or = bound.unwrap_or(FALLBACK);
                assert_eq!(var.get_or(FALLBACK), or, "{name}.get_or");
                assert_eq!(var.with_or(&FALLBACK, |v| *v), or, "{name}.with_or");
            }
            VarRef::Str(var) => {
                assert_eq!(var.is_set(), bound.is_some(), "{name}.is_set()");
                assert_eq!(var.try_with(|v| parse(v)).ok(), expected, "{name}.try_with");
                if expected.is_some() {
                    assert_eq!(Some(parse(&var.get())), expected, "{name}.get()");
                }
                let fallback = FALLBACK.to_string();
                let or = bound.unwrap_or(FALLBACK);
                assert_eq!(parse(&var.get_or(fallback.clone())), or, "{name}.get_or");
                assert_eq!(var.with_or(&fallback, |v| parse(v)), or, "{name}.with_or");
            }
        }
    }

    fn default_value(self) -> Option<u32> {
        match self {
            VarRef::U32(var) => var.default_value().copied(),
            VarRef::Str(var) => var.default_value().map(|v| parse(v)),
        }
    }

    /// `ctx.get(var)` and the other per-variable mapping reads, which must agree.
    fn context_get(self, ctx: &Context, snapshot: &Snapshot) -> Option<u32> {
        let (got, contains, in_snapshot) = match self {
            VarRef::U32(var) => (
                ctx.snapshot().get(var).cloned(),
                ctx.snapshot().contains(var),
                snapshot.get(var).copied(),
            ),
            VarRef::Str(var) => (
                ctx.snapshot().get(var).cloned().map(|v| parse(&v)),
                ctx.snapshot().contains(var),
                snapshot.get(var).map(|v| parse(v)),
            ),
        };
        assert_eq!(
            got.is_some(),
            contains,
            "contains vs get, on the context's snapshot"
        );
        assert_eq!(
            got, in_snapshot,
            "a snapshot taken before vs the context's now"
        );
        got
    }

    fn snapshot_get(self, snapshot: &Snapshot) -> Option<u32> {
        match self {
            VarRef::U32(var) => snapshot.get(var).copied(),
            VarRef::Str(var) => snapshot.get(var).map(|v| parse(v)),
        }
    }

    fn with_value(self, ctx: &Context, payload: u32) -> Context {
        match self {
            VarRef::U32(var) => ctx.with_value(var, payload),
            VarRef::Str(var) => ctx.with_value(var, payload.to_string()),
        }
    }

    /// Runs `f` with the variable scoped to `payload` (`ContextVar::scope`).
    fn scope<R>(self, payload: u32, f: impl FnOnce() -> R) -> R {
        match self {
            VarRef::U32(var) => var.scope(payload, f),
            VarRef::Str(var) => var.scope(payload.to_string(), f),
        }
    }

    fn reset(self, token: CrateToken) -> Result<(), (ResetFailure, CrateToken)> {
        match (self, token) {
            (VarRef::U32(var), CrateToken::U32(token)) => {
                reset_outcome(var.reset(token), CrateToken::U32)
            }
            (VarRef::Str(var), CrateToken::Str(token)) => {
                reset_outcome(var.reset(token), CrateToken::Str)
            }
            _ => unreachable!("a token is only reset with a variable of its type"),
        }
    }

    fn same_type(self, other: VarRef) -> bool {
        matches!(
            (self, other),
            (VarRef::U32(_), VarRef::U32(_)) | (VarRef::Str(_), VarRef::Str(_))
        )
    }
}

impl CrateToken {
    fn old_value(&self) -> Option<u32> {
        match self {
            CrateToken::U32(token) => token.old_value().copied(),
            CrateToken::Str(token) => token.old_value().map(|v| parse(v)),
        }
    }

    fn var_name(&self) -> &'static str {
        match self {
            CrateToken::U32(token) => token.var().name(),
            CrateToken::Str(token) => token.var().name(),
        }
    }
}

// ------------------------------------------------------------------------------ programs

/// Number of variables in [`VARS`].
pub(crate) const VAR_COUNT: u8 = 6;
/// Payloads are `0..VALUE_RANGE`, small so that distinct value objects are often `==`.
pub(crate) const VALUE_RANGE: u8 = 4;

/// One operation. Index fields (`var`, `token`, `ctx`, ...) pick modulo the number of
/// candidates at the time the op runs; an op with no candidate does nothing.
///
/// `Debug` prints valid Rust (with `use Op::*`), so a failing program pastes straight
/// into a regression test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    /// `VARS[var].set(value)`; the token is kept.
    Set { var: u8, value: u8 },
    /// Reset a kept token with its own variable: `Ok` in the context it was made in,
    /// `DifferentContext` elsewhere (the token is handed back and kept).
    Reset { token: u8 },
    /// Reset a kept token with *another* variable of the same type: `DifferentVar`.
    ResetWrongVar { token: u8, var: u8 },
    /// Drop a kept token (the binding stays).
    DropToken { token: u8 },
    /// Every read of `VARS[var]`: `get`, `try_get`, `get_or`, `with`, `with_or`, `is_set`.
    Get { var: u8 },
    /// Store `copy_context()`.
    CopyContext,
    /// Store `Context::new()`.
    NewContext,
    /// Store `Context::current()`: a handle to the running context object itself.
    Current,
    /// Store `stored[ctx].copy()`.
    CopyStored { ctx: u8 },
    /// Store `stored[ctx].with_value(VARS[var], value)` (of `copy_context()` if none).
    WithValue { ctx: u8, var: u8, value: u8 },
    /// Drop a stored context.
    DropStored { ctx: u8 },
    /// Keep `stored[ctx].snapshot()` (of `copy_context()` if none); every kept snapshot is
    /// checked again at each `Check` and at the end: it must never change.
    Snapshot { ctx: u8 },
    /// The mapping reads of `stored[ctx]`: `len`, `is_empty`, `contains`, `get`, `iter`,
    /// `keys`, `snapshot`.
    Check { ctx: u8 },
    /// `stored[a] == stored[b]`, and both against `copy_context()`.
    Eq { a: u8, b: u8 },
    /// `stored[ctx].try_run(body)`; `EnterError` if it is entered (by this thread or
    /// another one), in which case the body runs at the current level instead.
    Run { ctx: u8 },
    /// `Context::new().run(body)`.
    RunNew,
    /// `VARS[var].scope(value, body)`: set, body, reset.
    Scope { var: u8, value: u8 },
    /// Run the body on a new std thread: `mode % 3 == 0` moves a copy of `stored[ctx]`
    /// (or of the current context) there, runs it and moves it back (stored);
    /// `1` runs `stored[ctx]` itself there through a shared `Arc` (`EnterError` if it is
    /// entered); `2` runs the body in the thread's own base context.
    Thread { ctx: u8, mode: u8 },
    /// Ends the innermost block (ignored at the top level).
    Exit,
}

/// Number of `Op` kinds, for the decoder.
const KINDS: u8 = 19;

/// Decodes bytes into a program: a tag byte picks the kind (`% KINDS`), then one byte per
/// field (missing bytes read as 0). Every byte string decodes to some program.
pub(crate) fn decode(data: &[u8]) -> Vec<Op> {
    let mut bytes = data.iter().copied();
    let mut ops = Vec::new();
    while let Some(tag) = bytes.next() {
        let mut next = || bytes.next().unwrap_or(0);
        let op = match tag % KINDS {
            0 => Op::Set {
                var: next(),
                value: next() % VALUE_RANGE,
            },
            1 => Op::Reset { token: next() },
            2 => Op::ResetWrongVar {
                token: next(),
                var: next(),
            },
            3 => Op::DropToken { token: next() },
            4 => Op::Get { var: next() },
            5 => Op::CopyContext,
            6 => Op::NewContext,
            7 => Op::Current,
            8 => Op::CopyStored { ctx: next() },
            9 => Op::WithValue {
                ctx: next(),
                var: next(),
                value: next() % VALUE_RANGE,
            },
            10 => Op::DropStored { ctx: next() },
            11 => Op::Snapshot { ctx: next() },
            12 => Op::Check { ctx: next() },
            13 => Op::Eq {
                a: next(),
                b: next(),
            },
            14 => Op::Run { ctx: next() },
            15 => Op::RunNew,
            16 => Op::Scope {
                var: next(),
                value: next() % VALUE_RANGE,
            },
            17 => Op::Thread {
                ctx: next(),
                mode: next(),
            },
            _ => Op::Exit,
        };
        ops.push(op);
    }
    ops
}

/// The bytes that [`decode`] turns back into `ops` (for hand-made fuzz seeds).
pub(crate) fn encode(ops: &[Op]) -> Vec<u8> {
    let mut out = Vec::new();
    for op in ops {
        let (tag, fields): (u8, &[u8]) = match *op {
            Op::Set { var, value } => (0, &[var, value]),
            Op::Reset { token } => (1, &[token]),
            Op::ResetWrongVar { token, var } => (2, &[token, var]),
            Op::DropToken { token } => (3, &[token]),
            Op::Get { var } => (4, &[var]),
            Op::CopyContext => (5, &[]),
            Op::NewContext => (6, &[]),
            Op::Current => (7, &[]),
            Op::CopyStored { ctx } => (8, &[ctx]),
            Op::WithValue { ctx, var, value } => (9, &[ctx, var, value]),
            Op::DropStored { ctx } => (10, &[ctx]),
            Op::Snapshot { ctx } => (11, &[ctx]),
            Op::Check { ctx } => (12, &[ctx]),
            Op::Eq { a, b } => (13, &[a, b]),
            Op::Run { ctx } => (14, &[ctx]),
            Op::RunNew => (15, &[]),
            Op::Scope { var, value } => (16, &[var, value]),
            Op::Thread { ctx, mode } => (17, &[ctx, mode]),
            Op::Exit => (18, &[]),
        };
        out.push(tag);
        out.extend_from_slice(fields);
    }
    out
}

// ------------------------------------------------------------------------------ the model

/// A value object: its identity (one per `set` / `with_value`) and its payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Value {
    obj: u64,
    payload: u32,
}

/// A context object's bindings: variable index → value.
pub(crate) type ModelMap = HashMap<usize, Value>;

/// A token: the variable, the value before the set (`None`: `Token.MISSING`), the
/// identity of the context the set happened in, and whether it was used.
#[derive(Clone, Debug)]
pub(crate) struct ModelToken {
    var: usize,
    old: Option<Value>,
    ctx: usize,
    used: bool,
}

/// Why a reset fails, in CPython's check order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ResetFailure {
    /// RuntimeError: the token has already been used once.
    Used,
    /// ValueError: the token was created by a different ContextVar.
    DifferentVar,
    /// ValueError: the token was created in a different Context.
    DifferentContext,
}

/// PEP 567, plainly: context objects are maps, identified by their index in `maps`.
#[derive(Clone, Debug, Default)]
pub(crate) struct Model {
    maps: Vec<ModelMap>,
    /// The contexts this thread has entered, innermost (the current one) last.
    stack: Vec<usize>,
    /// Contexts entered by other threads (which are waiting for this one).
    elsewhere: Vec<usize>,
    next_obj: u64,
}

impl Model {
    fn new_context(&mut self, map: ModelMap) -> usize {
        self.maps.push(map);
        self.maps.len() - 1
    }

    fn current_id(&self) -> usize {
        *self
            .stack
            .last()
            .expect("a thread always runs in some context")
    }

    fn current(&self) -> &ModelMap {
        &self.maps[self.current_id()]
    }

    fn fresh(&mut self, payload: u32) -> Value {
        self.next_obj += 1;
        Value {
            obj: self.next_obj,
            payload,
        }
    }

    /// `var.set(payload)` in the current context.
    fn set(&mut self, var: usize, payload: u32) -> ModelToken {
        let value = self.fresh(payload);
        let ctx = self.current_id();
        let old = self.maps[ctx].insert(var, value);
        ModelToken {
            var,
            old,
            ctx,
            used: false,
        }
    }

    /// `VARS[var].reset(token)`: CPython's three checks in order, then the restore (a
    /// missing old value removes the binding).
    fn reset(&mut self, token: &mut ModelToken, var: usize) -> Result<(), ResetFailure> {
        if token.used {
            return Err(ResetFailure::Used);
        }
        if token.var != var {
            return Err(ResetFailure::DifferentVar);
        }
        let ctx = self.current_id();
        if token.ctx != ctx {
            return Err(ResetFailure::DifferentContext);
        }
        token.used = true;
        match token.old {
            Some(old) => self.maps[ctx].insert(var, old),
            None => self.maps[ctx].remove(&var),
        };
        Ok(())
    }

    /// The binding in the current context.
    fn bound(&self, var: usize) -> Option<u32> {
        self.current().get(&var).map(|v| v.payload)
    }

    /// `var.get()`: the binding, else the variable's default, else LookupError (`None`).
    fn get(&self, var: usize) -> Option<u32> {
        self.bound(var).or(VARS[var].default)
    }

    /// Whether a context object is entered by any thread.
    fn is_entered(&self, ctx: usize) -> bool {
        self.stack.contains(&ctx) || self.elsewhere.contains(&ctx)
    }

    /// `Context.__eq__`: the same variables, values `==` (by value where the type has
    /// `PartialEq`, else by object identity).
    fn eq(a: &ModelMap, b: &ModelMap) -> bool {
        a.len() == b.len()
            && a.iter().all(|(var, x)| {
                b.get(var).is_some_and(|y| {
                    if VARS[*var].by_value {
                        x.payload == y.payload
                    } else {
                        x.obj == y.obj
                    }
                })
            })
    }
}

// ------------------------------------------------------------------------------ the runner

/// Bounds that keep one program cheap and its recursion shallow.
const MAX_DEPTH: usize = 12;
const MAX_STORED: usize = 12;
const MAX_TOKENS: usize = 32;
const MAX_SNAPSHOTS: usize = 8;
const MAX_THREADS: usize = if cfg!(miri) { 3 } else { 8 };

/// How often each interesting outcome happened in a run (so tests can check that the
/// generators reach them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Stats {
    pub(crate) ops: usize,
    pub(crate) sets: usize,
    pub(crate) resets_ok: usize,
    pub(crate) resets_different_var: usize,
    pub(crate) resets_different_context: usize,
    pub(crate) enter_errors: usize,
    pub(crate) runs: usize,
    pub(crate) threads: usize,
    pub(crate) thread_enter_errors: usize,
    pub(crate) equalities: usize,
    pub(crate) unequal: usize,
    pub(crate) max_depth: usize,
}

impl Stats {
    /// Adds another run's counts to these.
    pub(crate) fn add(&mut self, other: &Stats) {
        self.ops += other.ops;
        self.sets += other.sets;
        self.resets_ok += other.resets_ok;
        self.resets_different_var += other.resets_different_var;
        self.resets_different_context += other.resets_different_context;
        self.enter_errors += other.enter_errors;
        self.runs += other.runs;
        self.threads += other.threads;
        self.thread_enter_errors += other.thread_enter_errors;
        self.equalities += other.equalities;
        self.unequal += other.unequal;
        self.max_depth = self.max_depth.max(other.max_depth);
    }
}

/// A stored context object and its model identity.
type Stored = (Arc<Context>, usize);

/// The part of the runner's state that can move to another thread and back.
struct World {
    model: Model,
    stored: Vec<Stored>,
    snapshots: Vec<(Snapshot, ModelMap)>,
    threads_left: usize,
    stats: Stats,
}

/// A kept token: the crate's and the model's.
struct Held {
    token: CrateToken,
    model: ModelToken,
}

/// Executes a program on one thread.
struct Runner<'o> {
    ops: &'o [Op],
    pos: usize,
    world: World,
    /// Tokens are `!Send`: each thread keeps its own, dropped when its body ends.
    tokens: Vec<Held>,
}

fn pick(index: u8, len: usize) -> Option<usize> {
    (len > 0).then(|| usize::from(index) % len)
}

fn var_index(var: u8) -> usize {
    usize::from(var) % VARS.len()
}

/// A context's mapping reads against a model map.
fn check_context(ctx: &Context, map: &ModelMap, what: &str) {
    let snapshot = ctx.snapshot();
    assert_eq!(ctx.snapshot().len(), map.len(), "{what}: len");
    assert_eq!(
        ctx.snapshot().is_empty(),
        map.is_empty(),
        "{what}: is_empty"
    );
    assert_eq!(snapshot.len(), map.len(), "{what}: snapshot len");
    for (i, spec) in VARS.iter().enumerate() {
        let expected = map.get(&i).map(|v| v.payload);
        assert_eq!(
            spec.var.context_get(ctx, &snapshot),
            expected,
            "{what}: get({})",
            spec.name
        );
    }
    check_entries(&snapshot, map, what);
    let iter = ctx.snapshot().into_iter();
    assert_eq!(iter.len(), map.len(), "{what}: iter().len()");
    let names: BTreeSet<&str> = iter.map(|entry| entry.name()).collect();
    let expected: BTreeSet<&str> = map.keys().map(|&i| VARS[i].name).collect();
    assert_eq!(names, expected, "{what}: iter() names");
    let keys: BTreeSet<u64> = ctx.snapshot().keys().map(|id| id.as_u64()).collect();
    let expected: BTreeSet<u64> = map
        .keys()
        .map(|&i| match VARS[i].var {
            VarRef::U32(var) => var.id().as_u64(),
            VarRef::Str(var) => var.id().as_u64(),
        })
        .collect();
    assert_eq!(keys, expected, "{what}: keys()");
}

/// A snapshot's contents (through `get` and through iteration) against a model map.
fn check_entries(snapshot: &Snapshot, map: &ModelMap, what: &str) {
    assert_eq!(snapshot.len(), map.len(), "{what}: snapshot len");
    for (i, spec) in VARS.iter().enumerate() {
        assert_eq!(
            spec.var.snapshot_get(snapshot),
            map.get(&i).map(|v| v.payload),
            "{what}: snapshot get({})",
            spec.name
        );
    }
    let mut seen = 0;
    for entry in snapshot {
        let i = VARS
            .iter()
            .position(|spec| spec.name == entry.name())
            .expect("an entry of a known variable");
        let payload = match VARS[i].var {
            VarRef::U32(var) => entry.get(var).copied(),
            VarRef::Str(var) => entry.get(var).map(|v| parse(v)),
        };
        assert_eq!(
            payload,
            map.get(&i).map(|v| v.payload),
            "{what}: entry {}",
            VARS[i].name
        );
        seen += 1;
    }
    assert_eq!(seen, map.len(), "{what}: entries iterated");
}

impl<'o> Runner<'o> {
    /// The current context (the crate's) against the model's innermost context.
    fn check_current(&self) {
        let model = &self.world.model;
        for (i, spec) in VARS.iter().enumerate() {
            let expected = model.get(i);
            assert_eq!(spec.var.try_get(), expected, "{}.try_get()", spec.name);
            spec.var.check_reads(spec.name, expected, model.bound(i));
        }
        let copy = copy_context();
        assert_eq!(
            copy.snapshot().len(),
            model.current().len(),
            "copy_context().len()"
        );
        for (i, spec) in VARS.iter().enumerate() {
            let bound = model.current().get(&i).map(|v| v.payload);
            assert_eq!(
                spec.var.context_get(&copy, &copy.snapshot()),
                bound,
                "copy_context().get({})",
                spec.name
            );
        }
    }

    /// Every stored context and kept snapshot against the model.
    fn check_all(&self) {
        for (ctx, id) in &self.world.stored {
            check_context(ctx, &self.world.model.maps[*id], "stored context");
        }
        for (snapshot, map) in &self.world.snapshots {
            check_entries(snapshot, map, "kept snapshot");
        }
    }

    /// Stores a context (replacing the oldest when full).
    fn store(&mut self, ctx: Context, id: usize) {
        let stored = &mut self.world.stored;
        if stored.len() >= MAX_STORED {
            stored.remove(0);
        }
        stored.push((Arc::new(ctx), id));
    }

    /// A stored context, or `None` if there are none.
    fn stored(&self, ctx: u8) -> Option<Stored> {
        pick(ctx, self.world.stored.len()).map(|j| self.world.stored[j].clone())
    }

    /// A copy of `stored[ctx]`, or of the current context if nothing is stored, with the
    /// model's map for it.
    fn copy_of(&self, ctx: u8) -> (Context, ModelMap) {
        match self.stored(ctx) {
            Some((ctx, id)) => (ctx.copy(), self.world.model.maps[id].clone()),
            None => (copy_context(), self.world.model.current().clone()),
        }
    }

    fn keep(&mut self, held: Held) {
        if self.tokens.len() < MAX_TOKENS {
            self.tokens.push(held);
        }
    }

    fn set(&mut self, var: usize, payload: u32) -> Held {
        let model = self.world.model.set(var, payload);
        let token = VARS[var].var.set(payload);
        assert_eq!(
            token.old_value(),
            model.old.map(|v| v.payload),
            "{}: Token::old_value",
            VARS[var].name
        );
        assert_eq!(token.var_name(), VARS[var].name, "Token::var");
        self.world.stats.sets += 1;
        Held { token, model }
    }

    /// Resets `held` with `VARS[with]`, checks the outcome against the model, and hands
    /// the token back if the reset failed.
    fn reset(&mut self, held: Held, with: usize) -> Option<Held> {
        let Held { token, mut model } = held;
        let expected = self.world.model.reset(&mut model, with);
        let actual = VARS[with].var.reset(token);
        match (expected, actual) {
            (Ok(()), Ok(())) => {
                self.world.stats.resets_ok += 1;
                None
            }
            (Err(expected), Err((actual, token))) => {
                assert_eq!(actual, expected, "reset error kind");
                match actual {
                    ResetFailure::DifferentVar => self.world.stats.resets_different_var += 1,
                    ResetFailure::DifferentContext => {
                        self.world.stats.resets_different_context += 1
                    }
                    ResetFailure::Used => unreachable!("tokens are moved into reset"),
                }
                Some(Held { token, model })
            }
            (expected, actual) => panic!(
                "reset of a {} token with {}: model says {expected:?}, crate says {:?}",
                VARS[model.var].name,
                VARS[with].name,
                actual.map_err(|(failure, _)| failure)
            ),
        }
    }

    /// Runs ops up to an `Exit` (at `depth > 0`) or the end of the program.
    fn exec(&mut self, depth: usize) {
        self.world.stats.max_depth = self.world.stats.max_depth.max(depth);
        while let Some(&op) = self.ops.get(self.pos) {
            self.pos += 1;
            self.world.stats.ops += 1;
            if op == Op::Exit {
                if depth > 0 {
                    return;
                }
                continue;
            }
            self.step(op, depth);
            self.check_current();
        }
    }

    fn step(&mut self, op: Op, depth: usize) {
        match op {
            Op::Set { var, value } => {
                let held = self.set(var_index(var), u32::from(value));
                self.keep(held);
            }
            Op::Reset { token } => {
                if let Some(t) = pick(token, self.tokens.len()) {
                    let held = self.tokens.swap_remove(t);
                    let var = held.model.var;
                    if let Some(held) = self.reset(held, var) {
                        self.tokens.push(held);
                    }
                }
            }
            Op::ResetWrongVar { token, var } => {
                if let Some(t) = pick(token, self.tokens.len()) {
                    let own = self.tokens[t].model.var;
                    // Another variable of the same type (the types are checked statically).
                    let others: Vec<usize> = (0..VARS.len())
                        .filter(|&j| j != own && VARS[j].var.same_type(VARS[own].var))
                        .collect();
                    if let Some(k) = pick(var, others.len()) {
                        let held = self.tokens.swap_remove(t);
                        let held = self.reset(held, others[k]).expect("must fail");
                        self.tokens.push(held);
                    }
                }
            }
            Op::DropToken { token } => {
                if let Some(t) = pick(token, self.tokens.len()) {
                    drop(self.tokens.swap_remove(t));
                }
            }
            Op::Get { var } => {
                let i = var_index(var);
                let model = &self.world.model;
                assert_eq!(
                    VARS[i].var.default_value(),
                    VARS[i].default,
                    "default_value"
                );
                VARS[i]
                    .var
                    .check_reads(VARS[i].name, model.get(i), model.bound(i));
            }
            Op::CopyContext => {
                let map = self.world.model.current().clone();
                let id = self.world.model.new_context(map);
                self.store(copy_context(), id);
            }
            Op::NewContext => {
                let id = self.world.model.new_context(ModelMap::new());
                self.store(Context::new(), id);
            }
            Op::Current => {
                let id = self.world.model.current_id();
                self.store(Context::current(), id);
            }
            Op::CopyStored { ctx } => {
                if let Some((ctx, id)) = self.stored(ctx) {
                    let map = self.world.model.maps[id].clone();
                    let id = self.world.model.new_context(map);
                    self.store(ctx.copy(), id);
                }
            }
            Op::WithValue { ctx, var, value } => {
                let i = var_index(var);
                let (base, mut map) = self.copy_of(ctx);
                let value = self.world.model.fresh(u32::from(value));
                map.insert(i, value);
                let id = self.world.model.new_context(map);
                let new = VARS[i].var.with_value(&base, value.payload);
                self.store(new, id);
            }
            Op::DropStored { ctx } => {
                if let Some(j) = pick(ctx, self.world.stored.len()) {
                    drop(self.world.stored.remove(j));
                }
            }
            Op::Snapshot { ctx } => {
                let (snapshot, map) = match self.stored(ctx) {
                    Some((ctx, id)) => (ctx.snapshot(), self.world.model.maps[id].clone()),
                    None => (
                        copy_context().snapshot(),
                        self.world.model.current().clone(),
                    ),
                };
                check_entries(&snapshot, &map, "new snapshot");
                let snapshots = &mut self.world.snapshots;
                if snapshots.len() >= MAX_SNAPSHOTS {
                    snapshots.remove(0);
                }
                snapshots.push((snapshot, map));
            }
            Op::Check { ctx } => {
                if let Some((ctx, id)) = self.stored(ctx) {
                    check_context(&ctx, &self.world.model.maps[id], "checked context");
                }
                for (snapshot, map) in &self.world.snapshots {
                    check_entries(snapshot, map, "kept snapshot");
                }
            }
            Op::Eq { a, b } => self.check_eq(a, b),
            Op::Run { ctx } => {
                let Some((ctx, id)) = self.stored(ctx) else {
                    return;
                };
                if self.world.model.is_entered(id) {
                    let error = ctx.try_run(|| ()).expect_err("the context is entered");
                    assert!(error.is_already_entered(), "{error:?}");
                    self.world.stats.enter_errors += 1;
                    return;
                }
                if depth >= MAX_DEPTH {
                    return;
                }
                self.world.stats.runs += 1;
                self.world.model.stack.push(id);
                ctx.try_run(|| {
                    self.check_current();
                    self.exec(depth + 1);
                })
                .expect("a context entered by no thread can be entered");
                self.world.model.stack.pop();
                check_context(&ctx, &self.world.model.maps[id], "context after run");
            }
            Op::RunNew => {
                if depth >= MAX_DEPTH {
                    return;
                }
                self.world.stats.runs += 1;
                let id = self.world.model.new_context(ModelMap::new());
                self.world.model.stack.push(id);
                let ctx = Context::new();
                ctx.run(|| {
                    self.check_current();
                    self.exec(depth + 1);
                });
                self.world.model.stack.pop();
                check_context(&ctx, &self.world.model.maps[id], "new context after run");
            }
            Op::Scope { var, value } => {
                if depth >= MAX_DEPTH {
                    return;
                }
                let i = var_index(var);
                let payload = u32::from(value);
                let mut token = self.world.model.set(i, payload);
                VARS[i].var.scope(payload, || {
                    self.check_current();
                    self.exec(depth + 1);
                });
                self.world
                    .model
                    .reset(&mut token, i)
                    .expect("a scope ends in the context it began in");
            }
            Op::Thread { ctx, mode } => {
                if self.world.threads_left == 0 || depth >= MAX_DEPTH {
                    return;
                }
                self.world.threads_left -= 1;
                self.world.stats.threads += 1;
                match mode % 3 {
                    0 => self.thread_moved_copy(ctx, depth),
                    1 => self.thread_shared(ctx, depth),
                    _ => self.thread_base(depth),
                }
            }
            Op::Exit => unreachable!("handled by exec"),
        }
    }

    fn check_eq(&mut self, a: u8, b: u8) {
        let current = copy_context();
        let current_map = self.world.model.current().clone();
        let (ca, ma) = match self.stored(a) {
            Some((ctx, id)) => (ctx, self.world.model.maps[id].clone()),
            None => (Arc::new(copy_context()), current_map.clone()),
        };
        let (cb, mb) = match self.stored(b) {
            Some((ctx, id)) => (ctx, self.world.model.maps[id].clone()),
            None => (Arc::new(Context::new()), ModelMap::new()),
        };
        let expected = Model::eq(&ma, &mb);
        assert_eq!(*ca == *cb, expected, "a == b: {ma:?} vs {mb:?}");
        assert_eq!(*cb == *ca, expected, "b == a: {ma:?} vs {mb:?}");
        assert_eq!(ca.snapshot() == cb.snapshot(), expected, "snapshot a == b");
        assert!(*ca == ca.copy(), "a == a.copy()");
        assert_eq!(
            *ca == current,
            Model::eq(&ma, &current_map),
            "a == copy_context()"
        );
        if expected {
            self.world.stats.equalities += 1;
        } else {
            self.world.stats.unequal += 1;
        }
    }

    /// Runs the program's next block on a new thread, in a `World` moved there and back.
    /// `body` gets the thread's runner after the thread's base context is in the model.
    fn on_thread<R: Send>(&mut self, body: impl FnOnce(&mut Runner<'o>) -> R + Send) -> R {
        let ops = self.ops;
        let pos = self.pos;
        let mut world = std::mem::replace(
            &mut self.world,
            World {
                model: Model::default(),
                stored: Vec::new(),
                snapshots: Vec::new(),
                threads_left: 0,
                stats: Stats::default(),
            },
        );
        // This thread's entered contexts stay entered while the other thread runs.
        let stack = std::mem::take(&mut world.model.stack);
        let elsewhere = world.model.elsewhere.clone();
        world.model.elsewhere.extend(&stack);
        let base = world.model.new_context(ModelMap::new());
        world.model.stack.push(base);
        let outcome = std::thread::scope(|scope| {
            let handle = scope.spawn(move || {
                // A new thread starts with an empty context.
                for spec in &VARS {
                    assert_eq!(
                        spec.var.try_get(),
                        spec.default,
                        "{} in a new thread",
                        spec.name
                    );
                }
                assert!(
                    copy_context().snapshot().is_empty(),
                    "a new thread's context is empty"
                );
                let mut runner = Runner {
                    ops,
                    pos,
                    world,
                    tokens: Vec::new(),
                };
                runner.check_current();
                let result = body(&mut runner);
                let Runner {
                    pos, world, tokens, ..
                } = runner;
                // Tokens belong to this thread; dropping them keeps their bindings.
                drop(tokens);
                (pos, world, result)
            });
            handle.join()
        });
        let (pos, mut world, result) = match outcome {
            Ok(outcome) => outcome,
            Err(panic) => resume_unwind(panic),
        };
        world.model.stack = stack;
        world.model.elsewhere = elsewhere;
        self.pos = pos;
        self.world = world;
        result
    }

    /// `Op::Thread` mode 0: a copy moved to a thread, run there, moved back.
    fn thread_moved_copy(&mut self, ctx: u8, depth: usize) {
        let (copy, map) = self.copy_of(ctx);
        let id = self.world.model.new_context(map);
        let copy = self.on_thread(move |runner| {
            runner.world.model.stack.push(id);
            copy.run(|| {
                runner.check_current();
                runner.exec(depth + 1);
            });
            runner.world.model.stack.pop();
            copy
        });
        check_context(&copy, &self.world.model.maps[id], "context moved back");
        self.store(copy, id);
    }

    /// `Op::Thread` mode 1: a stored context object run by another thread.
    fn thread_shared(&mut self, ctx: u8, depth: usize) {
        let Some((ctx, id)) = self.stored(ctx) else {
            return;
        };
        let shared = ctx.clone();
        let entered = self.on_thread(move |runner| {
            if runner.world.model.is_entered(id) {
                let error = shared.try_run(|| ()).expect_err("the context is entered");
                assert!(error.is_already_entered(), "{error:?}");
                return true;
            }
            runner.world.model.stack.push(id);
            shared
                .try_run(|| {
                    runner.check_current();
                    runner.exec(depth + 1);
                })
                .expect("a context entered by no thread can be entered from any thread");
            runner.world.model.stack.pop();
            false
        });
        if entered {
            self.world.stats.thread_enter_errors += 1;
        }
        check_context(&ctx, &self.world.model.maps[id], "context run by a thread");
    }

    /// `Op::Thread` mode 2: the body runs in the new thread's own base context (a
    /// `Current` handle to it outlives the thread and can be run afterwards).
    fn thread_base(&mut self, depth: usize) {
        self.on_thread(|runner| runner.exec(depth + 1));
    }
}

/// Runs a program against the crate and the model, panicking at the first difference.
///
/// The program runs in a new `Context` on this thread (and in threads it spawns), so
/// nothing carries over between programs; the caller's context is left untouched.
pub(crate) fn run(ops: &[Op]) -> Stats {
    let before = copy_context();
    let mut model = Model::default();
    let root = model.new_context(ModelMap::new());
    model.stack.push(root);
    let mut runner = Runner {
        ops,
        pos: 0,
        world: World {
            model,
            stored: Vec::new(),
            snapshots: Vec::new(),
            threads_left: MAX_THREADS,
            stats: Stats::default(),
        },
        tokens: Vec::new(),
    };
    let ctx = Context::new();
    ctx.run(|| {
        runner.check_current();
        runner.exec(0);
        runner.check_all();
    });
    check_context(
        &ctx,
        &runner.world.model.maps[root],
        "the program's context",
    );
    // Out of every run: the stored contexts and snapshots are still what the model says,
    // and dropping the tokens (which keeps bindings) does not touch this thread's context.
    runner.check_all();
    let stats = runner.world.stats;
    drop(runner);
    assert!(
        copy_context() == before,
        "the caller's context is untouched"
    );
    stats
}

/// [`run`] on a decoded byte string.
pub(crate) fn run_bytes(data: &[u8]) -> Stats {
    run(&decode(data))
}
