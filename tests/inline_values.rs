//! Values stored inline: a `static` declared with `context_var!` whose type is
//! `Copy + Eq` and fits a word keeps its values in the snapshot's entries themselves.
//! These tests check what that changes (no allocation per set, reads without a borrow)
//! and what it must not change (every read, print, comparison and iteration of a
//! snapshot, for inline and boxed variables side by side), counting allocations with a
//! global allocator.

use std::cell::Cell;
use std::collections::BTreeMap;

use contextvars::{Context, ContextVar, context_var, copy_context};

#[path = "support/counting_alloc.rs"]
mod counting_alloc;
use counting_alloc::allocations;

/// Runs `f` on a thread of its own, whose context starts empty, and propagates its panic.
fn on_fresh_thread(f: impl FnOnce() + Send + 'static) {
    std::thread::spawn(f).join().unwrap();
}

// ------------------------------------------------------------------------- variables

/// A field-less enum: `Copy + Eq`, one byte.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Tier {
    Free,
    Paid,
}

/// `Copy + Eq` without `Debug`.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Opaque(u32);

/// `Copy` with a `Clone` that is not a copy (clippy calls it a bug; the crate must not
/// care): counts its calls.
#[derive(Copy, PartialEq, Eq, Debug)]
struct CountedClone(u32);

thread_local! {
    static CLONES: Cell<u32> = const { Cell::new(0) };
}

#[allow(clippy::non_canonical_clone_impl, reason = "what the test is about")]
impl Clone for CountedClone {
    fn clone(&self) -> Self {
        CLONES.with(|clones| clones.set(clones.get() + 1));
        CountedClone(self.0 + 1000)
    }
}

context_var! {
    /// Inline: `u64`.
    static REQUEST_ID: u64;
    /// Inline, with a default.
    static RETRIES: u32 = 3;
    /// Inline: a field-less enum.
    static TIER: Tier;
    /// Inline: a pair that fills the word.
    static PAIR: (u32, u32);
    /// Inline: zero-sized.
    static UNIT: ();
    /// Inline, without `Debug`.
    static OPAQUE: Opaque;
    /// Inline, with a lazy default.
    static LAZY: u64 = lazy 77;
    /// Inline, with a `Clone` that is not a copy.
    static COUNTED: CountedClone;
    /// Boxed: not `Eq`.
    static RATIO: f64;
    /// Boxed: too big for a word.
    static WIDE: u128;
    /// Boxed: not `Copy`.
    static NAME: String;
}

context_var! {
    /// Inline, with a name of its own.
    static NAMED: u64 as "request_id";
    /// Inline, with a name of its own and a default.
    static NAMED_DEFAULT: u32 as "retries" = 3;
    /// Boxed, with a name of its own and a lazy default.
    static NAMED_LAZY: String as "user" = lazy String::from("anonymous");
}

/// Boxed: the expression form (its value could be moved, so it is never inline).
static EXPRESSION: ContextVar<u64> = contextvars::context_var!(u64, "expression");

/// Makes sure the thread's own frame holds its snapshot alone and has room, so that a
/// set writes in place: binds every variable of the test once.
fn warm_up() {
    drop(REQUEST_ID.set(0));
    drop(EXPRESSION.set(0));
    drop(TIER.set(Tier::Free));
    drop(PAIR.set((0, 0)));
}

// --------------------------------------------------------------------------- behaviour

#[test]
fn a_set_and_reset_of_an_inline_value_allocates_nothing() {
    on_fresh_thread(|| {
        warm_up();
        let (count, ()) = allocations(|| {
            for i in 0..100 {
                let token = REQUEST_ID.set(i);
                assert_eq!(REQUEST_ID.get(), i);
                REQUEST_ID.reset(token).unwrap();
            }
        });
        assert_eq!(count, 0, "inline set + reset allocated");
        let (count, ()) = allocations(|| {
            for i in 0..100 {
                let value = REQUEST_ID.scope(i, || REQUEST_ID.get());
                assert_eq!(value, i);
                let _scoped = TIER.scoped_set(Tier::Paid);
                assert_eq!(TIER.get(), Tier::Paid);
            }
        });
        assert_eq!(count, 0, "inline scope / scoped_set allocated");
    });
}

#[test]
fn a_boxed_value_still_allocates_one_binding_per_set() {
    on_fresh_thread(|| {
        warm_up();
        let (count, ()) = allocations(|| {
            let token = EXPRESSION.set(5);
            EXPRESSION.reset(token).unwrap();
        });
        assert_eq!(count, 1, "the expression form boxes its values");
        drop(WIDE.set(0));
        let (count, ()) = allocations(|| drop(WIDE.set(u128::MAX)));
        assert_eq!(count, 1, "a u128 does not fit the word");
        drop(RATIO.set(0.0));
        let (count, ()) = allocations(|| drop(RATIO.set(0.5)));
        assert_eq!(count, 1, "an f64 is not Eq");
    });
}

#[test]
fn reads_see_inline_values_in_every_form() {
    on_fresh_thread(|| {
        assert!(REQUEST_ID.try_get().is_err());
        assert_eq!(RETRIES.get(), 3);
        assert_eq!(LAZY.get(), 77);
        drop(REQUEST_ID.set(41));
        drop(RETRIES.set(4));
        drop(LAZY.set(78));
        drop(PAIR.set((1, u32::MAX)));
        drop(UNIT.set(()));
        assert_eq!(REQUEST_ID.get(), 41);
        assert_eq!(REQUEST_ID.try_get().unwrap(), 41);
        assert_eq!(REQUEST_ID.get_or(0), 41);
        assert_eq!(REQUEST_ID.with(|id| *id + 1), 42);
        assert_eq!(REQUEST_ID.with_or(&0, |id| *id), 41);
        assert!(REQUEST_ID.is_set());
        assert_eq!(RETRIES.get(), 4);
        assert_eq!(LAZY.get(), 78);
        assert_eq!(PAIR.get(), (1, u32::MAX));
        UNIT.get();
        assert!(UNIT.is_set());
    });
}

#[test]
fn a_set_inside_a_read_of_an_inline_value_does_not_change_what_the_read_sees() {
    on_fresh_thread(|| {
        drop(REQUEST_ID.set(1));
        let seen = REQUEST_ID.with(|id| {
            // No borrow of the snapshot is held: the set writes in place, and the read's
            // value is its own copy.
            drop(REQUEST_ID.set(2));
            assert_eq!(REQUEST_ID.get(), 2);
            *id
        });
        assert_eq!(seen, 1);
        assert_eq!(REQUEST_ID.get(), 2);
    });
}

#[test]
fn get_clones_an_inline_value_with_its_own_clone() {
    on_fresh_thread(|| {
        drop(COUNTED.set(CountedClone(1)));
        CLONES.with(|clones| clones.set(0));
        // `get` is `T::clone` of the current value, whatever `Clone` does.
        assert_eq!(COUNTED.get(), CountedClone(1001));
        assert_eq!(CLONES.with(Cell::get), 1);
        // `with` hands over the value itself.
        assert_eq!(COUNTED.with(|value| value.0), 1);
    });
}

#[test]
fn tokens_of_inline_values_reset_and_report_old_values() {
    on_fresh_thread(|| {
        let first = TIER.set(Tier::Free);
        assert_eq!(first.old_value(), None);
        let second = TIER.set(Tier::Paid);
        assert_eq!(second.old_value(), Some(&Tier::Free));
        TIER.reset(second).unwrap();
        assert_eq!(TIER.get(), Tier::Free);
        TIER.reset(first).unwrap();
        assert!(!TIER.is_set());
    });
}

#[test]
fn snapshots_print_compare_and_iterate_inline_and_boxed_values_alike() {
    on_fresh_thread(|| {
        drop(REQUEST_ID.set(7));
        drop(TIER.set(Tier::Paid));
        drop(OPAQUE.set(Opaque(3)));
        drop(EXPRESSION.set(8));
        drop(NAME.set("ada".to_owned()));
        let snapshot = copy_context().snapshot();
        let printed: BTreeMap<&str, String> = snapshot
            .iter()
            .map(|entry| (entry.name(), format!("{:?}", entry.value_debug())))
            .collect();
        assert_eq!(printed["REQUEST_ID"], "7");
        assert_eq!(printed["TIER"], "Paid");
        assert_eq!(
            printed["OPAQUE"],
            format!("<{}>", std::any::type_name::<Opaque>())
        );
        assert_eq!(printed["expression"], "8");
        assert_eq!(printed["NAME"], "\"ada\"");
        for entry in snapshot.iter() {
            match entry.name() {
                "REQUEST_ID" => {
                    assert_eq!(entry.var_id(), REQUEST_ID.id());
                    assert_eq!(entry.get(&REQUEST_ID), Some(&7));
                    assert_eq!(entry.get(&EXPRESSION), None);
                    assert_eq!(entry.value_any().downcast_ref::<u64>(), Some(&7));
                    assert_eq!(entry.type_name(), "u64");
                    assert_eq!(format!("{entry:?}"), "REQUEST_ID: 7");
                }
                "expression" => {
                    assert_eq!(entry.var_id(), EXPRESSION.id());
                    assert_eq!(entry.get(&EXPRESSION), Some(&8));
                }
                _ => {}
            }
        }
        assert_eq!(snapshot.get(&TIER), Some(&Tier::Paid));
        assert_eq!(snapshot.get(&REQUEST_ID), Some(&7));
        // Owned iteration clones entries; dropping them drops nothing of the snapshot's.
        let owned: Vec<_> = snapshot.clone().into_iter().collect();
        assert_eq!(owned.len(), snapshot.len());
        drop(owned);
        assert_eq!(copy_context().snapshot().get(&REQUEST_ID), Some(&7));

        // `==`: the same bindings compare equal, also when made by separate sets.
        let a = copy_context();
        let b = copy_context();
        assert_eq!(a, b);
        let c = Context::new().with_value(&REQUEST_ID, 7);
        let d = Context::new().with_value(&REQUEST_ID, 7);
        assert_eq!(c, d, "inline values compare by ==");
        let e = Context::new().with_value(&REQUEST_ID, 8);
        assert_ne!(c, e);
        let f = Context::new().with_value(&OPAQUE, Opaque(1));
        let g = Context::new().with_value(&OPAQUE, Opaque(1));
        assert_eq!(f, g, "an inline type is Eq, so == decides");
    });
}

#[test]
fn inline_values_follow_copies_into_threads_and_runs() {
    on_fresh_thread(|| {
        drop(REQUEST_ID.set(11));
        let ctx = copy_context();
        drop(REQUEST_ID.set(12));
        let seen = std::thread::spawn(move || {
            let in_run = ctx.run(|| {
                drop(REQUEST_ID.set(13));
                REQUEST_ID.get()
            });
            (
                in_run,
                ctx.run(|| REQUEST_ID.get()),
                REQUEST_ID.try_get().is_err(),
            )
        })
        .join()
        .unwrap();
        assert_eq!(seen, (13, 13, true));
        assert_eq!(REQUEST_ID.get(), 12);
    });
}

#[test]
fn many_inline_and_boxed_values_through_a_deep_trie() {
    // Enough variables that the snapshot is a trie, with both kinds of entry in it.
    static MANY: [ContextVar<u64>; 200] = [const { contextvars::context_var!(u64, "many") }; 200];
    on_fresh_thread(|| {
        for (i, var) in MANY.iter().enumerate() {
            drop(var.set(i as u64));
        }
        for round in 0..3u64 {
            let token = REQUEST_ID.set(round);
            let ctx = copy_context();
            drop(TIER.set(Tier::Free));
            assert_eq!(ctx.run(|| REQUEST_ID.get()), round);
            for (i, var) in MANY.iter().enumerate() {
                assert_eq!(var.get(), i as u64);
            }
            REQUEST_ID.reset(token).unwrap();
        }
        let snapshot = copy_context().snapshot();
        assert_eq!(snapshot.get(&TIER), Some(&Tier::Free));
        assert!(snapshot.len() >= 201);
    });
}

// ----------------------------------------------------------------- the hidden constructor

/// A static whose `__in_static` names *another* static: the crate must notice and box its
/// values (an inline entry leads to its variable through that function).
static IMPOSTOR: ContextVar<u64> = contextvars::context_var!(u64, "impostor")
    .__in_static(&REQUEST_ID, Some(contextvars::__private::CopyEq::new()));

/// Inline, through the hidden constructors, with traits that say "no `==`": contexts
/// still compare its values, with the `==` of the `Copy + Eq` proof.
static NO_TRAITS: ContextVar<u64> =
    ContextVar::__new("no_traits", || contextvars::__private::ValueTraits::NONE)
        .__in_static(&NO_TRAITS, Some(contextvars::__private::CopyEq::new()));

/// Boxed, the expression form, of the same type as `NAME` (whose bindings refer to the
/// `static` instead of copying its id, name and traits).
static NAME_EXPRESSION: ContextVar<String> = contextvars::context_var!(String, "name_expr");

#[test]
fn a_boxed_static_and_the_expression_form_read_print_and_compare_alike() {
    on_fresh_thread(|| {
        drop(NAME.set(String::from("ada")));
        drop(NAME_EXPRESSION.set(String::from("ada")));
        drop(WIDE.set(u128::MAX));
        assert_eq!(NAME.get(), "ada");
        assert_eq!(NAME_EXPRESSION.get(), "ada");
        assert_eq!(WIDE.get(), u128::MAX);
        let snapshot = copy_context().snapshot();
        let find = |id| {
            snapshot
                .iter()
                .find(|entry| entry.var_id() == id)
                .expect("bound")
        };
        let (item, expression) = (find(NAME.id()), find(NAME_EXPRESSION.id()));
        assert_eq!(item.name(), "NAME");
        assert_eq!(expression.name(), "name_expr");
        assert_eq!(item.get(&NAME), Some(&String::from("ada")));
        assert_eq!(item.get(&NAME_EXPRESSION), None, "another variable's entry");
        assert_eq!(expression.get(&NAME_EXPRESSION), Some(&String::from("ada")));
        assert_eq!(item.type_name(), expression.type_name());
        assert_eq!(
            format!("{:?}", item.value_any().downcast_ref::<String>()),
            "Some(\"ada\")"
        );
        assert_eq!(
            find(WIDE.id()).get(&WIDE),
            Some(&u128::MAX),
            "a 16-aligned value"
        );
        // A context holding each compares by value with one made the other way.
        let a = Context::new().with_value(&NAME, String::from("x"));
        let b = Context::new().with_value(&NAME, String::from("x"));
        assert_eq!(a, b);
        let debug = format!("{:?}", a.snapshot());
        assert!(debug.contains("NAME") && debug.contains("\"x\""), "{debug}");
    });
}

#[test]
fn a_static_that_names_another_variable_is_never_inline() {
    on_fresh_thread(|| {
        drop(IMPOSTOR.set(0));
        let (count, ()) = allocations(|| drop(IMPOSTOR.set(5)));
        assert_eq!(count, 1, "boxed, since `this` is not the variable itself");
        let snapshot = copy_context().snapshot();
        let entry = snapshot
            .iter()
            .find(|entry| entry.var_id() == IMPOSTOR.id())
            .expect("bound");
        assert_eq!(entry.name(), "impostor");
        assert_eq!(entry.get(&IMPOSTOR), Some(&5));
        assert_eq!(IMPOSTOR.get(), 5);
    });
}

#[test]
fn inline_values_compare_with_the_proofs_eq_whatever_the_traits_say() {
    on_fresh_thread(|| {
        let (count, base) = allocations(|| Context::new().with_value(&NO_TRAITS, 1));
        // The context's root node only: the value is inline.
        assert_eq!(count, 1);
        let x = base.with_value(&EXPRESSION, 2);
        let y = base.with_value(&EXPRESSION, 2);
        assert_eq!(x, y, "same bindings, made by separate calls");
        assert_ne!(base, Context::new().with_value(&NO_TRAITS, 2));
        assert_eq!(base.run(|| NO_TRAITS.get()), 1);
        // No `Debug` in the traits: printed as the type's name.
        assert_eq!(format!("{base:?}"), "Context {no_traits: <u64>}");
    });
}

/// A field then padding.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Padded(u8, u32);

static FORTY_TWO: u64 = 42;

context_var! {
    /// Inline, with padding bytes in the word.
    static PADDED: Padded;
    /// Inline: a reference.
    static REFERENCE: &'static u64;
    /// Inline: one byte.
    static BYTE: u8;
}

#[test]
fn padded_zero_sized_reference_and_byte_values_round_trip() {
    on_fresh_thread(|| {
        let ctx = Context::new()
            .with_value(&PADDED, Padded(1, 2))
            .with_value(&UNIT, ())
            .with_value(&REFERENCE, &FORTY_TWO)
            .with_value(&BYTE, 3);
        let copy = ctx.copy();
        ctx.run(|| {
            assert_eq!(PADDED.get(), Padded(1, 2));
            UNIT.get();
            assert_eq!(*REFERENCE.get(), 42);
            assert!(std::ptr::eq(REFERENCE.get(), &FORTY_TWO));
            assert_eq!(BYTE.get(), 3);
            let token = BYTE.set(4);
            assert_eq!(token.old_value(), Some(&3));
            BYTE.reset(token).unwrap();
        });
        assert_eq!(ctx, copy);
        for entry in ctx.snapshot() {
            let clone = entry.clone();
            assert_eq!(clone.name(), entry.name());
            assert_eq!(clone.type_name(), entry.type_name());
        }
    });
}

#[test]
fn a_static_with_a_name_of_its_own_is_inline_too() {
    on_fresh_thread(|| {
        assert_eq!(NAMED.name(), "request_id");
        assert_eq!(NAMED_DEFAULT.name(), "retries");
        assert_eq!(NAMED_DEFAULT.get(), 3);
        assert_eq!(NAMED_LAZY.name(), "user");
        assert_eq!(NAMED_LAZY.get(), "anonymous");
        drop(NAMED.set(0));
        drop(NAMED_DEFAULT.set(0));
        let (count, ()) = allocations(|| {
            let _id = NAMED.scoped_set(9);
            let _retries = NAMED_DEFAULT.scoped_set(4);
            assert_eq!((NAMED.get(), NAMED_DEFAULT.get()), (9, 4));
        });
        assert_eq!(count, 0, "named statics store inline");
        drop(NAMED.set(7));
        let printed = format!("{:?}", copy_context());
        assert!(printed.contains("request_id: 7"), "{printed}");
    });
}
