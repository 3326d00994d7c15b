//! The deployments handle: the core's [`Deployments`] controller behind a lock, and the
//! committer thread that carries out its effects.
//!
//! Effects are carried out by one committer thread, in the order the controller decided them:
//! it takes every batch queued since its last write, stores them with one flush, then sends
//! their messages through [`NodeLinks`]. So a node never gets an assignment before it is
//! durable, and many concurrent deploys share one fsync. The API and the QUIC server change
//! deployments only through [`Deployer::deploy`]; a spec is deployed, from the API or the
//! demo, only through [`Deployer::apply`], which also says so ([`WorkloadEvent::Deployed`]).

use crate::links::NodeLinks;
use crate::metrics::{Metrics, WorkloadEvent};
use orchestrator_core::deploy::{DeploymentView, Deployments, Effect};
use orchestrator_core::fleet::NodeRecord;
use orchestrator_core::store::{DeploymentWrite, Store, StoreError};
use orchestrator_core::workload::{SpecError, WorkloadSpec};
use std::sync::{Arc, Mutex, MutexGuard};
use tracing::warn;

/// At most this many batches share one flush.
const MAX_BATCHES_PER_FLUSH: usize = 4096;

/// The deployments, and the thread that stores and sends what they decide.
#[derive(Debug)]
pub struct Deployer {
    deployments: Mutex<Deployments>,
    committer: Committer,
}

impl Deployer {
    /// Loads the deployments from `store`, on the registry's `nodes` (all offline), and starts
    /// the committer, which sends through `links`.
    pub fn open(
        store: Arc<dyn Store>,
        nodes: impl IntoIterator<Item = NodeRecord>,
        links: Arc<NodeLinks>,
    ) -> Result<Self, StoreError> {
        let deployments =
            Deployments::load(store.deployments()?, nodes.into_iter().map(|n| (n, false)))
                .map_err(|e| StoreError::Corrupt {
                    key: e.name,
                    reason: e.reason,
                })?;
        let committer = Committer::start(store, links)
            .map_err(|e| StoreError::Backend(format!("starting the committer: {e}")))?;
        Ok(Self {
            deployments: Mutex::new(deployments),
            committer,
        })
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
        let mut deployments = self.lock();
        let (r, effects) = f(&mut deployments);
        let committed = self.committer.submit(effects);
        (r, committed)
    }

    /// Deploys `spec` (its artifact is `artifact_size` bytes), waits until what that decided
    /// is stored and sent, then logs and counts the deploy in `metrics` if it changed
    /// anything.
    pub async fn apply(
        &self,
        spec: WorkloadSpec,
        artifact_size: u64,
        metrics: &Metrics,
    ) -> Result<Applied, ApplyError> {
        let name = spec.name().to_owned();
        let (outcome, committed) = self.deploy(|d| {
            let created = !d.contains(&name);
            match d.apply(spec, artifact_size) {
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
                            for e in batches.iter_mut().flat_map(|b| b.effects.drain(..)) {
                                if let Effect::Send(node, msg) = e {
                                    links.send(node, msg);
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

    fn submit(&self, effects: Vec<Effect>) -> Committed {
        if effects.is_empty() {
            return Committed(None);
        }
        let (done, rx) = tokio::sync::oneshot::channel();
        if let Some(tx) = &self.tx {
            // The thread lives as long as `self`; if it died, `rx` reports it.
            let _ = tx.send(Batch { effects, done });
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
