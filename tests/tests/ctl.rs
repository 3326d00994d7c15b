//! `edge-node ctl` against a running node whose orchestrator is gone: the local operator
//! reads status, workloads, logs and the outbox, restarts and stops a workload, and every
//! action reaches the orchestrator as an event once it is back. The socket is 0600, bounded
//! and refuses what is not a request.

use edge_tests::{PATIENCE, TestNode, TestOrchestrator, alive, binary, eventually, node_config};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Output;

/// The pid the workload wrote at its last start.
fn written_pid(file: &Path) -> Option<u32> {
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
}

/// Runs `edge-node ctl --config CONFIG ARGS` (the real command line).
fn ctl(config: &Path, args: &[&str]) -> Output {
    std::process::Command::new(binary("edge-node"))
        .arg("ctl")
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .expect("edge-node runs")
}

fn ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "ctl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn json_of(output: &Output) -> Value {
    serde_json::from_str(&ok(output)).expect("--json prints JSON")
}

/// One raw exchange on the socket: what the node answers to `bytes`.
fn raw(socket: &Path, bytes: &[u8]) -> Value {
    let mut stream = UnixStream::connect(socket).expect("connect");
    stream
        .set_read_timeout(Some(PATIENCE))
        .expect("read timeout");
    stream.write_all(bytes).expect("write");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("an answer");
    serde_json::from_str(&answer).expect("a JSON answer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_operator_controls_a_node_with_no_uplink_and_the_orchestrator_learns_of_it() {
    let orch = TestOrchestrator::start().await;
    let token = orch.token(1);
    let node_dir = tempfile::tempdir().expect("tmp");
    let config = node_config(
        "kiosk",
        node_dir.path(),
        orch.orch.quic_addr,
        Some((&token, &orch.ca_hash())),
        "",
    );
    // What the operator's `--config` points at: the same data dir is all ctl needs.
    let config_file = node_dir.path().join("node.toml");
    std::fs::write(
        &config_file,
        format!(
            "version = 1\nname = \"kiosk\"\ndata_dir = \"{}\"\n[orchestrator]\naddress = \"{}\"\n",
            node_dir.path().display(),
            orch.orch.quic_addr
        ),
    )
    .expect("config file");
    let node = TestNode::spawn(config);
    assert!(
        eventually(PATIENCE, || orch.online("kiosk"))
            .await
            .is_some()
    );
    let socket: PathBuf = node_dir.path().join("ctl.sock");
    let mode = std::fs::metadata(&socket)
        .expect("the socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "only the node's user may use it");

    let pid_file = node_dir.path().join("workload.pid");
    let script = b"#!/bin/sh\necho $$ > \"$PID_FILE\"\necho \"till up as $$\"\nexec sleep 600\n";
    let digest = orch.artifact(script).await;
    let spec = json!({
        "name": "till",
        "version": "1.0.0",
        "artifact": digest,
        "env": {"PID_FILE": pid_file.display().to_string()},
        "resources": {"cpu_millis": 100, "memory_bytes": 32 << 20},
    });
    let (status, body) = orch.api("POST", "/v1/workloads", Some(spec)).await;
    assert_eq!(status, 201, "{body}");
    assert!(
        eventually(PATIENCE, || written_pid(&pid_file).is_some_and(alive))
            .await
            .is_some()
    );

    // The uplink is gone.
    let stopped = orch.stop().await;
    let status = json_of(&ctl(&config_file, &["--json", "status"]));
    assert_eq!(status["name"], "kiosk", "{status}");
    assert!(status["state"].is_string(), "{status}");

    let table = ok(&ctl(&config_file, &["workloads"]));
    let first = written_pid(&pid_file).expect("a pid");
    assert!(
        table.contains("till") && table.contains("running") && table.contains(&first.to_string()),
        "{table}"
    );
    let mut logs = String::new();
    eventually(PATIENCE, || {
        logs = ok(&ctl(&config_file, &["logs", "till", "--lines", "5"]));
        logs.contains(&format!("till up as {first}"))
    })
    .await
    .unwrap_or_else(|| panic!("the workload's output: {logs}"));

    // Restart: a new process.
    assert!(ok(&ctl(&config_file, &["restart", "till"])).contains("restarted till"));
    let mut second = None;
    eventually(PATIENCE, || {
        second = written_pid(&pid_file).filter(|p| *p != first && alive(*p));
        second.is_some()
    })
    .await
    .expect("restarted into a new process");
    assert!(!alive(first));

    // Stop: nothing runs, and it says who stopped it.
    assert!(ok(&ctl(&config_file, &["stop", "till"])).contains("stopped till"));
    let second = second.unwrap_or_default();
    assert!(eventually(PATIENCE, || !alive(second)).await.is_some());
    let workloads = json_of(&ctl(&config_file, &["workloads", "--json"]));
    assert_eq!(workloads[0]["state"], "stopped", "{workloads}");
    assert_eq!(
        workloads[0]["message"], "stopped by a local operator",
        "{workloads}"
    );

    // Both actions wait in the outbox.
    let outbox = json_of(&ctl(&config_file, &["outbox", "--json"]));
    assert!(outbox["events"].as_u64() >= Some(2), "{outbox}");

    // A workload that is not there, and a command line that is wrong, say so.
    let missing = ctl(&config_file, &["restart", "nope"]);
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("no workload named \"nope\""),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
    let wrong = ctl(&config_file, &["reboot"]);
    assert_eq!(wrong.status.code(), Some(2));

    // Hostile bytes on the socket: a clear refusal each, and the node serves on.
    assert_eq!(raw(&socket, &[b'x'; 4096])["error"], "too_large");
    assert_eq!(raw(&socket, b"{\"action\":\n")["error"], "bad_request");
    assert_eq!(
        raw(
            &socket,
            b"{\"action\":\"logs\",\"workload\":\"till\",\"lines\":-1}\n"
        )["error"],
        "bad_request"
    );
    assert_eq!(raw(&socket, &[0xff, 0xfe, b'\n'])["error"], "bad_request");
    // Silent clients take every slot; each is cut at the request timeout, and then a real
    // request is served.
    let idle: Vec<UnixStream> = (0..4)
        .map(|_| UnixStream::connect(&socket).expect("connect"))
        .collect();
    let served = json_of(&ctl(&config_file, &["status", "--json"]));
    assert_eq!(served["name"], "kiosk");
    for mut stream in idle {
        stream
            .set_read_timeout(Some(PATIENCE))
            .expect("read timeout");
        let mut answer = String::new();
        stream
            .read_to_string(&mut answer)
            .expect("closed with an answer");
        assert!(answer.contains("\"timeout\""), "{answer}");
    }

    // The orchestrator is back: it learns who did what, and when.
    let orch = TestOrchestrator::resume(stopped).await;
    let mut actions = Vec::new();
    eventually(PATIENCE, || {
        actions = orch
            .orch
            .registry
            .events(None)
            .expect("stored events")
            .into_iter()
            .filter_map(|e| serde_json::to_value(e).ok())
            .filter(|e| e["what"]["kind"] == "operator")
            .collect();
        actions.len() == 2
    })
    .await
    .unwrap_or_else(|| panic!("both actions are events: {actions:?}"));
    assert_eq!(actions[0]["what"]["action"], "restart", "{actions:?}");
    assert_eq!(actions[1]["what"]["action"], "stop", "{actions:?}");
    let uid = nix_uid();
    assert_eq!(actions[0]["what"]["uid"], json!(uid), "{actions:?}");
    assert_eq!(actions[0]["what"]["workload"], "till");
    // The stopped workload stays stopped across the reconnect: the node owns what it runs.
    assert!(written_pid(&pid_file) == Some(second) && !alive(second));
    node.stop().await.expect("clean stop");
    // The socket stops answering with the node (its task ends just after).
    assert!(
        eventually(PATIENCE, || UnixStream::connect(&socket).is_err())
            .await
            .is_some(),
        "the socket still answers after the node stopped"
    );
}

/// This process's user id, as the node sees its peer.
fn nix_uid() -> u32 {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .expect("/proc/self")
}
