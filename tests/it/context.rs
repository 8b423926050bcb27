//! `Context`, `Snapshot` and `Entry`: the mapping side, `Debug`, equality, iteration
//! snapshots, `with_value`, and handles to the running context.

use std::collections::BTreeSet;

use contextvars::{Context, ContextVar, VarId, context_var, copy_context};

use crate::isolated;

#[test]
fn debug_shows_names_and_values() {
    context_var! {
        static REQUEST: u64;
        static TENANT: String;
    }
    /// A value type without `Debug`: it prints as its type's name.
    struct Opaque(#[allow(dead_code)] u64);
    static NAMED: ContextVar<u64> = contextvars::context_var!(u64, "named");
    static OPAQUE: ContextVar<Opaque> = contextvars::context_var!(Opaque, "opaque");
    assert_eq!(format!("{:?}", Context::new()), "Context {}");
    let ctx = Context::new().with_value(&REQUEST, 42);
    assert_eq!(format!("{ctx:?}"), "Context {REQUEST: 42}");
    assert_eq!(format!("{:?}", ctx.snapshot()), "{REQUEST: 42}");
    let ctx = Context::new().with_value(&TENANT, "acme".to_string());
    assert_eq!(format!("{ctx:?}"), r#"Context {TENANT: "acme"}"#);
    // A variable named by a string prints the same way as one named by its identifier.
    let ctx = Context::new().with_value(&NAMED, 7);
    assert_eq!(format!("{ctx:?}"), "Context {named: 7}");
    // A value without `Debug`: its type name.
    let ctx = Context::new().with_value(&OPAQUE, Opaque(7));
    let debug = format!("{ctx:?}");
    assert!(
        debug.starts_with("Context {opaque: <") && debug.ends_with("::Opaque>}"),
        "{debug}"
    );
    // Two variables (order unspecified).
    let ctx = Context::new().with_value(&REQUEST, 1).with_value(&NAMED, 2);
    let debug = format!("{ctx:?}");
    assert!(
        debug.contains("REQUEST: 1") && debug.contains("named: 2"),
        "{debug}"
    );
}

#[test]
fn entry_accessors() {
    context_var! {
        static A: i32;
        static B: i32;
    }
    let ctx = Context::new().with_value(&A, 5);
    let entry = ctx.snapshot().into_iter().next().unwrap();
    assert_eq!(entry.get(&A), Some(&5));
    assert_eq!(
        entry.get(&B),
        None,
        "an entry only answers for its own variable"
    );
    assert_eq!(entry.name(), "A");
    assert_eq!(entry.var_id(), A.id());
    assert_eq!(entry.type_name(), "i32");
    assert_eq!(entry.value_any().downcast_ref::<i32>(), Some(&5));
    assert_eq!(format!("{entry:?}"), "A: 5");
    assert_eq!(format!("{:?}", entry.value_debug()), "5");
    // An entry outlives its context.
    drop(ctx);
    assert_eq!(entry.get(&A), Some(&5));
}

#[test]
fn snapshot_values_keys_and_value_refs() {
    context_var! {
        static A: i32;
        static S: String;
    }
    let ctx = Context::new()
        .with_value(&A, 1)
        .with_value(&S, "s".to_string());
    let snapshot = ctx.snapshot();
    assert_eq!(snapshot.len(), 2);
    assert!(!snapshot.is_empty());
    assert_eq!(snapshot.get(&A), Some(&1));
    assert!(snapshot.contains(&S));
    let keys: BTreeSet<VarId> = snapshot.keys().collect();
    assert_eq!(keys, BTreeSet::from([A.id(), S.id()]));
    assert_eq!(snapshot.values().len(), 2);
    let mut ints = 0;
    let mut strings = 0;
    for value in snapshot.values() {
        if let Some(v) = value.downcast_ref::<i32>() {
            assert_eq!(*v, 1);
            assert_eq!(value.entry().var_id(), A.id());
            assert_eq!(format!("{value:?}"), "1");
            ints += 1;
        }
        if let Some(v) = value.downcast_ref::<String>() {
            assert_eq!(v, "s");
            assert_eq!(format!("{value:?}"), r#""s""#);
            strings += 1;
        }
    }
    assert_eq!((ints, strings), (1, 1));
    // Borrowing and owning iteration agree.
    let borrowed: BTreeSet<VarId> = (&snapshot).into_iter().map(|e| e.var_id()).collect();
    let owned: BTreeSet<VarId> = snapshot.clone().into_iter().map(|e| e.var_id()).collect();
    assert_eq!(borrowed, owned);
    assert_eq!(ctx.snapshot().keys().len(), 2);
}

#[test]
fn iteration_order_does_not_depend_on_insertion_order() {
    static VARS: [ContextVar<u8>; 40] = [const { contextvars::context_var!(u8, "v") }; 40];
    let forward = VARS
        .iter()
        .fold(Context::new(), |ctx, var| ctx.with_value(var, 1));
    let backward = VARS
        .iter()
        .rev()
        .fold(Context::new(), |ctx, var| ctx.with_value(var, 1));
    let f: Vec<VarId> = forward.snapshot().keys().collect();
    let b: Vec<VarId> = backward.snapshot().keys().collect();
    assert_eq!(f.len(), 40);
    assert_eq!(f, b);
    assert_eq!(f.iter().collect::<BTreeSet<_>>().len(), 40);
}

#[test]
fn iterator_is_a_snapshot() {
    static A: ContextVar<i32> = contextvars::context_var!(i32, "a");
    static B: ContextVar<i32> = contextvars::context_var!(i32, "b");
    static C: ContextVar<i32> = contextvars::context_var!(i32, "c");
    let ctx = Context::new();
    ctx.run(|| {
        drop(A.set(1));
        let iter = ctx.snapshot().into_iter();
        let snapshot = ctx.snapshot();
        let keys = snapshot.keys();
        drop(B.set(2));
        drop(C.set(3));
        let token = A.set(10);
        // Made before the sets: none of them shows.
        assert_eq!(iter.len(), 1);
        let entries: Vec<_> = iter.collect();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].get(&A), Some(&1));
        assert_eq!(keys.collect::<Vec<_>>(), vec![A.id()]);
        assert_eq!(snapshot.len(), 1);
        assert_eq!(snapshot.get(&A), Some(&1));
        assert_eq!(ctx.snapshot().len(), 3);
        A.reset(token).unwrap();
    });
    // Iterating while code inside sets variables (CPython: no "changed size" error).
    let mut seen = 0;
    ctx.run(|| {
        for entry in ctx.snapshot() {
            seen += 1;
            let _ = entry;
            drop(B.set(100 + seen));
        }
    });
    assert_eq!(seen, 3);
    assert_eq!(ctx.snapshot().get(&B).cloned(), Some(103));
}

#[test]
fn equality_of_copies_and_of_empty_contexts() {
    static V: ContextVar<i32> = contextvars::context_var!(i32, "v");
    assert_eq!(Context::new(), Context::new());
    isolated(|| {
        let _keep = V.set(1);
        let a = copy_context();
        let b = copy_context();
        assert_eq!(a, b);
        assert!(a.snapshot().ptr_eq(&b.snapshot()));
        assert_eq!(a.copy(), a);
        // Copies are equal until one of them changes.
        b.run(|| drop(V.set(2)));
        assert_ne!(a, b);
        assert!(!a.snapshot().ptr_eq(&b.snapshot()));
        b.run(|| drop(V.set(1)));
        // Equal contents in different value objects: equal, with the values' `==`.
        assert_eq!(a, b);
        assert!(!a.snapshot().ptr_eq(&b.snapshot()));
    });
}

#[test]
fn equality_uses_partial_eq_where_the_type_has_it() {
    context_var! {
        static TYPED: String;
        static FLOAT: f64;
    }
    /// A value type without `PartialEq`: compared by identity.
    struct NoEq(#[allow(dead_code)] String);
    static OPAQUE: ContextVar<NoEq> = contextvars::context_var!(NoEq, "opaque");
    let a = Context::new().with_value(&TYPED, "x".to_string());
    let b = Context::new().with_value(&TYPED, "x".to_string());
    assert_eq!(a, b, "equal values of a PartialEq type");
    assert_ne!(a, Context::new().with_value(&TYPED, "y".to_string()));
    assert_eq!(a.snapshot(), b.snapshot());

    let a = Context::new().with_value(&OPAQUE, NoEq("x".to_string()));
    let b = Context::new().with_value(&OPAQUE, NoEq("x".to_string()));
    assert_ne!(a, b, "values without PartialEq compare by identity");
    assert_eq!(a, a.copy(), "the same value object is equal to itself");

    // NaN: the same value object is equal to itself (identity first), two NaNs are not.
    let nan = Context::new().with_value(&FLOAT, f64::NAN);
    assert_eq!(nan, nan.copy());
    assert_ne!(nan, Context::new().with_value(&FLOAT, f64::NAN));

    // Different key sets.
    let one = Context::new().with_value(&TYPED, "x".to_string());
    let two = one.with_value(&FLOAT, 1.0);
    assert_ne!(one, two);
    assert_ne!(two, one);
}

#[test]
fn with_value_builds_without_entering() {
    context_var! {
        static USER: u32;
        static ROLE: &'static str = "guest";
    }
    isolated(|| {
        let base = Context::new();
        let ctx = base.with_value(&USER, 1).with_value(&ROLE, "admin");
        assert!(
            base.snapshot().is_empty(),
            "with_value leaves the original alone"
        );
        assert_eq!(ctx.snapshot().len(), 2);
        assert!(!USER.is_set(), "nothing was entered");
        assert_eq!(ctx.run(|| (USER.get(), ROLE.get())), (1, "admin"));
        // Overriding a binding.
        let over = ctx.with_value(&USER, 2);
        assert_eq!(over.snapshot().get(&USER).cloned(), Some(2));
        assert_eq!(ctx.snapshot().get(&USER).cloned(), Some(1));
        assert_eq!(over.snapshot().len(), 2);
        // From a running context.
        let _keep = USER.set(9);
        let derived = Context::current().with_value(&ROLE, "ops");
        assert_eq!(derived.run(|| (USER.get(), ROLE.get())), (9, "ops"));
    });
}

#[test]
fn nested_runs_of_different_contexts_form_a_stack() {
    static V: ContextVar<&'static str> =
        contextvars::context_var!(&'static str, "v", default "base");
    let a = Context::new().with_value(&V, "a");
    let b = Context::new().with_value(&V, "b");
    let c = Context::new();
    let trace = a.run(|| {
        let mut trace = vec![V.get()];
        b.run(|| {
            trace.push(V.get());
            c.run(|| trace.push(V.get()));
            trace.push(V.get());
            // a is still entered (by this thread, further down the stack).
            assert!(a.try_run(|| ()).unwrap_err().is_already_entered());
        });
        trace.push(V.get());
        trace
    });
    assert_eq!(trace, vec!["a", "b", "base", "b", "a"]);
}

#[test]
fn current_context_counts_as_entered() {
    std::thread::spawn(|| {
        let here = Context::current();
        let error = here.try_run(|| ()).unwrap_err();
        assert!(error.is_already_entered());
        assert_eq!(
            error.to_string(),
            "cannot enter context: the context is already entered"
        );
        let debug = format!("{error:?}");
        assert!(debug.contains("AlreadyEntered"), "{debug}");
        // A copy is a different object and can be entered.
        assert!(copy_context().try_run(|| ()).is_ok());
    })
    .join()
    .unwrap();
}

#[test]
fn current_handle_sees_sets_made_after_it_was_dropped_and_retaken() {
    static V: ContextVar<i32> = contextvars::context_var!(i32, "v");
    std::thread::spawn(|| {
        let first = Context::current();
        drop(first);
        drop(V.set(1)); // nobody holds a handle now
        let second = Context::current();
        assert_eq!(second.snapshot().get(&V).cloned(), Some(1));
        drop(V.set(2));
        assert_eq!(second.snapshot().get(&V).cloned(), Some(2));
        assert_eq!(second, copy_context());
    })
    .join()
    .unwrap();
}

#[test]
fn current_inside_run_is_that_context() {
    static V: ContextVar<i32> = contextvars::context_var!(i32, "v");
    let ctx = Context::new();
    ctx.run(|| {
        let here = Context::current();
        drop(V.set(1));
        assert_eq!(here.snapshot().get(&V).cloned(), Some(1));
        assert_eq!(here, ctx);
        assert!(here.try_run(|| ()).unwrap_err().is_already_entered());
    });
    assert_eq!(ctx.snapshot().get(&V).cloned(), Some(1));
}

#[test]
fn copy_context_is_o1_and_isolated_from_later_sets() {
    static V: ContextVar<Vec<u8>> = contextvars::context_var!(Vec<u8>, "v");
    isolated(|| {
        let _keep = V.set(vec![1]);
        let copy = copy_context();
        assert!(copy.snapshot().ptr_eq(&Context::current().snapshot()));
        let _keep2 = V.set(vec![2]);
        assert_eq!(copy.snapshot().get(&V).cloned(), Some(vec![1]));
        assert_eq!(copy.run(|| V.get()), vec![1]);
        assert_eq!(V.get(), vec![2]);
    });
}

/// A `Context` is two words (its snapshot's root node, and the shared object its first
/// run makes), and a `Snapshot` one: copying a context and passing it around moves no
/// more than that. Layout is not a public promise; this guards the cost the docs quote.
#[test]
fn handles_are_one_word_per_pointer() {
    use std::mem::size_of;
    assert_eq!(size_of::<contextvars::Snapshot>(), size_of::<usize>());
    assert_eq!(size_of::<Context>(), 2 * size_of::<usize>());
}
