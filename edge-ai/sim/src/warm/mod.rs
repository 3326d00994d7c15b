//! A deterministic simulation of pre-warming: the workloads of one node that scale to zero,
//! their requests over days, and node-core's [`Prewarm`] deciding at each tick, for
//! training data and for judging strategies.
//!
//! A [`WarmScenario`] (a TOML file, [`scenario`]) describes the workloads and their traffic;
//! [`run`] plays it on a virtual clock with node-core's own [`WarmWorkload`] histories and
//! [`Prewarm`] policy, carrying out its actions the way the node's activator does: a request
//! that finds its workload asleep starts it and waits for its cold start (as does one that
//! finds it still starting), and the idle time counts from the last request or from the
//! moment a start was ready. [`eval`] compares strategies over seeds, [`record`] writes
//! training rows.
//!
//! **Invariants.** As the routing simulation: deterministic (no clock but one base
//! `Instant`, every random number from the seed); common random numbers (for one scenario
//! and seed every strategy meets the same requests: requests do not depend on whether a
//! workload is up); node-core's code, not a copy; a scenario file is untrusted.
//!
//! # The training CSV
//!
//! `edge-sim warm record` writes one header line, then one line per workload and decision
//! point (a tick at which the workload has been without a request for its `idle_secs`: asleep,
//! or due to sleep under today's rule; every `--every`-th such tick), comma-separated:
//!
//! ```text
//! since_request_s,gap_last_s,...,idle_secs,request_within_horizon
//! 412,380,395.5,20.1,1.04,0,0,4,96,1,4,0.5,0.87,4,64,120,1
//! ```
//!
//! the 17 columns of [`WARM_FEATURES`] in order, then `1` when a request for the workload came
//! within [`WARM_HORIZON`] after the tick, else `0`.

pub mod cli;
pub mod scenario;

use std::time::{Duration, Instant};

use node_core::warm::{
    Action, Fallback, Mode, PredictError, PredictWarm, Prewarm, WARM_FEATURES, WARM_HORIZON,
    WARM_OUTPUTS, WARM_PURPOSE, WARM_WIDTH, WarmProfile, WarmSettings, WarmWorkload,
};
use serde::Serialize;

use crate::sim::mix;
use scenario::{Source, WarmScenario};

/// A strategy to compare.
#[derive(Debug, Clone)]
pub enum WarmPolicy {
    /// Today's rule: never early, asleep after each workload's `idle_secs`.
    Never,
    /// Today's rule with every `idle_secs` raised to this many seconds (never lowered).
    KeepAlive(u32),
    /// The model, waking and keeping up at a probability of at least the threshold.
    Model {
        model: edge_ai::Model,
        threshold: f32,
    },
}

impl WarmPolicy {
    /// `never`, `keep-alive:SECS`, `model:THRESHOLD`.
    pub fn name(&self) -> String {
        match self {
            WarmPolicy::Never => "never".to_owned(),
            WarmPolicy::KeepAlive(secs) => format!("keep-alive:{secs}"),
            WarmPolicy::Model { threshold, .. } => format!("model:{threshold}"),
        }
    }
}

/// Why a model cannot decide pre-warming.
#[derive(Debug, thiserror::Error)]
pub enum WarmModelError {
    /// It is not one input and one output port.
    #[error("a warming model has one input and one output port, this one {inputs} and {outputs}")]
    Ports { inputs: usize, outputs: usize },
    /// It declares another schema than node-core's.
    #[error("not a warming model: {0}")]
    Schema(#[from] edge_ai::SchemaMismatch),
    /// A batch cannot be made.
    #[error("{0}")]
    Batch(#[from] edge_ai::ModelError),
}

/// Checks that `model` is a warming model: [`WARM_PURPOSE`], [`WARM_FEATURES`] in,
/// [`WARM_OUTPUTS`] out, in order and in their units.
pub fn check_model(model: &edge_ai::Model) -> Result<(), WarmModelError> {
    let features: Vec<(&str, &str)> = WARM_FEATURES.iter().map(|f| (f.name, f.unit)).collect();
    let out: Vec<(&str, &str)> = WARM_OUTPUTS.iter().map(|f| (f.name, f.unit)).collect();
    match model.expect_one_to_one(WARM_PURPOSE, &features, &out) {
        Err(edge_ai::SchemaMismatch::PortCount { .. }) => Err(WarmModelError::Ports {
            inputs: model.inputs().len(),
            outputs: model.outputs().len(),
        }),
        other => Ok(other?),
    }
}

/// A warming model run by edge-ai, a batch of up to `rows` workloads at a time.
#[derive(Debug)]
pub struct OnnxWarm {
    batch: edge_ai::Batch,
}

impl OnnxWarm {
    /// Checks `model` ([`check_model`]) and prepares a batch of `rows`.
    pub fn new(model: &edge_ai::Model, rows: usize) -> Result<Self, WarmModelError> {
        check_model(model)?;
        let rows = rows.clamp(1, model.max_batch_rows().max(1));
        Ok(Self {
            batch: model.batch(rows)?,
        })
    }
}

impl PredictWarm for OnnxWarm {
    fn predict(&mut self, features: &[f32], out: &mut [f32]) -> Result<(), PredictError> {
        let rows = out.len();
        let features = features
            .get(..rows * WARM_WIDTH)
            .ok_or_else(|| PredictError(format!("fewer than {rows} rows of features")))?;
        self.batch
            .run_rows(features, |first, values| {
                for (o, &v) in out.iter_mut().skip(first).zip(values) {
                    *o = v;
                }
            })
            .map_err(|e| PredictError(e.to_string()))
    }
}

/// A workload's requests over the run, in seconds from its start, sorted. The same for every
/// strategy: drawn from the scenario, the seed and the workload's place only.
pub fn arrivals(scenario: &WarmScenario, seed: u64, workload: usize) -> Vec<f64> {
    let Some(w) = scenario.workloads.get(workload) else {
        return Vec::new();
    };
    let end = scenario.duration_secs();
    let wall = scenario.start_wall_secs;
    let mut out = Vec::new();
    for (s, source) in w.traffic.iter().enumerate() {
        let mut rng =
            fastrand::Rng::with_seed(mix(&[seed, 0x7761_726d, workload as u64, s as u64]));
        let mut events = Vec::new();
        match source {
            Source::Poisson {
                rate_per_hour,
                hours,
                ..
            } => {
                let rate = rate_per_hour / 3600.0;
                if rate > 0.0 {
                    let mut t = 0.0;
                    loop {
                        t += -(1.0 - rng.f64()).ln() / rate;
                        if t >= end {
                            break;
                        }
                        let day = (wall + t).rem_euclid(86_400.0);
                        let inside = hours.is_none_or(|h| {
                            if h.from_secs <= h.until_secs {
                                day >= h.from_secs && day < h.until_secs
                            } else {
                                day >= h.from_secs || day < h.until_secs
                            }
                        });
                        if inside {
                            events.push(t);
                        }
                    }
                }
            }
            Source::Periodic {
                period_secs,
                offset_secs,
                jitter_secs,
                skip,
                ..
            } => {
                let mut t = (offset_secs - wall).rem_euclid(*period_secs);
                while t < end + jitter_secs {
                    let jitter = (rng.f64() * 2.0 - 1.0) * jitter_secs;
                    let missed = rng.f64() < *skip;
                    let at = t + jitter;
                    if !missed && (0.0..end).contains(&at) {
                        events.push(at);
                    }
                    t += period_secs;
                }
            }
        }
        let follow = match source {
            Source::Poisson { follow, .. } | Source::Periodic { follow, .. } => *follow,
        };
        for &t in &events {
            out.push(t);
            if let Some(f) = follow {
                for _ in 0..f.requests {
                    let at = t + rng.f64() * f.within_secs;
                    if at < end {
                        out.push(at);
                    }
                }
            }
        }
    }
    out.retain(|t| {
        !w.silent
            .iter()
            .any(|s| *t >= s.from_secs && *t < s.until_secs)
    });
    out.sort_by(f64::total_cmp);
    out
}

/// What one run of a strategy gave.
#[derive(Debug, Clone, Default)]
pub struct WarmOutcome {
    /// Counted requests (after the warm-up).
    pub requests: u64,
    /// Counted requests that waited for a start, and how long each counted request waited,
    /// in seconds.
    pub cold: u64,
    pub waits: Vec<f64>,
    /// MiB-seconds up (starting or ready) after the warm-up.
    pub mib_secs: f64,
    /// Starts made by the policy, not a request.
    pub prewarms: u64,
    /// Ticks, and of them those at which the model decided.
    pub ticks: u64,
    pub model_ticks: u64,
    /// Training rows when recording.
    pub rows: Vec<([f32; WARM_WIDTH], bool)>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Up {
    Asleep,
    /// Starting, or ready once `ready_at` has passed; up since `since`.
    Up {
        since: f64,
        ready_at: f64,
    },
}

/// Plays `scenario` with `seed` under `policy`. With `record` set to `Some(every)`, every
/// `every`-th decision point of each workload becomes a training row.
pub fn run(
    scenario: &WarmScenario,
    seed: u64,
    policy: &WarmPolicy,
    record: Option<u32>,
) -> Result<WarmOutcome, WarmModelError> {
    let base = Instant::now();
    let at = |secs: f64| base + Duration::from_secs_f64(secs.max(0.0));
    let n = scenario.workloads.len();
    let predictor = match policy {
        WarmPolicy::Model { model, .. } => Ok(Box::new(OnnxWarm::new(model, n)?) as Box<_>),
        _ => Err(Fallback::NoModel),
    };
    let threshold = match policy {
        WarmPolicy::Model { threshold, .. } => *threshold,
        _ => WarmSettings::default().threshold,
    };
    let mut prewarm = Prewarm::new(
        predictor,
        WarmSettings {
            threshold,
            ..WarmSettings::default()
        },
    );
    let idle_of = |configured: u32| match policy {
        WarmPolicy::KeepAlive(secs) => configured.max(*secs),
        _ => configured,
    };
    let mut workloads: Vec<WarmWorkload> = scenario
        .workloads
        .iter()
        .map(|w| {
            let profile = WarmProfile {
                cold_start: Duration::from_secs_f64(w.cold_start_secs),
                memory_bytes: (w.memory_mib * 1024.0 * 1024.0) as u64,
                idle: Duration::from_secs(idle_of(w.idle_secs).into()),
            };
            WarmWorkload::new(profile, false, base)
        })
        .collect();
    let arrivals: Vec<Vec<f64>> = (0..n).map(|i| arrivals(scenario, seed, i)).collect();
    let mut next = vec![0usize; n];
    let mut up = vec![Up::Asleep; n];
    let mut points = vec![0u32; n];
    let mut out = WarmOutcome::default();
    let warmup = scenario.warmup_secs();
    let end = scenario.duration_secs();
    let tick = scenario.tick_secs;
    let horizon = WARM_HORIZON.as_secs_f64();
    // Memory-seconds after the warm-up of an instance up from `since` until `until`.
    let cost = |i: usize, since: f64, until: f64| {
        let secs = (until - since.max(warmup)).max(0.0);
        secs * scenario.workloads[i].memory_mib
    };
    let mut actions = Vec::new();
    let mut k: u64 = 0;
    loop {
        let now = k as f64 * tick;
        if now >= end {
            break;
        }
        k += 1;
        // The requests up to this tick, in order, for each workload.
        for i in 0..n {
            let cold_start = scenario.workloads[i].cold_start_secs;
            while let Some(&t) = arrivals[i].get(next[i]) {
                if t > now {
                    break;
                }
                next[i] += 1;
                let wait = match up[i] {
                    Up::Asleep => {
                        up[i] = Up::Up {
                            since: t,
                            ready_at: t + cold_start,
                        };
                        workloads[i].woke(at(t + cold_start));
                        cold_start
                    }
                    Up::Up { ready_at, .. } => (ready_at - t).max(0.0),
                };
                workloads[i].request(at(t));
                if t >= warmup {
                    out.requests += 1;
                    out.waits.push(wait);
                    if wait > 0.0 {
                        out.cold += 1;
                    }
                }
            }
        }
        if let Some(every) = record {
            for i in 0..n {
                let idle = f64::from(scenario.workloads[i].idle_secs);
                let last = next[i].checked_sub(1).and_then(|j| arrivals[i].get(j));
                if last.is_some_and(|&l| now - l < idle) {
                    continue;
                }
                points[i] += 1;
                if !points[i].is_multiple_of(every.max(1)) {
                    continue;
                }
                let mut row = [0.0; WARM_WIDTH];
                workloads[i].features(at(now), wall(scenario, now), &mut row);
                let hit = arrivals[i]
                    .get(next[i])
                    .is_some_and(|&t| t <= now + horizon);
                out.rows.push((row, hit));
            }
        }
        prewarm.tick(&mut workloads, at(now), wall(scenario, now), &mut actions);
        out.ticks += 1;
        if prewarm.mode() == Mode::Model {
            out.model_ticks += 1;
        }
        for (i, action) in actions.iter().enumerate() {
            match (*action, up[i]) {
                (Action::Wake, Up::Asleep) => {
                    let ready_at = now + scenario.workloads[i].cold_start_secs;
                    up[i] = Up::Up {
                        since: now,
                        ready_at,
                    };
                    workloads[i].woke(at(ready_at));
                    if now >= warmup {
                        out.prewarms += 1;
                    }
                }
                (Action::Sleep, Up::Up { since, ready_at }) if ready_at <= now => {
                    out.mib_secs += cost(i, since, now);
                    up[i] = Up::Asleep;
                    workloads[i].slept(at(now));
                }
                _ => {}
            }
        }
    }
    for (i, state) in up.iter().enumerate() {
        if let Up::Up { since, .. } = *state {
            out.mib_secs += cost(i, since, end);
        }
    }
    Ok(out)
}

/// The wall-clock seconds at `secs` into the run (the run starts on day 0).
fn wall(scenario: &WarmScenario, secs: f64) -> u64 {
    (scenario.start_wall_secs + secs).max(0.0) as u64
}

/// One strategy's figures on one scenario, over all seeds.
#[derive(Debug, Clone, Serialize)]
pub struct WarmFigures {
    pub strategy: String,
    pub requests: u64,
    /// Requests that waited for a start, per 1000 requests.
    pub cold_per_1000: f64,
    /// The 99th percentile and the mean of the time a request waited for a start, seconds.
    pub p99_wait_s: f64,
    pub mean_wait_s: f64,
    /// Memory held up, MiB-hours per simulated day (after the warm-up).
    pub mib_hours_per_day: f64,
    /// Starts made before a request, per day.
    pub prewarms_per_day: f64,
    /// The share of ticks the model decided at (not its fallback); absent without a model.
    pub model_share: Option<f64>,
}

/// Every strategy on `scenario`, each against the first.
#[derive(Debug, Clone, Serialize)]
pub struct WarmScenarioFigures {
    pub scenario: String,
    pub seeds: Vec<u64>,
    pub strategies: Vec<WarmFigures>,
}

impl WarmFigures {
    fn from_outcomes(name: String, days: f64, outcomes: &[WarmOutcome], model: bool) -> Self {
        let requests: u64 = outcomes.iter().map(|o| o.requests).sum();
        let cold: u64 = outcomes.iter().map(|o| o.cold).sum();
        let mut waits: Vec<f64> = outcomes.iter().flat_map(|o| o.waits.clone()).collect();
        waits.sort_by(f64::total_cmp);
        let p99 = if waits.is_empty() {
            0.0
        } else {
            let rank = ((waits.len() as f64) * 0.99).ceil() as usize;
            waits[rank.clamp(1, waits.len()) - 1]
        };
        let mean = waits.iter().sum::<f64>() / waits.len().max(1) as f64;
        let runs = outcomes.len().max(1) as f64;
        let day_runs = days * runs;
        let ticks: u64 = outcomes.iter().map(|o| o.ticks).sum();
        let model_ticks: u64 = outcomes.iter().map(|o| o.model_ticks).sum();
        Self {
            strategy: name,
            requests,
            cold_per_1000: cold as f64 * 1000.0 / requests.max(1) as f64,
            p99_wait_s: p99,
            mean_wait_s: mean,
            mib_hours_per_day: outcomes.iter().map(|o| o.mib_secs).sum::<f64>() / 3600.0 / day_runs,
            prewarms_per_day: outcomes.iter().map(|o| o.prewarms).sum::<u64>() as f64 / day_runs,
            model_share: model.then(|| model_ticks as f64 / ticks.max(1) as f64),
        }
    }
}

impl WarmScenarioFigures {
    /// A plain-text table, each strategy's ratios against the first's.
    pub fn table(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let seeds = match (self.seeds.first(), self.seeds.last()) {
            (Some(a), Some(b)) => format!("{a}..{}", b + 1),
            _ => String::new(),
        };
        let _ = writeln!(out, "scenario {} (seeds {seeds})", self.scenario);
        let _ = writeln!(
            out,
            "  {:<16} {:>9} {:>8} {:>8} {:>9} {:>10} {:>9} {:>7} {:>7} {:>6}",
            "strategy",
            "requests",
            "cold/1k",
            "p99 s",
            "mean s",
            "MiB-h/day",
            "warms/d",
            "cold x",
            "mem x",
            "model"
        );
        let first = self.strategies.first();
        for s in &self.strategies {
            let ratio = |a: f64, b: f64| {
                if b > 0.0 {
                    format!("{:.2}", a / b)
                } else if a > 0.0 {
                    "inf".to_owned()
                } else {
                    "1.00".to_owned()
                }
            };
            let (cold_x, mem_x) = first.map_or((String::new(), String::new()), |f| {
                (
                    ratio(s.cold_per_1000, f.cold_per_1000),
                    ratio(s.mib_hours_per_day, f.mib_hours_per_day),
                )
            });
            let _ = writeln!(
                out,
                "  {:<16} {:>9} {:>8.1} {:>8.2} {:>9.3} {:>10.1} {:>9.1} {:>7} {:>7} {:>6}",
                s.strategy,
                s.requests,
                s.cold_per_1000,
                s.p99_wait_s,
                s.mean_wait_s,
                s.mib_hours_per_day,
                s.prewarms_per_day,
                cold_x,
                mem_x,
                s.model_share
                    .map_or("-".to_owned(), |m| format!("{:.0}%", m * 100.0)),
            );
        }
        out
    }
}

/// Every policy on `scenario` for every seed.
pub fn eval(
    scenario: &WarmScenario,
    seeds: &[u64],
    policies: &[WarmPolicy],
) -> Result<WarmScenarioFigures, WarmModelError> {
    let runs: Vec<(usize, u64)> = (0..policies.len())
        .flat_map(|p| seeds.iter().map(move |&s| (p, s)))
        .collect();
    let outcomes = crate::parallel(&runs, |&(p, seed)| run(scenario, seed, &policies[p], None));
    let outcomes = outcomes.into_iter().collect::<Result<Vec<_>, _>>()?;
    let days = scenario.duration_days - scenario.warmup_days;
    let strategies = policies
        .iter()
        .enumerate()
        .map(|(p, policy)| {
            let mine: Vec<WarmOutcome> = runs
                .iter()
                .zip(&outcomes)
                .filter(|((q, _), _)| *q == p)
                .map(|(_, o)| o.clone())
                .collect();
            let model = matches!(policy, WarmPolicy::Model { .. });
            WarmFigures::from_outcomes(policy.name(), days, &mine, model)
        })
        .collect();
    Ok(WarmScenarioFigures {
        scenario: scenario.name.clone(),
        seeds: seeds.to_vec(),
        strategies,
    })
}

/// The CSV header: [`WARM_FEATURES`] then `request_within_horizon`.
pub fn csv_header() -> String {
    let mut names: Vec<&str> = WARM_FEATURES.iter().map(|f| f.name).collect();
    names.push(WARM_OUTPUTS[0].name);
    names.join(",")
}

/// Records `scenario` for every seed, every `every`-th decision point, writing CSV lines
/// (without the header) to `out`. Rows do not depend on the policy (requests are the same
/// under all), so today's rule runs.
pub fn record(
    scenario: &WarmScenario,
    seeds: &[u64],
    every: u32,
    out: &mut dyn std::io::Write,
) -> std::io::Result<u64> {
    use std::fmt::Write as _;
    let outcomes = crate::parallel(seeds, |&seed| {
        run(scenario, seed, &WarmPolicy::Never, Some(every))
    });
    let mut rows = 0;
    let mut line = String::new();
    for outcome in outcomes.iter().flatten() {
        for (row, hit) in &outcome.rows {
            line.clear();
            for value in row {
                let _ = write!(line, "{value},");
            }
            let _ = writeln!(line, "{}", u8::from(*hit));
            out.write_all(line.as_bytes())?;
            rows += 1;
        }
    }
    Ok(rows)
}
