//! Nodes that move while they hold instances of workloads with `near`: a node leaving the
//! radius is told of once per exit, and with `follow_near` its instance moves to a node inside,
//! make-before-break. Every step plays what the shell would carry out: the effects are applied
//! to a model of the fleet (which node runs what), and the number of running instances is
//! checked after each one.

mod common;

use common::{GIB, spec};
use edge_proto::{NodeId, OrchMsg, WorkloadReport, WorkloadState, text};
use orchestrator_core::deploy::{DeploymentRecord, Deployments, Effect};
use orchestrator_core::events::{Origin, What};
use orchestrator_core::fleet::NodeRecord;
use orchestrator_core::scheduler::{LatLon, Reach, haversine_km, reach};
use orchestrator_core::workload::WorkloadSpec;
use serde_json::{Value, json};
use std::collections::BTreeSet;

/// The orchestrator's clock at the start of every test, in milliseconds.
const T0: u64 = 1_765_000_000_000;

/// The workload's point: Berlin, with a 50 km radius.
const CENTRE: (f64, f64) = (52.52, 13.405);
const RADIUS_KM: f64 = 50.0;

/// Places relative to the point: inside, a little outside, far outside.
const INSIDE: Option<(f64, f64)> = Some(CENTRE);
const NEAR_EDGE: Option<(f64, f64)> = Some((52.60, 13.50));
const OUTSIDE: Option<(f64, f64)> = Some((53.20, 13.405));
const FARTHER: Option<(f64, f64)> = Some((53.55, 10.0));
const NO_FIX: Option<(f64, f64)> = None;

fn id(i: u8) -> NodeId {
    NodeId([i; 16])
}

fn name(i: u8) -> String {
    format!("node-{i}")
}

/// Node `i` at `at` (`None`: no fix). 2 CPUs and 2 GiB: room for one `web` (1500 millicores).
fn node(i: u8, at: Option<(f64, f64)>) -> NodeRecord {
    let location = at.map_or(Value::Null, |(lat, lon)| json!({"lat": lat, "lon": lon}));
    let stored = json!({
        "id": id(i).to_string(),
        "name": name(i),
        "enrolled_unix": 0,
        "last_seen_unix": 0,
        "info": {
            "arch": "x86_64", "os": "linux", "os_version": "", "kernel": "", "hostname": "",
            "cpus": 2, "cpu_model": "",
            "memory_bytes": 2 * GIB, "disk_bytes": 32 * GIB, "disk_free_bytes": 16 * GIB,
            "accelerators": [], "board": null, "labels": {}, "location": location
        }
    });
    serde_json::from_str(&stored.to_string()).expect("a node record")
}

/// `web` near the point, with `extra` on top.
fn near_spec(extra: Value) -> WorkloadSpec {
    let mut fields = json!({
        "resources": {"cpu_millis": 1500, "memory_bytes": 64 << 20},
        "requirements": {
            "near": {"lat": CENTRE.0, "lon": CENTRE.1, "radius_km": RADIUS_KM},
        }
    });
    for (k, v) in extra.as_object().expect("an object") {
        if k == "follow_near" {
            fields["requirements"]["follow_near"] = v.clone();
        } else {
            fields[k] = v.clone();
        }
    }
    spec(fields)
}

/// What the shell does with effects, as far as these tests look: which nodes hold and run
/// `web`, what was stored, and the orchestrator's events.
struct Fleet {
    d: Deployments,
    now_ms: u64,
    /// Nodes that were sent `web` and not told to stop it since.
    assigned: BTreeSet<NodeId>,
    /// Nodes whose `web` reported running, and was not told to stop since.
    running: BTreeSet<NodeId>,
    /// The last deployment record stored.
    stored: Option<DeploymentRecord>,
    /// Every orchestrator event recorded, by node.
    events: Vec<(NodeId, What)>,
    /// The fewest instances that must be running after every step, once they ran.
    floor: usize,
}

impl Fleet {
    /// Nodes `i` at `places[i]`, all online, and `web` deployed with `extra`.
    fn new(places: &[Option<(f64, f64)>], extra: Value) -> Self {
        let nodes = places
            .iter()
            .enumerate()
            .map(|(i, at)| (node(u8::try_from(i).expect("few nodes"), *at), true));
        let d = Deployments::load(Vec::new(), nodes).expect("loads");
        let mut f = Self {
            d,
            now_ms: T0,
            assigned: BTreeSet::new(),
            running: BTreeSet::new(),
            stored: None,
            events: Vec::new(),
            floor: 0,
        };
        f.d.tick(T0);
        let (_, effects) = f.d.apply(near_spec(extra), 1000).expect("deploys");
        f.carry_out(effects);
        f
    }

    /// Carries out effects in order; returns the events among them.
    fn carry_out(&mut self, effects: Vec<Effect>) -> Vec<(NodeId, What)> {
        let mut events = Vec::new();
        for e in effects {
            match e {
                Effect::Persist(r) => self.stored = Some(r),
                Effect::Forget(_) => self.stored = None,
                Effect::Record(r) => {
                    assert_eq!(r.origin, Origin::Orchestrator);
                    assert_eq!(r.at_ms, self.now_ms, "on the orchestrator's clock");
                    let node = NodeId::parse(&r.node).expect("a node id");
                    events.push((node, r.what));
                }
                Effect::Send(node, OrchMsg::Assign(a)) => {
                    assert_eq!(a.workload.as_str(), "web");
                    self.assigned.insert(node);
                }
                Effect::Send(node, OrchMsg::Unassign(u)) => {
                    assert_eq!(u.workload.as_str(), "web");
                    self.assigned.remove(&node);
                    self.running.remove(&node);
                }
                Effect::Send(..) => {}
            }
        }
        self.events.extend(events.iter().cloned());
        self.check();
        events
    }

    /// What must hold after every step: the controller's holders are the nodes assigned, what
    /// runs is among them, and never fewer run than the floor.
    fn check(&self) {
        assert_eq!(
            self.holders(),
            self.assigned,
            "holders are the nodes assigned"
        );
        assert!(
            self.running.is_subset(&self.assigned),
            "only what is held runs"
        );
        assert!(
            self.running.len() >= self.floor,
            "{} running, at least {} wanted: {:?}",
            self.running.len(),
            self.floor,
            self.running
        );
    }

    fn holders(&self) -> BTreeSet<NodeId> {
        self.d
            .get("web")
            .map(|v| v.nodes.iter().map(|(id, _)| *id).collect())
            .unwrap_or_default()
    }

    /// One second later, as the shell's tick says.
    fn later(&mut self) {
        self.now_ms += 1000;
        let effects = self.d.tick(self.now_ms);
        assert!(effects.is_empty(), "{effects:?}");
    }

    /// Node `i` reports a new position (`None`: it lost its fix).
    fn moves(&mut self, i: u8, at: Option<(f64, f64)>) -> Vec<(NodeId, What)> {
        self.later();
        let effects = self.d.node_changed(node(i, at), true);
        self.carry_out(effects)
    }

    /// Node `i` reports `web` in `state`.
    fn reports(&mut self, i: u8, state: WorkloadState) -> Vec<(NodeId, What)> {
        self.later();
        let generation = self.d.get("web").expect("deployed").generation;
        let report = WorkloadReport {
            workload: text("web"),
            generation,
            state,
            restarts: 0,
            pid: Some(7),
            exit_code: None,
            message: text(""),
        };
        if state == WorkloadState::Running {
            assert!(self.assigned.contains(&id(i)), "only what is held runs");
            self.running.insert(id(i));
        }
        let effects = self.d.report(id(i), &report);
        self.carry_out(effects)
    }

    /// Every holder reports running; from now on at least that many always run.
    fn all_run(&mut self) {
        for holder in self.holders() {
            self.reports(holder.0[0], WorkloadState::Running);
        }
        self.floor = self.running.len();
    }

    #[track_caller]
    fn at_least_running(&self, n: usize) {
        assert!(
            self.running.len() >= n,
            "{} running, {n} wanted: {:?}",
            self.running.len(),
            self.running
        );
    }
}

fn distance_to_centre(at: Option<(f64, f64)>) -> f64 {
    let (lat, lon) = at.expect("a place");
    let km = haversine_km(
        LatLon { lat, lon },
        LatLon {
            lat: CENTRE.0,
            lon: CENTRE.1,
        },
    );
    (km * 1000.0).round() / 1000.0
}

fn left_near(outcome: &str, replacement: Option<u8>, at: Option<(f64, f64)>) -> What {
    What::LeftNear {
        workload: "web".into(),
        generation: 1,
        distance_km: distance_to_centre(at),
        radius_km: RADIUS_KM,
        outcome: outcome.into(),
        replacement: replacement.map(|r| id(r).to_string()),
        replacement_name: replacement.map(name),
        reason: None,
    }
}

/// The one `left_near` of `events`: its node, outcome, replacement and reason.
fn only_left_near(
    events: &[(NodeId, What)],
) -> (&NodeId, &String, &Option<String>, &Option<String>) {
    let [
        (
            node,
            What::LeftNear {
                outcome,
                replacement,
                reason,
                ..
            },
        ),
    ] = events
    else {
        panic!("one left_near: {events:?}");
    };
    (node, outcome, replacement, reason)
}

#[test]
fn the_places_of_these_tests_are_where_they_say() {
    let near = near_spec(json!({})).requirements().near.expect("near");
    let at = |p: Option<(f64, f64)>| p.map(|(lat, lon)| LatLon { lat, lon });
    assert!(matches!(reach(near, at(INSIDE)), Reach::Inside { km } if km == 0.0));
    assert!(matches!(reach(near, at(NEAR_EDGE)), Reach::Inside { .. }));
    assert!(matches!(reach(near, at(OUTSIDE)), Reach::Outside { km } if km > RADIUS_KM));
    assert!(matches!(reach(near, at(FARTHER)), Reach::Outside { .. }));
    assert_eq!(reach(near, None), Reach::Unknown);
    let off_the_globe = Some(LatLon {
        lat: 91.0,
        lon: 0.0,
    });
    assert_eq!(reach(near, off_the_globe), Reach::Unknown);
}

#[test]
fn an_instance_follows_make_before_break() {
    // Node 0 holds `web`; node 1 is inside too but only node 0 is placed on (one replica).
    let mut f = Fleet::new(&[INSIDE, NEAR_EDGE], json!({"follow_near": true}));
    assert_eq!(f.holders(), BTreeSet::from([id(0)]));
    f.all_run();
    f.at_least_running(1);

    // Node 0 drives out: one event, a replacement on node 1, the original kept.
    let events = f.moves(0, OUTSIDE);
    assert_eq!(events, [(id(0), left_near("moving", Some(1), OUTSIDE))]);
    assert_eq!(f.holders(), BTreeSet::from([id(0), id(1)]));
    f.at_least_running(1);
    let view = f.d.get("web").expect("deployed");
    assert_eq!(view.left_near, [(id(0), Some(id(1)))]);
    assert!(view.unplaced_reasons.is_empty(), "the two count as one");
    let stored = f.stored.clone().expect("stored");
    assert_eq!(stored.left_near.len(), 1, "the move is stored: {stored:?}");

    // Further out: nothing new is said or done.
    assert!(f.moves(0, FARTHER).is_empty());
    assert!(f.moves(0, OUTSIDE).is_empty());
    assert_eq!(f.holders(), BTreeSet::from([id(0), id(1)]));

    // The replacement starts, then runs: only then is the original unassigned.
    assert!(f.reports(1, WorkloadState::Downloading).is_empty());
    assert!(f.reports(1, WorkloadState::Starting).is_empty());
    assert_eq!(f.holders(), BTreeSet::from([id(0), id(1)]));
    f.at_least_running(1);
    let events = f.reports(1, WorkloadState::Running);
    assert_eq!(
        events,
        [(
            id(0),
            What::Followed {
                workload: "web".into(),
                generation: 1,
                from: id(0).to_string(),
                from_name: name(0),
                to: id(1).to_string(),
                to_name: name(1),
            }
        )]
    );
    assert_eq!(f.holders(), BTreeSet::from([id(1)]));
    assert_eq!(f.running, BTreeSet::from([id(1)]));
    assert!(f.d.get("web").expect("deployed").left_near.is_empty());
    assert!(f.stored.as_ref().expect("stored").left_near.is_empty());

    // Done: the old node's moves and the new one's reports say nothing more.
    assert!(f.moves(0, FARTHER).is_empty());
    assert!(f.moves(0, INSIDE).is_empty(), "it holds nothing now");
    assert!(f.reports(1, WorkloadState::Running).is_empty());
    assert_eq!(f.holders(), BTreeSet::from([id(1)]));
    assert_eq!(f.events.len(), 2, "{:?}", f.events);
}

#[test]
fn without_follow_near_the_exit_is_only_told() {
    let mut f = Fleet::new(&[INSIDE, NEAR_EDGE], json!({}));
    f.all_run();
    assert_eq!(
        f.moves(0, OUTSIDE),
        [(id(0), left_near("stays", None, OUTSIDE))]
    );
    assert!(f.moves(0, FARTHER).is_empty(), "once per exit");
    assert_eq!(f.holders(), BTreeSet::from([id(0)]), "nothing moves");
    assert_eq!(f.running, BTreeSet::from([id(0)]));

    // Back inside is told, and a second exit is told again.
    let events = f.moves(0, NEAR_EDGE);
    assert_eq!(
        events,
        [(
            id(0),
            What::BackNear {
                workload: "web".into(),
                generation: 1,
                distance_km: distance_to_centre(NEAR_EDGE),
                radius_km: RADIUS_KM,
                stopped: None,
                stopped_name: None,
            }
        )]
    );
    assert!(f.moves(0, INSIDE).is_empty());
    assert_eq!(
        f.moves(0, FARTHER),
        [(id(0), left_near("stays", None, FARTHER))]
    );
    assert_eq!(f.holders(), BTreeSet::from([id(0)]));
}

#[test]
fn with_no_node_inside_the_instance_waits_and_moves_once_one_comes() {
    // Node 1 is outside, node 2 has no fix: neither can take it.
    let mut f = Fleet::new(&[INSIDE, OUTSIDE, NO_FIX], json!({"follow_near": true}));
    f.all_run();
    let events = f.moves(0, FARTHER);
    let (node, outcome, replacement, reason) = only_left_near(&events);
    assert_eq!(
        (*node, outcome.as_str(), replacement),
        (id(0), "waiting", &None)
    );
    let reason = reason.as_deref().expect("says why");
    assert!(
        reason.starts_with("no node inside the radius can take it"),
        "{reason}"
    );
    assert!(
        reason.contains("node-1: ") && reason.contains("km away"),
        "{reason}"
    );
    assert!(reason.contains("node-2: location unknown"), "{reason}");
    assert!(
        !reason.contains("node-0"),
        "not the node that runs it: {reason}"
    );
    assert_eq!(f.holders(), BTreeSet::from([id(0)]), "the original stays");
    f.at_least_running(1);

    // Nodes changing without room inside: nothing said, nothing placed.
    assert!(f.moves(0, OUTSIDE).is_empty());
    assert!(f.moves(2, NO_FIX).is_empty());
    assert!(f.moves(1, FARTHER).is_empty());
    assert_eq!(f.holders(), BTreeSet::from([id(0)]));

    // Node 2 gets a fix inside the radius: the move starts there.
    let events = f.moves(2, NEAR_EDGE);
    assert_eq!(
        events,
        [(
            id(0),
            What::Following {
                workload: "web".into(),
                generation: 1,
                replacement: id(2).to_string(),
                replacement_name: name(2),
            }
        )]
    );
    assert_eq!(f.holders(), BTreeSet::from([id(0), id(2)]));
    f.at_least_running(1);
    let events = f.reports(2, WorkloadState::Running);
    assert!(matches!(&events[..], [(n, What::Followed { to, .. })]
        if *n == id(0) && *to == id(2).to_string()));
    assert_eq!(f.holders(), BTreeSet::from([id(2)]));
    f.at_least_running(1);
}

#[test]
fn coming_back_inside_before_the_replacement_runs_cancels_the_move() {
    let mut f = Fleet::new(&[INSIDE, NEAR_EDGE], json!({"follow_near": true}));
    f.all_run();
    f.moves(0, OUTSIDE);
    assert_eq!(f.holders(), BTreeSet::from([id(0), id(1)]));
    f.reports(1, WorkloadState::Starting);

    let events = f.moves(0, INSIDE);
    assert_eq!(
        events,
        [(
            id(0),
            What::BackNear {
                workload: "web".into(),
                generation: 1,
                distance_km: 0.0,
                radius_km: RADIUS_KM,
                stopped: Some(id(1).to_string()),
                stopped_name: Some(name(1)),
            }
        )]
    );
    assert_eq!(
        f.holders(),
        BTreeSet::from([id(0)]),
        "the replacement is unassigned"
    );
    assert_eq!(f.running, BTreeSet::from([id(0)]));
    assert!(f.d.get("web").expect("deployed").left_near.is_empty());

    // A late report of the cancelled replacement is a report of what the node does not
    // hold: it is told to stop, and the move does not come back.
    let report = WorkloadReport {
        workload: text("web"),
        generation: 1,
        state: WorkloadState::Running,
        restarts: 0,
        pid: Some(9),
        exit_code: None,
        message: text(""),
    };
    let effects = f.d.report(id(1), &report);
    assert_eq!(
        effects,
        [Effect::Send(
            id(1),
            OrchMsg::Unassign(edge_proto::Unassign {
                workload: text("web")
            })
        )]
    );
    assert_eq!(f.holders(), BTreeSet::from([id(0)]));

    // Leaving again is a new exit: told and moved again.
    assert_eq!(
        f.moves(0, OUTSIDE),
        [(id(0), left_near("moving", Some(1), OUTSIDE))]
    );
}

#[test]
fn a_node_that_loses_its_fix_is_not_outside() {
    let mut f = Fleet::new(&[INSIDE, NEAR_EDGE], json!({"follow_near": true}));
    f.all_run();
    assert!(f.moves(0, NO_FIX).is_empty());
    assert!(f.moves(0, NO_FIX).is_empty());
    assert_eq!(f.holders(), BTreeSet::from([id(0)]));

    // A move under way goes on when the original loses its fix...
    f.moves(0, OUTSIDE);
    assert_eq!(f.holders(), BTreeSet::from([id(0), id(1)]));
    assert!(f.moves(0, NO_FIX).is_empty());
    assert_eq!(f.holders(), BTreeSet::from([id(0), id(1)]));
    // ...and a fix outside again is the same exit, not a new one.
    assert!(f.moves(0, FARTHER).is_empty());
    f.reports(1, WorkloadState::Running);
    assert_eq!(f.holders(), BTreeSet::from([id(1)]));
    f.at_least_running(1);
}

#[test]
fn a_per_node_instance_stops_once_its_node_leaves_and_returns_with_it() {
    let mut f = Fleet::new(
        &[INSIDE, NEAR_EDGE, OUTSIDE],
        json!({"placement": "per-node", "follow_near": true}),
    );
    assert_eq!(f.holders(), BTreeSet::from([id(0), id(1)]));
    f.all_run();
    // Per-node instances do not move: the one that leaves stops, the other runs on.
    f.floor = 1;

    let events = f.moves(0, FARTHER);
    let (node, outcome, replacement, reason) = only_left_near(&events);
    assert_eq!(
        (*node, outcome.as_str(), replacement),
        (id(0), "stopped", &None)
    );
    assert!(reason.as_deref().is_some_and(|r| r.contains("per-node")));
    assert_eq!(
        f.holders(),
        BTreeSet::from([id(1)]),
        "unassigned, nothing placed"
    );
    assert!(f.moves(0, OUTSIDE).is_empty(), "exactly once");
    assert_eq!(f.holders(), BTreeSet::from([id(1)]));

    // Inside again, it matches again and is placed like any matching node.
    assert!(f.moves(0, INSIDE).is_empty(), "no event: it held nothing");
    assert_eq!(f.holders(), BTreeSet::from([id(0), id(1)]));
    // As is a node that drives in.
    f.moves(2, NEAR_EDGE);
    assert_eq!(f.holders(), BTreeSet::from([id(0), id(1), id(2)]));
}

#[test]
fn a_per_node_instance_without_follow_near_is_only_told() {
    let mut f = Fleet::new(&[INSIDE, NEAR_EDGE], json!({"placement": "per-node"}));
    f.all_run();
    assert_eq!(
        f.moves(0, OUTSIDE),
        [(id(0), left_near("stays", None, OUTSIDE))]
    );
    assert!(f.moves(0, FARTHER).is_empty());
    assert_eq!(f.holders(), BTreeSet::from([id(0), id(1)]));
}

#[test]
fn two_replicas_move_one_at_a_time_and_the_count_holds() {
    let mut f = Fleet::new(
        &[INSIDE, NEAR_EDGE, INSIDE, NEAR_EDGE],
        json!({"replicas": 2, "follow_near": true}),
    );
    f.all_run();
    let holders: Vec<NodeId> = f.holders().into_iter().collect();
    let (a, b) = (holders[0].0[0], holders[1].0[0]);
    let spares: Vec<u8> = (0..4).filter(|i| *i != a && *i != b).collect();

    f.moves(a, OUTSIDE);
    f.moves(b, FARTHER);
    let view = f.d.get("web").expect("deployed");
    assert_eq!(view.left_near.len(), 2, "both move: {:?}", view.left_near);
    assert_eq!(f.holders().len(), 4);
    assert!(view.unplaced_reasons.is_empty());
    f.at_least_running(2);
    for s in &spares {
        f.reports(*s, WorkloadState::Running);
        f.at_least_running(2);
    }
    let spares: BTreeSet<NodeId> = spares.into_iter().map(id).collect();
    assert_eq!(f.holders(), spares);
    assert_eq!(f.running, spares);
}

#[test]
fn a_replacement_that_refuses_leaves_the_move_waiting_for_another_node() {
    let mut f = Fleet::new(
        &[INSIDE, NEAR_EDGE, NEAR_EDGE],
        json!({"follow_near": true}),
    );
    f.all_run();
    f.moves(0, OUTSIDE);
    let first = *f
        .holders()
        .iter()
        .find(|n| **n != id(0))
        .expect("a replacement");
    f.later();
    let effects = f.d.admission(
        first,
        &edge_proto::AdmissionReply {
            workload: text("web"),
            generation: 1,
            rejected: Some(text("no room")),
        },
    );
    f.assigned.remove(&first);
    let events = f.carry_out(effects);
    let second = if first == id(1) { id(2) } else { id(1) };
    assert!(
        matches!(&events[..], [(n, What::Following { replacement, .. })]
        if *n == id(0) && *replacement == second.to_string())
    );
    assert_eq!(f.holders(), BTreeSet::from([id(0), second]));
    f.reports(second.0[0], WorkloadState::Running);
    assert_eq!(f.holders(), BTreeSet::from([second]));
}

#[test]
fn a_drain_in_the_middle_of_a_move_leaves_one_instance() {
    // The original drained: its replacement simply stays.
    let mut f = Fleet::new(
        &[INSIDE, NEAR_EDGE, NEAR_EDGE],
        json!({"follow_near": true}),
    );
    f.all_run();
    f.moves(0, OUTSIDE);
    assert_eq!(f.holders(), BTreeSet::from([id(0), id(1)]));
    f.floor = 0;
    let effects = f.d.drain(id(0));
    f.carry_out(effects);
    assert_eq!(f.holders(), BTreeSet::from([id(1)]));
    assert!(f.d.get("web").expect("deployed").left_near.is_empty());
    f.reports(1, WorkloadState::Running);
    assert_eq!(f.holders(), BTreeSet::from([id(1)]));

    // The replacement drained: the move starts again on the next node inside.
    let mut f = Fleet::new(
        &[INSIDE, NEAR_EDGE, NEAR_EDGE],
        json!({"follow_near": true}),
    );
    f.all_run();
    f.moves(0, OUTSIDE);
    // As the operator's drain does it: cordoned first, so nothing comes back to it.
    let mut cordoned = node(1, NEAR_EDGE);
    cordoned.cordoned = true;
    let effects = f.d.node_changed(cordoned, true);
    assert!(f.carry_out(effects).is_empty());
    let effects = f.d.drain(id(1));
    let events = f.carry_out(effects);
    assert!(
        matches!(&events[..], [(n, What::Following { replacement, .. })]
        if *n == id(0) && *replacement == id(2).to_string())
    );
    assert_eq!(f.holders(), BTreeSet::from([id(0), id(2)]));
    f.reports(2, WorkloadState::Running);
    assert_eq!(f.holders(), BTreeSet::from([id(2)]));
}

#[test]
fn a_restart_in_the_middle_of_a_move_ends_with_exactly_one_instance() {
    for replacement_ran_before_the_restart in [false, true] {
        let mut f = Fleet::new(&[INSIDE, NEAR_EDGE], json!({"follow_near": true}));
        f.all_run();
        f.moves(0, OUTSIDE);
        let stored = f.stored.clone().expect("stored");
        if replacement_ran_before_the_restart {
            // It ran, and the orchestrator died before the end of the move was stored.
            f.reports(1, WorkloadState::Running);
        }

        // What is stored, loaded by a new process; every node is offline until it returns.
        let json = serde_json::to_string(&stored).expect("json");
        let record: DeploymentRecord = serde_json::from_str(&json).expect("reads back");
        let places = [OUTSIDE, NEAR_EDGE];
        let nodes = (0..2u8).map(|i| (node(i, places[i as usize]), false));
        let after = Deployments::load(vec![record], nodes).expect("loads");
        let view = after.get("web").expect("loaded");
        assert_eq!(view.left_near, [(id(0), Some(id(1)))], "the move survives");
        assert!(view.unplaced_reasons.is_empty());
        f.d = after;
        // Nothing of the new process was sent: the nodes run what they ran.
        f.assigned = BTreeSet::from([id(0), id(1)]);
        f.running = if replacement_ran_before_the_restart {
            BTreeSet::from([id(0), id(1)])
        } else {
            BTreeSet::from([id(0)])
        };

        // Both return; the original's position outside is not told again.
        for i in [0u8, 1] {
            f.now_ms += 1000;
            let (_, effects) = f.d.node_up(node(i, places[i as usize]), None, f.now_ms);
            let events = f.carry_out(effects);
            assert!(events.is_empty(), "{events:?}");
        }
        // The replacement says it runs (a node reports every instance after a reconnect).
        f.at_least_running(1);
        let events = f.reports(1, WorkloadState::Running);
        assert!(
            matches!(&events[..], [(_, What::Followed { .. })]),
            "{events:?}"
        );
        assert_eq!(f.holders(), BTreeSet::from([id(1)]), "exactly one instance");
        assert_eq!(f.running, BTreeSet::from([id(1)]));
    }
}

#[test]
fn an_exit_whose_event_was_lost_is_told_when_the_node_returns() {
    let mut f = Fleet::new(&[INSIDE, NEAR_EDGE], json!({"follow_near": true}));
    f.all_run();
    let stored = f.stored.clone().expect("stored");
    // The node's new position was stored by the registry, the deployment's batch was not.
    let nodes = [(node(0, OUTSIDE), false), (node(1, NEAR_EDGE), true)];
    f.d = Deployments::load(vec![stored], nodes).expect("loads");
    f.now_ms += 1000;
    let (_, effects) = f.d.node_up(node(0, OUTSIDE), None, f.now_ms);
    let events = f.carry_out(effects);
    assert_eq!(events, [(id(0), left_near("moving", Some(1), OUTSIDE))]);
    assert_eq!(f.holders(), BTreeSet::from([id(0), id(1)]));
}

#[test]
fn a_replacement_after_a_disconnect_can_move_and_its_original_still_wins_on_return() {
    let mut f = Fleet::new(
        &[INSIDE, NEAR_EDGE, NEAR_EDGE],
        json!({"follow_near": true, "max_disconnect_secs": 60}),
    );
    f.all_run();
    // Node 0 goes away long enough to be replaced, on node 1. It runs on where it is, out of
    // this model's sight: on record it is replaced, and holds nothing.
    f.d.node_down(id(0), f.now_ms);
    f.now_ms += 60_000;
    (f.floor, f.assigned, f.running) = (0, BTreeSet::new(), BTreeSet::new());
    let effects = f.d.tick(f.now_ms);
    let events = f.carry_out(effects);
    assert!(
        matches!(&events[..], [(n, What::Replaced { replacement, .. })]
        if *n == id(0) && *replacement == id(1).to_string())
    );
    f.reports(1, WorkloadState::Running);
    f.floor = 1;

    // Node 1 drives out: its instance starts moving to node 2.
    assert_eq!(
        f.moves(1, OUTSIDE),
        [(id(1), left_near("moving", Some(2), OUTSIDE))]
    );

    // Node 0 returns, running its instance: keep_original keeps it, and both the replacement
    // and the one it was moving to are stopped.
    f.now_ms += 1000;
    (f.assigned, f.running) = (f.holders(), BTreeSet::from([id(0), id(1)]));
    f.assigned.insert(id(0));
    let (_, effects) = f.d.node_up(node(0, INSIDE), None, f.now_ms);
    f.carry_out(effects);
    assert_eq!(f.holders(), BTreeSet::from([id(0)]));
    assert_eq!(f.running, BTreeSet::from([id(0)]));
    assert!(f.d.get("web").expect("deployed").left_near.is_empty());
}
