//! `api-placements`: placements per second through `POST /v1/workloads`, each answer given
//! only once its deployment is stored, next to the scheduler core placing the same specs on
//! the same nodes.
//!
//! The orchestrator runs in this process (`Orchestrator::start`, as `edge-orchestrator serve`)
//! on a multi-thread tokio runtime of its own with one worker per core, over a sled store in a
//! real on-disk directory. A fleet of `--nodes` simulated nodes, on a one-thread runtime of
//! their own, enrolls and holds real QUIC sessions from many loopback addresses, as
//! `fleet-sim` does (the same `edge_benches::sim` code), but each node reports capabilities of
//! its own: architectures, `site` and `tier` labels, accelerators, CPUs and memory vary by
//! node, so requirements filter. The nodes read and count the `Assign` messages
//! they get and never answer them, so every instance stays pending.
//!
//! `--clients` OS threads, each with one keep-alive HTTP connection (ureq), POST `--workloads`
//! specs with distinct names in `--rounds` slices. Five shapes of requirements (arch + site
//! label; site + tier labels; two architectures; an NPU; arch + tier) alternate with
//! `replicas` 1 and 10, and small CPU and memory requests. A placement is an instance bound:
//! the length of `instances` in the answer. Placements and workloads per second are over the
//! wall time of a slice, from the first request to the last answer.
//!
//! The anchor, after each slice: the scheduler core alone (`Scheduler::place`) over
//! `NodeView`s made from the orchestrator's own node records (`NodeView::from_record`, as the
//! orchestrator makes them), placing the same parsed specs in the same order into a snapshot
//! that has already placed the earlier slices, so both fill the same fleet. Timed
//! `--core-repeats` times from a copy of the snapshot, median; once more with
//! `Scheduler::explain` after each placement, the price of an answer that explains (a
//! deployment short of instances, a per-node workload).
//!
//! Where the time goes, during the API slices: the machine's CPU by kind (`/proc/stat`) and
//! this process's share; CPU of every thread by role (`/proc/self/task`); how long the
//! runtime's workers and the committer (`deploy-commit`, which stores each batch with one
//! flush) ran, waited for a CPU or slept (`schedstat`), and what they were blocked in, sampled
//! from `/proc/self/task/TID/syscall`; and the store's write calls and bytes
//! (`/proc/self/task/TID/io`). At the end the store is read back: every answered deployment
//! must be in it with its instances.
//!
//! A benchmark: it prints figures and never fails on one.

use anyhow::{Context, anyhow, bail};
use clap::Parser;
use edge_benches::fleet::SITES;
use edge_benches::stats::{self, median_f64, percentile};
use edge_benches::{fixtures, in_process, pause, procfs, sim};
use edge_proto::quic::{read_frame, write_msg};
use edge_proto::{AcceleratorKind, Capabilities, Location, NodeMsg, OrchMsg, decode, text};
use orchestrator::app::Orchestrator;
use orchestrator_core::scheduler::{NodeView, Scheduler};
use orchestrator_core::workload::WorkloadSpec;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, mpsc, watch};

/// Published placement rates (see /work/shared/BENCHMARKS.md), and our goals.
const ANCHOR_NOMAD_C1M: f64 = 3750.0;
const GOAL_API: f64 = 10_000.0;
const GOAL_CORE: f64 = 50_000.0;

/// How long to wait for anything that takes seconds; a bound on a hang.
const WAIT: Duration = Duration::from_secs(120);
const MIB: u64 = 1 << 20;
/// The names of the orchestrator runtime's worker threads start with this.
const WORKER_PREFIX: &str = "orch-rt-w";
const GIB: u64 = 1 << 30;

#[derive(Debug, Parser)]
#[command(
    name = "api-placements",
    about = "Placements per second through the operator API, persisted, against the scheduler core"
)]
struct Args {
    /// Simulated nodes.
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    /// Simulated nodes per loopback source address (127.0.1.1, 127.0.1.2, ...).
    #[arg(long, default_value_t = 200)]
    per_address: usize,
    /// Simulated nodes enrolling or opening a session at the same time.
    #[arg(long, default_value_t = 32)]
    enroll_concurrency: usize,
    /// Workloads to deploy, with distinct names.
    #[arg(long, default_value_t = 20_000)]
    workloads: usize,
    /// Concurrent HTTP clients, one keep-alive connection each.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Slices of the workloads; after each, the core places the same slice.
    #[arg(long, default_value_t = 4)]
    rounds: usize,
    /// Timed repeats of each core slice (from a copy of the snapshot); the median counts.
    #[arg(long, default_value_t = 5)]
    core_repeats: usize,
    /// The orchestrator's data dir; by default a new one under the temp dir, removed after.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Interval of the committer's syscall samples, in microseconds.
    #[arg(long, default_value_t = 1000)]
    sample_us: u64,
}

// ---- the simulated fleet ---------------------------------------------------------------------

/// A deterministic mix of the bits of `i`, so node `i` is the same node in every run.
fn mix(i: u64) -> u64 {
    let mut z = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// What node `i` reports: its site by index (83 or 84 nodes a site), and by hash its
/// architecture (60% aarch64, 25% x86_64, 15% arm), tier (20% `core`), accelerators (20%
/// an NPU, 10% a GPU, 20% a camera), CPUs and memory.
fn capabilities(i: usize, hostname: &str) -> Capabilities {
    let h = mix(i as u64);
    let (site, lat, lon) = SITES[i % SITES.len()];
    let arch = match h % 20 {
        0..=11 => "aarch64",
        12..=16 => "x86_64",
        _ => "arm",
    };
    let tier = if (h >> 8).is_multiple_of(5) {
        "core"
    } else {
        "edge"
    };
    let big = (h >> 12).is_multiple_of(2);
    let (cpus, memory) = match arch {
        "x86_64" => (
            if big { 16 } else { 8 },
            if big { 32 * GIB } else { 16 * GIB },
        ),
        "aarch64" => (if big { 8 } else { 4 }, if big { 8 * GIB } else { 4 * GIB }),
        _ => (4, 4 * GIB),
    };
    let accelerators: &[(AcceleratorKind, &str, &str)] = match (h >> 16) % 10 {
        0 | 1 => &[(AcceleratorKind::Npu, "Hailo-8L", "/dev/hailo0")],
        2 => &[(AcceleratorKind::Gpu, "v3d", "/dev/dri/renderD128")],
        3 | 4 => &[(AcceleratorKind::Video, "uvc", "/dev/video0")],
        _ => &[],
    };
    // Scattered within ~10 km of the site's centre.
    let jitter = |shift: u32| ((h >> shift) % 1000) as f64 / 1000.0 * 0.2 - 0.1;
    Capabilities {
        arch: text(arch),
        os: text("linux"),
        os_version: text("Debian GNU/Linux 12 (bookworm)"),
        kernel: text("6.6.51"),
        hostname: text(hostname),
        cpus,
        cpu_model: text("simulated"),
        memory_bytes: memory,
        disk_bytes: 64 * GIB,
        disk_free_bytes: 32 * GIB,
        accelerators: fixtures::accelerators_of(accelerators),
        board: None,
        labels: fixtures::labels_of(&[("site", site), ("tier", tier)]),
        location: Some(Location {
            lat: lat + jitter(24),
            lon: lon + jitter(40),
            alt_m: None,
        }),
    }
}

/// Counters shared by the simulated nodes.
#[derive(Debug, Default)]
struct FleetCounters {
    live: AtomicUsize,
    assigns: AtomicU64,
    unassigns: AtomicU64,
}

/// One simulated node: enrolls, opens its session, then reads what the orchestrator sends
/// (counting assignments) and sends a status every 10 s until told to stop.
async fn sim_node(
    i: usize,
    source: IpAddr,
    kit: Arc<sim::Kit>,
    gate: Arc<Semaphore>,
    counters: Arc<FleetCounters>,
    joined: mpsc::UnboundedSender<anyhow::Result<()>>,
    mut stop: watch::Receiver<bool>,
) {
    let name = format!("sim{}-{i}", std::process::id());
    let caps = capabilities(i, &name);
    let started = sim::join(i, &name, source, &kit, &gate, &caps).await;
    let (
        endpoint,
        sim::Session {
            conn,
            mut send,
            mut recv,
        },
    ) = match started {
        Ok(node) => {
            counters.live.fetch_add(1, Ordering::SeqCst);
            let _ = joined.send(Ok(()));
            (node.endpoint, node.session)
        }
        Err(e) => {
            let _ = joined.send(Err(e));
            return;
        }
    };
    let period = Duration::from_secs(10);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let boot = Instant::now();
    // Reading is a task of its own: `read_frame` is not cancel-safe, and racing it against
    // the status tick would drop a half-read frame and read the rest of the stream out of step.
    let mut reader = tokio::spawn({
        let counters = counters.clone();
        async move {
            while let Ok(Some(body)) = read_frame(&mut recv).await {
                match decode::<OrchMsg>(&body) {
                    Ok(OrchMsg::Assign(_)) => {
                        counters.assigns.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(OrchMsg::Unassign(_)) => {
                        counters.unassigns.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {}
                }
            }
        }
    });
    loop {
        tokio::select! {
            _ = &mut reader => break,
            _ = tick.tick() => {
                let status = fixtures::status(boot.elapsed().as_secs());
                let _ = write_msg(&mut send, &NodeMsg::Status(status)).await;
            }
            _ = stop.changed() => break,
        }
    }
    reader.abort();
    counters.live.fetch_sub(1, Ordering::SeqCst);
    conn.close(0u32.into(), b"api-placements done");
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
}

/// The running fleet.
struct Fleet {
    counters: Arc<FleetCounters>,
    stop: watch::Sender<bool>,
    tasks: tokio::task::JoinSet<()>,
}

/// Starts `args.nodes` simulated nodes on `rt` and waits until every one has its session.
fn start_fleet(
    rt: &tokio::runtime::Runtime,
    orch: &Orchestrator,
    args: &Args,
) -> anyhow::Result<Fleet> {
    let token = orch
        .registry
        .create_token(3600, u32::try_from(args.nodes)?, "api-placements".into())?
        .0;
    let pin = pin_of(&orch.registry.ca().hash())?;
    let kit = Arc::new(sim::Kit::new(orch.quic_addr, token, pin, "sim")?);
    let counters = Arc::new(FleetCounters::default());
    let gate = Arc::new(Semaphore::new(args.enroll_concurrency.max(1)));
    let (joined_tx, mut joined_rx) = mpsc::unbounded_channel();
    let (stop, stop_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..args.nodes {
        tasks.spawn_on(
            sim_node(
                i,
                sim::source_address(i, args.per_address),
                kit.clone(),
                gate.clone(),
                counters.clone(),
                joined_tx.clone(),
                stop_rx.clone(),
            ),
            rt.handle(),
        );
    }
    drop(joined_tx);
    let errors = rt.block_on(async {
        let mut errors = Vec::new();
        for _ in 0..args.nodes {
            match joined_rx.recv().await {
                Some(Ok(())) => {}
                Some(Err(e)) => errors.push(format!("{e:#}")),
                None => break,
            }
        }
        errors
    });
    if let Some(e) = errors.first() {
        bail!("{} simulated nodes failed to join, e.g. {e}", errors.len());
    }
    Ok(Fleet {
        counters,
        stop,
        tasks,
    })
}

fn pin_of(hash: &str) -> anyhow::Result<[u8; 32]> {
    let hex = hash.strip_prefix("sha256:").context("a sha256: CA hash")?;
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2).context("short CA hash")?, 16)?;
    }
    Ok(out)
}

// ---- the workloads ---------------------------------------------------------------------------

/// The requirement shapes, by `i % 5`; each cuts the fleet differently.
const SHAPES: [&str; 5] = [
    "arch aarch64 + site label (~50 nodes)",
    "site + tier=edge labels (~67 nodes)",
    "arch x86_64 or aarch64 (~850 nodes)",
    "device npu (~200 nodes)",
    "arch x86_64 + tier=core label (~50 nodes)",
];

/// Workload `i` of this run: its shape by `i % 5`, `replicas` 1 and 10 in turn every five
/// workloads, small CPU and memory requests so that the fleet never fills up.
fn spec(i: usize, run: &str, digest: &str) -> Value {
    let site = SITES[(i * 7 + i / SITES.len()) % SITES.len()].0;
    let requirements = match i % 5 {
        0 => json!({"arch": ["aarch64"], "labels": {"site": site}}),
        1 => json!({"labels": {"site": site, "tier": "edge"}}),
        2 => json!({"arch": ["x86_64", "aarch64"]}),
        3 => json!({"devices": ["npu"]}),
        _ => json!({"arch": ["x86_64"], "labels": {"tier": "core"}}),
    };
    let replicas = if (i / 5).is_multiple_of(2) { 1 } else { 10 };
    json!({
        "name": format!("{run}-{i}"),
        "version": "1.0.0",
        "artifact": digest,
        "replicas": replicas,
        "resources": {
            "cpu_millis": 5 + 5 * (i % 2),
            "memory_bytes": (4 + 4 * (i % 2) as u64) * MIB,
        },
        "requirements": requirements,
    })
}

// ---- threads, CPU and the committer's state ---------------------------------------------------

/// What a thread of this process is for, from its name.
fn role(comm: &str) -> &'static str {
    if comm.starts_with("orch-rt") {
        "orchestrator runtime (API, QUIC, blocking pool)"
    } else if comm.starts_with("deploy-commit") {
        "orchestrator committer (store + flush + send)"
    } else if comm.starts_with("sled") {
        "sled's own threads"
    } else if comm.starts_with("sim-rt") {
        "simulated fleet"
    } else if comm.starts_with("api-client") {
        "HTTP clients"
    } else {
        "other (main, sampler)"
    }
}

/// User plus system CPU ticks of one thread of this process. (`/proc/TID/stat` would give the
/// whole process's: only the `task/` entry is the thread's own.)
fn thread_ticks(tid: u32) -> Option<u64> {
    ticks_in(&format!("/proc/self/task/{tid}/stat"))
}

/// The calling thread's own CPU ticks.
fn my_ticks() -> u64 {
    ticks_in("/proc/thread-self/stat").unwrap_or(0)
}

fn ticks_in(stat: &str) -> Option<u64> {
    let text = std::fs::read_to_string(stat).ok()?;
    // After the parenthesised name: state is field 3, utime 14 and stime 15.
    let fields: Vec<&str> = text.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// CPU ticks of every thread of this process, with its name.
fn threads() -> Vec<(u32, String, u64)> {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let tid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let comm = std::fs::read_to_string(format!("/proc/self/task/{tid}/comm")).ok()?;
        Some((tid, comm.trim_end().to_owned(), thread_ticks(tid)?))
    })
    .collect()
}

/// CPU seconds per role between two snapshots (threads gone in between are not counted).
fn cpu_by_role(
    before: &[(u32, String, u64)],
    after: &[(u32, String, u64)],
    ticks_per_sec: f64,
) -> BTreeMap<&'static str, f64> {
    let start: HashMap<u32, u64> = before.iter().map(|(t, _, c)| (*t, *c)).collect();
    let mut out = BTreeMap::new();
    for (tid, comm, ticks) in after {
        let d = ticks.saturating_sub(start.get(tid).copied().unwrap_or(0));
        *out.entry(role(comm)).or_insert(0.0) += d as f64 / ticks_per_sec;
    }
    out
}

/// Nanoseconds a thread of this process has run, and has waited runnable for a CPU
/// (`/proc/self/task/TID/schedstat`).
fn schedstat(tid: u32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).ok()?;
    let mut f = text.split_whitespace().map(|v| v.parse::<u64>().ok());
    Some((f.next()??, f.next()??))
}

/// The whole machine's CPU time by kind (`/proc/stat`, the `cpu` line): user, nice, system,
/// idle, iowait, irq, softirq, steal; in clock ticks.
fn machine_cpu() -> Vec<u64> {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|t| {
            t.lines().next().map(|l| {
                l.split_whitespace()
                    .skip(1)
                    .take(8)
                    .filter_map(|v| v.parse().ok())
                    .collect()
            })
        })
        .unwrap_or_default()
}

/// Seconds on a CPU and waiting for one, summed over `tids`, between two snapshots.
fn sched_delta(tids: &[u32], before: &HashMap<u32, (u64, u64)>) -> (f64, f64) {
    let (mut run, mut wait) = (0u64, 0u64);
    for tid in tids {
        if let (Some((r1, w1)), Some((r0, w0))) = (schedstat(*tid), before.get(tid)) {
            run += r1.saturating_sub(*r0);
            wait += w1.saturating_sub(*w0);
        }
    }
    (run as f64 / 1e9, wait as f64 / 1e9)
}

/// Write calls, bytes written and bytes sent to the disk by the threads that write the store
/// (sled's own and the committer), from `/proc/self/task/TID/io`. sled writes its log with
/// one `pwrite` per flush, so the calls count the flushes.
fn store_io() -> [u64; 3] {
    let mut out = [0u64; 3];
    for (tid, comm, _) in threads() {
        if !(comm.starts_with("sled") || comm.starts_with("deploy-commit")) {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(format!("/proc/self/task/{tid}/io")) else {
            continue;
        };
        for line in text.lines() {
            let (key, value) = line.split_once(':').unwrap_or_default();
            let value: u64 = value.trim().parse().unwrap_or(0);
            match key {
                "syscw" => out[0] += value,
                "wchar" => out[1] += value,
                "write_bytes" => out[2] += value,
                _ => {}
            }
        }
    }
    out
}

fn tid_of(name: &str) -> Option<u32> {
    threads()
        .into_iter()
        .find(|(_, comm, _)| comm == name)
        .map(|(t, _, _)| t)
}

fn syscall_line(tid: u32) -> String {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/syscall")).unwrap_or_default()
}

/// The futex word the committer sleeps on when it has nothing to store: read while it is
/// idle, so that the samples can tell "waiting for work" from "waiting inside sled".
fn idle_futex(tid: u32) -> Option<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..50 {
        let line = syscall_line(tid);
        let mut f = line.split_whitespace();
        if f.next() == Some("202")
            && let Some(addr) = f.next()
        {
            *seen.entry(addr.to_owned()).or_default() += 1;
        }
        pause(Duration::from_millis(1));
    }
    seen.into_iter().max_by_key(|(_, n)| *n).map(|(a, _)| a)
}

/// What a `/proc/TID/syscall` line says the thread is doing.
fn classify(line: &str, idle: Option<&str>) -> String {
    let mut f = line.split_whitespace();
    match f.next() {
        Some("running") => "on CPU (or runnable)".into(),
        Some("202") if f.next() == idle => "idle: waiting for a batch".into(),
        Some("202") => "futex: waiting inside sled (its flush or its locks)".into(),
        Some("277") => "sync_file_range (sled's flush)".into(),
        Some("74") => "fsync".into(),
        Some("75") => "fdatasync".into(),
        Some("18") => "pwrite64".into(),
        Some("1") => "write".into(),
        Some(nr) => format!("syscall {nr}"),
        None => "unknown".into(),
    }
}

/// What a `/proc/TID/syscall` line says a tokio worker thread is doing. std's mutex waits
/// in `futex(addr, FUTEX_WAIT_BITSET_PRIVATE, 2, ..)` (2: locked with waiters), while a parked
/// worker waits on its condvar's counter or in `epoll_wait`.
fn classify_worker(line: &str) -> String {
    let f: Vec<&str> = line.split_whitespace().collect();
    match f.first().copied() {
        Some("running") => "on CPU (or runnable)".into(),
        Some("202") if f.get(3) == Some(&"0x2") => "waiting for a contended mutex".into(),
        Some("202") => "parked on its condvar (no work)".into(),
        Some("232" | "281" | "441") => "parked in epoll_wait (no work)".into(),
        Some("1" | "20" | "44" | "46" | "307") => "sending (TCP or UDP)".into(),
        Some("0" | "19" | "45" | "47" | "299") => "receiving (TCP or UDP)".into(),
        Some(nr) => format!("syscall {nr}"),
        None => "unknown".into(),
    }
}

/// What the sampled threads did: per state, how many samples.
#[derive(Debug, Default)]
struct States {
    committer: BTreeMap<String, usize>,
    workers: BTreeMap<String, usize>,
}

/// Samples the committer's and the workers' states every `every` until `stop`.
fn sample_threads(
    committer: Option<u32>,
    idle: Option<&str>,
    workers: &[u32],
    every: Duration,
    stop: &AtomicBool,
) -> States {
    let mut out = States::default();
    while !stop.load(Ordering::Relaxed) {
        if let Some(tid) = committer {
            *out.committer
                .entry(classify(&syscall_line(tid), idle))
                .or_insert(0) += 1;
        }
        for tid in workers {
            *out.workers
                .entry(classify_worker(&syscall_line(*tid)))
                .or_insert(0) += 1;
        }
        pause(every);
    }
    out
}

// ---- the API side ----------------------------------------------------------------------------

/// One answer to a deploy.
#[derive(Debug, Clone, Copy)]
struct Answer {
    latency: Duration,
    status: u16,
    /// Instances bound: the length of `instances`.
    placed: usize,
    wanted: usize,
}

/// One slice through the API.
#[derive(Debug)]
struct ApiSlice {
    answers: Vec<Answer>,
    wall: Duration,
    cpu: BTreeMap<&'static str, f64>,
    states: States,
    /// Seconds on a CPU and waiting for one: the runtime's workers together, the committer.
    workers: (f64, f64),
    committer: (f64, f64),
    /// This process's CPU seconds, all threads, gone ones too.
    process: f64,
    /// What the store's threads wrote, as [`store_io`] gives it.
    store_io: [u64; 3],
    /// The machine's CPU seconds by kind, as [`machine_cpu`] orders them.
    machine: Vec<f64>,
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(WAIT))
        .build()
        .into()
}

fn post(agent: &ureq::Agent, url: &str, bearer: &str, body: &[u8]) -> anyhow::Result<(u16, Value)> {
    let mut response = agent
        .post(url)
        .header("authorization", bearer)
        .content_type("application/json")
        .send(body)?;
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_vec()?;
    Ok((status, serde_json::from_slice(&text).unwrap_or(Value::Null)))
}

struct ApiRun<'a> {
    base: String,
    bearer: String,
    clients: usize,
    committer: Option<u32>,
    idle: Option<String>,
    /// The orchestrator runtime's worker threads.
    workers: Vec<u32>,
    sample: Duration,
    ticks_per_sec: f64,
    bodies: &'a [(Vec<u8>, usize)],
}

impl ApiRun<'_> {
    /// POSTs `bodies[range]` from `clients` threads; the clock runs from the release of the
    /// threads (each has opened its connection already) to the last answer.
    fn slice(&self, range: std::ops::Range<usize>) -> anyhow::Result<ApiSlice> {
        let work = &self.bodies[range];
        let next = AtomicUsize::new(0);
        let barrier = Barrier::new(self.clients + 1);
        let stop = AtomicBool::new(false);
        let url = format!("{}/v1/workloads", self.base);
        std::thread::scope(|s| {
            let mut handles = Vec::new();
            for k in 0..self.clients {
                let (next, barrier, url, bearer) = (&next, &barrier, &url, &self.bearer);
                let h = std::thread::Builder::new()
                    .name(format!("api-client-{k}"))
                    .spawn_scoped(s, move || -> anyhow::Result<(Vec<Answer>, u64)> {
                        let agent = agent();
                        // Opens the keep-alive connection before the clock starts.
                        let warm = agent
                            .get(format!("{url}/not-a-workload"))
                            .header("authorization", bearer)
                            .call();
                        barrier.wait();
                        warm?;
                        // Read here: the thread is gone before the driver's second snapshot.
                        let ticks = my_ticks();
                        let mut out = Vec::new();
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            let Some((body, wanted)) = work.get(i) else {
                                break;
                            };
                            let t = Instant::now();
                            let (status, answer) = post(&agent, url, bearer, body)?;
                            let latency = t.elapsed();
                            let placed = answer["instances"].as_array().map_or(0, Vec::len);
                            out.push(Answer {
                                latency,
                                status,
                                placed,
                                wanted: *wanted,
                            });
                        }
                        Ok((out, my_ticks() - ticks))
                    })?;
                handles.push(h);
            }
            let sampler = {
                let (stop, idle, every) = (&stop, self.idle.as_deref(), self.sample);
                let (committer, workers) = (self.committer, &self.workers);
                std::thread::Builder::new()
                    .name("sampler".into())
                    .spawn_scoped(s, move || {
                        sample_threads(committer, idle, workers, every, stop)
                    })
            };
            let watched: Vec<u32> = self.workers.iter().copied().chain(self.committer).collect();
            let sched_before: HashMap<u32, (u64, u64)> = watched
                .iter()
                .filter_map(|t| Some((*t, schedstat(*t)?)))
                .collect();
            let machine_before = machine_cpu();
            let io_before = store_io();
            let process_before = procfs::cpu_ticks(None).unwrap_or(0);
            let before = threads();
            barrier.wait();
            let t0 = Instant::now();
            let mut answers = Vec::with_capacity(work.len());
            let mut failure = None;
            let mut client_ticks = 0;
            for h in handles {
                match h.join() {
                    Ok(Ok((a, ticks))) => {
                        answers.extend(a);
                        client_ticks += ticks;
                    }
                    Ok(Err(e)) => failure = Some(e),
                    Err(_) => failure = Some(anyhow!("an HTTP client panicked")),
                }
            }
            let wall = t0.elapsed();
            let after = threads();
            let machine_after = machine_cpu();
            let io_after = store_io();
            let process = procfs::cpu_ticks(None).unwrap_or(0) - process_before;
            let workers = sched_delta(&self.workers, &sched_before);
            let committer = sched_delta(self.committer.as_slice(), &sched_before);
            stop.store(true, Ordering::Relaxed);
            let states = match sampler {
                Ok(h) => h.join().unwrap_or_default(),
                Err(_) => States::default(),
            };
            if let Some(e) = failure {
                return Err(e);
            }
            let mut cpu = cpu_by_role(&before, &after, self.ticks_per_sec);
            *cpu.entry(role("api-client")).or_insert(0.0) +=
                client_ticks as f64 / self.ticks_per_sec;
            Ok(ApiSlice {
                answers,
                wall,
                cpu,
                states,
                workers,
                committer,
                process: process as f64 / self.ticks_per_sec,
                store_io: [0, 1, 2].map(|i| io_after[i].saturating_sub(io_before[i])),
                machine: machine_after
                    .iter()
                    .zip(&machine_before)
                    .map(|(a, b)| a.saturating_sub(*b) as f64 / self.ticks_per_sec)
                    .collect(),
            })
        })
    }
}

// ---- the core side ---------------------------------------------------------------------------

/// Places `specs` into copies of `core`, `repeats` times; returns the median placements per
/// second with and without `explain` after each, and the snapshot after one pass.
fn core_slice(
    core: &Scheduler,
    specs: &[WorkloadSpec],
    repeats: usize,
) -> (f64, f64, usize, Scheduler) {
    let mut plain = Vec::new();
    let mut explained = Vec::new();
    let mut placed = 0;
    let mut after = core.clone();
    for r in 0..repeats.max(1) {
        let mut s = core.clone();
        let t = Instant::now();
        let mut n = 0;
        for spec in specs {
            n += std::hint::black_box(s.place(spec)).bound.len();
        }
        plain.push(n as f64 / t.elapsed().as_secs_f64());
        let mut s2 = core.clone();
        let t = Instant::now();
        let mut rejects = 0;
        for spec in specs {
            std::hint::black_box(s2.place(spec));
            rejects += std::hint::black_box(s2.explain(spec)).len();
        }
        explained.push(n as f64 / t.elapsed().as_secs_f64());
        std::hint::black_box(rejects);
        if r == 0 {
            placed = n;
            after = s;
        }
    }
    (
        median_f64(&plain).unwrap_or(0.0),
        median_f64(&explained).unwrap_or(0.0),
        placed,
        after,
    )
}

// ---- the run ---------------------------------------------------------------------------------

fn dir_bytes(path: &Path) -> u64 {
    std::fs::read_dir(path).map_or(0, |entries| {
        entries
            .filter_map(Result::ok)
            .map(|e| match e.metadata() {
                Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                Ok(m) => m.len(),
                Err(_) => 0,
            })
            .sum()
    })
}

fn per_sec(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(f64::MIN_POSITIVE)
}

fn run(args: &Args) -> anyhow::Result<()> {
    let temp;
    let data_dir = match &args.data_dir {
        Some(d) => d.clone(),
        None => {
            temp = tempfile::Builder::new()
                .prefix("edge-api-placements-")
                .tempdir()
                .context("temp dir")?;
            temp.path().to_owned()
        }
    };
    // The runtime starts its workers first, so the first threads it names are the workers;
    // later ones are its blocking pool. The sampler watches the workers.
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let spawned = AtomicUsize::new(0);
    let orch_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name_fn(move || {
            let n = spawned.fetch_add(1, Ordering::Relaxed);
            if n < workers {
                format!("{WORKER_PREFIX}{n}")
            } else {
                format!("orch-rt-b{n}")
            }
        })
        .enable_all()
        .build()?;
    let sim_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("sim-rt")
        .enable_all()
        .build()?;
    let orch = orch_rt.block_on(in_process::start_orchestrator(&data_dir))?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    println!(
        "api-placements: orchestrator in this process on a multi-thread runtime of its own \
         ({} workers), data dir {} ({}); {} simulated nodes on a one-thread runtime, real QUIC \
         from {} loopback addresses; {} workloads from {} HTTP clients (one keep-alive \
         connection each) in {} slices",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        data_dir.display(),
        procfs::filesystem_of(&data_dir),
        args.nodes,
        args.nodes.div_ceil(args.per_address.max(1)),
        args.workloads,
        args.clients,
        args.rounds
    );

    let t0 = Instant::now();
    let fleet = start_fleet(&sim_rt, &orch, args)?;
    while orch.registry.fleet().counts().0 < args.nodes {
        if t0.elapsed() > WAIT {
            bail!("the fleet did not come online");
        }
        pause(Duration::from_millis(50));
    }
    // Let the last sessions' capabilities and first status land.
    pause(Duration::from_secs(2));
    let records: Vec<_> = orch.registry.fleet().nodes().cloned().collect();
    let views: Vec<NodeView> = records
        .iter()
        .map(|r| NodeView::from_record(r, true))
        .collect();
    let count = |f: &dyn Fn(&NodeView) -> bool| views.iter().filter(|v| f(v)).count();
    println!(
        "fleet: {} of {} online after {:.1} s; as the scheduler sees it: arch aarch64 {}, x86_64 \
         {}, arm {}; {} sites; tier=core {}; npu {}, gpu {}, video {}",
        orch.registry.fleet().counts().0,
        args.nodes,
        t0.elapsed().as_secs_f64(),
        count(&|v| v.arch == "aarch64"),
        count(&|v| v.arch == "x86_64"),
        count(&|v| v.arch == "arm"),
        SITES.len(),
        count(&|v| v.labels.get("tier").is_some_and(|t| t == "core")),
        count(&|v| v.devices.iter().any(|d| d == "npu")),
        count(&|v| v.devices.iter().any(|d| d == "gpu")),
        count(&|v| v.devices.iter().any(|d| d == "video")),
    );

    let store = in_process::artifact_store(&orch)?;
    let stored = orch_rt.block_on(store.put(&b"#!/bin/sh\nexec sleep 600\n"[..], None))?;
    let digest = edge_proto::digest::to_prefixed(&stored.digest);
    let run_id = format!("w{}", std::process::id());
    let mut bodies = Vec::with_capacity(args.workloads);
    let mut specs = Vec::with_capacity(args.workloads);
    for i in 0..args.workloads {
        let v = spec(i, &run_id, &digest);
        let body = serde_json::to_vec(&v)?;
        specs.push(WorkloadSpec::from_json(&body).map_err(|e| anyhow!("spec {i}: {e}"))?);
        let wanted = v["replicas"].as_u64().unwrap_or(1) as usize;
        bodies.push((body, wanted));
    }
    println!(
        "specs: shapes by i % 5: {}; replicas 1 and 10 in turn every five; cpu 5-10 millis, \
         memory 4-8 MiB; a spec is {}-{} bytes of JSON",
        SHAPES.join("; "),
        bodies.iter().map(|(b, _)| b.len()).min().unwrap_or(0),
        bodies.iter().map(|(b, _)| b.len()).max().unwrap_or(0)
    );

    let committer = tid_of("deploy-commit");
    let idle = committer.and_then(idle_futex);
    let api = ApiRun {
        base: format!("http://{}", orch.api_addr),
        bearer: format!("Bearer {}", orch.admin_token),
        clients: args.clients.max(1),
        committer,
        idle,
        workers: threads()
            .into_iter()
            .filter(|(_, comm, _)| comm.starts_with(WORKER_PREFIX))
            .map(|(tid, _, _)| tid)
            .collect(),
        sample: Duration::from_micros(args.sample_us.max(1)),
        ticks_per_sec: procfs::clock_ticks_per_sec() as f64,
        bodies: &bodies,
    };
    let mut core = Scheduler::new(views);
    let rounds = args.rounds.max(1);
    let mut answers: Vec<Answer> = Vec::new();
    let mut api_wall = Duration::ZERO;
    let mut cpu: BTreeMap<&'static str, f64> = BTreeMap::new();
    let mut states = States::default();
    let (mut workers_sched, mut committer_sched) = ((0.0, 0.0), (0.0, 0.0));
    let mut machine = [0.0; 8];
    let mut process_cpu = 0.0;
    let mut io = [0u64; 3];
    let (mut core_rates, mut explain_rates, mut core_placed) = (Vec::new(), Vec::new(), 0);
    println!();
    for r in 0..rounds {
        let range = r * args.workloads / rounds..(r + 1) * args.workloads / rounds;
        let slice = api.slice(range.clone())?;
        let placed: usize = slice.answers.iter().map(|a| a.placed).sum();
        let lat: Vec<Duration> = slice.answers.iter().map(|a| a.latency).collect();
        let (core_rate, explain_rate, n, next) =
            core_slice(&core, &specs[range], args.core_repeats);
        core = next;
        core_placed += n;
        let api_rate = per_sec(placed, slice.wall);
        println!(
            "slice {}: API {} workloads, {placed} placements in {:.2} s: {:.0} placements/s, \
             {:.0} workloads/s, latency p50 {} p99 {} | core {n} placements: {:.0}/s, with \
             explain {:.0}/s | API/core {:.3}",
            r + 1,
            slice.answers.len(),
            slice.wall.as_secs_f64(),
            api_rate,
            per_sec(slice.answers.len(), slice.wall),
            stats::ms(percentile(&lat, 50.0)),
            stats::ms(percentile(&lat, 99.0)),
            core_rate,
            explain_rate,
            api_rate / core_rate
        );
        core_rates.push(core_rate);
        explain_rates.push(explain_rate);
        api_wall += slice.wall;
        for (k, v) in slice.cpu {
            *cpu.entry(k).or_insert(0.0) += v;
        }
        workers_sched.0 += slice.workers.0;
        workers_sched.1 += slice.workers.1;
        committer_sched.0 += slice.committer.0;
        committer_sched.1 += slice.committer.1;
        process_cpu += slice.process;
        for (sum, v) in io.iter_mut().zip(slice.store_io) {
            *sum += v;
        }
        for (m, v) in machine.iter_mut().zip(&slice.machine) {
            *m += v;
        }
        for (k, v) in slice.states.committer {
            *states.committer.entry(k).or_insert(0) += v;
        }
        for (k, v) in slice.states.workers {
            *states.workers.entry(k).or_insert(0) += v;
        }
        answers.extend(slice.answers);
    }

    let ok = answers.iter().filter(|a| a.status == 201).count();
    let placed: usize = answers.iter().map(|a| a.placed).sum();
    let short = answers.iter().filter(|a| a.placed < a.wanted).count();
    let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
    for a in &answers {
        *statuses.entry(a.status).or_default() += 1;
    }
    let lat: Vec<Duration> = answers.iter().map(|a| a.latency).collect();
    let api_rate = per_sec(placed, api_wall);
    let core_rate = median_f64(&core_rates).unwrap_or(0.0);
    let explain_rate = median_f64(&explain_rates).unwrap_or(0.0);
    println!();
    println!(
        "through the API: {} workloads ({ok} answered 201; statuses {statuses:?}; {short} with \
         fewer instances than replicas), {placed} placements in {:.2} s of slices",
        answers.len(),
        api_wall.as_secs_f64()
    );
    println!(
        "  {api_rate:.0} placements/s, {:.0} workloads/s; request latency p50 {} p90 {} p99 {} \
         max {} ({} clients)",
        per_sec(answers.len(), api_wall),
        stats::ms(percentile(&lat, 50.0)),
        stats::ms(percentile(&lat, 90.0)),
        stats::ms(percentile(&lat, 99.0)),
        stats::ms(lat.iter().max().copied()),
        api.clients
    );
    println!(
        "scheduler core alone, same specs, same order, same nodes (one thread; median of the \
         slices' medians): {core_rate:.0} placements/s ({core_placed} placed); with explain \
         after each, the price of an answer that explains: {explain_rate:.0}/s"
    );
    println!(
        "ratio API/core: {:.3} (API/core with explain: {:.3}); goal through the API >= {:.0}/s: \
         {}; core goal >= {:.0}/s: {}",
        api_rate / core_rate,
        api_rate / explain_rate,
        GOAL_API,
        if api_rate >= GOAL_API {
            "met"
        } else {
            "MISSED"
        },
        GOAL_CORE,
        if core_rate >= GOAL_CORE {
            "met"
        } else {
            "MISSED"
        }
    );
    println!(
        "published anchor, for context (not run here): Nomad C1M {ANCHOR_NOMAD_C1M:.0} \
         placements/s on 5 servers; ours through the API {:.2}x that on one 2-core box",
        api_rate / ANCHOR_NOMAD_C1M
    );

    let total: f64 = cpu.values().sum();
    println!(
        "CPU while the API slices ran ({:.2} s wall, {} cores): {:.2} cores busy in all",
        api_wall.as_secs_f64(),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        total / api_wall.as_secs_f64()
    );
    for (k, v) in &cpu {
        println!(
            "  {k:<50} {:>6.2} s  {:>5.2} cores  {:>5.1}%  {:.1} us per placement",
            v,
            v / api_wall.as_secs_f64(),
            100.0 * v / total.max(f64::MIN_POSITIVE),
            v * 1e6 / placed.max(1) as f64
        );
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let capacity = cores * api_wall.as_secs_f64();
    let pct = |v: f64| 100.0 * v / capacity.max(f64::MIN_POSITIVE);
    if machine.iter().any(|v| *v > 0.0) {
        println!(
            "the machine (/proc/stat) while the API ran, of {cores} cores x {:.2} s: user {:.1}%, \
             system {:.1}%, softirq {:.1}%, idle {:.1}%, iowait {:.1}%, steal {:.1}%",
            api_wall.as_secs_f64(),
            pct(machine[0] + machine[1]),
            pct(machine[2]),
            pct(machine[5] + machine[6]),
            pct(machine[3]),
            pct(machine[4]),
            pct(machine[7])
        );
        // user, nice, system, irq, softirq: not idle, iowait or steal.
        let busy: f64 = [0, 1, 2, 5, 6].iter().map(|&i| machine[i]).sum();
        println!(
            "  of the busy {:.2} cores: this process {:.2} (all its threads, gone ones too), \
             everything else on the machine {:.2}",
            busy / api_wall.as_secs_f64(),
            process_cpu / api_wall.as_secs_f64(),
            (busy - process_cpu).max(0.0) / api_wall.as_secs_f64()
        );
        // The roles below that are not the orchestrator live through every slice, so their
        // sums are whole; the orchestrator's blocking-pool threads may end within one.
        let not_orchestrator: f64 = ["api-client", "sim-rt", "sampler"]
            .iter()
            .filter_map(|name| cpu.get(role(name)))
            .sum();
        let orchestrator = (process_cpu - not_orchestrator).max(0.0);
        println!(
            "  the orchestrator's share (this process less the HTTP clients, the simulated fleet \
             and the main and sampler threads): {:.2} cores, {:.1} us of CPU per placement, \
             {:.0} us per workload",
            orchestrator / api_wall.as_secs_f64(),
            orchestrator * 1e6 / placed.max(1) as f64,
            orchestrator * 1e6 / answers.len().max(1) as f64
        );
    }
    let sched_line = |what: &str, threads: usize, (run, wait): (f64, f64)| {
        let span = threads as f64 * api_wall.as_secs_f64();
        if span > 0.0 {
            println!(
                "{what} (schedstat): on a CPU {:.1}% of their time, runnable but waiting for a \
                 CPU {:.1}%, blocked or parked {:.1}%",
                100.0 * run / span,
                100.0 * wait / span,
                100.0 * (span - run - wait).max(0.0) / span
            );
        }
    };
    sched_line(
        &format!(
            "the orchestrator runtime's {} worker threads",
            api.workers.len()
        ),
        api.workers.len(),
        workers_sched,
    );
    sched_line(
        "the committer thread",
        usize::from(api.committer.is_some()),
        committer_sched,
    );
    let shares = |what: &str, m: &BTreeMap<String, usize>| {
        let samples: usize = m.values().sum();
        if samples == 0 {
            return;
        }
        println!(
            "{what}: {samples} samples of /proc/self/task/TID/syscall, every {} us while the API \
             ran:",
            args.sample_us
        );
        let mut by_share: Vec<_> = m.iter().collect();
        by_share.sort_by(|a, b| b.1.cmp(a.1));
        for (k, n) in by_share {
            println!("  {k:<40} {:>5.1}%", 100.0 * *n as f64 / samples as f64);
        }
    };
    shares(
        &format!(
            "committer thread (deploy-commit; its idle futex word {})",
            api.idle.as_deref().unwrap_or("not found")
        ),
        &states.committer,
    );
    shares(
        &format!(
            "the orchestrator runtime's {} worker threads, together",
            api.workers.len()
        ),
        &states.workers,
    );

    println!(
        "store writes while the API ran (sled's threads and the committer, \
         /proc/self/task/TID/io): {} write calls, about one per flush ({:.1} answers per \
         flush); {:.1} MiB handed to the kernel, {:.1} MiB sent to the disk (whole pages: \
         {:.0} bytes per deployment)",
        io[0],
        answers.len() as f64 / io[0].max(1) as f64,
        io[1] as f64 / MIB as f64,
        io[2] as f64 / MIB as f64,
        io[2] as f64 / answers.len().max(1) as f64
    );

    // Every answered deployment must be in the store, with its instances.
    let stored = orch.store.deployments()?;
    let ours: Vec<_> = stored
        .iter()
        .filter(|d| d.name().is_some_and(|n| n.starts_with(&run_id)))
        .collect();
    let stored_instances: usize = ours.iter().map(|d| d.nodes.len()).sum();
    let t = Instant::now();
    while fleet.counters.assigns.load(Ordering::Relaxed) < placed as u64 && t.elapsed() < WAIT {
        pause(Duration::from_millis(20));
    }
    println!(
        "persisted: the store holds {} of these deployments with {stored_instances} instances \
         (answered: {ok} and {placed}); Assign messages read by the simulated nodes: {} \
         ({} Unassign); sled dir {:.1} MiB on disk",
        ours.len(),
        fleet.counters.assigns.load(Ordering::Relaxed),
        fleet.counters.unassigns.load(Ordering::Relaxed),
        dir_bytes(&data_dir.join("state")) as f64 / MIB as f64
    );
    println!("metric placements.api_per_s {api_rate:.0}");
    println!("metric placements.core_per_s {core_rate:.0}");
    println!("metric placements.core_explain_per_s {explain_rate:.0}");
    println!(
        "metric placements.api_workloads_per_s {:.0}",
        per_sec(answers.len(), api_wall)
    );

    let Fleet {
        stop, mut tasks, ..
    } = fleet;
    let _ = stop.send(true);
    sim_rt.block_on(async {
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
    });
    drop(sim_rt);
    orch_rt.block_on(orch.shutdown());
    drop(orch_rt);
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("api-placements: {e:#}");
            ExitCode::FAILURE
        }
    }
}
