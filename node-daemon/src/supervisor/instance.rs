//! The tokio task that runs one workload: a thin shell around its [`Lifecycle`].
//!
//! It carries out the lifecycle's actions (spawn into a fresh control group, probe, SIGTERM,
//! SIGKILL), feeds back what happened (spawned, exited, probe result, deadline reached,
//! stop or replace asked), and publishes every status change. One task per workload, plus one
//! output pump per running process; no threads.
//!
//! Whenever a process ends, for whatever reason, everything it left behind in its process
//! group and control group is ended too, the group removed and the pid record cleared, before
//! the lifecycle hears of the exit: a restarted instance never meets its predecessor's
//! children. This module makes no decision of its own.

use super::cgroup::{Group, LimitsBackend};
use super::health::{self, ProbeError};
use super::logs::{self, LogSink};
use super::process::{self, RunAs};
use super::restart::{Action, Exit, Lifecycle, RestartTuning};
use super::spec::WorkloadSpec;
use super::store::{InstanceRecord, Store};
use super::{InstanceStatus, State};
use crate::metrics::{ExitReason, NodeMetrics, RestartReason, Running};
use nix::sys::signal::Signal;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::process::Child;
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

/// How long what an exited process left behind gets between SIGTERM and SIGKILL.
const LEFTOVER_GRACE: Duration = Duration::from_secs(1);
/// How long to wait for the output pump to drain after the process is gone.
const PUMP_DRAIN: Duration = Duration::from_secs(1);

/// What the supervisor asks of a workload's task.
#[derive(Debug)]
pub enum Command {
    /// Stop the current instance gracefully, then run this spec.
    Replace(Box<WorkloadSpec>, Option<RunAs>),
    /// Stop gracefully and end the task.
    Stop,
}

/// Publishes a workload's status: the shared snapshot and the change feed.
#[derive(Debug, Clone)]
pub struct Reporter {
    pub status: Arc<Mutex<InstanceStatus>>,
    pub events: broadcast::Sender<InstanceStatus>,
}

impl Reporter {
    pub fn snapshot(&self) -> InstanceStatus {
        self.status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn publish(&self, new: InstanceStatus) {
        {
            let mut current = self.status.lock().unwrap_or_else(PoisonError::into_inner);
            if *current == new {
                return;
            }
            *current = new.clone();
        }
        if matches!(new.state, State::Failed | State::Unhealthy | State::Backoff) {
            warn!(workload = %new.name, state = ?new.state, restarts = new.restarts, message = %new.message, "workload state");
        } else {
            info!(workload = %new.name, state = ?new.state, restarts = new.restarts, pid = ?new.pid, message = %new.message, "workload state");
        }
        // Nobody subscribed is fine.
        let _ = self.events.send(new);
    }
}

/// What a workload's task needs from the supervisor.
#[derive(Debug)]
pub struct InstanceCtx {
    pub store: Store,
    pub limits: LimitsBackend,
    pub cgroup_parent: String,
    pub tuning: RestartTuning,
    pub logs: Arc<LogSink>,
    pub reporter: Reporter,
    pub metrics: NodeMetrics,
}

/// A running process and what belongs to it.
#[derive(Debug)]
struct Live {
    child: Child,
    pid: u32,
    pgid: i32,
    group: Option<Group>,
    oom_before: u64,
    pump: JoinHandle<()>,
    /// Limits that could not be enforced, for the status message.
    notes: Vec<String>,
    /// Counts it as running until it is gone.
    running: Option<Running>,
}

enum Next {
    Replace(Box<WorkloadSpec>, Option<RunAs>),
    End,
}

type Probe = Pin<Box<dyn Future<Output = Result<(), ProbeError>> + Send>>;

/// Runs the workload until told to stop.
pub async fn run(
    ctx: InstanceCtx,
    spec: WorkloadSpec,
    run_as: Option<RunAs>,
    mut commands: mpsc::Receiver<Command>,
) {
    let (mut spec, mut run_as) = (Box::new(spec), run_as);
    loop {
        match run_spec(&ctx, &spec, run_as, &mut commands).await {
            Next::Replace(new, who) => {
                info!(workload = %new.name, version = %new.version, "replacing the workload");
                spec = new;
                run_as = who;
            }
            Next::End => return,
        }
    }
}

async fn run_spec(
    ctx: &InstanceCtx,
    spec: &WorkloadSpec,
    run_as: Option<RunAs>,
    commands: &mut mpsc::Receiver<Command>,
) -> Next {
    let mut machine = Lifecycle::new(
        spec.restart,
        spec.health.as_ref(),
        spec.stop_grace(),
        ctx.tuning,
        fastrand::u64(..),
    );
    let mut live: Option<Live> = None;
    let mut probe: Option<Probe> = None;
    let mut next: Option<Next> = None;
    // How the last process of this spec ended: a start after it is a restart.
    let mut last_end: Option<RestartReason> = None;
    machine.start(Instant::now());
    loop {
        while let Some(action) = machine.poll_action() {
            match action {
                Action::Spawn => match start(ctx, spec, run_as).await {
                    Ok(mut l) => {
                        l.running = Some(ctx.metrics.instance_started(last_end.take()));
                        live = Some(l);
                        machine.handle_spawned(Instant::now());
                    }
                    Err(reason) => {
                        warn!(workload = %spec.name, %reason, "cannot start the workload");
                        last_end = Some(RestartReason::SpawnFailed);
                        machine.handle_spawn_failed(Instant::now(), &reason);
                    }
                },
                Action::Probe => {
                    if let Some(h) = &spec.health {
                        let timeout = Duration::from_millis(h.timeout_ms);
                        probe = Some(Box::pin(health::probe(
                            h.check.clone(),
                            spec.probe_address(),
                            timeout,
                            spec.env.clone(),
                            run_as,
                        )));
                    }
                }
                Action::Terminate | Action::Kill => {
                    let signal = if action == Action::Kill {
                        Signal::SIGKILL
                    } else {
                        Signal::SIGTERM
                    };
                    if let Some(l) = &live {
                        debug!(workload = %spec.name, ?signal, pgid = l.pgid, "signalling the workload");
                        process::signal_all(Some(l.pgid), l.group.as_ref(), signal);
                    }
                }
            }
        }
        publish(ctx, spec, &machine, live.as_ref());
        if machine.is_done()
            && let Some(n) = next.take()
        {
            return n;
        }

        let deadline = machine.poll_timeout();
        tokio::select! {
            command = commands.recv() => {
                next = Some(match command {
                    Some(Command::Replace(s, who)) => Next::Replace(s, who),
                    // The supervisor is gone: nobody will ever stop us otherwise.
                    Some(Command::Stop) | None => Next::End,
                });
                machine.stop(Instant::now());
            }
            status = wait(&mut live) => {
                probe = None;
                if let Some(l) = live.take() {
                    let exit = finish(ctx, spec, l, status).await;
                    let reason = exit_reason(&exit, next.is_some(), machine.report().state);
                    ctx.metrics.instance_exited(reason);
                    last_end = Some(RestartReason::Exit(reason));
                    machine.handle_exit(Instant::now(), exit);
                }
            }
            () = sleep_until(deadline) => machine.handle_timeout(Instant::now()),
            result = poll_probe(&mut probe) => {
                probe = None;
                machine.handle_probe(Instant::now(), result.map_err(|e| e.to_string()));
            }
        }
    }
}

/// Why a process ended, as the metrics count it: `stopping`, we were told to stop it; in
/// `state` when it ended (unhealthy: the lifecycle ended it for its health).
fn exit_reason(exit: &Exit, stopping: bool, state: State) -> ExitReason {
    if stopping {
        ExitReason::Stopped
    } else if state == State::Unhealthy {
        ExitReason::Unhealthy
    } else if exit.oom_killed {
        ExitReason::OomKilled
    } else if exit.signal.is_some() {
        ExitReason::Signalled
    } else if exit.code == Some(0) {
        ExitReason::Exited
    } else {
        ExitReason::Failed
    }
}

fn publish(ctx: &InstanceCtx, spec: &WorkloadSpec, machine: &Lifecycle, live: Option<&Live>) {
    let report = machine.report();
    let mut message = report.message.clone();
    if let Some(l) = live
        && !l.notes.is_empty()
        && matches!(report.state, State::Starting | State::Running)
    {
        message = format!("{message} ({})", l.notes.join("; "));
    }
    ctx.reporter.publish(InstanceStatus {
        name: spec.name.clone(),
        version: spec.version.clone(),
        state: report.state,
        restarts: report.restarts,
        pid: live.map(|l| l.pid),
        exit_code: report.exit_code,
        message,
    });
}

async fn wait(live: &mut Option<Live>) -> std::io::Result<std::process::ExitStatus> {
    match live {
        Some(l) => l.child.wait().await,
        None => std::future::pending().await,
    }
}

async fn poll_probe(probe: &mut Option<Probe>) -> Result<(), ProbeError> {
    match probe {
        Some(p) => p.await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Prepares the group, spawns the gate, puts it in the group, records it and lets it run.
async fn start(
    ctx: &InstanceCtx,
    spec: &WorkloadSpec,
    run_as: Option<RunAs>,
) -> Result<Live, String> {
    let prepared = ctx
        .limits
        .prepare(&ctx.cgroup_parent, &spec.name, &spec.resources)
        .map_err(|e| e.to_string())?;
    for note in &prepared.notes {
        warn!(workload = %spec.name, note = %note, "limit not enforced as asked");
    }
    // Normally empty. Not so if a crashed daemon's instance is still there and `apply` came
    // before `recover`: two instances must never run side by side.
    if let Some(g) = &prepared.group
        && !g.pids().is_empty()
    {
        warn!(workload = %spec.name, pids = ?g.pids(), "ending a previous instance still in the group");
        let survivors = process::sweep(None, Some(g), LEFTOVER_GRACE).await;
        if !survivors.is_empty() {
            return Err(format!(
                "processes {survivors:?} of a previous instance survive SIGKILL"
            ));
        }
    }
    let started = match process::spawn(spec, run_as, prepared.rlimit_as) {
        Ok(s) => s,
        Err(e) => {
            if let Some(g) = &prepared.group {
                let _ = g.remove();
            }
            return Err(e.to_string());
        }
    };
    let process::Started {
        mut child,
        pid,
        gate,
        stdout,
        stderr,
    } = started;
    let pgid = i32::try_from(pid).map_err(|_| format!("pid {pid} out of range"))?;
    if let Some(g) = &prepared.group
        && let Err(e) = g.add(pid)
    {
        // Never let it run outside its limits: end the gate before it execs anything.
        drop(gate);
        process::signal_all(Some(pgid), None, Signal::SIGKILL);
        let _ = child.wait().await;
        let _ = g.remove();
        return Err(e.to_string());
    }
    if let Some(stat) = process::stat(pgid) {
        let record = InstanceRecord {
            pid: pgid,
            start_ticks: stat.start_ticks,
        };
        if let Err(error) = ctx.store.save_record(&spec.name, &record) {
            warn!(workload = %spec.name, %error, "cannot record the instance; a daemon crash may leave it running");
        }
    }
    let oom_before = prepared.group.as_ref().map_or(0, Group::oom_kills);
    let sink = ctx.logs.clone();
    let pump = tokio::spawn(async move { logs::pump(stdout, stderr, &sink).await });
    if let Err(error) = process::release(gate).await {
        // It died already; its exit will say why.
        debug!(workload = %spec.name, %error, "gate closed before release");
    }
    info!(workload = %spec.name, pid, limits = ctx.limits.name(), "workload started");
    Ok(Live {
        child,
        pid,
        pgid,
        group: prepared.group,
        oom_before,
        pump,
        notes: prepared.notes,
        running: None,
    })
}

/// The main process is gone: end what it left, read why it ended, clean up.
async fn finish(
    ctx: &InstanceCtx,
    spec: &WorkloadSpec,
    live: Live,
    status: std::io::Result<std::process::ExitStatus>,
) -> Exit {
    let (code, signal) = match status {
        Ok(s) => process::exit_parts(s),
        Err(error) => {
            warn!(workload = %spec.name, %error, "cannot read the exit status");
            (None, None)
        }
    };
    let survivors = process::sweep(
        Some(live.pgid),
        live.group.as_ref(),
        LEFTOVER_GRACE.min(spec.stop_grace()),
    )
    .await;
    if !survivors.is_empty() {
        warn!(workload = %spec.name, ?survivors, "processes survived SIGKILL");
    }
    let oom_killed = live
        .group
        .as_ref()
        .is_some_and(|g| g.oom_kills() > live.oom_before);
    if let Some(g) = &live.group
        && let Err(error) = g.remove()
    {
        debug!(workload = %spec.name, %error, "cannot remove the control group");
    }
    if let Err(error) = ctx.store.clear_record(&spec.name) {
        warn!(workload = %spec.name, %error, "cannot clear the instance record");
    }
    // Every writer is gone, so the pipes are at EOF; don't wait on a stuck pump anyway.
    let mut pump = live.pump;
    if tokio::time::timeout(PUMP_DRAIN, &mut pump).await.is_err() {
        pump.abort();
    }
    Exit {
        code,
        signal,
        oom_killed,
    }
}
