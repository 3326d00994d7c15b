//! The placement score made by a learned model, with [`LeastAllocated`] as its fallback.
//!
//! A placement model is a function from what the scheduler knows about one feasible node for
//! one instance (its [`placement_features`], in the order and units of [`PLACE_FEATURES`]) to
//! what the instance will meet there ([`PLACE_OUTPUTS`]): the natural log of its time from
//! bind to running in milliseconds (a fetch of the artifact, a loaded node, a refusal to try
//! again) and the chance that it fails (refused, or crashed and restarted soon after it
//! started). The model itself runs elsewhere (crate `edge-ai`, behind [`PlacePredict`]);
//! this module decides what to do with its answers:
//!
//! - **Score.** Every feasible node is predicted in one batch ([`Score::BATCHED`]). A node's
//!   score is [`LeastAllocated`]'s, less `ln(startup) / ln(tie_ratio)`, less
//!   `failure / failure_step` ([`Weights`]): a factor of `tie_ratio` in predicted startup, or
//!   `failure_step` more chance of a refusal or an early crash, weighs as much as the whole
//!   range of the fixed rule. So the model decides where it sees a real difference, and
//!   among nodes it calls alike the fixed rule still spreads load and prefers the closest.
//! - **Fallback.** With no model, a model refused at load, a model that fails to run or
//!   predicts something that is not a number, or one whose predictions drift too far from
//!   what then happens, [`LeastAllocated`] scores alone and [`Learned::mode`] says why, for
//!   the shell's metric, log line and status.
//! - **The shadow check.** The caller reports each instance that reached `running` with
//!   [`Learned::observe`]: the startup predicted for it ([`Learned::predicted`], kept from
//!   the batch that placed it) and the one observed. The drift is a moving mean of
//!   `|ln((observed + 1 ms) / (predicted + 1 ms))|`. Past [`DriftBound::max`] (once it has
//!   seen [`DriftBound::min_samples`]) the model steps aside; it keeps predicting in the
//!   shadow of the fallback's placements, and takes over again under
//!   [`DriftBound::resume`].
//!
//! **Invariants.** Pure and deterministic: no clock, no randomness; with the same model, the
//! same outcomes reported and the same snapshot, the same placements. A model only ranks the
//! nodes that passed every filter, so it can never overcommit a node.

use std::fmt;

use edge_proto::NodeId;

use super::{Fit, LeastAllocated, Score};

/// One input or output column of a model: its name and its unit, as the model declares them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Feature {
    pub name: &'static str,
    pub unit: &'static str,
}

const fn feature(name: &'static str, unit: &'static str) -> Feature {
    Feature { name, unit }
}

/// What a placement model is for, as it declares it (`edge.purpose`).
pub const PLACE_PURPOSE: &str = "place";

/// The number of features per (node, instance) pair.
pub const PLACE_WIDTH: usize = 15;

/// The features of one feasible node for one instance, in order: what a placement model's
/// input declares.
pub const PLACE_FEATURES: [Feature; PLACE_WIDTH] = [
    // Free shares of the node once the instance is placed.
    feature("free_cpu_after", "ratio"),
    feature("free_memory_after", "ratio"),
    // The node's size.
    feature("cpus", "cores"),
    // The node's last reported load; 0 when unknown, and then `load_known` is 0.
    feature("load_cpu", "ratio"),
    feature("load_memory", "ratio"),
    feature("load_known", "bool"),
    // Whether the spec has `near`, and closeness to its centre (1) or edge (0).
    feature("near", "bool"),
    feature("proximity", "ratio"),
    // The node ran or runs the workload's artifact: likely cached.
    feature("cached", "bool"),
    // Restarts of instances and refused admissions on the node, all workloads.
    feature("restarts", "count"),
    feature("refusals", "count"),
    // The workload's artifact, and how fast the node fetched and started instances lately
    // (0 when unknown): what a fetch and a start will cost.
    feature("artifact_mb", "MB"),
    feature("fetch_mbps", "Mbit/s"),
    feature("start_ms", "ms"),
    // For a cached artifact, how many others the node started since (0 otherwise).
    feature("cache_rank", "count"),
];

/// The outputs of a placement model per row, in order.
pub const PLACE_OUTPUTS: [Feature; 2] = [
    feature("ln_startup_ms", "ln(ms)"),
    feature("failure", "probability"),
];

/// How [`Learned`] weighs the model's predictions against the fixed rule (the module docs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Weights {
    /// A factor of this in predicted startup weighs as much as the fixed rule's range.
    pub tie_ratio: f64,
    /// This much more failure probability weighs as much as the fixed rule's range.
    pub failure_step: f64,
}

impl Default for Weights {
    /// Chosen on the training fleets (`edge-ai/train/place-scenarios`, seeds 20..26), never
    /// on the evaluation ones, by a rule: restarts within 5% of least-allocated's on every
    /// training fleet, then the lowest mean time to running. See `edge-ai/train/README.md`.
    fn default() -> Self {
        Self {
            tie_ratio: 3.0,
            failure_step: 0.1,
        }
    }
}

/// Writes `fit`'s features into `row`, in the order of [`PLACE_FEATURES`].
pub fn placement_features(fit: &Fit<'_>, row: &mut [f32; PLACE_WIDTH]) {
    let flag = |b: bool| if b { 1.0 } else { 0.0 };
    let history = fit.history();
    let load = history.and_then(|h| h.load);
    let cpus = if fit.node.inv_cpu > 0.0 {
        1.0 / (1000.0 * fit.node.inv_cpu)
    } else {
        0.0
    };
    *row = [
        fit.free_cpu_after() as f32,
        fit.free_memory_after() as f32,
        cpus as f32,
        load.map_or(0.0, |l| l.cpu),
        load.map_or(0.0, |l| l.memory),
        flag(load.is_some()),
        flag(fit.proximity().is_some()),
        fit.proximity().unwrap_or(0.0) as f32,
        flag(fit.cached()),
        history.map_or(0, |h| h.restarts) as f32,
        history.map_or(0, |h| h.refusals) as f32,
        (fit.artifact_bytes() as f64 / 1e6) as f32,
        history.and_then(|h| h.fetch_mbps).unwrap_or(0.0),
        history.and_then(|h| h.start_ms).unwrap_or(0.0),
        fit.cache_rank().unwrap_or(0) as f32,
    ];
}

/// What a placement model predicts for one instance on one node.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PlacePrediction {
    pub startup_ms: f32,
    pub failure: f32,
}

impl PlacePrediction {
    /// A prediction from a placement model's outputs ([`PLACE_OUTPUTS`]): the log of the
    /// startup in milliseconds (held to `[-10, 20]`, so that no output overflows) and the
    /// failure probability.
    pub fn from_outputs(ln_startup_ms: f32, failure: f32) -> Self {
        Self {
            startup_ms: ln_startup_ms.clamp(-10.0, 20.0).exp(),
            failure,
        }
    }

    /// What it costs under `weights`, in units of the fixed rule's range (the module docs):
    /// `ln(startup) / ln(tie_ratio) + failure / failure_step`, a startup below 1 ms read as
    /// 1 ms and the failure held to `[0, 1]`.
    pub fn cost(self, weights: Weights) -> f64 {
        f64::from(self.startup_ms.max(1.0)).ln() / weights.tie_ratio.max(1.0001).ln()
            + f64::from(self.failure.clamp(0.0, 1.0)) / weights.failure_step.max(1e-6)
    }
}

/// A model run failed: its message, for the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PredictError(pub String);

/// Runs a placement model on a batch of rows.
pub trait PlacePredict: fmt::Debug + Send {
    /// `features` holds `out.len()` rows of [`PLACE_WIDTH`] values; write each row's
    /// prediction into `out`, in order. The same rows must give the same predictions.
    fn predict(
        &mut self,
        features: &[f32],
        out: &mut [PlacePrediction],
    ) -> Result<(), PredictError>;
}

/// A placement model for [`Learned`], or why there is none.
pub type Predictor = Result<Box<dyn PlacePredict>, Fallback>;

/// Why the fallback scores instead of the model. A fixed set: fit for a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fallback {
    /// No model is configured.
    NoModel,
    /// The model was refused at load (its schema, its golden values, its file).
    Refused,
    /// The model failed to run, or predicted something that is not a number.
    Broken,
    /// Its predictions drifted too far from what happened.
    Drift,
}

impl Fallback {
    pub const ALL: [Fallback; 4] = [
        Fallback::NoModel,
        Fallback::Refused,
        Fallback::Broken,
        Fallback::Drift,
    ];

    /// For a metric label and the status: `no_model`, `refused`, `broken`, `drift`.
    pub fn as_str(self) -> &'static str {
        match self {
            Fallback::NoModel => "no_model",
            Fallback::Refused => "refused",
            Fallback::Broken => "broken",
            Fallback::Drift => "drift",
        }
    }
}

impl fmt::Display for Fallback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who scores: the model, or the fallback and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    Model,
    Fallback(Fallback),
}

impl Mode {
    /// `model`, or the fallback's reason.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Model => "model",
            Mode::Fallback(reason) => reason.as_str(),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How far a model's predictions may drift before it steps aside. See the module docs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DriftBound {
    /// Step aside above this mean `|ln(observed / predicted)|`.
    pub max: f64,
    /// Take over again below this (at most `max`).
    pub resume: f64,
    /// Judge only after this many observations since the model was loaded or stepped aside.
    pub min_samples: u32,
    /// The moving mean's weight for each new observation.
    pub alpha: f64,
}

impl Default for DriftBound {
    /// Off by a factor of 3 on average steps aside, back under 2; judged after 50 instances
    /// started, each weighing 1/20. Startups vary more than a request's latency (a fetch or
    /// not), and a fleet starts far fewer instances than a proxy sends requests.
    fn default() -> Self {
        Self {
            max: 3f64.ln(),
            resume: 2f64.ln(),
            min_samples: 50,
            alpha: 0.05,
        }
    }
}

/// The drift of a model's predictions: see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
struct Drift {
    mean: f64,
    samples: u32,
}

impl Drift {
    fn observe(&mut self, predicted_ms: f32, observed_ms: f64, alpha: f64) {
        let predicted = f64::from(predicted_ms).max(0.0);
        let error = ((observed_ms.max(0.0) + 1.0) / (predicted + 1.0))
            .ln()
            .abs();
        let error = if error.is_finite() { error } else { 10.0 };
        self.mean = if self.samples == 0 {
            error
        } else {
            self.mean + alpha * (error - self.mean)
        };
        self.samples = self.samples.saturating_add(1);
    }
}

/// A [`Score`] that asks a placement model, with [`LeastAllocated`] as its fallback. See the
/// module docs.
#[derive(Debug)]
pub struct Learned {
    model: Option<Box<dyn PlacePredict>>,
    mode: Mode,
    bound: DriftBound,
    weights: Weights,
    drift: Drift,
    /// Reused for every batch.
    features: Vec<f32>,
    predictions: Vec<PlacePrediction>,
    /// The last batch's predictions, by node: what [`Learned::predicted`] answers.
    last: Vec<(NodeId, PlacePrediction)>,
}

impl Default for Learned {
    /// No model: the fallback scores, as [`LeastAllocated`] alone would.
    fn default() -> Self {
        Self::new(Err(Fallback::NoModel))
    }
}

impl Learned {
    /// Scores with `model`, or with the fallback for `reason` when there is none.
    pub fn new(model: Predictor) -> Self {
        let (model, mode) = match model {
            Ok(model) => (Some(model), Mode::Model),
            Err(reason) => (None, Mode::Fallback(reason)),
        };
        Self {
            model,
            mode,
            bound: DriftBound::default(),
            weights: Weights::default(),
            drift: Drift::default(),
            features: Vec::new(),
            predictions: Vec::new(),
            last: Vec::new(),
        }
    }

    /// With `bound` instead of the default [`DriftBound`].
    pub fn with_drift_bound(mut self, bound: DriftBound) -> Self {
        self.bound = DriftBound {
            resume: bound.resume.min(bound.max),
            ..bound
        };
        self
    }

    /// With `weights` instead of the default [`Weights`].
    pub fn with_weights(mut self, weights: Weights) -> Self {
        self.weights = weights;
        self
    }

    /// Who scores now.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The current drift: the mean `|ln(observed / predicted)|` and how many observations it
    /// rests on.
    pub fn drift(&self) -> (f64, u32) {
        (self.drift.mean, self.drift.samples)
    }

    /// Replaces the model (a new one was pushed), or removes it: the next placement uses the
    /// new one, and its drift is measured afresh.
    pub fn replace(&mut self, model: Predictor) {
        *self = Self::new(model)
            .with_drift_bound(self.bound)
            .with_weights(self.weights);
    }

    /// What the model predicted for `node` in the last placement it scored (also in the
    /// shadow of the fallback), for [`Learned::observe`] once the instance runs.
    pub fn predicted(&self, node: NodeId) -> Option<PlacePrediction> {
        self.last
            .iter()
            .find(|(id, _)| *id == node)
            .map(|(_, p)| *p)
    }

    /// An instance placed with `predicted` ([`Learned::predicted`]) reached `running` after
    /// `startup_ms`: the shadow check. See the module docs.
    pub fn observe(&mut self, predicted: PlacePrediction, startup_ms: f64) {
        if self.model.is_none() {
            return;
        }
        self.drift
            .observe(predicted.startup_ms, startup_ms, self.bound.alpha);
        if self.drift.samples < self.bound.min_samples {
            return;
        }
        match self.mode {
            Mode::Model if self.drift.mean > self.bound.max => self.step_aside(Fallback::Drift),
            Mode::Fallback(Fallback::Drift) if self.drift.mean < self.bound.resume => {
                self.mode = Mode::Model;
            }
            _ => {}
        }
    }

    fn step_aside(&mut self, reason: Fallback) {
        self.mode = Mode::Fallback(reason);
        self.drift = Drift::default();
    }

    /// Predicts every fit into `self.predictions` and `self.last`.
    fn predict(&mut self, fits: &[Fit<'_>]) -> Result<(), PredictError> {
        let Some(model) = self.model.as_mut() else {
            return Err(PredictError("no model".to_owned()));
        };
        self.features.clear();
        for fit in fits {
            let mut row = [0.0; PLACE_WIDTH];
            placement_features(fit, &mut row);
            self.features.extend_from_slice(&row);
        }
        self.predictions.clear();
        self.predictions
            .resize(fits.len(), PlacePrediction::default());
        model.predict(&self.features, &mut self.predictions)?;
        if let Some(bad) = self
            .predictions
            .iter()
            .find(|p| !(p.startup_ms.is_finite() && p.failure.is_finite()))
        {
            return Err(PredictError(format!("the model predicted {bad:?}")));
        }
        self.last.clear();
        self.last.extend(
            fits.iter()
                .zip(&self.predictions)
                .map(|(fit, p)| (fit.node(), *p)),
        );
        Ok(())
    }
}

impl Score for Learned {
    const BATCHED: bool = true;

    /// One node alone is scored by the fallback: the model ranks batches.
    fn score(&self, fit: &Fit<'_>) -> f64 {
        LeastAllocated.score(fit)
    }

    fn score_batch(&mut self, fits: &[Fit<'_>], out: &mut Vec<f64>) {
        self.last.clear();
        let fixed = fits.iter().map(|fit| LeastAllocated.score(fit));
        match self.mode {
            Mode::Fallback(Fallback::NoModel | Fallback::Refused | Fallback::Broken) => {
                out.extend(fixed);
            }
            Mode::Fallback(Fallback::Drift) => {
                // In the shadow: the fallback ranks, the model predicts for the outcomes.
                let _ = self.predict(fits);
                out.extend(fixed);
            }
            Mode::Model => {
                if self.predict(fits).is_err() {
                    self.step_aside(Fallback::Broken);
                    self.last.clear();
                    out.extend(fixed);
                    return;
                }
                let weights = self.weights;
                out.extend(
                    fixed
                        .zip(&self.predictions)
                        .map(|(s, p)| s - p.cost(weights)),
                );
            }
        }
    }
}
