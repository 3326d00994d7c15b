//! The backend choice made by a learned model, with peak-EWMA P2C as its fallback.
//!
//! A routing model is a function from what the proxy knows about one backend (its
//! [`route_features`], in the order and units of [`ROUTE_FEATURES`]) to what a request sent
//! there now will meet: the natural log of its latency in milliseconds (latencies span four
//! orders of magnitude, and a model fits their logarithm far better) and the chance that it
//! fails ([`ROUTE_OUTPUTS`]; [`Prediction::from_outputs`] reads them). The
//! model itself runs elsewhere (crate `edge-ai`, behind [`Predict`]); this module decides what
//! to do with its answers:
//!
//! - **Choice.** Every available candidate is scored in one batch; the one with the lowest
//!   expected time to a success wins, `latency / (1 - failure)` (a request that fails is
//!   sent again, and on average `1 / (1 - failure)` tries are needed). Costs within
//!   [`TIE_RATIO`] of the lowest are a tie: a model is off by a factor of 1.3 to 1.5 on a
//!   single request, so a smaller difference between two backends is its noise, not theirs
//!   (a backend that answered slowly once by chance would otherwise be shunned while its
//!   tail is remembered, and the others overloaded). Among tied backends the one with the
//!   fewest requests in flight wins, as in [`LeastRequests`](super::balance::LeastRequests),
//!   and a tie on that too (several backends not yet measured) is broken at random. A
//!   request in flight raises its backend's `in_flight` feature at once, so the model sees
//!   its own choices pile up and spreads a burst without the random pairs P2C needs.
//! - **First measures.** A backend with no response yet and nothing in flight is chosen
//!   before any prediction, as P2C does: what a model predicts for a backend it knows
//!   nothing about decides nothing, and one request teaches the features what it is.
//! - **Probes.** A backend that the model shuns is never measured again, so a slow backend
//!   that recovers would be shunned for ever. One request in [`PROBE_EVERY`] goes to the
//!   available backend idle for the longest, if it has been idle for [`PROBE_IDLE`].
//! - **Fallback.** With no model, a model refused at load, a model that fails to run, or one
//!   whose predictions drift too far from what then happens, [`PeakEwmaP2c`] chooses and
//!   [`Learned::mode`] says why, for the shell's metric, log line and status.
//! - **The shadow check.** Every success is compared with what was predicted for it: the
//!   drift is a moving mean of `|ln((observed + 1 ms) / (predicted + 1 ms))|`, a factor of
//!   `e^drift` between prediction and outcome. Past [`DriftBound::max`] (once it has seen
//!   [`DriftBound::min_samples`]) the model steps aside; it keeps predicting in the shadow of
//!   the fallback's choices, and takes over again once its drift is back under
//!   [`DriftBound::resume`].
//!
//! Nothing here reads the clock or draws randomness, and the hot path allocates nothing after
//! the first call on a route of a given size.

use std::fmt;
use std::time::{Duration, Instant};

use super::balance::{Candidate, Choose, PeakEwmaP2c};

/// One input or output of a model: its name and its unit, as the model declares them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Feature {
    pub name: &'static str,
    pub unit: &'static str,
}

const fn feature(name: &'static str, unit: &'static str) -> Feature {
    Feature { name, unit }
}

/// What a routing model is for, as it declares it (`edge.purpose`).
pub const ROUTE_PURPOSE: &str = "route";

/// The number of features per candidate.
pub const ROUTE_WIDTH: usize = 13;

/// The features of one candidate, in order: what a routing model's input declares.
pub const ROUTE_FEATURES: [Feature; ROUTE_WIDTH] = [
    // The peak-EWMA estimate P2C uses, decayed while idle.
    feature("peak_ewma_ms", "ms"),
    feature("mean_ms", "ms"),
    feature("tail_ms", "ms"),
    // The round trip to it plus its quickest work.
    feature("floor_ms", "ms"),
    feature("in_flight", "requests"),
    feature("failure_rate", "ratio"),
    feature("half_open", "bool"),
    feature("unmeasured", "bool"),
    // Since its last response, capped at `IDLE_CAP`.
    feature("idle_ms", "ms"),
    // 0 when unknown.
    feature("distance_km", "km"),
    feature("local", "bool"),
    // The load of the node it runs on, 0 when unknown.
    feature("host_cpu", "ratio"),
    feature("host_memory", "ratio"),
];

/// The outputs of a routing model per candidate, in order.
pub const ROUTE_OUTPUTS: [Feature; 2] = [
    feature("ln_latency_ms", "ln(ms)"),
    feature("failure", "probability"),
];

/// The longest idle time a feature shows: beyond a minute, every backend is equally stale.
pub const IDLE_CAP: Duration = Duration::from_secs(60);

/// A cost within this ratio of the lowest is a tie ([`Learned`]'s module docs). Measured in
/// `edge-sim` (`benches/route-eval.sh`, the first trained model, 10 held-out seeds): with
/// the strict lowest cost, six alike backends had an 11% higher p99 than under peak-EWMA
/// P2C, with 1.3 2% (1.2: 4%); it also took the p99 ratio to P2C from 0.85 to 0.75 with one
/// slow backend and from 0.76 to 0.71 with changing speeds, and cost the far-away case
/// (0.76 to 0.85), where the backends far away carry more requests in flight on the wire.
pub const TIE_RATIO: f32 = 1.3;

/// One request in this many is a probe ([`Learned`]'s module docs).
pub const PROBE_EVERY: u32 = 64;

/// A backend idle this long may be probed.
pub const PROBE_IDLE: Duration = Duration::from_secs(5);

/// Writes `candidate`'s features at `now` into `row`, in the order of [`ROUTE_FEATURES`].
pub fn route_features(candidate: &Candidate<'_>, now: Instant, row: &mut [f32; ROUTE_WIDTH]) {
    let load = candidate.load;
    let ms = |ns: f64| (ns / 1e6) as f32;
    let flag = |b: bool| if b { 1.0 } else { 0.0 };
    let host = candidate.host.unwrap_or_default();
    let idle = load.idle(now).min(IDLE_CAP);
    let estimate = if load.observed() {
        load.estimate_ns(now)
    } else {
        0.0
    };
    *row = [
        ms(estimate),
        ms(load.mean_ns()),
        ms(load.tail_ns(now)),
        ms(load.floor_ns()),
        load.pending() as f32,
        load.failure_rate() as f32,
        flag(candidate.half_open),
        flag(!load.observed()),
        idle.as_secs_f32() * 1000.0,
        candidate.distance_km.unwrap_or(0.0) as f32,
        flag(candidate.local),
        host.cpu,
        host.memory,
    ];
}

/// What a routing model predicts for one candidate.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Prediction {
    pub latency_ms: f32,
    pub failure: f32,
}

impl Prediction {
    /// A prediction from a routing model's outputs ([`ROUTE_OUTPUTS`]): the log of the
    /// latency in milliseconds (held to `[-10, 20]`, so that no output overflows) and the
    /// failure probability.
    pub fn from_outputs(ln_latency_ms: f32, failure: f32) -> Self {
        Self {
            latency_ms: ln_latency_ms.clamp(-10.0, 20.0).exp(),
            failure,
        }
    }

    /// The expected time to a success, in milliseconds: `latency / (1 - failure)`, with the
    /// failure probability held to `[0, 0.99]` and a latency below zero read as zero. A
    /// prediction that is not a number costs infinitely much.
    pub fn cost_ms(self) -> f32 {
        if !(self.latency_ms.is_finite() && self.failure.is_finite()) {
            return f32::INFINITY;
        }
        self.latency_ms.max(0.0) / (1.0 - self.failure.clamp(0.0, 0.99))
    }
}

/// A model run failed: its message, for the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PredictError(pub String);

/// Runs a routing model on a batch of candidates.
pub trait Predict: fmt::Debug + Send {
    /// `features` holds `out.len()` rows of [`ROUTE_WIDTH`] values; write each row's
    /// prediction into `out`, in order.
    fn predict(&mut self, features: &[f32], out: &mut [Prediction]) -> Result<(), PredictError>;
}

/// A routing model for [`Learned`], or why there is none.
pub type Predictor = Result<Box<dyn Predict>, Fallback>;

/// Why the fallback chooses instead of the model. A fixed set: fit for a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fallback {
    /// No model is configured or shipped.
    NoModel,
    /// The model was refused at load (its schema, its golden values, its file).
    Refused,
    /// The model failed to run.
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

/// Who chooses: the model, or the fallback and why.
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
    /// Off by a factor of 2.5 (`ln 2.5`) on average steps aside, back under 1.8; judged after
    /// 200 observations, each weighing 1/100.
    fn default() -> Self {
        Self {
            max: 2.5f64.ln(),
            resume: 1.8f64.ln(),
            min_samples: 200,
            alpha: 0.01,
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
    fn observe(&mut self, predicted_ms: f32, rtt: Duration, alpha: f64) {
        let observed = rtt.as_secs_f64() * 1000.0;
        let predicted = f64::from(predicted_ms).max(0.0);
        let error = ((observed + 1.0) / (predicted + 1.0)).ln().abs();
        let error = if error.is_finite() { error } else { 10.0 };
        self.mean = if self.samples == 0 {
            error
        } else {
            self.mean + alpha * (error - self.mean)
        };
        self.samples = self.samples.saturating_add(1);
    }
}

/// A [`Choose`] that asks a routing model, with [`PeakEwmaP2c`] as its fallback. See the
/// module docs.
#[derive(Debug)]
pub struct Learned {
    model: Option<Box<dyn Predict>>,
    mode: Mode,
    bound: DriftBound,
    drift: Drift,
    fallback: PeakEwmaP2c,
    /// Reused for every choice: the rows of features, the predictions, and the rows'
    /// candidates.
    features: Vec<f32>,
    predictions: Vec<Prediction>,
    rows: Vec<usize>,
    /// The prediction for the last choice.
    last: Option<f32>,
    /// Choices since the last probe.
    since_probe: u32,
}

impl Learned {
    /// Chooses with `model`, or with the fallback for `reason` when there is none.
    pub fn new(model: Predictor) -> Self {
        let (model, mode) = match model {
            Ok(model) => (Some(model), Mode::Model),
            Err(reason) => (None, Mode::Fallback(reason)),
        };
        Self {
            model,
            mode,
            bound: DriftBound::default(),
            drift: Drift::default(),
            fallback: PeakEwmaP2c,
            features: Vec::new(),
            predictions: Vec::new(),
            rows: Vec::new(),
            last: None,
            since_probe: 0,
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

    /// Who chooses now.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The current drift: the mean `|ln(observed / predicted)|` and how many observations
    /// it rests on.
    pub fn drift(&self) -> (f64, u32) {
        (self.drift.mean, self.drift.samples)
    }

    /// Replaces the model (a new one was pushed), or removes it: the next choice uses the
    /// new one, and its drift is measured afresh. In-flight requests predicted by the old one
    /// are still observed; for a few requests, the new model answers for the old one's
    /// predictions, which the drift's `min_samples` absorbs.
    pub fn replace(&mut self, model: Predictor) {
        *self = Self::new(model).with_drift_bound(self.bound);
    }

    /// Scores the available candidates into `self.predictions` (one per `self.rows`).
    fn predict(&mut self, candidates: &[Candidate<'_>], now: Instant) -> Result<(), PredictError> {
        let Some(model) = self.model.as_mut() else {
            return Err(PredictError("no model".to_owned()));
        };
        self.rows.clear();
        self.features.clear();
        for (i, candidate) in candidates.iter().enumerate() {
            if candidate.available {
                let mut row = [0.0; ROUTE_WIDTH];
                route_features(candidate, now, &mut row);
                self.features.extend_from_slice(&row);
                self.rows.push(i);
            }
        }
        self.predictions.clear();
        self.predictions
            .resize(self.rows.len(), Prediction::default());
        model.predict(&self.features, &mut self.predictions)?;
        if let Some(bad) = self
            .predictions
            .iter()
            .find(|p| !(p.latency_ms.is_finite() && p.failure.is_finite()))
        {
            return Err(PredictError(format!("the model predicted {bad:?}")));
        }
        Ok(())
    }

    /// The row of the lowest cost, counting costs within [`TIE_RATIO`] of it as ties; among
    /// ties the one with the fewest requests in flight, then one drawn at random.
    fn cheapest(
        &self,
        candidates: &[Candidate<'_>],
        draws: &mut dyn FnMut() -> u64,
    ) -> Option<usize> {
        let best = self
            .predictions
            .iter()
            .map(|p| p.cost_ms())
            .min_by(f32::total_cmp)?;
        // An infinite best makes every cost a tie, which is what it is.
        let band = best * TIE_RATIO;
        let pending = |row: usize| {
            self.rows
                .get(row)
                .and_then(|&i| candidates.get(i))
                .map_or(u32::MAX, |c| c.load.pending())
        };
        let tied = |row: usize| {
            self.predictions
                .get(row)
                .is_some_and(|p| p.cost_ms() <= band)
        };
        let least = (0..self.predictions.len())
            .filter(|&row| tied(row))
            .map(pending)
            .min()?;
        let chosen = |row: &usize| tied(*row) && pending(*row) == least;
        let ties = (0..self.predictions.len()).filter(chosen).count();
        let pick = if ties > 1 {
            super::balance::below(draws(), ties)
        } else {
            0
        };
        (0..self.predictions.len()).filter(chosen).nth(pick)
    }

    /// The row of the available candidate idle the longest, if that is over [`PROBE_IDLE`]
    /// and nothing is in flight there.
    fn probe(&self, candidates: &[Candidate<'_>], now: Instant) -> Option<usize> {
        self.rows
            .iter()
            .enumerate()
            .filter_map(|(row, &i)| Some((row, candidates.get(i)?.load)))
            .filter(|(_, load)| load.pending() == 0 && load.idle(now) >= PROBE_IDLE)
            .max_by_key(|(_, load)| load.idle(now))
            .map(|(row, _)| row)
    }

    /// The row of the first available candidate never measured with nothing in flight.
    fn unmeasured(&self, candidates: &[Candidate<'_>]) -> Option<usize> {
        self.rows.iter().position(|&i| {
            candidates
                .get(i)
                .is_some_and(|c| !c.load.observed() && c.load.pending() == 0)
        })
    }

    fn step_aside(&mut self, reason: Fallback) {
        self.mode = Mode::Fallback(reason);
        self.drift = Drift::default();
    }
}

impl Choose for Learned {
    fn choose(
        &mut self,
        candidates: &[Candidate<'_>],
        now: Instant,
        draws: &mut dyn FnMut() -> u64,
    ) -> Option<usize> {
        self.last = None;
        match self.mode {
            Mode::Fallback(Fallback::NoModel | Fallback::Refused | Fallback::Broken) => {
                return self.fallback.choose(candidates, now, draws);
            }
            Mode::Fallback(Fallback::Drift) => {
                // In the shadow: the fallback chooses, the model predicts its choice.
                let chosen = self.fallback.choose(candidates, now, draws)?;
                if self.predict(candidates, now).is_ok() {
                    self.last = self
                        .rows
                        .iter()
                        .position(|&i| i == chosen)
                        .and_then(|row| self.predictions.get(row))
                        .map(|p| p.latency_ms);
                }
                return Some(chosen);
            }
            Mode::Model => {}
        }
        if let Err(_error) = self.predict(candidates, now) {
            self.step_aside(Fallback::Broken);
            return self.fallback.choose(candidates, now, draws);
        }
        if let Some(row) = self.unmeasured(candidates) {
            self.last = self.predictions.get(row).map(|p| p.latency_ms);
            return self.rows.get(row).copied();
        }
        self.since_probe += 1;
        let probe = if self.since_probe >= PROBE_EVERY {
            self.since_probe = 0;
            self.probe(candidates, now)
        } else {
            None
        };
        let row = probe.or_else(|| self.cheapest(candidates, draws))?;
        self.last = self.predictions.get(row).map(|p| p.latency_ms);
        self.rows.get(row).copied()
    }

    fn predicted_ms(&self) -> Option<f32> {
        self.last
    }

    fn set_predictor(&mut self, predictor: Predictor) {
        self.replace(predictor);
    }

    fn mode(&self) -> Option<Mode> {
        Some(self.mode)
    }

    fn observe(&mut self, predicted_ms: f32, rtt: Duration, ok: bool) {
        if !ok || self.model.is_none() {
            // A failure's latency says little about the latency model; the failure output is
            // judged by the breaker's own means.
            return;
        }
        self.drift.observe(predicted_ms, rtt, self.bound.alpha);
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
}

#[cfg(test)]
mod tests;
