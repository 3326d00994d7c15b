//! A protobuf decoder for the part of the ONNX schema that edge-ai runs.
//!
//! ONNX files are protobuf messages (`onnx.proto3`). Rather than generated code for the whole
//! schema, this reads the fields a dense model needs, and the model's `metadata_props` (where
//! edge-ai's feature schema and golden values live), into plain structs and skips the others
//! (documentation strings, training information). Whatever could change the meaning of
//! the model and is not understood here (subgraphs, sparse or external tensors, model-local
//! functions, reference attributes) is refused rather than skipped.
//!
//! Hostile input is expected: every length is checked against the bytes that remain, varints
//! longer than ten bytes are refused, and the number of decoded items is capped
//! ([`MAX_ITEMS`]), so a model costs a bounded multiple of its file size in memory. Nothing here
//! recurses: the schema's nesting depth is fixed.

use std::fmt;

/// The most nodes, tensors, strings, attributes and dimensions one model may decode into.
///
/// Each item costs up to about a hundred bytes once decoded but may take only two in the file,
/// so without a cap a 16 MiB file could decode into gigabytes. 100,000 items is far more than a
/// small model has (the shipped MLP has 30).
pub(crate) const MAX_ITEMS: usize = 100_000;

/// The most dimensions a tensor or value may declare.
pub(crate) const MAX_RANK: usize = 8;

/// Why bytes are not an ONNX model this decoder reads.
#[derive(Debug)]
pub(crate) struct DecodeError(pub(crate) String);

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

type Result<T> = std::result::Result<T, DecodeError>;

fn error<T>(message: impl Into<String>) -> Result<T> {
    Err(DecodeError(message.into()))
}

/// `ModelProto`, reduced to what a run needs.
#[derive(Debug, Default)]
pub(crate) struct Model {
    /// `opset_import`: (domain, version) pairs.
    pub(crate) opsets: Vec<(String, i64)>,
    pub(crate) graph: Option<Graph>,
    /// `metadata_props`: (key, value) pairs in file order, at most
    /// [`MAX_METADATA_ENTRIES`](crate::MAX_METADATA_ENTRIES), each key and value within its cap.
    pub(crate) metadata: Vec<(String, String)>,
}

/// `GraphProto`.
#[derive(Debug, Default)]
pub(crate) struct Graph {
    pub(crate) nodes: Vec<Node>,
    pub(crate) initializers: Vec<TensorProto>,
    pub(crate) inputs: Vec<ValueInfo>,
    pub(crate) outputs: Vec<ValueInfo>,
}

/// `NodeProto`.
#[derive(Debug, Default)]
pub(crate) struct Node {
    pub(crate) inputs: Vec<String>,
    pub(crate) outputs: Vec<String>,
    pub(crate) name: String,
    pub(crate) op_type: String,
    pub(crate) domain: String,
    pub(crate) attributes: Vec<Attribute>,
}

/// `AttributeProto`: the value kinds our operators take.
#[derive(Debug, Default)]
pub(crate) struct Attribute {
    pub(crate) name: String,
    pub(crate) f: Option<f32>,
    pub(crate) i: Option<i64>,
    pub(crate) t: Option<TensorProto>,
    pub(crate) floats: Vec<f32>,
    pub(crate) ints: Vec<i64>,
}

/// `TensorProto`. Only the storage of the types edge-ai runs is kept; `data_type` says which.
#[derive(Debug, Default)]
pub(crate) struct TensorProto {
    pub(crate) name: String,
    pub(crate) dims: Vec<i64>,
    pub(crate) data_type: i32,
    pub(crate) float_data: Vec<f32>,
    pub(crate) raw_data: Option<Vec<u8>>,
    /// Some element data arrived in a field other than `float_data` or `raw_data`.
    pub(crate) has_other_data: bool,
}

/// `ValueInfoProto` for a tensor: its element type and shape, when declared.
#[derive(Debug, Default)]
pub(crate) struct ValueInfo {
    pub(crate) name: String,
    pub(crate) elem_type: Option<i32>,
    pub(crate) shape: Option<Vec<Dim>>,
}

/// One dimension of a declared shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Dim {
    Value(i64),
    Param(String),
    Unknown,
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Value(value) => write!(f, "{value}"),
            Dim::Param(name) if !name.is_empty() => f.write_str(name),
            Dim::Param(_) | Dim::Unknown => f.write_str("?"),
        }
    }
}

/// `TensorProto.DataType` values this crate names in messages.
pub(crate) const FLOAT: i32 = 1;

/// The name of an ONNX element type, for messages.
pub(crate) fn data_type_name(data_type: i32) -> String {
    const NAMES: [&str; 24] = [
        "UNDEFINED",
        "FLOAT",
        "UINT8",
        "INT8",
        "UINT16",
        "INT16",
        "INT32",
        "INT64",
        "STRING",
        "BOOL",
        "FLOAT16",
        "DOUBLE",
        "UINT32",
        "UINT64",
        "COMPLEX64",
        "COMPLEX128",
        "BFLOAT16",
        "FLOAT8E4M3FN",
        "FLOAT8E4M3FNUZ",
        "FLOAT8E5M2",
        "FLOAT8E5M2FNUZ",
        "UINT4",
        "INT4",
        "FLOAT4E2M1",
    ];
    usize::try_from(data_type)
        .ok()
        .and_then(|index| NAMES.get(index))
        .map_or_else(|| format!("type {data_type}"), |name| (*name).to_owned())
}

/// Decodes an ONNX `ModelProto`.
pub(crate) fn decode_model(bytes: &[u8]) -> Result<Model> {
    let mut decoder = Decoder {
        items_left: MAX_ITEMS,
    };
    decoder.model(bytes)
}

/// One field's value as the wire format carries it.
#[derive(Debug, Clone, Copy)]
enum Value<'a> {
    Varint(u64),
    Fixed64,
    Bytes(&'a [u8]),
    Fixed32(u32),
}

/// Iterates over the fields of one message.
struct Fields<'a> {
    rest: &'a [u8],
    message: &'static str,
}

impl<'a> Fields<'a> {
    fn new(bytes: &'a [u8], message: &'static str) -> Fields<'a> {
        Fields {
            rest: bytes,
            message,
        }
    }

    fn next_field(&mut self) -> Result<Option<(u64, Value<'a>)>> {
        if self.rest.is_empty() {
            return Ok(None);
        }
        let key = varint(&mut self.rest, self.message)?;
        let number = key >> 3;
        if number == 0 {
            return error(format!("{} has a field numbered 0", self.message));
        }
        let value = match key & 7 {
            0 => Value::Varint(varint(&mut self.rest, self.message)?),
            1 => {
                self.take(8)?;
                Value::Fixed64
            }
            2 => {
                let len = varint(&mut self.rest, self.message)?;
                let len = usize::try_from(len).unwrap_or(usize::MAX);
                Value::Bytes(self.take(len)?)
            }
            5 => {
                let bytes = self.take(4)?;
                Value::Fixed32(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
            }
            wire_type => {
                return error(format!(
                    "{} field {number} has wire type {wire_type}, which ONNX does not use",
                    self.message
                ));
            }
        };
        Ok(Some((number, value)))
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8]> {
        if len > self.rest.len() {
            return error(format!(
                "{} is cut short: a field needs {len} bytes, {} remain",
                self.message,
                self.rest.len()
            ));
        }
        let (taken, rest) = self.rest.split_at(len);
        self.rest = rest;
        Ok(taken)
    }
}

fn varint(bytes: &mut &[u8], message: &str) -> Result<u64> {
    let mut value = 0u64;
    for (index, byte) in bytes.iter().enumerate().take(10) {
        let bits = u64::from(byte & 0x7f);
        if index == 9 && bits > 1 {
            break;
        }
        value |= bits << (7 * index);
        if byte & 0x80 == 0 {
            *bytes = &bytes[index + 1..];
            return Ok(value);
        }
    }
    if bytes.len() < 10 && bytes.last().is_none_or(|byte| byte & 0x80 != 0) {
        return error(format!("{message} is cut short inside a number"));
    }
    error(format!("{message} has a malformed number (varint)"))
}

fn wrong_type<T>(message: &str, field: &str) -> Result<T> {
    error(format!("{message}.{field} has the wrong wire type"))
}

fn bytes_of<'a>(value: Value<'a>, message: &str, field: &str) -> Result<&'a [u8]> {
    match value {
        Value::Bytes(bytes) => Ok(bytes),
        _ => wrong_type(message, field),
    }
}

fn int_of(value: Value<'_>, message: &str, field: &str) -> Result<i64> {
    match value {
        // int64 and int32 fields carry two's complement in a varint.
        Value::Varint(raw) => Ok(raw as i64),
        _ => wrong_type(message, field),
    }
}

fn float_of(value: Value<'_>, message: &str, field: &str) -> Result<f32> {
    match value {
        Value::Fixed32(raw) => Ok(f32::from_bits(raw)),
        _ => wrong_type(message, field),
    }
}

fn string_of(value: Value<'_>, message: &str, field: &str) -> Result<String> {
    let bytes = bytes_of(value, message, field)?;
    match std::str::from_utf8(bytes) {
        Ok(text) => Ok(text.to_owned()),
        Err(_) => error(format!("{message}.{field} is not UTF-8")),
    }
}

/// Decodes the items of a packed or unpacked `repeated int64` into `out`.
fn ints_into(
    value: Value<'_>,
    message: &'static str,
    field: &str,
    out: &mut Vec<i64>,
) -> Result<usize> {
    match value {
        Value::Varint(raw) => {
            out.push(raw as i64);
            Ok(1)
        }
        Value::Bytes(mut packed) => {
            let before = out.len();
            while !packed.is_empty() {
                out.push(varint(&mut packed, message)? as i64);
            }
            Ok(out.len() - before)
        }
        _ => wrong_type(message, field),
    }
}

/// Decodes the items of a packed or unpacked `repeated float` into `out`.
fn floats_into(value: Value<'_>, message: &str, field: &str, out: &mut Vec<f32>) -> Result<()> {
    match value {
        Value::Fixed32(raw) => out.push(f32::from_bits(raw)),
        Value::Bytes(packed) => {
            if packed.len() % 4 != 0 {
                return error(format!(
                    "{message}.{field} holds {} bytes, not a whole number of floats",
                    packed.len()
                ));
            }
            out.extend(
                packed
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            );
        }
        _ => return wrong_type(message, field),
    }
    Ok(())
}

struct Decoder {
    items_left: usize,
}

impl Decoder {
    /// Counts `n` decoded items against [`MAX_ITEMS`].
    fn spend(&mut self, n: usize) -> Result<()> {
        match self.items_left.checked_sub(n) {
            Some(left) => {
                self.items_left = left;
                Ok(())
            }
            None => error(format!(
                "the model has more than {MAX_ITEMS} nodes, tensors, names and dimensions"
            )),
        }
    }

    fn model(&mut self, bytes: &[u8]) -> Result<Model> {
        const M: &str = "ModelProto";
        let mut model = Model::default();
        let mut fields = Fields::new(bytes, M);
        while let Some((number, value)) = fields.next_field()? {
            match number {
                7 => {
                    if model.graph.is_some() {
                        return error("the model has two graphs");
                    }
                    model.graph = Some(self.graph(bytes_of(value, M, "graph")?)?);
                }
                8 => {
                    self.spend(1)?;
                    let opset = opset(bytes_of(value, M, "opset_import")?)?;
                    model.opsets.push(opset);
                }
                14 => {
                    if model.metadata.len() == crate::MAX_METADATA_ENTRIES {
                        return error(format!(
                            "the model has more than {} metadata_props entries",
                            crate::MAX_METADATA_ENTRIES
                        ));
                    }
                    self.spend(1)?;
                    let entry = metadata_entry(bytes_of(value, M, "metadata_props")?)?;
                    model.metadata.push(entry);
                }
                25 => {
                    return error(
                        "the model defines its own functions, which edge-ai does not run",
                    );
                }
                _ => {}
            }
        }
        Ok(model)
    }

    fn graph(&mut self, bytes: &[u8]) -> Result<Graph> {
        const M: &str = "GraphProto";
        let mut graph = Graph::default();
        let mut fields = Fields::new(bytes, M);
        while let Some((number, value)) = fields.next_field()? {
            match number {
                1 => {
                    self.spend(1)?;
                    graph.nodes.push(self.node(bytes_of(value, M, "node")?)?);
                }
                5 => {
                    self.spend(1)?;
                    let tensor = self.tensor(bytes_of(value, M, "initializer")?)?;
                    graph.initializers.push(tensor);
                }
                11 => {
                    self.spend(1)?;
                    graph
                        .inputs
                        .push(self.value_info(bytes_of(value, M, "input")?)?);
                }
                12 => {
                    self.spend(1)?;
                    graph
                        .outputs
                        .push(self.value_info(bytes_of(value, M, "output")?)?);
                }
                15 => {
                    return error("the graph has sparse initializers, which edge-ai does not run");
                }
                _ => {}
            }
        }
        Ok(graph)
    }

    fn node(&mut self, bytes: &[u8]) -> Result<Node> {
        const M: &str = "NodeProto";
        let mut node = Node::default();
        let mut fields = Fields::new(bytes, M);
        while let Some((number, value)) = fields.next_field()? {
            match number {
                1 => {
                    self.spend(1)?;
                    node.inputs.push(string_of(value, M, "input")?);
                }
                2 => {
                    self.spend(1)?;
                    node.outputs.push(string_of(value, M, "output")?);
                }
                3 => node.name = string_of(value, M, "name")?,
                4 => node.op_type = string_of(value, M, "op_type")?,
                5 => {
                    self.spend(1)?;
                    let attribute = self.attribute(bytes_of(value, M, "attribute")?)?;
                    node.attributes.push(attribute);
                }
                7 => node.domain = string_of(value, M, "domain")?,
                _ => {}
            }
        }
        Ok(node)
    }

    fn attribute(&mut self, bytes: &[u8]) -> Result<Attribute> {
        const M: &str = "AttributeProto";
        let mut attribute = Attribute::default();
        let mut fields = Fields::new(bytes, M);
        while let Some((number, value)) = fields.next_field()? {
            match number {
                1 => attribute.name = string_of(value, M, "name")?,
                2 => attribute.f = Some(float_of(value, M, "f")?),
                3 => attribute.i = Some(int_of(value, M, "i")?),
                5 => attribute.t = Some(self.tensor(bytes_of(value, M, "t")?)?),
                7 => {
                    floats_into(value, M, "floats", &mut attribute.floats)?;
                    self.spend(1)?;
                }
                8 => {
                    let n = ints_into(value, M, "ints", &mut attribute.ints)?;
                    self.spend(n)?;
                }
                6 | 11 => {
                    return error(format!(
                        "attribute {:?} holds a subgraph, which edge-ai does not run",
                        attribute.name
                    ));
                }
                10 | 22 | 23 => {
                    return error(format!(
                        "attribute {:?} holds a tensor list or a sparse tensor, which edge-ai \
                         does not read",
                        attribute.name
                    ));
                }
                21 => {
                    return error(
                        "an attribute refers to a function's attribute (ref_attr_name), which \
                         edge-ai does not run",
                    );
                }
                _ => {}
            }
        }
        Ok(attribute)
    }

    fn tensor(&mut self, bytes: &[u8]) -> Result<TensorProto> {
        const M: &str = "TensorProto";
        let mut tensor = TensorProto::default();
        let mut fields = Fields::new(bytes, M);
        while let Some((number, value)) = fields.next_field()? {
            match number {
                1 => {
                    let n = ints_into(value, M, "dims", &mut tensor.dims)?;
                    self.spend(n)?;
                    if tensor.dims.len() > MAX_RANK {
                        return error(format!("a tensor has more than {MAX_RANK} dimensions"));
                    }
                }
                2 => tensor.data_type = int_of(value, M, "data_type")? as i32,
                3 => return error("a tensor is split into segments, which edge-ai does not read"),
                4 => {
                    floats_into(value, M, "float_data", &mut tensor.float_data)?;
                    self.spend(1)?;
                }
                5..=7 | 10 | 11 => tensor.has_other_data = true,
                8 => tensor.name = string_of(value, M, "name")?,
                9 => {
                    if tensor.raw_data.is_some() {
                        return error("a tensor has raw_data twice");
                    }
                    tensor.raw_data = Some(bytes_of(value, M, "raw_data")?.to_vec());
                    self.spend(1)?;
                }
                13 | 14 => {
                    // data_location 0 is DEFAULT; anything set here points outside the file.
                    if number == 14 && matches!(value, Value::Varint(0)) {
                        continue;
                    }
                    return error(format!(
                        "tensor {:?} keeps its data in an external file, which edge-ai does not \
                         read: embed the weights in the model",
                        tensor.name
                    ));
                }
                _ => {}
            }
        }
        Ok(tensor)
    }

    fn value_info(&mut self, bytes: &[u8]) -> Result<ValueInfo> {
        const M: &str = "ValueInfoProto";
        let mut info = ValueInfo::default();
        let mut fields = Fields::new(bytes, M);
        while let Some((number, value)) = fields.next_field()? {
            match number {
                1 => info.name = string_of(value, M, "name")?,
                2 => self.type_proto(bytes_of(value, M, "type")?, &mut info)?,
                _ => {}
            }
        }
        Ok(info)
    }

    /// `TypeProto`: only tensor types have a meaning here; the others are refused.
    fn type_proto(&mut self, bytes: &[u8], info: &mut ValueInfo) -> Result<()> {
        const M: &str = "TypeProto";
        let mut fields = Fields::new(bytes, M);
        while let Some((number, value)) = fields.next_field()? {
            match number {
                1 => {
                    let mut tensor =
                        Fields::new(bytes_of(value, M, "tensor_type")?, "TypeProto.Tensor");
                    while let Some((number, value)) = tensor.next_field()? {
                        match number {
                            1 => info.elem_type = Some(int_of(value, M, "elem_type")? as i32),
                            2 => info.shape = Some(self.shape(bytes_of(value, M, "shape")?)?),
                            _ => {}
                        }
                    }
                }
                4 | 5 | 8 | 9 => {
                    return error(format!(
                        "value {:?} is not a tensor (a sequence, map, optional or sparse \
                         tensor), which edge-ai does not run",
                        info.name
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn shape(&mut self, bytes: &[u8]) -> Result<Vec<Dim>> {
        const M: &str = "TensorShapeProto";
        let mut dims = Vec::new();
        let mut fields = Fields::new(bytes, M);
        while let Some((number, value)) = fields.next_field()? {
            if number != 1 {
                continue;
            }
            self.spend(1)?;
            if dims.len() == MAX_RANK {
                return error(format!("a value has more than {MAX_RANK} dimensions"));
            }
            let mut dim = Dim::Unknown;
            let mut inner = Fields::new(bytes_of(value, M, "dim")?, "TensorShapeProto.Dimension");
            while let Some((number, value)) = inner.next_field()? {
                match number {
                    1 => dim = Dim::Value(int_of(value, M, "dim_value")?),
                    2 => dim = Dim::Param(string_of(value, M, "dim_param")?),
                    _ => {}
                }
            }
            dims.push(dim);
        }
        Ok(dims)
    }
}

/// `StringStringEntryProto`, with its key and value held to their caps before they are copied.
fn metadata_entry(bytes: &[u8]) -> Result<(String, String)> {
    const M: &str = "StringStringEntryProto";
    let (mut key, mut value) = (String::new(), String::new());
    let mut fields = Fields::new(bytes, M);
    while let Some((number, field)) = fields.next_field()? {
        match number {
            1 => {
                let bytes = bytes_of(field, M, "key")?;
                if bytes.len() > crate::MAX_METADATA_KEY_BYTES {
                    return error(format!(
                        "a metadata_props key is {} bytes, over the {} byte limit",
                        bytes.len(),
                        crate::MAX_METADATA_KEY_BYTES
                    ));
                }
                key = string_of(field, M, "key")?;
            }
            2 => {
                let bytes = bytes_of(field, M, "value")?;
                if bytes.len() > crate::MAX_METADATA_VALUE_BYTES {
                    return error(format!(
                        "the value of metadata_props {key:?} is {} bytes, over the {} byte limit",
                        bytes.len(),
                        crate::MAX_METADATA_VALUE_BYTES
                    ));
                }
                value = string_of(field, M, "value")?;
            }
            _ => {}
        }
    }
    Ok((key, value))
}

fn opset(bytes: &[u8]) -> Result<(String, i64)> {
    const M: &str = "OperatorSetIdProto";
    let (mut domain, mut version) = (String::new(), 0);
    let mut fields = Fields::new(bytes, M);
    while let Some((number, value)) = fields.next_field()? {
        match number {
            1 => domain = string_of(value, M, "domain")?,
            2 => version = int_of(value, M, "version")?,
            _ => {}
        }
    }
    Ok((domain, version))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_varint(bytes: &[u8]) -> Result<(u64, usize)> {
        let mut rest = bytes;
        let value = varint(&mut rest, "test")?;
        Ok((value, bytes.len() - rest.len()))
    }

    #[test]
    fn varints_decode_to_their_value_and_length() {
        assert_eq!(decode_varint(&[0]).expect("accepted"), (0, 1));
        assert_eq!(decode_varint(&[0x96, 0x01]).expect("accepted"), (150, 2));
        let max = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert_eq!(decode_varint(&max).expect("accepted"), (u64::MAX, 10));
        // -1 as int64, the way protobuf writes negative numbers.
        assert_eq!(decode_varint(&max).expect("accepted").0 as i64, -1);
    }

    #[test]
    fn overlong_overflowing_and_cut_varints_are_errors() {
        let eleven = [0x80; 10]
            .iter()
            .chain(&[0x01])
            .copied()
            .collect::<Vec<_>>();
        assert!(
            decode_varint(&eleven)
                .expect_err("refused")
                .0
                .contains("malformed")
        );
        let overflow = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
        assert!(
            decode_varint(&overflow)
                .expect_err("refused")
                .0
                .contains("malformed")
        );
        assert!(
            decode_varint(&[0x80, 0x80])
                .expect_err("refused")
                .0
                .contains("cut short")
        );
        assert!(
            decode_varint(&[])
                .expect_err("refused")
                .0
                .contains("cut short")
        );
    }

    #[test]
    fn a_length_past_the_end_is_an_error_not_a_read() {
        // Field 7 (graph), length-delimited, claiming 2^40 bytes.
        let bytes = [0x3a, 0x80, 0x80, 0x80, 0x80, 0x80, 0x20];
        let message = decode_model(&bytes).expect_err("refused").0;
        assert!(message.contains("cut short"), "{message}");
    }

    #[test]
    fn group_wire_types_are_refused() {
        let message = decode_model(&[0x0b]).expect_err("refused").0;
        assert!(message.contains("wire type 3"), "{message}");
    }

    #[test]
    fn a_field_of_the_wrong_wire_type_is_named() {
        // ModelProto.graph (7) as a varint.
        let message = decode_model(&[0x38, 0x01]).expect_err("refused").0;
        assert!(message.contains("ModelProto.graph"), "{message}");
    }

    #[test]
    fn item_count_is_capped() {
        // A graph of 100,001 empty nodes: two bytes each in the file.
        let mut graph = Vec::new();
        for _ in 0..=MAX_ITEMS {
            graph.extend_from_slice(&[0x0a, 0x00]);
        }
        let mut bytes = vec![0x3a];
        let mut len = graph.len();
        while len >= 0x80 {
            bytes.push((len as u8) | 0x80);
            len >>= 7;
        }
        bytes.push(len as u8);
        bytes.extend_from_slice(&graph);
        let message = decode_model(&bytes).expect_err("refused").0;
        assert!(message.contains("more than 100000"), "{message}");
    }

    /// `ModelProto.metadata_props` entries: {key = 1, value = 2}, in field 14.
    fn metadata_entry_bytes(key: &[u8], value: &[u8]) -> Vec<u8> {
        let inner = [
            &[0x0a, key.len() as u8][..],
            key,
            &[0x12, value.len() as u8],
            value,
        ]
        .concat();
        [&[0x72, inner.len() as u8][..], &inner].concat()
    }

    #[test]
    fn metadata_entries_decode_in_file_order() {
        let bytes = [
            metadata_entry_bytes(b"edge.purpose", b"route"),
            metadata_entry_bytes(b"author", b""),
        ]
        .concat();
        let model = decode_model(&bytes).expect("accepted");
        assert_eq!(
            model.metadata,
            [
                ("edge.purpose".to_owned(), "route".to_owned()),
                ("author".to_owned(), String::new())
            ]
        );
        let many = metadata_entry_bytes(b"k", b"v").repeat(crate::MAX_METADATA_ENTRIES + 1);
        let message = decode_model(&many).expect_err("refused").0;
        assert!(message.contains("more than 64"), "{message}");
    }

    #[test]
    fn element_type_names_cover_known_and_unknown_values() {
        assert_eq!(data_type_name(FLOAT), "FLOAT");
        assert_eq!(data_type_name(8), "STRING");
        assert_eq!(data_type_name(-3), "type -3");
        assert_eq!(data_type_name(99), "type 99");
    }
}
