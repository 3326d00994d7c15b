//! `edge-sim`: see the crate docs, and `edge-sim --help`.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use edge_sim::place::scenario::PlaceScenario;
use edge_sim::place::sim::PlacePolicy;
use edge_sim::scenario::Scenario;
use edge_sim::sim::Policy;
use orchestrator_core::scheduler::learned::Weights;

const HELP: &str = "\
edge-sim: the proxy's choice of backend and the orchestrator's placement, simulated

  edge-sim route eval --scenario FILE... --seeds A..B
                      [--strategies round-robin,least-requests,peak-ewma,model]
                      [--model FILE.onnx] [--json FILE|-]
      Runs every strategy on every scenario and seed (A included, B not) and prints, per
      scenario, p50, p99 and p99.9 latency, the error rate, each backend's share of the
      attempts, and the model's p99 against peak-ewma's. --json also writes the figures.

  edge-sim route record --scenario FILE... --seeds A..B --out FILE.csv
                        [--base STRATEGY [--epsilon X] [--model FILE.onnx]]
      Writes a training row per attempt (see the crate docs for the format), choosing with
      the exploration policy (a fixed strategy that changes with the seed, and a share of
      random choices), or with STRATEGY and a share X (default 0.2) of random choices.

  edge-sim place eval --scenario FILE... --seeds A..B
                      [--strategies least-allocated,random,model]
                      [--model FILE.onnx [--tie-ratio R] [--failure-step F]] [--json FILE|-]
      Places every scenario's workloads with every strategy and seed and prints, per
      scenario, the time from placing to running (p50, p99, mean), the share of instances
      restarted soon after starting, refused admissions per instance, the share that
      fetched their artifact, the distance to `near`, and the model's figures over
      least-allocated's. --json also writes the figures. --tie-ratio and --failure-step
      set the model's weights against the fixed rule (orchestrator-core's
      scheduler::learned::Weights; defaults 3 and 0.1).

  edge-sim place record --scenario FILE... --seeds A..B --out FILE.csv
                        [--epsilon X] [--model FILE.onnx]
      Writes a training row per placement attempt (see edge-ai/sim/src/place/mod.rs),
      placing with least-allocated and a share of random placements that changes with the
      seed, or the share X (default 0.3) when given; with --model, the model places
      instead of least-allocated, so that the rows show where its own placements lead.

  edge-sim warm eval|record ...
      Pre-warming workloads that scale to zero: see `edge-sim warm --help`.
";

#[derive(Debug, Default)]
struct Args {
    command: Vec<String>,
    scenarios: Vec<PathBuf>,
    seeds: Vec<u64>,
    strategies: Vec<String>,
    model: Option<PathBuf>,
    json: Option<String>,
    out: Option<PathBuf>,
    base: Option<String>,
    epsilon: Option<f64>,
    tie_ratio: Option<f64>,
    failure_step: Option<f64>,
}

fn parse_args() -> anyhow::Result<Args> {
    use lexopt::prelude::*;
    let mut parser = lexopt::Parser::from_env();
    let mut args = Args::default();
    while let Some(arg) = parser.next()? {
        match arg {
            Long("scenario") => {
                for value in parser.values()? {
                    args.scenarios.push(PathBuf::from(value));
                }
            }
            Long("seeds") => args.seeds = seeds(&parser.value()?.string()?)?,
            Long("strategies") => {
                args.strategies = parser
                    .value()?
                    .string()?
                    .split(',')
                    .map(str::to_owned)
                    .collect();
            }
            Long("model") => args.model = Some(parser.value()?.into()),
            Long("json") => args.json = Some(parser.value()?.string()?),
            Long("out") => args.out = Some(parser.value()?.into()),
            Long("base") => args.base = Some(parser.value()?.string()?),
            Long("epsilon") => args.epsilon = Some(parser.value()?.parse()?),
            Long("tie-ratio") => args.tie_ratio = Some(parser.value()?.parse()?),
            Long("failure-step") => args.failure_step = Some(parser.value()?.parse()?),
            Long("help") | Short('h') => {
                print!("{HELP}");
                std::process::exit(0);
            }
            Value(value) => args.command.push(value.string()?),
            _ => return Err(arg.unexpected().into()),
        }
    }
    Ok(args)
}

/// `A..B` (A included, B not) or a single seed.
fn seeds(text: &str) -> anyhow::Result<Vec<u64>> {
    let seeds: Vec<u64> = match text.split_once("..") {
        Some((a, b)) => {
            let a: u64 = a.parse().context("--seeds: A in A..B")?;
            let b: u64 = b.parse().context("--seeds: B in A..B")?;
            (a..b).collect()
        }
        None => vec![text.parse().context("--seeds: a number or A..B")?],
    };
    if seeds.is_empty() || seeds.len() > 10_000 {
        bail!("--seeds: 1 to 10000 seeds");
    }
    Ok(seeds)
}

fn policy(name: &str, model: Option<&edge_ai::Model>) -> anyhow::Result<Policy> {
    Ok(match name {
        "round-robin" => Policy::RoundRobin,
        "least-requests" => Policy::LeastRequests,
        "peak-ewma" => Policy::PeakEwma,
        "model" => Policy::Model(model.context("strategy model: --model FILE.onnx")?.clone()),
        other => bail!(
            "unknown strategy {other:?}: expected round-robin, least-requests, peak-ewma or model"
        ),
    })
}

fn main() -> anyhow::Result<()> {
    // `edge-sim warm ...`: pre-warming, with its own arguments (edge_sim::warm::cli).
    if std::env::args_os().nth(1).is_some_and(|a| a == "warm") {
        return edge_sim::warm::cli::main(std::env::args_os().skip(2));
    }
    let args = parse_args()?;
    let command: Vec<&str> = args.command.iter().map(String::as_str).collect();
    let model = args
        .model
        .as_deref()
        .map(|path| {
            edge_ai::Model::load(path).with_context(|| format!("loading {}", path.display()))
        })
        .transpose()?;
    if args.scenarios.is_empty() {
        bail!("--scenario FILE...: at least one\n\n{HELP}");
    }
    if args.seeds.is_empty() {
        bail!("--seeds A..B is required\n\n{HELP}");
    }
    if command.first() == Some(&"place") {
        return place(&command, &args, model);
    }
    let scenarios = args
        .scenarios
        .iter()
        .map(|path| Scenario::load(path))
        .collect::<Result<Vec<_>, _>>()?;
    match command.as_slice() {
        ["route", "eval"] => {
            let names = if args.strategies.is_empty() {
                let mut names = vec!["round-robin", "least-requests", "peak-ewma"];
                if model.is_some() {
                    names.push("model");
                }
                names.into_iter().map(str::to_owned).collect()
            } else {
                args.strategies.clone()
            };
            let policies = names
                .iter()
                .map(|name| policy(name, model.as_ref()))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let mut all = Vec::new();
            for scenario in &scenarios {
                let figures = edge_sim::eval(scenario, &args.seeds, &policies);
                if args.json.as_deref() != Some("-") {
                    println!("{}", figures.table());
                }
                all.push(figures);
            }
            if let Some(json) = &args.json {
                let text = serde_json::to_string_pretty(&all)?;
                if json == "-" {
                    println!("{text}");
                } else {
                    std::fs::write(json, text + "\n").with_context(|| format!("writing {json}"))?;
                }
            }
        }
        ["route", "record"] => {
            let out = args.out.as_deref().context("--out FILE.csv is required")?;
            let fixed = args
                .base
                .as_deref()
                .map(|base| -> anyhow::Result<Policy> {
                    Ok(Policy::Explore {
                        base: Box::new(policy(base, model.as_ref())?),
                        epsilon: args.epsilon.unwrap_or(0.2).clamp(0.0, 1.0),
                    })
                })
                .transpose()?;
            let file = std::fs::File::create(out)
                .with_context(|| format!("creating {}", out.display()))?;
            let mut file = std::io::BufWriter::new(file);
            writeln!(file, "{}", edge_sim::csv_header())?;
            let mut rows = 0;
            for scenario in &scenarios {
                rows += edge_sim::record(scenario, &args.seeds, fixed.as_ref(), &mut file)?;
            }
            file.flush()?;
            eprintln!("{rows} rows written to {}", out.display());
        }
        _ => {
            bail!("expected `route eval`, `route record`, `place eval` or `place record`\n\n{HELP}")
        }
    }
    Ok(())
}

fn place_policy(
    name: &str,
    model: Option<&edge_ai::Model>,
    weights: Weights,
) -> anyhow::Result<PlacePolicy> {
    Ok(match name {
        "least-allocated" => PlacePolicy::LeastAllocated,
        "random" => PlacePolicy::Random,
        "model" => {
            let model = model.context("strategy model: --model FILE.onnx")?;
            edge_sim::place::onnx::check(model)
                .map_err(|why| anyhow::anyhow!("the model is not a placement model: {why}"))?;
            PlacePolicy::Model(model.clone(), weights)
        }
        other => bail!("unknown strategy {other:?}: expected least-allocated, random or model"),
    })
}

/// `place eval` and `place record`.
fn place(command: &[&str], args: &Args, model: Option<edge_ai::Model>) -> anyhow::Result<()> {
    let scenarios = args
        .scenarios
        .iter()
        .map(|path| PlaceScenario::load(path))
        .collect::<Result<Vec<_>, _>>()?;
    let defaults = Weights::default();
    let weights = Weights {
        tie_ratio: args.tie_ratio.unwrap_or(defaults.tie_ratio),
        failure_step: args.failure_step.unwrap_or(defaults.failure_step),
    };
    if !(weights.tie_ratio > 1.0 && weights.failure_step > 0.0) {
        bail!("--tie-ratio must be over 1 and --failure-step over 0");
    }
    match command {
        ["place", "eval"] => {
            let names = if args.strategies.is_empty() {
                let mut names = vec!["least-allocated", "random"];
                if model.is_some() {
                    names.push("model");
                }
                names.into_iter().map(str::to_owned).collect()
            } else {
                args.strategies.clone()
            };
            let policies = names
                .iter()
                .map(|name| place_policy(name, model.as_ref(), weights))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let mut all = Vec::new();
            for scenario in &scenarios {
                let figures = edge_sim::place::eval(scenario, &args.seeds, &policies);
                if args.json.as_deref() != Some("-") {
                    println!("{}", figures.table());
                }
                all.push(figures);
            }
            if let Some(json) = &args.json {
                let text = serde_json::to_string_pretty(&all)?;
                if json == "-" {
                    println!("{text}");
                } else {
                    std::fs::write(json, text + "\n").with_context(|| format!("writing {json}"))?;
                }
            }
        }
        ["place", "record"] => {
            let out = args.out.as_deref().context("--out FILE.csv is required")?;
            let fixed = (args.epsilon.is_some() || model.is_some()).then(|| PlacePolicy::Explore {
                epsilon: args.epsilon.unwrap_or(0.3).clamp(0.0, 1.0),
                model: model.map(|model| (model, weights)),
            });
            let file = std::fs::File::create(out)
                .with_context(|| format!("creating {}", out.display()))?;
            let mut file = std::io::BufWriter::new(file);
            writeln!(file, "{}", edge_sim::place::csv_header())?;
            let mut rows = 0;
            for scenario in &scenarios {
                rows += edge_sim::place::record(scenario, &args.seeds, fixed.as_ref(), &mut file)?;
            }
            file.flush()?;
            eprintln!("{rows} rows written to {}", out.display());
        }
        _ => bail!("expected `place eval` or `place record`\n\n{HELP}"),
    }
    Ok(())
}
