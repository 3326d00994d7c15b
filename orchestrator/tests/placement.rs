//! The deployer with a placement model, as the QUIC server and the API drive it: an instance
//! that reports running is the model's shadow check (the status counts it), and a model that
//! fails to run steps aside for the fixed rule, which the status, the
//! `edge_orchestrator_place_mode` gauge and one log line say at once.

use edge_proto::{NodeId, WorkloadReport, WorkloadState, text};
use orchestrator::app::Handles;
use orchestrator_core::fleet::NodeRecord;
use orchestrator_core::scheduler::learned::{PlacePredict, PlacePrediction, PredictError};
use orchestrator_core::store::{MemStore, Store, StoredSeqs};
use orchestrator_core::workload::WorkloadSpec;
use serde_json::json;
use std::sync::Arc;

const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn node(i: u8) -> NodeRecord {
    let stored = json!({
        "id": NodeId([i; 16]).to_string(),
        "name": format!("node-{i}"),
        "enrolled_unix": 0,
        "last_seen_unix": 0,
        "info": {
            "arch": "x86_64", "os": "linux", "os_version": "", "kernel": "", "hostname": "",
            "cpus": 4, "cpu_model": "",
            "memory_bytes": 8u64 << 30, "disk_bytes": 32u64 << 30, "disk_free_bytes": 16u64 << 30,
            "accelerators": [], "board": null, "labels": {}, "location": null
        }
    });
    serde_json::from_str(&stored.to_string()).expect("a node record")
}

fn web(name: &str) -> WorkloadSpec {
    let spec = json!({
        "name": name,
        "version": "1",
        "artifact": DIGEST,
        "resources": {"cpu_millis": 100, "memory_bytes": 16u64 << 20},
    });
    WorkloadSpec::from_json(spec.to_string().as_bytes()).expect("a valid spec")
}

/// Predicts a 200 ms startup and no failure for every row, or fails to run.
#[derive(Debug)]
struct Stub {
    fail: bool,
}

impl PlacePredict for Stub {
    fn predict(
        &mut self,
        _features: &[f32],
        out: &mut [PlacePrediction],
    ) -> Result<(), PredictError> {
        if self.fail {
            return Err(PredictError("the stub fails".into()));
        }
        out.fill(PlacePrediction::from_outputs(200f32.ln(), 0.0));
        Ok(())
    }
}

/// The handles over three online nodes, placing with `stub`.
fn handles(stub: Stub) -> Handles {
    let store = Arc::new(MemStore::default());
    for i in 0..3 {
        store.put_node(&node(i)).expect("stored");
    }
    let handles = Handles::open(store).expect("opens");
    handles.deployments.set_place_model(
        Ok(Box::new(stub)),
        Some(format!("sha256:{}", "ab".repeat(32))),
    );
    for i in 0..3 {
        drop(
            handles
                .deployments
                .node_up(node(i), 1, None, &StoredSeqs::default()),
        );
    }
    handles
}

fn gauge(handles: &Handles, mode: &str) -> Option<String> {
    let series = format!("edge_orchestrator_place_mode{{mode=\"{mode}\"}} ");
    handles
        .metrics
        .encode()
        .lines()
        .find_map(|l| l.strip_prefix(series.as_str()).map(str::to_owned))
}

#[tokio::test]
async fn an_instance_that_runs_is_the_model_s_shadow_check() {
    let h = handles(Stub { fail: false });
    let view = h.deployments.placement_view();
    assert_eq!((view.mode.as_str(), view.drift_samples), ("model", 0));
    assert_eq!(gauge(&h, "model").as_deref(), Some("1"));

    let applied = h
        .deployments
        .apply(web("web"), 4u64 << 20, &h.metrics)
        .await
        .expect("deploys");
    assert_eq!(applied.placed, 1);
    let shown = applied.shown.expect("deployed");
    let (holder, _) = shown.nodes[0];
    let report = WorkloadReport {
        workload: text("web"),
        generation: shown.generation,
        state: WorkloadState::Running,
        restarts: 0,
        pid: Some(42),
        exit_code: None,
        message: text(""),
    };
    h.deployments
        .report(holder, &report)
        .wait()
        .await
        .expect("ok");
    let view = h.deployments.placement_view();
    assert_eq!(view.mode, "model");
    assert_eq!(view.drift_samples, 1, "one startup observed: {view:?}");
    assert!(view.drift.is_finite() && view.drift >= 0.0);
    // Reported again: the same instance is not measured twice.
    h.deployments
        .report(holder, &report)
        .wait()
        .await
        .expect("ok");
    assert_eq!(h.deployments.placement_view().drift_samples, 1);
}

#[tokio::test]
async fn a_model_that_fails_to_run_steps_aside_and_the_status_and_gauge_say_so() {
    let h = handles(Stub { fail: true });
    assert_eq!(h.deployments.placement_view().mode, "model");
    let applied = h
        .deployments
        .apply(web("web"), 4u64 << 20, &h.metrics)
        .await
        .expect("deploys");
    assert_eq!(applied.placed, 1, "the fallback placed it");
    let view = h.deployments.placement_view();
    assert_eq!(view.mode, "fallback");
    assert_eq!(view.reason.as_deref(), Some("broken"));
    assert_eq!(gauge(&h, "broken").as_deref(), Some("1"));
    assert_eq!(gauge(&h, "model").as_deref(), Some("0"));
}
