//! loom models of contextvars live in `tests/`; this library holds their shared helpers.
//!
//! Everything here exists only under `--cfg loom` (the cfg that also switches
//! `contextvars`' sync shim to loom's types); without it the crate is empty.

#[cfg(loom)]
pub use imp::*;

#[cfg(loom)]
mod imp {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// [`loom::model`], which also prints how many executions loom explored (shown by
    /// `cargo test -- --show-output`; `.ci/run loom` passes it). A model that explores
    /// only a handful of executions is a sign it no longer races anything.
    ///
    /// Honours loom's environment (`LOOM_MAX_PREEMPTIONS`, `LOOM_MAX_BRANCHES`,
    /// `LOOM_LOG`, checkpoints).
    pub fn model<F>(name: &str, f: F)
    where
        F: Fn() + Sync + Send + 'static,
    {
        // A std atomic: the counter lives outside the model and must not be modelled.
        let executions = Arc::new(AtomicUsize::new(0));
        let counter = executions.clone();
        loom::model(move || {
            counter.fetch_add(1, Ordering::Relaxed);
            f();
        });
        let preemptions = std::env::var("LOOM_MAX_PREEMPTIONS");
        println!(
            "loom: {name}: explored {} executions (LOOM_MAX_PREEMPTIONS={})",
            executions.load(Ordering::Relaxed),
            preemptions.as_deref().unwrap_or("unbounded"),
        );
    }
}
