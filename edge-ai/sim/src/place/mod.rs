//! A deterministic simulation of the orchestrator's placement: where training data for
//! placement models comes from, and where the model is compared with the fixed rule.
//!
//! A [`PlaceScenario`](scenario::PlaceScenario) (a TOML file) describes a fleet in groups of
//! alike nodes (size, place, artifact fetch speed, start time, background load, crashes and
//! refused admissions) and the workloads that arrive (resources, replicas, artifact, `near`,
//! lifetime); [`sim::run`] places them with orchestrator-core's own `Scheduler` and one of
//! the [`PlacePolicy`](sim::PlacePolicy)s, and measures what an operator sees: how long an
//! instance takes from placing to running, how many crash soon after starting, how many
//! admissions are refused, how far instances run from their `near` point. [`eval`] compares
//! policies over seeds; [`record`] writes training rows.
//!
//! # The training CSV
//!
//! `edge-sim place record` writes one header line, then one line per placement attempt (a
//! refused admission is a line, and the next node another), comma-separated:
//!
//! ```text
//! free_cpu_after,free_memory_after,cpus,load_cpu,load_memory,load_known,near,proximity,cached,restarts,refusals,artifact_mb,fetch_mbps,start_ms,cache_rank,startup_ms,refused,restarted
//! 0.6,0.7,4,0.35,0.2,1,0,0,1,0,0,24.5,18.2,480,2,412.5,0,0
//! ```
//!
//! - the first 15 columns are the chosen node's features when it was chosen: exactly
//!   `placement_features`, named and ordered as `PLACE_FEATURES`, in their units;
//! - `startup_ms`: from bind to running on that node (0 for a refused admission);
//! - `refused`: `1` when the node refused the admission;
//! - `restarted`: `1` when the instance crashed within the scenario's `restart_window_secs`.
//!
//! A reader takes the header as the column order and refuses a file whose names differ.

pub mod onnx;
pub mod scenario;
pub mod sim;

use serde::Serialize;

use orchestrator_core::scheduler::learned::PLACE_FEATURES;

use crate::report::percentile;
use scenario::PlaceScenario;
use sim::{PlaceOutcome, PlacePolicy};

/// Every policy on `scenario` for every seed.
pub fn eval(scenario: &PlaceScenario, seeds: &[u64], policies: &[PlacePolicy]) -> PlaceFigures {
    let runs: Vec<(usize, u64)> = (0..policies.len())
        .flat_map(|p| seeds.iter().map(move |&s| (p, s)))
        .collect();
    let outcomes = crate::parallel(&runs, |&(p, seed)| {
        sim::run(scenario, seed, &policies[p], false)
    });
    let strategies = policies
        .iter()
        .enumerate()
        .map(|(p, policy)| {
            let mine: Vec<&PlaceOutcome> = runs
                .iter()
                .zip(&outcomes)
                .filter(|((q, _), _)| *q == p)
                .map(|(_, o)| o)
                .collect();
            StrategyFigures::from_outcomes(policy.name(), &mine)
        })
        .collect();
    PlaceFigures::new(scenario, seeds, strategies)
}

/// The exploration policy `place record` uses for `seed`: least-allocated with 30%, 60% or
/// all of the placements at random, changing with the seed, so that the rows show what the
/// nodes the fixed rule avoids would have done.
pub fn exploration(seed: u64) -> PlacePolicy {
    PlacePolicy::Explore {
        epsilon: [0.3, 0.6, 1.0][(seed % 3) as usize],
        model: None,
    }
}

/// The CSV header: `PLACE_FEATURES` then `startup_ms,refused,restarted`.
pub fn csv_header() -> String {
    let mut names: Vec<&str> = PLACE_FEATURES.iter().map(|f| f.name).collect();
    names.extend(["startup_ms", "refused", "restarted"]);
    names.join(",")
}

/// Records `scenario` under [`exploration`] for every seed (or `policy` when given), writing
/// CSV lines (without the header) to `out`.
pub fn record(
    scenario: &PlaceScenario,
    seeds: &[u64],
    policy: Option<&PlacePolicy>,
    out: &mut dyn std::io::Write,
) -> std::io::Result<u64> {
    use std::fmt::Write as _;
    let outcomes = crate::parallel(seeds, |&seed| {
        let policy = policy.cloned().unwrap_or_else(|| exploration(seed));
        sim::run(scenario, seed, &policy, true)
    });
    let mut rows = 0;
    let mut line = String::new();
    for outcome in &outcomes {
        for row in &outcome.rows {
            line.clear();
            for value in row.features {
                let _ = write!(line, "{value},");
            }
            let _ = writeln!(
                line,
                "{},{},{}",
                row.startup_ms as f32,
                u8::from(row.refused),
                u8::from(row.restarted)
            );
            out.write_all(line.as_bytes())?;
            rows += 1;
        }
    }
    Ok(rows)
}

/// One strategy on one scenario, over all its seeds.
#[derive(Debug, Clone, Serialize)]
pub struct StrategyFigures {
    pub strategy: String,
    /// Instances placed after the warmup.
    pub instances: u64,
    /// Instances that found no node.
    pub unplaced: u64,
    /// From placing to running, refusals on the way included.
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub mean_ms: f64,
    /// The share of instances that crashed soon after starting.
    pub restart_rate: f64,
    /// Refused admissions per instance.
    pub refusals_per_instance: f64,
    /// The share of instances whose artifact had to be fetched.
    pub fetched_share: f64,
    /// For workloads with `near`: the mean distance to its point.
    pub near_km_mean: Option<f64>,
    /// For the model: the share of placements its fallback scored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback_share: Option<f64>,
    /// Each seed's p99, in the order of the seeds.
    pub p99_by_seed_ms: Vec<f64>,
}

impl StrategyFigures {
    fn from_outcomes(strategy: &str, outcomes: &[&PlaceOutcome]) -> Self {
        let all: Vec<&sim::InstanceOutcome> =
            outcomes.iter().flat_map(|o| o.instances.iter()).collect();
        let mut times: Vec<f64> = all.iter().map(|i| i.time_to_running_ms).collect();
        times.sort_by(f64::total_cmp);
        let n = all.len().max(1) as f64;
        let near: Vec<f64> = all.iter().filter_map(|i| i.near_km).collect();
        let model: u64 = outcomes.iter().map(|o| o.model_placements).sum();
        let fallback: u64 = outcomes.iter().map(|o| o.fallback_placements).sum();
        Self {
            strategy: strategy.to_owned(),
            instances: all.len() as u64,
            unplaced: outcomes.iter().map(|o| o.unplaced).sum(),
            p50_ms: percentile(&times, 0.50),
            p99_ms: percentile(&times, 0.99),
            mean_ms: times.iter().sum::<f64>() / n,
            restart_rate: all.iter().filter(|i| i.restarted).count() as f64 / n,
            refusals_per_instance: all.iter().map(|i| f64::from(i.refusals)).sum::<f64>() / n,
            fetched_share: all.iter().filter(|i| i.fetched).count() as f64 / n,
            near_km_mean: (!near.is_empty()).then(|| near.iter().sum::<f64>() / near.len() as f64),
            fallback_share: (model + fallback > 0)
                .then(|| fallback as f64 / (model + fallback) as f64),
            p99_by_seed_ms: outcomes
                .iter()
                .map(|o| {
                    let mut t: Vec<f64> =
                        o.instances.iter().map(|i| i.time_to_running_ms).collect();
                    t.sort_by(f64::total_cmp);
                    percentile(&t, 0.99)
                })
                .collect(),
        }
    }
}

/// The model against least-allocated on one scenario: each figure's ratio, model over
/// least-allocated (below 1 is better for all of them).
#[derive(Debug, Clone, Serialize)]
pub struct Versus {
    pub p50_ratio: f64,
    pub p99_ratio: f64,
    pub mean_ratio: f64,
    pub restart_ratio: f64,
    pub refusal_ratio: f64,
    pub near_km_ratio: Option<f64>,
    /// Seeds where the model's p99 was lower.
    pub p99_wins: usize,
}

/// One scenario's figures.
#[derive(Debug, Clone, Serialize)]
pub struct PlaceFigures {
    pub scenario: String,
    pub nodes: u32,
    pub seeds: Vec<u64>,
    pub strategies: Vec<StrategyFigures>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_vs_least_allocated: Option<Versus>,
}

fn ratio(a: f64, b: f64) -> f64 {
    if b == 0.0 {
        if a == 0.0 { 1.0 } else { f64::INFINITY }
    } else {
        a / b
    }
}

impl PlaceFigures {
    fn new(scenario: &PlaceScenario, seeds: &[u64], strategies: Vec<StrategyFigures>) -> Self {
        let find = |name: &str| strategies.iter().find(|s| s.strategy == name);
        let versus = match (find("model"), find("least-allocated")) {
            (Some(m), Some(l)) => Some(Versus {
                p50_ratio: ratio(m.p50_ms, l.p50_ms),
                p99_ratio: ratio(m.p99_ms, l.p99_ms),
                mean_ratio: ratio(m.mean_ms, l.mean_ms),
                restart_ratio: ratio(m.restart_rate, l.restart_rate),
                refusal_ratio: ratio(m.refusals_per_instance, l.refusals_per_instance),
                near_km_ratio: match (m.near_km_mean, l.near_km_mean) {
                    (Some(a), Some(b)) => Some(ratio(a, b)),
                    _ => None,
                },
                p99_wins: m
                    .p99_by_seed_ms
                    .iter()
                    .zip(&l.p99_by_seed_ms)
                    .filter(|(a, b)| a < b)
                    .count(),
            }),
            _ => None,
        };
        Self {
            scenario: scenario.name.clone(),
            nodes: scenario.nodes(),
            seeds: seeds.to_vec(),
            strategies,
            model_vs_least_allocated: versus,
        }
    }

    /// The table a person reads.
    pub fn table(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let seeds = match (self.seeds.first(), self.seeds.last()) {
            (Some(a), Some(b)) => format!("{a}..={b}"),
            _ => String::new(),
        };
        let _ = writeln!(
            s,
            "scenario {} ({} nodes, seeds {seeds})",
            self.scenario, self.nodes
        );
        let _ = writeln!(
            s,
            "  {:<16} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>9} {:>9}",
            "strategy",
            "p50 s",
            "p99 s",
            "mean s",
            "restarts",
            "refused",
            "fetched",
            "near km",
            "unplaced"
        );
        for f in &self.strategies {
            let _ = write!(
                s,
                "  {:<16} {:>9.2} {:>9.2} {:>9.2} {:>8.2}% {:>9.3} {:>7.1}% {:>9} {:>9}",
                f.strategy,
                f.p50_ms / 1000.0,
                f.p99_ms / 1000.0,
                f.mean_ms / 1000.0,
                f.restart_rate * 100.0,
                f.refusals_per_instance,
                f.fetched_share * 100.0,
                f.near_km_mean.map_or("-".to_owned(), |k| format!("{k:.1}")),
                f.unplaced,
            );
            if let Some(share) = f.fallback_share {
                let _ = write!(s, "  fallback {:.0}%", share * 100.0);
            }
            s.push('\n');
        }
        if let Some(v) = &self.model_vs_least_allocated {
            let _ = writeln!(
                s,
                "  model / least-allocated: p50 {:.3}, p99 {:.3} (lower in {} of {} seeds), mean {:.3}, restarts {:.3}, refusals {:.3}{}",
                v.p50_ratio,
                v.p99_ratio,
                v.p99_wins,
                self.seeds.len(),
                v.mean_ratio,
                v.restart_ratio,
                v.refusal_ratio,
                v.near_km_ratio
                    .map_or(String::new(), |r| format!(", near km {r:.3}")),
            );
        }
        s
    }
}
