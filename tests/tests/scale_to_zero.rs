//! Scale to zero through the node's proxy, end to end: the real `edge-hello` sample deployed
//! through the operator API with `scale_to_zero` onto a node daemon that runs the proxy, over
//! real QUIC. It is not started when assigned; the first requests through the proxy start it
//! once and are all answered by it; a request while it runs starts nothing; it stops after
//! `idle_secs` without requests, and no sooner; and a daemon restarted while it runs brings
//! it back dormant.
//!
//! With pre-warming on and a warming model refused (a broken `DATA_DIR/models/warm.onnx`),
//! the node says so on its status and metrics and runs by the same rule.
//!
//! Starts are counted from the workload's own log (`edge-hello listening on ...` once per
//! start), as an operator would read them. Nothing sleeps to wait: conditions are polled with
//! a deadline.

use edge_tests::{
    PATIENCE, TestNode, TestOrchestrator, binary, eventually, http_get_root, node_config,
};
use node_daemon::config::Config;
use node_daemon::status::StatusBoard;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const IDLE_SECS: u64 = 2;

/// The node's instance of `lazy`, as the API shows it.
async fn instance(orch: &TestOrchestrator) -> Value {
    let (_, w) = orch.api("GET", "/v1/workloads/lazy", None).await;
    w["instances"]
        .as_array()
        .and_then(|i| i.iter().find(|i| i["node"] == "sleepy").cloned())
        .unwrap_or(Value::Null)
}

/// Polls the API until the instance is as `check` wants it; returns it.
async fn wait_instance(
    orch: &TestOrchestrator,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut poll = tokio::time::interval(Duration::from_millis(50));
    loop {
        poll.tick().await;
        let now = instance(orch).await;
        if check(&now) {
            return now;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not seen in time; the instance is {now:#}"
        );
    }
}

fn dormant(i: &Value) -> bool {
    i["state"] == "stopped" && i["message"] == "scaled to zero" && i["pid"].is_null()
}

/// How many times the workload has started, from its log.
async fn starts(orch: &TestOrchestrator) -> usize {
    let (status, log) = orch
        .api("GET", "/v1/workloads/lazy/logs?node=sleepy&tail=1000", None)
        .await;
    assert_eq!(status, 200, "{log}");
    log.as_str()
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("edge-hello listening on "))
        .count()
}

/// Polls the log until it shows `n` starts.
async fn wait_starts(orch: &TestOrchestrator, n: usize) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut poll = tokio::time::interval(Duration::from_millis(50));
    loop {
        poll.tick().await;
        let seen = starts(orch).await;
        if seen == n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "expected {n} starts in the log, saw {seen}"
        );
    }
}

/// Starts the node and returns it with its proxy's address, once it is online.
async fn start_node(orch: &TestOrchestrator, config: &Config) -> (TestNode, StatusBoard, String) {
    let (node, board) = TestNode::spawn_with_board(config.clone());
    assert!(
        eventually(PATIENCE, || orch.online("sleepy"))
            .await
            .is_some(),
        "the node comes online"
    );
    assert!(
        eventually(PATIENCE, || board.get().proxy.is_some())
            .await
            .is_some(),
        "the proxy listens"
    );
    let proxy = board.get().proxy.expect("the proxy's address");
    (node, board, proxy)
}

/// `GET /` through the proxy from `n` clients at once: their answers.
async fn get_all(proxy: &str, n: usize) -> Vec<Option<String>> {
    let clients: Vec<_> = (0..n)
        .map(|_| {
            let proxy = proxy.to_owned();
            tokio::task::spawn_blocking(move || http_get_root(&proxy))
        })
        .collect();
    let mut answers = Vec::new();
    for client in clients {
        answers.push(client.await.expect("the client finished"));
    }
    answers
}

/// Deploys `lazy`, the sample service scaled to zero after `IDLE_SECS`, onto `sleepy`; the
/// port it listens on.
async fn deploy_lazy(orch: &TestOrchestrator) -> u16 {
    let hello = std::fs::read(binary("edge-hello")).expect("the sample service");
    let stored = orch
        .orch
        .artifacts
        .put(&hello[..], None)
        .await
        .expect("put");
    let digest: String = stored.digest.iter().map(|b| format!("{b:02x}")).collect();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let spec = json!({
        "name": "lazy",
        "version": "1.0.0",
        "artifact": format!("sha256:{digest}"),
        "args": ["--port", port.to_string(), "--bind", "127.0.0.1"],
        "env": {"GREETING": "hi"},
        "replicas": 1,
        "resources": {"cpu_millis": 100, "memory_bytes": 32 << 20},
        "expose": [{"port": port, "path_prefix": "/", "cache": false}],
        "scale_to_zero": {"idle_secs": IDLE_SECS}
    });
    let (status, body) = orch.api("POST", "/v1/workloads", Some(spec)).await;
    assert_eq!(status, 201, "{body}");
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_scaled_to_zero_starts_on_the_first_request_and_stops_when_idle() {
    let orch = TestOrchestrator::start().await;
    let token = orch.token(1);
    let data = tempfile::tempdir().expect("tmp");
    // Today's rule alone: no start but a request's.
    let config = node_config(
        "sleepy",
        data.path(),
        orch.orch.quic_addr,
        Some((&token, &orch.ca_hash())),
        "[proxy]\nlisten = \"127.0.0.1:0\"\nprewarm = false\n[proxy.cache]\ndisk_bytes = 0\n",
    );
    let (node, board, proxy) = start_node(&orch, &config).await;
    let prewarm = board.get().prewarm.expect("a proxy shows its pre-warming");
    assert_eq!(prewarm.mode, "off");
    let port = deploy_lazy(&orch).await;

    // Assigned, admitted, fetched, and not started: reported dormant, nothing listening.
    wait_instance(&orch, "reported dormant", dormant).await;
    assert_eq!(starts(&orch).await, 0, "the process never ran");
    assert!(!listening(port), "nothing listens on the workload's port");

    // Cold start: eight clients at once, one start, every answer the workload's own.
    let answers = get_all(&proxy, 8).await;
    assert!(
        answers
            .iter()
            .all(|a| a.as_deref() == Some("hi from sleepy\n")),
        "{answers:?}"
    );
    // Straight after, while it runs: the same process answers, nothing restarts.
    assert_eq!(http_get_root(&proxy).as_deref(), Some("hi from sleepy\n"));
    let last_request = Instant::now();
    wait_starts(&orch, 1).await;

    // Idle: stopped after idle_secs, and no sooner.
    wait_instance(&orch, "scaled back to zero", dormant).await;
    assert!(
        last_request.elapsed() >= Duration::from_secs(IDLE_SECS),
        "stopped {:?} after the last request",
        last_request.elapsed()
    );
    assert!(!listening(port), "nothing listens on the workload's port");
    assert_eq!(starts(&orch).await, 1, "nine requests, one start");

    // Woken again, and the daemon restarts while it runs: it comes back dormant (its last
    // report before the restart was not), and a request still wakes it.
    assert_eq!(http_get_root(&proxy).as_deref(), Some("hi from sleepy\n"));
    wait_starts(&orch, 2).await;
    node.stop().await.expect("clean stop");
    assert!(!listening(port), "stopped with the daemon");
    let before = instance(&orch).await;
    let (node, _board, proxy) = start_node(&orch, &config).await;
    wait_instance(&orch, "dormant after the restart", dormant).await;
    assert!(
        !dormant(&before),
        "the restart, not the idle timer, made it dormant: {before:#}"
    );
    assert!(!listening(port), "not started by the restart");
    // The restarted daemon's log of the workload starts empty.
    assert_eq!(starts(&orch).await, 0, "nothing started since the restart");
    assert_eq!(http_get_root(&proxy).as_deref(), Some("hi from sleepy\n"));
    wait_starts(&orch, 1).await;
    node.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_warming_model_leaves_workloads_to_start_on_a_request_and_sleep_when_idle() {
    let orch = TestOrchestrator::start().await;
    let token = orch.token(1);
    let data = tempfile::tempdir().expect("tmp");
    // An operator's model that is not one: a truncated file.
    std::fs::create_dir_all(data.path().join("models")).expect("models dir");
    std::fs::write(data.path().join("models/warm.onnx"), b"\x08\x07not onnx").expect("write");
    let config = node_config(
        "sleepy",
        data.path(),
        orch.orch.quic_addr,
        Some((&token, &orch.ca_hash())),
        "[proxy]\nlisten = \"127.0.0.1:0\"\n[proxy.cache]\ndisk_bytes = 0\n",
    );
    let (node, board, proxy) = start_node(&orch, &config).await;
    let shown = board.get().prewarm.expect("the status shows pre-warming");
    assert_eq!(
        shown.mode, "waiting",
        "no workload scales to zero yet: {shown:?}"
    );

    let port = deploy_lazy(&orch).await;
    wait_instance(&orch, "reported dormant", dormant).await;
    // The first tick that sees the workload loads the model, and refuses it.
    let refused = || board.get().prewarm.is_some_and(|p| p.mode == "refused");
    assert!(
        eventually(PATIENCE, refused).await.is_some(),
        "{:?}",
        board.get().prewarm
    );
    assert_eq!(
        board.get().prewarm.and_then(|p| p.model),
        None,
        "the built-in model does not stand in for a refused one"
    );
    assert!(!listening(port), "nothing started it before a request");
    // The node still serves: a request starts it, and it sleeps after idle_secs.
    assert_eq!(http_get_root(&proxy).as_deref(), Some("hi from sleepy\n"));
    let last_request = Instant::now();
    wait_starts(&orch, 1).await;
    wait_instance(&orch, "scaled back to zero", dormant).await;
    assert!(last_request.elapsed() >= Duration::from_secs(IDLE_SECS));
    assert!(!listening(port));
    let shown = board.get().prewarm.expect("still shown");
    assert_eq!((shown.mode, shown.prewarms), ("refused", 0));
    node.stop().await.expect("clean stop");
}

/// Whether something accepts connections on `port`.
fn listening(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}
