//! The reports handle: what each node last said about each workload instance. The QUIC
//! server records; the API reads them into its workload views and forgets a deleted
//! workload's. Kept in memory only: a node sends every instance's state again when its
//! session opens.

use crate::metrics::{Metrics, WorkloadEvent};
use edge_proto::{NodeId, WorkloadReport};
use orchestrator_core::deploy::state_name;
use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

/// What a node last said about one workload instance.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceReport {
    pub report: WorkloadReport,
    pub at_unix: u64,
}

/// The last report of every workload instance.
#[derive(Debug, Default)]
pub struct Reports {
    /// By (workload, node): one workload's reports are one range.
    last: Mutex<BTreeMap<(String, NodeId), InstanceReport>>,
    /// What each node's proxy last reported.
    pub traffic: crate::traffic::Traffic,
}

impl Reports {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<(String, NodeId), InstanceReport>> {
        // Each entry is replaced whole: a panic elsewhere leaves nothing half-written.
        self.last.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps `report` as `node`'s latest for its workload. An instance entering a new state
    /// is an operator-facing event: logged and counted in `metrics`.
    pub fn record(&self, node: NodeId, report: WorkloadReport, at_unix: u64, metrics: &Metrics) {
        let mut last = self.lock();
        let key = (report.workload.to_string(), node);
        if last
            .get(&key)
            .is_none_or(|old| old.report.state != report.state)
        {
            metrics.workload(&WorkloadEvent::InstanceState {
                node,
                workload: report.workload.as_str(),
                state: state_name(report.state),
                restarts: report.restarts,
                message: report.message.as_str(),
            });
        }
        last.insert(key, InstanceReport { report, at_unix });
    }

    /// The last report of every instance of `workload`, by node.
    pub fn of(&self, workload: &str) -> Vec<(NodeId, InstanceReport)> {
        let (first, last) = (NodeId([0; 16]), NodeId([u8::MAX; 16]));
        self.lock()
            .range((workload.to_owned(), first)..=(workload.to_owned(), last))
            .map(|((_, node), r)| (*node, r.clone()))
            .collect()
    }

    /// Drops the reports of a deleted workload.
    pub fn forget(&self, workload: &str) {
        self.lock().retain(|(w, _), _| w != workload);
    }
}
