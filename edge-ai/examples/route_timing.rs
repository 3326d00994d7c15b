//! How long one routing decision takes: fill 8 candidates of 13 features, run the
//! 13 -> 16 -> 16 -> 2 MLP in `models/route-mlp.onnx`, pick the best score.
//!
//! A quick loop, not a benchmark harness: build it as the node ships it and read the median.
//!
//! ```text
//! cargo run --release -p edge-ai --example route_timing [MODEL.onnx]
//! ```
//!
//! `MODEL.onnx` (default `models/route-mlp.onnx`) takes rows of 13 features and answers two
//! values per row, as the trained `models/route.onnx` does.

use std::time::Instant;

use edge_ai::Model;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args_os().nth(1).map_or_else(
        || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/route-mlp.onnx"),
        std::path::PathBuf::from,
    );
    println!("{}", path.display());
    let start = Instant::now();
    let model = Model::load(&path)?;
    println!(
        "load, golden check included: {} us",
        start.elapsed().as_micros()
    );
    const ROWS: usize = 8;
    let width = model.inputs()[0].width();
    let start = Instant::now();
    let mut batch = model.batch(ROWS)?;
    println!(
        "Model::batch({ROWS}): {} us, {}",
        start.elapsed().as_micros(),
        if batch.is_dense() {
            "the dense path"
        } else {
            "through tract"
        }
    );
    // Deterministic, varied features.
    let features: Vec<f32> = (0..ROWS * width)
        .map(|i| ((i * 37 % 101) as f32 / 25.0) - 2.0)
        .collect();

    const ROUNDS: usize = 50;
    const PER_ROUND: u32 = 2_000;
    // The batch as nodes run it (the dense path, for this model), then tract's plan.
    let mut tract = model.tract_batch(ROWS)?;
    for (what, batch) in [
        ("8-row routing decision", &mut batch),
        ("the same through tract", &mut tract),
    ] {
        let mut decide = || -> Result<usize, edge_ai::ModelError> {
            batch.input_mut(0, ROWS)?.copy_from_slice(&features);
            batch.run(ROWS)?;
            let scores = batch.output(0)?;
            // Column 0 of each row is the candidate's score.
            let best = (0..ROWS)
                .max_by(|a, b| scores[a * 2].total_cmp(&scores[b * 2]))
                .unwrap_or(0);
            Ok(best)
        };
        for _ in 0..10_000 {
            std::hint::black_box(decide()?);
        }
        let mut per_decision_ns = Vec::with_capacity(ROUNDS);
        for _ in 0..ROUNDS {
            let start = Instant::now();
            for _ in 0..PER_ROUND {
                std::hint::black_box(decide()?);
            }
            per_decision_ns.push(start.elapsed().as_nanos() as f64 / f64::from(PER_ROUND));
        }
        per_decision_ns.sort_by(f64::total_cmp);
        println!(
            "{what}: median {:.0} ns, min {:.0} ns, max {:.0} ns ({ROUNDS} rounds of {PER_ROUND})",
            per_decision_ns[ROUNDS / 2],
            per_decision_ns[0],
            per_decision_ns[ROUNDS - 1]
        );
    }

    // The same loop on a graph where tract runs no operator: edge-ai's copies and tract's plan
    // bookkeeping, without the arithmetic.
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/passthrough.onnx");
    let passthrough = Model::load(&path)?;
    let mut empty = passthrough.batch(ROWS)?;
    let rows = vec![0.5; ROWS * passthrough.inputs()[0].width()];
    let mut per_run_ns = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let start = Instant::now();
        for _ in 0..PER_ROUND {
            empty.input_mut(0, ROWS)?.copy_from_slice(&rows);
            empty.run(ROWS)?;
            std::hint::black_box(empty.output(0)?);
        }
        per_run_ns.push(start.elapsed().as_nanos() as f64 / f64::from(PER_ROUND));
    }
    per_run_ns.sort_by(f64::total_cmp);
    println!(
        "the same without operators (passthrough.onnx): median {:.0} ns, min {:.0} ns",
        per_run_ns[ROUNDS / 2],
        per_run_ns[0]
    );

    // The single-row convenience path, for comparison: a fresh run state per call.
    let row = &features[..width];
    let start = Instant::now();
    for _ in 0..PER_ROUND {
        std::hint::black_box(model.run(row)?);
    }
    println!(
        "Model::run, one row: {:.0} ns",
        start.elapsed().as_nanos() as f64 / f64::from(PER_ROUND)
    );
    Ok(())
}
