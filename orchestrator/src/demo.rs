//! `edge-orchestrator demo`: an orchestrator and three real `edge-node` processes on loopback
//! addresses, each somewhere else in Europe, enrolled with a fresh token, running the
//! `edge-hello` sample service on every node.
//!
//! Everything lives in a temporary directory that is removed on exit; Ctrl-C stops the nodes
//! (SIGTERM, then SIGKILL after a grace period) and the orchestrator, leaving no process behind.

use crate::app::Orchestrator;
use anyhow::{Context, bail};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// (name, site label, lat, lon, local address)
const NODES: [(&str, &str, f64, f64, &str); 3] = [
    ("berlin-1", "berlin", 52.5200, 13.4050, "127.0.0.2"),
    ("paris-1", "paris", 48.8566, 2.3522, "127.0.0.3"),
    ("madrid-1", "madrid", 40.4168, -3.7038, "127.0.0.4"),
];

const ONLINE_DEADLINE: Duration = Duration::from_secs(60);
const STOP_GRACE: Duration = Duration::from_secs(5);

pub async fn run(api_listen: SocketAddr) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("edge-demo-{}", std::process::id()));
    let result = run_in(&dir, api_listen).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn run_in(dir: &Path, api_listen: SocketAddr) -> anyhow::Result<()> {
    let node_bin = find_binary("edge-node", "node-daemon").await?;
    let hello_bin = find_binary("edge-hello", "edge-hello").await?;
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").context("binding QUIC")?;
    let tcp = match tokio::net::TcpListener::bind(api_listen).await {
        Ok(l) => l,
        Err(_) => tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the API")?,
    };
    let orch = Orchestrator::start(&dir.join("orchestrator"), udp, tcp)
        .await
        .context("starting the orchestrator")?;
    let (token, _) = orch
        .registry
        .create_token(600, NODES.len() as u32, "demo".into())
        .context("creating a join token")?;

    let mut children = Vec::new();
    for (name, site, lat, lon, local) in NODES {
        let node_dir = dir.join("nodes").join(name);
        std::fs::create_dir_all(&node_dir)?;
        let config = format!(
            "version = 1\nname = \"{name}\"\ndata_dir = \"{data}\"\n\
             labels = {{ site = \"{site}\", demo = \"true\" }}\n\
             location = {{ lat = {lat}, lon = {lon} }}\nstatus_interval_secs = 5\n\
             [orchestrator]\naddress = \"{quic}\"\nlocal_address = \"{local}\"\n\
             [join]\ntoken = \"{token}\"\nca_hash = \"{ca}\"\n",
            data = node_dir.join("data").display(),
            quic = orch.quic_addr,
            ca = orch.registry.ca().hash(),
        );
        let config_path = node_dir.join("node.toml");
        std::fs::write(&config_path, config)?;
        let log = std::fs::File::create(node_dir.join("node.log"))?;
        let child = Command::new(&node_bin)
            .arg("run")
            .arg("--config")
            .arg(&config_path)
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", node_bin.display()))?;
        children.push((name, child));
    }

    let started = Instant::now();
    loop {
        let (online, _) = orch.registry.fleet().counts();
        if online == NODES.len() {
            break;
        }
        for (name, child) in children.iter_mut() {
            let name = *name;
            if let Some(status) = child.try_wait()? {
                bail!(
                    "node {name} exited ({status}); see {}",
                    dir.join("nodes").join(name).join("node.log").display()
                );
            }
        }
        if started.elapsed() > ONLINE_DEADLINE {
            bail!("nodes did not come online within {ONLINE_DEADLINE:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let online_ms = started.elapsed().as_millis();

    let deployed = Instant::now();
    let spec_path = deploy_hello(&orch, &hello_bin, dir).await?;
    loop {
        let running = orch
            .reports
            .of("hello")
            .iter()
            .filter(|(_, r)| r.report.state == edge_proto::WorkloadState::Running)
            .count();
        if running == NODES.len() {
            break;
        }
        if deployed.elapsed() > ONLINE_DEADLINE {
            bail!(
                "the sample workload did not start within {ONLINE_DEADLINE:?}; see the node logs in {}",
                dir.join("nodes").display()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let urls: String = NODES
        .iter()
        .map(|(name, _, _, _, local)| {
            format!("\x20 curl http://{local}:{HELLO_PORT}/          # {name}\n")
        })
        .collect();

    let api = format!("http://{}", orch.api_addr);
    println!(
        "\nThe demo fleet is up: an orchestrator and {n} nodes, online in {ms} ms.\n\n\
         API:          {api}\n\
         Admin token:  {token}\n\
         Node logs:    {logs}\n\n\
         The sample workload `hello` (edge-hello, spec in {spec}) runs on every node,\n\
         started {hello_ms} ms after the deploy:\n\
         {urls}\n\
         Try, in another terminal:\n\
         \x20 export EDGE_API={api}\n\
         \x20 export EDGE_TOKEN={token}\n\
         \x20 edgectl nodes                      # the three nodes, where they are, their status\n\
         \x20 edgectl node berlin-1              # one node in detail\n\
         \x20 edgectl workloads hello            # where it runs, its state, restarts, pid\n\
         \x20 edgectl logs hello --follow        # its log, streamed from the nodes\n\
         \x20 edgectl drain paris-1              # move work off a node\n\
         \x20 edgectl token create --ttl 1h      # a join token for a node of your own\n\
         \x20 curl -H \"Authorization: Bearer $EDGE_TOKEN\" $EDGE_API/v1/nodes\n\
         \x20 curl $EDGE_API/metrics\n\n\
         (edgectl is in target/debug/ when run from the source tree: cargo run --bin edgectl -- nodes)\n\
         Press Ctrl-C to stop everything.",
        n = NODES.len(),
        ms = online_ms,
        spec = spec_path.display(),
        hello_ms = deployed.elapsed().as_millis(),
        token = orch.admin_token,
        logs = dir.join("nodes").display(),
    );

    shutdown_signal().await;
    println!("stopping the nodes and the orchestrator...");
    for (_, child) in &mut children {
        stop_child(child).await;
    }
    orch.shutdown().await;
    Ok(())
}

/// SIGTERM, then SIGKILL if the process has not exited within the grace period.
pub async fn stop_child(child: &mut Child) {
    if let Some(pid) = child.id() {
        let pid = nix::unistd::Pid::from_raw(pid as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    }
    if tokio::time::timeout(STOP_GRACE, child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

/// The port the sample service listens on, on each node's own address.
const HELLO_PORT: u16 = 8080;

/// Pushes `edge-hello` into the artifact store and deploys it on every demo node. Returns
/// where the spec was written, for the operator to change and deploy again.
async fn deploy_hello(
    orch: &Orchestrator,
    hello_bin: &Path,
    dir: &Path,
) -> anyhow::Result<PathBuf> {
    let store = &orch.artifacts;
    let file = tokio::fs::File::open(hello_bin)
        .await
        .with_context(|| format!("reading {}", hello_bin.display()))?;
    let stored = store.put(file, None).await.context("storing edge-hello")?;
    let spec = format!(
        "# The demo's sample service; change it and run `edgectl deploy -f` on this file.\n\
         name = \"hello\"\nversion = \"1.0.0\"\nartifact = \"{digest}\"\n\
         args = [\"--port\", \"{HELLO_PORT}\"]\nenv = {{ GREETING = \"hello\" }}\n\
         placement = \"per-node\"\n\
         [resources]\ncpu_millis = 100\nmemory_bytes = 16777216\n\
         [requirements]\nlabels = {{ demo = \"true\" }}\n",
        digest = orchestrator_core::digest::format_digest(&stored.digest),
    );
    let path = dir.join("hello.toml");
    std::fs::write(&path, &spec)?;
    let spec =
        orchestrator_core::workload::WorkloadSpec::from_toml(&spec).context("the demo spec")?;
    let (placed, committed) = orch
        .deployments
        .deploy(|d| match d.apply(spec, stored.size) {
            Ok((_, effects)) => (Ok(()), effects),
            Err(e) => (Err(e), Vec::new()),
        });
    placed.context("deploying the sample")?;
    committed.wait().await.context("storing the deployment")?;
    Ok(path)
}

/// A workspace binary beside this executable; from a source tree (`cargo run`), build it
/// first.
async fn find_binary(name: &str, package: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let beside = exe.with_file_name(name);
    if let Ok(cargo) = std::env::var("CARGO") {
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "-p", package, "--bin", name]);
        if !cfg!(debug_assertions) {
            cmd.arg("--release");
        }
        let status = cmd
            .status()
            .await
            .with_context(|| format!("building {name}"))?;
        if !status.success() {
            bail!("building {name} failed");
        }
    }
    if beside.exists() {
        Ok(beside)
    } else {
        bail!(
            "{name} not found at {}; build it with `cargo build -p {package}`",
            beside.display()
        )
    }
}

/// Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
