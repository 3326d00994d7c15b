//! The direct path for dense row-wise models: what routing and placement models are.
//!
//! tract runs a graph as a plan of operators, each of which allocates its result and pays a
//! fixed cost per call; for the routing MLP (31 plan steps, a few thousand multiply-adds per
//! candidate) that cost is nearly all of a decision. A graph made only of
//!
//! - `MatMul` and `Gemm` of an activation `[rows, k]` by constant weights (and a constant
//!   bias broadcast over the rows), a `MatMul` whose weights select one input column per
//!   output column becoming a gather;
//! - `Add`, `Sub`, `Mul` and `Div` of activations of one width, or of an activation and a
//!   constant broadcast over its rows (a scalar, `[w]` or `[1, w]`);
//! - `Relu`, `Sigmoid`, `Tanh`, `Softmax` over each row, `Identity` and `Constant`,
//!
//! is run here instead, step by step over buffers made once per [`crate::Batch`]: a run
//! allocates nothing. Any other graph (an activation times an activation, a constant of
//! another shape, a rank above 2) is left to tract, and so is one whose results here differ
//! from tract's on the rows [`crate::Model`] checks at load: tract stays the reference.
//!
//! **Invariant.** Every index a step uses is checked when the plan is built, against the
//! widths the graph declares: a run cannot read or write out of bounds, whatever the file.

use std::collections::HashMap;

use wide::f32x8;

use crate::onnx::{constant_value, float_attribute, float_tensor, int_attribute};
use crate::proto;

/// A graph as steps over row buffers.
#[derive(Debug, Clone)]
pub(crate) struct Dense {
    steps: Vec<Step>,
    /// The width of each buffer (values per row).
    widths: Vec<usize>,
    /// The buffer each input port is written to, in port order.
    inputs: Vec<usize>,
    /// The buffer each output port is read from, in port order.
    outputs: Vec<usize>,
}

#[derive(Debug, Clone)]
enum Step {
    /// `dst = src · weights + bias`, `weights` being `[k, n]`, kept as [`affine`] reads it.
    Affine {
        src: usize,
        dst: usize,
        /// The weights by tiles of [`TILE_COLUMNS`] columns: `[tile, k, TILE_COLUMNS]`.
        tiles: Vec<f32>,
        bias: Vec<f32>,
        /// The columns past the last whole tile, transposed: `[c, k]`.
        tail: Vec<f32>,
    },
    /// `dst[c] = src[columns[c]]`: a product by a matrix of ones that each pick one column.
    Gather {
        src: usize,
        dst: usize,
        columns: Vec<usize>,
    },
    Binary {
        op: Binary,
        a: Operand,
        b: Operand,
        dst: usize,
    },
    Unary {
        op: Unary,
        src: usize,
        dst: usize,
    },
    /// Each row's softmax.
    Softmax {
        src: usize,
        dst: usize,
    },
}

#[derive(Debug, Clone, Copy)]
enum Binary {
    Add,
    Sub,
    Mul,
    Div,
}

#[derive(Debug, Clone, Copy)]
enum Unary {
    Relu,
    Sigmoid,
    Tanh,
}

/// One side of a binary step: a buffer, or a constant row broadcast over the rows.
#[derive(Debug, Clone)]
enum Operand {
    Buffer(usize),
    Row(Vec<f32>),
}

impl Operand {
    /// Row `r` of this operand, `width` values.
    fn row<'a>(&'a self, buffers: &'a [Vec<f32>], r: usize, width: usize) -> &'a [f32] {
        match self {
            Operand::Buffer(buffer) => &buffers[*buffer][r * width..(r + 1) * width],
            Operand::Row(values) => values,
        }
    }
}

/// A value of the graph while the plan is built.
#[derive(Debug, Clone)]
enum Value {
    /// Rows in a buffer.
    Rows(usize),
    /// A constant: its shape and its values, row-major.
    Const(Vec<usize>, Vec<f32>),
}

/// Buffers for one [`Dense`] plan, made once for `max_rows` rows.
#[derive(Debug)]
pub(crate) struct Scratch {
    buffers: Vec<Vec<f32>>,
}

impl Dense {
    /// The plan for `graph`, whose inputs and outputs are `[rows, width]` with the widths
    /// given (as the tract translation found them); `None` when a node is outside what this
    /// path runs.
    pub(crate) fn build(
        graph: &proto::Graph,
        opset: i64,
        inputs: &[(String, usize)],
        outputs: &[(String, usize)],
    ) -> Option<Dense> {
        let mut plan = Dense {
            steps: Vec::new(),
            widths: Vec::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
        };
        let mut values: HashMap<&str, Value> = HashMap::new();
        for initializer in &graph.initializers {
            let tensor = float_tensor(initializer, "an initializer").ok()?;
            let data = floats(&tensor)?;
            values.insert(
                &initializer.name,
                Value::Const(tensor.shape().to_vec(), data),
            );
        }
        for (name, width) in inputs {
            let buffer = plan.buffer(*width);
            plan.inputs.push(buffer);
            values.insert(name, Value::Rows(buffer));
        }
        for node in &graph.nodes {
            let output = node.outputs.first().filter(|_| node.outputs.len() == 1)?;
            let value = plan.node(node, opset, &values)?;
            values.insert(output, value);
        }
        for (name, width) in outputs {
            match values.get(name.as_str())? {
                Value::Rows(buffer) if plan.widths.get(*buffer) == Some(width) => {
                    plan.outputs.push(*buffer)
                }
                _ => return None,
            }
        }
        Some(plan)
    }

    /// Buffers for runs of up to `max_rows` rows.
    pub(crate) fn scratch(&self, max_rows: usize) -> Scratch {
        Scratch {
            buffers: self
                .widths
                .iter()
                .map(|w| vec![0.0; w * max_rows])
                .collect(),
        }
    }

    /// Runs `rows` rows: `inputs` holds each input port's rows, `outputs` receives each output
    /// port's. The caller keeps `rows` within the scratch's and every slice at least `rows`
    /// rows long: the batch checks both.
    pub(crate) fn run<'a>(
        &self,
        scratch: &mut Scratch,
        rows: usize,
        inputs: impl Iterator<Item = &'a [f32]>,
        outputs: impl Iterator<Item = &'a mut [f32]>,
    ) {
        for (&buffer, values) in self.inputs.iter().zip(inputs) {
            let len = rows * self.widths[buffer];
            scratch.buffers[buffer][..len].copy_from_slice(&values[..len]);
        }
        for step in &self.steps {
            self.step(step, scratch, rows);
        }
        for (&buffer, values) in self.outputs.iter().zip(outputs) {
            let len = rows * self.widths[buffer];
            values[..len].copy_from_slice(&scratch.buffers[buffer][..len]);
        }
    }

    fn step(&self, step: &Step, scratch: &mut Scratch, rows: usize) {
        let dst = match step {
            Step::Affine { dst, .. }
            | Step::Gather { dst, .. }
            | Step::Binary { dst, .. }
            | Step::Unary { dst, .. }
            | Step::Softmax { dst, .. } => *dst,
        };
        // Every step writes a buffer of its own that no step before it wrote, so the output
        // is taken out while the inputs are read (an empty `Vec` left in its place does not
        // allocate).
        let mut out = std::mem::take(&mut scratch.buffers[dst]);
        let width = self.widths[dst];
        let out_rows = &mut out[..rows * width];
        let buffers = &scratch.buffers;
        let rows_of = |buffer: usize| &buffers[buffer][..rows * self.widths[buffer]];
        match step {
            Step::Affine {
                src,
                tiles,
                bias,
                tail,
                ..
            } => {
                let k = self.widths[*src];
                affine(rows_of(*src), k, tiles, bias, tail, out_rows, width);
            }
            Step::Gather { src, columns, .. } => {
                let k = self.widths[*src];
                for (x, y) in rows_of(*src)
                    .chunks_exact(k)
                    .zip(out_rows.chunks_exact_mut(width))
                {
                    for (yv, &c) in y.iter_mut().zip(columns) {
                        *yv = x[c];
                    }
                }
            }
            Step::Binary { op, a, b, .. } => {
                // One loop per operator, so that each is compiled with its operation inline.
                match op {
                    Binary::Add => {
                        binary(out_rows, width, buffers, a, b, |a, b| a + b, |a, b| a + b)
                    }
                    Binary::Sub => {
                        binary(out_rows, width, buffers, a, b, |a, b| a - b, |a, b| a - b)
                    }
                    Binary::Mul => {
                        binary(out_rows, width, buffers, a, b, |a, b| a * b, |a, b| a * b)
                    }
                    Binary::Div => {
                        binary(out_rows, width, buffers, a, b, |a, b| a / b, |a, b| a / b)
                    }
                }
            }
            Step::Unary { op, src, .. } => {
                let x = rows_of(*src);
                match op {
                    Unary::Relu => {
                        let (ys, y_rest) = out_rows.as_chunks_mut::<TILE_COLUMNS>();
                        let (xs, x_rest) = x.as_chunks::<TILE_COLUMNS>();
                        for (y, x) in ys.iter_mut().zip(xs) {
                            *y = f32x8::new(*x).fast_max(f32x8::ZERO).to_array();
                        }
                        unary(y_rest, x_rest, |v| v.max(0.0));
                    }
                    Unary::Sigmoid => unary(out_rows, x, |v| 1.0 / (1.0 + (-v).exp())),
                    Unary::Tanh => unary(out_rows, x, f32::tanh),
                }
            }
            Step::Softmax { src, .. } => {
                for (x, y) in rows_of(*src)
                    .chunks_exact(width)
                    .zip(out_rows.chunks_exact_mut(width))
                {
                    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let mut sum = 0.0;
                    for (yv, &v) in y.iter_mut().zip(x) {
                        *yv = (v - max).exp();
                        sum += *yv;
                    }
                    for yv in y.iter_mut() {
                        *yv /= sum;
                    }
                }
            }
        }
        scratch.buffers[dst] = out;
    }

    fn buffer(&mut self, width: usize) -> usize {
        self.widths.push(width);
        self.widths.len() - 1
    }

    /// The value `node` makes, adding its step; `None` when this path does not run it.
    fn node(
        &mut self,
        node: &proto::Node,
        opset: i64,
        values: &HashMap<&str, Value>,
    ) -> Option<Value> {
        let input = |i: usize| values.get(node.inputs.get(i)?.as_str()).cloned();
        let arity = node.inputs.len();
        let value = match node.op_type.as_str() {
            "Identity" if arity == 1 => input(0)?,
            "Constant" if arity == 0 => {
                let tensor = constant_value(node).ok()?;
                let data = floats(&tensor)?;
                Value::Const(tensor.shape().to_vec(), data)
            }
            "Relu" | "Sigmoid" | "Tanh" if arity == 1 => {
                let Value::Rows(src) = input(0)? else {
                    return None;
                };
                let op = match node.op_type.as_str() {
                    "Relu" => Unary::Relu,
                    "Sigmoid" => Unary::Sigmoid,
                    _ => Unary::Tanh,
                };
                let dst = self.buffer(self.widths[src]);
                self.steps.push(Step::Unary { op, src, dst });
                Value::Rows(dst)
            }
            "Softmax" if arity == 1 => {
                let Value::Rows(src) = input(0)? else {
                    return None;
                };
                let default_axis = if opset >= 13 { -1 } else { 1 };
                let axis = int_attribute(node, "axis").ok()?.unwrap_or(default_axis);
                if axis != 1 && axis != -1 {
                    return None;
                }
                let dst = self.buffer(self.widths[src]);
                self.steps.push(Step::Softmax { src, dst });
                Value::Rows(dst)
            }
            "Add" | "Sub" | "Mul" | "Div" if arity == 2 => {
                let op = match node.op_type.as_str() {
                    "Add" => Binary::Add,
                    "Sub" => Binary::Sub,
                    "Mul" => Binary::Mul,
                    _ => Binary::Div,
                };
                let (a, b) = (input(0)?, input(1)?);
                let width = match (&a, &b) {
                    (Value::Rows(x), Value::Rows(y)) if self.widths[*x] == self.widths[*y] => {
                        self.widths[*x]
                    }
                    (Value::Rows(x), Value::Const(..)) | (Value::Const(..), Value::Rows(x)) => {
                        self.widths[*x]
                    }
                    _ => return None,
                };
                let operand = |value: Value| match value {
                    Value::Rows(buffer) => Some(Operand::Buffer(buffer)),
                    Value::Const(shape, data) => row(&shape, &data, width).map(Operand::Row),
                };
                let (a, b) = (operand(a)?, operand(b)?);
                let dst = self.buffer(width);
                self.steps.push(Step::Binary { op, a, b, dst });
                Value::Rows(dst)
            }
            "MatMul" if arity == 2 => {
                let (Value::Rows(src), Value::Const(shape, data)) = (input(0)?, input(1)?) else {
                    return None;
                };
                let k = self.widths[src];
                let [rows, n] = shape[..] else {
                    return None;
                };
                if rows != k {
                    return None;
                }
                self.affine(src, data, n, vec![0.0; n])?
            }
            "Gemm" if arity == 2 || arity == 3 => {
                let alpha = float_attribute(node, "alpha").ok()?.unwrap_or(1.0);
                let beta = float_attribute(node, "beta").ok()?.unwrap_or(1.0);
                let trans_a = int_attribute(node, "transA").ok()?.unwrap_or(0) != 0;
                let trans_b = int_attribute(node, "transB").ok()?.unwrap_or(0) != 0;
                let (Value::Rows(src), Value::Const(shape, data)) = (input(0)?, input(1)?) else {
                    return None;
                };
                if trans_a {
                    return None;
                }
                let k = self.widths[src];
                let [d0, d1] = shape[..] else {
                    return None;
                };
                let (weights, n) = if trans_b {
                    // [n, k] -> [k, n]
                    if d1 != k {
                        return None;
                    }
                    let mut t = vec![0.0; k * d0];
                    for (j, row) in data.chunks_exact(k).enumerate() {
                        for (i, &v) in row.iter().enumerate() {
                            t[i * d0 + j] = v;
                        }
                    }
                    (t, d0)
                } else {
                    if d0 != k {
                        return None;
                    }
                    (data, d1)
                };
                let weights = weights.into_iter().map(|w| alpha * w).collect();
                let bias = match node.inputs.get(2).filter(|name| !name.is_empty()) {
                    None => vec![0.0; n],
                    Some(_) => {
                        let Value::Const(shape, data) = input(2)? else {
                            return None;
                        };
                        row(&shape, &data, n)?
                            .into_iter()
                            .map(|c| beta * c)
                            .collect()
                    }
                };
                self.affine(src, weights, n, bias)?
            }
            _ => return None,
        };
        Some(value)
    }

    /// `src · weights + bias`, `weights` being `[k, n]`: a gather when every column of the
    /// weights is one 1 among 0s and there is no bias.
    fn affine(&mut self, src: usize, weights: Vec<f32>, n: usize, bias: Vec<f32>) -> Option<Value> {
        let k = self.widths[src];
        if n == 0 || weights.len() != k * n || bias.len() != n {
            return None;
        }
        let dst = self.buffer(n);
        let picks: Option<Vec<usize>> = (0..n)
            .map(|c| {
                let column = (0..k).map(|r| weights[r * n + c]);
                let ones: Vec<usize> = column
                    .clone()
                    .enumerate()
                    .filter(|(_, w)| *w == 1.0)
                    .map(|(r, _)| r)
                    .collect();
                let zeros = column.filter(|w| *w == 0.0).count();
                (ones.len() == 1 && zeros == k - 1).then(|| ones[0])
            })
            .collect();
        match picks {
            Some(columns) if bias.iter().all(|b| *b == 0.0) => {
                self.steps.push(Step::Gather { src, dst, columns })
            }
            _ => {
                let tiled = n - n % TILE_COLUMNS;
                let tiles = (0..tiled)
                    .step_by(TILE_COLUMNS)
                    .flat_map(|column| (0..k).map(move |r| (r, column)))
                    .flat_map(|(r, column)| (column..column + TILE_COLUMNS).map(move |c| (r, c)))
                    .map(|(r, c)| weights[r * n + c])
                    .collect();
                let tail = (tiled..n)
                    .flat_map(|c| (0..k).map(move |r| (r, c)))
                    .map(|(r, c)| weights[r * n + c])
                    .collect();
                self.steps.push(Step::Affine {
                    src,
                    dst,
                    tiles,
                    bias,
                    tail,
                })
            }
        }
        Some(Value::Rows(dst))
    }
}

/// Columns of a tile of [`affine`]: two SSE or NEON registers of `f32`.
const TILE_COLUMNS: usize = 8;

/// `y = x · w + bias`: `x` is rows of `k`, `y` rows of `n`, and the weights `w` (`[k, n]`) are
/// given as `tiles`, each [`TILE_COLUMNS`] of its columns, `k` rows of them one after the
/// other, then as `tail`, its columns past the last whole tile, transposed.
///
/// In tiles of 4 rows by [`TILE_COLUMNS`] columns whose sums stay in registers while `k` runs,
/// each weight read once per 4 rows: summing straight into `y` would store and load it again
/// for every `k`. The columns left over (all of them, for a narrow output) are dot products
/// along `k`, in [`TILE_COLUMNS`] lanes.
fn affine(x: &[f32], k: usize, tiles: &[f32], bias: &[f32], tail: &[f32], y: &mut [f32], n: usize) {
    let rows = y.len() / n;
    let mut first = 0;
    while first + 4 <= rows {
        affine_rows::<4>(x, k, tiles, bias, y, n, first);
        first += 4;
    }
    while first < rows {
        affine_rows::<1>(x, k, tiles, bias, y, n, first);
        first += 1;
    }
    let tiled = n - n % TILE_COLUMNS;
    for (c, column) in (tiled..n).zip(tail.chunks_exact(k)) {
        for (x, y) in x.chunks_exact(k).zip(y.chunks_exact_mut(n)) {
            y[c] = bias[c] + dot(x, column);
        }
    }
}

/// `a · b`, summed in [`TILE_COLUMNS`] lanes.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = f32x8::ZERO;
    let ((a_tiles, a_rest), (b_tiles, b_rest)) =
        (a.as_chunks::<TILE_COLUMNS>(), b.as_chunks::<TILE_COLUMNS>());
    for (a, b) in a_tiles.iter().zip(b_tiles) {
        lanes = f32x8::new(*a).mul_add(f32x8::new(*b), lanes);
    }
    let rest: f32 = a_rest.iter().zip(b_rest).map(|(a, b)| a * b).sum();
    lanes.reduce_add() + rest
}

/// [`affine`]'s tiles for rows `first..first + R`.
#[inline(always)]
fn affine_rows<const R: usize>(
    x: &[f32],
    k: usize,
    tiles: &[f32],
    bias: &[f32],
    y: &mut [f32],
    n: usize,
    first: usize,
) {
    // Each exactly `k` long, as is each tile's run of weights below, so that reading one at
    // `kk < k` needs no check.
    let xs: [&[f32]; R] = std::array::from_fn(|i| &x[(first + i) * k..][..k]);
    let (tile_weights, _) = tiles.as_chunks::<TILE_COLUMNS>();
    let (biases, _) = bias.as_chunks::<TILE_COLUMNS>();
    for (tile, (weights, bias)) in tile_weights.chunks_exact(k).zip(biases).enumerate() {
        let weights = &weights[..k];
        let mut sums = [f32x8::new(*bias); R];
        for kk in 0..k {
            let w = f32x8::new(weights[kk]);
            for (sum, x) in sums.iter_mut().zip(&xs) {
                *sum = f32x8::splat(x[kk]).mul_add(w, *sum);
            }
        }
        for (i, sum) in sums.iter().enumerate() {
            let start = (first + i) * n + tile * TILE_COLUMNS;
            let (out, _) = y[start..start + TILE_COLUMNS].as_chunks_mut::<TILE_COLUMNS>();
            if let Some(out) = out.first_mut() {
                *out = sum.to_array();
            }
        }
    }
}

/// `y = f(a, b)` row by row, each operand a buffer of `width`-wide rows or one row: `f`
/// over [`TILE_COLUMNS`] values at a time, `f1` over the rest of each row.
#[inline(always)]
fn binary(
    out: &mut [f32],
    width: usize,
    buffers: &[Vec<f32>],
    a: &Operand,
    b: &Operand,
    f: impl Fn(f32x8, f32x8) -> f32x8,
    f1: impl Fn(f32, f32) -> f32,
) {
    for (r, y) in out.chunks_exact_mut(width).enumerate() {
        let (a, b) = (a.row(buffers, r, width), b.row(buffers, r, width));
        let (ys, y_rest) = y.as_chunks_mut::<TILE_COLUMNS>();
        let ((a_tiles, a_rest), (b_tiles, b_rest)) =
            (a.as_chunks::<TILE_COLUMNS>(), b.as_chunks::<TILE_COLUMNS>());
        for ((y, a), b) in ys.iter_mut().zip(a_tiles).zip(b_tiles) {
            *y = f(f32x8::new(*a), f32x8::new(*b)).to_array();
        }
        for ((yv, &av), &bv) in y_rest.iter_mut().zip(a_rest).zip(b_rest) {
            *yv = f1(av, bv);
        }
    }
}

/// `y = f(x)` for every value.
#[inline(always)]
fn unary(out: &mut [f32], x: &[f32], f: impl Fn(f32) -> f32) {
    for (yv, &v) in out.iter_mut().zip(x) {
        *yv = f(v);
    }
}

/// A float tensor's values, row-major.
fn floats(tensor: &tract_core::prelude::Tensor) -> Option<Vec<f32>> {
    let view = tensor.try_as_plain_ram().ok()?;
    Some(view.as_slice::<f32>().ok()?.to_vec())
}

/// A constant of `shape` as one row of `width` values, when it broadcasts to one: a scalar,
/// `[1]`, `[width]`, `[1, 1]` or `[1, width]`.
fn row(shape: &[usize], data: &[f32], width: usize) -> Option<Vec<f32>> {
    let len: usize = shape.iter().product();
    if data.len() != len || shape.len() > 2 || (shape.len() == 2 && shape[0] != 1) {
        return None;
    }
    match len {
        1 => Some(vec![data[0]; width]),
        l if l == width => Some(data.to_vec()),
        _ => None,
    }
}
