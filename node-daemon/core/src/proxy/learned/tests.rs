// One base instant per test from the clock; the code under test sees only what the test adds
// to it.
#![allow(clippy::disallowed_methods)]

use super::*;
use crate::proxy::balance::{HostLoad, Load};

/// A model written as a function of one row's features, counting its calls.
struct Fake {
    f: fn(&[f32]) -> Prediction,
    calls: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    fail: bool,
}

fn fake(f: fn(&[f32]) -> Prediction, fail: bool) -> Predictor {
    Ok(Box::new(Fake {
        f,
        calls: Default::default(),
        fail,
    }))
}

impl fmt::Debug for Fake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fake").field("calls", &self.calls).finish()
    }
}

impl Predict for Fake {
    fn predict(&mut self, features: &[f32], out: &mut [Prediction]) -> Result<(), PredictError> {
        self.calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if self.fail {
            return Err(PredictError("the model is broken".to_owned()));
        }
        assert_eq!(features.len(), out.len() * ROUTE_WIDTH);
        for (row, p) in features.chunks_exact(ROUTE_WIDTH).zip(out) {
            *p = (self.f)(row);
        }
        Ok(())
    }
}

fn model(f: fn(&[f32]) -> Prediction) -> Learned {
    Learned::new(fake(f, false))
}

/// Latency: the mean plus 10 ms per request in flight; never fails.
fn queueing(row: &[f32]) -> Prediction {
    Prediction {
        latency_ms: row[1] + 10.0 * row[4],
        failure: 0.0,
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn observed(now: Instant, rtt: Duration) -> Load {
    let mut load = Load::new(now);
    load.start(now);
    load.end(now, rtt, true);
    load
}

fn candidate(load: &Load) -> Candidate<'_> {
    Candidate {
        load,
        available: true,
        half_open: false,
        distance_km: None,
        local: true,
        host: None,
    }
}

fn choose(chooser: &mut dyn Choose, candidates: &[Candidate<'_>], now: Instant) -> usize {
    let mut rng = fastrand::Rng::with_seed(1);
    chooser
        .choose(candidates, now, &mut || rng.u64(..))
        .expect("a candidate is available")
}

#[test]
fn features_are_in_the_declared_order_and_units() {
    let names: Vec<_> = ROUTE_FEATURES.iter().map(|f| f.name).collect();
    assert_eq!(
        names,
        [
            "peak_ewma_ms",
            "mean_ms",
            "tail_ms",
            "floor_ms",
            "in_flight",
            "failure_rate",
            "half_open",
            "unmeasured",
            "idle_ms",
            "distance_km",
            "local",
            "host_cpu",
            "host_memory"
        ],
        "the order is the models' contract: append, never reorder"
    );

    let t0 = Instant::now();
    let mut load = observed(t0, ms(40));
    load.start(t0);
    load.start(t0);
    let c = Candidate {
        load: &load,
        available: true,
        half_open: true,
        distance_km: Some(120.5),
        local: false,
        host: Some(HostLoad {
            cpu: 0.25,
            memory: 0.5,
        }),
    };
    let mut row = [f32::NAN; ROUTE_WIDTH];
    route_features(&c, t0 + ms(250), &mut row);
    let decayed = 40.0 * (-0.025f32).exp();
    assert!((row[0] - decayed).abs() < 1e-3, "{row:?}");
    assert_eq!(row[1], 40.0);
    assert!((row[2] - decayed).abs() < 1e-3, "{row:?}");
    assert_eq!(row[3], 40.0);
    assert_eq!(
        &row[4..],
        [2.0, 0.0, 1.0, 0.0, 250.0, 120.5, 0.0, 0.25, 0.5]
    );

    // Unmeasured, unknown distance and host, idle for an hour: zeros, a flag, the cap.
    let fresh = Load::new(t0);
    route_features(&candidate(&fresh), t0 + Duration::from_secs(3600), &mut row);
    assert_eq!(
        row,
        [
            0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 60_000.0, 0.0, 1.0, 0.0, 0.0
        ]
    );
}

#[test]
fn the_cheapest_prediction_wins_and_requests_in_flight_spread_a_burst() {
    let now = Instant::now();
    let mut loads = [
        observed(now, ms(56)),
        observed(now, ms(10)),
        observed(now, ms(33)),
    ];
    let mut chooser = model(queueing);
    let mut picks = Vec::new();
    for _ in 0..8 {
        let i = {
            let candidates: Vec<_> = loads.iter().map(candidate).collect();
            choose(&mut chooser, &candidates, now)
        };
        loads[i].start(now);
        picks.push(i);
    }
    // Costs 10, 20, 30, 40, 50 for the fast one, 33, 43, 53 for the next, 56 then 66 for the
    // slow one (TIE_RATIO is 1.3). The fast one while it is clearly the cheapest; once the
    // next is within TIE_RATIO (30 against 33), the one with fewer in flight; the slow one
    // once, when its 56 is within TIE_RATIO of the best (50) and it has nothing in flight.
    assert_eq!(picks, [1, 1, 2, 1, 2, 1, 0, 2]);
    assert_eq!(loads.map(|l| l.pending()), [1, 4, 3]);
    assert_eq!(chooser.mode(), Mode::Model);
    assert!(chooser.predicted_ms().is_some());
}

#[test]
fn costs_within_the_tie_ratio_go_to_the_backend_with_fewer_in_flight() {
    let now = Instant::now();
    // Predicted 10 ms, a little under 10 * TIE_RATIO and a little over: the first two are a
    // tie, the third is not.
    let mut loads = [
        observed(now, ms(10)),
        observed(now, ms(12)),
        observed(now, ms(13)),
    ];
    let mut chooser = model(|row| Prediction {
        latency_ms: match row[1] as u32 {
            10 => 10.0,
            12 => 10.0 * TIE_RATIO - 0.1,
            _ => 10.0 * TIE_RATIO + 0.1,
        },
        failure: 0.0,
    });
    for _ in 0..3 {
        loads[0].start(now);
    }
    let candidates: Vec<_> = loads.iter().map(candidate).collect();
    assert_eq!(
        choose(&mut chooser, &candidates, now),
        1,
        "within TIE_RATIO of the cheapest, with nothing in flight"
    );
    assert_eq!(chooser.predicted_ms(), Some(10.0 * TIE_RATIO - 0.1));
    // Nothing else in flight anywhere: the cheapest wins among equals in flight.
    let idle = [
        observed(now, ms(10)),
        observed(now, ms(12)),
        observed(now, ms(13)),
    ];
    let candidates: Vec<_> = idle.iter().map(candidate).collect();
    let mut rng = fastrand::Rng::with_seed(3);
    let mut counts = [0; 3];
    for _ in 0..1000 {
        let i = chooser
            .choose(&candidates, now, &mut || rng.u64(..))
            .expect("available");
        counts[i] += 1;
    }
    // The first two are tied in cost and in flight: either, at random; never the third,
    // past 10 * TIE_RATIO.
    assert_eq!(counts[2], 0, "{counts:?}");
    assert!(counts[0] > 400 && counts[1] > 400, "{counts:?}");
    // A clearly cheaper backend wins however busy the others are not.
    let mut busy = [observed(now, ms(10)), observed(now, ms(13))];
    busy[0].start(now);
    let candidates: Vec<_> = busy.iter().map(candidate).collect();
    assert_eq!(choose(&mut chooser, &candidates, now), 0);
}

#[test]
fn a_likely_failure_costs_its_retries_and_ties_are_broken_at_random() {
    let now = Instant::now();
    let loads = [
        observed(now, ms(10)),
        observed(now, ms(10)),
        observed(now, ms(12)),
    ];
    // The first two fail half the time: 20 ms expected against 12.
    let mut chooser = model(|row| Prediction {
        latency_ms: row[1],
        failure: if row[1] < 11.0 { 0.5 } else { 0.0 },
    });
    let candidates: Vec<_> = loads.iter().map(candidate).collect();
    assert_eq!(choose(&mut chooser, &candidates, now), 2);

    let alike = [
        observed(now, ms(7)),
        observed(now, ms(7)),
        observed(now, ms(7)),
        observed(now, ms(7)),
    ];
    let candidates: Vec<_> = alike.iter().map(candidate).collect();
    let mut chooser = model(|_| Prediction {
        latency_ms: 1.0,
        failure: 0.0,
    });
    let mut rng = fastrand::Rng::with_seed(9);
    let mut counts = [0; 4];
    for _ in 0..4000 {
        let i = chooser
            .choose(&candidates, now, &mut || rng.u64(..))
            .expect("available");
        counts[i] += 1;
    }
    assert!(
        counts.iter().all(|&n| (800..1200).contains(&n)),
        "{counts:?}"
    );
}

#[test]
fn only_available_candidates_are_scored_or_chosen() {
    let now = Instant::now();
    let loads = [
        observed(now, ms(1)),
        observed(now, ms(100)),
        observed(now, ms(2)),
    ];
    let mut candidates: Vec<_> = loads.iter().map(candidate).collect();
    candidates[0].available = false;
    candidates[2].available = false;
    let mut chooser = model(queueing);
    assert_eq!(choose(&mut chooser, &candidates, now), 1);
    for c in &mut candidates {
        c.available = false;
    }
    assert_eq!(chooser.choose(&candidates, now, &mut || 0), None);
    assert_eq!(chooser.choose(&[], now, &mut || 0), None);
}

#[test]
fn without_a_model_or_with_a_broken_one_p2c_chooses_and_the_mode_says_why() {
    let now = Instant::now();
    let loads = [observed(now, ms(200)), observed(now, ms(10))];
    let candidates: Vec<_> = loads.iter().map(candidate).collect();
    for reason in [Fallback::NoModel, Fallback::Refused] {
        let mut chooser = Learned::new(Err(reason));
        assert_eq!(chooser.mode(), Mode::Fallback(reason));
        // P2C over two: the fast one, always.
        assert_eq!(choose(&mut chooser, &candidates, now), 1);
        assert_eq!(chooser.predicted_ms(), None);
    }

    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut chooser = Learned::new(Ok(Box::new(Fake {
        f: queueing,
        calls: calls.clone(),
        fail: true,
    })));
    assert_eq!(choose(&mut chooser, &candidates, now), 1);
    assert_eq!(chooser.mode(), Mode::Fallback(Fallback::Broken));
    assert_eq!(choose(&mut chooser, &candidates, now), 1);
    assert_eq!(
        calls.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "a broken model is not asked again"
    );

    // A model that answers with something that is not a number is broken too.
    let mut chooser = model(|_| Prediction {
        latency_ms: f32::NAN,
        failure: 0.0,
    });
    assert_eq!(choose(&mut chooser, &candidates, now), 1);
    assert_eq!(chooser.mode(), Mode::Fallback(Fallback::Broken));
    for reason in Fallback::ALL {
        assert_eq!(Mode::Fallback(reason).as_str(), reason.as_str());
    }
}

#[test]
fn a_drifting_model_steps_aside_predicts_in_the_shadow_and_comes_back() {
    let now = Instant::now();
    let loads = [observed(now, ms(10)), observed(now, ms(20))];
    let candidates: Vec<_> = loads.iter().map(candidate).collect();
    let bound = DriftBound::default();
    let mut chooser = model(queueing);

    // Outcomes 4x slower than predicted: it steps aside once it has seen enough.
    let mut stepped = None;
    for n in 0..1000u32 {
        choose(&mut chooser, &candidates, now);
        let predicted = chooser.predicted_ms().expect("the model predicts");
        let observed = Duration::from_secs_f32(predicted * 4.0 / 1000.0);
        chooser.observe(predicted, observed, true);
        if chooser.mode() != Mode::Model {
            stepped = Some(n);
            break;
        }
    }
    let stepped = stepped.expect("the model steps aside");
    assert_eq!(stepped + 1, bound.min_samples, "judged after min_samples");
    assert_eq!(chooser.mode(), Mode::Fallback(Fallback::Drift));

    // In the shadow, the fallback's choices are predicted and checked; failures are not.
    choose(&mut chooser, &candidates, now);
    let shadow = chooser.predicted_ms().expect("predicted in the shadow");
    chooser.observe(shadow, Duration::from_secs(9), false);
    assert_eq!(chooser.drift().1, 0, "a failure is not a latency sample");

    // The backends become what the model says: it takes over again.
    let mut back = None;
    for n in 0..1000u32 {
        choose(&mut chooser, &candidates, now);
        let predicted = chooser.predicted_ms().expect("predicted in the shadow");
        chooser.observe(predicted, Duration::from_secs_f32(predicted / 1000.0), true);
        if chooser.mode() == Mode::Model {
            back = Some(n);
            break;
        }
    }
    assert_eq!(back.map(|n| n + 1), Some(bound.min_samples));
}

#[test]
fn a_backend_the_model_shuns_is_probed_now_and_then_once_idle() {
    let t0 = Instant::now();
    let slow = observed(t0, ms(500));
    let mut fast = observed(t0, ms(5));
    let mut chooser = model(queueing);
    let now = t0 + PROBE_IDLE + ms(1);
    // The fast one answers as it goes, so it is never idle.
    fast.start(now);
    fast.end(now, ms(5), true);
    let candidates = [candidate(&slow), candidate(&fast)];
    let mut rng = fastrand::Rng::with_seed(3);
    let picks: Vec<_> = (0..2 * PROBE_EVERY)
        .map(|_| chooser.choose(&candidates, now, &mut || rng.u64(..)))
        .collect();
    let probes = picks.iter().filter(|&&p| p == Some(0)).count();
    assert_eq!(probes, 2, "one probe in {PROBE_EVERY}");
    assert_eq!(picks[PROBE_EVERY as usize - 1], Some(0));

    // Not while a request is in flight there, nor before it has been idle long enough.
    let mut busy = slow.clone();
    busy.start(now);
    let candidates = [candidate(&busy), candidate(&fast)];
    let picks = (0..PROBE_EVERY).filter(|_| choose(&mut chooser, &candidates, now) == 0);
    assert_eq!(picks.count(), 0);
    let recent = observed(now, ms(500));
    let candidates = [candidate(&recent), candidate(&fast)];
    let picks = (0..PROBE_EVERY).filter(|_| choose(&mut chooser, &candidates, now) == 0);
    assert_eq!(picks.count(), 0);
}

#[test]
fn a_new_model_takes_over_at_once_and_is_judged_afresh() {
    let now = Instant::now();
    let loads = [observed(now, ms(10)), observed(now, ms(20))];
    let candidates: Vec<_> = loads.iter().map(candidate).collect();
    let mut chooser = Learned::new(Err(Fallback::NoModel));
    chooser.set_predictor(fake(
        |row| Prediction {
            // Prefers the slower one: proof that this model chooses.
            latency_ms: 100.0 - row[1],
            failure: 0.0,
        },
        false,
    ));
    assert_eq!(Choose::mode(&chooser), Some(Mode::Model));
    assert_eq!(chooser.mode(), Mode::Model);
    assert_eq!(choose(&mut chooser, &candidates, now), 1);
    chooser.replace(Err(Fallback::Refused));
    assert_eq!(chooser.mode(), Mode::Fallback(Fallback::Refused));
    assert_eq!(chooser.drift(), (0.0, 0));
}

#[test]
fn outputs_are_read_as_the_log_of_the_latency() {
    let p = Prediction::from_outputs(10f32.ln(), 0.25);
    assert!((p.latency_ms - 10.0).abs() < 1e-4, "{p:?}");
    assert_eq!(p.failure, 0.25);
    assert_eq!(Prediction::from_outputs(1e30, 0.0).latency_ms, 20f32.exp());
    assert!(
        Prediction::from_outputs(f32::NAN, 0.0)
            .cost_ms()
            .is_infinite()
    );
}

#[test]
fn costs_are_finite_for_finite_predictions_and_never_negative() {
    for (latency_ms, failure, want) in [
        (10.0, 0.0, 10.0),
        (10.0, 0.5, 20.0),
        (10.0, 1.0, 1000.0),
        (10.0, 7.0, 1000.0),
        (10.0, -3.0, 10.0),
        (-5.0, 0.2, 0.0),
    ] {
        let got = Prediction {
            latency_ms,
            failure,
        }
        .cost_ms();
        assert!((got - want).abs() < 1e-3, "{latency_ms} {failure}: {got}");
    }
    let nan = Prediction {
        latency_ms: f32::NAN,
        failure: 0.0,
    };
    assert_eq!(nan.cost_ms(), f32::INFINITY);
}

#[test]
fn a_backend_never_measured_is_measured_before_the_model_is_trusted_on_it() {
    let now = Instant::now();
    let known = observed(now, ms(5));
    let mut fresh = Load::new(now);
    // Predicts the unmeasured one (mean 0) slower than anything measured.
    let mut chooser = model(|row| Prediction {
        latency_ms: if row[7] > 0.0 { 1000.0 } else { row[1] },
        failure: 0.0,
    });
    let pick = {
        let candidates = [candidate(&known), candidate(&fresh)];
        choose(&mut chooser, &candidates, now)
    };
    assert_eq!(pick, 1, "measured first");
    // With its first request in flight, the model decides again.
    fresh.start(now);
    let candidates = [candidate(&known), candidate(&fresh)];
    assert_eq!(choose(&mut chooser, &candidates, now), 0);
}

/// What a node's sampled attempts are named by on the wire and in every export is this
/// schema, in this order.
#[test]
fn the_wire_names_the_route_features_as_the_schema_does() {
    let names: Vec<&str> = ROUTE_FEATURES.iter().map(|f| f.name).collect();
    assert_eq!(names, edge_proto::RouteSamples::FEATURE_NAMES);
    const { assert!(ROUTE_WIDTH <= edge_proto::RouteSamples::MAX_FEATURES) };
}
