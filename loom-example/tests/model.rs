//! The quota cache's loom models. Run with `RUSTFLAGS="--cfg loom" cargo test -p
//! loom-example --release`; without `--cfg loom` this file is empty.

#![cfg(loom)]

use contextvars::{ContextVar, copy_context, thread};
use loom::sync::Arc;
use loom::sync::atomic::Ordering;
use loom_example::{QuotaCache, TENANT};

fn lookup(tenant: &str) -> u64 {
    match tenant {
        "alpha" => 10,
        "beta" => 20,
        _ => 0,
    }
}

/// Two requests of one tenant, each handed to a worker thread in a copy of the
/// dispatcher's context (where the request's tenant is bound): whichever computes the
/// quota, both see it, in every interleaving loom explores.
fn two_requests_of_one_tenant(cache: QuotaCache) {
    let cache = Arc::new(cache);
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let cache = cache.clone();
            TENANT.scope("alpha", || thread::spawn(move || cache.quota()))
        })
        .collect();
    for worker in workers {
        assert_eq!(worker.join().unwrap(), Some(10));
    }
}

#[test]
fn each_request_sees_its_tenants_quota() {
    loom::model(|| two_requests_of_one_tenant(QuotaCache::new(&["alpha"], lookup)));
}

/// Context follows loom threads both ways the crate offers: `thread::spawn` (a copy of
/// the spawner's context) and `Context::run` of a context captured by the dispatcher.
/// A worker's own set stays in its copy.
#[test]
fn context_follows_the_hand_off() {
    static REQUEST: ContextVar<u32> = contextvars::context_var!(u32, "request");
    loom::model(|| {
        let cache = Arc::new(QuotaCache::new(&["alpha", "beta"], lookup));
        let copied = {
            let cache = cache.clone();
            TENANT.scope("alpha", || {
                thread::spawn(move || {
                    drop(REQUEST.set(1));
                    (cache.quota(), REQUEST.get())
                })
            })
        };
        let captured = TENANT.scope("beta", copy_context);
        let run = {
            let cache = cache.clone();
            loom::thread::spawn(move || captured.run(|| cache.quota()))
        };
        assert_eq!(copied.join().unwrap(), (Some(10), 1));
        assert_eq!(run.join().unwrap(), Some(20));
        // Nothing leaked into the dispatcher's own context.
        assert_eq!(cache.quota(), None);
        assert!(!REQUEST.is_set());
    });
}

/// The seeded bug: the quota is published with `Relaxed`, so the request that reads
/// READY is not synchronised with the one that wrote the quota. loom finds the
/// interleaving and fails with a causality violation on the quota's cell. Ignored: CI
/// runs it and requires that it fail.
#[test]
#[ignore = "the seeded bug: must fail under loom"]
fn seeded_relaxed_publish_is_caught() {
    loom::model(|| {
        two_requests_of_one_tenant(QuotaCache::with_publish_ordering(
            &["alpha"],
            lookup,
            Ordering::Relaxed,
        ))
    });
}
