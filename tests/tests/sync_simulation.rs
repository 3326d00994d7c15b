//! A deterministic simulation of outbox sync over a bad link, for days on a virtual clock:
//! real `node_core::outbox` (`Outbox` and `Drain`, as the daemon drives them), real
//! `orchestrator_core::events` (the records and the acknowledgement) and the real
//! `MemStore`, joined by a seeded link model: latency, connections lost at random, partitions
//! from seconds to days, node crashes (what was not synced is gone: the node keeps what its
//! outbox committed, and forgetting acknowledged events is not synced) and orchestrator
//! restarts (every connection lost, the store kept).
//!
//! After every acknowledgement the node acts on, every event it acknowledges is in the
//! orchestrator's store; after every crash, every event the node made is in the store or still
//! in its outbox. After the link heals for good, everything converges: the outboxes empty,
//! every event stored once. A failing run prints its seed; `SYNC_SIM_SEED=N` replays it.

use edge_proto::{
    EventBatch, EventGap, EventKind, List, NodeEvent, NodeId, WorkloadReport, WorkloadState, text,
};
use node_core::outbox::{Batch, Class, Drain, Outbox};
use orchestrator_core::events::{acknowledgement, records};
use orchestrator_core::store::{MemStore, Store};
use std::collections::{BTreeMap, BTreeSet};

const NODES: usize = 16;
const MINUTE: u64 = 60_000;
const HOUR: u64 = 60 * MINUTE;
const DAY: u64 = 24 * HOUR;

/// Something the link or a process does at a time.
#[derive(Debug, Clone)]
enum Ev {
    /// The node records an event (a workload restarted) and commits it.
    Record(usize),
    /// A batch reaches the orchestrator on connection `conn`.
    Batch(usize, u64, Box<EventBatch>),
    /// The orchestrator's acknowledgement reaches the node on `conn`.
    Ack(usize, u64, Box<edge_proto::EventsStored>),
    /// The node dials (if its link is up and the orchestrator runs).
    Dial(usize),
    /// The node's link goes down for a while.
    Partition(usize),
    /// The node's link is back.
    Heal(usize),
    /// The connection drops (a NAT rebinding, a modem reset).
    Drop(usize),
    /// The connection drops again and again until the given time.
    Flaky(usize, u64),
    /// The node's process dies and starts again.
    Crash(usize),
    /// The orchestrator dies, and starts again a while later.
    OrchestratorDown,
    OrchestratorUp,
}

struct Node {
    id: NodeId,
    /// What is on disk: the outbox as of its last commit.
    disk: Outbox,
    /// What the running process holds.
    mem: Outbox,
    drain: Drain,
    conn: Option<u64>,
    link_up: bool,
    made: u64,
}

struct Sim {
    seed: u64,
    now: u64,
    rng: fastrand::Rng,
    queue: BTreeMap<(u64, u64), Ev>,
    seq: u64,
    nodes: Vec<Node>,
    store: MemStore,
    orchestrator_up: bool,
    next_conn: u64,
    /// Events every node's outbox let go of after an acknowledgement.
    forgotten: BTreeSet<(usize, u64)>,
    /// What each node's batches put in the store (the store itself is read at the end).
    held: Vec<BTreeSet<u64>>,
    /// Until when faults are injected; after it, the link only heals.
    faults_until: u64,
}

fn body(i: u64) -> Vec<u8> {
    let report = WorkloadReport {
        workload: text("till"),
        generation: 1,
        state: WorkloadState::Failed,
        restarts: u32::try_from(i).unwrap_or(u32::MAX),
        pid: None,
        exit_code: Some(1),
        message: text("exited"),
    };
    postcard::to_allocvec(&EventKind::Instance(report)).expect("encodes")
}

/// The batch on the wire, as the daemon builds it from the drain's.
fn wire(batch: Batch) -> Box<EventBatch> {
    Box::new(EventBatch {
        events: batch
            .records
            .into_iter()
            .map(|r| NodeEvent {
                seq: r.seq,
                at_ms: r.at_ms,
                kind: postcard::from_bytes(&r.body).expect("our own records decode"),
            })
            .collect::<List<_, { EventBatch::MAX_EVENTS }>>(),
        gaps: batch.gaps.into_iter().map(EventGap::from).collect(),
    })
}

impl Sim {
    fn new(seed: u64) -> Self {
        let mut sim = Self {
            seed,
            now: 0,
            rng: fastrand::Rng::with_seed(seed),
            queue: BTreeMap::new(),
            seq: 0,
            nodes: (0..NODES)
                .map(|i| Node {
                    id: NodeId([u8::try_from(i).unwrap_or(0); 16]),
                    disk: Outbox::new(16 << 20, 1),
                    mem: Outbox::new(16 << 20, 1),
                    drain: Drain::default(),
                    conn: None,
                    link_up: true,
                    made: 0,
                })
                .collect(),
            store: MemStore::default(),
            orchestrator_up: true,
            next_conn: 1,
            forgotten: BTreeSet::new(),
            held: vec![BTreeSet::new(); NODES],
            faults_until: 2 * DAY,
        };
        for i in 0..NODES {
            sim.at(0, Ev::Dial(i));
            let first = sim.rng.u64(0..HOUR);
            sim.at(first, Ev::Record(i));
            let fault = sim.rng.u64(0..DAY);
            sim.at(fault, Ev::Partition(i));
        }
        let down = sim.rng.u64(HOUR..DAY);
        sim.at(down, Ev::OrchestratorDown);
        sim
    }

    fn at(&mut self, t: u64, ev: Ev) {
        self.seq += 1;
        self.queue.insert((t, self.seq), ev);
    }

    fn latency(&mut self) -> u64 {
        // Mostly a cellular round trip, now and then a long stall.
        if self.rng.u8(..) < 8 {
            self.rng.u64(2_000..20_000)
        } else {
            self.rng.u64(20..400)
        }
    }

    fn fail(&self, what: &str) -> ! {
        panic!(
            "seed {}: at {} ms: {what} (replay with SYNC_SIM_SEED={})",
            self.seed, self.now, self.seed
        )
    }

    fn stored(&self, i: usize) -> BTreeSet<u64> {
        let node = self.nodes[i].id.to_string();
        self.store
            .events(Some(&node))
            .expect("mem store")
            .into_iter()
            .map(|e| e.seq)
            .collect()
    }

    /// Sends what the window lets go on the node's connection.
    fn pump(&mut self, i: usize) {
        let Some(conn) = self.nodes[i].conn else {
            return;
        };
        loop {
            let node = &mut self.nodes[i];
            let Some(batch) = node.drain.next(
                &mut node.mem,
                48 * 1024,
                EventBatch::MAX_EVENTS,
                EventBatch::MAX_GAPS,
            ) else {
                return;
            };
            let at = self.now + self.latency();
            self.at(at, Ev::Batch(i, conn, wire(batch)));
        }
    }

    fn disconnect(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        if node.conn.take().is_some() {
            node.drain.disconnected(&mut node.mem);
            let retry = self.now + self.rng.u64(250..30_000);
            self.at(retry, Ev::Dial(i));
        }
    }

    fn step(&mut self, ev: Ev) {
        let faults = self.now < self.faults_until;
        match ev {
            Ev::Record(i) => {
                // A workload in a crash loop makes a burst of them.
                let burst = if self.rng.u8(..) < 32 {
                    self.rng.u64(20..200)
                } else {
                    self.rng.u64(1..5)
                };
                for _ in 0..burst {
                    let node = &mut self.nodes[i];
                    node.made += 1;
                    let made = node.made;
                    if let Err(e) = node.mem.push(
                        Class::Event,
                        "till",
                        1_765_000_000_000 + self.now,
                        body(made),
                    ) {
                        self.fail(&format!("no room: {e}"));
                    }
                }
                // Committed before anything is sent about it.
                let node = &mut self.nodes[i];
                node.disk = node.mem.clone();
                self.pump(i);
                if faults {
                    let next = self.now + self.rng.u64(5 * MINUTE..HOUR);
                    self.at(next, Ev::Record(i));
                }
            }
            Ev::Batch(i, conn, batch) => {
                if !self.orchestrator_up || self.nodes[i].conn != Some(conn) {
                    return;
                }
                let node = self.nodes[i].id;
                let records = records(node, &batch, self.now);
                self.store.put_events(&records).expect("mem store");
                self.held[i].extend(records.iter().map(|r| r.seq));
                let ack = acknowledgement(&batch);
                let at = self.now + self.latency();
                self.at(at, Ev::Ack(i, conn, Box::new(ack)));
            }
            Ev::Ack(i, conn, ack) => {
                if !self.orchestrator_up || self.nodes[i].conn != Some(conn) {
                    return;
                }
                let node = &mut self.nodes[i];
                let gone = node.mem.ack(ack.seqs.iter().copied());
                node.mem.ack_gaps(ack.gaps_through);
                node.drain.acked();
                for seq in gone {
                    if !self.held[i].contains(&seq) {
                        self.fail(&format!("node {i} forgot event {seq}, which is not stored"));
                    }
                    self.forgotten.insert((i, seq));
                }
                self.pump(i);
            }
            Ev::Dial(i) => {
                let node = &self.nodes[i];
                if node.conn.is_some() {
                    return;
                }
                if !node.link_up || !self.orchestrator_up {
                    // The dial times out; back off and try again.
                    let retry = self.now + self.rng.u64(4_000..60_000);
                    self.at(retry, Ev::Dial(i));
                    return;
                }
                self.nodes[i].conn = Some(self.next_conn);
                self.next_conn += 1;
                self.pump(i);
            }
            Ev::Partition(i) => {
                if !faults {
                    return;
                }
                // From seconds to days; then the next fault.
                let long = match self.rng.u8(..) {
                    0..=127 => self.rng.u64(1_000..MINUTE),
                    128..=230 => self.rng.u64(MINUTE..6 * HOUR),
                    _ => self.rng.u64(DAY..3 * DAY),
                };
                self.nodes[i].link_up = false;
                self.disconnect(i);
                self.at(self.now + long, Ev::Heal(i));
                let next = self.now + long + self.rng.u64(MINUTE..DAY);
                let what = match self.rng.u8(..4) {
                    0 => Ev::Partition(i),
                    1 => Ev::Drop(i),
                    2 => Ev::Flaky(i, next + self.rng.u64(MINUTE..10 * MINUTE)),
                    _ => Ev::Crash(i),
                };
                self.at(next, what);
            }
            Ev::Heal(i) => {
                self.nodes[i].link_up = true;
                // Links that come back often come back badly.
                if faults && self.rng.bool() {
                    let start = self.now + self.rng.u64(0..10_000);
                    let until = start + self.rng.u64(10_000..MINUTE);
                    self.at(start, Ev::Flaky(i, until));
                }
            }
            Ev::Drop(i) => {
                self.disconnect(i);
                if faults {
                    let next = self.now + self.rng.u64(MINUTE..DAY);
                    self.at(next, Ev::Partition(i));
                }
            }
            Ev::Flaky(i, until) => {
                // A link that keeps dropping its connection for a while: drains are cut
                // half way, again and again.
                self.disconnect(i);
                if self.now < until && faults {
                    let next = self.now + self.rng.u64(300..5_000);
                    self.at(next, Ev::Flaky(i, until));
                } else if faults {
                    let next = self.now + self.rng.u64(MINUTE..DAY);
                    self.at(next, Ev::Partition(i));
                }
            }
            Ev::Crash(i) => {
                // What the process held and did not sync is gone.
                let node = &mut self.nodes[i];
                node.mem = node.disk.clone();
                node.mem.reconnected();
                node.drain = Drain::default();
                node.conn = None;
                let node = &self.nodes[i];
                for seq in 1..=node.made {
                    if node.mem.get(seq).is_none() && !self.held[i].contains(&seq) {
                        self.fail(&format!("node {i} lost event {seq} in a crash"));
                    }
                }
                let back = self.now + self.rng.u64(1_000..MINUTE);
                self.at(back, Ev::Dial(i));
                if faults {
                    let next = self.now + self.rng.u64(MINUTE..DAY);
                    self.at(next, Ev::Partition(i));
                }
            }
            Ev::OrchestratorDown => {
                if !faults {
                    return;
                }
                self.orchestrator_up = false;
                for i in 0..NODES {
                    self.disconnect(i);
                }
                let up = self.now + self.rng.u64(10_000..2 * HOUR);
                self.at(up, Ev::OrchestratorUp);
                let next = up + self.rng.u64(HOUR..DAY);
                self.at(next, Ev::OrchestratorDown);
            }
            Ev::OrchestratorUp => self.orchestrator_up = true,
        }
    }

    fn run(&mut self) {
        while let Some(((t, _), ev)) = self.queue.pop_first() {
            self.now = t;
            self.step(ev);
        }
    }
}

fn check(seed: u64) -> (u64, usize) {
    let mut sim = Sim::new(seed);
    sim.run();
    // Faults stopped, every link healed, the queue ran dry: everything converged.
    let mut made = 0;
    for i in 0..NODES {
        let stored = sim.stored(i);
        let node = &sim.nodes[i];
        made += node.made;
        if !node.mem.is_empty() {
            sim.fail(&format!("node {i} still holds {} events", node.mem.len()));
        }
        let all: BTreeSet<u64> = (1..=node.made).collect();
        if stored != all {
            sim.fail(&format!(
                "node {i} made {} events; the orchestrator holds {} of them",
                node.made,
                stored.intersection(&all).count()
            ));
        }
    }
    (made, sim.forgotten.len())
}

#[test]
fn outbox_sync_loses_nothing_through_days_of_partitions_crashes_and_restarts() {
    let seeds: Vec<u64> = match std::env::var("SYNC_SIM_SEED") {
        Ok(seed) => vec![seed.parse().expect("SYNC_SIM_SEED is a number")],
        Err(_) => (1..=5).collect(),
    };
    for seed in seeds {
        let (made, forgotten) = check(seed);
        assert!(
            made > 0 && forgotten as u64 == made,
            "seed {seed}: {forgotten} of {made}"
        );
    }
}

#[test]
fn the_same_seed_gives_the_same_run() {
    assert_eq!(check(42), check(42));
}
