//! Which backend serves a request: the load each backend carries, and the strategies that
//! choose among the backends of a route's target.
//!
//! [`Load`] is one backend's load as the proxy sees it: requests in flight and a peak-EWMA
//! estimate of its latency (as in finagle and linkerd2/tower). A response slower than the
//! estimate raises it at once; a faster one pulls it down gradually, weighted by the time since
//! the last observation (`decay`, 10 s by default); and while no response arrives the estimate
//! decays towards zero, so a backend that was slow once is tried again after a while instead of
//! being shunned for ever. Its cost is `estimate * (pending + 1)`. A backend never observed
//! costs nothing while nothing is in flight there, so each new backend is measured by its
//! first request, and a default RTT (1 s, tower's default) for each request in flight there
//! until its first answer, so a burst does not herd onto it.
//!
//! [`Choose`] is the one decision: given the candidates (their load, whether their breaker lets
//! a request through, how far away they are, whether they run on this node), which one. The
//! built-in strategies ([`PeakEwmaP2c`], [`RoundRobin`], [`LeastRequests`]) use the load and
//! availability only; the distance and locality are there for a learned model that may replace
//! them behind the same trait, with one of these as its fallback.
//!
//! Nothing here reads the clock or draws randomness: `now` and the random draws (uniform
//! `u64`s) come from the caller.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

/// How a route spreads requests over the backends of a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Power of two choices over peak-EWMA cost ([`PeakEwmaP2c`]): two random available
    /// backends, the cheaper one wins. Adapts to slow and busy backends without herding.
    #[default]
    PeakEwma,
    /// Each available backend in turn ([`RoundRobin`]).
    RoundRobin,
    /// The available backend with the fewest requests in flight ([`LeastRequests`]).
    LeastRequests,
}

impl Strategy {
    /// Every strategy, in declaration order.
    pub const ALL: [Strategy; 3] = [
        Strategy::PeakEwma,
        Strategy::RoundRobin,
        Strategy::LeastRequests,
    ];

    /// The name in config files, also fit for a metric label: `peak-ewma`, `round-robin`,
    /// `least-requests`.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::PeakEwma => "peak-ewma",
            Strategy::RoundRobin => "round-robin",
            Strategy::LeastRequests => "least-requests",
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not one of the [`Strategy`] names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown balance strategy {shown}: expected peak-ewma, round-robin or least-requests")]
pub struct UnknownStrategy {
    /// What was written, quoted and cut as [`edge_proto::field::shown`] does.
    pub shown: String,
}

impl FromStr for Strategy {
    type Err = UnknownStrategy;

    /// Exactly the config names (lower case): `peak-ewma`, `round-robin`, `least-requests`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Strategy::ALL
            .into_iter()
            .find(|strategy| strategy.as_str() == s)
            .ok_or_else(|| UnknownStrategy {
                shown: edge_proto::field::shown(s).to_string(),
            })
    }
}

/// How a [`Load`] estimates latency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadConfig {
    /// How fast the estimate forgets: an observation `decay` old weighs `1/e` of a new one.
    pub decay: Duration,
    /// The latency assumed for a backend with no response yet.
    pub default_rtt: Duration,
}

impl Default for LoadConfig {
    /// 10 s decay (finagle's and linkerd's), 1 s for an untried backend (tower's).
    fn default() -> Self {
        Self {
            decay: Duration::from_secs(10),
            default_rtt: Duration::from_secs(1),
        }
    }
}

/// One backend's load: requests in flight and a peak-EWMA latency estimate. See the module
/// docs. The shell keeps one per backend and calls [`start`](Self::start) when it sends a
/// request there and [`end`](Self::end) (or [`cancel`](Self::cancel)) when that request is
/// over, whatever its outcome.
///
/// Beside the peak-EWMA estimate that [`PeakEwmaP2c`] uses, it keeps what a learned model
/// reads about the backend ([`crate::proxy::learned::route_features`]): a plain EWMA of the
/// latency, a decaying tail (the slowest recent response, forgotten at the same rate), a
/// floor (the mirror image of the peak estimate: a faster response is taken at once, a
/// slower one pulls it up gradually; the network's round trip plus the backend's quickest
/// work) and the share of recent requests that failed. All of them are weighted by time
/// like the estimate, with the same `decay`.
#[derive(Debug, Clone, PartialEq)]
pub struct Load {
    config: LoadConfig,
    pending: u32,
    /// The estimate in nanoseconds as of `stamp`; before the first response, the default RTT
    /// as of the backend's creation.
    estimate_ns: f64,
    /// A plain EWMA of the latency, as of `stamp`.
    mean_ns: f64,
    /// The slowest recent response, as of `stamp`.
    tail_ns: f64,
    /// The floor: see the type's docs.
    floor_ns: f64,
    /// The share of failed requests, an EWMA of 0 (success) and 1 (failure).
    failure_rate: f64,
    stamp: Instant,
    observed: bool,
}

impl Load {
    /// A backend added at `now`, with the default [`LoadConfig`].
    pub fn new(now: Instant) -> Self {
        Self::with_config(now, LoadConfig::default())
    }

    /// A backend added at `now`.
    pub fn with_config(now: Instant, config: LoadConfig) -> Self {
        Self {
            config,
            pending: 0,
            estimate_ns: nanos(config.default_rtt),
            mean_ns: 0.0,
            tail_ns: 0.0,
            floor_ns: 0.0,
            failure_rate: 0.0,
            stamp: now,
            observed: false,
        }
    }

    /// Requests sent to this backend and not yet over.
    pub fn pending(&self) -> u32 {
        self.pending
    }

    /// Whether a response has been observed yet.
    pub fn observed(&self) -> bool {
        self.observed
    }

    /// A request is sent to this backend.
    pub fn start(&mut self, _now: Instant) {
        self.pending = self.pending.saturating_add(1);
    }

    /// A request to this backend is over after `rtt` (from sending it to the response's
    /// head, or to the failure), and `ok` says whether it succeeded: one fewer in flight, and
    /// `rtt` observed. A failure is observed like any response: a backend that fails slowly
    /// looks slow, one that refuses at once is the breaker's business (and counts in
    /// [`failure_rate`](Self::failure_rate)).
    pub fn end(&mut self, now: Instant, rtt: Duration, ok: bool) {
        self.pending = self.pending.saturating_sub(1);
        let rtt = nanos(rtt);
        let failed = if ok { 0.0 } else { 1.0 };
        if self.observed {
            let w = self.weight_of_old(now);
            let blend = |old: f64| old * w + rtt * (1.0 - w);
            // A peak is taken at once; a dip at once for the floor.
            self.estimate_ns = if rtt > self.estimate_ns {
                rtt
            } else {
                blend(self.estimate_ns)
            };
            self.floor_ns = if rtt < self.floor_ns {
                rtt
            } else {
                blend(self.floor_ns)
            };
            self.mean_ns = blend(self.mean_ns);
            self.tail_ns = rtt.max(self.tail_ns * w);
            self.failure_rate = self.failure_rate * w + failed * (1.0 - w);
        } else {
            // The first observation replaces the default and is everything known.
            self.estimate_ns = rtt;
            self.floor_ns = rtt;
            self.mean_ns = rtt;
            self.tail_ns = rtt;
            self.failure_rate = failed;
        }
        self.stamp = self.stamp.max(now);
        self.observed = true;
    }

    /// A request to this backend is over without a latency worth observing (the client went
    /// away first): one fewer in flight.
    pub fn cancel(&mut self) {
        self.pending = self.pending.saturating_sub(1);
    }

    /// The latency estimate at `now`, in nanoseconds: the last one, decayed towards zero for
    /// the time since.
    pub fn estimate_ns(&self, now: Instant) -> f64 {
        self.estimate_ns * self.weight_of_old(now)
    }

    /// The plain EWMA of the latency, in nanoseconds (0 before the first response). Unlike
    /// the estimate it does not decay while the backend is idle: it is the last thing known.
    pub fn mean_ns(&self) -> f64 {
        self.mean_ns
    }

    /// The slowest recent response at `now`, in nanoseconds, forgotten at the decay's rate.
    pub fn tail_ns(&self, now: Instant) -> f64 {
        self.tail_ns * self.weight_of_old(now)
    }

    /// The floor, in nanoseconds: see the type's docs (0 before the first response).
    pub fn floor_ns(&self) -> f64 {
        self.floor_ns
    }

    /// The share of recent requests that failed, 0 to 1 (0 before the first response).
    pub fn failure_rate(&self) -> f64 {
        self.failure_rate
    }

    /// The time since the last response, or since the backend was added before its first.
    pub fn idle(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.stamp)
    }

    /// What sending one more request here costs: `estimate * (pending + 1)`, in nanoseconds.
    /// Always finite and non-negative. A backend with no response yet costs nothing while
    /// nothing is in flight there, so every new backend gets its first request (with the
    /// default RTT it would lose every choice to a backend that answered once, however
    /// slowly, and never be measured); with requests in flight it costs the default RTT
    /// for each, so a burst does not herd onto a backend nobody has measured.
    pub fn cost(&self, now: Instant) -> f64 {
        if !self.observed {
            return nanos(self.config.default_rtt) * f64::from(self.pending);
        }
        self.estimate_ns(now) * (f64::from(self.pending) + 1.0)
    }

    /// `exp(-elapsed / decay)`: how much of the estimate as of `stamp` is left at `now`.
    fn weight_of_old(&self, now: Instant) -> f64 {
        let decay = nanos(self.config.decay);
        if decay <= 0.0 {
            return 0.0;
        }
        let elapsed = nanos(now.saturating_duration_since(self.stamp));
        (-elapsed / decay).exp()
    }
}

fn nanos(d: Duration) -> f64 {
    // f64 holds every duration we meet (up to ~104 days) to the nanosecond; beyond, rounding
    // is harmless.
    d.as_secs_f64() * 1e9
}

/// One backend as a [`Choose`] sees it.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    pub load: &'a Load,
    /// Its breaker lets a request through ([`crate::proxy::breaker::Breaker::allow`]).
    pub available: bool,
    /// Its breaker is half-open: it is being probed after failures.
    pub half_open: bool,
    /// How far away it runs, if known.
    pub distance_km: Option<f64>,
    /// It runs on this node.
    pub local: bool,
    /// The load of the node it runs on, if known (this node's own, for a local backend).
    pub host: Option<HostLoad>,
}

/// How busy a node is: the share of its CPU and of its memory in use, each 0 to 1.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct HostLoad {
    pub cpu: f32,
    pub memory: f32,
}

/// Chooses a backend. One trait so that a learned model can replace a strategy, keeping one
/// as its fallback.
pub trait Choose: fmt::Debug {
    /// The index in `candidates` of the backend to use, or `None` if no candidate is
    /// available. Never an unavailable one. `draws` yields uniformly random `u64`s; an
    /// implementation takes as many as it needs.
    fn choose(
        &mut self,
        candidates: &[Candidate<'_>],
        now: Instant,
        draws: &mut dyn FnMut() -> u64,
    ) -> Option<usize>;

    /// The latency, in milliseconds, predicted for the backend the last
    /// [`choose`](Self::choose) returned, if this chooser predicts. The shell keeps it with
    /// the request and hands it back to [`observe`](Self::observe) when the request is over.
    fn predicted_ms(&self) -> Option<f32> {
        None
    }

    /// A request the shell sent where [`choose`](Self::choose) said, predicted to take
    /// `predicted_ms`, took `rtt` and succeeded or not: what a learned chooser checks its
    /// predictions against. The fixed strategies learn nothing here.
    fn observe(&mut self, _predicted_ms: f32, _rtt: Duration, _ok: bool) {}

    /// A new routing model (or none, and why) for a chooser that uses one; the fixed
    /// strategies ignore it.
    fn set_predictor(&mut self, _predictor: crate::proxy::learned::Predictor) {}

    /// Who chooses, for a chooser that uses a model: the model, or its fallback and why.
    fn mode(&self) -> Option<crate::proxy::learned::Mode> {
        None
    }
}

/// The chooser for `strategy`, fresh (a round-robin starts at the first backend). Peak-EWMA
/// routes ask the node's routing model, `predictor`, with P2C as the fallback
/// ([`crate::proxy::learned::Learned`]); the other strategies do what they say.
pub fn chooser(
    strategy: Strategy,
    predictor: crate::proxy::learned::Predictor,
) -> Box<dyn Choose + Send> {
    match strategy {
        Strategy::PeakEwma => Box::new(crate::proxy::learned::Learned::new(predictor)),
        Strategy::RoundRobin => Box::new(RoundRobin::default()),
        Strategy::LeastRequests => Box::new(LeastRequests),
    }
}

/// Power of two choices over [`Load::cost`]: two distinct random available candidates, the
/// cheaper one wins (the first drawn on a tie). Random pairs keep a burst from herding onto
/// the one backend that looked best a moment ago.
#[derive(Debug, Clone, Copy, Default)]
pub struct PeakEwmaP2c;

impl Choose for PeakEwmaP2c {
    fn choose(
        &mut self,
        candidates: &[Candidate<'_>],
        now: Instant,
        draws: &mut dyn FnMut() -> u64,
    ) -> Option<usize> {
        let available = candidates.iter().filter(|c| c.available).count();
        match available {
            0 => None,
            1 => nth_available(candidates, 0),
            n => {
                let a = below(draws(), n);
                // The second from the other n - 1, so the two are always distinct.
                let mut b = below(draws(), n - 1);
                if b >= a {
                    b += 1;
                }
                let a = nth_available(candidates, a)?;
                let b = nth_available(candidates, b)?;
                let cost = |i: usize| {
                    candidates
                        .get(i)
                        .map_or(f64::INFINITY, |c| c.load.cost(now))
                };
                if cost(b).total_cmp(&cost(a)).is_lt() {
                    Some(b)
                } else {
                    Some(a)
                }
            }
        }
    }
}

/// Each available candidate in turn. The cursor is a position in the candidate list, so a
/// list that changes between calls only shifts where the turn continues.
#[derive(Debug, Clone, Copy, Default)]
pub struct RoundRobin {
    next: usize,
}

impl Choose for RoundRobin {
    fn choose(
        &mut self,
        candidates: &[Candidate<'_>],
        _now: Instant,
        _draws: &mut dyn FnMut() -> u64,
    ) -> Option<usize> {
        let n = candidates.len();
        if n == 0 {
            return None;
        }
        let start = self.next % n;
        let chosen = (start..n)
            .chain(0..start)
            .find(|&i| candidates.get(i).is_some_and(|c| c.available))?;
        self.next = chosen + 1;
        Some(chosen)
    }
}

/// The available candidate with the fewest requests in flight; a random one among equals.
#[derive(Debug, Clone, Copy, Default)]
pub struct LeastRequests;

impl Choose for LeastRequests {
    fn choose(
        &mut self,
        candidates: &[Candidate<'_>],
        _now: Instant,
        draws: &mut dyn FnMut() -> u64,
    ) -> Option<usize> {
        let least = candidates
            .iter()
            .filter(|c| c.available)
            .map(|c| c.load.pending())
            .min()?;
        let is_least = |c: &Candidate<'_>| c.available && c.load.pending() == least;
        let ties = candidates.iter().filter(|c| is_least(c)).count();
        let pick = if ties > 1 { below(draws(), ties) } else { 0 };
        candidates
            .iter()
            .enumerate()
            .filter(|(_, c)| is_least(c))
            .nth(pick)
            .map(|(i, _)| i)
    }
}

/// The index of the `n`th available candidate.
fn nth_available(candidates: &[Candidate<'_>], n: usize) -> Option<usize> {
    candidates
        .iter()
        .enumerate()
        .filter(|(_, c)| c.available)
        .nth(n)
        .map(|(i, _)| i)
}

/// A uniformly random `u64` scaled onto `0..n` (`0` for `n == 0`), without a division. The
/// bias is at most `n / 2^64`.
pub(crate) fn below_u64(draw: u64, n: u64) -> u64 {
    // `draw * n / 2^64 < n`, so it fits a u64.
    u64::try_from((u128::from(draw) * u128::from(n)) >> 64).unwrap_or(0)
}

/// [`below_u64`] for an index: a uniformly random draw scaled onto `0..n` (`0` for `n == 0`).
pub fn below(draw: u64, n: usize) -> usize {
    let n64 = u64::try_from(n).unwrap_or(u64::MAX);
    // Below `n`, so it fits a usize.
    usize::try_from(below_u64(draw, n64)).unwrap_or(0)
}

#[cfg(test)]
// One base instant per test from the clock; the code under test sees only what the test adds
// to it.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;
    use proptest::prelude::{any, prop_assert, proptest};

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

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A load that has seen one response of `rtt` at `now`.
    fn observed(now: Instant, rtt: Duration) -> Load {
        let mut load = Load::new(now);
        load.start(now);
        load.end(now, rtt, true);
        load
    }

    #[test]
    fn strategy_names_round_trip_through_from_str_and_serde() {
        for strategy in Strategy::ALL {
            assert_eq!(strategy.as_str().parse::<Strategy>(), Ok(strategy));
            let json = serde_json::to_string(&strategy).expect("serializes");
            assert_eq!(json, format!("\"{strategy}\""));
            let back: Strategy = serde_json::from_str(&json).expect("deserializes");
            assert_eq!(back, strategy);
        }
        assert_eq!(Strategy::default(), Strategy::PeakEwma);
    }

    #[test]
    fn unknown_strategy_names_are_refused_and_the_message_is_bounded() {
        for bad in [
            "",
            "PEAK-EWMA",
            "peak_ewma",
            "round robin",
            " least-requests",
            "p2c",
        ] {
            assert!(bad.parse::<Strategy>().is_err(), "{bad:?}");
            assert!(serde_json::from_str::<Strategy>(&format!("{bad:?}")).is_err());
        }
        let huge = "x".repeat(100_000);
        let err = huge.parse::<Strategy>().expect_err("not a strategy");
        assert!(err.to_string().len() < 200, "{err}");
    }

    #[test]
    fn a_slower_response_raises_the_estimate_at_once_and_a_faster_one_gradually() {
        let t0 = Instant::now();
        let mut load = observed(t0, ms(10));
        assert_eq!(load.estimate_ns(t0), 10e6);

        load.start(t0);
        load.end(t0, ms(500), true);
        assert_eq!(load.estimate_ns(t0), 500e6, "a peak is taken at once");

        // A fast response right after barely moves it; one a decay later moves it by 1 - 1/e.
        load.start(t0);
        load.end(t0 + ms(1), ms(10), true);
        assert!(load.estimate_ns(t0 + ms(1)) > 499e6);
        let mut later = observed(t0, ms(500));
        later.start(t0);
        later.end(t0 + Duration::from_secs(10), ms(10), true);
        let expected = 500e6 / std::f64::consts::E + 10e6 * (1.0 - 1.0 / std::f64::consts::E);
        let got = later.estimate_ns(t0 + Duration::from_secs(10));
        assert!((got - expected).abs() < 1.0, "{got} vs {expected}");
    }

    #[test]
    fn an_idle_estimate_decays_towards_zero_and_cost_scales_with_pending() {
        let t0 = Instant::now();
        let mut load = observed(t0, ms(100));
        assert_eq!(load.cost(t0), 100e6);
        let later = load.cost(t0 + Duration::from_secs(10));
        assert!((later - 100e6 / std::f64::consts::E).abs() < 1.0, "{later}");

        load.start(t0);
        load.start(t0);
        assert_eq!(load.pending(), 2);
        assert_eq!(load.cost(t0), 300e6);
        load.cancel();
        load.cancel();
        load.cancel();
        assert_eq!(load.pending(), 0, "never below zero");
    }

    #[test]
    fn an_untried_backend_is_tried_first_then_costs_the_default_rtt_per_request_in_flight() {
        let t0 = Instant::now();
        let mut load = Load::new(t0);
        assert!(!load.observed());
        assert_eq!(
            load.cost(t0),
            0.0,
            "free until something is in flight there"
        );
        load.start(t0);
        assert_eq!(load.cost(t0), 1e9);
        load.start(t0);
        assert_eq!(load.cost(t0), 2e9, "a burst does not herd onto it");
        load.cancel();
        load.end(t0 + ms(5), ms(5), true);
        assert!(load.observed());
        assert_eq!(load.estimate_ns(t0 + ms(5)), 5e6, "the default is replaced");
    }

    #[test]
    fn mean_tail_floor_and_failure_rate_follow_the_responses() {
        let t0 = Instant::now();
        let mut load = Load::new(t0);
        assert_eq!(
            (load.mean_ns(), load.tail_ns(t0), load.floor_ns()),
            (0.0, 0.0, 0.0)
        );
        load.start(t0);
        load.end(t0, ms(20), false);
        assert_eq!((load.mean_ns(), load.floor_ns()), (20e6, 20e6));
        assert_eq!(
            load.failure_rate(),
            1.0,
            "the first answer is all that is known"
        );

        // A decay later, a fast success: the floor drops to it at once, the mean and the
        // failure rate move by 1 - 1/e, the tail keeps the slow one, decayed.
        let t1 = t0 + Duration::from_secs(10);
        load.start(t1);
        load.end(t1, ms(5), true);
        let keep = 1.0 / std::f64::consts::E;
        assert_eq!(load.floor_ns(), 5e6);
        assert!((load.mean_ns() - (20e6 * keep + 5e6 * (1.0 - keep))).abs() < 1.0);
        assert!((load.failure_rate() - keep).abs() < 1e-9);
        assert!((load.tail_ns(t1) - 20e6 * keep).abs() < 1.0);
        assert_eq!(load.idle(t1 + ms(7)), ms(7));

        // A slow one raises the tail at once and the floor only gradually.
        load.start(t1);
        load.end(t1, ms(300), true);
        assert_eq!(load.tail_ns(t1), 300e6);
        assert_eq!(load.floor_ns(), 5e6, "no time has passed: the floor holds");
    }

    #[test]
    fn stale_or_extreme_times_and_configs_never_panic_or_go_negative() {
        let t0 = Instant::now();
        let mut load = Load::with_config(
            t0 + Duration::from_secs(5),
            LoadConfig {
                decay: Duration::ZERO,
                default_rtt: Duration::MAX,
            },
        );
        assert!(load.cost(t0).is_finite());
        load.start(t0);
        load.end(t0, Duration::MAX, true);
        load.end(t0, Duration::ZERO, true);
        for now in [t0, t0 + Duration::from_secs(1_000_000)] {
            let cost = load.cost(now);
            assert!(cost.is_finite() && cost >= 0.0, "{cost}");
        }
    }

    /// Picks by `chooser` over `loads`, tallied per index.
    fn tally(
        chooser: &mut dyn Choose,
        candidates: &[Candidate<'_>],
        now: Instant,
        rounds: usize,
        seed: u64,
    ) -> Vec<usize> {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut counts = vec![0; candidates.len()];
        for _ in 0..rounds {
            let i = chooser
                .choose(candidates, now, &mut || rng.u64(..))
                .expect("one is available");
            counts[i] += 1;
        }
        counts
    }

    #[test]
    fn p2c_prefers_a_fast_backend_to_a_slow_one() {
        let now = Instant::now();
        let fast = observed(now, ms(10));
        let slow = observed(now, ms(200));
        let candidates = [candidate(&slow), candidate(&fast)];
        let counts = tally(&mut PeakEwmaP2c, &candidates, now, 1000, 1);
        // With two backends, every pair is both of them: the fast one always wins.
        assert_eq!(counts, [0, 1000]);

        // Among four, two slow and two fast, a slow one wins only when the pair is both slow
        // ones: one time in six.
        let loads = [
            observed(now, ms(200)),
            observed(now, ms(10)),
            observed(now, ms(250)),
            observed(now, ms(12)),
        ];
        let candidates: Vec<_> = loads.iter().map(candidate).collect();
        let counts = tally(&mut PeakEwmaP2c, &candidates, now, 12_000, 2);
        let fast = counts[1] + counts[3];
        assert!((9_600..10_400).contains(&fast), "{counts:?}");
        assert!(
            counts[1] > counts[3],
            "the faster of the two wins their pairs: {counts:?}"
        );
    }

    #[test]
    fn p2c_sends_most_traffic_to_the_fast_backend_as_responses_come_in() {
        // Requests every 5 ms to a backend answering in 10 ms and one answering in 100 ms,
        // both untried at first; the shell starts and ends each request as it happens.
        let t0 = Instant::now();
        let rtts = [ms(100), ms(10)];
        let mut loads = [Load::new(t0), Load::new(t0)];
        let mut in_flight: Vec<(Instant, usize)> = Vec::new();
        let mut rng = fastrand::Rng::with_seed(8);
        let mut counts = [0usize; 2];
        for n in 0..10_000u32 {
            let now = t0 + ms(5) * n;
            in_flight.retain(|&(done, i)| {
                if done <= now {
                    loads[i].end(done, rtts[i], true);
                }
                done > now
            });
            let i = {
                let candidates: Vec<_> = loads.iter().map(candidate).collect();
                PeakEwmaP2c
                    .choose(&candidates, now, &mut || rng.u64(..))
                    .expect("available")
            };
            loads[i].start(now);
            in_flight.push((now + rtts[i], i));
            counts[i] += 1;
        }
        assert!(counts[1] > 9_000, "{counts:?}");
        assert!(
            counts[0] > 0,
            "the slow one is still probed now and then: {counts:?}"
        );
    }

    #[test]
    fn p2c_spreads_work_as_the_fast_backend_fills_up() {
        // The shell calls start on each pick; pending raises the fast backend's cost until the
        // slow one is worth using.
        let now = Instant::now();
        let mut loads = [observed(now, ms(10)), observed(now, ms(40))];
        let mut rng = fastrand::Rng::with_seed(3);
        let mut p2c = PeakEwmaP2c;
        for _ in 0..50 {
            let i = {
                let candidates: Vec<_> = loads.iter().map(candidate).collect();
                p2c.choose(&candidates, now, &mut || rng.u64(..))
                    .expect("available")
            };
            loads[i].start(now);
        }
        // Costs balance where 10 * (a + 1) ~ 40 * (b + 1): about 40 and 10 in flight.
        let (a, b) = (loads[0].pending(), loads[1].pending());
        assert!((38..=42).contains(&a) && (8..=12).contains(&b), "{a} {b}");
    }

    #[test]
    fn every_strategy_skips_unavailable_candidates_and_handles_none_or_one() {
        let now = Instant::now();
        let loads = [
            observed(now, ms(1)),
            observed(now, ms(500)),
            observed(now, ms(1)),
        ];
        for strategy in Strategy::ALL {
            let mut chooser = chooser(strategy, Err(crate::proxy::learned::Fallback::NoModel));
            let mut draws = || 0u64;
            assert_eq!(chooser.choose(&[], now, &mut draws), None, "{strategy}");

            let none: Vec<_> = loads
                .iter()
                .map(|l| Candidate {
                    available: false,
                    ..candidate(l)
                })
                .collect();
            assert_eq!(chooser.choose(&none, now, &mut draws), None, "{strategy}");

            // Only the slow, busy one is available: it is the choice.
            let only_middle: Vec<_> = loads
                .iter()
                .enumerate()
                .map(|(i, l)| Candidate {
                    available: i == 1,
                    ..candidate(l)
                })
                .collect();
            let counts = tally(chooser.as_mut(), &only_middle, now, 100, 4);
            assert_eq!(counts, [0, 100, 0], "{strategy}");

            let single = [candidate(&loads[0])];
            assert_eq!(chooser.choose(&single, now, &mut draws), Some(0));
        }
    }

    #[test]
    fn round_robin_cycles_evenly_over_the_available() {
        let now = Instant::now();
        let loads: Vec<_> = (0..4).map(|_| Load::new(now)).collect();
        let mut candidates: Vec<_> = loads.iter().map(candidate).collect();
        let mut rr = RoundRobin::default();
        let order: Vec<_> = (0..8)
            .map(|_| rr.choose(&candidates, now, &mut || 0).expect("available"))
            .collect();
        assert_eq!(order, [0, 1, 2, 3, 0, 1, 2, 3]);

        candidates[2].available = false;
        let counts = tally(&mut rr, &candidates, now, 300, 5);
        assert_eq!(counts, [100, 100, 0, 100]);

        // The list shrinks under the cursor: it wraps instead of failing.
        let mut rr = RoundRobin { next: 17 };
        assert_eq!(rr.choose(&candidates[..1], now, &mut || 0), Some(0));
    }

    #[test]
    fn least_requests_picks_the_fewest_in_flight_and_breaks_ties_at_random() {
        let now = Instant::now();
        let mut loads: Vec<_> = (0..4).map(|_| Load::new(now)).collect();
        for (i, load) in loads.iter_mut().enumerate() {
            for _ in 0..[3, 1, 2, 1][i] {
                load.start(now);
            }
        }
        let candidates: Vec<_> = loads.iter().map(candidate).collect();
        let counts = tally(&mut LeastRequests, &candidates, now, 10_000, 6);
        assert_eq!(counts[0] + counts[2], 0, "{counts:?}");
        assert!((4_500..5_500).contains(&counts[1]), "{counts:?}");

        let mut without_1 = candidates.clone();
        without_1[1].available = false;
        let counts = tally(&mut LeastRequests, &without_1, now, 100, 7);
        assert_eq!(counts, [0, 0, 0, 100]);
    }

    #[test]
    fn below_covers_the_range_without_leaving_it() {
        assert_eq!(below(u64::MAX, 3), 2);
        assert_eq!(below(0, 3), 0);
        assert_eq!(below(u64::MAX, 0), 0);
        assert_eq!(below_u64(u64::MAX, u64::MAX), u64::MAX - 1);
    }

    proptest! {
        #[test]
        fn choices_are_always_available_and_in_range(
            specs in proptest::collection::vec((any::<bool>(), 0u32..5, 0u64..2_000), 0..12),
            seed in any::<u64>(),
            strategy in proptest::sample::select(Strategy::ALL.to_vec()),
        ) {
            let now = Instant::now();
            let loads: Vec<_> = specs.iter().map(|&(_, pending, rtt)| {
                let mut load = observed(now, ms(rtt));
                for _ in 0..pending { load.start(now); }
                load
            }).collect();
            let candidates: Vec<_> = specs.iter().zip(&loads).map(|(&(available, _, _), load)| Candidate {
                available,
                ..candidate(load)
            }).collect();
            let any_available = candidates.iter().any(|c| c.available);
            let mut chooser = chooser(strategy, Err(crate::proxy::learned::Fallback::NoModel));
            let mut rng = fastrand::Rng::with_seed(seed);
            for _ in 0..20 {
                let got = chooser.choose(&candidates, now, &mut || rng.u64(..));
                match got {
                    Some(i) => prop_assert!(candidates[i].available),
                    None => prop_assert!(!any_available),
                }
            }
        }
    }
}
