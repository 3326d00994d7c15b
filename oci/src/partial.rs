//! A directory built beside its final name and renamed into place only when complete.
//!
//! Unpacked layers and assembled root filesystems are built in `DEST.partial-<random>` and
//! renamed to `DEST` on success, so a crash or an error never leaves a half-built tree under
//! the name callers trust. A leftover `*.partial-*` after a crash is garbage for whoever owns
//! the parent directory to remove. This module must never remove anything it did not
//! create.

use ring::rand::{SecureRandom, SystemRandom};
use std::ffi::OsString;
use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

/// Why a destination cannot be built.
#[derive(Debug)]
pub enum PartialError {
    /// The destination already exists.
    Exists,
    /// The destination has no parent or no final name (`/`, `..`).
    NoName,
    /// Creating the partial directory failed.
    Io(io::Error),
}

/// A partial directory; removed on drop unless [`PartialDir::commit`] renamed it.
#[derive(Debug)]
pub struct PartialDir {
    path: PathBuf,
    committed: bool,
}

impl PartialDir {
    /// Creates an empty, owner-only partial directory beside `dest`, which must not exist.
    pub fn beside(dest: &Path) -> Result<Self, PartialError> {
        match fs::symlink_metadata(dest) {
            Ok(_) => return Err(PartialError::Exists),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(PartialError::Io(e)),
        }
        let (Some(parent), Some(name)) = (dest.parent(), dest.file_name()) else {
            return Err(PartialError::NoName);
        };
        let random = SystemRandom::new();
        // A clash with a leftover of a crashed run is astronomically unlikely; retry a
        // few times rather than loop on a broken random source.
        let mut last = None;
        for _ in 0..4 {
            let mut suffix = [0u8; 8];
            random
                .fill(&mut suffix)
                .map_err(|_| PartialError::Io(io::Error::other("no system randomness")))?;
            let mut partial: OsString = name.to_owned();
            partial.push(".partial-");
            partial.push(edge_proto::digest::encode_hex(&suffix));
            let path = parent.join(partial);
            match DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => {
                    return Ok(Self {
                        path,
                        committed: false,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => return Err(PartialError::Io(e)),
            }
        }
        Err(PartialError::Io(last.unwrap_or_else(|| {
            io::Error::other("no free partial name")
        })))
    }

    /// Where the tree is being built.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Renames the partial directory to `dest`. Rename onto an existing empty directory
    /// would succeed on Linux; callers check `dest` is absent when they start, and this
    /// crate is the only writer of its destinations.
    pub fn commit(mut self, dest: &Path) -> io::Result<()> {
        fs::rename(&self.path, dest)?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for PartialDir {
    fn drop(&mut self) {
        if !self.committed {
            // `remove_dir_all` never follows symlinks, so a link the layer planted is
            // removed, not its target. A failure here leaves garbage, never a half tree
            // under the final name.
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}
