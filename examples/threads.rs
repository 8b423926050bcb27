//! Context follows the work into std threads: a copy for each child (Python 3.14's
//! `thread_inherit_context`), or one `Context` object that the child writes to (Python's
//! `Thread(context=ctx)`).
//!
//! ```text
//! cargo run --example threads
//! ```

use std::sync::Arc;

use contextvars::thread::{BuilderExt, ScopeExt};
use contextvars::{Context, context_var};

context_var! {
    /// The user the work is done for.
    static USER: String = lazy String::from("anonymous");
    /// How many steps a worker has done.
    static STEPS: u32 = 0;
}

fn main() -> std::io::Result<()> {
    let _user = USER.set("ada".to_owned());

    // A copy: the child sees the parent's values; its sets stay in the child.
    let child = contextvars::thread::spawn(|| {
        drop(STEPS.set(1));
        format!("{} did {} step", USER.get(), STEPS.get())
    });
    println!("spawn: {}", child.join().unwrap());
    assert_eq!(STEPS.get(), 0, "the child's set stayed in the child");

    // A named thread from a Builder, also in a copy.
    let named = std::thread::Builder::new()
        .name("reporter".into())
        .spawn_in_copied_context(|| {
            let name = std::thread::current().name().unwrap_or("?").to_owned();
            format!("{name} works for {}", USER.get())
        })?;
    println!("builder: {}", named.join().unwrap());

    // A Context object: the child's sets are kept by the object, visible afterwards.
    let ctx = Arc::new(Context::new());
    let worker = contextvars::thread::spawn_in(&ctx, || {
        for _ in 0..3 {
            drop(STEPS.set(STEPS.get() + 1));
        }
    });
    // Entering it twice is an error while the worker runs.
    if let Err(error) = contextvars::thread::try_spawn_in(&ctx, || ()) {
        println!("spawn_in again: {error}");
    }
    worker.join().unwrap();
    println!(
        "spawn_in: the context now holds steps = {:?}",
        ctx.snapshot().get(&STEPS).cloned()
    );
    assert_eq!(ctx.snapshot().get(&STEPS).cloned(), Some(3));

    // Scoped threads: borrow locals, and start in a copy.
    let words = ["a", "b", "c"];
    std::thread::scope(|s| {
        let handles: Vec<_> = words
            .iter()
            .map(|word| s.spawn_in_copied_context(move || format!("{word}:{}", USER.get())))
            .collect();
        let joined: Vec<String> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        println!("scope: {joined:?}");
        assert_eq!(joined, ["a:ada", "b:ada", "c:ada"]);
    });

    // A plain std thread starts empty, as in Python.
    let plain = std::thread::spawn(|| USER.get()).join().unwrap();
    assert_eq!(plain, "anonymous");
    println!("std::thread::spawn: {plain} (no context carried)");
    Ok(())
}
