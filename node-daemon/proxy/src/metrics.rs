//! The proxy's metrics, registered into the node's registry, and the per-route counters the
//! node's traffic report is read from.
//!
//! Labels: `route` is a route's name (a workload's name or an upstream's, from the node's
//! config and the orchestrator's specs, never from a client), `class` and `cache` come from
//! fixed sets. A request that matched no route counts under `route="none"`.
//!
//! Every count lives in one [`RouteStats`] of atomics per route, looked up by `&str` under a
//! read lock: recording a request for a route already seen allocates nothing and takes no
//! exclusive lock. The Prometheus families are encoded from the same counters at scrape
//! time (a [`Collector`]), so `/metrics` and [`ProxyMetrics::snapshot`] never disagree.
//!
//! **Bounds.** At most [`MAX_ROUTES`] routes are kept; a request for a route beyond that
//! counts under `route="other"`. A route without a request, retry or breaker opening for
//! [`IDLE_EXPIRY`] is forgotten at the next [`ProxyMetrics::sweep`] (its series leave
//! `/metrics`, and count from 0 if it comes back): routes follow the node's route table,
//! which changes as workloads come and go, and no entry outlives its use for long.

use crate::cache::CacheOutcome;
use crate::upstream::UpstreamEvents;
use edge_proto::LATENCY_BUCKETS_US;
use http::StatusCode;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

/// The most routes kept at once.
pub const MAX_ROUTES: usize = 1024;
/// How long a route is kept after its last request, retry or breaker opening.
pub const IDLE_EXPIRY: Duration = Duration::from_secs(3600);
/// Where requests for routes beyond [`MAX_ROUTES`] are counted.
pub const OTHER_ROUTE: &str = "other";
/// Where requests that matched no route are counted.
pub const NO_ROUTE: &str = "none";

/// Latency buckets, in the order of [`LATENCY_BUCKETS_US`], and one past the largest.
pub const LATENCY_SLOTS: usize = LATENCY_BUCKETS_US.len() + 1;

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

/// A status class, as the `class` label names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusClass {
    Informational,
    Success,
    Redirection,
    ClientError,
    ServerError,
}

impl StatusClass {
    pub const ALL: [StatusClass; 5] = [
        StatusClass::Informational,
        StatusClass::Success,
        StatusClass::Redirection,
        StatusClass::ClientError,
        StatusClass::ServerError,
    ];

    pub fn of(status: StatusCode) -> Self {
        match status.as_u16() {
            100..=199 => StatusClass::Informational,
            200..=299 => StatusClass::Success,
            300..=399 => StatusClass::Redirection,
            400..=499 => StatusClass::ClientError,
            _ => StatusClass::ServerError,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            StatusClass::Informational => "1xx",
            StatusClass::Success => "2xx",
            StatusClass::Redirection => "3xx",
            StatusClass::ClientError => "4xx",
            StatusClass::ServerError => "5xx",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Every cache outcome, in the order [`RouteStats`] keeps them.
pub const OUTCOMES: [CacheOutcome; 6] = [
    CacheOutcome::Hit,
    CacheOutcome::Miss,
    CacheOutcome::Stale,
    CacheOutcome::Revalidated,
    CacheOutcome::Bypass,
    CacheOutcome::Uncacheable,
];

fn outcome_index(outcome: CacheOutcome) -> usize {
    match outcome {
        CacheOutcome::Hit => 0,
        CacheOutcome::Miss => 1,
        CacheOutcome::Stale => 2,
        CacheOutcome::Revalidated => 3,
        CacheOutcome::Bypass => 4,
        CacheOutcome::Uncacheable => 5,
    }
}

/// The slot of [`LATENCY_BUCKETS_US`] a duration falls in: the first bound it does not
/// exceed, or the last slot past them all.
pub fn latency_slot(elapsed: Duration) -> usize {
    let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
    LATENCY_BUCKETS_US.partition_point(|&bound| bound < us)
}

/// One route's counters: atomics, so recording needs only a shared lock on the map.
#[derive(Debug, Default)]
struct RouteStats {
    /// By status class, then cache outcome.
    answers: [[AtomicU64; OUTCOMES.len()]; StatusClass::ALL.len()],
    latency: [AtomicU64; LATENCY_SLOTS],
    latency_sum_nanos: AtomicU64,
    retries: AtomicU64,
    breaker_opens: AtomicU64,
    /// [`Shared::clock_secs`] when last used.
    touched_secs: AtomicU64,
}

/// What one route counted since the proxy started (or since the route was last forgotten).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteSnapshot {
    pub route: String,
    /// By [`StatusClass::ALL`], then [`OUTCOMES`].
    pub answers: [[u64; OUTCOMES.len()]; StatusClass::ALL.len()],
    /// Answers by latency slot: [`LATENCY_BUCKETS_US`], then one past the largest.
    pub latency: [u64; LATENCY_SLOTS],
    pub latency_sum_nanos: u64,
    pub retries: u64,
    pub breaker_opens: u64,
}

impl RouteSnapshot {
    pub fn requests(&self) -> u64 {
        self.answers.iter().flatten().sum()
    }

    /// Answers with `outcome`, of any status.
    pub fn outcome(&self, outcome: CacheOutcome) -> u64 {
        let i = outcome_index(outcome);
        self.answers.iter().map(|by_outcome| by_outcome[i]).sum()
    }

    /// Answers of `class`, whatever the cache did.
    pub fn class(&self, class: StatusClass) -> u64 {
        self.answers[class.index()].iter().sum()
    }
}

#[derive(Debug)]
struct Shared {
    routes: RwLock<HashMap<Box<str>, RouteStats>>,
    /// Seconds from `started` to the last sweep: a coarse clock a record reads for free.
    clock_secs: AtomicU64,
    started: Instant,
}

/// Every metric the proxy keeps. Cheap to clone; clones count into the same routes.
#[derive(Debug, Clone)]
pub struct ProxyMetrics {
    shared: Arc<Shared>,
}

impl Default for ProxyMetrics {
    fn default() -> Self {
        Self {
            shared: Arc::new(Shared {
                routes: RwLock::new(HashMap::new()),
                clock_secs: AtomicU64::new(0),
                started: Instant::now(),
            }),
        }
    }
}

impl ProxyMetrics {
    /// Adds the proxy's families to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register_collector(Box::new(Families(self.shared.clone())));
    }

    pub(crate) fn answered(
        &self,
        route: Option<&str>,
        status: StatusCode,
        cache: CacheOutcome,
        elapsed: Duration,
    ) {
        let class = StatusClass::of(status).index();
        let outcome = outcome_index(cache);
        let slot = latency_slot(elapsed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.with_route(route.unwrap_or(NO_ROUTE), |stats| {
            stats.answers[class][outcome].fetch_add(1, Relaxed);
            stats.latency[slot].fetch_add(1, Relaxed);
            stats.latency_sum_nanos.fetch_add(nanos, Relaxed);
        });
    }

    /// Runs `f` on `route`'s counters, made if it has none yet (or `other`'s, at the cap).
    fn with_route(&self, route: &str, f: impl Fn(&RouteStats)) {
        let shared = &*self.shared;
        let now = shared.clock_secs.load(Relaxed);
        let touch = |stats: &RouteStats| {
            if stats.touched_secs.load(Relaxed) != now {
                stats.touched_secs.store(now, Relaxed);
            }
            f(stats);
        };
        {
            let routes = shared.routes.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(stats) = routes.get(route) {
                return touch(stats);
            }
        }
        let mut routes = shared
            .routes
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let key = if routes.len() < MAX_ROUTES || routes.contains_key(route) {
            route
        } else {
            OTHER_ROUTE
        };
        if let Some(stats) = routes.get(key) {
            return touch(stats);
        }
        let stats = routes.entry(key.into()).or_default();
        touch(stats);
    }

    /// Forgets the routes not used for [`IDLE_EXPIRY`] before `now`, and moves the clock
    /// records are stamped with to `now`. Called every status interval.
    pub fn sweep(&self, now: Instant) {
        self.sweep_idle(now, IDLE_EXPIRY);
    }

    fn sweep_idle(&self, now: Instant, idle: Duration) {
        let shared = &*self.shared;
        let secs = now.saturating_duration_since(shared.started).as_secs();
        shared.clock_secs.fetch_max(secs, Relaxed);
        let secs = shared.clock_secs.load(Relaxed);
        let mut routes = shared
            .routes
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        routes
            .retain(|_, stats| secs - stats.touched_secs.load(Relaxed).min(secs) < idle.as_secs());
    }

    /// What every route kept counted, sorted by route.
    pub fn snapshot(&self) -> Vec<RouteSnapshot> {
        let routes = self
            .shared
            .routes
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let mut out: Vec<RouteSnapshot> = routes
            .iter()
            .map(|(route, stats)| snapshot_of(route, stats))
            .collect();
        drop(routes);
        out.sort_by(|a, b| a.route.cmp(&b.route));
        out
    }

    /// How many routes are kept.
    pub fn routes(&self) -> usize {
        self.shared
            .routes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

fn snapshot_of(route: &str, stats: &RouteStats) -> RouteSnapshot {
    RouteSnapshot {
        route: route.to_owned(),
        answers: std::array::from_fn(|c| {
            std::array::from_fn(|o| stats.answers[c][o].load(Relaxed))
        }),
        latency: std::array::from_fn(|i| stats.latency[i].load(Relaxed)),
        latency_sum_nanos: stats.latency_sum_nanos.load(Relaxed),
        retries: stats.retries.load(Relaxed),
        breaker_opens: stats.breaker_opens.load(Relaxed),
    }
}

impl UpstreamEvents for ProxyMetrics {
    fn retried(&self, route: &str) {
        self.with_route(route, |stats| {
            stats.retries.fetch_add(1, Relaxed);
        });
    }

    fn breaker_opened(&self, route: &str) {
        self.with_route(route, |stats| {
            stats.breaker_opens.fetch_add(1, Relaxed);
        });
    }
}

/// The Prometheus families, encoded from the routes' counters at each scrape. A series
/// appears once it counts something, as it would in a `Family`.
#[derive(Debug)]
struct Families(Arc<Shared>);

impl Collector for Families {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let routes = ProxyMetrics {
            shared: self.0.clone(),
        }
        .snapshot();
        let mut family = encoder.encode_descriptor(
            "edge_proxy_requests",
            "Requests the proxy answered, by route, status class and cache outcome",
            None,
            MetricType::Counter,
        )?;
        for r in &routes {
            for (class, by_outcome) in StatusClass::ALL.iter().zip(&r.answers) {
                for (outcome, &n) in OUTCOMES.iter().zip(by_outcome) {
                    if n == 0 {
                        continue;
                    }
                    let labels = RequestLabels {
                        route: r.route.clone(),
                        class: class.as_str(),
                        cache: outcome.as_str(),
                    };
                    ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        let mut family = encoder.encode_descriptor(
            "edge_proxy_request_duration_seconds",
            "Time from a request's head to its answer's head, by route",
            None,
            MetricType::Histogram,
        )?;
        for r in routes.iter().filter(|r| r.requests() > 0) {
            let buckets: Vec<(f64, u64)> = LATENCY_BUCKETS_US
                .iter()
                .map(|&us| us as f64 / 1e6)
                .chain(std::iter::once(f64::MAX))
                .zip(r.latency)
                .collect();
            let labels = RouteLabel {
                route: r.route.clone(),
            };
            family
                .encode_family(&labels)?
                .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                    r.latency_sum_nanos as f64 / 1e9,
                    r.latency.iter().sum(),
                    &buckets,
                    None,
                )?;
        }
        for (name, help, count) in [
            (
                "edge_proxy_retries",
                "Requests sent again to another backend after a failure, by route",
                (|r: &RouteSnapshot| r.retries) as fn(&RouteSnapshot) -> u64,
            ),
            (
                "edge_proxy_breaker_opens",
                "Times a backend's circuit breaker opened, by route",
                |r: &RouteSnapshot| r.breaker_opens,
            ),
        ] {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for r in &routes {
                let n = count(r);
                if n == 0 {
                    continue;
                }
                let labels = RouteLabel {
                    route: r.route.clone(),
                };
                ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    fn text(metrics: &ProxyMetrics) -> String {
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let mut out = String::new();
        encode(&mut out, &registry).expect("encodes");
        out
    }

    #[test]
    fn families_keep_their_names_and_labels() {
        let m = ProxyMetrics::default();
        m.answered(
            Some("shop"),
            StatusCode::OK,
            CacheOutcome::Hit,
            Duration::from_micros(80),
        );
        m.answered(
            Some("shop"),
            StatusCode::BAD_GATEWAY,
            CacheOutcome::Miss,
            Duration::from_millis(30),
        );
        m.answered(
            None,
            StatusCode::NOT_FOUND,
            CacheOutcome::Bypass,
            Duration::ZERO,
        );
        m.retried("shop");
        m.breaker_opened("shop");
        let out = text(&m);
        for line in [
            "edge_proxy_requests_total{route=\"shop\",class=\"2xx\",cache=\"hit\"} 1",
            "edge_proxy_requests_total{route=\"shop\",class=\"5xx\",cache=\"miss\"} 1",
            "edge_proxy_requests_total{route=\"none\",class=\"4xx\",cache=\"bypass\"} 1",
            "edge_proxy_request_duration_seconds_bucket{le=\"0.0001\",route=\"shop\"} 1",
            "edge_proxy_request_duration_seconds_bucket{le=\"0.05\",route=\"shop\"} 2",
            "edge_proxy_request_duration_seconds_bucket{le=\"+Inf\",route=\"shop\"} 2",
            "edge_proxy_request_duration_seconds_count{route=\"shop\"} 2",
            "edge_proxy_retries_total{route=\"shop\"} 1",
            "edge_proxy_breaker_opens_total{route=\"shop\"} 1",
            "# TYPE edge_proxy_requests counter",
            "# TYPE edge_proxy_request_duration_seconds histogram",
        ] {
            assert!(out.contains(line), "missing {line} in\n{out}");
        }
    }

    #[test]
    fn recording_for_a_known_route_does_not_grow_the_map() {
        let m = ProxyMetrics::default();
        m.answered(
            Some("shop"),
            StatusCode::OK,
            CacheOutcome::Miss,
            Duration::ZERO,
        );
        let capacity = m.shared.routes.read().expect("lock").capacity();
        for _ in 0..10_000 {
            m.answered(
                Some("shop"),
                StatusCode::OK,
                CacheOutcome::Hit,
                Duration::ZERO,
            );
            m.retried("shop");
        }
        assert_eq!(m.routes(), 1);
        assert_eq!(m.shared.routes.read().expect("lock").capacity(), capacity);
        let shop = &m.snapshot()[0];
        assert_eq!(shop.requests(), 10_001);
        assert_eq!(shop.outcome(CacheOutcome::Hit), 10_000);
        assert_eq!(shop.retries, 10_000);
    }

    #[test]
    fn routes_beyond_the_cap_count_as_other() {
        let m = ProxyMetrics::default();
        for i in 0..MAX_ROUTES + 10 {
            m.answered(
                Some(&format!("r{i}")),
                StatusCode::OK,
                CacheOutcome::Hit,
                Duration::ZERO,
            );
        }
        assert_eq!(m.routes(), MAX_ROUTES + 1, "the cap and `other`");
        let other = m.snapshot().into_iter().find(|r| r.route == OTHER_ROUTE);
        assert_eq!(other.map(|r| r.requests()), Some(10));
    }

    #[test]
    fn idle_routes_are_forgotten_and_busy_ones_kept() {
        let m = ProxyMetrics::default();
        let start = m.shared.started;
        m.answered(
            Some("old"),
            StatusCode::OK,
            CacheOutcome::Hit,
            Duration::ZERO,
        );
        m.answered(
            Some("busy"),
            StatusCode::OK,
            CacheOutcome::Hit,
            Duration::ZERO,
        );
        m.sweep_idle(start + Duration::from_secs(50), Duration::from_secs(100));
        m.answered(
            Some("busy"),
            StatusCode::OK,
            CacheOutcome::Hit,
            Duration::ZERO,
        );
        m.sweep_idle(start + Duration::from_secs(120), Duration::from_secs(100));
        let names: Vec<String> = m.snapshot().into_iter().map(|r| r.route).collect();
        assert_eq!(names, ["busy"]);
        assert!(!text(&m).contains("route=\"old\""), "its series left");
    }

    #[test]
    fn latency_slots_follow_the_bounds() {
        assert_eq!(latency_slot(Duration::ZERO), 0);
        assert_eq!(latency_slot(Duration::from_micros(100)), 0);
        assert_eq!(latency_slot(Duration::from_micros(101)), 1);
        assert_eq!(latency_slot(Duration::from_secs(10)), LATENCY_SLOTS - 2);
        assert_eq!(latency_slot(Duration::from_secs(11)), LATENCY_SLOTS - 1);
    }
}
