//! The deployments controller with a placement model: instances go where the model expects
//! them to start soonest and fail least, from the history the controller keeps of each node
//! (restarts, refusals, artifacts run, startups from bind to running); the same inputs give
//! the same placements; and a model that predicts no number, or whose predictions drift from
//! the startups observed, steps aside for the fixed rule, which then places exactly as with
//! no model.

mod common;

use std::sync::{Arc, Mutex};

use common::{GIB, MIB, spec};
use edge_proto::{AdmissionReply, NodeId, WorkloadReport, WorkloadState, text};
use orchestrator_core::deploy::{Deployments, HISTORY_WINDOW_MS, MAX_EVENTS};
use orchestrator_core::fleet::NodeRecord;
use orchestrator_core::scheduler::learned::{
    Fallback, Mode, PLACE_FEATURES, PLACE_WIDTH, PlacePredict, PlacePrediction, PredictError,
};
use orchestrator_core::workload::WorkloadSpec;
use serde_json::json;

fn id(i: u8) -> NodeId {
    NodeId([i; 16])
}

fn node(i: u8) -> NodeRecord {
    let stored = json!({
        "id": id(i).to_string(),
        "name": format!("node-{i}"),
        "enrolled_unix": 0,
        "last_seen_unix": 0,
        "info": {
            "arch": "x86_64", "os": "linux", "os_version": "", "kernel": "", "hostname": "",
            "cpus": 4, "cpu_model": "",
            "memory_bytes": 8 * GIB, "disk_bytes": 32 * GIB, "disk_free_bytes": 16 * GIB,
            "accelerators": [], "board": null, "labels": {}, "location": null
        }
    });
    serde_json::from_str(&stored.to_string()).expect("a node record")
}

fn fleet(n: u8) -> Deployments {
    Deployments::load(Vec::new(), (0..n).map(|i| (node(i), true))).expect("loads")
}

/// A small workload named `name` with the artifact `artifact` (one hex digit, repeated).
fn small(name: &str, artifact: char) -> WorkloadSpec {
    spec(json!({
        "name": name,
        "artifact": format!("sha256:{}", artifact.to_string().repeat(64)),
        "resources": {"cpu_millis": 10, "memory_bytes": MIB},
    }))
}

fn report(name: &str, generation: u64, state: WorkloadState, restarts: u32) -> WorkloadReport {
    WorkloadReport {
        workload: text(name),
        generation,
        state,
        restarts,
        pid: None,
        exit_code: None,
        message: text(""),
    }
}

fn column(name: &str) -> usize {
    PLACE_FEATURES
        .iter()
        .position(|f| f.name == name)
        .expect("a placement feature")
}

/// What a trained model learns, simply: a cached artifact starts in 200 ms, a fetch takes 5 s;
/// each restart on record adds 10% to the failure probability. Every row it sees is kept, and
/// it may be told to fail or to predict no number.
#[derive(Debug, Clone, Default)]
struct Stub {
    rows: Arc<Mutex<Vec<[f32; PLACE_WIDTH]>>>,
    nan: bool,
    /// Predict this startup (ms) for every row instead.
    fixed_ms: Option<f32>,
}

impl PlacePredict for Stub {
    fn predict(
        &mut self,
        features: &[f32],
        out: &mut [PlacePrediction],
    ) -> Result<(), PredictError> {
        let (cached, restarts) = (column("cached"), column("restarts"));
        for (row, p) in features.chunks_exact(PLACE_WIDTH).zip(out.iter_mut()) {
            let mut kept = [0.0; PLACE_WIDTH];
            kept.copy_from_slice(row);
            self.rows.lock().expect("not poisoned").push(kept);
            let startup_ms = match self.fixed_ms {
                Some(ms) => ms,
                None if row[cached] > 0.5 => 200.0,
                None => 5000.0,
            };
            let failure = if self.nan {
                f32::NAN
            } else {
                0.1 * row[restarts]
            };
            *p = PlacePrediction::from_outputs(startup_ms.ln(), failure);
        }
        Ok(())
    }
}

impl Stub {
    fn rows(&self) -> Vec<[f32; PLACE_WIDTH]> {
        self.rows.lock().expect("not poisoned").clone()
    }
}

fn with_model(n: u8, stub: &Stub) -> Deployments {
    let mut d = fleet(n);
    d.set_place_model(Ok(Box::new(stub.clone())));
    d
}

/// Deploys `spec` at `now_ms` and returns where its instances went.
fn deploy(d: &mut Deployments, spec: WorkloadSpec, now_ms: u64) -> Vec<NodeId> {
    d.advance(now_ms);
    d.apply(spec, 4 * MIB).expect("deploys").0.bound
}

#[test]
fn with_no_model_placement_says_so_and_places_as_the_fixed_rule() {
    let d = fleet(3);
    assert_eq!(d.placement().mode, Mode::Fallback(Fallback::NoModel));
    assert_eq!(d.placement().mode.as_str(), "no_model");
}

#[test]
fn a_model_keeps_a_new_instance_off_the_node_whose_instances_restart() {
    // Something runs everywhere, and one more workload somewhere.
    let setup = |d: &mut Deployments| {
        assert_eq!(deploy(d, small("base", 'b'), 1_000).len(), 1);
        let everywhere = spec(json!({
            "name": "everywhere",
            "artifact": format!("sha256:{}", "c".repeat(64)),
            "placement": "per-node",
            "resources": {"cpu_millis": 10, "memory_bytes": MIB},
        }));
        assert_eq!(deploy(d, everywhere, 1_000).len(), 3);
    };
    // Where the fixed rule then puts one more instance.
    let mut fixed = fleet(3);
    setup(&mut fixed);
    let [favourite] = deploy(&mut fixed, small("web", 'a'), 3_000)[..] else {
        panic!("one instance")
    };

    let stub = Stub::default();
    let mut d = with_model(3, &stub);
    assert_eq!(d.placement().mode, Mode::Model);
    setup(&mut d);
    // On the fixed rule's favourite, it restarted three times.
    d.advance(2_000);
    d.report(
        favourite,
        &report("everywhere", 1, WorkloadState::Running, 3),
    );

    let placed = deploy(&mut d, small("web", 'a'), 3_000);
    assert_eq!(placed.len(), 1);
    assert_ne!(
        placed[0], favourite,
        "the model sees the restarts the fixed rule ignores"
    );
    let restarts = column("restarts");
    assert!(
        stub.rows().iter().any(|r| r[restarts] == 3.0),
        "the restarts reached the model's features"
    );
    assert_eq!(d.placement().mode, Mode::Model);
}

#[test]
fn an_instance_started_from_its_node_cache_is_measured_and_its_node_preferred_next() {
    let stub = Stub::default();
    let mut d = with_model(3, &stub);
    let [first] = deploy(&mut d, small("one", 'a'), 10_000)[..] else {
        panic!("one instance")
    };
    // It ran 700 ms after it was bound.
    d.advance(10_700);
    d.report(first, &report("one", 1, WorkloadState::Running, 0));

    // Another workload of the same artifact: the node that has it cached starts it soonest,
    // though it is the busiest.
    let rows_before = stub.rows().len();
    let [second] = deploy(&mut d, small("two", 'a'), 20_000)[..] else {
        panic!("one instance")
    };
    assert_eq!(
        second, first,
        "the model prefers the node with the cached artifact"
    );
    let rows = stub.rows();
    let (cached, artifact_mb) = (column("cached"), column("artifact_mb"));
    let seen: Vec<_> = rows[rows_before..]
        .iter()
        .filter(|r| r[cached] == 1.0)
        .collect();
    assert_eq!(seen.len(), 1, "one node has it cached: {rows:?}");
    assert!((seen[0][artifact_mb] - 4.0 * MIB as f32 / 1e6).abs() < 1e-3);
}

#[test]
fn start_times_count_from_bind_to_running() {
    let stub = Stub::default();
    let mut d = with_model(2, &stub);
    let start = column("start_ms");
    // Runs `one` from the cache of the node that ran it, `ms` after it was bound; returns
    // the start time the model is then shown for that node.
    let mut at = 10_000;
    let mut run = |d: &mut Deployments, ms: u64| {
        let [n] = deploy(d, small("one", 'a'), at)[..] else {
            panic!("one instance")
        };
        d.advance(at + ms);
        d.report(n, &report("one", 1, WorkloadState::Running, 0));
        d.delete("one").expect("deployed");
        at += 10_000;
        deploy(d, small("probe", 'f'), at);
        d.delete("probe").expect("deployed");
        at += 10_000;
        (
            n,
            stub.rows()
                .iter()
                .rev()
                .take(2)
                .map(|r| r[start])
                .collect::<Vec<f32>>(),
        )
    };
    // The first start had to fetch the artifact: fetch and start cannot be told apart yet.
    let (first, shown) = run(&mut d, 700);
    assert_eq!(shown, vec![0.0, 0.0]);
    // From the cache: 300 ms, then 700 ms, as a moving mean.
    let (again, shown) = run(&mut d, 300);
    assert_eq!(again, first, "the node with the cached artifact");
    assert!(shown.contains(&300.0), "{shown:?}");
    let (_, shown) = run(&mut d, 700);
    assert!(shown.contains(&500.0), "{shown:?}");
}

#[test]
fn the_same_model_and_inputs_place_the_same_way() {
    let run = || {
        let mut d = with_model(5, &Stub::default());
        let mut placed = Vec::new();
        for i in 0..20u8 {
            let name = format!("w{i}");
            let artifact = char::from(b'a' + i % 3);
            let bound = deploy(&mut d, small(&name, artifact), 1_000 * u64::from(i));
            for n in &bound {
                d.advance(1_000 * u64::from(i) + 300);
                d.report(
                    *n,
                    &report(&name, 1, WorkloadState::Running, u32::from(i % 2)),
                );
            }
            placed.push(bound);
        }
        placed
    };
    assert_eq!(run(), run());
}

#[test]
fn a_model_that_predicts_no_number_steps_aside_and_the_fixed_rule_places() {
    let mut fixed = fleet(3);
    let mut d = with_model(
        3,
        &Stub {
            nan: true,
            ..Stub::default()
        },
    );
    for i in 0..4u8 {
        let name = format!("w{i}");
        assert_eq!(
            deploy(&mut d, small(&name, 'a'), 1_000),
            deploy(&mut fixed, small(&name, 'a'), 1_000),
            "{name}"
        );
        assert_eq!(d.placement().mode, Mode::Fallback(Fallback::Broken));
    }
}

#[test]
fn a_refusal_counts_in_the_node_history() {
    let stub = Stub::default();
    let mut d = with_model(3, &stub);
    let [refuser] = deploy(&mut d, small("one", 'a'), 1_000)[..] else {
        panic!("one instance")
    };
    let effects = d.admission(
        refuser,
        &AdmissionReply {
            workload: text("one"),
            generation: 1,
            rejected: Some(text("no room")),
        },
    );
    assert!(!effects.is_empty(), "moved to another node");
    let refusals = column("refusals");
    deploy(&mut d, small("two", 'b'), 2_000);
    assert!(
        stub.rows().iter().rev().take(3).any(|r| r[refusals] == 1.0),
        "the refusal reached the features"
    );
}

#[test]
fn restarts_are_capped_and_forgotten_after_the_window() {
    let stub = Stub::default();
    let mut d = with_model(1, &stub);
    let [n] = deploy(&mut d, small("one", 'a'), 1_000)[..] else {
        panic!("one instance")
    };
    d.advance(2_000);
    d.report(n, &report("one", 1, WorkloadState::Running, 100_000));
    let restarts = column("restarts");
    deploy(&mut d, small("two", 'b'), 3_000);
    assert_eq!(
        stub.rows().last().expect("a row")[restarts],
        MAX_EVENTS as f32
    );
    let later = 3_000 + HISTORY_WINDOW_MS + 1_000;
    let _ = d.tick(later);
    deploy(&mut d, small("three", 'c'), later);
    assert_eq!(stub.rows().last().expect("a row")[restarts], 0.0);
}

#[test]
fn a_model_whose_startups_drift_steps_aside_for_the_fixed_rule() {
    // It promises 1 ms; every instance takes 20 s.
    let mut d = with_model(
        4,
        &Stub {
            fixed_ms: Some(1.0),
            ..Stub::default()
        },
    );
    let mut now = 1_000;
    let mut stepped_aside_after = None;
    for i in 0..80u32 {
        let name = format!("w{i}");
        let bound = deploy(&mut d, small(&name, 'a'), now);
        now += 20_000;
        d.advance(now);
        for n in bound {
            d.report(n, &report(&name, 1, WorkloadState::Running, 0));
        }
        if stepped_aside_after.is_none() && d.placement().mode != Mode::Model {
            stepped_aside_after = Some(i + 1);
        }
    }
    assert_eq!(d.placement().mode, Mode::Fallback(Fallback::Drift));
    assert_eq!(d.placement().mode.as_str(), "drift");
    let after = stepped_aside_after.expect("stepped aside");
    assert!(
        (50..=51).contains(&after),
        "judged once it has seen 50 startups, not before: {after}"
    );
}

#[test]
fn what_a_node_says_it_holds_at_its_session_counts_as_cached_after_a_restart() {
    // Deployed, then the orchestrator restarted: it loads the record, and knows no history.
    let mut before = fleet(3);
    let [holder] = deploy(&mut before, small("one", 'a'), 1_000)[..] else {
        panic!("one instance")
    };
    let stored = orchestrator_core::deploy::DeploymentRecord {
        spec: serde_json::to_value(small("one", 'a')).expect("json"),
        generation: 1,
        artifact_size: 4 * MIB,
        image: None,
        nodes: vec![holder.to_string()],
        replaced: Vec::new(),
        left_near: Vec::new(),
    };
    let stub = Stub::default();
    let mut d = Deployments::load(vec![stored], (0..3).map(|i| (node(i), false))).expect("loads");
    d.set_place_model(Ok(Box::new(stub.clone())));
    // Its node comes back and says it holds it.
    let said = edge_proto::SyncState {
        applied: [edge_proto::Applied {
            workload: text("one"),
            generation: 1,
        }]
        .into_iter()
        .collect(),
        complete: true,
        outbox_next: 1,
        outbox_oldest: 1,
        outbox_fresh: false,
    };
    for i in 0..3 {
        let said = (id(i) == holder).then_some(&said);
        let _ = d.node_up(node(i), said, 2_000);
    }
    let [second] = deploy(&mut d, small("two", 'a'), 3_000)[..] else {
        panic!("one instance")
    };
    assert_eq!(second, holder, "the node that holds the artifact");
    let cached = column("cached");
    assert_eq!(
        stub.rows().iter().filter(|r| r[cached] == 1.0).count(),
        1,
        "one node has it"
    );
}
