//! The sync when a node's session opens, over real QUIC with a real node daemon: the node
//! says what it holds and where its outbox stands, and gets only what changed while it was
//! away; a node that lost its outbox numbers its events above what the orchestrator holds.

use edge_tests::{PATIENCE, TestNode, TestOrchestrator, alive, eventually, node_config, now_ms};
use orchestrator_core::events::{EventRecord, Origin};
use serde_json::{Value, json};

/// Polls until `name` runs (at `generation`, if given); returns its pid.
async fn runs(orch: &TestOrchestrator, name: &str, generation: Option<u64>) -> u32 {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut poll = tokio::time::interval(std::time::Duration::from_millis(50));
    loop {
        poll.tick().await;
        let (_, w) = orch
            .api("GET", &format!("/v1/workloads/{name}"), None)
            .await;
        let current = generation.is_none_or(|g| w["generation"].as_u64() == Some(g));
        if current
            && let Some(pid) = orch
                .running_instance(name)
                .await
                .and_then(|i| i["pid"].as_u64())
            && let Ok(pid) = u32::try_from(pid)
            && alive(pid)
        {
            return pid;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} never ran (generation {generation:?}): {w}"
        );
    }
}

fn spec(name: &str, version: &str, digest: &str) -> Value {
    json!({
        "name": name,
        "version": version,
        "artifact": digest,
        "resources": {"cpu_millis": 50, "memory_bytes": 16 << 20},
    })
}

/// The node's own events the orchestrator stored.
fn node_events(orch: &TestOrchestrator) -> Vec<EventRecord> {
    orch.orch
        .registry
        .events(None)
        .expect("stored events")
        .into_iter()
        .filter(|e| e.origin == Origin::Node)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_node_gets_only_what_changed_while_it_was_away() {
    let orch = TestOrchestrator::start().await;
    let token = orch.token(1);
    let node_dir = tempfile::tempdir().expect("tmp");
    let config = node_config(
        "returns",
        node_dir.path(),
        orch.orch.quic_addr,
        Some((&token, &orch.ca_hash())),
        "",
    );
    let mut node = TestNode::spawn(config.clone());
    assert!(
        eventually(PATIENCE, || orch.online("returns"))
            .await
            .is_some()
    );
    let digest = orch.artifact(b"#!/bin/sh\nexec sleep 600\n").await;
    for name in ["keep", "old", "bump"] {
        let (status, body) = orch
            .api("POST", "/v1/workloads", Some(spec(name, "1.0.0", &digest)))
            .await;
        assert_eq!(status, 201, "{body}");
    }
    for name in ["keep", "old", "bump"] {
        runs(&orch, name, Some(1)).await;
    }
    let syncs = |mode: &str| orch.metric(&format!("edge_syncs_total{{mode=\"{mode}\"}}"));
    let sent = |kind: &str| orch.metric(&format!("edge_sync_messages_total{{kind=\"{kind}\"}}"));
    // A new node says it holds nothing, which is everything it holds: changes.
    assert_eq!(syncs("snapshot"), 0.0);

    // 1. The daemon restarts (a reboot) and nothing changed meanwhile: its hello lists all
    //    three at generation 1, and the sync sends nothing.
    let (changes, assigned, unassigned) = (syncs("changes"), sent("assign"), sent("unassign"));
    node.stop().await.expect("clean stop");
    node = TestNode::spawn(config.clone());
    assert!(
        eventually(PATIENCE, || syncs("changes") > changes)
            .await
            .is_some(),
        "a node that said what it holds gets changes, not a snapshot"
    );
    assert_eq!(sent("assign"), assigned, "nothing to assign");
    assert_eq!(sent("unassign"), unassigned, "nothing to unassign");
    for name in ["keep", "old", "bump"] {
        runs(&orch, name, Some(1)).await;
    }
    assert!(
        node_dir.path().join("workloads/applied").exists(),
        "what it admitted is kept across restarts"
    );

    // 2. Away while one workload changed and another was deleted: exactly those two.
    node.stop().await.expect("clean stop");
    let (status, body) = orch
        .api(
            "POST",
            "/v1/workloads",
            Some(spec("bump", "2.0.0", &digest)),
        )
        .await;
    assert!(status == 200 || status == 201, "{status} {body}");
    let (status, body) = orch.api("DELETE", "/v1/workloads/old", None).await;
    assert!(status == 200 || status == 204, "{status} {body}");
    let (changes, assigned, unassigned) = (syncs("changes"), sent("assign"), sent("unassign"));
    node = TestNode::spawn(config.clone());
    assert!(
        eventually(PATIENCE, || syncs("changes") > changes)
            .await
            .is_some()
    );
    assert_eq!(sent("assign"), assigned + 1.0, "the new generation only");
    assert_eq!(
        sent("unassign"),
        unassigned + 1.0,
        "the deleted workload only"
    );
    runs(&orch, "bump", Some(2)).await;
    let keep = runs(&orch, "keep", Some(1)).await;
    let applied = node_daemon::applied::AppliedFile::new(node_dir.path()).load();
    let generation = |name: &str| {
        applied
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, e)| e.generation)
    };
    assert_eq!(generation("old"), None, "{applied:?}");
    assert_eq!(generation("bump"), Some(2), "{applied:?}");

    // 3. The node loses its outbox but keeps its identity: what it sends next is numbered
    //    above what the orchestrator holds, and nothing stored is overwritten.
    let mut before = Vec::new();
    assert!(
        eventually(PATIENCE, || {
            before = node_events(&orch);
            !before.is_empty()
        })
        .await
        .is_some()
    );
    node.stop().await.expect("clean stop");
    assert!(eventually(PATIENCE, || !alive(keep)).await.is_some());
    let highest = node_events(&orch)
        .iter()
        .map(|e| e.seq)
        .max()
        .unwrap_or_default();
    before = node_events(&orch);
    std::fs::remove_dir_all(node_dir.path().join("outbox")).expect("outbox removed");
    node = TestNode::spawn(config);
    // The restart starts `keep` again: its new process is an event, numbered above.
    let restarted = runs(&orch, "keep", Some(1)).await;
    let mut after = Vec::new();
    let numbered_above = eventually(PATIENCE, || {
        after = node_events(&orch);
        after
            .iter()
            .any(|e| e.seq > highest && e.what_json()["pid"].as_u64() == Some(u64::from(restarted)))
    })
    .await;
    assert!(
        numbered_above.is_some(),
        "the new process's event, above {highest}: {after:?}"
    );
    for old in &before {
        assert!(
            after.contains(old),
            "a stored event was overwritten or lost: {old:?}"
        );
    }
    node.stop().await.expect("clean stop");
}

/// An event's `what` as JSON, to read a field of whichever kind it is.
trait WhatJson {
    fn what_json(&self) -> Value;
}

impl WhatJson for EventRecord {
    fn what_json(&self) -> Value {
        serde_json::to_value(&self.what).unwrap_or_default()
    }
}

/// What `edge-node ctl outbox` says, through the node's socket.
async fn outbox_summary(data_dir: &std::path::Path) -> Value {
    node_daemon::ctl::call(
        &data_dir.join("ctl.sock"),
        &node_daemon::ctl::Request::Outbox {},
    )
    .await
    .expect("ctl answers")
}

/// A node without its orchestrator keeps its load in the outbox, a status per interval and
/// a summary per window, and the orchestrator stores them, with the times they were taken,
/// once the node is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_away_keeps_its_load_and_the_orchestrator_learns_it_on_return() {
    let orch = TestOrchestrator::start().await;
    let token = orch.token(1);
    let node_dir = tempfile::tempdir().expect("tmp");
    let config = node_config(
        "away",
        node_dir.path(),
        orch.orch.quic_addr,
        Some((&token, &orch.ca_hash())),
        "[outbox]\nmetrics_window_secs = 5\n",
    );
    let node = TestNode::spawn(config);
    assert!(eventually(PATIENCE, || orch.online("away")).await.is_some());
    let stopped = orch.stop().await;
    let away_ms = now_ms();

    // Away: statuses pile up, and a window's summary.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut poll = tokio::time::interval(std::time::Duration::from_millis(200));
    loop {
        poll.tick().await;
        let summary = outbox_summary(node_dir.path()).await;
        if summary["status"].as_u64() >= Some(3) && summary["metrics"].as_u64() >= Some(1) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no statuses and summary while away: {summary}"
        );
    }
    let back_ms = now_ms();

    let orch = TestOrchestrator::resume(stopped).await;
    let stored = |kind: &'static str| {
        orch.orch
            .registry
            .events(None)
            .expect("stored")
            .into_iter()
            .filter(move |e| e.what_json()["kind"] == kind)
    };
    let offline_statuses = || {
        stored("status")
            .filter(|e| (away_ms..back_ms).contains(&e.at_ms))
            .count()
    };
    assert!(
        eventually(PATIENCE, || offline_statuses() >= 3
            && stored("metrics").count() >= 1)
        .await
        .is_some(),
        "statuses {} and summaries {} stored",
        offline_statuses(),
        stored("metrics").count()
    );
    let summary = stored("metrics").next().expect("a summary").what_json();
    assert_eq!(summary["window_secs"], 5, "{summary}");
    assert!(summary["samples"].as_u64() >= Some(1), "{summary}");
    let cpu = &summary["cpu_percent"];
    assert!(cpu["min"].as_f64() <= cpu["max"].as_f64(), "{summary}");
    // And the operator sees them.
    let (status, events) = orch.api("GET", "/v1/events?node=away", None).await;
    assert_eq!(status, 200, "{events}");
    let kinds: Vec<&str> = events
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert!(
        kinds.contains(&"status") && kinds.contains(&"metrics"),
        "{kinds:?}"
    );
    // The outbox lets go of them once stored (and records no status while online).
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        poll.tick().await;
        let summary = outbox_summary(node_dir.path()).await;
        if summary["status"].as_u64() == Some(0) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "statuses still held: {summary}"
        );
    }
    node.stop().await.expect("clean stop");
}
