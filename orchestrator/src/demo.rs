//! `edge-orchestrator demo`: an orchestrator and three real `edge-node` processes on loopback
//! addresses, each somewhere else in Europe, enrolled with a fresh token, running the
//! `edge-hello` sample service on every node.
//!
//! From a source tree (`cargo demo`) it first builds `edge-node`, `edge-hello` and `edgectl`,
//! showing cargo's own progress; `--node-bin` and `--hello-bin` name binaries built already.
//!
//! Everything lives in one work directory that is removed on the way out, whichever way that
//! is: Ctrl-C, SIGTERM, SIGHUP, its stdout closing (`cargo demo | tee demo.log` when `tee` is
//! gone), an error, or a panic. Before the directory goes, the nodes are stopped (SIGTERM,
//! which stops their workloads, then SIGKILL after a grace period) and then the orchestrator,
//! leaving no process behind. Its output never panics on a reader that went away: every line
//! goes through [`say`], which drops what cannot be written.

use crate::app::Orchestrator;
use anyhow::{Context, bail};
use std::fmt;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::Interest;
use tokio::net::unix::pipe;
use tokio::process::{Child, Command};
use tokio::signal::unix::{Signal, SignalKind, signal};

/// (name, site label, lat, lon, local address)
const NODES: [(&str, &str, f64, f64, &str); 3] = [
    ("berlin-1", "berlin", 52.5200, 13.4050, "127.0.0.2"),
    ("paris-1", "paris", 48.8566, 2.3522, "127.0.0.3"),
    ("madrid-1", "madrid", 40.4168, -3.7038, "127.0.0.4"),
];

const ONLINE_DEADLINE: Duration = Duration::from_secs(60);
const STOP_GRACE: Duration = Duration::from_secs(5);

/// The port the sample service listens on, on each node's own address, unless told otherwise.
pub const DEFAULT_HELLO_PORT: u16 = 8080;
/// The port each node's proxy listens on, on the node's own address, unless told otherwise.
pub const DEFAULT_PROXY_PORT: u16 = 8000;

/// What `edge-orchestrator demo` was asked for.
#[derive(Debug, Clone)]
pub struct Options {
    /// The operator API address; a free port on 127.0.0.1 if this one is taken.
    pub api_listen: SocketAddr,
    /// Where everything lives; a new directory, removed on exit. `None`: one under the
    /// system's temporary directory.
    pub work_dir: Option<PathBuf>,
    /// The `edge-node` binary to run; `None`: build it (from a source tree) or take the one
    /// beside this executable.
    pub node_bin: Option<PathBuf>,
    /// The `edge-hello` binary to deploy; found like `node_bin`.
    pub hello_bin: Option<PathBuf>,
    /// The port `edge-hello` listens on, on each node's address.
    pub hello_port: u16,
    /// The port each node's proxy listens on, on its address.
    pub proxy_port: u16,
}

pub async fn run(options: Options) -> anyhow::Result<()> {
    // Listening from the start: a Ctrl-C while cargo builds or the nodes enroll still goes
    // through the cleanup below instead of killing the process where it stands.
    let mut stop = StopRequest::listen()?;
    let Some(bins) = binaries(&options, &mut stop).await? else {
        return Ok(());
    };
    // Declared before the demo, so dropped after it: the processes are gone before their
    // directory is, even when a panic unwinds through here.
    let work = WorkDir::create(options.work_dir.clone())?;
    let mut demo = Demo {
        dir: work.0.clone(),
        orch: None,
        nodes: Vec::new(),
    };
    let started = tokio::select! {
        up = demo.start(&bins, options.api_listen, options.hello_port, options.proxy_port) => Some(up),
        why = stop.requested() => {
            say(format_args!("\n{why}: stopping the demo before it was up..."));
            None
        }
    };
    let result = match started {
        Some(Ok(banner)) => {
            say(banner);
            let why = stop.requested().await;
            say(format_args!(
                "\n{why}: stopping the nodes and the orchestrator..."
            ));
            Ok(())
        }
        Some(Err(e)) => Err(e),
        None => Ok(()),
    };
    demo.stop().await;
    drop(work);
    result
}

/// Why the demo stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopReason {
    Interrupt,
    Terminate,
    Hangup,
    StdoutClosed,
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Interrupt => "Ctrl-C",
            Self::Terminate => "SIGTERM",
            Self::Hangup => "SIGHUP",
            Self::StdoutClosed => "stdout closed",
        })
    }
}

/// What stops the demo: SIGINT, SIGTERM, SIGHUP, or nobody left to read its stdout.
struct StopRequest {
    interrupt: Signal,
    terminate: Signal,
    hangup: Signal,
    /// Stdout when it is a pipe. A terminal that goes away sends SIGHUP; a file never does.
    stdout: Option<pipe::Sender>,
}

impl StopRequest {
    fn listen() -> anyhow::Result<Self> {
        let listen = |kind| signal(kind).context("listening for signals");
        Ok(Self {
            interrupt: listen(SignalKind::interrupt())?,
            terminate: listen(SignalKind::terminate())?,
            hangup: listen(SignalKind::hangup())?,
            stdout: stdout_pipe(),
        })
    }

    /// Waits for the next reason to stop. Cancel-safe.
    async fn requested(&mut self) -> StopReason {
        let Self {
            interrupt,
            terminate,
            hangup,
            stdout,
        } = self;
        let stdout_closed = async {
            match stdout {
                Some(pipe) => readers_gone(pipe).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = interrupt.recv() => StopReason::Interrupt,
            _ = terminate.recv() => StopReason::Terminate,
            _ = hangup.recv() => StopReason::Hangup,
            () = stdout_closed => StopReason::StdoutClosed,
        }
    }
}

/// A handle on the pipe stdout writes to, to watch it; `None` if stdout is no pipe.
fn stdout_pipe() -> Option<pipe::Sender> {
    use std::os::fd::AsFd;
    use std::os::unix::fs::FileTypeExt;
    let file = std::fs::File::from(std::io::stdout().as_fd().try_clone_to_owned().ok()?);
    if !file.metadata().ok()?.file_type().is_fifo() {
        return None;
    }
    // Unchecked: the checked constructors make the pipe non-blocking, and that flag belongs
    // to the pipe, shared with stdout's own writes and cargo's. Nothing is written through
    // this handle; it only waits for readiness.
    pipe::Sender::from_file_unchecked(file).ok()
}

/// Returns once the pipe has no reader left: its write end then reports an error.
async fn readers_gone(pipe: &pipe::Sender) {
    loop {
        match pipe.ready(Interest::WRITABLE).await {
            Ok(ready) if ready.is_write_closed() || ready.is_error() => return,
            // Room to write, which is not news: forget it and wait for the next change.
            Ok(_) => {
                let _ = pipe.try_io(|| Err::<(), _>(std::io::ErrorKind::WouldBlock.into()));
            }
            Err(_) => std::future::pending().await,
        }
    }
}

/// Writes `text` and a newline to stdout. A reader that went away (`tee` stopped by the same
/// Ctrl-C) costs the line, never a panic: [`StopRequest`] sees the pipe close and the demo
/// stops and cleans up.
fn say(text: impl fmt::Display) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

/// The demo's directory, removed when this is dropped.
struct WorkDir(PathBuf);

impl WorkDir {
    fn create(chosen: Option<PathBuf>) -> anyhow::Result<Self> {
        let path = match chosen {
            Some(path) => {
                // Only a directory the demo made is one it may remove.
                if path.exists() {
                    bail!(
                        "--work-dir {} exists; the demo removes its work dir on exit, so it \
                         takes only one it creates",
                        path.display()
                    );
                }
                path
            }
            None => {
                let path = std::env::temp_dir().join(format!("edge-demo-{}", std::process::id()));
                // A leftover of an earlier demo that had this process id and was killed.
                let _ = std::fs::remove_dir_all(&path);
                path
            }
        };
        std::fs::create_dir(&path)
            .with_context(|| format!("creating the work dir {}", path.display()))?;
        Ok(Self(path))
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What the demo runs.
struct Demo {
    dir: PathBuf,
    orch: Option<Orchestrator>,
    /// Killed (SIGKILL) on drop as a last resort; [`Demo::stop`] stops them gracefully.
    nodes: Vec<(&'static str, Child)>,
}

impl Demo {
    /// Starts the orchestrator and the nodes, deploys the sample, and returns what to tell
    /// the operator.
    async fn start(
        &mut self,
        bins: &Binaries,
        api_listen: SocketAddr,
        hello_port: u16,
        proxy_port: u16,
    ) -> anyhow::Result<String> {
        let dir = self.dir.clone();
        say(format_args!(
            "starting an orchestrator and {} nodes in {}",
            NODES.len(),
            dir.display()
        ));
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").context("binding QUIC")?;
        let tcp = match tokio::net::TcpListener::bind(api_listen).await {
            Ok(l) => l,
            Err(_) => tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .context("binding the API")?,
        };
        let orch = self.orch.insert(
            Orchestrator::start(&dir.join("orchestrator"), udp, tcp)
                .await
                .context("starting the orchestrator")?,
        );
        let (token, _) = orch
            .registry
            .create_token(600, NODES.len() as u32, "demo".into())
            .context("creating a join token")?;

        for (name, site, lat, lon, local) in NODES {
            let node_dir = dir.join("nodes").join(name);
            std::fs::create_dir_all(&node_dir)?;
            let config = format!(
                "version = 1\nname = \"{name}\"\ndata_dir = \"{data}\"\n\
                 labels = {{ site = \"{site}\", demo = \"true\" }}\n\
                 location = {{ lat = {lat}, lon = {lon} }}\nstatus_interval_secs = 5\n\
                 [orchestrator]\naddress = \"{quic}\"\nlocal_address = \"{local}\"\n\
                 [join]\ntoken = \"{token}\"\nca_hash = \"{ca}\"\n\
                 [proxy]\nlisten = \"{local}:{proxy_port}\"\n\
                 [proxy.cache]\nmemory_bytes = 4194304\ndisk_bytes = 16777216\n",
                data = node_dir.join("data").display(),
                quic = orch.quic_addr,
                ca = orch.registry.ca().hash(),
            );
            let config_path = node_dir.join("node.toml");
            std::fs::write(&config_path, config)?;
            let log = std::fs::File::create(node_dir.join("node.log"))?;
            let child = Command::new(&bins.node)
                .arg("run")
                .arg("--config")
                .arg(&config_path)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("starting {}", bins.node.display()))?;
            self.nodes.push((name, child));
        }

        say("waiting for the nodes to enroll and come online...");
        let started = Instant::now();
        loop {
            let (online, _) = orch.registry.fleet().counts();
            if online == NODES.len() {
                break;
            }
            for (name, child) in self.nodes.iter_mut() {
                let name = *name;
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "node {name} exited ({status}); its log ends:\n{}",
                        log_tail(&dir, name)
                    );
                }
            }
            if started.elapsed() > ONLINE_DEADLINE {
                bail!(
                    "nodes did not come online within {ONLINE_DEADLINE:?}; their logs end:\n{}",
                    log_tails(&dir)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let online_ms = started.elapsed().as_millis();

        say("deploying the sample service edge-hello on every node...");
        let deployed = Instant::now();
        let spec_path = deploy_hello(orch, &bins.hello, &dir, hello_port).await?;
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
                    "the sample workload did not start within {ONLINE_DEADLINE:?}; the node logs end:\n{}",
                    log_tails(&dir)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let urls: String = NODES
            .iter()
            .map(|(name, _, _, _, local)| {
                format!(
                    "\x20 curl http://{local}:{proxy_port}/          # {name}, through its proxy\n"
                )
            })
            .collect();
        let edgectl = match &bins.edgectl {
            Some(path) => format!(
                "\x20 export PATH=\"{}:$PATH\"   # edgectl\n",
                path.parent().unwrap_or(Path::new(".")).display()
            ),
            None => "\x20 alias edgectl='cargo run -q -p orchestrator --bin edgectl --'\n".into(),
        };

        let api = format!("http://{}", orch.api_addr);
        Ok(format!(
            "\nThe demo fleet is up: an orchestrator and {n} nodes, online in {ms} ms.\n\n\
             API:          {api}\n\
             Admin token:  {token}\n\
             Node logs:    {logs}\n\
             Work dir:     {dir} (removed on exit)\n\n\
             The sample workload `hello` (edge-hello, spec in {spec}) runs on every node,\n\
             started {hello_ms} ms after the deploy, and each node's proxy routes to it\n\
             (its own port is {hello_port}; `curl -i` shows the proxy's Cache-Status):\n\
             {urls}\n\
             Try, in another terminal:\n\
             \x20 export EDGE_API={api}\n\
             \x20 export EDGE_TOKEN={token}\n\
             {edgectl}\
             \x20 edgectl nodes                      # the three nodes, where they are, their status\n\
             \x20 edgectl node berlin-1              # one node in detail\n\
             \x20 edgectl workloads hello            # where it runs, its state, restarts, pid\n\
             \x20 edgectl logs hello --follow        # its log, streamed from the nodes\n\
             \x20 edgectl drain paris-1              # move work off a node\n\
             \x20 edgectl token create --ttl 1h      # a join token for a node of your own\n\
             \x20 curl -H \"Authorization: Bearer $EDGE_TOKEN\" $EDGE_API/v1/nodes\n\
             \x20 curl $EDGE_API/metrics\n\n\
             Press Ctrl-C to stop everything.",
            n = NODES.len(),
            ms = online_ms,
            spec = spec_path.display(),
            hello_ms = deployed.elapsed().as_millis(),
            token = orch.admin_token,
            logs = dir.join("nodes").display(),
            dir = dir.display(),
        ))
    }

    /// Stops the nodes (and so their workloads), all at once, then the orchestrator.
    async fn stop(&mut self) {
        for (_, child) in &self.nodes {
            terminate(child);
        }
        let deadline = tokio::time::Instant::now() + STOP_GRACE;
        for (_, child) in &mut self.nodes {
            if tokio::time::timeout_at(deadline, child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
        if let Some(orch) = self.orch.take() {
            orch.shutdown().await;
        }
    }
}

/// The last lines of node `name`'s log. Errors quote them: the log goes with the work dir.
fn log_tail(dir: &Path, name: &str) -> String {
    const LINES: usize = 10;
    let log =
        std::fs::read_to_string(dir.join("nodes").join(name).join("node.log")).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(LINES)..].join("\n")
}

/// [`log_tail`] of every node, each under its name.
fn log_tails(dir: &Path) -> String {
    NODES
        .iter()
        .map(|(name, ..)| format!("--- {name}\n{}\n", log_tail(dir, name)))
        .collect()
}

/// SIGTERM, then SIGKILL if the process has not exited within the grace period.
pub async fn stop_child(child: &mut Child) {
    terminate(child);
    if tokio::time::timeout(STOP_GRACE, child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

/// Sends SIGTERM to `child`, unless it has been waited for already.
fn terminate(child: &Child) {
    if let Some(pid) = child.id().and_then(|pid| i32::try_from(pid).ok()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
}

/// Pushes `edge-hello` into the artifact store and deploys it on every demo node. Returns
/// where the spec was written, for the operator to change and deploy again.
async fn deploy_hello(
    orch: &Orchestrator,
    hello_bin: &Path,
    dir: &Path,
    port: u16,
) -> anyhow::Result<PathBuf> {
    let store = &orch.artifacts;
    let file = tokio::fs::File::open(hello_bin)
        .await
        .with_context(|| format!("reading {}", hello_bin.display()))?;
    let stored = store.put(file, None).await.context("storing edge-hello")?;
    let spec = format!(
        "# The demo's sample service; change it and run `edgectl deploy -f` on this file.\n\
         name = \"hello\"\nversion = \"1.0.0\"\nartifact = \"{digest}\"\n\
         args = [\"--port\", \"{port}\"]\nenv = {{ GREETING = \"hello\" }}\n\
         placement = \"per-node\"\n\
         [resources]\ncpu_millis = 100\nmemory_bytes = 16777216\n\
         [requirements]\nlabels = {{ demo = \"true\" }}\n\
         # Each node's proxy sends every request to the instance on its node.\n\
         [[expose]]\nport = {port}\npath_prefix = \"/\"\n",
        digest = edge_proto::digest::to_prefixed(&stored.digest),
    );
    let path = dir.join("hello.toml");
    std::fs::write(&path, &spec)?;
    let spec =
        orchestrator_core::workload::WorkloadSpec::from_toml(&spec).context("the demo spec")?;
    orch.deployments
        .apply(spec, stored.size, &orch.metrics)
        .await
        .context("deploying the sample")?;
    Ok(path)
}

/// The binaries the demo runs, and `edgectl` for the operator if there is one.
#[derive(Debug)]
struct Binaries {
    node: PathBuf,
    hello: PathBuf,
    edgectl: Option<PathBuf>,
}

/// The binaries named in `options`, else workspace binaries beside this executable. From a
/// source tree (`cargo run`, which sets `CARGO`) those are built first, in view: the first
/// build of `edge-node` takes minutes. `None` if a stop was requested meanwhile.
async fn binaries(options: &Options, stop: &mut StopRequest) -> anyhow::Result<Option<Binaries>> {
    let exe = std::env::current_exe()?;
    let cargo = std::env::var_os("CARGO");
    let mut wanted = Vec::new();
    if options.node_bin.is_none() {
        wanted.push(("edge-node", "node-daemon"));
    }
    if options.hello_bin.is_none() {
        wanted.push(("edge-hello", "edge-hello"));
    }
    wanted.push(("edgectl", "orchestrator"));
    if let Some(cargo) = cargo {
        for (name, package) in wanted {
            // One package at a time, as `cargo build -p PACKAGE` would: building them
            // together would unify their dependencies' features into builds of their own.
            say(format_args!(
                "building {name} (cargo build -p {package} --bin {name}; the first build takes a few minutes)..."
            ));
            let mut cmd = Command::new(&cargo);
            cmd.args(["build", "-p", package, "--bin", name]);
            if !cfg!(debug_assertions) {
                cmd.arg("--release");
            }
            // Cargo's progress goes to stderr, which it shares with us.
            let mut child = cmd
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("building {name}"))?;
            let status = tokio::select! {
                status = child.wait() => status.with_context(|| format!("building {name}"))?,
                why = stop.requested() => {
                    say(format_args!("\n{why}: stopping the build"));
                    stop_child(&mut child).await;
                    return Ok(None);
                }
            };
            if !status.success() {
                bail!("building {name} failed ({status})");
            }
        }
    }
    let beside = |name: &str, package: &str| {
        let path = exe.with_file_name(name);
        if path.exists() {
            Ok(path)
        } else {
            bail!(
                "{name} not found at {}; build it with `cargo build -p {package} --bin {name}`",
                path.display()
            )
        }
    };
    Ok(Some(Binaries {
        node: match &options.node_bin {
            Some(path) => path.clone(),
            None => beside("edge-node", "node-daemon")?,
        },
        hello: match &options.hello_bin {
            Some(path) => path.clone(),
            None => beside("edge-hello", "edge-hello")?,
        },
        edgectl: beside("edgectl", "orchestrator").ok(),
    }))
}
