//! Workload specs: what an operator asks the fleet to run (`edgectl deploy -f FILE` as TOML,
//! `POST /v1/workloads` as JSON), parsed and validated into [`WorkloadSpec`].
//!
//! Both formats are read into the same raw serde structs, which mirror the file and refuse
//! unknown fields at every level (a typo must never fall back to a default silently). The raw
//! structs are then validated into the domain types below, whose values are all known to be
//! good: a [`WorkloadSpec`] can only be built by [`WorkloadSpec::from_toml`] or
//! [`WorkloadSpec::from_json`]. Every error names the field's path, e.g.
//! `resources.memory_bytes: must be at least 1 MiB` or `env."BAD NAME": ...`, so the API can
//! answer 400 with it and `edgectl` can print it as is.
//!
//! A spec serializes (`serde::Serialize`) to JSON in one stable shape for the API and for
//! storage: every key is always present (absent optional values are `null`), and that JSON
//! parses back with [`WorkloadSpec::from_json`] into an equal spec.
//!
//! This module never does I/O and never panics on input: text over [`MAX_SPEC_BYTES`] is
//! refused before parsing, and no error quotes more than a few dozen characters of what the
//! user sent, so a hostile 200 KiB string never ends up in a log line or a response.
//!
//! Here are the spec's types and accessors; `validate` reads the text into raw structs and
//! checks them field by field; `parse_error` turns the parsers' errors into field errors.
//! Field paths, the quoting of the user's strings, and the rules for names, labels and
//! coordinates are `edge_proto::field`'s, shared with the node's config: a name or label
//! that passes here fits the wire whole.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::RangeInclusive;

use serde::ser::SerializeStruct;
use serde::{Serialize, Serializer};

mod parse_error;
mod validate;

use edge_proto::field::{FieldError, FieldPath};

/// The largest spec we parse, TOML or JSON. Real specs are well under 4 KiB.
pub const MAX_SPEC_BYTES: usize = 256 * 1024;

/// Bounds of `replicas`.
pub const REPLICAS: RangeInclusive<i64> = 1..=10_000;
/// Bounds of `resources.cpu_millis`: a thousandth of a CPU up to a thousand CPUs.
pub const CPU_MILLIS: RangeInclusive<i64> = 1..=1_000_000;
/// Bounds of `resources.memory_bytes`: 1 MiB to 1 TiB.
pub const MEMORY_BYTES: RangeInclusive<i64> = MIB..=TIB;
/// Bounds of `resources.disk_bytes` (optional, 0 when not given): up to 16 TiB.
pub const DISK_BYTES: RangeInclusive<i64> = 0..=16 * TIB;
/// Bounds of `health.interval_secs` and `health.timeout_secs`.
pub const HEALTH_SECS: RangeInclusive<i64> = 1..=3600;
/// Bounds of `health.failure_threshold` and `health.success_threshold`.
pub const HEALTH_THRESHOLD: RangeInclusive<i64> = 1..=100;
/// Bounds of `max_disconnect_secs`: a second up to a year.
pub const MAX_DISCONNECT_SECS: RangeInclusive<i64> = 1..=365 * 24 * 3600;
/// Half the Earth's equatorial circumference: any point is within this of any other.
pub const MAX_RADIUS_KM: f64 = 20_037.0;

/// The most arguments (`args`, `health.exec.args`) and the longest one.
pub const MAX_ARGS: usize = 64;
pub const MAX_ARG_BYTES: usize = 4096;
/// The most environment variables, the longest name and the longest value.
pub const MAX_ENV: usize = 64;
pub const MAX_ENV_NAME_BYTES: usize = 255;
pub const MAX_ENV_VALUE_BYTES: usize = 4096;
/// The most ports a workload may declare.
pub const MAX_PORTS: usize = 64;
/// The most labels a requirement (and a node) may carry, and the longest key and value: the
/// bounds the node's config and the wire use.
pub use edge_proto::field::{MAX_LABEL_KEY_LEN, MAX_LABEL_VALUE_BYTES, MAX_LABELS};
/// The most device requirements (a node reports at most 16 accelerators) and the longest
/// device path (the wire's bound).
pub const MAX_DEVICES: usize = 16;
pub const MAX_DEVICE_PATH_BYTES: usize = 96;
/// The longest `version`.
pub const MAX_VERSION_LEN: usize = 64;
/// The longest workload name: a DNS label, as long as the wire's workload names.
pub use edge_proto::field::MAX_NAME_LEN;
/// The longest file name (`command`), and the longest path (`working_dir`, `health.exec.command`).
pub const MAX_FILE_NAME_BYTES: usize = 255;
pub const MAX_PATH_BYTES: usize = 4096;
/// The longest HTTP health-check path.
pub const MAX_HTTP_PATH_BYTES: usize = 1024;
/// The most `[[expose]]` routes, and the bounds and defaults of their settings: the rules the
/// node's `[[proxy.upstream]]` follows too, bounded by the wire.
pub use edge_proto::field::{
    DEFAULT_ROUTE_RETRIES, DEFAULT_ROUTE_TIMEOUT_SECS, DEFAULT_ROUTE_WEIGHT,
    DEFAULT_STALE_IF_OFFLINE_SECS, MAX_EXPOSE, MAX_HOST_LEN, MAX_PATH_PREFIX_BYTES, ROUTE_RETRIES,
    ROUTE_TIMEOUT_SECS, ROUTE_WEIGHT, SCALE_TO_ZERO_IDLE_SECS, STALE_IF_OFFLINE_SECS,
};

const MIB: i64 = 1024 * 1024;
const TIB: i64 = 1024 * 1024 * 1024 * 1024;

/// Health-check defaults when `[health]` leaves a value out.
const DEFAULT_INTERVAL_SECS: u32 = 10;
const DEFAULT_TIMEOUT_SECS: u32 = 2;
const DEFAULT_FAILURE_THRESHOLD: u32 = 3;
const DEFAULT_SUCCESS_THRESHOLD: u32 = 1;

/// Why a spec was refused. None of these is worth retrying unchanged: the user has to fix the
/// spec. The API answers all of them with 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// The text is larger than [`MAX_SPEC_BYTES`]; refused before parsing.
    #[error("spec is {bytes} bytes; at most {max_bytes} are allowed")]
    TooLarge { bytes: usize, max_bytes: usize },
    /// The text is not TOML (or JSON) at all. The message carries the line and column.
    #[error("{message}")]
    Syntax { message: String },
    /// A field is missing, unknown, of the wrong type or out of bounds. The error's path is
    /// the field's, e.g. `resources.memory_bytes`, `args[3]` or `env."BAD NAME"`; the root
    /// for the document itself.
    #[error(transparent)]
    Invalid(#[from] FieldError),
}

impl SpecError {
    /// The path of the field at fault, when there is one.
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::Invalid(e) if !e.path().is_root() => Some(e.path().as_str()),
            _ => None,
        }
    }

    /// A field that is missing, unknown, of the wrong type or out of bounds.
    pub(crate) fn invalid(path: impl Into<FieldPath>, reason: impl Into<String>) -> Self {
        Self::Invalid(FieldError::new(path, reason))
    }
}

/// A validated workload spec. Built only by [`WorkloadSpec::from_toml`] and
/// [`WorkloadSpec::from_json`], so every value in it is within the bounds documented on its
/// accessor.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadSpec {
    name: String,
    version: String,
    driver: Driver,
    /// The executable (`driver = "exec"`) or the image (`driver = "oci"`).
    artifact: ArtifactDigest,
    /// With `driver = "oci"`: the architectures the image has, from the image store (not the
    /// spec's text); the scheduler places only on these. Empty until the shell says.
    image_arch: Vec<Arch>,
    command: Option<String>,
    args: Vec<String>,
    env: BTreeMap<String, String>,
    working_dir: Option<String>,
    ports: Vec<u16>,
    placement: Placement,
    resources: Resources,
    requirements: Requirements,
    restart: RestartPolicy,
    health: Option<HealthCheck>,
    expose: Vec<Expose>,
    scale_to_zero: Option<ScaleToZero>,
    replacement: Option<Replacement>,
    /// With [`Driver::Oci`]: the image may hold setuid or setgid files.
    allow_setuid: bool,
    /// With [`Driver::Oci`]: the container gets no writable layer.
    read_only_root: bool,
}

/// What happens to an instance whose node has been away too long (`max_disconnect_secs`),
/// and which instance stays when that node returns (`reconcile`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Replacement {
    /// After this long without a session, the instance is placed on another node; within
    /// [`MAX_DISCONNECT_SECS`].
    pub max_disconnect_secs: u32,
    pub reconcile: Reconcile,
}

/// Which of two instances survives when a replaced node returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Reconcile {
    /// The instance that ran on through the cut keeps running; the replacement stops. The
    /// default: the node never loses what it kept running, and its local state stays with it.
    #[default]
    KeepOriginal,
    /// The replacement keeps running; the returning node stops its instance.
    KeepReplacement,
}

impl Reconcile {
    pub const ALL: [Reconcile; 2] = [Self::KeepOriginal, Self::KeepReplacement];

    /// The name a spec writes: `keep_original`, `keep_replacement`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::KeepOriginal => "keep_original",
            Self::KeepReplacement => "keep_replacement",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// How the node runs the workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Driver {
    /// `artifact` is an executable the node runs as a process. The default.
    #[default]
    Exec,
    /// `image` is an OCI image (`edgectl image push`) the node runs through an OCI runtime
    /// (runc or crun) as a container.
    Oci,
}

impl Driver {
    pub const ALL: [Driver; 2] = [Self::Exec, Self::Oci];

    /// The name a spec writes: `exec`, `oci`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Exec => "exec",
            Self::Oci => "oci",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.as_str() == s)
    }
}

/// The executable, content-addressed: `sha256:` and 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ArtifactDigest([u8; 32]);

/// How many instances run, and where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// This many instances, 1 to 10,000, spread over the nodes that match.
    Replicas(u32),
    /// One instance on every node that matches.
    PerNode,
}

/// An amount of node resources: what a workload asks for, what a node has, what is taken.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize)]
pub struct Resources {
    /// Thousandths of a CPU.
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub disk_bytes: u64,
}

/// What a node must be or have to run the workload. Empty means any node.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Requirements {
    /// One of these architectures; empty means any. Sorted, no duplicates.
    pub arch: Vec<Arch>,
    /// Every one of these labels, with this value.
    pub labels: BTreeMap<String, String>,
    /// Every one of these devices. No duplicates, in the order given.
    pub devices: Vec<DeviceRequirement>,
    /// Within this distance of a point.
    pub near: Option<Near>,
    /// Only with `near`: an instance whose node moves out of the radius moves too, to a node
    /// inside it (make-before-break; see `deploy`). Without it, a node leaving the radius is
    /// only told of (an event), and its instance stays.
    pub follow_near: bool,
}

/// A CPU architecture, named as Rust's `std::env::consts::ARCH` (and so the node) names it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize,
)]
pub enum Arch {
    #[serde(rename = "x86_64")]
    X86_64,
    #[serde(rename = "aarch64")]
    Aarch64,
    #[serde(rename = "arm")]
    Arm,
    #[serde(rename = "riscv64")]
    Riscv64,
}

/// A device the node must have.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DeviceRequirement {
    /// Any accelerator of this kind.
    Kind(DeviceKind),
    /// This device node, e.g. `/dev/video0`: an absolute path under `/dev/`.
    Path(String),
}

/// An accelerator kind, as the node reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DeviceKind {
    Gpu,
    Npu,
    Video,
    Gpio,
}

/// "Within `radius_km` of (`lat`, `lon`)", great-circle distance. Coordinates are WGS84
/// degrees, finite and on the globe; the radius is in `(0, MAX_RADIUS_KM]`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Near {
    pub lat: f64,
    pub lon: f64,
    pub radius_km: f64,
}

/// When the node restarts an exited instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RestartPolicy {
    /// Whatever the exit status. The default.
    #[default]
    Always,
    /// Only after a non-zero exit status or a signal.
    OnFailure,
    Never,
}

/// How the node checks an instance is healthy. `timeout_secs < interval_secs`, both within
/// [`HEALTH_SECS`]; thresholds within [`HEALTH_THRESHOLD`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HealthCheck {
    pub probe: Probe,
    pub interval_secs: u32,
    pub timeout_secs: u32,
    /// Consecutive failures before the instance counts as unhealthy.
    pub failure_threshold: u32,
    /// Consecutive successes before an unhealthy instance counts as healthy again.
    pub success_threshold: u32,
}

/// One health probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Probe {
    /// `GET http://127.0.0.1:{port}{path}` answers 2xx or 3xx.
    Http { port: u16, path: String },
    /// A TCP connection to `127.0.0.1:{port}` is accepted.
    Tcp { port: u16 },
    /// The command exits with status 0.
    Exec { command: String, args: Vec<String> },
}

/// One route of the node's proxy to the workload (`[[expose]]`): requests for `host` whose
/// path starts with `path_prefix` go to the instance on that node, at `port`. At least one of
/// `host` and `path_prefix` is set, and no two routes of a workload match the same pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Expose {
    /// 1 to 65535; also one of [`WorkloadSpec::ports`].
    pub port: u16,
    /// A DNS name in lower case, or an IP address in its canonical form
    /// ([`edge_proto::field::check_host`]). `None`: any host.
    pub host: Option<String>,
    /// As [`edge_proto::field::check_path_prefix`] wants it. `None`: any path.
    pub path_prefix: Option<String>,
    /// This route's share among the workloads that expose the same host and path prefix (a
    /// canary split), within [`ROUTE_WEIGHT`]; 0 takes none while others remain.
    pub weight: u16,
    /// How long one attempt may take, within [`ROUTE_TIMEOUT_SECS`].
    pub timeout_secs: u32,
    /// How many times a failed idempotent request is tried again, within [`ROUTE_RETRIES`].
    pub retries: u8,
    /// Whether the node's proxy may cache the answers.
    pub cache: bool,
    /// How long a cached answer may be served stale while the instance cannot answer, within
    /// [`STALE_IF_OFFLINE_SECS`]; 0: never.
    pub stale_if_offline_secs: u32,
    pub balance: Balance,
}

/// How the node's proxy picks among a route's backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Balance {
    /// Two random choices, the one with the lower peak-EWMA latency wins. The default.
    #[default]
    PeakEwma,
    RoundRobin,
    /// The backend with the fewest requests in flight.
    LeastRequests,
}

/// Stop an instance that has had no request through the node's proxy for `idle_secs`
/// (within [`SCALE_TO_ZERO_IDLE_SECS`]), and start it again on the next request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ScaleToZero {
    pub idle_secs: u32,
}

impl WorkloadSpec {
    /// Parses and validates a spec written as TOML (`edgectl deploy -f FILE`).
    pub fn from_toml(text: &str) -> Result<Self, SpecError> {
        validate::from_toml(text)
    }

    /// Parses and validates a spec sent as JSON (`POST /v1/workloads`), or stored: the JSON
    /// this type serializes to parses back into an equal spec.
    pub fn from_json(bytes: &[u8]) -> Result<Self, SpecError> {
        validate::from_json(bytes)
    }

    /// The workload's name, unique in the fleet: a DNS label (1 to 63 of `[a-z0-9-]`, not
    /// starting or ending with `-`).
    #[inline]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// 1 to 64 printable ASCII characters, no spaces.
    #[inline]
    pub fn version(&self) -> &str {
        &self.version
    }

    /// What the node fetches first: the executable, or with [`Driver::Oci`] the image.
    #[inline]
    pub fn artifact(&self) -> ArtifactDigest {
        self.artifact
    }

    #[inline]
    pub fn driver(&self) -> Driver {
        self.driver
    }

    /// Whether a container's image may hold setuid or setgid files (`allow_setuid`, only
    /// with [`Driver::Oci`]). They are inert anyway: containers run with
    /// `no_new_privileges`; this says the operator has seen them.
    #[inline]
    pub fn allow_setuid(&self) -> bool {
        self.allow_setuid
    }

    /// Whether a container's root is read-only (`read_only_root`, only with
    /// [`Driver::Oci`]): no writable layer, a tmpfs on `/tmp`. Else what it writes lands
    /// in a layer of its own instance, gone with it.
    #[inline]
    pub fn read_only_root(&self) -> bool {
        self.read_only_root
    }

    /// The image, with [`Driver::Oci`].
    #[inline]
    pub fn image(&self) -> Option<ArtifactDigest> {
        (self.driver == Driver::Oci).then_some(self.artifact)
    }

    /// The architectures the image has (empty: not known, or not a container). The scheduler
    /// places an instance only on a node of one of them.
    #[inline]
    pub fn image_arch(&self) -> &[Arch] {
        &self.image_arch
    }

    /// This spec with the architectures its image has, as the image store knows them.
    pub fn with_image_arch(mut self, mut arch: Vec<Arch>) -> Self {
        arch.sort();
        arch.dedup();
        self.image_arch = arch;
        self
    }

    /// The file to run inside the artifact's directory: a plain file name (no `/`). `None`
    /// means the artifact itself is the executable.
    #[inline]
    pub fn command(&self) -> Option<&str> {
        self.command.as_deref()
    }

    /// At most [`MAX_ARGS`], each at most [`MAX_ARG_BYTES`], no NUL.
    #[inline]
    pub fn args(&self) -> &[String] {
        &self.args
    }

    /// Names match `[A-Za-z_][A-Za-z0-9_]*`; values have no NUL.
    #[inline]
    pub fn env(&self) -> &BTreeMap<String, String> {
        &self.env
    }

    /// An absolute path, if given.
    #[inline]
    pub fn working_dir(&self) -> Option<&str> {
        self.working_dir.as_deref()
    }

    /// TCP ports the workload listens on: 1 to 65535, unique, at most [`MAX_PORTS`]: those
    /// given, in order, then every [`expose`](Self::expose) port not among them. Two instances
    /// that share a port cannot share a node.
    #[inline]
    pub fn ports(&self) -> &[u16] {
        &self.ports
    }

    #[inline]
    pub fn placement(&self) -> Placement {
        self.placement
    }

    /// What one instance needs. `cpu_millis` within [`CPU_MILLIS`], `memory_bytes` within
    /// [`MEMORY_BYTES`], `disk_bytes` within [`DISK_BYTES`].
    #[inline]
    pub fn resources(&self) -> Resources {
        self.resources
    }

    #[inline]
    pub fn requirements(&self) -> &Requirements {
        &self.requirements
    }

    #[inline]
    pub fn restart(&self) -> RestartPolicy {
        self.restart
    }

    #[inline]
    pub fn health(&self) -> Option<&HealthCheck> {
        self.health.as_ref()
    }

    /// The routes the node's proxy sends to the workload: at most [`MAX_EXPOSE`], in the
    /// order given.
    #[inline]
    pub fn expose(&self) -> &[Expose] {
        &self.expose
    }

    /// Whether each instance stops when idle and starts on demand. Only with at least one
    /// [`expose`](Self::expose) route, since only a request through the proxy starts it again.
    /// Per-node placement may scale to zero too: each node's instance stops and starts on its
    /// own traffic.
    #[inline]
    pub fn scale_to_zero(&self) -> Option<ScaleToZero> {
        self.scale_to_zero
    }

    /// Whether (and after how long) an instance on a node that is away is placed elsewhere,
    /// and which one stays when the node returns. `None`: never replaced (only with
    /// `replicas`: a per-node instance has nowhere else to go).
    #[inline]
    pub fn replacement(&self) -> Option<Replacement> {
        self.replacement
    }
}

impl Serialize for WorkloadSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Restart {
            policy: RestartPolicy,
        }
        let (replicas, placement) = match self.placement {
            Placement::Replicas(n) => (Some(n), None),
            Placement::PerNode => (None, Some("per-node")),
        };
        let mut st = s.serialize_struct("WorkloadSpec", 22)?;
        st.serialize_field("name", &self.name)?;
        st.serialize_field("version", &self.version)?;
        st.serialize_field("driver", self.driver.as_str())?;
        let (artifact, image) = match self.driver {
            Driver::Exec => (Some(self.artifact), None),
            Driver::Oci => (None, Some(self.artifact)),
        };
        st.serialize_field("artifact", &artifact)?;
        st.serialize_field("image", &image)?;
        st.serialize_field("allow_setuid", &self.allow_setuid)?;
        st.serialize_field("read_only_root", &self.read_only_root)?;
        st.serialize_field("command", &self.command)?;
        st.serialize_field("args", &self.args)?;
        st.serialize_field("env", &self.env)?;
        st.serialize_field("working_dir", &self.working_dir)?;
        st.serialize_field("ports", &self.ports)?;
        st.serialize_field("replicas", &replicas)?;
        st.serialize_field("placement", &placement)?;
        st.serialize_field("resources", &self.resources)?;
        st.serialize_field("requirements", &self.requirements)?;
        st.serialize_field(
            "restart",
            &Restart {
                policy: self.restart,
            },
        )?;
        st.serialize_field("health", &self.health)?;
        st.serialize_field("expose", &self.expose)?;
        st.serialize_field("scale_to_zero", &self.scale_to_zero)?;
        st.serialize_field(
            "max_disconnect_secs",
            &self.replacement.map(|r| r.max_disconnect_secs),
        )?;
        st.serialize_field("reconcile", &self.replacement.map(|r| r.reconcile.as_str()))?;
        st.end()
    }
}

impl Balance {
    pub const ALL: [Balance; 3] = [Self::PeakEwma, Self::RoundRobin, Self::LeastRequests];

    /// The name a spec writes: `peak-ewma`, `round-robin`, `least-requests`.
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

impl fmt::Display for Balance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Balance {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl ArtifactDigest {
    #[inline]
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Parses `sha256:` followed by 64 lowercase hex digits.
    pub fn parse(s: &str) -> Option<Self> {
        edge_proto::digest::from_lower_prefixed(s).map(Self)
    }
}

impl fmt::Display for ArtifactDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use edge_proto::digest::{Hex, SHA256_PREFIX};
        write!(f, "{SHA256_PREFIX}{}", Hex(&self.0))
    }
}

impl fmt::Debug for ArtifactDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ArtifactDigest({self})")
    }
}

impl Serialize for ArtifactDigest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for ArtifactDigest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::parse(&s).ok_or_else(|| serde::de::Error::custom("not a sha256: digest"))
    }
}

impl Arch {
    pub const ALL: [Arch; 4] = [Arch::X86_64, Arch::Aarch64, Arch::Arm, Arch::Riscv64];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::X86_64 => "x86_64",
            Self::Aarch64 => "aarch64",
            Self::Arm => "arm",
            Self::Riscv64 => "riscv64",
        }
    }

    /// The architecture a node reports, if it is one we know.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl DeviceKind {
    pub const ALL: [DeviceKind; 4] = [Self::Gpu, Self::Npu, Self::Video, Self::Gpio];

    /// The name the node reports for accelerators of this kind.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gpu => "gpu",
            Self::Npu => "npu",
            Self::Video => "video",
            Self::Gpio => "gpio",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl DeviceRequirement {
    /// The kind's name or the path: what a node lists among its devices when it has it.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Kind(k) => k.as_str(),
            Self::Path(p) => p,
        }
    }
}

impl fmt::Display for DeviceRequirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for DeviceRequirement {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl RestartPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "always",
            Self::OnFailure => "on-failure",
            Self::Never => "never",
        }
    }
}

impl Serialize for RestartPolicy {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl Serialize for HealthCheck {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Http<'a> {
            port: u16,
            path: &'a str,
        }
        #[derive(Serialize)]
        struct Tcp {
            port: u16,
        }
        #[derive(Serialize)]
        struct Exec<'a> {
            command: &'a str,
            args: &'a [String],
        }
        let (mut http, mut tcp, mut exec) = (None, None, None);
        match &self.probe {
            Probe::Http { port, path } => http = Some(Http { port: *port, path }),
            Probe::Tcp { port } => tcp = Some(Tcp { port: *port }),
            Probe::Exec { command, args } => exec = Some(Exec { command, args }),
        }
        let mut st = s.serialize_struct("HealthCheck", 7)?;
        st.serialize_field("http", &http)?;
        st.serialize_field("tcp", &tcp)?;
        st.serialize_field("exec", &exec)?;
        st.serialize_field("interval_secs", &self.interval_secs)?;
        st.serialize_field("timeout_secs", &self.timeout_secs)?;
        st.serialize_field("failure_threshold", &self.failure_threshold)?;
        st.serialize_field("success_threshold", &self.success_threshold)?;
        st.end()
    }
}
