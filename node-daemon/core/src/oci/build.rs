//! [`runtime_config`]: the image's defaults and the workload's settings merged into a
//! [`RuntimeConfig`], after every check that must pass before anything runs.

use super::runtime::{
    Capabilities, Cpu, DeviceRule, Linux, Memory, Mount, Namespace, Process, ProcessUser,
    Resources, Rlimit, Root, RuntimeConfig,
};
use super::seccomp::default_seccomp;
use super::user::User;
use crate::spec::MIN_MEMORY_BYTES;
use edge_proto::field::shown;
use std::collections::{BTreeMap, BTreeSet};

/// The runtime-spec version the config follows: runc 1.1 and crun accept it.
pub const OCI_VERSION: &str = "1.0.2";

/// The `PATH` a process gets when neither the image nor the workload sets one (Docker's).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The size of each tmpfs the node adds (`/tmp`, the writable paths) unless the settings say
/// otherwise. What a tmpfs holds is memory charged to the container.
pub const DEFAULT_TMPFS_BYTES: u64 = 64 << 20;

/// The longest argument or `NAME=value` entry: the kernel's `MAX_ARG_STRLEN` (32 pages)
/// counts the terminating NUL.
pub const MAX_ARG_BYTES: usize = 128 * 1024 - 1;
/// The most arguments, entrypoint and command together.
pub const MAX_ARGS: usize = 4096;
/// The most environment variables, in each source and merged.
pub const MAX_ENV: usize = 4096;
/// The arguments and environment together, NULs counted: half of the 2 MiB that `execve`
/// takes with the default 8 MiB stack, so that a valid config never fails at exec.
pub const MAX_EXEC_BYTES: usize = 1 << 20;
/// The longest path: `PATH_MAX` counts the terminating NUL.
pub const MAX_PATH_BYTES: usize = 4095;
/// The most writable paths a container may ask for.
pub const MAX_WRITABLE_PATHS: usize = 32;
/// A thousand CPUs; more is a typo.
pub const MAX_CPU_MILLIS: u32 = 1_000_000;
/// The kernel refuses a CFS quota below one millisecond.
pub const MIN_CPU_QUOTA_US: i64 = 1_000;
/// The CFS period: with 100 ms, `quota = cpu_millis * 100` microseconds.
const CPU_PERIOD_US: u64 = 100_000;
/// The kernel's `HOST_NAME_MAX`.
const MAX_HOSTNAME_BYTES: usize = 64;
/// The smallest tmpfs: one page. `size=0` would mean no limit at all.
const MIN_TMPFS_BYTES: u64 = 4096;

/// Open files: a soft limit of 1024 keeps `select()`-based code safe; the hard limit
/// ([`ContainerSettings::nofile_hard`], by default [`DEFAULT_NOFILE_HARD`]) lets a service
/// that needs more raise its own (Go and the JVM do so at startup, nginx with
/// `worker_rlimit_nofile`) without a node-wide default of a million.
pub const NOFILE_SOFT: u64 = 1024;
pub const DEFAULT_NOFILE_HARD: u64 = 65_536;
/// The kernel's default `fs.nr_open`: no process may have more open files.
pub const MAX_NOFILE_HARD: u64 = 1 << 20;

/// The namespaces a container gets its own of, and only these.
///
/// No `network`: the container shares the host's network, so the node's proxy reaches the
/// workload's ports on the node's addresses and nothing needs a bridge, NAT or CNI.
/// No `user`: the layers are unpacked once into a cache shared by every container of an image,
/// with the files owned by the image's own ids. A user namespace would map those ids to a
/// range on the host, and files owned by unmapped ids show up as `nobody`; making it work
/// means a chown'd copy of every layer per mapping (or idmapped mounts, kernel 5.12 and later
/// and runc 1.2). Until then, a container's root is the host's root with a reduced capability
/// set, `noNewPrivileges` and the seccomp profile.
/// No `cgroup`: runc 1.1 mounts the container's own cgroup at `/sys/fs/cgroup` without it.
pub const NAMESPACES: &[&str] = &["pid", "mount", "ipc", "uts"];

/// The capabilities of the container's process (bounding = effective = permitted; no
/// ambient set, so a process that is not root has none after exec). Docker's default set,
/// without `CAP_NET_RAW`, `CAP_MKNOD` and `CAP_SETFCAP`:
/// - `CAP_NET_RAW` makes raw and packet sockets: on the host's network, which containers
///   share here, that is ARP and DNS spoofing of the whole node. Ping, a service's one
///   common use, works through ICMP datagram sockets (`net.ipv4.ping_group_range`).
/// - `CAP_MKNOD` makes device nodes; the device cgroup refuses to open them anyway, and a
///   service never needs one.
/// - `CAP_SETFCAP` sets file capabilities, which happens when an image is built, not when
///   it runs.
pub const CAPABILITIES: &[&str] = &[
    // Change a file's owner: entrypoints chown their data directory before dropping to the
    // service's user.
    "CAP_CHOWN",
    // Read and write files whatever their mode bits, as root does outside a container.
    "CAP_DAC_OVERRIDE",
    // Change the mode and times of files owned by another user (chmod, touch): same reason.
    "CAP_FOWNER",
    // Keep the setgid bit of files root writes into a setgid directory.
    "CAP_FSETID",
    // Signal processes of other users: an init (tini, dumb-init, a shell script) forwarding
    // SIGTERM to a service that runs as its own user.
    "CAP_KILL",
    // Change user and group: entrypoints that start as root and drop to a service user (gosu,
    // su-exec, nginx and postgres workers).
    "CAP_SETGID",
    "CAP_SETUID",
    // Drop capabilities from the bounding set: what a process that drops privileges does.
    "CAP_SETPCAP",
    // Bind ports below 1024: on the host's network, a service on :80 needs it.
    "CAP_NET_BIND_SERVICE",
    // chroot: daemons that jail their workers (sshd's privilege separation, bind, postfix).
    "CAP_SYS_CHROOT",
    // Write to the audit log: su, sshd and login-like programs fail without it.
    "CAP_AUDIT_WRITE",
];

/// `/proc` and `/sys` entries hidden from the container: Docker's list (`runc spec`'s plus
/// `/sys/devices/virtual/powercap`, whose energy counters leak what other processes compute).
const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// `/proc` entries the container may read but not write, as `runc spec` writes them.
const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The architecture of the node, hence of its containers and its seccomp profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    X86_64,
    Aarch64,
    /// 32-bit ARM (armv6, armv7).
    Arm,
}

impl Arch {
    /// From Rust's name of the target architecture (`std::env::consts::ARCH`): `x86_64`,
    /// `aarch64` or `arm`; `None` for any other.
    pub fn from_target(arch: &str) -> Option<Self> {
        match arch {
            "x86_64" => Some(Self::X86_64),
            "aarch64" => Some(Self::Aarch64),
            "arm" => Some(Self::Arm),
            _ => None,
        }
    }

    /// The ABIs a process may call the kernel with on this architecture: the 64-bit kernels
    /// run 32-bit programs too, and a filter must cover every ABI or a process could call
    /// through the one it leaves out.
    pub fn seccomp_architectures(self) -> &'static [&'static str] {
        match self {
            Self::X86_64 => &["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
            Self::Aarch64 => &["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
            Self::Arm => &["SCMP_ARCH_ARM"],
        }
    }
}

/// What the image's config says about running it (`config.config` in the image's config
/// JSON), as the shell read it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageDefaults {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `NAME=value`.
    pub env: Vec<String>,
    /// Empty means none.
    pub working_dir: Option<String>,
    /// `name`, `uid`, `name:group`, ...: see [`resolve_user`](super::resolve_user).
    pub user: Option<String>,
    /// `SIGTERM`, `TERM`, `15`, `SIGRTMIN+3`: see [`ImageDefaults::stop_signal_number`].
    pub stop_signal: Option<String>,
}

impl ImageDefaults {
    /// The signal that asks the container's process to stop, as a number: the image's
    /// `StopSignal`, else `SIGTERM` (15). Names are case-insensitive with or without `SIG`,
    /// numbers 1 to 64, and `RTMIN+n`/`RTMAX-n` as glibc numbers them (RTMIN is 34). The
    /// numbers are those of x86, ARM and aarch64, which agree.
    pub fn stop_signal_number(&self) -> Result<i32, StopSignalError> {
        let Some(raw) = self.stop_signal.as_deref().filter(|s| !s.is_empty()) else {
            return Ok(SIGTERM);
        };
        parse_signal(raw).ok_or_else(|| StopSignalError::Unknown {
            signal: shown(raw).to_string(),
        })
    }
}

/// Why an image's `StopSignal` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StopSignalError {
    /// Not a signal name or a number from 1 to 64.
    #[error("image StopSignal {signal} is not a signal")]
    Unknown { signal: String },
}

const SIGTERM: i32 = 15;
const SIGRTMIN: i32 = 34;
const SIGRTMAX: i32 = 64;

/// The standard signals, by their names without `SIG`.
const SIGNALS: &[(&str, i32)] = &[
    ("HUP", 1),
    ("INT", 2),
    ("QUIT", 3),
    ("ILL", 4),
    ("TRAP", 5),
    ("ABRT", 6),
    ("IOT", 6),
    ("BUS", 7),
    ("FPE", 8),
    ("KILL", 9),
    ("USR1", 10),
    ("SEGV", 11),
    ("USR2", 12),
    ("PIPE", 13),
    ("ALRM", 14),
    ("TERM", 15),
    ("STKFLT", 16),
    ("CHLD", 17),
    ("CONT", 18),
    ("STOP", 19),
    ("TSTP", 20),
    ("TTIN", 21),
    ("TTOU", 22),
    ("URG", 23),
    ("XCPU", 24),
    ("XFSZ", 25),
    ("VTALRM", 26),
    ("PROF", 27),
    ("WINCH", 28),
    ("IO", 29),
    ("POLL", 29),
    ("PWR", 30),
    ("SYS", 31),
    ("RTMIN", SIGRTMIN),
    ("RTMAX", SIGRTMAX),
];

fn parse_signal(raw: &str) -> Option<i32> {
    if raw.len() > 16 {
        return None;
    }
    let upper = raw.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    let small = |s: &str| -> Option<i32> {
        if s.is_empty() || s.len() > 2 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    let signal = if let Some(n) = small(name) {
        n
    } else if let Some(offset) = name.strip_prefix("RTMIN+") {
        SIGRTMIN + small(offset)?
    } else if let Some(offset) = name.strip_prefix("RTMAX-") {
        SIGRTMAX - small(offset)?
    } else {
        SIGNALS.iter().find(|(n, _)| *n == name)?.1
    };
    (1..=SIGRTMAX).contains(&signal).then_some(signal)
}

/// A host directory bind-mounted read-only into the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretsMount {
    /// Absolute, on the host.
    pub host_dir: String,
    /// Absolute, in the container.
    pub container_dir: String,
}

/// What the workload and the node decide about one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSettings {
    /// The workload's args. When given they replace the image's `Cmd` (even when empty); the
    /// image's `Entrypoint` stays.
    pub args: Option<Vec<String>>,
    /// The workload's environment: overrides the image's variables of the same name.
    pub env: Vec<(String, String)>,
    /// What the node adds (`EDGE_*`): overrides the image's and the workload's.
    pub node_env: Vec<(String, String)>,
    /// Overrides the image's `WorkingDir`. Absolute.
    pub working_dir: Option<String>,
    /// Letters, digits, `-` and `_` in dot-separated labels, at most 64 bytes.
    pub hostname: String,
    /// At least 1 MiB.
    pub memory_bytes: Option<u64>,
    /// Thousandths of a CPU, as a CFS quota over a 100 ms period. Below 10 the quota is the
    /// kernel's minimum of 1 ms, which is 10.
    pub cpu_millis: Option<u32>,
    /// The container's cgroup, absolute (`/edge/NAME`): under the cgroup root for runc's
    /// cgroupfs driver.
    pub cgroups_path: String,
    /// Mount the image's filesystem read-only, with a tmpfs on `/tmp`.
    pub readonly_root: bool,
    /// Directories given an empty tmpfs, owned by the process's user: what a read-only
    /// image still writes (caches, pid files).
    pub writable_paths: Vec<String>,
    /// The size of each tmpfs: `/tmp` and every writable path.
    pub tmpfs_size_bytes: u64,
    /// The hard limit on open files (the soft one is [`NOFILE_SOFT`], or this when lower).
    /// The runtime sets it as the daemon's user: raising it above the daemon's own hard
    /// limit needs `CAP_SYS_RESOURCE` (runc fails with "error setting rlimit type 7:
    /// operation not permitted"), so a daemon without that capability passes at most its own
    /// hard limit. From 1 to [`MAX_NOFILE_HARD`].
    pub nofile_hard: u64,
    /// The node's secrets for this workload, read-only in the container.
    pub secrets: Option<SecretsMount>,
    /// A host file bind-mounted read-only on `/etc/resolv.conf`. The container shares the
    /// host's network, so it resolves names as the host does; most images ship no resolver
    /// configuration of their own.
    pub resolv_conf: Option<String>,
    /// A host file bind-mounted read-only on `/etc/hosts`, for the same reason.
    pub hosts_file: Option<String>,
    /// Install [`default_seccomp`](super::default_seccomp): set it when the runtime
    /// supports seccomp ([`RuntimeFeatures::seccomp_for`](super::RuntimeFeatures::seccomp_for)).
    pub seccomp: bool,
    pub arch: Arch,
}

impl ContainerSettings {
    /// Settings with nothing but the image's defaults: no limits, a writable root, no
    /// seccomp until the runtime is known to support it.
    pub fn new(hostname: impl Into<String>, cgroups_path: impl Into<String>, arch: Arch) -> Self {
        Self {
            args: None,
            env: Vec::new(),
            node_env: Vec::new(),
            working_dir: None,
            hostname: hostname.into(),
            memory_bytes: None,
            cpu_millis: None,
            cgroups_path: cgroups_path.into(),
            readonly_root: false,
            writable_paths: Vec::new(),
            tmpfs_size_bytes: DEFAULT_TMPFS_BYTES,
            nofile_hard: DEFAULT_NOFILE_HARD,
            secrets: None,
            resolv_conf: None,
            hosts_file: None,
            seccomp: false,
            arch,
        }
    }
}

/// Why no runtime config could be made. Each names the field at fault (a settings field, or
/// the image's `Entrypoint`, `Cmd`, `Env` or `WorkingDir`); none is worth retrying unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Neither the image's `Entrypoint` and `Cmd` nor the workload's args give a command.
    #[error("no command: the image has no Entrypoint or Cmd and the workload gives no args")]
    NoCommand,
    /// One argument holds a NUL byte or is longer than [`MAX_ARG_BYTES`], or the command
    /// itself is an empty string.
    #[error("{field}[{index}]: {reason}")]
    Arg {
        field: &'static str,
        index: usize,
        reason: &'static str,
    },
    /// More than [`MAX_ARGS`] arguments, entrypoint and command together.
    #[error("{count} arguments; at most {MAX_ARGS} are allowed")]
    TooManyArgs { count: usize },
    /// An environment variable's name is empty or holds `=` or NUL, its value holds NUL,
    /// the entry is longer than [`MAX_ARG_BYTES`], or an image entry has no `=`.
    #[error("{field} variable {name}: {reason}")]
    Env {
        field: &'static str,
        name: String,
        reason: &'static str,
    },
    /// More than [`MAX_ENV`] variables in one source, or merged.
    #[error("{field}: {count} variables; at most {MAX_ENV} are allowed")]
    TooManyEnv { field: &'static str, count: usize },
    /// The arguments and the environment together exceed [`MAX_EXEC_BYTES`].
    #[error("the arguments and environment take {bytes} bytes; at most {MAX_EXEC_BYTES}")]
    ExecTooLarge { bytes: usize },
    /// A working directory, mount destination or host path that is not absolute, holds a
    /// NUL byte, is longer than [`MAX_PATH_BYTES`], or (for a mount destination) has `.` or
    /// `..` components, is `/`, lies under `/proc`, `/sys` or `/dev`, or is another
    /// mount's destination too.
    #[error("{field} {path}: {reason}")]
    Path {
        field: &'static str,
        path: String,
        reason: &'static str,
    },
    /// More than [`MAX_WRITABLE_PATHS`] writable paths.
    #[error("writable_paths: {count} paths; at most {MAX_WRITABLE_PATHS} are allowed")]
    TooManyWritablePaths { count: usize },
    /// Empty, longer than 64 bytes, or not dot-separated labels of letters, digits, `-`
    /// and `_` that neither start nor end with `-`.
    #[error("hostname {hostname}: {reason}")]
    Hostname {
        hostname: String,
        reason: &'static str,
    },
    /// Not an absolute path of non-empty components other than `.` and `..`, or longer than
    /// [`MAX_PATH_BYTES`], or `/` itself (the root cgroup).
    #[error("cgroups_path {path}: {reason}")]
    CgroupsPath { path: String, reason: &'static str },
    /// `memory_bytes`, `cpu_millis`, `tmpfs_size_bytes` or `nofile_hard` out of range.
    #[error("{field}: {reason}")]
    Limit { field: &'static str, reason: String },
}

impl ConfigError {
    /// The field at fault, for the refusal the node reports: a [`ContainerSettings`] field
    /// name, or `image Entrypoint`, `image Cmd`, `image Env`, `image WorkingDir`.
    pub fn field(&self) -> &'static str {
        match self {
            Self::NoCommand => "args",
            Self::TooManyArgs { .. } | Self::ExecTooLarge { .. } => "args",
            Self::Arg { field, .. }
            | Self::Env { field, .. }
            | Self::TooManyEnv { field, .. }
            | Self::Path { field, .. }
            | Self::Limit { field, .. } => field,
            Self::TooManyWritablePaths { .. } => "writable_paths",
            Self::Hostname { .. } => "hostname",
            Self::CgroupsPath { .. } => "cgroups_path",
        }
    }
}

/// The runtime config for one container: the image's defaults overridden by the workload's
/// settings, run as `user` (from [`resolve_user`](super::resolve_user)). Checks everything a
/// runtime would refuse, or accept and get wrong, before anything runs.
pub fn runtime_config(
    image: &ImageDefaults,
    settings: &ContainerSettings,
    user: &User,
) -> Result<RuntimeConfig, ConfigError> {
    let args = command(image, settings)?;
    let env = environment(image, settings)?;
    let bytes = args.iter().chain(&env).map(|s| s.len() + 1).sum();
    if bytes > MAX_EXEC_BYTES {
        return Err(ConfigError::ExecTooLarge { bytes });
    }
    let cwd = working_dir(image, settings)?;
    check_hostname(&settings.hostname)?;
    check_cgroups_path(&settings.cgroups_path)?;
    let resources = resources(settings)?;
    let mounts = mounts(settings, user)?;
    let caps: Vec<String> = CAPABILITIES.iter().map(|c| (*c).into()).collect();
    Ok(RuntimeConfig {
        oci_version: OCI_VERSION.into(),
        process: Process {
            terminal: false,
            user: ProcessUser {
                uid: user.uid,
                gid: user.gid,
                additional_gids: user.additional_gids.clone(),
            },
            args,
            env,
            cwd,
            capabilities: Capabilities {
                bounding: caps.clone(),
                effective: caps.clone(),
                permitted: caps,
            },
            rlimits: vec![Rlimit {
                kind: "RLIMIT_NOFILE".into(),
                hard: settings.nofile_hard,
                soft: NOFILE_SOFT.min(settings.nofile_hard),
            }],
            no_new_privileges: true,
        },
        root: Root {
            path: "rootfs".into(),
            readonly: settings.readonly_root,
        },
        hostname: settings.hostname.clone(),
        mounts,
        linux: Linux {
            namespaces: NAMESPACES
                .iter()
                .map(|ns| Namespace { kind: (*ns).into() })
                .collect(),
            cgroups_path: settings.cgroups_path.clone(),
            resources,
            masked_paths: strings(MASKED_PATHS),
            readonly_paths: strings(READONLY_PATHS),
            seccomp: settings.seccomp.then(|| default_seccomp(settings.arch)),
        },
    })
}

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).into()).collect()
}

/// The image's `Entrypoint`, then the workload's args or else the image's `Cmd`.
fn command(
    image: &ImageDefaults,
    settings: &ContainerSettings,
) -> Result<Vec<String>, ConfigError> {
    let (tail_field, tail) = match &settings.args {
        Some(args) => ("args", args.as_slice()),
        None => ("image Cmd", image.cmd.as_slice()),
    };
    let parts = [
        ("image Entrypoint", image.entrypoint.as_slice()),
        (tail_field, tail),
    ];
    let count = image.entrypoint.len() + tail.len();
    if count == 0 {
        return Err(ConfigError::NoCommand);
    }
    if count > MAX_ARGS {
        return Err(ConfigError::TooManyArgs { count });
    }
    let mut args = Vec::with_capacity(count);
    for (field, list) in parts {
        for (index, arg) in list.iter().enumerate() {
            let refuse = |reason| ConfigError::Arg {
                field,
                index,
                reason,
            };
            if args.is_empty() && arg.is_empty() {
                return Err(refuse("the command is an empty string"));
            }
            if arg.contains('\0') {
                return Err(refuse("contains a NUL byte"));
            }
            if arg.len() > MAX_ARG_BYTES {
                return Err(refuse("longer than 131071 bytes"));
            }
            args.push(arg.clone());
        }
    }
    Ok(args)
}

/// The image's variables, overridden by the workload's, overridden by the node's; `PATH`
/// first when none of them sets it. A variable keeps the place it first appeared at.
fn environment(
    image: &ImageDefaults,
    settings: &ContainerSettings,
) -> Result<Vec<String>, ConfigError> {
    for (field, count) in [
        ("image Env", image.env.len()),
        ("env", settings.env.len()),
        ("node_env", settings.node_env.len()),
    ] {
        if count > MAX_ENV {
            return Err(ConfigError::TooManyEnv { field, count });
        }
    }
    let mut merged = Environment::default();
    for entry in &image.env {
        let (name, value) = entry.split_once('=').ok_or_else(|| ConfigError::Env {
            field: "image Env",
            name: shown(entry).to_string(),
            reason: "has no `=`",
        })?;
        merged.set("image Env", name, value)?;
    }
    for (field, vars) in [("env", &settings.env), ("node_env", &settings.node_env)] {
        for (name, value) in vars {
            merged.set(field, name, value)?;
        }
    }
    if !merged.index.contains_key("PATH") {
        merged.vars.insert(0, ("PATH".into(), DEFAULT_PATH.into()));
    }
    if merged.vars.len() > MAX_ENV {
        return Err(ConfigError::TooManyEnv {
            field: "env",
            count: merged.vars.len(),
        });
    }
    Ok(merged
        .vars
        .into_iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect())
}

#[derive(Default)]
struct Environment {
    vars: Vec<(String, String)>,
    /// Where each name sits in `vars`.
    index: BTreeMap<String, usize>,
}

impl Environment {
    fn set(&mut self, field: &'static str, name: &str, value: &str) -> Result<(), ConfigError> {
        let refuse = |reason| ConfigError::Env {
            field,
            name: shown(name).to_string(),
            reason,
        };
        if name.is_empty() {
            return Err(refuse("the name is empty"));
        }
        if name.contains('=') {
            return Err(refuse("the name contains `=`"));
        }
        if name.contains('\0') || value.contains('\0') {
            return Err(refuse("contains a NUL byte"));
        }
        if name.len() + 1 + value.len() > MAX_ARG_BYTES {
            return Err(refuse("longer than 131071 bytes"));
        }
        match self.index.get(name) {
            Some(&at) => self.vars[at].1 = value.into(),
            None => {
                self.index.insert(name.into(), self.vars.len());
                self.vars.push((name.into(), value.into()));
            }
        }
        Ok(())
    }
}

/// The workload's working directory, else the image's, else `/`.
fn working_dir(image: &ImageDefaults, settings: &ContainerSettings) -> Result<String, ConfigError> {
    let image_dir = image.working_dir.as_deref().filter(|d| !d.is_empty());
    let (field, dir) = match (&settings.working_dir, image_dir) {
        (Some(dir), _) => ("working_dir", dir.as_str()),
        (None, Some(dir)) => ("image WorkingDir", dir),
        (None, None) => return Ok("/".into()),
    };
    check_path(field, dir)?;
    Ok(dir.into())
}

fn path_error(field: &'static str, path: &str, reason: &'static str) -> ConfigError {
    ConfigError::Path {
        field,
        path: shown(path).to_string(),
        reason,
    }
}

/// Absolute, without NUL, at most [`MAX_PATH_BYTES`].
fn check_path(field: &'static str, path: &str) -> Result<(), ConfigError> {
    if !path.starts_with('/') {
        return Err(path_error(field, path, "must be an absolute path"));
    }
    if path.contains('\0') {
        return Err(path_error(field, path, "contains a NUL byte"));
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(path_error(field, path, "longer than 4095 bytes"));
    }
    Ok(())
}

/// Where the runtime's own mounts go: nothing of the workload's may land there.
const SYSTEM_DIRS: &[&str] = &["proc", "sys", "dev"];

/// A mount destination, checked and normalised (`//a/b/` is `/a/b`).
fn mount_destination(field: &'static str, path: &str) -> Result<String, ConfigError> {
    check_path(field, path)?;
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    if parts.iter().any(|p| *p == "." || *p == "..") {
        return Err(path_error(field, path, "has a `.` or `..` component"));
    }
    match parts.first() {
        None => Err(path_error(field, path, "must not be `/`")),
        Some(top) if SYSTEM_DIRS.contains(top) => Err(path_error(
            field,
            path,
            "must not be under /proc, /sys or /dev, which the runtime mounts",
        )),
        Some(_) => Ok(format!("/{}", parts.join("/"))),
    }
}

fn check_hostname(hostname: &str) -> Result<(), ConfigError> {
    let refuse = |reason| ConfigError::Hostname {
        hostname: shown(hostname).to_string(),
        reason,
    };
    if hostname.is_empty() {
        return Err(refuse("is empty"));
    }
    if hostname.len() > MAX_HOSTNAME_BYTES {
        return Err(refuse("longer than 64 bytes"));
    }
    for label in hostname.split('.') {
        if label.is_empty() {
            return Err(refuse("has an empty label"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(refuse("may hold only letters, digits, `-`, `_` and `.`"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(refuse("a label starts or ends with `-`"));
        }
    }
    Ok(())
}

fn check_cgroups_path(path: &str) -> Result<(), ConfigError> {
    let refuse = |reason| ConfigError::CgroupsPath {
        path: shown(path).to_string(),
        reason,
    };
    let Some(rest) = path.strip_prefix('/') else {
        return Err(refuse("must start with `/`"));
    };
    if path.len() > MAX_PATH_BYTES {
        return Err(refuse("longer than 4095 bytes"));
    }
    if rest.is_empty() {
        return Err(refuse("is the root cgroup"));
    }
    if path.chars().any(char::is_control) {
        return Err(refuse("contains a control character"));
    }
    if rest
        .split('/')
        .any(|part| part.is_empty() || part == "." || part == "..")
    {
        return Err(refuse("has an empty, `.` or `..` component"));
    }
    Ok(())
}

fn resources(settings: &ContainerSettings) -> Result<Resources, ConfigError> {
    let limit = |field, reason: String| ConfigError::Limit { field, reason };
    let memory = match settings.memory_bytes {
        None => None,
        Some(bytes) if bytes < MIN_MEMORY_BYTES => {
            return Err(limit(
                "memory_bytes",
                format!("{bytes} is below the minimum of {MIN_MEMORY_BYTES}"),
            ));
        }
        Some(bytes) => Some(Memory {
            limit: i64::try_from(bytes).map_err(|_| {
                limit(
                    "memory_bytes",
                    format!("{bytes} is above the maximum of {}", i64::MAX),
                )
            })?,
        }),
    };
    let cpu = match settings.cpu_millis {
        None => None,
        Some(0) => return Err(limit("cpu_millis", "must be at least 1".into())),
        Some(millis) if millis > MAX_CPU_MILLIS => {
            return Err(limit(
                "cpu_millis",
                format!("{millis} is above the maximum of {MAX_CPU_MILLIS}"),
            ));
        }
        Some(millis) => Some(Cpu {
            quota: (i64::from(millis) * 100).max(MIN_CPU_QUOTA_US),
            period: CPU_PERIOD_US,
        }),
    };
    if settings.tmpfs_size_bytes < MIN_TMPFS_BYTES {
        return Err(limit(
            "tmpfs_size_bytes",
            format!("must be at least {MIN_TMPFS_BYTES}"),
        ));
    }
    if !(1..=MAX_NOFILE_HARD).contains(&settings.nofile_hard) {
        return Err(limit(
            "nofile_hard",
            format!("must be from 1 to {MAX_NOFILE_HARD}"),
        ));
    }
    Ok(Resources {
        devices: device_rules(),
        memory,
        cpu,
    })
}

/// Deny every device, then allow the pseudo-devices every program may open, as containerd
/// and runc's own defaults do: null, zero, full, random, urandom, tty, ptmx and the pts.
fn device_rules() -> Vec<DeviceRule> {
    let allow = |major, minor: Option<i64>| DeviceRule {
        allow: true,
        kind: Some("c".into()),
        major: Some(major),
        minor,
        access: "rwm".into(),
    };
    vec![
        DeviceRule {
            allow: false,
            kind: None,
            major: None,
            minor: None,
            access: "rwm".into(),
        },
        allow(1, Some(3)), // null
        allow(1, Some(5)), // zero
        allow(1, Some(7)), // full
        allow(1, Some(8)), // random
        allow(1, Some(9)), // urandom
        allow(5, Some(0)), // tty
        allow(5, Some(2)), // ptmx
        allow(136, None),  // pts/*
    ]
}

fn mount(destination: &str, kind: &str, source: &str, options: &[&str]) -> Mount {
    Mount {
        destination: destination.into(),
        kind: kind.into(),
        source: source.into(),
        options: strings(options),
    }
}

/// The mounts every container gets, as `runc spec` writes them (with `/proc` nosuid, noexec
/// and nodev, as Docker mounts it).
fn system_mounts() -> Vec<Mount> {
    vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ),
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        ),
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", "ro"],
        ),
    ]
}

/// The system mounts, then the workload's (tmpfs and read-only binds) sorted by destination
/// so that a mount inside another comes after it.
fn mounts(settings: &ContainerSettings, user: &User) -> Result<Vec<Mount>, ConfigError> {
    let count = settings.writable_paths.len();
    if count > MAX_WRITABLE_PATHS {
        return Err(ConfigError::TooManyWritablePaths { count });
    }
    let size = format!("size={}", settings.tmpfs_size_bytes);
    let mut own = Vec::new();
    let mut taken = BTreeSet::new();
    let tmpfs = |destination: String| {
        // A tmpfs is writable by the process's user; `/tmp` by everyone, sticky. Not
        // noexec: programs unpack native code there (PyInstaller bundles, JNI libraries).
        let owner = if destination == "/tmp" {
            vec!["mode=1777".to_string()]
        } else {
            vec![
                "mode=755".to_string(),
                format!("uid={}", user.uid),
                format!("gid={}", user.gid),
            ]
        };
        let mut options = vec!["nosuid".to_string(), "nodev".to_string()];
        options.extend(owner);
        options.push(size.clone());
        Mount {
            destination,
            kind: "tmpfs".into(),
            source: "tmpfs".into(),
            options,
        }
    };
    for path in &settings.writable_paths {
        let destination = mount_destination("writable_paths", path)?;
        own.push(tmpfs(claim(
            &mut taken,
            "writable_paths",
            path,
            destination,
        )?));
    }
    if settings.readonly_root && !taken.contains("/tmp") {
        own.push(tmpfs(claim(
            &mut taken,
            "writable_paths",
            "/tmp",
            "/tmp".into(),
        )?));
    }
    let bind = |source: &str, destination: String| Mount {
        destination,
        kind: "bind".into(),
        source: source.into(),
        // Not rbind: nothing mounted under the source comes along, and all of it is
        // read-only.
        options: strings(&["bind", "ro", "nosuid", "nodev", "noexec"]),
    };
    for (field, host, destination) in [
        ("resolv_conf", &settings.resolv_conf, "/etc/resolv.conf"),
        ("hosts_file", &settings.hosts_file, "/etc/hosts"),
    ] {
        if let Some(host) = host {
            check_path(field, host)?;
            own.push(bind(
                host,
                claim(&mut taken, field, destination, destination.into())?,
            ));
        }
    }
    if let Some(secrets) = &settings.secrets {
        check_path("secrets.host_dir", &secrets.host_dir)?;
        let field = "secrets.container_dir";
        let destination = mount_destination(field, &secrets.container_dir)?;
        let destination = claim(&mut taken, field, &secrets.container_dir, destination)?;
        own.push(bind(&secrets.host_dir, destination));
    }
    own.sort_by(|a, b| a.destination.cmp(&b.destination));
    let mut all = system_mounts();
    all.extend(own);
    Ok(all)
}

/// `destination`, unless another mount of the workload's already has it.
fn claim(
    taken: &mut BTreeSet<String>,
    field: &'static str,
    path: &str,
    destination: String,
) -> Result<String, ConfigError> {
    if taken.insert(destination.clone()) {
        Ok(destination)
    } else {
        Err(path_error(
            field,
            path,
            "is another mount's destination too",
        ))
    }
}
