//! The nodes' proxy traffic as the orchestrator keeps it: the latest [`TrafficReport`] of
//! each node, cut to the routes the fleet serves, and what it adds to the fleet's totals.
//!
//! A node's report carries counters cumulative since its proxy started counting (its
//! `epoch`). [`TrafficBook::record`] keeps the report whole (the latest wins) and returns the
//! [`Delta`] since the node's previous one: the difference where the epoch is the same and the
//! counters grew, the new counts where the proxy restarted (another epoch) or a route began
//! again from zero (the node forgot it while idle). The shell adds deltas to fleet-wide
//! counters, which therefore never go backwards.
//!
//! **Invariants.** Pure: no I/O, no clock (`now_unix` is an argument). A node names only
//! routes the fleet serves: an entry for a workload that is not exposed (as
//! `routes::RouteBook` says) is dropped, so what is kept per node is bounded by the exposed
//! workloads and never holds a name the node chose. Nothing here becomes a metric label.

use edge_proto::{LATENCY_BUCKETS_US, NodeId, RouteTraffic, TrafficReport};
use std::collections::BTreeMap;

/// The latest traffic of every node that reported.
#[derive(Debug, Clone, Default)]
pub struct TrafficBook {
    nodes: BTreeMap<NodeId, NodeTraffic>,
}

/// A node's latest report, as kept.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeTraffic {
    pub epoch: u64,
    /// When the orchestrator received it.
    pub reported_unix: u64,
    /// By route name, each route once.
    pub routes: BTreeMap<String, Counts>,
}

/// One route's counters, or their sum over nodes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    pub requests: u64,
    pub hit: u64,
    pub miss: u64,
    pub stale: u64,
    pub revalidated: u64,
    pub bypass: u64,
    pub errors_5xx: u64,
    pub retries: u64,
    pub breaker_opens: u64,
    /// Answers by latency slot over [`LATENCY_BUCKETS_US`]; the last slot is past them.
    pub latency: Vec<u64>,
}

/// A route's counters summarised for people: quantiles in milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub counts: Counts,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// What a report added to the fleet's totals.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delta {
    pub requests: u64,
    pub hit: u64,
    pub miss: u64,
    pub stale: u64,
    pub revalidated: u64,
    pub bypass: u64,
    pub errors_5xx: u64,
    /// Entries refused: routes the fleet does not serve, or named twice.
    pub dropped: usize,
}

impl Counts {
    fn from_wire(r: &RouteTraffic) -> Self {
        Self {
            requests: r.requests,
            hit: r.hit,
            miss: r.miss,
            stale: r.stale,
            revalidated: r.revalidated,
            bypass: r.bypass,
            errors_5xx: r.errors_5xx,
            retries: r.retries,
            breaker_opens: r.breaker_opens,
            latency: r.latency.as_slice().to_vec(),
        }
    }

    /// Adds `other` to these counts, slot by slot.
    pub fn add(&mut self, other: &Counts) {
        self.requests = self.requests.saturating_add(other.requests);
        self.hit = self.hit.saturating_add(other.hit);
        self.miss = self.miss.saturating_add(other.miss);
        self.stale = self.stale.saturating_add(other.stale);
        self.revalidated = self.revalidated.saturating_add(other.revalidated);
        self.bypass = self.bypass.saturating_add(other.bypass);
        self.errors_5xx = self.errors_5xx.saturating_add(other.errors_5xx);
        self.retries = self.retries.saturating_add(other.retries);
        self.breaker_opens = self.breaker_opens.saturating_add(other.breaker_opens);
        if self.latency.len() < other.latency.len() {
            self.latency.resize(other.latency.len(), 0);
        }
        for (mine, theirs) in self.latency.iter_mut().zip(&other.latency) {
            *mine = mine.saturating_add(*theirs);
        }
    }

    /// Whether every counter is at least `before`'s: the same run of counting, moved on.
    fn continues(&self, before: &Counts) -> bool {
        self.requests >= before.requests
            && self.hit >= before.hit
            && self.miss >= before.miss
            && self.stale >= before.stale
            && self.revalidated >= before.revalidated
            && self.bypass >= before.bypass
            && self.errors_5xx >= before.errors_5xx
    }

    pub fn summary(&self) -> Summary {
        Summary {
            counts: self.clone(),
            p50_ms: quantile_us(&self.latency, 0.5).map(|us| us / 1000.0),
            p99_ms: quantile_us(&self.latency, 0.99).map(|us| us / 1000.0),
        }
    }
}

impl Delta {
    /// Adds what `now` counted beyond `before` (all of `now` without a `before`).
    fn add(&mut self, now: &Counts, before: Option<&Counts>) {
        let zero = Counts::default();
        let before = before.filter(|b| now.continues(b)).unwrap_or(&zero);
        self.requests += now.requests - before.requests;
        self.hit += now.hit - before.hit;
        self.miss += now.miss - before.miss;
        self.stale += now.stale - before.stale;
        self.revalidated += now.revalidated - before.revalidated;
        self.bypass += now.bypass - before.bypass;
        self.errors_5xx += now.errors_5xx - before.errors_5xx;
    }
}

impl TrafficBook {
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps `report` as `node`'s latest, without the routes `served` refuses, and returns
    /// what it adds to the fleet's totals.
    pub fn record(
        &mut self,
        node: NodeId,
        report: &TrafficReport,
        served: impl Fn(&str) -> bool,
        now_unix: u64,
    ) -> Delta {
        let mut delta = Delta::default();
        let mut routes = BTreeMap::new();
        for entry in report.routes.as_slice() {
            let name = entry.route.as_str();
            if !served(name) || routes.contains_key(name) {
                delta.dropped += 1;
                continue;
            }
            routes.insert(name.to_owned(), Counts::from_wire(entry));
        }
        let before = self
            .nodes
            .get(&node)
            .filter(|old| old.epoch == report.epoch);
        for (name, counts) in &routes {
            delta.add(counts, before.and_then(|b| b.routes.get(name)));
        }
        self.nodes.insert(
            node,
            NodeTraffic {
                epoch: report.epoch,
                reported_unix: now_unix,
                routes,
            },
        );
        delta
    }

    /// `node`'s latest report, if it sent one.
    pub fn of_node(&self, node: NodeId) -> Option<&NodeTraffic> {
        self.nodes.get(&node)
    }

    /// `route` summed over every node that reported it, and when the latest of those
    /// reports came; `None` if no node did.
    pub fn of_route(&self, route: &str) -> Option<(Counts, u64)> {
        let mut sum: Option<(Counts, u64)> = None;
        for traffic in self.nodes.values() {
            if let Some(counts) = traffic.routes.get(route) {
                let (total, at) = sum.get_or_insert_with(Default::default);
                total.add(counts);
                *at = (*at).max(traffic.reported_unix);
            }
        }
        sum
    }

    /// Forgets a deleted node's traffic.
    pub fn forget_node(&mut self, node: NodeId) {
        self.nodes.remove(&node);
    }
}

/// The `q` quantile (0 to 1) of a latency histogram over [`LATENCY_BUCKETS_US`], in
/// microseconds, interpolated linearly within its bucket as Prometheus's
/// `histogram_quantile` does. A quantile that falls past the largest bound is that bound
/// (the histogram cannot say more). `None` for an empty histogram.
pub fn quantile_us(latency: &[u64], q: f64) -> Option<f64> {
    let total: u64 = latency.iter().fold(0u64, |a, b| a.saturating_add(*b));
    if total == 0 || !(0.0..=1.0).contains(&q) {
        return None;
    }
    let rank = q * total as f64;
    let mut below = 0u64;
    for (i, &n) in latency.iter().enumerate() {
        let through = below.saturating_add(n);
        if n > 0 && through as f64 >= rank {
            let Some(&upper) = LATENCY_BUCKETS_US.get(i) else {
                return LATENCY_BUCKETS_US.last().map(|&b| b as f64);
            };
            let lower = if i == 0 { 0 } else { LATENCY_BUCKETS_US[i - 1] };
            let within = ((rank - below as f64) / n as f64).clamp(0.0, 1.0);
            return Some(lower as f64 + (upper - lower) as f64 * within);
        }
        below = through;
    }
    LATENCY_BUCKETS_US.last().map(|&b| b as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use edge_proto::{Seq, text};

    fn entry(route: &str, requests: u64, hit: u64) -> RouteTraffic {
        RouteTraffic {
            route: text(route),
            requests,
            hit,
            miss: requests - hit,
            latency: Seq::new(vec![hit, requests - hit]).expect("fits"),
            ..RouteTraffic::default()
        }
    }

    fn report(epoch: u64, routes: Vec<RouteTraffic>) -> TrafficReport {
        TrafficReport {
            epoch,
            routes: Seq::new(routes).expect("fits"),
        }
    }

    const NODE: NodeId = NodeId([1; 16]);

    #[test]
    fn quantiles_interpolate_within_their_bucket() {
        // 100 answers: 50 within 100 us, 49 in (100, 250], 1 in (250, 500].
        let mut latency = vec![0; LATENCY_BUCKETS_US.len() + 1];
        latency[0] = 50;
        latency[1] = 49;
        latency[2] = 1;
        assert_eq!(quantile_us(&latency, 0.5), Some(100.0));
        let p99 = quantile_us(&latency, 0.99).expect("some");
        assert!((p99 - 250.0).abs() < 1e-9, "{p99}");
        assert_eq!(quantile_us(&latency, 1.0), Some(500.0));
        let p25 = quantile_us(&latency, 0.25).expect("some");
        assert!((p25 - 50.0).abs() < 1e-9, "{p25}");
    }

    #[test]
    fn quantiles_of_nothing_or_past_the_largest_bound() {
        assert_eq!(quantile_us(&[], 0.5), None);
        assert_eq!(quantile_us(&[0, 0, 0], 0.5), None);
        let mut slow = vec![0; LATENCY_BUCKETS_US.len() + 1];
        *slow.last_mut().expect("slots") = 3;
        assert_eq!(quantile_us(&slow, 0.5), Some(10_000_000.0));
        let summary = Counts {
            latency: slow,
            ..Counts::default()
        }
        .summary();
        assert_eq!(summary.p99_ms, Some(10_000.0));
    }

    #[test]
    fn deltas_follow_one_epoch_and_start_over_on_a_restart() {
        let mut book = TrafficBook::new();
        let first = book.record(NODE, &report(7, vec![entry("shop", 10, 4)]), |_| true, 100);
        assert_eq!((first.requests, first.hit, first.miss), (10, 4, 6));
        let more = book.record(NODE, &report(7, vec![entry("shop", 15, 8)]), |_| true, 110);
        assert_eq!((more.requests, more.hit, more.miss), (5, 4, 1));
        // The proxy restarted: its counters began again.
        let restarted = book.record(NODE, &report(8, vec![entry("shop", 3, 1)]), |_| true, 120);
        assert_eq!((restarted.requests, restarted.hit), (3, 1));
        let node = book.of_node(NODE).expect("kept");
        assert_eq!((node.epoch, node.reported_unix), (8, 120));
        assert_eq!(
            node.routes["shop"].requests, 3,
            "the latest report, not a sum"
        );
    }

    #[test]
    fn a_route_counting_from_zero_again_is_a_reset() {
        let mut book = TrafficBook::new();
        book.record(NODE, &report(7, vec![entry("shop", 10, 4)]), |_| true, 100);
        let again = book.record(NODE, &report(7, vec![entry("shop", 2, 2)]), |_| true, 110);
        assert_eq!((again.requests, again.hit), (2, 2));
    }

    #[test]
    fn routes_the_fleet_does_not_serve_are_dropped() {
        let mut book = TrafficBook::new();
        let served = |r: &str| r == "shop";
        let delta = book.record(
            NODE,
            &report(
                1,
                vec![
                    entry("shop", 10, 4),
                    entry("made-up", 1000, 1000),
                    entry("shop", 99, 99),
                ],
            ),
            served,
            100,
        );
        assert_eq!(delta.dropped, 2);
        assert_eq!(delta.requests, 10);
        let kept: Vec<&String> = book.of_node(NODE).expect("kept").routes.keys().collect();
        assert_eq!(kept, ["shop"]);
        assert_eq!(book.of_route("made-up"), None);
    }

    #[test]
    fn a_route_sums_over_nodes() {
        let mut book = TrafficBook::new();
        let other = NodeId([2; 16]);
        book.record(NODE, &report(1, vec![entry("shop", 10, 4)]), |_| true, 100);
        book.record(other, &report(9, vec![entry("shop", 5, 5)]), |_| true, 105);
        let (sum, at) = book.of_route("shop").expect("reported");
        assert_eq!((sum.requests, sum.hit, sum.miss, at), (15, 9, 6, 105));
        assert_eq!(sum.latency, [9, 6]);
        book.forget_node(other);
        assert_eq!(book.of_route("shop").map(|(c, _)| c.requests), Some(10));
    }
}
