//! Pre-warming of workloads that scale to zero: whether to start a sleeping workload before
//! the request that would otherwise wait for its cold start, and whether to keep an awake,
//! idle one past its `idle_secs`.
//!
//! A warming model is a function from what the node knows about one workload's traffic (its
//! [`warm_features`], in the order and units of [`WARM_FEATURES`]) to the probability that a
//! request for it comes within the next [`WARM_HORIZON`] ([`WARM_OUTPUTS`]). The model runs
//! elsewhere (crate `edge-ai`, behind [`PredictWarm`]); this module decides what to do with
//! its answers, at each tick of the caller's ([`Prewarm::tick`]):
//!
//! - **Sleeping**: start it now ([`Action::Wake`]) when the probability is at least the
//!   threshold ([`WarmSettings::threshold`]). A lower threshold avoids more cold starts and
//!   spends more memory on instances woken for requests that do not come.
//! - **Awake and idle for `idle_secs`** (since its last request or its wake): put it to sleep
//!   ([`Action::Sleep`]) unless the probability is at least the threshold, in which case it
//!   stays up until a later tick says otherwise.
//! - **Fallback**: with no model, a model refused at load, one that fails to run, or one
//!   whose predictions drift from what happens, the rule is today's: never start a workload
//!   before a request, and sleep after `idle_secs`. [`Prewarm::mode`] says who decides.
//! - **The shadow check.** At decision points (a workload without a request for its
//!   `idle_secs`: what a model is trained on), one prediction per workload at a time is held
//!   until its horizon ends, then compared with what happened (a request or none): the drift is a moving mean
//!   of the squared error (the Brier score) set against the Brier score of the moving base
//!   rate, what a constant guess would score. A model worse than that guess by
//!   [`WarmDriftBound::margin`] (once it has [`WarmDriftBound::min_samples`]) steps aside,
//!   keeps predicting in the shadow, and takes over again once it is within
//!   [`WarmDriftBound::resume`] of the guess.
//!
//! Requests are outside anyone's control here: whether a workload is up does not change when
//! its requests come, so the history and the features are the same under every policy.
//!
//! Nothing here reads the clock (`now` and the wall-clock time of day come in as arguments)
//! or does I/O; a tick allocates nothing once its buffers have grown to the workload count.

use std::fmt;
use std::time::{Duration, Instant};

pub use crate::proxy::learned::{Fallback, Feature, Mode, PredictError};

/// What a warming model is for, as it declares it (`edge.purpose`).
pub const WARM_PURPOSE: &str = "warm";

/// The number of features per workload.
pub const WARM_WIDTH: usize = 17;

/// The features of one workload, in order: what a warming model's input declares. Append,
/// never reorder.
pub const WARM_FEATURES: [Feature; WARM_WIDTH] = [
    // Since its last request, [`TIME_CAP`] when it has had none.
    Feature {
        name: "since_request_s",
        unit: "s",
    },
    // The gap between its last two requests, and the mean and standard deviation of the last
    // [`GAPS`] gaps; `TIME_CAP` (0 for the deviation) with too few requests.
    Feature {
        name: "gap_last_s",
        unit: "s",
    },
    Feature {
        name: "gap_mean_s",
        unit: "s",
    },
    Feature {
        name: "gap_std_s",
        unit: "s",
    },
    // `since_request_s / gap_mean_s`, at most 100: where it is in its usual rhythm.
    Feature {
        name: "since_over_gap",
        unit: "ratio",
    },
    // Requests in the last minute, 10 minutes, hour and day.
    Feature {
        name: "requests_1m",
        unit: "requests",
    },
    Feature {
        name: "requests_10m",
        unit: "requests",
    },
    Feature {
        name: "requests_1h",
        unit: "requests",
    },
    Feature {
        name: "requests_24h",
        unit: "requests",
    },
    // Requests a day ago, in the 10 and 60 minutes that followed this time of day.
    Feature {
        name: "day_ago_next_10m",
        unit: "requests",
    },
    Feature {
        name: "day_ago_next_60m",
        unit: "requests",
    },
    // The wall-clock time of day as an angle (midnight 0), so that 23:59 is near 00:00.
    Feature {
        name: "day_sin",
        unit: "ratio",
    },
    Feature {
        name: "day_cos",
        unit: "ratio",
    },
    // The workload itself.
    Feature {
        name: "cold_start_s",
        unit: "s",
    },
    Feature {
        name: "memory_mib",
        unit: "MiB",
    },
    Feature {
        name: "idle_secs",
        unit: "s",
    },
    // From this time of day to the first request a day ago after it, to the minute; an hour
    // when none came in that hour: when a daily caller is due, which `day_ago_next_10m`
    // places only within ten minutes.
    Feature {
        name: "day_ago_due_s",
        unit: "s",
    },
];

/// The output of a warming model per workload.
pub const WARM_OUTPUTS: [Feature; 1] = [Feature {
    name: "request_within_horizon",
    unit: "probability",
}];

/// What a prediction is about: a request within this long after the tick. A minute covers
/// the cold starts of the workloads a Pi runs (a second to half a minute) plus a tick.
pub const WARM_HORIZON: Duration = Duration::from_secs(60);

/// The longest time a feature shows: two days, past any daily rhythm.
pub const TIME_CAP: Duration = Duration::from_secs(2 * 86_400);

/// How many of the latest gaps between requests the gap features describe.
pub const GAPS: usize = 16;

/// Minutes of per-minute request counts kept: a day and the hour after it.
const MINUTES: usize = 1440 + 60 + 1;

const DAY_SECS: u64 = 86_400;

/// How a workload is run, as its spec and its measured starts say.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WarmProfile {
    /// How long a start takes until it is ready (measured, or the spec's guess).
    pub cold_start: Duration,
    /// What one instance holds while it is up.
    pub memory_bytes: u64,
    /// The spec's `scale_to_zero.idle_secs`.
    pub idle: Duration,
}

/// What one workload has done: its requests, its wakes and sleeps. Fixed size: a ring of
/// per-minute counts over a day and an hour, and the last [`GAPS`] gaps.
#[derive(Debug, Clone)]
pub struct WarmWorkload {
    profile: WarmProfile,
    origin: Instant,
    /// Requests per minute since `origin`, minute `m` at `m % MINUTES`.
    minutes: Box<[u32; MINUTES]>,
    /// The newest minute written (all older within the ring are current).
    minute: u64,
    last_request: Option<Instant>,
    gaps: [f32; GAPS],
    gap_count: usize,
    awake: bool,
    /// Since the last request or wake, whichever is later.
    active_at: Instant,
    /// The prediction awaiting its outcome: when it was made, what it said, whether a request
    /// has come since.
    pending: Option<Pending>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Pending {
    at: Instant,
    p: f32,
    hit: bool,
}

impl WarmWorkload {
    /// A workload with no history, asleep (or `awake`) at `now`.
    pub fn new(profile: WarmProfile, awake: bool, now: Instant) -> Self {
        Self {
            profile,
            origin: now,
            minutes: Box::new([0; MINUTES]),
            minute: 0,
            last_request: None,
            gaps: [0.0; GAPS],
            gap_count: 0,
            awake,
            active_at: now,
            pending: None,
        }
    }

    pub fn profile(&self) -> WarmProfile {
        self.profile
    }

    /// A new spec or a new measure of its start.
    pub fn set_profile(&mut self, profile: WarmProfile) {
        self.profile = profile;
    }

    pub fn is_awake(&self) -> bool {
        self.awake
    }

    /// A request arrived at `now` (whether or not the workload was up).
    pub fn request(&mut self, now: Instant) {
        let m = self.minute_of(now);
        self.advance(m);
        let slot = (m % MINUTES as u64) as usize;
        if m + MINUTES as u64 > self.minute
            && let Some(count) = self.minutes.get_mut(slot)
        {
            *count = count.saturating_add(1);
        }
        if let Some(last) = self.last_request {
            let gap = now.saturating_duration_since(last).min(TIME_CAP);
            self.gaps[self.gap_count % GAPS] = gap.as_secs_f32();
            self.gap_count += 1;
        }
        self.last_request = Some(self.last_request.map_or(now, |last| last.max(now)));
        self.active_at = self.active_at.max(now);
        if let Some(pending) = self.pending.as_mut()
            && now.saturating_duration_since(pending.at) <= WARM_HORIZON
        {
            pending.hit = true;
        }
    }

    /// The workload was started at `now` (by a request or a pre-warm): idle counts from here.
    pub fn woke(&mut self, now: Instant) {
        self.awake = true;
        self.active_at = self.active_at.max(now);
    }

    /// The workload was stopped at `now`.
    pub fn slept(&mut self, _now: Instant) {
        self.awake = false;
    }

    fn minute_of(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.origin).as_secs() / 60
    }

    /// Moves the ring on to minute `m`, zeroing the minutes it passes.
    fn advance(&mut self, m: u64) {
        if m <= self.minute {
            return;
        }
        let steps = (m - self.minute).min(MINUTES as u64);
        for k in 1..=steps {
            let slot = ((self.minute + k) % MINUTES as u64) as usize;
            if let Some(count) = self.minutes.get_mut(slot) {
                *count = 0;
            }
        }
        self.minute = m;
    }

    /// Requests in minutes `from..=to` (relative to `origin`), those the ring still holds.
    fn count(&self, from: i64, to: i64) -> f32 {
        let oldest = self.minute as i64 - (MINUTES as i64 - 1);
        let from = from.max(oldest).max(0);
        let to = to.min(self.minute as i64);
        (from..=to)
            .filter_map(|m| self.minutes.get((m as u64 % MINUTES as u64) as usize))
            .map(|&c| c as f32)
            .sum()
    }

    /// Seconds from minute `from` to the first minute within the hour after it that had a
    /// request, an hour when none had (or the ring holds none of it).
    fn day_ago_due(&self, from: i64) -> f32 {
        (0..=60)
            .find(|k| self.count(from + k, from + k) > 0.0)
            .map_or(3600.0, |k| (k * 60) as f32)
    }

    /// Writes the workload's features at `now` into `row`, in the order of [`WARM_FEATURES`].
    /// `wall_secs` is the wall-clock time at `now` in seconds since the Unix epoch (UTC; the
    /// caller may shift it to the site's zone), for the time of day.
    pub fn features(&mut self, now: Instant, wall_secs: u64, row: &mut [f32; WARM_WIDTH]) {
        let m = self.minute_of(now);
        self.advance(m);
        let cap = TIME_CAP.as_secs_f32();
        let since = self.last_request.map_or(cap, |last| {
            now.saturating_duration_since(last).as_secs_f32().min(cap)
        });
        let n = self.gap_count.min(GAPS);
        let (gap_last, gap_mean, gap_std) = if n == 0 {
            (cap, cap, 0.0)
        } else {
            let last = self.gaps[(self.gap_count - 1) % GAPS];
            let gaps = &self.gaps[..n];
            let mean = gaps.iter().sum::<f32>() / n as f32;
            let var = gaps.iter().map(|g| (g - mean) * (g - mean)).sum::<f32>() / n as f32;
            (last, mean, var.max(0.0).sqrt())
        };
        let over = if gap_mean > 0.0 {
            (since / gap_mean).min(100.0)
        } else {
            100.0
        };
        let m = m as i64;
        let day = 1440;
        let angle = (wall_secs % DAY_SECS) as f64 / DAY_SECS as f64 * std::f64::consts::TAU;
        *row = [
            since,
            gap_last,
            gap_mean,
            gap_std,
            over,
            self.count(m, m),
            self.count(m - 9, m),
            self.count(m - 59, m),
            self.count(m - (day - 1), m),
            self.count(m - day, m - day + 10),
            self.count(m - day, m - day + 60),
            angle.sin() as f32,
            angle.cos() as f32,
            self.profile.cold_start.as_secs_f32(),
            (self.profile.memory_bytes as f64 / (1024.0 * 1024.0)) as f32,
            self.profile.idle.as_secs_f32(),
            self.day_ago_due(m - day),
        ];
    }

    /// Whether a decision is made for it at `now`: no request for its `idle_secs` (asleep, or
    /// due to sleep by today's rule). Only there are predictions judged: that is what a model
    /// is trained on, and what it decides.
    fn decision_point(&self, now: Instant) -> bool {
        self.last_request
            .is_none_or(|last| now.saturating_duration_since(last) >= self.profile.idle)
    }

    /// Whether it has been idle for its `idle_secs` at `now`.
    fn idle_done(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.active_at) >= self.profile.idle
    }
}

/// Runs a warming model on a batch of workloads.
pub trait PredictWarm: fmt::Debug + Send {
    /// `features` holds `out.len()` rows of [`WARM_WIDTH`] values; write each row's
    /// probability of a request within [`WARM_HORIZON`] into `out`, in order.
    fn predict(&mut self, features: &[f32], out: &mut [f32]) -> Result<(), PredictError>;
}

/// A warming model for [`Prewarm`], or why there is none.
pub type WarmPredictor = Result<Box<dyn PredictWarm>, Fallback>;

/// What to do with one workload at a tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing changes.
    Stay,
    /// Start it now, through the path a request takes.
    Wake,
    /// Put it to sleep (when nothing is in flight: the caller's check).
    Sleep,
}

/// How far a model's predictions may drift before it steps aside. See the module docs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WarmDriftBound {
    /// Step aside when its Brier score exceeds the base rate's by more than this.
    pub margin: f64,
    /// Take over again once it exceeds it by at most this (at most `margin`).
    pub resume: f64,
    /// Judge only after this many outcomes since the model was loaded or stepped aside.
    pub min_samples: u32,
    /// The moving means' weight for each new outcome.
    pub alpha: f64,
}

impl Default for WarmDriftBound {
    /// Worse than a constant guess by 0.05 steps aside, back at 0.02; judged after 100
    /// outcomes, each weighing 1/50.
    fn default() -> Self {
        Self {
            margin: 0.05,
            resume: 0.02,
            min_samples: 100,
            alpha: 0.02,
        }
    }
}

/// What the policy is given besides the model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WarmSettings {
    /// Wake or keep up at a predicted probability at least this. Lower: fewer cold starts,
    /// more memory.
    pub threshold: f32,
    pub drift: WarmDriftBound,
}

impl Default for WarmSettings {
    /// A threshold of 0.5: up when a request within the horizon is more likely than not.
    fn default() -> Self {
        Self {
            threshold: 0.5,
            drift: WarmDriftBound::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Default)]
struct Drift {
    /// The moving Brier score of the model, and the moving base rate and its Brier score.
    brier: f64,
    rate: f64,
    samples: u32,
}

impl Drift {
    fn observe(&mut self, p: f32, hit: bool, alpha: f64) {
        let outcome = if hit { 1.0 } else { 0.0 };
        let p = f64::from(p).clamp(0.0, 1.0);
        let error = (p - outcome) * (p - outcome);
        if self.samples == 0 {
            self.brier = error;
            self.rate = outcome;
        } else {
            self.brier += alpha * (error - self.brier);
            self.rate += alpha * (outcome - self.rate);
        }
        self.samples = self.samples.saturating_add(1);
    }

    /// What always guessing the base rate scores.
    fn guess(&self) -> f64 {
        self.rate * (1.0 - self.rate)
    }
}

/// The pre-warming decision for every workload that scales to zero. See the module docs.
#[derive(Debug)]
pub struct Prewarm {
    model: Option<Box<dyn PredictWarm>>,
    mode: Mode,
    settings: WarmSettings,
    drift: Drift,
    features: Vec<f32>,
    predictions: Vec<f32>,
}

impl Prewarm {
    /// Decides with `model`, or by the fixed rule for `reason` when there is none.
    pub fn new(model: WarmPredictor, settings: WarmSettings) -> Self {
        let (model, mode) = match model {
            Ok(model) => (Some(model), Mode::Model),
            Err(reason) => (None, Mode::Fallback(reason)),
        };
        Self {
            model,
            mode,
            settings,
            drift: Drift::default(),
            features: Vec::new(),
            predictions: Vec::new(),
        }
    }

    /// Who decides now.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    pub fn settings(&self) -> WarmSettings {
        self.settings
    }

    /// The model's moving Brier score, the base rate's, and how many outcomes they rest on.
    pub fn drift(&self) -> (f64, f64, u32) {
        (self.drift.brier, self.drift.guess(), self.drift.samples)
    }

    /// Replaces the model (a new one was pushed) or removes it; its drift starts afresh.
    pub fn replace(&mut self, model: WarmPredictor) {
        *self = Self::new(model, self.settings);
    }

    /// The predictions of the last tick, one per workload, when the model (or its shadow) ran.
    pub fn predictions(&self) -> &[f32] {
        &self.predictions
    }

    /// Decides for every workload at `now` (`wall_secs`: see [`WarmWorkload::features`]),
    /// writing one [`Action`] per workload into `actions`. The caller carries the actions out
    /// and reports them back ([`WarmWorkload::woke`], [`WarmWorkload::slept`]).
    pub fn tick(
        &mut self,
        workloads: &mut [WarmWorkload],
        now: Instant,
        wall_secs: u64,
        actions: &mut Vec<Action>,
    ) {
        actions.clear();
        // Outcomes first: a prediction whose request came, or whose horizon has passed.
        for workload in workloads.iter_mut() {
            let Some(pending) = workload.pending else {
                continue;
            };
            if pending.hit || now.saturating_duration_since(pending.at) > WARM_HORIZON {
                workload.pending = None;
                if self.model.is_some() {
                    self.observe(pending.p, pending.hit);
                }
            }
        }
        let predicted = self.model.is_some() && self.predict(workloads, now, wall_secs);
        if predicted {
            for (workload, &p) in workloads.iter_mut().zip(&self.predictions) {
                if workload.pending.is_none() && workload.decision_point(now) {
                    workload.pending = Some(Pending {
                        at: now,
                        p,
                        hit: false,
                    });
                }
            }
        } else {
            self.predictions.clear();
        }
        let by_model = predicted && self.mode == Mode::Model;
        for (i, workload) in workloads.iter().enumerate() {
            let likely = by_model
                && self
                    .predictions
                    .get(i)
                    .is_some_and(|&p| p >= self.settings.threshold);
            let action = match (workload.awake, likely) {
                (false, true) => Action::Wake,
                (false, false) => Action::Stay,
                (true, _) if !workload.idle_done(now) => Action::Stay,
                (true, true) => Action::Stay,
                (true, false) => Action::Sleep,
            };
            actions.push(action);
        }
    }

    /// Runs the model on every workload into `self.predictions`; false (and the model stepped
    /// aside as broken) when it fails or answers something that is not a probability.
    fn predict(&mut self, workloads: &mut [WarmWorkload], now: Instant, wall_secs: u64) -> bool {
        let Some(model) = self.model.as_mut() else {
            return false;
        };
        self.features.clear();
        for workload in workloads.iter_mut() {
            let mut row = [0.0; WARM_WIDTH];
            workload.features(now, wall_secs, &mut row);
            self.features.extend_from_slice(&row);
        }
        self.predictions.clear();
        self.predictions.resize(workloads.len(), 0.0);
        let ok = model.predict(&self.features, &mut self.predictions).is_ok()
            && self.predictions.iter().all(|p| (0.0..=1.0).contains(p));
        if !ok {
            self.model = None;
            self.mode = Mode::Fallback(Fallback::Broken);
            self.drift = Drift::default();
        }
        ok
    }

    fn observe(&mut self, p: f32, hit: bool) {
        let bound = self.settings.drift;
        self.drift.observe(p, hit, bound.alpha);
        if self.drift.samples < bound.min_samples {
            return;
        }
        let worse = self.drift.brier - self.drift.guess();
        match self.mode {
            Mode::Model if worse > bound.margin => {
                self.mode = Mode::Fallback(Fallback::Drift);
            }
            Mode::Fallback(Fallback::Drift) if worse <= bound.resume.min(bound.margin) => {
                self.mode = Mode::Model
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests;
