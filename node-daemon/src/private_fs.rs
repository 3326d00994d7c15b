//! Directories and files that only the node's own user may read. The data dir holds the
//! node's key, its join token, the workloads' specs (their `env` is where secrets end up) and
//! their logs: every directory the node creates there is 0700 and every such file 0600.
//!
//! Modes are set explicitly after creation rather than left to the process umask: a umask of
//! 0 would make them readable (and writable) by everyone, a strict one unusable by the node.
//! This module only creates directories, opens files and replaces them whole; it never reads
//! or removes anything.

use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// The mode of every directory the node creates.
pub const DIR_MODE: u32 = 0o700;
/// The mode of every file holding an identity, a token, a spec or a log.
pub const FILE_MODE: u32 = 0o600;

/// Creates `dir` and whatever parents it lacks, each 0700. Directories that exist already
/// keep their mode: the data dir's parents, or a data dir the operator made, are theirs.
pub fn create_dir_all(dir: &Path) -> io::Result<()> {
    let missing: Vec<&Path> = dir
        .ancestors()
        .take_while(|p| !p.as_os_str().is_empty() && !p.is_dir())
        .collect();
    for path in missing.into_iter().rev() {
        match DirBuilder::new().mode(DIR_MODE).create(path) {
            Ok(()) => fs::set_permissions(path, Permissions::from_mode(DIR_MODE))?,
            // Made by someone else in the meantime: theirs, as if it had been there.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A directory of the node's own (its identity, workloads, logs, artifacts): created as by
/// [`create_dir_all`], and made 0700 if it exists with another mode, so that a data dir
/// written before these modes were enforced is tightened on the next start.
pub fn own_dir(dir: &Path) -> io::Result<()> {
    create_dir_all(dir)?;
    if fs::metadata(dir)?.permissions().mode() & 0o7777 != DIR_MODE {
        fs::set_permissions(dir, Permissions::from_mode(DIR_MODE))?;
    }
    Ok(())
}

/// Opens `path` with `options`, creating it 0600 if it is new and making it 0600 if it was
/// there with another mode.
pub fn open(path: &Path, options: &mut OpenOptions) -> io::Result<File> {
    let file = options.mode(FILE_MODE).open(path)?;
    if file.metadata()?.permissions().mode() & 0o7777 != FILE_MODE {
        file.set_permissions(Permissions::from_mode(FILE_MODE))?;
    }
    Ok(file)
}

/// Replaces `path` with `bytes` atomically, 0600 in a 0700 directory: written to a hidden
/// temporary file beside it, synced, then renamed over it, so a crash leaves the old file or
/// the new one, never half of either. The rename is made durable as far as the file system
/// allows ([`sync_dir`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a path to a file",
        ));
    };
    own_dir(dir)?;
    let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    let mut file = open(
        &tmp,
        OpenOptions::new().write(true).create(true).truncate(true),
    )?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, path)?;
    sync_dir(dir);
    Ok(())
}

/// Best effort: makes a rename or a removal in `dir` durable. FAT and some other file systems
/// refuse to sync a directory; the data itself is synced already.
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).expect("stat").permissions().mode() & 0o7777
    }

    #[test]
    fn only_what_it_creates_is_made_private_and_own_dirs_are_tightened() {
        let root = tempfile::tempdir().expect("temp dir");
        let theirs = root.path().join("theirs");
        fs::create_dir(&theirs).expect("mkdir");
        fs::set_permissions(&theirs, Permissions::from_mode(0o755)).expect("chmod");

        create_dir_all(&theirs.join("a/b")).expect("create");
        assert_eq!(mode(&theirs), 0o755, "an existing parent is left alone");
        assert_eq!(mode(&theirs.join("a")), DIR_MODE);
        assert_eq!(mode(&theirs.join("a/b")), DIR_MODE);
        create_dir_all(&theirs).expect("exists already");
        assert_eq!(mode(&theirs), 0o755);

        own_dir(&theirs).expect("own");
        assert_eq!(mode(&theirs), DIR_MODE, "an own dir is tightened");

        let file = theirs.join("spec.json");
        fs::write(&file, "{}").expect("write");
        fs::set_permissions(&file, Permissions::from_mode(0o644)).expect("chmod");
        open(&file, OpenOptions::new().append(true)).expect("open");
        assert_eq!(mode(&file), FILE_MODE, "a file found readable is tightened");
        let new = theirs.join("new.log");
        open(&new, OpenOptions::new().create(true).append(true)).expect("create");
        assert_eq!(mode(&new), FILE_MODE);
    }

    #[test]
    fn a_file_is_replaced_whole_and_private() {
        let root = tempfile::tempdir().expect("temp dir");
        let path = root.path().join("state/spec.json");
        write_atomic(&path, b"first").expect("write");
        fs::set_permissions(&path, Permissions::from_mode(0o644)).expect("chmod");
        write_atomic(&path, b"second").expect("replace");
        assert_eq!(fs::read(&path).expect("read"), b"second");
        assert_eq!(mode(&path), FILE_MODE);
        assert_eq!(mode(path.parent().expect("dir")), DIR_MODE);
        let left: Vec<_> = fs::read_dir(path.parent().expect("dir"))
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(left, ["spec.json"], "no temporary file is left behind");
        assert!(write_atomic(Path::new("/"), b"x").is_err());
    }
}
