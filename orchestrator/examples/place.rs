//! A quick look at the scheduler core's speed: placements per second on a snapshot of 1,000
//! nodes, for workloads with constraints. Not the benchmark of record (that is the criterion
//! bench in `benches/`), and not a test: it prints figures and asserts nothing.
//!
//! `cargo run --release -p orchestrator --example place [FILTER [ROUNDS]]`: FILTER picks the
//! scenarios whose name contains it; ROUNDS (default 7) is how many times each is run.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use edge_proto::NodeId;
use orchestrator::scheduler::{LatLon, NodeView, Resources, Scheduler};
use orchestrator::workload::WorkloadSpec;
use serde_json::json;

const NODES: u32 = 1000;
const SITES: [&str; 10] = [
    "berlin", "paris", "rome", "madrid", "vienna", "warsaw", "oslo", "lisbon", "prague", "dublin",
];
const CITIES: [(f64, f64); 10] = [
    (52.52, 13.40),
    (48.86, 2.35),
    (41.90, 12.50),
    (40.42, -3.70),
    (48.21, 16.37),
    (52.23, 21.01),
    (59.91, 10.75),
    (38.72, -9.14),
    (50.08, 14.44),
    (53.35, -6.26),
];
const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// A deterministic generator, so that every run measures the same work.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn unit(&mut self) -> f64 {
        self.next() as f64 / (1u64 << 31) as f64
    }
}

fn fleet(rng: &mut Lcg) -> Vec<NodeView> {
    (0..NODES)
        .map(|i| {
            let site = rng.below(SITES.len());
            let (lat, lon) = CITIES[site];
            let mut labels = BTreeMap::from([("site".to_owned(), SITES[site].to_owned())]);
            labels.insert(
                "tier".into(),
                if rng.below(4) == 0 { "core" } else { "edge" }.into(),
            );
            let devices = match rng.below(10) {
                0 => vec!["gpu".to_owned(), "/dev/dri/renderD128".to_owned()],
                1 => vec!["npu".to_owned(), "/dev/hailo0".to_owned()],
                _ => Vec::new(),
            };
            let cpus = 4 + rng.below(5) as u64;
            NodeView {
                id: NodeId(
                    u128::from(i)
                        .wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)
                        .to_be_bytes(),
                ),
                name: format!("node-{i}"),
                online: rng.below(50) != 0,
                cordoned: rng.below(100) == 0,
                arch: ["aarch64", "aarch64", "x86_64", "arm"][rng.below(4)].into(),
                labels,
                devices,
                location: Some(LatLon {
                    lat: lat + rng.unit() - 0.5,
                    lon: lon + rng.unit() - 0.5,
                }),
                capacity: Resources {
                    cpu_millis: cpus * 1000,
                    memory_bytes: (2 + rng.below(7) as u64) << 30,
                    disk_bytes: 64 << 30,
                },
                allocated: Resources {
                    cpu_millis: rng.below(1000) as u64,
                    memory_bytes: (rng.below(512) as u64) << 20,
                    disk_bytes: 0,
                },
                instances: BTreeMap::new(),
                ports_in_use: Vec::new(),
            }
        })
        .collect()
}

/// `count` distinct workloads built by `make(i, rng)`.
fn workloads(
    count: usize,
    rng: &mut Lcg,
    make: impl Fn(usize, &mut Lcg) -> serde_json::Value,
) -> Vec<WorkloadSpec> {
    (0..count)
        .map(|i| {
            let mut v = make(i, rng);
            v["name"] = json!(format!("w{i}"));
            v["version"] = json!("1");
            v["artifact"] = json!(DIGEST);
            let bytes = serde_json::to_vec(&v).expect("serializable");
            WorkloadSpec::from_json(&bytes).expect("valid spec")
        })
        .collect()
}

/// Places every workload on a fresh copy of the fleet, several rounds; returns the median
/// placements per second and the instances placed per round.
fn measure(fleet: &[NodeView], specs: &[WorkloadSpec], rounds: usize) -> (f64, usize) {
    let mut rates = Vec::with_capacity(rounds);
    let mut placed = 0;
    for _ in 0..rounds {
        let mut s = Scheduler::new(fleet.iter().cloned());
        placed = 0;
        let start = Instant::now();
        for spec in specs {
            placed += black_box(s.place(spec)).bound.len();
        }
        let elapsed = start.elapsed().max(Duration::from_nanos(1));
        rates.push(placed as f64 / elapsed.as_secs_f64());
    }
    rates.sort_by(f64::total_cmp);
    (rates.get(rounds / 2).copied().unwrap_or(0.0), placed)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let filter = args.next().unwrap_or_default();
    let rounds: usize = args.next().and_then(|r| r.parse().ok()).unwrap_or(7).max(1);
    let mut rng = Lcg(42);
    let fleet = fleet(&mut rng);

    let start = Instant::now();
    let s = Scheduler::new(fleet.iter().cloned());
    let build = start.elapsed();
    println!(
        "snapshot of {} nodes built in {:.2} ms",
        s.len(),
        build.as_secs_f64() * 1e3
    );

    let resources = json!({"cpu_millis": 10, "memory_bytes": 1 << 20});
    let scenarios: Vec<(&str, Vec<WorkloadSpec>)> = vec![
        (
            "replicas=1, arch + site label + near 100 km",
            workloads(20_000, &mut rng, |_, rng| {
                let site = rng.below(SITES.len());
                let (lat, lon) = CITIES[site];
                json!({
                    "resources": resources,
                    "requirements": {
                        "arch": ["aarch64", "x86_64"],
                        "labels": {"site": SITES[site]},
                        "near": {"lat": lat, "lon": lon, "radius_km": 100},
                    }
                })
            }),
        ),
        (
            "replicas=1, arch + tier label",
            workloads(20_000, &mut rng, |_, _| {
                json!({
                    "resources": resources,
                    "requirements": {"arch": ["aarch64", "x86_64"], "labels": {"tier": "edge"}}
                })
            }),
        ),
        (
            "replicas=1, arch only, near 2000 km (distance scored)",
            workloads(20_000, &mut rng, |_, _| {
                json!({
                    "resources": resources,
                    "requirements": {
                        "arch": ["aarch64", "x86_64"],
                        "near": {"lat": 50.0, "lon": 10.0, "radius_km": 2000},
                    }
                })
            }),
        ),
        (
            "replicas=1, no requirements (the floor)",
            workloads(20_000, &mut rng, |_, _| json!({"resources": resources})),
        ),
        (
            "replicas=10, arch + site label",
            workloads(2_000, &mut rng, |_, rng| {
                json!({
                    "replicas": 10,
                    "resources": resources,
                    "requirements": {
                        "arch": ["aarch64", "x86_64"],
                        "labels": {"site": SITES[rng.below(SITES.len())]},
                    }
                })
            }),
        ),
        (
            "replicas=1, gpu device + site label",
            workloads(20_000, &mut rng, |_, rng| {
                json!({
                    "resources": resources,
                    "requirements": {
                        "devices": ["gpu"],
                        "labels": {"site": SITES[rng.below(SITES.len())]},
                    }
                })
            }),
        ),
    ];
    for (name, specs) in scenarios.iter().filter(|(name, _)| name.contains(&filter)) {
        // How many nodes the first workload could go to: the scan each placement makes.
        let candidates = specs.first().map_or(0, |spec| {
            fleet
                .iter()
                .filter(|n| s.why_not(spec, n.id).is_none())
                .count()
        });
        let (rate, placed) = measure(&fleet, specs, rounds);
        println!(
            "{name}: {rate:>10.0} placements/s (median of {rounds}; {placed} instances for {} \
             workloads; {candidates} candidate nodes for the first)",
            specs.len()
        );
    }
}
