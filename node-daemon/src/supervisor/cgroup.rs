//! Resource limits and process tracking: cgroup v2, cgroup v1, or rlimits where the kernel
//! offers neither (or the daemon may not use them).
//!
//! Every workload instance gets its own control group, `PARENT/WORKLOAD` under the backend's
//! root (the parent is `edge-node` unless configured), created before the process may run and
//! removed once it is gone. The group is also how the supervisor finds everything an instance
//! started, including processes that left its process group: a stop kills the whole group.
//!
//! - v2 (Raspberry Pi OS Bookworm, current distributions): one hierarchy; controllers are
//!   enabled through `cgroup.subtree_control` of each ancestor; `memory.max`, `cpu.max`
//!   (`QUOTA PERIOD`), `memory.swap.max = 0` so a limit cannot spill onto an SD card;
//!   OOM kills are counted in `memory.events`.
//! - v1: a group in the `memory` hierarchy (which also tracks the processes) and one in `cpu`:
//!   `memory.limit_in_bytes` (+ `memory.memsw.limit_in_bytes` where swap is accounted),
//!   `cpu.cfs_period_us` + `cpu.cfs_quota_us`; OOM kills in `memory.oom_control`.
//! - rlimit: `RLIMIT_AS` for memory, set in the child before it execs (see `process`). It
//!   limits address space, not resident memory, so runtimes that reserve large virtual ranges
//!   need a generous limit. There is no CPU rate limit without cgroups: a `cpu_millis` is
//!   reported as not enforced.
//!
//! # The v2 root under systemd
//! A systemd service with `Delegate=yes` owns only its own cgroup; everything outside it is
//! systemd's, which moves and trims groups it did not make. So on v2 the backend's root is the
//! daemon's own group, read from the `0::` line of `/proc/self/cgroup`:
//!
//! ```text
//! /sys/fs/cgroup/system.slice/edge-node.service/   root: +cpu +memory in its subtree_control
//! ├── daemon/                                      the daemon itself
//! └── edge-node/                                   PARENT
//!     └── WORKLOAD/                                memory.max, cpu.max, the workload
//! ```
//!
//! A v2 group other than the hierarchy root can hand controllers to its children only while
//! no process sits in it directly, so detection first moves the daemon into `daemon/` (a
//! daemon already there, after a re-exec or with systemd's `DelegateSubgroup=daemon`, uses the
//! parent). The group is taken only if the daemon may write its `cgroup.subtree_control` and
//! `cgroup.procs` and is the only process in it: root can write any group, and a daemon
//! started by hand from a login shell must not take over the session's scope. That daemon, or
//! one at the hierarchy root (a container with its own cgroup namespace), puts its groups at
//! the hierarchy root as `PARENT/WORKLOAD`, if it may write there. The unit's own limits
//! (`MemoryMax=`, `CPUQuota=`) bound the daemon and its workloads together.
//!
//! v1 is unchanged under systemd: `Delegate=yes` leaves root free to write the per-controller
//! hierarchies, and the groups stay at `memory/PARENT/WORKLOAD` and `cpu/PARENT/WORKLOAD`.
//!
//! This module never signals or waits for a process; it only reads and writes cgroupfs (and
//! reads `/proc/self/cgroup`).

use super::spec::Resources;
use nix::unistd::{AccessFlags, access};
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use tracing::{info, warn};

/// The CFS period used for CPU quotas, in microseconds.
pub const CPU_PERIOD_US: u64 = 100_000;

/// The leaf the daemon moves itself into when its own v2 group is the root, so that group
/// holds no process directly and may hand controllers down. An own group of this name is
/// taken for that leaf: systemd unit names always carry a suffix (`.service`, `.scope`), so
/// no unit's group is called this.
pub const DAEMON_LEAF: &str = "daemon";

/// `/proc/self/cgroup` is a line per hierarchy; anything longer is not the kernel's.
const MAX_SELF_CGROUP: usize = 16 * 1024;
/// `PATH_MAX`: the kernel cannot name a longer cgroup.
const MAX_CGROUP_PATH: usize = 4096;

/// How this node limits and tracks workloads. The node reports [`LimitsBackend::name`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitsBackend {
    /// The unified hierarchy mounted at `root` (normally `/sys/fs/cgroup`).
    CgroupV2 { root: PathBuf },
    /// Per-controller hierarchies under `root` (`root/memory`, `root/cpu`).
    CgroupV1 { root: PathBuf },
    /// No usable cgroups: memory through `RLIMIT_AS`, no CPU limit.
    Rlimit,
}

impl LimitsBackend {
    /// The kind the node reports to the orchestrator.
    pub fn kind(&self) -> edge_proto::LimitsKind {
        match self {
            Self::CgroupV2 { .. } => edge_proto::LimitsKind::CgroupV2,
            Self::CgroupV1 { .. } => edge_proto::LimitsKind::CgroupV1,
            Self::Rlimit => edge_proto::LimitsKind::Rlimit,
        }
    }

    /// What this system offers at `/sys/fs/cgroup`, and may be used by this process. On v2
    /// inside a delegated group (a systemd service with `Delegate=yes`), this moves the daemon
    /// into that group's `daemon` leaf: see the module documentation.
    pub fn detect() -> Self {
        let self_cgroup = read_bounded(Path::new("/proc/self/cgroup"), MAX_SELF_CGROUP + 1)
            .unwrap_or_else(|error| {
                warn!(%error, "cannot read /proc/self/cgroup");
                Vec::new()
            });
        Self::detect_from(Path::new("/sys/fs/cgroup"), &self_cgroup)
    }

    /// As [`detect`](Self::detect), for a cgroupfs mounted at `root` (tests pass a fake tree)
    /// and a daemon at the root of the v2 hierarchy.
    pub fn detect_at(root: &Path) -> Self {
        Self::detect_from(root, b"0::/\n")
    }

    /// As [`detect`](Self::detect), for a cgroupfs mounted at `root` and `self_cgroup`, the
    /// contents of this process's `/proc/self/cgroup`.
    ///
    /// v2 needs `cgroup.controllers` at the root, and then either a delegated group of our own
    /// (which becomes the root, with the daemon moved into its leaf) or a writable
    /// `cgroup.subtree_control` at the root. Contents of `self_cgroup` that do not name a
    /// group under `root` plainly (no `0::` line, `.` or `..` components, not UTF-8, too long)
    /// are logged and leave only the hierarchy root. v1 needs a writable `memory` hierarchy
    /// (hybrid systems, with an empty v2 hierarchy beside the v1 controllers, are v1).
    /// Anything else, including a daemon that is not allowed to write there, is `Rlimit`.
    pub fn detect_from(root: &Path, self_cgroup: &[u8]) -> Self {
        let writable = |p: &Path| access(p, AccessFlags::W_OK).is_ok();
        if root.join("cgroup.controllers").is_file() {
            if let Some(group) = delegated_group(root, self_cgroup) {
                return Self::CgroupV2 { root: group };
            }
            if writable(&root.join("cgroup.subtree_control")) {
                return Self::CgroupV2 {
                    root: root.to_owned(),
                };
            }
        }
        let memory = root.join("memory");
        if memory.join("cgroup.procs").is_file() && writable(&memory) {
            return Self::CgroupV1 {
                root: root.to_owned(),
            };
        }
        Self::Rlimit
    }

    /// `cgroup-v2`, `cgroup-v1` or `rlimit`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::CgroupV2 { .. } => "cgroup-v2",
            Self::CgroupV1 { .. } => "cgroup-v1",
            Self::Rlimit => "rlimit",
        }
    }

    /// The directories of `parent/workload`, whether or not they exist: where a previous
    /// daemon's processes would be.
    pub(crate) fn group_dirs(&self, parent: &str, workload: &str) -> Vec<PathBuf> {
        match self {
            Self::CgroupV2 { root } => vec![root.join(parent).join(workload)],
            Self::CgroupV1 { root } => ["memory", "cpu"]
                .iter()
                .map(|h| root.join(h).join(parent).join(workload))
                .collect(),
            Self::Rlimit => Vec::new(),
        }
    }

    /// The group an OCI runtime is to put `workload`'s container in, as its `cgroupsPath`
    /// (absolute, under the hierarchy's mount): `container` below the instance's own group,
    /// so the instance's limits bound it and the supervisor finds its processes. `None`
    /// without cgroups, or for a hierarchy not mounted at `/sys/fs/cgroup` (where runtimes
    /// look).
    pub fn container_cgroups_path(&self, parent: &str, workload: &str) -> Option<String> {
        let mount = Path::new("/sys/fs/cgroup");
        let base = match self {
            Self::CgroupV2 { root } => root.strip_prefix(mount).ok()?.to_owned(),
            Self::CgroupV1 { root } if root == mount => PathBuf::new(),
            Self::CgroupV1 { .. } | Self::Rlimit => return None,
        };
        let path = Path::new("/")
            .join(base)
            .join(parent)
            .join(workload)
            .join("container");
        path.to_str().map(str::to_owned)
    }

    /// The workload groups that exist under `parent`, by name.
    pub(crate) fn existing_groups(&self, parent: &str) -> Vec<String> {
        let dir = match self {
            Self::CgroupV2 { root } => root.join(parent),
            Self::CgroupV1 { root } => root.join("memory").join(parent),
            Self::Rlimit => return Vec::new(),
        };
        let Ok(entries) = fs::read_dir(dir) else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().into_string().ok())
            .collect()
    }

    /// An existing group, for finding and killing what a previous daemon left, or `None`.
    pub(crate) fn existing(&self, parent: &str, workload: &str) -> Option<Group> {
        let dirs: Vec<PathBuf> = self
            .group_dirs(parent, workload)
            .into_iter()
            .filter(|d| d.is_dir())
            .collect();
        let procs = dirs.first()?.clone();
        Some(Group {
            oom: self.oom_source(&procs),
            procs,
            dirs,
        })
    }

    fn oom_source(&self, procs_dir: &Path) -> Option<PathBuf> {
        match self {
            Self::CgroupV2 { .. } => Some(procs_dir.join("memory.events")),
            Self::CgroupV1 { .. } => Some(procs_dir.join("memory.oom_control")),
            Self::Rlimit => None,
        }
    }

    /// Removes `parent` if no group is left in it (the daemon is stopping and has stopped its
    /// workloads). One still in use, or already gone, is left as it is.
    pub(crate) fn remove_parent(&self, parent: &str) {
        let dirs = match self {
            Self::CgroupV2 { root } => vec![root.join(parent)],
            Self::CgroupV1 { root } => vec![
                root.join("memory").join(parent),
                root.join("cpu").join(parent),
            ],
            Self::Rlimit => Vec::new(),
        };
        for dir in dirs {
            // rmdir on a cgroup fails while it has children or processes: that is the check.
            let _ = fs::remove_dir(dir);
        }
    }

    /// Creates `parent` and hands the controllers down to it: checks that this backend is
    /// usable here before any workload depends on it.
    pub(crate) fn prepare_parent(&self, parent: &str) -> Result<(), LimitsError> {
        match self {
            Self::CgroupV2 { root } => {
                let wanted = v2_controllers(root);
                enable_controllers(root, &wanted)?;
                let mut dir = root.to_owned();
                for part in Path::new(parent).components() {
                    dir.push(part);
                    mkdir(&dir)?;
                    enable_controllers(&dir, &wanted)?;
                }
                Ok(())
            }
            Self::CgroupV1 { root } => {
                mkdir(&root.join("memory").join(parent))?;
                let cpu = root.join("cpu");
                if cpu.join("cgroup.procs").is_file() {
                    mkdir(&cpu.join(parent))?;
                }
                Ok(())
            }
            Self::Rlimit => Ok(()),
        }
    }

    /// Creates `parent/workload` with `res` applied, ready for [`Group::add`].
    pub(crate) fn prepare(
        &self,
        parent: &str,
        workload: &str,
        res: &Resources,
    ) -> Result<Prepared, LimitsError> {
        match self {
            Self::CgroupV2 { root } => prepare_v2(root, parent, workload, res),
            Self::CgroupV1 { root } => prepare_v1(root, parent, workload, res),
            Self::Rlimit => Ok(Prepared {
                group: None,
                rlimit_as: res.memory_bytes,
                notes: res
                    .cpu_millis
                    .map(|_| "cpu limit not enforced: no cgroups on this node".to_owned())
                    .into_iter()
                    .collect(),
            }),
        }
    }
}

/// A group ready for a process, and what could not be enforced through it.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub group: Option<Group>,
    /// Set `RLIMIT_AS` to this in the child (no memory controller available).
    pub rlimit_as: Option<u64>,
    /// Limits asked for that this node cannot enforce, for the status message.
    pub notes: Vec<String>,
}

/// One instance's control group (one directory per v1 hierarchy).
#[derive(Debug, Clone)]
pub(crate) struct Group {
    /// Every directory of the group; the first one tracks the processes.
    dirs: Vec<PathBuf>,
    procs: PathBuf,
    oom: Option<PathBuf>,
}

impl Group {
    /// Moves `pid` (and so everything it will start) into the group.
    pub fn add(&self, pid: u32) -> Result<(), LimitsError> {
        for dir in &self.dirs {
            write(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// The processes in the group now. Entries that are not live processes (a fake tree, a
    /// racing exit) are left out.
    ///
    /// Groups below it count too: an OCI runtime puts a container in a group of its own
    /// under the instance's, and everything there belongs to the instance.
    pub fn pids(&self) -> Vec<i32> {
        let mut pids = Vec::new();
        for dir in subtree(&self.procs) {
            let Ok(text) = fs::read_to_string(dir.join("cgroup.procs")) else {
                continue;
            };
            pids.extend(
                text.lines()
                    .filter_map(|l| l.trim().parse::<i32>().ok())
                    .filter(|&pid| pid > 0 && super::process::is_alive(pid)),
            );
        }
        pids
    }

    /// Uses v2's `cgroup.kill` where the kernel has it (5.14+): it kills every process in
    /// the group at once, including ones forking right now. Returns whether it did.
    pub fn kill_all(&self) -> bool {
        let kill = self.procs.join("cgroup.kill");
        kill.is_file() && write(&kill, "1").is_ok()
    }

    /// How many processes the OOM killer has killed in this group so far.
    ///
    /// v2 counts the kills of the groups below in each ancestor's `memory.events`; v1 counts
    /// a kill only in the victim's own group, so there the groups below are added up (a
    /// container's, which its runtime keeps until it is deleted).
    pub fn oom_kills(&self) -> u64 {
        let Some(file) = &self.oom else {
            return 0;
        };
        let read = |p: &Path| {
            fs::read_to_string(p)
                .ok()
                .and_then(|text| parse_oom_kills(&text))
                .unwrap_or(0)
        };
        match (file.file_name(), file.parent()) {
            (Some(name), Some(dir)) if name == "memory.oom_control" => {
                subtree(dir).iter().map(|d| read(&d.join(name))).sum()
            }
            _ => read(file),
        }
    }

    /// Removes the group's directories. Fails while processes remain.
    ///
    /// Groups below it (what a runtime killed before it could clean up left) go first,
    /// deepest first.
    pub fn remove(&self) -> Result<(), LimitsError> {
        let all: Vec<PathBuf> = self.dirs.iter().flat_map(|d| subtree(d)).collect();
        for dir in all.iter().rev() {
            match fs::remove_dir(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(LimitsError::Io {
                        path: dir.clone(),
                        source,
                    });
                }
            }
        }
        Ok(())
    }
}

/// `dir` and every directory below it, each parent before its children. Cgroupfs has no
/// links, and a group is at most a few levels deep; a runaway depth is cut at 16.
fn subtree(dir: &Path) -> Vec<PathBuf> {
    let mut all = vec![(dir.to_owned(), 0)];
    let mut i = 0;
    while i < all.len() {
        let (here, depth) = all[i].clone();
        i += 1;
        if depth >= 16 {
            continue;
        }
        let Ok(entries) = fs::read_dir(&here) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                all.push((entry.path(), depth + 1));
            }
        }
    }
    all.into_iter().map(|(d, _)| d).collect()
}

/// Why a workload's group could not be set up. The instance is not started; its restart
/// policy decides whether to try again.
#[derive(Debug, thiserror::Error)]
pub enum LimitsError {
    /// Creating or writing a cgroupfs file failed: no permission, a controller the kernel
    /// lacks, or a value it refuses.
    #[error("cgroup {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// `cpu.max` for a quota in thousandths of a CPU: 250 -> `25000 100000`.
pub fn cpu_max(cpu_millis: Option<u32>) -> String {
    match cpu_quota_us(cpu_millis) {
        Some(q) => format!("{q} {CPU_PERIOD_US}"),
        None => format!("max {CPU_PERIOD_US}"),
    }
}

/// Microseconds of CPU per period, at least 1 ms (the kernel's minimum quota).
pub fn cpu_quota_us(cpu_millis: Option<u32>) -> Option<u64> {
    cpu_millis.map(|m| (u64::from(m) * CPU_PERIOD_US / 1000).max(1000))
}

/// `oom_kill N` from `memory.events` (v2) or `memory.oom_control` (v1).
pub fn parse_oom_kills(text: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut words = l.split_whitespace();
        if words.next() == Some("oom_kill") {
            words.next()?.parse().ok()
        } else {
            None
        }
    })
}

/// The delegated v2 group this daemon should use as its root, with the daemon already moved
/// into its leaf; `None` to use the hierarchy root (or nothing).
fn delegated_group(root: &Path, self_cgroup: &[u8]) -> Option<PathBuf> {
    let own = match own_v2_group(self_cgroup) {
        Ok(own) => own,
        Err(reason) => {
            warn!(
                reason,
                "cannot tell this daemon's own control group; not using it"
            );
            return None;
        }
    };
    let delegated = match own.split_last() {
        Some((&DAEMON_LEAF, parent)) => parent,
        _ => &own[..],
    };
    if delegated.is_empty() {
        return None;
    }
    // Only plain components (checked by `own_v2_group`), so this stays under `root`.
    let group: PathBuf = delegated.iter().fold(root.to_owned(), |dir, c| dir.join(c));
    if let Err(reason) = check_delegated(&group) {
        info!(group = %group.display(), reason, "own control group not used");
        return None;
    }
    let leaf = group.join(DAEMON_LEAF);
    // Writing a pid to the cgroup.procs of the group it is already in is a no-op, so a
    // daemon that is already in its leaf passes through here unchanged.
    let moved = mkdir(&leaf)
        .and_then(|()| write(&leaf.join("cgroup.procs"), &std::process::id().to_string()));
    match moved {
        Ok(()) => {
            info!(group = %group.display(), "using the delegated control group");
            Some(group)
        }
        Err(error) => {
            warn!(%error, "cannot move the daemon into its own leaf group; not using it");
            None
        }
    }
}

/// Why `group` is not ours to use as the root, if it is not.
fn check_delegated(group: &Path) -> Result<(), &'static str> {
    let writable = |name: &str| access(&group.join(name), AccessFlags::W_OK).is_ok();
    if !group.join("cgroup.controllers").is_file() {
        return Err("not a v2 control group");
    }
    if !writable("cgroup.subtree_control") || !writable("cgroup.procs") {
        return Err("not delegated: cgroup.subtree_control or cgroup.procs is not writable");
    }
    let procs = fs::read_to_string(group.join("cgroup.procs"))
        .map_err(|_| "cgroup.procs is not readable")?;
    let me = std::process::id().to_string();
    // Another process in it would keep the controllers from being enabled once we left, and
    // means the group is not the daemon's alone (a login session's scope).
    if procs.split_whitespace().any(|pid| pid != me) {
        return Err("other processes are in it");
    }
    Ok(())
}

/// The components of this process's v2 group below the hierarchy root (none at the root),
/// from the contents of `/proc/self/cgroup`. Only plain names pass, so joining them to the
/// root never leaves it.
fn own_v2_group(self_cgroup: &[u8]) -> Result<Vec<&str>, &'static str> {
    if self_cgroup.len() > MAX_SELF_CGROUP {
        return Err("/proc/self/cgroup is too long");
    }
    let mut lines = self_cgroup
        .split(|&b| b == b'\n')
        .filter_map(|line| line.strip_prefix(b"0::"));
    let path = lines.next().ok_or("no `0::` line in /proc/self/cgroup")?;
    if lines.next().is_some() {
        return Err("more than one `0::` line in /proc/self/cgroup");
    }
    if path.len() > MAX_CGROUP_PATH {
        return Err("the cgroup path is too long");
    }
    let path = std::str::from_utf8(path).map_err(|_| "the cgroup path is not UTF-8")?;
    // The kernel's mark for a group removed while we are in it.
    if path.ends_with(" (deleted)") {
        return Err("the group has been removed");
    }
    let relative = path
        .strip_prefix('/')
        .ok_or("the cgroup path is not absolute")?;
    if relative.is_empty() {
        return Ok(Vec::new());
    }
    relative
        .split('/')
        .map(|part| match part {
            "" | "." | ".." => Err("the cgroup path has an empty, `.` or `..` component"),
            _ if part.contains('\0') => Err("the cgroup path has a NUL byte"),
            _ => Ok(part),
        })
        .collect()
}

/// At most `limit` bytes of `path`.
fn read_bounded(path: &Path, limit: usize) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    fs::File::open(path)?
        .take(u64::try_from(limit).unwrap_or(u64::MAX))
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

fn write(path: &Path, value: &str) -> Result<(), LimitsError> {
    // `create` is a no-op on cgroupfs, whose files always exist; it lets a fake tree work.
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .and_then(|mut f| f.write_all(value.as_bytes()))
        .map_err(|source| LimitsError::Io {
            path: path.to_owned(),
            source,
        })
}

fn mkdir(path: &Path) -> Result<(), LimitsError> {
    fs::create_dir_all(path).map_err(|source| LimitsError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Enables `wanted` controllers for the children of `dir`, writing only what is missing.
fn enable_controllers(dir: &Path, wanted: &[&str]) -> Result<(), LimitsError> {
    let control = dir.join("cgroup.subtree_control");
    let enabled = fs::read_to_string(&control).unwrap_or_default();
    let has = |c: &str| {
        enabled
            .split_whitespace()
            .any(|e| e.trim_start_matches('+') == c)
    };
    let missing: Vec<String> = wanted
        .iter()
        .filter(|c| !has(c))
        .map(|c| format!("+{c}"))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    write(&control, &missing.join(" "))
}

/// The controllers the supervisor uses that the kernel offers at `root`.
fn v2_controllers(root: &Path) -> Vec<&'static str> {
    let available = fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
    ["cpu", "memory"]
        .into_iter()
        .filter(|c| available.split_whitespace().any(|a| a == *c))
        .collect()
}

fn prepare_v2(
    root: &Path,
    parent: &str,
    workload: &str,
    res: &Resources,
) -> Result<Prepared, LimitsError> {
    let wanted = v2_controllers(root);
    let has = |c: &str| wanted.contains(&c);

    let mut notes = Vec::new();
    // Each ancestor must hand the controllers down; the root is exempt from the rule that a
    // group with processes cannot, and `parent` never holds processes itself.
    enable_controllers(root, &wanted)?;
    let mut dir = root.to_owned();
    for part in Path::new(parent).components() {
        dir.push(part);
        mkdir(&dir)?;
        enable_controllers(&dir, &wanted)?;
    }
    let group = dir.join(workload);
    mkdir(&group)?;

    let mut rlimit_as = None;
    if has("memory") {
        let max = res
            .memory_bytes
            .map_or_else(|| "max".to_owned(), |b| b.to_string());
        write(&group.join("memory.max"), &max)?;
        let swap = group.join("memory.swap.max");
        if swap.is_file() {
            write(
                &swap,
                if res.memory_bytes.is_some() {
                    "0"
                } else {
                    "max"
                },
            )?;
        }
    } else if res.memory_bytes.is_some() {
        // Raspberry Pi kernels ship with the memory controller off unless cmdline.txt has
        // `cgroup_enable=memory`: fall back to an address-space limit rather than none.
        rlimit_as = res.memory_bytes;
        notes.push(
            "memory limit as RLIMIT_AS: the kernel's memory controller is disabled".to_owned(),
        );
    }
    if has("cpu") {
        write(&group.join("cpu.max"), &cpu_max(res.cpu_millis))?;
    } else if res.cpu_millis.is_some() {
        notes.push("cpu limit not enforced: the kernel's cpu controller is disabled".to_owned());
    }
    Ok(Prepared {
        group: Some(Group {
            oom: has("memory").then(|| group.join("memory.events")),
            procs: group.clone(),
            dirs: vec![group],
        }),
        rlimit_as,
        notes,
    })
}

fn prepare_v1(
    root: &Path,
    parent: &str,
    workload: &str,
    res: &Resources,
) -> Result<Prepared, LimitsError> {
    let memory = root.join("memory").join(parent).join(workload);
    mkdir(&memory)?;
    // The group may be left over with other values: set every limit, unlimited included.
    // memsw must stay >= limit_in_bytes at every step.
    let memsw = memory.join("memory.memsw.limit_in_bytes");
    if memsw.is_file() {
        write(&memsw, "-1")?;
    }
    let limit = res
        .memory_bytes
        .map_or_else(|| "-1".to_owned(), |b| b.to_string());
    write(&memory.join("memory.limit_in_bytes"), &limit)?;
    if memsw.is_file() && res.memory_bytes.is_some() {
        write(&memsw, &limit)?;
    }

    let mut dirs = vec![memory.clone()];
    let mut notes = Vec::new();
    let cpu_root = root.join("cpu");
    if cpu_root.join("cgroup.procs").is_file() {
        let cpu = cpu_root.join(parent).join(workload);
        mkdir(&cpu)?;
        write(&cpu.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
        let quota = cpu_quota_us(res.cpu_millis).map_or_else(|| "-1".to_owned(), |q| q.to_string());
        write(&cpu.join("cpu.cfs_quota_us"), &quota)?;
        dirs.push(cpu);
    } else if res.cpu_millis.is_some() {
        notes.push("cpu limit not enforced: no cpu cgroup hierarchy".to_owned());
    }
    Ok(Prepared {
        group: Some(Group {
            oom: Some(memory.join("memory.oom_control")),
            procs: memory,
            dirs,
        }),
        rlimit_as: None,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_max_is_quota_and_period() {
        assert_eq!(cpu_max(Some(250)), "25000 100000");
        assert_eq!(cpu_max(Some(1000)), "100000 100000");
        assert_eq!(cpu_max(Some(2500)), "250000 100000");
        assert_eq!(cpu_max(Some(1)), "1000 100000");
        assert_eq!(cpu_max(None), "max 100000");
    }

    #[test]
    fn oom_kill_counters() {
        let v2 = "low 0\nhigh 0\nmax 12\noom 2\noom_kill 2\noom_group_kill 0\n";
        assert_eq!(parse_oom_kills(v2), Some(2));
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n";
        assert_eq!(parse_oom_kills(v1), Some(1));
        assert_eq!(parse_oom_kills("oom 3\n"), None);
    }

    fn fake_v2(controllers: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("cgroup.controllers"), controllers).expect("write");
        fs::write(dir.path().join("cgroup.subtree_control"), "").expect("write");
        dir
    }

    #[test]
    fn detects_each_layout() {
        let v2 = fake_v2("cpu memory\n");
        assert_eq!(
            LimitsBackend::detect_at(v2.path()),
            LimitsBackend::CgroupV2 {
                root: v2.path().to_owned()
            }
        );
        let v1 = tempfile::tempdir().expect("tempdir");
        fs::create_dir_all(v1.path().join("memory")).expect("mkdir");
        fs::write(v1.path().join("memory/cgroup.procs"), "").expect("write");
        assert_eq!(
            LimitsBackend::detect_at(v1.path()),
            LimitsBackend::CgroupV1 {
                root: v1.path().to_owned()
            }
        );
        let none = tempfile::tempdir().expect("tempdir");
        assert_eq!(LimitsBackend::detect_at(none.path()), LimitsBackend::Rlimit);
        assert_eq!(LimitsBackend::Rlimit.name(), "rlimit");
    }

    #[test]
    fn v2_without_a_memory_controller_falls_back_to_rlimit_for_memory() {
        let root = fake_v2("cpu\n");
        let backend = LimitsBackend::CgroupV2 {
            root: root.path().to_owned(),
        };
        let res = Resources {
            cpu_millis: Some(500),
            memory_bytes: Some(64 << 20),
        };
        let p = backend.prepare("edge-node", "w", &res).expect("prepare");
        assert_eq!(p.rlimit_as, Some(64 << 20));
        assert_eq!(p.notes.len(), 1);
        let group = root.path().join("edge-node/w");
        assert!(!group.join("memory.max").exists());
        assert_eq!(
            fs::read_to_string(group.join("cpu.max")).expect("cpu.max"),
            "50000 100000"
        );
        assert_eq!(
            fs::read_to_string(root.path().join("cgroup.subtree_control")).expect("read"),
            "+cpu"
        );
    }

    #[test]
    fn already_enabled_controllers_are_not_written_again() {
        let root = fake_v2("cpu memory io\n");
        fs::write(root.path().join("cgroup.subtree_control"), "cpu memory\n").expect("write");
        let backend = LimitsBackend::CgroupV2 {
            root: root.path().to_owned(),
        };
        backend
            .prepare("edge-node", "w", &Resources::default())
            .expect("prepare");
        assert_eq!(
            fs::read_to_string(root.path().join("cgroup.subtree_control")).expect("read"),
            "cpu memory\n"
        );
        let group = root.path().join("edge-node/w");
        assert_eq!(
            fs::read_to_string(group.join("memory.max")).expect("read"),
            "max"
        );
        assert_eq!(
            fs::read_to_string(group.join("cpu.max")).expect("read"),
            "max 100000"
        );
    }

    #[test]
    fn an_unusable_hierarchy_fails_before_any_workload() {
        let root = fake_v2("cpu memory\n");
        // A parent that cannot be created (a file is in the way).
        fs::write(root.path().join("edge-node"), "").expect("write");
        let backend = LimitsBackend::CgroupV2 {
            root: root.path().to_owned(),
        };
        assert!(backend.prepare_parent("edge-node").is_err());
        assert!(backend.prepare_parent("other").is_ok());
        assert!(root.path().join("other").is_dir());
    }

    #[test]
    fn rlimit_says_cpu_is_not_enforced() {
        let res = Resources {
            cpu_millis: Some(250),
            memory_bytes: Some(32 << 20),
        };
        let p = LimitsBackend::Rlimit
            .prepare("edge-node", "w", &res)
            .expect("prepare");
        assert!(p.group.is_none());
        assert_eq!(p.rlimit_as, Some(32 << 20));
        assert!(
            p.notes[0].contains("cpu limit not enforced"),
            "{:?}",
            p.notes
        );
    }

    const SERVICE: &str = "system.slice/edge-node.service";

    fn me() -> String {
        std::process::id().to_string()
    }

    /// A v2 group at `dir` (not the hierarchy root) holding `procs`, that we may write.
    fn fake_group(dir: &Path, procs: &str) {
        fs::create_dir_all(dir).expect("mkdir");
        fs::write(dir.join("cgroup.controllers"), "cpu memory pids\n").expect("write");
        fs::write(dir.join("cgroup.subtree_control"), "").expect("write");
        fs::write(dir.join("cgroup.procs"), procs).expect("write");
    }

    fn read(path: &Path) -> String {
        fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    #[test]
    fn a_delegated_service_group_becomes_the_root() {
        let root = fake_v2("cpuset cpu io memory hugetlb pids rdma misc\n");
        let service = root.path().join(SERVICE);
        fake_group(&service, &format!("{}\n", me()));
        let self_cgroup = format!("1:name=systemd:/{SERVICE}\n0::/{SERVICE}\n");

        let backend = LimitsBackend::detect_from(root.path(), self_cgroup.as_bytes());
        assert_eq!(
            backend,
            LimitsBackend::CgroupV2 {
                root: service.clone()
            }
        );
        assert_eq!(backend.kind(), edge_proto::LimitsKind::CgroupV2);
        assert_eq!(backend.name(), "cgroup-v2");
        assert_eq!(read(&service.join("daemon/cgroup.procs")), me());
        // Detection only moves the daemon; controllers come after, once the group is empty.
        assert_eq!(read(&service.join("cgroup.subtree_control")), "");

        backend.prepare_parent("edge-node").expect("prepare_parent");
        assert_eq!(
            read(&service.join("cgroup.subtree_control")),
            "+cpu +memory"
        );
        assert_eq!(
            read(&service.join("edge-node/cgroup.subtree_control")),
            "+cpu +memory"
        );
        let res = Resources {
            cpu_millis: Some(250),
            memory_bytes: Some(32 << 20),
        };
        let p = backend.prepare("edge-node", "w", &res).expect("prepare");
        assert!(p.group.is_some() && p.notes.is_empty(), "{p:?}");
        let group = service.join("edge-node/w");
        assert_eq!(read(&group.join("memory.max")), "33554432");
        assert_eq!(read(&group.join("cpu.max")), "25000 100000");
        assert_eq!(backend.group_dirs("edge-node", "w"), vec![group]);
        assert_eq!(backend.existing_groups("edge-node"), vec!["w".to_owned()]);
        // Outside the service's group is systemd's: nothing there is touched.
        assert_eq!(read(&root.path().join("cgroup.subtree_control")), "");
        assert!(!root.path().join("edge-node").exists());
    }

    #[test]
    fn a_daemon_already_in_its_leaf_uses_the_parent() {
        let root = fake_v2("cpu memory\n");
        let service = root.path().join(SERVICE);
        fake_group(&service, &me());
        let first = LimitsBackend::detect_from(root.path(), format!("0::/{SERVICE}\n").as_bytes());

        // As the kernel would show it once the daemon has moved, or after a re-exec.
        fs::write(service.join("cgroup.procs"), "").expect("write");
        fs::write(service.join("daemon/cgroup.controllers"), "cpu memory\n").expect("write");
        let again =
            LimitsBackend::detect_from(root.path(), format!("0::/{SERVICE}/daemon\n").as_bytes());
        assert_eq!(first, again);
        assert_eq!(
            again,
            LimitsBackend::CgroupV2 {
                root: service.clone()
            }
        );
        assert_eq!(read(&service.join("daemon/cgroup.procs")), me());
        assert!(!service.join("daemon/daemon").exists());
    }

    #[test]
    fn a_daemon_at_the_hierarchy_root_keeps_the_root_layout() {
        let root = fake_v2("cpu memory\n");
        fs::write(root.path().join("cgroup.procs"), me()).expect("write");
        let expected = LimitsBackend::CgroupV2 {
            root: root.path().to_owned(),
        };
        assert_eq!(LimitsBackend::detect_from(root.path(), b"0::/\n"), expected);
        // A leaf directly under the hierarchy root names no delegated group.
        assert_eq!(
            LimitsBackend::detect_from(root.path(), b"0::/daemon"),
            expected
        );
        assert!(!root.path().join("daemon").exists());
        expected
            .prepare("edge-node", "w", &Resources::default())
            .expect("prepare");
        assert!(root.path().join("edge-node/w/cpu.max").is_file());
    }

    #[test]
    fn a_group_that_is_not_ours_alone_is_left_to_its_owner() {
        let root = fake_v2("cpu memory\n");
        let at_root = LimitsBackend::CgroupV2 {
            root: root.path().to_owned(),
        };
        // A login session's scope: root may write it, but the shell and sudo are in it too.
        let scope = root
            .path()
            .join("user.slice/user-1000.slice/session-3.scope");
        fake_group(&scope, &format!("812\n901\n{}\n", me()));
        let line = b"0::/user.slice/user-1000.slice/session-3.scope\n";
        assert_eq!(LimitsBackend::detect_from(root.path(), line), at_root);
        assert!(!scope.join("daemon").exists());

        // A service without Delegate=yes, run as a user who may not write its group (a
        // missing file is unwritable even for root).
        let service = root.path().join(SERVICE);
        fake_group(&service, &me());
        fs::remove_file(service.join("cgroup.subtree_control")).expect("rm");
        let line = format!("0::/{SERVICE}\n");
        assert_eq!(
            LimitsBackend::detect_from(root.path(), line.as_bytes()),
            at_root
        );
        assert!(!service.join("daemon").exists());

        // Neither that group nor the hierarchy root is writable: rlimits.
        fs::remove_file(root.path().join("cgroup.subtree_control")).expect("rm");
        assert_eq!(
            LimitsBackend::detect_from(root.path(), line.as_bytes()),
            LimitsBackend::Rlimit
        );
        assert!(!service.join("daemon").exists());
    }

    #[test]
    fn v1_ignores_the_v2_line() {
        let v1 = tempfile::tempdir().expect("tempdir");
        fs::create_dir_all(v1.path().join("memory")).expect("mkdir");
        fs::write(v1.path().join("memory/cgroup.procs"), "").expect("write");
        let line = format!("4:memory:/{SERVICE}\n0::/{SERVICE}\n");
        assert_eq!(
            LimitsBackend::detect_from(v1.path(), line.as_bytes()),
            LimitsBackend::CgroupV1 {
                root: v1.path().to_owned()
            }
        );
        assert!(!v1.path().join(SERVICE).exists());
    }

    #[test]
    fn a_hostile_proc_self_cgroup_never_leads_outside_the_root() {
        let base = tempfile::tempdir().expect("tempdir");
        let root = base.path().join("cgroupfs");
        fs::create_dir(&root).expect("mkdir");
        fs::write(root.join("cgroup.controllers"), "cpu memory\n").expect("write");
        fs::write(root.join("cgroup.subtree_control"), "").expect("write");
        // Both would pass as delegated groups if a path reached them.
        let service = root.join(SERVICE);
        fake_group(&service, &me());
        let outside = base.path().join("outside");
        fake_group(&outside, &me());

        let long = format!("0::/{}{SERVICE}\n", "a/".repeat(MAX_CGROUP_PATH / 2));
        let huge = format!("{}0::/{SERVICE}\n", "1:cpu:/\n".repeat(MAX_SELF_CGROUP / 8));
        let hostile: Vec<&[u8]> = vec![
            b"",
            b"1:name=systemd:/system.slice/edge-node.service\n",
            b"0::/../outside\n",
            b"0::/system.slice/../../outside\n",
            b"0::/system.slice/edge-node.service/../../../outside\n",
            b"0::../outside\n",
            b"0::outside\n",
            b"0::/system.slice/./edge-node.service\n",
            b"0::/system.slice//edge-node.service\n",
            b"0::/system.slice/edge-node.service/\n",
            b"0::/system.slice/edge-node.service (deleted)\n",
            b"0::/system.slice/edge-node\xff.service\n",
            b"0::/system.slice/edge-node.service\0/../../outside\n",
            b"0::/../outside\n0::/system.slice/edge-node.service\n",
            long.as_bytes(),
            huge.as_bytes(),
        ];
        for self_cgroup in hostile {
            let shown: String = String::from_utf8_lossy(self_cgroup)
                .chars()
                .take(80)
                .collect();
            assert_eq!(
                LimitsBackend::detect_from(&root, self_cgroup),
                LimitsBackend::CgroupV2 { root: root.clone() },
                "{shown:?}"
            );
            assert!(!outside.join("daemon").exists(), "{shown:?}");
            assert!(!service.join("daemon").exists(), "{shown:?}");
        }
        let mut left: Vec<_> = fs::read_dir(base.path())
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        left.sort();
        assert_eq!(left, ["cgroupfs", "outside"]);
    }

    #[test]
    fn own_group_components() {
        assert_eq!(own_v2_group(b"0::/\n"), Ok(vec![]));
        assert_eq!(
            own_v2_group(b"2:cpu:/x\n0::/system.slice/edge-node.service"),
            Ok(vec!["system.slice", "edge-node.service"])
        );
        assert!(own_v2_group(b"10::/x\n").is_err());
        assert!(own_v2_group(b"0::/a/../b\n").is_err());
    }
}
