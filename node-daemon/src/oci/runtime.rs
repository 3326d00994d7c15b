//! Which OCI runtimes this node has: the one the config names (`[containers] runtime`), or
//! `crun` and `runc` as `PATH` finds them, in the order `node_core::oci::runtime_preference`
//! gives for the node's cgroup mode. Finding them only looks at files, so the daemon's start
//! runs nothing; a runtime is asked for its `features` (runtime-spec's description of what
//! it supports) when a container is about to run, and one too old to answer runs it without
//! seccomp.
//!
//! The node reports the names to the orchestrator (`RuntimeInfo::container_runtimes`). This
//! module never runs a container.

use edge_proto::LimitsKind;
use node_core::config::ContainersConfig;
use node_core::oci::{RuntimeFeatures, runtime_preference};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tracing::{info, warn};

/// How long a runtime may take to print its features.
const FEATURES_TIMEOUT: Duration = Duration::from_secs(5);
/// The most of a features document read.
const MAX_FEATURES_BYTES: usize = 1 << 20;

/// An OCI runtime found on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Runtime {
    /// Its file name (`runc`, `crun`), as the node reports it: at most 16 bytes.
    pub name: String,
    pub path: PathBuf,
}

impl Runtime {
    /// What the runtime says it supports; the defaults (nothing claimed) when it cannot say.
    pub async fn features(&self) -> RuntimeFeatures {
        features(&self.path).await
    }
}

/// The runtimes to run containers with, best first; empty: this node runs none. Containers
/// need cgroups (their limits and how the supervisor finds their processes) and a daemon
/// that may make namespaces and mounts (`CAP_SYS_ADMIN`); without either, none runs here.
pub fn detect(config: &ContainersConfig, limits: LimitsKind) -> Vec<Runtime> {
    if limits == LimitsKind::Rlimit {
        info!("no cgroups: this node runs no containers");
        return Vec::new();
    }
    if !may_make_containers() {
        info!(
            "the daemon lacks CAP_SYS_ADMIN: this node runs no containers (under systemd, \
             install the containers drop-in)"
        );
        return Vec::new();
    }
    let candidates: Vec<PathBuf> = match &config.runtime {
        Some(path) => {
            if !is_executable(path) {
                warn!(path = %path.display(), "containers.runtime is not an executable file: no containers on this node");
                return Vec::new();
            }
            vec![path.clone()]
        }
        None => runtime_preference(limits == LimitsKind::CgroupV2)
            .into_iter()
            .filter_map(on_path)
            .collect(),
    };
    candidates
        .into_iter()
        .map(|path| {
            let name: String = path
                .file_name()
                .map(|n| n.to_string_lossy().chars().take(16).collect())
                .unwrap_or_default();
            info!(runtime = %name, path = %path.display(), "container runtime found");
            Runtime { name, path }
        })
        .collect()
}

/// `CAP_SYS_ADMIN` (bit 21) in the daemon's effective set, from `/proc/self/status`.
fn may_make_containers() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
            u64::from_str_radix(hex.trim(), 16).ok()
        })
        .is_some_and(|caps| caps & (1 << 21) != 0)
}

/// How long the runtime gets to delete or list containers.
const STATE_TIMEOUT: Duration = Duration::from_secs(10);

/// Deletes container `id` from the runtime's `state_dir`, killing whatever of it still
/// runs: what a runtime killed with its container leaves behind. One that is not there is
/// no error. Returns the runtime's complaint otherwise.
pub async fn delete(runtime: &Path, state_dir: &Path, id: &str) -> Result<(), String> {
    let run = tokio::process::Command::new(runtime)
        .arg("--root")
        .arg(state_dir)
        .args(["delete", "--force", id])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(STATE_TIMEOUT, run).await {
        Ok(Ok(out)) if out.status.success() => Ok(()),
        Ok(Ok(out)) => {
            let said = String::from_utf8_lossy(&out.stderr);
            if said.contains("does not exist") || said.contains("not found") {
                Ok(())
            } else {
                Err(said.chars().take(512).collect())
            }
        }
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err(format!("no answer in {STATE_TIMEOUT:?}")),
    }
}

/// The ids of the containers in the runtime's `state_dir`; none when it cannot say.
pub async fn list(runtime: &Path, state_dir: &Path) -> Vec<String> {
    let run = tokio::process::Command::new(runtime)
        .arg("--root")
        .arg(state_dir)
        .args(["list", "--quiet"])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(STATE_TIMEOUT, run).await {
        Ok(Ok(out)) if out.status.success() => String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::trim)
            .filter(|id| !id.is_empty())
            .take(4096)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

/// `name` in a directory of `PATH`, if one holds it as an executable file.
fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// What `path features` says; the defaults (nothing claimed) when it cannot say.
async fn features(path: &Path) -> RuntimeFeatures {
    let run = tokio::process::Command::new(path)
        .arg("features")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(FEATURES_TIMEOUT, run).await {
        Ok(Ok(out)) if out.status.success() => {
            let text =
                String::from_utf8_lossy(&out.stdout[..out.stdout.len().min(MAX_FEATURES_BYTES)]);
            RuntimeFeatures::parse(&text)
        }
        Ok(Ok(out)) => {
            warn!(path = %path.display(), status = %out.status, "the runtime has no features command: running without seccomp");
            RuntimeFeatures::default()
        }
        Ok(Err(error)) => {
            warn!(path = %path.display(), %error, "could not run the runtime");
            RuntimeFeatures::default()
        }
        Err(_) => {
            warn!(path = %path.display(), "the runtime did not print its features in time");
            RuntimeFeatures::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write a script");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        path
    }

    #[tokio::test]
    async fn the_configured_runtime_is_asked_for_its_features() {
        let dir = tempfile::tempdir().expect("tmp");
        let runtime = script(
            dir.path(),
            "my-runc",
            r#"[ "$1" = features ] && echo '{"linux": {"seccomp": {"enabled": true}, "cgroup": {"v1": true}}}'"#,
        );
        let config = ContainersConfig {
            runtime: Some(runtime.clone()),
        };
        let found = detect(&config, LimitsKind::CgroupV1);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].name, "my-runc");
        assert_eq!(found[0].path, runtime);
        let features = found[0].features().await;
        assert!(features.seccomp && features.cgroup_v1);

        // One too old for `features` is kept, claiming nothing.
        let old = script(dir.path(), "old-runc", "exit 1");
        let found = detect(
            &ContainersConfig { runtime: Some(old) },
            LimitsKind::CgroupV2,
        );
        assert_eq!(found.len(), 1);
        assert!(!found[0].features().await.seccomp);

        // A named runtime that is not there: none, not a guess from PATH.
        let missing = ContainersConfig {
            runtime: Some(dir.path().join("nowhere")),
        };
        assert!(detect(&missing, LimitsKind::CgroupV1).is_empty());
        let not_executable = dir.path().join("data");
        std::fs::write(&not_executable, "{}").expect("write");
        let config = ContainersConfig {
            runtime: Some(not_executable),
        };
        assert!(detect(&config, LimitsKind::CgroupV1).is_empty());
    }
}
