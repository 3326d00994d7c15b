//! The shipped pre-warming model, `edge-ai/models/warm.onnx`: it declares the features and
//! output node-core reads, in their order and units, edge-ai computes what numpy computed
//! for its golden rows, a model of another schema is refused by name, and on a caller with a
//! rhythm it starts the workload before the call.

use std::path::{Path, PathBuf};

use edge_sim::warm::scenario::WarmScenario;
use edge_sim::warm::{WarmModelError, WarmPolicy, check_model, eval};
use node_core::warm::{WARM_FEATURES, WARM_OUTPUTS, WARM_PURPOSE, WARM_WIDTH};

fn models() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models")
}

fn model() -> edge_ai::Model {
    edge_ai::Model::load(&models().join("warm.onnx")).expect("the shipped model loads")
}

#[test]
fn the_model_declares_node_core_s_schema_and_reproduces_its_golden_rows() {
    let model = model();
    check_model(&model).expect("node-core's schema");
    assert_eq!(model.purpose(), Some(WARM_PURPOSE));
    let schema = model.schema().expect("a declared schema");
    let declared: Vec<(&str, &str)> = schema.inputs()[0]
        .features()
        .iter()
        .map(|f| (f.name(), f.unit()))
        .collect();
    let expected: Vec<(&str, &str)> = WARM_FEATURES.iter().map(|f| (f.name, f.unit)).collect();
    assert_eq!(declared, expected);
    assert_eq!(
        schema.outputs()[0].features()[0].name(),
        WARM_OUTPUTS[0].name
    );

    let text = std::fs::read_to_string(models().join("warm.golden.json")).expect("goldens");
    let golden: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    let cases = golden["cases"].as_array().expect("cases");
    assert!(cases.len() >= 4);
    for case in cases {
        let numbers = |key: &str| -> Vec<f32> {
            case[key]
                .as_array()
                .expect("numbers")
                .iter()
                .map(|v| v.as_f64().expect("a number") as f32)
                .collect()
        };
        let input = numbers("input");
        assert_eq!(input.len(), WARM_WIDTH);
        let out = model.run(&input).expect("runs");
        let want = numbers("output");
        assert_eq!(out.len(), 1);
        assert!(
            (out[0] - want[0]).abs() <= 1e-4 + 1e-4 * want[0].abs(),
            "{input:?}: {} not {}",
            out[0],
            want[0]
        );
        assert!((0.0..=1.0).contains(&out[0]));
    }
}

#[test]
fn a_model_of_another_schema_is_refused_by_name() {
    let route = edge_ai::Model::load(&models().join("route.onnx")).expect("loads");
    let error = check_model(&route).expect_err("a routing model cannot decide pre-warming");
    assert!(matches!(error, WarmModelError::Schema(_)), "{error:?}");
    assert!(error.to_string().contains("\"route\""), "{error}");
    let two = edge_ai::Model::load(&models().join("two-port.onnx")).expect("loads");
    assert!(check_model(&two).is_err());
}

#[test]
fn the_model_starts_a_caller_with_a_rhythm_before_it_calls() {
    // Called every 25 minutes with a little jitter, asleep after a minute: under today's
    // rule every call waits for the start. Not one of the training scenarios.
    let scenario = WarmScenario::parse(
        r#"
name = "every-25m"
duration_days = 2
warmup_days = 1
[[workload]]
name = "poll"
cold_start_secs = 8
memory_mib = 64
idle_secs = 60
[[workload.traffic]]
kind = "periodic"
period_secs = 1500
jitter_secs = 10
"#,
        "every-25m.toml",
    )
    .expect("valid");
    let policies = [
        WarmPolicy::Never,
        WarmPolicy::Model {
            model: model(),
            threshold: 0.5,
        },
    ];
    let figures = eval(&scenario, &[41], &policies).expect("runs");
    let (never, learned) = (&figures.strategies[0], &figures.strategies[1]);
    assert_eq!(never.cold_per_1000, 1000.0);
    assert!(
        learned.cold_per_1000 < 0.5 * never.cold_per_1000,
        "{}",
        figures.table()
    );
    // Not by staying up: well under what a keep-alive of a period would hold.
    assert!(
        learned.mib_hours_per_day < 0.5 * 24.0 * 64.0,
        "{}",
        figures.table()
    );
    assert!(learned.model_share.is_some_and(|m| m > 0.9));
}
