//! The node's workload agent: turns the orchestrator's assignments into running processes.
//!
//! An assignment is admitted (or refused) against the node's own measurements, its artifact is
//! fetched over the current connection (resuming after a cut, retried with full-jitter backoff,
//! verified before use; refused after all if it turns out not to fit the disk), and the supervisor runs
//! it. Every state change goes back to the orchestrator as
//! a report; after a reconnect the node re-sends the state of everything it runs, so status is
//! never minutes late.
//!
//! It owns no socket: the daemon hands it the current connection and carries its messages.

use crate::applied::{self, AppliedFile};
use crate::artifacts::{ArtifactCache, FetchError};
use crate::metrics::{NodeEvent, NodeMetrics};
use crate::oci::bundle::{self, BlobSource, Containers, PrepareError};
use crate::oci::runtime::Runtime;
use crate::supervisor::{
    self, HealthCheck, HealthProbe, InstanceStatus, LimitsBackend, Resources, State, Supervisor,
    SupervisorError, SupervisorOptions, WorkloadSpec,
};
use edge_proto::{AdmissionReply, Assignment, NodeMsg, WorkloadReport, WorkloadState, text};
use node_core::admission::{Admission, Measured, Request, Reserve, container_platform};
use node_core::backoff::{Backoff, BackoffPolicy};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

/// How a failed artifact fetch backs off: at most 500 ms, doubling to at most 60 s.
const FETCH_RETRY: BackoffPolicy = BackoffPolicy {
    base: Duration::from_millis(500),
    max: Duration::from_secs(60),
};

/// The waits between the attempts of one artifact fetch: [`node_core::backoff`]'s full jitter,
/// so the nodes that lost the orchestrator together do not all ask again at once. The caller
/// gives the random draw. A new fetch starts from [`FETCH_RETRY`]'s base, and so does the
/// wait after an attempt that stored bytes before it failed: the transfer works and resumes
/// from there, so there is no reason to wait long.
#[derive(Debug)]
struct FetchRetry {
    backoff: Backoff,
}

impl FetchRetry {
    fn new() -> Self {
        Self {
            backoff: Backoff::new(FETCH_RETRY),
        }
    }

    /// A retryable failure: the wait before the next attempt, from `draw`, a uniformly random
    /// `u64`. `progressed`: the attempt stored some of the artifact before it failed.
    fn failed(&mut self, progressed: bool, draw: u64) -> Duration {
        if progressed {
            self.backoff.reset();
        }
        self.backoff.next_delay(draw)
    }
}

#[derive(Debug, Default)]
struct Book {
    admission: Admission,
    /// The generation of each workload's latest assignment: reports name it.
    generations: HashMap<String, u64>,
    /// The artifact of each workload's latest assignment: kept by the cache's collection.
    artifacts: HashMap<String, crate::artifacts::Digest>,
    /// The limits each admitted workload reserved, to reserve them again after a restart.
    requests: HashMap<String, Request>,
    /// Counts assignments and unassignments in the order they arrive; `last_op` holds the
    /// count of each workload's latest. A stop that is overtaken by a newer assignment of
    /// the same name (delete, then deploy again at once) must not stop the new one.
    ops: u64,
    last_op: HashMap<String, u64>,
}

impl Book {
    fn op(&mut self, name: &str) -> u64 {
        self.ops += 1;
        self.last_op.insert(name.to_owned(), self.ops);
        self.ops
    }
}

/// Keeps the artifact cache's collection away while held (see [`Workloads::fetch_artifact`]).
#[derive(Debug)]
pub struct ArtifactInUse {
    _guard: tokio::sync::OwnedRwLockReadGuard<()>,
}

/// The agent. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Workloads {
    supervisor: Supervisor,
    cache: Arc<ArtifactCache>,
    book: Arc<Mutex<Book>>,
    conn: watch::Receiver<Option<quinn::Connection>>,
    out: mpsc::Sender<NodeMsg>,
    /// Fetch-and-start holds it shared, garbage collection alone: an artifact found in the
    /// cache is never collected before the workload that found it runs.
    cache_use: Arc<tokio::sync::RwLock<()>>,
    /// What every workload finds in its environment about the node.
    node_env: Arc<[(String, String)]>,
    metrics: NodeMetrics,
    /// What was admitted, kept for the hello after a restart.
    applied: AppliedFile,
    /// The runtime, layers and bundles of `driver = "oci"` workloads.
    containers: Containers,
}

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Supervisor(#[from] SupervisorError),
    #[error("artifact cache: {0}")]
    Cache(std::io::Error),
    #[error("container store: {0}")]
    Containers(std::io::Error),
}

impl Workloads {
    /// Opens the supervisor (restarting what ran before the daemon stopped) and the artifact
    /// cache. `out` carries reports to the orchestrator; `conn` is the current connection;
    /// what happens is counted in `metrics`.
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        data_dir: &Path,
        node_name: &str,
        node_address: Option<std::net::IpAddr>,
        reserve: Reserve,
        limits: LimitsBackend,
        runtimes: Vec<Runtime>,
        conn: watch::Receiver<Option<quinn::Connection>>,
        out: mpsc::Sender<NodeMsg>,
        metrics: NodeMetrics,
    ) -> Result<Self, StartError> {
        let options = SupervisorOptions {
            // One parent per node, so nodes sharing a host never stop each other's workloads.
            cgroup_parent: format!("edge-node-{node_name}"),
            ..SupervisorOptions::default()
        };
        let supervisor =
            Supervisor::open_observed(data_dir, limits, options, metrics.clone()).await?;
        let cache = Arc::new(ArtifactCache::open(data_dir).map_err(StartError::Cache)?);
        let containers = Containers::open(data_dir, runtimes).map_err(StartError::Containers)?;
        let agent = Self {
            supervisor,
            cache,
            book: Arc::new(Mutex::new(Book {
                admission: Admission::new(reserve),
                generations: HashMap::new(),
                artifacts: HashMap::new(),
                requests: HashMap::new(),
                ops: 0,
                last_op: HashMap::new(),
            })),
            cache_use: Arc::new(tokio::sync::RwLock::new(())),
            conn,
            out,
            node_env: node_env(node_name, node_address).into(),
            metrics,
            applied: AppliedFile::new(data_dir),
            containers,
        };
        // Subscribed before anything starts: a workload restarted below reports `Running`
        // within milliseconds, and that change must reach the orchestrator (and the outbox).
        let changes = agent.supervisor.subscribe();
        let restarted = agent.supervisor.recover().await?;
        if !restarted.is_empty() {
            info!(workloads = ?restarted, "restarted workloads from before the daemon stopped");
        }
        agent.readmit();
        tokio::spawn(agent.clone().forward_reports(changes));
        // Containers in the runtime's state that no workload runs any more: a daemon
        // killed mid-stop, or a workload forgotten while the daemon was down.
        let held = agent.supervisor.containers();
        let running = held.iter().map(|c| c.id.clone()).collect();
        agent.containers.reap(&running).await;
        let bundles = held.into_iter().map(|c| c.bundle).collect();
        let containers = agent.containers.clone();
        match tokio::task::spawn_blocking(move || containers.discard_orphans(&bundles)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => warn!(%error, "cannot delete unused container bundles"),
            Err(error) => warn!(%error, "deleting unused container bundles panicked"),
        }
        Ok(agent)
    }

    fn book(&self) -> MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes back what was admitted before the daemon stopped, for each workload the
    /// supervisor runs again: its generation, artifact and reserved limits. What no longer
    /// runs is dropped from the record.
    fn readmit(&self) {
        let stored = self.applied.load();
        {
            let mut book = self.book();
            for (name, entry) in &stored {
                if self.supervisor.status(name).is_none() {
                    continue;
                }
                let request = Request {
                    memory_bytes: entry.memory_bytes,
                    disk_bytes: entry.disk_bytes,
                    download_bytes: 0,
                };
                book.admission.adopt(name, request);
                book.generations.insert(name.clone(), entry.generation);
                book.artifacts.insert(name.clone(), entry.artifact);
                book.requests.insert(name.clone(), request);
            }
        }
        self.store_applied();
    }

    /// Writes the record of what is admitted.
    fn store_applied(&self) {
        self.applied.store(|| {
            let book = self.book();
            let mut entries = Vec::with_capacity(book.generations.len());
            for (name, generation) in &book.generations {
                let Some(artifact) = book.artifacts.get(name) else {
                    continue;
                };
                let request = book.requests.get(name).copied().unwrap_or_default();
                entries.push((
                    name.clone(),
                    applied::Entry {
                        generation: *generation,
                        artifact: *artifact,
                        memory_bytes: request.memory_bytes,
                        disk_bytes: request.disk_bytes,
                    },
                ));
            }
            entries
        });
    }

    /// What the next hello says it holds: each admitted workload at its generation, and
    /// whether that is everything the supervisor runs.
    pub fn applied(&self) -> (Vec<(String, u64)>, bool) {
        let applied: Vec<(String, u64)> = self
            .book()
            .generations
            .iter()
            .map(|(name, generation)| (name.clone(), *generation))
            .collect();
        let complete = self
            .supervisor
            .statuses()
            .iter()
            .all(|s| applied.iter().any(|(name, _)| *name == s.name));
        (applied, complete)
    }

    /// Every workload the node holds: admitted, or run by the supervisor.
    pub fn held(&self) -> Vec<String> {
        let mut names: std::collections::BTreeSet<String> =
            self.book().generations.keys().cloned().collect();
        names.extend(self.supervisor.statuses().into_iter().map(|s| s.name));
        names.into_iter().collect()
    }

    /// Decides on an assignment. If admitted, the download and start go on in the background.
    pub fn assign(&self, a: Assignment, now: Measured) -> AdmissionReply {
        let name = a.workload.to_string();
        // A container needs a runtime and its image's platform for this node before
        // anything else is weighed; then its layers, downloaded and unpacked, count as disk.
        let platform = a.image.as_ref().map(|image| {
            container_platform(
                image,
                std::env::consts::ARCH,
                &self.containers.runtime_names(),
            )
        });
        let download_bytes = match &platform {
            Some(Ok(p)) => p.download_bytes.saturating_add(p.unpacked_bytes),
            Some(Err(_)) => 0,
            None => self.cache.missing_bytes(&a.artifact, a.artifact_size),
        };
        let request = Request {
            memory_bytes: a.memory_bytes.unwrap_or(0),
            disk_bytes: a.disk_bytes.unwrap_or(0),
            download_bytes,
        };
        let running = self.supervisor.status(&name).is_some();
        let container = match platform {
            Some(Err(why)) => Err(why),
            _ => Ok(()),
        };
        let verdict = if let Err(why) = container {
            Err(why)
        } else {
            let mut book = self.book();
            book.op(&name);
            let known = book.generations.get(&name).copied();
            if running && known == Some(a.generation) {
                // Sent again after a reconnect: nothing to do but say where it stands.
                drop(book);
                if let Some(status) = self.supervisor.status(&name) {
                    let _ = self.out.try_send(self.report(&status));
                }
                return AdmissionReply {
                    workload: a.workload.clone(),
                    generation: a.generation,
                    rejected: None,
                };
            }
            let verdict = if running && known.is_none() {
                // Found running when the daemon started: keep it, whatever is free now.
                book.admission.adopt(&name, request);
                Ok(())
            } else {
                book.admission.admit(&name, request, now)
            };
            if verdict.is_ok() {
                book.generations.insert(name.clone(), a.generation);
                book.artifacts.insert(name.clone(), a.artifact);
                book.requests.insert(name.clone(), request);
            }
            verdict
        };
        if verdict.is_ok() {
            self.store_applied();
        }
        let reply = AdmissionReply {
            workload: a.workload.clone(),
            generation: a.generation,
            rejected: verdict.as_ref().err().map(|r| text(&r.to_string())),
        };
        match verdict {
            Ok(()) => {
                info!(workload = %name, generation = a.generation, "admitted");
                tokio::spawn(self.clone().fetch_and_run(a));
            }
            Err(why) => self.metrics.emit(&NodeEvent::AdmissionRefused {
                workload: &name,
                reason: NodeMetrics::refusal_reason(&why),
                detail: &why.to_string(),
                after_admission: None,
            }),
        }
        reply
    }

    /// Forgets a workload and frees its reservation at once, in the order the messages came;
    /// the returned future stops it (which takes up to its grace period) unless a newer
    /// assignment of the same name has arrived by then.
    pub fn unassign(&self, name: &str) -> impl Future<Output = ()> + Send + 'static {
        let op = {
            let mut book = self.book();
            book.admission.release(name);
            book.generations.remove(name);
            book.artifacts.remove(name);
            book.requests.remove(name);
            book.op(name)
        };
        self.store_applied();
        let (agent, name) = (self.clone(), name.to_owned());
        async move {
            // Checked and called without an await between: a newer assignment's start queues
            // behind this removal in the supervisor, or this removal is skipped.
            if agent.book().last_op.get(&name) == Some(&op)
                && let Err(error) = agent.supervisor.remove(&name).await
            {
                warn!(workload = %name, %error, "could not remove");
            }
            agent.collect_garbage().await;
        }
    }

    /// Deletes cached artifacts that no workload uses: neither one the supervisor runs nor
    /// one an admitted assignment is about to.
    async fn collect_garbage(&self) {
        let _alone = self.cache_use.write().await;
        let mut keep: std::collections::HashSet<crate::artifacts::Digest> =
            self.book().artifacts.values().copied().collect();
        keep.extend(self.containers.kept_blobs());
        for command in self.supervisor.commands() {
            if command.parent() == Some(self.cache.dir())
                && let Some(digest) = command
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(edge_proto::digest::from_lower_hex)
            {
                keep.insert(digest);
            }
        }
        match self.cache.gc(&keep).await {
            Ok(report) if report.freed_bytes > 0 => {
                info!(freed_bytes = report.freed_bytes, "removed unused artifacts");
            }
            Ok(_) => {}
            Err(error) => warn!(%error, "could not collect unused artifacts"),
        }
        let containers = self.containers.clone();
        match tokio::task::spawn_blocking(move || containers.collect_layers()).await {
            Ok(Ok(0)) => {}
            Ok(Ok(layers)) => info!(layers, "removed unused image layers"),
            Ok(Err(error)) => warn!(%error, "could not collect unused image layers"),
            Err(error) => warn!(%error, "collecting image layers panicked"),
        }
    }

    /// The state of every workload, to send after a reconnect.
    pub fn reports(&self) -> Vec<NodeMsg> {
        self.supervisor
            .statuses()
            .into_iter()
            .map(|s| self.report(&s))
            .collect()
    }

    /// The supervisor that runs the workloads, for reading their logs.
    pub fn supervisor(&self) -> &Supervisor {
        &self.supervisor
    }

    /// Stops every workload (the daemon is exiting); the next start restarts them.
    pub async fn shutdown(&self) {
        self.supervisor.shutdown().await;
    }

    /// Stops every workload and forgets it (spec, logs, reservation, artifact), as if each
    /// had been unassigned: for a node the orchestrator no longer knows, which has placed
    /// them elsewhere already. Nothing is left to restart on the next start.
    pub async fn forget_all(&self) {
        let names = self.held();
        // All at once: each takes up to its grace period.
        let mut stops = tokio::task::JoinSet::new();
        for name in &names {
            stops.spawn(self.unassign(name));
        }
        while stops.join_next().await.is_some() {}
        if !names.is_empty() {
            info!(workloads = ?names, "stopped and forgot every workload");
        }
    }

    fn report(&self, s: &InstanceStatus) -> NodeMsg {
        let generation = self.book().generations.get(&s.name).copied().unwrap_or(0);
        NodeMsg::Workload(Box::new(WorkloadReport {
            workload: text(&s.name),
            generation,
            state: wire_state(s.state),
            restarts: s.restarts,
            pid: s.pid,
            exit_code: s.exit_code,
            message: text(&s.message),
        }))
    }

    async fn forward_reports(self, mut changes: tokio::sync::broadcast::Receiver<InstanceStatus>) {
        loop {
            match changes.recv().await {
                Ok(status) => {
                    if status.state == State::Running {
                        self.book().admission.started(&status.name);
                    }
                    if self.out.send(self.report(&status)).await.is_err() {
                        return;
                    }
                }
                // Missed some: the latest state of everything is what matters.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    for report in self.reports() {
                        let _ = self.out.send(report).await;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    async fn fetch_and_run(self, a: Assignment) {
        let name = a.workload.to_string();
        let in_use = self.cache_use.clone().read_owned().await;
        let spec = match &a.image {
            None => {
                if self.cache.missing_bytes(&a.artifact, a.artifact_size) > 0 {
                    self.send_state(&a, WorkloadState::Downloading, "").await;
                }
                match self
                    .fetch(a.workload.as_str(), a.artifact, a.artifact_size)
                    .await
                {
                    Ok(path) => spec_for(&a, &path, &self.node_env),
                    Err(e) => return self.fetch_failed(&a, e, in_use).await,
                }
            }
            Some(image) => match self.prepare_container(&a, image).await {
                Ok(spec) => spec,
                Err(PrepareError::Fetch(e)) => return self.fetch_failed(&a, e, in_use).await,
                Err(e) => {
                    warn!(workload = %name, error = %e, "cannot prepare the container");
                    self.send_state(&a, WorkloadState::Failed, &e.to_string())
                        .await;
                    // The layers it unpacked are in no bundle: collected now.
                    drop(in_use);
                    return self.collect_garbage().await;
                }
            },
        };
        if !self.is_current(&a) {
            if let Some(c) = spec.container {
                let _ = tokio::task::spawn_blocking(move || bundle::discard(&c)).await;
            }
            return;
        }
        match self.supervisor.apply(spec).await {
            Ok(()) => {
                info!(workload = %name, generation = a.generation, "applied");
                // Running now: the supervisor's own spec keeps its artifact from here on. A
                // new version may leave the old one's artifact unused.
                drop(in_use);
                self.collect_garbage().await;
                // An unchanged spec changes no state, so say the current one: the report
                // names this generation now.
                if let Some(status) = self.supervisor.status(&name) {
                    let _ = self.out.send(self.report(&status)).await;
                }
            }
            Err(error) => {
                warn!(workload = %name, %error, "could not start");
                self.send_state(&a, WorkloadState::Failed, &error.to_string())
                    .await;
            }
        }
    }

    /// The spec that runs `a`'s container, once its image is on the node and its bundle
    /// written.
    async fn prepare_container(
        &self,
        a: &Assignment,
        image: &edge_proto::Image,
    ) -> Result<WorkloadSpec, PrepareError> {
        let refused = |why: String| PrepareError::Refused(why);
        let platform = container_platform(
            image,
            std::env::consts::ARCH,
            &self.containers.runtime_names(),
        )
        .map_err(|e| refused(e.to_string()))?;
        let cgroups_path = self
            .supervisor
            .container_cgroups_path(a.workload.as_str())
            .ok_or_else(|| refused("containers need cgroups, and this node has none".into()))?;
        if self
            .cache
            .missing_bytes(&platform.manifest, platform.manifest_size)
            > 0
        {
            self.send_state(a, WorkloadState::Downloading, "").await;
        }
        let mut node_env = self.node_env.to_vec();
        node_env.push(("EDGE_WORKLOAD".into(), a.workload.to_string()));
        // The exec spec's fields, for the parts a container shares with a process.
        let base = spec_for(a, Path::new("/"), &[]);
        let request = bundle::Request {
            env: base.env.clone().into_iter().collect(),
            base,
            generation: a.generation,
            node_env,
            manifest: platform.manifest,
            manifest_size: platform.manifest_size,
            allow_setuid: image.allow_setuid,
            read_only_root: image.read_only_root,
            cgroups_path,
        };
        let source = Blobs { agent: self, a };
        self.containers.prepare(&source, request).await
    }

    /// Fetches artifact `digest` of `size` bytes for `what` (a name for the logs) as a
    /// workload's artifact is fetched, and returns its verified path with a guard that keeps
    /// the cache's collection from deleting it while held.
    pub async fn fetch_artifact(
        &self,
        what: &str,
        digest: crate::artifacts::Digest,
        size: u64,
    ) -> Result<(std::path::PathBuf, ArtifactInUse), FetchError> {
        loop {
            // Not held while fetching: a fetch waits for a connection, and a collection
            // waiting behind it would hold back every workload's start.
            self.fetch(what, digest, size).await?;
            let in_use = self.cache_use.clone().read_owned().await;
            if let Some(path) = self.cache.path(&digest) {
                return Ok((path, ArtifactInUse { _guard: in_use }));
            }
            // Collected between the two: fetch it again.
        }
    }

    /// Fetches blob `digest` of `size` bytes for `name` over the current connection, waiting
    /// for one, and retrying what may succeed when tried again. Every attempt is counted.
    async fn fetch(
        &self,
        name: &str,
        digest: crate::artifacts::Digest,
        size: u64,
    ) -> Result<std::path::PathBuf, FetchError> {
        let mut retry = FetchRetry::new();
        loop {
            let Some(conn) = self.wait_for_connection().await else {
                return Err(FetchError::Stream("the node is stopping".into()));
            };
            let missing = self.cache.missing_bytes(&digest, size);
            let fetched = self.cache.fetch(&conn, digest, size).await;
            let kept = missing.saturating_sub(self.cache.missing_bytes(&digest, size));
            let retry_in = match &fetched {
                Err(e) if e.retryable() => Some(retry.failed(kept > 0, fastrand::u64(..))),
                _ => None,
            };
            self.metrics.emit(&NodeEvent::ArtifactFetched {
                workload: name,
                bytes: kept,
                failure: fetched.as_ref().err(),
                retry_in,
            });
            // No space is never retried: `retryable` says so.
            match (fetched, retry_in) {
                (Ok(path), _) => return Ok(path),
                (Err(_), Some(delay)) => tokio::time::sleep(delay).await,
                (Err(e), None) => return Err(e),
            }
        }
    }

    /// `a` cannot run because a blob of it could not be fetched: refused if it does not fit
    /// the disk (releasing what it fetched for collection), failed otherwise.
    async fn fetch_failed(
        &self,
        a: &Assignment,
        e: FetchError,
        in_use: tokio::sync::OwnedRwLockReadGuard<()>,
    ) {
        if let FetchError::NoSpace { .. } = e {
            drop(in_use);
            self.refuse(a, &e).await;
        } else {
            self.fail(a, &e).await;
        }
    }

    /// Whether `a` is still the latest assignment of its workload.
    fn is_current(&self, a: &Assignment) -> bool {
        self.book().generations.get(a.workload.as_str()) == Some(&a.generation)
    }

    /// Refuses `a` after admitting it: its artifact cannot fit on this disk after all (it
    /// filled since admission measured it). Said to the orchestrator as admission says it,
    /// so the instance goes to another node, and forgotten here as an unassignment would be.
    /// A newer assignment of the workload has superseded `a` if it is no longer current:
    /// then nothing is said or forgotten.
    async fn refuse(&self, a: &Assignment, why: &FetchError) {
        if !self.is_current(a) {
            return;
        }
        self.metrics.emit(&NodeEvent::AdmissionRefused {
            workload: a.workload.as_str(),
            reason: "no_space",
            detail: &why.to_string(),
            after_admission: Some(a.generation),
        });
        let reply = AdmissionReply {
            workload: a.workload.clone(),
            generation: a.generation,
            rejected: Some(text(&why.to_string())),
        };
        let forget = self.unassign(a.workload.as_str());
        let _ = self.out.send(NodeMsg::Admission(Box::new(reply))).await;
        forget.await;
    }

    /// Reports `a` failed: its artifact cannot be fetched (logged when it was counted).
    async fn fail(&self, a: &Assignment, e: &FetchError) {
        self.send_state(a, WorkloadState::Failed, &e.to_string())
            .await;
    }

    async fn send_state(&self, a: &Assignment, state: WorkloadState, message: &str) {
        let _ = self
            .out
            .send(NodeMsg::Workload(Box::new(WorkloadReport {
                workload: a.workload.clone(),
                generation: a.generation,
                state,
                restarts: 0,
                pid: None,
                exit_code: None,
                message: text(message),
            })))
            .await;
    }

    async fn wait_for_connection(&self) -> Option<quinn::Connection> {
        let mut conn = self.conn.clone();
        loop {
            if let Some(c) = conn.borrow_and_update().clone() {
                return Some(c);
            }
            conn.changed().await.ok()?;
        }
    }
}

/// The blobs of one assignment's image, fetched as its artifact would be.
struct Blobs<'a> {
    agent: &'a Workloads,
    a: &'a Assignment,
}

impl BlobSource for Blobs<'_> {
    fn blob(
        &self,
        digest: [u8; 32],
        size: u64,
    ) -> impl Future<Output = Result<std::path::PathBuf, FetchError>> + Send {
        self.agent.fetch(self.a.workload.as_str(), digest, size)
    }
}

fn wire_state(s: State) -> WorkloadState {
    match s {
        State::Pending => WorkloadState::Pending,
        State::Downloading => WorkloadState::Downloading,
        State::Starting => WorkloadState::Starting,
        State::Running => WorkloadState::Running,
        State::Unhealthy => WorkloadState::Unhealthy,
        State::Backoff => WorkloadState::Backoff,
        State::Failed => WorkloadState::Failed,
        State::Stopped => WorkloadState::Stopped,
    }
}

/// `EDGE_NODE_NAME`, and `EDGE_NODE_ADDRESS` when the node has a configured local address:
/// where a service on this node should listen to be reached at the node's address.
fn node_env(name: &str, address: Option<std::net::IpAddr>) -> Vec<(String, String)> {
    let mut env = vec![("EDGE_NODE_NAME".to_owned(), name.to_owned())];
    if let Some(ip) = address {
        env.push((
            supervisor::spec::NODE_ADDRESS_ENV.to_owned(),
            ip.to_string(),
        ));
    }
    env
}

/// What the supervisor runs for an assignment: the verified artifact as the command, with the
/// node's environment ([`node_env`]) and `EDGE_WORKLOAD`, unless the spec sets them.
fn spec_for(a: &Assignment, artifact: &Path, node_env: &[(String, String)]) -> WorkloadSpec {
    let mut spec = WorkloadSpec::new(a.workload.as_str(), a.version.as_str(), artifact);
    spec.args = a.args.as_slice().iter().map(|s| s.to_string()).collect();
    spec.env = a
        .env
        .as_slice()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for (k, v) in node_env {
        spec.env.entry(k.clone()).or_insert_with(|| v.clone());
    }
    spec.env
        .entry("EDGE_WORKLOAD".into())
        .or_insert_with(|| a.workload.to_string());
    spec.working_dir = a.working_dir.as_ref().map(|d| d.as_str().into());
    spec.resources = Resources {
        cpu_millis: a.cpu_millis,
        memory_bytes: a.memory_bytes,
    };
    spec.restart = match a.restart {
        edge_proto::RestartPolicy::Always => supervisor::RestartPolicy::Always,
        edge_proto::RestartPolicy::OnFailure => supervisor::RestartPolicy::OnFailure,
        edge_proto::RestartPolicy::Never => supervisor::RestartPolicy::Never,
    };
    spec.health = a.health.as_ref().map(|h| {
        let check = match &h.check {
            edge_proto::HealthCheck::Http { port, path } => HealthCheck::Http {
                port: *port,
                path: path.to_string(),
            },
            edge_proto::HealthCheck::Tcp { port } => HealthCheck::Tcp { port: *port },
            edge_proto::HealthCheck::Exec { command, args } => HealthCheck::Exec {
                command: command.as_str().into(),
                args: args.as_slice().iter().map(|s| s.to_string()).collect(),
            },
        };
        HealthProbe {
            interval_ms: u64::from(h.interval_secs) * 1000,
            timeout_ms: u64::from(h.timeout_secs) * 1000,
            success_threshold: u32::from(h.success_threshold),
            failure_threshold: u32::from(h.failure_threshold),
            ..HealthProbe::new(check)
        }
    });
    spec.expose = a
        .expose
        .as_slice()
        .iter()
        .map(|e| node_core::spec::Expose {
            port: e.port,
            host: e.host.as_ref().map(|h| h.to_string()),
            path_prefix: e.path_prefix.as_ref().map(|p| p.to_string()),
            weight: e.weight,
            timeout_secs: e.timeout_secs,
            retries: e.retries,
            cache: e.cache,
            stale_if_offline_secs: e.stale_if_offline_secs,
            balance: match e.balance {
                edge_proto::Balance::PeakEwma => node_core::spec::Balance::PeakEwma,
                edge_proto::Balance::RoundRobin => node_core::spec::Balance::RoundRobin,
                edge_proto::Balance::LeastRequests => node_core::spec::Balance::LeastRequests,
            },
        })
        .collect();
    spec.scale_to_zero = a
        .scale_to_zero_idle_secs
        .map(|idle_secs| node_core::spec::ScaleToZero { idle_secs });
    spec
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_assignment_s_routes_become_the_spec_s() {
        let route = |port, host: Option<&str>, path: Option<&str>, balance| edge_proto::Expose {
            port,
            host: host.and_then(edge_proto::Str::new),
            path_prefix: path.and_then(edge_proto::Str::new),
            weight: 7,
            timeout_secs: 9,
            retries: 1,
            cache: false,
            stale_if_offline_secs: 0,
            balance,
        };
        let a = Assignment {
            workload: text("hello"),
            version: text("1.0.0"),
            generation: 1,
            artifact: [0; 32],
            artifact_size: 0,
            args: Default::default(),
            env: Default::default(),
            working_dir: None,
            cpu_millis: None,
            memory_bytes: None,
            disk_bytes: None,
            restart: edge_proto::RestartPolicy::Always,
            health: None,
            expose: edge_proto::Seq::new(vec![
                route(
                    8080,
                    Some("shop.example"),
                    Some("/api"),
                    edge_proto::Balance::RoundRobin,
                ),
                route(8081, None, Some("/"), edge_proto::Balance::PeakEwma),
                route(8082, Some("::1"), None, edge_proto::Balance::LeastRequests),
            ])
            .expect("fits"),
            scale_to_zero_idle_secs: Some(120),
            image: None,
        };
        let spec = spec_for(&a, Path::new("/var/lib/edge-node/artifacts/x"), &[]);
        assert_eq!(spec.validate(), Ok(()));
        let routes: Vec<_> = spec
            .expose
            .iter()
            .map(|e| {
                (
                    e.port,
                    e.host.as_deref(),
                    e.path_prefix.as_deref(),
                    e.balance,
                )
            })
            .collect();
        use node_core::spec::Balance;
        assert_eq!(
            routes,
            [
                (
                    8080,
                    Some("shop.example"),
                    Some("/api"),
                    Balance::RoundRobin
                ),
                (8081, None, Some("/"), Balance::PeakEwma),
                (8082, Some("::1"), None, Balance::LeastRequests),
            ]
        );
        let first = &spec.expose[0];
        assert_eq!(
            (first.weight, first.timeout_secs, first.retries, first.cache),
            (7, 9, 1, false)
        );
        assert_eq!(first.stale_if_offline_secs, 0);
        assert_eq!(spec.scale_to_zero.map(|s| s.idle_secs), Some(120));

        let bare = Assignment {
            expose: Default::default(),
            scale_to_zero_idle_secs: None,
            image: None,
            ..a
        };
        let spec = spec_for(&bare, Path::new("/bin/true"), &[]);
        assert!(spec.expose.is_empty() && spec.scale_to_zero.is_none());
    }

    const SECOND: Duration = Duration::from_secs(1);

    /// The waits of `failures` failures in a row without progress, each from `draw`.
    fn waits(retry: &mut FetchRetry, failures: usize, draw: u64) -> Vec<Duration> {
        (0..failures).map(|_| retry.failed(false, draw)).collect()
    }

    #[test]
    fn the_longest_waits_double_from_half_a_second_to_a_minute() {
        let mut retry = FetchRetry::new();
        assert_eq!(
            waits(&mut retry, 10, u64::MAX),
            [
                SECOND / 2,
                SECOND,
                2 * SECOND,
                4 * SECOND,
                8 * SECOND,
                16 * SECOND,
                32 * SECOND,
                60 * SECOND,
                60 * SECOND,
                60 * SECOND,
            ]
        );
    }

    #[test]
    fn each_wait_is_drawn_from_zero_to_its_ceiling() {
        // Full jitter: the lowest draw retries at once, a middle one waits half the ceiling.
        assert_eq!(waits(&mut FetchRetry::new(), 10, 0), [Duration::ZERO; 10]);
        let halves = waits(&mut FetchRetry::new(), 4, 1 << 63);
        for (wait, ceiling) in halves
            .iter()
            .zip([SECOND / 2, SECOND, 2 * SECOND, 4 * SECOND])
        {
            assert!(
                wait.abs_diff(ceiling / 2) <= Duration::from_nanos(1),
                "{wait:?} of {ceiling:?}"
            );
        }
        // And the draws a fleet makes spread over that whole span.
        let mut rng = fastrand::Rng::with_seed(3);
        let spread: Vec<Duration> = (0..1000)
            .map(|_| {
                let mut retry = FetchRetry::new();
                waits(&mut retry, 3, 0);
                retry.failed(false, rng.u64(..))
            })
            .collect();
        assert!(spread.iter().all(|w| *w <= 4 * SECOND));
        assert!(spread.iter().any(|w| *w < SECOND), "{spread:?}");
        assert!(spread.iter().any(|w| *w > 3 * SECOND), "{spread:?}");
    }

    #[test]
    fn a_failure_after_progress_starts_the_waits_over() {
        let mut retry = FetchRetry::new();
        waits(&mut retry, 5, u64::MAX);
        assert_eq!(retry.failed(false, u64::MAX), 16 * SECOND);
        // Some bytes landed before the cut: resume soon, and grow again from there.
        assert_eq!(retry.failed(true, u64::MAX), SECOND / 2);
        assert_eq!(retry.failed(false, u64::MAX), SECOND);
        // A new fetch starts from the base whatever the last one went through.
        assert_eq!(FetchRetry::new().failed(false, u64::MAX), SECOND / 2);
    }
}
