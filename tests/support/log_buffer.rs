//! A log output captured in memory, for the tracing test binaries (`tests/it` and
//! `tests/tracing_global.rs` include it with `#[path]`; each uses part of it).

#![allow(dead_code)]

use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use tracing_subscriber::fmt::MakeWriter;

/// A `Write` and a `MakeWriter` into one shared buffer: `.with_writer(buffer.clone())`.
#[derive(Clone, Default)]
pub(crate) struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Buffer {
    fn bytes(&self) -> MutexGuard<'_, Vec<u8>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many bytes were written.
    pub(crate) fn len(&self) -> usize {
        self.bytes().len()
    }

    /// Everything written.
    pub(crate) fn text(&self) -> String {
        String::from_utf8(self.bytes().clone()).unwrap()
    }

    /// Everything written, by line.
    pub(crate) fn lines(&self) -> Vec<String> {
        self.text().lines().map(str::to_owned).collect()
    }

    /// Every line, parsed as JSON.
    pub(crate) fn json_lines(&self) -> Vec<serde_json::Value> {
        self.json_lines_from(0)
    }

    /// The lines written since the buffer had `start` bytes, parsed as JSON.
    pub(crate) fn json_lines_from(&self, start: usize) -> Vec<serde_json::Value> {
        let bytes = self.bytes()[start..].to_vec();
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(|line| {
                serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
            })
            .collect()
    }
}

impl io::Write for Buffer {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.bytes().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Buffer {
    type Writer = Buffer;

    fn make_writer(&'a self) -> Buffer {
        self.clone()
    }
}
