//! The placement model, from the model store to the scheduler: an ONNX model pushed for
//! `place` is read with edge-ai's reader, checked against the features and outputs the
//! learned score expects ([`PLACE_FEATURES`], [`PLACE_OUTPUTS`]), and handed to the deployments
//! controller ([`crate::deployer::Deployer::set_place_model`]) as a [`PlacePredict`]. This is
//! the shell side of `orchestrator_core::scheduler::learned`: the core decides what to do with
//! predictions; this module only runs the model.
//!
//! With no place model pushed, or one that fails here, placement uses the fixed rule
//! (least allocated), and the status and the `edge_orchestrator_place_mode` metric say why.

use orchestrator_core::scheduler::learned::{
    Fallback, PLACE_FEATURES, PLACE_OUTPUTS, PLACE_PURPOSE, PLACE_WIDTH, PlacePredict,
    PlacePrediction, PredictError,
};

/// How many rows one run scores; more candidates run the model again.
pub const BATCH_ROWS: usize = 64;

/// The most of a refusal's text kept for the status and the log.
const MAX_DETAIL: usize = 300;

/// Why a model cannot place: the fallback's reason and what failed, for the log and status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct Unusable {
    pub reason: Fallback,
    pub detail: String,
}

impl Unusable {
    fn refused(detail: impl Into<String>) -> Self {
        let mut detail: String = detail.into();
        if detail.len() > MAX_DETAIL {
            let mut cut = MAX_DETAIL;
            while !detail.is_char_boundary(cut) {
                cut -= 1;
            }
            detail.truncate(cut);
        }
        Self {
            reason: Fallback::Refused,
            detail,
        }
    }
}

/// Why `model` is not a placement model: its shape or its declared schema.
pub fn check(model: &edge_ai::Model) -> Result<(), String> {
    let features: Vec<(&str, &str)> = PLACE_FEATURES.iter().map(|f| (f.name, f.unit)).collect();
    let outputs: Vec<(&str, &str)> = PLACE_OUTPUTS.iter().map(|f| (f.name, f.unit)).collect();
    model.check_one_to_one("placement model", PLACE_PURPOSE, &features, &outputs)
}

/// A placement model's batch, reused for every placement.
#[derive(Debug)]
pub struct OnnxPlacePredict {
    batch: edge_ai::Batch,
}

impl OnnxPlacePredict {
    /// `model` as the score runs it, or why it cannot be (see [`check`]).
    pub fn new(model: edge_ai::Model) -> Result<Self, Unusable> {
        check(&model).map_err(Unusable::refused)?;
        let rows = BATCH_ROWS.min(model.max_batch_rows()).max(1);
        let batch = model
            .batch(rows)
            .map_err(|e| Unusable::refused(e.to_string()))?;
        Ok(Self { batch })
    }
}

impl PlacePredict for OnnxPlacePredict {
    fn predict(
        &mut self,
        features: &[f32],
        out: &mut [PlacePrediction],
    ) -> Result<(), PredictError> {
        let rows = out.len();
        let features = features
            .get(..rows * PLACE_WIDTH)
            .ok_or_else(|| PredictError(format!("fewer than {rows} rows of features")))?;
        self.batch
            .run_rows(features, |first, values| {
                for (p, o) in out.iter_mut().skip(first).zip(values.chunks_exact(2)) {
                    *p = PlacePrediction::from_outputs(o[0], o[1]);
                }
            })
            .map_err(|e| PredictError(e.to_string()))
    }
}

/// The model in `bytes` as the scheduler runs it. CPU-bound (it loads and optimizes the
/// graph): call it on a blocking thread.
pub fn load(bytes: &[u8]) -> Result<Box<dyn PlacePredict>, Unusable> {
    let model = edge_ai::Model::from_bytes(bytes).map_err(|e| Unusable::refused(e.to_string()))?;
    Ok(Box::new(OnnxPlacePredict::new(model)?))
}

/// For a push: whether the model in `bytes`, pushed with `purpose` (or declaring one), is for
/// placement, and then whether it can place. `None` when it is not for placement or its
/// bytes are not a model the reader takes (the store's check says why).
pub fn for_push(
    bytes: &[u8],
    purpose: Option<&str>,
) -> Option<Result<Box<dyn PlacePredict>, Unusable>> {
    let model = edge_ai::Model::from_bytes(bytes).ok()?;
    let declared = model.purpose().map(str::to_owned);
    // A model that declares another purpose than the one given is the store's to refuse.
    let for_place = match (purpose, declared.as_deref()) {
        (Some(given), None) => given == PLACE_PURPOSE,
        (Some(given), Some(declared)) => given == PLACE_PURPOSE && declared == PLACE_PURPOSE,
        (None, declared) => declared == Some(PLACE_PURPOSE),
    };
    if !for_place {
        return None;
    }
    Some(
        OnnxPlacePredict::new(model)
            .map(|p| Box::new(p) as Box<dyn PlacePredict>)
            .map_err(|e| Unusable {
                detail: format!("not a placement model: {}", e.detail),
                ..e
            }),
    )
}

/// At start: hands `deployer` the place model pushed before, if there is one. Nothing
/// pushed leaves the fallback; a stored model that cannot be read or cannot place leaves it
/// too, and says why (the log line, the gauge, the status).
pub async fn load_stored(models: &crate::models::ModelStore, deployer: &crate::deployer::Deployer) {
    let stored = match models.active_bytes(PLACE_PURPOSE).await {
        Ok(Some(stored)) => stored,
        Ok(None) => return,
        Err(error) => {
            let unusable = Unusable::refused(error.to_string());
            deployer.set_place_model(Err(unusable), None);
            return;
        }
    };
    let (digest, bytes) = stored;
    let loaded = tokio::task::spawn_blocking(move || load(&bytes))
        .await
        .unwrap_or_else(|e| Err(Unusable::refused(format!("the reader failed on it: {e}"))));
    deployer.set_place_model(loaded, Some(digest));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn model(name: &str) -> Vec<u8> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../edge-ai/models")
            .join(name);
        std::fs::read(path).expect("the model ships with edge-ai")
    }

    #[test]
    fn the_shipped_placement_model_loads_and_predicts_numbers() {
        let mut p = load(&model("place.onnx")).expect("a placement model");
        let rows = vec![0.5f32; PLACE_WIDTH * 3];
        let mut out = vec![PlacePrediction::default(); 3];
        p.predict(&rows, &mut out).expect("runs");
        assert!(
            out.iter()
                .all(|o| o.startup_ms.is_finite() && o.failure.is_finite())
        );
    }

    #[test]
    fn a_model_of_another_shape_or_bytes_that_are_no_model_are_refused_with_a_reason() {
        for bytes in [
            model("tiny-mlp.onnx"),
            model("route.onnx"),
            b"not onnx".to_vec(),
        ] {
            let err = load(&bytes).map(|_| ()).expect_err("refused");
            assert_eq!(err.reason, Fallback::Refused);
            assert!(!err.detail.is_empty() && err.detail.len() <= MAX_DETAIL);
        }
    }

    #[test]
    fn a_push_for_place_is_checked_and_others_are_left_alone() {
        assert!(matches!(for_push(&model("place.onnx"), None), Some(Ok(_))));
        assert!(matches!(
            for_push(&model("tiny-mlp.onnx"), Some("place")),
            Some(Err(Unusable {
                reason: Fallback::Refused,
                ..
            }))
        ));
        assert!(for_push(&model("route.onnx"), None).is_none());
        assert!(for_push(&model("tiny-mlp.onnx"), Some("route")).is_none());
    }
}
