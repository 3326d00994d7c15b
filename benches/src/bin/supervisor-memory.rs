//! `supervisor-memory`: how much the node daemon's own memory grows per workload it
//! supervises, next to a naive supervisor measured the same way.
//!
//! Each measurement runs in a fresh process: this binary runs itself as a child with
//! `--mode`. In that process a current-thread tokio runtime (as `edge-node run` builds it)
//! drives either
//! - ours: `node_daemon::supervisor::Supervisor` over a temp data dir, with the rlimit backend
//!   and, where `LimitsBackend::detect` finds one, the cgroup backend (a parent group of its
//!   own, removed at the end); or
//! - the anchor: what people run on a Pi without us, each child spawned with
//!   `tokio::process::Command`, its handle held, and one task per child reading its stdout and
//!   stderr into a log file. No cgroups, no restart logic, no status, no stored specs.
//!
//! Both run the same tiny long-lived process (`/bin/sleep 3600` by default). The process
//! measures its own `VmRSS` once it has settled (polled until it stops changing), applies
//! workloads up to each of `--counts`, waits until every one is running (ours: `Running` in
//! `statuses()`; both: the pid has exec'd the command), and measures again. The children's own
//! memory is summed separately (`VmRSS`, which counts shared libc pages once per process, and
//! `Pss`, which shares them out): it is not the daemon's. At the end every child is stopped
//! (`Supervisor::shutdown`, or kill and wait) and checked gone; the driver checks again after
//! the child process has exited and kills, and reports, anything left.
//!
//! The driver alternates subjects for `--rounds` rounds, rotating which goes first, and prints
//! medians, the slope (least squares of RSS over the number of workloads) and the ratio ours /
//! anchor. A benchmark: it prints figures and never fails on one.

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use edge_benches::procfs;
use edge_benches::stats::median_f64;
use node_daemon::supervisor::{LimitsBackend, State, Supervisor, SupervisorOptions, WorkloadSpec};
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead};
use tokio::time::{Instant, interval};

/// Published anchors, printed for context (Greengrass's figure as /work/shared/BENCHMARKS.md
/// gives it); neither is run here.
const ANCHOR_SHIM: &str = "containerd-shim-runc-v2: a separate process of several MiB per \
                           container (one shim per container, on top of containerd itself)";
const ANCHOR_GREENGRASS: &str = "Greengrass nucleus lite: < 5-15 MB for the whole daemon";

/// How long to wait for anything that should take seconds; a bound on a hang.
const WAIT: Duration = Duration::from_secs(60);
/// `VmRSS` is settled when it reads the same this many times in a row, `SETTLE_POLL` apart.
const SETTLE_SAME: u32 = 5;
const SETTLE_POLL: Duration = Duration::from_millis(100);
/// Measure anyway after this long (a runtime that keeps allocating would never settle).
const SETTLE_MAX: Duration = Duration::from_secs(5);

#[derive(Debug, Parser)]
#[command(
    name = "supervisor-memory",
    about = "The node daemon's memory per supervised workload, against a naive supervisor"
)]
struct Args {
    /// Numbers of workloads to measure at, cumulative, in increasing order.
    #[arg(long, value_delimiter = ',', default_value = "10,50,100")]
    counts: Vec<usize>,
    /// Rounds of each subject, alternating.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// The workload's executable and arguments (a long-running process that prints nothing).
    #[arg(long, default_value = "/bin/sleep")]
    command: PathBuf,
    /// An argument of the workload; repeat for several.
    #[arg(long, default_value = "3600", allow_hyphen_values = true)]
    arg: Vec<String>,
    /// Measure only with the rlimit backend, even where cgroups are usable.
    #[arg(long)]
    rlimit_only: bool,
    /// Internal: run one measurement in this process and print it.
    #[arg(long, value_enum, hide = true)]
    mode: Option<Mode>,
}

/// One subject, measured in its own process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Our supervisor with the rlimit backend.
    OursRlimit,
    /// Our supervisor with what `LimitsBackend::detect` finds.
    OursDetected,
    /// `tokio::process` children, their handles and a log-reader task each.
    Anchor,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Self::OursRlimit | Self::OursDetected => "ours",
            Self::Anchor => "anchor: tokio::process + a log task each",
        }
    }

    /// The `--mode` value, as clap spells it.
    fn flag(self) -> &'static str {
        match self {
            Self::OursRlimit => "ours-rlimit",
            Self::OursDetected => "ours-detected",
            Self::Anchor => "anchor",
        }
    }

    fn metric_key(self) -> &'static str {
        match self {
            Self::OursRlimit => "ours_rlimit",
            Self::OursDetected => "ours_detected",
            Self::Anchor => "anchor",
        }
    }
}

// --- the measuring process ------------------------------------------------------------------

/// One line of `/proc/PID/status` or `/proc/PID/smaps_rollup`, in its unit (kB or a count).
fn proc_field(path: &Path, name: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// What this process holds, read once `VmRSS` has settled.
#[derive(Debug, Clone, Copy)]
struct Own {
    rss_kib: u64,
    anon_kib: u64,
    threads: u64,
}

async fn settled_own() -> anyhow::Result<Own> {
    let start = Instant::now();
    let mut tick = interval(SETTLE_POLL);
    let (mut last, mut same) = (u64::MAX, 0);
    loop {
        tick.tick().await;
        let rss = procfs::memory(None)
            .context("reading /proc/self/status")?
            .rss_kib;
        if rss == last {
            same += 1;
        } else {
            (last, same) = (rss, 1);
        }
        if same >= SETTLE_SAME || start.elapsed() >= SETTLE_MAX {
            let status = Path::new("/proc/self/status");
            return Ok(Own {
                rss_kib: rss,
                anon_kib: proc_field(status, "RssAnon").unwrap_or(0),
                threads: proc_field(status, "Threads").unwrap_or(0),
            });
        }
    }
}

/// The process exists and is not a zombie.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|t| {
            let rest = &t[t.rfind(')')? + 1..];
            rest.split_whitespace().next()?.chars().next()
        })
        .is_some_and(|state| !matches!(state, 'Z' | 'X' | 'x'))
}

/// The process has exec'd `command` (ours starts each workload through a `/bin/sh` gate).
/// Compared after resolving links: `/bin` is often a link to `/usr/bin`.
fn runs(pid: u32, command: &Path) -> bool {
    let command = std::fs::canonicalize(command).unwrap_or_else(|_| command.to_owned());
    std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe == command)
}

/// Prints one level: this process's memory and the children's, as the driver parses it.
async fn report_level(n: usize, pids: &[u32]) -> anyhow::Result<()> {
    let own = settled_own().await?;
    let (mut rss, mut pss) = (0, 0);
    for pid in pids {
        rss += proc_field(Path::new(&format!("/proc/{pid}/status")), "VmRSS").unwrap_or(0);
        pss += proc_field(Path::new(&format!("/proc/{pid}/smaps_rollup")), "Pss").unwrap_or(0);
    }
    let listed: Vec<String> = pids.iter().map(u32::to_string).collect();
    println!("pids {}", listed.join(" "));
    println!(
        "level {n} rss_kib {} anon_kib {} threads {} children {} children_rss_kib {rss} \
         children_pss_kib {pss}",
        own.rss_kib,
        own.anon_kib,
        own.threads,
        pids.len()
    );
    std::io::stdout().flush()?;
    Ok(())
}

/// Polls `check` until it returns `Some`, or fails after [`WAIT`].
async fn until<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> anyhow::Result<T> {
    let start = Instant::now();
    let mut tick = interval(Duration::from_millis(10));
    loop {
        tick.tick().await;
        if let Some(v) = check() {
            return Ok(v);
        }
        if start.elapsed() >= WAIT {
            bail!("waited {WAIT:?} for {what}");
        }
    }
}

async fn measure_ours(args: &Args, limits: LimitsBackend) -> anyhow::Result<()> {
    let data = tempfile::tempdir().context("temp data dir")?;
    let options = SupervisorOptions {
        cgroup_parent: format!("edge-bench-memory-{}", std::process::id()),
        ..SupervisorOptions::default()
    };
    let parent = options.cgroup_parent.clone();
    let sup = Supervisor::open_with(data.path(), limits, options)
        .await
        .context("opening the supervisor")?;
    let backend = sup.limits().clone();
    println!("backend {}", backend.name());
    let mut pids = Vec::new();
    let result = apply_levels(args, &sup, &mut pids).await;
    sup.shutdown().await;
    println!("left {}", pids.iter().filter(|&&p| alive(p)).count());
    remove_parent_groups(&backend, &parent);
    result
}

/// Applies workloads up to each count and reports each level; `pids` ends with every
/// workload's pid.
async fn apply_levels(args: &Args, sup: &Supervisor, pids: &mut Vec<u32>) -> anyhow::Result<()> {
    report_level(0, &[]).await?;
    let mut applied = 0;
    for &n in &args.counts {
        while applied < n {
            let mut spec = WorkloadSpec::new(format!("w{applied}"), "1", &args.command);
            spec.args = args.arg.clone();
            spec.stop_grace_ms = 2_000;
            sup.apply(spec).await.context("apply")?;
            applied += 1;
        }
        *pids = until("every workload Running", || {
            let statuses = sup.statuses();
            let running: Vec<u32> = statuses
                .iter()
                .filter(|s| s.state == State::Running)
                .filter_map(|s| s.pid)
                .filter(|&p| runs(p, &args.command))
                .collect();
            (running.len() == applied).then_some(running)
        })
        .await?;
        report_level(n, pids).await?;
    }
    Ok(())
}

/// The parent control groups this run created: the supervisor leaves them (the daemon keeps
/// one for its life), a benchmark must not.
fn remove_parent_groups(backend: &LimitsBackend, parent: &str) {
    let dirs = match backend {
        LimitsBackend::CgroupV2 { root } => vec![root.join(parent)],
        LimitsBackend::CgroupV1 { root } => {
            vec![
                root.join("memory").join(parent),
                root.join("cpu").join(parent),
            ]
        }
        LimitsBackend::Rlimit => Vec::new(),
    };
    for dir in dirs.iter().filter(|d| d.is_dir()) {
        // Workload groups are removed as each instance ends; an empty leftover goes too.
        for group in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if group.file_type().is_ok_and(|t| t.is_dir()) {
                let _ = std::fs::remove_dir(group.path());
            }
        }
        if let Err(e) = std::fs::remove_dir(dir) {
            eprintln!("supervisor-memory: cannot remove {}: {e}", dir.display());
        }
    }
}

/// The anchor's per-child task: every line the child prints, appended to its log file.
async fn log_lines(stdout: impl AsyncRead + Unpin, stderr: impl AsyncRead + Unpin, path: PathBuf) {
    let mut out = tokio::io::BufReader::new(stdout).lines();
    let mut err = tokio::io::BufReader::new(stderr).lines();
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .ok();
    let (mut out_open, mut err_open) = (true, true);
    while out_open || err_open {
        let line = tokio::select! {
            l = out.next_line(), if out_open => match l {
                Ok(Some(line)) => Some(line),
                _ => {
                    out_open = false;
                    None
                }
            },
            l = err.next_line(), if err_open => match l {
                Ok(Some(line)) => Some(line),
                _ => {
                    err_open = false;
                    None
                }
            },
        };
        if let (Some(line), Some(f)) = (line, file.as_mut()) {
            let _ = writeln!(f, "{line}");
        }
    }
}

async fn measure_anchor(args: &Args) -> anyhow::Result<()> {
    let logs = tempfile::tempdir().context("temp log dir")?;
    println!("backend no-limits");
    let mut children: Vec<tokio::process::Child> = Vec::new();
    let mut readers = Vec::new();
    let result = async {
        report_level(0, &[]).await?;
        for &n in &args.counts {
            while children.len() < n {
                let mut child = tokio::process::Command::new(&args.command)
                    .args(&args.arg)
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .kill_on_drop(true)
                    .spawn()
                    .context("spawning a child")?;
                let (Some(out), Some(err)) = (child.stdout.take(), child.stderr.take()) else {
                    bail!("spawned without pipes");
                };
                let path = logs.path().join(format!("w{}.log", children.len()));
                readers.push(tokio::spawn(log_lines(out, err, path)));
                children.push(child);
            }
            let pids: Vec<u32> = children.iter().filter_map(|c| c.id()).collect();
            until("every child exec'd", || {
                pids.iter().all(|&p| runs(p, &args.command)).then_some(())
            })
            .await?;
            report_level(n, &pids).await?;
        }
        Ok(())
    }
    .await;
    let pids: Vec<u32> = children.iter().filter_map(|c| c.id()).collect();
    for child in &mut children {
        let _ = child.start_kill();
    }
    for child in &mut children {
        let _ = child.wait().await;
    }
    for reader in readers {
        let _ = reader.await;
    }
    println!("left {}", pids.iter().filter(|&&p| alive(p)).count());
    result
}

fn measure(args: &Args, mode: Mode) -> anyhow::Result<()> {
    // As `edge-node run` builds it: one thread, the node is I/O-bound.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        match mode {
            Mode::OursRlimit => measure_ours(args, LimitsBackend::Rlimit).await,
            Mode::OursDetected => measure_ours(args, LimitsBackend::detect()).await,
            Mode::Anchor => measure_anchor(args).await,
        }
    })
}

// --- the driver -----------------------------------------------------------------------------

/// One level as a measuring process printed it.
#[derive(Debug, Clone, Copy, Default)]
struct Level {
    n: usize,
    rss_kib: f64,
    anon_kib: f64,
    threads: f64,
    children_rss_kib: f64,
    children_pss_kib: f64,
}

/// One measuring process's output.
#[derive(Debug, Default)]
struct Run {
    backend: String,
    levels: Vec<Level>,
    pids: BTreeSet<u32>,
    left: usize,
}

impl Run {
    /// Least-squares slope of RSS over the number of workloads, in KiB per workload.
    fn slope_kib(&self, field: impl Fn(&Level) -> f64) -> f64 {
        let n = self.levels.len() as f64;
        let mx = self.levels.iter().map(|l| l.n as f64).sum::<f64>() / n;
        let my = self.levels.iter().map(&field).sum::<f64>() / n;
        let (mut sxy, mut sxx) = (0.0, 0.0);
        for l in &self.levels {
            let dx = l.n as f64 - mx;
            sxy += dx * (field(l) - my);
            sxx += dx * dx;
        }
        if sxx > 0.0 { sxy / sxx } else { 0.0 }
    }
}

fn parse_run(text: &str) -> anyhow::Result<Run> {
    let mut run = Run::default();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["backend", name] => run.backend = (*name).to_owned(),
            ["left", n] => run.left = n.parse()?,
            ["pids", rest @ ..] => {
                for p in rest {
                    run.pids.insert(p.parse()?);
                }
            }
            ["level", n, rest @ ..] => {
                let get = |key: &str| -> anyhow::Result<f64> {
                    rest.chunks(2)
                        .find(|kv| kv.first() == Some(&key))
                        .and_then(|kv| kv.get(1)?.parse().ok())
                        .with_context(|| format!("no {key} in {line:?}"))
                };
                run.levels.push(Level {
                    n: n.parse()?,
                    rss_kib: get("rss_kib")?,
                    anon_kib: get("anon_kib")?,
                    threads: get("threads")?,
                    children_rss_kib: get("children_rss_kib")?,
                    children_pss_kib: get("children_pss_kib")?,
                });
            }
            _ => {}
        }
    }
    if run.levels.len() < 2 {
        bail!("fewer than two levels measured");
    }
    Ok(run)
}

/// Kills, and counts, any child a measuring process left alive (it may have aborted).
fn reap_leftovers(pids: &BTreeSet<u32>, command: &Path) -> usize {
    let mut left = 0;
    for &pid in pids {
        if alive(pid) && runs(pid, command) {
            left += 1;
            if let Ok(raw) = i32::try_from(pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(raw),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
    left
}

fn run_subject(args: &Args, mode: Mode) -> anyhow::Result<(Run, usize)> {
    let exe = std::env::current_exe().context("this binary's path")?;
    let counts: Vec<String> = args.counts.iter().map(usize::to_string).collect();
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("--mode")
        .arg(mode.flag())
        .arg("--counts")
        .arg(counts.join(","))
        .arg("--command")
        .arg(&args.command);
    for a in &args.arg {
        cmd.arg(format!("--arg={a}"));
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting a measuring process")?;
    let mut text = String::new();
    let mut pids = BTreeSet::new();
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines() {
            let line = line.context("reading the measuring process")?;
            // Keep every pid as soon as it is printed, to clean up after an abort.
            if let Some(rest) = line.strip_prefix("pids ") {
                pids.extend(
                    rest.split_whitespace()
                        .filter_map(|p| p.parse::<u32>().ok()),
                );
            }
            text.push_str(&line);
            text.push('\n');
        }
    }
    let status = child.wait().context("waiting for the measuring process")?;
    let leftovers = reap_leftovers(&pids, &args.command);
    if !status.success() {
        bail!("{:?} measuring process failed: {status}", mode);
    }
    Ok((parse_run(&text)?, leftovers))
}

fn mib(kib: f64) -> String {
    format!("{:.2}", kib / 1024.0)
}

fn drive(args: &Args) -> anyhow::Result<()> {
    if args.counts.is_empty() || args.counts.windows(2).any(|w| w[0] >= w[1]) {
        bail!("--counts must be increasing");
    }
    let detected = LimitsBackend::detect();
    let mut subjects = vec![Mode::OursRlimit];
    if detected != LimitsBackend::Rlimit && !args.rlimit_only {
        subjects.push(Mode::OursDetected);
    }
    subjects.push(Mode::Anchor);
    let workload = std::iter::once(args.command.display().to_string())
        .chain(args.arg.iter().cloned())
        .collect::<Vec<_>>()
        .join(" ");
    println!(
        "supervisor-memory: {} subjects x {} rounds, alternating (order rotated each round), \
         each in a fresh process with a current-thread runtime; workloads `{workload}` applied up \
         to {:?}; LimitsBackend::detect() here: {}",
        subjects.len(),
        args.rounds,
        args.counts,
        detected.name()
    );

    let mut runs: Vec<Vec<Run>> = subjects.iter().map(|_| Vec::new()).collect();
    let mut leftovers = 0;
    for round in 0..args.rounds {
        for k in 0..subjects.len() {
            let i = (k + round) % subjects.len();
            let mode = subjects[i];
            let (run, left) = run_subject(args, mode)?;
            leftovers += left + run.left;
            let levels: Vec<String> = run
                .levels
                .iter()
                .map(|l| format!("{}: {}", l.n, mib(l.rss_kib)))
                .collect();
            println!(
                "round {} {:<50} RSS MiB at {}; slope {:.1} KiB/workload; children left after \
                 stop: {}",
                round + 1,
                format!("{}, {}", mode.label(), run.backend),
                levels.join(", "),
                run.slope_kib(|l| l.rss_kib),
                run.left + left
            );
            runs[i].push(run);
        }
    }

    let top = *args.counts.last().unwrap_or(&0);
    println!();
    println!(
        "medians of {} rounds (RSS of the supervising process; the children are separate):",
        args.rounds
    );
    let mut slopes = Vec::new();
    for (i, mode) in subjects.iter().enumerate() {
        let rs = &runs[i];
        let backend = rs.first().map_or("-", |r| r.backend.as_str());
        let med = |f: &dyn Fn(&Run) -> f64| median_f64(&rs.iter().map(f).collect::<Vec<_>>());
        let at = |n: usize, f: fn(&Level) -> f64| {
            med(&|r: &Run| r.levels.iter().find(|l| l.n == n).map_or(f64::NAN, f)).unwrap_or(0.0)
        };
        let slope = med(&|r: &Run| r.slope_kib(|l| l.rss_kib)).unwrap_or(0.0);
        let anon_slope = med(&|r: &Run| r.slope_kib(|l| l.anon_kib)).unwrap_or(0.0);
        let per_step: Vec<String> = std::iter::once(0)
            .chain(args.counts.iter().copied())
            .map(|n| format!("{n}: {}", mib(at(n, |l| l.rss_kib))))
            .collect();
        let name = format!("{}, {backend}", mode.label());
        println!("  {name}");
        println!("    VmRSS MiB at {}", per_step.join(", "));
        println!(
            "    slope {slope:.1} KiB = {:.0} bytes per workload (RssAnon {anon_slope:.1} KiB); \
             threads {:.0} at 0, {:.0} at {top}",
            slope * 1024.0,
            at(0, |l| l.threads),
            at(top, |l| l.threads)
        );
        let crss = at(top, |l| l.children_rss_kib);
        let cpss = at(top, |l| l.children_pss_kib);
        println!(
            "    the {top} children themselves: VmRSS sum {} MiB ({:.0} KiB each), Pss sum {} MiB \
             ({:.0} KiB each)",
            mib(crss),
            crss / top.max(1) as f64,
            mib(cpss),
            cpss / top.max(1) as f64
        );
        let key = mode.metric_key();
        println!("metric supervisor_memory.{key}.backend_{backend} 1");
        println!(
            "metric supervisor_memory.{key}.rss_at_0_kib {:.0}",
            at(0, |l| l.rss_kib)
        );
        for &n in &args.counts {
            println!(
                "metric supervisor_memory.{key}.rss_at_{n}_kib {:.0}",
                at(n, |l| l.rss_kib)
            );
        }
        println!(
            "metric supervisor_memory.{key}.slope_bytes {:.0}",
            slope * 1024.0
        );
        println!("metric supervisor_memory.{key}.children_rss_at_{top}_kib {crss:.0}");
        slopes.push((name, slope));
    }
    println!();
    let anchor = slopes.last().map_or(0.0, |s| s.1);
    for (name, slope) in slopes.iter().take(slopes.len().saturating_sub(1)) {
        if anchor > 0.0 {
            println!(
                "ratio ours/anchor, bytes per workload: {name}: {:.2}x ({:.0} / {:.0} bytes)",
                slope / anchor,
                slope * 1024.0,
                anchor * 1024.0
            );
        } else {
            println!("ratio ours/anchor: {name}: the anchor's slope is not positive");
        }
    }
    println!("published anchors, for context: {ANCHOR_SHIM}; {ANCHOR_GREENGRASS}");
    println!("children left running after all rounds: {leftovers}");
    println!("metric supervisor_memory.children_left {leftovers}");
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match args.mode {
        Some(mode) => measure(&args, mode),
        None => drive(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("supervisor-memory: {e:#}");
            ExitCode::FAILURE
        }
    }
}
