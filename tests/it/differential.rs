//! Differential testing: random programs of context-variable operations run against the
//! crate and against the plain PEP 567 model in [`differential_model`], which must agree
//! after every operation. The cargo-fuzz target `fuzz/fuzz_targets/differential.rs`
//! drives the same runner from bytes.

#[path = "differential_model.rs"]
mod differential_model;

use differential_model::{Op, Stats, VALUE_RANGE, VAR_COUNT, decode, encode, run, run_bytes};
use proptest::prelude::*;

/// One op, weighted towards the ones that change state and the blocks.
fn op() -> impl Strategy<Value = Op> {
    let var = 0..VAR_COUNT;
    let value = 0..VALUE_RANGE;
    let index = any::<u8>();
    prop_oneof![
        6 => (var.clone(), value.clone()).prop_map(|(var, value)| Op::Set { var, value }),
        4 => index.prop_map(|token| Op::Reset { token }),
        1 => (index, index)
            .prop_map(|(token, var)| Op::ResetWrongVar { token, var }),
        1 => index.prop_map(|token| Op::DropToken { token }),
        2 => var.clone().prop_map(|var| Op::Get { var }),
        2 => Just(Op::CopyContext),
        1 => Just(Op::NewContext),
        2 => Just(Op::Current),
        1 => index.prop_map(|ctx| Op::CopyStored { ctx }),
        2 => (index, var.clone(), value.clone())
            .prop_map(|(ctx, var, value)| Op::WithValue { ctx, var, value }),
        1 => index.prop_map(|ctx| Op::DropStored { ctx }),
        1 => index.prop_map(|ctx| Op::Snapshot { ctx }),
        2 => index.prop_map(|ctx| Op::Check { ctx }),
        2 => (index, index).prop_map(|(a, b)| Op::Eq { a, b }),
        4 => index.prop_map(|ctx| Op::Run { ctx }),
        1 => Just(Op::RunNew),
        1 => (var, value).prop_map(|(var, value)| Op::Scope { var, value }),
        1 => (index, index).prop_map(|(ctx, mode)| Op::Thread { ctx, mode }),
        4 => Just(Op::Exit),
    ]
}

fn program() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(op(), 0..if cfg!(miri) { 24 } else { 96 })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: if cfg!(miri) { 4 } else { 512 },
        // No files: keeps miri free of isolation exceptions; failing programs are
        // printed as code instead (paste them into a regression test below).
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn crate_agrees_with_the_model(ops in program()) {
        run(&ops);
    }

    // Pure model code with no unsafe anywhere near it: nothing for miri to see.
    #[test]
    #[cfg_attr(miri, ignore)]
    fn decode_inverts_encode(ops in prop::collection::vec(op(), 0..32)) {
        prop_assert_eq!(decode(&encode(&ops)), ops);
    }
}

/// Random byte strings (what the fuzzer feeds) decode to programs that run, and together
/// they reach every outcome the runner distinguishes: the generators are not blind to any.
#[test]
fn byte_programs_reach_every_outcome() {
    let (programs, len) = if cfg!(miri) { (2, 64) } else { (300, 400) };
    let mut total = Stats::default();
    for seed in 0..programs {
        total.add(&run_bytes(&crate::pseudo_random_bytes(seed, len)));
    }
    eprintln!("{total:?}");
    assert!(total.sets > 0, "{total:?}");
    if cfg!(miri) {
        // Two short programs: enough to run the runner, too few to reach everything.
        return;
    }
    assert!(total.resets_ok > 0, "{total:?}");
    assert!(total.resets_different_var > 0, "{total:?}");
    assert!(total.resets_different_context > 0, "{total:?}");
    assert!(total.enter_errors > 0, "{total:?}");
    assert!(total.runs > 0, "{total:?}");
    assert!(total.threads > 0, "{total:?}");
    assert!(total.equalities > 0 && total.unequal > 0, "{total:?}");
    assert!(total.thread_enter_errors > 0, "{total:?}");
    assert!(total.max_depth >= 4, "{total:?}");
}

// ----------------------------------------------------------------------- fixed programs
//
// Each is a scenario of python-semantics.md §5, written as a program so that the model,
// not the test, says what must happen.

use Op::*;

/// §5.3: a token works only in the context object it was made in; a copy is a different
/// context; re-entering the original later makes it work again.
#[test]
fn program_token_identity_across_contexts() {
    run(&[
        NewContext,
        Run { ctx: 0 },
        Set { var: 0, value: 1 },
        Exit,
        CopyStored { ctx: 0 },
        Run { ctx: 1 },
        Reset { token: 0 }, // DifferentContext: the copy is another object
        Exit,
        Reset { token: 0 }, // DifferentContext: the program's own context
        Run { ctx: 0 },
        Reset { token: 0 }, // Ok
        Exit,
        Check { ctx: 0 },
        Check { ctx: 1 },
    ]);
}

/// §5.4: stale tokens restore stale values, in any order.
#[test]
fn program_resets_out_of_order() {
    run(&[
        Set { var: 2, value: 0 },
        Set { var: 2, value: 1 },
        Reset { token: 0 },
        Get { var: 2 },
        Reset { token: 0 },
        Get { var: 2 },
        CopyContext,
        Check { ctx: 0 },
    ]);
}

/// §5.10: a context cannot be entered twice at once, by this thread or another one.
#[test]
fn program_reentry_is_an_error() {
    run(&[
        NewContext,
        Run { ctx: 0 },
        Run { ctx: 0 },             // EnterError
        Thread { ctx: 0, mode: 1 }, // EnterError, from another thread
        Current,                    // a handle to the same object
        Run { ctx: 1 },             // EnterError
        Exit,
        Run { ctx: 1 }, // fine after the exit
        Exit,
    ]);
}

/// A context moved to a thread, run there and moved back keeps the thread's sets; the
/// shared object run by a thread too; a handle to a thread's base context outlives it.
#[test]
fn program_thread_hand_off() {
    run(&[
        Set { var: 4, value: 2 },
        Thread { ctx: 0, mode: 0 },
        Set { var: 0, value: 3 },
        Exit,
        Check { ctx: 0 },
        Thread { ctx: 0, mode: 1 },
        Reset { token: 0 },
        Set { var: 5, value: 1 },
        Exit,
        Check { ctx: 0 },
        Thread { ctx: 0, mode: 2 },
        Current,
        Set { var: 1, value: 0 },
        Exit,
        Check { ctx: 1 },
        Run { ctx: 1 },
        Set { var: 3, value: 3 },
        Exit,
        Check { ctx: 1 },
    ]);
}

/// §5.8: equality by value for `PartialEq` variables, by object identity for the others.
#[test]
fn program_equality_by_value_and_by_identity() {
    run(&[
        WithValue {
            ctx: 0,
            var: 0,
            value: 1,
        },
        WithValue {
            ctx: 9,
            var: 0,
            value: 1,
        },
        Eq { a: 0, b: 1 }, // equal: `A` compares by value
        WithValue {
            ctx: 9,
            var: 2,
            value: 1,
        },
        WithValue {
            ctx: 9,
            var: 2,
            value: 1,
        },
        Eq { a: 2, b: 3 }, // equal: `C` compares by value too (one semantics)
        CopyStored { ctx: 2 },
        Eq { a: 2, b: 4 }, // equal: a copy shares the value object
    ]);
}
