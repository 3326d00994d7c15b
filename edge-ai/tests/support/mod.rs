//! What the model tests share: where the models live and how their expected outputs are stored.
//!
//! Each `models/*.expected.json` is written by `models/make_tiny_mlp.py` with its model.

// Each test file compiles this module on its own and uses part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// How far edge-ai's float32 result may be from the reference: absolute for values up to 1,
/// relative above.
pub const TOLERANCE: f32 = 1e-5;

/// A model's input and output lengths and fixed inputs with the outputs the reference computed.
#[derive(Debug, Deserialize)]
pub struct Expected {
    pub input_len: usize,
    pub output_len: usize,
    pub cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
pub struct Case {
    pub input: Vec<f32>,
    pub output: Vec<f32>,
}

pub fn models_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models")
}

/// Reads `models/NAME`, an `.expected.json` file.
pub fn expected(name: &str) -> Expected {
    let json = std::fs::read_to_string(models_dir().join(name))
        .unwrap_or_else(|error| panic!("{name} ships with the crate: {error}"));
    serde_json::from_str(&json).unwrap_or_else(|error| panic!("{name} is valid: {error}"))
}

/// Whether `got` is within [`TOLERANCE`] of `want`.
pub fn close(got: f32, want: f32) -> bool {
    (got - want).abs() <= TOLERANCE * want.abs().max(1.0)
}

/// A model's ports and batches of fixed inputs with the outputs the reference computed, from a
/// batch model's `.expected.json`.
#[derive(Debug, Deserialize)]
pub struct BatchExpected {
    pub inputs: Vec<ExpectedPort>,
    pub outputs: Vec<ExpectedPort>,
    pub batches: Vec<ExpectedBatch>,
}

#[derive(Debug, Deserialize)]
pub struct ExpectedPort {
    pub name: String,
    pub width: usize,
}

/// One batch: per port name, `rows` rows of values.
#[derive(Debug, Deserialize)]
pub struct ExpectedBatch {
    pub rows: usize,
    pub inputs: std::collections::BTreeMap<String, Vec<Vec<f32>>>,
    pub outputs: std::collections::BTreeMap<String, Vec<Vec<f32>>>,
}

/// Reads `models/NAME`, a batch model's `.expected.json` file.
pub fn batch_expected(name: &str) -> BatchExpected {
    let json = std::fs::read_to_string(models_dir().join(name))
        .unwrap_or_else(|error| panic!("{name} ships with the crate: {error}"));
    serde_json::from_str(&json).unwrap_or_else(|error| panic!("{name} is valid: {error}"))
}

/// Reads `models/NAME`, a model file shipped with the crate.
pub fn model_bytes(name: &str) -> Vec<u8> {
    std::fs::read(models_dir().join(name))
        .unwrap_or_else(|error| panic!("{name} ships with the crate: {error}"))
}

/// A protobuf varint.
pub fn varint(mut value: u64) -> Vec<u8> {
    let mut bytes = Vec::new();
    while value >= 0x80 {
        bytes.push((value as u8) | 0x80);
        value >>= 7;
    }
    bytes.push(value as u8);
    bytes
}

/// A length-delimited protobuf field.
pub fn field(number: u64, value: &[u8]) -> Vec<u8> {
    let len = u64::try_from(value.len()).expect("a test message fits a u64");
    [varint(number << 3 | 2), varint(len), value.to_vec()].concat()
}

/// A varint protobuf field.
pub fn varint_field(number: u64, value: u64) -> Vec<u8> {
    [varint(number << 3), varint(value)].concat()
}

/// An ONNX model (opset 13) whose output `y` is its input `x` (Identity), both `f32` of shape
/// `["batch", width]`: the smallest model of a given width.
pub fn identity_model(width: u64) -> Vec<u8> {
    let dim_param = field(1, &field(2, b"batch"));
    let dim_value = field(1, &varint_field(1, width));
    let tensor_type = [
        varint_field(1, 1),
        field(2, &[dim_param, dim_value].concat()),
    ]
    .concat();
    let value_info = |name: &[u8]| [field(1, name), field(2, &field(1, &tensor_type))].concat();
    let node = [field(1, b"x"), field(2, b"y"), field(4, b"Identity")].concat();
    let graph = [
        field(1, &node),
        field(11, &value_info(b"x")),
        field(12, &value_info(b"y")),
    ]
    .concat();
    let opset = [field(1, b""), varint_field(2, 13)].concat();
    [varint_field(1, 8), field(7, &graph), field(8, &opset)].concat()
}
