//! The default seccomp profile: allow everything, refuse with `EPERM` what a service never
//! needs and what reaches the kernel's most dangerous surface. The module docs say why a deny
//! list and not Docker's allow list.

use super::build::Arch;
use serde::Serialize;

/// `EPERM`: what a refused syscall returns, the answer a program already handles for a
/// missing capability.
const EPERM: u32 = 1;
/// `ENOSYS`, the same number on x86, ARM and aarch64.
const ENOSYS: u32 = 38;
/// `CLONE_NEWUSER`, from `<linux/sched.h>`.
const CLONE_NEWUSER: u64 = 0x1000_0000;

/// The syscalls the default profile refuses with `EPERM`, whatever their arguments. A name
/// some architecture lacks is harmless: the module docs say why.
pub const DENIED_SYSCALLS: &[&str] = &[
    // Kernel modules: code into the kernel.
    "init_module",
    "finit_module",
    "delete_module",
    "create_module",
    "get_kernel_syms",
    "query_module",
    // Replacing or stopping the kernel, and the swap it shares with the node.
    "kexec_load",
    "kexec_file_load",
    "reboot",
    "swapon",
    "swapoff",
    // Mounts: the container's filesystem view is the runtime's to build, not the process's.
    "mount",
    "umount",
    "umount2",
    "pivot_root",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "move_mount",
    "open_tree",
    "mount_setattr",
    // Namespaces: a new user namespace hands a process every capability inside it, the
    // usual first step of a kernel exploit; joining another namespace leaves the container.
    "unshare",
    "setns",
    // Programs and tracing in the kernel, and page-fault games used to win kernel races.
    "bpf",
    "perf_event_open",
    "userfaultfd",
    // io_uring: a large part of recent kernel CVEs; programs that try it fall back to
    // ordinary syscalls when it is refused.
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    // The kernel keyring is not namespaced: keys would be shared with the node.
    "keyctl",
    "add_key",
    "request_key",
    // Host-wide accounting, the clock, quotas and the kernel log.
    "acct",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "stime",
    "quotactl",
    "quotactl_fd",
    "syslog",
    "lookup_dcookie",
    // File handles bypass the mount namespace: open_by_handle_at was the "shocker" escape.
    "open_by_handle_at",
    "name_to_handle_at",
    // The terminal and hardware I/O ports.
    "vhangup",
    "iopl",
    "ioperm",
    // Obsolete interfaces nothing current uses, with a history of bugs.
    "uselib",
    "nfsservctl",
    "vm86",
    "vm86old",
    // Reading and comparing other processes' memory and files.
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "kcmp",
    // Execution domains: turning off address-space randomisation or making data executable.
    "personality",
];

/// A seccomp profile, as `linux.seccomp` in `config.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Seccomp {
    /// `SCMP_ACT_ALLOW`.
    pub default_action: String,
    /// `SCMP_ARCH_*`: the ABIs a process on the node may call the kernel with.
    pub architectures: Vec<String>,
    pub syscalls: Vec<SeccompSyscall>,
}

/// One rule: these syscalls, when every argument condition holds, get `action`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SeccompSyscall {
    pub names: Vec<String>,
    /// `SCMP_ACT_ERRNO`.
    pub action: String,
    /// The errno a refused call returns.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errno_ret: Option<u32>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<SeccompArg>,
}

/// A condition on one argument.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SeccompArg {
    pub index: u32,
    /// For `SCMP_CMP_MASKED_EQ`, the mask.
    pub value: u64,
    /// For `SCMP_CMP_MASKED_EQ`, what the masked argument must equal.
    pub value_two: u64,
    pub op: String,
}

/// The default profile for a node of this architecture: [`DENIED_SYSCALLS`] refused with
/// `EPERM`; `clone` with `CLONE_NEWUSER` refused too (the other namespace flags already need
/// a capability the container lacks); and `clone3`, whose flags sit in memory where a filter
/// cannot read them, answered `ENOSYS`, so that glibc and others fall back to `clone`, as
/// under Docker.
pub fn default_seccomp(arch: Arch) -> Seccomp {
    let errno = |names: Vec<String>, errno_ret: u32, args: Vec<SeccompArg>| SeccompSyscall {
        names,
        action: "SCMP_ACT_ERRNO".into(),
        errno_ret: Some(errno_ret),
        args,
    };
    let clone_newuser = SeccompArg {
        // The flags are clone's first argument on x86, ARM and aarch64.
        index: 0,
        value: CLONE_NEWUSER,
        value_two: CLONE_NEWUSER,
        op: "SCMP_CMP_MASKED_EQ".into(),
    };
    Seccomp {
        default_action: "SCMP_ACT_ALLOW".into(),
        architectures: arch
            .seccomp_architectures()
            .iter()
            .map(|a| (*a).into())
            .collect(),
        syscalls: vec![
            errno(
                DENIED_SYSCALLS.iter().map(|s| (*s).into()).collect(),
                EPERM,
                Vec::new(),
            ),
            errno(vec!["clone".into()], EPERM, vec![clone_newuser]),
            errno(vec!["clone3".into()], ENOSYS, Vec::new()),
        ],
    }
}
