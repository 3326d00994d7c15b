//! One run of a placement scenario: orchestrator-core's own [`Scheduler`] places every
//! workload that arrives, ranking with a strategy, and the simulated fleet answers: a node
//! refuses some admissions, fetches an artifact it does not have, starts the instance slower
//! when it is busy, and crashes some instances soon after they start.
//!
//! **Common random numbers.** The arrivals and the fleet come from the seed alone, and every
//! draw about an instance on a node (refused, fetch and start times, a crash) from the seed,
//! the workload and the node: two strategies that put the same instance on the same node
//! meet the same outcome.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use edge_proto::NodeId;
use orchestrator_core::scheduler::learned::{
    Learned, Mode, PLACE_WIDTH, PlacePrediction, Weights, placement_features,
};
use orchestrator_core::scheduler::{
    Fit, LatLon, LeastAllocated, LoadShare, NodeHistory, NodeView, Resources, Scheduler, Score,
    haversine_km,
};
use orchestrator_core::workload::{ArtifactDigest, WorkloadSpec};

use super::onnx::OnnxPlacePredict;
use super::scenario::PlaceScenario;

/// The share of its CPU request an instance uses.
const CPU_USE: f64 = 0.7;

/// How a run ranks the feasible nodes.
#[derive(Debug, Clone)]
pub enum PlacePolicy {
    /// orchestrator-core's default: most free CPU and memory after placing, then closeness.
    LeastAllocated,
    /// A node drawn at random among the feasible ones.
    Random,
    /// orchestrator-core's [`Learned`] score over this model, with these weights.
    Model(edge_ai::Model, Weights),
    /// For training: least-allocated (or the model, when given), with a share `epsilon` of
    /// placements at random.
    Explore {
        epsilon: f64,
        model: Option<(edge_ai::Model, Weights)>,
    },
}

impl PlacePolicy {
    /// The name in the command line and the reports.
    pub fn name(&self) -> &'static str {
        match self {
            PlacePolicy::LeastAllocated => "least-allocated",
            PlacePolicy::Random => "random",
            PlacePolicy::Model(..) => "model",
            PlacePolicy::Explore { .. } => "explore",
        }
    }
}

/// A [`Score`] for every policy, batched so that every policy sees the same fits, and the
/// rows of features can be recorded.
#[derive(Debug)]
struct Strategy {
    kind: Kind,
    rng: fastrand::Rng,
    record: bool,
    rows: Vec<(NodeId, [f32; PLACE_WIDTH])>,
}

#[derive(Debug)]
enum Kind {
    Fixed,
    Random,
    Model(Box<Learned>),
    Explore(f64, Option<Box<Learned>>),
}

impl Score for Strategy {
    const BATCHED: bool = true;

    fn score(&self, fit: &Fit<'_>) -> f64 {
        LeastAllocated.score(fit)
    }

    fn score_batch(&mut self, fits: &[Fit<'_>], out: &mut Vec<f64>) {
        if self.record {
            self.rows.clear();
            for fit in fits {
                let mut row = [0.0; PLACE_WIDTH];
                placement_features(fit, &mut row);
                self.rows.push((fit.node(), row));
            }
        }
        let random = match &self.kind {
            Kind::Random => true,
            Kind::Explore(epsilon, _) => self.rng.f64() < *epsilon,
            _ => false,
        };
        match &mut self.kind {
            Kind::Model(learned) => learned.score_batch(fits, out),
            _ if random => out.extend(fits.iter().map(|_| self.rng.f64())),
            Kind::Explore(_, Some(learned)) => learned.score_batch(fits, out),
            _ => out.extend(fits.iter().map(|fit| LeastAllocated.score(fit))),
        }
    }
}

/// One placement attempt as a training row: the chosen node's features when it was chosen,
/// then what happened.
#[derive(Debug, Clone, PartialEq)]
pub struct PlaceRow {
    pub features: [f32; PLACE_WIDTH],
    /// From bind to running; 0 for a refused admission.
    pub startup_ms: f64,
    pub refused: bool,
    /// It crashed within the scenario's `restart_window_secs` of starting.
    pub restarted: bool,
}

/// One instance counted (placed after the warmup).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InstanceOutcome {
    /// From its first bind to running: refusals on the way and the startup where it runs.
    pub time_to_running_ms: f64,
    pub refusals: u32,
    pub restarted: bool,
    /// Distance to its `near` point, for a workload that has one.
    pub near_km: Option<f64>,
    /// Its artifact had to be fetched.
    pub fetched: bool,
}

/// What one run measured.
#[derive(Debug, Clone, Default)]
pub struct PlaceOutcome {
    pub instances: Vec<InstanceOutcome>,
    /// Instances wanted after the warmup that found no node.
    pub unplaced: u64,
    /// For the model: placements scored by its fallback, and by the model.
    pub fallback_placements: u64,
    pub model_placements: u64,
    /// Training rows, when asked for.
    pub rows: Vec<PlaceRow>,
}

/// A node of the fleet, beside what the scheduler knows of it.
#[derive(Debug, Clone)]
struct SimNode {
    id: NodeId,
    group: usize,
    phase: f64,
    location: LatLon,
    /// Artifact indices, least recently used first.
    cache: Vec<u32>,
    /// Artifact indices started here, with when (s): what the orchestrator knows it ran.
    ran: Vec<(u32, f64)>,
    /// When (s) instances here crashed, and admissions were refused.
    restarts: Vec<f64>,
    refusals: Vec<f64>,
    /// What the orchestrator measured of its fetches (Mbit/s) and starts (ms), as moving
    /// means.
    fetch_mbps: Option<f64>,
    start_ms: Option<f64>,
}

/// The weight of each new measure in [`SimNode`]'s moving means.
const MEASURE_ALPHA: f64 = 0.5;

fn measure(mean: &mut Option<f64>, value: f64) {
    *mean = Some(match *mean {
        Some(m) => m + MEASURE_ALPHA * (value - m),
        None => value,
    });
}

#[derive(Debug, Clone)]
struct Arrival {
    at_secs: f64,
    artifact: u32,
    artifact_mb: f64,
    cpu_millis: u64,
    memory_mb: u64,
    replicas: u32,
    near: Option<usize>,
    lifetime_secs: f64,
}

/// A uniform draw in `[0, 1)` from the seed and a key: the same key, the same number.
fn draw(seed: u64, a: u64, b: u64, tag: u64) -> f64 {
    let mut z = seed
        ^ a.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ b.wrapping_mul(0xc2b2_ae3d_27d4_eb4f)
        ^ tag.wrapping_mul(0x1656_67b1_9e37_79f9);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// A standard normal from two keyed draws.
fn normal(seed: u64, a: u64, b: u64, tag: u64) -> f64 {
    let u1 = 1.0 - draw(seed, a, b, tag);
    let u2 = draw(seed, a, b, tag + 1000);
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

fn node_id(i: usize) -> NodeId {
    NodeId(
        (i as u128 + 1)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)
            .to_be_bytes(),
    )
}

fn digest(artifact: u32) -> ArtifactDigest {
    // A valid digest by construction: "sha256:" and 64 lowercase hex digits.
    ArtifactDigest::parse(&format!("sha256:{:064x}", u64::from(artifact) + 1))
        .unwrap_or_else(|| unreachable!("64 hex digits make a digest"))
}

fn fleet(s: &PlaceScenario, seed: u64) -> Vec<SimNode> {
    let mut rng = fastrand::Rng::with_seed(seed ^ 0x5eed_f1ee);
    let mut nodes = Vec::new();
    for (g, group) in s.groups.iter().enumerate() {
        for _ in 0..group.count {
            let r = group.spread_km * rng.f64().sqrt();
            let angle = rng.f64() * std::f64::consts::TAU;
            let lat = (group.lat + r * angle.sin() / 111.2).clamp(-89.9, 89.9);
            let lon_scale = 111.2 * lat.to_radians().cos().max(0.01);
            let lon = (group.lon + r * angle.cos() / lon_scale + 540.0) % 360.0 - 180.0;
            nodes.push(SimNode {
                id: node_id(nodes.len()),
                group: g,
                phase: rng.f64(),
                location: LatLon { lat, lon },
                cache: Vec::new(),
                ran: Vec::new(),
                restarts: Vec::new(),
                refusals: Vec::new(),
                fetch_mbps: None,
                start_ms: None,
            });
        }
    }
    nodes
}

fn arrivals(s: &PlaceScenario, seed: u64) -> Vec<Arrival> {
    let w = &s.workloads;
    let mut rng = fastrand::Rng::with_seed(seed ^ 0xa771_7a15);
    let weights: Vec<f64> = (0..w.artifacts)
        .map(|k| 1.0 / f64::from(k + 1).powf(w.artifact_skew))
        .collect();
    let total: f64 = weights.iter().sum();
    // Each artifact's size is fixed for the run.
    let sizes: Vec<f64> = (0..w.artifacts)
        .map(|_| w.artifact_mb[0] + rng.f64() * (w.artifact_mb[1] - w.artifact_mb[0]))
        .collect();
    let rate = w.rate_per_min / 60.0;
    let mut out = Vec::new();
    let mut t = 0.0;
    if rate <= 0.0 {
        return out;
    }
    loop {
        t += -(1.0 - rng.f64()).ln() / rate;
        if t >= s.duration_secs {
            break;
        }
        let mut pick = rng.f64() * total;
        let mut artifact = 0;
        for (k, weight) in weights.iter().enumerate() {
            if pick < *weight {
                artifact = k as u32;
                break;
            }
            pick -= weight;
            artifact = k as u32;
        }
        let mut near_pick = rng.f64();
        let mut near = None;
        for (i, site) in w.near.iter().enumerate() {
            if near_pick < site.share {
                near = Some(i);
                break;
            }
            near_pick -= site.share;
        }
        let lifetime_secs = -(1.0 - rng.f64()).ln() * w.lifetime_secs;
        out.push(Arrival {
            at_secs: t,
            artifact,
            artifact_mb: sizes[artifact as usize],
            cpu_millis: w.cpu_millis[rng.usize(..w.cpu_millis.len())],
            memory_mb: w.memory_mb[rng.usize(..w.memory_mb.len())],
            replicas: w.replicas[rng.usize(..w.replicas.len())],
            near,
            lifetime_secs,
        });
    }
    out
}

fn spec(s: &PlaceScenario, index: usize, a: &Arrival) -> Option<WorkloadSpec> {
    let mut v = serde_json::json!({
        "name": format!("w{index}"),
        "version": "1",
        "artifact": digest(a.artifact).to_string(),
        "replicas": a.replicas,
        "resources": { "cpu_millis": a.cpu_millis, "memory_bytes": a.memory_mb * 1024 * 1024 },
    });
    if let Some(site) = a.near.and_then(|i| s.workloads.near.get(i)) {
        v["requirements"] = serde_json::json!({
            "near": { "lat": site.lat, "lon": site.lon, "radius_km": site.radius_km }
        });
    }
    WorkloadSpec::from_json(&serde_json::to_vec(&v).ok()?).ok()
}

/// Plays `scenario` for `seed` under `policy`; with `record`, keeps a training row per
/// attempt.
pub fn run(
    scenario: &PlaceScenario,
    seed: u64,
    policy: &PlacePolicy,
    record: bool,
) -> PlaceOutcome {
    let s = scenario;
    let mut nodes = fleet(s, seed);
    let by_id: HashMap<NodeId, usize> = nodes.iter().enumerate().map(|(i, n)| (n.id, i)).collect();
    let kind = match policy {
        PlacePolicy::LeastAllocated => Kind::Fixed,
        PlacePolicy::Random => Kind::Random,
        PlacePolicy::Explore { epsilon, model } => Kind::Explore(
            *epsilon,
            model
                .as_ref()
                .map(|(model, weights)| Box::new(learned(model, *weights))),
        ),
        PlacePolicy::Model(model, weights) => Kind::Model(Box::new(learned(model, *weights))),
    };
    let strategy = Strategy {
        kind,
        rng: fastrand::Rng::with_seed(seed ^ 0x7a4d_0111),
        record: record || matches!(policy, PlacePolicy::Model(..)),
        rows: Vec::new(),
    };
    let views = nodes.iter().map(|n| {
        let g = &s.groups[n.group];
        NodeView {
            id: n.id,
            name: format!("{}-{}", g.name, n.id.0[0]),
            online: true,
            cordoned: false,
            arch: "aarch64".into(),
            labels: Default::default(),
            devices: Vec::new(),
            location: Some(n.location),
            capacity: Resources {
                cpu_millis: u64::from(g.cpus) * 1000,
                memory_bytes: g.memory_mb * 1024 * 1024,
                disk_bytes: u64::MAX / 4,
            },
            allocated: Resources::default(),
            instances: Default::default(),
            ports_in_use: Vec::new(),
            history: NodeHistory::default(),
        }
    });
    let mut scheduler = Scheduler::with_score(strategy, views);
    let mut departures: BinaryHeap<Reverse<(u64, usize)>> = BinaryHeap::new();
    let mut live: HashMap<usize, WorkloadSpec> = HashMap::new();
    let mut out = PlaceOutcome::default();
    let window = s.history_window_secs;

    for (index, a) in arrivals(s, seed).iter().enumerate() {
        let now = a.at_secs;
        while let Some(Reverse((at_ms, w))) = departures.peek().copied() {
            if at_ms as f64 / 1000.0 > now {
                break;
            }
            departures.pop();
            if let Some(spec) = live.remove(&w) {
                scheduler.remove_workload(&spec);
            }
        }
        // What the orchestrator knows of every node now.
        for n in &mut nodes {
            let g = &s.groups[n.group];
            let allocated = scheduler.allocated(n.id).unwrap_or_default();
            let cpu = busy(s, n, now, allocated);
            let memory = allocated.memory_bytes as f64 / (g.memory_mb * 1024 * 1024) as f64;
            n.ran.retain(|(_, t)| now - t <= window);
            // Each once, the most recently started last.
            let mut artifacts: Vec<ArtifactDigest> = Vec::new();
            for (a, _) in n.ran.iter().rev() {
                let d = digest(*a);
                if !artifacts.contains(&d) {
                    artifacts.push(d);
                }
            }
            artifacts.reverse();
            let recent = |times: &[f64]| {
                times
                    .iter()
                    .filter(|&&t| t <= now && now - t <= window)
                    .count() as u32
            };
            scheduler.set_history(
                n.id,
                NodeHistory {
                    load: Some(LoadShare {
                        cpu: cpu as f32,
                        memory: memory.clamp(0.0, 1.0) as f32,
                    }),
                    artifacts,
                    restarts: recent(&n.restarts),
                    refusals: recent(&n.refusals),
                    fetch_mbps: n.fetch_mbps.map(|v| v as f32),
                    start_ms: n.start_ms.map(|v| v as f32),
                },
            );
        }
        let Some(spec) = spec(s, index, a) else {
            continue;
        };
        scheduler.set_artifact_size(spec.artifact(), (a.artifact_mb * 1e6) as u64);
        let counted = now >= s.warmup_secs;
        let outcome = scheduler.place(&spec);
        if counted {
            out.unplaced += u64::from(outcome.unplaced());
        }
        let mut pending: Vec<(NodeId, f64, u32)> = Vec::new();
        let mut bound = capture(&scheduler, &outcome.bound);
        // Each bound instance: refused (then the next node), or started.
        while let Some((node, features, predicted)) = bound.pop() {
            let (waited, refusals) = pending
                .iter()
                .position(|p| p.0 == node)
                .map(|i| {
                    let p = pending.swap_remove(i);
                    (p.1, p.2)
                })
                .unwrap_or((0.0, 0));
            let Some(&ni) = by_id.get(&node) else {
                continue;
            };
            let key = index as u64;
            let g = &s.groups[nodes[ni].group];
            if draw(seed, key, ni as u64, 1) < g.refuse {
                nodes[ni].refusals.push(now);
                if record {
                    out.rows.push(PlaceRow {
                        features,
                        startup_ms: 0.0,
                        refused: true,
                        restarted: false,
                    });
                }
                let again = scheduler.reject(&spec, node);
                let next = capture(&scheduler, &again.bound);
                for (id, ..) in &next {
                    pending.push((*id, waited + s.refuse_ms, refusals + 1));
                }
                if next.is_empty() && counted {
                    out.unplaced += 1;
                }
                bound.extend(next);
                continue;
            }
            let allocated = scheduler.allocated(node).unwrap_or_default();
            let n = &mut nodes[ni];
            let cpu = busy(s, n, now, allocated);
            let cached = n.cache.contains(&a.artifact);
            let fetch_ms = if cached {
                0.0
            } else {
                a.artifact_mb * 8.0 / g.fetch_mbps
                    * 1000.0
                    * (0.3 * normal(seed, key, ni as u64, 2)).exp()
            };
            let start_ms = g.start_ms
                * (1.0 + 3.0 * cpu * cpu)
                * (0.3 * normal(seed, key, ni as u64, 3)).exp();
            let startup_ms = fetch_ms + start_ms;
            let overload = ((cpu - 0.7) / 0.3).max(0.0);
            let rate = g.crash_per_hour * (1.0 + 4.0 * overload);
            let p_crash = 1.0 - (-rate * s.restart_window_secs / 3600.0).exp();
            let restarted = draw(seed, key, ni as u64, 4) < p_crash;
            let started = now + startup_ms / 1000.0;
            if restarted {
                n.restarts
                    .push(started + draw(seed, key, ni as u64, 5) * s.restart_window_secs);
            }
            n.cache.retain(|&c| c != a.artifact);
            n.cache.push(a.artifact);
            let keep = g.cache_artifacts as usize;
            if n.cache.len() > keep {
                let drop = n.cache.len() - keep;
                n.cache.drain(..drop);
            }
            n.ran.push((a.artifact, now));
            if fetch_ms > 0.0 {
                measure(&mut n.fetch_mbps, a.artifact_mb * 8.0 / (fetch_ms / 1000.0));
            }
            measure(&mut n.start_ms, start_ms);
            if let (Some(p), Kind::Model(learned)) = (predicted, &mut scheduler.score_mut().kind) {
                learned.observe(p, startup_ms);
            }
            if record {
                out.rows.push(PlaceRow {
                    features,
                    startup_ms,
                    refused: false,
                    restarted,
                });
            }
            if counted {
                let near_km = a.near.and_then(|i| s.workloads.near.get(i)).map(|site| {
                    haversine_km(
                        n.location,
                        LatLon {
                            lat: site.lat,
                            lon: site.lon,
                        },
                    )
                });
                out.instances.push(InstanceOutcome {
                    time_to_running_ms: waited + startup_ms,
                    refusals,
                    restarted,
                    near_km,
                    fetched: !cached,
                });
            }
        }
        if let Kind::Model(learned) = &scheduler.score().kind {
            if learned.mode() == Mode::Model {
                out.model_placements += 1;
            } else {
                out.fallback_placements += 1;
            }
        }
        live.insert(index, spec);
        departures.push(Reverse((((now + a.lifetime_secs) * 1000.0) as u64, index)));
    }
    out
}

/// The bound nodes of the last placement, each with its features and (for the model) its
/// prediction, in reverse order (popped first to last).
fn capture(
    scheduler: &Scheduler<Strategy>,
    bound: &[NodeId],
) -> Vec<(NodeId, [f32; PLACE_WIDTH], Option<PlacePrediction>)> {
    let strategy = scheduler.score();
    let mut out: Vec<_> = bound
        .iter()
        .map(|&id| {
            let features = strategy
                .rows
                .iter()
                .find(|(n, _)| *n == id)
                .map(|(_, r)| *r)
                .unwrap_or([0.0; PLACE_WIDTH]);
            let predicted = match &strategy.kind {
                Kind::Model(learned) => learned.predicted(id),
                _ => None,
            };
            (id, features, predicted)
        })
        .collect();
    out.reverse();
    out
}

fn learned(model: &edge_ai::Model, weights: Weights) -> Learned {
    Learned::new(OnnxPlacePredict::new(model.clone()).map(|p| Box::new(p) as _))
        .with_weights(weights)
}

/// A node's CPU busy share at `now`: its background load and its instances' use.
fn busy(s: &PlaceScenario, n: &SimNode, now: f64, allocated: Resources) -> f64 {
    let g = &s.groups[n.group];
    let l = g.load;
    let background =
        l.base + l.amplitude * (std::f64::consts::TAU * (now / l.period_secs + n.phase)).sin();
    let used = CPU_USE * allocated.cpu_millis as f64 / (f64::from(g.cpus) * 1000.0);
    (background + used).clamp(0.0, 1.0)
}
