//! The staging directory of one import: blobs written as they stream in, each under the hex
//! of its own sha256, and removed again unless the import succeeds and references them.
//!
//! It never keeps a blob under a name its content does not hash to (a blob is written to
//! `.incoming` and renamed once hashed), and it never removes a file it did not write.

use crate::digest::{Digest, HashingWriter};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Where a blob is written while it streams in and before its digest is known.
const INCOMING: &str = ".incoming";

/// Why staging a blob failed.
#[derive(Debug)]
pub enum StageError {
    /// Reading the blob's bytes from the archive failed.
    Read(io::Error),
    /// Writing to the staging directory failed.
    Write(PathBuf, io::Error),
    /// The stream ended before the blob's declared length.
    Truncated,
    /// The content does not hash to the digest its name promised.
    Mismatch { actual: Digest },
}

#[derive(Debug)]
pub struct Staging {
    dir: PathBuf,
    /// Every blob staged: its digest and size.
    blobs: BTreeMap<Digest, u64>,
    /// Once the import succeeded, what it kept stays.
    committed: bool,
}

impl Staging {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
            blobs: BTreeMap::new(),
            committed: false,
        }
    }

    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.dir.join(digest.hex())
    }

    pub fn size(&self, digest: &Digest) -> Option<u64> {
        self.blobs.get(digest).copied()
    }

    pub fn open(&self, digest: &Digest) -> io::Result<File> {
        File::open(self.path(digest))
    }

    /// Streams `data` (`len` bytes) into the staging directory, hashing it; it lands under
    /// its digest only when that is `expected` (if given). Returns its digest.
    pub fn stage(
        &mut self,
        data: &mut dyn Read,
        len: u64,
        expected: Option<Digest>,
    ) -> Result<Digest, StageError> {
        let incoming = self.dir.join(INCOMING);
        let write = |e| StageError::Write(incoming.clone(), e);
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&incoming)
            .map_err(write)?;
        let mut writer = HashingWriter::new(file);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = data.read(&mut buf).map_err(StageError::Read)?;
            if n == 0 {
                break;
            }
            writer.write_all(&buf[..n]).map_err(write)?;
        }
        let (digest, size, _file) = writer.finish();
        // A short read is a truncated upload, not a lying blob: say so.
        if size != len {
            let _ = fs::remove_file(&incoming);
            return Err(StageError::Truncated);
        }
        if expected.is_some_and(|e| e != digest) {
            let _ = fs::remove_file(&incoming);
            return Err(StageError::Mismatch { actual: digest });
        }
        let path = self.path(&digest);
        fs::rename(&incoming, &path).map_err(|e| StageError::Write(path, e))?;
        self.blobs.insert(digest, size);
        Ok(digest)
    }

    /// Stages bytes this crate made (a synthesised index or manifest).
    pub fn put(&mut self, bytes: &[u8]) -> Result<Digest, StageError> {
        let mut data = bytes;
        self.stage(&mut data, bytes.len() as u64, None)
    }

    /// Keeps exactly `keep` and commits: every other blob staged is removed.
    pub fn commit(mut self, keep: &BTreeSet<Digest>) -> Result<(), StageError> {
        let unused: Vec<Digest> = self
            .blobs
            .keys()
            .filter(|d| !keep.contains(d))
            .copied()
            .collect();
        for digest in unused {
            let path = self.path(&digest);
            fs::remove_file(&path).map_err(|e| StageError::Write(path, e))?;
            self.blobs.remove(&digest);
        }
        self.committed = true;
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        // A failed import keeps nothing: the caller can retry into the same directory.
        let _ = fs::remove_file(self.dir.join(INCOMING));
        for digest in self.blobs.keys() {
            let _ = fs::remove_file(self.path(digest));
        }
    }
}
