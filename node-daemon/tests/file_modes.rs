//! What the node writes under its data dir is readable by the node's own user only: the
//! directories it creates are 0700, and the files that hold its identity, its join token, the
//! workloads' specs (their `env` is where secrets end up) and their logs are 0600. The
//! process umask must not matter, so this test sets the most permissive one, 0.
//!
//! The umask belongs to the whole process: this file holds a single test, so nothing else in
//! its binary runs under it.

use nix::sys::stat::{Mode, umask};
use node_daemon::config::Config;
use node_daemon::identity::IdentityDir;
use node_daemon::provision::Provisioner;
use node_daemon::supervisor::{
    LimitsBackend, LogLimits, State, Supervisor, SupervisorOptions, WorkloadSpec,
};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;
use tokio::time::Instant;

const DEADLINE: Duration = Duration::from_secs(30);
const CA: &str = "sha256:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
const TOKEN: &str = "abcdef.0123456789abcdef0123456789abcdef";

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Asserts every `(path, mode)`, naming each one that is off.
fn assert_modes(want: &[(&Path, u32)]) {
    let wrong: Vec<String> = want
        .iter()
        .filter(|(path, m)| mode(path) != *m)
        .map(|(path, m)| format!("{} is {:o}, not {m:o}", path.display(), mode(path)))
        .collect();
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// Polls `ok` every 10 ms until it holds; panics after [`DEADLINE`].
async fn eventually(what: &str, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    while !ok() {
        assert!(start.elapsed() < DEADLINE, "waited {DEADLINE:?} for {what}");
        tick.tick().await;
    }
}

/// An address where no orchestrator answers: the daemon keeps dialing it.
fn nowhere() -> std::net::SocketAddr {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket.local_addr().expect("addr")
}

#[tokio::test]
async fn everything_the_node_writes_is_private_whatever_the_umask() {
    umask(Mode::empty());
    let root = tempfile::tempdir().expect("temp dir");
    // Missing, several levels deep: the daemon creates all of it.
    let data = root.path().join("var/lib/edge-node");

    // A first start: the daemon makes its data dir, its key, and its workload and artifact
    // directories, then dials (in vain) to enroll.
    let config = Config::from_toml(&format!(
        "version = 1\nname = \"modes\"\ndata_dir = \"{}\"\n\
         [orchestrator]\naddress = \"{}\"\n\
         [join]\ntoken = \"{TOKEN}\"\nca_hash = \"{CA}\"\n",
        data.display(),
        nowhere(),
    ))
    .expect("config");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let daemon = tokio::spawn(node_daemon::daemon::run(config, async move {
        let _ = stopped.await;
    }));
    eventually("the daemon to open its artifact cache", || {
        data.join("artifacts").is_dir() && data.join("workloads").is_dir()
    })
    .await;
    let _ = stop.send(());
    daemon
        .await
        .expect("the daemon does not panic")
        .expect("a clean stop");
    let (var, lib, identity) = (
        root.path().join("var"),
        root.path().join("var/lib"),
        data.join("identity"),
    );
    assert_modes(&[
        (&var, 0o700),
        (&lib, 0o700),
        (&data, 0o700),
        (&identity, 0o700),
        (&identity.join("node.key"), 0o600),
        (&data.join("artifacts"), 0o700),
        (&data.join("workloads"), 0o700),
    ]);

    // Enrollment's answer, and a join file taken off the boot partition.
    let ids = IdentityDir::new(&data);
    ids.save(edge_proto::NodeId([7; 16]), b"cert", b"ca")
        .expect("save the identity");
    let boot = root.path().join("boot");
    std::fs::create_dir_all(&boot).expect("boot dir");
    std::fs::write(
        boot.join("edge-join.toml"),
        format!("orchestrator = \"10.0.0.1:7443\"\ntoken = \"{TOKEN}\"\nca_hash = \"{CA}\"\n"),
    )
    .expect("join file");
    Provisioner::new(&[boot.join("edge-join.toml")], &data)
        .take()
        .expect("a valid join file")
        .expect("found");

    // A workload with a secret in its environment, whose log rotates.
    let options = SupervisorOptions {
        cgroup_parent: format!("edge-node-test-{}-modes", std::process::id()),
        logs: LogLimits {
            file_max_bytes: 64,
            ..LogLimits::default()
        },
        ..SupervisorOptions::default()
    };
    let sup = Supervisor::open_with(&data, LimitsBackend::Rlimit, options)
        .await
        .expect("open");
    let mut spec = WorkloadSpec::new("secretive", "1", "/bin/sh");
    spec.args = vec![
        "-c".into(),
        "for i in 1 2 3 4 5 6 7 8; do echo \"line $i of the log\"; done; exec sleep 600".into(),
    ];
    spec.env
        .insert("DB_PASSWORD".into(), "hunter2-hunter2".into());
    sup.apply(spec).await.expect("apply");
    let logs = data.join("workloads/secretive/logs");
    eventually("the workload to run and its log to rotate", || {
        sup.status("secretive")
            .is_some_and(|s| s.state == State::Running)
            && logs.join("current.log.1").is_file()
            && data.join("workloads/secretive/instance.json").is_file()
    })
    .await;

    let workload = data.join("workloads/secretive");
    assert_modes(&[
        (&data, 0o700),
        (&identity, 0o700),
        (&identity.join("node.key"), 0o600),
        (&identity.join("node.crt"), 0o600),
        (&identity.join("ca.crt"), 0o600),
        (&identity.join("node.id"), 0o600),
        (&data.join("join.toml"), 0o600),
        (&data.join("artifacts"), 0o700),
        (&data.join("workloads"), 0o700),
        (&workload, 0o700),
        (&workload.join("spec.json"), 0o600),
        (&workload.join("instance.json"), 0o600),
        (&logs, 0o700),
        (&logs.join("current.log"), 0o600),
        (&logs.join("current.log.1"), 0o600),
    ]);
    sup.shutdown().await;
}
