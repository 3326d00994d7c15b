//! Chaos for the offline path, with real processes over real QUIC: a real `edge-orchestrator`
//! and several real `edge-node run`s, each node behind a relay of its own. A seeded schedule
//! cuts links, heals them, makes them lossy and slow, kills nodes and the orchestrator with
//! SIGKILL and starts them again on the same data dirs, while every node's workloads keep
//! making events (a workload that exits now and then, and local operators' restarts through
//! `edge-node ctl`). Then everything heals, and what a user relies on is checked: every event
//! each node numbered is stored at the orchestrator (none lost, none twice), and no reconnect
//! restarted a workload: `steady`'s process changes only when its node was killed, once per
//! kill.
//!
//! The seed is printed; `CHAOS_SEED=N` replays a schedule, `CHAOS_CYCLES=N` sets its length.
//! The last line printed is the totals, as `benches/RESULTS.md` records them.

use edge_tests::cli::{Edgectl, node_config};
use edge_tests::relay::Relay;
use edge_tests::{PATIENCE, Proc, alive, binary, eventually, start_orchestrator_logged};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// Nodes in the fleet.
const NODES: usize = 3;
/// Cycles of the schedule unless `CHAOS_CYCLES` says otherwise: about a minute of chaos.
const CYCLES: u32 = 30;
/// How long everything gets to settle once healed: a bound on a hang. A node whose link was
/// cut for long has backed off its dials to several seconds (full jitter, capped at 30 s).
const SETTLE: Duration = Duration::from_secs(120);

/// A workload that runs until the test's directory is gone: its process must never change
/// but when its node is killed.
const STEADY: &str = "#!/bin/sh\nwhile [ -d \"$WHILE_DIR\" ]; do sleep 1; done\n";
/// A workload that exits after one to four seconds, so that its node keeps making events,
/// until `$WHILE_DIR/calm` exists; then it runs on quietly, so that the fleet can settle.
const FLAKY: &str = "#!/bin/sh\nsleep $(( $$ % 4 + 1 ))\n\
    if [ -e \"$WHILE_DIR/calm\" ]; then while [ -d \"$WHILE_DIR\" ]; do sleep 1; done; fi\n\
    exit 3\n";

/// One step of the schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Drop everything on a node's link.
    Cut(usize),
    /// Drop a share of a node's datagrams and hold the rest a while.
    Lossy(usize, u32, u64),
    /// SIGKILL a node and start it again on the same data dir.
    KillNode(usize),
    /// SIGKILL the orchestrator while nodes are sending, and start it again on the same
    /// data dir and port.
    KillOrchestrator,
}

/// The schedule for `seed`: every kind of step at least twice, the rest drawn, shuffled.
fn schedule(seed: u64, cycles: u32) -> Vec<(Step, u64)> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let draw = |rng: &mut fastrand::Rng| match rng.u32(0..4) {
        0 => Step::Cut(rng.usize(0..NODES)),
        1 => Step::Lossy(rng.usize(0..NODES), rng.u32(10..=40), rng.u64(0..=150)),
        2 => Step::KillNode(rng.usize(0..NODES)),
        _ => Step::KillOrchestrator,
    };
    let mut steps: Vec<Step> = (0..2)
        .flat_map(|_| {
            [
                Step::Cut(rng.usize(0..NODES)),
                Step::Lossy(rng.usize(0..NODES), rng.u32(10..=40), rng.u64(0..=150)),
                Step::KillNode(rng.usize(0..NODES)),
                Step::KillOrchestrator,
            ]
        })
        .collect();
    while steps.len() < cycles as usize {
        steps.push(draw(&mut rng));
    }
    rng.shuffle(&mut steps);
    // How long each step's state lasts before the next step.
    steps
        .into_iter()
        .map(|s| (s, rng.u64(800..=3000)))
        .collect()
}

/// The totals the test prints and `benches/RESULTS.md` records.
#[derive(Debug, Default)]
struct Totals {
    cycles: u32,
    node_kills: u32,
    orchestrator_kills: u32,
    link_cuts: u32,
    lossy: u32,
    operator_restarts: u32,
    made: u64,
    stored: u64,
    lost: u64,
    duplicates: u64,
    reconnect_restarts: u64,
}

/// The orchestrator process and how to reach it.
struct Orchestrator {
    proc: Proc,
    dir: PathBuf,
    quic: String,
    ctl: Edgectl,
}

impl Orchestrator {
    fn start(dir: &Path, quic_listen: &str) -> Self {
        let (proc, quic, api) =
            start_orchestrator_logged(dir, quic_listen, &dir.with_extension("log"));
        Self {
            proc,
            dir: dir.to_owned(),
            ctl: Edgectl::admin(&api, dir),
            quic,
        }
    }

    /// SIGKILL, then the same data dir and QUIC port again.
    fn kill_and_restart(self) -> Self {
        let Self {
            mut proc,
            dir,
            quic,
            ..
        } = self;
        proc.0.kill().expect("SIGKILL the orchestrator");
        proc.0.wait().expect("reap the orchestrator");
        Self::start(&dir, &quic)
    }

    /// `GET path` on the API as admin.
    fn get(&self, path: &str) -> Value {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(PATIENCE))
            .build()
            .into();
        let mut response = agent
            .get(format!("{}{path}", self.ctl.api))
            .header("authorization", format!("Bearer {}", self.ctl.token))
            .call()
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let text = response
            .body_mut()
            .read_to_string()
            .expect("a readable body");
        serde_json::from_str(&text).expect("a JSON body")
    }

    /// Every event the orchestrator stored from `node`'s outbox, by sequence number, paged
    /// through `since`; and how many times a page listed a sequence number twice.
    fn node_events(&self, node: &str) -> (BTreeMap<u64, Value>, u64) {
        let mut all = BTreeMap::new();
        let mut twice = 0;
        let mut since = 0u64;
        loop {
            let page = self.get(&format!("/v1/events?node={node}&limit=1000&since={since}"));
            let page = page.as_array().expect("a list of events").clone();
            let full = page.len() == 1000;
            let mut in_page = BTreeSet::new();
            let mut last_at = since;
            for event in page {
                last_at = last_at.max(event["at_ms"].as_u64().expect("at_ms"));
                if event["origin"] != "node" {
                    continue;
                }
                let seq = event["seq"].as_u64().expect("seq");
                if !in_page.insert(seq) {
                    twice += 1;
                }
                all.insert(seq, event);
            }
            if !full {
                return (all, twice);
            }
            // The next page starts at the last time seen (inclusive): what this one listed
            // at that time comes again and lands on the same key.
            assert!(last_at > since, "a page of 1,000 events in one millisecond");
            since = last_at;
        }
    }
}

/// One node: its config, relay and process, and what the test saw of it.
struct Node {
    name: String,
    config: PathBuf,
    log: PathBuf,
    relay: Relay,
    proc: Option<Proc>,
    kills: u32,
    /// `steady`'s processes as the node reported them, each new one once, in order.
    steady: Vec<u32>,
    cut: bool,
}

impl Node {
    /// `edge-node run`, its log appended to a file beside its config.
    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("the node's log file");
        let child = Command::new(binary("edge-node"))
            .args(["run", "--config"])
            .arg(&self.config)
            .env("EDGE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("the node starts");
        self.proc = Some(Proc(child));
    }

    fn kill(&mut self) {
        if let Some(mut proc) = self.proc.take() {
            proc.0.kill().expect("SIGKILL the node");
            proc.0.wait().expect("reap the node");
        }
        self.kills += 1;
    }

    fn ctl(&self, args: &[&str]) -> Output {
        Command::new(binary("edge-node"))
            .arg("ctl")
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .output()
            .expect("edge-node ctl runs")
    }

    /// `edge-node ctl ARGS --json`'s answer, if the node answered.
    fn ctl_json(&self, args: &[&str]) -> Option<Value> {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.ctl(&all);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// `steady`'s process and restart count, if the node answers and it runs.
    fn steady_now(&self) -> Option<(u32, u64)> {
        let workloads = self.ctl_json(&["workloads"])?;
        let steady = workloads
            .as_array()?
            .iter()
            .find(|w| w["name"] == "steady" && w["state"] == "running")?;
        let pid = u32::try_from(steady["pid"].as_u64()?).ok()?;
        Some((pid, steady["restarts"].as_u64()?))
    }

    /// Notes `steady`'s process now, if the node can say; a new one is appended. Its restart
    /// count (restarts by this daemon) must be 0: nothing but a node's own start may start it.
    fn observe_steady(&mut self, totals: &mut Totals) {
        if let Some((pid, restarts)) = self.steady_now() {
            if self.steady.last() != Some(&pid) {
                self.steady.push(pid);
            }
            if restarts > 0 {
                totals.reconnect_restarts += restarts;
                panic!(
                    "{}: steady restarted {restarts} times by its own daemon (pid {pid})",
                    self.name
                );
            }
        }
    }

    /// After a kill: polls until the new daemon runs a new `steady` process, and notes it.
    async fn await_new_steady(&mut self) {
        let old = self.steady.last().copied();
        let mut found = None;
        let seen = eventually(PATIENCE, || {
            found = self
                .steady_now()
                .filter(|(pid, _)| Some(*pid) != old && alive(*pid));
            found.is_some()
        })
        .await;
        assert!(
            seen.is_some(),
            "{}: steady runs again after the node's restart (was {old:?}); log in {}",
            self.name,
            self.log.display()
        );
        if let Some((pid, _)) = found {
            self.steady.push(pid);
        }
    }

    /// Waits until the node's supervisor holds `flaky`: from then on it keeps it across its
    /// own restarts, so a local operator can always find it. (Admitted but not yet started,
    /// a node killed would have to fetch it again first.)
    async fn await_flaky(&self) {
        let holds = || {
            self.ctl_json(&["workloads"])
                .and_then(|w| {
                    w.as_array()
                        .map(|all| all.iter().any(|i| i["name"] == "flaky"))
                })
                .unwrap_or(false)
        };
        assert!(
            eventually(PATIENCE, holds).await.is_some(),
            "{}: flaky runs; log in {}",
            self.name,
            self.log.display()
        );
    }

    /// A local operator restarts `flaky`; whether the node took the request (and so
    /// recorded it in its outbox).
    fn operator_restart(&self) -> bool {
        let out = self.ctl(&["restart", "flaky"]);
        if out.status.success() {
            return true;
        }
        let err = String::from_utf8_lossy(&out.stderr);
        // A node just started may not have its socket yet: nothing was asked of it.
        assert!(
            err.contains("cannot reach the node"),
            "{}: ctl restart failed: {err}",
            self.name
        );
        false
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_survive_partitions_loss_and_kills_and_reconnects_restart_nothing() {
    let seed = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    let cycles = std::env::var("CHAOS_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(CYCLES);
    println!("chaos seed {seed} (replay: CHAOS_SEED={seed} CHAOS_CYCLES={cycles})");
    let plan = schedule(seed, cycles);
    let mut rng = fastrand::Rng::with_seed(seed ^ 0x5eed);

    let dir = tempfile::tempdir().expect("tmp");
    let mut orch = Orchestrator::start(&dir.path().join("orchestrator"), "127.0.0.1:0");
    let join = orch
        .ctl
        .json(&["token", "create", "--uses", &NODES.to_string()]);
    let target = orch.quic.parse().expect("the QUIC address");
    let mut nodes = Vec::new();
    for i in 1..=NODES {
        let name = format!("chaos-{i}");
        let relay = Relay::start(target).await;
        let config = node_config(
            dir.path(),
            &name,
            "status_interval_secs = 1",
            &relay.addr.to_string(),
            &join,
        );
        let mut node = Node {
            log: dir.path().join(&name).join("node.log"),
            name,
            config,
            relay,
            proc: None,
            kills: 0,
            steady: Vec::new(),
            cut: false,
        };
        node.spawn();
        nodes.push(node);
    }
    for node in &nodes {
        assert!(
            eventually(PATIENCE, || orch.ctl.status_of(&node.name).as_deref()
                == Some("online"))
            .await
            .is_some(),
            "{} online",
            node.name
        );
    }

    // Both workloads on every node.
    for (name, script) in [("steady", STEADY), ("flaky", FLAKY)] {
        let path = dir.path().join(format!("{name}.sh"));
        std::fs::write(&path, script).expect("write the script");
        let pushed = orch
            .ctl
            .json(&["artifact", "push", path.to_str().expect("utf-8")]);
        let spec = dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &spec,
            format!(
                "name = \"{name}\"\nversion = \"1.0.0\"\nartifact = \"{}\"\n\
                 placement = \"per-node\"\nrestart = {{ policy = \"always\" }}\n\
                 env = {{ WHILE_DIR = \"{}\" }}\n\
                 [resources]\ncpu_millis = 100\nmemory_bytes = 33554432\n",
                pushed["digest"].as_str().expect("digest"),
                dir.path().display()
            ),
        )
        .expect("write the spec");
        let out = orch
            .ctl
            .run(&["deploy", "-f", spec.to_str().expect("utf-8")]);
        assert!(
            out.status.success(),
            "deploy {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut totals = Totals::default();
    for node in &mut nodes {
        node.await_new_steady().await;
        node.await_flaky().await;
    }

    for (cycle, (step, dwell_ms)) in plan.iter().enumerate() {
        totals.cycles += 1;
        // Links cut in an earlier cycle heal, half of them each cycle.
        for node in &mut nodes {
            if node.cut && rng.bool() {
                node.relay.link.clear();
                node.cut = false;
            }
        }
        match *step {
            Step::Cut(i) => {
                nodes[i].relay.link.cut();
                nodes[i].cut = true;
                totals.link_cuts += 1;
            }
            Step::Lossy(i, percent, delay_ms) => {
                let link = &nodes[i].relay.link;
                link.heal();
                link.lossy(percent);
                link.delay(Duration::from_millis(delay_ms));
                // A lossy link heals like a cut one.
                nodes[i].cut = true;
                totals.lossy += 1;
            }
            Step::KillNode(i) => {
                let node = &mut nodes[i];
                node.kill();
                totals.node_kills += 1;
                node.spawn();
                node.await_new_steady().await;
            }
            Step::KillOrchestrator => {
                // Mid-sync: every node that can has just made events to send.
                for node in &nodes {
                    if node.operator_restart() {
                        totals.operator_restarts += 1;
                    }
                }
                let sending: usize = nodes
                    .iter()
                    .filter_map(|n| n.ctl_json(&["outbox"]))
                    .filter(|o| o["events"].as_u64() > Some(0))
                    .count();
                orch = orch.kill_and_restart();
                totals.orchestrator_kills += 1;
                println!("cycle {cycle}: orchestrator killed with {sending} nodes sending");
            }
        }
        println!("cycle {cycle}: {step:?}, then {dwell_ms} ms");
        // Local operators, now and then.
        for node in &nodes {
            if rng.u32(0..3) == 0 && node.operator_restart() {
                totals.operator_restarts += 1;
            }
        }
        // The schedule's pace: the fleet runs in this state for a while. Nothing waits for
        // a condition here; the checks below poll.
        tokio::time::sleep(Duration::from_millis(*dwell_ms)).await;
        for node in &mut nodes {
            node.observe_steady(&mut totals);
        }
    }

    // Heal everything, calm the workloads, and let every outbox drain.
    for node in &mut nodes {
        node.relay.link.clear();
        node.cut = false;
    }
    std::fs::write(dir.path().join("calm"), b"").expect("calm");
    let mut outboxes: BTreeMap<String, Value> = BTreeMap::new();
    let drained = eventually(SETTLE, || {
        outboxes = nodes
            .iter()
            .filter_map(|n| Some((n.name.clone(), n.ctl_json(&["outbox"])?)))
            .collect();
        outboxes.len() == NODES
            && outboxes
                .values()
                .all(|o| o["events"] == 0 && o["batches_in_flight"] == 0)
    })
    .await;
    if drained.is_none() {
        // What did not drain first: a long report is cut in the middle.
        for node in &nodes {
            println!(
                "{}: outbox {}; status {}",
                node.name,
                outboxes
                    .get(&node.name)
                    .map_or("unanswered".into(), Value::to_string),
                node.ctl_json(&["status"])
                    .map_or("unanswered".into(), |s| s.to_string())
            );
        }
        let orchestrator_log = orch.dir.with_extension("log");
        for (name, log) in nodes
            .iter()
            .map(|n| (n.name.as_str(), n.log.as_path()))
            .chain([("the orchestrator", orchestrator_log.as_path())])
        {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(25).collect();
            println!("{name}'s log, last lines first:\n{}", tail.join("\n"));
        }
        panic!("every outbox drains once healed (seed {seed}): {outboxes:?}");
    }

    // Every sequence number each node gave out is stored (or in a gap), once.
    let mut operator_stored = 0u64;
    for node in &mut nodes {
        let outbox = &outboxes[&node.name];
        let next_seq = outbox["next_seq"].as_u64().expect("next_seq");
        assert_eq!(outbox["events_dropped"], 0, "{}: {outbox}", node.name);
        let (stored, twice) = orch.node_events(&node.name);
        let mut covered = BTreeSet::new();
        for (seq, event) in &stored {
            covered.insert(*seq);
            if event["kind"] == "gap" {
                covered.extend(*seq..=event["last"].as_u64().expect("a gap's last"));
            }
            if event["kind"] == "operator" {
                operator_stored += 1;
            }
        }
        let missing: Vec<u64> = (1..next_seq).filter(|s| !covered.contains(s)).collect();
        // One state change stored twice would be two records saying the same of the same
        // process: a process starts once, so "running" with its pid is said once.
        let mut running: BTreeMap<String, &Value> = BTreeMap::new();
        let mut repeated = 0u64;
        for event in stored.values() {
            if event["kind"] != "instance" || event["state"] != "running" {
                continue;
            }
            let key = format!("{} {}", event["workload"], event["pid"]);
            if let Some(first) = running.insert(key, event) {
                let same = |e: &Value| {
                    let mut e = e.clone();
                    for volatile in ["seq", "at", "at_ms", "received"] {
                        e[volatile] = Value::Null;
                    }
                    e
                };
                if same(first) == same(event) {
                    println!(
                        "{}: the same report twice:\n  {first}\n  {event}",
                        node.name
                    );
                    repeated += 1;
                }
            }
        }
        println!(
            "{}: made {}, stored {}, missing {missing:?}, listed twice {twice}, \
             the same report stored twice {repeated}, killed {} times, steady pids {:?}",
            node.name,
            next_seq - 1,
            stored.range(..next_seq).count(),
            node.kills,
            node.steady
        );
        totals.made += next_seq - 1;
        totals.stored += stored.range(..next_seq).count() as u64;
        totals.lost += missing.len() as u64;
        totals.duplicates += twice + repeated;
        node.observe_steady(&mut totals);
        let changes = node.steady.len() as u64 - 1;
        totals.reconnect_restarts += changes.saturating_sub(u64::from(node.kills));
        // Sessions the node gave up on because the orchestrator stopped answering: each
        // one is a message the orchestrator lost, which the log says.
        let log = std::fs::read_to_string(&node.log).unwrap_or_default();
        let unanswered = log
            .lines()
            .filter(|l| l.contains("unanswered past"))
            .count();
        if unanswered > 0 {
            println!(
                "{}: {unanswered} sessions left unanswered and dialled again",
                node.name
            );
        }
    }
    println!(
        "chaos totals: seed {seed}, {} cycles, {NODES} nodes, {} node kills, {} orchestrator \
         kills, {} link cuts, {} lossy links, {} operator restarts; events made {}, stored {}, \
         lost {}, duplicates {}; reconnect restarts {}",
        totals.cycles,
        totals.node_kills,
        totals.orchestrator_kills,
        totals.link_cuts,
        totals.lossy,
        totals.operator_restarts,
        totals.made,
        totals.stored,
        totals.lost,
        totals.duplicates,
        totals.reconnect_restarts
    );
    assert_eq!(totals.lost, 0, "events lost (seed {seed})");
    assert_eq!(totals.duplicates, 0, "events stored twice (seed {seed})");
    assert_eq!(
        totals.made, totals.stored,
        "events made = stored (seed {seed})"
    );
    assert_eq!(
        operator_stored,
        u64::from(totals.operator_restarts),
        "every local operator's restart is an event (seed {seed})"
    );
    for node in &nodes {
        assert_eq!(
            node.steady.len() as u32,
            node.kills + 1,
            "{}: steady's process changes once per kill of its node, never on a reconnect \
             (pids {:?}; seed {seed})",
            node.name,
            node.steady
        );
    }
    assert_eq!(totals.reconnect_restarts, 0, "seed {seed}");

    // A clean stop: each daemon ends its workloads.
    for node in &mut nodes {
        if let Some(mut proc) = node.proc.take() {
            let pid = proc.0.id().to_string();
            let _ = Command::new("kill").args(["-TERM", &pid]).status();
            let stopped = eventually(PATIENCE, || proc.0.try_wait().ok().flatten().is_some()).await;
            assert!(stopped.is_some(), "{} stops on SIGTERM", node.name);
        }
    }
    drop(orch);
}
