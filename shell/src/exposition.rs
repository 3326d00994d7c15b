//! The Prometheus exposition of a `prometheus_client` registry, in the format the scraper
//! asks for.
//!
//! `prometheus_client` writes only OpenMetrics text. Prometheus asks for OpenMetrics when it
//! can take it (`Accept: application/openmetrics-text`), but `curl`, `promtool check metrics`
//! and older scrapers read the classic text format 0.0.4, in which OpenMetrics' counter
//! descriptors name a family that has no samples: the type and the help are lost. So
//! [`encode`] answers OpenMetrics only to a scraper that asks for it ([`Format::negotiate`]),
//! and otherwise converts the library's output to 0.0.4 ([`to_text_004`]).
//!
//! The conversion is line by line and exact for what `prometheus_client` writes: counters,
//! gauges, histograms and info metrics, with or without a unit.

use prometheus_client::registry::Registry;

/// An exposition format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The classic Prometheus text format, 0.0.4: the default.
    Text004,
    /// OpenMetrics text 1.0.0, for a scraper that asks for it.
    OpenMetrics,
}

impl Format {
    /// The format to answer a request with `Accept: accept` in: OpenMetrics if the request
    /// accepts `application/openmetrics-text` at least as readily as `text/plain`, else 0.0.4.
    pub fn negotiate(accept: Option<&str>) -> Self {
        let (mut openmetrics, mut text) = (0.0_f32, 0.0_f32);
        for range in accept.unwrap_or_default().split(',') {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q="))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            match media.as_str() {
                "application/openmetrics-text" => openmetrics = openmetrics.max(q),
                "text/plain" => text = text.max(q),
                _ => {}
            }
        }
        if openmetrics > 0.0 && openmetrics >= text {
            Self::OpenMetrics
        } else {
            Self::Text004
        }
    }

    /// The `Content-Type` of an answer in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Text004 => "text/plain; version=0.0.4; charset=utf-8",
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// `registry` in `format`.
pub fn encode(registry: &Registry, format: Format) -> String {
    let mut openmetrics = String::new();
    // Invariant: writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut openmetrics, registry);
    match format {
        Format::OpenMetrics => openmetrics,
        Format::Text004 => to_text_004(&openmetrics),
    }
}

/// OpenMetrics text as `prometheus_client` writes it, in the text format 0.0.4:
/// - a counter's `# HELP` and `# TYPE` name its samples' family, `NAME_total`;
/// - an info metric is a gauge named `NAME_info`; a type 0.0.4 lacks is `untyped`;
/// - `# UNIT` and `# EOF` go (0.0.4 has neither), and so do exemplars;
/// - help text escapes backslashes, as 0.0.4 requires.
pub fn to_text_004(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    // `# HELP` comes before `# TYPE`, which says what name it belongs under.
    let mut help: Option<(&str, &str)> = None;
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
            help = Some((name, text));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            let (suffix, kind) = match kind {
                "counter" => ("_total", "counter"),
                "info" => ("_info", "gauge"),
                "gauge" | "histogram" | "summary" => ("", kind),
                _ => ("", "untyped"),
            };
            if let Some((_, text)) = help.take().filter(|(n, _)| *n == name) {
                out.push_str(&format!(
                    "# HELP {name}{suffix} {}\n",
                    text.replace('\\', "\\\\")
                ));
            }
            out.push_str(&format!("# TYPE {name}{suffix} {kind}\n"));
        } else if line.starts_with("# UNIT ") || line == "# EOF" {
        } else if line.starts_with('#') || line.is_empty() {
            out.push_str(line);
            out.push('\n');
        } else {
            out.push_str(without_exemplar(line));
            out.push('\n');
        }
    }
    out
}

/// A sample line without its OpenMetrics exemplar (` # {labels} value`), which 0.0.4 lacks.
/// Label values may hold `#`, so the search starts after the label set.
fn without_exemplar(line: &str) -> &str {
    let name_end = line.find(['{', ' ']).unwrap_or(line.len());
    let mut end_of_labels = name_end;
    if line[name_end..].starts_with('{') {
        let mut quoted = false;
        let mut escaped = false;
        for (i, c) in line[name_end..].char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' if quoted => escaped = true,
                '"' => quoted = !quoted,
                '}' if !quoted => {
                    end_of_labels = name_end + i;
                    break;
                }
                _ => {}
            }
        }
    }
    match line[end_of_labels..].find(" # ") {
        Some(at) => &line[..end_of_labels + at],
        None => line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::EncodeLabelSet;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::exemplar::CounterWithExemplar;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::gauge::Gauge;
    use prometheus_client::metrics::histogram::Histogram;
    use prometheus_client::metrics::info::Info;
    use prometheus_client::registry::Unit;

    #[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct Outcome {
        outcome: &'static str,
    }

    fn registry() -> Registry {
        let mut r = Registry::default();
        let frames: Family<Outcome, Counter> = Family::default();
        // One series: a family's series come out in hash order, and this test compares
        // whole texts.
        frames.get_or_create(&Outcome { outcome: "ok" }).inc_by(3);
        r.register("edge_frames", "Frames, by outcome", frames);
        let running: Gauge = Gauge::default();
        running.set(2);
        r.register("edge_running", "Workloads \"running\" now", running);
        let fetched: Counter = Counter::default();
        fetched.inc_by(1024);
        r.register_with_unit("edge_fetched", "Bytes fetched", Unit::Bytes, fetched);
        let latency = Histogram::new([0.1, 1.0]);
        latency.observe(0.5);
        r.register_with_unit("edge_latency", "A C:\\ path", Unit::Seconds, latency);
        r.register(
            "edge_build",
            "The build",
            Info::new(vec![("version".to_owned(), "1.0".to_owned())]),
        );
        r
    }

    #[test]
    fn counters_are_described_under_the_name_of_their_samples() {
        let text = encode(&registry(), Format::Text004);
        let expected = "\
# HELP edge_frames_total Frames, by outcome.
# TYPE edge_frames_total counter
edge_frames_total{outcome=\"ok\"} 3
# HELP edge_running Workloads \"running\" now.
# TYPE edge_running gauge
edge_running 2
# HELP edge_fetched_bytes_total Bytes fetched.
# TYPE edge_fetched_bytes_total counter
edge_fetched_bytes_total 1024
# HELP edge_latency_seconds A C:\\\\ path.
# TYPE edge_latency_seconds histogram
edge_latency_seconds_sum 0.5
edge_latency_seconds_count 1
edge_latency_seconds_bucket{le=\"0.1\"} 0
edge_latency_seconds_bucket{le=\"1.0\"} 1
edge_latency_seconds_bucket{le=\"+Inf\"} 1
# HELP edge_build_info The build.
# TYPE edge_build_info gauge
edge_build_info{version=\"1.0\"} 1
";
        assert_eq!(text, expected);
    }

    #[test]
    fn openmetrics_is_the_librarys_own_output() {
        let text = encode(&registry(), Format::OpenMetrics);
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(text.contains("# TYPE edge_frames counter\n"), "{text}");
        assert!(text.contains("# UNIT edge_fetched_bytes bytes\n"), "{text}");
    }

    #[test]
    fn exemplars_are_dropped_and_label_values_kept_whole() {
        let mut r = Registry::default();
        let hits: CounterWithExemplar<Outcome> = CounterWithExemplar::default();
        hits.inc_by(2, Some(Outcome { outcome: "a # b" }), None);
        r.register("edge_hits", "Hits", hits);
        let om = encode(&r, Format::OpenMetrics);
        assert!(om.contains(" # {outcome=\"a # b\"}"), "{om}");
        let text = to_text_004(&om);
        assert!(text.contains("\nedge_hits_total 2\n"), "{text}");
        assert_eq!(
            without_exemplar("x{l=\"a # b\"} 1 # {t=\"1\"} 1.0"),
            "x{l=\"a # b\"} 1"
        );
        assert_eq!(without_exemplar("x{l=\"a # b\"} 1"), "x{l=\"a # b\"} 1");
        assert_eq!(without_exemplar("x 1"), "x 1");
        assert_eq!(without_exemplar("x 1 # {t=\"1\"} 1.0"), "x 1");
    }

    #[test]
    fn openmetrics_only_for_a_scraper_that_asks() {
        use Format::*;
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(prometheus)), OpenMetrics);
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text")),
            OpenMetrics
        );
        assert_eq!(Format::negotiate(None), Text004);
        assert_eq!(Format::negotiate(Some("*/*")), Text004);
        assert_eq!(Format::negotiate(Some("text/plain")), Text004);
        assert_eq!(
            Format::negotiate(Some("text/plain, application/openmetrics-text;q=0.5")),
            Text004
        );
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text;q=0")),
            Text004
        );
        assert!(
            Text004
                .content_type()
                .starts_with("text/plain; version=0.0.4")
        );
        assert!(
            OpenMetrics
                .content_type()
                .starts_with("application/openmetrics-text; version=1.0.0")
        );
    }
}
