//! A worked example of model checking code that reads context variables: a per-tenant
//! quota cache shared by worker threads, checked with [loom](https://docs.rs/loom).
//!
//! Each request runs in a context where [`TENANT`] is bound. The first request of a
//! tenant computes the tenant's quota (an expensive lookup) and publishes it in the
//! tenant's slot; later requests of that tenant read the published value. The
//! publication is a hand-written protocol (a state byte and a plain cell), exactly the
//! kind of code loom is for: `tests/model.rs` explores every interleaving of two
//! requests of one tenant, handed to worker threads in a copy of the dispatcher's
//! context, and checks that each sees its own tenant's quota.
//!
//! Run the models with:
//!
//! ```text
//! RUSTFLAGS="--cfg loom" cargo test -p loom-example --release
//! ```
//!
//! Nothing else is needed: under `--cfg loom`, `contextvars` switches its own
//! synchronisation to loom's types and starts loom threads from
//! [`contextvars::thread::spawn`], so the model sees the context hand-off too.
//!
//! The seeded bug: [`QuotaCache::with_publish_ordering`] with `Relaxed` publishes the
//! quota without a release, and the ignored model `seeded_relaxed_publish_is_caught`
//! fails with loom's causality-violation report (see `docs::model_checking` in
//! `contextvars`).

use contextvars::ContextVar;

#[cfg(loom)]
use loom::sync::atomic::{AtomicU8, Ordering};
#[cfg(not(loom))]
use std::sync::atomic::{AtomicU8, Ordering};

/// The tenant of the request being served.
pub static TENANT: ContextVar<&'static str> = contextvars::context_var!(&'static str, "tenant");

/// A slot's states: nobody has started the lookup, one request is writing the quota, the
/// quota is published.
const EMPTY: u8 = 0;
const WRITING: u8 = 1;
const READY: u8 = 2;

/// One tenant's cached quota.
struct Slot {
    tenant: &'static str,
    state: AtomicU8,
    quota: Cell,
}

/// Per-tenant quotas, computed once per tenant by the first request that needs one and
/// shared by every worker thread.
pub struct QuotaCache {
    slots: Box<[Slot]>,
    lookup: fn(&str) -> u64,
    /// The ordering of the store that publishes a quota: `Release`, except in the seeded
    /// bug.
    publish: Ordering,
}

// SAFETY: a slot's quota is written only by the one request whose compare-and-swap moved
// the slot from EMPTY to WRITING, before it stores READY with `publish`, which is `Release`
// outside loom models (`with_publish_ordering`, the only way to weaken it, exists only
// under `--cfg loom`, where the cell is loom's and a race is reported, not run); it is read
// only by requests that loaded READY with `Acquire`, which pairs with that store. So the
// write happens before every read, and no read overlaps it.
unsafe impl Sync for QuotaCache {}

impl QuotaCache {
    /// A cache for `tenants`, whose quotas `lookup` computes.
    pub fn new(tenants: &[&'static str], lookup: fn(&str) -> u64) -> Self {
        Self::build(tenants, lookup, Ordering::Release)
    }

    /// The same cache, publishing each quota with `publish` instead of `Release`: the
    /// seeded bug of the example (with `Relaxed`, a reader that sees READY is not
    /// guaranteed to see the quota, and loom reports it). Only under `--cfg loom`, where
    /// the quota's cell is loom's, which checks every access instead of racing: on real
    /// threads a weaker ordering would be a data race, which safe code must not reach.
    #[cfg(loom)]
    pub fn with_publish_ordering(
        tenants: &[&'static str],
        lookup: fn(&str) -> u64,
        publish: Ordering,
    ) -> Self {
        Self::build(tenants, lookup, publish)
    }

    fn build(tenants: &[&'static str], lookup: fn(&str) -> u64, publish: Ordering) -> Self {
        let slots = tenants
            .iter()
            .map(|&tenant| Slot {
                tenant,
                state: AtomicU8::new(EMPTY),
                quota: Cell::new(),
            })
            .collect();
        Self {
            slots,
            lookup,
            publish,
        }
    }

    /// The quota of the current request's tenant: the [`TENANT`] bound in the current
    /// context. `None` if no tenant is bound or the cache does not know it.
    pub fn quota(&self) -> Option<u64> {
        let tenant = TENANT.try_get().ok()?;
        let slot = self.slots.iter().find(|slot| slot.tenant == tenant)?;
        // The failure ordering, Acquire, pairs with the Release store of READY below, made
        // by the request that wrote the quota (the success ordering pairs with nothing:
        // the winner only writes).
        match slot
            .state
            .compare_exchange(EMPTY, WRITING, Ordering::Acquire, Ordering::Acquire)
        {
            Ok(_) => {
                let quota = (self.lookup)(tenant);
                // SAFETY: this request won the slot (EMPTY to WRITING): no other request
                // reads or writes the quota until READY is published below.
                unsafe { slot.quota.write(quota) };
                slot.state.store(READY, self.publish);
                Some(quota)
            }
            // SAFETY: READY was loaded with Acquire, so the quota's write happened before
            // this read (with a `Release` publish), and nothing writes it again.
            Err(READY) => Some(unsafe { slot.quota.read() }),
            // Another request is computing it: compute it too, without caching.
            Err(_) => Some((self.lookup)(tenant)),
        }
    }
}

/// The quota's storage: loom's `UnsafeCell` under `--cfg loom` (loom checks every access
/// against the happens-before order it explores), std's otherwise.
struct Cell {
    #[cfg(loom)]
    value: loom::cell::UnsafeCell<u64>,
    #[cfg(not(loom))]
    value: std::cell::UnsafeCell<u64>,
}

impl Cell {
    fn new() -> Self {
        Self {
            value: Default::default(),
        }
    }

    /// # Safety
    ///
    /// No other access to the cell may overlap this one.
    unsafe fn write(&self, quota: u64) {
        #[cfg(loom)]
        // SAFETY: by the caller's contract.
        self.value.with_mut(|cell| unsafe { *cell = quota });
        #[cfg(not(loom))]
        // SAFETY: by the caller's contract.
        unsafe {
            *self.value.get() = quota;
        }
    }

    /// # Safety
    ///
    /// The write of the value must happen before this read, and no write may overlap it.
    unsafe fn read(&self) -> u64 {
        #[cfg(loom)]
        // SAFETY: by the caller's contract.
        return self.value.with(|cell| unsafe { *cell });
        #[cfg(not(loom))]
        // SAFETY: by the caller's contract.
        unsafe {
            *self.value.get()
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn lookup(tenant: &str) -> u64 {
        match tenant {
            "alpha" => 10,
            "beta" => 20,
            _ => 0,
        }
    }

    #[test]
    fn each_request_sees_its_tenants_quota_on_real_threads() {
        let cache = std::sync::Arc::new(QuotaCache::new(&["alpha", "beta"], lookup));
        let workers: Vec<_> = ["alpha", "beta", "alpha", "beta"]
            .into_iter()
            .map(|tenant| {
                let cache = cache.clone();
                TENANT.scope(tenant, || contextvars::thread::spawn(move || cache.quota()))
            })
            .collect();
        let seen: Vec<_> = workers.into_iter().map(|w| w.join().unwrap()).collect();
        assert_eq!(seen, [Some(10), Some(20), Some(10), Some(20)]);
        assert_eq!(cache.quota(), None); // no tenant bound here
    }
}
