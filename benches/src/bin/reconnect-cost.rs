//! `reconnect-cost`: what one node's reconnect costs with a full TLS handshake and with a
//! resumed TLS session, side by side, and how much of its time 0-RTT could save.
//!
//! One orchestrator runs in this process (the `edge-tests` harness) and one enrolled node
//! identity dials it again and again through a UDP relay that delays every datagram
//! `--one-way-ms` each way, as a cellular link does. Each reconnect is a real session: the QUIC
//! handshake with the node's certificate, then `Hello` and the orchestrator's `Welcome`. A
//! full reconnect dials with a new TLS configuration; a resumed one with the configuration the
//! node kept (as the daemon does), holding the ticket of its previous session. The two
//! alternate, `--rounds` of each.
//!
//! Then the same again with no delay, `--cpu-rounds` of each, for the CPU a reconnect costs
//! this process: both ends, node and orchestrator, since both run here.
//!
//! What 0-RTT would save is read off the same runs: with it the node's hello would ride in
//! its first flight and the `Welcome` would come one round trip sooner, so at most the time
//! from the hello to the `Welcome`. A benchmark: it prints figures and never fails on one.

use anyhow::{Context, bail};
use clap::Parser;
use edge_benches::{procfs, stats};
use edge_proto::OrchMsg;
use edge_tests::relay::Relay;
use edge_tests::{TestOrchestrator, eventually, hello_as};
use node_daemon::identity::Identity;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

#[derive(Debug, Parser)]
#[command(
    name = "reconnect-cost",
    about = "A reconnect's time, bytes and CPU with full and resumed TLS handshakes"
)]
struct Args {
    /// Delay the relay adds to every datagram, each way.
    #[arg(long, default_value_t = 50)]
    one_way_ms: u64,
    /// Reconnects of each kind through the delaying relay.
    #[arg(long, default_value_t = 20)]
    rounds: usize,
    /// Reconnects of each kind with no delay, for the CPU figure.
    #[arg(long, default_value_t = 300)]
    cpu_rounds: usize,
}

/// A bound on a hang.
const WAIT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Full,
    Resumed,
}

/// One reconnect, from the dial to the `Welcome`.
#[derive(Debug)]
struct Reconnect {
    /// From the dial to the handshake done.
    handshake: Duration,
    /// From the hello to the `Welcome`: what 0-RTT could save at most.
    hello: Duration,
    /// Bytes through the relay, both ways, up to the handshake done: the handshake's own.
    /// (By the `Welcome`, QUIC's path MTU probes are on the wire too, as many as the time
    /// allowed.)
    bytes: u64,
}

struct Node<'a> {
    orch: &'a TestOrchestrator,
    identity: Identity,
    name: String,
    /// Kept from one dial to the next, with its TLS session tickets.
    kept: quinn::ClientConfig,
}

impl Node<'_> {
    async fn reconnect(
        &self,
        kind: Kind,
        to: SocketAddr,
        relay: Option<&Relay>,
    ) -> anyhow::Result<Reconnect> {
        let tls = match kind {
            Kind::Full => node_daemon::tls::session_config(&self.identity)?,
            Kind::Resumed => self.kept.clone(),
        };
        let bytes = || relay.map_or(0, |r| r.link.bytes().0 + r.link.bytes().1);
        let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
        let before = bytes();
        let t0 = Instant::now();
        let conn = endpoint
            .connect_with(tls, to, edge_proto::ORCHESTRATOR_SERVER_NAME)?
            .await?;
        let t1 = Instant::now();
        let bytes = bytes() - before;
        let (_send, _recv, answer) = hello_as(&conn, self.identity.node_id).await;
        let t2 = Instant::now();
        if !matches!(answer, OrchMsg::Welcome(_)) {
            bail!("the orchestrator answered {answer:?}, not Welcome");
        }
        conn.close(0u32.into(), b"again");
        endpoint.wait_idle().await;
        // The next hello would find this session still up and be refused as a copy.
        if eventually(WAIT, || !self.orch.online(&self.name))
            .await
            .is_none()
        {
            bail!("the closed session stayed up");
        }
        Ok(Reconnect {
            handshake: t1 - t0,
            hello: t2 - t1,
            bytes,
        })
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let orch = TestOrchestrator::start().await;
    let name = "returning".to_owned();
    let (identity, _data) = orch.enrolled_identity(&name).await;
    let kept = node_daemon::tls::session_config(&identity)?;
    let node = Node {
        orch: &orch,
        identity,
        name,
        kept,
    };
    let relay = Relay::start(orch.orch.quic_addr).await;
    relay.link.delay(Duration::from_millis(args.one_way_ms));
    // The first dial with the kept configuration is full; it leaves the tickets.
    node.reconnect(Kind::Resumed, relay.addr, Some(&relay))
        .await
        .context("the first session")?;

    let (mut full, mut resumed) = (Vec::new(), Vec::new());
    for _ in 0..args.rounds {
        full.push(node.reconnect(Kind::Full, relay.addr, Some(&relay)).await?);
        resumed.push(
            node.reconnect(Kind::Resumed, relay.addr, Some(&relay))
                .await?,
        );
    }
    println!(
        "through a relay adding {} ms each way ({} ms round trip), {} reconnects of each kind, medians:",
        args.one_way_ms,
        2 * args.one_way_ms,
        args.rounds
    );
    println!(
        "| handshake | dial to handshake done | hello to Welcome | dial to Welcome | handshake bytes, both ways |"
    );
    println!("|---|---|---|---|---|");
    for (label, runs) in [("full", &full), ("resumed", &resumed)] {
        let hs: Vec<Duration> = runs.iter().map(|r| r.handshake).collect();
        let hello: Vec<Duration> = runs.iter().map(|r| r.hello).collect();
        let total: Vec<Duration> = runs.iter().map(|r| r.handshake + r.hello).collect();
        let mut bytes: Vec<u64> = runs.iter().map(|r| r.bytes).collect();
        bytes.sort_unstable();
        println!(
            "| {label} | {} | {} | {} | {} |",
            stats::ms(stats::percentile(&hs, 50.0)),
            stats::ms(stats::percentile(&hello, 50.0)),
            stats::ms(stats::percentile(&total, 50.0)),
            bytes.get(bytes.len() / 2).copied().unwrap_or(0)
        );
        println!(
            "metric reconnect.{label}.welcome_ms {:.1}",
            stats::percentile(&total, 50.0).map_or(0.0, |d| d.as_secs_f64() * 1e3)
        );
    }

    let ticks = procfs::clock_ticks_per_sec() as f64;
    let mut cpu = Vec::new();
    for kind in [Kind::Full, Kind::Resumed, Kind::Full, Kind::Resumed] {
        let start = procfs::cpu_ticks(None)?;
        for _ in 0..args.cpu_rounds / 2 {
            node.reconnect(kind, orch.orch.quic_addr, None).await?;
        }
        let spent = (procfs::cpu_ticks(None)? - start) as f64 / ticks;
        cpu.push((kind, spent));
    }
    println!();
    println!(
        "CPU of this process (node and orchestrator together) per reconnect, no delay, {} of each kind in two alternating halves:",
        args.cpu_rounds / 2 * 2
    );
    for kind in [Kind::Full, Kind::Resumed] {
        let secs: f64 = cpu.iter().filter(|c| c.0 == kind).map(|c| c.1).sum();
        let per = secs * 1e3 / ((args.cpu_rounds / 2 * 2).max(1) as f64);
        println!("  {kind:?}: {per:.2} ms");
        println!("metric reconnect.{kind:?}.cpu_ms {per:.2}");
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    edge_benches::run_tool("reconnect-cost", None, run(args))
}
