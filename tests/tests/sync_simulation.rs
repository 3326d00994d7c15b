//! A deterministic simulation of outbox sync over a bad link, for days on a virtual clock:
//! real `node_core::outbox` (`Outbox` and `Drain`, as the daemon drives them), the real sync
//! at each session's start (`node_core::sync` on the node, `orchestrator_core::sync` on the
//! orchestrator: the hello's outbox marks, acknowledgements of what was already stored, the
//! highest number stored), real `orchestrator_core::events` (the records and the
//! acknowledgement) and the real `MemStore`, joined by a seeded link model: latency,
//! connections lost at random, partitions from seconds to days, node crashes (what was not
//! synced is gone: the node keeps what its outbox committed, and forgetting acknowledged
//! events is not synced), lost outboxes (the log gone, the identity kept: numbering starts
//! again from 1) and orchestrator restarts (every connection lost, the store kept).
//!
//! Each event carries the number of its making, so that it is known whatever sequence number
//! it ends up under. After every acknowledgement the node acts on, every event it
//! acknowledges is in the orchestrator's store; no batch ever lands on a number that holds
//! another event; after every crash, every event the node made is in the store or still in
//! its outbox (or was in an outbox that was lost). After the link heals for good, everything
//! converges: the outboxes empty, every event stored. A failing run prints its seed;
//! `SYNC_SIM_SEED=N` replays it.
//!
//! Now and then the orchestrator leaves an answer out on a live connection (a batch stored
//! but not acknowledged, a sync never finished), which a connection that stays up would
//! never bring back: the node's real `AnswerWatch`, checked on the daemon's status tick,
//! dials again, and the run must converge all the same.

use edge_proto::{
    EventBatch, EventGap, EventKind, EventsStored, List, NodeEvent, NodeId, SyncMode, SyncState,
    Synced, WorkloadReport, WorkloadState, text,
};
use node_core::outbox::{Batch, Class, Drain, Outbox};
use node_core::sync::{AnswerWatch, OutboxMarks, Resync};
use orchestrator_core::events::{acknowledgement, records};
use orchestrator_core::store::{MemStore, Store};
use orchestrator_core::sync::{MAX_RESENT_ACKS, resent_acks};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

const NODES: usize = 16;
const MINUTE: u64 = 60_000;
const HOUR: u64 = 60 * MINUTE;
const DAY: u64 = 24 * HOUR;
/// The daemon's status tick, on which it checks its session's answers.
const TICK: u64 = 10_000;

/// Something the link or a process does at a time.
#[derive(Debug, Clone)]
enum Ev {
    /// The node records an event (a workload restarted) and commits it.
    Record(usize),
    /// A batch reaches the orchestrator on connection `conn`.
    Batch(usize, u64, Box<EventBatch>),
    /// The orchestrator's acknowledgement reaches the node on `conn`.
    Ack(usize, u64, Box<EventsStored>),
    /// The node's hello reaches the orchestrator on `conn`.
    Hello(usize, u64, Box<SyncState>),
    /// The sync's acknowledgements and its end reach the node on `conn`.
    Synced(usize, u64, Vec<EventsStored>, Synced),
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
    /// The node's outbox log is lost (its identity is kept), and its process starts again.
    Wipe(usize),
    /// The node's status tick on `conn`, while it waits on an answer.
    Tick(usize, u64),
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
    /// The outbox's log was made anew and not yet placed after what the orchestrator holds.
    fresh: bool,
    resync: Resync,
    answers: AnswerWatch,
    /// The connection whose status tick is due, while one is.
    ticking: Option<u64>,
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
    /// Events (by the number of their making) every node's outbox let go of after an
    /// acknowledgement.
    forgotten: BTreeSet<(usize, u64)>,
    /// Events lost with an outbox, by the number of their making.
    wiped: BTreeSet<(usize, u64)>,
    /// What each node's batches put in the store: sequence number to the number of the
    /// event's making (the store itself is read at the end).
    held: Vec<BTreeMap<u64, u64>>,
    /// Acknowledgements a sync sent again for events stored before, and outboxes moved above
    /// what the orchestrator held: to show the run went through both.
    resent: u64,
    moved: u64,
    /// Answers the orchestrator left out, and sessions the node's watch gave up on.
    unanswered: u64,
    redialled: u64,
    /// What `Instant` the virtual clock's 0 is.
    origin: Instant,
    /// Until when faults are injected; after it, the link only heals.
    faults_until: u64,
}

/// The number of an event's making, which its body carries.
fn made_of(body: &[u8]) -> u64 {
    match postcard::from_bytes::<EventKind>(body) {
        Ok(EventKind::Instance(report)) => u64::from(report.restarts),
        other => panic!("not one of ours: {other:?}"),
    }
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
                    fresh: true,
                    resync: Resync::default(),
                    answers: AnswerWatch::default(),
                    ticking: None,
                })
                .collect(),
            store: MemStore::default(),
            orchestrator_up: true,
            next_conn: 1,
            forgotten: BTreeSet::new(),
            wiped: BTreeSet::new(),
            held: vec![BTreeMap::new(); NODES],
            resent: 0,
            moved: 0,
            unanswered: 0,
            redialled: 0,
            origin: Instant::now(),
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

    /// Whether the orchestrator leaves this answer out (while faults are injected).
    fn leaves_out(&mut self) -> bool {
        let out = self.now < self.faults_until && self.rng.u8(..) < 3;
        self.unanswered += u64::from(out);
        out
    }

    /// Starts the node's status tick on its connection, unless one is due already.
    fn watch(&mut self, i: usize) {
        // A week after the faults end, every wait is over; a run whose node still waits
        // then has not converged, and the check says so rather than tick for ever.
        let over = self.now > self.faults_until + 7 * DAY;
        let node = &mut self.nodes[i];
        if let Some(conn) = node.conn
            && node.ticking != Some(conn)
            && !over
        {
            node.ticking = Some(conn);
            let at = self.now + TICK;
            self.at(at, Ev::Tick(i, conn));
        }
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

    /// The events of node `i` the store holds, by the number of their making.
    fn stored(&self, i: usize) -> BTreeSet<u64> {
        let node = self.nodes[i].id.to_string();
        self.store
            .events(Some(&node))
            .expect("mem store")
            .into_iter()
            .map(|e| match e.what {
                orchestrator_core::events::What::Instance { restarts, .. } => u64::from(restarts),
                other => self.fail(&format!("not one of ours: {other:?}")),
            })
            .collect()
    }

    /// The node forgets `seqs`, acknowledged: each must be stored, as the same event.
    fn forget(&mut self, i: usize, seqs: impl IntoIterator<Item = u64>) -> usize {
        let node = &mut self.nodes[i];
        let made: BTreeMap<u64, u64> = seqs
            .into_iter()
            .filter_map(|seq| Some((seq, made_of(&node.mem.get(seq)?.body))))
            .collect();
        let gone = node.mem.ack(made.keys().copied());
        for seq in &gone {
            let event = made[seq];
            if self.held[i].get(seq) != Some(&event) {
                self.fail(&format!(
                    "node {i} forgot event {event} (seq {seq}), which is not stored as it"
                ));
            }
            self.forgotten.insert((i, event));
        }
        gone.len()
    }

    /// What node `i`'s outbox holds, by the number of each event's making.
    fn in_outbox(&self, i: usize) -> BTreeSet<u64> {
        self.nodes[i]
            .mem
            .records()
            .map(|r| made_of(&r.body))
            .collect()
    }

    /// Sends what the window lets go on the node's connection.
    fn pump(&mut self, i: usize) {
        let Some(conn) = self.nodes[i].conn else {
            return;
        };
        // Nothing goes before the session's sync is over.
        if !self.nodes[i].resync.is_done() {
            return;
        }
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
            self.watch(i);
        }
    }

    fn disconnect(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        if node.conn.take().is_some() {
            node.resync.disconnected();
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
                for (record, event) in records.iter().zip(batch.events.iter()) {
                    let EventKind::Instance(report) = &event.kind else {
                        self.fail("not one of ours");
                    };
                    let made = u64::from(report.restarts);
                    if let Some(other) = self.held[i].insert(record.seq, made)
                        && other != made
                    {
                        self.fail(&format!(
                            "node {i}'s event {made} landed on seq {}, which held event {other}",
                            record.seq
                        ));
                    }
                }
                self.store.put_events(&records).expect("mem store");
                if self.leaves_out() {
                    return;
                }
                let ack = acknowledgement(&batch);
                let at = self.now + self.latency();
                self.at(at, Ev::Ack(i, conn, Box::new(ack)));
            }
            Ev::Ack(i, conn, ack) => {
                if !self.orchestrator_up || self.nodes[i].conn != Some(conn) {
                    return;
                }
                self.forget(i, ack.seqs.iter().copied());
                let node = &mut self.nodes[i];
                node.mem.ack_gaps(ack.gaps_through);
                node.drain.acked();
                node.answers.answered();
                self.pump(i);
            }
            Ev::Hello(i, conn, said) => {
                if !self.orchestrator_up || self.nodes[i].conn != Some(conn) {
                    return;
                }
                let stored = self
                    .store
                    .node_event_seqs(self.nodes[i].id, said.outbox_oldest, MAX_RESENT_ACKS)
                    .expect("mem store");
                let acks = resent_acks(&said, &stored.from);
                let synced = Synced {
                    mode: SyncMode::Changes,
                    assigned: 0,
                    unassigned: 0,
                    events_through: stored.highest,
                };
                if self.leaves_out() {
                    return;
                }
                let at = self.now + self.latency();
                self.at(at, Ev::Synced(i, conn, acks, synced));
            }
            Ev::Synced(i, conn, acks, synced) => {
                if !self.orchestrator_up || self.nodes[i].conn != Some(conn) {
                    return;
                }
                for ack in acks {
                    self.resent += self.forget(i, ack.seqs.iter().copied()) as u64;
                }
                let node = &mut self.nodes[i];
                node.answers.answered();
                let Some(finish) = node.resync.finish(&synced, []) else {
                    self.fail("a second end of one sync");
                };
                // What the store does: moved and placed, durably.
                if let Some(through) = finish.events_through
                    && node.mem.number_after(through, node.fresh)
                {
                    self.moved += 1;
                }
                node.fresh = false;
                node.disk = node.mem.clone();
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
                let conn = self.next_conn;
                self.next_conn += 1;
                let node = &mut self.nodes[i];
                node.conn = Some(conn);
                node.resync.welcomed();
                node.answers.answered();
                let said = node_core::sync::state(
                    [],
                    true,
                    OutboxMarks {
                        next: node.mem.next_seq(),
                        oldest: node.mem.oldest(),
                        fresh: node.fresh,
                    },
                );
                let at = self.now + self.latency();
                self.at(at, Ev::Hello(i, conn, Box::new(said)));
                self.watch(i);
            }
            Ev::Tick(i, conn) => {
                let now = self.origin + Duration::from_millis(self.now);
                let node = &mut self.nodes[i];
                if node.ticking == Some(conn) {
                    node.ticking = None;
                }
                if node.conn != Some(conn) {
                    return;
                }
                let waiting = !node.resync.is_done() || node.drain.awaiting(&node.mem);
                if node.answers.stalled(waiting, now) {
                    node.answers.answered();
                    self.redialled += 1;
                    self.disconnect(i);
                } else if waiting {
                    self.watch(i);
                }
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
                let what = match self.rng.u8(..16) {
                    0..=3 => Ev::Partition(i),
                    4..=7 => Ev::Drop(i),
                    8..=11 => Ev::Flaky(i, next + self.rng.u64(MINUTE..10 * MINUTE)),
                    12..=14 => Ev::Crash(i),
                    _ => Ev::Wipe(i),
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
                node.resync.disconnected();
                node.conn = None;
                let kept = self.in_outbox(i);
                let stored: BTreeSet<u64> = self.held[i].values().copied().collect();
                for event in 1..=self.nodes[i].made {
                    if !kept.contains(&event)
                        && !stored.contains(&event)
                        && !self.wiped.contains(&(i, event))
                    {
                        self.fail(&format!("node {i} lost event {event} in a crash"));
                    }
                }
                let back = self.now + self.rng.u64(1_000..MINUTE);
                self.at(back, Ev::Dial(i));
                if faults {
                    let next = self.now + self.rng.u64(MINUTE..DAY);
                    self.at(next, Ev::Partition(i));
                }
            }
            Ev::Wipe(i) => {
                // The log is gone: what it held is lost, and numbering starts again.
                // (The disk may still hold events forgotten since its last commit: those
                // were stored, and are not lost.)
                let lost: Vec<u64> = self.nodes[i]
                    .disk
                    .records()
                    .map(|r| made_of(&r.body))
                    .filter(|e| !self.forgotten.contains(&(i, *e)))
                    .collect();
                self.wiped.extend(lost.into_iter().map(|e| (i, e)));
                let node = &mut self.nodes[i];
                node.disk = Outbox::new(16 << 20, 1);
                node.mem = node.disk.clone();
                node.fresh = true;
                node.drain = Drain::default();
                node.resync.disconnected();
                node.conn = None;
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

/// What a run did, for the checks across seeds.
#[derive(Debug, PartialEq, Eq)]
struct Run {
    made: u64,
    forgotten: usize,
    wiped: usize,
    resent: u64,
    moved: u64,
    unanswered: u64,
    redialled: u64,
}

fn check(seed: u64) -> Run {
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
        // Every event is stored, but those lost with an outbox before they were.
        let lost = |e: &u64| sim.wiped.contains(&(i, *e)) && !stored.contains(e);
        let all: BTreeSet<u64> = (1..=node.made).filter(|e| !lost(e)).collect();
        if stored != all {
            sim.fail(&format!(
                "node {i} made {} events ({} lost with an outbox); the orchestrator holds {} of them",
                node.made,
                node.made as usize - all.len(),
                stored.intersection(&all).count()
            ));
        }
    }
    Run {
        made,
        forgotten: sim.forgotten.len(),
        wiped: sim.wiped.len(),
        resent: sim.resent,
        moved: sim.moved,
        unanswered: sim.unanswered,
        redialled: sim.redialled,
    }
}

#[test]
fn outbox_sync_loses_nothing_through_days_of_partitions_crashes_and_restarts() {
    let seeds: Vec<u64> = match std::env::var("SYNC_SIM_SEED") {
        Ok(seed) => vec![seed.parse().expect("SYNC_SIM_SEED is a number")],
        Err(_) => (1..=5).collect(),
    };
    let (mut resent, mut moved, mut wiped, mut unanswered, mut redialled) = (0, 0, 0, 0, 0);
    for seed in &seeds {
        let run = check(*seed);
        // Every event left its outbox once: acknowledged, or lost with the outbox.
        assert!(
            run.made > 0 && (run.forgotten + run.wiped) as u64 == run.made,
            "seed {seed}: {run:?}"
        );
        resent += run.resent;
        moved += run.moved;
        wiped += run.wiped;
        unanswered += run.unanswered;
        redialled += run.redialled;
    }
    if seeds.len() > 1 {
        assert!(
            resent > 0 && moved > 0 && wiped > 0 && unanswered > 0 && redialled > 0,
            "the runs went through acknowledgements sent again ({resent}), outboxes moved \
             above what was stored ({moved}), lost outboxes ({wiped}), and answers left out \
             ({unanswered}) that the node's watch dialled again for ({redialled})"
        );
    }
}

#[test]
fn the_same_seed_gives_the_same_run() {
    assert_eq!(check(42), check(42));
}
