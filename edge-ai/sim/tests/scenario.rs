//! Scenario files: every shipped one loads, and a malformed, oversized or hostile one is an
//! error that names the field, never a panic.

use std::path::{Path, PathBuf};

use edge_sim::scenario::{MAX_SCENARIO_BYTES, Scenario, ScenarioError};

const GOOD: &str = r#"
name = "t"
duration_secs = 10
warmup_secs = 1
timeout_ms = 500
retries = 1

[arrivals]
rate_per_sec = 100
schedule = [{ at_secs = 5, rate_per_sec = 200 }]

[[backend]]
name = "a"
workers = 2
service = { median_ms = 10, sigma = 0.3 }
degrade = { knee = 2, per_request = 0.5 }
distance_km = 100
local = false
failure = 0.01
host_cpu = 0.5
host_memory = 0.25
speed = [{ at_secs = 2, multiplier = 3.0 }]
down = [{ from_secs = 3, until_secs = 4, mode = "hang" }]
flap = { period_secs = 4, down_secs = 1, mode = "refuse" }

[[backend]]
name = "b"
workers = 1
service = { median_ms = 5, sigma = 0 }
"#;

fn parse(text: &str) -> Result<Scenario, ScenarioError> {
    Scenario::parse(text, "test.toml")
}

/// The field an `Invalid` error names.
fn invalid_field(text: &str) -> String {
    match parse(text) {
        Err(ScenarioError::Invalid { field, .. }) => field,
        other => panic!("expected an invalid field, got {other:?}"),
    }
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn a_full_scenario_parses() {
    let s = parse(GOOD).expect("valid");
    assert_eq!(s.backends.len(), 2);
    assert_eq!(s.arrivals.schedule.len(), 1);
    assert_eq!(s.peak_rate(), 200.0);
}

#[test]
fn every_shipped_scenario_loads_and_has_four_to_eight_backends() {
    let mut seen = 0;
    for dir in ["benches/scenarios/route", "edge-ai/train/scenarios"] {
        for entry in std::fs::read_dir(repo().join(dir)).expect("the scenario folder") {
            let path = entry.expect("an entry").path();
            if path.extension().is_some_and(|e| e == "toml") {
                let s = Scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
                assert!((4..=8).contains(&s.backends.len()), "{}", path.display());
                seen += 1;
            }
        }
    }
    assert!(seen >= 10, "{seen} scenarios");
}

#[test]
fn training_and_evaluation_scenarios_differ() {
    let names = |dir: &str| -> Vec<Scenario> {
        std::fs::read_dir(repo().join(dir))
            .expect("the scenario folder")
            .map(|e| e.expect("an entry").path())
            // Pre-warming scenarios live in a folder of their own (`warm/`).
            .filter(|path| path.extension().is_some_and(|e| e == "toml"))
            .map(|path| Scenario::load(&path).expect("loads"))
            .collect()
    };
    let train = names("edge-ai/train/scenarios");
    for eval in names("benches/scenarios/route") {
        for t in &train {
            assert_ne!(eval.name, t.name);
            assert_ne!(eval.backends, t.backends, "{} and {}", eval.name, t.name);
        }
    }
}

#[test]
fn malformed_files_are_parse_errors() {
    for text in [
        "",
        "not toml at all [",
        "name = 1",
        // A missing field.
        &GOOD.replace("timeout_ms = 500\n", ""),
        // An unknown one, which a typo would be.
        &GOOD.replace("workers = 2", "workers = 2\nworkerz = 3"),
        // A wrong type.
        &GOOD.replace("workers = 2", "workers = \"two\""),
        &GOOD.replace("mode = \"hang\"", "mode = \"melt\""),
        &GOOD.replace("workers = 2", "workers = -2"),
        &GOOD.replace("workers = 2", "workers = 99999999999999999999"),
    ] {
        assert!(
            matches!(parse(text), Err(ScenarioError::Parse { .. })),
            "{text:?}: {:?}",
            parse(text)
        );
    }
}

#[test]
fn hostile_numbers_name_their_field() {
    let cases = [
        ("duration_secs = 10", "duration_secs = nan", "duration_secs"),
        ("duration_secs = 10", "duration_secs = inf", "duration_secs"),
        (
            "duration_secs = 10",
            "duration_secs = 1e300",
            "duration_secs",
        ),
        ("duration_secs = 10", "duration_secs = -1", "duration_secs"),
        ("warmup_secs = 1", "warmup_secs = 10", "warmup_secs"),
        ("timeout_ms = 500", "timeout_ms = 0", "timeout_ms"),
        ("retries = 1", "retries = 2", "retries"),
        (
            "rate_per_sec = 100",
            "rate_per_sec = -100",
            "arrivals.rate_per_sec",
        ),
        (
            "rate_per_sec = 100",
            "rate_per_sec = 1e9",
            "arrivals.rate_per_sec",
        ),
        (
            "rate_per_sec = 200",
            "rate_per_sec = nan",
            "arrivals.schedule[0].rate_per_sec",
        ),
        (
            "at_secs = 5",
            "at_secs = -inf",
            "arrivals.schedule[0].at_secs",
        ),
        ("workers = 2", "workers = 0", "backend[0].workers"),
        ("workers = 2", "workers = 4000000000", "backend[0].workers"),
        (
            "median_ms = 10",
            "median_ms = 0",
            "backend[0].service.median_ms",
        ),
        (
            "median_ms = 10",
            "median_ms = nan",
            "backend[0].service.median_ms",
        ),
        ("sigma = 0.3", "sigma = 50", "backend[0].service.sigma"),
        (
            "per_request = 0.5",
            "per_request = -1",
            "backend[0].degrade.per_request",
        ),
        (
            "distance_km = 100",
            "distance_km = 1e12",
            "backend[0].distance_km",
        ),
        ("failure = 0.01", "failure = 1.5", "backend[0].failure"),
        ("host_cpu = 0.5", "host_cpu = nan", "backend[0].host_cpu"),
        (
            "multiplier = 3.0",
            "multiplier = 0",
            "backend[0].speed[0].multiplier",
        ),
        (
            "until_secs = 4",
            "until_secs = 2",
            "backend[0].down[0].until_secs",
        ),
        (
            "down_secs = 1",
            "down_secs = 5",
            "backend[0].flap.down_secs",
        ),
        (
            "period_secs = 4",
            "period_secs = 0",
            "backend[0].flap.period_secs",
        ),
        ("name = \"b\"", "name = \"a\"", "backend[1].name"),
        ("name = \"b\"", "name = \"\"", "backend[1].name"),
    ];
    for (from, to, field) in cases {
        assert!(GOOD.contains(from), "{from}");
        assert_eq!(invalid_field(&GOOD.replacen(from, to, 1)), field, "{to}");
    }
    // Too much work for one run: a long scenario at a high rate.
    let busy = GOOD
        .replace("duration_secs = 10", "duration_secs = 3600")
        .replace("rate_per_sec = 200", "rate_per_sec = 90000");
    assert_eq!(invalid_field(&busy), "arrivals");
    // No backends at all, or far too many.
    let none = GOOD.split("[[backend]]").next().expect("a head").to_owned();
    assert!(parse(&none).is_err());
    let mut many = GOOD.to_owned();
    for i in 0..100 {
        many.push_str(&format!(
            "\n[[backend]]\nname = \"x{i}\"\nworkers = 1\nservice = {{ median_ms = 1, sigma = 0 }}\n"
        ));
    }
    assert_eq!(invalid_field(&many), "backend");
}

#[test]
fn oversized_files_are_refused_before_parsing() {
    let dir = std::env::temp_dir().join(format!("edge-sim-oversized-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temp dir");
    let path = dir.join("big.toml");
    let padding = "#".repeat(MAX_SCENARIO_BYTES as usize + 1);
    std::fs::write(&path, format!("{GOOD}\n{padding}\n")).expect("written");
    let error = Scenario::load(&path).expect_err("too large");
    assert!(matches!(error, ScenarioError::TooLarge { .. }), "{error}");
    assert!(error.to_string().len() < 300);
    std::fs::remove_dir_all(&dir).ok();
    assert!(matches!(
        Scenario::load(Path::new("/nonexistent/scenario.toml")),
        Err(ScenarioError::Io { .. })
    ));
}

#[test]
fn mangled_files_never_panic() {
    // Cut, duplicated and overwritten bytes of a valid file: every result is fine but a
    // panic, and an error's message stays short.
    let mut rng = fastrand::Rng::with_seed(7);
    let bytes = GOOD.as_bytes();
    for _ in 0..2000 {
        let mut text = bytes.to_vec();
        for _ in 0..rng.usize(1..6) {
            let at = rng.usize(..text.len());
            match rng.u8(..3) {
                0 => text[at] = b"0123456789.-=[]{}\"ne \n"[rng.usize(..22)],
                1 => {
                    text.remove(at);
                }
                _ => text.insert(at, text[rng.usize(..text.len())]),
            }
        }
        let text = String::from_utf8_lossy(&text);
        if let Err(error) = parse(&text) {
            assert!(error.to_string().len() < 700, "{error}");
        }
    }
}
