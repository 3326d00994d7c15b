//! The node's layer cache: each image layer unpacked once, named by its `diff_id` (the
//! sha256 of its tar), under `DATA_DIR/oci/layers/<64 hex>`, and each container's root
//! filesystem assembled from them with hard links under `DATA_DIR/oci/rootfs/<instance>`.
//! Two images on one base share its unpacked files, and a container's root costs its
//! directories and links, not a copy.
//!
//! `edge_oci` does the unpacking and the assembly: every entry checked again here (the node
//! trusts no orchestrator's word about a layer), nothing written outside the destination,
//! no link an image supplies ever followed, and a layer or root that is there is whole (each
//! is built as `.partial-*` and renamed). What a crash leaves of one, [`LayerCache::open`]
//! deletes. Both directories are 0700: the files of a layer keep the image's owners and
//! modes, setuid ones included, and no local user may reach them.
//!
//! Blocking (std I/O): call it from `spawn_blocking`. It decides nothing about which layers
//! a node needs; the caller says what to keep.

use crate::private_fs;
use edge_oci::{Compression, Digest, Files, LayerError, LayerLimits, RootfsError, UnpackOptions};
use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};

/// What a crash leaves of a layer or a root being built.
const PARTIAL_MARK: &str = ".partial-";

/// The cache under a node's data dir.
#[derive(Debug, Clone)]
pub struct LayerCache {
    layers: PathBuf,
    rootfs: PathBuf,
}

/// Why a layer was not unpacked. Nothing of it is kept.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The layer's blob could not be read where the fetch left it.
    #[error("reading the layer blob {}: {source}", path.display())]
    Blob { path: PathBuf, source: io::Error },
    /// The layer was refused (hostile, not what its `diff_id` says, over a limit), or our
    /// disk failed while writing it.
    #[error(transparent)]
    Layer(#[from] LayerError),
}

/// What [`LayerCache::gc`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Collected {
    pub layers: usize,
}

impl LayerCache {
    /// Opens (creating, 0700) `data_dir/oci/layers` and `data_dir/oci/rootfs`, and deletes
    /// what an interrupted unpack or assembly left.
    pub fn open(data_dir: &Path) -> io::Result<Self> {
        let oci = data_dir.join("oci");
        let me = Self {
            layers: oci.join("layers"),
            rootfs: oci.join("rootfs"),
        };
        for dir in [&oci, &me.layers, &me.rootfs] {
            private_fs::own_dir(dir)?;
        }
        for dir in [&me.layers, &me.rootfs] {
            for entry in std::fs::read_dir(dir)? {
                let entry = entry?;
                if entry.file_name().to_string_lossy().contains(PARTIAL_MARK) {
                    tracing::info!(path = %entry.path().display(), "deleting an interrupted unpack");
                    std::fs::remove_dir_all(entry.path())?;
                }
            }
        }
        Ok(me)
    }

    /// Where the root filesystems are, one directory per instance.
    pub fn rootfs_dir(&self) -> &Path {
        &self.rootfs
    }

    fn layer_dir(&self, diff_id: &Digest) -> PathBuf {
        self.layers.join(diff_id.hex())
    }

    /// The unpacked layer, if the cache has it.
    pub fn layer(&self, diff_id: &Digest) -> Option<PathBuf> {
        let dir = self.layer_dir(diff_id);
        dir.is_dir().then_some(dir)
    }

    /// Unpacks the layer blob at `blob` (compressed as `compression`) unless the cache has
    /// it: refused, with nothing kept, if its tar does not hash to `diff_id`, holds anything
    /// hostile, or passes `limits`.
    pub fn unpack(
        &self,
        blob: &Path,
        compression: Compression,
        diff_id: Digest,
        limits: LayerLimits,
    ) -> Result<PathBuf, UnpackError> {
        if let Some(dir) = self.layer(&diff_id) {
            return Ok(dir);
        }
        let dest = self.layer_dir(&diff_id);
        let file = std::fs::File::open(blob).map_err(|source| UnpackError::Blob {
            path: blob.to_owned(),
            source,
        })?;
        let options = UnpackOptions {
            limits,
            expected_diff_id: Some(diff_id),
        };
        match edge_oci::unpack(io::BufReader::new(file), compression, &dest, &options) {
            Ok(_) => Ok(dest),
            // Unpacked meanwhile by another instance of the same image: the same bytes.
            Err(LayerError::DestinationExists { .. }) if dest.is_dir() => Ok(dest),
            Err(e) => Err(e.into()),
        }
    }

    /// The root filesystem of `instance` (a workload's name, checked by the node's spec),
    /// made anew from `layers` (lowest first, each unpacked), its files linked to the
    /// layers' or copied as `files` says.
    pub fn assemble(
        &self,
        instance: &str,
        layers: &[Digest],
        files: Files,
    ) -> Result<PathBuf, RootfsError> {
        let dest = self.rootfs.join(instance);
        self.remove_rootfs(instance)
            .map_err(|source| RootfsError::Destination {
                dest: dest.clone(),
                source,
            })?;
        let dirs: Vec<PathBuf> = layers.iter().map(|d| self.layer_dir(d)).collect();
        let refs: Vec<&Path> = dirs.iter().map(PathBuf::as_path).collect();
        edge_oci::assemble_with(&refs, &dest, files)?;
        Ok(dest)
    }

    /// Deletes `instance`'s root filesystem, if any: its links only, never a layer's files.
    pub fn remove_rootfs(&self, instance: &str) -> io::Result<()> {
        match std::fs::remove_dir_all(self.rootfs.join(instance)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Deletes every unpacked layer not in `keep`. A root filesystem still linking a
    /// deleted layer's files keeps them (they are hard links): the caller keeps the layers
    /// of what runs.
    pub fn gc(&self, keep: &HashSet<Digest>) -> io::Result<Collected> {
        let mut collected = Collected::default();
        for entry in std::fs::read_dir(&self.layers)? {
            let entry = entry?;
            let Some(diff_id) = entry.file_name().to_str().and_then(Digest::from_hex) else {
                continue;
            };
            if !keep.contains(&diff_id) {
                std::fs::remove_dir_all(entry.path())?;
                collected.layers += 1;
            }
        }
        Ok(collected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edge_oci::build::{LayerTar, gzip};
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn blob(dir: &Path, name: &str, tar: &[u8]) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, gzip(tar)).expect("write a blob");
        path
    }

    #[test]
    fn layers_unpack_once_and_roots_share_their_files() {
        let data = tempfile::tempdir().expect("tmp");
        let cache = LayerCache::open(data.path()).expect("opens");
        let oci = data.path().join("oci");
        for dir in [oci.clone(), oci.join("layers"), oci.join("rootfs")] {
            let mode = std::fs::metadata(&dir).expect("made").permissions().mode();
            assert_eq!(mode & 0o777, 0o700, "{}", dir.display());
        }
        let base = LayerTar::new()
            .dir("bin/", 0o755)
            .file("bin/hello", 0o755, b"#!/bin/sh\necho hi\n")
            .symlink("bin/sh", "/bin/busybox")
            .finish();
        let app = LayerTar::new()
            .file("etc/motd", 0o644, b"welcome")
            .file("bin/.wh.sh", 0o644, b"")
            .finish();
        let (base_id, app_id) = (Digest::of(&base), Digest::of(&app));
        let base_blob = blob(data.path(), "base.gz", &base);
        let app_blob = blob(data.path(), "app.gz", &app);
        let limits = LayerLimits::default;
        let dir = cache
            .unpack(&base_blob, Compression::Gzip, base_id, limits())
            .expect("unpacks");
        assert_eq!(cache.layer(&base_id), Some(dir.clone()));
        // Again: the one there is kept, the blob not even read.
        std::fs::remove_file(&base_blob).expect("remove");
        assert_eq!(
            cache
                .unpack(&base_blob, Compression::Gzip, base_id, limits())
                .ok(),
            Some(dir)
        );
        cache
            .unpack(&app_blob, Compression::Gzip, app_id, limits())
            .expect("unpacks");

        let one = cache
            .assemble("web", &[base_id, app_id], Files::Linked)
            .expect("assembles");
        let two = cache
            .assemble("api", &[base_id], Files::Linked)
            .expect("assembles");
        assert_eq!(
            std::fs::read(one.join("etc/motd")).expect("from the upper layer"),
            b"welcome"
        );
        assert!(
            std::fs::symlink_metadata(one.join("bin/sh")).is_err(),
            "whited out by the upper layer"
        );
        assert!(
            std::fs::symlink_metadata(two.join("bin/sh"))
                .expect("kept where nothing hides it")
                .is_symlink()
        );
        let inode = |p: &Path| std::fs::metadata(p).expect("there").ino();
        assert_eq!(inode(&one.join("bin/hello")), inode(&two.join("bin/hello")));
        // Made anew on the next start of the instance.
        let again = cache
            .assemble("web", &[base_id], Files::Linked)
            .expect("assembles");
        assert!(!again.join("etc/motd").exists());

        // Only the layers kept stay; a root still linking a collected layer keeps its files.
        let keep: HashSet<Digest> = [base_id].into_iter().collect();
        assert_eq!(cache.gc(&keep).expect("collects"), Collected { layers: 1 });
        assert!(cache.layer(&app_id).is_none() && cache.layer(&base_id).is_some());
        cache.remove_rootfs("web").expect("removes");
        cache.remove_rootfs("web").expect("removing twice is fine");
        assert!(two.join("bin/hello").exists());
    }

    #[test]
    fn a_layer_that_lies_or_escapes_is_not_kept_and_leftovers_go_at_open() {
        let data = tempfile::tempdir().expect("tmp");
        let cache = LayerCache::open(data.path()).expect("opens");
        let good = LayerTar::new().file("a", 0o644, b"a").finish();
        let other = LayerTar::new().file("b", 0o644, b"b").finish();
        let path = blob(data.path(), "good.gz", &good);
        // The orchestrator said another diff_id: refused, nothing kept under either.
        let said = Digest::of(&other);
        assert!(matches!(
            cache.unpack(&path, Compression::Gzip, said, LayerLimits::default()),
            Err(UnpackError::Layer(LayerError::DiffIdMismatch { .. }))
        ));
        assert!(cache.layer(&said).is_none() && cache.layer(&Digest::of(&good)).is_none());
        let escaping = LayerTar::new()
            .raw(
                b"../../outside",
                edge_oci::build::EntryType::Regular,
                b"",
                0o644,
                b"x",
            )
            .finish();
        let path = blob(data.path(), "escaping.gz", &escaping);
        let id = Digest::of(&escaping);
        assert!(matches!(
            cache.unpack(&path, Compression::Gzip, id, LayerLimits::default()),
            Err(UnpackError::Layer(LayerError::ParentDirectory { .. }))
        ));
        assert!(!data.path().join("outside").exists());
        assert!(cache.layer(&id).is_none());

        // A blob the fetch did not leave: said so, nothing made.
        assert!(matches!(
            cache.unpack(
                &data.path().join("nowhere"),
                Compression::Gzip,
                said,
                LayerLimits::default()
            ),
            Err(UnpackError::Blob { .. })
        ));
        assert!(cache.layer(&said).is_none());

        // What a crash leaves is deleted at the next open.
        let leftover = data
            .path()
            .join("oci/layers")
            .join(format!("{}.partial-1234", id.hex()));
        std::fs::create_dir_all(leftover.join("usr")).expect("make a leftover");
        LayerCache::open(data.path()).expect("opens again");
        assert!(!leftover.exists());
    }
}
