//! A node's life at its edges, through the operator API and the real `edge-hello` sample: a
//! node with a `local_address` runs a service that listens on that address only and is
//! healthy there; deleted through the API, the node stops (and forgets) what it ran rather
//! than leave it serving with nobody supervising it.

use edge_tests::{PATIENCE, TestNode, TestOrchestrator, alive, binary, eventually, http_get_root};
use node_core::session::Fatal;
use node_daemon::config::Config;
use node_daemon::daemon::DaemonError;
use serde_json::json;

/// The node's own address on loopback (the demo's nodes use 127.0.0.2-4).
const NODE_ADDRESS: &str = "127.0.0.5";

/// The instances of workload `name` as the API shows them.
async fn instances(orch: &TestOrchestrator, name: &str) -> Vec<serde_json::Value> {
    let (_, w) = orch
        .api("GET", &format!("/v1/workloads/{name}"), None)
        .await;
    w["instances"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_node_stops_its_workloads() {
    let orch = TestOrchestrator::start().await;
    let token = orch.token(1);
    let data = tempfile::tempdir().expect("tmp");
    let config = Config::from_toml(&format!(
        "version = 1\nname = \"doomed\"\ndata_dir = \"{}\"\nstatus_interval_secs = 1\n\
         [orchestrator]\naddress = \"{}\"\nlocal_address = \"{NODE_ADDRESS}\"\n\
         [join]\ntoken = \"{token}\"\nca_hash = \"{}\"\n",
        data.path().display(),
        orch.orch.quic_addr,
        orch.ca_hash(),
    ))
    .expect("config");
    let node = TestNode::spawn(config);
    assert!(
        eventually(PATIENCE, || orch.online("doomed"))
            .await
            .is_some(),
        "the node comes online"
    );

    let hello = std::fs::read(binary("edge-hello")).expect("the sample service");
    let store = &orch.orch.artifacts;
    let stored = store.put(&hello[..], None).await.expect("put");
    let digest: String = stored.digest.iter().map(|b| format!("{b:02x}")).collect();
    // A free port on the node's address; edge-hello listens on EDGE_NODE_ADDRESS only.
    let port = std::net::TcpListener::bind((NODE_ADDRESS, 0))
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let spec = json!({
        "name": "hello",
        "version": "1.0.0",
        "artifact": format!("sha256:{digest}"),
        "args": ["--port", port.to_string()],
        "env": {"GREETING": "hi"},
        "replicas": 1,
        "resources": {"cpu_millis": 100, "memory_bytes": 32 << 20},
        "health": {"http": {"port": port, "path": "/healthz"}, "interval_secs": 2, "timeout_secs": 1}
    });
    let (status, body) = orch.api("POST", "/v1/workloads", Some(spec)).await;
    assert_eq!(status, 201, "{body}");

    // Running means its health check passed, at the address it was told to listen on.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut poll = tokio::time::interval(std::time::Duration::from_millis(50));
    let pid = loop {
        poll.tick().await;
        let running = instances(&orch, "hello")
            .await
            .iter()
            .find(|i| i["node"] == "doomed" && i["state"] == "running")
            .and_then(|i| i["pid"].as_u64())
            .and_then(|p| u32::try_from(p).ok());
        if let Some(pid) = running {
            break pid;
        }
        if tokio::time::Instant::now() > deadline {
            let (_, w) = orch.api("GET", "/v1/workloads/hello", None).await;
            panic!("hello never ran healthy: {w:#}");
        }
    };
    assert_eq!(
        http_get_root(&format!("{NODE_ADDRESS}:{port}")).as_deref(),
        Some("hi from doomed\n")
    );
    assert_eq!(
        http_get_root(&format!("127.0.0.1:{port}")),
        None,
        "it listens on the node's address only"
    );

    let (status, body) = orch.api("DELETE", "/v1/nodes/doomed", None).await;
    assert_eq!(status, 204, "{body}");
    match node.exited().await {
        Err(DaemonError::Fatal(Fatal::Rejected { code, .. })) => {
            assert_eq!(code, edge_proto::RejectCode::UnknownNode);
        }
        other => panic!("expected a refusal as unknown, got {other:?}"),
    }
    assert!(
        eventually(PATIENCE, || !alive(pid)).await.is_some(),
        "the deleted node's workload {pid} is still running"
    );
    assert_eq!(http_get_root(&format!("{NODE_ADDRESS}:{port}")), None);
    assert!(
        !data.path().join("workloads/hello").exists(),
        "forgotten too: a restart of the daemon must not bring it back"
    );
}
