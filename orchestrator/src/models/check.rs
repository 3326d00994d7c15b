//! What the orchestrator checks before it stores a model and sends it to the nodes.
//!
//! Two readers look at every model. The node's own (`edge_ai`, tract-core behind a small
//! ONNX decoder of its own) must load it, or no node could run it. tract-onnx, tract's full
//! ONNX front end, which only the orchestrator links, loads it independently, runs the
//! model's golden rows (the inputs and outputs its maker recorded in the `edge.golden.*`
//! metadata) and a few rows of its own, and the two readers must agree on every output. A
//! model whose golden rows disagree with either reader, or whose readers disagree with each
//! other, is refused: the node would run something other than what was trained.
//!
//! tract-onnx is fed only bytes the node's reader has already accepted (it has panicked on
//! malformed files in the past); the caller runs [`check`] on a blocking thread and treats a
//! panic as a refusal.

use std::collections::{BTreeMap, BTreeSet};

use tract_onnx::pb;
use tract_onnx::prelude::{
    Datum as _, Framework as _, InferenceFact, InferenceModelExt as _, IntoRunnable as _, Tensor,
    TractError, TypedRunnableModel, tvec,
};

const GOLDEN_INPUT_PREFIX: &str = "edge.golden.input.";
const GOLDEN_OUTPUT_PREFIX: &str = "edge.golden.output.";
const TOLERANCE_KEY: &str = "edge.golden.tolerance";

/// The relative tolerance between two readers, and for golden values the model does not
/// set its own: `|a - b| <= TOLERANCE * max(1, |b|)`.
pub const TOLERANCE: f32 = 1e-4;

/// Rows of our own, beside the golden ones, that both readers must agree on.
const PROBE_ROWS: usize = 8;

/// A model the checks passed: what the API shows of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked {
    /// What it is for, as it declares (`edge.purpose`): `route`, `place`, ...
    pub purpose: Option<String>,
    pub inputs: Vec<Port>,
    pub outputs: Vec<Port>,
    /// The ONNX operators it uses, sorted.
    pub operators: Vec<String>,
    /// How many golden rows it carries and both readers reproduced.
    pub golden_rows: usize,
}

/// One input or output of a model.
#[derive(Debug, Clone, PartialEq)]
pub struct Port {
    pub name: String,
    /// Values per row.
    pub width: usize,
    /// The declared features, `(name, unit)`, when the model declares them.
    pub features: Option<Vec<(String, String)>>,
}

/// Why a model was refused. The message names the part of the model at fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CheckError {
    /// The node's reader refuses it: no node could run it.
    #[error("the nodes' model reader refuses it: {0}")]
    NodeReader(String),
    /// tract-onnx refuses it, or fails to run it.
    #[error("tract-onnx refuses it: {0}")]
    TractOnnx(String),
    /// Its metadata is malformed: a schema whose length is not its port's width, golden rows
    /// of the wrong length or not numbers, golden values for some ports but not others.
    #[error("its metadata is invalid: {0}")]
    Metadata(String),
    /// A golden output differs from what a reader computes.
    #[error(
        "golden row {row} of output {port:?}, value {column}: the model says {expected}, {reader} computes {got}"
    )]
    Golden {
        reader: &'static str,
        port: String,
        row: usize,
        column: usize,
        expected: f32,
        got: f32,
    },
    /// The two readers disagree on an output.
    #[error(
        "the readers disagree on output {port:?}, row {row}, value {column}: tract-onnx {tract}, the nodes' reader {node}"
    )]
    Disagree {
        port: String,
        row: usize,
        column: usize,
        tract: f32,
        node: f32,
    },
}

/// Checks `bytes` as described in the module docs.
pub fn check(bytes: &[u8]) -> Result<Checked, CheckError> {
    // The nodes' reader first: it refuses malformed files and metadata (schemas that do not
    // fit their ports, golden rows that are not numbers or that it does not reproduce).
    let node =
        edge_ai::Model::from_bytes(bytes).map_err(|e| CheckError::NodeReader(e.to_string()))?;
    let tract_error = |e: TractError| CheckError::TractOnnx(format!("{e:#}"));
    let onnx = tract_onnx::onnx();
    let proto = onnx
        .proto_model_for_read(&mut &bytes[..])
        .map_err(tract_error)?;
    let graph = proto
        .graph
        .as_ref()
        .ok_or_else(|| CheckError::TractOnnx("the model has no graph".to_owned()))?;
    let metadata: BTreeMap<&str, &str> = proto
        .metadata_props
        .iter()
        .map(|e| (e.key.as_str(), e.value.as_str()))
        .collect();
    let schema = node.schema();
    let ports = |ports: &[edge_ai::Port], declared: Option<&[edge_ai::PortSchema]>| {
        ports
            .iter()
            .enumerate()
            .map(|(i, p)| Port {
                name: p.name().to_owned(),
                width: p.width(),
                features: declared.and_then(|d| d.get(i)).map(|d| {
                    d.features()
                        .iter()
                        .map(|f| (f.name().to_owned(), f.unit().to_owned()))
                        .collect()
                }),
            })
            .collect::<Vec<_>>()
    };
    let inputs = ports(node.inputs(), schema.map(edge_ai::Schema::inputs));
    let outputs = ports(node.outputs(), schema.map(edge_ai::Schema::outputs));
    let operators: Vec<String> = graph
        .node
        .iter()
        .map(|n| n.op_type.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();

    // The rows both readers run: the golden ones, then rows of our own.
    let golden_in = golden(&metadata, GOLDEN_INPUT_PREFIX, &inputs)?;
    let golden_out = golden(&metadata, GOLDEN_OUTPUT_PREFIX, &outputs)?;
    let golden_rows = match (&golden_in, &golden_out) {
        (Some(i), Some(o)) if rows_of(i) == rows_of(o) => rows_of(i),
        (None, None) => 0,
        _ => {
            return Err(CheckError::Metadata(
                "golden inputs and outputs must be given together, for every port, with the same number of rows"
                    .to_owned(),
            ));
        }
    };
    let tolerance = match metadata.get(TOLERANCE_KEY) {
        Some(text) => text
            .trim()
            .parse::<f32>()
            .ok()
            .filter(|t| t.is_finite() && *t >= 0.0)
            .ok_or_else(|| {
                CheckError::Metadata(format!(
                    "{TOLERANCE_KEY} must be a number of 0 or more, not {}",
                    edge_proto::field::shown(text)
                ))
            })?,
        None => TOLERANCE,
    };
    let rows = golden_rows + PROBE_ROWS;
    let batch: Vec<Vec<f32>> = inputs
        .iter()
        .enumerate()
        .map(|(p, port)| {
            let mut values = golden_in.as_ref().map_or_else(Vec::new, |g| g[p].concat());
            values.extend(probe_values(p, port.width));
            values
        })
        .collect();

    let tract_out = run_tract(&onnx, &proto, &inputs, &batch, rows, node.max_batch_rows())
        .map_err(tract_error)?;
    if let Some(golden_out) = &golden_out {
        for (p, port) in outputs.iter().enumerate() {
            compare_golden("tract-onnx", port, &golden_out[p], &tract_out[p], tolerance)?;
        }
    }
    let node_out = run_node(&node, &inputs, &outputs, &batch, rows)?;
    for (p, port) in outputs.iter().enumerate() {
        let pairs = tract_out[p].iter().zip(&node_out[p]).enumerate();
        for (i, (&tract, &node)) in pairs {
            if !close(node, tract, TOLERANCE) {
                return Err(CheckError::Disagree {
                    port: port.name.clone(),
                    row: i / port.width.max(1),
                    column: i % port.width.max(1),
                    tract,
                    node,
                });
            }
        }
    }
    Ok(Checked {
        purpose: node.purpose().map(str::to_owned),
        inputs,
        outputs,
        operators,
        golden_rows,
    })
}

fn rows_of(ports: &[Vec<Vec<f32>>]) -> usize {
    ports.first().map_or(0, Vec::len)
}

/// The golden rows of every port, if the model declares any: per port, per row, the values.
fn golden(
    metadata: &BTreeMap<&str, &str>,
    prefix: &str,
    ports: &[Port],
) -> Result<Option<Vec<Vec<Vec<f32>>>>, CheckError> {
    let declared = ports
        .iter()
        .filter(|p| metadata.contains_key(format!("{prefix}{}", p.name).as_str()))
        .count();
    if declared == 0 {
        return Ok(None);
    }
    let mut all = Vec::with_capacity(ports.len());
    for port in ports {
        let key = format!("{prefix}{}", port.name);
        let text = metadata.get(key.as_str()).ok_or_else(|| {
            CheckError::Metadata(format!(
                "{key} is missing while other ports have golden rows"
            ))
        })?;
        let rows = text
            .split(';')
            .filter(|r| !r.trim().is_empty())
            .enumerate()
            .map(|(i, row)| {
                let values = row
                    .split(',')
                    .map(|v| v.trim().parse::<f32>().ok().filter(|v| v.is_finite()))
                    .collect::<Option<Vec<f32>>>()
                    .ok_or_else(|| {
                        CheckError::Metadata(format!(
                            "{key}, row {i}: not a list of finite numbers"
                        ))
                    })?;
                if values.len() != port.width {
                    return Err(CheckError::Metadata(format!(
                        "{key}, row {i}: {} values, the port is {} wide",
                        values.len(),
                        port.width
                    )));
                }
                Ok(values)
            })
            .collect::<Result<Vec<_>, _>>()?;
        all.push(rows);
    }
    let rows = rows_of(&all);
    if rows == 0 || all.iter().any(|p| p.len() != rows) {
        return Err(CheckError::Metadata(format!(
            "{prefix}*: every port needs the same number of rows, at least one"
        )));
    }
    Ok(Some(all))
}

/// Deterministic rows of our own for input port `p`: values from -2 to 50, a spread that
/// reaches every ReLU's both sides for features in the units models use.
fn probe_values(p: usize, width: usize) -> Vec<f32> {
    let mut rng = fastrand::Rng::with_seed(0x5eed ^ p as u64);
    (0..PROBE_ROWS * width)
        .map(|_| rng.f32() * 52.0 - 2.0)
        .collect()
}

fn run_tract(
    onnx: &tract_onnx::Onnx,
    proto: &pb::ModelProto,
    inputs: &[Port],
    batch: &[Vec<f32>],
    rows: usize,
    max_batch_rows: usize,
) -> Result<Vec<Vec<f32>>, TractError> {
    // Models that declare a batch of 1 run a row at a time; the others all rows at once.
    let step = if max_batch_rows <= 1 { 1 } else { rows };
    let mut model = onnx.model_for_proto_model(proto)?;
    for (i, port) in inputs.iter().enumerate() {
        let fact = InferenceFact::dt_shape(f32::datum_type(), tvec![step, port.width]);
        model.set_input_fact(i, fact)?;
    }
    let plan: std::sync::Arc<TypedRunnableModel> = model.into_optimized()?.into_runnable()?;
    let mut all: Vec<Vec<f32>> = Vec::new();
    for first in (0..rows).step_by(step.max(1)) {
        let tensors = inputs
            .iter()
            .zip(batch)
            .map(|(port, values)| {
                let part = &values[first * port.width..(first + step) * port.width];
                Ok(Tensor::from_shape(&[step, port.width], part)?.into())
            })
            .collect::<Result<_, TractError>>()?;
        let outputs = plan.run(tensors)?;
        all.resize_with(outputs.len(), Vec::new);
        for (out, o) in all.iter_mut().zip(outputs.iter()) {
            out.extend_from_slice(o.try_as_plain_ram()?.as_slice::<f32>()?);
        }
    }
    Ok(all)
}

/// The node's reader, a row at a time (every input's row joined, every output's split
/// again): the path a node's single-row callers take.
fn run_node(
    node: &edge_ai::Model,
    inputs: &[Port],
    outputs: &[Port],
    batch: &[Vec<f32>],
    rows: usize,
) -> Result<Vec<Vec<f32>>, CheckError> {
    let mut all: Vec<Vec<f32>> = outputs
        .iter()
        .map(|p| Vec::with_capacity(rows * p.width))
        .collect();
    let mut row = Vec::new();
    let mut out = Vec::new();
    for r in 0..rows {
        row.clear();
        for (port, values) in inputs.iter().zip(batch) {
            row.extend_from_slice(&values[r * port.width..(r + 1) * port.width]);
        }
        node.run_into(&row, &mut out)
            .map_err(|e| CheckError::NodeReader(e.to_string()))?;
        let mut rest = out.as_slice();
        for (port, all) in outputs.iter().zip(&mut all) {
            let (this, next) = rest.split_at(port.width.min(rest.len()));
            all.extend_from_slice(this);
            rest = next;
        }
    }
    Ok(all)
}

fn compare_golden(
    reader: &'static str,
    port: &Port,
    golden: &[Vec<f32>],
    got: &[f32],
    tolerance: f32,
) -> Result<(), CheckError> {
    for (row, expected_row) in golden.iter().enumerate() {
        for (column, &expected) in expected_row.iter().enumerate() {
            let got = got
                .get(row * port.width + column)
                .copied()
                .unwrap_or(f32::NAN);
            if !close(got, expected, tolerance) {
                return Err(CheckError::Golden {
                    reader,
                    port: port.name.clone(),
                    row,
                    column,
                    expected,
                    got,
                });
            }
        }
    }
    Ok(())
}

/// `got` is within `tolerance` of `expected`, relative to `max(1, |expected|)`.
fn close(got: f32, expected: f32, tolerance: f32) -> bool {
    (got - expected).abs() <= tolerance * expected.abs().max(1.0)
}
