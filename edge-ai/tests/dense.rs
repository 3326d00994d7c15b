//! The dense path against tract, the reference: every model edge-ai ships or generates that
//! loads is run both ways on the same rows, and the two agree. The routing and placement
//! models nodes run take the dense path (no allocation, no per-operator cost); a graph it
//! cannot take still runs, through tract.

mod support;

use edge_ai::Model;

/// Rows of `width` values spread over -`scale`..`scale`, the same every run.
fn rows(n: usize, width: usize, scale: f32, seed: usize) -> Vec<f32> {
    (0..n * width)
        .map(|i| ((i * 7_919 + seed * 104_729) % 2_001) as f32 / 1_000.0 - 1.0)
        .map(|x| x * scale)
        .collect()
}

/// Runs `model` on the same rows through its batch and through tract's, and compares every
/// output within `1e-3 x max(1, |tract's|)`. Returns whether the batch was dense.
fn agrees(name: &str, model: &Model) -> bool {
    let n = 8.min(model.max_batch_rows());
    let mut ours = model.batch(n).expect("a batch");
    let mut theirs = model.tract_batch(n).expect("a tract batch");
    for (seed, scale) in [(1, 1.0), (2, 10.0), (3, 100.0)] {
        for (port, input) in model.inputs().iter().enumerate() {
            let values = rows(n, input.width(), scale, seed + port);
            ours.input_mut(port, n)
                .expect("rows")
                .copy_from_slice(&values);
            theirs
                .input_mut(port, n)
                .expect("rows")
                .copy_from_slice(&values);
        }
        ours.run(n).expect("runs");
        theirs.run(n).expect("tract runs");
        for port in 0..model.outputs().len() {
            let (a, b) = (
                ours.output(port).expect("out"),
                theirs.output(port).expect("out"),
            );
            assert_eq!(a.len(), b.len());
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                assert!(
                    (x - y).abs() <= 1e-3 * y.abs().max(1.0) || (x.is_nan() && y.is_nan()),
                    "{name}, output {port} value {i}, rows of scale {scale}: {x} here, {y} in tract"
                );
            }
        }
    }
    ours.is_dense()
}

#[test]
fn every_model_that_loads_agrees_with_tract_and_the_routing_models_are_dense() {
    let mut dense = Vec::new();
    let mut tract = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(support::models_dir())
        .expect("models/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "onnx"))
        .collect();
    files.sort();
    for path in files {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("?")
            .to_owned();
        let Ok(model) = Model::load(&path) else {
            continue; // the files made to be refused
        };
        assert_eq!(model.is_dense(), agrees(&name, &model), "{name}");
        if model.is_dense() {
            dense.push(name);
        } else {
            tract.push(name);
        }
    }
    for shipped in [
        "route.onnx",
        "route-mlp.onnx",
        "tiny-mlp.onnx",
        "two-port.onnx",
    ] {
        assert!(
            dense.iter().any(|n| n == shipped),
            "{shipped} takes the dense path; dense: {dense:?}, tract: {tract:?}"
        );
    }
}

/// A graph the dense path does not take (a column of one input scaling every column of
/// another: a broadcast between two activations) runs through tract, with tract's answers.
#[test]
fn a_graph_outside_the_dense_path_runs_through_tract() {
    use support::{field, varint_field};
    let port = |name: &[u8], width: u64| {
        let dims = [
            field(1, &field(2, b"batch")),
            field(1, &varint_field(1, width)),
        ]
        .concat();
        let tensor_type = [varint_field(1, 1), field(2, &dims)].concat();
        [field(1, name), field(2, &field(1, &tensor_type))].concat()
    };
    let node = [
        field(1, b"a"),
        field(1, b"b"),
        field(2, b"y"),
        field(4, b"Mul"),
    ]
    .concat();
    let graph = [
        field(1, &node),
        field(11, &port(b"a", 1)),
        field(11, &port(b"b", 3)),
        field(12, &port(b"y", 3)),
    ]
    .concat();
    let opset = [field(1, b""), varint_field(2, 13)].concat();
    let bytes = [varint_field(1, 8), field(7, &graph), field(8, &opset)].concat();
    let model = Model::from_bytes(&bytes).expect("loads");
    assert!(!model.is_dense(), "an activation broadcast over another");
    assert!(!agrees("column-times-row", &model));
    let mut batch = model.batch(2).expect("a batch");
    batch
        .input_mut(0, 2)
        .expect("a")
        .copy_from_slice(&[2.0, -1.0]);
    batch
        .input_mut(1, 2)
        .expect("b")
        .copy_from_slice(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    batch.run(2).expect("runs");
    assert_eq!(
        batch.output(0).expect("y"),
        [2.0, 4.0, 6.0, -4.0, -5.0, -6.0]
    );
}
