//! A tour of the overview this project started from (`seed-overview.md`), step by step,
//! doing each thing the correct way and printing what happens.
//!
//! ```text
//! cargo run --example tour
//! ```
//!
//! Several lines of that overview are not valid Python (`context[user_id] = 12345`,
//! `user_id.reset()` without a token, `Context().set(...)`, `get_current_context()`), and
//! `with contextvars.ContextVar('user_id').set(...)` sets a *new* variable rather than
//! `user_id`. Each step says what the overview wrote and what it becomes here. Every
//! printed value is also checked with `assert!`, so the tour fails loudly if the crate's
//! behaviour changes.

use contextvars::{Context, context_var, copy_context};

context_var! {
    /// `user_id = contextvars.ContextVar('user_id')`: no default, as in the overview.
    static USER_ID: u64;
}

/// The overview's `process_user_data()`: reads the variable in whatever context it is
/// called from. Python would raise `LookupError` with no value and no default; here
/// `try_get` returns it as an error.
fn process_user_data() -> String {
    match USER_ID.try_get() {
        Ok(id) => format!("Processing data for user ID: {id}"),
        Err(error) => format!("No user ID: {error}"),
    }
}

/// Prints `process_user_data()`'s line, indented, and returns it for the asserts.
fn process() -> String {
    let line = process_user_data();
    println!("   -> {line}");
    line
}

fn heading(text: &str) {
    println!();
    println!("{text}");
}

fn main() {
    heading("1. ContextVar creation");
    println!("   overview: user_id = contextvars.ContextVar('user_id')");
    println!("   Rust:     context_var! {{ static USER_ID: u64; }}");
    println!("   -> {USER_ID:?}, name {:?}", USER_ID.name());
    assert_eq!(USER_ID.name(), "USER_ID");
    assert!(USER_ID.try_get().is_err(), "no value and no default yet");
    process();

    heading("2. Setting and getting in a context");
    println!(
        "   overview: context = Context(); context[user_id] = 12345   (a Context is read-only)"
    );
    println!("   Rust:     let context = Context::new(); context.run(|| USER_ID.set(12345))");
    let context = Context::new();
    context.run(|| drop(USER_ID.set(12345))); // dropping the token keeps the value
    println!(
        "   context.get(&USER_ID) = {:?}",
        context.snapshot().get(&USER_ID).cloned()
    );
    assert_eq!(context.snapshot().get(&USER_ID).cloned(), Some(12345));
    println!("   context.run(process_user_data):");
    assert_eq!(context.run(process), "Processing data for user ID: 12345");
    println!("   or functionally: Context::new().with_value(&USER_ID, 12345)");
    let same = Context::new().with_value(&USER_ID, 12345);
    assert_eq!(same, context);
    println!("   -> equal to the context above: {}", same == context);
    println!("   outside any run, this thread's own context is untouched:");
    assert!(process().starts_with("No user ID"));

    heading("3. A scoped set (Python 3.14's `with user_id.set(67890):`)");
    println!("   overview: with contextvars.ContextVar('user_id').set(67890):   (a new variable!)");
    println!(
        "   Rust:     {{ let _guard = USER_ID.scoped_set(67890); ... }}   (the same variable)"
    );
    context.run(|| {
        {
            let _guard = USER_ID.scoped_set(67890);
            assert_eq!(process(), "Processing data for user ID: 67890");
        }
        println!("   after the block the guard has reset it:");
        assert_eq!(process(), "Processing data for user ID: 12345");
    });

    heading("4. The original context is unchanged");
    println!("   overview: print(user_id.get())   # 12345");
    let value = context.run(|| USER_ID.get());
    println!("   -> context.run(|| USER_ID.get()) = {value}");
    assert_eq!(value, 12345);

    heading("5. Resetting with the token from set");
    println!("   overview: user_id.reset()   (Python needs the Token that set returned)");
    println!("   Rust:     let token = USER_ID.set(555); USER_ID.reset(token)");
    context.run(|| {
        let token = USER_ID.set(555);
        assert_eq!(process(), "Processing data for user ID: 555");
        USER_ID.reset(token).expect("same variable, same context");
        println!("   after reset(token): back to the value before the set");
        assert_eq!(process(), "Processing data for user ID: 12345");
    });
    println!("   in a context where it was unset before, reset unsets it again (no None:");
    println!("   Python raises LookupError, Rust's try_get returns it):");
    Context::new().run(|| {
        let token = USER_ID.set(1);
        USER_ID.reset(token).expect("same variable, same context");
        assert!(USER_ID.try_get().is_err());
        assert_eq!(USER_ID.get_or(0), 0);
        process();
        println!("   -> USER_ID.get_or(0) = {}", USER_ID.get_or(0));
    });

    heading("6. A factory function");
    println!("   overview: return contextvars.Context().set(user_id, 12345)   (no such method)");
    println!("   Rust:     Context::new().with_value(&USER_ID, 12345)");
    fn create_context_with_user_id() -> Context {
        Context::new().with_value(&USER_ID, 12345)
    }
    let new_context = create_context_with_user_id();
    println!("   new_context.run(process_user_data):");
    assert_eq!(
        new_context.run(process),
        "Processing data for user ID: 12345"
    );
    println!("   (the overview calls process_user_data() outside it, which sees nothing:)");
    assert!(process().starts_with("No user ID"));

    heading("7. The current context, and setting in it");
    println!("   overview: contextvars.get_current_context()[user_id] = 67890");
    println!("   Rust:     let current = Context::current(); let token = USER_ID.set(67890)");
    let current = Context::current();
    let token = USER_ID.set(67890);
    assert_eq!(process(), "Processing data for user ID: 67890");
    println!(
        "   -> current.get(&USER_ID) = {:?}",
        current.snapshot().get(&USER_ID).cloned()
    );
    assert_eq!(current.snapshot().get(&USER_ID).cloned(), Some(67890));
    let entered = current.try_run(|| ()).is_err();
    println!("   -> current.try_run(..) fails while this thread runs it: {entered}");
    assert!(entered);

    heading("8. A scoped set in the current context");
    println!("   overview: with contextvars.ContextVar('user_id').set(1024):");
    {
        let _guard = USER_ID.scoped_set(1024);
        assert_eq!(process(), "Processing data for user ID: 1024");
    }
    println!("   after the block (the overview says None; it is the value before the block):");
    assert_eq!(process(), "Processing data for user ID: 67890");

    heading("9. Threads");
    println!("   a new thread starts with an empty context:");
    let in_new_thread = std::thread::spawn(process).join().expect("thread panicked");
    assert!(in_new_thread.starts_with("No user ID"));
    println!("   a thread that runs a copy_context() sees this thread's values:");
    let ctx = copy_context();
    let in_copy = std::thread::spawn(move || ctx.run(process))
        .join()
        .expect("thread panicked");
    assert_eq!(in_copy, "Processing data for user ID: 67890");
    println!("   and its sets stay in the copy:");
    let ctx = copy_context();
    std::thread::scope(|s| {
        s.spawn(|| ctx.run(|| drop(USER_ID.set(7))));
    });
    println!(
        "   -> copy: {:?}, here: {}",
        ctx.snapshot().get(&USER_ID).cloned(),
        USER_ID.get()
    );
    assert_eq!(ctx.snapshot().get(&USER_ID).cloned(), Some(7));
    assert_eq!(USER_ID.get(), 67890);

    heading("10. Resetting the current context's value");
    println!("   overview: user_id.reset(); print(user_id.get())   # None");
    println!("   Rust:     USER_ID.reset(token)");
    USER_ID.reset(token).expect("same variable, same context");
    assert!(process().starts_with("No user ID"));

    heading("11. Printing a Context with Debug");
    println!("   -> {context:?}");
    println!("   -> {:?}", Context::new());
    assert_eq!(format!("{context:?}"), "Context {USER_ID: 12345}");
    assert_eq!(format!("{:?}", Context::new()), "Context {}");

    println!();
    println!("All steps behaved as described.");
}
