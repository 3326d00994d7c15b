//! One routing decision over 8 candidates, side by side: the trained routing model through
//! node-core's `Learned` (features of every candidate, one batched run of the model as the
//! node builds it, the cheapest by `latency / (1 - failure)`) against the fixed rule it
//! falls back to, peak-EWMA P2C, on the same candidates.
//!
//! The candidates are eight backends with measured loads (1 to 80 ms, some requests in
//! flight, one with failures); each iteration is one `choose` call, as the proxy makes it
//! for one request (the proxy's `start`, which would change the loads, is left out so every
//! iteration sees the same candidates).
//!
//! Run: `cargo bench -p edge-benches --bench routing`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::Criterion;
use node_core::proxy::balance::{Candidate, Choose, HostLoad, Load, PeakEwmaP2c};
use node_core::proxy::learned::{Learned, Prediction, ROUTE_WIDTH, route_features};

fn loads(now: Instant) -> Vec<Load> {
    (0..8u32)
        .map(|i| {
            let mut load = Load::new(now);
            for j in 0..4u32 {
                load.start(now);
                let rtt = Duration::from_millis(u64::from(1 + i * 10 + j));
                load.end(
                    now + Duration::from_millis(u64::from(j)),
                    rtt,
                    i != 3 || j % 2 == 0,
                );
            }
            for _ in 0..(i % 3) {
                load.start(now);
            }
            load
        })
        .collect()
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    let model_path = concat!(env!("CARGO_MANIFEST_DIR"), "/../edge-ai/models/route.onnx");
    let model = edge_ai::Model::load(std::path::Path::new(model_path)).expect("route.onnx loads");
    let make = node_daemon::proxy::route_model::from_model(model).expect("it fits the schema");
    let now = Instant::now();
    let loads = loads(now);
    let candidates: Vec<Candidate<'_>> = loads
        .iter()
        .enumerate()
        .map(|(i, load)| Candidate {
            load,
            available: true,
            half_open: false,
            distance_km: Some(f64::from(i as u32) * 100.0),
            local: i < 2,
            host: Some(HostLoad {
                cpu: 0.3,
                memory: 0.4,
            }),
        })
        .collect();
    let at = now + Duration::from_millis(50);
    let mut model = Learned::new(make());
    let mut p2c = PeakEwmaP2c;
    let mut rng = fastrand::Rng::with_seed(7);
    assert!(model.choose(&candidates, at, &mut || rng.u64(..)).is_some());
    assert_eq!(
        model.mode(),
        node_core::proxy::learned::Mode::Model,
        "the model chooses, not its fallback"
    );

    // The decision's two halves, each alone: the candidates' features, and one batched run
    // of the model over them (the dense path where the model allows, as on a node).
    let mut rows = vec![0.0f32; candidates.len() * ROUTE_WIDTH];
    let mut predictor = make().expect("a predictor");
    let mut predictions = [Prediction::default(); 8];
    let features = |rows: &mut [f32]| {
        for (candidate, row) in candidates.iter().zip(rows.chunks_exact_mut(ROUTE_WIDTH)) {
            let row: &mut [f32; ROUTE_WIDTH] = row.try_into().expect("a row is ROUTE_WIDTH wide");
            route_features(candidate, at, row);
        }
    };
    features(&mut rows);
    let dense = edge_ai::Model::load(std::path::Path::new(model_path))
        .and_then(|m| m.batch(8))
        .expect("a batch")
        .is_dense();
    println!(
        "route.onnx runs {}",
        if dense {
            "the dense path"
        } else {
            "through tract"
        }
    );

    let mut group = criterion.benchmark_group("routing decision, 8 candidates");
    group.bench_function("model (Learned, batched)", |b| {
        b.iter(|| black_box(model.choose(black_box(&candidates), at, &mut || rng.u64(..))))
    });
    group.bench_function("features alone", |b| {
        b.iter(|| features(black_box(&mut rows)))
    });
    group.bench_function("model run alone", |b| {
        b.iter(|| black_box(predictor.predict(black_box(&rows), &mut predictions)))
    });
    group.bench_function("peak-EWMA P2C", |b| {
        b.iter(|| black_box(p2c.choose(black_box(&candidates), at, &mut || rng.u64(..))))
    });
    group.finish();
    criterion.final_summary();
}
