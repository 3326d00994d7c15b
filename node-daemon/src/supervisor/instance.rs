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
//!
//! A workload that scales to zero starts dormant: the task runs no lifecycle and no process,
//! reports `Stopped` with the message [`DORMANT`], and waits for a wake. Woken, it runs the
//! lifecycle as any workload until told to sleep, which stops the process gracefully and
//! leaves it dormant again. It answers each wake once the instance is ready (its health
//! check passed or, without one, every port it exposes accepts connections), or once it has
//! ended before that. Readiness is published on a watch for the supervisor to read.

use super::cgroup::{Group, LimitsBackend};
use super::health::{self, ProbeError};
use super::logs::{self, LogSink};
use super::process::{self, RunAs};
use super::restart::{Action, Exit, Lifecycle, RestartTuning};
use super::spec::WorkloadSpec;
use super::store::{InstanceRecord, Store};
use super::{InstanceStatus, Readiness, ScaleError, State};
use crate::metrics::{ExitReason, NodeMetrics, RestartReason, Running};
use crate::oci::runtime;
use nix::sys::signal::Signal;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::process::Child;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

/// How long what an exited process left behind gets between SIGTERM and SIGKILL.
const LEFTOVER_GRACE: Duration = Duration::from_secs(1);
/// How long to wait for the output pump to drain after the process is gone.
const PUMP_DRAIN: Duration = Duration::from_secs(1);
/// The status message of a dormant workload.
pub const DORMANT: &str = "scaled to zero";
/// The status message of a workload a local operator stopped.
pub const HELD: &str = "stopped by a local operator";

/// How a wake or a sleep is answered.
pub type Answer = oneshot::Sender<Result<(), ScaleError>>;

/// What the supervisor asks of a workload's task.
#[derive(Debug)]
pub enum Command {
    /// Stop the current instance gracefully, then run this spec.
    Replace(Box<WorkloadSpec>, Option<RunAs>),
    /// Stop gracefully and end the task.
    Stop,
    /// Start the workload if it is dormant; answer once it is ready, or has ended before.
    Wake(Answer),
    /// Stop it gracefully and leave it dormant; answer once it is.
    Sleep(Answer),
    /// A local operator's stop: as `Sleep`, for any workload, until a restart or a new spec.
    Hold(Answer),
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
    /// Whether the workload is ready for requests, for wakes and the proxy.
    pub readiness: watch::Sender<Readiness>,
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
    /// Stopped to go dormant.
    Sleep,
    End,
}

type Probe = Pin<Box<dyn Future<Output = Result<(), ProbeError>> + Send>>;
type Listening = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The wakes and sleeps the task has yet to answer.
#[derive(Debug, Default)]
struct Asked {
    /// Waiting for the instance to be ready.
    wakes: Vec<Answer>,
    /// Waiting for it to be dormant.
    sleeps: Vec<Answer>,
    /// When a wake found it dormant: the cold start is timed from there.
    woken_at: Option<Instant>,
    /// A local operator stopped it: dormant whether or not it scales to zero.
    held: bool,
}

impl Asked {
    fn ready(&mut self, spec: &WorkloadSpec) {
        if let Some(at) = self.woken_at.take() {
            let ready_by = if spec.health.is_some() {
                "health_check"
            } else {
                "ports"
            };
            info!(
                workload = %spec.name,
                version = %spec.version,
                cold_start_ms = u64::try_from(at.elapsed().as_millis()).unwrap_or(u64::MAX),
                ready_by,
                "woken from zero: ready"
            );
        }
        for wake in self.wakes.drain(..) {
            let _ = wake.send(Ok(()));
        }
    }

    fn fail_wakes(&mut self, error: &ScaleError) {
        self.woken_at = None;
        for wake in self.wakes.drain(..) {
            let _ = wake.send(Err(error.clone()));
        }
    }

    fn answer_sleeps(&mut self, result: &Result<(), ScaleError>) {
        for sleep in self.sleeps.drain(..) {
            let _ = sleep.send(result.clone());
        }
    }
}

/// Runs the workload until told to stop.
pub async fn run(
    ctx: InstanceCtx,
    spec: WorkloadSpec,
    run_as: Option<RunAs>,
    mut commands: mpsc::Receiver<Command>,
) {
    let (mut spec, mut run_as) = (Box::new(spec), run_as);
    let mut asked = Asked::default();
    let mut dormant = spec.scale_to_zero.is_some();
    loop {
        if dormant {
            rest(&ctx, &spec, asked.held);
            asked.answer_sleeps(&Ok(()));
            while asked.wakes.is_empty() {
                match commands.recv().await {
                    Some(Command::Wake(answer)) => asked.wakes.push(answer),
                    Some(Command::Sleep(answer) | Command::Hold(answer)) => {
                        let _ = answer.send(Ok(()));
                    }
                    Some(Command::Replace(new, who)) => {
                        info!(workload = %new.name, version = %new.version, "replacing the dormant workload");
                        discard_replaced(&spec, &new).await;
                        spec = new;
                        run_as = who;
                        if spec.scale_to_zero.is_none() {
                            break;
                        }
                        asked.held = false;
                        rest(&ctx, &spec, false);
                    }
                    Some(Command::Stop) | None => return,
                }
            }
            if !asked.wakes.is_empty() {
                info!(workload = %spec.name, version = %spec.version, "waking from zero");
                asked.woken_at = Some(Instant::now());
            }
            dormant = false;
            asked.held = false;
        }
        match run_spec(&ctx, &spec, run_as, &mut commands, &mut asked).await {
            Next::Replace(new, who) => {
                info!(workload = %new.name, version = %new.version, "replacing the workload");
                discard_replaced(&spec, &new).await;
                spec = new;
                run_as = who;
            }
            Next::Sleep => {}
            Next::End => {
                asked.fail_wakes(&ScaleError::Stopped);
                asked.answer_sleeps(&Ok(()));
                return;
            }
        }
        if !asked.sleeps.is_empty() {
            if spec.scale_to_zero.is_some() || asked.held {
                dormant = true;
            } else {
                // Replaced meanwhile by a spec that runs all the time.
                asked.answer_sleeps(&Err(ScaleError::AlwaysOn));
            }
        }
    }
}

/// Deletes the files of `old`'s container, which has stopped, unless `new` runs them too.
async fn discard_replaced(old: &WorkloadSpec, new: &WorkloadSpec) {
    if let Some(c) = old.container.clone()
        && new.container.as_ref().is_none_or(|n| n.bundle != c.bundle)
    {
        let _ = tokio::task::spawn_blocking(move || crate::oci::bundle::discard(&c)).await;
    }
}

/// A dormant workload's status: stopped, scaled to zero or by a local operator (`held`),
/// nothing running.
fn rest(ctx: &InstanceCtx, spec: &WorkloadSpec, held: bool) {
    ctx.readiness.send_replace(Readiness::Dormant);
    ctx.reporter.publish(InstanceStatus {
        name: spec.name.clone(),
        version: spec.version.clone(),
        state: State::Stopped,
        restarts: 0,
        pid: None,
        exit_code: None,
        message: if held { HELD } else { DORMANT }.into(),
    });
}

/// The ports whose accepting connections make a workload that scales to zero ready when it
/// has no health check: every port it exposes. Empty: it is ready once running.
fn ready_ports(spec: &WorkloadSpec) -> Vec<u16> {
    if spec.scale_to_zero.is_none() || spec.health.is_some() {
        return Vec::new();
    }
    let mut ports: Vec<u16> = spec.expose.iter().map(|e| e.port).collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

async fn run_spec(
    ctx: &InstanceCtx,
    spec: &WorkloadSpec,
    run_as: Option<RunAs>,
    commands: &mut mpsc::Receiver<Command>,
    asked: &mut Asked,
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
    // Readiness: the ports to find accepting (none: running is ready), the check of them
    // under way, and whether the current process passed it.
    let ports = ready_ports(spec);
    let mut listening: Option<Listening> = None;
    let mut listened = false;
    let mut ready = false;
    ctx.readiness.send_replace(Readiness::Waking);
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
                        stop_signal(spec)
                    };
                    if let Some(l) = &live {
                        debug!(workload = %spec.name, ?signal, pgid = l.pgid, "signalling the workload");
                        process::signal_all(Some(l.pgid), l.group.as_ref(), signal);
                    }
                }
            }
        }
        publish(ctx, spec, &machine, live.as_ref());
        let report = machine.report();
        let up = report.state == State::Running && next.is_none();
        if !up {
            listening = None;
            listened = false;
        }
        if up && !ports.is_empty() && !listened && listening.is_none() {
            listening = Some(Box::pin(health::listening(
                spec.probe_address(),
                ports.clone(),
            )));
        }
        let now_ready = up && (ports.is_empty() || listened);
        if now_ready != ready {
            ready = now_ready;
            let readiness = if ready {
                Readiness::Ready
            } else {
                Readiness::Waking
            };
            ctx.readiness.send_replace(readiness);
        }
        if ready {
            asked.ready(spec);
        } else if next.is_none()
            && !asked.wakes.is_empty()
            && matches!(
                report.state,
                State::Backoff | State::Failed | State::Stopped
            )
        {
            // Ended before it was ready: say so now rather than at the caller's deadline.
            asked.fail_wakes(&ScaleError::Exited {
                state: report.state,
                message: report.message.clone(),
            });
        }
        if machine.is_done()
            && let Some(n) = next.take()
        {
            return n;
        }

        let deadline = machine.poll_timeout();
        tokio::select! {
            command = commands.recv() => match command {
                Some(Command::Wake(answer)) => {
                    if ready {
                        let _ = answer.send(Ok(()));
                    } else {
                        asked.wakes.push(answer);
                    }
                }
                Some(Command::Sleep(answer)) => {
                    asked.sleeps.push(answer);
                    // A replacement or an end asked before stands; the sleep follows it.
                    if next.is_none() {
                        next = Some(Next::Sleep);
                    }
                    machine.stop(Instant::now());
                }
                Some(Command::Hold(answer)) => {
                    asked.sleeps.push(answer);
                    asked.held = true;
                    if next.is_none() {
                        next = Some(Next::Sleep);
                    }
                    machine.stop(Instant::now());
                }
                Some(Command::Replace(s, who)) => {
                    next = Some(Next::Replace(s, who));
                    machine.stop(Instant::now());
                }
                // The supervisor is gone: nobody will ever stop us otherwise.
                Some(Command::Stop) | None => {
                    next = Some(Next::End);
                    machine.stop(Instant::now());
                }
            },
            () = poll_listening(&mut listening) => {
                listening = None;
                listened = true;
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

/// The signal that asks the workload to stop: a container's own (its runtime passes it on),
/// else SIGTERM.
fn stop_signal(spec: &WorkloadSpec) -> Signal {
    spec.container
        .as_ref()
        .and_then(|c| Signal::try_from(c.stop_signal).ok())
        .unwrap_or(Signal::SIGTERM)
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

async fn poll_listening(listening: &mut Option<Listening>) {
    match listening {
        Some(l) => l.await,
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
    // A container of the same id that a killed runtime left in its state would make the
    // runtime refuse to run this one.
    if let Some(c) = &spec.container
        && let Err(error) = runtime::delete(&spec.command, &c.state_dir, &c.id).await
    {
        warn!(workload = %spec.name, %error, "cannot delete what a previous container left");
    }
    // The writable layer is gone with the mount namespace it was made in (a reboot, a
    // restarted service): mounted again over the same upper directory, it holds what the
    // container wrote before.
    if let Some(c) = &spec.container
        && let Some(overlay) = &c.overlay
    {
        crate::oci::root::mount(&c.rootfs, overlay)
            .map_err(|e| format!("mounting the container's writable layer: {e}"))?;
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
    // A container's runtime puts the container in a group of its own below the instance's,
    // and sets up its limits before it runs anything: the runtime itself stays outside, so
    // its own memory is not charged to the container's limit, and no address-space limit
    // (which a Go runtime would not survive) applies to it.
    let (rlimit_as, group_for_gate) = match &spec.container {
        Some(_) => (None, None),
        None => (prepared.rlimit_as, prepared.group.as_ref()),
    };
    let started = match process::spawn(spec, run_as, rlimit_as) {
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
    if let Some(g) = group_for_gate
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
    // Read before a container's group goes with it.
    let oom_before_delete = live.group.as_ref().map(Group::oom_kills);
    // The runtime is gone; what it ran may not be (a runtime killed by SIGKILL takes
    // nothing with it, and one that kept the container left its group and state).
    // Deleting the container ends it and clears the runtime's state.
    if let Some(c) = &spec.container
        && let Err(error) = runtime::delete(&spec.command, &c.state_dir, &c.id).await
    {
        warn!(workload = %spec.name, %error, "cannot delete the container");
    }
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
        .is_some_and(|g| g.oom_kills().max(oom_before_delete.unwrap_or(0)) > live.oom_before);
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
