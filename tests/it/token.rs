//! `Token` and `ScopedSet`: old values, non-LIFO resets, reset errors, `Debug`.

use contextvars::{Context, ContextVar, context_var, copy_context};

use crate::isolated;

#[test]
fn old_value_and_var() {
    static V: ContextVar<String> = contextvars::context_var!(String, "v", default String::new());
    isolated(|| {
        let t0 = V.set("a".into());
        assert_eq!(
            t0.old_value(),
            None,
            "the default does not count (Token.MISSING)"
        );
        assert!(std::ptr::eq(t0.var(), &V));
        let t1 = V.set("b".into());
        assert_eq!(t1.old_value().map(String::as_str), Some("a"));
        // The old value stays readable whatever happens after.
        drop(V.set("c".into()));
        assert_eq!(t1.old_value().map(String::as_str), Some("a"));
        V.reset(t1).unwrap();
        assert_eq!(V.get(), "a");
        V.reset(t0).unwrap();
        assert!(!V.is_set());
    });
}

#[test]
fn resets_need_not_be_lifo() {
    // Python: a stale token restores a stale value.
    static V: ContextVar<&'static str> = contextvars::context_var!(&'static str, "v");
    isolated(|| {
        let _base = V.set("base");
        let t1 = V.set("A");
        let t2 = V.set("B");
        V.reset(t1).unwrap();
        assert_eq!(V.get(), "base");
        V.reset(t2).unwrap();
        assert_eq!(V.get(), "A");
    });
}

#[test]
fn reset_only_touches_its_variable() {
    static V: ContextVar<i32> = contextvars::context_var!(i32, "v");
    static W: ContextVar<i32> = contextvars::context_var!(i32, "w");
    isolated(|| {
        let tv = V.set(1);
        drop(W.set(2));
        V.reset(tv).unwrap();
        assert!(!V.is_set());
        assert_eq!(
            W.get(),
            2,
            "a set of another variable after the token survives"
        );
    });
}

#[test]
fn dropping_a_token_keeps_the_value() {
    static V: ContextVar<i32> = contextvars::context_var!(i32, "v");
    isolated(|| {
        drop(V.set(1));
        assert_eq!(V.get(), 1);
        let token = V.set(2);
        drop(token);
        assert_eq!(V.get(), 2);
    });
}

#[test]
fn token_from_another_context_is_refused_and_handed_back() {
    static V: ContextVar<i32> = contextvars::context_var!(i32, "v");
    isolated(|| {
        let token = V.set(1);
        // In a nested run of another context (a copy, even with equal contents).
        let error = copy_context().run(|| V.reset(token)).unwrap_err();
        assert!(error.is_different_context());
        assert!(!error.is_access_error());
        let debug = format!("{error:?}");
        assert!(debug.contains("DifferentContext"), "{debug}");
        // Back where it was made, it works.
        V.reset(error.into_token()).unwrap();
        assert!(!V.is_set());
    });
}

#[test]
fn token_stays_valid_after_current_handle_is_taken() {
    // Taking a handle to the running context does not change its identity.
    static V: ContextVar<i32> = contextvars::context_var!(i32, "v");
    std::thread::spawn(|| {
        let token = V.set(1);
        let handle = Context::current();
        assert_eq!(handle.snapshot().get(&V).cloned(), Some(1));
        V.reset(token).unwrap();
        assert!(!V.is_set());
        assert_eq!(
            handle.snapshot().get(&V).cloned(),
            None,
            "the reset is visible through the handle"
        );
    })
    .join()
    .unwrap();
}

#[test]
fn token_made_in_a_context_works_in_a_later_run_of_it() {
    static V: ContextVar<i32> = contextvars::context_var!(i32, "v");
    let ctx = Context::new();
    let token = ctx.run(|| V.set(1));
    ctx.run(|| drop(V.set(2)));
    // Not LIFO, and from a later entry: restores "no binding".
    ctx.run(|| V.reset(token)).unwrap();
    assert!(!ctx.snapshot().contains(&V));
}

#[test]
fn token_and_scoped_set_debug() {
    context_var! {
        static TYPED: i32 = 5;
    }
    static OPAQUE: ContextVar<i32> = contextvars::context_var!(i32, "opaque");
    isolated(|| {
        let token = TYPED.set(1);
        assert_eq!(
            format!("{token:?}"),
            r#"<Token var=<ContextVar name="TYPED" default=5>>"#
        );
        TYPED.reset(token).unwrap();
        let guard = OPAQUE.scoped_set(1);
        let debug = format!("{guard:?}");
        assert!(debug.starts_with("ScopedSet("), "{debug}");
        assert!(
            debug.contains(r#"<Token var=<ContextVar name="opaque">>"#),
            "{debug}"
        );
        assert!(std::ptr::eq(guard.token().var(), &OPAQUE));
        assert_eq!(guard.token().old_value(), None);
    });
}

#[test]
fn scoped_set_nests_and_restores_in_order() {
    static V: ContextVar<i32> = contextvars::context_var!(i32, "v", default 0);
    isolated(|| {
        let outer = V.scoped_set(1);
        {
            let inner = V.scoped_set(2);
            assert_eq!(inner.token().old_value(), Some(&1));
            assert_eq!(V.get(), 2);
        }
        assert_eq!(V.get(), 1);
        drop(outer);
        assert_eq!(V.get(), 0);
        assert!(!V.is_set());
    });
}

#[test]
fn scope_returns_the_closure_result() {
    static V: ContextVar<&'static str> =
        contextvars::context_var!(&'static str, "v", default "anonymous");
    isolated(|| {
        let greeting = V.scope("ada", || format!("hello {}", V.get()));
        assert_eq!(greeting, "hello ada");
        assert_eq!(V.get(), "anonymous");
        // `scope` restores the previous *binding*, not just the default.
        let _keep = V.set("grace");
        V.scope("ada", || assert_eq!(V.get(), "ada"));
        assert_eq!(V.get(), "grace");
    });
}

// ----- the three ways a set and a reset change the snapshot -----------------------------
//
// A set in a frame that owns its snapshot alone writes into it in place; one in a shared
// snapshot (a copy was taken, or a context object publishes it) path-copies; a reset writes
// back in place, reinstalls the snapshot its set replaced, or path-copies. Whichever path
// runs, every copy taken on the way must keep what it saw.

#[test]
fn copies_keep_their_values_across_in_place_sets() {
    static V: ContextVar<u32> = contextvars::context_var!(u32, "v");
    std::thread::spawn(|| {
        let t1 = V.set(1); // the thread's own snapshot: made fresh, then in place
        let before = copy_context(); // now shared: the next set path-copies
        let t2 = V.set(2);
        let middle = copy_context();
        let t3 = V.set(3); // unshared again (the copy holds the old node): in place
        assert_eq!(before.snapshot().get(&V).cloned(), Some(1));
        assert_eq!(middle.snapshot().get(&V).cloned(), Some(2));
        V.reset(t3).unwrap(); // in place
        assert_eq!(V.get(), 2);
        assert_eq!(middle.snapshot().get(&V).cloned(), Some(2));
        V.reset(t2).unwrap();
        assert_eq!(V.get(), 1);
        V.reset(t1).unwrap();
        assert!(!V.is_set());
        assert_eq!(before.snapshot().get(&V).cloned(), Some(1));
        assert_eq!(middle.snapshot().get(&V).cloned(), Some(2));
    })
    .join()
    .unwrap();
}

#[test]
fn out_of_order_resets_with_copies_in_between() {
    static A: ContextVar<u32> = contextvars::context_var!(u32, "a");
    static B: ContextVar<u32> = contextvars::context_var!(u32, "b");
    Context::new().run(|| {
        let ta = A.set(1);
        let copy_a = copy_context();
        let tb = B.set(2);
        let copy_ab = copy_context();
        // A's token is stale (B was set since): no reinstall shortcut, A alone goes back.
        A.reset(ta).unwrap();
        assert!(!A.is_set());
        assert_eq!(B.get(), 2);
        B.reset(tb).unwrap();
        assert!(!B.is_set());
        assert_eq!(copy_a.snapshot().get(&A).cloned(), Some(1));
        assert_eq!(copy_a.snapshot().get(&B).cloned(), None);
        assert_eq!(copy_ab.snapshot().get(&A).cloned(), Some(1));
        assert_eq!(copy_ab.snapshot().get(&B).cloned(), Some(2));
    });
}

#[test]
fn observed_context_object_sees_every_set_and_reset() {
    // A context object with a handle outside the run publishes each change; the reset's
    // reinstall shortcut must publish too.
    static V: ContextVar<u32> = contextvars::context_var!(u32, "v");
    let ctx = Context::new();
    ctx.run(|| {
        let t1 = V.set(1);
        assert_eq!(ctx.snapshot().get(&V).cloned(), Some(1));
        let t2 = V.set(2);
        assert_eq!(ctx.snapshot().get(&V).cloned(), Some(2));
        V.reset(t2).unwrap();
        assert_eq!(ctx.snapshot().get(&V).cloned(), Some(1));
        V.reset(t1).unwrap();
        assert_eq!(ctx.snapshot().get(&V).cloned(), None);
        drop(V.set(5));
    });
    assert_eq!(ctx.snapshot().get(&V).cloned(), Some(5));
    // The next run starts from the handed-back snapshot.
    ctx.run(|| assert_eq!(V.get(), 5));
}

#[test]
fn a_borrow_in_progress_forces_copies_and_sees_its_value() {
    // While `with` lends a reference into the snapshot, sets inside it must not write
    // into that snapshot, and the lent value must outlive the reset that replaces it.
    static S: ContextVar<String> = contextvars::context_var!(String, "s");
    std::thread::spawn(|| {
        let _outer = S.set("outer".to_owned());
        S.with(|outer| {
            let token = S.set("inner".to_owned());
            assert_eq!(S.get(), "inner");
            S.reset(token).unwrap();
            let token = S.set("again".to_owned());
            drop(token);
            assert_eq!(outer, "outer");
        });
        assert_eq!(S.get(), "again");
    })
    .join()
    .unwrap();
}
