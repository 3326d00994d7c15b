//! Shared pieces of the benchmark tools: realistic wire values, generated fleets, simulated
//! QUIC nodes, an in-process orchestrator, `/proc` readers and order statistics.
//!
//! Benchmarks print figures; nothing here asserts on one, and nothing here is used outside
//! `benches/`.
#![forbid(unsafe_code)]

pub mod api;
pub mod fixtures;
pub mod fleet;
pub mod in_process;
pub mod procfs;
pub mod sim;
pub mod stats;

use std::process::ExitCode;
use std::time::Duration;

/// A tool's `main`: runs `body` on a multi-threaded runtime (of `worker_threads`, or one per
/// core) and turns an error into `NAME: error` on stderr and a failing exit code.
pub fn run_tool(
    name: &str,
    worker_threads: Option<usize>,
    body: impl Future<Output = anyhow::Result<()>>,
) -> ExitCode {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = worker_threads {
        builder.worker_threads(n);
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name}: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(body) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Waits between two looks at something that sends no notification: a thread's or a
/// process's `/proc` entry, a table in the orchestrator's memory.
#[expect(
    clippy::disallowed_methods,
    reason = "polling /proc and in-memory tables at a fixed interval is the measurement"
)]
pub fn pause(d: Duration) {
    std::thread::sleep(d);
}
