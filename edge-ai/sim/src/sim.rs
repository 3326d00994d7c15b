//! The discrete-event simulation of one scenario, one seed and one strategy.
//!
//! **The world.** Requests arrive as a Poisson process. Each attempt crosses the network
//! (1 ms per 100 km each way, plus a little and a jitter), then queues at its backend first
//! come first served until one of the backend's workers is free, is served for a lognormal
//! time (times the backend's speed multiplier at that moment and its degradation with the
//! requests in service), and crosses back. A backend that is down refuses at once or lets
//! the request hang; a backend with a `failure` probability refuses that share of requests
//! after about a millisecond. An attempt that has not answered within the scenario's timeout
//! fails at the timeout (the backend still works on it: its worker stays busy).
//!
//! **The proxy.** What `node-daemon/proxy/src/upstream.rs` does, with node-core's own types:
//! per backend a [`Load`] and a [`Breaker`]; the candidates as `Forward::choose` builds them
//! (available while the breaker is not open, `half_open`, the distance, `local`, the host's
//! load); the chosen backend's `breaker.allow` and `load.start`; at the end of an attempt
//! `load.end(now, rtt, ok)`, the breaker's `on_success`/`on_failure` and the chooser's
//! `observe` when it predicted. A failed attempt is sent once more, to whatever the chooser
//! picks then, when the scenario allows a retry and the route's [`RetryBudget`] has one.
//! The backends of the simulated route form one tier (like a route's origins): distance and
//! locality are features for the chooser, not a choice of tier.
//!
//! **Time and chance.** The clock is virtual: one base `Instant` plus the simulated offset,
//! and nothing here reads the real clock or sleeps. Every random number comes from seeded
//! generators with common random numbers: the arrival times come from the seed alone, and
//! what a backend does with an attempt (its network jitter, whether it refuses, its service
//! draw) from the seed, the request, the backend and the attempt's number, so every strategy
//! meets the same traffic and the same backends, and the differences between their results
//! come from their choices.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::{Duration, Instant};

use node_core::proxy::balance::{
    Candidate, Choose, HostLoad, LeastRequests, Load, PeakEwmaP2c, RoundRobin, below,
};
use node_core::proxy::breaker::{Breaker, BreakerConfig, BreakerState};
use node_core::proxy::learned::{
    Learned, Mode, Predict, PredictError, Prediction, ROUTE_WIDTH, route_features,
};
use node_core::proxy::retry::RetryBudget;

use crate::scenario::{Backend, DownMode, Scenario};

/// Who chooses the backend.
#[derive(Debug, Clone)]
pub enum Policy {
    RoundRobin,
    LeastRequests,
    PeakEwma,
    /// node-core's [`Learned`] over this model.
    Model(edge_ai::Model),
    /// What `route record` uses to cover the state space: with probability `epsilon` a
    /// uniformly random available backend, else `base`'s choice.
    Explore {
        base: Box<Policy>,
        epsilon: f64,
    },
}

impl Policy {
    /// The name in the command line and the reports.
    pub fn name(&self) -> &'static str {
        match self {
            Policy::RoundRobin => "round-robin",
            Policy::LeastRequests => "least-requests",
            Policy::PeakEwma => "peak-ewma",
            Policy::Model(_) => "model",
            Policy::Explore { .. } => "explore",
        }
    }
}

/// A [`Predict`] over an [`edge_ai::Model`] that runs one row at a time.
#[derive(Debug)]
pub struct OnnxPredict {
    model: edge_ai::Model,
    out: Vec<f32>,
}

impl OnnxPredict {
    pub fn new(model: edge_ai::Model) -> Self {
        Self {
            model,
            out: Vec::with_capacity(2),
        }
    }
}

impl Predict for OnnxPredict {
    fn predict(&mut self, features: &[f32], out: &mut [Prediction]) -> Result<(), PredictError> {
        for (row, prediction) in features.chunks_exact(ROUTE_WIDTH).zip(out.iter_mut()) {
            self.model
                .run_into(row, &mut self.out)
                .map_err(|error| PredictError(error.to_string()))?;
            let (Some(&ln_latency_ms), Some(&failure)) = (self.out.first(), self.out.get(1)) else {
                return Err(PredictError(format!(
                    "the model gave {} outputs, not 2",
                    self.out.len()
                )));
            };
            *prediction = Prediction::from_outputs(ln_latency_ms, failure);
        }
        Ok(())
    }
}

/// The chooser a [`Policy`] builds.
#[derive(Debug)]
enum Chooser {
    Fixed(Box<dyn Choose + Send>),
    Model(Box<Learned>),
    Explore { base: Box<Chooser>, epsilon: f64 },
}

impl Chooser {
    fn new(policy: &Policy) -> Self {
        match policy {
            Policy::RoundRobin => Chooser::Fixed(Box::new(RoundRobin::default())),
            Policy::LeastRequests => Chooser::Fixed(Box::new(LeastRequests)),
            Policy::PeakEwma => Chooser::Fixed(Box::new(PeakEwmaP2c)),
            Policy::Model(model) => Chooser::Model(Box::new(Learned::new(Ok(Box::new(
                OnnxPredict::new(model.clone()),
            ))))),
            Policy::Explore { base, epsilon } => Chooser::Explore {
                base: Box::new(Chooser::new(base)),
                epsilon: *epsilon,
            },
        }
    }

    fn choose(
        &mut self,
        candidates: &[Candidate<'_>],
        now: Instant,
        draws: &mut dyn FnMut() -> u64,
    ) -> Option<usize> {
        match self {
            Chooser::Fixed(chooser) => chooser.choose(candidates, now, draws),
            Chooser::Model(chooser) => chooser.choose(candidates, now, draws),
            Chooser::Explore { base, epsilon } => {
                if unit(draws()) < *epsilon {
                    let available = candidates.iter().filter(|c| c.available).count();
                    let pick = below(draws(), available);
                    candidates
                        .iter()
                        .enumerate()
                        .filter(|(_, c)| c.available)
                        .nth(pick)
                        .map(|(i, _)| i)
                } else {
                    base.choose(candidates, now, draws)
                }
            }
        }
    }

    fn predicted_ms(&self) -> Option<f32> {
        match self {
            Chooser::Fixed(chooser) => chooser.predicted_ms(),
            Chooser::Model(chooser) => chooser.predicted_ms(),
            // Its random choices were not predicted; its base's were, but nothing checks.
            Chooser::Explore { .. } => None,
        }
    }

    fn observe(&mut self, predicted_ms: f32, rtt: Duration, ok: bool) {
        match self {
            Chooser::Fixed(chooser) => chooser.observe(predicted_ms, rtt, ok),
            Chooser::Model(chooser) => chooser.observe(predicted_ms, rtt, ok),
            Chooser::Explore { base, .. } => base.observe(predicted_ms, rtt, ok),
        }
    }

    /// Whether the model chose (not its fallback), for a learned chooser.
    fn model_mode(&self) -> Option<bool> {
        match self {
            Chooser::Model(chooser) => Some(chooser.mode() == Mode::Model),
            _ => None,
        }
    }
}

/// One training row: the chosen candidate's features at send time, and what the attempt met.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Row {
    pub features: [f32; ROUTE_WIDTH],
    pub latency_ms: f64,
    pub failed: bool,
}

/// What one run measured, after the warm-up.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Each counted request's latency as its client saw it (every attempt, until the answer
    /// or the last failure), in milliseconds, and whether it failed in the end.
    pub requests: Vec<(f64, bool)>,
    /// Attempts sent to each backend.
    pub attempts: Vec<u64>,
    /// Retries sent.
    pub retries: u64,
    /// Choices made by a learned chooser's model, and by its fallback.
    pub model_choices: u64,
    pub fallback_choices: u64,
    /// The mean `|ln((observed + 1) / (predicted + 1))|` over the successful attempts a
    /// chooser predicted, and how many there were.
    pub prediction_error: f64,
    pub predicted: u64,
    /// Training rows, when asked for.
    pub rows: Vec<Row>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    /// The next request arrives.
    Arrival,
    /// An attempt reaches its backend.
    Reach(usize),
    /// A backend has served an attempt.
    Served(usize),
    /// An attempt's answer reaches the proxy: `true` for a success.
    Answer(usize, bool),
    /// An attempt's timeout.
    Timeout(usize),
}

#[derive(Debug)]
struct BackendState {
    load: Load,
    breaker: Breaker,
    busy: u32,
    queue: VecDeque<usize>,
}

#[derive(Debug)]
struct Attempt {
    request: usize,
    backend: usize,
    number: u8,
    sent_ns: u64,
    one_way_ns: u64,
    /// The service time drawn for it, before the speed and degradation multipliers.
    service_ms: f64,
    predicted_ms: Option<f32>,
    features: Option<[f32; ROUTE_WIDTH]>,
    ended: bool,
}

#[derive(Debug)]
struct Request {
    arrival_ns: u64,
}

/// Runs `scenario` with `seed` and `policy`; with `record`, keeps a training row per attempt.
pub fn run(scenario: &Scenario, seed: u64, policy: &Policy, record: bool) -> Outcome {
    let mut engine = Engine::new(scenario, seed, policy, record);
    engine.run();
    engine.out
}

struct Engine<'a> {
    scenario: &'a Scenario,
    seed: u64,
    base: Instant,
    now_ns: u64,
    seq: u64,
    events: BinaryHeap<Reverse<(u64, u64, Event)>>,
    backends: Vec<BackendState>,
    attempts: Vec<Attempt>,
    requests: Vec<Request>,
    chooser: Chooser,
    arrivals: fastrand::Rng,
    draws: fastrand::Rng,
    budget: RetryBudget,
    duration_ns: u64,
    warmup_ns: u64,
    timeout_ns: u64,
    record: bool,
    out: Outcome,
}

/// Streams of the seed, so that the arrivals and the chooser's draws never share numbers.
const ARRIVALS: u64 = 0xA771_7A15;
const CHOOSER: u64 = 0xC400_5E55;

impl<'a> Engine<'a> {
    fn new(scenario: &'a Scenario, seed: u64, policy: &Policy, record: bool) -> Self {
        // The one reading of the clock: every time the proxy's types see is this plus the
        // simulated offset.
        let base = Instant::now();
        let backends = scenario
            .backends
            .iter()
            .map(|_| BackendState {
                load: Load::new(base),
                breaker: Breaker::new(BreakerConfig::default()),
                busy: 0,
                queue: VecDeque::new(),
            })
            .collect();
        Self {
            scenario,
            seed,
            base,
            now_ns: 0,
            seq: 0,
            events: BinaryHeap::new(),
            backends,
            attempts: Vec::new(),
            requests: Vec::new(),
            chooser: Chooser::new(policy),
            arrivals: fastrand::Rng::with_seed(mix(&[seed, ARRIVALS])),
            draws: fastrand::Rng::with_seed(mix(&[seed, CHOOSER])),
            budget: RetryBudget::default(),
            duration_ns: secs_to_ns(scenario.duration_secs),
            warmup_ns: secs_to_ns(scenario.warmup_secs),
            timeout_ns: ms_to_ns(scenario.timeout_ms),
            record,
            out: Outcome {
                attempts: vec![0; scenario.backends.len()],
                ..Outcome::default()
            },
        }
    }

    fn at(&mut self, time_ns: u64, event: Event) {
        self.seq += 1;
        self.events.push(Reverse((time_ns, self.seq, event)));
    }

    fn now(&self) -> Instant {
        self.base + Duration::from_nanos(self.now_ns)
    }

    fn run(&mut self) {
        if let Some(first) = self.next_arrival(0) {
            self.at(first, Event::Arrival);
        }
        while let Some(Reverse((time_ns, _, event))) = self.events.pop() {
            self.now_ns = time_ns;
            match event {
                Event::Arrival => self.arrival(),
                Event::Reach(attempt) => self.reach(attempt),
                Event::Served(attempt) => self.served(attempt),
                Event::Answer(attempt, ok) => self.end(attempt, ok),
                Event::Timeout(attempt) => self.end(attempt, false),
            }
        }
        if self.out.predicted > 0 {
            self.out.prediction_error /= self.out.predicted as f64;
        }
    }

    /// The time of the arrival after `from_ns`, if before the end.
    fn next_arrival(&mut self, from_ns: u64) -> Option<u64> {
        let arrivals = &self.scenario.arrivals;
        let mut t = from_ns as f64 / 1e9;
        loop {
            if t >= self.scenario.duration_secs {
                return None;
            }
            let rate = arrivals
                .schedule
                .iter()
                .rfind(|s| s.at_secs <= t)
                .map_or(arrivals.rate_per_sec, |s| s.rate_per_sec);
            let boundary = arrivals
                .schedule
                .iter()
                .map(|s| s.at_secs)
                .find(|&at| at > t)
                .unwrap_or(self.scenario.duration_secs)
                .min(self.scenario.duration_secs);
            if rate > 0.0 {
                let gap = -(1.0 - self.arrivals.f64()).ln() / rate;
                if t + gap < boundary {
                    return Some(secs_to_ns(t + gap).max(from_ns + 1));
                }
            }
            // Memoryless: start again at the boundary with its rate.
            t = boundary;
        }
    }

    fn arrival(&mut self) {
        let request = self.requests.len();
        self.requests.push(Request {
            arrival_ns: self.now_ns,
        });
        let now = self.now();
        self.budget.deposit(now);
        self.send(request, 0);
        if let Some(next) = self.next_arrival(self.now_ns) {
            self.at(next, Event::Arrival);
        }
    }

    /// Chooses a backend for `request`'s attempt `number` and sends it there, as
    /// `Forward::choose` and `Forward::attempt` do.
    fn send(&mut self, request: usize, number: u8) {
        let now = self.now();
        let Some((backend, predicted_ms, features)) = self.choose(now) else {
            // Nothing available: the request fails at once.
            self.finish(request, false);
            return;
        };
        let b = &self.scenario.backends[backend];
        let mut rng = fastrand::Rng::with_seed(mix(&[
            self.seed,
            request as u64,
            backend as u64,
            u64::from(number),
        ]));
        let crate::scenario::Draw {
            one_way_ms,
            refused,
            service_ms,
        } = b.draw(&mut rng);
        let one_way_ns = ms_to_ns(one_way_ms);
        let attempt = self.attempts.len();
        self.attempts.push(Attempt {
            request,
            backend,
            number,
            sent_ns: self.now_ns,
            one_way_ns,
            service_ms,
            predicted_ms,
            features,
            ended: false,
        });
        self.out.attempts[backend] += 1;
        self.at(
            self.now_ns.saturating_add(self.timeout_ns),
            Event::Timeout(attempt),
        );
        let reach_ns = self.now_ns + one_way_ns;
        match b.down_at(reach_ns as f64 / 1e9) {
            Some(DownMode::Hang) => {}
            Some(DownMode::Refuse) => {
                self.at(reach_ns + MS + one_way_ns, Event::Answer(attempt, false))
            }
            None if refused => self.at(reach_ns + MS + one_way_ns, Event::Answer(attempt, false)),
            None => self.at(reach_ns, Event::Reach(attempt)),
        }
    }

    /// The chosen backend, marked as started, with the chooser's prediction and (when
    /// recording) its features as the chooser saw them.
    #[allow(clippy::type_complexity)]
    fn choose(&mut self, now: Instant) -> Option<(usize, Option<f32>, Option<[f32; ROUTE_WIDTH]>)> {
        let states: Vec<BreakerState> =
            self.backends.iter().map(|b| b.breaker.state(now)).collect();
        let mut available: Vec<bool> = states.iter().map(|s| *s != BreakerState::Open).collect();
        let draws = &mut self.draws;
        let mut draw = || draws.u64(..);
        for _ in 0..=self.backends.len() {
            let candidates: Vec<Candidate<'_>> = self
                .backends
                .iter()
                .zip(&self.scenario.backends)
                .zip(available.iter().zip(&states))
                .map(|((state, b), (available, breaker))| Candidate {
                    load: &state.load,
                    available: *available,
                    half_open: *breaker == BreakerState::HalfOpen,
                    distance_km: Some(b.distance_km),
                    local: b.local,
                    host: host(b),
                })
                .collect();
            let model_mode = self.chooser.model_mode();
            let chosen = self.chooser.choose(&candidates, now, &mut draw)?;
            match model_mode {
                Some(true) => self.out.model_choices += 1,
                Some(false) => self.out.fallback_choices += 1,
                None => {}
            }
            let predicted_ms = self.chooser.predicted_ms();
            let features = self.record.then(|| {
                let mut row = [0.0; ROUTE_WIDTH];
                if let Some(candidate) = candidates.get(chosen) {
                    route_features(candidate, now, &mut row);
                }
                row
            });
            drop(candidates);
            let state = self.backends.get_mut(chosen)?;
            if state.breaker.allow(now) {
                state.load.start(now);
                return Some((chosen, predicted_ms, features));
            }
            // Half-open with its probe slot taken: not this one, this time.
            if let Some(a) = available.get_mut(chosen) {
                *a = false;
            }
        }
        None
    }

    fn reach(&mut self, attempt: usize) {
        let backend = self.attempts[attempt].backend;
        let state = &mut self.backends[backend];
        let workers = self.scenario.backends[backend].workers;
        if state.busy < workers {
            self.serve(attempt);
        } else {
            state.queue.push_back(attempt);
        }
    }

    /// A worker starts on `attempt`.
    fn serve(&mut self, attempt: usize) {
        let a = &self.attempts[attempt];
        let b = &self.scenario.backends[a.backend];
        let state = &mut self.backends[a.backend];
        state.busy += 1;
        let served_ms = b.served_ms(a.service_ms, self.now_ns as f64 / 1e9, state.busy);
        let done = self.now_ns.saturating_add(ms_to_ns(served_ms));
        self.at(done, Event::Served(attempt));
    }

    fn served(&mut self, attempt: usize) {
        let a = &self.attempts[attempt];
        let backend = a.backend;
        let answer = self.now_ns + a.one_way_ns;
        self.at(answer, Event::Answer(attempt, true));
        let state = &mut self.backends[backend];
        state.busy = state.busy.saturating_sub(1);
        if let Some(next) = state.queue.pop_front() {
            self.serve(next);
        }
    }

    /// An attempt is over, as `InFlight::end` reports it; a failure is retried once when
    /// the scenario and the budget allow.
    fn end(&mut self, attempt: usize, ok: bool) {
        let now = self.now();
        let a = &mut self.attempts[attempt];
        if a.ended {
            return;
        }
        a.ended = true;
        let rtt = Duration::from_nanos(self.now_ns - a.sent_ns);
        let (request, number, predicted_ms, features) =
            (a.request, a.number, a.predicted_ms, a.features);
        let state = &mut self.backends[a.backend];
        state.load.end(now, rtt, ok);
        if ok {
            state.breaker.on_success(now);
        } else {
            state.breaker.on_failure(now);
        }
        if let Some(predicted_ms) = predicted_ms {
            self.chooser.observe(predicted_ms, rtt, ok);
            if ok {
                let observed = rtt.as_secs_f64() * 1000.0;
                let error = ((observed + 1.0) / (f64::from(predicted_ms).max(0.0) + 1.0))
                    .ln()
                    .abs();
                if error.is_finite() {
                    self.out.prediction_error += error;
                    self.out.predicted += 1;
                }
            }
        }
        if let Some(features) = features {
            self.out.rows.push(Row {
                features,
                latency_ms: rtt.as_secs_f64() * 1000.0,
                failed: !ok,
            });
        }
        if !ok && u32::from(number) < self.scenario.retries && self.budget.withdraw(now) {
            self.out.retries += 1;
            self.send(request, number + 1);
            return;
        }
        self.finish(request, ok);
    }

    fn finish(&mut self, request: usize, ok: bool) {
        let arrival_ns = self.requests[request].arrival_ns;
        if arrival_ns >= self.warmup_ns && arrival_ns < self.duration_ns {
            let latency_ms = (self.now_ns - arrival_ns) as f64 / 1e6;
            self.out.requests.push((latency_ms, !ok));
        }
    }
}

const MS: u64 = 1_000_000;

fn host(b: &Backend) -> Option<HostLoad> {
    (b.host_cpu.is_some() || b.host_memory.is_some()).then(|| HostLoad {
        cpu: b.host_cpu.unwrap_or(0.0),
        memory: b.host_memory.unwrap_or(0.0),
    })
}

fn ms_to_ns(ms: f64) -> u64 {
    // `as` saturates; scenarios keep every time far below u64's range.
    (ms * 1e6).round().max(0.0) as u64
}

fn secs_to_ns(secs: f64) -> u64 {
    ms_to_ns(secs * 1000.0)
}

/// A draw in `[0, 1)`.
fn unit(draw: u64) -> f64 {
    (draw >> 11) as f64 / (1u64 << 53) as f64
}

/// SplitMix64 over `words`: a seed for one stream of random numbers.
pub fn mix(words: &[u64]) -> u64 {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    for &word in words {
        state = state.wrapping_add(word).wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        state = z ^ (z >> 31);
    }
    state
}
