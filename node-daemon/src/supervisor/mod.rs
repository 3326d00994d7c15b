//! The workload supervisor: runs the workloads the orchestrator admits to this node as real
//! processes, keeps them within their limits, restarts them by policy, probes their health,
//! keeps their logs, and brings them back after the daemon itself restarts.
//!
//! # Shape
//! - [`restart`]: [`Lifecycle`](restart::Lifecycle), each instance's state machine (restart
//!   policy, backoff with full jitter, crash loops, health thresholds, stop grace). Sans-IO:
//!   `now` in, actions out, seeded randomness.
//! - `instance`: the tokio task per workload that carries out the lifecycle's actions.
//! - `process`: the spawn gate, signals, `/proc`. `cgroup`: [`LimitsBackend`] (cgroup v2, v1,
//!   rlimit). `logs`: rotating files, tail, follow. `health`: the checks. `store`: spec and
//!   pid records on disk. [`spec`]: [`WorkloadSpec`] and validation.
//!
//! # Scale to zero
//! A workload whose spec has `scale_to_zero` is stored when applied but not started: it is
//! *dormant*, reported `Stopped` with the message "scaled to zero". [`Supervisor::wake`]
//! starts it and resolves once it is ready ([`Readiness::Ready`]); wakes at once start it
//! once, since its task alone starts processes and answers them all. [`Supervisor::sleep`]
//! stops it gracefully and leaves it dormant. After a daemon restart it is dormant again
//! (whatever ran is ended as below, and nothing is started). When to wake and when to sleep
//! is the proxy's business (`crate::proxy::wake`), not the supervisor's.
//!
//! # Daemon restarts: restart, never adopt
//! Every workload's spec is stored (`DATA_DIR/workloads/NAME/spec.json`, written atomically)
//! before it is started. When the daemon comes back, [`Supervisor::recover`] ends whatever a
//! previous daemon left running (everything in the workload's control group; without cgroups
//! the recorded process group, only if `/proc/PID/stat` still shows the recorded start time,
//! so a reused pid is never hit) and starts the stored workloads afresh, within a couple of
//! seconds. It does not adopt the old processes: a process we did not spawn is not our child,
//! so we cannot wait for it, cannot learn its exit status, and never get its output (its
//! pipes died with the old daemon). Adopting would mean polling `/proc` and guessing; a
//! clean restart keeps exactly one owner of every process, whose exit is always observed.
//!
//! # Invariants
//! - Never a thread per workload, never an unbounded buffer: one task per workload and one
//!   per running process's output; log tail, follow channel, status feed are all bounded.
//! - Never signals a process outside what it started: its own process groups (verified by
//!   start time after a crash) and its own control groups under the configured parent.
//! - A stopped or restarted instance leaves nothing running: its process group and its
//!   control group are empty before the next instance starts or `remove` returns.
//! - A workload's process never runs outside its limits: it is held at the spawn gate
//!   until it is in its control group (see `process`).
//! - Decisions live in `restart`; this module and the shells around it only move data.

pub mod cgroup;
mod health;
mod instance;
mod logs;
mod process;
pub use node_core::{restart, spec};
mod store;

pub use cgroup::{LimitsBackend, LimitsError};
pub use instance::DORMANT;
pub use logs::LogLimits;
pub use restart::{RestartTuning, State};
pub use spec::{HealthCheck, HealthProbe, Resources, RestartPolicy, SpecError, WorkloadSpec};
pub use store::StoreError;

use crate::metrics::NodeMetrics;
use instance::{Command, InstanceCtx, Reporter};
use logs::LogSink;
use process::RunAs;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use store::Store;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{info, warn};

/// How long a previous daemon's leftovers get between SIGTERM and SIGKILL: short, because
/// the workloads must be running again within two seconds of the daemon's return.
const LEFTOVER_GRACE: Duration = Duration::from_millis(500);
/// Status changes a subscriber may be behind before it loses some.
const EVENTS_CAPACITY: usize = 256;

/// One workload instance as the node reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceStatus {
    pub name: String,
    pub version: String,
    pub state: State,
    /// Restarts since this version was applied (or since the daemon started).
    pub restarts: u32,
    /// The running process, if any.
    pub pid: Option<u32>,
    /// The last exit: the exit status, or 128 + the signal number.
    pub exit_code: Option<i32>,
    /// Why it is in this state, for a person.
    pub message: String,
}

impl InstanceStatus {
    fn pending(spec: &WorkloadSpec) -> Self {
        Self {
            name: spec.name.clone(),
            version: spec.version.clone(),
            state: State::Pending,
            restarts: 0,
            pid: None,
            exit_code: None,
            message: "pending".into(),
        }
    }
}

/// Whether a workload is ready for requests, as [`Supervisor::wake`] waits for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// Scaled to zero: nothing runs and nothing is starting. The next wake starts it.
    Dormant,
    /// Starting, restarting, unhealthy or stopping: not ready for requests.
    Waking,
    /// Running and ready: its health check passed or, for a workload that scales to zero
    /// without one, every port it exposes accepts connections. A workload without either is
    /// ready once running.
    Ready,
}

/// Why a workload could not be woken or put to sleep.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScaleError {
    /// No workload of that name on this node.
    #[error("no workload named {0} on this node")]
    Unknown(String),
    /// A sleep asked of a workload that does not scale to zero.
    #[error("the workload does not scale to zero")]
    AlwaysOn,
    /// It was removed, or the supervisor shut down, before it was ready.
    #[error("the workload was stopped before it was ready")]
    Stopped,
    /// It ended before it was ready: its state and status message then. It stays as it is
    /// (a `Backoff` restarts); put it to sleep to have the next wake start afresh.
    #[error("the workload ended before it was ready: {message}")]
    Exited { state: State, message: String },
    /// It cannot be run as its spec says any more (its user is gone).
    #[error("{0}")]
    Refused(String),
}

/// Knobs for the supervisor as a whole; the defaults are the production values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SupervisorOptions {
    /// The control group all workloads go under (`edge-node/NAME`). Two daemons on one host
    /// need two parents: [`Supervisor::recover`] ends everything under its own.
    pub cgroup_parent: String,
    pub restart: RestartTuning,
    pub logs: LogLimits,
}

impl Default for SupervisorOptions {
    fn default() -> Self {
        Self {
            cgroup_parent: "edge-node".into(),
            restart: RestartTuning::default(),
            logs: LogLimits::default(),
        }
    }
}

/// Why a supervisor operation failed. Nothing about running workloads changed unless the
/// variant says so.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// Reading or writing the data directory failed; for `apply`, the workload was not
    /// started or changed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The spec is not acceptable; `field` names the part to fix.
    #[error("invalid workload spec: {0}")]
    InvalidSpec(#[from] SpecError),
    /// The spec names a user this node cannot run it as (unknown, or the daemon is not root).
    #[error("user {user}: {reason}")]
    User { user: String, reason: String },
    /// The options are not usable (e.g. an unsafe `cgroup_parent`).
    #[error("supervisor options: {0}")]
    Options(String),
}

/// The workload supervisor. Cheap to clone: every clone drives the same workloads.
#[derive(Debug, Clone)]
pub struct Supervisor {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Store,
    limits: LimitsBackend,
    options: SupervisorOptions,
    workloads: Mutex<BTreeMap<String, Handle>>,
    events: broadcast::Sender<InstanceStatus>,
    /// Bumped whenever a workload is added or removed; status changes go to `events`.
    members: watch::Sender<u64>,
    /// Where process starts, exits and restarts are counted.
    metrics: NodeMetrics,
    /// Serializes `apply`, `remove`, `recover` and `shutdown`.
    ops: tokio::sync::Mutex<()>,
}

#[derive(Debug)]
struct Handle {
    spec: WorkloadSpec,
    commands: mpsc::Sender<Command>,
    task: JoinHandle<()>,
    reporter: Reporter,
    logs: Arc<LogSink>,
    readiness: watch::Receiver<Readiness>,
}

impl Supervisor {
    /// A supervisor keeping its state under `data_dir`, with the default options. Starts
    /// nothing: call [`recover`](Self::recover) to bring back stored workloads.
    pub async fn open(data_dir: &Path, limits: LimitsBackend) -> Result<Self, SupervisorError> {
        Self::open_with(data_dir, limits, SupervisorOptions::default()).await
    }

    pub async fn open_with(
        data_dir: &Path,
        limits: LimitsBackend,
        options: SupervisorOptions,
    ) -> Result<Self, SupervisorError> {
        Self::open_observed(data_dir, limits, options, NodeMetrics::new()).await
    }

    /// As [`open_with`](Self::open_with), counting process starts, exits and restarts in
    /// `metrics`.
    pub async fn open_observed(
        data_dir: &Path,
        limits: LimitsBackend,
        options: SupervisorOptions,
        metrics: NodeMetrics,
    ) -> Result<Self, SupervisorError> {
        let parent_ok = !options.cgroup_parent.is_empty()
            && options
                .cgroup_parent
                .split('/')
                .all(|part| spec::validate_name(part).is_ok());
        if !parent_ok {
            return Err(SupervisorError::Options(format!(
                "cgroup_parent {:?}: use names of [a-z0-9._-] separated by '/'",
                options.cgroup_parent
            )));
        }
        let store = Store::open(data_dir)?;
        // Cgroups the kernel has but this daemon cannot use (a container's own cgroup with
        // processes in it, a read-only mount): limit by rlimit, and say so, rather than fail
        // every workload on a node nobody will visit.
        let limits = match limits.prepare_parent(&options.cgroup_parent) {
            Ok(()) => limits,
            Err(error) => {
                warn!(backend = limits.name(), %error, "control groups unusable; limiting workloads with rlimits");
                LimitsBackend::Rlimit
            }
        };
        info!(limits = limits.name(), data_dir = %data_dir.display(), "workload supervisor open");
        let (events, _) = broadcast::channel(EVENTS_CAPACITY);
        let (members, _) = watch::channel(0);
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                limits,
                options,
                workloads: Mutex::new(BTreeMap::new()),
                events,
                members,
                metrics,
                ops: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// How this supervisor limits workloads, for the node to report. `Rlimit` if the backend
    /// it was opened with turned out unusable.
    pub fn limits(&self) -> &LimitsBackend {
        &self.inner.limits
    }

    /// Where an OCI runtime puts `workload`'s container: see
    /// [`LimitsBackend::container_cgroups_path`].
    pub fn container_cgroups_path(&self, workload: &str) -> Option<String> {
        self.inner
            .limits
            .container_cgroups_path(&self.inner.options.cgroup_parent, workload)
    }

    fn workloads(&self) -> MutexGuard<'_, BTreeMap<String, Handle>> {
        // The map stays consistent across a panic elsewhere: every change is one insert/remove.
        self.inner
            .workloads
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Ends whatever a previous daemon left running and starts every stored workload again,
    /// but for those that scale to zero: they come back dormant. Returns the names started.
    /// A stored spec that cannot be read is logged and left on disk for a person; it does not
    /// stop the others.
    pub async fn recover(&self) -> Result<Vec<String>, SupervisorError> {
        let _ops = self.inner.ops.lock().await;
        let inner = &self.inner;
        let parent = &inner.options.cgroup_parent;
        let running: BTreeSet<String> = self.workloads().keys().cloned().collect();
        let stored = inner.store.names()?;
        let mut suspects: BTreeSet<String> = stored.iter().cloned().collect();
        suspects.extend(inner.limits.existing_groups(parent));
        suspects.retain(|n| !running.contains(n));

        let mut sweeps = JoinSet::new();
        for name in &suspects {
            let group = inner.limits.existing(parent, name);
            let pgid = match inner.store.load_record(name) {
                Ok(Some(r)) => process::stat(r.pid)
                    .filter(|s| s.start_ticks == r.start_ticks && s.pgrp == r.pid)
                    .map(|_| r.pid),
                Ok(None) => None,
                Err(error) => {
                    warn!(workload = %name, %error, "unreadable instance record");
                    None
                }
            };
            if group.is_none() && pgid.is_none() {
                continue;
            }
            let name = name.clone();
            sweeps.spawn(async move {
                let left = process::members(pgid, group.as_ref());
                if !left.is_empty() {
                    info!(workload = %name, pids = ?left, "ending what the previous daemon left running");
                }
                let survivors = process::sweep(pgid, group.as_ref(), LEFTOVER_GRACE).await;
                if !survivors.is_empty() {
                    warn!(workload = %name, ?survivors, "leftover processes survived SIGKILL");
                }
                if let Some(g) = group
                    && let Err(error) = g.remove()
                {
                    warn!(workload = %name, %error, "cannot remove a leftover control group");
                }
            });
        }
        while sweeps.join_next().await.is_some() {}

        let mut started = Vec::new();
        let mut dormant = Vec::new();
        for name in stored.iter().filter(|n| !running.contains(*n)) {
            if let Err(error) = inner.store.clear_record(name) {
                warn!(workload = %name, %error, "cannot clear the instance record");
            }
            let spec = match inner.store.load_spec(name) {
                Ok(Some(spec)) => spec,
                Ok(None) => continue,
                Err(error) => {
                    warn!(workload = %name, %error, "stored workload not recovered");
                    continue;
                }
            };
            let run_as = match resolve(&spec) {
                Ok(r) => r,
                Err(error) => {
                    warn!(workload = %name, %error, "stored workload not recovered");
                    continue;
                }
            };
            let scales_to_zero = spec.scale_to_zero.is_some();
            self.start_task(spec, run_as);
            if scales_to_zero {
                dormant.push(name.clone());
            } else {
                started.push(name.clone());
            }
        }
        info!(workloads = ?started, ?dormant, "recovered stored workloads");
        Ok(started)
    }

    /// Runs `spec`: starts it if new, replaces the running instance (gracefully) if the spec
    /// changed, does nothing if it is the same. The spec is stored first, so it survives a
    /// daemon restart. A new workload that scales to zero is not started but left dormant,
    /// and a dormant one stays dormant under a new spec that scales to zero.
    pub async fn apply(&self, spec: WorkloadSpec) -> Result<(), SupervisorError> {
        spec.validate()?;
        let run_as = resolve(&spec)?;
        let _ops = self.inner.ops.lock().await;
        let existing = self
            .workloads()
            .get(&spec.name)
            .map(|h| (h.spec == spec, h.commands.clone()));
        match existing {
            Some((true, _)) => Ok(()),
            Some((false, commands)) => {
                self.inner.store.save_spec(&spec)?;
                let replace = Command::Replace(Box::new(spec.clone()), run_as);
                if commands.send(replace).await.is_ok() {
                    if let Some(h) = self.workloads().get_mut(&spec.name) {
                        h.spec = spec;
                    }
                } else {
                    // The task is gone (it can only have panicked): start afresh.
                    self.start_task(spec, run_as);
                }
                Ok(())
            }
            None => {
                self.inner.store.save_spec(&spec)?;
                self.start_task(spec, run_as);
                Ok(())
            }
        }
    }

    fn start_task(&self, spec: WorkloadSpec, run_as: Option<RunAs>) {
        let inner = &self.inner;
        let reporter = Reporter {
            status: Arc::new(Mutex::new(InstanceStatus::pending(&spec))),
            events: inner.events.clone(),
        };
        let _ = inner.events.send(InstanceStatus::pending(&spec));
        let logs = Arc::new(LogSink::open(
            &inner.store.logs_dir(&spec.name),
            inner.options.logs,
        ));
        let (commands, receiver) = mpsc::channel(4);
        let (readiness, readiness_rx) = watch::channel(if spec.scale_to_zero.is_some() {
            Readiness::Dormant
        } else {
            Readiness::Waking
        });
        let ctx = InstanceCtx {
            store: inner.store.clone(),
            limits: inner.limits.clone(),
            cgroup_parent: inner.options.cgroup_parent.clone(),
            tuning: inner.options.restart,
            logs: logs.clone(),
            reporter: reporter.clone(),
            metrics: inner.metrics.clone(),
            readiness,
        };
        let task = tokio::spawn(instance::run(ctx, spec.clone(), run_as, receiver));
        let name = spec.name.clone();
        let handle = Handle {
            spec,
            commands,
            task,
            reporter,
            logs,
            readiness: readiness_rx,
        };
        if let Some(old) = self.workloads().insert(name, handle) {
            old.task.abort();
        }
        self.inner.members.send_modify(|n| *n += 1);
    }

    /// Stops the workload (SIGTERM, SIGKILL after its grace period, nothing left behind) and
    /// forgets it: spec, records and logs. Removing an unknown workload is not an error.
    pub async fn remove(&self, name: &str) -> Result<(), SupervisorError> {
        spec::validate_name(name)?;
        let _ops = self.inner.ops.lock().await;
        let handle = self.workloads().remove(name);
        if handle.is_some() {
            self.inner.members.send_modify(|n| *n += 1);
        }
        if let Some(h) = handle {
            let container = h.spec.container.clone();
            stop(h).await;
            if let Some(c) = container {
                let _ = tokio::task::spawn_blocking(move || crate::oci::bundle::discard(&c)).await;
            }
        }
        self.inner.store.remove(name)?;
        Ok(())
    }

    /// Starts a dormant workload and resolves once it is ready ([`Readiness::Ready`]), or
    /// has ended before that. Wakes at once start it once; a workload already ready answers
    /// at once, and one that does not scale to zero is only waited for. Dropping the future
    /// does not stop the start.
    pub async fn wake(&self, name: &str) -> Result<(), ScaleError> {
        let commands = self.commands_of(name)?;
        let (answer, answered) = oneshot::channel();
        commands
            .send(Command::Wake(answer))
            .await
            .map_err(|_| ScaleError::Stopped)?;
        answered.await.map_err(|_| ScaleError::Stopped)?
    }

    /// Stops a workload that scales to zero (SIGTERM, SIGKILL after its grace period) and
    /// leaves it dormant; resolves once it is. A dormant one answers at once.
    pub async fn sleep(&self, name: &str) -> Result<(), ScaleError> {
        let commands = {
            let workloads = self.workloads();
            let handle = workloads
                .get(name)
                .ok_or_else(|| ScaleError::Unknown(name.to_owned()))?;
            if handle.spec.scale_to_zero.is_none() {
                return Err(ScaleError::AlwaysOn);
            }
            handle.commands.clone()
        };
        let (answer, answered) = oneshot::channel();
        commands
            .send(Command::Sleep(answer))
            .await
            .map_err(|_| ScaleError::Stopped)?;
        answered.await.map_err(|_| ScaleError::Stopped)?
    }

    /// A local operator's restart: a running instance is stopped gracefully and started again
    /// under the same spec, a stopped one is started. Resolves once it is asked, not once it
    /// runs (its state changes are reported as ever).
    pub async fn restart(&self, name: &str) -> Result<(), ScaleError> {
        let spec = {
            let workloads = self.workloads();
            let handle = workloads
                .get(name)
                .ok_or_else(|| ScaleError::Unknown(name.to_owned()))?;
            handle.spec.clone()
        };
        if spec.scale_to_zero.is_some() && self.readiness(name) == Some(Readiness::Dormant) {
            return self.wake(name).await;
        }
        let run_as = resolve(&spec).map_err(|e| ScaleError::Refused(e.to_string()))?;
        self.commands_of(name)?
            .send(Command::Replace(Box::new(spec), run_as))
            .await
            .map_err(|_| ScaleError::Stopped)
    }

    /// A local operator's stop: the instance is stopped gracefully (SIGKILL after its grace
    /// period) and stays stopped until [`restart`](Self::restart), a new spec, or the
    /// daemon's next start. Resolves once nothing runs.
    pub async fn hold(&self, name: &str) -> Result<(), ScaleError> {
        let commands = self.commands_of(name)?;
        let (answer, answered) = oneshot::channel();
        commands
            .send(Command::Hold(answer))
            .await
            .map_err(|_| ScaleError::Stopped)?;
        answered.await.map_err(|_| ScaleError::Stopped)?
    }

    /// Whether the workload is ready for requests; `None` if there is no such workload.
    pub fn readiness(&self, name: &str) -> Option<Readiness> {
        self.workloads().get(name).map(|h| *h.readiness.borrow())
    }

    fn commands_of(&self, name: &str) -> Result<mpsc::Sender<Command>, ScaleError> {
        self.workloads()
            .get(name)
            .map(|h| h.commands.clone())
            .ok_or_else(|| ScaleError::Unknown(name.to_owned()))
    }

    pub fn status(&self, name: &str) -> Option<InstanceStatus> {
        self.workloads().get(name).map(|h| h.reporter.snapshot())
    }

    /// The executable of every workload it runs.
    pub fn commands(&self) -> Vec<std::path::PathBuf> {
        self.workloads()
            .values()
            .map(|h| h.spec.command.clone())
            .collect()
    }

    /// The container of every workload that runs one.
    pub fn containers(&self) -> Vec<spec::Container> {
        self.workloads()
            .values()
            .filter_map(|h| h.spec.container.clone())
            .collect()
    }

    pub fn statuses(&self) -> Vec<InstanceStatus> {
        self.workloads()
            .values()
            .map(|h| h.reporter.snapshot())
            .collect()
    }

    /// Every workload's spec with its status now: what the proxy routes to.
    pub fn served(&self) -> Vec<(WorkloadSpec, InstanceStatus)> {
        self.workloads()
            .values()
            .map(|h| (h.spec.clone(), h.reporter.snapshot()))
            .collect()
    }

    /// Told whenever a workload is added or removed (its status changes go to
    /// [`subscribe`](Self::subscribe)).
    pub fn watch_members(&self) -> watch::Receiver<u64> {
        self.inner.members.subscribe()
    }

    /// Every status change of every workload, from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<InstanceStatus> {
        self.inner.events.subscribe()
    }

    /// The last `lines` lines the workload printed (stdout and stderr interleaved).
    pub fn log_tail(&self, name: &str, lines: usize) -> Vec<String> {
        self.workloads()
            .get(name)
            .map(|h| h.logs.tail(lines))
            .unwrap_or_default()
    }

    /// The workload's output lines as they are printed, from now on.
    pub fn follow_logs(&self, name: &str) -> Option<broadcast::Receiver<String>> {
        self.workloads().get(name).map(|h| h.logs.subscribe())
    }

    /// The last `lines` lines and a feed of every line printed after them, with nothing
    /// lost or repeated in between; `None` if there is no such workload. The feed ends when
    /// the workload is removed.
    pub fn log_tail_and_follow(
        &self,
        name: &str,
        lines: usize,
    ) -> Option<(Vec<String>, broadcast::Receiver<String>)> {
        self.workloads()
            .get(name)
            .map(|h| h.logs.tail_and_subscribe(lines))
    }

    /// Stops every workload gracefully, all at once, and returns when none is left. Their
    /// specs stay stored: the next [`recover`](Self::recover) starts them again.
    pub async fn shutdown(&self) {
        let _ops = self.inner.ops.lock().await;
        let handles: Vec<Handle> = std::mem::take(&mut *self.workloads())
            .into_values()
            .collect();
        for h in &handles {
            let _ = h.commands.send(Command::Stop).await;
        }
        for h in handles {
            let _ = h.task.await;
        }
        self.inner
            .limits
            .remove_parent(&self.inner.options.cgroup_parent);
        info!("all workloads stopped");
    }
}

async fn stop(h: Handle) {
    // A closed channel means the task already ended.
    let _ = h.commands.send(Command::Stop).await;
    let _ = h.task.await;
}

fn resolve(spec: &WorkloadSpec) -> Result<Option<RunAs>, SupervisorError> {
    match &spec.user {
        None => Ok(None),
        Some(user) => process::resolve_user(user).map_err(|reason| SupervisorError::User {
            user: user.clone(),
            reason,
        }),
    }
}
