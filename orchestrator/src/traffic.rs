//! The traffic handle: each node's latest proxy traffic report, as
//! `orchestrator_core::traffic::TrafficBook` keeps it. The QUIC server records (cut to the
//! workloads the route book exposes), the API reads it into its node and workload views.
//! Kept in memory only: a node sends its report again once its next session opens.

use crate::metrics::{CacheLabel, Metrics};
use edge_proto::{NodeId, TrafficReport};
use orchestrator_core::routes::RouteBook;
use orchestrator_core::traffic::{Counts, NodeTraffic, TrafficBook};
use std::sync::{Mutex, MutexGuard};
use tracing::debug;

/// The latest traffic of every node.
#[derive(Debug, Default)]
pub struct Traffic {
    book: Mutex<TrafficBook>,
}

impl Traffic {
    fn lock(&self) -> MutexGuard<'_, TrafficBook> {
        // A record replaces a node's entry whole: a panic elsewhere leaves nothing half-written.
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps `report` as `node`'s latest, with only the routes of exposed workloads, and
    /// adds what it counted since the last one to the fleet's totals in `metrics`.
    pub fn record(
        &self,
        node: NodeId,
        report: &TrafficReport,
        routes: &RouteBook,
        at_unix: u64,
        metrics: &Metrics,
    ) {
        let delta = self.lock().record(
            node,
            report,
            |route| routes.routes_of(route).is_some(),
            at_unix,
        );
        if delta.dropped > 0 {
            debug!(node = %node, dropped = delta.dropped, "traffic for routes the fleet does not serve");
        }
        for (cache, n) in [
            ("hit", delta.hit),
            ("miss", delta.miss),
            ("stale", delta.stale),
            ("revalidated", delta.revalidated),
            ("bypass", delta.bypass),
        ] {
            metrics
                .fleet_proxy_answers
                .get_or_create(&CacheLabel { cache })
                .inc_by(n);
        }
        metrics.fleet_proxy_errors.inc_by(delta.errors_5xx);
    }

    /// `node`'s latest report.
    pub fn of_node(&self, node: NodeId) -> Option<NodeTraffic> {
        self.lock().of_node(node).cloned()
    }

    /// `route` summed over the nodes, and when the latest of their reports came.
    pub fn of_route(&self, route: &str) -> Option<(Counts, u64)> {
        self.lock().of_route(route)
    }

    /// Forgets a deleted node's traffic.
    pub fn forget_node(&self, node: NodeId) {
        self.lock().forget_node(node);
    }
}
