//! The request-metadata example under load: 1,000 requests, 64 at a time, to
//! an axum service on 127.0.0.1; every event from the middleware, the handler, a
//! `tokio::spawn`ed helper, `spawn_blocking`, a rayon `par_iter` and `join`, and a
//! `std::thread` is parsed back from the JSON output (each line a JSON object) and read
//! back from the text output, and must carry its own request's `request_id` and
//! `tenant` fields and sit in its own request's span.
//!
//! A test binary of its own: events on rayon workers, blocking threads and spawned
//! threads reach only the *global* subscriber, which a process can install once.

#![cfg(all(feature = "rayon", feature = "tokio"))]

#[path = "../examples/request_metadata.rs"]
mod example;

#[test]
#[cfg_attr(miri, ignore)] // sockets
fn every_event_of_every_request_carries_its_request() {
    let (json, text) = example::run(1_000, 64).unwrap();
    let expected = 1_000 * example::MESSAGES.len();
    assert_eq!((json, text), (expected, expected));
}

#[test]
fn the_checks_catch_a_line_of_another_request() {
    // The checks themselves: one line moved to another request's span fails them.
    let line = |id: u64, rid: u64, message: &str| {
        format!(
            r#"{{"fields":{{"message":"{message}","request_id":{id},"tenant":"tenant-{}"}},"span":{{"name":"request","rid":{rid}}},"spans":[{{"name":"request","rid":{rid}}}]}}"#,
            id % 4
        )
    };
    let good: Vec<String> = example::MESSAGES
        .iter()
        .map(|message| {
            let mut line = line(1, 1, message);
            if *message == "tokio::spawn: own tenant" {
                line = line.replace("tenant-1", "tenant-1/helper");
            }
            line
        })
        .collect();
    assert_eq!(example::check_json(&good, 1), Ok(()));
    let mut moved = good.clone();
    moved[1] = line(1, 2, example::MESSAGES[1]);
    assert!(example::check_json(&moved, 1).is_err());
    let mut missing = good;
    missing.pop();
    assert!(example::check_json(&missing, 1).is_err());
}
