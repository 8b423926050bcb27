//! `ContextVar`: reading precedence, defaults (constant and lazy), `is_set`, identity,
//! `Debug`, and the lookup error.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;

use contextvars::{Context, ContextVar, context_var};

use crate::{expect_panic, isolated};

#[test]
fn get_precedence_binding_then_var_default_then_error() {
    static NO_DEFAULT: ContextVar<i32> = contextvars::context_var!(i32, "no_default");
    static DEFAULTED: ContextVar<i32> = contextvars::context_var!(i32, "defaulted", default 10);
    isolated(|| {
        assert_eq!(DEFAULTED.get(), 10);
        assert_eq!(DEFAULTED.try_get(), Ok(10));
        assert_eq!(DEFAULTED.with(|v| v * 2), 20);
        let error = NO_DEFAULT.try_get().unwrap_err();
        assert_eq!(error.var_name(), "no_default");
        assert_eq!(NO_DEFAULT.try_with(|v| *v), Err(error));

        let _a = NO_DEFAULT.set(1);
        let _b = DEFAULTED.set(2);
        assert_eq!(NO_DEFAULT.get(), 1);
        assert_eq!(DEFAULTED.get(), 2);
        assert_eq!(DEFAULTED.try_with(|v| *v), Ok(2));
    });
}

#[test]
fn get_or_and_with_or_ignore_the_var_default() {
    // Python: `vd.get(None)` returns None even when `vd` has a default.
    static DEFAULTED: ContextVar<i32> = contextvars::context_var!(i32, "defaulted", default 10);
    static FRESH: ContextVar<i32> = contextvars::context_var!(i32, "fresh", default 10); // never set anywhere
    isolated(|| {
        assert_eq!(DEFAULTED.get_or(-1), -1);
        assert_eq!(DEFAULTED.with_or(&-1, |v| *v), -1);
        assert_eq!(FRESH.get_or(-1), -1);
        assert_eq!(FRESH.with_or(&-1, |v| *v), -1);

        let token = DEFAULTED.set(3);
        assert_eq!(DEFAULTED.get_or(-1), 3);
        assert_eq!(DEFAULTED.with_or(&-1, |v| *v), 3);
        DEFAULTED.reset(token).unwrap();
        assert_eq!(DEFAULTED.get_or(-1), -1);
        assert_eq!(DEFAULTED.get(), 10);
    });
}

#[test]
fn is_set_ignores_defaults_and_counts_a_binding_equal_to_the_default() {
    static DEFAULTED: ContextVar<i32> = contextvars::context_var!(i32, "defaulted", default 10);
    isolated(|| {
        assert!(!DEFAULTED.is_set());
        let token = DEFAULTED.set(10);
        assert!(DEFAULTED.is_set());
        assert_eq!(token.old_value(), None, "the default is not a binding");
        assert_eq!(Context::current().snapshot().len(), 1);
        DEFAULTED.reset(token).unwrap();
        assert!(!DEFAULTED.is_set());
    });
}

#[test]
fn set_in_one_context_is_invisible_in_another() {
    static V: ContextVar<i32> = contextvars::context_var!(i32, "v");
    let a = Context::new();
    let b = Context::new();
    a.run(|| drop(V.set(1)));
    assert!(b.run(|| !V.is_set()));
    assert!(!V.is_set(), "the caller's context did not change");
    assert!(a.snapshot().contains(&V) && !b.snapshot().contains(&V));
    assert_eq!(a.run(|| V.get()), 1);
}

#[test]
fn lazy_default_is_computed_once_and_only_when_needed() {
    static CALLS: AtomicUsize = AtomicUsize::new(0);
    fn init() -> String {
        CALLS.fetch_add(1, Ordering::SeqCst);
        "computed".to_string()
    }
    static LAZY: ContextVar<String> = contextvars::context_var!(String, "lazy", lazy(init)());
    isolated(|| {
        // Bound: the default is not needed.
        let token = LAZY.set("bound".to_string());
        assert_eq!(LAZY.get(), "bound");
        assert_eq!(CALLS.load(Ordering::SeqCst), 0);
        // `Debug` does not force it.
        assert_eq!(format!("{LAZY:?}"), r#"<ContextVar name="lazy">"#);
        // `get_or` does not consult it.
        LAZY.reset(token).unwrap();
        assert_eq!(LAZY.get_or("call site".to_string()), "call site");
        assert_eq!(CALLS.load(Ordering::SeqCst), 0);
        // First need: computed once, from any number of threads.
        thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| assert_eq!(LAZY.get(), "computed"));
            }
        });
        assert_eq!(LAZY.get(), "computed");
        assert_eq!(LAZY.default_value().map(String::as_str), Some("computed"));
        assert_eq!(CALLS.load(Ordering::SeqCst), 1);
        // Now that it exists, `Debug` shows it.
        assert_eq!(
            format!("{LAZY:?}"),
            r#"<ContextVar name="lazy" default="computed">"#
        );
    });
}

#[test]
fn lazy_default_via_macro() {
    static CALLS: AtomicUsize = AtomicUsize::new(0);
    fn make() -> Vec<u8> {
        CALLS.fetch_add(1, Ordering::SeqCst);
        vec![1, 2]
    }
    context_var! {
        static LAZY: Vec<u8> = lazy make();
    }
    assert_eq!(format!("{LAZY:?}"), r#"<ContextVar name="LAZY">"#);
    assert_eq!(LAZY.with(|v| v.len()), 2);
    assert_eq!(LAZY.get(), vec![1, 2]);
    assert_eq!(CALLS.load(Ordering::SeqCst), 1);
    assert_eq!(
        format!("{LAZY:?}"),
        r#"<ContextVar name="LAZY" default=[1, 2]>"#
    );
}

#[test]
fn default_value_accessor() {
    static NONE: ContextVar<i32> = contextvars::context_var!(i32, "none");
    static SOME: ContextVar<i32> = contextvars::context_var!(i32, "some", default 4);
    assert_eq!(NONE.default_value(), None);
    assert_eq!(SOME.default_value(), Some(&4));
    isolated(|| {
        let _keep = SOME.set(5);
        assert_eq!(
            SOME.default_value(),
            Some(&4),
            "a binding is not the default"
        );
    });
}

#[test]
fn debug_of_context_var() {
    static PLAIN: ContextVar<i32> = contextvars::context_var!(i32, "plain");
    static OPAQUE_DEFAULT: ContextVar<i32> = contextvars::context_var!(i32, "opaque", default 123);
    context_var! {
        static TYPED: i32 = 123;
        static TYPED_STR: &'static str = "x";
        static TYPED_NONE: i32;
    }
    assert_eq!(format!("{PLAIN:?}"), r#"<ContextVar name="plain">"#);
    assert_eq!(
        format!("{OPAQUE_DEFAULT:?}"),
        r#"<ContextVar name="opaque" default=123>"#
    );
    assert_eq!(
        format!("{TYPED:?}"),
        r#"<ContextVar name="TYPED" default=123>"#
    );
    assert_eq!(
        format!("{TYPED_STR:?}"),
        r#"<ContextVar name="TYPED_STR" default="x">"#
    );
    assert_eq!(
        format!("{TYPED_NONE:?}"),
        r#"<ContextVar name="TYPED_NONE">"#
    );
}

#[test]
fn context_var_macro_names_and_defaults() {
    context_var! {
        /// Documented.
        static A: u64;
        pub(crate) static B: &'static str = "public";
    }
    assert_eq!(A.name(), "A");
    assert_eq!(B.name(), "B");
    assert!(A.try_get().is_err());
    assert_eq!(B.get(), "public");
}

#[test]
fn identity_is_per_variable_not_per_name() {
    static X1: ContextVar<i32> = contextvars::context_var!(i32, "x");
    static X2: ContextVar<i32> = contextvars::context_var!(i32, "x");
    assert_ne!(X1.id(), X2.id());
    assert_eq!(X1.id(), X1.id());
    assert!(X1.id().as_u64() > 0 && X2.id().as_u64() > 0);
    assert_eq!(
        format!("{:?}", X1.id()),
        format!("VarId({})", X1.id().as_u64())
    );
    let ctx = Context::new().with_value(&X1, 1);
    assert!(ctx.snapshot().contains(&X1));
    assert!(!ctx.snapshot().contains(&X2));
    assert_eq!(ctx.snapshot().get(&X2).cloned(), None);
}

#[test]
fn lookup_error_display_debug_and_panic() {
    static MISSING: ContextVar<i32> = contextvars::context_var!(i32, "missing");
    isolated(|| {
        let error = MISSING.try_get().unwrap_err();
        assert_eq!(
            error.to_string(),
            r#"<ContextVar name="missing"> has no value in the current context and no default"#
        );
        assert_eq!(format!("{error:?}"), r#"LookupError { var: "missing" }"#);
        let _: &dyn std::error::Error = &error;
        assert_eq!(expect_panic(|| MISSING.get()), error.to_string());
        assert_eq!(expect_panic(|| MISSING.with(|_| ())), error.to_string());
    });
}

#[test]
fn every_set_returns_a_new_token_even_for_the_same_value() {
    static V: ContextVar<i32> = contextvars::context_var!(i32, "v");
    isolated(|| {
        let t1 = V.set(1);
        let t2 = V.set(1);
        assert_eq!(t1.old_value(), None);
        assert_eq!(t2.old_value(), Some(&1));
        V.reset(t2).unwrap();
        assert_eq!(V.get(), 1);
        V.reset(t1).unwrap();
        assert!(!V.is_set());
    });
}

#[test]
fn many_variables_in_one_context() {
    static VARS: [ContextVar<usize>; 64] = [const { contextvars::context_var!(usize, "many") }; 64];
    isolated(|| {
        let n = VARS.len();
        for (i, var) in VARS.iter().enumerate().take(n) {
            drop(var.set(i));
        }
        let ctx = Context::current();
        assert_eq!(ctx.snapshot().len(), n);
        for (i, var) in VARS.iter().enumerate().take(n) {
            assert_eq!(var.get(), i);
            assert_eq!(ctx.snapshot().get(var).cloned(), Some(i));
        }
    });
}
