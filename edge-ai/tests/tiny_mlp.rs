//! The shipped tiny MLP against the outputs numpy computed for it, and hostile model files.
//!
//! `models/tiny-mlp.onnx` and `models/tiny-mlp.expected.json` are written together by
//! `models/make_tiny_mlp.py`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

mod support;

use edge_ai::{MAX_MODEL_BYTES, Model, ModelError};
use support::{Expected, models_dir};

fn model_path() -> PathBuf {
    models_dir().join("tiny-mlp.onnx")
}

fn model_bytes() -> Vec<u8> {
    std::fs::read(model_path()).expect("tiny-mlp.onnx ships with the crate")
}

fn tiny_mlp() -> Model {
    Model::load(&model_path()).expect("the shipped model loads")
}

fn expected() -> Expected {
    support::expected("tiny-mlp.expected.json")
}

/// A file in the system temp dir, with a name no other test or test run uses, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(label: &str) -> TempFile {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("edge-ai-test-{}-{n}-{label}.onnx", std::process::id());
        TempFile(std::env::temp_dir().join(name))
    }

    fn with_contents(label: &str, contents: &[u8]) -> TempFile {
        let file = TempFile::new(label);
        std::fs::write(&file.0, contents).expect("temp dir is writable");
        file
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        // Best effort: a leftover file in the temp dir harms nothing.
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Deterministic pseudo-random bytes (xorshift64), so a failure reproduces.
fn pseudo_random_bytes(len: usize, mut state: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()[0]
        })
        .collect()
}

#[test]
fn shipped_model_loads_with_its_input_and_output_lengths() {
    let model = tiny_mlp();
    assert_eq!(model.input_len(), 8);
    assert_eq!(model.output_len(), 1);

    let expected = expected();
    assert_eq!(expected.input_len, model.input_len());
    assert_eq!(expected.output_len, model.output_len());
}

#[test]
fn shipped_model_matches_numpy_on_every_case() {
    let model = tiny_mlp();
    let expected = expected();
    assert!(!expected.cases.is_empty());

    for (i, case) in expected.cases.iter().enumerate() {
        let got = model.run(&case.input).expect("a correct-length input runs");
        assert_eq!(got.len(), case.output.len(), "case {i}: output length");
        for (got, want) in got.iter().zip(&case.output) {
            assert!(
                support::close(*got, *want),
                "case {i}: input {:?}: tract gave {got}, numpy {want}",
                case.input
            );
        }
    }
}

#[test]
fn run_into_reuses_the_buffer_and_matches_run() {
    let model = tiny_mlp();
    let mut out = vec![42.0; 5];
    for case in expected().cases {
        model
            .run_into(&case.input, &mut out)
            .expect("a correct-length input runs");
        assert_eq!(
            out,
            model.run(&case.input).expect("a correct-length input runs")
        );
    }
}

#[test]
fn inference_is_repeatable() {
    let model = tiny_mlp();
    let input = [0.5, -1.0, 2.0, 0.0, 1.5, -0.5, 0.25, 3.0];
    let first = model.run(&input).expect("runs");
    for _ in 0..10 {
        assert_eq!(model.run(&input).expect("runs"), first);
    }
    assert_eq!(
        Model::from_bytes(&model_bytes())
            .expect("loads")
            .run(&input)
            .expect("runs"),
        first
    );
}

#[test]
fn wrong_input_length_is_an_input_shape_error() {
    let model = tiny_mlp();
    for len in [0, 1, 7, 9, 16] {
        let input = vec![1.0; len];
        match model.run(&input) {
            Err(ModelError::InputShape { expected: 8, got }) => assert_eq!(got, len),
            other => panic!("input of {len} values: expected InputShape, got {other:?}"),
        }
        let mut out = vec![1.0];
        assert!(matches!(
            model.run_into(&input, &mut out),
            Err(ModelError::InputShape { expected: 8, .. })
        ));
        assert!(out.is_empty(), "run_into leaves `out` empty on error");
    }
}

#[test]
fn model_is_shareable_between_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Model>();

    let model = tiny_mlp();
    let case = &expected().cases[0];
    std::thread::scope(|scope| {
        let runs: Vec<_> = (0..2)
            .map(|_| scope.spawn(|| model.run(&case.input)))
            .collect();
        for run in runs {
            let got = run.join().expect("no panic").expect("runs");
            assert!(support::close(got[0], case.output[0]));
        }
    });
}

#[test]
fn symbolic_batch_dimension_is_fixed_to_one() {
    let model = Model::load(&models_dir().join("tiny-mlp.symbolic-batch.onnx"))
        .expect("a [batch, 8] input loads");
    assert_eq!((model.input_len(), model.output_len()), (8, 1));
    for case in expected().cases {
        let got = model.run(&case.input).expect("a correct-length input runs");
        assert!(support::close(got[0], case.output[0]));
    }
}

#[test]
fn numeric_batch_dimension_other_than_one_is_invalid() {
    match Model::load(&models_dir().join("tiny-mlp.batch4.onnx")) {
        Err(ModelError::Invalid(message)) => assert!(message.contains("[1, N]"), "{message}"),
        other => panic!("a [4, 8] input: expected Invalid, got {other:?}"),
    }
}

/// Malformed files that once made tract's own ONNX parser panic: refused with a reason.
#[test]
fn malformed_graphs_are_invalid_with_a_reason() {
    for (name, reason) in [
        (
            "tiny-mlp.undefined-output.onnx",
            "no input, initializer or node defines",
        ),
        (
            "tiny-mlp.raw-string-initializer.onnx",
            "float (f32) tensors only",
        ),
    ] {
        match Model::load(&models_dir().join(name)) {
            Err(ModelError::Invalid(message)) => assert!(message.contains(reason), "{message}"),
            other => panic!("{name}: expected Invalid, got {other:?}"),
        }
    }
}

#[test]
fn empty_file_is_invalid() {
    let file = TempFile::with_contents("empty", &[]);
    let error = Model::load(&file.0).expect_err("an empty file is no model");
    assert!(matches!(error, ModelError::Invalid(_)), "{error:?}");
    assert!(matches!(
        Model::from_bytes(&[]),
        Err(ModelError::Invalid(_))
    ));
}

#[test]
fn random_bytes_are_invalid() {
    for (seed, len) in [(1, 1), (2, 16), (3, 907), (4, 4096), (5, 65_536)] {
        let bytes = pseudo_random_bytes(len, 0x9E37_79B9_7F4A_7C15 ^ seed);
        match Model::from_bytes(&bytes) {
            Err(ModelError::Invalid(message)) => assert!(!message.is_empty()),
            other => panic!("{len} random bytes (seed {seed}): expected Invalid, got {other:?}"),
        }
    }
    let file = TempFile::with_contents("random", &pseudo_random_bytes(1024, 7));
    assert!(matches!(Model::load(&file.0), Err(ModelError::Invalid(_))));
}

#[test]
fn every_truncation_of_the_real_model_is_invalid() {
    let bytes = model_bytes();
    for len in 0..bytes.len() {
        match Model::from_bytes(&bytes[..len]) {
            Err(ModelError::Invalid(_)) => {}
            other => panic!("model truncated to {len} bytes: expected Invalid, got {other:?}"),
        }
    }
    let file = TempFile::with_contents("truncated", &bytes[..bytes.len() / 2]);
    assert!(matches!(Model::load(&file.0), Err(ModelError::Invalid(_))));
}

#[test]
fn file_over_the_size_limit_is_refused_before_parsing() {
    let file = TempFile::new("too-large");
    // A sparse file: its length is over the limit without writing 16 MiB to disk.
    std::fs::File::create(&file.0)
        .and_then(|f| f.set_len(MAX_MODEL_BYTES + 1))
        .expect("temp dir is writable");
    match Model::load(&file.0) {
        Err(ModelError::TooLarge { len, max }) => {
            assert_eq!(len, MAX_MODEL_BYTES + 1);
            assert_eq!(max, MAX_MODEL_BYTES);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }

    // The same limit applies to bytes already in memory: the real model padded past it.
    let mut bytes = model_bytes();
    bytes.resize(
        usize::try_from(MAX_MODEL_BYTES).expect("16 MiB fits a usize") + 1,
        0,
    );
    assert!(matches!(
        Model::from_bytes(&bytes),
        Err(ModelError::TooLarge { .. })
    ));
}

#[test]
fn missing_file_is_an_io_error_naming_the_path() {
    let file = TempFile::new("missing");
    match Model::load(&file.0) {
        Err(ModelError::Io { path, source }) => {
            assert_eq!(path, file.0);
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected Io, got {other:?}"),
    }
}
