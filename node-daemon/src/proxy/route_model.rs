//! The node's routing model: loaded with `edge-ai`, held to node-core's routing schema, and
//! handed to the proxy as a maker of one predictor per route.
//!
//! The model comes from `DATA_DIR/models/route.onnx` when the node starts, and from the
//! fleet later (`crate::models` installs it there). A model that does not load, or that
//! declares a schema other than [`ROUTE_FEATURES`] in and [`ROUTE_OUTPUTS`] out, is refused
//! with a log line naming why, and the routes choose by peak-EWMA P2C; so do they with no
//! model at all. Without the `ai` feature the node has no model runtime, and every route
//! falls back.

use std::path::{Path, PathBuf};

use edge_proto::digest::{Digest, sha256, to_prefixed};
use edge_proxy::proxy::{RouteModel, no_route_model};
use node_core::proxy::learned::Fallback;
#[cfg(feature = "ai")]
use node_core::proxy::learned::{
    Predict, PredictError, Prediction, ROUTE_FEATURES, ROUTE_OUTPUTS, ROUTE_PURPOSE, ROUTE_WIDTH,
};
use tracing::{info, warn};

use crate::task::AbortOnDrop;

/// Where a node keeps the routing model it runs, under its data dir.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join("models").join("route.onnx")
}

/// How many candidates one model run scores; a route with more runs the model again.
#[cfg(feature = "ai")]
const BATCH_ROWS: usize = 8;

/// The routing model in `data_dir` and the digest of its bytes, or the fallback's reason:
/// [`Fallback::NoModel`] when there is none, [`Fallback::Refused`] when it does not load or
/// does not fit.
pub fn load(data_dir: &Path) -> (RouteModel, Result<Digest, Fallback>) {
    let path = path(data_dir);
    let bytes = match std::fs::read(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            info!(path = %path.display(), "no routing model: routes choose by peak-EWMA P2C");
            return (no_route_model(), Err(Fallback::NoModel));
        }
        Err(e) => Err(e.to_string()),
        Ok(bytes) => Ok(bytes),
    };
    match bytes.and_then(|bytes| Ok((from_bytes(&bytes)?, sha256(&bytes)))) {
        Ok((model, digest)) => {
            info!(path = %path.display(), model = %to_prefixed(&digest), "routing model loaded");
            (model, Ok(digest))
        }
        Err(why) => {
            warn!(path = %path.display(), error = %why,
                "routing model refused: routes choose by peak-EWMA P2C");
            (refused(), Err(Fallback::Refused))
        }
    }
}

/// Routes that fall back because the model was refused.
pub fn refused() -> RouteModel {
    std::sync::Arc::new(|| Err(Fallback::Refused))
}

/// The routing model in `bytes`, once it loads and fits the routing schema; else why not.
#[cfg(not(feature = "ai"))]
pub fn from_bytes(_bytes: &[u8]) -> Result<RouteModel, String> {
    Err("this build has no model runtime (feature `ai`)".to_owned())
}

/// The routing model in `bytes`, once it loads and fits the routing schema; else why not.
#[cfg(feature = "ai")]
pub fn from_bytes(bytes: &[u8]) -> Result<RouteModel, String> {
    let model = edge_ai::Model::from_bytes(bytes).map_err(|e| e.to_string())?;
    from_model(model)
}

/// `model` as the proxy takes it, once it is known to fit the routing schema.
#[cfg(feature = "ai")]
pub fn from_model(model: edge_ai::Model) -> Result<RouteModel, String> {
    let features: Vec<(&str, &str)> = ROUTE_FEATURES.iter().map(|f| (f.name, f.unit)).collect();
    let outputs: Vec<(&str, &str)> = ROUTE_OUTPUTS.iter().map(|f| (f.name, f.unit)).collect();
    model.check_one_to_one("routing model", ROUTE_PURPOSE, &features, &outputs)?;
    let rows = BATCH_ROWS.min(model.max_batch_rows()).max(1);
    // Each route's batch is made on its first use of a new model, off the request path: a
    // first batch that fails to build is a broken model.
    model.batch(rows).map_err(|e| e.to_string())?;
    let model = std::sync::Arc::new(model);
    Ok(std::sync::Arc::new(move || {
        model
            .batch(rows)
            .map(|batch| Box::new(BatchPredictor { batch }) as Box<dyn Predict>)
            .map_err(|_| Fallback::Broken)
    }))
}

/// A routing model's batch, reused for every choice of one route.
#[cfg(feature = "ai")]
#[derive(Debug)]
struct BatchPredictor {
    batch: edge_ai::Batch,
}

#[cfg(feature = "ai")]
impl Predict for BatchPredictor {
    fn predict(&mut self, features: &[f32], out: &mut [Prediction]) -> Result<(), PredictError> {
        let features = rows_of(features, out.len(), ROUTE_WIDTH)?;
        self.batch
            .run_rows(features, |first, values| {
                for (p, pair) in out.iter_mut().skip(first).zip(values.chunks_exact(2)) {
                    *p = Prediction::from_outputs(pair[0], pair[1]);
                }
            })
            .map_err(|e| PredictError(e.to_string()))
    }
}

/// The first `rows` rows of `width` features, or why there are fewer.
#[cfg(feature = "ai")]
pub(crate) fn rows_of(features: &[f32], rows: usize, width: usize) -> Result<&[f32], PredictError> {
    features
        .get(..rows * width)
        .ok_or_else(|| PredictError(format!("fewer than {rows} rows of features")))
}

/// How often [`watch`] looks at who chooses on each route.
const WATCH_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// Keeps the node's status and metrics saying who chooses on each route (the model, or
/// peak-EWMA P2C and why), and logs each change: a model stepping aside for drift or a
/// failure is the operator's to know. Stops when dropped.
pub fn watch(proxy: edge_proxy::Proxy, board: crate::status::StatusBoard) -> AbortOnDrop {
    AbortOnDrop(tokio::spawn(async move {
        let mut every = tokio::time::interval(WATCH_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last: Vec<(node_core::proxy::learned::Mode, usize)> = Vec::new();
        loop {
            every.tick().await;
            let mut modes = proxy.route_modes();
            modes.sort_by_key(|(mode, _)| mode.as_str());
            if modes == last {
                continue;
            }
            for (mode, routes) in &modes {
                match mode {
                    node_core::proxy::learned::Mode::Model => {
                        info!(routes, "the routing model chooses")
                    }
                    node_core::proxy::learned::Mode::Fallback(reason) => {
                        warn!(
                            routes,
                            reason = reason.as_str(),
                            "peak-EWMA P2C chooses instead of the routing model"
                        )
                    }
                }
            }
            board.metrics().route_choosers(&modes);
            let view: std::collections::BTreeMap<&'static str, usize> =
                modes.iter().map(|(m, n)| (m.as_str(), *n)).collect();
            board.update(|s| s.routing = Some(view));
            last = modes;
        }
    }))
}

#[cfg(all(test, feature = "ai"))]
mod tests {
    use super::*;

    fn models() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../edge-ai/models")
    }

    fn with_model(bytes: &[u8]) -> (tempfile::TempDir, (RouteModel, Result<Digest, Fallback>)) {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::create_dir_all(dir.path().join("models")).expect("mkdir");
        std::fs::write(path(dir.path()), bytes).expect("write");
        let loaded = load(dir.path());
        (dir, loaded)
    }

    #[test]
    fn no_model_or_one_that_does_not_fit_leaves_the_routes_on_p2c() {
        let dir = tempfile::tempdir().expect("tmp");
        let (model, reason) = load(dir.path());
        assert_eq!(reason, Err(Fallback::NoModel));
        assert!(matches!(model(), Err(Fallback::NoModel)));

        for name in [
            // Eight inputs and one output: the built-in runtime check, not a routing model.
            "tiny-mlp.onnx",
            // Thirteen inputs and two outputs, but features of its own naming.
            "route-mlp.onnx",
            "unsupported-conv.onnx",
        ] {
            let bytes = std::fs::read(models().join(name)).expect("a shipped model");
            let (_dir, (model, reason)) = with_model(&bytes);
            assert_eq!(reason, Err(Fallback::Refused), "{name}");
            assert!(matches!(model(), Err(Fallback::Refused)), "{name}");
        }
        let (_dir, (_, reason)) = with_model(b"not a model");
        assert_eq!(reason, Err(Fallback::Refused));
    }

    #[test]
    fn a_model_of_the_routing_schema_scores_any_number_of_candidates() {
        let Ok(bytes) = std::fs::read(models().join("route.onnx")) else {
            panic!("edge-ai/models/route.onnx ships with the workspace");
        };
        let (_dir, (model, digest)) = with_model(&bytes);
        assert_eq!(digest, Ok(sha256(&bytes)), "the digest of what was loaded");
        let mut predictor = model().expect("the trained model fits the schema");
        // Twenty candidates: more than one batch.
        let rows = 20;
        let mut features = Vec::with_capacity(rows * ROUTE_WIDTH);
        for i in 0..rows {
            let ms = 1.0 + i as f32 * 10.0;
            features.extend_from_slice(&[
                ms,
                ms,
                ms * 2.0,
                ms / 2.0,
                1.0,
                0.0,
                0.0,
                0.0,
                100.0,
                0.0,
                1.0,
                0.2,
                0.3,
            ]);
        }
        let mut out = vec![Prediction::default(); rows];
        predictor.predict(&features, &mut out).expect("it runs");
        for p in &out {
            assert!(p.latency_ms.is_finite() && p.latency_ms > 0.0, "{p:?}");
            assert!((0.0..=1.0).contains(&p.failure), "{p:?}");
        }
        // The same row gives the same answer in either batch.
        let first = out[0];
        let mut again = vec![Prediction::default(); 1];
        predictor
            .predict(&features[..ROUTE_WIDTH], &mut again)
            .expect("it runs");
        assert!((again[0].latency_ms - first.latency_ms).abs() <= 1e-3 * first.latency_ms);
    }
}
