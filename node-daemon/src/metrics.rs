//! The node's Prometheus metrics, served at `GET /metrics` on the status endpoint, and the
//! operator-facing events that bump them.
//!
//! A [`NodeEvent`] emits its log line and its metric together, so the two never drift. Every
//! label comes from a fixed set in this module (an enum's `as_str`), never from the
//! orchestrator or a workload: a peer's text goes to the log only. Every series of a fixed
//! label set exists from the start, at 0.

use crate::artifacts::FetchError;
use crate::status::State;
use edge_proto::RejectCode;
use edge_shell::exposition::{self, Format};
use node_core::admission::Rejection;
use node_core::proxy::learned::{Fallback, Mode};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, info, warn};

/// One label, whose value comes from a fixed set in this crate.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

/// How an offer of one of the fleet's models ended.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

/// How an offer of one of the fleet's models ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelOutcome {
    /// Fetched, loaded, installed and in use.
    Installed,
    /// It does not load or does not fit its user's schema: the node keeps the one it has.
    Refused,
    /// It could not be fetched (or installed): the node keeps the one it has, and tries again
    /// when it is next offered.
    Failed,
}

impl ModelOutcome {
    pub const ALL: [Self; 3] = [Self::Installed, Self::Refused, Self::Failed];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Installed => "installed",
            Self::Refused => "refused",
            Self::Failed => "failed",
        }
    }
}

/// Who chooses a route's backend: `model`, or the fallback's reason.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModeLabel {
    pub mode: &'static str,
}

/// Who decides when the workloads that scale to zero start: the warming model, today's rule
/// because there is no model, it was refused, it failed or it drifted (the fallback's
/// reason), or nobody because pre-warming is off (`[proxy] prewarm = false`, or no proxy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrewarmMode {
    Off,
    /// On, and no workload scales to zero yet: the model loads when one does.
    Waiting,
    On(Mode),
}

impl PrewarmMode {
    pub const ALL: [Self; 7] = [
        Self::Off,
        Self::Waiting,
        Self::On(Mode::Model),
        Self::On(Mode::Fallback(Fallback::NoModel)),
        Self::On(Mode::Fallback(Fallback::Refused)),
        Self::On(Mode::Fallback(Fallback::Broken)),
        Self::On(Mode::Fallback(Fallback::Drift)),
    ];

    /// `off`, `waiting`, `model`, `no_model`, `refused`, `broken`, `drift`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Waiting => "waiting",
            Self::On(mode) => mode.as_str(),
        }
    }
}

/// How a connection's TLS handshake went: `full` or `resumed`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandshakeLabel {
    pub handshake: &'static str,
}

/// Why a dial of the orchestrator ended without a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialFailure {
    /// No connection: unreachable, refused, timed out, a name that does not resolve.
    Unreachable,
    /// The orchestrator's certificate is not the pinned CA's.
    Untrusted,
    /// Connected, but no answer to the hello in time.
    NoAnswer,
    /// Connected, then closed before the session was established.
    Closed,
    /// The orchestrator refused us (see `edge_node_rejections`).
    Rejected,
}

impl DialFailure {
    pub const ALL: [Self; 5] = [
        Self::Unreachable,
        Self::Untrusted,
        Self::NoAnswer,
        Self::Closed,
        Self::Rejected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unreachable => "unreachable",
            Self::Untrusted => "untrusted",
            Self::NoAnswer => "no_answer",
            Self::Closed => "closed",
            Self::Rejected => "rejected",
        }
    }
}

/// Why a workload's process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitReason {
    /// Exited with status 0.
    Exited,
    /// Exited with another status.
    Failed,
    /// Killed by a signal nobody here sent.
    Signalled,
    /// The kernel's OOM killer struck in its group.
    OomKilled,
    /// Stopped by the node after failing its health checks.
    Unhealthy,
    /// Stopped because the node was told to (removed, replaced, shutting down).
    Stopped,
}

impl ExitReason {
    pub const ALL: [Self; 6] = [
        Self::Exited,
        Self::Failed,
        Self::Signalled,
        Self::OomKilled,
        Self::Unhealthy,
        Self::Stopped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Exited => "exited",
            Self::Failed => "failed",
            Self::Signalled => "signalled",
            Self::OomKilled => "oom_killed",
            Self::Unhealthy => "unhealthy",
            Self::Stopped => "stopped",
        }
    }
}

/// Why an instance was started again: how the one before ended, or its start failing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartReason {
    Exit(ExitReason),
    /// The process could not be started.
    SpawnFailed,
}

impl RestartReason {
    fn as_str(self) -> &'static str {
        match self {
            Self::Exit(e) => e.as_str(),
            Self::SpawnFailed => "spawn_failed",
        }
    }

    fn all() -> impl Iterator<Item = &'static str> {
        ExitReason::ALL
            .into_iter()
            .filter(|e| *e != ExitReason::Stopped)
            .map(ExitReason::as_str)
            .chain(["spawn_failed"])
    }
}

/// The `reason` of an admission refusal.
fn refusal_reason(why: &Rejection) -> &'static str {
    match why {
        Rejection::MemoryBudget { .. } => "memory_budget",
        Rejection::MemoryNow { .. } => "memory_now",
        Rejection::Disk { .. } => "disk",
        Rejection::NoContainerRuntime => "no_container_runtime",
        Rejection::NoPlatform { .. } => "no_platform",
    }
}
const REFUSAL_REASONS: [&str; 6] = [
    "memory_budget",
    "memory_now",
    "disk",
    "no_space",
    "no_container_runtime",
    "no_platform",
];

/// The `reason` of a failed artifact fetch.
fn fetch_failure(e: &FetchError) -> &'static str {
    match e {
        FetchError::Connection(_) => "connection",
        FetchError::Stream(_) => "stream",
        FetchError::Stalled => "stalled",
        FetchError::Cut { .. } => "cut",
        FetchError::NotFound => "not_found",
        FetchError::SizeMismatch { .. } => "size_mismatch",
        FetchError::HashMismatch { .. } => "hash_mismatch",
        FetchError::Protocol(_) => "protocol",
        FetchError::Local(_) => "local",
        FetchError::NoSpace { .. } => "no_space",
    }
}
const FETCH_FAILURES: [&str; 10] = [
    "connection",
    "stream",
    "stalled",
    "cut",
    "not_found",
    "size_mismatch",
    "hash_mismatch",
    "protocol",
    "local",
    "no_space",
];

/// The states the status endpoint reports, as `edge_node_state_changes` names them.
const STATES: [State; 11] = [
    State::Starting,
    State::WaitingForJoinFile,
    State::JoinFileInvalid,
    State::Enrolling,
    State::Connecting,
    State::Online,
    State::Offline,
    State::Failed,
    State::IdentityConflict,
    State::Stopping,
    State::CertificateExpired,
];

/// Operator-facing events of the node: each logs its line and bumps its metric.
#[derive(Debug)]
pub enum NodeEvent<'a> {
    /// A dial ended without a session. `retry_in`: the wait before the next one; the line is
    /// logged only when there is one (a dial given up for good says so elsewhere).
    DialFailed {
        orchestrator: &'a str,
        failure: DialFailure,
        error: &'a str,
        retry_in: Option<Duration>,
    },
    /// The orchestrator refused us, with its code and its message: counted as a rejection
    /// and as a dial that ended without a session.
    Rejected {
        orchestrator: &'a str,
        code: RejectCode,
        message: &'a str,
        retry_in: Option<Duration>,
    },
    /// Enrolled: the identity the orchestrator issued is stored.
    Enrolled { node: edge_proto::NodeId },
    /// A session's connection is up; `resumed`: with the TLS session of an earlier one (no
    /// certificate sent or checked either way), else with a full handshake.
    Connected { resumed: bool },
    /// An assignment this node refused: at once, or (`after_admission`, with its generation)
    /// when its artifact turned out not to fit after all.
    AdmissionRefused {
        workload: &'a str,
        reason: &'static str,
        detail: &'a str,
        after_admission: Option<u64>,
    },
    /// An artifact fetch attempt ended; `bytes` of it arrived and were kept. A failure is
    /// logged here when it is retried (`retry_in`) or final; one that makes the node refuse
    /// the assignment (`no_space`) is logged as that refusal.
    ArtifactFetched {
        workload: &'a str,
        bytes: u64,
        failure: Option<&'a FetchError>,
        retry_in: Option<Duration>,
    },
    /// An offer of the fleet's routing model (`model`, `sha256:...`) ended; `error` says why
    /// when it was not installed.
    RouteModelOffer {
        model: &'a str,
        outcome: ModelOutcome,
        error: Option<&'a str>,
    },
    /// Who decides pre-warming changed (or was first set): `model` names the warming model
    /// (`sha256:...` or `built-in`), if one is loaded.
    PrewarmMode {
        mode: PrewarmMode,
        model: Option<&'a str>,
    },
    /// An offer of the fleet's warming model ended, as [`NodeEvent::RouteModelOffer`].
    WarmModelOffer {
        model: &'a str,
        outcome: ModelOutcome,
        error: Option<&'a str>,
    },
    /// Pre-warming started `workload` before a request.
    Prewarmed { workload: &'a str },
}

/// Every metric the node exports. Cheap to clone; every clone counts into the same registry.
#[derive(Debug, Clone)]
pub struct NodeMetrics(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    registry: Registry,
    state_changes: Family<StateLabel, Counter>,
    dial_failures: Family<ReasonLabel, Counter>,
    rejections: Family<ReasonLabel, Counter>,
    enrollments: Counter,
    connections: Family<HandshakeLabel, Counter>,
    admission_refusals: Family<ReasonLabel, Counter>,
    artifact_fetches: Counter,
    artifact_fetch_failures: Family<ReasonLabel, Counter>,
    artifact_bytes: Counter,
    instance_starts: Counter,
    instance_exits: Family<ReasonLabel, Counter>,
    instance_restarts: Family<ReasonLabel, Counter>,
    workloads_running: Gauge,
    clock_offset: Gauge,
    route_choosers: Family<ModeLabel, Gauge>,
    route_model_offers: Family<OutcomeLabel, Counter>,
    prewarm_mode: Family<ModeLabel, Gauge>,
    prewarms: Counter,
    warm_model_offers: Family<OutcomeLabel, Counter>,
    proxy: edge_proxy::ProxyMetrics,
    location: Arc<crate::location::LocationCounters>,
}

impl Default for NodeMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl NodeMetrics {
    pub fn new() -> Self {
        let mut inner = Inner {
            registry: Registry::default(),
            state_changes: Family::default(),
            dial_failures: Family::default(),
            rejections: Family::default(),
            enrollments: Counter::default(),
            connections: Family::default(),
            admission_refusals: Family::default(),
            artifact_fetches: Counter::default(),
            artifact_fetch_failures: Family::default(),
            artifact_bytes: Counter::default(),
            instance_starts: Counter::default(),
            instance_exits: Family::default(),
            instance_restarts: Family::default(),
            workloads_running: Gauge::default(),
            clock_offset: Gauge::default(),
            route_choosers: Family::default(),
            route_model_offers: Family::default(),
            prewarm_mode: Family::default(),
            prewarms: Counter::default(),
            warm_model_offers: Family::default(),
            proxy: edge_proxy::ProxyMetrics::default(),
            location: Arc::default(),
        };
        let r = &mut inner.registry;
        r.register(
            "edge_node_state_changes",
            "Changes of the node's state as /status reports it, by the state entered",
            inner.state_changes.clone(),
        );
        r.register(
            "edge_node_dial_failures",
            "Dials of the orchestrator that ended without a session, by reason",
            inner.dial_failures.clone(),
        );
        r.register(
            "edge_node_rejections",
            "Refusals from the orchestrator, by its reject code",
            inner.rejections.clone(),
        );
        r.register(
            "edge_node_enrollments",
            "Enrollments completed: identity issued and stored",
            inner.enrollments.clone(),
        );
        r.register(
            "edge_node_connections",
            "Connections of sessions to the orchestrator, by how their TLS handshake went: full, \
             or resumed from an earlier session (no certificate sent or checked)",
            inner.connections.clone(),
        );
        r.register(
            "edge_node_admission_refusals",
            "Assignments this node refused, by reason",
            inner.admission_refusals.clone(),
        );
        r.register(
            "edge_node_artifact_fetches",
            "Artifact fetches completed and verified",
            inner.artifact_fetches.clone(),
        );
        r.register(
            "edge_node_artifact_fetch_failures",
            "Artifact fetch attempts that failed, by reason",
            inner.artifact_fetch_failures.clone(),
        );
        r.register(
            "edge_node_artifact_fetched_bytes",
            "Artifact bytes received and stored",
            inner.artifact_bytes.clone(),
        );
        r.register(
            "edge_node_instance_starts",
            "Workload processes started",
            inner.instance_starts.clone(),
        );
        r.register(
            "edge_node_instance_exits",
            "Workload processes that ended, by reason",
            inner.instance_exits.clone(),
        );
        r.register(
            "edge_node_instance_restarts",
            "Workload processes started again, by how the one before ended",
            inner.instance_restarts.clone(),
        );
        r.register(
            "edge_node_workloads_running",
            "Workload processes running now",
            inner.workloads_running.clone(),
        );
        r.register(
            "edge_node_clock_offset_seconds",
            "The orchestrator's wall clock minus this node's, as of the last time it welcomed \
             the node (0 before that)",
            inner.clock_offset.clone(),
        );
        r.register(
            "edge_node_route_choosers",
            "Proxy routes whose backend choice may use the routing model, by who chooses now: \
             the model, or peak-EWMA P2C because there is no model (no_model), it was refused \
             (refused), it failed to run (broken) or its predictions drifted (drift)",
            inner.route_choosers.clone(),
        );
        r.register(
            "edge_node_route_model_offers",
            "Offers of the fleet's routing model, by how they ended: installed and in use, \
             refused (it does not load or fit the routing schema) or failed (not fetched or \
             not installed); the node keeps the model it has unless installed",
            inner.route_model_offers.clone(),
        );
        r.register(
            "edge_node_prewarm_mode",
            "Who decides when workloads that scale to zero start (1 for the one that does): the \
             warming model, or today's rule (start on a request) because there is no model \
             (no_model), it was refused (refused), it failed to run (broken) or its \
             predictions drifted (drift); waiting: no workload scales to zero yet, and the \
             model loads when one does; off: pre-warming is turned off",
            inner.prewarm_mode.clone(),
        );
        r.register(
            "edge_node_prewarms",
            "Workloads that scale to zero started by pre-warming, before a request",
            inner.prewarms.clone(),
        );
        r.register(
            "edge_node_warm_model_offers",
            "Offers of the fleet's warming model, by how they ended: installed and in use, \
             refused (it does not load or fit the warming schema) or failed (not fetched or \
             not installed); the node keeps the model it has unless installed",
            inner.warm_model_offers.clone(),
        );
        inner.proxy.register(&mut inner.registry);
        inner.location.register(&mut inner.registry);
        let metrics = Self(Arc::new(inner));
        metrics.initialise_series();
        metrics
    }

    /// Creates every series of every label from a fixed set, at 0.
    fn initialise_series(&self) {
        let m = &self.0;
        for state in STATES {
            let state = state_name(state);
            m.state_changes
                .get_or_create(&StateLabel { state })
                .inc_by(0);
        }
        let zero = |family: &Family<ReasonLabel, Counter>, reason: &'static str| {
            family.get_or_create(&ReasonLabel { reason }).inc_by(0);
        };
        for failure in DialFailure::ALL {
            zero(&m.dial_failures, failure.as_str());
        }
        for code in RejectCode::ALL {
            zero(&m.rejections, code.as_str());
        }
        for handshake in ["full", "resumed"] {
            m.connections
                .get_or_create(&HandshakeLabel { handshake })
                .inc_by(0);
        }
        for reason in REFUSAL_REASONS {
            zero(&m.admission_refusals, reason);
        }
        for reason in FETCH_FAILURES {
            zero(&m.artifact_fetch_failures, reason);
        }
        for outcome in ModelOutcome::ALL {
            for family in [&m.route_model_offers, &m.warm_model_offers] {
                family
                    .get_or_create(&OutcomeLabel {
                        outcome: outcome.as_str(),
                    })
                    .inc_by(0);
            }
        }
        for reason in ExitReason::ALL {
            zero(&m.instance_exits, reason.as_str());
        }
        for reason in RestartReason::all() {
            zero(&m.instance_restarts, reason);
        }
        self.route_choosers(&[]);
        self.prewarm_mode(PrewarmMode::Off);
    }

    /// Sets `edge_node_prewarm_mode`: 1 for `now`, 0 for every other mode of the fixed set.
    fn prewarm_mode(&self, now: PrewarmMode) {
        for mode in PrewarmMode::ALL {
            self.0
                .prewarm_mode
                .get_or_create(&ModeLabel {
                    mode: mode.as_str(),
                })
                .set(i64::from(mode == now));
        }
    }

    /// Workloads started by pre-warming so far.
    pub fn prewarms(&self) -> u64 {
        self.0.prewarms.get()
    }

    /// How many routes each [`Mode`] chooses for, every mode of the fixed set written (0 for
    /// those absent).
    pub fn route_choosers(&self, modes: &[(Mode, usize)]) {
        let all = std::iter::once(Mode::Model).chain(Fallback::ALL.map(Mode::Fallback));
        for mode in all {
            let n = modes
                .iter()
                .find(|(m, _)| *m == mode)
                .map_or(0, |(_, n)| *n);
            self.0
                .route_choosers
                .get_or_create(&ModeLabel {
                    mode: mode.as_str(),
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// How far the orchestrator's clock is ahead of this node's, in seconds (negative:
    /// behind).
    pub fn clock_offset(&self, secs: i64) {
        self.0.clock_offset.set(secs);
    }

    /// The exposition in `format`.
    /// What the location client counts, into this registry.
    pub fn location(&self) -> Arc<crate::location::LocationCounters> {
        self.0.location.clone()
    }

    /// The proxy's families, counted into this registry.
    pub fn proxy(&self) -> edge_proxy::ProxyMetrics {
        self.0.proxy.clone()
    }

    pub fn encode(&self, format: Format) -> String {
        exposition::encode(&self.0.registry, format)
    }

    /// Logs `event` and counts it.
    pub fn emit(&self, event: &NodeEvent<'_>) {
        let m = &self.0;
        match event {
            NodeEvent::DialFailed {
                orchestrator,
                failure,
                error,
                retry_in,
            } => {
                let reason = failure.as_str();
                m.dial_failures.get_or_create(&ReasonLabel { reason }).inc();
                match (failure, retry_in) {
                    (DialFailure::Untrusted, _) => {
                        warn!(orchestrator, reason = %error, "orchestrator not trusted");
                    }
                    (_, Some(delay)) => warn!(
                        orchestrator,
                        error,
                        retry_in = ?delay,
                        "cannot reach the orchestrator"
                    ),
                    (_, None) => {}
                }
            }
            NodeEvent::Rejected {
                orchestrator,
                code,
                message,
                retry_in,
            } => {
                let reason = code.as_str();
                m.rejections.get_or_create(&ReasonLabel { reason }).inc();
                let reason = DialFailure::Rejected.as_str();
                m.dial_failures.get_or_create(&ReasonLabel { reason }).inc();
                match retry_in {
                    Some(delay) => warn!(orchestrator, %code, message,
                        retry_in = ?delay, "orchestrator rejected us"),
                    None => warn!(orchestrator, %code, message, "orchestrator rejected us"),
                }
            }
            NodeEvent::Enrolled { node } => {
                m.enrollments.inc();
                info!(node = %node, "enrolled; identity stored");
            }
            NodeEvent::Connected { resumed } => {
                let handshake = if *resumed { "resumed" } else { "full" };
                m.connections
                    .get_or_create(&HandshakeLabel { handshake })
                    .inc();
                debug!(handshake, "connected to the orchestrator");
            }
            NodeEvent::AdmissionRefused {
                workload,
                reason,
                detail,
                after_admission,
            } => {
                m.admission_refusals
                    .get_or_create(&ReasonLabel { reason })
                    .inc();
                match after_admission {
                    None => warn!(workload, reason = %detail, "refused"),
                    Some(generation) => warn!(workload, generation, reason = %detail,
                        "refused after admission"),
                }
            }
            NodeEvent::ArtifactFetched {
                workload,
                bytes,
                failure,
                retry_in,
            } => {
                m.artifact_bytes.inc_by(*bytes);
                match failure {
                    None => {
                        m.artifact_fetches.inc();
                        if *bytes > 0 {
                            info!(workload, bytes, "artifact fetched");
                        }
                    }
                    Some(e) => {
                        let reason = fetch_failure(e);
                        m.artifact_fetch_failures
                            .get_or_create(&ReasonLabel { reason })
                            .inc();
                        match retry_in {
                            Some(delay) => warn!(workload, error = %e, retry_in = ?delay,
                                "artifact fetch failed"),
                            None if matches!(e, FetchError::NoSpace { .. }) => {}
                            None => warn!(workload, error = %e, "artifact cannot be fetched"),
                        }
                    }
                }
            }
            NodeEvent::RouteModelOffer {
                model,
                outcome,
                error,
            } => model_offer(&m.route_model_offers, "routing", model, *outcome, error),
            NodeEvent::PrewarmMode { mode, model } => {
                self.prewarm_mode(*mode);
                let model = model.unwrap_or_default();
                match mode {
                    PrewarmMode::Off => info!("pre-warming is off"),
                    PrewarmMode::Waiting => info!(
                        model,
                        "pre-warming loads its model when a workload first scales to zero"
                    ),
                    PrewarmMode::On(Mode::Model) => {
                        info!(model, "the warming model decides when workloads start")
                    }
                    PrewarmMode::On(Mode::Fallback(reason)) => warn!(
                        reason = reason.as_str(),
                        model, "workloads start on a request only, instead of by the warming model"
                    ),
                }
            }
            NodeEvent::WarmModelOffer {
                model,
                outcome,
                error,
            } => model_offer(&m.warm_model_offers, "warming", model, *outcome, error),
            NodeEvent::Prewarmed { workload } => {
                m.prewarms.inc();
                debug!(workload, "pre-warmed before a request");
            }
        }
    }

    /// The node's state changed to `state`.
    pub fn state_changed(&self, state: State) {
        let state = state_name(state);
        self.0
            .state_changes
            .get_or_create(&StateLabel { state })
            .inc();
    }

    /// An admission refusal's fixed reason.
    pub fn refusal_reason(why: &Rejection) -> &'static str {
        refusal_reason(why)
    }

    /// A workload process started: counted, and running until the guard is dropped.
    /// `after`: how the one before it ended, if this is a restart.
    pub fn instance_started(&self, after: Option<RestartReason>) -> Running {
        self.0.instance_starts.inc();
        if let Some(reason) = after {
            let reason = reason.as_str();
            self.0
                .instance_restarts
                .get_or_create(&ReasonLabel { reason })
                .inc();
        }
        self.0.workloads_running.inc();
        Running(self.clone())
    }

    /// A workload process ended.
    pub fn instance_exited(&self, reason: ExitReason) {
        let reason = reason.as_str();
        self.0
            .instance_exits
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }
}

/// A running workload process, as `edge_node_workloads_running` counts it.
#[derive(Debug)]
pub struct Running(NodeMetrics);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.0.workloads_running.dec();
    }
}

/// A state as `/status` names it.
/// A model the fleet offered the node (`which`: "routing" or "warming"): counted by outcome
/// and logged, with why when it was not installed.
fn model_offer(
    offers: &Family<OutcomeLabel, Counter>,
    which: &'static str,
    model: &str,
    outcome: ModelOutcome,
    error: &Option<&str>,
) {
    offers
        .get_or_create(&OutcomeLabel {
            outcome: outcome.as_str(),
        })
        .inc();
    let error = error.unwrap_or_default();
    match outcome {
        ModelOutcome::Installed => {
            info!(model, which, "the fleet's model is installed and in use")
        }
        ModelOutcome::Refused => warn!(
            model,
            which, error, "the fleet's model was refused; the node keeps the one it has"
        ),
        ModelOutcome::Failed => warn!(
            model,
            which,
            error,
            "the fleet's model could not be fetched or installed; the node keeps the one it has"
        ),
    }
}

fn state_name(state: State) -> &'static str {
    match state {
        State::Starting => "starting",
        State::WaitingForJoinFile => "waiting_for_join_file",
        State::JoinFileInvalid => "join_file_invalid",
        State::Enrolling => "enrolling",
        State::Connecting => "connecting",
        State::Online => "online",
        State::Offline => "offline",
        State::Failed => "failed",
        State::IdentityConflict => "identity_conflict",
        State::Stopping => "stopping",
        State::CertificateExpired => "certificate_expired",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_names_are_the_status_documents() {
        for state in STATES {
            let json = serde_json::to_value(state).expect("serializes");
            assert_eq!(json, state_name(state));
        }
    }

    #[test]
    fn every_fixed_series_is_there_from_the_start() {
        let text = NodeMetrics::new().encode(Format::Text004);
        for series in [
            r#"edge_node_state_changes_total{state="online"} 0"#,
            r#"edge_node_dial_failures_total{reason="unreachable"} 0"#,
            r#"edge_node_rejections_total{reason="unknown_node"} 0"#,
            "edge_node_enrollments_total 0",
            r#"edge_node_admission_refusals_total{reason="no_space"} 0"#,
            r#"edge_node_artifact_fetch_failures_total{reason="hash_mismatch"} 0"#,
            "edge_node_artifact_fetched_bytes_total 0",
            r#"edge_node_instance_exits_total{reason="oom_killed"} 0"#,
            r#"edge_node_instance_restarts_total{reason="spawn_failed"} 0"#,
            "edge_node_workloads_running 0",
        ] {
            assert!(text.lines().any(|l| l == series), "{series}:\n{text}");
        }
    }

    #[test]
    fn pre_warming_shows_one_mode_of_a_fixed_set_and_counts_its_starts() {
        let metrics = NodeMetrics::new();
        let text = metrics.encode(Format::Text004);
        for series in [
            r#"edge_node_prewarm_mode{mode="off"} 1"#,
            r#"edge_node_prewarm_mode{mode="model"} 0"#,
            r#"edge_node_prewarm_mode{mode="refused"} 0"#,
            "edge_node_prewarms_total 0",
            r#"edge_node_warm_model_offers_total{outcome="refused"} 0"#,
        ] {
            assert!(text.lines().any(|l| l == series), "{series}:\n{text}");
        }
        metrics.emit(&NodeEvent::PrewarmMode {
            mode: PrewarmMode::On(Mode::Fallback(Fallback::Refused)),
            model: None,
        });
        metrics.emit(&NodeEvent::Prewarmed { workload: "a" });
        metrics.emit(&NodeEvent::Prewarmed { workload: "b" });
        let text = metrics.encode(Format::Text004);
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("edge_node_prewarm"))
            .collect();
        assert!(
            lines.contains(&r#"edge_node_prewarm_mode{mode="refused"} 1"#),
            "{text}"
        );
        assert!(
            lines.contains(&r#"edge_node_prewarm_mode{mode="off"} 0"#),
            "{text}"
        );
        assert!(lines.contains(&"edge_node_prewarms_total 2"), "{text}");
        assert_eq!(metrics.prewarms(), 2);
        // One series per mode of the fixed set, whatever a workload is called.
        assert_eq!(
            lines
                .iter()
                .filter(|l| l.starts_with("edge_node_prewarm_mode{"))
                .count(),
            PrewarmMode::ALL.len()
        );
    }

    #[test]
    fn the_clock_offset_is_a_gauge_in_seconds() {
        let metrics = NodeMetrics::new();
        let text = metrics.encode(Format::Text004);
        assert!(
            text.contains("\nedge_node_clock_offset_seconds 0\n"),
            "{text}"
        );
        metrics.clock_offset(94_608_000);
        let text = metrics.encode(Format::Text004);
        assert!(
            text.contains("\nedge_node_clock_offset_seconds 94608000\n"),
            "{text}"
        );
    }

    #[test]
    fn a_running_process_counts_until_it_is_gone() {
        let metrics = NodeMetrics::new();
        let first = metrics.instance_started(None);
        let second = metrics.instance_started(Some(RestartReason::Exit(ExitReason::Failed)));
        let text = metrics.encode(Format::Text004);
        assert!(text.contains("\nedge_node_workloads_running 2\n"), "{text}");
        assert!(
            text.contains("\nedge_node_instance_starts_total 2\n"),
            "{text}"
        );
        assert!(
            text.contains("\nedge_node_instance_restarts_total{reason=\"failed\"} 1\n"),
            "{text}"
        );
        drop((first, second));
        let text = metrics.encode(Format::Text004);
        assert!(text.contains("\nedge_node_workloads_running 0\n"), "{text}");
    }
}
