//! End to end through the built binaries, as an operator would: start `edge-orchestrator serve`,
//! make a join token with `edgectl`, start `edge-node` with a config file, watch it with
//! `edgectl`, kill it with SIGKILL, bring it back; push the sample service, deploy it, reach it,
//! read its log and delete it.

use edge_tests::cli::{Edgectl, node_config, run_node};
use edge_tests::{PATIENCE, binary, eventually, http_get_root, start_orchestrator};
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command};

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
    assert!(join["token"].is_string());
    assert!(
        join["ca_hash"]
            .as_str()
            .is_some_and(|h| h.starts_with("sha256:"))
    );

    let config = node_config(
        dir.path(),
        "e2e-1",
        "labels = { site = \"lab\" }\nlocation = { lat = 48.1, lon = 11.6 }",
        &quic,
        &join,
    );
    let spawn_node = || run_node(&config);
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

/// `GET /` on the sample service; `None` if nothing answers.
fn hello(port: u16) -> Option<String> {
    http_get_root(&format!("127.0.0.1:{port}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_deploys_the_sample_service_with_the_binaries() {
    let dir = tempfile::tempdir().expect("tmp");
    let orch_dir = dir.path().join("orchestrator");
    let (_orch, quic, api) = start_orchestrator(&orch_dir);
    let ctl = Edgectl {
        api,
        token: std::fs::read_to_string(orch_dir.join("admin.token"))
            .expect("token")
            .trim()
            .to_owned(),
    };
    let join = ctl.json(&["token", "create", "--uses", "2"]);
    let _lab = run_node(&node_config(
        dir.path(),
        "lab-1",
        "labels = { site = \"lab\" }",
        &quic,
        &join,
    ));
    let _shop = run_node(&node_config(
        dir.path(),
        "shop-1",
        "labels = { site = \"shop\" }",
        &quic,
        &join,
    ));
    for name in ["lab-1", "shop-1"] {
        assert!(
            eventually(PATIENCE, || ctl.status_of(name).as_deref()
                == Some("online"))
            .await
            .is_some(),
            "{name} online"
        );
    }

    let pushed = ctl.json(&[
        "artifact",
        "push",
        binary("edge-hello").to_str().expect("utf-8"),
    ]);
    let digest = pushed["digest"].as_str().expect("digest");
    let spec = dir.path().join("hello.toml");
    std::fs::write(
        &spec,
        format!(
            "name = \"hello\"\nversion = \"1.0.0\"\nartifact = \"{digest}\"\n\
             args = [\"--port\", \"0\", \"--bind\", \"127.0.0.1\"]\n\
             env = {{ GREETING = \"hi\" }}\nreplicas = 1\n\
             [resources]\ncpu_millis = 100\nmemory_bytes = 33554432\n\
             [requirements]\nlabels = {{ site = \"lab\" }}\n"
        ),
    )
    .expect("write spec");

    // A mistake in the file names its field, and nothing is deployed.
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "name = \"hello\"\nversion = \"1\"\nartifact = \"sha256:00\"\n\
         [resources]\ncpu_millis = 100\nmemory_bytes = 33554432\n",
    )
    .expect("write");
    let out = ctl.run(&["deploy", "-f", bad.to_str().expect("utf-8")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("artifact"), "{err}");

    let out = ctl.run(&["deploy", "-f", spec.to_str().expect("utf-8")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("1 of 1 instances placed on lab-1"), "{said}");

    let running = || {
        let w = ctl.json(&["workloads", "hello"]);
        w["instances"][0]["state"] == "running"
    };
    assert!(eventually(PATIENCE, running).await.is_some(), "running");
    let w = ctl.json(&["workloads", "hello"]);
    assert_eq!(w["instances"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        w["instances"][0]["node"], "lab-1",
        "only where the label matches"
    );
    let table = String::from_utf8_lossy(&ctl.run(&["workloads"]).stdout).into_owned();
    assert!(
        table.contains("hello") && table.contains("1.0.0"),
        "{table}"
    );

    // Its log says where it listens; the service answers there, from its node.
    let mut port = None;
    eventually(PATIENCE, || {
        let log = String::from_utf8_lossy(&ctl.run(&["logs", "hello", "--node", "lab-1"]).stdout)
            .into_owned();
        port = log
            .split("listening on 127.0.0.1:")
            .nth(1)
            .and_then(|p| p.split_whitespace().next()?.parse::<u16>().ok());
        port.is_some()
    })
    .await;
    let port = port.expect("the log names the port");
    assert_eq!(hello(port).as_deref(), Some("hi from lab-1\n"));

    // Deleted: the service stops answering.
    let out = ctl.run(&["delete", "hello"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        eventually(PATIENCE, || hello(port).is_none())
            .await
            .is_some(),
        "stopped on delete"
    );
    let out = ctl.run(&["workloads", "hello"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no workload named"));
}
