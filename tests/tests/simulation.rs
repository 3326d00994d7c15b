//! A deterministic simulation of a fleet: real `NodeSession`s, real `ServerSession`s, a real
//! `Fleet` and CA, joined by a simulated link with latency, partitions and an orchestrator
//! restart, on a virtual clock that jumps to the next event. Minutes of fleet time run in
//! well under a second, and the same seed gives the same run.
//!
//! The link models what QUIC gives us: frames arrive in order after a latency; while a node is
//! partitioned nothing gets through; a connection that hears nothing for `IDLE_TIMEOUT` dies on
//! both sides; a dial into a partition fails after the idle timeout.

use edge_proto::quic::IDLE_TIMEOUT;
use edge_proto::{Capabilities, Der, Intent, List, NodeId, OrchMsg, Text, encode, text};
use node_core::session::{self as node, BackoffPolicy, ConnectFailure, Join, NodeSession};
use orchestrator::pki::{Ca, node_id_from_cert};
use orchestrator_core::fleet::Fleet;
use orchestrator_core::session::{self as server, Ctx, ServerSession};
use orchestrator_core::store::{MemStore, Store};
use orchestrator_core::tokens;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant, SystemTime};

const LATENCY: Duration = Duration::from_millis(20);
const STATUS_INTERVAL: Duration = Duration::from_secs(10);

fn caps(i: usize) -> Capabilities {
    Capabilities {
        arch: text(if i.is_multiple_of(3) {
            "aarch64"
        } else {
            "x86_64"
        }),
        os: text("linux"),
        os_version: Text::new(),
        kernel: Text::new(),
        hostname: text(&format!("host-{i}")),
        cpus: 4,
        cpu_model: Text::new(),
        memory_bytes: 1 << 30,
        disk_bytes: 1 << 34,
        disk_free_bytes: 1 << 33,
        accelerators: List::new(),
        board: None,
        labels: List::new(),
        location: Some(edge_proto::Location {
            lat: (i % 180) as f64 - 89.0,
            lon: (i % 360) as f64 - 179.0,
            alt_m: None,
        }),
    }
}

/// What travels, in order, per connection.
#[derive(Debug)]
enum Delivery {
    ToServer(Vec<u8>),
    ToNode(Vec<u8>),
    /// The server closed; the node learns it after the latency.
    ServerClosed,
    /// The node closed; the server learns it after the latency.
    NodeClosed,
}

#[derive(Debug)]
enum LinkEvent {
    /// A dial into a partition times out.
    DialFails,
    /// A connection whose other end vanished times out.
    Dies,
}

struct Conn {
    node: usize,
    server: ServerSession,
    alive: bool,
}

struct SimNode {
    session: NodeSession,
    conn: Option<u64>,
    /// The certificate's node id, once stored (what TLS would present).
    cert_id: Option<NodeId>,
    partitioned_since: Option<Instant>,
}

struct Sim {
    t0: Instant,
    now: Instant,
    rng: fastrand::Rng,
    ca: Ca,
    wall0: SystemTime,
    store: MemStore,
    fleet: Fleet,
    nodes: Vec<SimNode>,
    conns: BTreeMap<u64, Conn>,
    next_conn: u64,
    /// (time, sequence) -> (connection, node, what)
    queue: BTreeMap<(Instant, u64), (u64, usize, Delivery)>,
    /// Things the link does to a node later: (time, seq) -> (node, what).
    link_events: BTreeMap<(Instant, u64), (usize, LinkEvent)>,
    seq: u64,
    /// Everything that happened, for the determinism check.
    trace: Vec<String>,
    connects: Vec<(Duration, usize)>,
    enrolled: usize,
    /// Sessions that got input since they were last pumped.
    dirty_nodes: BTreeSet<usize>,
    dirty_conns: BTreeSet<u64>,
    /// Every session's next deadline, soonest first.
    timers: BTreeSet<(Instant, Timer)>,
    node_due: Vec<Option<Instant>>,
    conn_due: HashMap<u64, Instant>,
    partitioned: BTreeSet<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Node(usize),
    Conn(u64),
}

impl Sim {
    fn new(seed: u64, n: usize) -> Self {
        let wall0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let ca = Ca::generate(wall0).expect("ca");
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut fill = |b: &mut [u8]| rng.fill(b);
        let (token, record) =
            tokens::create(&mut fill, 1_800_000_000, 3600, n as u32, "sim".into());
        let store = MemStore::default();
        store.put_token(&record).expect("mem store");
        let fleet = Fleet::new(store.tokens().expect("mem"), Vec::new());
        let t0 = Instant::now();
        // One real key and CSR shared by all simulated nodes: the CA signs it once per node
        // id, and nothing in the protocol depends on keys being distinct.
        let key = rcgen::KeyPair::generate().expect("key");
        let csr = node_daemon::identity::IdentityDir::csr(&key, "sim").expect("csr");
        let nodes = (0..n)
            .map(|i| SimNode {
                session: NodeSession::new(
                    None,
                    Some(Join {
                        token: text(&token),
                        name: text(&format!("node-{i}")),
                        csr_der: Der::new(csr.clone()).expect("fits"),
                    }),
                    caps(i),
                    STATUS_INTERVAL,
                    BackoffPolicy::default(),
                    seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
                    t0,
                ),
                conn: None,
                cert_id: None,
                partitioned_since: None,
            })
            .collect();
        Self {
            t0,
            now: t0,
            rng: fastrand::Rng::with_seed(seed.wrapping_add(1)),
            ca,
            wall0,
            store,
            fleet,
            nodes,
            conns: BTreeMap::new(),
            next_conn: 1,
            queue: BTreeMap::new(),
            link_events: BTreeMap::new(),
            seq: 0,
            trace: Vec::new(),
            connects: Vec::new(),
            enrolled: 0,
            dirty_nodes: (0..n).collect(),
            dirty_conns: BTreeSet::new(),
            timers: BTreeSet::new(),
            node_due: vec![None; n],
            conn_due: HashMap::new(),
            partitioned: BTreeSet::new(),
        }
    }

    fn elapsed(&self) -> Duration {
        self.now - self.t0
    }

    fn seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn deliver_later(&mut self, conn: u64, what: Delivery) {
        let Some(node) = self.conns.get(&conn).map(|c| c.node) else {
            return;
        };
        let at = self.now + LATENCY;
        let seq = self.seq();
        self.queue.insert((at, seq), (conn, node, what));
    }

    fn partitioned(&self, node: usize) -> bool {
        self.nodes[node].partitioned_since.is_some()
    }

    /// Runs the pending actions of every session that got input, until all are quiet, and
    /// refreshes their timers.
    fn pump(&mut self) {
        while !self.dirty_nodes.is_empty() || !self.dirty_conns.is_empty() {
            while let Some(i) = self.dirty_nodes.pop_first() {
                while let Some(action) = self.nodes[i].session.poll_action() {
                    self.node_action(i, action);
                }
                let due = self.nodes[i].session.poll_timeout();
                if let Some(old) = std::mem::replace(&mut self.node_due[i], due) {
                    self.timers.remove(&(old, Timer::Node(i)));
                }
                if let Some(t) = due {
                    self.timers.insert((t, Timer::Node(i)));
                }
            }
            while let Some(id) = self.dirty_conns.pop_first() {
                while let Some(action) =
                    self.conns.get_mut(&id).and_then(|c| c.server.poll_action())
                {
                    self.server_action(id, action);
                }
                let due = self.conns.get(&id).and_then(|c| c.server.poll_timeout());
                if let Some(old) = self.conn_due.remove(&id) {
                    self.timers.remove(&(old, Timer::Conn(id)));
                }
                if let Some(t) = due {
                    self.conn_due.insert(id, t);
                    self.timers.insert((t, Timer::Conn(id)));
                }
            }
        }
    }

    fn node(&mut self, i: usize) -> &mut NodeSession {
        self.dirty_nodes.insert(i);
        &mut self.nodes[i].session
    }

    fn node_action(&mut self, i: usize, action: node::Action) {
        match action {
            node::Action::Connect(intent) => {
                self.connects.push((self.elapsed(), i));
                self.trace
                    .push(format!("{:?} n{i} dial {intent:?}", self.elapsed()));
                if self.partitioned(i) {
                    let seq = self.seq();
                    self.link_events
                        .insert((self.now + IDLE_TIMEOUT, seq), (i, LinkEvent::DialFails));
                    return;
                }
                let id = self.next_conn;
                self.next_conn += 1;
                let peer = match intent {
                    Intent::Session => self.nodes[i].cert_id,
                    Intent::Enroll => None,
                };
                self.conns.insert(
                    id,
                    Conn {
                        node: i,
                        server: ServerSession::new(id, peer, self.now),
                        alive: true,
                    },
                );
                self.nodes[i].conn = Some(id);
                let now = self.now;
                self.node(i).handle_connected(now);
            }
            node::Action::Send(msg) => {
                if let Some(c) = self.nodes[i].conn {
                    let frame = encode(&msg);
                    self.deliver_later(c, Delivery::ToServer(frame[4..].to_vec()));
                }
            }
            node::Action::SaveIdentity(e) => {
                let id = node_id_from_cert(e.cert_der.as_slice());
                assert_eq!(id, Some(e.node_id), "the certificate names the node");
                self.nodes[i].cert_id = id;
                self.enrolled += 1;
                let now = self.now;
                self.node(i).handle_identity_saved(e.node_id, now);
            }
            node::Action::Disconnect => {
                if let Some(c) = self.nodes[i].conn.take() {
                    self.deliver_later(c, Delivery::NodeClosed);
                }
            }
            node::Action::SampleStatus => {
                let uptime_secs = self.elapsed().as_secs();
                self.node(i).handle_status(edge_proto::Status {
                    cpu_percent: 5.0,
                    memory_used_bytes: 1 << 20,
                    disk_free_bytes: 1 << 30,
                    uptime_secs,
                });
            }
            node::Action::Fatal(f) => panic!("node {i} gave up: {f}"),
            node::Action::Assign(_)
            | node::Action::Unassign(_)
            | node::Action::Routes(_)
            | node::Action::Unroute(_)
            | node::Action::EventsStored(_)
            | node::Action::Synced(_)
            | node::Action::Renewed(_)
            | node::Action::RenewRefused(_)
            | node::Action::Model(_) => {}
        }
    }

    fn server_action(&mut self, conn: u64, action: server::Action) {
        match action {
            server::Action::Persist(change) => {
                use orchestrator_core::fleet::Change;
                match change {
                    Change::Token(t) => self.store.put_token(&t),
                    Change::Node(n) => self.store.put_node(&n),
                    Change::NodeDeleted(id) => self.store.delete_node(id),
                }
                .expect("mem store");
            }
            server::Action::Send(msg) => {
                self.deliver_later(conn, Delivery::ToNode(encode(&msg)[4..].to_vec()))
            }
            server::Action::Close(code, reason) => {
                self.trace.push(format!(
                    "{:?} c{conn} close {code:?} {reason}",
                    self.elapsed()
                ));
                self.deliver_later(conn, Delivery::ServerClosed);
                self.server_closed(conn);
            }
            server::Action::CloseReplaced(old) => self.server_closed(old),
            server::Action::CheckLiveness { session, .. } => {
                // The simulated link knows at once what watching for the window would show:
                // whether that connection's node still uses it across a working link.
                let liveness = match self.conns.get(&session) {
                    Some(c) if c.alive => {
                        if self.nodes[c.node].conn == Some(session) && !self.partitioned(c.node) {
                            server::Liveness::Live
                        } else {
                            server::Liveness::Silent
                        }
                    }
                    _ => server::Liveness::Gone,
                };
                self.ctx_call(conn, |s, ctx| s.handle_liveness(session, liveness, ctx));
            }
            server::Action::Event(e) => self.trace.push(format!("{:?} {e:?}", self.elapsed())),
            server::Action::Admission(..)
            | server::Action::WorkloadReport(..)
            | server::Action::ProxyAdvert(..)
            | server::Action::Traffic(..)
            | server::Action::StoreEvents(..)
            | server::Action::Renew(..)
            | server::Action::CertificateStored(..)
            | server::Action::OfferModels(..) => {}
        }
    }

    fn ctx_call(&mut self, conn: u64, f: impl FnOnce(&mut ServerSession, &mut Ctx<'_>)) {
        let wall = self.wall0 + self.elapsed();
        let mut fresh = [0u8; 16];
        self.rng.fill(&mut fresh);
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        self.dirty_conns.insert(conn);
        let mut ctx = Ctx {
            fleet: &mut self.fleet,
            ca: &self.ca,
            wall,
            fresh_id: NodeId(fresh),
        };
        f(&mut c.server, &mut ctx);
    }

    fn server_closed(&mut self, conn: u64) {
        if self.conns.get(&conn).is_some_and(|c| c.alive) {
            self.ctx_call(conn, |s, ctx| s.handle_closed(ctx));
            if let Some(c) = self.conns.get_mut(&conn) {
                c.alive = false;
            }
        }
    }

    fn next_event(&self) -> Option<Instant> {
        let timers = self.timers.first().map(|t| t.0);
        let queue = self.queue.keys().next().map(|k| k.0);
        let dials = self.link_events.keys().next().map(|k| k.0);
        let deaths = self.partitioned.iter().filter_map(|&i| {
            let n = &self.nodes[i];
            n.partitioned_since
                .filter(|_| n.conn.is_some())
                .map(|t| t + IDLE_TIMEOUT)
        });
        timers
            .into_iter()
            .chain(queue)
            .chain(dials)
            .chain(deaths)
            .min()
    }

    /// Runs until `until`, event by event.
    fn run_until(&mut self, until: Instant) {
        self.pump();
        while let Some(t) = self.next_event().filter(|t| *t <= until) {
            self.now = self.now.max(t);
            self.step();
            self.pump();
            self.conns.retain(|_, c| c.alive);
        }
        self.now = until;
    }

    fn step(&mut self) {
        let now = self.now;
        // Deliveries due, in order.
        while let Some(entry) = self.queue.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let (conn, node, what) = entry.remove();
            if self.partitioned(node) {
                // Held back by the partition; QUIC retransmits once the link heals, if the
                // connection is still alive then.
                let seq = self.seq();
                self.queue.insert((now + LATENCY, seq), (conn, node, what));
                continue;
            }
            match what {
                Delivery::ToServer(body) => {
                    if self.conns.get(&conn).is_some_and(|c| c.alive) {
                        self.ctx_call(conn, |s, ctx| s.handle_frame(&body, ctx));
                    }
                }
                Delivery::ToNode(body) => {
                    if self.nodes[node].conn == Some(conn) {
                        let msg: OrchMsg = edge_proto::decode(&body).expect("server frames decode");
                        self.node(node).handle_msg(msg, now);
                    }
                }
                Delivery::ServerClosed => {
                    if self.nodes[node].conn == Some(conn) {
                        self.nodes[node].conn = None;
                        self.node(node).handle_disconnected(now);
                    }
                }
                Delivery::NodeClosed => self.server_closed(conn),
            }
            self.pump();
        }
        while let Some(entry) = self.link_events.first_entry() {
            if entry.key().0 > now {
                break;
            }
            match entry.remove() {
                (i, LinkEvent::DialFails) => self
                    .node(i)
                    .handle_connect_failed(ConnectFailure::Transient("timed out".into()), now),
                (i, LinkEvent::Dies) => self.node(i).handle_disconnected(now),
            }
        }
        // Partitioned connections die of silence on both sides.
        let partitioned: Vec<usize> = self.partitioned.iter().copied().collect();
        for i in partitioned {
            if let (Some(since), Some(conn)) = (self.nodes[i].partitioned_since, self.nodes[i].conn)
                && now >= since + IDLE_TIMEOUT
            {
                self.nodes[i].conn = None;
                self.node(i).handle_disconnected(now);
                self.server_closed(conn);
            }
        }
        while let Some(&(t, timer)) = self.timers.first() {
            if t > now {
                break;
            }
            self.timers.remove(&(t, timer));
            match timer {
                Timer::Node(i) => {
                    self.node_due[i] = None;
                    self.node(i).handle_timeout(now);
                }
                Timer::Conn(id) => {
                    self.conn_due.remove(&id);
                    self.dirty_conns.insert(id);
                    if let Some(c) = self.conns.get_mut(&id) {
                        c.server.handle_timeout(now);
                    }
                }
            }
        }
    }

    fn partition(&mut self, nodes: &[usize]) {
        for &i in nodes {
            self.nodes[i].partitioned_since.get_or_insert(self.now);
            self.partitioned.insert(i);
        }
    }

    fn heal(&mut self) {
        for i in std::mem::take(&mut self.partitioned) {
            self.nodes[i].partitioned_since = None;
        }
    }

    /// The orchestrator process dies and comes back from its store: every connection is gone
    /// (the nodes notice by idle timeout) and the registry is reloaded.
    fn restart_orchestrator(&mut self) {
        for c in self.conns.values_mut() {
            c.alive = false;
        }
        self.conns.clear();
        self.queue.clear();
        self.fleet = Fleet::new(
            self.store.tokens().expect("mem"),
            self.store.nodes().expect("mem"),
        );
        // Nodes hear nothing more; model their idle timeout firing.
        let dead_at = self.now + IDLE_TIMEOUT;
        for i in 0..self.nodes.len() {
            if self.nodes[i].conn.take().is_some() {
                let seq = self.seq();
                self.link_events
                    .insert((dead_at, seq), (i, LinkEvent::Dies));
            }
        }
    }

    fn settle(&mut self, d: Duration) {
        let until = self.now + d;
        self.run_until(until);
    }

    fn online(&self) -> usize {
        self.fleet.counts().0
    }

    fn all_established(&self) -> bool {
        self.nodes.iter().all(|n| n.session.is_established())
    }

    /// Another machine starts with a copy of node `i`'s identity (a cloned SD card). Returns
    /// the copy's index.
    fn clone_node(&mut self, i: usize) -> usize {
        let id = self.nodes[i].cert_id.expect("an enrolled node");
        let seed = self.rng.u64(..);
        self.nodes.push(SimNode {
            session: NodeSession::new(
                Some(id),
                None,
                caps(i),
                STATUS_INTERVAL,
                BackoffPolicy::default(),
                seed,
                self.now,
            ),
            conn: None,
            cert_id: Some(id),
            partitioned_since: None,
        });
        self.node_due.push(None);
        let copy = self.nodes.len() - 1;
        self.dirty_nodes.insert(copy);
        copy
    }
}

fn run_scenario(seed: u64, n: usize) -> Sim {
    let mut sim = Sim::new(seed, n);
    // Everyone enrolls and comes online.
    sim.settle(Duration::from_secs(30));
    assert_eq!(sim.enrolled, n, "every node enrolled exactly once");
    assert_eq!(sim.online(), n, "every node online after enrollment");
    assert!(sim.all_established());
    assert_eq!(
        sim.store.tokens().expect("mem")[0].uses_left,
        0,
        "the token was spent once per node"
    );

    // A third of the fleet loses its link for 20 s.
    let cut: Vec<usize> = (0..n).filter(|_| sim.rng.u8(..) < 85).collect();
    let cut_set: BTreeSet<usize> = cut.iter().copied().collect();
    sim.partition(&cut);
    sim.settle(IDLE_TIMEOUT + Duration::from_millis(500));
    for (i, node) in sim.nodes.iter().enumerate() {
        let id = node.cert_id.expect("enrolled");
        assert_eq!(
            sim.fleet.is_online(id),
            !cut_set.contains(&i),
            "node {i}: a cut node is offline within the idle timeout, the rest stay online"
        );
    }
    sim.settle(Duration::from_secs(15));
    sim.heal();
    sim.settle(Duration::from_secs(120));
    assert_eq!(
        sim.online(),
        n,
        "every node back online after the partition heals"
    );
    assert!(sim.all_established());

    // The orchestrator restarts; nodes come back by themselves, spread out.
    let restart_at = sim.elapsed();
    sim.restart_orchestrator();
    assert_eq!(sim.online(), 0);
    sim.settle(Duration::from_secs(120));
    assert_eq!(sim.online(), n, "every node back online after a restart");
    assert_eq!(
        sim.fleet.nodes().count(),
        n,
        "the registry survived the restart"
    );
    let mut per_window: HashMap<u128, usize> = HashMap::new();
    for (t, _) in sim.connects.iter().filter(|(t, _)| *t > restart_at) {
        *per_window.entry(t.as_millis() / 50).or_default() += 1;
    }
    let busiest = per_window.values().copied().max().unwrap_or(0);
    assert!(
        busiest * 3 < n,
        "reconnects are spread by jitter: {busiest} of {n} dialed within one 50 ms window"
    );
    sim
}

#[test]
fn a_thousand_nodes_survive_partitions_and_a_restart() {
    run_scenario(7, 1000);
}

#[test]
fn the_same_seed_gives_the_same_run() {
    let a = run_scenario(99, 50);
    let b = run_scenario(99, 50);
    // Node ids come from the seeded rng, so whole traces match line for line.
    assert_eq!(a.trace, b.trace);
    let c = run_scenario(100, 50);
    assert_ne!(
        a.trace, c.trace,
        "a different seed explores a different run"
    );
}

#[test]
fn a_hostile_frame_closes_only_that_connection() {
    let mut sim = Sim::new(3, 2);
    sim.settle(Duration::from_secs(30));
    assert_eq!(sim.online(), 2);
    let victim_conn = sim.nodes[0].conn.expect("connected");
    // Node 0's connection carries garbage; node 1 must not notice.
    sim.deliver_later(victim_conn, Delivery::ToServer(vec![0xff; 40]));
    sim.settle(Duration::from_millis(100));
    let id0 = sim.nodes[0].cert_id.expect("enrolled");
    let id1 = sim.nodes[1].cert_id.expect("enrolled");
    assert!(!sim.fleet.is_online(id0) || sim.nodes[0].conn != Some(victim_conn));
    assert!(sim.fleet.is_online(id1));
    assert!(sim.trace.iter().any(|l| l.contains("Malformed")));
    // And node 0 reconnects on its own.
    sim.settle(Duration::from_secs(30));
    assert!(sim.fleet.is_online(id0));
}

#[test]
fn a_cloned_identity_is_refused_for_half_an_hour_without_disturbing_the_original() {
    let mut sim = Sim::new(11, 3);
    sim.settle(Duration::from_secs(30));
    assert_eq!(sim.online(), 3);
    let original = sim.nodes[0].conn.expect("connected");
    let copy = sim.clone_node(0);
    let dials = |sim: &Sim| sim.connects.iter().filter(|(_, i)| *i == copy).count();
    let conflicts = |sim: &Sim| {
        sim.trace
            .iter()
            .filter(|l| l.contains("IdentityConflict {"))
            .count()
    };
    let start = sim.connects.len();
    for _ in 0..(30 * 60) {
        sim.settle(Duration::from_secs(1));
        assert_eq!(
            sim.nodes[0].conn,
            Some(original),
            "the original keeps its connection"
        );
        assert!(sim.nodes[0].session.is_established());
        assert!(!sim.nodes[copy].session.is_established());
        assert_eq!(sim.online(), 3);
    }
    // The copy asks again every 5 to 10 minutes: a handful of times in half an hour, each
    // one refused, instead of flapping.
    let (asked, refused) = (dials(&sim), conflicts(&sim));
    assert!((3..=7).contains(&asked), "{asked} dials");
    assert_eq!(refused, asked, "every dial of the copy was refused");
    assert_eq!(
        sim.connects[start..]
            .iter()
            .filter(|(_, i)| *i != copy)
            .count(),
        0,
        "nobody else had to reconnect"
    );
}
