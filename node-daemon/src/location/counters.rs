//! What the location client counts, and the events that log a line and bump a counter
//! together. Labels come from fixed sets ([`Refusal::ALL`], [`ParseError::KINDS`]); what gpsd
//! sends goes to the log only, and only at debug level or truncated.

use node_core::location::{ParseError, Refusal};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use std::time::Duration;
use tracing::{debug, info, warn};

/// Why a fix was refused: a [`Refusal::as_str`].
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

/// What was wrong with a line: a [`ParseError::as_str`].
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

/// The location client's counters. Every series of a fixed label set exists from the start,
/// at 0. The daemon reads them directly or registers them with
/// [`register`](Self::register).
#[derive(Debug)]
pub struct LocationCounters {
    refused: Family<ReasonLabel, Counter>,
    parse_errors: Family<KindLabel, Counter>,
    lines_too_long: Counter,
    fixes: Counter,
    reports: Counter,
    reports_dropped: Counter,
    reconnects: Counter,
    stalls: Counter,
}

impl Default for LocationCounters {
    fn default() -> Self {
        Self::new()
    }
}

impl LocationCounters {
    pub fn new() -> Self {
        let counters = Self {
            refused: Family::default(),
            parse_errors: Family::default(),
            lines_too_long: Counter::default(),
            fixes: Counter::default(),
            reports: Counter::default(),
            reports_dropped: Counter::default(),
            reconnects: Counter::default(),
            stalls: Counter::default(),
        };
        for refusal in Refusal::ALL {
            counters
                .refused
                .get_or_create(&ReasonLabel {
                    reason: refusal.as_str(),
                })
                .inc_by(0);
        }
        for kind in ParseError::KINDS {
            counters
                .parse_errors
                .get_or_create(&KindLabel { kind })
                .inc_by(0);
        }
        counters
    }

    /// Adds the counters to `registry` (names under `edge_node_location_`; the exposition
    /// adds `_total`). They keep counting into it: the families and counters are shared.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "edge_node_location_refused",
            "Fixes from gpsd the node did not believe, by reason",
            self.refused.clone(),
        );
        registry.register(
            "edge_node_location_parse_errors",
            "Lines from gpsd that were not a message, by kind",
            self.parse_errors.clone(),
        );
        registry.register(
            "edge_node_location_lines_too_long",
            "Lines from gpsd over the bound, thrown away",
            self.lines_too_long.clone(),
        );
        registry.register(
            "edge_node_location_fixes",
            "Fixes from gpsd the node believed",
            self.fixes.clone(),
        );
        registry.register(
            "edge_node_location_reports",
            "Location reports handed to the session",
            self.reports.clone(),
        );
        registry.register(
            "edge_node_location_reports_dropped",
            "Location reports dropped because the session had not taken the ones before",
            self.reports_dropped.clone(),
        );
        registry.register(
            "edge_node_location_reconnects",
            "Connections to gpsd dialled again after one failed, ended or stalled",
            self.reconnects.clone(),
        );
        registry.register(
            "edge_node_location_stalls",
            "Connections to gpsd given up because it went silent",
            self.stalls.clone(),
        );
    }

    /// Fixes refused for `refusal`.
    pub fn refused(&self, refusal: Refusal) -> u64 {
        self.refused
            .get_or_create(&ReasonLabel {
                reason: refusal.as_str(),
            })
            .get()
    }

    /// Lines refused as `kind` (one of [`ParseError::KINDS`]); 0 for any other.
    pub fn parse_errors(&self, kind: &str) -> u64 {
        ParseError::KINDS
            .iter()
            .find(|k| **k == kind)
            .map_or(0, |kind| {
                self.parse_errors.get_or_create(&KindLabel { kind }).get()
            })
    }

    pub fn lines_too_long(&self) -> u64 {
        self.lines_too_long.get()
    }

    pub fn fixes(&self) -> u64 {
        self.fixes.get()
    }

    pub fn reports(&self) -> u64 {
        self.reports.get()
    }

    pub fn reports_dropped(&self) -> u64 {
        self.reports_dropped.get()
    }

    pub fn reconnects(&self) -> u64 {
        self.reconnects.get()
    }

    pub fn stalls(&self) -> u64 {
        self.stalls.get()
    }
}

/// What happened to the location client: each logs its line and bumps its counter.
#[derive(Debug)]
pub(super) enum LocationEvent<'a> {
    /// Connected to gpsd and asked it to watch.
    Connected { gpsd: &'a str },
    /// A dial failed, or a connection ended (`error` says which); the next dial is in
    /// `retry_in`.
    Lost {
        gpsd: &'a str,
        error: &'a str,
        retry_in: Duration,
    },
    /// Another dial after a failure.
    Redial { gpsd: &'a str },
    /// Connected, and no line for `silent_for`.
    Stalled { gpsd: &'a str, silent_for: Duration },
    /// A line over the bound, thrown away.
    LineTooLong { bytes: usize },
    /// A line that is not a message.
    Unparsable(&'a ParseError),
    /// gpsd's greeting.
    Version { release: &'a str, proto_major: u64 },
    /// The devices gpsd reads.
    Devices { count: usize },
    /// A fix believed.
    Believed,
    /// A fix refused.
    Refused {
        refusal: Refusal,
        lat: f64,
        lon: f64,
    },
    /// A report handed to the session.
    Reported,
    /// A report dropped: the session's queue was full.
    ReportDropped,
}

impl LocationCounters {
    pub(super) fn emit(&self, event: &LocationEvent<'_>) {
        match event {
            LocationEvent::Connected { gpsd } => info!(gpsd, "connected to gpsd"),
            LocationEvent::Lost {
                gpsd,
                error,
                retry_in,
            } => warn!(
                gpsd,
                error,
                retry_in_ms = u64::try_from(retry_in.as_millis()).unwrap_or(u64::MAX),
                "no connection to gpsd; the location is not live"
            ),
            LocationEvent::Redial { gpsd } => {
                self.reconnects.inc();
                debug!(gpsd, "dialling gpsd again");
            }
            LocationEvent::Stalled { gpsd, silent_for } => {
                self.stalls.inc();
                warn!(
                    gpsd,
                    silent_secs = silent_for.as_secs(),
                    "gpsd went silent; dialling again"
                );
            }
            LocationEvent::LineTooLong { bytes } => {
                self.lines_too_long.inc();
                debug!(bytes, "a line from gpsd over the bound, thrown away");
            }
            LocationEvent::Unparsable(error) => {
                self.parse_errors
                    .get_or_create(&KindLabel {
                        kind: error.as_str(),
                    })
                    .inc();
                // The error's text is ours (serde_json's position, a field name), never the
                // line's.
                debug!(%error, "a line from gpsd skipped");
            }
            LocationEvent::Version {
                release,
                proto_major,
            } => info!(release, proto_major, "gpsd says hello"),
            LocationEvent::Devices { count: 0 } => {
                info!("gpsd reads no receiver yet; the location waits for one");
            }
            LocationEvent::Devices { count } => debug!(count, "gpsd's receivers"),
            LocationEvent::Believed => {
                self.fixes.inc();
            }
            LocationEvent::Refused { refusal, lat, lon } => {
                self.refused
                    .get_or_create(&ReasonLabel {
                        reason: refusal.as_str(),
                    })
                    .inc();
                debug!(reason = refusal.as_str(), lat, lon, "a fix refused");
            }
            LocationEvent::Reported => {
                self.reports.inc();
            }
            LocationEvent::ReportDropped => {
                self.reports_dropped.inc();
                warn!("the session has not taken the location reports before; one dropped");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_is_registered_at_zero() {
        let counters = LocationCounters::new();
        let mut registry = Registry::default();
        counters.register(&mut registry);
        counters.emit(&LocationEvent::Refused {
            refusal: Refusal::Jump,
            lat: 1.0,
            lon: 2.0,
        });
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
        for reason in Refusal::ALL {
            let n = u8::from(reason == Refusal::Jump);
            let series = format!(
                "edge_node_location_refused_total{{reason=\"{}\"}} {n}",
                reason.as_str()
            );
            assert!(text.contains(&series), "{series} in\n{text}");
        }
        for kind in ParseError::KINDS {
            let series = format!("edge_node_location_parse_errors_total{{kind=\"{kind}\"}} 0");
            assert!(text.contains(&series), "{series} in\n{text}");
        }
        for name in [
            "lines_too_long",
            "fixes",
            "reports",
            "reports_dropped",
            "reconnects",
            "stalls",
        ] {
            let series = format!("edge_node_location_{name}_total 0");
            assert!(text.contains(&series), "{series} in\n{text}");
        }
        assert_eq!(counters.refused(Refusal::Jump), 1);
        assert_eq!(counters.parse_errors("anything else"), 0);
    }
}
