//! What a model declares about itself in its ONNX `metadata_props`: its purpose, the feature
//! and unit behind each column of each port (its schema), and golden rows to check it with.
//!
//! The keys are listed in the crate docs. This module only reads and checks the text: every
//! value is bounded before it gets here (`proto.rs`), every count is checked against the port
//! it describes, and anything that does not parse is an error naming the key, never a panic.
//! Running the golden rows is the loader's job (`lib.rs`), since it needs the plan.

use std::fmt;

use crate::Port;

/// Key prefix of everything edge-ai reads; other keys are left to other tools.
const PREFIX: &str = "edge.";
const PURPOSE: &str = "edge.purpose";
const INPUT: &str = "edge.input.";
const OUTPUT: &str = "edge.output.";
const GOLDEN_INPUT: &str = "edge.golden.input.";
const GOLDEN_OUTPUT: &str = "edge.golden.output.";
const GOLDEN_TOLERANCE: &str = "edge.golden.tolerance";

/// Relative tolerance of the golden check when the model does not set `edge.golden.tolerance`.
pub(crate) const DEFAULT_GOLDEN_TOLERANCE: f32 = 1e-4;

/// Which side of the model a port is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// A graph input: what the caller fills.
    Input,
    /// A graph output: what the model computes.
    Output,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Input => "input",
            Direction::Output => "output",
        })
    }
}

/// One column of a port: what it measures and in which unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Feature {
    name: String,
    unit: String,
}

impl Feature {
    /// The feature's name, e.g. `peak_ewma_ms`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The feature's unit, e.g. `ms`.
    pub fn unit(&self) -> &str {
        &self.unit
    }
}

/// The declared features of one port, one per column, in column order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSchema {
    name: String,
    features: Vec<Feature>,
}

impl PortSchema {
    /// The port's name in the graph.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// One feature per column; as many as the port's width.
    pub fn features(&self) -> &[Feature] {
        &self.features
    }
}

/// A model's declared feature schema: the features of every input and output port, in the
/// model's port order. Declared all or nothing: a model either names the features of every
/// port or of none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schema {
    inputs: Vec<PortSchema>,
    outputs: Vec<PortSchema>,
}

impl Schema {
    /// The input ports' features, in [`Model::inputs`](crate::Model::inputs) order.
    pub fn inputs(&self) -> &[PortSchema] {
        &self.inputs
    }

    /// The output ports' features, in [`Model::outputs`](crate::Model::outputs) order.
    pub fn outputs(&self) -> &[PortSchema] {
        &self.outputs
    }

    fn ports(&self, direction: Direction) -> &[PortSchema] {
        match direction {
            Direction::Input => &self.inputs,
            Direction::Output => &self.outputs,
        }
    }
}

/// The first difference between the schema a caller expects and the model it was given, from
/// [`Model::expect_schema`](crate::Model::expect_schema). Ports are compared in order, then
/// their widths, then their features column by column: the error names the first that differs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaMismatch {
    /// The model declares another purpose (`edge.purpose`).
    #[error("the model's purpose is {declared:?}, expected {expected:?}")]
    Purpose {
        /// What the caller expects.
        expected: String,
        /// What the model declares.
        declared: String,
    },

    /// The model has another number of input or output ports.
    #[error("the model has {got} {direction} ports, expected {expected}")]
    PortCount {
        /// Inputs or outputs.
        direction: Direction,
        /// How many the caller expects.
        expected: usize,
        /// How many the model has.
        got: usize,
    },

    /// The port at `index` has another name: an expected port is missing there.
    #[error("{direction} port {index} is {got:?}, expected {expected:?}")]
    PortName {
        /// Inputs or outputs.
        direction: Direction,
        /// The port's position among the model's inputs or outputs.
        index: usize,
        /// The name the caller expects.
        expected: String,
        /// The name in the model.
        got: String,
    },

    /// The port has another number of columns.
    #[error("{direction} {port:?} has width {got}, expected {expected}")]
    Width {
        /// Inputs or outputs.
        direction: Direction,
        /// The port's name.
        port: String,
        /// The number of features the caller lists.
        expected: usize,
        /// The port's width in the model.
        got: usize,
    },

    /// The column at `position` holds another feature.
    #[error("{direction} {port:?} column {position} is feature {got:?}, expected {expected:?}")]
    Feature {
        /// Inputs or outputs.
        direction: Direction,
        /// The port's name.
        port: String,
        /// The column, from 0.
        position: usize,
        /// The feature the caller expects there.
        expected: String,
        /// The feature the model declares there.
        got: String,
    },

    /// The column at `position` holds the expected feature in another unit.
    #[error(
        "{direction} {port:?} column {position} ({feature}) is in {got:?}, expected {expected:?}"
    )]
    Unit {
        /// Inputs or outputs.
        direction: Direction,
        /// The port's name.
        port: String,
        /// The column, from 0.
        position: usize,
        /// The feature's name.
        feature: String,
        /// The unit the caller expects.
        expected: String,
        /// The unit the model declares.
        got: String,
    },
}

/// An expected port: its name and its `(feature, unit)` columns.
pub type ExpectedPort<'a> = (&'a str, &'a [(&'a str, &'a str)]);

/// Compares what the caller expects with the model's ports and declarations; see
/// [`Model::expect_schema`](crate::Model::expect_schema).
pub(crate) fn expect(
    declared: &Declared,
    ports: [&[Port]; 2],
    purpose: &str,
    expected: [&[ExpectedPort<'_>]; 2],
) -> Result<(), SchemaMismatch> {
    if let Some(declared) = &declared.purpose
        && declared != purpose
    {
        return Err(SchemaMismatch::Purpose {
            expected: purpose.to_owned(),
            declared: declared.clone(),
        });
    }
    for (direction, ports, expected) in [
        (Direction::Input, ports[0], expected[0]),
        (Direction::Output, ports[1], expected[1]),
    ] {
        if ports.len() != expected.len() {
            return Err(SchemaMismatch::PortCount {
                direction,
                expected: expected.len(),
                got: ports.len(),
            });
        }
        let schemas = declared
            .schema
            .as_ref()
            .map(|schema| schema.ports(direction));
        for (index, (port, (name, features))) in ports.iter().zip(expected).enumerate() {
            if port.name() != *name {
                return Err(SchemaMismatch::PortName {
                    direction,
                    index,
                    expected: (*name).to_owned(),
                    got: port.name().to_owned(),
                });
            }
            if port.width() != features.len() {
                return Err(SchemaMismatch::Width {
                    direction,
                    port: port.name().to_owned(),
                    expected: features.len(),
                    got: port.width(),
                });
            }
            let Some(schema) = schemas.and_then(|schemas| schemas.get(index)) else {
                // No schema declared: the widths are all there is to compare.
                continue;
            };
            for (position, (got, (name, unit))) in schema.features.iter().zip(*features).enumerate()
            {
                if got.name != *name {
                    return Err(SchemaMismatch::Feature {
                        direction,
                        port: port.name().to_owned(),
                        position,
                        expected: (*name).to_owned(),
                        got: got.name.clone(),
                    });
                }
                if got.unit != *unit {
                    return Err(SchemaMismatch::Unit {
                        direction,
                        port: port.name().to_owned(),
                        position,
                        feature: got.name.clone(),
                        expected: (*unit).to_owned(),
                        got: got.unit.clone(),
                    });
                }
            }
        }
    }
    Ok(())
}

/// Golden rows: inputs to run at load and the outputs they must give, per port, row-major.
#[derive(Debug, Clone)]
pub(crate) struct Golden {
    pub(crate) rows: usize,
    /// One `rows * width` vector per input port, in port order.
    pub(crate) inputs: Vec<Vec<f32>>,
    /// One `rows * width` vector per output port, in port order.
    pub(crate) outputs: Vec<Vec<f32>>,
    /// Relative tolerance: an output may differ by `tolerance * max(1, |expected|)`.
    pub(crate) tolerance: f32,
}

/// Everything a model declares in `edge.*` metadata, checked against its ports.
#[derive(Debug, Clone, Default)]
pub(crate) struct Declared {
    pub(crate) purpose: Option<String>,
    pub(crate) schema: Option<Schema>,
    pub(crate) golden: Option<Golden>,
}

/// Reads the `edge.*` entries of `metadata` for a model with ports `inputs` and `outputs`.
pub(crate) fn parse(
    metadata: &[(String, String)],
    inputs: &[Port],
    outputs: &[Port],
) -> Result<Declared, String> {
    // In file order, so that of several faults the same one is reported every time. At most
    // MAX_METADATA_ENTRIES entries: a quadratic look for duplicates is cheaper in code than a
    // map, and code is what the node's 8 MiB are short of.
    let entries: Vec<(&str, &str)> = metadata
        .iter()
        .filter(|(key, _)| key.starts_with(PREFIX))
        .map(|(key, value)| (key.as_str(), value.as_str()))
        .collect();
    for (index, (key, _)) in entries.iter().enumerate() {
        if entries[..index].iter().any(|(earlier, _)| earlier == key) {
            return Err(format!("metadata key {key:?} is declared twice"));
        }
    }

    let mut declared = Declared::default();
    let mut schemas: [Vec<Option<PortSchema>>; 2] =
        [vec![None; inputs.len()], vec![None; outputs.len()]];
    let mut golden: [Vec<Option<Vec<Vec<f32>>>>; 2] =
        [vec![None; inputs.len()], vec![None; outputs.len()]];
    let mut tolerance = None;
    for (key, value) in entries {
        let port = |prefix: &str, direction: Direction| -> Result<Option<usize>, String> {
            let Some(name) = key.strip_prefix(prefix) else {
                return Ok(None);
            };
            let ports = match direction {
                Direction::Input => inputs,
                Direction::Output => outputs,
            };
            match ports.iter().position(|port| port.name() == name) {
                Some(index) => Ok(Some(index)),
                None => Err(format!(
                    "metadata {key:?} names {direction} {name:?}, which the model does not have \
                     (its {direction}s: {})",
                    port_names(ports)
                )),
            }
        };
        if key == PURPOSE {
            declared.purpose = Some(parse_purpose(value)?);
        } else if key == GOLDEN_TOLERANCE {
            tolerance = Some(parse_tolerance(value)?);
        } else if let Some(index) = port(GOLDEN_INPUT, Direction::Input)? {
            golden[0][index] = Some(parse_rows(key, value, inputs[index].width())?);
        } else if let Some(index) = port(GOLDEN_OUTPUT, Direction::Output)? {
            golden[1][index] = Some(parse_rows(key, value, outputs[index].width())?);
        } else if let Some(index) = port(INPUT, Direction::Input)? {
            schemas[0][index] = Some(parse_features(
                key,
                value,
                Direction::Input,
                &inputs[index],
            )?);
        } else if let Some(index) = port(OUTPUT, Direction::Output)? {
            schemas[1][index] = Some(parse_features(
                key,
                value,
                Direction::Output,
                &outputs[index],
            )?);
        } else {
            return Err(format!(
                "metadata key {key:?} is not one edge-ai knows (edge.purpose, edge.input.NAME, \
                 edge.output.NAME, edge.golden.input.NAME, edge.golden.output.NAME, \
                 edge.golden.tolerance)"
            ));
        }
    }

    let [input_schemas, output_schemas] = schemas;
    declared.schema = all_or_none(input_schemas, output_schemas, inputs, outputs, Kind::Schema)?
        .map(|(inputs, outputs)| Schema { inputs, outputs });
    let [golden_inputs, golden_outputs] = golden;
    let golden = all_or_none(golden_inputs, golden_outputs, inputs, outputs, Kind::Golden)?;
    declared.golden = match (golden, tolerance) {
        (None, None) => None,
        (None, Some(_)) => {
            return Err(format!(
                "metadata {GOLDEN_TOLERANCE:?} is set but the model declares no golden rows"
            ));
        }
        (Some((inputs, outputs)), tolerance) => Some(golden_rows(
            inputs,
            outputs,
            tolerance.unwrap_or(DEFAULT_GOLDEN_TOLERANCE),
        )?),
    };
    Ok(declared)
}

/// What is declared per port, all or nothing.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Schema,
    Golden,
}

/// `Some` when every port has a declaration, `None` when none has, an error naming the first
/// port without one otherwise.
#[allow(clippy::type_complexity)]
fn all_or_none<T>(
    input_values: Vec<Option<T>>,
    output_values: Vec<Option<T>>,
    inputs: &[Port],
    outputs: &[Port],
    kind: Kind,
) -> Result<Option<(Vec<T>, Vec<T>)>, String> {
    let (what, prefix) = match kind {
        Kind::Schema => ("features (edge.input.*, edge.output.*)", "edge."),
        Kind::Golden => (
            "golden rows (edge.golden.input.*, edge.golden.output.*)",
            "edge.golden.",
        ),
    };
    let declared = input_values.iter().chain(&output_values).flatten().count();
    if declared == 0 {
        return Ok(None);
    }
    let missing = input_values
        .iter()
        .zip(inputs)
        .map(|(value, port)| (value, Direction::Input, port))
        .chain(
            output_values
                .iter()
                .zip(outputs)
                .map(|(value, port)| (value, Direction::Output, port)),
        )
        .find(|(value, _, _)| value.is_none());
    if let Some((_, direction, port)) = missing {
        return Err(format!(
            "metadata declares {what} for some ports but has no \"{prefix}{direction}.{}\": \
             declare them for every input and output or for none",
            port.name()
        ));
    }
    Ok(Some((
        input_values.into_iter().flatten().collect(),
        output_values.into_iter().flatten().collect(),
    )))
}

fn port_names(ports: &[Port]) -> String {
    let names: Vec<String> = ports
        .iter()
        .map(|port| format!("{:?}", port.name()))
        .collect();
    names.join(", ")
}

fn parse_purpose(value: &str) -> Result<String, String> {
    if value.is_empty() || value.len() > 64 || !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "metadata {PURPOSE:?} must be a word of 1 to 64 printable ASCII characters, like \
             \"route\"; it is {:?}",
            truncated(value)
        ));
    }
    Ok(value.to_owned())
}

fn parse_tolerance(value: &str) -> Result<f32, String> {
    match value.trim().parse::<f32>() {
        Ok(tolerance) if tolerance.is_finite() && tolerance >= 0.0 => Ok(tolerance),
        _ => Err(format!(
            "metadata {GOLDEN_TOLERANCE:?} must be a finite number of 0 or more, it is {:?}",
            truncated(value)
        )),
    }
}

/// `feature:unit,feature:unit`, one per column of `port`.
fn parse_features(
    key: &str,
    value: &str,
    direction: Direction,
    port: &Port,
) -> Result<PortSchema, String> {
    let mut features: Vec<Feature> = Vec::new();
    for (position, item) in value.split(',').enumerate() {
        if position >= port.width() {
            return Err(format!(
                "metadata {key:?} declares {} features, {} {:?} has width {}",
                value.split(',').count(),
                direction,
                port.name(),
                port.width()
            ));
        }
        let (name, unit) = item.split_once(':').unwrap_or((item, ""));
        if !is_word(name) || !is_word(unit) {
            return Err(format!(
                "metadata {key:?} column {position} is {:?}, not feature:unit (both non-empty, \
                 printable ASCII without spaces, ',', ':' or ';'; use 1 as the unit of a plain \
                 number)",
                truncated(item)
            ));
        }
        if features.iter().any(|feature| feature.name == name) {
            return Err(format!("metadata {key:?} names feature {name:?} twice"));
        }
        features.push(Feature {
            name: name.to_owned(),
            unit: unit.to_owned(),
        });
    }
    if features.len() != port.width() {
        return Err(format!(
            "metadata {key:?} declares {} features, {} {:?} has width {}",
            features.len(),
            direction,
            port.name(),
            port.width()
        ));
    }
    Ok(PortSchema {
        name: port.name().to_owned(),
        features,
    })
}

fn is_word(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b',' | b':' | b';'))
}

/// `v,v,v;v,v,v`: rows of `width` finite decimal numbers.
fn parse_rows(key: &str, value: &str, width: usize) -> Result<Vec<Vec<f32>>, String> {
    let mut rows = Vec::new();
    for (row_index, row) in value.split(';').enumerate() {
        if row_index >= crate::MAX_GOLDEN_ROWS {
            return Err(format!(
                "metadata {key:?} has more than {} rows",
                crate::MAX_GOLDEN_ROWS
            ));
        }
        let mut values = Vec::with_capacity(width);
        for (column, text) in row.split(',').enumerate() {
            if column >= width {
                return Err(format!(
                    "metadata {key:?} row {row_index} has more than {width} values, the port's \
                     width"
                ));
            }
            match text.trim().parse::<f32>() {
                Ok(number) if number.is_finite() => values.push(number),
                _ => {
                    return Err(format!(
                        "metadata {key:?} row {row_index} column {column} is {:?}, not a finite \
                         number",
                        truncated(text)
                    ));
                }
            }
        }
        if values.len() != width {
            return Err(format!(
                "metadata {key:?} row {row_index} has {} values, the port's width is {width}",
                values.len()
            ));
        }
        rows.push(values);
    }
    Ok(rows)
}

/// Checks the golden rows have one row count and flattens each port's rows.
fn golden_rows(
    inputs: Vec<Vec<Vec<f32>>>,
    outputs: Vec<Vec<Vec<f32>>>,
    tolerance: f32,
) -> Result<Golden, String> {
    let counts: Vec<usize> = inputs.iter().chain(&outputs).map(Vec::len).collect();
    let rows = counts.first().copied().unwrap_or(0);
    if counts.iter().any(|count| *count != rows) {
        return Err(format!(
            "the golden metadata has different row counts per port ({counts:?}, inputs first): \
             every edge.golden.* key must have the same number of rows"
        ));
    }
    let flatten = |ports: Vec<Vec<Vec<f32>>>| -> Vec<Vec<f32>> {
        ports.into_iter().map(|rows| rows.concat()).collect()
    };
    Ok(Golden {
        rows,
        inputs: flatten(inputs),
        outputs: flatten(outputs),
        tolerance,
    })
}

/// `text` cut to a length that keeps a message readable, at a character boundary.
fn truncated(text: &str) -> String {
    const MAX: usize = 40;
    match text.char_indices().nth(MAX) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ports(widths: &[(&str, usize)]) -> Vec<Port> {
        widths
            .iter()
            .map(|(name, width)| Port::new((*name).to_owned(), *width))
            .collect()
    }

    fn entries(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
            .collect()
    }

    #[test]
    fn truncation_keeps_character_boundaries() {
        assert_eq!(truncated("short"), "short");
        let long = "é".repeat(50);
        assert_eq!(truncated(&long), format!("{}...", "é".repeat(40)));
    }

    #[test]
    fn other_tools_keys_are_ignored_and_unknown_edge_keys_refused() {
        let (inputs, outputs) = (ports(&[("x", 2)]), ports(&[("y", 1)]));
        let declared = parse(&entries(&[("author", "me")]), &inputs, &outputs).expect("ok");
        assert!(declared.schema.is_none() && declared.golden.is_none());
        let error = parse(
            &entries(&[("edge.golden.outptu.y", "1")]),
            &inputs,
            &outputs,
        )
        .expect_err("refused");
        assert!(error.contains("not one edge-ai knows"), "{error}");
    }

    #[test]
    fn golden_values_must_be_finite_numbers_of_the_port_width() {
        for (value, reason) in [
            ("1,NaN", "not a finite number"),
            ("1,inf", "not a finite number"),
            ("1,1e39", "not a finite number"),
            ("1,x", "not a finite number"),
            ("1,", "not a finite number"),
            ("1", "has 1 values"),
            ("1,2,3", "more than 2 values"),
            ("1,2;3", "row 1 has 1 values"),
        ] {
            let error = parse_rows("k", value, 2).expect_err(value);
            assert!(error.contains(reason), "{value}: {error}");
        }
        assert_eq!(
            parse_rows("k", " 1.5, -2 ;3,4e-3", 2).expect("ok"),
            [vec![1.5, -2.0], vec![3.0, 4e-3]]
        );
        let many = vec!["1"; crate::MAX_GOLDEN_ROWS + 1].join(";");
        let error = parse_rows("k", &many, 1).expect_err("too many rows");
        assert!(error.contains("more than 64 rows"), "{error}");
    }
}
