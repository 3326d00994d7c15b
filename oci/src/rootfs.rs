//! A container's root filesystem assembled from unpacked layers, lowest first, with the
//! OCI whiteout rules applied.
//!
//! Regular files are hard-linked from the layer cache (copied only when the cache is on
//! another filesystem), so an image's root filesystem costs directories and links, and a
//! layer shared by two images is stored once. The price is that a root filesystem shares
//! inodes with the cache: it must be mounted read-only (or under an overlay) and never
//! written in place, or every image using the layer would change. [`Files::Copied`] makes
//! a root of its own files instead, which may be written: what a kernel without overlayfs
//! needs for a container's writable layer.
//!
//! Assembly never follows a symlink in either tree: it lists directories, reads links as
//! links, and replaces whatever is at a destination path rather than writing through it. It
//! builds in `DEST.partial-<random>` and renames on success, so a crash never leaves a half
//! root filesystem under `DEST`. Whiteout markers (`.wh.NAME`, `.wh..wh..opq`) are applied,
//! never copied.

use crate::partial::{PartialDir, PartialError};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::{self, DirBuilder, File, Metadata, OpenOptions, Permissions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
const AUFS_META_PREFIX: &[u8] = b".wh..wh.";

/// What an assembled root filesystem holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RootfsSummary {
    /// Regular files placed (hard-linked or copied), counting those a higher layer
    /// replaced.
    pub files: u64,
    /// Of those, files copied: asked for, or the layer was on another filesystem.
    pub copied: u64,
    /// Directories created.
    pub dirs: u64,
    /// Symlinks created.
    pub symlinks: u64,
    /// Paths removed by whiteouts and opaque directories.
    pub whited_out: u64,
}

/// Why a root filesystem could not be assembled.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// The destination already exists.
    #[error("{} already exists", dest.display())]
    DestinationExists { dest: PathBuf },
    /// The destination cannot be created or renamed into place.
    #[error("cannot create {}: {source}", dest.display())]
    Destination {
        dest: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A layer path is not a directory (or does not exist).
    #[error("layer {} is not an unpacked layer directory", layer.display())]
    NotALayer { layer: PathBuf },
    /// Reading a layer failed; `path` is relative to the layer, truncated.
    #[error("cannot read {path:?} in layer {}: {source}", layer.display())]
    Read {
        layer: PathBuf,
        path: String,
        #[source]
        source: io::Error,
    },
    /// A layer holds something unpacking never creates (a device, FIFO or socket): the
    /// directory was not made by [`crate::layer::unpack`].
    #[error("layer {} holds {path:?}, which is not a file, directory or symlink", layer.display())]
    UnsupportedFile { layer: PathBuf, path: String },
    /// A whiteout that hides nothing (`.wh.`) or names `.` or `..`.
    #[error("layer {} has a malformed whiteout {path:?}", layer.display())]
    BadWhiteout { layer: PathBuf, path: String },
    /// Writing the root filesystem failed; `path` is relative to it, truncated.
    #[error("cannot write {path:?}: {source}")]
    Write {
        path: String,
        #[source]
        source: io::Error,
    },
}

/// How the regular files of the layers reach a root filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Files {
    /// Hard links to the layer's files (copies across filesystems): the root must never
    /// be written in place.
    #[default]
    Linked,
    /// Copies: the root is its own, and writing it changes no layer.
    Copied,
}

/// Merges unpacked layer directories (lowest first) into `dest`, which must not exist, with
/// hard links to the layers' files.
pub fn assemble(layers: &[&Path], dest: &Path) -> Result<RootfsSummary, RootfsError> {
    assemble_with(layers, dest, Files::Linked)
}

/// [`assemble`], with the regular files placed as `files` says.
pub fn assemble_with(
    layers: &[&Path],
    dest: &Path,
    files: Files,
) -> Result<RootfsSummary, RootfsError> {
    let destination = |source| RootfsError::Destination {
        dest: dest.to_owned(),
        source,
    };
    let partial = PartialDir::beside(dest).map_err(|e| match e {
        PartialError::Exists => RootfsError::DestinationExists {
            dest: dest.to_owned(),
        },
        PartialError::NoName => destination(io::Error::other("no directory name")),
        PartialError::Io(source) => destination(source),
    })?;
    let as_root = fs::metadata(partial.path()).map_err(destination)?.uid() == 0;
    let mut assembly = Assembly {
        root: partial.path().to_owned(),
        as_root,
        files,
        dirs: BTreeMap::new(),
        summary: RootfsSummary::default(),
    };
    for layer in layers {
        assembly.merge(layer)?;
    }
    assembly.finish()?;
    partial.commit(dest).map_err(destination)?;
    Ok(assembly.summary)
}

/// Owner and mode of a directory, applied once every layer is merged.
#[derive(Debug, Clone, Copy)]
struct DirMeta {
    mode: u32,
    uid: u32,
    gid: u32,
}

impl From<&Metadata> for DirMeta {
    fn from(meta: &Metadata) -> Self {
        Self {
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
        }
    }
}

struct Assembly {
    root: PathBuf,
    as_root: bool,
    files: Files,
    /// Every directory of the result with the metadata of the top-most layer that has it.
    /// Keyed by path relative to the root; removed with the directory.
    dirs: BTreeMap<PathBuf, DirMeta>,
    summary: RootfsSummary,
}

impl Assembly {
    fn merge(&mut self, layer: &Path) -> Result<(), RootfsError> {
        let not_a_layer = || RootfsError::NotALayer {
            layer: layer.to_owned(),
        };
        let top = fs::symlink_metadata(layer).map_err(|_| not_a_layer())?;
        if !top.file_type().is_dir() {
            return Err(not_a_layer());
        }
        self.dirs.insert(PathBuf::new(), DirMeta::from(&top));
        let mut pending = vec![PathBuf::new()];
        while let Some(dir) = pending.pop() {
            self.merge_dir(layer, &dir, &mut pending)?;
        }
        Ok(())
    }

    /// Applies one layer directory: its whiteouts first (they hide what lower layers put
    /// there), then its own entries, which win over anything below.
    fn merge_dir(
        &mut self,
        layer: &Path,
        dir: &Path,
        pending: &mut Vec<PathBuf>,
    ) -> Result<(), RootfsError> {
        let read = |path: &Path, source| RootfsError::Read {
            layer: layer.to_owned(),
            path: crate::shown(&path.to_string_lossy()),
            source,
        };
        let source_dir = layer.join(dir);
        let mut names = Vec::new();
        for entry in fs::read_dir(&source_dir).map_err(|e| read(dir, e))? {
            names.push(entry.map_err(|e| read(dir, e))?.file_name());
        }
        // Deterministic order: the same layers always give the same tree and counts.
        names.sort();

        if names.iter().any(|n| n.as_bytes() == OPAQUE_MARKER) {
            self.empty_dir(dir)?;
        }
        for name in &names {
            let bytes = name.as_bytes();
            if !bytes.starts_with(WHITEOUT_PREFIX) || bytes.starts_with(AUFS_META_PREFIX) {
                continue;
            }
            let hidden = &bytes[WHITEOUT_PREFIX.len()..];
            if matches!(hidden, b"" | b"." | b"..") {
                return Err(RootfsError::BadWhiteout {
                    layer: layer.to_owned(),
                    path: crate::shown(&dir.join(name).to_string_lossy()),
                });
            }
            let target = dir.join(std::ffi::OsStr::from_bytes(hidden));
            if self.remove(&target)? {
                self.summary.whited_out += 1;
            }
        }

        for name in names {
            if name.as_bytes().starts_with(WHITEOUT_PREFIX) {
                continue;
            }
            let path = dir.join(&name);
            let source = source_dir.join(&name);
            let meta = fs::symlink_metadata(&source).map_err(|e| read(&path, e))?;
            let kind = meta.file_type();
            if kind.is_dir() {
                if !self.is_dir(&path)? {
                    self.remove(&path)?;
                    self.make_dir(&path)?;
                }
                // Lower layers were merged first, so the last write is the top-most's.
                self.dirs.insert(path.clone(), DirMeta::from(&meta));
                pending.push(path);
            } else if kind.is_file() {
                self.remove(&path)?;
                self.place_file(&source, &path, &meta, &read)?;
            } else if kind.is_symlink() {
                let target = fs::read_link(&source).map_err(|e| read(&path, e))?;
                self.remove(&path)?;
                let full = self.root.join(&path);
                let write = self.write_error(&path);
                std::os::unix::fs::symlink(&target, &full).map_err(&write)?;
                if self.as_root {
                    std::os::unix::fs::lchown(&full, Some(meta.uid()), Some(meta.gid()))
                        .map_err(&write)?;
                }
                self.summary.symlinks += 1;
            } else {
                return Err(RootfsError::UnsupportedFile {
                    layer: layer.to_owned(),
                    path: crate::shown(&path.to_string_lossy()),
                });
            }
        }
        Ok(())
    }

    /// Hard-links a layer's file into place; copies it when asked to or when the layer
    /// cache is on another filesystem.
    fn place_file(
        &mut self,
        source: &Path,
        path: &Path,
        meta: &Metadata,
        read: &dyn Fn(&Path, io::Error) -> RootfsError,
    ) -> Result<(), RootfsError> {
        let full = self.root.join(path);
        let write = self.write_error(path);
        self.summary.files += 1;
        if self.files == Files::Linked {
            match fs::hard_link(source, &full) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::CrossesDevices => {}
                Err(e) => return Err(write(e)),
            }
        }
        // `source` was just seen to be a regular file in the layer cache, which only the
        // node writes; `create_new` refuses anything already at `full`.
        let mut from = File::open(source).map_err(|e| read(path, e))?;
        let mut to = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&full)
            .map_err(&write)?;
        io::copy(&mut from, &mut to).map_err(&write)?;
        if self.as_root {
            std::os::unix::fs::fchown(&to, Some(meta.uid()), Some(meta.gid())).map_err(&write)?;
        }
        to.set_permissions(Permissions::from_mode(meta.mode() & 0o7777))
            .map_err(&write)?;
        if let Ok(mtime) = meta.modified() {
            to.set_modified(mtime).map_err(&write)?;
        }
        self.summary.copied += 1;
        Ok(())
    }

    fn write_error(&self, path: &Path) -> impl Fn(io::Error) -> RootfsError + use<> {
        let path = crate::shown(&path.to_string_lossy());
        move |source| RootfsError::Write {
            path: path.clone(),
            source,
        }
    }

    fn is_dir(&self, path: &Path) -> Result<bool, RootfsError> {
        match fs::symlink_metadata(self.root.join(path)) {
            Ok(meta) => Ok(meta.file_type().is_dir()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(self.write_error(path)(e)),
        }
    }

    fn make_dir(&mut self, path: &Path) -> Result<(), RootfsError> {
        // Owner-writable while assembling; the layer's mode is applied at the end.
        DirBuilder::new()
            .mode(0o700)
            .create(self.root.join(path))
            .map_err(self.write_error(path))?;
        self.summary.dirs += 1;
        Ok(())
    }

    /// Removes whatever is at `path` (a link is unlinked, never followed); `false` when
    /// nothing was there.
    fn remove(&mut self, path: &Path) -> Result<bool, RootfsError> {
        let full = self.root.join(path);
        let write = self.write_error(path);
        let meta = match fs::symlink_metadata(&full) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(write(e)),
        };
        if meta.file_type().is_dir() {
            fs::remove_dir_all(&full).map_err(&write)?;
            self.dirs.retain(|key, _| !key.starts_with(path));
        } else {
            fs::remove_file(&full).map_err(&write)?;
        }
        Ok(true)
    }

    /// An opaque directory: everything lower layers put in it goes.
    fn empty_dir(&mut self, dir: &Path) -> Result<(), RootfsError> {
        let full = self.root.join(dir);
        let write = self.write_error(dir);
        let mut names = Vec::<OsString>::new();
        for entry in fs::read_dir(&full).map_err(&write)? {
            names.push(entry.map_err(&write)?.file_name());
        }
        for name in names {
            if self.remove(&dir.join(name))? {
                self.summary.whited_out += 1;
            }
        }
        Ok(())
    }

    /// Every directory gets the top-most layer's owner and mode, deepest first (so a
    /// read-only directory is closed only after its children are done), the root last.
    fn finish(&self) -> Result<(), RootfsError> {
        for (path, meta) in self.dirs.iter().rev() {
            let full = self.root.join(path);
            let write = self.write_error(path);
            let found = fs::symlink_metadata(&full).map_err(&write)?;
            if !found.file_type().is_dir() {
                return Err(write(io::Error::other("expected a directory")));
            }
            if self.as_root {
                std::os::unix::fs::lchown(&full, Some(meta.uid), Some(meta.gid)).map_err(&write)?;
            }
            fs::set_permissions(&full, Permissions::from_mode(meta.mode)).map_err(&write)?;
        }
        Ok(())
    }
}
