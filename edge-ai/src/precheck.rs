//! Checks on a decoded ONNX proto, run before tract translates it into a graph.
//!
//! tract's ONNX translation trusts some parts of the file and panics on them instead of returning
//! an error; with `panic = "abort"` in release builds that would take the node down. Each check
//! here refuses one such case, found by mutating the shipped model, and has a regression test in
//! `tests/tiny_mlp.rs`. This is not a full ONNX validator: whatever tract itself rejects cleanly
//! is left to tract.

use std::collections::HashSet;

use tract_onnx::pb::tensor_proto::DataType;
use tract_onnx::pb::{GraphProto, ModelProto, TensorProto};

/// Returns why `proto` must not be handed to tract, if it must not.
pub(crate) fn refusal(proto: &ModelProto) -> Option<String> {
    // Protobuf has no end marker, so a file cut at a field boundary still decodes. The operator
    // set comes last in files written by the `onnx` package, and without it tract would guess
    // the operators' semantics. ONNX requires it, so require it here.
    let declares_onnx_opset = proto.opset_import.iter().any(|import| {
        (import.domain.is_empty() || import.domain == "ai.onnx") && import.version > 0
    });
    if !declares_onnx_opset {
        return Some("the model declares no ONNX operator set version (opset_import)".to_owned());
    }
    let graph = proto.graph.as_ref()?;
    graph_refusal(graph)
}

/// Checks `graph` and, through node attributes, its subgraphs. Recursion is bounded by prost's
/// decoding depth limit.
fn graph_refusal(graph: &GraphProto) -> Option<String> {
    // tract looks each graph output up by name among the values it has wired, with an index
    // that panics on a name nothing defines.
    let defined: HashSet<&str> = graph
        .input
        .iter()
        .map(|input| input.name.as_str())
        .chain(graph.initializer.iter().map(|tensor| tensor.name.as_str()))
        .chain(
            graph
                .node
                .iter()
                .flat_map(|node| node.output.iter().map(String::as_str)),
        )
        .collect();
    if let Some(output) = graph
        .output
        .iter()
        .find(|output| !defined.contains(output.name.as_str()))
    {
        return Some(format!(
            "graph {:?} has output {:?}, which no input, initializer or node defines",
            graph.name, output.name
        ));
    }

    let attributes = graph.node.iter().flat_map(|node| &node.attribute);
    let tensors = graph.initializer.iter().chain(
        attributes
            .clone()
            .flat_map(|attribute| attribute.t.iter().chain(&attribute.tensors)),
    );
    if let Some(refusal) = tensors.filter_map(tensor_refusal).next() {
        return Some(refusal);
    }
    attributes
        .flat_map(|attribute| attribute.g.iter().chain(&attribute.graphs))
        .find_map(graph_refusal)
}

fn tensor_refusal(tensor: &TensorProto) -> Option<String> {
    // tract reads raw bytes for fixed-size types only, and panics on a string tensor given
    // as raw bytes (ONNX stores strings in `string_data`).
    (tensor.data_type == DataType::String as i32 && !tensor.raw_data.is_empty()).then(|| {
        format!(
            "tensor {:?} holds strings as raw bytes, which ONNX does not allow",
            tensor.name
        )
    })
}
