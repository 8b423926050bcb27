//! A port of CPython's `Lib/test/test_context.py::ContextTest`.
//!
//! Each test is named after the CPython test it ports and follows its steps. Tests whose
//! subject cannot happen in Rust (wrong argument counts or types, subclassing, reusing a
//! token, tokens of another type) are pinned by the type system or by the compile-fail
//! doctests in `src/compile_fail.rs`; `src/docs/python.rs` lists them all.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use contextvars::{Context, ContextVar, context_var, copy_context};

use crate::{addr, expect_panic, isolated, mark_alive, record_drop, was_dropped};

// ----- 1-3: construction and repr -------------------------------------------------------

#[test]
fn test_context_var_new_1() {
    // `ContextVar()` / `ContextVar(1)`: a name is required and is a `&'static str`, both
    // checked by the compiler. `.name` is read-only: there is no setter.
    static C: ContextVar<i32> = contextvars::context_var!(i32, "aaa");
    static SAME_NAME: ContextVar<i32> = contextvars::context_var!(i32, "aaa");
    assert_eq!(C.name(), "aaa");
    // `hash(c) != hash('aaa')`: the identity is not derived from the name, so two
    // variables with the same name are different keys.
    assert_eq!(SAME_NAME.name(), "aaa");
    assert_ne!(C.id(), SAME_NAME.id());
    assert_eq!(C.id(), C.id(), "the identity is stable");
    isolated(|| {
        let _keep = C.set(1);
        assert!(C.is_set());
        assert!(!SAME_NAME.is_set());
        assert_eq!(SAME_NAME.get_or(7), 7);
    });
}

#[test]
fn test_context_var_repr_1() {
    static A: ContextVar<i32> = contextvars::context_var!(i32, "a");
    context_var! {
        static WITH_DEFAULT: i32 = 123;
    }
    let repr = format!("{A:?}");
    assert!(repr.contains("a"), "{repr}");
    let repr = format!("{WITH_DEFAULT:?}");
    assert!(repr.contains("123"), "{repr}");
    // A default that contains the variable itself cannot be expressed (the type would be
    // infinite), so there is no `...` recursion guard to test.
    isolated(|| {
        let token = WITH_DEFAULT.set(1);
        let token_repr = format!("{token:?}");
        assert!(
            token_repr.contains(&format!("{WITH_DEFAULT:?}")),
            "{token_repr}"
        );
        assert!(!token_repr.contains(" used "), "{token_repr}");
        // `reset` consumes the token: a used token cannot be printed (or used) again.
        WITH_DEFAULT.reset(token).unwrap();
    });
}

#[test]
fn test_token_repr_1() {
    // CPython: `^<Token var=<ContextVar name='a' at 0x[0-9a-fA-F]+> at 0x[0-9a-fA-F]+>$`.
    // Ours has no addresses, and Rust's string quoting.
    static A: ContextVar<i32> = contextvars::context_var!(i32, "a");
    isolated(|| {
        let token = A.set(1);
        assert_eq!(format!("{token:?}"), r#"<Token var=<ContextVar name="a">>"#);
        A.reset(token).unwrap();
    });
}

#[test]
fn test_context_new_1() {
    // `Context(1)`, `Context(a=1)`: `Context::new` takes no arguments (compile time).
    // `Context(**{})` is allowed: so is `Context::default()`, and both are empty.
    let ctx = Context::new();
    assert_eq!(ctx.snapshot().len(), 0);
    assert!(ctx.snapshot().is_empty());
    assert_eq!(ctx.snapshot().into_iter().count(), 0);
    assert_eq!(Context::default(), Context::new());
    assert!(Context::default().snapshot().is_empty());
}

// ----- 8-15: copy_context and run -------------------------------------------------------

#[test]
fn test_context_get_context_1() {
    // `isinstance(copy_context(), Context)` is the type system's job. What remains: the
    // result is a new context object, never the running one (that one is entered).
    static V: ContextVar<i32> = contextvars::context_var!(i32, "v");
    isolated(|| {
        let _keep = V.set(1);
        let ctx: Context = copy_context();
        assert_eq!(ctx, Context::current());
        assert!(
            Context::current()
                .try_run(|| ())
                .unwrap_err()
                .is_already_entered()
        );
        assert_eq!(ctx.try_run(|| V.get()), Ok(1));
    });
}

#[test]
fn test_context_run_2() {
    // Arguments reach the callable (Rust: captured by the closure), the result comes
    // back, and arguments that are only borrowed are not mutated.
    fn func(
        args: Vec<i32>,
        mut kwargs: BTreeMap<&'static str, i32>,
    ) -> (Vec<i32>, BTreeMap<&'static str, i32>) {
        let mut args = args;
        args.push(-1); // `args += ('bar',)`
        kwargs.insert("spam", 0); // `kwargs['spam'] = 'foo'`
        (args, kwargs)
    }
    let ctx = Context::new();
    let spam_only = BTreeMap::from([("spam", 0)]);

    assert_eq!(
        ctx.run(|| func(vec![], BTreeMap::new())),
        (vec![-1], spam_only.clone())
    );
    assert_eq!(
        ctx.run(|| func(vec![1], BTreeMap::new())),
        (vec![1, -1], spam_only.clone())
    );
    assert_eq!(
        ctx.run(|| func(vec![], BTreeMap::from([("a", 2)]))),
        (vec![-1], BTreeMap::from([("a", 2), ("spam", 0)]))
    );
    assert_eq!(
        ctx.run(|| func(vec![11], BTreeMap::from([("a", 2)]))),
        (vec![11, -1], BTreeMap::from([("a", 2), ("spam", 0)]))
    );
    // `ctx.run(f, 11, **a)` does not mutate the caller's `a`.
    let a: BTreeMap<&'static str, i32> = BTreeMap::new();
    assert_eq!(
        ctx.run(|| func(vec![11], a.clone())),
        (vec![11, -1], spam_only.clone())
    );
    assert!(a.is_empty());
    // A plain function item (CPython also tries `functools.partial`).
    fn no_args() -> &'static str {
        "called"
    }
    assert_eq!(ctx.run(no_args), "called");
}

#[test]
fn test_context_run_3() {
    // An exception from the callable propagates: a panic propagates through `run` (and
    // a `Result` is just a return value).
    let ctx = Context::new();
    fn func() -> i32 {
        panic!("division by zero")
    }
    assert_eq!(expect_panic(|| ctx.run(func)), "division by zero");
    let (one, two) = (1, 2);
    assert_eq!(
        expect_panic(|| ctx.run(|| func() + one + two)),
        "division by zero"
    );
    let result: Result<(), &str> = ctx.run(|| Err("division by zero"));
    assert_eq!(result, Err("division by zero"));
    // The context was left each time: it can be entered again.
    assert_eq!(ctx.run(|| 5), 5);
}

#[test]
fn test_context_run_4() {
    static VAR: ContextVar<&'static str> = contextvars::context_var!(&'static str, "var");
    let ctx1 = Context::new();
    let ctx2 = Context::new();

    let func2 = || {
        assert_eq!(VAR.get_or("none"), "none");
    };
    let func1 = || {
        assert_eq!(VAR.get_or("none"), "none");
        let _keep = VAR.set("spam");
        ctx2.run(func2);
        assert_eq!(VAR.get_or("none"), "spam");

        let cur = copy_context();
        assert_eq!(cur.snapshot().len(), 1);
        assert_eq!(cur.snapshot().get(&VAR).cloned(), Some("spam"));
        cur
    };
    let returned_ctx = ctx1.run(func1);
    assert_eq!(ctx1, returned_ctx);
    assert_eq!(returned_ctx.snapshot().get(&VAR).cloned(), Some("spam"));
    assert!(returned_ctx.snapshot().contains(&VAR));
    // ctx2 was entered but never set: still empty.
    assert!(ctx2.snapshot().is_empty());
}

#[test]
fn test_context_run_5() {
    static VAR: ContextVar<&'static str> = contextvars::context_var!(&'static str, "var");
    isolated(|| {
        let ctx = Context::new();
        let func = || {
            assert_eq!(VAR.get_or("none"), "none");
            let _keep = VAR.set("spam");
            panic!("division by zero");
        };
        assert_eq!(expect_panic(|| ctx.run(func)), "division by zero");
        assert_eq!(VAR.get_or("none"), "none");
        assert!(!VAR.is_set());
        // CPython keeps the set in `ctx` itself (subtlety 1).
        assert_eq!(ctx.snapshot().get(&VAR).cloned(), Some("spam"));
    });
}

#[test]
fn test_context_run_6() {
    static C: ContextVar<i32> = contextvars::context_var!(i32, "a", default 0);
    let ctx = Context::new();
    ctx.run(|| {
        assert_eq!(C.get(), 0);
        assert_eq!(ctx.snapshot().get(&C).cloned(), None);

        let _keep = C.set(42);
        assert_eq!(C.get(), 42);
        assert_eq!(ctx.snapshot().get(&C).cloned(), Some(42));
    });
    assert_eq!(ctx.snapshot().get(&C).cloned(), Some(42));
}

#[test]
fn test_context_run_7() {
    let ctx = Context::new();
    let ran = ctx.run(|| {
        let error = ctx.try_run(|| unreachable!("entered twice")).unwrap_err();
        assert!(error.is_already_entered());
        assert!(error.to_string().contains("is already entered"), "{error}");
        // `run` (not `try_run`) panics with the same message.
        let message = expect_panic(|| ctx.run(|| ()));
        assert!(message.contains("is already entered"), "{message}");
        true
    });
    assert!(ran);
}

// ----- 16-21: get / set / reset ---------------------------------------------------------

#[test]
fn test_context_getset_1() {
    static C: ContextVar<String> = contextvars::context_var!(String, "c");
    isolated(|| {
        let error = C.try_get().unwrap_err();
        assert_eq!(error.var_name(), "c");
        assert_eq!(C.get_or("none".into()), "none");

        let t0 = C.set("42".into());
        assert_eq!(C.get(), "42");
        assert_eq!(C.get_or("none".into()), "42");
        assert_eq!(t0.old_value(), None); // Token.MISSING
        assert!(std::ptr::eq(t0.var(), &C));

        let t = C.set("spam".into());
        assert_eq!(C.get(), "spam");
        assert_eq!(C.get_or("none".into()), "spam");
        assert_eq!(t.old_value().map(String::as_str), Some("42"));
        C.reset(t).unwrap();
        assert_eq!(C.get(), "42");
        assert_eq!(C.get_or("none".into()), "42");

        drop(C.set("spam2".into()));
        // `c.reset(t)` again: "has already been used" is a compile error in Rust.
        assert_eq!(C.get(), "spam2");

        let ctx1 = copy_context();
        assert!(ctx1.snapshot().contains(&C));

        // A stale token: resets to MISSING, removing the binding (not LIFO).
        C.reset(t0).unwrap();
        assert_eq!(C.get_or("none".into()), "none");
        assert!(!C.is_set());

        assert!(ctx1.snapshot().contains(&C));
        assert_eq!(ctx1.snapshot().get(&C).cloned().as_deref(), Some("spam2"));
        assert_eq!(
            ctx1.snapshot()
                .get(&C)
                .cloned()
                .unwrap_or_else(|| "aa".into()),
            "spam2"
        );
        assert_eq!(ctx1.snapshot().len(), 1);
        // items()
        let items: Vec<(contextvars::VarId, String)> = ctx1
            .snapshot()
            .into_iter()
            .map(|entry| (entry.var_id(), entry.get(&C).unwrap().clone()))
            .collect();
        assert_eq!(items, vec![(C.id(), "spam2".to_string())]);
        // values()
        let snapshot = ctx1.snapshot();
        let values: Vec<&String> = snapshot
            .values()
            .map(|value| value.downcast_ref::<String>().unwrap())
            .collect();
        assert_eq!(values, vec!["spam2"]);
        // keys() and iter()
        assert_eq!(ctx1.snapshot().keys().collect::<Vec<_>>(), vec![C.id()]);
        assert_eq!(
            ctx1.snapshot()
                .into_iter()
                .map(|entry| entry.var_id())
                .collect::<Vec<_>>(),
            vec![C.id()]
        );

        let ctx2 = copy_context();
        assert!(!ctx2.snapshot().contains(&C));
        assert_eq!(ctx2.snapshot().get(&C).cloned(), None); // `ctx2[c]` raises KeyError
        assert_eq!(
            ctx2.snapshot()
                .get(&C)
                .cloned()
                .unwrap_or_else(|| "aa".into()),
            "aa"
        );
        assert_eq!(ctx2.snapshot().len(), 0);
        assert_eq!(ctx2.snapshot().into_iter().count(), 0);
    });
}

#[test]
fn test_context_getset_1_reset_missing_removes_binding() {
    // The "reset to MISSING removes the binding" step on its own: `len` drops by one and
    // the default is not stored.
    static C: ContextVar<i32> = contextvars::context_var!(i32, "c", default 5);
    static OTHER: ContextVar<i32> = contextvars::context_var!(i32, "other");
    isolated(|| {
        let _keep = OTHER.set(1);
        let token = C.set(2);
        assert_eq!(copy_context().snapshot().len(), 2);
        C.reset(token).unwrap();
        let ctx = copy_context();
        assert_eq!(ctx.snapshot().len(), 1);
        assert!(!ctx.snapshot().contains(&C));
        assert_eq!(ctx.snapshot().get(&C).cloned(), None);
        assert_eq!(C.get(), 5);
    });
}

#[test]
fn test_context_getset_2() {
    static V1: ContextVar<i32> = contextvars::context_var!(i32, "v1");
    static V2: ContextVar<i32> = contextvars::context_var!(i32, "v2");
    isolated(|| {
        let t1 = V1.set(42);
        let error = V2.reset(t1).unwrap_err();
        assert!(error.is_different_var());
        assert!(!error.is_different_context());
        let message = error.to_string();
        assert!(message.contains("by a different"), "{message}");
        assert_eq!(
            message,
            r#"<Token var=<ContextVar name="v1">> was created by a different ContextVar"#
        );
        // Nothing changed, and the token handed back still works on its own variable.
        assert_eq!(V1.get(), 42);
        assert!(!V2.is_set());
        V1.reset(error.into_token()).unwrap();
        assert!(!V1.is_set());
    });
}

#[test]
fn test_context_getset_3() {
    static C: ContextVar<i32> = contextvars::context_var!(i32, "c", default 42);
    let ctx = Context::new();
    ctx.run(|| {
        assert_eq!(C.get(), 42);
        assert_eq!(ctx.snapshot().get(&C).cloned(), None); // `ctx[c]` raises KeyError; `ctx.get(c)` is None
        assert_eq!(ctx.snapshot().get(&C).cloned().unwrap_or(-1), -1); // `ctx.get(c, 'spam')`
        assert!(!ctx.snapshot().contains(&C));
        assert_eq!(ctx.snapshot().keys().count(), 0);

        let t = C.set(1);
        assert_eq!(ctx.snapshot().keys().collect::<Vec<_>>(), vec![C.id()]);
        assert_eq!(ctx.snapshot().get(&C).cloned(), Some(1));

        C.reset(t).unwrap();
        assert_eq!(ctx.snapshot().keys().count(), 0);
        assert_eq!(ctx.snapshot().get(&C).cloned(), None);
    });
}

#[test]
fn test_context_getset_4() {
    static C: ContextVar<i32> = contextvars::context_var!(i32, "c", default 42);
    isolated(|| {
        let ctx = Context::new();
        let tok = ctx.run(|| C.set(1));
        let error = C.reset(tok).unwrap_err();
        assert!(error.is_different_context());
        assert!(!error.is_different_var());
        let message = error.to_string();
        assert!(message.contains("different Context"), "{message}");
        assert_eq!(
            message,
            r#"<Token var=<ContextVar name="c" default=42>> was created in a different Context"#
        );
        assert_eq!(C.get(), 42);
        assert_eq!(ctx.snapshot().get(&C).cloned(), Some(1));
        // Subtlety 3: back in the context it was made in, the token works.
        let tok = error.into_token();
        ctx.run(|| C.reset(tok)).unwrap();
        assert_eq!(ctx.snapshot().get(&C).cloned(), None);
    });
}

#[test]
fn test_context_getset_4_copy_is_a_different_context() {
    // Token validity is the identity of the Context: a copy is a different one.
    static C: ContextVar<i32> = contextvars::context_var!(i32, "c");
    let ctx = Context::new();
    let tok = ctx.run(|| C.set(1));
    let copy = ctx.copy();
    let error = copy.run(|| C.reset(tok)).unwrap_err();
    assert!(error.is_different_context());
    assert_eq!(copy.snapshot().get(&C).cloned(), Some(1));
    let tok = error.into_token();
    ctx.run(move || C.reset(tok)).unwrap();
    assert!(!ctx.snapshot().contains(&C));
    assert!(copy.snapshot().contains(&C));
}

#[test]
fn test_context_getset_5() {
    // Python lists are shared mutable objects: `Arc<Mutex<Vec<_>>>` models them.
    type List = Arc<Mutex<Vec<i32>>>;
    static C: ContextVar<List> = contextvars::context_var!(List, "c");
    isolated(|| {
        let _keep = C.set(List::default());
        copy_context().run(|| {
            let _keep = C.set(List::default());
            C.get().lock().unwrap().push(42);
            assert_eq!(*C.get().lock().unwrap(), vec![42]);
        });
        assert_eq!(*C.get().lock().unwrap(), Vec::<i32>::new());
    });
}

#[test]
fn test_context_copy_1() {
    static C: ContextVar<i32> = contextvars::context_var!(i32, "c", default 42);
    let ctx1 = Context::new();

    let ctx2_fun = || {
        assert_eq!(C.get(), 10);
        let _keep = C.set(30);
        assert_eq!(C.get(), 30);
    };
    ctx1.run(|| {
        let _keep = C.set(10);
        let ctx2 = ctx1.copy();
        assert_eq!(ctx2.snapshot().get(&C).cloned(), Some(10));

        let _keep = C.set(20);
        assert_eq!(ctx1.snapshot().get(&C).cloned(), Some(20));
        assert_eq!(ctx2.snapshot().get(&C).cloned(), Some(10));

        ctx2.run(ctx2_fun);
        assert_eq!(ctx1.snapshot().get(&C).cloned(), Some(20));
        assert_eq!(ctx2.snapshot().get(&C).cloned(), Some(30));
        assert_eq!(C.get(), 20);
    });
}

#[test]
fn test_context_isinstance() {
    // `isinstance(ctx, collections.abc.Mapping)` has no Rust meaning; what it implies does:
    // every read-only mapping method exists and agrees with the others.
    context_var! {
        static A: i32;
    }
    let ctx = Context::new().with_value(&A, 1);
    assert_eq!(ctx.snapshot().get(&A).cloned(), Some(1)); // __getitem__ / get
    assert!(ctx.snapshot().contains(&A)); // __contains__
    assert_eq!(ctx.snapshot().len(), 1); // __len__
    assert!(!ctx.snapshot().is_empty());
    assert_eq!(
        ctx.snapshot()
            .into_iter()
            .map(|e| e.var_id())
            .collect::<Vec<_>>(),
        vec![A.id()]
    ); // __iter__
    assert_eq!(ctx.snapshot().keys().collect::<Vec<_>>(), vec![A.id()]); // keys
    let snapshot = ctx.snapshot();
    assert_eq!(
        snapshot
            .values()
            .map(|v| *v.downcast_ref::<i32>().unwrap())
            .collect::<Vec<_>>(),
        vec![1]
    ); // values
    assert_eq!(
        snapshot
            .iter()
            .map(|e| (e.var_id(), *e.get(&A).unwrap()))
            .collect::<Vec<_>>(),
        vec![(A.id(), 1)]
    ); // items
    assert_eq!(ctx, Context::new().with_value(&A, 1)); // __eq__
    assert_ne!(ctx, Context::new()); // __ne__
}

// ----- 23-24: threads -------------------------------------------------------------------

#[test]
fn test_context_threads_1() {
    static CVAR: ContextVar<usize> = contextvars::context_var!(usize, "cvar");
    fn sub(num: usize) -> usize {
        for i in 0..10 {
            let _keep = CVAR.set(num + i);
            // `time.sleep(random.uniform(0.001, 0.05))`, shortened.
            thread::sleep(Duration::from_micros(
                ((num * 7 + i * 13) % 10) as u64 * 100,
            ));
            assert_eq!(CVAR.get(), num + i);
        }
        num
    }
    let results: Vec<usize> = thread::scope(|scope| {
        let handles: Vec<_> = (0..10).map(|num| scope.spawn(move || sub(num))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(results, (0..10).collect::<Vec<_>>());
}

#[test]
fn test_context_thread_inherit() {
    // Rust threads behave like CPython's `thread_inherit_context=0`: a plain thread starts
    // empty; `copy_context` handed over gives inheritance; `Thread(context=ctx)` is
    // `ctx.run` on a shared (not copied) context.
    static C: ContextVar<&'static str> = contextvars::context_var!(&'static str, "c");
    isolated(|| {
        let _keep = C.set("parent");

        // Default thread: no inheritance.
        let seen = thread::spawn(|| C.try_get().ok()).join().unwrap();
        assert_eq!(seen, None);

        // Inheritance on request.
        let inherited = copy_context();
        let seen = thread::spawn(move || inherited.run(|| C.try_get().ok()))
            .join()
            .unwrap();
        assert_eq!(seen, Some("parent"));

        // `context=custom_ctx`: the thread sees its values, and its sets land in it.
        let custom = Context::new().with_value(&C, "custom");
        let seen = thread::scope(|scope| {
            scope
                .spawn(|| {
                    custom.run(|| {
                        let seen = C.get();
                        drop(C.set("set in thread"));
                        seen
                    })
                })
                .join()
                .unwrap()
        });
        assert_eq!(seen, "custom");
        assert_eq!(custom.snapshot().get(&C).cloned(), Some("set in thread"));

        // `context=Context()`: sees nothing.
        let empty = Context::new();
        let seen = thread::spawn(move || empty.run(|| C.try_get().ok()))
            .join()
            .unwrap();
        assert_eq!(seen, None);
        assert_eq!(C.get(), "parent");
    });
}

// ----- 25-31: `with var.set(v):` (ScopedSet) --------------------------------------------

#[test]
fn test_token_contextmanager_with_default() {
    static C: ContextVar<i32> = contextvars::context_var!(i32, "c", default 42);
    let ctx = Context::new();
    ctx.run(|| {
        {
            let _guard = C.scoped_set(36);
            assert_eq!(C.get(), 36);
        }
        assert_eq!(C.get(), 42);
    });
    assert!(!ctx.snapshot().contains(&C));
}

#[test]
fn test_token_contextmanager_without_default() {
    static C: ContextVar<i32> = contextvars::context_var!(i32, "c");
    let ctx = Context::new();
    ctx.run(|| {
        {
            let guard = C.scoped_set(36);
            assert_eq!(C.get(), 36);
            assert_eq!(guard.token().old_value(), None);
        }
        let error = C.try_get().unwrap_err();
        assert!(
            error.to_string().contains(r#"<ContextVar name="c""#),
            "{error}"
        );
        let message = expect_panic(|| C.get());
        assert!(message.contains(r#"<ContextVar name="c""#), "{message}");
    });
}

#[test]
fn test_token_contextmanager_on_exception() {
    static C: ContextVar<i32> = contextvars::context_var!(i32, "c", default 42);
    let ctx = Context::new();
    let message = expect_panic(|| {
        ctx.run(|| {
            let _guard = C.scoped_set(36);
            assert_eq!(C.get(), 36);
            panic!("custom exception");
        })
    });
    assert_eq!(message, "custom exception");
    assert!(!ctx.snapshot().contains(&C));
    assert_eq!(ctx.run(|| C.get()), 42);

    // The same with `scope`.
    let message = expect_panic(|| ctx.run(|| C.scope(36, || -> () { panic!("custom exception") })));
    assert_eq!(message, "custom exception");
    assert!(!ctx.snapshot().contains(&C));
}

#[test]
fn test_token_contextmanager_multiple_c_set() {
    static C: ContextVar<i32> = contextvars::context_var!(i32, "c", default 42);
    let ctx = Context::new();
    ctx.run(|| {
        {
            let _guard = C.scoped_set(36);
            assert_eq!(C.get(), 36);
            drop(C.set(24));
            assert_eq!(C.get(), 24);
            drop(C.set(48));
            assert_eq!(C.get(), 48);
        }
        assert_eq!(C.get(), 42);
    });
    assert!(!ctx.snapshot().contains(&C));
}

#[test]
fn test_token_contextmanager_with_explicit_reset_the_same_token() {
    // CPython: `c.reset(token)` inside `with c.set(36) as token:` makes `__exit__` raise
    // "has already been used once". In Rust the guard owns the token; the explicit reset
    // is `ScopedSet::reset`, which consumes the guard, so there is no second reset at the
    // end of the scope (and no error to raise).
    static C: ContextVar<i32> = contextvars::context_var!(i32, "c", default 42);
    let ctx = Context::new();
    ctx.run(|| {
        {
            let guard = C.scoped_set(36);
            assert_eq!(C.get(), 36);
            guard.reset().unwrap();
            assert_eq!(C.get(), 42);
            // Were the token used again at the end of the scope, this would be undone.
            drop(C.set(7));
        }
        assert_eq!(C.get(), 7);
    });
}

#[test]
fn test_token_contextmanager_with_explicit_reset_another_token() {
    static C: ContextVar<i32> = contextvars::context_var!(i32, "c", default 42);
    let ctx = Context::new();
    ctx.run(|| {
        {
            let _guard = C.scoped_set(36);
            assert_eq!(C.get(), 36);

            let token = C.set(24);
            assert_eq!(C.get(), 24);
            C.reset(token).unwrap();
            assert_eq!(C.get(), 36);
        }
        assert_eq!(C.get(), 42);
    });
}

// ----- 32-33: re-entrant `==` (gh-142829) ------------------------------------------------

/// What `ReentrantEq::eq` does to the contexts being compared.
type Hook = Box<dyn Fn() + Send + Sync>;

/// A value whose `==` runs a hook (once) that sets variables in the contexts being
/// compared, replacing the very value being compared.
struct ReentrantEq {
    hook: Mutex<Option<Hook>>,
}

impl ReentrantEq {
    fn new(hook: Option<Hook>) -> Self {
        Self {
            hook: Mutex::new(hook),
        }
    }
}

impl PartialEq for ReentrantEq {
    fn eq(&self, other: &Self) -> bool {
        let hook = self.hook.lock().unwrap().take();
        if let Some(hook) = hook {
            mark_alive(addr(self));
            mark_alive(addr(other));
            hook();
            // The value `self` was the only binding of its variable in ctx1, which the
            // hook has replaced. It must still be alive.
            assert!(!was_dropped(addr(self)), "self freed during ==");
            assert!(!was_dropped(addr(other)), "other freed during ==");
            assert!(self.hook.lock().unwrap().is_none());
        }
        true
    }
}

impl Drop for ReentrantEq {
    fn drop(&mut self) {
        record_drop(addr(self));
    }
}

#[test]
fn test_context_eq_reentrant_contextvar_set() {
    context_var! {
        static VAR: ReentrantEq;
    }
    let ctx1 = Arc::new(Context::new());
    let ctx2 = Context::new();
    let hook_ctx = Arc::clone(&ctx1);
    let hook: Hook = Box::new(move || {
        hook_ctx.run(|| drop(VAR.set(ReentrantEq::new(None))));
    });
    ctx1.run(|| drop(VAR.set(ReentrantEq::new(Some(hook)))));
    ctx2.run(|| drop(VAR.set(ReentrantEq::new(None))));

    // The comparison runs on the snapshots taken when it started.
    assert!(*ctx1 == ctx2);
    // The hook ran and replaced ctx1's value; ctx1 is still sound and comparable.
    let hook_left = ctx1
        .snapshot()
        .get(&VAR)
        .map(|v| v.hook.lock().unwrap().is_some());
    assert_eq!(hook_left, Some(false));
    assert_eq!(ctx1.snapshot().len(), 1);
    assert!(*ctx1 == ctx2);
}

#[test]
fn test_context_eq_reentrant_contextvar_set_in_hash_1_structure_change() {
    // Keys are `ContextVar`s, whose identity is never user code, so a user `__hash__`
    // cannot run during `==`. The closest analogue: the hook changes the *structure* of
    // both maps under the walk (adds and removes variables in both contexts).
    context_var! {
        static VAR: ReentrantEq;
        static EXTRA: i32;
    }
    static MANY: [ContextVar<i32>; 20] = [const { contextvars::context_var!(i32, "many") }; 20];
    let ctx1 = Arc::new(Context::new());
    let ctx2 = Arc::new(Context::new());
    let (h1, h2) = (Arc::clone(&ctx1), Arc::clone(&ctx2));
    let hook: Hook = Box::new(move || {
        h1.run(|| {
            drop(VAR.set(ReentrantEq::new(None)));
            for var in &MANY {
                drop(var.set(1));
            }
        });
        h2.run(|| {
            drop(EXTRA.set(2));
            drop(VAR.set(ReentrantEq::new(None)));
        });
    });
    ctx1.run(|| drop(VAR.set(ReentrantEq::new(Some(hook)))));
    ctx2.run(|| drop(VAR.set(ReentrantEq::new(None))));

    assert!(*ctx1 == *ctx2);
    assert_eq!(ctx1.snapshot().len(), 21);
    assert_eq!(ctx2.snapshot().len(), 2);
    assert!(*ctx1 != *ctx2);
}
