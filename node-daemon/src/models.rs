//! The fleet's models on this node. The node says which ONNX operators its reader runs
//! ([`reader_operators`], in its `RuntimeInfo`); the orchestrator answers with the model the
//! fleet routes with, if the reader runs it, and again whenever an operator pushes a new one.
//!
//! An offered model is fetched like a workload's artifact (resumable, retried, verified by
//! its sha256), loaded and held to the routing schema, and only then installed as
//! `DATA_DIR/models/route.onnx` (a temporary file, synced, renamed) and handed to the proxy,
//! which takes it between two choices: no restart and no failed request. A model that does
//! not load or fit is refused with a log line, and the model before it stays, on disk and in
//! use. The next start loads whatever was installed last, with no uplink.
//!
//! This module never runs a model on the runtime's threads and never replaces the installed
//! file with bytes it has not loaded.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use edge_proto::digest::{Digest, to_prefixed};
use edge_proto::{FleetModel, List, ModelPurpose, RuntimeInfo, Text};
use tracing::debug;

use crate::metrics::{ModelOutcome, NodeEvent};

use crate::proxy::route_model;
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
    workloads: Workloads,
    board: StatusBoard,
    route: Mutex<Route>,
    /// One install at a time, so that offers are installed in the order they were made.
    installing: tokio::sync::Mutex<()>,
}

/// What the node knows of its routing model.
#[derive(Debug, Default)]
struct Route {
    /// The model the proxy uses.
    installed: Option<Digest>,
    /// The model offered last: an older offer's fetch that ends after a newer offer is
    /// dropped, and an offer of the model being fetched starts nothing.
    wanted: Option<Digest>,
}

impl FleetModels {
    /// Loads the routing model installed under `data_dir` (off the runtime's threads) and
    /// hands it to `proxy`.
    pub async fn start(
        data_dir: PathBuf,
        proxy: Option<edge_proxy::Proxy>,
        workloads: Workloads,
        board: StatusBoard,
    ) -> Self {
        let mut route = Route::default();
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
            workloads,
            board,
            route: Mutex::new(route),
            installing: tokio::sync::Mutex::new(()),
        }))
    }

    /// The orchestrator offered `model`: fetch, check, install and use it, in a task of its
    /// own. An offer of the model in use, or of the one being fetched, changes nothing.
    pub fn offered(&self, model: &FleetModel) {
        let ModelPurpose::Route = model.purpose;
        let Some(proxy) = self.0.proxy.clone() else {
            debug!("a routing model was offered, but this node has no proxy");
            return;
        };
        {
            let mut route = self.0.route.lock().unwrap_or_else(PoisonError::into_inner);
            if route.wanted == Some(model.digest)
                || (route.wanted.is_none() && route.installed == Some(model.digest))
            {
                return;
            }
            route.wanted = Some(model.digest);
        }
        let this = self.clone();
        let (digest, size) = (model.digest, model.size);
        tokio::spawn(async move { this.install(proxy, digest, size).await });
    }

    async fn install(&self, proxy: edge_proxy::Proxy, digest: Digest, size: u64) {
        let fetched = self
            .0
            .workloads
            .fetch_artifact("routing model", digest, size)
            .await;
        let (path, in_use) = match fetched {
            Ok(fetched) => fetched,
            Err(error) => {
                self.settle(digest, Err((ModelOutcome::Failed, error.to_string())));
                return;
            }
        };
        let _one = self.0.installing.lock().await;
        if !self.still_wanted(digest) {
            return;
        }
        let target = route_model::path(&self.0.data_dir);
        // Reading, loading and the fsyncs of the install: off the runtime's threads.
        let loaded = tokio::task::spawn_blocking(move || {
            let failed = |e: String| (ModelOutcome::Failed, e);
            let bytes = std::fs::read(&path).map_err(|e| failed(e.to_string()))?;
            drop(in_use);
            let model = route_model::from_bytes(&bytes).map_err(|e| (ModelOutcome::Refused, e))?;
            crate::private_fs::write_atomic(&target, &bytes)
                .map_err(|e| failed(format!("installing it: {e}")))?;
            Ok(model)
        })
        .await
        .unwrap_or_else(|e| Err((ModelOutcome::Refused, format!("its loader failed: {e}"))));
        let installed = loaded.map(|model| proxy.set_route_model(model));
        self.settle(digest, installed);
    }

    fn still_wanted(&self, digest: Digest) -> bool {
        let route = self.0.route.lock().unwrap_or_else(PoisonError::into_inner);
        route.wanted == Some(digest)
    }

    /// The offer of `digest` is over: it was installed, or not for the reason given.
    fn settle(&self, digest: Digest, installed: Result<(), (ModelOutcome, String)>) {
        let shown = to_prefixed(&digest);
        let (outcome, error) = match &installed {
            Ok(()) => (ModelOutcome::Installed, None),
            Err((outcome, error)) => (*outcome, Some(error.as_str())),
        };
        self.0.board.metrics().emit(&NodeEvent::RouteModelOffer {
            model: &shown,
            outcome,
            error,
        });
        let mut route = self.0.route.lock().unwrap_or_else(PoisonError::into_inner);
        if route.wanted == Some(digest) {
            route.wanted = None;
        }
        match installed {
            Ok(()) => {
                route.installed = Some(digest);
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
