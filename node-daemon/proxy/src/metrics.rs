//! The proxy's metrics, registered into the node's registry.
//!
//! Labels: `route` is a route's name (a workload's name or an upstream's, from the node's
//! config and the orchestrator's specs, never from a client), `class` and `cache` come from
//! fixed sets. A request that matched no route counts under `route="none"`.

use crate::cache::CacheOutcome;
use crate::upstream::UpstreamEvents;
use http::StatusCode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::time::Duration;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: String,
    pub class: &'static str,
    pub cache: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    pub route: String,
}

/// Latency buckets from 100 us to 10 s: a cache hit and a cold start on one scale.
#[derive(Debug, Clone, Copy)]
pub struct LatencyBuckets;

impl MetricConstructor<Histogram> for LatencyBuckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new([
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            2.5, 5.0, 10.0,
        ])
    }
}

/// Every metric the proxy keeps. Cheap to clone; clones count into the same families.
#[derive(Debug, Clone)]
pub struct ProxyMetrics {
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabel, Histogram, LatencyBuckets>,
    retries: Family<RouteLabel, Counter>,
    breaker_opens: Family<RouteLabel, Counter>,
}

impl Default for ProxyMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            latency: Family::new_with_constructor(LatencyBuckets),
            retries: Family::default(),
            breaker_opens: Family::default(),
        }
    }
}

impl ProxyMetrics {
    /// Adds the proxy's families to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "edge_proxy_requests",
            "Requests the proxy answered, by route, status class and cache outcome",
            self.requests.clone(),
        );
        registry.register(
            "edge_proxy_request_duration_seconds",
            "Time from a request's head to its answer's head, by route",
            self.latency.clone(),
        );
        registry.register(
            "edge_proxy_retries",
            "Requests sent again to another backend after a failure, by route",
            self.retries.clone(),
        );
        registry.register(
            "edge_proxy_breaker_opens",
            "Times a backend's circuit breaker opened, by route",
            self.breaker_opens.clone(),
        );
    }

    pub(crate) fn answered(
        &self,
        route: Option<&str>,
        status: StatusCode,
        cache: CacheOutcome,
        elapsed: Duration,
    ) {
        let route = route.unwrap_or("none").to_owned();
        let class = match status.as_u16() {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.latency
            .get_or_create(&RouteLabel {
                route: route.clone(),
            })
            .observe(elapsed.as_secs_f64());
        self.requests
            .get_or_create(&RequestLabels {
                route,
                class,
                cache: cache.as_str(),
            })
            .inc();
    }
}

impl UpstreamEvents for ProxyMetrics {
    fn retried(&self, route: &str) {
        self.retries
            .get_or_create(&RouteLabel {
                route: route.to_owned(),
            })
            .inc();
    }

    fn breaker_opened(&self, route: &str) {
        self.breaker_opens
            .get_or_create(&RouteLabel {
                route: route.to_owned(),
            })
            .inc();
    }
}
