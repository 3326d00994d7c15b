//! Workloads deployed through the operator API onto real nodes over real QUIC: placed by
//! the scheduler on the nodes that match, admitted, their artifact fetched and verified, run
//! by the supervisor as real processes and reported back; untouched by an orchestrator
//! restart, running again after a node daemon restart, moved off a drained node, and stopped
//! everywhere on delete.

use edge_tests::{PATIENCE, TestNode, TestOrchestrator, alive, eventually, node_config};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// The pid of every running instance of `name`, by node name.
async fn running(orch: &TestOrchestrator, name: &str) -> BTreeMap<String, u32> {
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
                u32::try_from(i["pid"].as_u64()?).ok()?,
            ))
        })
        .collect()
}

/// Polls until `check` holds of the running instances; returns them.
async fn wait_running(
    orch: &TestOrchestrator,
    name: &str,
    what: &str,
    check: impl Fn(&BTreeMap<String, u32>) -> bool,
) -> BTreeMap<String, u32> {
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

fn names(m: &BTreeMap<String, u32>) -> Vec<&str> {
    m.keys().map(String::as_str).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployed_workloads_run_where_they_match_and_follow_the_operator() {
    let mut orch = TestOrchestrator::start().await;
    let token = orch.token(3);
    let sites = [
        ("berlin-1", "berlin"),
        ("paris-1", "paris"),
        ("berlin-2", "berlin"),
    ];
    let dirs: Vec<_> = sites
        .iter()
        .map(|_| tempfile::tempdir().expect("tmp"))
        .collect();
    let configs: Vec<_> = sites
        .iter()
        .zip(&dirs)
        .map(|((name, site), dir)| {
            node_config(
                name,
                dir.path(),
                orch.orch.quic_addr,
                Some((&token, &orch.ca_hash())),
                &format!("labels = {{ site = \"{site}\" }}"),
            )
        })
        .collect();
    let mut nodes: Vec<TestNode> = configs.iter().cloned().map(TestNode::spawn).collect();
    for (name, _) in sites {
        assert!(
            eventually(PATIENCE, || orch.online(name)).await.is_some(),
            "{name} online"
        );
    }

    let script = b"#!/bin/sh\necho \"hello from $GREETING\"\nexec sleep 600\n";
    let store = &orch.orch.artifacts;
    let stored = store.put(&script[..], None).await.expect("put");
    let digest = format!(
        "sha256:{}",
        stored
            .digest
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    let spec = json!({
        "name": "hello",
        "version": "1.0.0",
        "artifact": digest,
        "env": {"GREETING": "the test"},
        "replicas": 2,
        "resources": {"cpu_millis": 100, "memory_bytes": 32 << 20},
        "requirements": {"labels": {"site": "berlin"}}
    });

    // A bad spec is refused with the field's path, and nothing is deployed.
    let mut bad = spec.clone();
    bad["resources"]["memory_bytes"] = json!(-1);
    let (status, body) = orch.api("POST", "/v1/workloads", Some(bad)).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("resources.memory_bytes")),
        "{body}"
    );
    // An artifact nobody pushed is refused too.
    let mut unknown = spec.clone();
    unknown["artifact"] = json!(format!("sha256:{}", "0".repeat(64)));
    let (status, body) = orch.api("POST", "/v1/workloads", Some(unknown)).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("artifact"))
    );
    assert_eq!(orch.api("GET", "/v1/workloads", None).await.1, json!([]));

    let (status, body) = orch.api("POST", "/v1/workloads", Some(spec.clone())).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["wanted"], 2);
    let first = wait_running(&orch, "hello", "both berlin nodes running", |m| {
        m.len() == 2
    })
    .await;
    assert_eq!(
        names(&first),
        ["berlin-1", "berlin-2"],
        "only where the label matches"
    );
    assert!(
        first.values().all(|pid| alive(*pid)),
        "the pids are live processes"
    );
    let (status, again) = orch.api("POST", "/v1/workloads", Some(spec.clone())).await;
    assert_eq!(
        (status, &again["generation"]),
        (200, &json!(1)),
        "same spec, no change"
    );
    let (_, list) = orch.api("GET", "/v1/workloads", None).await;
    assert_eq!(list[0]["running"], 2, "{list}");
    // The same events an operator sees in the log are counted.
    assert_eq!(orch.metric("edge_workload_deploys_total"), 1.0);
    assert!(orch.metric("edge_instance_transitions_total{state=\"running\"}") >= 2.0);
    let cached = |dir: &std::path::Path| {
        std::fs::read_dir(dir.join("artifacts"))
            .map(|entries| entries.count())
            .unwrap_or(0)
    };
    assert_eq!(cached(dirs[0].path()), 1, "berlin-1 fetched the artifact");
    assert_eq!(cached(dirs[1].path()), 0, "paris-1 never needed it");

    // The log, from the node over QUIC: one node plain, all nodes prefixed.
    let (status, log) = orch
        .api(
            "GET",
            "/v1/workloads/hello/logs?node=berlin-2&tail=10",
            None,
        )
        .await;
    assert_eq!((status, log.as_str()), (200, Some("hello from the test\n")));
    let (status, log) = orch.api("GET", "/v1/workloads/hello/logs", None).await;
    assert_eq!(status, 200);
    let mut lines: Vec<&str> = log.as_str().unwrap_or_default().lines().collect();
    lines.sort_unstable();
    assert_eq!(
        lines,
        [
            "berlin-1 | hello from the test",
            "berlin-2 | hello from the test"
        ]
    );
    let (status, body) = orch
        .api("GET", "/v1/workloads/hello/logs?node=paris-1", None)
        .await;
    assert_eq!(status, 404, "paris-1 runs none: {body}");
    let (status, _) = orch
        .api("GET", "/v1/workloads/hello/logs?tail=-1", None)
        .await;
    assert_eq!(status, 400);

    // The orchestrator restarts: the deployment is still there and nothing is restarted.
    orch = orch.restart().await;
    for (name, _) in sites {
        assert!(eventually(PATIENCE, || orch.online(name)).await.is_some());
    }
    let after = wait_running(&orch, "hello", "reported again after the restart", |m| {
        m.len() == 2
    })
    .await;
    assert_eq!(
        after, first,
        "the same processes: a reconnect kills nothing"
    );

    // A node daemon restarts: its instance runs again, as a new process.
    let berlin_1 = nodes.remove(0);
    berlin_1.stop().await.expect("clean stop");
    let old = first["berlin-1"];
    assert!(
        eventually(PATIENCE, || !alive(old)).await.is_some(),
        "no orphan"
    );
    nodes.insert(0, TestNode::spawn(configs[0].clone()));
    wait_running(
        &orch,
        "hello",
        "running again after the daemon restarted",
        |m| m.get("berlin-1").is_some_and(|p| *p != old),
    )
    .await;

    // Drained: the instance leaves berlin-2 and, with no other berlin node free, waits
    // with a reason.
    let on_berlin_2 = running(&orch, "hello").await["berlin-2"];
    let (status, node) = orch.api("POST", "/v1/nodes/berlin-2/drain", None).await;
    assert_eq!((status, &node["cordoned"]), (200, &json!(true)), "{node}");
    assert!(
        eventually(PATIENCE, || !alive(on_berlin_2)).await.is_some(),
        "stopped on the drained node"
    );
    let (_, w) = orch.api("GET", "/v1/workloads/hello", None).await;
    let instances: Vec<&str> = w["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .filter_map(|i| i["node"].as_str())
        .collect();
    assert_eq!(instances, ["berlin-1"], "{w:#}");
    let reasons: BTreeMap<&str, &str> = w["unplaced"]
        .as_array()
        .expect("reasons")
        .iter()
        .filter_map(|r| Some((r["node"].as_str()?, r["detail"]["reason"].as_str()?)))
        .collect();
    assert_eq!(
        reasons,
        BTreeMap::from([
            ("berlin-1", "already_runs"),
            ("berlin-2", "cordoned"),
            ("paris-1", "label")
        ])
    );
    // Uncordoned: it comes back.
    let (status, _) = orch.api("POST", "/v1/nodes/berlin-2/uncordon", None).await;
    assert_eq!(status, 200);
    wait_running(&orch, "hello", "back on berlin-2", |m| m.len() == 2).await;

    // Deleted and deployed again at once: the new instances run, whatever order the nodes
    // see the stop and the start in, and the cached artifact is not collected under them.
    let (status, _) = orch.api("DELETE", "/v1/workloads/hello", None).await;
    assert_eq!(status, 204);
    let (status, body) = orch.api("POST", "/v1/workloads", Some(spec.clone())).await;
    assert_eq!(status, 201, "{body}");
    let back = wait_running(&orch, "hello", "running after a quick redeploy", |m| {
        m.len() == 2 && m.values().all(|p| alive(*p))
    })
    .await;

    // Deleted: stopped everywhere, and gone from the API.
    let (status, _) = orch.api("DELETE", "/v1/workloads/hello", None).await;
    assert_eq!(status, 204);
    for pid in back.values() {
        assert!(
            eventually(PATIENCE, || !alive(*pid)).await.is_some(),
            "stopped on delete"
        );
    }
    // Nothing needs the artifact any more: every node's cache lets it go.
    for dir in &dirs {
        assert!(
            eventually(PATIENCE, || cached(dir.path()) == 0)
                .await
                .is_some(),
            "the unused artifact is collected"
        );
    }
    let (status, body): (u16, Value) = orch.api("GET", "/v1/workloads/hello", None).await;
    assert_eq!((status, &body["error"]), (404, &json!("not_found")));
    for node in nodes {
        node.stop().await.expect("clean stop");
    }
}
