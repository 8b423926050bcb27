//! A watchdog that finds stuck requests by looking at every worker thread's current
//! context from the outside (`contextvars::observe`).
//!
//! Workers take simulated requests from a queue and handle each inside a context that
//! binds its request id and route. One request gets stuck. A watchdog thread polls
//! `observe::threads()` and reports every worker that has been on the same request for
//! longer than a threshold, with the request id, without touching the workers: they
//! never block on it and do not know it is there.
//!
//! ```text
//! cargo run --example watchdog
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::{self, ThreadId};
use std::time::{Duration, Instant};

use contextvars::{Context, context_var, observe};

context_var! {
    /// The request a worker is handling.
    static REQUEST_ID: u64;
    /// Its route, for the report.
    static ROUTE: &'static str;
}

const WORKERS: usize = 4;
const REQUESTS: u64 = 60;
/// The request that gets stuck.
const STUCK: u64 = 23;
/// How long a worker may stay on one request before the watchdog reports it.
const THRESHOLD: Duration = Duration::from_millis(300);
/// How often the watchdog looks.
const POLL: Duration = Duration::from_millis(20);
/// When the watchdog gives up (the example must end in bounded time).
const GIVE_UP: Duration = Duration::from_secs(5);

struct Request {
    id: u64,
    route: &'static str,
}

/// One watchdog finding.
#[derive(Debug, Clone)]
struct Report {
    worker: String,
    request: u64,
    stuck_for: Duration,
}

/// Handles one request: a few milliseconds of "work", except for the stuck one, which
/// waits until `release` is set.
fn handle(request: &Request, release: &AtomicBool) {
    if request.id == STUCK {
        while !release.load(Ordering::Acquire) {
            thread::sleep(Duration::from_millis(5));
        }
    } else {
        thread::sleep(Duration::from_millis(2 + request.id % 8));
    }
}

fn worker(queue: Arc<Mutex<mpsc::Receiver<Request>>>, release: Arc<AtomicBool>) {
    loop {
        let next = queue.lock().unwrap().recv();
        let Ok(request) = next else {
            return; // the queue is closed
        };
        // Entering the request's context publishes it; leaving publishes the worker's
        // own (empty) context again.
        Context::new()
            .with_value(&REQUEST_ID, request.id)
            .with_value(&ROUTE, request.route)
            .run(|| handle(&request, &release));
    }
}

/// Polls every thread's published context; reports each worker seen on the same request
/// for longer than [`THRESHOLD`], once per (worker, request). Returns when `stop` is set
/// or after [`GIVE_UP`].
fn watchdog(stop: Arc<AtomicBool>, found: mpsc::Sender<Report>) -> Vec<Report> {
    let started = Instant::now();
    // Per worker thread: the request it was last seen on, since when, and whether it
    // was reported.
    let mut seen: HashMap<ThreadId, (u64, Instant, bool)> = HashMap::new();
    let mut reports = Vec::new();
    while !stop.load(Ordering::Acquire) && started.elapsed() < GIVE_UP {
        let now = Instant::now();
        for thread in observe::threads() {
            let Some(name) = thread.name().filter(|name| name.starts_with("worker-")) else {
                continue;
            };
            let snapshot = thread.snapshot();
            let Some(&request) = snapshot.get(&REQUEST_ID) else {
                seen.remove(&thread.id()); // idle
                continue;
            };
            let entry = seen.entry(thread.id()).or_insert((request, now, false));
            if entry.0 != request {
                *entry = (request, now, false); // moved on to another request
            }
            let stuck_for = now - entry.1;
            if stuck_for > THRESHOLD && !entry.2 {
                entry.2 = true;
                println!(
                    "watchdog: {name} has been on request {request} ({}) for {stuck_for:.0?}; context: {snapshot:?}",
                    snapshot.get(&ROUTE).copied().unwrap_or("?"),
                );
                let report = Report {
                    worker: name.to_owned(),
                    request,
                    stuck_for,
                };
                reports.push(report.clone());
                let _ = found.send(report);
            }
        }
        thread::sleep(POLL);
    }
    reports
}

fn main() {
    let started = Instant::now();
    // Publication is off by default; switch it on before the workers start.
    observe::enable();

    let (requests, queue) = mpsc::channel();
    let queue = Arc::new(Mutex::new(queue));
    let release = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..WORKERS)
        .map(|i| {
            let (queue, release) = (queue.clone(), release.clone());
            thread::Builder::new()
                .name(format!("worker-{i}"))
                .spawn(move || worker(queue, release))
                .expect("spawn a worker")
        })
        .collect();

    let stop = Arc::new(AtomicBool::new(false));
    let (found_tx, found) = mpsc::channel();
    let watchdog = {
        let stop = stop.clone();
        thread::Builder::new()
            .name("watchdog".into())
            .spawn(move || watchdog(stop, found_tx))
            .expect("spawn the watchdog")
    };

    let routes = ["/search", "/checkout", "/profile", "/cart"];
    for id in 1..=REQUESTS {
        let route = routes[id as usize % routes.len()];
        requests.send(Request { id, route }).unwrap();
    }

    // Wait for the watchdog to find the stuck request, then unstick it and shut down.
    let report = found
        .recv_timeout(GIVE_UP)
        .expect("the watchdog reports the stuck request within the time limit");
    println!(
        "main: {} was reported stuck on request {} after {:.0?}; releasing it",
        report.worker, report.request, report.stuck_for
    );
    release.store(true, Ordering::Release);
    drop(requests);
    for worker in workers {
        worker.join().expect("worker panicked");
    }
    stop.store(true, Ordering::Release);
    let reports = watchdog.join().expect("watchdog panicked");
    observe::disable();

    assert!(
        reports.iter().any(|r| r.request == STUCK),
        "the stuck request was detected: {reports:?}"
    );
    assert!(reports.iter().all(|r| r.stuck_for > THRESHOLD));
    println!(
        "done in {:.0?}: {} request(s) reported stuck: {:?}",
        started.elapsed(),
        reports.len(),
        reports.iter().map(|r| r.request).collect::<Vec<_>>()
    );
}
