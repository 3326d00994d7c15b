//! Every supported operator against onnx's reference evaluator, and model files edge-ai must
//! refuse: operators and tensor storage it does not support, and hostile protobuf.
//!
//! `models/ops*.onnx`, their `.expected.json`, `models/unsupported-conv.onnx` and
//! `models/external-data.onnx` are written together by `models/make_tiny_mlp.py`.
//!
//! The hostile models are encoded here byte by byte, each as one fault added to a small valid
//! model ([`baseline_nodes`], [`baseline_weights`]) that is itself checked to load: so every
//! refusal is caused by the fault it carries, not by a mistake in the encoding.

use std::path::{Path, PathBuf};

mod support;

use edge_ai::{Model, ModelError};
use support::{close, expected, models_dir};

fn load(name: &str) -> Result<Model, ModelError> {
    Model::load(&models_dir().join(name))
}

/// Loads `model`, checks its lengths against `expected` and every case's output.
fn assert_matches_reference(model: &str, expected: &str) {
    let model = load(model).unwrap_or_else(|error| panic!("{model} loads: {error}"));
    let expected = self::expected(expected);
    assert_eq!(model.input_len(), expected.input_len, "input_len");
    assert_eq!(model.output_len(), expected.output_len, "output_len");
    assert!(!expected.cases.is_empty());

    for (i, case) in expected.cases.iter().enumerate() {
        let got = model.run(&case.input).expect("a correct-length input runs");
        assert_eq!(got.len(), case.output.len(), "case {i}: output length");
        for (j, (got, want)) in got.iter().zip(&case.output).enumerate() {
            assert!(
                close(*got, *want),
                "case {i}, output {j}: input {:?}: edge-ai gave {got}, the reference {want}",
                case.input
            );
        }
    }
}

/// Loads `bytes`, expecting [`ModelError::Invalid`]; returns its message.
fn assert_invalid(bytes: &[u8], what: &str) -> String {
    match Model::from_bytes(bytes) {
        Err(ModelError::Invalid(message)) => {
            assert!(!message.is_empty(), "{what}: empty message");
            message
        }
        other => panic!("{what}: expected Invalid, got {other:?}"),
    }
}

/// A directory in the system temp dir, with a name no other test run uses, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(label: &str) -> TempDir {
        let name = format!("edge-ai-ops-test-{}-{label}", std::process::id());
        let dir = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&dir).expect("temp dir is writable");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // Best effort: a leftover directory in the temp dir harms nothing.
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------------------------
// A protobuf encoder: just enough to write ONNX messages field by field, faults included.

/// Protobuf wire types: the low three bits of a field's key.
const VARINT: u8 = 0;
const LEN: u8 = 2;
const START_GROUP: u8 = 3;
const END_GROUP: u8 = 4;

/// Field numbers from onnx.proto, per message.
mod field {
    pub mod model {
        pub const IR_VERSION: u32 = 1;
        pub const PRODUCER_NAME: u32 = 2;
        pub const GRAPH: u32 = 7;
        pub const OPSET_IMPORT: u32 = 8;
    }
    pub mod opset {
        pub const DOMAIN: u32 = 1;
        pub const VERSION: u32 = 2;
    }
    pub mod graph {
        pub const NODE: u32 = 1;
        pub const NAME: u32 = 2;
        pub const INITIALIZER: u32 = 5;
        pub const INPUT: u32 = 11;
        pub const OUTPUT: u32 = 12;
    }
    pub mod node {
        pub const INPUT: u32 = 1;
        pub const OUTPUT: u32 = 2;
        pub const NAME: u32 = 3;
        pub const OP_TYPE: u32 = 4;
        pub const ATTRIBUTE: u32 = 5;
    }
    pub mod attribute {
        pub const NAME: u32 = 1;
        pub const G: u32 = 6;
        pub const TYPE: u32 = 20;
        /// `AttributeProto.AttributeType.GRAPH`.
        pub const TYPE_GRAPH: u64 = 5;
    }
    pub mod tensor {
        pub const DIMS: u32 = 1;
        pub const DATA_TYPE: u32 = 2;
        pub const FLOAT_DATA: u32 = 4;
        pub const NAME: u32 = 8;
        pub const RAW_DATA: u32 = 9;
        /// `TensorProto.DataType.FLOAT`.
        pub const FLOAT: u64 = 1;
    }
    pub mod value_info {
        pub const NAME: u32 = 1;
        pub const TYPE: u32 = 2;
    }
    pub mod type_proto {
        pub const TENSOR_TYPE: u32 = 1;
        pub const ELEM_TYPE: u32 = 1;
        pub const SHAPE: u32 = 2;
        pub const DIM: u32 = 1;
        pub const DIM_VALUE: u32 = 1;
    }
}

fn varint(mut value: u64) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(10);
    while value >= 0x80 {
        bytes.push(0x80 | (value & 0x7f) as u8);
        value >>= 7;
    }
    bytes.push(value as u8);
    bytes
}

/// A protobuf message under construction: fields are appended in call order, and nothing is
/// checked, so faults can be written on purpose.
#[derive(Debug, Clone, Default)]
struct Message(Vec<u8>);

impl Message {
    fn new() -> Message {
        Message::default()
    }

    fn key(self, field: u32, wire_type: u8) -> Message {
        self.raw(&varint(u64::from(field) << 3 | u64::from(wire_type)))
    }

    /// Appends `bytes` as they are: a fault, or fields encoded elsewhere.
    fn raw(mut self, bytes: &[u8]) -> Message {
        self.0.extend_from_slice(bytes);
        self
    }

    fn uint(self, field: u32, value: u64) -> Message {
        self.key(field, VARINT).raw(&varint(value))
    }

    /// An `int64`: negative values take ten bytes of two's complement, as protobuf writes them.
    fn int(self, field: u32, value: i64) -> Message {
        self.uint(field, u64::from_le_bytes(value.to_le_bytes()))
    }

    fn bytes(self, field: u32, value: &[u8]) -> Message {
        let len = u64::try_from(value.len()).expect("a test message fits a u64");
        self.key(field, LEN).raw(&varint(len)).raw(value)
    }

    fn string(self, field: u32, value: &str) -> Message {
        self.bytes(field, value.as_bytes())
    }

    fn message(self, field: u32, value: &Message) -> Message {
        self.bytes(field, &value.0)
    }

    /// A packed `repeated float`.
    fn floats(self, field: u32, values: &[f32]) -> Message {
        self.bytes(field, &f32_bytes(values))
    }
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

// ONNX messages, built with the encoder.

/// A `ModelProto` with IR version 8 and the default domain at opset 13.
fn model(graph: &Message) -> Vec<u8> {
    model_without_opset(graph)
        .message(field::model::OPSET_IMPORT, &opset(13))
        .0
}

fn model_without_opset(graph: &Message) -> Message {
    Message::new()
        .uint(field::model::IR_VERSION, 8)
        .string(field::model::PRODUCER_NAME, "edge-ai/tests/ops.rs")
        .message(field::model::GRAPH, graph)
}

fn opset(version: u64) -> Message {
    Message::new()
        .string(field::opset::DOMAIN, "")
        .uint(field::opset::VERSION, version)
}

/// A graph with the baseline's input `x` [1, 4] and output `y` [1, 4] around `nodes`.
fn graph(nodes: &[Message], initializers: &[Message]) -> Message {
    let mut graph = Message::new();
    for node in nodes {
        graph = graph.message(field::graph::NODE, node);
    }
    graph = graph.string(field::graph::NAME, "hostile");
    for tensor in initializers {
        graph = graph.message(field::graph::INITIALIZER, tensor);
    }
    graph
        .message(field::graph::INPUT, &value_info("x", &[1, 4]))
        .message(field::graph::OUTPUT, &value_info("y", &[1, 4]))
}

fn node(op_type: &str, inputs: &[&str], outputs: &[&str]) -> Message {
    let mut node = Message::new();
    for input in inputs {
        node = node.string(field::node::INPUT, input);
    }
    for output in outputs {
        node = node.string(field::node::OUTPUT, output);
    }
    node.string(
        field::node::NAME,
        &format!("{op_type}_{}", outputs.join("_")),
    )
    .string(field::node::OP_TYPE, op_type)
}

/// A float32 `ValueInfoProto` of fixed shape `dims`.
fn value_info(name: &str, dims: &[u64]) -> Message {
    use field::type_proto::*;
    let mut shape = Message::new();
    for &dim in dims {
        shape = shape.message(DIM, &Message::new().uint(DIM_VALUE, dim));
    }
    let tensor_type = Message::new()
        .uint(ELEM_TYPE, field::tensor::FLOAT)
        .message(SHAPE, &shape);
    Message::new()
        .string(field::value_info::NAME, name)
        .message(
            field::value_info::TYPE,
            &Message::new().message(TENSOR_TYPE, &tensor_type),
        )
}

/// A float `TensorProto` header: name, type and dims (unpacked, as onnx writes them), no data.
fn tensor_header(name: &str, dims: &[i64]) -> Message {
    let mut tensor = Message::new();
    for &dim in dims {
        tensor = tensor.int(field::tensor::DIMS, dim);
    }
    tensor
        .uint(field::tensor::DATA_TYPE, field::tensor::FLOAT)
        .string(field::tensor::NAME, name)
}

fn raw_tensor(name: &str, dims: &[i64], raw: &[u8]) -> Message {
    tensor_header(name, dims).bytes(field::tensor::RAW_DATA, raw)
}

/// `y = Relu(x + w)`.
fn baseline_nodes() -> Vec<Message> {
    vec![
        node("Add", &["x", "w"], &["h"]),
        node("Relu", &["h"], &["y"]),
    ]
}

/// `w`, shape [4], stored as `float_data`.
fn baseline_weights() -> Message {
    tensor_header("w", &[4]).floats(field::tensor::FLOAT_DATA, &[0.5, -0.5, 0.5, -0.5])
}

fn baseline() -> Vec<u8> {
    model(&graph(&baseline_nodes(), &[baseline_weights()]))
}

/// The baseline with `w` replaced by `tensor`.
fn with_weights(tensor: &Message) -> Vec<u8> {
    model(&graph(&baseline_nodes(), std::slice::from_ref(tensor)))
}

// ---------------------------------------------------------------------------------------------
// Supported operators.

#[test]
fn every_supported_operator_matches_the_onnx_reference() {
    let model = load("ops.onnx").expect("ops.onnx loads");
    assert_eq!((model.input_len(), model.output_len()), (6, 4));
    assert_matches_reference("ops.onnx", "ops.expected.json");
}

#[test]
fn opset_11_softmax_without_axis_and_gemm_without_c_match_the_onnx_reference() {
    let model = load("ops.opset11.onnx").expect("ops.opset11.onnx loads");
    assert_eq!((model.input_len(), model.output_len()), (4, 3));
    assert_matches_reference("ops.opset11.onnx", "ops.opset11.expected.json");
}

#[test]
fn wrong_input_length_for_the_ops_model_is_an_input_shape_error() {
    let model = load("ops.onnx").expect("ops.onnx loads");
    assert!(matches!(
        model.run(&[1.0; 8]),
        Err(ModelError::InputShape {
            expected: 6,
            got: 8
        })
    ));
}

// ---------------------------------------------------------------------------------------------
// Valid ONNX that edge-ai does not support.

#[test]
fn unsupported_operator_is_invalid_naming_it() {
    match load("unsupported-conv.onnx") {
        Err(ModelError::Invalid(message)) => assert!(message.contains("Conv"), "{message}"),
        other => panic!("a Conv node: expected Invalid, got {other:?}"),
    }
}

#[test]
fn external_tensor_data_is_invalid_even_with_the_file_beside_the_model() {
    let assert_refused = |path: &Path| match Model::load(path) {
        Err(ModelError::Invalid(message)) => {
            assert!(message.to_lowercase().contains("external"), "{message}");
        }
        other => panic!("{}: expected Invalid, got {other:?}", path.display()),
    };
    assert_refused(&models_dir().join("external-data.onnx"));

    // edge-ai reads only the model file: the weights the model points at are not followed.
    let dir = TempDir::new("external-data");
    let model = std::fs::read(models_dir().join("external-data.onnx"))
        .expect("external-data.onnx ships with the crate");
    std::fs::write(dir.0.join("external-data.onnx"), model).expect("temp dir is writable");
    std::fs::write(dir.0.join("weights.bin"), f32_bytes(&[1.0; 8])).expect("temp dir is writable");
    assert_refused(&dir.0.join("external-data.onnx"));
}

// ---------------------------------------------------------------------------------------------
// Hostile protobuf: each must be Invalid, and must not panic, hang or allocate what it claims.

/// The fault-free model the hostile ones are built from, so they fail for their fault alone.
#[test]
fn hand_encoded_baseline_model_loads_and_runs() {
    let model = Model::from_bytes(&baseline()).expect("the baseline is a valid model");
    assert_eq!((model.input_len(), model.output_len()), (4, 4));
    assert_eq!(
        model.run(&[1.0, 1.0, -1.0, -1.0]).expect("runs"),
        [1.5, 0.5, 0.0, 0.0]
    );

    let raw = raw_tensor("w", &[4], &f32_bytes(&[0.5, -0.5, 0.5, -0.5]));
    let model = Model::from_bytes(&with_weights(&raw)).expect("raw_data weights are valid");
    assert_eq!(
        model.run(&[1.0, 1.0, -1.0, -1.0]).expect("runs"),
        [1.5, 0.5, 0.0, 0.0]
    );
}

#[test]
fn length_prefix_beyond_the_buffer_is_invalid() {
    for claimed in [1_000, 1 << 40, u64::MAX] {
        let mut bytes = baseline();
        bytes.extend(
            Message::new()
                .key(field::model::GRAPH, LEN)
                .raw(&varint(claimed))
                .raw(&[0; 8])
                .0,
        );
        assert_invalid(&bytes, &format!("a graph claiming {claimed} bytes"));
    }

    // A node longer than the graph holding it, though not than the file: the node would run on
    // into the model's next field.
    let bytes = Message::new()
        .uint(field::model::IR_VERSION, 8)
        .message(field::model::OPSET_IMPORT, &opset(13))
        .key(field::model::GRAPH, LEN)
        .raw(&varint(4))
        .key(field::graph::NODE, LEN)
        .raw(&varint(60))
        .raw(&[0, 0])
        .string(field::model::PRODUCER_NAME, &"a".repeat(100))
        .0;
    assert_invalid(&bytes, "a node longer than its graph");
}

#[test]
fn overlong_or_truncated_varint_is_invalid() {
    // Eleven bytes: a varint is at most ten.
    let mut overlong = vec![0x80; 10];
    overlong.push(0x01);

    let bytes = [
        Message::new()
            .key(field::model::IR_VERSION, VARINT)
            .raw(&overlong)
            .0,
        baseline(),
    ]
    .concat();
    assert_invalid(&bytes, "an 11-byte ir_version");

    let bytes = [
        baseline(),
        Message::new()
            .key(field::model::GRAPH, LEN)
            .raw(&overlong)
            .0,
    ]
    .concat();
    assert_invalid(&bytes, "an 11-byte length");

    let bytes = [
        baseline(),
        Message::new()
            .key(field::model::IR_VERSION, VARINT)
            .raw(&[0x80])
            .0,
    ]
    .concat();
    assert_invalid(&bytes, "a varint cut off by the end of the file");
}

#[test]
fn group_and_reserved_wire_types_are_invalid() {
    let graph = graph(&baseline_nodes(), &[baseline_weights()]);
    let header = Message::new()
        .uint(field::model::IR_VERSION, 8)
        .message(field::model::OPSET_IMPORT, &opset(13));

    // The only graph, written as a group (wire type 3) instead of a length-delimited field.
    let bytes = header
        .clone()
        .key(field::model::GRAPH, START_GROUP)
        .raw(&graph.0)
        .key(field::model::GRAPH, END_GROUP)
        .0;
    assert_invalid(&bytes, "the graph as a group");

    // The only graph, written as a varint.
    let bytes = header.key(field::model::GRAPH, VARINT).raw(&varint(1)).0;
    assert_invalid(&bytes, "the graph as a varint");

    // An unknown field opening a group that never ends.
    let bytes = [baseline(), Message::new().key(15, START_GROUP).0].concat();
    assert_invalid(&bytes, "an unterminated group");

    // Wire types 6 and 7 do not exist.
    for wire_type in [6, 7] {
        let bytes = [baseline(), Message::new().key(15, wire_type).raw(&[0; 8]).0].concat();
        assert_invalid(&bytes, &format!("wire type {wire_type}"));
    }
}

/// `If` nodes whose `then_branch` holds an `If` node, `depth` levels deep: the content of a
/// `GraphProto`. Encoded inside out, each level's header kept apart, so it takes linear time.
fn nested_if_graphs(depth: usize) -> Message {
    use field::{attribute, graph, node};
    let mut headers = Vec::with_capacity(depth);
    let length = |len: usize| varint(u64::try_from(len).expect("a test message fits a u64"));
    let mut inner_len = 0;
    for _ in 0..depth {
        let attribute_head = Message::new()
            .string(attribute::NAME, "then_branch")
            .uint(attribute::TYPE, attribute::TYPE_GRAPH)
            .key(attribute::G, LEN)
            .raw(&length(inner_len));
        let attribute_len = attribute_head.0.len() + inner_len;
        let node_head = Message::new()
            .string(node::INPUT, "x")
            .string(node::OUTPUT, "y")
            .string(node::OP_TYPE, "If")
            .key(node::ATTRIBUTE, LEN)
            .raw(&length(attribute_len));
        let node_len = node_head.0.len() + attribute_len;
        let graph_head = Message::new().key(graph::NODE, LEN).raw(&length(node_len));
        inner_len = graph_head.0.len() + node_len;
        headers.push([graph_head.0, node_head.0, attribute_head.0].concat());
    }
    headers.reverse();
    Message(headers.concat())
}

#[test]
fn deeply_nested_subgraphs_are_invalid_without_overflowing_the_stack() {
    // About 3.6 MB, under the size limit: a decoder that recursed per level would need
    // hundreds of thousands of stack frames.
    let nested = nested_if_graphs(100_000);
    let graph = nested
        .message(field::graph::INPUT, &value_info("x", &[1, 4]))
        .message(field::graph::OUTPUT, &value_info("y", &[1, 4]));
    assert_invalid(&model(&graph), "100,000 nested If subgraphs");
}

#[test]
fn tensor_claiming_more_elements_than_its_data_is_invalid() {
    // 2^40 floats (4 TiB) claimed, 4 bytes present.
    let tensor = raw_tensor("w", &[1 << 20, 1 << 20], &[0; 4]);
    assert_invalid(
        &with_weights(&tensor),
        "2^40 elements in raw_data of 4 bytes",
    );

    let tensor = tensor_header("w", &[1 << 40]).floats(field::tensor::FLOAT_DATA, &[1.0]);
    assert_invalid(&with_weights(&tensor), "2^40 elements in float_data of 1");

    // One element short, in each storage.
    let tensor = raw_tensor("w", &[4], &f32_bytes(&[1.0; 3]));
    assert_invalid(&with_weights(&tensor), "4 elements in raw_data of 3");
    let tensor = tensor_header("w", &[4]).floats(field::tensor::FLOAT_DATA, &[1.0; 3]);
    assert_invalid(&with_weights(&tensor), "4 elements in float_data of 3");
}

#[test]
fn tensor_with_a_negative_dimension_is_invalid() {
    let data = f32_bytes(&[1.0; 4]);
    assert_invalid(&with_weights(&raw_tensor("w", &[-4], &data)), "dims [-4]");
    // The product, 4, matches the data: only the signs are wrong.
    assert_invalid(
        &with_weights(&raw_tensor("w", &[-2, -2], &data)),
        "dims [-2, -2]",
    );
}

#[test]
fn tensor_dimensions_whose_product_overflows_are_invalid() {
    // Each product wraps around 2^64 to exactly the number of elements present, so only an
    // overflow check tells them from a valid tensor.
    assert_invalid(
        &with_weights(&raw_tensor("w", &[1 << 32, 1 << 32, 1 << 32], &[])),
        "dims [2^32, 2^32, 2^32] (2^96, wraps to 0) with no data",
    );
    assert_invalid(
        &with_weights(&raw_tensor("w", &[(1 << 62) + 1, 4], &f32_bytes(&[1.0; 4]))),
        "dims [2^62 + 1, 4] (wraps to 4) with 4 elements",
    );
    assert_invalid(
        &with_weights(&raw_tensor("w", &[i64::MAX, i64::MAX], &[0; 4])),
        "dims [i64::MAX, i64::MAX]",
    );
}

#[test]
fn node_reading_an_undefined_value_is_invalid() {
    let nodes = [
        node("Add", &["x", "ghost"], &["h"]),
        node("Relu", &["h"], &["y"]),
    ];
    assert_invalid(
        &model(&graph(&nodes, &[baseline_weights()])),
        "a node reading \"ghost\"",
    );
}

#[test]
fn value_defined_twice_is_invalid() {
    let nodes = [
        node("Add", &["x", "w"], &["h"]),
        node("Sigmoid", &["x"], &["h"]),
        node("Relu", &["h"], &["y"]),
    ];
    assert_invalid(
        &model(&graph(&nodes, &[baseline_weights()])),
        "two nodes writing \"h\"",
    );

    let nodes = [
        node("Relu", &["x"], &["w"]),
        node("Add", &["x", "w"], &["y"]),
    ];
    assert_invalid(
        &model(&graph(&nodes, &[baseline_weights()])),
        "a node writing the initializer \"w\"",
    );
}

fn identity_chain(len: usize) -> Vec<u8> {
    let names: Vec<String> = (0..=len)
        .map(|i| match i {
            0 => "x".to_owned(),
            i if i == len => "y".to_owned(),
            i => format!("v{i}"),
        })
        .collect();
    let nodes: Vec<Message> = names
        .windows(2)
        .map(|pair| node("Identity", &[&pair[0]], &[&pair[1]]))
        .collect();
    model(&graph(&nodes, &[]))
}

/// A file of a few megabytes can describe more nodes than a node should ever decode or
/// optimise: both the decoder's item cap and the node cap refuse such graphs by name.
#[test]
fn graphs_with_too_many_nodes_are_refused() {
    let message = assert_invalid(&identity_chain(100_000), "100,000 nodes");
    assert!(message.contains("more than 100000"), "{message}");
    let message = assert_invalid(&identity_chain(1025), "1025 nodes");
    assert!(message.contains("at most 1024"), "{message}");

    let model = Model::from_bytes(&identity_chain(1024)).expect("1024 nodes are allowed");
    let input = [1.0, -2.0, 3.0, -4.0];
    assert_eq!(model.run(&input).expect("runs"), input);
}

#[test]
fn model_without_opset_import_is_invalid() {
    let graph = graph(&baseline_nodes(), &[baseline_weights()]);
    assert_invalid(&model_without_opset(&graph).0, "no opset_import");
}
