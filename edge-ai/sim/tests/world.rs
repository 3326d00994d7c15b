//! The simulated world and proxy: deterministic, with common random numbers, queues that
//! behave like queues, and the differences between strategies a user would notice.

use edge_sim::report::{StrategyFigures, percentile};
use edge_sim::scenario::Scenario;
use edge_sim::sim::{Policy, run};

fn scenario(text: &str) -> Scenario {
    Scenario::parse(text, "test.toml").unwrap_or_else(|e| panic!("{e}"))
}

fn p(outcome: &edge_sim::sim::Outcome, q: f64) -> f64 {
    let mut l: Vec<f64> = outcome.requests.iter().map(|&(ms, _)| ms).collect();
    l.sort_by(f64::total_cmp);
    percentile(&l, q)
}

/// One backend with one worker and a constant 10 ms service, at `rate` requests a second.
fn single(rate: u32) -> Scenario {
    scenario(&format!(
        r#"
name = "single"
duration_secs = 5
timeout_ms = 60000
[arrivals]
rate_per_sec = {rate}
[[backend]]
name = "only"
workers = 1
service = {{ median_ms = 10, sigma = 0 }}
"#
    ))
}

/// Six backends, one of them four times slower, at about 70% of their capacity.
fn one_slow(retries: u32) -> Scenario {
    let mut text = format!(
        "name = \"one-slow\"\nduration_secs = 20\nwarmup_secs = 2\ntimeout_ms = 1000\n\
         retries = {retries}\n[arrivals]\nrate_per_sec = 1000\n"
    );
    for (name, median) in [
        ("a", 12),
        ("b", 12),
        ("c", 12),
        ("d", 12),
        ("e", 12),
        ("slow", 48),
    ] {
        text.push_str(&format!(
            "[[backend]]\nname = \"{name}\"\nworkers = 4\n\
             service = {{ median_ms = {median}, sigma = 0.5 }}\ndistance_km = 50\n"
        ));
    }
    scenario(&text)
}

#[test]
fn a_backend_past_its_capacity_queues() {
    // 20 a second: rarely more than one at once, about the service time.
    let light = run(&single(20), 1, &Policy::RoundRobin, false);
    assert!(p(&light, 0.5) < 11.0, "{}", p(&light, 0.5));
    assert!(p(&light, 0.99) < 40.0, "{}", p(&light, 0.99));
    // 200 a second into 100 a second of capacity: the queue grows all along, and the
    // median request waits for hundreds of others.
    let heavy = run(&single(200), 1, &Policy::RoundRobin, false);
    assert!(p(&heavy, 0.5) > 1000.0, "{}", p(&heavy, 0.5));
    assert!(p(&heavy, 0.99) > 2000.0, "{}", p(&heavy, 0.99));
    assert!(heavy.requests.iter().all(|&(_, failed)| !failed));
    // Nothing is lost: every request of the run is counted once.
    assert!(
        (900..1100).contains(&heavy.requests.len()),
        "{}",
        heavy.requests.len()
    );
}

#[test]
fn the_same_seed_gives_the_same_run_and_another_seed_another() {
    let s = one_slow(1);
    for policy in [
        Policy::PeakEwma,
        Policy::LeastRequests,
        edge_sim::exploration(4),
    ] {
        let a = run(&s, 42, &policy, true);
        let b = run(&s, 42, &policy, true);
        assert_eq!(a.requests, b.requests, "{}", policy.name());
        assert_eq!(a.attempts, b.attempts);
        assert_eq!(a.rows, b.rows);
        let c = run(&s, 43, &policy, false);
        assert_ne!(a.requests, c.requests);
    }
}

#[test]
fn every_strategy_meets_the_same_traffic() {
    // Common random numbers: the same arrivals, so the same number of counted requests, and
    // the same service draws, so on an idle backend the same latency whoever chose it.
    let s = single(20);
    let rr = run(&s, 9, &Policy::RoundRobin, false);
    let p2c = run(&s, 9, &Policy::PeakEwma, false);
    assert_eq!(rr.requests, p2c.requests);
    let s = one_slow(0);
    let counts: Vec<usize> = [Policy::RoundRobin, Policy::LeastRequests, Policy::PeakEwma]
        .iter()
        .map(|policy| run(&s, 9, policy, false).requests.len())
        .collect();
    assert!(counts.windows(2).all(|w| w[0] == w[1]), "{counts:?}");
}

#[test]
fn peak_ewma_keeps_the_slow_backend_out_of_the_tail_where_round_robin_does_not() {
    let s = one_slow(1);
    let figures = |policy: &Policy| {
        let outcomes: Vec<_> = (1..3).map(|seed| run(&s, seed, policy, false)).collect();
        StrategyFigures::from_outcomes(policy.name(), &outcomes)
    };
    let rr = figures(&Policy::RoundRobin);
    let p2c = figures(&Policy::PeakEwma);
    assert!(
        p2c.p99_ms < rr.p99_ms / 2.0,
        "p2c {} rr {}",
        p2c.p99_ms,
        rr.p99_ms
    );
    // It sends the slow backend less than its sixth.
    let slow = p2c.backend_shares[5];
    assert!(slow < 0.10, "{slow}");
    assert!(rr.backend_shares[0] > 0.15);
}

#[test]
fn a_backend_that_hangs_trips_its_breaker_and_retries_save_the_requests() {
    let text = r#"
name = "hang"
duration_secs = 20
warmup_secs = 1
timeout_ms = 300
retries = 1
[arrivals]
rate_per_sec = 200
[[backend]]
name = "good"
workers = 8
service = { median_ms = 5, sigma = 0.2 }
[[backend]]
name = "hangs"
workers = 8
service = { median_ms = 5, sigma = 0.2 }
down = [{ from_secs = 5, until_secs = 15, mode = "hang" }]
"#;
    let with = run(&scenario(text), 3, &Policy::RoundRobin, false);
    let without = run(
        &scenario(&text.replace("retries = 1", "retries = 0")),
        3,
        &Policy::RoundRobin,
        false,
    );
    let failed = |o: &edge_sim::sim::Outcome| o.requests.iter().filter(|r| r.1).count();
    assert!(failed(&without) > 0);
    assert!(
        failed(&with) < failed(&without) / 2,
        "{} {}",
        failed(&with),
        failed(&without)
    );
    assert!(with.retries > 0);
    // The breaker opened: the hanging backend got far fewer than half of the attempts
    // while it was down (a third of the run's requests arrive while it hangs).
    let share = without.attempts[1] as f64 / without.attempts.iter().sum::<u64>() as f64;
    assert!(share < 0.4, "{share}");
}

#[test]
fn a_rate_schedule_and_a_speed_change_show_in_the_figures() {
    let base = r#"
name = "shift"
duration_secs = 10
timeout_ms = 5000
[arrivals]
rate_per_sec = 50
[[backend]]
name = "only"
workers = 2
service = { median_ms = 10, sigma = 0 }
"#;
    let plain = run(&scenario(base), 1, &Policy::RoundRobin, false);
    let busier = run(
        &scenario(&base.replace(
            "rate_per_sec = 50\n",
            "rate_per_sec = 50\nschedule = [{ at_secs = 5, rate_per_sec = 150 }]\n",
        )),
        1,
        &Policy::RoundRobin,
        false,
    );
    assert!(busier.requests.len() > plain.requests.len() * 3 / 2);
    let slower = run(
        &scenario(&base.replace(
            "sigma = 0 }",
            "sigma = 0 }\nspeed = [{ at_secs = 5, multiplier = 3.0 }]",
        )),
        1,
        &Policy::RoundRobin,
        false,
    );
    assert!(p(&slower, 0.9) > 29.0, "{}", p(&slower, 0.9));
    assert!(p(&plain, 0.9) < 15.0, "{}", p(&plain, 0.9));
}
