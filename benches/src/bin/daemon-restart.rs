//! `daemon-restart`: how long after the node daemon comes back its workloads run again, after
//! a clean stop (SIGTERM: the daemon stops its workloads) and after a crash (SIGKILL: the
//! workloads are left behind, and the new daemon kills them and starts them afresh), next to
//! the floor: the same processes started directly by this tool.
//!
//! An orchestrator runs in this process; one real `edge-node` (the release binary beside this
//! one) enrolls with it and gets `--workloads` workloads, each a script that `exec`s `sleep`.
//! Each round restarts the daemon and clocks, from the moment the new daemon is spawned:
//! - **processes**: every workload is a child of the new daemon that has exec'd `sleep`
//!   (read from `/proc`, polled every millisecond);
//! - **reported**: the orchestrator holds a `running` report for every workload naming one
//!   of those processes (the node had to reconnect first).
//!
//! The anchor spawns the same number of the same script from here and clocks the same
//! `/proc` condition. Kinds alternate round by round; medians are printed with the ratio to
//! the anchor. A benchmark: it prints figures and never fails on one.

use anyhow::{Context, bail};
use clap::Parser;
use edge_benches::stats::{median, ms, percentile};
use edge_tests::TestOrchestrator;
use orchestrator_core::workload::WorkloadSpec;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A bound on a hang, not a figure.
const WAIT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(1);
const SCRIPT: &[u8] = b"#!/bin/sh\nexec sleep 3600\n";

#[derive(Debug, Parser)]
#[command(
    name = "daemon-restart",
    about = "Time until a restarted node daemon runs its workloads again"
)]
struct Args {
    /// Workloads on the node.
    #[arg(long, default_value_t = 10)]
    workloads: usize,
    /// Rounds of each kind (clean, crash, anchor).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// The node daemon; default: `edge-node` beside this binary.
    #[arg(long)]
    node_bin: Option<PathBuf>,
}

/// The pids of `ppid`'s children whose command is `comm`.
fn children(ppid: u32, comm: &str) -> BTreeSet<u32> {
    let mut out = BTreeSet::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": the comm may hold spaces and parentheses.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = &stat[open + 1..close];
        let mut rest = stat[close + 1..].split_whitespace();
        let state = rest.next();
        let parent = rest.next().and_then(|p| p.parse::<u32>().ok());
        if name == comm && parent == Some(ppid) && state != Some("Z") {
            out.insert(pid);
        }
    }
    out
}

/// Whether `pid` is a process that has not exited (a zombie has: only its entry is left,
/// for a parent that may never reap it).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rfind(')')
            .and_then(|close| stat[close + 1..].split_whitespace().next())
            .is_some_and(|state| state != "Z")
    })
}

/// Polls `check` every millisecond until it holds; the time it took, from `since`. A
/// blocking poll is the point here: its period is the measurement's resolution.
#[allow(clippy::disallowed_methods)]
fn until(since: Instant, what: &str, mut check: impl FnMut() -> bool) -> anyhow::Result<Duration> {
    loop {
        if check() {
            return Ok(since.elapsed());
        }
        if since.elapsed() > WAIT {
            bail!("{what}: not within {WAIT:?}");
        }
        std::thread::sleep(POLL);
    }
}

struct Node {
    bin: PathBuf,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Node {
    fn spawn(&mut self) -> anyhow::Result<u32> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(&self.bin)
            .args(["run", "--config"])
            .arg(&self.config)
            .env("EDGE_LOG", "warn")
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        let pid = child.id();
        self.child = Some(child);
        Ok(pid)
    }

    fn signal(&mut self, signal: &str) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()?;
        child.wait()?;
        Ok(())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.signal("-TERM");
    }
}

/// Every workload reported running by a process in `pids`.
fn reported(orch: &TestOrchestrator, names: &[String], pids: &BTreeSet<u32>) -> bool {
    names.iter().all(|name| {
        orch.orch.reports.of(name).iter().any(|(_, r)| {
            r.report.state == edge_proto::WorkloadState::Running
                && r.report.pid.is_some_and(|p| pids.contains(&p))
        })
    })
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let orch = rt.block_on(TestOrchestrator::start());
    let dir = tempfile::tempdir()?;
    let bin = match args.node_bin {
        Some(b) => b,
        None => std::env::current_exe()?.with_file_name("edge-node"),
    };
    if !bin.exists() {
        bail!(
            "{} is missing: cargo build --release -p node-daemon",
            bin.display()
        );
    }
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            "version = 1\nname = \"restart-1\"\ndata_dir = \"{}\"\n\
             [orchestrator]\naddress = \"{}\"\n[join]\ntoken = \"{}\"\nca_hash = \"{}\"\n",
            dir.path().join("data").display(),
            orch.orch.quic_addr,
            orch.token(1),
            orch.ca_hash()
        ),
    )?;
    let mut node = Node {
        bin,
        config,
        log: dir.path().join("node.log"),
        child: None,
    };
    node.spawn()?;
    let start = Instant::now();
    until(start, "the node online", || orch.online("restart-1"))?;

    let store = &orch.orch.artifacts;
    let stored = rt.block_on(store.put(SCRIPT, None))?;
    let digest = edge_proto::digest::to_prefixed(&stored.digest);
    let names: Vec<String> = (0..args.workloads).map(|i| format!("w-{i}")).collect();
    for name in &names {
        let spec = serde_json::json!({
            "name": name, "version": "1", "artifact": digest,
            "resources": {"cpu_millis": 10, "memory_bytes": 8 << 20}
        });
        let spec = WorkloadSpec::from_json(&serde_json::to_vec(&spec)?)?;
        let (ok, committed) = orch
            .orch
            .deployments
            .deploy(|d| match d.apply(spec, stored.size) {
                Ok((_, e)) => (Ok(()), e),
                Err(e) => (Err(e), Vec::new()),
            });
        ok?;
        rt.block_on(committed.wait())?;
    }
    let pid = node.child.as_ref().map(Child::id).context("node running")?;
    until(Instant::now(), "the first start", || {
        let pids = children(pid, "sleep");
        pids.len() == args.workloads && reported(&orch, &names, &pids)
    })?;

    let script = dir.path().join("anchor.sh");
    std::fs::write(&script, SCRIPT)?;
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;

    let mut clean = (Vec::new(), Vec::new());
    let mut crash = (Vec::new(), Vec::new());
    let mut anchor = Vec::new();
    let mut orphans_left = 0usize;
    for round in 0..args.rounds {
        for kind in 0..3 {
            match (round + kind) % 3 {
                0 => {
                    node.signal("-TERM")?;
                    let t0 = Instant::now();
                    let pid = node.spawn()?;
                    let (p, r) = restart_times(&orch, &names, pid, t0)?;
                    clean.0.push(p);
                    clean.1.push(r);
                }
                1 => {
                    let old = node.child.as_ref().map(Child::id).context("node running")?;
                    let left = children(old, "sleep");
                    node.signal("-KILL")?;
                    let t0 = Instant::now();
                    let pid = node.spawn()?;
                    let (p, r) = restart_times(&orch, &names, pid, t0)?;
                    crash.0.push(p);
                    crash.1.push(r);
                    orphans_left += left.iter().filter(|p| alive(**p)).count();
                }
                _ => anchor.push(run_anchor(&script, args.workloads)?),
            }
        }
    }
    drop(node);

    println!(
        "daemon restart, {} workloads, {} rounds (date: see the script)",
        args.workloads, args.rounds
    );
    let floor = median(&anchor);
    let row = |label: &str, samples: &[Duration]| {
        let m = median(samples);
        let ratio = match (m, floor) {
            (Some(m), Some(f)) if !f.is_zero() => {
                format!("{:.1}x", m.as_secs_f64() / f.as_secs_f64())
            }
            _ => "-".into(),
        };
        println!(
            "  {label:<38} median {:>9}  max {:>9}  vs floor {ratio}",
            ms(m),
            ms(percentile(samples, 100.0))
        );
    };
    row("clean stop: processes running", &clean.0);
    row("clean stop: reported running", &clean.1);
    row("crash (SIGKILL): processes running", &crash.0);
    row("crash (SIGKILL): reported running", &crash.1);
    row("floor: the same processes spawned here", &anchor);
    println!(
        "  processes of a killed daemon still alive after its successor started: {orphans_left}"
    );
    println!("  goal: running again within 2 s of the daemon coming back");
    Ok(())
}

/// From `t0` (the new daemon spawned as `pid`): until every workload is its running child,
/// and until the orchestrator has a running report naming each of those processes.
fn restart_times(
    orch: &TestOrchestrator,
    names: &[String],
    pid: u32,
    t0: Instant,
) -> anyhow::Result<(Duration, Duration)> {
    let n = names.len();
    let processes = until(t0, "workloads running again", || {
        children(pid, "sleep").len() == n
    })?;
    let reported = until(t0, "workloads reported running again", || {
        reported(orch, names, &children(pid, "sleep"))
    })?;
    Ok((processes, reported))
}

/// Spawns `n` copies of the script from here and clocks until all have exec'd `sleep`.
fn run_anchor(script: &Path, n: usize) -> anyhow::Result<Duration> {
    let me = std::process::id();
    let t0 = Instant::now();
    let mut kids = Vec::with_capacity(n);
    for _ in 0..n {
        kids.push(
            Command::new(script)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?,
        );
    }
    let took = until(t0, "anchor processes", || children(me, "sleep").len() == n);
    for mut k in kids {
        let _ = k.kill();
        let _ = k.wait();
    }
    took
}
