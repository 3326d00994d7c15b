//! A container's OCI runtime `config.json` (runtime-spec 1.0.2, as `runc` 1.1 and `crun`
//! take it), made from an image's config and a workload's settings.
//!
//! The node runs a container by unpacking its image into a root filesystem and running
//! `runc --root STATE run --bundle DIR ID` in the foreground under its supervisor. The shell
//! reads the files (the image config, the rootfs's `/etc/passwd` and `/etc/group`, the output
//! of `runc features`) and hands their text here:
//!
//! - [`resolve_user`]: the image's `User` (`name`, `uid`, `name:group`, `uid:gid`, ...) turned
//!   into ids from the rootfs's passwd and group text.
//! - [`runtime_config`]: [`ImageDefaults`] + [`ContainerSettings`] + [`User`] into a
//!   [`RuntimeConfig`], a tree of `serde::Serialize` structs the shell writes with serde_json.
//!   Everything a runtime would refuse, or worse accept and misuse, is refused first with a
//!   [`ConfigError`] that names the field.
//! - [`default_seccomp`]: the seccomp profile for the node's [`Arch`].
//! - [`RuntimeFeatures::parse`]: what `runc features` says the runtime can do; a runtime too
//!   old to say gets conservative defaults, never an error.
//!
//! This module never touches a file, a process or the clock, and never decides *whether* a
//! workload runs: admission and the restart policy do that.
//!
//! **What a container gets.** Its own pid, mount, ipc and uts namespaces, and nothing else:
//! no network namespace, because the node's proxy reaches a workload's ports on the host's
//! network; no user namespace, because the shared layer cache holds files owned by the
//! image's own ids, and remapping them would mean a chown'd copy of every layer per container
//! (see [`NAMESPACES`]). A reduced capability set ([`CAPABILITIES`]), `noNewPrivileges`, the
//! `/proc` and `/sys` paths `runc spec` masks or makes read-only, a device list of deny-all
//! plus the usual pseudo-devices, and the memory and CPU limits of the workload.
//!
//! **Why the seccomp profile is a deny list.** Docker's default profile allows a list of
//! about 350 syscalls and refuses the rest. That list has to follow every kernel and
//! libseccomp release and differs per architecture, and a service that uses a syscall newer
//! than the list breaks in ways that are hard to trace on a node no one can log into. Ours
//! allows everything and refuses (`EPERM`) a short list of syscalls that a service never
//! needs and that reach the kernel's most dangerous surface: modules, kexec, mounts, bpf,
//! perf, keyrings, namespaces, ptrace, the clock. Capabilities already refuse most of these;
//! the profile is the second wall for the day a kernel bug lets one through. The same list
//! works on x86_64, aarch64 and 32-bit ARM: runc looks each name up in its libseccomp for the
//! filter's architectures and skips a name it does not know at all (`matchCall` in
//! `libcontainer/seccomp/seccomp_linux.go`; runc 1.1.5 with libseccomp 2.5.4 logs
//! `unknown seccomp syscall "..." ignored` under `--debug` and runs), and libseccomp skips an
//! architecture that lacks a syscall the others have (`stime` exists on 32-bit x86 and ARM
//! only). So one profile stays valid across libseccomp versions and kernels.
//!
//! **What the shell must know.** runc creates missing mount points inside the rootfs (`/tmp`,
//! `/etc/resolv.conf`, the secrets directory), so a bundle's `rootfs` must be the
//! container's own (an overlay's merged directory or a copy), never the shared layer cache
//! itself. The rootfs is `rootfs` next to `config.json`.

mod build;
mod features;
mod runtime;
mod seccomp;
mod user;

pub use build::{
    Arch, CAPABILITIES, ConfigError, ContainerSettings, DEFAULT_NOFILE_HARD, DEFAULT_PATH,
    DEFAULT_TMPFS_BYTES, ImageDefaults, MAX_ARG_BYTES, MAX_ARGS, MAX_CPU_MILLIS, MAX_ENV,
    MAX_EXEC_BYTES, MAX_NOFILE_HARD, MAX_PATH_BYTES, MAX_WRITABLE_PATHS, MIN_CPU_QUOTA_US,
    NAMESPACES, NOFILE_SOFT, OCI_VERSION, SecretsMount, StopSignalError, runtime_config,
};
pub use features::{RuntimeFeatures, runtime_preference};
pub use runtime::{
    Capabilities, Cpu, DeviceRule, Linux, Memory, Mount, Namespace, Process, ProcessUser,
    Resources, Rlimit, Root, RuntimeConfig,
};
pub use seccomp::{DENIED_SYSCALLS, Seccomp, SeccompArg, SeccompSyscall, default_seccomp};
pub use user::{MAX_ADDITIONAL_GIDS, MAX_USER_BYTES, User, UserError, resolve_user};
