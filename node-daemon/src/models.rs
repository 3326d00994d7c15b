//! The fleet's models on this node. The node says which ONNX operators its reader runs
//! ([`reader_operators`], in its `RuntimeInfo`); the orchestrator answers with the models the
//! fleet routes and pre-warms with, if the reader runs them, and again whenever an operator
//! pushes a new one.
//!
//! An offered model is fetched like a workload's artifact (resumable, retried, verified by
//! its sha256), loaded and held to its purpose's schema, and only then installed as
//! `DATA_DIR/models/route.onnx` or `warm.onnx` (a temporary file, synced, renamed) and handed
//! to its user: the proxy, which takes a routing model between two choices, or pre-warming,
//! which takes a warming model between two ticks. No restart and no failed request. A model
//! that does not load or fit is refused with a log line, and the model before it stays, on
//! disk and in use. The next start loads whatever was installed last, with no uplink.
//!
//! This module never runs a model on the runtime's threads and never replaces the installed
//! file with bytes it has not loaded.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use edge_proto::digest::{Digest, to_prefixed};
use edge_proto::{FleetModel, List, ModelPurpose, RuntimeInfo, Text};
use tracing::debug;

use crate::metrics::{ModelOutcome, NodeEvent};

use crate::proxy::prewarm::ModelSwap;
use crate::proxy::{route_model, warm_model};
use crate::status::StatusBoard;
use crate::workloads::Workloads;

/// The operators this node's model reader runs; none in a build without one.
pub fn reader_operators() -> List<Text<16>, { RuntimeInfo::MAX_MODEL_OPERATORS }> {
    #[cfg(feature = "ai")]
    let operators: &[&str] = &edge_ai::OPERATORS;
    #[cfg(not(feature = "ai"))]
    let operators: &[&str] = &[];
    operators.iter().map(|op| edge_proto::text(op)).collect()
}

/// The node's fleet models. Cheap to clone.
#[derive(Debug, Clone)]
pub struct FleetModels(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    data_dir: PathBuf,
    /// Who uses the routing model; `None`: this node has no proxy, and no use for one.
    proxy: Option<edge_proxy::Proxy>,
    /// Who uses the warming model; `None`: this node does not pre-warm.
    warm: Option<ModelSwap>,
    workloads: Workloads,
    board: StatusBoard,
    route: Mutex<Held>,
    warm_held: Mutex<Held>,
    /// One install at a time, so that offers are installed in the order they were made.
    installing: tokio::sync::Mutex<()>,
}

/// What the node knows of its model of one purpose.
#[derive(Debug, Default)]
struct Held {
    /// The model in use.
    installed: Option<Digest>,
    /// The model offered last: an older offer's fetch that ends after a newer offer is
    /// dropped, and an offer of the model being fetched starts nothing.
    wanted: Option<Digest>,
}

impl FleetModels {
    /// Loads the routing model installed under `data_dir` (off the runtime's threads) and
    /// hands it to `proxy`; later warming models go to `warm` (which loaded its own).
    pub async fn start(
        data_dir: PathBuf,
        proxy: Option<edge_proxy::Proxy>,
        warm: Option<ModelSwap>,
        workloads: Workloads,
        board: StatusBoard,
    ) -> Self {
        let mut route = Held::default();
        if let Some(proxy) = &proxy {
            let dir = data_dir.clone();
            let (model, loaded) = tokio::task::spawn_blocking(move || route_model::load(&dir))
                .await
                .unwrap_or_else(|_| {
                    let refused = node_core::proxy::learned::Fallback::Refused;
                    (route_model::refused(), Err(refused))
                });
            proxy.set_route_model(model);
            route.installed = loaded.ok();
        }
        board.update(|s| s.route_model = route.installed.as_ref().map(to_prefixed));
        Self(Arc::new(Inner {
            data_dir,
            proxy,
            warm,
            workloads,
            board,
            route: Mutex::new(route),
            warm_held: Mutex::new(Held::default()),
            installing: tokio::sync::Mutex::new(()),
        }))
    }

    /// The orchestrator offered `model`: fetch, check, install and use it, in a task of its
    /// own. An offer of the model in use, or of the one being fetched, changes nothing.
    pub fn offered(&self, model: &FleetModel) {
        let user = match model.purpose {
            ModelPurpose::Route => match self.0.proxy.clone() {
                Some(proxy) => User::Route(proxy),
                None => {
                    debug!("a routing model was offered, but this node has no proxy");
                    return;
                }
            },
            ModelPurpose::Warm => match self.0.warm.clone() {
                Some(swap) => User::Warm(swap),
                None => {
                    debug!("a warming model was offered, but this node does not pre-warm");
                    return;
                }
            },
        };
        {
            let mut held = self.held(model.purpose);
            if held.wanted == Some(model.digest)
                || (held.wanted.is_none() && held.installed == Some(model.digest))
            {
                return;
            }
            held.wanted = Some(model.digest);
        }
        let this = self.clone();
        let (digest, size) = (model.digest, model.size);
        tokio::spawn(async move { this.install(user, digest, size).await });
    }

    fn held(&self, purpose: ModelPurpose) -> std::sync::MutexGuard<'_, Held> {
        let held = match purpose {
            ModelPurpose::Route => &self.0.route,
            ModelPurpose::Warm => &self.0.warm_held,
        };
        // Each change is a whole field.
        held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn install(&self, user: User, digest: Digest, size: u64) {
        let purpose = user.purpose();
        let what = match purpose {
            ModelPurpose::Route => "routing model",
            ModelPurpose::Warm => "warming model",
        };
        let fetched = self.0.workloads.fetch_artifact(what, digest, size).await;
        let (path, in_use) = match fetched {
            Ok(fetched) => fetched,
            Err(error) => {
                self.settle(
                    purpose,
                    digest,
                    Err((ModelOutcome::Failed, error.to_string())),
                );
                return;
            }
        };
        let _one = self.0.installing.lock().await;
        if !self.still_wanted(purpose, digest) {
            return;
        }
        let target = match purpose {
            ModelPurpose::Route => route_model::path(&self.0.data_dir),
            ModelPurpose::Warm => warm_model::path(&self.0.data_dir),
        };
        // Reading, loading and the fsyncs of the install: off the runtime's threads.
        let loaded = tokio::task::spawn_blocking(move || {
            let failed = |e: String| (ModelOutcome::Failed, e);
            let refused = |e: String| (ModelOutcome::Refused, e);
            let bytes = std::fs::read(&path).map_err(|e| failed(e.to_string()))?;
            drop(in_use);
            let model = match purpose {
                ModelPurpose::Route => {
                    Built::Route(route_model::from_bytes(&bytes).map_err(refused)?)
                }
                ModelPurpose::Warm => Built::Warm(warm_model::from_bytes(&bytes).map_err(refused)?),
            };
            crate::private_fs::write_atomic(&target, &bytes)
                .map_err(|e| failed(format!("installing it: {e}")))?;
            Ok(model)
        })
        .await
        .unwrap_or_else(|e| Err((ModelOutcome::Refused, format!("its loader failed: {e}"))));
        let installed = match (loaded, user) {
            (Ok(Built::Route(model)), User::Route(proxy)) => {
                proxy.set_route_model(model);
                Ok(())
            }
            (Ok(Built::Warm(model)), User::Warm(swap)) => {
                let loaded = warm_model::Loaded {
                    predictor: Ok(model),
                    model: Some(to_prefixed(&digest)),
                };
                if swap.replace(loaded).await {
                    Ok(())
                } else {
                    Err((ModelOutcome::Failed, "pre-warming has stopped".to_owned()))
                }
            }
            (Ok(_), _) => Err((ModelOutcome::Failed, "built for another purpose".to_owned())),
            (Err(e), _) => Err(e),
        };
        self.settle(purpose, digest, installed);
    }

    fn still_wanted(&self, purpose: ModelPurpose, digest: Digest) -> bool {
        self.held(purpose).wanted == Some(digest)
    }

    /// The offer of `digest` is over: it was installed, or not for the reason given.
    fn settle(
        &self,
        purpose: ModelPurpose,
        digest: Digest,
        installed: Result<(), (ModelOutcome, String)>,
    ) {
        let shown = to_prefixed(&digest);
        let (outcome, error) = match &installed {
            Ok(()) => (ModelOutcome::Installed, None),
            Err((outcome, error)) => (*outcome, Some(error.as_str())),
        };
        let event = match purpose {
            ModelPurpose::Route => NodeEvent::RouteModelOffer {
                model: &shown,
                outcome,
                error,
            },
            ModelPurpose::Warm => NodeEvent::WarmModelOffer {
                model: &shown,
                outcome,
                error,
            },
        };
        self.0.board.metrics().emit(&event);
        let mut held = self.held(purpose);
        if held.wanted == Some(digest) {
            held.wanted = None;
        }
        if installed.is_ok() {
            held.installed = Some(digest);
        }
        if purpose != ModelPurpose::Route {
            // Pre-warming shows its model on /status itself.
            return;
        }
        match installed {
            Ok(()) => {
                self.0.board.update(|s| {
                    s.route_model = Some(shown);
                    s.route_model_refused = None;
                });
            }
            Err((ModelOutcome::Refused, error)) => self.0.board.update(|s| {
                s.route_model_refused = Some(format!("{shown}: {error}"));
            }),
            Err(_) => {}
        }
    }
}

/// Who takes an offered model once it is installed.
#[derive(Debug)]
enum User {
    Route(edge_proxy::Proxy),
    Warm(ModelSwap),
}

impl User {
    fn purpose(&self) -> ModelPurpose {
        match self {
            User::Route(_) => ModelPurpose::Route,
            User::Warm(_) => ModelPurpose::Warm,
        }
    }
}

/// A model loaded and checked for its purpose.
enum Built {
    Route(edge_proxy::proxy::RouteModel),
    Warm(Box<dyn node_core::warm::PredictWarm>),
}
