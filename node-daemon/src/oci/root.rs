//! A container's writable layer: an overlay mount of the instance's own directory over the
//! image's root filesystem, so that what the container writes lands in its bundle and the
//! image's files (hard links into the layer cache, shared with every container on those
//! layers) are never written.
//!
//! The daemon mounts it in its own mount namespace, where the runtime it starts finds it;
//! a mount does not survive the namespace (a reboot, or systemd's private namespace of a
//! restarted service), so [`mount`] is asked again before every start and does nothing
//! when the overlay is there. [`unmount`] comes before a bundle is deleted: a delete that
//! went through the mount would walk the merged tree.
//!
//! Blocking (mount syscalls and stats): quick, but call it off the runtime's workers when
//! it is in a loop.

use nix::mount::{MntFlags, MsFlags};
use node_core::spec::Overlay;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::Path;

/// Whether `path` is a mount point: its device is not its parent's. A path that is not
/// there is not one.
pub fn is_mounted(path: &Path) -> io::Result<bool> {
    let here = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let Some(parent) = path.parent() else {
        return Ok(true);
    };
    Ok(fs::symlink_metadata(parent)?.dev() != here.dev())
}

/// Makes `overlay`'s directories for a container on `lower`: the upper one with the owner
/// and mode of `lower`'s top (the merged root takes them from it: a 0700 root would lock
/// out a container's non-root user), the work and mount-point directories private.
pub fn create(lower: &Path, overlay: &Overlay) -> io::Result<()> {
    let top = fs::metadata(lower)?;
    let mut dirs = fs::DirBuilder::new();
    dirs.mode(0o700);
    for dir in [&overlay.upper, &overlay.work, &overlay.merged] {
        match dirs.create(dir) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
    }
    std::os::unix::fs::chown(&overlay.upper, Some(top.uid()), Some(top.gid()))?;
    fs::set_permissions(
        &overlay.upper,
        fs::Permissions::from_mode(top.mode() & 0o7777),
    )
}

/// Mounts `overlay` over `lower`, unless it is mounted already.
pub fn mount(lower: &Path, overlay: &Overlay) -> io::Result<()> {
    if is_mounted(&overlay.merged)? {
        return Ok(());
    }
    let options = overlay.mount_options(lower).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "an overlay path holds ',', ':', '\\' or a newline",
        )
    })?;
    nix::mount::mount(
        Some("overlay"),
        &overlay.merged,
        Some("overlay"),
        // Device files come from the runtime's /dev, never from an image.
        MsFlags::MS_NODEV,
        Some(options.as_str()),
    )
    .map_err(io::Error::from)
}

/// Unmounts whatever is mounted at `merged`; nothing when nothing is. Lazily: a process
/// that still has a file open there keeps it, and the tree is gone for everyone else.
pub fn unmount(merged: &Path) -> io::Result<()> {
    if !is_mounted(merged)? {
        return Ok(());
    }
    nix::mount::umount2(merged, MntFlags::MNT_DETACH).map_err(io::Error::from)
}

/// Whether this kernel mounts an overlay for us in `dir` (created, then deleted): tried
/// once, with a file written through it. Where it does not, a container's writable root
/// is a copy of the image's.
pub fn overlay_works(dir: &Path) -> io::Result<()> {
    let probe = Overlay {
        upper: dir.join("upper"),
        work: dir.join("work"),
        merged: dir.join("merged"),
    };
    let lower = dir.join("lower");
    let attempt = || -> io::Result<()> {
        fs::create_dir_all(&lower)?;
        create(&lower, &probe)?;
        mount(&lower, &probe)?;
        let written = fs::write(probe.merged.join("probe"), b"");
        unmount(&probe.merged)?;
        written
    };
    // Never a delete through a mount that stayed.
    let clear = || {
        let _ = unmount(&probe.merged);
        if !is_mounted(&probe.merged).unwrap_or(true) {
            let _ = fs::remove_dir_all(dir);
        }
    };
    clear();
    let result = attempt();
    clear();
    result
}
