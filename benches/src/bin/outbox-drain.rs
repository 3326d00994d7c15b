//! `outbox-drain`: how long a node back from a long time offline takes to hand its queued
//! events to the orchestrator, how many bytes that takes, and whether any is lost.
//!
//! One orchestrator and one node daemon run in this process (the `edge-tests` harness), the
//! node dialing through a counting UDP relay. The node enrolls and stops; `--events` instance
//! events are then written into its outbox on disk (as its daemon writes them, committed
//! once), as if it had recorded them while offline; then it starts again. The clock runs from
//! its start until its outbox is empty and nothing is in flight (read over `edge-node ctl`'s
//! socket every 5 ms), the orchestrator having stored and acknowledged every batch. Then the
//! orchestrator's newest events for the node are checked to be exactly the last ones queued
//! (it keeps the newest 10,000 per node), so a drain that skipped any would show.
//!
//! The anchor is published: Azure IoT Edge's store-and-forward (see
//! /work/shared/BENCHMARKS.md); the goal is 100,000 events in 5 s with none lost. Each round
//! uses a fresh node.
//!
//! A benchmark: it prints figures and never fails on one.

use anyhow::{Context, bail};
use clap::Parser;
use edge_benches::stats::median;
use edge_proto::{EventKind, WorkloadReport, WorkloadState, text};
use edge_tests::relay::Relay;
use edge_tests::{TestNode, TestOrchestrator, eventually};
use node_daemon::config::Config;
use node_daemon::ctl::{self, Request};
use std::path::Path;
use std::time::{Duration, Instant};

const GOAL_SECS: f64 = 5.0;

#[derive(Debug, Parser)]
#[command(
    name = "outbox-drain",
    about = "Time and bytes to drain a node's queued events after a reconnect"
)]
struct Args {
    /// Events queued while offline.
    #[arg(long, default_value_t = 100_000)]
    events: u64,
    /// Rounds, each with a fresh node.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

/// A bound on a hang.
const WAIT: Duration = Duration::from_secs(300);

/// Writes `n` instance events into the stopped node's outbox, as its daemon records them.
fn queue(data_dir: &Path, n: u64, budget: u64) -> anyhow::Result<(u64, u64)> {
    let (mut store, mut outbox, _) =
        edge_outbox::OutboxStore::open(data_dir, budget).context("the node's outbox")?;
    let start_ms = 1_765_000_000_000u64;
    let mut first = None;
    for i in 0..n {
        let report = WorkloadReport {
            workload: text("till"),
            generation: 1,
            state: if i % 2 == 0 {
                WorkloadState::Running
            } else {
                WorkloadState::Failed
            },
            restarts: u32::try_from(i / 2).unwrap_or(u32::MAX),
            pid: Some(10_000 + u32::try_from(i % 50_000).unwrap_or(0)),
            exit_code: (i % 2 == 1).then_some(1),
            message: text("exited with status 1"),
        };
        let body = postcard::to_allocvec(&EventKind::Instance(report))?;
        let seq = store.push(
            &mut outbox,
            node_core::outbox::Class::Event,
            "till",
            start_ms + i * 1_000,
            body,
        )?;
        first.get_or_insert(seq);
    }
    store.commit()?;
    let shed = outbox.shed();
    if shed.events_dropped > 0 {
        bail!(
            "the budget of {budget} B dropped {} events",
            shed.events_dropped
        );
    }
    Ok((first.unwrap_or(0), outbox.next_seq().saturating_sub(1)))
}

struct Round {
    secs: f64,
    up_bytes: u64,
    down_bytes: u64,
    held: usize,
}

async fn round(orch: &TestOrchestrator, token: &str, i: usize, n: u64) -> anyhow::Result<Round> {
    let relay = Relay::start(orch.orch.quic_addr).await;
    let name = format!("drain-{i}");
    let data = orch.dir.path().join(&name);
    let budget: u64 = 64 << 20;
    let config = Config::from_toml(&format!(
        "version = 1\nname = \"{name}\"\ndata_dir = \"{}\"\n\
         [outbox]\nmax_bytes = {budget}\n\
         [orchestrator]\naddress = \"{}\"\n[join]\ntoken = \"{token}\"\nca_hash = \"{}\"\n",
        data.display(),
        relay.addr,
        orch.ca_hash()
    ))
    .context("node config")?;
    let node = TestNode::spawn(config.clone());
    if eventually(WAIT, || orch.online(&name)).await.is_none() {
        bail!("{name} did not come online");
    }
    node.stop().await.context("the node stops")?;
    let (_, last) = queue(&data, n, budget)?;
    let socket = config.ctl().socket.clone();

    let (up0, down0) = relay.link.bytes();
    let started = Instant::now();
    let node = TestNode::spawn(config);
    loop {
        if let Ok(summary) = ctl::call(&socket, &Request::Outbox {}).await
            && summary["events"] == 0
            && summary["batches_in_flight"] == 0
        {
            break;
        }
        if started.elapsed() > WAIT {
            bail!("the outbox did not drain in {WAIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    let (up1, down1) = relay.link.bytes();
    node.stop().await.context("the node stops")?;

    // The orchestrator keeps the newest events: they must be the last ones queued, each once.
    let node_id = orch
        .orch
        .registry
        .events(None)
        .context("stored events")?
        .into_iter()
        .find(|e| e.seq == last)
        .map(|e| e.node)
        .context("the last event queued is stored")?;
    let held: Vec<u64> = orch
        .orch
        .registry
        .events(Some(&node_id))
        .context("the node's events")?
        .into_iter()
        .map(|e| e.seq)
        .collect();
    let expected = held.len() as u64;
    let mut sorted = held.clone();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.len() != held.len() || sorted.first() != Some(&(last + 1 - expected)) {
        bail!(
            "the orchestrator holds {} events, not the last {expected} queued",
            held.len()
        );
    }
    if sorted.last() != Some(&last) || sorted.windows(2).any(|w| w[1] != w[0] + 1) {
        bail!("the orchestrator's newest events have holes");
    }
    Ok(Round {
        secs,
        up_bytes: up1 - up0,
        down_bytes: down1 - down0,
        held: held.len(),
    })
}

async fn run(args: Args) -> anyhow::Result<()> {
    let orch = TestOrchestrator::start().await;
    let token = orch.token(u32::try_from(args.rounds).unwrap_or(u32::MAX));
    let mut times = Vec::new();
    for i in 0..args.rounds {
        let r = round(&orch, &token, i, args.events).await?;
        println!(
            "round {i}: {} events drained in {:.2} s ({:.0} events/s); node -> orchestrator {:.1} MB \
             ({:.0} B/event), orchestrator -> node {:.2} MB; lost 0 (the orchestrator holds the \
             newest {} in order)",
            args.events,
            r.secs,
            args.events as f64 / r.secs,
            r.up_bytes as f64 / 1e6,
            r.up_bytes as f64 / args.events as f64,
            r.down_bytes as f64 / 1e6,
            r.held
        );
        times.push(Duration::from_secs_f64(r.secs));
    }
    let median = median(&times).unwrap_or_default().as_secs_f64();
    println!(
        "median of {}: {median:.2} s for {} events; goal <= {GOAL_SECS} s for 100,000 (ratio to \
         the goal {:.2})",
        times.len(),
        args.events,
        median / GOAL_SECS
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    edge_shell::logging::init();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run(args))
}
