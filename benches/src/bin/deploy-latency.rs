//! `deploy-latency`: from `POST /v1/workloads` to the workload's process running, on
//! loopback, next to the floor: the same script spawned directly.
//!
//! One orchestrator and `--nodes` node daemons run in this process, each the way its binary
//! runs it: the orchestrator (`Orchestrator::start`, as `edge-orchestrator serve`) on a
//! multi-thread tokio runtime of its own with one worker per core, and every node
//! (`node_daemon::daemon::run`, as `edge-node run`) on a current-thread runtime on its own OS
//! thread. They talk real QUIC over loopback, each node with its own data dir, artifact cache
//! and supervisor (cgroups where they are writable). The workload is a shell script,
//! `exec sleep 600`, put into the orchestrator's artifact store with `ArtifactStore::put` (what
//! `POST /v1/artifacts` calls).
//!
//! One sample of ours: a workload with a fresh name and `replicas = 1` is POSTed with the
//! admin bearer token. The clock starts just before the call and stops when the orchestrator
//! holds a `Running` report with a pid for it (`Shared::instance_reports`, polled every
//! `--poll-us` from this thread while another makes the call, so a report that arrives before
//! the answer is not missed). Also noted: when the API answered, the first report of any
//! state, and when the reported pid had exec'd `sleep` (`/proc/PID/comm`), i.e. the script
//! itself ran. Each sample is then deleted through the API and waited gone, off the clock.
//!
//! The floor: the same script file spawned with `tokio::process::Command` from here, timed to
//! `/proc/PID/comm` reading `sleep`, polled at the same interval: what any agent pays (fork,
//! exec of the shell, exec of `sleep`) and nothing more. Ours and the floor alternate sample
//! by sample, and which of the two goes first alternates too.
//!
//! Cases: "cached" (the artifact is on every node already: one workload with an instance on
//! every node, kept running through the case so that no node collects the artifact as
//! unused) and "uncached" (a new script each sample, padded past its `exec` line to
//! `--big-bytes`, so a digest no node has: fetched over QUIC and verified first).
//!
//! A benchmark: it prints figures and never fails on one.

use anyhow::{Context, anyhow, bail};
use clap::Parser;
use edge_benches::api::Api;
use edge_benches::stats::{self, percentile};
use edge_benches::{in_process, pause};
use edge_proto::digest::to_prefixed;
use edge_proto::{NodeId, WorkloadState};
use node_daemon::config::Config;
use orchestrator::app::Orchestrator;
use orchestrator::artifacts::ArtifactStore;
use serde_json::json;
use std::cell::Cell;
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;

/// Published pod start times (see /work/shared/BENCHMARKS.md), and our goals.
const ANCHOR_KUBEEDGE_P50: Duration = Duration::from_millis(1690);
const ANCHOR_KUBEEDGE_P99: Duration = Duration::from_millis(4090);
const GOAL_P50: Duration = Duration::from_millis(25);
const GOAL_P99: Duration = Duration::from_millis(100);

/// How long to wait for anything that takes milliseconds when all is well; a bound on a hang.
const WAIT: Duration = Duration::from_secs(60);

/// The workload: a script whose process ends up as `sleep`, so "running" can be read from
/// `/proc/PID/comm`.
const SCRIPT: &[u8] = b"#!/bin/sh\nexec sleep 600\n";

#[derive(Debug, Parser)]
#[command(
    name = "deploy-latency",
    about = "Deploy through the API until the workload's process runs, against a direct spawn"
)]
struct Args {
    /// Node daemons.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Samples of each subject with the artifact cached on the nodes.
    #[arg(long, default_value_t = 200)]
    iterations: usize,
    /// Samples of each subject with a new, uncached artifact each time.
    #[arg(long, default_value_t = 30)]
    big_iterations: usize,
    /// Size of the uncached artifact.
    #[arg(long, default_value_t = 5 << 20)]
    big_bytes: usize,
    /// How often to look for the report or the exec'd process, in microseconds.
    #[arg(long, default_value_t = 200)]
    poll_us: u64,
    /// Untimed samples of each subject before each case.
    #[arg(long, default_value_t = 5)]
    warmup: usize,
}

/// A node daemon on its own thread and current-thread runtime, as `edge-node run` has it.
struct NodeThread {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), String>>>,
}

impl NodeThread {
    fn spawn(name: &str, config: Config) -> anyhow::Result<Self> {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?;
                runtime
                    .block_on(node_daemon::daemon::run(config, async move {
                        let _ = stopped.await;
                    }))
                    .map_err(|e| e.to_string())
            })
            .context("starting a node thread")?;
        Ok(Self {
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Stops the daemon (which stops what it supervises) and returns how it ended.
    fn stop(&mut self) -> Result<(), String> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.thread.take() {
            Some(t) => t
                .join()
                .map_err(|_| "the node thread panicked".to_owned())?,
            None => Ok(()),
        }
    }
}

impl Drop for NodeThread {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// Everything a sample needs.
struct Bench {
    orch_rt: Runtime,
    /// Drives the floor's child processes (tokio::process needs a runtime to reap).
    floor_rt: Runtime,
    orch: Orchestrator,
    store: Arc<ArtifactStore>,
    api: Api,
    poll: Duration,
    /// Sum of the measured intervals between looks, and how many, for the resolution.
    poll_time: Cell<Duration>,
    polls: Cell<u64>,
    /// Where our samples ran, by node.
    placed: BTreeMap<NodeId, usize>,
    dir: PathBuf,
}

/// What the orchestrator knows of a workload's instances.
#[derive(Debug, Default)]
struct Seen {
    any: bool,
    downloading: bool,
    running: Option<(NodeId, u32)>,
    failed: Option<String>,
}

fn look(orch: &Orchestrator, name: &str) -> Seen {
    let mut seen = Seen::default();
    for (node, r) in orch.reports.of(name) {
        seen.any = true;
        match (r.report.state, r.report.pid) {
            (WorkloadState::Running, Some(pid)) => seen.running = Some((node, pid)),
            (WorkloadState::Downloading, _) => seen.downloading = true,
            (WorkloadState::Failed, _) => seen.failed = Some(r.report.message.to_string()),
            _ => {}
        }
    }
    seen
}

/// The process's command name; `None` once it is gone.
fn comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim_end().to_owned())
}

/// Whether the process has exited (gone, or a zombie waiting for its parent).
fn gone(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
        s.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z")
    })
}

/// One sample of ours.
#[derive(Debug, Clone, Copy)]
struct Ours {
    /// The API answered 201.
    api: Duration,
    /// The orchestrator held a first report (downloading, starting or running).
    first_report: Duration,
    /// It held a `Running` report with a pid.
    running: Duration,
    /// That pid had exec'd `sleep`: the script ran.
    exec: Duration,
    /// A `Downloading` report was seen: the artifact was not cached.
    downloaded: bool,
}

impl Bench {
    fn spec(name: &str, digest: &str, replicas: usize) -> anyhow::Result<Vec<u8>> {
        Ok(serde_json::to_vec(&json!({
            "name": name,
            "version": "1.0.0",
            "artifact": digest,
            "replicas": replicas,
            "resources": {"cpu_millis": 100, "memory_bytes": 32 << 20},
        }))?)
    }

    fn put_artifact(&self, bytes: &[u8]) -> anyhow::Result<String> {
        let stored = self
            .orch_rt
            .block_on(self.store.put(bytes, None))
            .context("putting the artifact")?;
        Ok(to_prefixed(&stored.digest))
    }

    fn look_again(&self, last: &mut Instant) {
        pause(self.poll);
        let now = Instant::now();
        self.poll_time.set(self.poll_time.get() + (now - *last));
        self.polls.set(self.polls.get() + 1);
        *last = now;
    }

    /// Deploys `name` and times it to Running and to the exec'd script; returns the sample and
    /// the pid.
    fn ours(&mut self, name: &str, digest: &str) -> anyhow::Result<(Ours, u32)> {
        let body = Self::spec(name, digest, 1)?;
        let t0 = Instant::now();
        let me = &*self;
        let (result, answered) = std::thread::scope(|s| {
            let api = &me.api;
            let body = &body;
            let post = s.spawn(move || {
                let r = api.post("/v1/workloads", "application/json", body);
                (r, t0.elapsed())
            });
            let polled = me.wait_running(name, t0);
            let answered = post.join();
            (polled, answered)
        });
        let (r, api) = answered.map_err(|_| anyhow!("the API call panicked"))?;
        let (status, answer) = r.context("POST /v1/workloads")?;
        if status != 201 {
            bail!("POST /v1/workloads {name}: {status} {answer}");
        }
        let (mut sample, node, pid) = result?;
        sample.api = api;
        *self.placed.entry(node).or_default() += 1;
        Ok((sample, pid))
    }

    fn wait_running(&self, name: &str, t0: Instant) -> anyhow::Result<(Ours, NodeId, u32)> {
        let mut first_report = None;
        let mut downloaded = false;
        let mut last = Instant::now();
        let (running, node, pid) = loop {
            let seen = look(&self.orch, name);
            if seen.any && first_report.is_none() {
                first_report = Some(t0.elapsed());
            }
            downloaded |= seen.downloading;
            if let Some((node, pid)) = seen.running {
                break (t0.elapsed(), node, pid);
            }
            if let Some(why) = seen.failed {
                bail!("{name} failed on its node: {why}");
            }
            if t0.elapsed() > WAIT {
                bail!("{name}: no Running report within {WAIT:?}");
            }
            self.look_again(&mut last);
        };
        let exec = loop {
            match comm(pid) {
                Some(c) if c == "sleep" => break t0.elapsed(),
                Some(_) => {}
                None => {
                    // Wait for the node's next report: it says how the process ended.
                    pause(Duration::from_millis(200));
                    let reports: Vec<String> = self
                        .orch
                        .reports
                        .of(name)
                        .iter()
                        .map(|(_, r)| format!("{:?}", r.report))
                        .collect();
                    bail!(
                        "{name}: pid {pid} reported running is gone; the node's reports now: {}; \
                         its log: {:?}",
                        reports.join("; "),
                        self.log_of(name)
                    )
                }
            }
            if t0.elapsed() > WAIT {
                bail!("{name}: pid {pid} did not exec sleep within {WAIT:?}");
            }
            self.look_again(&mut last);
        };
        Ok((
            Ours {
                api: Duration::ZERO,
                first_report: first_report.unwrap_or(running),
                running,
                exec,
                downloaded,
            },
            node,
            pid,
        ))
    }

    /// What the workload wrote (the shell's complaint, if it could not start), from whichever
    /// node ran it.
    fn log_of(&self, name: &str) -> String {
        let Ok(nodes) = std::fs::read_dir(&self.dir) else {
            return String::new();
        };
        nodes
            .filter_map(Result::ok)
            .filter_map(|n| {
                let log = n
                    .path()
                    .join("workloads")
                    .join(name)
                    .join("logs/current.log");
                std::fs::read_to_string(log).ok()
            })
            .collect::<Vec<_>>()
            .join(" | ")
    }

    /// Deletes a workload and waits until its processes are gone.
    fn remove(&self, name: &str, pids: &[u32]) -> anyhow::Result<()> {
        let status = self.api.delete(&format!("/v1/workloads/{name}"))?;
        if status != 204 {
            bail!("DELETE /v1/workloads/{name}: {status}");
        }
        let t0 = Instant::now();
        while !pids.iter().all(|p| gone(*p)) {
            if t0.elapsed() > WAIT {
                bail!("{name}: still running {WAIT:?} after the delete");
            }
            pause(Duration::from_millis(1));
        }
        Ok(())
    }

    /// The floor: spawns `script` and times it to `sleep` exec'd; then kills and reaps it.
    fn floor(&self, script: &Path) -> anyhow::Result<Duration> {
        let t0 = Instant::now();
        let mut child = {
            let _inside = self.floor_rt.enter();
            tokio::process::Command::new(script)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .context("spawning the script")?
        };
        let pid = child.id().context("the script exited at once")?;
        let mut last = Instant::now();
        let took = loop {
            if comm(pid).is_some_and(|c| c == "sleep") {
                break t0.elapsed();
            }
            if t0.elapsed() > WAIT {
                bail!("the script did not exec sleep within {WAIT:?}");
            }
            self.look_again(&mut last);
        };
        self.floor_rt
            .block_on(child.kill())
            .context("stopping the script")?;
        Ok(took)
    }

    /// A new script of `bytes` bytes: the same two lines, then padding the shell never reads
    /// (it has exec'd `sleep` by then), unique per call so no node has it cached.
    fn big_script(bytes: usize, sample: usize) -> Vec<u8> {
        let mut s = SCRIPT.to_vec();
        s.extend_from_slice(
            format!(
                "# sample {sample} of process {} at {:?}\n",
                std::process::id(),
                std::time::SystemTime::now()
            )
            .as_bytes(),
        );
        let line = b"# padding: never read, the shell exec'd sleep on line 2 ......\n";
        while s.len() + line.len() <= bytes {
            s.extend_from_slice(line);
        }
        s.resize(bytes, b'\n');
        s
    }

    fn write_script(&self, file: &str, bytes: &[u8]) -> anyhow::Result<PathBuf> {
        let path = self.dir.join(file);
        std::fs::write(&path, bytes)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        Ok(path)
    }
}

/// What a durable small write costs on the disk under `dir`: a file written, fsynced, renamed
/// into place and its directory fsynced, as the node's supervisor stores a workload's spec
/// before starting it. Context for the figures, not a part of them.
fn durable_write_times(dir: &Path, samples: usize) -> anyhow::Result<Vec<Duration>> {
    let probe = dir.join("fsync-probe");
    std::fs::create_dir_all(&probe)?;
    let mut times = Vec::with_capacity(samples);
    for i in 0..samples {
        let t = Instant::now();
        let tmp = probe.join("spec.json.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut f, format!("{{\"sample\": {i}}}").as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, probe.join("spec.json"))?;
        std::fs::File::open(&probe)?.sync_all()?;
        times.push(t.elapsed());
    }
    std::fs::remove_dir_all(&probe)?;
    Ok(times)
}

/// CPU use of the machine and of this process over the cases: the box is shared, and other
/// work on it shows in the tails.
struct Load {
    t0: Instant,
    machine: Vec<u64>,
    process: u64,
}

impl Load {
    fn start() -> Self {
        Self {
            t0: Instant::now(),
            machine: machine_busy(),
            process: edge_benches::procfs::cpu_ticks(None).unwrap_or(0),
        }
    }

    fn report(&self) -> String {
        let secs = self.t0.elapsed().as_secs_f64();
        let hz = edge_benches::procfs::clock_ticks_per_sec() as f64;
        let delta = |a: &[u64], b: &[u64]| {
            a.iter()
                .zip(b)
                .map(|(x, y)| x.saturating_sub(*y))
                .sum::<u64>() as f64
                / hz
        };
        let busy = delta(&machine_busy(), &self.machine);
        let mine = edge_benches::procfs::cpu_ticks(None)
            .unwrap_or(0)
            .saturating_sub(self.process) as f64
            / hz;
        format!(
            "CPU over the {secs:.1} s of samples: this process {:.2} cores (orchestrator, nodes, \
             workloads' setup, the floor, polling), everything else on the machine {:.2} cores",
            mine / secs,
            (busy - mine).max(0.0) / secs
        )
    }
}

/// The machine's busy CPU ticks (`/proc/stat`: user, nice, system, irq, softirq).
fn machine_busy() -> Vec<u64> {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = text
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    [0, 1, 2, 5, 6]
        .iter()
        .filter_map(|&i| fields.get(i).copied())
        .collect()
}

/// The samples of one case.
#[derive(Debug, Default)]
struct Case {
    ours: Vec<Ours>,
    floor: Vec<Duration>,
    /// Samples where a `Downloading` report was seen.
    downloads: usize,
}

impl Case {
    fn col(&self, f: impl Fn(&Ours) -> Duration) -> Vec<Duration> {
        self.ours.iter().map(f).collect()
    }
}

/// Runs one case: `samples` of each subject, alternating; `artifact` gives the digest and the
/// script file for sample `i` (or for warm-up sample `None`).
fn run_case(
    b: &mut Bench,
    label: &str,
    samples: usize,
    warmup: usize,
    mut artifact: impl FnMut(&mut Bench, usize) -> anyhow::Result<(String, PathBuf)>,
    mut after: impl FnMut(&mut Bench, &str, &Path) -> anyhow::Result<()>,
) -> anyhow::Result<Case> {
    let mut case = Case::default();
    for i in 0..warmup + samples {
        let (digest, script) = artifact(b, i)?;
        let name = format!("{label}-{i}");
        let ours_first = i % 2 == 0;
        let mut floor = None;
        if !ours_first {
            floor = Some(b.floor(&script)?);
        }
        let (sample, pid) = b.ours(&name, &digest)?;
        b.remove(&name, &[pid])?;
        if ours_first {
            floor = Some(b.floor(&script)?);
        }
        after(b, &digest, &script)?;
        if i >= warmup {
            case.ours.push(sample);
            case.downloads += usize::from(sample.downloaded);
            case.floor.extend(floor);
        }
    }
    Ok(case)
}

fn row(label: &str, samples: &[Duration]) -> String {
    format!(
        "{label:<44} p50 {:>9}  p90 {:>9}  p99 {:>9}  max {:>9}",
        stats::ms(percentile(samples, 50.0)),
        stats::ms(percentile(samples, 90.0)),
        stats::ms(percentile(samples, 99.0)),
        stats::ms(samples.iter().max().copied())
    )
}

fn ratio(a: Option<Duration>, b: Option<Duration>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if !b.is_zero() => format!("{:.2}x", a.as_secs_f64() / b.as_secs_f64()),
        _ => "-".into(),
    }
}

fn report(label: &str, case: &Case, goals: bool) {
    let api = case.col(|o| o.api);
    let first = case.col(|o| o.first_report);
    let running = case.col(|o| o.running);
    let exec = case.col(|o| o.exec);
    println!(
        "\n{label}: {} samples of each, alternating ({} of ours saw a Downloading report)",
        case.ours.len(),
        case.downloads
    );
    println!("{}", row("ours: API answered 201", &api));
    println!("{}", row("ours: first report at the orchestrator", &first));
    println!(
        "{}",
        row("ours: Running report with pid (the figure)", &running)
    );
    println!("{}", row("ours: that pid has exec'd sleep", &exec));
    println!(
        "{}",
        row("floor: tokio::process spawn to sleep exec'd", &case.floor)
    );
    let p = |s: &[Duration], q| percentile(s, q);
    println!(
        "ratio ours/floor  Running report: p50 {}  p99 {};  sleep exec'd: p50 {}  p99 {}",
        ratio(p(&running, 50.0), p(&case.floor, 50.0)),
        ratio(p(&running, 99.0), p(&case.floor, 99.0)),
        ratio(p(&exec, 50.0), p(&case.floor, 50.0)),
        ratio(p(&exec, 99.0), p(&case.floor, 99.0)),
    );
    let (p50, p99) = (p(&running, 50.0), p(&running, 99.0));
    if goals {
        let verdict = |v: Option<Duration>, goal: Duration| match v {
            Some(v) if v <= goal => "met",
            Some(_) => "MISSED",
            None => "not measured",
        };
        println!(
            "goal p50 <= {} ms: {}; p99 <= {} ms: {}",
            GOAL_P50.as_millis(),
            verdict(p50, GOAL_P50),
            GOAL_P99.as_millis(),
            verdict(p99, GOAL_P99)
        );
    }
    println!(
        "published anchor, for context (not run here): KubeEdge pod start p50 {:.2} s, p99 {:.2} s \
         = {} and {} ours",
        ANCHOR_KUBEEDGE_P50.as_secs_f64(),
        ANCHOR_KUBEEDGE_P99.as_secs_f64(),
        ratio(Some(ANCHOR_KUBEEDGE_P50), p50),
        ratio(Some(ANCHOR_KUBEEDGE_P99), p99)
    );
    let key = label.split_whitespace().next().unwrap_or(label);
    for (what, v) in [
        ("running", &running),
        ("exec", &exec),
        ("floor", &case.floor),
    ] {
        for q in [50.0, 99.0] {
            if let Some(d) = p(v, q) {
                println!(
                    "metric deploy.{key}.{what}_p{q:.0}_ms {:.2}",
                    d.as_secs_f64() * 1e3
                );
            }
        }
    }
}

fn node_config(name: &str, dir: &Path, orch: &Orchestrator, token: &str) -> anyhow::Result<Config> {
    // Status every 10 s, the production default, so that status traffic does not add noise.
    Config::from_toml(&format!(
        "version = 1\nname = \"{name}\"\ndata_dir = \"{}\"\nstatus_interval_secs = 10\n\
         [orchestrator]\naddress = \"{}\"\n[join]\ntoken = \"{token}\"\nca_hash = \"{}\"\n",
        dir.display(),
        orch.quic_addr,
        orch.registry.ca().hash()
    ))
    .context("node config")
}

/// Removes, when dropped, the (empty) parent control groups the nodes named `PREFIX-*` made,
/// `edge-node-NAME`: the daemon removes each workload's group but leaves its own parent
/// behind when it stops.
struct NodeCgroups(String);

impl Drop for NodeCgroups {
    fn drop(&mut self) {
        remove_node_cgroups(&self.0);
    }
}

fn remove_node_cgroups(prefix: &str) {
    let wanted = format!("edge-node-{prefix}-");
    for hierarchy in ["memory", "cpu", "cpu,cpuacct", "unified", ""] {
        let root = Path::new("/sys/fs/cgroup").join(hierarchy);
        let Ok(entries) = std::fs::read_dir(&root) else {
            continue;
        };
        for e in entries.filter_map(Result::ok) {
            if e.file_name().to_string_lossy().starts_with(&wanted) {
                let _ = std::fs::remove_dir(e.path());
            }
        }
    }
}

fn online(orch: &Orchestrator, name: &str) -> bool {
    let fleet = orch.registry.fleet();
    fleet.find(name).is_some_and(|n| fleet.is_online(n.id))
}

fn run(args: &Args) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("edge-deploy-latency-")
        .tempdir()
        .context("temp dir")?;
    let orch_rt = tokio::runtime::Builder::new_multi_thread()
        .thread_name("orch-rt")
        .enable_all()
        .build()?;
    let floor_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let orch = orch_rt.block_on(in_process::start_orchestrator(&dir.path().join("orch")))?;
    let store = in_process::artifact_store(&orch)?;
    let token = orch
        .registry
        .create_token(3600, u32::try_from(args.nodes)?, "deploy-latency".into())?
        .0;
    let prefix = format!("dl{}", std::process::id());
    // Dropped after the nodes (declared before them), on every way out.
    let _cgroups = NodeCgroups(prefix.clone());
    let mut nodes = Vec::new();
    for i in 0..args.nodes {
        let name = format!("{prefix}-{i}");
        let config = node_config(&name, &dir.path().join(&name), &orch, &token)?;
        nodes.push(NodeThread::spawn(&name, config)?);
    }
    let t0 = Instant::now();
    while !(0..args.nodes).all(|i| online(&orch, &format!("{prefix}-{i}"))) {
        if t0.elapsed() > WAIT {
            bail!("the nodes did not come online");
        }
        pause(Duration::from_millis(5));
    }
    let api = Api::new(&orch, WAIT);
    let mut b = Bench {
        orch_rt,
        floor_rt,
        orch,
        store,
        api,
        poll: Duration::from_micros(args.poll_us.max(1)),
        poll_time: Cell::new(Duration::ZERO),
        polls: Cell::new(0),
        placed: BTreeMap::new(),
        dir: dir.path().to_owned(),
    };
    println!(
        "deploy-latency: orchestrator and {} node daemon(s) in this process (orchestrator on a \
         multi-thread runtime, each node on a current-thread runtime of its own thread), QUIC on \
         loopback; limits backend on the nodes: {:?}; nodes online after {:.2} s",
        args.nodes,
        node_daemon::supervisor::LimitsBackend::detect().kind(),
        t0.elapsed().as_secs_f64()
    );

    // Cached: every node fetches the script once for `warm`, one instance on each node, which
    // keeps running through the case: a node deletes a cached artifact once no workload of
    // its own uses it, so without it every sample would fetch again.
    let digest = b.put_artifact(SCRIPT)?;
    let script = b.write_script("script.sh", SCRIPT)?;
    let warm = "warm";
    let (status, answer) = b.api.post(
        "/v1/workloads",
        "application/json",
        &Bench::spec(warm, &digest, args.nodes)?,
    )?;
    if status != 201 {
        bail!("warm-up deploy: {status} {answer}");
    }
    let t0 = Instant::now();
    let pids = loop {
        let pids: Vec<u32> = b
            .orch
            .reports
            .of(warm)
            .iter()
            .filter(|(_, r)| r.report.state == WorkloadState::Running)
            .filter_map(|(_, r)| r.report.pid)
            .collect();
        if pids.len() == args.nodes {
            break pids;
        }
        if t0.elapsed() > WAIT {
            bail!(
                "warm-up: {} of {} instances running",
                pids.len(),
                args.nodes
            );
        }
        pause(Duration::from_millis(5));
    };
    let load = Load::start();
    let cached = run_case(
        &mut b,
        "cached",
        args.iterations,
        args.warmup,
        |_, _| Ok((digest.clone(), script.clone())),
        |_, _, _| Ok(()),
    )?;
    b.remove(warm, &pids)?;
    let cached_placed = std::mem::take(&mut b.placed);

    // Uncached: a new artifact per sample, removed from the store and the disk afterwards.
    let big = args.big_bytes;
    let uncached = run_case(
        &mut b,
        "uncached",
        args.big_iterations,
        args.warmup.min(2),
        |b, i| {
            let bytes = Bench::big_script(big, i);
            let digest = b.put_artifact(&bytes)?;
            let path = b.write_script(&format!("big-{i}.sh"), &bytes)?;
            Ok((digest, path))
        },
        |b, digest, path| {
            std::fs::remove_file(path)?;
            if let Some(d) = edge_proto::digest::from_lower_prefixed(digest) {
                b.orch_rt.block_on(b.store.delete(&d))?;
            }
            Ok(())
        },
    )?;

    let durable = durable_write_times(dir.path(), 30)?;
    println!(
        "this disk ({}), a small file written, fsynced, renamed and its directory fsynced: p50 {} \
         p90 {} (30 samples; the node's supervisor does this before starting a workload)",
        edge_benches::procfs::filesystem_of(dir.path()),
        stats::ms(percentile(&durable, 50.0)),
        stats::ms(percentile(&durable, 90.0))
    );
    println!("{}", load.report());
    println!(
        "polling: every {} us asked, every {:.0} us measured (mean of {} looks): the resolution \
         of every figure below",
        args.poll_us,
        b.poll_time.get().as_secs_f64() * 1e6 / b.polls.get().max(1) as f64,
        b.polls.get()
    );
    println!(
        "where the cached samples ran, warm-up included (replicas 1; the scheduler picks the \
         node with the most free CPU and memory, ties by id): {} sample(s) per node used, {} of \
         {} nodes used",
        cached_placed
            .values()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(" / "),
        cached_placed.len(),
        args.nodes
    );
    report("cached (artifact on the node)", &cached, true);
    report(
        &format!(
            "uncached ({:.1} MiB artifact, a new digest each sample)",
            big as f64 / (1 << 20) as f64
        ),
        &uncached,
        false,
    );

    for mut n in nodes {
        n.stop()
            .map_err(|e| anyhow!("a node stopped with an error: {e}"))?;
    }
    let Bench { orch, orch_rt, .. } = b;
    orch_rt.block_on(orch.shutdown());
    drop(orch_rt);
    let left = std::process::Command::new("pgrep")
        .args(["-cfx", "sleep 600"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    println!("processes running 'sleep 600' after the run (anyone's): {left}");
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("deploy-latency: {e:#}");
            ExitCode::FAILURE
        }
    }
}
