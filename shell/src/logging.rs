//! Log setup for both binaries: `EDGE_LOG` sets the filter (default `info`),
//! `EDGE_LOG_FORMAT=json` switches to one JSON object per line. Logs go to stderr, so that a
//! command's stdout stays its result.

use tracing_subscriber::EnvFilter;

/// Installs the process's subscriber. Call once, first thing in `main`.
pub fn init() {
    let filter = EnvFilter::try_from_env("EDGE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var("EDGE_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().init();
    } else {
        builder.with_ansi(false).init();
    }
}
