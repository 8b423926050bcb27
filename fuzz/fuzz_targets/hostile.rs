//! Hostile-driver fuzz target (issue 11): a custom rayon `ParallelIterator` drives the
//! consumer that `in_copied_context()` hands it through a program decoded from the
//! input: splits, reducers, folders made, fed, completed, dropped and `mem::forget`-ten in
//! any order, inside and across nested `Context::run`s, with panics injected into the
//! consuming closure and consumers moved to other threads. A model checks every read of
//! the closures and of the driver after every op; any difference panics, and ASAN (the
//! nightly run) catches what a broken frame switch would free too early.
//!
//! The driver, its model and its byte decoder are the ones the proptest in
//! `tests/it/hostile.rs` uses, included here by path. Run from the repository root:
//!
//! ```text
//! cargo fuzz run hostile                               # nightly, with ASAN
//! cargo fuzz run -s none hostile fuzz/corpus/hostile   # stable, no sanitizer
//! ```
//!
//! Set `HOSTILE_PRINT=1` to print each input's program (an `Op` list to paste into a
//! regression test in `tests/it/hostile.rs`).

#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../tests/it/hostile_driver.rs"]
mod hostile_driver;

/// Longer inputs add little but time: 1 KiB is a few hundred ops.
const MAX_INPUT: usize = 1024;

fuzz_target!(|data: &[u8]| {
    let data = &data[..data.len().min(MAX_INPUT)];
    let program = hostile_driver::decode(data);
    if std::env::var_os("HOSTILE_PRINT").is_some() {
        eprintln!("program = {program:?}");
    }
    hostile_driver::run(&program);
});
