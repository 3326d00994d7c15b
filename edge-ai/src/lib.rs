//! On-device inference: load an ONNX model once, then run it on rows of `f32` features.
//!
//! This crate is the fleet's boundary around [tract]: the node daemon hands it model bytes and
//! input rows, and gets back output rows or a [`ModelError`]. Routing and placement score many
//! candidates per decision: they keep a [`Batch`] and run all candidates in one call.
//!
//! # Invariants
//!
//! - **Only this crate links tract.** No tract type appears in the public API, so the rest of the
//!   workspace depends on `edge-ai` alone and tract can be upgraded or swapped here.
//! - **No network I/O.** The only I/O is [`Model::load`] reading the one file it is given.
//!   Models are parsed from bytes, so an ONNX file that points at external tensor data is refused
//!   rather than followed to other files.
//! - **Inference is a pure function of model and input.** A [`Model`] is immutable once loaded;
//!   every [`Model::run`] starts from fresh state, so calls do not influence each other and a
//!   `Model` can be shared between threads. A [`Batch`] keeps buffers and scratch memory between
//!   runs, never values: a run's outputs depend on that run's input rows alone.
//! - **A bad model file is an error, not a panic.** Files larger than [`MAX_MODEL_BYTES`] are
//!   refused before parsing. The file is decoded by this crate (`proto.rs`), with every length
//!   checked and the number of decoded items capped, then translated node by node into a tract
//!   graph (`onnx.rs`); anything malformed, unsupported or inconsistent becomes
//!   [`ModelError::Invalid`] naming the node, field or metadata key. tract only ever sees a
//!   graph built through its typed API. A model of up to 1024 nodes may still ask for large
//!   tensors while it is optimised: load only models from a source the node trusts.
//! - **A model that loads reproduces its golden rows.** When a model declares golden rows, they
//!   run through the loaded plan inside [`Model::from_bytes`] (the dense path, if the model
//!   takes it); a model that computes something else does not load.
//! - **tract is the reference.** The dense path (below) runs a model only when it computes
//!   what tract does on the rows checked at load.
//! - **A batch run allocates nothing of ours.** See [the hot path](#the-hot-path).
//!
//! Inference runs on the caller's thread and blocks it: async callers with large models should
//! use a blocking-task pool.
//!
//! # Supported models
//!
//! ONNX files (operator set 7 and later) built from the operators routing and placement models
//! are made of: Gemm, MatMul, Add, Sub, Mul, Div, Relu, Sigmoid, Tanh, Softmax, Identity and
//! Constant, with `f32` weights stored in the file. Any other operator is refused by name. This
//! is what keeps tract's ONNX front end and its hundreds of operators out of the node binary
//! (4.3 MB of the aarch64 binary; see `benches/RESULTS.md`).
//!
//! One or more inputs and one or more outputs (at most 64 of each), the [`Port`]s, all `f32` of
//! shape `[batch, width]` with a fixed width of at most [`MAX_PORT_WIDTH`]. The batch dimension is declared either symbolic
//! (a name, or left unknown) by every input, and then a [`Batch`] runs up to
//! [`MAX_BATCH_ROWS`] rows per call, or as `1` by every input, and then the model runs one row
//! at a time. A numeric batch other than 1 (a model exported for batches of exactly 4, say) is
//! refused: export it with a symbolic batch. Each output must come out as `[batch, width]`:
//! one output row per input row.
//!
//! [`Model::run`] keeps the single-row interface of the first models: one row of every input
//! concatenated in port order, [`Model::input_len`] values in all, and one row of every output
//! back, [`Model::output_len`] values. For a one-input, one-output model that is just its row.
//!
//! # Declared metadata
//!
//! A model may describe itself in its ONNX `metadata_props` (string key, string value). Keys
//! starting `edge.` are edge-ai's; a key in that space not listed here is refused, so a typo
//! does not silently disable a check. Other keys are ignored.
//!
//! | key | value |
//! | --- | --- |
//! | `edge.purpose` | what the model is for, one word: `route`, `place`. [`Model::purpose`] |
//! | `edge.input.NAME` | the columns of input `NAME`: `feature:unit,feature:unit,...`, one per column (`peak_ewma_ms:ms,in_flight:requests`) |
//! | `edge.output.NAME` | the same for output `NAME` |
//! | `edge.golden.input.NAME` | rows for input `NAME`: values by `,`, rows by `;` (`0.5,1,-2;3,0,1e-3`) |
//! | `edge.golden.output.NAME` | the rows output `NAME` must give for them |
//! | `edge.golden.tolerance` | relative tolerance of the golden check, default `1e-4` |
//!
//! Feature names and units are printable ASCII without spaces, `,`, `:` or `;`; a plain number
//! has unit `1`. A port's feature count must equal its width. Features are declared for every
//! port or for none, and so are golden rows, all with the same row count (at most
//! [`MAX_GOLDEN_ROWS`]) and finite values. At load, every golden output must be within
//! `tolerance * max(1, |expected|)` of what the plan computes, or the load fails naming the
//! port, row, column, expected and computed value.
//!
//! A caller checks that a model is the one it was written for with [`Model::expect_schema`]:
//! purpose, ports in order, widths, then each column's feature and unit, reporting the first
//! difference as a [`SchemaMismatch`]. What a model does not declare is not compared: a model
//! without features (the built-in tiny MLP) passes on port names and widths alone, and one
//! without `edge.purpose` on any purpose.
//!
//! The metadata is bounded before it is read: at most [`MAX_METADATA_ENTRIES`] entries, keys up
//! to [`MAX_METADATA_KEY_BYTES`], values up to [`MAX_METADATA_VALUE_BYTES`].
//!
//! # The hot path
//!
//! Routing and placement models are dense and row-wise: products of the rows by constant
//! weights, element-wise arithmetic with constants, activations. For such a graph (the list
//! is in `dense.rs`; every model shipped here is one) a [`Batch`] does not use tract at all:
//! it runs the graph step by step over buffers it made once, and a run allocates nothing.
//! tract's plan costs a fixed amount per operator on top of the arithmetic (the routing model
//! is 31 plan steps for a few thousand multiply-adds per candidate), which was nearly all of a
//! routing decision. At load, the dense path runs the golden inputs and rows of values up to
//! ±1000 next to tract, and is used only if the two agree within 1e-3 (relative, over 1):
//! they sum in different orders and tract approximates its sigmoid, so they differ in the
//! last digits. [`Model::is_dense`] and [`Batch::is_dense`] say which path runs;
//! [`Model::tract_batch`] runs tract's plan anyway, for comparison (`tests/dense.rs` compares
//! the two on every model that loads).
//!
//! For any other graph, [`Model::batch`] optimises the graph for exactly `max_rows` rows and spawns one tract run
//! state, with an input tensor and an output buffer per port, all kept by the [`Batch`]. A
//! [`Batch::run`] copies the caller's rows into the input tensors (rows past the count asked
//! for are zero), has tract evaluate the plan, and copies each output's rows out; edge-ai
//! allocates nothing there (`tests/alloc.rs` checks it on a graph with no operator: 0).
//!
//! tract's operators still allocate their results: per matrix product (a Gemm with its bias
//! and Relu fused), 6 allocations to repack the activations into the kernel's layout and 2
//! for the product, freed within the run. The 13 -> 16 -> 16 -> 2 routing MLP run by tract
//! makes 24 per run,
//! about 5 KB; tract 0.23 has no way to hand an operator a buffer for its result. What it does
//! reuse, the matrix kernels' scratch space, lives as long as the batch's run state. Fixing the
//! row count rather than leaving it symbolic saves 4 more per run (tract binds the symbol
//! anew on every run) and lets tract pick its kernels for that size; the price is that a run of
//! fewer rows costs as much as `max_rows`, so size a batch to the usual candidate count.
//!
//! That scratch space is kept per thread and per run state (a few KB): keep a batch on one
//! thread where you can. A batch run on another thread allocates scratch there on its next run,
//! and the scratch it leaves on a thread is freed when the batch is dropped on that thread or
//! when the thread ends, not before: a batch made once and run from a pool of `n` threads holds
//! up to `n` of them; batches made and dropped over and over on hopping threads leak them.
//!
//! [tract]: https://github.com/sonos/tract

#![forbid(unsafe_code)]

mod batch;
mod dense;
mod metadata;
mod onnx;
mod proto;

use std::collections::HashMap;
use std::fmt;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tract_core::prelude::{
    DatumType, IntoRunnable as _, Symbol, TDim, TractError, TypedModel, TypedRunnableModel,
};

pub use batch::Batch;
pub use metadata::{Direction, ExpectedPort, Feature, PortSchema, Schema, SchemaMismatch};
pub use onnx::OPERATORS;

/// The largest model file, in bytes, that [`Model::load`] and [`Model::from_bytes`] accept.
///
/// Checked before any parsing, so an oversized or endless file costs at most this much memory.
/// 16 MiB is far above the small models meant for edge nodes (the shipped test model is under
/// 1 KiB) and far below what would strain a node's memory.
pub const MAX_MODEL_BYTES: u64 = 16 * 1024 * 1024;

/// The most `metadata_props` entries a model may have, `edge.*` or not.
pub const MAX_METADATA_ENTRIES: usize = 64;

/// The longest `metadata_props` key, in bytes.
pub const MAX_METADATA_KEY_BYTES: usize = 1024;

/// The longest `metadata_props` value, in bytes: room for 64 golden rows of a few hundred
/// columns.
pub const MAX_METADATA_VALUE_BYTES: usize = 64 * 1024;

/// The most golden rows (`edge.golden.*`) a model may declare; they all run at every load.
pub const MAX_GOLDEN_ROWS: usize = 64;

/// The most rows a [`Batch`] may hold. Placement scores every node of a fleet in one call;
/// the cap bounds the buffers a caller can ask for.
pub const MAX_BATCH_ROWS: usize = 65_536;

/// The widest port a model may have, in values per row. Routing and placement models have
/// tens of features; the cap keeps a batch's buffer sizes (rows x widths) far from overflow.
pub const MAX_PORT_WIDTH: usize = 65_536;

/// The most values a [`Batch`]'s rows may hold, all ports together: 16 Mi `f32`, 64 MiB. A
/// model with wide ports gets fewer rows ([`Model::max_batch_rows`]).
pub const MAX_BATCH_VALUES: usize = 1 << 24;

/// The model a node loads when nothing else is configured: the tiny MLP in `models/` (8 inputs,
/// one output; see `models/make_tiny_mlp.py`). Shipping it inside the binary means every node
/// starts with a working model and the same load path as a trained one, so its cost in size,
/// memory and start time is measured from the first build.
pub const BUILTIN_MODEL: &[u8] = include_bytes!("../models/tiny-mlp.onnx");

/// Why a model could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The model is larger than [`MAX_MODEL_BYTES`]; it was not parsed.
    ///
    /// `len` is the size in bytes; when the file was found too large while reading (it grew, or
    /// is not a regular file), it is the number of bytes read, a lower bound.
    #[error("model is {len} bytes, over the {max} byte limit")]
    TooLarge {
        /// Size of the model in bytes (a lower bound if found while reading).
        len: u64,
        /// The limit, [`MAX_MODEL_BYTES`].
        max: u64,
    },

    /// The model file could not be opened or read. May be transient (retry) or a wrong path.
    #[error("cannot read model file {}", path.display())]
    Io {
        /// The file [`Model::load`] was given.
        path: PathBuf,
        /// What the operating system reported.
        #[source]
        source: std::io::Error,
    },

    /// The bytes are not a model this crate can run: not valid ONNX, an operator outside the
    /// supported set, a graph that does not type-check, ports that are not `f32` `[batch,
    /// width]`, `edge.*` metadata that does not parse or does not fit the ports, or golden rows
    /// the model does not reproduce. Loading the same bytes again fails the same way.
    #[error("invalid model: {0}")]
    Invalid(String),

    /// The input passed to [`Model::run`] does not have the model's input length, or the one
    /// passed to [`Batch::run_rows`] is not a whole number of rows. The caller's mistake:
    /// nothing was run.
    #[error("model takes {expected} input values (or a multiple, by rows), got {got}")]
    InputShape {
        /// The model's input length, [`Model::input_len`]; for [`Batch::run_rows`], the width
        /// of one row.
        expected: usize,
        /// The length of the slice that was passed.
        got: usize,
    },

    /// A row count outside what the model or the [`Batch`] takes: 0, more than
    /// [`Batch::max_rows`], or a batch larger than [`Model::max_batch_rows`]. The caller's
    /// mistake: nothing was run.
    #[error("{rows} rows asked for; 1 to {max_rows} are possible")]
    Rows {
        /// The row count asked for.
        rows: usize,
        /// The most rows possible there.
        max_rows: usize,
    },

    /// A port index the model does not have. The caller's mistake: nothing was run.
    #[error("the model has no {direction} port {port}; it has {ports}")]
    Port {
        /// Inputs or outputs.
        direction: Direction,
        /// The index asked for.
        port: usize,
        /// How many ports the model has on that side.
        ports: usize,
    },

    /// tract failed while preparing or running a model that loaded fine. Not expected for a
    /// model that passed load-time checks; the message is tract's.
    #[error("inference failed: {0}")]
    Inference(String),
}

/// A graph input or output: a name and a width. Every port is `f32` of shape `[rows, width]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    name: String,
    width: usize,
}

impl Port {
    pub(crate) fn new(name: String, width: usize) -> Port {
        Port { name, width }
    }

    /// The port's name in the graph.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The number of `f32` values in one row of this port.
    pub fn width(&self) -> usize {
        self.width
    }
}

/// An ONNX model, parsed, type-checked, checked against its golden rows and optimised into a
/// runnable plan.
///
/// Loading does all the expensive work once; [`Model::run`] then only executes the plan, and
/// [`Model::batch`] prepares a plan for many rows. `Model` is immutable, `Send` and `Sync`, and
/// a clone shares the loaded plan: clone it rather than loading it twice.
#[derive(Clone)]
pub struct Model {
    inner: Arc<Loaded>,
}

struct Loaded {
    /// The graph with its batch dimension symbolic, decluttered, from which batch plans are
    /// made; `None` when the model runs one row at a time.
    batched: Option<(TypedModel, Symbol)>,
    /// The optimised plan for one row.
    single: Arc<TypedRunnableModel>,
    /// The graph as dense row-wise steps, when it is one and agrees with tract (`dense.rs`):
    /// what batches run.
    dense: Option<dense::Dense>,
    inputs: Vec<Port>,
    outputs: Vec<Port>,
    input_len: usize,
    output_len: usize,
    declared: metadata::Declared,
}

impl fmt::Debug for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Model")
            .field("inputs", &self.inner.inputs)
            .field("outputs", &self.inner.outputs)
            .field("max_batch_rows", &self.max_batch_rows())
            .field("purpose", &self.purpose())
            .finish_non_exhaustive()
    }
}

impl Model {
    /// Reads and loads the ONNX model at `path`.
    ///
    /// Files over [`MAX_MODEL_BYTES`] are refused from their metadata when possible, and in any
    /// case no more than `MAX_MODEL_BYTES + 1` bytes are ever read.
    pub fn load(path: &Path) -> Result<Model, ModelError> {
        let io_error = |source| ModelError::Io {
            path: path.to_owned(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io_error)?;
        let declared_len = file.metadata().map_err(io_error)?.len();
        if declared_len > MAX_MODEL_BYTES {
            return Err(ModelError::TooLarge {
                len: declared_len,
                max: MAX_MODEL_BYTES,
            });
        }
        // The metadata can lie (the file grows, or is a pipe or a device), so bound the read too.
        let mut bytes = Vec::with_capacity(usize::try_from(declared_len).unwrap_or(0));
        file.take(MAX_MODEL_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(io_error)?;
        Model::from_bytes(&bytes)
    }

    /// Loads an ONNX model from its serialized bytes.
    ///
    /// When the model declares golden rows (`edge.golden.*`), they are run through the loaded
    /// plan before this returns, and a model that does not reproduce them is
    /// [`ModelError::Invalid`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Model, ModelError> {
        let len = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
        if len > MAX_MODEL_BYTES {
            return Err(ModelError::TooLarge {
                len,
                max: MAX_MODEL_BYTES,
            });
        }
        let invalid = |error: TractError| ModelError::Invalid(format!("{error:#}"));

        let proto = proto::decode_model(bytes).map_err(|error| {
            ModelError::Invalid(format!("not an ONNX model edge-ai reads: {error}"))
        })?;
        let translated = onnx::translate(&proto).map_err(ModelError::Invalid)?;
        let named = |ports: &[onnx::TranslatedPort]| -> Vec<(String, usize)> {
            ports.iter().map(|p| (p.name.clone(), p.width)).collect()
        };
        let dense = proto.graph.as_ref().and_then(|graph| {
            dense::Dense::build(
                graph,
                translated.opset,
                &named(&translated.inputs),
                &named(&translated.outputs),
            )
        });
        let ports = |ports: Vec<onnx::TranslatedPort>| -> Vec<Port> {
            ports
                .into_iter()
                .map(|port| Port::new(port.name, port.width))
                .collect()
        };
        let inputs = ports(translated.inputs);
        let outputs = ports(translated.outputs);
        // The declarations are checked before the graph is optimised: it is the cheaper check.
        let declared =
            metadata::parse(&proto.metadata, &inputs, &outputs).map_err(ModelError::Invalid)?;

        let (batched, single) = match translated.batch {
            Some(symbol) => {
                let graph = translated.model.into_decluttered().map_err(invalid)?;
                let single = plan_for_rows(&graph, &symbol, 1).map_err(invalid)?;
                (Some((graph, symbol)), single)
            }
            None => {
                let single = translated
                    .model
                    .into_optimized()
                    .and_then(|model| model.into_runnable())
                    .map_err(invalid)?;
                (None, single)
            }
        };
        for (index, port) in outputs.iter().enumerate() {
            let fact = single.model().output_fact(index).map_err(invalid)?;
            if fact.datum_type != DatumType::F32 {
                return Err(ModelError::Invalid(format!(
                    "output {:?} must be f32, the model's is {:?}",
                    port.name, fact.datum_type
                )));
            }
        }

        let golden = declared.golden.clone();
        let mut model = Model {
            inner: Arc::new(Loaded {
                batched,
                single,
                dense: None,
                input_len: inputs.iter().map(Port::width).sum(),
                output_len: outputs.iter().map(Port::width).sum(),
                inputs,
                outputs,
                declared,
            }),
        };
        if let Some(dense) = dense
            && model.agrees_with_tract(&dense, golden.as_ref())
            && let Some(loaded) = Arc::get_mut(&mut model.inner)
        {
            loaded.dense = Some(dense);
        }
        if let Some(golden) = golden {
            model.check_golden(&golden)?;
        }
        Ok(model)
    }

    /// The graph's inputs, in the order the model file lists them. [`Batch::input_mut`] takes
    /// an index into this slice.
    pub fn inputs(&self) -> &[Port] {
        &self.inner.inputs
    }

    /// The graph's outputs, in the order the model file lists them. [`Batch::output`] takes an
    /// index into this slice.
    pub fn outputs(&self) -> &[Port] {
        &self.inner.outputs
    }

    /// The index of the input named `name`, if the model has one.
    pub fn input_index(&self, name: &str) -> Option<usize> {
        self.inner.inputs.iter().position(|port| port.name == name)
    }

    /// The index of the output named `name`, if the model has one.
    pub fn output_index(&self, name: &str) -> Option<usize> {
        self.inner.outputs.iter().position(|port| port.name == name)
    }

    /// The number of `f32` values [`Model::run`] takes: one row of every input, in port order.
    /// For a single-input model, `N` in its shape `[1, N]`.
    pub fn input_len(&self) -> usize {
        self.inner.input_len
    }

    /// The number of `f32` values [`Model::run`] returns: one row of every output, in port
    /// order.
    pub fn output_len(&self) -> usize {
        self.inner.output_len
    }

    /// The most rows a [`Batch`] of this model may hold: 1 when its inputs declare a batch of
    /// `1`; with a symbolic batch, [`MAX_BATCH_ROWS`], or fewer for ports so wide that more rows
    /// would hold over [`MAX_BATCH_VALUES`].
    pub fn max_batch_rows(&self) -> usize {
        if self.inner.batched.is_some() {
            // At most 64 ports of MAX_PORT_WIDTH a side: a row holds at most 2^23 values.
            let row = (self.inner.input_len + self.inner.output_len).max(1);
            (MAX_BATCH_VALUES / row).clamp(1, MAX_BATCH_ROWS)
        } else {
            1
        }
    }

    /// What the model is for, from its `edge.purpose` metadata (`route`, `place`, ...).
    pub fn purpose(&self) -> Option<&str> {
        self.inner.declared.purpose.as_deref()
    }

    /// The features behind every port's columns, from its `edge.input.*` and `edge.output.*`
    /// metadata; `None` when the model declares none.
    pub fn schema(&self) -> Option<&Schema> {
        self.inner.declared.schema.as_ref()
    }

    /// Checks that this model is the one the caller was written for: its purpose (when the
    /// model declares one), its input and output ports in order, their widths and, when the
    /// model declares a schema, every column's feature name and unit. Returns the first
    /// difference.
    ///
    /// A model that declares no schema passes on its port names and widths alone, and one
    /// without `edge.purpose` on any `purpose`: what the model does not declare cannot be
    /// compared. The built-in tiny MLP declares neither.
    ///
    /// ```
    /// # let model = edge_ai::Model::from_bytes(edge_ai::BUILTIN_MODEL)?;
    /// let features: &[(&str, &str)] = &[("f0", "1"); 8];
    /// model.expect_schema("route", &[("x", features)], &[("y", &[("score", "1")])])?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn expect_schema(
        &self,
        purpose: &str,
        inputs: &[ExpectedPort<'_>],
        outputs: &[ExpectedPort<'_>],
    ) -> Result<(), SchemaMismatch> {
        metadata::expect(
            &self.inner.declared,
            [&self.inner.inputs, &self.inner.outputs],
            purpose,
            [inputs, outputs],
        )
    }

    /// As [`Model::expect_schema`] for a model of one input and one output, whatever their
    /// names: the shape the routing, warming and placement models share. A declared purpose
    /// that differs is said first (the most telling difference: a model made for another
    /// job), then a shape that differs ([`SchemaMismatch::PortCount`], then
    /// [`SchemaMismatch::Width`]), then the declared columns.
    ///
    /// ```
    /// # let model = edge_ai::Model::from_bytes(edge_ai::BUILTIN_MODEL)?;
    /// let features: &[(&str, &str)] = &[("f0", "1"); 8];
    /// model.expect_one_to_one("route", features, &[("score", "1")])?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn expect_one_to_one(
        &self,
        purpose: &str,
        features: &[(&str, &str)],
        outputs: &[(&str, &str)],
    ) -> Result<(), SchemaMismatch> {
        if let Some(declared) = self.purpose()
            && declared != purpose
        {
            return Err(SchemaMismatch::Purpose {
                expected: purpose.to_owned(),
                declared: declared.to_owned(),
            });
        }
        let (ins, outs) = (self.inputs(), self.outputs());
        let ([input], [output]) = (ins, outs) else {
            let (direction, got) = if ins.len() == 1 {
                (Direction::Output, outs.len())
            } else {
                (Direction::Input, ins.len())
            };
            return Err(SchemaMismatch::PortCount {
                direction,
                expected: 1,
                got,
            });
        };
        for (direction, port, expected) in [
            (Direction::Input, input, features.len()),
            (Direction::Output, output, outputs.len()),
        ] {
            if port.width() != expected {
                return Err(SchemaMismatch::Width {
                    direction,
                    port: port.name().to_owned(),
                    expected,
                    got: port.width(),
                });
            }
        }
        self.expect_schema(
            purpose,
            &[(input.name(), features)],
            &[(output.name(), outputs)],
        )
    }

    /// [`Model::expect_one_to_one`] with the difference said for an operator: a shape that
    /// differs as "a `what` takes one input of N features and gives one output of M", the
    /// rest as [`SchemaMismatch`] says it.
    pub fn check_one_to_one(
        &self,
        what: &str,
        purpose: &str,
        features: &[(&str, &str)],
        outputs: &[(&str, &str)],
    ) -> Result<(), String> {
        self.expect_one_to_one(purpose, features, outputs)
            .map_err(|e| match e {
                SchemaMismatch::PortCount { .. } | SchemaMismatch::Width { .. } => format!(
                    "a {what} takes one input of {} features and gives one output of {}",
                    features.len(),
                    outputs.len()
                ),
                other => other.to_string(),
            })
    }

    /// Prepares a [`Batch`] that runs up to `max_rows` rows per call without allocating.
    ///
    /// This optimises the graph for exactly `max_rows` rows (about a millisecond for a small
    /// MLP), so make a batch once and keep it. A run of fewer rows computes `max_rows` rows all
    /// the same, the missing ones zero: pick `max_rows` close to the usual number of
    /// candidates. `max_rows` must be from 1 to [`Model::max_batch_rows`], or this is
    /// [`ModelError::Rows`].
    pub fn batch(&self, max_rows: usize) -> Result<Batch, ModelError> {
        let limit = self.max_batch_rows();
        if max_rows == 0 || max_rows > limit {
            return Err(ModelError::Rows {
                rows: max_rows,
                max_rows: limit,
            });
        }
        if let Some(dense) = &self.inner.dense {
            return Ok(Batch::dense(
                self.clone(),
                dense.scratch(max_rows),
                max_rows,
            ));
        }
        self.tract_batch(max_rows)
    }

    /// Whether batches of this model run its dense plan, allocating nothing per run, rather
    /// than tract's (see [`Batch`]).
    pub fn is_dense(&self) -> bool {
        self.inner.dense.is_some()
    }

    pub(crate) fn dense(&self) -> Option<&dense::Dense> {
        self.inner.dense.as_ref()
    }

    /// A batch that runs tract's plan even for a model the dense path takes: the reference,
    /// for comparisons and benchmarks. Otherwise as [`Model::batch`].
    pub fn tract_batch(&self, max_rows: usize) -> Result<Batch, ModelError> {
        let plan = match &self.inner.batched {
            Some((graph, symbol)) if max_rows > 1 => plan_for_rows(graph, symbol, max_rows)
                .map_err(|error| {
                    ModelError::Inference(format!("preparing {max_rows} rows: {error:#}"))
                })?,
            _ => Arc::clone(&self.inner.single),
        };
        Batch::tract(self.clone(), plan, max_rows)
    }

    /// Runs the model on one row and returns the output row.
    ///
    /// `input` holds one row of every input port, concatenated in port order: for a
    /// single-input model, exactly that input's row. It must hold [`Model::input_len`] values,
    /// or [`ModelError::InputShape`] is returned and nothing runs. The output is one row of
    /// every output port, concatenated the same way.
    ///
    /// Each call prepares its own run state, which allocates: code that runs a model in a loop
    /// keeps a [`Batch`] instead.
    pub fn run(&self, input: &[f32]) -> Result<Vec<f32>, ModelError> {
        let mut out = Vec::with_capacity(self.inner.output_len);
        self.run_into(input, &mut out)?;
        Ok(out)
    }

    /// Like [`Model::run`], but writes the output into `out`, replacing its contents and reusing
    /// its allocation. On error `out` is left empty.
    pub fn run_into(&self, input: &[f32], out: &mut Vec<f32>) -> Result<(), ModelError> {
        out.clear();
        if input.len() != self.inner.input_len {
            return Err(ModelError::InputShape {
                expected: self.inner.input_len,
                got: input.len(),
            });
        }
        let mut batch = self.batch(1)?;
        let mut rest = input;
        for (index, port) in self.inner.inputs.iter().enumerate() {
            let (row, after) = rest.split_at(port.width);
            batch.input_mut(index, 1)?.copy_from_slice(row);
            rest = after;
        }
        batch.run(1)?;
        for index in 0..self.inner.outputs.len() {
            out.extend_from_slice(batch.output(index)?);
        }
        Ok(())
    }

    /// Runs the golden rows and compares every output with what the model declares.
    /// Whether `dense` computes what tract does for this model, on its golden inputs (if it
    /// has them) and on rows of values from -1000 to 1000: within 1e-3 of tract's value (times
    /// its magnitude, when over 1), and not a number exactly where tract's is not. The two sum
    /// in different orders and tract approximates its sigmoid, so they differ in the last
    /// digits (up to about 1.5e-4 on the trained routing model); a difference of meaning (a
    /// transposed weight, a broadcast the wrong way) is far larger. The golden rows are
    /// checked on the dense path after this, at the model's own tolerance.
    fn agrees_with_tract(&self, dense: &dense::Dense, golden: Option<&metadata::Golden>) -> bool {
        const ROWS: usize = 8;
        let rows = ROWS.min(self.max_batch_rows());
        let Ok(mut tract) = self.tract_batch(rows) else {
            return false;
        };
        let mut scratch = dense.scratch(rows);
        let mut outputs: Vec<Vec<f32>> = self
            .inner
            .outputs
            .iter()
            .map(|port| vec![0.0; rows * port.width()])
            .collect();
        // Probes: the golden rows, then values of growing size and both signs.
        let probes = 3;
        for probe in 0..probes {
            let mut inputs = Vec::with_capacity(self.inner.inputs.len());
            for (index, port) in self.inner.inputs.iter().enumerate() {
                let len = rows * port.width();
                let values: Vec<f32> = match golden.and_then(|g| g.inputs.get(index)) {
                    Some(g) if probe == 0 && !g.is_empty() => {
                        g.iter().copied().cycle().take(len).collect()
                    }
                    _ => (0..len)
                        .map(|i| {
                            let scale = [1.0, 30.0, 1000.0][probe];
                            let x = ((i * 7919 + probe * 104_729) % 2001) as f32 / 1000.0 - 1.0;
                            x * scale
                        })
                        .collect(),
                };
                match tract.input_mut(index, rows) {
                    Ok(target) => target.copy_from_slice(&values),
                    Err(_) => return false,
                }
                inputs.push(values);
            }
            if tract.run(rows).is_err() {
                return false;
            }
            dense.run(
                &mut scratch,
                rows,
                inputs.iter().map(|v| &v[..]),
                outputs.iter_mut().map(|o| &mut o[..]),
            );
            for (index, ours) in outputs.iter().enumerate() {
                let Ok(theirs) = tract.output(index) else {
                    return false;
                };
                let close = |a: f32, b: f32| {
                    if b.is_finite() {
                        (a - b).abs() <= 1e-3 * b.abs().max(1.0)
                    } else {
                        a == b || (a.is_nan() && b.is_nan())
                    }
                };
                if theirs.len() != ours.len()
                    || !ours.iter().zip(theirs).all(|(a, b)| close(*a, *b))
                {
                    return false;
                }
            }
        }
        true
    }

    fn check_golden(&self, golden: &metadata::Golden) -> Result<(), ModelError> {
        let failed = |message: String| ModelError::Invalid(format!("golden check: {message}"));
        // A model that runs one row at a time runs its golden rows one by one.
        let chunk = golden.rows.min(self.max_batch_rows());
        let mut batch = self.batch(chunk)?;
        let mut first = 0;
        while first < golden.rows {
            let rows = chunk.min(golden.rows - first);
            for (index, port) in self.inner.inputs.iter().enumerate() {
                let values = golden
                    .inputs
                    .get(index)
                    .and_then(|values| values.get(first * port.width..(first + rows) * port.width));
                let values = values
                    .ok_or_else(|| failed(format!("no golden rows for input {:?}", port.name)))?;
                batch.input_mut(index, rows)?.copy_from_slice(values);
            }
            batch
                .run(rows)
                .map_err(|error| failed(format!("the golden rows do not run: {error}")))?;
            for (index, port) in self.inner.outputs.iter().enumerate() {
                let got = batch.output(index)?;
                let expected = golden
                    .outputs
                    .get(index)
                    .and_then(|values| values.get(first * port.width..(first + rows) * port.width));
                let expected = expected
                    .ok_or_else(|| failed(format!("no golden rows for output {:?}", port.name)))?;
                for (position, (got, expected)) in got.iter().zip(expected).enumerate() {
                    let allowed = golden.tolerance * expected.abs().max(1.0);
                    // Expected values are finite: a NaN or infinite output never matches one.
                    if !got.is_finite() || (got - expected).abs() > allowed {
                        return Err(failed(format!(
                            "output {:?} row {} column {}: expected {expected}, got {got} \
                             (tolerance {} x max(1, |expected|))",
                            port.name,
                            first + position / port.width,
                            position % port.width,
                            golden.tolerance
                        )));
                    }
                }
            }
            first += rows;
        }
        Ok(())
    }
}

/// The optimised plan for `graph` with its batch dimension `symbol` fixed to `rows`.
///
/// A concrete row count is what keeps a run from allocating for its shapes: with the dimension
/// left symbolic, tract binds it anew on every run (a map insertion, and shape arithmetic in
/// each operator).
fn plan_for_rows(
    graph: &TypedModel,
    symbol: &Symbol,
    rows: usize,
) -> Result<Arc<TypedRunnableModel>, TractError> {
    let rows = i64::try_from(rows)?;
    let values = HashMap::from([(symbol.clone(), TDim::Val(rows))]);
    graph
        .set_symbols(&values)?
        .into_optimized()?
        .into_runnable()
}
