//! The placement simulation against its promises: scenarios are data checked by field, the
//! training and evaluation scenarios are apart, and a run is a function of its scenario,
//! seed and strategy.

use std::path::{Path, PathBuf};

use edge_sim::place::scenario::PlaceScenario;
use edge_sim::place::sim::{PlacePolicy, run};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn scenarios(dir: &str) -> Vec<PlaceScenario> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(repo().join(dir))
        .expect("the scenario directory")
        .map(|e| e.expect("an entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "{dir} has scenarios");
    paths
        .iter()
        .map(|p| PlaceScenario::load(p).unwrap_or_else(|e| panic!("{e}")))
        .collect()
}

const SMALL: &str = r#"
name = "small"
duration_secs = 3600
warmup_secs = 300

[workloads]
rate_per_min = 4
lifetime_secs = 600
artifacts = 4
artifact_mb = [5, 20]
cpu_millis = [250]
memory_mb = [64]
replicas = [1, 2]

[[node]]
name = "a"
count = 4
cpus = 4
memory_mb = 1024
lat = 52.5
lon = 13.4
fetch_mbps = 10
start_ms = 400
crash_per_hour = 0.5
refuse = 0.1
"#;

#[test]
fn every_shipped_scenario_loads_and_training_and_evaluation_are_apart() {
    let train = scenarios("edge-ai/train/place-scenarios");
    let eval = scenarios("benches/scenarios/place");
    for e in &eval {
        assert!(
            train
                .iter()
                .all(|t| t.name != e.name && t.groups != e.groups),
            "{} is used for training and evaluation",
            e.name
        );
    }
}

#[test]
fn a_bad_value_is_an_error_naming_its_field() {
    let bad = SMALL.replace("refuse = 0.1", "refuse = 2");
    let error = PlaceScenario::parse(&bad, "bad.toml").expect_err("refused");
    assert!(error.to_string().contains("node[0].refuse"), "{error}");
    let unknown = SMALL.replace("refuse = 0.1", "refuse = 0.1\nfetch_speed = 3");
    let error = PlaceScenario::parse(&unknown, "unknown.toml").expect_err("refused");
    assert!(error.to_string().contains("fetch_speed"), "{error}");
    let huge = SMALL.replace("count = 4", "count = 100000");
    let error = PlaceScenario::parse(&huge, "huge.toml").expect_err("refused");
    assert!(error.to_string().contains("node"), "{error}");
}

#[test]
fn a_run_is_the_same_for_the_same_seed_and_differs_for_another() {
    let s = PlaceScenario::parse(SMALL, "small.toml").expect("valid");
    let a = run(&s, 7, &PlacePolicy::LeastAllocated, true);
    let b = run(&s, 7, &PlacePolicy::LeastAllocated, true);
    let c = run(&s, 8, &PlacePolicy::LeastAllocated, true);
    assert!(!a.instances.is_empty());
    assert_eq!(a.instances, b.instances);
    assert_eq!(a.rows, b.rows);
    assert_ne!(a.instances, c.instances);
    // Refusals and restarts happen, and are rows of their own.
    assert!(a.rows.iter().any(|r| r.refused));
    assert!(a.rows.iter().any(|r| r.restarted));
}
