//! The figures of an evaluation: per scenario and strategy, the latency percentiles and the
//! error rate over every counted request of every seed, and the model's p99 against
//! peak-EWMA P2C's.

use serde::Serialize;

use crate::sim::Outcome;

/// One strategy on one scenario, over all its seeds.
#[derive(Debug, Clone, Serialize)]
pub struct StrategyFigures {
    pub strategy: String,
    pub requests: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub error_rate: f64,
    /// The share of attempts each backend received, in the scenario's order.
    pub backend_shares: Vec<f64>,
    pub retries: u64,
    /// For the model: the share of choices its fallback made (drift, failures to run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback_share: Option<f64>,
    /// For a predicting chooser: the mean `|ln((observed + 1) / (predicted + 1))|`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prediction_error: Option<f64>,
    /// Each seed's p99, in the order of the seeds.
    pub p99_by_seed_ms: Vec<f64>,
}

/// One scenario's figures.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioFigures {
    pub scenario: String,
    pub backends: Vec<String>,
    pub seeds: Vec<u64>,
    pub strategies: Vec<StrategyFigures>,
    /// The model's p99 over peak-EWMA's, when both ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_p99_ratio: Option<f64>,
    /// In how many seeds the model's p99 was below peak-EWMA's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_wins: Option<usize>,
}

impl StrategyFigures {
    /// Pools `outcomes` (one per seed).
    pub fn from_outcomes(strategy: &str, outcomes: &[Outcome]) -> Self {
        let mut latencies: Vec<f64> = outcomes
            .iter()
            .flat_map(|o| o.requests.iter().map(|&(ms, _)| ms))
            .collect();
        latencies.sort_by(f64::total_cmp);
        let errors = outcomes
            .iter()
            .flat_map(|o| o.requests.iter())
            .filter(|(_, failed)| *failed)
            .count();
        let backends = outcomes.first().map_or(0, |o| o.attempts.len());
        let mut attempts = vec![0u64; backends];
        for o in outcomes {
            for (total, n) in attempts.iter_mut().zip(&o.attempts) {
                *total += n;
            }
        }
        let all: u64 = attempts.iter().sum::<u64>().max(1);
        let model: u64 = outcomes.iter().map(|o| o.model_choices).sum();
        let fallback: u64 = outcomes.iter().map(|o| o.fallback_choices).sum();
        let predicted: u64 = outcomes.iter().map(|o| o.predicted).sum();
        let error_sum: f64 = outcomes
            .iter()
            .map(|o| o.prediction_error * o.predicted as f64)
            .sum();
        Self {
            strategy: strategy.to_owned(),
            requests: latencies.len() as u64,
            p50_ms: percentile(&latencies, 0.50),
            p99_ms: percentile(&latencies, 0.99),
            p999_ms: percentile(&latencies, 0.999),
            error_rate: errors as f64 / latencies.len().max(1) as f64,
            backend_shares: attempts.iter().map(|&n| n as f64 / all as f64).collect(),
            retries: outcomes.iter().map(|o| o.retries).sum(),
            fallback_share: (model + fallback > 0)
                .then(|| fallback as f64 / (model + fallback) as f64),
            prediction_error: (predicted > 0).then(|| error_sum / predicted as f64),
            p99_by_seed_ms: outcomes
                .iter()
                .map(|o| {
                    let mut l: Vec<f64> = o.requests.iter().map(|&(ms, _)| ms).collect();
                    l.sort_by(f64::total_cmp);
                    percentile(&l, 0.99)
                })
                .collect(),
        }
    }
}

impl ScenarioFigures {
    pub fn new(
        scenario: String,
        backends: Vec<String>,
        seeds: Vec<u64>,
        strategies: Vec<StrategyFigures>,
    ) -> Self {
        let find = |name: &str| strategies.iter().find(|s| s.strategy == name);
        let (model_p99_ratio, model_wins) = match (find("model"), find("peak-ewma")) {
            (Some(model), Some(p2c)) => (
                Some(model.p99_ms / p2c.p99_ms),
                Some(
                    model
                        .p99_by_seed_ms
                        .iter()
                        .zip(&p2c.p99_by_seed_ms)
                        .filter(|(m, p)| m < p)
                        .count(),
                ),
            ),
            _ => (None, None),
        };
        Self {
            scenario,
            backends,
            seeds,
            strategies,
            model_p99_ratio,
            model_wins,
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
            "scenario {} (seeds {seeds}; backends {})",
            self.scenario,
            self.backends.join(" ")
        );
        let _ = writeln!(
            s,
            "  {:<15} {:>9} {:>9} {:>9} {:>8} {:>8}  attempts per backend (%)",
            "strategy", "p50 ms", "p99 ms", "p99.9 ms", "errors", "requests"
        );
        for f in &self.strategies {
            let shares: Vec<String> = f
                .backend_shares
                .iter()
                .map(|x| format!("{:.0}", x * 100.0))
                .collect();
            let _ = write!(
                s,
                "  {:<15} {:>9.2} {:>9.2} {:>9.2} {:>7.2}% {:>8}  {}",
                f.strategy,
                f.p50_ms,
                f.p99_ms,
                f.p999_ms,
                f.error_rate * 100.0,
                f.requests,
                shares.join("/")
            );
            if let Some(error) = f.prediction_error {
                let _ = write!(s, "  pred err x{:.2}", error.exp());
            }
            if let Some(share) = f.fallback_share {
                let _ = write!(s, "  fallback {:.0}%", share * 100.0);
            }
            s.push('\n');
        }
        if let (Some(ratio), Some(wins)) = (self.model_p99_ratio, self.model_wins) {
            let _ = writeln!(
                s,
                "  model p99 / peak-ewma p99 = {ratio:.3} ({:+.1}%), lower in {wins} of {} seeds",
                (ratio - 1.0) * 100.0,
                self.seeds.len()
            );
        }
        s
    }
}

/// The `q` quantile of sorted `values` (nearest rank); 0 when empty.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}
