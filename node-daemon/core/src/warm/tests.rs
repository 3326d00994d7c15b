// One base instant per test from the clock; the code under test sees only what the test adds
// to it.
#![allow(clippy::disallowed_methods)]

use super::*;

const MIB: u64 = 1024 * 1024;

fn profile() -> WarmProfile {
    WarmProfile {
        cold_start: Duration::from_secs(5),
        memory_bytes: 64 * MIB,
        idle: Duration::from_secs(60),
    }
}

fn secs(base: Instant, s: u64) -> Instant {
    base + Duration::from_secs(s)
}

/// Says `p` for every workload, or fails.
#[derive(Debug)]
struct Constant(Result<f32, ()>);

impl PredictWarm for Constant {
    fn predict(&mut self, features: &[f32], out: &mut [f32]) -> Result<(), PredictError> {
        assert_eq!(features.len(), out.len() * WARM_WIDTH);
        let p = self.0.map_err(|()| PredictError("failed".to_owned()))?;
        out.fill(p);
        Ok(())
    }
}

fn model(p: f32) -> WarmPredictor {
    Ok(Box::new(Constant(Ok(p))))
}

fn index(name: &str) -> usize {
    WARM_FEATURES
        .iter()
        .position(|f| f.name == name)
        .unwrap_or_else(|| panic!("no feature {name}"))
}

#[test]
fn the_schema_names_every_column_once_with_a_unit() {
    assert_eq!(WARM_FEATURES.len(), WARM_WIDTH);
    for (i, f) in WARM_FEATURES.iter().enumerate() {
        assert!(!f.unit.is_empty(), "{} has no unit", f.name);
        assert!(
            WARM_FEATURES[..i].iter().all(|g| g.name != f.name),
            "{} twice",
            f.name
        );
    }
    assert_eq!(WARM_OUTPUTS.len(), 1);
    assert_eq!(WARM_OUTPUTS[0].unit, "probability");
}

#[test]
fn features_describe_the_rhythm_of_requests_and_the_workload() {
    let base = Instant::now();
    let mut w = WarmWorkload::new(profile(), false, base);
    let mut row = [0.0; WARM_WIDTH];
    w.features(base, 0, &mut row);
    assert_eq!(row[index("since_request_s")], TIME_CAP.as_secs_f32());
    assert_eq!(row[index("requests_24h")], 0.0);
    for s in [0, 30, 60, 90] {
        w.request(secs(base, s));
    }
    // 06:00 UTC: a quarter of the day.
    w.features(secs(base, 100), 6 * 3600, &mut row);
    assert_eq!(row[index("since_request_s")], 10.0);
    assert_eq!(row[index("gap_last_s")], 30.0);
    assert_eq!(row[index("gap_mean_s")], 30.0);
    assert_eq!(row[index("gap_std_s")], 0.0);
    assert!((row[index("since_over_gap")] - 1.0 / 3.0).abs() < 1e-6);
    assert_eq!(row[index("requests_1m")], 2.0); // minute 1: 60 and 90
    assert_eq!(row[index("requests_10m")], 4.0);
    assert_eq!(row[index("requests_24h")], 4.0);
    assert!((row[index("day_sin")] - 1.0).abs() < 1e-6);
    assert!(row[index("day_cos")].abs() < 1e-6);
    assert_eq!(row[index("cold_start_s")], 5.0);
    assert_eq!(row[index("memory_mib")], 64.0);
    assert_eq!(row[index("idle_secs")], 60.0);

    // A day later, minus five minutes: yesterday's requests are just ahead.
    let t = secs(base, 86_400 - 300);
    w.features(t, 0, &mut row);
    assert_eq!(row[index("day_ago_next_10m")], 4.0);
    assert_eq!(row[index("day_ago_next_60m")], 4.0);
    // The first of them was five minutes on from this time of day.
    assert_eq!(row[index("day_ago_due_s")], 300.0);
    assert_eq!(row[index("requests_1h")], 0.0);
    assert_eq!(row[index("requests_24h")], 4.0);
    // Two days on, they are forgotten.
    w.features(secs(base, 2 * 86_400), 0, &mut row);
    assert_eq!(row[index("requests_24h")], 0.0);
    assert_eq!(row[index("day_ago_next_60m")], 0.0);
    assert_eq!(row[index("day_ago_due_s")], 3600.0);
    assert!(row.iter().all(|v| v.is_finite()));
}

/// Ticks every 10 s for `until` seconds with requests at `requests`, carrying the actions out
/// at once; returns the wakes and sleeps as (second, action).
fn drive(prewarm: &mut Prewarm, requests: &[u64], until: u64) -> Vec<(u64, Action)> {
    let base = Instant::now();
    let mut workloads = vec![WarmWorkload::new(profile(), false, base)];
    let mut actions = Vec::new();
    let mut log = Vec::new();
    let mut next = requests.iter().peekable();
    for s in (0..until).step_by(10) {
        let now = secs(base, s);
        while let Some(&&r) = next.peek() {
            if r > s {
                break;
            }
            let at = secs(base, r);
            if !workloads[0].is_awake() {
                workloads[0].woke(at);
                log.push((r, Action::Wake));
            }
            workloads[0].request(at);
            next.next();
        }
        prewarm.tick(&mut workloads, now, s, &mut actions);
        match actions[0] {
            Action::Wake => workloads[0].woke(now),
            Action::Sleep => workloads[0].slept(now),
            Action::Stay => continue,
        }
        log.push((s, actions[0]));
    }
    log
}

#[test]
fn without_a_model_nothing_is_woken_early_and_idle_workloads_sleep_after_idle_secs() {
    for reason in Fallback::ALL {
        let mut prewarm = Prewarm::new(Err(reason), WarmSettings::default());
        assert_eq!(prewarm.mode(), Mode::Fallback(reason));
        let log = drive(&mut prewarm, &[100, 125], 400);
        // Woken by the request at 100, asleep 60 s after the last one (125): the tick at 190.
        assert_eq!(log, vec![(100, Action::Wake), (190, Action::Sleep)]);
    }
}

#[test]
fn a_confident_model_wakes_a_sleeping_workload_and_keeps_an_idle_one_up() {
    let mut prewarm = Prewarm::new(model(0.9), WarmSettings::default());
    let log = drive(&mut prewarm, &[], 200);
    assert_eq!(log, vec![(0, Action::Wake)]);
    assert_eq!(prewarm.mode(), Mode::Model);
}

#[test]
fn an_unconfident_model_decides_as_the_fixed_rule_does() {
    let mut prewarm = Prewarm::new(model(0.1), WarmSettings::default());
    let log = drive(&mut prewarm, &[100, 125], 400);
    assert_eq!(log, vec![(100, Action::Wake), (190, Action::Sleep)]);
}

#[test]
fn the_threshold_trades_wakes_for_memory() {
    let settings = WarmSettings {
        threshold: 0.3,
        ..WarmSettings::default()
    };
    let mut low = Prewarm::new(model(0.4), settings);
    assert_eq!(drive(&mut low, &[], 30), vec![(0, Action::Wake)]);
    let mut high = Prewarm::new(model(0.4), WarmSettings::default());
    assert_eq!(drive(&mut high, &[], 30), vec![]);
}

#[test]
fn a_model_that_fails_or_answers_nonsense_steps_aside_as_broken() {
    for answer in [Err(()), Ok(f32::NAN), Ok(1.5), Ok(-0.1)] {
        let mut prewarm = Prewarm::new(Ok(Box::new(Constant(answer))), WarmSettings::default());
        let log = drive(&mut prewarm, &[100, 125], 400);
        assert_eq!(
            prewarm.mode(),
            Mode::Fallback(Fallback::Broken),
            "{answer:?}"
        );
        assert_eq!(log, vec![(100, Action::Wake), (190, Action::Sleep)]);
    }
}

#[test]
fn a_model_whose_requests_never_come_steps_aside_for_drift_and_returns_when_right_again() {
    // It says a request is near certain; none comes for a long time.
    let mut prewarm = Prewarm::new(model(0.95), WarmSettings::default());
    let log = drive(&mut prewarm, &[], 20_000);
    assert_eq!(prewarm.mode(), Mode::Fallback(Fallback::Drift));
    // Woken at once, then put to sleep once it stepped aside, never woken again.
    assert_eq!(log.first(), Some(&(0, Action::Wake)));
    assert_eq!(log.len(), 2, "{log:?}");
    assert_eq!(log[1].1, Action::Sleep);
    let (brier, guess, samples) = prewarm.drift();
    assert!(brier > guess + 0.05 && samples >= 100);

    // In the shadow it goes on predicting; once requests come every 70 s (10 s after each
    // decision point) it is right again.
    let requests: Vec<u64> = (0..40_000).step_by(70).collect();
    let log = drive(&mut prewarm, &requests, 40_000);
    assert_eq!(prewarm.mode(), Mode::Model);
    assert_eq!(log.first(), Some(&(0, Action::Wake)));
}

#[test]
fn predictions_for_a_busy_workload_are_not_judged() {
    // A model that sees no request coming, for a workload called every 5 s: it never has to
    // decide (the workload is never idle for its idle_secs), so it is never found wrong.
    let mut prewarm = Prewarm::new(model(0.01), WarmSettings::default());
    let requests: Vec<u64> = (0..20_000).step_by(5).collect();
    let log = drive(&mut prewarm, &requests, 20_000);
    assert_eq!(log, vec![(0, Action::Wake)]);
    assert_eq!(prewarm.mode(), Mode::Model);
    assert_eq!(prewarm.drift().2, 0);
}

#[test]
fn the_same_history_gives_the_same_decisions() {
    let requests: Vec<u64> = (0..50).map(|i| i * i * 7 % 5000).collect::<Vec<_>>();
    let mut sorted = requests.clone();
    sorted.sort_unstable();
    let run = || {
        let mut prewarm = Prewarm::new(model(0.6), WarmSettings::default());
        let log = drive(&mut prewarm, &sorted, 6000);
        (log, prewarm.drift())
    };
    assert_eq!(run(), run());
}

#[test]
fn replacing_the_model_hands_the_decision_back() {
    let mut prewarm = Prewarm::new(Err(Fallback::NoModel), WarmSettings::default());
    prewarm.replace(model(0.9));
    assert_eq!(prewarm.mode(), Mode::Model);
    prewarm.replace(Err(Fallback::Refused));
    assert_eq!(prewarm.mode().as_str(), "refused");
    assert_eq!(drive(&mut prewarm, &[], 100), vec![]);
}
