//! `LazyFs`: a FUSE filesystem that forgets what was never synced, for power-cut tests.
//!
//! It serves a backing directory (the "disk") from memory. What a process writes or
//! truncates stays in memory, as in a page cache, until the file is `fsync`ed or
//! `fdatasync`ed: then the file's whole content is written through to the backing file.
//! [`LazyFs::power_cut`] is the power going: from that instant every change fails with
//! `EIO` and nothing more reaches the backing directory; then whatever uses the mount is
//! killed and the mount goes without writing anything back, so the backing directory holds
//! exactly what was synced before the instant. Mounting it again is the machine coming back.
//!
//! The model, after LazyFS (which Jepsen uses to test etcd's durability):
//! - **File data and size** (writes, truncation, `O_TRUNC`) are durable only after an
//!   `fsync`/`fdatasync` of that file (any handle of it). `sync_file_range` never reaches a
//!   FUSE filesystem, so it makes nothing durable here either; the kernel's periodic
//!   writeback does not exist here.
//! - **Names and modes** (create, mkdir, rename, unlink, rmdir, symlink, chmod, chown) are
//!   durable at once, as if every directory were synced after each change. A missing
//!   directory fsync is therefore not caught; a missing file fsync is, including the classic
//!   torn file: data written to a temporary file and renamed over the real one without an
//!   fsync comes back as an empty file.
//! - Hard links are refused (`EPERM`); a file unlinked while open keeps its data in memory
//!   until the mount ends, and its fsync writes nothing.
//!
//! It never writes to the mount itself (that would wait on its own thread), and it syncs
//! nothing of the backing directory: the test process does not lose power.

use fuser::{
    BackgroundSession, Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// Attributes and entries are not cached by the kernel: every process sees the state now.
const TTL: Duration = Duration::ZERO;

/// A disk for a power-cut test: what survives (`backing`) and where it is mounted.
#[derive(Debug)]
pub struct Disk {
    pub backing: tempfile::TempDir,
    pub mount: tempfile::TempDir,
}

impl Disk {
    pub fn new() -> Self {
        Self {
            backing: tempfile::tempdir().expect("tmp"),
            mount: tempfile::tempdir().expect("tmp"),
        }
    }

    /// Mounts the disk: the machine (back) on.
    pub fn power_on(&self) -> LazyFs {
        LazyFs::mount(self.backing.path(), self.mount.path()).expect("mount")
    }
}

impl Default for Disk {
    fn default() -> Self {
        Self::new()
    }
}

/// A mounted [`LazyFs`] over a backing directory.
#[derive(Debug)]
pub struct LazyFs {
    mountpoint: PathBuf,
    session: Option<BackgroundSession>,
    powered: Arc<AtomicBool>,
}

impl LazyFs {
    /// Mounts the content of `backing` at `mountpoint` (an existing empty directory).
    pub fn mount(backing: &Path, mountpoint: &Path) -> io::Result<Self> {
        let powered = Arc::new(AtomicBool::new(true));
        let fs = Fs::load(backing, powered.clone())?;
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            fuser::MountOption::FSName("lazyfs".into()),
            fuser::MountOption::RW,
        ];
        let session = fuser::spawn_mount(fs, mountpoint, &config)?;
        Ok(Self {
            mountpoint: mountpoint.to_owned(),
            session: Some(session),
            powered,
        })
    }

    /// Where the filesystem is mounted.
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// The power goes: at this instant the disk stops taking anything (every change, a sync
    /// included, fails with `EIO`); every process with a file, directory or executable on
    /// the mount is killed (SIGKILL), then the mount goes away with everything not yet
    /// synced. The backing directory is what the disk kept. Whoever started a killed
    /// process still reaps it.
    pub fn power_cut(mut self) {
        self.cut();
    }

    fn cut(&mut self) {
        self.powered.store(false, Ordering::SeqCst);
        let Some(session) = self.session.take() else {
            return;
        };
        let deadline = std::time::Instant::now() + crate::PATIENCE;
        loop {
            let holders = holders(&self.mountpoint);
            for pid in &holders {
                let _ = std::process::Command::new("kill")
                    .args(["-9", &pid.to_string()])
                    .status();
            }
            // A process killed but not yet reaped by its parent (a zombie) holds nothing:
            // the kernel closed its files when it died. One still dying may hold the mount
            // a moment longer, so the unmount is tried again until it goes through.
            let unmounted = holders.is_empty()
                && std::process::Command::new("umount")
                    .arg(&self.mountpoint)
                    .stderr(std::process::Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
            if unmounted {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} still busy; holders {holders:?}",
                self.mountpoint.display()
            );
            // Nobody to wait on: these are others' children. SIGKILL takes effect at once.
            std::thread::yield_now();
        }
        // Unmounted: the session's thread sees the device go and ends.
        if let Err(e) = session.join() {
            panic!("the filesystem of {}: {e}", self.mountpoint.display());
        }
    }
}

impl Drop for LazyFs {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            self.cut();
        } else if let Some(session) = self.session.take() {
            // The test has failed already: leave no mount behind, whoever holds it.
            self.powered.store(false, Ordering::SeqCst);
            for pid in holders(&self.mountpoint) {
                let _ = std::process::Command::new("kill")
                    .args(["-9", &pid.to_string()])
                    .status();
            }
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.mountpoint)
                .status();
            drop(session);
        }
    }
}

/// The live processes (not zombies) with their working directory, root, executable or an
/// open file under `mountpoint`.
fn holders(mountpoint: &Path) -> Vec<u32> {
    let me = std::process::id();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let dir = entry.path();
        let zombie = std::fs::read_to_string(dir.join("stat"))
            .ok()
            .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.starts_with('Z')))
            .unwrap_or(true);
        if zombie {
            continue;
        }
        let under = |link: PathBuf| {
            std::fs::read_link(link).is_ok_and(|target| target.starts_with(mountpoint))
        };
        let mut links = vec![dir.join("cwd"), dir.join("root"), dir.join("exe")];
        if let Ok(fds) = std::fs::read_dir(dir.join("fd")) {
            links.extend(fds.flatten().map(|fd| fd.path()));
        }
        if links.into_iter().any(under) {
            found.push(pid);
        }
    }
    found
}

#[derive(Debug)]
enum Kind {
    Dir(BTreeMap<OsString, u64>),
    File { data: Vec<u8>, dirty: bool },
    Symlink(PathBuf),
}

#[derive(Debug)]
struct Node {
    /// 0 once unlinked (the root's parent is itself).
    parent: u64,
    name: OsString,
    kind: Kind,
    perm: u16,
    uid: u32,
    gid: u32,
    atime: SystemTime,
    mtime: SystemTime,
    ctime: SystemTime,
}

#[derive(Debug)]
struct State {
    backing: PathBuf,
    /// False from the instant of the power cut.
    powered: Arc<AtomicBool>,
    nodes: HashMap<u64, Node>,
    next_ino: u64,
    next_fh: u64,
}

/// The filesystem the FUSE session serves; one lock, since one thread serves it.
#[derive(Debug)]
struct Fs(Mutex<State>);

const ROOT: u64 = 1;

impl Fs {
    fn load(backing: &Path, powered: Arc<AtomicBool>) -> io::Result<Self> {
        let meta = std::fs::metadata(backing)?;
        let mut state = State {
            backing: backing.to_owned(),
            powered,
            nodes: HashMap::new(),
            next_ino: ROOT + 1,
            next_fh: 1,
        };
        state.nodes.insert(
            ROOT,
            node_from(ROOT, OsString::new(), Kind::Dir(BTreeMap::new()), &meta),
        );
        state.load_dir(ROOT, backing)?;
        Ok(Self(Mutex::new(state)))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while serving poisons nothing we cannot still read.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn node_from(parent: u64, name: OsString, kind: Kind, meta: &std::fs::Metadata) -> Node {
    let time = |secs: i64| {
        SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or_default())
    };
    Node {
        parent,
        name,
        kind,
        perm: (meta.mode() & 0o7777) as u16,
        uid: meta.uid(),
        gid: meta.gid(),
        atime: time(meta.atime()),
        mtime: time(meta.mtime()),
        ctime: time(meta.ctime()),
    }
}

impl State {
    /// Every change checks this first: after the cut the disk takes nothing.
    fn live(&self) -> Result<(), Errno> {
        if self.powered.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(Errno::EIO)
        }
    }

    fn load_dir(&mut self, dir_ino: u64, dir: &Path) -> io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path)?;
            let kind = if meta.is_dir() {
                Kind::Dir(BTreeMap::new())
            } else if meta.file_type().is_symlink() {
                Kind::Symlink(std::fs::read_link(&path)?)
            } else if meta.is_file() {
                Kind::File {
                    data: std::fs::read(&path)?,
                    dirty: false,
                }
            } else {
                continue;
            };
            let ino = self.next_ino;
            self.next_ino += 1;
            let name = entry.file_name();
            self.nodes
                .insert(ino, node_from(dir_ino, name.clone(), kind, &meta));
            if let Some(Kind::Dir(children)) = self.nodes.get_mut(&dir_ino).map(|n| &mut n.kind) {
                children.insert(name, ino);
            }
            if meta.is_dir() {
                self.load_dir(ino, &path)?;
            }
        }
        Ok(())
    }

    /// The backing path of `ino`, or `None` once it is unlinked.
    fn backing_path(&self, ino: u64) -> Option<PathBuf> {
        let mut names = Vec::new();
        let mut at = ino;
        while at != ROOT {
            let node = self.nodes.get(&at)?;
            if node.parent == 0 {
                return None;
            }
            names.push(node.name.clone());
            at = node.parent;
        }
        let mut path = self.backing.clone();
        path.extend(names.iter().rev());
        Some(path)
    }

    fn attr(&self, ino: u64) -> Result<FileAttr, Errno> {
        let node = self.nodes.get(&ino).ok_or(Errno::ENOENT)?;
        let (kind, size, nlink) = match &node.kind {
            Kind::Dir(_) => (FileType::Directory, 4096, 2),
            Kind::File { data, .. } => (FileType::RegularFile, data.len() as u64, 1),
            Kind::Symlink(target) => (FileType::Symlink, target.as_os_str().len() as u64, 1),
        };
        Ok(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: node.atime,
            mtime: node.mtime,
            ctime: node.ctime,
            crtime: node.ctime,
            kind,
            perm: node.perm,
            nlink,
            uid: node.uid,
            gid: node.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }

    fn child(&self, parent: u64, name: &OsStr) -> Result<u64, Errno> {
        match self.nodes.get(&parent).map(|n| &n.kind) {
            Some(Kind::Dir(children)) => children.get(name).copied().ok_or(Errno::ENOENT),
            Some(_) => Err(Errno::ENOTDIR),
            None => Err(Errno::ENOENT),
        }
    }

    /// Adds a new node under `parent`; its name is written through by the caller.
    fn add(
        &mut self,
        parent: u64,
        name: &OsStr,
        kind: Kind,
        perm: u32,
        req: &Request,
    ) -> Result<u64, Errno> {
        match self.child(parent, name) {
            Ok(_) => return Err(Errno::EEXIST),
            Err(e) if e == Errno::ENOENT => {}
            Err(e) => return Err(e),
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        let now = SystemTime::now();
        self.nodes.insert(
            ino,
            Node {
                parent,
                name: name.to_owned(),
                kind,
                perm: (perm & 0o7777) as u16,
                uid: req.uid(),
                gid: req.gid(),
                atime: now,
                mtime: now,
                ctime: now,
            },
        );
        if let Some(Kind::Dir(children)) = self.nodes.get_mut(&parent).map(|n| &mut n.kind) {
            children.insert(name.to_owned(), ino);
        }
        Ok(ino)
    }

    /// Takes `name` out of `parent` (its node stays, unlinked, for handles still open).
    fn detach(&mut self, parent: u64, name: &OsStr) -> Option<u64> {
        let ino = match self.nodes.get_mut(&parent).map(|n| &mut n.kind) {
            Some(Kind::Dir(children)) => children.remove(name)?,
            _ => return None,
        };
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.parent = 0;
        }
        Some(ino)
    }

    fn file_mut(&mut self, ino: u64) -> Result<(&mut Vec<u8>, &mut bool), Errno> {
        match self.nodes.get_mut(&ino).map(|n| &mut n.kind) {
            Some(Kind::File { data, dirty }) => Ok((data, dirty)),
            Some(Kind::Dir(_)) => Err(Errno::EISDIR),
            Some(Kind::Symlink(_)) => Err(Errno::EINVAL),
            None => Err(Errno::ENOENT),
        }
    }

    fn touch(&mut self, ino: u64) {
        if let Some(node) = self.nodes.get_mut(&ino) {
            let now = SystemTime::now();
            node.mtime = now;
            node.ctime = now;
        }
    }

    fn rename(
        &mut self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: RenameFlags,
    ) -> Result<(), Errno> {
        if flags.contains(RenameFlags::RENAME_EXCHANGE)
            || flags.contains(RenameFlags::RENAME_WHITEOUT)
        {
            return Err(Errno::EINVAL);
        }
        self.live()?;
        let ino = self.child(parent, name)?;
        let from = self.backing_path(ino).ok_or(Errno::ENOENT)?;
        let is_dir = matches!(self.nodes.get(&ino).map(|n| &n.kind), Some(Kind::Dir(_)));
        if let Ok(target) = self.child(newparent, newname) {
            if target == ino {
                return Ok(());
            }
            if flags.contains(RenameFlags::RENAME_NOREPLACE) {
                return Err(Errno::EEXIST);
            }
            match (&self.nodes.get(&target).ok_or(Errno::ENOENT)?.kind, is_dir) {
                (Kind::Dir(c), true) if !c.is_empty() => return Err(Errno::ENOTEMPTY),
                (Kind::Dir(_), false) => return Err(Errno::EISDIR),
                (Kind::File { .. } | Kind::Symlink(_), true) => return Err(Errno::ENOTDIR),
                _ => {}
            }
        }
        // A directory moved under itself would cut it off from the root.
        let mut up = newparent;
        while up != ROOT {
            if up == ino {
                return Err(Errno::EINVAL);
            }
            up = self.nodes.get(&up).map_or(ROOT, |n| n.parent);
        }
        let mut to = self.backing_path(newparent).ok_or(Errno::ENOENT)?;
        to.push(newname);
        std::fs::rename(&from, &to).map_err(Errno::from)?;
        self.detach(newparent, newname);
        self.detach(parent, name);
        if let Some(Kind::Dir(children)) = self.nodes.get_mut(&newparent).map(|n| &mut n.kind) {
            children.insert(newname.to_owned(), ino);
        }
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.parent = newparent;
            node.name = newname.to_owned();
            node.ctime = SystemTime::now();
        }
        Ok(())
    }

    /// Writes the file's content through to the backing file: what survives a cut.
    fn sync(&mut self, ino: u64) -> Result<(), Errno> {
        self.live()?;
        let path = self.backing_path(ino);
        let (data, dirty) = match self.file_mut(ino) {
            Ok(file) => file,
            // fsync of a directory or symlink: its names are durable already.
            Err(e) if e == Errno::EISDIR || e == Errno::EINVAL => return Ok(()),
            Err(e) => return Err(e),
        };
        if *dirty {
            if let Some(path) = path {
                std::fs::write(path, &data[..]).map_err(Errno::from)?;
            }
            *dirty = false;
        }
        Ok(())
    }
}

fn errno(e: io::Error) -> Errno {
    Errno::from(e)
}

impl fuser::Filesystem for Fs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let state = self.state();
        match state.child(parent.0, name).and_then(|ino| state.attr(ino)) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.state().attr(ino.0) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut state = self.state();
        let ino = ino.0;
        let result = (|| {
            state.live()?;
            let path = state.backing_path(ino);
            if let Some(mode) = mode {
                if let Some(path) = &path {
                    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o7777))
                        .map_err(errno)?;
                }
                state.nodes.get_mut(&ino).ok_or(Errno::ENOENT)?.perm = (mode & 0o7777) as u16;
            }
            if uid.is_some() || gid.is_some() {
                if let Some(path) = &path {
                    std::os::unix::fs::lchown(path, uid, gid).map_err(errno)?;
                }
                let node = state.nodes.get_mut(&ino).ok_or(Errno::ENOENT)?;
                node.uid = uid.unwrap_or(node.uid);
                node.gid = gid.unwrap_or(node.gid);
            }
            if let Some(size) = size {
                let (data, dirty) = state.file_mut(ino)?;
                data.resize(usize::try_from(size).map_err(|_| Errno::EFBIG)?, 0);
                *dirty = true;
                state.touch(ino);
            }
            let at = |t: TimeOrNow| match t {
                TimeOrNow::SpecificTime(t) => t,
                TimeOrNow::Now => SystemTime::now(),
            };
            let node = state.nodes.get_mut(&ino).ok_or(Errno::ENOENT)?;
            if let Some(t) = atime {
                node.atime = at(t);
            }
            if let Some(t) = mtime {
                node.mtime = at(t);
            }
            state.attr(ino)
        })();
        match result {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.state().nodes.get(&ino.0).map(|n| &n.kind) {
            Some(Kind::Symlink(target)) => {
                use std::os::unix::ffi::OsStrExt;
                reply.data(target.as_os_str().as_bytes());
            }
            _ => reply.error(Errno::EINVAL),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        if mode & libc_s_ifmt() != libc_s_ifreg() {
            reply.error(Errno::EPERM);
            return;
        }
        let mut state = self.state();
        match create_file(&mut state, req, parent.0, name, mode & !umask) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let mut state = self.state();
        let result = (|| {
            state.live()?;
            let mut path = state.backing_path(parent.0).ok_or(Errno::ENOENT)?;
            path.push(name);
            state.child(parent.0, name).err().ok_or(Errno::EEXIST)?;
            std::fs::create_dir(&path).map_err(errno)?;
            let perm = mode & !umask & 0o7777;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(perm))
                .map_err(errno)?;
            let ino = state.add(parent.0, name, Kind::Dir(BTreeMap::new()), perm, req)?;
            state.attr(ino)
        })();
        match result {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut state = self.state();
        let result = (|| {
            state.live()?;
            let ino = state.child(parent.0, name)?;
            if matches!(state.nodes.get(&ino).map(|n| &n.kind), Some(Kind::Dir(_))) {
                return Err(Errno::EISDIR);
            }
            let path = state.backing_path(ino).ok_or(Errno::ENOENT)?;
            std::fs::remove_file(path).map_err(errno)?;
            state.detach(parent.0, name);
            Ok(())
        })();
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut state = self.state();
        let result = (|| {
            state.live()?;
            let ino = state.child(parent.0, name)?;
            match state.nodes.get(&ino).map(|n| &n.kind) {
                Some(Kind::Dir(children)) if !children.is_empty() => return Err(Errno::ENOTEMPTY),
                Some(Kind::Dir(_)) => {}
                _ => return Err(Errno::ENOTDIR),
            }
            let path = state.backing_path(ino).ok_or(Errno::ENOENT)?;
            std::fs::remove_dir(path).map_err(errno)?;
            state.detach(parent.0, name);
            Ok(())
        })();
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let mut state = self.state();
        let result = (|| {
            state.live()?;
            let mut path = state.backing_path(parent.0).ok_or(Errno::ENOENT)?;
            path.push(link_name);
            state
                .child(parent.0, link_name)
                .err()
                .ok_or(Errno::EEXIST)?;
            std::os::unix::fs::symlink(target, &path).map_err(errno)?;
            let ino = state.add(
                parent.0,
                link_name,
                Kind::Symlink(target.to_owned()),
                0o777,
                req,
            )?;
            state.attr(ino)
        })();
        match result {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        match self
            .state()
            .rename(parent.0, name, newparent.0, newname, flags)
        {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let mut state = self.state();
        if flags.0 & O_TRUNC != 0 && state.live().is_err() {
            reply.error(Errno::EIO);
            return;
        }
        if flags.0 & O_TRUNC != 0
            && let Ok((data, dirty)) = state.file_mut(ino.0)
        {
            data.clear();
            *dirty = true;
        }
        if !state.nodes.contains_key(&ino.0) {
            reply.error(Errno::ENOENT);
            return;
        }
        let fh = state.next_fh;
        state.next_fh += 1;
        reply.opened(FileHandle(fh), FopenFlags::empty());
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        let mut state = self.state();
        match state.file_mut(ino.0) {
            Ok((data, _)) => {
                let start = usize::try_from(offset)
                    .unwrap_or(usize::MAX)
                    .min(data.len());
                let end = start.saturating_add(size as usize).min(data.len());
                reply.data(&data[start..end]);
            }
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        bytes: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut state = self.state();
        let result = (|| {
            state.live()?;
            let (data, dirty) = state.file_mut(ino.0)?;
            let start = usize::try_from(offset).map_err(|_| Errno::EFBIG)?;
            let end = start.checked_add(bytes.len()).ok_or(Errno::EFBIG)?;
            if data.len() < end {
                data.resize(end, 0);
            }
            data[start..end].copy_from_slice(bytes);
            *dirty = true;
            state.touch(ino.0);
            Ok(bytes.len() as u32)
        })();
        match result {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: fuser::LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(2) is no sync.
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.state().sync(ino.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let state = self.state();
        let Some(node) = state.nodes.get(&ino.0) else {
            reply.error(Errno::ENOENT);
            return;
        };
        let Kind::Dir(children) = &node.kind else {
            reply.error(Errno::ENOTDIR);
            return;
        };
        let parent = if ino.0 == ROOT { ROOT } else { node.parent };
        let mut entries = vec![
            (ino.0, FileType::Directory, OsString::from(".")),
            (parent, FileType::Directory, OsString::from("..")),
        ];
        for (name, child) in children {
            let kind = match state.nodes.get(child).map(|n| &n.kind) {
                Some(Kind::Dir(_)) => FileType::Directory,
                Some(Kind::Symlink(_)) => FileType::Symlink,
                _ => FileType::RegularFile,
            };
            entries.push((*child, kind, name.clone()));
        }
        let skip = usize::try_from(offset).unwrap_or(usize::MAX);
        for (i, (child, kind, name)) in entries.into_iter().enumerate().skip(skip) {
            if reply.add(INodeNo(child), i as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Names are durable at once in this model.
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // Room enough for what a test stores: 64 GiB in 4 KiB blocks, all free.
        let blocks = 16 << 20;
        reply.statfs(blocks, blocks, blocks, 1 << 20, 1 << 20, 4096, 255, 4096);
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let mut state = self.state();
        let result = match state.child(parent.0, name) {
            _ if state.live().is_err() => Err(Errno::EIO),
            Ok(_) if flags & O_EXCL != 0 => Err(Errno::EEXIST),
            Ok(ino) => {
                if flags & O_TRUNC != 0
                    && let Ok((data, dirty)) = state.file_mut(ino)
                {
                    data.clear();
                    *dirty = true;
                }
                state.attr(ino)
            }
            Err(_) => create_file(&mut state, req, parent.0, name, mode & !umask),
        };
        match result {
            Ok(attr) => {
                let fh = state.next_fh;
                state.next_fh += 1;
                reply.created(
                    &TTL,
                    &attr,
                    Generation(0),
                    FileHandle(fh),
                    FopenFlags::empty(),
                );
            }
            Err(e) => reply.error(e),
        }
    }
}

const O_TRUNC: i32 = 0o1000;
const O_EXCL: i32 = 0o200;

fn libc_s_ifmt() -> u32 {
    0o170000
}

fn libc_s_ifreg() -> u32 {
    0o100000
}

/// A new empty file: its name is durable at once (empty), its data once synced.
fn create_file(
    state: &mut State,
    req: &Request,
    parent: u64,
    name: &OsStr,
    mode: u32,
) -> Result<FileAttr, Errno> {
    state.live()?;
    let mut path = state.backing_path(parent).ok_or(Errno::ENOENT)?;
    path.push(name);
    state.child(parent, name).err().ok_or(Errno::EEXIST)?;
    let perm = mode & 0o7777;
    std::fs::File::create_new(&path).map_err(errno)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(perm)).map_err(errno)?;
    let ino = state.add(
        parent,
        name,
        Kind::File {
            data: Vec::new(),
            dirty: false,
        },
        perm,
        req,
    )?;
    state.attr(ino)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_write_never_synced_is_gone_after_a_cut_and_a_synced_one_stays() {
        let disk = Disk::new();
        let fs = disk.power_on();
        let root = fs.path().to_owned();
        let mut synced = std::fs::File::create(root.join("synced")).expect("create");
        synced.write_all(b"kept").expect("write");
        synced.sync_data().expect("fdatasync");
        synced.write_all(b" and lost").expect("write");
        std::fs::write(root.join("unsynced"), b"lost").expect("write");
        // Before the cut, every process sees everything.
        assert_eq!(
            std::fs::read(root.join("synced")).expect("read"),
            b"kept and lost"
        );
        assert_eq!(std::fs::read(root.join("unsynced")).expect("read"), b"lost");
        drop(synced);
        fs.power_cut();

        let fs = disk.power_on();
        assert_eq!(
            std::fs::read(fs.path().join("synced")).expect("read"),
            b"kept"
        );
        // The name was durable at once; its data was not.
        assert_eq!(
            std::fs::read(fs.path().join("unsynced")).expect("read"),
            b""
        );
        fs.power_cut();
    }

    #[test]
    fn a_file_renamed_over_another_without_a_sync_comes_back_empty() {
        let disk = Disk::new();
        std::fs::write(disk.backing.path().join("id"), b"old").expect("seed");
        let fs = disk.power_on();
        let root = fs.path().to_owned();
        std::fs::write(root.join("id.tmp"), b"new").expect("write");
        std::fs::rename(root.join("id.tmp"), root.join("id")).expect("rename");
        let mut synced = std::fs::File::create(root.join("ok.tmp")).expect("create");
        synced.write_all(b"whole").expect("write");
        synced.sync_all().expect("fsync");
        drop(synced);
        std::fs::rename(root.join("ok.tmp"), root.join("ok")).expect("rename");
        fs.power_cut();

        let fs = disk.power_on();
        assert_eq!(
            std::fs::read(fs.path().join("id")).expect("read"),
            b"",
            "torn"
        );
        assert_eq!(std::fs::read(fs.path().join("ok")).expect("read"), b"whole");
        assert!(!fs.path().join("id.tmp").exists());
        fs.power_cut();
    }

    #[test]
    fn a_truncation_is_durable_only_once_synced_and_data_follows_a_rename() {
        let disk = Disk::new();
        std::fs::write(disk.backing.path().join("log"), b"0123456789").expect("seed");
        std::fs::create_dir(disk.backing.path().join("dir")).expect("seed");
        let fs = disk.power_on();
        let root = fs.path().to_owned();
        let log = std::fs::OpenOptions::new()
            .write(true)
            .open(root.join("log"))
            .expect("open");
        log.set_len(4).expect("truncate");
        assert_eq!(std::fs::read(root.join("log")).expect("read"), b"0123");
        drop(log);
        // Written and renamed into another directory, then synced under its new name.
        let mut moved = std::fs::File::create(root.join("a")).expect("create");
        moved.write_all(b"moved").expect("write");
        std::fs::rename(root.join("a"), root.join("dir/b")).expect("rename");
        moved.sync_data().expect("fdatasync");
        drop(moved);
        fs.power_cut();

        let fs = disk.power_on();
        let root = fs.path().to_owned();
        assert_eq!(
            std::fs::read(root.join("log")).expect("read"),
            b"0123456789"
        );
        assert_eq!(std::fs::read(root.join("dir/b")).expect("read"), b"moved");
        assert!(!root.join("a").exists());
        // Directories, removals and modes hold across a cut.
        std::fs::create_dir(root.join("new")).expect("mkdir");
        std::fs::set_permissions(root.join("new"), std::fs::Permissions::from_mode(0o700))
            .expect("chmod");
        std::fs::remove_file(root.join("dir/b")).expect("unlink");
        fs.power_cut();

        let fs = disk.power_on();
        let meta = std::fs::metadata(fs.path().join("new")).expect("stat");
        assert!(meta.is_dir());
        assert_eq!(meta.mode() & 0o777, 0o700);
        assert!(!fs.path().join("dir/b").exists());
        fs.power_cut();
    }

    #[test]
    fn a_cut_kills_the_processes_that_use_the_mount() {
        let disk = Disk::new();
        let fs = disk.power_on();
        let mut sleeper = std::process::Command::new("sleep")
            .arg("600")
            .current_dir(fs.path())
            .spawn()
            .expect("sleep");
        fs.power_cut();
        let status = sleeper.wait().expect("reaped");
        assert!(!status.success(), "killed, not finished");
    }
}
