//! The proxy's traffic, summarised to the orchestrator, through the built binaries: requests
//! through a node's proxy to an exposed workload show up, per route, in the node's view and,
//! summed, in the workload's.

use edge_tests::cli::{Edgectl, node_config, run_proxy_node};
use edge_tests::{PATIENCE, binary, eventually, free_port, start_orchestrator};
use std::net::SocketAddr;

/// Requests sent once the workload answers through the proxy.
const N: u64 = 12;

/// One answer through the proxy: status and head (lower case).
fn get(proxy: SocketAddr, host: &str) -> Option<(u16, String)> {
    edge_tests::http_get(proxy, host, "/").map(|(status, head, _)| (status, head))
}

fn count(v: &serde_json::Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_through_a_nodes_proxy_show_in_the_node_and_workload_views() {
    let dir = tempfile::tempdir().expect("tmp");
    let orch_dir = dir.path().join("orchestrator");
    let (_orch, quic, api) = start_orchestrator(&orch_dir);
    let ctl = Edgectl::admin(&api, &orch_dir);
    let join = ctl.json(&["token", "create", "--uses", "1"]);
    let config = node_config(
        dir.path(),
        "edge-1",
        "status_interval_secs = 1\n[proxy]\nlisten = \"127.0.0.1:0\"\n",
        &quic,
        &join,
    );
    let (_node, _lines, proxy) = run_proxy_node(&config);
    assert!(
        eventually(PATIENCE, || ctl.status_of("edge-1").as_deref()
            == Some("online"))
        .await
        .is_some(),
        "the node came online"
    );

    // A workload whose answers may be cached for a minute.
    let pushed = ctl.json(&[
        "artifact",
        "push",
        binary("edge-hello").to_str().expect("utf-8"),
    ]);
    let port = free_port();
    let spec = dir.path().join("hello.toml");
    std::fs::write(
        &spec,
        format!(
            "name = \"hello\"\nversion = \"1.0.0\"\nartifact = \"{}\"\n\
             args = [\"--port\", \"{port}\", \"--bind\", \"127.0.0.1\"]\n\
             env = {{ MAX_AGE_SECS = \"60\" }}\nreplicas = 1\n\
             [resources]\ncpu_millis = 100\nmemory_bytes = 33554432\n\
             [[expose]]\nport = {port}\nhost = \"hello.example\"\n",
            pushed["digest"].as_str().expect("digest")
        ),
    )
    .expect("write spec");
    let out = ctl.run(&["deploy", "-f", spec.to_str().expect("utf-8")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let up = eventually(PATIENCE, || {
        get(proxy, "hello.example").is_some_and(|(status, _)| status == 200)
    })
    .await;
    assert!(up.is_some(), "the workload answers through the proxy");

    let mut hits = 0;
    for _ in 0..N {
        let (status, head) = get(proxy, "hello.example").expect("an answer");
        assert_eq!(status, 200, "{head}");
        hits += u64::from(head.contains("cache-status: edge-1; hit"));
    }
    assert!(hits > 0, "answers were cached");

    // The node's view: the route, with at least the requests sent and the hits seen.
    let mut route = serde_json::Value::Null;
    let shown = eventually(PATIENCE, || {
        let node = ctl.json(&["node", "edge-1"]);
        let found = node["proxy"]["routes"].as_array().and_then(|routes| {
            routes.iter().find(|r| {
                r["route"] == "hello" && count(r, "requests") > N && count(r, "hit") >= hits
            })
        });
        match found {
            Some(r) => {
                route = r.clone();
                true
            }
            None => false,
        }
    })
    .await;
    assert!(
        shown.is_some(),
        "the node's view shows the route: {}",
        ctl.json(&["node", "edge-1"])
    );
    assert!(count(&route, "miss") >= 1, "{route}");
    // Requests sent while the workload was starting may have been answered 5xx: counted
    // among the requests, never as hits.
    assert!(
        count(&route, "hit") + count(&route, "errors_5xx") <= count(&route, "requests"),
        "{route}"
    );
    assert!(
        route["p50_ms"].as_f64().is_some_and(|ms| ms >= 0.0),
        "{route}"
    );
    assert!(route["p99_ms"].as_f64().is_some(), "{route}");

    // The workload's view: the sum over its nodes (one here).
    let workload = ctl.json(&["workloads", "hello"]);
    let traffic = &workload["traffic"];
    assert!(
        count(traffic, "requests") >= count(&route, "requests"),
        "{workload}"
    );
    assert!(count(traffic, "hit") >= count(&route, "hit"), "{workload}");
    assert!(traffic["reported_at"].is_string(), "{workload}");

    // And in plain output.
    let out = ctl.run(&["node", "edge-1"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("ROUTE") && text.contains("hello"), "{text}");
}
