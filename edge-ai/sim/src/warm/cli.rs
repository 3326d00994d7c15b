//! `edge-sim warm record|eval`: see [`HELP`].

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::{Context as _, bail};

use super::scenario::WarmScenario;
use super::{WarmPolicy, check_model};

pub const HELP: &str = "\
edge-sim warm: pre-warming workloads that scale to zero, simulated

  edge-sim warm eval --scenario FILE... --seeds A..B
                     [--strategies never,keep-alive:SECS,model:THRESHOLD]
                     [--model FILE.onnx] [--json FILE|-]
      Runs every strategy on every scenario and seed (A included, B not) and prints, per
      scenario, cold starts per 1000 requests, the p99 and mean wait for a start, the memory
      held up (MiB-hours per day), pre-warms per day, and each strategy's cold starts and
      memory against the first's. Default strategies: never, keep-alive:600, and model:0.5
      with --model.

  edge-sim warm record --scenario FILE... --seeds A..B --out FILE.csv [--every N]
      Writes a training row per workload and decision point, every N-th (default 6; see
      the crate docs of edge_sim::warm for the format).
";

#[derive(Debug, Default)]
struct Args {
    command: Option<String>,
    scenarios: Vec<PathBuf>,
    seeds: Vec<u64>,
    strategies: Vec<String>,
    model: Option<PathBuf>,
    json: Option<String>,
    out: Option<PathBuf>,
    every: Option<u32>,
}

fn parse_args(args: impl IntoIterator<Item = std::ffi::OsString>) -> anyhow::Result<Args> {
    use lexopt::prelude::*;
    let mut parser = lexopt::Parser::from_args(args);
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
            Long("every") => args.every = Some(parser.value()?.parse()?),
            Long("help") | Short('h') => {
                print!("{HELP}");
                std::process::exit(0);
            }
            Value(value) if args.command.is_none() => args.command = Some(value.string()?),
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

/// A strategy by name: `never`, `keep-alive:SECS`, `model:THRESHOLD` (`model`: 0.5).
pub fn policy(name: &str, model: Option<&edge_ai::Model>) -> anyhow::Result<WarmPolicy> {
    let (kind, value) = name.split_once(':').unwrap_or((name, ""));
    Ok(match kind {
        "never" if value.is_empty() => WarmPolicy::Never,
        "keep-alive" => WarmPolicy::KeepAlive(
            value
                .parse()
                .ok()
                .filter(|s| (1..=86_400).contains(s))
                .with_context(|| format!("{name:?}: keep-alive:SECS, 1 to 86400"))?,
        ),
        "model" => {
            let threshold = if value.is_empty() {
                0.5
            } else {
                value
                    .parse::<f32>()
                    .ok()
                    .filter(|t| (0.0..=1.0).contains(t))
                    .with_context(|| format!("{name:?}: model:THRESHOLD, 0 to 1"))?
            };
            WarmPolicy::Model {
                model: model.context("strategy model: --model FILE.onnx")?.clone(),
                threshold,
            }
        }
        _ => bail!("unknown strategy {name:?}: expected never, keep-alive:SECS or model:THRESHOLD"),
    })
}

/// Runs `edge-sim warm ...` with the arguments after `warm`.
pub fn main(args: impl IntoIterator<Item = std::ffi::OsString>) -> anyhow::Result<()> {
    let args = parse_args(args)?;
    let model = args
        .model
        .as_deref()
        .map(|path| -> anyhow::Result<edge_ai::Model> {
            let model = edge_ai::Model::load(path)
                .with_context(|| format!("loading {}", path.display()))?;
            check_model(&model).with_context(|| format!("refusing {}", path.display()))?;
            Ok(model)
        })
        .transpose()?;
    if args.scenarios.is_empty() {
        bail!("--scenario FILE...: at least one\n\n{HELP}");
    }
    if args.seeds.is_empty() {
        bail!("--seeds A..B is required\n\n{HELP}");
    }
    let scenarios = args
        .scenarios
        .iter()
        .map(|path| WarmScenario::load(path))
        .collect::<Result<Vec<_>, _>>()?;
    match args.command.as_deref() {
        Some("eval") => {
            let names = if args.strategies.is_empty() {
                let mut names = vec!["never", "keep-alive:600"];
                if model.is_some() {
                    names.push("model:0.5");
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
                let figures = super::eval(scenario, &args.seeds, &policies)?;
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
        Some("record") => {
            let out = args.out.as_deref().context("--out FILE.csv is required")?;
            let every = args.every.unwrap_or(6);
            if every == 0 {
                bail!("--every: at least 1");
            }
            let file = std::fs::File::create(out)
                .with_context(|| format!("creating {}", out.display()))?;
            let mut file = std::io::BufWriter::new(file);
            writeln!(file, "{}", super::csv_header())?;
            let mut rows = 0;
            for scenario in &scenarios {
                rows += super::record(scenario, &args.seeds, every, &mut file)?;
            }
            file.flush()?;
            eprintln!("{rows} rows written to {}", out.display());
        }
        _ => bail!("expected `warm eval` or `warm record`\n\n{HELP}"),
    }
    Ok(())
}
