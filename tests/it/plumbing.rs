//! `contextvars::plumbing` driven the way careless or hostile code would drive it: the
//! module is public, so every order of calls safe code can make must stay memory-safe,
//! must not let a value of one unit of work be seen in another, and must leave the
//! thread in its own context afterwards.
//!
//! * [`TaskFrame`]: `enter` (sets stay in the frame, nested frames, panics, other
//!   threads), `run`, `end`, `end_pinned`, `release`, `into_private`, `for_context` (the
//!   object stays entered until the frame is dropped or released), `from_snapshot`,
//!   `empty`, `bindings_changed`; and where the destructors of the values a frame holds
//!   run, and what they can see and change.
//! * The detached pair is crate-private (see `plumbing`'s docs): its hostile tests are
//!   unit tests, in `src/plumbing/detached_tests.rs`.
//! * [`run_in_snapshot`], [`run_in_snapshot_each`], [`run_read_only`], [`CallerFrames`],
//!   [`peek`].
//!
//! The carrier (`set_carrier`) is not tested here: a process has one, and registering one
//! would change what every other test of this binary captures. Neither is
//! `note_request_layer` (it changes the wording of other tests' errors, for the process).
//!
//! `mem::forget` here is [`forget`]: the value is never dropped, but stays reachable, so
//! that miri's leak check does not flag the leak the tests mean to make.

use std::panic::resume_unwind;
use std::pin::Pin;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;

use contextvars::plumbing::{
    CallerFrames, TaskFrame, peek, run_in_snapshot, run_in_snapshot_each, run_read_only,
};
use contextvars::{Context, ContextVar, copy_context};

use crate::{expect_panic, isolated, iterations};

static V: ContextVar<u32> = contextvars::context_var!(u32, "plumbing_v");
/// What a [`Noisy`] destructor sets.
static SEEN: ContextVar<u32> = contextvars::context_var!(u32, "plumbing_seen");
static NOISY: ContextVar<Noisy> = contextvars::context_var!(Noisy, "plumbing_noisy");

// ------------------------------------------------------------------------------ helpers

/// Restores a copy of `caller` (`CallerFrames` is `Copy`: hostile code may restore the
/// same record twice).
fn restore_copy(caller: CallerFrames) -> bool {
    let mut caller = caller;
    caller.restore()
}

/// Never drops `value`, but keeps it reachable (see the module docs).
fn forget<T: Send + 'static>(value: T) {
    static FORGOTTEN: Mutex<Vec<AtomicPtr<()>>> = Mutex::new(Vec::new());
    let pointer = Box::into_raw(Box::new(value)).cast::<()>();
    FORGOTTEN
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(AtomicPtr::new(pointer));
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
fn snapshot_with(v: u32) -> contextvars::Snapshot {
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

// ================================================================== TaskFrame::enter

#[test]
fn enter_keeps_sets_in_the_frame_across_enters() {
    isolated(|| {
        drop(V.set(1));
        let mut frame = TaskFrame::capture();
        assert!(!frame.bindings_changed());
        let seen = frame.enter(|| {
            let seen = V.get();
            drop(V.set(2));
            assert_eq!(V.get(), 2);
            seen
        });
        assert_eq!(seen, 1, "the frame starts from the capture");
        assert_eq!(V.get(), 1, "a set in the frame reached the caller");
        assert!(frame.bindings_changed());
        // The caller's later changes do not reach the frame either.
        drop(V.set(3));
        for round in 0..iterations(50) as u32 {
            frame.enter(|| {
                assert_eq!(V.get(), 2 + round, "the frame lost its set");
                drop(V.set(3 + round));
            });
            assert_eq!(
                V.get(),
                3,
                "round {round}: a set in the frame reached the caller"
            );
        }
        // A set reset inside the frame is gone from it.
        frame.enter(|| {
            let token = V.set(1000);
            V.reset(token).unwrap();
        });
        let last = 2 + iterations(50) as u32;
        assert_eq!(frame.enter(|| V.get()), last);
    });
}

#[test]
fn nested_enters_of_different_frames() {
    isolated(|| {
        drop(V.set(1));
        let mut a = TaskFrame::from_snapshot(&snapshot_with(10));
        let mut b = TaskFrame::from_snapshot(&snapshot_with(20));
        let mut c = TaskFrame::empty();
        a.enter(|| {
            assert_eq!(V.get(), 10);
            drop(V.set(11));
            b.enter(|| {
                assert_eq!(V.get(), 20, "the inner frame sees the outer one's set");
                drop(V.set(21));
                c.enter(|| {
                    assert_eq!(V.try_get().ok(), None);
                    drop(V.set(31));
                });
                assert_eq!(V.get(), 21);
                // `a` entered again inside itself is impossible (`&mut`); a Context::run
                // inside works.
                Context::new().run(|| {
                    assert_eq!(V.try_get().ok(), None);
                    drop(V.set(41));
                });
                assert_eq!(V.get(), 21);
            });
            assert_eq!(V.get(), 11, "the inner frame's set reached the outer one");
            // The same frames again, in the other order.
            c.enter(|| {
                assert_eq!(V.get(), 31);
                b.enter(|| assert_eq!(V.get(), 21));
                assert_eq!(V.get(), 31);
            });
        });
        assert_eq!(V.get(), 1);
        assert_eq!(a.enter(|| V.get()), 11);
        assert_eq!(b.enter(|| V.get()), 21);
        assert_eq!(c.enter(|| V.get()), 31);
    });
}

#[test]
fn panic_inside_enter_leaves_the_thread_clean_and_the_frame_usable() {
    isolated(|| {
        drop(V.set(1));
        let mut frame = TaskFrame::from_snapshot(&snapshot_with(10));
        // A panic in a frame that only read, in one that set, and in one that set inside
        // a nested frame of its own.
        let message = expect_panic(|| frame.enter(|| -> () { panic!("read {}", V.get()) }));
        assert_eq!(message, "read 10");
        assert_eq!(V.get(), 1);
        let message = expect_panic(|| {
            frame.enter(|| -> () {
                drop(V.set(11));
                panic!("set");
            })
        });
        assert_eq!(message, "set");
        assert_eq!(V.get(), 1, "a panic left the thread in the task's frame");
        assert_eq!(
            frame.enter(|| V.get()),
            11,
            "the frame keeps what the work made of it, also when it panicked"
        );
        let mut inner = TaskFrame::empty();
        let message = expect_panic(|| {
            frame.enter(|| -> () {
                drop(V.set(12));
                inner.enter(|| -> () {
                    drop(V.set(99));
                    panic!("nested");
                })
            })
        });
        assert_eq!(message, "nested");
        assert_eq!(V.get(), 1);
        assert_eq!(frame.enter(|| V.get()), 12);
        assert_eq!(inner.enter(|| V.get()), 99);
        // Still usable: a set and a read.
        frame.enter(|| drop(V.set(13)));
        assert_eq!(frame.enter(|| V.get()), 13);
        assert_eq!(V.get(), 1);
    });
}

#[test]
fn a_frame_entered_on_another_thread() {
    isolated(|| {
        drop(V.set(1));
        let frame = TaskFrame::capture();
        let (mut frame, theirs) = on_fresh_thread(move || {
            let mut frame = frame;
            drop(V.set(99)); // the other thread's own context
            let seen = frame.enter(|| {
                let seen = V.get();
                drop(V.set(2));
                seen
            });
            assert_eq!(seen, 1, "the frame carries its capture to the other thread");
            assert_eq!(
                V.get(),
                99,
                "the frame's set reached the other thread's context"
            );
            (frame, V.get())
        });
        assert_eq!(theirs, 99);
        assert_eq!(V.get(), 1);
        assert_eq!(
            frame.enter(|| V.get()),
            2,
            "the set made on the other thread"
        );
        // Back and forth a few times, moved each time.
        for round in 0..iterations(4) as u32 {
            frame = on_fresh_thread(move || {
                let mut frame = frame;
                frame.enter(|| {
                    assert_eq!(V.get(), 2 + round);
                    drop(V.set(3 + round));
                });
                assert_eq!(V.try_get().ok(), None);
                frame
            });
        }
        assert_eq!(frame.enter(|| V.get()), 2 + iterations(4) as u32);
        assert_eq!(V.get(), 1);
    });
}

// ============================================================= run, end, release, drop

#[test]
fn run_runs_once_in_the_frame_and_keeps_nothing() {
    isolated(|| {
        drop(V.set(1));
        let frame = TaskFrame::capture();
        drop(V.set(2));
        let seen = frame.run(|| {
            let seen = V.get();
            drop(V.set(3));
            (seen, V.get())
        });
        assert_eq!(seen, (1, 3));
        assert_eq!(V.get(), 2);
        // On another thread (a job's work), and with a panic.
        let frame = TaskFrame::capture();
        let seen = on_fresh_thread(move || frame.run(|| V.get()));
        assert_eq!(seen, 2);
        let frame = TaskFrame::capture();
        let message = expect_panic(|| {
            frame.run(|| -> () {
                drop(V.set(4));
                panic!("job")
            })
        });
        assert_eq!(message, "job");
        assert_eq!(V.get(), 2);
    });
}

#[test]
fn end_drops_the_work_in_the_frame_then_releases_it_apart() {
    isolated(|| {
        drop(V.set(1));
        let log = Log::default();
        let mut frame = frame_with(50, Some(log.noisy(2)));
        let work = log.noisy(1);
        frame.end(|| drop(work));
        assert_eq!(
            log.take(),
            [
                // The work sees the task's values; its set lands in the task's frame.
                Dropped {
                    id: 1,
                    v: Some(50),
                    seen: None,
                    set_ok: true
                },
                // The frame's values are released in a frame of their own.
                alone(2),
            ]
        );
        assert_eq!(state(), (Some(1), None, None), "an end reached the caller");
        assert!(!frame.bindings_changed(), "the frame is left empty");
        // Left empty: an enter sees nothing, a second end and the drop release nothing.
        assert_eq!(frame.enter(state), (None, None, None));
        frame.end(|| assert_eq!(state(), (None, None, None)));
        drop(frame);
        assert_eq!(log.take(), []);
        assert_eq!(state(), (Some(1), None, None));
    });
}

#[test]
fn end_pinned_drops_the_slot_in_the_frame() {
    isolated(|| {
        drop(V.set(1));
        let log = Log::default();
        let mut frame = frame_with(50, Some(log.noisy(2)));
        let mut slot = Some(log.noisy(1));
        frame.end_pinned(Pin::new(&mut slot));
        assert!(slot.is_none(), "the slot's work was not dropped");
        assert_eq!(
            log.take(),
            [
                Dropped {
                    id: 1,
                    v: Some(50),
                    seen: None,
                    set_ok: true
                },
                alone(2),
            ]
        );
        assert_eq!(state(), (Some(1), None, None));
        // An empty slot: the frame is only released.
        let mut frame = frame_with(60, Some(log.noisy(3)));
        let mut slot: Option<Noisy> = None;
        frame.end_pinned(Pin::new(&mut slot));
        assert_eq!(log.take(), [alone(3)]);
        assert_eq!(frame.enter(state), (None, None, None));
        // A boxed, pinned slot.
        let mut frame = frame_with(70, None);
        let mut slot = Box::pin(Some(log.noisy(4)));
        frame.end_pinned(slot.as_mut());
        assert!(slot.is_none());
        assert_eq!(
            log.take(),
            [Dropped {
                id: 4,
                v: Some(70),
                seen: None,
                set_ok: true
            }]
        );
        assert_eq!(state(), (Some(1), None, None));
    });
}

#[test]
fn release_runs_destructors_in_a_frame_of_their_own() {
    isolated(|| {
        drop(V.set(1));
        let log = Log::default();
        let mut frame = frame_with(50, Some(log.noisy(7)));
        frame.enter(|| drop(SEEN.set(5)));
        assert!(frame.bindings_changed());
        frame.release();
        assert_eq!(log.take(), [alone(7)]);
        assert_eq!(state(), (Some(1), None, None));
        assert!(!frame.bindings_changed());
        assert_eq!(
            frame.enter(state),
            (None, None, None),
            "release left values"
        );
        // Released twice, then dropped: nothing more.
        frame.release();
        drop(frame);
        assert_eq!(log.take(), []);
    });
}

/// `release` (and `end`) of a frame that only read: "the frame is left empty", the docs
/// say.
#[test]
fn release_of_a_frame_that_only_read_leaves_it_empty() {
    isolated(|| {
        drop(V.set(1));
        let mut frame = TaskFrame::capture();
        frame.enter(|| assert_eq!(V.get(), 1));
        frame.release();
        assert_eq!(
            frame.enter(|| V.try_get().ok()),
            None,
            "release left the capture"
        );
        let mut frame = TaskFrame::capture();
        frame.end(|| ());
        assert_eq!(
            frame.enter(|| V.try_get().ok()),
            None,
            "end left the capture"
        );
    });
}

#[test]
fn dropping_a_task_frame_releases_it_in_the_dropping_context() {
    // Documented: "Dropping a `TaskFrame` releases what it holds in the dropping thread's
    // context" (call `end` or `release` first where that matters).
    isolated(|| {
        drop(V.set(1));
        let log = Log::default();
        let frame = frame_with(50, Some(log.noisy(7)));
        Context::new().run(|| {
            drop(V.set(2));
            drop(frame);
            assert_eq!(
                log.take(),
                [Dropped {
                    id: 7,
                    v: Some(2),
                    seen: None,
                    set_ok: true
                }]
            );
            assert_eq!(SEEN.try_get().ok(), Some(7));
        });
        assert_eq!(state(), (Some(1), None, None));
    });
}

#[test]
fn a_replaced_value_is_dropped_apart_from_frame_and_caller() {
    isolated(|| {
        drop(V.set(1));
        let log = Log::default();
        let mut frame = frame_with(50, Some(log.noisy(1)));
        frame.enter(|| {
            drop(NOISY.set(log.noisy(2)));
            drop(V.set(51));
        });
        // The value replaced inside the frame was held by the frame's stored snapshot
        // too; it is released when the enter ends, where nothing sees what it does.
        assert_eq!(log.take(), [alone(1)]);
        assert_eq!(state(), (Some(1), None, None));
        assert_eq!(frame.enter(state), (Some(51), None, Some(2)));
        frame.release();
        assert_eq!(log.take(), [alone(2)]);
        assert_eq!(state(), (Some(1), None, None));
    });
}

/// Sets a new one of itself in its destructor, `left` more times, and `V` to
/// `1000 + left`.
struct Again {
    left: u32,
    drops: Arc<AtomicUsize>,
}

impl Drop for Again {
    fn drop(&mut self) {
        self.drops.fetch_add(1, Ordering::Relaxed);
        drop(V.try_set(1000 + self.left));
        if self.left > 0 {
            let next = Again {
                left: self.left - 1,
                drops: Arc::clone(&self.drops),
            };
            drop(AGAIN.try_set(next));
        }
    }
}

static AGAIN: ContextVar<Again> = contextvars::context_var!(Again, "plumbing_again");

/// Releases a frame that holds an [`Again`] chain of `left` more sets, and returns how
/// many of its values were dropped.
fn release_chain(left: u32) -> usize {
    let drops = Arc::new(AtomicUsize::new(0));
    let mut frame = TaskFrame::empty();
    frame.enter(|| {
        drop(AGAIN.set(Again {
            left,
            drops: Arc::clone(&drops),
        }))
    });
    frame.release();
    assert_eq!(
        frame.enter(|| (V.try_get().ok(), AGAIN.is_set())),
        (None, false),
        "release left values in the frame"
    );
    drops.load(Ordering::Relaxed)
}

#[test]
fn destructors_that_set_again_do_not_reach_the_caller() {
    isolated(|| {
        drop(V.set(1));
        assert_eq!(release_chain(2), 3, "the chain was not released");
        assert_eq!(V.get(), 1, "a destructor's set reached the caller");
        assert!(!AGAIN.is_set(), "a destructor's value reached the caller");
    });
}

#[test]
// The chain is let go by leaking it (documented on `engine::run::isolated`), which Miri's
// leak check and LeakSanitizer report (`.ci/run`'s asan stage skips it); the test runs
// everywhere else.
#[cfg_attr(miri, ignore = "leaks the endless chain on purpose")]
fn destructors_that_set_forever_do_not_reach_the_caller() {
    isolated(|| {
        drop(V.set(1));
        // A chain longer than the rounds `release` gives it: let go, never in the caller.
        assert!(release_chain(100) >= 1);
        assert_eq!(V.get(), 1, "a destructor's set reached the caller");
        assert!(!AGAIN.is_set(), "a destructor's value reached the caller");
    });
}

// ======================================================================== for_context

#[test]
fn for_context_holds_the_object_until_the_frame_is_dropped() {
    isolated(|| {
        drop(V.set(1));
        let ctx = Context::new().with_value(&V, 10);
        let mut frame = TaskFrame::for_context(&ctx).unwrap();
        assert!(ctx.try_run(|| ()).unwrap_err().is_already_entered());
        assert!(
            TaskFrame::for_context(&ctx)
                .unwrap_err()
                .is_already_entered()
        );
        let seen = frame.enter(|| {
            let seen = V.get();
            drop(V.set(11));
            seen
        });
        assert_eq!(seen, 10);
        assert_eq!(V.get(), 1);
        assert!(
            ctx.try_run(|| ()).unwrap_err().is_already_entered(),
            "the object was left between two enters"
        );
        // Not from another thread either.
        let entered = thread::scope(|scope| {
            scope
                .spawn(|| ctx.try_run(|| ()).unwrap_err().is_already_entered())
                .join()
                .unwrap()
        });
        assert!(entered);
        assert_eq!(frame.enter(|| V.get()), 11);
        drop(frame);
        assert_eq!(
            ctx.try_run(|| V.get()).unwrap(),
            11,
            "the frame's set is the object's"
        );
        assert_eq!(ctx.snapshot().get(&V), Some(&11));
        assert_eq!(V.get(), 1);
        // Entered again, by a frame or a run.
        drop(TaskFrame::for_context(&ctx).unwrap());
        assert_eq!(ctx.run(|| V.get()), 11);
    });
}

#[test]
fn for_context_of_a_running_context_is_refused() {
    isolated(|| {
        let current = Context::current();
        assert!(
            TaskFrame::for_context(&current)
                .unwrap_err()
                .is_already_entered()
        );
        let ctx = Context::new();
        ctx.run(|| {
            assert!(
                TaskFrame::for_context(&ctx)
                    .unwrap_err()
                    .is_already_entered()
            );
        });
        assert!(TaskFrame::for_context(&ctx).is_ok());
    });
}

#[test]
fn for_context_released_run_ended_or_moved_leaves_the_object() {
    isolated(|| {
        drop(V.set(1));
        let log = Log::default();
        let ctx = Context::new().with_value(&V, 10);
        // release
        let mut frame = TaskFrame::for_context(&ctx).unwrap();
        frame.enter(|| drop(V.set(11)));
        frame.release();
        assert_eq!(ctx.try_run(|| V.get()).unwrap(), 11);
        assert_eq!(
            frame.enter(state),
            (None, None, None),
            "release left the object's values"
        );
        drop(frame);
        // run
        let frame = TaskFrame::for_context(&ctx).unwrap();
        assert_eq!(frame.run(|| V.get()), 11);
        let frame = TaskFrame::for_context(&ctx).unwrap();
        frame.run(|| drop(V.set(12)));
        assert_eq!(ctx.try_run(|| V.get()).unwrap(), 12);
        // end, with work whose destructor sees the object's values
        let mut frame = TaskFrame::for_context(&ctx).unwrap();
        let work = log.noisy(1);
        frame.end(|| drop(work));
        assert_eq!(
            log.take(),
            [Dropped {
                id: 1,
                v: Some(12),
                seen: None,
                set_ok: true
            }]
        );
        assert_eq!(
            ctx.try_run(|| (V.get(), SEEN.get())).unwrap(),
            (12, 1),
            "the work's destructor set in the object's frame"
        );
        // dropped on another thread
        let frame = TaskFrame::for_context(&ctx).unwrap();
        on_fresh_thread(move || {
            let mut frame = frame;
            frame.enter(|| drop(V.set(13)));
            drop(frame);
            assert_eq!(V.try_get().ok(), None);
        });
        assert_eq!(ctx.try_run(|| V.get()).unwrap(), 13);
        assert_eq!(state(), (Some(1), None, None));
    });
}

#[test]
fn into_private_leaves_the_object_and_keeps_the_bindings() {
    isolated(|| {
        drop(V.set(1));
        let ctx = Context::new().with_value(&V, 10);
        let mut frame = TaskFrame::for_context(&ctx).unwrap();
        frame.enter(|| drop(V.set(11)));
        let mut private = frame.into_private();
        assert_eq!(
            ctx.try_run(|| V.get()).unwrap(),
            11,
            "into_private kept the object"
        );
        private.enter(|| {
            assert_eq!(V.get(), 11);
            drop(V.set(12));
        });
        assert_eq!(
            ctx.try_run(|| V.get()).unwrap(),
            11,
            "a private frame wrote the object"
        );
        assert_eq!(private.enter(|| V.get()), 12);
        // The object can be entered again while the private copy lives.
        let again = TaskFrame::for_context(&ctx).unwrap();
        drop(again);
        // A private frame's into_private is itself, with what it holds.
        let mut frame = TaskFrame::capture();
        frame.enter(|| drop(V.set(5)));
        let mut same = frame.into_private();
        assert!(same.bindings_changed());
        assert_eq!(same.enter(|| V.get()), 5);
        assert_eq!(V.get(), 1);
    });
}

#[test]
fn a_forgotten_for_context_frame_keeps_the_object_entered_and_nothing_else() {
    isolated(|| {
        drop(V.set(1));
        let ctx = Context::new().with_value(&V, 10);
        let mut frame = TaskFrame::for_context(&ctx).unwrap();
        frame.enter(|| drop(V.set(11)));
        forget(frame);
        assert_eq!(
            V.get(),
            1,
            "forgetting a frame changed the thread's context"
        );
        assert!(ctx.try_run(|| ()).unwrap_err().is_already_entered());
        // Its copies are fine, with what the frame published (a set in an object that
        // others can see is published at once).
        assert_eq!(ctx.snapshot().get(&V), Some(&11));
        let copy = ctx.copy();
        assert_eq!(copy.run(|| V.get()), 11);
        copy.run(|| drop(V.set(12)));
        assert_eq!(ctx.snapshot().get(&V), Some(&11));
    });
}

#[test]
fn a_context_handle_made_inside_a_task_frame_belongs_to_it() {
    // `Context::current` inside a frame: the object counts as entered until the frame
    // ends, which for a task's frame is its drop or release.
    isolated(|| {
        drop(V.set(1));
        let mut frame = frame_with(10, None);
        let handle = frame.enter(Context::current);
        assert!(handle.try_run(|| ()).unwrap_err().is_already_entered());
        assert!(
            TaskFrame::for_context(&handle)
                .unwrap_err()
                .is_already_entered()
        );
        frame.enter(|| drop(V.set(11)));
        assert_eq!(frame.enter(|| V.get()), 11);
        assert_eq!(V.get(), 1);
        assert!(handle.try_run(|| ()).is_err());
        frame.release();
        assert_eq!(handle.try_run(|| V.get()).unwrap(), 11);
        // Or through into_private, which leaves it too.
        let mut frame = frame_with(20, None);
        let handle = frame.enter(Context::current);
        frame.enter(|| drop(V.set(21)));
        let mut private = frame.into_private();
        assert_eq!(handle.try_run(|| V.get()).unwrap(), 21);
        private.enter(|| drop(V.set(22)));
        assert_eq!(handle.try_run(|| V.get()).unwrap(), 21);
        assert_eq!(V.get(), 1);
    });
}

// ================================================== from_snapshot, empty, bindings_changed

#[test]
fn from_snapshot_never_writes_the_snapshot() {
    isolated(|| {
        drop(V.set(1));
        let snapshot = snapshot_with(10);
        let mut frame = TaskFrame::from_snapshot(&snapshot);
        let mut twin = TaskFrame::from_snapshot(&snapshot);
        frame.enter(|| {
            assert_eq!(V.get(), 10);
            drop(V.set(11));
        });
        assert_eq!(snapshot.get(&V), Some(&10));
        assert_eq!(twin.enter(|| V.get()), 10, "a frame wrote its twin");
        assert_eq!(frame.enter(|| V.get()), 11);
        drop(snapshot); // the frames hold their own references
        assert_eq!(frame.enter(|| V.get()), 11);
        assert_eq!(twin.enter(|| V.get()), 10);
        assert_eq!(V.get(), 1);
    });
}

#[test]
fn empty_frames_see_nothing_and_take_sets() {
    isolated(|| {
        drop(V.set(1));
        let mut frame = TaskFrame::empty();
        assert!(!frame.bindings_changed());
        assert_eq!(frame.enter(state), (None, None, None));
        assert!(frame.enter(|| copy_context().snapshot().is_empty()));
        assert!(!frame.bindings_changed(), "a read changed the frame");
        frame.enter(|| drop(V.set(2)));
        assert!(frame.bindings_changed());
        assert_eq!(frame.enter(|| V.get()), 2);
        assert_eq!(V.get(), 1);
        // Also inside a read-only frame (a task's own frame takes sets anywhere).
        run_read_only(|| {
            let mut frame = TaskFrame::empty();
            frame.enter(|| drop(V.set(3)));
            assert_eq!(frame.enter(|| V.get()), 3);
            assert_eq!(V.try_get().ok(), None);
        });
    });
}

#[test]
fn bindings_changed_counts_sets_and_resets_only() {
    isolated(|| {
        drop(V.set(1));
        let mut frame = TaskFrame::capture_task();
        frame.enter(|| {
            let _ = V.get();
            let _ = copy_context();
        });
        assert!(
            !frame.bindings_changed(),
            "reads and handles changed the frame"
        );
        // A set undone by its own reset before anything else changed is no change: the
        // reset puts the change marker back too (the docs say "ever changed"; tokio's
        // hooks rely on this reading: "the bindings differ from the start").
        frame.enter(|| {
            let token = V.set(2);
            V.reset(token).unwrap();
        });
        assert!(!frame.bindings_changed(), "an undone set counted");
        assert_eq!(frame.enter(|| V.get()), 1);
        // One that another change followed is a change.
        frame.enter(|| {
            let token = V.set(2);
            drop(SEEN.set(3));
            V.reset(token).unwrap();
        });
        assert!(
            frame.bindings_changed(),
            "a set, a set and a reset are no change"
        );
        assert_eq!(frame.enter(|| (V.get(), SEEN.get())), (1, 3));
        // A set inside a Context::run inside the frame is the run's context's, not the frame's.
        let mut frame = TaskFrame::capture();
        frame.enter(|| Context::new().run(|| drop(V.set(3))));
        assert!(!frame.bindings_changed());
    });
}

// ============================================================== run_in_snapshot(_each)

#[test]
fn run_in_snapshot_keeps_sets_inside() {
    isolated(|| {
        drop(V.set(1));
        let snapshot = snapshot_with(10);
        let seen = run_in_snapshot(&snapshot, || {
            let seen = V.get();
            drop(V.set(11));
            Context::new().run(|| drop(V.set(12)));
            (seen, V.get())
        });
        assert_eq!(seen, (10, 11));
        assert_eq!(V.get(), 1, "a set reached the caller");
        assert_eq!(snapshot.get(&V), Some(&10), "a set reached the snapshot");
        assert_eq!(
            run_in_snapshot(&snapshot, || V.get()),
            10,
            "a set outlived its call"
        );
        // Nested, and a panic.
        run_in_snapshot(&snapshot, || {
            drop(V.set(13));
            run_in_snapshot(&snapshot_with(20), || assert_eq!(V.get(), 20));
            assert_eq!(V.get(), 13);
        });
        let message = expect_panic(|| {
            run_in_snapshot(&snapshot, || -> () {
                drop(V.set(14));
                panic!("in snapshot")
            })
        });
        assert_eq!(message, "in snapshot");
        assert_eq!(V.get(), 1);
        assert_eq!(run_in_snapshot(&snapshot, || V.get()), 10);
    });
}

#[test]
fn run_in_snapshot_releases_what_it_set_apart_from_the_caller() {
    isolated(|| {
        drop(V.set(1));
        let log = Log::default();
        let snapshot = snapshot_with(10);
        run_in_snapshot(&snapshot, || drop(NOISY.set(log.noisy(1))));
        assert_eq!(log.take(), [alone(1)]);
        assert_eq!(state(), (Some(1), None, None));
    });
}

#[test]
fn run_in_snapshot_each_starts_every_item_fresh() {
    isolated(|| {
        drop(V.set(1));
        let snapshot = snapshot_with(10);
        let items = iterations(20) as u32;
        let mut seen = Vec::new();
        let mut item = 0;
        run_in_snapshot_each(&snapshot, || {
            seen.push((V.get(), SEEN.try_get().ok()));
            // Odd items write (ending the shared frame), even ones only read; every
            // third writes in a nested run instead, which leaves the frame as it was.
            match item % 3 {
                0 => Context::new().run(|| drop(V.set(999))),
                _ if item % 2 == 1 => {
                    drop(V.set(100 + item));
                    drop(SEEN.set(item));
                }
                _ => {}
            }
            item += 1;
            item < items
        });
        assert_eq!(item, items);
        assert_eq!(
            seen,
            vec![(10, None); items as usize],
            "an item saw the one before it"
        );
        assert_eq!(V.get(), 1);
        assert_eq!(SEEN.try_get().ok(), None);
        assert_eq!(snapshot.get(&V), Some(&10));
        // A first step that returns false runs once.
        let mut calls = 0;
        run_in_snapshot_each(&snapshot, || {
            calls += 1;
            false
        });
        assert_eq!(calls, 1);
    });
}

#[test]
fn run_in_snapshot_each_with_a_panicking_item() {
    isolated(|| {
        drop(V.set(1));
        let log = Log::default();
        let snapshot = snapshot_with(10);
        let mut item = 0;
        let message = expect_panic(|| {
            run_in_snapshot_each(&snapshot, || {
                assert_eq!(V.get(), 10);
                drop(V.set(20 + item));
                drop(NOISY.set(log.noisy(item)));
                item += 1;
                if item == 3 {
                    panic!("item 3");
                }
                true
            })
        });
        assert_eq!(message, "item 3");
        assert_eq!(item, 3);
        assert_eq!(state(), (Some(1), None, None));
        let mut dropped = log.take();
        dropped.sort_by_key(|dropped| dropped.id);
        // Each item's value is released with its frame, apart from the caller (the
        // panicking item's too, however that happens during the unwind).
        assert_eq!(dropped.iter().map(|d| d.id).collect::<Vec<_>>(), [0, 1, 2]);
        for dropped in &dropped {
            assert_ne!(dropped.v, Some(1), "{dropped:?} saw the caller");
        }
        assert_eq!(SEEN.try_get().ok(), None);
        assert_eq!(run_in_snapshot(&snapshot, || V.get()), 10);
    });
}

// ========================================================================= run_read_only

#[test]
fn run_read_only_sees_nothing_and_refuses_sets() {
    isolated(|| {
        drop(V.set(1));
        run_read_only(|| {
            assert_eq!(
                state(),
                (None, None, None),
                "a read-only frame sees the caller"
            );
            assert!(copy_context().snapshot().is_empty());
            assert!(TaskFrame::capture().enter(|| V.try_get().is_err()));
            let error = V.try_set(2).map(drop).unwrap_err();
            assert_eq!(error.var_name(), "plumbing_v");
            assert!(error.is_pool_thread(), "{error:?}");
            assert!(!error.is_access_error());
            assert_eq!(error.pool_name(), Some("rayon"));
            assert!(V.try_scoped_set(2).is_err());
            let message = expect_panic(|| V.set(3));
            assert!(message.contains("plumbing_v"), "{message}");
            assert_eq!(V.try_get().ok(), None, "a refused set bound the variable");
            // A Context::run inside works, and sets there.
            let ctx = Context::new();
            let inside = ctx.run(|| {
                drop(V.set(4));
                V.get()
            });
            assert_eq!(inside, 4);
            assert_eq!(ctx.run(|| V.get()), 4);
            assert_eq!(V.try_get().ok(), None);
            // So does a job's frame (`TaskFrame::run`).
            assert!(TaskFrame::capture().run(|| V.try_set(5).map(drop).is_ok()));
            // Nested: still read-only, and still refused after the inner one.
            run_read_only(|| assert!(V.try_set(6).is_err()));
            assert!(V.try_set(7).is_err());
        });
        assert_eq!(V.get(), 1);
        // The caller can set again.
        drop(V.set(8));
        assert_eq!(V.get(), 8);
    });
}

#[test]
fn run_read_only_with_a_panic() {
    isolated(|| {
        drop(V.set(1));
        let message = expect_panic(|| run_read_only(|| -> () { panic!("read-only") }));
        assert_eq!(message, "read-only");
        let message = expect_panic(|| run_read_only(|| V.set(2)));
        assert!(message.contains("plumbing_v"), "{message}");
        assert_eq!(V.get(), 1);
        drop(V.set(3));
        assert_eq!(V.get(), 3);
    });
}

// ========================================================================= CallerFrames

#[test]
fn caller_frames_give_a_task_frame_its_starting_bindings_back() {
    isolated(|| {
        drop(V.set(1));
        let mut frame = TaskFrame::capture_task();
        frame.enter(|| {
            let mut caller = CallerFrames::record();
            assert_ne!(
                caller,
                CallerFrames::default(),
                "a task's frame was not recorded"
            );
            assert!(format!("{caller:?}").contains("pending: true"));
            let copy = caller;
            let token = V.set(2);
            drop(SEEN.set(2));
            assert!(caller.restore(), "the bindings had changed");
            assert_eq!((V.get(), SEEN.try_get().ok()), (1, None));
            assert_eq!(caller, CallerFrames::default());
            assert!(format!("{caller:?}").contains("pending: false"));
            assert!(!caller.restore(), "a second restore did something");
            let mut copy = copy;
            assert!(!copy.restore(), "a copy restored an unchanged frame");
            // A token made before the restore still resets (to its old state).
            V.reset(token).unwrap();
            assert_eq!(V.get(), 1);
            // Again: the frame keeps its starting bindings for the next request.
            let mut caller = CallerFrames::record();
            drop(V.set(3));
            assert!(caller.restore());
            assert_eq!(V.get(), 1);
            // A request that changed nothing.
            let mut caller = CallerFrames::record();
            let _ = V.get();
            assert!(!caller.restore());
        });
        assert_eq!(frame.enter(|| (V.get(), SEEN.try_get().ok())), (1, None));
        assert_eq!(V.get(), 1);
        // Changed in one enter, restored in a later one.
        let mut caller = frame.enter(|| {
            drop(V.set(4));
            CallerFrames::record()
        });
        assert!(!restore_copy(caller), "restored outside its frame");
        assert_eq!(V.get(), 1);
        assert_eq!(frame.enter(|| V.get()), 4);
        assert!(frame.enter(|| caller.restore()));
        assert_eq!(frame.enter(|| V.get()), 1);
    });
}

#[test]
fn caller_frames_outside_any_task_frame_restore_nothing() {
    isolated(|| {
        drop(V.set(1));
        let mut caller = CallerFrames::record();
        assert_eq!(caller, CallerFrames::default());
        drop(V.set(2));
        assert!(!caller.restore());
        assert_eq!(V.get(), 2);
        // Nor in a frame that does not remember its start.
        let mut frame = TaskFrame::capture();
        frame.enter(|| {
            let mut caller = CallerFrames::record();
            assert_eq!(caller, CallerFrames::default());
            drop(V.set(3));
            assert!(!caller.restore());
            assert_eq!(V.get(), 3);
        });
        run_in_snapshot(&snapshot_with(10), || {
            let mut caller = CallerFrames::record();
            drop(V.set(11));
            assert!(!caller.restore());
            assert_eq!(V.get(), 11);
        });
        assert_eq!(V.get(), 2);
        on_fresh_thread(|| {
            let mut caller = CallerFrames::record();
            drop(V.set(4));
            assert!(!caller.restore());
            assert_eq!(V.get(), 4);
        });
    });
}

#[test]
fn caller_frames_wait_until_their_frame_is_current_again() {
    isolated(|| {
        drop(V.set(1));
        let mut frame = TaskFrame::from_snapshot(&snapshot_with(10));
        frame.enter(|| {
            let mut caller = CallerFrames::record();
            drop(V.set(11));
            // The request ends inside a run of another context: the task's frame is not
            // current, so it is restored when the run exits.
            let restored_now = Context::new().run(|| {
                let restored = caller.restore();
                assert_eq!(
                    V.try_get().ok(),
                    None,
                    "the restore changed the run's context"
                );
                restored
            });
            assert!(!restored_now);
            assert_eq!(V.get(), 10, "the waiting restore was not done");
        });
        assert_eq!(frame.enter(|| V.get()), 10);
        assert_eq!(V.get(), 1);
    });
}

#[test]
fn caller_frames_restore_the_nearest_task_frame_outside_too() {
    isolated(|| {
        drop(V.set(1));
        let mut outer = TaskFrame::capture_task();
        outer.enter(|| {
            drop(V.set(2));
            let mut inner = TaskFrame::capture_task();
            inner.enter(|| {
                let mut caller = CallerFrames::record();
                drop(V.set(3));
                assert!(caller.restore());
                assert_eq!(V.get(), 2, "the inner frame's start");
            });
            assert_eq!(
                V.get(),
                1,
                "the outer frame was not restored when it was current again"
            );
            assert_eq!(inner.enter(|| V.get()), 2);
        });
        assert_eq!(outer.enter(|| V.get()), 1);
        assert_eq!(V.get(), 1);
    });
}

#[test]
fn caller_frames_restored_elsewhere_change_nothing() {
    isolated(|| {
        drop(V.set(1));
        let mut frame = TaskFrame::capture_task();
        let caller = frame.enter(|| {
            drop(V.set(2));
            CallerFrames::record()
        });
        // In another task's frame, and on another thread.
        let mut other = TaskFrame::capture_task();
        other.enter(|| {
            drop(V.set(5));
            assert!(!restore_copy(caller));
            assert_eq!(V.get(), 5);
        });
        assert_eq!(
            other.enter(|| V.get()),
            5,
            "another task's frame was restored"
        );
        let theirs = on_fresh_thread(move || {
            let mut theirs = TaskFrame::capture_task();
            theirs.enter(|| {
                drop(V.set(7));
                assert!(!restore_copy(caller));
                V.get()
            })
        });
        assert_eq!(theirs, 7);
        assert_eq!(frame.enter(|| V.get()), 2);
        assert_eq!(V.get(), 1);
    });
}

// ================================================================================= peek

#[test]
fn peek_runs_no_lazy_default() {
    static CALLS: AtomicUsize = AtomicUsize::new(0);
    static LAZY: ContextVar<u32> = contextvars::context_var!(u32, "plumbing_lazy", lazy {
        CALLS.fetch_add(1, Ordering::SeqCst);
        42
    });
    static PLAIN: ContextVar<u32> = contextvars::context_var!(u32, "plumbing_plain", default 7);
    isolated(|| {
        assert_eq!(peek(&LAZY, |value| *value), None);
        assert_eq!(
            CALLS.load(Ordering::SeqCst),
            0,
            "peek computed the lazy default"
        );
        run_read_only(|| assert_eq!(peek(&LAZY, |value| *value), None));
        drop(LAZY.set(5));
        assert_eq!(peek(&LAZY, |value| *value), Some(5));
        assert_eq!(CALLS.load(Ordering::SeqCst), 0);
        assert_eq!(peek(&PLAIN, |value| *value), Some(7));
        assert_eq!(peek(&V, |value| *value), None);
        drop(V.set(3));
        assert_eq!(peek(&V, |value| *value), Some(3));
    });
    isolated(|| {
        assert_eq!(LAZY.get(), 42);
        assert_eq!(CALLS.load(Ordering::SeqCst), 1);
        assert_eq!(
            peek(&LAZY, |value| *value),
            Some(42),
            "a computed default is a value"
        );
        assert_eq!(CALLS.load(Ordering::SeqCst), 1);
    });
}
