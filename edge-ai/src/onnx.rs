//! Translation of a decoded ONNX graph into a tract-core graph.
//!
//! edge-ai runs the operators small dense models are made of ([`OPERATORS`]) and refuses any
//! other by name. Every node is checked as it is wired: an input that nothing defines, an output
//! defined twice, a wrong attribute or shapes that do not fit are errors naming the node, never
//! panics. Nodes must come in graph order (ONNX requires it), so a cycle cannot be expressed.

use std::collections::HashMap;
use std::fmt;

use tract_core::internal::*;
use tract_core::ops::change_axes::{wire_rank_broadcast, wire_with_rank_broadcast};
use tract_core::ops::einsum::EinSum;
use tract_core::ops::nn::{Softmax, SoftmaxKind};

use crate::proto::{self, Dim, FLOAT};

/// The operators edge-ai runs, from the default ONNX domain. Nodes report them, so that the
/// orchestrator sends a model only to nodes whose reader runs every operator it uses.
pub const OPERATORS: [&str; 12] = [
    "Gemm", "MatMul", "Add", "Sub", "Mul", "Div", "Relu", "Sigmoid", "Tanh", "Softmax", "Identity",
    "Constant",
];

/// The oldest ONNX operator set whose semantics for [`OPERATORS`] this translation follows.
const MIN_OPSET: i64 = 7;

/// The most nodes a model may have. Routing and placement models have tens; the cap bounds the
/// work a file can ask of the optimiser.
pub(crate) const MAX_NODES: usize = 1024;

/// A graph input or output as edge-ai runs it: `f32` of shape `[batch, width]`.
pub(crate) struct TranslatedPort {
    pub(crate) name: String,
    pub(crate) width: usize,
}

/// The tract graph for a model, with its ports in the order the file lists them.
pub(crate) struct Translated {
    pub(crate) model: TypedModel,
    pub(crate) inputs: Vec<TranslatedPort>,
    pub(crate) outputs: Vec<TranslatedPort>,
    /// The symbol standing for the number of rows when every input declares a symbolic batch
    /// dimension; `None` when every input declares `1`, so the graph runs one row at a time.
    pub(crate) batch: Option<Symbol>,
    /// The ONNX operator set the graph's operators follow.
    pub(crate) opset: i64,
}

/// The most inputs, and the most outputs, a model may have. Routing models have a few; the
/// cap keeps messages and per-port buffers small.
pub(crate) const MAX_PORTS: usize = 64;

/// Builds the tract graph for `proto`.
pub(crate) fn translate(proto: &proto::Model) -> Result<Translated, String> {
    // Protobuf has no end marker, so a file cut at a field boundary still decodes. The operator
    // set comes last in files written by the `onnx` package, and the operators' meaning depends
    // on it, so it is required.
    let opset = proto
        .opsets
        .iter()
        .filter(|(domain, _)| domain.is_empty() || domain == "ai.onnx")
        .map(|(_, version)| *version)
        .max()
        .filter(|version| *version > 0)
        .ok_or("the model declares no ONNX operator set version (opset_import)")?;
    if opset < MIN_OPSET {
        return Err(format!(
            "the model uses ONNX operator set {opset}; edge-ai runs {MIN_OPSET} and later"
        ));
    }
    let graph = proto.graph.as_ref().ok_or("the model has no graph")?;
    if graph.nodes.len() > MAX_NODES {
        return Err(format!(
            "the model has {} nodes; edge-ai runs models of at most {MAX_NODES}",
            graph.nodes.len()
        ));
    }

    let mut builder = Builder {
        model: TypedModel::default(),
        values: HashMap::new(),
        opset,
    };
    for tensor in &graph.initializers {
        let value = float_tensor(tensor, &format!("initializer {:?}", tensor.name))?;
        let outlet = builder
            .model
            .add_const(format!("init.{}", tensor.name), value)
            .map_err(|error| format!("initializer {:?}: {error:#}", tensor.name))?;
        builder.define(&tensor.name, outlet)?;
    }

    // Since IR version 4, initializers need not be listed as inputs; when they are, they are
    // constants, not something the caller feeds.
    let inputs: Vec<&proto::ValueInfo> = graph
        .inputs
        .iter()
        .filter(|input| !builder.values.contains_key(&input.name))
        .collect();
    if inputs.is_empty() || graph.outputs.is_empty() {
        return Err(format!(
            "expected at least 1 input and 1 output, the model has {} and {}",
            inputs.len(),
            graph.outputs.len()
        ));
    }
    if inputs.len() > MAX_PORTS || graph.outputs.len() > MAX_PORTS {
        return Err(format!(
            "the model has {} inputs and {} outputs; edge-ai runs at most {MAX_PORTS} of each",
            inputs.len(),
            graph.outputs.len()
        ));
    }
    let declared: Vec<(BatchDim, usize)> = inputs
        .iter()
        .map(|input| input_shape(input))
        .collect::<Result<_, _>>()?;
    // Rows of different inputs are rows of the same candidates, so either every input is
    // batched or none is.
    let batched = declared
        .iter()
        .filter(|(batch, _)| *batch == BatchDim::Symbolic)
        .count();
    if batched != 0 && batched != declared.len() {
        return Err(format!(
            "{batched} of the model's {} inputs have a symbolic batch dimension and the others \
             1; edge-ai needs all of them one way or the other",
            declared.len()
        ));
    }
    let batch = (batched != 0).then(|| builder.model.symbols.sym("batch"));
    let rows = batch
        .clone()
        .map_or_else(|| 1.to_dim(), |batch| batch.to_dim());
    let mut input_ports = Vec::with_capacity(inputs.len());
    for (input, (_, width)) in inputs.iter().zip(declared) {
        let source = builder
            .model
            .add_source(
                format!("input.{}", input.name),
                f32::fact([rows.clone(), width.to_dim()]),
            )
            .map_err(|error| format!("input {:?}: {error:#}", input.name))?;
        builder.define(&input.name, source)?;
        input_ports.push(TranslatedPort {
            name: input.name.clone(),
            width,
        });
    }

    for (index, node) in graph.nodes.iter().enumerate() {
        builder.node(index, node)?;
    }

    let mut outlets = Vec::with_capacity(graph.outputs.len());
    let mut output_ports: Vec<TranslatedPort> = Vec::with_capacity(graph.outputs.len());
    for output in &graph.outputs {
        if let Some(elem_type) = output.elem_type
            && elem_type != FLOAT
        {
            return Err(format!(
                "output {:?} must be f32, the model's is {}",
                output.name,
                proto::data_type_name(elem_type)
            ));
        }
        if output_ports.iter().any(|port| port.name == output.name) {
            return Err(format!("the graph lists output {:?} twice", output.name));
        }
        let outlet = *builder.values.get(&output.name).ok_or_else(|| {
            format!(
                "the graph output {:?} is a value no input, initializer or node defines",
                output.name
            )
        })?;
        let fact = builder
            .model
            .outlet_fact(outlet)
            .map_err(|error| format!("output {:?}: {error:#}", output.name))?;
        let width = output_width(&output.name, fact, &rows)?;
        outlets.push(outlet);
        output_ports.push(TranslatedPort {
            name: output.name.clone(),
            width,
        });
    }
    builder
        .model
        .select_output_outlets(&outlets)
        .map_err(|error| format!("{error:#}"))?;
    Ok(Translated {
        model: builder.model,
        inputs: input_ports,
        outputs: output_ports,
        batch,
        opset,
    })
}

/// How an input declares its first (batch) dimension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BatchDim {
    /// `1`: the graph runs one row.
    One,
    /// A name or nothing: the graph runs any number of rows.
    Symbolic,
}

/// Checks that `input` is `f32` of shape `[1, N]` or `[batch, N]`, and returns how it declares
/// its batch dimension and `N`.
fn input_shape(input: &proto::ValueInfo) -> Result<(BatchDim, usize), String> {
    if let Some(elem_type) = input.elem_type
        && elem_type != FLOAT
    {
        return Err(format!(
            "input {:?} must be f32, the model's is {}",
            input.name,
            proto::data_type_name(elem_type)
        ));
    }
    let shape_error = || {
        let shape = input.shape.as_ref().map_or_else(
            || "undeclared".to_owned(),
            |dims| {
                let dims: Vec<String> = dims.iter().map(Dim::to_string).collect();
                format!("[{}]", dims.join(", "))
            },
        );
        format!(
            "input {:?} must have shape [1, N] or [batch, N] (export batches with a symbolic \
             batch dimension), the model's is {shape}",
            input.name
        )
    };
    let [batch, len] = input.shape.as_deref().ok_or_else(shape_error)? else {
        return Err(shape_error());
    };
    // A numeric batch dimension other than 1 means the model was exported for batches of
    // exactly that size, which edge-ai does not run: export it with a symbolic one (the
    // message says so).
    let batch = match batch {
        Dim::Value(1) => BatchDim::One,
        Dim::Value(_) => return Err(shape_error()),
        Dim::Param(_) | Dim::Unknown => BatchDim::Symbolic,
    };
    match len {
        Dim::Value(len) if *len > 0 => match usize::try_from(*len) {
            Ok(len) if len <= crate::MAX_PORT_WIDTH => Ok((batch, len)),
            _ => Err(too_wide("input", &input.name, *len)),
        },
        _ => Err(shape_error()),
    }
}

fn too_wide(direction: &str, name: &str, width: impl fmt::Display) -> String {
    format!(
        "{direction} {name:?} is {width} values wide; edge-ai runs ports of at most {}",
        crate::MAX_PORT_WIDTH
    )
}

/// Checks that an output's computed shape is `[rows, width]` and returns the width.
fn output_width(name: &str, fact: &TypedFact, rows: &TDim) -> Result<usize, String> {
    let shape_error = || {
        format!(
            "output {name:?} has shape {:?}; edge-ai runs outputs of shape [{rows}, width], one \
             row per input row",
            fact.shape
        )
    };
    let [batch, width] = fact.shape.dims() else {
        return Err(shape_error());
    };
    if batch != rows {
        return Err(shape_error());
    }
    match width.to_usize() {
        Ok(width) if width > crate::MAX_PORT_WIDTH => Err(too_wide("output", name, width)),
        Ok(width) if width > 0 => Ok(width),
        _ => Err(shape_error()),
    }
}

/// Converts a float `TensorProto` into a tract tensor, checking its size against its data.
pub(crate) fn float_tensor(tensor: &proto::TensorProto, what: &str) -> Result<Tensor, String> {
    if tensor.data_type != FLOAT {
        return Err(format!(
            "{what} holds {} values; edge-ai runs float (f32) tensors only",
            proto::data_type_name(tensor.data_type)
        ));
    }
    let mut shape = Vec::with_capacity(tensor.dims.len());
    let mut len = 1usize;
    for &dim in &tensor.dims {
        let dim =
            usize::try_from(dim).map_err(|_| format!("{what} has a negative dimension ({dim})"))?;
        len = len
            .checked_mul(dim)
            .filter(|len| *len <= usize::try_from(crate::MAX_MODEL_BYTES).unwrap_or(usize::MAX))
            .ok_or_else(|| format!("{what} declares more elements than any model file holds"))?;
        shape.push(dim);
    }
    let decoded: Vec<f32>;
    let values: &[f32] = match &tensor.raw_data {
        Some(raw) => {
            if tensor.has_other_data || !tensor.float_data.is_empty() {
                return Err(format!("{what} has both raw_data and typed data"));
            }
            if raw.len() != len * 4 {
                return Err(format!(
                    "{what} has shape {shape:?} ({len} floats) but {} bytes of raw_data",
                    raw.len()
                ));
            }
            decoded = raw
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            &decoded
        }
        None => {
            if tensor.has_other_data {
                return Err(format!(
                    "{what} keeps its floats in a field other than float_data"
                ));
            }
            if tensor.float_data.len() != len {
                return Err(format!(
                    "{what} has shape {shape:?} ({len} floats) but {} values",
                    tensor.float_data.len()
                ));
            }
            &tensor.float_data
        }
    };
    Tensor::from_shape(&shape, values).map_err(|error| format!("{what}: {error:#}"))
}

struct Builder {
    model: TypedModel,
    /// ONNX value name to the tract outlet that computes it.
    values: HashMap<String, OutletId>,
    opset: i64,
}

impl Builder {
    fn define(&mut self, name: &str, outlet: OutletId) -> Result<(), String> {
        if name.is_empty() {
            return Err("a value has an empty name".to_owned());
        }
        if self.values.insert(name.to_owned(), outlet).is_some() {
            return Err(format!("value {name:?} is defined twice"));
        }
        Ok(())
    }

    fn node(&mut self, index: usize, node: &proto::Node) -> Result<(), String> {
        let label = if node.name.is_empty() {
            format!("node {index} ({})", node.op_type)
        } else {
            format!("node {:?} ({})", node.name, node.op_type)
        };
        if !(node.domain.is_empty() || node.domain == "ai.onnx") {
            return Err(format!(
                "{label} is from operator domain {:?}; edge-ai runs the default ONNX domain",
                node.domain
            ));
        }
        let outputs: Vec<&String> = node
            .outputs
            .iter()
            .filter(|name| !name.is_empty())
            .collect();
        let [output] = outputs[..] else {
            return Err(format!(
                "{label} has {} outputs; edge-ai runs operators with one",
                outputs.len()
            ));
        };
        let mut inputs = Vec::with_capacity(node.inputs.len());
        for name in &node.inputs {
            // An empty name stands for an optional input left out.
            if name.is_empty() {
                inputs.push(None);
                continue;
            }
            let outlet = self.values.get(name).ok_or_else(|| {
                format!(
                    "{label} uses {name:?}, which no input, initializer or earlier node defines"
                )
            })?;
            inputs.push(Some(*outlet));
        }
        let prefix = format!("{index}.{}", node.op_type);
        let outlet = self
            .wire(&prefix, node, &inputs)
            .map_err(|error| format!("{label}: {error:#}"))?;
        self.define(output, outlet)
    }

    fn wire(
        &mut self,
        name: &str,
        node: &proto::Node,
        inputs: &[Option<OutletId>],
    ) -> TractResult<OutletId> {
        let input = |index: usize| -> TractResult<OutletId> {
            inputs
                .get(index)
                .copied()
                .flatten()
                .ok_or_else(|| format_err!("input {index} is missing"))
        };
        let arity = |expected: usize| -> TractResult<()> {
            ensure!(
                inputs.len() == expected,
                "takes {expected} inputs, the node has {}",
                inputs.len()
            );
            Ok(())
        };
        let model = &mut self.model;
        let outlet = match node.op_type.as_str() {
            "Identity" => {
                arity(1)?;
                input(0)?
            }
            "Constant" => {
                arity(0)?;
                let value = constant_value(node)?;
                model.add_const(name, value)?
            }
            "Add" | "Sub" | "Mul" | "Div" => {
                arity(2)?;
                let op = match node.op_type.as_str() {
                    "Add" => tract_core::ops::math::add(),
                    "Sub" => tract_core::ops::math::sub(),
                    "Mul" => tract_core::ops::math::mul(),
                    _ => tract_core::ops::math::div(),
                };
                wire_with_rank_broadcast(name, model, op, &[input(0)?, input(1)?])?[0]
            }
            "Relu" => {
                arity(1)?;
                let x = input(0)?;
                let zero = scalar_like(model, &format!("{name}.zero"), 0.0, x)?;
                model.wire_node(name, tract_core::ops::math::max(), &[x, zero])?[0]
            }
            "Sigmoid" => {
                arity(1)?;
                model.wire_node(name, tract_core::ops::nn::sigmoid(), &[input(0)?])?[0]
            }
            "Tanh" => {
                arity(1)?;
                model.wire_node(name, tract_core::ops::math::tanh(), &[input(0)?])?[0]
            }
            "Softmax" => {
                arity(1)?;
                let x = input(0)?;
                let rank = model.outlet_fact(x)?.rank();
                // Opset 13 made the default the last axis; before, inputs were flattened to 2D
                // at `axis` (default 1), which is the same thing when `axis` is the last axis.
                let default_axis = if self.opset >= 13 { -1 } else { 1 };
                let axis = int_attribute(node, "axis")?.unwrap_or(default_axis);
                let axis = normalize_axis(axis, rank)?;
                ensure!(
                    self.opset >= 13 || axis + 1 == rank,
                    "before operator set 13, Softmax over axis {axis} of a rank {rank} input \
                     flattens it; edge-ai runs Softmax over the last axis only"
                );
                let op = Softmax {
                    axes: tvec![axis],
                    quant_output_dt: None,
                    kind: SoftmaxKind::Softmax,
                };
                model.wire_node(name, op, &[x])?[0]
            }
            "MatMul" => {
                arity(2)?;
                let (a, b) = (input(0)?, input(1)?);
                let ranks = (model.outlet_fact(a)?.rank(), model.outlet_fact(b)?.rank());
                ensure!(
                    ranks.0 >= 2 && ranks.1 >= 2,
                    "inputs have ranks {} and {}; edge-ai runs MatMul on ranks 2 and above",
                    ranks.0,
                    ranks.1
                );
                let wires = wire_rank_broadcast(name, model, &[a, b])?;
                let axes =
                    AxesMapping::for_numpy_matmul(ranks.0.max(ranks.1), false, false, false)?;
                model.wire_node(name, EinSum::new(axes, DatumType::F32), &wires)?[0]
            }
            "Gemm" => self.gemm(name, node, inputs)?,
            other => bail!(
                "operator {other} is not supported; edge-ai runs {}",
                OPERATORS.join(", ")
            ),
        };
        Ok(outlet)
    }

    /// `Y = alpha * A' B' + beta * C`, with `A'` and `B'` optionally transposed.
    fn gemm(
        &mut self,
        name: &str,
        node: &proto::Node,
        inputs: &[Option<OutletId>],
    ) -> TractResult<OutletId> {
        ensure!(
            inputs.len() == 2 || inputs.len() == 3,
            "takes 2 or 3 inputs, the node has {}",
            inputs.len()
        );
        let (Some(a), Some(b)) = (inputs[0], inputs[1]) else {
            bail!("inputs A and B are required");
        };
        let c = inputs.get(2).copied().flatten();
        let alpha = float_attribute(node, "alpha")?.unwrap_or(1.0);
        let beta = float_attribute(node, "beta")?.unwrap_or(1.0);
        let trans_a = int_attribute(node, "transA")?.unwrap_or(0) != 0;
        let trans_b = int_attribute(node, "transB")?.unwrap_or(0) != 0;
        let model = &mut self.model;
        for (input, outlet) in [("A", a), ("B", b)] {
            let rank = model.outlet_fact(outlet)?.rank();
            ensure!(
                rank == 2,
                "input {input} has rank {rank}, Gemm takes matrices"
            );
        }

        let axes = AxesMapping::for_numpy_matmul(2, trans_a, trans_b, false)?;
        let mut wire = model.wire_node(
            format!("{name}.ab"),
            EinSum::new(axes, DatumType::F32),
            &[a, b],
        )?[0];
        if alpha != 1.0 {
            wire = scaled(model, &format!("{name}.alpha"), alpha, wire)?;
        }
        if let Some(mut c) = c
            && beta != 0.0
        {
            if beta != 1.0 {
                c = scaled(model, &format!("{name}.beta"), beta, c)?;
            }
            wire =
                wire_with_rank_broadcast(name, model, tract_core::ops::math::add(), &[wire, c])?[0];
        }
        Ok(wire)
    }
}

/// A constant `value` with as many (unit) axes as `like`, so that it broadcasts against it.
fn scalar_like(
    model: &mut TypedModel,
    name: &str,
    value: f32,
    like: OutletId,
) -> TractResult<OutletId> {
    let rank = model.outlet_fact(like)?.rank();
    model.add_const(name, tensor0(value).broadcast_into_rank(rank)?)
}

/// `wire` multiplied by `factor`.
fn scaled(
    model: &mut TypedModel,
    name: &str,
    factor: f32,
    wire: OutletId,
) -> TractResult<OutletId> {
    let factor = scalar_like(model, name, factor, wire)?;
    Ok(model.wire_node(
        format!("{name}.mul"),
        tract_core::ops::math::mul(),
        &[factor, wire],
    )?[0])
}

/// The attribute `name` of `node`, if present, read with `get`; `kind` names what `get` reads,
/// for the error when the attribute holds something else.
fn attribute<T>(
    node: &proto::Node,
    name: &str,
    kind: &str,
    get: impl Fn(&proto::Attribute) -> Option<T>,
) -> TractResult<Option<T>> {
    match node
        .attributes
        .iter()
        .find(|attribute| attribute.name == name)
    {
        None => Ok(None),
        Some(attribute) => match get(attribute) {
            Some(value) => Ok(Some(value)),
            None => bail!("attribute {name} must be {kind}"),
        },
    }
}

pub(crate) fn int_attribute(node: &proto::Node, name: &str) -> TractResult<Option<i64>> {
    attribute(node, name, "an integer", |attribute| attribute.i)
}

pub(crate) fn float_attribute(node: &proto::Node, name: &str) -> TractResult<Option<f32>> {
    attribute(node, name, "a float", |attribute| attribute.f)
}

/// The value of a `Constant` node: a float tensor, or one float or a list of them.
pub(crate) fn constant_value(node: &proto::Node) -> TractResult<Tensor> {
    let [attribute] = &node.attributes[..] else {
        bail!("a Constant takes exactly one attribute");
    };
    match attribute.name.as_str() {
        "value" => {
            let tensor = attribute
                .t
                .as_ref()
                .ok_or_else(|| format_err!("attribute value must be a tensor"))?;
            float_tensor(tensor, "attribute value").map_err(|message| format_err!("{message}"))
        }
        "value_float" => {
            let value = attribute
                .f
                .ok_or_else(|| format_err!("attribute value_float must be a float"))?;
            Ok(tensor0(value))
        }
        "value_floats" => Ok(tensor1(&attribute.floats)),
        other => {
            bail!("a Constant with attribute {other} is not supported; edge-ai runs float ones")
        }
    }
}

/// Turns a possibly negative ONNX axis into an index below `rank`.
fn normalize_axis(axis: i64, rank: usize) -> TractResult<usize> {
    let signed_rank = i64::try_from(rank)?;
    let normalized = if axis < 0 { axis + signed_rank } else { axis };
    ensure!(
        (0..signed_rank).contains(&normalized),
        "axis {axis} is out of range for a rank {rank} input"
    );
    Ok(usize::try_from(normalized)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_count_from_the_end_when_negative() {
        assert_eq!(normalize_axis(-1, 2).expect("accepted"), 1);
        assert_eq!(normalize_axis(0, 2).expect("accepted"), 0);
        assert!(normalize_axis(2, 2).is_err());
        assert!(normalize_axis(-3, 2).is_err());
        assert!(normalize_axis(i64::MIN, 2).is_err());
        assert!(normalize_axis(i64::MAX, 2).is_err());
    }

    fn float_proto(dims: Vec<i64>, floats: Vec<f32>) -> proto::TensorProto {
        proto::TensorProto {
            name: "w".to_owned(),
            dims,
            data_type: FLOAT,
            float_data: floats,
            ..proto::TensorProto::default()
        }
    }

    #[test]
    fn tensor_sizes_must_match_their_data() {
        assert!(float_tensor(&float_proto(vec![2, 2], vec![1.0; 4]), "w").is_ok());
        let short = float_tensor(&float_proto(vec![2, 2], vec![1.0; 3]), "w").expect_err("refused");
        assert!(short.contains("4 floats"), "{short}");
        let negative = float_tensor(&float_proto(vec![-1, 2], vec![]), "w").expect_err("refused");
        assert!(negative.contains("negative"), "{negative}");
        let huge =
            float_tensor(&float_proto(vec![1 << 40, 1 << 40], vec![]), "w").expect_err("refused");
        assert!(huge.contains("more elements"), "{huge}");
        let mut raw = float_proto(vec![2], vec![]);
        raw.raw_data = Some(vec![0; 7]);
        let odd = float_tensor(&raw, "w").expect_err("refused");
        assert!(odd.contains("7 bytes"), "{odd}");
        let mut ints = float_proto(vec![1], vec![]);
        ints.data_type = 7;
        let typed = float_tensor(&ints, "w").expect_err("refused");
        assert!(typed.contains("INT64"), "{typed}");
    }
}
