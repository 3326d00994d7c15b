//! The model store: ONNX models pushed with `edgectl model push`, checked ([`check`]), kept
//! as artifacts (content-addressed, so nodes fetch them like any artifact, resumable and
//! hash-verified) with one record each under `DATA_DIR/artifacts/models/<64 hex>.json`, and
//! which model the fleet uses for each purpose, in `DATA_DIR/artifacts/models/active.json`.
//!
//! A push checks the model on a blocking thread, stores its bytes, then writes its record and
//! the active choice (each a temporary file, fsync, rename): a crash leaves an artifact
//! without a record, which a push of the same model adopts, never a record without its bytes.
//! A model over [`edge_ai::MAX_MODEL_BYTES`] is refused before anything is checked.

pub mod check;

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::artifacts::{ArtifactStore, PutError};
use crate::records::{list_json, read_json, write_json};
use check::{CheckError, Checked};
use orchestrator_core::models::ActiveModel;

/// The purposes a fleet model may serve: what the nodes' proxies and the scheduler ask for.
/// A fixed set, so that a purpose is fit for a metric label and a file key.
pub const PURPOSES: [&str; 3] = ["route", "place", "warm"];

/// One stored model, as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelRecord {
    /// `sha256:...` of the model's bytes.
    pub digest: String,
    pub size: u64,
    /// What the model declares it is for (`edge.purpose`), if it does.
    pub purpose: Option<String>,
    pub inputs: Vec<PortRecord>,
    pub outputs: Vec<PortRecord>,
    /// The ONNX operators it uses.
    pub operators: Vec<String>,
    /// The golden rows both readers reproduced.
    pub golden_rows: usize,
    /// When it was first pushed, seconds since the Unix epoch.
    pub pushed_unix: u64,
}

impl ModelRecord {
    /// This model as nodes are offered it for `purpose`; `None` for a purpose nodes do not
    /// serve.
    pub fn offered_for(&self, purpose: &str) -> Option<ActiveModel> {
        Some(ActiveModel {
            purpose: orchestrator_core::models::node_purpose(purpose)?,
            digest: edge_proto::digest::from_prefixed(&self.digest)?,
            size: self.size,
            operators: self.operators.clone(),
        })
    }
}

/// One input or output of a stored model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PortRecord {
    pub name: String,
    pub width: usize,
    /// The declared features, each `name:unit`, when the model declares them.
    pub features: Option<Vec<String>>,
}

/// What a push answers: the model, whether it was new, and what the fleet now uses it for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PushedModel {
    #[serde(flatten)]
    pub model: ModelRecord,
    pub created: bool,
    /// The purpose the fleet now uses it for, if any.
    pub active_for: Option<String>,
    /// How many online nodes it was sent to (a routing model goes to the nodes whose reader
    /// runs it; the others it reaches at their next session).
    #[serde(default)]
    pub offered_nodes: usize,
    /// Online nodes whose model reader lacks an operator the model uses, or whose session's
    /// protocol version is older than the purpose (`ModelPurpose::since`): they keep the
    /// model they have. At most [`MAX_NAMED`] are named.
    #[serde(default)]
    pub cannot_run: Vec<String>,
}

/// The most nodes a push's answer names.
pub const MAX_NAMED: usize = 64;

/// Why a push was not stored. In every case nothing of it is left in the store.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The model failed a check: the pusher's to fix.
    #[error("{0}")]
    Refused(#[from] CheckError),
    /// The model is too large to be one the nodes run.
    #[error("the model is {len} bytes, over the {max} byte limit")]
    TooLarge { len: u64, max: u64 },
    /// A purpose that is not one of [`PURPOSES`], or that the model declares otherwise.
    #[error("{0}")]
    Purpose(String),
    /// Our disk failed. Ours to fix; retryable later.
    #[error("model storage: {0}")]
    Io(#[from] io::Error),
}

/// The models, over the artifact store that holds their bytes.
#[derive(Debug, Clone)]
pub struct ModelStore {
    artifacts: Arc<ArtifactStore>,
    records: PathBuf,
}

impl ModelStore {
    /// The models beside `artifacts`; the records' directory is made by the first push.
    pub fn new(artifacts: Arc<ArtifactStore>) -> Self {
        Self {
            records: artifacts.sibling_dir("models"),
            artifacts,
        }
    }

    /// Checks `bytes`, stores the model, and makes it the fleet's model for `purpose` (the
    /// one given, else the one the model declares, if it is one of [`PURPOSES`]).
    pub async fn push(
        &self,
        bytes: axum::body::Bytes,
        purpose: Option<&str>,
        now_unix: u64,
    ) -> Result<PushedModel, PushError> {
        let len = bytes.len() as u64;
        if len > edge_ai::MAX_MODEL_BYTES {
            return Err(PushError::TooLarge {
                len,
                max: edge_ai::MAX_MODEL_BYTES,
            });
        }
        let checking = bytes.clone();
        let checked = tokio::task::spawn_blocking(move || check::check(&checking))
            .await
            .map_err(|e| {
                // A panic in a reader: the model is what made it panic.
                CheckError::TractOnnx(format!("a reader failed on it: {e}"))
            })??;
        let active_for = match (purpose, checked.purpose.as_deref()) {
            (Some(given), declared) => {
                if !PURPOSES.contains(&given) {
                    return Err(PushError::Purpose(format!(
                        "purpose {} is not one of {}",
                        edge_proto::field::shown(given),
                        PURPOSES.join(", ")
                    )));
                }
                if declared.is_some_and(|d| d != given) {
                    return Err(PushError::Purpose(format!(
                        "the model declares it is for {}, not {given}",
                        edge_proto::field::shown(declared.unwrap_or_default())
                    )));
                }
                Some(given.to_owned())
            }
            (None, Some(declared)) if PURPOSES.contains(&declared) => Some(declared.to_owned()),
            (None, _) => None,
        };

        let digest = edge_proto::digest::sha256(&bytes);
        let mut upload = self
            .artifacts
            .begin(Some(digest))
            .await
            .map_err(put_error)?;
        upload.write(&bytes).await.map_err(put_error)?;
        upload.finish().await.map_err(put_error)?;

        let hex = edge_proto::digest::to_hex(&digest);
        let (model, created) = match self.get(&digest).await? {
            Some(record) => (record, false),
            None => {
                let record = record_of(&checked, &digest, len, now_unix);
                write_json(&self.records, &format!("{hex}.json"), &record).await?;
                (record, true)
            }
        };
        if let Some(purpose) = &active_for {
            let mut active = self.active().await?;
            active.insert(purpose.clone(), model.digest.clone());
            write_json(&self.records, ACTIVE_FILE, &active).await?;
        }
        Ok(PushedModel {
            model,
            created,
            active_for,
            offered_nodes: 0,
            cannot_run: Vec::new(),
        })
    }

    /// The model named `digest`, if pushed.
    pub async fn get(&self, digest: &[u8; 32]) -> io::Result<Option<ModelRecord>> {
        let name = format!("{}.json", edge_proto::digest::to_hex(digest));
        read_json(&self.records.join(name)).await
    }

    /// Every model, ordered by digest.
    pub async fn list(&self) -> io::Result<Vec<ModelRecord>> {
        let mut out: Vec<ModelRecord> = list_json(&self.records).await?;
        out.sort_by(|a, b| a.digest.cmp(&b.digest));
        Ok(out)
    }

    /// Which model the fleet uses for each purpose: purpose to `sha256:...`.
    pub async fn active(&self) -> io::Result<BTreeMap<String, String>> {
        Ok(read_json(&self.records.join(ACTIVE_FILE))
            .await?
            .unwrap_or_default())
    }

    /// The bytes of the model the fleet uses for `purpose`, with its `sha256:...`; `None`
    /// when none was pushed for it. At most [`edge_ai::MAX_MODEL_BYTES`] are read.
    pub async fn active_bytes(&self, purpose: &str) -> io::Result<Option<(String, Vec<u8>)>> {
        use tokio::io::AsyncReadExt;
        let Some(prefixed) = self.active().await?.remove(purpose) else {
            return Ok(None);
        };
        let Some(digest) = edge_proto::digest::from_prefixed(&prefixed) else {
            return Err(io::Error::other(format!("{ACTIVE_FILE} names {prefixed}")));
        };
        let (file, _) = self
            .artifacts
            .open_at(&digest, 0)
            .await
            .map_err(|e| io::Error::other(format!("model {prefixed}: {e}")))?;
        let mut bytes = Vec::new();
        file.take(edge_ai::MAX_MODEL_BYTES)
            .read_to_end(&mut bytes)
            .await?;
        if edge_proto::digest::sha256(&bytes) != digest {
            return Err(io::Error::other(format!(
                "model {prefixed}: the stored bytes do not match their digest"
            )));
        }
        Ok(Some((prefixed, bytes)))
    }

    /// The models the fleet uses for purposes that nodes serve, as they are offered to them.
    pub async fn for_nodes(&self) -> io::Result<Vec<ActiveModel>> {
        let mut out = Vec::new();
        for (purpose, digest) in self.active().await? {
            if orchestrator_core::models::node_purpose(&purpose).is_none() {
                continue;
            }
            let Some(digest) = edge_proto::digest::from_prefixed(&digest) else {
                return Err(io::Error::other(format!("{ACTIVE_FILE} names {digest}")));
            };
            let Some(record) = self.get(&digest).await? else {
                return Err(io::Error::other(format!(
                    "{ACTIVE_FILE} names a model without a record"
                )));
            };
            out.extend(record.offered_for(&purpose));
        }
        Ok(out)
    }
}

const ACTIVE_FILE: &str = "active.json";

fn put_error(e: PutError) -> PushError {
    match e {
        PutError::Io(e) => PushError::Io(e),
        other => PushError::Io(io::Error::other(other.to_string())),
    }
}

fn record_of(checked: &Checked, digest: &[u8; 32], size: u64, now_unix: u64) -> ModelRecord {
    let ports = |ports: &[check::Port]| {
        ports
            .iter()
            .map(|p| PortRecord {
                name: p.name.clone(),
                width: p.width,
                features: p.features.as_ref().map(|f| {
                    f.iter()
                        .map(|(name, unit)| format!("{name}:{unit}"))
                        .collect()
                }),
            })
            .collect()
    };
    ModelRecord {
        digest: edge_proto::digest::to_prefixed(digest),
        size,
        purpose: checked.purpose.clone(),
        inputs: ports(&checked.inputs),
        outputs: ports(&checked.outputs),
        operators: checked.operators.clone(),
        golden_rows: checked.golden_rows,
        pushed_unix: now_unix,
    }
}
