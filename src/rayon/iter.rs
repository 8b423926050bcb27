//! The parallel-iterator adapter (`in_copied_context`): every call rayon makes into it
//! enters the captured context and leaves it before returning.

#![deny(unsafe_code)]

use std::fmt;

use ::rayon::iter::plumbing::{
    Consumer, Folder, Producer, ProducerCallback, Reducer, UnindexedConsumer,
};
use ::rayon::iter::{IndexedParallelIterator, ParallelIterator};

use super::{Borrowed, waiting};
use crate::carry::CarriedState;
use crate::engine::{self, Vars};

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
    /// use contextvars::rayon::ParallelIteratorExt;
    /// use rayon::prelude::*;
    /// contextvars::context_var! { static SCALE: u64 = 1; }
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
/// captured bindings ([`run_borrowed_fold`](engine::run_borrowed_fold)): a `set` one
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
        // The folder and the items are handed to the loop and back (not borrowed by its
        // closure), so they stay in registers across the items (`run_borrowed_fold`).
        let state = (Some(self.take()), iter.into_iter());
        // Pulling an item runs the closures of the adapters before this one (`map`,
        // `filter`, ...), so it happens inside the item's frame too.
        let (slot, _) = self.capture.run_each(state, |(slot, iter)| {
            let Some(base) = slot.take() else {
                return false;
            };
            if base.full() {
                *slot = Some(base);
                return false;
            }
            match iter.next() {
                Some(item) => {
                    *slot = Some(base.consume(item));
                    true
                }
                None => {
                    *slot = Some(base);
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
