//! The context shapes the benches measure, shared by `ops` and `peers` with `#[path]`.
//!
//! "Shape n" is a context binding `n` *other* variables and then the target, so the
//! target has the highest id (the worst case for a lookup). Variables are created at
//! runtime and leaked (there cannot be 100,000 `static`s), and ids are assigned in a
//! fixed order at start-up, so every run measures the same shapes.
use std::sync::OnceLock;

use contextvars::{Context, ContextVar};

pub(crate) type Var = &'static ContextVar<u64>;

/// `n` leaked variables whose ids are assigned now, in order.
pub(crate) fn make_vars(n: usize) -> Vec<Var> {
    (0..n)
        .map(|_| {
            let var: Var = Box::leak(Box::new(contextvars::context_var!(u64, "v")));
            var.id(); // assigns the id
            var
        })
        .collect()
}

/// The shared pool for the small shapes (up to 1,024 others): shape `n` binds
/// `pool[..n]` and reads or sets `pool[n]`.
pub(crate) fn pool() -> &'static [Var] {
    static POOL: OnceLock<Vec<Var>> = OnceLock::new();
    POOL.get_or_init(|| make_vars(1024 + 1))
}

/// A context binding `others` and then `target` (bound to 42, the last one set).
pub(crate) fn context_with(others: &[Var], target: Var) -> Context {
    let mut ctx = Context::new();
    for (i, var) in others.iter().enumerate() {
        ctx = ctx.with_value(var, i as u64);
    }
    ctx.with_value(target, 42)
}

/// Shape `n` from the pool, as a context object: `n` others, then the target.
pub(crate) fn shape(n: usize) -> (Context, Var) {
    let pool = pool();
    (context_with(&pool[..n], pool[n]), pool[n])
}

/// Runs `f` in this thread's own context holding shape `n`, set variable by variable: the
/// kind of frame a thread, a task (`in_copied_context`) or a rayon job runs in, which no
/// context object makes observable from other threads, so sets change the snapshot in
/// place. Resets everything afterwards.
pub(crate) fn in_private_shape<R>(n: usize, f: impl FnOnce(Var) -> R) -> R {
    let pool = pool();
    let tokens: Vec<_> = (0..=n)
        .map(|i| pool[i].set(if i == n { 42 } else { i as u64 }))
        .collect();
    let result = f(pool[n]);
    for token in tokens.into_iter().rev() {
        if token.var().reset(token).is_err() {
            unreachable!("reset in the context of the set");
        }
    }
    result
}
