//! Differential fuzz target: random programs of context-variable operations (sets, resets
//! with right and wrong tokens, reads with and without defaults, copies, new contexts,
//! nested and re-entered runs, mapping reads, equality, thread hand-off) run against the
//! crate and against the plain PEP 567 model of `tests/it/differential_model.rs`; any
//! difference panics.
//!
//! The runner and its byte decoder are the ones the proptest `tests/it/differential.rs`
//! uses, included here by path. Run from the repository root:
//!
//! ```text
//! cargo fuzz run differential                                   # nightly, with ASAN
//! cargo fuzz run -s none differential fuzz/corpus/differential  # stable, no sanitizer
//! ```
//!
//! A crash prints the program as Rust (`Op` list); paste it into a regression test in
//! `tests/it/differential.rs`.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../tests/it/differential_model.rs"]
mod differential_model;

/// Longer inputs add little but time: 1 KiB is a few hundred ops.
const MAX_INPUT: usize = 1024;

fuzz_target!(|data: &[u8]| {
    let data = &data[..data.len().min(MAX_INPUT)];
    let ops = differential_model::decode(data);
    if std::env::var_os("DIFFERENTIAL_PRINT").is_some() {
        eprintln!("ops = {ops:?}");
    }
    differential_model::run(&ops);
});
