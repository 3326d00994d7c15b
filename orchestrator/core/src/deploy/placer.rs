//! The scheduler as the deployments controller drives it: [`Scheduler`] ranked by the
//! [`Learned`] score, and what the controller remembers of each node's past for it.
//!
//! Every placement the controller makes goes through [`Placer`], which notes each instance it
//! binds (when, whether the node already ran its artifact, and what the model predicted for
//! it). What the nodes then say feeds each node's [`NodeHistory`]: restarts (from the counts
//! in instance reports of the current generation) and refusals within the last
//! [`HISTORY_WINDOW_MS`], the artifacts its instances ran, how long its instances took from
//! bind to running, and how fast it fetched artifacts (from those startups, or as the shell
//! measured a transfer with [`Placer::fetched`]). When an instance it bound reports running,
//! the time it took is the model's shadow check ([`Learned::observe`]): a model whose
//! predictions drift steps aside.
//!
//! With no model, [`Learned`] scores exactly as [`LeastAllocated`] does: the history is kept
//! but nothing reads it.
//!
//! **Invariants.** Pure: the time is what the controller last handed in. Bounded: per node, at
//! most [`MAX_EVENTS`] restarts and as many refusals, and [`MAX_ARTIFACTS`] artifacts; at most
//! [`MAX_TRACKED`] instances followed, each forgotten when it is released.
//!
//! [`LeastAllocated`]: crate::scheduler::LeastAllocated

use std::collections::{BTreeMap, VecDeque};

use edge_proto::{NodeId, WorkloadState};

use crate::scheduler::learned::{Learned, Mode, PlacePrediction, Predictor};
use crate::scheduler::{NodeHistory, NodeReject, NodeView, Outcome, Scheduler};
use crate::workload::{ArtifactDigest, WorkloadSpec};

/// Restarts and refusals older than this are forgotten: the window the placement model was
/// trained with (`history_window_secs` of `edge-ai/train/place-scenarios`).
pub const HISTORY_WINDOW_MS: u64 = 30 * 60 * 1000;

/// The most restarts, and the most refusals, kept per node: a count past it reads as this.
pub const MAX_EVENTS: usize = 64;

/// The most artifacts kept per node, the most recently started last.
pub const MAX_ARTIFACTS: usize = 16;

/// The most instances followed from bind to running; past it, new ones are not measured.
pub const MAX_TRACKED: usize = 1 << 16;

/// A transfer smaller than this says too little of a node's download rate.
pub const MIN_FETCH_BYTES: u64 = 256 * 1024;

/// The weight of each new measure in the moving means of fetch rate and start time (the
/// simulation's, which the model was trained on).
const MEASURE_ALPHA: f32 = 0.5;

/// Who places and how, for the operator ([`super::Deployments::placement`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlacementStatus {
    pub mode: Mode,
    /// The mean `|ln(observed / predicted)|` of startups, and how many it rests on.
    pub drift: f64,
    pub drift_samples: u32,
}

/// What is remembered of one node's past.
#[derive(Debug, Clone, Default)]
struct NodeLog {
    /// When (ms) instances restarted, and admissions were refused, oldest first.
    restarts: VecDeque<u64>,
    refusals: VecDeque<u64>,
    /// Artifacts that ran here, each once with when it last started, the latest last.
    artifacts: VecDeque<(ArtifactDigest, u64)>,
    fetch_mbps: Option<f32>,
    start_ms: Option<f32>,
}

impl NodeLog {
    fn forget_before(&mut self, now_ms: u64) -> bool {
        let old = |t: &u64| now_ms.saturating_sub(*t) > HISTORY_WINDOW_MS;
        let before = (
            self.restarts.len(),
            self.refusals.len(),
            self.artifacts.len(),
        );
        while self.restarts.front().is_some_and(old) {
            self.restarts.pop_front();
        }
        while self.refusals.front().is_some_and(old) {
            self.refusals.pop_front();
        }
        while self.artifacts.front().is_some_and(|(_, t)| old(t)) {
            self.artifacts.pop_front();
        }
        before
            != (
                self.restarts.len(),
                self.refusals.len(),
                self.artifacts.len(),
            )
    }

    fn has_artifact(&self, artifact: ArtifactDigest) -> bool {
        self.artifacts.iter().any(|(a, _)| *a == artifact)
    }

    fn ran(&mut self, artifact: ArtifactDigest, now_ms: u64) {
        self.artifacts.retain(|(a, _)| *a != artifact);
        push_capped(&mut self.artifacts, (artifact, now_ms), MAX_ARTIFACTS);
    }

    fn history(&self, load: Option<crate::scheduler::LoadShare>) -> NodeHistory {
        let count = |q: &VecDeque<u64>| u32::try_from(q.len()).unwrap_or(u32::MAX);
        NodeHistory {
            load,
            artifacts: self.artifacts.iter().map(|(a, _)| *a).collect(),
            restarts: count(&self.restarts),
            refusals: count(&self.refusals),
            fetch_mbps: self.fetch_mbps,
            start_ms: self.start_ms,
        }
    }
}

fn push_capped<T>(q: &mut VecDeque<T>, item: T, cap: usize) {
    if q.len() >= cap {
        q.pop_front();
    }
    q.push_back(item);
}

fn measure(mean: &mut Option<f32>, value: f32) {
    if !value.is_finite() {
        return;
    }
    *mean = Some(match *mean {
        Some(m) => m + MEASURE_ALPHA * (value - m),
        None => value,
    });
}

/// One instance this process bound, followed until it runs (and its restarts after).
#[derive(Debug, Clone)]
struct Tracked {
    /// Set until it reports running: when it was bound, whether the node had run its
    /// artifact then, and what the model predicted.
    starting: Option<Starting>,
    /// The restart count its node last reported for the current generation.
    restarts_seen: u32,
}

#[derive(Debug, Clone, Copy)]
struct Starting {
    bound_ms: u64,
    cached: bool,
    predicted: Option<PlacePrediction>,
}

/// The scheduler and the nodes' past. See the module docs.
#[derive(Debug, Default)]
pub(super) struct Placer {
    scheduler: Scheduler<Learned>,
    logs: BTreeMap<NodeId, NodeLog>,
    /// By workload and node.
    tracked: BTreeMap<(String, NodeId), Tracked>,
    /// The last load each node reported, kept beside the log for the history it makes.
    loads: BTreeMap<NodeId, crate::scheduler::LoadShare>,
    /// The time the controller last handed in.
    pub(super) now_ms: u64,
}

impl Placer {
    pub(super) fn new(views: Vec<NodeView>) -> Self {
        let mut me = Self::default();
        for view in views {
            me.upsert_node(view);
        }
        me
    }

    /// Places with `model` from now on, or with the fallback for the reason given.
    pub(super) fn set_model(&mut self, model: Predictor) {
        self.scheduler.score_mut().replace(model);
    }

    pub(super) fn status(&self) -> PlacementStatus {
        let score = self.scheduler.score();
        let (drift, drift_samples) = score.drift();
        PlacementStatus {
            mode: score.mode(),
            drift,
            drift_samples,
        }
    }

    pub(super) fn set_artifact_size(&mut self, artifact: ArtifactDigest, bytes: u64) {
        self.scheduler.set_artifact_size(artifact, bytes);
    }

    pub(super) fn forget_artifact_size(&mut self, artifact: ArtifactDigest) {
        self.scheduler.forget_artifact_size(artifact);
    }

    pub(super) fn place(&mut self, spec: &WorkloadSpec) -> Outcome {
        let outcome = self.scheduler.place(spec);
        self.bound(spec, &outcome.bound);
        outcome
    }

    pub(super) fn place_more(&mut self, spec: &WorkloadSpec, more: u32) -> Outcome {
        let outcome = self.scheduler.place_more(spec, more);
        self.bound(spec, &outcome.bound);
        outcome
    }

    /// `node` refused `spec`'s admission: counted in its history, and the next best placed.
    pub(super) fn reject(&mut self, spec: &WorkloadSpec, node: NodeId) -> Outcome {
        self.tracked.remove(&(spec.name().to_owned(), node));
        // The scheduler counts the refusal in its own copy for the placement it makes now;
        // the log then says the same.
        let outcome = self.scheduler.reject(spec, node);
        let now_ms = self.now_ms;
        if let Some(log) = self.logs.get_mut(&node) {
            push_capped(&mut log.refusals, now_ms, MAX_EVENTS);
        }
        self.sync(node);
        self.bound(spec, &outcome.bound);
        outcome
    }

    pub(super) fn release(&mut self, spec: &WorkloadSpec, node: NodeId) -> bool {
        self.tracked.remove(&(spec.name().to_owned(), node));
        self.scheduler.release(spec, node)
    }

    pub(super) fn remove_workload(&mut self, spec: &WorkloadSpec) -> Vec<(NodeId, u32)> {
        let name = spec.name();
        self.tracked.retain(|(w, _), _| w != name);
        self.scheduler.remove_workload(spec)
    }

    pub(super) fn forget_refusals(&mut self, workload: &str) {
        self.scheduler.forget_refusals(workload);
    }

    pub(super) fn explain(&self, spec: &WorkloadSpec) -> Vec<NodeReject> {
        self.scheduler.explain(spec)
    }

    /// A node's view from the registry; its history is this log's.
    pub(super) fn upsert_node(&mut self, mut view: NodeView) {
        let id = view.id;
        match view.history.load {
            Some(load) => {
                self.loads.insert(id, load);
            }
            None => {
                self.loads.remove(&id);
            }
        }
        view.history = self.logs.entry(id).or_default().history(view.history.load);
        self.scheduler.upsert_node(view);
    }

    pub(super) fn remove_node(&mut self, id: NodeId) -> bool {
        self.logs.remove(&id);
        self.loads.remove(&id);
        self.tracked.retain(|(_, n), _| *n != id);
        self.scheduler.remove_node(id)
    }

    pub(super) fn set_online(&mut self, id: NodeId, online: bool) -> bool {
        self.scheduler.set_online(id, online)
    }

    /// Time passed: restarts, refusals and artifacts older than the window are forgotten.
    pub(super) fn expire(&mut self) {
        let now_ms = self.now_ms;
        let changed: Vec<NodeId> = self
            .logs
            .iter_mut()
            .filter_map(|(id, log)| log.forget_before(now_ms).then_some(*id))
            .collect();
        for id in changed {
            self.sync(id);
        }
    }

    /// `node` reported an instance of `spec` that it holds; `current` says whether the report
    /// is of the generation deployed now. One that reports running for the first time since
    /// it was bound is the shadow check of the prediction it was placed with.
    pub(super) fn reported(
        &mut self,
        node: NodeId,
        spec: &WorkloadSpec,
        artifact_bytes: u64,
        current: bool,
        state: WorkloadState,
        restarts: u32,
    ) {
        if !current {
            return;
        }
        let now_ms = self.now_ms;
        let key = (spec.name().to_owned(), node);
        let (new_restarts, started) = match self.tracked.get_mut(&key) {
            Some(t) => {
                let new = restarts.saturating_sub(t.restarts_seen);
                t.restarts_seen = restarts;
                let started = if state == WorkloadState::Running {
                    t.starting.take()
                } else {
                    None
                };
                (new, started)
            }
            None => {
                // Bound before this process started, or past the cap: its restarts so far
                // are the baseline.
                if self.tracked.len() < MAX_TRACKED {
                    self.tracked.insert(
                        key,
                        Tracked {
                            starting: None,
                            restarts_seen: restarts,
                        },
                    );
                }
                (0, None)
            }
        };
        let mut observed = None;
        if let Some(log) = self.logs.get_mut(&node) {
            for _ in 0..new_restarts.min(MAX_EVENTS as u32) {
                push_capped(&mut log.restarts, now_ms, MAX_EVENTS);
            }
            if let Some(s) = started {
                let startup_ms = now_ms.saturating_sub(s.bound_ms) as f32;
                learn_startup(log, s.cached, startup_ms, artifact_bytes);
                log.ran(spec.artifact(), now_ms);
                observed = Some((s.predicted, startup_ms));
            }
        }
        if let Some((Some(predicted), startup_ms)) = observed {
            self.scheduler
                .score_mut()
                .observe(predicted, f64::from(startup_ms));
        }
        if new_restarts > 0 || observed.is_some() {
            self.sync(node);
        }
    }

    /// `node` said at its session's start that it holds an instance of `artifact`: it ran it
    /// (what this process may not have seen, if it started since).
    pub(super) fn holds(&mut self, node: NodeId, artifact: ArtifactDigest) {
        let now_ms = self.now_ms;
        if let Some(log) = self.logs.get_mut(&node)
            && !log.has_artifact(artifact)
        {
            log.ran(artifact, now_ms);
            self.sync(node);
        }
    }

    /// The shell measured `node` fetching `bytes` of an artifact in `elapsed_ms`.
    pub(super) fn fetched(&mut self, node: NodeId, bytes: u64, elapsed_ms: u64) {
        if bytes < MIN_FETCH_BYTES || elapsed_ms == 0 {
            return;
        }
        if let Some(log) = self.logs.get_mut(&node) {
            measure(
                &mut log.fetch_mbps,
                mbps(bytes, elapsed_ms as f32).unwrap_or(f32::NAN),
            );
            self.sync(node);
        }
    }

    /// Notes each instance of `spec` just bound on `nodes`.
    fn bound(&mut self, spec: &WorkloadSpec, nodes: &[NodeId]) {
        let score = self.scheduler.score();
        for node in nodes {
            let key = (spec.name().to_owned(), *node);
            if !self.tracked.contains_key(&key) && self.tracked.len() >= MAX_TRACKED {
                continue;
            }
            let cached = self
                .logs
                .get(node)
                .is_some_and(|l| l.has_artifact(spec.artifact()));
            self.tracked.insert(
                key,
                Tracked {
                    starting: Some(Starting {
                        bound_ms: self.now_ms,
                        cached,
                        predicted: score.predicted(*node),
                    }),
                    restarts_seen: 0,
                },
            );
        }
    }

    /// Hands the scheduler what the log says of `node`.
    fn sync(&mut self, node: NodeId) {
        if let Some(log) = self.logs.get(&node) {
            let history = log.history(self.loads.get(&node).copied());
            self.scheduler.set_history(node, history);
        }
    }
}

/// Megabits per second for `bytes` in `ms`; `None` when not measurable.
fn mbps(bytes: u64, ms: f32) -> Option<f32> {
    (ms > 0.0).then(|| (bytes as f32 * 8.0 / 1e6) / (ms / 1000.0))
}

/// What one startup from bind to running says of the node: with the artifact there, its start
/// time; otherwise a fetch and a start, told apart by whichever of the two is already known.
fn learn_startup(log: &mut NodeLog, cached: bool, startup_ms: f32, artifact_bytes: u64) {
    if cached || artifact_bytes == 0 {
        measure(&mut log.start_ms, startup_ms);
        return;
    }
    let megabits = artifact_bytes as f32 * 8.0 / 1e6;
    if let Some(rate) = log.fetch_mbps.filter(|r| *r > 0.0) {
        let fetch_ms = megabits / rate * 1000.0;
        measure(&mut log.start_ms, (startup_ms - fetch_ms).max(0.0));
    } else if let Some(start) = log.start_ms {
        let fetch_ms = startup_ms - start;
        if fetch_ms > 0.0
            && let Some(rate) = mbps(artifact_bytes, fetch_ms)
        {
            measure(&mut log.fetch_mbps, rate);
        }
    }
}
