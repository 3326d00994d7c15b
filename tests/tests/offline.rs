//! A node without its orchestrator, over real QUIC and real processes: what it stored, it
//! runs, restarts and reports on its own, and a reconnect changes none of it.

use edge_tests::{PATIENCE, TestNode, TestOrchestrator, alive, eventually, node_config, now_ms};
use serde_json::{Value, json};
use std::path::Path;

/// The pid the workload wrote at its last start.
fn written_pid(file: &Path) -> Option<u32> {
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
}

/// Polls until the workload has written a live pid other than `not`; returns it.
async fn a_new_live_pid(file: &Path, not: Option<u32>, what: &str) -> u32 {
    let mut found = None;
    let seen = eventually(PATIENCE, || {
        found = written_pid(file).filter(|p| Some(*p) != not && alive(*p));
        found.is_some()
    })
    .await;
    assert!(
        seen.is_some(),
        "{what}: no new live pid (last {:?})",
        written_pid(file)
    );
    found.unwrap_or_default()
}

/// A reboot with no uplink: the node, started while its orchestrator is down, runs the
/// workload it stored, restarts it when it dies, and when the orchestrator is back reports
/// that same process, with the restart counted; the reconnect restarts nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_started_without_its_orchestrator_runs_and_restarts_what_it_stored() {
    let orch = TestOrchestrator::start().await;
    let token = orch.token(1);
    let node_dir = tempfile::tempdir().expect("tmp");
    let config = node_config(
        "alone",
        node_dir.path(),
        orch.orch.quic_addr,
        Some((&token, &orch.ca_hash())),
        "",
    );
    let node = TestNode::spawn(config.clone());
    assert!(
        eventually(PATIENCE, || orch.online("alone"))
            .await
            .is_some()
    );

    let pid_file = node_dir.path().join("workload.pid");
    let script = b"#!/bin/sh\necho $$ > \"$PID_FILE\"\nexec sleep 600\n";
    let digest = orch.artifact(script).await;
    let spec = json!({
        "name": "till",
        "version": "1.0.0",
        "artifact": digest,
        "env": {"PID_FILE": pid_file.display().to_string()},
        "resources": {"cpu_millis": 100, "memory_bytes": 32 << 20},
    });
    let (status, body) = orch.api("POST", "/v1/workloads", Some(spec)).await;
    assert_eq!(status, 201, "{body}");
    let first = a_new_live_pid(&pid_file, None, "deployed").await;

    // Everything stops, as for a power cut: the node's daemon (and with it the workload),
    // then the orchestrator.
    node.stop().await.expect("clean stop");
    assert!(eventually(PATIENCE, || !alive(first)).await.is_some());
    let stopped = orch.stop().await;

    // The node comes back alone: it runs what it stored without waiting for anyone.
    let node = TestNode::spawn(config);
    let second = a_new_live_pid(&pid_file, Some(first), "started with no uplink").await;
    // The workload dies; the node restarts it, still alone.
    let killed = std::process::Command::new("kill")
        .args(["-9", &second.to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let third = a_new_live_pid(&pid_file, Some(second), "restarted with no uplink").await;

    // The orchestrator is back: it learns of that very process and of the restart, and the
    // reconnect restarts nothing.
    let back_ms = now_ms();
    let orch = TestOrchestrator::resume(stopped).await;
    assert!(
        eventually(PATIENCE, || orch.online("alone"))
            .await
            .is_some()
    );
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut poll = tokio::time::interval(std::time::Duration::from_millis(50));
    let reported = loop {
        poll.tick().await;
        let instance = orch.running_instance("till").await;
        if let Some(i) = instance.filter(|i| i["pid"].as_u64() == Some(u64::from(third))) {
            break i;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the API shows the process the node started alone: {:?}",
            orch.running_instance("till").await
        );
    };
    assert!(
        reported["restarts"].as_u64() >= Some(1),
        "the offline restart is counted: {reported}"
    );
    assert_eq!(
        written_pid(&pid_file),
        Some(third),
        "not restarted by the reconnect"
    );
    assert!(alive(third));

    // And what happened while it was alone reaches the orchestrator from the node's outbox,
    // each event with the time it happened: the restart's too.
    let mut events = Vec::new();
    let seen = eventually(PATIENCE, || {
        events = offline_events(&orch, back_ms, third);
        !events.is_empty()
    })
    .await;
    assert!(
        seen.is_some(),
        "the restart made offline is an event: {:?}",
        offline_events(&orch, u64::MAX, third)
    );
    node.stop().await.expect("clean stop");
}

/// The stored events that say `pid` was running and happened before `before_ms`.
fn offline_events(orch: &TestOrchestrator, before_ms: u64, pid: u32) -> Vec<Value> {
    let events = orch.orch.registry.events(None).expect("stored events");
    events
        .into_iter()
        .filter(|e| e.at_ms < before_ms)
        .filter_map(|e| serde_json::to_value(e).ok())
        .filter(|e| {
            e["what"]["state"] == "running" && e["what"]["pid"].as_u64() == Some(u64::from(pid))
        })
        .collect()
}
