//! rayon jobs that run in their creator's context (feature `rayon`).
//!
//! rayon has no per-job hook, and a worker thread runs many unrelated jobs, including,
//! while it waits in a `join`, jobs stolen from other callers. The forms here capture the
//! caller's context when a job is created and run the job in a copy of it, saving and
//! restoring the worker's own state around the job, so
//!
//! * every job sees the values of the code that created it,
//! * a job's `set`s stay in the job: they reach neither the caller nor sibling jobs
//!   (CPython's rule for concurrent work, as for asyncio tasks), and
//! * a stolen job made here never sees the state of the job it interrupted, nor the
//!   reverse. While a call of this module waits (a [`join`]'s other half, the end of a
//!   [`scope`], an [`install_with_context`](ThreadPoolExt::install_with_context) from
//!   another pool's worker, a parallel iterator's splits), the worker runs in an empty,
//!   read-only context: a *plain* rayon job it steals meanwhile sees no values, and its
//!   `set` is refused ([`SetError::pool_name`](crate::SetError::pool_name) `"rayon"`), as
//!   in the worker's own context.
//!
//! A plain rayon call (`rayon::join`, a parallel iterator without
//! [`in_copied_context`](ParallelIteratorExt::in_copied_context)) made *inside* a job
//! of this module waits in the job's context: a plain job stolen there runs in it,
//! reads its values, and its sets land there. rayon has no per-job hook to prevent
//! that, so hand work to rayon through this module everywhere.
//!
//! ```
//! use contextvars::ContextVar;
//! use contextvars::rayon::ParallelIteratorExt;
//! use rayon::prelude::*;
//!
//! static TENANT: ContextVar<&str> = contextvars::context_var!(&'static str, "tenant");
//!
//! let _token = TENANT.set("acme");
//! let (a, b) = contextvars::rayon::join(|| TENANT.get(), || TENANT.get());
//! assert_eq!((a, b), ("acme", "acme"));
//!
//! let labels: Vec<String> = (0..4)
//!     .into_par_iter()
//!     .in_copied_context() // right after the source: every closure after it sees "acme"
//!     .map(|i| format!("{}-{i}", TENANT.get()))
//!     .collect();
//! assert_eq!(labels, ["acme-0", "acme-1", "acme-2", "acme-3"]);
//! ```
//!
//! # Cost
//!
//! * Structured forms ([`join`], [`join_context`], [`scope`], [`in_place_scope`],
//!   [`ThreadPoolExt::install_with_context`], and indexed parallel iterators) finish
//!   before the caller continues, so their jobs *borrow* the caller's snapshot. A call
//!   from outside a job takes one reference-count increment on the calling thread; a
//!   call from inside a job (a nested `join`, the usual divide-and-conquer shape) passes
//!   the job's own borrow on and takes none. Per job, entering and leaving the context
//!   swaps two thread-local cells and reads tokio's task id (for the isolation check),
//!   with no atomic read-modify-write; only a job's first `set` takes a counted copy. On
//!   a rayon worker, the wait of a structured form runs in an empty read-only frame
//!   (two more cell swaps each way).
//! * `'static` spawns ([`spawn`], [`spawn_fifo`], [`Scope::spawn`]) take an owned copy:
//!   one increment at the spawn, one decrement when the job ends.
//! * A parallel iterator wrapped by [`ParallelIteratorExt::in_copied_context`] takes
//!   one copy when the adapter is made; its jobs borrow it. Each call into the adapter
//!   enters and leaves a frame over it (two thread-local cell writes each way, and a read
//!   of tokio's task id); the
//!   items of one batch share that frame while they only read, and an item that wrote
//!   (a `set`, a handle) ends it, so the next item starts in a fresh one.

#![deny(unsafe_code)]

use std::fmt;

use ::rayon::iter::plumbing::{
    Consumer, Folder, Producer, ProducerCallback, Reducer, UnindexedConsumer,
};
use ::rayon::iter::{IndexedParallelIterator, ParallelIterator};
use ::rayon::{FnContext, ThreadPool};

use crate::carry::{self, CarriedState};
use crate::engine::{self, Frame, Vars};

/// [`rayon::join`], running both closures in copies of the current context.
///
/// `oper_a` runs on the calling thread, `oper_b` possibly on another; each in its own
/// copy, so a `set` in one is seen neither by the other nor by the caller afterwards.
pub fn join<A, B, RA, RB>(oper_a: A, oper_b: B) -> (RA, RB)
where
    A: FnOnce() -> RA + Send,
    B: FnOnce() -> RB + Send,
    RA: Send,
    RB: Send,
{
    with_captured(move |capture| {
        waiting(|| ::rayon::join(move || capture.run(oper_a), move || capture.run(oper_b)))
    })
}

/// [`rayon::join_context`], running both closures in copies of the current context.
pub fn join_context<A, B, RA, RB>(oper_a: A, oper_b: B) -> (RA, RB)
where
    A: FnOnce(FnContext) -> RA + Send,
    B: FnOnce(FnContext) -> RB + Send,
    RA: Send,
    RB: Send,
{
    with_captured(move |capture| {
        waiting(|| {
            ::rayon::join_context(
                move |fn_ctx| capture.run(|| oper_a(fn_ctx)),
                move |fn_ctx| capture.run(|| oper_b(fn_ctx)),
            )
        })
    })
}

/// [`rayon::spawn`], running `func` in a copy of the current context.
pub fn spawn<F>(func: F)
where
    F: FnOnce() + Send + 'static,
{
    ::rayon::spawn(carry::job(Frame::private(engine::vars()), func));
}

/// [`rayon::spawn_fifo`], running `func` in a copy of the current context.
pub fn spawn_fifo<F>(func: F)
where
    F: FnOnce() + Send + 'static,
{
    ::rayon::spawn_fifo(carry::job(Frame::private(engine::vars()), func));
}

/// A [`rayon::Scope`] whose spawns run in copies of the context current at the spawn.
///
/// Made by [`scope`] and [`in_place_scope`].
pub struct Scope<'a, 'scope> {
    inner: &'a ::rayon::Scope<'scope>,
}

impl<'scope> Scope<'_, 'scope> {
    /// [`rayon::Scope::spawn`], running `body` in a copy of the context current now.
    ///
    /// ```
    /// use contextvars::ContextVar;
    /// static STAGE: ContextVar<u32> = contextvars::context_var!(u32, "stage");
    ///
    /// let seen = std::sync::Mutex::new(Vec::new());
    /// contextvars::rayon::scope(|s| {
    ///     for stage in 0..3 {
    ///         STAGE.scope(stage, || {
    ///             s.spawn(|_| seen.lock().unwrap().push(STAGE.get()));
    ///         });
    ///     }
    /// });
    /// let mut seen = seen.into_inner().unwrap();
    /// seen.sort();
    /// assert_eq!(seen, [0, 1, 2]);
    /// ```
    pub fn spawn<BODY>(&self, body: BODY)
    where
        BODY: for<'b> FnOnce(&Scope<'b, 'scope>) + Send + 'scope,
    {
        let frame = Frame::private(engine::vars());
        let span = CarriedState::current();
        self.inner.spawn(move |inner| {
            span.in_state(|| engine::run_owned(frame, || body(&Scope { inner })));
        });
    }

    /// The wrapped rayon scope, for its other methods (which do not carry context).
    pub fn as_rayon(&self) -> &::rayon::Scope<'scope> {
        self.inner
    }
}

impl fmt::Debug for Scope<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scope").finish_non_exhaustive()
    }
}

/// [`rayon::scope`], running `op` and every [`Scope::spawn`] in copies of the context.
pub fn scope<'scope, OP, R>(op: OP) -> R
where
    OP: for<'a> FnOnce(&Scope<'a, 'scope>) -> R + Send,
    R: Send,
{
    with_captured(move |capture| {
        waiting(|| ::rayon::scope(move |inner| capture.run(|| op(&Scope { inner }))))
    })
}

/// [`rayon::in_place_scope`], running `op` and every [`Scope::spawn`] in copies of the
/// context.
pub fn in_place_scope<'scope, OP, R>(op: OP) -> R
where
    OP: for<'a> FnOnce(&Scope<'a, 'scope>) -> R,
{
    with_captured(move |capture| {
        waiting(|| ::rayon::in_place_scope(move |inner| capture.run(|| op(&Scope { inner }))))
    })
}

/// Context-carrying forms of [`ThreadPool`]'s methods.
///
/// ```
/// use contextvars::ContextVar;
/// use contextvars::rayon::ThreadPoolExt;
/// static USER: ContextVar<&str> = contextvars::context_var!(&'static str, "user");
///
/// let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
/// let _token = USER.set("ada");
/// assert_eq!(pool.install_with_context(|| USER.get()), "ada");
/// ```
pub trait ThreadPoolExt {
    /// [`ThreadPool::install`], running `op` in a copy of the current context.
    fn install_with_context<OP, R>(&self, op: OP) -> R
    where
        OP: FnOnce() -> R + Send,
        R: Send;

    /// [`ThreadPool::spawn`], running `op` in a copy of the current context.
    fn spawn_with_context<OP>(&self, op: OP)
    where
        OP: FnOnce() + Send + 'static;

    /// [`ThreadPool::spawn_fifo`], running `op` in a copy of the current context.
    fn spawn_fifo_with_context<OP>(&self, op: OP)
    where
        OP: FnOnce() + Send + 'static;
}

impl ThreadPoolExt for ThreadPool {
    fn install_with_context<OP, R>(&self, op: OP) -> R
    where
        OP: FnOnce() -> R + Send,
        R: Send,
    {
        with_captured(move |capture| waiting(|| self.install(move || capture.run(op))))
    }

    fn spawn_with_context<OP>(&self, op: OP)
    where
        OP: FnOnce() + Send + 'static,
    {
        self.spawn(carry::job(Frame::private(engine::vars()), op));
    }

    fn spawn_fifo_with_context<OP>(&self, op: OP)
    where
        OP: FnOnce() + Send + 'static,
    {
        self.spawn_fifo(carry::job(Frame::private(engine::vars()), op));
    }
}

/// Adds [`in_copied_context`](Self::in_copied_context) to every [`ParallelIterator`].
pub trait ParallelIteratorExt: ParallelIterator {
    /// Runs the rest of this parallel iterator in a copy of the context current now: the
    /// closures of the adapters after this one and of the consuming method (`filter`,
    /// `map`, `for_each`, `collect`, `reduce`, `fold`, ...) see the caller's values.
    ///
    /// The context is captured once, here. Every call rayon makes into the adapter's
    /// consumer (an item, a batch of items, a split, a reduction, the end of a job)
    /// enters the captured context and leaves it before returning, and every item starts
    /// from the captured bindings: a `set` or a [`Context::current`](crate::Context::current)
    /// handle one item makes is never seen by the next item of the same job, so what an
    /// item sees does not depend on how rayon split the work. Sets never reach the
    /// caller, nor the worker threads.
    ///
    /// # Where to put it
    ///
    /// **Right after the source**, before the first adapter whose closures should see
    /// the context. What runs *after* it runs inside those calls. What runs *before* it
    /// is covered only when rayon happens to call its closures while pulling items for
    /// this adapter (a `map` straight over a range or a `Vec` is; a `map` after a
    /// `filter`, or a `fold`, is not), so do not rely on that: elsewhere it runs in
    /// rayon's own frames, which on a worker are empty and read-only (a `set` there is
    /// refused, as in a plain job).
    ///
    /// Adapters that pull items one at a time through an iterator (`zip`, `zip_eq`,
    /// `enumerate`, `rev`, `step_by`, `chunks`, `interleave`, ...) run what comes after
    /// them outside the adapter's calls: call `in_copied_context()` again after such an
    /// adapter (a pipeline may have several; each one's closures run in its own
    /// capture).
    ///
    /// ```
    /// use contextvars::ContextVar;
    /// use contextvars::rayon::ParallelIteratorExt;
    /// use rayon::prelude::*;
    /// static SCALE: ContextVar<u64> = contextvars::context_var!(u64, "scale", default 1);
    ///
    /// let _token = SCALE.set(10);
    /// let total: u64 = (1..=100u64)
    ///     .into_par_iter()
    ///     .in_copied_context()
    ///     .filter(|n| n % 2 == 0)
    ///     .map(|n| n * SCALE.get())
    ///     .sum();
    /// assert_eq!(total, 25_500);
    ///
    /// // After `enumerate`, capture again.
    /// let scaled: Vec<u64> = vec![1u64, 2, 3]
    ///     .into_par_iter()
    ///     .enumerate()
    ///     .in_copied_context()
    ///     .map(|(i, n)| i as u64 + n * SCALE.get())
    ///     .collect();
    /// assert_eq!(scaled, [10, 21, 32]);
    /// ```
    fn in_copied_context(self) -> InContext<Self> {
        InContext {
            base: self,
            vars: engine::vars(),
            span: CarriedState::current(),
        }
    }
}

impl<I: ParallelIterator> ParallelIteratorExt for I {}

/// A parallel iterator whose jobs run in a captured context; see
/// [`ParallelIteratorExt::in_copied_context`].
#[must_use = "parallel iterators do nothing unless consumed"]
pub struct InContext<I> {
    base: I,
    vars: Vars,
    span: CarriedState,
}

impl<I: fmt::Debug> fmt::Debug for InContext<I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InContext")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl<I: ParallelIterator> ParallelIterator for InContext<I> {
    type Item = I::Item;

    fn drive_unindexed<C>(self, consumer: C) -> C::Result
    where
        C: UnindexedConsumer<Self::Item>,
    {
        let InContext { base, vars, span } = self;
        waiting(|| {
            base.drive_unindexed(ContextConsumer {
                base: consumer,
                capture: Borrowed::new(&vars, &span),
            })
        })
    }

    fn opt_len(&self) -> Option<usize> {
        self.base.opt_len()
    }
}

impl<I: IndexedParallelIterator> IndexedParallelIterator for InContext<I> {
    fn drive<C: Consumer<Self::Item>>(self, consumer: C) -> C::Result {
        let InContext { base, vars, span } = self;
        waiting(|| {
            base.drive(ContextConsumer {
                base: consumer,
                capture: Borrowed::new(&vars, &span),
            })
        })
    }

    fn len(&self) -> usize {
        self.base.len()
    }

    fn with_producer<CB: ProducerCallback<Self::Item>>(self, callback: CB) -> CB::Output {
        let InContext { base, vars, span } = self;
        waiting(|| {
            base.with_producer(ContextCallback {
                base: callback,
                capture: Borrowed::new(&vars, &span),
            })
        })
    }
}

/// A capture borrowed by structured jobs (rayon's `join`, scopes, `install` and the
/// parallel-iterator adapter), which all end before the capture does.
#[derive(Clone, Copy)]
struct Borrowed<'a> {
    vars: &'a Vars,
    span: &'a CarriedState,
}

impl<'a> Borrowed<'a> {
    /// A capture of `vars` and `span`, owned by the caller.
    fn new(vars: &'a Vars, span: &'a CarriedState) -> Self {
        Self { vars, span }
    }

    /// The same snapshot without the span, for calls made inside a call that entered it
    /// (entering it again would make the subscriber record a second `enter`).
    fn inside_span(self) -> Borrowed<'a> {
        static NONE: CarriedState = CarriedState::NONE;
        Borrowed {
            vars: self.vars,
            span: &NONE,
        }
    }

    /// Runs `f` in a frame over the captured snapshot (see [`engine::run_borrowed`]),
    /// inside the captured span.
    #[inline]
    fn run<R>(self, f: impl FnOnce() -> R) -> R {
        self.span.in_state(|| engine::run_borrowed(self.vars, f))
    }

    /// Calls `step` until it returns `false`, each call in a frame that starts from the
    /// captured bindings (see [`engine::run_borrowed_each`]), all inside the captured
    /// span (entered once).
    #[inline]
    fn run_each(self, step: impl FnMut() -> bool) {
        self.span
            .in_state(|| engine::run_borrowed_each(self.vars, step));
    }
}

/// Runs `wait`, a rayon call during which this thread may take up other jobs, in an
/// empty, read-only frame if the thread is a rayon worker (see the module docs): a plain
/// job it steals there sees no values and cannot bind any. Elsewhere rayon blocks the
/// thread until the call is done, so `wait` runs as it is.
#[inline]
fn waiting<R>(wait: impl FnOnce() -> R) -> R {
    if ::rayon::current_thread_index().is_some() {
        engine::run_read_only(wait)
    } else {
        wait()
    }
}

/// Runs `f` with the current context and span captured; the jobs `f` starts borrow the
/// capture.
#[inline]
fn with_captured<R>(f: impl FnOnce(Borrowed<'_>) -> R) -> R {
    let span = CarriedState::current();
    engine::with_captured(|vars| f(Borrowed::new(vars, &span)))
}

// ---- Consumer path (the adapter is the last one before the consuming method): every
// call into a consumer, folder or reducer of ours enters the job's frame and leaves it
// before returning. How long a folder lives, where it is completed or dropped, is up to
// the code driving it (any safe code can implement rayon's plumbing traits), so nothing
// here holds a frame switch across calls.

struct ContextConsumer<'v, C> {
    base: C,
    capture: Borrowed<'v>,
}

impl<'v, T, C: Consumer<T>> Consumer<T> for ContextConsumer<'v, C> {
    type Folder = ContextFolder<'v, C::Folder>;
    type Reducer = ContextReducer<'v, C::Reducer>;
    type Result = C::Result;

    fn split_at(self, index: usize) -> (Self, Self, Self::Reducer) {
        let capture = self.capture;
        let base = self.base;
        let (left, right, reducer) = capture.run(|| base.split_at(index));
        (
            ContextConsumer {
                base: left,
                capture,
            },
            ContextConsumer {
                base: right,
                capture,
            },
            ContextReducer {
                base: reducer,
                capture,
            },
        )
    }

    fn into_folder(self) -> Self::Folder {
        // The consumer's own `into_folder` may run user code (`fold`'s identity).
        let capture = self.capture;
        let base = self.base;
        ContextFolder::new(capture.run(|| base.into_folder()), capture)
    }

    fn full(&self) -> bool {
        self.base.full()
    }
}

impl<T, C: UnindexedConsumer<T>> UnindexedConsumer<T> for ContextConsumer<'_, C> {
    fn split_off_left(&self) -> Self {
        let base = &self.base;
        ContextConsumer {
            base: self.capture.run(|| base.split_off_left()),
            capture: self.capture,
        }
    }

    fn to_reducer(&self) -> Self::Reducer {
        let base = &self.base;
        ContextReducer {
            base: self.capture.run(|| base.to_reducer()),
            capture: self.capture,
        }
    }
}

/// A folder whose every call runs in a frame over the captured snapshot, entered inside
/// the call and left before it returns. Each item gets a frame that starts from the
/// captured bindings ([`run_borrowed_each`](engine::run_borrowed_each)): a `set` one
/// item leaves behind, or a context handle it takes, is never seen by the next, so what
/// an item sees does not depend on how rayon split the work. Used by both paths: as a
/// job's folder (consumer path) and around the consumer's folder inside a producer's
/// fold (producer path).
struct ContextFolder<'v, F> {
    /// `None` only while a call has taken it out (and for good after `complete`, or if a
    /// call unwound): a folder is consumed by every call, so no caller sees that state.
    base: Option<F>,
    capture: Borrowed<'v>,
}

impl<'v, F> ContextFolder<'v, F> {
    fn new(base: F, capture: Borrowed<'v>) -> Self {
        Self {
            base: Some(base),
            capture,
        }
    }

    /// The wrapped folder. Every method takes `self` and puts the folder back before
    /// returning, so it is there whenever a caller holds a `ContextFolder`.
    fn take(&mut self) -> F {
        self.base
            .take()
            .expect("a ContextFolder holds its folder between calls")
    }
}

impl<T, F: Folder<T>> Folder<T> for ContextFolder<'_, F> {
    type Result = F::Result;

    fn consume(mut self, item: T) -> Self {
        let base = self.take();
        self.base = Some(self.capture.run(|| base.consume(item)));
        self
    }

    fn consume_iter<I: IntoIterator<Item = T>>(mut self, iter: I) -> Self {
        let mut iter = iter.into_iter();
        let mut slot = Some(self.take());
        // Pulling an item runs the closures of the adapters before this one (`map`,
        // `filter`, ...), so it happens inside the item's frame too.
        self.capture.run_each(|| {
            let Some(base) = slot.take() else {
                return false;
            };
            if base.full() {
                slot = Some(base);
                return false;
            }
            match iter.next() {
                Some(item) => {
                    slot = Some(base.consume(item));
                    true
                }
                None => {
                    slot = Some(base);
                    false
                }
            }
        });
        self.base = slot;
        self
    }

    fn complete(mut self) -> F::Result {
        let base = self.take();
        self.capture.run(|| base.complete())
    }

    fn full(&self) -> bool {
        self.base.as_ref().is_some_and(F::full)
    }
}

impl<F> Drop for ContextFolder<'_, F> {
    /// A folder dropped without `complete` (a panic in a job, or a driver that gave up)
    /// releases its state in the captured context too: its destructors may read
    /// variables.
    fn drop(&mut self) {
        if let Some(base) = self.base.take() {
            self.capture.run(|| drop(base));
        }
    }
}

/// Reductions run user code (`reduce`'s operator), so they run in the context too.
struct ContextReducer<'v, R> {
    base: R,
    capture: Borrowed<'v>,
}

impl<T, R: Reducer<T>> Reducer<T> for ContextReducer<'_, R> {
    fn reduce(self, left: T, right: T) -> T {
        let base = self.base;
        self.capture.run(|| base.reduce(left, right))
    }
}

// ---- Producer path (an indexed adapter such as `map`, `enumerate` or `zip` follows this
// one): producers borrow the captured snapshot, the structured hand-off.

struct ContextCallback<'v, CB> {
    base: CB,
    capture: Borrowed<'v>,
}

impl<T, CB: ProducerCallback<T>> ProducerCallback<T> for ContextCallback<'_, CB> {
    type Output = CB::Output;

    fn callback<P: Producer<Item = T>>(self, producer: P) -> CB::Output {
        self.base.callback(ContextProducer {
            base: producer,
            capture: self.capture,
        })
    }
}

/// Every fold (a job's whole share of items) runs in a borrowed frame over the snapshot,
/// which outlives the producer (`with_producer` returns only after every job has).
struct ContextProducer<'v, P> {
    base: P,
    capture: Borrowed<'v>,
}

impl<'v, P: Producer> Producer for ContextProducer<'v, P> {
    type Item = P::Item;
    type IntoIter = ContextIter<'v, P::IntoIter>;

    fn into_iter(self) -> Self::IntoIter {
        let capture = self.capture;
        ContextIter {
            base: capture.run(|| self.base.into_iter()),
            capture,
        }
    }

    fn min_len(&self) -> usize {
        self.base.min_len()
    }

    fn max_len(&self) -> usize {
        self.base.max_len()
    }

    fn split_at(self, index: usize) -> (Self, Self) {
        let (left, right) = self.base.split_at(index);
        let capture = self.capture;
        (
            ContextProducer {
                base: left,
                capture,
            },
            ContextProducer {
                base: right,
                capture,
            },
        )
    }

    fn fold_with<F: Folder<Self::Item>>(self, folder: F) -> F {
        let capture = self.capture;
        // The folder's calls happen inside this one, which entered the span.
        capture.run(|| {
            self.base
                .fold_with(ContextFolder::new(folder, capture.inside_span()))
                .take()
        })
    }
}

/// The producer's items pulled one by one (when an adapter such as `zip` drives it as an
/// iterator): each step runs in the context, but what the adapter does with the item
/// afterwards runs outside it (in rayon's frames: on a worker, the empty read-only one
/// of the wait), which is why the adapter should come last.
struct ContextIter<'v, I> {
    base: I,
    capture: Borrowed<'v>,
}

impl<I: Iterator> Iterator for ContextIter<'_, I> {
    type Item = I::Item;

    fn next(&mut self) -> Option<I::Item> {
        let base = &mut self.base;
        self.capture.run(|| base.next())
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.base.size_hint()
    }
}

impl<I: DoubleEndedIterator> DoubleEndedIterator for ContextIter<'_, I> {
    fn next_back(&mut self) -> Option<I::Item> {
        let base = &mut self.base;
        self.capture.run(|| base.next_back())
    }
}

impl<I: ExactSizeIterator> ExactSizeIterator for ContextIter<'_, I> {
    fn len(&self) -> usize {
        self.base.len()
    }
}
