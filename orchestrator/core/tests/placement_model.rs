//! The learned placement score against its promises: the model's ranking where it runs,
//! the fixed rule with no model, a refused one, a broken one or one whose predictions
//! drift (and the mode says which), and the same placements for the same model and inputs.

mod common;

use common::{GIB, spec};
use std::collections::BTreeMap;

use edge_proto::NodeId;
use orchestrator_core::scheduler::learned::{
    DriftBound, Fallback, Learned, Mode, PLACE_FEATURES, PLACE_OUTPUTS, PLACE_WIDTH, PlacePredict,
    PlacePrediction, PredictError,
};
use orchestrator_core::scheduler::{
    LatLon, LoadShare, NodeHistory, NodeView, Resources, Scheduler,
};
use orchestrator_core::workload::WorkloadSpec;
use serde_json::json;

fn id(i: u32) -> NodeId {
    NodeId(
        u128::from(i)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)
            .to_be_bytes(),
    )
}

/// A 4-CPU, 4 GiB node with `cpu_used` millis already taken.
fn node(i: u32, cpu_used: u64) -> NodeView {
    NodeView {
        id: id(i),
        name: format!("node-{i}"),
        online: true,
        cordoned: false,
        arch: "x86_64".into(),
        labels: BTreeMap::new(),
        devices: Vec::new(),
        location: Some(LatLon {
            lat: 52.52,
            lon: 13.405,
        }),
        capacity: Resources {
            cpu_millis: 4000,
            memory_bytes: 4 * GIB,
            disk_bytes: 32 * GIB,
        },
        allocated: Resources {
            cpu_millis: cpu_used,
            ..Resources::default()
        },
        instances: BTreeMap::new(),
        ports_in_use: Vec::new(),
        history: NodeHistory::default(),
    }
}

fn web(name: &str) -> WorkloadSpec {
    spec(json!({ "name": name }))
}

/// A model that reads the `cached` and `restarts` columns the way a trained one would: a
/// cached artifact starts in 200 ms, a fetch takes 5 s; each restart on record adds 10% to
/// the failure probability.
#[derive(Debug, Default)]
struct Rule {
    fail: bool,
    nan: bool,
}

const CACHED: usize = 8;
const RESTARTS: usize = 9;

impl PlacePredict for Rule {
    fn predict(
        &mut self,
        features: &[f32],
        out: &mut [PlacePrediction],
    ) -> Result<(), PredictError> {
        if self.fail {
            return Err(PredictError("out of memory".into()));
        }
        for (row, p) in features.chunks_exact(PLACE_WIDTH).zip(out.iter_mut()) {
            let startup: f32 = if row[CACHED] > 0.5 { 200.0 } else { 5000.0 };
            *p = PlacePrediction::from_outputs(
                if self.nan { f32::NAN } else { startup.ln() },
                (row[RESTARTS] * 0.1).min(0.9),
            );
        }
        Ok(())
    }
}

fn learned(rule: Rule) -> Learned {
    Learned::new(Ok(Box::new(rule)))
}

/// Node 1 is busier but has the artifact; node 2 is empty and does not.
fn fleet(web: &WorkloadSpec) -> Vec<NodeView> {
    let mut busy = node(1, 2000);
    busy.history.artifacts.push(web.artifact());
    vec![busy, node(2, 0)]
}

#[test]
fn the_schema_names_every_column_with_its_unit() {
    assert_eq!(PLACE_FEATURES.len(), PLACE_WIDTH);
    assert_eq!(PLACE_FEATURES[CACHED].name, "cached");
    assert_eq!(PLACE_FEATURES[RESTARTS].name, "restarts");
    let names: std::collections::BTreeSet<_> = PLACE_FEATURES.iter().map(|f| f.name).collect();
    assert_eq!(names.len(), PLACE_WIDTH, "names are unique");
    assert!(PLACE_FEATURES.iter().all(|f| !f.unit.is_empty()));
    assert_eq!(PLACE_OUTPUTS.map(|f| f.name), ["ln_startup_ms", "failure"]);
}

#[test]
fn the_model_places_where_the_artifact_is_cached_and_the_fixed_rule_does_not() {
    let w = web("web");
    let mut fixed = Scheduler::new(fleet(&w));
    assert_eq!(
        fixed.place(&w).bound,
        vec![id(2)],
        "least allocated: the empty node"
    );

    let mut model = Scheduler::with_score(learned(Rule::default()), fleet(&w));
    assert_eq!(
        model.place(&w).bound,
        vec![id(1)],
        "the model: the cached one"
    );
    assert_eq!(model.score().mode(), Mode::Model);
    let p = model
        .score()
        .predicted(id(1))
        .expect("a prediction for the bound node");
    assert!((p.startup_ms - 200.0).abs() < 0.1, "{p:?}");
}

#[test]
fn the_features_are_what_the_scheduler_knows_of_the_pair() {
    let w = web("web");
    #[derive(Debug)]
    struct Recorder(std::sync::Arc<std::sync::Mutex<Vec<Vec<f32>>>>);
    impl PlacePredict for Recorder {
        fn predict(
            &mut self,
            features: &[f32],
            out: &mut [PlacePrediction],
        ) -> Result<(), PredictError> {
            let mut rows = self.0.lock().expect("not poisoned");
            for (row, p) in features.chunks_exact(PLACE_WIDTH).zip(out.iter_mut()) {
                rows.push(row.to_vec());
                *p = PlacePrediction::from_outputs(5.0, 0.0);
            }
            Ok(())
        }
    }
    let rows = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut nodes = fleet(&w);
    nodes[1].history = NodeHistory {
        load: Some(LoadShare {
            cpu: 0.25,
            memory: 0.5,
        }),
        artifacts: Vec::new(),
        restarts: 3,
        refusals: 2,
        fetch_mbps: Some(20.0),
        start_ms: Some(450.0),
    };
    let mut s = Scheduler::with_score(Learned::new(Ok(Box::new(Recorder(rows.clone())))), nodes);
    s.set_artifact_size(w.artifact(), 12_000_000);
    s.place(&w);
    let rows = rows.lock().expect("not poisoned").clone();
    assert_eq!(rows.len(), 2, "one row per feasible node");
    let by_cached = |c: f32| rows.iter().find(|r| r[CACHED] == c).expect("a row").clone();
    let (busy, empty) = (by_cached(1.0), by_cached(0.0));
    // 500m of 4000m wanted: 2000m taken leaves 1500m after, 0 taken leaves 3500m.
    assert_eq!(busy[0], 0.375);
    assert_eq!(empty[0], 0.875);
    assert_eq!(busy[2], 4.0, "cpus");
    assert_eq!(&busy[3..6], &[0.0, 0.0, 0.0], "no load reported");
    assert_eq!(&empty[3..6], &[0.25, 0.5, 1.0], "the load reported");
    assert_eq!(&busy[6..8], &[0.0, 0.0], "no near");
    assert_eq!(&empty[RESTARTS..], &[3.0, 2.0, 12.0, 20.0, 450.0, 0.0]);
    assert_eq!(
        &busy[RESTARTS..],
        &[0.0, 0.0, 12.0, 0.0, 0.0, 0.0],
        "nothing measured; the artifact was the last one started"
    );
}

#[test]
fn with_no_model_or_a_refused_one_the_fixed_rule_places_and_says_so() {
    let w = web("web");
    for reason in [Fallback::NoModel, Fallback::Refused] {
        let mut s = Scheduler::with_score(Learned::new(Err(reason)), fleet(&w));
        assert_eq!(s.place(&w).bound, vec![id(2)], "{reason}");
        assert_eq!(s.score().mode(), Mode::Fallback(reason));
        assert_eq!(s.score().mode().as_str(), reason.as_str());
    }
}

#[test]
fn a_model_that_fails_to_run_or_predicts_no_number_steps_aside() {
    let w = web("web");
    for rule in [
        Rule {
            fail: true,
            ..Rule::default()
        },
        Rule {
            nan: true,
            ..Rule::default()
        },
    ] {
        let mut s = Scheduler::with_score(learned(rule), fleet(&w));
        assert_eq!(s.place(&w).bound, vec![id(2)], "the fixed rule's choice");
        assert_eq!(s.score().mode(), Mode::Fallback(Fallback::Broken));
        assert_eq!(s.score().mode().as_str(), "broken");
    }
}

#[test]
fn a_model_whose_startups_drift_steps_aside_and_comes_back_when_they_agree() {
    let bound = DriftBound {
        min_samples: 5,
        ..DriftBound::default()
    };
    let w = web("web");
    let mut s = Scheduler::with_score(learned(Rule::default()).with_drift_bound(bound), fleet(&w));
    s.place(&w);
    let predicted = s.score().predicted(id(1)).expect("predicted");
    // Predicted 200 ms, every start takes 4 s: off by a factor of 20.
    for _ in 0..5 {
        s.score_mut().observe(predicted, 4000.0);
    }
    assert_eq!(s.score().mode(), Mode::Fallback(Fallback::Drift));
    let w2 = web("web-2");
    assert_eq!(s.place(&w2).bound, vec![id(2)], "the fixed rule places now");
    // In the shadow, the model still predicts what the fallback placed.
    let shadow = s.score().predicted(id(2)).expect("a shadow prediction");
    assert!((shadow.startup_ms - 5000.0).abs() < 1.0, "{shadow:?}");
    for _ in 0..5 {
        s.score_mut().observe(shadow, 5000.0);
    }
    assert_eq!(s.score().mode(), Mode::Model, "back once it agrees");
}

#[test]
fn the_same_model_and_inputs_give_the_same_placements_whatever_the_node_order() {
    let specs: Vec<WorkloadSpec> = (0..20)
        .map(|i| {
            spec(json!({
                "name": format!("w{i}"),
                "replicas": 1 + i % 3,
                "resources": {"cpu_millis": 100 + 50 * (i % 4), "memory_bytes": 64 * 1024 * 1024},
            }))
        })
        .collect();
    let nodes: Vec<NodeView> = (0..12)
        .map(|i| {
            let mut n = node(i, u64::from(i % 4) * 500);
            if i % 3 == 0 {
                n.history.artifacts.push(specs[0].artifact());
            }
            n.history.restarts = i % 5;
            n
        })
        .collect();
    let run = |nodes: Vec<NodeView>| {
        let mut s = Scheduler::with_score(learned(Rule::default()), nodes);
        specs.iter().map(|w| s.place(w).bound).collect::<Vec<_>>()
    };
    let forward = run(nodes.clone());
    let backward = run(nodes.into_iter().rev().collect());
    assert_eq!(forward, backward);
    assert!(forward.iter().all(|b| !b.is_empty()));
}

#[test]
fn a_refusal_counts_in_the_nodes_history() {
    let w = web("web");
    let mut s = Scheduler::with_score(learned(Rule::default()), fleet(&w));
    assert_eq!(s.place(&w).bound, vec![id(1)]);
    let out = s.reject(&w, id(1));
    assert_eq!(out.bound, vec![id(2)], "the next best");
    assert_eq!(s.node(id(1)).expect("known").history.refusals, 1);
}
