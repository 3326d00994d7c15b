//! Log setup for both binaries: `EDGE_LOG` sets the filter (default `info`),
//! `EDGE_LOG_FORMAT=json` switches to one JSON object per line. Logs go to stderr, so that a
//! command's stdout stays its result; when stderr is gone, log lines are dropped.

use tracing_subscriber::EnvFilter;

/// Installs the process's subscriber. Call once, first thing in `main`.
pub fn init() {
    let filter = EnvFilter::try_from_env("EDGE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // A line that cannot be written (stderr closed: the journal restarted, the reader died)
    // is lost, and nothing else: reporting the failure would write to stderr again, which
    // panics the task that was logging.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .log_internal_errors(false);
    if std::env::var("EDGE_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().init();
    } else {
        builder.with_ansi(false).init();
    }
}
