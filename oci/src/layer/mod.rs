//! Layers: a tar stream (plain or gzip) checked entry by entry, then either only scanned
//! (the orchestrator, on import) or unpacked into a directory of its own (the node's layer
//! cache).
//!
//! Both go through one checker, so a layer the orchestrator admitted is one the node can
//! unpack, and a hostile layer is refused by both with the same reason. Refused: a path
//! that is absolute or climbs with `..`; a relative symlink whose target, resolved from the
//! link's directory, climbs above the root; an entry whose path goes through a symlink the
//! layer created; a hard link to anything but a regular file the layer wrote earlier;
//! devices and FIFOs; setuid and setgid files unless allowed; unknown entry types and GNU
//! sparse files; extension headers over 64 KiB or contradicting their entry; too many
//! entries, too many bytes, or a compressed stream expanding past its ratio.
//!
//! Absolute symlinks (`bin/sh -> /bin/busybox`) are normal in real images and kept as they
//! are: the kernel resolves them inside the container's root, and nothing here (nor in
//! [`crate::rootfs`]) ever follows a symlink, so where one points cannot matter to the host.
//!
//! FIFOs are refused: creating one needs `mkfifo`, which std does not offer without unsafe
//! code or a libc binding; images almost never ship one (a program makes its FIFOs at run
//! time), and a clear refusal beats a silently missing file.
//!
//! Unpacking must never write outside its destination, never follow a symlink, and never
//! leave a half-unpacked layer under the destination's name: it builds in
//! `DEST.partial-<random>` and renames on success.

mod check;
mod gzip;
mod stream;

use crate::digest::Digest;
use crate::entries::{self, Failure};
use crate::image::Compression;
use crate::partial::{PartialDir, PartialError};
use check::{Action, Admitted, Checker, IMPLICIT_DIR, Meta, Node};
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use stream::{Meter, Overrun};

/// How much a layer may hold, and whether it may hold setuid files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerLimits {
    /// Bytes of the decompressed tar stream (the files' contents plus tar headers), so the
    /// files unpacked never exceed it. Decompression stops at this many bytes.
    pub max_unpacked_bytes: u64,
    /// Entries in the tar stream, counting every header (directories and links too). The
    /// checker keeps a path per entry in memory, so this also bounds its memory: the paths
    /// together may take 256 bytes per allowed entry (64 MiB by default).
    pub max_entries: u64,
    /// Decompressed bytes per compressed byte, enforced once the stream is past
    /// `ratio_floor_bytes`.
    pub max_ratio: u64,
    /// Decompressed bytes below which the ratio is not enforced: a small layer of very
    /// compressible content is fine.
    pub ratio_floor_bytes: u64,
    /// Whether regular files with the setuid or setgid bit are admitted. Distribution base
    /// images (Debian's `passwd`, `su`, `mount`) carry them; a runtime that sets
    /// `no_new_privileges` makes them inert.
    pub allow_setuid: bool,
}

impl Default for LayerLimits {
    /// 4 GiB unpacked, 250,000 entries (a large `node_modules` layer has ~100,000), a
    /// ratio of 100 past 16 MiB (real layers compress 2-10 times; gzip's ceiling is ~1,000),
    /// setuid refused.
    fn default() -> Self {
        Self {
            max_unpacked_bytes: 4 << 30,
            max_entries: 250_000,
            max_ratio: 100,
            ratio_floor_bytes: 16 << 20,
            allow_setuid: false,
        }
    }
}

/// How to unpack a layer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnpackOptions {
    /// The layer's limits.
    pub limits: LayerLimits,
    /// The config's `diff_id` for this layer: when set, a layer whose tar stream hashes to
    /// anything else is refused and nothing is kept.
    pub expected_diff_id: Option<Digest>,
}

/// What a layer holds, from scanning or unpacking it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerSummary {
    /// The sha256 of the decompressed tar stream: the config's `diff_id` for this layer.
    pub diff_id: Digest,
    /// Length of the decompressed tar stream.
    pub tar_bytes: u64,
    /// Compressed bytes read (equal to `tar_bytes` for a plain layer).
    pub compressed_bytes: u64,
    /// Sum of the regular files' sizes: what unpacking writes.
    pub unpacked_bytes: u64,
    /// Tar entries, every header counted.
    pub entries: u64,
    /// Whether any regular file has the setuid or setgid bit.
    pub has_setuid: bool,
}

/// Why a layer was refused or could not be unpacked. `entry` is the entry's name as the
/// layer spells it, truncated.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// The stream is not a readable tar (truncated, corrupt compression, bad header
    /// checksum), or reading the blob failed.
    #[error("layer is not a readable tar stream: {source}")]
    Read {
        #[source]
        source: io::Error,
    },
    /// The decompressed stream passed `max_unpacked_bytes`; decompression stopped there.
    #[error("layer unpacks to more than {limit} bytes")]
    TooLarge { limit: u64 },
    /// Past the floor, the stream expanded more than `max_ratio` times its compressed size:
    /// a decompression bomb, stopped there.
    #[error("layer expands more than {limit} times its compressed size")]
    RatioExceeded { limit: u64 },
    /// More entries than `max_entries`.
    #[error("layer has more than {limit} entries (at {entry:?})")]
    TooManyEntries { entry: String, limit: u64 },
    /// The entries' paths together are longer than 256 bytes per allowed entry.
    #[error("layer's paths exceed {limit} bytes together (at {entry:?})")]
    PathsTooLong { entry: String, limit: u64 },
    /// A header field (mode, owner, time) is not a number or does not fit.
    #[error("entry {entry:?} has a malformed header: {source}")]
    Header {
        entry: String,
        #[source]
        source: io::Error,
    },
    /// The path starts with `/`.
    #[error("entry {entry:?} has an absolute path")]
    AbsolutePath { entry: String },
    /// The path has a `..` component.
    #[error("entry {entry:?} climbs out with '..'")]
    ParentDirectory { entry: String },
    /// The path is longer than 4096 bytes or has a component longer than 255.
    #[error("entry {entry:?} has a path too long for Linux")]
    PathTooLong { entry: String },
    /// The path holds a NUL byte.
    #[error("entry {entry:?} has a NUL byte in its path")]
    NulInPath { entry: String },
    /// A non-directory entry names the layer's root (`./` as a file or a link).
    #[error("entry {entry:?} would replace the layer root")]
    ReplacesRoot { entry: String },
    /// A directory on the entry's path is a file the layer wrote.
    #[error("entry {entry:?} is under {parent:?}, which is not a directory")]
    ParentNotDirectory { entry: String, parent: String },
    /// A directory on the entry's path is a symlink the layer created: writing the entry
    /// would follow it (the classic `etc -> /etc` then `etc/passwd`).
    #[error("entry {entry:?} goes through the symlink {link:?}")]
    ThroughSymlink { entry: String, link: String },
    /// A relative symlink whose target, resolved from the link's directory, climbs above
    /// the layer root.
    #[error("symlink {entry:?} points above the layer root ({target:?})")]
    SymlinkEscapes { entry: String, target: String },
    /// A symlink with an empty target, a NUL in it, or one longer than 4096 bytes.
    #[error("symlink {entry:?} has an invalid target {target:?}")]
    BadLinkTarget { entry: String, target: String },
    /// A hard link whose target is not a clean relative path to a regular file written
    /// earlier in this layer.
    #[error(
        "hard link {entry:?} must point to a regular file written earlier in the layer, not {target:?}"
    )]
    HardLink { entry: String, target: String },
    /// A character or block device: a container gets its devices from the runtime, and a
    /// device node in an image is a door to the host's hardware.
    #[error("entry {entry:?} is a device node")]
    Device { entry: String },
    /// A FIFO (see the module docs for why they are refused).
    #[error("entry {entry:?} is a FIFO")]
    Fifo { entry: String },
    /// A regular file with the setuid or setgid bit, and setuid files are not allowed.
    #[error("entry {entry:?} is setuid or setgid (mode {mode:o})")]
    Setuid { entry: String, mode: u32 },
    /// An entry type this crate does not unpack (GNU sparse files, multi-volume parts,
    /// vendor types).
    #[error("entry {entry:?} has unsupported type {:?}", char::from(*kind))]
    UnsupportedEntryType { entry: String, kind: u8 },
    /// A whiteout marker that is not a plain file, hides nothing (`.wh.`, `.wh..`), or is
    /// used as a directory.
    #[error("entry {entry:?} is a malformed whiteout")]
    BadWhiteout { entry: String },
    /// The tar stream does not hash to the expected diff_id.
    #[error("layer's diff_id is {actual}, expected {expected}")]
    DiffIdMismatch { expected: Digest, actual: Digest },
    /// The destination already exists: a layer is unpacked once, into a new directory.
    #[error("{} already exists", dest.display())]
    DestinationExists { dest: PathBuf },
    /// The destination cannot be created or renamed into place.
    #[error("cannot create {}: {source}", dest.display())]
    Destination {
        dest: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Writing an admitted entry failed (disk full, permissions).
    #[error("cannot write entry {entry:?}: {source}")]
    Write {
        entry: String,
        #[source]
        source: io::Error,
    },
}

/// Checks a layer without writing anything: every entry is judged as [`unpack`] would
/// judge it, and the stream is hashed for its diff_id.
pub fn scan(
    reader: impl Read,
    compression: Compression,
    limits: &LayerLimits,
) -> Result<LayerSummary, LayerError> {
    walk(reader, compression, limits, |_, _| Ok(()))
}

/// Unpacks a layer into `dest`, which must not exist. The layer is built in a sibling
/// `DEST.partial-<random>` and renamed to `dest` only when every entry was admitted and
/// written (and the diff_id matched, when given); on any error the partial directory is
/// removed. File owners are set from the layer when running as root, and left to the
/// current user otherwise. Whiteouts are kept as empty marker files for
/// [`crate::rootfs::assemble`].
pub fn unpack(
    reader: impl Read,
    compression: Compression,
    dest: &Path,
    options: &UnpackOptions,
) -> Result<LayerSummary, LayerError> {
    let destination = |source| LayerError::Destination {
        dest: dest.to_owned(),
        source,
    };
    let partial = PartialDir::beside(dest).map_err(|e| match e {
        PartialError::Exists => LayerError::DestinationExists {
            dest: dest.to_owned(),
        },
        PartialError::NoName => destination(io::Error::other("no directory name")),
        PartialError::Io(source) => destination(source),
    })?;
    let mut tree = Tree::new(partial.path()).map_err(destination)?;
    let summary = walk(reader, compression, &options.limits, |admitted, data| {
        tree.apply(admitted, data)
    })?;
    if let Some(expected) = options.expected_diff_id
        && expected != summary.diff_id
    {
        return Err(LayerError::DiffIdMismatch {
            expected,
            actual: summary.diff_id,
        });
    }
    tree.finish()?;
    partial.commit(dest).map_err(destination)?;
    Ok(summary)
}

/// Reads the whole layer through the checker, handing each admitted entry to `apply`.
fn walk<R: Read>(
    reader: R,
    compression: Compression,
    limits: &LayerLimits,
    mut apply: impl FnMut(&Admitted, &mut dyn Read) -> Result<(), LayerError>,
) -> Result<LayerSummary, LayerError> {
    let mut meter = Meter::new(reader, compression, limits);
    let mut checker = Checker::new(limits);
    let read = |source| LayerError::Read { source };
    let outcome = entries::read(&mut meter, |entry, data| {
        let admitted = checker.admit(entry)?;
        apply(&admitted, data)
    });
    let mut result = outcome.map_err(|failure| match failure {
        Failure::Tar(source) => read(source),
        Failure::Visit(error) => error,
    });
    if result.is_ok() {
        // What follows the end-of-archive blocks is part of the diff_id too.
        result = io::copy(&mut meter, &mut io::sink())
            .map(drop)
            .map_err(read);
    }
    // A limit surfaces inside the tar reader as a read error; name it for what it is.
    match meter.overrun() {
        Some(Overrun::Bytes { limit }) => return Err(LayerError::TooLarge { limit }),
        Some(Overrun::Ratio { limit }) => return Err(LayerError::RatioExceeded { limit }),
        None => result?,
    }
    let (diff_id, tar_bytes, compressed_bytes) = meter.finish();
    Ok(LayerSummary {
        diff_id,
        tar_bytes,
        compressed_bytes,
        unpacked_bytes: checker.unpacked_bytes,
        entries: checker.entries,
        has_setuid: checker.has_setuid,
    })
}

/// The partial directory being filled, and the directory metadata applied at the end.
struct Tree {
    root: PathBuf,
    /// Files are chowned to the layer's owners only when running as root.
    as_root: bool,
    /// Directories are created owner-writable and get their own mode last, deepest first:
    /// a read-only directory must still receive the entries under it.
    dirs: BTreeMap<Vec<u8>, Meta>,
}

impl Tree {
    fn new(root: &Path) -> io::Result<Self> {
        // The owner of a directory we just created is our effective uid: root or not,
        // without asking libc.
        let as_root = fs::metadata(root)?.uid() == 0;
        let mut dirs = BTreeMap::new();
        dirs.insert(Vec::new(), IMPLICIT_DIR);
        Ok(Self {
            root: root.to_owned(),
            as_root,
            dirs,
        })
    }

    fn at(&self, path: &[u8]) -> PathBuf {
        self.root.join(OsStr::from_bytes(path))
    }

    fn apply(&mut self, admitted: &Admitted, data: &mut dyn Read) -> Result<(), LayerError> {
        let path = &admitted.path;
        let write = |source| LayerError::Write {
            entry: crate::shown_bytes(path),
            source,
        };
        if let Action::Skip = admitted.action {
            return Ok(());
        }
        if let Action::Root(meta) = admitted.action {
            self.dirs.insert(Vec::new(), meta);
            return Ok(());
        }
        for parent in &admitted.new_parents {
            self.make_dir(parent).map_err(write)?;
            self.dirs.insert(parent.clone(), IMPLICIT_DIR);
        }
        let full = self.at(path);
        // The checker's model says every parent is a directory this unpack made; check the
        // nearest one on disk as well, so that a bug in the model can never turn into a
        // write through a link.
        let parent = full.parent().unwrap_or(&self.root);
        let parent_meta = fs::symlink_metadata(parent).map_err(write)?;
        if !parent_meta.file_type().is_dir() {
            return Err(write(io::Error::other("parent is not a directory")));
        }
        match admitted.replaces {
            // `remove_dir_all` and `remove_file` unlink a symlink, never its target.
            Some(Node::Dir) => {
                fs::remove_dir_all(&full).map_err(write)?;
                self.forget_dirs_below(path);
            }
            Some(_) => fs::remove_file(&full).map_err(write)?,
            None => {}
        }
        match &admitted.action {
            Action::Dir { meta, exists } => {
                if !exists {
                    self.make_dir(path).map_err(write)?;
                }
                self.dirs.insert(path.clone(), *meta);
            }
            Action::File { meta, size } => {
                self.write_file(&full, *meta, *size, data, &write)?;
            }
            Action::Symlink { meta, target } => {
                std::os::unix::fs::symlink(OsStr::from_bytes(target), &full).map_err(write)?;
                if self.as_root {
                    std::os::unix::fs::lchown(&full, Some(meta.uid), Some(meta.gid))
                        .map_err(write)?;
                }
            }
            Action::HardLink { target } => {
                // `link(2)` does not dereference a symlink source, and the checker made
                // sure the target is a regular file this layer wrote.
                fs::hard_link(self.at(target), &full).map_err(write)?;
            }
            Action::Marker => {
                create_new(&full, 0o600).map_err(write)?;
            }
            Action::Skip | Action::Root(_) => {}
        }
        Ok(())
    }

    fn write_file(
        &self,
        full: &Path,
        meta: Meta,
        size: u64,
        data: &mut dyn Read,
        write: &dyn Fn(io::Error) -> LayerError,
    ) -> Result<(), LayerError> {
        // `create_new` is O_CREAT|O_EXCL: it fails on anything already there, a dangling
        // symlink included, so the file is always a new inode of ours.
        let mut file = create_new(full, 0o600).map_err(write)?;
        let mut buf = vec![0u8; 64 * 1024];
        let mut written = 0u64;
        loop {
            let n = data
                .read(&mut buf)
                .map_err(|source| LayerError::Read { source })?;
            if n == 0 {
                break;
            }
            file.write_all(&buf[..n]).map_err(write)?;
            written += n as u64;
        }
        if written != size {
            // The tar reader ends an entry's data quietly at the end of the stream.
            return Err(LayerError::Read {
                source: io::Error::new(io::ErrorKind::UnexpectedEof, "layer ends inside a file"),
            });
        }
        if self.as_root {
            // Before the mode: chown clears setuid and setgid.
            std::os::unix::fs::fchown(&file, Some(meta.uid), Some(meta.gid)).map_err(write)?;
        }
        file.set_permissions(Permissions::from_mode(meta.mode))
            .map_err(write)?;
        // A time past what the system can represent is left unset rather than trusted.
        if let Some(mtime) = SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(meta.mtime)) {
            file.set_modified(mtime).map_err(write)?;
        }
        Ok(())
    }

    fn make_dir(&self, path: &[u8]) -> io::Result<()> {
        DirBuilder::new().mode(0o700).create(self.at(path))
    }

    fn forget_dirs_below(&mut self, dir: &[u8]) {
        self.dirs
            .retain(|key, _| !(key.starts_with(dir) && key.get(dir.len()) == Some(&b'/')));
    }

    /// Gives every directory its own owner and mode, deepest first (reverse order puts
    /// `a/b` before `a`), the root last. Directory times are not kept: writing the
    /// entries below moved them, and nothing reads them.
    fn finish(&self) -> Result<(), LayerError> {
        for (path, meta) in self.dirs.iter().rev() {
            let full = self.at(path);
            let write = |source| LayerError::Write {
                entry: crate::shown_bytes(path),
                source,
            };
            let found = fs::symlink_metadata(&full).map_err(write)?;
            if !found.file_type().is_dir() {
                return Err(write(io::Error::other("expected a directory")));
            }
            if self.as_root {
                std::os::unix::fs::lchown(&full, Some(meta.uid), Some(meta.gid)).map_err(write)?;
            }
            // The path was just seen to be a directory this unpack made, not a link.
            fs::set_permissions(&full, Permissions::from_mode(meta.mode)).map_err(write)?;
        }
        Ok(())
    }
}

fn create_new(path: &Path, mode: u32) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
}
