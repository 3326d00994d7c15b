//! The real `edgectl` binary against a real API server on 127.0.0.1:0.

use edge_proto::{Capabilities, Label, Location, NodeId, text};
mod common;

use common::Api;
use orchestrator::api;
use orchestrator::app::Handles;
use orchestrator::artifacts::ArtifactStore;
use orchestrator::auth::Role;
use orchestrator_core::store::MemStore;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::SystemTime;

struct Server {
    // Dropping it stops the server.
    _api: Api,
    handles: Handles,
    base: String,
    admin: String,
    /// The artifact store's directory, when there is one.
    _artifacts: Option<tempfile::TempDir>,
}

fn start() -> Server {
    start_with(None)
}

/// A server with an artifact store, so that workloads can be deployed.
fn start_with_artifacts() -> Server {
    start_with(Some(tempfile::tempdir().expect("temp dir")))
}

fn start_with(artifacts: Option<tempfile::TempDir>) -> Server {
    let artifact_store = artifacts
        .as_ref()
        .map(|dir| Arc::new(ArtifactStore::open(dir.path()).expect("artifact store")));
    let api = Api::start(Arc::new(MemStore::default()), artifact_store, api::LIMITS);
    Server {
        handles: api.handles.clone(),
        base: api.base(),
        _artifacts: artifacts,
        admin: api.token("admin", Role::Admin),
        _api: api,
    }
}

impl Server {
    /// Runs `edgectl --api BASE --token TOKEN ARGS...`.
    fn edgectl(&self, token: Option<&str>, args: &[&str]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_edgectl"));
        cmd.env_remove("EDGE_API")
            .env_remove("EDGE_TOKEN")
            .arg("--api")
            .arg(&self.base);
        if let Some(t) = token {
            cmd.arg("--token").arg(t);
        }
        cmd.args(args).output().expect("run edgectl")
    }

    /// Enrolls a node and opens a session for it, as if it had connected: online, so that the
    /// scheduler places instances there.
    fn enroll_online(&self, name: &str, id: NodeId) {
        let (token, _) = self
            .handles
            .registry
            .create_token(600, 1, "test".into())
            .expect("join token");
        let caps = Capabilities {
            arch: text("x86_64"),
            os: text("linux"),
            os_version: text("Ubuntu 24.04"),
            kernel: text("6.8.0"),
            hostname: text(name),
            cpus: 4,
            cpu_model: text(""),
            memory_bytes: 8 << 30,
            disk_bytes: 64 << 30,
            disk_free_bytes: 32 << 30,
            accelerators: Default::default(),
            board: None,
            labels: Default::default(),
            location: None,
        };
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs();
        let record = {
            let mut fleet = self.handles.registry.fleet();
            fleet
                .enroll(&token, name, &caps, id, now, |_| Ok(()))
                .expect("enroll");
            fleet
                .open_session(id, u64::from(id.0[0]), 1, now)
                .expect("session");
            fleet.node(id).cloned().expect("enrolled")
        };
        self.handles
            .deployments
            .deploy(|d| ((), d.node_up(record, None, 0).1));
    }

    fn enroll_berlin(&self) {
        let (token, _) = self
            .handles
            .registry
            .create_token(600, 1, "test".into())
            .expect("join token");
        let caps = Capabilities {
            arch: text("aarch64"),
            os: text("linux"),
            os_version: text("Debian GNU/Linux 12 (bookworm)"),
            kernel: text("6.6.31"),
            hostname: text("pi"),
            cpus: 4,
            cpu_model: text("Cortex-A72"),
            memory_bytes: 4_080_218_931,
            disk_bytes: 31_000_000_000,
            disk_free_bytes: 20_000_000_000,
            accelerators: Default::default(),
            board: Some(text("Raspberry Pi 4 Model B Rev 1.4")),
            labels: [Label {
                key: text("site"),
                value: text("berlin"),
            }]
            .into_iter()
            .collect(),
            location: Some(Location {
                lat: 52.52,
                lon: 13.405,
                alt_m: None,
            }),
        };
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs();
        self.handles
            .registry
            .fleet()
            .enroll(&token, "berlin-1", &caps, NodeId([7; 16]), now, |_| Ok(()))
            .expect("enroll");
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_ok(o: &Output) {
    assert!(
        o.status.success(),
        "edgectl failed: {:?}\nstdout: {}\nstderr: {}",
        o.status,
        stdout(o),
        stderr(o)
    );
}

#[test]
fn token_create_json_prints_the_token_and_ca_hash() {
    let s = start();
    let o = s.edgectl(
        Some(&s.admin),
        &["token", "create", "--ttl", "1h", "--uses", "2", "--json"],
    );
    assert_ok(&o);
    let out = stdout(&o);
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON on stdout");
    let token = v["token"].as_str().expect("token");
    assert_eq!(v["ca_hash"], s.handles.registry.ca().hash());
    assert_eq!(v["uses"], 2);
    assert!(
        out.trim_start().starts_with("{\n  \"token\": "),
        "the API's key order: {out}"
    );
    let id = token.split_once('.').expect("ID.SECRET").0;
    assert!(s.handles.registry.fleet().tokens().any(|t| t.id == id));
}

#[test]
fn token_create_prints_a_join_snippet_that_is_valid_toml() {
    let s = start();
    let o = s.edgectl(
        Some(&s.admin),
        &["token", "create", "--description", "shop berlin"],
    );
    assert_ok(&o);
    let out = stdout(&o);
    let snippet = &out[out.find("[join]").expect("a [join] section")..];
    let parsed: toml::Table = toml::from_str(snippet).expect("valid TOML");
    let join = parsed["join"].as_table().expect("join table");
    assert_eq!(
        join["ca_hash"].as_str(),
        Some(s.handles.registry.ca().hash().as_str())
    );
    let token = join["token"].as_str().expect("token");
    let record = s
        .handles
        .registry
        .fleet()
        .tokens()
        .find(|t| token.starts_with(&format!("{}.", t.id)))
        .cloned()
        .expect("the printed token exists");
    assert_eq!(record.description, "shop berlin");
    assert_eq!(record.uses_left, 1);

    let o = s.edgectl(Some(&s.admin), &["token", "list"]);
    assert_ok(&o);
    let out = stdout(&o);
    assert!(out.starts_with("ID"), "{out}");
    assert!(
        out.contains(&record.id) && out.contains("shop berlin"),
        "{out}"
    );
    assert!(!out.contains(token), "token list never shows the secret");
}

#[test]
fn nodes_prints_a_table_and_json() {
    let s = start();
    let o = s.edgectl(Some(&s.admin), &["nodes"]);
    assert_ok(&o);
    assert!(stdout(&o).starts_with("NAME"), "{}", stdout(&o));

    s.enroll_berlin();
    let o = s.edgectl(Some(&s.admin), &["nodes"]);
    assert_ok(&o);
    let out = stdout(&o);
    let mut lines = out.lines();
    let header: Vec<&str> = lines
        .next()
        .expect("header")
        .split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(
        header,
        [
            "NAME",
            "STATUS",
            "ARCH",
            "CPUS",
            "MEMORY",
            "LOCATION",
            "LAST SEEN"
        ]
    );
    let row = lines.next().expect("a row");
    for cell in [
        "berlin-1",
        "offline",
        "aarch64",
        "3.8 GiB",
        "52.520,13.405",
        "s ago",
    ] {
        assert!(row.contains(cell), "{cell:?} missing in {row:?}");
    }

    let o = s.edgectl(Some(&s.admin), &["nodes", "--json"]);
    assert_ok(&o);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("JSON");
    let nodes = v.as_array().expect("an array");
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0]["name"], "berlin-1");

    let o = s.edgectl(Some(&s.admin), &["nodes", "--status", "online"]);
    assert_ok(&o);
    assert!(!stdout(&o).contains("berlin-1"));

    let o = s.edgectl(Some(&s.admin), &["node", "berlin-1"]);
    assert_ok(&o);
    let out = stdout(&o);
    for text in [
        "berlin-1",
        "site=berlin",
        "Raspberry Pi 4 Model B Rev 1.4",
        "4 x Cortex-A72",
        "52.520,13.405",
        "07070707070707070707070707070707",
    ] {
        assert!(out.contains(text), "{text:?} missing in:\n{out}");
    }

    let o = s.edgectl(Some(&s.admin), &["node", "nowhere"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).starts_with("edgectl: no node"), "{}", stderr(&o));
}

#[test]
fn api_errors_exit_1_with_the_apis_message() {
    let s = start();
    let o = s.edgectl(Some("not-a-jwt"), &["nodes"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stderr(&o).trim(), "edgectl: malformed bearer token");
    assert!(stdout(&o).is_empty());

    let o = s.edgectl(None, &["nodes"]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.starts_with("edgectl: missing bearer token"), "{err}");
    assert!(err.contains("EDGE_TOKEN"), "a hint: {err}");

    let o = s.edgectl(Some(&s.admin), &["token", "create", "--ttl", "banana"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).starts_with("edgectl: ttl: "), "{}", stderr(&o));

    // The environment works as well as the flags.
    let o = Command::new(env!("CARGO_BIN_EXE_edgectl"))
        .env("EDGE_API", &s.base)
        .env("EDGE_TOKEN", &s.admin)
        .args(["token", "list", "--json"])
        .output()
        .expect("run edgectl");
    assert_ok(&o);
    assert_eq!(stdout(&o).trim(), "[]");
}

#[test]
fn an_unreachable_api_is_named_in_the_error() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let api = format!("http://127.0.0.1:{port}");
    let o = Command::new(env!("CARGO_BIN_EXE_edgectl"))
        .env_remove("EDGE_TOKEN")
        .args(["--api", &api, "--token", "x", "nodes"])
        .output()
        .expect("run edgectl");
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.starts_with(&format!(
            "edgectl: cannot reach the orchestrator API at {api}"
        )),
        "{err}"
    );
    assert!(err.contains("connection refused"), "{err}");
}

#[test]
fn api_tokens_are_issued_listed_and_revoked() {
    let s = start();
    let o = s.edgectl(
        Some(&s.admin),
        &[
            "api-token",
            "create",
            "--role",
            "operator",
            "--subject",
            "ci",
            "--ttl",
            "2h",
            "--json",
        ],
    );
    assert_ok(&o);
    let created: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("JSON");
    let token = created["token"].as_str().expect("token").to_owned();
    let id = created["id"].as_str().expect("id").to_owned();
    assert_eq!(created["role"], "operator");
    assert_ok(&s.edgectl(Some(&token), &["nodes"]));

    let o = s.edgectl(Some(&s.admin), &["api-token", "list"]);
    assert_ok(&o);
    let out = stdout(&o);
    let header: Vec<&str> = out
        .lines()
        .next()
        .expect("header")
        .split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(
        header,
        ["ID", "ROLE", "SUBJECT", "STATE", "EXPIRES", "ISSUED BY"]
    );
    let row = out
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("{id} listed in:\n{out}"));
    for cell in ["operator", "ci", "active", "admin"] {
        assert!(row.contains(cell), "{cell:?} missing in {row:?}");
    }
    // Two hours from its issue, counted down from now.
    assert!(
        row.contains("in 2h 0m") || row.contains("in 1h 59m"),
        "{row:?}"
    );
    assert!(!out.contains(&token), "the list never shows a token's text");
    assert!(
        !out.contains(&s.admin),
        "the list never shows a token's text"
    );

    let o = s.edgectl(Some(&s.admin), &["api-token", "revoke", &id]);
    assert_ok(&o);
    assert!(stdout(&o).starts_with(&format!("revoked API token {id}")));
    let o = s.edgectl(Some(&token), &["nodes"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stderr(&o).trim(), "edgectl: bearer token was revoked");
    let o = s.edgectl(Some(&s.admin), &["api-token", "list", "--json"]);
    assert_ok(&o);
    let listed: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("JSON");
    let entry = listed
        .as_array()
        .expect("an array")
        .iter()
        .find(|t| t["id"] == id.as_str())
        .expect("still listed");
    assert_eq!(entry["state"], "revoked");

    let o = s.edgectl(Some(&s.admin), &["api-token", "revoke", "nope"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).starts_with("edgectl: no API token"),
        "{}",
        stderr(&o)
    );
    // clap knows the roles the API issues: admin is not one.
    let o = s.edgectl(
        Some(&s.admin),
        &["api-token", "create", "--role", "admin", "--subject", "x"],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

/// A node's cordon shows in `nodes` and `node`, and `drain` says what became of each
/// instance: a replicated workload's moves to another node, or finds none and says why; a
/// per-node workload's stops.
#[test]
fn cordons_show_and_drain_says_what_moves_and_what_stops() {
    let s = start_with_artifacts();
    for (name, n) in [("alpha", 1u8), ("bravo", 2), ("charlie", 3)] {
        s.enroll_online(name, NodeId([n; 16]));
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let exe = dir.path().join("web");
    std::fs::write(&exe, b"#!/bin/sh\nexec sleep 1000\n").expect("write");
    let o = s.edgectl(Some(&s.admin), &["artifact", "push", "--json"]);
    assert_eq!(o.status.code(), Some(2), "a path is needed");
    let o = s.edgectl(
        Some(&s.admin),
        &["artifact", "push", exe.to_str().expect("utf-8"), "--json"],
    );
    assert_ok(&o);
    let pushed: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("JSON");
    let digest = pushed["digest"].as_str().expect("digest");
    for (name, placement) in [
        ("web", "replicas = 2"),
        ("agent", "placement = \"per-node\""),
    ] {
        let spec = dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &spec,
            format!(
                "name = \"{name}\"\nversion = \"1\"\nartifact = \"{digest}\"\n{placement}\n\
                 [resources]\ncpu_millis = 100\nmemory_bytes = 16777216\n"
            ),
        )
        .expect("write the spec");
        assert_ok(&s.edgectl(
            Some(&s.admin),
            &["deploy", "-f", spec.to_str().expect("utf-8")],
        ));
    }
    let web = |s: &Server| -> Vec<String> {
        let o = s.edgectl(Some(&s.admin), &["workloads", "web", "--json"]);
        assert_ok(&o);
        let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("JSON");
        v["instances"]
            .as_array()
            .expect("instances")
            .iter()
            .map(|i| i["node"].as_str().expect("node").to_owned())
            .collect()
    };
    let holders = web(&s);
    assert_eq!(holders.len(), 2, "{holders:?}");
    let spare = ["alpha", "bravo", "charlie"]
        .into_iter()
        .find(|n| !holders.iter().any(|h| h == n))
        .expect("one node without web");

    // The first drain: web moves to the spare node, agent stops there.
    let victim = holders[0].clone();
    let o = s.edgectl(Some(&s.admin), &["drain", &victim]);
    assert_ok(&o);
    assert_eq!(
        stdout(&o),
        format!(
            "{victim} cordoned and drained:\n  \
             agent: stopped there (a per-node workload runs on the uncordoned nodes that match)\n  \
             web: moves to {spare}\n"
        )
    );
    // The cordon shows.
    let o = s.edgectl(Some(&s.admin), &["nodes"]);
    assert_ok(&o);
    let row = stdout(&o)
        .lines()
        .find(|l| l.starts_with(&victim))
        .map(str::to_owned)
        .expect("the node is listed");
    assert!(row.contains("online,cordoned"), "{row:?}");
    let o = s.edgectl(Some(&s.admin), &["node", &victim]);
    assert_ok(&o);
    assert!(
        stdout(&o).contains("Status:       online, cordoned, last seen"),
        "{}",
        stdout(&o)
    );

    // The second drain: the one node left runs web already, so web has nowhere to go.
    let second = holders[1].clone();
    let o = s.edgectl(Some(&s.admin), &["drain", &second]);
    assert_ok(&o);
    let out = stdout(&o);
    assert!(
        out.starts_with(&format!(
            "{second} cordoned and drained:\n  \
             agent: stopped there (a per-node workload runs on the uncordoned nodes that match)\n  \
             web: stopped there; no other node can take it:\n"
        )),
        "{out}"
    );
    assert!(out.contains(&format!("    {victim}: cordoned")), "{out}");

    // A node without instances: nothing to move, and it says so.
    let o = s.edgectl(Some(&s.admin), &["drain", &victim]);
    assert_ok(&o);
    assert_eq!(
        stdout(&o),
        format!("{victim} cordoned and drained: it ran no instances; no new ones go there\n")
    );
    let o = s.edgectl(Some(&s.admin), &["uncordon", &victim]);
    assert_ok(&o);
    let o = s.edgectl(Some(&s.admin), &["nodes"]);
    assert!(
        stdout(&o)
            .lines()
            .any(|l| l.starts_with(&victim) && !l.contains("cordoned")),
        "{}",
        stdout(&o)
    );
}

/// Completion scripts come from the command line's own definition, so they know every
/// command; the bash one is valid bash.
#[test]
fn completions_for_bash_zsh_and_fish() {
    let s = start();
    for (shell, marker) in [
        ("bash", "_edgectl()"),
        ("zsh", "#compdef edgectl"),
        ("fish", "complete -c edgectl"),
    ] {
        // No API is needed.
        let o = Command::new(env!("CARGO_BIN_EXE_edgectl"))
            .args(["--api", "not-a-url", "completions", shell])
            .output()
            .expect("run edgectl");
        assert_ok(&o);
        let script = stdout(&o);
        assert!(script.contains(marker), "{shell}: {script}");
        for command in ["api-token", "drain", "deploy", "completions"] {
            assert!(script.contains(command), "{shell} lacks {command}");
        }
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("edgectl.bash");
    std::fs::write(&path, stdout(&s.edgectl(None, &["completions", "bash"]))).expect("write");
    let o = Command::new("bash")
        .arg("-n")
        .arg(&path)
        .output()
        .expect("run bash");
    assert_ok(&o);
    let o = s.edgectl(None, &["completions", "tcsh"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

/// `edgectl events --follow` prints what was there, then each event as it arrives, also one
/// that happened a week ago on a node that was offline until now.
#[test]
fn events_follow_prints_late_arrivals_once() {
    use orchestrator_core::events::{EventRecord, Origin, What};
    use std::io::BufRead;
    let server = start();
    server.enroll_berlin();
    let node = NodeId([7; 16]);
    let now_ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64;
    let week_ago = now_ms - 7 * 86_400_000;
    let event = |seq: u64, workload: &str| EventRecord {
        node: node.to_string(),
        seq,
        at_ms: week_ago + seq,
        received_ms: now_ms - now_ms % 1000,
        origin: Origin::Node,
        what: What::Operator {
            action: "restart".into(),
            workload: workload.into(),
            uid: Some(0),
        },
    };
    server
        .handles
        .registry
        .put_events(&[event(1, "first")])
        .expect("stored");
    let mut child = Command::new(env!("CARGO_BIN_EXE_edgectl"))
        .env_remove("EDGE_API")
        .env_remove("EDGE_TOKEN")
        .args(["--api", &server.base, "--token", &server.admin])
        .args(["events", "--follow"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("edgectl runs");
    let out = child.stdout.take().expect("stdout");
    let (lines_tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines() {
            if lines_tx.send(line.unwrap_or_default()).is_err() {
                return;
            }
        }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let wait_for = |needle: &str| -> Vec<String> {
        let mut seen = Vec::new();
        while std::time::Instant::now() < deadline {
            if let Ok(line) = lines.recv_timeout(std::time::Duration::from_millis(100)) {
                let found = line.contains(needle);
                seen.push(line);
                if found {
                    return seen;
                }
            }
        }
        panic!("no line with {needle:?}: {seen:?}");
    };
    let head = wait_for("first");
    assert!(head[0].starts_with("AT"), "a header first: {head:?}");
    // A late arrival, from a week ago.
    server
        .handles
        .registry
        .put_events(&[event(2, "second")])
        .expect("stored");
    let more = wait_for("second");
    assert!(
        more.iter().all(|l| !l.contains("first")),
        "each event once: {more:?}"
    );
    assert!(
        more.last()
            .is_some_and(|l| l.contains("(restart)") && l.contains("berlin-1")),
        "{more:?}"
    );
    let _ = child.kill();
    let _ = child.wait();
}
