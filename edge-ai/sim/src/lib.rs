//! A deterministic simulation of the proxy's choice of backend: where training data for
//! routing models comes from, and where strategies are compared.
//!
//! A [`Scenario`](scenario::Scenario) (a TOML file) describes a route's backends and the
//! traffic sent to them; [`sim::run`] plays it on a virtual clock with node-core's own
//! [`Load`](node_core::proxy::balance::Load), [`Breaker`](node_core::proxy::breaker::Breaker)
//! and choosers, exactly as the proxy drives them; [`eval`] compares strategies over seeds
//! ([`report`]); [`record`] writes training rows. [`warm`] does the same for pre-warming
//! workloads that scale to zero (`edge-sim warm record|eval`).
//!
//! # Invariants
//!
//! - **Deterministic.** One scenario, seed and strategy give the same figures on every run
//!   and machine: nothing reads the clock (but for one base `Instant` that only offsets are
//!   added to) or sleeps, and every random number comes from the seed.
//! - **Common random numbers.** For one scenario and seed, every strategy meets the same
//!   arrivals and the same backend behaviour (see [`sim`]).
//! - **The proxy's code, not a copy.** The load, breaker, retry budget and choosers are
//!   node-core's; only the world around them (network, queues, service times) is simulated.
//! - **A scenario file is untrusted.** A malformed, oversized or hostile one is an error
//!   naming the field, never a panic ([`scenario`]).
//!
//! # The training CSV
//!
//! `edge-sim route record` writes it, and so does `edgectl telemetry export` from a fleet's
//! sampled attempts (orchestrator-core's `RouteRows`):
//! one header line, then one line per attempt (not per request: a retry is a line of its
//! own), comma-separated, no quoting:
//!
//! ```text
//! peak_ewma_ms,mean_ms,tail_ms,floor_ms,in_flight,failure_rate,half_open,unmeasured,idle_ms,distance_km,local,host_cpu,host_memory,latency_ms,failed
//! 12.5,10.1,31.2,4.3,2,0,0,0,3.1,120,0,0.4,0.3,14.2,0
//! ```
//!
//! - the first 13 columns are the chosen backend's features at the moment it was chosen,
//!   before the attempt counts in its `in_flight`: exactly
//!   [`route_features`](node_core::proxy::learned::route_features), named and ordered as
//!   [`ROUTE_FEATURES`](node_core::proxy::learned::ROUTE_FEATURES), in their units;
//! - `latency_ms`: the attempt's own time, from sending it to its answer's head or its
//!   failure (a timeout counts its full time), in milliseconds;
//! - `failed`: `1` when the attempt failed (refused, reset, timed out, a 502-504), else `0`.
//!
//! Numbers are decimal (`f32` features as Rust prints them, the shortest form that reads
//! back the same). A reader must take the header as the column order and refuse a file
//! whose names differ from `ROUTE_FEATURES`.

pub mod place;
pub mod report;
pub mod scenario;
pub mod sim;
pub mod warm;

use node_core::proxy::learned::ROUTE_FEATURES;

use report::{ScenarioFigures, StrategyFigures};
use scenario::Scenario;
use sim::{Outcome, Policy};

/// How many runs go at once: the simulation is single-threaded, the machines are small.
pub const THREADS: usize = 2;

/// Runs `f` over `items`, [`THREADS`] at a time, keeping the order of `items`.
fn parallel<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let mut out: Vec<Option<R>> = Vec::new();
    out.resize_with(items.len(), || None);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = std::sync::Mutex::new(&mut out);
    std::thread::scope(|scope| {
        for _ in 0..THREADS {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(item) = items.get(i) else { break };
                    let result = f(item);
                    let mut results = results
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    if let Some(slot) = results.get_mut(i) {
                        *slot = Some(result);
                    }
                }
            });
        }
    });
    out.into_iter().flatten().collect()
}

/// Every policy on `scenario` for every seed.
pub fn eval(scenario: &Scenario, seeds: &[u64], policies: &[Policy]) -> ScenarioFigures {
    let runs: Vec<(usize, u64)> = (0..policies.len())
        .flat_map(|p| seeds.iter().map(move |&s| (p, s)))
        .collect();
    let outcomes = parallel(&runs, |&(p, seed)| {
        sim::run(scenario, seed, &policies[p], false)
    });
    let strategies = policies
        .iter()
        .enumerate()
        .map(|(p, policy)| {
            let mine: Vec<Outcome> = runs
                .iter()
                .zip(&outcomes)
                .filter(|((q, _), _)| *q == p)
                .map(|(_, o)| o.clone())
                .collect();
            StrategyFigures::from_outcomes(policy.name(), &mine)
        })
        .collect();
    ScenarioFigures::new(
        scenario.name.clone(),
        scenario.backends.iter().map(|b| b.name.clone()).collect(),
        seeds.to_vec(),
        strategies,
    )
}

/// The exploration policy `route record` uses for `seed`: a fixed strategy that changes
/// with the seed, with a share of uniformly random choices that also changes, so that the
/// rows cover busy and idle, fast and slow backends, and what unchosen backends would have
/// done.
pub fn exploration(seed: u64) -> Policy {
    let base = match seed % 3 {
        0 => Policy::RoundRobin,
        1 => Policy::LeastRequests,
        _ => Policy::PeakEwma,
    };
    let epsilon = [0.2, 0.5, 1.0][((seed / 3) % 3) as usize];
    Policy::Explore {
        base: Box::new(base),
        epsilon,
    }
}

/// The CSV header: [`ROUTE_FEATURES`] then `latency_ms,failed`.
pub fn csv_header() -> String {
    let mut names: Vec<&str> = ROUTE_FEATURES.iter().map(|f| f.name).collect();
    names.extend(["latency_ms", "failed"]);
    names.join(",")
}

/// Records `scenario` under [`exploration`] for every seed (or under `policy` when given),
/// writing CSV lines (without the header) to `out`.
pub fn record(
    scenario: &Scenario,
    seeds: &[u64],
    policy: Option<&Policy>,
    out: &mut dyn std::io::Write,
) -> std::io::Result<u64> {
    use std::fmt::Write as _;
    let outcomes = parallel(seeds, |&seed| {
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
            let _ = writeln!(line, "{},{}", row.latency_ms as f32, u8::from(row.failed));
            out.write_all(line.as_bytes())?;
            rows += 1;
        }
    }
    Ok(rows)
}
