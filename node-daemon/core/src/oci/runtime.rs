//! The runtime-spec 1.0.2 `config.json`, as much of it as the node writes: field names and
//! nesting are the spec's (camelCase), so `serde_json::to_string` of a [`RuntimeConfig`] is
//! the file. Optional parts the node does not set are left out of the JSON, not written as
//! `null`, which some runtimes refuse.

use super::seccomp::Seccomp;
use serde::Serialize;

/// The whole `config.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeConfig {
    /// [`OCI_VERSION`](super::OCI_VERSION).
    pub oci_version: String,
    pub process: Process,
    pub root: Root,
    pub hostname: String,
    /// In mount order: a mount under another comes after it.
    pub mounts: Vec<Mount>,
    pub linux: Linux,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Process {
    /// Always false: the supervisor reads the output through pipes.
    pub terminal: bool,
    pub user: ProcessUser,
    pub args: Vec<String>,
    /// `NAME=value`, each name once.
    pub env: Vec<String>,
    /// Absolute.
    pub cwd: String,
    pub capabilities: Capabilities,
    pub rlimits: Vec<Rlimit>,
    pub no_new_privileges: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessUser {
    pub uid: u32,
    pub gid: u32,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub additional_gids: Vec<u32>,
}

/// The capability sets, by `CAP_` name. No `inheritable` or `ambient` set: a process that
/// is not root loses its capabilities at exec, as with Docker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Capabilities {
    pub bounding: Vec<String>,
    pub effective: Vec<String>,
    pub permitted: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rlimit {
    /// `RLIMIT_NOFILE` and the like.
    #[serde(rename = "type")]
    pub kind: String,
    pub hard: u64,
    pub soft: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Root {
    /// Relative to the bundle: `rootfs`.
    pub path: String,
    pub readonly: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mount {
    /// Absolute, inside the container.
    pub destination: String,
    /// `proc`, `tmpfs`, `bind`, ...
    #[serde(rename = "type")]
    pub kind: String,
    pub source: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Linux {
    pub namespaces: Vec<Namespace>,
    /// Absolute: the runtime's cgroup driver puts it under the cgroup root.
    pub cgroups_path: String,
    pub resources: Resources,
    pub masked_paths: Vec<String>,
    pub readonly_paths: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seccomp: Option<Seccomp>,
}

/// A namespace the container gets its own of. No `path`: never joins an existing one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Namespace {
    /// `pid`, `mount`, `ipc`, `uts`, ...
    #[serde(rename = "type")]
    pub kind: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Resources {
    /// In order: the last rule that matches a device decides.
    pub devices: Vec<DeviceRule>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<Memory>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Cpu>,
}

/// A device cgroup rule. `kind`, `major` and `minor` left out match every device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceRule {
    pub allow: bool,
    /// `c` (character) or `b` (block).
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub major: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub minor: Option<i64>,
    /// Some of `r`, `w`, `m` (mknod).
    pub access: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Memory {
    /// Bytes. The spec's type is a signed 64-bit integer.
    pub limit: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Cpu {
    /// Microseconds of CPU time the container may use per `period`.
    pub quota: i64,
    /// Microseconds.
    pub period: u64,
}
