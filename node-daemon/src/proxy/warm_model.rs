//! The node's pre-warming model: loaded with `edge-ai`, held to node-core's warming schema
//! ([`WARM_FEATURES`] in, [`WARM_OUTPUTS`] out, purpose [`WARM_PURPOSE`]), and handed to
//! [`super::prewarm`] as a [`WarmPredictor`].
//!
//! The model is `DATA_DIR/models/warm.onnx` when there is one (installed by hand, or from the
//! fleet by `crate::models`), else the one built into the binary (`edge-ai/models/warm.onnx`,
//! trained on the simulation's scenarios). Loading runs the golden rows the model declares
//! (`edge-ai` refuses a model that does not reproduce them). A file that does not load or
//! fit is refused with a log line naming why, and pre-warming falls back to today's rule
//! (start on a request, asleep after `idle_secs`): a model the operator put there and that is
//! wrong is not quietly replaced by another. Without the `ai` feature there is no runtime,
//! and it always falls back.

use std::path::{Path, PathBuf};

use edge_proto::digest::{sha256, to_prefixed};
use node_core::warm::{Fallback, WarmPredictor};
#[cfg(feature = "ai")]
use node_core::warm::{
    PredictError, PredictWarm, WARM_FEATURES, WARM_OUTPUTS, WARM_PURPOSE, WARM_WIDTH,
};
use tracing::{info, warn};

/// What `/status` names as the model when it is the one built into the binary.
pub const BUILT_IN: &str = "built-in";

/// The model built into the binary.
#[cfg(feature = "ai")]
const BUILT_IN_BYTES: &[u8] = include_bytes!("../../../edge-ai/models/warm.onnx");

/// How many workloads one model run scores; more run it again.
#[cfg(feature = "ai")]
const BATCH_ROWS: usize = 16;

/// Where a node keeps the warming model it runs, under its data dir.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join("models").join("warm.onnx")
}

/// A warming model as loaded: the predictor (or why there is none), and which model it is
/// for the status: `sha256:...` of a file, [`BUILT_IN`], or `None` when there is none.
#[derive(Debug)]
pub struct Loaded {
    pub predictor: WarmPredictor,
    pub model: Option<String>,
}

/// Which model [`load`] would load from `data_dir`, for the status before it is loaded:
/// `sha256:...` of the file there, else [`BUILT_IN`] (`None` without a runtime). Hashes a
/// small file and loads nothing: call it off the runtime's threads.
pub fn pending(data_dir: &Path) -> Option<String> {
    match std::fs::read(path(data_dir)) {
        Ok(bytes) => Some(to_prefixed(&sha256(&bytes))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            cfg!(feature = "ai").then(|| BUILT_IN.to_owned())
        }
        Err(_) => None,
    }
}

/// The warming model in `data_dir`, else the built-in one; see the module docs. Reads a file
/// and runs the model's golden rows: call it off the runtime's threads.
pub fn load(data_dir: &Path) -> Loaded {
    let path = path(data_dir);
    match std::fs::read(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => built_in(),
        Err(e) => refused(&path, &e.to_string()),
        Ok(bytes) => match from_bytes(&bytes) {
            Ok(predictor) => {
                let model = to_prefixed(&sha256(&bytes));
                info!(path = %path.display(), %model, "pre-warming model loaded");
                Loaded {
                    predictor: Ok(predictor),
                    model: Some(model),
                }
            }
            Err(why) => refused(&path, &why),
        },
    }
}

fn refused(path: &Path, why: &str) -> Loaded {
    warn!(path = %path.display(), error = %why,
        "pre-warming model refused: workloads start on a request and sleep after idle_secs");
    Loaded {
        predictor: Err(Fallback::Refused),
        model: None,
    }
}

/// The model built into the binary (no runtime: none).
fn built_in() -> Loaded {
    #[cfg(feature = "ai")]
    let loaded = from_bytes(BUILT_IN_BYTES);
    #[cfg(not(feature = "ai"))]
    let loaded: Result<Box<dyn node_core::warm::PredictWarm>, String> =
        Err("this build has no model runtime (feature `ai`)".to_owned());
    match loaded {
        Ok(predictor) => {
            info!(model = BUILT_IN, "pre-warming model loaded");
            Loaded {
                predictor: Ok(predictor),
                model: Some(BUILT_IN.to_owned()),
            }
        }
        Err(why) => {
            info!(error = %why, "no pre-warming model: workloads start on a request");
            Loaded {
                predictor: Err(Fallback::NoModel),
                model: None,
            }
        }
    }
}

/// The warming model in `bytes`, once it loads (its golden rows included) and fits the
/// warming schema; else why not.
#[cfg(not(feature = "ai"))]
pub fn from_bytes(_bytes: &[u8]) -> Result<Box<dyn node_core::warm::PredictWarm>, String> {
    Err("this build has no model runtime (feature `ai`)".to_owned())
}

/// The warming model in `bytes`, once it loads (its golden rows included) and fits the
/// warming schema; else why not.
#[cfg(feature = "ai")]
pub fn from_bytes(bytes: &[u8]) -> Result<Box<dyn PredictWarm>, String> {
    use edge_ai::SchemaMismatch;
    let model = edge_ai::Model::from_bytes(bytes).map_err(|e| e.to_string())?;
    let features: Vec<(&str, &str)> = WARM_FEATURES.iter().map(|f| (f.name, f.unit)).collect();
    let out: Vec<(&str, &str)> = WARM_OUTPUTS.iter().map(|f| (f.name, f.unit)).collect();
    model
        .expect_one_to_one(WARM_PURPOSE, &features, &out)
        .map_err(|e| match e {
            SchemaMismatch::PortCount { .. } => format!(
                "a warming model has one input and one output, this one {} and {}",
                model.inputs().len(),
                model.outputs().len()
            ),
            SchemaMismatch::Width { .. } => format!(
                "a warming model takes {WARM_WIDTH} features and gives {}",
                WARM_OUTPUTS.len()
            ),
            other => other.to_string(),
        })?;
    let rows = BATCH_ROWS.min(model.max_batch_rows()).max(1);
    let batch = model.batch(rows).map_err(|e| e.to_string())?;
    Ok(Box::new(BatchWarm { batch }))
}

/// A warming model's batch, reused at every tick.
#[cfg(feature = "ai")]
#[derive(Debug)]
struct BatchWarm {
    batch: edge_ai::Batch,
}

#[cfg(feature = "ai")]
impl PredictWarm for BatchWarm {
    fn predict(&mut self, features: &[f32], out: &mut [f32]) -> Result<(), PredictError> {
        let features = crate::proxy::route_model::rows_of(features, out.len(), WARM_WIDTH)?;
        self.batch
            .run_rows(features, |first, values| {
                for (o, &v) in out.iter_mut().skip(first).zip(values) {
                    *o = v;
                }
            })
            .map_err(|e| PredictError(e.to_string()))
    }
}

#[cfg(all(test, feature = "ai"))]
mod tests {
    use super::*;

    fn models() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../edge-ai/models")
    }

    fn with_model(bytes: &[u8]) -> (tempfile::TempDir, Loaded) {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::create_dir_all(dir.path().join("models")).expect("mkdir");
        std::fs::write(path(dir.path()), bytes).expect("write");
        let loaded = load(dir.path());
        (dir, loaded)
    }

    #[test]
    fn without_a_file_the_built_in_model_decides() {
        let dir = tempfile::tempdir().expect("tmp");
        let loaded = load(dir.path());
        assert_eq!(loaded.model.as_deref(), Some(BUILT_IN));
        let mut model = loaded
            .predictor
            .expect("the built-in model fits the schema");
        // Twenty workloads: more than one batch; each a probability.
        let features = vec![1.0; 20 * WARM_WIDTH];
        let mut out = vec![-1.0; 20];
        model.predict(&features, &mut out).expect("runs");
        assert!(out.iter().all(|p| (0.0..=1.0).contains(p)), "{out:?}");
    }

    #[test]
    fn a_file_is_used_by_its_digest_and_a_wrong_one_falls_back_without_the_built_in() {
        let shipped = std::fs::read(models().join("warm.onnx")).expect("shipped");
        let (_dir, loaded) = with_model(&shipped);
        assert_eq!(loaded.model, Some(to_prefixed(&sha256(&shipped))));
        assert!(loaded.predictor.is_ok());

        for name in ["route.onnx", "tiny-mlp.onnx", "two-port.onnx"] {
            let bytes = std::fs::read(models().join(name)).expect("a shipped model");
            let (_dir, loaded) = with_model(&bytes);
            assert!(
                matches!(loaded.predictor, Err(Fallback::Refused)),
                "{name}: {:?}",
                loaded.predictor
            );
            assert_eq!(loaded.model, None, "{name}");
        }
        let (_dir, loaded) = with_model(b"not a model");
        assert!(matches!(loaded.predictor, Err(Fallback::Refused)));
    }
}
