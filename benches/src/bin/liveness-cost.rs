//! `liveness-cost`: what keeping one node known-alive costs on the wire, and how fast a lost
//! node is noticed, per liveness profile (`liveness` in the node config).
//!
//! One orchestrator and an enrolled node daemon per profile run in this process (the
//! `edge-tests` harness), each node dialing through its own counting UDP relay, all idling at
//! once for `--secs`, with the status interval their profile gives them unless
//! `--status-interval-secs` says otherwise. The relays' counters give bytes and packets per
//! second each way (QUIC keep-alives, their ACKs, the status frames) and, with 28 B of IP and
//! UDP header per packet, bytes per month. The default profile, `fast`, is the anchor of the
//! others: their ratio to it is printed. Then, per profile and for `--rounds` rounds, its
//! relay is cut and we time how long until the orchestrator shows the node offline, then
//! healed and we time how long until it is online again.
//!
//! `--profiles fast` (the default) prints what `benches/spine.sh` reads; `--profiles
//! fast,metered --secs 300` measures a metered node against it (its status comes every
//! 300 s; a shorter window may miss it).
//!
//! A benchmark: it prints figures and never fails on one.

use anyhow::{Context, bail};
use clap::Parser;
use edge_benches::stats::{self, median};
use edge_proto::liveness::Liveness;
use edge_tests::relay::Relay;
use edge_tests::{TestNode, TestOrchestrator, eventually};
use node_daemon::config::Config;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Published times to notice a dead node (see /work/shared/BENCHMARKS.md).
const ANCHOR_K8S_SECS: (f64, f64) = (40.0, 50.0);
const ANCHOR_NOMAD_SECS: f64 = 20.0;

/// The goals per profile (see /work/shared/BENCHMARKS.md): time to notice a lost node, and
/// for `metered` the bytes a month and their share of the default profile's.
const GOAL_FAST_LOSS_SECS: f64 = 5.0;
const GOAL_METERED_LOSS_SECS: f64 = 60.0;
const GOAL_METERED_MB_PER_MONTH: f64 = 30.0;
const GOAL_METERED_SHARE: f64 = 0.1;

/// IP and UDP headers, per packet.
const HEADER_BYTES: f64 = 28.0;
const SECS_PER_MONTH: f64 = 30.0 * 86_400.0;

#[derive(Debug, Parser)]
#[command(
    name = "liveness-cost",
    about = "Bytes and packets an idle node costs, and time to notice it gone"
)]
struct Args {
    /// How long to count the idle nodes' traffic.
    #[arg(long, default_value_t = 30)]
    secs: u64,
    /// The nodes' status interval; by default each profile's own (10 s, or 300 s metered).
    #[arg(long)]
    status_interval_secs: Option<u64>,
    /// The profiles to measure, comma-separated: `fast`, `metered`.
    #[arg(long, default_value = "fast", value_delimiter = ',')]
    profiles: Vec<String>,
    /// Cut-and-heal rounds for the detection times, per profile.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
}

/// How long to wait for anything that should take seconds (a minute for a metered node); a
/// bound on a hang.
const WAIT: Duration = Duration::from_secs(150);

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

/// One idle node of one profile, behind its own relay.
struct Subject {
    profile: String,
    liveness: Liveness,
    name: String,
    relay: Relay,
    node: TestNode,
    status_interval: Duration,
}

impl Subject {
    /// The prefix of its `metric` lines: none for `fast` (what spine.sh reads).
    fn metric(&self, name: &str) -> String {
        if self.profile == "fast" {
            format!("liveness.{name}")
        } else {
            format!("liveness.{}.{name}", self.profile)
        }
    }
}

async fn start(
    orch: &TestOrchestrator,
    token: &str,
    profile: &str,
    status_interval_secs: Option<u64>,
) -> anyhow::Result<Subject> {
    let liveness = match profile {
        "fast" => Liveness::FAST,
        "metered" => Liveness::METERED,
        other => bail!("no liveness profile {other:?}; expected fast or metered"),
    };
    let relay = Relay::start(orch.orch.quic_addr).await;
    let name = format!("idle-{profile}");
    let data = orch.dir.path().join(&name);
    let status = status_interval_secs
        .map(|s| format!("status_interval_secs = {s}\n"))
        .unwrap_or_default();
    // As `edge_tests::node_config` writes it, but with the profile's status interval.
    let config = Config::from_toml(&format!(
        "version = 1\nname = \"{name}\"\ndata_dir = \"{}\"\nliveness = \"{profile}\"\n{status}\
         [orchestrator]\naddress = \"{}\"\n[join]\ntoken = \"{token}\"\nca_hash = \"{}\"\n",
        data.display(),
        relay.addr,
        orch.ca_hash()
    ))
    .context("node config")?;
    let status_interval = config.status_interval();
    let node = TestNode::spawn(config);
    if eventually(WAIT, || orch.online(&name)).await.is_none() {
        bail!("{name} did not come online");
    }
    Ok(Subject {
        profile: profile.to_owned(),
        liveness,
        name,
        relay,
        node,
        status_interval,
    })
}

/// Bytes a month, headers included, for these rates.
fn mb_per_month(bytes_per_s: f64, packets_per_s: f64) -> f64 {
    (bytes_per_s + packets_per_s * HEADER_BYTES) * SECS_PER_MONTH / 1e6
}

async fn run(args: Args) -> anyhow::Result<()> {
    let orch = TestOrchestrator::start().await;
    let token = orch.token(u32::try_from(args.profiles.len()).unwrap_or(u32::MAX));
    let mut subjects = Vec::new();
    for profile in &args.profiles {
        subjects.push(start(&orch, &token, profile, args.status_interval_secs).await?);
    }
    // Let enrollment's connections close and the sessions' first frames pass.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let window = Duration::from_secs(args.secs.max(1));
    let before: Vec<Counts> = subjects.iter().map(|s| counts(&s.relay)).collect();
    let t = std::time::Instant::now();
    tokio::time::sleep(window).await;
    let secs = t.elapsed().as_secs_f64();
    let mut monthly = Vec::new();
    for (subject, a) in subjects.iter().zip(&before) {
        let b = counts(&subject.relay);
        let up_bps = (b.up_bytes - a.up_bytes) as f64 / secs;
        let down_bps = (b.down_bytes - a.down_bytes) as f64 / secs;
        let up_pps = (b.up_packets - a.up_packets) as f64 / secs;
        let down_pps = (b.down_packets - a.down_packets) as f64 / secs;
        println!(
            "{} node idle over {secs:.1} s (status every {} s, QUIC keep-alive every {} s, idle \
             timeout {} s), UDP payload bytes:",
            subject.profile,
            subject.status_interval.as_secs(),
            subject.liveness.keep_alive.as_secs(),
            subject.liveness.idle_timeout.as_secs()
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
        let month = mb_per_month(both, up_pps + down_pps);
        println!(
            "  per node both ways    {both:.1} B/s = {:.2} kbit/s, {month:.1} MB a month with \
             headers; at the orchestrator for 10,000 nodes: {:.1} Mbit/s, {:.0} packets/s (UDP \
             payload; add 28 B of IP+UDP header per packet)",
            both * 8.0 / 1e3,
            both * 8.0 * 10_000.0 / 1e6,
            (up_pps + down_pps) * 10_000.0
        );
        println!("metric {} {up_bps:.1}", subject.metric("up_bytes_per_s"));
        println!(
            "metric {} {down_bps:.1}",
            subject.metric("down_bytes_per_s")
        );
        println!("metric {} {up_pps:.2}", subject.metric("up_packets_per_s"));
        println!(
            "metric {} {down_pps:.2}",
            subject.metric("down_packets_per_s")
        );
        println!("metric {} {month:.1}", subject.metric("mb_per_month"));
        monthly.push((subject.profile.clone(), month));
    }
    let anchor = monthly.iter().find(|(p, _)| p == "fast").map(|(_, m)| *m);
    if let (Some(fast), Some((_, metered))) = (anchor, monthly.iter().find(|(p, _)| p == "metered"))
    {
        let share = metered / fast;
        println!(
            "metered / fast, bytes a month: {metered:.1} / {fast:.1} MB = {share:.3}; goal <= \
             {GOAL_METERED_MB_PER_MONTH} MB and <= {GOAL_METERED_SHARE}: {}",
            if *metered <= GOAL_METERED_MB_PER_MONTH && share <= GOAL_METERED_SHARE {
                "met"
            } else {
                "MISSED"
            }
        );
        println!("metric liveness.metered.share_of_fast {share:.3}");
    }

    for subject in &subjects {
        detection(&orch, subject, args.rounds).await?;
    }
    for subject in subjects {
        drop(subject.node);
        drop(subject.relay);
    }
    orch.orch.shutdown().await;
    Ok(())
}

/// Cut-and-heal rounds for one node: how long until it shows offline, and online again.
async fn detection(
    orch: &TestOrchestrator,
    subject: &Subject,
    rounds: usize,
) -> anyhow::Result<()> {
    let (name, relay) = (subject.name.as_str(), &subject.relay);
    let (mut lost, mut back) = (Vec::new(), Vec::new());
    // Cut at a different moment of the keep-alive cycle each round.
    let step = subject.liveness.keep_alive / u32::try_from(rounds.max(1)).unwrap_or(1);
    for round in 0..rounds {
        if eventually(WAIT, || orch.online(name)).await.is_none() {
            bail!("{name}, round {round}: the node is not online to start with");
        }
        tokio::time::sleep(Duration::from_secs(2) + step * u32::try_from(round).unwrap_or(0)).await;
        relay.link.cut();
        let Some(offline) = eventually(WAIT, || !orch.online(name)).await else {
            bail!("{name}, round {round}: the orchestrator still shows the node online");
        };
        relay.link.heal();
        let Some(online) = eventually(WAIT, || orch.online(name)).await else {
            bail!("{name}, round {round}: the node did not come back after the heal");
        };
        println!(
            "{} round {}: offline {:.2} s after the cut, online again {:.2} s after the heal",
            subject.profile,
            round + 1,
            offline.as_secs_f64(),
            online.as_secs_f64()
        );
        lost.push(offline);
        back.push(online);
    }
    let goal = if subject.profile == "fast" {
        GOAL_FAST_LOSS_SECS
    } else {
        GOAL_METERED_LOSS_SECS
    };
    if let Some(l) = median(&lost) {
        let l = l.as_secs_f64();
        println!(
            "{} node loss detected (relay cut -> offline in the registry), median of {}: {l:.2} \
             s (max {}); goal <= {goal} s: {}; anchors: k8s {}-{} s ({:.1}-{:.1}x ours), Nomad \
             ~{} s ({:.1}x ours)",
            subject.profile,
            lost.len(),
            stats::ms(lost.iter().max().copied()),
            if l <= goal { "met" } else { "MISSED" },
            ANCHOR_K8S_SECS.0,
            ANCHOR_K8S_SECS.1,
            ANCHOR_K8S_SECS.0 / l,
            ANCHOR_K8S_SECS.1 / l,
            ANCHOR_NOMAD_SECS,
            ANCHOR_NOMAD_SECS / l
        );
        println!("metric {} {l:.2}", subject.metric("loss_detected_median_s"));
    }
    if let Some(b) = median(&back) {
        println!(
            "{} back online after the heal, median of {}: {:.2} s (max {}): the node notices \
             the dead connection by its own idle timeout, then redials (250 ms base, doubling, \
             full jitter)",
            subject.profile,
            back.len(),
            b.as_secs_f64(),
            stats::ms(back.iter().max().copied())
        );
        println!(
            "metric {} {:.2}",
            subject.metric("back_online_median_s"),
            b.as_secs_f64()
        );
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    edge_benches::run_tool("liveness-cost", Some(2), run(args))
}
