//! A placement model in an ONNX file as orchestrator-core's [`Learned`] score runs it: the
//! schema checked against [`PLACE_FEATURES`] and [`PLACE_OUTPUTS`], then batches of rows.
//!
//! [`Learned`]: orchestrator_core::scheduler::learned::Learned

use orchestrator_core::scheduler::learned::{
    Fallback, PLACE_FEATURES, PLACE_OUTPUTS, PLACE_PURPOSE, PLACE_WIDTH, PlacePredict,
    PlacePrediction, PredictError,
};

/// How many rows one run scores; more candidates run the model again.
pub const BATCH_ROWS: usize = 64;

/// Why a model is not a placement model: its shape or its declared schema.
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
    /// `model` as the score runs it, or [`Fallback::Refused`] when it is not a placement
    /// model (see [`check`]) or its batch cannot be built.
    pub fn new(model: edge_ai::Model) -> Result<Self, Fallback> {
        check(&model).map_err(|_| Fallback::Refused)?;
        let rows = BATCH_ROWS.min(model.max_batch_rows()).max(1);
        let batch = model.batch(rows).map_err(|_| Fallback::Refused)?;
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
