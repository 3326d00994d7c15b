//! Pre-warming on this node: every [`TICK`], node-core's [`Prewarm`] looks at each workload
//! that scales to zero and may start a sleeping one before the request it expects, or keep
//! an idle one up past its `idle_secs`. See `node_core::warm` for the decision; this module
//! only moves data between it and the activator (`super::wake`).
//!
//! - **What happened.** The proxy counts each request for such a workload on its `Activity`
//!   (an atomic add, nothing more on the request path); a tick reads the counts, and gives
//!   the requests since the last tick to the workload's history, spread over the time
//!   between that tick and the last request's. What is up comes from the supervisor. The
//!   first request after a pre-warm or a cold start is what the model's drift is judged on.
//! - **What to do.** A wake is the activator's own (the one a request takes, in the same
//!   turn), in a task of its own so that a slow start holds up no tick; a workload the model
//!   expects a request for is *kept* up (for two ticks, renewed at each) and the idle
//!   watcher waits instead of putting it to sleep. The watcher still puts it to sleep by
//!   today's rule once nobody keeps it, so a stopped tick task leaves nothing up for long.
//! - **Who decides** is on `/status` (`prewarm`) and `/metrics`
//!   (`edge_node_prewarm_mode`, `edge_node_prewarms_total`), with a log line when it changes.
//!
//! The model loads when the first workload that scales to zero appears, not at start: most
//! nodes have none, and tract's loading code and the model's plan cost every one of them
//! memory they would never use. Until then `/status` says `waiting`, with the model that
//! will load. A new model (`crate::models`) comes in through [`ModelSwap`] and replaces the
//! one in use between two ticks, its drift judged afresh.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use node_core::warm::{
    Action, Mode, Prewarm, WarmPredictor, WarmProfile, WarmSettings, WarmWorkload,
};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::wake::{Activator, Sleeper};
use super::warm_model::{self, Loaded};
use crate::metrics::{NodeEvent, PrewarmMode};
use crate::status::{PrewarmView, StatusBoard};
use crate::task::AbortOnDrop;

/// How often pre-warming decides: the simulation's tick, for which the model was trained.
pub const TICK: Duration = Duration::from_secs(10);

/// How long one decision keeps a workload up: two ticks, so that a late tick does not let
/// it sleep between two that both keep it.
const KEEP_FOR: Duration = Duration::from_secs(2 * TICK.as_secs());

/// The most requests one tick gives one workload's history; more in ten seconds say nothing
/// more about when the next one comes.
const MAX_FED: u64 = 10_000;

/// What a tick saw of one workload that scales to zero.
#[derive(Debug, Clone, Copy)]
pub struct Seen<'a> {
    pub name: &'a str,
    /// The proxy's count of its requests (wrapping; a smaller count than the last tick's is a
    /// new workload of the same name).
    pub arrivals: u64,
    /// Its last request's arrival or end, or its last wake's start.
    pub last_request: Instant,
    /// Up or starting.
    pub awake: bool,
    pub profile: WarmProfile,
}

/// What to do with one workload after a tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Decision {
    /// Start it now.
    pub wake: bool,
    /// Keep it up past its idle time: the model expects a request soon.
    pub keep: bool,
}

/// The decisions for the node's workloads that scale to zero: their histories and the
/// policy, fed from what [`Seen`] says at each tick. No I/O and no clock of its own.
#[derive(Debug)]
pub struct Decisions {
    prewarm: Prewarm,
    /// Per workload, in the order of the last tick's `seen`: its name and its count then.
    tracked: Vec<(String, u64)>,
    workloads: Vec<WarmWorkload>,
    actions: Vec<Action>,
    decisions: Vec<Decision>,
    last_tick: Option<Instant>,
}

impl Decisions {
    pub fn new(model: WarmPredictor, settings: WarmSettings) -> Self {
        Self {
            prewarm: Prewarm::new(model, settings),
            tracked: Vec::new(),
            workloads: Vec::new(),
            actions: Vec::new(),
            decisions: Vec::new(),
            last_tick: None,
        }
    }

    /// Who decides now.
    pub fn mode(&self) -> Mode {
        self.prewarm.mode()
    }

    /// A new model (or none); its drift starts afresh, the histories stay.
    pub fn replace(&mut self, model: WarmPredictor) {
        self.prewarm.replace(model);
    }

    /// Decides at `now` (`wall_secs`: the wall clock then, seconds since the Unix epoch) for
    /// the workloads in `seen`, one [`Decision`] each, in the same order.
    pub fn tick(&mut self, now: Instant, wall_secs: u64, seen: &[Seen<'_>]) -> &[Decision] {
        let from = self.last_tick.unwrap_or(now).min(now);
        self.last_tick = Some(now);
        // The histories in the order of `seen`: new workloads start afresh, gone ones go.
        let mut tracked = Vec::with_capacity(seen.len());
        let mut workloads = Vec::with_capacity(seen.len());
        for s in seen {
            let known = self.tracked.iter().position(|(name, _)| name == s.name);
            let (before, mut history) = match known {
                Some(i) => {
                    let history = self.workloads.swap_remove(i);
                    let (_, before) = self.tracked.swap_remove(i);
                    (before, history)
                }
                // Its count so far is from before it was tracked: not replayed.
                None => (s.arrivals, WarmWorkload::new(s.profile, s.awake, now)),
            };
            history.set_profile(s.profile);
            let new = if s.arrivals >= before {
                s.arrivals - before
            } else {
                s.arrivals
            };
            feed(&mut history, new.min(MAX_FED), from, s.last_request, now);
            match (history.is_awake(), s.awake) {
                (false, true) => history.woke(now),
                (true, false) => history.slept(now),
                _ => {}
            }
            tracked.push((s.name.to_owned(), s.arrivals));
            workloads.push(history);
        }
        self.tracked = tracked;
        self.workloads = workloads;
        self.prewarm
            .tick(&mut self.workloads, now, wall_secs, &mut self.actions);
        let by_model = self.prewarm.mode() == Mode::Model;
        let threshold = self.prewarm.settings().threshold;
        let predictions = self.prewarm.predictions();
        self.decisions.clear();
        for (i, (action, history)) in self.actions.iter().zip(&mut self.workloads).enumerate() {
            let likely = by_model && predictions.get(i).is_some_and(|&p| p >= threshold);
            let wake = *action == Action::Wake;
            if wake {
                // Carried out by the caller; a wake that fails shows as asleep next tick.
                history.woke(now);
            }
            self.decisions.push(Decision {
                wake,
                keep: likely && history.is_awake(),
            });
        }
        &self.decisions
    }
}

/// Gives `history` `n` requests between `from` and the last one's time (within `from..=now`),
/// evenly spread: the proxy counts them, and one tick's requests are close enough.
fn feed(history: &mut WarmWorkload, n: u64, from: Instant, last: Instant, now: Instant) {
    if n == 0 {
        return;
    }
    let last = last.clamp(from, now);
    let span = last.saturating_duration_since(from);
    for k in 1..=n {
        // `k <= n`, both at most MAX_FED: the product fits.
        let at = from + span.mul_f64(k as f64 / n as f64);
        history.request(at);
    }
}

/// Hands a new warming model to the running pre-warming. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ModelSwap(mpsc::Sender<Loaded>);

impl ModelSwap {
    /// Replaces the model between two ticks; false when pre-warming has stopped.
    pub async fn replace(&self, loaded: Loaded) -> bool {
        self.0.send(loaded).await.is_ok()
    }
}

/// Starts pre-warming the workloads of `activator` at `threshold`, with the warming model
/// in `data_dir` (else the built-in one) once the first of them appears, reporting on
/// `board`. Stops when dropped.
pub async fn start(
    activator: Activator,
    data_dir: PathBuf,
    threshold: f32,
    board: StatusBoard,
) -> (AbortOnDrop, ModelSwap) {
    let dir = data_dir.clone();
    let pending = tokio::task::spawn_blocking(move || warm_model::pending(&dir))
        .await
        .unwrap_or(None);
    start_loading(
        activator,
        move || warm_model::load(&data_dir),
        pending.as_deref(),
        threshold,
        board,
    )
}

/// As [`start`], with the model `load` gives (once, off the runtime's threads), which is
/// `pending` until then.
fn start_loading(
    activator: Activator,
    load: impl FnOnce() -> Loaded + Send + 'static,
    pending: Option<&str>,
    threshold: f32,
    board: StatusBoard,
) -> (AbortOnDrop, ModelSwap) {
    let (swap, mut swaps) = mpsc::channel::<Loaded>(1);
    // Held by the task: the channel never reads as closed while it runs.
    let own = swap.clone();
    let settings = WarmSettings {
        threshold,
        ..WarmSettings::default()
    };
    // Shown before the node goes on: `/status` names what will decide from the start.
    show_idle(&board, PrewarmMode::Waiting, pending);
    let mut load = Some(load);
    let decide = move |loaded: Loaded| (Decisions::new(loaded.predictor, settings), loaded.model);
    let task = tokio::spawn(async move {
        let _own = own;
        // The model in use and which it is, once loaded.
        let mut running: Option<(Decisions, Option<String>)> = None;
        let mut shown = None;
        let mut every = tokio::time::interval(TICK);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Both cancel-safe: a lost race loses a tick's wake-up or nothing.
            tokio::select! {
                _ = every.tick() => {}
                Some(loaded) = swaps.recv() => {
                    match running.as_mut() {
                        Some((decisions, model)) => {
                            decisions.replace(loaded.predictor);
                            *model = loaded.model;
                        }
                        None => running = Some(decide(loaded)),
                    }
                    // Shown even when the mode stays: the model is another.
                    shown = None;
                    if let Some((decisions, model)) = &running {
                        show(&board, &mut shown, decisions.mode(), model.as_deref());
                    }
                    continue;
                }
            }
            let sleepers = activator.sleepers();
            // The first tick that sees a workload that scales to zero loads the model (unless
            // one was pushed first). Reading the file and running its golden rows: off the
            // runtime's threads.
            if running.is_none()
                && !sleepers.is_empty()
                && let Some(load) = load.take()
            {
                let loaded = tokio::task::spawn_blocking(load)
                    .await
                    .unwrap_or_else(|_| Loaded {
                        predictor: Err(node_core::warm::Fallback::Refused),
                        model: None,
                    });
                running = Some(decide(loaded));
            }
            let Some((decisions, model)) = running.as_mut() else {
                continue;
            };
            let seen: Vec<Seen<'_>> = sleepers.iter().map(seen_of).collect();
            let now = Instant::now();
            let wall_secs = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let decided = decisions.tick(now, wall_secs, &seen);
            for (sleeper, decision) in sleepers.iter().zip(decided) {
                activator.keep(&sleeper.name, decision.keep.then(|| now + KEEP_FOR));
                if decision.wake {
                    spawn_wake(&activator, &sleeper.name, &board);
                }
            }
            show(&board, &mut shown, decisions.mode(), model.as_deref());
        }
    });
    (AbortOnDrop(task), ModelSwap(swap))
}

fn seen_of(sleeper: &Sleeper) -> Seen<'_> {
    Seen {
        name: &sleeper.name,
        arrivals: sleeper.activity.arrivals(),
        last_request: sleeper.activity.last_request(),
        awake: sleeper.awake,
        profile: WarmProfile {
            cold_start: sleeper.cold_start,
            memory_bytes: sleeper.memory_bytes,
            idle: sleeper.idle,
        },
    }
}

/// Wakes `name` through the activator, in a task of its own; counts it if it started it.
fn spawn_wake(activator: &Activator, name: &str, board: &StatusBoard) {
    let woken = activator.prewarm(name);
    let (name, board) = (name.to_owned(), board.clone());
    tokio::spawn(async move {
        match woken.await {
            Ok(true) => {
                board
                    .metrics()
                    .emit(&NodeEvent::Prewarmed { workload: &name });
                let prewarms = board.metrics().prewarms();
                board.update(|s| {
                    if let Some(view) = s.prewarm.as_mut() {
                        view.prewarms = prewarms;
                    }
                });
            }
            Ok(false) => debug!(workload = %name, "up already when pre-warmed"),
            Err(error) => warn!(workload = %name, %error, "cannot pre-warm"),
        }
    });
}

/// Shows who decides on `board`, and logs it, when it is not what `shown` was.
fn show(board: &StatusBoard, shown: &mut Option<Mode>, mode: Mode, model: Option<&str>) {
    if *shown == Some(mode) {
        return;
    }
    *shown = Some(mode);
    board.metrics().emit(&NodeEvent::PrewarmMode {
        mode: PrewarmMode::On(mode),
        model,
    });
    let prewarms = board.metrics().prewarms();
    board.update(|s| {
        s.prewarm = Some(PrewarmView {
            mode: mode.as_str(),
            model: model.map(str::to_owned),
            prewarms,
        })
    });
}

/// Shows on `board` that pre-warming is off.
pub fn show_off(board: &StatusBoard) {
    show_idle(board, PrewarmMode::Off, None);
}

/// Shows a mode in which no model runs: off, or waiting for a workload that scales to zero
/// (and `model` will load then).
fn show_idle(board: &StatusBoard, mode: PrewarmMode, model: Option<&str>) {
    board
        .metrics()
        .emit(&NodeEvent::PrewarmMode { mode, model });
    board.update(|s| {
        s.prewarm = Some(PrewarmView {
            mode: mode.as_str(),
            model: model.map(str::to_owned),
            prewarms: 0,
        })
    });
}

#[cfg(all(test, feature = "ai"))]
mod tests {
    use super::*;
    use node_core::warm::Fallback;
    use std::path::Path;

    const IDLE: Duration = Duration::from_secs(60);
    const PERIOD_SECS: u64 = 1500;
    const DAY_SECS: u64 = 86_400;

    fn profile() -> WarmProfile {
        WarmProfile {
            cold_start: Duration::from_secs(8),
            memory_bytes: 64 << 20,
            idle: IDLE,
        }
    }

    /// What a node did with one workload called every 25 minutes (a few seconds early or
    /// late), over two days of ten-second ticks, with the activator's rules: a request that
    /// finds it asleep starts it (a cold start), the idle watcher puts it to sleep `IDLE`
    /// after its last request or wake unless it is kept.
    #[derive(Debug, Default)]
    struct Day2 {
        requests: u32,
        cold: u32,
        prewarms: u32,
        awake_ticks: u32,
        ticks: u32,
    }

    fn run(model: WarmPredictor) -> Day2 {
        let mut decisions = Decisions::new(model, WarmSettings::default());
        let t0 = Instant::now();
        let wall0 = 1_780_000_000;
        // Jitter of up to ±10 s, from a fixed sequence: the same run every time.
        let mut lcg = 0x2545_f491_u64;
        let mut jitter = move || {
            lcg = lcg.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            (lcg >> 33) % 21
        };
        let mut next_call = PERIOD_SECS - 10 + jitter();
        let (mut arrivals, mut last_request) = (0u64, t0);
        let (mut awake, mut kept_until) = (false, t0);
        let mut day2 = Day2::default();
        for k in 0..(2 * DAY_SECS / TICK.as_secs()) {
            let secs = k * TICK.as_secs();
            let now = t0 + Duration::from_secs(secs);
            let counted = secs >= DAY_SECS;
            while next_call <= secs {
                arrivals += 1;
                last_request = t0 + Duration::from_secs(next_call);
                if counted {
                    day2.requests += 1;
                    day2.cold += u32::from(!awake);
                }
                awake = true;
                next_call += PERIOD_SECS - 10 + jitter();
            }
            let seen = [Seen {
                name: "poll",
                arrivals,
                last_request,
                awake,
                profile: profile(),
            }];
            let decided = decisions.tick(now, wall0 + secs, &seen)[0];
            if decided.wake && !awake {
                awake = true;
                // A wake counts as the start of a request for the idle time.
                last_request = last_request.max(now);
                day2.prewarms += u32::from(counted);
            }
            if decided.keep {
                kept_until = now + KEEP_FOR;
            }
            if awake && now.duration_since(last_request) >= IDLE && kept_until <= now {
                awake = false;
            }
            if counted {
                day2.ticks += 1;
                day2.awake_ticks += u32::from(awake);
            }
        }
        day2
    }

    #[test]
    fn a_caller_with_a_rhythm_finds_its_workload_started_before_it_calls() {
        let model = crate::proxy::warm_model::load(Path::new("/nonexistent")).predictor;
        let learned = run(model);
        let never = run(Err(Fallback::NoModel));
        assert!(never.requests > 50, "{never:?}");
        assert_eq!(never.cold, never.requests, "today's rule: every call waits");
        assert_eq!(never.prewarms, 0);
        assert!(learned.prewarms > 0, "{learned:?}");
        assert!(
            learned.cold * 2 < learned.requests,
            "most calls find it up: {learned:?}"
        );
        // Not by staying up: well under half the day.
        assert!(learned.awake_ticks * 2 < learned.ticks, "{learned:?}");
    }

    #[test]
    fn requests_between_ticks_reach_the_history_and_a_wake_is_asked_once() {
        let t0 = Instant::now();
        // A model that always expects a request: wakes a sleeping workload, keeps an awake one.
        #[derive(Debug)]
        struct Always;
        impl node_core::warm::PredictWarm for Always {
            fn predict(
                &mut self,
                _: &[f32],
                out: &mut [f32],
            ) -> Result<(), node_core::warm::PredictError> {
                out.fill(1.0);
                Ok(())
            }
        }
        let mut decisions = Decisions::new(Ok(Box::new(Always)), WarmSettings::default());
        let seen = |arrivals, awake| Seen {
            name: "a",
            arrivals,
            last_request: t0,
            awake,
            profile: profile(),
        };
        let first = decisions.tick(t0, 0, &[seen(0, false)])[0];
        assert_eq!(
            first,
            Decision {
                wake: true,
                keep: true
            }
        );
        // Still asleep as the next tick sees it (the wake failed): asked again.
        let later = t0 + TICK;
        assert!(decisions.tick(later, 10, &[seen(0, false)])[0].wake);
        // Up: kept, not woken again; a gone workload is forgotten, a new one starts afresh.
        assert_eq!(
            decisions.tick(later + TICK, 20, &[seen(3, true)])[0],
            Decision {
                wake: false,
                keep: true
            }
        );
        assert!(decisions.tick(later + 2 * TICK, 30, &[]).is_empty());
        assert_eq!(decisions.tracked.len(), 0);
        let _ = decisions.tick(later + 3 * TICK, 40, &[seen(7, true)]);
        assert_eq!(decisions.tracked, vec![("a".to_owned(), 7)]);
    }
}

/// The tick task on a real node proxy, activator and supervisor, with a real process.
#[cfg(test)]
mod node {
    use super::*;
    use crate::config::Config;
    use crate::proxy::NodeProxy;
    use crate::supervisor::spec::{Balance, Expose, ScaleToZero};
    use crate::supervisor::{
        LimitsBackend, LogLimits, Readiness, RestartTuning, Supervisor, SupervisorOptions,
        WorkloadSpec,
    };
    use node_core::warm::{PredictError, PredictWarm};
    use std::path::Path;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const DEADLINE: Duration = Duration::from_secs(60);

    /// A model that always expects a request: wakes what sleeps, keeps what is up.
    #[derive(Debug)]
    struct Always;

    impl PredictWarm for Always {
        fn predict(&mut self, _: &[f32], out: &mut [f32]) -> Result<(), PredictError> {
            out.fill(1.0);
            Ok(())
        }
    }

    async fn until(what: &str, mut ok: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        let mut poll = tokio::time::interval(Duration::from_millis(20));
        loop {
            poll.tick().await;
            if ok() {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "waited {DEADLINE:?} for {what}"
            );
        }
    }

    /// A workload that scales to zero after a second, exposing `port` (which the test binds:
    /// it is ready once started), that writes each start to `starts`.
    fn spec(dir: &Path, port: u16) -> WorkloadSpec {
        let script = dir.join("poll.sh");
        let starts = dir.join("poll.starts");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\necho $$ >> {}\nexec sleep 600\n",
                starts.display()
            ),
        )
        .expect("script");
        let mut spec = WorkloadSpec::new("poll", "1", "/bin/sh");
        spec.args = vec![script.display().to_string()];
        spec.stop_grace_ms = 2000;
        spec.expose = vec![Expose {
            port,
            host: None,
            path_prefix: Some("/".into()),
            weight: 100,
            timeout_secs: 30,
            retries: 0,
            cache: false,
            stale_if_offline_secs: 0,
            balance: Balance::RoundRobin,
        }];
        spec.scale_to_zero = Some(ScaleToZero { idle_secs: 1 });
        spec
    }

    #[tokio::test]
    async fn a_workload_the_model_expects_a_request_for_is_started_without_one_and_sleeps_once_nobody_keeps_it()
     {
        let data = tempfile::tempdir().expect("data dir");
        let scripts = tempfile::tempdir().expect("scripts dir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        // Bound by the test: the workload is ready as soon as it runs.
        let _listening = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("the workload's port");
        let options = SupervisorOptions {
            cgroup_parent: format!("edge-node-prewarm-{}", std::process::id()),
            restart: RestartTuning::default(),
            logs: LogLimits::default(),
        };
        let sup = Supervisor::open_with(data.path(), LimitsBackend::detect(), options)
            .await
            .expect("supervisor");
        let config = Config::from_toml(&format!(
            "version = 1\nname = \"n1\"\ndata_dir = \"{}\"\n[orchestrator]\n\
             address = \"127.0.0.1:7443\"\n[proxy]\nlisten = \"127.0.0.1:0\"\n\
             [proxy.cache]\ndisk_bytes = 0\n",
            data.path().display()
        ))
        .expect("config");
        let proxy_config = config.proxy().expect("[proxy]");
        let node = NodeProxy::start(
            proxy_config,
            "n1",
            data.path(),
            sup.clone(),
            edge_proxy::ProxyMetrics::default(),
            None,
        )
        .await
        .expect("proxy");
        // Started before any workload scales to zero: it waits, and loads nothing.
        let board = StatusBoard::new();
        let loads = Arc::new(AtomicUsize::new(0));
        let counted = loads.clone();
        let load = move || {
            counted.fetch_add(1, Ordering::SeqCst);
            Loaded {
                predictor: Ok(Box::new(Always) as Box<dyn PredictWarm>),
                model: Some("sha256:test".to_owned()),
            }
        };
        let (task, _swap) = start_loading(
            node.activator.clone(),
            load,
            Some("sha256:test"),
            0.5,
            board.clone(),
        );
        let shown = board.get().prewarm.expect("shown");
        assert_eq!(
            (shown.mode, shown.model.as_deref()),
            ("waiting", Some("sha256:test"))
        );

        sup.apply(spec(scripts.path(), port)).await.expect("apply");
        until("the activator knows it, asleep", || {
            node.activator
                .sleepers()
                .iter()
                .any(|s| s.name == "poll" && !s.awake)
        })
        .await;
        // The first tick that sees it loads the model, and starts it with no request.
        until("pre-warmed", || board.metrics().prewarms() == 1).await;
        assert_eq!(loads.load(Ordering::SeqCst), 1, "loaded once");
        let up = Instant::now();
        assert_eq!(sup.readiness("poll"), Some(Readiness::Ready));
        let sleeper = node
            .activator
            .sleepers()
            .into_iter()
            .find(|s| s.name == "poll")
            .expect("still there");
        assert!(
            !sleeper.activity.is_closed(),
            "a request now goes straight in, no cold start"
        );
        assert_eq!(sleeper.activity.arrivals(), 0, "no request woke it");
        let shown = board.get().prewarm.expect("shown");
        assert_eq!(
            (shown.mode, shown.model.as_deref(), shown.prewarms),
            ("model", Some("sha256:test"), 1)
        );
        // Ready means spawned (the test holds its port): the script writes its start a moment
        // later.
        let starts = || {
            std::fs::read_to_string(scripts.path().join("poll.starts"))
                .unwrap_or_default()
                .lines()
                .count()
        };
        until("its start written", || starts() >= 1).await;
        assert_eq!(starts(), 1, "one start");

        // Pre-warming stops: its keep runs out, and the idle watcher puts it to sleep.
        drop(task);
        until("asleep again", || {
            sup.readiness("poll") == Some(Readiness::Dormant)
        })
        .await;
        assert!(
            up.elapsed() >= Duration::from_secs(5),
            "kept well past its idle_secs (1) while the model expected a request: {:?}",
            up.elapsed()
        );
        drop(node);
        sup.shutdown().await;
    }
}
