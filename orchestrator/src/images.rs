//! The image store: container images pushed with `edgectl image push`, kept as blobs in the
//! [`ArtifactStore`] (content-addressed, so a layer two images share is stored once and a
//! node fetches it like any artifact) and as one record per image under
//! `DATA_DIR/artifacts/images/<64 hex>.json`.
//!
//! A push streams the archive through `edge_oci::archive::import` on a blocking thread:
//! every blob is hashed as it is staged, every layer decompressed and checked entry by
//! entry, and nothing reaches the artifact store unless all of it passed. Then the blobs are
//! moved in, the directory synced, and the record written (temporary file, fsync, rename):
//! a crash leaves blobs without a record, which a push of the same image adopts, never a
//! record without its blobs.
//!
//! This module decides nothing about placement: it answers what an image is
//! ([`ImageRecord`], [`ImageStore::facts`]). It never holds an archive in memory.

use crate::artifacts::ArtifactStore;
use crate::records::{list_json, read_json, write_json};
use axum::body::Bytes;
use edge_oci::archive::{ImportError, Imported, Limits};
use orchestrator_core::image::{ArtifactFacts, ImageFacts, PlatformFacts};
use orchestrator_core::workload::{Arch, ArtifactDigest};
use serde::{Deserialize, Serialize};
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Where a push's body goes: its chunks, or the error that ended it.
pub type BodySender = mpsc::Sender<Result<Bytes, String>>;

/// How many chunks of a push wait between the body and the importer.
const CHANNEL_CHUNKS: usize = 16;

/// One stored image, as the API shows it and the deploy path reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// `sha256:...`: what a spec's `image` names.
    pub digest: String,
    /// Bytes of the blob `digest` names (an index or a manifest).
    pub size: u64,
    pub media_type: String,
    pub platforms: Vec<PlatformRecord>,
    /// When it was first pushed, seconds since the Unix epoch.
    pub pushed_unix: u64,
}

/// One runnable platform of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlatformRecord {
    /// The fleet's name for the architecture: `x86_64`, `aarch64`, `arm`.
    pub arch: String,
    /// The OCI platform, e.g. `linux/arm/v7`.
    pub platform: String,
    pub manifest: String,
    pub manifest_size: u64,
    pub config: String,
    pub layers: Vec<LayerRecord>,
    /// The config and the compressed layers: what a node downloads at most.
    pub download_bytes: u64,
    /// The layers' files together: what a node's layer cache grows by at most.
    pub unpacked_bytes: u64,
    /// Whether a layer holds a setuid or setgid file.
    pub has_setuid: bool,
}

/// One layer of a platform.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    pub digest: String,
    pub size: u64,
    pub diff_id: String,
    pub unpacked_bytes: u64,
}

/// What a push did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    /// False if the store had this image already.
    pub created: bool,
    pub view: PushedView,
}

/// What a push answers (`POST /v1/images`, `edgectl image push --json`): the image, and
/// what this push added to the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushedView {
    #[serde(flatten)]
    pub image: ImageRecord,
    /// Blobs (manifests, configs, layers) the store did not have, and their bytes.
    pub blobs_new: usize,
    pub bytes_new: u64,
    /// Blobs it had already, from images pushed before (shared base layers), and their bytes.
    pub blobs_shared: usize,
    pub bytes_shared: u64,
}

/// Why a push was not stored. In every case nothing of it is left in the store.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The archive is not a valid image, or holds something hostile. The pusher's to fix;
    /// the message names the blob, layer or entry at fault.
    #[error("{0}")]
    Refused(ImportError),
    /// The upload stopped part way (the client went away or sent a malformed body).
    #[error("reading the upload: {0}")]
    Body(String),
    /// Our disk failed. Ours to fix; retryable later.
    #[error("image storage: {0}")]
    Io(#[from] io::Error),
}

/// The images, over the artifact store that holds their blobs.
#[derive(Debug, Clone)]
pub struct ImageStore {
    artifacts: Arc<ArtifactStore>,
    records: PathBuf,
    limits: Limits,
}

impl ImageStore {
    /// The images beside `artifacts`; the records' directory is made by the first push.
    pub fn new(artifacts: Arc<ArtifactStore>) -> Self {
        Self::with_limits(artifacts, Limits::default())
    }

    /// [`ImageStore::new`] with the importer's `limits`.
    pub fn with_limits(artifacts: Arc<ArtifactStore>, limits: Limits) -> Self {
        Self {
            records: artifacts.images_dir(),
            artifacts,
            limits,
        }
    }

    /// The most archive bytes a push may stage.
    pub fn max_bytes(&self) -> u64 {
        self.limits.max_staged_bytes
    }

    /// A push fed through the returned sender: send the body's chunks (an `Err` for a body
    /// that failed), drop the sender at its end, and await the handle. A refusal may come
    /// before the body ends: the sender then fails, and the caller stops reading.
    pub fn push(
        &self,
        now_unix: u64,
    ) -> (
        BodySender,
        tokio::task::JoinHandle<Result<Pushed, PushError>>,
    ) {
        let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
        let store = self.clone();
        let handle = tokio::spawn(async move { store.receive(rx, now_unix).await });
        (tx, handle)
    }

    async fn receive(
        self,
        rx: mpsc::Receiver<Result<Bytes, String>>,
        now_unix: u64,
    ) -> Result<Pushed, PushError> {
        let staging = self.artifacts.staging()?;
        let limits = self.limits.clone();
        let dir = staging.clone();
        let imported = tokio::task::spawn_blocking(move || {
            let mut body = BodyReader {
                rx,
                chunk: Bytes::new(),
                failed: None,
            };
            let result = edge_oci::archive::import(&mut body, &dir, &limits);
            (result, body.failed)
        })
        .await
        .map_err(io::Error::other);
        let outcome = match imported {
            Ok((Ok(imported), _)) => self.keep(imported, now_unix).await,
            // The body's own failure explains a read error better than the tar reader.
            Ok((Err(_), Some(failed))) => Err(PushError::Body(failed)),
            Ok((Err(ImportError::Staging { source, .. }), None)) => Err(PushError::Io(source)),
            Ok((Err(e), None)) => Err(PushError::Refused(e)),
            Err(e) => Err(PushError::Io(e)),
        };
        if let Err(error) = tokio::fs::remove_dir_all(&staging).await {
            tracing::warn!(path = %staging.display(), %error, "could not delete a push's staging");
        }
        outcome
    }

    /// Moves the checked blobs in, then writes the record.
    async fn keep(&self, imported: Imported, now_unix: u64) -> Result<Pushed, PushError> {
        let (mut blobs_new, mut bytes_new, mut blobs_shared, mut bytes_shared) = (0, 0, 0, 0);
        for blob in &imported.blobs {
            if self.artifacts.adopt(&blob.path, &blob.digest.0).await? {
                blobs_new += 1;
                bytes_new += blob.size;
            } else {
                blobs_shared += 1;
                bytes_shared += blob.size;
            }
        }
        self.artifacts.sync().await?;
        let digest = imported.digest;
        let (record, created) = match self.get(&digest.0).await? {
            Some(record) => (record, false),
            None => {
                let record = record_of(&imported, now_unix);
                write_json(&self.records, &format!("{}.json", digest.hex()), &record).await?;
                (record, true)
            }
        };
        Ok(Pushed {
            created,
            view: PushedView {
                image: record,
                blobs_new,
                bytes_new,
                blobs_shared,
                bytes_shared,
            },
        })
    }

    /// The image named `digest`, if pushed.
    pub async fn get(&self, digest: &[u8; 32]) -> io::Result<Option<ImageRecord>> {
        let name = format!("{}.json", edge_proto::digest::to_hex(digest));
        read_json(&self.records.join(name)).await
    }

    /// Every image, ordered by digest.
    pub async fn list(&self) -> io::Result<Vec<ImageRecord>> {
        let mut out: Vec<ImageRecord> = list_json(&self.records).await?;
        out.sort_by(|a, b| a.digest.cmp(&b.digest));
        Ok(out)
    }
}

/// What the deploy path needs of an image: its size and, per architecture, the manifest
/// and the bytes. Platforms of an architecture the fleet does not know are left out.
pub fn facts(record: &ImageRecord) -> ArtifactFacts {
    let platforms = record
        .platforms
        .iter()
        .filter_map(|p| {
            Some(PlatformFacts {
                arch: Arch::parse(&p.arch)?,
                manifest: ArtifactDigest::parse(&p.manifest)?,
                manifest_size: p.manifest_size,
                download_bytes: p.download_bytes,
                unpacked_bytes: p.unpacked_bytes,
            })
        })
        .collect();
    ArtifactFacts {
        size: record.size,
        image: Some(ImageFacts { platforms }),
    }
}

fn record_of(imported: &Imported, now_unix: u64) -> ImageRecord {
    let blob_size = |digest: &edge_oci::Digest| {
        imported
            .blobs
            .iter()
            .find(|b| b.digest == *digest)
            .map_or(0, |b| b.size)
    };
    ImageRecord {
        digest: imported.digest.to_string(),
        size: blob_size(&imported.digest),
        media_type: imported.media_type.clone(),
        platforms: imported
            .platforms
            .iter()
            .map(|p| {
                let layers: Vec<LayerRecord> = p
                    .layers
                    .iter()
                    .map(|l| LayerRecord {
                        digest: l.digest.to_string(),
                        size: l.size,
                        diff_id: l.diff_id.to_string(),
                        unpacked_bytes: l.unpacked_bytes,
                    })
                    .collect();
                PlatformRecord {
                    arch: p.arch.to_owned(),
                    platform: p.platform.to_string(),
                    manifest: p.manifest.digest.to_string(),
                    manifest_size: p.manifest.size,
                    config: p.config_digest.to_string(),
                    download_bytes: blob_size(&p.config_digest)
                        + layers.iter().map(|l| l.size).sum::<u64>(),
                    unpacked_bytes: layers.iter().map(|l| l.unpacked_bytes).sum(),
                    has_setuid: p.layers.iter().any(|l| l.has_setuid),
                    layers,
                }
            })
            .collect(),
        pushed_unix: now_unix,
    }
}

/// The request body as a `Read` for the importer's blocking thread.
struct BodyReader {
    rx: mpsc::Receiver<Result<Bytes, String>>,
    chunk: Bytes,
    /// The body's own error, kept to report instead of the tar reader's.
    failed: Option<String>,
}

impl Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.chunk.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => self.chunk = chunk,
                Some(Err(e)) => {
                    self.failed = Some(e.clone());
                    return Err(io::Error::other(e));
                }
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}
