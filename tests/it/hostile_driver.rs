//! A hostile driver for `in_copied_context()`: a custom rayon `ParallelIterator` that
//! takes the consumer the adapter hands down and does, in any order, everything rayon's
//! public plumbing lets safe code do with it, checked against a model after every step.
//!
//! Shared, unchanged, by the property test in `tests/it/hostile.rs` and by the cargo-fuzz
//! target `fuzz/fuzz_targets/hostile.rs` (which include this file with `#[path]`), so it
//! depends on nothing but `contextvars`, `rayon` and std.
//!
//! **Why.** rayon's `Consumer`, `Folder` and `Reducer` are public traits, so the code that
//! drives a consumer decides when and where its folders are made, fed, completed and
//! dropped: inside or outside `Context::run`s, after changing its own bindings, after
//! leaking them with `mem::forget`, while a consuming closure panics, or on another
//! thread. None of that may break memory safety, leak a binding into the driver, or change
//! what the consuming closures see.
//!
//! **The driver** ([`Driver`]) interprets a program ([`Program`]: a consuming [`Mode`], the
//! [`Place`] the consuming call runs in, and a flat list of [`Op`]s) over pools of the consumers, folders, reducers, results and
//! tokens it holds; ops name pool entries by index modulo the number of live entries (an
//! op on an empty pool does nothing). [`Op::Run`] runs the next `len` ops inside
//! `Context::run` of one of a few driver-owned contexts. Items tell the consuming closure
//! what to do ([`Kind`]): nothing, set `X` and keep the binding, also take
//! `Context::current()`, or panic after the set.
//!
//! **The model** checks after every op that
//!
//! * every read inside a closure after the adapter (the consuming closure, `fold`'s and
//!   `reduce`'s identities and operator) saw exactly the capture of the adapter before
//!   it, or the item's own set made earlier in the same closure: never a previous item's
//!   set, never the driver's values, never another adapter's capture;
//! * every read by the driver sees the driver's own state: its base frame, or the context
//!   it is running, modelled as plain `Option<u64>`s and a stack;
//! * the driver's contexts are entered exactly while the driver runs them (`try_run`
//!   succeeds for every other one) and hold what the driver set in them;
//! * the consuming closure saw each item fed to a folder exactly once (up to an injected
//!   panic), and a `Context::current()` handle taken by an item keeps that item's value;
//! * in `fold`/`reduce` mode, the final result holds exactly the items of the results
//!   still alive at the end.
//!
//! Hangs and UB are not modelled: the test harness (a timeout, miri, ASAN) catches them.
//!
//! **Bytes.** [`decode`] turns any byte string into a program (a byte for the [`Mode`] and
//! the [`Place`], then per op a tag byte and one byte per field; missing bytes read as 0),
//! and [`encode`] is its inverse, for seeds and regression programs.

use std::any::Any;
use std::fmt::Write as _;
use std::panic::{self, AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, Once, PoisonError};

use contextvars::rayon::ParallelIteratorExt;
use contextvars::{Context, ContextVar, Token};
use rayon::iter::ParallelIterator;
use rayon::iter::plumbing::{Folder, Reducer, UnindexedConsumer};

// ------------------------------------------------------------------------------ values

/// The variable the driver and the items set.
static X: ContextVar<u64> = contextvars::context_var!(u64, "hostile_x");
/// A variable only the setup and the driver's contexts bind: a second witness of which
/// snapshot a read sees.
static Y: ContextVar<u64> = contextvars::context_var!(u64, "hostile_y");

/// What the adapter captures (in [`Mode::Pipeline`], the outer one): every closure after
/// it must see these.
const CAPTURED_X: u64 = 1;
const CAPTURED_Y: u64 = 2;
/// What the driver's base frame holds when it starts (set after the capture).
const DRIVER_X: u64 = 3;
const DRIVER_Y: u64 = 4;
/// What the inner adapter of [`Mode::Pipeline`] captures: the `map` between the two
/// adapters must see these, the `for_each` after the outer one must not.
const INNER_X: u64 = 5;
const INNER_Y: u64 = 6;
/// `Op::Set { value }` sets `X` to `DRIVER_SET_BASE + value`.
const DRIVER_SET_BASE: u64 = 100;
/// An item that sets `X` sets it to `ITEM_SET_BASE + id`.
const ITEM_SET_BASE: u64 = 1_000_000;

/// The driver's contexts: context `i` binds `Y = 500 + i`, and context 0 also `X = 600`.
const CTX_COUNT: usize = 3;

fn ctx_y(ctx: usize) -> u64 {
    500 + ctx as u64
}

fn ctx_initial_x(ctx: usize) -> Option<u64> {
    (ctx == 0).then_some(600)
}

/// `Op::Run` bodies are at most this long (`len % MAX_RUN_BODY`).
pub(crate) const MAX_RUN_BODY: u8 = 8;
/// Deeper `Op::Run`s run their body at the current level (keeps fuzz inputs of
/// consecutive runs from overflowing the stack).
const MAX_DEPTH: usize = 16;

// ---------------------------------------------------------------------------- programs

/// How the outer code consumes the driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// `Driver.in_copied_context().for_each(observe)`.
    ForEach,
    /// `.in_copied_context().fold(identity, observe).reduce(identity, concat)`: the
    /// identities and the reduce operator run user code too, and results carry the ids
    /// of the items folded into them.
    FoldReduce,
    /// Two adapters: `Driver.in_copied_context()` made under other values, then
    /// `.map(observe).in_copied_context().for_each(check)`: each closure runs in the
    /// capture of the adapter before it (`map` in the inner one, `for_each` in the outer
    /// one), and `for_each` never sees what `map` set for the same item.
    Pipeline,
}

pub(crate) const MODES: [Mode; 3] = [Mode::ForEach, Mode::FoldReduce, Mode::Pipeline];

/// What the consuming closure does with an item.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Reads `X` and `Y` only.
    Plain,
    /// Also sets `X` to the item's value and drops the token (the binding stays in the
    /// item's call; the next item must not see it).
    Set,
    /// [`Kind::Set`], then takes `Context::current()`, which must keep the item's value.
    Handle,
    /// [`Kind::Set`], then panics (the folder is lost; the driver catches the panic).
    Panic,
}

pub(crate) const KINDS: [Kind; 4] = [Kind::Plain, Kind::Set, Kind::Handle, Kind::Panic];

impl Kind {
    fn decode(byte: u8) -> Kind {
        KINDS[usize::from(byte) % KINDS.len()]
    }

    fn encode(self) -> u8 {
        self as u8
    }
}

/// Up to three items in one byte: bits 0-1 the count, then two bits per item's [`Kind`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Items(pub(crate) u8);

impl Items {
    fn kinds(self) -> impl Iterator<Item = Kind> {
        let count = usize::from(self.0 & 3);
        (0..count).map(move |i| Kind::decode(self.0 >> (2 + 2 * i)))
    }
}

/// A pool of values the driver holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pool {
    Consumer,
    Folder,
    Reducer,
    Result,
    Token,
}

pub(crate) const POOLS: [Pool; 5] = [
    Pool::Consumer,
    Pool::Folder,
    Pool::Reducer,
    Pool::Result,
    Pool::Token,
];

/// One step of the driver. Pool indices are taken modulo the number of live entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    /// `consumer.split_off_left()`: the new consumer joins the pool.
    SplitOffLeft { consumer: u8 },
    /// `consumer.split_at(index)`: both halves and the reducer join their pools.
    SplitAt { consumer: u8, index: u8 },
    /// `consumer.to_reducer()`.
    ToReducer { consumer: u8 },
    /// `consumer.into_folder()` (runs `fold`'s and `reduce`'s identities).
    IntoFolder { consumer: u8 },
    /// `folder.consume(item)`.
    Consume { folder: u8, kind: Kind },
    /// `folder.consume_iter(items)`; with `iter_panics`, the driver's iterator panics
    /// after its last item.
    ConsumeIter {
        folder: u8,
        items: Items,
        iter_panics: bool,
    },
    /// `folder.full()` and `consumer.full()` at the same index.
    Full { folder: u8 },
    /// `folder.complete()`: the result joins the pool.
    Complete { folder: u8 },
    /// `reducer.reduce(left, right)` (two different results).
    Reduce { reducer: u8, left: u8, right: u8 },
    /// Drop an entry of a pool (a token: keeps the binding).
    Drop { pool: Pool, index: u8 },
    /// `mem::forget` an entry of a pool (as [`forget`] does).
    Forget { pool: Pool, index: u8 },
    /// The driver's `X.set(DRIVER_SET_BASE + value)`; the token joins the pool if `keep`.
    Set { value: u8, keep: bool },
    /// The driver's `X.reset(token)`: `Ok` in the frame the token was made in, else a
    /// different-context error and the token goes back to the pool.
    Reset { token: u8 },
    /// `contexts[ctx % CTX_COUNT].try_run(next len ops)`; refused if the driver is
    /// already running that context, and then the body runs at the current level.
    Run { ctx: u8, len: u8 },
    /// Move a consumer to a new thread (`std::thread::scope`) and there `into_folder`,
    /// `consume` each item, and `complete`; the result comes back to the pool.
    Thread { consumer: u8, items: Items },
}

/// A program: the consuming mode and the driver's ops.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Program {
    pub(crate) mode: Mode,
    pub(crate) place: Place,
    pub(crate) ops: Vec<Op>,
}

/// Where the consuming call (and so the driver's base frame) runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Place {
    /// Inside `Context::new().run(..)`: the base frame is a context object's.
    ContextRun,
    /// In the base context of a new thread: the shape, where a set by the driver
    /// leaves the frame's snapshot unique, so a frame switch undone late frees it.
    ThreadBase,
}

pub(crate) const PLACES: [Place; 2] = [Place::ContextRun, Place::ThreadBase];

/// Number of [`Op`] tags, for the decoder.
const TAGS: u8 = 15;

/// Decodes bytes into a program: the first byte picks the [`Mode`] (`% 3`) and the
/// [`Place`] (`/ 3 % 2`), then each op is a
/// tag byte (`% TAGS`) and one byte per field (missing bytes read as 0). Every byte
/// string decodes to some program.
pub(crate) fn decode(data: &[u8]) -> Program {
    let mut bytes = data.iter().copied();
    let first = usize::from(bytes.next().unwrap_or(0));
    let mode = MODES[first % MODES.len()];
    let place = PLACES[first / MODES.len() % PLACES.len()];
    let mut ops = Vec::new();
    while let Some(tag) = bytes.next() {
        let mut next = || bytes.next().unwrap_or(0);
        let op = match tag % TAGS {
            0 => Op::SplitOffLeft { consumer: next() },
            1 => Op::SplitAt {
                consumer: next(),
                index: next(),
            },
            2 => Op::ToReducer { consumer: next() },
            3 => Op::IntoFolder { consumer: next() },
            4 => Op::Consume {
                folder: next(),
                kind: Kind::decode(next()),
            },
            5 => Op::ConsumeIter {
                folder: next(),
                items: Items(next()),
                iter_panics: next() & 1 == 1,
            },
            6 => Op::Full { folder: next() },
            7 => Op::Complete { folder: next() },
            8 => Op::Reduce {
                reducer: next(),
                left: next(),
                right: next(),
            },
            9 => Op::Drop {
                pool: POOLS[usize::from(next()) % POOLS.len()],
                index: next(),
            },
            10 => Op::Forget {
                pool: POOLS[usize::from(next()) % POOLS.len()],
                index: next(),
            },
            11 => Op::Set {
                value: next(),
                keep: next() & 1 == 1,
            },
            12 => Op::Reset { token: next() },
            13 => Op::Run {
                ctx: next(),
                len: next() % MAX_RUN_BODY,
            },
            _ => Op::Thread {
                consumer: next(),
                items: Items(next()),
            },
        };
        ops.push(op);
    }
    Program { mode, place, ops }
}

/// The bytes that [`decode`] turns back into `program` (for seeds). Inverts `decode` for
/// programs whose `Run` lengths are below [`MAX_RUN_BODY`].
pub(crate) fn encode(program: &Program) -> Vec<u8> {
    let mode = MODES.iter().position(|m| *m == program.mode).unwrap_or(0);
    let place = PLACES.iter().position(|p| *p == program.place).unwrap_or(0);
    let mut out = vec![(mode + MODES.len() * place) as u8];
    for op in &program.ops {
        let pool = |pool: Pool| POOLS.iter().position(|p| *p == pool).unwrap_or(0) as u8;
        let (tag, fields): (u8, Vec<u8>) = match *op {
            Op::SplitOffLeft { consumer } => (0, vec![consumer]),
            Op::SplitAt { consumer, index } => (1, vec![consumer, index]),
            Op::ToReducer { consumer } => (2, vec![consumer]),
            Op::IntoFolder { consumer } => (3, vec![consumer]),
            Op::Consume { folder, kind } => (4, vec![folder, kind.encode()]),
            Op::ConsumeIter {
                folder,
                items,
                iter_panics,
            } => (5, vec![folder, items.0, u8::from(iter_panics)]),
            Op::Full { folder } => (6, vec![folder]),
            Op::Complete { folder } => (7, vec![folder]),
            Op::Reduce {
                reducer,
                left,
                right,
            } => (8, vec![reducer, left, right]),
            Op::Drop { pool: p, index } => (9, vec![pool(p), index]),
            Op::Forget { pool: p, index } => (10, vec![pool(p), index]),
            Op::Set { value, keep } => (11, vec![value, u8::from(keep)]),
            Op::Reset { token } => (12, vec![token]),
            Op::Run { ctx, len } => (13, vec![ctx, len]),
            Op::Thread { consumer, items } => (14, vec![consumer, items.0]),
        };
        out.push(tag);
        out.extend(fields);
    }
    out
}

// ------------------------------------------------------------------------ observations

/// An item: a unique id, the op that made it (for messages) and what to do with it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Item {
    id: u32,
    op: usize,
    kind: Kind,
}

impl Item {
    /// The value the item sets `X` to.
    fn value(self) -> u64 {
        ITEM_SET_BASE + u64::from(self.id)
    }
}

/// The payload of an injected panic (so that it can be told from a real one).
#[derive(Debug)]
struct Injected;

/// A `Context::current()` taken by an item, and the value it must keep.
struct Handle {
    ctx: Context,
    item: Item,
}

/// What the driver leaves for the code that consumed it.
struct Outcome {
    /// The driver's base-frame value of `X` at the end: the consumer's caller sees it.
    base_x: Option<u64>,
    /// [`Mode::FoldReduce`]: the ids the returned result must hold.
    ids: Vec<u32>,
    stats: Stats,
}

/// State shared by the closures (on any thread) and the driver.
struct Shared {
    /// What the item closure must see on entry: the capture of the adapter before it.
    capture: (u64, u64),
    /// The op being executed (for messages from closures).
    op: AtomicUsize,
    /// What closures saw that they should not have.
    violations: Mutex<Vec<String>>,
    /// The ids of the items the consuming closure saw, in order, since the driver last
    /// cleared it.
    seen: Mutex<Vec<u32>>,
    handles: Mutex<Vec<Handle>>,
    outcome: Mutex<Option<Outcome>>,
}

/// Locks ignoring poison (an injected panic never holds a lock, but a failed check may).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn new(capture: (u64, u64)) -> Self {
        Shared {
            capture,
            op: AtomicUsize::new(usize::MAX),
            violations: Mutex::new(Vec::new()),
            seen: Mutex::new(Vec::new()),
            handles: Mutex::new(Vec::new()),
            outcome: Mutex::new(None),
        }
    }

    fn violation(&self, message: String) {
        let op = self.op.load(Ordering::Relaxed);
        lock(&self.violations).push(format!("op {op}: {message}"));
    }

    /// A read in user code run by the consumer: must see the capture `(x, y)`.
    fn expect_captured(&self, (x, y): (u64, u64), site: impl FnOnce() -> String) {
        let seen = (X.try_get().ok(), Y.try_get().ok());
        if seen != (Some(x), Some(y)) {
            self.violation(format!(
                "{} saw (X, Y) = {seen:?}, expected the captured ({x}, {y})",
                site()
            ));
        }
    }

    /// The consuming closure (`for_each`'s, `fold`'s operator, `map`'s).
    fn observe_item(&self, item: Item) {
        lock(&self.seen).push(item.id);
        self.expect_captured(self.capture, || {
            format!("item {} (made by op {}) on entry", item.id, item.op)
        });
        if item.kind == Kind::Plain {
            return;
        }
        let value = item.value();
        // The token is dropped: the binding stays in this item's call.
        drop(X.set(value));
        let now = X.try_get().ok();
        if now != Some(value) {
            self.violation(format!(
                "item {} read X = {now:?} right after setting {value}",
                item.id
            ));
        }
        if item.kind == Kind::Handle {
            lock(&self.handles).push(Handle {
                ctx: Context::current(),
                item,
            });
        }
        if item.kind == Kind::Panic {
            panic::panic_any(Injected);
        }
    }

    /// [`Mode::Pipeline`]'s `for_each` closure, after `map`'s ran on the same item (and
    /// perhaps set `X`): a new call of the outer adapter's consumer, in its capture.
    fn observe_after_map(&self, item: Item) {
        self.expect_captured((CAPTURED_X, CAPTURED_Y), || {
            format!(
                "for_each after map, item {} (made by op {})",
                item.id, item.op
            )
        });
    }

    /// Panics with every violation recorded so far, if any.
    fn check_violations(&self, when: &str) {
        let violations = lock(&self.violations);
        if !violations.is_empty() {
            let mut message = format!("{} violation(s) {when}:", violations.len());
            for violation in violations.iter().take(10) {
                let _ = write!(message, "\n  {violation}");
            }
            panic!("{message}");
        }
    }

    /// Every handle an item took still holds that item's values.
    fn check_handles(&self, when: &str) {
        for handle in lock(&self.handles).iter() {
            let seen = (
                handle.ctx.snapshot().get(&X).cloned(),
                handle.ctx.snapshot().get(&Y).cloned(),
            );
            let expected = (Some(handle.item.value()), Some(self.capture.1));
            assert_eq!(
                seen, expected,
                "{when}: the Context::current() of item {} (made by op {}) holds (X, Y) = \
                 {seen:?}, expected the item's own {expected:?}",
                handle.item.id, handle.item.op
            );
        }
    }
}

/// Counts of what a run did, so tests can check the generators reach every case.
#[derive(Clone, Debug, Default)]
pub(crate) struct Stats {
    pub(crate) folders: usize,
    pub(crate) items: usize,
    pub(crate) completes: usize,
    pub(crate) reduces: usize,
    pub(crate) splits: usize,
    pub(crate) injected_panics: usize,
    /// Folders fed, completed, dropped or forgotten in another stack of runs than the one
    /// they were made in (the use-after-free shape).
    pub(crate) cross_frame: usize,
    pub(crate) drops: usize,
    pub(crate) forgets: usize,
    pub(crate) runs: usize,
    pub(crate) refused_runs: usize,
    pub(crate) threads: usize,
    pub(crate) sets: usize,
    pub(crate) resets_ok: usize,
    pub(crate) resets_refused: usize,
    pub(crate) handles: usize,
    pub(crate) max_depth: usize,
}

impl Stats {
    pub(crate) fn add(&mut self, other: &Stats) {
        self.folders += other.folders;
        self.items += other.items;
        self.completes += other.completes;
        self.reduces += other.reduces;
        self.splits += other.splits;
        self.injected_panics += other.injected_panics;
        self.cross_frame += other.cross_frame;
        self.drops += other.drops;
        self.forgets += other.forgets;
        self.runs += other.runs;
        self.refused_runs += other.refused_runs;
        self.threads += other.threads;
        self.sets += other.sets;
        self.resets_ok += other.resets_ok;
        self.resets_refused += other.resets_refused;
        self.handles += other.handles;
        self.max_depth = self.max_depth.max(other.max_depth);
    }
}

/// The message of a panic payload.
fn panic_text(payload: &(dyn Any + Send)) -> String {
    if let Some(message) = payload.downcast_ref::<&'static str>() {
        (*message).to_owned()
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message.clone()
    } else {
        "<non-string panic payload>".to_owned()
    }
}

/// Injected panics are expected by the thousand: keep them off stderr (and, under
/// libFuzzer, away from its hook, which aborts on any panic). Every other panic goes to
/// the hook that was installed before.
fn silence_injected_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !info.payload().is::<Injected>() {
                previous(info);
            }
        }));
    });
}

/// `mem::forget`, except that the memory stays reachable: its destructor never runs (all
/// the crate can observe), but leak checkers (miri's, ASAN's LeakSanitizer) do not report
/// the leak the test means to make. Safe code: the pointer is never read again.
pub(crate) fn forget<T>(value: T) {
    static FORGOTTEN: Mutex<Vec<AtomicPtr<()>>> = Mutex::new(Vec::new());
    let pointer = Box::into_raw(Box::new(value)).cast::<()>();
    lock(&FORGOTTEN).push(AtomicPtr::new(pointer));
}

// ------------------------------------------------------------------------------ driver

/// The hostile parallel iterator: its `drive_unindexed` interprets the program.
struct Driver<'p> {
    program: &'p Program,
    shared: &'p Shared,
}

impl ParallelIterator for Driver<'_> {
    type Item = Item;

    fn drive_unindexed<C>(self, consumer: C) -> C::Result
    where
        C: UnindexedConsumer<Item>,
    {
        let contexts: Vec<Context> = (0..CTX_COUNT)
            .map(|i| {
                let ctx = Context::new().with_value(&Y, ctx_y(i));
                match ctx_initial_x(i) {
                    Some(x) => ctx.with_value(&X, x),
                    None => ctx,
                }
            })
            .collect();
        let mut machine = Machine::new(self.shared, &contexts, consumer);
        machine.check("on entry to drive_unindexed");
        machine.block(&self.program.ops, 0, 0);
        machine.finish()
    }
}

/// Which frame the driver is in, in the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Frame {
    Base,
    Ctx(usize),
}

/// The driver's own state: plain values and a stack.
struct Model {
    base_x: Option<u64>,
    ctx_x: [Option<u64>; CTX_COUNT],
    /// The contexts the driver is running, innermost last.
    stack: Vec<usize>,
}

impl Model {
    fn top(&self) -> Frame {
        match self.stack.last() {
            Some(&ctx) => Frame::Ctx(ctx),
            None => Frame::Base,
        }
    }

    fn x(&self, frame: Frame) -> Option<u64> {
        match frame {
            Frame::Base => self.base_x,
            Frame::Ctx(ctx) => self.ctx_x[ctx],
        }
    }

    fn set_x(&mut self, frame: Frame, value: Option<u64>) {
        match frame {
            Frame::Base => self.base_x = value,
            Frame::Ctx(ctx) => self.ctx_x[ctx] = value,
        }
    }

    fn y(&self, frame: Frame) -> u64 {
        match frame {
            Frame::Base => DRIVER_Y,
            Frame::Ctx(ctx) => ctx_y(ctx),
        }
    }
}

/// A folder, the ids of the items it folded so far, and the runs it was made in.
struct FolderSlot<F> {
    folder: F,
    ids: Vec<u32>,
    made_in: Vec<usize>,
}

/// A driver token and what the model knows of it.
struct TokenSlot {
    token: Token<'static, u64>,
    frame: Frame,
    old: Option<u64>,
}

struct Machine<'a, C: UnindexedConsumer<Item>> {
    shared: &'a Shared,
    contexts: &'a [Context],
    model: Model,
    /// Kept out of the ops' reach: makes the final result.
    reserve: C,
    consumers: Vec<Option<C>>,
    folders: Vec<Option<FolderSlot<C::Folder>>>,
    reducers: Vec<Option<C::Reducer>>,
    results: Vec<Option<(C::Result, Vec<u32>)>>,
    tokens: Vec<Option<TokenSlot>>,
    next_item: u32,
    stats: Stats,
}

/// The index of the `index`-th live entry (modulo their number), if any.
fn pick<T>(pool: &[Option<T>], index: u8) -> Option<usize> {
    let live: Vec<usize> = (0..pool.len()).filter(|&i| pool[i].is_some()).collect();
    (!live.is_empty()).then(|| live[usize::from(index) % live.len()])
}

fn take<T>(pool: &mut [Option<T>], index: u8) -> Option<T> {
    pick(pool, index).and_then(|i| pool[i].take())
}

impl<'a, C: UnindexedConsumer<Item>> Machine<'a, C> {
    fn new(shared: &'a Shared, contexts: &'a [Context], consumer: C) -> Self {
        let reserve = consumer.split_off_left();
        Machine {
            shared,
            contexts,
            model: Model {
                base_x: Some(DRIVER_X),
                ctx_x: std::array::from_fn(ctx_initial_x),
                stack: Vec::new(),
            },
            reserve,
            consumers: vec![Some(consumer)],
            folders: Vec::new(),
            reducers: Vec::new(),
            results: Vec::new(),
            tokens: Vec::new(),
            next_item: 0,
            stats: Stats::default(),
        }
    }

    fn items(&mut self, kinds: impl Iterator<Item = Kind>, op: usize) -> Vec<Item> {
        kinds
            .map(|kind| {
                let id = self.next_item;
                self.next_item += 1;
                Item { id, op, kind }
            })
            .collect()
    }

    /// Counts a use of a folder made in another stack of runs.
    fn note_frame(&mut self, made_in: &[usize]) {
        if made_in != self.model.stack.as_slice() {
            self.stats.cross_frame += 1;
        }
    }

    /// Runs `ops` (starting at program index `first`) at run depth `depth`.
    fn block(&mut self, ops: &[Op], first: usize, depth: usize) {
        self.stats.max_depth = self.stats.max_depth.max(depth);
        let mut i = 0;
        while i < ops.len() {
            let index = first + i;
            self.shared.op.store(index, Ordering::Relaxed);
            match ops[i] {
                Op::Run { ctx, len } => {
                    let end = (i + 1 + usize::from(len)).min(ops.len());
                    self.run_in(usize::from(ctx) % CTX_COUNT, &ops[i + 1..end], index, depth);
                    i = end;
                    continue;
                }
                op => self.step(op, index),
            }
            self.shared.op.store(index, Ordering::Relaxed);
            self.check(&format!("after op {index} ({:?})", ops[i]));
            i += 1;
        }
    }

    /// `Op::Run`: the body inside `contexts[ctx].try_run`.
    fn run_in(&mut self, ctx: usize, body: &[Op], index: usize, depth: usize) {
        let expect_entered = self.model.stack.contains(&ctx);
        if depth >= MAX_DEPTH {
            self.block(body, index + 1, depth);
            return;
        }
        let contexts = self.contexts;
        let outcome = contexts[ctx].try_run(|| {
            self.model.stack.push(ctx);
            self.check(&format!("on entering context {ctx} (op {index})"));
            self.block(body, index + 1, depth + 1);
            self.model.stack.pop();
        });
        match outcome {
            Ok(()) => {
                assert!(
                    !expect_entered,
                    "op {index}: context {ctx} was entered although the driver is running it"
                );
                self.stats.runs += 1;
            }
            Err(error) => {
                assert!(
                    expect_entered && error.is_already_entered(),
                    "op {index}: context {ctx} refused: {error:?} (the driver is running \
                     {:?})",
                    self.model.stack
                );
                self.stats.refused_runs += 1;
                self.block(body, index + 1, depth);
            }
        }
        self.shared.op.store(index, Ordering::Relaxed);
        self.check(&format!("after the run of context {ctx} (op {index})"));
    }

    fn step(&mut self, op: Op, index: usize) {
        match op {
            Op::SplitOffLeft { consumer } => {
                if let Some(i) = pick(&self.consumers, consumer) {
                    let left = self.consumers[i].as_ref().map(C::split_off_left);
                    self.consumers.push(left);
                    self.stats.splits += 1;
                }
            }
            Op::SplitAt {
                consumer,
                index: at,
            } => {
                if let Some(consumer) = take(&mut self.consumers, consumer) {
                    let (left, right, reducer) = consumer.split_at(usize::from(at));
                    self.consumers.push(Some(left));
                    self.consumers.push(Some(right));
                    self.reducers.push(Some(reducer));
                    self.stats.splits += 1;
                }
            }
            Op::ToReducer { consumer } => {
                if let Some(i) = pick(&self.consumers, consumer) {
                    let reducer = self.consumers[i].as_ref().map(C::to_reducer);
                    self.reducers.push(reducer);
                }
            }
            Op::IntoFolder { consumer } => {
                if let Some(consumer) = take(&mut self.consumers, consumer) {
                    let folder = consumer.into_folder();
                    self.folders.push(Some(FolderSlot {
                        folder,
                        ids: Vec::new(),
                        made_in: self.model.stack.clone(),
                    }));
                    self.stats.folders += 1;
                }
            }
            Op::Consume { folder, kind } => {
                let items = self.items(std::iter::once(kind), index);
                self.feed(folder, items, false, false, index);
            }
            Op::ConsumeIter {
                folder,
                items,
                iter_panics,
            } => {
                let items = self.items(items.kinds(), index);
                self.feed(folder, items, true, iter_panics, index);
            }
            Op::Full { folder } => {
                if let Some(slot) =
                    pick(&self.folders, folder).and_then(|i| self.folders[i].as_ref())
                {
                    assert!(!slot.folder.full(), "op {index}: a folder reported full");
                }
                if let Some(consumer) =
                    pick(&self.consumers, folder).and_then(|i| self.consumers[i].as_ref())
                {
                    assert!(!consumer.full(), "op {index}: a consumer reported full");
                }
            }
            Op::Complete { folder } => {
                if let Some(slot) = take(&mut self.folders, folder) {
                    self.note_frame(&slot.made_in);
                    let result = slot.folder.complete();
                    self.results.push(Some((result, slot.ids)));
                    self.stats.completes += 1;
                }
            }
            Op::Reduce {
                reducer,
                left,
                right,
            } => self.reduce(reducer, left, right),
            Op::Drop { pool, index: at } => {
                if self.remove(pool, at, Dispose::Drop) {
                    self.stats.drops += 1;
                }
            }
            Op::Forget { pool, index: at } => {
                if self.remove(pool, at, Dispose::Forget) {
                    self.stats.forgets += 1;
                }
            }
            Op::Set { value, keep } => {
                let value = DRIVER_SET_BASE + u64::from(value);
                let frame = self.model.top();
                let old = self.model.x(frame);
                let token = X.set(value);
                self.model.set_x(frame, Some(value));
                self.stats.sets += 1;
                if keep {
                    self.tokens.push(Some(TokenSlot { token, frame, old }));
                }
            }
            Op::Reset { token } => self.reset(token, index),
            Op::Thread { consumer, items } => self.thread(consumer, items, index),
            Op::Run { .. } => unreachable!("handled by `block`"),
        }
    }

    /// Takes an entry of `pool` and drops or forgets it; whether there was one.
    fn remove(&mut self, pool: Pool, index: u8, how: Dispose) -> bool {
        match pool {
            Pool::Consumer => take(&mut self.consumers, index).map(|c| how.apply(c)),
            Pool::Folder => take(&mut self.folders, index).map(|slot| {
                self.note_frame(&slot.made_in);
                how.apply(slot.folder);
            }),
            Pool::Reducer => take(&mut self.reducers, index).map(|r| how.apply(r)),
            Pool::Result => take(&mut self.results, index).map(|r| how.apply(r.0)),
            Pool::Token => take(&mut self.tokens, index).map(|t| how.apply(t.token)),
        }
        .is_some()
    }

    /// `Op::Consume` / `Op::ConsumeIter`.
    fn feed(&mut self, folder: u8, items: Vec<Item>, iter: bool, iter_panics: bool, index: usize) {
        let Some(slot) = take(&mut self.folders, folder) else {
            return;
        };
        self.note_frame(&slot.made_in);
        let FolderSlot {
            folder,
            mut ids,
            made_in,
        } = slot;
        // What the closure must see: every item up to the first that panics.
        let mut expected_seen = Vec::new();
        let mut expect_panic = false;
        for item in &items {
            expected_seen.push(item.id);
            if item.kind == Kind::Panic {
                expect_panic = true;
                break;
            }
        }
        let iter_panics = iter && iter_panics && !expect_panic;
        expect_panic |= iter_panics;
        lock(&self.shared.seen).clear();
        let consumed: Vec<u32> = items.iter().map(|item| item.id).collect();
        let outcome = catch_unwind(AssertUnwindSafe(move || {
            if iter {
                folder.consume_iter(DriverIter {
                    items: items.into_iter(),
                    panic_at_end: iter_panics,
                })
            } else {
                items.into_iter().fold(folder, Folder::consume)
            }
        }));
        self.stats.items += expected_seen.len();
        let seen = std::mem::take(&mut *lock(&self.shared.seen));
        assert_eq!(
            seen, expected_seen,
            "op {index}: the consuming closure saw these items (expected those)"
        );
        match outcome {
            Ok(folder) => {
                assert!(
                    !expect_panic,
                    "op {index}: the injected panic did not reach the driver"
                );
                ids.extend(consumed);
                self.folders.push(Some(FolderSlot {
                    folder,
                    ids,
                    made_in,
                }));
            }
            Err(payload) => {
                assert!(
                    payload.is::<Injected>(),
                    "op {index}: consuming panicked: {}",
                    panic_text(&*payload)
                );
                assert!(expect_panic, "op {index}: an injected panic out of nowhere");
                self.stats.injected_panics += 1;
            }
        }
    }

    /// `Op::Reduce`: two different results and a reducer.
    fn reduce(&mut self, reducer: u8, left: u8, right: u8) {
        let (Some(l), Some(mut r)) = (pick(&self.results, left), pick(&self.results, right)) else {
            return;
        };
        if l == r {
            // The next live result, if there is another.
            match (l + 1..self.results.len())
                .chain(0..l)
                .find(|&i| self.results[i].is_some())
            {
                Some(other) => r = other,
                None => return,
            }
        }
        let Some(reducer) = take(&mut self.reducers, reducer) else {
            return;
        };
        let (left, mut left_ids) = self.results[l].take().expect("picked a live result");
        let (right, right_ids) = self.results[r].take().expect("picked a live result");
        let result = reducer.reduce(left, right);
        left_ids.extend(right_ids);
        self.results.push(Some((result, left_ids)));
        self.stats.reduces += 1;
    }

    /// `Op::Reset`.
    fn reset(&mut self, token: u8, index: usize) {
        let Some(i) = pick(&self.tokens, token) else {
            return;
        };
        let TokenSlot { token, frame, old } = self.tokens[i].take().expect("picked");
        let here = self.model.top();
        match X.reset(token) {
            Ok(()) => {
                assert_eq!(
                    frame, here,
                    "op {index}: a token made in {frame:?} reset in {here:?}"
                );
                self.model.set_x(here, old);
                self.stats.resets_ok += 1;
            }
            Err(error) => {
                assert!(
                    frame != here && error.is_different_context(),
                    "op {index}: a token made in {frame:?} refused in {here:?}: {error:?}"
                );
                self.tokens[i] = Some(TokenSlot {
                    token: error.into_token(),
                    frame,
                    old,
                });
                self.stats.resets_refused += 1;
            }
        }
    }

    /// `Op::Thread`: a consumer moved to a new thread, folded and completed there.
    fn thread(&mut self, consumer: u8, items: Items, index: usize) {
        let Some(consumer) = take(&mut self.consumers, consumer) else {
            return;
        };
        let items = self.items(items.kinds(), index);
        let shared = self.shared;
        lock(&shared.seen).clear();
        let mut expected_seen = Vec::new();
        for item in &items {
            expected_seen.push(item.id);
            if item.kind == Kind::Panic {
                break;
            }
        }
        let joined = std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    let mut panicked = false;
                    let empty = |when: &str| {
                        let seen = (X.try_get().ok(), Y.try_get().ok());
                        if seen != (None, None) {
                            shared.violation(format!(
                                "a new thread read (X, Y) = {seen:?} {when} (expected nothing: \
                                 a consumer must not leak its context into the thread)"
                            ));
                        }
                    };
                    empty("before into_folder");
                    let mut folder = Some(consumer.into_folder());
                    empty("after into_folder");
                    let mut ids = Vec::new();
                    for item in items {
                        let Some(current) = folder.take() else { break };
                        match catch_unwind(AssertUnwindSafe(|| current.consume(item))) {
                            Ok(next) => {
                                folder = Some(next);
                                ids.push(item.id);
                            }
                            Err(payload) => {
                                if !payload.is::<Injected>() {
                                    shared.violation(format!(
                                        "consuming on a thread panicked: {}",
                                        panic_text(&*payload)
                                    ));
                                }
                                panicked = true;
                            }
                        }
                        empty("after consume");
                    }
                    let result = folder.map(|folder| (folder.complete(), ids));
                    empty("after complete");
                    (result, panicked)
                })
                .join()
        });
        let (result, panicked) = match joined {
            Ok(outcome) => outcome,
            Err(payload) => panic!("op {index}: the thread panicked: {}", panic_text(&*payload)),
        };
        let seen = std::mem::take(&mut *lock(&shared.seen));
        assert_eq!(
            seen, expected_seen,
            "op {index}: the consuming closure on the thread saw these items"
        );
        self.stats.items += seen.len();
        if panicked {
            self.stats.injected_panics += 1;
        }
        if let Some(result) = result {
            self.results.push(Some(result));
        }
        self.stats.threads += 1;
    }

    /// Everything the model knows, checked against the crate.
    fn check(&self, when: &str) {
        self.shared.check_violations(when);
        let frame = self.model.top();
        let seen = (X.try_get().ok(), Y.try_get().ok());
        let expected = (self.model.x(frame), Some(self.model.y(frame)));
        assert_eq!(
            seen, expected,
            "{when}: the driver, in {frame:?}, read (X, Y) = {seen:?}, expected {expected:?}"
        );
        for (i, ctx) in self.contexts.iter().enumerate() {
            let expected = (self.model.ctx_x[i], Some(ctx_y(i)));
            let held = (
                ctx.snapshot().get(&X).cloned(),
                ctx.snapshot().get(&Y).cloned(),
            );
            assert_eq!(
                held, expected,
                "{when}: context {i} holds (X, Y) = {held:?}, expected {expected:?}"
            );
            let entered = self.model.stack.contains(&i);
            match ctx.try_run(|| (X.try_get().ok(), Y.try_get().ok())) {
                Ok(inside) => {
                    assert!(
                        !entered,
                        "{when}: context {i} could be entered while the driver runs it"
                    );
                    assert_eq!(
                        inside, expected,
                        "{when}: a run of context {i} read (X, Y) = {inside:?}, expected \
                         {expected:?}"
                    );
                }
                Err(error) => assert!(
                    entered && error.is_already_entered(),
                    "{when}: context {i} is left entered: {error:?} (the driver runs {:?})",
                    self.model.stack
                ),
            }
        }
        self.shared.check_handles(when);
    }

    /// The end of `drive_unindexed`: every result still alive reduced into the returned
    /// one, everything else dropped, and the outcome left for the caller.
    fn finish(mut self) -> C::Result {
        let when = "at the end of drive_unindexed";
        self.shared.op.store(usize::MAX, Ordering::Relaxed);
        let mut ids = Vec::new();
        let mut result: Option<C::Result> = None;
        for (next, next_ids) in self.results.drain(..).flatten() {
            ids.extend(next_ids);
            result = Some(match result {
                None => next,
                Some(acc) => self.reserve.to_reducer().reduce(acc, next),
            });
        }
        self.check(when);
        let result =
            result.unwrap_or_else(|| self.reserve.split_off_left().into_folder().complete());
        self.check(when);
        // Folders first (on today's code they hold frames), then the rest.
        self.folders.clear();
        self.check("after dropping the remaining folders");
        self.consumers.clear();
        self.reducers.clear();
        self.tokens.clear();
        self.check("after dropping every remaining consumer, reducer and token");
        self.stats.handles = lock(&self.shared.handles).len();
        *lock(&self.shared.outcome) = Some(Outcome {
            base_x: self.model.base_x,
            ids,
            stats: std::mem::take(&mut self.stats),
        });
        result
    }
}

/// How `Op::Drop` and `Op::Forget` dispose of a pool entry.
#[derive(Clone, Copy)]
enum Dispose {
    Drop,
    Forget,
}

impl Dispose {
    fn apply<T>(self, value: T) {
        match self {
            Dispose::Drop => drop(value),
            Dispose::Forget => forget(value),
        }
    }
}

/// The driver's iterator for `consume_iter`: yields its items, then panics if asked to
/// (a panic from the driver's own code inside the consumer's call).
struct DriverIter {
    items: std::vec::IntoIter<Item>,
    panic_at_end: bool,
}

impl Iterator for DriverIter {
    type Item = Item;

    fn next(&mut self) -> Option<Item> {
        let item = self.items.next();
        if item.is_none() && std::mem::take(&mut self.panic_at_end) {
            panic::panic_any(Injected);
        }
        item
    }
}

// -------------------------------------------------------------------------------- run

/// `iter.in_copied_context()` made with `X`, `Y` = `x`, `y` (bindings kept in the
/// current frame: the caller runs in a fresh context).
fn captured<I: ParallelIterator>(x: u64, y: u64, iter: I) -> contextvars::rayon::InContext<I> {
    drop(X.set(x));
    drop(Y.set(y));
    iter.in_copied_context()
}

/// Runs a program: in a new context on this thread or in a new thread's base context
/// ([`Place`]), captures, changes the driver's own values, and consumes the driver as the
/// program's [`Mode`] says. Panics at the first
/// difference from the model.
pub(crate) fn run(program: &Program) -> Stats {
    silence_injected_panics();
    let capture = match program.mode {
        Mode::ForEach | Mode::FoldReduce => (CAPTURED_X, CAPTURED_Y),
        Mode::Pipeline => (INNER_X, INNER_Y),
    };
    let shared = Shared::new(capture);
    let shared = &shared;
    let driver = Driver { program, shared };
    let body = move || {
        let returned_ids = match program.mode {
            Mode::ForEach => {
                let iter = captured(CAPTURED_X, CAPTURED_Y, driver);
                drop(X.set(DRIVER_X));
                drop(Y.set(DRIVER_Y));
                iter.for_each(|item| shared.observe_item(item));
                None
            }
            Mode::FoldReduce => {
                let iter = captured(CAPTURED_X, CAPTURED_Y, driver);
                drop(X.set(DRIVER_X));
                drop(Y.set(DRIVER_Y));
                let mut ids = iter
                    .fold(
                        || {
                            shared.expect_captured(capture, || "fold's identity".to_owned());
                            Vec::new()
                        },
                        |mut ids, item: Item| {
                            shared.observe_item(item);
                            ids.push(item.id);
                            ids
                        },
                    )
                    .reduce(
                        || {
                            shared.expect_captured(capture, || "reduce's identity".to_owned());
                            Vec::new()
                        },
                        |mut left, right| {
                            shared.expect_captured(capture, || "reduce's operator".to_owned());
                            left.extend(right);
                            left
                        },
                    );
                ids.sort_unstable();
                Some(ids)
            }
            Mode::Pipeline => {
                let inner = captured(INNER_X, INNER_Y, driver);
                let outer = captured(
                    CAPTURED_X,
                    CAPTURED_Y,
                    inner.map(|item| {
                        shared.observe_item(item);
                        item
                    }),
                );
                drop(X.set(DRIVER_X));
                drop(Y.set(DRIVER_Y));
                outer.for_each(|item| shared.observe_after_map(item));
                None
            }
        };
        shared.check_violations("after the consuming call returned");
        let outcome = lock(&shared.outcome)
            .take()
            .expect("the driver ran to its end");
        // The driver ran in the caller's frame: its base-frame sets are the caller's.
        let seen = (X.try_get().ok(), Y.try_get().ok());
        assert_eq!(
            seen,
            (outcome.base_x, Some(DRIVER_Y)),
            "the caller, after the consuming call, read (X, Y) = {seen:?}"
        );
        if let Some(mut returned) = returned_ids {
            returned.sort_unstable();
            let mut expected = outcome.ids.clone();
            expected.sort_unstable();
            assert_eq!(
                returned, expected,
                "the fold/reduce result holds these items, the model says those"
            );
        }
        outcome
    };
    let outcome = match program.place {
        Place::ContextRun => Context::new().run(body),
        Place::ThreadBase => std::thread::scope(|scope| scope.spawn(body).join())
            .unwrap_or_else(|payload| panic::resume_unwind(payload)),
    };
    shared.check_handles("after the program");
    outcome.stats
}

/// [`run`] on a decoded byte string.
pub(crate) fn run_bytes(data: &[u8]) -> Stats {
    run(&decode(data))
}
