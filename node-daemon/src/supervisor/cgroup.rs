//! Resource limits and process tracking: cgroup v2, cgroup v1, or rlimits where the kernel
//! offers neither (or the daemon may not use them).
//!
//! Every workload instance gets its own control group, `PARENT/WORKLOAD` (the parent is
//! `edge-node` unless configured), created before the process may run and removed once it
//! is gone. The group is also how the supervisor finds everything an instance started,
//! including processes that left its process group: a stop kills the whole group.
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
//! This module never signals or waits for a process; it only reads and writes cgroupfs.

use super::spec::Resources;
use nix::unistd::{AccessFlags, access};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The CFS period used for CPU quotas, in microseconds.
pub const CPU_PERIOD_US: u64 = 100_000;

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

    /// What this system offers at `/sys/fs/cgroup`, and may be used by this process.
    pub fn detect() -> Self {
        Self::detect_at(Path::new("/sys/fs/cgroup"))
    }

    /// As [`detect`](Self::detect), for a cgroupfs mounted at `root` (tests pass a fake tree).
    ///
    /// v2 needs `cgroup.controllers` at the root and a writable `cgroup.subtree_control`; v1
    /// needs a writable `memory` hierarchy (hybrid systems, with an empty v2 hierarchy beside
    /// the v1 controllers, are v1). Anything else, including a daemon that is not allowed to
    /// write there, is `Rlimit`.
    pub fn detect_at(root: &Path) -> Self {
        let writable = |p: &Path| access(p, AccessFlags::W_OK).is_ok();
        if root.join("cgroup.controllers").is_file()
            && writable(&root.join("cgroup.subtree_control"))
        {
            return Self::CgroupV2 {
                root: root.to_owned(),
            };
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
    pub fn pids(&self) -> Vec<i32> {
        let Ok(text) = fs::read_to_string(self.procs.join("cgroup.procs")) else {
            return Vec::new();
        };
        text.lines()
            .filter_map(|l| l.trim().parse::<i32>().ok())
            .filter(|&pid| pid > 0 && super::process::is_alive(pid))
            .collect()
    }

    /// Uses v2's `cgroup.kill` where the kernel has it (5.14+): it kills every process in
    /// the group at once, including ones forking right now. Returns whether it did.
    pub fn kill_all(&self) -> bool {
        let kill = self.procs.join("cgroup.kill");
        kill.is_file() && write(&kill, "1").is_ok()
    }

    /// How many processes the OOM killer has killed in this group so far.
    pub fn oom_kills(&self) -> u64 {
        self.oom
            .as_ref()
            .and_then(|p| fs::read_to_string(p).ok())
            .and_then(|text| parse_oom_kills(&text))
            .unwrap_or(0)
    }

    /// Removes the group's directories. Fails while processes remain.
    pub fn remove(&self) -> Result<(), LimitsError> {
        for dir in self.dirs.iter().rev() {
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
}
