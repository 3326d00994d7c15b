//! The proxy's traffic report for the orchestrator: the per-route counters of
//! [`ProxyMetrics`] as a bounded [`TrafficReport`], sent with the status reports when it
//! changed since the last one sent.
//!
//! It never holds a request: it reads the counters the proxy keeps with atomics, once per
//! status interval. It also sweeps them then, so a route gone from the table leaves the
//! counters (and `/metrics`) after [`edge_proxy::metrics::IDLE_EXPIRY`].

use edge_proto::{MAX_NAME_LEN, NodeMsg, RouteTraffic, Seq, Text, TrafficReport};
use edge_proxy::ProxyMetrics;
use edge_proxy::cache::CacheOutcome;
use edge_proxy::metrics::{NO_ROUTE, OTHER_ROUTE, RouteSnapshot, StatusClass};
use std::time::Instant;

/// Builds the reports of one run of the proxy's counters.
#[derive(Debug)]
pub struct Traffic {
    metrics: ProxyMetrics,
    /// Names this run of counting: chosen once, as the counters start with the process.
    epoch: u64,
    /// The last report sent on this session; `None` after a new session opens.
    sent: Option<TrafficReport>,
}

impl Traffic {
    pub fn new(metrics: ProxyMetrics, epoch: u64) -> Self {
        Self {
            metrics,
            epoch,
            sent: None,
        }
    }

    /// A new session opened: the next report goes out even if nothing changed (the
    /// orchestrator may have restarted).
    pub fn session_opened(&mut self) {
        self.sent = None;
    }

    /// The report to send now, if it differs from the last one sent.
    pub fn report(&mut self, now: Instant) -> Option<NodeMsg> {
        self.metrics.sweep(now);
        let report = build(self.epoch, self.metrics.snapshot());
        if self.sent.as_ref() == Some(&report) {
            return None;
        }
        if self.sent.is_none() && report.routes.as_slice().is_empty() {
            // Nothing counted yet: nothing to say.
            self.sent = Some(report);
            return None;
        }
        self.sent = Some(report.clone());
        Some(NodeMsg::Traffic(Box::new(report)))
    }
}

/// The busiest routes first, at most [`TrafficReport::MAX_ROUTES`], then by name. Requests
/// that matched no route, or beyond the metrics' cap, name no route the fleet serves and are
/// left out, as is a name too long for the wire (no route's is: they are workload names or
/// `upstream-N`).
pub fn build(epoch: u64, mut routes: Vec<RouteSnapshot>) -> TrafficReport {
    routes.retain(|r| r.route != NO_ROUTE && r.route != OTHER_ROUTE);
    routes.sort_by(|a, b| b.requests().cmp(&a.requests()).then(a.route.cmp(&b.route)));
    let mut entries: Vec<RouteTraffic> = routes
        .iter()
        .filter_map(|r| {
            let route = Text::<MAX_NAME_LEN>::try_from(r.route.as_str()).ok()?;
            Some(RouteTraffic {
                route,
                requests: r.requests(),
                hit: r.outcome(CacheOutcome::Hit),
                miss: r.outcome(CacheOutcome::Miss),
                stale: r.outcome(CacheOutcome::Stale),
                revalidated: r.outcome(CacheOutcome::Revalidated),
                bypass: r.outcome(CacheOutcome::Bypass) + r.outcome(CacheOutcome::Uncacheable),
                errors_5xx: r.class(StatusClass::ServerError),
                retries: r.retries,
                breaker_opens: r.breaker_opens,
                // Invariant: the metrics keep 17 slots, the wire takes 32 (pinned by
                // edge-proto's wire tests).
                latency: Seq::new(r.latency.to_vec()).unwrap_or_default(),
            })
        })
        .take(TrafficReport::MAX_ROUTES)
        .collect();
    entries.sort_by(|a, b| a.route.cmp(&b.route));
    TrafficReport {
        epoch,
        // Invariant: at most MAX_ROUTES, taken above.
        routes: Seq::new(entries).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edge_proxy::metrics::LATENCY_SLOTS;
    use edge_proxy::upstream::UpstreamEvents;

    fn route(name: &str, hits: u64, misses: u64) -> RouteSnapshot {
        let mut r = RouteSnapshot {
            route: name.to_owned(),
            ..RouteSnapshot::default()
        };
        r.answers[1][0] = hits;
        r.answers[4][1] = misses;
        r.latency[0] = hits + misses;
        r
    }

    #[test]
    fn a_report_sums_classes_and_outcomes() {
        let report = build(7, vec![route("shop", 3, 2), route(NO_ROUTE, 9, 9)]);
        assert_eq!(report.epoch, 7);
        let [shop] = report.routes.as_slice() else {
            panic!("one route: {report:?}");
        };
        assert_eq!(shop.route.as_str(), "shop");
        assert_eq!((shop.requests, shop.hit, shop.miss), (5, 3, 2));
        assert_eq!(shop.errors_5xx, 2);
        assert_eq!(shop.latency.as_slice().len(), LATENCY_SLOTS);
        assert_eq!(shop.latency.as_slice()[0], 5);
    }

    #[test]
    fn only_the_busiest_routes_fit_a_report() {
        let routes = (0..TrafficReport::MAX_ROUTES as u64 + 5)
            .map(|i| route(&format!("r{i:03}"), i, 0))
            .collect();
        let report = build(1, routes);
        assert_eq!(report.routes.as_slice().len(), TrafficReport::MAX_ROUTES);
        assert!(report.routes.as_slice().iter().all(|r| r.requests >= 5));
    }

    #[test]
    fn reports_go_out_only_when_something_changed() {
        let metrics = ProxyMetrics::default();
        let mut traffic = Traffic::new(metrics.clone(), 1);
        assert!(traffic.report(Instant::now()).is_none(), "nothing counted");
        metrics.retried("shop");
        assert!(traffic.report(Instant::now()).is_some());
        assert!(traffic.report(Instant::now()).is_none(), "unchanged");
        metrics.retried("shop");
        assert!(traffic.report(Instant::now()).is_some());
        traffic.session_opened();
        assert!(
            traffic.report(Instant::now()).is_some(),
            "a new session hears it again"
        );
    }
}
