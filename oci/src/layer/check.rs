//! The one judge of a layer's entries, shared by scanning and unpacking.
//!
//! It keeps a model of what the layer has put where so far (every path it created, and
//! whether it is a directory, a file, a symlink or a whiteout marker) and judges each entry
//! against it, without touching the filesystem: an entry is refused if its path, its link
//! target or its type could place anything outside the layer's root or through a link. What
//! it admits comes back as an [`Admitted`] action for the unpacker to carry out; the
//! scanner carries out nothing, so both see exactly the same verdicts. It must never consult
//! the disk: its verdict depends on the layer's bytes alone.

use super::{LayerError, LayerLimits};
use crate::entries::Logical;
use crate::path::{self, CleanPath, PathProblem};
use crate::shown_bytes;
use std::collections::BTreeMap;
use tar::EntryType;

/// What the layer put at a path so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Node {
    Dir,
    File,
    Symlink,
    /// A whiteout or opaque marker: an empty file kept for assembly.
    Marker,
}

/// Ownership, permissions and time of an entry, from its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// Permission bits including setuid, setgid and sticky (`0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Seconds since the epoch.
    pub mtime: u64,
}

/// The mode given to a directory the layer never listed but whose children it holds.
pub const IMPLICIT_DIR: Meta = Meta {
    mode: 0o755,
    uid: 0,
    gid: 0,
    mtime: 0,
};

/// What to do for an admitted entry.
#[derive(Debug)]
pub enum Action {
    /// The layer root's own metadata (an entry named `./`).
    Root(Meta),
    /// A directory; `exists` when the layer already made one there (update metadata only).
    Dir { meta: Meta, exists: bool },
    /// A regular file of `size` bytes, read from the entry.
    File { meta: Meta, size: u64 },
    /// A symlink; the target is kept verbatim and never resolved.
    Symlink { meta: Meta, target: Vec<u8> },
    /// A hard link to a regular file the layer wrote earlier (a clean path).
    HardLink { target: Vec<u8> },
    /// A whiteout or opaque marker, kept as an empty file.
    Marker,
    /// Nothing to create (aufs metadata).
    Skip,
}

/// An admitted entry.
#[derive(Debug)]
pub struct Admitted {
    /// The entry's clean path (empty for the root).
    pub path: Vec<u8>,
    pub action: Action,
    /// Directories on the way to `path` that the layer never listed, shortest first: to be
    /// created before it.
    pub new_parents: Vec<Vec<u8>>,
    /// What an earlier entry put at `path` and must be removed first (never written
    /// through). `None` when nothing, or when a directory is kept for a directory.
    pub replaces: Option<Node>,
}

/// Whiteout names, from the OCI layer spec (inherited from aufs).
const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
/// Other `.wh..wh.` names are aufs bookkeeping, never part of an image's content.
const AUFS_META_PREFIX: &[u8] = b".wh..wh.";

/// aufs bookkeeping (`.wh..wh.plnk`, `.wh..wh.aufs`): skipped with everything under it, as
/// Docker does. The opaque marker shares the prefix and is not bookkeeping.
fn is_aufs_meta(name: &[u8]) -> bool {
    name.starts_with(AUFS_META_PREFIX) && name != OPAQUE_MARKER
}

/// Average path length allowed per entry of `max_entries`: real layers average well under
/// 100 bytes, and a layer of only 4096-byte paths could otherwise make the model a
/// gigabyte.
pub const PATH_BYTES_PER_ENTRY: u64 = 256;

/// Setuid and setgid bits.
const SETID_BITS: u32 = 0o6000;

/// The checker's state: the model of the layer so far and its running totals.
#[derive(Debug)]
pub struct Checker {
    model: BTreeMap<Vec<u8>, Node>,
    max_entries: u64,
    /// Bytes of entry paths seen, bounded so that the model stays small on a small node.
    path_bytes: u64,
    max_path_bytes: u64,
    allow_setuid: bool,
    pub entries: u64,
    pub unpacked_bytes: u64,
    pub has_setuid: bool,
}

impl Checker {
    pub fn new(limits: &LayerLimits) -> Self {
        Self {
            model: BTreeMap::new(),
            max_entries: limits.max_entries,
            path_bytes: 0,
            max_path_bytes: limits.max_entries.saturating_mul(PATH_BYTES_PER_ENTRY),
            allow_setuid: limits.allow_setuid,
            entries: 0,
            unpacked_bytes: 0,
            has_setuid: false,
        }
    }

    /// Judges the next entry of the layer.
    pub fn admit(&mut self, entry: &Logical) -> Result<Admitted, LayerError> {
        let raw = &entry.path;
        let name = || shown_bytes(raw);
        self.entries += 1;
        if self.entries > self.max_entries {
            return Err(LayerError::TooManyEntries {
                entry: name(),
                limit: self.max_entries,
            });
        }
        let header = &entry.header;
        let kind = entry.kind;
        let path = path::clean(raw).map_err(|problem| match problem {
            PathProblem::Absolute => LayerError::AbsolutePath { entry: name() },
            PathProblem::Parent => LayerError::ParentDirectory { entry: name() },
            PathProblem::TooLong => LayerError::PathTooLong { entry: name() },
            PathProblem::Nul => LayerError::NulInPath { entry: name() },
        })?;
        self.path_bytes = self.path_bytes.saturating_add(path.bytes.len() as u64);
        if self.path_bytes > self.max_path_bytes {
            return Err(LayerError::PathsTooLong {
                entry: name(),
                limit: self.max_path_bytes,
            });
        }

        let meta = || -> Result<Meta, LayerError> {
            let bad = |source| LayerError::Header {
                entry: name(),
                source,
            };
            let id = |value: u64| {
                u32::try_from(value).map_err(|_| {
                    bad(std::io::Error::other(format!(
                        "owner id {value} over 32 bits"
                    )))
                })
            };
            // PAX records carry owners and times too large for the header's fields.
            let uid = match entry.pax_uid {
                Some(uid) => uid,
                None => header.uid().map_err(bad)?,
            };
            let gid = match entry.pax_gid {
                Some(gid) => gid,
                None => header.gid().map_err(bad)?,
            };
            let mtime = match entry.pax_mtime {
                Some(mtime) => mtime,
                None => header.mtime().map_err(bad)?,
            };
            Ok(Meta {
                mode: header.mode().map_err(bad)? & 0o7777,
                uid: id(uid)?,
                gid: id(gid)?,
                mtime,
            })
        };

        // Old (v7) writers mark a directory with a trailing slash on a regular entry.
        let is_dir = kind == EntryType::Directory
            || (matches!(kind, EntryType::Regular | EntryType::Continuous) && path.trailing_slash);
        let mut action = match kind {
            _ if is_dir => Action::Dir {
                meta: meta()?,
                exists: false,
            },
            EntryType::Regular | EntryType::Continuous => Action::File {
                meta: meta()?,
                size: entry.size,
            },
            EntryType::Symlink => Action::Symlink {
                meta: meta()?,
                target: entry.link.clone().unwrap_or_default(),
            },
            EntryType::Link => Action::HardLink {
                target: entry.link.clone().unwrap_or_default(),
            },
            EntryType::Char | EntryType::Block => {
                return Err(LayerError::Device { entry: name() });
            }
            EntryType::Fifo => return Err(LayerError::Fifo { entry: name() }),
            other => {
                return Err(LayerError::UnsupportedEntryType {
                    entry: name(),
                    kind: other.as_byte(),
                });
            }
        };

        if path.bytes.is_empty() {
            return match action {
                Action::Dir { meta, .. } => Ok(Admitted {
                    path: Vec::new(),
                    action: Action::Root(meta),
                    new_parents: Vec::new(),
                    replaces: None,
                }),
                _ => Err(LayerError::ReplacesRoot { entry: name() }),
            };
        }

        // Markers: a whiteout name is only meaningful as the last component of a plain
        // file; anywhere else it would make assembly misread the tree.
        let file_name = path.name();
        if is_aufs_meta(file_name) || path.parents().any(|p| is_aufs_meta(path::name_of(p))) {
            return Ok(Admitted {
                path: path.bytes,
                action: Action::Skip,
                new_parents: Vec::new(),
                replaces: None,
            });
        }
        if path
            .parents()
            .any(|parent| path::name_of(parent).starts_with(WHITEOUT_PREFIX))
        {
            return Err(LayerError::BadWhiteout { entry: name() });
        }
        if file_name.starts_with(WHITEOUT_PREFIX) {
            let hidden = &file_name[WHITEOUT_PREFIX.len()..];
            let plain_file = matches!(action, Action::File { .. });
            if !plain_file || matches!(hidden, b"" | b"." | b"..") {
                return Err(LayerError::BadWhiteout { entry: name() });
            }
            action = Action::Marker;
        }

        let new_parents = self.check_parents(&path, &name)?;

        let existing = self.model.get(&path.bytes).copied();
        match &mut action {
            Action::File { meta, size } => {
                if meta.mode & SETID_BITS != 0 {
                    self.has_setuid = true;
                    if !self.allow_setuid {
                        return Err(LayerError::Setuid {
                            entry: name(),
                            mode: meta.mode,
                        });
                    }
                }
                self.unpacked_bytes = self.unpacked_bytes.saturating_add(*size);
            }
            Action::Symlink { target, .. } => check_symlink(&path, target, &name)?,
            Action::HardLink { target } => {
                *target = self.check_hard_link(&path, target, existing, &name)?;
            }
            Action::Dir { exists, .. } => *exists = existing == Some(Node::Dir),
            Action::Marker | Action::Skip | Action::Root(_) => {}
        }

        for parent in &new_parents {
            self.model.insert(parent.clone(), Node::Dir);
        }
        let node = match action {
            Action::Dir { .. } => Node::Dir,
            Action::File { .. } | Action::HardLink { .. } => Node::File,
            Action::Symlink { .. } => Node::Symlink,
            Action::Marker | Action::Root(_) | Action::Skip => Node::Marker,
        };
        let replaces = match (existing, node) {
            (Some(Node::Dir), Node::Dir) | (None, _) => None,
            (Some(Node::Dir), _) => {
                self.forget_below(&path.bytes);
                Some(Node::Dir)
            }
            (Some(other), _) => Some(other),
        };
        self.model.insert(path.bytes.clone(), node);
        Ok(Admitted {
            path: path.bytes,
            action,
            new_parents,
            replaces,
        })
    }

    /// Every directory on the way must be one the layer made (or will make now): never a
    /// symlink, which is how `etc -> /etc` then `etc/passwd` would write to the host.
    fn check_parents(
        &self,
        path: &CleanPath,
        name: &dyn Fn() -> String,
    ) -> Result<Vec<Vec<u8>>, LayerError> {
        let mut new_parents = Vec::new();
        for parent in path.parents() {
            match self.model.get(parent) {
                Some(Node::Dir) => {}
                None => new_parents.push(parent.to_vec()),
                Some(Node::Symlink) => {
                    return Err(LayerError::ThroughSymlink {
                        entry: name(),
                        link: shown_bytes(parent),
                    });
                }
                Some(Node::File | Node::Marker) => {
                    return Err(LayerError::ParentNotDirectory {
                        entry: name(),
                        parent: shown_bytes(parent),
                    });
                }
            }
        }
        Ok(new_parents)
    }

    /// A hard link shares an inode, so its target must be a regular file this layer wrote
    /// itself: never a path outside, never a link, never something another layer owns.
    fn check_hard_link(
        &self,
        path: &CleanPath,
        target: &[u8],
        existing: Option<Node>,
        name: &dyn Fn() -> String,
    ) -> Result<Vec<u8>, LayerError> {
        let refused = || LayerError::HardLink {
            entry: name(),
            target: shown_bytes(target),
        };
        let clean = path::clean(target).map_err(|_| refused())?;
        let inside_replaced_dir = existing == Some(Node::Dir)
            && clean.bytes.starts_with(&path.bytes)
            && clean.bytes.get(path.bytes.len()) == Some(&b'/');
        if clean.bytes.is_empty()
            || clean.bytes == path.bytes
            || inside_replaced_dir
            || self.model.get(&clean.bytes) != Some(&Node::File)
        {
            return Err(refused());
        }
        Ok(clean.bytes)
    }

    /// A directory replaced by something else takes what the layer put under it along.
    fn forget_below(&mut self, dir: &[u8]) {
        let mut start = dir.to_vec();
        start.push(b'/');
        let mut end = dir.to_vec();
        // '0' sorts right after '/': every key with the prefix `dir/` is in [start, end).
        end.push(b'0');
        let below: Vec<Vec<u8>> = self
            .model
            .range(start..end)
            .map(|(k, _)| k.clone())
            .collect();
        for key in below {
            self.model.remove(&key);
        }
    }
}

/// Absolute targets are kept: the kernel resolves them inside the container's root, and
/// neither unpacking nor assembly ever follows one. A relative target must stay below the
/// root when resolved from the link's directory: climbing out means nothing in the image,
/// and only an attack needs it.
fn check_symlink(
    path: &CleanPath,
    target: &[u8],
    name: &dyn Fn() -> String,
) -> Result<(), LayerError> {
    if target.is_empty() || target.contains(&0) || target.len() > path::MAX_PATH_BYTES {
        return Err(LayerError::BadLinkTarget {
            entry: name(),
            target: shown_bytes(target),
        });
    }
    if target.first() != Some(&b'/') && path::resolve_relative(path.parent(), target).is_none() {
        return Err(LayerError::SymlinkEscapes {
            entry: name(),
            target: shown_bytes(target),
        });
    }
    Ok(())
}
