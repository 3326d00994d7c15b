//! The fleet's routing model, from `edgectl model push` to the nodes' proxies, over real
//! QUIC: a node whose reader runs the model's operators is sent it at once and installs it
//! (`/status` names it, `DATA_DIR/models/route.onnx` holds its bytes, 0600); a node that
//! connects later is sent it at its session; a model the nodes refuse leaves them with the
//! one they had; a node restarted with no uplink routes with what it installed; and a node
//! whose reader lacks an operator the model uses is named in the push's answer and sent
//! nothing until it says its reader runs them. The fleet's warming model replaces the
//! built-in one the same way, and a restart offline keeps it.
//!
//! Nothing sleeps to wait: the board, the API and the control stream are polled with a
//! deadline.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use edge_proto::quic::read_frame;
use edge_proto::{NodeMsg, OrchMsg, RuntimeInfo, decode, encode, text};
use edge_tests::cli::Edgectl;
use edge_tests::{PATIENCE, TestNode, TestOrchestrator, eventually, hello_as, node_config};
use node_daemon::status::StatusBoard;
use serde_json::Value;

fn model(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../edge-ai/models")
        .join(name)
}

fn edgectl(orch: &TestOrchestrator) -> Edgectl {
    Edgectl::admin(&format!("http://{}", orch.orch.api_addr), orch.dir.path())
}

/// `edgectl model push FILE [--purpose P] --json`.
fn push(orch: &TestOrchestrator, file: &Path, purpose: Option<&str>) -> Value {
    let file = file.to_str().expect("a UTF-8 path");
    let mut args = vec!["model", "push", file];
    if let Some(purpose) = purpose {
        args.extend(["--purpose", purpose]);
    }
    edgectl(orch).json(&args)
}

/// Polls the API until node `name` reports the operators its model reader runs.
async fn wait_reader(orch: &TestOrchestrator, name: &str) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut poll = tokio::time::interval(std::time::Duration::from_millis(50));
    loop {
        poll.tick().await;
        let (_, node) = orch.api("GET", &format!("/v1/nodes/{name}"), None).await;
        let ops: Vec<String> = node["model_operators"]
            .as_array()
            .map(|ops| {
                ops.iter()
                    .filter_map(|o| o.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        if !ops.is_empty() {
            return ops;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} never said what its model reader runs: {node:#}"
        );
    }
}

/// Starts node `name` with a proxy and waits until it is online.
async fn start_node(
    orch: &TestOrchestrator,
    name: &str,
    data: &Path,
    join: bool,
) -> (TestNode, StatusBoard) {
    let token = orch.token(1);
    let ca = orch.ca_hash();
    let config = node_config(
        name,
        data,
        orch.orch.quic_addr,
        join.then_some((token.as_str(), ca.as_str())),
        "[proxy]\nlisten = \"127.0.0.1:0\"\n[proxy.cache]\ndisk_bytes = 0\n",
    );
    let (node, board) = TestNode::spawn_with_board(config);
    assert!(
        eventually(PATIENCE, || orch.online(name)).await.is_some(),
        "{name} comes online"
    );
    (node, board)
}

async fn wait_route_model(board: &StatusBoard, what: &str, digest: &str) {
    assert!(
        eventually(PATIENCE, || board.get().route_model.as_deref()
            == Some(digest))
        .await
        .is_some(),
        "{what}: /status never named {digest}; it says {:?}",
        board.get().route_model
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_s_routing_model_reaches_its_nodes_and_one_they_refuse_changes_nothing() {
    let orch = TestOrchestrator::start().await;
    let first_dir = tempfile::tempdir().expect("tmp");
    let (first, board) = start_node(&orch, "first", first_dir.path(), true).await;
    assert_eq!(
        board.get().route_model,
        None,
        "no model before one is pushed"
    );
    let reader = wait_reader(&orch, "first").await;
    assert!(
        reader.iter().any(|op| op == "Gemm"),
        "the node's reader runs Gemm: {reader:?}"
    );

    // Pushed: sent to the one online node at once, which installs it.
    let bytes = std::fs::read(model("route.onnx")).expect("the trained routing model");
    let pushed = push(&orch, &model("route.onnx"), None);
    assert_eq!(pushed["active_for"], "route", "{pushed:#}");
    assert_eq!(pushed["offered_nodes"], 1, "{pushed:#}");
    assert_eq!(pushed["cannot_run"], serde_json::json!([]), "{pushed:#}");
    let digest = pushed["digest"].as_str().expect("a digest").to_owned();
    wait_route_model(&board, "the pushed model", &digest).await;
    let installed = node_daemon::proxy::route_model::path(first_dir.path());
    assert_eq!(std::fs::read(&installed).expect("installed"), bytes);
    let mode = std::fs::metadata(&installed)
        .expect("stat")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the model file is the node's own");

    // A node that joins later is sent it at its session.
    let late_dir = tempfile::tempdir().expect("tmp");
    let (late, late_board) = start_node(&orch, "late", late_dir.path(), true).await;
    wait_route_model(&late_board, "a node that joined after the push", &digest).await;
    late.stop().await.expect("clean stop");

    // A model the orchestrator takes for routing but that does not fit the routing schema
    // (the built-in runtime check: eight inputs, one output): the node refuses it, says so,
    // and keeps routing with the model it had, on disk and in use.
    let refused = push(&orch, &model("tiny-mlp.onnx"), Some("route"));
    assert_eq!(refused["offered_nodes"], 1, "{refused:#}");
    let refused_digest = refused["digest"].as_str().expect("a digest").to_owned();
    assert!(
        eventually(PATIENCE, || board
            .get()
            .route_model_refused
            .is_some_and(|r| r.starts_with(&refused_digest)))
        .await
        .is_some(),
        "/status says the offered model was refused: {:?}",
        board.get().route_model_refused
    );
    assert_eq!(board.get().route_model.as_deref(), Some(digest.as_str()));
    assert_eq!(std::fs::read(&installed).expect("still installed"), bytes);

    // Restarted with no uplink: it routes with what it installed.
    first.stop().await.expect("clean stop");
    let gone = orch.orch.quic_addr;
    let _stopped = orch.stop().await;
    let config = node_config(
        "first",
        first_dir.path(),
        gone,
        None,
        "[proxy]\nlisten = \"127.0.0.1:0\"\n[proxy.cache]\ndisk_bytes = 0\n",
    );
    let (again, board) = TestNode::spawn_with_board(config);
    wait_route_model(&board, "after a restart offline", &digest).await;
    again.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_reader_lacks_an_operator_is_named_and_sent_the_model_once_it_has_them() {
    let orch = TestOrchestrator::start().await;
    let (identity, _data) = orch.enrolled_identity("old-reader").await;
    let (_endpoint, conn) = orch.dial_session(&identity).await;
    let (mut send, mut recv, welcome) = hello_as(&conn, identity.node_id).await;
    assert!(matches!(welcome, OrchMsg::Welcome(_)), "{welcome:?}");
    let runtime = |ops: &[&str]| {
        encode(&NodeMsg::Runtime(Box::new(RuntimeInfo {
            limits: edge_proto::LimitsKind::Rlimit,
            container_runtimes: Default::default(),
            model_operators: ops.iter().map(|op| text(op)).collect(),
        })))
    };
    send.write_all(&runtime(&["Gemm"])).await.expect("runtime");
    assert_eq!(wait_reader(&orch, "old-reader").await, ["Gemm"]);

    let pushed = push(&orch, &model("route.onnx"), None);
    assert_eq!(pushed["offered_nodes"], 0, "{pushed:#}");
    assert_eq!(
        pushed["cannot_run"],
        serde_json::json!(["old-reader"]),
        "{pushed:#}"
    );
    let operators: Vec<&str> = pushed["operators"]
        .as_array()
        .expect("the model's operators")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(operators.len() > 1, "the routing model uses more than Gemm");

    // The node says its reader runs them all (after its next welcome, say): it is sent the
    // model. Whatever else the orchestrator says first is read past.
    send.write_all(&runtime(&operators)).await.expect("runtime");
    let want = pushed["digest"].as_str().expect("a digest");
    let offered = tokio::time::timeout(PATIENCE, async {
        loop {
            let frame = read_frame(&mut recv)
                .await
                .expect("the control stream")
                .expect("a frame");
            if let OrchMsg::Model(m) = decode::<OrchMsg>(&frame).expect("it decodes") {
                return m;
            }
        }
    })
    .await
    .expect("the model is offered");
    assert_eq!(offered.purpose, edge_proto::ModelPurpose::Route);
    assert_eq!(edge_proto::digest::to_prefixed(&offered.digest), want);
    assert_eq!(offered.size, pushed["size"].as_u64().expect("a size"));

    // This session negotiated protocol version 1 (`hello_as`), which cannot decode an offer
    // of a warming model: however able its reader, it is not offered one, and is named.
    let all = edge_ai::OPERATORS;
    send.write_all(&runtime(&all)).await.expect("runtime");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while wait_reader(&orch, "old-reader").await.len() != all.len() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the reader's operators"
        );
        tokio::task::yield_now().await;
    }
    let pushed = push(&orch, &model("warm.onnx"), None);
    assert_eq!(pushed["active_for"], "warm", "{pushed:#}");
    assert_eq!(pushed["offered_nodes"], 0, "{pushed:#}");
    assert_eq!(
        pushed["cannot_run"],
        serde_json::json!(["old-reader"]),
        "{pushed:#}"
    );
}

/// `POST /v1/models` with the bytes of `file`, as admin: the push's answer. (Over HTTP, not
/// with `edgectl`, whose binary would build the whole workspace first.)
async fn push_over_http(orch: &TestOrchestrator, file: &Path) -> Value {
    let bytes = std::fs::read(file).expect("the model ships with edge-ai");
    let url = format!("http://{}/v1/models", orch.orch.api_addr);
    let token = orch.orch.admin_token.clone();
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(PATIENCE))
            .build()
            .into();
        let mut response = agent
            .post(&url)
            .header("authorization", &format!("Bearer {token}"))
            .header("content-type", "application/octet-stream")
            .send(&bytes[..])
            .expect("the API answers");
        let status = response.status().as_u16();
        let body: Value = response.body_mut().read_json().expect("a JSON answer");
        assert_eq!(status, 201, "{body}");
        body
    })
    .await
    .expect("the push finished")
}

/// `GET /v1/models`'s `placement`, and the `edge_orchestrator_place_mode` series at 1.
async fn placement(orch: &TestOrchestrator) -> (Value, Vec<String>) {
    let (status, list) = orch.api("GET", "/v1/models", None).await;
    assert_eq!(status, 200, "{list}");
    let on: Vec<String> = ["model", "no_model", "refused", "broken", "drift"]
        .into_iter()
        .filter(|m| orch.metric(&format!("edge_orchestrator_place_mode{{mode=\"{m}\"}}")) == 1.0)
        .map(str::to_owned)
        .collect();
    (list["placement"].clone(), on)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_placement_model_pushed_before_a_restart_places_after_it_and_a_damaged_one_falls_back()
{
    let orch = TestOrchestrator::start().await;
    let (before, on) = placement(&orch).await;
    assert_eq!(
        (before["mode"].as_str(), on),
        (Some("fallback"), vec!["no_model".to_owned()])
    );

    let pushed = push_over_http(&orch, &model("place.onnx")).await;
    assert_eq!(pushed["active_for"], "place", "{pushed:#}");
    let digest = pushed["digest"].as_str().expect("a digest").to_owned();
    let (now, on) = placement(&orch).await;
    assert_eq!(
        (now["mode"].as_str(), on),
        (Some("model"), vec!["model".to_owned()])
    );
    assert_eq!(now["model"], digest.as_str());

    // Restarted: the stored model places from the start.
    let orch = orch.restart().await;
    let (after, on) = placement(&orch).await;
    assert_eq!(
        (after["mode"].as_str(), on),
        (Some("model"), vec!["model".to_owned()]),
        "{after}"
    );
    assert_eq!(after["model"], digest.as_str());

    // Its bytes damaged on disk: at the next start it is refused, and the fallback places.
    let stored = orch
        .dir
        .path()
        .join("artifacts/sha256")
        .join(digest.trim_start_matches("sha256:"));
    std::fs::write(&stored, b"not the model any more").expect("overwrite the stored model");
    let orch = orch.restart().await;
    let (damaged, on) = placement(&orch).await;
    assert_eq!(damaged["mode"], "fallback", "{damaged}");
    assert_eq!(damaged["reason"], "refused", "{damaged}");
    assert_eq!(on, vec!["refused".to_owned()]);
    assert!(
        damaged["detail"]
            .as_str()
            .is_some_and(|d| d.contains("do not match their digest")),
        "{damaged}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_placed_by_the_model_on_a_real_node_is_its_shadow_check_once_it_runs() {
    let orch = TestOrchestrator::start().await;
    let pushed = push_over_http(&orch, &model("place.onnx")).await;
    assert_eq!(pushed["active_for"], "place", "{pushed:#}");
    let data = tempfile::tempdir().expect("tmp");
    let (node, _board) = start_node(&orch, "placed", data.path(), true).await;

    let script = b"#!/bin/sh\nexec sleep 600\n";
    let stored = orch
        .orch
        .artifacts
        .put(&script[..], None)
        .await
        .expect("put");
    let spec = serde_json::json!({
        "name": "placed",
        "version": "1",
        "artifact": edge_proto::digest::to_prefixed(&stored.digest),
        "replicas": 1,
        "resources": {"cpu_millis": 100, "memory_bytes": 32 << 20},
    });
    let (status, body) = orch.api("POST", "/v1/workloads", Some(spec)).await;
    assert_eq!(status, 201, "{body}");

    // Once it runs, its startup from bind to running is measured against the prediction.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut poll = tokio::time::interval(std::time::Duration::from_millis(50));
    loop {
        poll.tick().await;
        let (placement, on) = placement(&orch).await;
        if placement["drift_samples"] == 1 {
            assert_eq!(placement["mode"], "model", "{placement}");
            assert_eq!(on, vec!["model".to_owned()]);
            assert!(orch.running_instance("placed").await.is_some());
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no startup observed in time: {placement}; the workload is {:#}",
            orch.api("GET", "/v1/workloads/placed", None).await.1
        );
    }
    node.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_s_warming_model_replaces_the_built_in_one_without_a_restart() {
    let orch = TestOrchestrator::start().await;
    let dir = tempfile::tempdir().expect("tmp");
    let (node, board) = start_node(&orch, "warm-1", dir.path(), true).await;
    let shown = board.get().prewarm.expect("a proxy shows its pre-warming");
    assert_eq!(
        (shown.mode, shown.model.as_deref()),
        ("waiting", Some("built-in")),
        "the built-in warming model will decide once a workload scales to zero; nothing \
         is loaded before"
    );
    wait_reader(&orch, "warm-1").await;

    // Pushed: it declares it is for pre-warming, the node installs it and uses it at once.
    let bytes = std::fs::read(model("warm.onnx")).expect("the trained warming model");
    let pushed = push(&orch, &model("warm.onnx"), None);
    assert_eq!(pushed["active_for"], "warm", "{pushed:#}");
    assert_eq!(pushed["offered_nodes"], 1, "{pushed:#}");
    let digest = pushed["digest"].as_str().expect("a digest").to_owned();
    assert!(
        eventually(PATIENCE, in_use_on(&board, &digest))
            .await
            .is_some(),
        "/status never named {digest}: {:?}",
        board.get().prewarm
    );
    let installed = node_daemon::proxy::warm_model::path(dir.path());
    assert_eq!(std::fs::read(&installed).expect("installed"), bytes);
    let mode = std::fs::metadata(&installed)
        .expect("stat")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the model file is the node's own");
    assert_eq!(
        board.get().route_model,
        None,
        "a warming model is not a routing model"
    );

    // Restarted with no uplink: it will pre-warm with what it installed, once a workload
    // scales to zero.
    node.stop().await.expect("clean stop");
    let gone = orch.orch.quic_addr;
    let _stopped = orch.stop().await;
    let config = node_config(
        "warm-1",
        dir.path(),
        gone,
        None,
        "[proxy]\nlisten = \"127.0.0.1:0\"\n[proxy.cache]\ndisk_bytes = 0\n",
    );
    let (again, board) = TestNode::spawn_with_board(config);
    let waits_with = || {
        board
            .get()
            .prewarm
            .is_some_and(|p| p.mode == "waiting" && p.model.as_deref() == Some(digest.as_str()))
    };
    assert!(
        eventually(PATIENCE, waits_with).await.is_some(),
        "after a restart offline: {:?}",
        board.get().prewarm
    );
    again.stop().await.expect("clean stop");
}

/// Whether `board` says pre-warming runs the model `digest`.
fn in_use_on<'a>(board: &'a StatusBoard, digest: &'a str) -> impl FnMut() -> bool + 'a {
    move || {
        board
            .get()
            .prewarm
            .is_some_and(|p| p.mode == "model" && p.model.as_deref() == Some(digest))
    }
}
