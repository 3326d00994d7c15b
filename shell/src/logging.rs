//! Log setup for both binaries: `EDGE_LOG` sets the filter (default `info`),
//! `EDGE_LOG_FORMAT=json` switches to one JSON object per line. Logs go to stderr, so that a
//! command's stdout stays its result; when stderr is gone, log lines are dropped.
//!
//! The filter is a list of levels by target (`info`, `warn,node_daemon=debug`): what
//! `tracing_subscriber`'s `Targets` reads, without the span and field matching of its
//! `EnvFilter`, whose regular expressions cost the node ~200 KB of its 8 MiB. A filter that
//! does not parse is `info`.

use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The filter `EDGE_LOG` asks for: levels by target, `info` when unset or unreadable.
pub fn filter(value: Option<&str>) -> Targets {
    value
        .and_then(|v| v.parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_default(tracing::Level::INFO))
}

/// Installs the process's subscriber. Call once, first thing in `main`.
pub fn init() {
    let filter = filter(std::env::var("EDGE_LOG").ok().as_deref());
    // A line that cannot be written (stderr closed: the journal restarted, the reader died)
    // is lost, and nothing else: reporting the failure would write to stderr again, which
    // panics the task that was logging.
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .log_internal_errors(false);
    let registry = tracing_subscriber::registry().with(filter);
    if std::env::var("EDGE_LOG_FORMAT").is_ok_and(|f| f == "json") {
        registry.with(layer.json()).init();
    } else {
        registry.with(layer.with_ansi(false)).init();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Level;
    use tracing_subscriber::filter::LevelFilter;

    #[test]
    fn edge_log_sets_levels_by_target_and_nonsense_is_info() {
        let f = filter(Some("warn,node_daemon=debug"));
        assert!(f.would_enable("node_daemon::daemon", &Level::DEBUG));
        assert!(!f.would_enable("quinn", &Level::INFO));
        assert!(f.would_enable("quinn", &Level::WARN));
        for nonsense in [None, Some("a=b=c"), Some("x=verbose")] {
            let f = filter(nonsense);
            assert_eq!(f.default_level(), Some(LevelFilter::INFO), "{nonsense:?}");
        }
    }
}
