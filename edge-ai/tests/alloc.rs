//! Allocations per [`Batch::run`], counted by a counting global allocator (`stats_alloc`: the
//! workspace forbids the `unsafe impl GlobalAlloc` a hand-written one needs).
//!
//! This file holds one test on purpose: the counter is global to the process, and a test
//! running on another thread would add its allocations to the count.

mod support;

use std::alloc::System;

use edge_ai::{Batch, Model};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const RUNS: usize = 100;

/// Allocations per routing decision on `runner` after a warm-up: fill the inputs, run, read
/// the outputs.
fn allocations_per_run(runner: &mut Batch, rows: usize, inputs: &[Vec<f32>]) -> usize {
    let decide = |runner: &mut Batch| {
        for (port, values) in inputs.iter().enumerate() {
            runner
                .input_mut(port, rows)
                .expect("rows within the batch")
                .copy_from_slice(values);
        }
        runner.run(rows).expect("runs");
        runner.output(0).expect("the port exists")[0]
    };
    // The first runs set up what a batch keeps between runs (tract's per-session scratch).
    for _ in 0..3 {
        decide(runner);
    }
    // Twice, keeping the lower count: the test harness's own threads allocate now and then
    // (its output capture), and the counter is global.
    (0..2)
        .map(|_| {
            let region = Region::new(GLOBAL);
            for _ in 0..RUNS {
                std::hint::black_box(decide(runner));
            }
            let stats = region.change();
            assert_eq!(stats.reallocations, 0, "{stats:?}");
            stats.allocations.div_ceil(RUNS)
        })
        .min()
        .unwrap_or(0)
}

#[test]
fn dense_runs_allocate_nothing_and_tract_runs_only_inside_its_operators() {
    // A graph in which tract runs no operator: what remains is edge-ai's own work (copying
    // rows in and out, handing tract the input tensors) and the plan's bookkeeping. None.
    let model = Model::from_bytes(&support::model_bytes("passthrough.onnx")).expect("loads");
    let mut runner = model.batch(8).expect("8 rows");
    let inputs = [(0..32).map(|v| v as f32).collect::<Vec<f32>>()];
    assert_eq!(allocations_per_run(&mut runner, 8, &inputs), 0);
    assert_eq!(runner.output(0).expect("the port exists"), &inputs[0][..]);

    // The 13 -> 16 -> 16 -> 2 routing MLP, 8 candidates, as nodes run it: the dense path,
    // over buffers the batch made. Nothing at all, for 8 rows of 8 or of 16.
    let model = Model::from_bytes(&support::model_bytes("route-mlp.onnx")).expect("loads");
    assert!(model.is_dense(), "a dense row-wise model");
    let expected = support::batch_expected("route-mlp.expected.json");
    let batch = &expected.batches[0];
    assert_eq!(batch.rows, 8);
    let inputs = [batch.inputs["candidates"].concat()];
    let mut runner = model.batch(8).expect("8 rows");
    assert!(runner.is_dense());
    assert_eq!(allocations_per_run(&mut runner, 8, &inputs), 0);
    let mut runner = model.batch(16).expect("16 rows");
    assert_eq!(
        allocations_per_run(&mut runner, 8, &inputs),
        0,
        "8 of 16 rows"
    );

    // The trained routing model (its feature expansion, three layers, a sigmoid): nothing.
    let model = Model::from_bytes(&support::model_bytes("route.onnx")).expect("loads");
    let mut runner = model.batch(8).expect("8 rows");
    assert!(runner.is_dense());
    let inputs = [(0..8 * 13).map(|v| v as f32 * 0.5).collect::<Vec<f32>>()];
    assert_eq!(allocations_per_run(&mut runner, 8, &inputs), 0);

    // The same MLP through tract, the reference. tract compiles each Gemm (with its bias and
    // Relu fused) into two operators, and each allocates its result per run:
    // - OptMatMulPack repacks the activations into the kernel's panel layout: 6 allocations
    //   (the packed buffer, its boxed handle, the storage holding it, the tensor's storage and
    //   the `Arc` it travels in);
    // - OptMatMul writes the product into a new tensor: 2 (the buffer and its `Arc`).
    // 3 layers x (6 + 2) = 24, about 5 KB per run, every one freed by the end of the run.
    // tract 0.23 has no way to hand an operator its output buffer. Leaving the batch
    // dimension symbolic instead of fixing it costs 4 more (binding the symbol).
    let model = Model::from_bytes(&support::model_bytes("route-mlp.onnx")).expect("loads");
    let inputs = [batch.inputs["candidates"].concat()];
    let mut runner = model.tract_batch(8).expect("8 rows");
    assert!(!runner.is_dense());
    let allocations = allocations_per_run(&mut runner, 8, &inputs);
    assert!(
        allocations <= 24,
        "{allocations} allocations per 8-row run of the routing MLP through tract, 24 expected"
    );
}
