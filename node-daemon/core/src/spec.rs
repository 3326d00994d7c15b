//! What the node is asked to run: [`WorkloadSpec`] and its parts, and their validation.
//!
//! These are the node's domain types, not wire types: the daemon converts what the
//! orchestrator sends into them. They are also what `spec.json` holds on disk, so fields are
//! only ever added with a serde default, never renamed, or a node upgraded in place would no
//! longer recover the workloads it was running.
//!
//! This module never does I/O; [`WorkloadSpec::validate`] checks only what can be checked
//! from the spec itself.

use edge_proto::field::{
    self, DEFAULT_ROUTE_RETRIES, DEFAULT_ROUTE_TIMEOUT_SECS, DEFAULT_ROUTE_WEIGHT,
    DEFAULT_STALE_IF_OFFLINE_SECS, FieldError, FieldPath, MAX_EXPOSE, ROUTE_RETRIES,
    ROUTE_TIMEOUT_SECS, ROUTE_WEIGHT, SCALE_TO_ZERO_IDLE_SECS, STALE_IF_OFFLINE_SECS, shown,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
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
    /// The routes the node's proxy sends to this workload, in the order the operator gave
    /// them.
    #[serde(default)]
    pub expose: Vec<Expose>,
    /// Stop the workload when idle and start it on the next request through the proxy.
    /// `None`: it runs all the time.
    #[serde(default)]
    pub scale_to_zero: Option<ScaleToZero>,
    /// Runs a container (`driver = "oci"`): `command` is the OCI runtime and `args` its
    /// `run` command line, in the foreground. `None`: `command` is the workload itself.
    #[serde(default)]
    pub container: Option<Container>,
}

/// What the supervisor needs to know of a container beyond its command line: how to clear
/// what a killed runtime left in its state, and how to ask the container to stop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Container {
    /// The runtime's state directory (its `--root`).
    pub state_dir: PathBuf,
    /// The container's id in that state directory.
    pub id: String,
    /// The bundle: `config.json` and what it names.
    pub bundle: PathBuf,
    /// The container's root filesystem. It and the bundle belong to this container alone:
    /// they are deleted once it is replaced or removed, never while it may run.
    pub rootfs: PathBuf,
    /// The image's stop signal, as a number: the runtime passes it on to the container.
    pub stop_signal: i32,
    /// The container's writable layer, an overlay on `rootfs` that the supervisor mounts
    /// before the runtime starts. `None`: the runtime uses `rootfs` itself (read-only, or a
    /// copy of the image's files the container may write).
    #[serde(default)]
    pub overlay: Option<Overlay>,
}

/// An overlay mount: `rootfs` (the image's files, never written) below, the instance's own
/// writes in `upper`, the whole seen at `merged`. All three belong to the container's
/// bundle and go with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Overlay {
    /// Where the container's writes and whiteouts land.
    pub upper: PathBuf,
    /// The overlay's scratch directory, on `upper`'s filesystem.
    pub work: PathBuf,
    /// Where the merged tree is mounted: the runtime's root.
    pub merged: PathBuf,
}

impl Overlay {
    /// The mount's options for `lower`. `None` when a path cannot be said in them: overlay
    /// splits its options at `,` and its lower layers at `:`, and a relative path would
    /// depend on where the daemon runs.
    pub fn mount_options(&self, lower: &Path) -> Option<String> {
        let paths = [lower, &self.upper, &self.work];
        let plain = |p: &&Path| {
            p.is_absolute()
                && p.to_str()
                    .is_some_and(|s| !s.contains([',', ':', '\\', '\n']))
        };
        paths.iter().all(plain).then(|| {
            format!(
                "lowerdir={},upperdir={},workdir={}",
                lower.display(),
                self.upper.display(),
                self.work.display()
            )
        })
    }
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
            expose: Vec::new(),
            scale_to_zero: None,
            container: None,
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
        if let Some(c) = &self.container {
            validate_name(&c.id).map_err(|_| {
                SpecError::new(
                    "container.id",
                    "must be 1 to 63 of [a-z0-9._-], starting with a letter or digit",
                )
            })?;
            if !(1..=64).contains(&c.stop_signal) {
                return Err(SpecError::new(
                    "container.stop_signal",
                    "must be a signal number from 1 to 64",
                ));
            }
            if let Some(o) = &c.overlay
                && (o.mount_options(&c.rootfs).is_none() || !o.merged.is_absolute())
            {
                return Err(SpecError::new(
                    "container.overlay",
                    "needs absolute paths without ',', ':', '\\' or newlines",
                ));
            }
        }
        self.validate_routes()
    }

    fn validate_routes(&self) -> Result<(), SpecError> {
        let list = FieldPath::new("expose");
        field::check_count(&list, self.expose.len(), MAX_EXPOSE, "routes")?;
        for (i, route) in self.expose.iter().enumerate() {
            let at = list.index(i);
            route.validate(&at)?;
            if let Some(j) = self.expose[..i]
                .iter()
                .position(|e| e.host == route.host && e.path_prefix == route.path_prefix)
            {
                return Err(SpecError::new(
                    at,
                    format!("matches the same host and path_prefix as expose[{j}]"),
                ));
            }
        }
        if let Some(scale) = self.scale_to_zero {
            let idle = FieldPath::new("scale_to_zero.idle_secs");
            check_in(&idle, scale.idle_secs, &SCALE_TO_ZERO_IDLE_SECS)?;
            if self.expose.is_empty() {
                return Err(SpecError::new(
                    "scale_to_zero",
                    "needs at least one route in expose: only a request through the proxy \
                     starts a workload scaled to zero",
                ));
            }
        }
        Ok(())
    }
}

/// One route of the node's proxy to the workload: requests for `host` (any host when `None`)
/// whose path starts with `path_prefix` (any path when `None`; never both `None`) go to the
/// workload on this node at `port`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expose {
    pub port: u16,
    /// A DNS name in lower case, or an IP address in its canonical form (`::1`, no brackets):
    /// what [`edge_proto::field::check_host`] returns.
    #[serde(default)]
    pub host: Option<String>,
    /// As [`edge_proto::field::check_path_prefix`] wants it.
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// This route's share among the workloads that expose the same host and path prefix (a
    /// canary split), 0 to 1000.
    #[serde(default = "default_weight")]
    pub weight: u16,
    /// How long one attempt may take, to the answer's head: 1 to 3600.
    #[serde(default = "default_route_timeout_secs")]
    pub timeout_secs: u32,
    /// How many times a failed idempotent request is tried again: 0 to 10.
    #[serde(default = "default_route_retries")]
    pub retries: u8,
    /// Whether answers may be cached.
    #[serde(default = "yes")]
    pub cache: bool,
    /// How long a cached answer may be served stale while the workload cannot answer; 0:
    /// never.
    #[serde(default = "default_stale_if_offline_secs")]
    pub stale_if_offline_secs: u32,
    #[serde(default)]
    pub balance: Balance,
}

fn default_weight() -> u16 {
    DEFAULT_ROUTE_WEIGHT
}
fn default_route_timeout_secs() -> u32 {
    DEFAULT_ROUTE_TIMEOUT_SECS
}
fn default_route_retries() -> u8 {
    DEFAULT_ROUTE_RETRIES
}
fn yes() -> bool {
    true
}
fn default_stale_if_offline_secs() -> u32 {
    DEFAULT_STALE_IF_OFFLINE_SECS
}

impl Expose {
    /// A route to `port` with the default settings and nothing to match yet: set `host`,
    /// `path_prefix` or both.
    pub fn new(port: u16) -> Self {
        Self {
            port,
            host: None,
            path_prefix: None,
            weight: default_weight(),
            timeout_secs: default_route_timeout_secs(),
            retries: default_route_retries(),
            cache: yes(),
            stale_if_offline_secs: default_stale_if_offline_secs(),
            balance: Balance::default(),
        }
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs.into())
    }

    /// How long a cached answer may be served stale; `None` when never.
    pub fn stale_if_offline(&self) -> Option<Duration> {
        (self.stale_if_offline_secs > 0)
            .then(|| Duration::from_secs(self.stale_if_offline_secs.into()))
    }

    fn validate(&self, at: &FieldPath) -> Result<(), SpecError> {
        if self.port == 0 {
            return Err(SpecError::new(at.field("port"), "must not be 0"));
        }
        if let Some(host) = &self.host {
            let path = at.field("host");
            let canonical = field::check_host(&path, host)?;
            if &canonical != host {
                return Err(SpecError::new(
                    path,
                    format!(
                        "{} is not in its canonical form {}",
                        shown(host),
                        shown(&canonical)
                    ),
                ));
            }
        }
        if let Some(prefix) = &self.path_prefix {
            field::check_path_prefix(&at.field("path_prefix"), prefix)?;
        }
        if self.host.is_none() && self.path_prefix.is_none() {
            return Err(SpecError::new(
                at.clone(),
                "needs a host, a path_prefix or both: what the route matches",
            ));
        }
        check_in(&at.field("weight"), self.weight, &ROUTE_WEIGHT)?;
        check_in(
            &at.field("timeout_secs"),
            self.timeout_secs,
            &ROUTE_TIMEOUT_SECS,
        )?;
        check_in(&at.field("retries"), self.retries, &ROUTE_RETRIES)?;
        check_in(
            &at.field("stale_if_offline_secs"),
            self.stale_if_offline_secs,
            &STALE_IF_OFFLINE_SECS,
        )
    }
}

/// `v` is within `range`, or an error at `path` naming both.
fn check_in(
    path: &FieldPath,
    v: impl Into<i64>,
    range: &std::ops::RangeInclusive<i64>,
) -> Result<(), SpecError> {
    let v = v.into();
    if range.contains(&v) {
        return Ok(());
    }
    Err(SpecError::new(
        path.clone(),
        format!("{v} is out of range {}..={}", range.start(), range.end()),
    ))
}

/// How the proxy picks among the backends of a route.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    /// Two random choices, the one with the lower peak-EWMA latency wins.
    #[default]
    PeakEwma,
    RoundRobin,
    /// The backend with the fewest requests in flight.
    LeastRequests,
}

impl Balance {
    pub const ALL: [Balance; 3] = [Self::PeakEwma, Self::RoundRobin, Self::LeastRequests];

    /// The name operators write: `peak-ewma`, `round-robin`, `least-requests`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PeakEwma => "peak-ewma",
            Self::RoundRobin => "round-robin",
            Self::LeastRequests => "least-requests",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|b| b.as_str() == s)
    }
}

/// Stop the workload after `idle_secs` (1 to 86400) without a request through the proxy,
/// and start it again on the next one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScaleToZero {
    pub idle_secs: u32,
}

impl ScaleToZero {
    pub fn idle(&self) -> Duration {
        Duration::from_secs(self.idle_secs.into())
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
    fn an_overlay_says_its_paths_or_the_spec_is_refused() {
        let with = |upper: &str| {
            let mut s = spec();
            s.container = Some(Container {
                state_dir: "/var/lib/edge-node/oci/state".into(),
                id: "hello".into(),
                bundle: "/var/lib/edge-node/oci/bundles/hello.1".into(),
                rootfs: "/var/lib/edge-node/oci/rootfs/hello.1".into(),
                stop_signal: 15,
                overlay: Some(Overlay {
                    upper: upper.into(),
                    work: "/var/lib/edge-node/oci/bundles/hello.1/work".into(),
                    merged: "/var/lib/edge-node/oci/bundles/hello.1/root".into(),
                }),
            });
            s
        };
        let good = with("/var/lib/edge-node/oci/bundles/hello.1/upper");
        assert_eq!(good.validate(), Ok(()));
        let c = good.container.as_ref().expect("a container");
        assert_eq!(
            c.overlay.as_ref().and_then(|o| o.mount_options(&c.rootfs)),
            Some(
                "lowerdir=/var/lib/edge-node/oci/rootfs/hello.1,\
                 upperdir=/var/lib/edge-node/oci/bundles/hello.1/upper,\
                 workdir=/var/lib/edge-node/oci/bundles/hello.1/work"
                    .into()
            )
        );
        for bad in [
            "relative/upper",
            "/a,lowerdir=/etc",
            "/a:/etc",
            "/a\\b",
            "/a\nb",
        ] {
            assert_eq!(
                with(bad).validate().map_err(|e| e.path().to_string()),
                Err("container.overlay".into()),
                "{bad:?}"
            );
        }
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
        // A whole spec.json as a node wrote it before routes existed.
        let json = r#"{"name":"hello","version":"1.0.0",
            "command":"/var/lib/edge-node/artifacts/0123","args":["--port","8080"],
            "env":{"EDGE_WORKLOAD":"hello","GREETING":"hi"},"working_dir":null,"user":null,
            "resources":{"cpu_millis":250,"memory_bytes":33554432},"restart":"always",
            "health":{"check":{"http":{"port":8080,"path":"/healthz"}},"interval_ms":5000,
            "timeout_ms":2000,"success_threshold":1,"failure_threshold":3,
            "initial_delay_ms":0,"unhealthy_restart_ms":30000},"stop_grace_ms":10000}"#;
        let s: WorkloadSpec = serde_json::from_str(json).expect("an older spec.json");
        assert!(s.expose.is_empty());
        assert_eq!(s.scale_to_zero, None);
        assert_eq!(s.validate(), Ok(()));
        // A route stored with only what has no default takes the defaults.
        let json = r#"{"name":"a","version":"1","command":"/bin/true",
            "expose":[{"port":8080,"path_prefix":"/"}]}"#;
        let s: WorkloadSpec = serde_json::from_str(json).expect("a sparse route");
        let mut want = Expose::new(8080);
        want.path_prefix = Some("/".into());
        assert_eq!(s.expose, [want]);
    }

    fn route(host: Option<&str>, path_prefix: Option<&str>) -> Expose {
        Expose {
            host: host.map(Into::into),
            path_prefix: path_prefix.map(Into::into),
            ..Expose::new(8080)
        }
    }

    #[test]
    fn routes_are_checked_like_the_orchestrator_checks_them() {
        let field_of = |s: &WorkloadSpec| s.validate().map_err(|e| e.path().to_string());
        let mut s = spec();
        s.expose = vec![
            route(Some("shop.example"), Some("/api")),
            route(None, Some("/")),
            route(Some("2001:db8::1"), None),
        ];
        s.scale_to_zero = Some(ScaleToZero { idle_secs: 300 });
        assert_eq!(s.validate(), Ok(()));
        let good = s;

        let bad = |change: &dyn Fn(&mut WorkloadSpec), field: &str| {
            let mut s = good.clone();
            change(&mut s);
            assert_eq!(field_of(&s), Err(field.to_owned()));
        };
        bad(&|s| s.expose[1].port = 0, "expose[1].port");
        bad(&|s| s.expose[1].path_prefix = None, "expose[1]");
        bad(
            &|s| s.expose[0].host = Some("Shop.Example".into()),
            "expose[0].host",
        );
        bad(
            &|s| s.expose[2].host = Some("[2001:db8::1]".into()),
            "expose[2].host",
        );
        bad(&|s| s.expose[0].host = Some("a b".into()), "expose[0].host");
        bad(
            &|s| s.expose[0].host = Some("x".repeat(10_000)),
            "expose[0].host",
        );
        bad(
            &|s| s.expose[0].path_prefix = Some("/a/../b".into()),
            "expose[0].path_prefix",
        );
        bad(
            &|s| s.expose[0].path_prefix = Some("/a\0".into()),
            "expose[0].path_prefix",
        );
        bad(&|s| s.expose[0].weight = 1001, "expose[0].weight");
        bad(&|s| s.expose[0].timeout_secs = 0, "expose[0].timeout_secs");
        bad(
            &|s| s.expose[0].timeout_secs = 3601,
            "expose[0].timeout_secs",
        );
        bad(&|s| s.expose[0].retries = 11, "expose[0].retries");
        bad(
            &|s| s.expose[0].stale_if_offline_secs = u32::MAX,
            "expose[0].stale_if_offline_secs",
        );
        bad(
            &|s| s.expose[2] = route(Some("shop.example"), Some("/api")),
            "expose[2]",
        );
        bad(&|s| s.expose = vec![route(None, Some("/")); 17], "expose");
        bad(
            &|s| s.scale_to_zero = Some(ScaleToZero { idle_secs: 0 }),
            "scale_to_zero.idle_secs",
        );
        bad(
            &|s| s.scale_to_zero = Some(ScaleToZero { idle_secs: 86_401 }),
            "scale_to_zero.idle_secs",
        );
        bad(&|s| s.expose.clear(), "scale_to_zero");
        let sixteen: Vec<Expose> = (0..16)
            .map(|i| route(None, Some(&format!("/r{i}"))))
            .collect();
        let mut s = good.clone();
        s.expose = sixteen;
        assert_eq!(s.validate(), Ok(()));
        let mut s = good.clone();
        s.scale_to_zero = None;
        s.expose.clear();
        assert_eq!(
            s.validate(),
            Ok(()),
            "no routes, no scale to zero: as before"
        );
    }

    #[test]
    fn routes_store_with_the_names_operators_write() {
        let mut s = spec();
        let mut r = route(Some("shop.example"), None);
        r.balance = Balance::LeastRequests;
        s.expose = vec![r];
        s.scale_to_zero = Some(ScaleToZero { idle_secs: 60 });
        let json = serde_json::to_string(&s).expect("serializes");
        assert!(json.contains(r#""balance":"least-requests""#), "{json}");
        assert!(
            json.contains(r#""scale_to_zero":{"idle_secs":60}"#),
            "{json}"
        );
        let back: WorkloadSpec = serde_json::from_str(&json).expect("round trip");
        assert_eq!(back, s);
        for b in Balance::ALL {
            assert_eq!(Balance::parse(b.as_str()), Some(b));
            assert_eq!(
                serde_json::to_string(&b).expect("serializes"),
                format!("\"{}\"", b.as_str())
            );
        }
        assert_eq!(
            route(None, Some("/")).stale_if_offline(),
            Some(Duration::from_secs(86_400))
        );
        let mut off = route(None, Some("/"));
        off.stale_if_offline_secs = 0;
        assert_eq!(off.stale_if_offline(), None);
        assert_eq!(off.timeout(), Duration::from_secs(30));
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
