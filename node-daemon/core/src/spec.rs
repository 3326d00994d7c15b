//! What the node is asked to run: [`WorkloadSpec`] and its parts, and their validation.
//!
//! These are the node's domain types, not wire types: the daemon converts what the
//! orchestrator sends into them. They are also what `spec.json` holds on disk, so fields are
//! only ever added with a serde default, never renamed, or a node upgraded in place would no
//! longer recover the workloads it was running.
//!
//! This module never does I/O; [`WorkloadSpec::validate`] checks only what can be checked
//! from the spec itself.

use edge_proto::field::{FieldError, FieldPath};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::Duration;

/// The longest workload name, as the wire bounds it: it is also a directory name and a
/// control group name.
pub use edge_proto::field::MAX_NAME_LEN;
/// The smallest memory limit accepted. Below this a process cannot even exec a shell.
pub const MIN_MEMORY_BYTES: u64 = 1 << 20;
/// The variable that tells a workload which address to listen on (the node's
/// `local_address`), in its environment when the node has one.
pub const NODE_ADDRESS_ENV: &str = "EDGE_NODE_ADDRESS";

/// One workload as the node runs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadSpec {
    /// Unique on the node: `[a-z0-9][a-z0-9._-]*`, at most 63 bytes.
    pub name: String,
    pub version: String,
    /// The executable: an absolute path, or a name looked up in the workload's `PATH`.
    pub command: PathBuf,
    #[serde(default)]
    pub args: Vec<String>,
    /// The whole environment of the process, on top of a default `PATH`. Nothing is
    /// inherited from the daemon.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Defaults to `/`.
    #[serde(default)]
    pub working_dir: Option<PathBuf>,
    /// Run as this user (by name). Needs the daemon to run as root.
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub resources: Resources,
    #[serde(default)]
    pub restart: RestartPolicy,
    #[serde(default)]
    pub health: Option<HealthProbe>,
    /// How long a stopping process has between SIGTERM and SIGKILL.
    #[serde(default = "default_stop_grace_ms")]
    pub stop_grace_ms: u64,
}

fn default_stop_grace_ms() -> u64 {
    10_000
}

impl WorkloadSpec {
    /// A spec with defaults for everything but what identifies the workload.
    pub fn new(
        name: impl Into<String>,
        version: impl Into<String>,
        command: impl Into<PathBuf>,
    ) -> Self {
        Self {
            name: name.into(),
            version: version.into(),
            command: command.into(),
            args: Vec::new(),
            env: BTreeMap::new(),
            working_dir: None,
            user: None,
            resources: Resources::default(),
            restart: RestartPolicy::default(),
            health: None,
            stop_grace_ms: default_stop_grace_ms(),
        }
    }

    pub fn stop_grace(&self) -> Duration {
        Duration::from_millis(self.stop_grace_ms)
    }

    /// Where network health checks connect: the address the workload is told to listen on
    /// ([`NODE_ADDRESS_ENV`] in its environment), else 127.0.0.1. A service told to listen on
    /// the node's address listens there only, and would fail every probe of loopback. An
    /// unspecified address (`0.0.0.0`, `::`) listens on loopback too, so loopback it is.
    pub fn probe_address(&self) -> IpAddr {
        match self.env.get(NODE_ADDRESS_ENV).map(|a| a.trim().parse()) {
            Some(Ok(IpAddr::V6(ip))) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            Some(Ok(ip)) if !ip.is_unspecified() => ip,
            _ => IpAddr::V4(Ipv4Addr::LOCALHOST),
        }
    }

    /// Checks everything that can be checked without looking at the system. The error
    /// names the field.
    pub fn validate(&self) -> Result<(), SpecError> {
        validate_name(&self.name)?;
        if self.version.is_empty() || self.version.len() > 128 {
            return Err(SpecError::new("version", "must be 1 to 128 bytes"));
        }
        let command = self.command.as_os_str().as_encoded_bytes();
        if command.is_empty() {
            return Err(SpecError::new("command", "is empty"));
        }
        if command.contains(&0) {
            return Err(SpecError::new("command", "contains a NUL byte"));
        }
        for (i, arg) in self.args.iter().enumerate() {
            if arg.contains('\0') {
                return Err(SpecError::new(
                    FieldPath::new("args").index(i),
                    "contains a NUL byte",
                ));
            }
        }
        for (key, value) in &self.env {
            if key.is_empty() || key.contains(['=', '\0']) {
                return Err(SpecError::new(
                    FieldPath::new("env").key(key),
                    "a variable name must be non-empty, without '=' or NUL",
                ));
            }
            if value.contains('\0') {
                return Err(SpecError::new(
                    FieldPath::new("env").key(key),
                    "contains a NUL byte",
                ));
            }
        }
        if let Some(dir) = &self.working_dir
            && !dir.is_absolute()
        {
            return Err(SpecError::new("working_dir", "must be an absolute path"));
        }
        if let Some(user) = &self.user
            && (user.is_empty() || user.contains(['\0', ':', '/']))
        {
            return Err(SpecError::new("user", "is not a valid user name"));
        }
        if self.resources.cpu_millis == Some(0) {
            return Err(SpecError::new("resources.cpu_millis", "must be at least 1"));
        }
        if let Some(bytes) = self.resources.memory_bytes
            && bytes < MIN_MEMORY_BYTES
        {
            return Err(SpecError::new(
                "resources.memory_bytes",
                format!("must be at least {MIN_MEMORY_BYTES}"),
            ));
        }
        if let Some(health) = &self.health {
            health.validate()?;
        }
        Ok(())
    }
}

/// Checks a workload name: it becomes a directory and a control group, so only a small,
/// path-safe alphabet is allowed.
pub fn validate_name(name: &str) -> Result<(), SpecError> {
    let ok_first = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let ok_rest = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'));
    if !ok_first || !ok_rest || name.len() > MAX_NAME_LEN {
        return Err(SpecError::new(
            "name",
            "must be 1 to 63 of [a-z0-9._-], starting with a letter or digit",
        ));
    }
    Ok(())
}

/// CPU and memory limits. `None` means unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// Thousandths of one CPU: 250 is a quarter of a core.
    #[serde(default)]
    pub cpu_millis: Option<u32>,
    #[serde(default)]
    pub memory_bytes: Option<u64>,
}

/// When an exited process is started again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Whatever the exit status.
    #[default]
    Always,
    /// Only after a non-zero exit or a signal.
    OnFailure,
    Never,
}

/// How to tell whether a running instance is healthy, and what to do when it is not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthProbe {
    pub check: HealthCheck,
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Consecutive successes that make a starting or unhealthy instance `Running`.
    #[serde(default = "one")]
    pub success_threshold: u32,
    /// Consecutive failures that make an instance `Unhealthy`.
    #[serde(default = "three")]
    pub failure_threshold: u32,
    /// Wait this long after start before the first probe.
    #[serde(default)]
    pub initial_delay_ms: u64,
    /// Restart an instance that has been unhealthy this long (unless the restart policy is
    /// `never`). `None`: report it, never restart it for that.
    #[serde(default = "default_unhealthy_restart_ms")]
    pub unhealthy_restart_ms: Option<u64>,
}

fn default_interval_ms() -> u64 {
    5_000
}
fn default_timeout_ms() -> u64 {
    2_000
}
fn one() -> u32 {
    1
}
fn three() -> u32 {
    3
}
fn default_unhealthy_restart_ms() -> Option<u64> {
    Some(30_000)
}

impl HealthProbe {
    /// A probe with the default interval, timeout and thresholds.
    pub fn new(check: HealthCheck) -> Self {
        Self {
            check,
            interval_ms: default_interval_ms(),
            timeout_ms: default_timeout_ms(),
            success_threshold: one(),
            failure_threshold: three(),
            initial_delay_ms: 0,
            unhealthy_restart_ms: default_unhealthy_restart_ms(),
        }
    }

    fn validate(&self) -> Result<(), SpecError> {
        if self.interval_ms < 10 {
            return Err(SpecError::new("health.interval_ms", "must be at least 10"));
        }
        if self.timeout_ms == 0 {
            return Err(SpecError::new("health.timeout_ms", "must be at least 1"));
        }
        if self.success_threshold == 0 {
            return Err(SpecError::new(
                "health.success_threshold",
                "must be at least 1",
            ));
        }
        if self.failure_threshold == 0 {
            return Err(SpecError::new(
                "health.failure_threshold",
                "must be at least 1",
            ));
        }
        match &self.check {
            HealthCheck::Http { port, path } => {
                if *port == 0 {
                    return Err(SpecError::new("health.check.http.port", "must not be 0"));
                }
                // The path goes into a request line verbatim: no whitespace, no control bytes.
                if !path.starts_with('/')
                    || path.len() > 1024
                    || path
                        .bytes()
                        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
                {
                    return Err(SpecError::new(
                        "health.check.http.path",
                        "must start with '/', at most 1024 bytes, without spaces or control characters",
                    ));
                }
            }
            HealthCheck::Tcp { port } => {
                if *port == 0 {
                    return Err(SpecError::new("health.check.tcp.port", "must not be 0"));
                }
            }
            HealthCheck::Exec { command, args } => {
                if command.as_os_str().is_empty() {
                    return Err(SpecError::new("health.check.exec.command", "is empty"));
                }
                if command.as_os_str().as_encoded_bytes().contains(&0)
                    || args.iter().any(|a| a.contains('\0'))
                {
                    return Err(SpecError::new("health.check.exec", "contains a NUL byte"));
                }
            }
        }
        Ok(())
    }
}

/// The check a probe makes. Network checks go to [`WorkloadSpec::probe_address`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthCheck {
    /// `GET path` over HTTP/1.1: a 2xx or 3xx status is healthy.
    Http { port: u16, path: String },
    /// A TCP connection is accepted.
    Tcp { port: u16 },
    /// The command exits 0. It runs as the workload's user, with its environment.
    Exec {
        command: PathBuf,
        #[serde(default)]
        args: Vec<String>,
    },
}

/// A spec field that is not acceptable, and why: the fleet's one field error, whose path names
/// the field, e.g. `resources.memory_bytes` or `env."A=B"`.
pub type SpecError = FieldError;

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> WorkloadSpec {
        WorkloadSpec::new("hello", "1.0.0", "/bin/true")
    }

    #[test]
    fn probes_go_where_the_workload_is_told_to_listen() {
        let told = |address: Option<&str>| {
            let mut s = spec();
            if let Some(a) = address {
                s.env.insert(NODE_ADDRESS_ENV.into(), a.into());
            }
            s.probe_address().to_string()
        };
        assert_eq!(told(None), "127.0.0.1");
        assert_eq!(told(Some("192.0.2.10")), "192.0.2.10");
        assert_eq!(told(Some("2001:db8::7")), "2001:db8::7");
        assert_eq!(
            told(Some("0.0.0.0")),
            "127.0.0.1",
            "everywhere includes loopback"
        );
        assert_eq!(told(Some("::")), "::1");
        assert_eq!(told(Some("not an address")), "127.0.0.1");
    }

    #[test]
    fn a_plain_spec_is_valid() {
        assert_eq!(spec().validate(), Ok(()));
    }

    #[test]
    fn names_are_path_safe() {
        for bad in [
            "",
            "..",
            ".hidden",
            "a/b",
            "Upper",
            "x".repeat(64).as_str(),
            "a b",
        ] {
            let mut s = spec();
            s.name = bad.into();
            assert_eq!(
                s.validate().map_err(|e| e.path().to_string()),
                Err("name".into()),
                "{bad:?}"
            );
        }
        for good in ["a", "web-1", "x.y_z", "9lives"] {
            assert_eq!(validate_name(good), Ok(()), "{good:?}");
        }
    }

    #[test]
    fn errors_name_the_field() {
        let mut s = spec();
        s.env.insert("A=B".into(), "x".into());
        assert_eq!(
            s.validate().map_err(|e| e.path().to_string()),
            Err(r#"env."A=B""#.into())
        );

        let mut s = spec();
        s.resources.memory_bytes = Some(1000);
        assert_eq!(
            s.validate().map_err(|e| e.path().to_string()),
            Err("resources.memory_bytes".into())
        );

        let mut s = spec();
        s.health = Some(HealthProbe::new(HealthCheck::Http {
            port: 80,
            path: "/x HTTP/1.1\r\nHost: evil".into(),
        }));
        assert_eq!(
            s.validate().map_err(|e| e.path().to_string()),
            Err("health.check.http.path".into())
        );
    }

    #[test]
    fn stored_specs_from_older_versions_still_load() {
        let json = r#"{"name":"a","version":"1","command":"/bin/true"}"#;
        let s: WorkloadSpec = serde_json::from_str(json).expect("minimal spec");
        assert_eq!(s, WorkloadSpec::new("a", "1", "/bin/true"));
    }

    #[test]
    fn json_names_match_the_deploy_file() {
        let mut s = spec();
        s.restart = RestartPolicy::OnFailure;
        s.health = Some(HealthProbe::new(HealthCheck::Http {
            port: 8080,
            path: "/healthz".into(),
        }));
        let json = serde_json::to_string(&s).expect("serializes");
        assert!(json.contains(r#""restart":"on-failure""#), "{json}");
        assert!(
            json.contains(r#""check":{"http":{"port":8080,"path":"/healthz"}}"#),
            "{json}"
        );
        let back: WorkloadSpec = serde_json::from_str(&json).expect("round trip");
        assert_eq!(back, s);
    }
}
