//! One workload instance's lifecycle as a state machine without I/O: when to spawn, when to
//! probe, when to signal, when to restart and how long to back off.
//!
//! [`Lifecycle`] takes inputs (`start`, `handle_spawned`, `handle_exit`, `handle_probe`,
//! `handle_timeout`, `stop`), each with `now`, and answers with [`Action`]s from
//! [`Lifecycle::poll_action`] and the next deadline from [`Lifecycle::poll_timeout`]. The
//! supervisor's tokio task around it spawns, signals and probes; every decision is made here.
//!
//! Backoff between restarts is exponential with full jitter ([`crate::backoff`]),
//! `random(0 ..= min(cap, base * 2^attempt))`, so workloads that fail together (a missing network, a full disk) do not restart
//! in lockstep. It starts again from `base` once an instance has run healthily for
//! `reset_after`. `crash_restarts` restarts within `crash_window` is a crash loop: the instance
//! is reported as `Backoff` with "crash loop" and waits `crash_delay/2 ..= crash_delay`.
//!
//! It never reads the clock, never touches a process, a file or a socket, and draws randomness
//! only from the seed it is given: its tests run minutes of restarts in microseconds.

use crate::backoff::{Backoff, BackoffPolicy, jitter};
use crate::spec::{HealthProbe, RestartPolicy};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Where a workload instance is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Accepted, not started yet.
    Pending,
    /// Its artifact is being fetched. Reported by the daemon, which fetches before it hands
    /// the workload to the supervisor; a [`Lifecycle`] never enters this state itself.
    Downloading,
    /// Being started, or started and not yet passing its health check.
    Starting,
    /// Alive (and healthy, if it has a probe).
    Running,
    /// Alive but failing its health check.
    Unhealthy,
    /// Exited; waiting before the next start. The message says why and for how long
    /// (`crash loop` when it restarts too often).
    Backoff,
    /// Exited unsuccessfully and its policy says not to restart.
    Failed,
    /// Stopped on request, or exited successfully with a policy that does not restart it.
    Stopped,
}

/// How restarts are paced. The defaults suit a node that must recover on its own for weeks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartTuning {
    /// Backoff ceiling after the first failure.
    pub backoff_base: Duration,
    /// Largest backoff outside a crash loop.
    pub backoff_cap: Duration,
    /// An instance that ran healthily this long starts its next backoff from `backoff_base`.
    pub reset_after: Duration,
    /// This many restarts ...
    pub crash_restarts: u32,
    /// ... within this window is a crash loop.
    pub crash_window: Duration,
    /// A crash loop waits between half this and this before the next attempt.
    pub crash_delay: Duration,
}

impl Default for RestartTuning {
    fn default() -> Self {
        Self {
            backoff_base: Duration::from_millis(500),
            backoff_cap: Duration::from_secs(300),
            reset_after: Duration::from_secs(60),
            crash_restarts: 5,
            crash_window: Duration::from_secs(120),
            crash_delay: Duration::from_secs(600),
        }
    }
}

/// What the shell must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Start the process; answer with `handle_spawned` or `handle_spawn_failed`.
    Spawn,
    /// Run the health check once; answer with `handle_probe`.
    Probe,
    /// Send SIGTERM to everything the instance started.
    Terminate,
    /// Send SIGKILL to everything the instance started.
    Kill,
}

/// How a process ended, as the shell observed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// The exit status, if it exited.
    pub code: Option<i32>,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
    /// The kernel's OOM killer killed something in the instance's group.
    pub oom_killed: bool,
}

impl Exit {
    pub fn code(code: i32) -> Self {
        Self {
            code: Some(code),
            signal: None,
            oom_killed: false,
        }
    }

    pub fn signal(signal: i32) -> Self {
        Self {
            code: None,
            signal: Some(signal),
            oom_killed: false,
        }
    }

    fn success(&self) -> bool {
        self.code == Some(0) && !self.oom_killed
    }

    /// The shell convention: the exit status, or 128 + the signal number.
    pub fn exit_code(&self) -> Option<i32> {
        self.code.or(self.signal.map(|s| 128 + s))
    }

    fn describe(&self) -> String {
        let how = match (self.code, self.signal) {
            (Some(c), _) => format!("exited with code {c}"),
            (None, Some(s)) => format!("killed by signal {s}"),
            (None, None) => "exited".to_owned(),
        };
        if self.oom_killed {
            format!("{how}: out of memory (OOM killer, memory limit reached)")
        } else {
            how
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum AfterStop {
    /// Asked to stop: end there.
    End,
    /// Stopping to restart (unhealthy too long); the reason goes in the status.
    Restart(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Idle,
    Spawning {
        stop_requested: bool,
    },
    Alive,
    Stopping {
        kill_at: Instant,
        killed: bool,
        then: AfterStop,
    },
    Waiting {
        until: Instant,
    },
    Done,
}

/// Health thresholds, as durations.
#[derive(Debug, Clone, Copy)]
struct Health {
    interval: Duration,
    initial_delay: Duration,
    success_threshold: u32,
    failure_threshold: u32,
    unhealthy_restart: Option<Duration>,
}

impl From<&HealthProbe> for Health {
    fn from(p: &HealthProbe) -> Self {
        Self {
            interval: Duration::from_millis(p.interval_ms),
            initial_delay: Duration::from_millis(p.initial_delay_ms),
            success_threshold: p.success_threshold.max(1),
            failure_threshold: p.failure_threshold.max(1),
            unhealthy_restart: p.unhealthy_restart_ms.map(Duration::from_millis),
        }
    }
}

/// The reported part of the lifecycle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub state: State,
    pub restarts: u32,
    pub exit_code: Option<i32>,
    pub message: String,
}

/// One instance's lifecycle. See the module docs.
#[derive(Debug)]
pub struct Lifecycle {
    policy: RestartPolicy,
    health: Option<Health>,
    tuning: RestartTuning,
    stop_grace: Duration,
    rng: fastrand::Rng,
    phase: Phase,
    report: Report,
    /// Between restarts outside a crash loop; reset by a healthy run of `reset_after`.
    backoff: Backoff,
    /// When recent restarts were decided, oldest first; at most `crash_restarts` long.
    recent: VecDeque<Instant>,
    /// Since when the instance has been healthy (running, and passing its probe if it has one).
    healthy_since: Option<Instant>,
    unhealthy_since: Option<Instant>,
    successes: u32,
    failures: u32,
    next_probe: Option<Instant>,
    probe_in_flight: bool,
    actions: VecDeque<Action>,
}

impl Lifecycle {
    pub fn new(
        policy: RestartPolicy,
        health: Option<&HealthProbe>,
        stop_grace: Duration,
        tuning: RestartTuning,
        seed: u64,
    ) -> Self {
        Self {
            policy,
            health: health.map(Health::from),
            tuning,
            stop_grace,
            rng: fastrand::Rng::with_seed(seed),
            phase: Phase::Idle,
            report: Report {
                state: State::Pending,
                restarts: 0,
                exit_code: None,
                message: String::new(),
            },
            backoff: Backoff::new(BackoffPolicy {
                base: tuning.backoff_base,
                max: tuning.backoff_cap,
            }),
            recent: VecDeque::new(),
            healthy_since: None,
            unhealthy_since: None,
            successes: 0,
            failures: 0,
            next_probe: None,
            probe_in_flight: false,
            actions: VecDeque::new(),
        }
    }

    pub fn report(&self) -> &Report {
        &self.report
    }

    /// Nothing will happen any more: the instance is `Stopped` or `Failed` and no process is
    /// left.
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When `handle_timeout` must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Waiting { until } => Some(*until),
            Phase::Stopping {
                kill_at,
                killed: false,
                ..
            } => Some(*kill_at),
            Phase::Alive => {
                let probe = self.next_probe.filter(|_| !self.probe_in_flight);
                let restart = self.unhealthy_restart_at();
                match (probe, restart) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            }
            _ => None,
        }
    }

    fn unhealthy_restart_at(&self) -> Option<Instant> {
        if self.policy == RestartPolicy::Never {
            return None;
        }
        let after = self.health?.unhealthy_restart?;
        Some(self.unhealthy_since? + after)
    }

    /// Start the first instance.
    pub fn start(&mut self, _now: Instant) {
        if self.phase == Phase::Idle {
            self.spawn("starting");
        }
    }

    fn spawn(&mut self, message: &str) {
        self.phase = Phase::Spawning {
            stop_requested: false,
        };
        self.report.state = State::Starting;
        self.report.message = message.to_owned();
        self.actions.push_back(Action::Spawn);
    }

    /// The process started.
    pub fn handle_spawned(&mut self, now: Instant) {
        let Phase::Spawning { stop_requested } = self.phase else {
            return;
        };
        self.phase = Phase::Alive;
        self.successes = 0;
        self.failures = 0;
        self.unhealthy_since = None;
        self.probe_in_flight = false;
        match self.health {
            Some(h) => {
                self.healthy_since = None;
                self.next_probe = Some(now + h.initial_delay);
                self.report.state = State::Starting;
                self.report.message = "started; waiting for the health check".into();
            }
            None => {
                self.healthy_since = Some(now);
                self.next_probe = None;
                self.report.state = State::Running;
                self.report.message = "running".into();
            }
        }
        if stop_requested {
            self.stop(now);
        }
    }

    /// The process could not be started. Retried like a failed exit.
    pub fn handle_spawn_failed(&mut self, now: Instant, reason: &str) {
        let Phase::Spawning { stop_requested } = self.phase else {
            return;
        };
        let why = format!("cannot start: {reason}");
        if stop_requested {
            self.finish(State::Stopped, why);
        } else if self.policy == RestartPolicy::Never {
            self.finish(State::Failed, why);
        } else {
            self.schedule_restart(now, &why);
        }
    }

    /// The process is gone (and the shell has cleared whatever it left behind).
    pub fn handle_exit(&mut self, now: Instant, exit: Exit) {
        self.report.exit_code = exit.exit_code();
        self.probe_in_flight = false;
        self.next_probe = None;
        match std::mem::replace(&mut self.phase, Phase::Done) {
            Phase::Alive => {
                let restart = match self.policy {
                    RestartPolicy::Always => true,
                    RestartPolicy::OnFailure => !exit.success(),
                    RestartPolicy::Never => false,
                };
                if restart {
                    self.schedule_restart(now, &exit.describe());
                } else if exit.success() {
                    self.finish(State::Stopped, exit.describe());
                } else {
                    self.finish(State::Failed, exit.describe());
                }
            }
            Phase::Stopping { then, killed, .. } => match then {
                AfterStop::End => {
                    let how = if killed {
                        "stopped (SIGKILL after the grace period)"
                    } else {
                        "stopped"
                    };
                    self.finish(State::Stopped, how.into());
                }
                AfterStop::Restart(reason) => self.schedule_restart(now, &reason),
            },
            // A late exit for a process we no longer track: keep the phase we had.
            other => self.phase = other,
        }
    }

    /// A health check finished.
    pub fn handle_probe(&mut self, now: Instant, result: Result<(), String>) {
        let Some(health) = self.health else {
            return;
        };
        if self.phase != Phase::Alive || !self.probe_in_flight {
            return;
        }
        self.probe_in_flight = false;
        self.next_probe = Some(now + health.interval);
        match result {
            Ok(()) => {
                self.failures = 0;
                self.successes = self.successes.saturating_add(1);
                if self.report.state != State::Running && self.successes >= health.success_threshold
                {
                    self.report.state = State::Running;
                    self.report.message = "healthy".into();
                    self.healthy_since = Some(now);
                    self.unhealthy_since = None;
                }
            }
            Err(reason) => {
                self.successes = 0;
                self.failures = self.failures.saturating_add(1);
                if self.report.state != State::Unhealthy
                    && self.failures >= health.failure_threshold
                {
                    self.report.state = State::Unhealthy;
                    self.report.message =
                        format!("health check failed {} times: {reason}", self.failures);
                    self.healthy_since = None;
                    self.unhealthy_since = Some(now);
                }
            }
        }
    }

    /// A deadline from `poll_timeout` has passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        match &mut self.phase {
            Phase::Waiting { until } if now >= *until => {
                self.report.restarts = self.report.restarts.saturating_add(1);
                self.spawn("restarting");
            }
            Phase::Stopping {
                kill_at, killed, ..
            } if !*killed && now >= *kill_at => {
                *killed = true;
                self.actions.push_back(Action::Kill);
            }
            Phase::Alive => {
                if let Some(at) = self.unhealthy_restart_at()
                    && now >= at
                {
                    let for_ = at.saturating_duration_since(self.unhealthy_since.unwrap_or(at));
                    let reason = format!("unhealthy for {} ms: restarting", for_.as_millis());
                    self.report.message = reason.clone();
                    self.terminate(now, AfterStop::Restart(reason));
                    return;
                }
                if !self.probe_in_flight && self.next_probe.is_some_and(|t| now >= t) {
                    self.probe_in_flight = true;
                    self.actions.push_back(Action::Probe);
                }
            }
            _ => {}
        }
    }

    /// Stop for good: SIGTERM, SIGKILL after the grace period, then `Stopped`.
    pub fn stop(&mut self, now: Instant) {
        match &mut self.phase {
            Phase::Idle | Phase::Waiting { .. } => self.finish(State::Stopped, "stopped".into()),
            Phase::Spawning { stop_requested } => *stop_requested = true,
            Phase::Alive => {
                self.report.message = "stopping".into();
                self.terminate(now, AfterStop::End);
            }
            Phase::Stopping { then, .. } => *then = AfterStop::End,
            Phase::Done => {}
        }
    }

    fn terminate(&mut self, now: Instant, then: AfterStop) {
        self.phase = Phase::Stopping {
            kill_at: now + self.stop_grace,
            killed: false,
            then,
        };
        self.next_probe = None;
        self.actions.push_back(Action::Terminate);
    }

    fn finish(&mut self, state: State, message: String) {
        self.phase = Phase::Done;
        self.report.state = state;
        self.report.message = message;
        self.healthy_since = None;
        self.unhealthy_since = None;
    }

    fn schedule_restart(&mut self, now: Instant, why: &str) {
        let t = self.tuning;
        if self
            .healthy_since
            .is_some_and(|since| now.saturating_duration_since(since) >= t.reset_after)
        {
            self.backoff.reset();
        }
        self.healthy_since = None;
        self.unhealthy_since = None;

        while self
            .recent
            .front()
            .is_some_and(|&at| now.saturating_duration_since(at) > t.crash_window)
        {
            self.recent.pop_front();
        }
        self.recent.push_back(now);
        let limit = t.crash_restarts.max(1) as usize;
        while self.recent.len() > limit {
            self.recent.pop_front();
        }

        let (delay, message) = if self.recent.len() >= limit {
            let n = self.recent.len();
            // A fresh window after the long wait: it gets `crash_restarts` more tries.
            self.recent.clear();
            let half = t.crash_delay / 2;
            let delay = half + jitter(t.crash_delay - half, self.rng.u64(..));
            let message = format!(
                "crash loop: {n} restarts within {} s ({why}); next attempt in {} ms",
                t.crash_window.as_secs(),
                delay.as_millis()
            );
            (delay, message)
        } else {
            let delay = self.backoff.next_delay(self.rng.u64(..));
            (
                delay,
                format!("{why}; restarting in {} ms", delay.as_millis()),
            )
        };
        self.phase = Phase::Waiting { until: now + delay };
        self.report.state = State::Backoff;
        self.report.message = message;
    }
}

#[cfg(test)]
// One base instant per test from the clock; the machine sees only what the test adds to it.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;
    use crate::spec::HealthCheck;

    const GRACE: Duration = Duration::from_secs(10);

    fn machine(policy: RestartPolicy) -> Lifecycle {
        Lifecycle::new(policy, None, GRACE, RestartTuning::default(), 7)
    }

    fn probe() -> HealthProbe {
        HealthProbe {
            interval_ms: 1000,
            success_threshold: 2,
            failure_threshold: 3,
            unhealthy_restart_ms: Some(30_000),
            ..HealthProbe::new(HealthCheck::Tcp { port: 80 })
        }
    }

    fn drain(m: &mut Lifecycle) -> Vec<Action> {
        std::iter::from_fn(|| m.poll_action()).collect()
    }

    /// Starts the machine and reports the spawn as done, at `now`.
    fn running(m: &mut Lifecycle, now: Instant) {
        m.start(now);
        assert_eq!(drain(m), [Action::Spawn]);
        m.handle_spawned(now);
    }

    /// Jumps to the next deadline, fires it and returns the time and the actions.
    fn advance(m: &mut Lifecycle) -> (Instant, Vec<Action>) {
        let at = m.poll_timeout().expect("a deadline");
        m.handle_timeout(at);
        (at, drain(m))
    }

    #[test]
    fn never_reports_failed_with_the_exit_code() {
        let t0 = Instant::now();
        let mut m = machine(RestartPolicy::Never);
        assert_eq!(m.report().state, State::Pending);
        running(&mut m, t0);
        assert_eq!(m.report().state, State::Running);
        m.handle_exit(t0 + Duration::from_secs(1), Exit::code(3));
        assert_eq!(m.report().state, State::Failed);
        assert_eq!(m.report().exit_code, Some(3));
        assert!(m.is_done());
        assert_eq!(m.poll_timeout(), None);
        assert!(drain(&mut m).is_empty());

        let mut m = machine(RestartPolicy::Never);
        running(&mut m, t0);
        m.handle_exit(t0, Exit::code(0));
        assert_eq!(m.report().state, State::Stopped);
        assert_eq!(m.report().exit_code, Some(0));
    }

    #[test]
    fn on_failure_restarts_failures_only() {
        let t0 = Instant::now();
        let mut m = machine(RestartPolicy::OnFailure);
        running(&mut m, t0);
        m.handle_exit(t0, Exit::code(0));
        assert_eq!(m.report().state, State::Stopped);

        let mut m = machine(RestartPolicy::OnFailure);
        running(&mut m, t0);
        m.handle_exit(t0, Exit::signal(9));
        assert_eq!(m.report().state, State::Backoff);
        assert_eq!(m.report().exit_code, Some(137));
        let (_, actions) = advance(&mut m);
        assert_eq!(actions, [Action::Spawn]);
        assert_eq!(m.report().state, State::Starting);
        assert_eq!(m.report().restarts, 1);
    }

    #[test]
    fn always_restarts_a_clean_exit_too() {
        let t0 = Instant::now();
        let mut m = machine(RestartPolicy::Always);
        running(&mut m, t0);
        m.handle_exit(t0, Exit::code(0));
        assert_eq!(m.report().state, State::Backoff);
    }

    #[test]
    fn an_oom_kill_is_a_failure_and_says_so() {
        let t0 = Instant::now();
        let mut m = machine(RestartPolicy::Never);
        running(&mut m, t0);
        m.handle_exit(
            t0,
            Exit {
                oom_killed: true,
                ..Exit::signal(9)
            },
        );
        assert_eq!(m.report().state, State::Failed);
        assert_eq!(m.report().exit_code, Some(137));
        assert!(m.report().message.contains("OOM"), "{}", m.report().message);
    }

    /// Fails `n` times in a row, each right after starting, and returns the backoff delays.
    fn fail_fast(m: &mut Lifecycle, mut now: Instant, n: usize) -> (Instant, Vec<Duration>) {
        let mut delays = Vec::new();
        for _ in 0..n {
            m.handle_exit(now, Exit::code(1));
            let (at, actions) = advance(m);
            assert_eq!(actions, [Action::Spawn]);
            delays.push(at - now);
            now = at;
            m.handle_spawned(now);
        }
        (now, delays)
    }

    #[test]
    fn backoff_grows_within_full_jitter_bounds() {
        let tuning = RestartTuning {
            crash_restarts: u32::MAX,
            ..RestartTuning::default()
        };
        let mut largest = [Duration::ZERO; 12];
        for seed in 0..200 {
            let t0 = Instant::now();
            let mut m = Lifecycle::new(RestartPolicy::Always, None, GRACE, tuning, seed);
            running(&mut m, t0);
            let (_, delays) = fail_fast(&mut m, t0, 12);
            for (n, d) in delays.iter().enumerate() {
                let ceiling = (tuning.backoff_base * (1 << n)).min(tuning.backoff_cap);
                assert!(*d <= ceiling, "attempt {n}: {d:?} > {ceiling:?}");
                largest[n] = largest[n].max(*d);
            }
        }
        // Over 200 seeds the largest delay of each attempt is near its ceiling: it grows
        // until the cap.
        for n in 1..10 {
            assert!(largest[n] > largest[n - 1], "{largest:?}");
        }
        assert!(largest[11] > Duration::from_secs(240), "{largest:?}");
    }

    #[test]
    fn the_same_seed_gives_the_same_schedule() {
        let t0 = Instant::now();
        let run = |seed| {
            let mut m = Lifecycle::new(
                RestartPolicy::Always,
                None,
                GRACE,
                RestartTuning::default(),
                seed,
            );
            running(&mut m, t0);
            fail_fast(&mut m, t0, 8).1
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
    }

    #[test]
    fn a_crash_loop_is_reported_and_waits_longer() {
        let t0 = Instant::now();
        let tuning = RestartTuning::default();
        let mut m = Lifecycle::new(RestartPolicy::Always, None, GRACE, tuning, 1);
        running(&mut m, t0);
        // Four quick restarts: plain backoff (all well within two minutes: 0.5+1+2+4 s max).
        let (now, _) = fail_fast(&mut m, t0, 4);
        assert!(!m.report().message.contains("crash loop"));
        // The fifth restart within the window is a crash loop.
        m.handle_exit(now, Exit::code(1));
        assert_eq!(m.report().state, State::Backoff);
        assert!(
            m.report().message.starts_with("crash loop"),
            "{}",
            m.report().message
        );
        let wait = m.poll_timeout().expect("deadline") - now;
        assert!(
            wait >= tuning.crash_delay / 2 && wait <= tuning.crash_delay,
            "{wait:?}"
        );
        // After the long wait it gets a fresh window.
        let (now, actions) = advance(&mut m);
        assert_eq!(actions, [Action::Spawn]);
        m.handle_spawned(now);
        m.handle_exit(now, Exit::code(1));
        assert!(
            !m.report().message.contains("crash loop"),
            "{}",
            m.report().message
        );
        assert_eq!(m.report().restarts, 5);
    }

    #[test]
    fn restarts_spread_beyond_the_window_are_not_a_crash_loop() {
        let t0 = Instant::now();
        let mut m = machine(RestartPolicy::Always);
        running(&mut m, t0);
        let mut now = t0;
        for _ in 0..20 {
            // Each instance runs 40 s: fewer than 5 restarts in any 2 minutes.
            now += Duration::from_secs(40);
            m.handle_exit(now, Exit::code(1));
            assert!(
                !m.report().message.contains("crash loop"),
                "{}",
                m.report().message
            );
            let (at, _) = advance(&mut m);
            now = at;
            m.handle_spawned(now);
        }
    }

    #[test]
    fn a_healthy_run_resets_the_backoff() {
        let t0 = Instant::now();
        let tuning = RestartTuning {
            crash_restarts: u32::MAX,
            ..RestartTuning::default()
        };
        let mut m = Lifecycle::new(RestartPolicy::Always, None, GRACE, tuning, 3);
        running(&mut m, t0);
        let (now, _) = fail_fast(&mut m, t0, 10);
        // Ran for reset_after: the next delay is back within the base.
        let later = now + tuning.reset_after;
        m.handle_exit(later, Exit::code(1));
        let wait = m.poll_timeout().expect("deadline") - later;
        assert!(wait <= tuning.backoff_base, "{wait:?}");
    }

    #[test]
    fn stop_terminates_then_kills_after_the_grace_period() {
        let t0 = Instant::now();
        let mut m = machine(RestartPolicy::Always);
        running(&mut m, t0);
        m.stop(t0);
        assert_eq!(drain(&mut m), [Action::Terminate]);
        assert_eq!(m.poll_timeout(), Some(t0 + GRACE));
        m.handle_timeout(t0 + GRACE - Duration::from_millis(1));
        assert!(drain(&mut m).is_empty());
        let (_, actions) = advance(&mut m);
        assert_eq!(actions, [Action::Kill]);
        assert_eq!(m.poll_timeout(), None);
        m.handle_exit(t0 + GRACE, Exit::signal(9));
        assert_eq!(m.report().state, State::Stopped);
        assert!(m.report().message.contains("SIGKILL"));
        assert!(m.is_done());
    }

    #[test]
    fn a_process_that_honours_sigterm_is_not_killed() {
        let t0 = Instant::now();
        let mut m = machine(RestartPolicy::Always);
        running(&mut m, t0);
        m.stop(t0);
        assert_eq!(drain(&mut m), [Action::Terminate]);
        m.handle_exit(t0 + Duration::from_millis(5), Exit::signal(15));
        assert_eq!(m.report().state, State::Stopped);
        assert_eq!(m.report().message, "stopped");
        assert!(drain(&mut m).is_empty());
    }

    #[test]
    fn stop_during_backoff_or_spawn() {
        let t0 = Instant::now();
        let mut m = machine(RestartPolicy::Always);
        running(&mut m, t0);
        m.handle_exit(t0, Exit::code(1));
        m.stop(t0);
        assert_eq!(m.report().state, State::Stopped);
        assert!(m.is_done());

        let mut m = machine(RestartPolicy::Always);
        m.start(t0);
        assert_eq!(drain(&mut m), [Action::Spawn]);
        m.stop(t0);
        m.handle_spawned(t0);
        assert_eq!(drain(&mut m), [Action::Terminate]);
        m.handle_exit(t0, Exit::signal(15));
        assert_eq!(m.report().state, State::Stopped);
    }

    #[test]
    fn spawn_failures_back_off_or_fail() {
        let t0 = Instant::now();
        let mut m = machine(RestartPolicy::OnFailure);
        m.start(t0);
        drain(&mut m);
        m.handle_spawn_failed(t0, "no such file");
        assert_eq!(m.report().state, State::Backoff);
        assert!(m.report().message.contains("no such file"));

        let mut m = machine(RestartPolicy::Never);
        m.start(t0);
        drain(&mut m);
        m.handle_spawn_failed(t0, "no such file");
        assert_eq!(m.report().state, State::Failed);
    }

    #[test]
    fn probes_flip_between_running_and_unhealthy() {
        let t0 = Instant::now();
        let p = probe();
        let mut m = Lifecycle::new(
            RestartPolicy::Never,
            Some(&p),
            GRACE,
            RestartTuning::default(),
            1,
        );
        running(&mut m, t0);
        assert_eq!(m.report().state, State::Starting);
        let mut results = Vec::new();
        let mut step = |m: &mut Lifecycle, ok: bool| {
            let (at, actions) = advance(m);
            assert_eq!(actions, [Action::Probe]);
            // A probe in flight does not start another.
            assert_eq!(m.poll_timeout(), None);
            m.handle_probe(at, if ok { Ok(()) } else { Err("refused".into()) });
            results.push(m.report().state);
        };
        for ok in [true, true, false, false, false, false, true, true] {
            step(&mut m, ok);
        }
        use State::*;
        assert_eq!(
            results,
            [
                Starting, Running, Running, Running, Unhealthy, Unhealthy, Unhealthy, Running
            ]
        );
        assert!(drain(&mut m).is_empty());
    }

    #[test]
    fn an_instance_that_stays_unhealthy_is_restarted() {
        let t0 = Instant::now();
        let p = probe();
        let mut m = Lifecycle::new(
            RestartPolicy::Always,
            Some(&p),
            GRACE,
            RestartTuning::default(),
            1,
        );
        running(&mut m, t0);
        let mut unhealthy_at = None;
        // A minute of failing probes, a second apart, in virtual time.
        loop {
            let (at, actions) = advance(&mut m);
            match actions.as_slice() {
                [Action::Probe] => {
                    m.handle_probe(at, Err("refused".into()));
                    if m.report().state == State::Unhealthy && unhealthy_at.is_none() {
                        unhealthy_at = Some(at);
                    }
                }
                [Action::Terminate] => {
                    let since = unhealthy_at.expect("was unhealthy first");
                    assert_eq!(at - since, Duration::from_secs(30));
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
            assert!(at - t0 < Duration::from_secs(60));
        }
        m.handle_exit(t0 + Duration::from_secs(40), Exit::signal(15));
        assert_eq!(m.report().state, State::Backoff);
        assert!(
            m.report().message.contains("unhealthy"),
            "{}",
            m.report().message
        );
        let (_, actions) = advance(&mut m);
        assert_eq!(actions, [Action::Spawn]);
        assert_eq!(m.report().restarts, 1);
    }

    #[test]
    fn never_leaves_an_unhealthy_instance_alone() {
        let t0 = Instant::now();
        let p = HealthProbe {
            failure_threshold: 1,
            ..probe()
        };
        let mut m = Lifecycle::new(
            RestartPolicy::Never,
            Some(&p),
            GRACE,
            RestartTuning::default(),
            1,
        );
        running(&mut m, t0);
        for _ in 0..100 {
            let (at, actions) = advance(&mut m);
            assert_eq!(actions, [Action::Probe]);
            m.handle_probe(at, Err("500".into()));
        }
        assert_eq!(m.report().state, State::Unhealthy);
    }

    #[test]
    fn a_late_probe_result_after_exit_is_ignored() {
        let t0 = Instant::now();
        let p = probe();
        let mut m = Lifecycle::new(
            RestartPolicy::Never,
            Some(&p),
            GRACE,
            RestartTuning::default(),
            1,
        );
        running(&mut m, t0);
        let (at, _) = advance(&mut m);
        m.handle_exit(at, Exit::code(0));
        m.handle_probe(at, Ok(()));
        assert_eq!(m.report().state, State::Stopped);
    }
}
