//! End to end through the built binaries, as an operator would: start `edge-orchestrator serve`,
//! make a join token with `edgectl`, start `edge-node` with a config file, watch it with
//! `edgectl`, kill it with SIGKILL, bring it back.

use edge_tests::{PATIENCE, binary, eventually};
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

/// A child process killed when the test ends, pass or fail.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Edgectl {
    api: String,
    token: String,
}

impl Edgectl {
    fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new(binary("edgectl"))
            .args(["--api", &self.api, "--token", &self.token])
            .args(args)
            .output()
            .expect("edgectl runs")
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.run(&all);
        assert!(
            out.status.success(),
            "edgectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("edgectl --json prints JSON")
    }

    fn status_of(&self, name: &str) -> Option<String> {
        let out = self.run(&["node", name, "--json"]);
        if !out.status.success() {
            return None;
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v["status"].as_str().map(str::to_owned)
    }
}

fn start_orchestrator(data: &Path) -> (Proc, String, String) {
    let mut child = Command::new(binary("edge-orchestrator"))
        .args(["serve", "--data-dir"])
        .arg(data)
        .args([
            "--quic-listen",
            "127.0.0.1:0",
            "--api-listen",
            "127.0.0.1:0",
        ])
        .env("EDGE_LOG", "warn")
        .stderr(Stdio::piped())
        .spawn()
        .expect("orchestrator starts");
    let stderr = child.stderr.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let banner = loop {
        let line = rx
            .recv_timeout(PATIENCE)
            .expect("the orchestrator says where it listens");
        if line.contains("nodes dial") {
            break line;
        }
    };
    // "edge-orchestrator: nodes dial 127.0.0.1:P, operators use http://127.0.0.1:Q"
    let quic = banner
        .split("nodes dial ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .expect("quic address")
        .to_owned();
    let api = banner
        .split("operators use ")
        .nth(1)
        .map(str::trim)
        .expect("api url")
        .to_owned();
    (Proc(child), quic, api)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_runs_a_node_with_the_binaries() {
    let dir = tempfile::tempdir().expect("tmp");
    let orch_dir = dir.path().join("orchestrator");
    let (mut orch, quic, api) = start_orchestrator(&orch_dir);

    let token_path = orch_dir.join("admin.token");
    let mode = std::fs::metadata(&token_path)
        .expect("admin.token")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the admin credential is private");
    let ctl = Edgectl {
        api,
        token: std::fs::read_to_string(&token_path)
            .expect("token")
            .trim()
            .to_owned(),
    };

    let join = ctl.json(&["token", "create", "--ttl", "1h", "--uses", "1"]);
    let token = join["token"].as_str().expect("token");
    let ca_hash = join["ca_hash"].as_str().expect("ca_hash");
    assert!(ca_hash.starts_with("sha256:"));

    let node_dir = dir.path().join("node");
    std::fs::create_dir_all(&node_dir).expect("node dir");
    let config = node_dir.join("node.toml");
    std::fs::write(
        &config,
        format!(
            "version = 1\nname = \"e2e-1\"\ndata_dir = \"{}\"\n\
             labels = {{ site = \"lab\" }}\nlocation = {{ lat = 48.1, lon = 11.6 }}\n\
             [orchestrator]\naddress = \"{quic}\"\n\
             [join]\ntoken = \"{token}\"\nca_hash = \"{ca_hash}\"\n",
            node_dir.join("data").display()
        ),
    )
    .expect("write config");
    let spawn_node = || {
        Proc(
            Command::new(binary("edge-node"))
                .args(["run", "--config"])
                .arg(&config)
                .env("EDGE_LOG", "warn")
                .spawn()
                .expect("node starts"),
        )
    };
    let mut node = spawn_node();
    let online = || ctl.status_of("e2e-1").as_deref() == Some("online");
    assert!(
        eventually(PATIENCE, online).await.is_some(),
        "the node came online"
    );

    let table = ctl.run(&["nodes"]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("e2e-1") && table.contains("online"),
        "{table}"
    );
    let nodes = ctl.json(&["nodes"]);
    let me = &nodes.as_array().expect("array")[0];
    assert_eq!(me["name"], "e2e-1");
    assert_eq!(me["arch"], std::env::consts::ARCH);
    assert_eq!(me["location"]["lat"], 48.1);
    assert_eq!(me["labels"]["site"], "lab");

    // The process dies without a word: the orchestrator notices by itself.
    node.0.kill().expect("SIGKILL");
    let _ = node.0.wait();
    let offline = || ctl.status_of("e2e-1").as_deref() == Some("offline");
    assert!(
        eventually(PATIENCE, offline).await.is_some(),
        "shown offline after SIGKILL"
    );

    // Restarted, it comes back with its stored identity (the token is spent).
    node = spawn_node();
    assert!(eventually(PATIENCE, online).await.is_some(), "back online");
    drop(node);

    // A clean stop of the orchestrator.
    nix_term(&orch.0);
    let mut status = None;
    eventually(PATIENCE, || {
        status = orch.0.try_wait().expect("wait");
        status.is_some()
    })
    .await;
    let status = status.expect("orchestrator exited");
    assert!(
        status.success(),
        "orchestrator exits cleanly on SIGTERM: {status}"
    );
}

#[test]
fn a_bad_config_file_is_a_clear_error_naming_the_field() {
    let dir = tempfile::tempdir().expect("tmp");
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        "version = 1\nname = \"x\"\ndata_dir = \"/tmp/x\"\nlocation = { lat = 91.0, lon = 0.0 }\n\
         [orchestrator]\naddress = \"127.0.0.1:7443\"\n",
    )
    .expect("write");
    let out = Command::new(binary("edge-node"))
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("location.lat"), "{err}");
}

fn nix_term(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
}
