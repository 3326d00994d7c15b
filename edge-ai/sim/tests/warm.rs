//! The pre-warming simulation: scenario files as untrusted input, what each strategy costs
//! and saves, and runs that repeat exactly.

use std::path::{Path, PathBuf};

use edge_sim::warm::scenario::WarmScenario;
use edge_sim::warm::{WarmPolicy, arrivals, eval, run};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// One workload called every `period` seconds (no jitter), for a day after a day's warm-up.
fn periodic(period: u32, idle: u32) -> WarmScenario {
    let text = format!(
        r#"
name = "periodic"
duration_days = 2
warmup_days = 1
[[workload]]
name = "job"
cold_start_secs = 5
memory_mib = 100
idle_secs = {idle}
[[workload.traffic]]
kind = "periodic"
period_secs = {period}
offset_secs = 3
"#
    );
    WarmScenario::parse(&text, "periodic.toml").expect("a valid scenario")
}

#[test]
fn hostile_or_malformed_scenarios_are_errors_naming_the_field() {
    let valid = r#"
name = "x"
duration_days = 2
warmup_days = 1
[[workload]]
name = "a"
cold_start_secs = 5
memory_mib = 64
idle_secs = 60
[[workload.traffic]]
kind = "poisson"
rate_per_hour = 4
"#;
    assert!(WarmScenario::parse(valid, "ok.toml").is_ok());
    let cases: &[(&str, &str, &str)] = &[
        (
            "duration_days = 2",
            "duration_days = 1e308",
            "duration_days",
        ),
        ("duration_days = 2", "duration_days = nan", "duration_days"),
        ("warmup_days = 1", "warmup_days = 3", "warmup_days"),
        (
            "cold_start_secs = 5",
            "cold_start_secs = -1",
            "workload[0].cold_start_secs",
        ),
        (
            "memory_mib = 64",
            "memory_mib = inf",
            "workload[0].memory_mib",
        ),
        ("idle_secs = 60", "idle_secs = 0", "workload[0].idle_secs"),
        ("idle_secs = 60", "idle_secs = -5", "idle_secs"),
        (
            "rate_per_hour = 4",
            "rate_per_hour = 1e12",
            "workload[0].traffic[0].rate_per_hour",
        ),
        // Within each bound, but too many requests for one run.
        ("rate_per_hour = 4", "rate_per_hour = 300000", "workload"),
        (
            "rate_per_hour = 4",
            "rate_per_hour = 4\nfollow = { requests = 5000, within_secs = 1 }",
            "workload[0].traffic[0].follow.requests",
        ),
        (
            "kind = \"poisson\"\nrate_per_hour = 4",
            "kind = \"periodic\"\nperiod_secs = 0",
            "workload[0].traffic[0].period_secs",
        ),
        (
            "kind = \"poisson\"\nrate_per_hour = 4",
            "kind = \"periodic\"\nperiod_secs = 60\njitter_secs = 600",
            "workload[0].traffic[0].jitter_secs",
        ),
        ("kind = \"poisson\"", "kind = \"fractal\"", "fractal"),
        ("rate_per_hour = 4", "rate_per_hour = 4\nspeed = 3", "speed"),
        (
            "idle_secs = 60",
            "idle_secs = 60\nsilent = [{ from_secs = 10, until_secs = 5 }]",
            "workload[0].silent[0].until_secs",
        ),
        ("name = \"x\"", "name = \"\"", "name"),
        (
            "duration_days = 2",
            "duration_days = \"two\"",
            "duration_days",
        ),
    ];
    for (from, to, field) in cases {
        let text = valid.replacen(from, to, 1);
        let error = WarmScenario::parse(&text, "bad.toml")
            .expect_err(&format!("{to:?} must be refused"))
            .to_string();
        assert!(
            error.contains(field),
            "{to:?}: {error:?} names no {field:?}"
        );
        assert!(error.starts_with("bad.toml"), "{error:?} names no file");
    }
    // Two workloads of one name.
    let twice = format!(
        "{valid}{}",
        &valid[valid.find("[[workload]]").expect("a workload")..]
    );
    let error = WarmScenario::parse(&twice, "twice.toml").expect_err("refused");
    assert!(error.to_string().contains("workload[1].name"), "{error}");
    // Not TOML at all, and not UTF-8.
    assert!(WarmScenario::parse("[[[", "junk.toml").is_err());
    let dir = std::env::temp_dir().join(format!("warm-scenario-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temp dir");
    let binary = dir.join("binary.toml");
    std::fs::write(&binary, [0xff, 0xfe, 0x00]).expect("written");
    assert!(
        WarmScenario::load(&binary)
            .expect_err("refused")
            .to_string()
            .contains("not UTF-8")
    );
    // Oversized: refused before it is parsed.
    let big = dir.join("big.toml");
    std::fs::write(&big, "#".repeat(300 * 1024)).expect("written");
    let error = WarmScenario::load(&big).expect_err("refused").to_string();
    assert!(error.contains("byte limit"), "{error}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_shipped_scenarios_load() {
    for dir in ["edge-ai/train/scenarios/warm", "benches/scenarios/warm"] {
        let mut n = 0;
        for entry in std::fs::read_dir(repo().join(dir)).expect("the directory") {
            let path = entry.expect("an entry").path();
            WarmScenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
            n += 1;
        }
        assert!(n >= 5, "{dir}: {n} scenarios");
    }
}

#[test]
fn training_and_evaluation_scenarios_differ() {
    let load = |dir: &str| -> Vec<WarmScenario> {
        std::fs::read_dir(repo().join(dir))
            .expect("the directory")
            .map(|e| WarmScenario::load(&e.expect("an entry").path()).expect("loads"))
            .collect()
    };
    let train = load("edge-ai/train/scenarios/warm");
    for eval in load("benches/scenarios/warm") {
        for t in &train {
            assert_ne!(eval.name, t.name);
            for w in &eval.workloads {
                assert!(
                    t.workloads.iter().all(|u| u.traffic != w.traffic),
                    "{}/{} is trained on in {}",
                    eval.name,
                    w.name,
                    t.name
                );
            }
        }
    }
}

#[test]
fn today_s_rule_makes_a_call_after_a_long_gap_wait_for_the_cold_start() {
    // Called every 10 minutes, asleep after a minute: every call starts it.
    let figures = eval(&periodic(600, 60), &[1, 2], &[WarmPolicy::Never]).expect("runs");
    let never = &figures.strategies[0];
    assert_eq!(never.requests, 2 * 144);
    assert_eq!(never.cold_per_1000, 1000.0);
    assert_eq!(never.p99_wait_s, 5.0);
    assert_eq!(never.prewarms_per_day, 0.0);
    // Up from each call for the cold start, then a minute (to the next 10 s tick): 144 times
    // 70 s of 100 MiB.
    let expected = 144.0 * 70.0 * 100.0 / 3600.0;
    assert!(
        (never.mib_hours_per_day - expected).abs() < expected * 0.05,
        "{} MiB-h/day, expected about {expected}",
        never.mib_hours_per_day
    );
}

#[test]
fn a_longer_keep_alive_trades_memory_for_cold_starts() {
    let figures = eval(
        &periodic(600, 60),
        &[1],
        &[WarmPolicy::Never, WarmPolicy::KeepAlive(900)],
    )
    .expect("runs");
    let (never, keep) = (&figures.strategies[0], &figures.strategies[1]);
    assert_eq!(never.requests, keep.requests);
    assert_eq!(keep.cold_per_1000, 0.0);
    assert_eq!(keep.p99_wait_s, 0.0);
    // Up all day: 24 h of 100 MiB.
    assert!((keep.mib_hours_per_day - 2400.0).abs() < 1.0, "{keep:?}");
    assert!(keep.mib_hours_per_day > 5.0 * never.mib_hours_per_day);
    let table = figures.table();
    assert!(table.contains("keep-alive:900"), "{table}");
}

#[test]
fn runs_repeat_exactly_and_every_strategy_meets_the_same_requests() {
    let scenario =
        WarmScenario::load(&repo().join("benches/scenarios/warm/shop.toml")).expect("loads");
    for workload in 0..scenario.workloads.len() {
        assert_eq!(
            arrivals(&scenario, 7, workload),
            arrivals(&scenario, 7, workload)
        );
        assert_ne!(
            arrivals(&scenario, 7, workload),
            arrivals(&scenario, 8, workload)
        );
    }
    let a = run(&scenario, 7, &WarmPolicy::Never, None).expect("runs");
    let b = run(&scenario, 7, &WarmPolicy::Never, None).expect("runs");
    let c = run(&scenario, 7, &WarmPolicy::KeepAlive(600), None).expect("runs");
    assert_eq!(a.waits, b.waits);
    assert_eq!(a.mib_secs, b.mib_secs);
    assert_eq!(a.requests, c.requests);
    assert!(a.requests > 0);
}

#[test]
fn recorded_rows_label_whether_a_request_came_within_the_horizon() {
    // Every 10 minutes, decision points every tick once a minute has passed: of the ticks
    // from 60 s to 590 s after a call, those within 60 s of the next call see one coming.
    let scenario = periodic(600, 60);
    let outcome = run(&scenario, 1, &WarmPolicy::Never, Some(1)).expect("runs");
    let hits = outcome.rows.iter().filter(|(_, hit)| *hit).count();
    let total = outcome.rows.len();
    assert!(total > 0);
    let share = hits as f64 / total as f64;
    // 6 of the 54 decision ticks in each 10 minutes (or so: the calls are 3 s past a tick).
    assert!((0.09..0.13).contains(&share), "{hits} of {total}");
    let mut csv = Vec::new();
    edge_sim::warm::record(&scenario, &[1], 6, &mut csv).expect("written");
    let text = String::from_utf8(csv).expect("UTF-8");
    let line = text.lines().next().expect("a row");
    assert_eq!(line.split(',').count(), 18);
    assert!(
        edge_sim::warm::csv_header().ends_with(",idle_secs,day_ago_due_s,request_within_horizon"),
        "{}",
        edge_sim::warm::csv_header()
    );
}
