//! `container-deploy`: what running a workload as a container (`driver = "oci"`, run by
//! runc) costs next to running the same program as a plain executable, in one run:
//!
//! 1. **deploy -> running**: busybox's httpd as a container (an image of a base layer, busybox
//!    and `/etc/passwd`, and a site layer) against the same busybox binary as an exec workload,
//!    from `POST /v1/workloads` to the orchestrator holding a `Running` report with a pid, and
//!    to the first `200` from the port. "cached": the image or artifact is on the node (a warm
//!    workload of each keeps it there); "uncached": every sample has a digest the node has
//!    never seen (the container: a base layer with a line of its own in `/etc/motd` and a new
//!    site layer, so everything is fetched and unpacked; the exec workload: a new artifact of
//!    the busybox binary's size). Container and exec samples alternate, and which goes first
//!    alternates too.
//! 2. **memory per instance**: `--instances` containers running, against as many exec
//!    workloads: the node daemon's `VmRSS` grown per instance, the runtime's resident
//!    `runc run` per container (`VmRSS` and `Pss`), and the container's own processes beside
//!    the exec workload's process.
//! 3. **bytes fetched for a second image on the same base**: image A, then image B = A's base
//!    and another site layer; the node's `edge_node_artifact_fetched_bytes_total` grown for B
//!    (and its `artifact fetched` log lines), beside B's blobs summed: what a node without
//!    layer sharing would fetch.
//! 4. **unpack time per MiB**: `edge_oci::unpack` of a generated gzipped layer (a few big
//!    files and many small ones) against `tar -xzf` of the same file, alternating.
//!
//! The exec anchor cannot be the busybox binary itself: the node execs an artifact under its
//! digest file name, and busybox runs an applet named by argv[0] or, when argv[0] is
//! `busybox*`, by argv[1]; under a digest it answers "applet not found". So the exec artifact
//! is `exec /bin/busybox "$@"` padded to the busybox binary's size: the same bytes cross the
//! link, the same binary serves, and one `sh` exec (about a millisecond) is added to the
//! anchor's side.
//!
//! The orchestrator runs in this process (as `deploy-latency` has it); the node daemon runs
//! in a child process (this binary again, with `--node`: `daemon::run_with` on a
//! current-thread runtime and the status endpoint, as `edge-node run` has them), so that its
//! memory is its own. QUIC on loopback, cgroups (v1 here) and runc as the node finds them.
//!
//! A benchmark: it prints figures and never fails on one.

use anyhow::{Context, anyhow, bail};
use clap::Parser;
use edge_benches::api::Api;
use edge_benches::stats::{self, percentile};
use edge_benches::{in_process, pause};
use edge_oci::build::{LayerTar, PlatformImage};
use edge_oci::{Compression, Digest, LayerLimits, UnpackOptions};
use edge_proto::WorkloadState;
use edge_proto::digest::to_prefixed;
use edge_tests::images::{busybox_layer, httpd_image};
use node_daemon::config::Config;
use orchestrator::app::Orchestrator;
use orchestrator::artifacts::ArtifactStore;
use serde_json::json;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;

/// How long to wait for anything that takes a second when all is well; a bound on a hang.
const WAIT: Duration = Duration::from_secs(90);
/// More than a workload's stop grace (10 s, not settable through the API): what one delete
/// may take.
const STOP_GRACE_BOUND: Duration = Duration::from_secs(12);
/// The node's name, and the prefix of its cgroups.
const NODE: &str = "cbench";
/// Memory per instance is read once the node's `VmRSS` reads the same this many times in a
/// row, `SETTLE_POLL` apart, or after `SETTLE_MAX`.
const SETTLE_SAME: u32 = 5;
const SETTLE_POLL: Duration = Duration::from_millis(200);
const SETTLE_MAX: Duration = Duration::from_secs(8);
/// A Pi Zero's memory, to put the per-container figure in proportion.
const PI_ZERO_MIB: f64 = 512.0;

#[derive(Debug, Parser)]
#[command(
    name = "container-deploy",
    about = "Containers (runc) against the same binary as an exec workload: deploy, memory, \
             shared layers, unpack"
)]
struct Args {
    /// Samples of each subject with the image or artifact cached on the node.
    #[arg(long, default_value_t = 20)]
    samples: usize,
    /// Samples of each subject with a new image or artifact each time.
    #[arg(long, default_value_t = 10)]
    uncached_samples: usize,
    /// Untimed samples of each subject before each deploy case.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Instances running at once for the memory figures.
    #[arg(long, default_value_t = 10)]
    instances: usize,
    /// Rounds of the memory figures (each round: both subjects, the order alternating).
    #[arg(long, default_value_t = 2)]
    memory_rounds: usize,
    /// Size of the generated layer to unpack, MiB of tar stream.
    #[arg(long, default_value_t = 64)]
    unpack_mib: usize,
    /// Rounds of the unpack figure (each round: both subjects, the order alternating).
    #[arg(long, default_value_t = 5)]
    unpack_rounds: usize,
    /// The static busybox put into the image and run by the exec workload.
    #[arg(long, default_value = "/bin/busybox")]
    busybox: PathBuf,
    /// The OCI runtime the node is given (`[containers] runtime`).
    #[arg(long, default_value = "/usr/sbin/runc")]
    runtime: PathBuf,
    /// How often to look for the report and the port, in microseconds.
    #[arg(long, default_value_t = 500)]
    poll_us: u64,
    /// Parts to leave out: deploy, memory, shared, unpack (repeat or comma-separate).
    #[arg(long, value_delimiter = ',')]
    skip: Vec<String>,
    /// Internal: run the node daemon with this config in this process.
    #[arg(long, hide = true)]
    node: Option<PathBuf>,
    /// Internal: the node's status endpoint (`/metrics`).
    #[arg(long, hide = true)]
    status: Option<SocketAddr>,
}

// ---------------------------------------------------------------------------------------
// The node daemon in a child process.

/// `--node CONFIG --status ADDR`: the daemon as `edge-node run` runs it (a current-thread
/// runtime, the status endpoint beside it), until SIGTERM.
fn node_main(config: &Path, status: SocketAddr) -> anyhow::Result<()> {
    edge_shell::logging::init();
    let text = std::fs::read_to_string(config).context("reading the node config")?;
    let config = Config::from_toml(&text).context("the node config")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let board = node_daemon::status::StatusBoard::new();
        let listener = tokio::net::TcpListener::bind(status).await?;
        tokio::spawn(node_daemon::status::serve(listener, board.clone()));
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        node_daemon::daemon::run_with(config, board, async move {
            term.recv().await;
        })
        .await?;
        anyhow::Ok(())
    })
}

/// The node daemon's process, stopped with SIGTERM (and waited for) when dropped.
struct NodeProcess {
    child: Child,
    status: SocketAddr,
    log: PathBuf,
    agent: ureq::Agent,
}

impl NodeProcess {
    fn spawn(dir: &Path, config: &str) -> anyhow::Result<Self> {
        let path = dir.join("node.toml");
        std::fs::write(&path, config)?;
        let status = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let log = dir.join("node.log");
        let child = std::process::Command::new(std::env::current_exe()?)
            .arg("--node")
            .arg(&path)
            .arg("--status")
            .arg(status.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting the node process")?;
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        Ok(Self {
            child,
            status,
            log,
            agent,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `edge_node_artifact_fetched_bytes_total` now.
    fn fetched_bytes(&self) -> anyhow::Result<u64> {
        let text = self
            .agent
            .get(format!("http://{}/metrics", self.status))
            .call()?
            .body_mut()
            .read_to_string()?;
        text.lines()
            .find_map(|l| l.strip_prefix("edge_node_artifact_fetched_bytes_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(|v| v as u64)
            .ok_or_else(|| anyhow!("no edge_node_artifact_fetched_bytes_total in /metrics"))
    }

    /// The bytes of the node's `artifact fetched` lines for `workload`.
    fn logged_fetches(&self, workload: &str) -> u64 {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let named = [
            format!("workload={workload}"),
            format!("workload=\"{workload}\""),
        ];
        text.lines()
            .filter(|l| l.contains("artifact fetched"))
            .filter(|l| l.split_whitespace().any(|t| named.iter().any(|n| n == t)))
            .filter_map(|l| {
                l.split_whitespace()
                    .find_map(|t| t.strip_prefix("bytes="))?
                    .parse::<u64>()
                    .ok()
            })
            .sum()
    }

    fn stop(&mut self) -> anyhow::Result<()> {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id())?);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let t0 = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    bail!("the node process ended with {status}; see its log");
                }
                return Ok(());
            }
            if t0.elapsed() > WAIT {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!("the node process did not stop within {WAIT:?}");
            }
            pause(Duration::from_millis(20));
        }
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.stop();
        }
    }
}

fn node_config(dir: &Path, orch: &Orchestrator, token: &str, runtime: &Path) -> String {
    // Status every 10 s, the production default, so that status traffic does not add noise.
    format!(
        "version = 1\nname = \"{NODE}\"\ndata_dir = \"{}\"\nstatus_interval_secs = 10\n\
         [orchestrator]\naddress = \"{}\"\n[join]\ntoken = \"{token}\"\nca_hash = \"{}\"\n\
         [containers]\nruntime = \"{}\"\n",
        dir.display(),
        orch.quic_addr,
        orch.registry.ca().hash(),
        runtime.display()
    )
}

/// Removes, when dropped, the node's (empty) parent control groups, which the daemon leaves
/// behind when it stops.
struct NodeCgroups;

impl Drop for NodeCgroups {
    fn drop(&mut self) {
        let wanted = format!("edge-node-{NODE}");
        for hierarchy in ["memory", "cpu", "cpu,cpuacct", "pids", "unified", ""] {
            let _ = std::fs::remove_dir(Path::new("/sys/fs/cgroup").join(hierarchy).join(&wanted));
        }
    }
}

// ---------------------------------------------------------------------------------------
// What is deployed.

/// The two ways of running busybox's httpd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Container,
    Exec,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Container => "container",
            Kind::Exec => "exec",
        }
    }
}

/// The base layer: busybox, the accounts, a line of its own in `/etc/motd` (so that a new
/// `marker` is a new layer), and the applets' links.
fn base_layer(busybox: &[u8], marker: &str) -> Vec<u8> {
    busybox_layer(busybox, &["sh", "httpd", "sleep", "cat"], Some(marker))
}

fn site_layer(text: &str) -> Vec<u8> {
    LayerTar::new()
        .dir("www/", 0o755)
        .file("www/index.html", 0o644, text.as_bytes())
        .finish()
}

fn image(layers: Vec<Vec<u8>>) -> PlatformImage {
    httpd_image(layers)
}

fn image_bytes(image: &PlatformImage) -> u64 {
    image.blobs().iter().map(|b| b.bytes.len() as u64).sum()
}

/// The exec workload's artifact: `exec /bin/busybox "$@"`, padded to `bytes` with a line of
/// its own (`marker`), so that it crosses the link as the busybox binary would.
fn exec_artifact(busybox: &Path, bytes: usize, marker: &str) -> Vec<u8> {
    let mut s = format!("#!/bin/sh\nexec {} \"$@\"\n# {marker}\n", busybox.display()).into_bytes();
    let line = b"# padding to the busybox binary's size: never read, sh exec'd on line 2 ...\n";
    while s.len() + line.len() <= bytes {
        s.extend_from_slice(line);
    }
    s.resize(bytes.max(s.len()), b'\n');
    s
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Whether `port` answers `GET /` with a 200.
fn http_ok(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if s.write_all(b"GET / HTTP/1.0\r\nHost: bench\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.") && &head[9..12] == b"200"
}

/// Whether anything listens on `port`.
fn listening(port: u16) -> bool {
    TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(1),
    )
    .is_ok()
}

/// Whether the process has exited (gone, or a zombie waiting for its parent).
fn gone(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
        s.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z")
    })
}

// ---------------------------------------------------------------------------------------
// The operator API.

/// Pushes `image` (`POST /v1/images`) and returns its digest.
fn push(api: &Api, image: &PlatformImage) -> anyhow::Result<String> {
    let (status, answer) = api.post("/v1/images", "application/x-tar", &image.archive())?;
    if status != 201 && status != 200 {
        bail!("POST /v1/images: {status} {answer}");
    }
    answer["digest"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("POST /v1/images answered no digest: {answer}"))
}

// ---------------------------------------------------------------------------------------
// Deploy samples.

/// One deploy sample.
#[derive(Debug, Clone, Copy)]
struct Sample {
    /// The orchestrator held a `Running` report with a pid.
    running: Duration,
    /// The port answered 200.
    http: Duration,
    /// A `Downloading` report was seen.
    downloaded: bool,
    /// The node's fetched-bytes counter grew by this much.
    fetched: u64,
}

/// A running instance: its name, reported pid and port.
#[derive(Debug, Clone)]
struct Instance {
    name: String,
    pid: u32,
    port: u16,
}

struct Bench {
    orch_rt: Runtime,
    orch: Orchestrator,
    store: Arc<ArtifactStore>,
    api: Api,
    node: NodeProcess,
    poll: Duration,
    busybox_path: PathBuf,
    busybox: Vec<u8>,
    www: PathBuf,
}

impl Bench {
    fn spec(&self, kind: Kind, name: &str, digest: &str, port: u16) -> anyhow::Result<Vec<u8>> {
        let listen = format!("127.0.0.1:{port}");
        let mut spec = json!({
            "name": name,
            "version": "1",
            "replicas": 1,
            "resources": {"cpu_millis": 100, "memory_bytes": 32 << 20},
        });
        match kind {
            Kind::Container => {
                spec["driver"] = json!("oci");
                spec["image"] = json!(digest);
                spec["args"] = json!(["httpd", "-f", "-p", listen, "-h", "/www"]);
            }
            Kind::Exec => {
                spec["artifact"] = json!(digest);
                spec["args"] = json!([
                    "httpd",
                    "-f",
                    "-p",
                    listen,
                    "-h",
                    self.www.display().to_string()
                ]);
            }
        }
        Ok(serde_json::to_vec(&spec)?)
    }

    fn put_artifact(&self, bytes: &[u8]) -> anyhow::Result<String> {
        let stored = self
            .orch_rt
            .block_on(self.store.put(bytes, None))
            .context("putting the artifact")?;
        Ok(to_prefixed(&stored.digest))
    }

    /// POSTs the workload without waiting for it.
    fn post_workload(&self, kind: Kind, name: &str, digest: &str, port: u16) -> anyhow::Result<()> {
        let body = self.spec(kind, name, digest, port)?;
        let (status, answer) = self.api.post("/v1/workloads", "application/json", &body)?;
        if status != 201 {
            bail!("POST /v1/workloads {name}: {status} {answer}");
        }
        Ok(())
    }

    /// Deploys one instance and times it to its `Running` report and to its first 200.
    fn deploy(&self, kind: Kind, name: &str, digest: &str) -> anyhow::Result<(Sample, Instance)> {
        let port = free_port()?;
        let body = self.spec(kind, name, digest, port)?;
        let before = self.node.fetched_bytes()?;
        let t0 = Instant::now();
        let api = &self.api;
        let body = &body;
        let (posted, waited) = std::thread::scope(|s| {
            let post = s.spawn(move || api.post("/v1/workloads", "application/json", body));
            let waited = self.wait_up(name, port, t0);
            (post.join(), waited)
        });
        let (status, answer) = posted
            .map_err(|_| anyhow!("the API call panicked"))?
            .context("POST /v1/workloads")?;
        if status != 201 {
            bail!("POST /v1/workloads {name}: {status} {answer}");
        }
        let (mut sample, pid) = waited?;
        sample.fetched = self.node.fetched_bytes()?.saturating_sub(before);
        Ok((
            sample,
            Instance {
                name: name.to_owned(),
                pid,
                port,
            },
        ))
    }

    /// Polls the orchestrator's reports and the port until both say the instance is up.
    fn wait_up(&self, name: &str, port: u16, t0: Instant) -> anyhow::Result<(Sample, u32)> {
        let mut running = None;
        let mut http = None;
        let mut downloaded = false;
        loop {
            if running.is_none() {
                for (_, r) in self.orch.reports.of(name) {
                    match (r.report.state, r.report.pid) {
                        (WorkloadState::Running, Some(pid)) => {
                            running = Some((t0.elapsed(), pid));
                        }
                        (WorkloadState::Downloading, _) => downloaded = true,
                        (WorkloadState::Failed, _) => {
                            bail!("{name} failed on the node: {}", r.report.message);
                        }
                        _ => {}
                    }
                }
            }
            if http.is_none() && http_ok(port) {
                http = Some(t0.elapsed());
            }
            if let (Some((running, pid)), Some(http)) = (running, http) {
                return Ok((
                    Sample {
                        running,
                        http,
                        downloaded,
                        fetched: 0,
                    },
                    pid,
                ));
            }
            if t0.elapsed() > WAIT {
                bail!(
                    "{name}: not up within {WAIT:?} (running report: {}, 200: {}); the node's \
                     log is {}",
                    running.is_some(),
                    http.is_some(),
                    self.node.log.display()
                );
            }
            pause(self.poll);
        }
    }

    /// Deletes instances and waits until their processes are gone and their ports closed.
    fn remove(&self, instances: &[Instance]) -> anyhow::Result<()> {
        for i in instances {
            let status = self.api.delete(&format!("/v1/workloads/{}", i.name))?;
            if status != 204 {
                bail!("DELETE /v1/workloads/{}: {status}", i.name);
            }
        }
        // The node stops one workload after another, and a container whose PID 1 ignores
        // SIGTERM (busybox httpd does: it installs no handler, and PID 1 of a namespace
        // drops signals it does not handle) is stopped by SIGKILL only after the 10 s
        // stop grace.
        let within = WAIT + STOP_GRACE_BOUND * u32::try_from(instances.len())?;
        let t0 = Instant::now();
        while !instances
            .iter()
            .all(|i| gone(i.pid) && !listening(i.port) && container_pids(&i.name).is_empty())
        {
            if t0.elapsed() > within {
                bail!("still running {within:?} after the delete");
            }
            pause(Duration::from_millis(2));
        }
        Ok(())
    }
}

/// The samples of one case, both subjects.
#[derive(Debug, Default)]
struct Case {
    container: Vec<Sample>,
    exec: Vec<Sample>,
}

fn run_case(
    b: &Bench,
    label: &str,
    samples: usize,
    warmup: usize,
    mut digest: impl FnMut(&Bench, Kind, usize) -> anyhow::Result<String>,
) -> anyhow::Result<Case> {
    let mut case = Case::default();
    for i in 0..warmup + samples {
        let order = if i % 2 == 0 {
            [Kind::Container, Kind::Exec]
        } else {
            [Kind::Exec, Kind::Container]
        };
        for kind in order {
            let d = digest(b, kind, i)?;
            let name = format!("{label}-{}-{i}", &kind.label()[..1]);
            let (sample, instance) = b.deploy(kind, &name, &d)?;
            b.remove(&[instance])?;
            if i >= warmup {
                match kind {
                    Kind::Container => case.container.push(sample),
                    Kind::Exec => case.exec.push(sample),
                }
            }
        }
    }
    Ok(case)
}

fn row(label: &str, samples: &[Duration]) -> String {
    format!(
        "{label:<42} p50 {:>9}  p90 {:>9}  max {:>9}",
        stats::ms(percentile(samples, 50.0)),
        stats::ms(percentile(samples, 90.0)),
        stats::ms(samples.iter().max().copied())
    )
}

fn ratio(a: Option<Duration>, b: Option<Duration>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if !b.is_zero() => format!("{:.2}x", a.as_secs_f64() / b.as_secs_f64()),
        _ => "-".into(),
    }
}

fn median_u64(v: &[u64]) -> u64 {
    let mut v = v.to_vec();
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

fn report_case(label: &str, key: &str, case: &Case) {
    let col = |s: &[Sample], f: fn(&Sample) -> Duration| s.iter().map(f).collect::<Vec<_>>();
    let (cr, ch) = (
        col(&case.container, |s| s.running),
        col(&case.container, |s| s.http),
    );
    let (er, eh) = (col(&case.exec, |s| s.running), col(&case.exec, |s| s.http));
    let downloads = |s: &[Sample]| s.iter().filter(|s| s.downloaded).count();
    let fetched = |s: &[Sample]| median_u64(&s.iter().map(|s| s.fetched).collect::<Vec<_>>());
    println!(
        "\n{label}: {} samples of each, alternating; Downloading seen: container {}, exec {}; \
         bytes fetched per sample (median): container {}, exec {}",
        case.container.len(),
        downloads(&case.container),
        downloads(&case.exec),
        fetched(&case.container),
        fetched(&case.exec)
    );
    println!("{}", row("container: Running report", &cr));
    println!("{}", row("exec:      Running report", &er));
    println!("{}", row("container: first 200 from the port", &ch));
    println!("{}", row("exec:      first 200 from the port", &eh));
    let p = |s: &[Duration], q| percentile(s, q);
    println!(
        "ratio container/exec  Running: p50 {}  p90 {};  first 200: p50 {}  p90 {}",
        ratio(p(&cr, 50.0), p(&er, 50.0)),
        ratio(p(&cr, 90.0), p(&er, 90.0)),
        ratio(p(&ch, 50.0), p(&eh, 50.0)),
        ratio(p(&ch, 90.0), p(&eh, 90.0)),
    );
    for (what, v) in [
        ("container_running", &cr),
        ("exec_running", &er),
        ("container_http", &ch),
        ("exec_http", &eh),
    ] {
        for q in [50.0, 90.0] {
            if let Some(d) = p(v, q) {
                println!(
                    "metric containers.{key}.{what}_p{q:.0}_ms {:.2}",
                    d.as_secs_f64() * 1e3
                );
            }
        }
    }
}

fn deploy_part(b: &Bench, args: &Args, dir: &Path) -> anyhow::Result<()> {
    let size = b.busybox.len();
    // Cached: one workload of each kind keeps the image's layers and the artifact on the
    // node through the case (a node drops what no workload of its own uses).
    let warm_image = image(vec![
        base_layer(&b.busybox, "cached\n"),
        site_layer("cached site\n"),
    ]);
    let image_digest = push(&b.api, &warm_image)?;
    let artifact_digest = b.put_artifact(&exec_artifact(&b.busybox_path, size, "cached"))?;
    let (_, warm_c) = b.deploy(Kind::Container, "warm-c", &image_digest)?;
    let (_, warm_x) = b.deploy(Kind::Exec, "warm-x", &artifact_digest)?;
    let cached = run_case(b, "cached", args.samples, args.warmup, |_, kind, _| {
        Ok(match kind {
            Kind::Container => image_digest.clone(),
            Kind::Exec => artifact_digest.clone(),
        })
    })?;
    b.remove(&[warm_c, warm_x])?;

    // Uncached: every sample a new base layer (a line of its own in /etc/motd), a new site
    // layer, a new artifact.
    let run = std::process::id();
    let uncached = run_case(
        b,
        "uncached",
        args.uncached_samples,
        args.warmup.min(1),
        |b, kind, i| match kind {
            Kind::Container => push(
                &b.api,
                &image(vec![
                    base_layer(&b.busybox, &format!("run {run} sample {i}\n")),
                    site_layer(&format!("site of sample {i}\n")),
                ]),
            ),
            Kind::Exec => b.put_artifact(&exec_artifact(
                &b.busybox_path,
                size,
                &format!("run {run} sample {i}"),
            )),
        },
    )?;
    println!(
        "\n== 1. deploy -> running: busybox httpd as a container (runc) vs as an exec workload"
    );
    println!(
        "image: base layer {} B gzipped (busybox {} B, /etc/passwd, /etc/group, /etc/motd, \
         applet links) + site layer {} B; whole image {} B; exec artifact {} B (the busybox \
         binary's size); temp dir on {}",
        warm_image.layers[0].bytes.len(),
        size,
        warm_image.layers[1].bytes.len(),
        image_bytes(&warm_image),
        size,
        edge_benches::procfs::filesystem_of(dir)
    );
    report_case("cached (image / artifact on the node)", "cached", &cached);
    report_case(
        "uncached (a new base and site layer / a new artifact each sample)",
        "uncached",
        &uncached,
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Memory.

/// `VmRSS` and `Pss` of a process, KiB; zeros once it is gone.
fn rss_pss(pid: u32) -> (u64, u64) {
    let rss = edge_benches::procfs::memory(Some(pid)).map_or(0, |m| m.rss_kib);
    let pss = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("Pss:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0);
    (rss, pss)
}

/// The processes in the container's own group, below the instance's (cgroup v1's memory
/// hierarchy here, the unified one on v2).
fn container_pids(workload: &str) -> Vec<u32> {
    let group = format!("edge-node-{NODE}/{workload}/container/cgroup.procs");
    ["/sys/fs/cgroup/memory", "/sys/fs/cgroup"]
        .iter()
        .find_map(|root| std::fs::read_to_string(Path::new(root).join(&group)).ok())
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// The node's `VmRSS` once it has stopped changing, KiB.
fn settled_rss(pid: u32) -> u64 {
    let t0 = Instant::now();
    let mut last = 0;
    let mut same = 0;
    loop {
        let now = edge_benches::procfs::memory(Some(pid)).map_or(0, |m| m.rss_kib);
        same = if now == last { same + 1 } else { 0 };
        last = now;
        if same >= SETTLE_SAME || t0.elapsed() > SETTLE_MAX {
            return now;
        }
        pause(SETTLE_POLL);
    }
}

fn mem_available_kib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("MemAvailable:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// One subject's memory with `n` instances up, per instance, KiB.
#[derive(Debug, Default, Clone, Copy)]
struct Memory {
    node_rss: f64,
    runtime_rss: f64,
    runtime_pss: f64,
    workload_rss: f64,
    workload_pss: f64,
    workload_procs: f64,
    mem_available: f64,
}

fn measure_memory(b: &Bench, kind: Kind, round: usize, n: usize) -> anyhow::Result<Memory> {
    let digest = match kind {
        Kind::Container => push(
            &b.api,
            &image(vec![
                base_layer(&b.busybox, "memory\n"),
                site_layer("memory\n"),
            ]),
        )?,
        Kind::Exec => b.put_artifact(&exec_artifact(&b.busybox_path, b.busybox.len(), "memory"))?,
    };
    // The image or artifact on the node first, off the figures: one instance, kept.
    let (_, keep) = b.deploy(kind, &format!("m{round}-{}-keep", kind.label()), &digest)?;
    let node_before = settled_rss(b.node.pid());
    let avail_before = mem_available_kib();
    let mut up = Vec::new();
    let ports: Vec<u16> = (0..n).map(|_| free_port()).collect::<Result<_, _>>()?;
    let names: Vec<String> = (0..n)
        .map(|j| format!("m{round}-{}-{j}", kind.label()))
        .collect();
    for (name, port) in names.iter().zip(&ports) {
        b.post_workload(kind, name, &digest, *port)?;
    }
    let t0 = Instant::now();
    for (name, port) in names.iter().zip(&ports) {
        let (_, pid) = b.wait_up(name, *port, t0)?;
        up.push(Instance {
            name: name.clone(),
            pid,
            port: *port,
        });
    }
    // httpd forks a child per request: let the probes' children end.
    pause(Duration::from_millis(500));
    let node_after = settled_rss(b.node.pid());
    let avail_after = mem_available_kib();
    let mut m = Memory::default();
    for i in &up {
        let workload: Vec<u32> = match kind {
            Kind::Container => {
                let (rss, pss) = rss_pss(i.pid);
                m.runtime_rss += rss as f64;
                m.runtime_pss += pss as f64;
                container_pids(&i.name)
            }
            Kind::Exec => vec![i.pid],
        };
        m.workload_procs += workload.len() as f64;
        for pid in workload {
            let (rss, pss) = rss_pss(pid);
            m.workload_rss += rss as f64;
            m.workload_pss += pss as f64;
        }
    }
    let nf = n as f64;
    m.node_rss = (node_after as f64 - node_before as f64) / nf;
    m.runtime_rss /= nf;
    m.runtime_pss /= nf;
    m.workload_rss /= nf;
    m.workload_pss /= nf;
    m.workload_procs /= nf;
    m.mem_available = (avail_before as f64 - avail_after as f64) / nf;
    up.push(keep);
    b.remove(&up)?;
    Ok(m)
}

fn memory_part(b: &Bench, args: &Args) -> anyhow::Result<()> {
    let n = args.instances.max(1);
    let mut container = Vec::new();
    let mut exec = Vec::new();
    for round in 0..args.memory_rounds.max(1) {
        let order = if round % 2 == 0 {
            [Kind::Container, Kind::Exec]
        } else {
            [Kind::Exec, Kind::Container]
        };
        for kind in order {
            let m = measure_memory(b, kind, round, n)?;
            match kind {
                Kind::Container => container.push(m),
                Kind::Exec => exec.push(m),
            }
        }
    }
    let med = |v: &[Memory], f: fn(&Memory) -> f64| {
        stats::median_f64(&v.iter().map(f).collect::<Vec<_>>()).unwrap_or(0.0) / 1024.0
    };
    println!(
        "\n== 2. memory per running instance, {n} at once ({} rounds of each, alternating; \
         medians, MiB per instance)",
        container.len()
    );
    println!("{:<58} {:>10} {:>10}", "per instance", "container", "exec");
    let line = |what: &str, f: fn(&Memory) -> f64| {
        println!(
            "{what:<58} {:>10.3} {:>10.3}",
            med(&container, f),
            med(&exec, f)
        );
    };
    line("node daemon VmRSS grown", |m| m.node_rss);
    line("runtime's resident `runc run` VmRSS", |m| m.runtime_rss);
    line("runtime's resident `runc run` Pss", |m| m.runtime_pss);
    line("the workload's own processes VmRSS", |m| m.workload_rss);
    line("the workload's own processes Pss", |m| m.workload_pss);
    line("MemAvailable dropped (whole machine; noisy)", |m| {
        m.mem_available
    });
    println!(
        "processes of the workload per instance: container {:.1}, exec {:.1}",
        med(&container, |m| m.workload_procs) * 1024.0,
        med(&exec, |m| m.workload_procs) * 1024.0
    );
    let total = |v: &[Memory]| {
        med(v, |m| m.node_rss) + med(v, |m| m.runtime_pss) + med(v, |m| m.workload_pss)
    };
    let (tc, te) = (total(&container), total(&exec));
    println!(
        "node + runtime Pss + workload Pss per instance: container {tc:.3} MiB, exec {te:.3} MiB, \
         ratio {:.2}x; runc's monitor alone is {:.1}% of a {PI_ZERO_MIB:.0} MiB Pi Zero per \
         container (Pss), {:.1}% (VmRSS)",
        if te > 0.0 { tc / te } else { 0.0 },
        med(&container, |m| m.runtime_pss) / PI_ZERO_MIB * 100.0,
        med(&container, |m| m.runtime_rss) / PI_ZERO_MIB * 100.0
    );
    for (what, v) in [
        ("container_node_rss", med(&container, |m| m.node_rss)),
        ("exec_node_rss", med(&exec, |m| m.node_rss)),
        ("runc_rss", med(&container, |m| m.runtime_rss)),
        ("runc_pss", med(&container, |m| m.runtime_pss)),
        (
            "container_workload_pss",
            med(&container, |m| m.workload_pss),
        ),
        ("exec_workload_pss", med(&exec, |m| m.workload_pss)),
    ] {
        println!("metric containers.memory.{what}_mib {v:.3}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Shared base layers.

fn shared_part(b: &Bench) -> anyhow::Result<()> {
    let base = base_layer(
        &b.busybox,
        &format!("shared base of run {}\n", std::process::id()),
    );
    let a = image(vec![base.clone(), site_layer("site A\n")]);
    let bb = image(vec![base, site_layer("site B, another page\n")]);
    let (da, db) = (push(&b.api, &a)?, push(&b.api, &bb)?);
    let (sa, ia) = b.deploy(Kind::Container, "shared-a", &da)?;
    let (sb, ib) = b.deploy(Kind::Container, "shared-b", &db)?;
    let (la, lb) = (
        b.node.logged_fetches("shared-a"),
        b.node.logged_fetches("shared-b"),
    );
    b.remove(&[ia, ib])?;
    let full_b = image_bytes(&bb);
    println!("\n== 3. bytes fetched for a second image on the same base");
    println!(
        "image A (new base + site A): {} B of blobs; the node fetched {} B (metric), {} B \
         (its `artifact fetched` lines)",
        image_bytes(&a),
        sa.fetched,
        la
    );
    println!(
        "image B (A's base + site B): {full_b} B of blobs (manifest {} + config {} + base {} + \
         site {}); the node fetched {} B (metric), {} B (log): {:.2}% of B, {:.0}x fewer bytes \
         than a node without layer sharing",
        bb.manifest.bytes.len(),
        bb.config.bytes.len(),
        bb.layers[0].bytes.len(),
        bb.layers[1].bytes.len(),
        sb.fetched,
        lb,
        sb.fetched as f64 / full_b as f64 * 100.0,
        full_b as f64 / sb.fetched.max(1) as f64
    );
    println!(
        "deploy -> first 200: A {}, B {}",
        stats::ms(Some(sa.http)),
        stats::ms(Some(sb.http))
    );
    println!("metric containers.shared.b_fetched_bytes {}", sb.fetched);
    println!("metric containers.shared.b_full_bytes {full_b}");
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Unpacking a layer.

/// xorshift64*: deterministic filler, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Bytes like a program's: blocks of noise between blocks of repeated structure, about half
/// and half, which gzip brings to about 55-60%.
fn binary_like(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let block = 256 + rng.below(3840) as usize;
        if rng.below(2) == 0 {
            out.extend((0..block).map(|_| rng.next() as u8));
        } else {
            let pattern: Vec<u8> = (0..16).map(|_| rng.below(8) as u8).collect();
            out.extend(pattern.iter().cycle().take(block));
        }
    }
    out.truncate(len);
    out
}

/// Text like a package's docs, scripts and configs: words from a small vocabulary.
fn text_like(rng: &mut Rng, len: usize) -> Vec<u8> {
    const WORDS: [&str; 24] = [
        "the",
        "node",
        "config",
        "return",
        "error",
        "value",
        "if",
        "else",
        "function",
        "data",
        "file",
        "path",
        "0x1f",
        "{",
        "}",
        "=",
        "license",
        "copyright",
        "include",
        "static",
        "int",
        "char",
        "self",
        "import",
    ];
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        out.extend_from_slice(WORDS[rng.below(WORDS.len() as u64) as usize].as_bytes());
        out.push(if rng.below(12) == 0 { b'\n' } else { b' ' });
    }
    out.truncate(len);
    out
}

/// A layer of about `mib` MiB of files: four big binaries (55%) and many small files of
/// 1-32 KiB in 100 directories (45%: about 40 per MiB), as a distribution's `usr` has them.
fn generated_layer(mib: usize) -> (Vec<u8>, usize) {
    let total = mib << 20;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut tar = LayerTar::new().dir("usr/", 0o755).dir("usr/bin/", 0o755);
    let big = total * 55 / 100;
    for (i, share) in [40, 30, 20, 10].iter().enumerate() {
        tar = tar.file(
            &format!("usr/bin/program-{i}"),
            0o755,
            &binary_like(&mut rng, big * share / 100),
        );
    }
    tar = tar.dir("usr/share/", 0o755);
    for d in 0..100 {
        tar = tar.dir(&format!("usr/share/pkg-{d}/"), 0o755);
    }
    let mut small = 0;
    let mut files = 0;
    while small < total - big {
        let len = 1024 + rng.below(31 * 1024) as usize;
        let dir = rng.below(100);
        tar = tar.file(
            &format!("usr/share/pkg-{dir}/file-{files}.txt"),
            0o644,
            &text_like(&mut rng, len),
        );
        small += len;
        files += 1;
    }
    (tar.finish(), files + 4)
}

fn unpack_part(args: &Args, dir: &Path) -> anyhow::Result<()> {
    let work = dir.join("unpack");
    std::fs::create_dir_all(&work)?;
    let (tar, files) = generated_layer(args.unpack_mib.max(1));
    let diff_id = Digest::of(&tar);
    let gz = edge_oci::build::gzip(&tar);
    let blob = work.join("layer.tar.gz");
    std::fs::write(&blob, &gz)?;
    let mib = tar.len() as f64 / f64::from(1 << 20);
    let mut ours = Vec::new();
    let mut anchor = Vec::new();
    let sync = || {
        let _ = std::process::Command::new("sync").status();
    };
    for round in 0..args.unpack_rounds.max(1) {
        let order = if round % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for ours_now in order {
            let dest = work.join(format!(
                "out-{round}-{}",
                if ours_now { "ours" } else { "tar" }
            ));
            sync();
            let took = if ours_now {
                let options = UnpackOptions {
                    limits: LayerLimits::default(),
                    expected_diff_id: Some(diff_id),
                };
                let t0 = Instant::now();
                let reader = std::io::BufReader::new(std::fs::File::open(&blob)?);
                edge_oci::unpack(reader, Compression::Gzip, &dest, &options)
                    .context("edge_oci::unpack")?;
                t0.elapsed()
            } else {
                std::fs::create_dir(&dest)?;
                let t0 = Instant::now();
                let status = std::process::Command::new("tar")
                    .arg("-xzf")
                    .arg(&blob)
                    .arg("-C")
                    .arg(&dest)
                    .status()?;
                let took = t0.elapsed();
                if !status.success() {
                    bail!("tar -xzf: {status}");
                }
                took
            };
            if ours_now {
                ours.push(took);
            } else {
                anchor.push(took);
            }
            std::fs::remove_dir_all(&dest)?;
        }
    }
    std::fs::remove_dir_all(&work)?;
    let rate = |d: Option<Duration>| d.map_or(0.0, |d| mib / d.as_secs_f64());
    let (o50, a50) = (percentile(&ours, 50.0), percentile(&anchor, 50.0));
    println!("\n== 4. unpacking a layer: edge_oci::unpack vs tar -xzf, alternating");
    println!(
        "layer: {mib:.1} MiB tar stream, {files} files (4 big binaries, the rest 1-32 KiB text \
         files in 100 directories), {:.1} MiB gzipped (flate2 level 1, as the image builder \
         writes); {} rounds of each; {}; `sync` before each, off the clock",
        gz.len() as f64 / f64::from(1 << 20),
        ours.len(),
        edge_benches::procfs::filesystem_of(dir)
    );
    println!(
        "{}  = {:.0} MiB/s",
        row("edge_oci::unpack (checks, sha256 diff_id)", &ours),
        rate(o50)
    );
    println!(
        "{}  = {:.0} MiB/s",
        row("tar -xzf (GNU tar, gzip -d)", &anchor),
        rate(a50)
    );
    println!(
        "ratio ours/tar time p50 {}; ms per MiB: ours {:.2}, tar {:.2}",
        ratio(o50, a50),
        o50.map_or(0.0, |d| d.as_secs_f64() * 1e3 / mib),
        a50.map_or(0.0, |d| d.as_secs_f64() * 1e3 / mib)
    );
    println!("metric containers.unpack.ours_mib_per_s {:.1}", rate(o50));
    println!("metric containers.unpack.tar_mib_per_s {:.1}", rate(a50));
    Ok(())
}

// ---------------------------------------------------------------------------------------

fn online(orch: &Orchestrator) -> bool {
    let fleet = orch.registry.fleet();
    fleet.find(NODE).is_some_and(|n| fleet.is_online(n.id))
}

fn run(args: &Args) -> anyhow::Result<()> {
    let skip = |part: &str| args.skip.iter().any(|s| s == part);
    let dir = tempfile::Builder::new()
        .prefix("edge-container-deploy-")
        .tempdir()
        .context("temp dir")?;
    // The exec workload serves from here, perhaps as another user.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
    println!(
        "container-deploy: orchestrator in this process, node daemon in a child process \
         (current-thread runtime), QUIC on loopback; runtime {}; limits backend {:?}",
        args.runtime.display(),
        node_daemon::supervisor::LimitsBackend::detect().kind()
    );
    if !skip("unpack") {
        unpack_part(args, dir.path())?;
    }
    if skip("deploy") && skip("memory") && skip("shared") {
        return Ok(());
    }
    let busybox = std::fs::read(&args.busybox)
        .with_context(|| format!("reading {}", args.busybox.display()))?;
    let www = dir.path().join("www");
    std::fs::create_dir(&www)?;
    std::fs::set_permissions(&www, std::fs::Permissions::from_mode(0o755))?;
    std::fs::write(www.join("index.html"), "exec site\n")?;
    let orch_rt = tokio::runtime::Builder::new_multi_thread()
        .thread_name("orch-rt")
        .enable_all()
        .build()?;
    let orch = orch_rt.block_on(in_process::start_orchestrator(&dir.path().join("orch")))?;
    let store = in_process::artifact_store(&orch)?;
    let token = orch
        .registry
        .create_token(3600, 1, "container-deploy".into())?
        .0;
    // Dropped after the node (declared before it), on every way out.
    let _cgroups = NodeCgroups;
    let node_dir = dir.path().join("node");
    std::fs::create_dir(&node_dir)?;
    let node = NodeProcess::spawn(
        dir.path(),
        &node_config(&node_dir.join("data"), &orch, &token, &args.runtime),
    )?;
    let t0 = Instant::now();
    while !online(&orch) {
        if t0.elapsed() > WAIT {
            bail!(
                "the node did not come online; its log: {}",
                node.log.display()
            );
        }
        pause(Duration::from_millis(5));
    }
    let api = Api::new(&orch, WAIT);
    let mut b = Bench {
        orch_rt,
        orch,
        store,
        api,
        node,
        poll: Duration::from_micros(args.poll_us.max(1)),
        busybox_path: args.busybox.clone(),
        busybox,
        www,
    };
    let result = (|| {
        if !skip("deploy") {
            deploy_part(&b, args, dir.path())?;
        }
        if !skip("memory") {
            memory_part(&b, args)?;
        }
        if !skip("shared") {
            shared_part(&b)?;
        }
        anyhow::Ok(())
    })();
    if let Err(e) = &result {
        let log = std::fs::read_to_string(&b.node.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        eprintln!(
            "container-deploy: {e:#}\nthe node's last log lines:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    let stopped = b.node.stop();
    let Bench { orch, orch_rt, .. } = b;
    orch_rt.block_on(orch.shutdown());
    drop(orch_rt);
    result?;
    stopped?;
    let left = std::process::Command::new("pgrep")
        .args(["-c", "-f", "busybox httpd"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    println!("\nprocesses running 'busybox httpd' after the run (anyone's): {left}");
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match (&args.node, args.status) {
        (Some(config), Some(status)) => node_main(config, status),
        (Some(_), None) => Err(anyhow!("--node needs --status")),
        _ => run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("container-deploy: {e:#}");
            ExitCode::FAILURE
        }
    }
}
