//! A reusable runner for many rows at a time: the routing and placement hot path.
//!
//! A [`Batch`] owns everything a run needs, made once, and one output buffer per port. For a
//! dense row-wise model (see `dense.rs`) that is a buffer per value of the graph, and a run
//! allocates nothing at all. For any other, it is tract's plan for `max_rows` rows, its run
//! state (whose operators keep their scratch space between runs) and one input tensor per
//! port that tract reads without copying: a run copies the caller's rows into the input
//! tensors, lets tract evaluate the plan, and copies the outputs out, and what tract
//! allocates inside its operators is counted by `tests/alloc.rs` and explained in the crate
//! docs.

use std::fmt;
use std::sync::Arc;

use tract_core::prelude::{
    IntoTValue as _, Tensor, TractError, TractResult, TypedRunnableModel, TypedSimpleState,
};

use crate::dense::Scratch;
use crate::{Direction, Model, ModelError, Port};

/// Runs a [`Model`] on up to [`Batch::max_rows`] rows per call, reusing its buffers.
///
/// Fill each input with [`Batch::input_mut`], call [`Batch::run`], read each output with
/// [`Batch::output`]. Rows are row-major: row `r` of a port of width `w` is
/// `[r * w..(r + 1) * w]`. Input rows stay as written between runs, so a caller may rewrite
/// only the rows that changed.
///
/// A `Batch` is `Send`, and runs through `&mut`: give each thread its own. Make it once and
/// keep it. tract
/// keeps a little scratch memory per batch and per thread that runs it, freed when the batch is
/// dropped on that thread or the thread ends: a batch that runs on several threads holds one
/// per thread, and batches made and dropped over and over on hopping threads leak them. Keep a
/// batch on one thread where possible (a dedicated thread rather than a blocking pool).
pub struct Batch {
    model: Model,
    engine: Engine,
    max_rows: usize,
    inputs: Vec<Staged>,
    /// One `max_rows * width` buffer per output port.
    outputs: Vec<Vec<f32>>,
    /// The row count of the last successful run; 0 before one, and after a failed one.
    rows: usize,
}

/// Who runs the rows.
enum Engine {
    /// The model's dense plan, over these buffers.
    Dense(Scratch),
    /// tract, with one tensor per input port, `[max_rows, width]`: shared with tract only
    /// during a run, so ours to write (without a copy) between runs.
    Tract {
        state: Box<TypedSimpleState>,
        tensors: Vec<Arc<Tensor>>,
    },
}

/// One input port: the rows the caller writes.
struct Staged {
    /// `max_rows * width` values, written by the caller.
    values: Vec<f32>,
    width: usize,
}

impl fmt::Debug for Batch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batch")
            .field("model", &self.model)
            .field("max_rows", &self.max_rows)
            .field("rows", &self.rows)
            .field("dense", &matches!(self.engine, Engine::Dense(_)))
            .finish_non_exhaustive()
    }
}

impl Batch {
    /// A batch running `model`'s dense plan, which it has, for up to `max_rows` rows.
    pub(crate) fn dense(model: Model, scratch: Scratch, max_rows: usize) -> Batch {
        Batch {
            inputs: Self::staged(&model, max_rows),
            outputs: Self::output_buffers(&model, max_rows),
            model,
            engine: Engine::Dense(scratch),
            max_rows,
            rows: 0,
        }
    }

    fn staged(model: &Model, max_rows: usize) -> Vec<Staged> {
        model
            .inputs()
            .iter()
            .map(|port| Staged {
                values: vec![0.0; max_rows * port.width()],
                width: port.width(),
            })
            .collect()
    }

    fn output_buffers(model: &Model, max_rows: usize) -> Vec<Vec<f32>> {
        model
            .outputs()
            .iter()
            .map(|port| vec![0.0; max_rows * port.width()])
            .collect()
    }

    /// A batch running tract's `plan`, made for exactly `max_rows` rows of `model`.
    pub(crate) fn tract(
        model: Model,
        plan: Arc<TypedRunnableModel>,
        max_rows: usize,
    ) -> Result<Batch, ModelError> {
        let prepare = |error: TractError| ModelError::Inference(format!("{error:#}"));
        // The buffers are sized from the ports; check once that the plan's shapes agree, so
        // the copies in `run` cannot come up short.
        let shape_of =
            |fact: &tract_core::prelude::TypedFact| fact.shape.as_concrete().map(<[usize]>::to_vec);
        for (index, port) in model.inputs().iter().enumerate() {
            let fact = plan.model().input_fact(index).map_err(prepare)?;
            if shape_of(fact) != Some(vec![max_rows, port.width()]) {
                return Err(ModelError::Inference(format!(
                    "the plan for {max_rows} rows takes input {:?} as {:?}",
                    port.name(),
                    fact.shape
                )));
            }
        }
        for (index, port) in model.outputs().iter().enumerate() {
            let fact = plan.model().output_fact(index).map_err(prepare)?;
            if shape_of(fact) != Some(vec![max_rows, port.width()]) {
                return Err(ModelError::Inference(format!(
                    "the plan for {max_rows} rows computes output {:?} as {:?}",
                    port.name(),
                    fact.shape
                )));
            }
        }
        let tensors = model
            .inputs()
            .iter()
            .map(|port| {
                let tensor = Tensor::zero::<f32>(&[max_rows, port.width()]).map_err(prepare)?;
                Ok(Arc::new(tensor))
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        let state = Box::new(plan.spawn().map_err(prepare)?);
        Ok(Batch {
            inputs: Self::staged(&model, max_rows),
            outputs: Self::output_buffers(&model, max_rows),
            model,
            engine: Engine::Tract { state, tensors },
            max_rows,
            rows: 0,
        })
    }

    /// The model this batch runs.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Whether this batch runs the model's dense plan (nothing allocated per run), rather
    /// than tract's.
    pub fn is_dense(&self) -> bool {
        matches!(self.engine, Engine::Dense(_))
    }

    /// The most rows one run takes, as given to [`Model::batch`].
    pub fn max_rows(&self) -> usize {
        self.max_rows
    }

    /// The row count of the last successful [`Batch::run`]; 0 before the first and after a
    /// failed one.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The first `rows` rows of input `port` (an index into [`Model::inputs`]), for the caller
    /// to fill: `rows * width` values, row-major. They keep their values until written again.
    pub fn input_mut(&mut self, port: usize, rows: usize) -> Result<&mut [f32], ModelError> {
        self.check_rows(rows)?;
        let ports = self.inputs.len();
        let staged = self.inputs.get_mut(port).ok_or(ModelError::Port {
            direction: Direction::Input,
            port,
            ports,
        })?;
        let len = rows * staged.width;
        staged
            .values
            .get_mut(..len)
            .ok_or_else(|| ModelError::Inference(format!("input buffer shorter than {len}")))
    }

    /// Runs the model on the first `rows` rows of every input. On success, [`Batch::output`]
    /// returns `rows` rows of every output; on error, no rows.
    ///
    /// `rows` must be from 1 to [`Batch::max_rows`], or this is [`ModelError::Rows`]. Rows
    /// past `rows` are run as zeros and their outputs dropped.
    pub fn run(&mut self, rows: usize) -> Result<(), ModelError> {
        self.rows = 0;
        self.check_rows(rows)?;
        match &mut self.engine {
            Engine::Dense(scratch) => {
                let dense = self.model.dense().ok_or_else(|| {
                    ModelError::Inference("a dense batch of a model without a dense plan".into())
                })?;
                dense.run(
                    scratch,
                    rows,
                    self.inputs.iter().map(|staged| &staged.values[..]),
                    self.outputs.iter_mut().map(|output| &mut output[..]),
                );
            }
            Engine::Tract { state, tensors } => {
                let result = execute(
                    state,
                    tensors,
                    &self.inputs,
                    &mut self.outputs,
                    &self.model,
                    rows,
                );
                // Whatever happened, drop the turn's values: the next run starts clean, and the
                // input tensors are ours alone again.
                let reset = state.reset_turn();
                result
                    .and(reset)
                    .map_err(|error| ModelError::Inference(format!("{error:#}")))?;
            }
        }
        self.rows = rows;
        Ok(())
    }

    /// The first [`Batch::rows`] rows of output `port` (an index into [`Model::outputs`]) from
    /// the last run, row-major; empty before a successful run.
    pub fn output(&self, port: usize) -> Result<&[f32], ModelError> {
        let values = self.outputs.get(port).ok_or(ModelError::Port {
            direction: Direction::Output,
            port,
            ports: self.outputs.len(),
        })?;
        let width = self.model.outputs().get(port).map_or(0, Port::width);
        Ok(values.get(..self.rows * width).unwrap_or_default())
    }

    /// Runs a model of one input and one output over any number of rows: `input` holds them
    /// row-major (a whole number of rows of the input's width), run [`Batch::max_rows`] at a
    /// time. After each run, `each` gets the index of that run's first row and its output rows.
    ///
    /// An `input` that is not a whole number of rows is [`ModelError::InputShape`], and
    /// nothing runs. An empty one runs nothing.
    pub fn run_rows(
        &mut self,
        input: &[f32],
        mut each: impl FnMut(usize, &[f32]),
    ) -> Result<(), ModelError> {
        let width = self.model.inputs().first().map_or(0, Port::width);
        if width == 0 || !input.len().is_multiple_of(width) {
            return Err(ModelError::InputShape {
                expected: width,
                got: input.len(),
            });
        }
        let step = self.max_rows;
        for (chunk, rows) in input.chunks(step * width).enumerate() {
            let n = rows.len() / width;
            self.input_mut(0, n)?.copy_from_slice(rows);
            self.run(n)?;
            each(chunk * step, self.output(0)?);
        }
        Ok(())
    }

    fn check_rows(&self, rows: usize) -> Result<(), ModelError> {
        if rows == 0 || rows > self.max_rows {
            return Err(ModelError::Rows {
                rows,
                max_rows: self.max_rows,
            });
        }
        Ok(())
    }
}

/// One run of tract's plan over the first `rows` rows of `inputs`, into `outputs`.
fn execute(
    state: &mut TypedSimpleState,
    tensors: &mut [Arc<Tensor>],
    inputs: &[Staged],
    outputs: &mut [Vec<f32>],
    model: &Model,
    rows: usize,
) -> TractResult<()> {
    for (index, (staged, tensor)) in inputs.iter().zip(tensors.iter_mut()).enumerate() {
        let len = rows * staged.width;
        // Between runs tract holds no reference to the tensor, so this writes it in place;
        // should an operator ever keep one, this copies it rather than change what it sees.
        let target_tensor = Arc::make_mut(tensor);
        let mut view = target_tensor.try_as_plain_ram_mut()?;
        let target = view.as_slice_mut::<f32>()?;
        tract_core::internal::ensure!(
            target.len() >= len && staged.values.len() >= len,
            "input {index} holds {} values, {len} needed",
            target.len()
        );
        let (filled, padding) = target.split_at_mut(len);
        filled.copy_from_slice(&staged.values[..len]);
        padding.fill(0.0);
        state.set_input(index, Arc::clone(tensor).into_tvalue())?;
    }
    state.exec()?;
    for (index, buffer) in outputs.iter_mut().enumerate() {
        let width = model.outputs().get(index).map_or(0, Port::width);
        let len = rows * width;
        let value = state.output(index)?;
        let view = value.try_as_plain_ram()?;
        let computed = view.as_slice::<f32>()?;
        tract_core::internal::ensure!(
            computed.len() >= len && buffer.len() >= len,
            "output {index} holds {} values, {len} needed",
            computed.len()
        );
        buffer[..len].copy_from_slice(&computed[..len]);
    }
    Ok(())
}
