//! Cross-thread observation (`contextvars::observe`).
//!
//! A test binary of its own, not a module of `tests/it`: publication is a process-wide
//! switch, and while it is on, published snapshots (and readers' copies of them) hold
//! references to values, which moves where and when some values are dropped. The drop
//! and teardown tests in `tests/it` pin down exactly that, so they must never run while
//! these tests have publication on. Within this binary the tests take [`serial`] so that
//! each one owns the switch.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex, MutexGuard};
use std::thread::{self, ThreadId};
use std::time::{Duration, Instant};

use contextvars::future::ContextFutureExt;
use contextvars::observe::{self, ThreadInfo};
use contextvars::{Context, ContextVar, context_var};

context_var! {
    static REQUEST: u64;
    static STAGE: &'static str;
    static LEFT: u64;
    static RIGHT: u64;
}

/// Loop counts: small under miri.
const fn iterations(normal: usize) -> usize {
    if cfg!(miri) { 10 } else { normal }
}

/// Serialises the tests of this binary: each owns the publication switch while it runs,
/// and starts and ends with publication off.
fn serial() -> Serial {
    static LOCK: Mutex<()> = Mutex::new(());
    let guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    observe::disable();
    Serial(guard)
}

struct Serial(#[allow(dead_code)] MutexGuard<'static, ()>);

impl Drop for Serial {
    fn drop(&mut self) {
        observe::disable();
    }
}

fn find(id: ThreadId) -> Option<ThreadInfo> {
    observe::threads().into_iter().find(|t| t.id() == id)
}

/// A value that counts its drops.
struct Tracked(Arc<AtomicUsize>);

impl Drop for Tracked {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

static TRACKED: ContextVar<Tracked> = contextvars::context_var!(Tracked, "tracked");

/// A worker thread driven step by step from the test: each `step` runs a closure on the
/// worker and waits until it is done; the worker's context persists between steps.
struct Worker {
    id: ThreadId,
    jobs: std::sync::mpsc::Sender<Box<dyn FnOnce() + Send>>,
    done: std::sync::mpsc::Receiver<()>,
    handle: Option<thread::JoinHandle<()>>,
}

impl Worker {
    fn spawn(name: &str) -> Self {
        let (jobs, job_rx) = std::sync::mpsc::channel::<Box<dyn FnOnce() + Send>>();
        let (done_tx, done) = std::sync::mpsc::channel();
        let handle = thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                // Tokens are `!Send`, so the steps keep them here.
                for job in job_rx {
                    job();
                    done_tx.send(()).unwrap();
                }
            })
            .unwrap();
        let id = handle.thread().id();
        Self {
            id,
            jobs,
            done,
            handle: Some(handle),
        }
    }

    fn step(&self, f: impl FnOnce() + Send + 'static) {
        self.jobs.send(Box::new(f)).unwrap();
        self.done.recv().unwrap();
    }

    fn join(mut self) -> ThreadId {
        let handle = self.handle.take().unwrap();
        drop(self.jobs);
        handle.join().unwrap();
        self.id
    }
}

thread_local! {
    /// Tokens that steps of a [`Worker`] set and later reset.
    static TOKENS: std::cell::RefCell<Vec<contextvars::Token<'static, u64>>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

fn set_request(value: u64) {
    let token = REQUEST.set(value);
    TOKENS.with(|tokens| tokens.borrow_mut().push(token));
}

fn reset_request() {
    let token = TOKENS.with(|tokens| tokens.borrow_mut().pop()).unwrap();
    REQUEST.reset(token).unwrap();
}

#[test]
fn off_by_default_and_switchable() {
    let _serial = serial();
    assert!(!observe::is_enabled());
    assert!(observe::threads().is_empty());

    observe::enable();
    assert!(observe::is_enabled());
    // `enable` published the calling thread, in whatever context it runs.
    let me = find(thread::current().id()).expect("enable publishes the caller");
    assert_eq!(me.name(), thread::current().name());

    observe::disable();
    assert!(!observe::is_enabled());
    assert!(observe::threads().is_empty(), "disable empties every slot");
    // Switching on again works, and is idempotent.
    observe::enable();
    observe::enable();
    assert!(find(thread::current().id()).is_some());
}

#[test]
fn publication_off_publishes_nothing() {
    let _serial = serial();
    let worker = Worker::spawn("observe-off");
    worker.step(|| set_request(1));
    worker.step(|| Context::new().run(|| drop(STAGE.set("inside"))));
    assert!(observe::threads().is_empty());
    assert!(find(worker.id).is_none());

    // Switched on, a thread appears only once it changes context.
    observe::enable();
    assert!(
        find(worker.id).is_none(),
        "no change since publication was switched on"
    );
    worker.step(|| set_request(2));
    let info = find(worker.id).expect("published by the set");
    assert_eq!(info.snapshot().get(&REQUEST), Some(&2));

    // Off again: the worker's changes are not published, its slot stays empty.
    observe::disable();
    worker.step(|| set_request(3));
    assert!(find(worker.id).is_none());
    worker.join();
}

#[test]
fn threads_appear_and_disappear() {
    let _serial = serial();
    observe::enable();
    let workers: Vec<Worker> = (0..3)
        .map(|i| Worker::spawn(&format!("observe-worker-{i}")))
        .collect();
    for (i, worker) in workers.iter().enumerate() {
        worker.step(move || set_request(100 + i as u64));
    }
    let seen = observe::threads();
    for (i, worker) in workers.iter().enumerate() {
        let info = seen
            .iter()
            .find(|t| t.id() == worker.id)
            .expect("every worker is listed");
        assert_eq!(info.name(), Some(format!("observe-worker-{i}").as_str()));
        assert_eq!(info.snapshot().get(&REQUEST), Some(&(100 + i as u64)));
    }

    let mut workers = workers.into_iter();
    let gone = workers.next().unwrap().join();
    // A joined thread has run its thread-local destructors: it is no longer listed.
    assert!(find(gone).is_none(), "an exited thread is removed");
    for worker in workers {
        assert!(find(worker.id).is_some(), "the others are still listed");
        let id = worker.join();
        assert!(find(id).is_none());
    }
}

#[test]
fn values_follow_sets_resets_and_context_switches() {
    let _serial = serial();
    observe::enable();
    let worker = Worker::spawn("observe-values");
    let id = worker.id;
    let snapshot = move || find(id).expect("listed").into_snapshot();

    worker.step(|| set_request(7));
    assert_eq!(format!("{:?}", snapshot()), "{REQUEST: 7}");

    // Inside `Context::run`: the entered context is published, and the caller's again
    // when `run` returns.
    let inside = Arc::new(Barrier::new(2));
    let leave = Arc::new(Barrier::new(2));
    let (inside2, leave2) = (inside.clone(), leave.clone());
    worker
        .jobs
        .send(Box::new(move || {
            let ctx = Context::new().with_value(&STAGE, "parsing");
            ctx.run(|| {
                inside2.wait();
                leave2.wait();
            });
        }))
        .unwrap();
    inside.wait();
    let during = snapshot();
    assert_eq!(during.get(&STAGE), Some(&"parsing"));
    assert_eq!(during.get(&REQUEST), None);
    leave.wait();
    worker.done.recv().unwrap();
    assert_eq!(format!("{:?}", snapshot()), "{REQUEST: 7}");

    // A set inside a `run` is published too.
    let inside = Arc::new(Barrier::new(2));
    let leave = Arc::new(Barrier::new(2));
    let (inside2, leave2) = (inside.clone(), leave.clone());
    worker
        .jobs
        .send(Box::new(move || {
            Context::new().run(|| {
                let _token = STAGE.set("writing");
                inside2.wait();
                leave2.wait();
            });
        }))
        .unwrap();
    inside.wait();
    assert_eq!(snapshot().get(&STAGE), Some(&"writing"));
    leave.wait();
    worker.done.recv().unwrap();

    // A reset back to the empty context: still listed, with an empty snapshot.
    worker.step(reset_request);
    let info = find(id).expect("a thread in an empty context is still listed");
    assert!(info.snapshot().is_empty());
    assert!(format!("{info:?}").contains("observe-values"));
    worker.join();
}

#[test]
fn futures_publish_their_context_while_polled() {
    let _serial = serial();
    observe::enable();
    let me = thread::current().id();
    let ctx = Context::new().with_value(&REQUEST, 9);
    let future = async move {
        let before = find(me).map(|t| t.snapshot().get(&REQUEST).copied());
        let _token = STAGE.set("polled");
        let after = find(me).map(|t| t.snapshot().get(&STAGE).copied());
        (before, after)
    }
    .in_context(&ctx);
    let (before, after) = block_on(future);
    assert_eq!(
        before,
        Some(Some(9)),
        "the task's context is published while polled"
    );
    assert_eq!(after, Some(Some("polled")));
    // After the poll the thread is back in its own context.
    assert_eq!(find(me).unwrap().snapshot().get(&STAGE), None);
}

/// A minimal executor for a future that completes on its first poll.
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(output) => output,
        std::task::Poll::Pending => panic!("the test future completes at once"),
    }
}

#[test]
fn disable_releases_published_values() {
    let _serial = serial();
    observe::enable();
    let drops = Arc::new(AtomicUsize::new(0));
    let worker = Worker::spawn("observe-release");
    let counter = drops.clone();
    worker.step(move || {
        let token = TRACKED.set(Tracked(counter));
        // Keep the token for the next step.
        TRACKED_TOKEN.with(|slot| *slot.borrow_mut() = Some(token));
    });
    assert!(find(worker.id).unwrap().snapshot().contains(&TRACKED));

    // With publication off the reset below is not published, so only `disable` can let
    // go of the snapshot that still holds the value.
    observe::disable();
    worker.step(|| {
        let token = TRACKED_TOKEN.with(|slot| slot.borrow_mut().take()).unwrap();
        TRACKED.reset(token).unwrap();
    });
    assert_eq!(
        drops.load(Ordering::SeqCst),
        1,
        "nothing kept the value alive"
    );
    worker.join();
}

thread_local! {
    static TRACKED_TOKEN: std::cell::RefCell<Option<contextvars::Token<'static, Tracked>>> =
        const { std::cell::RefCell::new(None) };
}

#[test]
fn exiting_threads_release_their_values() {
    let _serial = serial();
    observe::enable();
    let drops = Arc::new(AtomicUsize::new(0));
    for _ in 0..iterations(50) {
        let counter = drops.clone();
        thread::spawn(move || drop(TRACKED.set(Tracked(counter))))
            .join()
            .unwrap();
    }
    assert_eq!(drops.load(Ordering::SeqCst), iterations(50));
}

#[test]
fn a_reader_keeps_its_snapshot_after_the_thread_exits() {
    let _serial = serial();
    observe::enable();
    let drops = Arc::new(AtomicUsize::new(0));
    let worker = Worker::spawn("observe-outlived");
    let counter = drops.clone();
    worker.step(move || drop(TRACKED.set(Tracked(counter))));
    let info = find(worker.id).unwrap();
    worker.join();
    assert_eq!(
        drops.load(Ordering::SeqCst),
        0,
        "the reader's snapshot holds it"
    );
    assert!(info.snapshot().contains(&TRACKED));
    assert_eq!(format!("{:?}", info.snapshot().keys().count()), "1");
    drop(info);
    assert_eq!(drops.load(Ordering::SeqCst), 1);
}

/// Writers switch between contexts that bind `LEFT` and `RIGHT` to the same number, set
/// both in their own context, and exit and respawn; readers check every snapshot they see
/// is whole (never one variable from one publication and one from another).
#[test]
fn concurrent_readers_while_threads_set_and_exit() {
    let _serial = serial();
    observe::enable();
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs(if cfg!(miri) { 1 } else { 3 });
    let rounds = iterations(200);

    let writers: Vec<_> = (0..2)
        .map(|w| {
            let stop = stop.clone();
            thread::spawn(move || {
                let mut spawned = 0;
                for round in 0..rounds {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    // A short-lived thread per round: registers, publishes, exits.
                    thread::Builder::new()
                        .name(format!("churn-{w}"))
                        .spawn(move || {
                            for i in 0..20u64 {
                                let n = (round as u64) * 100 + i;
                                let ctx = Context::new().with_value(&LEFT, n).with_value(&RIGHT, n);
                                ctx.run(|| {
                                    let l = LEFT.set(n + 1);
                                    let r = RIGHT.set(n + 1);
                                    RIGHT.reset(r).unwrap();
                                    LEFT.reset(l).unwrap();
                                });
                            }
                        })
                        .unwrap()
                        .join()
                        .unwrap();
                    spawned += 1;
                }
                spawned
            })
        })
        .collect();

    let readers: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            thread::spawn(move || {
                let mut checked = 0usize;
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    for info in observe::threads() {
                        let snapshot = info.snapshot();
                        let (l, r) = (snapshot.get(&LEFT), snapshot.get(&RIGHT));
                        match (l, r) {
                            (Some(l), Some(r)) => {
                                // Between the two sets (l = n + 1, r = n) is a real state;
                                // anything else is torn.
                                assert!(l == r || *l == *r + 1, "torn: {snapshot:?}");
                                checked += 1;
                            }
                            (None, None) => {}
                            _ => panic!("torn: {snapshot:?}"),
                        }
                    }
                }
                checked
            })
        })
        .collect();

    let spawned: usize = writers.into_iter().map(|w| w.join().unwrap()).sum();
    stop.store(true, Ordering::Relaxed);
    let checked: usize = readers.into_iter().map(|r| r.join().unwrap()).sum();
    assert!(spawned > 0);
    // Every churn thread has exited: none is listed any more.
    assert!(
        observe::threads()
            .iter()
            .all(|t| !t.name().is_some_and(|n| n.starts_with("churn-"))),
        "exited threads are not listed"
    );
    println!("{spawned} short-lived threads, {checked} snapshots checked");
}

/// A scope (`ContextVar::scope`) keeps its binding on its stack while publication is off;
/// if publication comes on while it runs, the scope's end is published like any change,
/// and a scope started while it is on is published at once.
#[test]
fn scopes_publish_their_end_when_publication_came_on_meanwhile() {
    let _serial = serial();
    let inside = Arc::new(Barrier::new(2));
    let switched = Arc::new(Barrier::new(2));
    let ended = Arc::new(Barrier::new(2));
    let scoper = {
        let (inside, switched, ended) = (inside.clone(), switched.clone(), ended.clone());
        thread::spawn(move || {
            let _request = REQUEST.set(1);
            REQUEST.scope(2, || {
                inside.wait();
                switched.wait();
            });
            ended.wait(); // A: the first scope has ended
            ended.wait(); // B: checked
            // Publication is on now: a scope sets at once, and is seen inside.
            REQUEST.scope(3, || {
                ended.wait(); // C: inside
                ended.wait(); // D: checked
            });
        })
    };
    let id = scoper.thread().id();
    inside.wait();
    observe::enable();
    switched.wait();
    ended.wait(); // A
    let seen = find(id).expect("the scope's end published the thread");
    assert_eq!(seen.snapshot().get(&REQUEST), Some(&1));
    ended.wait(); // B
    ended.wait(); // C
    assert_eq!(find(id).unwrap().snapshot().get(&REQUEST), Some(&3));
    ended.wait(); // D
    scoper.join().unwrap();
}
