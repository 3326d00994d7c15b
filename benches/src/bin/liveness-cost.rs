//! `liveness-cost`: what keeping one node known-alive costs on the wire, and how fast a lost
//! node is noticed.
//!
//! One orchestrator and one enrolled node daemon run in this process (the `edge-tests`
//! harness), the node dialing through a counting UDP relay. The node idles for `--secs` with
//! the production status interval (10 s), and the relay's counters give bytes and packets per
//! second each way: QUIC keep-alives every 1 s, their ACKs, and the status frames. Then, for
//! `--rounds` rounds, the relay is cut and we time how long until the orchestrator shows the
//! node offline, then healed and we time how long until it is online again.
//!
//! A benchmark: it prints figures and never fails on one.

use anyhow::{Context, bail};
use clap::Parser;
use edge_benches::stats::{self, median};
use edge_tests::relay::Relay;
use edge_tests::{TestNode, TestOrchestrator, eventually};
use node_daemon::config::Config;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Published times to notice a dead node (see /work/shared/BENCHMARKS.md), and our goal.
const ANCHOR_K8S_SECS: (f64, f64) = (40.0, 50.0);
const ANCHOR_NOMAD_SECS: f64 = 20.0;
const GOAL_SECS: f64 = 5.0;

#[derive(Debug, Parser)]
#[command(
    name = "liveness-cost",
    about = "Bytes and packets an idle node costs, and time to notice it gone"
)]
struct Args {
    /// How long to count the idle node's traffic.
    #[arg(long, default_value_t = 30)]
    secs: u64,
    /// The node's status interval; 10 s is the production default.
    #[arg(long, default_value_t = 10)]
    status_interval_secs: u64,
    /// Cut-and-heal rounds for the detection times.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
}

/// How long to wait for anything that should take seconds; a bound on a hang.
const WAIT: Duration = Duration::from_secs(90);

#[derive(Debug, Clone, Copy)]
struct Counts {
    up_bytes: u64,
    down_bytes: u64,
    up_packets: u64,
    down_packets: u64,
}

fn counts(relay: &Relay) -> Counts {
    let l = &relay.link;
    Counts {
        up_bytes: l.up_bytes.load(Ordering::SeqCst),
        down_bytes: l.down_bytes.load(Ordering::SeqCst),
        up_packets: l.up_packets.load(Ordering::SeqCst),
        down_packets: l.down_packets.load(Ordering::SeqCst),
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let orch = TestOrchestrator::start().await;
    let token = orch.token(1);
    let relay = Relay::start(orch.orch.quic_addr).await;
    let data = orch.dir.path().join("node");
    // As `edge_tests::node_config` writes it, but with the production status interval.
    let config = Config::from_toml(&format!(
        "version = 1\nname = \"idle-1\"\ndata_dir = \"{}\"\nstatus_interval_secs = {}\n\
         [orchestrator]\naddress = \"{}\"\n[join]\ntoken = \"{token}\"\nca_hash = \"{}\"\n",
        data.display(),
        args.status_interval_secs,
        relay.addr,
        orch.ca_hash()
    ))
    .context("node config")?;
    let node = TestNode::spawn(config);
    if eventually(WAIT, || orch.online("idle-1")).await.is_none() {
        bail!("the node did not come online");
    }
    // Let enrollment's connection close and the session's first frames pass.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let window = Duration::from_secs(args.secs.max(1));
    let a = counts(&relay);
    let t = std::time::Instant::now();
    tokio::time::sleep(window).await;
    let secs = t.elapsed().as_secs_f64();
    let b = counts(&relay);
    let up_bps = (b.up_bytes - a.up_bytes) as f64 / secs;
    let down_bps = (b.down_bytes - a.down_bytes) as f64 / secs;
    let up_pps = (b.up_packets - a.up_packets) as f64 / secs;
    let down_pps = (b.down_packets - a.down_packets) as f64 / secs;
    println!(
        "idle node over {secs:.1} s (status every {} s, QUIC keep-alive every {} s, idle timeout \
         {} s), UDP payload bytes:",
        args.status_interval_secs,
        edge_proto::quic::KEEP_ALIVE.as_secs(),
        edge_proto::quic::IDLE_TIMEOUT.as_secs()
    );
    println!(
        "  node -> orchestrator  {up_bps:>7.1} B/s  {up_pps:>5.2} packets/s  ({:.0} B per packet)",
        up_bps / up_pps.max(f64::MIN_POSITIVE)
    );
    println!(
        "  orchestrator -> node  {down_bps:>7.1} B/s  {down_pps:>5.2} packets/s  ({:.0} B per packet)",
        down_bps / down_pps.max(f64::MIN_POSITIVE)
    );
    let both = up_bps + down_bps;
    println!(
        "  per node both ways    {both:.1} B/s = {:.2} kbit/s; at the orchestrator for 10,000 \
         nodes: {:.1} Mbit/s, {:.0} packets/s (UDP payload; add 28 B of IP+UDP header per packet)",
        both * 8.0 / 1e3,
        both * 8.0 * 10_000.0 / 1e6,
        (up_pps + down_pps) * 10_000.0
    );
    println!("metric liveness.up_bytes_per_s {up_bps:.1}");
    println!("metric liveness.down_bytes_per_s {down_bps:.1}");
    println!("metric liveness.up_packets_per_s {up_pps:.2}");
    println!("metric liveness.down_packets_per_s {down_pps:.2}");

    let (mut lost, mut back) = (Vec::new(), Vec::new());
    for round in 0..args.rounds {
        if eventually(WAIT, || orch.online("idle-1")).await.is_none() {
            bail!("round {round}: the node is not online to start with");
        }
        // Cut at a different moment of the keep-alive cycle each round.
        tokio::time::sleep(Duration::from_millis(2_000 + 230 * round as u64)).await;
        relay.link.cut();
        let Some(offline) = eventually(WAIT, || !orch.online("idle-1")).await else {
            bail!("round {round}: the orchestrator still shows the node online");
        };
        relay.link.heal();
        let Some(online) = eventually(WAIT, || orch.online("idle-1")).await else {
            bail!("round {round}: the node did not come back after the heal");
        };
        println!(
            "round {}: offline {:.2} s after the cut, online again {:.2} s after the heal",
            round + 1,
            offline.as_secs_f64(),
            online.as_secs_f64()
        );
        lost.push(offline);
        back.push(online);
    }
    let (lost_med, back_med) = (median(&lost), median(&back));
    if let Some(l) = lost_med {
        let l = l.as_secs_f64();
        println!(
            "node loss detected (relay cut -> offline in the registry), median of {}: {l:.2} s \
             (max {}); goal <= {GOAL_SECS} s: {}; anchors: k8s {}-{} s ({:.0}-{:.0}x ours), \
             Nomad ~{} s ({:.0}x ours)",
            lost.len(),
            stats::ms(lost.iter().max().copied()),
            if l <= GOAL_SECS { "met" } else { "MISSED" },
            ANCHOR_K8S_SECS.0,
            ANCHOR_K8S_SECS.1,
            ANCHOR_K8S_SECS.0 / l,
            ANCHOR_K8S_SECS.1 / l,
            ANCHOR_NOMAD_SECS,
            ANCHOR_NOMAD_SECS / l
        );
        println!("metric liveness.loss_detected_median_s {l:.2}");
    }
    if let Some(b) = back_med {
        println!(
            "back online after the heal, median of {}: {:.2} s (max {}): the node's reconnect \
             backoff (250 ms base, doubling, full jitter) decides this",
            back.len(),
            b.as_secs_f64(),
            stats::ms(back.iter().max().copied())
        );
        println!(
            "metric liveness.back_online_median_s {:.2}",
            b.as_secs_f64()
        );
    }
    drop(node);
    drop(relay);
    orch.orch.shutdown().await;
    Ok(())
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("liveness-cost: starting the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("liveness-cost: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
