//! Both binaries' `/metrics` as Prometheus's own `promtool check metrics` reads them: after an
//! enrollment, a deploy and the traffic they make, so every family has samples. `promtool`
//! comes from Debian's `prometheus` package through `cross/apt.sh`; without it this test
//! fails, naming what is missing.

use edge_tests::{PATIENCE, binary, eventually, line_with, spawn_reading_stderr};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

/// `promtool check metrics` on `text`: it must pass with nothing to say.
fn assert_promtool_passes(promtool: &Path, what: &str, text: &str) {
    let mut check = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs");
    check
        .stdin
        .take()
        .expect("piped")
        .write_all(text.as_bytes())
        .expect("promtool reads the metrics");
    let out = check.wait_with_output().expect("promtool ends");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics on {what}: {}\n{said}\n--- the metrics:\n{text}",
        out.status
    );
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(PATIENCE))
        .build()
        .into()
}

/// `GET url` with `accept`, if given: the content type and the body.
fn scrape(url: &str, accept: Option<&str>) -> (String, String) {
    let mut request = agent().get(url);
    if let Some(accept) = accept {
        request = request.header("accept", accept);
    }
    let mut response = request.call().expect("the endpoint answers");
    assert_eq!(response.status().as_u16(), 200, "{url}");
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = response.body_mut().read_to_string().expect("a text body");
    (content_type, body)
}

/// The value of `series` (a whole series: name and labels) in `text`.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// The operator API as admin.
struct Api {
    url: String,
    token: String,
}

impl Api {
    fn call(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> serde_json::Value {
        let request = ureq::http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.url))
            .header("authorization", format!("Bearer {}", self.token))
            .header("content-type", content_type)
            .body(body)
            .expect("a request");
        let mut response = agent().run(request).expect("the API answers");
        let text = response
            .body_mut()
            .with_config()
            .limit(1 << 20)
            .read_to_string()
            .expect("a body");
        assert!(
            response.status().is_success(),
            "{method} {path}: {} {text}",
            response.status()
        );
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)
    }

    fn get(&self, path: &str) -> serde_json::Value {
        let request = ureq::http::Request::builder()
            .uri(format!("{}{path}", self.url))
            .header("authorization", format!("Bearer {}", self.token))
            .body(ureq::SendBody::none())
            .expect("a request");
        let mut response = agent().run(request).expect("the API answers");
        let text = response.body_mut().read_to_string().expect("a body");
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_binaries_metrics_pass_promtool_after_real_work() {
    let promtool = edge_tests::installed("promtool", "prometheus");
    let dir = tempfile::tempdir().expect("tmp");
    let orch_dir = dir.path().join("orchestrator");
    let (_orch, quic, url) = edge_tests::start_orchestrator(&orch_dir);
    let api = Api {
        url,
        token: std::fs::read_to_string(orch_dir.join("admin.token"))
            .expect("admin.token")
            .trim()
            .to_owned(),
    };

    // A node enrolls, with its status endpoint on a port of its own choosing.
    let join = api.call(
        "POST",
        "/v1/tokens",
        "application/json",
        br#"{"ttl": "1h", "uses": 1}"#.to_vec(),
    );
    let node_dir = dir.path().join("node");
    std::fs::create_dir_all(&node_dir).expect("node dir");
    let config = node_dir.join("node.toml");
    std::fs::write(
        &config,
        format!(
            "version = 1\nname = \"metrics-1\"\ndata_dir = \"{}\"\n\
             status_listen = \"127.0.0.1:0\"\nstatus_interval_secs = 1\n\
             [orchestrator]\naddress = \"{quic}\"\n\
             [join]\ntoken = \"{}\"\nca_hash = \"{}\"\n",
            node_dir.join("data").display(),
            join["token"].as_str().expect("token"),
            join["ca_hash"].as_str().expect("ca_hash"),
        ),
    )
    .expect("write the config");
    let mut run = Command::new(binary("edge-node"));
    run.args(["run", "--config"])
        .arg(&config)
        .env("EDGE_LOG", "info");
    let (_node, node_lines) = spawn_reading_stderr(run);
    let listening = line_with(&node_lines, "status endpoint listening");
    let status_addr = listening
        .split("addr=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .expect("the status address")
        .to_owned();
    let online = || api.get("/v1/nodes/metrics-1")["status"] == "online";
    assert!(eventually(PATIENCE, online).await.is_some(), "online");

    // A workload is pushed, deployed and runs.
    let pushed = api.call(
        "POST",
        "/v1/artifacts",
        "application/octet-stream",
        std::fs::read(binary("edge-hello")).expect("the sample binary"),
    );
    let spec = serde_json::json!({
        "name": "hello",
        "version": "1.0.0",
        "artifact": pushed["digest"],
        "args": ["--port", "0", "--bind", "127.0.0.1"],
        "replicas": 1,
        "resources": {"cpu_millis": 100, "memory_bytes": 33554432},
    });
    api.call(
        "POST",
        "/v1/workloads",
        "application/json",
        spec.to_string().into_bytes(),
    );
    let running = || api.get("/v1/workloads/hello")["instances"][0]["state"] == "running";
    assert!(eventually(PATIENCE, running).await.is_some(), "running");

    let orchestrator_metrics = format!("{}/metrics", api.url);
    let node_metrics = format!("http://{status_addr}/metrics");
    for (what, url) in [
        ("the orchestrator", &orchestrator_metrics),
        ("the node", &node_metrics),
    ] {
        let (content_type, text) = scrape(url, None);
        assert!(
            content_type.starts_with("text/plain; version=0.0.4"),
            "{what}: {content_type}"
        );
        assert_promtool_passes(&promtool, what, &text);
        let (content_type, text) = scrape(url, Some("application/openmetrics-text"));
        assert!(
            content_type.starts_with("application/openmetrics-text; version=1.0.0"),
            "{what}: {content_type}"
        );
        assert!(text.ends_with("# EOF\n"), "{what}: {text}");
    }

    // What happened shows, on both ends.
    let (_, orch) = scrape(&orchestrator_metrics, None);
    for (series, at_least) in [
        ("edge_enrollments_total", 1.0),
        ("edge_workload_deploys_total", 1.0),
        ("edge_sessions_opened_total", 1.0),
        ("edge_nodes{status=\"online\"}", 1.0),
        ("edge_frames_total{direction=\"rx\"}", 1.0),
        ("edge_instance_transitions_total{state=\"running\"}", 1.0),
        ("edge_api_requests_total{code=\"201\"}", 3.0),
    ] {
        let got = value(&orch, series);
        assert!(
            got.is_some_and(|v| v >= at_least),
            "{series} is {got:?}:\n{orch}"
        );
    }
    let (_, node) = scrape(&node_metrics, None);
    for (series, at_least) in [
        ("edge_node_enrollments_total", 1.0),
        ("edge_node_state_changes_total{state=\"online\"}", 1.0),
        ("edge_node_artifact_fetches_total", 1.0),
        ("edge_node_artifact_fetched_bytes_total", 1.0),
        ("edge_node_instance_starts_total", 1.0),
        ("edge_node_workloads_running", 1.0),
    ] {
        let got = value(&node, series);
        assert!(
            got.is_some_and(|v| v >= at_least),
            "{series} is {got:?}:\n{node}"
        );
    }
}
