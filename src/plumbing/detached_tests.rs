//! The detached pair (`enter_detached` / `leave_detached`) driven the way a careless or
//! hostile hook would drive it. The pair is crate-private (tokio's task hooks use it): a
//! missing leave leaves one unit's frame current on a shared thread, where code that runs
//! next reads it, and no check on the read path could tell. These tests are unit tests
//! for that reason; they were written against the public API first (`tests/it/plumbing.rs`
//! holds the rest).

#![deny(unsafe_code)]

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;

use super::{
    CallerFrames, TaskFrame, enter_detached, leave_detached, run_in_snapshot, run_in_snapshot_each,
    run_read_only,
};
use crate::sync::{Cell, thread_locals};
use crate::{Context, ContextVar};

fn isolated<R>(f: impl FnOnce() -> R) -> R {
    Context::new().run(f)
}

fn expect_panic<R>(f: impl FnOnce() -> R) -> String {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(_) => panic!("expected a panic"),
        Err(payload) => payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_default(),
    }
}

static V: ContextVar<u32> = crate::context_var!(u32, "plumbing_v");
/// What a [`Noisy`] destructor sets.
static SEEN: ContextVar<u32> = crate::context_var!(u32, "plumbing_seen");
static NOISY: ContextVar<Noisy> = crate::context_var!(Noisy, "plumbing_noisy");

// ------------------------------------------------------------------------------ helpers

/// Restores a copy of `caller` (`CallerFrames` is `Copy`: hostile code may restore the
/// same record twice).
fn restore_copy(caller: CallerFrames) -> bool {
    let mut caller = caller;
    caller.restore()
}

/// Never drops `value`, but keeps it reachable (see the module docs).
fn forget<T: Send + 'static>(value: T) {
    // Statics are never dropped: the value stays reachable, and is never dropped.
    static FORGOTTEN: Mutex<Vec<Box<dyn Any + Send>>> = Mutex::new(Vec::new());
    FORGOTTEN
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(Box::new(value));
}

/// Runs `f` on a new plain thread (whose own context is empty and whose base frame no
/// scoped frame encloses), propagating its panic.
fn on_fresh_thread<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    thread::spawn(f)
        .join()
        .unwrap_or_else(|payload| resume_unwind(payload))
}

/// What a [`Noisy`] value saw when it was dropped.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
struct Dropped {
    id: u32,
    /// `V` then.
    v: Option<u32>,
    /// `SEEN` then (before its own set).
    seen: Option<u32>,
    /// Whether its `SEEN.try_set(id)` worked.
    set_ok: bool,
}

/// What the [`Noisy`] values of one test saw when they were dropped, in order.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<Dropped>>>);

impl Log {
    fn take(&self) -> Vec<Dropped> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn noisy(&self, id: u32) -> Noisy {
        Noisy {
            id,
            log: self.clone(),
        }
    }
}

/// A value whose destructor reads `V` and `SEEN`, then sets `SEEN` to its id: it tells
/// in which context it was dropped, and a set there that leaks shows up in `SEEN`.
struct Noisy {
    id: u32,
    log: Log,
}

impl Drop for Noisy {
    fn drop(&mut self) {
        let v = V.try_get().ok();
        let seen = SEEN.try_get().ok();
        let set_ok = SEEN.try_set(self.id).map(drop).is_ok();
        self.log
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Dropped {
                id: self.id,
                v,
                seen,
                set_ok,
            });
    }
}

/// A drop seen in a frame of its own: no `V`, no `SEEN`, and its set worked (in that
/// frame).
fn alone(id: u32) -> Dropped {
    Dropped {
        id,
        v: None,
        seen: None,
        set_ok: true,
    }
}

/// A snapshot that binds `V` to `v` (and nothing else).
fn snapshot_with(v: u32) -> crate::Snapshot {
    Context::new().with_value(&V, v).snapshot()
}

/// A frame that binds `V` to `v` and `NOISY` to `noisy`, made in a frame of its own.
fn frame_with(v: u32, noisy: Option<Noisy>) -> TaskFrame {
    let mut frame = TaskFrame::from_snapshot(&snapshot_with(v));
    if let Some(noisy) = noisy {
        frame.enter(|| drop(NOISY.set(noisy)));
    }
    frame
}

/// The caller's state that every test checks it is back in: `V` and whether `SEEN` and
/// `NOISY` are bound.
fn state() -> (Option<u32>, Option<u32>, Option<u32>) {
    (
        V.try_get().ok(),
        SEEN.try_get().ok(),
        NOISY.try_with(|noisy| noisy.id).ok(),
    )
}

// ====================================================================== detached frames

#[test]
fn leave_detached_without_an_enter_is_none() {
    isolated(|| {
        drop(V.set(1));
        assert!(leave_detached().is_none());
        assert!(leave_detached().is_none());
        assert_eq!(V.get(), 1);
        // Also on a thread of its own (its base frame), and on one that was never used.
        let left = on_fresh_thread(|| {
            let first = leave_detached().is_none();
            drop(V.set(2));
            (first, leave_detached().is_none(), V.get())
        });
        assert_eq!(left, (true, true, 2));
        // Nor can one thread leave another's detached frame.
        enter_detached(frame_with(10, None)).unwrap();
        let other = on_fresh_thread(|| leave_detached().is_none());
        assert!(other);
        assert_eq!(V.get(), 10);
        let mut back = leave_detached().unwrap();
        assert_eq!(V.get(), 1);
        assert_eq!(back.enter(|| V.get()), 10);
    });
}

#[test]
fn sets_in_a_detached_frame_land_in_it() {
    isolated(|| {
        drop(V.set(1));
        let log = Log::default();
        enter_detached(frame_with(10, None)).unwrap();
        assert_eq!(state(), (Some(10), None, None));
        drop(V.set(11));
        drop(NOISY.set(log.noisy(1)));
        let mut back = leave_detached().expect("the detached frame is current");
        assert_eq!(state(), (Some(1), None, None));
        assert!(back.bindings_changed());
        assert_eq!(back.enter(state), (Some(11), None, Some(1)));
        // Entered again, detached, with what it holds.
        enter_detached(back).unwrap();
        assert_eq!(state(), (Some(11), None, Some(1)));
        let mut back = leave_detached().unwrap();
        back.release();
        assert_eq!(log.take(), [alone(1)]);
        assert_eq!(state(), (Some(1), None, None));
    });
}

#[test]
fn detached_frames_leave_in_lifo_order() {
    isolated(|| {
        drop(V.set(1));
        enter_detached(frame_with(10, None)).unwrap();
        drop(V.set(11));
        enter_detached(frame_with(20, None)).unwrap();
        assert_eq!(V.get(), 20);
        drop(V.set(21));
        enter_detached(TaskFrame::empty()).unwrap();
        assert_eq!(V.try_get().ok(), None);
        let mut third = leave_detached().unwrap();
        assert_eq!(V.get(), 21);
        let mut second = leave_detached().unwrap();
        assert_eq!(V.get(), 11);
        let mut first = leave_detached().unwrap();
        assert_eq!(V.get(), 1);
        assert!(leave_detached().is_none());
        assert_eq!(V.get(), 1);
        assert_eq!(first.enter(|| V.get()), 11);
        assert_eq!(second.enter(|| V.get()), 21);
        assert_eq!(third.enter(|| V.try_get().ok()), None);
    });
}

#[test]
fn leave_detached_is_refused_inside_a_context_run_entered_after_it() {
    isolated(|| {
        drop(V.set(1));
        enter_detached(frame_with(10, None)).unwrap();
        let ctx = Context::new().with_value(&V, 30);
        // A run that only reads (a light frame), then one that set (materialized), then
        // a leave after the set; each refused, changing nothing.
        ctx.run(|| {
            assert!(leave_detached().is_none());
            assert_eq!(V.get(), 30);
            drop(V.set(31));
            assert!(leave_detached().is_none());
            assert_eq!(V.get(), 31);
            Context::new().run(|| {
                assert!(leave_detached().is_none());
                assert_eq!(V.try_get().ok(), None);
            });
            assert_eq!(V.get(), 31);
        });
        assert_eq!(V.get(), 10, "a refused leave changed the thread's frame");
        assert_eq!(ctx.run(|| V.get()), 31);
        let mut back = leave_detached().expect("the detached frame is current again");
        assert_eq!(V.get(), 1);
        assert_eq!(back.enter(|| V.get()), 10);
        assert!(leave_detached().is_none());
    });
}

#[test]
fn leave_detached_is_refused_inside_a_task_frame_entered_after_it() {
    isolated(|| {
        drop(V.set(1));
        enter_detached(frame_with(10, None)).unwrap();
        let mut task = frame_with(20, None);
        task.enter(|| assert!(leave_detached().is_none()));
        task.enter(|| {
            drop(V.set(21));
            assert!(leave_detached().is_none());
            assert_eq!(V.get(), 21);
        });
        // Nor from run_in_snapshot, run_read_only, or a TaskFrame::run.
        let snapshot = snapshot_with(40);
        run_in_snapshot(&snapshot, || assert!(leave_detached().is_none()));
        run_read_only(|| assert!(leave_detached().is_none()));
        TaskFrame::empty().run(|| {
            drop(V.set(50));
            assert!(leave_detached().is_none());
        });
        assert_eq!(V.get(), 10);
        assert_eq!(task.enter(|| V.get()), 21);
        let mut back = leave_detached().unwrap();
        assert_eq!(V.get(), 1);
        assert_eq!(back.enter(|| V.get()), 10);
    });
}

#[test]
fn a_detached_frame_never_left_is_ended_by_the_context_run_around_it() {
    isolated(|| {
        drop(V.set(1));
        let log = Log::default();
        let ctx = Context::new().with_value(&V, 30);
        ctx.run(|| {
            drop(V.set(31)); // the run's own set, before the detach
            enter_detached(frame_with(10, Some(log.noisy(1)))).unwrap();
            assert_eq!(V.get(), 10);
            drop(V.set(11));
            drop(SEEN.set(11));
            // And one more, entered in the first (never left either).
            enter_detached(frame_with(20, Some(log.noisy(2)))).unwrap();
            drop(V.set(21));
        });
        assert_eq!(
            state(),
            (Some(1), None, None),
            "the thread is not back in its context"
        );
        assert!(
            leave_detached().is_none(),
            "a stranded frame survived its run"
        );
        let mut dropped = log.take();
        dropped.sort_by_key(|dropped| dropped.id);
        assert_eq!(dropped, [alone(1), alone(2)], "the stranded frames' values");
        assert_eq!(
            ctx.try_run(|| (V.get(), SEEN.try_get().ok())).unwrap(),
            (31, None),
            "the detached frames' sets reached the run's context"
        );
        assert_eq!(V.get(), 1);
    });
}

#[test]
fn a_detached_frame_never_left_is_ended_by_the_task_frame_around_it() {
    isolated(|| {
        drop(V.set(1));
        let mut task = frame_with(20, None);
        task.enter(|| {
            drop(V.set(21));
            enter_detached(frame_with(10, None)).unwrap();
            drop(V.set(11));
        });
        assert_eq!(V.get(), 1);
        assert!(leave_detached().is_none());
        assert_eq!(
            task.enter(|| V.get()),
            21,
            "the task frame got the detached frame's values"
        );
        // In a task frame that never set before the detach (it materializes then).
        let mut task = frame_with(20, None);
        task.enter(|| {
            enter_detached(frame_with(10, None)).unwrap();
            drop(V.set(12));
        });
        assert_eq!(task.enter(|| V.get()), 20);
        assert!(!task.bindings_changed());
        assert_eq!(V.get(), 1);
    });
}

#[test]
fn a_detached_frame_never_left_in_the_other_scoped_frames() {
    isolated(|| {
        drop(V.set(1));
        let snapshot = snapshot_with(40);
        run_in_snapshot(&snapshot, || {
            enter_detached(frame_with(10, None)).unwrap();
            drop(V.set(11));
        });
        assert_eq!(V.get(), 1);
        run_read_only(|| {
            enter_detached(frame_with(10, None)).unwrap();
            drop(V.set(12)); // the detached frame takes sets
            assert_eq!(V.get(), 12);
        });
        assert_eq!(V.get(), 1);
        TaskFrame::capture().run(|| {
            enter_detached(frame_with(10, None)).unwrap();
            drop(V.set(13));
        });
        assert_eq!(V.get(), 1);
        let mut item = 0;
        run_in_snapshot_each(&snapshot, || {
            assert_eq!(V.get(), 40, "item {item} does not start from the snapshot");
            enter_detached(frame_with(10 + item, None)).unwrap();
            assert_eq!(V.get(), 10 + item);
            item += 1;
            item < 3
        });
        assert_eq!(item, 3);
        assert_eq!(V.get(), 1);
        assert!(leave_detached().is_none());
        assert_eq!(snapshot.get(&V), Some(&40));
    });
}

#[test]
fn a_detached_frame_never_left_in_a_panicking_run() {
    isolated(|| {
        drop(V.set(1));
        let log = Log::default();
        let message = expect_panic(|| {
            Context::new().run(|| -> () {
                enter_detached(frame_with(10, Some(log.noisy(1)))).unwrap();
                drop(V.set(11));
                panic!("in the detached frame");
            })
        });
        assert_eq!(message, "in the detached frame");
        assert_eq!(state(), (Some(1), None, None));
        assert!(leave_detached().is_none());
        assert_eq!(log.take(), [alone(1)]);
    });
}

#[test]
fn a_stranded_detached_frame_leaves_its_context_object() {
    isolated(|| {
        drop(V.set(1));
        let ctx = Context::new().with_value(&V, 10);
        let frame = TaskFrame::for_context(&ctx).unwrap();
        Context::new().run(|| {
            enter_detached(frame).unwrap();
            assert_eq!(V.get(), 10);
            drop(V.set(11));
        });
        assert_eq!(V.get(), 1);
        assert_eq!(
            ctx.try_run(|| V.get()).unwrap(),
            11,
            "the stranded frame did not leave its object (or lost its set)"
        );
        // Left properly, it still holds the object until dropped.
        enter_detached(TaskFrame::for_context(&ctx).unwrap()).unwrap();
        drop(V.set(12));
        let back = leave_detached().unwrap();
        assert!(ctx.try_run(|| ()).unwrap_err().is_already_entered());
        drop(back);
        assert_eq!(ctx.try_run(|| V.get()).unwrap(), 12);
        assert_eq!(V.get(), 1);
    });
}

#[test]
fn a_frame_left_detached_can_be_forgotten() {
    isolated(|| {
        drop(V.set(1));
        let log = Log::default();
        enter_detached(frame_with(10, Some(log.noisy(1)))).unwrap();
        drop(V.set(11));
        forget(leave_detached().unwrap());
        assert_eq!(state(), (Some(1), None, None));
        assert!(leave_detached().is_none());
        assert_eq!(log.take(), [], "a forgotten frame's values were dropped");
        // And the same with a frame detached inside a run that then ends.
        Context::new().run(|| {
            enter_detached(frame_with(20, None)).unwrap();
            forget(leave_detached().unwrap());
            assert_eq!(V.try_get().ok(), None);
        });
        assert_eq!(V.get(), 1);
    });
}

#[test]
fn detached_frames_on_a_threads_base_frame() {
    let seen = on_fresh_thread(|| {
        drop(V.set(1));
        // Entered on the base frame (no scoped frame around it), left from inside a
        // scoped frame (refused) and then outside it.
        enter_detached(frame_with(10, None)).unwrap();
        drop(V.set(11));
        Context::new().run(|| {
            assert!(leave_detached().is_none());
            assert_eq!(V.try_get().ok(), None);
            // A detached frame entered inside the run, over the one outside it: ended
            // by the run, and the outer one stays.
            enter_detached(frame_with(20, None)).unwrap();
            drop(V.set(21));
        });
        assert_eq!(
            V.get(),
            11,
            "the run did not put the outer detached frame back"
        );
        let mut back = leave_detached().unwrap();
        assert_eq!(V.get(), 1);
        assert!(leave_detached().is_none());
        // A missing leave on the base frame: the thread stays in the task's frame (a
        // wrong value, never a dangling one).
        enter_detached(back).unwrap();
        let mut again = TaskFrame::capture();
        assert_eq!(again.enter(|| V.get()), 11);
        back = leave_detached().unwrap();
        (V.get(), back.enter(|| V.get()))
    });
    assert_eq!(seen, (1, 11));
}

#[test]
fn a_thread_that_ends_with_a_detached_frame_entered() {
    // The thread set something first (its state is in use), its own context object is
    // exported, and it ends inside a detached frame that holds a value.
    let log = Log::default();
    let frame = frame_with(10, Some(log.noisy(1)));
    let ctx = on_fresh_thread(move || {
        drop(V.set(1));
        let own = Context::current();
        enter_detached(frame).unwrap();
        drop(V.set(11));
        assert_eq!(V.get(), 11);
        own
    });
    assert_eq!(
        log.take(),
        [Dropped {
            id: 1,
            v: None,
            seen: None,
            set_ok: false
        }],
        "the detached frame's value was not dropped at thread exit (or saw something)"
    );
    assert_eq!(
        ctx.try_run(|| V.get()).unwrap(),
        1,
        "the thread's own context object is left entered (or changed)"
    );
    // Two detached frames, both still entered when the thread ends.
    let log2 = log.clone();
    on_fresh_thread(move || {
        drop(V.set(1));
        enter_detached(frame_with(10, Some(log2.noisy(2)))).unwrap();
        enter_detached(frame_with(20, Some(log2.noisy(3)))).unwrap();
    });
    let mut dropped = log.take();
    dropped.sort_by_key(|dropped| dropped.id);
    assert_eq!(dropped.iter().map(|d| d.id).collect::<Vec<_>>(), [2, 3]);
}

#[test]
fn a_fresh_thread_that_ends_with_a_detached_frame_entered() {
    let log = Log::default();
    let frame = frame_with(10, Some(log.noisy(1)));
    on_fresh_thread(move || {
        enter_detached(frame).unwrap();
        assert_eq!(NOISY.try_with(|noisy| noisy.id).ok(), Some(1));
    });
    assert_eq!(
        log.take().iter().map(|d| d.id).collect::<Vec<_>>(),
        [1],
        "the detached frame's value was never dropped"
    );
}

#[test]
fn enter_detached_in_thread_local_destructors() {
    /// Enters a detached frame in its destructor and leaves it again, logging what it saw.
    struct Late(Arc<Mutex<Vec<String>>>);
    impl Drop for Late {
        fn drop(&mut self) {
            let outcome = catch_unwind(|| match enter_detached(TaskFrame::empty()) {
                Ok(()) => {
                    let inside = V.try_get().ok();
                    let left = leave_detached().is_some();
                    format!(
                        "entered, saw {inside:?}, left {left}, then {:?}",
                        V.try_get().ok()
                    )
                }
                Err(frame) => {
                    drop(frame);
                    format!("refused, then {:?}", leave_detached().is_some())
                }
            });
            let line = outcome.unwrap_or_else(|_| "panicked".to_owned());
            self.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(line);
        }
    }
    thread_locals! {
        static LATE: Cell<Option<Late>> = Cell::new(None);
    }
    let log = Arc::new(Mutex::new(Vec::new()));
    // Registered before and after the crate's state was first used: the destructors run
    // on either side of the crate's teardown.
    for late_first in [true, false] {
        let log2 = Arc::clone(&log);
        on_fresh_thread(move || {
            if late_first {
                LATE.set(Some(Late(log2)));
                drop(V.set(1));
            } else {
                drop(V.set(1));
                LATE.set(Some(Late(log2)));
            }
        });
    }
    let log = log.lock().unwrap().clone();
    assert_eq!(log.len(), 2, "{log:?}");
    for line in &log {
        assert!(
            line == "entered, saw None, left true, then Some(1)" || line == "refused, then false",
            "{line}"
        );
    }
}

#[test]
fn caller_frames_in_a_detached_frame() {
    isolated(|| {
        drop(V.set(1));
        enter_detached(TaskFrame::from_snapshot(&snapshot_with(10))).unwrap();
        let mut caller = CallerFrames::record();
        assert_ne!(caller, CallerFrames::default());
        drop(V.set(11));
        assert!(caller.restore());
        assert_eq!(V.get(), 10);
        drop(V.set(12));
        let pending = CallerFrames::record();
        let mut back = leave_detached().unwrap();
        assert_eq!(V.get(), 1);
        assert!(
            !restore_copy(pending),
            "a detached frame restored once left"
        );
        assert_eq!(V.get(), 1);
        assert_eq!(back.enter(|| V.get()), 12);
    });
}
