//! The deployments handle: the core's [`Deployments`] controller behind a lock, and the
//! committer thread that carries out its effects.
//!
//! Effects are carried out by one committer thread, in the order the controller decided them:
//! it takes every batch queued since its last write, stores them with one flush, then sends
//! their messages through [`NodeLinks`]. So a node never gets an assignment before it is
//! durable, and many concurrent deploys share one fsync. The API and the QUIC server change
//! deployments only through [`Deployer::deploy`]; a spec is deployed, from the API or the
//! demo, only through [`Deployer::apply`], which also says so ([`WorkloadEvent::Deployed`]).
//!
//! The deployer also keeps the core's [`RouteBook`], which tells every online node where each
//! exposed workload runs. It is fed here and only here: with every deployment a change
//! stores or forgets (so no caller of [`Deployer::deploy`] can forget it), and with what the
//! QUIC server learns of sessions, adverts, instance states and locations. Its messages join
//! the same queue after the effects that caused them, so a node gets its assignments before
//! the routes of a session, and every route message in the order it was decided. Nothing of
//! it is stored: it is derived, and nodes say everything it needs again with each session.
//!
//! Time reaches the controller from here: sessions opening and ending carry the wall clock,
//! and [`Deployer::tick`], which the app calls every [`TICK`], lets it notice that a node has
//! been away longer than a workload's `max_disconnect_secs` with no message arriving. The
//! events it decides (a replacement, a reconcile) are stored by the committer in the same
//! flush as the deployments they explain, before anything is sent.
//!
//! Placement ranks nodes with the learned score: the place model is handed in with
//! [`Deployer::set_place_model`] (at start from the model store, on a push of a place model;
//! see [`crate::placement`]), and every decision is stamped with the wall clock first, so an
//! instance's time from bind to running is measured. Whenever the mode changes (a model
//! loaded or refused, one that failed to run or drifted stepping aside), one log line and
//! the `edge_orchestrator_place_mode` gauge say so; [`Deployer::placement_view`] is what
//! `GET /v1/models` shows.

use crate::links::NodeLinks;
use crate::metrics::{Metrics, PlaceModeChanged, WorkloadEvent};
use crate::placement::Unusable;
use edge_proto::{NodeId, OrchMsg, ProxyAdvert, SyncState, WorkloadReport, WorkloadState};
use orchestrator_core::deploy::{DeploymentView, Deployments, Effect};
use orchestrator_core::events::What;
use orchestrator_core::fleet::{NodeRecord, SessionId};
use orchestrator_core::routes::{self, RouteBook};
use orchestrator_core::scheduler::learned::{Fallback, Mode, PlacePredict};
use orchestrator_core::store::{DeploymentWrite, Store, StoreError, StoredSeqs};
use orchestrator_core::sync;
use orchestrator_core::workload::{SpecError, WorkloadSpec};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tracing::{info, warn};

/// At most this many batches share one flush.
const MAX_BATCHES_PER_FLUSH: usize = 4096;

/// How often [`Deployer::tick`] runs: how late past `max_disconnect_secs` a replacement may
/// be placed, at most.
pub const TICK: Duration = Duration::from_secs(1);

/// The deployments, and the thread that stores and sends what they decide.
#[derive(Debug)]
pub struct Deployer {
    deployments: Mutex<Deployments>,
    /// Locked only while `deployments` is, after it: one order for both locks, and route
    /// messages queued in the order they were decided.
    routes: Mutex<RouteBook>,
    committer: Committer,
    /// Where the replacements and reconciles it decides are logged and counted.
    metrics: Arc<Metrics>,
    /// Which place model the deployments were handed and who placed last: locked only
    /// while `deployments` is, after it.
    placement: Mutex<PlaceModel>,
}

/// The place model the deployments were handed, as the status shows it.
#[derive(Debug, Clone, PartialEq)]
struct PlaceModel {
    /// The mode last reported (log line and gauge).
    mode: Mode,
    /// `sha256:...` of the model loaded or refused.
    digest: Option<String>,
    /// Why it was refused.
    detail: Option<String>,
}

/// Whether placement uses the model or the fallback, and why: what `GET /v1/models` shows
/// as `placement`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlacementView {
    /// `model`, or `fallback` (least allocated).
    pub mode: String,
    /// Why the fallback places: `no_model`, `refused`, `broken` or `drift`; absent when the
    /// model does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The place model (`sha256:...`) handed to the scheduler, loaded or refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// What failed, for a model refused at load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The mean `|ln(observed / predicted)|` of startups since the model was loaded or
    /// stepped aside, and how many startups it rests on.
    pub drift: f64,
    pub drift_samples: u32,
}

impl Deployer {
    /// Loads the deployments from `store`, on the registry's `nodes` (all offline), and starts
    /// the committer, which sends through `links`. What it decides on its own (replacements,
    /// reconciles) is logged and counted in `metrics`.
    pub fn open(
        store: Arc<dyn Store>,
        nodes: impl IntoIterator<Item = NodeRecord>,
        links: Arc<NodeLinks>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, StoreError> {
        let deployments =
            Deployments::load(store.deployments()?, nodes.into_iter().map(|n| (n, false)))
                .map_err(|e| StoreError::Corrupt {
                    key: e.name,
                    reason: e.reason,
                })?;
        // Every node is offline: nobody is told anything until a session opens.
        let mut routes = RouteBook::new();
        for a in deployments.assignments() {
            routes.workload_changed(a);
        }
        let committer = Committer::start(store, links)
            .map_err(|e| StoreError::Backend(format!("starting the committer: {e}")))?;
        Ok(Self {
            deployments: Mutex::new(deployments),
            routes: Mutex::new(routes),
            committer,
            metrics,
            placement: Mutex::new(PlaceModel {
                mode: Mode::Fallback(Fallback::NoModel),
                digest: None,
                detail: None,
            }),
        })
    }

    /// Places with `model` from now on (`digest` names it), or with the fallback when it
    /// could not be loaded; says so with one log line and the `edge_orchestrator_place_mode`
    /// gauge.
    pub fn set_place_model(
        &self,
        model: Result<Box<dyn PlacePredict>, Unusable>,
        digest: Option<String>,
    ) {
        let mut deployments = self.lock();
        let mut placement = self.placement();
        let detail = model.as_ref().err().map(|e| e.detail.clone());
        deployments.set_place_model(model.map_err(|e| e.reason));
        let from = placement.mode;
        *placement = PlaceModel {
            mode: deployments.placement().mode,
            digest,
            detail,
        };
        self.metrics.place_mode_changed(&PlaceModeChanged {
            from,
            to: placement.mode,
            model: placement.digest.as_deref(),
            detail: placement.detail.as_deref(),
        });
    }

    /// Whether placement uses the model or the fallback, and why.
    pub fn placement_view(&self) -> PlacementView {
        let status = self.lock().placement();
        let placement = self.placement().clone();
        let (mode, reason) = match status.mode {
            Mode::Model => ("model", None),
            Mode::Fallback(reason) => ("fallback", Some(reason.as_str().to_owned())),
        };
        PlacementView {
            mode: mode.to_owned(),
            reason,
            model: placement.digest,
            detail: placement.detail,
            drift: status.drift,
            drift_samples: status.drift_samples,
        }
    }

    /// The QUIC server sent `node` `bytes` of an artifact in `elapsed_ms`: its download
    /// rate, for the placement model.
    pub fn artifact_fetched(&self, node: NodeId, bytes: u64, elapsed_ms: u64) {
        self.lock().artifact_fetched(node, bytes, elapsed_ms);
    }

    fn placement(&self) -> MutexGuard<'_, PlaceModel> {
        // Plain data, replaced whole: a poisoned lock holds a consistent value.
        self.placement.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A model that failed to run, or whose predictions drifted, stepped aside (or one
    /// that drifted took over again) during a decision: one log line and the gauge.
    fn note_mode(&self, deployments: &Deployments) {
        let now = deployments.placement().mode;
        let mut placement = self.placement();
        if placement.mode != now {
            let from = placement.mode;
            placement.mode = now;
            self.metrics.place_mode_changed(&PlaceModeChanged {
                from,
                to: now,
                model: placement.digest.as_deref(),
                detail: None,
            });
        }
    }

    /// The deployments, to read. Never hold the guard across an await; change them through
    /// [`Deployer::deploy`] so that their effects are carried out.
    pub fn lock(&self) -> MutexGuard<'_, Deployments> {
        // Every controller call either completes or panics before returning effects, so a
        // poisoned lock holds a consistent controller.
        self.deployments.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the deployments and queues the effects it returns while still holding the
    /// lock, so that effects are stored and sent in the order they were decided.
    pub fn deploy<R>(
        &self,
        f: impl FnOnce(&mut Deployments) -> (R, Vec<Effect>),
    ) -> (R, Committed) {
        self.decide(|d, _| f(d))
    }

    /// A node's session is ready for messages, and it said `said` at hello: it gets what
    /// changed of its assignments (or all of them, see [`orchestrator_core::sync`]), then
    /// the routes of every exposed workload, then the acknowledgements of events it still
    /// holds that `stored` says are stored, then [`OrchMsg::Synced`] with the highest of
    /// its sequence numbers stored. All of it goes to `session` only: a session of the node
    /// opened meanwhile gets its own.
    pub fn node_up(
        &self,
        record: NodeRecord,
        session: SessionId,
        said: Option<&SyncState>,
        stored: &StoredSeqs,
    ) -> Committed {
        let id = record.id;
        let location = routes::location(&record);
        let now_ms = crate::clock::now_ms();
        self.decide_in(Some((id, session)), |d, book| {
            let (plan, mut effects) = d.node_up(record, said, now_ms);
            log_decisions(&self.metrics, &effects);
            let unassigned = effects
                .iter()
                .filter(|e| matches!(e, Effect::Send(to, OrchMsg::Unassign(_)) if *to == id))
                .count();
            let routes = book.node_online(id, location);
            effects.extend(broadcast(book, routes));
            // The node forgets its peer routes when a session opens; this is all of them.
            effects.extend(book.snapshot().into_iter().map(|m| Effect::Send(id, m)));
            let acks = said.map_or_else(Vec::new, |s| sync::resent_acks(s, &stored.from));
            let acked = acks.iter().map(|a| a.seqs.len()).sum();
            effects.extend(
                acks.into_iter()
                    .map(|ack| Effect::Send(id, OrchMsg::EventsStored(Box::new(ack)))),
            );
            let synced = sync::synced(&plan, unassigned, stored.highest);
            self.metrics.synced(id, &synced, acked);
            effects.push(Effect::Send(id, OrchMsg::Synced(synced)));
            ((), effects)
        })
        .1
    }

    /// A session of `node` ended. If `offline` still says so, the node has no other
    /// session: it is marked offline and peers stop routing to it. Asked under the
    /// deployments lock, which [`Deployer::node_up`] takes too, so a session that opened
    /// meanwhile is never marked offline after its `node_up`.
    pub fn node_down(&self, node: NodeId, offline: impl FnOnce() -> bool) {
        self.decide(|d, book| {
            if !offline() {
                return ((), Vec::new());
            }
            d.node_down(node, crate::clock::now_ms());
            let routes = book.node_offline(node);
            ((), broadcast(book, routes))
        });
    }

    /// Time passed (`now_ms`, the wall clock): instances of nodes away longer than their
    /// workload's `max_disconnect_secs` are replaced elsewhere.
    pub fn tick(&self, now_ms: u64) -> Committed {
        self.decide(|d, _| {
            let effects = d.tick(now_ms);
            log_decisions(&self.metrics, &effects);
            ((), effects)
        })
        .1
    }

    /// The registry's record of a node changed (capabilities, cordon, location).
    pub fn node_changed(&self, record: NodeRecord, online: bool) -> Committed {
        let id = record.id;
        let location = routes::location(&record);
        self.decide(|d, book| {
            let mut effects = d.node_changed(record, online);
            log_decisions(&self.metrics, &effects);
            let routes = book.node_moved(id, location);
            effects.extend(broadcast(book, routes));
            ((), effects)
        })
        .1
    }

    /// A node reported an instance's state. An instance the node does not hold (deleted
    /// or moved while it was away) is being stopped: peers never route to it.
    pub fn report(&self, node: NodeId, report: &WorkloadReport) -> Committed {
        self.decide(|d, book| {
            let mut effects = d.report(node, report);
            log_decisions(&self.metrics, &effects);
            let workload = report.workload.as_str();
            let state = if d.held_by(node).iter().any(|w| w == workload) {
                report.state
            } else {
                WorkloadState::Stopped
            };
            let routes = book.instance_state(node, workload, state);
            effects.extend(broadcast(book, routes));
            ((), effects)
        })
        .1
    }

    /// A node said where peers reach its proxy.
    pub fn proxy_advert(&self, node: NodeId, advert: ProxyAdvert) -> Committed {
        self.decide(|_, book| {
            let routes = book.proxy_advert(node, advert);
            ((), broadcast(book, routes))
        })
        .1
    }

    /// Runs `f` on the route book, for a reader that decides nothing with it.
    pub fn read_routes<R>(&self, f: impl FnOnce(&RouteBook) -> R) -> R {
        f(&self.book())
    }

    fn book(&self) -> MutexGuard<'_, RouteBook> {
        // Each RouteBook call completes or panics before its messages are queued, and a
        // refresh replaces whole entries: a poisoned lock holds a consistent book.
        self.routes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the deployments and the route book under both locks, feeds the book
    /// every deployment the effects store or forget, and queues all of it in that order.
    fn decide<R>(
        &self,
        f: impl FnOnce(&mut Deployments, &mut RouteBook) -> (R, Vec<Effect>),
    ) -> (R, Committed) {
        self.decide_in(None, f)
    }

    /// As [`Deployer::decide`]; messages to `session`'s node go to that session only.
    fn decide_in<R>(
        &self,
        session: Option<(NodeId, SessionId)>,
        f: impl FnOnce(&mut Deployments, &mut RouteBook) -> (R, Vec<Effect>),
    ) -> (R, Committed) {
        let mut deployments = self.lock();
        let mut book = self.book();
        // What a deploy, an admission or a report is stamped with: an instance's time from
        // bind to running is measured by it.
        deployments.advance(crate::clock::now_ms());
        let (r, mut effects) = f(&mut deployments, &mut book);
        self.note_mode(&deployments);
        let changed: Vec<String> = effects
            .iter()
            .filter_map(|e| match e {
                Effect::Persist(record) => record.name().map(str::to_owned),
                Effect::Forget(name) => Some(name.clone()),
                Effect::Send(..) | Effect::Record(_) => None,
            })
            .collect();
        for name in changed {
            let routes = match deployments.assignment_of(&name) {
                Some(a) => book.workload_changed(a),
                None => book.workload_deleted(&name),
            };
            effects.extend(broadcast(&book, routes));
        }
        let committed = self.committer.submit(effects, session);
        (r, committed)
    }

    /// Deploys `spec` (with what the stores know of its artifact or image), waits until what that decided
    /// is stored and sent, then logs and counts the deploy in `metrics` if it changed
    /// anything.
    pub async fn apply(
        &self,
        spec: WorkloadSpec,
        artifact: impl Into<orchestrator_core::deploy::ArtifactFacts>,
        metrics: &Metrics,
    ) -> Result<Applied, ApplyError> {
        let name = spec.name().to_owned();
        let artifact = artifact.into();
        let (outcome, committed) = self.deploy(|d| {
            let created = !d.contains(&name);
            match d.apply(spec, artifact) {
                Ok((outcome, effects)) => {
                    let changed = !effects.is_empty();
                    (Ok((created, changed, outcome.bound.len())), effects)
                }
                Err(e) => (Err(e), Vec::new()),
            }
        });
        let (created, changed, placed) = outcome?;
        committed.wait().await?;
        let shown = self.lock().get(&name);
        if changed && let Some(shown) = &shown {
            metrics.workload(&WorkloadEvent::Deployed {
                workload: &name,
                generation: shown.generation,
                placed,
                wanted: shown.wanted,
            });
        }
        Ok(Applied {
            created,
            changed,
            placed,
            shown,
        })
    }
}

/// Logs and counts the replacements and reconciles among `effects`, and logs the moves of
/// instances after their node left a workload's `near` radius (all are stored as events too).
fn log_decisions(metrics: &Metrics, effects: &[Effect]) {
    for e in effects {
        let Effect::Record(record) = e else { continue };
        let node = record.node.as_str();
        match &record.what {
            What::Replaced {
                workload,
                replacement,
                offline_secs,
                ..
            } => metrics.workload(&WorkloadEvent::Replaced {
                node,
                workload,
                replacement,
                offline_secs: *offline_secs,
            }),
            What::Reconciled {
                workload,
                rule,
                kept,
                stopped,
                ..
            } => metrics.workload(&WorkloadEvent::Reconciled {
                node,
                workload,
                rule,
                kept: if kept == "original" {
                    "original"
                } else {
                    "replacement"
                },
                stopped: stopped.as_deref(),
            }),
            What::LeftNear {
                workload,
                distance_km,
                radius_km,
                outcome,
                replacement,
                reason,
                ..
            } => info!(
                node,
                workload,
                distance_km,
                radius_km,
                outcome,
                replacement = replacement.as_deref().unwrap_or("-"),
                reason = reason.as_deref().unwrap_or("-"),
                "node left the workload's radius"
            ),
            What::Following {
                workload,
                replacement,
                ..
            } => info!(
                node,
                workload, replacement, "replacement placed inside the radius"
            ),
            What::Followed {
                workload, from, to, ..
            } => info!(
                node,
                workload,
                from,
                to,
                "instance followed the radius: the replacement runs, the original was unassigned"
            ),
            What::BackNear {
                workload,
                distance_km,
                stopped,
                ..
            } => info!(
                node,
                workload,
                distance_km,
                stopped = stopped.as_deref().unwrap_or("-"),
                "node back inside the workload's radius"
            ),
            What::Instance { .. }
            | What::Operator { .. }
            | What::Refused { .. }
            | What::Status { .. }
            | What::Metrics { .. }
            | What::Location(_)
            | What::RouteSamples { .. }
            | What::Gap { .. } => {}
        }
    }
}

/// Each route message, to every online node.
fn broadcast(book: &RouteBook, msgs: Vec<OrchMsg>) -> Vec<Effect> {
    msgs.into_iter()
        .flat_map(|m| book.online().map(move |node| Effect::Send(node, m.clone())))
        .collect()
}

/// What [`Deployer::apply`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    /// There was no workload of that name.
    pub created: bool,
    /// The spec differed from the one deployed (always, when created).
    pub changed: bool,
    /// Instances that found a node.
    pub placed: usize,
    /// The workload as deployed, once stored and sent; `None` if it was deleted meanwhile.
    pub shown: Option<DeploymentView>,
}

/// Why [`Deployer::apply`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The spec cannot be deployed as it is (the wire cannot carry it, say); nothing changed.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// Storing the deployment failed; the caller may retry.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// When the effects of one deployment change are durable and sent.
#[derive(Debug)]
pub struct Committed(Option<tokio::sync::oneshot::Receiver<Result<(), StoreError>>>);

impl Committed {
    pub async fn wait(self) -> Result<(), StoreError> {
        match self.0 {
            None => Ok(()),
            Some(rx) => rx
                .await
                .unwrap_or_else(|_| Err(StoreError::Backend("the committer stopped".into()))),
        }
    }
}

struct Batch {
    effects: Vec<Effect>,
    /// Messages to this node go to this session of it only (see [`NodeLinks::send_in`]).
    session: Option<(NodeId, SessionId)>,
    done: tokio::sync::oneshot::Sender<Result<(), StoreError>>,
}

/// The thread that stores and sends deployment effects in order. Dropping it finishes what
/// is queued and joins the thread, so the store is closed when the server is.
#[derive(Debug)]
struct Committer {
    tx: Option<std::sync::mpsc::Sender<Batch>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Committer {
    fn start(store: Arc<dyn Store>, links: Arc<NodeLinks>) -> std::io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::channel::<Batch>();
        let thread = std::thread::Builder::new()
            .name("deploy-commit".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut batches = vec![first];
                    while batches.len() < MAX_BATCHES_PER_FLUSH {
                        match rx.try_recv() {
                            Ok(b) => batches.push(b),
                            Err(_) => break,
                        }
                    }
                    let writes: Vec<DeploymentWrite<'_>> = batches
                        .iter()
                        .flat_map(|b| &b.effects)
                        .filter_map(|e| match e {
                            Effect::Persist(r) => Some(DeploymentWrite::Put(r)),
                            Effect::Forget(name) => Some(DeploymentWrite::Delete(name)),
                            Effect::Record(e) => Some(DeploymentWrite::Event(e)),
                            Effect::Send(..) => None,
                        })
                        .collect();
                    let result = if writes.is_empty() {
                        Ok(())
                    } else {
                        store.write_deployments(&writes)
                    };
                    drop(writes);
                    match &result {
                        Ok(()) => {
                            for b in &mut batches {
                                for e in b.effects.drain(..) {
                                    let Effect::Send(node, msg) = e else { continue };
                                    match b.session {
                                        Some((to, session)) if to == node => {
                                            links.send_in(node, session, msg)
                                        }
                                        _ => links.send(node, msg),
                                    };
                                }
                            }
                        }
                        // Nothing is sent that was not stored.
                        Err(error) => warn!(%error, "could not store deployments"),
                    }
                    for b in batches {
                        let _ = b.done.send(result.clone());
                    }
                }
            })?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    fn submit(&self, effects: Vec<Effect>, session: Option<(NodeId, SessionId)>) -> Committed {
        if effects.is_empty() {
            return Committed(None);
        }
        let (done, rx) = tokio::sync::oneshot::channel();
        if let Some(tx) = &self.tx {
            // The thread lives as long as `self`; if it died, `rx` reports it.
            let _ = tx.send(Batch {
                effects,
                session,
                done,
            });
        }
        Committed(Some(rx))
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
