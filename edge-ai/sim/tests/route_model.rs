//! The shipped routing model, `edge-ai/models/route.onnx`: it declares the features and
//! outputs node-core reads, in their order and units, and edge-ai computes what numpy
//! computed for its golden rows when it was trained.

use std::path::{Path, PathBuf};

use node_core::proxy::learned::{ROUTE_FEATURES, ROUTE_OUTPUTS, ROUTE_PURPOSE, ROUTE_WIDTH};

fn models() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models")
}

/// `(key, value)` of an ONNX model's `metadata_props` (ModelProto field 14, each a
/// StringStringEntryProto: key = 1, value = 2), read from the protobuf by hand: edge-ai does
/// not expose them yet.
fn metadata(bytes: &[u8]) -> Vec<(String, String)> {
    fn varint(bytes: &[u8], at: &mut usize) -> u64 {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = bytes[*at];
            *at += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                break;
            }
        }
        value
    }
    /// The fields of one message: (number, bytes) for length-delimited ones.
    fn fields(bytes: &[u8]) -> Vec<(u64, &[u8])> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let key = varint(bytes, &mut at);
            match key & 7 {
                0 => {
                    varint(bytes, &mut at);
                }
                1 => at += 8,
                5 => at += 4,
                2 => {
                    let len = varint(bytes, &mut at) as usize;
                    out.push((key >> 3, &bytes[at..at + len]));
                    at += len;
                }
                other => panic!("wire type {other} in a model"),
            }
        }
        out
    }
    fields(bytes)
        .into_iter()
        .filter(|(number, _)| *number == 14)
        .map(|(_, entry)| {
            let mut key = String::new();
            let mut value = String::new();
            for (number, text) in fields(entry) {
                let text = String::from_utf8(text.to_vec()).expect("UTF-8 metadata");
                match number {
                    1 => key = text,
                    2 => value = text,
                    _ => {}
                }
            }
            (key, value)
        })
        .collect()
}

fn rows(text: &str) -> Vec<Vec<f32>> {
    text.split(';')
        .map(|row| row.split(',').map(|v| v.parse().expect("an f32")).collect())
        .collect()
}

fn golden() -> serde_json::Value {
    let text =
        std::fs::read_to_string(models().join("route.golden.json")).expect("the golden file");
    serde_json::from_str(&text).expect("JSON")
}

fn close(a: f32, b: f32) -> bool {
    (a - b).abs() <= 1e-4 + 1e-4 * b.abs()
}

#[test]
fn the_model_declares_the_features_and_outputs_node_core_reads() {
    let bytes = std::fs::read(models().join("route.onnx")).expect("the model");
    let meta = metadata(&bytes);
    let get = |key: &str| {
        meta.iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no {key} in {meta:?}"))
    };
    assert_eq!(get("edge.purpose"), ROUTE_PURPOSE);
    let declared = |features: &[node_core::proxy::learned::Feature]| {
        features
            .iter()
            .map(|f| format!("{}:{}", f.name, f.unit))
            .collect::<Vec<_>>()
            .join(",")
    };
    assert_eq!(get("edge.input.x"), declared(&ROUTE_FEATURES));
    assert_eq!(get("edge.output.y"), declared(&ROUTE_OUTPUTS));

    // The golden rows in the model are those of the JSON file.
    let inputs = rows(get("edge.golden.input.x"));
    let outputs = rows(get("edge.golden.output.y"));
    let cases = golden()["cases"].as_array().expect("cases").clone();
    assert_eq!(inputs.len(), cases.len());
    for ((input, output), case) in inputs.iter().zip(&outputs).zip(&cases) {
        assert_eq!(input.len(), ROUTE_WIDTH);
        assert_eq!(output.len(), ROUTE_OUTPUTS.len());
        let json = |key: &str| -> Vec<f32> {
            case[key]
                .as_array()
                .expect("numbers")
                .iter()
                .map(|v| v.as_f64().expect("a number") as f32)
                .collect()
        };
        assert_eq!(*input, json("input"));
        assert_eq!(*output, json("output"));
    }
}

#[test]
fn edge_ai_computes_the_golden_outputs() {
    let model = edge_ai::Model::load(&models().join("route.onnx")).expect("edge-ai loads it");
    assert_eq!(model.input_len(), ROUTE_WIDTH);
    assert_eq!(model.output_len(), ROUTE_OUTPUTS.len());
    let golden = golden();
    let names: Vec<&str> = golden["features"]
        .as_array()
        .expect("names")
        .iter()
        .map(|v| v.as_str().expect("a name"))
        .collect();
    let expected: Vec<&str> = ROUTE_FEATURES.iter().map(|f| f.name).collect();
    assert_eq!(names, expected);
    let cases = golden["cases"].as_array().expect("cases");
    assert!(cases.len() >= 3);
    for case in cases {
        let input: Vec<f32> = case["input"]
            .as_array()
            .expect("numbers")
            .iter()
            .map(|v| v.as_f64().expect("a number") as f32)
            .collect();
        let want: Vec<f32> = case["output"]
            .as_array()
            .expect("numbers")
            .iter()
            .map(|v| v.as_f64().expect("a number") as f32)
            .collect();
        let got = model.run(&input).expect("runs");
        assert!(
            got.iter().zip(&want).all(|(g, w)| close(*g, *w)),
            "{input:?}: edge-ai {got:?}, numpy {want:?}"
        );
        // A latency in milliseconds between a microsecond and a minute; a probability.
        assert!((-7.0..11.0).contains(&got[0]), "{got:?}");
        assert!((0.0..=1.0).contains(&got[1]), "{got:?}");
    }
}

#[test]
fn the_model_routes_in_the_simulation_without_falling_back() {
    use edge_sim::scenario::Scenario;
    use edge_sim::sim::{Policy, run};
    let model = edge_ai::Model::load(&models().join("route.onnx")).expect("edge-ai loads it");
    let mut text = String::from(
        "name = \"t\"\nduration_secs = 3\ntimeout_ms = 1000\n[arrivals]\nrate_per_sec = 300\n",
    );
    for (name, median) in [("a", 10), ("b", 10), ("c", 10), ("slow", 60)] {
        text.push_str(&format!(
            "[[backend]]\nname = \"{name}\"\nworkers = 4\nservice = {{ median_ms = {median}, sigma = 0.3 }}\n"
        ));
    }
    let scenario = Scenario::parse(&text, "t.toml").expect("valid");
    let outcome = run(&scenario, 1, &Policy::Model(model), false);
    assert!(outcome.model_choices > 0);
    assert_eq!(outcome.fallback_choices, 0);
    // It learned that the slow backend is slow.
    let total: u64 = outcome.attempts.iter().sum();
    assert!(outcome.attempts[3] * 8 < total, "{:?}", outcome.attempts);
}
