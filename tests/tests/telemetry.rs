//! Where routing models come from, through the built binaries: a node's proxy samples its
//! attempts on a real origin, the samples travel through the node's outbox to the
//! orchestrator, `edgectl telemetry export` writes them as the training CSV, and
//! `edge-ai/train/train.sh --data` trains a model on that file that the node's reader loads
//! and holds to the routing schema.
//!
//! Nothing sleeps to wait: the export is polled with a deadline.

use edge_tests::cli::{Edgectl, node_config, run_proxy_node};
use edge_tests::origin::Origin;
use edge_tests::{PATIENCE, eventually, start_orchestrator};
use node_core::proxy::learned::ROUTE_FEATURES;
use std::path::Path;
use std::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_s_sampled_attempts_export_as_training_data_a_model_is_trained_on() {
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
            "[proxy]\nlisten = \"127.0.0.1:0\"\nroute_samples_interval_secs = 1\n\
             [[proxy.upstream]]\norigin = \"http://{}\"\nhost = \"cloud.example\"\n\
             cache = false\n",
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
    const REQUESTS: usize = 12;
    for _ in 0..REQUESTS {
        let (status, _, _) =
            edge_tests::http_get(proxy, "cloud.example", "/news").expect("answered");
        assert_eq!(status, 200);
    }

    // The windows reach the orchestrator through the outbox, at most 8 attempts each.
    let csv_path = dir.path().join("attempts.csv");
    let csv_arg = csv_path.to_str().expect("utf-8");
    let export = ["telemetry", "export", "--node", "edge-1", "-o", csv_arg];
    let rows = |text: &str| text.lines().skip(1).count();
    let exported = || {
        let out = ctl.run(&export);
        assert!(out.status.success(), "{out:?}");
        std::fs::read_to_string(&csv_path).unwrap_or_default()
    };
    assert!(
        eventually(PATIENCE, || rows(&exported()) >= 2)
            .await
            .is_some(),
        "the sampled attempts were exported"
    );
    let exported = exported();
    let mut lines = exported.lines();
    let header: Vec<&str> = lines.next().expect("a header").split(',').collect();
    let mut expected: Vec<&str> = ROUTE_FEATURES.iter().map(|f| f.name).collect();
    expected.extend(["latency_ms", "failed"]);
    assert_eq!(header, expected, "the columns edge-sim and train.sh use");
    let column = |name: &str| header.iter().position(|h| *h == name).expect("a column");
    for line in lines {
        let values: Vec<f32> = line
            .split(',')
            .map(|v| {
                v.parse()
                    .unwrap_or_else(|e| panic!("{v:?} in {line:?}: {e}"))
            })
            .collect();
        assert_eq!(values.len(), header.len(), "{line}");
        assert_eq!(values[column("local")], 0.0, "an origin: {line}");
        assert_eq!(values[column("failed")], 0.0, "the origin answered: {line}");
        assert!(values[column("latency_ms")] > 0.0, "{line}");
    }
    assert!(
        rows(&exported) <= REQUESTS,
        "no more attempts than requests: {exported}"
    );
    let json = ctl.json(&["telemetry", "export", "--node", "edge-1"]);
    assert_eq!(
        json["rows"].as_array().map(Vec::len),
        Some(rows(&exported)),
        "{json}"
    );
    assert_eq!(json["skipped"], 0);

    // A model trained on the fleet's own data loads on the node and fits its schema.
    let model = dir.path().join("fleet-route.onnx");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let trained = Command::new("bash")
        .arg(repo.join("edge-ai/train/train.sh"))
        .args(["--data", csv_arg, "--out"])
        .arg(&model)
        .output()
        .expect("train.sh runs");
    assert!(
        trained.status.success(),
        "train.sh --data: {}\n{}",
        String::from_utf8_lossy(&trained.stdout),
        String::from_utf8_lossy(&trained.stderr)
    );
    let loaded = edge_ai::Model::load(&model).expect("the node's reader loads it");
    assert!(
        node_daemon::proxy::route_model::from_model(loaded).is_ok(),
        "it declares the routing schema"
    );
}
