//! Shared pieces of the benchmark tools: realistic wire values, generated fleets, simulated
//! QUIC nodes, an in-process orchestrator, `/proc` readers and order statistics.
//!
//! Benchmarks print figures; nothing here asserts on one, and nothing here is used outside
//! `benches/`.
#![forbid(unsafe_code)]

pub mod fixtures;
pub mod fleet;
pub mod in_process;
pub mod procfs;
pub mod sim;
pub mod stats;

use std::time::Duration;

/// Waits between two looks at something that sends no notification: a thread's or a
/// process's `/proc` entry, a table in the orchestrator's memory.
#[expect(
    clippy::disallowed_methods,
    reason = "polling /proc and in-memory tables at a fixed interval is the measurement"
)]
pub fn pause(d: Duration) {
    std::thread::sleep(d);
}
