//! Replacement after a long disconnect, with real nodes over real QUIC: a node whose link is
//! cut for longer than a workload's `max_disconnect_secs` has its instance placed again on
//! the third node while it runs on; when the link heals, the workload's `reconcile` rule
//! leaves exactly one of the two, the survivor never restarted, and `GET /v1/events` says
//! what was decided.

use edge_tests::relay::Relay;
use edge_tests::{PATIENCE, TestNode, TestOrchestrator, alive, eventually, node_config};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// What the API says of each instance of `name` that runs: (pid, restarts), by node name.
async fn running(orch: &TestOrchestrator, name: &str) -> BTreeMap<String, (u32, u64)> {
    let (status, w) = orch
        .api("GET", &format!("/v1/workloads/{name}"), None)
        .await;
    if status != 200 {
        return BTreeMap::new();
    }
    w["instances"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| i["state"] == "running")
        .filter_map(|i| {
            Some((
                i["node"].as_str()?.to_owned(),
                (
                    u32::try_from(i["pid"].as_u64()?).ok()?,
                    i["restarts"].as_u64()?,
                ),
            ))
        })
        .collect()
}

/// Every instance the API lists for `name`, running or not, by node name.
async fn listed(orch: &TestOrchestrator, name: &str) -> Vec<String> {
    let (_, w) = orch
        .api("GET", &format!("/v1/workloads/{name}"), None)
        .await;
    w["instances"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["node"].as_str().map(str::to_owned))
        .collect()
}

/// Polls until `check` holds of the running instances of `name`; returns them.
async fn wait_running(
    orch: &TestOrchestrator,
    name: &str,
    what: &str,
    check: impl Fn(&BTreeMap<String, (u32, u64)>) -> bool,
) -> BTreeMap<String, (u32, u64)> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut poll = tokio::time::interval(std::time::Duration::from_millis(50));
    loop {
        poll.tick().await;
        let now = running(orch, name).await;
        if check(&now) {
            return now;
        }
        if tokio::time::Instant::now() > deadline {
            let (_, w) = orch
                .api("GET", &format!("/v1/workloads/{name}"), None)
                .await;
            panic!("{what}: not seen in time; the workload is {w:#}");
        }
    }
}

/// The orchestrator's events about `node`.
async fn decisions(orch: &TestOrchestrator, node: &str) -> Vec<Value> {
    let (status, events) = orch
        .api("GET", &format!("/v1/events?node={node}"), None)
        .await;
    assert_eq!(status, 200, "{events}");
    events
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["origin"] == "orchestrator")
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_away_too_long_is_replaced_and_one_instance_survives_its_return() {
    let orch = TestOrchestrator::start().await;
    let token = orch.token(3);
    let names = ["shop-1", "shop-2", "shop-3"];
    let dirs: Vec<_> = names
        .iter()
        .map(|_| tempfile::tempdir().expect("tmp"))
        .collect();
    // Each node behind a relay of its own, so that any one link can be cut.
    let mut relays = BTreeMap::new();
    let mut nodes = Vec::new();
    for (name, dir) in names.iter().zip(&dirs) {
        let relay = Relay::start(orch.orch.quic_addr).await;
        nodes.push(TestNode::spawn(node_config(
            name,
            dir.path(),
            relay.addr,
            Some((&token, &orch.ca_hash())),
            "",
        )));
        relays.insert((*name).to_owned(), relay);
    }
    for name in names {
        assert!(
            eventually(PATIENCE, || orch.online(name)).await.is_some(),
            "{name} online"
        );
    }

    let script = b"#!/bin/sh\nexec sleep 600\n";
    let digest = orch.artifact(script).await;
    let spec = |name: &str, replicas: u32, secs: u32, rule: &str| {
        json!({
            "name": name,
            "version": "1.0.0",
            "artifact": digest,
            "replicas": replicas,
            "max_disconnect_secs": secs,
            "reconcile": rule,
            "resources": {"cpu_millis": 100, "memory_bytes": 32 << 20}
        })
    };
    // Bad values are refused naming the field, and nothing is deployed.
    for (field, value, placement) in [
        ("max_disconnect_secs", json!(0), false),
        ("max_disconnect_secs", json!(31_536_001), false),
        ("max_disconnect_secs", json!(60), true),
        ("reconcile", json!("keep_both"), false),
    ] {
        let mut bad = spec("bad", 1, 60, "keep_original");
        bad[field] = value;
        if placement {
            bad.as_object_mut().expect("an object").remove("replicas");
            bad["placement"] = json!("per-node");
        }
        let (status, body) = orch.api("POST", "/v1/workloads", Some(bad)).await;
        assert_eq!(status, 400, "{body}");
        assert!(
            body["message"]
                .as_str()
                .is_some_and(|m| m.starts_with(field)),
            "{body}"
        );
    }
    // Two workloads of two replicas on three nodes: at least one node holds both. A third
    // on every node would be replaced only after an hour.
    for (name, replicas, secs, rule) in [
        ("till", 2, 2, "keep_original"),
        ("scale", 2, 2, "keep_replacement"),
        ("steady", 3, 3600, "keep_replacement"),
    ] {
        let (status, body) = orch
            .api(
                "POST",
                "/v1/workloads",
                Some(spec(name, replicas, secs, rule)),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        assert_eq!(body["spec"]["max_disconnect_secs"], secs, "{body}");
        assert_eq!(body["spec"]["reconcile"], rule, "{body}");
    }
    let (_, listed_all) = orch.api("GET", "/v1/workloads", None).await;
    assert_eq!(listed_all.as_array().map(Vec::len), Some(3), "{listed_all}");
    let steady = wait_running(&orch, "steady", "steady everywhere", |m| m.len() == 3).await;
    let till = wait_running(&orch, "till", "till on two nodes", |m| m.len() == 2).await;
    let scale = wait_running(&orch, "scale", "scale on two nodes", |m| m.len() == 2).await;
    let cut = names
        .iter()
        .find(|n| till.contains_key(**n) && scale.contains_key(**n))
        .expect("a node holds both")
        .to_string();
    let (till_pid, till_restarts) = till[&cut];
    let (scale_pid, _) = scale[&cut];
    let spare = |m: &BTreeMap<String, (u32, u64)>| {
        names
            .iter()
            .find(|n| !m.contains_key(**n))
            .expect("a spare")
            .to_string()
    };
    let (till_spare, scale_spare) = (spare(&till), spare(&scale));

    relays[&cut].link.cut();
    // Once the orchestrator has seen the session end and two more seconds passed, each
    // workload runs again on the node that had none, while the cut node runs on.
    let till_during = wait_running(&orch, "till", "till replaced", |m| {
        m.len() == 2 && m.contains_key(&till_spare) && !m.contains_key(&cut)
    })
    .await;
    let scale_during = wait_running(&orch, "scale", "scale replaced", |m| {
        m.len() == 2 && m.contains_key(&scale_spare) && !m.contains_key(&cut)
    })
    .await;
    assert!(
        alive(till_pid) && alive(scale_pid),
        "the cut node keeps running its instances"
    );
    let (_, w) = orch.api("GET", "/v1/workloads/till", None).await;
    assert_eq!(w["replaced"][0]["node"], cut.as_str(), "{w:#}");
    assert_eq!(
        w["replaced"][0]["replacement"],
        till_spare.as_str(),
        "{w:#}"
    );
    assert!(!listed(&orch, "till").await.contains(&cut));
    let replaced: Vec<Value> = decisions(&orch, &cut).await;
    assert!(
        replaced.iter().any(|e| e["kind"] == "replaced"
            && e["workload"] == "till"
            && e["replacement_name"] == till_spare.as_str()),
        "{replaced:#?}"
    );

    relays[&cut].link.heal();
    // keep_original: the replacement stops, the original runs on untouched.
    let till_after = wait_running(&orch, "till", "till reconciled", |m| {
        m.len() == 2 && m.contains_key(&cut) && !m.contains_key(&till_spare)
    })
    .await;
    assert_eq!(
        till_after[&cut],
        (till_pid, till_restarts),
        "the original was never restarted"
    );
    let (replacement_pid, _) = till_during[&till_spare];
    assert!(
        eventually(PATIENCE, || !alive(replacement_pid))
            .await
            .is_some(),
        "the replacement's process stopped"
    );
    // keep_replacement: the returning node stops its own; the replacement runs on.
    let scale_after = wait_running(&orch, "scale", "scale reconciled", |m| {
        m.len() == 2 && !m.contains_key(&cut) && m.contains_key(&scale_spare)
    })
    .await;
    assert_eq!(
        scale_after[&scale_spare], scale_during[&scale_spare],
        "the replacement was never restarted"
    );
    assert!(
        eventually(PATIENCE, || !alive(scale_pid)).await.is_some(),
        "the returning node stopped its instance"
    );
    assert!(alive(till_pid), "and left the one it keeps alone");
    // Back before its hour passed: the cut node's instance of `steady` saw no change.
    let steady_after = wait_running(&orch, "steady", "steady back on the cut node", |m| {
        m.contains_key(&cut)
    })
    .await;
    assert_eq!(steady_after, steady, "same pids, no restarts, same nodes");
    assert!(alive(steady[&cut].0), "its process was never stopped");
    for name in ["till", "scale"] {
        assert_eq!(listed(&orch, name).await.len(), 2, "{name}: two again");
        let (_, w) = orch
            .api("GET", &format!("/v1/workloads/{name}"), None)
            .await;
        assert_eq!(w["replaced"], json!([]), "{w:#}");
    }

    let events = decisions(&orch, &cut).await;
    let reconciled = |workload: &str| {
        events
            .iter()
            .find(|e| e["kind"] == "reconciled" && e["workload"] == workload)
            .unwrap_or_else(|| panic!("{workload} reconciled: {events:#?}"))
            .clone()
    };
    let till_event = reconciled("till");
    assert_eq!(till_event["kept"], "original");
    assert_eq!(till_event["rule"], "keep_original");
    assert_eq!(till_event["stopped_name"], till_spare.as_str());
    let scale_event = reconciled("scale");
    assert_eq!(scale_event["kept"], "replacement");
    assert_eq!(scale_event["stopped_name"], cut.as_str());
    assert_eq!(
        events.iter().filter(|e| e["kind"] == "reconciled").count(),
        2,
        "decided once each: {events:#?}"
    );
    assert_eq!(orch.metric("edge_instances_replaced_total"), 2.0);
    for kept in ["original", "replacement"] {
        assert_eq!(
            orch.metric(&format!(
                "edge_replacements_reconciled_total{{kept=\"{kept}\"}}"
            )),
            1.0,
            "{kept}"
        );
    }

    for node in nodes {
        node.stop().await.expect("clean stop");
    }
}
