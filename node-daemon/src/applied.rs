//! What the node admitted, kept across a daemon restart or a reboot, so that the hello of
//! its next session can say what it holds (see `node_core::sync`) and the orchestrator
//! sends only what changed, even when the node comes back with no session in between.
//!
//! `DATA_DIR/workloads/applied`: each admitted workload's generation, artifact and the
//! limits admission reserved for it, in postcard (the wire's encoding: nothing more to link).
//! Written whole, atomically (0600 in the 0700 `workloads/` directory), after each
//! admission and unassignment. Read with a size bound; a missing or damaged file is an
//! empty one: the orchestrator then assigns those workloads again, which the node takes
//! without restarting what runs.

use crate::artifacts::Digest;
use crate::private_fs;
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tracing::warn;

const FILE: &str = "applied";
/// Far more than the most workloads a node lists: anything bigger is damage.
const MAX_FILE_BYTES: u64 = 1 << 20;

/// One admitted workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub generation: u64,
    pub artifact: Digest,
    pub memory_bytes: u64,
    pub disk_bytes: u64,
}

/// The file, and a lock that keeps its writes in the order their contents were taken.
#[derive(Debug, Clone)]
pub struct AppliedFile {
    path: PathBuf,
    writing: Arc<Mutex<()>>,
}

impl AppliedFile {
    /// The file under `data_dir/workloads/` (which the supervisor's store made).
    pub fn new(data_dir: &Path) -> Self {
        Self {
            path: data_dir.join("workloads").join(FILE),
            writing: Arc::new(Mutex::new(())),
        }
    }

    /// What was stored; empty if nothing was, or if it cannot be read (logged).
    pub fn load(&self) -> Vec<(String, Entry)> {
        let read = std::fs::File::open(&self.path).and_then(|f| {
            let mut bytes = Vec::new();
            f.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes)?;
            Ok(bytes)
        });
        match read {
            Ok(bytes) if bytes.len() as u64 > MAX_FILE_BYTES => {
                warn!(path = %self.path.display(), "applied workloads file too large; ignored");
                Vec::new()
            }
            Ok(bytes) => match postcard::take_from_bytes(&bytes) {
                Ok((entries, [])) => entries,
                _ => {
                    warn!(path = %self.path.display(), "applied workloads file damaged; ignored");
                    Vec::new()
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(error) => {
                warn!(path = %self.path.display(), %error, "cannot read the applied workloads");
                Vec::new()
            }
        }
    }

    /// Stores what `take` returns, taken under the write lock so that a later write never
    /// lands before an earlier one. A failure is logged: the next hello may then miss a
    /// workload, and the orchestrator's answer assigns it again.
    pub fn store(&self, take: impl FnOnce() -> Vec<(String, Entry)>) {
        let _writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        let entries = take();
        let written = postcard::to_allocvec(&entries)
            .map_err(std::io::Error::other)
            .and_then(|bytes| private_fs::write_atomic(&self.path, &bytes));
        if let Err(error) = written {
            warn!(path = %self.path.display(), %error, "cannot store the applied workloads");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(generation: u64) -> Entry {
        Entry {
            generation,
            artifact: [0xab; 32],
            memory_bytes: 1 << 20,
            disk_bytes: 0,
        }
    }

    #[test]
    fn what_is_stored_is_loaded_and_damage_is_an_empty_file() {
        let dir = tempfile::tempdir().expect("a temporary dir");
        let file = AppliedFile::new(dir.path());
        assert!(file.load().is_empty());
        let stored = vec![("web".to_owned(), entry(3))];
        file.store(|| stored.clone());
        assert_eq!(file.load(), stored);
        use std::os::unix::fs::PermissionsExt;
        let path = dir.path().join("workloads").join(FILE);
        let mode = std::fs::metadata(&path)
            .expect("stored")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        let mut whole = std::fs::read(&path).expect("stored");
        let cut = whole[..whole.len() - 1].to_vec();
        whole.push(0);
        // Cut short, a trailing byte, a count far past what follows, nothing at all.
        for bad in [cut, whole, vec![0xff, 0xff, 0xff, 0xff, 0x0f], Vec::new()] {
            std::fs::write(&path, &bad).expect("written");
            assert!(file.load().is_empty(), "{bad:?}");
        }
        std::fs::write(&path, vec![b' '; MAX_FILE_BYTES as usize + 1]).expect("written");
        assert!(file.load().is_empty());
    }
}
