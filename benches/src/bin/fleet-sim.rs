//! `fleet-sim`: a fleet of simulated nodes against a separately running orchestrator.
//!
//! Each simulated node has its own UDP socket on a loopback address (127.0.1.x, `--per-address`
//! nodes per address), enrolls with the real protocol (`Hello{Enroll}` + `EnrollRequest`, one
//! shared key pair and CSR: the orchestrator signs one certificate per node id), then opens a
//! session with the certificate it got (`Hello{Session}` -> `Welcome` -> `Capabilities` ->
//! `Status` every `--status-interval-secs`) and holds it for `--hold-secs`. QUIC keep-alives
//! and the idle timeout are the node daemon's own (`node_daemon::tls`). Capabilities are fixed:
//! a simulated node samples nothing.
//!
//! It reports what the orchestrator process (`--orchestrator-pid`) pays for the fleet: resident
//! memory before and after, per connected node, and CPU while holding. A benchmark: it prints
//! figures and never fails on one.
//!
//! With `--storm`, after the hold every node drops its session at the same instant and dials
//! again as the node daemon does: its first backoff draw (uniform in 0-250 ms) first; after an
//! `OrchMsg::Busy` the hint plus up to a quarter of it; after any other failure the node's
//! backoff (250 ms doubling to 30 s, full jitter). It reports each node's time from the drop
//! to its `Welcome`, the Busy answers, and the orchestrator's CPU seconds until the whole fleet
//! was back. Run it against `serve --admit-per-sec 0` and the default to see what pacing does.
//! Each node keeps its TLS configuration from one dial to the next, as the daemon does, so it
//! resumes its TLS session; `--no-resumption` gives it a new one for every dial (every
//! handshake full), to see what resumption saves.

use anyhow::{Context, bail};
use clap::Parser;
use edge_benches::{fixtures, procfs, sim, stats};
use edge_proto::NodeMsg;
use edge_proto::quic::write_msg;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, mpsc, watch};

#[derive(Debug, Parser)]
#[command(
    name = "fleet-sim",
    about = "Simulated nodes holding real QUIC sessions"
)]
struct Args {
    /// The orchestrator's QUIC address.
    #[arg(long)]
    orchestrator: SocketAddr,
    /// A join token with at least `--nodes` uses.
    #[arg(long)]
    token: String,
    /// The orchestrator's CA hash, `sha256:` and 64 hex digits.
    #[arg(long)]
    ca_hash: String,
    /// How many nodes.
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    /// Nodes per loopback source address (127.0.1.1, 127.0.1.2, ...).
    #[arg(long, default_value_t = 200)]
    per_address: usize,
    /// Seconds between status reports of each node.
    #[arg(long, default_value_t = 10)]
    status_interval_secs: u64,
    /// How long to hold the sessions once the fleet is connected.
    #[arg(long, default_value_t = 30)]
    hold_secs: u64,
    /// Nodes enrolling or opening a session at the same time.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// The orchestrator's process id, to read its memory and CPU from /proc.
    #[arg(long)]
    orchestrator_pid: Option<u32>,
    /// Node names are PREFIX-0, PREFIX-1, ...; unique per run by default.
    #[arg(long)]
    name_prefix: Option<String>,
    /// After the hold, drop every session at once and reconnect the whole fleet.
    #[arg(long)]
    storm: bool,
    /// How long the fleet may take to come back after the storm's drop.
    #[arg(long, default_value_t = 300)]
    storm_timeout_secs: u64,
    /// In the storm, dial every session with a new TLS configuration: no TLS session is
    /// resumed, every handshake is full.
    #[arg(long)]
    no_resumption: bool,
}

/// What one node's way back after the storm's drop took.
#[derive(Debug)]
struct Returned {
    /// From the drop to the `Welcome`; `None` if it did not get back within the timeout.
    took: Option<Duration>,
    /// `OrchMsg::Busy` answers on the way.
    busy: u32,
    /// Other failed attempts (timeouts, refusals, lost handshakes).
    failed: u32,
    /// Dials made before the hint of the Busy before them ran out: 0 by construction.
    early: u32,
    /// Why the other attempts failed, as the error's first line says, cut to 60 characters.
    why: Vec<String>,
    /// UDP payload bytes, both ways, of the connection that came back, up to its `Welcome`.
    bytes: u64,
}

/// A uniformly random `u64` from a seed: a simulated node draws its jitter from its index and
/// attempt, so a run is reproducible.
fn draw(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Uniform in `0 ..= max`, from `draw`.
fn jitter(max: Duration, draw: u64) -> Duration {
    let span = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
    let scaled = (u128::from(draw) * (u128::from(span) + 1)) >> 64;
    Duration::from_nanos(u64::try_from(scaled).unwrap_or(span))
}

/// The node's reconnect backoff: 250 ms doubling to 30 s.
const BACKOFF_BASE: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Node `i`'s way back after the drop at `dropped`, as the node daemon's session goes.
async fn come_back(
    i: usize,
    endpoint: &quinn::Endpoint,
    kit: &sim::Kit,
    identity: &Identity,
    caps: &edge_proto::Capabilities,
    dropped: Instant,
    timeout: Duration,
) -> (Option<sim::Session>, Returned) {
    let mut back = Returned {
        took: None,
        busy: 0,
        failed: 0,
        early: 0,
        why: Vec::new(),
        bytes: 0,
    };
    let seed = (i as u64) << 20;
    let mut attempt = 0u64;
    // The first dial after a lost session waits the backoff's first draw.
    let mut wait = jitter(BACKOFF_BASE, draw(seed));
    let mut not_before: Option<Instant> = None;
    let mut failures = 0u32;
    loop {
        tokio::time::sleep(wait).await;
        if dropped.elapsed() > timeout {
            return (None, back);
        }
        if not_before.is_some_and(|t| Instant::now() < t) {
            back.early += 1;
        }
        attempt += 1;
        let tls = match &identity.fresh {
            None => Ok(identity.tls.clone()),
            Some((cert, ca)) => sim::session_tls(kit, identity.node_id, cert.clone(), ca.clone()),
        };
        let dialed = match tls {
            Ok(tls) => sim::open_session(endpoint, kit, identity.node_id, tls, caps).await,
            Err(e) => Err(e),
        };
        match dialed {
            Ok(session) => {
                back.took = Some(dropped.elapsed());
                let stats = session.conn.stats();
                back.bytes = stats.udp_tx.bytes + stats.udp_rx.bytes;
                return (Some(session), back);
            }
            Err(e) => match e.downcast_ref::<sim::Busy>() {
                Some(sim::Busy(ms)) => {
                    back.busy += 1;
                    let hint = Duration::from_millis(u64::from(*ms));
                    not_before = Some(Instant::now() + hint);
                    wait = hint + jitter(hint / 4, draw(seed + attempt));
                }
                None => {
                    back.failed += 1;
                    back.why.push(format!("{e}").chars().take(60).collect());
                    failures += 1;
                    let ceiling = BACKOFF_BASE
                        .saturating_mul(1 << failures.min(7))
                        .min(BACKOFF_MAX);
                    not_before = None;
                    wait = jitter(ceiling, draw(seed + attempt));
                }
            },
        }
    }
}

/// How a simulated node dials its sessions again.
struct Identity {
    node_id: edge_proto::NodeId,
    /// Kept from one dial to the next, with its TLS session tickets.
    tls: quinn::ClientConfig,
    /// With `--no-resumption`: the certificate and CA to build a new configuration from for
    /// every dial.
    fresh: Option<(Vec<u8>, Vec<u8>)>,
}

/// A dial that took this long most likely lost a packet and waited for a retransmit: quinn's
/// first probe timeout with its initial RTT estimate of 333 ms is about a second.
const SLOW: Duration = Duration::from_millis(900);

/// What one node's way into the fleet took.
#[derive(Debug)]
struct Joined {
    enroll: Duration,
    session: Duration,
}

/// Counters shared by the node tasks.
#[derive(Debug, Default)]
struct Counters {
    /// Sessions up now.
    live: AtomicUsize,
    /// Sessions that ended while the fleet was meant to hold them.
    dropped: AtomicUsize,
    /// Why those sessions ended, as quinn words it, and how often.
    drop_reasons: std::sync::Mutex<std::collections::BTreeMap<String, usize>>,
    status_sent: AtomicU64,
}

fn parse_ca_hash(s: &str) -> anyhow::Result<[u8; 32]> {
    let hex = s
        .strip_prefix("sha256:")
        .context("--ca-hash must start with sha256:")?;
    if hex.len() != 64 {
        bail!("--ca-hash needs 64 hex digits after sha256:");
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).context("--ca-hash is not hex")?;
    }
    Ok(out)
}

#[expect(
    clippy::too_many_arguments,
    reason = "one simulated node's whole life; a struct would only rename the arguments"
)]
async fn run_node(
    i: usize,
    name: String,
    source: IpAddr,
    kit: Arc<sim::Kit>,
    status_interval: Duration,
    gate: Arc<Semaphore>,
    counters: Arc<Counters>,
    joined: mpsc::UnboundedSender<anyhow::Result<Joined>>,
    mut stop: watch::Receiver<bool>,
    mut storm: watch::Receiver<Option<(Instant, Duration)>>,
    returned: mpsc::UnboundedSender<Returned>,
    no_resumption: bool,
) {
    let caps = fixtures::capabilities(&name);
    let started = sim::join(i, &name, source, &kit, &gate, &caps).await;
    // The receive half is kept, unread, for the session's life: dropping it would tell the
    // orchestrator to stop sending on the stream.
    let (
        endpoint,
        sim::Session {
            mut conn,
            mut send,
            recv: mut _recv,
        },
        identity,
    ) = match started {
        Ok(node) => {
            counters.live.fetch_add(1, Ordering::SeqCst);
            counters.status_sent.fetch_add(1, Ordering::Relaxed);
            let _ = joined.send(Ok(Joined {
                enroll: node.enroll,
                session: node.session_open,
            }));
            let identity = Identity {
                node_id: node.node_id,
                tls: node.tls,
                fresh: no_resumption.then_some((node.cert, node.ca)),
            };
            (node.endpoint, node.session, identity)
        }
        Err(e) => {
            let _ = joined.send(Err(e));
            return;
        }
    };
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + status_interval,
        status_interval,
    );
    let boot = Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let status = NodeMsg::Status(fixtures::status(boot.elapsed().as_secs()));
                if write_msg(&mut send, &status).await.is_ok() {
                    counters.status_sent.fetch_add(1, Ordering::Relaxed);
                }
            }
            why = conn.closed() => {
                counters.live.fetch_sub(1, Ordering::SeqCst);
                counters.dropped.fetch_add(1, Ordering::SeqCst);
                if let Ok(mut reasons) = counters.drop_reasons.lock() {
                    *reasons.entry(why.to_string()).or_default() += 1;
                }
                return;
            }
            _ = stop.changed() => break,
            Ok(()) = storm.changed() => {
                let Some((dropped, timeout)) = *storm.borrow_and_update() else { continue };
                conn.close(0u32.into(), b"storm");
                let (session, back) =
                    come_back(i, &endpoint, &kit, &identity, &caps, dropped, timeout).await;
                let _ = returned.send(back);
                match session {
                    Some(s) => {
                        conn = s.conn;
                        send = s.send;
                        _recv = s.recv;
                    }
                    None => {
                        counters.live.fetch_sub(1, Ordering::SeqCst);
                        return;
                    }
                }
            }
        }
    }
    counters.live.fetch_sub(1, Ordering::SeqCst);
    conn.close(0u32.into(), b"fleet-sim done");
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
}

fn mib(kib: i64) -> f64 {
    kib as f64 / 1024.0
}

fn read_memory(pid: Option<u32>) -> Option<procfs::Memory> {
    pid.and_then(|p| procfs::memory(Some(p)).ok())
}

async fn run(args: Args) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let pin = parse_ca_hash(&args.ca_hash)?;
    let prefix = args
        .name_prefix
        .clone()
        .unwrap_or_else(|| format!("sim{}", std::process::id()));
    let kit = Arc::new(sim::Kit::new(
        args.orchestrator,
        args.token.clone(),
        pin,
        &prefix,
    )?);
    let status_interval = Duration::from_secs(args.status_interval_secs.max(1));
    let pid = args.orchestrator_pid;
    let ticks_per_sec = procfs::clock_ticks_per_sec() as f64;
    let addresses = args.nodes.div_ceil(args.per_address.max(1));
    println!(
        "fleet-sim: {} nodes from {} loopback addresses ({} per address, from {}), \
         {} at a time, status every {} s, hold {} s, orchestrator {}",
        args.nodes,
        addresses,
        args.per_address,
        sim::source_address(0, args.per_address),
        args.concurrency,
        status_interval.as_secs(),
        args.hold_secs,
        args.orchestrator
    );

    let udp_start = procfs::udp_counters();
    let before = read_memory(pid);
    let cpu_connect_start = pid.and_then(|p| procfs::cpu_ticks(Some(p)).ok());
    let counters = Arc::new(Counters::default());
    let gate = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let (joined_tx, mut joined_rx) = mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = watch::channel(false);
    let (storm_tx, storm_rx) = watch::channel(None);
    let (returned_tx, mut returned_rx) = mpsc::unbounded_channel();
    let mut tasks = tokio::task::JoinSet::new();
    let t_fleet = Instant::now();
    for i in 0..args.nodes {
        tasks.spawn(run_node(
            i,
            format!("{prefix}-{i}"),
            sim::source_address(i, args.per_address),
            kit.clone(),
            status_interval,
            gate.clone(),
            counters.clone(),
            joined_tx.clone(),
            stop_rx.clone(),
            storm_rx.clone(),
            returned_tx.clone(),
            args.no_resumption,
        ));
    }
    drop(joined_tx);
    drop(returned_tx);
    let (mut enroll_times, mut session_times, mut errors) = (Vec::new(), Vec::new(), Vec::new());
    while enroll_times.len() + errors.len() < args.nodes {
        match joined_rx.recv().await {
            Some(Ok(j)) => {
                enroll_times.push(j.enroll);
                session_times.push(j.session);
            }
            Some(Err(e)) => errors.push(format!("{e:#}")),
            None => break,
        }
    }
    let connect_took = t_fleet.elapsed();
    let cpu_connect_end = pid.and_then(|p| procfs::cpu_ticks(Some(p)).ok());
    let udp_connected = procfs::udp_counters();
    let established = enroll_times.len();
    println!(
        "connected: {established} of {} sessions in {:.1} s ({} failed)",
        args.nodes,
        connect_took.as_secs_f64(),
        errors.len()
    );
    for e in errors.iter().take(5) {
        println!("  failure: {e}");
    }

    // Let the last sessions' first frames land before reading the memory.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after_connect = read_memory(pid);
    let hold = Duration::from_secs(args.hold_secs);
    let cpu_hold_start = pid.and_then(|p| procfs::cpu_ticks(Some(p)).ok());
    let self_cpu_start = procfs::cpu_ticks(None).ok();
    let status_start = counters.status_sent.load(Ordering::Relaxed);
    let t_hold = Instant::now();
    let mut peak_rss_kib = after_connect.map_or(0, |m| m.rss_kib);
    // The orchestrator's RSS every 10 s of the hold: flat, or still growing?
    let mut trajectory: Vec<String> = after_connect
        .map(|m| format!("0 s {:.1}", m.rss_mib()))
        .into_iter()
        .collect();
    let mut next_mark = 10;
    while t_hold.elapsed() < hold {
        tokio::time::sleep(Duration::from_secs(1).min(hold.saturating_sub(t_hold.elapsed()))).await;
        if let Some(m) = read_memory(pid) {
            peak_rss_kib = peak_rss_kib.max(m.rss_kib);
            if t_hold.elapsed().as_secs() >= next_mark {
                trajectory.push(format!("{next_mark} s {:.1}", m.rss_mib()));
                next_mark += 10;
            }
        }
    }
    let held = t_hold.elapsed();
    let cpu_hold_end = pid.and_then(|p| procfs::cpu_ticks(Some(p)).ok());
    let self_cpu_end = procfs::cpu_ticks(None).ok();
    let status_sent = counters.status_sent.load(Ordering::Relaxed) - status_start;
    let after_hold = read_memory(pid);
    let udp_held = procfs::udp_counters();
    // Per socket, over the socket's life: read while the simulated nodes' sockets are open.
    let orch_addr = args.orchestrator;
    let orch_socket_drops = procfs::udp_socket_drops(|ip, port| {
        IpAddr::V4(ip) == orch_addr.ip() && port == orch_addr.port()
    });
    let sim_socket_drops = procfs::udp_socket_drops(|ip, _| ip.octets()[..3] == [127, 0, 1]);
    let live = counters.live.load(Ordering::SeqCst);
    let dropped = counters.dropped.load(Ordering::SeqCst);
    let drop_reasons = counters
        .drop_reasons
        .lock()
        .map(|r| {
            r.iter()
                .map(|(why, n)| format!("{n} x {why}"))
                .collect::<Vec<_>>()
                .join("; ")
        })
        .unwrap_or_default();
    let self_mem = procfs::memory(None).ok();

    let storm = if args.storm && live > 0 {
        Some(storm(&args, live, &storm_tx, &mut returned_rx).await)
    } else {
        None
    };

    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;

    let p50 = stats::percentile(&enroll_times, 50.0);
    let p99 = stats::percentile(&enroll_times, 99.0);
    let s50 = stats::percentile(&session_times, 50.0);
    let s99 = stats::percentile(&session_times, 99.0);
    println!();
    println!("sessions established        {established} / {}", args.nodes);
    println!(
        "sessions live after hold    {live} ({dropped} dropped while holding {:.0} s)",
        held.as_secs_f64()
    );
    if dropped > 0 {
        println!("  why they ended: {drop_reasons}");
    }
    println!(
        "enrollment (dial to Enrolled, {} at a time)  p50 {}  p99 {}",
        args.concurrency,
        stats::ms(p50),
        stats::ms(p99)
    );
    println!(
        "session open (dial to Welcome + caps)        p50 {}  p99 {}",
        stats::ms(s50),
        stats::ms(s99)
    );
    let slow = |times: &[Duration]| times.iter().filter(|t| **t >= SLOW).count();
    println!(
        "took >= {} ms (the signature of a lost handshake packet and quinn's retransmit timer): \
         {} enrollments, {} session opens",
        SLOW.as_millis(),
        slow(&enroll_times),
        slow(&session_times)
    );
    let drops = |a: &std::collections::HashMap<String, u64>,
                 b: &std::collections::HashMap<String, u64>| {
        let d = |k: &str| {
            b.get(k)
                .copied()
                .unwrap_or(0)
                .saturating_sub(a.get(k).copied().unwrap_or(0))
        };
        (d("RcvbufErrors"), d("InDatagrams"))
    };
    let (connect_drops, connect_in) = drops(&udp_start, &udp_connected);
    let (hold_drops, hold_in) = drops(&udp_connected, &udp_held);
    println!(
        "UDP datagrams dropped for a full receive buffer (kernel-wide, /proc/net/snmp \
         RcvbufErrors): {connect_drops} of {connect_in} received while connecting, \
         {hold_drops} of {hold_in} while holding; by socket: the orchestrator's {orch_socket_drops}, \
         the simulated nodes' {sim_socket_drops}"
    );
    println!("metric fleet.udp_drops_orchestrator_socket {orch_socket_drops}");
    println!("metric fleet.udp_rcvbuf_drops_connect {connect_drops}");
    println!("metric fleet.udp_rcvbuf_drops_hold {hold_drops}");
    println!(
        "status frames sent while holding: {status_sent} ({:.1}/s)",
        status_sent as f64 / held.as_secs_f64()
    );
    println!("metric fleet.nodes {}", args.nodes);
    println!("metric fleet.established {established}");
    println!("metric fleet.live_after_hold {live}");
    println!("metric fleet.dropped {dropped}");
    println!(
        "metric fleet.connect_secs {:.2}",
        connect_took.as_secs_f64()
    );
    for (k, v) in [
        ("enroll_p50_ms", p50),
        ("enroll_p99_ms", p99),
        ("session_p50_ms", s50),
        ("session_p99_ms", s99),
    ] {
        if let Some(v) = v {
            println!("metric fleet.{k} {:.1}", v.as_secs_f64() * 1e3);
        }
    }
    if let (Some(b), Some(a), Some(h)) = (before, after_connect, after_hold) {
        let per_node_kib = (h.rss_kib as i64 - b.rss_kib as i64) as f64 / established.max(1) as f64;
        println!(
            "orchestrator RSS  before {:.1} MiB (HWM {:.1})  connected {:.1} MiB (HWM {:.1})  \
             after hold {:.1} MiB (HWM {:.1}), peak seen {:.1} MiB",
            b.rss_mib(),
            b.hwm_mib(),
            a.rss_mib(),
            a.hwm_mib(),
            h.rss_mib(),
            h.hwm_mib(),
            mib(peak_rss_kib as i64)
        );
        println!(
            "orchestrator RSS during the hold (MiB): {}",
            trajectory.join(", ")
        );
        println!(
            "orchestrator RSS per connected node, after the hold  {:.1} KiB  (10,000 nodes at this rate: \
             {:.0} MiB; goal < 1 GiB)",
            per_node_kib,
            b.rss_mib() + per_node_kib * 10_000.0 / 1024.0
        );
        println!("metric fleet.orch_rss_before_mib {:.1}", b.rss_mib());
        println!("metric fleet.orch_hwm_before_mib {:.1}", b.hwm_mib());
        println!("metric fleet.orch_rss_connected_mib {:.1}", a.rss_mib());
        println!("metric fleet.orch_hwm_connected_mib {:.1}", a.hwm_mib());
        println!("metric fleet.orch_rss_after_hold_mib {:.1}", h.rss_mib());
        println!("metric fleet.orch_hwm_after_hold_mib {:.1}", h.hwm_mib());
        println!("metric fleet.orch_rss_per_node_kib {per_node_kib:.1}");
    }
    if let (Some(s), Some(e)) = (cpu_hold_start, cpu_hold_end) {
        let cores = (e - s) as f64 / ticks_per_sec / held.as_secs_f64();
        println!(
            "orchestrator CPU while holding  {:.3} of one core ({:.1} us CPU per node per \
             second; 10,000 nodes at this rate: {:.2} cores; goal < 1)",
            cores,
            cores * 1e6 / established.max(1) as f64,
            cores * 10_000.0 / established.max(1) as f64
        );
        println!("metric fleet.orch_cpu_hold_cores {cores:.4}");
    }
    if let (Some(s), Some(e)) = (cpu_connect_start, cpu_connect_end) {
        let secs = (e - s) as f64 / ticks_per_sec;
        println!(
            "orchestrator CPU while the fleet connected  {secs:.2} s ({:.2} ms per node)",
            secs * 1e3 / established.max(1) as f64
        );
        println!("metric fleet.orch_cpu_connect_secs {secs:.2}");
    }
    if let (Some(s), Some(e), Some(m)) = (self_cpu_start, self_cpu_end, self_mem) {
        let cores = (e - s) as f64 / ticks_per_sec / held.as_secs_f64();
        println!(
            "fleet-sim itself while holding  {cores:.3} of one core, RSS {:.1} MiB \
             (HWM {:.1}): it shares the box with the orchestrator",
            m.rss_mib(),
            m.hwm_mib()
        );
        println!("metric fleet.sim_cpu_hold_cores {cores:.4}");
    }
    if let Some(storm) = storm {
        storm.print(&args);
    }
    Ok(())
}

/// What the storm cost and how the fleet came back.
#[derive(Debug)]
struct Storm {
    nodes: usize,
    back: Vec<Returned>,
    /// From the drop until the last node was back (or the timeout).
    took: Duration,
    orch_cpu_secs: Option<f64>,
    sim_cpu_secs: Option<f64>,
    udp_drops: u64,
    udp_in: u64,
}

/// Drops every session at once and waits for the fleet to come back.
async fn storm(
    args: &Args,
    live: usize,
    storm_tx: &watch::Sender<Option<(Instant, Duration)>>,
    returned: &mut mpsc::UnboundedReceiver<Returned>,
) -> Storm {
    let ticks = procfs::clock_ticks_per_sec() as f64;
    let pid = args.orchestrator_pid;
    let udp_start = procfs::udp_counters();
    let cpu_start = pid.and_then(|p| procfs::cpu_ticks(Some(p)).ok());
    let self_start = procfs::cpu_ticks(None).ok();
    let timeout = Duration::from_secs(args.storm_timeout_secs);
    let dropped = Instant::now();
    let _ = storm_tx.send(Some((dropped, timeout)));
    let mut back = Vec::with_capacity(live);
    let deadline = tokio::time::Instant::now() + timeout + Duration::from_secs(30);
    while back.len() < live {
        match tokio::time::timeout_at(deadline, returned.recv()).await {
            Ok(Some(r)) => back.push(r),
            _ => break,
        }
    }
    let took = dropped.elapsed();
    let cpu_end = pid.and_then(|p| procfs::cpu_ticks(Some(p)).ok());
    let self_end = procfs::cpu_ticks(None).ok();
    let udp_end = procfs::udp_counters();
    let d = |k: &str| {
        udp_end
            .get(k)
            .copied()
            .unwrap_or(0)
            .saturating_sub(udp_start.get(k).copied().unwrap_or(0))
    };
    Storm {
        nodes: live,
        back,
        took,
        orch_cpu_secs: cpu_start.zip(cpu_end).map(|(s, e)| (e - s) as f64 / ticks),
        sim_cpu_secs: self_start
            .zip(self_end)
            .map(|(s, e)| (e - s) as f64 / ticks),
        udp_drops: d("RcvbufErrors"),
        udp_in: d("InDatagrams"),
    }
}

impl Storm {
    fn print(&self, args: &Args) {
        let times: Vec<Duration> = self.back.iter().filter_map(|r| r.took).collect();
        let busy: u64 = self.back.iter().map(|r| u64::from(r.busy)).sum();
        let paced = self.back.iter().filter(|r| r.busy > 0).count();
        let most_busy = self.back.iter().map(|r| r.busy).max().unwrap_or(0);
        let failed: u64 = self.back.iter().map(|r| u64::from(r.failed)).sum();
        let early: u64 = self.back.iter().map(|r| u64::from(r.early)).sum();
        let pct = |p| stats::percentile(&times, p);
        println!();
        println!(
            "storm: {} sessions dropped at once; {} back within {} s, the last after {:.1} s",
            self.nodes,
            times.len(),
            args.storm_timeout_secs,
            self.took.as_secs_f64()
        );
        println!(
            "time to online (drop to Welcome)  p50 {}  p90 {}  p99 {}  max {}",
            stats::ms(pct(50.0)),
            stats::ms(pct(90.0)),
            stats::ms(pct(99.0)),
            stats::ms(pct(100.0))
        );
        println!(
            "Busy answers {busy} ({paced} nodes paced, at most {most_busy} for one node); other failed attempts {failed}; dials before the hint ran out {early}"
        );
        let mut why = std::collections::BTreeMap::<&str, usize>::new();
        for w in self.back.iter().flat_map(|r| &r.why) {
            *why.entry(w.as_str()).or_default() += 1;
        }
        let mut why: Vec<_> = why.into_iter().collect();
        why.sort_by_key(|w| std::cmp::Reverse(w.1));
        for (w, n) in why.iter().take(4) {
            println!("  {n} x {w}");
        }
        let bytes: Vec<u64> = self
            .back
            .iter()
            .filter(|r| r.took.is_some())
            .map(|r| r.bytes)
            .collect();
        let mean_bytes = bytes.iter().sum::<u64>() / (bytes.len().max(1) as u64);
        println!(
            "bytes of the connection that came back, both ways, to its Welcome: mean {mean_bytes} ({})",
            if args.no_resumption {
                "every handshake full"
            } else {
                "TLS sessions resumed where the orchestrator takes the ticket"
            }
        );
        println!(
            "UDP datagrams dropped for a full receive buffer: {} of {} received",
            self.udp_drops, self.udp_in
        );
        if let Some(secs) = self.orch_cpu_secs {
            println!(
                "orchestrator CPU from the drop until the fleet was back  {secs:.2} s ({:.2} ms per node)",
                secs * 1e3 / self.nodes.max(1) as f64
            );
            println!("metric storm.orch_cpu_secs {secs:.2}");
        }
        if let Some(secs) = self.sim_cpu_secs {
            println!(
                "fleet-sim itself meanwhile  {secs:.2} s CPU: it shares the box with the orchestrator"
            );
            println!("metric storm.sim_cpu_secs {secs:.2}");
        }
        println!("metric storm.nodes {}", self.nodes);
        println!("metric storm.back {}", times.len());
        println!("metric storm.secs {:.2}", self.took.as_secs_f64());
        println!("metric storm.busy {busy}");
        println!("metric storm.failed {failed}");
        println!("metric storm.early {early}");
        println!("metric storm.bytes_per_reconnect {mean_bytes}");
        for (k, p) in [("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("max", 100.0)] {
            if let Some(v) = pct(p) {
                println!("metric storm.online_{k}_ms {:.1}", v.as_secs_f64() * 1e3);
            }
        }
    }
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    edge_benches::run_tool("fleet-sim", None, run(args))
}
