//! What the installed runtime says it can do: the output of `runc features` (runc 1.1 and
//! later) or `crun features`, the runtime-spec's `features.json`. Older runtimes have no such
//! command; their empty or garbled answer gives conservative defaults (no seccomp claimed),
//! never an error: a node must start with whatever runtime it has.

use super::build::{Arch, NAMESPACES};
use serde_json::Value;

/// What a runtime reported, reduced to what the node asks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuntimeFeatures {
    /// The text was a features document. When false, everything below is its default.
    pub reported: bool,
    /// Seccomp is compiled in and enabled, and the actions and operators the default
    /// profile uses are known (when the runtime lists them).
    pub seccomp: bool,
    /// The `SCMP_ARCH_*` names the runtime's libseccomp knows; empty when not listed.
    pub seccomp_archs: Vec<String>,
    /// The namespace types the runtime supports (`pid`, `mount`, ...); empty when not listed.
    pub namespaces: Vec<String>,
    /// Whether the runtime drives cgroup v1 and v2 hierarchies; false when not said.
    pub cgroup_v1: bool,
    pub cgroup_v2: bool,
}

impl RuntimeFeatures {
    /// Reads `runc features` output. Fields that are missing or of the wrong type count as
    /// "not supported"; text that is not a JSON object gives [`RuntimeFeatures::default`].
    pub fn parse(json: &str) -> Self {
        let Ok(doc) = serde_json::from_str::<Value>(json) else {
            return Self::default();
        };
        if !doc.is_object() {
            return Self::default();
        }
        let flag = |pointer: &str| doc.pointer(pointer).and_then(Value::as_bool) == Some(true);
        let list = |pointer: &str| -> Option<Vec<String>> {
            let items = doc.pointer(pointer)?.as_array()?;
            Some(
                items
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect(),
            )
        };
        let lists_all = |pointer: &str, wanted: &[&str]| {
            list(pointer).is_none_or(|have| wanted.iter().all(|w| have.iter().any(|h| h == w)))
        };
        let seccomp = flag("/linux/seccomp/enabled")
            && lists_all(
                "/linux/seccomp/actions",
                &["SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO"],
            )
            && lists_all("/linux/seccomp/operators", &["SCMP_CMP_MASKED_EQ"]);
        Self {
            reported: true,
            seccomp,
            seccomp_archs: list("/linux/seccomp/archs").unwrap_or_default(),
            namespaces: list("/linux/namespaces").unwrap_or_default(),
            cgroup_v1: flag("/linux/cgroup/v1"),
            cgroup_v2: flag("/linux/cgroup/v2"),
        }
    }

    /// Whether the default profile for `arch` can be installed: seccomp is enabled and every
    /// architecture the profile names is one the runtime's libseccomp knows (when listed).
    pub fn seccomp_for(&self, arch: Arch) -> bool {
        self.seccomp
            && (self.seccomp_archs.is_empty()
                || arch
                    .seccomp_architectures()
                    .iter()
                    .all(|a| self.seccomp_archs.iter().any(|have| have == a)))
    }

    /// The namespaces a container needs ([`NAMESPACES`]) that the runtime says it lacks.
    /// Empty when the runtime did not say: every runtime that speaks runtime-spec 1.0 has
    /// them, so silence is no reason to refuse.
    pub fn missing_namespaces(&self) -> Vec<&'static str> {
        if self.namespaces.is_empty() {
            return Vec::new();
        }
        NAMESPACES
            .iter()
            .copied()
            .filter(|ns| !self.namespaces.iter().any(|have| have == ns))
            .collect()
    }
}

/// The runtimes a node looks for on `PATH`, best first. On cgroup v2 `crun` (C, lighter, a
/// faster start) comes first; on v1 or a hybrid setup `runc`, since crun refuses hybrid
/// hierarchies.
pub fn runtime_preference(cgroup_v2: bool) -> [&'static str; 2] {
    if cgroup_v2 {
        ["crun", "runc"]
    } else {
        ["runc", "crun"]
    }
}
