//! The scheduler core: which nodes get the instances of a workload.
//!
//! A [`Scheduler`] keeps a snapshot of the candidate nodes ([`NodeView`]s: what each node is,
//! what it has, what is already taken, which instances it runs) and places workloads on it one
//! after another. Placing filters the nodes (no instance of this workload yet, online, not
//! cordoned, architecture, labels, devices, distance to `near`, free ports, free CPU, memory
//! and disk), scores the survivors with its [`Score`] (by default [`LeastAllocated`]: most
//! free CPU and memory after placing; then, when the spec has `near`, closeness), picks the
//! best with ties broken by node id, and binds: the snapshot's allocation and instance counts
//! are updated at once, so the next instance and the next workload see them. Spread is total:
//! a workload's instances never share a node, since they would share its ports and its data
//! directory. What cannot be placed comes back with one [`NodeReject`] per node saying why,
//! for `edgectl workloads NAME`.
//!
//! Placing a replicated workload is `O(words + matches + k log matches)` for `k` instances:
//! static constraints are answered by bitsets indexed by architecture, label and device, and
//! the per-call buffers are kept between calls, so the success path allocates only the list
//! of nodes it returns.
//!
//! **Invariants.** Pure: no I/O, no clock, no randomness; the same snapshot, spec and score
//! give the same placement, whatever order the nodes were added in. A score only ranks the
//! nodes that pass every filter: it can never place an instance where it does not fit. A bind
//! never takes a node's CPU, memory or disk past its capacity, and every node it picks
//! satisfies every requirement of the spec. It never talks to nodes: the caller sends the
//! admissions and reports a refusal with [`Scheduler::reject`], which tries the next best
//! node.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::fmt;

use edge_proto::NodeId;
use serde::{Serialize, Serializer};

use crate::fleet::NodeRecord;
use crate::workload::{Arch, ArtifactDigest, Near, Placement, WorkloadSpec};

pub use crate::workload::Resources;

pub mod learned;
mod score;

pub use score::{Fit, LeastAllocated, Score};

/// The mean Earth radius (IUGG), in kilometres.
pub const EARTH_RADIUS_KM: f64 = 6371.0088;

/// A point on the globe in WGS84 degrees.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LatLon {
    pub lat: f64,
    pub lon: f64,
}

/// Great-circle distance in kilometres between two points, by the haversine formula.
pub fn haversine_km(a: LatLon, b: LatLon) -> f64 {
    let (phi1, phi2) = (a.lat.to_radians(), b.lat.to_radians());
    let dphi = phi2 - phi1;
    let dlambda = (b.lon - a.lon).to_radians();
    let h = (dphi / 2.0).sin().powi(2) + phi1.cos() * phi2.cos() * (dlambda / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * h.clamp(0.0, 1.0).sqrt().asin()
}

/// Where a point stands with a workload's `near`, by the rule placing uses.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Reach {
    /// No location, or one off the globe: what placing calls "location unknown".
    Unknown,
    /// Within the radius, this far from its centre.
    Inside { km: f64 },
    /// Beyond the radius, this far from its centre.
    Outside { km: f64 },
}

/// Where `location` stands with `near`: inside or outside by the same chord comparison that
/// [`Scheduler::place`] filters with, so that a node placing would take is never called
/// outside, nor the reverse; the distance by [`haversine_km`], as "km away" is shown.
pub fn reach(near: Near, location: Option<LatLon>) -> Reach {
    let Some(point) = location.filter(|p| valid_location(*p)) else {
        return Reach::Unknown;
    };
    let km = haversine_km(
        point,
        LatLon {
            lat: near.lat,
            lon: near.lon,
        },
    );
    if Target::new(near).closeness(unit_vector(point)).is_some() {
        Reach::Inside { km }
    } else {
        Reach::Outside { km }
    }
}

/// One candidate node as the scheduler sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeView {
    pub id: NodeId,
    pub name: String,
    /// Has a live session: only online nodes get new instances.
    pub online: bool,
    /// The operator asked for no new instances here.
    pub cordoned: bool,
    /// As the node reports it (`std::env::consts::ARCH`).
    pub arch: String,
    pub labels: BTreeMap<String, String>,
    /// The accelerator kinds (`gpu`, `npu`, `video`, `gpio`, `other`) and the device paths
    /// (`/dev/...`) the node has.
    pub devices: Vec<String>,
    pub location: Option<LatLon>,
    /// All of the node's CPU (`cpus * 1000`) and memory, and its free disk.
    pub capacity: Resources,
    /// What the instances already on the node have taken.
    pub allocated: Resources,
    /// How many instances of each workload, by name, the node already runs.
    pub instances: BTreeMap<String, u32>,
    /// TCP ports the instances already on the node listen on.
    pub ports_in_use: Vec<u16>,
    /// What is known of the node's past, for a score that reads it (a learned one).
    pub history: NodeHistory,
}

/// What the scheduler may know of a node's past beside what it holds now: what a learned
/// score ([`learned::Learned`]) reads, and the default one ignores.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeHistory {
    /// The node's last reported load as shares of the whole machine, `None` before its first
    /// report.
    pub load: Option<LoadShare>,
    /// Artifacts (executables or images) that instances on the node ran or run, each once,
    /// the one started most recently last: likely in its cache (so an instance of them starts
    /// without a fetch) the more so the later it comes.
    pub artifacts: Vec<ArtifactDigest>,
    /// Restarts of instances on the node, all workloads, as reported.
    pub restarts: u32,
    /// Admissions the node refused, all workloads ([`Scheduler::reject`] counts them too).
    pub refusals: u32,
    /// The node's download rate for artifacts as last measured, in Mbit/s.
    pub fetch_mbps: Option<f32>,
    /// How long the node takes to start an instance once its artifact is there, as last
    /// measured, in milliseconds.
    pub start_ms: Option<f32>,
}

impl NodeHistory {
    /// Whether `artifact` is among [`NodeHistory::artifacts`].
    pub fn has_artifact(&self, artifact: ArtifactDigest) -> bool {
        self.artifacts.contains(&artifact)
    }

    /// How many other artifacts the node started since `artifact` (0: it was the last one),
    /// `None` when it is not among [`NodeHistory::artifacts`]: how far down a cache that drops
    /// the least recently used it would be.
    pub fn artifact_rank(&self, artifact: ArtifactDigest) -> Option<u32> {
        let at = self.artifacts.iter().rposition(|a| *a == artifact)?;
        u32::try_from(self.artifacts.len() - 1 - at).ok()
    }
}

/// A node's load as shares of the whole machine, each in `[0, 1]`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LoadShare {
    /// Busy CPU time over the last sample.
    pub cpu: f32,
    /// Memory in use.
    pub memory: f32,
}

impl NodeView {
    /// A registry record as a candidate with nothing on it yet; the caller adds `cordoned`,
    /// `allocated`, `instances` and `ports_in_use` from its own records.
    pub fn from_record(record: &NodeRecord, online: bool) -> Self {
        let info = &record.info;
        let mut devices: Vec<String> = Vec::with_capacity(info.accelerators.len() * 2);
        for a in &info.accelerators {
            devices.push(a.kind.clone());
            devices.push(a.path.clone());
        }
        devices.sort_unstable();
        devices.dedup();
        Self {
            id: record.id,
            name: record.name.clone(),
            online,
            cordoned: false,
            arch: info.arch.clone(),
            labels: info.labels.clone(),
            devices,
            location: info.location.map(|l| LatLon {
                lat: l.lat,
                lon: l.lon,
            }),
            capacity: Resources {
                cpu_millis: u64::from(info.cpus) * 1000,
                memory_bytes: info.memory_bytes,
                disk_bytes: info.disk_free_bytes,
            },
            allocated: Resources::default(),
            instances: BTreeMap::new(),
            ports_in_use: Vec::new(),
            history: NodeHistory {
                load: record.load.as_ref().map(|l| LoadShare {
                    cpu: (l.cpu_percent / 100.0).clamp(0.0, 1.0),
                    memory: if info.memory_bytes == 0 {
                        0.0
                    } else {
                        (l.memory_used_bytes as f64 / info.memory_bytes as f64).clamp(0.0, 1.0)
                            as f32
                    },
                }),
                ..NodeHistory::default()
            },
        }
    }

    /// How many instances of `workload` the node runs.
    pub fn instances_of(&self, workload: &str) -> u32 {
        self.instances.get(workload).copied().unwrap_or(0)
    }
}

/// Why a node cannot take (another) instance of a workload. When several apply, the first in
/// this order is given.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum RejectReason {
    /// The node already runs an instance of this workload: instances never share a node.
    AlreadyRuns,
    NotOnline,
    Cordoned,
    /// The node refused this workload's admission (see [`Scheduler::reject`]).
    Refused,
    /// The node's architecture is not one the workload runs on.
    Arch {
        have: String,
    },
    /// The workload's image has no platform for the node's architecture.
    ImageArch {
        have: String,
    },
    /// The node lacks this label or has another value for it.
    Label {
        key: String,
    },
    /// The node lacks this accelerator kind or device path.
    Device {
        want: String,
    },
    /// The workload wants to run near a point, and the node has not said where it is.
    NoLocation,
    /// The node is this far from the workload's `near` point, beyond its radius.
    TooFar {
        km: f64,
    },
    /// An instance on the node already listens on this port.
    Port {
        port: u16,
    },
    Cpu {
        free: u64,
        want: u64,
    },
    Memory {
        free: u64,
        want: u64,
    },
    Disk {
        free: u64,
        want: u64,
    },
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AlreadyRuns => f.write_str("already runs one"),
            Self::NotOnline => f.write_str("not online"),
            Self::Cordoned => f.write_str("cordoned"),
            Self::Refused => f.write_str("refused the admission"),
            Self::Arch { have } => write!(f, "architecture {have} is not wanted"),
            Self::ImageArch { have } => write!(f, "the image has no {have} platform"),
            Self::Label { key } => write!(f, "label {key} missing or different"),
            Self::Device { want } => write!(f, "no device {want}"),
            Self::NoLocation => f.write_str("location unknown"),
            Self::TooFar { km } => write!(f, "{km:.1} km away, beyond the radius"),
            Self::Port { port } => write!(f, "port {port} in use"),
            Self::Cpu { free, want } => write!(f, "cpu: {free}m free, {want}m wanted"),
            Self::Memory { free, want } => write!(f, "memory: {free} bytes free, {want} wanted"),
            Self::Disk { free, want } => write!(f, "disk: {free} bytes free, {want} wanted"),
        }
    }
}

/// Why one node did not get an instance.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeReject {
    #[serde(with = "crate::fleet::hex_id")]
    pub node: NodeId,
    pub name: String,
    #[serde(flatten)]
    pub reason: RejectReason,
}

/// The result of one [`Scheduler::place`].
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Outcome {
    /// How many instances were to be placed: replicas minus those already placed, or for a
    /// per-node workload, the nodes that match its requirements and run none yet.
    pub wanted: u32,
    /// One node per instance placed (a node may appear more than once), in the order placed;
    /// for a per-node workload, sorted by node id. Already bound in the snapshot.
    #[serde(serialize_with = "hex_ids")]
    pub bound: Vec<NodeId>,
    /// When fewer than `wanted` were placed, [`Scheduler::explain`] after placing: why each
    /// node could not take one more (for a per-node workload, why each node without an
    /// instance has none). Otherwise empty.
    pub rejects: Vec<NodeReject>,
}

impl Outcome {
    /// Instances that found no node.
    pub fn unplaced(&self) -> u32 {
        let bound = u32::try_from(self.bound.len()).unwrap_or(u32::MAX);
        self.wanted.saturating_sub(bound)
    }

    pub fn is_complete(&self) -> bool {
        self.unplaced() == 0
    }
}

fn hex_ids<S: Serializer>(ids: &[NodeId], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(ids.iter().map(|id| edge_proto::digest::encode_hex(&id.0)))
}

/// Places workloads on a snapshot of the fleet, ranking the candidates with `S`. See the
/// module docs.
#[derive(Debug, Clone, Default)]
pub struct Scheduler<S = LeastAllocated> {
    /// By slot; `None` for a removed node whose slot waits in `free_slots`.
    nodes: Vec<Option<Node>>,
    /// By slot, beside `nodes`: what the placement loop reads for every candidate.
    hot: Vec<Hot>,
    free_slots: Vec<usize>,
    by_id: HashMap<NodeId, usize>,
    index: Index,
    workloads: HashMap<String, WorkloadState>,
    /// Artifact sizes in bytes, for a batched score ([`Scheduler::set_artifact_size`]).
    artifact_bytes: HashMap<ArtifactDigest, u64>,
    scratch: Scratch,
    score: S,
}

/// Which slots have which static attribute: one bitset per architecture, label and device.
#[derive(Debug, Clone, Default)]
struct Index {
    /// Online and not cordoned.
    eligible: Bitset,
    arch: [Bitset; Arch::ALL.len()],
    labels: HashMap<(Sym, Sym), Bitset>,
    devices: HashMap<Sym, Bitset>,
    /// Label keys and values and device names, interned. Grows with the distinct strings the
    /// fleet has ever reported, which operators keep small.
    symbols: HashMap<String, Sym>,
}

type Sym = u32;

#[derive(Debug, Clone)]
struct Node {
    id: NodeId,
    name: String,
    online: bool,
    cordoned: bool,
    arch: String,
    labels: BTreeMap<String, String>,
    devices: Vec<String>,
    location: Option<LatLon>,
    capacity: Resources,
    allocated: Resources,
    /// Sorted; a port appears once per instance that listens on it.
    ports: Vec<u16>,
    history: NodeHistory,
    label_syms: Vec<(Sym, Sym)>,
    device_syms: Vec<Sym>,
}

/// The part of a node the placement loop reads for every candidate, kept apart from the rest
/// so that a scan over a thousand nodes stays in cache.
#[derive(Debug, Clone, Copy)]
struct Hot {
    /// False for a removed node's slot.
    present: bool,
    /// Instances of the workload being placed; 0 between placements.
    count: u32,
    id: NodeId,
    /// `capacity - allocated`, or 0 where more is allocated than there is.
    free: Resources,
    /// `free.cpu_millis * inv_cpu + free.memory_bytes * inv_memory`: what the score starts
    /// from.
    free_fraction: f64,
    /// `1 / capacity` for CPU and memory, 0 when the capacity is 0.
    inv_cpu: f64,
    inv_memory: f64,
    /// The location as a unit vector, for distance checks without trigonometry.
    unit: Option<[f64; 3]>,
}

#[derive(Debug, Clone, Default)]
struct WorkloadState {
    total: u64,
    /// Instances by slot; no zero counts.
    on: BTreeMap<usize, u32>,
    /// Slots whose node refused an admission of this workload.
    refused: Bitset,
}

/// Buffers kept between placements so that placing does not allocate per node.
#[derive(Debug, Clone, Default)]
struct Scratch {
    /// Slots that pass the static constraints.
    mask: Vec<u64>,
    candidates: Vec<Candidate>,
}

#[derive(Debug, Clone, Default)]
struct Bitset(Vec<u64>);

impl Bitset {
    #[inline]
    fn set(&mut self, i: usize) {
        let w = i / 64;
        if w >= self.0.len() {
            self.0.resize(w + 1, 0);
        }
        self.0[w] |= 1 << (i % 64);
    }

    #[inline]
    fn clear(&mut self, i: usize) {
        if let Some(word) = self.0.get_mut(i / 64) {
            *word &= !(1 << (i % 64));
        }
    }

    #[inline]
    fn get(&self, i: usize) -> bool {
        self.word(i / 64) & (1 << (i % 64)) != 0
    }

    #[inline]
    fn word(&self, w: usize) -> u64 {
        self.0.get(w).copied().unwrap_or(0)
    }
}

/// A feasible node for the next instance. Greater is better.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    score: f64,
    id: NodeId,
    slot: usize,
}

impl Candidate {
    /// `self > other` for the finite scores `score` gives, without the general comparison:
    /// this runs once per candidate node.
    #[inline(always)]
    fn better_than(&self, other: &Self) -> bool {
        self.score > other.score || (self.score == other.score && self.id < other.id)
    }
}

/// The dynamic checks (free resources, ports, distance) of one more instance on `slot`,
/// which passed the static ones: `Some(proximity)` when it fits.
#[inline(always)]
fn feasible(
    hot: &[Hot],
    nodes: &[Option<Node>],
    slot: usize,
    want: &Want,
    ports: &[u16],
    target: Option<&Target>,
) -> Option<Option<f64>> {
    let h = &hot[slot];
    // A workload's instances never share a node: they would share its ports and data.
    if !h.present || h.count > 0 {
        return None;
    }
    let free = h.free;
    let want_r = want.resources;
    if want_r.cpu_millis > free.cpu_millis
        || want_r.memory_bytes > free.memory_bytes
        || want_r.disk_bytes > free.disk_bytes
    {
        return None;
    }
    if !ports.is_empty() {
        let node = nodes[slot].as_ref()?;
        if !ports.iter().all(|p| node.ports.binary_search(p).is_err()) {
            return None;
        }
    }
    Some(match target {
        Some(t) => Some(t.proximity(h)?),
        None => None,
    })
}

/// [`feasible`], and the score of one more instance on `slot`.
#[inline(always)]
fn candidate<S: Score>(
    score: &S,
    hot: &[Hot],
    nodes: &[Option<Node>],
    slot: usize,
    want: &Want,
    ports: &[u16],
    target: Option<&Target>,
) -> Option<Candidate> {
    let proximity = feasible(hot, nodes, slot, want, ports, target)?;
    let h = &hot[slot];
    Some(Candidate {
        score: score.score(&Fit {
            node: h,
            want,
            proximity,
            history: None,
            cache_rank: None,
            artifact_bytes: 0,
        }),
        id: h.id,
        slot,
    })
}

/// Every feasible slot of `mask` as a [`Candidate`], scored in one [`Score::score_batch`].
#[allow(clippy::too_many_arguments)]
fn batch_candidates<S: Score>(
    score: &mut S,
    hot: &[Hot],
    nodes: &[Option<Node>],
    mask: &[u64],
    want: &Want,
    ports: &[u16],
    target: Option<&Target>,
    (artifact, artifact_bytes): (ArtifactDigest, u64),
    out: &mut Vec<Candidate>,
) {
    let mut fits = Vec::new();
    let mut slots = Vec::new();
    for slot in set_bits(mask) {
        let Some(proximity) = feasible(hot, nodes, slot, want, ports, target) else {
            continue;
        };
        let Some(node) = nodes[slot].as_ref() else {
            continue;
        };
        fits.push(Fit {
            node: &hot[slot],
            want,
            proximity,
            history: Some(&node.history),
            cache_rank: node.history.artifact_rank(artifact),
            artifact_bytes,
        });
        slots.push(slot);
    }
    let mut scores = Vec::with_capacity(fits.len());
    score.score_batch(&fits, &mut scores);
    out.extend(slots.iter().enumerate().map(|(i, &slot)| {
        let s = scores.get(i).copied().unwrap_or(f64::MIN);
        Candidate {
            score: if s.is_finite() { s } else { f64::MIN },
            id: hot[slot].id,
            slot,
        }
    }));
}

/// What one instance asks for, with the CPU and memory as floats for scoring.
#[derive(Debug, Clone, Copy)]
struct Want {
    resources: Resources,
    cpu: f64,
    memory: f64,
}

impl Ord for Candidate {
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.id.cmp(&self.id))
    }
}

impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Candidate {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Candidate {}

/// The spec's `near`, prepared for comparing unit vectors: the chord between two points on
/// the unit sphere grows with their great-circle distance, so comparing squared chords gives
/// the same answer as comparing haversine distances, without trigonometry per node.
#[derive(Debug, Clone, Copy)]
struct Target {
    near: Near,
    unit: [f64; 3],
    /// `1 / chord_max`, 0 when the radius is too small for a chord to have a length.
    inv_chord_max: f64,
    chord_max2: f64,
}

impl Target {
    #[inline]
    fn new(near: Near) -> Self {
        let angle = near.radius_km / EARTH_RADIUS_KM;
        let unit = unit_vector(LatLon {
            lat: near.lat,
            lon: near.lon,
        });
        if angle >= std::f64::consts::PI {
            // Half the globe or more: every point is within reach.
            return Self {
                near,
                unit,
                inv_chord_max: 0.5,
                chord_max2: f64::INFINITY,
            };
        }
        let chord_max = 2.0 * (angle / 2.0).sin();
        Self {
            near,
            unit,
            inv_chord_max: if chord_max > 0.0 {
                1.0 / chord_max
            } else {
                0.0
            },
            chord_max2: chord_max * chord_max,
        }
    }

    /// `Some(closeness in [0, 1])` if the point is within the radius, 1 at the centre.
    #[inline(always)]
    fn proximity(&self, node: &Hot) -> Option<f64> {
        self.closeness(node.unit?)
    }

    /// [`Target::proximity`] of a point given as its unit vector.
    #[inline(always)]
    fn closeness(&self, u: [f64; 3]) -> Option<f64> {
        let d = [
            u[0] - self.unit[0],
            u[1] - self.unit[1],
            u[2] - self.unit[2],
        ];
        let chord2 = d[0] * d[0] + d[1] * d[1] + d[2] * d[2];
        if chord2 <= self.chord_max2 {
            Some(1.0 - (chord2.sqrt() * self.inv_chord_max).min(1.0))
        } else {
            None
        }
    }
}

#[inline]
fn unit_vector(p: LatLon) -> [f64; 3] {
    let (phi, lambda) = (p.lat.to_radians(), p.lon.to_radians());
    [
        phi.cos() * lambda.cos(),
        phi.cos() * lambda.sin(),
        phi.sin(),
    ]
}

#[inline]
fn valid_location(p: LatLon) -> bool {
    p.lat.is_finite()
        && p.lon.is_finite()
        && (-90.0..=90.0).contains(&p.lat)
        && (-180.0..=180.0).contains(&p.lon)
}

#[inline]
fn free(capacity: Resources, allocated: Resources) -> Resources {
    sub(capacity, allocated)
}

impl Hot {
    #[inline]
    fn set_free(&mut self, free: Resources) {
        self.free = free;
        self.free_fraction =
            free.cpu_millis as f64 * self.inv_cpu + free.memory_bytes as f64 * self.inv_memory;
    }
}

#[inline]
fn add(a: Resources, b: Resources) -> Resources {
    Resources {
        cpu_millis: a.cpu_millis.saturating_add(b.cpu_millis),
        memory_bytes: a.memory_bytes.saturating_add(b.memory_bytes),
        disk_bytes: a.disk_bytes.saturating_add(b.disk_bytes),
    }
}

#[inline]
fn sub(a: Resources, b: Resources) -> Resources {
    Resources {
        cpu_millis: a.cpu_millis.saturating_sub(b.cpu_millis),
        memory_bytes: a.memory_bytes.saturating_sub(b.memory_bytes),
        disk_bytes: a.disk_bytes.saturating_sub(b.disk_bytes),
    }
}

#[inline]
fn times(r: Resources, n: u32) -> Resources {
    let n = u64::from(n);
    Resources {
        cpu_millis: r.cpu_millis.saturating_mul(n),
        memory_bytes: r.memory_bytes.saturating_mul(n),
        disk_bytes: r.disk_bytes.saturating_mul(n),
    }
}

#[inline]
fn inverse(capacity: u64) -> f64 {
    if capacity == 0 {
        0.0
    } else {
        1.0 / capacity as f64
    }
}

#[inline]
fn bind(hot: &mut Hot, node: &mut Node, want: Resources, ports: &[u16]) {
    node.allocated = add(node.allocated, want);
    hot.set_free(free(node.capacity, node.allocated));
    if !ports.is_empty() {
        node.ports.extend_from_slice(ports);
        node.ports.sort_unstable();
    }
}

fn unbind(hot: &mut Hot, node: &mut Node, resources: Resources, ports: &[u16], instances: u32) {
    node.allocated = sub(node.allocated, times(resources, instances));
    hot.set_free(free(node.capacity, node.allocated));
    for _ in 0..instances {
        for p in ports {
            if let Ok(i) = node.ports.binary_search(p) {
                node.ports.remove(i);
            }
        }
    }
}

impl Scheduler {
    /// A snapshot of these nodes, ranked by [`LeastAllocated`]. A node listed twice keeps its
    /// last view.
    pub fn new(nodes: impl IntoIterator<Item = NodeView>) -> Self {
        Self::with_score(LeastAllocated, nodes)
    }
}

// Generic over the score, these methods are compiled in each crate that calls them, not in
// this one: the small helpers they call (and the spec's accessors) are `#[inline]` so that a
// caller's copy of `place` inlines them as this crate's own would.
impl<S: Score> Scheduler<S> {
    /// A snapshot of these nodes, ranked by `score`. A node listed twice keeps its last view.
    pub fn with_score(score: S, nodes: impl IntoIterator<Item = NodeView>) -> Self {
        let mut s = Self {
            nodes: Vec::new(),
            hot: Vec::new(),
            free_slots: Vec::new(),
            by_id: HashMap::new(),
            index: Index::default(),
            workloads: HashMap::new(),
            artifact_bytes: HashMap::new(),
            scratch: Scratch::default(),
            score,
        };
        for n in nodes {
            s.upsert_node(n);
        }
        s
    }

    /// What ranks the candidates.
    pub fn score(&self) -> &S {
        &self.score
    }

    /// Adds a node, or replaces everything the snapshot knows about it (its allocation and
    /// instances too: the view is the caller's truth). Refusals it made are kept.
    pub fn upsert_node(&mut self, mut view: NodeView) {
        let instances = std::mem::take(&mut view.instances);
        let slot = match self.by_id.get(&view.id) {
            Some(&slot) => {
                self.unindex_slot(slot);
                for ws in self.workloads.values_mut() {
                    if let Some(n) = ws.on.remove(&slot) {
                        ws.total -= u64::from(n);
                    }
                }
                slot
            }
            None => {
                let slot = match self.free_slots.pop() {
                    Some(slot) => slot,
                    None => {
                        self.nodes.push(None);
                        self.hot.push(Hot {
                            present: false,
                            count: 0,
                            id: view.id,
                            free: Resources::default(),
                            free_fraction: 0.0,
                            inv_cpu: 0.0,
                            inv_memory: 0.0,
                            unit: None,
                        });
                        self.nodes.len() - 1
                    }
                };
                self.by_id.insert(view.id, slot);
                slot
            }
        };
        let location = view.location.filter(|p| valid_location(*p));
        let mut ports = view.ports_in_use;
        ports.sort_unstable();
        let mut devices = view.devices;
        devices.sort_unstable();
        devices.dedup();
        let node = Node {
            id: view.id,
            name: view.name,
            online: view.online,
            cordoned: view.cordoned,
            arch: view.arch,
            labels: view.labels,
            devices,
            location,
            capacity: view.capacity,
            allocated: view.allocated,
            ports,
            history: view.history,
            label_syms: Vec::new(),
            device_syms: Vec::new(),
        };
        let mut hot = Hot {
            present: true,
            count: 0,
            id: view.id,
            free: Resources::default(),
            free_fraction: 0.0,
            inv_cpu: inverse(view.capacity.cpu_millis),
            inv_memory: inverse(view.capacity.memory_bytes),
            unit: location.map(unit_vector),
        };
        hot.set_free(free(view.capacity, view.allocated));
        self.hot[slot] = hot;
        self.nodes[slot] = Some(node);
        self.index_slot(slot);
        for (name, n) in instances {
            if n > 0 {
                let ws = self.workload_mut(&name);
                ws.on.insert(slot, n);
                ws.total += u64::from(n);
            }
        }
    }

    /// Forgets a node, its instances and its refusals. Returns whether it was known.
    pub fn remove_node(&mut self, id: NodeId) -> bool {
        let Some(slot) = self.by_id.remove(&id) else {
            return false;
        };
        self.unindex_slot(slot);
        for ws in self.workloads.values_mut() {
            if let Some(n) = ws.on.remove(&slot) {
                ws.total -= u64::from(n);
            }
            ws.refused.clear(slot);
        }
        self.nodes[slot] = None;
        self.hot[slot].present = false;
        self.free_slots.push(slot);
        true
    }

    /// A node's session came or went. Returns whether the node is known.
    pub fn set_online(&mut self, id: NodeId, online: bool) -> bool {
        self.update(id, |n| n.online = online)
    }

    /// The operator cordoned or uncordoned a node. Returns whether the node is known.
    pub fn set_cordoned(&mut self, id: NodeId, cordoned: bool) -> bool {
        self.update(id, |n| n.cordoned = cordoned)
    }

    fn update(&mut self, id: NodeId, f: impl FnOnce(&mut Node)) -> bool {
        let Some(&slot) = self.by_id.get(&id) else {
            return false;
        };
        let Some(node) = self.nodes[slot].as_mut() else {
            return false;
        };
        f(node);
        if node.online && !node.cordoned {
            self.index.eligible.set(slot);
        } else {
            self.index.eligible.clear(slot);
        }
        true
    }

    /// How many nodes the snapshot holds.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// The ids of the nodes in the snapshot, in no particular order.
    pub fn node_ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.by_id.keys().copied()
    }

    /// A node as the snapshot has it now, placements included.
    pub fn node(&self, id: NodeId) -> Option<NodeView> {
        let slot = *self.by_id.get(&id)?;
        let n = self.nodes[slot].as_ref()?;
        let instances = self
            .workloads
            .iter()
            .filter_map(|(name, ws)| ws.on.get(&slot).map(|c| (name.clone(), *c)))
            .collect();
        Some(NodeView {
            id: n.id,
            name: n.name.clone(),
            online: n.online,
            cordoned: n.cordoned,
            arch: n.arch.clone(),
            labels: n.labels.clone(),
            devices: n.devices.clone(),
            location: n.location,
            capacity: n.capacity,
            allocated: n.allocated,
            instances,
            ports_in_use: n.ports.clone(),
            history: n.history.clone(),
        })
    }

    /// Replaces what the snapshot knows of a node's past. Returns whether the node is known.
    pub fn set_history(&mut self, id: NodeId, history: NodeHistory) -> bool {
        self.update(id, |n| n.history = history)
    }

    /// How many bytes `artifact` is, for a score that weighs fetching it.
    pub fn set_artifact_size(&mut self, artifact: ArtifactDigest, bytes: u64) {
        self.artifact_bytes.insert(artifact, bytes);
    }

    /// Forgets the size of `artifact` (no workload uses it any more).
    pub fn forget_artifact_size(&mut self, artifact: ArtifactDigest) {
        self.artifact_bytes.remove(&artifact);
    }

    /// What ranks the candidates, to tell it what happened (a learned score's outcomes).
    pub fn score_mut(&mut self) -> &mut S {
        &mut self.score
    }

    /// What is taken on a node, placements included.
    pub fn allocated(&self, id: NodeId) -> Option<Resources> {
        let slot = *self.by_id.get(&id)?;
        self.nodes[slot].as_ref().map(|n| n.allocated)
    }

    /// Instances of `workload` on a node.
    pub fn instances_of(&self, workload: &str, id: NodeId) -> u32 {
        let (Some(ws), Some(slot)) = (self.workloads.get(workload), self.by_id.get(&id)) else {
            return 0;
        };
        ws.on.get(slot).copied().unwrap_or(0)
    }

    /// Instances of `workload` on all nodes of the snapshot, online or not.
    pub fn instances(&self, workload: &str) -> u64 {
        self.workloads.get(workload).map_or(0, |ws| ws.total)
    }

    /// Places what is missing of `spec` and binds it in the snapshot: for `replicas = N`, N
    /// minus the instances the snapshot already has (on any node, online or not: an offline
    /// edge node keeps running its instances); for `per-node`, one on every node that matches
    /// the requirements and runs none. Never removes instances.
    pub fn place(&mut self, spec: &WorkloadSpec) -> Outcome {
        self.place_within(spec, None)
    }

    /// Places `more` instances of a replicated `spec` beside those it has, whatever its
    /// `replicas` say, with the same filters and score as [`Scheduler::place`] (so never on a
    /// node that runs one). For an instance that takes over from another still running (its
    /// node left the workload's `near` radius): the caller counts the two as one until the
    /// old one is released. A per-node workload is placed as by [`Scheduler::place`].
    pub fn place_more(&mut self, spec: &WorkloadSpec, more: u32) -> Outcome {
        self.place_within(spec, Some(more))
    }

    fn place_within(&mut self, spec: &WorkloadSpec, more: Option<u32>) -> Outcome {
        let want = spec.resources();
        let ports = spec.ports();
        let target = spec.requirements().near.map(Target::new);
        if !self.workloads.contains_key(spec.name()) {
            self.workloads
                .insert(spec.name().to_owned(), WorkloadState::default());
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        let Self {
            nodes,
            hot,
            workloads,
            index,
            score,
            artifact_bytes,
            ..
        } = self;
        let Some(ws) = workloads.get_mut(spec.name()) else {
            // Inserted above.
            self.scratch = scratch;
            return Outcome::default();
        };
        index.static_mask(nodes.len(), spec, &ws.refused, &mut scratch.mask);
        for (&slot, &n) in &ws.on {
            hot[slot].count = n;
        }
        let want = Want {
            resources: want,
            cpu: want.cpu_millis as f64,
            memory: want.memory_bytes as f64,
        };
        let target = target.as_ref();
        let mut out = Outcome::default();
        let bind_at =
            |slot: usize, hot: &mut [Hot], nodes: &mut [Option<Node>], ws: &mut WorkloadState| {
                let node = nodes[slot].as_mut()?;
                let h = &mut hot[slot];
                bind(h, node, want.resources, ports);
                *ws.on.entry(slot).or_insert(0) += 1;
                ws.total += 1;
                h.count += 1;
                Some(h.id)
            };
        match spec.placement() {
            Placement::Replicas(replicas) => {
                let missing = u64::from(replicas).saturating_sub(ws.total);
                let k = more.unwrap_or_else(|| u32::try_from(missing).unwrap_or(u32::MAX));
                out.wanted = k;
                if S::BATCHED && k >= 1 {
                    let candidates = &mut scratch.candidates;
                    candidates.clear();
                    batch_candidates(
                        score,
                        hot,
                        nodes,
                        &scratch.mask,
                        &want,
                        ports,
                        target,
                        (
                            spec.artifact(),
                            artifact_bytes.get(&spec.artifact()).copied().unwrap_or(0),
                        ),
                        candidates,
                    );
                    out.bound.reserve(k as usize);
                    let mut heap = BinaryHeap::from(std::mem::take(candidates));
                    while out.bound.len() < k as usize {
                        let Some(best) = heap.pop() else { break };
                        let Some(id) = bind_at(best.slot, hot, nodes, ws) else {
                            continue;
                        };
                        out.bound.push(id);
                    }
                    *candidates = heap.into_vec();
                } else if k == 1 {
                    let score = &*score;
                    let mut best: Option<Candidate> = None;
                    for slot in set_bits(&scratch.mask) {
                        if let Some(c) = candidate(score, hot, nodes, slot, &want, ports, target)
                            && best.as_ref().is_none_or(|b| c.better_than(b))
                        {
                            best = Some(c);
                        }
                    }
                    if let Some(best) = best
                        && let Some(id) = bind_at(best.slot, hot, nodes, ws)
                    {
                        out.bound.push(id);
                    }
                } else if k > 1 {
                    let score = &*score;
                    let candidates = &mut scratch.candidates;
                    candidates.clear();
                    for slot in set_bits(&scratch.mask) {
                        candidates.extend(candidate(score, hot, nodes, slot, &want, ports, target));
                    }
                    out.bound.reserve(k as usize);
                    let mut heap = BinaryHeap::from(std::mem::take(candidates));
                    while out.bound.len() < k as usize {
                        let Some(best) = heap.pop() else { break };
                        let Some(id) = bind_at(best.slot, hot, nodes, ws) else {
                            continue;
                        };
                        out.bound.push(id);
                    }
                    *candidates = heap.into_vec();
                }
            }
            Placement::PerNode => {
                let mut wanted = 0u32;
                for slot in set_bits(&scratch.mask) {
                    if hot[slot].count > 0 || !hot[slot].present {
                        continue;
                    }
                    if let Some(t) = target
                        && t.proximity(&hot[slot]).is_none()
                    {
                        continue;
                    }
                    wanted += 1;
                    if feasible(hot, nodes, slot, &want, ports, target).is_some()
                        && let Some(id) = bind_at(slot, hot, nodes, ws)
                    {
                        out.bound.push(id);
                    }
                }
                out.wanted = wanted;
                out.bound.sort_unstable();
            }
        }

        for &slot in ws.on.keys() {
            hot[slot].count = 0;
        }
        self.scratch = scratch;
        if !out.is_complete() {
            out.rejects = self.explain(spec);
        }
        out
    }

    /// Why each node cannot take one more instance of `spec` now (for a per-node workload:
    /// each node that runs none), by node id. Nodes that could are left out. `O(nodes)`, with
    /// string comparisons: for showing to a person, not for the placement loop.
    pub fn explain(&self, spec: &WorkloadSpec) -> Vec<NodeReject> {
        let ws = self.workloads.get(spec.name());
        let target = spec.requirements().near.map(Target::new);
        let per_node = matches!(spec.placement(), Placement::PerNode);
        let mut rejects = Vec::new();
        for (slot, node) in self.nodes.iter().enumerate() {
            let Some(node) = node else { continue };
            let instances = ws.and_then(|ws| ws.on.get(&slot)).copied().unwrap_or(0);
            if per_node && instances > 0 {
                continue;
            }
            let refused = ws.is_some_and(|ws| ws.refused.get(slot));
            let runs_one = instances > 0;
            if let Some(reason) = why_not(
                node,
                &self.hot[slot],
                runs_one,
                refused,
                spec,
                target.as_ref(),
            ) {
                rejects.push(NodeReject {
                    node: node.id,
                    name: node.name.clone(),
                    reason,
                });
            }
        }
        rejects.sort_unstable_by_key(|r| r.node);
        rejects
    }

    /// Why `node` cannot take one more instance of `spec` now; `None` if it can (or is not in
    /// the snapshot).
    pub fn why_not(&self, spec: &WorkloadSpec, node: NodeId) -> Option<RejectReason> {
        let slot = *self.by_id.get(&node)?;
        let n = self.nodes[slot].as_ref()?;
        let ws = self.workloads.get(spec.name());
        let refused = ws.is_some_and(|ws| ws.refused.get(slot));
        let runs_one = ws.is_some_and(|ws| ws.on.contains_key(&slot));
        let target = spec.requirements().near.map(Target::new);
        why_not(n, &self.hot[slot], runs_one, refused, spec, target.as_ref())
    }

    /// One instance of `spec` on `node` is gone (stopped, deleted, or lost with its node):
    /// frees what it took. Returns whether the snapshot had one there.
    pub fn release(&mut self, spec: &WorkloadSpec, node: NodeId) -> bool {
        let Some(&slot) = self.by_id.get(&node) else {
            return false;
        };
        let Some(ws) = self.workloads.get_mut(spec.name()) else {
            return false;
        };
        let Some(count) = ws.on.get_mut(&slot) else {
            return false;
        };
        *count -= 1;
        if *count == 0 {
            ws.on.remove(&slot);
        }
        ws.total -= 1;
        if let Some(n) = self.nodes[slot].as_mut() {
            unbind(&mut self.hot[slot], n, spec.resources(), spec.ports(), 1);
        }
        true
    }

    /// `node` refused to admit an instance of `spec`: releases that instance, keeps the node
    /// out of this workload's placements until [`Scheduler::forget_refusals`], and places
    /// what is now missing on the next best nodes.
    pub fn reject(&mut self, spec: &WorkloadSpec, node: NodeId) -> Outcome {
        self.release(spec, node);
        if let Some(&slot) = self.by_id.get(&node) {
            self.workload_mut(spec.name()).refused.set(slot);
            if let Some(n) = self.nodes[slot].as_mut() {
                n.history.refusals = n.history.refusals.saturating_add(1);
            }
        }
        self.place(spec)
    }

    /// Lets the nodes that refused `workload` be tried again.
    pub fn forget_refusals(&mut self, workload: &str) {
        if let Some(ws) = self.workloads.get_mut(workload) {
            ws.refused = Bitset::default();
        }
    }

    /// The workload was deleted: frees everything its instances took. Returns where they were
    /// and how many, by node id.
    pub fn remove_workload(&mut self, spec: &WorkloadSpec) -> Vec<(NodeId, u32)> {
        let Some(ws) = self.workloads.remove(spec.name()) else {
            return Vec::new();
        };
        let mut freed = Vec::with_capacity(ws.on.len());
        for (slot, n) in ws.on {
            if let Some(node) = self.nodes[slot].as_mut() {
                unbind(&mut self.hot[slot], node, spec.resources(), spec.ports(), n);
                freed.push((node.id, n));
            }
        }
        freed.sort_unstable();
        freed
    }

    #[inline]
    fn workload_mut(&mut self, name: &str) -> &mut WorkloadState {
        self.workloads.entry(name.to_owned()).or_default()
    }

    fn index_slot(&mut self, slot: usize) {
        if let Some(node) = self.nodes[slot].as_mut() {
            self.index.add(slot, node);
        }
    }

    fn unindex_slot(&mut self, slot: usize) {
        if let Some(node) = self.nodes[slot].as_ref() {
            self.index.remove(slot, node);
        }
    }
}

impl Index {
    fn intern(&mut self, s: &str) -> Sym {
        if let Some(&sym) = self.symbols.get(s) {
            return sym;
        }
        let sym = Sym::try_from(self.symbols.len()).unwrap_or(Sym::MAX);
        self.symbols.insert(s.to_owned(), sym);
        sym
    }

    fn add(&mut self, slot: usize, node: &mut Node) {
        if node.online && !node.cordoned {
            self.eligible.set(slot);
        }
        if let Some(a) = Arch::parse(&node.arch) {
            self.arch[a as usize].set(slot);
        }
        node.label_syms.clear();
        for (k, v) in &node.labels {
            let pair = (self.intern(k), self.intern(v));
            self.labels.entry(pair).or_default().set(slot);
            node.label_syms.push(pair);
        }
        node.device_syms.clear();
        for d in &node.devices {
            let sym = self.intern(d);
            self.devices.entry(sym).or_default().set(slot);
            node.device_syms.push(sym);
        }
    }

    fn remove(&mut self, slot: usize, node: &Node) {
        self.eligible.clear(slot);
        for a in &mut self.arch {
            a.clear(slot);
        }
        for pair in &node.label_syms {
            if let Some(b) = self.labels.get_mut(pair) {
                b.clear(slot);
            }
        }
        for sym in &node.device_syms {
            if let Some(b) = self.devices.get_mut(sym) {
                b.clear(slot);
            }
        }
    }

    /// Fills `mask` with the slots that are eligible, have not refused this workload, and
    /// match its architecture, labels and devices.
    #[inline]
    fn static_mask(
        &self,
        slots: usize,
        spec: &WorkloadSpec,
        refused: &Bitset,
        mask: &mut Vec<u64>,
    ) {
        let words = slots.div_ceil(64);
        mask.clear();
        mask.extend((0..words).map(|w| self.eligible.word(w) & !refused.word(w)));
        let req = spec.requirements();
        for wanted in [&req.arch[..], spec.image_arch()] {
            if wanted.is_empty() {
                continue;
            }
            for (w, m) in mask.iter_mut().enumerate() {
                let any = wanted
                    .iter()
                    .fold(0, |acc, a| acc | self.arch[*a as usize].word(w));
                *m &= any;
            }
        }
        let mut and = |set: Option<&Bitset>| match set {
            Some(set) => {
                for (w, m) in mask.iter_mut().enumerate() {
                    *m &= set.word(w);
                }
            }
            None => mask.fill(0),
        };
        for (k, v) in &req.labels {
            let set = self
                .symbols
                .get(k.as_str())
                .zip(self.symbols.get(v.as_str()))
                .and_then(|(k, v)| self.labels.get(&(*k, *v)));
            and(set);
        }
        for d in &req.devices {
            and(self
                .symbols
                .get(d.as_str())
                .and_then(|s| self.devices.get(s)));
        }
    }
}

/// The index of every set bit, in order.
#[inline(always)]
fn set_bits(mask: &[u64]) -> SetBits<'_> {
    SetBits {
        words: mask,
        base: 0,
        bits: 0,
    }
}

#[derive(Debug)]
struct SetBits<'a> {
    /// The words not yet loaded into `bits`.
    words: &'a [u64],
    /// The index of bit 0 of the word after the one `bits` came from.
    base: usize,
    bits: u64,
}

impl Iterator for SetBits<'_> {
    type Item = usize;

    #[inline(always)]
    fn next(&mut self) -> Option<usize> {
        while self.bits == 0 {
            let (&first, rest) = self.words.split_first()?;
            self.bits = first;
            self.words = rest;
            self.base += 64;
        }
        let b = self.bits.trailing_zeros() as usize;
        self.bits &= self.bits - 1;
        // `base` was advanced past the word `bits` came from.
        Some(self.base - 64 + b)
    }
}

/// The first reason, in [`RejectReason`]'s order, why the node cannot take one more instance.
/// The slow path, from the node's own strings: only for explaining.
fn why_not(
    node: &Node,
    hot: &Hot,
    runs_one: bool,
    refused: bool,
    spec: &WorkloadSpec,
    target: Option<&Target>,
) -> Option<RejectReason> {
    let req = spec.requirements();
    if runs_one {
        return Some(RejectReason::AlreadyRuns);
    }
    if !node.online {
        return Some(RejectReason::NotOnline);
    }
    if node.cordoned {
        return Some(RejectReason::Cordoned);
    }
    if refused {
        return Some(RejectReason::Refused);
    }
    if !req.arch.is_empty() && !Arch::parse(&node.arch).is_some_and(|a| req.arch.contains(&a)) {
        return Some(RejectReason::Arch {
            have: node.arch.clone(),
        });
    }
    let image_arch = spec.image_arch();
    if !image_arch.is_empty() && !Arch::parse(&node.arch).is_some_and(|a| image_arch.contains(&a)) {
        return Some(RejectReason::ImageArch {
            have: node.arch.clone(),
        });
    }
    for (k, v) in &req.labels {
        if node.labels.get(k) != Some(v) {
            return Some(RejectReason::Label { key: k.clone() });
        }
    }
    for d in &req.devices {
        if node
            .devices
            .binary_search_by(|x| x.as_str().cmp(d.as_str()))
            .is_err()
        {
            return Some(RejectReason::Device {
                want: d.to_string(),
            });
        }
    }
    if let Some(t) = target {
        let Some(location) = node.location else {
            return Some(RejectReason::NoLocation);
        };
        if t.proximity(hot).is_none() {
            let km = haversine_km(
                location,
                LatLon {
                    lat: t.near.lat,
                    lon: t.near.lon,
                },
            );
            return Some(RejectReason::TooFar { km });
        }
    }
    if let Some(&port) = spec
        .ports()
        .iter()
        .find(|p| node.ports.binary_search(p).is_ok())
    {
        return Some(RejectReason::Port { port });
    }
    let free = hot.free;
    let want = spec.resources();
    if want.cpu_millis > free.cpu_millis {
        return Some(RejectReason::Cpu {
            free: free.cpu_millis,
            want: want.cpu_millis,
        });
    }
    if want.memory_bytes > free.memory_bytes {
        return Some(RejectReason::Memory {
            free: free.memory_bytes,
            want: want.memory_bytes,
        });
    }
    if want.disk_bytes > free.disk_bytes {
        return Some(RejectReason::Disk {
            free: free.disk_bytes,
            want: want.disk_bytes,
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const BERLIN: LatLon = LatLon {
        lat: 52.5200,
        lon: 13.4050,
    };
    const PARIS: LatLon = LatLon {
        lat: 48.8566,
        lon: 2.3522,
    };
    const LONDON: LatLon = LatLon {
        lat: 51.5074,
        lon: -0.1278,
    };
    const NEW_YORK: LatLon = LatLon {
        lat: 40.7128,
        lon: -74.0060,
    };
    const SYDNEY: LatLon = LatLon {
        lat: -33.8688,
        lon: 151.2093,
    };

    #[test]
    fn haversine_matches_known_city_distances() {
        let cases = [
            (BERLIN, PARIS, 878.0),
            (LONDON, PARIS, 344.0),
            (LONDON, NEW_YORK, 5570.0),
            (BERLIN, SYDNEY, 16_090.0),
        ];
        for (a, b, km) in cases {
            let d = haversine_km(a, b);
            assert!(
                (d - km).abs() < km * 0.005,
                "{a:?} -> {b:?}: {d} km, expected ~{km}"
            );
            assert!((haversine_km(b, a) - d).abs() < 1e-9, "symmetric");
        }
        assert_eq!(haversine_km(BERLIN, BERLIN), 0.0);
        let antipode = haversine_km(
            LatLon { lat: 0.0, lon: 0.0 },
            LatLon {
                lat: 0.0,
                lon: 180.0,
            },
        );
        assert!((antipode - std::f64::consts::PI * EARTH_RADIUS_KM).abs() < 1e-6);
    }

    #[test]
    fn chord_check_agrees_with_haversine() {
        // A small LCG: the test must not depend on a random seed.
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = || {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (x >> 11) as f64 / (1u64 << 53) as f64
        };
        for _ in 0..20_000 {
            let a = LatLon {
                lat: next() * 180.0 - 90.0,
                lon: next() * 360.0 - 180.0,
            };
            let b = LatLon {
                lat: next() * 180.0 - 90.0,
                lon: next() * 360.0 - 180.0,
            };
            let radius_km = next() * 20_037.0 + 1e-3;
            let t = Target::new(Near {
                lat: a.lat,
                lon: a.lon,
                radius_km,
            });
            let d = haversine_km(a, b);
            let hot = Hot {
                present: true,
                count: 0,
                id: NodeId([0; 16]),
                free: Resources::default(),
                free_fraction: 0.0,
                inv_cpu: 0.0,
                inv_memory: 0.0,
                unit: Some(unit_vector(b)),
            };
            let within = t.proximity(&hot).is_some();
            if (d - radius_km).abs() > 1e-6 {
                assert_eq!(within, d <= radius_km, "{a:?} {b:?} r={radius_km} d={d}");
            }
        }
    }

    #[test]
    fn set_bits_yields_every_set_bit_in_order() {
        let mask = [0b1011, 0, 1 << 63, u64::MAX];
        let got: Vec<usize> = set_bits(&mask).collect();
        let want: Vec<usize> = [0, 1, 3, 191].into_iter().chain(192..256).collect();
        assert_eq!(got, want);
        assert_eq!(set_bits(&[]).count(), 0);
        assert_eq!(set_bits(&[0, 0]).count(), 0);
    }

    #[test]
    fn candidates_order_by_score_then_id() {
        let id = |b| NodeId([b; 16]);
        let c = |score, b| Candidate {
            score,
            id: id(b),
            slot: 0,
        };
        assert!(c(0.9, 9) > c(0.1, 1), "the higher score first");
        assert!(c(0.5, 1) > c(0.5, 2), "then the lower id");
        let all = [c(0.0, 1), c(0.0, 2), c(0.5, 1), c(1.0, 3), c(0.7, 0)];
        for a in &all {
            for b in &all {
                assert_eq!(a.better_than(b), a > b, "{a:?} vs {b:?}");
            }
        }
    }
}
