//! Panics inside the crate's scopes: `Context::run`, `ContextVar::scope`, a live
//! `scoped_set` guard, and a value's `Drop`. Each must leave the thread's state and the
//! context objects consistent.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::thread;

use contextvars::{Context, ContextVar, copy_context};

use crate::{expect_panic, isolated, iterations};

#[test]
fn panic_in_run_restores_outer_context_and_keeps_sets() {
    static V: ContextVar<i32> = contextvars::context_var!(i32, "v");
    static W: ContextVar<i32> = contextvars::context_var!(i32, "w");
    isolated(|| {
        let _outer = V.set(1);
        let ctx = Context::new();
        let message = expect_panic(|| {
            ctx.run(|| {
                drop(V.set(2));
                drop(W.set(3));
                panic!("boom");
            })
        });
        assert_eq!(message, "boom");
        // The outer context is back, untouched.
        assert_eq!(V.get(), 1);
        assert!(!W.is_set());
        assert_eq!(copy_context().snapshot().len(), 1);
        // The context kept the sets made before the panic (as CPython does) ...
        assert_eq!(ctx.snapshot().get(&V).cloned(), Some(2));
        assert_eq!(ctx.snapshot().get(&W).cloned(), Some(3));
        // ... and can be entered again.
        assert_eq!(ctx.try_run(|| (V.get(), W.get())), Ok((2, 3)));
    });
}

#[test]
fn panic_in_nested_runs_unwinds_every_frame() {
    static V: ContextVar<i32> = contextvars::context_var!(i32, "v", default 0);
    let (a, b, c) = (Context::new(), Context::new(), Context::new());
    thread::spawn(move || {
        let message = expect_panic(|| {
            a.run(|| {
                drop(V.set(1));
                b.run(|| {
                    drop(V.set(2));
                    c.run(|| {
                        drop(V.set(3));
                        panic!("deep");
                    })
                })
            })
        });
        assert_eq!(message, "deep");
        assert_eq!(V.get(), 0);
        assert_eq!(
            (
                a.snapshot().get(&V).cloned(),
                b.snapshot().get(&V).cloned(),
                c.snapshot().get(&V).cloned()
            ),
            (Some(1), Some(2), Some(3))
        );
        for ctx in [&a, &b, &c] {
            assert!(ctx.try_run(|| ()).is_ok(), "left entered after the panic");
        }
    })
    .join()
    .unwrap();
}

#[test]
fn panic_in_run_with_token_reset_after_reentering() {
    // A token made before the panic is still valid in the same context (CPython's
    // `ctx.run(var.reset, tok)` after a failed run).
    static V: ContextVar<i32> = contextvars::context_var!(i32, "v");
    let ctx = Context::new();
    let mut token = None;
    let _ = catch_unwind(AssertUnwindSafe(|| {
        ctx.run(|| {
            token = Some(V.set(1));
            panic!("after set");
        })
    }));
    let token = token.expect("the set happened");
    assert_eq!(ctx.snapshot().get(&V).cloned(), Some(1));
    ctx.run(|| V.reset(token)).unwrap();
    assert!(!ctx.snapshot().contains(&V));
}

#[test]
fn panic_in_scope_restores_value() {
    static V: ContextVar<&'static str> =
        contextvars::context_var!(&'static str, "v", default "default");
    isolated(|| {
        let _outer = V.set("outer");
        let message = expect_panic(|| V.scope("inner", || -> () { panic!("in scope") }));
        assert_eq!(message, "in scope");
        assert_eq!(V.get(), "outer");

        // Nested scopes, panic in the innermost.
        let _ = expect_panic(|| {
            V.scope("a", || {
                V.scope("b", || {
                    assert_eq!(V.get(), "b");
                    panic!("nested")
                })
            })
        });
        assert_eq!(V.get(), "outer");
        assert_eq!(copy_context().snapshot().len(), 1);
    });
}

#[test]
fn panic_while_scoped_set_guard_alive_restores_value() {
    static V: ContextVar<i32> = contextvars::context_var!(i32, "v");
    isolated(|| {
        let message = expect_panic(|| {
            let _guard = V.scoped_set(5);
            drop(V.set(6)); // an extra set inside the block is undone too
            assert_eq!(V.get(), 6);
            panic!("guarded");
        });
        assert_eq!(message, "guarded");
        assert!(!V.is_set());
    });
}

#[test]
fn scoped_set_guard_moved_into_another_context_panics_on_drop() {
    // Dropping a guard in a context other than the one it was made in is a misuse: drop
    // panics (outside unwinding), `ScopedSet::reset` reports it.
    static V: ContextVar<i32> = contextvars::context_var!(i32, "v");
    isolated(|| {
        let guard = V.scoped_set(1);
        let other = Context::new();
        let error = other.run(|| guard.reset()).unwrap_err();
        assert!(error.is_different_context());
        // The token comes back and works where it belongs.
        V.reset(error.into_token()).unwrap();
        assert!(!V.is_set());

        let guard = V.scoped_set(2);
        let message = expect_panic(|| other.run(move || drop(guard)));
        assert!(
            message.contains("was created in a different Context"),
            "{message}"
        );
        assert!(
            other.try_run(|| ()).is_ok(),
            "the run was left during the unwind"
        );
    });
}

/// A value whose `Drop` panics (once armed).
struct Bomb(bool);

impl Drop for Bomb {
    fn drop(&mut self) {
        if self.0 {
            self.0 = false;
            panic!("bomb");
        }
    }
}

#[test]
fn panic_in_value_drop_on_reset() {
    static B: ContextVar<Bomb> = contextvars::context_var!(Bomb, "b");
    static V: ContextVar<i32> = contextvars::context_var!(i32, "v");
    let ctx = Context::new();
    let message = expect_panic(|| {
        ctx.run(|| {
            drop(V.set(1));
            let token = B.set(Bomb(true));
            let _ = B.reset(token);
        })
    });
    assert_eq!(message, "bomb");
    // The reset completed before the value was dropped.
    assert!(!ctx.snapshot().contains(&B));
    assert_eq!(ctx.snapshot().get(&V).cloned(), Some(1));
    assert_eq!(ctx.try_run(|| (B.is_set(), V.get())), Ok((false, 1)));
}

#[test]
fn panic_in_value_drop_on_overwrite_in_thread_base_context() {
    static B: ContextVar<Bomb> = contextvars::context_var!(Bomb, "b");
    thread::spawn(|| {
        drop(B.set(Bomb(true)));
        let message = expect_panic(|| drop(B.set(Bomb(false))));
        assert_eq!(message, "bomb");
        assert!(B.is_set());
        assert!(!B.with(|bomb| bomb.0));
        // Everything still works.
        let ctx = copy_context();
        assert_eq!(ctx.snapshot().len(), 1);
        assert!(ctx.try_run(|| B.is_set()).unwrap());
    })
    .join()
    .unwrap();
}

#[test]
fn panic_in_value_drop_when_context_dropped() {
    static B: ContextVar<Bomb> = contextvars::context_var!(Bomb, "b");
    static V: ContextVar<i32> = contextvars::context_var!(i32, "v");
    isolated(|| {
        let _keep = V.set(1);
        let ctx = Context::new().with_value(&B, Bomb(true));
        assert_eq!(expect_panic(|| drop(ctx)), "bomb");
        assert_eq!(V.get(), 1);
        assert!(!B.is_set());
    });
}

#[test]
fn panic_in_value_drop_while_leaving_run() {
    // The value dies when the frame is left (its context is a temporary copy).
    static B: ContextVar<Bomb> = contextvars::context_var!(Bomb, "b");
    static V: ContextVar<i32> = contextvars::context_var!(i32, "v");
    isolated(|| {
        let _keep = V.set(1);
        let message = expect_panic(|| copy_context().run(|| drop(B.set(Bomb(true)))));
        assert_eq!(message, "bomb");
        assert_eq!(V.get(), 1);
        assert!(!B.is_set());
        assert_eq!(copy_context().snapshot().len(), 1);
    });
}

#[test]
fn panic_in_value_drop_deferred_by_a_borrow() {
    // A value replaced while `with` borrows it dies when the borrow ends; that drop may
    // panic out of `with`, and the state must still be consistent.
    static B: ContextVar<Bomb> = contextvars::context_var!(Bomb, "b");
    thread::spawn(|| {
        drop(B.set(Bomb(true)));
        let message = expect_panic(|| {
            B.with(|_| {
                drop(B.set(Bomb(false)));
            })
        });
        assert_eq!(message, "bomb");
        assert!(!B.with(|bomb| bomb.0));
        // Later borrows and sets are unaffected.
        for _ in 0..iterations(100) {
            B.with(|_| drop(B.set(Bomb(false))));
        }
        assert!(B.is_set());
    })
    .join()
    .unwrap();
}
