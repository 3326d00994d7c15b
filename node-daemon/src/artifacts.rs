//! The node's artifact cache: workload executables fetched from the orchestrator over QUIC,
//! verified by sha256, kept under `data_dir/artifacts/<64 hex>` (a directory only the node's
//! user may enter) until no workload needs them.
//!
//! A download goes to `<hex>.part`, appended from where an earlier, cut attempt stopped (the
//! request carries that offset). Only when the whole file is on disk and synced is it hashed;
//! only if the hash is the digest is it made executable and renamed to `<hex>`. So a file
//! named by a digest always holds exactly those bytes, a cut transfer leaves a `.part` the
//! next fetch resumes, and bytes that hash wrong are deleted, never run.
//!
//! This module never executes anything, never trusts the orchestrator's bytes before hashing
//! them, and never deletes a file it did not name. The supervisor runs what [`ArtifactCache::path`]
//! returns; nothing else writes here.

use edge_proto::quic::{ReadError, read_frame, write_msg};
use edge_proto::{ArtifactReply, ArtifactRequest, StreamOpen, decode};
use std::collections::{HashMap, HashSet};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

pub use edge_proto::digest::{Digest, to_hex};
use edge_proto::digest::{from_lower_hex, sha256_reader};

/// How long a transfer may go without a byte before it counts as stalled. QUIC's idle timeout
/// catches a dead link within seconds; this catches a live orchestrator that stopped sending.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Read and hash in pieces of this size: a Pi Zero has little memory to spare.
const CHUNK_BYTES: usize = 64 * 1024;
const PART_SUFFIX: &str = ".part";
/// Mode of a verified artifact: the supervisor runs it, nobody edits it.
const EXECUTABLE_MODE: u32 = 0o755;

/// Who is at fault for a failed fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The orchestrator sent something wrong or lacks the artifact.
    Peer,
    /// This node's disk.
    Local,
    /// The link: a cut, a reset, a lost connection, a stall. Nobody's bug.
    Transient,
}

/// Why a fetch did not produce a verified artifact.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// No stream could be opened: the connection is closed or closing. Transient; fetch again
    /// on the next connection. The `.part` file is kept and resumed.
    #[error("opening an artifact stream: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// The stream broke mid-transfer (reset by the orchestrator, connection lost). Transient;
    /// the bytes received are kept and the next fetch resumes after them.
    #[error("artifact stream: {0}")]
    Stream(String),
    /// Nothing arrived for [`STALL_TIMEOUT`]. Transient; the `.part` file is kept.
    #[error("the artifact stream stalled for {}s", STALL_TIMEOUT.as_secs())]
    Stalled,
    /// The orchestrator ended the stream before the last byte. Transient; the `.part` file
    /// is kept and the next fetch resumes at `have`.
    #[error("the transfer ended at {have} of {size} bytes")]
    Cut { have: u64, size: u64 },
    /// The orchestrator does not have the artifact. Peer; fetching again fails until an
    /// operator pushes it.
    #[error("the orchestrator does not have this artifact")]
    NotFound,
    /// The orchestrator's artifact is not the size the assignment says. Peer; not retryable:
    /// the assignment and the store disagree. Nothing is kept.
    #[error("the orchestrator's artifact is {actual} bytes, the assignment says {expected}")]
    SizeMismatch { expected: u64, actual: u64 },
    /// The bytes received do not hash to the digest. Peer or transfer; the `.part` file is
    /// deleted, nothing is executable, and fetching again starts from 0.
    #[error("the download hashes to {}, not {}", to_hex(actual), to_hex(expected))]
    HashMismatch { expected: Digest, actual: Digest },
    /// The orchestrator broke the artifact protocol (a bad reply, a wrong offset, too many
    /// bytes). Peer; any tainted `.part` is deleted; retry with backoff.
    #[error("artifact protocol: {0}")]
    Protocol(String),
    /// This node's disk failed (read-only, I/O error). Local; retry with backoff.
    #[error("artifact cache: {0}")]
    Local(#[from] io::Error),
    /// The artifact does not fit on the node's disk: `need` bytes were still to be written
    /// and `free` are free (after the disk filled up mid-transfer, what is free once the
    /// `.part` file is deleted). Local; not retryable: fetching again fails the same way, so
    /// the node refuses the assignment and the orchestrator places the instance elsewhere.
    #[error("not enough disk for the artifact: {need} B to write, {free} B free")]
    NoSpace { need: u64, free: u64 },
}

impl FetchError {
    /// Who failed.
    pub fn fault(&self) -> Fault {
        match self {
            Self::Connection(_) | Self::Stream(_) | Self::Stalled | Self::Cut { .. } => {
                Fault::Transient
            }
            Self::NotFound
            | Self::SizeMismatch { .. }
            | Self::HashMismatch { .. }
            | Self::Protocol(_) => Fault::Peer,
            Self::Local(_) | Self::NoSpace { .. } => Fault::Local,
        }
    }

    /// Whether fetching again, unchanged, can succeed.
    pub fn retryable(&self) -> bool {
        !matches!(
            self,
            Self::NotFound | Self::SizeMismatch { .. } | Self::NoSpace { .. }
        )
    }
}

/// What [`ArtifactCache::gc`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Verified artifacts deleted.
    pub artifacts: Vec<Digest>,
    /// Unfinished downloads deleted.
    pub parts: Vec<Digest>,
    pub freed_bytes: u64,
}

/// The cache directory, and which digests are being fetched right now.
#[derive(Debug)]
pub struct ArtifactCache {
    dir: PathBuf,
    /// One lock per digest being fetched: a second fetch of the same digest waits for the
    /// first instead of appending to the same `.part` file.
    fetching: Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>,
}

/// Holds a digest's fetch lock; forgets the lock when nobody else waits for it.
struct InFlight<'a> {
    cache: &'a ArtifactCache,
    digest: Digest,
    _guard: tokio::sync::OwnedMutexGuard<()>,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut fetching = self
            .cache
            .fetching
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // The map's reference and our guard's: nobody waits.
        if fetching
            .get(&self.digest)
            .is_some_and(|lock| Arc::strong_count(lock) <= 2)
        {
            fetching.remove(&self.digest);
        }
    }
}

impl ArtifactCache {
    /// The cache under `data_dir/artifacts`, created if missing.
    pub fn open(data_dir: &Path) -> io::Result<Self> {
        let dir = data_dir.join("artifacts");
        crate::private_fs::own_dir(&dir)?;
        Ok(Self {
            dir,
            fetching: Mutex::new(HashMap::new()),
        })
    }

    /// The directory the cache lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn complete(&self, digest: &Digest) -> PathBuf {
        self.dir.join(to_hex(digest))
    }

    fn part(&self, digest: &Digest) -> PathBuf {
        self.dir.join(format!("{}{PART_SUFFIX}", to_hex(digest)))
    }

    /// The verified, executable artifact, if the cache has it.
    pub fn path(&self, digest: &Digest) -> Option<PathBuf> {
        let path = self.complete(digest);
        std::fs::metadata(&path)
            .is_ok_and(|m| m.is_file())
            .then_some(path)
    }

    /// Bytes still to download for an artifact of `size` bytes: 0 if cached, less what an
    /// unfinished download already has. For admission's disk check.
    pub fn missing_bytes(&self, digest: &Digest, size: u64) -> u64 {
        if self.path(digest).is_some() {
            return 0;
        }
        let have = std::fs::metadata(self.part(digest)).map_or(0, |m| m.len());
        size.saturating_sub(have)
    }

    async fn lock(&self, digest: Digest) -> InFlight<'_> {
        let lock = self
            .fetching
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(digest)
            .or_default()
            .clone();
        InFlight {
            cache: self,
            digest,
            _guard: lock.lock_owned().await,
        }
    }

    /// The verified artifact `digest` of `size` bytes: from the cache, or fetched from the
    /// orchestrator on a new stream of `conn`, resuming an unfinished download. See
    /// [`FetchError`] for what each failure leaves behind and whether to fetch again.
    pub async fn fetch(
        &self,
        conn: &quinn::Connection,
        digest: Digest,
        size: u64,
    ) -> Result<PathBuf, FetchError> {
        let _in_flight = self.lock(digest).await;
        if let Some(path) = self.path(&digest) {
            return Ok(path);
        }
        let part = self.part(&digest);
        let mut have = match tokio::fs::metadata(&part).await {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e.into()),
        };
        if have > size {
            // Longer than the artifact can be: not a prefix of it.
            remove_if_exists(&part).await?;
            have = 0;
        }
        if have < size {
            let need = size - have;
            if let Some(space) = crate::capabilities::disk_space(&self.dir)
                && need > space.free_bytes
            {
                // It cannot fit: what it has only takes room from what can.
                remove_if_exists(&part).await?;
                return Err(FetchError::NoSpace {
                    need,
                    free: space.free_bytes.saturating_add(have),
                });
            }
            match self.download(conn, digest, size, have, &part).await {
                Err(FetchError::Local(e)) if is_disk_full(&e) => {
                    remove_if_exists(&part).await?;
                    let free = crate::capabilities::disk_space(&self.dir)
                        .map_or(0, |space| space.free_bytes);
                    return Err(FetchError::NoSpace { need, free });
                }
                other => other?,
            }
        }
        self.commit(digest, size, &part).await
    }

    /// Appends the artifact's bytes from `have` to `part`.
    async fn download(
        &self,
        conn: &quinn::Connection,
        digest: Digest,
        size: u64,
        mut have: u64,
        part: &Path,
    ) -> Result<(), FetchError> {
        let (mut send, mut recv) = conn.open_bi().await?;
        let request = StreamOpen::Artifact(ArtifactRequest {
            digest,
            offset: have,
        });
        write_msg(&mut send, &request)
            .await
            .map_err(|e| FetchError::Stream(e.to_string()))?;
        // Nothing more to say on this stream.
        let _ = send.finish();
        let reply = match tokio::time::timeout(STALL_TIMEOUT, read_frame(&mut recv)).await {
            Err(_) => return Err(FetchError::Stalled),
            Ok(Err(ReadError::Decode(e))) => return Err(FetchError::Protocol(e.to_string())),
            Ok(Err(ReadError::Stream(e))) => return Err(FetchError::Stream(e.to_string())),
            Ok(Ok(None)) => {
                return Err(FetchError::Protocol(
                    "the stream ended without a reply".into(),
                ));
            }
            Ok(Ok(Some(body))) => decode::<ArtifactReply>(&body)
                .map_err(|e| FetchError::Protocol(format!("reply: {e}")))?,
        };
        match reply {
            ArtifactReply::Sending {
                size: theirs,
                offset,
            } => {
                if theirs != size {
                    remove_if_exists(part).await?;
                    return Err(FetchError::SizeMismatch {
                        expected: size,
                        actual: theirs,
                    });
                }
                if offset != have {
                    return Err(FetchError::Protocol(format!(
                        "asked for offset {have}, the reply says {offset}"
                    )));
                }
            }
            ArtifactReply::NotFound => return Err(FetchError::NotFound),
            ArtifactReply::BadOffset { size: theirs } => {
                remove_if_exists(part).await?;
                return Err(if theirs == size {
                    FetchError::Protocol(format!("offset {have} of {size} refused"))
                } else {
                    FetchError::SizeMismatch {
                        expected: size,
                        actual: theirs,
                    }
                });
            }
        }

        // 0600, and made so if an older node left it readable by all.
        let mut file = tokio::fs::File::from_std(crate::private_fs::open(
            part,
            std::fs::OpenOptions::new().create(true).append(true),
        )?);
        let mut buf = vec![0u8; CHUNK_BYTES];
        let outcome = loop {
            let n = match tokio::time::timeout(STALL_TIMEOUT, recv.read(&mut buf)).await {
                Err(_) => break Err(FetchError::Stalled),
                Ok(Err(e)) => break Err(FetchError::Stream(e.to_string())),
                Ok(Ok(None)) => break Ok(()),
                Ok(Ok(Some(n))) => n,
            };
            if have + n as u64 > size {
                drop(file);
                remove_if_exists(part).await?;
                return Err(FetchError::Protocol(format!(
                    "the orchestrator sent more than the artifact's {size} bytes"
                )));
            }
            if let Err(e) = file.write_all(&buf[..n]).await {
                // Closed here, before the caller deletes the part: a tokio file dropped after a
                // failed write closes later, on a blocking thread, and a full disk stays full
                // until then.
                drop(file.into_std().await);
                return Err(e.into());
            }
            have += n as u64;
        };
        // Keep what arrived, even after a cut: the next fetch resumes after it.
        file.flush().await?;
        file.sync_all().await?;
        outcome?;
        if have < size {
            return Err(FetchError::Cut { have, size });
        }
        Ok(())
    }

    /// Hashes the whole `.part`; if it is the artifact, makes it executable and renames it to
    /// its digest. Otherwise deletes it.
    async fn commit(&self, digest: Digest, size: u64, part: &Path) -> Result<PathBuf, FetchError> {
        let path = part.to_owned();
        let (actual, len) =
            tokio::task::spawn_blocking(move || sha256_reader(std::fs::File::open(&path)?))
                .await
                .map_err(io::Error::other)??;
        if len != size || actual != digest {
            remove_if_exists(part).await?;
            return Err(FetchError::HashMismatch {
                expected: digest,
                actual,
            });
        }
        tokio::fs::set_permissions(part, std::fs::Permissions::from_mode(EXECUTABLE_MODE)).await?;
        let done = self.complete(&digest);
        tokio::fs::rename(part, &done).await?;
        sync_dir(&self.dir).await?;
        tracing::info!(artifact = %to_hex(&digest), size, "artifact verified and cached");
        Ok(done)
    }

    /// Deletes every cached artifact and unfinished download whose digest is not in `keep`,
    /// except those being fetched right now. Files the cache did not name are left alone.
    pub async fn gc(&self, keep: &HashSet<Digest>) -> io::Result<GcReport> {
        let mut report = GcReport::default();
        let mut entries = tokio::fs::read_dir(&self.dir).await?;
        while let Some(entry) = entries.next_entry().await? {
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                continue;
            };
            let (digest, is_part) = match name.strip_suffix(PART_SUFFIX) {
                Some(stem) => (from_lower_hex(stem), true),
                None => (from_lower_hex(name), false),
            };
            let Some(digest) = digest else {
                continue;
            };
            if keep.contains(&digest)
                || self
                    .fetching
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .contains_key(&digest)
            {
                continue;
            }
            let len = match entry.metadata().await {
                Ok(m) if m.is_file() => m.len(),
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            if !remove_if_exists(&entry.path()).await? {
                continue;
            }
            report.freed_bytes += len;
            if is_part {
                report.parts.push(digest);
            } else {
                report.artifacts.push(digest);
            }
        }
        if !(report.artifacts.is_empty() && report.parts.is_empty()) {
            sync_dir(&self.dir).await?;
            tracing::info!(
                artifacts = report.artifacts.len(),
                parts = report.parts.len(),
                freed_bytes = report.freed_bytes,
                "artifact cache collected"
            );
        }
        Ok(report)
    }
}

/// Whether `e` says the disk (or the user's quota on it) is full.
fn is_disk_full(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

/// Deletes `path`; false if it was not there.
async fn remove_if_exists(path: &Path) -> io::Result<bool> {
    match tokio::fs::remove_file(path).await {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Makes a rename or unlink in `dir` durable.
async fn sync_dir(dir: &Path) -> io::Result<()> {
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || std::fs::File::open(&dir)?.sync_all())
        .await
        .map_err(io::Error::other)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_say_who_failed_and_whether_to_retry() {
        let cut = FetchError::Cut { have: 1, size: 2 };
        assert_eq!((cut.fault(), cut.retryable()), (Fault::Transient, true));
        let missing = FetchError::NotFound;
        assert_eq!((missing.fault(), missing.retryable()), (Fault::Peer, false));
        let bad = FetchError::HashMismatch {
            expected: [0; 32],
            actual: [1; 32],
        };
        assert_eq!((bad.fault(), bad.retryable()), (Fault::Peer, true));
        let disk = FetchError::Local(io::Error::other("read-only"));
        assert_eq!(disk.fault(), Fault::Local);
        let full = FetchError::NoSpace { need: 2, free: 1 };
        assert_eq!((full.fault(), full.retryable()), (Fault::Local, false));
        assert!(is_disk_full(&io::Error::from_raw_os_error(28)), "ENOSPC");
        assert!(is_disk_full(&io::Error::from_raw_os_error(122)), "EDQUOT");
        assert!(!is_disk_full(&io::Error::from_raw_os_error(30)), "EROFS");
    }
}
