//! Batches and several ports: [`Batch`] against the outputs onnx's reference evaluator computed,
//! against [`Model::run`] row by row, and the caller mistakes it refuses.
//!
//! `models/two-port.onnx`, `models/route-mlp.onnx` and their `.expected.json` are written
//! together by `models/make_tiny_mlp.py`.

mod support;

use edge_ai::{
    Batch, Direction, MAX_BATCH_ROWS, MAX_BATCH_VALUES, MAX_PORT_WIDTH, Model, ModelError,
};
use support::{BatchExpected, ExpectedBatch, batch_expected, close, model_bytes};

const MODELS: [(&str, &str); 2] = [
    ("two-port.onnx", "two-port.expected.json"),
    ("route-mlp.onnx", "route-mlp.expected.json"),
];

fn load(name: &str) -> Model {
    Model::from_bytes(&model_bytes(name)).unwrap_or_else(|error| panic!("{name} loads: {error}"))
}

/// Writes `batch`'s inputs into `runner`, port by port in the model's order.
fn fill(runner: &mut Batch, expected: &BatchExpected, batch: &ExpectedBatch) {
    for (index, port) in expected.inputs.iter().enumerate() {
        let rows = &batch.inputs[&port.name];
        assert_eq!(rows.len(), batch.rows);
        runner
            .input_mut(index, batch.rows)
            .expect("rows within the batch")
            .copy_from_slice(&rows.concat());
    }
}

/// Checks `runner`'s outputs against `batch`'s, value by value.
fn assert_outputs(runner: &Batch, expected: &BatchExpected, batch: &ExpectedBatch, what: &str) {
    assert_eq!(runner.rows(), batch.rows, "{what}: rows");
    for (index, port) in expected.outputs.iter().enumerate() {
        let want = batch.outputs[&port.name].concat();
        let got = runner.output(index).expect("the port exists");
        assert_eq!(
            got.len(),
            batch.rows * port.width,
            "{what}: {} length",
            port.name
        );
        for (position, (got, want)) in got.iter().zip(&want).enumerate() {
            assert!(
                close(*got, *want),
                "{what}: output {} row {} column {}: edge-ai gave {got}, the reference {want}",
                port.name,
                position / port.width,
                position % port.width
            );
        }
    }
}

#[test]
fn ports_are_listed_with_their_names_and_widths_in_file_order() {
    for (name, expected) in MODELS {
        let model = load(name);
        let expected = batch_expected(expected);
        let ports = |ports: &[edge_ai::Port]| -> Vec<(String, usize)> {
            ports
                .iter()
                .map(|port| (port.name().to_owned(), port.width()))
                .collect()
        };
        let want = |ports: &[support::ExpectedPort]| -> Vec<(String, usize)> {
            ports
                .iter()
                .map(|port| (port.name.clone(), port.width))
                .collect()
        };
        assert_eq!(ports(model.inputs()), want(&expected.inputs), "{name}");
        assert_eq!(ports(model.outputs()), want(&expected.outputs), "{name}");
        assert_eq!(model.max_batch_rows(), MAX_BATCH_ROWS, "{name}");
    }
    let model = load("two-port.onnx");
    assert_eq!((model.input_len(), model.output_len()), (5, 5));
    assert_eq!(model.input_index("b"), Some(1));
    assert_eq!(model.output_index("v"), Some(1));
    assert_eq!(model.input_index("u"), None);
}

#[test]
fn batches_match_the_onnx_reference() {
    for (name, expected) in MODELS {
        let model = load(name);
        let expected = batch_expected(expected);
        assert!(!expected.batches.is_empty());
        for batch in &expected.batches {
            let mut runner = model.batch(batch.rows).expect("a batch of that size");
            fill(&mut runner, &expected, batch);
            runner.run(batch.rows).expect("runs");
            assert_outputs(
                &runner,
                &expected,
                batch,
                &format!("{name}, {} rows", batch.rows),
            );
        }
    }
}

/// One batch sized for the largest case runs every case, fewer rows included, in any order,
/// and nothing of one run shows in the next.
#[test]
fn one_batch_runs_any_row_count_up_to_its_size() {
    for (name, expected) in MODELS {
        let model = load(name);
        let expected = batch_expected(expected);
        let mut runner = model.batch(16).expect("16 rows");
        assert_eq!(runner.max_rows(), 16);
        for round in 0..2 {
            for batch in expected.batches.iter().rev() {
                fill(&mut runner, &expected, batch);
                runner.run(batch.rows).expect("runs");
                let what = format!("{name}, {} of 16 rows, round {round}", batch.rows);
                assert_outputs(&runner, &expected, batch, &what);
            }
        }
    }
}

/// Row r of a batch is what `Model::run` gives for row r alone, every port concatenated.
#[test]
fn batch_rows_equal_single_rows() {
    for (name, expected) in MODELS {
        let model = load(name);
        let expected = batch_expected(expected);
        let batch = &expected.batches[0];
        let mut runner = model.batch(batch.rows).expect("a batch of that size");
        fill(&mut runner, &expected, batch);
        runner.run(batch.rows).expect("runs");
        for row in 0..batch.rows {
            let input: Vec<f32> = expected
                .inputs
                .iter()
                .flat_map(|port| batch.inputs[&port.name][row].clone())
                .collect();
            let single = model.run(&input).expect("one row runs");
            let batched: Vec<f32> = (0..expected.outputs.len())
                .flat_map(|index| {
                    let width = model.outputs()[index].width();
                    runner.output(index).expect("the port exists")[row * width..][..width].to_vec()
                })
                .collect();
            assert_eq!(single.len(), model.output_len());
            for (single, batched) in single.iter().zip(&batched) {
                assert!(
                    close(*single, *batched),
                    "{name} row {row}: alone {single:?}, in the batch {batched:?}"
                );
            }
        }
    }
}

#[test]
fn input_rows_stay_as_written_between_runs() {
    let model = load("route-mlp.onnx");
    let expected = batch_expected("route-mlp.expected.json");
    let batch = &expected.batches[0];
    let mut runner = model.batch(batch.rows).expect("8 rows");
    fill(&mut runner, &expected, batch);
    runner.run(batch.rows).expect("runs");
    let first = runner.output(0).expect("the port exists").to_vec();
    // Nothing rewritten: the same rows, the same scores.
    runner.run(batch.rows).expect("runs");
    assert_eq!(runner.output(0).expect("the port exists"), first);
    // Row 3 rewritten alone: only its scores change.
    let width = model.inputs()[0].width();
    runner.input_mut(0, batch.rows).expect("8 rows")[3 * width..][..width].fill(0.0);
    runner.run(batch.rows).expect("runs");
    let after = runner.output(0).expect("the port exists");
    for row in 0..batch.rows {
        let (before, now) = (&first[row * 2..][..2], &after[row * 2..][..2]);
        assert_eq!(
            before == now,
            row != 3,
            "row {row}: {before:?} then {now:?}"
        );
    }
}

/// The shipped tiny MLP declared with a symbolic batch runs every expected case in one batch.
#[test]
fn symbolic_batch_tiny_mlp_runs_all_cases_at_once() {
    let model = load("tiny-mlp.symbolic-batch.onnx");
    let expected = support::expected("tiny-mlp.expected.json");
    let rows = expected.cases.len();
    let mut runner = model.batch(rows).expect("a batch of every case");
    let inputs: Vec<f32> = expected
        .cases
        .iter()
        .flat_map(|case| case.input.clone())
        .collect();
    runner
        .input_mut(0, rows)
        .expect("rows")
        .copy_from_slice(&inputs);
    runner.run(rows).expect("runs");
    let got = runner.output(0).expect("the port exists");
    for (case, got) in expected.cases.iter().zip(got) {
        assert!(close(*got, case.output[0]), "{got} vs {:?}", case.output);
    }
}

#[test]
fn a_model_declaring_a_batch_of_one_runs_one_row_at_a_time() {
    let model = Model::from_bytes(edge_ai::BUILTIN_MODEL).expect("the built-in model loads");
    assert_eq!(model.max_batch_rows(), 1);
    let mut runner = model.batch(1).expect("one row");
    let case = &support::expected("tiny-mlp.expected.json").cases[1];
    runner
        .input_mut(0, 1)
        .expect("one row")
        .copy_from_slice(&case.input);
    runner.run(1).expect("runs");
    assert!(close(
        runner.output(0).expect("the port exists")[0],
        case.output[0]
    ));
    assert!(matches!(
        model.batch(2),
        Err(ModelError::Rows {
            rows: 2,
            max_rows: 1
        })
    ));
}

#[test]
fn row_counts_and_ports_outside_the_batch_are_refused() {
    let model = load("two-port.onnx");
    for rows in [0, MAX_BATCH_ROWS + 1] {
        match model.batch(rows) {
            Err(ModelError::Rows {
                rows: got,
                max_rows,
            }) => {
                assert_eq!((got, max_rows), (rows, MAX_BATCH_ROWS));
            }
            other => panic!("a batch of {rows} rows: expected Rows, got {other:?}"),
        }
    }
    let mut runner = model.batch(4).expect("4 rows");
    for rows in [0, 5] {
        assert!(matches!(
            runner.input_mut(0, rows),
            Err(ModelError::Rows { max_rows: 4, .. })
        ));
        assert!(matches!(
            runner.run(rows),
            Err(ModelError::Rows { max_rows: 4, .. })
        ));
    }
    match runner.input_mut(2, 1) {
        Err(
            error @ ModelError::Port {
                direction: Direction::Input,
                port: 2,
                ports: 2,
            },
        ) => assert_eq!(error.to_string(), "the model has no input port 2; it has 2"),
        other => panic!("input 2: expected Port, got {other:?}"),
    }
    assert!(matches!(
        runner.output(2),
        Err(ModelError::Port {
            direction: Direction::Output,
            ..
        })
    ));
    // Before a successful run there are no output rows, and a refused run leaves none.
    assert_eq!(runner.rows(), 0);
    assert!(runner.output(0).expect("the port exists").is_empty());
    runner.run(4).expect("runs");
    assert_eq!(runner.output(0).expect("the port exists").len(), 16);
    assert!(runner.run(5).is_err());
    assert_eq!(runner.rows(), 0);
    assert!(runner.output(0).expect("the port exists").is_empty());
}

#[test]
fn port_widths_are_capped_and_wide_ports_get_fewer_rows() {
    let widest = u64::try_from(MAX_PORT_WIDTH).expect("fits");
    let model = Model::from_bytes(&support::identity_model(widest)).expect("the widest port");
    // A row is 2^16 values in and 2^16 out: 2^24 / 2^17 rows.
    assert_eq!(
        model.max_batch_rows(),
        MAX_BATCH_VALUES / (2 * MAX_PORT_WIDTH)
    );
    assert_eq!(model.max_batch_rows(), 128);
    assert!(matches!(
        model.batch(129),
        Err(ModelError::Rows {
            rows: 129,
            max_rows: 128
        })
    ));
    let input: Vec<f32> = (0..MAX_PORT_WIDTH).map(|v| v as f32).collect();
    assert_eq!(model.run(&input).expect("runs"), input);

    for width in [widest + 1, 1 << 40, u64::MAX >> 1] {
        match Model::from_bytes(&support::identity_model(width)) {
            Err(ModelError::Invalid(message)) => {
                assert!(message.contains("at most 65536"), "{message}");
            }
            other => panic!("an input {width} wide: expected Invalid, got {other:?}"),
        }
    }
    let narrow = Model::from_bytes(&support::identity_model(4)).expect("4 wide");
    assert_eq!(narrow.max_batch_rows(), MAX_BATCH_ROWS);
}

#[test]
fn run_takes_one_row_of_every_port_concatenated() {
    let model = load("two-port.onnx");
    let expected = batch_expected("two-port.expected.json");
    let batch = &expected.batches[1];
    assert_eq!(batch.rows, 1);
    let input = [batch.inputs["a"][0].clone(), batch.inputs["b"][0].clone()].concat();
    let want = [batch.outputs["u"][0].clone(), batch.outputs["v"][0].clone()].concat();
    let got = model.run(&input).expect("runs");
    assert_eq!(got.len(), want.len());
    for (got, want) in got.iter().zip(&want) {
        assert!(close(*got, *want), "{got} vs {want}");
    }
    assert!(matches!(
        model.run(&input[..3]),
        Err(ModelError::InputShape {
            expected: 5,
            got: 3
        })
    ));
}

#[test]
fn a_batch_moves_to_another_thread() {
    fn assert_send<T: Send>() {}
    assert_send::<Batch>();

    let model = load("route-mlp.onnx");
    let expected = batch_expected("route-mlp.expected.json");
    let batch = &expected.batches[0];
    let mut runner = model.batch(batch.rows).expect("8 rows");
    fill(&mut runner, &expected, batch);
    runner.run(batch.rows).expect("runs here");
    let rows = batch.rows;
    let runner = std::thread::spawn(move || {
        runner.run(rows).expect("runs there");
        runner
    })
    .join()
    .expect("no panic");
    assert_outputs(&runner, &expected, batch, "after a move");
}

#[test]
fn run_rows_runs_any_number_of_rows_in_batches_and_refuses_a_partial_row() {
    let model = load("route-mlp.onnx");
    let width = model.inputs()[0].width();
    let out_width = model.outputs()[0].width();
    // 11 rows through a batch of 4: runs of 4, 4 and 3, each handed over at its first row.
    let rows = 11;
    let input: Vec<f32> = (0..rows * width)
        .map(|i| ((i * 37 % 101) as f32 / 25.0) - 2.0)
        .collect();
    let mut runner = model.batch(4).expect("a batch of 4");
    let mut outputs = vec![f32::NAN; rows * out_width];
    let mut firsts = Vec::new();
    runner
        .run_rows(&input, |first, values| {
            firsts.push(first);
            outputs[first * out_width..][..values.len()].copy_from_slice(values);
        })
        .expect("whole rows run");
    assert_eq!(firsts, [0, 4, 8]);
    for (row, features) in input.chunks_exact(width).enumerate() {
        let single = model.run(features).expect("one row runs");
        for (single, batched) in single.iter().zip(&outputs[row * out_width..][..out_width]) {
            assert!(
                close(*single, *batched),
                "row {row}: alone {single:?}, through run_rows {batched:?}"
            );
        }
    }

    // A partial row is the caller's mistake: refused, and nothing is handed over.
    let mut called = false;
    let error = runner
        .run_rows(&input[..width + 1], |_, _| called = true)
        .expect_err("a row and one value is no whole number of rows");
    assert!(
        matches!(error, ModelError::InputShape { expected, got } if expected == width && got == width + 1),
        "{error:?}"
    );
    assert!(!called);
    // No rows: nothing runs.
    runner.run_rows(&[], |_, _| called = true).expect("no rows");
    assert!(!called);
}
