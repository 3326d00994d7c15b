//! The artifact store: workload executables, content-addressed by sha256, on disk under
//! `DATA_DIR/artifacts/sha256/<64 hex>`, and the QUIC side that serves them to nodes.
//!
//! An upload is written to a temporary file in the same directory while it is hashed, bounded
//! by the store's `max_bytes`, flushed to disk, and only then renamed to its digest; the
//! directory is synced after the rename. A crash therefore leaves either the whole artifact
//! under its digest or a temporary file, which the next [`ArtifactStore::open`] deletes. A file
//! named by a digest always holds exactly the bytes that hash to that digest.
//!
//! This module is the only code that touches the artifact files. It never executes anything,
//! never trusts a digest it did not compute, and never holds a whole artifact in memory.

use edge_proto::quic::{WriteError, write_msg};
use edge_proto::{ArtifactReply, ArtifactRequest};
use std::io;
use std::path::{Path, PathBuf};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt, AsyncWriteExt, BufWriter};

/// sha256 of an artifact's bytes.
pub use edge_proto::digest::Digest;
use edge_proto::digest::{from_hex, to_hex, to_prefixed};

/// The default largest artifact: 256 MiB.
pub const DEFAULT_MAX_BYTES: u64 = 256 * 1024 * 1024;
/// How much of an artifact is read from disk and written to a stream at a time.
pub const CHUNK_BYTES: usize = 64 * 1024;
/// How much of an upload is gathered before it is written: request bodies arrive in small
/// pieces, and each file write is a trip to the blocking pool.
const WRITE_BUFFER_BYTES: usize = 256 * 1024;
/// Where artifacts live, under the data dir.
const SUBDIR: &str = "artifacts/sha256";
/// Temporary upload files start with this; no digest name does.
const TEMP_PREFIX: &str = ".upload-";
/// Staging directories of image pushes start with this (see [`ArtifactStore::staging`]).
const STAGING_PREFIX: &str = ".image-";

/// One stored artifact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ArtifactInfo {
    pub digest: Digest,
    pub size: u64,
}

/// The outcome of a successful upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    pub digest: Digest,
    pub size: u64,
    /// False if the store already had this artifact (the upload changed nothing).
    pub created: bool,
}

/// Why an upload was not stored. In every case nothing of it is left on disk.
#[derive(Debug, thiserror::Error)]
pub enum PutError {
    /// The uploader sent more than the store's limit. Their fault; not retryable as is.
    #[error("the artifact is over the limit of {max_bytes} bytes")]
    TooLarge { max_bytes: u64 },
    /// The bytes do not hash to the digest the uploader said they would. Their fault (or the
    /// transfer's); retrying the same upload may succeed.
    #[error(
        "the bytes hash to {}, not the expected {}",
        to_prefixed(actual),
        to_prefixed(expected)
    )]
    DigestMismatch { expected: Digest, actual: Digest },
    /// Reading the upload failed: the uploader or the connection. Retryable.
    #[error("reading the upload: {0}")]
    Source(io::Error),
    /// Our disk failed (full, read-only, permissions). Ours to fix; retryable later.
    #[error("artifact storage: {0}")]
    Io(#[from] io::Error),
}

/// Why an artifact could not be opened for reading.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The store does not have it.
    #[error("no such artifact")]
    NotFound,
    /// The requested offset is past the end; `size` is the artifact's size.
    #[error("offset past the end of the artifact ({size} bytes)")]
    BadOffset { size: u64 },
    /// Our disk failed.
    #[error("artifact storage: {0}")]
    Io(#[from] io::Error),
}

/// Artifacts on disk, by digest. Cheap to clone: it is a path and a limit.
#[derive(Debug, Clone)]
pub struct ArtifactStore {
    dir: PathBuf,
    max_bytes: u64,
}

impl ArtifactStore {
    /// Opens (creating if needed) `data_dir/artifacts/sha256` with the default size limit, and
    /// deletes uploads a previous process left unfinished. Only one process may use a data dir.
    pub fn open(data_dir: &Path) -> io::Result<Self> {
        Self::open_with_limit(data_dir, DEFAULT_MAX_BYTES)
    }

    /// Like [`ArtifactStore::open`] with a limit of `max_bytes` per artifact.
    pub fn open_with_limit(data_dir: &Path, max_bytes: u64) -> io::Result<Self> {
        let dir = data_dir.join(SUBDIR);
        std::fs::create_dir_all(&dir)?;
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(TEMP_PREFIX) {
                tracing::info!(path = %entry.path().display(), "deleting an unfinished upload");
                std::fs::remove_file(entry.path())?;
            } else if name.starts_with(STAGING_PREFIX) {
                tracing::info!(path = %entry.path().display(), "deleting an unfinished image push");
                std::fs::remove_dir_all(entry.path())?;
            }
        }
        Ok(Self { dir, max_bytes })
    }

    /// The largest artifact this store accepts, in bytes.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// A new, empty directory beside the artifacts (so that a rename moves a file in) for
    /// one image push to stage its blobs in. What a crash leaves of it, the next
    /// [`ArtifactStore::open`] deletes.
    pub fn staging(&self) -> io::Result<PathBuf> {
        let dir = self
            .dir
            .join(format!("{STAGING_PREFIX}{:016x}", fastrand::u64(..)));
        std::fs::create_dir(&dir)?;
        Ok(dir)
    }

    /// Where the image store keeps its records: beside the artifacts, in the same data dir.
    pub fn images_dir(&self) -> PathBuf {
        self.sibling_dir("images")
    }

    /// A directory named `name` beside the artifacts, in the same data dir: where the image
    /// and model stores keep their records.
    pub fn sibling_dir(&self, name: &str) -> PathBuf {
        self.dir
            .parent()
            .map_or_else(|| self.dir.join(name), |p| p.join(name))
    }

    /// Moves `staged`, a file whose bytes the caller hashed to `digest` (an image push's
    /// checked blob), into the store; false if the store had it already (a layer two images
    /// share), and then `staged` is deleted. Call [`ArtifactStore::sync`] once after a batch.
    pub async fn adopt(&self, staged: &Path, digest: &Digest) -> io::Result<bool> {
        let target = self.file(digest);
        match tokio::fs::metadata(&target).await {
            Ok(_) => {
                tokio::fs::remove_file(staged).await?;
                Ok(false)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                tokio::fs::rename(staged, &target).await?;
                Ok(true)
            }
            Err(e) => Err(e),
        }
    }

    /// Makes the renames of [`ArtifactStore::adopt`] durable.
    pub async fn sync(&self) -> io::Result<()> {
        sync_dir(&self.dir).await
    }

    fn file(&self, digest: &Digest) -> PathBuf {
        self.dir.join(to_hex(digest))
    }

    /// Starts an upload. Write the bytes with [`Upload::write`], then [`Upload::finish`]; an
    /// upload dropped before it finishes leaves nothing behind.
    pub async fn begin(&self, expected: Option<Digest>) -> Result<Upload, PutError> {
        let temp = self
            .dir
            .join(format!("{TEMP_PREFIX}{:016x}", fastrand::u64(..)));
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)
            .await?;
        Ok(Upload {
            file: Some(BufWriter::with_capacity(WRITE_BUFFER_BYTES, file)),
            temp,
            dir: self.dir.clone(),
            hasher: ring::digest::Context::new(&ring::digest::SHA256),
            size: 0,
            max_bytes: self.max_bytes,
            expected,
            done: false,
        })
    }

    /// Stores everything `reader` yields. If `expected` is given and the bytes hash to
    /// something else, nothing is stored.
    pub async fn put<R: AsyncRead + Unpin>(
        &self,
        mut reader: R,
        expected: Option<Digest>,
    ) -> Result<Stored, PutError> {
        let mut upload = self.begin(expected).await?;
        let mut buf = vec![0u8; CHUNK_BYTES];
        loop {
            let n = reader.read(&mut buf).await.map_err(PutError::Source)?;
            if n == 0 {
                break;
            }
            upload.write(&buf[..n]).await?;
        }
        upload.finish().await
    }

    /// The artifact positioned at `offset`, and its whole size.
    pub async fn open_at(
        &self,
        digest: &Digest,
        offset: u64,
    ) -> Result<(tokio::fs::File, u64), OpenError> {
        let mut file = match tokio::fs::File::open(self.file(digest)).await {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(OpenError::NotFound),
            Err(e) => return Err(e.into()),
        };
        let size = file.metadata().await?.len();
        if offset > size {
            return Err(OpenError::BadOffset { size });
        }
        file.seek(io::SeekFrom::Start(offset)).await?;
        Ok((file, size))
    }

    /// The artifact's size, `None` if the store does not have it.
    pub async fn size(&self, digest: &Digest) -> io::Result<Option<u64>> {
        match tokio::fs::metadata(self.file(digest)).await {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every stored artifact, ordered by digest.
    pub async fn list(&self) -> io::Result<Vec<ArtifactInfo>> {
        let mut out = Vec::new();
        let mut entries = tokio::fs::read_dir(&self.dir).await?;
        while let Some(entry) = entries.next_entry().await? {
            let name = entry.file_name();
            let Some(digest) = name.to_str().and_then(from_hex) else {
                continue;
            };
            // Only names we wrote: lowercase.
            if name.to_str() != Some(to_hex(&digest).as_str()) {
                continue;
            }
            match entry.metadata().await {
                Ok(m) if m.is_file() => out.push(ArtifactInfo {
                    digest,
                    size: m.len(),
                }),
                Ok(_) => {}
                // Deleted between the listing and now.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        out.sort();
        Ok(out)
    }

    /// Deletes the artifact; false if the store did not have it. A node fetching it at the
    /// moment keeps reading the open file.
    pub async fn delete(&self, digest: &Digest) -> io::Result<bool> {
        match tokio::fs::remove_file(self.file(digest)).await {
            Ok(()) => {
                sync_dir(&self.dir).await?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// An upload in progress: a temporary file and the running hash. Dropping it before
/// [`Upload::finish`] succeeds deletes the temporary file.
pub struct Upload {
    file: Option<BufWriter<tokio::fs::File>>,
    temp: PathBuf,
    dir: PathBuf,
    hasher: ring::digest::Context,
    size: u64,
    max_bytes: u64,
    expected: Option<Digest>,
    done: bool,
}

impl std::fmt::Debug for Upload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upload")
            .field("temp", &self.temp)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl Upload {
    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends `chunk`. Over the store's limit, nothing more is written and the upload is
    /// dead: drop it.
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), PutError> {
        let new_size = self.size.saturating_add(chunk.len() as u64);
        if new_size > self.max_bytes {
            return Err(PutError::TooLarge {
                max_bytes: self.max_bytes,
            });
        }
        let Some(file) = self.file.as_mut() else {
            return Err(PutError::Io(io::Error::other("upload already finished")));
        };
        file.write_all(chunk).await?;
        self.hasher.update(chunk);
        self.size = new_size;
        Ok(())
    }

    /// Flushes the bytes to disk, checks the digest and stores the artifact under it.
    pub async fn finish(mut self) -> Result<Stored, PutError> {
        let Some(mut file) = self.file.take() else {
            return Err(PutError::Io(io::Error::other("upload already finished")));
        };
        file.flush().await?;
        file.get_mut().sync_all().await?;
        drop(file);
        let mut digest = [0u8; 32];
        digest.copy_from_slice(self.hasher.clone().finish().as_ref());
        if let Some(expected) = self.expected
            && expected != digest
        {
            return Err(PutError::DigestMismatch {
                expected,
                actual: digest,
            });
        }
        let target = self.dir.join(to_hex(&digest));
        let created = match tokio::fs::metadata(&target).await {
            Ok(_) => {
                // Same name, same bytes: keep the one we have.
                tokio::fs::remove_file(&self.temp).await?;
                false
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                tokio::fs::rename(&self.temp, &target).await?;
                sync_dir(&self.dir).await?;
                true
            }
            Err(e) => return Err(e.into()),
        };
        self.done = true;
        Ok(Stored {
            digest,
            size: self.size,
            created,
        })
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if !self.done {
            // Unlinking a small directory entry; the open file, if any, closes after.
            if let Err(error) = std::fs::remove_file(&self.temp)
                && error.kind() != io::ErrorKind::NotFound
            {
                tracing::warn!(path = %self.temp.display(), %error, "could not delete an abandoned upload");
            }
        }
    }
}

/// Makes a rename or unlink in `dir` durable.
async fn sync_dir(dir: &Path) -> io::Result<()> {
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || std::fs::File::open(&dir)?.sync_all())
        .await
        .map_err(io::Error::other)?
}

// ---------------------------------------------------------------------------------------------
// Serving artifacts to nodes

/// What [`serve_artifact_stream`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// Sent `bytes` bytes, from the requested offset to the end.
    Sent { bytes: u64 },
    /// Told the node the artifact does not exist.
    NotFound,
    /// Told the node its offset is past the end.
    BadOffset { size: u64 },
}

/// Why an artifact stream ended badly.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Our disk failed while opening or reading the artifact. Ours; the stream was reset, so
    /// the node sees a broken transfer and retries from where it got to.
    #[error("reading the artifact: {0}")]
    Local(#[from] io::Error),
    /// The node stopped the stream or the connection went away. Nothing to do: the node
    /// resumes on its next attempt.
    #[error("sending to the node: {0}")]
    Stream(#[from] WriteError),
    /// The stream was already finished or reset when we tried to end it.
    #[error("the stream was already closed")]
    Closed(#[from] quinn::ClosedStream),
}

/// The QUIC application error code we reset an artifact stream with when our disk fails.
pub const RESET_LOCAL_FAILURE: u32 = 1;

/// Answers a node's [`ArtifactRequest`] on `send`: an [`ArtifactReply`] frame, then, after
/// `Sending`, the artifact's bytes from the requested offset to the end, then the end of the
/// stream. Call it once the first frame of a stream the node opened decoded as
/// `StreamOpen::Artifact`.
pub async fn serve_artifact_stream(
    store: &ArtifactStore,
    req: ArtifactRequest,
    send: &mut quinn::SendStream,
) -> Result<Served, ServeError> {
    let (mut file, size) = match store.open_at(&req.digest, req.offset).await {
        Ok(opened) => opened,
        Err(OpenError::NotFound) => {
            write_msg(send, &ArtifactReply::NotFound).await?;
            send.finish()?;
            return Ok(Served::NotFound);
        }
        Err(OpenError::BadOffset { size }) => {
            write_msg(send, &ArtifactReply::BadOffset { size }).await?;
            send.finish()?;
            return Ok(Served::BadOffset { size });
        }
        Err(OpenError::Io(e)) => {
            let _ = send.reset(RESET_LOCAL_FAILURE.into());
            return Err(e.into());
        }
    };
    write_msg(
        send,
        &ArtifactReply::Sending {
            size,
            offset: req.offset,
        },
    )
    .await?;
    let want = size - req.offset;
    let mut sent = 0u64;
    let mut buf = vec![0u8; CHUNK_BYTES];
    while sent < want {
        let n = match file.read(&mut buf).await {
            Ok(0) => {
                let _ = send.reset(RESET_LOCAL_FAILURE.into());
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the artifact file is shorter than when it was opened",
                )
                .into());
            }
            Ok(n) => n,
            Err(e) => {
                let _ = send.reset(RESET_LOCAL_FAILURE.into());
                return Err(e.into());
            }
        };
        // Invariant: the remainder fits usize whenever it is below `n`.
        let n = usize::try_from(want - sent).map_or(n, |left| left.min(n));
        send.write_all(&buf[..n])
            .await
            .map_err(|e| ServeError::Stream(WriteError::Stream(e)))?;
        sent += n as u64;
    }
    send.finish()?;
    Ok(Served::Sent { bytes: sent })
}
