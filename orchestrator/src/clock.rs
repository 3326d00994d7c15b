//! The wall clock, read here for the shells: the core takes the time as an argument.

use std::time::SystemTime;

/// Seconds since the Unix epoch now.
pub fn now_unix() -> u64 {
    orchestrator_core::session::unix_secs(SystemTime::now())
}

/// Milliseconds since the Unix epoch now.
pub fn now_ms() -> u64 {
    orchestrator_core::session::unix_millis(SystemTime::now())
}
