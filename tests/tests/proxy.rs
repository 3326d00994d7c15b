//! The node's proxy through the built binaries: a workload deployed with `[[expose]]` is
//! reached through its node's proxy, a static origin from the node's config is cached and
//! served stale once it is gone, and a deleted workload's route goes with it.

use edge_tests::cli::{Edgectl, node_config, run_proxy_node};
use edge_tests::origin::Origin;
use edge_tests::{PATIENCE, binary, eventually, free_port, start_orchestrator};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

/// One answer through the proxy: status, head (lower case) and body.
fn get(proxy: SocketAddr, host: &str, path: &str) -> Option<(u16, String, String)> {
    edge_tests::http_get(proxy, host, path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_routes_to_its_workloads_and_serves_its_origin_stale_when_it_is_gone() {
    let dir = tempfile::tempdir().expect("tmp");
    let orch_dir = dir.path().join("orchestrator");
    let (_orch, quic, api) = start_orchestrator(&orch_dir);
    let ctl = Edgectl::admin(&api, &orch_dir);
    let join = ctl.json(&["token", "create", "--uses", "1"]);
    let origin = Origin::start("from the origin\n");
    let config = node_config(
        dir.path(),
        "edge-1",
        &format!(
            "[proxy]\nlisten = \"127.0.0.1:0\"\n\
             [[proxy.upstream]]\norigin = \"http://{}\"\nhost = \"cloud.example\"\n",
            origin.addr
        ),
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

    // The static origin: a miss, then a hit that never reaches it.
    let (status, head, body) = get(proxy, "cloud.example", "/doc").expect("an answer");
    assert_eq!(
        (status, body.as_str()),
        (200, "from the origin\n"),
        "{head}"
    );
    assert!(
        head.contains("cache-status: edge-1; fwd=uri-miss;"),
        "{head}"
    );
    assert!(head.contains("; stored"), "{head}");
    let (_, head, _) = get(proxy, "cloud.example", "/doc").expect("an answer");
    assert!(head.contains("cache-status: edge-1; hit; ttl="), "{head}");
    assert_eq!(origin.hits.load(Ordering::SeqCst), 1);
    let (status, _, _) = get(proxy, "cloud.example", "/news").expect("an answer");
    assert_eq!(status, 200);
    assert_eq!(origin.hits.load(Ordering::SeqCst), 2);

    // The origin is gone and the answer is stale: still served, and said to be.
    origin.stop();
    let stale = eventually(PATIENCE, || {
        get(proxy, "cloud.example", "/news").is_some_and(|(status, head, body)| {
            status == 200 && body == "from the origin\n" && head.contains("; hit; ttl=-")
        })
    })
    .await;
    assert!(stale.is_some(), "served stale with a negative ttl");

    // A workload with a route: reached through the proxy by its host.
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
             env = {{ GREETING = \"hi\" }}\nreplicas = 1\n\
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
    let through = eventually(PATIENCE, || {
        get(proxy, "hello.example", "/").is_some_and(|(status, head, body)| {
            status == 200 && body == "hi from edge-1\n" && head.contains("cache-status:")
        })
    })
    .await;
    assert!(through.is_some(), "the workload answers through the proxy");

    // Deleted: its route goes with it.
    let out = ctl.run(&["delete", "hello"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let gone = eventually(PATIENCE, || {
        get(proxy, "hello.example", "/").is_some_and(|(status, _, _)| status == 404)
    })
    .await;
    assert!(gone.is_some(), "no route once the workload is deleted");
}
