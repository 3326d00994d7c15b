//! The scheduler core (`orchestrator_core::scheduler::Scheduler`) against its anchor, side by side:
//! placements per second on a snapshot of 1,000 nodes, for workloads with constraints.
//!
//! The anchor is `NaiveScheduler` below: what kube-scheduler's default profile does for each
//! pod, on the same `NodeView`s. For every instance it scans every node, runs every filter
//! with string comparisons on the view's fields (cordoned, online, architecture, labels,
//! devices, distance by `haversine_km`, ports, CPU, memory, disk), scores every feasible node
//! (spread, least allocated, closeness), sorts them and binds the best. A per-node workload is
//! placed as the DaemonSet controller has kube-scheduler do it: each instance is pinned to its
//! node, so each node is filtered once. Published, kube-scheduler's floor is 810 pods/s on a
//! real cluster; this anchor has no API server, no queue and no plugins framework, so it is far
//! faster than that and is the fairer yardstick for an in-process core.
//!
//! Each measured iteration places a batch of distinct workloads one after another into the
//! same snapshot (later ones see what earlier ones took) and is then undone outside the timed
//! part (`remove_workload`, and its twin for the anchor), so every iteration starts from the
//! same fleet. Replicas never exceed the nodes that match, so the figures do not depend on
//! whether the scheduler may put two instances of one workload on a node.
//!
//! Before measuring, the two are checked to place the same number of instances for every
//! workload shape (an assertion: otherwise the ratio would compare different work).
//!
//! Run: `cargo bench -p edge-benches --bench placement`.

use std::collections::{BTreeMap, HashMap};
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};
use edge_benches::fleet::SITES;
use edge_benches::stats::median_f64;
use edge_proto::NodeId;
use orchestrator_core::scheduler::{LatLon, NodeView, Resources, Scheduler, haversine_km};
use orchestrator_core::workload::{Placement, WorkloadSpec};
use serde_json::{Value, json};

const NODES: u32 = 1000;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
/// Workloads the fleet already runs, so a node's instance map is not empty.
const EXISTING: usize = 20;
/// Rounds of the side-by-side pass, and the time of each measurement in a round.
const ROUNDS: usize = 7;
const SLICE: Duration = Duration::from_millis(60);

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

    /// In `[0, 1)`.
    fn unit(&mut self) -> f64 {
        self.next() as f64 / (1u64 << 31) as f64
    }

    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[self.below(from.len())]
    }
}

/// Unique ids whose order is unrelated to the node's index.
fn node_id(i: u32) -> NodeId {
    NodeId(
        u128::from(i)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)
            .to_be_bytes(),
    )
}

/// 1,000 nodes over 12 European sites: mostly Raspberry Pi class `aarch64` and `arm` (what
/// an armv7 board reports) boards and some `x86_64` boxes, a fifth of them `tier=core`, some
/// with a GPU, an NPU or a camera, partly used already, a few offline or cordoned.
fn fleet(rng: &mut Lcg) -> Vec<NodeView> {
    (0..NODES)
        .map(|i| {
            let (site, lat, lon) = rng.pick(&SITES);
            let arch = rng.pick(&["aarch64", "aarch64", "aarch64", "x86_64", "x86_64", "arm"]);
            let core = rng.below(5) == 0;
            let (cpus, memory_gib): (u64, u64) = match arch {
                "x86_64" => (rng.pick(&[4, 8, 16]), rng.pick(&[8, 16, 32])),
                "aarch64" => (4, rng.pick(&[1, 2, 4, 8])),
                _ => (4, 1),
            };
            let mut devices = Vec::new();
            match rng.below(20) {
                0 | 1 => devices.extend(["gpu".to_owned(), "/dev/dri/renderD128".to_owned()]),
                2 | 3 => devices.extend(["npu".to_owned(), "/dev/hailo0".to_owned()]),
                4..=6 => devices.extend(["video".to_owned(), "/dev/video0".to_owned()]),
                7 => devices.extend(["gpio".to_owned(), "/dev/gpiochip0".to_owned()]),
                _ => {}
            }
            let capacity = Resources {
                cpu_millis: cpus * 1000,
                memory_bytes: memory_gib * GIB,
                disk_bytes: rng.pick(&[16, 32, 64, 256]) * GIB,
            };
            let mut instances = BTreeMap::new();
            for _ in 0..rng.below(4) {
                instances.insert(format!("existing-{}", rng.below(EXISTING)), 1);
            }
            // Up to half of CPU and memory, a quarter of the disk, taken already.
            let used = |total: u64, rng: &mut Lcg| (total as f64 * rng.unit() * 0.5) as u64;
            let allocated = Resources {
                cpu_millis: used(capacity.cpu_millis, rng),
                memory_bytes: used(capacity.memory_bytes, rng),
                disk_bytes: used(capacity.disk_bytes / 2, rng),
            };
            let ports_in_use = match rng.below(10) {
                0 => vec![22, 9100],
                1..=3 => vec![22],
                _ => Vec::new(),
            };
            NodeView {
                id: node_id(i),
                name: format!("{site}-{i:04}"),
                online: rng.below(50) != 0,
                cordoned: rng.below(100) == 0,
                arch: arch.to_owned(),
                labels: BTreeMap::from([
                    ("site".to_owned(), site.to_owned()),
                    (
                        "tier".to_owned(),
                        if core { "core" } else { "edge" }.to_owned(),
                    ),
                ]),
                devices,
                location: Some(LatLon {
                    lat: lat + rng.unit() - 0.5,
                    lon: lon + rng.unit() - 0.5,
                }),
                capacity,
                allocated,
                instances,
                ports_in_use,
                history: Default::default(),
            }
        })
        .collect()
}

fn spec(name: String, mut v: Value) -> WorkloadSpec {
    v["name"] = json!(name);
    v["version"] = json!("1");
    v["artifact"] = json!(DIGEST);
    let bytes = serde_json::to_vec(&v).expect("serializable");
    WorkloadSpec::from_json(&bytes).unwrap_or_else(|e| panic!("bench spec {v}: {e}"))
}

/// One workload shape: a batch of distinct workloads placed one after another per iteration.
struct Shape {
    name: &'static str,
    what: &'static str,
    specs: Vec<WorkloadSpec>,
}

fn shapes(rng: &mut Lcg) -> Vec<Shape> {
    let small = json!({"cpu_millis": 100, "memory_bytes": 64 * MIB});
    let batch = |name: &'static str,
                 what: &'static str,
                 count: usize,
                 rng: &mut Lcg,
                 make: &dyn Fn(&mut Lcg) -> Value| Shape {
        name,
        what,
        specs: (0..count)
            .map(|i| spec(format!("{}-{i}", name.replace('_', "-")), make(rng)))
            .collect(),
    };
    vec![
        batch(
            "r1_site_near",
            "replicas=1, arch + site label + near 100 km",
            100,
            rng,
            &|rng| {
                let (site, lat, lon) = rng.pick(&SITES);
                json!({
                    "resources": small,
                    "requirements": {
                        "arch": ["aarch64", "x86_64"],
                        "labels": {"site": site},
                        "near": {"lat": lat, "lon": lon, "radius_km": 100},
                    }
                })
            },
        ),
        batch(
            "r1_tier_wide",
            "replicas=1, arch + tier label + near 2000 km (most of the fleet scored)",
            100,
            rng,
            &|_| {
                json!({
                    "resources": small,
                    "requirements": {
                        "arch": ["aarch64", "arm"],
                        "labels": {"tier": "edge"},
                        "near": {"lat": 50.0, "lon": 10.0, "radius_km": 2000},
                    }
                })
            },
        ),
        batch(
            "r1_device",
            "replicas=1, a device kind or path + resources",
            100,
            rng,
            &|rng| {
                let device = rng.pick(&["gpu", "npu", "/dev/video0"]);
                json!({
                    "resources": {"cpu_millis": 250, "memory_bytes": 256 * MIB},
                    "requirements": {"devices": [device]}
                })
            },
        ),
        batch(
            "r1_any",
            "replicas=1, no requirements (the floor)",
            100,
            rng,
            &|_| json!({"resources": small}),
        ),
        batch(
            "r10_site_ports",
            "replicas=10, arch + site label + near 300 km + port 9100",
            20,
            rng,
            &|rng| {
                let (site, lat, lon) = rng.pick(&SITES);
                json!({
                    "replicas": 10,
                    "ports": [9100],
                    "resources": small,
                    "requirements": {
                        "arch": ["aarch64", "x86_64"],
                        "labels": {"site": site},
                        "near": {"lat": lat, "lon": lon, "radius_km": 300},
                    }
                })
            },
        ),
        batch(
            "per_node_core",
            "per-node, arch + tier=core label",
            5,
            rng,
            &|_| {
                json!({
                    "placement": "per-node",
                    "resources": {"cpu_millis": 50, "memory_bytes": 32 * MIB},
                    "requirements": {"arch": ["aarch64", "x86_64"], "labels": {"tier": "core"}}
                })
            },
        ),
    ]
}

/// The anchor: kube-scheduler's default cycle, one instance at a time. See the module docs.
struct NaiveScheduler {
    nodes: Vec<NodeView>,
    /// Instances per workload: what a ReplicaSet controller knows without asking the nodes.
    totals: HashMap<String, u32>,
    /// Feasible nodes of the current cycle, reused as kube-scheduler reuses its node list.
    feasible: Vec<(f64, NodeId, usize)>,
}

impl NaiveScheduler {
    fn new(nodes: Vec<NodeView>) -> Self {
        Self {
            nodes,
            totals: HashMap::new(),
            feasible: Vec::new(),
        }
    }

    /// Places what is missing of `spec`; returns the nodes bound, one per instance.
    fn place(&mut self, spec: &WorkloadSpec) -> Vec<usize> {
        let mut bound = Vec::new();
        match spec.placement() {
            Placement::Replicas(replicas) => {
                let have = self.totals.get(spec.name()).copied().unwrap_or(0);
                for _ in have..replicas {
                    self.feasible.clear();
                    for (i, node) in self.nodes.iter().enumerate() {
                        if let Some(distance) = filter(node, spec) {
                            self.feasible
                                .push((naive_score(node, spec, distance), node.id, i));
                        }
                    }
                    self.feasible
                        .sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
                    let Some(&(_, _, best)) = self.feasible.first() else {
                        break;
                    };
                    self.bind(best, spec);
                    bound.push(best);
                }
            }
            Placement::PerNode => {
                for i in 0..self.nodes.len() {
                    let node = &self.nodes[i];
                    if node.instances_of(spec.name()) == 0 && filter(node, spec).is_some() {
                        self.bind(i, spec);
                        bound.push(i);
                    }
                }
            }
        }
        bound
    }

    fn bind(&mut self, i: usize, spec: &WorkloadSpec) {
        let node = &mut self.nodes[i];
        let want = spec.resources();
        node.allocated.cpu_millis += want.cpu_millis;
        node.allocated.memory_bytes += want.memory_bytes;
        node.allocated.disk_bytes += want.disk_bytes;
        *node.instances.entry(spec.name().to_owned()).or_insert(0) += 1;
        node.ports_in_use.extend_from_slice(spec.ports());
        *self.totals.entry(spec.name().to_owned()).or_insert(0) += 1;
    }

    /// Undoes [`NaiveScheduler::place`]: the twin of `Scheduler::remove_workload`.
    fn remove(&mut self, spec: &WorkloadSpec, bound: &[usize]) {
        let want = spec.resources();
        for &i in bound {
            let node = &mut self.nodes[i];
            node.allocated.cpu_millis -= want.cpu_millis;
            node.allocated.memory_bytes -= want.memory_bytes;
            node.allocated.disk_bytes -= want.disk_bytes;
            node.instances.remove(spec.name());
            for p in spec.ports() {
                if let Some(at) = node.ports_in_use.iter().rposition(|q| q == p) {
                    node.ports_in_use.remove(at);
                }
            }
        }
        self.totals.remove(spec.name());
    }
}

/// Every filter, in kube-scheduler's order: `Some(distance to near in km)` (0 without `near`)
/// if `node` can take one more instance of `spec`.
fn filter(node: &NodeView, spec: &WorkloadSpec) -> Option<f64> {
    let req = spec.requirements();
    // NodeUnschedulable, then the node's Ready condition.
    if node.cordoned || !node.online {
        return None;
    }
    // NodeAffinity: the architecture and every label, compared as strings.
    if !req.arch.is_empty() && !req.arch.iter().any(|a| a.as_str() == node.arch) {
        return None;
    }
    if !req
        .labels
        .iter()
        .all(|(k, v)| node.labels.get(k).is_some_and(|have| have == v))
    {
        return None;
    }
    // Extended resources: every device by name.
    if !req
        .devices
        .iter()
        .all(|d| node.devices.iter().any(|have| have == d.as_str()))
    {
        return None;
    }
    let distance = match req.near {
        Some(near) => {
            let d = haversine_km(
                node.location?,
                LatLon {
                    lat: near.lat,
                    lon: near.lon,
                },
            );
            if d > near.radius_km {
                return None;
            }
            d
        }
        None => 0.0,
    };
    // NodePorts.
    if spec.ports().iter().any(|p| node.ports_in_use.contains(p)) {
        return None;
    }
    // NodeResourcesFit.
    let want = spec.resources();
    let (cap, used) = (node.capacity, node.allocated);
    if used.cpu_millis + want.cpu_millis > cap.cpu_millis
        || used.memory_bytes + want.memory_bytes > cap.memory_bytes
        || used.disk_bytes + want.disk_bytes > cap.disk_bytes
    {
        return None;
    }
    Some(distance)
}

/// Spread (fewer instances of this workload first: weighted to dominate), then least
/// allocated after placing, averaged with closeness when the spec has `near`.
fn naive_score(node: &NodeView, spec: &WorkloadSpec, distance_km: f64) -> f64 {
    let want = spec.resources();
    let free = |cap: u64, used: u64, want: u64| {
        if cap == 0 {
            0.0
        } else {
            cap.saturating_sub(used + want) as f64 / cap as f64
        }
    };
    let least_allocated = 0.5
        * (free(
            node.capacity.cpu_millis,
            node.allocated.cpu_millis,
            want.cpu_millis,
        ) + free(
            node.capacity.memory_bytes,
            node.allocated.memory_bytes,
            want.memory_bytes,
        ));
    let fit = match spec.requirements().near {
        Some(near) => 0.5 * least_allocated + 0.5 * (1.0 - distance_km / near.radius_km),
        None => least_allocated,
    };
    fit - 2.0 * f64::from(node.instances_of(spec.name()))
}

/// Places the whole batch into `s`; returns the instances placed.
fn place_batch(s: &mut Scheduler, specs: &[WorkloadSpec]) -> usize {
    specs
        .iter()
        .map(|spec| black_box(s.place(black_box(spec))).bound.len())
        .sum()
}

fn undo_batch(s: &mut Scheduler, specs: &[WorkloadSpec]) {
    for spec in specs {
        black_box(s.remove_workload(spec));
    }
}

fn naive_place_batch(
    s: &mut NaiveScheduler,
    specs: &[WorkloadSpec],
    bound: &mut Vec<Vec<usize>>,
) -> usize {
    bound.clear();
    bound.extend(specs.iter().map(|spec| black_box(s.place(black_box(spec)))));
    bound.iter().map(Vec::len).sum()
}

fn naive_undo_batch(s: &mut NaiveScheduler, specs: &[WorkloadSpec], bound: &[Vec<usize>]) {
    for (spec, b) in specs.iter().zip(bound) {
        s.remove(spec, b);
    }
}

/// The two schedulers on one fleet, each back at the fleet after every batch.
struct Pair {
    ours: Scheduler,
    naive: NaiveScheduler,
    bound: Vec<Vec<usize>>,
}

impl Pair {
    fn new(fleet: &[NodeView]) -> Self {
        Self {
            ours: Scheduler::new(fleet.iter().cloned()),
            naive: NaiveScheduler::new(fleet.to_vec()),
            bound: Vec::new(),
        }
    }

    /// Time of placing the batch `iters` times with the scheduler, undoing outside the timing.
    fn time_ours(&mut self, specs: &[WorkloadSpec], iters: u64) -> Duration {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            let start = Instant::now();
            black_box(place_batch(&mut self.ours, specs));
            total += start.elapsed();
            undo_batch(&mut self.ours, specs);
        }
        total
    }

    fn time_naive(&mut self, specs: &[WorkloadSpec], iters: u64) -> Duration {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            let start = Instant::now();
            black_box(naive_place_batch(&mut self.naive, specs, &mut self.bound));
            total += start.elapsed();
            naive_undo_batch(&mut self.naive, specs, &self.bound);
        }
        total
    }
}

/// Instances each scheduler places for every spec of `shape`, twice over (the undo must bring
/// the fleet back), asserted equal. Returns the instances per batch.
fn check_same_work(fleet: &[NodeView], shape: &Shape) -> usize {
    let mut pair = Pair::new(fleet);
    let mut placed = None;
    for _ in 0..2 {
        let ours: Vec<usize> = shape
            .specs
            .iter()
            .map(|spec| {
                let out = pair.ours.place(spec);
                assert!(
                    out.is_complete(),
                    "{}: {} placed {} of {}",
                    shape.name,
                    spec.name(),
                    out.bound.len(),
                    out.wanted
                );
                out.bound.len()
            })
            .collect();
        undo_batch(&mut pair.ours, &shape.specs);
        let naive: Vec<usize> = shape
            .specs
            .iter()
            .map(|spec| {
                let b = pair.naive.place(spec);
                let n = b.len();
                pair.bound.push(b);
                n
            })
            .collect();
        naive_undo_batch(&mut pair.naive, &shape.specs, &pair.bound);
        pair.bound.clear();
        assert_eq!(
            ours, naive,
            "{}: the anchor places a different number of instances per workload",
            shape.name
        );
        let total: usize = ours.iter().sum();
        assert!(total > 0, "{}: nothing placed", shape.name);
        assert!(
            placed.is_none_or(|p| p == total),
            "{}: the undo did not restore the fleet",
            shape.name
        );
        placed = Some(total);
    }
    placed.unwrap_or(0)
}

fn criterion_benches(c: &mut Criterion, fleet: &[NodeView], shapes: &[(Shape, usize)]) {
    let mut group = c.benchmark_group("placement");
    group.sampling_mode(SamplingMode::Flat);
    for (shape, placed) in shapes {
        group.throughput(Throughput::Elements(*placed as u64));
        let mut pair = Pair::new(fleet);
        group.bench_with_input(
            BenchmarkId::new("scheduler", shape.name),
            &shape.specs,
            |b, specs| b.iter_custom(|iters| pair.time_ours(specs, iters)),
        );
        group.bench_with_input(
            BenchmarkId::new("naive_anchor", shape.name),
            &shape.specs,
            |b, specs| b.iter_custom(|iters| pair.time_naive(specs, iters)),
        );
    }
    group.finish();
}

/// How many batches fill about [`SLICE`].
fn calibrate(time: &mut dyn FnMut(u64) -> Duration) -> u64 {
    let mut iters = 1u64;
    loop {
        let took = time(iters);
        if took >= SLICE / 4 || iters >= 1 << 20 {
            let per = took.as_secs_f64() / iters as f64;
            return ((SLICE.as_secs_f64() / per.max(1e-12)) as u64).max(1);
        }
        iters *= 2;
    }
}

/// Runs both alternating for [`ROUNDS`] rounds (swapping which goes first); returns their
/// median placements per second.
fn side_by_side(fleet: &[NodeView], shape: &Shape, placed: usize) -> (f64, f64) {
    let mut pair = Pair::new(fleet);
    let specs = &shape.specs;
    let n_ours = calibrate(&mut |i| pair.time_ours(specs, i));
    let n_naive = calibrate(&mut |i| pair.time_naive(specs, i));
    let rate = |d: Duration, iters: u64| (placed as f64 * iters as f64) / d.as_secs_f64();
    let (mut ours, mut naive) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        if round % 2 == 0 {
            ours.push(rate(pair.time_ours(specs, n_ours), n_ours));
            naive.push(rate(pair.time_naive(specs, n_naive), n_naive));
        } else {
            naive.push(rate(pair.time_naive(specs, n_naive), n_naive));
            ours.push(rate(pair.time_ours(specs, n_ours), n_ours));
        }
    }
    (
        median_f64(&ours).unwrap_or(f64::NAN),
        median_f64(&naive).unwrap_or(f64::NAN),
    )
}

fn print_side_by_side(fleet: &[NodeView], shapes: &[(Shape, usize)]) {
    println!();
    println!(
        "side by side: {ROUNDS} rounds alternating, ~{} ms each, medians; \
         ratio = scheduler placements/s / anchor placements/s (> 1: the scheduler is faster)",
        SLICE.as_millis()
    );
    for (shape, placed) in shapes {
        let (ours, naive) = side_by_side(fleet, shape, *placed);
        println!(
            "{:<15} {:>11.0} placements/s | naive anchor {:>9.0} placements/s | ratio {:>6.1}x  \
             ({}; {} instances for {} workloads per batch)",
            shape.name,
            ours,
            naive,
            ours / naive,
            shape.what,
            placed,
            shape.specs.len()
        );
        println!(
            "metric placement.{0}.scheduler_per_s {ours:.0}\n\
             metric placement.{0}.anchor_per_s {naive:.0}\n\
             metric placement.{0}.ratio {1:.2}",
            shape.name,
            ours / naive
        );
    }
}

fn describe(fleet: &[NodeView]) {
    let count = |f: &dyn Fn(&NodeView) -> bool| fleet.iter().filter(|n| f(n)).count();
    println!(
        "fleet: {} nodes ({} online and not cordoned; x86_64 {}, aarch64 {}, arm {}; \
         tier=core {}; with a device {}) over {} sites",
        fleet.len(),
        count(&|n| n.online && !n.cordoned),
        count(&|n| n.arch == "x86_64"),
        count(&|n| n.arch == "aarch64"),
        count(&|n| n.arch == "arm"),
        count(&|n| n.labels.get("tier").is_some_and(|t| t == "core")),
        count(&|n| !n.devices.is_empty()),
        SITES.len()
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // `cargo test --benches` runs each case once with --test; skip the timing pass then.
    let quick = args.iter().any(|a| a == "--test" || a == "--list");
    let mut rng = Lcg(0x5eed_f1ee7);
    let fleet = fleet(&mut rng);
    describe(&fleet);
    let shapes: Vec<(Shape, usize)> = shapes(&mut rng)
        .into_iter()
        .map(|shape| {
            let placed = check_same_work(&fleet, &shape);
            println!(
                "check {:<15} scheduler and anchor both place {placed} instances for {} workloads",
                shape.name,
                shape.specs.len()
            );
            (shape, placed)
        })
        .collect();
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_millis(1500))
        .sample_size(20)
        .configure_from_args();
    criterion_benches(&mut c, &fleet, &shapes);
    c.final_summary();
    if !quick {
        print_side_by_side(&fleet, &shapes);
    }
}
