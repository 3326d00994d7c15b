//! The shipped placement model, `edge-ai/models/place.onnx`: it declares the features and
//! outputs orchestrator-core reads, edge-ai computes what numpy computed for its golden
//! rows, a model of another schema is refused with a reason, and in the simulation it
//! places without falling back.

use std::path::{Path, PathBuf};

use edge_sim::place::onnx::{OnnxPlacePredict, check};
use orchestrator_core::scheduler::learned::{
    Fallback, Learned, Mode, PLACE_FEATURES, PLACE_OUTPUTS, PLACE_PURPOSE, PLACE_WIDTH,
};

fn models() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models")
}

fn load(name: &str) -> edge_ai::Model {
    edge_ai::Model::load(&models().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn numbers(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .expect("numbers")
        .iter()
        .map(|x| x.as_f64().expect("a number") as f32)
        .collect()
}

#[test]
fn the_model_declares_the_schema_orchestrator_core_reads() {
    let model = load("place.onnx");
    assert_eq!(model.purpose(), Some(PLACE_PURPOSE));
    check(&model).expect("a placement model");
    let schema = model.schema().expect("a declared schema");
    let input = &schema.inputs()[0];
    let declared: Vec<(&str, &str)> = input
        .features()
        .iter()
        .map(|f| (f.name(), f.unit()))
        .collect();
    let expected: Vec<(&str, &str)> = PLACE_FEATURES.iter().map(|f| (f.name, f.unit)).collect();
    assert_eq!(declared, expected);
    let outputs: Vec<&str> = schema.outputs()[0]
        .features()
        .iter()
        .map(|f| f.name())
        .collect();
    assert_eq!(outputs, PLACE_OUTPUTS.map(|f| f.name));
}

#[test]
fn edge_ai_computes_the_golden_outputs() {
    let model = load("place.onnx");
    assert_eq!(model.input_len(), PLACE_WIDTH);
    let text = std::fs::read_to_string(models().join("place.golden.json")).expect("goldens");
    let golden: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    let names: Vec<&str> = golden["features"]
        .as_array()
        .expect("names")
        .iter()
        .map(|v| v.as_str().expect("a name"))
        .collect();
    assert_eq!(names, PLACE_FEATURES.map(|f| f.name));
    let cases = golden["cases"].as_array().expect("cases");
    assert!(cases.len() >= 5);
    for case in cases {
        let (input, want) = (numbers(&case["input"]), numbers(&case["output"]));
        let got = model.run(&input).expect("runs");
        let close = |a: f32, b: f32| (a - b).abs() <= 1e-4 + 1e-4 * b.abs();
        assert!(
            got.iter().zip(&want).all(|(g, w)| close(*g, *w)),
            "{input:?}: edge-ai {got:?}, numpy {want:?}"
        );
        // A startup between a millisecond and a day; a probability.
        assert!((-1.0..12.0).contains(&got[0]), "{got:?}");
        assert!((0.0..=1.0).contains(&got[1]), "{got:?}");
    }
}

#[test]
fn a_model_of_another_schema_is_refused_and_the_fixed_rule_places() {
    let route = load("route.onnx");
    let why = check(&route).expect_err("not a placement model");
    assert_eq!(why, "the model's purpose is \"route\", expected \"place\"");
    let two = load("two-port.onnx");
    let why = check(&two).expect_err("two inputs");
    assert!(why.contains("a placement model takes one input"), "{why}");
    let refused = OnnxPlacePredict::new(route).map(|p| Box::new(p) as _);
    assert!(matches!(refused, Err(Fallback::Refused)));
    let learned = Learned::new(refused);
    assert_eq!(learned.mode(), Mode::Fallback(Fallback::Refused));
}

#[test]
fn the_model_places_in_the_simulation_and_fetches_less_than_the_fixed_rule() {
    use edge_sim::place::scenario::PlaceScenario;
    use edge_sim::place::sim::{PlacePolicy, run};
    let text = r#"
name = "t"
duration_secs = 7200
warmup_secs = 600
[workloads]
rate_per_min = 6
lifetime_secs = 900
artifacts = 6
artifact_mb = [20, 60]
cpu_millis = [200]
memory_mb = [64]
[[node]]
name = "n"
count = 12
cpus = 4
memory_mb = 2048
lat = 10.0
lon = 10.0
fetch_mbps = 5
start_ms = 400
cache_artifacts = 3
"#;
    let scenario = PlaceScenario::parse(text, "t.toml").expect("valid");
    let policy = PlacePolicy::Model(load("place.onnx"), Default::default());
    let model = run(&scenario, 1, &policy, false);
    let fixed = run(&scenario, 1, &PlacePolicy::LeastAllocated, false);
    assert!(model.model_placements > 0);
    assert_eq!(model.fallback_placements, 0);
    let fetched = |o: &edge_sim::place::sim::PlaceOutcome| {
        o.instances.iter().filter(|i| i.fetched).count() as f64 / o.instances.len() as f64
    };
    assert!(
        fetched(&model) < fetched(&fixed),
        "model {} fixed {}",
        fetched(&model),
        fetched(&fixed)
    );
}
