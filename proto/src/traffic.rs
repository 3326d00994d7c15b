//! What a node's proxy counted, per route, for the orchestrator: [`TrafficReport`], sent as
//! [`NodeMsg::Traffic`](crate::NodeMsg::Traffic) with the status reports when it changed.
//!
//! Counters are cumulative since the node's proxy started counting, which `epoch` names: a
//! report with another `epoch` comes from a restarted proxy whose counters began again at
//! zero. Latency is a histogram over [`LATENCY_BUCKETS_US`], from which the orchestrator
//! derives quantiles and sums across nodes.

use crate::bounded::Seq;
use crate::msg::{MAX_NAME_LEN, Text};
use serde::{Deserialize, Serialize};

/// The upper bounds of the proxy's latency buckets, in microseconds: 100 us to 10 s, a cache
/// hit and a cold start on one scale. `RouteTraffic::latency[i]` counts answers within
/// bound `i` and above bound `i - 1`; the slot after the last bound counts slower ones.
pub const LATENCY_BUCKETS_US: [u64; 16] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

/// A node's proxy traffic, by route.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TrafficReport {
    /// Chosen when the proxy starts counting; another value means the counters restarted.
    pub epoch: u64,
    /// At most [`TrafficReport::MAX_ROUTES`] routes, the busiest when there are more.
    pub routes: Seq<RouteTraffic, { TrafficReport::MAX_ROUTES }>,
}

impl TrafficReport {
    /// The most routes one report carries; the largest report fits one frame (pinned by the
    /// wire tests).
    pub const MAX_ROUTES: usize = 128;
    /// The most latency slots a route carries.
    pub const MAX_LATENCY_SLOTS: usize = 32;
}

/// One route's counters since the proxy started counting.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RouteTraffic {
    /// The route's name on the node: the workload that exposes it, or a static upstream.
    pub route: Text<MAX_NAME_LEN>,
    /// Every answer, whatever its status or cache outcome.
    pub requests: u64,
    /// Answers by cache outcome (RFC 9211's terms as the node counts them).
    pub hit: u64,
    pub miss: u64,
    pub stale: u64,
    pub revalidated: u64,
    /// Past the cache, or not storable.
    pub bypass: u64,
    /// Answers with a 5xx status.
    pub errors_5xx: u64,
    pub retries: u64,
    pub breaker_opens: u64,
    /// Answers by latency slot over [`LATENCY_BUCKETS_US`] (not cumulative).
    pub latency: Seq<u64, { TrafficReport::MAX_LATENCY_SLOTS }>,
}
