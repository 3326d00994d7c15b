//! On-device inference: load an ONNX model once, then run it on `f32` inputs.
//!
//! This crate is the fleet's boundary around [tract]: the node daemon hands it model bytes and
//! input vectors, and gets back output vectors or a [`ModelError`].
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
//!   `Model` can be shared between threads.
//! - **A bad model file is an error, not a panic.** Files larger than [`MAX_MODEL_BYTES`] are
//!   refused before parsing. The file is decoded by this crate (`proto.rs`), with every length
//!   checked and the number of decoded items capped, then translated node by node into a tract
//!   graph (`onnx.rs`); anything malformed, unsupported or inconsistent becomes
//!   [`ModelError::Invalid`] naming the node or field. tract only ever sees a graph built
//!   through its typed API. A model of up to 1024 nodes may still ask for large tensors while it
//!   is optimised: load only models from a source the node trusts.
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
//! One `f32` input of shape `[1, N]` (the batch dimension may be declared as `1` or left
//! symbolic; it is fixed to 1 at load time) and one `f32` output whose shape is fully known
//! after that, returned flattened.
//!
//! [tract]: https://github.com/sonos/tract

#![forbid(unsafe_code)]

mod onnx;
mod proto;

use std::fmt;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tract_core::prelude::{
    DatumType, IntoRunnable as _, IntoTValue as _, Tensor, TractError, TypedRunnableModel, tvec,
};

/// The largest model file, in bytes, that [`Model::load`] and [`Model::from_bytes`] accept.
///
/// Checked before any parsing, so an oversized or endless file costs at most this much memory.
/// 16 MiB is far above the small models meant for edge nodes (the shipped test model is under
/// 1 KiB) and far below what would strain a node's memory.
pub const MAX_MODEL_BYTES: u64 = 16 * 1024 * 1024;

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
    /// supported set, a graph that does not type-check, or not one `[1, N]` `f32` input and one `f32`
    /// output. Loading the same bytes again fails the same way.
    #[error("invalid model: {0}")]
    Invalid(String),

    /// The input passed to [`Model::run`] does not have the model's input length. The caller's
    /// mistake: nothing was run.
    #[error("model takes {expected} input values, got {got}")]
    InputShape {
        /// The model's input length, [`Model::input_len`].
        expected: usize,
        /// The length of the slice that was passed.
        got: usize,
    },

    /// tract failed while running a model that loaded fine. Not expected for a model that passed
    /// load-time checks; the message is tract's.
    #[error("inference failed: {0}")]
    Inference(String),
}

/// An ONNX model, parsed, type-checked and optimised into a runnable plan.
///
/// Loading does all the expensive work once; [`Model::run`] then only executes the plan.
/// `Model` is immutable, `Send` and `Sync`: share it with an `Arc` rather than loading it twice.
#[derive(Clone)]
pub struct Model {
    plan: Arc<TypedRunnableModel>,
    input_len: usize,
    output_len: usize,
}

impl fmt::Debug for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Model")
            .field("input_len", &self.input_len)
            .field("output_len", &self.output_len)
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
        let onnx::Translated { model, input_len } =
            onnx::translate(&proto).map_err(ModelError::Invalid)?;
        let model = model.into_optimized().map_err(invalid)?;

        let output = model.output_fact(0).map_err(invalid)?;
        if output.datum_type != DatumType::F32 {
            return Err(ModelError::Invalid(format!(
                "output must be f32, the model's is {:?}",
                output.datum_type
            )));
        }
        let output_len = output
            .shape
            .as_concrete()
            .map(|dims| dims.iter().product::<usize>())
            .ok_or_else(|| {
                ModelError::Invalid(format!(
                    "output shape {:?} is not fully known for a [1, {input_len}] input",
                    output.shape
                ))
            })?;

        let plan = model.into_runnable().map_err(invalid)?;
        Ok(Model {
            plan,
            input_len,
            output_len,
        })
    }

    /// The number of `f32` values [`Model::run`] takes: `N` in the input shape `[1, N]`.
    pub fn input_len(&self) -> usize {
        self.input_len
    }

    /// The number of `f32` values [`Model::run`] returns: the output shape, flattened.
    pub fn output_len(&self) -> usize {
        self.output_len
    }

    /// Runs the model on one input row and returns the flattened output.
    ///
    /// `input` must hold exactly [`Model::input_len`] values, or [`ModelError::InputShape`] is
    /// returned and nothing runs.
    pub fn run(&self, input: &[f32]) -> Result<Vec<f32>, ModelError> {
        let mut out = Vec::with_capacity(self.output_len);
        self.run_into(input, &mut out)?;
        Ok(out)
    }

    /// Like [`Model::run`], but writes the output into `out`, replacing its contents and reusing
    /// its allocation. On error `out` is left empty.
    pub fn run_into(&self, input: &[f32], out: &mut Vec<f32>) -> Result<(), ModelError> {
        out.clear();
        if input.len() != self.input_len {
            return Err(ModelError::InputShape {
                expected: self.input_len,
                got: input.len(),
            });
        }
        let inference = |error: TractError| ModelError::Inference(format!("{error:#}"));
        let input = Tensor::from_shape(&[1, self.input_len], input).map_err(inference)?;
        let outputs = self
            .plan
            .run(tvec![input.into_tvalue()])
            .map_err(inference)?;
        let output = outputs
            .first()
            .ok_or_else(|| ModelError::Inference("the plan produced no output".to_owned()))?;
        let values = output
            .try_as_plain_ram()
            .and_then(|view| view.as_slice::<f32>())
            .map_err(inference)?;
        if values.len() != self.output_len {
            return Err(ModelError::Inference(format!(
                "the plan produced {} values, the model declares {}",
                values.len(),
                self.output_len
            )));
        }
        out.extend_from_slice(values);
        Ok(())
    }
}
